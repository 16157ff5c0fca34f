import XCTest

/// Exact requests through libnbd's nbdsh: data, error codes, bounds, structured replies.
final class NbdshTests: IntegrationTestCase {
    func testReadWriteFlushTrimZeroCache() throws {
        let s = try startServer(["memory", "size=1M"])
        let r = Harness.nbdsh(s.uri, """
        h.pwrite(b'abcd' * 1024, 4096, nbd.CMD_FLAG_FUA)
        assert h.pread(4096, 4096) == b'abcd' * 1024
        assert h.pread(16, 0) == bytes(16)
        h.flush()
        h.cache(4096, 4096)
        h.zero(1024, 4096 + 512)
        assert h.pread(1024, 4096 + 512) == bytes(1024)
        assert h.pread(512, 4096 + 1536) == (b'abcd' * 1024)[1536:2048]
        h.trim(65536, 0)
        assert h.pread(65536, 0) == bytes(65536)
        h.zero(4096, 8192, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
        h.zero(4096, 8192, nbd.CMD_FLAG_FAST_ZERO)
        print('ok')
        """)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    /// A block device (a loop device over a file of random bytes; needs root) is served with its
    /// size, its data and trim, as nbdkit does: a trimmed range reads as zeros (the loop device
    /// punches a hole in its file), and a trim the device can't take (not aligned to its
    /// sectors) is dropped, as trim is advisory.
    func testBlockDeviceIsServedWithTrim() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root for a loop device") }
        let backing = randomFile("backing.img", count: 8 << 20)
        let attach = Harness.run(["losetup", "--find", "--show", backing])
        let device = attach.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        defer { if attach.status == 0 { XCTAssertEqual(Harness.run(["losetup", "--detach", device]).status, 0) } }
        guard attach.status == 0 else { throw XCTSkip("no free loop device: \(attach.stderr)") }
        let s = try startServer(["file", device])
        let r = Harness.nbdsh(s.uri, """
        original = open(\(Harness.pythonString(backing)), 'rb').read()
        assert h.get_size() == 8 << 20, h.get_size()
        assert h.can_trim() and h.can_zero() and not h.is_read_only()
        assert h.pread(65536, 1 << 20) == original[1 << 20:(1 << 20) + 65536]
        h.trim(1 << 20, 1 << 20)
        assert h.pread(1 << 20, 1 << 20) == bytes(1 << 20)
        h.set_strict_mode(0)
        h.trim(1000, 100)
        h.pwrite(b'x' * 4096, 3 << 20, nbd.CMD_FLAG_FUA)
        assert h.pread(4096, 3 << 20) == b'x' * 4096
        assert h.pread(4096, 0) == original[:4096]
        print('ok')
        """)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        XCTAssertFalse(s.stderr.contains("error"), s.stderr)
    }

    /// The memory plugin's disk is a memory file: trimming 64 MiB, or zeroing it, gives that
    /// memory back to the kernel (the file's allocated blocks fall), and pages partly covered
    /// by a trim or a zero read as zeros there and keep the rest.
    func testMemoryTrimAndZeroGiveMemoryBack() throws {
        let s = try startServer(["memory", "size=128M"])
        let r = Harness.nbdsh(s.uri, """
        import os
        def allocated_mib():
            fds = '/proc/\(s.pid)/fd'
            for name in os.listdir(fds):
                if os.readlink(os.path.join(fds, name)).startswith('/memfd:nbdkit-memory'):
                    return os.stat(os.path.join(fds, name)).st_blocks * 512 // (1 << 20)
            raise Exception('no memory file')
        assert allocated_mib() == 0
        for i in range(64):
            h.pwrite(b'\\xff' * (1 << 20), i << 20)
        assert allocated_mib() == 64, allocated_mib()
        h.trim(32 << 20, 0)
        assert allocated_mib() == 32, allocated_mib()
        h.zero(32 << 20, 32 << 20)
        assert allocated_mib() == 0, allocated_mib()
        assert h.pread(1 << 20, 5 << 20) == bytes(1 << 20)
        h.pwrite(b'\\xff' * 3 * 4096, 0)
        h.trim(100, 10000)
        h.zero(8190, 10)
        assert h.pread(3 * 4096, 0) == (b'\\xff' * 10 + bytes(8190) + b'\\xff' * 1800 + bytes(100)
                                        + b'\\xff' * 2188)
        print('ok')
        """, timeout: 60)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
    }

    /// As nbdkit's memory plugin: pages written with zeros, or that a partial zero or trim left
    /// all zeros, are reported as zero (though allocated: nbdkit gives the latter back, a hole),
    /// and a page with any data left is data. One request scans at most 64 MiB of data: its
    /// reply ends there.
    func testMemoryReportsPagesOfZerosAsZeros() throws {
        let s = try startServer(["memory", "size=128M"])
        let r = Harness.run(["/usr/bin/nbdsh", "-c", """
        h.add_meta_context('base:allocation')
        h.connect_uri(\(Harness.pythonString(s.uri)))
        def status(count, offset, flags=0):
            found = []
            h.block_status(count, offset, lambda ctx, off, entries, err: found.extend(entries), flags)
            return found
        h.pwrite(b'x' * 512, 0)
        h.zero(512, 0)
        h.pwrite(b'x' * 512, 8192)
        h.trim(512, 8192)
        h.pwrite(bytes(65536), 65536)
        h.pwrite(b'x' * 100, 200000)
        h.zero(10, 200000)
        assert status(65536, 0) == [4096, 2, 4096, 3, 4096, 2, 53248, 3], status(65536, 0)
        assert status(65536, 65536) == [65536, 2], status(65536, 65536)
        assert status(100, 65537) == [100, 2], status(100, 65537)
        assert status(8192, 196608) == [4096, 0, 4096, 3], status(8192, 196608)
        h.pwrite(bytes(4096), 204800)
        assert status(12288, 196608, nbd.CMD_FLAG_REQ_ONE) == [4096, 0], status(12288, 196608, nbd.CMD_FLAG_REQ_ONE)
        assert status(12288, 200704, nbd.CMD_FLAG_REQ_ONE) == [4096, 3], status(12288, 200704, nbd.CMD_FLAG_REQ_ONE)
        assert status(12288, 204800, nbd.CMD_FLAG_REQ_ONE) == [4096, 2], status(12288, 204800, nbd.CMD_FLAG_REQ_ONE)
        for i in range(100):
            h.pwrite(b'y' * (1 << 20), (20 << 20) + (i << 20))
        assert status(100 << 20, 20 << 20) == [64 << 20, 0], status(100 << 20, 20 << 20)
        print('ok')
        """], timeout: 60)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
    }

