//! JSON model of the RIPT-style API (docs/protocol.md is the normative description).
//!
//! Capability objects follow draft-jennings-rtcweb-api-00 §4.3: an [`Advertisement`] lists what a
//! handler can receive and send ([`CodecAd`]); the server answers with a [`Proposal`] of one
//! [`StreamProp`] per direction saying exactly what each side sends.

use serde::{Deserialize, Serialize};

/// `GET /.well-known/ript/v1/providertgs`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TgList {
    pub tgs: Vec<TgRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TgRef {
    pub uri: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// `GET {TG}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TgDescription {
    pub uri: String,
    pub outbound: TgOutbound,
    #[serde(rename = "retry-backoff", default = "default_retry_backoff")]
    pub retry_backoff: u64,
    #[serde(rename = "media-timeout", default = "default_media_timeout")]
    pub media_timeout: u64,
}

fn default_retry_backoff() -> u64 {
    2000
}
fn default_media_timeout() -> u64 {
    5000
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TgOutbound {
    /// `*` or comma-separated prefix patterns such as `+1*`.
    pub destinations: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origins: Option<String>,
}

/// `POST {TG}/handlers` body and response (the response adds `uri`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handler {
    #[serde(rename = "handler-id")]
    pub handler_id: String,
    pub advertisement: Advertisement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// What a handler can receive and send. Accepts the JSON object form, and on input also the
/// RIPT-00 text form (`"1 in: opus; PCMU;\n2 out: opus; PCMU;"`).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Advertisement {
    pub codecs: Vec<CodecAd>,
}

/// One codec a handler supports, in preference order within the advertisement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodecAd {
    /// `audio/PCMU`, `audio/PCMA`, `audio/G722`, `audio/opus`, `audio/telephone-event`, `audio/CN`.
    pub media_type: String,
    /// RTP clock rate in Hz.
    pub clock_rate: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    /// Longest packet time, in ms, the handler accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_packet_time: Option<u32>,
    /// Preferred packet time in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_time: Option<u32>,
    /// RTP payload type the handler uses for this codec on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_type: Option<u8>,
    /// Format parameters, as in SDP `a=fmtp` (e.g. `0-16` for telephone-event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<String>,
}

/// What each side sends: the server's answer to an advertisement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Proposal {
    pub streams: Vec<StreamProp>,
}

/// One media stream in one direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamProp {
    /// Who sends this stream: `c2s` (client → server) or `s2c`.
    pub direction: Direction,
    pub media_type: String,
    pub clock_rate: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    /// Packet time in ms.
    pub p_time: u32,
    pub payload_type: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    C2s,
    S2c,
}

/// `POST {TG}/calls` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CallRequest {
    /// URI of a handler registered with `POST {TG}/handlers`. Optional when `advertisement` is inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// E.164 number (`+12155551213`), or a user part / `user@domain`.
    pub destination: String,
    /// Calling party as the caller's side asserts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// STIR PASSporT (compact JWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passport: Option<String>,
    /// The STIR verification result of the call's origin, when a gateway verified it on the way
    /// in (RFC 8224 §6.2.3 `verstat` values: `TN-Validation-Passed`, `TN-Validation-Failed`,
    /// `No-TN-Validation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verstat: Option<String>,
    /// Inline advertisement for this call (used instead of the handler's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertisement: Option<Advertisement>,
}

/// `201` answer to `POST {TG}/calls`, and `GET {call}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallDescription {
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// `inbound` for a call the server offered to handlers (a SIP caller rang a registered
    /// device, protocol.md §2.7); absent for calls the client created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<CallDirection>,
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub state: CallState,
    pub proposal: Proposal,
    /// Only in the `201` to a `POST {TG}/calls` from a browser page (a request with `Origin`):
    /// a single-use ticket, valid for 60 s, that opens `{call}/media?ticket=…` over
    /// WebTransport from that origin without a bearer token (browsers cannot set
    /// `Authorization` on a WebTransport CONNECT).
    #[serde(
        default,
        rename = "mediaTicket",
        skip_serializing_if = "Option::is_none"
    )]
    pub media_ticket: Option<String>,
}

/// Who created a call: the client (`outbound`, `POST {TG}/calls`) or the server offering it to
/// the TG's handlers (`inbound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallDirection {
    Inbound,
    Outbound,
}

/// `POST {call}` body: take a call offered to this handler (protocol.md §2.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallTake {
    /// URI of the handler taking the call (one the call was offered to).
    pub handler: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    Proceeding,
    Alerting,
    Answered,
    Ended,
}

/// One element of an events stream (`GET`/`PUT {call}/events`).
///
/// Deserialization is lenient for older RIPP peers: the event type may be in `name`, `event` or
/// `type`; RIPP names (`accepted`, `rejected`, `keepalive`, `hello`, `terminated`) map onto ours;
/// `timestamp` may be an RFC 3339 string or epoch milliseconds (normalised to the string form).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub name: EventName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// RFC 3339 UTC with milliseconds, sender's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// Per-direction sequence number from 0; receivers drop duplicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `failed`/`declined`/`noanswer`: SIP status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// `failed`: reason phrase; `end`: RFC 3326 reason-value, e.g. `Q.850;cause=16;text="Normal call clearing"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `migrate`: replacement call URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `ping`/`pong`: echoed nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// `proceeding`/`alerting`: media already flows (SIP 183 with SDP, early media).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<bool>,
    /// `hold`: the sender's media direction (`sendonly`, `recvonly`, `inactive`, `sendrecv`).
    #[serde(
        rename = "mediaDirection",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub media_direction: Option<String>,
    /// `dtmf`: the key (`0`-`9`, `*`, `#`, `A`-`D`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digit: Option<String>,
    /// `dtmf`: how long the key was held, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u32>,
    /// `incoming` (handler events stream): the calling party.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `incoming` (handler events stream): the number or user the caller dialled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

impl Event {
    pub fn new(name: EventName) -> Self {
        Event {
            name,
            direction: None,
            timestamp: None,
            call: None,
            seq: None,
            code: None,
            reason: None,
            uri: None,
            nonce: None,
            media: None,
            media_direction: None,
            digit: None,
            duration: None,
            from: None,
            destination: None,
        }
    }

