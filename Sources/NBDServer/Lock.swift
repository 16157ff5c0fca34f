import Glibc

/// A plain pthread mutex for the request path. A contended `lock` sleeps in the kernel at once,
/// and `unlock` leaves the lock free rather than handing it to a waiter, so a thread that unlocks
/// may take it again without a context switch. (Swift's `Mutex` on Linux spins and then uses a
/// priority-inheritance futex, which hands the lock over; with more threads than cores, every
/// contended unlock then costs a spin and a context switch.)
final class Lock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init() { pthread_mutex_init(mutex, nil) }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    /// Takes the lock if it is free; never waits.
    func tryLock() -> Bool { pthread_mutex_trylock(mutex) == 0 }

    /// Runs `body` holding the lock.
    @inline(__always)
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}
