/// Magic numbers and sizes fixed by the NBD protocol (doc/proto.md of NetworkBlockDevice/nbd).
public enum NBDMagic {
    /// "NBDMAGIC": the first eight bytes a server sends.
    public static let nbdMagic: UInt64 = 0x4e42_444d_4147_4943
    /// "IHAVEOPT": newstyle negotiation, and the prefix of every client option.
    public static let ihaveopt: UInt64 = 0x4948_4156_454f_5054
    /// The oldstyle handshake's second magic.
    public static let oldstyle: UInt64 = 0x0000_4202_8186_1253
    /// Prefix of every option reply.
    public static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    /// Prefix of every transmission request.
    public static let request: UInt32 = 0x2560_9513
    /// Prefix of a simple reply.
    public static let simpleReply: UInt32 = 0x6744_6698
    /// Prefix of a structured reply chunk.
    public static let structuredReply: UInt32 = 0x668e_33ef
}

/// Fixed sizes of protocol messages, in bytes.
public enum NBDSize {
    public static let requestHeader = 28
    public static let simpleReplyHeader = 16
    public static let structuredReplyHeader = 20
    public static let optionHeader = 16
    public static let optionReplyHeader = 20
    /// The largest read or write payload the server accepts: 64 MiB, as nbdkit (and libnbd's
    /// own limit when a server advertises none).
    public static let maxRequest: UInt32 = 64 * 1024 * 1024
    /// The largest option payload the server reads during negotiation.
    public static let maxOption: UInt32 = 65536
    /// How many options one client may send before the server gives up on it.
    public static let maxOptions = 1024
    /// The longest export name or description the protocol allows.
    public static let maxString = 4096
}
