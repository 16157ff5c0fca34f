import Glibc

/// A joinable POSIX thread running a Swift closure.
public struct JoinableThread: Sendable {
    private let handle: pthread_t

    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    /// Starts `body` on a new thread. Wraps pthread_create.
    public init(_ body: @escaping @Sendable () -> Void) throws(SystemError) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var handle = pthread_t()
        let r = pthread_create(&handle, nil, { arg in
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
