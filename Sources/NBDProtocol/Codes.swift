/// Negotiation options a client may send.
public enum OptionCode: UInt32, Sendable {
    case exportName = 1
    case abort = 2
    case list = 3
    case peekExport = 4
    case startTLS = 5
    case info = 6
    case go = 7
    case structuredReply = 8
    case listMetaContext = 9
    case setMetaContext = 10
    case extendedHeaders = 11
}

extension OptionCode {
    /// The protocol's name of the option, for log lines.
    public var name: String {
        switch self {
        case .exportName: "NBD_OPT_EXPORT_NAME"
        case .abort: "NBD_OPT_ABORT"
        case .list: "NBD_OPT_LIST"
        case .peekExport: "NBD_OPT_PEEK_EXPORT"
        case .startTLS: "NBD_OPT_STARTTLS"
        case .info: "NBD_OPT_INFO"
        case .go: "NBD_OPT_GO"
        case .structuredReply: "NBD_OPT_STRUCTURED_REPLY"
        case .listMetaContext: "NBD_OPT_LIST_META_CONTEXT"
        case .setMetaContext: "NBD_OPT_SET_META_CONTEXT"
        case .extendedHeaders: "NBD_OPT_EXTENDED_HEADERS"
        }
    }
}

/// Option reply types; the ones with bit 31 set are errors.
public enum OptionReplyType: UInt32, Sendable {
    case ack = 1
    case server = 2
    case info = 3
    case metaContext = 4
    case errUnsup = 0x8000_0001
    case errPolicy = 0x8000_0002
    case errInvalid = 0x8000_0003
    case errPlatform = 0x8000_0004
    case errTLSReqd = 0x8000_0005
    case errUnknown = 0x8000_0006
    case errShutdown = 0x8000_0007
    case errBlockSizeReqd = 0x8000_0008
    case errTooBig = 0x8000_0009
}

/// Information items of NBD_OPT_INFO and NBD_OPT_GO.
public enum InfoType: UInt16, Sendable {
    case export = 0
    case name = 1
    case description = 2
    case blockSize = 3
}

/// Transmission commands.
public enum Command: UInt16, Sendable {
    case read = 0
    case write = 1
    case disconnect = 2
    case flush = 3
    case trim = 4
    case cache = 5
    case writeZeroes = 6
    case blockStatus = 7
}

/// Structured reply chunk types.
public enum ReplyType: UInt16, Sendable {
    case none = 0
    case offsetData = 1
    case offsetHole = 2
    case blockStatus = 5
    case error = 0x8001
    case errorOffset = 0x8002
}

/// Error values carried in replies. The protocol fixes these numbers; they equal Linux's errno values.
public enum NBDErrno: UInt32, Error, Sendable {
    case eperm = 1
    case eio = 5
    case enomem = 12
    case einval = 22
    case enospc = 28
    case eoverflow = 75
    case enotsup = 95
    case eshutdown = 108

    /// Maps a Linux errno to the nearest value the protocol allows, as nbdkit does.
    public init(systemErrno: Int32) {
        switch systemErrno {
        case 1, 13, 30: self = .eperm          // EPERM, EACCES, EROFS
        case 12: self = .enomem
        case 22, 7: self = .einval             // EINVAL, E2BIG
        case 27, 28, 122: self = .enospc       // EFBIG, ENOSPC, EDQUOT
        case 75: self = .eoverflow
        case 95, 38: self = .enotsup           // ENOTSUP/EOPNOTSUPP, ENOSYS
        case 108: self = .eshutdown
        default: self = .eio
        }
    }

    /// The name used in log messages.
    public var name: String {
        switch self {
        case .eperm: "EPERM"
        case .eio: "EIO"
        case .enomem: "ENOMEM"
        case .einval: "EINVAL"
        case .enospc: "ENOSPC"
        case .eoverflow: "EOVERFLOW"
        case .enotsup: "ENOTSUP"
        case .eshutdown: "ESHUTDOWN"
        }
    }
}
