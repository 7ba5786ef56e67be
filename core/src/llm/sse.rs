//! Server-sent events, parsed incrementally with a bounded buffer, as the WHATWG HTML
//! standard's "event stream interpretation" describes: lines end in CRLF, LF or CR (a CRLF
//! split across two chunks is still one line end), `:` starts a comment, `data` lines join
//! with `\n`, a blank line dispatches, and an event still open when the stream ends is
//! discarded. Chunks pass through the proxy as they arrive; this parser only watches them.
//!
//! The buffer holds one event at most, up to [`MAX_EVENT`] bytes: a larger event is reported
//! as [`Event::TooLarge`] without its data, so a stream can never make the filter hold more.

/// The most bytes of one event (its partial line and data together) held at once.
pub const MAX_EVENT: usize = 1 << 20;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// `kind` is the `event` field, or `message` when there is none.
    Message { kind: &'a str, data: &'a str },
    /// More than [`MAX_EVENT`] bytes: dropped.
    TooLarge { kind: &'a str },
}

#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    /// The current line outgrew the bound: its remaining bytes are skipped.
    line_overflow: bool,
    /// The last byte was a CR: a LF right after it ends no further line.
    after_cr: bool,
    first_line: bool,
    kind: String,
    data: Vec<u8>,
    /// The current event outgrew the bound.
    overflow: bool,
    max_event: usize,
}

impl Default for SseParser {
    fn default() -> SseParser {
        SseParser::with_limit(MAX_EVENT)
    }
}

