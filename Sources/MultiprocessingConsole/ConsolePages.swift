#if Console
import Multiprocessing
import MultiprocessingJobQueue
import Threading

/// The console's pages as HTML, from what the queue returned: pure functions of their data (no database,
/// no clock of their own), so that the tests read the same figures the database holds.
enum ConsolePages {
    /// What every page needs besides its own data.
    struct Frame {
        /// The page's title (after "mp console — ").
        var title: String
        /// The navigation entry that is current (`/`, `/jobs`, `/workers`).
        var section: String
        /// Whether the visitor may act (signed in, or no token needed): forms are shown.
        var canAct: Bool
        /// A token is configured (a "sign in" link is shown to visitors who have not).
        var tokenConfigured: Bool
        /// The visitor's anti-forgery token for forms (nil when signed in with a bearer token or not at all).
        var csrf: String?
        /// Refresh the page's `<main>` every this many milliseconds (nil: never).
        var refreshMs: Int?
        /// The queue's database, for the header (its password never shown).
        var database: String
        /// A notice above the content (an action's outcome).
        var notice: String?
    }

    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for ch in s.unicodeScalars {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(ch)
            }
        }
        return out
    }

    /// `a=b&c=d`, percent-encoded, for links.
    static func query(_ items: [(String, String?)]) -> String {
        let parts = items.compactMap { k, v in v.map { "\(k)=\(FormData.percentEncode($0))" } }
        return parts.isEmpty ? "" : "?" + parts.joined(separator: "&")
    }

    /// The script that refreshes `<main>` in place (no build step, no library): the page's own URL is
    /// fetched again and its `<main>` swapped in; with scripts off the page is still complete.
    static let refreshScript = """
        (function () {
          var main = document.querySelector('main[data-refresh]');
          if (!main) return;
          var every = parseInt(main.getAttribute('data-refresh'), 10);
          function tick() {
            fetch(location.href, { credentials: 'same-origin', headers: { 'X-Console-Fragment': '1' } })
              .then(function (r) { return r.ok ? r.text() : null; })
              .then(function (html) {
                if (html !== null) { main.innerHTML = html; main.setAttribute('data-refreshed', Date.now()); }
              })
              .catch(function () {})
              .then(function () { setTimeout(tick, every); });
          }
          setTimeout(tick, every);
        })();
        """

    static let style = """
        body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
        header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.2em;background:#1d2b3a;color:#fff}
        header a{color:#cfe3ff;text-decoration:none}header a.current{color:#fff;font-weight:600}
        header .db{margin-left:auto;color:#9fb3c8;font-size:12px}
        main{padding:1em 1.2em;max-width:1200px}
        table{border-collapse:collapse;background:#fff;margin:.5em 0 1.2em}
        th,td{padding:.3em .7em;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
        td.n{text-align:right;font-variant-numeric:tabular-nums}
        .state{padding:0 .4em;border-radius:3px;font-size:12px}
        .available{background:#e6f0ff}.running{background:#fff3cd}.completed{background:#dff5e1}
        .discarded{background:#fde2e1}.cancelled{background:#eceff1}
        .notice{padding:.5em .8em;background:#fff3cd;border:1px solid #f0d68a;margin-bottom:1em}
        .lost{color:#b3261e}pre{background:#fff;padding:.6em;overflow:auto;font-size:12px}
        form.inline{display:inline}button{margin-right:.4em}
        svg{background:#fff;border:1px solid #e3e6ea}
        """

    static func page(_ frame: Frame, _ content: String) -> String {
        func nav(_ path: String, _ name: String) -> String {
            "<a href=\"\(path)\"\(frame.section == path ? " class=\"current\"" : "")>\(name)</a>"
        }
        var account = ""
        if frame.tokenConfigured {
            if frame.canAct {
                if let csrf = frame.csrf {
                    account =
                        "<form class=\"inline\" method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"_csrf\" value=\"\(escape(csrf))\"><button>Sign out</button></form>"
                }
            } else {
                account = "<a href=\"/login\">Sign in</a> <span>(read-only)</span>"
            }
        } else {
            account = "<span title=\"start the console with a token to act on jobs\">read-only</span>"
        }
        let refresh = frame.refreshMs.map { " data-refresh=\"\($0)\"" } ?? ""
        let notice = frame.notice.map { "<div class=\"notice\" id=\"notice\">\(escape($0))</div>" } ?? ""
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
            <title>mp console — \(escape(frame.title))</title><style>\(style)</style></head>
            <body><header><strong>mp console</strong>\(nav("/", "Queues"))\(nav("/jobs", "Jobs"))\(nav("/workers", "Workers"))\(account)<span class="db">\(escape(frame.database))</span></header>
            <main\(refresh)>\(notice)\(content)</main>
            <script>\(refreshScript)</script></body></html>
            """
    }

    // MARK: the overview

    static let stateColumns: [JobState] = [.available, .waiting, .running, .completed, .discarded, .cancelled]

    static func overview(
        queues: [QueueSummary],
        throughput: [ThroughputBucket],
        bucket: Duration,
        workers: [QueueWorkerRecord],
        now: QueueTime
    ) -> String {
        var html = "<h1>Queues</h1>"
        if queues.isEmpty {
            html += "<p id=\"no-queues\">No jobs in the database yet.</p>"
        } else {
            html += "<table id=\"queues\"><thead><tr><th>queue</th>"
            for s in stateColumns { html += "<th>\(s.rawValue)</th>" }
            html += "<th>of which scheduled</th></tr></thead><tbody>"
            for q in queues {
                html += "<tr><td><a href=\"/jobs\(query([("queue", q.queue)]))\">\(escape(q.queue))</a></td>"
                for s in stateColumns {
                    let link = "/jobs" + query([("queue", q.queue), ("state", s.rawValue)])
                    html +=
                        "<td class=\"n\" data-queue=\"\(escape(q.queue))\" data-state=\"\(s.rawValue)\"><a href=\"\(escape(link))\">\(q.count(s))</a></td>"
                }
                html +=
                    "<td class=\"n\" data-queue=\"\(escape(q.queue))\" data-state=\"scheduled\">\(q.scheduled)</td></tr>"
            }
            html += "</tbody></table>"
        }
        html += chart(throughput, bucket: bucket)
        let live = workers.filter { $0.isLive(at: now) }
        let processes = live.flatMap(\.processes)
        let busy = processes.filter(\.busy).count
        html +=
            "<p><a href=\"/workers\">Workers</a>: <span id=\"workers-live\">\(live.count)</span> live, <span id=\"workers-busy\">\(busy)</span> of <span id=\"processes\">\(processes.count)</span> pool processes busy"
        let lost = workers.count - live.count
        if lost > 0 { html += ", <span class=\"lost\" id=\"workers-lost\">\(lost) lost</span>" }
        return html + ".</p>"
    }

    /// Jobs finished per bucket as an SVG bar chart (completed in green, failed stacked in red).
    static func chart(_ buckets: [ThroughputBucket], bucket: Duration) -> String {
        let width = 720.0
        let height = 140.0
        let peak = max(1, buckets.map { $0.completed + $0.failed }.max() ?? 1)
        let barWidth = width / Double(max(1, buckets.count))
        let seconds = max(0.001, Double(bucket.wholeMilliseconds) / 1000)
        let last = buckets.dropLast().last  // the newest complete bucket
        let completed = buckets.reduce(0) { $0 + $1.completed }
        let failed = buckets.reduce(0) { $0 + $1.failed }
        let span = Int((Double(buckets.count) * seconds / 60).rounded())
        var svg =
            "<h2>Throughput</h2><p>Jobs finished in the last \(span) minutes: <span id=\"completed-total\">\(completed)</span> completed, <span id=\"failed-total\">\(failed)</span> failed"
        if let last {
            let rate = Double(last.completed + last.failed) / seconds
            svg += "; <span id=\"rate\">\(format(rate))</span> jobs/s in the last complete \(Int(seconds)) s"
        }
        svg +=
            ".</p><svg id=\"throughput\" width=\"\(Int(width))\" height=\"\(Int(height) + 16)\" role=\"img\" aria-label=\"jobs finished per \(Int(seconds)) seconds\">"
        for (i, b) in buckets.enumerated() {
            let x = Double(i) * barWidth
            let ok = Double(b.completed) / Double(peak) * height
            let bad = Double(b.failed) / Double(peak) * height
            let title = "<title>\(b.start): \(b.completed) completed, \(b.failed) failed</title>"
            if b.completed > 0 {
                svg +=
                    "<rect x=\"\(format(x))\" y=\"\(format(height - ok))\" width=\"\(format(max(1, barWidth - 1)))\" height=\"\(format(ok))\" fill=\"#3a9d5d\">\(title)</rect>"
            }
            if b.failed > 0 {
                svg +=
                    "<rect x=\"\(format(x))\" y=\"\(format(height - ok - bad))\" width=\"\(format(max(1, barWidth - 1)))\" height=\"\(format(bad))\" fill=\"#c8553d\">\(title)</rect>"
            }
        }
        svg +=
            "<text x=\"2\" y=\"\(Int(height) + 13)\" font-size=\"11\" fill=\"#667\">peak \(peak) per \(Int(seconds)) s</text></svg>"
        return svg
    }

    static func format(_ x: Double) -> String {
        let r = (x * 10).rounded() / 10
        return r == r.rounded() ? String(Int(r)) : String(r)
    }

    // MARK: jobs

    static func jobs(_ list: [JobInfo], filter: JobFilter, queues: [String], pageSize: Int) -> String {
        var html = "<h1>Jobs</h1><form method=\"get\" action=\"/jobs\" id=\"filter\">"
        html += "<label>state <select name=\"state\"><option value=\"\">any</option>"
        for s in JobState.allCases {
            html += "<option value=\"\(s.rawValue)\"\(filter.state == s ? " selected" : "")>\(s.rawValue)</option>"
        }
        html += "</select></label> <label>queue <select name=\"queue\"><option value=\"\">any</option>"
        for q in queues {
            html += "<option value=\"\(escape(q))\"\(filter.queue == q ? " selected" : "")>\(escape(q))</option>"
        }
        html +=
            "</select></label> <label>type <input name=\"kind\" value=\"\(escape(filter.kind ?? ""))\" size=\"16\"></label> <button>Filter</button></form>"
        if list.isEmpty { return html + "<p id=\"no-jobs\">No jobs match.</p>" }
        html +=
            "<table id=\"jobs\"><thead><tr><th>id</th><th>queue</th><th>type</th><th>state</th><th>attempt</th><th>worker</th><th>queued</th><th>finished</th><th>last error</th></tr></thead><tbody>"
        for j in list {
            html +=
                "<tr data-job=\"\(j.id)\"><td><a href=\"/jobs/\(j.id)\">\(j.id)</a></td><td>\(escape(j.queue))</td><td>\(escape(j.typeName))</td>"
            html += "<td><span class=\"state \(j.state.rawValue)\">\(j.state.rawValue)</span></td>"
            html += "<td class=\"n\">\(j.attempt)/\(j.maxAttempts)</td><td>\(escape(j.worker ?? ""))</td>"
            html += "<td>\(j.createdAt)</td><td>\(j.finishedAt.map { "\($0)" } ?? "")</td>"
            html += "<td>\(escape(shorten(j.errors.last ?? "", 120)))</td></tr>"
        }
        html += "</tbody></table>"
        if list.count == pageSize, let last = list.last {
            var next = filter
            next.before = last.id
            html += "<p><a id=\"next-page\" href=\"/jobs\(escape(jobsQuery(next)))\">Older jobs →</a></p>"
        }
        return html
    }

    static func jobsQuery(_ f: JobFilter) -> String {
        query([
            ("state", f.state?.rawValue), ("queue", f.queue), ("kind", f.kind), ("before", f.before.map(String.init)),
        ])
    }

    static func shorten(_ s: String, _ n: Int) -> String { s.count <= n ? s : String(s.prefix(n - 1)) + "…" }

    static func job(_ d: JobDetails, frame: Frame) -> String {
        let j = d.info
        var html =
            "<h1>Job \(j.id) <span class=\"state \(j.state.rawValue)\" id=\"job-state\">\(j.state.rawValue)</span></h1><table id=\"job\">"
        func row(_ name: String, _ value: String, id: String? = nil) {
            html += "<tr><th>\(name)</th><td\(id.map { " id=\"\($0)\"" } ?? "")>\(value)</td></tr>"
        }
        row("queue", escape(j.queue))
        row("type", "\(escape(j.typeName)) <small>(\(escape(j.kind)))</small>")
        row("priority", "\(j.priority)")
        row("attempt", "\(j.attempt) of \(j.maxAttempts)", id: "job-attempt")
        row("worker", escape(j.worker ?? "—"))
        row("queued", "\(d.createdAt)")
        row("due", "\(d.runAt)")
        row("finished", d.finishedAt.map { "\($0)" } ?? "—")
        if let l = d.leaseUntil { row("lease until", "\(l)") }
        if let k = d.uniqueKey { row("unique key", escape(k)) }
        row("timeout", d.timeout.map { "\($0)" } ?? "none")
        row("first backoff", "\(d.backoff)")
        if d.cancelRequested { row("cancellation", "asked for; the worker stops it within a heartbeat") }
        if let r = d.resultBytes { row("result", "\(r) bytes stored") }
        if d.traced { row("trace", "queued inside a trace") }
        if !d.waitsFor.isEmpty {
            let links = d.waitsFor.map { w in
                "<a href=\"/jobs/\(w.job)\">\(w.job)</a> (\(w.ended?.rawValue ?? "not ended")\(w.required ? "" : ", outcome only"))"
            }
            row("waits for", links.joined(separator: ", "), id: "job-waits-for")
        }
        if !d.waitedForBy.isEmpty {
            row(
                "waited for by",
                d.waitedForBy.map { "<a href=\"/jobs/\($0)\">\($0)</a>" }.joined(separator: ", "),
                id: "job-waited-for-by"
            )
        }
        html += "</table>"
        if frame.canAct { html += actions(d, csrf: frame.csrf) }
        html += "<h2>Error history</h2>"
        if j.errors.isEmpty {
            html += "<p id=\"no-errors\">No failed attempt.</p>"
        } else {
            html += "<ol id=\"errors\">" + j.errors.map { "<li>\(escape($0))</li>" }.joined() + "</ol>"
        }
        html += "<h2>Arguments</h2>"
        if let text = BinaryFormat.describe(d.payload, limit: 8192) {
            html += "<pre id=\"arguments\">\(escape(text))</pre>"
        } else {
            html += "<p id=\"arguments-unreadable\">Not a value of the library's binary format.</p>"
        }
        html += "<details><summary>\(d.payload.count) bytes</summary>"
        html += "<pre id=\"payload\">\(escape(hexDump(d.payload, limit: 4096)))</pre></details>"
        return html
    }

    static func actions(_ d: JobDetails, csrf: String?) -> String {
        var forms = ""
        func form(_ action: String, _ label: String, _ confirm: Bool = false) {
            forms += "<form class=\"inline\" method=\"post\" action=\"/jobs/\(d.info.id)/\(action)\">"
            if let csrf { forms += "<input type=\"hidden\" name=\"_csrf\" value=\"\(escape(csrf))\">" }
            forms += "<button id=\"\(action)\" name=\"action\" value=\"\(action)\">\(label)</button></form>"
        }
        switch d.info.state {
        case .available, .waiting:
            form("cancel", "Cancel")
            form("discard", "Discard")
        case .running:
            form("cancel", "Cancel")
        case .completed, .discarded, .cancelled:
            form("retry", "Retry")
        }
        return "<p id=\"actions\">\(forms)</p>"
    }

    /// Offset, hex and printable ASCII, 16 bytes a line; `limit` bytes at most.
    static func hexDump(_ bytes: [UInt8], limit: Int) -> String {
        let hex = Array("0123456789abcdef".utf8)
        var out = ""
        var offset = 0
        while offset < min(bytes.count, limit) {
            let line = bytes[offset..<min(offset + 16, bytes.count, limit)]
            var o = String(offset, radix: 16)
            o = String(repeating: "0", count: max(0, 6 - o.count)) + o
            var h = ""
            for b in line { h += String(decoding: [hex[Int(b >> 4)], hex[Int(b & 15)], 32], as: UTF8.self) }
            h += String(repeating: "   ", count: 16 - line.count)
            let a = String(decoding: line.map { $0 >= 32 && $0 < 127 ? $0 : 46 }, as: UTF8.self)
            out += "\(o)  \(h) \(a)\n"
            offset += 16
        }
        if bytes.count > limit { out += "… \(bytes.count - limit) more bytes\n" }
        return out
    }

    // MARK: workers

    static func workers(_ list: [QueueWorkerRecord], now: QueueTime) -> String {
        var html = "<h1>Workers</h1>"
        if list.isEmpty { return html + "<p id=\"no-workers\">No worker has announced itself.</p>" }
        html +=
            "<table id=\"workers\"><thead><tr><th>name</th><th>host</th><th>pid</th><th>queues</th><th>last heartbeat</th><th>jobs held</th><th>finished</th><th>pool: busy / processes</th></tr></thead><tbody>"
        for w in list {
            let live = w.isLive(at: now)
            let age = now.since(w.lastSeen)
            let status = live ? (w.stopping ? " (stopping)" : "") : " <span class=\"lost\">lost</span>"
            html +=
                "<tr data-worker=\"\(escape(w.name))\"><td>\(escape(w.name))\(status)</td><td>\(escape(w.host))</td><td class=\"n\">\(w.pid)</td><td>\(escape(w.queues.joined(separator: ", ")))</td>"
            html += "<td>\(format(Double(age.wholeMilliseconds) / 1000)) s ago</td>"
            html +=
                "<td class=\"n\" data-held>\(w.held)</td><td class=\"n\">\(w.finished)</td><td class=\"n\">\(w.processes.filter(\.busy).count) / \(w.processes.count)</td></tr>"
        }
        html += "</tbody></table><h2>Pool processes</h2>"
        html += "<p>As each worker last announced itself (every third of its lease).</p>"
        html +=
            "<table id=\"processes\"><thead><tr><th>worker</th><th>pid</th><th>state</th><th>current item's age</th><th>peak memory</th><th>tasks done</th></tr></thead><tbody>"
        for w in list {
            for p in w.processes {
                html +=
                    "<tr data-process=\"\(p.pid)\"><td>\(escape(w.name))</td><td class=\"n\">\(p.pid)</td><td>\(p.busy ? "busy" : "idle")</td>"
                html +=
                    "<td class=\"n\">\(p.currentItemAge.map { "\(format(Double($0.wholeMilliseconds) / 1000)) s" } ?? "—")</td>"
                html += "<td class=\"n\">\(p.peakMemory.map(megabytes) ?? "?")</td><td class=\"n\">\(p.tasks)</td></tr>"
            }
        }
        return html + "</tbody></table>"
    }

    static func megabytes(_ bytes: Int) -> String { "\(format(Double(bytes) / 1_048_576)) MiB" }

    // MARK: sign-in and errors

    static func login(next: String, failed: Bool) -> String {
        var html = "<h1>Sign in</h1>"
        if failed { html += "<p class=\"notice\" id=\"login-failed\">That token is not the console's.</p>" }
        html += """
            <form method="post" action="/login" id="login"><input type="hidden" name="next" value="\(escape(next))">
            <label>Token <input type="password" name="token" id="token" autocomplete="current-password" autofocus></label>
            <button id="sign-in">Sign in</button></form>
            """
        return html
    }

    static func message(_ title: String, _ text: String) -> String {
        "<h1>\(escape(title))</h1><p id=\"message\">\(escape(text))</p>"
    }
}
#endif
