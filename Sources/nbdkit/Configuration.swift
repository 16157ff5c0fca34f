import NBDServer

/// `--tls`.
enum TLSMode: String {
    case off, on, require
}

/// Where clients come from.
enum ListenMode: Equatable {
    case tcp(host: String?, port: String, family: AddressFamily)
    case unix(path: String)
    /// `-U -`: a socket in a private temporary directory, removed at exit.
    case unixTemporary
    /// `-s`: one client on stdin and stdout.
    case single
}

/// What the command line asks for.
enum Action: Equatable {
    case serve, help, version, dumpConfig, dumpPlugin, shortOptions, longOptions
}

/// The whole command line, parsed and checked.
struct Configuration {
    var action = Action.serve
    var plugin: String? = nil
    /// `key=value` arguments in order; a bare first value arrives with an empty key.
    var parameters: [(key: String, value: String)] = []
    /// `--filter` names in command-line order: the first sits closest to the client.
    var filters: [String] = []
    var port: String? = nil
    var ipaddr: String? = nil
    var family = AddressFamily.any
    var unixSocket: String? = nil
    var single = false
    var exportName = ""
    var readonly = false
    var threads = 16
    var foreground = false
    var style = HandshakeStyle.newstyle
    var verbose = false
    var log = LogDestination.stderr
    var run: String? = nil
    var exitWithParent = false
    var pidFile: String? = nil
    var tls = TLSMode.off
    var user: String? = nil
    var group: String? = nil
    var debugFlags: [String] = []

    /// Where to listen, from -U, -s, -p, -i, -4 and -6.
    var listenMode: ListenMode {
        if single { return .single }
        if let unixSocket { return unixSocket == "-" ? .unixTemporary : .unix(path: unixSocket) }
        return .tcp(host: ipaddr, port: port ?? "10809", family: family)
    }

    /// Whether the server stays in the foreground (`-f`, `--run`, `--exit-with-parent`, `-s`).
    var staysInForeground: Bool { foreground || run != nil || exitWithParent || single }

    /// Cross-option checks nbdkit makes before starting.
    func validate() throws {
        if single && (port != nil || unixSocket != nil || run != nil) {
            throw ConfigError("-s (--single) cannot be combined with -p, -U or --run")
        }
        if port != nil && unixSocket != nil {
            throw ConfigError("-p (--port) and -U (--unix) are mutually exclusive")
        }
        if tls != .off {
            throw ConfigError("--tls=\(tls.rawValue): TLS is not supported by this build yet")
        }
        if threads < 1 { throw ConfigError("-t (--threads) must be at least 1") }
    }
}
