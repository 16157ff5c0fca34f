import Glibc
import NBDServer

/// Zero-filled pages of `pageSize` bytes carved from anonymous mappings of `slabSize` bytes.
/// A page is made resident when it is taken, with one `MADV_POPULATE_WRITE` call instead of a
/// page fault for every 4 KiB (a first write into a memory disk spends most of its time in those
/// faults); a page given back is returned to the kernel with `MADV_DONTNEED`, so it is zero again
/// when it is next taken. Not thread-safe: the owner serialises `take` and `give`.
final class PagePool {
    let pageSize: Int
    let slabSize: Int
    private var slabs: [UnsafeMutableRawPointer] = []
    /// Pages of the newest slab not handed out yet start at `unused`.
    private var unused: UnsafeMutableRawPointer?
    private var unusedCount = 0
    private var returned: [UnsafeMutableRawPointer] = []

    init(pageSize: Int, pagesPerSlab: Int = 64) {
        self.pageSize = pageSize
        self.slabSize = pageSize * pagesPerSlab
    }

    deinit {
        for slab in slabs { munmap(slab, slabSize) }
    }

    /// A resident page whose bytes are all zero.
    func take() throws(BackendError) -> UnsafeMutableRawPointer {
        let page: UnsafeMutableRawPointer
        if let recycled = returned.popLast() {
            page = recycled
        } else {
            if unusedCount == 0 { try addSlab() }
            page = unused!
            unused = page + pageSize
            unusedCount -= 1
        }
        // Only a hint: on a kernel without it (before 5.14) the page faults in as it is written.
        _ = madvise(page, pageSize, Self.populateWrite)
        return page
    }

    /// Gives `page` (from `take`) back; its memory goes back to the kernel.
    func give(_ page: UnsafeMutableRawPointer) {
        _ = madvise(page, pageSize, MADV_DONTNEED)
        returned.append(page)
    }

    private func addSlab() throws(BackendError) {
        guard let slab = mmap(nil, slabSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              slab != MAP_FAILED else {
            throw BackendError(SystemError("mmap"))
        }
        slabs.append(slab)
        unused = slab
        unusedCount = slabSize / pageSize
    }

    /// Linux's MADV_POPULATE_WRITE (5.14), which older C headers do not define.
    private static let populateWrite: Int32 = 23
}
