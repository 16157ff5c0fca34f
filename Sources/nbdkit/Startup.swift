import Glibc
import CNBDShim
import NBDServer
import NBDPlugins

/// A complaint about how the program was run that nbdkit prints after its name alone, without
/// "error:".
struct UsageComplaint: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A failure of the server's own start-up (TLS files, sockets, -u/-g, forking, --swap, the pid
/// file) rather than of a plugin or filter: nbdkit reports these on stderr whatever --log says.
struct ServerStartupError: Error, CustomStringConvertible {
    let underlying: any Error
    var description: String { "\(underlying)" }

    /// Runs `body`, marking what it throws as a `ServerStartupError`.
    @discardableResult
    static func marking<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as ServerStartupError { throw e } catch { throw ServerStartupError(underlying: error) }
    }
}

/// The start-up order: signals, plugin and filters, sockets, background, memory lock, pid file
/// (unless the user changes), `--run`, privileges, pid file (if the user changed), the
/// backend's `afterFork`, then the accept loop; and the clean-up on every way out.
struct Startup {
    let config: Configuration
    let logger: Logger

    /// Runs the server; returns the process exit status.
    func run() throws -> Int32 {
        try config.validate()
        guard let pluginName = config.plugin else {
            if config.action == .dumpPlugin {
                throw UsageComplaint("use 'nbdkit plugin --dump-plugin' or\n'nbdkit /path/to/plugin.so --dump-plugin' or\nif you want to find out about the server use --dump-config")
            }
            throw UsageComplaint("no plugins given on the command line.\n\(Self.readTheManual)")
        }
        guard let factory = Registry.plugin(named: pluginName) else { throw Self.unknownPlugin(pluginName) }
        if config.action == .dumpPlugin {
            // As nbdkit, which loads the filters first: an unknown one is an error here too.
            for name in config.filters where Registry.filter(named: name) == nil { throw Self.unknownFilter(name) }
            // Parameters given are checked, as nbdkit's plugin and filters check them then.
            // (Nothing is completed: no disk made, no file opened, no required one asked for.)
            if !config.parameters.isEmpty { _ = try buildChain(factory, control: ServerControl(logger: logger), checkingOnly: true) }
            print(Help.dumpPlugin(factory), terminator: "")
            return 0
        }

        // (Its warning on stderr whatever --log says, as nbdkit's.)
        let tls = try ServerStartupError.marking { try config.tlsSettings(warn: Logger().warning) }
        let parentAtStart = getppid()
        let signals = try SignalSource()
        let control = try ServerControl(logger: logger)
        // As nbdkit, every parameter is taken and checked before anything is completed (a disk
        // made, a file opened): a first pass, with a control of its own, reports an unknown one.
        _ = try buildChain(factory, control: ServerControl(logger: logger), checkingOnly: true)
        let backend = try buildChain(factory, control: control)
        try backend.getReady()
        // As nbdkit: a filter that asked to exit while getting ready (exitwhen, whose event
        // already happened) ends the run here, with status 0: no socket, no pid file, no --run.
        if control.isDraining { return 0 }
        // (nbdkit finds an unknown -u or -g name only once its --run command has started.)
        let ids = try ServerStartupError.marking { try userAndGroupIDs() }

        var temporaryDirectory: String? = nil
        var listeners: Listeners? = nil
        /// Closes the listening sockets and removes the Unix socket and its private directory; idempotent.
        func stopListening() {
            listeners?.sockets.forEach { $0.close() }
            listeners?.removeUnixSocket()
            if let dir = temporaryDirectory { _ = rmdir(dir) }
            listeners = nil
            temporaryDirectory = nil
        }
        defer { stopListening() }
        switch config.listenMode {
        case .single:
            break
        case .activated:
            let passed = config.activatedSockets
            try ServerStartupError.marking { try SocketActivation.checkListening(passed) }
            for socket in passed { logger.debug("socket activation: serving fd \(socket.fd.raw) (\(socket.name))") }
            listeners = Listeners(sockets: passed.map(\.fd), port: nil, unixPath: nil)
        case .unixTemporary:
            let dir = try ServerStartupError.marking { try makeTemporaryDirectory() }
            temporaryDirectory = dir
            listeners = try ServerStartupError.marking { try Listeners.bind(.unix(path: dir + "/socket"), label: config.selinuxLabel) }
        case .unix(let path):
            listeners = try ServerStartupError.marking { try Listeners.bind(.unix(path: path), label: config.selinuxLabel) }
        case .tcp(let host, let port, let family):
            listeners = try ServerStartupError.marking {
                try Listeners.bind(.tcp(host: host, port: port, family: family), label: config.selinuxLabel)
            }
        case .vsock(let port):
            // As nbdkit: the label is for Unix and TCP sockets only.
            listeners = try ServerStartupError.marking { try Listeners.bind(.vsock(port: port)) }
        }

        // What may still fail is done before any --run command starts where it can be, so that a
        // start-up error leaves no command running: the process that serves is the one in the
        // background if it forks there (memory locks are not inherited); its memory is locked
        // and, unless the user changes, the pid file written, so the command finds it. (The
        // backend's `afterFork` comes once the user has changed, as nbdkit's after_fork: a
        // filter may run the user's scripts there.)
        let readiness = config.staysInForeground ? nil : try ServerStartupError.marking { try Daemon.detach() }
        let changesUser = ids.uid != nil || ids.gid != nil
        let losesPrivileges = geteuid() == 0 && (ids.uid ?? 0) != 0
        if config.swap { try ServerStartupError.marking { try lockMemory(forUnprivilegedUser: losesPrivileges) } }
        var pidFileWritten = false
        defer { if pidFileWritten, let pidFile = config.pidFile { Daemon.removePIDFile(pidFile) } }
        func writePIDFile() throws {
            guard let pidFile = config.pidFile else { return }
            try ServerStartupError.marking { try Daemon.writePIDFile(pidFile) }
            pidFileWritten = true
        }
        if !changesUser { try writePIDFile() }

        var captive: CaptiveProcess? = nil
        if let command = config.run, let listeners {
            let script = CaptiveCommand(command: command).script(
                listeners: listeners, exportName: config.exportName,
                tls: tls.mode == .off ? nil : (tls.mode == .on ? 1 : 2))
            captive = try CaptiveCommand.spawn(script: script)
            captive?.startWatcher(temporaryDirectory: temporaryDirectory)
        }
        defer { captive?.dismissWatcher() }
        // Until the server runs, any way out (a start-up error, --exit-with-parent finding the
        // parent gone) takes the command down with it: nothing may outlive nbdkit.
        var commandHandedToServer = false
        defer {
            if let captive, !commandHandedToServer {
                captive.signal(SIGTERM)
                _ = captive.wait()
                captive.restoreTerminal()
            }
        }

        // (As nbdkit, the command runs as the user who started nbdkit, and the pid file is
        // written as the new user.)
        try ServerStartupError.marking { try dropPrivileges(to: ids, handingOver: temporaryDirectory) }
        if changesUser { try writePIDFile() }
        if config.exitWithParent {
            try ServerStartupError.marking { try syscall("prctl") { CNBDShim_set_parent_death_signal(SIGTERM) } }
            // The parent may have died before the signal was armed.
            if getppid() != parentAtStart { return 0 }
        }
        try backend.afterFork()

        if let readiness {
            // (Standard error goes to /dev/null now, unless -v keeps it.)
            logger.movedToBackground()
            readiness.ready(keepStderr: config.verbose)
        }
        let server = Server(context: ServerContext(backend: backend, logger: logger, readonly: config.readonly,
                                                   threads: config.threads, style: config.style, tls: tls,
                                                   handshakeFlags: config.handshakeFlags,
                                                   offersStructuredReplies: !config.noStructuredReplies),
                            control: control)
        guard let listeners else {
            server.serveSingle(PlainTransport(readFD: 0, writeFD: 1), signals: signals)
            return 0
        }
        commandHandedToServer = true
        let outcome = server.run(sockets: listeners.sockets, signals: signals, captive: captive)
        defer { captive?.restoreTerminal() }
        switch outcome {
        case .commandEnded(let status):
            let (code, signal) = shellStatus(status)
            if let signal { logger.plain("external command was killed by signal \(signal)") }
            return code
        case .requested:
            guard let captive else { return 0 }
            // As nbdkit: a filter ending the server (exitlast, exitwhen) ends the serving, not the
            // command. Later clients are refused; the command runs on and its status is nbdkit's.
            stopListening()
            let status = captive.wait(forwarding: signals)
            if let signal = shellStatus(status).signal { logger.plain("external command was killed by signal \(signal)") }
            return shellStatus(status).status
        case .signalled:
            guard let captive else { return 0 }
            // The server passed the signal on to the command's whole process group; once the
            // command has gone, nothing of its group may outlive the server.
            let status = captive.wait()
            captive.signal(SIGKILL)
            if let signal = shellStatus(status).signal { logger.plain("external command was killed by signal \(signal)") }
            return shellStatus(status).status
        }
    }

