import Glibc
import CNBDShim

/// Which address families a TCP listener uses (`-4`, `-6`).
public enum AddressFamily: Sendable {
    case any, ipv4, ipv6
}

/// Where the server listens.
public enum ListenAddress: Sendable, Equatable {
    /// TCP on `host` (all addresses when nil) and `port`.
    case tcp(host: String?, port: String, family: AddressFamily)
    /// A Unix domain socket at `path`.
    case unix(path: String)
    /// AF_VSOCK on `port`, any CID (`--vsock`): clients in virtual machines reach the host.
    case vsock(port: UInt32)
}

/// Bound, listening sockets and what clients need to reach them.
public struct Listeners: Sendable {
    public let sockets: [FileDescriptor]
    /// The TCP port actually bound (resolves `-p 0`) or the vsock port, nil for a Unix socket.
    public let port: Int?
    public let unixPath: String?
    /// The sockets are AF_VSOCK (`port` is a vsock port).
    public let isVSock: Bool
    /// The device and inode of the socket file this process bound at `unixPath`.
    private let boundFile: (device: UInt64, inode: UInt64)?

    public init(sockets: [FileDescriptor], port: Int?, unixPath: String?, isVSock: Bool = false) {
        self.init(sockets: sockets, port: port, unixPath: unixPath, isVSock: isVSock, boundFile: nil)
    }

    private init(sockets: [FileDescriptor], port: Int?, unixPath: String?, isVSock: Bool,
                 boundFile: (device: UInt64, inode: UInt64)?) {
        self.sockets = sockets
        self.port = port
        self.unixPath = unixPath
        self.isVSock = isVSock
        self.boundFile = boundFile
    }

