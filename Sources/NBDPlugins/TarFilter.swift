import NBDServer

/// `--filter=tar tar-entry=PATH`: serves one file inside an uncompressed tar archive that the
/// plugin provides, for reading and writing in place (the file cannot change size). The index
/// is read by the filter itself, each time a client opens the export: ustar and old-style
/// headers, GNU long names and pax `path`/`size` records.
final class TarFilter: PassthroughFilter, @unchecked Sendable {
    /// The name asked for, as bytes: names match byte for byte, as in tar (two spellings of
    /// "é" are different files).
    private let entry: [UInt8]

    init(next: any Backend, entry: String) {
        self.entry = Array(entry.utf8)
        super.init(next: next)
    }

    override var name: String { next.name }

    override func open(_ request: OpenRequest) throws -> any BackendConnection {
        let inner = try next.open(request)
        do {
            let (offset, size) = try TarIndex(inner).find(entry)
            return OffsetFilter.Connection(next: inner, offset: offset, size: size)
        } catch {
            inner.close()
            throw error
        }
    }
}

extension TarFilter: FilterFactory {
    static let name = "tar"
    static let configHelp = "tar-entry=<PATH>  (required) The path inside the tar file to serve.\ntar=<PATH>  Accepted for compatibility; the index is read without GNU tar."

    static func make(_ parameters: inout Parameters, next: any Backend, control: ServerControl) throws -> any Backend {
        let entries = parameters.takeAll("tar-entry")
        // (As nbdkit: once only.)
        guard entries.count <= 1 else { throw ConfigError("only one tar-entry parameter can be given") }
        _ = parameters.take("tar")
        guard let entry = entries.first else {
            throw ConfigError(completing: "you must supply the tar-entry=<FILENAME> parameter")
        }
        return TarFilter(next: next, entry: entry)
    }
}

/// Walks the headers of a tar archive read through a backend connection.
struct TarIndex {
    private static let block = 512
    /// Long names and pax records larger than this are refused rather than read into memory.
    private static let largestMetadata = 1 << 20
    private let archive: any BackendConnection

    init(_ archive: any BackendConnection) { self.archive = archive }

    /// Where the data of the regular file named `entry` (the bytes of its name) lies: its
    /// offset and size.
    func find(_ entry: [UInt8]) throws -> (offset: UInt64, size: UInt64) {
        let archiveSize = try archive.size()
        var position: UInt64 = 0
        var longName: [UInt8]?
        var paxPath: [UInt8]?
        var paxSize: UInt64?
        /// The pax records describe a GNU sparse file (GNU.sparse.*), whose data is not the file's.
        var paxSparse = false
        /// Why the last entry named `entry` that was not a regular file can't be served.
        var unservable: String?
        var header = [UInt8](repeating: 0, count: Self.block)
        // Every length is checked against what is left of the archive before it is used, so a
        // crafted header can neither overflow the position nor send it backwards.
        while position <= archiveSize, archiveSize - position >= UInt64(Self.block) {
            try header.withUnsafeMutableBytes { try archive.pread(into: $0, offset: position) }
            if header.allSatisfy({ $0 == 0 }) { break }
            guard Self.checksumMatches(header) else {
                throw BackendError(.einval, "tar: no valid header at offset \(position): not an uncompressed tar file?")
            }
            let dataOffset = position + UInt64(Self.block)
            let storedSize = try Self.number(header[124..<136], at: position)
            let left = archiveSize - dataOffset
            guard storedSize <= left else {
                throw BackendError(.einval, "tar: the entry at offset \(position) runs past the end of the tar file")
            }
            let typeflag = header[156]
            switch typeflag {
            case UInt8(ascii: "L"):
                longName = Array(try metadata(at: dataOffset, count: storedSize).prefix { $0 != 0 })
            case UInt8(ascii: "x"):
                for (key, value) in try Self.paxRecords(try metadata(at: dataOffset, count: storedSize)) {
                    if key == "path" || key == "GNU.sparse.name" { paxPath = value }
                    if key.hasPrefix("GNU.sparse.") { paxSparse = true }
                    // (Checked against the archive with the entry it describes.)
                    if key == "size", let n = UInt64(String(decoding: value, as: UTF8.self)) { paxSize = n }
                }
            case UInt8(ascii: "g"), UInt8(ascii: "K"):
                // Global pax records and GNU long link names say nothing about a file's data.
                break
            default:
                let name = paxPath ?? longName ?? Self.headerName(header)
                let size = paxSize ?? storedSize
                longName = nil
                paxPath = nil
                paxSize = nil
                let isSparse = paxSparse || typeflag == UInt8(ascii: "S")
                paxSparse = false
                let isRegular = !isSparse && (typeflag == 0 || typeflag == UInt8(ascii: "0") || typeflag == UInt8(ascii: "7"))
                // An old GNU sparse entry's map may go on in blocks of its own after the header
                // (each says at byte 504 whether another follows), before its data.
                var dataStart = dataOffset
                if typeflag == UInt8(ascii: "S") && header[482] != 0 {
                    var more = [UInt8](repeating: 0, count: Self.block)
                    repeat {
                        guard archiveSize - dataStart >= UInt64(Self.block) else {
                            throw BackendError(.einval, "tar: the entry at offset \(position) runs past the end of the tar file")
                        }
                        try more.withUnsafeMutableBytes { try archive.pread(into: $0, offset: dataStart) }
                        dataStart += UInt64(Self.block)
                    } while more[504] != 0
                }
                // As GNU tar: the data of any entry but a directory is as long as its pax size
                // says, where it has one (a sparse file's stored data with its map, a link's).
                let skipped = typeflag == UInt8(ascii: "5") ? storedSize : size
                guard skipped <= archiveSize - dataStart else {
                    throw BackendError(.einval, "tar: the entry at offset \(position) runs past the end of the tar file")
                }
                if name == entry {
                    if isRegular { return (dataStart, size) }
                    // Reported unless a regular file of that name comes later (appended with
                    // tar -r). (nbdkit 1.32 serves a sparse file's stored data, and other
                    // entries as empty.)
                    unservable = isSparse ? "a sparse file, which this filter can't serve" : "not a regular file"
                }
                position = dataStart + Self.roundedUp(skipped)
                continue
            }
            position = dataOffset + Self.roundedUp(storedSize)
        }
        throw BackendError(.einval, "tar: \(String(decoding: entry, as: UTF8.self)): \(unservable ?? "no such file in the tar file")")
    }

