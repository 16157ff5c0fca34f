/// Replies on their way to one client. When batching, small replies are gathered and sent
/// together by `flush`, one system call for many; otherwise (and for large replies) every send
/// goes straight out, after whatever was gathered before it, so the order of replies holds.
/// Used under the connection's write lock.
final class ReplyBatch {
    static let capacity = 64 * 1024
    /// Replies up to this long are gathered; longer ones are sent at once.
    static let gatherMaximum = 16 * 1024
    private let transport: any Transport
    let batching: Bool
    private let storage: UnsafeMutableRawBufferPointer
    private var pending = 0

    init(_ transport: any Transport, batching: Bool) {
        self.transport = transport
        self.batching = batching
        storage = .allocate(byteCount: batching ? Self.capacity : 0, alignment: 64)
    }

    deinit { storage.deallocate() }

    /// Sends `header` then `payload`, or gathers them to send with the next `flush`.
    func send(_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer) throws {
        let count = header.count + payload.count
        guard batching, count <= Self.gatherMaximum else {
            try flush()
            try transport.send(header, payload)
            return
        }
        if pending + count > Self.capacity { try flush() }
        if header.count > 0 { (storage.baseAddress! + pending).copyMemory(from: header.baseAddress!, byteCount: header.count) }
        if payload.count > 0 { (storage.baseAddress! + pending + header.count).copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
        pending += count
    }

    /// Sends everything gathered so far.
    func flush() throws {
        guard pending > 0 else { return }
        let count = pending
        pending = 0
        try transport.send(UnsafeRawBufferPointer(rebasing: storage[0..<count]), UnsafeRawBufferPointer(start: nil, count: 0))
    }
}
