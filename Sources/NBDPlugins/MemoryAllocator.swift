import NBDServer

/// The memory plugin's `allocator=` parameter, spelt as nbdkit spells it. Every allocator keeps
/// the disk in the same memory file; they differ in what the disk promises about its memory.
enum MemoryAllocator: Equatable, Sendable {
    /// The default: memory is taken as the disk is written, and trim and zero give it back.
    case sparse
    /// `malloc[,mlock=true]`: a disk without holes, as nbdkit's heap allocator makes one. Block
    /// status reports data everywhere, and the disk may be no larger than RAM and swap together.
    /// With `mlock`, all of its memory is taken at start-up and locked into RAM, and trim and
    /// zero write zeros where they would otherwise give memory back.
    case malloc(mlock: Bool)

    /// Parses `sparse` (or nothing), `malloc`, `malloc,mlock[=BOOL]` or `zstd` (which this
    /// nbdkit lacks), skipping empty fields as nbdkit does. Throws a `ConfigError` worded as
    /// nbdkit's.
    init(parsing text: String) throws {
        let fields = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let kind = fields[0]
        let extra = fields.dropFirst().filter { !$0.isEmpty }
        switch kind {
        case "", "sparse", "zstd":
            guard extra.isEmpty else { throw ConfigError("allocator=\(kind) does not take extra parameters") }
            guard kind != "zstd" else {
                throw ConfigError("allocator=zstd is not supported: this nbdkit is built without zstd (zstd=no in --dump-plugin)")
            }
            self = .sparse
        case "malloc":
            var mlock = false
            for field in extra {
                // A key alone means key=true.
                let pair = field.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard !pair[0].isEmpty else { throw ConfigError("invalid allocator parameter") }
                guard pair[0] == "mlock" else { throw ConfigError("allocator=malloc: unknown parameter \(pair[0])") }
                let text = pair.count == 2 ? String(pair[1]) : "true"
                guard let value = parseBoolean(text) else {
                    throw ConfigError("could not decipher boolean (\(text))")
                }
                mlock = value
            }
            self = .malloc(mlock: mlock)
        default:
            throw ConfigError("unknown allocator \"\(text)\"")
        }
    }

    /// True if the disk reports no holes.
    var isWhole: Bool { self != .sparse }
    /// True if all of the disk's memory is taken at start-up and locked into RAM.
    var locks: Bool { self == .malloc(mlock: true) }
}
