/// Why a value could not be decoded, as the binary codec reported it before it used
/// ``MultiprocessingError``.
///
/// ``BinaryDecoder`` now throws ``MultiprocessingError`` with the code
/// ``MultiprocessingError/Code/decodingFailed`` for bytes that are not a value of the type asked for
/// (truncated data, a type mismatch, a malformed varint, key or tag, values nested too deep), with the
/// same messages (`DecodingError.keyNotFound` for an absent key, and what a type's own `init(from:)`
/// throws, pass through).
/// This type stays for source compatibility: no call of this library throws it.
public struct CodecError: Error, CustomStringConvertible, Sendable {
    /// What could not be decoded, and why.
    public let description: String
}

// The codec's failures: bytes that are not a value of the type asked for.
extension MultiprocessingError {
    /// The data ended in the middle of a value.
    static let truncated = MultiprocessingError(.decodingFailed, "the data ended in the middle of a value")

    /// A value of another type than the one asked for (`what` says which, and where).
    static func typeMismatch(_ what: String) -> MultiprocessingError {
        MultiprocessingError(.decodingFailed, "type mismatch: \(what)")
    }

    /// `cannot decode <what>: <why>`, for a caller that failed to decode `what`: the codec's own message
    /// when `error` is one of its failures (rather than the code repeated), else `error` described.
    static func cannotDecode(_ what: String, _ error: any Error) -> MultiprocessingError {
        let why =
            if let e = error as? MultiprocessingError, e.code == .decodingFailed { e.message } else { "\(error)" }
        return MultiprocessingError(.decodingFailed, "cannot decode \(what): \(why)")
    }
}
