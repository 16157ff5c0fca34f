import Glibc
import NBDServer
import NBDProtocol

/// `null size=SIZE`: reads zeros, discards writes.
public final class NullPlugin: Backend {
    public let name = "null"
    private let size: UInt64
    init(size: UInt64) { self.size = size }

    public func open(_ request: OpenRequest) throws -> any BackendConnection { NullConnection(size: size) }
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

final class NullConnection: BackendConnection {
    private let length: UInt64
    init(size: UInt64) { length = size }

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
    func flush() throws {}
    func trim(offset: UInt64, length: UInt32, fua: Bool) throws {}
    func zero(offset: UInt64, length: UInt32, mayTrim: Bool, fua: Bool, fastZero: Bool) throws {}
    func extents(offset: UInt64, length: UInt32, reqOne: Bool) throws -> [Extent] {
        [Extent(length: UInt64(length), flags: [.hole, .zero])]
    }
}