    /// `dtmf`: one key press seen on the legacy side (RFC 4733 or SIP INFO).
    pub fn dtmf(digit: char, duration_ms: u32) -> Self {
        Event {
            digit: Some(digit.to_string()),
            duration: Some(duration_ms),
            ..Event::new(EventName::Dtmf)
        }
    }
}

/// Event names. Unknown names deserialize to `Other` and are ignored by the engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventName {
    Proceeding,
    Alerting,
    Answered,
    Declined,
    Failed,
    Noanswer,
    End,
    Ping,
    Pong,
    Migrate,
    MediaPanic,
    /// Media direction change (SIP re-INVITE/UPDATE hold and resume).
    Hold,
    /// A DTMF key press (`digit`, `duration`), so clients need not parse RFC 4733.
    Dtmf,
    /// Handler events stream: a call (`call`, `from`, `destination`) rings on this handler.
    Incoming,
    Other(String),
}

impl EventName {
    pub fn as_str(&self) -> &str {
        match self {
            EventName::Proceeding => "proceeding",
            EventName::Alerting => "alerting",
            EventName::Answered => "answered",
            EventName::Declined => "declined",
            EventName::Failed => "failed",
            EventName::Noanswer => "noanswer",
            EventName::End => "end",
            EventName::Ping => "ping",
            EventName::Pong => "pong",
            EventName::Migrate => "migrate",
            EventName::MediaPanic => "media-panic",
            EventName::Hold => "hold",
            EventName::Dtmf => "dtmf",
            EventName::Incoming => "incoming",
            EventName::Other(s) => s,
        }
    }

    /// Maps a wire name onto an event. Case-insensitive, and accepts the RIPP-03/ripp-04 aliases
    /// (`accepted`, `rejected`, `keepalive`, `hello`, `terminated`) so older peers interoperate.
    pub fn parse(s: &str) -> EventName {
        match s.to_ascii_lowercase().as_str() {
            "proceeding" => EventName::Proceeding,
            "alerting" => EventName::Alerting,
            "answered" | "accepted" => EventName::Answered,
            "declined" | "rejected" => EventName::Declined,
            "failed" => EventName::Failed,
            "noanswer" => EventName::Noanswer,
            "end" | "terminated" => EventName::End,
            "ping" | "keepalive" | "hello" => EventName::Ping,
            "pong" => EventName::Pong,
            "migrate" => EventName::Migrate,
            "media-panic" => EventName::MediaPanic,
            "hold" => EventName::Hold,
            "dtmf" => EventName::Dtmf,
            "incoming" => EventName::Incoming,
            _ => EventName::Other(s.to_string()),
        }
    }
}

impl Serialize for EventName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(EventName::parse(&s))
    }
}

// ---------------------------------------------------------------------------------------------
// Event deserialization (lenient) and builders
// ---------------------------------------------------------------------------------------------

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `name`, `event` and `type` are separate fields rather than serde aliases so that an
        // object carrying two of them is not rejected as a duplicate; `name` wins.
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            event: Option<String>,
            #[serde(default, rename = "type")]
            kind: Option<String>,
            #[serde(default)]
            direction: Option<Direction>,
            #[serde(default, deserialize_with = "de_timestamp")]
            timestamp: Option<String>,
            #[serde(default)]
            call: Option<String>,
            #[serde(default)]
            seq: Option<u64>,
            #[serde(default)]
            code: Option<u16>,
            #[serde(default)]
            reason: Option<String>,
            #[serde(default)]
            uri: Option<String>,
            #[serde(default)]
            nonce: Option<String>,
            #[serde(default)]
            media: Option<bool>,
            #[serde(default, rename = "mediaDirection")]
            media_direction: Option<String>,
            #[serde(default)]
            digit: Option<String>,
            #[serde(default)]
            duration: Option<u32>,
            #[serde(default)]
            from: Option<String>,
            #[serde(default)]
            destination: Option<String>,
        }
        let raw = Raw::deserialize(d)?;
        let name = raw.name.or(raw.event).or(raw.kind).ok_or_else(|| {
            serde::de::Error::custom("event has no `name` field (nor `event` or `type`)")
        })?;
        Ok(Event {
            name: EventName::parse(&name),
            direction: raw.direction,
            timestamp: raw.timestamp,
            call: raw.call,
            seq: raw.seq,
            code: raw.code,
            reason: raw.reason,
            uri: raw.uri,
            nonce: raw.nonce,
            media: raw.media,
            media_direction: raw.media_direction,
            digit: raw.digit,
            duration: raw.duration,
            from: raw.from,
            destination: raw.destination,
        })
    }
}

