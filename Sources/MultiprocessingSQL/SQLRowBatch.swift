/// Rows of the same columns, their values stored flat (row after row).
public struct SQLRowBatch: Sendable, Hashable {
    /// The column names, in order.
    public var columns: [String]
    /// Every row's values, row after row: value `c` of row `r` is at `r * columns.count + c`.
    public var values: [SQLValue]
    /// The number of rows.
    public var count: Int { columns.isEmpty ? 0 : values.count / columns.count }
    /// Whether the batch has no rows.
    public var isEmpty: Bool { values.isEmpty }

    /// A batch of rows under `columns`, holding `values` (whole rows, row after row: a precondition); by
    /// default empty.
    public init(columns: [String], values: [SQLValue] = []) {
        precondition(columns.isEmpty ? values.isEmpty : values.count % columns.count == 0, "a batch holds whole rows")
        self.columns = columns
        self.values = values
    }

    /// Appends a row (one value per column).
    public mutating func append(_ row: some Collection<SQLValue>) {
        precondition(row.count == columns.count, "a row needs one value per column")
        values.append(contentsOf: row)
    }

    /// Row `i`'s values.
    public func row(_ i: Int) -> ArraySlice<SQLValue> { values[(i * columns.count)..<((i + 1) * columns.count)] }
}
