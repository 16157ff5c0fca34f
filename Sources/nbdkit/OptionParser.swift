import NBDServer

/// nbdkit's options: names, whether each takes a value, and where it goes. getopt_long
/// semantics: options and arguments may be mixed, `--opt=value` or `--opt value`, clustered
/// short flags (`-fv`), `-pVALUE`, and `--` ends the options.
struct OptionParser {
    enum Arity { case flag, value }

    struct Spec: Sendable {
        let short: Character?
        let long: [String]
        let arity: Arity
        let apply: @Sendable (inout Configuration, String) throws -> Void
    }

    /// In the order of nbdkit's own table, which `--long-options` prints.
    static let specs: [Spec] = [
        Spec(short: "4", long: ["ipv4-only"], arity: .flag) { c, _ in c.family = .ipv4 },
        Spec(short: "6", long: ["ipv6-only"], arity: .flag) { c, _ in c.family = .ipv6 },
        Spec(short: "D", long: ["debug"], arity: .value) { c, v in
            guard isDebugFlag(v) else { throw ConfigError("-D (Debug Flag) must have the format NAME.FLAG=N") }
            c.debugFlags.append(v)
        },
        Spec(short: nil, long: ["dump-config"], arity: .flag) { c, _ in c.action = c.action.yielding(to: .dumpConfig) },
        Spec(short: nil, long: ["dump-plugin"], arity: .flag) { c, _ in c.action = c.action.yielding(to: .dumpPlugin) },
        Spec(short: nil, long: ["exit-with-parent"], arity: .flag) { c, _ in c.exitWithParent = true },
        Spec(short: "e", long: ["export", "export-name", "exportname"], arity: .value) { c, v in c.exportName = v },
        Spec(short: nil, long: ["filter"], arity: .value) { c, v in c.filters.append(v) },
        Spec(short: "f", long: ["foreground", "no-fork"], arity: .flag) { c, _ in c.foreground = true },
        Spec(short: "g", long: ["group"], arity: .value) { c, v in c.group = v },
        Spec(short: nil, long: ["help"], arity: .flag) { c, _ in c.action = c.action.yielding(to: .help) },
        Spec(short: "i", long: ["ip-addr", "ipaddr"], arity: .value) { c, v in c.ipaddr = v },
        Spec(short: nil, long: ["log"], arity: .value) { c, v in
            guard let d = LogDestination(rawValue: v) else { throw ConfigError("--log must be \"stderr\", \"syslog\" or \"null\"") }
            c.log = d
        },
        Spec(short: nil, long: ["long-options"], arity: .flag) { c, _ in c.action = c.action.yielding(to: .longOptions) },
        Spec(short: nil, long: ["mask-handshake"], arity: .value) { c, v in
            c.handshakeMask = try parseUnsigned("mask-handshake", v)
        },
        Spec(short: "n", long: ["new-style", "newstyle"], arity: .flag) { c, _ in c.style = .newstyle },
        Spec(short: nil, long: ["no-sr"], arity: .flag) { c, _ in c.noStructuredReplies = true },
        Spec(short: "o", long: ["old-style", "oldstyle"], arity: .flag) { c, _ in c.style = .oldstyle },
        Spec(short: "P", long: ["pid-file", "pidfile"], arity: .value) { c, v in c.pidFile = v },
        // A number, or for TCP a service name (`validate` checks which).
        Spec(short: "p", long: ["port"], arity: .value) { c, v in c.port = v },
        Spec(short: "r", long: ["read-only", "readonly"], arity: .flag) { c, _ in c.readonly = true },
        Spec(short: nil, long: ["run"], arity: .value) { c, v in c.run = v },
        Spec(short: nil, long: ["selinux-label"], arity: .value) { c, v in c.selinuxLabel = v },
        Spec(short: nil, long: ["short-options"], arity: .flag) { c, _ in c.action = c.action.yielding(to: .shortOptions) },
        Spec(short: "s", long: ["single", "stdin"], arity: .flag) { c, _ in c.single = true },
        Spec(short: nil, long: ["swap"], arity: .flag) { c, _ in c.swap = true },
        Spec(short: "t", long: ["threads"], arity: .value) { c, v in
            let n = try parseUnsigned("threads", v)
            c.threads = n == 0 ? 16 : Int(n)
        },
        Spec(short: nil, long: ["tls"], arity: .value) { c, v in
            // As nbdkit: require, required or force in any case, else any boolean for on or off.
            if ["require", "required", "force"].contains(v.lowercased()) {
                c.tls = .require
            } else if let on = parseBoolean(v) {
                c.tls = on ? .on : .off
            } else {
                throw ConfigError("could not decipher boolean (\(v))")
            }
        },
        Spec(short: nil, long: ["tls-certificates"], arity: .value) { c, v in c.tlsCertificates = v },
        Spec(short: nil, long: ["tls-psk"], arity: .value) { c, v in c.tlsPSK = v },
        Spec(short: nil, long: ["tls-verify-peer"], arity: .flag) { c, _ in c.tlsVerifyPeer = true },
        Spec(short: "U", long: ["unix"], arity: .value) { c, v in c.unixSocket = v },
        Spec(short: "u", long: ["user"], arity: .value) { c, v in c.user = v },
        Spec(short: "v", long: ["verbose"], arity: .flag) { c, _ in c.verbose = true },
        Spec(short: "V", long: ["version"], arity: .flag) { c, _ in c.action = c.action.yielding(to: .version) },
        Spec(short: nil, long: ["vsock"], arity: .flag) { c, _ in c.vsock = true },
    ]

