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
                              tlsRequired: tls == 2)
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

    /// Starts `/bin/sh -c script` with the server's environment and default signal handling.
    public static func spawn(script: String) throws(SystemError) -> pid_t {
        var pid: pid_t = 0
        let r = CNBDShim_spawn_shell(script, &pid, environ)
        if r != 0 { throw SystemError("posix_spawn: /bin/sh", errno: r) }
        return pid
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