    /// Block status at the very end of the largest disk (2^63-1 bytes), where the kernel's
    /// SEEK_DATA and SEEK_HOLE answer wrongly: written bytes are never reported as a hole, a
    /// hole well before them still is, and the server survives.
    func testBlockStatusAtTheEndOfTheLargestDisk() throws {
        let s = try startServer(["memory", "9223372036854775807"])
        let r = Harness.run(["/usr/bin/nbdsh", "-c", """
        h.add_meta_context('base:allocation')
        h.connect_uri(\(Harness.pythonString(s.uri)))
        size = h.get_size()
        assert size == (1 << 63) - 1
        def status(count, offset):
            found = []
            h.block_status(count, offset, lambda ctx, off, entries, err: found.extend(entries))
            return found
        h.pwrite(b'x' * 8192, size - 8192)
        h.pwrite(b'y', size - 1)
        for count in (1, 100, 8192, 20000):
            entries = status(count, size - count)
            assert entries[-1] & 1 == 0, (count, entries)               # the written end: not a hole
            if count <= 8192:
                assert all(flags & 1 == 0 for flags in entries[1::2]), (count, entries)
        entries = status(1 << 20, size - (1 << 30))
        assert entries[1] & 1 == 1, entries                               # far from the end: a hole
        assert h.pread(1, size - 1) == b'y'
        print('ok')
        """])
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        XCTAssertTrue(s.isRunning)
    }

    /// The memory plugin's disk is mapped into the server, which copies writes of less than
    /// 64 KiB into it (seen by the pages the server maps, RssShmem); larger ones are spliced into
    /// its file, as on a disk larger than 1 TiB, which is not mapped. On both: odd offsets and lengths, small writes
    /// pipelined behind each other, pages partly present, the largest request (32 MiB), a FUA
    /// write (which takes the usual path), 16 writes in flight at once with trims of other pages
    /// between them, and a write past the end (ENOSPC, its payload consumed so the next request
    /// is read in step) all leave the disk as a plain copy would.
    func testWritesIntoMemory() throws {
        for (size, mapped) in [("64M", true), ("2T", false)] {
            let s = try startServer(["memory", "size=\(size)"], socketName: "sock-\(size)")
            let r = Harness.nbdsh(s.uri, """
            import os, errno
            \(Harness.pythonPipeCount(pid: s.pid))
            maps = open('/proc/\(s.pid)/maps').read()
            assert ('/memfd:nbdkit-memory' in maps) == \(mapped ? "True" : "False"), maps
            size = h.get_size()
            before = pipes()
            def mapped_kib():
                line = [l for l in open('/proc/\(s.pid)/status') if l.startswith('RssShmem:')][0]
                return int(line.split()[1])
            mapped0 = mapped_kib()
            image = bytearray(64 << 20)
            def w(offset, length, flags=0):
                data = os.urandom(length)
                h.pwrite(data, offset, flags)
                image[offset:offset + length] = data
            w(48 << 20, 1 << 20)    # into pages never written: to the file, through a pipe
            assert pipes() == before + 2, (before, pipes())
            assert mapped_kib() - mapped0 < 512, mapped_kib() - mapped0
            w(48 << 20, 1 << 20)    # the same pages, allocated now: to the file all the same
            assert mapped_kib() - mapped0 < 512, mapped_kib() - mapped0
            mapped1 = mapped_kib()
            for i in range(16):     # small writes, into pages never written too: through the mapping if any
                w((50 << 20) + i * 8192, 100)
            assert (mapped_kib() - mapped1 >= 64) == \(mapped ? "True" : "False"), mapped_kib() - mapped1
            w(12345, 65535)
            w(100000, 65536)
            w((1 << 20) + 3, (1 << 20) + 5)
            w(60 << 20, 1 << 20, nbd.CMD_FLAG_FUA)
            w(61 << 20, 2 << 20)
            h.trim(1 << 20, 2 << 20)
            image[2 << 20:3 << 20] = bytes(1 << 20)
            w((2 << 20) + 1000, 2 << 20)
            w(5 << 20, 32 << 20)
            buffers = []
            for i in range(64):
                length, offset = (4096, 1, 513, 20000)[i % 4], (38 << 20) + i * 30001
                buffers.append(nbd.Buffer.from_bytearray(bytearray(os.urandom(length))))
                h.aio_pwrite(buffers[-1], offset)
                image[offset:offset + length] = buffers[-1].to_bytearray()
            for i in range(16):
                data = os.urandom(1 << 20)
                offset = (40 << 20) + i * (1 << 20) + i
                buffers.append(nbd.Buffer.from_bytearray(bytearray(data)))
                h.aio_pwrite(buffers[-1], offset)
                image[offset:offset + len(data)] = data
                h.aio_trim(65536, (61 << 20) + i * 131072)
                image[(61 << 20) + i * 131072:(61 << 20) + i * 131072 + 65536] = bytes(65536)
            \(Harness.pythonDrainThenLargeWritePastTheEnd)
            for offset in range(0, len(image), 4 << 20):
                assert h.pread(4 << 20, offset) == image[offset:offset + (4 << 20)], offset
            print('ok')
            """, timeout: 60)
            XCTAssertEqual(r.stdout, "ok\n", "\(size): \(r.stderr)")
            XCTAssertTrue(s.isRunning)
            _ = s.stop()
        }
    }

