import Glibc
import CNBDShim
import NBDServer

/// `memory size=SIZE`: a sparse RAM disk that every connection shares, kept in an anonymous
/// memory file (memfd). Memory grows with what is written, not with the size; trim and zero
/// punch holes, which give memory back. Being a file, its contents go to a plaintext socket by
/// `sendfile`; large writes arrive from one by `splice`, as the file plugin's do in tmpfs.
/// Mapped into the process (where `SharedMapping.mayMap` allows), it stores smaller writes with
/// no system call. `allocator=` chooses what the disk promises about its memory (`MemoryAllocator`).
/// Under `--swap` every page written is locked into RAM, as nbdkit's `mlockall` locks its disk.
/// (Unchecked: `mapping` changes only in `afterFork`, before any connection.)
public final class MemoryPlugin: Backend, @unchecked Sendable {
    public static let name = "memory"
    public let name = "memory"
    /// The memory file; each connection works on a duplicate of it.
    private let fd: Int32
    private let allocator: MemoryAllocator
    private var mapping: SharedMapping?
    /// Under `--swap`, the size of the file, which `afterFork` maps locking each page as it is
    /// first written; every write then goes through the mapping, so every page written is locked.
    private let sizeToLockOnFault: UInt64?

    /// A locking allocator maps and locks the whole file now. Under `--swap` it is mapped in
    /// `afterFork`, once the process's memory is locked: `mlockall` would take memory for the
    /// whole disk if it were mapped already. Otherwise the file is mapped unless it is read-only.
    private init(fd: Int32, size: UInt64, allocator: MemoryAllocator, options: PluginOptions) throws {
        self.fd = fd
        self.allocator = allocator
        sizeToLockOnFault = options.locksMemory && !options.readonly && !allocator.locks ? size : nil
        // Known now, before the sockets and any --run command: the mapping itself is made
        // in `afterFork`.
        // (A throw from here on leaves `fd` to deinit.)
        if let size = sizeToLockOnFault, size > 0, !SharedMapping.mayMap(size: size) {
            throw ConfigError("memory: --swap: cannot lock the disk's pages into RAM as they are written: \(SharedMapping.mappingConditions)")
        }
        if allocator.locks && size > 0 {
            do { mapping = try SharedMapping(lockingAllOf: fd, size: size) } catch {
                throw ConfigError("allocator=malloc: \(error)")
            }
        } else {
            mapping = options.readonly || options.locksMemory ? nil : SharedMapping(fd: fd, size: size)
        }
    }

    deinit { _ = close(fd) }

    /// Under `--swap`, a disk whose pages can't be locked is a start-up error, not a disk that
    /// may be swapped out.
    public func afterFork() throws {
        guard let size = sizeToLockOnFault, size > 0 else { return }
        do { mapping = try SharedMapping(lockingOnFault: fd, size: size) } catch {
            throw ConfigError("memory: --swap: cannot lock the disk's pages into RAM as they are written: \(error)")
        }
    }

    public func open(_ request: OpenRequest) throws -> any BackendConnection {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { throw BackendError(SystemError("memory: dup")) }
        return FileConnection(descriptor: copy, name: "memory", readonly: request.readonly, memoryDisk: allocator,
                              mapping: request.readonly ? nil : mapping, mappingTakesAllWrites: sizeToLockOnFault != nil)
    }
}

extension MemoryPlugin: PluginFactory {
    public static let magicConfigKey: String? = "size"
    public static let configHelp = """
        size=<SIZE>  (required) Size of the backing disk
        allocator=sparse|malloc[,mlock=true]  Backend allocation strategy
        """
    /// As nbdkit's: `allocator=malloc,mlock=true` works here; `allocator=zstd` does not.
    public static let dumpPluginFields = ["mlock=yes", "zstd=no"]
    public static let threadModel = ThreadModel.parallel
    public static let callbacks: Set<PluginCallback> = [
        .dumpPlugin, .config, .configComplete, .configHelp, .open, .getSize, .canFastZero, .canFUA, .canMultiConn,
        .canCache, .pread, .pwrite, .flush, .trim, .zero, .extents,
    ]

    public static func make(_ parameters: inout Parameters, options: PluginOptions) throws -> any Backend {
        let bytes = try parameters.take("size", parsing: parseSize)
        let allocatorText = parameters.take("allocator")
        if options.checksOnly { return Registry.standIn() }
        // As nbdkit, which checks these once it has read every parameter (config_complete).
        return try ConfigError.completing {
            guard let bytes else { throw ConfigError("you must specify size=<SIZE> on the command line") }
            let allocator = try allocatorText.map { try MemoryAllocator(parsing: $0) } ?? .sparse
            if allocator.isWhole { try checkRoom(for: bytes, allocator: allocator) }
            let fd = CNBDShim_memory_file("nbdkit-memory", Int64(bitPattern: bytes))
            guard fd >= 0 else {
                let reason = String(cString: strerror(CNBDShim_errno()))
                throw ConfigError("memory: cannot make a memory file of \(bytes) bytes: \(reason)")
            }
            return try MemoryPlugin(fd: fd, size: bytes, allocator: allocator, options: options)
        }
    }

    /// A disk without holes must fit in RAM and swap (as nbdkit's heap allocation must), and a
    /// locked one in RAM alone.
    private static func checkRoom(for bytes: UInt64, allocator: MemoryAllocator) throws {
        let room = CNBDShim_total_memory(allocator.locks ? 0 : 1)
        guard room > 0 else { return }
        if bytes > room {
            let spelling = allocator.locks ? "malloc,mlock=true" : "malloc"
            let place = allocator.locks ? "RAM" : "RAM and swap"
            throw ConfigError("memory: allocator=\(spelling): a disk of \(bytes) bytes does not fit in \(place) (\(room) bytes): \(String(cString: strerror(ENOMEM)))")
        }
    }
}
