/// The hand-off between a connection's reader and its workers. The reader takes an empty buffer,
/// fills it with a request and submits it; a worker takes it, serves it and recycles it.
///
/// Guarantees: requests are taken in the order submitted; at most `maxWorkers + 1` buffers exist,
/// so at most that many requests are read ahead of their replies and memory stays bounded; a
/// submit wakes at most one sleeping worker, and only if no running worker can take the request;
/// the caller is told to start a new worker only when every existing one is busy.
final class RequestQueue: @unchecked Sendable {
    private let maxWorkers: Int
    private let lock = Lock()
    /// Workers sleep here waiting for a request.
    private let requestReady = Condition()
    /// The reader sleeps here waiting for a free buffer.
    private let bufferFree = Condition()
    /// Submitted requests not yet taken, oldest at `head`.
    private var ready: [RequestBuffer?]
    private var head = 0
    private var readyCount = 0
    private var free: [RequestBuffer] = []
    private var buffers = 0
    private var workers = 0
    /// Workers asleep in `next`, and how many of them have been signalled but not yet woken.
    private var sleeping = 0
    private var wakeups = 0
    private var closed = false

    init(maxWorkers: Int) {
        self.maxWorkers = maxWorkers
        ready = Array(repeating: nil, count: maxWorkers + 1)
        free.reserveCapacity(maxWorkers + 1)
    }

    /// A buffer for the next request; waits while every buffer is in use.
    func emptyBuffer() -> RequestBuffer {
        lock.lock()
        defer { lock.unlock() }
        while true {
            if let buffer = free.popLast() { return buffer }
            if buffers < ready.count {
                buffers += 1
                return RequestBuffer()
            }
            bufferFree.wait(lock)
        }
    }

    /// Queues a filled buffer. Returns true when the caller should start one more worker
    /// (already counted; call `workerFailed` if it can't be started).
    func submit(_ buffer: RequestBuffer) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        ready[(head + readyCount) % ready.count] = buffer
        readyCount += 1
        if sleeping > wakeups {
            wakeups += 1
            requestReady.signal()
            return false
        }
        // Every sleeper is already woken for an older request: this one waits for a busy
        // worker unless another may be started.
        guard workers < maxWorkers, sleeping < readyCount else { return false }
        workers += 1
        return true
    }

    /// Records that a worker counted by `submit` could not be started.
    func workerFailed() {
        lock.withLock { workers -= 1 }
    }

    /// Takes the oldest submitted request without waiting, or nil if there is none.
    func takeNow() -> RequestBuffer? {
        lock.withLock { dequeue() }
    }

    /// The oldest submitted request; waits for one. Nil once `close` was called and none is left.
    func next() -> RequestBuffer? {
        lock.lock()
        defer { lock.unlock() }
        while true {
            if let buffer = dequeue() { return buffer }
            if closed { return nil }
            sleeping += 1
            requestReady.wait(lock)
            sleeping -= 1
            if wakeups > 0 { wakeups -= 1 }
        }
    }

    /// Gives a buffer back after its reply was sent (or unused by the reader).
    func recycle(_ buffer: RequestBuffer) {
        lock.withLock { free.append(buffer) }
        bufferFree.signal()
    }

    /// No more requests will be submitted: workers take what is queued, then `next` returns nil.
    func close() {
        lock.withLock { closed = true }
        requestReady.broadcast()
    }

    /// Must hold `lock`.
    private func dequeue() -> RequestBuffer? {
        guard readyCount > 0 else { return nil }
        let buffer = ready[head]
        ready[head] = nil
        head = (head + 1) % ready.count
        readyCount -= 1
        return buffer
    }
}
