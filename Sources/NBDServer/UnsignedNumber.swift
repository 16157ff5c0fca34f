/// A count given on the command line or in the environment, read as nbdkit reads one
/// (`nbdkit_parse_unsigned`, which is strtoul with base 0): leading white space and a '+'
/// allowed, decimal, `0x` hexadecimal or `0` octal, at most `UInt32.max`. The errors are
/// nbdkit's, naming `what`.
public func parseUnsigned(_ what: String, _ text: String) throws(ConfigError) -> UInt32 {
    var rest = Substring(text).drop { $0 == " " || ("\t"..."\r").contains($0) }
    if rest.first == "-" { throw ConfigError("\(what): negative numbers are not allowed") }
    if rest.first == "+" { rest = rest.dropFirst() }
    var radix = 10
    if rest.hasPrefix("0x") || rest.hasPrefix("0X"), let digit = rest.dropFirst(2).first, digit.isHexDigit {
        radix = 16
        rest = rest.dropFirst(2)
    } else if rest.hasPrefix("0") {
        radix = 8
    }
    let digits = rest.prefix { $0.isASCII && $0.hexDigitValue.map { $0 < radix } == true }
    if digits.isEmpty { throw ConfigError("\(what): empty string where we expected a number") }
    // Past UInt32.max is out of range, however many more digits follow.
    var value: UInt64 = 0
    for digit in digits where value <= UInt64(UInt32.max) {
        value = value * UInt64(radix) + UInt64(digit.hexDigitValue!)
    }
    if value > UInt64(UInt32.max) {
        throw ConfigError("\(what): could not parse number: \"\(text)\": Numerical result out of range")
    }
    if digits.endIndex != rest.endIndex { throw ConfigError("\(what): could not parse number: \"\(text)\": trailing garbage") }
    return UInt32(value)
}
