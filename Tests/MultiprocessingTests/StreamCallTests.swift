import Glibc
import Synchronization
import Testing
import Threading

@testable import Multiprocessing

/// A `map`'s results of a raw-bytes type are copied from each reply straight into the call's result once
/// the consumer collects (``StreamCall/placeResults()``). Replies that came before that point are in one
/// of two places — already handed to the consumer's queue, or still held by the call — and must join the
/// placed ones exactly; a malformed reply is still reported, not placed.
@Suite struct StreamCallTests {
    private func encoded(_ xs: [Int]) throws -> [UInt8] { try ItemsCodec<Int>().encode(xs) }

    private func deliver(_ call: StreamCall<Int>, start: Int, _ bytes: [UInt8], count: Int) {
        bytes.withUnsafeBytes { call.deliver(start: start, count: count, payload: $0) }
    }

    @Test func repliesFromBeforePlacingBeganJoinThePlacedOnes() throws {
        let call = StreamCall<Int>(options: .default)
        let results = PoolResults(call: call, credit: nil, ordered: true) {}
        call.totalItems.store(8, ordering: .relaxed)
        // Handed to the consumer's queue before it collects.
        deliver(call, start: 2, try encoded([20, 30]), count: 2)
        call.flushDeliveries()
        // Held by the call (the whole result is wanted from here on).
        call.wantWholeResult()
        deliver(call, start: 6, try encoded([60, 70]), count: 2)
        deliver(call, start: 0, try encoded([0, 10]), count: 2)
        call.inputEnded(total: 8)
        try call.deliveries.put(.end(total: 8))
        // Placed as they arrive: the consumer waits for the last one.
        let late = OSThread(name: "late-reply") {
            let patience = ContinuousClock.now + .seconds(60)
            while !call.isPlacingForTesting && ContinuousClock.now < patience { sched_yield() }
            self.deliver(call, start: 4, (try? self.encoded([40, 50])) ?? [], count: 2)
            call.flushDeliveries()
        }
        try late.start()
        let values = try results.collect(timeout: .seconds(60), placingResults: true)
        #expect(try late.join(timeout: .seconds(60)))
        #expect(values == [0, 10, 20, 30, 40, 50, 60, 70])
        // The held replies and the late one were placed; the one handed over before was copied at the end.
        #expect(call.placedForTesting == 6)
    }

    /// Only the eager `map` places results: a caller of the public `collect` may call it again, or
    /// `next()`, after a failure, and must find every result there.
    @Test func thePublicCollectPlacesNothing() throws {
        let call = StreamCall<Int>(options: .default)
        let results = PoolResults(call: call, credit: nil, ordered: true) {}
        call.totalItems.store(2, ordering: .relaxed)
        call.inputEnded(total: 2)
        deliver(call, start: 0, try encoded([5, 6]), count: 2)
        try call.deliveries.put(.end(total: 2))
        #expect(try results.collect(timeout: .seconds(60)) == [5, 6])
        #expect(call.placedForTesting == 0)
    }

    @Test func aMalformedReplyIsReportedRatherThanPlaced() throws {
        let call = StreamCall<Int>(options: .default)
        let results = PoolResults(call: call, credit: nil, ordered: true) {}
        call.totalItems.store(4, ordering: .relaxed)
        call.inputEnded(total: 4)
        deliver(call, start: 0, try encoded([0, 10]), count: 2)
        // Three items where two were announced.
        deliver(call, start: 2, try encoded([20, 30, 40]), count: 2)
        try call.deliveries.put(.end(total: 4))
        #expect {
            _ = try results.collect(timeout: .seconds(60), placingResults: true)
        } throws: { error in
            (error as? MultiprocessingError)?.code == .decodingFailed
        }
        #expect(call.placedForTesting == 2)
    }
}
