import Glibc
import CNBDShim

/// The command of `--run`: started once the server listens, with the connection details
/// set as shell variables, and waited for by the accept loop.
public struct CaptiveCommand: Sendable {
    public let command: String

    public init(command: String) { self.command = command }

    /// The shell script that sets `$uri $nbd $port $unixsocket $exportname $tls` (as shell
    /// variables, not exported, as nbdkit does) and then runs the command.
    public func script(listeners: Listeners, exportName: String, tls: Int?) -> String {
        let uri = NBDURI.make(unixPath: listeners.unixPath, port: listeners.port, exportName: exportName,
                              tlsRequired: tls == 2, vsock: listeners.isVSock)
        var s = ""
        s += "uri=\(NBDURI.shellQuote(uri))\n"
        s += "nbd=\(NBDURI.shellQuote(uri))\n"
        s += "port=\(NBDURI.shellQuote(listeners.port.map(String.init) ?? ""))\n"
        s += "unixsocket=\(NBDURI.shellQuote(listeners.unixPath ?? ""))\n"
        s += "exportname=\(NBDURI.shellQuote(exportName))\n"
        if let tls { s += "tls=\(tls)\n" }
        s += command
        s += "\n"
        return s
    }

    /// Starts `/bin/sh -c script` with the server's environment and default signal handling,
    /// in a process group of its own so that the whole command can be signalled at once. When
    /// standard input is nbdkit's controlling terminal, the command's group is given it whenever
    /// nbdkit has it (now, if nbdkit runs in the terminal's foreground; else once a shell brings
    /// nbdkit there: see `CaptiveProcess.followIfStopped`), as a shell gives it to a job, so it
    /// can read from it and gets the terminal's Ctrl-C itself; `takeTerminal: false` (for
    /// helper scripts) leaves the terminal where it is.
    public static func spawn(script: String, takeTerminal: Bool = true) throws(SystemError) -> CaptiveProcess {
        let terminal: Int32? = takeTerminal && isatty(0) != 0 && tcgetpgrp(0) != -1 ? 0 : nil
        let foreground = terminal != nil && tcgetpgrp(0) == getpgrp()
        var pid: pid_t = 0
        let r = CNBDShim_spawn_shell(script, &pid, environ, foreground ? 0 : -1)
        if r != 0 { throw SystemError("posix_spawn: /bin/sh", errno: r) }
        return CaptiveProcess(pid: pid, terminal: terminal)
    }
}

/// The watcher of a `--run` command: a small shell in the command's process group that ends
/// the whole group (SIGKILL) if nbdkit dies without doing so, as when SIGKILL is sent to
/// nbdkit's own process group (by `timeout -s KILL`, say), which the command, in a group of its
/// own, would otherwise outlive. It reads lines from a pipe of which nbdkit alone holds the
/// other end: end of file means nbdkit is gone; an empty line, that nbdkit is exiting by its
/// own doing; a signal number, that nbdkit passes that signal on to the group (then SIGCONT),
/// which nbdkit can't do itself once it has dropped privileges with -u (the command keeps
/// them, as under nbdkit). It ignores the signals a group gets from the terminal or from
/// nbdkit, which are the command's to answer. Before ending the group it removes the private
/// directory of `-U -` and its socket, which nbdkit would have removed.
enum CaptiveWatch {
    static let script = "trap '' INT QUIT HUP TERM TSTP TTIN TTOU; "
        + "while read -r line <&3; do [ -z \"$line\" ] && exit 0; kill -\"$line\" 0; kill -CONT 0; done; "
        + "if [ -n \"$1\" ]; then rm -f -- \"$1/socket\"; rmdir -- \"$1\"; fi; kill -s KILL 0"

    /// Starts a watcher in process group `group` (removing `temporaryDirectory` if nbdkit
    /// dies); returns its pid and nbdkit's end of the pipe, or nil if it can't be started.
    static func start(group: pid_t, temporaryDirectory: String?) -> (pid: pid_t, pipe: Int32)? {
        var fds: [Int32] = [-1, -1]
        guard CNBDShim_pipe_cloexec(&fds) == 0 else { return nil }
        var pid: pid_t = 0
        let r = CNBDShim_spawn_watcher(script, temporaryDirectory ?? "", fds[0], group, &pid)
        _ = close(fds[0])
        guard r == 0 else {
            _ = close(fds[1])
            return nil
        }
        return (pid, fds[1])
    }
}

/// The running `--run` command.
public struct CaptiveProcess: Sendable {
    public let pid: pid_t
    /// The terminal handed to the command's process group, to take back at the end.
    let terminal: Int32?
    /// The command's `CaptiveWatch` process and nbdkit's end of its pipe, once started.
    private(set) var watcher: (pid: pid_t, pipe: Int32)? = nil

    init(pid: pid_t, terminal: Int32?) {
        self.pid = pid
        self.terminal = terminal
    }

