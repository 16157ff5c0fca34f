import XCTest
@testable import NBDProtocol

/// Wire-format encoders and decoders checked against bytes written out by hand from doc/proto.md.
final class GoldenBytesTests: XCTestCase {
    func testNewstyleGreeting() {
        XCTAssertEqual(Negotiation.newstyleGreeting([.fixedNewstyle, .noZeroes]),
                       Array("NBDMAGIC".utf8) + Array("IHAVEOPT".utf8) + [0x00, 0x03])
    }

    func testOldstyleGreeting() {
        let g = Negotiation.oldstyleGreeting(size: 0x1_0000_0000, flags: [.hasFlags, .readOnly])
        XCTAssertEqual(g.count, 152)
        XCTAssertEqual(Array(g[0..<8]), Array("NBDMAGIC".utf8))
        XCTAssertEqual(Array(g[8..<16]), [0x00, 0x00, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53])
        XCTAssertEqual(Array(g[16..<24]), [0, 0, 0, 1, 0, 0, 0, 0])
        XCTAssertEqual(Array(g[24..<28]), [0, 0, 0, 3])
        XCTAssertTrue(g[28...].allSatisfy { $0 == 0 })
    }

    func testOptionHeaderDecode() throws {
        let bytes: [UInt8] = Array("IHAVEOPT".utf8) + [0, 0, 0, 7, 0, 0, 0, 0x0c]
        let (option, length) = try bytes.withUnsafeBytes { try Negotiation.decodeOptionHeader($0) }
        XCTAssertEqual(option, 7)
        XCTAssertEqual(length, 12)
        let bad: [UInt8] = Array("IHAVEOPX".utf8) + [0, 0, 0, 7, 0, 0, 0, 0]
        XCTAssertThrowsError(try bad.withUnsafeBytes { try Negotiation.decodeOptionHeader($0) }) {
            XCTAssertEqual($0 as? NBDDecodeError, .badMagic)
        }
    }

    func testOptionReply() {
        XCTAssertEqual(Negotiation.optionReply(option: 8, type: .ack),
                       [0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0])
        XCTAssertEqual(Negotiation.optionReply(option: 5, type: .errPolicy, payload: [0xaa]),
                       [0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 5, 0x80, 0, 0, 2, 0, 0, 0, 1, 0xaa])
    }

    func testExportNameReply() {
        XCTAssertEqual(Negotiation.exportNameReply(size: 1024, flags: [.hasFlags, .sendFlush], noZeroes: true),
                       [0, 0, 0, 0, 0, 0, 4, 0, 0, 5])
        XCTAssertEqual(Negotiation.exportNameReply(size: 1, flags: [.hasFlags], noZeroes: false).count, 134)
    }

    func testInfoPayloads() {
        XCTAssertEqual(Negotiation.infoExport(size: 0x0102, flags: [.hasFlags, .canMultiConn]),
                       [0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x02, 0x01, 0x01])
        XCTAssertEqual(Negotiation.infoString(.name, "ab"), [0, 1, 0x61, 0x62])
        XCTAssertEqual(Negotiation.infoBlockSize(minimum: 1, preferred: 4096, maximum: 0x0200_0000),
                       [0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0])
        XCTAssertEqual(Negotiation.serverReplyPayload(name: "x", description: "d"), [0, 0, 0, 1, 0x78, 0x64])
        XCTAssertEqual(Negotiation.metaContextPayload(id: 1, name: "base:allocation"),
                       [0, 0, 0, 1] + Array("base:allocation".utf8))
    }

    func testInfoRequestDecode() throws {
        let payload: [UInt8] = [0, 0, 0, 3] + Array("foo".utf8) + [0, 2, 0, 1, 0, 3]
        XCTAssertEqual(try Negotiation.InfoRequest(decoding: payload),
                       Negotiation.InfoRequest(exportName: "foo", requests: [1, 3]))
        XCTAssertThrowsError(try Negotiation.InfoRequest(decoding: [0, 0, 0, 9, 0x61])) {
            XCTAssertEqual($0 as? NBDDecodeError, .truncated)
        }
        XCTAssertThrowsError(try Negotiation.InfoRequest(decoding: [0, 0, 0, 0, 0, 0, 7])) {
            XCTAssertEqual($0 as? NBDDecodeError, .trailingBytes)
        }
        XCTAssertThrowsError(try Negotiation.InfoRequest(decoding: [0, 0, 0, 1, 0xff, 0, 0])) {
            XCTAssertEqual($0 as? NBDDecodeError, .badUTF8)
        }
        XCTAssertThrowsError(try Negotiation.InfoRequest(decoding: [0, 0, 0, 3, 0x61, 0, 0x62, 0, 0])) {
            XCTAssertEqual($0 as? NBDDecodeError, .containsNUL)
        }
        XCTAssertThrowsError(try Negotiation.InfoRequest(decoding: [0, 0, 0x20, 0, 0, 0])) {
            XCTAssertEqual($0 as? NBDDecodeError, .tooLong)
        }
    }

