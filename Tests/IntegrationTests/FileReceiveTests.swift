import XCTest
import Foundation

/// Writes of 64 KiB and more (without FUA) to a file in memory are moved by the kernel from the
/// socket through a pipe into the file (`splice`), and those up to 8 KiB are stored from the
/// read-ahead; these check the bytes that land, the requests that take neither path, and writes
/// that fail.
final class FileReceiveTests: IntegrationTestCase {
    /// A new file of `size` zero bytes in /dev/shm (tmpfs), removed by the caller.
    private func memoryFile(size: Int) -> String {
        let path = "/dev/shm/nbdkit-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).img"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(count: size)))
        return path
    }

    /// Odd offsets and lengths from 64 KiB - 1 to 32 MiB, with FUA, pipelined among small writes
    /// and reads (so the read-ahead holds the start of a payload), past the end: the file ends
    /// up holding exactly what was written, and the connection holds the one pipe it moves
    /// payloads through, made at its first large write.
    func testLargeWritesLandInTheFile() throws {
        let size = 48 << 20
        let path = memoryFile(size: size)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let s = try startServer(["file", path])
        let r = Harness.nbdsh(s.uri, """
        import os, errno
        \(Harness.pythonPipeCount(pid: s.pid))
        size = \(size)
        image = bytearray(size)
        def w(offset, length, flags=0):
            data = os.urandom(length)
            h.pwrite(data, offset, flags)
            image[offset:offset + length] = data
        before = pipes()
        w(12345, 65535)
        w(3 << 20, 1 << 20, nbd.CMD_FLAG_FUA)
        assert pipes() == before, 'a pipe for a small or FUA write'
        w(100000, 65536)
        assert pipes() == before + 2, (before, pipes())
        w((1 << 20) + 3, (1 << 20) + 5)
        w(5 << 20, 32 << 20)
        buffers = []
        for i in range(24):
            length = (4096, 300001, 1 << 20)[i % 3]
            offset = (40 << 20) + i * 300007
            data = os.urandom(length)
            buffers.append(nbd.Buffer.from_bytearray(bytearray(data)))
            h.aio_pwrite(buffers[-1], offset)
            image[offset:offset + length] = data
        \(Harness.pythonDrainThenLargeWritePastTheEnd)
        assert h.pread(65536, 40 << 20) == image[40 << 20:(40 << 20) + 65536]
        assert pipes() == before + 2, (before, pipes())
        h.flush()
        assert open(\(Harness.pythonString(path)), 'rb').read() == image, 'the file differs'
        print('ok')
        """, timeout: 60)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
    }

    /// Writes of up to 8 KiB are gathered whole in the read-ahead and stored from there: odd
    /// sizes and offsets, pipelined among reads and writes just over that size, land exactly.
    func testSmallWritesLandInTheFile() throws {
        let size = 12 << 20
        let path = memoryFile(size: size)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let s = try startServer(["file", path])
        let r = Harness.nbdsh(s.uri, """
        import os
        size = \(size)
        image = bytearray(size)
        buffers = []
        reads = []
        for i in range(700):
            length = (1, 511, 4096, 8191, 8192, 8193, 12289)[i % 7]
            offset = i * 16384 + (i * 37) % 3000
            data = os.urandom(length)
            buffers.append(nbd.Buffer.from_bytearray(bytearray(data)))
            h.aio_pwrite(buffers[-1], offset)
            image[offset:offset + length] = data
            if i % 10 == 9:
                reads.append((nbd.Buffer(4096), (i - 5) * 16384))
                h.aio_pread(reads[-1][0], reads[-1][1])
            while h.aio_in_flight() > 48:
                h.poll(-1)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for buf, offset in reads:
            assert buf.to_bytearray() == image[offset:offset + 4096], offset
        h.flush()
        assert h.pread(size, 0) == image, 'reads differ'
        assert open(\(Harness.pythonString(path)), 'rb').read() == image, 'the file differs'
        print('ok')
        """, timeout: 60)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
    }

    /// Over TCP (where the kernel's splice would wait for input, so the server polls first):
    /// nbdcopy's pipelined 256 KiB writes land in the file.
    func testNbdcopyOverTCPLandsInTheFile() throws {
        let source = randomFile("source.img", count: 24 << 20)
        let path = memoryFile(size: 24 << 20)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = Harness.run([Harness.nbdkit, "-i", "127.0.0.1", "-p", String(Harness.freePort()), "file", path,
                             "--run", "nbdcopy --no-extents \(source) \"$uri\""], timeout: 60)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(contents(source) == contents(path), "the file differs from what was copied")
    }

    /// With no descriptor left for the pipe (the server's RLIMIT_NOFILE lowered under it), large
    /// writes go through a buffer instead and land all the same, in step with the requests around
    /// them; once descriptors are free again the pipe is made.
    func testWriteWithNoPipeGoesThroughABuffer() throws {
        let size = 8 << 20
        let path = memoryFile(size: size)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let s = try startServer(["file", path])
        let r = Harness.nbdsh(s.uri, """
        import os, resource
        \(Harness.pythonPipeCount(pid: s.pid))
        pid = \(s.pid)
        image = bytearray(\(size))
        before = pipes()
        h.pwrite(b'a' * 4096, 0)
        image[0:4096] = b'a' * 4096
        used = {int(fd) for fd in os.listdir('/proc/%d/fd' % pid)}
        lowest_free = min(set(range(max(used) + 2)) - used)
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
        for offset, length in ((65536, 1 << 20), (3 << 20, 300001), (5 << 20, 65536)):
            data = os.urandom(length)
            h.pwrite(data, offset)
            image[offset:offset + length] = data
            h.pwrite(b'b' * 4096, offset - 4096)
            image[offset - 4096:offset] = b'b' * 4096
            assert h.pread(8192, offset - 4096) == image[offset - 4096:offset + 4096], offset
        assert pipes() == before
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        data = os.urandom(1 << 20)
        h.pwrite(data, 7 << 20)
        image[7 << 20:8 << 20] = data
        assert pipes() == before + 2
        h.flush()
        assert open(\(Harness.pythonString(path)), 'rb').read() == image, 'the file differs'
        print('ok')
        """, timeout: 60)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        XCTAssertTrue(s.isRunning)
    }

    /// Once SIGTERM has arrived, a large write is refused with ESHUTDOWN and leaves the file as
    /// it was (it is not moved into the file while it is read).
    func testWriteAfterSigtermIsRefusedAndNotStored() throws {
        let size = 4 << 20
        let path = memoryFile(size: size)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let s = try startServer(["-v", "file", path])
        let r = Harness.nbdsh(s.uri, """
        import errno, os, signal, time
        h.pwrite(b'x' * 65536, 0)
        os.kill(\(s.pid), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while 'shutting down' not in open(\(Harness.pythonString(s.stderrFile))).read():
            assert time.monotonic() < deadline, 'SIGTERM not handled within 10 s'
            time.sleep(0.02)
        for length in (1 << 20, 4096):
            try:
                h.pwrite(b'W' * length, 65536)
                print('write succeeded')
            except nbd.Error as e:
                print(errno.errorcode.get(e.errnum))
        h.shutdown()
        """, timeout: 30)
        XCTAssertEqual(r.stdout, "ESHUTDOWN\nESHUTDOWN\n", r.stderr)
        XCTAssertEqual(contents(path), Data(repeating: UInt8(ascii: "x"), count: 65536) + Data(count: size - 65536))
    }

    /// A file system that fills up part way through a large write: the write fails with ENOSPC,
    /// the part of its payload not yet moved is read and dropped, and the requests after it are
    /// served in step. The file is on a 1 MiB tmpfs mounted in a private mount namespace (needs
    /// root), served by a captive server whose --run is nbdsh.
    func testWriteThatFillsTheFileSystemFailsAloneAndTheConnectionStaysInStep() throws {
        guard getuid() == 0, Harness.run(["unshare", "-m", "true"]).status == 0 else {
            throw XCTSkip("needs root and unshare(CLONE_NEWNS) to mount a small tmpfs")
        }
        let mountPoint = dir.file("small")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
        let script = """
        import os, errno
        first = os.urandom(65536)
        h.pwrite(first, 0)
        try:
            h.pwrite(os.urandom(2 << 20), 1 << 20)
            assert False, 'a write larger than the file system succeeded'
        except nbd.Error as e:
            assert e.errnum == errno.ENOSPC, e
        assert h.pread(65536, 0) == first
        try:
            h.pwrite(os.urandom(4096), 7 << 20)
            assert False, 'a small write into a full file system succeeded'
        except nbd.Error as e:
            assert e.errnum == errno.ENOSPC, e
        assert h.pread(65536, 0) == first
        h.trim(4 << 20, 0)
        last = os.urandom(300001)
        h.pwrite(last, 5 << 20)
        assert h.pread(300001, 5 << 20) == last
        print('ok')
        """
        let r = Harness.run(["unshare", "-m", "/bin/sh", "-c", """
            mount -t tmpfs -o size=1M nbdkit-test "$2" || { echo cannot mount; exit 99; }
            truncate -s 8M "$2/disk.img"
            export SCRIPT="$3"
            exec "$1" -U - file "$2/disk.img" --run 'PATH=/usr/bin:$PATH nbdsh -u "$uri" -c "$SCRIPT"'
            """, "sh", Harness.nbdkit, mountPoint, script], timeout: 60)
        XCTAssertNotEqual(r.status, 99, r.stdout)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        XCTAssertEqual(r.status, 0, r.stderr)
    }
}
