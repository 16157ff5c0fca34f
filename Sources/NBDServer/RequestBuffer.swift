import NBDProtocol

/// One request in flight and its reusable memory: the decoded header, room for a reply header,
/// and room for the largest payload seen so far. A write's payload is read straight into it and a
/// read's data is served from it, so the request path allocates nothing once a buffer has seen
/// its largest request. Each worker owns one.
final class RequestBuffer {
    /// The request being served.
    var request = RequestHeader(flags: [], rawCommand: 0, cookie: 0, offset: 0, length: 0)
    /// Why the request can't be served (it gets this error), or nil if it may be.
    var invalid: NBDErrno?
    /// For a write whose payload went straight into the backend (`storage` or `receiveWrite`) as
    /// it was read: how that went. Nil for every other request.
    var receivedInPlace: Result<Void, BackendError>?
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
