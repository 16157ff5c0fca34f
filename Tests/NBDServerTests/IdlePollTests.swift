import XCTest
import Dispatch
import Synchronization
@testable import NBDServer

/// The polling limit adapts like the kernel's haltpoll governor: it grows while requests follow
/// soon after polling gave up, halves when the reader sleeps long, reaches 0 on a quiet
/// connection, and grows back from 0.
final class IdlePollTests: XCTestCase {
    func testGrowsWhileRequestsFollowSoon() {
        var poll = IdlePoll()
        XCTAssertEqual(poll.limit, IdlePoll.start)
        poll.slept(nanoseconds: 1_000)
        XCTAssertEqual(poll.limit, 2 * IdlePoll.start)
        for _ in 0..<10 { poll.slept(nanoseconds: 1_000) }
        XCTAssertEqual(poll.limit, IdlePoll.maximum, "never beyond the maximum")
    }

    func testHalvesToZeroWhenQuietAndGrowsBack() {
        var poll = IdlePoll()
        poll.slept(nanoseconds: 1_000_000_000)
        XCTAssertEqual(poll.limit, IdlePoll.start / 2)
        for _ in 0..<10 { poll.slept(nanoseconds: 1_000_000_000) }
        XCTAssertEqual(poll.limit, 0, "a quiet connection stops polling")
        XCTAssertFalse(poll.poll { XCTFail("a limit of 0 must not poll"); return true })
        poll.slept(nanoseconds: 1_000)
        XCTAssertEqual(poll.limit, IdlePoll.start, "requests close together again: polling resumes")
    }

    func testPollStopsAtTheLimitOrWhenReady() {
        let poll = IdlePoll()
        var calls = 0
        XCTAssertTrue(poll.poll { calls += 1; return calls == 3 })
        XCTAssertEqual(calls, 3)
        let start = MonotonicClock.nanoseconds()
        XCTAssertFalse(poll.poll { false })
        let elapsed = MonotonicClock.nanoseconds() - start
        XCTAssertGreaterThanOrEqual(elapsed, poll.limit)
        XCTAssertLessThan(elapsed, 1_000_000_000, "bounded by the limit, not forever")
    }

    /// At most `capacity` readers poll at once, from any number of threads; a place that is
    /// given back can be taken again.
    func testAllowanceCapsConcurrentPollers() {
        let allowance = PollingAllowance(capacity: 2)
        XCTAssertTrue(allowance.begin())
        XCTAssertTrue(allowance.begin())
        XCTAssertFalse(allowance.begin(), "a third poller while two poll")
        allowance.end()
        XCTAssertTrue(allowance.begin())
        allowance.end()
        allowance.end()

        // Many threads racing for places never hold more than the capacity at once.
        let holders = Atomic<Int>(0)
        let mostAtOnce = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<20_000 where allowance.begin() {
                let now = holders.wrappingAdd(1, ordering: .relaxed).newValue
                mostAtOnce.max(now, ordering: .relaxed)
                holders.wrappingSubtract(1, ordering: .relaxed)
                allowance.end()
            }
        }
        XCTAssertLessThanOrEqual(mostAtOnce.load(ordering: .relaxed), 2)
        XCTAssertGreaterThanOrEqual(mostAtOnce.load(ordering: .relaxed), 1)
        XCTAssertTrue(allowance.begin() && allowance.begin(), "every place was given back")
    }

    func testAllowanceHasAtLeastOnePlace() {
        XCTAssertGreaterThanOrEqual(PollingAllowance().capacity, 1)
    }
}
