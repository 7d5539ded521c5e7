/// A function a pool applies to many inputs in worker processes — what Python passes to `Pool.map` as `f`.
///
/// Like a ``Job``, it is a `Codable` value (its stored properties are fixed arguments shared by every
/// call), found in the worker by its type name; `callAsFunction` may be synchronous or `async`, and may
/// throw.
///
/// ```swift
/// struct Square: TaskFunction {
///     func callAsFunction(_ x: Int) -> Int { x * x }
/// }
/// let squares = try pool.map(Square(), Array(0..<10))
/// ```
public protocol TaskFunction: Codable, Sendable {
    /// What one call takes: one element of the inputs given to `map`, `imap` and the like (encoded on its
    /// way to a worker process).
    associatedtype Input: Codable & Sendable
    /// What one call returns (encoded on its way back from a worker process).
    associatedtype Output: Codable & Sendable
    /// Computes the result for one input on a pool worker (a process of a ``ProcessPool``, a thread of an
    /// ``InProcessPool``) — Python's `f` in `Pool.map(f, iterable)`.
    ///
    /// An error it throws fails that item only; the other items go on. From a ``ProcessPool``, an error
    /// that is `Codable` comes back as itself, any other as a ``RemoteError``. An `async` body sees its
    /// Swift task cancelled when the call is cancelled or passes its ``TaskOptions/softTimeout``.
    func callAsFunction(_ input: Input) async throws -> Output
}

/// A ``TaskFunction`` whose body is synchronous — the fast path for small items.
///
/// Declare this conformance when `callAsFunction` does not `await`: the worker then calls it directly
/// in a loop compiled for your type (no Swift task and no executor checks per item), which matters when
/// each item takes nanoseconds. Cancellation cannot reach synchronous code, so a soft timeout or a
/// cancel request stops such an item by stopping its worker after the grace period.
///
/// ```swift
/// struct Square: SyncTaskFunction {
///     func callAsFunction(_ x: Int) -> Int { x * x }
/// }
/// ```
public protocol SyncTaskFunction: TaskFunction {
    /// Computes the result for one input, synchronously, in a worker; it also satisfies the `async`
    /// requirement of ``TaskFunction``. An error it throws fails that item only.
    func callAsFunction(_ input: Input) throws -> Output
    /// Runs items `from...` of a chunk in the worker. Implemented by the library (the default below, which
    /// the compiler specialises for each conforming type); do not implement it.
    func _runChunk(_ inputs: [Input], from: Int, _ context: ChunkContext)
    /// Decodes a chunk's `count` inputs from `payload` and runs them in the worker; `false` if they could
    /// not be decoded (the context has reported it). Implemented by the library (the default below,
    /// specialised for each conforming type); do not implement it.
    func _runEncodedChunk(_ payload: UnsafeRawBufferPointer, count: Int, _ context: ChunkContext) -> Bool
}

extension SyncTaskFunction {
    /// Decodes a chunk's inputs and runs them. Library internals, public only so that the compiler
    /// specialises the decoding for each conforming type (inputs of fixed-width types are then one copy,
    /// with no questions to the runtime); do not call or implement it.
    @inlinable
    public func _runEncodedChunk(_ payload: UnsafeRawBufferPointer, count: Int, _ context: ChunkContext) -> Bool {
        let inputs: [Input]
        if let id = context.rawInput, id == ObjectIdentifier(Input.self) {
            if let od = context.rawOutput, od == ObjectIdentifier(Output.self) {
                guard let raw = context.rawInputs(payload, count: count) else { return false }
                _runRawChunk(raw, count: count, context)
                return true
            }
            guard let raw = context.rawInputs(payload, count: count) else { return false }
            inputs = [Input](unsafeUninitializedCapacity: count) { out, initialized in
                if count > 0 { UnsafeMutableRawBufferPointer(out).copyMemory(from: raw) }
                initialized = count
            }
        } else {
            guard let decoded = context.decodeInputs(Input.self, payload, count: count) else { return false }
            inputs = decoded
        }
        _runChunk(inputs, from: 0, context)
        return true
    }

    /// Runs a chunk whose inputs and results are both raw bytes: each input is read from the frame's bytes
    /// and each result written into the worker's kept result buffer, so the chunk allocates no array and
    /// touches no fresh page. Library internals, public only so that the compiler specialises this loop
    /// for each conforming type; do not call it.
    @inlinable
    public func _runRawChunk(_ inputs: UnsafeRawBufferPointer, count: Int, _ context: ChunkContext) {
        let inStride = MemoryLayout<Input>.stride
        let outStride = MemoryLayout<Output>.stride
        let results = context.resultBuffer(bytes: count * outStride)
        func send(_ range: Range<Int>) {
            let bytes = UnsafeRawBufferPointer(
                start: results + range.lowerBound * outStride,
                count: range.count * outStride
            )
            context.sendRaw(bytes, count: range.count, start: range.lowerBound)
        }
        var first = 0
        var i = 0
        while i < count {
            guard context.itemStarting(i) else { break }
            do {
                let y = try self(inputs.loadUnaligned(fromByteOffset: i * inStride, as: Input.self))
                results.storeBytes(of: y, toByteOffset: i * outStride, as: Output.self)
            } catch {
                send(first..<i)
                first = i + 1
                context.fail(i, error)
            }
            i += 1
            if context.flushDue {
                send(first..<i)
                first = i
                context.flush()
            }
        }
        send(first..<i)
        context.finished(at: i)
    }

    /// Runs items `from...` of a chunk in the worker. Library internals, public only so that the compiler specialises this loop for each conforming type; do not call or implement it.
    @inlinable
    public func _runChunk(_ inputs: [Input], from: Int, _ context: ChunkContext) {
        var done: [Output] = []
        done.reserveCapacity(inputs.count - from)
        var first = from
        var i = from
        while i < inputs.count {
            guard context.itemStarting(i) else { break }
            do {
                done.append(try self(inputs[i]))
            } catch {
                context.send(done, start: first)
                done.removeAll(keepingCapacity: true)
                first = i + 1
                context.fail(i, error)
            }
            i += 1
            if context.flushDue {
                context.send(done, start: first)
                done.removeAll(keepingCapacity: true)
                first = i
                context.flush()
            }
        }
        context.send(done, start: first)
        context.finished(at: i)
    }
}

/// A function of two arguments, for `starmap(_:_:chunksize:options:)` (``ProcessPool``, ``InProcessPool``) — Python's
/// `Pool.starmap(f, [(a, b), ...])`.
public protocol TaskFunction2: Codable, Sendable {
    /// The type of the first argument (`a` in Python's `(a, b)` tuples).
    associatedtype First: Codable & Sendable
    /// The type of the second argument (`b` in Python's `(a, b)` tuples).
    associatedtype Second: Codable & Sendable
    /// What one call returns (encoded on its way back from a worker process).
    associatedtype Output: Codable & Sendable
    /// Computes the result for one pair of arguments, in a worker; an error it throws fails that pair only.
    func callAsFunction(_ first: First, _ second: Second) async throws -> Output
}
