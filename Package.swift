// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "swift-nbdkit",
    products: [
        .executable(name: "nbdkit", targets: ["nbdkit"]),
    ],
    targets: [
        // Thin C helpers for libc calls Swift cannot make directly (variadic calls, macros).
        .target(name: "CNBDShim"),
        // A thin C layer over GnuTLS (libgnutls28-dev, loaded when TLS is set up) for STARTTLS.
        .target(name: "CNBDTLS", linkerSettings: [.linkedLibrary("dl")]),
        // A thin C layer over libsystemd (libsystemd-dev, loaded on first use): socket activation, sd_notify.
        .target(name: "CNBDSystemd", linkerSettings: [.linkedLibrary("dl")]),
        // The NBD wire format: constants, encoding and decoding. No I/O.
        .target(name: "NBDProtocol"),
        // Listeners, handshake, transmission, worker threads, the backend chain, lifecycle.
        .target(name: "NBDServer", dependencies: ["NBDProtocol", "CNBDShim", "CNBDTLS", "CNBDSystemd"]),
        // Built-in plugins and filters, found by name.
        .target(name: "NBDPlugins", dependencies: ["NBDServer", "NBDProtocol", "CNBDShim"]),
        // The executable: command line to typed configuration, then run.
        .executableTarget(name: "nbdkit", dependencies: ["NBDServer", "NBDPlugins", "NBDProtocol", "CNBDShim"]),
        .testTarget(name: "NBDProtocolTests", dependencies: ["NBDProtocol"]),
        .testTarget(name: "NBDServerTests", dependencies: ["NBDServer"]),
        .testTarget(name: "IntegrationTests", dependencies: ["nbdkit"]),
    ]
)
