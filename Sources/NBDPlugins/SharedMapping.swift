import Glibc
import CNBDShim
import NBDServer

/// A whole memory file mapped shared and writable into the process: its bytes are the file's
/// pages, so what is stored through it is the file's contents at once (for `sendfile` too).
/// Pages are taken only where it is written. Unmapped when the last reference goes.
final class SharedMapping: @unchecked Sendable {
    /// Larger files are not mapped (a process has 128 TiB of address space in all).
    static let largestSize: UInt64 = 1 << 40

    let bytes: UnsafeMutableRawBufferPointer

    /// Maps the `size` bytes of `fd` where `mayMap(size:)` allows; nil otherwise or if the
    /// mapping fails.
    init?(fd: Int32, size: UInt64) {
        guard Self.mayMap(size: size) else { return nil }
        let start = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
        guard let start, start != UnsafeMutableRawPointer(bitPattern: -1) else { return nil }
        // Dumping it would read every page of a sparse disk, holes included.
        _ = madvise(start, Int(size), MADV_DONTDUMP)
        bytes = UnsafeMutableRawBufferPointer(start: start, count: Int(size))
    }

    /// Maps all `size` bytes of `fd` (more than zero) and locks them into RAM (`mlock`), which
    /// takes memory for every page of the file now. Throws the failing call's error.
    init(lockingAllOf fd: Int32, size: UInt64) throws(SystemError) {
        let start = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let start, start != UnsafeMutableRawPointer(bitPattern: -1) else { throw SystemError("mmap") }
        guard mlock(start, Int(size)) == 0 else {
            let error = SystemError("mlock")
            _ = munmap(start, Int(size))
            throw error
        }
        _ = madvise(start, Int(size), MADV_DONTDUMP)
        bytes = UnsafeMutableRawBufferPointer(start: start, count: Int(size))
    }

    /// Maps the `size` bytes of `fd`, locking each page into RAM when it is first touched
    /// through the mapping and taking none now (`--swap`). Throws a `ConfigError` with the
    /// reason where `mayMap(size:)` refuses or the mapping or the lock fails.
    init(lockingOnFault fd: Int32, size: UInt64) throws {
        guard Self.mayMap(size: size) else { throw ConfigError(Self.mappingConditions) }
        guard let start = CNBDShim_map_locking_on_fault(fd, Int(size)) else {
            throw ConfigError("\(SystemError("mmap or mlock2"))")
        }
        _ = madvise(start, Int(size), MADV_DONTDUMP)
        bytes = UnsafeMutableRawBufferPointer(start: start, count: Int(size))
    }

    deinit { _ = munmap(bytes.baseAddress, bytes.count) }

    /// The bytes of [offset, offset+length), which the caller has checked lie in the file.
    func range(offset: UInt64, length: UInt32) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: bytes[Int(offset)..<Int(offset) + Int(length)])
    }

    /// `range(offset:length:)`, with its pages mapped into the process: those not mapped yet are
    /// faulted in by a read, which also maps the neighbouring pages the file holds (up to 16 at
    /// a time, fault-around), where the write itself would fault each page in alone. (Measured:
    /// 4 KiB random writes over a filled 1 GiB disk took 262,153 page faults, now 16,394.)
    func rangeForWriting(offset: UInt64, length: UInt32) -> UnsafeMutableRawBufferPointer {
        let range = range(offset: offset, length: length)
        CNBDShim_touch_pages(range.baseAddress, range.count)
        return range
    }

    /// Why `mayMap(size:)` may refuse, for messages.
    static let mappingConditions = "it is mapped only when no larger than RAM and 1 TiB, without an address-space limit (ulimit -v) and without strict overcommit"

    /// A file of `size` bytes is mapped only where that costs little more than writing to it:
    /// - no larger than `largestSize` or than the machine's RAM: each 2 MiB of the mapping
    ///   that is written to takes a 4 KiB page table until the mapping goes (a trim does not
    ///   free it), at worst RAM/512 in all;
    /// - not under strict overcommit (`vm.overcommit_memory` 2), where a page that can't be
    ///   had faults with SIGBUS, which kills the server, where a write to the file fails alone
    ///   (nor where the policy cannot be read);
    /// - not under an address-space limit (`ulimit -v`), which the mapping would use up.
    static func mayMap(size: UInt64) -> Bool {
        let ram = UInt64(max(sysconf(Int32(_SC_PHYS_PAGES)), 0)) * UInt64(max(sysconf(Int32(_SC_PAGESIZE)), 0))
        guard size > 0, size <= min(largestSize, ram) else { return false }
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &limit) == 0, limit.rlim_cur == rlim_t.max else { return false }
        return overcommitPolicy().map { $0 != 2 } ?? false
    }

    /// `vm.overcommit_memory` (0 heuristic, 1 always, 2 strict); nil if unreadable.
    private static func overcommitPolicy() -> Int? {
        let fd = open("/proc/sys/vm/overcommit_memory", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var digit: UInt8 = 0
        guard read(fd, &digit, 1) == 1, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) else { return nil }
        return Int(digit - UInt8(ascii: "0"))
    }
}
