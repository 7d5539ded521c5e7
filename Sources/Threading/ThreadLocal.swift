public import Glibc
import Synchronization

/// A value with one instance per thread — Python's `threading.local`.
///
/// Each thread sees its own value, created on first read by `makeDefault` (or `nil` when there is no
/// default). A thread's value is released when the thread ends, and all values when the `ThreadLocal`
/// itself is deinitialised.
///
/// ```swift
/// let school = ThreadLocal<String?>(default: nil)
/// school.value = "Alice"           // only this thread sees "Alice"
/// ```
///
/// - Important: Python's `local` holds arbitrary attributes; here the slot is typed — use a struct or a
///   dictionary for several attributes. Each instance uses one POSIX TLS key (at least 1,024 per process).
public final class ThreadLocal<Value>: @unchecked Sendable {  // per-thread slots; `registry` has its own lock
    @usableFromInline
    final class Box: ThreadLocalBoxBase {
        @usableFromInline var value: Value
        init(_ value: Value, _ registry: ThreadLocalRegistry) {
            self.value = value
            super.init(registry)
        }
    }

    @usableFromInline let key: pthread_key_t
    private let registry = ThreadLocalRegistry()
    private let makeDefault: @Sendable () -> Value

    /// Creates a thread-local slot whose per-thread value starts as `makeDefault()`.
    public init(default makeDefault: @escaping @Sendable () -> Value) {
        self.makeDefault = makeDefault
        var key = pthread_key_t()
        let rc = pthread_key_create(&key) { raw in
            // Thread exit: release this thread's box unless deinit already did.
            guard let raw else { return }
            let box = Unmanaged<ThreadLocalBoxBase>.fromOpaque(raw).takeUnretainedValue()
            if box.registry.remove(raw) { Unmanaged<ThreadLocalBoxBase>.fromOpaque(raw).release() }
        }
        precondition(rc == 0, "pthread_key_create failed (\(rc)): too many ThreadLocal instances")
        self.key = key
    }

    deinit {
        pthread_key_delete(key)
        let all = registry.boxes.withLock { boxes in
            defer { boxes.removeAll() }
            return boxes
        }
        for raw in all { Unmanaged<ThreadLocalBoxBase>.fromOpaque(UnsafeRawPointer(bitPattern: raw)!).release() }
    }

    @usableFromInline
    func makeBox() -> Box {
        let b = Box(makeDefault(), registry)
        let raw = Unmanaged.passRetained(b).toOpaque()
        registry.boxes.withLock { _ = $0.insert(UInt(bitPattern: raw)) }
        pthread_setspecific(key, raw)
        return b
    }

    /// This thread's value (created by the default factory on first access).
    @inlinable
    public var value: Value {
        get {
            // No retain/release: the box lives as long as this thread (or this ThreadLocal).
            if let raw = pthread_getspecific(key) {
                return Unmanaged<Box>.fromOpaque(raw)._withUnsafeGuaranteedRef { $0.value }
            }
            return makeBox().value
        }
        set {
            if let raw = pthread_getspecific(key) {
                Unmanaged<Box>.fromOpaque(raw)._withUnsafeGuaranteedRef { $0.value = newValue }
            } else {
                makeBox().value = newValue
            }
        }
    }
}

extension ThreadLocal where Value: ExpressibleByNilLiteral & SendableMetatype {
    /// Creates a thread-local slot whose per-thread value starts as `nil`.
    public convenience init() { self.init(default: { nil }) }
}

/// The boxes of one `ThreadLocal` alive in any thread: whoever removes a box (its thread's exit or the
/// `ThreadLocal`'s deinit) releases it, exactly once.
@usableFromInline
final class ThreadLocalRegistry: Sendable {
    let boxes = TrackedMutex<Set<UInt>>([])
    func remove(_ p: UnsafeMutableRawPointer) -> Bool { boxes.withLock { $0.remove(UInt(bitPattern: p)) != nil } }
}

@usableFromInline
class ThreadLocalBoxBase {
    let registry: ThreadLocalRegistry
    @usableFromInline init(_ registry: ThreadLocalRegistry) { self.registry = registry }
}
