//! A typed view of the parts of an SDP (RFC 4566/8866) a SIP ⇄ RIPT gateway acts on, and the
//! builder for the SDP riptide sends.
//!
//! Parsing goes through `rtc-sdp` for the line syntax; this module adds the RTP semantics
//! (`rtpmap`/`fmtp` attached to payload types, static RFC 3551 names, session-level fallbacks
//! for `c=` and direction). Building is done by hand because riptide emits a small, fixed shape
//! and must control every line (CRLF endings, `rtpmap` even for static payload types, rejected
//! m-lines echoed with port 0 per RFC 3264 §6).

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use rtc_sdp::description::common::ConnectionInformation;
use rtc_sdp::SessionDescription;

/// Why an SDP body could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP body is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("SDP body does not start with a v= line")]
    NoVersion,
    #[error("SDP syntax error: {0}")]
    Syntax(String),
    #[error("bad m= line {index}: {why}")]
    BadMediaLine { index: usize, why: String },
    #[error("payload type {pt:?} on m= line {index} is not a number in 0..=127")]
    PayloadTypeOutOfRange { index: usize, pt: String },
    #[error("a=rtpmap:{pt} on m= line {index} names a payload type the m= line does not list")]
    RtpmapForUnknownPt { index: usize, pt: u8 },
    #[error("malformed a=rtpmap on m= line {index}: {value:?}")]
    BadRtpmap { index: usize, value: String },
    #[error("dynamic payload type {pt} on m= line {index} has no a=rtpmap")]
    MissingRtpmap { index: usize, pt: u8 },
    #[error("bad a={name} value {value:?} on m= line {index}")]
    BadAttribute {
        index: usize,
        name: &'static str,
        value: String,
    },
    #[error("connection address {0:?} is not an IP address")]
    BadConnection(String),
}

/// Media direction attribute (RFC 3264 §5.1, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SdpDirection {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl SdpDirection {
    /// The direction an answer takes for an offer in this direction (RFC 3264 §6.1).
    pub fn reverse(self) -> SdpDirection {
        match self {
            SdpDirection::SendOnly => SdpDirection::RecvOnly,
            SdpDirection::RecvOnly => SdpDirection::SendOnly,
            other => other,
        }
    }

    /// The attribute name (`sendrecv`, ...).
    pub fn as_attr(self) -> &'static str {
        match self {
            SdpDirection::SendRecv => "sendrecv",
            SdpDirection::SendOnly => "sendonly",
            SdpDirection::RecvOnly => "recvonly",
            SdpDirection::Inactive => "inactive",
        }
    }

    pub fn from_attr(s: &str) -> Option<SdpDirection> {
        match s {
            "sendrecv" => Some(SdpDirection::SendRecv),
            "sendonly" => Some(SdpDirection::SendOnly),
            "recvonly" => Some(SdpDirection::RecvOnly),
            "inactive" => Some(SdpDirection::Inactive),
            _ => None,
        }
    }

    /// Whether the side that wrote this attribute sends media.
    pub fn sends(self) -> bool {
        matches!(self, SdpDirection::SendRecv | SdpDirection::SendOnly)
    }

    /// Whether the side that wrote this attribute receives media.
    pub fn receives(self) -> bool {
        matches!(self, SdpDirection::SendRecv | SdpDirection::RecvOnly)
    }
}

/// One RTP payload format of an m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub pt: u8,
    /// Encoding name as written (`PCMU`, `opus`, `telephone-event`).
    pub name: String,
    pub clock_rate: u32,
    /// Channel count when the rtpmap gives one (`opus/48000/2`).
    pub channels: Option<u8>,
    pub fmtp: Option<String>,
}

impl Format {
    pub fn new(pt: u8, name: impl Into<String>, clock_rate: u32) -> Format {
        Format {
            pt,
            name: name.into(),
            clock_rate,
            channels: None,
            fmtp: None,
        }
    }

    /// Same codec: encoding names compare case-insensitively (RFC 4855 §3), clocks exactly.
    pub fn same_codec(&self, other: &Format) -> bool {
        self.name.eq_ignore_ascii_case(&other.name) && self.clock_rate == other.clock_rate
    }

    /// `a=rtpmap` value: `0 PCMU/8000`, `111 opus/48000/2`.
    pub fn rtpmap(&self) -> String {
        match self.channels {
            Some(ch) => format!("{} {}/{}/{}", self.pt, self.name, self.clock_rate, ch),
            None => format!("{} {}/{}", self.pt, self.name, self.clock_rate),
        }
    }
}

