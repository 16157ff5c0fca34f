import Glibc
import CNBDShim
import NBDServer
import NBDProtocol

/// One connection's descriptor on the served file. (Unchecked: `splicePipe` is used only by
/// `receiveWrite`, which runs on the thread that reads the connection's requests.)
final class FileConnection: BackendConnection, @unchecked Sendable {
    private let fd: Int32
    private let isBlockDevice: Bool
    /// What the descriptor refers to, checked after opening (the name may have changed since a stat).
    let isRegularOrBlockDevice: Bool
    private let readonly: Bool
    private let path: String
    /// The file lives in memory (tmpfs or ramfs): no call waits for a disk.
    private let inMemory: Bool
    /// The memory plugin's disk, and its allocator: see `init(descriptor:name:readonly:memoryDisk:)`.
    private let memoryDisk: MemoryAllocator?
    private var isMemoryDisk: Bool { memoryDisk != nil }
    /// A sparse memory disk's pages that read as zeros; nil for other files.
    private let zeroPages: ZeroPages?
    /// The pipe that `receiveWrite` moves payloads through (read end, write end), made at the
    /// first such write; empty between calls.
    private var splicePipe: SplicePipe?
    /// A memory disk's file mapped whole, when it may be: writes are stored through it.
    private let mapping: SharedMapping?
    /// Every write, whatever its size, is stored through `mapping` (which locks each page it
    /// touches, under `--swap`); false without a mapping.
    private let mappingTakesAllWrites: Bool
    /// The file plugin's `cache=` and `fadvise=`.
    private let caching: FileCaching

    /// `path` opened read-write, or read-only if asked or if that is all it allows, with its
    /// access pattern declared as `caching.advice`.
    convenience init(path: String, readonly: Bool, caching: FileCaching = FileCaching()) throws {
        var fd = Glibc.open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        var opened = readonly
        if fd < 0 && !readonly {
            // The export may still be served read-only, as nbdkit does.
            fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            opened = true
        }
        guard fd >= 0 else { throw BackendError(SystemError("open: \(path)")) }
        self.init(descriptor: fd, name: path, readonly: opened, memoryDisk: nil, caching: caching)
        _ = posix_fadvise(fd, 0, 0, caching.advice.flag)
    }

    /// Takes ownership of `fd`, named `name` in messages. A memory disk is a sealed memory file
    /// (`CNBDShim_memory_file`): nothing to flush, holes are its zeros, its size never changes,
    /// so it may be written through a `mapping` of it (which a locking allocator requires).
    init(descriptor fd: Int32, name: String, readonly: Bool, memoryDisk: MemoryAllocator?, mapping: SharedMapping? = nil,
         mappingTakesAllWrites: Bool = false, caching: FileCaching = FileCaching()) {
        var st = stat()
        fstat(fd, &st)
        self.fd = fd
        self.mapping = mapping
        self.mappingTakesAllWrites = mappingTakesAllWrites && mapping != nil
        self.caching = caching
        self.path = name
        self.readonly = readonly
        self.memoryDisk = memoryDisk
        self.zeroPages = memoryDisk != nil && memoryDisk?.isWhole == false ? ZeroPages(mapping: mapping) : nil
        self.isBlockDevice = st.st_mode & S_IFMT == S_IFBLK
        self.isRegularOrBlockDevice = st.st_mode & S_IFMT == S_IFBLK || st.st_mode & S_IFMT == S_IFREG
        self.inMemory = memoryDisk != nil || st.st_mode & S_IFMT == S_IFREG && CNBDShim_file_system_in_memory(fd) == 1
    }

    /// A regular file in tmpfs or ramfs (such as /dev/shm) never waits for a disk.
    var servesWithoutBlocking: Bool { inMemory }

