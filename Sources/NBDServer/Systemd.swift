import Glibc
import CNBDSystemd

/// Socket activation: the listening sockets systemd passed (fd 3 onwards), made close-on-exec,
/// with LISTEN_* removed from the environment so that no child inherits them. Read as nbdkit
/// reads them (not through libsystemd, which is loaded only to notify).
public enum SocketActivation {
    /// A passed socket and its name from LISTEN_FDNAMES (systemd's FileDescriptorName=, or
    /// "unknown" when none was given or the names don't match the sockets).
    public struct PassedSocket: Sendable {
        public let fd: FileDescriptor
        public let name: String
    }

    /// The sockets passed to this process; none when LISTEN_PID or LISTEN_FDS is unset, can't
    /// be read (said through `report`, as nbdkit's messages without the program name) or
    /// names another process. Throws, with nbdkit's message, when LISTEN_FDS is out of range
    /// or a descriptor it counts is not open (whether each listens is `checkListening`'s). Call
    /// before the process opens any descriptor of its own, which could take the number of one
    /// that was not passed.
    public static func takeSockets(report: (String) -> Void) throws -> [PassedSocket] {
        guard let pidText = environment("LISTEN_PID") else { return [] }
        let pid: UInt32
        do { pid = try parseUnsigned("LISTEN_PID", pidText) } catch { report("error: \(error)"); return [] }
        guard pid_t(bitPattern: pid) == getpid() else {
            report("LISTEN_PID was not for us (ignored)")
            return []
        }
        guard let countText = environment("LISTEN_FDS") else { return [] }
        let count: UInt32
        do { count = try parseUnsigned("LISTEN_FDS", countText) } catch { report("error: \(error)"); return [] }
        let names = environment("LISTEN_FDNAMES")?.split(separator: ":", omittingEmptySubsequences: false)
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(name) }
        // (nbdkit 1.32 also refuses more than 16.)
        guard count >= 1, count <= UInt32(Int32.max - 3) else {
            throw ConfigError("socket activation: LISTEN_FDS=\(countText) out of range")
        }
        let total = Int(count)
        // One by one: a count far beyond the descriptors passed ends at the first one missing,
        // without room made for all of them first (which could not be had).
        var sockets: [PassedSocket] = []
        for i in 0..<total {
            let fd = FileDescriptor(3 + Int32(i))
            do throws(SystemError) { try fd.setCloseOnExec(true) } catch {
                throw ConfigError("socket activation: invalid file descriptor fd = \(fd.raw): \(String(cString: strerror(error.errno)))")
            }
            sockets.append(PassedSocket(fd: fd, name: names?.count == total ? String(names![i]) : "unknown"))
        }
        return sockets
    }

    /// Throws unless every socket passed listens: what can't accept (a file, a connected socket
    /// from a unit with Accept=yes) would fail every accept.
    public static func checkListening(_ sockets: [PassedSocket]) throws(ConfigError) {
        for socket in sockets {
            var listening: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(socket.fd.raw, SOL_SOCKET, SO_ACCEPTCONN, &listening, &size) == 0, listening == 1 else {
                throw ConfigError("socket activation: fd = \(socket.fd.raw) is not a listening socket (the socket unit must have Accept=no)")
            }
        }
    }

    private static func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
}

/// sd_notify for a Type=notify service: READY=1, STATUS=, STOPPING=1 and watchdog pings.
/// Without NOTIFY_SOCKET every call does nothing, and libsystemd is never loaded. The messages
/// go out in order from a thread of their own: sd_notify waits while the service manager's
/// socket is full, and a manager that stops reading must hold up no client, no connection's
/// end and no shutdown (it stopped them all). While it doesn't read, at most
/// `Outbox.capacity` messages wait: the oldest status or ping makes room for a new message, so
/// READY=1, STOPPING=1 and the latest status still get there. No status follows STOPPING=1.
public struct ServiceNotifier: Sendable {
    /// The watchdog interval, if the service manager asked for pings.
    public let watchdogInterval: UInt64?
    private let outbox: Outbox?

    public init() {
        let enabled = getenv("NOTIFY_SOCKET") != nil
        // Only a supervised server loads libsystemd.
        let usec = enabled && getenv("WATCHDOG_USEC") != nil ? CNBDSystemd_watchdog_usec() : 0
        watchdogInterval = usec > 0 ? usec : nil
        outbox = enabled ? Outbox() : nil
    }

    public func ready() { send("READY=1\nSTATUS=Serving 0 clients") }
    public func status(clients: Int) { send("STATUS=Serving \(clients) client\(clients == 1 ? "" : "s")") }
    public func stopping() { send("STOPPING=1\nSTATUS=Shutting down") }
    public func watchdog() { send("WATCHDOG=1") }

    /// Waits until what was sent has gone out, for at most `seconds` (before the process exits).
    public func finish(waitingAtMost seconds: Double = 1) { outbox?.drain(waitingAtMost: seconds) }

    private func send(_ state: String) { outbox?.post(state) }
}

/// The messages waiting for the notifying thread, which starts with the first one (after any
/// fork: the notifier is used only once the server runs).
private final class Outbox: @unchecked Sendable {
    static let capacity = 64
    private let lock = Lock()
    private let wakeup = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    /// Under `lock`: the messages not yet taken, whether one is being sent, the thread started.
    private var waiting: [String] = []
    private var sending = false
    private var started = false
    private var stopping = false

    init() { sem_init(wakeup, 0, 0) }

    func post(_ state: String) {
        let start: Bool? = lock.withLock {
            // Once shutdown is announced, a connection's end must not replace "Shutting down".
            if stopping && state.hasPrefix("STATUS=") { return nil }
            stopping = stopping || state.hasPrefix("STOPPING=")
            if waiting.count >= Self.capacity {
                // The manager is behind: its oldest status or ping goes (READY and STOPPING stay).
                guard let i = waiting.firstIndex(where: { $0.hasPrefix("STATUS=") || $0.hasPrefix("WATCHDOG=") }) else {
                    return nil
                }
                waiting.remove(at: i)
            }
            waiting.append(state)
            defer { started = true }
            return !started
        }
        guard let start else { return }
        if start {
            do throws(SystemError) { try JoinableThread { [self] in run() }.detach() } catch {
                // No thread to spare: what waits is sent from here, and the next message tries again.
                let pending: [String] = lock.withLock {
                    defer { waiting.removeAll(); started = false }
                    return waiting
                }
                for message in pending { _ = CNBDSystemd_notify(message) }
                return
            }
        }
        sem_post(wakeup)
    }

    private func run() {
        while true {
            while sem_wait(wakeup) != 0 {}
            while let state: String = lock.withLock({
                guard !waiting.isEmpty else { sending = false; return nil }
                sending = true
                return waiting.removeFirst()
            }) {
                _ = CNBDSystemd_notify(state)
            }
        }
    }

    func drain(waitingAtMost seconds: Double) {
        let deadline = MonotonicClock.milliseconds() + Int64(seconds * 1000)
        while lock.withLock({ !waiting.isEmpty || sending }) && MonotonicClock.milliseconds() < deadline {
            usleep(1000)
        }
    }
}
