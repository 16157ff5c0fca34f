import Glibc
import CNBDShim

/// How a connection moves bytes: plain sockets now, TLS later. The protocol code never knows which.
public protocol Transport: AnyObject, Sendable {
    /// Fills `buffer` completely; throws `TransportError.endOfFile` if the peer closed first.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws
    /// Receives at least one byte and at most `buffer.count` (whatever has arrived; `buffer` must
    /// not be empty); returns how many. Throws `TransportError.endOfFile` if the peer closed first.
    func receiveSome(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Sends `header` and then `payload` (which may be empty) as one write where possible.
    func send(_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer) throws
    /// True when `sendFromFile` lets the kernel send file data itself (a plaintext socket).
    var sendsFromFiles: Bool { get }
    /// Sends `header` and then `count` bytes of `file`, returning how many of those bytes went
    /// out: fewer than `count` when the kernel could not send (more of) the file, and the caller
    /// sends the rest itself. Throws only when the connection failed.
    func sendFromFile(_ header: UnsafeRawBufferPointer, _ file: FileExtent, count: Int) throws -> Int
    /// Stops further receives, waking a thread blocked in `receive`; sends still work.
    func shutdownReceive()
    /// Ends the connection both ways at once (a hard disconnect), waking threads blocked in
    /// `receive` or `send`; `close` still follows.
    func disconnect()
    /// Closes the descriptors; called once, after every other call has returned.
    func close()
    /// The descriptors to run a TLS handshake on after STARTTLS (one socket both ways, or the
    /// two of `-s`), or nil if this transport can't upgrade.
    var upgradableDescriptors: (read: Int32, write: Int32)? { get }
    /// True when `receiveIfAvailable` never waits; false where it may (TLS, `-s`).
    var receivesWithoutWaiting: Bool { get }
    /// Receives whatever has arrived, without waiting: 0 if nothing has (`buffer` must not be
    /// empty). Throws `TransportError.endOfFile` if the peer closed. Waits as `receiveSome`
    /// does unless `receivesWithoutWaiting`.
    func receiveIfAvailable(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// True when `spliceIfAvailable` works: a plaintext Unix or TCP socket, whose splice is known
    /// to move socket buffers without waiting (others, such as vsock, are read as usual).
    var splices: Bool { get }
    /// Moves up to `count` (> 0) bytes that have arrived into the pipe whose write end is `pipe`
    /// (with room for them), without waiting, and returns how many: 0 if nothing has arrived.
    /// Throws `TransportError.endOfFile` if the peer closed. Only where `splices`; others throw.
    func spliceIfAvailable(upTo count: Int, into pipe: Int32) throws -> Int
    /// Waits until something can be received, the peer closed, or receives were shut down.
    /// A transport that `receivesWithoutWaiting` must provide it (the default returns at once,
    /// which is right only where receiving waits anyway).
    func waitForInput() throws
    /// True when `waitForInput` would return at once; never waits. Only where
    /// `receivesWithoutWaiting` (the default says true).
    func hasInput() -> Bool
    /// True once the client has hung up or shut down its sending side (or receiving was shut
    /// down here); never waits. The default says false.
    func peerHungUp() -> Bool
    /// Calls `handler` (on the sending thread) whenever a send has waited `milliseconds` for the
    /// peer to take more, then goes on waiting; returns false where it can't (the default).
    /// Call once, before any send that may wait.
    func reportStalledSends(after milliseconds: Int, _ handler: @escaping @Sendable () -> Void) -> Bool
    /// A failure met while reading ahead that no receive has reported yet: a TLS record that
    /// failed to decrypt behind requests already received ends the session before their replies
    /// go out. Asked once the connection is done, so that it is logged.
    var unreportedFailure: (any Error)? { get }
}

extension Transport {
    public var receivesWithoutWaiting: Bool { false }

    public var unreportedFailure: (any Error)? { nil }

    public func hasInput() -> Bool { true }

    public func peerHungUp() -> Bool { false }

    public func reportStalledSends(after milliseconds: Int, _ handler: @escaping @Sendable () -> Void) -> Bool { false }

    public var sendsFromFiles: Bool { false }

    public func sendFromFile(_ header: UnsafeRawBufferPointer, _ file: FileExtent, count: Int) throws -> Int {
        try send(header, UnsafeRawBufferPointer(start: nil, count: 0))
        return 0
    }

    public func receiveIfAvailable(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try receiveSome(into: buffer)
    }

    public func waitForInput() throws {}

    public var splices: Bool { false }

    public func spliceIfAvailable(upTo count: Int, into pipe: Int32) throws -> Int {
        throw TransportError.failed(SystemError("splice", errno: EINVAL))
    }

    /// Sends a byte array (negotiation messages).
    public func send(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try send($0, UnsafeRawBufferPointer(start: nil, count: 0)) }
    }

    /// Receives exactly `count` bytes into a new array (negotiation messages). The array grows
    /// as the bytes arrive (4 KiB, then doubling), so a client that announces a long message
    /// and sends little of it holds little of the server's memory.
    public func receive(count: Int) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var piece = 4096
        while bytes.count < count {
            let start = bytes.count, end = min(count, start + piece)
            bytes.append(contentsOf: repeatElement(0, count: end - start))
            try bytes.withUnsafeMutableBytes { try receive(into: UnsafeMutableRawBufferPointer(rebasing: $0[start..<end])) }
            piece *= 2
        }
        return bytes
    }
}

