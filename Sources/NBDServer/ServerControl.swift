import Glibc
import Synchronization
import CNBDShim

/// Lets filters steer the server's lifetime: ask it to shut down, refuse new clients, and
/// learn when the last client has gone; and log as the server does. Shutdown requests wake the
/// accept loop through an eventfd, so they are safe from any thread.
public final class ServerControl: Sendable {
    let wakeFD: Int32
    /// The server's logger, for what a filter notices outside any connection.
    public let logger: Logger
    private let state = Mutex(State())
    private let stopping = Atomic<Bool>(false)

    private struct State {
        var connections = 0
        var draining = false
        var rejection = ""
        var lastClosedObservers: [@Sendable () -> Void] = []
        var countObservers: [@Sendable (Int) -> Void] = []
    }

    public init(logger: Logger) throws(SystemError) {
        self.logger = logger
        wakeFD = try syscall("eventfd") { CNBDShim_eventfd() }
    }

    /// (One made only to check the parameters goes with its eventfd; observers must not hold
    /// their control strongly.)
    deinit { _ = close(wakeFD) }

    /// Asks the accept loop to stop; connections in flight are finished first.
    public func requestShutdown() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// Stops accepting clients and shuts down once the current ones are gone. Each client
    /// refused meanwhile is logged as an error with `rejection`.
    public func drain(rejection: String) {
        let idle = state.withLock { s in
            s.draining = true
            s.rejection = rejection
            return s.connections == 0
        }
        if idle { requestShutdown() }
    }

    /// True once the server has begun to shut down (a signal, or a filter's request): what
    /// waits for a long while (the delay filter) stops waiting.
    public var isShuttingDown: Bool { stopping.load(ordering: .relaxed) }

    func beginShutdown() { stopping.store(true, ordering: .relaxed) }

    /// True once `drain(rejection:)` was called.
    public var isDraining: Bool { state.withLock { $0.draining } }

    /// What to log for a client refused while draining; nil when not draining.
    var rejection: String? { state.withLock { $0.draining ? $0.rejection : nil } }

    /// Calls `observer` (on the closing connection's thread) each time the number of clients drops to zero.
    public func onLastConnectionClosed(_ observer: @escaping @Sendable () -> Void) {
        state.withLock { $0.lastClosedObservers.append(observer) }
    }

    /// Calls `observer` with the number of clients each time it changes, in order: calls are
    /// made under the count's lock, so `observer` must be quick and must not call back here.
    public func onConnectionCountChanged(_ observer: @escaping @Sendable (Int) -> Void) {
        state.withLock { $0.countObservers.append(observer) }
    }

    func connectionOpened() {
        state.withLock { s in
            s.connections += 1
            s.countObservers.forEach { $0(s.connections) }
        }
    }

    func connectionClosed() {
        let (observers, draining) = state.withLock { s in
            s.connections -= 1
            s.countObservers.forEach { $0(s.connections) }
            return (s.connections == 0 ? s.lastClosedObservers : [], s.connections == 0 && s.draining)
        }
        observers.forEach { $0() }
        if draining { requestShutdown() }
    }
}
