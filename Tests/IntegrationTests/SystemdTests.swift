import XCTest

/// Socket activation through Debian's `systemd-socket-activate`, sd_notify messages received
/// on a NOTIFY_SOCKET this test owns, and the shipped unit files checked by `systemd-analyze`.
final class SystemdTests: IntegrationTestCase {
    private var background: [SpawnedProcess] = []

    override func tearDown() {
        background.forEach { $0.kill9() }
        background = []
        super.tearDown()
    }

    /// Starts `arguments` in the background with `environment` added; stderr goes to `stderrFile`.
    func launch(_ arguments: [String], environment: [String: String] = [:], stderrFile: String) throws -> SpawnedProcess {
        let p = try SpawnedProcess(arguments, environment: Harness.environment.merging(environment) { $1 },
                                   stderrFile: stderrFile)
        background.append(p)
        return p
    }

    /// Waits until `condition` holds, for at most `seconds`.
    func waitFor(_ seconds: Double = 20, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() {
            if Date() >= deadline { return false }
            usleep(10_000)
        }
        return true
    }

    /// SIGTERM, then the exit status (SIGKILL after 10 s counts as a failure).
    func terminate(_ p: SpawnedProcess, file: StaticString = #filePath, line: UInt = #line) -> Int32 {
        kill(p.pid, SIGTERM)
        let status = p.wait(seconds: 10)
        if status == -1 { XCTFail("still running 10 s after SIGTERM", file: file, line: line) }
        return status
    }

