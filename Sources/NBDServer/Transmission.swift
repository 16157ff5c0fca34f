import Synchronization
import NBDProtocol

/// The transmission phase of one connection. Up to `maxWorkers` threads take turns to read one
/// request (under `readLock`, through a shared read-ahead buffer), serve it in parallel, and
/// write the whole reply with one `send` (under `writeLock`), so replies may complete out of
/// order. A worker is started when a request finds every running worker busy, so one is always
/// free to read the next request. A large write that the backend receives in place (straight
/// into its memory, as it is read) is answered by the reader itself, which then reads on, and so
/// is every request where the backend never waits (served inline). A reader whose reply must
/// wait (for the write lock, or on a plain socket for the client, 100 ms) lets go of the reading
/// first, so the client's next requests are still taken in. On a plain socket the reader polls
/// for input for a short, adaptive while before it blocks (see `ReceiveBuffer`). The locks never
/// spin and never hand over to a waiter: on a busy core one thread goes on reading, serving and
/// replying without a context switch while the client keeps requests coming.
final class Transmission: Sendable {
    let server: ServerContext
    let transport: any Transport
    let session: Session
    let label: String
    private let maxWorkers: Int
    private let readLock = Lock()
    private let writeLock = Lock()
    /// Read-ahead shared by the workers; used only under `readLock`.
    private nonisolated(unsafe) let input: ReceiveBuffer
    /// Replies on their way out; used only under `writeLock`.
    private nonisolated(unsafe) let replies: ReplyBatch
    /// Whether the reader serves every request itself: the backend never waits for long. Its
    /// gathered replies go out before every receive, on any transport.
    private let inline: Bool
    /// Served inline: requests served since the last receive from the transport, and how many
    /// receives in a row followed at most one. Used only under `readLock`.
    private nonisolated(unsafe) var batchSize = 0
    private nonisolated(unsafe) var loneRequests = 0
    /// Served inline, the reader polls for input once this many receives in a row each brought
    /// one request: a client at queue depth 1. With more in flight a batch of replies is on its
    /// way while the client sends more, and polling would only burn the processor.
    private static let loneRequestsToPoll = 1024
    /// Served inline, who sends the reply going out under `writeLock`: the reader, holding
    /// `readLock` (`readerSends`), the reader that gave the reading up because that send
    /// stalled (`readingGivenUp`, see `sendStalled`), or another thread (0). Changed only under
    /// `writeLock`; atomic only to be cheap on every reply.
    private let replySender = Atomic<UInt8>(0)
    private static let readerSends: UInt8 = 1
    private static let readingGivenUp: UInt8 = 2
    /// How long a reply's send may wait, served inline, before the reading goes to another
    /// worker: a client that sends a large write before it reads the reply to a large read
    /// waits for its payload to be taken, while the reply waits for the client.
    static let stalledSendMilliseconds = 100
    private let closed = Atomic<Bool>(false)
    /// The data of the requests in flight: at most two of the largest requests' worth. Nil
    /// where only one request is ever in flight (served inline, or one worker).
    private let budget: RequestBudget?
    private let workers = Atomic<Int>(1)
    private let busy = Atomic<Int>(0)
    private let spawned = Mutex<[JoinableThread]>([])

    init(server: ServerContext, transport: any Transport, session: Session, label: String) {
        self.server = server
        self.transport = transport
        self.session = session
        self.label = label
        self.maxWorkers = server.threadModel >= .parallel ? server.threads : 1
        self.input = ReceiveBuffer(transport, polling: server.pollingAllowance)
        self.inline = server.threadModel != .serializeAllRequests && session.backend.servesWithoutBlocking
        self.replies = ReplyBatch(transport, batching: inline)
        self.budget = inline || maxWorkers == 1 ? nil : RequestBudget(limit: 2 * Int(NBDSize.maxRequest))
        if inline {
            // Gathered replies go out before each receive: one send answers what one receive
            // brought, and nothing waits while the reader does.
            input.beforeReceiving = { [unowned self] in
                // (A receive in the middle of a payload, with nothing served since the last one,
                // says nothing about how many requests the client keeps in flight.)
                if batchSize > 0 { loneRequests = batchSize == 1 ? loneRequests + 1 : 0 }
                batchSize = 0
                // (The lock is held elsewhere only by a worker that gave up the reading while
                // its reply waited to go out: it sent what was gathered before that reply, and
                // sends what is gathered meanwhile when it is done. Waiting for it here could
                // wait for the client, which may be waiting for this receive.)
                guard writeLock.tryLock() else { return }
                defer { writeLock.unlock() }
                // A client that can't take its replies is gone: end quietly, as at end of file.
                guard flushReplies() else { throw TransportError.endOfFile }
            }
            _ = transport.reportStalledSends(after: Self.stalledSendMilliseconds) { [weak self] in self?.sendStalled() }
        }
    }

