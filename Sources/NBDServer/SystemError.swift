import Glibc
import CNBDShim

/// An errno value together with the call that produced it. The one place errno is read.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32

    /// Captures the current errno for `call`.
    public init(_ call: String) {
        self.call = call
        self.errno = CNBDShim_errno()
    }

    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call): \(String(cString: strerror(errno)))" }
}

/// Runs a system call that returns -1 on error, retrying on EINTR, and throws a `SystemError` naming it.
@inline(__always)
@discardableResult
public func syscall<T: FixedWidthInteger>(_ name: @autoclosure () -> String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let r = body()
        if r != -1 { return r }
        let e = CNBDShim_errno()
        if e != EINTR { throw SystemError(name(), errno: e) }
    }
}

/// An owned file descriptor; `close()` is explicit.
public struct FileDescriptor: Sendable, Hashable {
    public let raw: Int32
    public init(_ raw: Int32) { self.raw = raw }

    /// Closes the descriptor, ignoring errors (there is nothing to do about them).
    public func close() { _ = Glibc.close(raw) }

    /// Sets or clears close-on-exec. Wraps fcntl(F_SETFD).
    public func setCloseOnExec(_ on: Bool) throws(SystemError) {
        let flags = try syscall("fcntl") { fcntl(raw, F_GETFD) }
        try syscall("fcntl") { fcntl(raw, F_SETFD, on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC) }
    }
}
