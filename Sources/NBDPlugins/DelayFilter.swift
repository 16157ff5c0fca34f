import Glibc
import NBDServer

/// `--filter=delay`: sleeps before passing a call on, to simulate a slow or distant backend
/// (nbdkit-delay-filter). Each delay applies to one kind of request and to every connection.
final class DelayFilter: PassthroughFilter, @unchecked Sendable {
    /// The delays in microseconds, by the call they slow down.
    struct Delays {
        var read: UInt32 = 0, write: UInt32 = 0, zero: UInt32 = 0, trim: UInt32 = 0
        var extents: UInt32 = 0, cache: UInt32 = 0, flush: UInt32 = 0, open: UInt32 = 0, close: UInt32 = 0
    }

    private let delays: Delays

    init(next: any Backend, delays: Delays) {
        self.delays = delays
        super.init(next: next)
    }

    override var name: String { next.name }

    override func open(_ request: OpenRequest) throws -> any BackendConnection {
        pause(delays.open)
        return Connection(next: try next.open(request), delays: delays)
    }

    final class Connection: PassthroughConnection, @unchecked Sendable {
        private let delays: Delays

        init(next: any BackendConnection, delays: Delays) {
            self.delays = delays
            super.init(next: next)
        }

        override func pread(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws {
            pause(delays.read)
            try next.pread(into: buffer, offset: offset)
        }
        override func pwrite(_ buffer: UnsafeRawBufferPointer, offset: UInt64, fua: Bool) throws {
            pause(delays.write)
            try next.pwrite(buffer, offset: offset, fua: fua)
        }
        override func flush() throws {
            pause(delays.flush)
            try next.flush()
        }
        override func trim(offset: UInt64, length: UInt32, fua: Bool) throws {
            pause(delays.trim)
            try next.trim(offset: offset, length: length, fua: fua)
        }
        override func zero(offset: UInt64, length: UInt32, mayTrim: Bool, fua: Bool, fastZero: Bool) throws {
            pause(delays.zero)
            try next.zero(offset: offset, length: length, mayTrim: mayTrim, fua: fua, fastZero: fastZero)
        }
        override func extents(offset: UInt64, length: UInt32, reqOne: Bool) throws -> [Extent] {
            pause(delays.extents)
            return try next.extents(offset: offset, length: length, reqOne: reqOne)
        }
        override func cache(offset: UInt64, length: UInt32) throws {
            pause(delays.cache)
            try next.cache(offset: offset, length: length)
        }
        override func close() {
            pause(delays.close)
            next.close()
        }
    }
}

/// Sleeps `microseconds` (none for 0), resuming after signals.
private func pause(_ microseconds: UInt32) {
    guard microseconds > 0 else { return }
    var request = timespec(tv_sec: Int(microseconds / 1_000_000), tv_nsec: Int(microseconds % 1_000_000) * 1000)
    var remaining = timespec()
    while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
}

extension DelayFilter: FilterFactory {
    static let name = "delay"
    static let configHelp = """
    rdelay=, delay-read=SECS|NNms       Delay reads.
    wdelay=, delay-write=SECS|NNms      Delay writes.
    delay-zero=, delay-trim=, delay-extents=, delay-cache=, delay-flush=
                                        Delay zero, trim, extents, cache, flush.
    delay-open=, delay-close=           Delay opening and closing connections.
    """

    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend {
        var d = DelayFilter.Delays()
        func take(_ keys: String..., into value: inout UInt32) throws {
            for key in keys {
                guard let text = parameters.take(key) else { continue }
                value = try parseDelay(text, key: key)
            }
        }
        try take("rdelay", "delay-read", into: &d.read)
        try take("wdelay", "delay-write", into: &d.write)
        try take("delay-zero", into: &d.zero)
        try take("delay-trim", "delay-discard", into: &d.trim)
        try take("delay-extents", into: &d.extents)
        try take("delay-cache", into: &d.cache)
        try take("delay-flush", into: &d.flush)
        try take("delay-open", into: &d.open)
        try take("delay-close", into: &d.close)
        return DelayFilter(next: next, delays: d)
    }

    /// nbdkit's delay syntax: whole or fractional seconds ("2", "0.5"), or milliseconds ("10ms").
    static func parseDelay(_ text: String, key: String) throws -> UInt32 {
        let micros: Double?
        if text.hasSuffix("ms") {
            micros = Double(text.dropLast(2)).map { $0 * 1000 }
        } else {
            micros = Double(text).map { $0 * 1_000_000 }
        }
        guard let micros, micros >= 0, micros <= Double(UInt32.max) else {
            throw ConfigError("delay: could not parse \(key)=\(text): expected seconds or a number followed by 'ms'")
        }
        return UInt32(micros)
    }
}
