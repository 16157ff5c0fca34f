import XCTest
@testable import NBDServer

/// `parseUnsigned` against what nbdkit 1.32's `nbdkit_parse_unsigned` (strtoul, base 0) does
/// with the same text, as `nbdkit -t TEXT --dump-config` shows.
final class UnsignedNumberTests: XCTestCase {
    func testAcceptsWhatStrtoulReads() throws {
        for (text, value) in [("0", 0), ("0x4", 4), ("0X1F", 31), (" 5", 5), ("\r\n7", 7), ("+5", 5), ("010", 8),
                              ("4294967295", 4294967295)] as [(String, UInt32)] {
            XCTAssertEqual(try parseUnsigned("threads", text), value, text)
        }
    }

    func testRefusesWithNbdkitsMessages() {
        let cases: [(String, String)] = [
            ("", "threads: empty string where we expected a number"),
            ("  ", "threads: empty string where we expected a number"),
            ("+-5", "threads: empty string where we expected a number"),
            (" -5", "threads: negative numbers are not allowed"),
            ("09", "threads: could not parse number: \"09\": trailing garbage"),
            ("0x", "threads: could not parse number: \"0x\": trailing garbage"),
            (" 5x", "threads: could not parse number: \"5x\": trailing garbage"),
            ("7\u{301}", "threads: could not parse number: \"7\u{301}\": trailing garbage"),
            ("0x\u{FF11}", "threads: could not parse number: \"0x\u{FF11}\": trailing garbage"),
            ("4294967296", "threads: could not parse number: \"4294967296\": Numerical result out of range"),
            ("99999999999999999999999x", "threads: could not parse number: \"99999999999999999999999x\": Numerical result out of range"),
        ]
        for (text, message) in cases {
            XCTAssertThrowsError(try parseUnsigned("threads", text), text) { error in
                XCTAssertEqual("\(error)", message, text)
            }
        }
    }
}
