import Glibc
import NBDServer
import NBDPlugins

/// Parses the command line, then either prints what was asked or runs the server.
func main() -> Int32 {
    // As nbdkit: whatever the caller's umask, sockets, pid files and the --run command's files
    // get the usual 022 (a Unix socket made under 000 let every local user connect).
    umask(0o022)
    let reopened = Daemon.openMissingStandardStreams()
    let arguments = Array(CommandLine.arguments.dropFirst())
    var config: Configuration
    do {
        config = try OptionParser.parse(arguments)
    } catch let e as OptionParser.UsageError {
        // As nbdkit after getopt's complaint (which names the program as it was run): the
        // synopsis on standard output, status 1.
        Logger().raw("\(CommandLine.arguments.first ?? "nbdkit"): \(e.message)\n")
        print(Help.usage, terminator: "")
        return 1
    } catch {
        Logger().error("\(error)")
        return 1
    }
    if config.action == .serve {
        // First, before any descriptor of the server's own could take the number of one that
        // systemd did not pass (a syslog socket included).
        do {
            config.activatedSockets = try SocketActivation.takeSockets { Logger().raw("nbdkit: \($0)\n") }
        } catch {
            // As nbdkit's messages, without "error:".
            Logger().raw("nbdkit: \(error)\n")
            return 1
        }
        // -s serves standard input and output, which must be there: refused with nbdkit's
        // message (nbdkit refuses closed ones in every mode; other modes take /dev/null).
        if config.single && (reopened.contains(0) || reopened.contains(1)) {
            Logger().raw("expecting stdin/stdout to be opened: \(String(cString: strerror(EBADF)))\n")
            return 1
        }
    }
    let logger = Logger(destination: config.log, verbose: config.verbose)
    switch config.action {
    case .serve, .dumpPlugin, .dumpConfig, .version:
        // Always on stderr, as nbdkit prints them whatever --log says.
        for warning in DebugFlags.warnings(for: config.debugFlags, plugin: config.plugin, filters: config.filters) {
            logger.raw("nbdkit: warning: \(warning)\n")
        }
    case .help, .shortOptions, .longOptions: break
    }
    switch config.action {
    case .help, .version:
        // As nbdkit: nothing on standard output if the plugin or a filter named is unknown.
        let components: (plugin: any PluginFactory.Type, filters: [any FilterFactory.Type])?
        do { components = try Startup.components(config) } catch { Logger().error("\(error)"); return 1 }
        if config.action == .help {
            print(Help.usage + Help.componentHelp(config), terminator: "")
        } else {
            // With a plugin, a line for each filter and then the plugin.
            print("nbdkit \(Help.version) (swift-nbdkit)")
            for name in (components?.filters.map { $0.name } ?? []) + [components?.plugin.name].compactMap({ $0 }) {
                print("\(name) \(Help.version)")
            }
        }
        return 0
    case .dumpConfig: print(Help.dumpConfig(binary: executablePath()), terminator: ""); return 0
    case .shortOptions: OptionParser.shortOptions.forEach { print($0) }; return 0
    case .longOptions: OptionParser.longOptions.forEach { print($0) }; return 0
    case .serve, .dumpPlugin: break
    }
    // A file-size limit (ulimit -f) makes writes past it fail with EFBIG, reported to the
    // client, instead of killing the server. Commands it spawns get the default back.
    signal(SIGXFSZ, SIG_IGN)
    do {
        return try Startup(config: config.withAbsolutePaths(), logger: logger).run()
    } catch let complaint as UsageComplaint {
        Logger().raw("nbdkit: \(complaint)\n")
        return 1
    } catch let failure as ServerStartupError {
        // As nbdkit's: on stderr whatever --log says.
        Logger().error("\(failure)")
        return 1
    } catch {
        logger.error("\(error)")
        return 1
    }
}

/// The absolute path of this executable, from /proc/self/exe.
func executablePath() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    return n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "nbdkit"
}

exit(main())
