import Foundation
import Glibc
import MetricsTestKit
import Multiprocessing
import MultiprocessingTestSupport
import Testing

@testable import MultiprocessingSQL

/// The notes' `user` table.
struct User: Codable, Sendable {
    var id: Int64
    var name: String
    var pwd: String
    var email: String
    var created_at: String
}

/// `user_copy`: the user and the `xb` column. The notes' transform writes '' in both branches (a
/// transcription loss); here 'M' when `len(pwd) == 3`, else 'F', as the issue says.
struct UserCopy: Codable, Sendable {
    var id: Int64
    var name: String
    var pwd: String
    var email: String
    var created_at: String
    var xb: String
}

/// The notes' `test2`, with knobs for the fault tests: a pause per chunk, and a crash of the worker in
/// the chunk holding `crashAt` — once (while `marker` does not exist) or every time.
struct AddSex: RowTransform {
    var pauseMs = 0
    var crashAt: Int64? = nil
    var marker: String? = nil
    func transform(_ rows: [User]) throws -> [UserCopy] {
        if pauseMs > 0 { usleep(UInt32(pauseMs) * 1000) }
        if let crashAt, rows.contains(where: { $0.id == crashAt }) {
            if let marker {
                if access(marker, F_OK) != 0 {
                    close(open(marker, O_CREAT | O_WRONLY, 0o644))
                    kill(getpid(), SIGKILL)
                }
            } else {
                kill(getpid(), SIGKILL)
            }
        }
        return rows.map {
            UserCopy(
                id: $0.id,
                name: $0.name,
                pwd: $0.pwd,
                email: $0.email,
                created_at: $0.created_at,
                xb: $0.pwd.count == 3 ? "M" : "F"
            )
        }
    }
}

/// Creates `user` with `n` rows (ids `from...`), pwd lengths cycling 1...12.
func makeUsers(_ db: any SQLConnection, from: Int = 1, count n: Int) throws {
    try db.execute(
        "CREATE TABLE IF NOT EXISTS user (id INTEGER PRIMARY KEY, name TEXT, pwd TEXT, email TEXT, created_at TEXT)"
    )
    let rows: [[SQLValue]] = (from..<(from + n)).map { i in
        [
            .int(Int64(i)), .text("user\(i)"), .text(String(repeating: "x", count: i % 12 + 1)),
            .text("u\(i)@example.com"), .text("2026-11-28 12:00:00"),
        ]
    }
    try db.transaction {
        _ = try db.insert(into: "user", columns: ["id", "name", "pwd", "email", "created_at"], rows: rows)
    }
}

/// A temporary database holding `user` with `count` rows, and a pool, for one test.
func withUsers(_ count: Int, workers: Int = 2, _ body: (String, SQLiteConnection, ProcessPool) throws -> Void) throws {
    try withTemporaryDatabase { path in
        let db = try SQLiteConnection(path: path)
        try makeUsers(db, count: count)
        let pool = try ProcessPool(workers: workers)
        defer { pool.terminate() }
        try body(path, db, pool)
    }
}

/// Checks the copy: every id of `1...n` exactly once, with the right xb.
func checkCopy(_ db: any SQLConnection, n: Int, table: String = "user_copy") throws {
    #expect(try db.scalar("SELECT count(*) FROM \(table)") == .int(Int64(n)))
    #expect(try db.scalar("SELECT count(DISTINCT id) FROM \(table)") == .int(Int64(n)))
    #expect(try db.scalar("SELECT min(id) FROM \(table)") == .int(1))
    #expect(try db.scalar("SELECT max(id) FROM \(table)") == .int(Int64(n)))
    let m = (1...n).filter { $0 % 12 + 1 == 3 }.count
    #expect(try db.scalar("SELECT count(*) FROM \(table) WHERE xb = 'M'") == .int(Int64(m)))
    #expect(try db.scalar("SELECT count(*) FROM \(table) WHERE xb = 'M' AND length(pwd) <> 3") == .int(0))
}

/// Runs a pipeline in a process of its own, so that a test can SIGKILL the whole run.
struct PipelineRun: Job {
    let path: String
    let chunkSize: Int
    let pauseMs: Int
    func run() throws -> Int {
        let url = DatabaseURL(sqlite: path)
        let pool = try ProcessPool(workers: 2)
        defer { pool.terminate() }
        let p = TablePipeline(
            from: .table("user", in: url),
            to: url,
            table: "user_copy",
            transform: AddSex(pauseMs: pauseMs),
            chunkSize: chunkSize
        )
        return try p.run(on: pool).rowsWritten
    }
}