    /// A command-line mistake, reported as getopt reports it.
    struct UsageError: Error { let message: String }

    static func parse(_ arguments: [String]) throws -> Configuration {
        var config = Configuration()
        var positional: [String] = []
        var i = 0
        /// The next argument, as the value of option `name` ("--unix" or "U").
        func value(for name: String) throws -> String {
            i += 1
            guard i < arguments.count else {
                throw UsageError(message: name.hasPrefix("--") ? "option '\(name)' requires an argument"
                                                               : "option requires an argument -- '\(name)'")
            }
            return arguments[i]
        }
        while i < arguments.count {
            let arg = arguments[i]
            if arg == "--" {
                positional += arguments[(i + 1)...]
                break
            } else if arg.hasPrefix("--") {
                let body = arg.dropFirst(2)
                let name = String(body.prefix { $0 != "=" })
                let inline = body.contains("=") ? String(body.drop { $0 != "=" }.dropFirst()) : nil
                let spec = try lookupLong(name, arg: arg)
                switch spec.arity {
                case .flag:
                    if inline != nil { throw UsageError(message: "option '--\(name)' doesn't allow an argument") }
                    try spec.apply(&config, "")
                case .value:
                    try spec.apply(&config, try inline ?? value(for: "--\(name)"))
                }
            } else if arg.hasPrefix("-") && arg != "-" {
                var rest = Substring(arg.dropFirst())
                while let c = rest.first {
                    rest = rest.dropFirst()
                    guard let spec = specs.first(where: { $0.short == c }) else {
                        throw UsageError(message: "invalid option -- '\(c)'")
                    }
                    if spec.arity == .value {
                        try spec.apply(&config, rest.isEmpty ? try value(for: String(c)) : String(rest))
                        break
                    }
                    try spec.apply(&config, "")
                }
            } else {
                positional.append(arg)
            }
            if config.action.isImmediate { return config }
            i += 1
        }
        if let plugin = positional.first {
            config.plugin = plugin
            // As nbdkit: KEY=VALUE when what comes before the first '=' can be a key; anything
            // else (`1G`, `/a=b.img`) is a value for the plugin's magic key, wherever it stands.
            for p in positional.dropFirst() {
                if let eq = p.firstIndex(of: "="), isConfigKey(p[..<eq]) {
                    config.parameters.append((String(p[..<eq]), String(p[p.index(after: eq)...])))
                } else {
                    config.parameters.append(("", p))
                }
            }
        }
        return config
    }

    /// nbdkit's rule for a parameter key: a letter, then letters, digits, '.', '_' or '-'.
    static func isConfigKey(_ key: Substring) -> Bool {
        guard let first = key.unicodeScalars.first, first.isASCII, first.properties.isAlphabetic else { return false }
        return key.unicodeScalars.dropFirst().allSatisfy {
            $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "." || $0 == "_" || $0 == "-")
        }
    }

    /// nbdkit's form of a debug flag, NAME.FLAG=N: a name before the first '.', a flag up to
    /// the first '=' after it, and an integer (decimal, 0x hex or 0 octal, signed).
    static func isDebugFlag(_ text: String) -> Bool {
        guard let dot = text.firstIndex(of: "."), dot != text.startIndex,
              let eq = text[dot...].firstIndex(of: "="), eq != text.index(after: dot) else { return false }
        var number = Substring(text[text.index(after: eq)...])
        if number.first == "-" || number.first == "+" { number = number.dropFirst() }
        return digits(String(number)) != nil
    }

    /// Digits as C's strtoul reads them with base 0 (decimal, 0x hex, 0 octal), nothing else.
    static func digits(_ text: String) -> UInt32? {
        let lower = text.lowercased()
        if lower.hasPrefix("0x") { return UInt32(lower.dropFirst(2), radix: 16) }
        if lower.count > 1 && lower.hasPrefix("0") { return UInt32(lower.dropFirst(), radix: 8) }
        return UInt32(lower, radix: 10)
    }

    /// Exact long names, or an unambiguous prefix of one, as getopt_long allows.
    private static func lookupLong(_ name: String, arg: String) throws -> Spec {
        if let exact = specs.first(where: { $0.long.contains(name) }) { return exact }
        let candidates = specs.filter { $0.long.contains { $0.hasPrefix(name) } }
        if candidates.count == 1, !name.isEmpty { return candidates[0] }
        if candidates.count > 1 {
            let possibilities = candidates.flatMap { $0.long.filter { $0.hasPrefix(name) } }.sorted()
            throw UsageError(message: "option '\(arg)' is ambiguous; possibilities:" + possibilities.map { " '--\($0)'" }.joined())
        }
        throw UsageError(message: "unrecognized option '\(arg)'")
    }

    /// In the order of nbdkit's getopt string: by letter, a lower-case one before its capital.
    static var shortOptions: [String] {
        specs.compactMap { $0.short }
            .sorted { ($0.lowercased(), $0.isUppercase ? 1 : 0) < ($1.lowercased(), $1.isUppercase ? 1 : 0) }
            .map { "-\($0)" }
    }

    /// Every long option but the two that list options, in the order nbdkit prints them.
    static var longOptions: [String] {
        specs.flatMap { $0.long }.filter { $0 != "long-options" && $0 != "short-options" }.map { "--\($0)" }
    }
}
