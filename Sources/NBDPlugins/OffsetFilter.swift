import NBDServer

/// `--filter=offset offset=N [range=N]`: serves a window of the backend starting at `offset`.
final class OffsetFilter: PassthroughFilter, @unchecked Sendable {
    private let offset: UInt64
    private let range: UInt64?

    init(next: any Backend, offset: UInt64, range: UInt64?) {
        self.offset = offset
        self.range = range
        super.init(next: next)
    }

    override var name: String { next.name }

    override func open(_ request: OpenRequest) throws -> any BackendConnection {
        let inner = try next.open(request)
        let size = try inner.size()
        guard offset <= size, range.map({ $0 <= size - offset }) ?? true else {
            inner.close()
            throw BackendError(.einval, "offset+range is larger than the plugin's size \(size)")
        }
        return Connection(next: inner, offset: offset, size: range ?? size - offset)
    }

    final class Connection: PassthroughConnection, @unchecked Sendable {
        private let offset: UInt64
        private let length: UInt64

        init(next: any BackendConnection, offset: UInt64, size: UInt64) {
            self.offset = offset
            self.length = size
            super.init(next: next)
        }

        override func size() throws -> UInt64 { length }
        override func pread(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws {
            try next.pread(into: buffer, offset: offset + self.offset)
        }
        override func fileExtent(offset: UInt64, length: UInt32) -> FileExtent? {
            next.fileExtent(offset: offset + self.offset, length: length)
        }
        override func pwrite(_ buffer: UnsafeRawBufferPointer, offset: UInt64, fua: Bool) throws {
            try next.pwrite(buffer, offset: offset + self.offset, fua: fua)
        }
        override func trim(offset: UInt64, length: UInt32, fua: Bool) throws {
            try next.trim(offset: offset + self.offset, length: length, fua: fua)
        }
        override func zero(offset: UInt64, length: UInt32, mayTrim: Bool, fua: Bool, fastZero: Bool) throws {
            try next.zero(offset: offset + self.offset, length: length, mayTrim: mayTrim, fua: fua, fastZero: fastZero)
        }
        override func extents(offset: UInt64, length: UInt32, reqOne: Bool) throws -> [Extent] {
            try next.extents(offset: offset + self.offset, length: length, reqOne: reqOne)
        }
        override func cache(offset: UInt64, length: UInt32) throws {
            try next.cache(offset: offset + self.offset, length: length)
        }
    }
}

extension OffsetFilter: FilterFactory {
    static let name = "offset"
    static let configHelp = "offset=<OFFSET>  The start offset to serve (default 0).\nrange=<LENGTH>  The total size to serve (default rest of file)."

    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend {
        let offset = try parameters.take("offset", parsing: parseSize) ?? 0
        let range = try parameters.take("range", parsing: parseSize)
        return OffsetFilter(next: next, offset: offset, range: range)
    }
}