    func size() throws -> UInt64 {
        if isBlockDevice {
            let n = CNBDShim_block_device_size(fd)
            guard n >= 0 else { throw BackendError(SystemError("ioctl BLKGETSIZE64: \(path)")) }
            return UInt64(n)
        }
        var st = stat()
        do { try syscall("fstat: \(path)") { fstat(fd, &st) } } catch { throw BackendError(error) }
        return UInt64(st.st_size)
    }

    func canWrite() throws -> Bool { !readonly }
    func canFlush() throws -> Bool { true }
    /// As nbdkit: trim is offered on any file or block device, and is advisory (see `trim`).
    func canTrim() throws -> Bool { true }
    func canZero() throws -> Bool { true }
    func canFastZero() throws -> Bool { isMemoryDisk }
    func canFUA() throws -> FUASupport { .native }
    func canMultiConn() throws -> Bool { true }
    func canExtents() throws -> Bool { !isBlockDevice }
    func canCache() throws -> Bool { true }

    func pread(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = Glibc.pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n > 0 { done += n; continue }
            if n == 0 { throw BackendError(.eio, "pread: unexpected end of file: \(path)") }
            if CNBDShim_errno() == EINTR { continue }
            throw BackendError(SystemError("pread: \(path)"))
        }
        if caching.mode == .none { _ = posix_fadvise(fd, off_t(offset), off_t(buffer.count), POSIX_FADV_DONTNEED) }
    }

    /// Under `cache=none`: writes [offset, offset+length) back to the disk and drops it from
    /// the page cache.
    private func dropWritten(offset: UInt64, length: Int) throws {
        guard caching.mode == .none else { return }
        guard CNBDShim_write_back(fd, Int64(offset), Int64(length)) == 0 else {
            throw BackendError(SystemError("sync_file_range: \(path)"))
        }
        _ = posix_fadvise(fd, off_t(offset), off_t(length), POSIX_FADV_DONTNEED)
    }

    /// A regular file can be sent from directly. Its reading starts here, in parallel with other
    /// requests, since the send itself runs holding the connection's write lock. A range past the
    /// end of the file (it shrank while served) is read with `pread` instead, which fails with
    /// EIO before the reply begins rather than after.
    func fileExtent(offset: UInt64, length: UInt32) -> FileExtent? {
        if isMemoryDisk { return FileExtent(fd: fd, offset: offset) }
        // Under cache=none, reads go through pread, which drops what it read.
        guard isRegularOrBlockDevice && !isBlockDevice && caching.mode == .default else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0, offset + UInt64(length) <= UInt64(st.st_size) else { return nil }
        _ = posix_fadvise(fd, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
        return FileExtent(fd: fd, offset: offset)
    }

    func pwrite(_ buffer: UnsafeRawBufferPointer, offset: UInt64, fua: Bool) throws {
        if mappingTakesAllWrites, let mapping {
            // Also what a filter passes on, which never asks for `storage`.
            mapping.rangeForWriting(offset: offset, length: UInt32(buffer.count)).copyMemory(from: buffer)
            return
        }
        var done = 0
        while done < buffer.count {
            let n = Glibc.pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n >= 0 { done += n; continue }
            if CNBDShim_errno() == EINTR { continue }
            throw BackendError(SystemError("pwrite: \(path)"))
        }
        try dropWritten(offset: offset, length: buffer.count)
        if fua { try flush() }
    }

    /// The request was checked to lie within the disk, whose size never changes. Writes of
    /// `storageLimit` or more go to the file instead (`receiveWrite`, by splice): through the
    /// mapping, every page the process has not mapped yet costs a page fault (and a new page is
    /// zeroed before it is filled), which for large writes costs more than splice's one copy
    /// (measured: the first fill of a disk 1.7 times the time, its first rewrite 1.6 times the
    /// CPU).
    func storage(offset: UInt64, length: UInt32) -> UnsafeMutableRawBufferPointer? {
        guard let mapping, length < Self.storageLimit || mappingTakesAllWrites else { return nil }
        return mapping.rangeForWriting(offset: offset, length: length)
    }

    static let storageLimit: UInt32 = 64 * 1024

    /// Large writes to a file in memory are moved from the socket through a pipe into the file
    /// (splice): the kernel copies the data once, into the page cache, where a buffer would
    /// take two copies. (A file on a disk keeps the worker pool's parallel writes instead.)
    var receivesWrites: Bool { inMemory && !mappingTakesAllWrites }

    /// The payload goes into the file as it arrives, piece by piece, so the client's socket
    /// is drained all the while. A client that goes away in the middle of the payload leaves
    /// the part received stored (NBD leaves the data of a write that was never answered
    /// undefined; nbdkit reads every payload whole into a buffer first). Gathering the whole
    /// payload in the pipe before storing it was measured: the copy into the file at the end
    /// left the client's socket undrained long enough to stall the client once per request,
    /// and sequential writes of 256 KiB fell from 2,660 to 1,780 MB/s.
    func receiveWrite(offset: UInt64, length: UInt32, from payload: any WritePayload) throws {
        if payload.splices && splicePipe == nil { splicePipe = SplicePipe() }
        guard payload.splices, let pipe = splicePipe else {
            // A socket other than Unix or TCP (vsock), or no descriptor or pipe buffer to
            // spare: through memory, stored once whole.
            return try receiveWhole(offset: offset, length: Int(length), from: payload)
        }
        var taken = 0
        do {
            // What arrived with the request goes to the file from memory: one copy, where
            // through the pipe it would take two (into the pipe, then into the file).
            let readAhead = payload.takeReadAhead(upTo: Int(length))
            if !readAhead.isEmpty {
                taken = readAhead.count
                try pwrite(readAhead, offset: offset, fua: false)
            }
            while taken < Int(length) {
                let n = try payload.spliceAvailable(upTo: Int(length) - taken, into: pipe.writeEnd)
                if n == 0 {
                    try payload.waitForMore()
                    continue
                }
                let at = offset + UInt64(taken)
                taken += n
                do throws(SystemError) { try pipe.empty(count: n, into: fd, offset: Int64(at), what: "splice: \(path)") } catch {
                    throw BackendError(error)
                }
                try dropWritten(offset: at, length: n)
            }
        } catch let error as BackendError {
            // What the pipe still holds goes with it; the rest of the payload is read and dropped.
            splicePipe = nil
            try payload.discard(Int(length) - taken)
            throw error
        } catch {
            splicePipe = nil
            throw error
        }
    }

    /// Gathers the whole payload in memory, then stores it. Memory that can't be had fails
    /// this write alone (ENOMEM), its payload dropped.
    private func receiveWhole(offset: UInt64, length: Int, from payload: any WritePayload) throws {
        let readAhead = payload.takeReadAhead(upTo: length)
        guard let memory = malloc(length) else {
            try payload.discard(length - readAhead.count)
            throw BackendError(.enomem, "cannot allocate \(length) bytes for the write's data")
        }
        defer { free(memory) }
        let buffer = UnsafeMutableRawBufferPointer(start: memory, count: length)
        buffer.copyMemory(from: readAhead)
        var filled = readAhead.count
        while filled < length {
            let n = try payload.receiveAvailable(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
            if n == 0 { try payload.waitForMore() }
            filled += n
        }
        try pwrite(UnsafeRawBufferPointer(buffer), offset: offset, fua: false)
    }

    func flush() throws {
        if isMemoryDisk { return }
        do { try syscall("fdatasync: \(path)") { fdatasync(fd) } } catch { throw BackendError(error) }
    }

    func trim(offset: UInt64, length: UInt32, fua: Bool) throws {
        if memoryDisk?.locks == true { return try zero(offset: offset, length: length, mayTrim: true, fua: fua, fastZero: false) }
        // Trim is advisory, as in nbdkit: only EIO and EPERM are errors. A filesystem that
        // can't punch holes simply keeps the data, and so does a block device that can't
        // discard (or can't discard a range not aligned to its sectors, EINVAL; ENODEV on
        // kernels before 4.9).
        if CNBDShim_punch_hole(fd, Int64(offset), Int64(length)) == -1 {
            let e = CNBDShim_errno()
            if e == EIO || e == EPERM { throw BackendError(SystemError("fallocate: \(path)", errno: e)) }
        }
        if fua { try flush() }
    }

    func zero(offset: UInt64, length: UInt32, mayTrim: Bool, fua: Bool, fastZero: Bool) throws {
        if memoryDisk?.locks == true, let mapping {
            // Locked memory stays taken: zeros are written into it.
            mapping.range(offset: offset, length: length).initializeMemory(as: UInt8.self, repeating: 0)
            return
        }
        if isMemoryDisk {
            // A hole is the cheapest zero there is, and gives the memory back.
            guard CNBDShim_punch_hole(fd, Int64(offset), Int64(length)) == 0 else {
                throw BackendError(SystemError("fallocate: \(path)"))
            }
            return
        }
        if mayTrim && !isBlockDevice && CNBDShim_punch_hole(fd, Int64(offset), Int64(length)) == 0 {
            if fua { try flush() }
            return
        }
        if CNBDShim_zero_range(fd, Int64(offset), Int64(length)) == 0 {
            if fua { try flush() }
            return
        }
        let e = CNBDShim_errno()
        if e == EOPNOTSUPP || e == ENOSYS || e == ENODEV {
            throw BackendError(.enotsup, "fallocate zero range is not supported on \(path)")
        }
        throw BackendError(SystemError("fallocate: \(path)", errno: e))
    }

    /// SEEK_DATA and SEEK_HOLE can't be trusted in the last pages below 2^63 (the kernel's page
    /// arithmetic overflows there: wrong offsets, or ENXIO where data is): from here on,
    /// everything is reported as data, which is always a safe answer.
    static let seekLimit: off_t = (off_t.max / 4096 - 1) * 4096

    func extents(offset: UInt64, length: UInt32, reqOne: Bool) throws -> [Extent] {
        if memoryDisk?.isWhole == true { return [Extent(length: UInt64(length), flags: [])] }
        let end = off_t(offset) + off_t(length)
        var position = off_t(offset)
        var result: [Extent] = []
        var scanBudget = ZeroPages.scanLimit
        while position < end {
            guard position < Self.seekLimit else {
                result.append(Extent(length: UInt64(end - position), flags: []))
                break
            }
            let searchEnd = min(end, Self.seekLimit)
            var data = lseek(fd, position, 3 /* SEEK_DATA */)
            if data == -1 {
                // ENXIO: no data from here to the end of the file.
                guard CNBDShim_errno() == ENXIO else { throw BackendError(SystemError("lseek: \(path)")) }
                data = searchEnd
            } else if data < position {
                data = position
            }
            if data > position {
                let holeEnd = min(data, searchEnd)
                result.append(Extent(length: UInt64(holeEnd - position), flags: [.hole, .zero]))
                position = holeEnd
                if reqOne || position >= end { break }
                continue
            }
            var hole = lseek(fd, position, 4 /* SEEK_HOLE */)
            if hole == -1 || hole <= position { hole = end }
            if let zeroPages {
                // As nbdkit's memory plugin: allocated pages of zeros read as zeros.
                let scanned = try zeroPages.appendExtents(from: position, to: min(hole, end), into: &result, budget: &scanBudget,
                                                          firstOnly: reqOne) { try pread(into: $0, offset: $1) }
                if !scanned || reqOne { break }
            } else {
                result.append(Extent(length: UInt64(min(hole, end) - position), flags: []))
            }
            position = min(hole, end)
            if reqOne { break }
        }
        return result
    }

    func cache(offset: UInt64, length: UInt32) throws {
        _ = posix_fadvise(fd, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
    }

    func close() {
        splicePipe = nil
        _ = Glibc.close(fd)
    }
}