/// RFC 3551 §6 static payload types: (pt, name, clock, channels).
const STATIC_PTS: &[(u8, &str, u32, Option<u8>)] = &[
    (0, "PCMU", 8000, None),
    (3, "GSM", 8000, None),
    (4, "G723", 8000, None),
    (5, "DVI4", 8000, None),
    (6, "DVI4", 16000, None),
    (7, "LPC", 8000, None),
    (8, "PCMA", 8000, None),
    (9, "G722", 8000, None),
    (10, "L16", 44100, Some(2)),
    (11, "L16", 44100, None),
    (12, "QCELP", 8000, None),
    (13, "CN", 8000, None),
    (14, "MPA", 90000, None),
    (15, "G728", 8000, None),
    (16, "DVI4", 11025, None),
    (17, "DVI4", 22050, None),
    (18, "G729", 8000, None),
    (25, "CelB", 90000, None),
    (26, "JPEG", 90000, None),
    (28, "nv", 90000, None),
    (31, "H261", 90000, None),
    (32, "MPV", 90000, None),
    (33, "MP2T", 90000, None),
    (34, "H263", 90000, None),
];

/// The RFC 3551 format for a static payload type, if it has one.
pub fn static_format(pt: u8) -> Option<Format> {
    STATIC_PTS
        .iter()
        .find(|(p, ..)| *p == pt)
        .map(|(pt, name, clock, ch)| Format {
            pt: *pt,
            name: (*name).to_string(),
            clock_rate: *clock,
            channels: *ch,
            fmtp: None,
        })
}

/// One m-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDesc {
    /// `audio`, `video`, `image`, ...
    pub kind: String,
    /// 0 = stream rejected or disabled.
    pub port: u16,
    /// `RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, `udptl`, ...
    pub proto: String,
    /// Media-level `c=`, which overrides the session-level one.
    pub connection: Option<IpAddr>,
    /// RTP payload formats in m-line (preference) order; empty for non-RTP transports.
    pub formats: Vec<Format>,
    /// The m-line's `<fmt>` tokens verbatim (what an answer echoes when rejecting the line).
    pub raw_formats: Vec<String>,
    pub ptime: Option<u32>,
    pub maxptime: Option<u32>,
    /// Media-level direction, else session-level, else `sendrecv`.
    pub direction: SdpDirection,
    pub rtcp_mux: bool,
    /// `a=rtcp:<port> [IN IP4 <addr>]` (RFC 3605).
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    /// Attributes not represented above, in order.
    pub other_attributes: Vec<(String, Option<String>)>,
}

impl MediaDesc {
    pub fn is_rtp(&self) -> bool {
        self.proto.split('/').any(|p| p == "RTP")
    }

    pub fn format(&self, pt: u8) -> Option<&Format> {
        self.formats.iter().find(|f| f.pt == pt)
    }
}

/// The parsed SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDesc {
    pub origin_username: String,
    pub session_id: u64,
    pub session_version: u64,
    /// Session-level `c=`.
    pub connection: Option<IpAddr>,
    /// Session-level attributes other than direction, in order.
    pub attributes: Vec<(String, Option<String>)>,
    pub media: Vec<MediaDesc>,
}

/// The media-security and ICE attributes of one m-line, media-level values taking precedence
/// over session-level ones (RFC 8842 §5.1, RFC 8839 §5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityDesc {
    /// `a=crypto` values (RFC 4568), in the order given.
    pub crypto: Vec<String>,
    /// `a=fingerprint` values (RFC 8122).
    pub fingerprints: Vec<String>,
    /// `a=setup` (RFC 4145).
    pub setup: Option<String>,
    pub ice_ufrag: Option<String>,
    pub ice_pwd: Option<String>,
    /// Session-level `a=ice-lite`.
    pub ice_lite: bool,
    /// UDP host/srflx/relay candidates of component 1 with an IP literal address.
    pub candidates: Vec<SocketAddr>,
}

impl SessionDesc {
    /// The security and ICE attributes that apply to `m`.
    pub fn security(&self, m: &MediaDesc) -> SecurityDesc {
        fn values<'a>(
            attrs: &'a [(String, Option<String>)],
            k: &'a str,
        ) -> impl Iterator<Item = String> + 'a {
            attrs
                .iter()
                .filter(move |(key, _)| key == k)
                .map(|(_, v)| v.as_deref().unwrap_or("").trim().to_string())
        }
        let media = |k: &'static str| values(&m.other_attributes, k);
        let session = |k: &'static str| values(&self.attributes, k);
        let either = |k: &'static str| media(k).next().or_else(|| session(k).next());
        let mut fingerprints: Vec<String> = media("fingerprint").collect();
        if fingerprints.is_empty() {
            fingerprints = session("fingerprint").collect();
        }
        SecurityDesc {
            crypto: media("crypto").collect(),
            fingerprints,
            setup: either("setup"),
            ice_ufrag: either("ice-ufrag"),
            ice_pwd: either("ice-pwd"),
            ice_lite: self.attributes.iter().any(|(k, _)| k == "ice-lite"),
            candidates: media("candidate")
                .filter_map(|c| parse_candidate(&c))
                .collect(),
        }
    }
}

