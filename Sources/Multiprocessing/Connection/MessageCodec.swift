import Threading

/// Encodes messages with ``BinaryEncoder`` while collecting the descriptors that values such as queues
/// carry, and decodes them handing those descriptors back.
enum MessageCodec {
    /// Descriptors collected while encoding, or available while decoding, on this thread.
    final class DescriptorContext {
        var outgoing: [Int32] = []
        var incoming: () -> Int32?
        init(incoming: @escaping () -> Int32? = { nil }) { self.incoming = incoming }
    }

    private static let current = ThreadLocal<DescriptorContext?>()

    static func encode<T: Encodable>(_ value: T) throws -> ([UInt8], [Int32]) {
        let context = DescriptorContext()
        let saved = current.value
        current.value = context
        defer { current.value = saved }
        do {
            return (try BinaryEncoder().encode(value), context.outgoing)
        } catch let e as MultiprocessingError {
            throw e
        } catch {
            throw MultiprocessingError(.encodingFailed, "cannot encode \(T.self): \(error)")
        }
    }

    static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], fds: inout [Int32]) throws -> T {
        var queue = fds
        defer { fds = queue }
        let context = DescriptorContext()
        return try withUnsafeMutablePointer(to: &queue) { q in
            context.incoming = { q.pointee.isEmpty ? nil : q.pointee.removeFirst() }
            let saved = current.value
            current.value = context
            defer { current.value = saved }
            do {
                return try BinaryDecoder().decode(type, from: bytes)
            } catch let e as MultiprocessingError where e.code != .decodingFailed {
                throw e
            } catch {
                throw MultiprocessingError.cannotDecode("\(T.self)", error)
            }
        }
    }

    /// Called by `Encodable` types that carry a descriptor: queues it for `SCM_RIGHTS` and returns its
    /// index in the message, or throws when the value is not being sent over a Unix socket.
    static func attach(_ fd: Int32) throws -> Int {
        guard let c = current.value else {
            throw MultiprocessingError(
                .encodingFailed,
                "a value holding a descriptor can only be sent to another process"
            )
        }
        c.outgoing.append(fd)
        return c.outgoing.count - 1
    }

    /// Called by `Decodable` types that carry a descriptor: takes the next one received.
    static func takeDescriptor() throws -> Int32 {
        guard let c = current.value, let fd = c.incoming() else {
            throw MultiprocessingError(.decodingFailed, "a descriptor announced in the message did not arrive")
        }
        return fd
    }
}
