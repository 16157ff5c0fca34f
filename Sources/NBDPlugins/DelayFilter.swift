import Glibc
import NBDServer

/// `--filter=delay`: sleeps before passing a call on, to simulate a slow or distant backend
/// (nbdkit-delay-filter). Each delay applies to one kind of request and to every connection,
/// and ends early, failing the request, once the server shuts down or the client hangs up.
final class DelayFilter: PassthroughFilter, @unchecked Sendable {
    /// The delays in microseconds, by the call they slow down.
    struct Delays {
        var read: UInt64 = 0, write: UInt64 = 0, zero: UInt64 = 0, trim: UInt64 = 0
        var extents: UInt64 = 0, cache: UInt64 = 0, flush: UInt64 = 0, open: UInt64 = 0, close: UInt64 = 0
        /// Whether zero requests with NBD_CMD_FLAG_FAST_ZERO are delayed too.
        var delayFastZero = true
    }

    private let delays: Delays
    private let control: ServerControl

    init(next: any Backend, delays: Delays, control: ServerControl) {
        self.delays = delays
        self.control = control
        super.init(next: next)
    }

    override var name: String { next.name }

    override func open(_ request: OpenRequest) throws -> any BackendConnection {
        _ = pause(delays.open, unless: control, clientGone: request.clientGone)
        return Connection(next: try next.open(request), delays: delays, control: control, clientGone: request.clientGone)
    }

    final class Connection: PassthroughConnection, @unchecked Sendable {
        private let delays: Delays
        private let control: ServerControl
        private let clientGone: @Sendable () -> Bool

        init(next: any BackendConnection, delays: Delays, control: ServerControl, clientGone: @escaping @Sendable () -> Bool) {
            self.delays = delays
            self.control = control
            self.clientGone = clientGone
            super.init(next: next)
        }

        /// Delays a request; fails it with ESHUTDOWN, as nbdkit does, if the server begins to
        /// shut down or the client hangs up meanwhile.
        private func delay(_ microseconds: UInt64) throws {
            guard pause(microseconds, unless: control, clientGone: clientGone) else {
                throw BackendError(.eshutdown, "delay: the server is shutting down or the client has gone")
            }
        }

        override func pread(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws {
            try delay(delays.read)
            try next.pread(into: buffer, offset: offset)
        }
        override func pwrite(_ buffer: UnsafeRawBufferPointer, offset: UInt64, fua: Bool) throws {
            try delay(delays.write)
            try next.pwrite(buffer, offset: offset, fua: fua)
        }
        override func flush() throws {
            try delay(delays.flush)
            try next.flush()
        }
        override func trim(offset: UInt64, length: UInt32, fua: Bool) throws {
            try delay(delays.trim)
            try next.trim(offset: offset, length: length, fua: fua)
        }
        /// With a zero delay and `delay-fast-zero=false`, fast zeroing is offered and always
        /// refused at once (ENOTSUP), as by a server for which zeroing is slow (as nbdkit).
        private var refusesFastZero: Bool { delays.zero > 0 && !delays.delayFastZero }

        override func canFastZero() throws -> Bool {
            refusesFastZero ? true : try next.canFastZero()
        }
        override func zero(offset: UInt64, length: UInt32, mayTrim: Bool, fua: Bool, fastZero: Bool) throws {
            if fastZero && refusesFastZero {
                throw BackendError(.enotsup, "delay: fast zero refused (delay-fast-zero=false)")
            }
            if !fastZero || delays.delayFastZero { try delay(delays.zero) }
            try next.zero(offset: offset, length: length, mayTrim: mayTrim, fua: fua, fastZero: fastZero)
        }
        override func extents(offset: UInt64, length: UInt32, reqOne: Bool) throws -> [Extent] {
            try delay(delays.extents)
            return try next.extents(offset: offset, length: length, reqOne: reqOne)
        }
        override func cache(offset: UInt64, length: UInt32) throws {
            try delay(delays.cache)
            try next.cache(offset: offset, length: length)
        }
        override func close() {
            // (The client has gone or is going: only shutdown ends this one early.)
            _ = pause(delays.close, unless: control, clientGone: { false })
            next.close()
        }
    }
}

/// Sleeps `microseconds` (none for 0), resuming after signals, in slices of at most 0.1 s so
/// that it ends early once `control`'s server begins to shut down or `clientGone` says so.
/// Returns false if it did.
private func pause(_ microseconds: UInt64, unless control: ServerControl, clientGone: () -> Bool) -> Bool {
    let slice: UInt64 = 100_000
    var left = microseconds
    while left > 0 {
        if control.isShuttingDown || clientGone() { return false }
        let now = min(left, slice)
        var request = timespec(tv_sec: 0, tv_nsec: Int(now) * 1000)
        var remaining = timespec()
        while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
        left -= now
    }
    return true
}

extension DelayFilter: FilterFactory {
    static let name = "delay"
    static let configHelp = """
    rdelay=<NN>[ms]                Read delay in seconds/milliseconds.
    delay-read=<NN>[ms]            Read delay in seconds/milliseconds.
    delay-write=<NN>[ms]           Write delay in seconds/milliseconds.
    delay-zero=<NN>[ms]            Zero delay in seconds/milliseconds.
    delay-trim=<NN>[ms]            Trim delay in seconds/milliseconds.
    delay-extents=<NN>[ms]         Extents delay in seconds/milliseconds.
    delay-cache=<NN>[ms]           Cache delay in seconds/milliseconds.
    delay-flush=<NN>[ms]           Flush delay in seconds/milliseconds.
    wdelay=<NN>[ms]                Write, zero and trim delay in secs/msecs.
    delay-fast-zero=<BOOL>         Delay fast zero requests (default true).
    delay-open=<NN>[ms]            Open delay in seconds/milliseconds.
    delay-close=<NN>[ms]           Close delay in seconds/milliseconds.
    """