    /// A reply's send has waited long. Served inline, a reader sending it holds the reading:
    /// it gives it up, so that the client's next requests (a write's payload that the client is
    /// waiting to send) are taken while the send waits. Called under `writeLock`, on the
    /// sending thread.
    private func sendStalled() {
        guard replySender.load(ordering: .relaxed) == Self.readerSends else { return }
        replySender.store(Self.readingGivenUp, ordering: .relaxed)
        giveUpReading()
    }

    /// Served inline, the reader lets go of `readLock` in the middle of a request, counting
    /// itself busy, and a worker is started if none is free to read on.
    private func giveUpReading() {
        readLock.unlock()
        server.logger.debug(in: label, "a reply is waiting to go out: another worker reads on")
        let nowBusy = busy.wrappingAdd(1, ordering: .relaxed).newValue
        if nowBusy >= workers.load(ordering: .relaxed) { spawnWorker() }
    }

    /// Serves requests until the client disconnects or the connection fails, then waits for
    /// every worker to finish its request and reply.
    func serve() {
        workerLoop()
        while let thread = spawned.withLock({ $0.popLast() }) { thread.join() }
    }

    private func workerLoop() {
        let buffer = RequestBuffer()
        reading: while true {
            readLock.lock()
            var more = readRequest(into: buffer)
            // A request that is served inline, or a write received in place (which is done),
            // is answered now, and this thread reads on, instead of handing the read lock to
            // another worker and waking it.
            while more && (inline || buffer.receivedInPlace != nil) {
                batchSize += 1
                let (sent, gaveUpReading) = serveRequest(buffer, holdingReadLock: true)
                if gaveUpReading {
                    // Another worker reads on (see `sendStalled`); this one is free again.
                    busy.wrappingSubtract(1, ordering: .relaxed)
                    if !sent { stop(); return }
                    continue reading
                }
                guard sent else { readLock.unlock(); stop(); return }
                more = readRequest(into: buffer)
            }
            if inline { _ = writeLock.withLock { flushReplies() } }
            readLock.unlock()
            guard more else { giveBack(buffer); return }
            // Someone must always be free to read the next request: a slow request (a long
            // flush) must not hold up the ones the client sends after it.
            let nowBusy = busy.wrappingAdd(1, ordering: .relaxed).newValue
            if nowBusy >= workers.load(ordering: .relaxed) { spawnWorker() }
            let (sent, _) = serveRequest(buffer)
            busy.wrappingSubtract(1, ordering: .relaxed)
            if !sent { stop(); return }
        }
    }

    private func spawnWorker() {
        let count = workers.load(ordering: .relaxed)
        guard count < maxWorkers, !closed.load(ordering: .relaxed) else { return }
        guard workers.compareExchange(expected: count, desired: count + 1, ordering: .relaxed).exchanged else { return }
        do {
            let thread = try JoinableThread { [self] in workerLoop() }
            spawned.withLock { $0.append(thread) }
        } catch {
            workers.wrappingSubtract(1, ordering: .relaxed)
            server.logger.debug(in: label, "could not start a worker: \(error)")
        }
    }

    /// Stops reading new requests; requests in flight still get their replies.
    func stop() {
        closed.store(true, ordering: .relaxed)
        budget?.cancel()
        transport.shutdownReceive()
    }

    /// Returns the request's share of the budget: its reply has been sent, or it won't be served.
    private func giveBack(_ buffer: RequestBuffer) {
        budget?.give(buffer.budgeted)
        buffer.budgeted = 0
    }

