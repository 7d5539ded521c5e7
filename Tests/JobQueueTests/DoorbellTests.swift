import Glibc
import MultiprocessingSQL
import MultiprocessingTestSupport
import Synchronization
import Testing
import Threading

@testable import MultiprocessingJobQueue

/// SQLite's doorbells: the sockets in the database's doorbell directory, rung by whoever queues due jobs.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct DoorbellTests {
    @Test func aListenerHearsRingsForItsQueuesAndLeavesNothingWhenClosed() throws {
        try withScratchDatabase(.sqlite) { db in
            _ = try JobQueue(db.url)  // the file exists
            let dir = try #require(Doorbell.directory(db.url))
            let rings = Atomic<Int>(0)
            let bell = try #require(try DoorbellListener(db.url, queues: ["mail"]) { rings.add(1, ordering: .relaxed) })
            #expect(bell.isOpen)
            #expect(socketFiles(dir).count == 1)
            // Another queue's ring is not heard; the listener's own queue's is.
            Doorbell.ring(db.url, queues: ["reports"])
            Doorbell.ring(db.url, queues: ["reports", "mail"])
            try eventually("the ring for mail is heard") { rings.load(ordering: .relaxed) >= 1 }
            bell.close()
            #expect(!bell.isOpen)
            #expect(rings.load(ordering: .relaxed) == 1)
            #expect(socketFiles(dir).isEmpty)
            #expect(access(dir, F_OK) != 0)  // the last one out removes the directory
            // Rings with nobody listening cost nothing and fail nothing.
            Doorbell.ring(db.url, queues: ["mail"])
        }
    }

    @Test func theSocketOfAKilledWorkerIsRemovedByTheNextRing() throws {
        try withScratchDatabase(.sqlite) { db in
            _ = try JobQueue(db.url)
            let dir = try #require(Doorbell.directory(db.url))
            mkdir(dir, 0o1777)
            // A worker killed while it listened leaves its socket behind, bound by nobody.
            let stale = "\(dir)/999999-1.sock"
            let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            #expect(Doorbell.withSocketAddress(stale) { bind(fd, $0, $1) } == 0)
            close(fd)
            #expect(socketFiles(dir).contains("999999-1.sock"))
            Doorbell.ring(db.url, queues: ["default"])
            #expect(!socketFiles(dir).contains("999999-1.sock"))
        }
    }

    @Test func everyPathToTheFileFindsTheSameDoorbells() throws {
        try withScratchDatabase(.sqlite) { db in
            _ = try JobQueue(db.url)
            let link = db.scratch + ".log"  // a name the scratch database removes
            #expect(symlink(db.url.database, link) == 0)
            #expect(Doorbell.directory(try DatabaseURL("sqlite:" + link)) == Doorbell.directory(db.url))
            #expect(Doorbell.directory(try DatabaseURL("sqlite::memory:")) == nil)
        }
    }

    func socketFiles(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".sock") { out.append(name) }
        }
        return out
    }
}
