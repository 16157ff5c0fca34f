import XCTest
import Glibc
@testable import NBDServer

/// `ReceiveBuffer.readBuffered` over a real pipe, fed in chunks of chosen sizes so that the
/// read-ahead's position is known: a payload that would run past the end of the read-ahead is
/// moved to its front with the bytes held (compaction), one that fits exactly is not, and the
/// stream stays in step either way.
final class ReceiveBufferTests: XCTestCase {
    private var fds: [Int32] = [-1, -1]
    private var input: ReceiveBuffer!
    /// The next byte value the stream carries: byte n of the stream is `UInt8(truncatingIfNeeded: n &* 7)`.
    private var written = 0
    private var consumed = 0

    override func setUp() {
        super.setUp()
        XCTAssertEqual(pipe(&fds), 0)
        input = ReceiveBuffer(PlainTransport(readFD: fds[0], writeFD: fds[1]))
    }

    override func tearDown() {
        input = nil
        for fd in fds where fd >= 0 { close(fd) }
        super.tearDown()
    }

    private static func byte(_ n: Int) -> UInt8 { UInt8(truncatingIfNeeded: n &* 7) }

    /// Writes the next `count` bytes of the stream into the pipe.
    private func feed(_ count: Int) {
        let bytes = (written..<written + count).map(Self.byte)
        written += count
        XCTAssertEqual(bytes.withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) }, count)
    }

    /// Reads `count` bytes with `read(into:)` and checks they are the stream's next ones.
    private func expectRead(_ count: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let destination = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
        defer { destination.deallocate() }
        try input.read(into: destination)
        XCTAssertEqual(Array(destination), (consumed..<consumed + count).map(Self.byte), file: file, line: line)
        consumed += count
    }

    /// Takes `count` bytes with `readBuffered` and checks they are the stream's next ones.
    private func expectReadBuffered(_ count: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let taken = try input.readBuffered(count: count)
        XCTAssertEqual(Array(taken), (consumed..<consumed + count).map(Self.byte), file: file, line: line)
        consumed += count
    }

    func testPayloadNearTheEndIsMovedToTheFrontWithWhatIsHeld() throws {
        let capacity = ReceiveBuffer.capacity
        feed(capacity - 500)
        try expectRead(28)                     // fills the read-ahead with all that arrived
        try expectRead(capacity - 500 - 28 - 100)  // 100 bytes stay held, near the end
        feed(capacity / 2 - 100 + 40)          // the rest of the payload and 40 bytes more
        try expectReadBuffered(capacity / 2)   // must move the 100 held bytes to the front
        XCTAssertEqual(input.bufferedCount, 40)
        feed(12)
        try expectRead(52)                     // in step after it
    }

    func testPayloadThatEndsExactlyAtTheEndNeedsNoMove() throws {
        let capacity = ReceiveBuffer.capacity
        feed(capacity / 2 + 10)
        try expectRead(28)                     // fills the read-ahead with all that arrived
        try expectRead(capacity / 2 - 28)      // start = capacity / 2, 10 bytes held
        feed(capacity / 2 - 10)
        try expectReadBuffered(capacity / 2)   // start + count == capacity
        feed(capacity / 2 + 1)
        try expectReadBuffered(capacity / 2)   // from an empty read-ahead: from its front
        try expectRead(1)
    }

    /// A writer thread sends 4 KiB payloads in pieces with pauses between them, so that
    /// `readBuffered` receives each in several parts; every payload comes out whole and in step.
    func testPayloadArrivingInPieces() throws {
        let rounds = 20, payload = 4096
        let total = 2 + rounds * payload + 2
        let stream = (0..<total).map(Self.byte)
        let writeFD = fds[1]
        let writer = Thread {
            var at = 0
            var piece = 1
            while at < total {
                let n = min(piece, total - at)
                _ = stream[at..<at + n].withUnsafeBytes { write(writeFD, $0.baseAddress, n) }
                at += n
                piece = piece >= 2048 ? 1 : piece * 3
                usleep(200)
            }
        }
        writer.start()
        try expectRead(1)
        try expectRead(1)
        for _ in 0..<rounds { try expectReadBuffered(payload) }
        try expectRead(2)
        XCTAssertEqual(consumed, total)
    }
}
