import XCTest
import Foundation

/// The file plugin's `cache=` and `fadvise=` parameters, as nbdkit's file plugin takes them.
final class FileCachingTests: IntegrationTestCase {
    /// A directory on a file system with a page cache to drop from (tmpfs has none): the test
    /// directory, or one in the package's build directory if the former is in memory.
    private func diskDirectory() throws -> String {
        let kind = Harness.run(["stat", "--file-system", "--format", "%T", dir.path]).stdout
        if kind != "tmpfs\n" && kind != "ramfs\n" { return dir.path }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let path = root.appendingPathComponent(".build/file-caching-test-\(getpid())").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
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

    /// Every value nbdkit takes starts a server; others are refused with nbdkit's words.
    func testValues() throws {
        let file = randomFile("disk", count: 65536)
        for value in ["cache=default", "cache=none", "fadvise=normal", "fadvise=random", "fadvise=sequential"] {
            let r = Harness.run([Harness.nbdkit, "-U", "-", "file", file, value, "--run", "nbdinfo --size \"$uri\""])
            XCTAssertEqual(r.status, 0, "\(value): \(r.stderr)")
            XCTAssertEqual(r.stdout, "65536\n", value)
        }
        for (value, message) in [("cache=NONE", "unknown cache mode: NONE"), ("fadvise=willneed", "unknown fadvise mode: willneed")] {
            let r = Harness.run([Harness.nbdkit, "-U", "-", "file", file, value, "--run", "true"])
            XCTAssertEqual(r.status, 1, value)
            XCTAssertEqual(r.stderr, "nbdkit: error: \(message)\n")
        }
    }
}
