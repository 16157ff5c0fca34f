import NBDServer

/// `--filter=noextents`: hides the backend's extents, so every block reads as allocated data.
final class NoExtentsFilter: PassthroughFilter, @unchecked Sendable {
    override var name: String { next.name }

    override func open(_ request: OpenRequest) throws -> any BackendConnection {
        Connection(next: try next.open(request))
    }

    final class Connection: PassthroughConnection, @unchecked Sendable {
        override func canExtents() throws -> Bool { false }
    }
}

extension NoExtentsFilter: FilterFactory {
    static let name = "noextents"
    static let configHelp = ""

    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend {
        NoExtentsFilter(next: next)
    }
}
