import Foundation
import Glibc
import XCTest

/// Clients that break the NBD protocol on purpose, through a raw Unix socket. After each one the
/// same server must still be running and must serve a fresh, well-behaved client correctly.
final class HostileClientTests: IntegrationTestCase {
    // MARK: Handshake phase

    func testUnknownClientFlagsCloseConnection() throws {
        let s = try startServer(["memory", "size=1M"])
        for flags: UInt32 in [0x8000_0003, 0xDEAD_BEEF, 0x0000_0004] {
            let c = try RawClient(s.socket)
            defer { c.close() }
            XCTAssertEqual(c.readExactly(18), Wire.greeting, "greeting")
            XCTAssertTrue(c.send(Wire.u32(flags)))
            let (rest, closed) = c.readToEOF()
            XCTAssertTrue(closed, "flags 0x\(String(flags, radix: 16)): connection not closed")
            XCTAssertEqual(rest, [], "flags 0x\(String(flags, radix: 16)): unexpected reply")
        }
        assertServerHealthy(s)
    }

    func testBadOptionMagicClosesConnection() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        XCTAssertEqual(c.readExactly(18), Wire.greeting)
        XCTAssertTrue(c.send(Wire.u32(3)))
        // "IHAVEOPX" instead of "IHAVEOPT", then a plausible option number and length.
        XCTAssertTrue(c.send(Array("IHAVEOPX".utf8) + Wire.u32(7) + Wire.u32(0)))
        let (rest, closed) = c.readToEOF()
        XCTAssertTrue(closed)
        XCTAssertEqual(rest, [])
        assertServerHealthy(s)
    }

    func testUnknownOptionGetsErrUnsupAndNegotiationContinues() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.startNegotiation()
        XCTAssertTrue(c.send(Wire.option(0x1234, Array("hello".utf8))))
        let reply = try XCTUnwrap(c.readOptionReply())
        XCTAssertEqual(reply.option, 0x1234)
        XCTAssertEqual(reply.type, 0x8000_0001, "NBD_REP_ERR_UNSUP")
        // Negotiation goes on: a real option is still served...
        XCTAssertTrue(c.send(Wire.option(8, [])))  // NBD_OPT_STRUCTURED_REPLY
        let ack = try XCTUnwrap(c.readOptionReply())
        XCTAssertEqual(ack.option, 8)
        XCTAssertEqual(ack.type, 1, "NBD_REP_ACK")
        XCTAssertEqual(ack.payload, [])
        // ...and NBD_OPT_ABORT ends it with an ACK (or a bare close).
        XCTAssertTrue(c.send(Wire.option(2, [])))
        let (rest, closed) = c.readToEOF()
        XCTAssertTrue(closed)
        XCTAssertTrue(rest.isEmpty || rest == Wire.optionReply(option: 2, type: 1), "abort reply: \(rest)")
        assertServerHealthy(s)
    }

    func testOversizedOptionLengthClosesPromptly() throws {
        let s = try startServer(["memory", "size=1M"])
        do {
            // The largest payload allowed (64 KiB) is read and answered.
            let c = try RawClient(s.socket)
            defer { c.close() }
            try c.startNegotiation()
            XCTAssertTrue(c.send(Wire.option(0x1234, [UInt8](repeating: 0x5A, count: 65536))))
            let reply = try XCTUnwrap(c.readOptionReply())
            XCTAssertEqual(reply.option, 0x1234)
            XCTAssertEqual(reply.type, 0x8000_0001)
        }
        for length: UInt32 in [65537, 0xFFFF_FFFF] {
            let c = try RawClient(s.socket)
            defer { c.close() }
            try c.startNegotiation()
            XCTAssertTrue(c.send(Wire.ihaveopt + Wire.u32(0x1234) + Wire.u32(length)))
            let start = Date()
            let (rest, closed) = c.readToEOF()
            let elapsed = Date().timeIntervalSince(start)
            XCTAssertTrue(closed, "length \(length): connection not closed")
            XCTAssertEqual(rest, [], "length \(length)")
            XCTAssertLessThan(elapsed, 2, "length \(length): server waited for the payload")
        }
        assertServerHealthy(s)
    }

    func testMalformedGoPayloadGetsErrInvalid() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.startNegotiation()
        let malformed: [[UInt8]] = [
            Wire.u32(100) + Array("abc".utf8),               // name longer than the payload
            Wire.u32(0xFFFF_FFFF) + Wire.u16(0),              // absurd name length
            Wire.u32(0) + Wire.u16(3) + Wire.u16(1),          // 3 info requests, only 1 present
            Wire.u32(0) + Wire.u16(0) + [0xEE],               // trailing byte
            [0, 0],                                           // shorter than the name length field
            Wire.u32(3) + [0x61, 0, 0x62] + Wire.u16(0),      // a NUL in the name (as nbdkit refuses)
        ]
        for (i, payload) in malformed.enumerated() {
            XCTAssertTrue(c.send(Wire.option(7, payload)))
            let reply = try XCTUnwrap(c.readOptionReply(), "case \(i)")
            XCTAssertEqual(reply.option, 7, "case \(i)")
            XCTAssertEqual(reply.type, 0x8000_0003, "case \(i): expected NBD_REP_ERR_INVALID")
        }
        // The connection is still negotiating: a correct NBD_OPT_GO now succeeds.
        XCTAssertTrue(c.send(Wire.option(7, Wire.u32(0) + Wire.u16(0))))
        let info = try XCTUnwrap(c.readOptionReply())
        XCTAssertEqual(info.type, 3, "NBD_REP_INFO")
        XCTAssertEqual(info.payload.count, 12)
        XCTAssertEqual(Wire.be16(info.payload, 0), 0, "NBD_INFO_EXPORT")
        XCTAssertEqual(Wire.be64(info.payload, 2), 1 << 20)
        let ack = try XCTUnwrap(c.readOptionReply())
        XCTAssertEqual(ack.option, 7)
        XCTAssertEqual(ack.type, 1)
        try c.expectRead512Works(cookie: 5)
        assertServerHealthy(s)
    }

    /// NBD_OPT_LIST_META_CONTEXT answers with context ID 0, which proto.md reserves for listings
    /// (as nbdkit); NBD_OPT_SET_META_CONTEXT with the ID block status will carry.
    func testListedMetaContextHasIDZero() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.startNegotiationWithStructuredReplies()
        let query = Array("base:allocation".utf8)
        for option: UInt32 in [9, 10] {
            XCTAssertTrue(c.send(Wire.option(option, Wire.u32(0) + Wire.u32(1) + Wire.u32(UInt32(query.count)) + query)))
            let context = try XCTUnwrap(c.readOptionReply())
            XCTAssertEqual(context.type, 4, "NBD_REP_META_CONTEXT")
            XCTAssertEqual(Array(context.payload.dropFirst(4)), query)
            let id = Wire.be32(context.payload, 0)
            if option == 9 { XCTAssertEqual(id, 0, "a listing's context ID") } else { XCTAssertNotEqual(id, 0) }
            XCTAssertEqual(try XCTUnwrap(c.readOptionReply()).type, 1)
        }
        assertServerHealthy(s)
    }

    /// NBD_OPT_INFO's information requests are answered in the client's order, after
    /// NBD_INFO_EXPORT, each kind once (nbdkit repeats duplicates); unknown ones not at all. The
    /// same every run.
    func testInfoRequestsAreAnsweredInOrder() throws {
        let s = try startServer(["memory", "size=1M"])
        for _ in 0..<3 {
            let c = try RawClient(s.socket)
            defer { c.close() }
            try c.startNegotiation()
            let requests: [UInt16] = [3, 1, 99, 2, 1, 3]
            XCTAssertTrue(c.send(Wire.option(6, Wire.u32(0) + Wire.u16(UInt16(requests.count)) + requests.flatMap(Wire.u16))))
            var types: [UInt16] = []
            while let r = c.readOptionReply(), r.type == 3 {
                types.append(UInt16(r.payload[0]) << 8 | UInt16(r.payload[1]))
            }
            // (NBD_INFO_DESCRIPTION, 2, is not sent: no backend has one.)
            XCTAssertEqual(types, [0, 3, 1])
        }
        assertServerHealthy(s)
    }

    /// A meta context set for the export still applies when the handshake ends with
    /// NBD_OPT_EXPORT_NAME (proto.md allows either way): BLOCK_STATUS answers with it.
    func testMetaContextSurvivesExportName() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.startNegotiationWithStructuredReplies()
        let query = Array("base:allocation".utf8)
        XCTAssertTrue(c.send(Wire.option(10, Wire.u32(0) + Wire.u32(1) + Wire.u32(UInt32(query.count)) + query)))
        let context = try XCTUnwrap(c.readOptionReply())
        XCTAssertEqual(context.type, 4, "NBD_REP_META_CONTEXT")
        let id = Wire.be32(context.payload, 0)
        XCTAssertEqual(try XCTUnwrap(c.readOptionReply()).type, 1)
        XCTAssertTrue(c.send(Wire.option(1, [])))
        XCTAssertNotNil(c.readExactly(10), "export reply")
        XCTAssertTrue(c.send(Wire.request(command: 7, cookie: 5, offset: 0, length: 4096)))
        // A structured NBD_REPLY_TYPE_BLOCK_STATUS chunk (type 5) with the context's ID.
        let header = try XCTUnwrap(c.readExactly(20))
        XCTAssertEqual(Wire.be32(header, 0), 0x668e33ef, "structured reply magic")
        XCTAssertEqual(UInt16(header[6]) << 8 | UInt16(header[7]), 5, "chunk type")
        let chunk = try XCTUnwrap(c.readExactly(Int(Wire.be32(header, 16))))
        XCTAssertEqual(Wire.be32(chunk, 0), id)
        assertServerHealthy(s)
    }

    /// As nbdkit: NBD_OPT_EXPORT_NAME with a name over 4096 bytes ends the connection (4096 is
    /// served); NBD_OPT_STRUCTURED_REPLY with a payload is invalid even under --no-sr.
    func testExportNameLimitAndStructuredReplyPayload() throws {
        let s = try startServer(["memory", "size=1M"])
        for (length, served) in [(4096, true), (4097, false)] {
            let c = try RawClient(s.socket)
            defer { c.close() }
            try c.startNegotiation()
            XCTAssertTrue(c.send(Wire.option(1, [UInt8](repeating: 0x61, count: length))))
            if served {
                XCTAssertEqual(c.readExactly(10).map { Wire.be64($0, 0) }, 1 << 20, "export size")
            } else {
                XCTAssertTrue(c.readToEOF().closed)
            }
        }
        XCTAssertTrue(s.stderr.contains("export name too long"), s.stderr)
        let n = try startServer(["--no-sr", "memory", "size=1M"], socketName: "nosr")
        let c = try RawClient(n.socket)
        defer { c.close() }
        try c.startNegotiation()
        XCTAssertTrue(c.send(Wire.option(8, [0])))
        XCTAssertEqual(c.readOptionReply()?.type, 0x8000_0003, "NBD_REP_ERR_INVALID")
        XCTAssertTrue(c.send(Wire.option(8, [])))
        XCTAssertEqual(c.readOptionReply()?.type, 0x8000_0001, "NBD_REP_ERR_UNSUP")
    }

    /// The delay filter's sleeps end when the server begins to shut down (they may last days):
    /// a read being delayed gets ESHUTDOWN, the delayed close is cut short, and the server exits
    /// once the client has gone.
    func testDelaysEndAtShutdown() throws {
        let s = try startServer(["--filter=delay", "memory", "size=1M", "rdelay=1000", "delay-close=1000"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 0x77, offset: 0, length: 512)))
        usleep(300_000)
        let start = Date()
        kill(s.pid, SIGTERM)
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 108, cookie: 0x77), "ESHUTDOWN")
        XCTAssertLessThan(Date().timeIntervalSince(start), 2)
        try c.disconnect()
        let deadline = Date().addingTimeInterval(5)
        while s.isRunning && Date() < deadline { usleep(10_000) }
        XCTAssertFalse(s.isRunning, "the server still waits for the delayed close")
        XCTAssertEqual(s.stop(), 0)
    }

    /// A delayed request ends early when its client hangs up, as in nbdkit, so that a server
    /// that exits with its last client (exitlast) does not wait out a 20 s delay.
    func testDelaysEndWhenTheClientHangsUp() throws {
        let s = try startServer(["--filter=exitlast", "--filter=delay", "memory", "size=1M", "rdelay=20"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 0x79, offset: 0, length: 512)))
        usleep(300_000)
        XCTAssertTrue(s.isRunning, "exited while its client was connected")
        c.close()
        let deadline = Date().addingTimeInterval(5)
        while s.isRunning && Date() < deadline { usleep(10_000) }
        XCTAssertFalse(s.isRunning, "the server still waits out the delay of a client that has gone")
        XCTAssertEqual(s.stop(), 0)
    }

    func testTooManyOptionsEndConnection() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.startNegotiation()
        var answered = 0
        var closed = false
        let start = Date()
        for i in 0..<2000 {
            guard c.send(Wire.option(0x1234 + UInt32(i), [])) else { closed = true; break }
            guard let reply = c.readOptionReply() else { closed = c.lastEnd == .eof || c.lastEnd == .reset; break }
            XCTAssertEqual(reply.option, 0x1234 + UInt32(i))
            XCTAssertEqual(reply.type, 0x8000_0001)
            answered += 1
        }
        if !closed { closed = c.readToEOF().closed }
        XCTAssertTrue(closed, "the server kept negotiating forever")
        XCTAssertGreaterThan(answered, 0)
        XCTAssertEqual(answered, 1024, "the server's documented cap is 1024 options per connection")
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        assertServerHealthy(s)
    }

    func testTruncatedHandshakes() throws {
        let s = try startServer(["memory", "size=1M"])
        do {  // Close without reading anything.
            let c = try RawClient(s.socket)
            c.close()
        }
        do {  // Read the greeting, then vanish.
            let c = try RawClient(s.socket)
            XCTAssertEqual(c.readExactly(18), Wire.greeting)
            c.close()
        }
        do {  // Half the client flags.
            let c = try RawClient(s.socket)
            XCTAssertEqual(c.readExactly(18), Wire.greeting)
            XCTAssertTrue(c.send([0, 0]))
            c.close()
        }
        do {  // Half an option header.
            let c = try RawClient(s.socket)
            try c.startNegotiation()
            XCTAssertTrue(c.send(Array(Wire.ihaveopt.prefix(8))))
            c.close()
        }
        do {  // An option whose payload never fully arrives.
            let c = try RawClient(s.socket)
            try c.startNegotiation()
            XCTAssertTrue(c.send(Wire.ihaveopt + Wire.u32(7) + Wire.u32(100) + [0, 0, 0]))
            c.close()
        }
        assertServerHealthy(s)
    }

    // MARK: Transmission phase

    func testBadRequestMagicClosesConnection() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        var bad = Wire.request(command: 0, cookie: 1, offset: 0, length: 512)
        bad[3] ^= 0xFF
        XCTAssertTrue(c.send(bad))
        let (rest, closed) = c.readToEOF()
        XCTAssertTrue(closed)
        XCTAssertEqual(rest, [])
        assertServerHealthy(s)
    }

    func testUnknownCommandGetsEINVAL() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        XCTAssertTrue(c.send(Wire.request(command: 99, cookie: 0x1122_3344_5566_7788, offset: 0, length: 512)))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 22, cookie: 0x1122_3344_5566_7788))
        try c.expectRead512Works(cookie: 0x99)
        try c.disconnect()
        assertServerHealthy(s)
    }

    func testUnknownCommandFlagGetsEINVAL() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        XCTAssertTrue(c.send(Wire.request(flags: 0x8000, command: 0, cookie: 0xABCD, offset: 0, length: 512)))
        // Exactly a 16-byte error reply: no 512 bytes of data may follow it.
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 22, cookie: 0xABCD))
        try c.expectRead512Works(cookie: 0xABCE)
        try c.disconnect()
        assertServerHealthy(s)
    }

    /// A zero-length write as a connection's first write, pipelined in one packet with a read:
    /// both are answered in order and the stream stays in step (the read-ahead must not be lost).
    func testZeroLengthWritePipelinedWithRead() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        XCTAssertTrue(c.send(Wire.request(command: 1, cookie: 0x51, offset: 0, length: 0)
                             + Wire.request(command: 0, cookie: 0x52, offset: 0, length: 512)))
        guard let first = c.readExactly(16) else { return XCTFail("no reply to the zero-length write") }
        XCTAssertEqual(Array(first[0..<4]), [0x67, 0x44, 0x66, 0x98])
        XCTAssertEqual(Wire.be64(first, 8), 0x51)
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 0, cookie: 0x52))
        XCTAssertEqual(c.readExactly(512), [UInt8](repeating: 0, count: 512))
        try c.expectRead512Works(cookie: 0x53)
        try c.disconnect()
        assertServerHealthy(s)
    }

    /// A client still negotiating when shutdown begins gets NBD_REP_ERR_SHUTDOWN for its next
    /// option and the connection ends; the server then exits 0 without waiting out the grace.
    func testNegotiatingClientGetsErrShutdown() throws {
        let s = try startServer(["-v", "memory", "1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.startNegotiation()
        let start = Date()
        kill(s.pid, SIGTERM)
        while !s.stderr.contains("shutting down") && Date().timeIntervalSince(start) < 10 { usleep(10_000) }
        usleep(200_000)
        XCTAssertTrue(c.send(Wire.option(3, [])))                 // NBD_OPT_LIST
        let reply = c.readOptionReply()
        XCTAssertEqual(reply?.option, 3)
        XCTAssertEqual(reply?.type, 0x8000_0007, "expected NBD_REP_ERR_SHUTDOWN")
        XCTAssertTrue(c.readToEOF().closed)
        let deadline = Date().addingTimeInterval(3)
        while s.isRunning && Date() < deadline { usleep(10_000) }
        XCTAssertFalse(s.isRunning, "the server waited out the grace")
        XCTAssertEqual(s.stop(), 0)
    }

    /// A client that stops reading its replies holds a worker in `send` forever; at shutdown the
    /// server waits out the grace, stops reading, and at twice the grace disconnects it hard,
    /// then exits cleanly. A second client, stalled in the middle of a write's payload, is cut
    /// off at the grace, and the log says the server ended it, not that the client went away.
    /// (This test takes about ten seconds.)
    func testClientThatStopsReadingIsDisconnectedAtShutdown() throws {
        let s = try startServer(["memory", "1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        let writer = try RawClient(s.socket)
        defer { writer.close() }
        try writer.exportNameHandshake()
        XCTAssertTrue(writer.send(Wire.request(command: 1, cookie: 99, offset: 0, length: 4096) + [UInt8](repeating: 1, count: 100)))
        // 32 MiB of replies that the client never reads: far more than the sockets buffer.
        for cookie in 1...32 {
            XCTAssertTrue(c.send(Wire.request(command: 0, cookie: UInt64(cookie), offset: 0, length: 1 << 20)))
        }
        usleep(300_000)
        let start = Date()
        kill(s.pid, SIGTERM)
        let hardDisconnectSeconds = 10.0    // twice Server.shutdownGraceMilliseconds
        while s.isRunning && Date().timeIntervalSince(start) < hardDisconnectSeconds + 10 { usleep(20_000) }
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertFalse(s.isRunning, "the server is still running \(elapsed) s after SIGTERM")
        XCTAssertGreaterThan(elapsed, hardDisconnectSeconds - 0.5, "the client was cut off before twice the grace")
        XCTAssertEqual(s.stop(), 0)
        XCTAssertTrue(s.stderr.contains("a write's payload had not all arrived when the connection ended during shutdown"), s.stderr)
        XCTAssertFalse(s.stderr.contains("client went away"), s.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.socket), "the socket is removed")
    }

    /// When the memory for a request's data can't be had (here an address-space limit set on
    /// the running server with prlimit), that request alone fails with ENOMEM (a write's payload
    /// is read and dropped) and the server goes on serving: 12 pipelined reads and then writes
    /// of 64 MiB, through a filter so that each worker needs a buffer of its own.
    func testRequestsWithoutMemoryGetENOMEM() throws {
        let s = try startServer(["--filter=noextents", "memory", "1G"])
        let status = (try? String(contentsOfFile: "/proc/\(s.pid)/status", encoding: .utf8)) ?? ""
        let vmSize = status.split(separator: "\n").first { $0.hasPrefix("VmSize:") }
            .flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
        XCTAssertGreaterThan(vmSize, 0, status)
        // Room for one 64 MiB buffer, not two: of the two requests in flight at a time (see
        // testClientThatTakesNoRepliesHoldsBoundedMemory), one gets ENOMEM.
        let limit = (vmSize + 100 * 1024) * 1024
        let prlimit = Harness.run(["prlimit", "--pid", "\(s.pid)", "--as=\(limit)"])
        XCTAssertEqual(prlimit.status, 0, prlimit.stderr)
        let r = Harness.nbdsh(s.uri, """
        import errno
        def run(start):
            cookies = [start(i) for i in range(12)]
            done = {}
            while len(done) < len(cookies):
                h.poll(-1)
                for c in cookies:
                    if c in done: continue
                    try:
                        if h.aio_command_completed(c): done[c] = 0
                    except nbd.Error as e:
                        done[c] = e.errnum
            return sorted(done.values())
        bufs = [nbd.Buffer(64 << 20) for i in range(12)]
        reads = run(lambda i: h.aio_pread(bufs[i], 0))
        data = nbd.Buffer.from_bytearray(bytearray(b'w' * (64 << 20)))
        writes = run(lambda i: h.aio_pwrite(data, 64 << 20))
        assert set(reads) <= {0, errno.ENOMEM} and set(writes) <= {0, errno.ENOMEM}, (reads, writes)
        assert errno.ENOMEM in reads and errno.ENOMEM in writes, (reads, writes)
        h.pwrite(b'x' * 512, 0)
        assert h.pread(512, 0) == b'x' * 512
        print('ok')
        """, timeout: 120)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        XCTAssertTrue(s.isRunning, s.stderr)
        XCTAssertFalse(s.stderr.contains("Fatal error"), s.stderr)
    }

    /// A client that sends sixteen 64 MiB reads and takes none of the replies holds at most two
    /// requests' data of the server's memory (each worker would otherwise fill a buffer of its
    /// own: 1 GiB); the server goes on serving another client meanwhile, and once the client
    /// reads, every reply arrives whole.
    func testClientThatTakesNoRepliesHoldsBoundedMemory() throws {
        let s = try startServer(["pattern", "1G"])
        let before = try XCTUnwrap(residentKiB(s.pid))
        let c = try RawClient(s.socket, timeout: 20)
        defer { c.close() }
        try c.exportNameHandshake(size: 1 << 30)
        for i in 0..<16 {
            XCTAssertTrue(c.send(Wire.request(command: 0, cookie: UInt64(100 + i), offset: UInt64(i) << 26, length: 1 << 26)))
        }
        // The server fills buffers for as many requests as it takes (a 64 MiB pattern in tens of
        // milliseconds each); the largest resident size over two seconds is what they held.
        var peak = 0
        for _ in 0..<40 {
            peak = max(peak, residentKiB(s.pid) ?? 0)
            usleep(50_000)
        }
        XCTAssertLessThan(peak - before, 200 * 1024, "KiB held for a client that takes no replies (two requests: 131,072)")
        let info = Harness.run(["nbdinfo", "--size", s.uri], timeout: 20)
        XCTAssertEqual(info.stdout, "1073741824\n", "another client is served meanwhile: \(info.stderr)")
        var cookies: [UInt64] = []
        for _ in 0..<16 {
            let header = try XCTUnwrap(c.readExactly(16), "reply header (\(c.lastEnd))")
            XCTAssertEqual(Wire.be32(header, 4), 0, "error")
            let cookie = Wire.be64(header, 8)
            cookies.append(cookie)
            let data = try XCTUnwrap(c.readExactly(1 << 26), "reply data (\(c.lastEnd))")
            // The pattern plugin's bytes: each 8-byte word holds its own offset.
            let offset = (cookie - 100) << 26
            XCTAssertEqual(Wire.be64(data, 0), offset)
            XCTAssertEqual(Wire.be64(data, (1 << 26) - 8), offset + (1 << 26) - 8)
        }
        XCTAssertEqual(cookies.sorted(), (0..<16).map { UInt64(100 + $0) })
        try c.expectRead512Works(cookie: 7)
        XCTAssertTrue(s.isRunning, s.stderr)
        XCTAssertFalse(s.stderr.contains("error"), s.stderr)
    }

    /// Clients that announce a 64 KiB option and send none of it hold little memory each (the
    /// payload's room grows as it arrives; all 64 KiB was taken and zeroed at once, 81 KiB
    /// per client in all where nbdkit takes 13), and a good client is served meanwhile.
    func testStalledOptionPayloadsHoldLittleMemory() throws {
        let s = try startServer(["memory", "size=1M"])
        let count = 200
        var clients: [RawClient] = []
        defer { for c in clients { c.close() } }
        let before = try XCTUnwrap(residentKiB(s.pid))
        for _ in 0..<count {
            let c = try RawClient(s.socket)
            clients.append(c)
            try c.startNegotiation()
            // NBD_OPT_INFO with a 64 KiB payload announced, none of it sent.
            XCTAssertTrue(c.send(Array("IHAVEOPT".utf8) + Wire.u32(6) + Wire.u32(65536)))
        }
        let info = Harness.run(["nbdinfo", "--size", s.uri], timeout: 20)
        XCTAssertEqual(info.stdout, "1048576\n", info.stderr)
        // The largest resident size over a second, by when every connection's thread has
        // read its option's header and waits for the payload.
        var peak = 0
        for _ in 0..<10 {
            peak = max(peak, residentKiB(s.pid) ?? 0)
            usleep(100_000)
        }
        XCTAssertLessThan((peak - before) / count, 48, "KiB resident per stalled client")
        for c in clients { c.close() }
        clients = []
        assertServerHealthy(s)
    }

    /// The resident size of a process (or with "VmHWM", its largest so far), from
    /// /proc/PID/status; nil if unreadable.
    private func residentKiB(_ pid: pid_t, field: String = "VmRSS") -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        return status.split(separator: "\n").first { $0.hasPrefix(field + ":") }
            .flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") }
    }

    /// A client that hangs up while a large read is sent from the disk's file (sendfile) ends
    /// that reply there: the rest is neither read from the disk into memory nor sent. (Before,
    /// the failed send was taken for a file that had shrunk: the rest, 32 MiB less what the
    /// socket took, was read into a new buffer for the dead socket, for each such client.)
    func testClientGoneDuringAReadFromTheFileEndsTheReply() throws {
        let image = dir.file("disk.img")
        XCTAssertTrue(FileManager.default.createFile(atPath: image, contents: nil))
        XCTAssertEqual(truncate(image, 64 << 20), 0)
        for plugin in [["memory", "64M"], ["file", image]] {
            let s = try startServer(plugin, socketName: plugin[0])
            let before = try XCTUnwrap(residentKiB(s.pid, field: "VmHWM"))
            for i in 0..<4 {
                let c = try RawClient(s.socket)
                try c.exportNameHandshake(size: 64 << 20)
                XCTAssertTrue(c.send(Wire.request(command: 0, cookie: UInt64(i), offset: 0, length: 32 << 20)))
                // Long enough for the server to fill the socket and wait in sendfile.
                usleep(300_000)
                c.close()
            }
            assertServerHealthy(s)
            let after = try XCTUnwrap(residentKiB(s.pid, field: "VmHWM"))
            XCTAssertLessThan(after - before, 16 * 1024, "\(plugin[0]): KiB of peak memory for four clients gone mid-read")
        }
    }

    func testOversizedWriteClosesConnection() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        let start = Date()
        XCTAssertTrue(c.send(Wire.request(command: 1, cookie: 7, offset: 0, length: 0x7FFF_FFFF)))
        XCTAssertTrue(c.send([UInt8](repeating: 0x77, count: 4096)))
        let (rest, closed) = c.readToEOF()
        XCTAssertTrue(closed)
        XCTAssertEqual(rest, [])
        XCTAssertLessThan(Date().timeIntervalSince(start), 2)
        let r = Harness.nbdsh(s.uri, "assert h.pread(4096, 0) == bytes(4096); print('ok')")
        XCTAssertEqual(r.stdout, "ok\n", "the oversized write's data must not reach the disk")
        assertServerHealthy(s)
    }

    /// A client gone in the middle of a write's payload of less than 64 KiB leaves the disk as it
    /// was, on the memory plugin and on the file plugin with a file in memory: such payloads are
    /// stored once whole. (Larger ones go into the file as they arrive, so that the client's
    /// socket is drained all the while: see FileConnection.receiveWrite.)
    func testClientVanishesMidWrite() throws {
        let file = "/dev/shm/nbdkit-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).img"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data(count: 1 << 20)))
        defer { try? FileManager.default.removeItem(atPath: file) }
        for plugin in [["memory", "size=1M"], ["file", file]] {
            let s = try startServer(plugin, socketName: plugin[0])
            for (length, sent) in [(4096, 100), (16384, 16383), (65535, 40_000)] {
                let gone = s.stderr.components(separatedBy: "client went away in the middle of a write payload").count
                do {
                    let c = try RawClient(s.socket)
                    defer { c.close() }
                    try c.exportNameHandshake()
                    XCTAssertTrue(c.send(Wire.request(command: 1, cookie: 8, offset: 0, length: UInt32(length))
                                         + [UInt8](repeating: 0xAB, count: sent)))
                }
                // Give the server time to see the end of file before checking nothing was written.
                let deadline = Date().addingTimeInterval(5)
                while s.stderr.components(separatedBy: "client went away in the middle of a write payload").count == gone
                        && Date() < deadline { usleep(20_000) }
                XCTAssertGreaterThan(s.stderr.components(separatedBy: "client went away in the middle of a write payload").count,
                                     gone, s.stderr)
                let r = Harness.nbdsh(s.uri, "assert h.pread(\(length), 0) == bytes(\(length)); print('ok')")
                XCTAssertEqual(r.stdout, "ok\n", "\(plugin[0]): \(sent) of \(length) bytes: a half-received write must not be applied")
            }
            assertServerHealthy(s)
        }
    }

    /// A large write whose payload comes in many tiny pieces (each a buffer of its own in the
    /// socket, and a slot of its own in the pipe it is spliced through) is stored whole by the
    /// memory plugin and dropped whole by the null plugin, in step with the next request; one
    /// that stops in the middle as its client goes is logged and leaves the server serving.
    func testLargeWriteSentInTinyPiecesLandsWhole() throws {
        for plugin in ["memory", "null"] {
            let s = try startServer([plugin, "size=1M"], socketName: plugin)
            let data = (0..<(128 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
            let message = Wire.request(command: 1, cookie: 12, offset: 4096, length: UInt32(data.count)) + data
            do {
                let c = try RawClient(s.socket)
                defer { c.close() }
                try c.exportNameHandshake()
                for start in stride(from: 0, to: message.count, by: 7) {
                    XCTAssertTrue(c.send(Array(message[start..<min(start + 7, message.count)])))
                }
                XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 0, cookie: 12), plugin)
                XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 13, offset: 4096, length: UInt32(data.count))))
                XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 0, cookie: 13), plugin)
                XCTAssertEqual(c.readExactly(data.count), plugin == "null" ? [UInt8](repeating: 0, count: data.count) : data, plugin)
                // Half of the next large payload, in pieces, then the client goes.
                for start in stride(from: 0, to: message.count / 2, by: 4093) {
                    XCTAssertTrue(c.send(Array(message[start..<min(start + 4093, message.count / 2)])))
                }
            }
            let deadline = Date().addingTimeInterval(5)
            while !s.stderr.contains("client went away in the middle of a write payload") && Date() < deadline { usleep(20_000) }
            XCTAssertTrue(s.stderr.contains("client went away in the middle of a write payload"), "\(plugin): \(s.stderr)")
            assertServerHealthy(s, reads: plugin == "null" ? "bytes(512)" : "b'x'*512")
        }
    }

    /// A write of 64 KiB or more goes straight into the memory plugin's file as it arrives, and
    /// holds no lock while it waits for more: with a client stalled in the middle of such a
    /// payload, another client still trims part of the range being written and writes elsewhere.
    /// Once the payload is complete the write succeeds; what arrived after the trim is stored,
    /// what arrived before it is stored or trimmed (the two requests overlap, so either is
    /// allowed). A client stalled mid-payload does not keep the server from stopping on SIGTERM.
    func testStalledLargeWriteHoldsNoLock() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        let data = (0..<(768 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        XCTAssertTrue(c.send(Wire.request(command: 1, cookie: 9, offset: 0, length: UInt32(data.count)) + data[0..<100_000]))
        usleep(200_000)
        let other = Harness.nbdsh(s.uri, """
        h.trim(256 << 10, 0)
        h.pwrite(b'y' * 100000, 900 << 10)
        assert h.pread(100000, 900 << 10) == b'y' * 100000
        print('ok')
        """, timeout: 10)
        XCTAssertEqual(other.stdout, "ok\n", "another client was held up by the stalled write: \(other.stderr)")
        XCTAssertTrue(c.send(Array(data[100_000...])))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 0, cookie: 9))
        XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 10, offset: 0, length: 768 << 10)))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 0, cookie: 10))
        let back = try XCTUnwrap(c.readExactly(768 << 10))
        XCTAssertTrue(zip(back[0..<100_000], data[0..<100_000]).allSatisfy { $0 == 0 || $0 == $1 },
                      "bytes that arrived before the trim are stored or trimmed")
        XCTAssertEqual(Array(back[100_000...]), Array(data[100_000...]), "bytes that arrived after the trim are stored")

        let stalled = try RawClient(s.socket)
        defer { stalled.close() }
        try stalled.exportNameHandshake()
        XCTAssertTrue(stalled.send(Wire.request(command: 1, cookie: 11, offset: 0, length: 1 << 19) + [UInt8](repeating: 1, count: 1000)))
        usleep(100_000)
        let start = Date()
        XCTAssertEqual(s.stop(), 0)
        XCTAssertLessThan(Date().timeIntervalSince(start), 8, "SIGTERM waited for the stalled payload")
    }

    /// A large write whose payload was being received in place when SIGTERM arrived is stored,
    /// and its reply says so (not ESHUTDOWN); the request after it gets ESHUTDOWN.
    func testWriteReceivedInPlaceAcrossSigtermReportsItsOutcome() throws {
        let s = try startServer(["-v", "memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        let data = [UInt8](repeating: 7, count: 1 << 19)
        XCTAssertTrue(c.send(Wire.request(command: 1, cookie: 31, offset: 0, length: UInt32(data.count)) + data[0..<1000]))
        usleep(100_000)
        kill(s.pid, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while !s.stderr.contains("shutting down") && Date() < deadline { usleep(20_000) }
        XCTAssertTrue(c.send(Array(data[1000...])))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 0, cookie: 31))
        XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 32, offset: 0, length: 512)))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 108, cookie: 32))
    }

    /// A read of more than 64 MiB on a disk that holds it gets EINVAL (simple replies); one of
    /// 64 MiB is served, and the connection goes on. (libnbd refuses to send the larger one.)
    func testReadLargerThan64MiBGetsEINVAL() throws {
        let s = try startServer(["memory", "size=256M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake(size: 256 << 20)
        XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 41, offset: 0, length: (64 << 20) + 1)))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 22, cookie: 41))
        XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 42, offset: 0, length: 64 << 20)))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 0, cookie: 42))
        XCTAssertEqual(c.readExactly(64 << 20)?.count, 64 << 20)
        try c.expectRead512Works(cookie: 43)
        assertServerHealthy(s)
    }

    /// A request wrong in several ways gets the error nbdkit 1.32 gives it, checked in nbdkit's
    /// order: a change to a read-only export EPERM; then the range (a write or zeroing past the
    /// end or of no bytes ENOSPC, a trim EINVAL); then the flags; then the size, where the
    /// error differs on purpose: EINVAL here (EOVERFLOW with structured replies, the hint
    /// proto.md describes), where nbdkit 1.32 says ENOMEM. A refused write's payload is read
    /// and dropped, up to 128 MiB, and the connection goes on.
    func testRefusedRequestsGetNbdkitsErrors() throws {
        let size: UInt64 = 256 << 20
        let s = try startServer(["memory", "size=256M"])
        let c = try RawClient(s.socket, timeout: 20)
        defer { c.close() }
        try c.exportNameHandshake(size: size)
        func expect(_ request: [UInt8], payload: Int = 0, error: UInt32, cookie: UInt64, line: UInt = #line) {
            XCTAssertTrue(c.send(request + [UInt8](repeating: 0x77, count: payload)), line: line)
            XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: error, cookie: cookie), line: line)
        }
        expect(Wire.request(command: 1, cookie: 1, offset: 0, length: 0), error: 28, cookie: 1)
        expect(Wire.request(command: 6, cookie: 2, offset: 0, length: 0), error: 28, cookie: 2)
        expect(Wire.request(command: 4, cookie: 3, offset: size - 512, length: 1024), error: 22, cookie: 3)
        expect(Wire.request(flags: 0x8000, command: 1, cookie: 4, offset: size, length: 512), payload: 512, error: 28, cookie: 4)
        expect(Wire.request(flags: 0x8000, command: 1, cookie: 5, offset: 0, length: 512), payload: 512, error: 22, cookie: 5)
        expect(Wire.request(command: 1, cookie: 6, offset: 0, length: (64 << 20) + 1), payload: (64 << 20) + 1, error: 22, cookie: 6)
        expect(Wire.request(command: 1, cookie: 7, offset: 0, length: 128 << 20), payload: 128 << 20, error: 22, cookie: 7)
        try c.expectRead512Works(cookie: 8)
        let r = Harness.nbdsh(s.uri, "assert h.pread(512, 0) == bytes(512); print('ok')")
        XCTAssertEqual(r.stdout, "ok\n", "a refused write's data must not reach the disk")

        let ro = try startServer(["-r", "memory", "size=1M"], socketName: "ro")
        let d = try RawClient(ro.socket)
        defer { d.close() }
        try d.exportNameHandshake()
        for (flags, command, offset, payload): (UInt16, UInt16, UInt64, Int) in [(1, 1, 0, 512), (0x8000, 1, 1 << 20, 512), (16, 6, 0, 0), (0, 4, 0, 0)] {
            XCTAssertTrue(d.send(Wire.request(flags: flags, command: command, cookie: 9, offset: offset, length: 512)
                                 + [UInt8](repeating: 0x77, count: payload)))
            XCTAssertEqual(d.readExactly(16), Wire.simpleReply(error: 1, cookie: 9), "flags \(flags) command \(command)")
        }
        try d.expectRead512Works(cookie: 10)
        assertServerHealthy(s)
        XCTAssertTrue(ro.isRunning, ro.stderr)
    }

    /// With structured replies, errors are answered as nbdkit answers them: a structured error
    /// chunk with no message for a read (the reason, which may name the server's files, stays in
    /// the server's log), a simple reply for every other command.
    func testErrorRepliesWithStructuredReplies() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.startNegotiation()
        XCTAssertTrue(c.send(Wire.option(8, [])))
        let ack = c.readOptionReply()
        XCTAssertEqual(ack?.option, 8)
        XCTAssertEqual(ack?.type, 1)
        XCTAssertTrue(c.send(Wire.option(1, [])))
        XCTAssertEqual(c.readExactly(10).map { Wire.be64($0, 0) }, 1 << 20)
        XCTAssertTrue(c.send(Wire.request(command: 1, cookie: 1, offset: 1 << 20, length: 512) + [UInt8](repeating: 1, count: 512)))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 28, cookie: 1))
        XCTAssertTrue(c.send(Wire.request(command: 4, cookie: 2, offset: 1 << 20, length: 512)))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 22, cookie: 2))
        XCTAssertTrue(c.send(Wire.request(command: 3, cookie: 3, offset: 1, length: 0)))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 22, cookie: 3))
        XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 4, offset: 1 << 20, length: 512)))
        let chunk = Wire.u32(0x668E_33EF) + Wire.u16(1) + Wire.u16(0x8001) + Wire.u64(4) + Wire.u32(6) + Wire.u32(22) + Wire.u16(0)
        XCTAssertEqual(c.readExactly(26), chunk)
        try c.disconnect()
        XCTAssertTrue(s.stderr.contains("NBD_CMD_READ offset=1048576 count=512: EINVAL"), s.stderr)
    }

    func testReadOutOfRangeGetsEINVAL() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 21, offset: (1 << 20) - 256, length: 512)))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 22, cookie: 21))
        XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 22, offset: 0, length: 0x7FFF_FFFF)))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 22, cookie: 22))
        XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 23, offset: UInt64.max - 100, length: 512)))
        XCTAssertEqual(c.readExactly(16), Wire.simpleReply(error: 22, cookie: 23))
        // No stray data followed the errors: the next reply is exactly the next request's.
        try c.expectRead512Works(cookie: 24)
        try c.disconnect()
        assertServerHealthy(s)
    }

    func testTruncatedRequestHeader() throws {
        let s = try startServer(["memory", "size=1M"])
        do {
            let c = try RawClient(s.socket)
            defer { c.close() }
            try c.exportNameHandshake()
            XCTAssertTrue(c.send(Array(Wire.request(command: 0, cookie: 1, offset: 0, length: 512).prefix(10))))
        }
        assertServerHealthy(s)
    }

    // MARK: Pipelining

    /// Many requests sent in one go, mixed with an invalid one: every request gets exactly one
    /// reply (in any order), each read returns what was written, and the stream stays in step.
    func testPipelinedRequestsAreAllAnswered() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        let n = 64
        func block(_ i: Int) -> [UInt8] { (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) } }
        var batch: [UInt8] = []
        for i in 0..<n {
            batch += Wire.request(command: 1, cookie: UInt64(1000 + i), offset: UInt64(i * 4096), length: 4096) + block(i)
        }
        batch += Wire.request(command: 0, cookie: 999, offset: 1 << 20, length: 512)
        XCTAssertTrue(c.send(batch))
        var replies: [UInt64: UInt32] = [:]
        for _ in 0...n {
            guard let r = c.readExactly(16) else { return XCTFail("missing write replies (\(c.lastEnd))") }
            XCTAssertEqual(Wire.be32(r, 0), 0x6744_6698, "simple reply magic")
            XCTAssertNil(replies.updateValue(Wire.be32(r, 4), forKey: Wire.be64(r, 8)), "two replies to one cookie")
        }
        XCTAssertEqual(replies[999], 22, "out-of-range read gets EINVAL")
        for i in 0..<n { XCTAssertEqual(replies[UInt64(1000 + i)], 0, "write \(i)") }

        batch = []
        for i in 0..<n { batch += Wire.request(command: 0, cookie: UInt64(2000 + i), offset: UInt64(i * 4096), length: 4096) }
        XCTAssertTrue(c.send(batch))
        var seen = Set<UInt64>()
        for _ in 0..<n {
            guard let r = c.readExactly(16), let data = c.readExactly(4096) else {
                return XCTFail("missing read replies (\(c.lastEnd))")
            }
            let cookie = Wire.be64(r, 8)
            XCTAssertEqual(Wire.be32(r, 4), 0, "read \(cookie) error")
            XCTAssertTrue(seen.insert(cookie).inserted, "two replies to cookie \(cookie)")
            XCTAssertEqual(data, block(Int(cookie) - 2000), "read \(cookie) data")
        }
        try c.disconnect()
        assertServerHealthy(s)
    }

    /// A client that sends large reads and then a large write before it reads any reply: the
    /// server, blocked sending a read's reply, still takes the write's payload (another worker
    /// reads on), so all are answered. The memory disk is served by the reading thread itself,
    /// which held the connection's reading while its send waited, or while it waited for an
    /// earlier reply to go out: the two sides waited on each other for good.
    func testLargeReadsThenLargeWriteBeforeReadingReplies() throws {
        let s = try startServer(["memory", "size=64M"])
        let size = 16 << 20
        let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        for reads in [1, 3] {
            let c = try RawClient(s.socket)
            defer { c.close() }
            try c.exportNameHandshake(size: 64 << 20)
            var requests: [UInt8] = []
            for i in 0..<reads { requests += Wire.request(command: 0, cookie: UInt64(10 + i), offset: 0, length: UInt32(size)) }
            requests += Wire.request(command: 1, cookie: 2, offset: UInt64(size), length: UInt32(size)) + payload
            // In pieces, with pauses, so that the worker taking the payload waits for more of it.
            for start in stride(from: 0, to: requests.count, by: 1 << 20) {
                guard c.send(Array(requests[start..<min(start + (1 << 20), requests.count)])) else {
                    return XCTFail("\(reads): the server stopped taking the write's payload")
                }
                usleep(20_000)
            }
            var answered: Set<UInt64> = []
            for _ in 0...reads {
                guard let reply = c.readExactly(16) else { return XCTFail("\(reads): missing replies (\(c.lastEnd))") }
                let cookie = Wire.be64(reply, 8)
                XCTAssertEqual(Wire.be32(reply, 4), 0, "\(reads): request \(cookie) failed")
                XCTAssertTrue(answered.insert(cookie).inserted, "\(reads): two replies to \(cookie)")
                if cookie != 2 {
                    guard let data = c.readExactly(size) else { return XCTFail("\(reads): missing data (\(c.lastEnd))") }
                    XCTAssertTrue(data.allSatisfy { $0 == 0 }, "\(reads): read \(cookie) data")
                }
            }
            XCTAssertEqual(answered, Set([2] + (0..<reads).map { UInt64(10 + $0) }))
            XCTAssertTrue(c.send(Wire.request(command: 0, cookie: 3, offset: UInt64(size), length: 4096)))
            guard let reply = c.readExactly(16), let back = c.readExactly(4096) else { return XCTFail("no reply (\(c.lastEnd))") }
            XCTAssertEqual(Array(reply[4..<16]), Wire.u32(0) + Wire.u64(3))
            XCTAssertEqual(back, Array(payload[0..<4096]))
            try c.disconnect()
        }
        assertServerHealthy(s)
    }

    /// Requests in flight when the client sends NBD_CMD_DISC are still answered before the close.
    func testDisconnectAfterPipelinedWritesAnswersThemFirst() throws {
        let s = try startServer(["memory", "size=1M"])
        let c = try RawClient(s.socket)
        defer { c.close() }
        try c.exportNameHandshake()
        var batch: [UInt8] = []
        for i in 0..<32 {
            batch += Wire.request(command: 1, cookie: UInt64(i), offset: UInt64(i * 4096), length: 4096)
                + [UInt8](repeating: 0x5A, count: 4096)
        }
        batch += Wire.request(command: 2, cookie: 0, offset: 0, length: 0)
        XCTAssertTrue(c.send(batch))
        let (rest, closed) = c.readToEOF()
        XCTAssertTrue(closed, "still open after NBD_CMD_DISC")
        XCTAssertEqual(rest.count, 32 * 16, "one simple reply per write, nothing else")
        let cookies = Set(stride(from: 0, to: rest.count, by: 16).map { Wire.be64(rest, $0 + 8) })
        XCTAssertEqual(cookies, Set(0..<32))
        let r = Harness.nbdsh(s.uri, "assert h.pread(32 * 4096, 0) == b'Z' * (32 * 4096); print('ok')")
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        assertServerHealthy(s)
    }

    // MARK: Helpers

    /// The same server still serves a fresh, well-behaved client.
    /// A new client writes 512 bytes of 'x' and reads back what `reads` (Python) says.
    private func assertServerHealthy(_ s: ServerProcess, reads: String = "b'x'*512", file: StaticString = #filePath, line: UInt = #line) {
        let r = Harness.nbdsh(s.uri, "h.pwrite(b'x'*512, 0); assert h.pread(512, 0) == \(reads); print('ok')",
                              timeout: 30, file: file, line: line)
        XCTAssertEqual(r.stdout, "ok\n", "fresh client failed: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(s.isRunning, "server died:\n\(s.stderr)", file: file, line: line)
    }
}

