import Glibc

/// Background mode and the pid file.
public enum Daemon {
    /// Opens /dev/null on each standard descriptor (0, 1, 2) that is closed, so that none of
    /// the descriptors the server opens later takes one of those numbers: a signalfd on 0 was
    /// replaced by /dev/null when the server went into the background (which then spun on it
    /// and no longer heard SIGTERM), and a socket on 2 would receive the log. Call first.
    public static func openMissingStandardStreams() {
        for fd: Int32 in 0...2 where fcntl(fd, F_GETFD) == -1 {
            // Takes the lowest free number: this one, the lower ones being open by now.
            _ = open("/dev/null", O_RDWR)
        }
    }

    /// Forks into the background: the parent exits 0 at once (the sockets already listen), the
    /// child starts a new session with its standard streams on /dev/null (stderr kept with `-v`)
    /// and its working directory at /. Call only while the process has a single thread.
    public static func detach(keepStderr: Bool) throws(SystemError) {
        let pid = try syscall("fork") { fork() }
        if pid > 0 { _exit(0) }
        _ = setsid()
        _ = chdir("/")
        let null = open("/dev/null", O_RDWR)
        if null >= 0 {
            _ = dup2(null, 0)
            _ = dup2(null, 1)
            if !keepStderr { _ = dup2(null, 2) }
            if null > 2 { _ = close(null) }
        }
    }

    /// Writes this process's id to `path` (replacing any old file) with one write and a rename,
    /// so a reader never sees it half written. Where the directory can't take a new file (after
    /// `-u`, a pid file made beforehand in a directory only root may write to, as for nbdkit,
    /// which opens it in place), the file is rewritten in place instead.
    public static func writePIDFile(_ path: String) throws(SystemError) {
        let temp = path + ".tmp\(getpid())"
        do {
            try writePID(to: temp)
        } catch {
            _ = unlink(temp)
            guard error.errno == EACCES else { throw error }
            try writePID(to: path)
            return
        }
        try syscall("rename: \(path)") { rename(temp, path) }
    }

    /// Writes this process's id, and a newline, over the file at `path` with one write.
    private static func writePID(to path: String) throws(SystemError) {
        let fd = try syscall("open: \(path)") { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
        defer { _ = close(fd) }
        var text = "\(getpid())\n"
        let n = text.withUTF8 { write(fd, $0.baseAddress, $0.count) }
        if n < 0 { throw SystemError("write: \(path)") }
    }
}
