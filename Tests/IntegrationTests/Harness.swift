import Foundation
import XCTest

/// Helpers that run the built `nbdkit` and real NBD clients as processes, with time limits,
/// and clean up after themselves.
enum Harness {
    /// The `nbdkit` built beside this test bundle (never one from PATH).
    static let nbdkit: String = {
        if let override = ProcessInfo.processInfo.environment["NBDKIT_BIN"] { return override }
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return exe.deletingLastPathComponent().appendingPathComponent("nbdkit").path
    }()

    /// PATH with the system's /usr/bin first, so nbdsh finds the system Python with libnbd.
    static let environment: [String: String] = {
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = "/usr/bin:/bin:/usr/sbin:/sbin:" + (env["PATH"] ?? "")
        env["LANG"] = "C.UTF-8"
        return env
    }()

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        /// True if the process ended by a signal (`status` is then the signal number).
        let signalled: Bool
    }

    /// Runs `arguments[0]` with the rest as arguments; kills it after `timeout` seconds.
    @discardableResult
    static func run(_ arguments: [String], timeout: TimeInterval = 60, stdin: Data? = nil,
                    file: StaticString = #filePath, line: UInt = #line) -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: arguments[0].hasPrefix("/") ? arguments[0] : "/usr/bin/env")
        p.arguments = arguments[0].hasPrefix("/") ? Array(arguments.dropFirst()) : arguments
        p.environment = environment
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let input = Pipe()
        p.standardInput = input
        do { try p.run() } catch {
            XCTFail("cannot run \(arguments): \(error)", file: file, line: line)
            return Result(status: -1, stdout: "", stderr: "", signalled: false)
        }
        if let stdin { input.fileHandleForWriting.write(stdin) }
        try? input.fileHandleForWriting.close()
        // Read both pipes on other threads so a chatty process can't block on a full pipe.
        let outData = Box(), errData = Box()
        let group = DispatchGroup()
        for (pipe, box) in [(out, outData), (err, errData)] {
            group.enter()
            DispatchQueue.global().async {
                box.data = pipe.fileHandleForReading.readDataToEndOfFile()
                group.leave()
            }
        }
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(10_000) }
        if p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            XCTFail("\(arguments) timed out after \(timeout)s", file: file, line: line)
        }
        p.waitUntilExit()
        if group.wait(timeout: .now() + 10) == .timedOut {
            XCTFail("\(arguments): output still open after exit (a leaked process holds it)", file: file, line: line)
        }
        return Result(status: p.terminationStatus,
                      stdout: String(decoding: outData.data, as: UTF8.self),
                      stderr: String(decoding: errData.data, as: UTF8.self),
                      signalled: p.terminationReason == .uncaughtSignal)
    }

    /// Runs a shell snippet with `sh -c`.
    @discardableResult
    static func shell(_ script: String, timeout: TimeInterval = 60, file: StaticString = #filePath, line: UInt = #line) -> Result {
        run(["/bin/sh", "-c", script], timeout: timeout, file: file, line: line)
    }

    /// Runs a Python script under nbdsh connected to `uri`; the script's stdout is returned.
    @discardableResult
    static func nbdsh(_ uri: String, _ script: String, timeout: TimeInterval = 60,
                      file: StaticString = #filePath, line: UInt = #line) -> Result {
        let r = run(["/usr/bin/nbdsh", "-u", uri, "-c", script], timeout: timeout, file: file, line: line)
        XCTAssertEqual(r.status, 0, "nbdsh failed:\n\(r.stderr)", file: file, line: line)
        return r
    }

    /// Python for nbdsh: `count` reads of 4 KiB, 20000 bytes and 1 MiB in turn, all in flight at
    /// once, at offsets spread with `stride` over `size` bytes, each checked against `data`.
    static func pythonPipelinedReads(count: Int, stride: Int, size: Int) -> String {
        """
        buffers = []
        for n in range(\(count)):
            length = (4096, 20000, 1 << 20)[n % 3]
            offset = (n * \(stride)) % (\(size) - length)
            buffers.append((offset, length, nbd.Buffer(length)))
            h.aio_pread(buffers[-1][2], offset)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for offset, length, b in buffers:
            assert b.to_bytearray() == data[offset:offset + length], (offset, length)
        """
    }

    /// Python for nbdsh: waits for every request in flight, then checks that a 64 KiB write
    /// running past the end of the `size`-byte export fails with ENOSPC (needs `errno`).
    static let pythonDrainThenLargeWritePastTheEnd = """
        while h.aio_in_flight() > 0:
            h.poll(-1)
        h.set_strict_mode(0)
        try:
            h.pwrite(b'z' * 65536, size - 1000)
            assert False, 'a write past the end succeeded'
        except nbd.Error as e:
            assert e.errnum == errno.ENOSPC, e
        """

    /// Python: `pipes()` counts the pipes the server holds open.
    static func pythonPipeCount(pid: Int32) -> String {
        """
        def pipes():
            n = 0
            for fd in os.listdir('/proc/\(pid)/fd'):
                try:
                    n += os.readlink('/proc/\(pid)/fd/' + fd).startswith('pipe:')
                except FileNotFoundError:
                    pass
            return n
        """
    }

    /// `s` as a single-quoted Python string literal.
    /// The pid a background server wrote to `pidFile`, waiting up to 10 s for it: the parent
    /// exits as soon as the socket listens, and the daemon writes the file after (as nbdkit's).
    static func waitForPID(in pidFile: String) -> Int32? {
        let deadline = Date().addingTimeInterval(10)
        repeat {
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
               let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) { return pid }
            usleep(10_000)
        } while Date() < deadline
        return nil
    }

    static func pythonString(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "\\'") + "'" }

    /// A TCP port on 127.0.0.1 that was free a moment ago.
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    final class Box: @unchecked Sendable { var data = Data() }
}