/// Why a transport stopped.
public enum TransportError: Error, Sendable, CustomStringConvertible {
    case endOfFile
    case failed(SystemError)

    public var description: String {
        switch self {
        case .endOfFile: "the client closed the connection"
        case .failed(let error): "\(error)"
        }
    }
}

/// A transport over plain file descriptors: one socket, or stdin and stdout with `-s`.
public final class PlainTransport: Transport, @unchecked Sendable {
    private let readFD: Int32
    private let writeFD: Int32
    public let splices: Bool
    /// A splice from `readFD` waits for input (a TCP socket, unlike a Unix one, ignores
    /// SPLICE_F_NONBLOCK), so it must poll first.
    private let spliceMayWait: Bool
    /// Both descriptors are sockets, which GnuTLS's receives and sends need (`-s` may be pipes).
    private let upgradable: Bool
    /// Where `readFD` is not a socket (`-s` on a pipe), which `shutdown` can't end: an eventfd
    /// that each receive also waits on, made readable by `shutdownReceive` and `disconnect`;
    /// -1 for a socket.
    private let cancel: Int32
    /// Called when a send has waited for the send timeout (see `reportStalledSends`); set once,
    /// before any send that may wait.
    private nonisolated(unsafe) var stalledSend: (@Sendable () -> Void)?

    public init(readFD: Int32, writeFD: Int32) {
        self.readFD = readFD
        self.writeFD = writeFD
        let domain = readFD == writeFD ? CNBDShim_socket_domain(readFD) : -1
        self.splices = domain == AF_UNIX || domain == AF_INET || domain == AF_INET6
        self.spliceMayWait = domain != AF_UNIX
        self.upgradable = domain >= 0 || (CNBDShim_socket_domain(readFD) >= 0 && CNBDShim_socket_domain(writeFD) >= 0)
        self.cancel = CNBDShim_socket_domain(readFD) >= 0 ? -1 : CNBDShim_eventfd()
    }

