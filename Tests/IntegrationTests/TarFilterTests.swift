import XCTest
import Foundation

/// The tar filter against archives made by GNU tar at test time, in its three header formats.
final class TarFilterTests: IntegrationTestCase {
    /// A 130-byte path: over the 100 bytes of a plain header, so each format stores it its own
    /// way (GNU long name, pax path record, ustar prefix).
    let longPath = String(repeating: "d", count: 60) + "/" + String(repeating: "e", count: 60) + "/long.txt"

    /// Python that crafts tar archives, run in the directory given as its argument: `header`
    /// makes a ustar header block (its size an int, or the raw 12-byte field), `record` a pax
    /// record, `pax` a pax header with its records.
    static let craftingPrelude = """
        import os, subprocess, sys
        os.chdir(sys.argv[1])
        def header(name, size, typeflag=b'0'):
            h = bytearray(512)
            h[0:len(name)] = name
            h[100:108] = b'0000644\\0'; h[108:116] = b'0000000\\0'; h[116:124] = b'0000000\\0'
            h[124:136] = size if isinstance(size, bytes) else b'%011o\\0' % size
            h[136:148] = b'00000000000\\0'; h[156:157] = typeflag
            h[257:263] = b'ustar\\0'; h[263:265] = b'00'
            h[148:156] = b' ' * 8; h[148:156] = b'%06o\\0 ' % sum(h)
            return bytes(h)
        def record(key, value):
            body = ' %s=%s\\n' % (key, value)
            n = len(body) + 1
            while len(str(n)) + len(body) != n: n += 1
            return (str(n) + body).encode()
        def pax(records):
            return header(b'PaxHeader', len(records), b'x') + records + bytes(-len(records) % 512)

        """

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

