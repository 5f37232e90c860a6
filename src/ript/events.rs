//! The `{call}/events` body codec: an endless JSON array of [`Event`] objects.
//!
//! RIPT-00 streams events as `[` followed by objects and, when the call ends, `]`. Whether
//! commas separate the objects is unsaid, so the decoder accepts either; the encoder always
//! emits them (so a finished stream is valid JSON) and ends each object with `\n` so that
//! `curl` shows one event per line.
//!
//! The decoder is incremental (HTTP/3 DATA frames split objects anywhere), bounded (an object
//! larger than [`MAX_EVENT_BYTES`] is an error, not a reason to buffer forever) and resilient:
//! a malformed object or stray bytes produce one error and decoding resumes at the next
//! top-level object, so one bad event does not kill the call's signalling.

use bytes::Bytes;

use super::model::Event;

/// Largest accepted event object, in bytes. Real events are a few hundred bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// What went wrong with one element of an events stream. None of these end the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventStreamError {
    #[error("events stream does not start with '[' (found {found:?}); reading objects anyway")]
    NotAnArray { found: char },
    #[error("unexpected {found:?} between events (expected an object, ',' or ']'); skipped")]
    Garbage { found: char },
    #[error("event object exceeds {limit} bytes; skipped")]
    Oversized { limit: usize },
    #[error("malformed event object: {0}")]
    Malformed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening `[`.
    Start,
    /// Between elements: whitespace, `,`, `{` or `]` expected.
    Between,
    /// Inside an object that is being buffered (it starts at `buf[0]`).
    Object,
    /// Inside an oversized object: tracked for its end but not buffered.
    Skipping,
    /// Inside stray bytes: discarded until the next `{` or `]` outside a string.
    Garbage,
    /// After the closing `]`.
    Finished,
}

/// Incremental decoder for one events stream.
#[derive(Debug)]
pub struct EventDecoder {
    buf: Vec<u8>,
    /// How far `buf` has been scanned in the current state.
    pos: usize,
    state: State,
    depth: u32,
    in_string: bool,
    escaped: bool,
    max_object: usize,
}

impl Default for EventDecoder {
    fn default() -> Self {
        EventDecoder::new()
    }
}

impl EventDecoder {
    pub fn new() -> Self {
        EventDecoder::with_limit(MAX_EVENT_BYTES)
    }

    /// A decoder with a custom per-object size limit.
    pub fn with_limit(max_object: usize) -> Self {
        EventDecoder {
            buf: Vec::new(),
            pos: 0,
            state: State::Start,
            depth: 0,
            in_string: false,
            escaped: false,
            max_object,
        }
    }

    /// Appends received bytes. Bytes after the closing `]` are ignored.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.state != State::Finished {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// True once the closing `]` has been read: the peer ended the stream cleanly.
    pub fn finished(&self) -> bool {
        self.state == State::Finished
    }

    /// True when a partial object (or skipped oversized one) is pending: if the stream ends
    /// now, that element was truncated.
    pub fn mid_object(&self) -> bool {
        matches!(self.state, State::Object | State::Skipping)
    }

    /// The next complete event or per-element error; `None` when more bytes are needed (or the
    /// stream is finished).
    pub fn next_event(&mut self) -> Option<Result<Event, EventStreamError>> {
        loop {
            match self.state {
                State::Finished => return None,
                State::Start => {
                    let c = self.skip_ws()?;
                    match c {
                        b'[' => {
                            self.consume(1);
                            self.state = State::Between;
                        }
                        // A peer that streams bare objects is understood rather than refused.
                        b'{' => {
                            self.state = State::Between;
                            return Some(Err(EventStreamError::NotAnArray { found: '{' }));
                        }
                        _ => {
                            let found = self.char_at_front();
                            self.enter_garbage();
                            return Some(Err(EventStreamError::NotAnArray { found }));
                        }
                    }
                }
                State::Between => {
                    let c = self.skip_ws_and_commas()?;
                    match c {
                        b'{' => {
                            self.state = State::Object;
                            self.pos = 0;
                            self.depth = 0;
                            self.in_string = false;
                            self.escaped = false;
                        }
                        b']' => {
                            self.state = State::Finished;
                            self.buf = Vec::new();
                            self.pos = 0;
                            return None;
                        }
                        _ => {
                            let found = self.char_at_front();
                            self.enter_garbage();
                            return Some(Err(EventStreamError::Garbage { found }));
                        }
                    }
                }
                State::Object => return self.scan_object(),
                State::Skipping => {
                    let end = self.scan_to_object_end(0);
                    match end {
                        Some(end) => {
                            self.consume(end);
                            self.state = State::Between;
                        }
                        None => {
                            self.buf.clear();
                            self.pos = 0;
                            return None;
                        }
                    }
                }
                State::Garbage => {
                    let mut i = self.pos;
                    let mut found = None;
                    while i < self.buf.len() {
                        let c = self.buf[i];
                        if self.escaped {
                            self.escaped = false;
                        } else if self.in_string {
                            match c {
                                b'\\' => self.escaped = true,
                                b'"' => self.in_string = false,
                                _ => {}
                            }
                        } else if c == b'"' {
                            self.in_string = true;
                        } else if c == b'{' || c == b']' {
                            found = Some(i);
                            break;
                        }
                        i += 1;
                    }
                    match found {
                        Some(i) => {
                            self.consume(i);
                            self.state = State::Between;
                        }
                        None => {
                            // Stray bytes are not kept: memory stays bounded however long
                            // the run.
                            self.buf.clear();
                            self.pos = 0;
                            return None;
                        }
                    }
                }
            }
        }
    }

