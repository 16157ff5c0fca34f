/// Parses a size as nbdkit does: leading white space and a sign are allowed, then decimal digits
/// and at most one suffix: b (bytes), s (512-byte sectors), or k, m, g, t, p, e (powers of
/// 1024), either case. "-0" is 0; any other negative size is refused. Throws a `ConfigError`
/// worded as nbdkit's for each way it can fail.
public func parseSize(_ text: String) throws -> UInt64 {
    var rest = Substring(text)
    rest = rest.drop { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" || $0 == "\u{0B}" || $0 == "\u{0C}" }
    var negative = false
    if let sign = rest.first, sign == "+" || sign == "-" {
        negative = sign == "-"
        rest = rest.dropFirst()
    }
    let digits = rest.prefix { $0.isASCII && $0.isNumber }
    guard !digits.isEmpty else { throw ConfigError("could not parse size string (\(text))") }
    guard let magnitude = UInt64(digits), magnitude <= UInt64(Int64.max) else {
        throw ConfigError("size (\(text)) exceeds maximum value")
    }
    if negative && magnitude > 0 { throw ConfigError("size cannot be negative (\(text))") }
    let suffix = rest.dropFirst(digits.count)
    let scale: UInt64
    switch suffix {
    case "": scale = 1
    case "b", "B": scale = 1
    case "s", "S": scale = 512
    case "k", "K": scale = 1 << 10
    case "m", "M": scale = 1 << 20
    case "g", "G": scale = 1 << 30
    case "t", "T": scale = 1 << 40
    case "p", "P": scale = 1 << 50
    case "e", "E": scale = 1 << 60
    default: throw ConfigError("could not parse size: unknown suffix '\(suffix)'")
    }
    let (value, overflow) = magnitude.multipliedReportingOverflow(by: scale)
    guard !overflow, value <= UInt64(Int64.max) else { throw ConfigError("overflow computing size (\(text))") }
    return value
}
