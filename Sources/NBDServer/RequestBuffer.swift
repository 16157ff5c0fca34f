/// One worker's reusable memory: room for a reply header and for the largest payload seen so far.
/// Requests are read into it and replies written from it, so the request path allocates nothing
/// once a worker has seen its largest request.
final class RequestBuffer {
    /// 28 bytes: a request header, or a reply header plus a structured read's offset.
    let header = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 8)
    private(set) var payload = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    /// The first `count` bytes of the payload area, growing it if needed (contents then undefined).
    func payload(count: Int) -> UnsafeMutableRawBufferPointer {
        if count > payload.count {
            payload.deallocate()
            var capacity = max(64 * 1024, payload.count)
            while capacity < count { capacity *= 2 }
            payload = .allocate(byteCount: capacity, alignment: 4096)
        }
        return UnsafeMutableRawBufferPointer(rebasing: payload[0..<count])
    }

    deinit {
        header.deallocate()
        payload.deallocate()
    }
}
