import Glibc
import Synchronization
import CNBDShim

/// The accept loop and the lifetime of every connection.
public final class Server: Sendable {
    public let context: ServerContext
    private let live = Mutex<[Int: any Transport]>([:])
    private let nextID = Atomic<Int>(1)

    public let control: ServerControl

    public init(context: ServerContext, control: ServerControl) {
        self.context = context
        self.control = control
    }

    private var logger: Logger { context.logger }

    /// How the accept loop ended.
    public enum Outcome: Sendable {
        /// A signal asked the server to stop.
        case signalled(Int32)
        /// The `--run` command ended with this wait status.
        case commandEnded(Int32)
        /// A filter asked for shutdown (exitlast, exitwhen).
        case requested
    }

    /// Accepts clients on `sockets` until a terminating signal arrives (passed on at once to the
    /// process group of the `captive` command) or the command exits, then shuts the connections
    /// down (see `shutdownConnections`) and returns once every one has closed. A command stopped
    /// at the terminal stops the server with it (`CaptiveProcess.followIfStopped`).
    public func run(sockets: [FileDescriptor], signals: SignalSource, captive: CaptiveProcess?,
                    notifier: ServiceNotifier = ServiceNotifier()) -> Outcome {
        control.onConnectionCountChanged { notifier.status(clients: $0) }
        notifier.ready()
        // Ping the watchdog at least every half of its interval, however busy accepting is.
        let pingEvery = notifier.watchdogInterval.map { max(1, Int64($0 / 2000)) }
        var pollfds = sockets.map { pollfd(fd: $0.raw, events: Int16(POLLIN), revents: 0) }
        pollfds.append(pollfd(fd: control.wakeFD, events: Int16(POLLIN), revents: 0))
        pollfds.append(pollfd(fd: signals.fd.raw, events: Int16(POLLIN), revents: 0))
        var outcome: Outcome? = nil
        var lastPing = MonotonicClock.milliseconds()
        while outcome == nil {
            var timeout: Int32 = -1
            if let pingEvery {
                if MonotonicClock.milliseconds() - lastPing >= pingEvery {
                    notifier.watchdog()
                    lastPing = MonotonicClock.milliseconds()
                }
                timeout = Int32(clamping: max(1, lastPing + pingEvery - MonotonicClock.milliseconds()))
            }
            let n = poll(&pollfds, nfds_t(pollfds.count), timeout)
            if n < 0 {
                if CNBDShim_errno() == EINTR { continue }
                logger.error("poll: \(SystemError("poll"))")
                outcome = .signalled(SIGTERM)
                break
            }
            if pollfds.last!.revents != 0 {
                while let sig = signals.next() {
                    if sig == SIGCHLD {
                        if let captive {
                            var status: Int32 = 0
                            if waitpid(captive.pid, &status, WNOHANG | WUNTRACED) == captive.pid,
                               !captive.followIfStopped(status) {
                                outcome = .commandEnded(status)
                            }
                        }
                    } else {
                        logger.debug("received signal \(sig), shutting down")
                        outcome = .signalled(sig)
                    }
                }
            }
            if outcome == nil && pollfds[sockets.count].revents != 0 {
                logger.debug("shutdown requested")
                outcome = .requested
            }
            guard outcome == nil else { break }
            for i in 0..<sockets.count where pollfds[i].revents != 0 {
                let fd = CNBDShim_accept_cloexec(pollfds[i].fd)
                if fd < 0 {
                    let e = CNBDShim_errno()
                    if e != EINTR && e != EAGAIN && e != ECONNABORTED {
                        logger.error("\(SystemError("accept", errno: e))")
                        // Out of descriptors, or a listener that can't accept: not again at once.
                        usleep(100_000)
                    }
                    continue
                }
                if let rejection = control.rejection {
                    logger.error(rejection)
                    _ = close(fd)
                    continue
                }
                tuneAcceptedSocket(fd)
                startConnection(PlainTransport(socket: fd))
            }
        }
        notifier.stopping()
        // The command first, so that its own clients go away rather than wait out the grace.
        if case .signalled(let sig) = outcome, let captive { captive.signal(sig) }
        shutdownConnections()
        notifier.finish()
        return outcome!
    }

