import Glibc

/// A plain pthread mutex for the request path. A contended `lock` sleeps in the kernel at once,
/// and `unlock` leaves the lock free rather than handing it to a waiter, so a thread that unlocks
/// may take it again without a context switch. (Swift's `Mutex` on Linux spins and then uses a
/// priority-inheritance futex, which hands the lock over; with more threads than cores, every
/// contended unlock then costs a spin and a context switch.)
final class Lock: @unchecked Sendable {
    fileprivate let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init() { pthread_mutex_init(mutex, nil) }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }

    /// Runs `body` holding the lock.
    @inline(__always)
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A condition variable; every call must hold the one `Lock` it is used with.
final class Condition: @unchecked Sendable {
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() { pthread_cond_init(cond, nil) }

    deinit {
        pthread_cond_destroy(cond)
        cond.deallocate()
    }

    /// Releases `lock`, sleeps until signalled (or spuriously), and takes `lock` again.
    func wait(_ lock: Lock) { pthread_cond_wait(cond, lock.mutex) }
    /// Wakes at least one waiter, if there is one.
    func signal() { pthread_cond_signal(cond) }
    /// Wakes every waiter.
    func broadcast() { pthread_cond_broadcast(cond) }
}
