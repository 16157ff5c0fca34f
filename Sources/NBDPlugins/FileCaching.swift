import Glibc
import NBDServer

/// The file plugin's `cache=` and `fadvise=` parameters, spelt as nbdkit spells them.
struct FileCaching: Sendable, Equatable {
    /// `cache=`: `default` leaves the page cache to the kernel; `none` drops the whole pages
    /// each read covered, and each write's once they are written back (what the kernel read
    /// ahead, partial pages and `NBD_CMD_CACHE`'s reads stay).
    enum Mode: String, Sendable { case `default`, none }
    /// `fadvise=`: the access pattern declared for the whole file (`posix_fadvise`), which sets
    /// the kernel's read-ahead.
    enum Advice: String, Sendable {
        case normal, random, sequential
        var flag: Int32 {
            switch self {
            case .normal: POSIX_FADV_NORMAL
            case .random: POSIX_FADV_RANDOM
            case .sequential: POSIX_FADV_SEQUENTIAL
            }
        }
    }

    var mode = Mode.default
    var advice = Advice.normal

    /// Takes `cache=` and `fadvise=` from `parameters`, the last of each winning; throws
    /// nbdkit's message for any value it does not know, as nbdkit checks every one given.
    init(taking parameters: inout Parameters) throws {
        for text in parameters.takeAll("cache") {
            guard let mode = Mode(rawValue: text) else { throw ConfigError("unknown cache mode: \(text)") }
            self.mode = mode
        }
        for text in parameters.takeAll("fadvise") {
            guard let advice = Advice(rawValue: text) else { throw ConfigError("unknown fadvise mode: \(text)") }
            self.advice = advice
        }
    }

    init() {}
}
