//! Codec choice between an SDP offer/answer and a RIPT advertisement/proposal, without
//! transcoding (research notes §2.7).
//!
//! riptide relays RTP verbatim, so the codec on the SIP leg must be the codec on the HTTP/3 leg,
//! in both directions. The SIP caller's offer becomes the advertisement (its codecs, order and
//! payload types); the RIPT server picks one voice codec from it plus `telephone-event` and `CN`
//! when available, and the proposal uses the same codec and payload types both ways.

use crate::media::rtp::PayloadMap;
use crate::ript::model::{
    is_auxiliary_codec, known_codec, Advertisement, CodecAd, Direction, Proposal, StreamProp,
};
use crate::sdp::{Format, MediaDesc};

/// Packet time used when neither side states one (RFC 3551 default for the G.711 family).
pub const DEFAULT_PTIME: u32 = 20;

/// Why no media could be agreed. `Display` is a short human reason suitable for a SIP
/// `Warning` header or a 488 reason phrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error(
        "no common codec (offered {}; allowed {})",
        list(offered),
        list(allowed)
    )]
    NoCommonCodec {
        offered: Vec<String>,
        allowed: Vec<String>,
    },
    #[error("offered media is {kind}, not audio")]
    NotAudio { kind: String },
    #[error(
        "unsupported media transport {proto} (RTP/AVP(F), RTP/SAVP(F) and UDP/TLS/RTP/SAVP(F) are)"
    )]
    UnsupportedTransport { proto: String },
    #[error("answer rejected the audio stream (port 0)")]
    AudioRejected,
    #[error("answer chose codecs that were not offered ({})", list(answered))]
    AnswerNotOffered { answered: Vec<String> },
}

