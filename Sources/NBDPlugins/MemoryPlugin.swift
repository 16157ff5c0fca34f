import NBDServer

/// `memory size=SIZE`: a sparse RAM disk that every connection shares. Memory grows with what is
/// written, not with the size; trim and zero give memory back.
public final class MemoryPlugin: Backend {
    public static let name = "memory"
    public let name = "memory"
    private let size: UInt64
    private let storage = SparseArray()

    init(size: UInt64) { self.size = size }

    public func open(_ request: OpenRequest) throws -> any BackendConnection {
        MemoryConnection(size: size, storage: storage)
    }
}

extension MemoryPlugin: PluginFactory {
    public static let magicConfigKey: String? = "size"
    public static let configHelp = "size=<SIZE>  (required) Size of the backing disk"
    public static let threadModel = ThreadModel.parallel

    public static func make(_ parameters: inout Parameters, options: PluginOptions) throws -> any Backend {
        guard let size = parameters.take("size") else {
            throw ConfigError("you must specify size=<SIZE> on the command line")
        }
        return MemoryPlugin(size: try parseSize(size))
    }
}

final class MemoryConnection: BackendConnection {
    private let length: UInt64
    private let storage: SparseArray

    init(size: UInt64, storage: SparseArray) {
        self.length = size
        self.storage = storage
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
        storage.read(into: buffer, offset: offset)
    }
    var lendsContents: Bool { true }
    func lendContents(offset: UInt64, length: UInt32, piece: (UnsafeRawBufferPointer) -> Void, send: () -> Void) -> Bool {
        storage.lend(offset: offset, count: Int(length), piece: piece, then: send)
        return true
    }
    func pwrite(_ buffer: UnsafeRawBufferPointer, offset: UInt64, fua: Bool) throws {
        try storage.write(buffer, offset: offset)
    }
    var receivesWrites: Bool { true }
    var servesWithoutBlocking: Bool { true }
    func receiveWrite(offset: UInt64, length: UInt32, from payload: any WritePayload) throws {
        try storage.receive(offset: offset, count: Int(length), from: payload)
    }
    func flush() throws {}
    func trim(offset: UInt64, length: UInt32, fua: Bool) throws {
        storage.zero(offset: offset, count: Int(length))
    }
    func zero(offset: UInt64, length: UInt32, mayTrim: Bool, fua: Bool, fastZero: Bool) throws {
        storage.zero(offset: offset, count: Int(length))
    }
    func extents(offset: UInt64, length: UInt32, reqOne: Bool) throws -> [Extent] {
        storage.extents(offset: offset, count: Int(length), reqOne: reqOne)
    }
    func cache(offset: UInt64, length: UInt32) throws {}
}
