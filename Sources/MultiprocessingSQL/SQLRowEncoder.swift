/// Turns `Encodable` values into rows: the columns are the properties in declaration order (the union
/// over all values, a missing optional being NULL).
public struct SQLRowEncoder: Sendable {
    /// An encoder (it has no settings).
    public init() {}

    /// The columns and one row of values per item.
    public func encode<T: Encodable>(_ items: [T]) throws -> (columns: [String], rows: [[SQLValue]]) {
        let b = try encodeBatch(items)
        return (b.columns, (0..<b.count).map { Array(b.row($0)) })
    }

    /// The items as one batch of rows (values stored flat: what inserts take, one allocation).
    public func encodeBatch<T: Encodable>(_ items: [T]) throws -> SQLRowBatch {
        if let rows = items as? [SQLRow] {
            guard let first = rows.first else { return SQLRowBatch(columns: []) }
            var columns = first.columns
            for r in rows.dropFirst() where r.columns != columns {
                for c in r.columns where !columns.contains(c) { columns.append(c) }
            }
            var b = SQLRowBatch(columns: columns)
            b.values.reserveCapacity(rows.count * columns.count)
            for r in rows { b.append(r.columns == columns ? r.values : columns.map { r[$0] ?? .null }) }
            return b
        }
        // Rows of one type encode their properties in the same order: after the first, a row whose keys
        // come in the expected order is stored by position (no hashing), straight into the batch's values;
        // others fall back to names.
        let storage = RowStorage()
        var columns: [String] = []
        var irregular: [(index: Int, names: [String], values: [SQLValue])] = []
        var count = 0
        for item in items {
            storage.startRow(expected: columns)
            do {
                try item.encode(to: RowEncoding(storage: storage))
            } catch {
                throw SQLError(.conversion, "cannot write a \(T.self) as a row: \(error)")
            }
            let width = storage.out.count - storage.rowStart
            if count == 0 {
                columns = storage.order
                storage.out.reserveCapacity(items.count * columns.count)
            } else if !(storage.inOrder && width == columns.count) {
                let row = Array(storage.out[storage.rowStart...])
                storage.out.removeSubrange(storage.rowStart...)
                let names = storage.inOrder ? Array(columns[..<row.count]) : storage.order
                irregular.append((count, names, row))
                storage.out += [SQLValue](repeating: .null, count: columns.count)
            }
            count += 1
        }
        let values = storage.out
        guard !irregular.isEmpty else { return SQLRowBatch(columns: columns, values: values) }
        // Some rows had other columns (an optional left out): rebuild by name.
        var all = columns
        for r in irregular { for k in r.names where !all.contains(k) { all.append(k) } }
        var b = SQLRowBatch(columns: all)
        var next = irregular.makeIterator()
        var pending = next.next()
        for i in 0..<count {
            if let p = pending, p.index == i {
                b.append(all.map { k in p.names.firstIndex(of: k).map { p.values[$0] } ?? .null })
                pending = next.next()
            } else {
                b.append(
                    Array(values[(i * columns.count)..<((i + 1) * columns.count)])
                        + [SQLValue](repeating: .null, count: all.count - columns.count)
                )
            }
        }
        return b
    }
}
