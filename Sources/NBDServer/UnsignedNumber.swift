/// A count given on the command line or in the environment, read as nbdkit reads one
/// (`nbdkit_parse_unsigned`, which is strtoul with base 0, byte by byte): leading white space
/// and a '+' allowed, decimal, `0x` hexadecimal or `0` octal, at most `UInt32.max`. The errors
/// are nbdkit's, naming `what` and quoting the text after its leading white space.
public func parseUnsigned(_ what: String, _ text: String) throws(ConfigError) -> UInt32 {
    let bytes = Array(text.utf8)
    var i = 0
    // C's isspace: space, \t, \n, \v, \f, \r.
    while i < bytes.count && (bytes[i] == 0x20 || (0x09...0x0D).contains(bytes[i])) { i += 1 }
    let shown = String(decoding: bytes[i...], as: UTF8.self)
    if i < bytes.count && bytes[i] == UInt8(ascii: "-") { throw ConfigError("\(what): negative numbers are not allowed") }
    if i < bytes.count && bytes[i] == UInt8(ascii: "+") { i += 1 }
    func digit(_ at: Int) -> UInt64? {
        guard at < bytes.count else { return nil }
        switch bytes[at] {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt64(bytes[at] - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt64(bytes[at] - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt64(bytes[at] - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }
    var radix: UInt64 = 10
    if digit(i) == 0 {
        // "0x" counts as a prefix only before a hexadecimal digit.
        if i + 1 < bytes.count && bytes[i + 1] | 0x20 == UInt8(ascii: "x") && digit(i + 2) != nil {
            radix = 16
            i += 2
        } else {
            radix = 8
        }
    }
    let first = i
    // Past UInt32.max is out of range, however many more digits follow.
    var value: UInt64 = 0
    while let d = digit(i), d < radix {
        if value <= UInt64(UInt32.max) { value = value * radix + d }
        i += 1
    }
    if i == first { throw ConfigError("\(what): empty string where we expected a number") }
    if value > UInt64(UInt32.max) {
        throw ConfigError("\(what): could not parse number: \"\(shown)\": Numerical result out of range")
    }
    if i < bytes.count { throw ConfigError("\(what): could not parse number: \"\(shown)\": trailing garbage") }
    return UInt32(value)
}