/// A private temporary directory, removed with everything in it by `remove()`.
final class TemporaryDirectory {
    let path: String
    init() {
        var template = Array((NSTemporaryDirectory() + "/nbdkit-test-XXXXXX").utf8CString)
        path = String(cString: mkdtemp(&template)!)
    }
    func file(_ name: String) -> String { path + "/" + name }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// A running `nbdkit -f` on a private Unix socket. `stop()` sends SIGTERM and waits; the test
/// base class stops every server it started, even when the test fails.
final class ServerProcess {
    let process = Process()
    let socket: String
    let stderrFile: String
    var uri: String { "nbd+unix:///?socket=\(socket)" }
    func uri(export: String) -> String { "nbd+unix:///\(export)?socket=\(socket)" }

    init(_ arguments: [String], in dir: TemporaryDirectory, socketName: String = "sock",
         file: StaticString = #filePath, line: UInt = #line) throws {
        socket = dir.file(socketName)
        stderrFile = dir.file(socketName + ".stderr")
        _ = FileManager.default.createFile(atPath: stderrFile, contents: nil)
        process.executableURL = URL(fileURLWithPath: Harness.nbdkit)
        process.arguments = ["-f", "-U", socket] + arguments
        process.environment = Harness.environment
        process.standardError = FileHandle(forWritingAtPath: stderrFile)
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: socket) {
            guard process.isRunning, Date() < deadline else {
                XCTFail("nbdkit did not start: \(stderr)", file: file, line: line)
                throw CocoaError(.fileNoSuchFile)
            }
            usleep(10_000)
        }
        // The socket's file appears at bind(2), a moment before listen(2): until then a client
        // would be refused.
        while !Self.isListening(socket) {
            guard process.isRunning, Date() < deadline else {
                XCTFail("nbdkit did not listen on \(socket): \(stderr)", file: file, line: line)
                throw CocoaError(.fileNoSuchFile)
            }
            usleep(5_000)
        }
    }

