import XCTest
@testable import NBDServer

/// `parseSize` accepts and refuses what nbdkit 1.32's nbdkit_parse_size does, with its messages
/// (each expectation below was checked against /usr/bin/nbdkit).
final class SizeTests: XCTestCase {
    func testAccepted() throws {
        let cases: [(String, UInt64)] = [
            ("0", 0), ("512", 512), ("1b", 1), ("2s", 1024), ("1k", 1024), ("1K", 1024), ("1M", 1 << 20),
            ("3g", 3 << 30), ("1T", 1 << 40), ("1p", 1 << 50), ("7E", 7 << 60), ("1e", 1 << 60),
            (" 1M", 1 << 20), ("\t1M", 1 << 20), ("+1M", 1 << 20), (" +1M", 1 << 20), ("-0", 0),
            ("\r\n5", 5), ("\u{0B}\u{0C}7k", 7 << 10),
            ("9223372036854775807", UInt64(Int64.max)),
        ]
        for (text, value) in cases {
            XCTAssertEqual(try parseSize(text), value, text)
        }
    }

    func testRefusedWithNbdkitsMessages() {
        let cases: [(String, String)] = [
            ("abc", "could not parse size string (abc)"),
            ("", "could not parse size string ()"),
            ("=x", "could not parse size string (=x)"),
            ("+-1", "could not parse size string (+-1)"),
            ("1x", "could not parse size: unknown suffix 'x'"),
            ("1.5M", "could not parse size: unknown suffix '.5M'"),
            ("1M ", "could not parse size: unknown suffix 'M '"),
            ("1MiB", "could not parse size: unknown suffix 'MiB'"),
            ("0x100", "could not parse size: unknown suffix 'x100'"),
            ("9x=1", "could not parse size: unknown suffix 'x=1'"),
            (" -1", "size cannot be negative ( -1)"),
            ("-1x", "size cannot be negative (-1x)"),
            ("99999999999999999999", "size (99999999999999999999) exceeds maximum value"),
            ("-99999999999999999999", "size cannot be negative (-99999999999999999999)"),
            ("-9223372036854775808", "size cannot be negative (-9223372036854775808)"),
            // Bytes, not Unicode characters: the Kelvin sign is not K, a combining mark is a suffix.
            ("1\u{212A}", "could not parse size: unknown suffix '\u{212A}'"),
            ("5\u{0301}", "could not parse size: unknown suffix '\u{0301}'"),
            ("\u{00A0}5", "could not parse size string (\u{00A0}5)"),
            ("8E", "overflow computing size (8E)"),
        ]
        for (text, message) in cases {
            XCTAssertThrowsError(try parseSize(text), text) { error in
                XCTAssertEqual((error as? ConfigError)?.message, message, text)
            }
        }
    }
}
