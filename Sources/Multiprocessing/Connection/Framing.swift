import Glibc

/// The one decoder of CPython's framing, used by ``Connection``s and by the process pool's channels.
///
/// A frame is a 4-byte big-endian signed length and that many bytes, or `-1`, an 8-byte big-endian
/// length and the bytes (CPython uses the long form past 2 GiB). Bytes are read into free space
/// (``read(_:)``) and whole frames taken out (``next(_:)``, ``nextArray()``).
///
/// Memory follows the bytes that arrived, never a length a peer announced: the buffer doubles only when
/// it is full, so a peer that sends a 1 GiB length and nothing else costs nothing. A frame too large for
/// the buffer is read straight into an array of its own, which grows as it fills (to twice what arrived,
/// or 1 MiB, whichever is more, never past the frame) and is handed over without a copy.
package struct FrameDecoder {
    /// The largest frame accepted; a longer announced length throws ``MultiprocessingError/Code/messageTooLarge``.
    package var maxFrame: Int

    private var buffer: [UInt8]
    private var start = 0
    private var end = 0
    /// A frame larger than `buffer`: the bytes so far (`filled` of them) and its announced size.
    private var large: (payload: [UInt8], filled: Int, size: Int)?
    /// Whether the last large frame's array is kept (up to ``spareLimit`` bytes) for the next one: a
    /// stream of chunk-sized frames (the process pool's) then reads into the same pages rather than
    /// faulting in fresh ones per frame. Off by default: a server with many connections would hold a
    /// spare per connection.
    package var keepsSpare = false
    private var spare: [UInt8] = []
    private static var spareLimit: Int { 1 << 20 }

    /// Whether the last read filled less than the space offered: a stream socket then had nothing more.
    package private(set) var lastReadWasShort = false

    package init(maxFrame: Int, capacity: Int = 1 << 16, prefill: [UInt8] = []) {
        self.maxFrame = maxFrame
        buffer = [UInt8](repeating: 0, count: max(capacity, prefill.count * 2, 16))
        buffer.withUnsafeMutableBytes { b in prefill.withUnsafeBytes { b.copyMemory(from: $0) } }
        end = prefill.count
    }

    /// Bytes of room the buffers hold now (for tests: a bare announced length must not grow it).
    package var capacity: Int { buffer.count + (large?.payload.count ?? 0) + spare.count }

    /// Whether a whole frame is buffered (the next read needs no system call).
    package var hasWholeFrame: Bool {
        if let l = large { return l.filled == l.size }
        guard let h = try? header() else { return false }
        return end - (start + h.length) >= h.size
    }

    /// Whether any bytes are buffered: a whole frame, or part of one.
    package var hasBufferedBytes: Bool { end > start || large != nil }

    /// The header that precedes a `count`-byte payload, as CPython writes it: a 4-byte big-endian length,
    /// or `-1` and an 8-byte length past `Int32.max`. (The encoding side, for senders.)
    package static func header(for count: Int) -> [UInt8] {
        var header: [UInt8] = []
        if count > Int(Int32.max) {
            header = [0xff, 0xff, 0xff, 0xff]
            withUnsafeBytes(of: UInt64(count).bigEndian) { header.append(contentsOf: $0) }
        } else {
            withUnsafeBytes(of: Int32(count).bigEndian) { header.append(contentsOf: $0) }
        }
        return header
    }

    /// Calls `read` with the free space and takes what it returns: the number of bytes read, 0 at end of
    /// input, or `nil` when nothing is available now. Inside a large frame, `read` is offered no more
    /// than the rest of that frame.
    package mutating func read(_ read: (UnsafeMutableRawBufferPointer) throws -> Int?) rethrows -> Int? {
        if var l = large {
            // A whole large frame waits to be taken: there is nothing to read into until it is.
            if l.filled == l.size { return nil }
            large = nil  // `l` holds the only reference: growing it copies nothing
            defer { large = l }
            if l.filled == l.payload.count { Self.grow(&l.payload, to: min(l.size, max(2 * l.payload.count, 1 << 20))) }
            let filled = l.filled
            // A reused array may be longer than the frame: offer no more than the frame's rest.
            let room = min(l.payload.count, l.size)
            let n = try l.payload.withUnsafeMutableBytes { p in
                try read(UnsafeMutableRawBufferPointer(rebasing: p[filled..<room]))
            }
            if let n, n > 0 {
                lastReadWasShort = n < room - filled
                l.filled += n
            }
            return n
        }
        if end == buffer.count {
            if start > 0 { compact() } else { Self.grow(&buffer, to: 2 * buffer.count) }
        }
        let space = buffer.count - end
        let from = end
        let n = try buffer.withUnsafeMutableBytes { b in try read(UnsafeMutableRawBufferPointer(rebasing: b[from...])) }
        if let n, n > 0 {
            end += n
            lastReadWasShort = n < space
        }
        return n
    }

    /// The body of the next whole frame, passed to `body` (valid only inside the call); `nil` if no whole
    /// frame is buffered.
    package mutating func next<R>(_ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        if let l = large {
            guard l.filled == l.size else { return nil }
            large = nil
            defer { if keepsSpare && l.payload.count <= Self.spareLimit { spare = l.payload } }
            return try l.payload.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[0..<l.size])) }
        }
        guard let h = try header() else { return nil }
        let from = start + h.length
        guard end - from >= h.size else {
            prepareFor(h)
            return nil
        }
        start = from + h.size
        defer {
            if start == end {
                start = 0
                end = 0
            }
        }
        return try buffer.withUnsafeBytes { b in try body(UnsafeRawBufferPointer(rebasing: b[from..<(from + h.size)])) }
    }

    /// The next whole frame as an array (a large frame's own array, without a copy); `nil` if none.
    package mutating func nextArray() throws -> [UInt8]? {
        if var l = large {
            guard l.filled == l.size else { return nil }
            large = nil  // `l` holds the only reference: trimming copies nothing
            // A reused array may be longer than the frame.
            if l.payload.count > l.size { l.payload.removeSubrange(l.size...) }
            return l.payload
        }
        return try next { Array($0) }
    }

    /// Hands over the bytes read past the last frame (a channel switching to another protocol).
    package mutating func takeBuffered() -> [UInt8] {
        defer {
            start = 0
            end = 0
        }
        return Array(buffer[start..<end])
    }

    private struct Header {
        let length: Int  // 4 or 12
        let size: Int
    }

    /// The header at `start`, `nil` if not all of it is buffered.
    private func header() throws -> Header? {
        let avail = end - start
        guard avail >= 4 else { return nil }
        let n = buffer.withUnsafeBytes { Int32(bigEndian: $0.loadUnaligned(fromByteOffset: start, as: Int32.self)) }
        let h: Header
        if n == -1 {
            guard avail >= 12 else { return nil }
            let big = buffer.withUnsafeBytes {
                UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: start + 4, as: UInt64.self))
            }
            guard big <= UInt64(Int.max) else {
                throw MultiprocessingError(.malformedMessage, "frame length \(big) is out of range")
            }
            h = Header(length: 12, size: Int(big))
        } else if n < 0 {
            throw MultiprocessingError(.malformedMessage, "negative frame length \(n)")
        } else {
            h = Header(length: 4, size: Int(n))
        }
        guard h.size <= maxFrame else {
            throw MultiprocessingError(.messageTooLarge, "a frame of \(h.size) bytes exceeds the limit of \(maxFrame)")
        }
        return h
    }

    /// An incomplete frame whose header is buffered: make room for it. One that fits the buffer is moved
    /// to its front; a larger one continues in an array of its own, sized to what has arrived.
    private mutating func prepareFor(_ h: Header) {
        if h.length + h.size <= buffer.count {
            if start + h.length + h.size > buffer.count { compact() }
            return
        }
        let from = start + h.length
        let have = end - from
        // Sized by what arrived (at least the small buffer's size), never by the announced length; or the
        // last large frame's array, memory already held.
        let want = max(have, min(h.size, buffer.count))
        var payload: [UInt8]
        if spare.count >= want {
            payload = spare
            spare = []
        } else {
            payload = [UInt8](repeating: 0, count: want)
        }
        payload.withUnsafeMutableBytes { p in
            buffer.withUnsafeBytes { b in p.baseAddress!.copyMemory(from: b.baseAddress! + from, byteCount: have) }
        }
        start = 0
        end = 0
        large = (payload, have, h.size)
    }

    /// `bytes` with `count` bytes of room, its contents kept (a fresh zeroed array and one copy: cheaper
    /// than appending a repeated element).
    private static func grow(_ bytes: inout [UInt8], to count: Int) {
        var bigger = [UInt8](repeating: 0, count: count)
        bigger.withUnsafeMutableBytes { b in bytes.withUnsafeBytes { b.copyMemory(from: $0) } }
        bytes = bigger
    }

    private mutating func compact() {
        let live = end - start
        if start > 0 && live > 0 {
            buffer.withUnsafeMutableBytes { b in
                b.baseAddress!.copyMemory(from: b.baseAddress! + start, byteCount: live)
            }
        }
        start = 0
        end = live
    }
}