    /// What a key sets.
    private enum Setting { case read, write, zero, trim, extents, cache, flush, open, close, writes, fastZero }

    /// The keys, nbdkit's other spellings included (`delay-reads`, `delay-discard`, ...).
    private static let keys: [String: Setting] = [
        "rdelay": .read, "delay-read": .read, "delay-reads": .read,
        "delay-write": .write, "delay-writes": .write,
        "delay-zero": .zero, "delay-zeroes": .zero,
        "delay-trim": .trim, "delay-trims": .trim, "delay-discard": .trim, "delay-discards": .trim,
        "delay-extent": .extents, "delay-extents": .extents,
        "delay-cache": .cache, "delay-flush": .flush, "delay-open": .open, "delay-close": .close,
        "wdelay": .writes, "delay-fast-zero": .fastZero,
    ]

    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend {
        var d = DelayFilter.Delays()
        // As nbdkit, in the order given: a later key overrides an earlier one, and wdelay sets
        // the delays of writes, zeroing and trims.
        for (key, value) in parameters.takeAll(anyOf: Set(keys.keys)) {
            let setting = keys[key]!
            if setting == .fastZero {
                guard let flag = parseBoolean(value) else {
                    throw ConfigError("delay: could not parse delay-fast-zero=\(value): expected a boolean")
                }
                d.delayFastZero = flag
                continue
            }
            let delay = try parseDelay(value, key: key)
            switch setting {
            case .read: d.read = delay
            case .write: d.write = delay
            case .zero: d.zero = delay
            case .trim: d.trim = delay
            case .extents: d.extents = delay
            case .cache: d.cache = delay
            case .flush: d.flush = delay
            case .open: d.open = delay
            case .close: d.close = delay
            case .writes: (d.write, d.zero, d.trim) = (delay, delay, delay)
            case .fastZero: break
            }
        }
        return DelayFilter(next: next, delays: d, control: control)
    }

    /// nbdkit's delay syntax, in microseconds: seconds ("2"; fractions too, "0.5"; as in C, a
    /// leading 0 means octal and 0x hexadecimal) or milliseconds ("10ms", decimal), after any
    /// white space, up to nbdkit's limits (2^32 - 1 milliseconds, or as many seconds as fit in
    /// that).
    static func parseDelay(_ text: String, key: String) throws -> UInt64 {
        let number = text.drop { $0 == " " || $0 == "\t" || $0 == "\n" }
        let micros: Double?
        let limit: Double
        if number.hasSuffix("ms") {
            micros = Double(number.dropLast(2)).map { $0 * 1000 }
            limit = Double(UInt32.max) * 1000
        } else if number.count > 1, number.first == "0", number.allSatisfy({ ("0"..."7").contains($0) }) {
            micros = UInt64(number, radix: 8).map { Double($0) * 1_000_000 }
            limit = Double(UInt32.max / 1000) * 1_000_000
        } else {
            micros = Double(number).map { $0 * 1_000_000 }
            limit = Double(UInt32.max / 1000) * 1_000_000
        }
        guard let micros, micros >= 0 else {
            throw ConfigError("delay: could not parse \(key)=\(text): expected seconds or a number followed by 'ms'")
        }
        guard micros <= limit else {
            throw ConfigError("delay: \(key)=\(text) is too large (at most \(UInt32.max / 1000) seconds, or \(UInt32.max)ms)")
        }
        return UInt64(micros)
    }
}