impl SseParser {
    /// A parser that holds at most `max_event` bytes of one event (tests use small ones).
    pub fn with_limit(max_event: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            line_overflow: false,
            after_cr: false,
            first_line: true,
            kind: String::new(),
            data: Vec::new(),
            overflow: false,
            max_event,
        }
    }

    /// Feeds the next chunk of the stream; `on` sees each event it completes.
    pub fn feed(&mut self, chunk: &[u8], on: &mut dyn FnMut(Event<'_>)) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if let Some(after) = rest.strip_prefix(b"\n") {
                    rest = after;
                    continue;
                }
            }
            match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
                None => {
                    self.push(rest);
                    return;
                }
                Some(at) => {
                    let (text, tail) = rest.split_at(at);
                    self.push(text);
                    let (terminator, after) = tail.split_at(1);
                    self.after_cr = terminator == b"\r";
                    self.end_line(on);
                    rest = after;
                }
            }
        }
    }

    /// How many bytes of the stream the parser holds now: never more than its bound.
    pub fn held(&self) -> usize {
        self.line.len() + self.data.len() + self.kind.len()
    }

    /// Whether the stream, were it to end now, would end between events: no partial line
    /// or event is pending.
    pub fn at_boundary(&self) -> bool {
        self.line.is_empty() && !self.line_overflow && self.data.is_empty() && !self.overflow
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.held() + bytes.len() > self.max_event {
            self.line_overflow = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, on: &mut dyn FnMut(Event<'_>)) {
        let mut line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.first_line) && line.starts_with(BOM) {
            line.drain(..BOM.len());
        }
        if std::mem::take(&mut self.line_overflow) {
            self.overflow = true;
            self.data.clear();
        } else if line.is_empty() {
            self.dispatch(on);
        } else if line.first() != Some(&b':') {
            let (field, value) = match line.iter().position(|b| *b == b':') {
                Some(at) => {
                    let (f, v) = line.split_at(at);
                    let v = v.get(1..).unwrap_or_default();
                    (f, v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line.as_slice(), &[][..]),
            };
            match field {
                b"event" => {
                    // Decoding may grow the name (an invalid byte becomes three): the bound
                    // holds for what is kept, not for what arrived.
                    let kind = String::from_utf8_lossy(value);
                    if self.data.len() + kind.len() > self.max_event {
                        self.overflow = true;
                        self.data.clear();
                        self.kind.clear();
                    } else {
                        self.kind = kind.into_owned();
                    }
                }
                b"data" if !self.overflow => {
                    if self.data.len() + self.kind.len() + value.len() + 1 > self.max_event {
                        self.overflow = true;
                        self.data.clear();
                    } else {
                        self.data.extend_from_slice(value);
                        self.data.push(b'\n');
                    }
                }
                _ => {}
            }
        }
        // Keep the allocation for the next line.
        line.clear();
        self.line = line;
    }

    fn dispatch(&mut self, on: &mut dyn FnMut(Event<'_>)) {
        let kind = std::mem::take(&mut self.kind);
        let kind = if kind.is_empty() { "message" } else { &kind };
        if std::mem::take(&mut self.overflow) {
            on(Event::TooLarge { kind });
        } else if !self.data.is_empty() {
            self.data.pop();
            let data = String::from_utf8_lossy(&self.data);
            on(Event::Message { kind, data: &data });
        }
        self.data.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Message(String, String),
        TooLarge(String),
    }

    fn parse(chunks: &[&[u8]], limit: usize) -> Vec<Owned> {
        let mut p = SseParser::with_limit(limit);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |e| {
                out.push(match e {
                    Event::Message { kind, data } => Owned::Message(kind.into(), data.into()),
                    Event::TooLarge { kind } => Owned::TooLarge(kind.into()),
                })
            });
        }
        out
    }

    fn m(kind: &str, data: &str) -> Owned {
        Owned::Message(kind.into(), data.into())
    }

    const STREAM: &[u8] = b"\xEF\xBB\xBFevent: message_start\r\ndata: {\"a\":1}\r\n\r\n: ping\n\ndata:x\ndata\ndata: y\n\nevent: e\rdata:  two spaces\r\rid: 7\nretry: 10\nunknown: z\ndata: last\n\n";

    fn want() -> Vec<Owned> {
        vec![
            m("message_start", "{\"a\":1}"),
            m("message", "x\n\ny"),
            m("e", " two spaces"),
            m("message", "last"),
        ]
    }

    #[test]
    fn events_follow_the_standard() {
        assert_eq!(parse(&[STREAM], MAX_EVENT), want());
        // An event still open when the stream ends is never dispatched.
        assert_eq!(parse(&[b"data: [DONE]\n"], MAX_EVENT), vec![]);
        // `event` without data dispatches nothing, and does not leak into the next event.
        assert_eq!(
            parse(&[b"event: a\n\ndata: 1\n\n"], MAX_EVENT),
            vec![m("message", "1")]
        );
        // A BOM only counts at the very start.
        assert_eq!(
            parse(&[b"data: 1\n\n\xEF\xBB\xBFdata: 2\n\n"], MAX_EVENT),
            vec![m("message", "1")]
        );
    }

    #[test]
    fn every_split_gives_the_same_events() {
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(parse(&[a, b], MAX_EVENT), want(), "split at {i}");
            for j in i..=STREAM.len() {
                let (b1, b2) = b.split_at(j - i);
                assert_eq!(parse(&[a, b1, b2], MAX_EVENT), want(), "split at {i}, {j}");
            }
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse(&bytes, MAX_EVENT), want());
    }

    #[test]
    fn an_event_past_the_bound_is_reported_without_its_data() {
        let limit = 16;
        let stream: &[u8] =
            b"data: short\n\nevent: big\ndata: 0123456789\ndata: 0123456789\n\ndata: after\n\n";
        assert_eq!(
            parse(&[stream], limit),
            vec![
                m("message", "short"),
                Owned::TooLarge("big".into()),
                m("message", "after")
            ]
        );
        // One line longer than the bound, split anywhere.
        let long: &[u8] = b"data: 0123456789abcdefghij\n\ndata: ok\n\n";
        for i in 0..=long.len() {
            let (a, b) = long.split_at(i);
            assert_eq!(
                parse(&[a, b], limit),
                vec![Owned::TooLarge("message".into()), m("message", "ok")],
                "split at {i}"
            );
        }
        let mut p = SseParser::with_limit(limit);
        p.feed(b"data: 0123456789abcdefghijklmnop", &mut |_| {});
        assert!(p.held() <= limit);
        assert!(!p.at_boundary());
        p.feed(b"\n\n", &mut |_| {});
        assert!(p.at_boundary());
        // An event name of invalid UTF-8 grows when decoded (found by the sse fuzz target);
        // what is held stays bounded, and the event is dropped as too large.
        let mut p = SseParser::with_limit(limit);
        let mut name = b"event: ".to_vec();
        name.extend_from_slice(&[0xFF; 8]);
        name.extend_from_slice(b"\ndata: x\n\n");
        let mut seen = Vec::new();
        p.feed(&name[..16], &mut |_| {});
        p.feed(&name[16..], &mut |e| seen.push(format!("{e:?}")));
        assert!(p.held() <= limit, "held {}", p.held());
        assert_eq!(
            seen,
            vec![format!("{:?}", Event::TooLarge { kind: "message" })]
        );
    }
}
