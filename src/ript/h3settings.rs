//! The WebTransport SETTINGS superset browsers need from our HTTP/3 server.
//!
//! h3 0.0.8 advertises only the draft-02 WebTransport settings (`ENABLE_WEBTRANSPORT`
//! 0x2b603742, `WEBTRANSPORT_MAX_SESSIONS` 0x2b603743) and RFC 9297 datagrams (0x33), and offers
//! no way to add others. Chromium also looks for the legacy datagram setting 0xffd277, and
//! Safari 26.4+ wants a WebTransport max-sessions setting under its later code points
//! (0xc671706a in draft-07, 0x14e9cd29 in draft-13/14) before it opens a session
//! (docs/protocol.md §8.3). [`SettingsConn`] wraps the h3-quinn connection and appends the
//! missing ones to the SETTINGS frame as it leaves on the control stream; everything else
//! passes through untouched.

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, WriteBuf};
use std::task::{ready, Context, Poll};

/// Settings added when the SETTINGS frame does not carry them already, each with value 1.
pub const EXTRA_SETTINGS: [u64; 3] = [
    // H3_DATAGRAM as Chromium's pre-RFC code point.
    0xffd277,   // WT_MAX_SESSIONS, draft-ietf-webtrans-http3-07.
    0xc671706a, // WT_MAX_SESSIONS, draft-ietf-webtrans-http3-13/14.
    0x14e9cd29,
];

const CONTROL_STREAM: u64 = 0x00;
const SETTINGS_FRAME: u64 = 0x04;

/// An h3-quinn connection (or its stream opener) whose control stream carries
/// [`EXTRA_SETTINGS`].
pub struct WithSettings<T>(T);

/// What the HTTP/3 server is built on.
pub type SettingsConn = WithSettings<h3_quinn::Connection>;

impl SettingsConn {
    pub fn new(conn: quinn::Connection) -> Self {
        WithSettings(h3_quinn::Connection::new(conn))
    }
}

impl<B: Buf> quic::Connection<B> for SettingsConn {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = WithSettings<h3_quinn::OpenStreams>;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        <h3_quinn::Connection as quic::Connection<B>>::poll_accept_recv(&mut self.0, cx)
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        <h3_quinn::Connection as quic::Connection<B>>::poll_accept_bidi(&mut self.0, cx)
    }

    fn opener(&self) -> Self::OpenStreams {
        WithSettings(<h3_quinn::Connection as quic::Connection<B>>::opener(
            &self.0,
        ))
    }
}

impl<B, T> quic::OpenStreams<B> for WithSettings<T>
where
    B: Buf,
    T: quic::OpenStreams<
        B,
        BidiStream = h3_quinn::BidiStream<B>,
        SendStream = h3_quinn::SendStream<B>,
    >,
{
    type BidiStream = h3_quinn::BidiStream<B>;
    type SendStream = SettingsSend<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        self.0.poll_open_bidi(cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        let s = ready!(self.0.poll_open_send(cx))?;
        Poll::Ready(Ok(SettingsSend::new(s)))
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        self.0.close(code, reason)
    }
}

/// A unidirectional stream whose first write is checked for the control stream's SETTINGS.
pub struct SettingsSend<B: Buf> {
    inner: h3_quinn::SendStream<B>,
    first: bool,
    /// The (rewritten) first write, going out as raw bytes.
    pending: Option<Bytes>,
}

impl<B: Buf> SettingsSend<B> {
    fn new(inner: h3_quinn::SendStream<B>) -> Self {
        SettingsSend {
            inner,
            first: true,
            pending: None,
        }
    }
}

impl<B: Buf> quic::SendStream<B> for SettingsSend<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if let Some(p) = self.pending.as_mut() {
            while p.has_remaining() {
                ready!(quic::SendStreamUnframed::<B>::poll_send(
                    &mut self.inner,
                    cx,
                    p
                ))?;
            }
            self.pending = None;
        }
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if !self.first {
            return self.inner.send_data(data);
        }
        self.first = false;
        // The first write of a uni stream is its type and, on the control stream, the SETTINGS
        // frame: a few dozen bytes, copied once per connection.
        let mut buf = data.into();
        let mut bytes = Vec::with_capacity(buf.remaining());
        while buf.has_remaining() {
            let c = buf.chunk();
            bytes.extend_from_slice(c);
            let n = c.len();
            buf.advance(n);
        }
        let out = with_extra_settings(&bytes).unwrap_or(bytes);
        self.pending = Some(Bytes::from(out));
        Ok(())
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        ready!(quic::SendStream::<B>::poll_ready(self, cx))?;
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.pending = None;
        self.inner.reset(reset_code)
    }

    fn send_id(&self) -> quic::StreamId {
        self.inner.send_id()
    }
}

