/// A decoded transmission request header. The command is kept raw so that an
/// unknown command can still be answered with EINVAL.
public struct RequestHeader: Equatable, Sendable {
    public var flags: CommandFlags
    public var rawCommand: UInt16
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(flags: CommandFlags, rawCommand: UInt16, cookie: UInt64, offset: UInt64, length: UInt32) {
        self.flags = flags
        self.rawCommand = rawCommand
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    public var command: Command? { Command(rawValue: rawCommand) }

    /// Decodes the 28-byte header; throws `.badMagic` when it does not start with the request magic.
    public init(decoding b: UnsafeRawBufferPointer) throws(NBDDecodeError) {
        guard b.count >= NBDSize.requestHeader else { throw .truncated }
        guard b.loadBigEndian(fromByteOffset: 0, as: UInt32.self) == NBDMagic.request else { throw .badMagic }
        flags = CommandFlags(rawValue: b.loadBigEndian(fromByteOffset: 4, as: UInt16.self))
        rawCommand = b.loadBigEndian(fromByteOffset: 6, as: UInt16.self)
        cookie = b.loadBigEndian(fromByteOffset: 8, as: UInt64.self)
        offset = b.loadBigEndian(fromByteOffset: 16, as: UInt64.self)
        length = b.loadBigEndian(fromByteOffset: 24, as: UInt32.self)
    }

    /// Encodes the header into the first 28 bytes of `b` (used by tests and clients).
    public func encode(into b: UnsafeMutableRawBufferPointer) {
        precondition(b.count >= NBDSize.requestHeader)
        b.storeBigEndian(NBDMagic.request, toByteOffset: 0)
        b.storeBigEndian(flags.rawValue, toByteOffset: 4)
        b.storeBigEndian(rawCommand, toByteOffset: 6)
        b.storeBigEndian(cookie, toByteOffset: 8)
        b.storeBigEndian(offset, toByteOffset: 16)
        b.storeBigEndian(length, toByteOffset: 24)
    }
}

/// In-place encoders for replies, writing into caller-owned buffers.
public enum Reply {
    /// Writes a 16-byte simple reply header into `b`.
    @inline(__always)
    public static func encodeSimpleHeader(into b: UnsafeMutableRawBufferPointer, error: UInt32, cookie: UInt64) {
        precondition(b.count >= NBDSize.simpleReplyHeader)
        b.storeBigEndian(NBDMagic.simpleReply, toByteOffset: 0)
        b.storeBigEndian(error, toByteOffset: 4)
        b.storeBigEndian(cookie, toByteOffset: 8)
    }

    /// Writes a 20-byte structured reply chunk header into `b`.
    @inline(__always)
    public static func encodeStructuredHeader(into b: UnsafeMutableRawBufferPointer, flags: ReplyFlags,
                                              type: ReplyType, cookie: UInt64, length: UInt32) {
        precondition(b.count >= NBDSize.structuredReplyHeader)
        b.storeBigEndian(NBDMagic.structuredReply, toByteOffset: 0)
        b.storeBigEndian(flags.rawValue, toByteOffset: 4)
        b.storeBigEndian(type.rawValue, toByteOffset: 6)
        b.storeBigEndian(cookie, toByteOffset: 8)
        b.storeBigEndian(length, toByteOffset: 16)
    }

    /// A complete NBD_REPLY_TYPE_ERROR (or ERROR_OFFSET, when `offset` is given) chunk with the DONE flag.
    public static func structuredError(cookie: UInt64, error: NBDErrno, message: String, offset: UInt64? = nil) -> [UInt8] {
        let msg = Array(message.utf8.prefix(4096))
        let payloadLength = 6 + msg.count + (offset == nil ? 0 : 8)
        var bytes = [UInt8](repeating: 0, count: NBDSize.structuredReplyHeader + payloadLength)
        bytes.withUnsafeMutableBytes { b in
            encodeStructuredHeader(into: b, flags: .done, type: offset == nil ? .error : .errorOffset,
                                   cookie: cookie, length: UInt32(payloadLength))
            b.storeBigEndian(error.rawValue, toByteOffset: 20)
            b.storeBigEndian(UInt16(msg.count), toByteOffset: 24)
            for (i, c) in msg.enumerated() { b[26 + i] = c }
            if let offset { b.storeBigEndian(offset, toByteOffset: 26 + msg.count) }
        }
        return bytes
    }

    /// A complete NBD_REPLY_TYPE_BLOCK_STATUS chunk with the DONE flag.
    public static func blockStatus(cookie: UInt64, contextID: UInt32, extents: [(length: UInt32, flags: AllocationFlags)]) -> [UInt8] {
        let payloadLength = 4 + 8 * extents.count
        var bytes = [UInt8](repeating: 0, count: NBDSize.structuredReplyHeader + payloadLength)
        bytes.withUnsafeMutableBytes { b in
            encodeStructuredHeader(into: b, flags: .done, type: .blockStatus, cookie: cookie, length: UInt32(payloadLength))
            b.storeBigEndian(contextID, toByteOffset: 20)
            for (i, e) in extents.enumerated() {
                b.storeBigEndian(e.length, toByteOffset: 24 + 8 * i)
                b.storeBigEndian(e.flags.rawValue, toByteOffset: 28 + 8 * i)
            }
        }
        return bytes
    }
}
