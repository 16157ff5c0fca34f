import XCTest
import Dispatch
import Synchronization
@testable import NBDServer

/// A connection's budget for the data of its requests in flight: a request is admitted while
/// it fits (or when nothing is in flight), waits otherwise until replies give bytes back, and
/// every wait ends at `cancel`.
final class RequestBudgetTests: XCTestCase {
    func testAdmitsWhileItFitsAndAnythingWhenEmpty() {
        let budget = RequestBudget(limit: 100)
        XCTAssertTrue(budget.take(60))
        XCTAssertTrue(budget.take(40), "exactly the limit fits")
        budget.give(60)
        budget.give(40)
        XCTAssertTrue(budget.take(500), "nothing in flight: a request larger than the limit is admitted")
        budget.give(500)
    }

    /// A `take` on another thread: `done` is signalled when it returns, `admitted` says what
    /// it returned (-1 while it waits, then 1 or 0).
    private final class Waiter: Sendable {
        let done = DispatchSemaphore(value: 0)
        let admitted = Atomic<Int>(-1)
    }

    private func takeElsewhere(_ budget: RequestBudget, _ count: Int) -> Waiter {
        let waiter = Waiter()
        DispatchQueue.global().async {
            waiter.admitted.store(budget.take(count) ? 1 : 0, ordering: .relaxed)
            waiter.done.signal()
        }
        return waiter
    }

    func testWaitsUntilBytesAreGivenBack() {
        let budget = RequestBudget(limit: 100)
        XCTAssertTrue(budget.take(80))
        let waiter = takeElsewhere(budget, 30)
        XCTAssertEqual(waiter.done.wait(timeout: .now() + 0.3), .timedOut, "80 + 30 over 100: the second request waits")
        budget.give(80)
        XCTAssertEqual(waiter.done.wait(timeout: .now() + 5), .success, "admitted once the first gave its bytes back")
        XCTAssertEqual(waiter.admitted.load(ordering: .relaxed), 1)
        budget.give(30)
    }

    func testCancelEndsWaitsNowAndLater() {
        let budget = RequestBudget(limit: 100)
        XCTAssertTrue(budget.take(100))
        let waiter = takeElsewhere(budget, 1)
        XCTAssertEqual(waiter.done.wait(timeout: .now() + 0.3), .timedOut)
        budget.cancel()
        XCTAssertEqual(waiter.done.wait(timeout: .now() + 5), .success, "cancel wakes the waiting reader")
        XCTAssertEqual(waiter.admitted.load(ordering: .relaxed), 0, "a cancelled wait takes nothing")
        budget.give(100)
        XCTAssertFalse(budget.take(1), "after cancel nothing is admitted, even with room")
    }
}
