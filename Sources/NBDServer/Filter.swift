/// A filter's connection that passes every call through to the next backend's connection.
/// Filters subclass it and override only the calls they change.
open class PassthroughConnection: BackendConnection, @unchecked Sendable {
    public let next: any BackendConnection

    public init(next: any BackendConnection) { self.next = next }

    open func size() throws -> UInt64 { try next.size() }
    open func canWrite() throws -> Bool { try next.canWrite() }
    open func canFlush() throws -> Bool { try next.canFlush() }
    open func isRotational() throws -> Bool { try next.isRotational() }
    open func canTrim() throws -> Bool { try next.canTrim() }
    open func canZero() throws -> Bool { try next.canZero() }
    open func canFastZero() throws -> Bool { try next.canFastZero() }
    open func canFUA() throws -> FUASupport { try next.canFUA() }
    open func canMultiConn() throws -> Bool { try next.canMultiConn() }
    open func canExtents() throws -> Bool { try next.canExtents() }
    open func canCache() throws -> Bool { try next.canCache() }
    open func pread(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws {
        try next.pread(into: buffer, offset: offset)
    }
    /// Nil: a filter sees every read unless it chooses to pass the file through.
    open func fileExtent(offset: UInt64, length: UInt32) -> FileExtent? { nil }
    open func pwrite(_ buffer: UnsafeRawBufferPointer, offset: UInt64, fua: Bool) throws {
        try next.pwrite(buffer, offset: offset, fua: fua)
    }
    /// Nil: a filter sees every write unless it chooses to let the plugin receive it.
    open func storage(offset: UInt64, length: UInt32) -> UnsafeMutableRawBufferPointer? { nil }
    /// False: a filter sees every write unless it chooses to let the plugin receive it.
    open var receivesWrites: Bool { false }
    /// False: a filter may wait (`delay`), so only one that never does may pass this through.
    open var servesWithoutBlocking: Bool { false }
    open func receiveWrite(offset: UInt64, length: UInt32, from payload: any WritePayload) throws {
        try payload.discard(Int(length))
        throw BackendError(.eio, "this filter does not receive writes in place")
    }
    open func flush() throws { try next.flush() }
    open func trim(offset: UInt64, length: UInt32, fua: Bool) throws {
        try next.trim(offset: offset, length: length, fua: fua)
    }
    open func zero(offset: UInt64, length: UInt32, mayTrim: Bool, fua: Bool, fastZero: Bool) throws {
        try next.zero(offset: offset, length: length, mayTrim: mayTrim, fua: fua, fastZero: fastZero)
    }
    open func extents(offset: UInt64, length: UInt32, reqOne: Bool) throws -> [Extent] {
        try next.extents(offset: offset, length: length, reqOne: reqOne)
    }
    open func cache(offset: UInt64, length: UInt32) throws { try next.cache(offset: offset, length: length) }
    open func close() { next.close() }
}

/// A filter at server level: by default it passes everything through to `next`.
open class PassthroughFilter: Backend, @unchecked Sendable {
    public let next: any Backend
    open var name: String { "filter" }

    public init(next: any Backend) { self.next = next }

    open var threadModel: ThreadModel { next.threadModel }
    open func getReady() throws { try next.getReady() }
    open func afterFork() throws { try next.afterFork() }
    open func listExports(readonly: Bool, isTLS: Bool) throws -> [ExportInfo] {
        try next.listExports(readonly: readonly, isTLS: isTLS)
    }
    open func defaultExport(readonly: Bool, isTLS: Bool) throws -> String {
        try next.defaultExport(readonly: readonly, isTLS: isTLS)
    }
    open func open(_ request: OpenRequest) throws -> any BackendConnection {
        try next.open(request)
    }
}