    /// Serves one request that was read and replies to it. Returns whether the reply was sent
    /// (false if the client is gone) and, for a caller `holdingReadLock`, whether it gave the
    /// lock up while the reply waited to go out (`sendStalled`).
    private func serveRequest(_ buffer: RequestBuffer, holdingReadLock: Bool = false) -> (sent: Bool, gaveUpReading: Bool) {
        let request = buffer.request
        let outcome: Outcome
        if let invalid = buffer.invalid {
            outcome = .failure(invalid.errno, "invalid request: \(invalid.reason)")
        } else if server.shuttingDown.load(ordering: .relaxed) && buffer.receivedInPlace == nil {
            // (A write received in place before shutdown began is stored already: its real
            // outcome is the answer.)
            outcome = .failure(.eshutdown, "server is shutting down")
        } else if server.threadModel == .serializeAllRequests {
            outcome = server.allRequestsLock.withLock { perform(request, buffer) }
        } else {
            outcome = perform(request, buffer)
        }
        if case .failure(.eshutdown, _) = outcome {
            // The server's own doing, and a client may send many more before it disconnects.
            server.logger.debug(in: label, "\(commandName(request.rawCommand)) refused: the server is shutting down")
        } else if case .failure(.enotsup, let message) = outcome, request.flags.contains(.fastZero) {
            // An answer the client asked for (it then zeroes another way), not a failure: as
            // nbdkit, not an error in the log.
            server.logger.debug(in: label, "\(commandName(request.rawCommand)) with FAST_ZERO refused: \(message)")
        } else if case .failure(let errno, let message) = outcome {
            server.logger.error(in: label, "\(commandName(request.rawCommand)) offset=\(request.offset) count=\(request.length): \(errno.name): \(message)")
        }
        // Served inline, the write lock is busy only while another worker's reply waits to go
        // out, maybe for the client, which may be waiting for its next request to be read: the
        // reader gives the reading up rather than wait for the lock holding it.
        var gaveUpReading = false
        if !(holdingReadLock && writeLock.tryLock()) {
            if holdingReadLock {
                giveUpReading()
                gaveUpReading = true
            }
            writeLock.lock()
        }
        if holdingReadLock && !gaveUpReading { replySender.store(Self.readerSends, ordering: .relaxed) }
        var sent = sendReply(request, outcome, buffer)
        if holdingReadLock {
            if replySender.load(ordering: .relaxed) == Self.readingGivenUp { gaveUpReading = true }
            replySender.store(0, ordering: .relaxed)
        }
        // No longer the reader, whose next receive would send what is gathered.
        if inline && gaveUpReading && sent { sent = flushReplies() }
        writeLock.unlock()
        buffer.releaseLargePayload()
        giveBack(buffer)
        return (sent, gaveUpReading)
    }

