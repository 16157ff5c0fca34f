import Glibc
import Synchronization
import CNBDShim
import NBDServer

/// `--filter=exitwhen`: once an event happens (a file appears or disappears, a pipe closes, a
/// process exits, a script says so), new clients are refused and the server exits as soon as
/// the clients already connected have gone. Events are checked every `exitwhen-poll` seconds
/// (default 60) and whenever a client connects.
final class ExitWhenFilter: PassthroughFilter, @unchecked Sendable {
    enum Event: CustomStringConvertible {
        case fileCreated(String)
        case fileDeleted(String)
        case pipeClosed(Int32)
        case processExits(pid_t)
        case script(String)

        var description: String {
            switch self {
            case .fileCreated(let f): "exit-when-file-created=\(f)"
            case .fileDeleted(let f): "exit-when-file-deleted=\(f)"
            case .pipeClosed(let fd): "exit-when-pipe-closed=\(fd)"
            case .processExits(let pid): "exit-when-process-exits=\(pid)"
            case .script(let s): "exit-when-script=\(s)"
            }
        }

        /// Whether the event has happened.
        func happened() -> Bool {
            switch self {
            case .fileCreated(let path): return access(path, F_OK) == 0
            case .fileDeleted(let path): return access(path, F_OK) != 0
            case .pipeClosed(let fd):
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 0) >= 0 else { return true }
                return p.revents & Int16(POLLHUP | POLLERR | POLLNVAL) != 0
            case .processExits(let pid):
                return kill(pid, 0) == -1 && CNBDShim_errno() == ESRCH
            case .script(let script):
                // As nbdkit: exit status 88 means the event happened.
                return runScript(script) == 88
            }
        }
    }

    private let events: [Event]
    private let interval: UInt32
    private let control: ServerControl
    private let fired = Atomic<Bool>(false)

    init(next: any Backend, events: [Event], interval: UInt32, control: ServerControl) {
        self.events = events
        self.interval = interval
        self.control = control
        super.init(next: next)
    }

    override var name: String { next.name }

    /// The polling thread starts only now, after any fork into the background.
    override func afterFork() throws {
        try next.afterFork()
        if check() { return }
        try JoinableThread { [self] in
            while !check() { sleep(interval) }
        }.detach()
    }

    override func open(_ request: OpenRequest) throws -> any BackendConnection {
        if check() { throw BackendError(.eshutdown, "exitwhen: nbdkit is exiting: rejecting new connection") }
        return try next.open(request)
    }

    /// Checks every event; on the first that happened, starts draining the server. Returns whether one has.
    private func check() -> Bool {
        if fired.load(ordering: .relaxed) { return true }
        guard let event = events.first(where: { $0.happened() }) else { return false }
        if fired.exchange(true, ordering: .relaxed) == false {
            control.drain()
            _ = event
        }
        return true
    }
}

/// Runs `script` with /bin/sh, without handing it the terminal, and returns its exit status
/// (-1 if it could not run).
private func runScript(_ script: String) -> Int32 {
    guard let captive = try? CaptiveCommand.spawn(script: script, takeTerminal: false) else { return -1 }
    return shellStatus(captive.wait()).status
}

extension ExitWhenFilter: FilterFactory {
    static let name = "exitwhen"
    static let configHelp = """
    exit-when-file-created=FILE    Exit when FILE is created.
    exit-when-file-deleted=FILE    Exit when FILE is deleted.
    exit-when-pipe-closed=FD       Exit when pipe FD is closed.
    exit-when-process-exits=PID    Exit when process PID exits.
    exit-when-script=SCRIPT        Exit when SCRIPT exits with status 88.
    exitwhen-poll=SECS             Seconds between checks (default 60).
    """

    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend {
        var events: [Event] = []
        events += parameters.takeAll("exit-when-file-created").map { .fileCreated($0) }
        events += parameters.takeAll("exit-when-file-deleted").map { .fileDeleted($0) }
        for fd in parameters.takeAll("exit-when-pipe-closed") {
            guard let n = Int32(fd), n >= 0 else { throw ConfigError("exitwhen: could not parse exit-when-pipe-closed=\(fd)") }
            events.append(.pipeClosed(n))
        }
        for pid in parameters.takeAll("exit-when-process-exits") {
            guard let n = Int32(pid), n > 0 else { throw ConfigError("exitwhen: could not parse exit-when-process-exits=\(pid)") }
            events.append(.processExits(n))
        }
        events += parameters.takeAll("exit-when-script").map { .script($0) }
        var interval: UInt32 = 60
        if let poll = parameters.take("exitwhen-poll") {
            guard let n = UInt32(poll), n > 0 else { throw ConfigError("exitwhen: could not parse exitwhen-poll=\(poll)") }
            interval = n
        }
        return ExitWhenFilter(next: next, events: events, interval: interval, control: control)
    }
}
