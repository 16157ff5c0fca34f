import XCTest
import Foundation

/// The tar filter against archives made by GNU tar at test time, in its three header formats.
final class TarFilterTests: IntegrationTestCase {
    /// A 130-byte path: over the 100 bytes of a plain header, so each format stores it its own
    /// way (GNU long name, pax path record, ustar prefix).
    let longPath = String(repeating: "d", count: 60) + "/" + String(repeating: "e", count: 60) + "/long.txt"

    /// Makes gnu.tar, pax.tar and ustar.tar holding small.txt (not a whole number of blocks),
    /// disk.img (1 MiB + 512 bytes: qemu-img writes whole sectors) and the long path, in order.
    func makeArchives() {
        _ = randomFile("disk.img", count: (1 << 20) + 512)
        let r = Harness.run(["/bin/sh", "-c", """
        set -e
        cd '\(dir.path)'
        echo hello > small.txt
        mkdir -p \((longPath as NSString).deletingLastPathComponent)
        echo 'a long way down' > \(longPath)
        for f in gnu pax ustar; do tar --format=$f -cf $f.tar small.txt disk.img \(longPath); done
        """])
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    func testServesEntriesOfEveryFormat() throws {
        makeArchives()
        for format in ["gnu", "pax", "ustar"] {
            for entry in ["small.txt", "disk.img", longPath] {
                let out = dir.file("out")
                let r = Harness.run([Harness.nbdkit, "-U", "-", "file", dir.file("\(format).tar"), "--filter=tar",
                                     "tar-entry=\(entry)", "--run", "nbdcopy \"$uri\" \(out)"])
                XCTAssertEqual(r.status, 0, "\(format) \(entry): \(r.stderr)")
                XCTAssertEqual(contents(out), contents(dir.file(entry)), "\(format) \(entry)")
                try? FileManager.default.removeItem(atPath: out)
            }
        }
    }

    /// The example in nbdkit-captive(1): overwrite a file inside a tar file in place.
    func testCaptiveOverwriteInPlace() throws {
        makeArchives()
        let tar = dir.file("gnu.tar")
        let replacement = randomFile("new.img", count: (1 << 20) + 512)
        let r = Harness.run([Harness.nbdkit, "-U", "-", "file", tar, "--filter=tar", "tar-entry=disk.img",
                             "--run", "qemu-img convert -n -f raw -O raw \(replacement) $nbd"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let check = Harness.run(["/bin/sh", "-c", """
        cd '\(dir.path)' && tar xOf gnu.tar disk.img | cmp - new.img && tar xOf gnu.tar small.txt && tar tf gnu.tar | wc -l
        """])
        XCTAssertEqual(check.status, 0, check.stderr)
        XCTAssertEqual(check.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) },
                       ["hello", "3"], "the other members and the index are untouched")
    }

    /// A missing entry, or data that is not a tar file, fails the open with the reason logged;
    /// the server goes on. A missing tar-entry= is a start-up error.
    func testBadEntryOrArchiveFailsTheOpen() throws {
        makeArchives()
        let missing = try startServer(["file", dir.file("gnu.tar"), "--filter=tar", "tar-entry=nope"], socketName: "missing")
        XCTAssertNotEqual(Harness.run(["nbdinfo", missing.uri]).status, 0)
        XCTAssertTrue(missing.stderr.contains("tar: nope: no such file in the tar file"), missing.stderr)
        XCTAssertTrue(missing.isRunning)
        let notTar = try startServer(["file", dir.file("disk.img"), "--filter=tar", "tar-entry=disk.img"], socketName: "nottar")
        XCTAssertNotEqual(Harness.run(["nbdinfo", notTar.uri]).status, 0)
        XCTAssertTrue(notTar.stderr.contains("not an uncompressed tar file"), notTar.stderr)
        XCTAssertTrue(notTar.isRunning)
        let r = Harness.run([Harness.nbdkit, "-U", "-", "file", dir.file("gnu.tar"), "--filter=tar", "--run", "true"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("nbdkit: error: tar-entry parameter must be set"), r.stderr)
    }
}