@Suite(.serialized, .timeLimit(.minutes(3)))
struct PipelineTests {
    func pipeline(_ path: String, _ transform: AddSex = AddSex(), chunkSize: Int = 1000) -> TablePipeline<AddSex> {
        let url = DatabaseURL(sqlite: path)
        return TablePipeline(
            from: .table("user", in: url),
            to: url,
            table: "user_copy",
            transform: transform,
            chunkSize: chunkSize
        )
    }

    @Test func theNotesJobCopiesEveryRowOnce() throws {
        let metrics = sharedTestMetrics  // bootstrapped before any metric is made
        try withUsers(25_000) { path, db, pool in
            let seen = Locked<[CallProgress]>([])
            var job = pipeline(path)
            job.name = "notes-job-\(path)"
            let report = try job.run(
                on: pool,
                progress: .handler(every: .zero) { p in seen.withLock { $0.append(p) } }
            )
            #expect(report.rowsRead == 25_000)
            #expect(report.rowsWritten == 25_000)
            #expect(report.chunksWritten == 25)
            try checkCopy(db, n: 25_000)
            let progress = seen.withLock { $0 }
            #expect(progress.last?.isFinished == true)
            #expect(progress.last?.done == 25_000)
            #expect(progress.allSatisfy { $0.total == 25_000 })
            // Running it again finds everything done and writes nothing.
            let again = try job.run(on: pool)
            #expect(again.rowsWritten == 0)
            #expect(again.chunksSkipped == 25)
            // The metrics of both runs.
            let dims = [("pipeline", job.name)]
            #expect(metrics.counterTotal(label: "mp_pipeline_rows_written_total", dimensions: dims) == 25_000)
            #expect(metrics.counterTotal(label: "mp_pipeline_rows_read_total", dimensions: dims) == 25_000)
            #expect(metrics.counterTotal(label: "mp_pipeline_chunks_written_total", dimensions: dims) == 25)
            #expect(metrics.counterTotal(label: "mp_pipeline_chunks_skipped_total", dimensions: dims) == 25)
            #expect(metrics.counterTotal(label: "mp_pipeline_chunk_failures_total", dimensions: dims) == 0)
            try checkCopy(db, n: 25_000)
        }
    }