    /// Reads one request header and, for a write, its payload into `buffer`. Must hold `readLock`.
    /// Returns false when there are no more requests to serve: the client disconnected or went
    /// away, the stream can't be trusted, or the connection was stopped.
    private func readRequest(into buffer: RequestBuffer) -> Bool {
        guard !closed.load(ordering: .relaxed) else { return false }
        let headerBytes = UnsafeMutableRawBufferPointer(rebasing: buffer.header[0..<NBDSize.requestHeader])
        // Poll for input only while at most one request is in flight: at queue depth 1 its reply
        // is on its way while the client prepares the next request; with more in flight the
        // workers have work for the processor, and input comes often enough without polling.
        // (Served inline: while the last many receives each brought a single request.)
        let mayPoll = inline ? loneRequests >= Self.loneRequestsToPoll : busy.load(ordering: .relaxed) <= 1
        do {
            try input.read(into: headerBytes, mayPoll: mayPoll)
        } catch {
            // End of file is how a client may leave; anything else (a socket error, a TLS record
            // that fails to decrypt) is logged, the TLS failure even once the connection is
            // closing (it may be why: a reply could not be sent on the session it ended).
            if case TransportError.endOfFile = error {} else if error is TLSError || !closed.load(ordering: .relaxed) {
                server.logger.error(in: label, "\(error)")
            }
            closed.store(true, ordering: .relaxed)
            return false
        }
        let request: RequestHeader
        do {
            request = try RequestHeader(decoding: UnsafeRawBufferPointer(headerBytes))
        } catch {
            server.logger.error(in: label, "invalid request: bad magic; closing the connection")
            closed.store(true, ordering: .relaxed)
            return false
        }
        if request.command == .disconnect {
            server.logger.debug(in: label, "client sent disconnect")
            stop()
            return false
        }
        buffer.request = request
        buffer.invalid = validate(request)
        buffer.receivedInPlace = nil
        if let budget, buffer.invalid == nil, request.command == .read || request.command == .write {
            // Waits while the requests in flight hold too much data (see RequestBudget).
            guard budget.take(Int(request.length)) else {
                closed.store(true, ordering: .relaxed)
                return false
            }
            buffer.budgeted = Int(request.length)
        }
        if request.command == .write {
            // The payload must be consumed to stay in step with the client. That of a write
            // refused is read and dropped, up to twice the largest request (as nbdkit); a longer
            // one means the stream can't be trusted, so the connection ends instead.
            guard buffer.invalid == nil || request.length <= 2 * NBDSize.maxRequest else {
                server.logger.error(in: label, "invalid request: write of \(request.length) bytes is too large to skip; closing the connection")
                closed.store(true, ordering: .relaxed)
                return false
            }
            do {
                if buffer.invalid != nil {
                    try input.skip(Int(request.length))
                    return true
                }
                let storable = storesAsRead(request)
                // (The backend's storage is asked for only once the payload is all here: making
                // it ready may fault its pages in.)
                if storable, inline, Int(request.length) <= ReceiveBuffer.capacity / 2 {
                    // Served by this thread anyway: a small payload is gathered whole in the
                    // read-ahead and stored from there, one copy; a client that goes away in the
                    // middle of it leaves the disk as it was.
                    let payload = try input.readBuffered(count: Int(request.length), mayPoll: true)
                    buffer.receivedInPlace = store(payload, offset: request.offset)
                } else if storable, input.bufferedCount >= Int(request.length),
                   let storage = session.backend.storage(offset: request.offset, length: request.length),
                   let payload = input.takeBuffered(count: storage.count) {
                    // Arrived whole: stored now, so a client that goes away in the middle of a
                    // payload still leaves the disk as it was.
                    storage.copyMemory(from: payload)
                    buffer.receivedInPlace = .success(())
                } else if storable, request.length >= Self.sendFileMinimum, transport.receivesWithoutWaiting,
                          session.backend.receivesWrites {
                    do {
                        try session.backend.receiveWrite(offset: request.offset, length: request.length, from: input)
                        buffer.receivedInPlace = .success(())
                    } catch let e as BackendError {
                        buffer.receivedInPlace = .failure(e)
                    }
                } else {
                    // Served inline, the rest of a payload the client is sending is worth polling
                    // for: nothing else would run meanwhile, and it comes within microseconds.
                    let room: UnsafeMutableRawBufferPointer
                    do {
                        room = try buffer.payload(count: Int(request.length))
                    } catch {
                        // No memory for it: the payload is dropped and the write alone fails.
                        try input.skip(Int(request.length))
                        buffer.receivedInPlace = .failure(error)
                        return true
                    }
                    try input.read(into: room, mayPoll: mayPoll || inline)
                }
            } catch TransportError.endOfFile {
                // Once shutdown has begun, the server itself stops reading a client that has not
                // sent its whole payload within the grace.
                if server.shuttingDown.load(ordering: .relaxed) {
                    server.logger.error(in: label, "a write's payload had not all arrived when the connection ended during shutdown")
                } else {
                    server.logger.error(in: label, "client went away in the middle of a write payload")
                }
                closed.store(true, ordering: .relaxed)
                return false
            } catch {
                server.logger.error(in: label, "receiving a write payload: \(error); closing the connection")
                closed.store(true, ordering: .relaxed)
                return false
            }
        }
        return true
    }

