import Glibc
import Synchronization
import CNBDShim

/// How long a connection's reader polls for the next request before it goes to sleep. Waking a
/// sleeping thread costs the client's send an inter-processor interrupt, and on a virtual
/// machine without halt-polling that costs several microseconds: more than a client at queue
/// depth 1 takes to send its next request. The limit adapts as the kernel's haltpoll governor
/// does: it doubles (from `start`, up to `maximum`) while requests keep arriving soon after
/// polling gave up, and halves when the reader slept longer than `maximum`, so a connection
/// that goes quiet soon stops polling.
struct IdlePoll {
    static let start: Int64 = 16_000
    static let maximum: Int64 = 128_000
    /// Nanoseconds to poll for; 0 means sleep at once.
    private(set) var limit: Int64 = IdlePoll.start

    /// Calls `ready` until it returns true or the limit has passed; returns whether it became
    /// ready. (No `sched_yield` between calls: on this kind of machine it costs more than the
    /// wake-up that polling saves, and the scheduler still preempts the poller for a thread
    /// that wakes.)
    func poll(_ ready: () throws -> Bool) rethrows -> Bool {
        guard limit > 0 else { return false }
        let deadline = MonotonicClock.nanoseconds() + limit
        repeat {
            if try ready() { return true }
        } while MonotonicClock.nanoseconds() < deadline
        return false
    }

    /// Adapts the limit to how long the reader slept after polling gave up, or without polling
    /// (which is how a limit of 0 grows back when requests come close together again).
    mutating func slept(nanoseconds: Int64) {
        if limit + nanoseconds <= Self.maximum {
            limit = limit == 0 ? Self.start : min(2 * limit, Self.maximum)
        } else {
            limit = limit / 2 < 1_000 ? 0 : limit / 2
        }
    }
}

/// Caps how many readers poll at once across the server, so that polling never takes a
/// processor from threads with work: at most half the processors the server may run on
/// (at least one).
final class PollingAllowance: Sendable {
    private let pollers = Atomic<Int>(0)
    let capacity: Int

    init(capacity: Int = max(1, Int(CNBDShim_usable_cpus()) / 2)) { self.capacity = capacity }

    /// Takes a place if one is free; pair a true result with `end`.
    func begin() -> Bool {
        var current = pollers.load(ordering: .relaxed)
        while current < capacity {
            let (exchanged, original) = pollers.compareExchange(expected: current, desired: current + 1,
                                                                ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    func end() { pollers.wrappingSubtract(1, ordering: .relaxed) }
}