/// `foundation component transport priority address port typ type ...` (RFC 8839 §5.1): the
/// address of a UDP candidate for component 1 (RTP); `None` for anything else, including
/// mDNS `.local` names riptide cannot resolve.
fn parse_candidate(v: &str) -> Option<SocketAddr> {
    let mut it = v.split_ascii_whitespace();
    let _foundation = it.next()?;
    if it.next()? != "1" || !it.next()?.eq_ignore_ascii_case("udp") {
        return None;
    }
    let _priority = it.next()?;
    let ip: IpAddr = it.next()?.parse().ok()?;
    let port: u16 = it.next()?.parse().ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}

impl SessionDesc {
    /// The audio m-line to use: the first audio line with a non-zero port, else the first audio
    /// line at all (so a rejected audio stream in an answer is still visible).
    pub fn audio(&self) -> Option<(usize, &MediaDesc)> {
        let mut audio = self
            .media
            .iter()
            .enumerate()
            .filter(|(_, m)| m.kind == "audio");
        let first = audio.clone().next();
        audio.find(|(_, m)| m.port != 0).or(first)
    }

    /// Where to send the audio RTP: media-level `c=` (else session-level) and the m-line port.
    /// `None` when there is no audio line, no address, or the port is 0. A `0.0.0.0` address
    /// (RFC 2543-style hold) is returned as is; callers treat it as "do not send".
    pub fn audio_addr(&self) -> Option<SocketAddr> {
        let (_, m) = self.audio()?;
        if m.port == 0 {
            return None;
        }
        let ip = m.connection.or(self.connection)?;
        Some(SocketAddr::new(ip, m.port))
    }
}

fn conn_addr(c: &Option<ConnectionInformation>) -> Result<Option<IpAddr>, SdpError> {
    let Some(addr) = c.as_ref().and_then(|c| c.address.as_ref()) else {
        return Ok(None);
    };
    // rtc-sdp has split off any /ttl/range already; what remains must be a literal.
    let text = addr.address.split('/').next().unwrap_or_default();
    text.parse()
        .map(Some)
        .map_err(|_| SdpError::BadConnection(addr.address.clone()))
}

fn parse_ms(index: usize, name: &'static str, v: Option<&str>) -> Result<u32, SdpError> {
    let v = v.unwrap_or_default().trim();
    let bad = || SdpError::BadAttribute {
        index,
        name,
        value: v.to_string(),
    };
    if let Ok(n) = v.parse::<u32>() {
        return Ok(n);
    }
    // Some endpoints write `a=ptime:20.0`.
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 && f <= f64::from(u32::MAX) => Ok(f.round() as u32),
        _ => Err(bad()),
    }
}

