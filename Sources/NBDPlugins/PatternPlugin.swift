import NBDServer

/// `pattern size=SIZE`: read-only; each 8-byte word holds its own offset, big-endian.
public final class PatternPlugin: Backend {
    public let name = "pattern"
    private let size: UInt64
    init(size: UInt64) { self.size = size }

    public func open(_ request: OpenRequest) throws -> any BackendConnection { PatternConnection(size: size) }
}

extension PatternPlugin: PluginFactory {
    public static let name = "pattern"
    public static let magicConfigKey: String? = "size"
    public static let configHelp = "size=<SIZE>  (required) Size of the disk"
    public static let threadModel = ThreadModel.parallel
    public static let callbacks: Set<PluginCallback> = [
        .config, .configHelp, .open, .getSize, .canMultiConn, .canCache, .pread,
    ]

    public static func make(_ parameters: inout Parameters, options: PluginOptions) throws -> any Backend {
        // As nbdkit 1.32, which documents size= as required but serves 0 bytes without it.
        PatternPlugin(size: try parameters.take("size", parsing: parseSize) ?? 0)
    }
}

final class PatternConnection: BackendConnection {
    private let length: UInt64
    init(size: UInt64) { length = size }

    func size() throws -> UInt64 { length }
    func canMultiConn() throws -> Bool { true }
    func canCache() throws -> Bool { true }

    func pread(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws {
        // Whole words where aligned, byte by byte at the unaligned edges.
        var i = 0
        while i < buffer.count {
            let position = offset + UInt64(i)
            let word = position & ~7
            if position == word && buffer.count - i >= 8 {
                buffer.storeBytes(of: word.bigEndian, toByteOffset: i, as: UInt64.self)
                i += 8
            } else {
                buffer[i] = UInt8(truncatingIfNeeded: word >> (8 * (7 - (position & 7))))
                i += 1
            }
        }
    }
}