impl NegotiationError {
    /// SIP status for refusing an INVITE, or reporting in a `failed` event, for this error.
    pub fn sip_status(&self) -> u16 {
        488
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

fn allowed_contains(allowed: &[String], name: &str) -> bool {
    allowed.iter().any(|a| a.trim().eq_ignore_ascii_case(name))
}

/// Canonical spelling for known codecs (`pcmu` → `PCMU`), the given one otherwise.
fn canonical(name: &str) -> &str {
    known_codec(name).map_or(name, |k| k.name)
}

fn format_label(f: &Format) -> String {
    format!("{}/{}", f.name, f.clock_rate)
}

/// The SIP caller's offered audio codecs as an advertisement: offer order (the caller's
/// preference), filtered by `allowed` (case-insensitive codec names from the config), keeping
/// payload types, `fmtp`, `ptime` and `maxptime`.
pub fn offer_to_advertisement(
    offer: &MediaDesc,
    allowed: &[String],
) -> Result<Advertisement, NegotiationError> {
    check_transport(offer)?;
    let codecs: Vec<CodecAd> = offer
        .formats
        .iter()
        .filter(|f| allowed_contains(allowed, &f.name))
        .map(|f| CodecAd {
            media_type: format!("audio/{}", canonical(&f.name)),
            clock_rate: f.clock_rate,
            channels: f.channels.filter(|c| *c > 1),
            max_packet_time: offer.maxptime,
            packet_time: offer.ptime,
            payload_type: Some(f.pt),
            parameters: f.fmtp.clone(),
        })
        .collect();
    if !codecs.iter().any(|c| !c.is_auxiliary()) {
        return Err(NegotiationError::NoCommonCodec {
            offered: offer.formats.iter().map(format_label).collect(),
            allowed: allowed.to_vec(),
        });
    }
    Ok(Advertisement { codecs })
}

/// Our own codecs as an advertisement, for a caller whose INVITE made no offer (delayed
/// offer): `allowed` in its order (the config's preference), with each codec's usual clock,
/// channels and payload type, and the 20 ms packet time; unknown names are left out. Whatever
/// the far side picks is all our offer will hold, so when `allowed` has G.711 only G.711 (and
/// telephone-event and CN) is advertised: the codec every SIP peer can answer.
pub fn codecs_to_advertisement(allowed: &[String]) -> Result<Advertisement, NegotiationError> {
    let g711 = |name: &str| {
        ["PCMU", "PCMA"]
            .iter()
            .any(|g| g.eq_ignore_ascii_case(name))
    };
    let any_g711 = allowed.iter().any(|n| g711(n));
    let codecs: Vec<CodecAd> = allowed
        .iter()
        .filter(|name| !any_g711 || g711(name) || is_auxiliary_codec(name))
        .filter_map(|name| known_codec(name))
        .map(|k| CodecAd {
            media_type: format!("audio/{}", k.name),
            clock_rate: k.clock_rate,
            channels: k.channels,
            max_packet_time: None,
            packet_time: Some(DEFAULT_PTIME),
            payload_type: Some(k.payload_type),
            parameters: (k.name == "telephone-event").then(|| "0-16".to_string()),
        })
        .collect();
    if !codecs.iter().any(|c| !c.is_auxiliary()) {
        return Err(NegotiationError::NoCommonCodec {
            offered: Vec::new(),
            allowed: allowed.to_vec(),
        });
    }
    Ok(Advertisement { codecs })
}

fn check_transport(m: &MediaDesc) -> Result<(), NegotiationError> {
    if m.kind != "audio" {
        return Err(NegotiationError::NotAudio {
            kind: m.kind.clone(),
        });
    }
    // Which of these a leg accepts is the media policy's decision (bridge::secure).
    if !super::secure::known_transport(&m.proto) {
        return Err(NegotiationError::UnsupportedTransport {
            proto: m.proto.clone(),
        });
    }
    Ok(())
}

/// The payload type to use for `c`: the advertised one, else the codec's static/default one,
/// else the first dynamic number not already taken.
fn payload_type(c: &CodecAd, taken: &[u8]) -> u8 {
    c.payload_type
        .or_else(|| known_codec(c.codec_name()).map(|k| k.payload_type))
        .unwrap_or_else(|| (96..=127).find(|pt| !taken.contains(pt)).unwrap_or(127))
}

/// Server side: the codec for a call from the caller's advertisement. Takes the first voice
/// codec of the advertisement (the caller's preference) that `allowed` lists, plus
/// `telephone-event` and `CN` when the advertisement has them and `allowed` lists them
/// (preferring ones at the voice codec's clock rate). Every chosen codec gets one stream per
/// direction with the same payload type, so media is relayed without transcoding.
pub fn choose(adv: &Advertisement, allowed: &[String]) -> Result<Proposal, NegotiationError> {
    let main = adv
        .codecs
        .iter()
        .find(|c| !c.is_auxiliary() && allowed_contains(allowed, c.codec_name()))
        .ok_or_else(|| NegotiationError::NoCommonCodec {
            offered: adv
                .codecs
                .iter()
                .map(|c| format!("{}/{}", c.codec_name(), c.clock_rate))
                .collect(),
            allowed: allowed.to_vec(),
        })?;
    let p_time = main
        .packet_time
        .or(main.max_packet_time.map(|m| m.min(DEFAULT_PTIME)))
        .unwrap_or(DEFAULT_PTIME);

    let mut chosen = vec![main];
    for aux in ["telephone-event", "CN"] {
        if !allowed_contains(allowed, aux) {
            continue;
        }
        let candidates = || {
            adv.codecs
                .iter()
                .filter(|c| c.same_codec(aux, c.clock_rate))
        };
        let pick = candidates()
            .find(|c| c.clock_rate == main.clock_rate)
            .or_else(|| candidates().next());
        if let Some(c) = pick {
            chosen.push(c);
        }
    }

    let mut taken: Vec<u8> = Vec::new();
    let mut streams = Vec::with_capacity(chosen.len() * 2);
    for c in chosen {
        let pt = payload_type(c, &taken);
        taken.push(pt);
        for direction in [Direction::C2s, Direction::S2c] {
            streams.push(StreamProp {
                direction,
                media_type: format!("audio/{}", canonical(c.codec_name())),
                clock_rate: c.clock_rate,
                channels: c.channels,
                p_time,
                payload_type: pt,
                parameters: c.parameters.clone(),
            });
        }
    }
    Ok(Proposal { streams })
}

/// The SDP formats (voice codec first) and packet time for the streams of `p` in direction
/// `dir`: our answer to the SIP caller, or our offer to a SIP trunk.
pub fn proposal_to_formats(p: &Proposal, dir: Direction) -> (Vec<Format>, u32) {
    let mut streams: Vec<&StreamProp> = p.streams.iter().filter(|s| s.direction == dir).collect();
    // Stable sort: voice codecs keep their order ahead of telephone-event/CN.
    streams.sort_by_key(|s| is_auxiliary_codec(stream_codec_name(s)));
    let mut formats: Vec<Format> = Vec::with_capacity(streams.len());
    for s in &streams {
        if formats.iter().any(|f| f.pt == s.payload_type) {
            continue;
        }
        formats.push(Format {
            pt: s.payload_type,
            name: stream_codec_name(s).to_string(),
            clock_rate: s.clock_rate,
            channels: s.channels,
            fmtp: s.parameters.clone(),
        });
    }
    let ptime = streams.first().map_or(DEFAULT_PTIME, |s| s.p_time);
    (formats, ptime)
}

fn stream_codec_name(s: &StreamProp) -> &str {
    s.media_type
        .split_once('/')
        .map_or(s.media_type.as_str(), |(_, n)| n)
}

/// How the SIP peer's payload type numbers differ from the HTTP/3 side's (RFC 3264: the numbers
/// in an SDP are the ones its sender receives with). `toward_peer` and `from_peer` are the
/// proposal's formats in the two directions; `ours` our last SDP's formats, with whose numbers
/// the peer sends; `theirs` the peer's last SDP's formats, the numbers it expects.
///
/// Telephone-event and CN toward the peer that the two SDPs do not both list are refused
/// (RFC 3264 §6.1: only what the offer and the answer share may be sent). A voice codec is
/// never refused: one missing would be a fault of the negotiation itself, and its packets go
/// as they did before.
pub fn payload_map(
    toward_peer: &[Format],
    from_peer: &[Format],
    ours: &[Format],
    theirs: &[Format],
) -> PayloadMap {
    let pairs = |from: &[Format], to: &[Format]| -> Vec<(u8, u8)> {
        from.iter()
            .filter_map(|f| {
                let t = counterpart(f, to)?;
                (t.pt != f.pt).then_some((f.pt, t.pt))
            })
            .collect()
    };
    PayloadMap {
        to_peer: pairs(toward_peer, theirs),
        from_peer: pairs(ours, from_peer),
        refused: toward_peer
            .iter()
            .filter(|f| is_auxiliary_codec(&f.name))
            .filter(|f| counterpart(f, theirs).is_none() || counterpart(f, ours).is_none())
            .map(|f| f.pt)
            .collect(),
    }
}

/// The format among `among` that is `f`'s codec: one with the same payload type first, then
/// one with the same `fmtp` (two profiles of one codec, say), then any of that name and clock.
pub(crate) fn counterpart<'a>(f: &Format, among: &'a [Format]) -> Option<&'a Format> {
    let same = || among.iter().filter(|t| t.same_codec(f));
    same()
        .find(|t| t.pt == f.pt)
        .or_else(|| same().find(|t| t.fmtp == f.fmtp))
        .or_else(|| same().next())
}

