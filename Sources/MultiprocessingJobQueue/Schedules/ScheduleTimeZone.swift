import Glibc

/// The time zone a cron schedule's fields are read in: UTC, a fixed offset, an IANA zone from the
/// machine's time-zone database (`Europe/Paris`, read from `$TZDIR` or `/usr/share/zoneinfo`), or a
/// POSIX `TZ` rule (`CET-1CEST,M3.5.0,M10.5.0/3`), which needs no database.
///
/// Each worker reads a named zone from its own machine's database: keep the databases of the machines
/// that run workers at the same release. Daylight-saving changes: a local time that does not exist (the
/// hour skipped in spring) runs at the first moment after the gap; a local time that occurs twice (the
/// hour repeated in autumn) runs once, at its first occurrence, unless the schedule's hour field is `*`,
/// whose runs follow real time through both (cron's rule).
public struct ScheduleTimeZone: Sendable, Hashable, CustomStringConvertible {
    /// How the zone is stored and shown: `UTC`, `UTC+05:30`, `Europe/Paris`, `posix:CET-1CEST,…`.
    public let description: String
    let rules: ZoneRules

    /// Coordinated Universal Time.
    public static let utc = ScheduleTimeZone(
        description: "UTC",
        rules: ZoneRules(transitions: [], types: [0], footer: nil)
    )

    /// A zone that is always `seconds` ahead of UTC (negative: behind).
    public static func fixed(seconds: Int) throws -> ScheduleTimeZone {
        guard abs(seconds) <= 26 * 3600 else {
            throw JobQueueError(.invalidSchedule, "a fixed offset of \(seconds) s is more than 26 hours")
        }
        if seconds == 0 { return .utc }
        let sign = seconds < 0 ? "-" : "+"
        let m = abs(seconds) / 60
        let name =
            "UTC\(sign)\(two(m / 60)):\(two(m % 60))" + (abs(seconds) % 60 == 0 ? "" : ":\(two(abs(seconds) % 60))")
        return ScheduleTimeZone(
            description: name,
            rules: ZoneRules(transitions: [], types: [Int32(seconds)], footer: nil)
        )
    }

    /// The IANA zone `name` from the time-zone database (`$TZDIR`, else `/usr/share/zoneinfo`).
    /// - Throws: ``JobQueueError/Code/invalidSchedule`` when the zone is not there or its file is not a
    ///   valid TZif file.
    public static func named(_ name: String) throws -> ScheduleTimeZone {
        if name == "UTC" || name == "Etc/UTC" || name == "Z" { return .utc }
        if name.hasPrefix("posix:") { return try posix(String(name.dropFirst(6))) }
        if name.hasPrefix("UTC+") || name.hasPrefix("UTC-"), let seconds = parseFixed(name) {
            return try fixed(seconds: seconds)
        }
        guard !name.isEmpty, !name.hasPrefix("/"), !name.split(separator: "/").contains(".."),
            name.allSatisfy({ $0.isLetter || $0.isNumber || "/_+-".contains($0) })
        else {
            throw JobQueueError(.invalidSchedule, "\"\(name)\" is not a time zone's name")
        }
        let dir = getenv("TZDIR").map { String(cString: $0) } ?? "/usr/share/zoneinfo"
        let path = dir + "/" + name
        guard let bytes = readWholeFile(path) else {
            throw JobQueueError(.invalidSchedule, "no time zone \(name) in \(dir)")
        }
        do {
            return ScheduleTimeZone(description: name, rules: try ZoneRules(tzif: bytes))
        } catch let e as ZoneError {
            throw JobQueueError(.invalidSchedule, "\(path): \(e.message)")
        }
    }

    /// A zone given by a POSIX `TZ` rule: `std offset [dst [offset] [,start[/time],end[/time]]]`, as in
    /// `CET-1CEST,M3.5.0,M10.5.0/3` (offsets west of Greenwich are positive, as POSIX has them).
    public static func posix(_ rule: String) throws -> ScheduleTimeZone {
        do {
            return ScheduleTimeZone(
                description: "posix:" + rule,
                rules: ZoneRules(transitions: [], types: [], footer: try PosixRule(rule))
            )
        } catch let e as ZoneError {
            throw JobQueueError(.invalidSchedule, "TZ rule \"\(rule)\": \(e.message)")
        }
    }

    /// Seconds ahead of UTC at `utc` (seconds since the epoch).
    public func offset(at utc: Int64) -> Int { Int(rules.offset(at: utc)) }

    /// Zones are equal when their names are (a named zone's rules are this machine's for that name).
    public static func == (a: ScheduleTimeZone, b: ScheduleTimeZone) -> Bool { a.description == b.description }
    /// Hashes the zone's name.
    public func hash(into h: inout Hasher) { h.combine(description) }

