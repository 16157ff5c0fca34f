import XCTest

/// The command line: errors, informational options, and the captive `--run` basics.
final class CommandLineTests: IntegrationTestCase {
    func testErrorsGoToStderrWithStatus1() {
        let real = { (path: String) -> String in
            guard let p = realpath(path, nil) else { return path }
            defer { free(p) }
            return String(cString: p)
        }
        let fifo = real(dir.path) + "/fifo"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        let cases: [([String], String)] = [
            (["-f", "memory"], "nbdkit: error: you must specify size=<SIZE> on the command line"),
            (["-f", "memory", "size=abc"], "nbdkit: error: could not parse size string (abc)"),
            // As nbdkit, every value given for a key is checked, not only the last.
            (["-f", "memory", "size=bad", "size=1M"], "nbdkit: error: could not parse size string (bad)\n"),
            (["-f", "--filter=offset", "memory", "1M", "offset=-1", "offset=1k"], "nbdkit: error: size cannot be negative (-1)\n"),
            (["-f", "--filter=delay", "memory", "1M", "rdelay=x", "rdelay=1"], "nbdkit: error: delay: could not parse rdelay=x"),
            (["-f", "file", "file=\(dir.file("missing.img"))", "file=/dev/zero"], "nbdkit: error: realpath"),
            (["-f", "memory", "1G", "foo=bar"], "nbdkit: error: unknown parameter 'foo'"),
            (["-f", "--filter=exitwhen", "memory", "1M", "exit-when-process-exits=999999999"],
             "nbdkit: error: exit-when-process-exits: /proc/999999999/stat: No such file or directory\n"),
            (["-f", "/usr/lib/nbdkit/plugins/nbdkit-nosuch-plugin.so"], "nbdkit: error: cannot open plugin '/usr/lib/nbdkit/plugins/nbdkit-nosuch-plugin.so'"),
            (["-f", "nosuchplugin"], "nbdkit: error: cannot open plugin 'nosuchplugin'"),
            (["-f", "--filter=nosuch", "nosuchplugin"], "nbdkit: error: cannot open plugin 'nosuchplugin'"),
            (["-f", "-p", "notaport", "memory", "1M"], "nbdkit: error: getaddrinfo: <any>: notaport: Servname not supported"),
            // Stricter than nbdkit, whose getaddrinfo takes these (the last two as port 4464).
            (["-f", "-p", "", "memory", "1M"], "nbdkit: error: cannot parse port number ''"),
            (["-f", "-p", "+70000", "memory", "1M"], "nbdkit: error: cannot parse port number '+70000'"),
            (["-f", "-p", " 70000", "memory", "1M"], "nbdkit: error: cannot parse port number ' 70000'"),
            (["-f", "--vsock", "-p", "nbd", "memory", "1M"], "nbdkit: error: cannot parse port number 'nbd'"),
            (["-f", "-p", "70000", "memory", "1M"], "nbdkit: error: cannot parse port number '70000'"),
            (["-f", "--vsock", "-p", "4294967296", "memory", "1M"], "nbdkit: error: cannot parse port number '4294967296'"),
            (["-f", "file", dir.file("missing.img")], "nbdkit: error: realpath"),
            // -t as nbdkit_parse_unsigned reads it.
            (["-f", "-t", "5x", "memory", "1M"], "nbdkit: error: threads: could not parse number: \"5x\": trailing garbage\n"),
            (["-f", "-t", " -1", "memory", "1M"], "nbdkit: error: threads: negative numbers are not allowed\n"),
            (["-f", "-t", "", "memory", "1M"], "nbdkit: error: threads: empty string where we expected a number\n"),
            (["-f", "-t", "4294967296", "memory", "1M"],
             "nbdkit: error: threads: could not parse number: \"4294967296\": Numerical result out of range\n"),
            (["-f", "file", "file="], "nbdkit: error: cannot resolve a null or empty path\n"),
            (["-f", "file", "dir="], "nbdkit: error: cannot resolve a null or empty path\n"),
            (["-f", "file", "dir=\(fifo)"], "nbdkit: error: expecting a directory: \(fifo)\n"),
            // As nbdkit: only a regular file or a block device (a FIFO's open would wait).
            (["-f", "file", dir.path], "nbdkit: error: use dir= to serve files within \(real(dir.path))\n"),
            (["-f", "-r", "file", dir.path], "nbdkit: error: use dir= to serve files within \(real(dir.path))\n"),
            (["-f", "-r", "file", "/dev/null"], "nbdkit: error: file is not regular or block device: /dev/null\n"),
            (["-f", "-r", "file", fifo], "nbdkit: error: file is not regular or block device: \(fifo)\n"),
            (["-f", "--filter=nosuch", "memory", "1M"], "nbdkit: error: cannot open filter 'nosuch'"),
            (["-f", "memory", "1M", "=x"], "nbdkit: error: could not parse size string (=x)"),
            (["-f", "memory", "size=1M", "9x=1"], "nbdkit: error: could not parse size: unknown suffix 'x=1'"),
            (["-f", "example1", "x"], "nbdkit: error:"),
            // As nbdkit: these three without "error:".
            (["-f", "-U", dir.file("s"), "-p", "1", "memory", "1M"],
             "nbdkit: --dump-plugin, -p, --run, -s, -U or --vsock options cannot be used in this combination\n"),
            (["-f"], "nbdkit: no plugins given on the command line.\nUse 'nbdkit --help' or read the nbdkit(1) manual page for documentation.\n"),
            (["--dump-plugin"], "nbdkit: use 'nbdkit plugin --dump-plugin' or\n'nbdkit /path/to/plugin.so --dump-plugin' or\nif you want to find out about the server use --dump-config\n"),
            // With an unknown plugin or filter, --help and --version print nothing on stdout;
            // the plugin is checked first.
            (["--filter=nosuch", "memory", "--help"], "nbdkit: error: cannot open filter 'nosuch'"),
            (["nosuchplugin", "--help"], "nbdkit: error: cannot open plugin 'nosuchplugin'"),
            (["--filter=nosuch", "nosuchplugin", "--version"], "nbdkit: error: cannot open plugin 'nosuchplugin'"),
            (["-D", "file.zero", "-f", "memory", "1M"], "nbdkit: error: -D (Debug Flag) must have the format NAME.FLAG=N"),
            (["-D", ".zero=1", "-f", "memory", "1M"], "nbdkit: error: -D (Debug Flag) must have the format NAME.FLAG=N"),
            (["-D", "file.=1", "-f", "memory", "1M"], "nbdkit: error: -D (Debug Flag) must have the format NAME.FLAG=N"),
            (["-D", "file.zero=x", "-f", "memory", "1M"], "nbdkit: error: -D (Debug Flag) must have the format NAME.FLAG=N"),
            (["-Dfile=1.zero", "-f", "memory", "1M"], "nbdkit: error: -D (Debug Flag) must have the format NAME.FLAG=N"),
        ]
        for (args, message) in cases {
            let r = Harness.run([Harness.nbdkit] + args, timeout: 20)
            XCTAssertEqual(r.status, 1, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix(message), "\(args): \(r.stderr)")
            XCTAssertEqual(r.stdout, "", "\(args)")
        }
    }