    fn enter_garbage(&mut self) {
        self.state = State::Garbage;
        self.in_string = self.buf.first() == Some(&b'"');
        self.escaped = false;
        // The first byte is the offending one; it is not `{` or `]`, so skip it for good.
        self.consume(1);
    }

    fn char_at_front(&self) -> char {
        let end = self.buf.len().min(4);
        match std::str::from_utf8(&self.buf[..end]) {
            Ok(s) => s.chars().next().unwrap_or('\u{FFFD}'),
            Err(e) => std::str::from_utf8(&self.buf[..e.valid_up_to()])
                .ok()
                .and_then(|s| s.chars().next())
                .unwrap_or(char::from(self.buf[0])),
        }
    }

    /// Drops `n` bytes from the front of the buffer.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
        self.pos = 0;
    }

    fn skip_ws(&mut self) -> Option<u8> {
        self.skip_while(|c| c.is_ascii_whitespace() || c == 0xEF || c == 0xBB || c == 0xBF)
    }

    fn skip_ws_and_commas(&mut self) -> Option<u8> {
        self.skip_while(|c| c.is_ascii_whitespace() || c == b',')
    }

    /// Discards leading bytes matching `f`; returns the first other byte, if any.
    fn skip_while(&mut self, f: impl Fn(u8) -> bool) -> Option<u8> {
        let n = self.buf.iter().take_while(|c| f(**c)).count();
        self.consume(n);
        self.buf.first().copied()
    }

    /// Scans from `self.pos` for the `}` that closes the current object; returns the index just
    /// past it. Scanner state persists across calls so each byte is looked at once.
    fn scan_to_object_end(&mut self, from: usize) -> Option<usize> {
        let mut i = from.max(self.pos);
        while i < self.buf.len() {
            let c = self.buf[i];
            i += 1;
            if self.escaped {
                self.escaped = false;
            } else if self.in_string {
                match c {
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
            } else {
                match c {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth = self.depth.saturating_sub(1);
                        if self.depth == 0 {
                            self.pos = i;
                            return Some(i);
                        }
                    }
                    _ => {}
                }
            }
        }
        self.pos = i;
        None
    }

    fn scan_object(&mut self) -> Option<Result<Event, EventStreamError>> {
        match self.scan_to_object_end(0) {
            Some(end) if end <= self.max_object => {
                let result = serde_json::from_slice::<Event>(&self.buf[..end])
                    .map_err(|e| EventStreamError::Malformed(e.to_string()));
                self.consume(end);
                self.state = State::Between;
                Some(result)
            }
            Some(end) => {
                self.consume(end);
                self.state = State::Between;
                Some(Err(EventStreamError::Oversized {
                    limit: self.max_object,
                }))
            }
            None if self.buf.len() > self.max_object => {
                // Keep tracking nesting so decoding resumes right after this object, but stop
                // buffering it.
                self.buf.clear();
                self.pos = 0;
                self.state = State::Skipping;
                Some(Err(EventStreamError::Oversized {
                    limit: self.max_object,
                }))
            }
            None => None,
        }
    }
}

/// Writes one events stream: `open()`, then `encode()` per event, then `close()`.
#[derive(Debug, Default)]
pub struct EventEncoder {
    written: u64,
}

impl EventEncoder {
    pub fn new() -> Self {
        EventEncoder::default()
    }

    /// The bytes that start a stream; send them right after the response/request headers.
    pub fn open() -> Bytes {
        Bytes::from_static(b"[")
    }

    /// One event as stream bytes: `,` before every object but the first, `\n` after each.
    pub fn encode(&mut self, ev: &Event) -> Bytes {
        let mut out = Vec::with_capacity(192);
        if self.written > 0 {
            out.push(b',');
        }
        // Event has only string/number/bool fields and string keys, for which serde_json
        // serialization cannot fail.
        serde_json::to_writer(&mut out, ev).expect("Event serialization is infallible");
        out.push(b'\n');
        self.written += 1;
        Bytes::from(out)
    }

    /// The bytes that end a stream (after the call's final event).
    pub fn close() -> Bytes {
        Bytes::from_static(b"]")
    }

