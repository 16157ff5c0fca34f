import Glibc

/// `path` prefixed with the current directory unless it is absolute, not otherwise normalised,
/// as nbdkit_absolute_path makes it: so that it names the same file after a background server
/// moves to /. Throws nbdkit's message for an empty path.
public func absolutePath(_ path: String) throws(ConfigError) -> String {
    guard !path.isEmpty else { throw ConfigError("cannot convert null or empty path to an absolute path") }
    if path.hasPrefix("/") { return path }
    guard let cwd = getcwd(nil, 0) else { throw ConfigError("\(SystemError("getcwd"))") }
    defer { free(cwd) }
    let base = String(cString: cwd)
    return (base.hasSuffix("/") ? base : base + "/") + path
}