    /// The memory disk is not mapped where that would cost more than writing to its file:
    /// under an address-space limit (`ulimit -v`, which the mapping would use up), nor when it
    /// is larger than the machine's RAM (its page tables could grow to RAM/512). Writes then go
    /// through the file, and land.
    func testMemoryDiskIsNotMappedUnderAnAddressSpaceLimitOrBeyondRAM() throws {
        let ram = Int64(sysconf(Int32(_SC_PHYS_PAGES))) * Int64(sysconf(Int32(_SC_PAGESIZE)))
        let script = "grep -c memfd:nbdkit-memory /proc/$PPID/maps; /usr/bin/nbdsh -u \"$uri\" -c '"
            + "h.pwrite(b\"x\" * 60000, 5); h.pwrite(b\"y\", 3); "
            + "assert h.pread(60005, 0) == bytes(3) + b\"y\" + bytes(1) + b\"x\" * 60000; print(\"ok\")'"
        // The last case shows that the check sees a mapping: unless this machine's own limits
        // forbid one (a finite ulimit -v, strict overcommit), which the server then respects.
        var addressLimit = rlimit()
        let overcommit = (try? String(contentsOfFile: "/proc/sys/vm/overcommit_memory", encoding: .utf8)) ?? ""
        let mappable = getrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &addressLimit) == 0
            && addressLimit.rlim_cur == rlim_t.max && (overcommit.hasPrefix("0") || overcommit.hasPrefix("1"))
        for (limit, size) in [(String(8 << 30), Int64(64 << 20)), (nil, ram + (1 << 30)), (nil, Int64(64 << 20))] {
            let command = (limit.map { ["prlimit", "--as=\($0)"] } ?? [])
                + [Harness.nbdkit, "-U", "-", "memory", String(size), "--run", script]
            let r = Harness.run(command, timeout: 30)
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stdout, limit == nil && size < ram && mappable ? "1\nok\n" : "0\nok\n", "\(command): \(r.stderr)")
        }
    }

    /// A backend that never waits (the memory plugin, a file in tmpfs) is served by the
    /// connection's own thread, with no worker started however many requests are in flight; a
    /// file on a disk, or a filter in front, keeps the worker pool (a worker starts with the
    /// first request).
    func testBackendsThatNeverWaitAreServedByOneThread() throws {
        let shmFile = "/dev/shm/nbdkit-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).img"
        let diskFile = dir.file("disk.img")
        for path in [shmFile, diskFile] {
            XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(count: 1 << 20)))
        }
        defer { try? FileManager.default.removeItem(atPath: shmFile) }
        // The test directory is on a disk here; where it is in memory too, so is its file.
        let fsType = Harness.run(["stat", "-f", "-c", "%T", dir.path]).stdout
        let diskFileInMemory = fsType.hasPrefix("tmpfs") || fsType.hasPrefix("ramfs")
        let cases: [(arguments: [String], inline: Bool)] = [
            (["memory", "size=1M"], true),
            (["file", shmFile], true),
            (["file", diskFile], diskFileInMemory),
            (["--filter=noextents", "memory", "size=1M"], false),
        ]
        for (i, c) in cases.enumerated() {
            let s = try startServer(c.arguments, socketName: "sock\(i)")
            let r = Harness.nbdsh(s.uri, """
            import os
            def threads():
                return len(os.listdir('/proc/\(s.pid)/task'))
            before = threads()
            buffers = [nbd.Buffer(4096) for _ in range(16)]
            for n, b in enumerate(buffers):
                h.aio_pread(b, n * 4096)
            h.aio_pwrite(b'x' * 4096, 65536)
            while h.aio_in_flight() > 0:
                h.poll(-1)
            assert h.pread(4096, 65536) == b'x' * 4096
            print('workers started:', threads() - before)
            """)
            if c.inline {
                XCTAssertEqual(r.stdout, "workers started: 0\n", "\(c.arguments): \(r.stderr)")
            } else {
                XCTAssertTrue(r.stdout.hasPrefix("workers started: ") && !r.stdout.hasPrefix("workers started: 0"),
                              "\(c.arguments): \(r.stdout) \(r.stderr)")
            }
        }
    }

    /// Served inline over `-s` (stdin and stdout), gathered replies still go out before each
    /// read: pipelined writes and reads of 4 KiB to 1 MiB all come back right, then a lone
    /// request at a time (no reply waits for more input).
    func testSingleConnectionOnStdinIsServedInline() throws {
        let r = Harness.run(["/usr/bin/nbdsh", "-c", """
        import os
        h.connect_command([\(Harness.pythonString(Harness.nbdkit)), '-s', 'memory', '8M'])
        data = os.urandom(8 << 20)
        for offset in range(0, 8 << 20, 1 << 20):
            h.aio_pwrite(data[offset:offset + (1 << 20)], offset)
        \(Harness.pythonPipelinedReads(count: 48, stride: 150001, size: 8 << 20))
        for n in range(200):
            assert h.pread(512, n * 4096) == data[n * 4096:n * 4096 + 512]
        print('ok')
        """], timeout: 60)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
    }

    /// Large reads from the memory plugin are sent straight from its file (`sendfile`): data,
    /// holes and page boundaries at odd offsets come out right, at sizes around 64 KiB (the
    /// least sent that way) and 4 MiB; and while a client leaves 16 MiB of replies unread (so
    /// the socket is full), another client still writes and reads.
    func testLargeReadsFromMemoryAndAStalledClient() throws {
        let s = try startServer(["memory", "size=64M"])
        let r = Harness.nbdsh(s.uri, """
        import os, time
        size = 64 * 1024 * 1024
        image = bytearray(size)
        for offset, length in ((12345, 100000), (1 << 20, 4 << 20), (9 << 20, 1), (20 << 20, 3 << 20)):
            data = os.urandom(length)
            h.pwrite(data, offset)
            image[offset:offset + length] = data
        for offset, length in ((0, 65536), (12000, 65535), (12001, 65536), (1000, 200000),
                               ((1 << 20) - 7, 4 << 20), ((1 << 20) - 7, (4 << 20) + 1),
                               ((9 << 20) - 65536, 131072), ((19 << 20) + 3, 5 << 20)):
            assert h.pread(length, offset) == image[offset:offset + length], (offset, length)

        # 16 reads of 1 MiB are sent while this client reads none of the replies: more than the
        # socket holds (the server's send buffer is 4 MiB), so the server's sends come up short.
        buffers = [nbd.Buffer(1 << 20) for _ in range(16)]
        cookies = [h.aio_pread(b, (20 << 20) + i * 65536) for i, b in enumerate(buffers)]
        time.sleep(0.5)   # libnbd reads no reply until poll() is called
        h2 = nbd.NBD()
        h2.connect_uri(\(Harness.pythonString(s.uri)))
        h2.pwrite(b'z' * 100000, 40 << 20)
        assert h2.pread(100000, 40 << 20) == b'z' * 100000
        h2.shutdown()
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for i, b in enumerate(buffers):
            offset = (20 << 20) + i * 65536
            assert b.to_bytearray() == image[offset:offset + (1 << 20)], i
        print('ok')
        """, timeout: 60)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    /// `--no-sr` declines NBD_OPT_STRUCTURED_REPLY (NBD_REP_ERR_UNSUP), so libnbd falls back to
    /// simple replies and no block status. `--mask-handshake` hides global handshake flags:
    /// with bit 1 clear a client may not ask for NO_ZEROES and gets the 124 padding bytes after
    /// NBD_OPT_EXPORT_NAME; with bit 0 clear it may use nothing but NBD_OPT_EXPORT_NAME, and
    /// libnbd still connects, as plain newstyle.
    func testNoStructuredRepliesAndHandshakeMask() throws {
        let noSR = try startServer(["--no-sr", "memory", "size=1M"], socketName: "nosr")
        let mask0 = try startServer(["--mask-handshake=0", "memory", "size=1M"], socketName: "mask0")
        let mask1 = try startServer(["--mask-handshake=0x1", "memory", "size=1M"], socketName: "mask1")
        let fallback = Harness.nbdsh(noSR.uri, """
        assert not h.get_structured_replies_negotiated()
        assert not h.can_meta_context('base:allocation')
        h.pwrite(b'x' * 512, 0)
        assert h.pread(512, 0) == b'x' * 512
        print(h.get_protocol())
        """)
        XCTAssertEqual(fallback.stdout, "newstyle-fixed\n")
        let unfixed = Harness.nbdsh(mask0.uri, "h.pwrite(b'y' * 512, 0); assert h.pread(512, 0) == b'y' * 512; print(h.get_protocol())")
        XCTAssertEqual(unfixed.stdout, "newstyle\n")

        let raw = Harness.run(["/usr/bin/python3", "-c", """
        import socket, struct, sys
        def connect(path, client_flags):
            s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(path)
            greeting = b''
            while len(greeting) < 18: greeting += s.recv(18 - len(greeting))
            s.sendall(struct.pack('>I', client_flags))
            return s, struct.unpack('>H', greeting[16:])[0]
        def option(s, code, data=b''):
            s.sendall(b'IHAVEOPT' + struct.pack('>II', code, len(data)) + data)
        def read_exact(s, n):
            got = b''
            while len(got) < n:
                chunk = s.recv(n - len(got)); assert chunk, got; got += chunk
            return got
        def read_all(s):
            got = b''
            while True:
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    return got
                if not chunk: return got
                got += chunk
        nosr, mask0, mask1 = sys.argv[1:]
        s, flags = connect(nosr, 3)
        assert flags == 3, flags
        option(s, 8)
        reply = s.recv(20)
        assert struct.unpack('>QIII', reply)[2] == 0x80000001, reply   # NBD_REP_ERR_UNSUP
        s, flags = connect(mask0, 0)
        assert flags == 0, flags
        option(s, 3)                                   # LIST from a client without fixed newstyle
        assert read_all(s) == b''
        s, _ = connect(mask0, 1)                       # asks for fixed newstyle, not offered
        assert read_all(s) == b''
        s, _ = connect(mask0, 0)
        option(s, 1)                                   # EXPORT_NAME '': size, flags, 124 zeros
        reply = read_exact(s, 134)
        assert reply[10:] == bytes(124) and struct.unpack('>Q', reply[:8])[0] == 1 << 20, reply
        s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 0, 7, 4096, 512))   # and it serves a read
        assert read_exact(s, 16 + 512) == struct.pack('>IIQ', 0x67446698, 0, 7) + bytes(512)
        s, flags = connect(mask1, 3)                   # NO_ZEROES was not offered
        assert flags == 1, flags
        assert read_all(s) == b''
        s, _ = connect(mask1, 1)
        option(s, 1)
        assert read_exact(s, 134)[10:] == bytes(124)
        print('ok')
        """, noSR.socket, mask0.socket, mask1.socket], timeout: 30)
        XCTAssertEqual(raw.stdout, "ok\n", raw.stderr)
        XCTAssertTrue(mask0.isRunning && mask1.isRunning && noSR.isRunning)
        let bad = Harness.run([Harness.nbdkit, "--mask-handshake=abc", "-U", "-", "memory", "1M", "--run", "true"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("nbdkit: error: mask-handshake: empty string where we expected a number"), bad.stderr)
    }

    func testBoundsAndErrorCodes() throws {
        let s = try startServer(["memory", "size=1M"])
        let r = Harness.nbdsh(s.uri, """
        import errno
        def errname(e):
            return e.errno if isinstance(e.errno, str) else errno.errorcode[e.errno]
        def fails(f, code):
            try:
                f()
            except nbd.Error as e:
                assert errname(e) == errno.errorcode[code], (e.errno, code)
                return
            raise AssertionError('no error')
        # libnbd's own checks would refuse these before the server saw them.
        h.set_strict_mode(0)
        size = h.get_size()
        fails(lambda: h.pread(512, size - 256), errno.EINVAL)
        fails(lambda: h.pread(1, size), errno.EINVAL)
        fails(lambda: h.pwrite(b'x' * 512, size - 256), errno.ENOSPC)
        fails(lambda: h.zero(1024, size), errno.ENOSPC)
        fails(lambda: h.trim(1024, size - 512), errno.EINVAL)
        fails(lambda: h.pread(512, 2**63), errno.EINVAL)
        # The connection is still good after every refusal.
        h.pwrite(b'y' * 512, size - 512)
        assert h.pread(512, size - 512) == b'y' * 512
        print('ok')
        """)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    func testReadonlyRefusesWrites() throws {
        let s = try startServer(["-r", "memory", "size=1M"])
        let r = Harness.nbdsh(s.uri, """
        import errno
        assert h.is_read_only()
        for f in (lambda: h.pwrite(b'x', 0), lambda: h.zero(512, 0), lambda: h.trim(512, 0)):
            try:
                f()
                raise AssertionError('write allowed')
            except nbd.Error as e:
                assert str(e.errno) in ('EPERM', 'EINVAL', str(errno.EPERM), str(errno.EINVAL)), e.errno
        assert h.pread(512, 0) == bytes(512)
        print('ok')
        """)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    func testStrictModeOffSendsRawErrors() throws {
        // With libnbd's client-side checks off, the server itself must refuse bad requests.
        let s = try startServer(["-r", "memory", "size=1M"])
        let r = Harness.nbdsh(s.uri, """
        import errno
        h.set_strict_mode(0)
        def code(f):
            try:
                f()
            except nbd.Error as e:
                return getattr(errno, e.errno) if isinstance(e.errno, str) else e.errno
            return 0
        assert code(lambda: h.pwrite(b'x' * 512, 0)) == errno.EPERM
        assert code(lambda: h.pread(512, 1024 * 1024)) == errno.EINVAL
        assert code(lambda: h.pread(0, 0)) == errno.EINVAL
        assert code(lambda: h.pread(512, 0, nbd.CMD_FLAG_FUA)) == errno.EINVAL
        assert code(lambda: h.trim(512, 0)) == errno.EPERM
        assert code(lambda: h.pread(512, 0)) == 0
        print('ok')
        """)
        XCTAssertEqual(r.stdout, "ok\n")
        // Every refusal is logged with the command, offset, count and error.
        XCTAssertTrue(s.stderr.contains("NBD_CMD_WRITE offset=0 count=512: EPERM"), s.stderr)
        XCTAssertTrue(s.stderr.contains("NBD_CMD_READ offset=1048576 count=512: EINVAL"), s.stderr)
    }

    func testStructuredRepliesAndBlockStatus() throws {
        let s = try startServer(["memory", "size=1M"])
        let r = Harness.run(["/usr/bin/nbdsh", "-c", """
        h.add_meta_context('base:allocation')
        h.connect_uri('\(s.uri)')
        assert h.get_structured_replies_negotiated()
        assert h.can_meta_context('base:allocation')
        h.pwrite(b'z' * 32768, 32768)
        seen = []
        def cb(metacontext, offset, entries, err):
            seen.append((metacontext, offset, list(entries)))
        h.block_status(1048576, 0, cb)
        assert seen == [('base:allocation', 0, [32768, 3, 32768, 0, 983040, 3])], seen
        seen.clear()
        h.block_status(65536, 0, cb, nbd.CMD_FLAG_REQ_ONE)
        assert seen == [('base:allocation', 0, [32768, 3])], seen
        # DF: the read arrives as one chunk.
        chunks = []
        def chunk(buf, offset, status, err):
            chunks.append((bytes(buf), offset, status))
        assert h.pread_structured(4096, 32768, chunk, nbd.CMD_FLAG_DF) == b'z' * 4096
        assert chunks == [(b'z' * 4096, 32768, nbd.READ_DATA)], chunks
        print('ok')
        """])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    func testSimpleRepliesWithoutStructured() throws {
        let s = try startServer(["memory", "size=1M"])
        let r = Harness.run(["/usr/bin/nbdsh", "-c", """
        h.set_request_structured_replies(False)
        h.connect_uri('\(s.uri)')
        assert not h.get_structured_replies_negotiated()
        h.pwrite(b'q' * 1000, 5)
        assert h.pread(1000, 5) == b'q' * 1000
        import errno
        try:
            h.pread(10, 1048570)
            raise AssertionError('read past the end allowed')
        except nbd.Error as e:
            assert str(e.errno) in ('EINVAL', str(errno.EINVAL)), e.errno
        print('ok')
        """])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    func testPatternPlugin() throws {
        let s = try startServer(["pattern", "size=1M"])
        let r = Harness.nbdsh(s.uri, """
        import struct
        b = h.pread(64, 4096)
        assert b == b''.join(struct.pack('>Q', 4096 + 8 * i) for i in range(8)), b
        assert h.pread(3, 8 + 5) == struct.pack('>Q', 8)[5:]
        print('ok')
        """)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    func testNullPlugin() throws {
        let s = try startServer(["null", "size=10M"])
        let r = Harness.nbdsh(s.uri, """
        h.pwrite(b'x' * 4096, 0)
        assert h.pread(4096, 0) == bytes(4096)
        assert h.get_size() == 10 * 1024 * 1024
        print('ok')
        """)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    /// The null plugin drops writes of 64 KiB and more (without FUA) as they arrive, without
    /// copying them (spliced from the socket through a pipe to /dev/null; the pipe made at the
    /// first such write): writes of every size up to 64 MiB, pipelined with reads, stay in step
    /// with the requests around them, and everything reads back as zeros.
    func testNullPluginDropsLargeWritesInStep() throws {
        let s = try startServer(["null", "size=256M"])
        let r = Harness.nbdsh(s.uri, """
        import os, errno
        \(Harness.pythonPipeCount(pid: s.pid))
        size = 256 << 20
        before = pipes()
        h.pwrite(b'x' * 4096, 0)
        h.pwrite(os.urandom(65535), 1)
        h.pwrite(os.urandom(1 << 20), 12345, nbd.CMD_FLAG_FUA)
        assert pipes() == before, 'a pipe for a small or FUA write'
        h.pwrite(os.urandom(1 << 20), 12345)
        assert pipes() == before + 2, (before, pipes())
        writes = []
        reads = []
        for i in range(60):
            length = (4096, 65536, 300001, 1 << 20, 8191, 64 << 20 if i % 10 == 5 else 65537)[i % 6]
            offset = (i * 3000017) % (size - length)
            writes.append(nbd.Buffer.from_bytearray(bytearray(os.urandom(length))))
            h.aio_pwrite(writes[-1], offset)
            reads.append(nbd.Buffer(100000))
            h.aio_pread(reads[-1], offset)
            while h.aio_in_flight() > 16:
                h.poll(-1)
        \(Harness.pythonDrainThenLargeWritePastTheEnd)
        for b in reads:
            assert b.to_bytearray() == bytes(100000)
        assert pipes() == before + 2, (before, pipes())
        h.flush()
        assert h.pread(1 << 20, 12345) == bytes(1 << 20)
        print('ok')
        """, timeout: 90)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        XCTAssertTrue(s.isRunning)
    }

    func testOffsetFilter() throws {
        let s = try startServer(["--filter=offset", "pattern", "size=1M", "offset=4096", "range=8192"])
        let r = Harness.nbdsh(s.uri, """
        import struct
        assert h.get_size() == 8192
        assert h.pread(8, 0) == struct.pack('>Q', 4096)
        print('ok')
        """)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    func testExportNameAndInfo() throws {
        let s = try startServer(["memory", "size=1M"])
        let r = Harness.run(["/usr/bin/nbdsh", "-c", """
        h.set_full_info(True)
        h.connect_uri('\(s.uri(export: "anything"))')
        assert h.get_export_name() == 'anything'
        assert h.get_canonical_export_name() == 'anything'
        assert h.get_block_size(nbd.SIZE_MAXIMUM) == 64 * 1024 * 1024
        print('ok')
        """])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    /// As nbdkit, a read or write may be as large as 64 MiB (libnbd's limit too). (A larger
    /// read, which libnbd refuses to send: HostileClientTests.testReadLargerThan64MiBGetsEINVAL.)
    func testLargestRequests() throws {
        let file = dir.file("big.img")
        XCTAssertEqual(Harness.run(["truncate", "-s", "128M", file]).status, 0)
        for plugin in [["memory", "128M"], ["file", file]] {
            let s = try startServer(plugin, socketName: "sock-\(plugin[0])")
            let r = Harness.nbdsh(s.uri, """
            import os
            data = os.urandom(64 << 20)
            h.pwrite(data, 4096)
            assert h.pread(64 << 20, 4096) == data
            assert h.pread(4096, 4096) == data[:4096]
            print('ok')
            """, timeout: 60)
            XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        }
    }

    /// Room for a request larger than 4 MiB is given back once the request is done: after
    /// eight concurrent 32 MiB reads and eight 32 MiB writes, the server's anonymous memory that
    /// the system can't take back (RssAnon less the pages marked free, LazyFree) is within
    /// 40 MiB of where it started while the connection is still open (it kept every worker's
    /// 32 MiB before), and a second round reuses the pages (it works the same). A filter in
    /// front keeps the data in the request buffers, not on the memory disk's direct paths.
    func testLargeRequestBuffersAreGivenBack() throws {
        let s = try startServer(["--filter=noextents", "memory", "256M"])
        let r = Harness.nbdsh(s.uri, """
        import time
        def held():
            fields = {}
            for line in open('/proc/\(s.pid)/smaps_rollup'):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit(): fields[parts[0]] = int(parts[1])
            return fields['Anonymous:'] - fields.get('LazyFree:', 0)
        def run(start):
            pending = {start(i) for i in range(8)}
            while pending:
                h.poll(-1)
                pending = {c for c in pending if not h.aio_command_completed(c)}
        def settled(before):
            # The buffers are given back just after the replies are sent.
            deadline = time.monotonic() + 5
            while held() - before >= 40 << 10 and time.monotonic() < deadline: time.sleep(0.05)
            return held() - before
        before = held()
        bufs = [nbd.Buffer(32 << 20) for i in range(8)]
        data = nbd.Buffer.from_bytearray(bytearray(b'w' * (32 << 20)))
        for round in range(2):
            run(lambda i: h.aio_pread(bufs[i], i << 20))
            run(lambda i: h.aio_pwrite(data, i << 25))
            assert h.pread(512, 7 << 25) == b'w' * 512
            grown = settled(before)
            assert grown < 40 << 10, f'round {round}: memory held grew by {grown} KiB'
        print('ok')
        """, timeout: 60)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        XCTAssertTrue(s.isRunning, s.stderr)
    }

    /// Giving back the room of a large request costs small requests after it nothing: traced
    /// with strace, 100 small reads after a 32 MiB write make no madvise call, and a second
    /// 32 MiB write after them makes exactly one (each made one, 0.3 ms, before). The writes
    /// have FUA, which takes them through the request buffer on the memory disk.
    func testSmallRequestsAfterALargeOneMakeNoSystemCall() throws {
        let s = try startServer(["memory", "256M"])
        let trace = dir.file("madvise.trace")
        let r = Harness.nbdsh(s.uri, """
        import subprocess, time
        data = b'x' * (32 << 20)
        h.pwrite(data, 0, nbd.CMD_FLAG_FUA)
        tracer = subprocess.Popen(['strace', '-f', '-e', 'trace=madvise', '-o', '\(trace)', '-p', '\(s.pid)'],
                                  stderr=subprocess.PIPE, text=True)
        assert 'attached' in tracer.stderr.readline()
        time.sleep(0.5)                                   # every thread attached
        for i in range(100): h.pread(512, i * 4096)
        h.pwrite(data, 1 << 25, nbd.CMD_FLAG_FUA)
        time.sleep(0.2)
        tracer.send_signal(2)
        tracer.wait(timeout=10)
        calls = [l for l in open('\(trace)') if 'madvise(' in l]
        assert len(calls) == 1, calls[:5] + [len(calls)]
        print('ok')
        """, timeout: 60)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
    }

    /// A slow request does not hold up the next one on the same connection: with flushes
    /// delayed by 2 s, a read sent 0.2 s after a flush is answered long before the flush.
    func testSlowRequestDoesNotHoldUpTheNext() throws {
        let s = try startServer(["--filter=delay", "memory", "1M", "delay-flush=2"])
        let r = Harness.nbdsh(s.uri, """
        import time
        t0 = time.monotonic()
        flush = h.aio_flush()
        time.sleep(0.2)
        buf = nbd.Buffer(512)
        read = h.aio_pread(buf, 0)
        while not h.aio_command_completed(read): h.poll(-1)
        read_done = time.monotonic() - t0
        while not h.aio_command_completed(flush): h.poll(-1)
        flush_done = time.monotonic() - t0
        print('read first' if read_done < 1.5 and flush_done >= 2.0 else 'read %.2f flush %.2f' % (read_done, flush_done))
        """, timeout: 30)
        XCTAssertEqual(r.stdout, "read first\n", r.stderr)
    }

    /// Small writes to pages of the memory disk that the server has not mapped yet (written
    /// before by a large write, which goes to the file) map their neighbours at once: 1024
    /// writes of 4 KiB to consecutive pages take far fewer page faults than one each (about 64
    /// with the kernel's 64 KiB fault-around, 1024 without it).
    func testSmallWritesMapNeighbouringPages() throws {
        let s = try startServer(["memory", "64M"])
        let r = Harness.nbdsh(s.uri, """
        import os
        def faults():
            return int(open('/proc/\(s.pid)/stat').read().rsplit(')', 1)[1].split()[7])
        data = os.urandom(4 << 20)
        h.pwrite(data, 8 << 20)
        before = faults()
        pages = [os.urandom(4096) for i in range(1024)]
        for i in range(1024): h.pwrite(pages[i], (8 << 20) + i * 4096)
        taken = faults() - before
        assert h.pread(4 << 20, 8 << 20) == b''.join(pages)
        print('ok' if taken < 512 else 'page faults: %d' % taken)
        """)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
    }

    /// The reader polls the socket for a while before it blocks; the poll must stay short, so a
    /// connection that goes quiet costs no processor time. (A poll that never gave up would
    /// take a whole processor: about 100 ticks in the idle second.)
    func testQuietConnectionStopsPolling() throws {
        let s = try startServer(["memory", "1M"])
        let r = Harness.nbdsh(s.uri, """
        import time
        def ticks():
            fields = open('/proc/\(s.pid)/stat').read().rsplit(')', 1)[1].split()
            return int(fields[11]) + int(fields[12])
        for i in range(500): h.pread(512, (i * 4096) % (1 << 20))
        before = ticks()
        time.sleep(1.0)
        print(ticks() - before)
        """, timeout: 30)
        let idleTicks = Int(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        XCTAssertNotNil(idleTicks, r.stdout + r.stderr)
        XCTAssertLessThan(idleTicks ?? 1000, 10, "server CPU ticks (1/100 s) while the client was quiet for 1 s")
    }

    /// The delay filter's values: seconds, fractions and milliseconds; anything else is an error.
    /// nbdkit's other spellings of the keys work (delay-reads, delay-discard, ...), and, as in
    /// nbdkit, the key given last wins, wdelay included.
    func testDelayFilterParameters() throws {
        let s = try startServer(["--filter=delay", "memory", "1M", "delay-reads=300ms", "wdelay=0.3", "delay-zeroes=0",
                                 "delay-discard=0.3"])
        let r = Harness.nbdsh(s.uri, """
        import time
        t0 = time.monotonic(); h.pread(512, 0); read = time.monotonic() - t0
        t0 = time.monotonic(); h.pwrite(bytes(512), 0); write = time.monotonic() - t0
        t0 = time.monotonic(); h.zero(512, 0); zero = time.monotonic() - t0
        t0 = time.monotonic(); h.trim(512, 0); trim = time.monotonic() - t0
        t0 = time.monotonic(); h.flush(); flush = time.monotonic() - t0
        # wdelay covers writes, zeroing and trims; flushes are not delayed.
        print('ok' if read >= 0.3 and write >= 0.3 and zero < 0.3 and trim >= 0.3 and flush < 0.3
              else 'read %.2f write %.2f zero %.2f trim %.2f flush %.2f' % (read, write, zero, trim, flush))
        """)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        let bad = Harness.run([Harness.nbdkit, "-U", "-", "--filter=delay", "memory", "1M", "rdelay=soon", "--run", "true"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("nbdkit: error: delay: could not parse rdelay=soon"), bad.stderr)
        // nbdkit's limit of 4294967 seconds, white space before the number; up to 2^32 - 1
        // milliseconds (nbdkit 1.32 takes more).
        for (value, valid) in [("4294967", true), ("4294968", false), ("4294967295ms", true), ("5000000ms", true),
                               (" 1", true), ("-1", false),
                               // As C's strtoul: octal after a leading 0 (2097152 s, where
                               // 10000000 s is too long), hexadecimal after 0x.
                               ("010000000", true), ("10000000", false), ("0x400000", true), ("0x500000", false),
                               // Nothing more: not octal, not an exponent, milliseconds decimal.
                               ("08", false), ("1e2", false), ("0x200ms", false), ("2.5ms", true), ("+3", true)] {
            let r = Harness.run([Harness.nbdkit, "-U", "-", "--filter=delay", "memory", "1M", "delay-close=\(value)", "--run", "true"])
            XCTAssertEqual(r.status, valid ? 0 : 1, "delay-close=\(value): \(r.stderr)")
        }
        let long = Harness.run([Harness.nbdkit, "-U", "-", "--filter=delay", "memory", "1M", "rdelay=4294968", "--run", "true"])
        XCTAssertEqual(long.stderr, "nbdkit: error: delay: rdelay=4294968 is too large (at most 4294967 seconds, or 4294967295ms)\n")
        // --help after the plugin name lists the filter's and the plugin's parameters, as nbdkit.
        let help = Harness.run([Harness.nbdkit, "--filter=delay", "memory", "--help"]).stdout
        XCTAssertTrue(help.contains("\nfilter: delay\nrdelay=<NN>[ms]"), help)
        XCTAssertTrue(help.contains("\nplugin: memory\n"), help)
    }

    /// As nbdkit: with a zero delay and delay-fast-zero=false, the delay filter offers fast
    /// zeroing even over a plugin that doesn't (file) and refuses every fast zero at once with
    /// ENOTSUP, as a server for which zeroing is slow; a plain zero is delayed and done.
    /// Without a zero delay the plugin's answer stands (and libnbd itself refuses the flag).
    /// As in nbdkit, a refused fast zero is not logged as an error.
    func testDelayFilterRefusesFastZero() throws {
        let file = dir.file("fz.img")
        XCTAssertEqual(Harness.run(["truncate", "-s", "1M", file]).status, 0)
        let probe = """
        import errno, time
        h.pwrite(b'x' * 4096, 0)
        r = 'fast=%s' % h.can_fast_zero()
        try:
            t0 = time.monotonic(); h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)
            r += ' done'
        except nbd.Error as e:
            r += ' refused' if e.errnum == errno.ENOTSUP and time.monotonic() - t0 < 0.2 else ' error %d' % e.errnum
        h.zero(4096, 0)
        print(r, h.pread(4096, 0) == bytes(4096))
        """
        for (name, args, expected) in [("slow", ["delay-zero=0.2", "delay-fast-zero=false"], "fast=True refused True\n"),
                                       ("nodelay", ["delay-fast-zero=false"], "fast=False error 22 True\n")] {
            let s = try startServer(["--filter=delay", "file", file] + args, socketName: "sock-\(name)")
            let r = Harness.nbdsh(s.uri, probe)
            XCTAssertEqual(r.stdout, expected, "\(args): \(r.stderr)")
            s.stop()
            // A fast zero refused is what the client asked about, not an error in the log.
            if name == "slow" { XCTAssertFalse(s.stderr.contains("error"), s.stderr) }
        }
    }
}
