/// What a fork server prepares in itself so that the workers it forks need not (see `ForkServer` in
/// Multiprocessing): the Swift runtime's answers to the conformance questions the module's generic types
/// ask when they are first used. Each first question scans every conformance record of every loaded
/// image (tens of microseconds in a program linking Foundation); answered once in the server, the answer
/// is in every worker's copy of the runtime's cache.
///
/// Only type metadata and the runtime's caches are touched: no global of this module is initialised (a global holding the main
/// thread's identity, such as `OSThread.main`, would be wrong in every child), no thread is started.
package enum ForkPreparation {
    package static func warmUp() {
        touch(TrackedMutex<[ObjectIdentifier: OSThread]>.self)
        touch(ThreadLocal<OSThread?>.self)
        touch(ThreadLocal<Waiter?>.self)
        touch(ThreadLocal<Bool>.self)
        // Hash tables keyed by the integer and identity types the library's state uses: each key type's
        // `Hashable` conformance is one question, asked when its storage type is first instantiated.
        touch([Int: Int].self, Set<Int>.self, [Int32: Int].self, Set<Int32>.self, [UInt32: Int].self)
        touch([UInt64: Int].self, Set<UInt64>.self, [UInt: Int].self, Set<UInt>.self, [String: Int].self)
        touch(Set<String>.self, [ObjectIdentifier: Int].self, Set<ObjectIdentifier>.self)
    }

    /// Instantiates each type's metadata through the runtime's demangler, as code that names a generic
    /// type by its mangled name does: that path checks the generic requirements (the conformance
    /// look-ups); a compiled metadata accessor, which `T.self` would use, passes them ready-made.
    @inline(never)
    package static func touch(_ types: Any.Type...) {
        for type in types {
            if let name = _mangledTypeName(type) { _ = _typeByName(name) }
        }
    }
}
