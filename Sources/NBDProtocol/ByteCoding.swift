/// Appends big-endian integers and bytes to a growable array. For negotiation
/// messages, which are small and rare; the transmission path writes in place instead.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    public mutating func append(_ b: some Sequence<UInt8>) { bytes.append(contentsOf: b) }
    public mutating func zeroes(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }
}

/// Reads big-endian integers and byte strings from the front of a buffer; every
/// read checks the bounds and throws `.truncated` rather than reading past the end.
public struct ByteReader {
    private let bytes: [UInt8]
    public private(set) var position = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { bytes.count - position }

    public mutating func u16() throws(NBDDecodeError) -> UInt16 { UInt16(truncatingIfNeeded: try uint(2)) }
    public mutating func u32() throws(NBDDecodeError) -> UInt32 { UInt32(truncatingIfNeeded: try uint(4)) }
    public mutating func u64() throws(NBDDecodeError) -> UInt64 { try uint(8) }

    public mutating func bytes(_ n: Int) throws(NBDDecodeError) -> ArraySlice<UInt8> {
        guard n >= 0, n <= remaining else { throw .truncated }
        defer { position += n }
        return bytes[position..<position + n]
    }

    /// A length-prefixed (32-bit) UTF-8 string of at most `NBDSize.maxString` bytes.
    public mutating func string32() throws(NBDDecodeError) -> String {
        let n = try u32()
        guard n <= NBDSize.maxString else { throw .tooLong }
        return try utf8(bytes(Int(n)))
    }

    private mutating func uint(_ n: Int) throws(NBDDecodeError) -> UInt64 {
        guard n <= remaining else { throw .truncated }
        var v: UInt64 = 0
        for i in 0..<n { v = v << 8 | UInt64(bytes[position + i]) }
        position += n
        return v
    }
}

/// Decodes UTF-8, refusing malformed sequences and NUL, which the protocol's strings never hold.
public func utf8(_ bytes: ArraySlice<UInt8>) throws(NBDDecodeError) -> String {
    guard !bytes.contains(0) else { throw .containsNUL }
    guard let s = String(validating: bytes, as: UTF8.self) else { throw .badUTF8 }
    return s
}

/// Why a message from the peer could not be decoded.
public enum NBDDecodeError: Error, Equatable, Sendable, CustomStringConvertible {
    case truncated
    case trailingBytes
    case tooLong
    case badUTF8
    case containsNUL
    case badMagic

    public var description: String {
        switch self {
        case .truncated: "message shorter than its fields"
        case .trailingBytes: "message longer than its fields"
        case .tooLong: "length out of range"
        case .badUTF8: "string is not valid UTF-8"
        case .containsNUL: "string contains NUL"
        case .badMagic: "bad magic number"
        }
    }
}

extension UnsafeRawBufferPointer {
    /// The big-endian integer of type T at `offset` (no alignment required).
    @inline(__always)
    public func loadBigEndian<T: FixedWidthInteger>(fromByteOffset offset: Int, as: T.Type) -> T {
        T(bigEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Stores `value` big-endian at `offset` (no alignment required).
    @inline(__always)
    public func storeBigEndian<T: FixedWidthInteger>(_ value: T, toByteOffset offset: Int) {
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
    }
}
