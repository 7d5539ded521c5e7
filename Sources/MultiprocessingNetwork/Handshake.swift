internal import CMultiprocessingShims
import Crypto
import Glibc
import Multiprocessing
import Threading

/// CPython's `multiprocessing.connection` authentication, both generations:
///
/// - 3.11 and earlier: the challenger sends `#CHALLENGE#` + 20 random bytes and expects the raw 16-byte
///   HMAC-MD5 of them;
/// - 3.12 and later: `#CHALLENGE#{sha256}` + 40 random bytes, answered by `{sha256}` + HMAC-SHA256 of the
///   whole message after `#CHALLENGE#` (prefix included). A 3.11 peer answers such a challenge with a raw
///   HMAC-MD5 of the same bytes, which a 3.12 challenger accepts.
///
/// We challenge 3.12-style (so both generations can answer) and answer either style. The challenger
/// replies `#WELCOME#` or `#FAILURE#`; every handshake message is capped at 256 bytes.
package enum Handshake {
    package static let challenge = Array("#CHALLENGE#".utf8)
    package static let welcome = Array("#WELCOME#".utf8)
    package static let failure = Array("#FAILURE#".utf8)
    package static let maxMessage = 256

    /// Python's `deliver_challenge(connection, authkey)`.
    static func deliver(_ c: Connection, authkey: [UInt8], deadline: Deadline?) throws {
        var random = [UInt8](repeating: 0, count: 40)
        try fillRandom(&random)
        let message = Array("{sha256}".utf8) + random
        try c.sendBytes(challenge + message)
        let response = try receive(c, deadline: deadline)
        if verify(authkey: authkey, message: message, response: response) {
            try c.sendBytes(welcome)
        } else {
            try? c.sendBytes(failure)
            throw MultiprocessingError(.authenticationFailed, "digest received was wrong")
        }
    }

    /// Python's `answer_challenge(connection, authkey)`.
    static func answer(_ c: Connection, authkey: [UInt8], deadline: Deadline?) throws {
        let received = try receive(c, deadline: deadline)
        guard received.starts(with: challenge) else {
            throw MultiprocessingError(
                .authenticationFailed,
                "protocol error: expected a challenge, got \(received.count) other bytes"
            )
        }
        let message = Array(received[challenge.count...])
        guard message.count >= 20 else {
            throw MultiprocessingError(.authenticationFailed, "challenge too short: \(message.count) bytes")
        }
        try c.sendBytes(response(authkey: authkey, message: message))
        let verdict = try receive(c, deadline: deadline)
        guard verdict == welcome else {
            throw MultiprocessingError(.authenticationFailed, "digest sent was rejected")
        }
    }

    private static func receive(_ c: Connection, deadline: Deadline?) throws -> [UInt8] {
        // The peer may be CPython, whose next message waits for our ACK of this one (Nagle).
        _ = mp_quick_ack(c.fileDescriptor)
        do {
            return try c.receiveFrame(maxLength: maxMessage, deadline: deadline)
        } catch let e as MultiprocessingError where e.code == .messageTooLarge || e.code == .malformedMessage {
            throw MultiprocessingError(.authenticationFailed, "handshake message rejected: \(e.message)")
        } catch let e as MultiprocessingError where e.code == .timedOut {
            throw MultiprocessingError(.timedOut, "the peer did not complete the authentication handshake in time")
        }
    }

    /// Python's `_get_digest_name_and_payload`.
    package static func digestAndPayload(_ m: [UInt8]) throws -> (String, [UInt8]) {
        if m.count == 20 || m.count == 16 { return ("md5", m) }
        if m.first == UInt8(ascii: "{"), let close = m.prefix(12).firstIndex(of: UInt8(ascii: "}")), close > 1 {
            let name = String(decoding: m[1..<close], as: UTF8.self)
            if ["md5", "sha256", "sha384", "sha3_256", "sha3_384"].contains(name) {
                return (name, Array(m[(close + 1)...]))
            }
        }
        throw MultiprocessingError(
            .authenticationFailed,
            "unsupported message length, missing digest prefix, or unsupported digest"
        )
    }

    package static func hmac(_ name: String, key: [UInt8], message: [UInt8]) -> [UInt8]? {
        let k = SymmetricKey(data: key)
        switch name {
        case "md5": return Array(HMAC<Insecure.MD5>.authenticationCode(for: message, using: k))
        case "sha256": return Array(HMAC<SHA256>.authenticationCode(for: message, using: k))
        case "sha384": return Array(HMAC<SHA384>.authenticationCode(for: message, using: k))
        default: return nil
        }
    }

    /// Python's `_create_response`: falls back to MD5 for a digest we lack, as CPython does.
    package static func response(authkey: [UInt8], message: [UInt8]) throws -> [UInt8] {
        let (name, _) = try digestAndPayload(message)
        if let mac = hmac(name, key: authkey, message: message), name != "md5" {
            return Array("{\(name)}".utf8) + mac
        }
        return hmac("md5", key: authkey, message: message)!
    }

    /// Python's `_verify_challenge`, in constant time.
    package static func verify(authkey: [UInt8], message: [UInt8], response: [UInt8]) -> Bool {
        guard let (name, mac) = try? digestAndPayload(response),
            let expected = hmac(name, key: authkey, message: message),
            expected.count == mac.count
        else { return false }
        var diff: UInt8 = 0
        for i in 0..<mac.count { diff |= expected[i] ^ mac[i] }
        return diff == 0
    }

    package static func fillRandom(_ bytes: inout [UInt8]) throws {
        try Syscall.check("getrandom", bytes.withUnsafeMutableBytes { mp_getrandom($0.baseAddress, $0.count) })
    }
}
