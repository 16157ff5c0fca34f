import NBDServer

/// `example1`: the embedded demo disk, a small partitioned image with a filesystem. Read-only.
public final class Example1Plugin: Backend {
    public let name = "example1"
    private let image: [UInt8]

    init() {
        var image = [UInt8](repeating: 0, count: Int(Example1Image.size))
        for run in Example1Image.runs {
            var i = Int(run.offset)
            var high: UInt8? = nil
            for c in run.hex.utf8 {
                let nibble = c <= UInt8(ascii: "9") ? c - UInt8(ascii: "0") : c - UInt8(ascii: "a") + 10
                if let h = high {
                    image[i] = h << 4 | nibble
                    i += 1
                    high = nil
                } else {
                    high = nibble
                }
            }
        }
        self.image = image
    }

    public func open(_ request: OpenRequest) throws -> any BackendConnection { Connection(image: image) }

    final class Connection: BackendConnection {
        private let image: [UInt8]
        init(image: [UInt8]) { self.image = image }

        func size() throws -> UInt64 { UInt64(image.count) }
        func canMultiConn() throws -> Bool { true }
        func canCache() throws -> Bool { true }
        func pread(into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) throws {
            image.withUnsafeBytes { src in
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[Int(offset)..<Int(offset) + buffer.count]))
            }
        }
    }
}

extension Example1Plugin: PluginFactory {
    public static let name = "example1"
    public static let magicConfigKey: String? = nil
    public static let configHelp = "(no parameters)"
    public static let threadModel = ThreadModel.parallel
    public static let callbacks: Set<PluginCallback> = [.open, .getSize, .pread]

    public static func make(_ parameters: inout Parameters, options: PluginOptions) throws -> any Backend {
        Example1Plugin()
    }
}
