import XCTest

/// STARTTLS with X.509 and PSK, driven by libnbd, qemu and raw sockets. Keys and certificates
/// are made at test time with certtool and psktool.
final class TLSTests: IntegrationTestCase {
    nonisolated(unsafe) static var pki: TemporaryDirectory!

    /// A CA with a server and a client certificate in `pki`, a second CA with its own client
    /// certificate in `pki/other`, and PSK files for alice (good) and alice (wrong key).
    override class func setUp() {
        super.setUp()
        let d = TemporaryDirectory()
        pki = d
        let script = """
        set -e
        cd '\(d.path)'
        mkdir other noclient
        gen() { certtool --generate-privkey --outfile "$1" >/dev/null 2>&1; }
        printf 'cn = Test CA\\nca\\ncert_signing_key\\nexpiration_days = 30\\n' > ca.info
        printf 'cn = localhost\\ndns_name = localhost\\ntls_www_server\\nencryption_key\\nsigning_key\\nexpiration_days = 30\\n' > server.info
        printf 'cn = client\\ntls_www_client\\nencryption_key\\nsigning_key\\nexpiration_days = 30\\n' > client.info
        gen ca-key.pem
        certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info --outfile ca-cert.pem >/dev/null 2>&1
        gen server-key.pem
        certtool --generate-certificate --load-ca-certificate ca-cert.pem --load-ca-privkey ca-key.pem \\
          --load-privkey server-key.pem --template server.info --outfile server-cert.pem >/dev/null 2>&1
        gen client-key.pem
        certtool --generate-certificate --load-ca-certificate ca-cert.pem --load-ca-privkey ca-key.pem \\
          --load-privkey client-key.pem --template client.info --outfile client-cert.pem >/dev/null 2>&1
        cp ca-cert.pem noclient/
        gen other/ca-key.pem
        certtool --generate-self-signed --load-privkey other/ca-key.pem --template ca.info --outfile other/ca-cert.pem >/dev/null 2>&1
        gen other/client-key.pem
        certtool --generate-certificate --load-ca-certificate other/ca-cert.pem --load-ca-privkey other/ca-key.pem \\
          --load-privkey other/client-key.pem --template client.info --outfile other/client-cert.pem >/dev/null 2>&1
        psktool -u alice -p keys.psk >/dev/null
        psktool -u alice -p wrong.psk >/dev/null
        psktool -u mallory -p mallory.psk >/dev/null
        """
        let r = Harness.run(["/bin/sh", "-c", script])
        precondition(r.status == 0, "making certificates failed: \(r.stderr)")
    }

    override class func tearDown() {
        pki.remove()
        super.tearDown()
    }

    var certs: String { Self.pki.path }
    var pskFile: String { Self.pki.file("keys.psk") }

    func x509URI(_ s: ServerProcess, dir: String? = nil) -> String {
        "nbds+unix:///?socket=\(s.socket)&tls-certificates=\(dir ?? certs)"
    }

    func pskURI(_ s: ServerProcess, user: String = "alice", file: String? = nil) -> String {
        "nbds+unix://\(user)@/?socket=\(s.socket)&tls-psk-file=\(file ?? pskFile)"
    }

    /// nbdsh connected to a TLS URI that names local files (which libnbd must be allowed to read).
    @discardableResult
    func tlsNbdsh(_ uri: String, _ script: String, beforeConnect: String = "",
                  file: StaticString = #filePath, line: UInt = #line) -> Harness.Result {
        let r = Harness.run(["/usr/bin/nbdsh", "-c", beforeConnect + "\nh.set_uri_allow_local_file(True)\nh.connect_uri(\(Harness.pythonString(uri)))\n" + script])
        XCTAssertEqual(r.status, 0, "nbdsh failed:\n\(r.stderr)", file: file, line: line)
        return r
    }


    /// A good TLS client still works: the server survived whatever came before.
    func assertStillServes(_ s: ServerProcess, psk: Bool = false, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(s.isRunning, "server died", file: file, line: line)
        let r = Harness.run(["nbdinfo", "--size", psk ? pskURI(s) : x509URI(s)])
        XCTAssertEqual(r.stdout, "1048576\n", r.stderr, file: file, line: line)
    }

    func testX509RequireWithNbdinfoAndNbdsh() throws {
        let s = try startServer(["--tls=require", "--tls-certificates=\(certs)", "memory", "1M"])
        let info = Harness.run(["nbdinfo", x509URI(s)])
        XCTAssertEqual(info.status, 0, info.stderr)
        XCTAssertTrue(info.stdout.contains("with TLS"), info.stdout)
        let r = tlsNbdsh(x509URI(s), """
        assert h.get_tls_negotiated()
        h.pwrite(b'secret' * 1000, 4096)
        assert h.pread(6000, 4096) == b'secret' * 1000
        print('ok')
        """)
        XCTAssertEqual(r.stdout, "ok\n")
    }

