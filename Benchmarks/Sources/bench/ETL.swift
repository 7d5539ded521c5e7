import Foundation
import Multiprocessing
import MultiprocessingSQL

// The `etl` suite: the workload of ../shared/bench/etl (anchors.py), on the SQLite file gen.py makes
// (`$ETL_DIR/sqlite/db1.sqlite`, table `user`, 1,000,000 rows): copy `user` into `user_copy` adding
// xb = 'M' if len(pwd) == 3 else 'F', with 2 workers and chunks of 10,000, then verify as common.py does.

struct BenchUser: Codable, Sendable {
    var id: Int64
    var name: String
    var pwd: String
    var email: String
    var created_at: String?
}

struct BenchUserCopy: Codable, Sendable {
    var id: Int64
    var name: String
    var pwd: String
    var email: String
    var created_at: String?
    var xb: String
}

struct BenchAddSex: RowTransform {
    func transform(_ rows: [BenchUser]) -> [BenchUserCopy] {
        rows.map {
            BenchUserCopy(
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

/// The same transform on dynamic rows (``SQLRow``: the columns known only at run time).
struct BenchAddSexDynamic: RowTransform {
    func transform(_ rows: [SQLRow]) -> [SQLRow] {
        rows.map { r in
            var out = r
            out["xb"] = .text((r["pwd"]?.textValue?.count ?? 0) == 3 ? "M" : "F")
            return out
        }
    }
}

/// Peak resident memory of this process, in MB.
func peakRSSMegabytes() -> Double {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_maxrss) / 1024
}

func runETLSuite(_ only: Set<String>) throws {
    let env = ProcessInfo.processInfo.environment
    let dir = env["ETL_DIR"] ?? "/tmp/etl-anchors"
    let path = dir + "/sqlite/db1.sqlite"
    let kind = env["ETL_DB"] ?? "sqlite"
    let url: DatabaseURL
    let db: any SQLConnection
    let lengthFunction: String
    if kind == "mariadb" || kind == "postgres" {
        url =
            kind == "mariadb"
            ? try DatabaseURL(env["MP_MARIADB_URL"] ?? "mysql://root:123456@127.0.0.1:3306/db1")
            : try DatabaseURL(env["MP_POSTGRES_URL"] ?? "postgres://root:123456@127.0.0.1:5433/db1")
        db = try Database.connect(url)
        lengthFunction = "CHAR_LENGTH"
        let user = db.dialect.quote("user")  // PostgreSQL: unquoted, `user` is the current user's name
        // The anchors' table: copied from their SQLite file (gen.py's rows) by the pipeline itself.
        if (try? db.scalar("SELECT count(*) FROM \(user)"))??.intValue != 1_000_000 {
            try db.executeScript(
                "DROP TABLE IF EXISTS \(user); CREATE TABLE \(user) (id bigint PRIMARY KEY, name varchar(64), pwd varchar(64), email varchar(128), created_at timestamp NULL)"
            )
            let pool = try ProcessPool(workers: 2)
            defer { pool.terminate() }
            _ = try TablePipeline(
                from: .table("user", in: DatabaseURL(sqlite: path)),
                to: url,
                table: "user",
                transform: CopyRows(),
                name: "etl-bench-seed",
                chunkSize: 20_000
            ).run(on: pool)
            try db.execute("DELETE FROM mp_pipeline_chunks WHERE pipeline = 'etl-bench-seed'")
        }
    } else {
        url = DatabaseURL(sqlite: path)
        db = try SQLiteConnection(path: path)
        lengthFunction = "LENGTH"
    }
    if only.contains("stages") { return try runETLStages(path) }
    let user = db.dialect.quote("user")
    guard let n = try db.scalar("SELECT count(*) FROM \(user)")?.intValue, n > 0 else {
        print("error: no table user in \(url): run ../shared/bench/etl/gen.py --db sqlite first")
        exit(1)
    }
    let m = try db.scalar("SELECT count(*) FROM \(user) WHERE \(lengthFunction)(pwd) = 3")?.intValue ?? 0
    let rounds = Int(ProcessInfo.processInfo.environment["ETL_ROUNDS"] ?? "3") ?? 3
    func reset() throws {
        try db.executeScript(
            """
            DROP TABLE IF EXISTS user_copy; DROP TABLE IF EXISTS mp_pipeline_chunks; DROP TABLE IF EXISTS mp_pipeline_runs;
            CREATE TABLE user_copy (id bigint, name varchar(64), pwd varchar(64), email varchar(128),
              created_at timestamp NULL, xb char(1))
            """
        )
    }
    func verify() throws {
        let rows = try db.scalar("SELECT count(*) FROM user_copy")?.intValue
        let distinct = try db.scalar("SELECT count(DISTINCT id) FROM user_copy")?.intValue
        let ms = try db.scalar("SELECT count(*) FROM user_copy WHERE xb = 'M'")?.intValue
        precondition(rows == n && distinct == n && ms == m, "wrong copy: \(String(describing: rows)) rows")
    }
    var rates: [Double] = []
    var floors: [Double] = []
    let workers = Int(ProcessInfo.processInfo.environment["ETL_WORKERS"] ?? "2") ?? 2
    let chunk = Int(ProcessInfo.processInfo.environment["ETL_CHUNK"] ?? "10000") ?? 10_000
    let pool = try ProcessPool(workers: workers)
    defer { pool.terminate() }
    for _ in 0..<rounds {
        try reset()
        let t0 = now()
        // ETL_ROWS=dynamic: rows as SQLRow instead of Codable structs.
        func copy(_ transform: some RowTransform) throws -> PipelineReport {
            try TablePipeline(
                from: .table("user", in: url),
                to: url,
                table: "user_copy",
                transform: transform,
                chunkSize: chunk
            )
            .run(on: pool)
        }
        let report = try env["ETL_ROWS"] == "dynamic" ? copy(BenchAddSexDynamic()) : copy(BenchAddSex())
        let t1 = now()
        precondition(report.rowsWritten == n)
        try verify()
        rates.append(Double(n) / (t1 - t0))
        // The floor, in the same round: the database alone.
        try reset()
        let f0 = now()
        try db.execute(
            "INSERT INTO user_copy SELECT id, name, pwd, email, created_at, CASE WHEN \(lengthFunction)(pwd) = 3 THEN 'M' ELSE 'F' END FROM \(user)"
        )
        let f1 = now()
        try verify()
        floors.append(Double(n) / (f1 - f0))
    }
    report("etl_\(kind)_pipeline\(env["ETL_ROWS"] == "dynamic" ? "_dynamic" : "")_swift", rates, "rows/s", digits: 0)
    report("etl_\(kind)_floor_swift", floors, "rows/s", digits: 0)
    report("etl_\(kind)_pipeline_parent_peak_swift", [peakRSSMegabytes()], "MB", digits: 1)
}

/// `bench etl stages`: the cost of each stage of a chunk, per row, in this process.
func runETLStages(_ path: String) throws {
    let db = try SQLiteConnection(path: path)
    try db.executeScript(
        "DROP TABLE IF EXISTS stage_copy; CREATE TABLE stage_copy (id bigint, name varchar(64), pwd varchar(64), email varchar(128), created_at timestamp NULL, xb char(1))"
    )
    let n = 100_000
    var raw: [[SQLValue]] = []
    let t0 = now()
    let columns = try db.forEachRow("SELECT * FROM user WHERE id > 0 AND id <= \(n) ORDER BY id", []) { raw.append($0) }
    let t1 = now()
    let decoder = SQLRowDecoder(columns: columns)
    let users = try raw.map { try decoder.decode(BenchUser.self, from: $0) }
    let t2 = now()
    let out = BenchAddSex().transform(users)
    let t3 = now()
    let batch = try SQLRowEncoder().encodeBatch(out)
    let t4 = now()
    try db.transaction(immediate: true) { _ = try db.insert(into: "stage_copy", batch) }
    let t5 = now()
    try db.execute("DELETE FROM stage_copy")
    let t6 = now()
    try db.execute(
        "INSERT INTO stage_copy SELECT id, name, pwd, email, created_at, 'F' FROM user WHERE id > 0 AND id <= \(n)"
    )
    let t7 = now()
    func us(_ a: Double, _ b: Double) -> String { String(format: "%.3f", (b - a) * 1e6 / Double(n)) }
    print(
        "per row (us): read \(us(t0, t1)) decode \(us(t1, t2)) transform \(us(t2, t3)) encode \(us(t3, t4)) insert \(us(t4, t5)) (SQLite alone, INSERT…SELECT: \(us(t6, t7)))"
    )
}
