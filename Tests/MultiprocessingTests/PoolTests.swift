import Foundation
import Glibc
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

@testable import Multiprocessing

@Suite(.serialized, .timeLimit(.minutes(3)))
struct ProcessPoolTests {
    // MARK: API

    @Test func mapKeepsOrderAcrossChunkSizes() throws {
        try withTestPool { pool throws in
            let xs = Array(0..<1000)
            for cs in [nil, 1, 7, 1000] as [Int?] {
                #expect(try pool.map(SquareFn(), xs, chunksize: cs) == xs.map { $0 * $0 })
            }
            #expect(try pool.map(SquareFn(), [Int]()) == [])
            #expect(try pool.starmap(AddFn(), [(1, 2), (3, 4)]) == [3, 7])
            pool.close()
            #expect(try pool.join(timeout: .seconds(30)))
            #expect(pool.workerPIDs.isEmpty)
        }
    }

    /// Results travel as bytes to the consumer, which decodes them (raw-bytes types straight into the
    /// output array): every width, every chunk size, in order however they arrive.
    @Test func rawResultsOfEveryWidthArriveInPlace() throws {
        try withTestPool { pool throws in
            let xs = Array(0..<2000)
            for cs in [nil, 1, 3, 2000] as [Int?] {
                #expect(try pool.map(ParityFn(), xs, chunksize: cs) == xs.map { $0 % 2 == 0 })
                #expect(try pool.map(HalfFn(), xs, chunksize: cs) == xs.map { Double($0) / 2 })
                #expect(try pool.map(LowByteFn(), xs, chunksize: cs) == xs.map { Int8(truncatingIfNeeded: $0) })
                let unordered = try pool.imapUnordered(ParityFn(), xs, chunksize: cs)
                var evens = 0
                var all = 0
                while let v = try unordered.next() {
                    all += 1
                    if v { evens += 1 }
                }
                #expect(all == xs.count && evens == xs.count / 2)
            }
        }
    }

