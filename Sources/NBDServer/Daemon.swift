import Glibc
import CNBDShim

/// Background mode and the pid file.
public enum Daemon {
    /// Opens /dev/null on each standard descriptor (0, 1, 2) that is closed, so that none of
    /// the descriptors the server opens later takes one of those numbers: a signalfd on 0 was
    /// replaced by /dev/null when the server went into the background (which then spun on it
    /// and no longer heard SIGTERM), and a socket on 2 would receive the log. Call first.
    /// Returns the descriptors that were closed.
    @discardableResult
    public static func openMissingStandardStreams() -> [Int32] {
        let closed = (0...2).filter { fcntl($0, F_GETFD) == -1 }
        // Each takes the lowest free number: the next closed one, the lower ones being open by now.
        for _ in closed { _ = open("/dev/null", O_RDWR) }
        return closed
    }

    /// Makes each of the standard descriptors `fds` refer to /dev/null (left as they are if it
    /// can't be opened).
    static func putOnDevNull(_ fds: [Int32]) {
        let null = open("/dev/null", O_RDWR)
        guard null >= 0 else { return }
        for fd in fds { _ = dup2(null, fd) }
        if null > 2 { _ = close(null) }
    }

    /// Forks into the background. The child, which returns, starts a new session with its
    /// working directory at /. The parent waits until the child calls `ready` on what this
    /// returns and exits 0, or exits with the child's status if the child ends first (a
    /// start-up error, printed on the standard error they share until then). So when the
    /// command that started nbdkit returns 0, the pid file is written and the server accepts
    /// connections (nbdkit's parent exits at once). Call only while the process has a single
    /// thread.
    public static func detach() throws(SystemError) -> DaemonReadiness {
        var fds: [Int32] = [-1, -1]
        try syscall("pipe2") { CNBDShim_pipe_cloexec(&fds) }
        let pid = try syscall("fork") { fork() }
        if pid > 0 {
            // Interruptible while it waits, with the signals' default actions (the server
            // blocks them for its signalfd): Ctrl-C or timeout's SIGTERM end this process, and
            // the server, in a session of its own, carries on as it would have.
            var none = sigset_t()
            sigemptyset(&none)
            pthread_sigmask(SIG_SETMASK, &none, nil)
            _ = close(fds[1])
            var byte: UInt8 = 0
            var n = 0
            repeat { n = read(fds[0], &byte, 1) } while n == -1 && CNBDShim_errno() == EINTR
            if n == 1 { _exit(0) }
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && CNBDShim_errno() == EINTR {}
            // Exited: its status; killed by a signal: 1.
            _exit(CNBDShim_wifexited(status) != 0 ? CNBDShim_wexitstatus(status) : 1)
        }
        _ = close(fds[0])
        _ = setsid()
        _ = chdir("/")
        // Standard input and output at once, as nbdkit (a process started while getting ready
        // must not hold the caller's); standard error once ready, so that a start-up error
        // still reaches the caller.
        putOnDevNull([0, 1])
        return DaemonReadiness(fd: fds[1])
    }

    /// The background server's word to its waiting parent that it is ready.
    public struct DaemonReadiness {
        let fd: Int32

        /// Puts standard error on /dev/null (unless `keepStderr`, for `-v`) and lets the parent
        /// exit 0.
        public func ready(keepStderr: Bool) {
            if !keepStderr { Daemon.putOnDevNull([2]) }
            var byte: UInt8 = 1
            _ = write(fd, &byte, 1)
            _ = close(fd)
        }
    }

    /// Writes this process's id and a newline to `path` with one write, opening it in place as
    /// nbdkit does: a file is created or truncated, and a device or a symlink's target is
    /// written through, never replaced. (A pid file made beforehand also works after `-u`, in a
    /// directory only root may write to.)
    public static func writePIDFile(_ path: String) throws(SystemError) {
        let fd = try syscall(path) { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOCTTY | O_CLOEXEC, 0o644) }
        defer { _ = close(fd) }
        var text = "\(getpid())\n"
        let n = text.withUTF8 { write(fd, $0.baseAddress, $0.count) }
        if n < 0 { throw SystemError("write: \(path)") }
    }

    /// Removes the pid file at exit, only where `path` itself is still a regular file that
    /// holds this process's id: a device, a symlink, or a file rewritten since, stays.
    public static func removePIDFile(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_size < 64 else { return }
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return }
        var bytes = [UInt8](repeating: 0, count: 64)
        let n = read(fd, &bytes, bytes.count)
        _ = close(fd)
        guard n > 0, bytes[0..<n].elementsEqual("\(getpid())\n".utf8) else { return }
        _ = unlink(path)
    }
}
