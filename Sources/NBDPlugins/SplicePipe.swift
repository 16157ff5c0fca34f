import Glibc
import CNBDShim
import NBDServer

/// A connection's non-blocking pipe (raised to 256 KiB where the limits allow) through which
/// write payloads move from the socket by splice, with no copy into this process. Empty between
/// writes; both ends are closed when it goes.
final class SplicePipe {
    let readEnd: Int32
    let writeEnd: Int32

    /// Nil when no descriptor or pipe buffer is free.
    init?() {
        var fds: [Int32] = [-1, -1]
        guard CNBDShim_splice_pipe(&fds) == 0 else { return nil }
        readEnd = fds[0]
        writeEnd = fds[1]
    }

    deinit {
        _ = close(readEnd)
        _ = close(writeEnd)
    }

    /// Moves the `count` bytes the pipe holds to `fd` at `offset` (ignored where `fd` has no
    /// position, as /dev/null). Throws the failure as `what` (a file that takes nothing: EIO).
    func empty(count: Int, into fd: Int32, offset: Int64, what: @autoclosure () -> String) throws(SystemError) {
        var done = 0
        while done < count {
            let n = CNBDShim_splice_to_file(readEnd, fd, offset + Int64(done), count - done)
            if n > 0 { done += n; continue }
            if n < 0 && CNBDShim_errno() == EINTR { continue }
            throw n == 0 ? SystemError(what(), errno: EIO) : SystemError(what())
        }
    }
}
