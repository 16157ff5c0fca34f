import Glibc
import CNBDShim

/// A connection's read-ahead. Small reads (request headers, small write payloads) are served from
/// one buffer that is refilled with whatever has arrived, so pipelined requests cost one system
/// call per batch rather than one or two each. Large payloads go straight from the transport into
/// the caller's memory, after the part of them that was already buffered. On a plain socket,
/// before it blocks, it polls for input for a short, adaptive while (`IdlePoll`).
final class ReceiveBuffer {
    static let capacity = 16 * 1024
    private let transport: any Transport
    private let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: ReceiveBuffer.capacity, alignment: 64)
    /// The buffered bytes not yet handed out are `storage[start..<end]`.
    private var start = 0
    private var end = 0
    /// Shared by every connection of the server; nil when this transport can't be polled.
    private let allowance: PollingAllowance?
    private var idlePoll = IdlePoll()
    /// Called before each receive from the transport that may wait, and before waiting for more
    /// of a write's payload, so that replies gathered meanwhile go out first: one send for the
    /// replies to what one receive brought. (The receives of `WritePayload` never wait.)
    var beforeReceiving: (() throws -> Void)?

    init(_ transport: any Transport, polling allowance: PollingAllowance? = nil) {
        self.transport = transport
        // Never over TLS: a record that has begun to arrive is waited for whole, and a poller
        // must not wait (it holds one of the server's few polling places).
        self.allowance = transport.receivesWithoutWaiting ? allowance : nil
    }

    deinit { storage.deallocate() }

    /// Fills `destination` completely, polling before it blocks if `mayPoll`; throws as
    /// `Transport.receive` does. After a throw the stream is out of step and must not be read
    /// again.
    func read(into destination: UnsafeMutableRawBufferPointer, mayPoll: Bool = false) throws {
        let count = destination.count
        // Nothing to read (a zero-length write): the read-ahead must stay as it is.
        guard count > 0 else { return }
        let buffered = min(end - start, count)
        if buffered > 0 {
            destination.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: buffered)
            start += buffered
            if buffered == count { return }
        }
        start = 0
        end = 0
        let rest = UnsafeMutableRawBufferPointer(rebasing: destination[buffered...])
        if rest.count >= Self.capacity / 2 {
            var done = 0
            while done < rest.count {
                done += try receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: rest[done...]), mayPoll: mayPoll)
            }
            return
        }
        while end < rest.count {
            end += try receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: storage[end...]), mayPoll: mayPoll)
        }
        rest.baseAddress!.copyMemory(from: storage.baseAddress!, byteCount: rest.count)
        start = rest.count
    }

    /// Reads and drops the next `count` bytes (the payload of a write that is refused), waiting
    /// for them as `read` does, on any transport (pipes under `-s`, TLS); the replies gathered
    /// meanwhile go out first, as before any receive that may wait.
    func skip(_ count: Int) throws {
        var left = count
        let buffered = min(end - start, left)
        start += buffered
        left -= buffered
        while left > 0 {
            start = 0
            end = 0
            left -= try receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: storage[0..<min(left, Self.capacity)]),
                                    mayPoll: false)
        }
    }

    /// The next `count` bytes (at most half the capacity), consumed, waiting for them as `read`
    /// does but receiving them into the read-ahead itself (with whatever follows them), so that
    /// the caller can store them from there with one copy. They stay valid until the next call
    /// on this buffer.
    func readBuffered(count: Int, mayPoll: Bool = false) throws -> UnsafeRawBufferPointer {
        precondition(count <= Self.capacity / 2)
        if end - start < count {
            if start == end {
                start = 0
                end = 0
            } else if start + count > Self.capacity {
                // Too near the end: what is held moves to the front to make room.
                let held = end - start
                storage.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: held)
                start = 0
                end = held
            }
            while end - start < count {
                end += try receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: storage[end...]), mayPoll: mayPoll)
            }
        }
        defer { start += count }
        return UnsafeRawBufferPointer(rebasing: storage[start..<start + count])
    }

    /// How many bytes the read-ahead holds, not yet handed out.
    var bufferedCount: Int { end - start }

    /// The next `count` bytes, consumed, if the read-ahead holds them all; nil (and nothing
    /// consumed) if not. They stay valid until the next call on this buffer.
    func takeBuffered(count: Int) -> UnsafeRawBufferPointer? {
        guard end - start >= count else { return nil }
        defer { start += count }
        return UnsafeRawBufferPointer(rebasing: storage[start..<start + count])
    }

    /// Receives at least one byte into `buffer`. When `mayPoll`: what has arrived if anything
    /// has, else what arrives while polling (if the allowance has room); only then does it block,
    /// timing the sleep to adapt the polling limit.
    private func receiveSome(into buffer: UnsafeMutableRawBufferPointer, mayPoll: Bool) throws -> Int {
        try beforeReceiving?()
        guard let allowance, mayPoll else { return try transport.receiveSome(into: buffer) }
        if idlePoll.limit > 0 {
            var count = try transport.receiveIfAvailable(into: buffer)
            if count > 0 { return count }
            if allowance.begin() {
                defer { allowance.end() }
                if try idlePoll.poll({ count = try transport.receiveIfAvailable(into: buffer); return count > 0 }) {
                    return count
                }
            }
        }
        let sleptFrom = MonotonicClock.nanoseconds()
        let count = try transport.receiveSome(into: buffer)
        idlePoll.slept(nanoseconds: MonotonicClock.nanoseconds() - sleptFrom)
        return count
    }
}

