/// Parses a boolean as nbdkit does: 1/true/yes/on and 0/false/no/off, in any case; nil otherwise.
public func parseBoolean(_ text: String) -> Bool? {
    switch text.lowercased() {
    case "1", "true", "yes", "on": true
    case "0", "false", "no", "off": false
    default: nil
    }
}