/// Parses an SDP body.
pub fn parse(body: &[u8]) -> Result<SessionDesc, SdpError> {
    let text = std::str::from_utf8(body).map_err(|e| SdpError::NotUtf8(e.valid_up_to()))?;
    if !text.trim_start_matches(['\r', '\n']).starts_with("v=") {
        return Err(SdpError::NoVersion);
    }
    let sd = SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| SdpError::Syntax(e.to_string()))?;

    let session_dir = sd
        .attributes
        .iter()
        .find_map(|a| SdpDirection::from_attr(&a.key));

    let mut media = Vec::with_capacity(sd.media_descriptions.len());
    for (index, md) in sd.media_descriptions.iter().enumerate() {
        let port = u16::try_from(md.media_name.port.value).map_err(|_| SdpError::BadMediaLine {
            index,
            why: format!("port {} out of range", md.media_name.port.value),
        })?;
        let proto = md.media_name.protos.join("/");
        let raw_formats = md.media_name.formats.clone();
        if raw_formats.is_empty() {
            return Err(SdpError::BadMediaLine {
                index,
                why: "no formats".into(),
            });
        }
        let is_rtp = md.media_name.protos.iter().any(|p| p == "RTP");

        let mut formats = Vec::new();
        if is_rtp {
            for f in &raw_formats {
                let pt = f
                    .parse::<u8>()
                    .ok()
                    .filter(|pt| *pt <= 127)
                    .ok_or_else(|| SdpError::PayloadTypeOutOfRange {
                        index,
                        pt: f.clone(),
                    })?;
                // Placeholder from the static table; a=rtpmap below overrides it.
                formats.push((
                    static_format(pt).unwrap_or_else(|| Format::new(pt, "", 0)),
                    false,
                ));
            }
        }

        let mut m = MediaDesc {
            kind: md.media_name.media.clone(),
            port,
            proto,
            connection: conn_addr(&md.connection_information)?,
            formats: Vec::new(),
            raw_formats,
            ptime: None,
            maxptime: None,
            direction: session_dir.unwrap_or_default(),
            rtcp_mux: false,
            rtcp: None,
            other_attributes: Vec::new(),
        };
        let mut media_dir = None;
        for a in &md.attributes {
            let value = a.value.as_deref();
            match a.key.as_str() {
                "rtpmap" if is_rtp => {
                    let v = value.unwrap_or_default();
                    let bad = || SdpError::BadRtpmap {
                        index,
                        value: v.to_string(),
                    };
                    let (pt, enc) = v.trim().split_once(char::is_whitespace).ok_or_else(bad)?;
                    let pt: u8 = pt.parse().map_err(|_| bad())?;
                    let mut parts = enc.trim().split('/');
                    let name = parts.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
                    let clock: u32 = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
                    let channels = match parts.next() {
                        Some(c) => Some(c.parse::<u8>().map_err(|_| bad())?),
                        None => None,
                    };
                    let slot = formats
                        .iter_mut()
                        .find(|(f, _)| f.pt == pt)
                        .ok_or(SdpError::RtpmapForUnknownPt { index, pt })?;
                    slot.0.name = name.to_string();
                    slot.0.clock_rate = clock;
                    slot.0.channels = channels;
                    slot.1 = true;
                }
                "fmtp" if is_rtp => {
                    let v = value.unwrap_or_default().trim();
                    let (pt, params) = v.split_once(char::is_whitespace).unwrap_or((v, ""));
                    match pt
                        .parse::<u8>()
                        .ok()
                        .and_then(|pt| formats.iter_mut().find(|(f, _)| f.pt == pt))
                    {
                        Some((f, _)) => f.fmtp = Some(params.trim().to_string()),
                        // An fmtp for a format not on the line is harmless; keep it verbatim.
                        None => m.other_attributes.push((a.key.clone(), a.value.clone())),
                    }
                }
                "ptime" => m.ptime = Some(parse_ms(index, "ptime", value)?),
                "maxptime" => m.maxptime = Some(parse_ms(index, "maxptime", value)?),
                "rtcp-mux" => m.rtcp_mux = true,
                "rtcp" => {
                    let v = value.unwrap_or_default().trim();
                    let mut it = v.split_whitespace();
                    let port = it.next().and_then(|p| p.parse::<u16>().ok()).ok_or(
                        SdpError::BadAttribute {
                            index,
                            name: "rtcp",
                            value: v.to_string(),
                        },
                    )?;
                    let addr = match (it.next(), it.next(), it.next()) {
                        (Some(_nettype), Some(_addrtype), Some(addr)) => Some(
                            addr.parse::<IpAddr>()
                                .map_err(|_| SdpError::BadConnection(addr.to_string()))?,
                        ),
                        _ => None,
                    };
                    m.rtcp = Some((port, addr));
                }
                key => match SdpDirection::from_attr(key) {
                    Some(d) => media_dir = Some(d),
                    None => m.other_attributes.push((a.key.clone(), a.value.clone())),
                },
            }
        }
        if let Some(d) = media_dir {
            m.direction = d;
        }
        for (f, mapped) in formats {
            if !mapped && f.name.is_empty() {
                // A rejected line (port 0) in an answer commonly omits its rtpmaps; nothing
                // will be sent in that format, so only an active line must describe it.
                if port == 0 {
                    continue;
                }
                return Err(SdpError::MissingRtpmap { index, pt: f.pt });
            }
            m.formats.push(f);
        }
        media.push(m);
    }

    Ok(SessionDesc {
        origin_username: sd.origin.username.clone(),
        session_id: sd.origin.session_id,
        session_version: sd.origin.session_version,
        connection: conn_addr(&sd.connection_information)?,
        attributes: sd
            .attributes
            .iter()
            .filter(|a| SdpDirection::from_attr(&a.key).is_none())
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect(),
        media,
    })
}

/// Everything riptide puts into an SDP it sends (offer to a SIP trunk or answer to a caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSdp {
    /// `o=` username; `riptide`.
    pub username: String,
    pub session_id: u64,
    /// The `o=` version: [`build_to_send`] moves it on by one when the description changed
    /// since it was last sent (RFC 3264 §8).
    pub session_version: u64,
    pub ip: IpAddr,
    /// RTP port; 0 rejects the audio stream.
    pub port: u16,
    pub formats: Vec<Format>,
    pub ptime: Option<u32>,
    pub direction: SdpDirection,
    pub rtcp_mux: bool,
    /// The offer's other m-lines as (kind, proto, fmts), echoed with port 0 in an answer.
    pub rejected: Vec<(String, String, Vec<String>)>,
    /// Position of the audio m-line among all m-lines (RFC 3264 §6: an answer keeps the offer's
    /// m-line order).
    pub audio_index: usize,
    /// The audio m-line's transport: `RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, ...
    pub proto: String,
    /// Session-level attributes, as `name[:value]` (e.g. `ice-lite`).
    pub session_attrs: Vec<String>,
    /// Audio-level security and ICE attributes, as `name[:value]` (crypto, fingerprint, setup,
    /// ice-ufrag, ice-pwd, candidate).
    pub media_attrs: Vec<String>,
    /// The version and a digest (version aside) of the description last sent.
    pub sent: Option<(u64, u64)>,
}