/// A write's payload received through the read-ahead: what is buffered first, then straight from
/// the transport into the caller's memory, never past what the caller asks for.
extension ReceiveBuffer: WritePayload {
    func receiveAvailable(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        // What the read-ahead holds goes first.
        let buffered = min(end - start, buffer.count)
        if buffered > 0 {
            buffer.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: buffered)
            start += buffered
            if buffered == buffer.count { return buffered }
        }
        start = 0
        end = 0
        // Then one receive into the rest.
        return try buffered + transport.receiveIfAvailable(into: UnsafeMutableRawBufferPointer(rebasing: buffer[buffered...]))
    }

    func discardAvailable(upTo count: Int) throws -> Int {
        let buffered = min(end - start, count)
        if buffered > 0 {
            start += buffered
            return buffered
        }
        start = 0
        end = 0
        return try transport.receiveIfAvailable(into: UnsafeMutableRawBufferPointer(rebasing: storage[0..<min(count, Self.capacity)]))
    }

    func takeReadAhead(upTo count: Int) -> UnsafeRawBufferPointer {
        let taken = UnsafeRawBufferPointer(rebasing: storage[start..<start + min(end - start, count)])
        start += taken.count
        return taken
    }

    var splices: Bool { transport.splices }

    func spliceAvailable(upTo count: Int, into pipe: Int32) throws -> Int {
        // Splicing past bytes still read ahead would store the payload out of order.
        guard start == end else { throw TransportError.failed(SystemError("splice before the read-ahead was taken", errno: EINVAL)) }
        start = 0
        end = 0
        return try transport.spliceIfAvailable(upTo: count, into: pipe)
    }

    /// Polls for the rest of the payload first, as `receiveSome` does before it blocks: the
    /// client is in the middle of sending it, and a reader asleep costs each of its sends a
    /// wake-up (measured: sequential 256 KiB writes to the memory plugin 1,940 -> 2,260 MB/s,
    /// server CPU per GB +12%).
    func waitForMore() throws {
        try beforeReceiving?()
        if let allowance, idlePoll.limit > 0, allowance.begin() {
            defer { allowance.end() }
            if idlePoll.poll({ transport.hasInput() }) { return }
        }
        let sleptFrom = MonotonicClock.nanoseconds()
        try transport.waitForInput()
        idlePoll.slept(nanoseconds: MonotonicClock.nanoseconds() - sleptFrom)
    }
}
