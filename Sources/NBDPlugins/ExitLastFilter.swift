import Synchronization
import NBDServer

/// `--filter=exitlast`: the server exits when the last client that opened an export closes it.
/// As in nbdkit, only clients that opened an export count (NBD_OPT_GO, NBD_OPT_INFO or
/// NBD_OPT_EXPORT_NAME): one that connects and leaves, or idles in negotiation, neither ends
/// the server nor keeps it running.
final class ExitLastFilter: PassthroughFilter, @unchecked Sendable {
    private let control: ServerControl
    private let opened = Atomic<Int>(0)

    init(next: any Backend, control: ServerControl) {
        self.control = control
        super.init(next: next)
    }

    override var name: String { next.name }

    override func open(_ request: OpenRequest) throws -> any BackendConnection {
        let connection = try next.open(request)
        opened.wrappingAdd(1, ordering: .relaxed)
        return WatchedConnection(next: connection) { [self] in
            if opened.wrappingSubtract(1, ordering: .relaxed).newValue == 0 { control.requestShutdown() }
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