    /// The parent is SIGKILLed mid-run (its pool workers go with it); the run started again finishes
    /// with every row written exactly once.
    @Test func aRunKilledMidwayFinishesExactlyOnceWhenRunAgain() throws {
        // The killed run's pool workers are re-parented here, to be waited for before the count below.
        try Processes.adoptOrphans()
        try withTemporaryDatabase { path in
            let db = try SQLiteConnection(path: path)
            try makeUsers(db, count: 20_000)
            let child = ChildProcess(job: PipelineRun(path: path, chunkSize: 500, pauseMs: 20))
            try child.start()
            // Wait until some chunks, not all, are written.
            var written = 0
            try eventually("8 chunks written") {
                written = chunksWritten(db)
                return written >= 8
            }
            let workers = childrenOf(child.pid!)
            #expect(!workers.isEmpty, "the run's pool workers")
            child.kill()
            _ = try child.join(timeout: .seconds(10))
            // Its workers notice their parent's death and exit, but one may still commit the chunk it was
            // writing: count the rows once they are all gone.
            for w in workers { #expect(Processes.reapAdoptedOrphan(w, timeout: .seconds(30)), "worker \(w)") }
            #expect(written >= 8 && written < 40, "\(written) chunks when killed")
            let copied = Int(try db.scalar("SELECT count(*) FROM user_copy")?.intValue ?? 0)
            #expect(copied < 20_000)
            let pool = try ProcessPool(workers: 2)
            defer { pool.terminate() }
            let report = try pipeline(path, chunkSize: 500).run(on: pool)
            #expect(report.chunksSkipped > 0)
            #expect(report.rowsWritten == 20_000 - copied)
            try checkCopy(db, n: 20_000)
        }
    }

    /// The worker running one chunk is SIGKILLed once: that chunk alone runs again.
    @Test func aChunkWhoseWorkerCrashesIsRetriedAlone() throws {
        try withUsers(10_000) { path, db, pool in
            let marker = path + ".crashed"
            defer { unlink(marker) }
            let report = try pipeline(path, AddSex(crashAt: 4321, marker: marker)).run(on: pool)
            #expect(access(marker, F_OK) == 0, "the worker did crash")
            #expect(report.rowsWritten == 10_000)
            try checkCopy(db, n: 10_000)
        }
    }

    /// A chunk that kills its worker every time fails the run after its attempts, with a clear error;
    /// the other chunks are written, and a fixed run finishes exactly once.
    @Test func aPoisonChunkFailsTheRunAndTheRestIsKept() throws {
        try withUsers(10_000) { path, db, pool in
            do {
                _ = try pipeline(path, AddSex(crashAt: 4321)).run(on: pool)
                Issue.record("the run did not fail")
            } catch let e as PoolError {
                #expect("\(e)".contains("signal 9") || "\(e)".contains("killed"), "\(e)")
            }
            #expect(try db.scalar("SELECT count(*) FROM user_copy") == .int(9_000))
            #expect(try db.scalar("SELECT count(*) FROM user_copy WHERE id > 4000 AND id <= 5000") == .int(0))
            let report = try pipeline(path).run(on: pool)
            #expect(report.rowsWritten == 1_000)
            #expect(report.chunksSkipped == 9)
            try checkCopy(db, n: 10_000)
        }
    }

    /// Rows appended to the source after a run are copied by the next run, and only they.
    @Test func appendsArePickedUpByALaterRun() throws {
        try withUsers(5_000) { path, db, pool in
            #expect(try pipeline(path).run(on: pool).rowsWritten == 5_000)
            try makeUsers(db, from: 5_001, count: 3_000)
            let second = try pipeline(path).run(on: pool)
            #expect(second.rowsWritten == 3_000)
            #expect(second.chunksSkipped == 5)
            try checkCopy(db, n: 8_000)
        }
    }

    /// A restart with another chunk size: the plan cuts new chunks short where chunks written before
    /// begin, so no key is in two chunks.
    @Test func aPlanAroundChunksWrittenBeforeCoversEveryKeyOnce() throws {
        try withTemporaryDatabase { path in
            let db = try SQLiteConnection(path: path)
            try makeUsers(db, count: 10_000)
            let done: [String: DoneChunk] = [
                "i:2500": DoneChunk(range: ChunkRange(lower: .int(2500), upper: .int(3700)), rows: 1200),
                "i:9000": DoneChunk(range: ChunkRange(lower: .int(9000), upper: .int(9100)), rows: 100),
            ]
            let planner = ChunkPlanner(
                source: .table("user", in: DatabaseURL(sqlite: path)),
                chunkSize: 1000,
                done: done,
                timeout: .seconds(5)
            )
            let chunks = Array(planner)
            #expect(planner.error == nil)
            #expect(planner.skipped == 2)
            var covered = [Int](repeating: 0, count: 10_001)
            for c in chunks + done.values.map(\.range) {
                let lo = Int(c.lower?.intValue ?? 0)
                let hi = Int(c.upper?.intValue ?? 10_000)
                for k in (lo + 1)...hi { covered[k] += 1 }
            }
            #expect(covered[1...].allSatisfy { $0 == 1 })
            #expect(chunks.first == ChunkRange(lower: nil, upper: .int(1000)))
            #expect(chunks.contains(ChunkRange(lower: .int(2000), upper: .int(2500))))
            #expect(chunks.contains(ChunkRange(lower: .int(8700), upper: .int(9000))))
        }
    }

    /// A worker of a run that another run took over cannot write.
    @Test func aSupersededRunCannotWrite() throws {
        try withTemporaryDatabase { path in
            let db = try SQLiteConnection(path: path)
            try makeUsers(db, count: 100)
            try PipelineBookkeeping.prepare(db)
            _ = try PipelineBookkeeping.takeOver(db, pipeline: "p", runID: "old")
            _ = try PipelineBookkeeping.takeOver(db, pipeline: "p", runID: "new")
            let url = DatabaseURL(sqlite: path)
            let old = CopyChunk(
                spec: ChunkSpec(
                    source: .table("user", in: url),
                    sink: url,
                    sinkTable: "user_copy",
                    pipeline: "p",
                    runID: "old",
                    createSinkTable: true,
                    timeout: .seconds(5),
                    chunkSize: 100
                ),
                transform: AddSex()
            )
            #expect(throws: SQLError.self) { try old(ChunkRange(lower: nil, upper: .int(50))) }
            #expect(try db.scalar("SELECT count(*) FROM mp_pipeline_chunks") == .int(0))
        }
    }

    /// Rows without a struct (`SQLRow`), between two database files, keyed by a text column.
    @Test func dynamicRowsByATextKeyBetweenTwoFiles() throws {
        try withTemporaryDatabase { source in
            try withTemporaryDatabase { sink in
                let db = try SQLiteConnection(path: source)
                try db.execute("CREATE TABLE words (w TEXT PRIMARY KEY, n INTEGER, f REAL, b BLOB)")
                let rows: [[SQLValue]] = (0..<3000).map { (i: Int) -> [SQLValue] in
                    let f: SQLValue = i % 7 == 0 ? .null : .double(Double(i) / 4)
                    return [.text("w\(i)"), .int(Int64(i)), f, .blob([UInt8(i % 256)])]
                }
                try db.transaction { _ = try db.insert(into: "words", columns: ["w", "n", "f", "b"], rows: rows) }
                let pool = try ProcessPool(workers: 2)
                defer { pool.terminate() }
                let p = TablePipeline(
                    from: .table("words", key: "w", in: DatabaseURL(sqlite: source)),
                    to: DatabaseURL(sqlite: sink),
                    table: "words_copy",
                    transform: CopyRows(),
                    chunkSize: 400
                )
                #expect(try p.run(on: pool).rowsWritten == 3000)
                let out = try SQLiteConnection(path: sink)
                let copied = try out.query("SELECT w, n, f, b FROM words_copy ORDER BY n").map(\.values)
                #expect(copied.count == rows.count)
                #expect(
                    zip(copied, rows).filter { $0 != $1 }.count == 0,
                    "first difference: \(String(describing: zip(copied, rows).first { $0 != $1 }))"
                )
            }
        }
    }