    /// Serves one connection on the calling thread (`-s`). A terminating signal (or a filter's
    /// request) shuts it down meanwhile, as `run` shuts its connections down.
    public func serveSingle(_ transport: any Transport, signals: SignalSource) {
        let id = register(transport)
        var served = [Int32](repeating: -1, count: 2)
        var watcher: JoinableThread? = nil
        do {
            try syscall("pipe") { CNBDShim_pipe_cloexec(&served) }
            let doneFD = served[0]
            watcher = try JoinableThread { [self] in
                var pollfds = [pollfd(fd: doneFD, events: Int16(POLLIN), revents: 0),
                               pollfd(fd: signals.fd.raw, events: Int16(POLLIN), revents: 0),
                               pollfd(fd: control.wakeFD, events: Int16(POLLIN), revents: 0)]
                while true {
                    if poll(&pollfds, 3, -1) < 0 {
                        if CNBDShim_errno() != EINTR {
                            logger.error("poll: \(SystemError("poll"))")
                            usleep(100_000)
                        }
                        continue
                    }
                    if pollfds[0].revents != 0 { return }
                    if pollfds[1].revents != 0 {
                        guard let sig = signals.next() else { continue }
                        if sig == SIGCHLD { continue }
                        logger.debug("received signal \(sig), shutting down")
                    } else {
                        // (A filter's request as the connection closes needs no shutdown.)
                        if live.withLock({ $0.isEmpty }) { return }
                        logger.debug("shutdown requested")
                    }
                    shutdownConnections()
                    return
                }
            }
        } catch {
            // Signals then end the process by their default actions rather than go unread.
            logger.error("cannot watch for signals: \(error)")
            signals.restoreDefaultActions()
        }
        serve(transport, id: id)
        if served[1] >= 0 { _ = close(served[1]) }
        watcher?.join()
        if served[0] >= 0 { _ = close(served[0]) }
    }

    /// Adds a connection to the live table, which shutdown waits to empty.
    private func register(_ transport: any Transport) -> Int {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        live.withLock { $0[id] = transport }
        control.connectionOpened()
        return id
    }

    private func serve(_ transport: any Transport, id: Int) {
        let final: any Transport
        if context.threadModel == .serializeConnections {
            final = context.connectionsLock.withLock { handle(transport, id: id) }
        } else {
            final = handle(transport, id: id)
        }
        live.withLock { $0[id] = nil }
        final.close()
        control.connectionClosed()
    }

    private func startConnection(_ transport: any Transport) {
        let id = register(transport)
        do {
            // Shutdown waits on the live table rather than joining connection threads.
            try JoinableThread { [self] in serve(transport, id: id) }.detach()
        } catch {
            logger.error("cannot start a connection thread: \(error)")
            live.withLock { $0[id] = nil }
            transport.close()
            control.connectionClosed()
        }
    }

    /// Negotiates and serves one connection; returns the transport to close (TLS after STARTTLS).
    private func handle(_ plain: any Transport, id: Int) -> any Transport {
        let label = "\(context.backend.name)[\(id)]"
        logger.debug(in: label, "new connection")
        var handshake = Handshake(server: context, transport: plain, label: label)
        let session: Session
        do {
            guard let s = try handshake.run() else {
                logger.debug(in: label, "client ended negotiation")
                return handshake.transport
            }
            session = s
        } catch TransportError.endOfFile {
            logger.debug(in: label, "client closed the connection during negotiation")
            return handshake.transport
        } catch {
            logger.error(in: label, "negotiation failed: \(error)")
            return handshake.transport
        }
        let transport = handshake.transport
        let transmission = Transmission(server: context, transport: transport, session: session, label: label)
        transmission.serve()
        if let failure = transport.unreportedFailure { logger.error(in: label, "\(failure)") }
        session.backend.close()
        logger.debug(in: label, "connection closed")
        return transport
    }

    /// How long clients in the transmission phase get to disconnect once shutdown begins.
    public static let shutdownGraceMilliseconds: Int64 = 5_000

    /// Shuts down as doc/proto.md asks: clients still negotiating get NBD_REP_ERR_SHUTDOWN for
    /// their next option, clients in the transmission phase get ESHUTDOWN for each request read
    /// from now on, and all get up to `shutdownGraceMilliseconds` to disconnect themselves; then
    /// reading stops, and each connection closes once its requests in flight have their replies.
    /// A connection still open after twice the grace (a client that stopped reading its replies)
    /// is disconnected hard, so shutdown ends, except for `-s` over pipes, which can't be shut
    /// down: a read already waiting there ends only when the client sends or closes (as in
    /// nbdkit). Returns when every connection has closed.
    private func shutdownConnections() {
        let start = MonotonicClock.milliseconds()
        context.shuttingDown.store(true, ordering: .relaxed)
        control.beginShutdown()
        while true {
            let elapsed = MonotonicClock.milliseconds() - start
            let graceOver = elapsed >= Self.shutdownGraceMilliseconds
            let hard = elapsed >= 2 * Self.shutdownGraceMilliseconds
            // Repeated each pass: a connection may have registered since.
            let empty = live.withLock { connections in
                for (_, transport) in connections where graceOver {
                    if hard { transport.disconnect() } else { transport.shutdownReceive() }
                }
                return connections.isEmpty
            }
            if empty { return }
            usleep(5_000)
        }
    }
}
