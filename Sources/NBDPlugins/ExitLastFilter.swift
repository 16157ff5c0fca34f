import Synchronization
import NBDServer

/// `--filter=exitlast`: the server exits when the last client that opened an export has gone.
/// As in nbdkit, only clients that opened an export count (NBD_OPT_GO, NBD_OPT_INFO or
/// NBD_OPT_EXPORT_NAME): one that connects and leaves, or idles in negotiation, neither ends
/// the server nor keeps it running. The check is made as each client's connection ends, not as
/// an export closes, so a client that asks NBD_OPT_INFO and then NBD_OPT_GO (as `nbdinfo`
/// does) is served in between, as nbdkit serves it.
final class ExitLastFilter: PassthroughFilter, @unchecked Sendable {
    private let opened = Atomic<Int>(0)
    /// Whether any client has opened an export: the server never exits before that.
    private let armed = Atomic<Bool>(false)
    /// The connection count last seen, to tell a connection that ended from one that began.
    private let connections = Atomic<Int>(0)

    init(next: any Backend, control: ServerControl) {
        super.init(next: next)
        // (The control keeps this observer, so the observer does not keep the control.)
        control.onConnectionCountChanged { [self, unowned control] count in
            let ended = count < connections.exchange(count, ordering: .relaxed)
            if ended && armed.load(ordering: .relaxed) && opened.load(ordering: .relaxed) == 0 {
                control.requestShutdown()
            }
        }
    }

    override var name: String { next.name }

    override func open(_ request: OpenRequest) throws -> any BackendConnection {
        let connection = try next.open(request)
        opened.wrappingAdd(1, ordering: .relaxed)
        armed.store(true, ordering: .relaxed)
        return WatchedConnection(next: connection) { [self] in
            opened.wrappingSubtract(1, ordering: .relaxed)
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
