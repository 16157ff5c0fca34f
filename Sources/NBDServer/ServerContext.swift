import Synchronization
import NBDProtocol

/// Which handshake the server speaks.
public enum HandshakeStyle: Sendable {
    case newstyle, oldstyle
}

/// What every connection of one server shares: the backend chain, settings and locks.
public final class ServerContext: Sendable {
    public let backend: any Backend
    public let logger: Logger
    /// `-r`: every export is read-only.
    public let readonly: Bool
    /// `-t`: the most requests served at once on one connection.
    public let threads: Int
    public let style: HandshakeStyle
    /// The global flags a newstyle greeting offers (`--mask-handshake` clears some).
    public let handshakeFlags: HandshakeFlags
    /// False under `--no-sr`: NBD_OPT_STRUCTURED_REPLY is declined.
    public let offersStructuredReplies: Bool
    /// The chain's effective thread model.
    public let threadModel: ThreadModel
    public let tls: TLSSettings
    /// Held around every backend call under serialize_all_requests.
    let allRequestsLock = Lock()
    /// Held for a whole connection under serialize_connections.
    let connectionsLock = Lock()
    /// Set once shutdown begins: negotiation answers every option with NBD_REP_ERR_SHUTDOWN, and
    /// every request read from then on gets ESHUTDOWN (requests in flight finish normally).
    let shuttingDown = Atomic<Bool>(false)
    /// How many connections' readers may poll for input at once.
    let pollingAllowance = PollingAllowance()

    public init(backend: any Backend, logger: Logger, readonly: Bool, threads: Int, style: HandshakeStyle,
                tls: TLSSettings = .off, handshakeFlags: HandshakeFlags = [.fixedNewstyle, .noZeroes],
                offersStructuredReplies: Bool = true) {
        self.tls = tls
        self.handshakeFlags = handshakeFlags
        self.offersStructuredReplies = offersStructuredReplies
        self.backend = backend
        self.logger = logger
        self.readonly = readonly
        self.threads = max(1, threads)
        self.style = style
        self.threadModel = backend.threadModel
    }
}