    public convenience init(socket: Int32) { self.init(readFD: socket, writeFD: socket) }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            done += try receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
        }
    }

    public func receiveSome(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            if cancel >= 0 {
                var fds = [pollfd(fd: readFD, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: cancel, events: Int16(POLLIN), revents: 0)]
                if poll(&fds, 2, -1) < 0 {
                    let e = CNBDShim_errno()
                    if e == EINTR { continue }
                    throw TransportError.failed(SystemError("poll", errno: e))
                }
                if fds[1].revents != 0 { throw TransportError.endOfFile }
            }
            let n = Glibc.read(readFD, buffer.baseAddress!, buffer.count)
            if n > 0 { return n }
            if n == 0 { throw TransportError.endOfFile }
            let e = CNBDShim_errno()
            if e == EINTR { continue }
            if e == ECONNRESET { throw TransportError.endOfFile }
            throw TransportError.failed(SystemError("read", errno: e))
        }
    }

    public func receiveIfAvailable(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            if let n = try Self.available(CNBDShim_recv_nowait(readFD, buffer.baseAddress!, buffer.count), "recv") {
                return n
            }
        }
    }

    /// What a receive that does not wait got: the bytes received, 0 if nothing had arrived, nil
    /// to try again (interrupted).
    private static func available(_ n: Int, _ call: String) throws -> Int? {
        if n > 0 { return n }
        if n == 0 { throw TransportError.endOfFile }
        let e = CNBDShim_errno()
        if e == EAGAIN || e == EWOULDBLOCK { return 0 }
        if e == EINTR { return nil }
        if e == ECONNRESET { throw TransportError.endOfFile }
        throw TransportError.failed(SystemError(call, errno: e))
    }

    public func spliceIfAvailable(upTo count: Int, into pipe: Int32) throws -> Int {
        if spliceMayWait {
            var entry = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
            if poll(&entry, 1, 0) == 0 { return 0 }
        }
        while true {
            if let n = try Self.available(CNBDShim_splice_nowait(readFD, pipe, count), "splice") { return n }
        }
    }

    public func hasInput() -> Bool {
        var entry = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) != 0
    }

    public func peerHungUp() -> Bool { CNBDShim_peer_hung_up(readFD) == 1 }

    public func waitForInput() throws {
        var entry = pollfd(fd: readFD, events: Int16(POLLIN), revents: 0)
        while poll(&entry, 1, -1) < 0 {
            let e = CNBDShim_errno()
            if e != EINTR { throw TransportError.failed(SystemError("poll", errno: e)) }
        }
    }

    /// On a socket: a send timeout (`SO_SNDTIMEO`) ends each wait after `milliseconds`, and
    /// the send, after calling `handler`, waits again.
    public func reportStalledSends(after milliseconds: Int, _ handler: @escaping @Sendable () -> Void) -> Bool {
        guard readFD == writeFD else { return false }
        var timeout = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        guard setsockopt(writeFD, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
            return false
        }
        stalledSend = handler
        return true
    }

    /// Whether a failed send with `error` should be tried again: interrupted, or timed out
    /// (only where `reportStalledSends` set the timeout, after telling its handler).
    private func retries(after error: Int32) -> Bool {
        if error == EINTR { return true }
        guard error == EAGAIN || error == EWOULDBLOCK, let stalledSend else { return false }
        stalledSend()
        return true
    }

    public func send(_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer) throws {
        var iov = (iovec(iov_base: UnsafeMutableRawPointer(mutating: header.baseAddress), iov_len: header.count),
                   iovec(iov_base: UnsafeMutableRawPointer(mutating: payload.baseAddress), iov_len: payload.count))
        var remaining = header.count + payload.count
        try withUnsafeMutableBytes(of: &iov) { raw in
            let vecs = raw.bindMemory(to: iovec.self)
            var first = 0
            Self.skipEmpty(vecs, &first)
            while remaining > 0 {
                let n = writev(writeFD, vecs.baseAddress! + first, Int32(vecs.count - first))
                if n < 0 {
                    let e = CNBDShim_errno()
                    if retries(after: e) { continue }
                    throw TransportError.failed(SystemError("writev", errno: e))
                }
                remaining -= n
                Self.advance(vecs, &first, by: n)
            }
        }
    }

    /// Moves past `count` sent bytes: `vecs[first...]` is then what remains, starting non-empty.
    private static func advance(_ vecs: UnsafeMutableBufferPointer<iovec>, _ first: inout Int, by count: Int) {
        var left = count
        while left > 0 && first < vecs.count {
            if left >= vecs[first].iov_len {
                left -= vecs[first].iov_len
                vecs[first].iov_len = 0
                first += 1
            } else {
                vecs[first].iov_base = vecs[first].iov_base! + left
                vecs[first].iov_len -= left
                left = 0
            }
        }
        skipEmpty(vecs, &first)
    }

    private static func skipEmpty(_ vecs: UnsafeMutableBufferPointer<iovec>, _ first: inout Int) {
        while first < vecs.count && vecs[first].iov_len == 0 { first += 1 }
    }

    /// A socket (one descriptor both ways); not `-s`.
    public var sendsFromFiles: Bool { readFD == writeFD }

    public func sendFromFile(_ header: UnsafeRawBufferPointer, _ file: FileExtent, count: Int) throws -> Int {
        var done = 0
        while done < header.count {
            let n = CNBDShim_send_more(writeFD, header.baseAddress! + done, header.count - done)
            if n >= 0 { done += n; continue }
            let e = CNBDShim_errno()
            if retries(after: e) { continue }
            throw TransportError.failed(SystemError("send", errno: e))
        }
        var sent = 0
        var offset = off_t(file.offset)
        while sent < count {
            let n = sendfile(writeFD, file.fd, &offset, count - sent)
            if n > 0 { sent += n; continue }
            guard n < 0 else { break }  // End of file: the caller reads the rest itself.
            let e = CNBDShim_errno()
            if retries(after: e) { continue }
            // The client is gone: nothing more can reach it, so the rest is not read for it.
            // (EPIPE and ECONNRESET are the socket's; an error a file can also give, such as
            // ENOTCONN from a FUSE file whose daemon died, is the socket's only if the socket
            // itself has failed.)
            if e == EPIPE || e == ECONNRESET || socketHasFailed() {
                throw TransportError.failed(SystemError("sendfile", errno: e))
            }
            // The file's error, which the caller's own read of the rest reports.
            break
        }
        return sent
    }

    /// Whether the socket has an error pending or is shut down both ways (its peer is gone).
    private func socketHasFailed() -> Bool {
        var entry = pollfd(fd: writeFD, events: Int16(POLLOUT), revents: 0)
        return poll(&entry, 1, 0) > 0 && entry.revents & Int16(POLLERR | POLLHUP) != 0
    }

    public func shutdownReceive() {
        _ = shutdown(readFD, Int32(SHUT_RD))
        cancelReceives()
    }

    public func disconnect() {
        _ = shutdown(readFD, Int32(SHUT_RDWR))
        if writeFD != readFD { _ = shutdown(writeFD, Int32(SHUT_RDWR)) }
        cancelReceives()
    }

    private func cancelReceives() {
        guard cancel >= 0 else { return }
        var one: UInt64 = 1
        _ = write(cancel, &one, 8)
    }

    public var upgradableDescriptors: (read: Int32, write: Int32)? { upgradable ? (readFD, writeFD) : nil }

    /// A socket (one descriptor both ways); not `-s`, whose stdin may be a pipe.
    public var receivesWithoutWaiting: Bool { readFD == writeFD }

    public func close() {
        _ = Glibc.close(readFD)
        if writeFD != readFD { _ = Glibc.close(writeFD) }
        if cancel >= 0 { _ = Glibc.close(cancel) }
    }
}
