import NBDProtocol

/// A client broke the handshake rules badly enough that the connection must end.
struct HandshakeError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The server side of the NBD handshake for one connection.
struct Handshake {
    let server: ServerContext
    /// The connection's transport; replaced by a TLS transport after STARTTLS.
    private(set) var transport: any Transport
    let label: String
    private var isTLS = false

    init(server: ServerContext, transport: any Transport, label: String) {
        self.server = server
        self.transport = transport
        self.label = label
    }

    /// The context id given to `base:allocation`.
    static let allocationContextID: UInt32 = 1
    static let allocationContext = "base:allocation"

    /// Runs the oldstyle or newstyle handshake. Returns the session to serve, or nil when the
    /// client ended negotiation cleanly (NBD_OPT_ABORT, or EOF between options).
    mutating func run() throws -> Session? {
        switch server.style {
        case .oldstyle: return try oldstyle()
        case .newstyle: return try newstyle()
        }
    }

    private func oldstyle() throws -> Session {
        let exportName = try server.backend.defaultExport(readonly: server.readonly, isTLS: false)
        let session = try Session.open(server: server, exportName: exportName, structuredReplies: false,
                                       allocationContextID: nil, isTLS: false, transport: transport)
        do {
            try transport.send(Negotiation.oldstyleGreeting(size: session.size, flags: session.flags))
        } catch {
            session.backend.close()
            throw error
        }
        return session
    }

