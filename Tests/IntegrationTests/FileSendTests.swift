import XCTest
import Foundation

/// Reads of 64 KiB and more from the file plugin are sent by the kernel straight from the file
/// (`sendfile`) on plaintext connections; these check the bytes that arrive and the fallback.
final class FileSendTests: IntegrationTestCase {
    /// Large and small reads, aligned and not, up to the end of the file, with structured and
    /// simple replies, directly and through the offset filter: every byte as in the file.
    func testLargeReadsMatchTheFile() throws {
        let size = (4 << 20) + 1000
        let path = randomFile("disk.img", count: size)
        let plain = try startServer(["file", path], socketName: "plain")
        let offset = try startServer(["--filter=offset", "file", path, "offset=4096"], socketName: "offset")
        let r = Harness.run(["/usr/bin/python3", "-c", """
        import nbd, sys
        data = open(\(Harness.pythonString(path)), 'rb').read()
        cases = [(0, 65536), (1, 65537), (4096, 262144), (12345, 1 << 20), (len(data) - 70000, 70000),
                 (len(data) - 1000, 1000), (0, 4096)]
        bad = []
        for uri, base in ((\(Harness.pythonString(plain.uri)), 0), (\(Harness.pythonString(offset.uri)), 4096)):
            for structured in (True, False):
                h = nbd.NBD()
                h.set_request_structured_replies(structured)
                h.connect_uri(uri)
                for off, n in cases:
                    off = min(off, len(data) - base - n)
                    if h.pread(n, off) != data[base + off:base + off + n]:
                        bad.append((uri, structured, off, n))
                h.shutdown()
        print(bad if bad else 'all equal')
        """])
        XCTAssertEqual(r.stdout, "all equal\n", r.stderr)
    }

    /// Over TCP too (a captive run on a loopback port), copied whole with nbdcopy.
    func testNbdcopyOverTCPMatchesTheFile() throws {
        let path = randomFile("disk.img", count: 8 << 20)
        let copy = dir.file("copy.img")
        let r = Harness.run([Harness.nbdkit, "-i", "127.0.0.1", "-p", String(Harness.freePort()), "file", path,
                             "--run", "nbdcopy \"$uri\" \(copy)"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(contents(copy), contents(path))
    }

    /// A file that shrinks under the server: a large read past its new end fails with EIO (it is
    /// not sent from the file, whose bytes would run out after the reply began), and the
    /// connection goes on; new connections see the new size.
    func testFileThatShrinksFailsReadsPastItsEnd() throws {
        let path = randomFile("disk.img", count: 1 << 20)
        let s = try startServer(["file", path])
        let r = Harness.run(["/usr/bin/python3", "-c", """
        import nbd, os, errno
        data = open(\(Harness.pythonString(path)), 'rb').read()
        h = nbd.NBD()
        h.connect_uri(\(Harness.pythonString(s.uri)))
        os.truncate(\(Harness.pythonString(path)), 100000)
        try:
            h.pread(262144, 0)
            print('read succeeded')
        except nbd.Error as e:
            print('read failed', errno.errorcode.get(e.errnum))
        assert h.pread(65536, 4096) == data[4096:4096 + 65536]
        print('still connected')
        """])
        XCTAssertEqual(r.stdout, "read failed EIO\nstill connected\n", r.stderr)
        XCTAssertFalse(s.stderr.contains("closing the connection"), s.stderr)
        let info = Harness.run(["nbdinfo", "--size", s.uri])
        XCTAssertEqual(info.stdout, "100000\n", info.stderr)
    }

}
