import Synchronization
import NBDServer

/// `--filter=exitlast`: the server exits when the last client that opened an export has gone.
/// As in nbdkit, only clients that opened an export count (NBD_OPT_GO, NBD_OPT_INFO or
/// NBD_OPT_EXPORT_NAME): one that connects and leaves, or idles in negotiation, neither ends
/// the server nor keeps it running. The check is made as each client's connection ends, not as
/// an export closes, so a client that asks NBD_OPT_INFO and then NBD_OPT_GO (as `nbdinfo`
/// does) is served in between, as nbdkit serves it.
final class ExitLastFilter: PassthroughFilter, @unchecked Sendable {
    /// What the control's observer needs, apart from the filter: the observer, which the control
    /// keeps, holds neither the filter (whose chain may hold the control) nor the control.
    private final class Clients: Sendable {
        let opened = Atomic<Int>(0)
        /// Whether any client has opened an export: the server never exits before that.
        let armed = Atomic<Bool>(false)
        /// The connection count last seen, to tell a connection that ended from one that began.
        let connections = Atomic<Int>(0)
    }
    private let clients = Clients()

    init(next: any Backend, control: ServerControl) {
        super.init(next: next)
        control.onConnectionCountChanged { [clients, unowned control] count in
            let ended = count < clients.connections.exchange(count, ordering: .relaxed)
            if ended && clients.armed.load(ordering: .relaxed) && clients.opened.load(ordering: .relaxed) == 0 {
                control.requestShutdown()
            }
        }
    }

    override var name: String { next.name }

    override func open(_ request: OpenRequest) throws -> any BackendConnection {
        let connection = try next.open(request)
        clients.opened.wrappingAdd(1, ordering: .relaxed)
        clients.armed.store(true, ordering: .relaxed)
        return WatchedConnection(next: connection) { [clients] in
            clients.opened.wrappingSubtract(1, ordering: .relaxed)
        }
    }
}

extension ExitLastFilter: FilterFactory {
    static let name = "exitlast"
    static let configHelp = ""

    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend {
        ExitLastFilter(next: next, control: control)
    }
}
