import XCTest

/// Captive runs, --exit-with-parent, and the exit filters: every way out leaves no process,
/// socket or temporary directory behind.
final class LifecycleTests: IntegrationTestCase {
    /// Waits up to `seconds` for `pid` to be gone (reaped or not ours). Returns whether it is.
    func waitGone(_ pid: Int32, seconds: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if kill(pid, 0) != 0 { return true }
            // A zombie child of ours counts as gone once reaped.
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { return true }
            if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
               stat.split(separator: " ").dropFirst(2).first == "Z" { return true }
            usleep(20_000)
        }
        return false
    }

    func readPID(_ path: String, seconds: Double = 10) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let text = try? String(contentsOfFile: path, encoding: .utf8),
               text.hasSuffix("\n"), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                return pid
            }
            usleep(20_000)
        }
        return nil
    }

    func testSigtermDuringRunLeavesNothingBehind() throws {
        let pids = dir.file("pids")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Harness.nbdkit)
        p.arguments = ["-U", "-", "memory", "1M", "--run",
                       "echo $$ > \(pids).sh; sleep 60 & echo $! > \(pids); echo \"$unixsocket\" > \(pids).sock; wait"]
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        guard let sleeper = readPID(pids), let shell = readPID(pids + ".sh") else { return XCTFail("command did not start") }
        let socket = (try? String(contentsOfFile: pids + ".sock", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        XCTAssertTrue(FileManager.default.fileExists(atPath: socket), socket)
        kill(p.processIdentifier, SIGTERM)
        XCTAssertTrue(waitGone(p.processIdentifier), "nbdkit survived SIGTERM")
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 128 + SIGTERM)
        XCTAssertTrue(waitGone(shell), "the command's shell was orphaned")
        XCTAssertTrue(waitGone(sleeper), "the command's child was orphaned")
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket))
        XCTAssertFalse(FileManager.default.fileExists(atPath: (socket as NSString).deletingLastPathComponent))
    }

    /// A server removes its Unix socket at exit only while the path still names the socket it
    /// bound: another server bound there since (once the first one's file was removed, as a
    /// restart script does) keeps its socket and stays reachable. (The first server removed the
    /// second one's socket before; nbdkit removes neither.)
    func testExitLeavesASocketBoundSinceByAnotherServer() throws {
        let first = try startServer(["memory", "1M"])
        try FileManager.default.removeItem(atPath: first.socket)
        let second = try startServer(["memory", "2M"])
        XCTAssertEqual(second.socket, first.socket)
        XCTAssertEqual(first.stop(), 0)
        XCTAssertTrue(FileManager.default.fileExists(atPath: second.socket))
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", second.uri]).stdout, "2097152\n")
        XCTAssertEqual(second.stop(), 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: second.socket))
    }

    /// `-U -` makes its directory under `$TMPDIR` only where that is an absolute path to a
    /// directory in which the directory can be made and the socket's path fits; otherwise under
    /// /tmp, as nbdkit always does (an unset, empty, relative, missing or too long `$TMPDIR`
    /// failed to start before, or made its directory in /, or gave a relative `$uri`). The
    /// directory is gone after each run.
    func testPrivateSocketDirectoryFallsBackToTmp() throws {
        let usable = dir.file("tmp")
        try FileManager.default.createDirectory(atPath: usable, withIntermediateDirectories: false)
        // 100 bytes: with "/nbdkitXXXXXX/socket" longer than a socket path can be.
        let long = dir.path + "/" + String(repeating: "d", count: max(1, 100 - dir.path.utf8.count - 1))
        try FileManager.default.createDirectory(atPath: long, withIntermediateDirectories: false)
        let cases: [(tmpdir: String?, base: String)] = [
            (usable, usable), (nil, "/tmp"), ("", "/tmp"), ("relative", "/tmp"),
            (dir.file("missing"), "/tmp"), (long, "/tmp"),
        ]
        for (tmpdir, base) in cases {
            let environment = tmpdir.map { ["/usr/bin/env", "TMPDIR=\($0)"] } ?? ["/usr/bin/env", "-u", "TMPDIR"]
            let r = Harness.run(environment + [Harness.nbdkit, "-U", "-", "memory", "1M", "--run",
                                               "nbdinfo --size \"$uri\" && echo \"$unixsocket\""])
            XCTAssertEqual(r.status, 0, "TMPDIR=\(tmpdir ?? "(unset)"): \(r.stderr)")
            let lines = r.stdout.split(separator: "\n").map(String.init)
            XCTAssertEqual(lines.first, "1048576", "TMPDIR=\(tmpdir ?? "(unset)")")
            let socket = lines.last ?? ""
            XCTAssertTrue(socket.hasPrefix(base + "/nbdkit") && socket.hasSuffix("/socket"), "TMPDIR=\(tmpdir ?? "(unset)"): \(socket)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: (socket as NSString).deletingLastPathComponent), socket)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: usable), [])
    }

    /// SIGKILL sent to nbdkit's whole process group (`timeout -s KILL`, a cancelled CI job) ends
    /// the --run command too, although it runs in a process group of its own (so that nbdkit can
    /// pass signals on to all of it): its watcher ends that group once nbdkit is gone. The command
    /// and its child outlived nbdkit before. The watcher also removes the private directory of
    /// `-U -`, which nbdkit can't once killed.
    func testSigkillToNbdkitsGroupLeavesNoCommandBehind() throws {
        let pids = dir.file("gk")
        let p = Process()
        // setsid: nbdkit leads a session and process group of its own, which the test kills whole.
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
        p.arguments = [Harness.nbdkit, "-U", "-", "memory", "1M", "--run",
                       "echo \"$unixsocket\" > \(pids).sock; echo $PPID > \(pids).nbdkit; echo $$ > \(pids).sh; sleep 60 & echo $! > \(pids); wait"]
        p.standardError = FileHandle.nullDevice
        try p.run()
        guard let sleeper = readPID(pids), let shell = readPID(pids + ".sh"), let nbdkit = readPID(pids + ".nbdkit") else {
            return XCTFail("command did not start")
        }
        defer {
            for pid in [nbdkit, shell, sleeper] { kill(pid, SIGKILL) }
            p.waitUntilExit()
        }
        let stat = (try? String(contentsOfFile: "/proc/\(nbdkit)/stat", encoding: .utf8)) ?? ""
        let group = Int32(stat.split(separator: ")").last?.split(separator: " ").dropFirst(2).first ?? "") ?? 0
        guard group == nbdkit else { return XCTFail("nbdkit (\(nbdkit)) does not lead its process group (\(group))") }
        usleep(200_000)
        XCTAssertEqual(kill(-group, SIGKILL), 0)
        XCTAssertTrue(waitGone(nbdkit), "nbdkit survived SIGKILL")
        XCTAssertTrue(waitGone(shell, seconds: 5), "the command's shell outlived nbdkit")
        XCTAssertTrue(waitGone(sleeper, seconds: 5), "the command's child outlived nbdkit")
        let socket = (try? String(contentsOfFile: pids + ".sock", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        XCTAssertTrue(socket.hasSuffix("/socket"), socket)
        XCTAssertFalse(FileManager.default.fileExists(atPath: (socket as NSString).deletingLastPathComponent), "\(socket): its directory is left")
    }

    /// Requests refused with ESHUTDOWN are not errors in the server's log (as nbdkit): a client
    /// may send many before it disconnects, and each would be a line.
    func testRefusalsDuringShutdownDoNotFloodTheLog() throws {
        let s = try startServer(["memory", "1M"])
        let r = Harness.nbdsh(s.uri, """
        import errno, os, signal, time
        os.kill(\(s.pid), signal.SIGTERM)
        deadline = time.monotonic() + 10
        refused = 0
        while refused < 100:
            try:
                h.pread(512, 0)
                assert refused == 0, 'served after a refusal'
                assert time.monotonic() < deadline, 'requests still served 10 s after SIGTERM'
            except nbd.Error as e:
                assert (e.errno if isinstance(e.errno, str) else errno.errorcode.get(e.errno)) == 'ESHUTDOWN', e
                refused += 1
        h.shutdown()
        print(refused)
        """, timeout: 30)
        XCTAssertEqual(r.stdout, "100\n", r.stderr)
        XCTAssertEqual(s.stop(), 0, s.stderr)
        XCTAssertFalse(s.stderr.contains("ESHUTDOWN"), s.stderr)
    }

    /// Graceful shutdown as doc/proto.md asks: once SIGTERM has arrived, a request from a client
    /// that is still connected gets the error ESHUTDOWN (not a dropped connection), the client can
    /// then disconnect cleanly with NBD_CMD_DISC, and the server exits 0 soon after.
    func testRequestAfterSigtermGetsESHUTDOWN() throws {
        let s = try startServer(["-v", "memory", "1M"])
        let r = Harness.nbdsh(s.uri, """
        import errno, os, signal, time
        assert h.get_structured_replies_negotiated()
        h.pwrite(b'x' * 512, 0)
        os.kill(\(s.pid), signal.SIGTERM)
        # Send the next request only once the server has taken the signal (its debug log says so).
        deadline = time.monotonic() + 10
        while 'shutting down' not in open('\(s.stderrFile)').read():
            assert time.monotonic() < deadline, 'SIGTERM not handled within 10 s'
            time.sleep(0.02)
        time.sleep(0.2)
        # The first request to fail must fail with ESHUTDOWN.
        while True:
            try:
                h.pread(512, 0)
            except nbd.Error as e:
                print('error', e.errno if isinstance(e.errno, str) else errno.errorcode.get(e.errno, e.errno))
                break
            assert time.monotonic() < deadline, 'requests still served 10 s after SIGTERM'
            time.sleep(0.02)
        h.shutdown()
        print('disconnected')
        """, timeout: 30)
        XCTAssertEqual(r.stdout, "error ESHUTDOWN\ndisconnected\n", r.stderr)
        let deadline = Date().addingTimeInterval(3)
        while s.isRunning && Date() < deadline { usleep(10_000) }
        XCTAssertFalse(s.isRunning, "server still running 3 s after its last client disconnected")
        XCTAssertEqual(s.stop(), 0, s.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.socket))
    }

    /// A client that stays connected but idle after SIGTERM cannot hold the server: the
    /// connection is closed once the shutdown grace (5 s) is over, and the server exits 0.
    func testIdleClientCannotHoldShutdown() throws {
        let s = try startServer(["memory", "1M"])
        let r = Harness.nbdsh(s.uri, """
        import os, signal, time
        h.pread(512, 0)
        start = time.monotonic()
        os.kill(\(s.pid), signal.SIGTERM)
        while not (h.aio_is_dead() or h.aio_is_closed()):
            h.poll(100)
            assert time.monotonic() - start < 15, 'connection still open 15 s after SIGTERM'
        print('closed after %d s' % round(time.monotonic() - start))
        """, timeout: 30)
        XCTAssertEqual(r.stdout, "closed after 5 s\n", r.stderr)
        let deadline = Date().addingTimeInterval(3)
        while s.isRunning && Date() < deadline { usleep(10_000) }
        XCTAssertFalse(s.isRunning, "server still running 3 s after closing its last connection")
        XCTAssertEqual(s.stop(), 0, s.stderr)
    }

    func testManPageExamples() {
        let r = Harness.run([Harness.nbdkit, "-U", "-", "memory", "1", "--run", "nbdsh -u \"$uri\" -c \"print(h.pread(1, 0))\""])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(["b'\\x00'\n", "bytearray(b'\\x00')\n"].contains(r.stdout), r.stdout)
        let out = dir.file("disk.img")
        let copy = Harness.run([Harness.nbdkit, "-U", "-", "example1", "--run", "qemu-img convert \"$uri\" \(out)"])
        XCTAssertEqual(copy.status, 0, copy.stderr)
        XCTAssertEqual(contents(out).count, 1 << 20)
    }

    /// Starts `nbdkit --exit-with-parent` from a shell that then either exits or is killed.
    func exitWithParent(killParent: Bool) throws {
        let pidFile = dir.file("pid"), socket = dir.file("sock")
        let parent = Process()
        parent.executableURL = URL(fileURLWithPath: "/bin/sh")
        // (Without the kill, the parent exits once the test has made `go`, after its check.)
        let go = dir.file("go")
        parent.arguments = ["-c", "'\(Harness.nbdkit)' --exit-with-parent -U \(socket) memory 1M & echo $! > \(pidFile); " +
                            (killParent ? "exec sleep 60" : "i=0; while [ ! -e \(go) ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done")]
        parent.standardError = FileHandle.nullDevice
        try parent.run()
        defer { if parent.isRunning { kill(parent.processIdentifier, SIGKILL) } }
        guard let server = readPID(pidFile) else { return XCTFail("no server pid") }
        defer { kill(server, SIGKILL) }
        let deadline = Date().addingTimeInterval(10)
        // (Listening, not only there: the file appears at bind(2), a moment before listen(2).)
        while !ServerProcess.isListening(socket) && Date() < deadline { usleep(20_000) }
        let info = Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(socket)"])
        XCTAssertEqual(info.stdout, "1048576\n", "\(info.stderr) (server running: \(kill(server, 0) == 0))")
        if killParent { kill(parent.processIdentifier, SIGKILL) } else { XCTAssertTrue(FileManager.default.createFile(atPath: go, contents: nil)) }
        parent.waitUntilExit()
        XCTAssertTrue(waitGone(server, seconds: 5), "server outlived its parent")
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket))
    }

    func testExitWithParentNormalExit() throws { try exitWithParent(killParent: false) }
    func testExitWithParentSIGKILL() throws { try exitWithParent(killParent: true) }

    /// Checking the parameters first (a pass that builds the chain and drops it) leaves nothing
    /// open behind it: a server with exitlast (and delay) holds the descriptors a plain one
    /// holds, one eventfd among them (the pass's eventfd and its stand-in's /dev/null stayed
    /// open, kept by exitlast's observer).
    func testCheckingTheParametersLeavesNoDescriptorOpen() throws {
        func descriptors(_ arguments: [String], _ name: String) throws -> [String] {
            let s = try startServer(arguments, socketName: name)
            defer { s.stop() }
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(s.pid)/fd")) ?? []
            return fds.map { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(s.pid)/fd/\($0)")) ?? "?" }
                .map { $0.hasPrefix("socket:") || $0.hasPrefix("pipe:") ? String($0.prefix(while: { $0 != ":" })) : $0 }
                .map { $0.hasPrefix("/memfd:") ? "memfd" : $0.hasSuffix(".stderr") ? "stderr" : $0 }.sorted()
        }
        let plain = try descriptors(["memory", "1M"], "plain")
        // (With delay behind it, which holds the control too: a cycle through the filter.)
        for filters in [["--filter=exitlast"], ["--filter=exitlast", "--filter=delay"]] {
            XCTAssertEqual(try descriptors(filters + ["memory", "1M"], "filtered\(filters.count)"), plain, "\(filters)")
        }
        XCTAssertEqual(plain.filter { $0 == "anon_inode:[eventfd]" }.count, 1, "\(plain)")
    }

    /// As nbdkit: only a client that opened an export counts, so connections that leave before
    /// or during negotiation do not end the server; the first real client's departure does,
    /// not the close of an export it asked NBD_OPT_INFO about.
    func testExitLastFilter() throws {
        let s = try startServer(["--filter=exitlast", "memory", "1M"])
        let probes = Harness.run(["/usr/bin/python3", "-c", """
        import socket, struct, sys, time
        s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.close()
        s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(18); s.close()
        s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(18)
        s.sendall(struct.pack('>I', 3) + b'IHAVEOPT' + struct.pack('>II', 2, 0)); s.recv(20); s.close()
        time.sleep(0.5)
        """, s.socket], timeout: 20)
        XCTAssertEqual(probes.status, 0, probes.stderr)
        XCTAssertTrue(s.isRunning, "a client that never opened an export ended the server")
        // Plain nbdinfo asks NBD_OPT_INFO (which opens and closes the export) before NBD_OPT_GO:
        // it is served whole, and its departure ends the server.
        let info = Harness.run(["nbdinfo", s.uri])
        XCTAssertEqual(info.status, 0, info.stderr)
        XCTAssertTrue(info.stdout.contains("export-size: 1048576"), info.stdout)
        XCTAssertTrue(waitGone(s.pid), "exitlast did not exit")
        XCTAssertEqual(s.stop(), 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.socket))
    }

    /// As in nbdkit 1.32: when exitlast ends the server under --run, the command is not killed.
    /// It runs to its end, later clients are refused, and nbdkit exits with the command's status.
    func testExitLastWithRunLeavesTheCommandRunning() {
        let marker = dir.file("finished")
        let script = """
        nbdinfo --size "$uri" || exit 90
        # The server stops listening once its last client has gone.
        i=0; while [ -S "$unixsocket" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
        nbdinfo --size "$uri" 2>/dev/null && exit 91
        touch '\(marker)'
        exit 7
        """
        let r = Harness.run([Harness.nbdkit, "-U", "-", "--filter=exitlast", "memory", "1M", "--run", script], timeout: 30)
        XCTAssertEqual(r.status, 7, r.stderr)
        XCTAssertFalse(r.signalled)
        XCTAssertEqual(r.stdout, "1048576\n")
        XCTAssertTrue(FileManager.default.fileExists(atPath: marker), "the command was killed")
    }

    func exitWhen(_ parameters: [String], trigger: () -> Void) throws {
        let s = try startServer(["--filter=exitwhen", "memory", "1M", "exit-when-poll=1"] + parameters)
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", s.uri]).stdout, "1048576\n")
        usleep(1_200_000)
        XCTAssertTrue(s.isRunning, "exited before the event")
        trigger()
        XCTAssertTrue(waitGone(s.pid, seconds: 10), "exitwhen did not exit")
        XCTAssertEqual(s.stop(), 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.socket))
    }

    /// Relative exit-when-file-deleted and -created paths name files in the directory nbdkit
    /// was started in, also once the server has gone into the background and moved to / (as
    /// nbdkit, which makes them absolute at start-up).
    func testExitWhenRelativePathsInTheBackground() throws {
        _ = FileManager.default.createFile(atPath: dir.file("keep"), contents: nil)
        // (Through Python, which passes the daemon no descriptor but 0-2: see
        // CommandLineTests.testBackgroundModeWithPidFile.)
        let r = Harness.run(["/usr/bin/python3", "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[2:], cwd=sys.argv[1]))",
                             dir.path, Harness.nbdkit, "-P", "pid", "-U", "sock", "--filter=exitwhen", "memory", "1M",
                             "exit-when-file-deleted=keep", "exit-when-file-created=stop", "exit-when-poll=1"], timeout: 20)
        XCTAssertEqual(r.status, 0, r.stderr)
        let pid = try XCTUnwrap(Harness.waitForPID(in: dir.file("pid")), "no pid file")
        defer { kill(pid, SIGKILL) }
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(dir.file("sock"))"]).stdout, "1048576\n")
        usleep(1_200_000)
        XCTAssertTrue(kill(pid, 0) == 0 && !waitGone(pid, seconds: 0.1), "exited before the event")
        _ = FileManager.default.createFile(atPath: dir.file("stop"), contents: nil)
        XCTAssertTrue(waitGone(pid, seconds: 10), "exit-when-file-created=stop did not see the file")
    }

    /// exitwhen logs a script that ends other than with 0 or 88 as nbdkit does, and goes on
    /// serving; a script that exits 0 logs nothing.
    func testExitWhenScriptFailuresAreLogged() throws {
        let failing = try startServer(["--filter=exitwhen", "memory", "1M", "exit-when-script=exit 3"], socketName: "a")
        let killed = try startServer(["--filter=exitwhen", "memory", "1M", "exit-when-script=kill -9 $$"], socketName: "b")
        let quiet = try startServer(["--filter=exitwhen", "memory", "1M", "exit-when-script=exit 0"], socketName: "c")
        // The script runs once before the socket listens, so its message is there by now.
        XCTAssertTrue(failing.stderr.contains("nbdkit: error: exit-when-script: command failed with exit code 3\n"), failing.stderr)
        XCTAssertTrue(killed.stderr.contains("nbdkit: error: exit-when-script: command was killed by signal 9\n"), killed.stderr)
        XCTAssertEqual(quiet.stderr, "")
        for s in [failing, killed, quiet] {
            XCTAssertEqual(Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(s.socket)"]).stdout, "1048576\n")
            XCTAssertEqual(s.stop(), 0)
        }
    }

    /// As nbdkit: exit-when-pipe-closed on a descriptor that is not open is the event (the
    /// server exits 0 at once), and is said.
    func testExitWhenPipeClosedOnAClosedDescriptor() {
        let r = Harness.run([Harness.nbdkit, "-f", "-U", dir.file("s"), "--filter=exitwhen", "null", "exit-when-pipe-closed=97"], timeout: 20)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderr, "nbdkit: error: exit-when-pipe-closed: invalid file descriptor\n")
    }

    /// exitwhen's script, run at every poll, leaves nothing running behind it: no process (a
    /// --run watcher was started with every script and never stopped) and no descriptor.
    func testExitWhenScriptLeavesNoProcessBehind() throws {
        let s = try startServer(["--filter=exitwhen", "memory", "1M", "exit-when-poll=1", "exit-when-script=exit 0"])
        func children() -> [String] {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(s.pid)/task")) ?? []
            return tasks.flatMap { task in
                ((try? String(contentsOfFile: "/proc/\(s.pid)/task/\(task)/children", encoding: .utf8)) ?? "")
                    .split(separator: " ").map(String.init)
            }
        }
        let descriptors = { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(s.pid)/fd"))?.count ?? -1 }
        usleep(1_500_000)
        let before = descriptors()
        usleep(3_000_000)    // three more polls, each running the script
        XCTAssertEqual(children(), [], "processes left by the script's runs")
        XCTAssertEqual(descriptors(), before, "descriptors left by the script's runs")
        XCTAssertTrue(s.isRunning, s.stderr)
        XCTAssertEqual(s.stop(), 0)
    }

    /// The event is checked again when a client closes its export, so with the default 60 s
    /// poll the server still exits at once when its last client leaves after the event.
    func testExitWhenChecksWhenTheLastClientLeaves() throws {
        let flag = dir.file("flag")
        let s = try startServer(["--filter=exitwhen", "memory", "1M", "exit-when-file-created=\(flag)"])
        let start = Date()
        let r = Harness.nbdsh(s.uri, "open(\(Harness.pythonString(flag)), 'w').close(); h.pread(512, 0)")
        XCTAssertEqual(r.status, 0)
        XCTAssertTrue(waitGone(s.pid, seconds: 10), "exitwhen waited for its poll")
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        XCTAssertEqual(s.stop(), 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.socket))
    }

    /// Once the event has happened, a client still connected is served while new ones are
    /// refused, each refusal logged as nbdkit logs it (the accept loop closed them silently).
    /// The first, refused when it opens the export, is told the server is shutting down
    /// (NBD_REP_ERR_SHUTDOWN, not "unknown export").
    func testExitWhenRefusesNewClientsWithAMessage() throws {
        let flag = dir.file("flag")
        let s = try startServer(["--filter=exitwhen", "memory", "1M", "exit-when-file-created=\(flag)"])
        let r = Harness.nbdsh(s.uri, """
        import socket, struct, subprocess
        open(\(Harness.pythonString(flag)), 'w').close()
        raw = socket.socket(socket.AF_UNIX); raw.settimeout(10); raw.connect(\(Harness.pythonString(s.socket)))
        raw.recv(18, socket.MSG_WAITALL); raw.sendall(struct.pack('>I', 1))
        raw.sendall(b'IHAVEOPT' + struct.pack('>IIIH', 7, 6, 0, 0))
        print(hex(struct.unpack('>QIII', raw.recv(20, socket.MSG_WAITALL))[2]))
        r = subprocess.run(['nbdinfo', '--size', \(Harness.pythonString(s.uri))], capture_output=True, timeout=20)
        print(r.returncode != 0)
        print(h.pread(2, 0))
        """)
        XCTAssertEqual(r.stdout, "0x80000007\nTrue\nbytearray(b'\\x00\\x00')\n", r.stderr)
        XCTAssertTrue(waitGone(s.pid, seconds: 10))
        XCTAssertEqual(s.stop(), 0)
        // The first refused at its open (the event found then), the second as it connects.
        let lines = s.stderr.split(separator: "\n").filter { $0.hasSuffix("exitwhen: nbdkit is exiting: rejecting new connection") }
        XCTAssertEqual(lines.count, 2, s.stderr)
        XCTAssertTrue(lines.contains("nbdkit: error: exitwhen: nbdkit is exiting: rejecting new connection"), s.stderr)
    }

    /// As nbdkit: an event that has already happened when the server gets ready ends the run at
    /// once with status 0, before any socket, pid file or --run command.
    func testExitWhenEventBeforeStartExitsAtOnce() {
        let flag = dir.file("flag")
        _ = FileManager.default.createFile(atPath: flag, contents: nil)
        let marker = dir.file("ran")
        let captive = Harness.run([Harness.nbdkit, "-U", "-", "--filter=exitwhen", "null", "exit-when-file-created=\(flag)",
                                   "--run", "touch \(marker)"], timeout: 20)
        XCTAssertEqual(captive.status, 0, captive.stderr)
        XCTAssertEqual(captive.stderr, "")
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "the command ran")
        let pidFile = dir.file("pid"), socket = dir.file("sock")
        let foreground = Harness.run([Harness.nbdkit, "-f", "-P", pidFile, "-U", socket, "--filter=exitwhen", "null",
                                      "exit-when-file-deleted=\(dir.file("absent"))"], timeout: 20)
        XCTAssertEqual(foreground.status, 0, foreground.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: pidFile))
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket))
    }

    func testExitWhenFileCreated() throws {
        let f = dir.file("flag")
        try exitWhen(["exit-when-file-created=\(f)"]) { _ = FileManager.default.createFile(atPath: f, contents: nil) }
    }

    func testExitWhenFileDeleted() throws {
        let f = dir.file("flag")
        _ = FileManager.default.createFile(atPath: f, contents: nil)
        try exitWhen(["exit-when-file-deleted=\(f)"]) { unlink(f) }
    }

    func testExitWhenProcessExits() throws {
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["60"]
        try sleeper.run()
        defer { if sleeper.isRunning { kill(sleeper.processIdentifier, SIGKILL) } }
        try exitWhen(["exit-when-process-exits=\(sleeper.processIdentifier)"]) {
            kill(sleeper.processIdentifier, SIGKILL)
            sleeper.waitUntilExit()
        }
    }

    /// nbdkit's other spellings of two events are taken (the events have not happened: the
    /// command runs and the server serves it).
    func testExitWhenAliases() {
        let r = Harness.run(["/bin/bash", "-c", """
            sleep 30 & s=$!
            exec 3< <(sleep 30); p=$!
            "$0" -U - --filter=exitwhen memory 1M exit-when-pid-exits=$s exit-when-fd-closed=3 --run 'nbdinfo --size "$uri"'
            status=$?; kill $s $p; exit $status
            """, Harness.nbdkit], timeout: 20)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "1048576\n")
    }

    func testExitWhenScript() throws {
        let f = dir.file("flag")
        try exitWhen(["exit-when-script=test -f \(f) && exit 88; exit 0"]) {
            _ = FileManager.default.createFile(atPath: f, contents: nil)
        }
    }

    func testExitWhenPipeClosed() throws {
        // Python holds the write end of a pipe whose read end nbdkit inherits.
        let socket = dir.file("sock")
        let r = Harness.run(["/usr/bin/python3", "-c", """
        import os, subprocess, sys, time
        r, w = os.pipe()
        p = subprocess.Popen([sys.argv[1], '-f', '-U', sys.argv[2], '--filter=exitwhen', 'memory', '1M',
                              'exit-when-pipe-closed=%d' % r, 'exitwhen-poll=1'], pass_fds=[r])
        os.close(r)
        for _ in range(200):
            if os.path.exists(sys.argv[2]): break
            time.sleep(0.05)
        time.sleep(1.2)
        assert p.poll() is None, 'exited before the pipe closed'
        os.close(w)
        print(p.wait(timeout=10))
        """, Harness.nbdkit, socket], timeout: 30)
        XCTAssertEqual(r.stdout, "0\n", r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket))
    }

    /// An unknown -u or -g name is a start-up error, found before anything starts: no socket
    /// is left, and a --run command never runs (nbdkit 1.32 runs it first).
    func testBadUserAndGroupAreErrors() {
        let u = Harness.run([Harness.nbdkit, "-f", "-U", dir.file("s"), "-u", "no-such-user-x", "memory", "1M"], timeout: 20)
        XCTAssertEqual(u.status, 1)
        XCTAssertTrue(u.stderr.contains("nbdkit: error: -u option: no-such-user-x is not a valid user name or uid"), u.stderr)
        let g = Harness.run([Harness.nbdkit, "-f", "-U", dir.file("s"), "-g", "no-such-group-x", "memory", "1M"], timeout: 20)
        XCTAssertEqual(g.status, 1)
        XCTAssertTrue(g.stderr.contains("nbdkit: error: -g option: no-such-group-x is not a valid group name or gid"), g.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("s")), "socket removed after a start-up failure")
        for option in [["-u", "no-such-user-x"], ["-g", "no-such-group-x"]] {
            let r = Harness.run([Harness.nbdkit, "-U", "-"] + option + ["memory", "1M", "--run", "echo ran"], timeout: 20)
            XCTAssertEqual(r.status, 1, r.stderr)
            XCTAssertEqual(r.stdout, "", "\(option): the command ran")
        }
    }

    /// As root: -u/-g take effect before the first client is served (the command's nbdinfo
    /// succeeds first, then reads the server's credentials), and the private directory of
    /// `-U -` is still removed at exit although the server no longer runs as root.
    func testUserAndGroupDropPrivileges() throws {
        try XCTSkipUnless(getuid() == 0, "changing user needs root")
        let r = Harness.run([Harness.nbdkit, "-U", "-", "-u", "nobody", "-g", "nogroup", "memory", "1M", "--run",
                             "nbdinfo --size \"$uri\" && grep -E '^(Uid|Gid|Groups):' /proc/$PPID/status && dirname \"$unixsocket\""])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stdout.split(separator: "\n").map { $0.split(whereSeparator: { $0 == "\t" || $0 == " " }).joined(separator: " ") }
        XCTAssertEqual(Array(lines.prefix(4)), ["1048576", "Uid: 65534 65534 65534 65534", "Gid: 65534 65534 65534 65534",
                                                "Groups: 65534"], r.stdout)
        let privateDir = lines.last ?? ""
        XCTAssertTrue(privateDir.hasPrefix("/"), r.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: privateDir), "\(privateDir) left behind")
    }

    /// As root with -u: the --run command keeps root's privileges (as under nbdkit) while the
    /// server runs as the new user, which may not signal it, so the signals nbdkit passes on
    /// go through the command's watcher: SIGTERM to nbdkit, and the parent's death under
    /// --exit-with-parent, end the command at once (it ran on to its end before).
    func testSignalsReachTheCommandAfterTheUserChange() throws {
        try XCTSkipUnless(getuid() == 0, "changing user needs root")
        for killParent in [false, true] {
            let pidFile = dir.file("pid-\(killParent)"), commandPIDFile = dir.file("command-\(killParent)")
            let parent = Process()
            parent.executableURL = URL(fileURLWithPath: "/bin/sh")
            parent.arguments = ["-c", "'\(Harness.nbdkit)' --exit-with-parent -U - -u nobody -g nogroup memory 1M " +
                                "--run 'echo $$ > \(commandPIDFile); exec sleep 30' & echo $! > \(pidFile); exec sleep 60"]
            parent.standardError = FileHandle.nullDevice
            try parent.run()
            defer { if parent.isRunning { kill(parent.processIdentifier, SIGKILL) } }
            guard let server = readPID(pidFile), let command = readPID(commandPIDFile) else { return XCTFail("no pids") }
            defer { kill(server, SIGKILL); kill(command, SIGKILL) }
            if killParent { kill(parent.processIdentifier, SIGKILL) } else { kill(server, SIGTERM) }
            XCTAssertTrue(waitGone(command, seconds: 5), "the command outlived nbdkit's signal (parent killed: \(killParent))")
            XCTAssertTrue(waitGone(server, seconds: 5), "nbdkit still running (parent killed: \(killParent))")
        }
    }

    /// As root with -u: a pid file made beforehand for the new user, in a directory only root
    /// may write to (as a service's start-up script does for nbdkit), is written in place with
    /// the server's pid; a new file can't be made there.
    func testPIDFileMadeBeforehandForTheNewUser() throws {
        try XCTSkipUnless(getuid() == 0, "changing user needs root")
        let run = dir.file("run")
        let pidFile = run + "/nbdkit.pid"
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: false)
        XCTAssertEqual(chmod(dir.path, 0o755), 0)
        XCTAssertTrue(FileManager.default.createFile(atPath: pidFile, contents: Data("stale\n".utf8)))
        let nobody = getpwnam("nobody")!.pointee.pw_uid
        XCTAssertEqual(chown(pidFile, nobody, gid_t(bitPattern: -1)), 0)
        let s = try startServer(["-u", "nobody", "-g", "nogroup", "-P", pidFile, "memory", "1M"])
        let deadline = Date().addingTimeInterval(10)
        while String(decoding: contents(pidFile), as: UTF8.self) != "\(s.pid)\n" && Date() < deadline { usleep(20_000) }
        XCTAssertEqual(String(decoding: contents(pidFile), as: UTF8.self), "\(s.pid)\n", s.stderr)
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", s.uri]).stdout, "1048576\n")
    }

    /// As root with -u: the exitwhen filter's polling (its scripts included) starts once the user
    /// has changed, as nbdkit's after_fork; only the check as the server gets ready, before,
    /// runs as root (a change of the start-up order ran the first polls as root).
    func testExitWhenScriptsRunAsTheNewUser() throws {
        try XCTSkipUnless(getuid() == 0, "changing user needs root")
        let shared = dir.file("shared")
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: false)
        XCTAssertEqual(chmod(dir.path, 0o755), 0)
        XCTAssertEqual(chmod(shared, 0o777), 0)
        let ids = shared + "/ids"
        XCTAssertTrue(FileManager.default.createFile(atPath: ids, contents: nil))
        XCTAssertEqual(chmod(ids, 0o666), 0)
        let s = try startServer(["-u", "nobody", "-g", "nogroup", "--filter=exitwhen", "memory", "1M", "exit-when-poll=1",
                                 "exit-when-script=id -u >> \(ids); exit 0"])
        let deadline = Date().addingTimeInterval(10)
        func lines() -> [Substring] { String(decoding: contents(ids), as: UTF8.self).split(separator: "\n") }
        while lines().count < 3 && Date() < deadline { usleep(50_000) }
        s.stop()
        let seen = lines()
        XCTAssertGreaterThanOrEqual(seen.count, 3, s.stderr)
        XCTAssertEqual(Array(seen.dropFirst()), Array(repeating: "65534", count: max(seen.count - 1, 0)), "\(seen)")
    }

    /// The pid file is there, with the server's pid, when the --run command starts (nbdkit
    /// writes it as the command starts, a race the command may lose).
    func testPIDFileIsWrittenBeforeTheCommandStarts() {
        let pidFile = dir.file("pid")
        let r = Harness.run([Harness.nbdkit, "-P", pidFile, "-U", "-", "null", "--run", "echo $PPID; cat \(pidFile)"], timeout: 20)
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stdout.split(separator: "\n")
        XCTAssertEqual(lines.count, 2, r.stdout)
        XCTAssertEqual(lines.first, lines.last, r.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: pidFile))
    }

    /// As root with -u and --swap: the memory-lock limit is lifted before the user changes
    /// (RLIMIT_MEMLOCK 8 MiB at the start here), so the new user's server can start its threads
    /// and lock a disk larger than that limit; where the limit can't be lifted (a container
    /// without CAP_SYS_RESOURCE) that is a start-up error, before the --run command starts.
    /// (Before, every connection failed to start its thread, after the command had started.)
    func testSwapWithANewUser() throws {
        try XCTSkipUnless(getuid() == 0, "changing user needs root")
        let source = randomFile("source", count: 16 << 20), copy = dir.file("copy")
        let command = "echo started; nbdcopy \(source) \"$uri\" && nbdcopy \"$uri\" \(copy) && cmp -n \(16 << 20) \(source) \(copy) && echo same"
        let r = Harness.run(["prlimit", "--memlock=8388608:", Harness.nbdkit, "-u", "nobody", "-g", "nogroup", "--swap",
                             "-U", "-", "memory", "64M", "--run", command], timeout: 60)
        // Only a change to another user needs it: with -g alone (or -u root) the server keeps
        // its privilege to lock.
        let group = Harness.run([Harness.nbdkit, "-g", "nogroup", "--swap", "-U", "-", "memory", "64M", "--run", "nbdinfo --size \"$uri\""],
                                timeout: 30)
        XCTAssertEqual(group.status, 0, group.stderr)
        XCTAssertEqual(group.stdout, "67108864\n", group.stderr)
        if Harness.run(["prlimit", "--memlock=unlimited:unlimited", "true"]).status == 0 {
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stdout, "started\nsame\n", r.stderr)
        } else {
            XCTAssertEqual(r.status, 1)
            XCTAssertEqual(r.stdout, "", "the --run command started")
            XCTAssertTrue(r.stderr.hasPrefix("nbdkit: error: --swap: the memory-lock limit (RLIMIT_MEMLOCK, "), r.stderr)
        }
    }

    /// `--swap` locks the memory of the process that serves (VmLck in /proc): a captive
    /// server's, but none of its 1 GiB memory disk until written (RssShmem 0, see
    /// testSwapLocksMemoryDiskPagesAsWritten), and a background server's after it forked;
    /// without it nothing is locked. Without CAP_IPC_LOCK and with
    /// RLIMIT_MEMLOCK 0 it is a start-up error, and the --run command never starts.
    func testSwapLocksTheServingProcessIntoMemory() throws {
        try XCTSkipUnless(getuid() == 0, "locking 17 MB of memory needs root (or a large RLIMIT_MEMLOCK)")
        func lockedKiB(_ status: String) -> Int? {
            status.split(separator: "\n").first { $0.hasPrefix("VmLck:") }
                .flatMap { Int($0.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") }
        }
        let captive = Harness.run([Harness.nbdkit, "--swap", "-U", "-", "memory", "1G", "--run", "cat /proc/$PPID/status"])
        XCTAssertEqual(captive.status, 0, captive.stderr)
        XCTAssertGreaterThan(lockedKiB(captive.stdout) ?? 0, 1000, captive.stdout)
        XCTAssertTrue(captive.stdout.contains("\nRssShmem:\t       0 kB\n"), "the memory disk was populated: \(captive.stdout)")
        let plain = Harness.run([Harness.nbdkit, "-U", "-", "memory", "1M", "--run", "cat /proc/$PPID/status"])
        XCTAssertEqual(lockedKiB(plain.stdout), 0, plain.stdout)

        let pidFile = dir.file("pid"), socket = dir.file("sock")
        let started = Harness.run(["/usr/bin/python3", "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))",
                                   Harness.nbdkit, "--swap", "-P", pidFile, "-U", socket, "memory", "1M"], timeout: 20)
        XCTAssertEqual(started.status, 0, started.stderr)
        guard let pid = Harness.waitForPID(in: pidFile) else { return XCTFail("no pid in \(pidFile)") }
        defer { kill(pid, SIGKILL) }
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        XCTAssertGreaterThan(lockedKiB(status) ?? 0, 1000, "the background server is not locked")
        XCTAssertEqual(kill(pid, SIGTERM), 0)

        let marker = dir.file("ran")
        let refused = Harness.run(["setpriv", "--bounding-set=-ipc_lock", "prlimit", "--memlock=0:0",
                                   Harness.nbdkit, "--swap", "-U", "-", "memory", "1M", "--run", "touch \(marker)"])
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("nbdkit: error: --swap: mlockall:"), refused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "the --run command started")
    }

    /// Under `--swap` each page of the memory disk is locked into RAM when it is written, large
    /// writes included and with a filter in front, and freed by trim; none is taken before. A
    /// disk that can't be locked that way (larger than RAM) is a start-up error.
    func testSwapLocksMemoryDiskPagesAsWritten() throws {
        try XCTSkipUnless(getuid() == 0, "--swap needs root (or a large RLIMIT_MEMLOCK)")
        for (n, filters) in [[], ["--filter=noextents"]].enumerated() {
            let s = try startServer(["--swap"] + filters + ["memory", "256M"], socketName: "s\(n)")
            func kib(_ file: String, _ field: String) -> Int {
                let text = (try? String(contentsOfFile: "/proc/\(s.pid)/\(file)", encoding: .utf8)) ?? ""
                let line = text.split(separator: "\n").first { $0.hasPrefix(field + ":") } ?? ""
                return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? -1
            }
            // The socket listens before the memory is locked; a served request comes after.
            XCTAssertEqual(Harness.run(["nbdinfo", "--size", s.uri]).stdout, "268435456\n")
            XCTAssertEqual(kib("status", "RssShmem"), 0, "\(filters)")
            let lockedBefore = kib("smaps_rollup", "Locked")
            XCTAssertGreaterThan(lockedBefore, 0)
            XCTAssertEqual(Harness.run(["nbdcopy", randomFile("source", count: 8 << 20), s.uri]).status, 0)
            Harness.nbdsh(s.uri, "h.pwrite(b'x' * 4096, 128 << 20)")
            XCTAssertGreaterThanOrEqual(kib("status", "RssShmem"), 8196, "\(filters)")
            XCTAssertGreaterThanOrEqual(kib("smaps_rollup", "Locked") - lockedBefore, 8196, "written pages are not locked: \(filters)")
            Harness.nbdsh(s.uri, "h.trim(256 << 20, 0)")
            XCTAssertEqual(kib("status", "RssShmem"), 0, "\(filters)")
            s.stop()
        }
        let marker = dir.file("ran")
        let huge = Harness.run([Harness.nbdkit, "--swap", "-U", "-", "memory", "1P", "--run", "touch \(marker)"])
        XCTAssertEqual(huge.status, 1)
        XCTAssertTrue(huge.stderr.hasPrefix("nbdkit: error: memory: --swap: cannot lock the disk's pages into RAM as they are written: it is mapped only when"),
                      huge.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker))
    }

    /// Under `--swap` every thread's stack is locked in full, so thread stacks are small: with
    /// 32 slow reads in flight one connection runs 16 workers, and the server stays far below
    /// the 128 MB that glibc's default 8 MiB stacks would lock.
    func testSwapWithSixteenWorkersLocksLittle() throws {
        try XCTSkipUnless(getuid() == 0, "--swap needs root (or a large RLIMIT_MEMLOCK)")
        let script = dir.file("status.py")
        try """
        import os
        buffers = [nbd.Buffer(4096) for _ in range(32)]
        for b in buffers: h.aio_pread(b, 0)
        while h.aio_in_flight() > 0: h.poll(-1)
        print(open('/proc/%s/status' % os.environ['NBDKIT_PID']).read())
        """.write(toFile: script, atomically: true, encoding: .utf8)
        let r = Harness.run([Harness.nbdkit, "--swap", "-U", "-", "--filter=delay", "memory", "1M", "rdelay=50ms", "--run",
                             "NBDKIT_PID=$PPID exec /usr/bin/nbdsh -u \"$uri\" -c \"exec(open('\(script)').read())\""])
        XCTAssertEqual(r.status, 0, r.stderr)
        func field(_ name: String) -> Int {
            let line = r.stdout.split(separator: "\n").first { $0.hasPrefix(name + ":") } ?? ""
            return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? -1
        }
        XCTAssertGreaterThanOrEqual(field("Threads"), 17, r.stdout)
        XCTAssertGreaterThan(field("VmRSS"), 0, r.stdout)
        XCTAssertLessThan(field("VmRSS"), 80_000, "kB resident (all of it locked): \(r.stdout)")
    }

    /// In an interactive shell (bash on a pseudo-terminal), the --run command gets the terminal,
    /// and Ctrl-Z stops nbdkit with it as one job: the shell says Stopped and prompts again,
    /// `fg` runs the command on to its end (status 0), and `kill %1` of the stopped job ends
    /// nbdkit and the command (143), leaving no process behind. (Only the command's group
    /// stopped, nbdkit waited on, and the shell never prompted again.) After Ctrl-Z, `bg` and
    /// `fg`, and after starting in the background (`&`) and `fg`, the command reads the
    /// terminal (it stayed stopped, or the shell read its input); run by `bash -c`, Ctrl-Z
    /// stops that shell's job too.
    func testCtrlZStopsTheCommandAndNbdkitAsOneJob() throws {
        let marker = "29.\(getpid())"
        let r = Harness.run(["/usr/bin/python3", "-c", """
        import os, pty, select, sys, time
        nbdkit, marker = sys.argv[1].encode(), sys.argv[2].encode()
        pid, fd = pty.fork()
        if pid == 0:
            # (No descriptor of the test's but the terminal: see testBackgroundModeWithPidFile.)
            os.closerange(3, 65536)
            os.execvp('bash', ['bash', '--norc', '--noprofile', '-i'])
        buf = b''
        def read_until(token, timeout=10):
            global buf
            end = time.time() + timeout
            while token not in buf:
                ready, _, _ = select.select([fd], [], [], max(0, end - time.time()))
                if not ready:
                    os.kill(pid, 9)
                    sys.exit('waiting for %r, got %r' % (token, buf))
                buf += os.read(fd, 4096)
            buf = buf[buf.index(token) + len(token):]
        def suspend():
            # Ctrl-Z once the command runs; the shell reports the job stopped and prompts.
            time.sleep(0.3)
            os.write(fd, b'\\x1a')
            read_until(b'Stopped')
            read_until(b'PROMPT:')
        os.write(fd, b'PS1=PROMPT:\\n')
        read_until(b'PROMPT:')
        read_until(b'PROMPT:')
        os.write(fd, nbdkit + b" -U - null --run 'echo START''ED; sleep 2; echo FINISH''ED; : " + marker + b"'\\n")
        read_until(b'STARTED')
        suspend()
        os.write(fd, b'fg\\n')
        read_until(b'FINISHED')
        os.write(fd, b'echo STATUS=$?.\\n')
        read_until(b'STATUS=0.')
        os.write(fd, nbdkit + b" -U - null --run 'echo START''ED; sleep " + marker + b"'\\n")
        read_until(b'STARTED')
        suspend()
        os.write(fd, b'kill %1\\n')
        read_until(b'PROMPT:')
        os.write(fd, b'sleep 1\\n')
        read_until(b'Exit 143')
        # Ctrl-Z, bg, fg: the command reads the terminal once back in the foreground.
        os.write(fd, nbdkit + b" -U - null --run 'echo START''ED; sleep 1; read x; echo GOT-$x; : " + marker + b"'\\n")
        read_until(b'STARTED')
        suspend()
        os.write(fd, b'bg\\n')
        read_until(b'PROMPT:')
        os.write(fd, b'fg\\n')
        time.sleep(1.5)
        os.write(fd, b'hello\\n')
        read_until(b'GOT-hello')
        os.write(fd, b'echo STATUS=$?.\\n')
        read_until(b'STATUS=0.')
        # Started in the background, the command stops reading the terminal; fg lets it read.
        os.write(fd, nbdkit + b" -U - null --run 'read x; echo GOT-$x; : " + marker + b"' &\\n")
        read_until(b'PROMPT:')
        time.sleep(1)
        os.write(fd, b'\\n')
        read_until(b'Stopped')
        read_until(b'PROMPT:')
        os.write(fd, b'fg\\n')
        time.sleep(0.5)
        os.write(fd, b'there\\n')
        read_until(b'GOT-there')
        # Run by a non-interactive shell, which only sees a stop of its own process group.
        os.write(fd, b"bash -c \\"" + nbdkit + b" -U - null --run 'echo START''ED; sleep 2; : " + marker + b"'; echo AFTER-\\$?\\"\\n")
        read_until(b'STARTED')
        suspend()
        os.write(fd, b'fg\\n')
        read_until(b'AFTER-0')
        os.write(fd, b'exit\\n')
        os.waitpid(pid, 0)
        print('ok')
        """, Harness.nbdkit, marker], timeout: 60)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        let left = Harness.run(["pgrep", "-f", "sleep \(marker)"])
        XCTAssertEqual(left.stdout, "", "the command outlived nbdkit")
        // Whatever a failure left stopped (nbdkit, the commands, their watchers) goes.
        _ = Harness.run(["pkill", "-CONT", "-f", marker])
        _ = Harness.run(["pkill", "-9", "-f", marker])
    }

    /// A start-up failure after the --run command started (here the pid file cannot be
    /// written) takes the command down too: nbdkit exits 1 and nothing of the command remains.
    func testCommandDoesNotOutliveAFailedStartUp() {
        let marker = "31.\(getpid())"
        let r = Harness.run([Harness.nbdkit, "-U", "-", "-P", dir.file("missing/dir/pid"), "memory", "1M",
                             "--run", "exec sleep \(marker)"], timeout: 20)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("nbdkit: error:"), r.stderr)
        usleep(300_000)
        let left = Harness.run(["pgrep", "-f", "sleep \(marker)"])
        XCTAssertEqual(left.stdout, "", "the command outlived nbdkit")
        if !left.stdout.isEmpty { _ = Harness.run(["pkill", "-f", "sleep \(marker)"]) }
    }
}