/// Accepts an RFC 3339 string verbatim, or epoch milliseconds (RIPP-era peers) converted to the
/// string form so the rest of the gateway sees one representation.
fn de_timestamp<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp string or epoch milliseconds")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(now_timestamp(v)))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(|ms| Some(now_timestamp(ms)))
                .map_err(|_| E::custom(format!("timestamp {v} is before 1970")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
                Ok(Some(now_timestamp(v as u64)))
            } else {
                Err(E::custom(format!(
                    "timestamp {v} is not a valid epoch-ms value"
                )))
            }
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

impl Event {
    /// `proceeding`; `media: true` when early media already flows.
    pub fn proceeding(media: bool) -> Self {
        Event {
            media: media.then_some(true),
            ..Event::new(EventName::Proceeding)
        }
    }

    /// `alerting`; `media: true` when early media (ringback/announcements) already flows.
    pub fn alerting(media: bool) -> Self {
        Event {
            media: media.then_some(true),
            ..Event::new(EventName::Alerting)
        }
    }

    pub fn answered() -> Self {
        Event::new(EventName::Answered)
    }

    /// `end`, carrying an RFC 3326 reason-value when the terminating side gave one.
    pub fn end(reason: Option<&Reason>) -> Self {
        Event {
            reason: reason.map(Reason::to_header_value),
            ..Event::new(EventName::End)
        }
    }

    /// `failed` with the SIP status and reason phrase that caused it.
    pub fn failed(code: u16, reason: impl Into<String>) -> Self {
        Event {
            code: Some(code),
            reason: Some(reason.into()),
            ..Event::new(EventName::Failed)
        }
    }

    pub fn declined(code: u16) -> Self {
        Event {
            code: Some(code),
            ..Event::new(EventName::Declined)
        }
    }

    pub fn noanswer(code: u16) -> Self {
        Event {
            code: Some(code),
            ..Event::new(EventName::Noanswer)
        }
    }

    pub fn ping(nonce: impl Into<String>) -> Self {
        Event {
            nonce: Some(nonce.into()),
            ..Event::new(EventName::Ping)
        }
    }

    /// The answer to `ping`: echoes its nonce.
    pub fn pong(nonce: Option<String>) -> Self {
        Event {
            nonce,
            ..Event::new(EventName::Pong)
        }
    }

    pub fn migrate(uri: Option<String>) -> Self {
        Event {
            uri,
            ..Event::new(EventName::Migrate)
        }
    }

    /// `hold` with the sender's new media direction (`sendonly`, `recvonly`, `inactive`, or
    /// `sendrecv` to resume).
    pub fn hold(media_direction: impl Into<String>) -> Self {
        Event {
            media_direction: Some(media_direction.into()),
            ..Event::new(EventName::Hold)
        }
    }

    /// Maps a SIP final failure (3xx-6xx) onto the event RIPT uses for it (research §4.5):
    /// busy/decline → `declined`, no answer → `noanswer`, anything else → `failed`.
    pub fn from_sip_failure(code: u16, phrase: &str) -> Self {
        match code {
            486 | 600 | 603 => Event::declined(code),
            408 | 480 => Event::noanswer(code),
            _ => Event::failed(code, phrase),
        }
    }

    /// The SIP final status to send for a `declined`/`noanswer`/`failed` event (the carried code
    /// when it is a failure status, else the §4.5 default); `None` for other events.
    pub fn sip_failure_status(&self) -> Option<u16> {
        let carried = self.code.filter(|c| (300..700).contains(c));
        match self.name {
            EventName::Declined => Some(carried.unwrap_or_else(|| {
                let says_decline = self
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.to_ascii_lowercase().contains("decline"));
                if says_decline {
                    603
                } else {
                    486
                }
            })),
            EventName::Noanswer => Some(carried.unwrap_or(480)),
            EventName::Failed => Some(carried.unwrap_or(500)),
            _ => None,
        }
    }

    /// The parsed `reason` of an `end` event (first reason-value, if it is well formed).
    pub fn end_reason(&self) -> Option<Reason> {
        self.reason.as_deref().and_then(parse_reason)
    }

    pub fn with_seq(mut self, seq: u64) -> Self {
        self.seq = Some(seq);
        self
    }

    pub fn with_call(mut self, call: impl Into<String>) -> Self {
        self.call = Some(call.into());
        self
    }

    pub fn with_direction(mut self, direction: Direction) -> Self {
        self.direction = Some(direction);
        self
    }

    /// Stamps the event with the sender's wall clock (`unix_ms` since the epoch).
    pub fn with_timestamp(mut self, unix_ms: u64) -> Self {
        self.timestamp = Some(now_timestamp(unix_ms));
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------------------------

/// RFC 3339 UTC with milliseconds (`2024-03-01T12:00:00.250Z`) for `unix_ms` since the epoch.
/// Hand-written (Hinnant's civil-from-days) to avoid a date-time dependency for one format.
pub fn now_timestamp(unix_ms: u64) -> String {
    let days = unix_ms / 86_400_000;
    let ms_of_day = unix_ms % 86_400_000;
    let (y, m, d) = civil_from_days(days as i64);
    let (h, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{ms:03}Z")
}

/// Inverse of [`now_timestamp`] for the UTC forms we and most peers emit
/// (`YYYY-MM-DDTHH:MM:SS[.fff…]Z`); `None` for anything else, including offsets other than `Z`.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let rest = s.get(19..)?;
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return None;
            }
            (&r[..n], &r[n..])
        }
        None => ("", rest),
    };
    if !zone.eq_ignore_ascii_case("z") {
        return None;
    }
    let ms = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u64, |acc, c| acc * 10 + u64::from(c - b'0'));
    let days = days_from_civil(y as i64, mo as u32, d as u32);
    let days = u64::try_from(days).ok()?;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// Reason header values and the Q.850 ⇄ SIP status tables
// ---------------------------------------------------------------------------------------------

/// One RFC 3326 reason-value: `Q.850;cause=16;text="Normal call clearing"` or
/// `SIP;cause=487;text="Request Terminated"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// `Q.850`, `SIP`, or another registered protocol token as received.
    pub protocol: String,
    pub cause: u16,
    pub text: Option<String>,
}

impl Reason {
    /// A Q.850 reason with the cause's standard description as text.
    pub fn q850(cause: u8) -> Reason {
        Reason {
            protocol: "Q.850".into(),
            cause: u16::from(cause),
            text: q850_text(cause).map(str::to_string),
        }
    }

    pub fn sip(code: u16, text: Option<String>) -> Reason {
        Reason {
            protocol: "SIP".into(),
            cause: code,
            text,
        }
    }

    pub fn is_q850(&self) -> bool {
        self.protocol.eq_ignore_ascii_case("Q.850")
    }

    /// The Q.850 cause this reason stands for: itself, or the RFC 3398 mapping of a SIP status.
    pub fn q850_cause(&self) -> Option<u8> {
        if self.is_q850() {
            u8::try_from(self.cause).ok().filter(|c| *c <= 127)
        } else if self.protocol.eq_ignore_ascii_case("SIP") {
            Some(sip_status_to_q850(self.cause))
        } else {
            None
        }
    }

    /// The value for a SIP `Reason` header (and for the `reason` of an `end` event).
    pub fn to_header_value(&self) -> String {
        let mut out = format!("{};cause={}", self.protocol, self.cause);
        if let Some(text) = &self.text {
            out.push_str(";text=\"");
            for c in text.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        out
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_header_value())
    }
}

