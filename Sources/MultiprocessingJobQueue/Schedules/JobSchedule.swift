import Threading

/// When a periodic job runs: a cron expression read in a time zone
/// (`try .cron("30 2 * * *", in: .named("Europe/Paris"))`), or a fixed interval
/// (`try .every(.seconds(10))`). See ``JobQueue/schedule(_:_:_:missed:options:)``.
public struct JobSchedule: Sendable, Hashable, CustomStringConvertible {
    enum Timing: Sendable, Hashable {
        case cron(CronExpression, ScheduleTimeZone)
        /// Milliseconds; occurrences are the multiples of it since the epoch.
        case every(Int64)
    }

    let timing: Timing

    /// Cron's five fields (minute, hour, day of month, month, day of week: `*`, lists, ranges, steps, and
    /// the names `jan`…`dec` and `sun`…`sat`) or one of `@yearly`, `@annually`, `@monthly`, `@weekly`,
    /// `@daily`, `@midnight`, `@hourly`, read in `zone` (UTC by default). When both day fields are
    /// restricted, a day matches either (cron's rule).
    /// - Throws: ``JobQueueError/Code/invalidSchedule`` for an expression that is not valid or that never
    ///   matches (February 30).
    public static func cron(_ expression: String, in zone: ScheduleTimeZone = .utc) throws -> JobSchedule {
        let s = JobSchedule(timing: .cron(try CronExpression(expression), zone))
        guard s.next(after: 0) != nil || s.next(after: QueueSchema.nowMs()) != nil else {
            throw JobQueueError(.invalidSchedule, "the cron expression \"\(expression)\" never matches")
        }
        return s
    }

    /// Every `interval` (at least 100 ms), at the multiples of it since the epoch: every hour on the
    /// hour, every ten seconds at :00, :10, … of each minute (in UTC, whatever the zone).
    public static func every(_ interval: Duration) throws -> JobSchedule {
        let ms = interval.wholeMilliseconds
        guard ms >= 100 else {
            throw JobQueueError(.invalidSchedule, "an interval of \(interval) is shorter than 100 ms")
        }
        return JobSchedule(timing: .every(ms))
    }

    /// `cron 30 2 * * * Europe/Paris`, `every 10s`.
    public var description: String {
        switch timing {
        case .cron(let c, let z): "cron \(c) \(z)"
        case .every(let ms): "every \(QueueLimit.describe(.milliseconds(ms)))"
        }
    }

    /// How the schedule is stored: `cron:<expression>` or `every:<ms>`.
    var spec: String {
        switch timing {
        case .cron(let c, _): "cron:\(c)"
        case .every(let ms): "every:\(ms)"
        }
    }

    var zone: ScheduleTimeZone {
        if case .cron(_, let z) = timing { return z }
        return .utc
    }

    /// The schedule stored as `spec` in `zone` (a zone's name, read from this machine's database).
    init(spec: String, zone: String) throws {
        if spec.hasPrefix("cron:") {
            timing = .cron(try CronExpression(String(spec.dropFirst(5))), try ScheduleTimeZone.named(zone))
        } else if spec.hasPrefix("every:"), let ms = Int64(spec.dropFirst(6)), ms > 0 {
            timing = .every(ms)
        } else {
            throw JobQueueError(.invalidSchedule, "a stored schedule \"\(spec)\" this library does not know")
        }
    }

    private init(timing: Timing) { self.timing = timing }

    /// The first occurrence after `t` (milliseconds since the epoch), or nil when there is none in the
    /// next five years.
    func next(after t: Int64) -> Int64? {
        switch timing {
        case .every(let ms):
            return (floorDiv(t, ms) + 1) * ms
        case .cron(let cron, let zone):
            return cron.next(after: floorDiv(t, 1000), in: zone).map { $0 * 1000 }
        }
    }
}

