import Glibc
import Synchronization
import CNBDShim
import NBDServer

/// `--filter=exitwhen`: once an event happens (a file appears or disappears, a pipe closes, a
/// process exits, a script says so), new clients are refused and the server exits as soon as
/// the clients that opened an export have closed it (one idling in negotiation does not hold
/// it up). Events are checked whenever a client opens or closes an export, and every
/// `exit-when-poll` seconds (default 60) meanwhile.
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

        /// Whether the event has happened. A script that fails otherwise is logged, as nbdkit does.
        func happened(logger: Logger) -> Bool {
            switch self {
            case .fileCreated(let path): return access(path, F_OK) == 0
            case .fileDeleted(let path): return access(path, F_OK) != 0
            case .pipeClosed(let fd):
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 0) >= 0 else { return true }
                // As nbdkit: a descriptor that is not open counts as closed, and is said.
                if p.revents & Int16(POLLNVAL) != 0 { logger.error("exit-when-pipe-closed: invalid file descriptor") }
                return p.revents & Int16(POLLHUP | POLLERR | POLLNVAL) != 0
            case .processExits(let pid):
                return kill(pid, 0) == -1 && CNBDShim_errno() == ESRCH
            case .script(let script):
                // As nbdkit: exit status 88 means the event happened, 0 that it has not.
                guard let waitStatus = runScript(script) else {
                    logger.error("exit-when-script: the command could not be run")
                    return false
                }
                let (status, signal) = shellStatus(waitStatus)
                if let signal {
                    logger.error("exit-when-script: command was killed by signal \(signal)")
                } else if status != 0 && status != 88 {
                    logger.error("exit-when-script: command failed with exit code \(status)")
                }
                return signal == nil && status == 88
            }
        }
    }

    /// nbdkit's message for a client refused once an event has happened.
    static let rejection = "exitwhen: nbdkit is exiting: rejecting new connection"

    private let events: [Event]
    private let interval: UInt32
    private let control: ServerControl
    private let fired = Atomic<Bool>(false)
    /// Clients that opened an export and have not closed it.
    private let opened = Atomic<Int>(0)

    init(next: any Backend, events: [Event], interval: UInt32, control: ServerControl) {
        self.events = events
        self.interval = interval
        self.control = control
        super.init(next: next)
    }

    override var name: String { next.name }

    /// An event that has already happened drains the server before it starts, as in nbdkit.
    override func getReady() throws {
        try next.getReady()
        _ = check()
    }

    /// The polling thread starts only now, after any fork into the background.
    override func afterFork() throws {
        try next.afterFork()
        if check() { return }
        try JoinableThread { [self] in
            while !check() { sleep(interval) }
        }.detach()
    }

    override func open(_ request: OpenRequest) throws -> any BackendConnection {
        if check() { throw BackendError(.eshutdown, Self.rejection) }
        let connection = try next.open(request)
        opened.wrappingAdd(1, ordering: .relaxed)
        return WatchedConnection(next: connection) { [self] in
            let left = opened.wrappingSubtract(1, ordering: .relaxed).newValue
            if check() && left == 0 { control.requestShutdown() }
        }
    }

    /// Checks every event; on the first that happened, stops accepting clients and, if no client
    /// has an export open, shuts the server down. Returns whether an event has happened.
    private func check() -> Bool {
        if fired.load(ordering: .relaxed) { return true }
        guard events.contains(where: { $0.happened(logger: control.logger) }) else { return false }
        if fired.exchange(true, ordering: .relaxed) == false {
            control.drain(rejection: Self.rejection)
            if opened.load(ordering: .relaxed) == 0 { control.requestShutdown() }
        }
        return true
    }
}

/// Runs `script` with /bin/sh, without handing it the terminal, and returns its wait status
/// (nil if it could not be started).
private func runScript(_ script: String) -> Int32? {
    guard let captive = try? CaptiveCommand.spawn(script: script, takeTerminal: false) else { return nil }
    return captive.wait()
}

extension ExitWhenFilter: FilterFactory {
    static let name = "exitwhen"
    static let configHelp = """
    exit-when-file-created=FILE    Exit when FILE is created.
    exit-when-file-deleted=FILE    Exit when FILE is deleted.
    exit-when-pipe-closed=FD       Exit when pipe FD is closed.
    exit-when-process-exits=PID    Exit when process PID exits.
    exit-when-script=SCRIPT        Exit when SCRIPT exits with status 88.
    exit-when-poll=SECS            Seconds between checks while idle (default 60).
    """

    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend {
        var events: [Event] = []
        // Made absolute now, as nbdkit does: a background server moves to /.
        events += try parameters.takeAll("exit-when-file-created").map { .fileCreated(try absolutePath($0)) }
        events += try parameters.takeAll("exit-when-file-deleted").map { .fileDeleted(try absolutePath($0)) }
        // nbdkit's other spellings: exit-when-fd-closed, exit-when-pid-exits.
        for fd in parameters.takeAll("exit-when-pipe-closed") + parameters.takeAll("exit-when-fd-closed") {
            guard let n = Int32(fd), n >= 0 else { throw ConfigError("exitwhen: could not parse exit-when-pipe-closed=\(fd)") }
            events.append(.pipeClosed(n))
        }
        for pid in parameters.takeAll("exit-when-process-exits") + parameters.takeAll("exit-when-pid-exits") {
            guard let n = Int32(pid), n > 0 else { throw ConfigError("exitwhen: could not parse exit-when-process-exits=\(pid)") }
            // As nbdkit: a process that is already gone is an error at start-up.
            guard access("/proc/\(n)/stat", F_OK) == 0 else {
                throw ConfigError("exit-when-process-exits: \(SystemError("/proc/\(n)/stat"))")
            }
            events.append(.processExits(n))
        }
        events += parameters.takeAll("exit-when-script").map { .script($0) }
        var interval: UInt32 = 60
        // nbdkit's name, and the name this server used before it matched nbdkit's.
        if let poll = (parameters.takeAll("exitwhen-poll") + parameters.takeAll("exit-when-poll")).last {
            guard let n = UInt32(poll), n > 0 else { throw ConfigError("exitwhen: could not parse exit-when-poll=\(poll)") }
            interval = n
        }
        return ExitWhenFilter(next: next, events: events, interval: interval, control: control)
    }
}