/// `ours` with the payload type numbers `theirs` (the peer's offer) gave the same codecs: an
/// answer should keep the offer's numbers (RFC 3264 §6.1), and the relay rewrites between them
/// and the HTTP/3 side's. Unchanged when that would give two formats one number.
pub fn in_their_numbers(ours: &[Format], theirs: &[Format]) -> Vec<Format> {
    let renumbered: Vec<Format> = ours
        .iter()
        .map(|f| Format {
            pt: counterpart(f, theirs).map_or(f.pt, |t| t.pt),
            ..f.clone()
        })
        .collect();
    let mut pts: Vec<u8> = renumbered.iter().map(|f| f.pt).collect();
    pts.sort_unstable();
    pts.dedup();
    if pts.len() == renumbered.len() {
        renumbered
    } else {
        ours.to_vec()
    }
}

/// Checks the SIP callee's answer against what we offered and returns the voice codec it chose.
///
/// RFC 3264 §6.1 lets the answerer use different payload type numbers for the same codec; the
/// returned format carries the answerer's number. The relay sends with it ([`payload_map`]).
pub fn check_answer(answer: &MediaDesc, offered: &[Format]) -> Result<Format, NegotiationError> {
    if answer.port == 0 {
        return Err(NegotiationError::AudioRejected);
    }
    let chosen = answer.formats.iter().find(|a| {
        !is_auxiliary_codec(&a.name)
            && offered
                .iter()
                .any(|o| !is_auxiliary_codec(&o.name) && o.same_codec(a))
    });
    match chosen {
        Some(a) => {
            if let Some(o) = offered.iter().find(|o| o.same_codec(a) && o.pt != a.pt) {
                tracing::debug!(
                    codec = %a.name,
                    offered_pt = o.pt,
                    answered_pt = a.pt,
                    "answer renumbered the payload type"
                );
            }
            Ok(a.clone())
        }
        None => Err(NegotiationError::AnswerNotOffered {
            answered: answer.formats.iter().map(format_label).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp;

    fn allowed(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn default_allowed() -> Vec<String> {
        crate::config::default_codecs()
    }

    fn offer(m_line: &str, attrs: &str) -> MediaDesc {
        let body = format!(
            "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n{m_line}\r\n{attrs}"
        );
        let s = sdp::parse(body.as_bytes()).unwrap();
        s.audio().unwrap().1.clone()
    }

    fn summary(p: &Proposal) -> Vec<(Direction, String, u8)> {
        p.streams
            .iter()
            .map(|s| (s.direction, s.media_type.clone(), s.payload_type))
            .collect()
    }

    #[test]
    fn pcma_only_offer_gives_pcma_both_ways() {
        let o = offer("m=audio 4000 RTP/AVP 8", "");
        let adv = offer_to_advertisement(&o, &default_allowed()).unwrap();
        let p = choose(&adv, &default_allowed()).unwrap();
        assert_eq!(
            summary(&p),
            [
                (Direction::C2s, "audio/PCMA".into(), 8),
                (Direction::S2c, "audio/PCMA".into(), 8)
            ]
        );
        assert!(p.streams.iter().all(|s| s.p_time == 20));
        let (formats, ptime) = proposal_to_formats(&p, Direction::S2c);
        assert_eq!(formats, [Format::new(8, "PCMA", 8000)]);
        assert_eq!(ptime, 20);
    }

    #[test]
    fn pcmu_pcma_te_gives_pcmu_and_te() {
        let o = offer(
            "m=audio 4000 RTP/AVP 0 8 101",
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:30\r\n",
        );
        let adv = offer_to_advertisement(&o, &default_allowed()).unwrap();
        assert_eq!(adv.codecs.len(), 3);
        assert_eq!(adv.codecs[0].packet_time, Some(30));
        let p = choose(&adv, &default_allowed()).unwrap();
        assert_eq!(
            summary(&p),
            [
                (Direction::C2s, "audio/PCMU".into(), 0),
                (Direction::S2c, "audio/PCMU".into(), 0),
                (Direction::C2s, "audio/telephone-event".into(), 101),
                (Direction::S2c, "audio/telephone-event".into(), 101),
            ]
        );
        let (formats, ptime) = proposal_to_formats(&p, Direction::C2s);
        assert_eq!(ptime, 30);
        assert_eq!(formats[1].fmtp.as_deref(), Some("0-16"));
        assert_eq!(formats[1].name, "telephone-event");
    }

    #[test]
    fn payload_types_pair_by_number_then_fmtp_then_codec_and_only_aux_codecs_are_refused() {
        let f = |pt: u8, name: &str, rate: u32, fmtp: Option<&str>| Format {
            pt,
            name: name.into(),
            clock_rate: rate,
            channels: None,
            fmtp: fmtp.map(str::to_string),
        };
        let relay = [
            f(97, "AMR-WB", 16000, Some("octet-align=0")),
            f(111, "opus", 48000, None),
            f(101, "telephone-event", 16000, None),
            f(13, "CN", 16000, None),
        ];
        let theirs = [
            f(96, "AMR-WB", 16000, Some("octet-align=1")),
            f(98, "AMR-WB", 16000, Some("octet-align=0")),
            f(110, "opus", 48000, None),
            f(111, "opus", 48000, None),
            f(101, "telephone-event", 8000, None),
        ];
        let m = payload_map(&relay, &relay, &relay, &theirs);
        // The profile with the same fmtp, the opus with the same number.
        assert_eq!(m.to_peer, [(97, 98)]);
        assert_eq!(m.from_peer, []);
        // telephone-event at another rate and CN are not the peer's; no voice codec is refused.
        assert_eq!(m.refused, [101, 13]);
        // Our answer in the offer's numbers, unless two formats would share one.
        assert_eq!(
            in_their_numbers(&relay[..2], &theirs)
                .iter()
                .map(|f| f.pt)
                .collect::<Vec<_>>(),
            [98, 111]
        );
        let clash = [
            f(98, "PCMU", 8000, None),
            f(97, "AMR-WB", 16000, Some("octet-align=0")),
        ];
        assert_eq!(in_their_numbers(&clash, &theirs), clash);
    }

    #[test]
    fn telephone_event_payload_type_is_preserved() {
        for pt in [96u8, 101, 127] {
            let o = offer(
                &format!("m=audio 4000 RTP/AVP 0 {pt}"),
                &format!("a=rtpmap:{pt} telephone-event/8000\r\n"),
            );
            let adv = offer_to_advertisement(&o, &default_allowed()).unwrap();
            let p = choose(&adv, &default_allowed()).unwrap();
            let (formats, _) = proposal_to_formats(&p, Direction::S2c);
            assert_eq!(formats[1].pt, pt);
        }
    }

    #[test]
    fn g722_only_with_g722_not_allowed_is_refused() {
        let o = offer(
            "m=audio 4000 RTP/AVP 9 101",
            "a=rtpmap:101 telephone-event/8000\r\n",
        );
        let err =
            offer_to_advertisement(&o, &allowed(&["PCMU", "PCMA", "telephone-event"])).unwrap_err();
        assert!(matches!(err, NegotiationError::NoCommonCodec { .. }));
        assert_eq!(err.sip_status(), 488);
        assert_eq!(
            err.to_string(),
            "no common codec (offered G722/8000, telephone-event/8000; allowed PCMU, PCMA, telephone-event)"
        );
    }

    #[test]
    fn opus_stereo_signalling_is_kept() {
        let o = offer(
            "m=audio 4000 RTP/AVP 111 0",
            "a=rtpmap:111 OPUS/48000/2\r\na=fmtp:111 useinbandfec=1\r\na=maxptime:60\r\n",
        );
        let adv = offer_to_advertisement(&o, &allowed(&["opus", "pcmu"])).unwrap();
        assert_eq!(adv.codecs[0].media_type, "audio/opus");
        assert_eq!(adv.codecs[0].max_packet_time, Some(60));
        let p = choose(&adv, &allowed(&["Opus"])).unwrap();
        assert_eq!(p.streams.len(), 2);
        let (formats, ptime) = proposal_to_formats(&p, Direction::C2s);
        assert_eq!(
            formats[0].rtpmap(),
            "111 opus/48000/2",
            "opus must stay 48000/2 in SDP"
        );
        assert_eq!(formats[0].fmtp.as_deref(), Some("useinbandfec=1"));
        assert_eq!(ptime, 20);
    }

    #[test]
    fn choose_follows_caller_preference_and_clock_for_aux() {
        let adv: Advertisement = serde_json::from_str(
            r#""1 in: G729; PCMA; opus; telephone-event; telephone-event,sr=48000; CN;""#,
        )
        .unwrap();
        // telephone-event,sr=48000 is a known codec so sr is ignored: deduplicated to one entry.
        assert_eq!(adv.codecs.len(), 5);
        let p = choose(&adv, &allowed(&["opus", "PCMA", "telephone-event"])).unwrap();
        let names: Vec<_> = p
            .streams
            .iter()
            .filter(|s| s.direction == Direction::C2s)
            .map(|s| (s.media_type.as_str(), s.payload_type))
            .collect();
        assert_eq!(names, [("audio/PCMA", 8), ("audio/telephone-event", 101)]);
    }

    #[test]
    fn aux_prefers_matching_clock() {
        let o = offer(
            "m=audio 4000 RTP/AVP 111 110 101",
            "a=rtpmap:111 opus/48000/2\r\na=rtpmap:110 telephone-event/48000\r\na=rtpmap:101 telephone-event/8000\r\n",
        );
        let p = choose(
            &offer_to_advertisement(&o, &default_allowed()).unwrap(),
            &default_allowed(),
        )
        .unwrap();
        let (formats, _) = proposal_to_formats(&p, Direction::S2c);
        assert_eq!(formats[1].pt, 110);
        assert_eq!(formats[1].clock_rate, 48000);
    }

    #[test]
    fn transport_and_kind_are_checked() {
        let o = offer("m=audio 4000 TCP/MRCPv2 0", "");
        assert_eq!(
            offer_to_advertisement(&o, &default_allowed()),
            Err(NegotiationError::UnsupportedTransport {
                proto: "TCP/MRCPv2".into()
            })
        );
        let mut v = offer("m=audio 4000 RTP/AVP 0", "");
        v.kind = "video".into();
        assert!(matches!(
            offer_to_advertisement(&v, &default_allowed()),
            Err(NegotiationError::NotAudio { .. })
        ));
    }

    #[test]
    fn answer_checks() {
        let mut te = Format::new(101, "telephone-event", 8000);
        te.fmtp = Some("0-16".into());
        let offered = vec![Format::new(0, "PCMU", 8000), te];

        let a = offer(
            "m=audio 5000 RTP/AVP 0 101",
            "a=rtpmap:101 telephone-event/8000\r\n",
        );
        assert_eq!(check_answer(&a, &offered).unwrap().pt, 0);

        // Same codec under another number: accepted, the answerer's number is reported.
        let a = offer("m=audio 5000 RTP/AVP 96", "a=rtpmap:96 pcmu/8000\r\n");
        let f = check_answer(&a, &offered).unwrap();
        assert_eq!((f.pt, f.name.as_str()), (96, "pcmu"));

        let a = offer("m=audio 5000 RTP/AVP 8", "");
        assert_eq!(
            check_answer(&a, &offered).unwrap_err().to_string(),
            "answer chose codecs that were not offered (PCMA/8000)"
        );

        // telephone-event alone is not a usable answer.
        let a = offer(
            "m=audio 5000 RTP/AVP 101",
            "a=rtpmap:101 telephone-event/8000\r\n",
        );
        assert!(matches!(
            check_answer(&a, &offered),
            Err(NegotiationError::AnswerNotOffered { .. })
        ));

        let a = offer("m=audio 0 RTP/AVP 0", "");
        assert_eq!(
            check_answer(&a, &offered),
            Err(NegotiationError::AudioRejected)
        );
    }
}
