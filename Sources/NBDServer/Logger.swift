import Glibc
import Synchronization
import CNBDShim

/// Where log lines go (`--log`).
public enum LogDestination: String, Sendable {
    case stderr, syslog, null
}

/// Writes nbdkit-style log lines: `nbdkit: error: ...` to the `--log` destination and, with
/// `-v`, `nbdkit: debug: ...` to stderr.
/// Each line is written with one write(2), so lines from different threads never interleave.
/// In the system log a line carries no level word (its priority says it), as nbdkit's.
public struct Logger: Sendable {
    /// The `--log` destination; nil for nbdkit's default without it: standard error until the
    /// server has gone into the background (`movedToBackground`), the system log from then on.
    public let chosen: LogDestination?
    public var verbose: Bool
    /// Shared by every copy, so that one call to `movedToBackground` redirects them all.
    private let backgroundMark = BackgroundMark()

    private final class BackgroundMark: Sendable {
        let isSet = Atomic<Bool>(false)
    }

    public init(destination: LogDestination? = .stderr, verbose: Bool = false) {
        self.chosen = destination
        self.verbose = verbose
    }

    /// Where lines go now.
    public var destination: LogDestination {
        chosen ?? (backgroundMark.isSet.load(ordering: .relaxed) ? .syslog : .stderr)
    }

    /// The server has gone into the background, where its standard error is /dev/null: from
    /// now on, without `--log`, this logger and all its copies write to the system log.
    public func movedToBackground() {
        backgroundMark.isSet.store(true, ordering: .relaxed)
    }

    public func error(_ message: String) { emit(level: "error", priority: LOG_ERR, message) }
    /// An error about one connection, labelled as nbdkit labels it: `nbdkit: memory[1]: error: ...`.
    public func error(in label: String, _ message: String) { emit(label: label, level: "error", priority: LOG_ERR, message) }
    public func warning(_ message: String) { emit(level: "warning", priority: LOG_WARNING, message) }

    /// A debug line, written only with `-v`, and always to stderr whatever `--log` says (as
    /// nbdkit's debug messages).
    public func debug(_ message: @autoclosure () -> String) {
        if verbose { raw("nbdkit: debug: \(message())\n") }
    }
    /// A debug line about one connection, labelled as nbdkit's: `nbdkit: memory[1]: debug: ...`.
    public func debug(in label: String, _ message: @autoclosure () -> String) {
        if verbose { raw("nbdkit: \(label): debug: \(message())\n") }
    }

    /// A line with no level, as nbdkit prints some (`nbdkit: MESSAGE`).
    public func plain(_ message: String) {
        switch destination {
        case .null: return
        case .syslog: CNBDShim_syslog(LOG_NOTICE, message)
        case .stderr: raw("nbdkit: \(message)\n")
        }
    }

    private func emit(label: String? = nil, level: String, priority: Int32, _ message: String) {
        let prefix = label.map { "\($0): " } ?? ""
        switch destination {
        case .null:
            return
        case .syslog:
            CNBDShim_syslog(priority, "\(prefix)\(message)")
        case .stderr:
            raw("nbdkit: \(prefix)\(level): \(message)\n")
        }
    }

    /// Writes `text` to stderr with as few write(2) calls as possible.
    public func raw(_ text: String) {
            var line = text
            line.withUTF8 { b in
                var off = 0
                while off < b.count {
                    let n = write(2, b.baseAddress! + off, b.count - off)
                    if n <= 0 { if n < 0 && CNBDShim_errno() == EINTR { continue }; return }
                    off += n
                }
            }
    }
}