/// Splits `s` at `sep` outside double-quoted strings (which may contain `\"`).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut in_q, mut esc) = (0, false, false);
    for (i, c) in s.char_indices() {
        if esc {
            esc = false;
        } else if in_q && c == '\\' {
            esc = true;
        } else if c == '"' {
            in_q = !in_q;
        } else if c == sep && !in_q {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Parses one reason-value (`protocol;cause=N[;text="…"]`, unknown parameters ignored). Takes the
/// first value when given a whole comma-separated header; see [`parse_reasons`] for all of them.
pub fn parse_reason(s: &str) -> Option<Reason> {
    parse_reasons(s).into_iter().next()
}

/// Every well-formed reason-value of a `Reason` header (RFC 3326 allows one per protocol).
pub fn parse_reasons(s: &str) -> Vec<Reason> {
    split_unquoted(s, ',')
        .into_iter()
        .filter_map(parse_one_reason)
        .collect()
}

fn parse_one_reason(s: &str) -> Option<Reason> {
    let mut parts = split_unquoted(s, ';').into_iter();
    let protocol = parts.next()?.trim();
    if protocol.is_empty() || protocol.contains(char::is_whitespace) {
        return None;
    }
    let protocol = if protocol.eq_ignore_ascii_case("q.850") {
        "Q.850".to_string()
    } else if protocol.eq_ignore_ascii_case("sip") {
        "SIP".to_string()
    } else {
        protocol.to_string()
    };
    let (mut cause, mut text) = (None, None);
    for p in parts {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => continue,
        };
        if k.eq_ignore_ascii_case("cause") {
            cause = Some(v.parse::<u16>().ok()?);
        } else if k.eq_ignore_ascii_case("text") {
            text = Some(unquote(v));
        }
    }
    Some(Reason {
        protocol,
        cause: cause?,
        text,
    })
}

fn unquote(v: &str) -> String {
    let inner = match v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(i) => i,
        None => return v.to_string(),
    };
    let mut out = String::with_capacity(inner.len());
    let mut esc = false;
    for c in inner.chars() {
        if esc {
            out.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// SIP final status → Q.850 cause (RFC 3398 §8.2.6.1; 2xx = normal clearing). Statuses the table
/// does not list map by class: 4xx/6xx → 31 (normal, unspecified), 5xx → 41 (temporary failure).
pub fn sip_status_to_q850(status: u16) -> u8 {
    match status {
        200..=299 => 16,
        400 => 41,
        401 | 402 | 403 | 407 => 21,
        404 | 485 | 604 => 1,
        405 => 63,
        406 | 415 | 501 => 79,
        408 | 504 => 102,
        410 => 22,
        413 | 414 | 416 | 420 | 421 | 423 | 488 | 505 | 513 => 127,
        480 => 18,
        481 | 500 | 503 => 41,
        482 | 483 => 25,
        484 => 28,
        486 | 600 => 17,
        487 => 31,
        502 => 38,
        603 => 21,
        606 => 58,
        500..=599 => 41,
        _ => 31,
    }
}

/// Q.850 cause → SIP final status (RFC 3398 §7.2.4.1, RFC 4497 §8.4.1). Unlisted causes map by
/// class: normal events (0-31) → 480, resource/service unavailable (32-63) → 503, not
/// implemented (64-79) → 501, invalid message/protocol/interworking (80-127) → 500.
pub fn q850_to_sip_status(cause: u8) -> u16 {
    match cause {
        1..=3 | 26 => 404,
        16 | 18..=20 | 31 => 480,
        17 => 486,
        21 | 55 | 57 | 87 => 403,
        22 | 23 => 410,
        25 => 483,
        27 => 502,
        28 => 484,
        29 | 79 => 501,
        34 | 38 | 41 | 42 | 47 | 58 | 88 => 503,
        65 | 70 => 488,
        102 => 504,
        111 | 127 => 500,
        0..=31 => 480,
        32..=63 => 503,
        64..=79 => 501,
        _ => 500,
    }
}

/// ITU-T Q.850 Table 1 descriptions for the causes a telephony gateway meets in practice.
pub fn q850_text(cause: u8) -> Option<&'static str> {
    Some(match cause {
        1 => "Unallocated (unassigned) number",
        2 => "No route to specified transit network",
        3 => "No route to destination",
        16 => "Normal call clearing",
        17 => "User busy",
        18 => "No user responding",
        19 => "No answer from user (user alerted)",
        20 => "Subscriber absent",
        21 => "Call rejected",
        22 => "Number changed",
        26 => "Non-selected user clearing",
        27 => "Destination out of order",
        28 => "Invalid number format",
        29 => "Facility rejected",
        31 => "Normal, unspecified",
        34 => "No circuit/channel available",
        38 => "Network out of order",
        41 => "Temporary failure",
        42 => "Switching equipment congestion",
        47 => "Resource unavailable, unspecified",
        58 => "Bearer capability not presently available",
        63 => "Service or option not available, unspecified",
        65 => "Bearer capability not implemented",
        79 => "Service or option not implemented, unspecified",
        88 => "Incompatible destination",
        102 => "Recovery on timer expiry",
        111 => "Protocol error, unspecified",
        127 => "Interworking, unspecified",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// problem+json
// ---------------------------------------------------------------------------------------------

/// Media type of [`ProblemBody`] responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// RFC 9457 problem details, the body of every 4xx/5xx API response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemBody {
    /// A URI naming the problem type; `about:blank` means "see the HTTP status".
    #[serde(rename = "type", default = "about_blank")]
    pub type_: String,
    #[serde(default)]
    pub title: String,
    /// The HTTP status; 0 when a peer omitted it (use the response status then).
    #[serde(default)]
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

fn about_blank() -> String {
    "about:blank".to_string()
}

impl ProblemBody {
    pub fn new(status: u16, title: impl Into<String>, detail: impl Into<String>) -> Self {
        let detail: String = detail.into();
        ProblemBody {
            type_: about_blank(),
            title: title.into(),
            status,
            detail: (!detail.is_empty()).then_some(detail),
            instance: None,
        }
    }
}

impl From<&super::Problem> for ProblemBody {
    fn from(p: &super::Problem) -> Self {
        ProblemBody::new(p.status, p.title.clone(), p.detail.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Codecs and the advertisement text form
// ---------------------------------------------------------------------------------------------

/// A codec riptide knows by name: canonical spelling, RTP clock, channels, default payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownCodec {
    pub name: &'static str,
    pub clock_rate: u32,
    pub channels: Option<u8>,
    /// Static RFC 3551 payload type, or the dynamic one riptide uses when none was given.
    pub payload_type: u8,
}

const KNOWN_CODECS: &[KnownCodec] = &[
    KnownCodec {
        name: "PCMU",
        clock_rate: 8000,
        channels: None,
        payload_type: 0,
    },
    KnownCodec {
        name: "PCMA",
        clock_rate: 8000,
        channels: None,
        payload_type: 8,
    },
    // G.722 samples at 16 kHz but its RTP clock is 8000 (RFC 3551 §4.5.2).
    KnownCodec {
        name: "G722",
        clock_rate: 8000,
        channels: None,
        payload_type: 9,
    },
    KnownCodec {
        name: "G729",
        clock_rate: 8000,
        channels: None,
        payload_type: 18,
    },
    // RFC 7587: opus is always signalled as 48000/2 whatever the actual rate and channels.
    KnownCodec {
        name: "opus",
        clock_rate: 48000,
        channels: Some(2),
        payload_type: 111,
    },
    KnownCodec {
        name: "telephone-event",
        clock_rate: 8000,
        channels: None,
        payload_type: 101,
    },
    KnownCodec {
        name: "CN",
        clock_rate: 8000,
        channels: None,
        payload_type: 13,
    },
];

/// Video codecs that may appear in RIPT-00 example advertisements; riptide carries audio only,
/// so the text parser skips them instead of inventing `audio/H264`.
const VIDEO_CODECS: &[&str] = &["H264", "H265", "VP8", "VP9", "AV1", "H263", "H261"];

/// Looks a codec up by name, case-insensitively.
pub fn known_codec(name: &str) -> Option<&'static KnownCodec> {
    KNOWN_CODECS
        .iter()
        .find(|k| k.name.eq_ignore_ascii_case(name))
}

/// `telephone-event` and `CN` ride along with a voice codec but cannot carry a call alone.
pub fn is_auxiliary_codec(name: &str) -> bool {
    name.eq_ignore_ascii_case("telephone-event") || name.eq_ignore_ascii_case("CN")
}

impl CodecAd {
    /// The codec with riptide's defaults (clock, channels, payload type); unknown names get
    /// clock 8000 and no payload type.
    pub fn named(name: &str) -> CodecAd {
        match known_codec(name) {
            Some(k) => CodecAd {
                media_type: format!("audio/{}", k.name),
                clock_rate: k.clock_rate,
                channels: k.channels,
                max_packet_time: None,
                packet_time: None,
                payload_type: Some(k.payload_type),
                parameters: None,
            },
            None => CodecAd {
                media_type: format!("audio/{name}"),
                clock_rate: 8000,
                channels: None,
                max_packet_time: None,
                packet_time: None,
                payload_type: None,
                parameters: None,
            },
        }
    }

    /// The subtype part of `media_type` (`PCMU` for `audio/PCMU`).
    pub fn codec_name(&self) -> &str {
        self.media_type
            .split_once('/')
            .map_or(self.media_type.as_str(), |(_, n)| n)
    }

    /// Same codec: equal name (case-insensitive) and clock rate.
    pub fn same_codec(&self, name: &str, clock_rate: u32) -> bool {
        self.codec_name().eq_ignore_ascii_case(name) && self.clock_rate == clock_rate
    }

    pub fn is_auxiliary(&self) -> bool {
        is_auxiliary_codec(self.codec_name())
    }
}

/// Why an advertisement in RIPT-00 text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertisementError {
    #[error("advertisement text has no entries")]
    Empty,
    #[error("advertisement text at byte {offset}: {what}")]
    Syntax { offset: usize, what: String },
    #[error("advertisement entry {id} lists no codecs")]
    EmptyEntry { id: u8 },
    #[error("advertisement lists no audio codec")]
    NoAudio,
    #[error(
        "advertisement has no audio codec in both its `in` and `out` entries \
         (riptide sends and receives the same codec)"
    )]
    NoSymmetricCodec,
}

/// A codec name and its `(name, value)` parameters, borrowed from the advertisement text.
type CodecDesc<'a> = (&'a str, Vec<(&'a str, &'a str)>);

struct TextParser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> TextParser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    fn err(&self, what: impl Into<String>) -> AdvertisementError {
        AdvertisementError::Syntax {
            offset: self.pos,
            what: what.into(),
        }
    }

    fn word(&mut self) -> &'a str {
        self.take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    }

    /// `codec-name *("," pname ["=" ["-"] digits]) [";"]`; returns the name and parameters.
    fn codec_desc(&mut self) -> Result<CodecDesc<'a>, AdvertisementError> {
        let name = self.word();
        let mut params = Vec::new();
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.peek() != Some(b',') {
                self.pos = save;
                break;
            }
            self.pos += 1;
            self.skip_ws();
            if !self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                return Err(self.err(format!("expected a parameter name after ',' in {name}")));
            }
            let pname = self.word();
            let save = self.pos;
            self.skip_ws();
            let value = if self.peek() == Some(b'=') {
                self.pos += 1;
                self.skip_ws();
                let start = self.pos;
                if self.peek() == Some(b'-') {
                    self.pos += 1;
                }
                let digits = self.take_while(|c| c.is_ascii_digit());
                if digits.is_empty() {
                    return Err(self.err(format!("parameter {pname} of {name} needs a number")));
                }
                &self.s[start..self.pos]
            } else {
                self.pos = save;
                "1"
            };
            params.push((pname, value));
        }
        let save = self.pos;
        self.skip_ws();
        if self.peek() == Some(b';') {
            self.pos += 1;
        } else {
            self.pos = save;
        }
        Ok((name, params))
    }
}

