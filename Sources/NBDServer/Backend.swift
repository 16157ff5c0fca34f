import NBDProtocol

/// How much concurrency a plugin or filter allows, from least to most (as nbdkit).
public enum ThreadModel: Int, Comparable, Sendable, CustomStringConvertible {
    case serializeConnections = 0
    case serializeAllRequests = 1
    case serializeRequests = 2
    case parallel = 3

    public static func < (a: ThreadModel, b: ThreadModel) -> Bool { a.rawValue < b.rawValue }

    public var description: String {
        switch self {
        case .serializeConnections: "serialize_connections"
        case .serializeAllRequests: "serialize_all_requests"
        case .serializeRequests: "serialize_requests"
        case .parallel: "parallel"
        }
    }
}

/// How a backend honours FUA (as nbdkit's can_fua).
public enum FUASupport: Int, Comparable, Sendable {
    /// FUA is not advertised.
    case none = 0
    /// The server emulates FUA with a flush after the write.
    case emulate = 1
    /// The backend persists writes itself when asked.
    case native = 2

    public static func < (a: FUASupport, b: FUASupport) -> Bool { a.rawValue < b.rawValue }
}

/// One export as listed to clients.
public struct ExportInfo: Sendable, Equatable {
    public var name: String
    public var description: String
    public init(name: String, description: String = "") {
        self.name = name
        self.description = description
    }
}

/// A run of blocks sharing allocation status.
public struct Extent: Sendable, Equatable {
    public var length: UInt64
    public var flags: AllocationFlags
    public init(length: UInt64, flags: AllocationFlags) {
        self.length = length
        self.flags = flags
    }
}

/// Bytes of an export that sit in an open file: the kernel can send them to a plaintext socket
/// itself (`sendfile`), with no copy through the server's buffers.
public struct FileExtent: Sendable {
    public let fd: Int32
    public let offset: UInt64
    public init(fd: Int32, offset: UInt64) {
        self.fd = fd
        self.offset = offset
    }
}

/// An error from a plugin or filter: the NBD error the client gets, and a message for the log.
public struct BackendError: Error, CustomStringConvertible, Sendable {
    public let errno: NBDErrno
    public let message: String
    public init(_ errno: NBDErrno, _ message: String) {
        self.errno = errno
        self.message = message
    }

    /// A backend error from a failed system call; the errno is mapped to the nearest NBD error.
    public init(_ error: SystemError) {
        self.init(NBDErrno(systemErrno: error.errno), error.description)
    }

    public var description: String { message }
}

/// Why a connection is being opened.
public struct OpenRequest: Sendable {
    public var readonly: Bool
    public var exportName: String
    public var isTLS: Bool
    /// True once the client has hung up (asked by a filter that waits, such as delay, so that
    /// it stops waiting for a client that is gone); never waits.
    public var clientGone: @Sendable () -> Bool
    public init(readonly: Bool, exportName: String, isTLS: Bool = false, clientGone: @escaping @Sendable () -> Bool = { false }) {
        self.readonly = readonly
        self.exportName = exportName
        self.isTLS = isTLS
        self.clientGone = clientGone
    }
}

/// A plugin, or a filter in front of the next backend: what the server sees of the chain as a whole.
/// Calls before `open` come once per server; the rest come on a `BackendConnection`.
public protocol Backend: AnyObject, Sendable {
    /// The plugin's or filter's name, for log lines.
    var name: String { get }
    /// The most concurrency this backend (and everything behind it) allows.
    var threadModel: ThreadModel { get }
    /// Called once, after configuration and before any connection.
    func getReady() throws
    /// Called once after the server has forked into the background (or decided not to), before
    /// the first connection: the first moment a plugin or filter may start threads.
    func afterFork() throws
    /// The exports offered to NBD_OPT_LIST.
    func listExports(readonly: Bool, isTLS: Bool) throws -> [ExportInfo]
    /// The export that the empty name selects.
    func defaultExport(readonly: Bool, isTLS: Bool) throws -> String
    /// Opens one client's view of an export; throws `BackendError` if it does not exist or can't be opened.
    func open(_ request: OpenRequest) throws -> any BackendConnection
}

