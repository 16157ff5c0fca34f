import NBDPlugins

/// nbdkit's `-D NAME.FLAG=N` debug flags. nbdkit sets the global variable NAME_debug_FLAG of the
/// plugin, a filter or the server as it loads each, and warns about every flag that names none.
/// The flags nbdkit 1.32's server and its memory and file plugins define are accepted here
/// without a word (and change nothing); every other flag gets nbdkit's warning, in nbdkit's
/// order: the plugin's, the filters' from the innermost, the server's, then the unused ones.
enum DebugFlags {
    static let known: Set<String> = [
        "nbdkit.backend.controlpath", "nbdkit.backend.datapath", "nbdkit.tls.log", "nbdkit.tls.session",
        "memory.dir", "file.zero",
    ]

    /// The warnings for `flags` (each `NAME.FLAG=N`, in command-line order) when this plugin (as
    /// named on the command line) and these filters are loaded; none when no plugin is, as
    /// nbdkit, which looks at the flags only when it loads one.
    static func warnings(for flags: [String], plugin: String?, filters: [String]) -> [String] {
        guard let plugin, let factory = Registry.plugin(named: plugin) else { return [] }
        let modules = [factory.name] + filters.reversed().compactMap { Registry.filter(named: $0)?.name } + ["nbdkit"]
        let keys = flags.map { String($0.prefix { $0 != "=" }) }
        var used = [Bool](repeating: false, count: keys.count)
        var warnings: [String] = []
        for module in modules {
            for (i, key) in keys.enumerated() where key.hasPrefix(module + ".") {
                used[i] = true
                guard !known.contains(key) else { continue }
                let variable = "\(module)_debug_\(key.dropFirst(module.count + 1))".map { $0 == "." || $0 == "-" ? "_" : $0 }
                warnings.append("-D \(key): \(module) does not contain a global variable called \(String(variable))")
            }
        }
        for (i, key) in keys.enumerated() where !used[i] { warnings.append("debug flag -D \(key) was not used") }
        return warnings
    }
}
