//! Small pieces shared by the HTTP/3 server and client drivers: paths, problem bodies, bearer
//! tokens, bounded body reading and the call-state reading of events.

use super::model::{CallState, EventName};
use super::Problem;
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

/// Every API resource lives under this path.
pub const RIPT_PREFIX: &str = "/.well-known/ript/v1/";

/// Largest request or response body read into memory (JSON documents, not event streams).
pub const MAX_BODY: usize = 64 * 1024;

/// Media type of RFC 9457 problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Renders an RFC 9457 problem document.
pub fn problem_body(p: &Problem) -> Bytes {
    let v = serde_json::json!({
        "type": "about:blank",
        "title": p.title,
        "status": p.status,
        "detail": p.detail,
    });
    Bytes::from(v.to_string())
}

/// A short human reason from an error response body: the problem's `title: detail` when it is a
/// problem document, else the (truncated) text, else the status alone.
pub fn reason_from_body(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct P {
        title: Option<String>,
        detail: Option<String>,
    }
    if let Ok(p) = serde_json::from_slice::<P>(body) {
        match (p.title, p.detail) {
            (Some(t), Some(d)) if !d.is_empty() => return format!("{t}: {d}"),
            (Some(t), _) => return t,
            (None, Some(d)) => return d,
            (None, None) => {}
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        text.chars().take(200).collect()
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme is case-insensitive, RFC 6750).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Seconds since the Unix epoch; 0 if the clock is before it (tokens will then look expired).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `s` can be used verbatim as one path segment of a URI we build.
pub fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+'))
        && s != "."
        && s != ".."
}

/// The call state an event announces, if it is a state event.
pub fn state_of(name: &EventName) -> Option<CallState> {
    match name {
        EventName::Proceeding => Some(CallState::Proceeding),
        EventName::Alerting => Some(CallState::Alerting),
        EventName::Answered => Some(CallState::Answered),
        EventName::End | EventName::Declined | EventName::Failed | EventName::Noanswer => {
            Some(CallState::Ended)
        }
        _ => None,
    }
}

/// Appends `buf` to `dst` unless that would exceed `limit` bytes; `false` when it would.
pub fn append_limited(dst: &mut BytesMut, mut buf: impl Buf, limit: usize) -> bool {
    if dst.len() + buf.remaining() > limit {
        return false;
    }
    while buf.has_remaining() {
        let c = buf.chunk();
        let n = c.len();
        dst.extend_from_slice(c);
        buf.advance(n);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn problem_round_trips_to_a_reason() {
        let p = Problem::new(404, "Not Found", "no such trunk group");
        let b = problem_body(&p);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["status"], 404);
        assert_eq!(reason_from_body(404, &b), "Not Found: no such trunk group");
        assert_eq!(reason_from_body(500, b""), "HTTP 500");
        assert_eq!(reason_from_body(500, b"oops"), "oops");
    }

    #[test]
    fn segments() {
        assert!(is_segment("c-12_a.b"));
        assert!(!is_segment(""));
        assert!(!is_segment(".."));
        assert!(!is_segment("a/b"));
        assert!(!is_segment("a b"));
    }

    #[test]
    fn append_limited_refuses_overflow() {
        let mut d = BytesMut::new();
        assert!(append_limited(&mut d, &b"abc"[..], 4));
        assert!(!append_limited(&mut d, &b"de"[..], 4));
        assert_eq!(&d[..], b"abc");
    }
}