fn param_num<T: std::str::FromStr>(
    codec: &str,
    pname: &str,
    v: &str,
    offset: usize,
) -> Result<T, AdvertisementError> {
    v.parse().map_err(|_| AdvertisementError::Syntax {
        offset,
        what: format!("parameter {pname}={v} of {codec} is out of range"),
    })
}

/// Builds the CodecAd for one text codec-desc; `None` for video codecs.
fn text_codec(
    name: &str,
    params: &[(&str, &str)],
    offset: usize,
) -> Result<Option<CodecAd>, AdvertisementError> {
    if VIDEO_CODECS.iter().any(|v| v.eq_ignore_ascii_case(name)) {
        return Ok(None);
    }
    let known = known_codec(name);
    let mut ad = CodecAd::named(name);
    if known.is_none() {
        // §2.2: `sr` defaults to 48000 for codecs we cannot look up.
        ad.clock_rate = 48000;
    }
    for (p, v) in params {
        match p.to_ascii_lowercase().as_str() {
            "ptime" => ad.max_packet_time = Some(param_num(name, p, v, offset)?),
            "pt" => {
                let pt: u8 = param_num(name, p, v, offset)?;
                if pt > 127 {
                    return Err(AdvertisementError::Syntax {
                        offset,
                        what: format!("payload type {pt} of {name} is above 127"),
                    });
                }
                ad.payload_type = Some(pt);
            }
            // Known codecs have a fixed RTP clock and channel signalling (G.722 = 8000, opus =
            // 48000/2), so `sr`/`ch` only describe unknown ones.
            "sr" if known.is_none() => ad.clock_rate = param_num(name, p, v, offset)?,
            "ch" if known.is_none() => {
                let ch: u8 = param_num(name, p, v, offset)?;
                ad.channels = (ch > 1).then_some(ch);
            }
            _ => {}
        }
    }
    Ok(Some(ad))
}

