/// Messages between a parent and a worker over the worker's fd 3.
enum ToWorker: Codable {
    /// Run a job. `payload` is the job encoded with `MessageCodec` (descriptors travel with this frame).
    case run(id: UInt64, typeName: String, payload: [UInt8])
    /// Finish and exit.
    case shutdown
    /// Become a pool worker: from now on the channel speaks ``PoolWire``. The shared slot and the
    /// wake-up eventfd travel with this frame.
    case pool(PoolSetup)
}

/// What a pool worker needs to start.
struct PoolSetup: Codable {
    var slot: PassedDescriptor
    var wake: PassedDescriptor
    /// A job to run once before any task (Python's `initializer`): type name and encoded value.
    var initializer: [UInt8]?
    var initializerType: String?
    /// Resident bytes past which the worker exits between units (it checks itself after each one).
    var memoryLimit: Int?
}

/// A descriptor sent along with a message (`SCM_RIGHTS`).
struct PassedDescriptor: Codable {
    let fd: Int32
    init(_ fd: Int32) { self.fd = fd }
    init(from decoder: any Decoder) throws {
        _ = try decoder.singleValueContainer().decode(Int.self)
        fd = try MessageCodec.takeDescriptor()
    }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(try MessageCodec.attach(fd))
    }
}

enum FromWorker: Codable {
    /// The worker is up (sent once, first).
    case ready(pid: Int32)
    /// A job finished; `payload` is its encoded `Output`.
    case result(id: UInt64, payload: [UInt8])
    /// A job threw, or its output could not be encoded.
    case failure(id: UInt64, WireError)
}

/// An error on the wire: its type (mangled, to rebuild it if `Codable`), a readable name, a description,
/// the encoded error if it is `Codable`, and the worker's pid.
package struct WireError: Codable, Error {
    var mangledType: String?
    var typeName: String
    var message: String
    var payload: [UInt8]?
    var pid: Int32

    package init(_ error: any Error, pid: Int32) {
        typeName = String(reflecting: type(of: error))
        message = String(describing: error)
        self.pid = pid
        if let codable = error as? any (Error & Codable), let name = _mangledTypeName(type(of: codable)),
            let bytes = try? BinaryEncoder().encode(codable)
        {
            mangledType = name
            payload = bytes
        }
    }

    /// The original error when it can be rebuilt here, else a ``RemoteError``.
    package func rebuild() -> any Error {
        if let mangledType, let payload, let t = _typeByName(mangledType) as? any (Error & Codable).Type,
            let e = try? decode(t, payload)
        {
            return e
        }
        if typeName == String(reflecting: CancellationError.self) { return CancellationError() }
        return RemoteError(typeName: typeName, message: message, pid: pid)
    }

    private func decode<E: Error & Codable>(_ t: E.Type, _ bytes: [UInt8]) throws -> any Error {
        try BinaryDecoder().decode(t, from: bytes)
    }
}