    /// Events written so far.
    pub fn count(&self) -> u64 {
        self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ript::model::{EventName, Reason};

    fn drain(d: &mut EventDecoder) -> Vec<Result<Event, EventStreamError>> {
        std::iter::from_fn(|| d.next_event()).collect()
    }

    fn sample_stream() -> (Vec<u8>, Vec<Event>) {
        let events = vec![
            Event::proceeding(false).with_seq(0),
            Event::failed(486, "Busy {here} \"quoted\" \\ [x]").with_seq(1),
            Event::end(Some(&Reason::q850(16))).with_seq(2),
        ];
        let mut enc = EventEncoder::new();
        let mut bytes = EventEncoder::open().to_vec();
        for e in &events {
            bytes.extend_from_slice(&enc.encode(e));
        }
        bytes.extend_from_slice(&EventEncoder::close());
        (bytes, events)
    }

    #[test]
    fn encoder_output_is_valid_json() {
        let (bytes, events) = sample_stream();
        let parsed: Vec<Event> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed, events);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("[{\"name\":\"proceeding\""), "{text}");
        assert_eq!(text.matches(",{").count(), 2);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let (bytes, events) = sample_stream();
        for split in 0..=bytes.len() {
            let mut d = EventDecoder::new();
            let mut got = Vec::new();
            d.push(&bytes[..split]);
            got.extend(drain(&mut d));
            d.push(&bytes[split..]);
            got.extend(drain(&mut d));
            let got: Vec<Event> = got.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(got, events, "split at {split}");
            assert!(d.finished());
        }
        // And one byte at a time.
        let mut d = EventDecoder::new();
        let mut got = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            got.extend(drain(&mut d).into_iter().map(|r| r.unwrap()));
        }
        assert_eq!(got, events);
        assert!(d.finished());
    }

    #[test]
    fn objects_without_commas_and_whitespace_everywhere() {
        let mut d = EventDecoder::new();
        d.push(b" \r\n[ {\"name\":\"ping\",\"nonce\":\"a\"}\n\n{ \"name\" : \"pong\" } ,\t]");
        let got: Vec<EventName> = drain(&mut d).into_iter().map(|r| r.unwrap().name).collect();
        assert_eq!(got, [EventName::Ping, EventName::Pong]);
        assert!(d.finished());
        d.push(b"{\"name\":\"end\"}");
        assert!(d.next_event().is_none());
    }

    #[test]
    fn garbage_and_malformed_objects_are_skipped() {
        let mut d = EventDecoder::new();
        d.push(b"[{\"name\":\"alerting\"}, oops \"str{\" 12, {\"name\": }, {\"code\":1}, {\"name\":\"answered\"}]");
        let got = drain(&mut d);
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0].as_ref().unwrap().name, EventName::Alerting);
        assert_eq!(got[1], Err(EventStreamError::Garbage { found: 'o' }));
        assert!(matches!(got[2], Err(EventStreamError::Malformed(_))));
        assert!(
            matches!(&got[3], Err(EventStreamError::Malformed(m)) if m.contains("no `name`")),
            "{:?}",
            got[3]
        );
        assert_eq!(got[4].as_ref().unwrap().name, EventName::Answered);
        assert!(d.finished());
    }

    #[test]
    fn oversized_object_errors_and_decoding_resumes() {
        let mut d = EventDecoder::with_limit(64);
        d.push(b"[{\"name\":\"ping\",\"nonce\":\"");
        d.push(&[b'x'; 100]);
        assert_eq!(
            d.next_event(),
            Some(Err(EventStreamError::Oversized { limit: 64 }))
        );
        // The rest of the big object is discarded as it arrives, never buffered.
        for _ in 0..100 {
            d.push(&[b'y'; 1000]);
            assert!(d.next_event().is_none());
            assert!(d.buf.len() <= 64);
        }
        d.push(b"\"}, {\"name\":\"pong\"}]");
        assert_eq!(d.next_event().unwrap().unwrap().name, EventName::Pong);
        assert!(d.next_event().is_none());
        assert!(d.finished());
    }

    #[test]
    fn complete_oversized_object_in_one_chunk() {
        let mut d = EventDecoder::with_limit(32);
        let big = format!(
            "[{{\"name\":\"ping\",\"nonce\":\"{}\"}},{{\"name\":\"pong\"}}",
            "z".repeat(40)
        );
        d.push(big.as_bytes());
        assert_eq!(
            d.next_event(),
            Some(Err(EventStreamError::Oversized { limit: 32 }))
        );
        assert_eq!(d.next_event().unwrap().unwrap().name, EventName::Pong);
        assert!(!d.finished());
    }

    #[test]
    fn missing_open_bracket() {
        let mut d = EventDecoder::new();
        d.push(b"{\"name\":\"ping\"}");
        assert_eq!(
            d.next_event(),
            Some(Err(EventStreamError::NotAnArray { found: '{' }))
        );
        assert_eq!(d.next_event().unwrap().unwrap().name, EventName::Ping);
        let mut d = EventDecoder::new();
        d.push("é[{\"name\":\"ping\"}]".as_bytes());
        assert_eq!(
            d.next_event(),
            Some(Err(EventStreamError::NotAnArray { found: 'é' }))
        );
    }

    #[test]
    fn mid_object_reports_truncation() {
        let mut d = EventDecoder::new();
        d.push(b"[{\"name\":\"pi");
        assert!(d.next_event().is_none());
        assert!(d.mid_object());
        d.push(b"ng\"}");
        assert!(d.next_event().unwrap().is_ok());
        assert!(!d.mid_object());
    }
}
