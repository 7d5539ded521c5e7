/// Turns rows into `Decodable` values by column name, and `Encodable` values into rows.
///
/// A property's name is its column's name; an optional property takes NULL as nil. Supported property
/// types: the integer types, `Double`, `Float`, `String`, `Bool`, `[UInt8]` (a blob), ``SQLValue``, and
/// optionals of these. A `Decodable` type of ``SQLRow`` gets the row itself.
public struct SQLRowDecoder: Sendable {
    /// Column positions by name, for rows of one query.
    let index: [String: Int]
    let columns: [String]

    /// A decoder for rows of a query whose columns are `columns`, in order (of two columns with one name,
    /// the first is read).
    public init(columns: [String]) {
        self.columns = columns
        var index: [String: Int] = [:]
        for (i, c) in columns.enumerated() where index[c] == nil { index[c] = i }
        self.index = index
    }

    /// Decodes a `T` from one row's `values` (in the columns' order), each property from the column of its
    /// name; ``SQLRow`` gets the row itself.
    ///
    /// - Throws: ``SQLError`` (kind `conversion`) when a column is missing or a value does not fit its
    ///   property.
    public func decode<T: Decodable>(_ type: T.Type, from values: [SQLValue]) throws -> T {
        if T.self == SQLRow.self { return SQLRow(columns: columns, values: values) as! T }
        do {
            return try T(from: RowDecoding(decoder: self, values: values))
        } catch let e as SQLError {
            throw e
        } catch {
            throw SQLError(.conversion, "cannot read a \(T.self) from a row of \(columns): \(error)")
        }
    }
}