/// Big-endian encoders and decoders for the raw NBD wire format.
private enum Wire {
    static func u16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
    static func u32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (24 - 8 * $0)) & 0xFF) } }
    static func u64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8((v >> (56 - 8 * $0)) & 0xFF) } }
    static func be16(_ b: [UInt8], _ at: Int) -> UInt16 { b[at..<at + 2].reduce(0) { $0 << 8 | UInt16($1) } }
    static func be32(_ b: [UInt8], _ at: Int) -> UInt32 { b[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
    static func be64(_ b: [UInt8], _ at: Int) -> UInt64 { b[at..<at + 8].reduce(0) { $0 << 8 | UInt64($1) } }

    static let ihaveopt = Array("IHAVEOPT".utf8)
    static let optionReplyMagic: UInt64 = 0x0003_e889_0455_65a9
    /// NBDMAGIC, IHAVEOPT, handshake flags FIXED_NEWSTYLE | NO_ZEROES.
    static let greeting = Array("NBDMAGIC".utf8) + ihaveopt + u16(3)

    static func option(_ option: UInt32, _ payload: [UInt8]) -> [UInt8] {
        ihaveopt + u32(option) + u32(UInt32(payload.count)) + payload
    }

    static func optionReply(option: UInt32, type: UInt32, payload: [UInt8] = []) -> [UInt8] {
        u64(optionReplyMagic) + u32(option) + u32(type) + u32(UInt32(payload.count)) + payload
    }

    static func request(flags: UInt16 = 0, command: UInt16, cookie: UInt64, offset: UInt64, length: UInt32) -> [UInt8] {
        u32(0x2560_9513) + u16(flags) + u16(command) + u64(cookie) + u64(offset) + u32(length)
    }

    static func simpleReply(error: UInt32, cookie: UInt64) -> [UInt8] {
        u32(0x6744_6698) + u32(error) + u64(cookie)
    }
}

private struct RawClientError: Error, CustomStringConvertible {
    let description: String
}

/// A minimal blocking NBD client on a Unix socket. Every receive and send times out after 5 s,
/// so a misbehaving server fails the test instead of hanging it.
private final class RawClient {
    enum End: Equatable { case none, eof, reset, timeout, error(Int32) }

    private var fd: Int32
    /// How the last short read ended.
    private(set) var lastEnd: End = .none

    init(_ path: String, timeout: Int = 5) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RawClientError(description: "socket: errno \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            Glibc.close(fd)
            throw RawClientError(description: "socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard r == 0 else {
            let e = errno
            Glibc.close(fd)
            throw RawClientError(description: "connect \(path): errno \(e)")
        }
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
    }

    /// Sends everything; false if the peer is gone or the send timed out.
    func send(_ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            sent += n
        }
        return true
    }

    /// Exactly `count` bytes, or nil (see `lastEnd` for why).
    func readExactly(_ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
            if n > 0 { got += n; continue }
            if n < 0 && errno == EINTR { continue }
            lastEnd = Self.end(n)
            return nil
        }
        return out
    }

    /// Everything until the peer closes. `closed` is false if it was still open after the timeout.
    func readToEOF(limit: Int = 1 << 20) -> (data: [UInt8], closed: Bool) {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while out.count < limit {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 { out += chunk[0..<n]; continue }
            if n < 0 && errno == EINTR { continue }
            lastEnd = Self.end(n)
            return (out, lastEnd == .eof || lastEnd == .reset)
        }
        return (out, false)
    }

    private static func end(_ n: Int) -> End {
        if n == 0 { return .eof }
        switch errno {
        case ECONNRESET: return .reset
        case EAGAIN, EWOULDBLOCK: return .timeout
        case let e: return .error(e)
        }
    }

    // MARK: Protocol steps

    /// Reads the greeting and sends client flags FIXED_NEWSTYLE | NO_ZEROES.
    func startNegotiation() throws {
        guard let greeting = readExactly(18) else { throw RawClientError(description: "no greeting (\(lastEnd))") }
        guard greeting == Wire.greeting else { throw RawClientError(description: "bad greeting \(greeting)") }
        guard send(Wire.u32(3)) else { throw RawClientError(description: "cannot send client flags") }
    }

    /// `startNegotiation`, then NBD_OPT_STRUCTURED_REPLY, which must be acknowledged.
    func startNegotiationWithStructuredReplies(file: StaticString = #filePath, line: UInt = #line) throws {
        try startNegotiation()
        XCTAssertTrue(send(Wire.option(8, [])), file: file, line: line)
        XCTAssertEqual(try XCTUnwrap(readOptionReply(), file: file, line: line).type, 1,
                       "NBD_OPT_STRUCTURED_REPLY acknowledged", file: file, line: line)
    }

    /// One option reply: header fields checked for the magic, payload read in full.
    func readOptionReply() -> (option: UInt32, type: UInt32, payload: [UInt8])? {
        guard let h = readExactly(20) else { return nil }
        XCTAssertEqual(Wire.be64(h, 0), Wire.optionReplyMagic, "option reply magic")
        let length = Wire.be32(h, 16)
        guard length <= 1 << 20, let payload = readExactly(Int(length)) else { return nil }
        return (Wire.be32(h, 8), Wire.be32(h, 12), payload)
    }

    /// Fixed newstyle handshake ending with NBD_OPT_EXPORT_NAME "" (no structured replies), to
    /// an export of `size` bytes.
    func exportNameHandshake(size: UInt64 = 1 << 20) throws {
        try startNegotiation()
        guard send(Wire.option(1, [])) else { throw RawClientError(description: "cannot send EXPORT_NAME") }
        guard let reply = readExactly(10) else { throw RawClientError(description: "no export reply (\(lastEnd))") }
        XCTAssertEqual(Wire.be64(reply, 0), size, "export size")
        XCTAssertEqual(Wire.be16(reply, 8) & 1, 1, "NBD_FLAG_HAS_FLAGS")
    }

    /// A 512-byte READ at offset 0 gets a clean simple reply followed by exactly 512 bytes.
    func expectRead512Works(cookie: UInt64, file: StaticString = #filePath, line: UInt = #line) throws {
        guard send(Wire.request(command: 0, cookie: cookie, offset: 0, length: 512)) else {
            throw RawClientError(description: "cannot send READ")
        }
        XCTAssertEqual(readExactly(16), Wire.simpleReply(error: 0, cookie: cookie), "READ reply", file: file, line: line)
        XCTAssertEqual(readExactly(512)?.count, 512, "READ data (\(lastEnd))", file: file, line: line)
    }

    /// NBD_CMD_DISC, after which the server closes without a reply.
    func disconnect(file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertTrue(send(Wire.request(command: 2, cookie: 0, offset: 0, length: 0)), file: file, line: line)
        let (rest, closed) = readToEOF()
        XCTAssertTrue(closed, "still open after NBD_CMD_DISC", file: file, line: line)
        XCTAssertEqual(rest, [], "reply to NBD_CMD_DISC", file: file, line: line)
    }
}