    /// Whether a Unix socket bound to `path` listens (__SO_ACCEPTCON in /proc/net/unix).
    static func isListening(_ path: String) -> Bool {
        guard let table = try? String(contentsOfFile: "/proc/net/unix", encoding: .utf8) else { return false }
        return table.split(separator: "\n").contains { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            return fields.count >= 8 && fields[7] == path && fields[3] == "00010000"
        }
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }
    var stderr: String { (try? String(contentsOfFile: stderrFile, encoding: .utf8)) ?? "" }

    /// SIGTERM, then up to 10 s for a clean exit, then SIGKILL. Returns the exit status.
    @discardableResult
    func stop() -> Int32 {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(10)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

/// Base class: a temporary directory per test and servers that are always stopped.
class IntegrationTestCase: XCTestCase {
    var dir: TemporaryDirectory!
    private var servers: [ServerProcess] = []

    override func setUp() {
        super.setUp()
        dir = TemporaryDirectory()
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: Harness.nbdkit), "no binary at \(Harness.nbdkit)")
    }

    override func tearDown() {
        for s in servers { s.stop() }
        servers = []
        dir.remove()
        super.tearDown()
    }

    /// Starts `nbdkit -f -U SOCKET arguments...` and registers it for clean-up.
    func startServer(_ arguments: [String], socketName: String = "sock",
                     file: StaticString = #filePath, line: UInt = #line) throws -> ServerProcess {
        let s = try ServerProcess(arguments, in: dir, socketName: socketName, file: file, line: line)
        servers.append(s)
        return s
    }

    /// Writes `count` random bytes to a new file in the test directory.
    func randomFile(_ name: String, count: Int) -> String {
        var bytes = [UInt8](repeating: 0, count: count)
        var g = SystemRandomNumberGenerator()
        for i in stride(from: 0, to: count, by: 8) {
            var v = g.next()
            withUnsafeBytes(of: &v) { for j in 0..<min(8, count - i) { bytes[i + j] = $0[j] } }
        }
        let path = dir.file(name)
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    func contents(_ path: String) -> Data { FileManager.default.contents(atPath: path) ?? Data() }
}

/// A background process started with posix_spawn rather than Foundation's Process, for
/// programs that close every inherited descriptor (such as `systemd-socket-activate`): Process
/// takes the closing of its watch socket for the child's exit and then blocks in waitpid.
/// stdin and stdout are /dev/null, stderr goes to `stderrFile`.
final class SpawnedProcess {
    let pid: pid_t
    private var status: Int32? = nil

    init(_ arguments: [String], environment: [String: String], stderrFile: String) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, stderrFile, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var child: pid_t = 0
        let r = posix_spawn(&child, arguments[0], &actions, nil, argv, envp)
        guard r == 0 else { throw POSIXError(POSIXErrorCode(rawValue: r) ?? .EINVAL) }
        pid = child
    }

    /// Reaps the process if it has ended.
    var isRunning: Bool {
        if status != nil { return false }
        var s: Int32 = 0
        if waitpid(pid, &s, WNOHANG) == pid { status = s; return false }
        return true
    }

    /// The exit status, 128+N for signal N; waits up to `seconds`, then SIGKILLs and reports -1.
    func wait(seconds: Double = 10) -> Int32 {
        let deadline = Date().addingTimeInterval(seconds)
        while isRunning && Date() < deadline { usleep(10_000) }
        if isRunning {
            kill(pid, SIGKILL)
            var s: Int32 = 0
            waitpid(pid, &s, 0)
            status = s
            return -1
        }
        let s = status!
        return s & 0x7f == 0 ? (s >> 8) & 0xff : 128 + (s & 0x7f)
    }

    /// SIGKILL and reap, if still running.
    func kill9() {
        if isRunning { kill(pid, SIGKILL); _ = wait() }
    }
}
