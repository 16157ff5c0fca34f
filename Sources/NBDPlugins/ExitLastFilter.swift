import NBDServer

/// `--filter=exitlast`: the server exits when the last client disconnects.
final class ExitLastFilter: PassthroughFilter, @unchecked Sendable {
    override var name: String { next.name }
}

extension ExitLastFilter: FilterFactory {
    static let name = "exitlast"
    static let configHelp = ""

    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend {
        control.onLastConnectionClosed { control.requestShutdown() }
        return ExitLastFilter(next: next)
    }
}