    /// Starts the command's watcher, while nbdkit still has the privileges the command runs
    /// with (before -u), so that the watcher can end the command's group. Without one, only a
    /// signal nbdkit can't catch leaves the command behind.
    public mutating func startWatcher(temporaryDirectory: String?) {
        if watcher == nil { watcher = CaptiveWatch.start(group: pid, temporaryDirectory: temporaryDirectory) }
    }

    /// Stops the watcher, before nbdkit exits by its own doing (the command's group stays as
    /// the exit path leaves it): it ends by itself once it has read the line, reaped here if
    /// it already has, else by init once nbdkit is gone. (Waiting for it added a shell's start
    /// and exit to every --run: captive start-up took 1.07 times nbdkit's time, now 0.92.)
    /// Call once.
    public func dismissWatcher() {
        guard let watcher else { return }
        var line = UInt8(ascii: "\n")
        _ = write(watcher.pipe, &line, 1)
        _ = close(watcher.pipe)
        var status: Int32 = 0
        _ = waitpid(watcher.pid, &status, WNOHANG)
    }

    /// Sends `signal` to the command's whole process group, then SIGCONT, so that a group
    /// stopped at the terminal (Ctrl-Z) gets it too; through the watcher where nbdkit may no
    /// longer signal the group itself (after -u).
    public func signal(_ signal: Int32) {
        if kill(-pid, signal) == -1, CNBDShim_errno() == EPERM, let watcher {
            let line = Array("\(signal)\n".utf8)
            _ = line.withUnsafeBytes { write(watcher.pipe, $0.baseAddress, $0.count) }
        }
        _ = kill(-pid, SIGCONT)
    }

    /// Whether wait status `status` says the command stopped, and if so follows it as one
    /// job with nbdkit, as if it were in nbdkit's process group (as nbdkit's command is):
    /// - stopped while nbdkit has the terminal (nbdkit was brought to the foreground after
    ///   `bg`, or after starting in the background, and the command then read the terminal):
    ///   the terminal goes to the command, which continues;
    /// - else (Ctrl-Z in the command's group, or the command read the terminal while nbdkit
    ///   ran in the background): nbdkit takes the terminal back from the command and stops
    ///   its own whole process group, so the shell sees its job stopped (also through a
    ///   `sh -c` that ran nbdkit); once continued (`fg`, `bg`) it gives the terminal to the
    ///   command if nbdkit has it, and continues the command.
    /// Without a controlling terminal on standard input a command stopped is left stopped.
    public func followIfStopped(_ status: Int32) -> Bool {
        guard CNBDShim_wifstopped(status) != 0 else { return false }
        guard let terminal, tcgetpgrp(terminal) != -1 else { return true }
        if tcgetpgrp(terminal) != getpgrp() {
            restoreTerminal()
            _ = kill(0, SIGSTOP)
        }
        if tcgetpgrp(terminal) == getpgrp() { Self.give(terminal, to: pid) }
        _ = kill(-pid, SIGCONT)
        return true
    }

    /// Waits for the command to end (following it when it stops); returns its wait status.
    public func wait() -> Int32 {
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WUNTRACED)
            if r == -1 && CNBDShim_errno() == EINTR { continue }
            if r == pid && followIfStopped(status) { continue }
            return status
        }
    }

    /// Waits for the command to end, passing each terminating signal nbdkit receives meanwhile
    /// on to the command's process group; returns its wait status.
    public func wait(forwarding signals: SignalSource) -> Int32 {
        var pfd = pollfd(fd: signals.fd.raw, events: Int16(POLLIN), revents: 0)
        while true {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG | WUNTRACED)
            if r == pid && followIfStopped(status) { continue }
            if r == pid || (r == -1 && CNBDShim_errno() == ECHILD) { return status }
            // SIGCHLD stays pending in the signalfd, so an exit after waitpid still wakes the poll.
            _ = poll(&pfd, 1, -1)
            while let sig = signals.next() { if sig != SIGCHLD { signal(sig) } }
        }
    }

    /// Gives the terminal back to nbdkit's process group, where the command's group has it (not
    /// from a shell that has it while nbdkit runs in the background after `bg`).
    public func restoreTerminal() {
        guard let terminal, tcgetpgrp(terminal) == pid else { return }
        Self.give(terminal, to: getpgrp())
    }

    /// Makes `group` the terminal's foreground process group (SIGTTOU ignored meanwhile, as
    /// nbdkit may be in the background when it does).
    private static func give(_ terminal: Int32, to group: pid_t) {
        let old = Glibc.signal(SIGTTOU, SIG_IGN)
        _ = tcsetpgrp(terminal, group)
        _ = Glibc.signal(SIGTTOU, old)
    }
}

/// How a child process ended, as a shell reports it: its exit status, or 128+N for signal N.
public func shellStatus(_ waitStatus: Int32) -> (status: Int32, signal: Int32?) {
    if CNBDShim_wifexited(waitStatus) != 0 { return (CNBDShim_wexitstatus(waitStatus), nil) }
    if CNBDShim_wifsignaled(waitStatus) != 0 {
        let sig = CNBDShim_wtermsig(waitStatus)
        return (128 + sig, sig)
    }
    return (1, nil)
}
