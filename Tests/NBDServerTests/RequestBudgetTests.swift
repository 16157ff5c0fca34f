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

    func testWaitsUntilBytesAreGivenBack() {
        let budget = RequestBudget(limit: 100)
        XCTAssertTrue(budget.take(80))
        let admitted = Atomic<Bool>(false)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            admitted.store(budget.take(30), ordering: .relaxed)
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 0.3), .timedOut, "80 + 30 over 100: the second request waits")
        XCTAssertFalse(admitted.load(ordering: .relaxed))
        budget.give(80)
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success, "admitted once the first gave its bytes back")
        XCTAssertTrue(admitted.load(ordering: .relaxed))
        budget.give(30)
    }

    func testCancelEndsWaitsNowAndLater() {
        let budget = RequestBudget(limit: 100)
        XCTAssertTrue(budget.take(100))
        let admitted = Atomic<Bool>(true)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            admitted.store(budget.take(1), ordering: .relaxed)
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 0.3), .timedOut)
        budget.cancel()
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success, "cancel wakes the waiting reader")
        XCTAssertFalse(admitted.load(ordering: .relaxed), "a cancelled wait takes nothing")
        budget.give(100)
        XCTAssertFalse(budget.take(1), "after cancel nothing is admitted, even with room")
    }
}