fn push_unique(list: &mut Vec<CodecAd>, ad: CodecAd) {
    if !list
        .iter()
        .any(|c| c.same_codec(ad.codec_name(), ad.clock_rate))
    {
        list.push(ad);
    }
}

fn min_opt(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl Advertisement {
    /// Parses the RIPT-00 text form (`1 in: opus; PCMU;\n2 out: opus; PCMU;`) leniently:
    /// codec names are case-insensitive, the final `;` is optional, any whitespace (newlines
    /// too) separates tokens, and unknown parameters are ignored. Recognised parameters:
    /// `ptime` (→ `maxPacketTime`), `pt` (riptide extension: payload type), and `sr`/`ch` for
    /// codecs riptide does not know. Video codecs are skipped.
    ///
    /// A gateway relays RTP without transcoding, so it needs one codec both ways: codecs present
    /// in both `in` and `out` entries appear once, and when both directions are given the result
    /// is their intersection in `in` order. An advertisement with only one direction is used as is.
    pub fn parse_text(text: &str) -> Result<Advertisement, AdvertisementError> {
        let mut p = TextParser { s: text, pos: 0 };
        let (mut ins, mut outs) = (Vec::new(), Vec::new());
        let mut entries = 0;
        loop {
            p.skip_ws();
            if p.peek().is_none() {
                break;
            }
            let id_text = p.take_while(|c| c.is_ascii_digit());
            if id_text.is_empty() {
                return Err(p.err("expected an entry id (a number from 1 to 255)"));
            }
            let id: u8 = match id_text.parse() {
                Ok(id) if id >= 1 => id,
                _ => return Err(p.err(format!("entry id {id_text} is not in 1..=255"))),
            };
            p.skip_ws();
            let dir = p.take_while(|c| c.is_ascii_alphabetic());
            let inbound = if dir.eq_ignore_ascii_case("in") {
                true
            } else if dir.eq_ignore_ascii_case("out") {
                false
            } else {
                return Err(p.err(format!("expected `in` or `out` after entry id {id}")));
            };
            p.skip_ws();
            if p.peek() != Some(b':') {
                return Err(p.err(format!("expected ':' after `{id} {dir}`")));
            }
            p.pos += 1;
            let mut count = 0;
            loop {
                p.skip_ws();
                match p.peek() {
                    None => break,
                    Some(c) if c.is_ascii_digit() => break,
                    Some(b';') => p.pos += 1,
                    Some(c) if c.is_ascii_alphabetic() => {
                        let offset = p.pos;
                        let (name, params) = p.codec_desc()?;
                        count += 1;
                        if let Some(ad) = text_codec(name, &params, offset)? {
                            push_unique(if inbound { &mut ins } else { &mut outs }, ad);
                        }
                    }
                    Some(_) => {
                        let found = p.s[p.pos..].chars().next().unwrap_or('?');
                        return Err(p.err(format!("unexpected {found:?} in entry {id}")));
                    }
                }
            }
            if count == 0 {
                return Err(AdvertisementError::EmptyEntry { id });
            }
            entries += 1;
        }
        if entries == 0 {
            return Err(AdvertisementError::Empty);
        }
        let codecs = match (ins.is_empty(), outs.is_empty()) {
            (true, true) => return Err(AdvertisementError::NoAudio),
            (false, true) => ins,
            (true, false) => outs,
            (false, false) => {
                let both: Vec<CodecAd> = ins
                    .into_iter()
                    .filter_map(|mut i| {
                        let o = outs
                            .iter()
                            .find(|o| o.same_codec(i.codec_name(), i.clock_rate))?;
                        i.max_packet_time = min_opt(i.max_packet_time, o.max_packet_time);
                        Some(i)
                    })
                    .collect();
                if both.is_empty() {
                    return Err(AdvertisementError::NoSymmetricCodec);
                }
                both
            }
        };
        Ok(Advertisement { codecs })
    }

    /// The canonical RIPT-00 text form: the same codec list as entry `1 in` and `2 out`, one
    /// entry per line, each codec terminated by `;`, parameters only where they differ from the
    /// defaults. `packetTime` and `parameters` have no text equivalent and are dropped.
    pub fn to_text(&self) -> String {
        let body: Vec<String> = self.codecs.iter().map(codec_text).collect();
        let body = body.join(" ");
        format!("1 in: {body}\n2 out: {body}")
    }
}

fn codec_text(c: &CodecAd) -> String {
    let name = c.codec_name();
    let known = known_codec(name);
    let mut out = known.map_or(name, |k| k.name).to_string();
    if let Some(pt) = c.max_packet_time {
        out.push_str(&format!(",ptime={pt}"));
    }
    match known {
        Some(k) => {
            if let Some(pt) = c.payload_type.filter(|pt| *pt != k.payload_type) {
                out.push_str(&format!(",pt={pt}"));
            }
        }
        None => {
            if c.clock_rate != 48000 {
                out.push_str(&format!(",sr={}", c.clock_rate));
            }
            if let Some(ch) = c.channels.filter(|ch| *ch > 1) {
                out.push_str(&format!(",ch={ch}"));
            }
            if let Some(pt) = c.payload_type {
                out.push_str(&format!(",pt={pt}"));
            }
        }
    }
    out.push(';');
    out
}

impl std::str::FromStr for Advertisement {
    type Err = AdvertisementError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Advertisement::parse_text(s)
    }
}