    /// Removes the Unix socket file this process bound, only while `unixPath` still names that
    /// very socket: one that another server has bound there since (after this one's was
    /// removed) stays, so that server stays reachable.
    public func removeUnixSocket() {
        guard let unixPath, let boundFile else { return }
        var st = stat()
        guard lstat(unixPath, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK,
              UInt64(st.st_dev) == boundFile.device, UInt64(st.st_ino) == boundFile.inode else { return }
        _ = unlink(unixPath)
    }

    /// Binds and listens. Wraps getaddrinfo, socket, bind and listen. With `label`, the sockets
    /// get that SELinux label (`--selinux-label`), or nothing is bound and it throws.
    public static func bind(_ address: ListenAddress, label: String? = nil) throws -> Listeners {
        if let label {
            try SocketCreationContext.set(label)
            defer { try? SocketCreationContext.set(nil) }
            return try bind(address)
        }
        switch address {
        case .unix(let path): return try bindUnix(path)
        case .tcp(let host, let port, let family): return try bindTCP(host: host, port: port, family: family)
        case .vsock(let port):
            let fd = try syscall("vsock: port \(port)") { CNBDShim_vsock_listen(port) }
            return Listeners(sockets: [FileDescriptor(fd)], port: Int(port), unixPath: nil, isVSock: true)
        }
    }

    private static func bindUnix(_ path: String) throws -> Listeners {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard path.utf8.count < capacity else {
            throw ConfigError("socket path is too long (at most \(capacity - 1) bytes): \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            for (i, c) in path.utf8.enumerated() { dst[i] = c }
        }
        let fd = try syscall("socket") { CNBDShim_stream_socket(AF_UNIX) }
        do {
            _ = try withUnsafePointer(to: &addr) { p in
                try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    try syscall("bind: \(path)") { Glibc.bind(fd, sa, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
            }
            try syscall("listen") { listen(fd, SOMAXCONN) }
        } catch {
            _ = close(fd)
            throw error
        }
        // (Just bound: nothing else can have replaced it yet but a process removing it first.)
        var st = stat()
        let bound = lstat(path, &st) == 0 ? (device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) : nil
        return Listeners(sockets: [FileDescriptor(fd)], port: nil, unixPath: path, isVSock: false, boundFile: bound)
    }

    private static func bindTCP(host: String?, port: String, family: AddressFamily) throws -> Listeners {
        var hints = addrinfo()
        // (Not AI_ADDRCONFIG, as nbdkit: with it, a machine whose only address is loopback has
        // nothing to listen on.)
        hints.ai_flags = AI_PASSIVE
        hints.ai_family = switch family { case .any: AF_UNSPEC; case .ipv4: AF_INET; case .ipv6: AF_INET6 }
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>? = nil
        let r = getaddrinfo(host, port, &hints, &list)
        guard r == 0 else {
            throw ConfigError("getaddrinfo: \(host ?? "<any>"): \(port): \(String(cString: gai_strerror(r)))")
        }
        defer { freeaddrinfo(list) }
        var sockets: [FileDescriptor] = []
        var boundPort: Int? = nil
        var addressInUse = false
        var addressMissing = false
        var cursor = list
        do {
            while let ai = cursor {
                defer { cursor = ai.pointee.ai_next }
                let fd = CNBDShim_stream_socket(ai.pointee.ai_family)
                if fd == -1 {
                    let e = CNBDShim_errno()
                    if e == EAFNOSUPPORT { continue }
                    throw SystemError("socket", errno: e)
                }
                sockets.append(FileDescriptor(fd))
                var one: Int32 = 1
                _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
                if ai.pointee.ai_family == AF_INET6 {
                    _ = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
                }
                // With port 0, every address family shares the port the first bind chose.
                if let boundPort, port == "0" { setPort(ai.pointee.ai_addr, boundPort) }
                // As nbdkit: an address whose port is taken is skipped (the server listens on
                // the others); only when every one is taken is that an error. So is one this
                // machine does not have (::1 for "localhost" where IPv6 is disabled).
                if Glibc.bind(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == -1 {
                    let e = CNBDShim_errno()
                    guard e == EADDRINUSE || e == EADDRNOTAVAIL else { throw SystemError("bind", errno: e) }
                    if e == EADDRINUSE { addressInUse = true } else { addressMissing = true }
                    sockets.removeLast().close()
                    continue
                }
                try syscall("listen") { listen(fd, SOMAXCONN) }
                if boundPort == nil { boundPort = localPort(fd) }
            }
        } catch {
            sockets.forEach { $0.close() }
            throw error
        }
        if sockets.isEmpty && addressInUse {
            throw ConfigError("unable to bind to any sockets on port \(port): \(SystemError("bind", errno: EADDRINUSE))")
        }
        if sockets.isEmpty && addressMissing { throw SystemError("bind", errno: EADDRNOTAVAIL) }
        guard !sockets.isEmpty else { throw ConfigError("no addresses to listen on for \(host ?? "*"):\(port)") }
        return Listeners(sockets: sockets, port: boundPort, unixPath: nil)
    }

    private static func localPort(_ fd: Int32) -> Int? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = withUnsafeMutablePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard r == 0 else { return nil }
        let family = Int32(storage.ss_family)
        return withUnsafePointer(to: &storage) { p -> Int? in
            switch family {
            case AF_INET: return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            case AF_INET6: return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            default: return nil
            }
        }
    }

    private static func setPort(_ sa: UnsafeMutablePointer<sockaddr>, _ port: Int) {
        switch Int32(sa.pointee.sa_family) {
        case AF_INET: sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port = UInt16(port).bigEndian }
        case AF_INET6: sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_port = UInt16(port).bigEndian }
        default: break
        }
    }
}

/// Tunes an accepted connection for NBD's request/reply traffic. A Unix-domain connection gets
/// a send buffer of up to 4 MiB (the system's `net.core.wmem_max` caps it), so that a large read
/// reply goes out in a few big chunks with few wake-ups of the client instead of blocking every
/// ~200 KiB (about 25% less server CPU per GB read). A TCP connection keeps its autotuned buffers
/// (setting a size would turn autotuning off) but gets TCP_NODELAY, as in nbdkit: each reply is
/// written whole, so Nagle's algorithm would only delay small replies behind the client's ACKs.
func tuneAcceptedSocket(_ fd: Int32) {
    var address = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let named = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    } == 0
    guard named else { return }
    switch Int32(address.ss_family) {
    case AF_UNIX:
        var size: Int32 = 4 << 20
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    case AF_INET, AF_INET6:
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    default:
        break
    }
}

/// Gives a Unix-domain connection that has just become TLS the system's default send buffer
/// (`net.core.wmem_default`) back. Encrypted replies are written record by record, never with
/// `sendfile`, and a send buffer that lets the server run megabytes ahead of its client hands
/// the client records that have gone cold in the caches: against nbdcopy over TLS the client,
/// which is what limits the throughput there, spent about 8% more CPU per GB with the 4 MiB
/// buffer. Other sockets (TCP keeps its autotuning) are left as they are.
func useDefaultSendBufferForTLS(_ fd: Int32) {
    guard CNBDShim_socket_domain(fd) == AF_UNIX else { return }
    // (The kernel doubles what is asked for; a new socket starts at the default itself.)
    var size = Int32(defaultSocketSendBuffer / 2)
    _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
}

/// `net.core.wmem_default`, read once; Linux's usual 212,992 if it can't be read.
private let defaultSocketSendBuffer: Int = {
    let fd = open("/proc/sys/net/core/wmem_default", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return 212_992 }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: 32)
    let n = read(fd, &bytes, bytes.count - 1)
    guard n > 0, let value = Int(String(decoding: bytes[0..<n].prefix { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self)),
          value > 0, value <= Int(Int32.max) else { return 212_992 }
    return value
}()

/// The SELinux context of the sockets the calling thread creates, as libselinux's
/// `setsockcreatecon_raw` sets it: through /proc/thread-self/attr/sockcreate.
enum SocketCreationContext {
    /// Sets `label`, or with nil goes back to the default. Throws where SELinux is off.
    static func set(_ label: String?) throws {
        let path = "/proc/thread-self/attr/sockcreate"
        let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC)
        var written = -1
        if fd >= 0 {
            defer { _ = close(fd) }
            if let label {
                let bytes = Array(label.utf8) + [0]
                written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            } else {
                written = write(fd, nil, 0)
            }
        }
        guard written >= 0 else {
            throw ConfigError("--selinux-label=\(label ?? ""): cannot set the label of new sockets: \(SystemError(path))")
        }
    }
}
