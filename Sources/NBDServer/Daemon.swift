import Glibc
import CNBDShim

/// Background mode and the pid file.
public enum Daemon {
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

    /// Writes this process's id to `path` (replacing any old file) with one write and a rename.
    public static func writePIDFile(_ path: String) throws(SystemError) {
        let temp = path + ".tmp\(getpid())"
        let fd = try syscall("open: \(temp)") { open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
        var text = "\(getpid())\n"
        let n = text.withUTF8 { write(fd, $0.baseAddress, $0.count) }
        _ = close(fd)
        if n < 0 { _ = unlink(temp); throw SystemError("write: \(temp)") }
        try syscall("rename: \(path)") { rename(temp, path) }
    }
}
