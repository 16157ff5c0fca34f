/// Parses a size with nbdkit's suffixes: b (bytes), s (512-byte sectors), and k, m, g, t, p, e
/// (powers of 1024), either case. Throws a `ConfigError` worded as nbdkit's.
public func parseSize(_ text: String) throws -> UInt64 {
    var digits = Substring(text)
    var scale: UInt64 = 1
    if let last = digits.last, !last.isNumber {
        switch last {
        case "b", "B": scale = 1
        case "s", "S": scale = 512
        case "k", "K": scale = 1 << 10
        case "m", "M": scale = 1 << 20
        case "g", "G": scale = 1 << 30
        case "t", "T": scale = 1 << 40
        case "p", "P": scale = 1 << 50
        case "e", "E": scale = 1 << 60
        default: throw ConfigError("could not parse size string (\(text))")
        }
        digits = digits.dropLast()
    }
    guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let n = UInt64(digits) else {
        throw ConfigError("could not parse size string (\(text))")
    }
    let (value, overflow) = n.multipliedReportingOverflow(by: scale)
    guard !overflow, value <= UInt64(Int64.max) else {
        throw ConfigError("size (\(text)) is too large")
    }
    return value
}