    /// Checks a request against the protocol and the export; nil when it may be served. In
    /// nbdkit's order, so that a request wrong in several ways gets nbdkit's error: a change to
    /// a read-only export (EPERM), then the range (a write or zeroing past the end, or of no
    /// bytes, ENOSPC; anything else EINVAL), then the flags, the size and what the export offers.
    private func validate(_ r: RequestHeader) -> Refusal? {
        guard let command = r.command else { return Refusal(.einval, "unknown command (\(r.rawCommand))") }
        if session.readonly && (command == .write || command == .trim || command == .writeZeroes) {
            return Refusal(.eperm, "write request on a read-only connection")
        }
        switch command {
        case .disconnect:
            return nil
        case .flush:
            if r.offset != 0 || r.length != 0 { return Refusal(.einval, "expecting offset and count = 0") }
        case .read, .write, .trim, .writeZeroes, .cache, .blockStatus:
            if r.length == 0 || r.offset > session.size || UInt64(r.length) > session.size - r.offset {
                return Refusal(command == .write || command == .writeZeroes ? .enospc : .einval,
                               "offset and count are out of range")
            }
        }

        let known: CommandFlags = [.fua, .noHole, .df, .reqOne, .fastZero]
        guard known.isSuperset(of: r.flags) else { return Refusal(.einval, "unknown flag (0x\(String(r.flags.rawValue, radix: 16)))") }
        let flags = session.flags
        if r.flags.contains(.fua) && !flags.contains(.sendFUA) { return Refusal(.einval, "FUA flag not supported") }
        if r.flags.contains(.noHole) && command != .writeZeroes { return Refusal(.einval, "NO_HOLE flag needs a WRITE_ZEROES request") }
        if r.flags.contains(.fastZero) && (command != .writeZeroes || !flags.contains(.sendFastZero)) {
            return Refusal(.einval, "FAST_ZERO flag needs a WRITE_ZEROES request on an export that offers it")
        }
        if r.flags.contains(.df) && (command != .read || !session.structuredReplies) {
            return Refusal(.einval, "DF flag needs a READ request and structured replies")
        }
        if r.flags.contains(.reqOne) && command != .blockStatus { return Refusal(.einval, "REQ_ONE flag needs a BLOCK_STATUS request") }

        // Longer than the largest request: EOVERFLOW where structured replies allow it (the
        // hint proto.md describes; nbdkit 1.32 says ENOMEM), else EINVAL.
        if (command == .read || command == .write) && r.length > NBDSize.maxRequest {
            return Refusal(session.structuredReplies ? .eoverflow : .einval,
                           "data request is too large (\(r.length) > \(NBDSize.maxRequest))")
        }
        switch command {
        case .flush: if !flags.contains(.sendFlush) { return Refusal(.einval, "flush operation not supported") }
        case .trim: if !flags.contains(.sendTrim) { return Refusal(.einval, "trim operation not supported") }
        case .cache: if !session.canCache { return Refusal(.einval, "cache operation not supported") }
        case .blockStatus:
            if session.allocationContextID == nil { return Refusal(.einval, "no meta context was negotiated for block status") }
        case .read, .write, .writeZeroes, .disconnect: break
        }
        return nil
    }

    private enum Outcome {
        case done
        case read(Int)
        /// A read to send straight from a file (plaintext only).
        case readFromFile(FileExtent, Int)
        case extents([Extent])
        case failure(NBDErrno, String)
    }

    /// Reads at least this long are sent from the file when the backend allows it: for shorter
    /// ones the copy saved is worth less than the work it adds.
    static let sendFileMinimum: UInt32 = 64 * 1024

    /// Sends the replies gathered so far. Must hold `writeLock`. Returns false if the client is gone.
    private func flushReplies() -> Bool {
        do {
            try replies.flush()
            return true
        } catch {
            server.logger.debug(in: label, "could not send a reply: \(error)")
            return false
        }
    }

    /// Whether a valid write's payload may go into the backend as it is read (under `readLock`),
    /// where the backend offers: without FUA, not once shutdown has begun (the write would be
    /// stored and then refused with ESHUTDOWN), and not while requests must be served one at a
    /// time.
    private func storesAsRead(_ r: RequestHeader) -> Bool {
        !r.flags.contains(.fua) && !server.shuttingDown.load(ordering: .relaxed)
            && server.threadModel != .serializeAllRequests
    }

    /// Stores a write's payload (without FUA) before its request is served: through the backend's
    /// storage if it offers it, else with its `pwrite`.
    private func store(_ payload: UnsafeRawBufferPointer, offset: UInt64) -> Result<Void, BackendError> {
        let backend = session.backend
        if let storage = backend.storage(offset: offset, length: UInt32(payload.count)) {
            storage.copyMemory(from: payload)
            return .success(())
        }
        do {
            try backend.pwrite(payload, offset: offset, fua: false)
            return .success(())
        } catch {
            return .failure(Self.backendError(error))
        }
    }

