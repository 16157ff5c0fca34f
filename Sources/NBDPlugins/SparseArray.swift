import Glibc
import NBDServer
import NBDProtocol

/// Sparse memory of up to 2^63 bytes in 32 KiB pages allocated on first write. Holes read as
/// zeros; zeroing whole pages frees them. Reads and writes to existing pages run in parallel
/// under a shared lock; allocating or freeing pages takes it exclusively. Pages come from a
/// `PagePool`, used only under the exclusive lock.
final class SparseArray: @unchecked Sendable {
    static let pageSize = 32 * 1024
    private var pages: [UInt64: UnsafeMutableRawPointer] = [:]
    private let pool = PagePool(pageSize: SparseArray.pageSize)
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>
    /// One page of zeros that holes are lent from; never written after `init`.
    private let zeros: UnsafeMutableRawPointer

    init() {
        lock = .allocate(capacity: 1)
        pthread_rwlock_init(lock, nil)
        zeros = .allocate(byteCount: Self.pageSize, alignment: 4096)
        memset(zeros, 0, Self.pageSize)
    }

    deinit {
        zeros.deallocate()
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    /// Calls `body` for each page-sized piece of [offset, offset+count): page index, offset within
    /// the page, and the piece's offset within the request and length.
    @inline(__always)
    private func forEachPiece<E: Error>(offset: UInt64, count: Int, _ body: (UInt64, Int, Int, Int) throws(E) -> Void) throws(E) {
        var done = 0
        while done < count {
            let position = offset + UInt64(done)
            let index = position / UInt64(Self.pageSize)
            let inPage = Int(position % UInt64(Self.pageSize))
            let n = min(Self.pageSize - inPage, count - done)
            try body(index, inPage, done, n)
            done += n
        }
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        forEachPiece(offset: offset, count: buffer.count) { index, inPage, at, n in
            if let page = pages[index] {
                (buffer.baseAddress! + at).copyMemory(from: page + inPage, byteCount: n)
            } else {
                memset(buffer.baseAddress! + at, 0, n)
            }
        }
    }

    /// Calls `piece` with each part of [offset, offset+count) in order (holes as zeros), then
    /// `send`, under the shared lock: no page is freed meanwhile, though writes may change bytes.
    func lend(offset: UInt64, count: Int, piece: (UnsafeRawBufferPointer) -> Void, then send: () -> Void) {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        forEachPiece(offset: offset, count: count) { index, inPage, _, n in
            piece(UnsafeRawBufferPointer(start: (pages[index] ?? zeros) + inPage, count: n))
        }
        send()
    }

    func write(_ buffer: UnsafeRawBufferPointer, offset: UInt64) throws(BackendError) {
        pthread_rwlock_rdlock(lock)
        var missing = false
        forEachPiece(offset: offset, count: buffer.count) { index, inPage, at, n in
            if let page = pages[index] {
                (page + inPage).copyMemory(from: buffer.baseAddress! + at, byteCount: n)
            } else {
                missing = true
            }
        }
        pthread_rwlock_unlock(lock)
        guard missing else { return }
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        try forEachPiece(offset: offset, count: buffer.count) { (index, inPage, at, n) throws(BackendError) in
            let page: UnsafeMutableRawPointer
            if let existing = pages[index] {
                page = existing
            } else {
                page = try pool.take()
                pages[index] = page
            }
            (page + inPage).copyMemory(from: buffer.baseAddress! + at, byteCount: n)
        }
    }

    /// Stores `count` bytes at `offset` from `payload`, received straight into the pages: under
    /// the shared lock as much as has arrived, then, with no lock held, waiting for more. Missing
    /// pages are allocated first. The bytes land as they arrive, so requests for the same bytes
    /// that run meanwhile may interleave with it (as NBD allows for requests in flight together);
    /// a page that one of them frees has the rest of its bytes dropped, never stored elsewhere.
    /// Consumes the whole payload unless it throws a transport error; throws `BackendError` (no
    /// memory) after that.
    func receive(offset: UInt64, count: Int, from payload: any WritePayload) throws {
        var failure: BackendError?
        do { try allocate(offset: offset, count: count) } catch { failure = error }
        try withUnsafeTemporaryAllocation(of: UnsafeMutableRawBufferPointer.self, capacity: Self.receivePieces) { pieces in
            var done = 0
            while done < count {
                var wanted = 0
                var got = 0
                pthread_rwlock_rdlock(lock)
                do {
                    defer { pthread_rwlock_unlock(lock) }
                    // The pages from `done` on, up to the first one missing.
                    var listed = 0
                    while listed < pieces.count && done + wanted < count && failure == nil {
                        let position = offset + UInt64(done + wanted)
                        guard let page = pages[position / UInt64(Self.pageSize)] else { break }
                        let inPage = Int(position % UInt64(Self.pageSize))
                        let n = min(Self.pageSize - inPage, count - done - wanted)
                        pieces[listed] = UnsafeMutableRawBufferPointer(start: page + inPage, count: n)
                        listed += 1
                        wanted += n
                    }
                    if listed > 0 {
                        got = try payload.receiveAvailable(into: UnsafeBufferPointer(rebasing: pieces[..<listed]))
                    } else {
                        let position = offset + UInt64(done)
                        wanted = min(Self.pageSize - Int(position % UInt64(Self.pageSize)), count - done)
                        got = try payload.discardAvailable(upTo: wanted)
                    }
                }
                done += got
                if got < wanted { try payload.waitForMore() }
            }
        }
        if let failure { throw failure }
    }

    /// How many pages one receive fills at most (2 MiB).
    private static let receivePieces = 64

    /// Gives every page that [offset, offset+count) touches memory, zero-filled where new.
    private func allocate(offset: UInt64, count: Int) throws(BackendError) {
        pthread_rwlock_rdlock(lock)
        var missing = false
        forEachPiece(offset: offset, count: count) { index, _, _, _ in
            if pages[index] == nil { missing = true }
        }
        pthread_rwlock_unlock(lock)
        guard missing else { return }
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        try forEachPiece(offset: offset, count: count) { (index, _, _, _) throws(BackendError) in
            if pages[index] == nil { pages[index] = try pool.take() }
        }
    }

    /// Makes the range read as zeros, freeing every page it covers whole.
    func zero(offset: UInt64, count: Int) {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        forEachPiece(offset: offset, count: count) { index, inPage, _, n in
            guard let page = pages[index] else { return }
            if n == Self.pageSize {
                pool.give(page)
                pages[index] = nil
            } else {
                memset(page + inPage, 0, n)
            }
        }
    }

    /// Allocated pages are data; missing pages are holes that read as zeros.
    func extents(offset: UInt64, count: Int, reqOne: Bool) -> [Extent] {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        var result: [Extent] = []
        var done = 0
        while done < count {
            let position = offset + UInt64(done)
            let index = position / UInt64(Self.pageSize)
            let n = min(Self.pageSize - Int(position % UInt64(Self.pageSize)), count - done)
            let flags: AllocationFlags = pages[index] == nil ? [.hole, .zero] : []
            if let last = result.last, last.flags == flags {
                result[result.count - 1].length += UInt64(n)
            } else {
                if reqOne && !result.isEmpty { break }
                result.append(Extent(length: UInt64(n), flags: flags))
            }
            done += n
        }
        return result
    }
}
