import Synchronization

/// A descriptor used by several threads, whose close waits for the calls in progress.
///
/// Closing a number while another thread is about to read it is the classic use-after-close: the
/// kernel may give the number to the next `open` or `accept` at once, and the late reader then reads
/// (or writes) a file that is not its own. Here every call runs inside ``use(_:)``; ``close(before:)``
/// marks the descriptor closed (later uses get `nil`) and the number is released by whoever leaves
/// last — the closer, or the last call still in progress. A thread blocked in a call keeps the
/// descriptor open until it returns (the kernel would hold the file open for it anyway).
package struct DescriptorLifetime: ~Copyable, Sendable {
    /// Users in progress × 2, plus 1 once closing.
    private let state = Atomic<Int>(0)
    /// The descriptor.
    package let fd: Int32

    /// Takes ownership of `fd`.
    package init(_ fd: Int32) { self.fd = fd }

    deinit {
        // Owned and never closed: nobody can be using it while it is destroyed.
        if state.load(ordering: .acquiring) & 1 == 0 { SystemCall.close(fd) }
    }

    /// Whether ``close(before:)`` has been called.
    package var isClosed: Bool { state.load(ordering: .acquiring) & 1 != 0 }

    /// Begins a use: the descriptor, open until the matching ``endUse()``; `nil` if it is closed (then no
    /// ``endUse()``). The non-generic form of ``use(_:)`` for hot paths (a generic method of this
    /// non-copyable type was measured to stay unspecialised in its callers).
    @inlinable
    package func beginUse() -> Int32? { enter() ? fd : nil }

    /// Ends a use begun by ``beginUse()``.
    @inlinable
    package func endUse() { leave() }

    /// Runs `body` with the descriptor, which stays open until it returns; `nil` if it is closed.
    @inlinable
    package func use<T, E: Error>(_ body: (Int32) throws(E) -> T) throws(E) -> T? {
        guard enter() else { return nil }
        defer { leave() }
        return try body(fd)
    }

    /// Marks the descriptor closed, runs `before` with it still open (`shutdown`, deregistration), and
    /// closes it now or when the last call in progress returns. Whether this call was the first.
    @discardableResult
    package func close(before: (Int32) -> Void = { _ in }) -> Bool {
        guard enter() else { return false }
        if state.bitwiseOr(1, ordering: .acquiringAndReleasing).oldValue & 1 != 0 {
            leave()
            return false
        }
        before(fd)
        leave()
        return true
    }

    @usableFromInline
    func enter() -> Bool {
        var s = state.load(ordering: .relaxed)
        while s & 1 == 0 {
            let (exchanged, now) = state.compareExchange(
                expected: s,
                desired: s + 2,
                successOrdering: .acquiring,
                failureOrdering: .relaxed
            )
            if exchanged { return true }
            s = now
        }
        return false
    }

    @usableFromInline
    func leave() {
        // Closing and nobody left: this was the last use. The value can reach 1 only once (no use
        // begins after closing), so exactly one thread closes.
        if state.subtract(2, ordering: .acquiringAndReleasing).newValue == 1 { SystemCall.close(fd) }
    }
}