    /// `--swap`: every page of the process, present and future, stays in RAM. With
    /// `forUnprivilegedUser` (root changing to another user with -u) the memory-lock limit is
    /// lifted first, or it is a start-up error: that user can't lock past the limit, and every
    /// mapping the server makes from then on (each thread's stack, the memory plugin's disk)
    /// is locked and counted beside all that is locked already. (The --run command, started
    /// after this, keeps the lifted limit; it runs as root, which may lock past it anyway.)
    private func lockMemory(forUnprivilegedUser: Bool) throws {
        let resource = __rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue)
        var unlimited = rlimit(rlim_cur: rlim_t.max, rlim_max: rlim_t.max)
        if forUnprivilegedUser && setrlimit(resource, &unlimited) != 0 {
            let error = SystemError("setrlimit")
            var limit = rlimit()
            _ = getrlimit(resource, &limit)
            throw ConfigError("--swap: the memory-lock limit (RLIMIT_MEMLOCK, \(limit.rlim_max) bytes) can't be lifted for the user the server changes to, which could not start its threads: \(error)")
        }
        do {
            try syscall("mlockall") { mlockall(MCL_CURRENT | MCL_FUTURE) }
        } catch {
            throw ConfigError("--swap: \(error)")
        }
    }

    /// The plugin, then each filter in front of it: the first `--filter` named ends up outermost.
    /// As nbdkit, a parameter nobody knows is reported before a completion error (a required
    /// one missing, a file that can't be served: `ConfigError.isCompletionError`). With
    /// `checkingOnly` the parameters are only taken and checked: plugins complete nothing
    /// (`PluginOptions.checksOnly`), a completion error is none, and the chain returned has
    /// stand-ins for plugins: it is not to be served.
    private func buildChain(_ factory: any PluginFactory.Type, control: ServerControl,
                            checkingOnly: Bool = false) throws -> any Backend {
        var pairs = config.parameters
        for i in pairs.indices where pairs[i].key.isEmpty {
            guard let magic = factory.magicConfigKey else {
                throw ConfigError("\(factory.name): this plugin does not take a bare parameter ('\(pairs[i].value)'); use key=value")
            }
            pairs[i].key = magic
        }
        var parameters = Parameters(pairs)
        var incomplete: ConfigError? = nil
        // `make`'s backend; after a completion error, a stand-in, the error kept.
        func built(_ make: () throws -> any Backend) throws -> any Backend {
            do { return try make() } catch let error as ConfigError where error.isCompletionError {
                // (The outermost one's, as nbdkit completes the filters' configuration first.)
                incomplete = error
                return Registry.standIn()
            }
        }
        let options = PluginOptions(readonly: config.readonly, locksMemory: config.swap, checksOnly: checkingOnly)
        var backend = try built { try factory.make(&parameters, options: options) }
        for name in config.filters.reversed() {
            guard let filter = Registry.filter(named: name) else { throw Self.unknownFilter(name) }
            backend = try built { [backend] in try filter.make(&parameters, next: backend, control: control) }
        }
        try parameters.rejectUnknown()
        if let incomplete, !checkingOnly { throw incomplete }
        return backend
    }

    static func unknownPlugin(_ name: String) -> ConfigError {
        ConfigError("cannot open plugin '\(name)': no such built-in plugin (available: \(Registry.plugins.map { $0.name }.joined(separator: ", ")))\n\(readTheManual)")
    }

    static let readTheManual = "Use 'nbdkit --help' or read the nbdkit(1) manual page for documentation."

    /// The plugin and the filters named on the command line, checked in nbdkit's order (the
    /// plugin first); nil if none was named.
    static func components(_ config: Configuration) throws -> (plugin: any PluginFactory.Type, filters: [any FilterFactory.Type])? {
        guard let name = config.plugin else { return nil }
        guard let plugin = Registry.plugin(named: name) else { throw unknownPlugin(name) }
        let filters = try config.filters.map { name in
            guard let filter = Registry.filter(named: name) else { throw unknownFilter(name) }
            return filter
        }
        return (plugin, filters)
    }

    static func unknownFilter(_ name: String) -> ConfigError {
        ConfigError("cannot open filter '\(name)': no such built-in filter (available: \(Registry.filters.map { $0.name }.joined(separator: ", ")))")
    }

    /// Makes the private directory of `-U -`: under `$TMPDIR` where that names an existing
    /// directory by an absolute path short enough for the socket inside it and the directory
    /// can be made there, else under /tmp, where nbdkit 1.32 always makes it (so an unset,
    /// empty, relative, missing, too long or unwritable `$TMPDIR` works as with nbdkit).
    private func makeTemporaryDirectory() throws -> String {
        func make(under base: String) throws(SystemError) -> String {
            var template = Array((base + "/nbdkitXXXXXX").utf8CString)
            guard mkdtemp(&template) != nil else { throw SystemError("mkdtemp: \(base)/nbdkitXXXXXX") }
            return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        if let base = getenv("TMPDIR").map({ String(cString: $0) }), base.hasPrefix("/"),
           base.utf8.count + "/nbdkitXXXXXX/socket".utf8.count < MemoryLayout.size(ofValue: sockaddr_un().sun_path),
           let made = try? make(under: base) {
            return made
        }
        return try make(under: "/tmp")
    }

    /// The ids `-g` and `-u` name (a name, or else a number), nil where not given.
    private func userAndGroupIDs() throws -> (gid: gid_t?, uid: uid_t?) {
        var ids: (gid: gid_t?, uid: uid_t?) = (nil, nil)
        if let group = config.group {
            if let g = getgrnam(group) { ids.gid = g.pointee.gr_gid } else if let n = UInt32(group) { ids.gid = n } else {
                throw ConfigError("-g option: \(group) is not a valid group name or gid")
            }
        }
        if let user = config.user {
            if let p = getpwnam(user) { ids.uid = p.pointee.pw_uid } else if let n = UInt32(user) { ids.uid = n } else {
                throw ConfigError("-u option: \(user) is not a valid user name or uid")
            }
        }
        return ids
    }

    /// `-g` then `-u`, after binding and before serving. `directory` (the private directory of
    /// `-U -`) is given to the new user first, so that the socket can still be removed at exit.
    private func dropPrivileges(to ids: (gid: gid_t?, uid: uid_t?), handingOver directory: String?) throws {
        if let gid = ids.gid {
            try syscall("setgroups") { setgroups(1, [gid]) }
            try syscall("setgid") { setgid(gid) }
        }
        if let uid = ids.uid {
            if let directory {
                try syscall("chown: \(directory)") { chown(directory, uid, ids.gid ?? gid_t.max) }
            }
            try syscall("setuid") { setuid(uid) }
        }
    }
}
