import Glibc
import NBDServer
import NBDProtocol

/// Where clients come from.
enum ListenMode: Equatable {
    case tcp(host: String?, port: String, family: AddressFamily)
    case unix(path: String)
    /// `--vsock`: AF_VSOCK on the port of `-p` (10809 by default).
    case vsock(port: UInt32)
    /// `-U -`: a socket in a private temporary directory, removed at exit.
    case unixTemporary
    /// `-s`: one client on stdin and stdout.
    case single
    /// Sockets passed by systemd (LISTEN_FDS).
    case activated
}

/// What the command line asks for.
/// What the command does. As in nbdkit, `--dump-config`, `--short-options` and `--long-options`
/// act as soon as they are read (what follows them is not parsed); of the others, `--help`
/// wins over `--version`, which wins over `--dump-plugin`, whatever their order.
enum Action: Equatable {
    case serve, help, version, dumpConfig, dumpPlugin, shortOptions, longOptions

    /// Ends option parsing at once.
    var isImmediate: Bool { self == .dumpConfig || self == .shortOptions || self == .longOptions }

    /// `other`, read after this one, takes over: a later-read action of higher rank does.
    func yielding(to other: Action) -> Action { other.rank >= rank ? other : self }

    private var rank: Int {
        switch self {
        case .serve: 0
        case .dumpPlugin: 1
        case .version: 2
        case .help: 3
        case .dumpConfig, .shortOptions, .longOptions: 4
        }
    }
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
    var vsock = false
    var single = false
    var exportName = ""
    var readonly = false
    var threads = 16
    var foreground = false
    var style = HandshakeStyle.newstyle
    /// `--mask-handshake`: which global handshake flags newstyle offers (bit 0 fixed newstyle, bit 1 no zeroes).
    var handshakeMask: UInt32 = .max
    /// `--no-sr`: decline structured replies.
    var noStructuredReplies = false
    var verbose = false
    /// `--log`; nil without it (nbdkit's default: see `Logger.chosen`).
    var log: LogDestination? = nil
    var run: String? = nil
    var exitWithParent = false
    /// `--swap`: lock the serving process into memory (the export is swap on this machine).
    var swap = false
    /// `--selinux-label`: the SELinux label of the listening sockets.
    var selinuxLabel: String? = nil
    var pidFile: String? = nil
    /// `--tls`; nil when not given: then TLS is on if credentials load, as in nbdkit.
    var tls: TLSMode? = nil
    var tlsCertificates: String? = nil
    var tlsPSK: String? = nil
    var tlsVerifyPeer = false
    var user: String? = nil
    var group: String? = nil
    var debugFlags: [String] = []
    /// The sockets systemd passed (socket activation), taken first thing.
    var activatedSockets: [SocketActivation.PassedSocket] = []
    var socketActivated: Bool { !activatedSockets.isEmpty }

    /// Where to listen, from -U, -s, -p, -i, -4 and -6.
    var listenMode: ListenMode {
        if socketActivated { return .activated }
        if single { return .single }
        if let unixSocket { return unixSocket == "-" ? .unixTemporary : .unix(path: unixSocket) }
        // `validate` has checked the port.
        if vsock { return .vsock(port: UInt32(port ?? "10809") ?? 10809) }
        return .tcp(host: ipaddr, port: port ?? "10809", family: family)
    }

    /// Whether the server stays in the foreground (`-f`, `--run`, `--exit-with-parent`, `-s`).
    var staysInForeground: Bool { foreground || run != nil || exitWithParent || single || socketActivated }

    /// The TLS settings, with credentials loaded now so that bad files are found at start-up.
    /// As in nbdkit: `--tls-psk` takes precedence over certificates, and a PSK file that can't
    /// be loaded is an error unless `--tls=off`. A certificate directory is one where
    /// ca-cert.pem, server-cert.pem and server-key.pem can all be read; without one, that is an
    /// error under `--tls=require`, a warning (`warn`) with TLS off under `--tls=on`, and
    /// without `--tls` simply leaves TLS off (GnuTLS is not even loaded then). Certificates
    /// that are there but don't load (a bad key) are an error whatever the mode; a ca-crl.pem
    /// that is there but can't be read is left out with a warning. Without
    /// `--tls`, credentials that load turn TLS on (`$tls` 1); an oldstyle server still
    /// serves plaintext then, having no way to offer TLS.
    func tlsSettings(warn: (String) -> Void) throws -> TLSSettings {
        if tls == .off { return .off }
        let credentials: TLSCredentials
        if let psk = tlsPSK {
            credentials = try TLSCredentials(pskFile: psk)
        } else {
            let candidates = tlsCertificates.map { [$0] } ?? Configuration.defaultCertificateDirectories
            guard let directory = candidates.first(where: { Self.unreadableCertificate(in: $0) == nil }) else {
                let reasons = candidates.compactMap { Self.unreadableCertificate(in: $0) }
                let why = reasons.isEmpty ? "no certificate directory: HOME is not set" : reasons.joined(separator: "; ")
                if tls == .require {
                    throw ConfigError("--tls=require but could not load TLS certificates (\(why))\n"
                                      + "Try setting '--tls-certificates=/path/to/certificates' or read nbdkit-tls(1).")
                }
                if tls == .on {
                    warn("--tls=on but could not load TLS certificates (\(why)); TLS is disabled and TLS connections will be rejected")
                }
                return .off
            }
            credentials = try TLSCredentials(x509Directory: directory)
            // As nbdkit, a revocation list the server can't read is left out; unlike nbdkit,
            // not without a word, since revoked client certificates then get in.
            let revocations = directory + "/ca-crl.pem"
            if access(revocations, F_OK) == 0 && access(revocations, R_OK) != 0 {
                warn("\(SystemError(revocations)): the certificate revocation list is not used, so revoked client certificates are not refused")
            }
        }
        return TLSSettings(mode: tls ?? .on, credentials: credentials, verifyPeer: tlsVerifyPeer)
    }