    /// A sink that cannot be opened: a clear error at once, no hang.
    @Test func anUnreachableSinkFailsClearly() throws {
        try withUsers(10, workers: 1) { path, db, pool in
            let p = TablePipeline(
                from: .table("user", in: DatabaseURL(sqlite: path)),
                to: DatabaseURL(sqlite: "/nonexistent-dir/x.db"),
                table: "user_copy",
                transform: AddSex()
            )
            do {
                _ = try p.run(on: pool)
                Issue.record("no error")
            } catch let e as SQLError {
                #expect(e.kind == .connection)
                #expect(e.message.contains("/nonexistent-dir/x.db"))
            }
        }
    }
}

/// `mp etl`, as a user runs it: a copy with the notes' column between two files, then the same command
/// again, which finds every chunk done; a bad URL is refused with a message.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct ETLCommandTests {
    func mp(_ arguments: [String]) throws -> (Int32, String) {
        guard let exe = builtExecutable("mp") else { return (-1, "") }
        let p = Foundation.Process()
        p.executableURL = exe
        p.arguments = arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// Issue 25: the tool follows argument-parser's conventions.
    @Test func theToolFollowsArgumentParsersConventions() throws {
        let (code, version) = try mp(["--version"])
        #expect(code == 0)
        #expect(version.hasPrefix("swift-multiprocessing "), "\(version)")
        let (bad, unknown) = try mp(["bogus"])
        #expect(bad != 0)
        #expect(unknown.contains("Error: Unexpected argument 'bogus'"), "\(unknown)")
        let (_, help) = try mp(["master", "--help"])
        #expect(help.contains("(default: every"), "\(help)")
        #expect(help.contains("(default: 5000)"), "\(help)")
    }

    @Test func mpETLCopiesThenResumesToNothing() throws {
        try withTemporaryDatabase { source in
            try withTemporaryDatabase { sink in
                try makeUsers(try SQLiteConnection(path: source), count: 3_000)
                let args = [
                    "etl", "--from", "sqlite:\(source)", "--table", "user", "--to", "sqlite:\(sink)", "--into",
                    "user_copy", "--transform", "xb", "--chunk-size", "700", "--workers", "2", "--quiet",
                ]
                let (code, out) = try mp(args)
                #expect(code == 0, "\(out)")
                #expect(out.contains("3,000 rows read, 3,000 written in 5 chunks"), "\(out)")
                try checkCopy(try SQLiteConnection(path: sink), n: 3_000)
                let (again, out2) = try mp(args)
                #expect(again == 0)
                #expect(out2.contains("nothing left to copy: 5 chunks were done by an earlier run"), "\(out2)")
                #expect(!out2.contains("0 rows/s"), "\(out2)")
                // A SQLite source that does not exist: an error, and no file created (issue 25).
                let missing = source + "-missing.sqlite"
                let (gone, out4) = try mp(["etl", "--from", "sqlite:\(missing)", "--table", "user", "--quiet"])
                #expect(gone != 0)
                #expect(out4.contains("no SQLite database at \(missing)"), "\(out4)")
                #expect(access(missing, F_OK) != 0, "mp etl created \(missing)")
                let (bad, out3) = try mp(["etl", "--from", "oracle://x/y", "--table", "t"])
                #expect(bad != 0)
                #expect(out3.contains("unknown database oracle"), "\(out3)")
            }
        }
    }
}

/// Chunks a pipeline has recorded as written in `db` (0 before its bookkeeping table exists).
func chunksWritten(_ db: any SQLConnection) -> Int {
    Int((try? db.scalar("SELECT count(*) FROM mp_pipeline_chunks"))??.intValue ?? 0)
}

/// The processes whose parent is `pid` (every thread's children, from `/proc`).
func childrenOf(_ pid: Int32) -> [Int32] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    return tasks.flatMap { tid in
        ((try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/children", encoding: .utf8)) ?? "")
            .split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
}