impl LocalSdp {
    /// An audio-only description with riptide's defaults.
    pub fn new(ip: IpAddr, port: u16, formats: Vec<Format>) -> LocalSdp {
        LocalSdp {
            username: "riptide".into(),
            session_id: 0,
            session_version: 0,
            ip,
            port,
            formats,
            ptime: None,
            direction: SdpDirection::SendRecv,
            rtcp_mux: false,
            rejected: Vec::new(),
            audio_index: 0,
            proto: "RTP/AVP".into(),
            session_attrs: Vec::new(),
            media_attrs: Vec::new(),
            sent: None,
        }
    }
}

/// Serialises `l` to send it, with the `o=` version RFC 3264 §8 asks for: one more than the
/// description last sent when anything else in it changed, and the same when nothing did (a
/// session refresh, a repeated 2xx), so that a peer that reads a new version as a change has
/// nothing to renegotiate. The first one keeps the version it has.
pub fn build_to_send(l: &mut LocalSdp) -> String {
    use std::hash::{Hash, Hasher};
    let version = l.session_version;
    l.session_version = 0;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    build(l).hash(&mut h);
    let digest = h.finish();
    l.session_version = match l.sent {
        Some((v, d)) if d == digest => v,
        Some((v, _)) => v + 1,
        None => version,
    };
    l.sent = Some((l.session_version, digest));
    build(l)
}

/// Serialises a [`LocalSdp`] (CRLF line endings, RFC 4566 line order).
pub fn build(l: &LocalSdp) -> String {
    use std::fmt::Write;
    let ipv = if l.ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "v=0\r\no={} {} {} IN {ipv} {}\r\ns=riptide\r\nc=IN {ipv} {}\r\nt=0 0\r\n",
        l.username, l.session_id, l.session_version, l.ip, l.ip
    );
    for a in &l.session_attrs {
        let _ = write!(s, "a={a}\r\n");
    }
    let audio_at = l.audio_index.min(l.rejected.len());
    let mut rejected = l.rejected.iter();
    for i in 0..=l.rejected.len() {
        if i == audio_at {
            write_audio(&mut s, l);
        } else if let Some((kind, proto, fmts)) = rejected.next() {
            let fmts = if fmts.is_empty() {
                // A rejected m-line still needs one format to be syntactically valid.
                "0".to_string()
            } else {
                fmts.join(" ")
            };
            let _ = write!(s, "m={kind} 0 {proto} {fmts}\r\n");
        }
    }
    s
}