    private static func parseFixed(_ s: String) -> Int? {
        let sign = s.dropFirst(3).first == "-" ? -1 : 1
        let parts = s.dropFirst(4).split(separator: ":").map { Int($0) }
        guard (1...3).contains(parts.count), parts.allSatisfy({ $0 != nil }) else { return nil }
        let p = parts.map { $0! }
        return sign * (p[0] * 3600 + (p.count > 1 ? p[1] * 60 : 0) + (p.count > 2 ? p[2] : 0))
    }
}

private func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }

private func readWholeFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 16384)
    while out.count < 1 << 20 {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return n == 0 ? out : nil }
        out += buffer[0..<n]
    }
    return nil  // no zone file is a megabyte
}

struct ZoneError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// A zone's offsets: transitions (UTC seconds, each with the offset from then on), the offset before the
/// first, and a POSIX rule for times after the last (a TZif file's footer).
struct ZoneRules: Sendable {
    /// Transition instants, ascending, and the offset (seconds ahead of UTC) from each on.
    let transitions: [(at: Int64, offset: Int32)]
    /// The offset before the first transition.
    let initial: Int32
    let footer: PosixRule?

    init(transitions: [(at: Int64, offset: Int32)], types: [Int32], footer: PosixRule?) {
        self.transitions = transitions
        initial = types.first ?? footer?.standard ?? 0
        self.footer = footer
    }

    /// Reads a TZif file (RFC 8536, versions 1 to 4): the 64-bit data when there is any, and the footer.
    init(tzif b: [UInt8]) throws {
        func u32(_ i: Int) throws -> UInt32 {
            guard i >= 0, i + 4 <= b.count else { throw ZoneError("truncated") }
            return UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
        }
        func header(_ at: Int) throws -> (version: UInt8, counts: [Int]) {
            guard at + 44 <= b.count, b[at..<at + 4].elementsEqual("TZif".utf8) else {
                throw ZoneError("not a TZif file")
            }
            var counts: [Int] = []
            for k in 0..<6 { counts.append(Int(try u32(at + 20 + 4 * k))) }
            // isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
            guard counts.allSatisfy({ $0 < 100_000 }), counts[4] >= 1 else { throw ZoneError("implausible counts") }
            return (b[at + 4], counts)
        }
        func blockLength(_ c: [Int], timeSize: Int) -> Int {
            c[3] * timeSize + c[3] + c[4] * 6 + c[5] + c[2] * (timeSize + 4) + c[1] + c[0]
        }
        var (version, counts) = try header(0)
        var at = 44
        var timeSize = 4
        if version >= UInt8(ascii: "2") {
            at += blockLength(counts, timeSize: 4)
            (version, counts) = try header(at)
            at += 44
            timeSize = 8
        }
        let timecnt = counts[3]
        let typecnt = counts[4]
        guard at + blockLength(counts, timeSize: timeSize) <= b.count else { throw ZoneError("truncated") }
        var times: [Int64] = []
        for k in 0..<timecnt {
            let p = at + k * timeSize
            times.append(
                timeSize == 8
                    ? Int64(bitPattern: UInt64(try u32(p)) << 32 | UInt64(try u32(p + 4)))
                    : Int64(Int32(bitPattern: try u32(p)))
            )
        }
        let indexes = at + timecnt * timeSize
        let typesAt = indexes + timecnt
        var offsets: [Int32] = []
        for k in 0..<typecnt {
            let utoff = Int32(bitPattern: try u32(typesAt + 6 * k))
            guard abs(Int(utoff)) <= 26 * 3600 else { throw ZoneError("an offset of \(utoff) s") }
            offsets.append(utoff)
        }
        var transitions: [(at: Int64, offset: Int32)] = []
        for k in 0..<timecnt {
            let type = Int(b[indexes + k])
            guard type < typecnt else { throw ZoneError("a transition to type \(type) of \(typecnt)") }
            guard k == 0 || times[k] > times[k - 1] else { throw ZoneError("transitions out of order") }
            transitions.append((times[k], offsets[type]))
        }
        var footer: PosixRule?
        if timeSize == 8 {
            let end = at + blockLength(counts, timeSize: 8)
            if end < b.count, b[end] == 0x0A, let close = b[(end + 1)...].firstIndex(of: 0x0A), close > end + 1 {
                footer = try PosixRule(String(decoding: b[(end + 1)..<close], as: UTF8.self))
            }
        }
        self.init(transitions: transitions, types: offsets, footer: footer)
    }

