import NBDServer

/// A plugin the `nbdkit` command can name.
public protocol PluginFactory: SendableMetatype {
    static var name: String { get }
    /// The key a bare first value is given to (`memory 1G` means `size=1G`).
    static var magicConfigKey: String? { get }
    /// One line per parameter, for `--help` after the plugin name.
    static var configHelp: String { get }
    static var threadModel: ThreadModel { get }
    /// The nbdkit callbacks whose behaviour this plugin provides (`has_NAME=1` in `--dump-plugin`).
    static var callbacks: Set<PluginCallback> { get }
    /// Facts about this plugin that `--dump-plugin` prints last, as `key=value` lines.
    static var dumpPluginFields: [String] { get }
    /// Builds the plugin from its parameters, taking the keys it knows (the caller rejects the rest).
    /// Problems a user can fix (a missing file, a bad size) are thrown here, at startup.
    static func make(_ parameters: inout Parameters, options: PluginOptions) throws -> any Backend
}

extension PluginFactory {
    public static var dumpPluginFields: [String] { [] }
}

/// Server settings a plugin may need while it is configured.
public struct PluginOptions: Sendable {
    /// `-r`: the plugin will only be asked to read.
    public var readonly: Bool
    /// `--swap`: every page the process maps will be locked into RAM (`mlockall`), so a plugin
    /// must not map memory that should stay sparse or swappable.
    public var locksMemory: Bool
    /// Only take and check the parameters (`--dump-plugin`, and the pass that reports an
    /// unknown parameter first): the plugin completes nothing (no disk, no file opened) and
    /// returns `Registry.standIn()`.
    public var checksOnly: Bool
    public init(readonly: Bool, locksMemory: Bool = false, checksOnly: Bool = false) {
        self.readonly = readonly
        self.locksMemory = locksMemory
        self.checksOnly = checksOnly
    }
}

/// A filter the `nbdkit` command can name with `--filter`.
public protocol FilterFactory: SendableMetatype {
    static var name: String { get }
    static var configHelp: String { get }
    /// Builds the filter in front of `next`, taking the keys it knows. `control` steers the server.
    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend
}

/// The built-in plugins and filters, found by name.
public enum Registry {
    public static let plugins: [any PluginFactory.Type] = [
        Example1Plugin.self, FilePlugin.self, MemoryPlugin.self, NullPlugin.self, PatternPlugin.self,
    ]

    public static let filters: [any FilterFactory.Type] = [
        DelayFilter.self, ExitLastFilter.self, ExitWhenFilter.self, NoExtentsFilter.self, OffsetFilter.self,
        TarFilter.self, TLSFallbackFilter.self,
    ]

    /// The plugin `name` names: a built-in's name, or the path of nbdkit's shared object for it
    /// (`/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-memory-plugin.so`), as scripts written
    /// for nbdkit may give.
    public static func plugin(named name: String) -> (any PluginFactory.Type)? {
        let name = builtInName(name, kind: "plugin")
        return plugins.first { $0.name == name }
    }

    /// The filter `name` names, as `plugin(named:)` (`nbdkit-offset-filter.so`).
    public static func filter(named name: String) -> (any FilterFactory.Type)? {
        let name = builtInName(name, kind: "filter")
        return filters.first { $0.name == name }
    }

    /// A backend that stands in for a plugin that could not be made, so that the filters in
    /// front of it still take and check their parameters (an empty null disk).
    public static func standIn() -> any Backend { NullPlugin(size: 0) }

    /// NAME for a path ending in `/nbdkit-NAME-KIND.so`; anything else as it is.
    static func builtInName(_ given: String, kind: String) -> String {
        guard let slash = given.lastIndex(of: "/") else { return given }
        let base = given[given.index(after: slash)...]
        let prefix = "nbdkit-", suffix = "-\(kind).so"
        guard base.hasPrefix(prefix), base.hasSuffix(suffix), base.count > prefix.count + suffix.count else { return given }
        return String(base.dropFirst(prefix.count).dropLast(suffix.count))
    }
}