/// What happens to the occurrences of a schedule that passed while no worker could queue them (every
/// worker stopped, the database away).
public struct MissedRuns: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable {
        case skip(graceMs: Int64)
        case once
        case catchUp
    }

    let kind: Kind

    /// Occurrences more than a minute late are not run; the schedule goes on from the next one. The
    /// default: a report that should have run at 03:00 does not run at 14:00.
    public static let skip = MissedRuns(kind: .skip(graceMs: 60_000))

    /// Occurrences more than `grace` late are not run.
    public static func skip(after grace: Duration) -> MissedRuns {
        MissedRuns(kind: .skip(graceMs: max(0, grace.wholeMilliseconds)))
    }

    /// However many occurrences were missed, one run, as soon as a worker can queue it (APScheduler's
    /// `coalesce`): for jobs that bring something up to date.
    public static let once = MissedRuns(kind: .once)

    /// Every missed occurrence runs, oldest first (at most 1,000 queued per schedule each time a worker
    /// looks): for jobs that each account for their own period.
    public static let catchUp = MissedRuns(kind: .catchUp)

    /// `skip after 60s`, `once`, `catch up`.
    public var description: String {
        switch kind {
        case .skip(let ms): "skip after \(QueueLimit.describe(.milliseconds(ms)))"
        case .once: "once"
        case .catchUp: "catch up"
        }
    }

    /// How it is stored: `skip:<ms>`, `once`, `catchup`.
    var stored: String {
        switch kind {
        case .skip(let ms): "skip:\(ms)"
        case .once: "once"
        case .catchUp: "catchup"
        }
    }

    init(stored: String) throws {
        switch stored {
        case "once": kind = .once
        case "catchup": kind = .catchUp
        default:
            guard stored.hasPrefix("skip:"), let ms = Int64(stored.dropFirst(5)) else {
                throw JobQueueError(.invalidSchedule, "a stored policy \"\(stored)\" this library does not know")
            }
            kind = .skip(graceMs: ms)
        }
    }

    private init(kind: Kind) { self.kind = kind }

    /// The occurrences to queue now, for a schedule due at `due` (≤ `now`), and when it is due next (nil:
    /// never again). At most `limit` occurrences; when more are due, the next due time is the first left.
    func plan(_ schedule: JobSchedule, due: Int64, now: Int64, limit: Int = 1000) -> (runs: [Int64], next: Int64?) {
        var runs: [Int64] = []
        var o: Int64?
        switch kind {
        case .once:
            return ([due], schedule.next(after: now))
        case .catchUp:
            o = due
        case .skip(let grace):
            o = due >= now - grace ? due : schedule.next(after: now - grace - 1)
        }
        while let t = o, t <= now, runs.count < limit {
            runs.append(t)
            o = schedule.next(after: t)
        }
        return (runs, o)
    }
}

/// Cron's five fields, parsed.
struct CronExpression: Sendable, Hashable, CustomStringConvertible {
    let description: String
    let minutes: UInt64
    let hours: UInt64
    let days: UInt64
    let months: UInt64
    let weekdays: UInt64
    /// The day fields start with `*`: for the rule that a day matches either restricted field.
    let anyDay: Bool
    let anyWeekday: Bool
    /// Every hour: runs follow real time through a repeated hour.
    let everyHour: Bool

    private static let aliases = [
        "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
        "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
    ]
    private static let monthNames = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    private static let dayNames = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

    init(_ text: String) throws {
        let trimmed = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
        let expanded = Self.aliases[trimmed.lowercased()] ?? trimmed
        let fields = expanded.split(separator: " ").map { String($0).lowercased() }
        guard fields.count == 5 else {
            throw JobQueueError(
                .invalidSchedule,
                "a cron expression has five fields (minute hour day month weekday) or is an @name: \"\(text)\""
            )
        }
        func field(_ i: Int, _ range: ClosedRange<Int>, _ names: [String] = [], base: Int = 0) throws -> UInt64 {
            do {
                return try Self.parse(fields[i], range, names: names, nameBase: base)
            } catch let e as ZoneError {
                throw JobQueueError(
                    .invalidSchedule,
                    "cron field \(i + 1) \"\(fields[i])\" of \"\(text)\": \(e.message)"
                )
            }
        }
        description = trimmed
        minutes = try field(0, 0...59)
        hours = try field(1, 0...23)
        days = try field(2, 1...31)
        months = try field(3, 1...12, Self.monthNames, base: 1)
        var w = try field(4, 0...7, Self.dayNames)
        if w & (1 << 7) != 0 { w = (w | 1) & ~(1 << 7) }  // 7 is Sunday too
        weekdays = w
        anyDay = fields[2].hasPrefix("*")
        anyWeekday = fields[4].hasPrefix("*")
        everyHour = hours == (1 << 24) - 1
    }