/// `start` of a control stream (stream type, then a SETTINGS frame first) with every
/// [`EXTRA_SETTINGS`] entry it lacks appended; `None` when `start` is not that.
pub fn with_extra_settings(start: &[u8]) -> Option<Vec<u8>> {
    let mut r = start;
    if get_varint(&mut r)? != CONTROL_STREAM || get_varint(&mut r)? != SETTINGS_FRAME {
        return None;
    }
    let len = usize::try_from(get_varint(&mut r)?).ok()?;
    if r.len() < len {
        return None;
    }
    let (mut payload, rest) = r.split_at(len);
    let mut ids = Vec::new();
    let mut pairs = Vec::with_capacity(len + 16);
    while !payload.is_empty() {
        let id = get_varint(&mut payload)?;
        let value = get_varint(&mut payload)?;
        ids.push(id);
        put_varint(&mut pairs, id);
        put_varint(&mut pairs, value);
    }
    for id in EXTRA_SETTINGS.iter().filter(|id| !ids.contains(id)) {
        put_varint(&mut pairs, *id);
        put_varint(&mut pairs, 1);
    }
    let mut out = Vec::with_capacity(pairs.len() + rest.len() + 10);
    put_varint(&mut out, CONTROL_STREAM);
    put_varint(&mut out, SETTINGS_FRAME);
    put_varint(&mut out, pairs.len() as u64);
    out.extend_from_slice(&pairs);
    out.extend_from_slice(rest);
    Some(out)
}

/// RFC 9000 §16 variable-length integer.
fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    if b.len() < len {
        return None;
    }
    let mut v = u64::from(first & 0x3f);
    for &x in &b[1..len] {
        v = (v << 8) | u64::from(x);
    }
    *b = &b[len..];
    Some(v)
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0x3f => out.push(v as u8),
        0x40..=0x3fff => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        0x4000..=0x3fff_ffff => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// The settings of a control stream's start, in order (for tests and diagnostics).
pub fn parse_settings(start: &[u8]) -> Option<Vec<(u64, u64)>> {
    let mut r = start;
    if get_varint(&mut r)? != CONTROL_STREAM || get_varint(&mut r)? != SETTINGS_FRAME {
        return None;
    }
    let len = usize::try_from(get_varint(&mut r)?).ok()?;
    let mut payload = r.get(..len)?;
    let mut out = Vec::new();
    while !payload.is_empty() {
        out.push((get_varint(&mut payload)?, get_varint(&mut payload)?));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(settings: &[(u64, u64)]) -> Vec<u8> {
        let mut pairs = Vec::new();
        for (id, v) in settings {
            put_varint(&mut pairs, *id);
            put_varint(&mut pairs, *v);
        }
        let mut out = vec![0x00, 0x04];
        put_varint(&mut out, pairs.len() as u64);
        out.extend_from_slice(&pairs);
        out
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for v in [
            0,
            63,
            64,
            16383,
            16384,
            0x3fff_ffff,
            0x4000_0000,
            (1 << 62) - 1,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut r = &b[..];
            assert_eq!(get_varint(&mut r), Some(v));
            assert!(r.is_empty());
        }
        // RFC 9000 §A.1 examples.
        let mut r: &[u8] = &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c];
        assert_eq!(get_varint(&mut r), Some(151_288_809_941_952_652));
        let mut r: &[u8] = &[0x7b, 0xbd];
        assert_eq!(get_varint(&mut r), Some(15_293));
        let mut r: &[u8] = &[0x9d, 0x7f, 0x3e];
        assert_eq!(get_varint(&mut r), None, "truncated");
    }

    #[test]
    fn missing_webtransport_settings_are_appended_once() {
        // What h3 0.0.8 sends with WebTransport enabled.
        let h3 = [
            (0x6, 1 << 20),
            (0x8, 1),
            (0x2b603742, 1),
            (0x33, 1),
            (0x2b603743, 1),
        ];
        let out = with_extra_settings(&control(&h3)).unwrap();
        let got = parse_settings(&out).unwrap();
        assert_eq!(&got[..5], &h3[..]);
        assert_eq!(
            &got[5..],
            &[(0xffd277, 1), (0xc671706a, 1), (0x14e9cd29, 1)]
        );
        // Already present: not repeated (a duplicate setting is a connection error).
        let again = with_extra_settings(&out).unwrap();
        assert_eq!(parse_settings(&again).unwrap(), got);
        // Bytes after the frame survive.
        let mut more = control(&h3);
        more.extend_from_slice(b"\x01\x02");
        assert!(with_extra_settings(&more).unwrap().ends_with(b"\x01\x02"));
    }

    #[test]
    fn other_streams_and_garbage_are_left_alone() {
        assert_eq!(with_extra_settings(&[0x02]), None, "QPACK encoder stream");
        assert_eq!(with_extra_settings(&[0x03]), None, "QPACK decoder stream");
        assert_eq!(
            with_extra_settings(&[0x00, 0x07, 0x00]),
            None,
            "not SETTINGS"
        );
        assert_eq!(
            with_extra_settings(&[0x00, 0x04, 0x05, 0x01]),
            None,
            "short frame"
        );
        assert_eq!(with_extra_settings(&[]), None);
    }
}