impl<'de> Deserialize<'de> for Advertisement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Advertisement;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "an advertisement object {\"codecs\": [...]} or the RIPT-00 text form \
                     (\"1 in: PCMU; ...\")",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Advertisement, E> {
                Advertisement::parse_text(v).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Advertisement, A::Error> {
                #[derive(Deserialize)]
                struct Obj {
                    codecs: Vec<CodecAd>,
                }
                let o = Obj::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Advertisement { codecs: o.codecs })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(a: &Advertisement) -> Vec<String> {
        a.codecs.iter().map(|c| c.media_type.clone()).collect()
    }

    #[test]
    fn text_advertisement_from_the_draft_example() {
        let a: Advertisement =
            serde_json::from_str(r#""1 in: opus; PCMU; PCMA;\n2 out: opus; PCMU; PCMA;""#).unwrap();
        assert_eq!(names(&a), ["audio/opus", "audio/PCMU", "audio/PCMA"]);
        let opus = &a.codecs[0];
        assert_eq!(
            (opus.clock_rate, opus.channels, opus.payload_type),
            (48000, Some(2), Some(111))
        );
        assert_eq!(a.codecs[1].payload_type, Some(0));
        assert_eq!(a.codecs[2].payload_type, Some(8));
    }

    #[test]
    fn text_advertisement_is_lenient() {
        let a = Advertisement::parse_text(
            "  1 IN:pcmu,ptime=20 ; g722;Telephone-Event,foo=3, bar\r\n 2 out : PCMU; telephone-event; cn",
        )
        .unwrap();
        // G722 only in `in` → dropped by the intersection; CN only in `out` → dropped.
        assert_eq!(names(&a), ["audio/PCMU", "audio/telephone-event"]);
        assert_eq!(a.codecs[0].max_packet_time, Some(20));
        assert_eq!(a.codecs[1].payload_type, Some(101));
        assert_eq!(a.codecs[1].clock_rate, 8000);
    }

    #[test]
    fn text_advertisement_one_direction_and_duplicates() {
        let a =
            Advertisement::parse_text("1 in: PCMA; pcma; G722 3 in: H264,max-fps=30; CN").unwrap();
        assert_eq!(names(&a), ["audio/PCMA", "audio/G722", "audio/CN"]);
        assert_eq!(a.codecs[1].clock_rate, 8000);
        assert_eq!(a.codecs[2].payload_type, Some(13));
    }

    #[test]
    fn text_advertisement_errors_are_specific() {
        assert_eq!(
            Advertisement::parse_text(" \n"),
            Err(AdvertisementError::Empty)
        );
        assert!(matches!(
            Advertisement::parse_text("1 sideways: PCMU;"),
            Err(AdvertisementError::Syntax { .. })
        ));
        assert_eq!(
            Advertisement::parse_text("1 in: PCMU;\n2 out:"),
            Err(AdvertisementError::EmptyEntry { id: 2 })
        );
        assert_eq!(
            Advertisement::parse_text("1 in: PCMU;\n2 out: PCMA;"),
            Err(AdvertisementError::NoSymmetricCodec)
        );
        assert_eq!(
            Advertisement::parse_text("1 out: H264,max-width=1280;"),
            Err(AdvertisementError::NoAudio)
        );
        assert!(Advertisement::parse_text("1 in: PCMU,pt=300;").is_err());
        assert!(Advertisement::parse_text("1 in: PCMU,ptime=;").is_err());
        let err = serde_json::from_str::<Advertisement>(r#""1 in: @""#).unwrap_err();
        assert!(err.to_string().contains("unexpected '@'"), "{err}");
    }

    #[test]
    fn text_form_round_trips() {
        let mut a = Advertisement {
            codecs: vec![
                CodecAd::named("PCMU"),
                CodecAd::named("opus"),
                CodecAd::named("telephone-event"),
                CodecAd::named("iLBC"),
            ],
        };
        a.codecs[0].max_packet_time = Some(30);
        a.codecs[2].payload_type = Some(96);
        a.codecs[3].payload_type = Some(97);
        let text = a.to_text();
        assert_eq!(
            text,
            "1 in: PCMU,ptime=30; opus; telephone-event,pt=96; iLBC,sr=8000,pt=97;\n\
             2 out: PCMU,ptime=30; opus; telephone-event,pt=96; iLBC,sr=8000,pt=97;"
        );
        assert_eq!(Advertisement::parse_text(&text).unwrap(), a);
    }

    #[test]
    fn object_form_still_parses() {
        let a: Advertisement = serde_json::from_str(
            r#"{"codecs":[{"mediaType":"audio/PCMA","clockRate":8000,"payloadType":8}]}"#,
        )
        .unwrap();
        assert_eq!(a.codecs[0].codec_name(), "PCMA");
        assert!(serde_json::from_str::<Advertisement>("42").is_err());
    }

    #[test]
    fn event_aliases() {
        let e: Event = serde_json::from_str(r#"{ "name":"accepted" }"#).unwrap();
        assert_eq!(e.name, EventName::Answered);
        let e: Event = serde_json::from_str(r#"{"event":"rejected","code":603}"#).unwrap();
        assert_eq!((e.name, e.code), (EventName::Declined, Some(603)));
        let e: Event = serde_json::from_str(r#"{"type":"keepalive","nonce":"n1"}"#).unwrap();
        assert_eq!(e.name, EventName::Ping);
        let e: Event = serde_json::from_str(r#"{"type":"hello"}"#).unwrap();
        assert_eq!(e.name, EventName::Ping);
        let e: Event = serde_json::from_str(r#"{"name":"terminated","ended":true}"#).unwrap();
        assert_eq!(e.name, EventName::End);
        let e: Event = serde_json::from_str(r#"{"name":"end","type":"ignored"}"#).unwrap();
        assert_eq!(e.name, EventName::End);
        let e: Event = serde_json::from_str(r#"{"name":"transfer"}"#).unwrap();
        assert_eq!(e.name, EventName::Other("transfer".into()));
        let err = serde_json::from_str::<Event>(r#"{"code":1}"#).unwrap_err();
        assert!(err.to_string().contains("no `name`"), "{err}");
    }

    #[test]
    fn event_timestamp_epoch_ms_is_normalised() {
        let e: Event =
            serde_json::from_str(r#"{"name":"ping","timestamp":1700000000123}"#).unwrap();
        assert_eq!(e.timestamp.as_deref(), Some("2023-11-14T22:13:20.123Z"));
        let e: Event =
            serde_json::from_str(r#"{"name":"ping","timestamp":"2024-02-29T23:59:59.999Z"}"#)
                .unwrap();
        assert_eq!(e.timestamp.as_deref(), Some("2024-02-29T23:59:59.999Z"));
        assert!(serde_json::from_str::<Event>(r#"{"name":"ping","timestamp":-5}"#).is_err());
        assert!(serde_json::from_str::<Event>(r#"{"name":"ping","timestamp":[1]}"#).is_err());
    }

    #[test]
    fn event_serializes_with_name_and_round_trips() {
        let e = Event::end(Some(&Reason::q850(16)))
            .with_seq(3)
            .with_direction(Direction::C2s)
            .with_timestamp(0);
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            json.starts_with(
                r#"{"name":"end","direction":"c2s","timestamp":"1970-01-01T00:00:00.000Z""#
            ),
            "{json}"
        );
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.end_reason(), Some(Reason::q850(16)));
    }

    #[test]
    fn timestamps() {
        assert_eq!(now_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(now_timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(now_timestamp(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        for ms in [
            0,
            1,
            86_399_999,
            951_782_400_000,
            1_700_000_000_123,
            4_102_444_799_999,
        ] {
            assert_eq!(parse_timestamp(&now_timestamp(ms)), Some(ms));
        }
        assert_eq!(
            parse_timestamp("2024-01-01T00:00:00Z"),
            Some(1_704_067_200_000)
        );
        assert_eq!(
            parse_timestamp("2024-01-01T00:00:00.5Z"),
            Some(1_704_067_200_500)
        );
        assert_eq!(parse_timestamp("2024-01-01T00:00:00+01:00"), None);
        assert_eq!(parse_timestamp("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn reasons_parse_and_print() {
        let r = parse_reason(r#"Q.850 ;cause=16 ;text="Normal call clearing""#).unwrap();
        assert_eq!(r, Reason::q850(16));
        assert_eq!(
            r.to_header_value(),
            r#"Q.850;cause=16;text="Normal call clearing""#
        );
        let all =
            parse_reasons(r#"SIP;cause=200;text="Call completed, elsewhere", q.850;cause=26"#);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].text.as_deref(), Some("Call completed, elsewhere"));
        assert_eq!((all[1].protocol.as_str(), all[1].cause), ("Q.850", 26));
        let quoted = Reason::sip(480, Some(r#"say "hi" \ bye"#.into()));
        assert_eq!(parse_reason(&quoted.to_header_value()), Some(quoted));
        assert_eq!(parse_reason("Q.850;text=x"), None);
        assert_eq!(parse_reason("Q.850;cause=abc"), None);
        assert_eq!(parse_reason(""), None);
        assert_eq!(Reason::sip(486, None).q850_cause(), Some(17));
    }

    #[test]
    fn q850_sip_tables() {
        for (sip, q) in [
            (486, 17),
            (404, 1),
            (480, 18),
            (603, 21),
            (503, 41),
            (200, 16),
            (408, 102),
            (484, 28),
        ] {
            assert_eq!(sip_status_to_q850(sip), q, "SIP {sip}");
        }
        for (q, sip) in [
            (17, 486),
            (1, 404),
            (16, 480),
            (21, 403),
            (34, 503),
            (102, 504),
            (28, 484),
            (127, 500),
            (5, 480),
            (99, 500),
        ] {
            assert_eq!(q850_to_sip_status(q), sip, "cause {q}");
        }
        // Busy survives the round trip both ways.
        assert_eq!(q850_to_sip_status(sip_status_to_q850(486)), 486);
    }

    #[test]
    fn sip_failures_map_to_events_and_back() {
        assert_eq!(
            Event::from_sip_failure(486, "Busy Here").name,
            EventName::Declined
        );
        assert_eq!(
            Event::from_sip_failure(408, "Timeout").name,
            EventName::Noanswer
        );
        let f = Event::from_sip_failure(503, "Service Unavailable");
        assert_eq!((f.name.clone(), f.code), (EventName::Failed, Some(503)));
        assert_eq!(f.sip_failure_status(), Some(503));
        let mut d = Event::new(EventName::Declined);
        assert_eq!(d.sip_failure_status(), Some(486));
        d.reason = Some("Decline".into());
        assert_eq!(d.sip_failure_status(), Some(603));
        assert_eq!(Event::answered().sip_failure_status(), None);
    }

    #[test]
    fn problem_body_defaults_type() {
        let p: ProblemBody = serde_json::from_str(r#"{"title":"Not Found","status":404}"#).unwrap();
        assert_eq!(p.type_, "about:blank");
        let json = serde_json::to_value(ProblemBody::new(400, "Bad Request", "")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"about:blank","title":"Bad Request","status":400})
        );
    }
}
