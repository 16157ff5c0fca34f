/// Parses a boolean as nbdkit does: 1/true/t/yes/y/on and 0/false/f/no/n/off, in any case; nil
/// otherwise.
public func parseBoolean(_ text: String) -> Bool? {
    switch text.lowercased() {
    case "1", "true", "t", "yes", "y", "on": true
    case "0", "false", "f", "no", "n", "off": false
    default: nil
    }
}