    private func metadata(at offset: UInt64, count: UInt64) throws -> [UInt8] {
        guard count <= UInt64(Self.largestMetadata) else {
            throw BackendError(.einval, "tar: a name or pax header of \(count) bytes at offset \(offset) is too large")
        }
        var bytes = [UInt8](repeating: 0, count: Int(count))
        if count > 0 { try bytes.withUnsafeMutableBytes { try archive.pread(into: $0, offset: offset) } }
        return bytes
    }

    private static func roundedUp(_ n: UInt64) -> UInt64 { (n + UInt64(block) - 1) / UInt64(block) * UInt64(block) }

    /// The ustar name, as bytes: prefix/name when the ustar prefix field is used.
    private static func headerName(_ h: [UInt8]) -> [UInt8] {
        let field = { (range: Range<Int>) in Array(h[range].prefix { $0 != 0 }) }
        let name = field(0..<100)
        // POSIX "ustar\0" only: GNU headers ("ustar  \0") keep times where the prefix would be.
        let isUstar = h[257..<263].elementsEqual("ustar\0".utf8)
        let prefix = isUstar ? field(345..<500) : []
        return prefix.isEmpty ? name : prefix + [UInt8(ascii: "/")] + name
    }

    /// The header checksum: the byte sum with the checksum field counted as spaces, its bytes
    /// taken as unsigned or, as some old tar programs wrote it, signed (GNU tar accepts both).
    private static func checksumMatches(_ h: [UInt8]) -> Bool {
        guard let stored = try? number(h[148..<156], at: 0) else { return false }
        var unsigned: Int64 = 0
        var signed: Int64 = 0
        for (i, byte) in h.enumerated() {
            let b = (148..<156).contains(i) ? 32 : byte
            unsigned += Int64(b)
            signed += Int64(Int8(bitPattern: b))
        }
        return Int64(clamping: stored) == unsigned || Int64(clamping: stored) == signed
    }

    /// An octal field (spaces and NULs around it), or GNU base-256 when the top bit is set.
    private static func number(_ field: ArraySlice<UInt8>, at position: UInt64) throws -> UInt64 {
        if let first = field.first, first & 0x80 != 0 {
            var n: UInt64 = UInt64(first & 0x7f)
            for byte in field.dropFirst() {
                guard n >> 56 == 0 else { throw BackendError(.einval, "tar: a size at offset \(position) is too large") }
                n = n << 8 | UInt64(byte)
            }
            return n
        }
        var n: UInt64 = 0
        var seenDigit = false
        for byte in field {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                guard n >> 60 == 0 else { throw BackendError(.einval, "tar: a number at offset \(position) is too large") }
                n = n * 8 + UInt64(byte - UInt8(ascii: "0"))
                seenDigit = true
            case 0, UInt8(ascii: " "):
                if seenDigit { return n }
            default:
                throw BackendError(.einval, "tar: a bad number in the header at offset \(position)")
            }
        }
        return n
    }

    /// pax records: "LENGTH key=value\n", LENGTH counting the whole record; values as bytes.
    private static func paxRecords(_ data: [UInt8]) throws -> [(String, [UInt8])] {
        var records: [(String, [UInt8])] = []
        var i = 0
        while i < data.count, data[i] != 0 {
            guard let space = data[i...].firstIndex(of: UInt8(ascii: " ")),
                  let length = Int(String(decoding: data[i..<space], as: UTF8.self)), length > 0,
                  length <= data.count - i, data[i + length - 1] == UInt8(ascii: "\n"),
                  let equals = data[(space + 1)..<(i + length)].firstIndex(of: UInt8(ascii: "="))
            else { throw BackendError(.einval, "tar: a malformed pax header record") }
            records.append((String(decoding: data[(space + 1)..<equals], as: UTF8.self),
                            Array(data[(equals + 1)..<(i + length - 1)])))
            i += length
        }
        return records
    }
}
