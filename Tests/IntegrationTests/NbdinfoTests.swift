import XCTest

/// What nbdinfo sees: sizes, export lists, flags, meta contexts.
final class NbdinfoTests: IntegrationTestCase {
    func testMemorySizeAndFlags() throws {
        let s = try startServer(["memory", "size=1G"])
        let r = Harness.run(["nbdinfo", "--json", s.uri])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let export = (json["exports"] as! [[String: Any]])[0]
        XCTAssertEqual(export["export-size"] as? Int, 1 << 30)
        XCTAssertEqual(export["is_read_only"] as? Bool, false)
        XCTAssertEqual(export["can_flush"] as? Bool, true)
        XCTAssertEqual(export["can_fua"] as? Bool, true)
        XCTAssertEqual(export["can_trim"] as? Bool, true)
        XCTAssertEqual(export["can_zero"] as? Bool, true)
        XCTAssertEqual(export["can_fast_zero"] as? Bool, true)
        XCTAssertEqual(export["can_multi_conn"] as? Bool, true)
        XCTAssertEqual(export["can_cache"] as? Bool, true)
        XCTAssertEqual(export["can_df"] as? Bool, true)
        XCTAssertEqual(json["protocol"] as? String, "newstyle-fixed")
        let contexts = export["contexts"] as? [String] ?? []
        XCTAssertEqual(contexts, ["base:allocation"])
        XCTAssertEqual(export["block_size_maximum"] as? Int, 64 << 20)
    }

    func testReadonlyFlag() throws {
        let s = try startServer(["-r", "memory", "1M"])
        let r = Harness.run(["nbdinfo", "--is", "readonly", s.uri])
        XCTAssertEqual(r.status, 0, "export should be read-only: \(r.stderr)")
        let p = try startServer(["pattern", "1M"], socketName: "p")
        XCTAssertEqual(Harness.run(["nbdinfo", "--is", "readonly", p.uri]).status, 0)
        let m = try startServer(["memory", "1M"], socketName: "m")
        XCTAssertEqual(Harness.run(["nbdinfo", "--is", "readonly", m.uri]).status, 2)
    }

