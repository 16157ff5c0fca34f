import Glibc

/// A whole memory file mapped shared and writable into the process: its bytes are the file's
/// pages, so what is stored through it is the file's contents at once (for `sendfile` too).
/// Pages are taken only where it is written. Unmapped when the last reference goes.
final class SharedMapping: @unchecked Sendable {
    /// Larger files are not mapped (a process has 128 TiB of address space in all): their
    /// writes go through the file.
    static let largestSize: UInt64 = 1 << 40

    let bytes: UnsafeMutableRawBufferPointer

    /// Maps the `size` bytes of `fd`; nil if the file is too large or the mapping fails.
    init?(fd: Int32, size: UInt64) {
        guard size > 0, size <= Self.largestSize else { return nil }
        let start = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
        guard let start, start != UnsafeMutableRawPointer(bitPattern: -1) else { return nil }
        // Dumping it would read every page of a sparse disk, holes included.
        _ = madvise(start, Int(size), MADV_DONTDUMP)
        bytes = UnsafeMutableRawBufferPointer(start: start, count: Int(size))
    }

    deinit { _ = munmap(bytes.baseAddress, bytes.count) }

    /// The bytes of [offset, offset+length), which the caller has checked lie in the file.
    func range(offset: UInt64, length: UInt32) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: bytes[Int(offset)..<Int(offset) + Int(length)])
    }
}
