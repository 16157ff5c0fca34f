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

    /// Lets the handled signals through again to the calling thread (and threads it starts
    /// later), to their default actions (SIGPIPE stays ignored): for when nothing can read the
    /// signalfd.
    public func restoreDefaultActions() {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGINT, SIGTERM, SIGQUIT, SIGHUP] { sigaddset(&set, s) }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    /// The next pending signal, or nil when none is pending.
    public func next() -> Int32? {
        let s = CNBDShim_signalfd_read(fd.raw)
        return s > 0 ? s : nil
    }
}