    /// A Unix-socket connection gets a send buffer of up to 4 MiB for plaintext replies, and the
    /// system's default (`net.core.wmem_default`) back once it becomes TLS: seen by `ss` on the
    /// server's two open connections, one plaintext and one TLS.
    func testTLSConnectionHasTheDefaultSendBuffer() throws {
        func sysctl(_ name: String) -> Int { Int((try? String(contentsOfFile: "/proc/sys/net/core/\(name)", encoding: .utf8))?
                                                   .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0 }
        let byDefault = sysctl("wmem_default"), largest = sysctl("wmem_max")
        try XCTSkipIf(min(largest, 4 << 20) <= byDefault, "net.core.wmem_max allows no send buffer above the default")
        let s = try startServer(["--tls=on", "--tls-certificates=\(certs)", "memory", "1M"])
        let r = tlsNbdsh(x509URI(s), """
        import subprocess
        assert h.get_tls_negotiated()
        plain = nbd.NBD()
        plain.connect_uri(\(Harness.pythonString(s.uri)))
        assert not plain.get_tls_negotiated()
        out = subprocess.run(['ss', '-x', '-m', '-p', '-H'], capture_output=True, text=True, check=True).stdout
        lines = out.replace('\\n\\t', ' ').splitlines()
        mine = [l for l in lines if 'pid=\(s.pid),' in l and ' \(s.socket) ' in l]
        print(sorted(int(l.split(',tb')[1].split(',')[0]) for l in mine))
        """)
        // (The kernel doubles the size asked for.)
        XCTAssertEqual(r.stdout, "\([byDefault, 2 * min(largest, 4 << 20)])\n", r.stderr)
    }

    /// GnuTLS (and p11-kit, nettle, gmp behind it) costs start-up time, so it is loaded only
    /// when a server has TLS credentials; TLS then still works (the other tests).
    func testGnuTLSIsLoadedOnlyWithTLS() throws {
        // /proc files report size 0, so read them to the end rather than by their size.
        let maps = { (pid: Int32) in
            String(decoding: (try? FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/\(pid)/maps")).readToEnd()) ?? Data(),
                   as: UTF8.self)
        }
        let plain = try startServer(["memory", "1M"], socketName: "plain")
        XCTAssertTrue(maps(plain.pid).contains("libc.so"), "cannot read the maps")
        XCTAssertFalse(maps(plain.pid).contains("libgnutls"), "a server without TLS loaded GnuTLS")
        let tls = try startServer(["--tls=on", "--tls-psk=\(pskFile)", "memory", "1M"], socketName: "tls")
        XCTAssertTrue(maps(tls.pid).contains("libgnutls.so.30"))
        assertStillServes(tls, psk: true)
    }

    /// The cipher libnbd negotiates: on a processor with AES-NI and PCLMULQDQ the server picks
    /// AES-GCM (AES-128-GCM for PSK, whose SHA-256 binding rules out AES-256-GCM), where libnbd's
    /// own order would pick ChaCha20-Poly1305; elsewhere the client's order stands. X.509 keeps
    /// AES-256-GCM either way.
    func testServerPrefersAESGCMWhereTheProcessorAcceleratesIt() throws {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let flags = Set(cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? [])
        XCTAssertFalse(flags.isEmpty, "no flags line in /proc/cpuinfo")
        let accelerated = flags.contains("aes") && flags.contains("pclmulqdq")
        let negotiated = { (uri: String) -> String in
            // libnbd logs "connection is using TLS: cipher NAME (BITS bits) ..." in debug mode.
            let r = self.tlsNbdsh(uri, """
            print([m.split('using TLS: cipher ', 1)[1].split(' ')[0] for m in msgs if 'using TLS: cipher ' in m][0])
            """, beforeConnect: """
            msgs = []
            h.set_debug(True)
            h.set_debug_callback(lambda ctx, msg: msgs.append(msg))
            """)
            return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let p = try startServer(["--tls=require", "--tls-psk=\(pskFile)", "memory", "1M"], socketName: "psk")
        XCTAssertEqual(negotiated(pskURI(p)), accelerated ? "AES-128-GCM" : "CHACHA20-POLY1305")
        let x = try startServer(["--tls=require", "--tls-certificates=\(certs)", "memory", "1M"], socketName: "x509")
        XCTAssertEqual(negotiated(x509URI(x)), "AES-256-GCM")
    }

    /// Over TLS the memory plugin is served inline too (GnuTLS's buffered records and a poll of
    /// the socket tell when no input waits): no worker thread starts for 64 requests in flight,
    /// and every reply, gathered or not (4 KiB, 20000 bytes, 1 MiB), comes back right.
    func testTLSConnectionToMemoryIsServedByOneThread() throws {
        let s = try startServer(["--tls=require", "--tls-psk=\(pskFile)", "memory", "4M"])
        let r = tlsNbdsh(pskURI(s), """
        import os
        def threads():
            return len(os.listdir('/proc/\(s.pid)/task'))
        before = threads()
        data = os.urandom(4 << 20)
        h.pwrite(data, 0)
        \(Harness.pythonPipelinedReads(count: 64, stride: 40000, size: 4 << 20))
        print('workers started:', threads() - before)
        """)
        XCTAssertEqual(r.stdout, "workers started: 0\n", r.stderr)
    }

    func testPSKWithNbdcopyRoundTrip() throws {
        let s = try startServer(["--tls=require", "--tls-psk=\(pskFile)", "memory", "4M"])
        let source = randomFile("source.img", count: 4 << 20)
        XCTAssertEqual(Harness.run(["nbdcopy", source, pskURI(s)]).status, 0)
        let back = dir.file("back.img")
        let r = Harness.run(["nbdcopy", pskURI(s), back])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(contents(back), contents(source))
    }

    func testQemuImgX509AndPSK() throws {
        let source = randomFile("source.img", count: 1 << 20)
        let x = try startServer(["--tls=require", "--tls-certificates=\(certs)", "memory", "1M"], socketName: "x")
        let up = Harness.run(["qemu-img", "convert", "-n", "-f", "raw", source,
                              "--object", "tls-creds-x509,id=tls0,endpoint=client,dir=\(certs)",
                              "--target-image-opts", "driver=nbd,path=\(x.socket),tls-creds=tls0,tls-hostname=localhost"])
        XCTAssertEqual(up.status, 0, up.stderr)
        let p = try startServer(["--tls=require", "--tls-psk=\(pskFile)", "memory", "1M"], socketName: "p")
        let pskDir = dir.file("pskdir")
        try FileManager.default.createDirectory(atPath: pskDir, withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: pskFile, toPath: pskDir + "/keys.psk")
        let up2 = Harness.run(["qemu-img", "convert", "-n", "-f", "raw", source,
                               "--object", "tls-creds-psk,id=tls0,endpoint=client,dir=\(pskDir),username=alice",
                               "--target-image-opts", "driver=nbd,path=\(p.socket),tls-creds=tls0"])
        XCTAssertEqual(up2.status, 0, up2.stderr)
        let back = dir.file("back.img")
        XCTAssertEqual(Harness.run(["nbdcopy", pskURI(p), back]).status, 0)
        XCTAssertEqual(contents(back), contents(source))
    }

    func testPlaintextClientUnderRequireGetsNoData() throws {
        let s = try startServer(["--tls=require", "--tls-certificates=\(certs)", "memory", "1M"])
        tlsNbdsh(x509URI(s), "h.pwrite(b'private', 0)")
        let r = Harness.run(["/usr/bin/nbdsh", "-c", """
        h.set_opt_mode(True)
        h.connect_uri('nbd+unix:///?socket=\(s.socket)')
        assert not h.get_tls_negotiated()
        try:
            h.opt_go()
            print('GO succeeded')
        except nbd.Error as e:
            print('refused')
        """])
        XCTAssertEqual(r.stdout, "refused\n", r.stderr)
        let plain = Harness.run(["nbdsh", "-u", "nbd+unix:///?socket=\(s.socket)", "-c", "print(h.pread(7, 0))"])
        XCTAssertNotEqual(plain.status, 0)
        XCTAssertFalse(plain.stdout.contains("private"))
        assertStillServes(s)
    }

    func testTLSOnAllowsBothAndTLSOffRefusesSTARTTLS() throws {
        let on = try startServer(["--tls=on", "--tls-certificates=\(certs)", "memory", "1M"], socketName: "on")
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(on.socket)"]).stdout, "1048576\n")
        XCTAssertTrue(Harness.run(["nbdinfo", x509URI(on)]).stdout.contains("with TLS"))
        let off = try startServer(["memory", "1M"], socketName: "off")
        let r = Harness.run(["nbdinfo", x509URI(off)])
        XCTAssertNotEqual(r.status, 0, "a client requiring TLS must fail against --tls=off")
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", off.uri]).stdout, "1048576\n")
    }

    func testWrongPSKAndUnknownUserFailCleanly() throws {
        let s = try startServer(["--tls=require", "--tls-psk=\(pskFile)", "memory", "1M"])
        XCTAssertNotEqual(Harness.run(["nbdinfo", "--size", pskURI(s, file: Self.pki.file("wrong.psk"))]).status, 0)
        XCTAssertNotEqual(Harness.run(["nbdinfo", "--size", pskURI(s, user: "mallory", file: Self.pki.file("mallory.psk"))]).status, 0)
        assertStillServes(s, psk: true)
    }

    func testVerifyPeerRequiresClientCertificateFromTheCA() throws {
        let s = try startServer(["--tls=require", "--tls-certificates=\(certs)", "--tls-verify-peer", "memory", "1M"])
        // The good client: certificates directory with ca-cert, client-cert and client-key.
        assertStillServes(s)
        // No client certificate.
        XCTAssertNotEqual(Harness.run(["nbdinfo", "--size", x509URI(s, dir: Self.pki.file("noclient"))]).status, 0)
        // A client certificate from another CA (the client still trusts our CA).
        let mixed = dir.file("mixed")
        try FileManager.default.createDirectory(atPath: mixed, withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: certs + "/ca-cert.pem", toPath: mixed + "/ca-cert.pem")
        try FileManager.default.copyItem(atPath: certs + "/other/client-cert.pem", toPath: mixed + "/client-cert.pem")
        try FileManager.default.copyItem(atPath: certs + "/other/client-key.pem", toPath: mixed + "/client-key.pem")
        XCTAssertNotEqual(Harness.run(["nbdinfo", "--size", x509URI(s, dir: mixed)]).status, 0)
        assertStillServes(s)
    }

    func testClientDroppingMidHandshake() throws {
        let s = try startServer(["--tls=require", "--tls-certificates=\(certs)", "memory", "1M"])
        let r = Harness.run(["/usr/bin/python3", "-c", """
        import socket, struct, sys
        for garbage in (b'', b'\\x16\\x03\\x01\\x00\\x05hello', b'\\x00' * 100):
            s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
            s.recv(18)
            s.sendall(struct.pack('>I', 3))
            s.sendall(b'IHAVEOPT' + struct.pack('>II', 5, 0))
            hdr = b''
            while len(hdr) < 20: hdr += s.recv(20 - len(hdr))
            assert struct.unpack('>QIII', hdr)[2] == 1, hdr
            s.sendall(garbage); s.close()
        print('ok')
        """, s.socket])
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        assertStillServes(s)
        // Each dropped client is one log line, not a flood.
        XCTAssertLessThanOrEqual(s.stderr.split(separator: "\n").count, 3, s.stderr)
    }

    func testRequireAnswersOptionsWithTLSReqd() throws {
        let s = try startServer(["--tls=require", "--tls-certificates=\(certs)", "memory", "1M"])
        let r = Harness.run(["/usr/bin/python3", "-c", """
        import socket, struct, sys
        s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
        s.recv(18); s.sendall(struct.pack('>I', 3))
        def opt(code, data=b''):
            s.sendall(b'IHAVEOPT' + struct.pack('>II', code, len(data)) + data)
            hdr = b''
            while len(hdr) < 20: hdr += s.recv(20 - len(hdr))
            magic, option, rtype, length = struct.unpack('>QIII', hdr)
            if length: s.recv(length)
            return rtype
        TLS_REQD = 0x80000005
        assert opt(3) == TLS_REQD                      # LIST
        assert opt(8) == TLS_REQD                      # STRUCTURED_REPLY
        assert opt(7, struct.pack('>IH', 0, 0)) == TLS_REQD   # GO, payload consumed
        assert opt(6, struct.pack('>I', 3) + b'abc' + struct.pack('>H', 0)) == TLS_REQD
        assert opt(2) == 1                             # ABORT is allowed
        # EXPORT_NAME before TLS ends the connection.
        s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
        s.recv(18); s.sendall(struct.pack('>I', 3))
        s.sendall(b'IHAVEOPT' + struct.pack('>II', 1, 0))
        assert s.recv(100) == b''
        print('ok')
        """, s.socket])
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
        assertStillServes(s)
    }

    /// gnutls-cli does the raw TLS handshake after our own plaintext STARTTLS (over TCP, which
    /// is all gnutls-cli speaks): X.509 against our CA; PSK with the right key, and a wrong key
    /// that must fail while the server keeps serving.
    func testGnutlsCliHandshake() throws {
        let key = { (file: String) in
            String((try? String(contentsOfFile: file, encoding: .utf8))?.split(separator: ":").last ?? "")
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let pskPriority = "NORMAL:-KX-ALL:+ECDHE-PSK:+DHE-PSK:+PSK"
        let psk = ["--priority", pskPriority, "--pskusername", "alice", "--pskkey"]
        // A client that offers only ChaCha20 still gets it, whatever the server prefers.
        let chachaOnly = ["--priority", pskPriority + ":-CIPHER-ALL:+CHACHA20-POLY1305", "--pskusername", "alice", "--pskkey"]
        let verified = ["--x509cafile", Self.pki.file("ca-cert.pem"), "--verify-hostname", "localhost"]
        // DHE over TLS 1.2 with a client that names no FFDHE group: the server's known
        // parameters are used, as nbdkit's (without them no cipher suite was found).
        let dheOnly = ["--priority", "NORMAL:-KX-ALL:+DHE-RSA:-VERS-ALL:+VERS-TLS1.2:-GROUP-ALL:+GROUP-SECP256R1"]
        try gnutlsCli(serverTLS: ["--tls-certificates=\(certs)"], cases: [
            ("- Description: (TLS1.3", verified),
            ("- Description: (TLS1.2-X.509)-(DHE-CUSTOM2048)", verified + dheOnly)])
        // As in nbdkit, PSK takes precedence and a certificate directory beside it is not read.
        try gnutlsCli(serverTLS: ["--tls-psk=\(pskFile)", "--tls-certificates=\(dir.file("none"))"], cases: [
            ("PSK authentication. Connected as 'alice'", psk + [key(pskFile)]),
            ("-(CHACHA20-POLY1305)", chachaOnly + [key(pskFile)]),
            ("*** Handshake has failed", psk + [key(Self.pki.file("wrong.psk"))])])
    }

    /// Starts a `--tls=require` server on TCP with `serverTLS`, then for each case runs
    /// gnutls-cli with `arguments` and checks its output contains `expected`; afterwards the
    /// server must still serve and stop cleanly.
    func gnutlsCli(serverTLS: [String], cases: [(expected: String, arguments: [String])],
                   file: StaticString = #filePath, line: UInt = #line) throws {
        let port = Harness.freePort()
        let stderrFile = dir.file("stderr-\(port)")
        let server = try SpawnedProcess([Harness.nbdkit, "-f", "-p", "\(port)", "-i", "127.0.0.1", "--tls=require"]
                                        + serverTLS + ["memory", "1M"],
                                        environment: Harness.environment, stderrFile: stderrFile)
        defer { server.kill9() }
        for c in cases {
            let r = Harness.run(["/usr/bin/python3", "-c", """
            import socket, struct, subprocess, sys, time, signal
            port, args = sys.argv[1], sys.argv[2:]
            for _ in range(200):
                try: socket.create_connection(('127.0.0.1', int(port)), 1).close(); break
                except OSError: time.sleep(0.05)
            p = subprocess.Popen(['gnutls-cli', '--starttls', '-p', port, '127.0.0.1'] + args,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            # Client flags FIXED_NEWSTYLE|NO_ZEROES, then NBD_OPT_STARTTLS.
            p.stdin.write(struct.pack('>I', 3) + b'IHAVEOPT' + struct.pack('>II', 5, 0)); p.stdin.flush()
            time.sleep(0.5)
            p.send_signal(signal.SIGALRM)       # gnutls-cli: start the TLS handshake now
            time.sleep(1.0)
            p.kill(); out = p.stdout.read(); p.wait()
            # The server's ACK to STARTTLS: option reply magic, option 5, NBD_REP_ACK, length 0.
            assert bytes.fromhex('0003e889045565a9') + struct.pack('>III', 5, 1, 0) in out, out
            sys.stdout.write(out.decode('latin-1'))
            """, "\(port)"] + c.arguments, timeout: 60)
            XCTAssertTrue(r.stdout.contains(c.expected), "expected \(c.expected):\n" + r.stdout + r.stderr, file: file, line: line)
        }
        let stderr = { (try? String(contentsOfFile: stderrFile, encoding: .utf8)) ?? "" }
        XCTAssertTrue(server.isRunning, "server died: " + stderr(), file: file, line: line)
        let uri = serverTLS[0].hasPrefix("--tls-psk") ? "nbds://alice@127.0.0.1:\(port)?tls-psk-file=\(pskFile)"
                                                      : "nbds://localhost:\(port)?tls-certificates=\(certs)"
        let info = Harness.run(["nbdinfo", "--size", uri])
        XCTAssertEqual(info.stdout, "1048576\n", info.stderr, file: file, line: line)
        kill(server.pid, SIGTERM)
        XCTAssertEqual(server.wait(), 0, stderr(), file: file, line: line)
    }

    /// `--filter=tls-fallback` under `--tls=on`: a plaintext client, whatever export it names,
    /// sees one read-only 512-byte disk holding the message and an export list without the
    /// plugin's names; a TLS client sees the plugin's exports and data. Run against a file
    /// plugin serving a directory, so a leak of names or bytes would show.
    func testTLSFallbackShowsPlaintextClientsOnlyTheMessage() throws {
        let exports = dir.file("exports")
        try FileManager.default.createDirectory(atPath: exports, withIntermediateDirectories: false)
        let secret = randomFile("exports/secret.img", count: 65536)
        _ = randomFile("exports/other.img", count: 4096)
        let s = try startServer(["--tls=on", "--tls-certificates=\(certs)", "--filter=tls-fallback",
                                 "file", "dir=\(exports)", "tlsreadme=Use TLS, please."], socketName: "fb")
        let plain = Harness.run(["/usr/bin/nbdsh", "-c", """
        h.set_opt_mode(True)
        h.connect_uri(\(Harness.pythonString(s.uri)))
        names = []
        h.opt_list(lambda name, description: names.append(name))
        assert names == [''], names
        h.set_export_name('secret.img')
        h.opt_go()
        assert h.get_size() == 512, h.get_size()
        assert h.is_read_only() and not h.can_trim() and not h.can_flush() and not h.can_multi_conn()
        expected = b'Use TLS, please.' + bytes(512 - 16)
        assert h.pread(512, 0) == expected
        assert h.pread(20, 10) == expected[10:30]
        h.set_strict_mode(0)   # let the server, not libnbd, refuse what follows
        for bad in (lambda: h.pread(1, 512), lambda: h.pwrite(b'x', 0)):
            try:
                bad()
                raise SystemExit('a read past the end or a write succeeded')
            except nbd.Error:
                pass
        h.shutdown()
        """])
        XCTAssertEqual(plain.status, 0, plain.stderr)

        tlsNbdsh("nbds+unix:///secret.img?socket=\(s.socket)&tls-certificates=\(certs)", """
        assert h.get_size() == 65536, h.get_size()
        assert h.can_trim() and not h.is_read_only()
        assert h.pread(65536, 0) == open(\(Harness.pythonString(secret)), 'rb').read(), "the plugin's data"
        """)
        let listed = tlsNbdsh("nbds+unix:///?socket=\(s.socket)&tls-certificates=\(certs)", """
        names = []
        h.opt_list(lambda name, description: names.append(name))
        print(sorted(names))
        """, beforeConnect: "h.set_opt_mode(True)")
        XCTAssertEqual(listed.stdout, "['other.img', 'secret.img']\n")

        // Without tlsreadme, nbdkit's message; an export name the plugin lacks changes nothing.
        let plainOnly = try startServer(["--tls=on", "--tls-certificates=\(certs)", "--filter=tls-fallback",
                                         "file", "dir=\(exports)"], socketName: "fb2")
        let readme = Harness.run(["/usr/bin/nbdsh", "-u", plainOnly.uri(export: "no-such-export"), "-c",
                                  "import sys; sys.stdout.buffer.write(h.pread(512, 0).rstrip(b'\\0'))"])
        XCTAssertEqual(readme.stdout, "This NBD server requires TLS authentication before it will serve useful data.\n", readme.stderr)
    }

    /// Python for a hand-made client: `raw`, a Unix socket connected to argv[1] (argv[2] is the
    /// CA certificate, `ca`); `recvall(sock, n)`; and `opt(sock, code, data)`, which sends an
    /// option and returns the type of its final reply, skipping NBD_REP_INFO and META_CONTEXT.
    static let rawClientPrelude = """
        import socket, ssl, struct, sys
        path, ca = sys.argv[1:3]
        raw = socket.socket(socket.AF_UNIX); raw.settimeout(10); raw.connect(path)
        def recvall(sock, n):
            b = b''
            while len(b) < n:
                c = sock.recv(n - len(b)); assert c, 'eof'; b += c
            return b
        def opt(sock, code, data=b''):
            sock.sendall(b'IHAVEOPT' + struct.pack('>II', code, len(data)) + data)
            while True:
                magic, option, rtype, length = struct.unpack('>QIII', recvall(sock, 20))
                payload = recvall(sock, length)
                if rtype not in (3, 4): return rtype
        def start_tls():                                              # STARTTLS, then GO: simple replies
            recvall(raw, 18); raw.sendall(struct.pack('>I', 3))
            assert opt(raw, 5) == 1
            t = ssl.create_default_context(cafile=ca).wrap_socket(raw, server_hostname='localhost')
            assert opt(t, 7, struct.pack('>IH', 0, 0)) == 1
            return t
        def request(command, cookie, offset, length):
            return struct.pack('>IHHQQI', 0x25609513, 0, command, cookie, offset, length)
        def reply(cookie, error=0):                                   # a simple reply on `tls`
            magic, err, handle = struct.unpack('>IIQ', recvall(tls, 16))
            assert (magic, err, handle) == (0x67446698, error, cookie), (hex(magic), err, handle)
        """

    /// Nothing negotiated in plaintext survives STARTTLS: structured replies and the meta
    /// context set before it are gone, so a read gets a simple reply and block status EINVAL.
    /// A second STARTTLS, inside TLS, is refused as invalid and the session carries on.
    func testNegotiationBeforeSTARTTLSIsForgotten() throws {
        let s = try startServer(["--tls=on", "--tls-certificates=\(certs)", "memory", "1M"])
        let r = Harness.run(["/usr/bin/python3", "-c", """
        \(Self.rawClientPrelude)
        recvall(raw, 18); raw.sendall(struct.pack('>I', 3))
        assert opt(raw, 8) == 1                                       # STRUCTURED_REPLY: ACK
        ctx = b'base:allocation'
        assert opt(raw, 10, struct.pack('>I', 0) + struct.pack('>I', 1) + struct.pack('>I', len(ctx)) + ctx) == 1
        assert opt(raw, 5) == 1                                       # STARTTLS: ACK
        tls = ssl.create_default_context(cafile=ca).wrap_socket(raw, server_hostname='localhost')
        assert opt(tls, 5) == 0x80000003                              # a second STARTTLS: ERR_INVALID
        assert opt(tls, 7, struct.pack('>IH', 0, 0)) == 1             # GO on the default export
        # NBD_CMD_READ of 512 bytes: a simple reply (magic 0x67446698), not a structured one.
        tls.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 0, 1, 0, 512))
        magic, error, handle = struct.unpack('>IIQ', recvall(tls, 16))
        assert magic == 0x67446698 and error == 0 and handle == 1, (hex(magic), error)
        recvall(tls, 512)
        # NBD_CMD_BLOCK_STATUS without a negotiated context: EINVAL (22).
        tls.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 7, 2, 0, 512))
        magic, error, handle = struct.unpack('>IIQ', recvall(tls, 16))
        assert magic == 0x67446698 and error == 22 and handle == 2, (hex(magic), error)
        tls.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 2, 3, 0, 0))  # DISC
        print('ok')
        """, s.socket, Self.pki.file("ca-cert.pem")])
        XCTAssertEqual(r.stdout, "ok\n", r.stdout + r.stderr)
        assertStillServes(s)
    }

    /// Records that arrive together are received together: 32 read requests sent as 32 TLS
    /// records back to back, then a 100 KiB write spread over several records with a read of
    /// the same bytes and NBD_CMD_DISC right behind it, all get their replies, in order and
    /// right, and the server ends that session cleanly and goes on serving.
    func testPipelinedRecordsAreAllAnswered() throws {
        let s = try startServer(["--tls=require", "--tls-certificates=\(certs)", "memory", "1M"])
        let r = Harness.run(["/usr/bin/python3", "-c", """
        \(Self.rawClientPrelude)
        import os
        tls = start_tls()
        data = os.urandom(1 << 20)
        tls.sendall(request(1, 1, 0, len(data)) + data)
        reply(1)
        for i in range(32):
            tls.send(request(0, 100 + i, i * 4096 + i, 4096))        # one record each
        for i in range(32):
            reply(100 + i)
            assert recvall(tls, 4096) == data[i * 4096 + i:(i + 1) * 4096 + i], i
        new = os.urandom(100000)
        tls.send(request(1, 200, 5000, len(new)))
        for k in range(0, len(new), 30000):
            tls.send(new[k:k + 30000])
        tls.send(request(0, 201, 5000, len(new)))
        tls.send(request(2, 202, 0, 0))                               # DISC
        reply(200)
        reply(201)
        assert recvall(tls, len(new)) == new
        print('ok')
        """, s.socket, Self.pki.file("ca-cert.pem")])
        XCTAssertEqual(r.stdout, "ok\n", r.stdout + r.stderr)
        assertStillServes(s)
    }

    /// A write refused as out of range whose payload arrives slowly: the reply to a read sent
    /// before it goes out at once, not after the whole payload has been skipped, and the
    /// connection goes on.
    func testReplyIsNotHeldWhileARefusedPayloadIsSkipped() throws {
        let s = try startServer(["--tls=require", "--tls-certificates=\(certs)", "memory", "1M"])
        let r = Harness.run(["/usr/bin/python3", "-c", """
        \(Self.rawClientPrelude)
        tls = start_tls()
        tls.sendall(request(0, 1, 0, 512) + request(1, 2, 1 << 20, 1 << 20) + bytes(65536))
        tls.settimeout(2)
        reply(1)                                                      # not held back
        assert recvall(tls, 512) == bytes(512)
        tls.sendall(bytes((1 << 20) - 65536))
        reply(2, 28)                                                  # ENOSPC
        tls.sendall(request(0, 3, 0, 512))
        reply(3)
        assert recvall(tls, 512) == bytes(512)
        print('ok')
        """, s.socket, Self.pki.file("ca-cert.pem")])
        XCTAssertEqual(r.stdout, "ok\n", r.stdout + r.stderr)
        assertStillServes(s)
    }

    /// Requests that arrive together with the client's end of file (a half-close without
    /// close_notify) are all answered before the connection ends: the server is kept busy
    /// sending a 1 MiB reply until the eight requests, one record each, and the end of file have
    /// all arrived. So too from a file on the test directory's disk, served by worker threads
    /// that may still be replying when the reader meets the end. A record that fails to decrypt ends its connection with a log line naming
    /// the failure, whether it came alone or behind requests (whose replies then can't be sent:
    /// GnuTLS ends the session at once), and the server goes on serving others.
    func testRequestsArrivingWithTheEndOfFileAreAnswered() throws {
        let s = try startServer(["--tls=require", "--tls-certificates=\(certs)", "memory", "1M"])
        let disk = randomFile("disk.img", count: 1 << 20)
        let onDisk = try startServer(["--tls=require", "--tls-certificates=\(certs)", "file", disk], socketName: "disk")
        func client(badRecord: String, server: ServerProcess? = nil) -> Harness.Result {
            Harness.run(["/usr/bin/python3", "-c", """
            \(Self.rawClientPrelude)
            recvall(raw, 18); raw.sendall(struct.pack('>I', 3))
            assert opt(raw, 5) == 1                                       # STARTTLS: ACK
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ssl.create_default_context(cafile=ca).wrap_bio(inc, out, server_hostname='localhost')
            def pump():
                data = raw.recv(1 << 20)
                inc.write(data)
                return data
            while True:
                try: tls.do_handshake(); break
                except ssl.SSLWantReadError: raw.sendall(out.read()); assert pump(), 'eof in handshake'
            raw.sendall(out.read())
            def tread(n):
                b = b''
                while len(b) < n:
                    try:
                        c = tls.read(n - len(b))
                        if not c: return b
                        b += c; continue
                    except ssl.SSLWantReadError: pass
                    except (ssl.SSLEOFError, ssl.SSLZeroReturnError): return b
                    if not pump(): return b
                return b
            tls.write(b'IHAVEOPT' + struct.pack('>IIIH', 7, 6, 0, 0)); raw.sendall(out.read())
            while True:                                                   # GO, simple replies
                _, _, rtype, length = struct.unpack('>QIII', tread(20)); tread(length)
                if rtype == 1: break
            def read(cookie, length):
                tls.write(struct.pack('>IHHQQI', 0x25609513, 0, 0, cookie, 0, length))
                return out.read()
            if '\(badRecord)' == 'alone':
                raw.sendall(bytes([23, 3, 3, 0, 32]) + bytes(32)); print(len(tread(16))); sys.exit(0)
            raw.sendall(read(99, 1 << 20))            # its reply fills the socket: the server waits
            wire = b''.join(read(i, 4096) for i in range(8))
            if '\(badRecord)' == 'behind':
                tls.write(b'x' * 10); bad = bytearray(out.read()); bad[-1] ^= 1; wire += bytes(bad)
            raw.sendall(wire)
            raw.shutdown(socket.SHUT_WR)
            got = tread(16 + (1 << 20) + 8 * (16 + 4096))
            print((len(got) - 16 - (1 << 20)) // (16 + 4096))
            """, (server ?? s).socket, Self.pki.file("ca-cert.pem")])
        }
        let halfClosed = client(badRecord: "none")
        XCTAssertEqual(halfClosed.stdout, "8\n", halfClosed.stderr)
        for _ in 0..<5 {
            let r = client(badRecord: "none", server: onDisk)
            XCTAssertEqual(r.stdout, "8\n", r.stderr)
        }
        // (Behind requests, how many replies go out depends on whether the bad record arrived
        // in the same read as they did: then GnuTLS has ended the session before they are sent.)
        for badRecord in ["alone", "behind"] {
            let r = client(badRecord: badRecord)
            XCTAssertEqual(r.status, 0, r.stderr)
            if badRecord == "alone" { XCTAssertEqual(r.stdout, "0\n", r.stderr) }
        }
        let failure = "gnutls_record_recv: Decryption has failed"
        let deadline = Date().addingTimeInterval(10)
        var log = ""
        while Date() < deadline {
            log = (try? String(contentsOfFile: s.stderrFile, encoding: .utf8)) ?? ""
            if log.components(separatedBy: failure).count == 3 { break }
            usleep(20_000)
        }
        XCTAssertEqual(log.components(separatedBy: failure).count, 3, log)
        assertStillServes(s)
    }

    /// A client that sends reads, half-closes and reads nothing more: once every reply has gone
    /// out the connection ends, even when the socket has no room left for close_notify (that
    /// waited for the client to read, holding the connection and its thread; now it waits a
    /// second at most). For n = 1, 2, ...
    /// reads of 4 KiB, until the replies no longer fit in the socket: when the records queued
    /// for the client hold all n replies, the server must close its end within 2 seconds.
    func testCloseNotifyNeverWaitsForAClientThatDoesNotRead() throws {
        let s = try startServer(["--tls=require", "--tls-certificates=\(certs)", "memory", "1M"])
        let r = Harness.run(["/usr/bin/python3", "-c", """
        \(Self.rawClientPrelude)
        import array, fcntl, os, select, termios
        for n in range(1, 1000):
            if n > 1:
                raw = socket.socket(socket.AF_UNIX); raw.settimeout(10); raw.connect(path)
            tls = start_tls()
            tls.sendall(b''.join(request(0, i, 0, 4096) for i in range(n)))
            tls.shutdown(socket.SHUT_WR)
            p = select.poll(); p.register(tls.fileno(), select.POLLRDHUP)
            closed = bool(p.poll(2000))
            queued = array.array('i', [0]); fcntl.ioctl(tls.fileno(), termios.FIONREAD, queued)
            peek = socket.socket(fileno=os.dup(tls.fileno()))
            wire = peek.recv(queued[0], socket.MSG_PEEK); peek.close()
            at = plain = 0                       # reply bytes in the whole records queued
            while at + 5 <= len(wire) and at + 5 + int.from_bytes(wire[at + 3:at + 5], 'big') <= len(wire):
                length = int.from_bytes(wire[at + 3:at + 5], 'big')
                plain += length - 17; at += 5 + length
            tls.close()
            if plain < n * 4112:
                break                            # the server waits for the client to read replies
            assert closed, 'connection held after all %d replies went out' % n
        print('ok' if n > 2 else 'too few')
        """, s.socket, Self.pki.file("ca-cert.pem")], timeout: 120)
        XCTAssertEqual(r.stdout, "ok\n", r.stdout + r.stderr)
        assertStillServes(s)
    }

    /// A client that sends a read and then a write with its payload before it reads anything
    /// (as a simple synchronous client may): the read's reply fills the socket while the
    /// client's payload is still coming. With worker threads, the reply's sender waited for the
    /// socket holding the TLS session, so the reader could not take the payload in and neither
    /// side moved; both requests must be answered. (File on the test directory's disk: served
    /// by worker threads.)
    func testReplyWaitingForTheSocketDoesNotStopTheReader() throws {
        let disk = randomFile("disk.img", count: 16 << 20)
        let s = try startServer(["-t", "16", "--tls=require", "--tls-certificates=\(certs)", "file", disk])
        let r = Harness.run(["/usr/bin/python3", "-c", """
        \(Self.rawClientPrelude)
        tls = start_tls()
        tls.settimeout(20)
        data = open(sys.argv[3], 'rb').read()
        for k, size in enumerate([1 << 20, 4 << 20]):
            tls.sendall(request(0, 10 * k + 1, 0, size))
            tls.sendall(request(1, 10 * k + 2, 8 << 20, size) + data[:size])
            for _ in range(2):
                magic, err, handle = struct.unpack('>IIQ', recvall(tls, 16))
                assert (magic, err) == (0x67446698, 0) and handle in (10 * k + 1, 10 * k + 2), (magic, err, handle)
                if handle == 10 * k + 1: assert recvall(tls, size) == data[:size]
        print('ok')
        """, s.socket, Self.pki.file("ca-cert.pem"), disk], timeout: 60)
        XCTAssertEqual(r.stdout, "ok\n", r.stdout + r.stderr)
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", x509URI(s)]).stdout, "16777216\n", s.stderr)
    }

    /// A client that asks for new TLS 1.3 keys (KeyUpdate, about 7 times a second, in the middle
    /// of replies) while worker threads send 64 KiB replies: GnuTLS answers it inside the receive
    /// with new sending keys, which corrupted the record a worker was encrypting (the client
    /// failed to decrypt at the first update). The client is GnuTLS itself, through ctypes
    /// (Python's ssl cannot send a KeyUpdate); the file lies on the test directory's disk, so it
    /// is served by worker threads, and the memory plugin's one thread per connection is
    /// checked too. Every reply must arrive, in one piece and with the right data.
    func testClientKeyUpdatesDuringRepliesKeepTheSession() throws {
        let disk = randomFile("disk.img", count: 16 << 20)
        let file = try startServer(["-t", "16", "--tls=require", "--tls-psk=\(pskFile)", "file", disk], socketName: "file")
        let memory = try startServer(["--tls=require", "--tls-psk=\(pskFile)", "memory", "16M"], socketName: "memory")
        let copy = Harness.run(["nbdcopy", disk, pskURI(memory)])
        XCTAssertEqual(copy.status, 0, copy.stderr)
        for s in [file, memory] {
            let r = Harness.run(["/usr/bin/python3", "-c", Self.keyUpdatingClient, s.socket, pskFile, disk], timeout: 60)
            XCTAssertTrue(r.stdout.hasPrefix("ok "), r.stdout + r.stderr + s.stderr)
            XCTAssertEqual(Harness.run(["nbdinfo", "--size", pskURI(s)]).stdout, "16777216\n", s.stderr)
        }
    }

    /// Connects to the Unix socket argv[1] with PSK (file argv[2]) through libgnutls, then reads
    /// random 64 KiB blocks, 32 at a time, for 2 seconds, comparing them with the file argv[3],
    /// asking the server for new keys halfway through a batch's replies (at most 8 a second,
    /// GnuTLS's limit). Prints "ok REPLIES UPDATES".
    static let keyUpdatingClient = """
        import ctypes, socket, struct, sys, time
        path, pskfile, disk = sys.argv[1:4]
        seconds, depth, length = 2.0, 32, 65536
        g = ctypes.CDLL('libgnutls.so.30')
        class Datum(ctypes.Structure):
            _fields_ = [('data', ctypes.c_char_p), ('size', ctypes.c_uint)]
        g.gnutls_record_send.restype = ctypes.c_ssize_t
        g.gnutls_record_send.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        g.gnutls_record_recv.restype = ctypes.c_ssize_t
        g.gnutls_record_recv.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        for f in ('gnutls_handshake', 'gnutls_session_key_update', 'gnutls_credentials_set', 'gnutls_priority_set_direct',
                  'gnutls_transport_set_int2', 'gnutls_psk_set_client_credentials', 'gnutls_protocol_get_version'):
            getattr(g, f).argtypes = None
        g.gnutls_strerror.restype = ctypes.c_char_p
        def check(r, what):
            if r < 0: sys.exit('%s: %s' % (what, g.gnutls_strerror(int(r)).decode()))
            return r
        raw = socket.socket(socket.AF_UNIX); raw.settimeout(20); raw.connect(path)
        def recvall(n):
            b = b''
            while len(b) < n:
                c = raw.recv(n - len(b)); assert c, 'eof'; b += c
            return b
        recvall(18); raw.sendall(struct.pack('>I', 3))
        raw.sendall(b'IHAVEOPT' + struct.pack('>II', 5, 0))                 # STARTTLS
        assert struct.unpack('>QIII', recvall(20))[2] == 1
        user, key = open(pskfile).read().strip().split(':')
        cred = ctypes.c_void_p(); check(g.gnutls_psk_allocate_client_credentials(ctypes.byref(cred)), 'creds')
        k = key.encode(); check(g.gnutls_psk_set_client_credentials(cred, user.encode(), ctypes.byref(Datum(k, len(k))), 1), 'psk')
        s = ctypes.c_void_p(); check(g.gnutls_init(ctypes.byref(s), 2), 'init')
        check(g.gnutls_priority_set_direct(s, b'NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK', None), 'priority')
        check(g.gnutls_credentials_set(s, 4, cred), 'credentials_set')
        g.gnutls_transport_set_int2(s, raw.fileno(), raw.fileno())
        raw.setblocking(True)
        check(g.gnutls_handshake(s), 'handshake')
        assert g.gnutls_protocol_get_version(s) == 5, 'not TLS 1.3'            # GNUTLS_TLS1_3
        buf = ctypes.create_string_buffer(1 << 21)
        def tsend(b):
            while b:
                n = g.gnutls_record_send(s, b, len(b))
                if n in (-28, -52): continue
                check(n, 'send'); b = b[n:]
        def trecv(n):
            out = b''
            while len(out) < n:
                r = g.gnutls_record_recv(s, buf, n - len(out))
                if r in (-28, -52): continue                                  # AGAIN, INTERRUPTED: a handshake message
                check(r, 'recv after %d replies' % replies)
                if r == 0: sys.exit('eof after %d replies' % replies)
                out += ctypes.string_at(buf, r)
            return out
        replies = 0
        tsend(b'IHAVEOPT' + struct.pack('>IIIH', 7, 6, 0, 0))                 # GO, default export
        while True:
            _, _, rtype, n = struct.unpack('>QIII', trecv(20)); trecv(n)
            if rtype == 1: break
        data = open(disk, 'rb').read()
        size = len(data)
        end = time.monotonic() + seconds; last = 0; updates = 0; cookie = 0
        while time.monotonic() < end:
            batch = []
            for i in range(depth):
                off = (cookie * 7919 * 4096) % (size - length)
                batch.append((cookie, off)); cookie += 1
            tsend(b''.join(struct.pack('>IHHQQI', 0x25609513, 0, 0, c, o, length) for c, o in batch))
            waiting = dict(batch)
            while waiting:
                if len(waiting) == depth // 2 and time.monotonic() - last > 0.13:
                    check(g.gnutls_session_key_update(s, 1), 'key_update'); updates += 1; last = time.monotonic()
                magic, err, handle = struct.unpack('>IIQ', trecv(16))
                assert (magic, err) == (0x67446698, 0) and handle in waiting, (hex(magic), err, handle)
                assert trecv(length) == data[waiting[handle]:waiting.pop(handle) + length], 'wrong data'
                replies += 1
        print('ok', replies, updates)
        """

    /// `-s` negotiates TLS when standard input and output are a socket: libnbd's
    /// connect_command hands the server a socketpair as descriptors 0 and 1, so GnuTLS receives
    /// on one and sends on the other. Over pipes (which GnuTLS cannot use) STARTTLS is refused
    /// with a policy error before any handshake, and the server exits when the client leaves.
    func testSingleModeNegotiatesTLSOverASocket() throws {
        let py = Harness.pythonString
        let psk = Harness.run(["/usr/bin/nbdsh", "-c", """
        h.set_tls(2)
        h.set_tls_username('alice')
        h.set_tls_psk_file(\(py(pskFile)))
        h.connect_command([\(py(Harness.nbdkit)), '-s', '--tls=require', '--tls-psk=' + \(py(pskFile)), 'memory', '1M'])
        assert h.get_tls_negotiated()
        h.pwrite(b'secret' * 1000, 4096)
        assert h.pread(6000, 4096) == b'secret' * 1000
        print(h.get_size())
        """])
        XCTAssertEqual(psk.status, 0, psk.stderr)
        XCTAssertEqual(psk.stdout, "1048576\n")
        let x509 = Harness.run(["/usr/bin/nbdsh", "-c", """
        h.set_tls(2)
        h.set_tls_certificates(\(py(certs)))
        h.connect_command([\(py(Harness.nbdkit)), '-s', '--tls=require', '--tls-certificates=' + \(py(certs)), 'memory', '1M'])
        assert h.get_tls_negotiated()
        print(h.get_size())
        """])
        XCTAssertEqual(x509.status, 0, x509.stderr)
        XCTAssertEqual(x509.stdout, "1048576\n")
        let pipes = Harness.run(["/usr/bin/python3", "-c", """
        import struct, subprocess, sys
        p = subprocess.Popen([sys.argv[1], '-s', '--tls=require', '--tls-psk=' + sys.argv[2], 'memory', '1M'],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        def read(n):
            data = b''
            while len(data) < n:
                chunk = p.stdout.read(n - len(data))
                assert chunk, 'server closed early'
                data += chunk
            return data
        def opt(code):
            p.stdin.write(b'IHAVEOPT' + struct.pack('>II', code, 0)); p.stdin.flush()
            magic, option, rtype, length = struct.unpack('>QIII', read(20))
            read(length)
            return rtype
        read(18); p.stdin.write(struct.pack('>I', 3))
        print(hex(opt(5)), hex(opt(3)), opt(2))       # STARTTLS, LIST, ABORT
        p.stdin.close()
        print(p.wait(timeout=10))
        """, Harness.nbdkit, pskFile])
        XCTAssertEqual(pipes.stdout, "0x80000002 0x80000005 1\n0\n", pipes.stderr)
    }

    func testCaptiveRunWithTLS() {
        let r = Harness.run([Harness.nbdkit, "-U", "-", "--tls=require", "--tls-certificates=\(certs)", "memory", "1M",
                             "--run", "echo \"$tls $uri\"; nbdinfo --size \"$uri&tls-certificates=\(certs)\""])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stdout.split(separator: "\n")
        XCTAssertTrue(lines.first?.hasPrefix("2 nbds+unix://?socket=") ?? false, r.stdout)
        XCTAssertEqual(lines.last, "1048576")
        let on = Harness.run([Harness.nbdkit, "-U", "-", "--tls=on", "--tls-certificates=\(certs)", "memory", "1M",
                              "--run", "echo \"$tls $uri\""])
        XCTAssertTrue(on.stdout.hasPrefix("1 nbd+unix://?socket="), on.stdout)
    }

    /// As in nbdkit: certificates that can't be loaded are an error under --tls=require and a
    /// warning naming the file under --tls=on (the server then runs without TLS, `$tls` unset);
    /// a PSK file that can't be loaded is an error either way. Oldstyle refuses --tls=require
    /// only: under --tls=on it loads the certificates and serves plaintext.
    func testBadTLSFilesAreStartupErrors() {
        let marker = dir.file("ran")
        let missing = Harness.run([Harness.nbdkit, "-U", "-", "--tls=require", "--tls-certificates=\(dir.file("none"))",
                                   "memory", "1M", "--run", "touch \(marker)"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.hasPrefix("nbdkit: error: --tls=require but could not load TLS certificates (\(dir.file("none"))/ca-cert.pem: No such file or directory)\n"), missing.stderr)
        let warned = Harness.run([Harness.nbdkit, "-U", "-", "--tls=on", "--tls-certificates=\(dir.file("none"))",
                                  "memory", "1M", "--run", "echo \"[$tls]\"; nbdinfo --size \"$uri\""])
        XCTAssertEqual(warned.status, 0, warned.stderr)
        XCTAssertEqual(warned.stdout, "[]\n1048576\n")
        XCTAssertTrue(warned.stderr.hasPrefix("nbdkit: warning: --tls=on but could not load TLS certificates (\(dir.file("none"))/ca-cert.pem: No such file or directory)"), warned.stderr)
        // As nbdkit's, that warning is on stderr whatever --log says (--log=null lost it).
        let quiet = Harness.run([Harness.nbdkit, "--log=null", "-U", "-", "--tls=on", "--tls-certificates=\(dir.file("none"))",
                                 "memory", "1M", "--run", "true"])
        XCTAssertTrue(quiet.stderr.hasPrefix("nbdkit: warning: --tls=on but could not load TLS certificates"), quiet.stderr)
        // Certificate files that are there but don't load (a bad key) are an error in every mode.
        let broken = dir.file("broken")
        let copy = Harness.run(["/bin/sh", "-c", "mkdir \"$1\" && cp \"$2/ca-cert.pem\" \"$2/server-cert.pem\" \"$1/\" && echo junk > \"$1/server-key.pem\"",
                                "sh", broken, certs])
        XCTAssertEqual(copy.status, 0, copy.stderr)
        for mode in [[], ["--tls=on"]] {
            let bad = Harness.run([Harness.nbdkit, "-U", "-"] + mode + ["--tls-certificates=\(broken)", "memory", "1M", "--run", "touch \(marker)"])
            XCTAssertEqual(bad.status, 1, "\(mode): \(bad.stderr)")
            XCTAssertTrue(bad.stderr.contains("nbdkit: error: TLS certificates: \(broken)/server-"), bad.stderr)
        }
        let oldPSK = Harness.run([Harness.nbdkit, "-U", "-", "-o", "--tls-psk=\(dir.file("none.psk"))", "memory", "1M", "--run", "touch \(marker)"])
        XCTAssertEqual(oldPSK.status, 1, oldPSK.stderr)
        let psk = Harness.run([Harness.nbdkit, "-U", "-", "--tls=on", "--tls-psk=\(dir.file("none.psk"))", "memory", "1M", "--run", "touch \(marker)"])
        XCTAssertEqual(psk.status, 1)
        XCTAssertTrue(psk.stderr.contains("none.psk"), psk.stderr)
        let old = Harness.run([Harness.nbdkit, "-U", "-", "-o", "--tls=require", "--tls-certificates=\(certs)", "memory", "1M", "--run", "touch \(marker)"])
        XCTAssertEqual(old.status, 1)
        XCTAssertEqual(old.stderr, "nbdkit: cannot use oldstyle protocol (-o) and require TLS\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker))
        for mode in [["--tls=on"], []] {
            let plain = Harness.run([Harness.nbdkit, "-U", "-", "-o"] + mode + ["--tls-certificates=\(certs)", "memory", "1M",
                                    "--run", "echo \"[$tls]\"; nbdinfo --size \"$uri\""])
            XCTAssertEqual(plain.status, 0, plain.stderr)
            XCTAssertEqual(plain.stdout, "[1]\n1048576\n", "\(mode)")
        }
    }

    /// Without --tls, TLS is on (optional) when credentials load, as in nbdkit: with --tls-psk
    /// (both a PSK and a plaintext client connect), and with certificates in the default
    /// directory, $HOME/.pki/nbdkit for a user other than root (the server runs as nobody; needs
    /// root to switch). Certificates that don't load then leave TLS off without a word.
    func testTLSIsOnWithoutTheOptionWhenCredentialsLoad() throws {
        let psk = Harness.run([Harness.nbdkit, "-U", "-", "--tls-psk=\(pskFile)", "memory", "1M", "--run",
                               "echo \"[$tls]\"; nbdinfo --size \"nbds+unix://alice@/?socket=$unixsocket&tls-psk-file=\(pskFile)\"; nbdinfo --size \"$uri\""])
        XCTAssertEqual(psk.stdout, "[1]\n1048576\n1048576\n", psk.stderr)
        for directory in [dir.file("none"), ""] {
            let none = Harness.run([Harness.nbdkit, "-U", "-", "--tls-certificates=\(directory)", "memory", "1M", "--run", "echo \"[$tls]\""])
            XCTAssertEqual(none.stdout, "[]\n", none.stderr)
            XCTAssertEqual(none.stderr, "")
            XCTAssertEqual(none.status, 0)
        }

        guard getuid() == 0 else { throw XCTSkip("running the server as another user needs root") }
        // nbdkit ($2) as nobody, with HOME=$1 and $4... (more options) before the plugin; the
        // client trusts the CA in $3.
        let serveAsNobody = """
            home=$1 NBDKIT=$2; export CA=$3; shift 3
            chmod 755 "$(dirname "$home")"
            cd /
            exec setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME="$home" "$NBDKIT" -U - "$@" memory 1M \\
              --run 'echo "[$tls]"; nbdinfo --size "nbds+unix:///?socket=$unixsocket&tls-certificates=$CA" 2>/dev/null; nbdinfo --size "$uri"'
            """
        // The certificates of `subdirectory` of a new home owned by nobody, one of them (`key`)
        // root's and unreadable to nobody.
        func home(_ name: String, _ subdirectory: String, unreadableKey: Bool = false, unreadableCRL: Bool = false) -> String {
            let home = dir.file(name)
            let made = Harness.run(["/bin/sh", "-c", """
                set -e
                mkdir -p "$1/$2"
                cp "$3/ca-cert.pem" "$3/server-cert.pem" "$3/server-key.pem" "$1/$2/"
                chown -R nobody "$1"
                if [ "$4" = yes ]; then chown root "$1/$2/server-key.pem"; chmod 600 "$1/$2/server-key.pem"; fi
                if [ "$5" = yes ]; then echo junk > "$1/$2/ca-crl.pem"; chmod 600 "$1/$2/ca-crl.pem"; fi
                """, "sh", home, subdirectory, certs, unreadableKey ? "yes" : "no", unreadableCRL ? "yes" : "no"])
            XCTAssertEqual(made.status, 0, made.stderr)
            return home
        }
        // $HOME/.pki/nbdkit, else $HOME/.config/pki/nbdkit.
        for (name, subdirectory) in [("home", ".pki/nbdkit"), ("config", ".config/pki/nbdkit")] {
            let r = Harness.run(["/bin/sh", "-c", serveAsNobody, "sh", home(name, subdirectory), Harness.nbdkit, certs])
            XCTAssertEqual(r.stdout, "[1]\n1048576\n1048576\n", "\(subdirectory): \(r.stderr)")
        }
        // A key the server can't read is a missing certificate: TLS off, with a warning under
        // --tls=on (nbdkit's access(R_OK) test; it was a start-up error).
        let unreadable = home("unreadable", ".pki/nbdkit", unreadableKey: true)
        let quiet = Harness.run(["/bin/sh", "-c", serveAsNobody, "sh", unreadable, Harness.nbdkit, certs])
        XCTAssertEqual(quiet.stdout, "[]\n1048576\n", quiet.stderr)
        XCTAssertEqual(quiet.stderr, "")
        let warned = Harness.run(["/bin/sh", "-c", serveAsNobody, "sh", unreadable, Harness.nbdkit, certs, "--tls=on"])
        XCTAssertEqual(warned.stdout, "[]\n1048576\n", warned.stderr)
        XCTAssertTrue(warned.stderr.hasPrefix("nbdkit: warning: --tls=on but could not load TLS certificates (\(unreadable)/.pki/nbdkit/server-key.pem: Permission denied; \(unreadable)/.config/pki/nbdkit/ca-cert.pem: No such file or directory)"), warned.stderr)
        // A revocation list the server can't read is left out, as by nbdkit, but not silently
        // (revoked client certificates get in); TLS is on.
        let noCRL = home("nocrl", ".pki/nbdkit", unreadableCRL: true)
        let crl = Harness.run(["/bin/sh", "-c", serveAsNobody, "sh", noCRL, Harness.nbdkit, certs])
        XCTAssertEqual(crl.stdout, "[1]\n1048576\n1048576\n", crl.stderr)
        XCTAssertEqual(crl.stderr, "nbdkit: warning: \(noCRL)/.pki/nbdkit/ca-crl.pem: Permission denied: the certificate revocation list is not used, so revoked client certificates are not refused\n")
    }

    /// A relative --tls-psk path still works once the server is in the background (in /):
    /// GnuTLS reads the file again at each handshake, so it is made absolute first.
    func testRelativePSKPathInTheBackground() throws {
        let pid = dir.file("pid")
        let socket = dir.file("bg.sock")
        // Through Python, which passes no descriptors but 0-2 (Foundation's Process watches its
        // child through an inherited socket that the daemon would keep).
        let r = Harness.run(["/usr/bin/python3", "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[2:], cwd=sys.argv[1]))",
                             Self.pki.path, Harness.nbdkit, "--tls=require", "--tls-psk=keys.psk", "-P", pid, "-U", socket, "memory", "1M"],
                            timeout: 20)
        XCTAssertEqual(r.status, 0, r.stderr)
        defer {
            if let text = try? String(contentsOfFile: pid, encoding: .utf8), let n = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                kill(n, SIGTERM)
                // Gone before the test directory is removed (its socket and pid file with it).
                let deadline = Date().addingTimeInterval(10)
                while kill(n, 0) == 0 && Date() < deadline { usleep(20_000) }
            }
        }
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: pid) && Date() < deadline { usleep(20_000) }
        let info = Harness.run(["nbdinfo", "--size", "nbds+unix://alice@/?socket=\(socket)&tls-psk-file=\(pskFile)"])
        XCTAssertEqual(info.stdout, "1048576\n", info.stderr)
    }

    /// GnuTLS is loaded at run time, so a server whose libgnutls.so.30 can't be loaded says so
    /// at start-up and exits 1 (nbdkit, linked to it, would not start at all), while a server
    /// without TLS runs. The library is hidden by mounting /dev/null over it in a private mount
    /// namespace (needs root).
    func testUnloadableGnuTLSIsAStartupError() throws {
        guard getuid() == 0, Harness.run(["unshare", "-m", "true"]).status == 0 else {
            throw XCTSkip("needs root and unshare(CLONE_NEWNS) to hide libgnutls.so.30")
        }
        let marker = dir.file("ran")
        let r = Harness.run(["unshare", "-m", "/bin/sh", "-c", """
            lib=$(ldconfig -p | awk '/libgnutls.so.30 /{print $NF; exit}')
            [ -n "$lib" ] && mount --bind /dev/null "$lib" || { echo cannot hide the library; exit 99; }
            "$1" -U - memory 1M --run 'echo plain ok'
            "$1" -U - --tls=on --tls-psk="$2" memory 1M --run "touch $3"
            echo "status $?"
            """, "sh", Harness.nbdkit, pskFile, marker])
        XCTAssertNotEqual(r.status, 99, r.stdout)
        XCTAssertEqual(r.stdout, "plain ok\nstatus 1\n", r.stderr)
        XCTAssertTrue(r.stderr.hasPrefix("nbdkit: error: cannot load GnuTLS: "), r.stderr)
        XCTAssertTrue(r.stderr.contains("libgnutls.so.30"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker))
    }
}
