import Glibc
import NBDServer

/// A count given on the command line, read as nbdkit reads one (`nbdkit_parse_unsigned`):
/// leading white space and a '+' allowed, decimal, `0x` hexadecimal or `0` octal, at most
/// `UInt32.max`. The errors are nbdkit's, naming `what`.
func parseUnsigned(_ what: String, _ text: String) throws -> UInt32 {
    if text.drop(while: { $0 == " " || ("\t"..."\r").contains($0) }).first == "-" {
        throw ConfigError("\(what): negative numbers are not allowed")
    }
    return try text.withCString { start -> UInt32 in
        var end: UnsafeMutablePointer<CChar>?
        errno = 0
        let value = strtoul(start, &end, 0)
        if errno != 0 || value > UInt(UInt32.max) {
            throw ConfigError("\(what): could not parse number: \"\(text)\": \(String(cString: strerror(errno == 0 ? ERANGE : errno)))")
        }
        if end == UnsafeMutablePointer(mutating: start) { throw ConfigError("\(what): empty string where we expected a number") }
        if end?.pointee != 0 { throw ConfigError("\(what): could not parse number: \"\(text)\": trailing garbage") }
        return UInt32(value)
    }
}