    /// A field's values as bits: `*`, `n`, `a-b`, each with an optional `/step`, comma-separated.
    private static func parse(
        _ f: String,
        _ range: ClosedRange<Int>,
        names: [String],
        nameBase: Int
    ) throws
        -> UInt64
    {
        func value(_ s: Substring) throws -> Int {
            if let n = Int(s), range.contains(n) { return n }
            if let k = names.firstIndex(of: String(s)) { return k + nameBase }
            throw ZoneError("\"\(s)\" is not in \(range.lowerBound)…\(range.upperBound)")
        }
        var bits: UInt64 = 0
        for part in f.split(separator: ",", omittingEmptySubsequences: false) {
            let pieces = part.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count <= 2, !pieces[0].isEmpty else { throw ZoneError("\"\(part)\" is not a value or range") }
            var step = 1
            if pieces.count == 2 {
                guard let s = Int(pieces[1]), s >= 1, s <= range.upperBound else {
                    throw ZoneError("\"\(pieces[1])\" is not a step")
                }
                step = s
            }
            var lo: Int
            var hi: Int
            if pieces[0] == "*" {
                lo = range.lowerBound
                hi = range.upperBound
            } else if let dash = pieces[0].firstIndex(of: "-") {
                lo = try value(pieces[0][..<dash])
                hi = try value(pieces[0][pieces[0].index(after: dash)...])
                guard lo <= hi else { throw ZoneError("the range \"\(pieces[0])\" runs backwards") }
            } else {
                lo = try value(pieces[0])
                hi = pieces.count == 2 ? range.upperBound : lo  // `5/15`: from 5 to the end, every 15
            }
            for v in stride(from: lo, through: hi, by: step) { bits |= 1 << UInt64(v) }
        }
        return bits
    }

    private func dayMatches(_ d: Civil, weekday: Int) -> Bool {
        guard months & (1 << UInt64(d.month)) != 0 else { return false }
        let dom = days & (1 << UInt64(d.day)) != 0
        let dow = weekdays & (1 << UInt64(weekday)) != 0
        if !anyDay && !anyWeekday { return dom || dow }
        return dom && dow
    }

    /// The first occurrence after `t` (seconds since the epoch), in `zone`; nil if none within five years.
    func next(after t: Int64, in zone: ScheduleTimeZone) -> Int64? {
        // Local times are scanned from three hours before `t`'s, since after clocks go back a later
        // instant can have an earlier local time; the scan stops three hours past the first found.
        let start = floorDiv(t + Int64(zone.offset(at: t)) - 3 * 3600, 60) * 60
        var best: Int64?
        var bestLocal: Int64 = 0
        let firstDay = floorDiv(start, 86400)
        for day in firstDay...(firstDay + 5 * 366) {
            let date = Civil(days: day)
            guard dayMatches(date, weekday: Civil.weekday(day)) else { continue }
            for h in 0..<24 where hours & (1 << UInt64(h)) != 0 {
                for m in 0..<60 where minutes & (1 << UInt64(m)) != 0 {
                    let local = day * 86400 + Int64(h * 3600 + m * 60)
                    if local < start { continue }
                    if best != nil && local > bestLocal + 3 * 3600 { return best }
                    let instants: [Int64]
                    switch zone.resolve(local: local) {
                    case .unique(let i): instants = [i]
                    case .twice(let a, let b): instants = everyHour ? [a, b] : [a]
                    case .gap(let g): instants = [g]
                    }
                    for i in instants where i > t && (best == nil || i < best!) {
                        if best == nil { bestLocal = local }
                        best = i
                    }
                }
            }
        }
        return best
    }
}
