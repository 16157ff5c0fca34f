import Glibc
import NBDServer
import NBDProtocol

/// Pages of a memory disk's file that read as zeros, seen as nbdkit's memory plugin sees them:
/// reported as zero in block status although allocated. (A page that a partial zero or trim
/// leaves all zeros is not given back, as nbdkit gives it back under its lock: between the
/// check and the punch another connection's write to the rest of the page would be lost.)
struct ZeroPages {
    static let pageSize = 4096
    /// The most data one block-status request scans; its reply ends where the scan stopped.
    static let scanLimit = 64 << 20
    /// The file mapped whole, where it is: pages are checked in place, each up to its first byte
    /// of data (no copy, and a page of random data costs a few loads); else they are read with
    /// the `read` given to `appendExtents`.
    let mapping: SharedMapping?

    /// Appends extents for the allocated range [start, end) of the file: runs of 4 KiB pages
    /// (clipped to the range) that read as zeros are `.zero`, the rest data. Scans at most
    /// `budget` bytes, lowering it by what it read, and with `firstOnly` stops where the first
    /// extent it appends ends; returns false if it stopped before `end`.
    func appendExtents(from start: off_t, to end: off_t, into result: inout [Extent], budget: inout Int,
                       firstOnly: Bool = false,
                       read: (UnsafeMutableRawBufferPointer, UInt64) throws -> Void) throws -> Bool {
        let appendedFrom = result.count
        let chunk = 64 * 1024
        let scratch = mapping == nil ? UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64) : nil
        defer { scratch?.deallocate() }
        var position = start
        while position < end {
            guard budget > 0 else { return false }
            let count = Int(min(end - position, off_t(chunk)))
            let buffer: UnsafeRawBufferPointer
            if let mapping {
                buffer = UnsafeRawBufferPointer(mapping.range(offset: UInt64(position), length: UInt32(count)))
            } else {
                try read(UnsafeMutableRawBufferPointer(rebasing: scratch![0..<count]), UInt64(position))
                buffer = UnsafeRawBufferPointer(rebasing: scratch![0..<count])
            }
            budget -= count
            // Page by page, on the file's page boundaries.
            var at = 0
            while at < count {
                let intoPage = Int((position + off_t(at)) % off_t(Self.pageSize))
                let piece = UnsafeRawBufferPointer(rebasing: buffer[at..<min(at + Self.pageSize - intoPage, count)])
                let flags: AllocationFlags = Self.isZero(piece) ? [.zero] : []
                if let last = result.last, last.flags == flags {
                    result[result.count - 1].length += UInt64(piece.count)
                } else {
                    if firstOnly && result.count > appendedFrom { return false }
                    result.append(Extent(length: UInt64(piece.count), flags: flags))
                }
                at += piece.count
            }
            position += off_t(count)
        }
        return true
    }

    /// Whether every byte of `bytes` is zero.
    static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        var any: UInt64 = 0
        while i + 32 <= bytes.count {
            any |= bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) | bytes.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self)
                | bytes.loadUnaligned(fromByteOffset: i + 16, as: UInt64.self) | bytes.loadUnaligned(fromByteOffset: i + 24, as: UInt64.self)
            if any != 0 { return false }
            i += 32
        }
        while i < bytes.count {
            if bytes[i] != 0 { return false }
            i += 1
        }
        return true
    }
}