fn write_audio(s: &mut String, l: &LocalSdp) {
    use std::fmt::Write;
    let pts: Vec<String> = l.formats.iter().map(|f| f.pt.to_string()).collect();
    let pts = if pts.is_empty() {
        "0".to_string()
    } else {
        pts.join(" ")
    };
    let _ = write!(s, "m=audio {} {} {pts}\r\n", l.port, l.proto);
    for f in &l.formats {
        let _ = write!(s, "a=rtpmap:{}\r\n", f.rtpmap());
        if let Some(fmtp) = f.fmtp.as_deref().filter(|p| !p.is_empty()) {
            let _ = write!(s, "a=fmtp:{} {fmtp}\r\n", f.pt);
        }
    }
    if let Some(p) = l.ptime {
        let _ = write!(s, "a=ptime:{p}\r\n");
    }
    let _ = write!(s, "a={}\r\n", l.direction.as_attr());
    if l.rtcp_mux {
        s.push_str("a=rtcp-mux\r\n");
    }
    for a in &l.media_attrs {
        let _ = write!(s, "a={a}\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SIPp's built-in uac scenario body after [media_ip]/[media_port] substitution (LF only).
    const SIPP: &str = "v=0\n\
        o=user1 53655765 2353687637 IN IP4 127.0.0.1\n\
        s=-\n\
        c=IN IP4 127.0.0.1\n\
        t=0 0\n\
        m=audio 6000 RTP/AVP 0\n\
        a=rtpmap:0 PCMU/8000\n";

    const BARESIP: &str = "v=0\r\n\
        o=- 1955806516 1264542473 IN IP4 192.168.1.20\r\n\
        s=-\r\n\
        c=IN IP4 192.168.1.20\r\n\
        t=0 0\r\n\
        a=tool:baresip 3.10.1\r\n\
        m=audio 10814 RTP/AVP 111 9 0 8 101\r\n\
        b=AS:512\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=fmtp:111 stereo=1;sprop-stereo=1\r\n\
        a=rtpmap:9 G722/8000\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n\
        a=rtcp-mux\r\n\
        a=sendrecv\r\n\
        a=label:1\r\n\
        a=ssrc:1380185722 cname:6ac4e2b8-0e1a-4ac1-9a32-b4f0bfe2cbb0\r\n\
        a=ptime:20\r\n";

    /// c= only at session level, no rtpmap for static types, session-level direction.
    const SESSION_C: &str = "v=0\r\n\
        o=Z 0 1 IN IP4 10.0.0.5\r\n\
        s=Z\r\n\
        c=IN IP4 10.0.0.5\r\n\
        t=0 0\r\n\
        a=sendonly\r\n\
        m=audio 8000 RTP/AVP 8 18 3 96\r\n\
        a=rtpmap:96 telephone-event/8000\r\n\
        a=fmtp:18 annexb=no\r\n\
        a=maxptime:40\r\n";

    /// Video first, audio second, each with its own c= (IPv6 on audio).
    const VIDEO_AUDIO: &str = "v=0\r\n\
        o=alice 2890844526 2890844527 IN IP4 host.example.com\r\n\
        s=-\r\n\
        t=0 0\r\n\
        m=video 51372 RTP/AVP 99\r\n\
        c=IN IP4 192.0.2.7\r\n\
        a=rtpmap:99 H264/90000\r\n\
        a=fmtp:99 profile-level-id=42e01f\r\n\
        m=audio 49170 RTP/AVP 0 101\r\n\
        c=IN IP6 2001:db8::1\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=rtcp:49171 IN IP6 2001:db8::2\r\n\
        a=recvonly\r\n";

    #[test]
    fn sipp_offer() {
        let s = parse(SIPP.as_bytes()).unwrap();
        assert_eq!(s.origin_username, "user1");
        assert_eq!(s.session_id, 53655765);
        let (i, a) = s.audio().unwrap();
        assert_eq!(i, 0);
        assert_eq!(a.formats, [Format::new(0, "PCMU", 8000)]);
        assert_eq!(a.direction, SdpDirection::SendRecv);
        assert_eq!(s.audio_addr(), Some("127.0.0.1:6000".parse().unwrap()));
    }

    #[test]
    fn baresip_offer() {
        let s = parse(BARESIP.as_bytes()).unwrap();
        let (_, a) = s.audio().unwrap();
        let names: Vec<_> = a.formats.iter().map(|f| (f.pt, f.name.as_str())).collect();
        assert_eq!(
            names,
            [
                (111, "opus"),
                (9, "G722"),
                (0, "PCMU"),
                (8, "PCMA"),
                (101, "telephone-event")
            ]
        );
        assert_eq!(a.formats[0].channels, Some(2));
        assert_eq!(a.formats[0].clock_rate, 48000);
        assert_eq!(
            a.formats[0].fmtp.as_deref(),
            Some("stereo=1;sprop-stereo=1")
        );
        assert_eq!(a.formats[4].fmtp.as_deref(), Some("0-15"));
        assert!(a.rtcp_mux);
        assert_eq!(a.ptime, Some(20));
        assert!(a
            .other_attributes
            .iter()
            .any(|(k, v)| k == "label" && v.as_deref() == Some("1")));
    }

    #[test]
    fn session_level_connection_and_direction() {
        let s = parse(SESSION_C.as_bytes()).unwrap();
        let (_, a) = s.audio().unwrap();
        assert_eq!(a.connection, None);
        assert_eq!(s.audio_addr(), Some("10.0.0.5:8000".parse().unwrap()));
        assert_eq!(a.direction, SdpDirection::SendOnly);
        assert_eq!(a.maxptime, Some(40));
        let names: Vec<_> = a.formats.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["PCMA", "G729", "GSM", "telephone-event"]);
        assert_eq!(a.formats[1].fmtp.as_deref(), Some("annexb=no"));
    }

    #[test]
    fn video_and_audio() {
        let s = parse(VIDEO_AUDIO.as_bytes()).unwrap();
        assert_eq!(s.media.len(), 2);
        let (i, a) = s.audio().unwrap();
        assert_eq!(i, 1);
        assert_eq!(a.direction, SdpDirection::RecvOnly);
        assert_eq!(a.rtcp, Some((49171, Some("2001:db8::2".parse().unwrap()))));
        assert_eq!(s.audio_addr(), Some("[2001:db8::1]:49170".parse().unwrap()));
        assert_eq!(s.media[0].formats[0].name, "H264");
    }

    #[test]
    fn audio_prefers_an_active_line() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                   m=audio 0 RTP/SAVP 0\r\nm=audio 4000 RTP/AVP 8\r\n";
        let s = parse(sdp.as_bytes()).unwrap();
        assert_eq!(s.audio().unwrap().0, 1);
        let rejected = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                        m=audio 0 RTP/AVP 0\r\n";
        let s = parse(rejected.as_bytes()).unwrap();
        assert_eq!(s.audio().unwrap().1.port, 0);
        assert_eq!(s.audio_addr(), None);
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(parse(b"\xff\xfe"), Err(SdpError::NotUtf8(0)));
        assert_eq!(
            parse(b"o=- 1 1 IN IP4 1.2.3.4\r\n"),
            Err(SdpError::NoVersion)
        );
        let base = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n";
        let with = |m: &str| parse(format!("{base}{m}").as_bytes());
        assert!(matches!(with("m=audio 4000\r\n"), Err(SdpError::Syntax(_))));
        assert_eq!(
            with("m=audio 4000 RTP/AVP 200\r\n"),
            Err(SdpError::PayloadTypeOutOfRange {
                index: 0,
                pt: "200".into()
            })
        );
        assert_eq!(
            with("m=audio 4000 RTP/AVP 0\r\na=rtpmap:96 opus/48000/2\r\n"),
            Err(SdpError::RtpmapForUnknownPt { index: 0, pt: 96 })
        );
        assert_eq!(
            with("m=audio 4000 RTP/AVP 0 96\r\n"),
            Err(SdpError::MissingRtpmap { index: 0, pt: 96 })
        );
        assert!(matches!(
            with("m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 opus\r\n"),
            Err(SdpError::BadRtpmap { .. })
        ));
        assert!(matches!(
            with("m=audio 4000 RTP/AVP 0\r\na=ptime:abc\r\n"),
            Err(SdpError::BadAttribute { name: "ptime", .. })
        ));
        assert!(matches!(
            parse(b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 gw.example\r\nt=0 0\r\n"),
            Err(SdpError::BadConnection(_))
        ));
        // Non-RTP lines keep their tokens and need no rtpmap.
        let s = with("m=image 4000 udptl t38\r\n").unwrap();
        assert_eq!(s.media[0].raw_formats, ["t38"]);
        assert!(s.media[0].formats.is_empty());
    }

    #[test]
    fn a_sent_description_moves_on_one_version_per_change_sent() {
        let version = |b: &str| -> u64 {
            let o = b.lines().find(|l| l.starts_with("o=")).unwrap();
            o.split(' ').nth(2).unwrap().parse().unwrap()
        };
        let mut l = sample_local();
        assert_eq!(
            version(&build_to_send(&mut l)),
            7,
            "the first keeps its version"
        );
        assert_eq!(version(&build_to_send(&mut l)), 7, "unchanged: the same");
        // Two changes between sends, or a change undone before it was sent: one step, or none.
        l.direction = SdpDirection::SendOnly;
        l.media_attrs
            .push("crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x".into());
        let sent = build_to_send(&mut l);
        assert_eq!(version(&sent), 8, "{sent}");
        l.direction = SdpDirection::Inactive;
        l.direction = SdpDirection::SendOnly;
        assert_eq!(build_to_send(&mut l), sent, "identical, version included");
        l.direction = SdpDirection::SendRecv;
        assert_eq!(version(&build_to_send(&mut l)), 9);
    }

    fn sample_local() -> LocalSdp {
        let mut opus = Format::new(111, "opus", 48000);
        opus.channels = Some(2);
        opus.fmtp = Some("useinbandfec=1".into());
        let mut te = Format::new(101, "telephone-event", 8000);
        te.fmtp = Some("0-16".into());
        LocalSdp {
            session_id: 42,
            session_version: 7,
            ptime: Some(20),
            rtcp_mux: true,
            ..LocalSdp::new(
                "203.0.113.9".parse().unwrap(),
                30000,
                vec![Format::new(0, "PCMU", 8000), opus, te],
            )
        }
    }

    #[test]
    fn build_is_exact_and_round_trips() {
        let l = sample_local();
        let text = build(&l);
        assert_eq!(
            text,
            "v=0\r\no=riptide 42 7 IN IP4 203.0.113.9\r\ns=riptide\r\nc=IN IP4 203.0.113.9\r\n\
             t=0 0\r\nm=audio 30000 RTP/AVP 0 111 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n\
             a=sendrecv\r\na=rtcp-mux\r\n"
        );
        let s = parse(text.as_bytes()).unwrap();
        assert_eq!(s.origin_username, "riptide");
        assert_eq!((s.session_id, s.session_version), (42, 7));
        let (_, a) = s.audio().unwrap();
        assert_eq!(a.formats, l.formats);
        assert_eq!(
            (a.ptime, a.direction, a.rtcp_mux),
            (Some(20), SdpDirection::SendRecv, true)
        );
        assert_eq!(s.audio_addr(), Some("203.0.113.9:30000".parse().unwrap()));
    }

    #[test]
    fn answer_echoes_rejected_lines_in_offer_order() {
        let offer = parse(VIDEO_AUDIO.as_bytes()).unwrap();
        let (audio_index, a) = offer.audio().unwrap();
        let rejected = offer
            .media
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != audio_index)
            .map(|(_, m)| (m.kind.clone(), m.proto.clone(), m.raw_formats.clone()))
            .collect();
        let l = LocalSdp {
            direction: a.direction.reverse(),
            rejected,
            audio_index,
            ..LocalSdp::new(
                "2001:db8::9".parse().unwrap(),
                4000,
                vec![Format::new(0, "PCMU", 8000)],
            )
        };
        let answer = parse(build(&l).as_bytes()).unwrap();
        assert_eq!(answer.media.len(), 2);
        assert_eq!(
            (answer.media[0].kind.as_str(), answer.media[0].port),
            ("video", 0)
        );
        assert_eq!(answer.media[0].raw_formats, ["99"]);
        assert!(answer.media[0].formats.is_empty());
        let (i, aa) = answer.audio().unwrap();
        assert_eq!(i, 1);
        assert_eq!(aa.direction, SdpDirection::SendOnly);
        assert_eq!(answer.connection, Some("2001:db8::9".parse().unwrap()));
    }

    #[test]
    fn directions() {
        for d in [
            SdpDirection::SendRecv,
            SdpDirection::SendOnly,
            SdpDirection::RecvOnly,
            SdpDirection::Inactive,
        ] {
            assert_eq!(SdpDirection::from_attr(d.as_attr()), Some(d));
            assert_eq!(d.reverse().reverse(), d);
        }
        assert_eq!(SdpDirection::SendOnly.reverse(), SdpDirection::RecvOnly);
        assert!(SdpDirection::SendOnly.sends() && !SdpDirection::SendOnly.receives());
    }

    /// baresip 1.0's ICE + DTLS offer (/work research notes): fingerprint, setup and ICE
    /// credentials at session level, the candidate and `c=` at media level.
    #[test]
    fn security_attributes_fall_back_to_session_level() {
        let offer = "v=0\r\no=- 3417709960 543357352 IN IP4 127.0.0.1\r\ns=-\r\n\
            c=IN IP4 127.0.0.1\r\nt=0 0\r\na=ice-ufrag:bQ3jDIS\r\n\
            a=ice-pwd:cYbPoUadee6NvVIISn2qEWqvQSLCbBf\r\na=setup:actpass\r\n\
            a=fingerprint:SHA-256 1E:A0:7C:33\r\n\
            m=audio 21016 UDP/TLS/RTP/SAVPF 0 101\r\nc=IN IP4 127.0.0.2\r\n\
            a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp-mux\r\n\
            a=candidate:7f000002 1 UDP 2113929471 127.0.0.2 21016 typ host\r\n\
            a=candidate:7f000003 2 UDP 2113929470 127.0.0.2 21017 typ host\r\n\
            a=candidate:x 1 UDP 2113929470 abc.local 21018 typ host\r\n";
        let sd = parse(offer.as_bytes()).unwrap();
        let (_, m) = sd.audio().unwrap();
        let sec = sd.security(m);
        assert_eq!(sec.ice_ufrag.as_deref(), Some("bQ3jDIS"));
        assert_eq!(
            sec.ice_pwd.as_deref(),
            Some("cYbPoUadee6NvVIISn2qEWqvQSLCbBf")
        );
        assert_eq!(sec.setup.as_deref(), Some("actpass"));
        assert_eq!(sec.fingerprints, vec!["SHA-256 1E:A0:7C:33".to_string()]);
        assert_eq!(
            sec.candidates,
            vec!["127.0.0.2:21016".parse::<SocketAddr>().unwrap()]
        );
        assert!(!sec.ice_lite);
        assert!(sec.crypto.is_empty());
    }

    #[test]
    fn local_security_attributes_are_written() {
        let mut l = sample_local();
        l.proto = "RTP/SAVP".into();
        l.session_attrs = vec!["ice-lite".into()];
        l.media_attrs = vec!["crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc".into()];
        let sd = parse(build(&l).as_bytes()).unwrap();
        let (_, m) = sd.audio().unwrap();
        assert_eq!(m.proto, "RTP/SAVP");
        let sec = sd.security(m);
        assert!(sec.ice_lite);
        assert_eq!(
            sec.crypto,
            vec!["1 AES_CM_128_HMAC_SHA1_80 inline:abc".to_string()]
        );
    }
}
