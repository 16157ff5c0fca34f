import XCTest

/// The manual pages render cleanly and document every option the binary accepts; `make install`
/// and `make uninstall` put exactly the documented files in place and take them away again.
final class DocumentationTests: IntegrationTestCase {
    /// The repository root, from this file's path.
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    var manPages: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root + "/man")) ?? []).filter { $0.hasSuffix(".1") }.sorted()
    }

    /// The pages the issue asks for, and one for each built-in plugin and filter.
    func testEveryPageExists() {
        let help = Harness.run([Harness.nbdkit, "--help"]).stdout
        func names(_ label: String) -> [String] {
            let line = help.split(separator: "\n").first { $0.hasPrefix(label) } ?? ""
            return line.dropFirst(label.count).split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        let plugins = names("Built-in plugins:"), filters = names("Built-in filters:")
        XCTAssertFalse(plugins.isEmpty)
        XCTAssertFalse(filters.isEmpty)
        var expected = ["nbdkit.1", "nbdkit-captive.1", "nbdkit-tls.1", "nbdkit-service.1"]
        expected += plugins.map { "nbdkit-\($0)-plugin.1" } + filters.map { "nbdkit-\($0)-filter.1" }
        XCTAssertEqual(Set(manPages), Set(expected))
    }

    /// groff in its strictest warning mode and mandoc's linter both stay silent.
    func testPagesRenderWithoutWarnings() {
        XCTAssertGreaterThan(manPages.count, 4)
        for page in manPages {
            let path = root + "/man/" + page
            let groff = Harness.run(["groff", "-man", "-ww", "-z", path])
            XCTAssertEqual(groff.status, 0, page)
            XCTAssertEqual(groff.stderr, "", page)
            let mandoc = Harness.run(["mandoc", "-T", "lint", "-W", "warning", path])
            XCTAssertEqual(mandoc.status, 0, "\(page): \(mandoc.stdout)\(mandoc.stderr)")
            XCTAssertEqual(mandoc.stdout + mandoc.stderr, "", page)
        }
    }

    /// Every option listed by --short-options and --long-options is in nbdkit(1) and in --help.
    func testEveryOptionIsDocumented() throws {
        let long = Harness.run([Harness.nbdkit, "--long-options"]).stdout.split(separator: "\n").map(String.init)
        let short = Harness.run([Harness.nbdkit, "--short-options"]).stdout.split(separator: "\n").map(String.init)
        XCTAssertTrue(long.contains("--tls-verify-peer") && long.contains("--run"), "\(long)")
        XCTAssertTrue(short.contains("-U") && short.contains("-P"), "\(short)")
        // Roff writes a hyphen as \- ; fonts (\fB...\fR) split nothing inside an option name.
        let page = try String(contentsOfFile: root + "/man/nbdkit.1", encoding: .utf8)
            .replacingOccurrences(of: "\\-", with: "-")
        let help = Harness.run([Harness.nbdkit, "--help"]).stdout
        for option in long + short {
            XCTAssertTrue(mentions(page, option), "nbdkit(1) does not mention \(option)")
            XCTAssertTrue(mentions(help, option), "--help does not mention \(option)")
        }
    }

    /// Whether `text` has `option` not followed by another option-name character.
    func mentions(_ text: String, _ option: String) -> Bool {
        var rest = text[...]
        while let r = rest.range(of: option) {
            let next = rest[r.upperBound...].first
            if next == nil || !(next!.isLetter || next!.isNumber || next! == "-") { return true }
            rest = rest[r.upperBound...]
        }
        return false
    }

    /// `make install` into a DESTDIR tree installs the binary, every page and every unit (with
    /// the binary's path filled in); `make uninstall` removes exactly those files.
    func testMakeInstallAndUninstall() throws {
        let stage = dir.file("stage")
        let vars = ["PREFIX=/usr", "DESTDIR=\(stage)", "INSTALL_BIN=\(Harness.nbdkit)"]
        // A file that is not ours must survive uninstall.
        try FileManager.default.createDirectory(atPath: stage + "/usr/bin", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: stage + "/usr/bin/other", contents: Data("x".utf8))
        let install = Harness.run(["make", "-s", "-C", root, "install"] + vars, timeout: 120)
        XCTAssertEqual(install.status, 0, install.stderr)
        let fm = FileManager.default
        let bin = stage + "/usr/bin/nbdkit"
        XCTAssertTrue(fm.isExecutableFile(atPath: bin))
        XCTAssertEqual(contents(bin), contents(Harness.nbdkit))
        for page in manPages {
            let installed = stage + "/usr/share/man/man1/" + page
            XCTAssertEqual(contents(installed), contents(root + "/man/" + page), page)
            XCTAssertEqual(try fm.attributesOfItem(atPath: installed)[.posixPermissions] as? Int, 0o644, page)
        }
        let units = try fm.contentsOfDirectory(atPath: root + "/systemd").sorted()
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: stage + "/usr/lib/systemd/system").sorted(), units)
        let service = try String(contentsOfFile: stage + "/usr/lib/systemd/system/nbdkit.service", encoding: .utf8)
        XCTAssertTrue(service.contains("\nExecStart=/usr/bin/nbdkit "), service)
        XCTAssertFalse(service.contains("@BINDIR@"))
        // The installed binary runs.
        XCTAssertEqual(Harness.run([bin, "--version"]).status, 0)

        let uninstall = Harness.run(["make", "-s", "-C", root, "uninstall"] + vars, timeout: 120)
        XCTAssertEqual(uninstall.status, 0, uninstall.stderr)
        let left = fm.enumerator(atPath: stage)!.compactMap { $0 as? String }
            .filter { !(((try? fm.attributesOfItem(atPath: stage + "/" + $0)[.type]) as? FileAttributeType) == .typeDirectory) }
        XCTAssertEqual(left, ["usr/bin/other"])
    }
}