extension Backend {
    public var threadModel: ThreadModel { .parallel }
    public func getReady() throws {}
    public func afterFork() throws {}
    public func listExports(readonly: Bool, isTLS: Bool) throws -> [ExportInfo] {
        [ExportInfo(name: try defaultExport(readonly: readonly, isTLS: isTLS))]
    }
    public func defaultExport(readonly: Bool, isTLS: Bool) throws -> String { "" }
}

/// One client's open export. The server calls the data methods from up to `--threads` worker
/// threads at once, as the chain's thread model allows; the `can*` queries come once, at open.
/// Buffers passed in are valid only for the duration of the call.
public protocol BackendConnection: AnyObject, Sendable {
    func size() throws -> UInt64
    func canWrite() throws -> Bool
    func canFlush() throws -> Bool
    func isRotational() throws -> Bool
    func canTrim() throws -> Bool
    func canZero() throws -> Bool
    func canFastZero() throws -> Bool
    func canFUA() throws -> FUASupport
    func canMultiConn() throws -> Bool
    func canExtents() throws -> Bool
    func canCache() throws -> Bool

    /// Fills `buffer` with the bytes at `offset`.
    func pread(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws
    /// Where the kernel can read [offset, offset+length) itself, so that a reply is sent from
    /// the file rather than through `pread` and a buffer; nil (the default) means call `pread`.
    /// The descriptor stays open until `close`. A filter that changes or watches the data must
    /// not pass this through (`PassthroughConnection` answers nil unless a subclass says otherwise).
    func fileExtent(offset: UInt64, length: UInt32) -> FileExtent?
    /// Writes `buffer` at `offset`; with `fua`, the data is persistent on return.
    func pwrite(_ buffer: UnsafeRawBufferPointer, offset: UInt64, fua: Bool) throws
    /// The backend's own storage for [offset, offset+length), when it is memory this process
    /// can write (a memory disk mapped whole): the write's payload is copied there, with no
    /// call, and reads see it at once (FUA then calls `flush`). Nil (the default, or where the backend would rather take this write another
    /// way): writes go through `pwrite` or `receiveWrite`. A filter that changes or watches the
    /// data must not pass this through (`PassthroughConnection` answers nil).
    func storage(offset: UInt64, length: UInt32) -> UnsafeMutableRawBufferPointer?
    /// True when `receiveWrite` can take a write's payload straight into the backend's memory.
    var receivesWrites: Bool { get }
    /// True when no call waits for long (no disk, network or sleep: the data is in memory), so
    /// the thread that reads a request may serve it at once and read on, one thread per client.
    var servesWithoutBlocking: Bool { get }
    /// Stores a write of `length` bytes at `offset` (without FUA) whose payload has not been read
    /// yet, receiving it from `payload` straight into the backend's memory. Consumes exactly
    /// `length` bytes of `payload` whatever happens, unless `payload` throws (the connection is
    /// lost; its error is rethrown); a write that fails throws `BackendError` after that. A filter
    /// that changes or watches the data must not pass this through (`PassthroughConnection`
    /// receives nothing this way).
    func receiveWrite(offset: UInt64, length: UInt32, from payload: any WritePayload) throws
    func flush() throws
    func trim(offset: UInt64, length: UInt32, fua: Bool) throws
    /// Makes the range read as zeros. `mayTrim`: holes are allowed; `fastZero`: fail with
    /// ENOTSUP rather than fall back to something slower than a plain write.
    func zero(offset: UInt64, length: UInt32, mayTrim: Bool, fua: Bool, fastZero: Bool) throws
    /// Allocation status from `offset`, covering at least one byte and at most `length`
    /// bytes (fewer is fine). With `reqOne` only the first extent matters.
    func extents(offset: UInt64, length: UInt32, reqOne: Bool) throws -> [Extent]
    func cache(offset: UInt64, length: UInt32) throws
    /// Called once when the client goes; no other call follows it.
    func close()
}

extension BackendConnection {
    public func canWrite() throws -> Bool { false }
    public func canFlush() throws -> Bool { false }
    public func isRotational() throws -> Bool { false }
    public func canTrim() throws -> Bool { false }
    public func canZero() throws -> Bool { false }
    public func canFastZero() throws -> Bool { false }
    public func canFUA() throws -> FUASupport { try canFlush() ? .emulate : .none }
    public func canMultiConn() throws -> Bool { false }
    public func canExtents() throws -> Bool { false }
    public func canCache() throws -> Bool { false }
    public func fileExtent(offset: UInt64, length: UInt32) -> FileExtent? { nil }
    public func pwrite(_ buffer: UnsafeRawBufferPointer, offset: UInt64, fua: Bool) throws {
        throw BackendError(.eperm, "write not supported")
    }
    public func storage(offset: UInt64, length: UInt32) -> UnsafeMutableRawBufferPointer? { nil }
    public var receivesWrites: Bool { false }
    public var servesWithoutBlocking: Bool { false }
    public func receiveWrite(offset: UInt64, length: UInt32, from payload: any WritePayload) throws {
        try payload.discard(Int(length))
        throw BackendError(.eperm, "write not supported")
    }
    public func flush() throws { throw BackendError(.einval, "flush not supported") }
    public func trim(offset: UInt64, length: UInt32, fua: Bool) throws { throw BackendError(.einval, "trim not supported") }
    public func zero(offset: UInt64, length: UInt32, mayTrim: Bool, fua: Bool, fastZero: Bool) throws {
        throw BackendError(.enotsup, "zero not supported")
    }
    public func extents(offset: UInt64, length: UInt32, reqOne: Bool) throws -> [Extent] {
        [Extent(length: UInt64(length), flags: [])]
    }
    public func cache(offset: UInt64, length: UInt32) throws {}
    public func close() {}
}

/// Parameters given on the command line (`key=value`), in order. Filters take the keys they
/// know; the plugin takes the rest and refuses any it does not know.
public struct Parameters: Sendable {
    public private(set) var pairs: [(key: String, value: String)]

