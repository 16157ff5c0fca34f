import Glibc
import NBDServer
import NBDProtocol

/// `null size=SIZE`: reads zeros, discards writes.
public final class NullPlugin: Backend {
    public let name = "null"
    private let size: UInt64
    /// /dev/null open for writing, where large payloads are spliced to be dropped; -1 if it
    /// can't be opened (payloads are then received into memory and dropped).
    fileprivate let devNull: Int32
    init(size: UInt64) {
        self.size = size
        devNull = Glibc.open("/dev/null", O_WRONLY | O_CLOEXEC)
    }
    deinit { if devNull >= 0 { _ = Glibc.close(devNull) } }

    public func open(_ request: OpenRequest) throws -> any BackendConnection { NullConnection(size: size, plugin: self) }
}

extension NullPlugin: PluginFactory {
    public static let name = "null"
    public static let magicConfigKey: String? = "size"
    public static let configHelp = "size=<SIZE>  Size of the disk (default 0)"
    public static let threadModel = ThreadModel.parallel
    public static let callbacks: Set<PluginCallback> = [
        .config, .configHelp, .open, .getSize, .canFastZero, .canFUA, .canMultiConn, .canCache,
        .pread, .pwrite, .flush, .trim, .zero, .extents,
    ]

    public static func make(_ parameters: inout Parameters, options: PluginOptions) throws -> any Backend {
        NullPlugin(size: try parameters.take("size", parsing: parseSize) ?? 0)
    }
}

/// (Unchecked: `sinkPipe` is used only by `receiveWrite`, which runs on the thread that reads
/// the connection's requests, and by `close`, after it.)
final class NullConnection: BackendConnection, @unchecked Sendable {
    private let length: UInt64
    /// Held for its /dev/null descriptor.
    private let plugin: NullPlugin
    private var devNull: Int32 { plugin.devNull }
    /// The pipe through which `receiveWrite` moves payloads to /dev/null, made at the first.
    private var sinkPipe: SplicePipe?
    init(size: UInt64, plugin: NullPlugin) {
        length = size
        self.plugin = plugin
    }

    func size() throws -> UInt64 { length }
    func canWrite() throws -> Bool { true }
    func canFlush() throws -> Bool { true }
    func canTrim() throws -> Bool { true }
    func canZero() throws -> Bool { true }
    func canFastZero() throws -> Bool { true }
    func canFUA() throws -> FUASupport { .native }
    func canMultiConn() throws -> Bool { true }
    func canExtents() throws -> Bool { true }
    func canCache() throws -> Bool { true }

    func pread(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws {
        memset(buffer.baseAddress!, 0, buffer.count)
    }
    func pwrite(_ buffer: UnsafeRawBufferPointer, offset: UInt64, fua: Bool) throws {}

    /// Nothing waits: the reader serves every request itself.
    var servesWithoutBlocking: Bool { true }
    var receivesWrites: Bool { true }

    /// Drops a large payload as it arrives without copying it: spliced from the socket into a
    /// pipe and from there to /dev/null; received into memory where that can't be done.
    func receiveWrite(offset: UInt64, length: UInt32, from payload: any WritePayload) throws {
        var left = Int(length) - payload.takeReadAhead(upTo: Int(length)).count
        if payload.splices && devNull >= 0 && sinkPipe == nil { sinkPipe = SplicePipe() }
        guard payload.splices, devNull >= 0, let pipe = sinkPipe else { return try payload.discard(left) }
        while left > 0 {
            let n = try payload.spliceAvailable(upTo: left, into: pipe.writeEnd)
            if n == 0 {
                try payload.waitForMore()
                continue
            }
            left -= n
            do throws(SystemError) { try pipe.empty(count: n, into: devNull, offset: 0, what: "splice: /dev/null") } catch {
                // (Not expected of /dev/null.) The pipe may still hold some: it goes with it.
                sinkPipe = nil
                try payload.discard(left)
                throw BackendError(error)
            }
        }
    }
    func flush() throws {}
    func trim(offset: UInt64, length: UInt32, fua: Bool) throws {}
    func zero(offset: UInt64, length: UInt32, mayTrim: Bool, fua: Bool, fastZero: Bool) throws {}
    func extents(offset: UInt64, length: UInt32, reqOne: Bool) throws -> [Extent] {
        [Extent(length: UInt64(length), flags: [.hole, .zero])]
    }
    func close() { sinkPipe = nil }
}
