import Glibc

/// Bounds the data of one connection's requests in flight, from the arrival of a read's or a
/// write's header until its reply has been sent. Each worker's buffer can grow to the largest
/// request, so without it a client that sends many large reads and never takes the replies
/// would hold one such buffer per worker (16 x 64 MiB) of the server's memory; with it, at
/// most `limit` bytes, or one request of any size when nothing else is in flight. A reader
/// that must wait holds the connection's read lock, so the client is simply not read until
/// replies have gone out: it slows down only itself.
final class RequestBudget: @unchecked Sendable {
    let limit: Int
    private var inFlight = 0
    private var cancelled = false
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let released = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init(limit: Int) {
        self.limit = limit
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(released, nil)
    }

    deinit {
        pthread_cond_destroy(released)
        pthread_mutex_destroy(mutex)
        released.deallocate()
        mutex.deallocate()
    }

    /// Takes `count` bytes, waiting until they fit under the limit or nothing is in flight.
    /// Returns false, taking nothing, once `cancel` has been called.
    func take(_ count: Int) -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while !cancelled && inFlight > 0 && inFlight + count > limit {
            pthread_cond_wait(released, mutex)
        }
        guard !cancelled else { return false }
        inFlight += count
        return true
    }

    /// Gives back what a `take` took, once the request's reply has been sent (or it never
    /// will be).
    func give(_ count: Int) {
        guard count > 0 else { return }
        pthread_mutex_lock(mutex)
        inFlight -= count
        pthread_mutex_unlock(mutex)
        pthread_cond_broadcast(released)
    }

    /// Ends every wait, now and later: the connection reads no more requests.
    func cancel() {
        pthread_mutex_lock(mutex)
        cancelled = true
        pthread_mutex_unlock(mutex)
        pthread_cond_broadcast(released)
    }
}
