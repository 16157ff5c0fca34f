import Glibc
import CNBDShim
import NBDServer

/// `memory size=SIZE`: a sparse RAM disk that every connection shares, kept in an anonymous
/// memory file (memfd). Memory grows with what is written, not with the size; trim and zero
/// punch holes, which give memory back. Being a file, its contents go to a plaintext socket by
/// `sendfile`; large writes arrive from one by `splice`, as the file plugin's do in tmpfs.
/// Mapped into the process (where `SharedMapping.mayMap` allows), it stores smaller writes with
/// no system call.
public final class MemoryPlugin: Backend {
    public static let name = "memory"
    public let name = "memory"
    /// The memory file; each connection works on a duplicate of it.
    private let fd: Int32
    private let mapping: SharedMapping?

    /// Maps the file unless it is read-only or the process's memory will be locked (which
    /// would take memory for the whole disk).
    private init(fd: Int32, size: UInt64, options: PluginOptions) {
        self.fd = fd
        mapping = options.readonly || options.locksMemory ? nil : SharedMapping(fd: fd, size: size)
    }

    deinit { _ = close(fd) }

    public func open(_ request: OpenRequest) throws -> any BackendConnection {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { throw BackendError(SystemError("memory: dup")) }
        return FileConnection(descriptor: copy, name: "memory", readonly: request.readonly, isMemoryDisk: true,
                              mapping: request.readonly ? nil : mapping)
    }
}

extension MemoryPlugin: PluginFactory {
    public static let magicConfigKey: String? = "size"
    public static let configHelp = "size=<SIZE>  (required) Size of the backing disk"
    public static let threadModel = ThreadModel.parallel
    public static let callbacks: Set<PluginCallback> = [
        .config, .configComplete, .configHelp, .open, .getSize, .canFastZero, .canFUA, .canMultiConn,
        .canCache, .pread, .pwrite, .flush, .trim, .zero, .extents,
    ]

    public static func make(_ parameters: inout Parameters, options: PluginOptions) throws -> any Backend {
        guard let size = parameters.take("size") else {
            throw ConfigError("you must specify size=<SIZE> on the command line")
        }
        let bytes = try parseSize(size)
        let fd = CNBDShim_memory_file("nbdkit-memory", Int64(bitPattern: bytes))
        guard fd >= 0 else {
            let reason = String(cString: strerror(CNBDShim_errno()))
            throw ConfigError("memory: cannot make a memory file of \(bytes) bytes: \(reason)")
        }
        return MemoryPlugin(fd: fd, size: bytes, options: options)
    }
}
