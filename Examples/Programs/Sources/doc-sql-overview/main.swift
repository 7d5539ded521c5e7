import Multiprocessing
import MultiprocessingSQL

struct User: Codable, Sendable {                    // a row of the tutorial's `user` table
    var id: Int64
    var name: String
    var pwd: String
}
struct UserCopy: Codable, Sendable {                // a row of `user_copy`: the user and `xb`
    var id: Int64
    var name: String
    var pwd: String
    var xb: String
    init(user: User, xb: String) { (id, name, pwd, self.xb) = (user.id, user.name, user.pwd, xb) }
}
struct AddSex: RowTransform {                       // the tutorial's test2
    func transform(_ rows: [User]) -> [UserCopy] {
        rows.map { UserCopy(user: $0, xb: $0.pwd.count == 3 ? "M" : "F") }
    }
}
bootstrap()

let db = try DatabaseURL("sqlite:db1.sqlite")
let setup = try SQLiteConnection(path: "db1.sqlite")
try setup.executeScript("CREATE TABLE IF NOT EXISTS user (id INTEGER PRIMARY KEY, name TEXT, pwd TEXT)")
for i in 1...1000 { _ = try setup.execute("INSERT OR IGNORE INTO user VALUES (?, ?, ?)", [.int(Int64(i)), .text("user\(i)"), .text(i % 2 == 0 ? "abc" : "abcd")]) }
setup.close()

let pool = try ProcessPool(workers: 5)
let report = try TablePipeline(
    from: .table("user", in: db), to: db, table: "user_copy", transform: AddSex()
).run(on: pool, progress: .bar)
print(report)                                       // 1,000 rows read, 1,000 written in 1 chunks, …