    /// An eager `map` of raw-bytes results lets the reactor hold them back until all are in (or 4,096
    /// are): it still returns every result in order, and its timeout still fires with results held back.
    @Test func mapEndsWhateverHoldsItsResults() throws {
        try withTestPool { pool throws in
            for cs in [1, 7] {
                let xs = Array(0..<5000)  // more than one hold-back batch
                #expect(try pool.map(SquareFn(), xs, chunksize: cs, timeout: .seconds(60)) == xs.map { $0 * $0 })
            }
            // 200 quick items and one that takes a minute: the quick ones are held back, the call times out.
            let ms = [Int](repeating: 0, count: 200) + [60_000]
            #expect {
                try pool.map(BlockingSleep(), ms, chunksize: 1, timeout: .seconds(2))
            } throws: {
                ($0 as? MultiprocessingError)?.code == .timedOut
            }
        }
    }

    /// Results of a type whose decoder may refuse a value are never held back: the refusal stops the
    /// call as soon as it arrives, while slow items are still running.
    @Test func aResultTheParentRefusesStopsAMapAtOnce() throws {
        try withTestPool { pool throws in
            // Item 13 is refused; the other worker is busy for a minute with an item that would otherwise
            // hold the call (the map is cancelled and its worker stopped when the refusal arrives).
            var xs = Array(0..<40)
            xs[0] = 60_000
            #expect {
                try pool.map(SlowPickyFn(), xs, chunksize: 1, timeout: .seconds(50))
            } throws: {
                ($0 as? MultiprocessingError)?.code == .decodingFailed && "\($0)".contains("13 is refused")
            }
        }
    }

    /// A result the parent cannot decode fails its own run of items (one item at chunk size 1; at most
    /// its chunk otherwise, less if the worker sent the chunk's results in parts) and nothing else; `map`
    /// throws that failure.
    @Test func resultsTheParentCannotDecodeFailOnlyTheirItems() throws {
        try withTestPool { pool throws in
            let xs = Array(0..<40)
            for (cs, chunk) in [(1, 13..<14), (5, 10..<15)] {
                #expect {
                    try pool.map(PickyFn(), xs, chunksize: cs)
                } throws: {
                    ($0 as? MultiprocessingError)?.code == .decodingFailed && "\($0)".contains("13 is refused")
                }
                let results = try pool.imap(PickyFn(), xs, chunksize: cs)
                var got: [Int] = []
                var failed: [Int] = []
                for i in xs {
                    do {
                        if let v = try results.next() { got.append(v.v) }
                    } catch {
                        failed.append(i)
                    }
                }
                #expect(try results.next() == nil)
                #expect(failed.contains(13) && failed.allSatisfy { chunk.contains($0) })
                #expect(failed == Array((failed.first ?? 0)..<((failed.last ?? -1) + 1)))  // one run
                #expect(got == xs.filter { !failed.contains($0) })
            }
        }
    }

    @Test func imapIsOrderedAndLazy() throws {
        try withTestPool { pool throws in
            let ordered = try pool.imap(SquareFn(), 0..<5000, maxInFlight: 64)
            var i = 0
            while let v = try ordered.next(timeout: .seconds(30)) {
                #expect(v == i * i)
                i += 1
            }
            #expect(i == 5000)
        }
    }

    @Test func imapOfUnknownLengthGrowsItsChunksAndKeepsOrder() throws {
        try withTestPool { pool throws in
            let results = try pool.imap(SquareFn(), UnknownLength(n: 50_000), maxInFlight: 1024)
            var i = 0
            while let v = try results.next(timeout: .seconds(30)) {
                #expect(v == i * i)
                i += 1
            }
            #expect(i == 50_000)
            // Chunks grew from 1: far fewer units than items went to the workers.
            #expect(pool.currentProgress.workers.map(\.tasks).reduce(0, +) < 10_000)
        }
    }

    @Test func imapUnorderedAndAsyncMapDeliverAll() async throws {
        try await withTestPool { pool async throws in
            var seen = Set<Int>()
            for try await v in try pool.imapUnordered(SquareFn(), 0..<3000, chunksize: 1) { seen.insert(v) }
            #expect(seen == Set((0..<3000).map { $0 * $0 }))
            #expect(try await pool.map(SquareFn(), 0..<10) == (0..<10).map { $0 * $0 })
        }
    }

    /// One item waits (up to 60 s, no timeout) until the 1,999 tiny ones beside it have run, with two
    /// workers: the tiny items queued behind it on its worker are taken back and run by the other worker,
    /// so they all run before it ends (its line is the log's last); and each item runs exactly once (the
    /// stuck worker never runs what was taken from it). The order results *arrive* in is not checked: the
    /// last tiny item's reply leaves its worker just after its log line, while the long item polls the log
    /// every 2 ms, so either may reach the parent first (it did, once, under ThreadSanitizer).
    @Test func itemsQueuedBehindALongOneGoToTheOtherWorker() async throws {
        let log = "/tmp/mp-reclaim-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"
        defer { unlink(log) }
        try await withTestPool { pool async throws in
            var order: [Int] = []
            for try await v in try pool.imapUnordered(
                LoggedSlowZero(log: log, ms: 60_000, count: 2000),
                0..<2000,
                chunksize: 1
            ) {
                order.append(v)
            }
            #expect(order.count == 2000 && Set(order) == Set(0..<2000))
            pool.close()
            try await pool.join()
        }
        let text = try #require(try? String(contentsOfFile: log, encoding: .utf8))
        let runs = text.split(separator: "\n").compactMap { Int($0) }
        #expect(runs.count == 2000 && Set(runs) == Set(0..<2000), "\(runs.count) runs of \(Set(runs).count) items")
        #expect(runs.last == 0, "an item waited behind the long one: \(runs.suffix(5))")
    }

    /// The same with the long item in the middle of its chunk, in the worker's raw-bytes loop (which
    /// stamps only a unit's first item with the clock: the parent ages the others from when it first sees
    /// them). Chunks of 4: item 2 waits (up to 60 s) until every item but itself and item 3 (after it in
    /// its chunk) has run; the units queued behind its chunk are taken back once it is overdue, so the
    /// log ends with 2, then 3, and each item runs once.
    @Test func aLongItemInsideAChunkIsSeenOverdue() async throws {
        let log = "/tmp/mp-reclaim-sync-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"
        defer { unlink(log) }
        try await withTestPool { pool async throws in
            let f = LoggedSlowSync(log: log, ms: 60_000, count: 2000, slow: 2)
            var seen = Set<Int>()
            for try await v in try pool.imapUnordered(f, 0..<2000, chunksize: 4) { seen.insert(v) }
            #expect(seen == Set(0..<2000))
            pool.close()
            try await pool.join()
        }
        let text = try #require(try? String(contentsOfFile: log, encoding: .utf8))
        let runs = text.split(separator: "\n").compactMap { Int($0) }
        #expect(runs.count == 2000 && Set(runs) == Set(0..<2000), "\(runs.count) runs of \(Set(runs).count) items")
        #expect(runs.suffix(2) == [2, 3], "an item waited behind the long one: \(runs.suffix(5))")
    }

    /// A chunk of fixed-width inputs and results runs in the worker's raw-bytes loop: an item that throws
    /// fails alone, at its index, with its own error; the others' results are exact.
    @Test func aRawBytesChunkFailsOnlyItsThrowingItems() async throws {
        try await withTestPool { pool async throws in
            let results = try pool.mapResults(TripleButSevens(), Array(0..<200), chunksize: 25)
            var i = 0
            for r in results {
                switch r {
                case .success(let v): #expect(i % 7 != 0 && v == i * 3, "item \(i): \(v)")
                case .failure(let e):
                    #expect(i % 7 == 0, "item \(i): \(e)")
                    #expect("\(e)".contains("Seven(x: \(i))"), "item \(i): \(e)")
                }
                i += 1
            }
            #expect(i == 200)
        }
    }

    /// A timeout runs from each item's start, also inside a chunk of the raw-bytes loop (which stamps an
    /// item's start only for calls with a time limit): 20 items of 100 ms in one chunk, a 1 s timeout —
    /// the chunk runs 2 s, no item 1 s. Fails if the parent timed items from their chunk's start.
    @Test func aTimeoutRunsFromEachItemInsideAChunk() async throws {
        try await withTestPool(workers: 1) { pool async throws in
            let xs = [Int](repeating: 100, count: 20)
            let out = try await pool.map(SleepsMs(), xs, chunksize: 20, options: TaskOptions(timeout: .seconds(1)))
            #expect(out == xs)
        }
    }

    /// One chunk of 1,000 items on one worker: its last item waits for a file the test creates only once
    /// result 500 has arrived, so the chunk's results must stream back while it runs (the raw-bytes loop
    /// reads the clock every few items, not every item, and still flushes every 2 ms).
    @Test func aLongRawBytesChunkStreamsItsResults() async throws {
        let gate = tempPath("gate")
        defer { unlink(gate) }
        try await withTestPool(workers: 1) { pool async throws in
            let f = GatedLastItem(path: gate, last: 999, ms: 60_000)
            var got: [Int] = []
            for try await v in try pool.imap(f, Array(0..<1000), chunksize: 1000) {
                got.append(v)
                if v == 500 { close(open(gate, O_WRONLY | O_CREAT, 0o644)) }
            }
            #expect(got == Array(0..<1000), "the results came only after the chunk ended: \(got.suffix(3))")
        }
    }

    /// One worker gets a quick item and then a long one, read together (a first item holds the worker
    /// until the call has sent them all): the long one waits (up to 30 s) for a file the test creates only
    /// once the quick item's result has arrived. The worker batches replies while work is queued, so the
    /// quick result sits in its buffer; once the long item is overdue the parent asks for it, and it
    /// arrives while the long item still runs (else the long item times out and returns -1).
    @Test func aQuickResultDoesNotWaitForTheLongItemAfterIt() async throws {
        let flag = tempPath("owed")
        defer { for x in 1...2 { unlink("\(flag).\(x)") } }
        func touch(_ x: Int) { close(open("\(flag).\(x)", O_WRONLY | O_CREAT, 0o644)) }
        try await withTestPool(workers: 1) { pool async throws in
            let f = AwaitsFile(path: flag, ms: 30_000)
            // Warmed up, so that the quick item takes well under the 0.1 ms after which a worker writes at once.
            #expect(try await pool.map(f, [0, 0, 0]) == [0, 0, 0])
            let results = try pool.imapUnordered(f, [2, 0, 1], chunksize: 1)
            touch(2)  // every task is sent: the worker goes on to read the quick and the long one together
            var got: [Int] = []
            for try await v in results {
                got.append(v)
                if v == 0 { touch(1) }
            }
            #expect(got == [2, 0, 1], "the quick result arrived only after the long item ended: \(got)")
        }
    }

    @Test func applyApplyAsyncSubmitAndCallbacks() throws {
        try withTestPool { pool throws in
            #expect(try pool.apply(Square(x: 9)) == 81)
            let results = Collected<Int>()
            let errors = Collected<String>()
            var handles: [PoolTask<Int>] = []
            for x in 0..<20 {
                handles.append(try pool.applyAsync(Square(x: x), callback: { v in results.append(v) }))
            }
            let bad = try pool.applyAsync(ThrowsCodable(), errorCallback: { e in errors.append("\(e)") })
            for h in handles { #expect(h.wait(timeout: .seconds(30))) }
            #expect(bad.wait(timeout: .seconds(30)))
            #expect(bad.isSuccessful == false)
            #expect(handles[3].isSuccessful == true && handles[3].isReady)
            #expect(throws: CodableFailure(reason: "bad input")) { try bad.get() }
            // Callbacks run on the pool's callback thread, after the tasks are done: wait for all of them.
            try eventually("21 callbacks ran") { results.all.count + errors.all.count >= 21 }
            #expect(results.all.sorted() == (0..<20).map { $0 * $0 })
            #expect(errors.all.count == 1)
            let f = try pool.submit(SquareFn(), 12)
            #expect(try f.get(timeout: .seconds(30)) == 144)
        }
    }

    @Test func getWithTimeoutThrowsWhileTheTaskRuns() throws {
        // The seed notes' `apply_async(...).get(timeout=1)` raising TimeoutError.
        try withTestPool(workers: 1) { pool throws in
            let slow = try pool.submit(BlockingSleep(), 1500)
            #expect(throws: MultiprocessingError.self) { try slow.get(timeout: .milliseconds(200)) }
            #expect(try slow.get(timeout: .seconds(30)) == 1500)
        }
    }

    @Test func initializerRunsInEveryWorker() throws {
        let pool = try ProcessPool(workers: 2, initializer: SetInit(value: "ready"), options: testPoolOptions())
        defer { pool.terminate() }
        #expect(try pool.map(ReadInit(), [1, 2, 3], chunksize: 1) == ["ready-1", "ready-2", "ready-3"])
    }

    @Test func failingInitializerBreaksThePoolInsteadOfSpinning() throws {
        let pool = try ProcessPool(
            workers: 2,
            initializer: FailingInit(),
            options: testPoolOptions(deathLimit: (3, .seconds(30)))
        )
        defer { pool.terminate() }
        let start = ContinuousClock.now
        let t = try pool.submit(SquareFn(), 2)
        #expect {
            try t.get(timeout: .seconds(30))
        } throws: { e in
            guard let p = e as? PoolError else { return false }
            return p.code == .broken && p.stderrTail.joined().contains("initializer refuses")
        }
        #expect(ContinuousClock.now - start < .seconds(20))
        #expect(throws: PoolError.self) { try pool.submit(SquareFn(), 1) }
    }

    @Test func withProcessPoolDrainsOnSuccessAndTearsDownOnError() async throws {
        let sum = try await withProcessPool(workers: 2, options: testPoolOptions()) { pool in
            try await pool.map(SquareFn(), 0..<100).reduce(0, +)
        }
        #expect(sum == (0..<100).map { $0 * $0 }.reduce(0, +))
        struct Boom: Error {}
        nonisolated(unsafe) var pids: [Int32] = []
        let start = ContinuousClock.now
        await #expect(throws: Boom.self) {
            try await withProcessPool(workers: 2, options: testPoolOptions()) { pool in
                _ = try pool.submit(BlockingSleep(), 60_000)
                _ = try await pool.run(Square(x: 2))
                pids = pool.workerPIDs
                throw Boom()
            }
        }
        // Torn down instead of waiting for the 60 s task (a generous bound: other suites share the cores).
        #expect(ContinuousClock.now - start < .seconds(30))
        #expect(pids.count == 2)
        for pid in pids { #expect(kill(pid, 0) != 0) }  // stopped and reaped
    }

    @Test func aWorkerBreakingTheProtocolIsStoppedAndThePoolGoesOn() throws {
        try withTestPool { pool throws in
            let bad = try pool.submit(GarbageWriter(), 1)
            let good = try (0..<6).map { try pool.submit(SquareFn(), $0) }
            #expect {
                try bad.get(timeout: .seconds(10))
            } throws: { e in (e as? PoolError)?.message.contains("broke the pool protocol") == true }
            for (i, g) in good.enumerated() { #expect(try g.get(timeout: .seconds(10)) == i * i) }
            #expect(try pool.apply(Square(x: 5), timeout: .seconds(10)) == 25)
        }
    }

    @Test func noDescriptorsOrChildrenLeftBehind() throws {
        /// (device, inode, eventfd id) of an open descriptor, or nil if it is closed. Every eventfd shares
        /// one anonymous inode, so a suite running beside this one that gets the same number for its own
        /// eventfd looked like ours still open: the kernel's `eventfd-id` (fdinfo) tells them apart.
        func identity(_ fd: Int32) -> [UInt64]? {
            var st = stat()
            guard fstat(fd, &st) == 0 else { return nil }
            let info = (try? String(contentsOfFile: "/proc/self/fdinfo/\(fd)", encoding: .utf8)) ?? ""
            let eventfdId = info.split(separator: "\n").first { $0.hasPrefix("eventfd-id:") }
                .flatMap { UInt64($0.dropFirst("eventfd-id:".count).trimmingCharacters(in: .whitespaces)) }
            return [UInt64(st.st_dev), UInt64(st.st_ino), eventfdId ?? 0]
        }
        try withTestPool { pool throws in
            let pids = pool.workerPIDs
            _ = try pool.mapResults(Faulty(crashAt: 5, mode: .sigkill), Array(0..<20), chunksize: 2)  // one replacement
            try eventually("the dead worker is replaced") { pool.workerPIDs.count == 2 }
            let fds = pool.core.descriptors
            #expect(fds.count == 10)  // 5 per worker
            let before = fds.map(identity)
            // The kernel gives a closed eventfd's id to the next eventfd made (the lowest free one): a suite
            // running beside this one could get both our descriptor's number and its id (CI saw it once).
            // A duplicate of each eventfd, held until the check, keeps its id taken; pipes' and sockets'
            // inode numbers are not reused so soon, and those are not duplicated (a socket's duplicate
            // would keep the worker from seeing its end).
            let held = zip(fds, before).compactMap { fd, id in (id?[2] ?? 0) != 0 ? dup(fd) : nil }
            defer { for d in held { close(d) } }
            let live = pool.workerPIDs
            pool.close()
            #expect(try pool.join(timeout: .seconds(30)))
            // Each descriptor is closed, or reused by another suite for another file: never still ours.
            for (fd, was) in zip(fds, before) {
                let now = identity(fd)
                #expect(now == nil || now != was, "descriptor \(fd) is still open")
            }
            #expect(pool.workerPIDs.isEmpty)
            let all = pids + live
            #expect(all.allSatisfy { kill($0, 0) != 0 })  // exited and reaped: not even zombies
            #expect(!Processes.activeChildren().contains { all.contains($0.pid) })
        }
    }

    @Test func anInputThatCannotBeEncodedEndsTheCallWithItsError() throws {
        let inputs = (0..<10).map(Fragile.init)
        try withTestPool { pool throws in
            // Eager: thrown by the call itself.
            #expect { try pool.map(FragileFn(), inputs, chunksize: 1) } throws: { e in
                (e as? MultiprocessingError)?.code == .encodingFailed
            }
            // Lazy: the items before it, then its error at its place, then the end — never a hang.
            let results = try pool.imap(FragileFn(), inputs, chunksize: 1, maxInFlight: 2)
            var got: [Int] = []
            var failure: (any Error)?
            while true {
                do {
                    guard let v = try results.next(timeout: .seconds(10)) else { break }
                    got.append(v)
                } catch {
                    failure = error
                }
            }
            #expect(got == [0, 1, 2, 3, 4])
            #expect((failure as? MultiprocessingError)?.code == .encodingFailed)
        }
        for lazyPool in [InProcessPool(workers: 2)] {
            let r = try lazyPool.imap(FragileFn(), inputs, chunksize: 1, maxInFlight: 2)
            var n = 0
            while (try? r.next(timeout: .seconds(10))) != nil { n += 1 }
            #expect(n == 10)  // threads need no encoding: everything runs
        }
    }

    @Test func payloadsLargerThanSocketBuffersTravelBothWays() throws {
        // 4 MiB per item: the parent's writes would block, so they finish on a background writer while
        // the reactor keeps reading replies.
        try withTestPool { pool throws in
            let inputs = (0..<6).map { i in [UInt8](repeating: UInt8(i), count: 4 << 20) }
            let outputs = try pool.map(EchoBytes(), inputs, chunksize: 1, timeout: .seconds(60))
            #expect(outputs == inputs)
        }
    }

    @Test func mapTimeoutCancelsTheRest() throws {
        try withTestPool { pool throws in
            let start = ContinuousClock.now
            #expect {
                try pool.map(
                    CooperativeSleep(),
                    Array(repeating: 60_000, count: 8),
                    chunksize: 1,
                    timeout: .milliseconds(300)
                )
            } throws: { e in (e as? MultiprocessingError)?.code == .timedOut }
            let took = ContinuousClock.now - start
            // At its timeout, not before; and not after the items (a minute each): a generous bound, as other
            // suites share the cores.
            #expect(took >= .milliseconds(300) && took < .seconds(30), "\(took)")
            #expect(try pool.apply(Square(x: 3), timeout: .seconds(30)) == 9)  // the cancelled work is gone
        }
    }

    @Test func withProcessPoolTearsDownWhenItsTaskIsCancelled() async throws {
        let pids = TrackedMutex<[Int32]>([])
        let running = TrackedMutex<ProcessPool?>(nil)
        let scope = Task {
            try await withProcessPool(workers: 2, options: testPoolOptions()) { pool in
                pids.withLock { $0 = pool.workerPIDs }
                running.withLock { $0 = pool }
                _ = try await pool.submit(CooperativeSleep(), 60_000).value
            }
        }
        try await eventually("the scope's task runs in a worker") { () async in
            running.withLock { $0?.core.busyWorkers == 1 }
        }
        running.withLock { $0 = nil }
        let start = ContinuousClock.now
        scope.cancel()
        await #expect(throws: CancellationError.self) { try await scope.value }
        // Torn down instead of waiting for the 60 s task (a generous bound: other suites share the cores).
        #expect(ContinuousClock.now - start < .seconds(30))
        #expect(pids.withLock { $0.count } == 2)
        for pid in pids.withLock({ $0 }) { #expect(kill(pid, 0) != 0) }
    }

    @Test func progressReachesTotalAndReportsWorkers() async throws {
        try await withTestPool { pool async throws in
            _ = try await pool.map(SquareFn(), 0..<500, chunksize: 10)
            let p = pool.currentProgress
            #expect(p.done == 500 && p.total == 500 && p.failed == 0)
            #expect(p.workers.count == 2)
            #expect(p.workers.allSatisfy { $0.startup != nil && $0.tasks > 0 })
            #expect(p.workers.allSatisfy { ($0.peakMemory ?? 0) > 0 })
            var iterator = pool.progress(every: .milliseconds(10)).makeAsyncIterator()
            let first = await iterator.next()
            #expect(first?.fractionDone == 1)
            // The periodic snapshots leave out what costs a file read per worker.
            #expect(first?.workers.allSatisfy { $0.peakMemory == nil } == true)
        }
    }

    // MARK: failures

    @Test(arguments: CrashMode.allCases)
    func deadWorkerFailsOnlyItsItem(mode: CrashMode) throws {
        try withTestPool { pool throws in
            let before = Set(pool.workerPIDs)
            let xs = Array(0..<60)
            let start = ContinuousClock.now
            let results = try pool.mapResults(Faulty(crashAt: 23, mode: mode), xs, chunksize: 10)
            #expect(ContinuousClock.now - start < .seconds(10))
            for (x, r) in zip(xs, results) where x != 23 {
                #expect((try? r.get()) == x * x, "item \(x)")
            }
            guard case .failure(let e) = results[23], let p = e as? PoolError else {
                Issue.record("item 23 should have failed with a PoolError, got \(results[23])")
                return
            }
            #expect(p.code == .workerDied)
            switch mode {
            case .trap: #expect(p.signal == SIGILL || p.signal == SIGTRAP)
            case .sigkill: #expect(p.signal == SIGKILL)
            case .sigsegv: #expect(p.signal == SIGSEGV)
            case .exit: #expect(p.exitCode == 3)
            }
            #expect(p.stderrTail.contains { $0.contains("crashing on 23") }, "\(p.stderrTail)")
            #expect((p.peakMemoryBytes ?? 0) > 0)
            #expect(p.pid.map { before.contains($0) } == true)
            // replaced, and the pool works on
            #expect(try pool.map(SquareFn(), [1, 2, 3]) == [1, 4, 9])
            try eventually("the dead worker is replaced") { pool.workerPIDs.count == 2 }
            #expect(!pool.workerPIDs.contains(p.pid!))
        }
    }

    @Test func finishedItemsOfACrashedChunkKeepTheirResults() throws {
        // One chunk of 50 slow-ish items whose 40th kills the worker: the 39 before it have results.
        try withTestPool(workers: 1) { pool throws in
            let results = try pool.mapResults(Faulty(crashAt: 39, mode: .sigkill), Array(0..<50), chunksize: 50)
            #expect(results.enumerated().filter { (try? $0.element.get()) == nil }.map(\.offset) == [39])
        }
    }

    // The timeout tests below check, end to end, that a deadline is kept and never before it; the exact
    // instants of each decision (SIGTERM at the limit, SIGKILL a kill grace later, a soft timeout's
    // cancellation and grace) are PoolStateTests' (a fake clock), and how late they come on real clocks is
    // measured by `scripts/bench pool timeouts`. Upper bounds here only say "it did not hang" (other
    // suites' workers share the cores).

    @Test func hardTimeoutStopsTheWorkerAndFailsOnlyThatTask() throws {
        try withTestPool { pool throws in
            let start = ContinuousClock.now
            let stuck = try pool.submit(
                BlockingSleep(),
                30_000,
                options: TaskOptions(timeout: .milliseconds(300), killGrace: .milliseconds(200))
            )
            let others = try (0..<10).map { try pool.submit(BlockingSleep(), 20 + $0) }
            #expect {
                try stuck.get(timeout: .seconds(25))
            } throws: { e in (e as? PoolError)?.code == .timedOut }
            let took = ContinuousClock.now - start
            // Not before the limit (less the coarse clock of the item's start); the task sleeps 30 s.
            #expect(took >= .milliseconds(300) - coarseClockResolution && took < .seconds(25), "\(took)")
            for (i, o) in others.enumerated() { #expect(try o.get(timeout: .seconds(20)) == 20 + i) }
            #expect(try pool.apply(Square(x: 3)) == 9)
        }
    }

    @Test func hardTimeoutEscalatesToSIGKILL() throws {
        try withTestPool(workers: 1) { pool throws in
            let start = ContinuousClock.now
            let t = try pool.submit(
                IgnoresSIGTERM(),
                30_000,
                options: TaskOptions(timeout: .milliseconds(200), killGrace: .milliseconds(300))
            )
            #expect {
                try t.get(timeout: .seconds(25))
            } throws: { e in
                guard let p = e as? PoolError else { return false }
                return p.code == .timedOut && p.signal == SIGKILL  // SIGTERM was ignored: SIGKILL after the grace
            }
            let took = ContinuousClock.now - start
            // Not before the limit plus the kill grace (500 ms, less the coarse clock of the item's start).
            #expect(took >= .milliseconds(450) && took < .seconds(25), "\(took)")
            #expect(try pool.apply(Square(x: 7), timeout: .seconds(10)) == 49)
        }
    }

    @Test func softTimeoutCancelsCooperativelyAndKeepsTheWorker() throws {
        try withTestPool(workers: 1) { pool throws in
            let pid = try pool.submit(PidFn(), 0).get(timeout: .seconds(30))
            let start = ContinuousClock.now
            let t = try pool.submit(CooperativeSleep(), 30_000, options: TaskOptions(softTimeout: .milliseconds(200)))
            let others = try (0..<5).map { try pool.submit(SquareFn(), $0) }
            #expect {
                try t.get(timeout: .seconds(20))
            } throws: { e in (e as? PoolError)?.code == .timedOut }
            let took = ContinuousClock.now - start
            // Not before the limit (less the coarse clock of the item's start); the task sleeps 30 s.
            #expect(took >= .milliseconds(200) - coarseClockResolution && took < .seconds(20), "\(took)")
            for (i, o) in others.enumerated() { #expect(try o.get(timeout: .seconds(10)) == i * i) }
            #expect(try pool.submit(PidFn(), 0).get(timeout: .seconds(30)) == pid)  // same worker: it was not killed
        }
    }

    @Test func cancellingTheAwaitingSwiftTaskCancelsThePoolTask() async throws {
        try await withTestPool(workers: 1) { pool async throws in
            let waiter = Task { try await pool.submit(CooperativeSleep(), 30_000).value }
            try await eventually("the task runs in the worker") { () async in pool.core.busyWorkers == 1 }
            let start = ContinuousClock.now
            waiter.cancel()
            await #expect(throws: CancellationError.self) { try await waiter.value }
            #expect(ContinuousClock.now - start < .seconds(20))  // the task sleeps 30 s
            #expect(try await pool.run(Square(x: 2)) == 4)
        }
    }

    @Test func cancellingARunningTask() throws {
        let markers = (tempPath("coop-running"), tempPath("blocking-running"))
        defer {
            unlink(markers.0)
            unlink(markers.1)
        }
        try withTestPool(workers: 1) { pool throws in
            let pid = try pool.submit(PidFn(), 0).get(timeout: .seconds(30))
            // cooperative: cancelled inside the worker, which survives
            let coop = try pool.submit(MarkThenSleep(marker: markers.0), 30_000)
            try eventually("the cooperative task runs") { exists(markers.0) }
            coop.cancel()
            #expect(throws: CancellationError.self) { try coop.get(timeout: .seconds(20)) }
            #expect(try pool.submit(PidFn(), 0).get(timeout: .seconds(30)) == pid)
            // not cooperative: the worker is killed after the grace period and replaced
            let blocking = try pool.submit(
                MarkThenBlock(marker: markers.1),
                30_000,
                options: TaskOptions(cancelGrace: .milliseconds(200))
            )
            try eventually("the blocking task runs") { exists(markers.1) }
            let start = ContinuousClock.now
            blocking.cancel()
            #expect(throws: CancellationError.self) { try blocking.get(timeout: .seconds(20)) }
            #expect(ContinuousClock.now - start < .seconds(20))  // the task sleeps 30 s
            #expect(try pool.submit(PidFn(), 0).get(timeout: .seconds(30)) != pid)
            // a queued task is cancelled without running
            let busy = try pool.submit(BlockingSleep(), 300)
            let queued = try pool.submit(SquareFn(), 5)
            queued.cancel()
            #expect(throws: CancellationError.self) { try queued.get(timeout: .seconds(10)) }
            #expect(try busy.get(timeout: .seconds(10)) == 300)
        }
    }

    @Test func retryPolicies() throws {
        let marker = tempPath("crash-once")
        let marker2 = tempPath("throw-once")
        defer {
            unlink(marker)
            unlink(marker2)
        }
        try withTestPool { pool throws in
            // a crash, retried
            let retried = try pool.submit(
                CrashOnce(marker: marker),
                1,
                options: TaskOptions(retry: RetryPolicy(attempts: 3, backoff: .milliseconds(10)))
            )
            #expect(try retried.get(timeout: .seconds(30)) == 1001)
            // a thrown error, retried only when asked
            let t = try pool.submit(
                ThrowOnce(marker: marker2),
                5,
                options: TaskOptions(retry: RetryPolicy(attempts: 2, on: [.error]))
            )
            #expect(try t.get(timeout: .seconds(30)) == 5)
            // a task that kills every worker is failed after maxWorkerKills, not retried forever
            let start = ContinuousClock.now
            let killer = try pool.submit(
                AlwaysCrash(),
                1,
                options: TaskOptions(retry: RetryPolicy(attempts: 10, backoff: .milliseconds(1), maxWorkerKills: 2))
            )
            #expect {
                try killer.get(timeout: .seconds(30))
            } throws: { e in
                guard let p = e as? PoolError else { return false }
                return p.code == .workerDied && p.message.contains("killed 2 workers") && p.attempts == 2
            }
            #expect(ContinuousClock.now - start < .seconds(10))
            #expect(try pool.apply(Square(x: 4)) == 16)
        }
    }

    @Test func tooManyDeathsBreakThePool() throws {
        try withTestPool(options: testPoolOptions(deathLimit: (4, .seconds(30)))) { pool throws in
            let start = ContinuousClock.now
            let results = try pool.mapResults(AlwaysCrash(), Array(0..<40), chunksize: 1)
            #expect(ContinuousClock.now - start < .seconds(15))
            let codes = results.compactMap { r -> PoolError.Code? in
                if case .failure(let e) = r { return (e as? PoolError)?.code }
                return nil
            }
            #expect(codes.count == 40)
            #expect(codes.contains(.broken))
            #expect(codes.filter { $0 == .workerDied }.count <= 5)
            #expect { try pool.submit(SquareFn(), 1) } throws: { e in (e as? PoolError)?.code == .broken }
            #expect(try pool.join(timeout: .seconds(30)))
        }
    }

    @Test func jobErrorsAndUnencodableResults() throws {
        try withTestPool { pool throws in
            let results = try pool.mapResults(SevensThrow(), Array(0..<30), chunksize: 4)
            for (x, r) in results.enumerated() {
                if x % 7 == 0 {
                    #expect(throws: CodableFailure(reason: "\(x) is a multiple of 7")) { try r.get() }
                } else {
                    #expect(try r.get() == x)
                }
            }
            let plain = try pool.submit(ThrowsPlain())
            #expect {
                try plain.get(timeout: .seconds(30))
            } throws: { e in
                guard let r = e as? RemoteError else { return false }
                return r.message == "plain failure" && r.typeName.contains("PlainFailure") && r.pid != getpid()
            }
            let bad = try pool.mapResults(UnencodableOdd(), [1, 2, 3], chunksize: 3)
            for r in bad {
                #expect { _ = try r.get() } throws: { e in (e as? MultiprocessingError)?.code == .encodingFailed }
            }
            #expect(try pool.apply(Square(x: 5)) == 25)
        }
    }

    @Test func maxTasksPerChildRecyclesWithoutLosingWork() throws {
        try withTestPool(options: testPoolOptions(maxTasksPerChild: 1)) { pool throws in
            let pids = try pool.map(PidFn(), Array(0..<8), chunksize: 1)
            #expect(pids.count == 8)
            #expect(Set(pids).count == 8)  // every task in a fresh worker
            #expect(!pids.contains(getpid()))
        }
    }

    @Test func memoryLimitRecyclesWorkers() throws {
        try withTestPool(workers: 1, options: testPoolOptions(memoryLimit: 40 << 20)) { pool throws in
            let pids = try pool.map(Hog(), Array(repeating: 48, count: 4), chunksize: 1)
            #expect(pids.count == 4)
            #expect(Set(pids).count == 4, "\(pids)")  // over the limit after each task: none runs another
        }
    }

    @Test func terminateFailsQueuedWorkAndReapsWorkers() throws {
        try withTestPool { pool throws in
            let pids = pool.workerPIDs
            let tasks = try (0..<4).map { _ in try pool.submit(BlockingSleep(), 10_000) }
            // Two run, two wait behind them: terminate fails both kinds.
            try eventually("both workers run a task") { pool.core.busyWorkers == 2 }
            pool.terminate()
            for r in tasks {
                #expect { try r.get(timeout: .seconds(10)) } throws: { e in (e as? PoolError)?.code == .terminated }
            }
            #expect(try pool.join(timeout: .seconds(30)))
            for pid in pids { #expect(kill(pid, 0) != 0) }
        }
    }

    @Test func closedPoolRefusesWorkAndJoinNeedsClose() throws {
        try withTestPool(workers: 1) { pool throws in
            #expect(throws: PoolError.self) { try pool.join(timeout: .zero) }
            let t = try pool.submit(BlockingSleep(), 100)
            pool.close()
            #expect { try pool.submit(SquareFn(), 1) } throws: { e in (e as? PoolError)?.code == .closed }
            #expect(try t.get(timeout: .seconds(10)) == 100)  // queued work still finishes
            #expect(try pool.join(timeout: .seconds(30)))
        }
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct PoolInterruptTests {
    /// Runs `mp-test-helper pool-interrupt-check`, sends it `signals` SIGINTs, and checks that it died of SIGINT
    /// and that none of its workers survives (they are re-parented here, so reap them here if needed).
    func interrupt(times signals: Int, carryOn: Bool = false) throws {
        guard let exe = testHelperExecutable() else { return }
        try Processes.adoptOrphans()
        let p = Foundation.Process()
        p.executableURL = exe
        p.arguments = ["pool-interrupt-check"] + (carryOn ? ["teardown"] : [])
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        var text = ""
        let deadline = Date().addingTimeInterval(30)
        while !text.contains("\n") && Date() < deadline {
            text += String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        }
        let pids = text.split(separator: "\n").first?.split(separator: " ").dropFirst().compactMap { Int32($0) } ?? []
        #expect(pids.count == 2, "\(text)")
        let start = Date()
        for _ in 0..<signals { kill(p.processIdentifier, SIGINT) }
        let watchdog = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + 40, execute: watchdog)
        p.waitUntilExit()
        watchdog.cancel()
        // Ended instead of waiting for its minute-long tasks (a generous bound: other suites share the cores).
        #expect(Date().timeIntervalSince(start) < 30)
        if carryOn {
            text += String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(p.terminationReason == .exit && p.terminationStatus == 0, "\(text)")
            #expect(text.contains("interrupted: interrupted by SIGINT; workers left: 0"), "\(text)")
        } else {
            #expect(p.terminationReason == .uncaughtSignal && p.terminationStatus == SIGINT)
        }
        for pid in pids {
            try eventually("worker \(pid) is gone") {
                Processes.reapAdoptedOrphan(pid, timeout: .milliseconds(50))
                return kill(pid, 0) != 0
            }
        }
    }

    @Test func ctrlCTearsDownThenEnds() throws { try interrupt(times: 1) }
    @Test func secondCtrlCKillsAtOnce() throws { try interrupt(times: 2) }
    @Test func ctrlCWithTearDownFailsTheWorkAndCarriesOn() throws { try interrupt(times: 1, carryOn: true) }

    @Test func workersIgnoreSIGINT() throws {
        /// Whether `pid`'s disposition for `signal` is "ignore" (its `SigIgn` mask in /proc).
        func ignores(_ pid: Int32, _ signal: Int32) -> Bool? {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
                let line = status.split(separator: "\n").first(where: { $0.hasPrefix("SigIgn:") }),
                let mask = UInt64(line.dropFirst("SigIgn:".count).trimmingCharacters(in: .whitespaces), radix: 16)
            else { return nil }
            return mask & (1 << UInt64(signal - 1)) != 0
        }
        try withTestPool { pool throws in
            let pids = pool.workerPIDs
            #expect(pids.count == 2)
            // Ready: past the point where a worker ignores SIGINT (it says so only after).
            try eventually("both workers are ready") {
                let workers = pool.currentProgress.workers
                return workers.count == 2 && workers.allSatisfy { $0.startup != nil }
            }
            for pid in pids { #expect(ignores(pid, SIGINT) == true, "worker \(pid)") }
            for pid in pids { kill(pid, SIGINT) }
            // A worker that did not ignore it is already doomed: it cannot answer the items sent to it, and
            // its death replaces it before this map returns.
            #expect(try pool.map(SquareFn(), Array(0..<10), chunksize: 1) == (0..<10).map { $0 * $0 })
            #expect(pool.workerPIDs == pids)
        }
    }
}

/// The same code against both pools.
func exercise(_ pool: some TaskPool) async throws {
    let xs = Array(0..<500)
    try await background { try exerciseBlocking(pool) }.value  // blocking calls stay off the cooperative pool
    #expect(try await pool.map(SquareFn(), xs, chunksize: 3, options: .default) == xs.map { $0 * $0 })
    #expect(try await pool.run(AsyncEcho(text: "x"), options: .default).hasPrefix("x from"))
    var seen: [Int] = []
    for try await v in try pool.imapUnordered(SquareFn(), 0..<100, chunksize: 1, maxInFlight: nil, options: .default) {
        seen.append(v)
    }
    #expect(seen.sorted() == (0..<100).map { $0 * $0 })
    pool.close()
    #expect(try pool.join(timeout: .seconds(30)))
}

func exerciseBlocking(_ pool: some TaskPool) throws {
    let xs = Array(0..<500)
    #expect(
        try pool.map(SquareFn(), xs, chunksize: nil, options: .default, timeout: .seconds(60)) == xs.map { $0 * $0 }
    )
    #expect(try pool.starmap(AddFn(), [(1, 2), (3, 4)], chunksize: nil, options: .default, timeout: nil) == [3, 7])
    let lazy = try pool.imap(SquareFn(), 0..<300, chunksize: nil, maxInFlight: 16, options: .default)
    #expect(try lazy.collect() == (0..<300).map { $0 * $0 })
    #expect(try pool.apply(Square(x: 6), timeout: .seconds(30), options: .default) == 36)
    let got = TrackedMutex<[Int]>([])
    let handles = try (0..<10).map { x in
        try pool.applyAsync(
            Square(x: x),
            options: .default,
            callback: { v in got.withLock { $0.append(v) } },
            errorCallback: nil
        )
    }
    for h in handles { #expect(h.wait(timeout: .seconds(30))) }
    let results = try pool.mapResults(
        SevensThrow(),
        Array(0..<15),
        chunksize: 4,
        options: .default,
        timeout: .seconds(60)
    )
    #expect(results.filter { (try? $0.get()) == nil }.count == 3)
    let soft = try pool.submit(CooperativeSleep(), 30_000, options: TaskOptions(softTimeout: .milliseconds(100)))
    #expect { try soft.get(timeout: .seconds(10)) } throws: { e in (e as? PoolError)?.code == .timedOut }
    let marker = tempPath("throw-once-\(pool.workerCount)")
    defer { unlink(marker) }
    #expect(
        try pool.submit(
            ThrowOnce(marker: marker),
            9,
            options: TaskOptions(retry: RetryPolicy(attempts: 2, on: [.error]))
        ).get(timeout: .seconds(30)) == 9
    )
    // A running task (the file its item creates says so) is cancelled: it ends without its 30 s.
    let started = tempPath("running-\(pool.workerCount)")
    defer { unlink(started) }
    let running = try pool.submit(MarkThenSleep(marker: started), 30_000, options: .default)
    try eventually("the task runs") { exists(started) }
    running.cancel()
    #expect(throws: CancellationError.self) { try running.get(timeout: .seconds(20)) }
    #expect(pool.currentProgress.done >= 500)
}

@Suite(.serialized, .timeLimit(.minutes(2)))
struct SamePoolAPITests {
    @Test func onProcesses() async throws {
        try await withTestPool { pool async throws in try await exercise(pool) }
    }
    @Test func onThreads() async throws { try await exercise(InProcessPool(workers: 3)) }

    /// A thread cannot be killed: the in-process pool's hard timeout (a timer armed at submit, not the
    /// process pool's `PoolState`) fails the task at its deadline while the item runs on. The item here
    /// cannot end before the test opens its gate, so the failure is the timeout's, whatever the machine's
    /// load; how late it fires is not a test's business.
    @Test func threadPoolHardTimeoutFailsAtTheDeadline() throws {
        let gate = Gate()
        let pool = InProcessPool(workers: 1)
        defer {
            gate.open()
            pool.close()
            #expect((try? pool.join(timeout: .seconds(30))) == true)
        }
        let start = ContinuousClock.now
        let t = try pool.submit(WaitsAtGate(gate: gate.id), 1, options: TaskOptions(timeout: .milliseconds(100)))
        #expect { try t.get(timeout: .seconds(30)) } throws: { e in (e as? PoolError)?.code == .timedOut }
        #expect(ContinuousClock.now - start >= .milliseconds(100))  // not before its deadline
        #expect(gate.reached.wait(timeout: .seconds(30)))  // the item ran, and is still waiting at its gate
    }

    @Test func threadPoolTerminateFailsQueuedWork() throws {
        let gate = Gate()
        defer { gate.open() }
        let pool = InProcessPool(workers: 1)
        let running = try pool.submit(WaitsAtGate(gate: gate.id), 200)
        let queued = try (0..<3).map { try pool.submit(SquareFn(), $0) }
        let lazy = try pool.imap(SquareFn(), 0..<100, chunksize: 10, maxInFlight: 1000)
        #expect(gate.reached.wait(timeout: .seconds(30)))  // the first task runs; the others wait behind it
        pool.terminate()
        for q in queued {
            #expect { try q.get(timeout: .seconds(10)) } throws: { e in (e as? PoolError)?.code == .terminated }
        }
        #expect(throws: PoolError.self) { _ = try lazy.collect(timeout: .seconds(10)) }
        gate.open()
        #expect(try running.get(timeout: .seconds(30)) == 200)  // a running item runs to its end
    }

    /// An item's task starts on its pool thread and resumes there after every suspension: the
    /// in-process pool never needs a thread of the cooperative pool.
    @Test func threadPoolItemsResumeOnTheirPoolThread() throws {
        let pool = InProcessPool(workers: 2)
        defer {
            pool.close()
            #expect((try? pool.join(timeout: .seconds(30))) == true)
        }
        let places = try pool.map(ThreadAcrossSuspensions(), Array(0..<8), chunksize: 1)
        for p in places {
            #expect(p.hasPrefix("InProcessPool"), "\(p)")
            #expect(!p.hasSuffix("moved"), "\(p)")
        }
        #expect(try pool.submit(ThreadAcrossSuspensions(), 0).get(timeout: .seconds(30)).hasPrefix("InProcessPool"))
    }

    /// The soft timeout cancels an item that runs on its pool thread without ever waiting (looking only at
    /// `Task.isCancelled`), and one that yields each turn (its queue of jobs never empties).
    @Test func threadPoolSoftTimeoutCancelsAnItemThatNeverWaits() throws {
        let pool = InProcessPool(workers: 1)
        defer {
            pool.close()
            #expect((try? pool.join(timeout: .seconds(30))) == true)
        }
        for yields in [0, 1] {
            let t = try pool.submit(SpinsUntilCancelled(), yields, options: TaskOptions(softTimeout: .milliseconds(50)))
            #expect { try t.get(timeout: .seconds(60)) } throws: { e in (e as? PoolError)?.code == .timedOut }
        }
    }

    /// A task cancelled while its first part runs (before it first suspends, so before another thread can
    /// see it) is cancelled once it is known: its ten-minute sleep ends at once and the thread serves the
    /// next task.
    @Test func threadPoolCancelBeforeTheFirstSuspensionReachesTheTask() throws {
        let gate = Gate()
        defer { gate.open() }
        let pool = InProcessPool(workers: 1)
        defer {
            pool.close()
            #expect((try? pool.join(timeout: .seconds(30))) == true)
        }
        let t = try pool.submit(BlocksAtGateThenSleeps(gate: gate.id), 1)
        #expect(gate.reached.wait(timeout: .seconds(30)))
        t.cancel()
        gate.open()
        #expect(try pool.submit(SquareFn(), 3).get(timeout: .seconds(60)) == 9)
    }

    /// Every thread of the cooperative pool held by code that blocks (here on purpose; in a program, other
    /// blocking bridges or a blocking syscall): a blocking in-process pool call whose items suspend still
    /// finishes. It used to wait for a cooperative thread to run each item's task.
    @Test func threadPoolServesWhileTheCooperativePoolIsHeld() async throws {
        // On a thread of its own: the test's task, suspended meanwhile, holds no cooperative thread.
        try await background {
            let holders = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))  // the cooperative pool's width
            let held = TrackedMutex(0)
            let release = Event()
            defer { release.set() }
            for _ in 0..<holders {
                Task.detached {
                    held.withLock { $0 += 1 }
                    holdThread(until: release)
                }
            }
            try eventually("every cooperative thread is held") { held.withLock { $0 } == holders }
            let pool = InProcessPool(workers: 2)
            defer {
                pool.close()
                #expect((try? pool.join(timeout: .seconds(30))) == true)
            }
            let ones = Array(repeating: 1, count: 20)
            let out = try pool.mapResults(CooperativeSleep(), ones, chunksize: 1, timeout: .seconds(60))
            #expect(out.compactMap { try? $0.get() } == ones)
            #expect(try pool.submit(CooperativeSleep(), 2).get(timeout: .seconds(60)) == 2)
        }.value
    }

    @Test func threadPoolInitializerRunsPerThread() throws {
        let count = TrackedMutex(0)
        let pool = InProcessPool(workers: 2, initializer: { count.withLock { $0 += 1 } })
        _ = try pool.map(SquareFn(), Array(0..<100), chunksize: 1)
        pool.close()
        #expect(try pool.join(timeout: .seconds(30)))
        #expect(count.withLock { $0 } >= 1 && count.withLock { $0 } <= 2)
    }
}

/// A pool's parent at its descriptor limit: a worker killed while every descriptor is taken cannot be
/// replaced; the pool must neither trap (the reactor used to `precondition` on its descriptor) nor hang,
/// and once descriptors are given back it replaces the worker and serves again.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct PoolExhaustionTests {
    @Test func aParentOutOfDescriptorsRecoversWhenTheyAreFreed() throws {
        guard let exe = testHelperExecutable() else { return }
        let (status, reason, text) = try runToEnd(exe, ["pool-nofile", "64"])
        #expect(reason == .exit && status == 0, "\(text)")
        #expect(text.contains("first: [2, 3, 4]"), "\(text)")
        #expect(text.contains("after: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"), "\(text)")
        #expect(text.contains("done"), "\(text)")
    }
}

/// Blocks the calling thread until `event` is set (a test holding a cooperative thread on purpose).
private func holdThread(until event: Event) { _ = event.wait(timeout: .seconds(300)) }
