#if Console
import Crypto
import Foundation

/// `application/x-www-form-urlencoded`: a form's body and a URL's query.
enum FormData {
    /// The fields of `text` (`+` is a space, `%XX` a byte); a field given twice keeps its first value.
    static func parse(_ text: Substring) -> [String: String] {
        var out: [String: String] = [:]
        for pair in text.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = decode(parts[0])
            if out[key] == nil { out[key] = parts.count > 1 ? decode(parts[1]) : "" }
        }
        return out
    }

    static func decode(_ s: Substring) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(s.utf8.count)
        var it = Array(s.utf8)[...]
        while let b = it.popFirst() {
            if b == UInt8(ascii: "+") {
                bytes.append(32)
            } else if b == UInt8(ascii: "%"), it.count >= 2, let h = hexValue(it[it.startIndex]),
                let l = hexValue(it[it.startIndex + 1])
            {
                bytes.append(h << 4 | l)
                it = it.dropFirst(2)
            } else {
                bytes.append(b)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// Every byte but unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`.
    static func percentEncode(_ s: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.append(b)
            default:
                out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Who may act, decided from a request's credentials: the console's token as a bearer token, or a session
/// cookie signed (HMAC-SHA256) with a random key of this process's, whose forms carry an anti-forgery token
/// bound to the session. Nothing is stored on the server, and nothing derived from the token leaves it: a
/// leaked cookie gives no way to guess the token offline. Restarting the console signs everyone out.
struct ConsoleAuth: Sendable {
    /// The cookie's name: `__Host-` prefixed when it is `Secure` (the browser then refuses it from any other
    /// host, path or insecure origin).
    let cookieName: String
    private let key: SymmetricKey?
    private let tokenMAC: [UInt8]?
    /// How long a session lasts.
    let sessionLifetime: Duration

    /// With `token` nil, nobody may act (a read-only console).
    init(token: String?, secureCookie: Bool = false, sessionLifetime: Duration = .seconds(12 * 3600)) {
        self.sessionLifetime = sessionLifetime
        cookieName = secureCookie ? "__Host-mp_console" : "mp_console"
        guard let token, !token.isEmpty else {
            key = nil
            tokenMAC = nil
            return
        }
        let random = SymmetricKey(size: .bits256)
        key = random
        tokenMAC = Array(HMAC<SHA256>.authenticationCode(for: Array("token".utf8) + Array(token.utf8), using: random))
    }

    /// A token is configured.
    var configured: Bool { key != nil }

    /// Whether `given` is the console's token (compared in constant time, through their MACs).
    func isToken(_ given: String) -> Bool {
        guard let key, let tokenMAC else { return false }
        let mac = HMAC<SHA256>.authenticationCode(for: Array("token".utf8) + Array(given.utf8), using: key)
        return constantTimeEqual(Array(mac), tokenMAC)
    }

    /// A new session's cookie value, valid until `nowSeconds + sessionLifetime`.
    func newSession(nowSeconds: Int64) -> String? {
        guard key != nil else { return nil }
        let expiry = nowSeconds + sessionLifetime.components.seconds
        return "\(expiry).\(hex(mac("session:\(expiry)")))"
    }

    /// Whether `cookie` is a session this console signed that has not expired at `nowSeconds`.
    func isValidSession(_ cookie: String, nowSeconds: Int64) -> Bool {
        guard key != nil else { return false }
        let parts = cookie.split(separator: ".", maxSplits: 1)
        // The expiry in canonical digits only (no sign, no leading zero): one session, one cookie text.
        guard parts.count == 2, let expiry = Int64(parts[0]), String(expiry) == parts[0], expiry > nowSeconds else {
            return false
        }
        return constantTimeEqual(Array(hex(mac("session:\(expiry)")).utf8), Array(parts[1].utf8))
    }

    /// The anti-forgery token of the forms of the session `cookie`.
    func csrf(for cookie: String) -> String { hex(mac("csrf:\(cookie)")) }

    /// Whether `given` is the anti-forgery token of session `cookie`.
    func isValidCSRF(_ given: String, for cookie: String) -> Bool {
        constantTimeEqual(Array(csrf(for: cookie).utf8), Array(given.utf8))
    }

    private func mac(_ text: String) -> [UInt8] {
        guard let key else { return [] }
        return Array(HMAC<SHA256>.authenticationCode(for: Array(text.utf8), using: key))
    }

    private func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in bytes { out += [digits[Int(b >> 4)], digits[Int(b & 15)]] }
        return String(decoding: out, as: UTF8.self)
    }

    private func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in a.indices { diff |= a[i] ^ b[i] }
        return diff == 0
    }
}
#endif
