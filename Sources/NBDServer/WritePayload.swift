/// The payload of a write as it arrives from the client, for `BackendConnection.receiveWrite`.
/// Only `waitForMore` waits, so a backend may hold a lock while it calls the others.
public protocol WritePayload: AnyObject {
    /// Fills the start of `buffer` (not empty, no longer than what is left of the payload) with
    /// payload that has arrived, without waiting; returns how many bytes, 0 if none has arrived.
    func receiveAvailable(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Drops up to `count` (> 0) bytes of payload that have arrived, without waiting; returns how
    /// many, 0 if none have arrived.
    func discardAvailable(upTo count: Int) throws -> Int
    /// Consumes and returns up to `count` (> 0) bytes of payload that were read ahead into memory
    /// with the request, without receiving; empty if there are none. The bytes stay valid until
    /// the next call on this payload.
    func takeReadAhead(upTo count: Int) -> UnsafeRawBufferPointer
    /// True when `spliceAvailable` works (the payload comes from a Unix or TCP socket).
    var splices: Bool { get }
    /// Moves up to `count` (> 0, no more than what is left of the payload) bytes of payload that
    /// have arrived into the empty non-blocking pipe whose write end is `pipe`, without waiting;
    /// returns how many, 0 if none has arrived. Only where `splices`, and only once
    /// `takeReadAhead` has taken what was read ahead (else it throws).
    func spliceAvailable(upTo count: Int, into pipe: Int32) throws -> Int
    /// Waits until more payload has arrived or the connection ended. Call it holding no lock.
    func waitForMore() throws
}

extension WritePayload {
    /// Drops the next `count` bytes of payload, waiting for them as needed.
    public func discard(_ count: Int) throws {
        var done = 0
        while done < count {
            let n = try discardAvailable(upTo: count - done)
            done += n
            if n == 0 { try waitForMore() }
        }
    }
}
