import NBDProtocol

/// What negotiation settled for one connection: the open export and what it can do.
struct Session: Sendable {
    let backend: any BackendConnection
    let exportName: String
    let size: UInt64
    let flags: TransmissionFlags
    let readonly: Bool
    let fua: FUASupport
    let canZero: Bool
    let canExtents: Bool
    let canCache: Bool
    let structuredReplies: Bool
    /// The id of `base:allocation` when the client selected it.
    let allocationContextID: UInt32?

    /// Opens `exportName` on the backend and works out the transmission flags.
    /// The caller owns the returned session and must `close()` its backend.
    static func open(server: ServerContext, exportName: String, structuredReplies: Bool,
                     allocationContextID: UInt32?, isTLS: Bool, transport: any Transport) throws -> Session {
        let backend = try server.backend.open(OpenRequest(readonly: server.readonly, exportName: exportName, isTLS: isTLS,
                                                          clientGone: { [weak transport] in transport?.peerHungUp() ?? true }))
        do {
            let size = try backend.size()
            let readonly = try server.readonly || !backend.canWrite()
            var flags: TransmissionFlags = [.hasFlags]
            let canFlush = try backend.canFlush()
            if canFlush { flags.insert(.sendFlush) }
            if try backend.isRotational() { flags.insert(.rotational) }
            if try backend.canMultiConn() { flags.insert(.canMultiConn) }
            let canCache = try backend.canCache()
            if canCache { flags.insert(.sendCache) }
            if structuredReplies { flags.insert(.sendDF) }
            var fua = FUASupport.none
            var canZero = false
            if readonly {
                flags.insert(.readOnly)
            } else {
                fua = try backend.canFUA()
                if fua == .emulate && !canFlush { fua = .none }
                if fua != .none { flags.insert(.sendFUA) }
                if try backend.canTrim() { flags.insert(.sendTrim) }
                // WRITE_ZEROES is always offered on a writable export: emulated with writes if need be.
                flags.insert(.sendWriteZeroes)
                canZero = try backend.canZero()
                if try backend.canFastZero() { flags.insert(.sendFastZero) }
            }
            return Session(backend: backend, exportName: exportName, size: size, flags: flags, readonly: readonly,
                           fua: fua, canZero: canZero, canExtents: try backend.canExtents(), canCache: canCache,
                           structuredReplies: structuredReplies, allocationContextID: allocationContextID)
        } catch {
            backend.close()
            throw error
        }
    }
}