    /// The first of the three files a certificate directory must hold that can't be read, with
    /// the reason; nil when all three can.
    static func unreadableCertificate(in directory: String) -> String? {
        for name in ["ca-cert.pem", "server-cert.pem", "server-key.pem"] {
            let path = directory + "/" + name
            if access(path, R_OK) != 0 { return "\(SystemError(path))" }
        }
        return nil
    }

    /// Where root's certificates are looked for when TLS is on and no directory is given.
    static let rootCertificateDirectory = "/etc/pki/nbdkit"

    /// nbdkit's defaults, tried in order: /etc/pki/nbdkit when the effective user is root;
    /// else $HOME/.pki/nbdkit, then $HOME/.config/pki/nbdkit (none without HOME).
    static var defaultCertificateDirectories: [String] {
        if geteuid() == 0 { return [rootCertificateDirectory] }
        guard let home = getenv("HOME").map({ String(cString: $0) }) else { return [] }
        return [home + "/.pki/nbdkit", home + "/.config/pki/nbdkit"]
    }

    /// This configuration with `-P` and `-U` made absolute against the current directory, as
    /// nbdkit_absolute_path does, so they name the same files after the daemon moves to /.
    func withAbsolutePaths() throws(ConfigError) -> Configuration {
        var resolved = self
        if let pidFile { resolved.pidFile = try absolutePath(pidFile) }
        if let unixSocket, unixSocket != "-" { resolved.unixSocket = try absolutePath(unixSocket) }
        // GnuTLS reads the PSK file again at each handshake, after the move to /.
        if let tlsPSK { resolved.tlsPSK = try absolutePath(tlsPSK) }
        // (An empty directory name is kept: as in nbdkit it names no certificates.)
        if let tlsCertificates, !tlsCertificates.isEmpty { resolved.tlsCertificates = try absolutePath(tlsCertificates) }
        return resolved
    }

    /// Cross-option checks nbdkit makes before starting.
    func validate() throws {
        if socketActivated && (port != nil || ipaddr != nil || unixSocket != nil || run != nil || single || vsock) {
            throw ConfigError("socket activation cannot be used with -p, -i, -U, --run, -s or --vsock")
        }
        // nbdkit's one message (without "error:") for where to listen given twice, or -s with
        // --run or --dump-plugin.
        if vsock && (unixSocket != nil || single) || port != nil && unixSocket != nil
            || single && (port != nil || unixSocket != nil || run != nil || action == .dumpPlugin) {
            throw UsageComplaint("--dump-plugin, -p, --run, -s, -U or --vsock options cannot be used in this combination")
        }
        // A vsock port is a 32-bit number; a TCP port a 16-bit one or a service name (which
        // starts with a letter), which getaddrinfo looks up (`-p nbd`). Anything else would
        // reach getaddrinfo too, which reads ' 70000' or '+70000' as a number and truncates it.
        if let port, vsock ? UInt32(port) == nil : !(port.first?.isLetter ?? false) && UInt16(port) == nil {
            throw ConfigError("cannot parse port number '\(port)'")
        }
        if tls == .require && style == .oldstyle {
            throw UsageComplaint("cannot use oldstyle protocol (-o) and require TLS")
        }
        if threads < 1 { throw ConfigError("-t (--threads) must be at least 1") }
    }

    /// The global flags the newstyle greeting offers.
    var handshakeFlags: HandshakeFlags {
        HandshakeFlags([.fixedNewstyle, .noZeroes]).intersection(HandshakeFlags(rawValue: UInt16(truncatingIfNeeded: handshakeMask)))
    }
}
