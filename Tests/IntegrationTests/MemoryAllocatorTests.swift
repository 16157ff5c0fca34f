import XCTest

/// The memory plugin's `allocator=` parameter, as nbdkit's memory plugin takes it.
final class MemoryAllocatorTests: IntegrationTestCase {
    /// The first three fields of each `nbdinfo --map` line: offset, length, type.
    private func map(_ uri: String) -> [String] {
        let r = Harness.run(["nbdinfo", "--map", uri])
        XCTAssertEqual(r.status, 0, r.stderr)
        return r.stdout.split(separator: "\n").map { $0.split(separator: " ").prefix(3).joined(separator: " ") }
    }

    /// A kB field of /proc/PID/status.
    private func statusKiB(_ pid: Int32, _ field: String) -> Int? {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix(field + ":") }
        return line.flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") }
    }

    /// Writes through the mapping (4 KiB) and by splice (64 KiB), trims and zeroes, and checks
    /// what reads back.
    private let roundTrip = """
        h.pwrite(b'a' * 4096, 0)
        h.pwrite(b'b' * 65536, 131072)
        h.pwrite(b'c' * 8192, 262144)
        h.trim(4096, 0)
        h.zero(4096, 262144)
        assert h.pread(4096, 0) == bytes(4096)
        assert h.pread(65536, 131072) == b'b' * 65536
        assert h.pread(8192, 262144) == bytes(4096) + b'c' * 4096
        """

    func testSparseIsTheDefault() throws {
        for (n, allocator) in [[], ["allocator=sparse"], ["allocator="]].enumerated() {
            let s = try startServer(["memory", "1M"] + allocator, socketName: "s\(n)")
            Harness.nbdsh(s.uri, roundTrip)
            XCTAssertEqual(map(s.uri), ["0 131072 3", "131072 65536 0", "196608 69632 3", "266240 4096 0", "270336 778240 3"],
                           "\(allocator)")
        }
    }

    /// `mlock` alone and nbdkit's spellings of true lock the disk; its spellings of false and
    /// empty fields don't.
    func testMlockSpellings() throws {
        let spellings = ["malloc,mlock": true, "malloc,mlock=y": true, "malloc,mlock=T": true, "malloc,,mlock=On": true,
                         "malloc,mlock=1,": true, "malloc,mlock=n": false, "malloc,mlock=F": false, "malloc,": false]
        for (n, (allocator, locks)) in spellings.sorted(by: { $0.key < $1.key }).enumerated() {
            let s = try startServer(["memory", "1M", "allocator=" + allocator], socketName: "s\(n)")
            let locked = statusKiB(s.process.processIdentifier, "VmLck") ?? -1
            XCTAssertEqual(locked >= 1024, locks, "\(allocator): VmLck \(locked) kB")
            XCTAssertEqual(map(s.uri), ["0 1048576 0"], allocator)
        }
    }

    /// Block status says data everywhere, before and after writes, trims and zeroes.
    func testMallocReportsNoHoles() throws {
        let s = try startServer(["memory", "1M", "allocator=malloc"])
        XCTAssertEqual(map(s.uri), ["0 1048576 0"])
        Harness.nbdsh(s.uri, roundTrip)
        XCTAssertEqual(map(s.uri), ["0 1048576 0"])
    }

    /// With mlock the whole disk is locked into RAM at start-up and stays resident (zeroed in
    /// place rather than given back) when all of it is trimmed and zeroed.
    func testMallocMlockLocksTheWholeDisk() throws {
        let s = try startServer(["memory", "2M", "allocator=malloc,mlock=TRUE"])
        let pid = s.process.processIdentifier
        XCTAssertGreaterThanOrEqual(statusKiB(pid, "VmLck") ?? 0, 2048)
        XCTAssertGreaterThanOrEqual(statusKiB(pid, "RssShmem") ?? 0, 2048)
        Harness.nbdsh(s.uri, roundTrip + """

            h.trim(2 << 20, 0)
            h.zero(2 << 20, 0)
            assert h.pread(2 << 20, 0) == bytes(2 << 20)
            """)
        XCTAssertEqual(map(s.uri), ["0 2097152 0"])
        XCTAssertGreaterThanOrEqual(statusKiB(pid, "RssShmem") ?? 0, 2048, "trim or zero gave locked memory back")
    }

    /// Spellings nbdkit refuses are refused with nbdkit's words and status 1, and the command
    /// never runs; so are a disk that can't fit and memory that can't be locked.
    func testBadAllocatorsAreRefused() throws {
        let marker = dir.file("ran")
        let cases: [([String], String)] = [
            (["1M", "allocator=foo"], "unknown allocator \"foo\""),
            (["1M", "allocator=sparse,mlock=true"], "allocator=sparse does not take extra parameters"),
            (["1M", "allocator=malloc,foo=1"], "allocator=malloc: unknown parameter foo"),
            (["1M", "allocator=malloc,mlock=maybe"], "could not decipher boolean (maybe)"),
            (["1M", "allocator=malloc,=1"], "invalid allocator parameter"),
            (["1M", "allocator=zstd"],
             "allocator=zstd is not supported: this nbdkit is built without zstd (zstd=no in --dump-plugin)"),
        ]
        for (parameters, message) in cases {
            let r = Harness.run([Harness.nbdkit, "-U", "-", "memory"] + parameters + ["--run", "touch \(marker)"])
            XCTAssertEqual(r.status, 1, "\(parameters)")
            XCTAssertEqual(r.stderr, "nbdkit: error: \(message)\n")
        }
        let huge = Harness.run([Harness.nbdkit, "-U", "-", "memory", "1E", "allocator=malloc", "--run", "touch \(marker)"])
        XCTAssertEqual(huge.status, 1)
        XCTAssertTrue(huge.stderr.hasPrefix("nbdkit: error: memory: allocator=malloc: a disk of 1152921504606846976 bytes does not fit in RAM and swap ("),
                      huge.stderr)
        XCTAssertTrue(huge.stderr.hasSuffix("): Cannot allocate memory\n"), huge.stderr)
        // Without CAP_IPC_LOCK, a lock limit of 64 KiB refuses a 1 MiB disk.
        let limited = Harness.run(["/bin/bash", "-c",
                                   "ulimit -l 64; exec setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock \"$0\" -U - memory 1M allocator=malloc,mlock=true --run 'touch \(marker)'",
                                   Harness.nbdkit])
        XCTAssertEqual(limited.status, 1)
        XCTAssertEqual(limited.stderr, "nbdkit: error: allocator=malloc: mlock: Cannot allocate memory\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker))
    }
}
