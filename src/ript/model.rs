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
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub state: CallState,
    pub proposal: Proposal,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
            EventName::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> EventName {
        match s {
            "proceeding" => EventName::Proceeding,
            "alerting" => EventName::Alerting,
            "answered" => EventName::Answered,
            "declined" => EventName::Declined,
            "failed" => EventName::Failed,
            "noanswer" => EventName::Noanswer,
            "end" => EventName::End,
            "ping" => EventName::Ping,
            "pong" => EventName::Pong,
            "migrate" => EventName::Migrate,
            "media-panic" => EventName::MediaPanic,
            "hold" => EventName::Hold,
            other => EventName::Other(other.to_string()),
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

impl<'de> Deserialize<'de> for Advertisement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Obj {
            codecs: Vec<CodecAd>,
        }
        let o = Obj::deserialize(d)?;
        Ok(Advertisement { codecs: o.codecs })
    }
}
