import XCTest
import Foundation

/// The file plugin's `cache=` and `fadvise=` parameters, as nbdkit's file plugin takes them.
final class FileCachingTests: IntegrationTestCase {
    /// A directory on a file system whose written pages can be dropped from the page cache
    /// (not tmpfs, which has no other copy; not overlayfs, whose write-back does nothing): the
    /// test directory, else one in the package's build directory. Skips the test if neither is.
    private func diskDirectory() throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let fallback = root.appendingPathComponent(".build/file-caching-test-\(getpid())").path
        for candidate in [dir.path, fallback] {
            if candidate == fallback {
                guard (try? FileManager.default.createDirectory(atPath: fallback, withIntermediateDirectories: true)) != nil else { break }
                addTeardownBlock { try? FileManager.default.removeItem(atPath: fallback) }
            }
            if canDropWrittenPages(in: candidate) { return candidate }
        }
        throw XCTSkip("no directory here whose written pages can be dropped from the page cache")
    }

    /// Writes 64 KiB to a new file in `directory`, syncs it, drops it and asks `fincore`.
    private func canDropWrittenPages(in directory: String) -> Bool {
        let probe = directory + "/probe"
        defer { unlink(probe) }
        let fd = open(probe, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return false }
        let bytes = [UInt8](repeating: 1, count: 65536)
        let written = write(fd, bytes, bytes.count) == bytes.count && fsync(fd) == 0
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
        close(fd)
        return written && cached(probe) == 0
    }

    /// Bytes of `path` in the page cache, as `fincore` counts them.
    private func cached(_ path: String) -> Int {
        let r = Harness.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path])
        XCTAssertEqual(r.status, 0, r.stderr)
        return Int(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    /// With cache=none, 4 MiB written and read back through the server leave none of the file
    /// in the page cache, and the file holds what was written; the default cache keeps it all
    /// once read, as reading it directly does (which shows that `fincore` sees the cache).
    func testCacheNoneLeavesNothingCached() throws {
        let disk = try diskDirectory()
        let source = randomFile("source", count: 4 << 20)
        let image = disk + "/image"
        XCTAssertTrue(FileManager.default.createFile(atPath: image, contents: nil))
        XCTAssertEqual(truncate(image, 4 << 20), 0)
        let none = try startServer(["file", image, "cache=none", "fadvise=sequential"], socketName: "none")
        XCTAssertEqual(Harness.run(["nbdcopy", source, none.uri]).status, 0)
        XCTAssertEqual(cached(image), 0, "written pages left in the page cache")
        // Reading the file here caches it all again, for the server to drop as it reads.
        XCTAssertEqual(contents(image), contents(source))
        XCTAssertEqual(cached(image), 4 << 20)
        XCTAssertEqual(Harness.run(["nbdcopy", none.uri, "null:"]).status, 0)
        XCTAssertEqual(cached(image), 0, "read pages left in the page cache")
        let cachedServer = try startServer(["file", image, "cache=default", "fadvise=normal"], socketName: "default")
        XCTAssertEqual(Harness.run(["nbdcopy", cachedServer.uri, "null:"]).status, 0)
        XCTAssertEqual(cached(image), 4 << 20)
    }

    /// `fadvise=random` turns the kernel's read-ahead off: a 4 KiB read at the start of a file
    /// that is not cached leaves nothing cached under cache=none, where `fadvise=normal` leaves
    /// the pages read ahead.
    func testFadviseRandomReadsNothingAhead() throws {
        let disk = try diskDirectory()
        let image = disk + "/image"
        XCTAssertTrue(FileManager.default.createFile(atPath: image, contents: nil))
        XCTAssertEqual(truncate(image, 4 << 20), 0)
        let writer = try startServer(["file", image, "cache=none"], socketName: "writer")
        XCTAssertEqual(Harness.run(["nbdcopy", randomFile("source", count: 4 << 20), writer.uri]).status, 0)
        XCTAssertEqual(cached(image), 0)
        let random = try startServer(["file", image, "cache=none", "fadvise=random"], socketName: "random")
        Harness.nbdsh(random.uri, "h.pread(4096, 0)")
        XCTAssertEqual(cached(image), 0, "read ahead under fadvise=random")
        let normal = try startServer(["file", image, "cache=none", "fadvise=normal"], socketName: "normal")
        Harness.nbdsh(normal.uri, "h.pread(4096, 0)")
        XCTAssertGreaterThan(cached(image), 0, "no read-ahead under fadvise=normal")
    }

    /// Every value nbdkit takes starts a server; others are refused with nbdkit's words.
    func testValues() throws {
        let file = randomFile("disk", count: 65536)
        for value in ["cache=default", "cache=none", "fadvise=normal", "fadvise=random", "fadvise=sequential"] {
            let r = Harness.run([Harness.nbdkit, "-U", "-", "file", file, value, "--run", "nbdinfo --size \"$uri\""])
            XCTAssertEqual(r.status, 0, "\(value): \(r.stderr)")
            XCTAssertEqual(r.stdout, "65536\n", value)
        }
        for (value, message) in [("cache=NONE", "unknown cache mode: NONE"), ("fadvise=willneed", "unknown fadvise mode: willneed"),
                                 ("cache=bogus cache=none", "unknown cache mode: bogus")] {
            let r = Harness.run([Harness.nbdkit, "-U", "-", "file", file] + value.split(separator: " ").map(String.init) + ["--run", "true"])
            XCTAssertEqual(r.status, 1, value)
            XCTAssertEqual(r.stderr, "nbdkit: error: \(message)\n")
        }
    }
}
