import Glibc

/// A joinable POSIX thread running a Swift closure.
public struct JoinableThread: Sendable {
    private let handle: pthread_t

    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// The stack of every thread the server starts. glibc's default (8 MiB, from RLIMIT_STACK)
    /// is far more than a connection or worker needs, and under `--swap` every byte of a
    /// thread's stack is locked into RAM; deep paths (a TLS handshake) use well under 1 MiB.
    public static let stackSize = 1 << 20

    /// Starts `body` on a new thread with a `stackSize` stack. Wraps pthread_create.
    public init(_ body: @escaping @Sendable () -> Void) throws(SystemError) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var handle = pthread_t()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, Self.stackSize)
        let r = pthread_create(&handle, &attributes, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if r != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemError("pthread_create", errno: r)
        }
        self.handle = handle
    }

    /// Lets the thread's resources go when it finishes; it can't be joined afterwards. Wraps pthread_detach.
    public func detach() { _ = pthread_detach(handle) }

    /// Waits for the thread to finish. Call exactly once. Wraps pthread_join.
    public func join() { _ = pthread_join(handle, nil) }
}
