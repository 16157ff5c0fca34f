import Glibc
import NBDServer
import NBDProtocol

/// `file file=PATH` serves a regular file or block device; `file dir=DIR` serves each regular
/// file or block device in DIR (hidden ones too, as nbdkit) as an export named after it, and
/// refuses every other name, the default export "" too. Each connection opens the file itself. `cache=` and `fadvise=`
/// (`FileCaching`) apply to every file served.
public final class FilePlugin: Backend {
    public let name = "file"
    private enum Source { case file(String), directory(String) }
    private let source: Source
    private let caching: FileCaching

    private init(source: Source, caching: FileCaching) {
        self.source = source
        self.caching = caching
    }

    public func listExports(readonly: Bool, isTLS: Bool) throws -> [ExportInfo] {
        switch source {
        case .file: return [ExportInfo(name: "")]
        case .directory(let dir): return try Self.entries(of: dir).map { ExportInfo(name: $0) }
        }
    }

    // The default export is "" (the protocol's default): with dir=, as in nbdkit, it names no
    // file, so a client that asks for the default export is refused.

    public func open(_ request: OpenRequest) throws -> any BackendConnection {
        let path: String
        switch source {
        case .file(let p):
            path = p
        case .directory(let dir):
            // Exactly the listed names: never a subdirectory, FIFO or path outside DIR.
            let name = request.exportName
            guard !name.contains("/"), try Self.entries(of: dir).contains(name) else {
                throw BackendError(.einval, "no regular file or block device named '\(name)' in \(dir)")
            }
            path = dir + "/" + name
        }
        let connection = try FileConnection(path: path, readonly: request.readonly, caching: caching)
        if case .directory = source, !connection.isRegularOrBlockDevice {
            // The name was replaced by something else since it was listed.
            connection.close()
            throw BackendError(.einval, "file is not regular or block device: \(path)")
        }
        return connection
    }

    /// Names of the regular files and block devices in `dir` ("." and ".." are directories),
    /// sorted.
    private static func entries(of dir: String) throws -> [String] {
        guard let d = opendir(dir) else { throw BackendError(SystemError("opendir: \(dir)")) }
        defer { closedir(d) }
        var names: [String] = []
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            var st = stat()
            guard stat(dir + "/" + name, &st) == 0 else { continue }
            let kind = st.st_mode & S_IFMT
            if kind == S_IFREG || kind == S_IFBLK { names.append(name) }
        }
        return names.sorted()
    }
}

extension FilePlugin: PluginFactory {
    public static let name = "file"
    public static let magicConfigKey: String? = "file"
    public static let configHelp = """
        [file=]<FILENAME>  The filename to serve.
        dir=<DIRNAME>  A directory containing files to serve.
        cache=<MODE>  Set use of caching (default, none).
        fadvise=<LEVEL>  Set fadvise hint (normal, random, sequential).
        """
    public static let threadModel = ThreadModel.parallel
    public static let callbacks: Set<PluginCallback> = [
        .dumpPlugin, .config, .configComplete, .configHelp, .listExports, .open, .close, .getSize,
        .canWrite, .canTrim, .canExtents, .canFUA, .canMultiConn, .canCache, .pread, .pwrite, .flush,
        .trim, .zero, .extents, .cache,
    ]
    /// How trim and zero reach the file, named as nbdkit names them.
    public static let dumpPluginFields = ["file_falloc_fl_punch_hole=yes", "file_falloc_fl_zero_range=yes"]

    public static func make(_ parameters: inout Parameters, options: PluginOptions) throws -> any Backend {
        // As nbdkit, every path given is resolved (a missing one is an error even if a later one
        // replaces it).
        let file = try parameters.take("file", parsing: resolvedPath)
        let dir = try parameters.take("dir", parsing: resolvedPath)
        let caching = try FileCaching(taking: &parameters)
        if options.checksOnly { return Registry.standIn() }
        // As nbdkit, which checks these once it has read every parameter (config_complete).
        let source = try ConfigError.completing { () throws -> Source in
            switch (file, dir) {
            case (nil, nil):
                throw ConfigError("you must supply either [file=]<FILENAME> or dir=<DIRNAME> parameter after the plugin name on the command line")
            case (.some, .some):
                throw ConfigError("file= and dir= cannot be used at the same time")
            case (let path?, nil):
                // As nbdkit: a directory gets a hint, and anything else that is not a regular file
                // or block device (a character device, a FIFO, whose open could wait) is refused.
                var st = stat()
                guard stat(path, &st) == 0 else { throw ConfigError("stat: \(SystemError(path))") }
                if st.st_mode & S_IFMT == S_IFDIR { throw ConfigError("use dir= to serve files within \(path)") }
                guard st.st_mode & S_IFMT == S_IFREG || st.st_mode & S_IFMT == S_IFBLK else {
                    throw ConfigError("file is not regular or block device: \(path)")
                }
                // Open once now so that a file that can't be read is reported at startup, not at
                // the first connection. One that can only be read is served read-only, as nbdkit
                // does (each connection falls back to opening it so).
                var fd = Glibc.open(path, (options.readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
                if fd < 0 && !options.readonly { fd = Glibc.open(path, O_RDONLY | O_CLOEXEC) }
                guard fd >= 0 else { throw ConfigError("\(SystemError("open: \(path)"))") }
                _ = close(fd)
                return .file(path)
            case (nil, let path?):
                var st = stat()
                guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
                    throw ConfigError("expecting a directory: \(path)")
                }
                return .directory(path)
            }
        }
        return FilePlugin(source: source, caching: caching)
    }

    /// Resolves `path` now, since a background server changes its directory to /.
    private static func resolvedPath(_ path: String) throws -> String {
        // (nbdkit's words for an empty one.)
        guard !path.isEmpty else { throw ConfigError("cannot resolve a null or empty path") }
        guard let resolved = realpath(path, nil) else { throw ConfigError("realpath: \(SystemError(path))") }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
