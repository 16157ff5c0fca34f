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
    private enum Setting { case read, write, zero, trim, extents, cache, flush, open, close, writesZeroesAndTrims, fastZero }

    /// The keys, with nbdkit's other spellings (`delay-reads`, `delay-discard`, ...);
    /// `delay-flush` is this server's own.
    private static let keys: [String: Setting] = [
        "rdelay": .read, "delay-read": .read, "delay-reads": .read,
        "delay-write": .write, "delay-writes": .write,
        "delay-zero": .zero, "delay-zeroes": .zero,
        "delay-trim": .trim, "delay-trims": .trim, "delay-discard": .trim, "delay-discards": .trim,
        "delay-extent": .extents, "delay-extents": .extents,
        "delay-cache": .cache, "delay-flush": .flush, "delay-open": .open, "delay-close": .close,
        "wdelay": .writesZeroesAndTrims, "delay-fast-zero": .fastZero,
    ]

    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend {
        var d = DelayFilter.Delays()
        // As nbdkit, in the order given: a later key overrides an earlier one, and wdelay sets
        // the delays of writes, zeroing and trims.
        for (key, value) in parameters.takeAll(anyOf: Set(keys.keys)) {
            switch keys[key]! {
            case .read: d.read = try parseDelay(value, key: key)
            case .write: d.write = try parseDelay(value, key: key)
            case .zero: d.zero = try parseDelay(value, key: key)
            case .trim: d.trim = try parseDelay(value, key: key)
            case .extents: d.extents = try parseDelay(value, key: key)
            case .cache: d.cache = try parseDelay(value, key: key)
            case .flush: d.flush = try parseDelay(value, key: key)
            case .open: d.open = try parseDelay(value, key: key)
            case .close: d.close = try parseDelay(value, key: key)
            case .writesZeroesAndTrims:
                let delay = try parseDelay(value, key: key)
                (d.write, d.zero, d.trim) = (delay, delay, delay)
            case .fastZero:
                guard let flag = parseBoolean(value) else {
                    throw ConfigError("delay: could not parse delay-fast-zero=\(value): expected a boolean")
                }
                d.delayFastZero = flag
            }
        }
        return DelayFilter(next: next, delays: d, control: control)
    }

    /// nbdkit's delay syntax, in microseconds, after any white space (C's isspace) and a "+":
    /// seconds as a whole number read as C's strtoul reads it (decimal, octal after a leading
    /// 0, hexadecimal after 0x: "010" is 8) or, this server's own, a decimal fraction
    /// ("0.25"); or a decimal number of milliseconds followed by "ms" ("10ms", "2.5ms"). At
    /// most nbdkit's limits (2^32 - 1 milliseconds, or as many seconds as fit in that).
    static func parseDelay(_ text: String, key: String) throws -> UInt64 {
        var number = Array(text.utf8)[...]
        while let first = number.first, first == 32 || (9...13).contains(first) { number = number.dropFirst() }
        if number.first == UInt8(ascii: "+") { number = number.dropFirst() }
        let micros: Double?
        let limit: Double
        if number.count > 2, number.suffix(2).elementsEqual("ms".utf8) {
            micros = decimal(number.dropLast(2)).map { $0 * 1000 }
            limit = Double(UInt32.max) * 1000
        } else {
            micros = (number.contains(UInt8(ascii: ".")) ? decimal(number) : wholeNumber(number)).map { $0 * 1_000_000 }
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

    /// The value of ASCII digit `byte` in `radix` (at most 16), if it is one.
    private static func digit(_ byte: UInt8, radix: UInt64) -> UInt64? {
        let value: UInt64
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt64(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): value = UInt64(byte - UInt8(ascii: "a")) + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): value = UInt64(byte - UInt8(ascii: "A")) + 10
        default: return nil
        }
        return value < radix ? value : nil
    }

    /// ASCII decimal digits with at most one "." among them; nil for anything else.
    private static func decimal(_ bytes: ArraySlice<UInt8>) -> Double? {
        guard bytes.contains(where: { digit($0, radix: 10) != nil }),
              bytes.allSatisfy({ digit($0, radix: 10) != nil || $0 == UInt8(ascii: ".") }),
              bytes.filter({ $0 == UInt8(ascii: ".") }).count <= 1 else { return nil }
        return Double(String(decoding: bytes, as: UTF8.self))
    }

    /// A whole number as C's strtoul (base 0) reads one, all of `bytes`: hexadecimal after 0x,
    /// octal after a leading 0, decimal otherwise; infinity when too large for 64 bits, nil for
    /// anything else.
    private static func wholeNumber(_ bytes: ArraySlice<UInt8>) -> Double? {
        let hex = bytes.count >= 2 && bytes.first == UInt8(ascii: "0") && (bytes.dropFirst().first.map { $0 | 0x20 } == UInt8(ascii: "x"))
        let (digits, radix): (ArraySlice<UInt8>, UInt64) = hex ? (bytes.dropFirst(2), 16)
            : bytes.count > 1 && bytes.first == UInt8(ascii: "0") ? (bytes.dropFirst(), 8) : (bytes, 10)
        guard !digits.isEmpty else { return nil }
        var value: UInt64 = 0
        var overflowed = false
        for byte in digits {
            guard let d = digit(byte, radix: radix) else { return nil }
            let (shifted, o1) = value.multipliedReportingOverflow(by: radix)
            let (sum, o2) = shifted.addingReportingOverflow(d)
            overflowed = overflowed || o1 || o2
            value = sum
        }
        return overflowed ? .infinity : Double(value)
    }
}