    func offset(at t: Int64) -> Int32 {
        guard let last = transitions.last else { return footer?.offset(at: t) ?? initial }
        if t >= last.at { return footer?.offset(at: t) ?? last.offset }
        if t < transitions[0].at { return initial }
        var lo = 0
        var hi = transitions.count - 1  // transitions[lo].at <= t < transitions[hi].at
        while hi - lo > 1 {
            let mid = (lo + hi) / 2
            if transitions[mid].at <= t { lo = mid } else { hi = mid }
        }
        return transitions[lo].offset
    }
}

/// A POSIX `TZ` rule: a standard offset, and optionally a daylight-saving one with the dates it starts
/// and ends each year.
struct PosixRule: Sendable {
    /// Seconds ahead of UTC in standard time and in daylight-saving time.
    let standard: Int32
    let daylight: Int32?
    let start: DateRule
    let end: DateRule

    /// When in a year a change happens: the day and the local time of day (seconds; may be negative or
    /// beyond a day, as version 3 allows).
    enum Day: Sendable {
        /// `Jn`: day 1…365, February 29 never counted.
        case julian1(Int)
        /// `n`: day 0…365, February 29 counted.
        case julian0(Int)
        /// `Mm.w.d`: weekday `d` (0 = Sunday) of week `w` (5 = the last) of month `m`.
        case month(Int, week: Int, weekday: Int)
    }

    struct DateRule: Sendable {
        var day: Day
        var time: Int
    }

    init(_ s: String) throws {
        var p = PosixParser(text: Substring(s))
        try self.init(&p)
    }

    private init(_ p: inout PosixParser) throws {
        _ = try p.name()
        standard = Int32(-(try p.clock(maxHours: 24)))
        if p.isEmpty {
            daylight = nil
            start = DateRule(day: .julian0(0), time: 0)
            end = start
            return
        }
        _ = try p.name()
        if !p.isEmpty && p.first != "," {
            daylight = Int32(-(try p.clock(maxHours: 24)))
        } else {
            daylight = standard + 3600
        }
        if p.isEmpty {
            // No dates: the United States' rule, as POSIX implementations default to.
            start = DateRule(day: .month(3, week: 2, weekday: 0), time: 7200)
            end = DateRule(day: .month(11, week: 1, weekday: 0), time: 7200)
            return
        }
        guard p.first == "," else { throw ZoneError("expected a comma before the dates") }
        p.drop()
        start = try p.dateRule()
        guard p.first == "," else { throw ZoneError("expected the end date") }
        p.drop()
        end = try p.dateRule()
        guard p.isEmpty else { throw ZoneError("unexpected \"\(p.text)\"") }
    }

    func offset(at t: Int64) -> Int32 {
        guard let daylight else { return standard }
        let year = Civil(days: floorDiv(t + Int64(standard), 86400)).year
        // Starts are given in standard local time, ends in daylight-saving local time.
        let begins = Self.instant(start, year: year) - Int64(standard)
        let ends = Self.instant(end, year: year) - Int64(daylight)
        let inDaylight = begins < ends ? (t >= begins && t < ends) : !(t >= ends && t < begins)
        return inDaylight ? daylight : standard
    }

    /// The rule's moment in `year`, as local seconds since the epoch.
    static func instant(_ r: DateRule, year: Int) -> Int64 {
        let jan1 = Civil.days(year: year, month: 1, day: 1)
        let day: Int64
        switch r.day {
        case .julian1(let n):
            day = jan1 + Int64(n - 1) + (Civil.isLeap(year) && n >= 60 ? 1 : 0)
        case .julian0(let n):
            day = jan1 + Int64(n)
        case .month(let m, let w, let d):
            let first = Civil.days(year: year, month: m, day: 1)
            var k = first + Int64((d - Civil.weekday(first) + 7) % 7) + Int64(7 * (w - 1))
            let length = Int64(Civil.monthLength(year: year, month: m))
            while k >= first + length { k -= 7 }
            day = k
        }
        return day * 86400 + Int64(r.time)
    }
}

/// Reads a POSIX `TZ` rule from the front.
private struct PosixParser {
    var text: Substring
    var first: Character? { text.first }
    var isEmpty: Bool { text.isEmpty }
    mutating func drop() { text = text.dropFirst() }

    mutating func name() throws -> Substring {
        if text.first == "<" {
            guard let close = text.firstIndex(of: ">") else { throw ZoneError("an unclosed <name>") }
            let n = text[text.index(after: text.startIndex)..<close]
            text = text[text.index(after: close)...]
            return n
        }
        let n = text.prefix { $0.isLetter }
        guard n.count >= 3 else { throw ZoneError("a zone abbreviation needs three letters") }
        text = text.dropFirst(n.count)
        return n
    }

    mutating func number() -> Int? {
        let digits = text.prefix { $0.isNumber }
        guard !digits.isEmpty, digits.count <= 3 else { return nil }
        text = text.dropFirst(digits.count)
        return Int(digits)
    }

