import Glibc
import NBDProtocol

/// One request in flight and its reusable memory: the decoded header, room for a reply header,
/// and room for payloads. A write's payload is read straight into it and a read's data is served
/// from it, so the request path allocates nothing once a buffer has seen its largest request.
/// Memory beyond `retainedMaximum` is given back to the system when a request is done
/// (`releaseLargePayload`), so an idle connection holds no more than `retainedMaximum` per
/// worker that the system can't take back. Each worker owns one.
final class RequestBuffer {
    /// The request being served.
    var request = RequestHeader(flags: [], rawCommand: 0, cookie: 0, offset: 0, length: 0)
    /// Why the request can't be served (its error and the reason logged), or nil if it may be.
    var invalid: Refusal?
    /// For a write whose payload went straight into the backend (`storage` or `receiveWrite`) as
    /// it was read, or could not be read for want of memory: how that went. Nil for every other
    /// request.
    var receivedInPlace: Result<Void, BackendError>?
    /// The bytes of the connection's `RequestBudget` this request holds until its reply is sent.
    var budgeted = 0
    /// 28 bytes: a request header, or a reply header plus a structured read's offset.
    let header = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 8)
    private var payload = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    /// How much of the payload area has been handed out since it was last given back: what
    /// `releaseLargePayload` gives back beyond `retainedMaximum`, so that requests that stay
    /// within it cost no system call.
    private var usedCount = 0

    /// Payload room up to this size is kept from one request to the next.
    static let retainedMaximum = 4 * 1024 * 1024

    /// The first `count` bytes of the payload area, growing it if needed (contents then
    /// undefined). Throws ENOMEM, for this request alone, if the memory can't be had.
    func payload(count: Int) throws(BackendError) -> UnsafeMutableRawBufferPointer {
        if count > payload.count {
            var capacity = max(64 * 1024, payload.count)
            while capacity < count { capacity *= 2 }
            // The old area goes first, so that it can make room for the new one. Mapped, not
            // taken from malloc, so that unmapping gives the memory back to the system at once.
            unmapPayload()
            let memory = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            guard let memory, memory != MAP_FAILED else {
                throw BackendError(.enomem, "cannot allocate \(capacity) bytes for the request's data")
            }
            payload = UnsafeMutableRawBufferPointer(start: memory, count: capacity)
        }
        usedCount = max(usedCount, count)
        return UnsafeMutableRawBufferPointer(rebasing: payload[0..<count])
    }

    /// Gives the payload area beyond `retainedMaximum` back to the system. Called once a
    /// request's reply has been sent. The pages are marked free (MADV_FREE), not unmapped: the
    /// kernel takes them when it needs memory, and until then the next large request reuses
    /// them without faulting them in and zeroing them again (unmapping after every request over
    /// 4 MiB halved the throughput of such requests). Locked pages (`--swap`) can't be marked
    /// so; they are unmapped.
    func releaseLargePayload() {
        guard usedCount > Self.retainedMaximum, let start = payload.baseAddress else { return }
        let pageSize = 4096
        let used = min((usedCount + pageSize - 1) / pageSize * pageSize, payload.count)
        usedCount = 0
        if madvise(start + Self.retainedMaximum, used - Self.retainedMaximum, MADV_FREE) != 0 { unmapPayload() }
    }

    private func unmapPayload() {
        if let start = payload.baseAddress { munmap(start, payload.count) }
        payload = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        usedCount = 0
    }

    /// The first `count` bytes of the payload area, which an earlier `payload(count:)` of at
    /// least `count` bytes for this request made room for.
    func filled(count: Int) -> UnsafeMutableRawBufferPointer {
        precondition(count <= payload.count, "the payload area was not made ready")
        return UnsafeMutableRawBufferPointer(rebasing: payload[0..<count])
    }

    deinit {
        header.deallocate()
        unmapPayload()
    }
}

/// A request refused before it reaches the backend: the error the client gets, and the reason,
/// which only the server's log shows.
struct Refusal {
    let errno: NBDErrno
    let reason: String

    init(_ errno: NBDErrno, _ reason: String) {
        self.errno = errno
        self.reason = reason
    }
}
