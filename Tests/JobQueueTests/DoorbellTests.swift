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
            Doorbell.ring(dir, queues: ["reports"])
            Doorbell.ring(dir, queues: ["reports", "mail"])
            try eventually("the ring for mail is heard") { rings.load(ordering: .relaxed) >= 1 }
            bell.close()
            #expect(!bell.isOpen)
            #expect(rings.load(ordering: .relaxed) == 1)
            #expect(socketFiles(dir).isEmpty)
            #expect(access(dir, F_OK) != 0)  // the last one out removes the directory
            // Rings with nobody listening cost nothing and fail nothing.
            Doorbell.ring(dir, queues: ["mail"])
        }
    }

    /// A listener whose socket was removed (someone cleaned /tmp) says it is closed, so that its worker
    /// listens again at its next turn instead of hearing nothing for ever.
    @Test func aListenerWhoseSocketWasRemovedSaysItIsClosed() throws {
        try withScratchDatabase(.sqlite) { db in
            _ = try JobQueue(db.url)
            let dir = try #require(Doorbell.directory(db.url))
            let bell = try #require(try DoorbellListener(db.url, queues: ["default"]) {})
            defer { bell.close() }
            #expect(bell.isOpen)
            for name in socketFiles(dir) { unlink("\(dir)/\(name)") }
            try eventually("the listener notices its socket is gone") { !bell.isOpen }
        }
    }

    @Test func theSocketOfAKilledWorkerIsRemovedAndNothingElse() throws {
        try withScratchDatabase(.sqlite) { db in
            _ = try JobQueue(db.url)
            let dir = try #require(Doorbell.directory(db.url))
            #expect(mkdir(dir, 0o700) == 0)
            defer { rmdir(dir) }
            // A worker killed while it listened leaves its socket behind, bound by nobody.
            let stale = "\(dir)/999999-1.sock"
            let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            #expect(fd >= 0)
            #expect(Doorbell.withSocketAddress(stale) { bind(fd, $0, $1) } == 0)
            close(fd)
            // A file that is not a socket, and a link, named as doorbells: never sent to, never removed.
            let plain = "\(dir)/plain.sock"
            close(open(plain, O_CREAT | O_WRONLY, 0o600))
            let link = "\(dir)/link.sock"
            #expect(symlink(db.url.database, link) == 0)
            defer {
                unlink(plain)
                unlink(link)
            }
            #expect(socketFiles(dir).sorted() == ["999999-1.sock", "link.sock", "plain.sock"])
            Doorbell.ring(dir, queues: ["default"])
            #expect(socketFiles(dir).sorted() == ["link.sock", "plain.sock"])
        }
    }

    /// A directory that is not the user's own 0700 one (made by someone else first, or a link) is not used:
    /// no listener binds there, no ring goes there, and the workers poll.
    @Test func aDoorbellDirectoryThatIsALinkOrOpenToOthersIsNotUsed() throws {
        try withScratchDatabase(.sqlite) { db in
            _ = try JobQueue(db.url)
            let dir = try #require(Doorbell.directory(db.url))
            let elsewhere = db.scratch + "-elsewhere"
            #expect(mkdir(elsewhere, 0o700) == 0)
            defer { rmdir(elsewhere) }
            #expect(symlink(elsewhere, dir) == 0)
            #expect(throws: SQLError.self) { _ = try DoorbellListener(db.url, queues: ["default"]) {} }
            unlink(dir)
            #expect(mkdir(dir, 0o777) == 0)
            chmod(dir, 0o777)
            defer { rmdir(dir) }
            #expect(throws: SQLError.self) { _ = try DoorbellListener(db.url, queues: ["default"]) {} }
            #expect(Doorbell.openDirectory(dir, create: false) == -1)
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

    @Test func aRingCarriesWholeNamesOnly() {
        let long = (0..<1000).map { "queue-\($0)" }
        let bytes = Doorbell.payload(long)
        #expect(bytes.count <= 4096)
        let names = bytes.split(separator: UInt8(ascii: "\n")).map { String(decoding: $0, as: UTF8.self) }
        #expect(names == Array(long.prefix(names.count)))
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