    private mutating func newstyle() throws -> Session? {
        let offered = server.handshakeFlags
        try transport.send(Negotiation.newstyleGreeting(offered))
        let clientFlags = ClientFlags(rawValue: try readU32())
        guard ClientFlags(rawValue: UInt32(offered.rawValue)).isSuperset(of: clientFlags) else {
            throw HandshakeError("client requested unexpected flags 0x\(String(clientFlags.rawValue, radix: 16))")
        }
        let noZeroes = clientFlags.contains(.noZeroes)
        let fixedNewstyle = clientFlags.contains(.fixedNewstyle)
        var structuredReplies = false
        var metaContext: (exportName: String, id: UInt32)? = nil

        for _ in 0..<NBDSize.maxOptions {
            let headerBytes: [UInt8]
            do {
                headerBytes = try transport.receive(count: NBDSize.optionHeader)
            } catch TransportError.endOfFile {
                server.logger.debug(in: label, "client closed the connection during negotiation")
                return nil
            }
            let (option, length) = try headerBytes.withUnsafeBytes { b throws(NBDDecodeError) in
                try Negotiation.decodeOptionHeader(b)
            }
            guard length <= NBDSize.maxOption else {
                throw HandshakeError("option \(option) payload of \(length) bytes is too long")
            }
            let payload = try transport.receive(count: Int(length))
            let code = OptionCode(rawValue: option)
            server.logger.debug(in: label, "newstyle negotiation: \(code?.name ?? "option \(option)") length \(length)")

            let transport = self.transport
            func reply(_ type: OptionReplyType, _ data: [UInt8] = []) throws {
                try transport.send(Negotiation.optionReply(option: option, type: type, payload: data))
            }

            // A client without fixed newstyle can't read option replies: it may only choose an export.
            if !fixedNewstyle && code != .exportName {
                throw HandshakeError("client without fixed newstyle sent option \(option); only NBD_OPT_EXPORT_NAME is allowed")
            }

            // A server shutting down negotiates no further (doc/proto.md, NBD_REP_ERR_SHUTDOWN).
            if server.shuttingDown.load(ordering: .relaxed) {
                if code == .exportName { throw HandshakeError("server is shutting down") }
                try? reply(code == .abort ? .ack : .errShutdown)
                server.logger.debug(in: label, "negotiation ended: server is shutting down")
                return nil
            }

            // Under --tls=require nothing but STARTTLS and ABORT is allowed before TLS.
            if server.tls.mode == .require && !isTLS && code != .startTLS && code != .abort {
                if code == .exportName {
                    throw HandshakeError("client sent NBD_OPT_EXPORT_NAME before TLS, which is required")
                }
                try reply(.errTLSReqd)
                continue
            }

            switch code {
            case .exportName:
                // As in NBD_OPT_INFO and NBD_OPT_GO (and nbdkit): no name over 4096 bytes.
                guard payload.count <= NBDSize.maxString else { throw HandshakeError("export name too long") }
                let name = try utf8(payload[...])
                // A meta context set for this export applies (proto.md: "NBD_OPT_GO (or
                // NBD_OPT_EXPORT_NAME)"), as with NBD_OPT_GO.
                let session = try Session.open(server: server, exportName: try resolve(name),
                                               structuredReplies: structuredReplies,
                                               allocationContextID: metaContext.flatMap { $0.exportName == name ? $0.id : nil },
                                               isTLS: isTLS, transport: transport)
                do {
                    try transport.send(Negotiation.exportNameReply(size: session.size, flags: session.flags,
                                                                   noZeroes: noZeroes))
                } catch {
                    session.backend.close()
                    throw error
                }
                return session

            case .abort:
                try? reply(.ack)
                return nil

            case .list:
                guard payload.isEmpty else { try reply(.errInvalid); continue }
                let exports: [ExportInfo]
                do {
                    exports = try server.backend.listExports(readonly: server.readonly, isTLS: isTLS)
                } catch {
                    server.logger.error(in: label, "list_exports: \(error)")
                    try reply(.errPlatform)
                    continue
                }
                for e in exports {
                    try reply(.server, Negotiation.serverReplyPayload(name: e.name, description: e.description))
                }
                try reply(.ack)

            case .startTLS:
                guard payload.isEmpty, !isTLS else { try reply(.errInvalid); continue }
                guard server.tls.mode != .off, let descriptors = transport.upgradableDescriptors else {
                    try reply(.errPolicy)
                    continue
                }
                try reply(.ack)
                let tls = try TLSTransport(readFD: descriptors.read, writeFD: descriptors.write, settings: server.tls)
                server.logger.debug(in: label, "TLS established: \(tls.sessionDescription)")
                self.transport = tls
                useDefaultSendBufferForTLS(descriptors.write)
                isTLS = true
                // Nothing negotiated in plaintext survives the upgrade.
                structuredReplies = false
                metaContext = nil

            case .structuredReply:
                // (A payload is invalid first, as nbdkit checks, even where the option is unsupported.)
                guard payload.isEmpty else { try reply(.errInvalid); continue }
                guard server.offersStructuredReplies else { try reply(.errUnsup); continue }
                guard !structuredReplies else { try reply(.errInvalid); continue }
                structuredReplies = true
                try reply(.ack)

            case .info, .go:
                let request: Negotiation.InfoRequest
                do {
                    request = try Negotiation.InfoRequest(decoding: payload)
                } catch {
                    try reply(.errInvalid)
                    continue
                }
                let name: String
                let session: Session
                do {
                    name = try resolve(request.exportName)
                    let contextID = metaContext.flatMap { $0.exportName == request.exportName ? $0.id : nil }
                    session = try Session.open(server: server, exportName: name, structuredReplies: structuredReplies,
                                               allocationContextID: contextID, isTLS: isTLS, transport: transport)
                } catch {
                    server.logger.error(in: label, "cannot open export '\(request.exportName)': \(error)")
                    // A backend that refuses because the server is on its way out (exitwhen)
                    // says so as the server itself would (NBD_REP_ERR_SHUTDOWN); a client may
                    // still ask again, or end the negotiation.
                    let shuttingDown = (error as? BackendError)?.errno == .eshutdown
                    try reply(shuttingDown ? .errShutdown : .errUnknown)
                    continue
                }
                do {
                    try reply(.info, Negotiation.infoExport(size: session.size, flags: session.flags))
                    // In the order the client asked, each kind once: nbdkit answers duplicates
                    // again, but one 64 KiB option could then ask for 30,000 replies.
                    var answered = Set<UInt16>()
                    for item in request.requests where answered.insert(item).inserted {
                        switch InfoType(rawValue: item) {
                        case .name: try reply(.info, Negotiation.infoString(.name, name))
                        case .description:
                            break  // no backend offers descriptions yet
                        case .blockSize:
                            try reply(.info, Negotiation.infoBlockSize(minimum: 1, preferred: 4096,
                                                                       maximum: NBDSize.maxRequest))
                        default: break
                        }
                    }
                    try reply(.ack)
                } catch {
                    session.backend.close()
                    throw error
                }
                if code == .go { return session }
                session.backend.close()

            case .listMetaContext, .setMetaContext:
                let request: Negotiation.MetaContextRequest
                do {
                    request = try Negotiation.MetaContextRequest(decoding: payload)
                } catch {
                    try reply(.errInvalid)
                    continue
                }
                guard structuredReplies else { try reply(.errInvalid); continue }
                let isSet = code == .setMetaContext
                let matches: Bool
                if request.queries.isEmpty {
                    matches = !isSet
                } else {
                    matches = request.queries.contains { q in
                        q == Handshake.allocationContext || (!isSet && (q == "base:" || q == "base:allocation"))
                    }
                }
                if isSet { metaContext = nil }
                if matches {
                    // A listing's context ID is reserved: zero (proto.md), as nbdkit sends.
                    try reply(.metaContext, Negotiation.metaContextPayload(id: isSet ? Handshake.allocationContextID : 0,
                                                                           name: Handshake.allocationContext))
                    if isSet { metaContext = (request.exportName, Handshake.allocationContextID) }
                }
                try reply(.ack)

            case .peekExport, .extendedHeaders, nil:
                try reply(.errUnsup)
            }
        }
        throw HandshakeError("client sent too many options")
    }

    /// Maps the empty export name to the backend's default export.
    private func resolve(_ name: String) throws -> String {
        name.isEmpty ? try server.backend.defaultExport(readonly: server.readonly, isTLS: isTLS) : name
    }

    private func readU32() throws -> UInt32 {
        let b = try transport.receive(count: 4)
        return b.withUnsafeBytes { $0.loadBigEndian(fromByteOffset: 0, as: UInt32.self) }
    }
}
