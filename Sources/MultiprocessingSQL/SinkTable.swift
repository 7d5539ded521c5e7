/// The sink table a pipeline creates when it does not exist (``TablePipeline/createSinkTable``).
enum SinkTable {
    /// `CREATE TABLE IF NOT EXISTS` with a type per column: its first non-NULL value's.
    static func createStatement(_ table: String, _ rows: SQLRowBatch, dialect d: SQLDialect) -> String {
        let columns = rows.columns
        let sample = columns.indices.map { i in
            (0..<rows.count).lazy.map { rows.values[$0 * columns.count + i] }.first { $0 != .null } ?? .null
        }
        let types = sample.map { v -> String in
            switch v {
            case .int: "BIGINT"
            case .double: d.doubleType
            case .blob: d.binaryType
            case .text, .null: "TEXT"
            }
        }
        let list = zip(columns, types).map { "\(d.quote($0)) \($1)" }.joined(separator: ", ")
        return "CREATE TABLE IF NOT EXISTS \(d.quote(table)) (\(list))"
    }
}