    /// As nbdkit: an option it can't parse (unknown, ambiguous, missing its argument, or given
    /// one it doesn't take) is named on stderr after the program's name as it was run (getopt's
    /// argv[0]), and the synopsis (`--help`) goes to stdout, with status 1; the plugin is never
    /// loaded.
    func testOptionErrorsPrintTheSynopsis() {
        let help = Harness.run([Harness.nbdkit, "--help"]).stdout
        XCTAssertTrue(help.hasPrefix("nbdkit [-4|--ipv4-only]"), help)
        let cases: [([String], String)] = [
            (["--bogus", "memory", "1M"], "nbdkit: unrecognized option '--bogus'\n"),
            (["-Z", "memory", "1M"], "nbdkit: invalid option -- 'Z'\n"),
            (["memory", "1M", "-p"], "nbdkit: option requires an argument -- 'p'\n"),
            (["memory", "1M", "--unix"], "nbdkit: option '--unix' requires an argument\n"),
            (["--readonly=yes", "memory", "1M"], "nbdkit: option '--readonly' doesn't allow an argument\n"),
            (["--ex=x", "memory", "1M"],
             "nbdkit: option '--ex=x' is ambiguous; possibilities: '--exit-with-parent' '--export' '--export-name' '--exportname'\n"),
        ]
        for (args, message) in cases {
            let r = Harness.run([Harness.nbdkit] + args, timeout: 20)
            XCTAssertEqual(r.status, 1, "\(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix(Harness.nbdkit + message.dropFirst("nbdkit".count)), "\(args): \(r.stderr)")
            XCTAssertEqual(r.stdout, help, "\(args)")
        }
    }

    /// As nbdkit: a parameter is KEY=VALUE only when what precedes its first '=' can be a key
    /// (a letter, then letters, digits, '.', '_', '-'); anything else, anywhere, is a value for
    /// the plugin's magic key, and a later value wins. So a file name may contain '='.
    func testBareParametersGoToTheMagicKey() throws {
        let twice = Harness.run([Harness.nbdkit, "-U", "-", "memory", "1M", "2M", "--run", "nbdinfo --size \"$uri\""])
        XCTAssertEqual(twice.stdout, "2097152\n", twice.stderr)
        let path = dir.file("a=b.img")
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(count: 4096)))
        let file = Harness.run([Harness.nbdkit, "-U", "-", "file", path, "--run", "nbdinfo --size \"$uri\""])
        XCTAssertEqual(file.stdout, "4096\n", file.stderr)
    }

    func testSizeSuffixes() {
        for (size, bytes) in [("512", 512), ("1k", 1024), ("2K", 2048), ("1M", 1 << 20), ("1g", 1 << 30),
                              ("3s", 1536), ("1T", 1 << 40), ("10b", 10)] {
            let r = Harness.run([Harness.nbdkit, "-U", "-", "memory", size, "--run", "nbdinfo --size \"$uri\""])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stdout, "\(bytes)\n", size)
        }
    }

    /// -t takes what nbdkit takes: white space and '+' before the number, hexadecimal, octal.
    func testThreadCountsAsNbdkitReadsThem() {
        for threads in ["0x4", " 5", "+5", "010", "0", "4294967295"] {
            let r = Harness.run([Harness.nbdkit, "-t", threads, "-U", "-", "memory", "1M", "--run", "nbdinfo --size \"$uri\""])
            XCTAssertEqual(r.status, 0, "-t '\(threads)': \(r.stderr)")
            XCTAssertEqual(r.stdout, "1048576\n", threads)
        }
    }

    /// Scripts written for nbdkit may name a plugin or filter by the path of nbdkit's shared
    /// object for it: the built-in of that name serves.
    func testPluginsAndFiltersByNbdkitsPaths() {
        let r = Harness.run([Harness.nbdkit, "-U", "-",
                             "--filter=/usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-offset-filter.so",
                             "/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-memory-plugin.so", "1M", "offset=4k",
                             "--run", "nbdinfo --size \"$uri\""])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "1044480\n")
    }

    /// `--dump-plugin` prints nbdkit 1.32's lines for the plugin of the same name (scripts grep for
    /// `has_*`), less those about its shared object (`path=`, `struct_size=`, `has_unload`), the
    /// file plugin's `has_longname` and block-device ioctls, and the memory plugin's
    /// `has_get_ready`, which ours does not have; the memory plugin says `zstd=no` where
    /// Debian's nbdkit says `zstd=yes`.
    func testDumpPluginListsWhatNbdkitsPluginLists() {
        let head = "version=1.32.5\napi_version=2\nmax_thread_model=parallel\nthread_model=parallel\nerrno_is_preserved=1\n"
        let expected = [
            "memory": "name=memory\n" + head + "magic_config_key=size\n" + [
                "dump_plugin", "config", "config_complete", "config_help", "open", "get_size", "can_fast_zero", "can_fua",
                "can_multi_conn", "can_cache", "pread", "pwrite", "flush", "trim", "zero", "extents",
            ].map { "has_\($0)=1\n" }.joined() + "mlock=yes\nzstd=no\n",
            "file": "name=file\n" + head + "magic_config_key=file\n" + [
                "dump_plugin", "config", "config_complete", "config_help", "list_exports", "open", "close",
                "get_size", "can_write", "can_trim", "can_extents", "can_fua", "can_multi_conn", "can_cache",
                "pread", "pwrite", "flush", "trim", "zero", "extents", "cache",
            ].map { "has_\($0)=1\n" }.joined() + "file_falloc_fl_punch_hole=yes\nfile_falloc_fl_zero_range=yes\n",
            "null": "name=null\n" + head + "magic_config_key=size\n" + [
                "config", "config_help", "open", "get_size", "can_fast_zero", "can_fua", "can_multi_conn",
                "can_cache", "pread", "pwrite", "flush", "trim", "zero", "extents",
            ].map { "has_\($0)=1\n" }.joined(),
        ]
        for (plugin, text) in expected.sorted(by: { $0.key < $1.key }) {
            let dump = Harness.run([Harness.nbdkit, plugin, "--dump-plugin"])
            XCTAssertEqual(dump.status, 0, dump.stderr)
            XCTAssertEqual(dump.stdout, text, plugin)
        }
        // Parameters given are checked first, as nbdkit's plugin and filters check them; none
        // given is no error, even where serving would need one.
        for bad in [["memory", "size=xx"], ["memory", "1M", "bogus=1"], ["--filter=offset", "memory", "1M", "offset=x"],
                    ["file", dir.file("missing")]] {
            let r = Harness.run([Harness.nbdkit] + bad + ["--dump-plugin"])
            XCTAssertEqual(r.status, 1, "\(bad)")
            XCTAssertEqual(r.stdout, "", "\(bad)")
            XCTAssertTrue(r.stderr.hasPrefix("nbdkit: error: "), r.stderr)
        }
        let good = Harness.run([Harness.nbdkit, "--filter=offset", "memory", "1M", "offset=512", "--dump-plugin"])
        XCTAssertEqual(good.stdout, expected["memory"], good.stderr)
        // As nbdkit, which does not complete the configuration here: a required parameter
        // missing beside ones given is no error either (it was), nor a file that can't be
        // served or a disk that does not fit.
        for partial in [["memory", "allocator=malloc"], ["--filter=offset", "memory", "offset=1M"], ["file", "cache=none"],
                        ["--filter=tar", "memory", "1M"], ["file", "/dev/null"], ["memory", "1E", "allocator=malloc"]] {
            let r = Harness.run([Harness.nbdkit] + partial + ["--dump-plugin"])
            XCTAssertEqual(r.status, 0, "\(partial): \(r.stderr)")
            XCTAssertTrue(r.stdout.hasPrefix("name="), "\(partial)")
        }
        // Nor is anything completed: no memory disk is made (and locked), no file opened.
        let image = dir.file("image")
        XCTAssertTrue(FileManager.default.createFile(atPath: image, contents: Data(count: 512)))
        for (arguments, call) in [(["memory", "64M", "allocator=malloc,mlock=true"], "memfd_create"), (["file", image], "openat")] {
            let traced = Harness.run(["strace", "-f", "-e", "trace=\(call)", Harness.nbdkit] + arguments + ["--dump-plugin"])
            XCTAssertEqual(traced.status, 0, traced.stderr)
            // (The path as opened is resolved: no "//" as in the test directory's.)
            XCTAssertFalse(traced.stderr.contains("memfd_create(") || traced.stderr.contains("/image\""), traced.stderr)
        }
        // The filters in front do not change it (as nbdkit).
        let filtered = Harness.run([Harness.nbdkit, "--filter=offset", "--filter=noextents", "memory", "--dump-plugin"])
        XCTAssertEqual(filtered.stdout, expected["memory"], filtered.stderr)
    }

    /// As nbdkit, which checks required parameters only once it has read them all: a parameter
    /// nobody knows is reported before a missing required one (which it used to hide), and of
    /// the missing ones the outermost filter's comes first.
    func testUnknownParametersAreReportedBeforeMissingOnes() {
        for (arguments, message) in [
            (["memory", "foo=1"], "nbdkit: error: unknown parameter 'foo'\n"),
            (["--filter=tar", "memory", "foo=1"], "nbdkit: error: unknown parameter 'foo'\n"),
            (["file", "cache=none", "foo=1"], "nbdkit: error: unknown parameter 'foo'\n"),
            (["memory"], "nbdkit: error: you must specify size=<SIZE> on the command line\n"),
            (["--filter=tar", "memory"], "nbdkit: error: you must supply the tar-entry=<FILENAME> parameter\n"),
            // What nbdkit checks only then (the allocator, the file) comes after both.
            (["memory", "allocator=bogus"], "nbdkit: error: you must specify size=<SIZE> on the command line\n"),
            (["memory", "allocator=bogus", "foo=1"], "nbdkit: error: unknown parameter 'foo'\n"),
            (["--filter=tar", "memory", "allocator=bogus"], "nbdkit: error: you must supply the tar-entry=<FILENAME> parameter\n"),
            (["memory", "1M", "allocator=bogus"], "nbdkit: error: unknown allocator \"bogus\"\n"),
            (["file", "/dev/null", "foo=1"], "nbdkit: error: unknown parameter 'foo'\n"),
        ] {
            let r = Harness.run([Harness.nbdkit, "-U", "-"] + arguments + ["--run", "echo ran"])
            XCTAssertEqual(r.status, 1, "\(arguments)")
            XCTAssertEqual(r.stdout, "", "\(arguments)")
            XCTAssertEqual(r.stderr, message, "\(arguments)")
        }
        // Every parameter is checked before any disk is made: none here, for a 64 MiB locked one.
        let traced = Harness.run(["strace", "-f", "-e", "trace=memfd_create", Harness.nbdkit, "-U", "-", "memory", "64M",
                                  "allocator=malloc,mlock=true", "foo=1", "--run", "true"])
        XCTAssertEqual(traced.status, 1)
        XCTAssertFalse(traced.stderr.contains("memfd_create("), traced.stderr)
        XCTAssertTrue(traced.stderr.contains("nbdkit: error: unknown parameter 'foo'\n"), traced.stderr)
    }

    func testInformationalOptions() {
        let help = Harness.run([Harness.nbdkit, "--help"])
        XCTAssertEqual(help.status, 0)
        XCTAssertTrue(help.stdout.contains("--exportname"))
        XCTAssertTrue(help.stdout.contains("memory"))
        let version = Harness.run([Harness.nbdkit, "--version"])
        XCTAssertTrue(version.stdout.hasPrefix("nbdkit 1."), version.stdout)
        // As nbdkit: with a plugin, a line for each filter, then one for the plugin.
        let withPlugin = Harness.run([Harness.nbdkit, "--version", "--filter=offset", "--filter=delay", "memory"])
        XCTAssertEqual(withPlugin.stdout.split(separator: "\n").dropFirst(), ["offset 1.32.5", "delay 1.32.5", "memory 1.32.5"])
        let unknown = Harness.run([Harness.nbdkit, "--version", "nosuch"])
        XCTAssertEqual(unknown.status, 1)
        XCTAssertEqual(unknown.stdout, "")
        XCTAssertTrue(unknown.stderr.hasPrefix("nbdkit: error: cannot open plugin 'nosuch'"), unknown.stderr)
        let config = Harness.run([Harness.nbdkit, "--dump-config"])
        XCTAssertTrue(config.stdout.contains("version_major=1\n"), config.stdout)
        XCTAssertTrue(config.stdout.contains("\nselinux=yes\nsysconfdir=/etc\ntls=yes\n"), config.stdout)
        XCTAssertTrue(config.stdout.contains("\nroot_tls_certificates_dir=/etc/pki/nbdkit\n"), config.stdout)
        XCTAssertTrue(config.stdout.hasSuffix("\nversion_minor=32\nzstd=no\n"), config.stdout)
        let binary = config.stdout.split(separator: "\n").first { $0.hasPrefix("binary=") }.map { String($0.dropFirst(7)) } ?? ""
        XCTAssertTrue(config.stdout.contains("\nbindir=\((binary as NSString).deletingLastPathComponent)\n"), config.stdout)
        let keys = config.stdout.split(separator: "\n").map { $0.split(separator: "=")[0] }
        XCTAssertEqual(keys, keys.sorted(), "keys sorted as nbdkit sorts them")
        XCTAssertTrue(config.stdout.contains("binary=\(Harness.nbdkit)"), config.stdout)
        XCTAssertEqual(Harness.run([Harness.nbdkit, "--filter=nosuch", "null", "--dump-plugin"]).status, 1)
        // As in nbdkit, these three act as soon as they are read; --help wins over --version,
        // which wins over --dump-plugin, in either order.
        for (arguments, start) in [(["--long-options", "--bogus"], "--ipv4-only\n"), (["--short-options", "-p"], "-4\n"),
                                   (["--dump-config", "--bogus"], "binary="), (["--version", "--help"], "nbdkit [-4"),
                                   (["--help", "--version"], "nbdkit [-4"), (["--dump-plugin", "--version", "null"], "nbdkit 1."),
                                   (["--version", "--dump-plugin", "null"], "nbdkit 1.")] {
            let r = Harness.run([Harness.nbdkit] + arguments)
            XCTAssertEqual(r.status, 0, "\(arguments): \(r.stderr)")
            XCTAssertTrue(r.stdout.hasPrefix(start), "\(arguments): \(r.stdout)")
        }
        // Exactly what nbdkit 1.32 prints, in its order.
        let short = Harness.run([Harness.nbdkit, "--short-options"]).stdout
        XCTAssertEqual(short, "-4 -6 -D -e -f -g -i -n -o -p -P -r -s -t -u -U -v -V".replacingOccurrences(of: " ", with: "\n") + "\n")
        let long = Harness.run([Harness.nbdkit, "--long-options"]).stdout
        XCTAssertEqual(long, """
            --ipv4-only --ipv6-only --debug --dump-config --dump-plugin --exit-with-parent --export
            --export-name --exportname --filter --foreground --no-fork --group --help --ip-addr --ipaddr
            --log --mask-handshake --new-style --newstyle --no-sr --old-style --oldstyle --pid-file
            --pidfile --port --read-only --readonly --run --selinux-label --single --stdin --swap
            --threads --tls --tls-certificates --tls-psk --tls-verify-peer --unix --user --verbose
            --version --vsock
            """.split(whereSeparator: { $0 == " " || $0 == "\n" }).joined(separator: "\n") + "\n")
    }

    /// --tls takes what nbdkit takes: require(d) or force in any case, else any nbdkit boolean for on and
    /// off (y, T, 1, n...); anything else (2, maybe) is "could not decipher boolean".
    func testTLSModeSpellings() throws {
        let psk = dir.file("keys.psk")
        try "alice:00112233445566778899aabbccddeeff\n".write(toFile: psk, atomically: true, encoding: .utf8)
        for (value, expected) in [("y", "1"), ("T", "1"), ("1", "1"), ("REQUIRE", "2"), ("Required", "2"), ("force", "2"),
                                  ("n", "unset"), ("Off", "unset")] {
            let r = Harness.run([Harness.nbdkit, "-U", "-", "--tls=\(value)", "--tls-psk=\(psk)", "null", "1M",
                                 "--run", "echo ${tls-unset}"])
            XCTAssertEqual(r.status, 0, "--tls=\(value): \(r.stderr)")
            XCTAssertEqual(r.stdout, expected + "\n", "--tls=\(value)")
        }
        for value in ["2", "maybe"] {
            let r = Harness.run([Harness.nbdkit, "-U", "-", "--tls=\(value)", "null", "1M", "--run", "true"])
            XCTAssertEqual(r.status, 1, value)
            XCTAssertEqual(r.stderr, "nbdkit: error: could not decipher boolean (\(value))\n")
        }
    }

    func testRunVariablesAndURIs() {
        let r = Harness.run([Harness.nbdkit, "-U", "-", "memory", "1M", "--run",
                             "echo \"$uri|$nbd|$port|$unixsocket|$exportname|${tls-unset}\""])
        XCTAssertEqual(r.status, 0, r.stderr)
        let fields = r.stdout.dropLast().split(separator: "|", omittingEmptySubsequences: false).map(String.init)
        XCTAssertEqual(fields.count, 6)
        XCTAssertTrue(fields[0].hasPrefix("nbd+unix://?socket=/"), fields[0])
        XCTAssertTrue(fields[0].hasSuffix("/socket"), fields[0])
        XCTAssertEqual(fields[0], fields[1])
        XCTAssertEqual(fields[2], "")
        XCTAssertEqual("nbd+unix://?socket=" + fields[3], fields[0])
        XCTAssertEqual(fields[4], "")
        XCTAssertEqual(fields[5], "unset")
        // The private directory is gone afterwards.
        let socketDir = (fields[3] as NSString).deletingLastPathComponent
        XCTAssertFalse(FileManager.default.fileExists(atPath: socketDir), socketDir)
    }

    func testRunWithSpecialExportNameReachesTheServer() {
        let name = "my disk/a?b#c%d'e\"f$g€"
        let socket = dir.file("odd socket")
        let r = Harness.run([Harness.nbdkit, "-U", socket, "-e", name, "memory", "1M", "--run",
                             "printf '%s\\n' \"$uri\" \"$exportname\"; nbdsh -u \"$uri\" -c 'print(h.get_export_name())'"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 3, r.stdout)
        XCTAssertEqual(lines.first, "nbd+unix:///my%20disk/a%3Fb%23c%25d%27e%22f%24g%E2%82%AC?socket=\(socket.replacingOccurrences(of: " ", with: "%20"))")
        XCTAssertEqual(lines.dropFirst().first, name)
        XCTAssertEqual(lines.last, name)
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket), "socket removed at exit")
    }

    func testRunOverTCP() {
        let port = String(20000 + Int(getpid() % 20000))
        let r = Harness.run([Harness.nbdkit, "-i", "127.0.0.1", "-p", port, "memory", "1M", "--run",
                             "echo \"$uri|$port\"; nbdinfo --size \"$uri\""])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "nbd://localhost:\(port)|\(port)\n1048576\n")
    }

    /// On a machine whose only addresses are loopback (here a network namespace of its own
    /// with only lo up), the server listens on every address of each family, as nbdkit does:
    /// with -4 and neither a client reaches it at `$uri`, with -6 at ::1 (port 10809, free in
    /// the new namespace). (getaddrinfo's AI_ADDRCONFIG found no address there to listen on.)
    func testTCPListensWhereOnlyLoopbackIsUp() throws {
        guard getuid() == 0, Harness.run(["unshare", "-n", "true"]).status == 0 else {
            throw XCTSkip("needs root and unshare(CLONE_NEWNET) for a network with only loopback")
        }
        let r = Harness.run(["unshare", "-n", "/bin/sh", "-c", """
            ip link set lo up || exit 99
            for family in -4 ""; do
                "$0" $family memory 1M --run 'nbdinfo --size "$uri"' || exit 1
            done
            "$0" -6 memory 1M --run 'nbdinfo --size "nbd://[::1]"' || exit 1
            """, Harness.nbdkit])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "1048576\n1048576\n1048576\n")
    }

    /// `-p` takes a service name, which getaddrinfo looks up in /etc/services: `$port` and
    /// `$uri` then carry the number bound.
    func testPortByServiceName() throws {
        let services = (try? String(contentsOfFile: "/etc/services", encoding: .utf8)) ?? ""
        try XCTSkipUnless(services.split(separator: "\n").contains { $0.hasPrefix("nbd\t") && $0.contains("10809/tcp") },
                          "/etc/services has no nbd entry (make deps installs Debian's netbase)")
        let probe = Harness.run(["/usr/bin/python3", "-c", "import socket; socket.socket().bind(('127.0.0.1', 10809))"])
        try XCTSkipIf(probe.status != 0, "port 10809 is taken: \(probe.stderr)")
        let r = Harness.run([Harness.nbdkit, "-i", "127.0.0.1", "-p", "nbd", "memory", "1M", "--run",
                             "echo \"$uri|$port\"; nbdinfo --size \"$uri\""])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "nbd://localhost:10809|10809\n1048576\n")
    }

    func testRunExitStatuses() {
        XCTAssertEqual(Harness.run([Harness.nbdkit, "-U", "-", "null", "--run", "exit 3"]).status, 3)
        let killed = Harness.run([Harness.nbdkit, "-U", "-", "null", "--run", "kill -9 $$"])
        XCTAssertEqual(killed.status, 137)
        XCTAssertTrue(killed.stderr.contains("killed by signal 9"), killed.stderr)
        XCTAssertEqual(Harness.run([Harness.nbdkit, "-U", "-", "null", "--run", "true"]).status, 0)
    }

    /// Debug flags in nbdkit's NAME.FLAG=N form that nbdkit 1.32 defines (its server's, and its
    /// memory and file plugins') are accepted without a word (and have no effect here).
    func testKnownDebugFlagsAreAccepted() {
        let r = Harness.run([Harness.nbdkit, "-D", "nbdkit.backend.datapath=0", "-D", "nbdkit.backend.controlpath=0",
                             "--debug=nbdkit.tls.log=-1", "-D", "nbdkit.tls.session=1", "-D", "memory.dir=1",
                             "-U", "-", "memory", "1M", "--run", "nbdinfo --size \"$uri\""])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "1048576\n")
        XCTAssertEqual(r.stderr, "")
        let disk = dir.file("disk.img")
        XCTAssertEqual(Harness.run(["truncate", "-s", "1M", disk]).status, 0)
        let f = Harness.run([Harness.nbdkit, "-D", "file.zero=0x1", "-U", "-", "file", disk,
                             "--run", "nbdinfo --size \"$uri\""])
        XCTAssertEqual(f.stdout, "1048576\n", f.stderr)
        XCTAssertEqual(f.stderr, "")
    }

    /// Any other flag gets nbdkit's warning, once for each -D, in nbdkit's order, and the server
    /// runs: one naming the plugin, a filter (innermost first) or the server says there is no
    /// such variable in it; one naming nothing loaded (file.zero without the file plugin) says
    /// it was not used. Also with --dump-plugin and --version with a plugin; without a plugin
    /// nothing is loaded and nothing is said.
    func testUnknownDebugFlagsAreWarnedAbout() {
        let r = Harness.run([Harness.nbdkit, "-D", "foo.bar=1", "--debug=foo.bar=2", "-D", "nbdkit.bogus=1",
                             "-D", "offset.x.y=1", "-D", "noextents.a=1", "-D", "memory.z=2", "-D", "file.zero=1",
                             "--filter=offset", "--filter=noextents",
                             "-U", "-", "memory", "1M", "--run", "nbdinfo --size \"$uri\""])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "1048576\n")
        XCTAssertEqual(r.stderr, """
        nbdkit: warning: -D memory.z: memory does not contain a global variable called memory_debug_z
        nbdkit: warning: -D noextents.a: noextents does not contain a global variable called noextents_debug_a
        nbdkit: warning: -D offset.x.y: offset does not contain a global variable called offset_debug_x_y
        nbdkit: warning: -D nbdkit.bogus: nbdkit does not contain a global variable called nbdkit_debug_bogus
        nbdkit: warning: debug flag -D foo.bar was not used
        nbdkit: warning: debug flag -D foo.bar was not used
        nbdkit: warning: debug flag -D file.zero was not used

        """)
        for action in [["memory", "--dump-plugin"], ["memory", "--version"]] {
            let a = Harness.run([Harness.nbdkit, "-D", "foo.bar=1"] + action)
            XCTAssertEqual(a.status, 0, a.stderr)
            XCTAssertEqual(a.stderr, "nbdkit: warning: debug flag -D foo.bar was not used\n", "\(action)")
        }
        for action in [["--version"], ["--dump-config"]] {
            let a = Harness.run([Harness.nbdkit, "-D", "foo.bar=1", "-D", "nbdkit.c=1"] + action)
            XCTAssertEqual(a.status, 0, a.stderr)
            XCTAssertEqual(a.stderr, "", "\(action)")
        }
    }

    /// --log=null drops errors, but -v's debug messages and the debug flags' warnings still go
    /// to stderr, as nbdkit's (also under --log=syslog).
    func testLogNullKeepsDebugMessagesOnStderr() {
        let failed = Harness.run([Harness.nbdkit, "--log=null", "-D", "foo.bar=1", "-U", "-", "memory", "1M", "bogus=1",
                                  "--run", "true"])
        XCTAssertEqual(failed.status, 1)
        XCTAssertEqual(failed.stderr, "nbdkit: warning: debug flag -D foo.bar was not used\n")
        for log in ["null", "syslog"] {
            let r = Harness.run([Harness.nbdkit, "-v", "--log=\(log)", "-U", "-", "memory", "1M",
                                 "--run", "nbdinfo --size \"$uri\""])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stdout, "1048576\n")
            // Labelled as nbdkit's debug lines, options by their protocol names.
            XCTAssertTrue(r.stderr.contains("nbdkit: memory[1]: debug: new connection\n"), r.stderr)
            XCTAssertTrue(r.stderr.contains("nbdkit: memory[1]: debug: newstyle negotiation: NBD_OPT_GO length "), r.stderr)
        }
    }

    func testCommandNeverRunsWhenServerCannotStart() {
        let marker = dir.file("ran")
        let r = Harness.run([Harness.nbdkit, "-U", "-", "file", dir.file("missing"), "--run", "touch \(marker)"])
        XCTAssertEqual(r.status, 1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker))
    }

    /// Where SELinux is off (this machine), setting the label of new sockets fails, so
    /// `--selinux-label` with a listening socket is a start-up error, as in nbdkit: status 1, no
    /// socket, no temporary directory, no command run. With `-s` there is no socket to label and
    /// the option is ignored.
    func testSELinuxLabelWithoutSELinuxIsAStartupError() throws {
        try XCTSkipIf(FileManager.default.fileExists(atPath: "/sys/fs/selinux/enforce"), "SELinux is on here")
        let label = "--selinux-label=system_u:object_r:svirt_socket_t:s0"
        let marker = dir.file("ran")
        let socket = dir.file("sock")
        let temporary = dir.file("tmp")
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: false)
        for listen in [["-U", socket], ["-U", "-"], ["-i", "127.0.0.1", "-p", String(Harness.freePort())]] {
            let r = Harness.run(["/usr/bin/env", "TMPDIR=\(temporary)", Harness.nbdkit, label] + listen
                                + ["memory", "1M", "--run", "touch \(marker)"])
            XCTAssertEqual(r.status, 1, "\(listen)")
            XCTAssertTrue(r.stderr.hasPrefix("nbdkit: error: \(label): cannot set the label of new sockets: "), r.stderr)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker))
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: temporary), [])
        let single = Harness.run(["/usr/bin/nbdsh", "-c", """
        h.connect_command(['\(Harness.nbdkit)', '-s', '\(label)', 'memory', '1M'])
        print(h.get_size())
        """])
        XCTAssertEqual(single.stdout, "1048576\n", single.stderr)
    }

    /// `--vsock` listens on an AF_VSOCK port (while it runs, nothing else can bind that port,
    /// and once it has exited the port is free again) and hands `--run` an nbd+vsock URI, as
    /// nbdkit does; it refuses -U and -s. (No client connects: this machine has no vsock
    /// loopback transport, so the data path over vsock is not tested.)
    func testVSockListensAndHandsTheCommandItsURI() throws {
        // vsock ports are 32 bits: one above TCP's range.
        let port = Int.random(in: 100_000...1_000_000)
        let bindPort = "import socket, sys; s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); s.bind((socket.VMADDR_CID_ANY, \(port)))"
        let probe = "try:\n    exec(sys.argv[1])\n    print('free')\nexcept OSError as e:\n    print(e.strerror)"
        let r = Harness.run([Harness.nbdkit, "--vsock", "-p", String(port), "-e", "a b", "memory", "1M", "--run",
                             "echo \"$uri|$nbd|$port|$unixsocket\"; /usr/bin/python3 -c \"import sys\n\(probe)\" '\(bindPort)'"])
        if r.stderr.contains("Address family not supported") { throw XCTSkip("no AF_VSOCK here: \(r.stderr)") }
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "nbd+vsock://1:\(port)/a%20b|nbd+vsock://1:\(port)/a%20b|\(port)|\nAddress already in use\n")
        let after = Harness.run(["/usr/bin/python3", "-c", "import sys\n" + probe, bindPort])
        XCTAssertEqual(after.stdout, "free\n", after.stderr)
        for other in [["-U", dir.file("sock")], ["-s"]] {
            let refused = Harness.run([Harness.nbdkit, "--vsock"] + other + ["memory", "1M"])
            XCTAssertEqual(refused.status, 1)
            XCTAssertEqual(refused.stderr, "nbdkit: --dump-plugin, -p, --run, -s, -U or --vsock options cannot be used in this combination\n")
        }
    }

    /// As nbdkit: with the port taken on IPv4 only, the server listens on IPv6 and serves there;
    /// with it taken on both, start-up fails (status 1) and the command is not run.
    func testPortTakenOnOneAddressFamilyOnly() throws {
        let r = Harness.run(["/usr/bin/python3", "-c", """
        import socket, subprocess, sys
        nbdkit, marker = sys.argv[1], sys.argv[2]
        v4 = socket.socket(socket.AF_INET)
        v4.bind(('0.0.0.0', 0))
        v4.listen()
        port = v4.getsockname()[1]
        r = subprocess.run([nbdkit, '-p', str(port), 'memory', '1M', '--run',
                            'echo "$port"; nbdinfo --size "nbd://[::1]:$port"'], capture_output=True, text=True, timeout=30)
        print(r.returncode, r.stdout.split() == [str(port), '1048576'], r.stderr)
        v6 = socket.socket(socket.AF_INET6)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # The first server's connection may linger in TIME_WAIT on this port.
        v6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        v6.bind(('::', port))
        v6.listen()
        r = subprocess.run([nbdkit, '-p', str(port), 'memory', '1M', '--run', 'touch ' + marker],
                           capture_output=True, text=True, timeout=30)
        print(r.returncode, r.stderr.strip())
        """, Harness.nbdkit, dir.file("ran")])
        let lines = r.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "0 True ", r.stdout + r.stderr)
        XCTAssertTrue(lines.count > 1 && lines[1].hasPrefix("1 nbdkit: error: unable to bind to any sockets on port "), r.stdout + r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.file("ran")))
    }

    func testSingleModeOnStdio() throws {
        // -s serves one client on stdin/stdout: nbdsh can drive it through a subprocess.
        let r = Harness.run(["/usr/bin/nbdsh", "-c", """
        h.connect_command(['\(Harness.nbdkit)', '-s', 'memory', '1M'])
        h.pwrite(b'hi', 0)
        assert h.pread(2, 0) == b'hi'
        print(h.get_size())
        """])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "1048576\n")
    }

    /// -s: a terminating signal, or the SIGTERM --exit-with-parent arranges when the parent
    /// dies, shuts the connection down as for any server: requests get ESHUTDOWN and the
    /// server exits once the client leaves or the grace is over (it served on, signals unread).
    func testSingleModeShutsDownOnSignals() throws {
        for (signal, parentDies) in [("SIGTERM", false), ("SIGINT", false), ("SIGKILL", true)] {
            let r = Harness.run(["/usr/bin/nbdsh", "-c", """
            import errno, os, signal, subprocess, time
            # With parentDies, a shell between: the server's parent, killed here. (The socket
            # passed on through fd 3: a background job's stdin is /dev/null otherwise.)
            argv = ['\(Harness.nbdkit)', '-s', '--exit-with-parent', 'memory', '1M']
            h.connect_command(['/bin/sh', '-c', 'exec 3<&0; "$@" <&3 3<&- & wait', 'sh'] + argv if \(parentDies ? "True" : "False") else argv)
            assert h.pread(2, 0) == b'\\0\\0'
            target = int(subprocess.check_output(['pgrep', '-f', '^/bin/sh -c', '-P', str(os.getpid())]).split()[0]) if \(parentDies ? "True" : "False") else 0
            server = int(subprocess.check_output(['pgrep', '-f', '^\(Harness.nbdkit) -s', '-P', str(target or os.getpid())]).split()[0])
            os.kill(target or server, signal.\(signal))
            deadline = time.monotonic() + 10
            while True:
                try:
                    h.pread(2, 0)
                except nbd.Error as e:
                    print('error', errno.errorcode.get(e.errno, e.errno))
                    break
                assert time.monotonic() < deadline, 'requests still served 10 s after the signal'
                time.sleep(0.02)
            h.shutdown()
            def state():
                try: return [l for l in open('/proc/%d/status' % server) if l.startswith('State:')][0].split()[1]
                except FileNotFoundError: return 'gone'
            while state() not in ('Z', 'gone'):
                assert time.monotonic() < deadline, 'still running after its client left'
                time.sleep(0.02)
            print('exited')
            """], timeout: 30)
            XCTAssertEqual(r.stdout, "error ESHUTDOWN\nexited\n", "\(signal): \(r.stderr)")
        }
    }

    /// As nbdkit, with its message and status 1: -s with another place to listen, a --run
    /// command, or --dump-plugin (which ours printed, exit 0).
    func testSingleModeRefusesOtherModes() {
        for other in [["-p", "10809"], ["-U", dir.file("sock")], ["--run", "true"], ["--dump-plugin"]] {
            let r = Harness.run([Harness.nbdkit, "-s"] + other + ["null"], stdin: Data())
            XCTAssertEqual(r.status, 1, "\(other)")
            XCTAssertEqual(r.stdout, "", "\(other)")
            XCTAssertEqual(r.stderr, "nbdkit: --dump-plugin, -p, --run, -s, -U or --vsock options cannot be used in this combination\n")
        }
    }

    /// As nbdkit (and with its message): -s needs its standard input and output (closed ones
    /// were served as /dev/null).
    func testSingleModeRefusesClosedStandardStreams() {
        for redirection in ["<&-", "</dev/null >&-"] {
            let r = Harness.shell("exec '\(Harness.nbdkit)' -s memory 1M \(redirection)", timeout: 20)
            XCTAssertEqual(r.status, 1, redirection)
            XCTAssertEqual(r.stderr, "expecting stdin/stdout to be opened: Bad file descriptor\n", redirection)
        }
    }

    /// -s over pipes (as under ssh), not a socket: a write refused as out of range, whose
    /// payload arrives after its header, gets ENOSPC and the connection goes on.
    func testSingleModeOverPipesSkipsARefusedPayload() throws {
        let r = Harness.run(["/usr/bin/python3", "-c", """
        import struct, subprocess, sys, time
        p = subprocess.Popen([sys.argv[1], '-s', 'memory', '1M'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        def send(b): p.stdin.write(b); p.stdin.flush()
        def recv(n):
            b = b''
            while len(b) < n:
                c = p.stdout.read(n - len(b)); assert c, 'eof'; b += c
            return b
        def request(command, cookie, offset, length):
            return struct.pack('>IHHQQI', 0x25609513, 0, command, cookie, offset, length)
        recv(18); send(struct.pack('>I', 3))
        send(b'IHAVEOPT' + struct.pack('>II', 1, 0))                  # EXPORT_NAME ""
        assert struct.unpack('>Q', recv(10)[:8])[0] == 1 << 20
        send(request(1, 1, 1 << 20, 1 << 20)); time.sleep(0.3); send(bytes(1 << 20))
        assert recv(16) == struct.pack('>IIQ', 0x67446698, 28, 1)
        send(request(0, 2, 0, 512))
        assert recv(16 + 512) == struct.pack('>IIQ', 0x67446698, 0, 2) + bytes(512)
        send(request(2, 3, 0, 0)); p.stdin.close()
        assert p.wait(timeout=10) == 0
        print('ok')
        """, Harness.nbdkit], timeout: 30)
        XCTAssertEqual(r.stdout, "ok\n", r.stderr)
    }

    /// -s over pipes: SIGTERM (as the parent's death under --exit-with-parent) ends a server
    /// whose client holds its pipes open and sends nothing, after the grace, as on a socket:
    /// a read waiting on a pipe, which shutdown() can't end, waited for the client (as in
    /// nbdkit), so the server outlived the signal for as long as the client kept the pipe.
    func testSingleModeOverPipesEndsOnSIGTERMWithAnIdleClient() throws {
        let r = Harness.run(["/usr/bin/python3", "-c", """
        import signal, struct, subprocess, sys, time
        p = subprocess.Popen([sys.argv[1], '-s', 'memory', '1M'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        def recv(n):
            b = b''
            while len(b) < n:
                c = p.stdout.read(n - len(b)); assert c, 'eof'; b += c
            return b
        recv(18); p.stdin.write(struct.pack('>I', 3) + b'IHAVEOPT' + struct.pack('>II', 1, 0)); p.stdin.flush()
        assert struct.unpack('>Q', recv(10)[:8])[0] == 1 << 20        # EXPORT_NAME "": transmission
        start = time.monotonic()
        p.send_signal(signal.SIGTERM)
        try:
            status = p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill(); sys.exit('still running 15 s after SIGTERM')
        print(status, round(time.monotonic() - start))
        """, Harness.nbdkit], timeout: 40)
        XCTAssertEqual(r.stdout, "0 5\n", r.stderr)
    }

    /// -P opens its path in place, as nbdkit: a symlink is written through and a device is
    /// written to, and both are left as they were at exit (the pid file was a new file renamed
    /// over the path and removed at exit, which turned a /dev/null into a file and deleted it).
    /// A pid file that is still the server's is removed at exit; one rewritten since is left.
    func testPidFileIsWrittenInPlace() throws {
        func kind(_ path: String) -> mode_t? {
            var st = stat()
            return lstat(path, &st) == 0 ? st.st_mode & S_IFMT : nil
        }
        // (The pid file is there when the --run command starts.)
        func whenWritten(_ path: String, _ then: String) -> String { "test -s \(path) && \(then)" }
        let target = dir.file("target"), link = dir.file("link")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        var r = Harness.run([Harness.nbdkit, "-P", link, "-U", "-", "null", "--run", whenWritten(target, "cat \(target)")])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertNotNil(Int32(r.stdout.trimmingCharacters(in: .newlines)), "the pid through the link: \(r.stdout)")
        XCTAssertEqual(kind(link), S_IFLNK, "the symlink was replaced or removed")
        let device = dir.file("null")
        // (As root, where the test directory allows device nodes: not on a nodev mount.)
        if getuid() == 0, Harness.run(["mknod", "-m", "666", device, "c", "1", "3"]).status == 0,
           FileManager.default.isWritableFile(atPath: device), Harness.run(["/bin/sh", "-c", "echo > \(device)"]).status == 0 {
            r = Harness.run([Harness.nbdkit, "-P", device, "-U", "-", "null", "--run", "test -c \(device)"])
            XCTAssertEqual(r.status, 0, "the device was replaced: \(r.stderr)")
            XCTAssertEqual(kind(device), S_IFCHR, "the device was replaced or removed")
        }
        let own = dir.file("own.pid")
        r = Harness.run([Harness.nbdkit, "-P", own, "-U", "-", "null", "--run", whenWritten(own, "test -s \(own)")])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertNil(kind(own), "the server's own pid file is removed at exit")
        r = Harness.run([Harness.nbdkit, "-P", own, "-U", "-", "null", "--run", whenWritten(own, "echo other > \(own)")])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try String(contentsOfFile: own, encoding: .utf8), "other\n", "a rewritten pid file is left")
    }

    /// As nbdkit, the server sets its umask to 022 whatever it was started with: a Unix socket
    /// is writable (so connectable) by its owner only, the pid file is 0644, and the --run
    /// command inherits 022.
    func testUmaskIs022() throws {
        let socket = dir.file("sock"), pidFile = dir.file("pid")
        for outer in ["000", "077"] {
            // (The pid file is there when the --run command starts.)
            let r = Harness.run(["/bin/sh", "-c", "umask \(outer); exec \"$0\" -U \(socket) -P \(pidFile) null --run " +
                                 "'umask; stat -c %A \(socket) \(pidFile)'", Harness.nbdkit])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stdout, "0022\nsrwxr-xr-x\n-rw-r--r--\n", "started under umask \(outer)")
        }
    }

    func testBackgroundModeWithPidFile() throws {
        let pidFile = dir.file("pid")
        let socket = dir.file("sock")
        // Started through Python, which passes no descriptors but 0-2: Foundation's Process
        // watches its child through an inherited socket that the daemon would otherwise keep.
        let r = Harness.run(["/usr/bin/python3", "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))",
                             Harness.nbdkit, "-P", pidFile, "-U", socket, "memory", "1M"], timeout: 20)
        XCTAssertEqual(r.status, 0, r.stderr)
        guard let pid = Harness.waitForPID(in: pidFile) else { return XCTFail("no pid in \(pidFile)") }
        defer { kill(pid, SIGKILL) }
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(socket)"]).stdout, "1048576\n")
        XCTAssertEqual(kill(pid, SIGTERM), 0)
        let deadline = Date().addingTimeInterval(10)
        while kill(pid, 0) == 0 && Date() < deadline { usleep(10_000) }
        XCTAssertNotEqual(kill(pid, 0), 0, "server still running after SIGTERM")
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket))
        XCTAssertFalse(FileManager.default.fileExists(atPath: pidFile))
    }

    /// In the background, the command returns only once the server is ready: its pid file is
    /// written and it accepts connections at once (nbdkit's parent returns at once, and the pid
    /// file was missing after most starts). A server that fails after going into the background
    /// (here, its pid file can't be written) makes the command fail with its message and status
    /// (it returned 0 while nothing served).
    func testBackgroundCommandReturnsOnceTheServerIsReady() throws {
        for i in 0..<10 {
            let pidFile = dir.file("ready\(i).pid"), socket = dir.file("ready\(i).sock")
            let r = Harness.run(["/usr/bin/python3", "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))",
                                 Harness.nbdkit, "-P", pidFile, "-U", socket, "memory", "1M"], timeout: 20)
            XCTAssertEqual(r.status, 0, r.stderr)
            let text = (try? String(contentsOfFile: pidFile, encoding: .utf8)) ?? ""
            guard let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), text.hasSuffix("\n") else {
                // Still stop the server that wrote it late.
                if let pid = Harness.waitForPID(in: pidFile) { kill(pid, SIGKILL) }
                XCTFail("start \(i): no pid file when the command returned ('\(text)')")
                continue
            }
            defer { kill(pid, SIGKILL) }
            XCTAssertEqual(Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(socket)"]).stdout, "1048576\n")
        }
        let socket = dir.file("nopid.sock")
        let r = Harness.run(["/usr/bin/python3", "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))",
                             Harness.nbdkit, "-P", dir.file("missing/pid"), "-U", socket, "memory", "1M"], timeout: 20)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("nbdkit: error: \(dir.file("missing/pid")): No such file or directory"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket), "the server that failed left its socket")
    }

    /// Without --log, errors go to standard error in the foreground and, as nbdkit's, to the
    /// system log once the server is in the background, where standard error is /dev/null (they
    /// were lost there): as "nbdkit[PID]" in the daemon facility at error priority, without
    /// "error:". Run in a mount namespace whose /dev/log is a socket the test reads.
    func testBackgroundServerLogsToTheSystemLogByDefault() throws {
        try XCTSkipUnless(Harness.shell("unshare -m --propagation private true").status == 0,
                          "mount namespaces are not available here")
        let dev = dir.file("dev"), pidFile = dir.file("pid")
        try FileManager.default.createDirectory(atPath: dev, withIntermediateDirectories: false)
        defer { if let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
                   let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGKILL) } }
        try """
            import socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind(sys.argv[1])
            s.settimeout(30)
            with open(sys.argv[2], 'ab', buffering=0) as out:
                while True:
                    out.write(s.recv(4096) + b'\\n')
            """.write(toFile: dir.file("receiver.py"), atomically: false, encoding: .utf8)
        // A write past the end of the 1 MiB disk: the server refuses it and logs an error.
        try """
            h.set_strict_mode(0)
            try:
                h.pwrite(b'z' * 512, 1048576)
            except nbd.Error:
                print('refused')
            """.write(toFile: dir.file("client.py"), atomically: false, encoding: .utf8)
        // (Each wait bounded: `[ $i -lt 200 ]` fails the script under -e after 10 s.)
        try """
            for n in null zero random urandom; do touch "$DEV/$n"; mount --bind "/dev/$n" "$DEV/$n"; done
            python3 "$DIR/receiver.py" "$DEV/log" "$DIR/syslog" & receiver=$!
            trap "kill $receiver" EXIT
            i=0; until [ -S "$DEV/log" ]; do i=$((i+1)); [ $i -lt 200 ]; sleep 0.05; done
            mount --rbind "$DEV" /dev
            "$NBDKIT" -U "$DIR/sock" -P "$DIR/pid" null 1M
            nbdsh -u "nbd+unix:///?socket=$DIR/sock" -c "$(cat "$DIR/client.py")"
            pid=$(cat "$DIR/pid"); kill $pid
            i=0; while kill -0 $pid 2>/dev/null; do i=$((i+1)); [ $i -lt 200 ]; sleep 0.05; done
            "$NBDKIT" -U - null 1M --run 'nbdsh -u "$uri" -c "$(cat "$DIR/client.py")"'
            i=0; until grep -q NBD_CMD_WRITE "$DIR/syslog"; do i=$((i+1)); [ $i -lt 200 ]; sleep 0.05; done
            sleep 0.2
            """.write(toFile: dir.file("namespace.sh"), atomically: false, encoding: .utf8)
        let r = Harness.shell("DIR=\(dir.path) DEV=\(dev) NBDKIT=\(Harness.nbdkit) unshare -m --propagation private sh -e \(dir.file("namespace.sh"))",
                              timeout: 60)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "refused\nrefused\n")
        // The foreground server's error, on its standard error.
        XCTAssertEqual(r.stderr.components(separatedBy: "nbdkit: null[1]: error: NBD_CMD_WRITE offset=1048576 count=512: ENOSPC").count,
                       2, r.stderr)
        // The background server's, in the system log only.
        let lines = contents(dir.file("syslog")).split(separator: UInt8(ascii: "\n")).map { String(decoding: $0, as: UTF8.self) }
        XCTAssertEqual(lines.count, 1, "\(lines)")
        let line = lines.first ?? ""
        XCTAssertTrue(line.hasPrefix("<27>"), line)  // LOG_DAEMON | LOG_ERR
        XCTAssertNotNil(line.range(of: #" nbdkit\[[0-9]+\]: null\[1\]: NBD_CMD_WRITE offset=1048576 count=512: ENOSPC: "#,
                                   options: .regularExpression), line)
        XCTAssertFalse(line.contains("error:"), line)
    }

    /// Started with standard streams closed (`<&-`, a daemon idiom), the server opens /dev/null
    /// in their place before anything else, so none of its own descriptors takes their numbers:
    /// its signalfd took 0 and going into the background put /dev/null over it, so the daemon
    /// spun on it and ignored SIGTERM; with two closed its wake-up descriptor went the same way
    /// and it exited at once, after its parent had reported success. (nbdkit refuses to start.)
    func testBackgroundModeWithStandardStreamsClosed() throws {
        for (index, closing) in ["<&-", "<&- >&-", "<&- >&- 2>&-"].enumerated() {
            let pidFile = dir.file("closed\(index).pid"), socket = dir.file("closed\(index).sock")
            let r = Harness.run(["/usr/bin/python3", "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))",
                                 "/bin/sh", "-c", "exec \"$0\" \"$@\" \(closing)", Harness.nbdkit,
                                 "-P", pidFile, "-U", socket, "memory", "1M"], timeout: 20)
            XCTAssertEqual(r.status, 0, "\(closing): \(r.stderr)")
            guard let pid = Harness.waitForPID(in: pidFile) else { XCTFail("\(closing): no pid in \(pidFile)"); continue }
            defer { kill(pid, SIGKILL) }
            XCTAssertEqual(Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(socket)"]).stdout, "1048576\n", closing)
            usleep(500_000)
            let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
            let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
            let ticks = fields.count > 12 ? (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0) : -1
            XCTAssertTrue((0..<30).contains(ticks), "\(closing): the idle daemon used \(ticks) ticks of CPU")
            XCTAssertEqual(kill(pid, SIGTERM), 0)
            let deadline = Date().addingTimeInterval(10)
            while kill(pid, 0) == 0 && Date() < deadline { usleep(10_000) }
            XCTAssertNotEqual(kill(pid, 0), 0, "\(closing): server still running after SIGTERM")
            XCTAssertFalse(FileManager.default.fileExists(atPath: socket), closing)
        }
    }

    /// Relative -P and -U name files in the starting directory, although the daemon moves to /:
    /// the pid file appears there, and both are removed when SIGTERM stops the server.
    func testBackgroundModeWithRelativePidFileAndSocket() throws {
        // Unique names, so that a server that wrote them relative to / can still be found and stopped.
        let pidName = "nbdkit-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).pid"
        let pidFile = dir.file(pidName), socket = dir.file("sock")
        defer {
            for path in [pidFile, "/" + pidName] {
                if let text = try? String(contentsOfFile: path, encoding: .utf8),
                   let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGKILL) }
            }
            _ = unlink("/" + pidName)
        }
        let r = Harness.run(["/usr/bin/python3", "-c",
                             "import subprocess, sys; sys.exit(subprocess.call(sys.argv[2:], cwd=sys.argv[1]))",
                             dir.path, Harness.nbdkit, "-P", pidName, "-U", "sock", "memory", "1M"], timeout: 20)
        XCTAssertEqual(r.status, 0, r.stderr)
        guard let pid = Harness.waitForPID(in: pidFile) else { return XCTFail("no pid file at \(pidFile)") }
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", "nbd+unix:///?socket=\(socket)"]).stdout, "1048576\n")
        XCTAssertEqual(kill(pid, SIGTERM), 0)
        let deadline = Date().addingTimeInterval(10)
        while kill(pid, 0) == 0 && Date() < deadline { usleep(10_000) }
        XCTAssertNotEqual(kill(pid, 0), 0, "server still running after SIGTERM")
        XCTAssertFalse(FileManager.default.fileExists(atPath: pidFile), "pid file left behind")
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket), "socket left behind")
    }

    /// As nbdkit's, the server's own start-up errors (sockets, TLS files, -u/-g, the pid file)
    /// are printed on stderr whatever --log says: with --log=null or --log=syslog they were exit
    /// status 1 and nothing else. A plugin's or filter's errors follow --log, as nbdkit's
    /// (testLogNullKeepsDebugMessagesOnStderr).
    func testStartupErrorsReachStderrWhateverTheLog() {
        for log in ["null", "syslog"] {
            let r = Harness.run([Harness.nbdkit, "--log=\(log)", "-U", dir.file("missing/sock"), "memory", "1M"], timeout: 20)
            XCTAssertEqual(r.status, 1, log)
            XCTAssertTrue(r.stderr.contains("nbdkit: error: bind: \(dir.file("missing/sock")): No such file or directory"),
                          "--log=\(log): \(r.stderr)")
            let t = Harness.run([Harness.nbdkit, "--log=\(log)", "-U", "-", "--tls=require", "--tls-certificates=\(dir.file("none"))",
                                 "memory", "1M", "--run", "true"], timeout: 20)
            XCTAssertEqual(t.status, 1, log)
            XCTAssertTrue(t.stderr.contains("nbdkit: error: "), "--log=\(log), TLS: \(t.stderr)")
        }
    }

    func testSigtermStopsForegroundServerCleanly() throws {
        let s = try startServer(["memory", "1M"])
        XCTAssertEqual(Harness.run(["nbdinfo", "--size", s.uri]).stdout, "1048576\n")
        XCTAssertEqual(s.stop(), 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.socket))
    }
}
