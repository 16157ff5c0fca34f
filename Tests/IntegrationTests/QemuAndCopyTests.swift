import XCTest

/// Real-world clients: qemu-img, qemu-io and nbdcopy, and many clients at once.
final class QemuAndCopyTests: IntegrationTestCase {
    func testQemuImgConvertRoundTrip() throws {
        let source = randomFile("source.img", count: 8 << 20)
        let s = try startServer(["memory", "size=8M"])
        let up = Harness.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, s.uri])
        XCTAssertEqual(up.status, 0, up.stderr)
        let back = dir.file("back.img")
        let down = Harness.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri, back])
        XCTAssertEqual(down.status, 0, down.stderr)
        XCTAssertEqual(contents(back), contents(source))
        let cmp = Harness.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", source, s.uri])
        XCTAssertEqual(cmp.status, 0, cmp.stdout + cmp.stderr)
    }

    func testQemuIOPatternsDiscardAndZero() throws {
        let s = try startServer(["memory", "size=4M"])
        @discardableResult func io(_ cmd: String) -> Harness.Result {
            let r = Harness.run(["qemu-io", "-f", "raw", "-c", cmd, s.uri])
            XCTAssertEqual(r.status, 0, "\(cmd): \(r.stdout) \(r.stderr)")
            XCTAssertFalse(r.stdout.contains("fail") || r.stderr.contains("fail"), "\(cmd): \(r.stdout) \(r.stderr)")
            return r
        }
        io("write -P 0xab 0 1M")
        io("write -P 0xcd 1M 64k")
        io("read -P 0xab 0 1M")
        io("read -P 0xcd 1M 64k")
        io("discard 0 512k")
        io("read -P 0 0 512k")
        io("read -P 0xab 512k 512k")
        io("write -z 1M 32k")
        io("read -P 0 1M 32k")
        io("read -P 0xcd 1056k 32k")
        // qemu-io reports a pattern mismatch as a failure: check that it would catch one.
        let wrong = Harness.run(["qemu-io", "-f", "raw", "-c", "read -P 0x11 512k 4k", s.uri])
        XCTAssertTrue(wrong.stdout.contains("Pattern verification failed") || wrong.status != 0, wrong.stdout)
    }

    func testFilePluginWithQemuImg() throws {
        let source = randomFile("source.img", count: 3 << 20)
        let target = dir.file("target.img")
        XCTAssertEqual(truncate(target, 3 << 20), -1) // does not exist yet
        _ = FileManager.default.createFile(atPath: target, contents: nil)
        XCTAssertEqual(truncate(target, 3 << 20), 0)
        let s = try startServer(["file", target])
        let r = Harness.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, s.uri])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(contents(target), contents(source))
        // Zeroing and trimming punch holes that read back as zeros.
        Harness.nbdsh(s.uri, "h.zero(1048576, 0); h.trim(1048576, 1048576); h.flush(); print('ok')")
        let data = contents(target)
        XCTAssertEqual(data.prefix(2 << 20), Data(count: 2 << 20))
        XCTAssertEqual(data.suffix(1 << 20), contents(source).suffix(1 << 20))
    }

    func testNbdcopyWithSeveralConnections() throws {
        let source = randomFile("source.img", count: 16 << 20)
        let s = try startServer(["memory", "size=16M"])
        let up = Harness.run(["nbdcopy", "-C", "4", "-T", "4", "--flush", source, s.uri])
        XCTAssertEqual(up.status, 0, up.stderr)
        let back = dir.file("back.img")
        let down = Harness.run(["nbdcopy", "-C", "4", "-T", "4", s.uri, back])
        XCTAssertEqual(down.status, 0, down.stderr)
        XCTAssertEqual(contents(back), contents(source))
    }

    func testConcurrentClientsWritingDisjointRegions() throws {
        let s = try startServer(["memory", "size=8M"])
        // Eight clients at once, each filling its own megabyte with its own byte, with
        // several requests in flight per connection (aio), then one client checks them all.
        let group = DispatchGroup()
        let failures = Failures()
        let uri = s.uri
        for i in 0..<8 {
            group.enter()
            DispatchQueue.global().async {
                let r = Harness.run(["/usr/bin/nbdsh", "-u", uri, "-c", """
                buf = nbd.Buffer.from_bytearray(bytearray([\(i + 1)]) * 65536)
                for k in range(16):
                    h.aio_pwrite(buf, \(i) * 1048576 + k * 65536)
                while h.aio_in_flight() > 0:
                    h.poll(-1)
                h.flush()
                """])
                if r.status != 0 { failures.add(r.stderr) }
                group.leave()
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 120), .success)
        XCTAssertEqual(failures.list, [])
        let r = Harness.nbdsh(s.uri, """
        for i in range(8):
            assert h.pread(1048576, i * 1048576) == bytes([i + 1]) * 1048576, i
        print('ok')
        """)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    func testExample1DiskCopiesOut() throws {
        let out = dir.file("disk.img")
        let r = Harness.run([Harness.nbdkit, "-U", "-", "example1", "--run", "qemu-img convert $nbd \(out)"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let disk = contents(out)
        XCTAssertEqual(disk.count, 1 << 20)
        XCTAssertEqual(disk[510], 0x55)
        XCTAssertEqual(disk[511], 0xaa)
        let table = Harness.run(["/sbin/sfdisk", "-l", out])
        XCTAssertTrue(table.stdout.contains("Linux"), table.stdout + table.stderr)
        // The partition holds an ext2 filesystem whose files read back.
        let fs = dir.file("fs.img")
        XCTAssertEqual(Harness.run(["dd", "if=\(out)", "of=\(fs)", "bs=512", "skip=64", "status=none"]).status, 0)
        let cat = Harness.run(["/sbin/debugfs", "-R", "cat /hello.txt", fs])
        XCTAssertEqual(cat.stdout, "Hello from swift-nbdkit's example1 disk.\n", cat.stderr)
    }
}

/// Error texts collected from several threads.
final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ s: String) { lock.lock(); items.append(s); lock.unlock() }
    var list: [String] { lock.lock(); defer { lock.unlock() }; return items }
}
