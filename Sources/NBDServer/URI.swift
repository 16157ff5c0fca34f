/// Builds the NBD URI that `--run` hands to its command, in the exact form nbdkit 1.32 uses.
public enum NBDURI {
    /// `nbd+unix://?socket=PATH`, `nbd+unix:///NAME?socket=PATH`, `nbd://localhost:PORT[/NAME]`,
    /// `nbd+vsock://1:PORT[/NAME]` (CID 1: this machine), with `nbds` schemes when TLS is
    /// required. Export names and paths are percent-encoded.
    public static func make(unixPath: String?, port: Int?, exportName: String, tlsRequired: Bool,
                            vsock: Bool = false) -> String {
        let scheme = tlsRequired ? "nbds" : "nbd"
        let name = exportName.isEmpty ? "" : "/" + quote(exportName, safe: "/")
        if let unixPath {
            return "\(scheme)+unix://\(name)?socket=\(quote(unixPath, safe: "/"))"
        }
        if vsock { return "\(scheme)+vsock://1:\(port ?? 10809)\(name)" }
        return "\(scheme)://localhost:\(port ?? 10809)\(name)"
    }

    /// Percent-encodes every byte except unreserved characters and those in `safe`.
    public static func quote(_ s: String, safe: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for c in s.utf8 {
            let unreserved = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)
                || c == UInt8(ascii: "-") || c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: "~")
            if unreserved || safe.utf8.contains(c) {
                out.append(c)
            } else {
                out += [UInt8(ascii: "%"), hex[Int(c >> 4)], hex[Int(c & 15)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Quotes `s` for /bin/sh as one word.
    public static func shellQuote(_ s: String) -> String {
        "'" + s.replacingAll("'", with: "'\\''") + "'"
    }
}

extension String {
    fileprivate func replacingAll(_ target: Character, with replacement: String) -> String {
        var out = ""
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }
}
