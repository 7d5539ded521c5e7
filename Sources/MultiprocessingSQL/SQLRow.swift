/// A row whose columns are known only at run time: names and values in the query's order.
///
/// It is `Codable`, so a pipeline transform can take and return rows without a struct for them.
public struct SQLRow: Sendable, Hashable, Codable {
    /// The column names, in order.
    public var columns: [String]
    /// The values, one per column.
    public var values: [SQLValue]

    /// A row of `values` under `columns`, in the same order; the two must have the same count (a
    /// precondition).
    public init(columns: [String], values: [SQLValue]) {
        precondition(columns.count == values.count, "a row needs one value per column")
        self.columns = columns
        self.values = values
    }

    /// The value of the named column (nil if there is no such column).
    public subscript(_ column: String) -> SQLValue? {
        get { columns.firstIndex(of: column).map { values[$0] } }
        set {
            if let i = columns.firstIndex(of: column) {
                values[i] = newValue ?? .null
            } else {
                columns.append(column)
                values.append(newValue ?? .null)
            }
        }
    }
}