    /// Crafted headers whose sizes or pax record lengths run past the archive (up to 2^64) fail
    /// the open with a message; the server does not crash and goes on serving.
    func testCraftedSizesFailTheOpenWithoutCrashing() throws {
        let r = Harness.run(["/usr/bin/python3", "-c", Self.craftingPrelude + """
        zero = b'%011o\\0' % 0
        archives = {
            'base256.tar': header(b'other', b'\\x80' + bytes(3) + b'\\xff' * 8) + bytes(1024),
            'paxsize.tar': pax(b'29 size=18446744073709551615\\n') + header(b'other', zero) + bytes(1024),
            'paxlength.tar': pax(b'11 path=ab\\n9223372036854775807 x=y\\n') + header(b'other', zero) + bytes(1024),
            'octal.tar': header(b'other', b'77777777777\\0') + bytes(1024),
        }
        for name, data in archives.items():
            open(name, 'wb').write(data)
        """, dir.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        for archive in ["base256.tar", "paxsize.tar", "paxlength.tar", "octal.tar"] {
            let s = try startServer(["-r", "file", dir.file(archive), "--filter=tar", "tar-entry=disk"],
                                    socketName: archive + ".sock")
            XCTAssertNotEqual(Harness.run(["nbdinfo", s.uri]).status, 0, archive)
            // As nbdkit labels a connection's errors: the plugin and connection, then "error:".
            XCTAssertTrue(s.stderr.contains("nbdkit: file[1]: error: cannot open export"), archive + ": " + s.stderr)
            XCTAssertTrue(s.isRunning, archive)
            XCTAssertEqual(s.stop(), 0, archive)
        }
    }

    /// GNU tar's incremental archives fill the bytes a POSIX header uses for a name prefix.
    func testGNUIncrementalArchive() throws {
        makeArchives()
        let r = Harness.run(["/bin/sh", "-c", "cd '\(dir.path)' && tar --format=gnu -g snapshot -cf inc.tar disk.img"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = dir.file("out")
        let run = Harness.run([Harness.nbdkit, "-U", "-", "file", dir.file("inc.tar"), "--filter=tar",
                               "tar-entry=disk.img", "--run", "nbdcopy \"$uri\" \(out)"])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertEqual(contents(out), contents(dir.file("disk.img")))
    }

    /// A sparse entry (GNU's old format and pax's) or one that is not a regular file fails the
    /// open saying so (it was "no such file"; nbdkit 1.32 serves a sparse file's stored data,
    /// and a directory as an empty disk).
    func testSparseOrSpecialEntriesAreRefusedWithTheReason() throws {
        let script = """
        cd '\(dir.path)' && mkdir d && truncate -s 1M sp.img && printf data | dd of=sp.img bs=1 seek=600000 conv=notrunc 2>/dev/null \\
        && tar --format=gnu -S -cf gnusparse.tar sp.img d && tar --format=pax -S -cf paxsparse.tar sp.img
        """
        let made = Harness.run(["/bin/sh", "-c", script])
        XCTAssertEqual(made.status, 0, made.stderr)
        for (archive, entry, reason) in [("gnusparse.tar", "sp.img", "a sparse file, which this filter can't serve"),
                                         ("paxsparse.tar", "sp.img", "a sparse file, which this filter can't serve"),
                                         ("gnusparse.tar", "d/", "not a regular file")] {
            let r = Harness.run([Harness.nbdkit, "-U", "-", "file", dir.file(archive), "--filter=tar", "tar-entry=\(entry)",
                                 "--run", "nbdinfo --size \"$uri\""])
            XCTAssertNotEqual(r.status, 0, archive)
            XCTAssertTrue(r.stderr.contains("tar: \(entry): \(reason)"), "\(archive): \(r.stderr)")
        }
        // What follows a sparse entry is found by the entry's pax size (its header's size field
        // says 0, as for data of 8 GiB or more), and a name that is not a regular file is
        // served from a regular file of that name appended later (tar -r). Names match byte
        // for byte (two spellings of "é" served each other's data), and a checksum summed
        // over signed bytes is accepted, as GNU tar accepts it.
        let crafted = Harness.run(["/usr/bin/python3", "-c", Self.craftingPrelude + """
        records = b''.join(record(k, v) for k, v in [('GNU.sparse.major', 1), ('GNU.sparse.minor', 0),
                                                     ('GNU.sparse.name', 'sp.img'), ('GNU.sparse.realsize', 4096), ('size', 1024)])
        open('after.tar', 'wb').write(pax(records) + header(b'GNUSparseFile.0/sp.img', 0) + b'S' * 1024
                                      + header(b'after', 512) + b'A' * 512 + bytes(1024))
        # A link with data (a pax size, 0 in its header): skipped by the pax size, as GNU tar.
        open('link.tar', 'wb').write(pax(record('size', 1024))
                                     + header(b'link', 0, b'2') + b'L' * 1024 + header(b'after', 512) + b'A' * 512 + bytes(1024))
        # GNU's own sparse format with more than four pieces: its map goes on in blocks after
        # the header.
        with open('holes.img', 'wb') as f:
            for i in range(8):
                f.seek(i * 65536); f.write(b'D' * 4096)
            f.truncate(524288)
        open('tail', 'wb').write(b'T' * 1000)
        subprocess.run(['tar', '--format=gnu', '-S', '-cf', 'holes.tar', 'holes.img', 'tail'], check=True)
        # A directory's pax size says nothing of what follows it.
        open('dir.tar', 'wb').write(pax(record('size', 3072))
                                    + header(b'd/', 0, b'5') + header(b'after', 512) + b'A' * 512 + bytes(1024))
        # Names match byte for byte: "é" composed and decomposed are two files.
        os.mkdir('names'); os.chdir('names')
        open(b'caf\\xc3\\xa9', 'wb').write(b'C' * 600); open(b'cafe\\xcc\\x81', 'wb').write(b'D' * 700)
        subprocess.run([b'tar', b'--format=gnu', b'-cf', b'../names.tar', b'caf\\xc3\\xa9', b'cafe\\xcc\\x81'], check=True)
        os.chdir('..')
        # A checksum summed over signed bytes, as some old tar programs wrote it.
        data = bytearray(header(b'caf\\xc3\\xa9', 20) + b'E' * 512 + bytes(1024))
        h = data[:512]; h[148:156] = b' ' * 8
        h[148:156] = b'%06o\\0 ' % sum(b - 256 if b > 127 else b for b in h)
        data[:512] = h
        open('signed.tar', 'wb').write(bytes(data))
        os.mkdir('again'); os.chdir('again')
        os.symlink('nowhere', 'e.img')
        subprocess.run(['tar', '-cf', '../again.tar', 'e.img'], check=True)
        os.remove('e.img'); open('e.img', 'w').write('regular')
        subprocess.run(['tar', '-rf', '../again.tar', 'e.img'], check=True)
        """, dir.path])
        XCTAssertEqual(crafted.status, 0, crafted.stderr)
        for (archive, entry, size) in [("after.tar", "after", "512"), ("again.tar", "e.img", "7"), ("link.tar", "after", "512"),
                                       ("holes.tar", "tail", "1000"), ("dir.tar", "after", "512"),
                                       ("names.tar", "caf\u{E9}", "600"), ("names.tar", "cafe\u{301}", "700"),
                                       ("signed.tar", "caf\u{E9}", "20")] {
            let r = Harness.run([Harness.nbdkit, "-U", "-", "file", dir.file(archive), "--filter=tar", "tar-entry=\(entry)",
                                 "--run", "nbdinfo --size \"$uri\""])
            XCTAssertEqual(r.stdout, size + "\n", "\(archive): \(r.stderr)")
        }
        let holes = Harness.run([Harness.nbdkit, "-U", "-", "file", dir.file("holes.tar"), "--filter=tar", "tar-entry=holes.img",
                                 "--run", "nbdinfo --size \"$uri\""])
        XCTAssertTrue(holes.stderr.contains("tar: holes.img: a sparse file, which this filter can't serve"), holes.stderr)
    }

    /// A missing entry, or data that is not a tar file, fails the open with the reason logged;
    /// the server goes on. A missing tar-entry=, or two, is a start-up error.
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
        XCTAssertEqual(r.stderr, "nbdkit: error: you must supply the tar-entry=<FILENAME> parameter\n")
        // As nbdkit: tar-entry= twice is an error (the last one was served).
        let twice = Harness.run([Harness.nbdkit, "-U", "-", "file", dir.file("gnu.tar"), "--filter=tar",
                                 "tar-entry=disk.img", "tar-entry=disk.img", "--run", "true"])
        XCTAssertEqual(twice.status, 1)
        XCTAssertEqual(twice.stderr, "nbdkit: error: only one tar-entry parameter can be given\n")
    }

}