    /// `[+-]hh[:mm[:ss]]` in seconds.
    mutating func clock(maxHours: Int) throws -> Int {
        var sign = 1
        if text.first == "+" || text.first == "-" {
            sign = text.first == "-" ? -1 : 1
            drop()
        }
        guard let h = number(), h <= maxHours else { throw ZoneError("a bad hour") }
        var seconds = h * 3600
        for unit in [60, 1] {
            guard text.first == ":" else { break }
            drop()
            guard let v = number(), v < 60 else { throw ZoneError("bad minutes or seconds") }
            seconds += v * unit
        }
        return sign * seconds
    }

    mutating func dateRule() throws -> PosixRule.DateRule {
        let day: PosixRule.Day
        if text.first == "M" {
            drop()
            guard let m = number(), (1...12).contains(m), text.first == "." else { throw ZoneError("a bad month") }
            drop()
            guard let w = number(), (1...5).contains(w), text.first == "." else { throw ZoneError("a bad week") }
            drop()
            guard let d = number(), (0...6).contains(d) else { throw ZoneError("a bad weekday") }
            day = .month(m, week: w, weekday: d)
        } else if text.first == "J" {
            drop()
            guard let n = number(), (1...365).contains(n) else { throw ZoneError("a bad Julian day") }
            day = .julian1(n)
        } else {
            guard let n = number(), (0...365).contains(n) else { throw ZoneError("a bad day") }
            day = .julian0(n)
        }
        var time = 7200
        if text.first == "/" {
            drop()
            time = try clock(maxHours: 167)
        }
        return PosixRule.DateRule(day: day, time: time)
    }
}

func floorDiv(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : -((-a + b - 1) / b) }

/// A proleptic Gregorian date and days since 1970-01-01 (Howard Hinnant's algorithms).
struct Civil: Equatable {
    var year: Int
    var month: Int
    var day: Int

    init(year: Int, month: Int, day: Int) {
        self.year = year
        self.month = month
        self.day = day
    }

    init(days z0: Int64) {
        let z = z0 + 719_468
        let era = floorDiv(z, 146_097)
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        day = Int(doy - (153 * mp + 2) / 5 + 1)
        month = Int(mp < 10 ? mp + 3 : mp - 9)
        year = Int(yoe + era * 400) + (month <= 2 ? 1 : 0)
    }

    static func days(year y0: Int, month m: Int, day d: Int) -> Int64 {
        let y = Int64(m <= 2 ? y0 - 1 : y0)
        let era = floorDiv(y, 400)
        let yoe = y - era * 400
        let mp = Int64(m > 2 ? m - 3 : m + 9)
        let doy = (153 * mp + 2) / 5 + Int64(d) - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// 0 = Sunday.
    static func weekday(_ days: Int64) -> Int { Int(((days % 7) + 11) % 7) }

    static func isLeap(_ y: Int) -> Bool { y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) }

    static func monthLength(year: Int, month: Int) -> Int {
        switch month {
        case 2: isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }
}

extension ScheduleTimeZone {
    /// How a local time (seconds since the epoch, read in this zone) maps to real time.
    enum Resolution: Equatable {
        case unique(Int64)
        /// It occurs twice (clocks went back): both instants, in order.
        case twice(Int64, Int64)
        /// It does not exist (clocks went forward): the first instant after the gap.
        case gap(Int64)
    }

    func resolve(local l: Int64) -> Resolution {
        // The common case: no change within a day either side.
        let before = rules.offset(at: l - 86400)
        if before == rules.offset(at: l + 86400) && rules.offset(at: l - Int64(before)) == before {
            return .unique(l - Int64(before))
        }
        var offsets: Set<Int32> = [
            rules.offset(at: l - 86400), rules.offset(at: l), rules.offset(at: l + 86400),
        ]
        for o in offsets { offsets.insert(rules.offset(at: l - Int64(o))) }
        let valid = Set(offsets.map { l - Int64($0) }.filter { Int64(rules.offset(at: $0)) == l - $0 }).sorted()
        if valid.count == 1 { return .unique(valid[0]) }
        if valid.count >= 2 { return .twice(valid[0], valid[valid.count - 1]) }
        // A gap: the change lies between the instants the local time has under the offsets around it.
        let sorted = offsets.sorted()
        var lo = l - Int64(sorted.last!)  // the offset before the gap is the smaller one
        var hi = l - Int64(sorted.first!)
        let after = rules.offset(at: hi)
        // rules.offset(at: lo) is the earlier offset; find the first second with the later one.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2
            if rules.offset(at: mid) == after { hi = mid } else { lo = mid }
        }
        return .gap(hi)
    }
}
