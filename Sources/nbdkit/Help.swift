import NBDServer
import NBDPlugins

/// Texts printed by `--help`, `--version`, `--dump-config` and `--dump-plugin`.
enum Help {
    static let version = "1.32.5"

    static let usage = """
    nbdkit [-4|--ipv4-only] [-6|--ipv6-only]
           [-D|--debug PLUGIN|FILTER|nbdkit.FLAG=N]
           [--exit-with-parent] [-e|--exportname EXPORTNAME]
           [--filter=FILTER ...] [-f|--foreground]
           [-g|--group GROUP] [-i|--ipaddr IPADDR]
           [--log=stderr|syslog|null] [--mask-handshake=MASK]
           [-n|--newstyle] [--no-sr] [-o|--oldstyle]
           [-P|--pidfile PIDFILE] [-p|--port PORT]
           [-r|--readonly] [--run 'COMMAND ARGS ...']
           [-s|--single] [--selinux-label=LABEL] [--swap]
           [-t|--threads THREADS]
           [--tls=off|on|require]
           [--tls-certificates=/path/to/certificates]
           [--tls-psk=/path/to/pskfile] [--tls-verify-peer]
           [-U|--unix SOCKET|-] [-u|--user USER]
           [-v|--verbose] [--vsock]
           PLUGIN [[KEY=]VALUE [KEY=VALUE [...]]]

    nbdkit --dump-config

    nbdkit PLUGIN --dump-plugin

    nbdkit --help

    nbdkit [-V|--version]

    nbdkit --short-options | --long-options

    Synonyms: --export, --export-name for --exportname; --ip-addr for --ipaddr;
    --new-style for --newstyle; --old-style for --oldstyle; --no-fork for
    --foreground; --pid-file for --pidfile; --read-only for --readonly;
    --stdin for --single.

    Built-in plugins: \(Registry.plugins.map { $0.name }.joined(separator: ", "))
    Built-in filters: \(Registry.filters.map { $0.name }.joined(separator: ", "))

    Please read the nbdkit(1) manual page for full usage.

    """

    /// As nbdkit with `--help` after a plugin name: the parameters of each filter named, then
    /// of the plugin. Empty when no plugin is named.
    static func componentHelp(_ config: Configuration) -> String {
        guard let name = config.plugin, let plugin = Registry.plugin(named: name) else { return "" }
        var text = ""
        for filterName in config.filters {
            guard let filter = Registry.filter(named: filterName) else { continue }
            text += "\nfilter: \(filter.name)\n" + (filter.configHelp.isEmpty ? "" : filter.configHelp + "\n")
        }
        text += "\nplugin: \(plugin.name)\n" + (plugin.configHelp.isEmpty ? "" : plugin.configHelp + "\n")
        return text
    }

    /// nbdkit's keys, sorted as nbdkit sorts them, less those about where shared objects and
    /// manual pages are installed (the plugins and filters are built in: `plugins=`, `filters=`).
    static func dumpConfig(binary: String) -> String {
        let bindir = binary.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return """
        binary=\(binary)
        bindir=\(bindir)
        exit_with_parent=yes
        filters=\(Registry.filters.map { $0.name }.joined(separator: ","))
        host_cpu=x86_64
        host_os=linux-gnu
        name=nbdkit
        plugins=\(Registry.plugins.map { $0.name }.joined(separator: ","))
        root_tls_certificates_dir=\(Configuration.rootCertificateDirectory)
        sbindir=\(bindir)
        selinux=yes
        sysconfdir=/etc
        tls=yes
        version=\(version)
        version_major=1
        version_minor=32
        zstd=no

        """
    }

    static func dumpPlugin(_ plugin: any PluginFactory.Type) -> String {
        var s = "name=\(plugin.name)\nversion=\(version)\napi_version=2\n"
        s += "max_thread_model=\(plugin.threadModel)\nthread_model=\(plugin.threadModel)\n"
        s += "errno_is_preserved=1\n"
        if let key = plugin.magicConfigKey { s += "magic_config_key=\(key)\n" }
        for callback in PluginCallback.allCases where plugin.callbacks.contains(callback) {
            s += "has_\(callback.rawValue)=1\n"
        }
        for field in plugin.dumpPluginFields { s += field + "\n" }
        return s
    }
}
