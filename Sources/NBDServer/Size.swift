/// Parses a size as nbdkit does (nbdkit_parse_size, over bytes, not Unicode characters): leading
/// white space and a sign are allowed, then decimal digits and at most one suffix: b (bytes),
/// s (512-byte sectors), or k, m, g, t, p, e (powers of 1024), either case. "-0" is 0; any other
/// negative size is refused. Throws a `ConfigError` worded as nbdkit's for each way it can fail.
public func parseSize(_ text: String) throws -> UInt64 {
    let bytes = Array(text.utf8)
    var i = 0
    // C's isspace in the C locale: space, \t, \n, \v, \f, \r.
    while i < bytes.count, bytes[i] == 0x20 || (0x09...0x0D).contains(bytes[i]) { i += 1 }
    var negative = false
    if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") {
        negative = bytes[i] == UInt8(ascii: "-")
        i += 1
    }
    let digitsStart = i
    var magnitude: UInt64 = 0
    var tooLarge = false
    while i < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) {
        let (times10, o1) = magnitude.multipliedReportingOverflow(by: 10)
        let (next, o2) = times10.addingReportingOverflow(UInt64(bytes[i] - UInt8(ascii: "0")))
        if o1 || o2 || next > UInt64(Int64.max) { tooLarge = true } else { magnitude = next }
        i += 1
    }
    guard i > digitsStart else { throw ConfigError("could not parse size string (\(text))") }
    if negative && (tooLarge || magnitude > 0) { throw ConfigError("size cannot be negative (\(text))") }
    if tooLarge { throw ConfigError("size (\(text)) exceeds maximum value") }
    let suffix = bytes[i...]
    let scale: UInt64
    if suffix.isEmpty {
        scale = 1
    } else if suffix.count == 1 {
        switch suffix.first! | 0x20 {   // ASCII letters in lower case
        case UInt8(ascii: "b"): scale = 1
        case UInt8(ascii: "s"): scale = 512
        case UInt8(ascii: "k"): scale = 1 << 10
        case UInt8(ascii: "m"): scale = 1 << 20
        case UInt8(ascii: "g"): scale = 1 << 30
        case UInt8(ascii: "t"): scale = 1 << 40
        case UInt8(ascii: "p"): scale = 1 << 50
        case UInt8(ascii: "e"): scale = 1 << 60
        default: throw ConfigError("could not parse size: unknown suffix '\(String(decoding: suffix, as: UTF8.self))'")
        }
    } else {
        throw ConfigError("could not parse size: unknown suffix '\(String(decoding: suffix, as: UTF8.self))'")
    }
    let (value, overflow) = magnitude.multipliedReportingOverflow(by: scale)
    guard !overflow, value <= UInt64(Int64.max) else { throw ConfigError("overflow computing size (\(text))") }
    return value
}