    public init(_ pairs: [(key: String, value: String)]) { self.pairs = pairs }

    /// Removes and returns the last value given for `key` (later settings win, as nbdkit).
    public mutating func take(_ key: String) -> String? {
        takeAll(key).last
    }

    /// Removes every value given for `key` and parses each in order, as nbdkit checks every
    /// occurrence (`size=bad size=1M` is refused); returns the last, or nil if none was given.
    public mutating func take<T>(_ key: String, parsing parse: (String) throws -> T) throws -> T? {
        var last: T?
        for value in takeAll(key) { last = try parse(value) }
        return last
    }

    /// Removes and returns every value given for `key`, in order.
    public mutating func takeAll(_ key: String) -> [String] {
        let values = pairs.filter { $0.key == key }.map(\.value)
        pairs.removeAll { $0.key == key }
        return values
    }

    /// Removes and returns, in the order given, every parameter whose key is one of `keys`.
    public mutating func takeAll(anyOf keys: Set<String>) -> [(key: String, value: String)] {
        let taken = pairs.filter { keys.contains($0.key) }
        pairs.removeAll { keys.contains($0.key) }
        return taken
    }

    /// Throws for the first parameter nobody took.
    public func rejectUnknown() throws {
        if let first = pairs.first { throw ConfigError("unknown parameter '\(first.key)'") }
    }
}

/// A startup error: printed as `nbdkit: error: MESSAGE` before exiting with status 1.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public let message: String
    /// An error nbdkit finds only as it completes the configuration (config_complete), once
    /// every parameter has been read: a required one missing, a file that can't be served, a
    /// disk that does not fit. A parameter nobody knows is reported before it, and
    /// `--dump-plugin`, which completes nothing, does not report it.
    public let isCompletionError: Bool
    public init(_ message: String) {
        self.message = message
        isCompletionError = false
    }
    public init(completing message: String) {
        self.message = message
        isCompletionError = true
    }

    /// Runs `body`, which completes a plugin's or filter's configuration once it has taken
    /// every parameter it knows: the `ConfigError`s it throws are completion errors.
    public static func completing<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let error as ConfigError { throw ConfigError(completing: error.message) }
    }
    public var description: String { message }
}