    /// As nbdkit: a file the server may read but not write is served read-only without -r (as
    /// nobody when the tests run as root, who may write anything); one it can't read at all is
    /// an error at startup.
    func testFileThatCanOnlyBeReadIsServedReadOnly() throws {
        let directory = "/dev/shm/nbdkit-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o755])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let readable = directory + "/ro.img", unreadable = directory + "/none.img"
        XCTAssertTrue(FileManager.default.createFile(atPath: readable, contents: Data(count: 1 << 20),
                                                    attributes: [.posixPermissions: 0o444]))
        XCTAssertTrue(FileManager.default.createFile(atPath: unreadable, contents: Data(count: 1 << 20),
                                                    attributes: [.posixPermissions: 0o000]))
        let asReader = ["/usr/bin/env", "TMPDIR=/tmp"]
            + (getuid() == 0 ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : [])
        let r = Harness.run(asReader + [Harness.nbdkit, "-U", "-", "file", readable, "--run", "nbdinfo --json \"$uri\""],
                            timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\"is_read_only\": true"), r.stdout)
        let u = Harness.run(asReader + [Harness.nbdkit, "-U", "-", "file", unreadable, "--run", "true"], timeout: 30)
        XCTAssertEqual(u.status, 1)
        XCTAssertEqual(u.stderr, "nbdkit: error: open: \(unreadable): Permission denied\n")
    }

    /// As nbdkit 1.32: pattern without a size serves an empty disk; a size may have white space
    /// and a + before it.
    func testPatternWithoutSizeIsEmpty() {
        let r = Harness.run([Harness.nbdkit, "-U", "-", "pattern", "--run", "nbdinfo --size \"$uri\""])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "0\n")
        let spaced = Harness.run([Harness.nbdkit, "-U", "-", "pattern", " +1M", "--run", "nbdinfo --size \"$uri\""])
        XCTAssertEqual(spaced.stdout, "1048576\n", spaced.stderr)
    }

    func testExabyteMemoryExport() throws {
        let s = try startServer(["memory", "size=1E"])
        let r = Harness.run(["nbdinfo", "--size", s.uri])
        XCTAssertEqual(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines), String(UInt64(1) << 60))
    }

    /// Under a file-size limit (`ulimit -f`) a memory disk larger than the limit can't be made:
    /// a start-up error with the reason and status 1, not death by SIGXFSZ; the command never
    /// runs. One within the limit serves, and the command it runs has the default SIGXFSZ back.
    func testFileSizeLimit() throws {
        let marker = dir.file("ran")
        let big = Harness.run(["/bin/bash", "-c", "ulimit -f 1024; exec \"$0\" -U - memory 1G --run 'touch \(marker)'",
                               Harness.nbdkit])
        XCTAssertEqual(big.status, 1, big.stderr)
        XCTAssertEqual(big.stderr, "nbdkit: error: memory: cannot make a memory file of 1073741824 bytes: File too large\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker))
        let small = Harness.run(["/bin/bash", "-c", "ulimit -f 1024; exec \"$0\" -U - memory 512K --run 'grep SigIgn /proc/self/status'",
                                 Harness.nbdkit])
        XCTAssertEqual(small.status, 0, small.stderr)
        let ignored = UInt64(small.stdout.split(separator: "\t").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "", radix: 16)
        XCTAssertEqual(ignored.map { $0 >> (SIGXFSZ - 1) & 1 }, 0, "SIGXFSZ is still ignored in the command: \(small.stdout)")
    }

    func testMapShowsHolesAndData() throws {
        let s = try startServer(["memory", "size=1M"])
        Harness.nbdsh(s.uri, "h.pwrite(b'x' * 65536, 131072)")
        let r = Harness.run(["nbdinfo", "--map", s.uri])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).prefix(3).joined(separator: " ") }
        XCTAssertEqual(lines, ["0 131072 3", "131072 65536 0", "196608 851968 3"])
    }

    func testNoExtentsFilterReportsAllData() throws {
        let s = try startServer(["--filter=noextents", "memory", "size=1M"])
        let r = Harness.run(["nbdinfo", "--map", s.uri])
        XCTAssertEqual(r.stdout.split(separator: "\n").map { $0.split(separator: " ").prefix(3).joined(separator: " ") },
                       ["0 1048576 0"])
    }

    func testFileDirectoryExportList() throws {
        let d = dir.file("exports")
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: false)
        _ = FileManager.default.createFile(atPath: d + "/alpha", contents: Data(count: 4096))
        _ = FileManager.default.createFile(atPath: d + "/beta", contents: Data(count: 8192))
        let s = try startServer(["file", "dir=\(d)"])
        let r = Harness.run(["nbdinfo", "--list", "--json", s.uri])
        XCTAssertEqual(r.status, 0, r.stderr)
        let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let names = (json["exports"] as! [[String: Any]]).compactMap { $0["export-name"] as? String }
        XCTAssertEqual(names.sorted(), ["alpha", "beta"])
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", s.uri(export: "beta")]).stdout, "8192\n")
        let missing = Harness.run(["nbdinfo", "--size", s.uri(export: "gamma")])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(s.isRunning)
    }

    /// Only the names the listing shows can be opened, hidden files among them (as nbdkit): the
    /// default export "" (as in nbdkit), subdirectories, FIFOs and paths leaving the directory
    /// are refused in NBD_OPT_GO, and the server keeps running.
    func testFileDirectoryRefusesUnlistedNames() throws {
        let d = dir.file("exports")
        try FileManager.default.createDirectory(atPath: d + "/sub", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: d + "/alpha", contents: Data(count: 4096))
        _ = FileManager.default.createFile(atPath: d + "/.hidden", contents: Data(count: 512))
        _ = FileManager.default.createFile(atPath: dir.file("secret"), contents: Data(count: 1024))
        XCTAssertEqual(mkfifo(d + "/fifo", 0o600), 0)
        let s = try startServer(["file", "dir=\(d)"])
        let script = """
        for name in ["alpha", "", ".hidden", "sub", "fifo", "../secret", "..", "."]:
            c = nbd.NBD()
            c.set_export_name(name)
            try:
                c.connect_unix("\(s.socket)")
                print(name, c.get_size())
                c.shutdown()
            except nbd.Error:
                print(name, "refused")
        """
        let r = Harness.run(["/usr/bin/nbdsh", "-c", script], timeout: 30)
        XCTAssertEqual(r.status, 0, r.stderr)
        let list = Harness.run(["nbdinfo", "--list", "--json", s.uri])
        let json = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as! [String: Any]
        XCTAssertEqual((json["exports"] as! [[String: Any]]).compactMap { $0["export-name"] as? String }, [".hidden", "alpha"])
        XCTAssertEqual(r.stdout, """
        alpha 4096
         refused
        .hidden 512
        sub refused
        fifo refused
        ../secret refused
        .. refused
        . refused

        """)
        XCTAssertTrue(s.isRunning)
    }

    func testOldstyle() throws {
        let s = try startServer(["-o", "memory", "size=64K"])
        let r = Harness.run(["nbdinfo", "--json", s.uri])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("\"protocol\": \"oldstyle\""), r.stdout)
        XCTAssertTrue(r.stdout.contains("\"export-size\": 65536"), r.stdout)
    }
}
