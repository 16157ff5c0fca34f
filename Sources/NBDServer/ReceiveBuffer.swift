/// A connection's read-ahead. Small reads (request headers, small write payloads) are served from
/// one buffer that is refilled with whatever has arrived, so pipelined requests cost one system
/// call per batch rather than one or two each. Large payloads go straight from the transport into
/// the caller's memory, after the part of them that was already buffered.
final class ReceiveBuffer {
    static let capacity = 16 * 1024
    private let transport: any Transport
    private let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: ReceiveBuffer.capacity, alignment: 64)
    /// The buffered bytes not yet handed out are `storage[start..<end]`.
    private var start = 0
    private var end = 0

    init(_ transport: any Transport) { self.transport = transport }


    deinit { storage.deallocate() }

    /// Fills `destination` completely; throws as `Transport.receive` does. After a throw the
    /// stream is out of step and must not be read again.
    func read(into destination: UnsafeMutableRawBufferPointer) throws {
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
            try transport.receive(into: rest)
            return
        }
        while end < rest.count {
            end += try transport.receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: storage[end...]))
        }
        rest.baseAddress!.copyMemory(from: storage.baseAddress!, byteCount: rest.count)
        start = rest.count
    }
}
