import NBDServer

/// `--filter=tls-fallback [tlsreadme=MESSAGE]`: a plaintext client (under `--tls=on`) never
/// reaches the plugin. Whatever export it names, it gets one read-only 512-byte disk holding
/// the message, and the export list shows it nothing of the plugin's exports. Clients that
/// negotiated TLS pass through to the plugin unchanged.
final class TLSFallbackFilter: PassthroughFilter, @unchecked Sendable {
    /// The size of the disk a plaintext client sees.
    static let readmeSize = 512
    static let defaultReadme = "This NBD server requires TLS authentication before it will serve useful data.\n"

    /// Exactly `readmeSize` bytes: the message, cut or padded with NUL bytes.
    private let readme: [UInt8]

    init(next: any Backend, message: String) {
        var bytes = Array(message.utf8.prefix(Self.readmeSize))
        bytes += repeatElement(0, count: Self.readmeSize - bytes.count)
        readme = bytes
        super.init(next: next)
    }

    override var name: String { next.name }

    /// A plaintext client holding its connection open would lock every other client out of a
    /// plugin that serves one connection at a time.
    override func getReady() throws {
        guard next.threadModel > .serializeConnections else {
            throw ConfigError("the tls-fallback filter requires parallel connection support")
        }
        try next.getReady()
    }

    override func listExports(readonly: Bool, isTLS: Bool) throws -> [ExportInfo] {
        guard isTLS else { return [ExportInfo(name: "")] }
        return try next.listExports(readonly: readonly, isTLS: isTLS)
    }

    override func defaultExport(readonly: Bool, isTLS: Bool) throws -> String {
        guard isTLS else { return "" }
        return try next.defaultExport(readonly: readonly, isTLS: isTLS)
    }

    /// Plaintext connections are answered here, without opening the plugin: how long its open
    /// takes, or whether the export exists, is none of their business.
    override func open(_ request: OpenRequest) throws -> any BackendConnection {
        guard request.isTLS else { return Readme(bytes: readme) }
        return try next.open(request)
    }

    /// The disk a plaintext client sees: the message and nothing else, every capability off.
    final class Readme: BackendConnection, @unchecked Sendable {
        private let bytes: [UInt8]

        init(bytes: [UInt8]) { self.bytes = bytes }

        func size() throws -> UInt64 { UInt64(bytes.count) }

        /// The server checks every request against `size()`, so the range lies inside `bytes`.
        func pread(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws {
            let start = Int(offset)
            bytes.withUnsafeBytes { source in
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[start..<start + buffer.count]))
            }
        }
    }
}

extension TLSFallbackFilter: FilterFactory {
    static let name = "tls-fallback"
    static let configHelp = "tlsreadme=<MESSAGE>  Alternative contents for the plaintext dummy export."

    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend {
        TLSFallbackFilter(next: next, message: parameters.take("tlsreadme") ?? defaultReadme)
    }
}