    /// Any error a backend call throws, as the error its reply carries: a system call's errno
    /// mapped to the nearest NBD error, anything else EIO.
    private static func backendError(_ error: any Error) -> BackendError {
        switch error {
        case let e as BackendError: e
        case let e as SystemError: BackendError(e)
        default: BackendError(.eio, "\(error)")
        }
    }

    /// Serves one valid request against the backend.
    private func perform(_ r: RequestHeader, _ buffer: RequestBuffer) -> Outcome {
        let backend = session.backend
        let fua = r.flags.contains(.fua)
        do {
            switch r.command! {
            case .read:
                if r.length >= Self.sendFileMinimum, transport.sendsFromFiles,
                   let file = backend.fileExtent(offset: r.offset, length: r.length) {
                    return .readFromFile(file, Int(r.length))
                }
                try backend.pread(into: buffer.payload(count: Int(r.length)), offset: r.offset)
                return .read(Int(r.length))
            case .write:
                if let received = buffer.receivedInPlace { try received.get(); break }
                let data = UnsafeRawBufferPointer(buffer.filled(count: Int(r.length)))
                if let storage = backend.storage(offset: r.offset, length: r.length) {
                    storage.copyMemory(from: data)
                    if fua { try backend.flush() }
                } else {
                    try backend.pwrite(data, offset: r.offset, fua: fua && session.fua == .native)
                    if fua && session.fua == .emulate { try backend.flush() }
                }
            case .flush:
                try backend.flush()
            case .trim:
                try backend.trim(offset: r.offset, length: r.length, fua: fua && session.fua == .native)
                if fua && session.fua == .emulate { try backend.flush() }
            case .writeZeroes:
                try zero(r, buffer)
                if fua && session.fua == .emulate { try backend.flush() }
            case .cache:
                try backend.cache(offset: r.offset, length: r.length)
            case .blockStatus:
                return .extents(try extents(r))
            case .disconnect:
                break
            }
            return .done
        } catch {
            let e = Self.backendError(error)
            return .failure(e.errno, e.message)
        }
    }

    /// WRITE_ZEROES: the backend's own zero, or plain writes of zeros when it has none
    /// (refused with ENOTSUP when the client asked for a fast zero).
    private func zero(_ r: RequestHeader, _ buffer: RequestBuffer) throws {
        let fastZero = r.flags.contains(.fastZero)
        let nativeFUA = r.flags.contains(.fua) && session.fua == .native
        if session.canZero {
            do {
                try session.backend.zero(offset: r.offset, length: r.length, mayTrim: !r.flags.contains(.noHole),
                                         fua: nativeFUA, fastZero: fastZero)
                return
            } catch let e as BackendError where e.errno == .enotsup && !fastZero {
                // Fall back to writing zeros below.
            }
        }
        if fastZero { throw BackendError(.enotsup, "fast zero is not supported") }
        let chunk = try buffer.payload(count: min(Int(r.length), 1 << 20))
        chunk.initializeMemory(as: UInt8.self, repeating: 0)
        var offset = r.offset
        var remaining = UInt64(r.length)
        while remaining > 0 {
            let n = Int(min(remaining, UInt64(chunk.count)))
            try session.backend.pwrite(UnsafeRawBufferPointer(rebasing: chunk[0..<n]), offset: offset, fua: nativeFUA)
            offset += UInt64(n)
            remaining -= UInt64(n)
        }
    }

    /// BLOCK_STATUS for base:allocation: extents clipped to the request, merged, non-empty.
    private func extents(_ r: RequestHeader) throws -> [Extent] {
        let reqOne = r.flags.contains(.reqOne)
        let raw = session.canExtents
            ? try session.backend.extents(offset: r.offset, length: r.length, reqOne: reqOne)
            : [Extent(length: UInt64(r.length), flags: [])]
        var result: [Extent] = []
        var covered: UInt64 = 0
        for e in raw where e.length > 0 {
            let length = min(e.length, UInt64(r.length) - covered)
            if let last = result.last, last.flags == e.flags {
                result[result.count - 1].length += length
            } else {
                result.append(Extent(length: length, flags: e.flags))
            }
            covered += length
            if covered >= UInt64(r.length) { break }
        }
        guard !result.isEmpty else { throw BackendError(.eio, "extents: the backend returned no extents") }
        if reqOne { result.removeSubrange(1...) }
        return result
    }

