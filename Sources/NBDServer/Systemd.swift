import Glibc
import CNBDSystemd

/// Socket activation: the listening sockets systemd passed (fd 3 onwards), made close-on-exec,
/// with LISTEN_* removed from the environment so that no child inherits them.
public enum SocketActivation {
    /// True when systemd passed sockets to this very process.
    public static var isActive: Bool {
        guard let pid = getenv("LISTEN_PID").map({ String(cString: $0) }), let fds = getenv("LISTEN_FDS") else { return false }
        return pid_t(pid) == getpid() && (Int(String(cString: fds)) ?? 0) > 0
    }

    /// A passed socket and its name from LISTEN_FDNAMES (systemd's FileDescriptorName=, or
    /// "unknown" when none was given).
    public struct PassedSocket {
        public let fd: FileDescriptor
        public let name: String
    }

    /// Takes the passed sockets. Wraps sd_listen_fds_with_names.
    public static func takeSockets() throws -> [PassedSocket] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = nil
        let n = CNBDSystemd_listen_fds_with_names(&names)
        defer { CNBDSystemd_free_names(names) }
        if let error = CNBDSystemd_load_error() {
            throw ConfigError("socket activation: cannot load libsystemd: \(String(cString: error))")
        }
        if n < 0 { throw SystemError("sd_listen_fds", errno: -n) }
        guard n > 0 else { throw ConfigError("socket activation: no sockets were passed") }
        return try (0..<Int(n)).map { i in
            let fd = FileDescriptor(3 + Int32(i))
            try fd.setCloseOnExec(true)
            return PassedSocket(fd: fd, name: names?[i].map { String(cString: $0) } ?? "unknown")
        }
    }
}

/// sd_notify for a Type=notify service: READY=1, STATUS=, STOPPING=1 and watchdog pings.
/// Without NOTIFY_SOCKET every call does nothing, and libsystemd is never loaded.
public struct ServiceNotifier: Sendable {
    /// The watchdog interval, if the service manager asked for pings.
    public let watchdogInterval: UInt64?
    private let enabled: Bool

    public init() {
        enabled = getenv("NOTIFY_SOCKET") != nil
        // Only a supervised server loads libsystemd.
        let usec = enabled && getenv("WATCHDOG_USEC") != nil ? CNBDSystemd_watchdog_usec() : 0
        watchdogInterval = usec > 0 ? usec : nil
    }

    public func ready() { send("READY=1\nSTATUS=Serving 0 clients") }
    public func status(clients: Int) { send("STATUS=Serving \(clients) client\(clients == 1 ? "" : "s")") }
    public func stopping() { send("STOPPING=1\nSTATUS=Shutting down") }
    public func watchdog() { send("WATCHDOG=1") }

    private func send(_ state: String) {
        guard enabled else { return }
        _ = CNBDSystemd_notify(state)
    }
}
