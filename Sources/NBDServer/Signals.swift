import Glibc
import CNBDShim

/// The signals the server handles, delivered through a signalfd that the accept loop polls
/// beside its sockets. Create it on the main thread before any other thread starts, so
/// every thread inherits the blocked mask and no handler ever runs asynchronously.
public struct SignalSource: Sendable {
    public let fd: FileDescriptor

    /// Blocks SIGINT, SIGTERM, SIGQUIT, SIGHUP and SIGCHLD into a signalfd and ignores SIGPIPE.
    public init() throws(SystemError) {
        signal(SIGPIPE, SIG_IGN)
        let signals: [Int32] = [SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGCHLD, 0]
        fd = FileDescriptor(try syscall("signalfd") { signals.withUnsafeBufferPointer { CNBDShim_signalfd_for($0.baseAddress) } })
    }

    /// The next pending signal, or nil when none is pending.
    public func next() -> Int32? {
        let s = CNBDShim_signalfd_read(fd.raw)
        return s > 0 ? s : nil
    }
}