    /// Encodes the reply header for a successful read of `count` bytes (structured: one
    /// NBD_REPLY_TYPE_OFFSET_DATA chunk, its offset included); returns the bytes to send.
    private func encodeReadHeader(_ r: RequestHeader, count: Int, into header: UnsafeMutableRawBufferPointer) -> UnsafeRawBufferPointer {
        if session.structuredReplies {
            Reply.encodeStructuredHeader(into: header, flags: .done, type: .offsetData, cookie: r.cookie,
                                         length: UInt32(8 + count))
            header.storeBigEndian(r.offset, toByteOffset: NBDSize.structuredReplyHeader)
            return UnsafeRawBufferPointer(rebasing: header[0..<NBDSize.structuredReplyHeader + 8])
        }
        Reply.encodeSimpleHeader(into: header, error: 0, cookie: r.cookie)
        return UnsafeRawBufferPointer(rebasing: header[0..<NBDSize.simpleReplyHeader])
    }

    /// Writes the reply to one request with one `send`. Must hold `writeLock`. Returns false if the client is gone.
    private func sendReply(_ r: RequestHeader, _ outcome: Outcome, _ buffer: RequestBuffer) -> Bool {
        let header = buffer.header
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        do {
            switch outcome {
            case .failure(let errno, _):
                // As nbdkit: a structured error only where a structured reply is due (a read or
                // block status), with no message: the reason (which may name the server's files)
                // goes to the server's log, not to the client.
                if session.structuredReplies && (r.command == .read || r.command == .blockStatus) {
                    let chunk = Reply.structuredError(cookie: r.cookie, error: errno, message: "")
                    try chunk.withUnsafeBytes { try replies.send($0, none) }
                } else {
                    Reply.encodeSimpleHeader(into: header, error: errno.rawValue, cookie: r.cookie)
                    try replies.send(UnsafeRawBufferPointer(rebasing: header[0..<NBDSize.simpleReplyHeader]), none)
                }
            case .read(let count):
                try replies.send(encodeReadHeader(r, count: count, into: header), UnsafeRawBufferPointer(buffer.filled(count: count)))
            case .readFromFile(let file, let count):
                try replies.flush()
                let sent = try transport.sendFromFile(encodeReadHeader(r, count: count, into: header), file, count: count)
                if sent < count {
                    // The kernel could not send it all (the file shrank, or it refused): the
                    // header has promised the bytes, so read the rest as usual or give up.
                    let rest: UnsafeMutableRawBufferPointer
                    do {
                        rest = try buffer.payload(count: count - sent)
                        try session.backend.pread(into: rest, offset: r.offset + UInt64(sent))
                    } catch {
                        server.logger.error(in: label, "NBD_CMD_READ offset=\(r.offset) count=\(count): \(error) after the reply began; closing the connection")
                        return false
                    }
                    try transport.send(UnsafeRawBufferPointer(rest), none)
                }
            case .extents(let extents):
                let chunk = Reply.blockStatus(cookie: r.cookie, contextID: session.allocationContextID ?? 0,
                                              extents: extents.map { (UInt32($0.length), $0.flags) })
                try chunk.withUnsafeBytes { try replies.send($0, none) }
            case .done:
                Reply.encodeSimpleHeader(into: header, error: 0, cookie: r.cookie)
                try replies.send(UnsafeRawBufferPointer(rebasing: header[0..<NBDSize.simpleReplyHeader]), none)
            }
            return true
        } catch {
            server.logger.debug(in: label, "could not send a reply: \(error)")
            return false
        }
    }
}

/// The protocol's name of a command, for log lines.
func commandName(_ raw: UInt16) -> String {
    switch Command(rawValue: raw) {
    case .read: "NBD_CMD_READ"
    case .write: "NBD_CMD_WRITE"
    case .disconnect: "NBD_CMD_DISC"
    case .flush: "NBD_CMD_FLUSH"
    case .trim: "NBD_CMD_TRIM"
    case .cache: "NBD_CMD_CACHE"
    case .writeZeroes: "NBD_CMD_WRITE_ZEROES"
    case .blockStatus: "NBD_CMD_BLOCK_STATUS"
    case nil: "unknown command \(raw)"
    }
}