    /// `systemd-socket-activate -l ADDRESS... nbdkit arguments...`; returns once it listens.
    func activate(_ addresses: [String], _ arguments: [String], environment: [String: String] = [:],
                  activatorOptions: [String] = []) throws -> SpawnedProcess {
        let log = dir.file("activate.stderr")
        let listen = addresses.flatMap { ["-l", $0] } + activatorOptions
        let env = environment.flatMap { ["-E", "\($0.key)=\($0.value)"] }
        let p = try launch(["/usr/bin/systemd-socket-activate"] + listen + env + [Harness.nbdkit] + arguments, stderrFile: log)
        let listening = waitFor {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            return text.components(separatedBy: "Listening on").count - 1 == addresses.count
        }
        XCTAssertTrue(listening, "systemd-socket-activate did not listen: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        return p
    }

    /// Copies random data in with qemu-img and compares it back.
    func roundTrip(_ uri: String) {
        let data = randomFile("data", count: 1 << 20)
        let put = Harness.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", data, uri])
        XCTAssertEqual(put.status, 0, put.stderr)
        let cmp = Harness.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", data, uri])
        XCTAssertEqual(cmp.status, 0, cmp.stdout + cmp.stderr)
    }

    func testSocketActivationOnUnixSocket() throws {
        let socket = dir.file("sa.sock")
        let p = try activate([socket], ["-v", "memory", "1M"], activatorOptions: ["--fdname=disk1"])
        let uri = "nbd+unix:///?socket=\(socket)"
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", uri]).stdout, "1048576\n")
        roundTrip(uri)
        XCTAssertEqual(terminate(p), 0)
        // The name from LISTEN_FDNAMES is reported with the descriptor.
        let log = (try? String(contentsOfFile: dir.file("activate.stderr"), encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("nbdkit: debug: socket activation: serving fd 3 (disk1)"), log)
    }

    func testSocketActivationOnTCPSocket() throws {
        let port = Harness.freePort()
        let p = try activate(["127.0.0.1:\(port)"], ["memory", "1M"])
        let uri = "nbd://127.0.0.1:\(port)"
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", uri]).stdout, "1048576\n")
        roundTrip(uri)
        XCTAssertEqual(terminate(p), 0)
    }

    /// Every passed socket is served, Unix and TCP alike, by the one server.
    func testSocketActivationServesEveryPassedSocket() throws {
        let socket = dir.file("sa.sock"), port = Harness.freePort()
        let p = try activate([socket, "127.0.0.1:\(port)"], ["memory", "1M"])
        let unix = "nbd+unix:///?socket=\(socket)", tcp = "nbd://127.0.0.1:\(port)"
        let write = Harness.nbdsh(unix, "h.pwrite(b'shared!!', 4096)")
        XCTAssertEqual(write.status, 0)
        XCTAssertEqual(Harness.nbdsh(tcp, "print(bytes(h.pread(8, 4096)))").stdout, "b'shared!!'\n")
        XCTAssertEqual(terminate(p), 0)
    }

    /// Where to listen is systemd's decision: -p, -i, -U, --run and -s are refused.
    func testSocketActivationRefusesListenOptions() {
        for options in [["-p", "10810"], ["-i", "127.0.0.1"], ["-U", dir.file("x")], ["--run", "true"], ["-s"]] {
            let quoted = options.map { "'\($0)'" }.joined(separator: " ")
            // exec keeps the shell's PID, so LISTEN_PID names the nbdkit process.
            let r = Harness.shell("exec env LISTEN_PID=$$ LISTEN_FDS=1 '\(Harness.nbdkit)' \(quoted) memory 1M 3</dev/null")
            XCTAssertEqual(r.status, 1, "\(options): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("nbdkit: error: socket activation"), "\(options): \(r.stderr)")
        }
    }

    /// LISTEN_* read as nbdkit reads them: a descriptor counted but not passed (here fd 3, or
    /// fd 4 beside a passed 3), one that is not a listening socket, and a count of 0 are
    /// errors (the server's own signalfd and
    /// eventfd were served instead, silently); LISTEN_PID naming another process or not a
    /// number is said and ignored; names that don't match the count leave the socket unnamed
    /// (libsystemd's EINVAL refused to start).
    func testSocketActivationChecksWhatItIsGiven() throws {
        let nbdkit = "'\(Harness.nbdkit)'"
        for (script, message) in [
            ("exec 3>&-; LISTEN_PID=$$ LISTEN_FDS=1 exec \(nbdkit) -f memory 1M",
             "nbdkit: socket activation: invalid file descriptor fd = 3: Bad file descriptor\n"),
            ("exec 3</dev/null 4>&-; LISTEN_PID=$$ LISTEN_FDS=2 exec \(nbdkit) -f memory 1M",
             "nbdkit: socket activation: invalid file descriptor fd = 4: Bad file descriptor\n"),
            ("LISTEN_PID=$$ LISTEN_FDS=0 exec \(nbdkit) -f memory 1M", "nbdkit: socket activation: LISTEN_FDS=0 out of range\n"),
            // (It crashed, failing to make room for two billion sockets before looking at one.)
            ("exec 3</dev/null 4>&-; LISTEN_PID=$$ LISTEN_FDS=2147483644 exec \(nbdkit) -f memory 1M",
             "nbdkit: socket activation: invalid file descriptor fd = 4: Bad file descriptor\n"),
            // (Served, it failed every accept at once and flooded the log.)
            ("exec 3</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec \(nbdkit) -f memory 1M",
             "nbdkit: error: socket activation: fd = 3 is not a listening socket (the socket unit must have Accept=no)\n"),
        ] {
            let r = Harness.shell(script, timeout: 20)
            XCTAssertEqual(r.status, 1, script)
            XCTAssertEqual(r.stderr, message, script)
        }
        for (pid, message) in [("1", "nbdkit: LISTEN_PID was not for us (ignored)\n"),
                               ("x", "nbdkit: error: LISTEN_PID: empty string where we expected a number\n")] {
            let r = Harness.shell("LISTEN_PID=\(pid) LISTEN_FDS=1 exec \(nbdkit) -U - memory 1M --run 'nbdinfo --size \"$uri\"'", timeout: 20)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stdout, "1048576\n")
            XCTAssertEqual(r.stderr, message)
        }
        let socket = dir.file("sa.sock")
        let p = try launch(["/usr/bin/systemd-socket-activate", "-l", socket, "/bin/sh", "-c",
                            "LISTEN_FDNAMES=a:b exec \"$0\" -v memory 1M", Harness.nbdkit], stderrFile: dir.file("names.stderr"))
        XCTAssertTrue(waitFor { FileManager.default.fileExists(atPath: socket) })
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(socket)"]).stdout, "1048576\n")
        XCTAssertEqual(terminate(p), 0)
        let log = (try? String(contentsOfFile: dir.file("names.stderr"), encoding: .utf8)) ?? ""
        XCTAssertTrue(log.contains("nbdkit: debug: socket activation: serving fd 3 (unknown)"), log)
    }

    /// Children (here an exitwhen script) see neither LISTEN_* nor the passed descriptor.
    func testActivatedSocketsAreNotInherited() throws {
        let socket = dir.file("sa.sock"), seen = dir.file("seen")
        let script = "{ env | grep ^LISTEN_ ; ls /proc/$$/fd; } > \(seen).$$; mv \(seen).$$ \(seen); exit 0"
        let p = try activate([socket], ["--filter=exitwhen", "memory", "1M", "exit-when-script=\(script)"])
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(socket)"]).stdout, "1048576\n")
        XCTAssertTrue(waitFor { FileManager.default.fileExists(atPath: seen) }, "the script never ran")
        let lines = ((try? String(contentsOfFile: seen, encoding: .utf8)) ?? "").split(separator: "\n")
        XCTAssertFalse(lines.contains { $0.hasPrefix("LISTEN_") }, "\(lines)")
        // Descriptors the test process itself leaks may appear; the passed socket, fd 3, must not.
        XCTAssertTrue(lines.contains("2"), "\(lines)")
        XCTAssertFalse(lines.contains("3"), "\(lines)")
        XCTAssertEqual(terminate(p), 0)
    }

    /// READY=1 arrives only once the socket serves, STATUS follows the clients, STOPPING=1 at SIGTERM.
    func testNotifyReadyStatusStopping() throws {
        let notify = try NotifySocket(path: dir.file("notify"))
        defer { notify.close() }
        let socket = dir.file("sock")
        let p = try launch([Harness.nbdkit, "-f", "-U", socket, "memory", "1M"],
                           environment: ["NOTIFY_SOCKET": notify.path], stderrFile: dir.file("stderr"))
        let ready = notify.receive(timeout: 20)
        XCTAssertEqual(ready, "READY=1\nSTATUS=Serving 0 clients")
        // At the moment READY=1 is sent the socket must already accept clients.
        XCTAssertTrue(FileManager.default.fileExists(atPath: socket), "READY=1 before the socket exists")
        let client = try UnixClient(path: socket)
        XCTAssertEqual(notify.receive(timeout: 10), "STATUS=Serving 1 client")
        client.close()
        XCTAssertEqual(notify.receive(timeout: 10), "STATUS=Serving 0 clients")
        kill(p.pid, SIGTERM)
        XCTAssertEqual(notify.receive(timeout: 10), "STOPPING=1\nSTATUS=Shutting down")
        XCTAssertEqual(p.wait(seconds: 10), 0)
        XCTAssertNil(notify.receive(timeout: 0.2), "messages after exit")
    }

    /// A service manager that stops reading its notify socket (the datagram queue full, where
    /// sd_notify waits) holds up neither clients nor shutdown: the messages wait on a thread of
    /// their own, the oldest statuses making room, and at exit the server waits for them at most
    /// a second, so a manager that reads again gets READY=1, the latest status and STOPPING=1.
    /// (Before, the sixth client or so found the server stuck in sd_notify, and SIGTERM did
    /// nothing.)
    func testAManagerThatStopsReadingHoldsNothingUp() throws {
        let notify = try NotifySocket(path: dir.file("notify"))
        defer { notify.close() }
        let socket = dir.file("sock")
        let p = try launch([Harness.nbdkit, "-f", "-U", socket, "memory", "1M"],
                           environment: ["NOTIFY_SOCKET": notify.path], stderrFile: dir.file("stderr"))
        XCTAssertTrue(waitFor { ServerProcess.isListening(socket) })
        // Two messages a client, with READY=1: more than the socket's queue (10 by default) and
        // the server's (64) hold.
        for i in 0..<40 {
            let info = Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(socket)"], timeout: 10)
            XCTAssertEqual(info.stdout, "1048576\n", "client \(i): \(info.stderr)")
            if info.stdout.isEmpty { break }
        }
        kill(p.pid, SIGTERM)
        var messages: [String] = []
        while let m = notify.receive(timeout: 2) { messages.append(m) }
        XCTAssertEqual(p.wait(seconds: 10), 0)
        XCTAssertEqual(messages.first, "READY=1\nSTATUS=Serving 0 clients")
        XCTAssertEqual(messages.suffix(2), ["STATUS=Serving 0 clients", "STOPPING=1\nSTATUS=Shutting down"])
        XCTAssertLessThan(messages.count, 81, "every message kept")
    }

    /// Under socket activation READY=1 comes from the activated process, and a client is served.
    func testNotifyUnderSocketActivation() throws {
        let notify = try NotifySocket(path: dir.file("notify"))
        defer { notify.close() }
        let socket = dir.file("sa.sock")
        let p = try activate([socket], ["memory", "1M"], environment: ["NOTIFY_SOCKET": notify.path])
        // systemd-socket-activate starts nbdkit on the first connection.
        let info = Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(socket)"])
        XCTAssertEqual(info.stdout, "1048576\n", info.stderr)
        var messages: [String] = []
        while let m = notify.receive(timeout: 2) { messages.append(m) }
        XCTAssertEqual(messages.first, "READY=1\nSTATUS=Serving 0 clients")
        XCTAssertEqual(messages.dropFirst(), ["STATUS=Serving 1 client", "STATUS=Serving 0 clients"])
        XCTAssertEqual(terminate(p), 0)
    }

    /// With WATCHDOG_USEC set the server pings at half the interval; without it never.
    func testWatchdogPings() throws {
        let notify = try NotifySocket(path: dir.file("notify"))
        defer { notify.close() }
        let p = try launch([Harness.nbdkit, "-f", "-U", dir.file("sock"), "memory", "1M"],
                           environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"],
                           stderrFile: dir.file("stderr"))
        XCTAssertEqual(notify.receive(timeout: 20), "READY=1\nSTATUS=Serving 0 clients")
        var pings = 0
        let start = Date()
        while Date().timeIntervalSince(start) < 1.0, let m = notify.receive(timeout: 1) {
            XCTAssertEqual(m, "WATCHDOG=1")
            pings += 1
        }
        // 100 ms apart: about 10 in a second; at least 3 even on a loaded machine, at most ~11.
        XCTAssertGreaterThanOrEqual(pings, 3)
        XCTAssertLessThanOrEqual(pings, 12)
        XCTAssertEqual(terminate(p), 0)
        while let m = notify.receive(timeout: 0.1) { XCTAssertTrue(["WATCHDOG=1", "STOPPING=1\nSTATUS=Shutting down"].contains(m), m) }

        let quiet = try launch([Harness.nbdkit, "-f", "-U", dir.file("sock2"), "memory", "1M"],
                               environment: ["NOTIFY_SOCKET": notify.path], stderrFile: dir.file("stderr2"))
        XCTAssertEqual(notify.receive(timeout: 20), "READY=1\nSTATUS=Serving 0 clients")
        XCTAssertNil(notify.receive(timeout: 0.5), "pings without WATCHDOG_USEC")
        XCTAssertEqual(terminate(quiet), 0)
    }

    /// libsystemd (and the libraries it pulls in) is loaded only by a supervised server.
    func testLibsystemdIsLoadedOnlyWhenNeeded() throws {
        let notify = try NotifySocket(path: dir.file("notify"))
        defer { notify.close() }
        let plain = try startServer(["memory", "1M"], socketName: "plain")
        // /proc files report size 0, so read them to the end rather than by their size.
        let maps = { (pid: Int32) in
            String(decoding: (try? FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/\(pid)/maps")).readToEnd()) ?? Data(),
                   as: UTF8.self)
        }
        XCTAssertTrue(maps(plain.pid).contains("libc.so"), "cannot read the maps")
        XCTAssertFalse(maps(plain.pid).contains("libsystemd"), "a plain server loaded libsystemd")
        let supervised = try launch([Harness.nbdkit, "-f", "-U", dir.file("sock"), "memory", "1M"],
                                    environment: ["NOTIFY_SOCKET": notify.path], stderrFile: dir.file("stderr"))
        XCTAssertEqual(notify.receive(timeout: 20), "READY=1\nSTATUS=Serving 0 clients")
        XCTAssertTrue(maps(supervised.pid).contains("libsystemd.so.0"))
        XCTAssertEqual(terminate(supervised), 0)
    }

    /// The shipped units pass `systemd-analyze verify` with no warning at all.
    func testUnitFilesVerify() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
        let units = try FileManager.default.contentsOfDirectory(atPath: root + "/systemd").sorted()
        XCTAssertEqual(units, ["nbdkit-tls.service", "nbdkit.service", "nbdkit.socket"])
        let binDir = (Harness.nbdkit as NSString).deletingLastPathComponent
        for unit in units {
            let text = try String(contentsOfFile: root + "/systemd/" + unit, encoding: .utf8)
            try text.replacingOccurrences(of: "@BINDIR@", with: binDir)
                .write(toFile: dir.file(unit), atomically: true, encoding: .utf8)
        }
        let r = Harness.shell("cd '\(dir.path)' && systemd-analyze verify --man=no " + units.map { "./" + $0 }.joined(separator: " "))
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderr, "", "systemd-analyze warnings")
        let service = try String(contentsOfFile: root + "/systemd/nbdkit.service", encoding: .utf8)
        for hardening in ["Type=notify", "DynamicUser=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                          "NoNewPrivileges=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"] {
            XCTAssertTrue(service.contains("\n" + hardening + "\n"), hardening)
        }
    }
}

/// A NOTIFY_SOCKET: an AF_UNIX datagram socket bound at `path`, as systemd's own.
final class NotifySocket {
    let path: String
    private var fd: Int32

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0, withUnixAddress(path, { bind(fd, $0, $1) }) == 0 else { throw POSIXError(.EADDRINUSE) }
    }

    /// The next datagram, or nil if none arrives within `timeout` seconds.
    func receive(timeout: Double) -> String? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(timeout * 1000)) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, 0)
        guard n >= 0 else { return nil }
        return String(decoding: buffer[..<n], as: UTF8.self)
    }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }
}

/// A plain stream connection to a Unix socket, to hold a client slot open.
final class UnixClient {
    private var fd: Int32

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0, withUnixAddress(path, { connect(fd, $0, $1) }) == 0 else { throw POSIXError(.ECONNREFUSED) }
    }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }
}

/// Calls `body` with `path` as a sockaddr_un.
func withUnixAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return -1 }
    withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
    return withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}