    func testMetaContextRequestDecode() throws {
        let payload: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 15] + Array("base:allocation".utf8)
        XCTAssertEqual(try Negotiation.MetaContextRequest(decoding: payload),
                       Negotiation.MetaContextRequest(exportName: "", queries: ["base:allocation"]))
        // A query count far larger than the payload is refused before anything is allocated for it.
        XCTAssertThrowsError(try Negotiation.MetaContextRequest(decoding: [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])) {
            XCTAssertEqual($0 as? NBDDecodeError, .truncated)
        }
    }

    func testRequestHeaderRoundTrip() throws {
        let bytes: [UInt8] = [0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01,
                              1, 2, 3, 4, 5, 6, 7, 8,
                              0, 0, 0, 0, 0, 0, 0x10, 0,
                              0, 0, 0x02, 0]
        let header = try bytes.withUnsafeBytes { try RequestHeader(decoding: $0) }
        XCTAssertEqual(header, RequestHeader(flags: .fua, rawCommand: 1, cookie: 0x0102_0304_0506_0708,
                                             offset: 4096, length: 512))
        XCTAssertEqual(header.command, .write)
        var out = [UInt8](repeating: 0, count: 28)
        out.withUnsafeMutableBytes { header.encode(into: $0) }
        XCTAssertEqual(out, bytes)
        var bad = bytes
        bad[0] = 0
        XCTAssertThrowsError(try bad.withUnsafeBytes { try RequestHeader(decoding: $0) })
    }

    func testSimpleReplyHeader() {
        var out = [UInt8](repeating: 0, count: 16)
        out.withUnsafeMutableBytes { Reply.encodeSimpleHeader(into: $0, error: 22, cookie: 0xabcdef) }
        XCTAssertEqual(out, [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0xab, 0xcd, 0xef])
    }

    func testStructuredReplyChunks() {
        var out = [UInt8](repeating: 0, count: 20)
        out.withUnsafeMutableBytes {
            Reply.encodeStructuredHeader(into: $0, flags: .done, type: .offsetData, cookie: 9, length: 520)
        }
        XCTAssertEqual(out, [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 2, 8])

        XCTAssertEqual(Reply.structuredError(cookie: 2, error: .einval, message: "no"),
                       [0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 8,
                        0, 0, 0, 22, 0, 2, 0x6e, 0x6f])
        XCTAssertEqual(Reply.structuredError(cookie: 2, error: .eio, message: "", offset: 512),
                       [0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 0x02, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 14,
                        0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0])
        XCTAssertEqual(Reply.blockStatus(cookie: 3, contextID: 1, extents: [(4096, []), (512, [.hole, .zero])]),
                       [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 20,
                        0, 0, 0, 1, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3])
    }

    func testErrnoMapping() {
        XCTAssertEqual(NBDErrno(systemErrno: 13), .eperm)   // EACCES
        XCTAssertEqual(NBDErrno(systemErrno: 30), .eperm)   // EROFS
        XCTAssertEqual(NBDErrno(systemErrno: 27), .enospc)  // EFBIG
        XCTAssertEqual(NBDErrno(systemErrno: 122), .enospc) // EDQUOT
        XCTAssertEqual(NBDErrno(systemErrno: 38), .enotsup) // ENOSYS
        XCTAssertEqual(NBDErrno(systemErrno: 2), .eio)      // ENOENT
        XCTAssertEqual(NBDErrno.eshutdown.rawValue, 108)
    }

    func testOptionNames() {
        XCTAssertEqual(OptionCode(rawValue: 7)?.name, "NBD_OPT_GO")
        XCTAssertEqual(OptionCode(rawValue: 9)?.name, "NBD_OPT_LIST_META_CONTEXT")
        XCTAssertEqual(OptionCode(rawValue: 5)?.name, "NBD_OPT_STARTTLS")
    }
}
