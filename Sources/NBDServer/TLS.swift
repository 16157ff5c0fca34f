import Glibc
import CNBDTLS
import CNBDShim

/// `--tls`: whether STARTTLS is refused, offered, or required before anything else.
public enum TLSMode: String, Sendable {
    case off, on, require
}

/// Server credentials loaded once at start-up, so that a bad file is reported then and
/// not at the first connection.
public final class TLSCredentials: @unchecked Sendable {
    fileprivate let raw: OpaquePointer
    public let isPSK: Bool

    /// Loads ca-cert.pem, server-cert.pem, server-key.pem (and ca-crl.pem if present) from `directory`.
    public init(x509Directory directory: String) throws {
        try TLSCredentials.initialiseLibrary()
        var code: Int32 = 0
        var failed = [CChar](repeating: 0, count: 8192)
        guard let raw = CNBDTLS_credentials_x509(directory, TLSPriority.string(psk: false), &code, &failed, failed.count) else {
            let file = String(decoding: failed.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw ConfigError("TLS certificates: \(file): \(TLSCredentials.message(code))")
        }
        self.raw = raw
        isPSK = false
    }

    /// Loads a psktool file of `username:hexkey` lines.
    public init(pskFile file: String) throws {
        try TLSCredentials.initialiseLibrary()
        guard access(file, R_OK) == 0 else { throw ConfigError("--tls-psk: \(SystemError(file))") }
        var code: Int32 = 0
        guard let raw = CNBDTLS_credentials_psk(file, TLSPriority.string(psk: true), &code) else {
            throw ConfigError("--tls-psk: \(file): \(TLSCredentials.message(code))")
        }
        self.raw = raw
        isPSK = true
    }

    deinit { CNBDTLS_credentials_free(raw) }

    static func message(_ code: Int32) -> String { String(cString: CNBDTLS_strerror(code)) }

    private static func initialiseLibrary() throws {
        if let error = CNBDTLS_load_error() { throw ConfigError("cannot load GnuTLS: \(String(cString: error))") }
        let r = CNBDTLS_global_init()
        if r < 0 { throw ConfigError("gnutls_global_init: \(message(r))") }
    }
}

/// The GnuTLS priority string for the server's sessions: GnuTLS's NORMAL set, as nbdkit's
/// default, with the PSK key exchanges added under `--tls-psk`. On a processor with AES and
/// carry-less multiply instructions the server chooses the cipher, AES-GCM before
/// ChaCha20-Poly1305: GnuTLS's own order lets the client choose, and clients list ChaCha20
/// before AES-128-GCM, so a PSK session (whose key is bound to SHA-256, which rules out
/// AES-256-GCM) would otherwise run ChaCha20, many times slower there. Without those
/// instructions ChaCha20 is the faster cipher and the one without table lookups, so the
/// client's order stands.
enum TLSPriority {
    static let fasterAESOrder = "-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:+CHACHA20-POLY1305:+AES-256-CCM:+AES-128-CCM:"
        + "+AES-256-CBC:+AES-128-CBC:%SERVER_PRECEDENCE"

    static func string(psk: Bool, acceleratedAES: Bool = CNBDTLS_cpu_accelerates_aes_gcm() != 0) -> String {
        var parts = ["NORMAL"]
        if psk { parts.append("+ECDHE-PSK:+DHE-PSK:+PSK") }
        if acceleratedAES { parts.append(fasterAESOrder) }
        return parts.joined(separator: ":")
    }
}

/// Everything a connection needs to know about TLS.
public struct TLSSettings: Sendable {
    public var mode: TLSMode
    public var credentials: TLSCredentials?
    public var verifyPeer: Bool

    public init(mode: TLSMode, credentials: TLSCredentials?, verifyPeer: Bool) {
        self.mode = mode
        self.credentials = credentials
        self.verifyPeer = verifyPeer
    }

    public static let off = TLSSettings(mode: .off, credentials: nil, verifyPeer: false)
}

/// A TLS failure during the handshake or on a record.
struct TLSError: Error, CustomStringConvertible {
    let call: String
    let code: Int
    var description: String { "\(call): \(TLSCredentials.message(Int32(code)))" }
}

/// The transport after STARTTLS: GnuTLS records over the connection's socket (or, under `-s`,
/// standard input and output). One thread may receive while another sends (the connection's
/// locks ensure no more); the session itself is used by one of them at a time (a lock in
/// `CNBDTLS`, held by neither while it waits for the socket), since a client's TLS 1.3
/// KeyUpdate, received, changes the key state a send in progress uses.
final class TLSTransport: Transport, @unchecked Sendable {
    private let session: OpaquePointer
    private let readFD: Int32
    private let writeFD: Int32

    /// Runs the server handshake, receiving on `readFD` and sending on `writeFD` (usually the
    /// same socket); throws if it fails (the caller ends the connection).
    init(readFD: Int32, writeFD: Int32, settings: TLSSettings) throws {
        guard let credentials = settings.credentials else { throw TLSError(call: "gnutls_init", code: -1) }
        var code: Int32 = 0
        let verifyPeer: Int32 = settings.verifyPeer && !credentials.isPSK ? 1 : 0
        guard let session = CNBDTLS_session_new(credentials.raw, readFD, writeFD, verifyPeer, &code) else {
            throw TLSError(call: "gnutls_init", code: Int(code))
        }
        let r = CNBDTLS_handshake(session)
        if r < 0 {
            CNBDTLS_session_free(session, 0)
            throw TLSError(call: "gnutls_handshake", code: Int(r))
        }
        self.session = session
        self.readFD = readFD
        self.writeFD = writeFD
    }

    /// The negotiated protocol and cipher, for debug logs.
    var sessionDescription: String { String(cString: CNBDTLS_session_description(session)) }

    func receive(into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            done += try receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
        }
    }

    func receiveSome(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = CNBDTLS_recv(session, buffer.baseAddress!, buffer.count)
        if n > 0 { return n }
        if n == 0 { throw TransportError.endOfFile }
        // A peer that drops the connection without close_notify is end of file too.
        if n == -110 /* GNUTLS_E_PREMATURE_TERMINATION */ || n == -54 /* GNUTLS_E_PULL_ERROR */ {
            throw TransportError.endOfFile
        }
        throw TLSError(call: "gnutls_record_recv", code: n)
    }

    /// A small payload shares its header's TLS record and socket write.
    func send(_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer) throws {
        let r = CNBDTLS_send_message(session, header.baseAddress, header.count, payload.baseAddress, payload.count)
        if r < 0 { throw TLSError(call: "gnutls_record_send", code: Int(r)) }
    }


    func shutdownReceive() { _ = shutdown(readFD, Int32(SHUT_RD)) }

    func peerHungUp() -> Bool { CNBDShim_peer_hung_up(readFD) == 1 }

    func disconnect() {
        _ = shutdown(readFD, Int32(SHUT_RDWR))
        if writeFD != readFD { _ = shutdown(writeFD, Int32(SHUT_RDWR)) }
    }

    var upgradableDescriptors: (read: Int32, write: Int32)? { nil }

    var unreportedFailure: (any Error)? {
        let code = CNBDTLS_unreported_error(session)
        return code < 0 ? TLSError(call: "gnutls_record_recv", code: Int(code)) : nil
    }

    func close() {
        CNBDTLS_session_free(session, 1)
        _ = Glibc.close(readFD)
        if writeFD != readFD { _ = Glibc.close(writeFD) }
    }
}
