/// Encoding and decoding of handshake and option-haggling messages.
public enum Negotiation {
    /// The newstyle greeting: NBDMAGIC, IHAVEOPT and the handshake flags (18 bytes).
    public static func newstyleGreeting(_ flags: HandshakeFlags) -> [UInt8] {
        var w = ByteWriter(capacity: 18)
        w.u64(NBDMagic.nbdMagic)
        w.u64(NBDMagic.ihaveopt)
        w.u16(flags.rawValue)
        return w.bytes
    }

    /// The whole oldstyle greeting for one export (152 bytes).
    public static func oldstyleGreeting(size: UInt64, flags: TransmissionFlags) -> [UInt8] {
        var w = ByteWriter(capacity: 152)
        w.u64(NBDMagic.nbdMagic)
        w.u64(NBDMagic.oldstyle)
        w.u64(size)
        w.u32(UInt32(flags.rawValue))
        w.zeroes(124)
        return w.bytes
    }

    /// Decodes the 16-byte header of a client option: IHAVEOPT, option, payload length.
    public static func decodeOptionHeader(_ b: UnsafeRawBufferPointer) throws(NBDDecodeError) -> (option: UInt32, length: UInt32) {
        guard b.count >= NBDSize.optionHeader else { throw .truncated }
        guard b.loadBigEndian(fromByteOffset: 0, as: UInt64.self) == NBDMagic.ihaveopt else { throw .badMagic }
        return (b.loadBigEndian(fromByteOffset: 8, as: UInt32.self), b.loadBigEndian(fromByteOffset: 12, as: UInt32.self))
    }

    /// One option reply: magic, the option it answers, reply type, payload.
    public static func optionReply(option: UInt32, type: OptionReplyType, payload: [UInt8] = []) -> [UInt8] {
        var w = ByteWriter(capacity: NBDSize.optionReplyHeader + payload.count)
        w.u64(NBDMagic.optionReply)
        w.u32(option)
        w.u32(type.rawValue)
        w.u32(UInt32(payload.count))
        w.append(payload)
        return w.bytes
    }

    /// The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless NO_ZEROES.
    public static func exportNameReply(size: UInt64, flags: TransmissionFlags, noZeroes: Bool) -> [UInt8] {
        var w = ByteWriter(capacity: 134)
        w.u64(size)
        w.u16(flags.rawValue)
        if !noZeroes { w.zeroes(124) }
        return w.bytes
    }

    /// NBD_REP_SERVER payload for NBD_OPT_LIST: the name, then the optional description.
    public static func serverReplyPayload(name: String, description: String) -> [UInt8] {
        var w = ByteWriter()
        w.u32(UInt32(name.utf8.count))
        w.append(name.utf8)
        w.append(description.utf8)
        return w.bytes
    }

    /// NBD_INFO_EXPORT payload.
    public static func infoExport(size: UInt64, flags: TransmissionFlags) -> [UInt8] {
        var w = ByteWriter(capacity: 12)
        w.u16(InfoType.export.rawValue)
        w.u64(size)
        w.u16(flags.rawValue)
        return w.bytes
    }

    /// NBD_INFO_NAME or NBD_INFO_DESCRIPTION payload.
    public static func infoString(_ type: InfoType, _ text: String) -> [UInt8] {
        var w = ByteWriter()
        w.u16(type.rawValue)
        w.append(text.utf8)
        return w.bytes
    }

    /// NBD_INFO_BLOCK_SIZE payload.
    public static func infoBlockSize(minimum: UInt32, preferred: UInt32, maximum: UInt32) -> [UInt8] {
        var w = ByteWriter(capacity: 14)
        w.u16(InfoType.blockSize.rawValue)
        w.u32(minimum)
        w.u32(preferred)
        w.u32(maximum)
        return w.bytes
    }

    /// NBD_REP_META_CONTEXT payload: the context id and its name.
    public static func metaContextPayload(id: UInt32, name: String) -> [UInt8] {
        var w = ByteWriter()
        w.u32(id)
        w.append(name.utf8)
        return w.bytes
    }

    /// The payload of NBD_OPT_INFO and NBD_OPT_GO: an export name and the info items asked for.
    public struct InfoRequest: Equatable, Sendable {
        public var exportName: String
        public var requests: [UInt16]

        public init(exportName: String, requests: [UInt16]) {
            self.exportName = exportName
            self.requests = requests
        }

        public init(decoding payload: [UInt8]) throws(NBDDecodeError) {
            var r = ByteReader(payload)
            exportName = try r.string32()
            let n = try r.u16()
            requests = []
            for _ in 0..<n { requests.append(try r.u16()) }
            guard r.remaining == 0 else { throw .trailingBytes }
        }
    }

    /// The payload of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
    public struct MetaContextRequest: Equatable, Sendable {
        public var exportName: String
        public var queries: [String]

        public init(exportName: String, queries: [String]) {
            self.exportName = exportName
            self.queries = queries
        }

        public init(decoding payload: [UInt8]) throws(NBDDecodeError) {
            var r = ByteReader(payload)
            exportName = try r.string32()
            let n = try r.u32()
            // Each query needs at least its 4-byte length, which bounds n by the payload.
            guard Int(n) <= r.remaining / 4 else { throw .truncated }
            queries = []
            for _ in 0..<n { queries.append(try r.string32()) }
            guard r.remaining == 0 else { throw .trailingBytes }
        }
    }
}
