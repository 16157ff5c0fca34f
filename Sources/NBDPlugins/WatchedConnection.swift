import NBDServer

/// The plugin's connection, passed through unchanged (reads sent from files and writes
/// received in place or into storage included), that reports when it closes: for filters that
/// only count clients.
final class WatchedConnection: PassthroughConnection, @unchecked Sendable {
    private let closed: @Sendable () -> Void

    init(next: any BackendConnection, closed: @escaping @Sendable () -> Void) {
        self.closed = closed
        super.init(next: next)
    }

    override func fileExtent(offset: UInt64, length: UInt32) -> FileExtent? {
        next.fileExtent(offset: offset, length: length)
    }
    override func storage(offset: UInt64, length: UInt32) -> UnsafeMutableRawBufferPointer? {
        next.storage(offset: offset, length: length)
    }
    override var receivesWrites: Bool { next.receivesWrites }
    override var servesWithoutBlocking: Bool { next.servesWithoutBlocking }
    override func receiveWrite(offset: UInt64, length: UInt32, from payload: any WritePayload) throws {
        try next.receiveWrite(offset: offset, length: length, from: payload)
    }

    /// Closes the plugin's connection, then reports it.
    override func close() {
        next.close()
        closed()
    }
}
