//! Races and timers of the call engine, with simulated time.

use super::*;
use crate::media::LegCrypto;
use crate::ript::model::{Advertisement, CodecAd};

pub(super) const CALLER: &str = "127.0.0.1:5061";
pub(super) const TRUNK: &str = "127.0.0.1:5080";

pub(super) fn cfg() -> EngineConfig {
    EngineConfig {
        port_max: 20100,
        max_calls: 100,
        keepalive: None,
        max_calls_per_client: 3,
        ..EngineConfig::example()
    }
}

/// An engine driven with simulated time (shared with the other engine test modules).
pub(super) struct Sim {
    pub(super) e: Engine,
    pub(super) now: Instant,
    pub(super) out: Vec<Output>,
}

impl Sim {
    pub(super) fn new() -> Sim {
        Sim::with(cfg())
    }

    pub(super) fn with(cfg: EngineConfig) -> Sim {
        Sim {
            e: Engine::new(cfg, Arc::new(Metrics::default())),
            now: Instant::now(),
            out: vec![],
        }
    }

    pub(super) fn collect(&mut self) {
        while let Some(o) = self.e.poll_output() {
            self.out.push(o);
        }
    }

    pub(super) fn input(&mut self, i: Input) {
        self.e.handle_input(self.now, i);
        self.collect();
    }

    pub(super) fn sip(&mut self, text: &str, src: &str) {
        let (msg, info) = msg::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        self.input(Input::Sip(Box::new(SipInbound {
            msg,
            info,
            src: src.parse().unwrap(),
            transport: Transport::Udp,
            conn: None,
            peer_cert_sha256: None,
        })));
    }

    pub(super) fn ript(&mut self, e: RiptEvent) {
        self.input(Input::Ript(Box::new(e)));
    }

    /// Advances simulated time, firing every timer due on the way.
    pub(super) fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(at) = self.e.poll_timeout() {
            if at > until {
                break;
            }
            self.now = at.max(self.now);
            self.e.handle_timeout(self.now);
            self.collect();
        }
        self.now = until;
    }

    pub(super) fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// SIP messages sent since the last take, as text.
    pub(super) fn sip_out(&mut self) -> Vec<String> {
        sip_texts(&self.take())
    }
}

pub(super) fn start_lines(msgs: &[String]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.lines().next().unwrap_or("").to_string())
        .collect()
}

pub(super) const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n";

pub(super) fn invite(branch: &str, call_id: &str, sdp: &str) -> String {
    format!(
        "INVITE sip:answer@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@127.0.0.1>;tag=caller1\r\nTo: <sip:answer@127.0.0.1:5070>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{CALLER}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

pub(super) fn in_dialog(
    method: &str,
    branch: &str,
    cseq: u32,
    to_tag: &str,
    sdp: Option<&str>,
) -> String {
    let body = sdp.unwrap_or("");
    let ct = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    format!(
        "{method} sip:riptide@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@127.0.0.1>;tag=caller1\r\nTo: <sip:answer@127.0.0.1:5070>;tag={to_tag}\r\nCall-ID: cid-a\r\nCSeq: {cseq} {method}\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn cancel(branch: &str) -> String {
    format!(
        "CANCEL sip:answer@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@127.0.0.1>;tag=caller1\r\nTo: <sip:answer@127.0.0.1:5070>\r\nCall-ID: cid-a\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A response to a request the engine sent (parsed from its text).
pub(super) fn reply(req: &str, code: u16, reason: &str, to_tag: &str, sdp: Option<&str>) -> String {
    let hv = |name: &str| {
        req.lines()
            .find(|l| {
                l.to_ascii_lowercase()
                    .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            })
            .map(|l| l.split_once(':').unwrap().1.trim().to_string())
            .unwrap_or_default()
    };
    let body = sdp.unwrap_or("");
    let ct = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    format!(
        "SIP/2.0 {code} {reason}\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:callee@{TRUNK}>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        hv("Via"),
        hv("From"),
        {
            let to = hv("To");
            if to.contains(";tag=") {
                to
            } else {
                format!("{to};tag={to_tag}")
            }
        },
        hv("Call-ID"),
        hv("CSeq"),
        body.len()
    )
}

pub(super) fn to_tag_of(resp: &str) -> String {
    let to = resp.lines().find(|l| l.starts_with("To:")).unwrap();
    msg::param(to.split_once(':').unwrap().1, "tag").unwrap()
}

pub(super) fn pcmu_adv() -> Advertisement {
    let c = |t: &str, pt: u8| CodecAd {
        media_type: format!("audio/{t}"),
        clock_rate: 8000,
        channels: None,
        max_packet_time: None,
        packet_time: Some(20),
        payload_type: Some(pt),
        parameters: None,
    };
    Advertisement {
        codecs: vec![c("PCMU", 0), c("telephone-event", 101)],
    }
}

/// SIP messages among `out`, as text.
pub(super) fn sip_texts(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Sip(s) => Some(String::from_utf8_lossy(&s.bytes).into_owned()),
            _ => None,
        })
        .collect()
}

/// The key of the call our server accepted (`201`) among `out`.
pub(super) fn accepted_key(out: &[Output]) -> CallKey {
    out.iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::RespondCall {
                result: Ok(acc), ..
            }) => Some(acc.key),
            _ => None,
        })
        .expect("201 for the call")
}

/// `POST {TG}/calls` on TG `trunk` for `answer`, advertising PCMU and telephone-event.
pub(super) fn incoming_call(req: ReqId, from: Option<&str>, principal: &str) -> RiptEvent {
    RiptEvent::IncomingCall {
        req,
        tg: "trunk".into(),
        request: CallRequest {
            handler: None,
            destination: "answer".into(),
            from: from.map(str::to_string),
            passport: None,
            verstat: None,
            advertisement: Some(pcmu_adv()),
        },
        principal: principal.into(),
        origin: None,
        tns: vec![],
    }
}

/// As `incoming_call`, from a browser page at `origin`.
fn browser_call(req: ReqId, origin: &str) -> RiptEvent {
    match incoming_call(req, None, "page") {
        RiptEvent::IncomingCall {
            req,
            tg,
            request,
            principal,
            ..
        } => RiptEvent::IncomingCall {
            req,
            tg,
            request,
            principal,
            origin: Some(origin.into()),
            tns: vec![],
        },
        e => e,
    }
}

pub(super) fn description(p: Proposal) -> CallDescription {
    CallDescription {
        uri: "https://localhost:4434/.well-known/ript/v1/providertgs/trunk/calls/x1".into(),
        handler: None,
        direction: None,
        destination: "answer".into(),
        from: None,
        state: CallState::Proceeding,
        proposal: p,
        media_ticket: None,
    }
}

pub(super) fn ev(name: EventName, seq: u64) -> Event {
    let mut e = Event::new(name);
    e.seq = Some(seq);
    e
}

/// Caller side (gateway A): INVITE in, the RIPT call created; returns the call key.
pub(super) fn a_call_created(s: &mut Sim) -> CallKey {
    s.sip(&invite("z9hG4bKinv1", "cid-a", OFFER), CALLER);
    let out = s.take();
    let (key, adv) = created_call(&out).expect("CreateCall");
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Sip(s) if s.bytes.starts_with(b"SIP/2.0 100"))));
    call_made(s, key, &adv);
    s.take();
    key
}

/// The call `out` asks the HTTP/3 side to make, with its advertisement.
pub(super) fn created_call(out: &[Output]) -> Option<(CallKey, Advertisement)> {
    out.iter().find_map(|o| match o {
        Output::Ript(RiptCmd::CreateCall { call, request, .. }) => {
            Some((*call, request.advertisement.clone().unwrap()))
        }
        _ => None,
    })
}

/// The HTTP/3 side made call `key`, choosing from `adv` with the default codecs.
pub(super) fn call_made(s: &mut Sim, key: CallKey, adv: &Advertisement) {
    let proposal = negotiate::choose(adv, &crate::config::default_codecs()).unwrap();
    s.ript(RiptEvent::CallCreated {
        call: key,
        description: description(proposal),
    });
}

/// The RIPT side answers a caller-side call; returns the 200 sent to the caller.
pub(super) fn answer(s: &mut Sim, key: CallKey) -> String {
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Answered, 0),
    });
    s.sip_out().remove(0)
}

/// Caller side, answered and ACKed; returns the key and our To tag.
fn a_call_answered(s: &mut Sim) -> (CallKey, String) {
    let key = a_call_created(s);
    let tag = to_tag_of(&answer(s, key));
    s.sip(&in_dialog("ACK", "z9hG4bKack1", 1, &tag, None), CALLER);
    (key, tag)
}

#[test]
fn sip_call_in_becomes_ript_call_and_answer_becomes_200_with_chosen_codec() {
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Alerting, 0),
    });
    assert_eq!(start_lines(&s.sip_out()), vec!["SIP/2.0 180 Ringing"]);
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Answered, 1),
    });
    let msgs = s.sip_out();
    assert_eq!(start_lines(&msgs), vec!["SIP/2.0 200 OK"]);
    assert!(
        msgs[0].contains("m=audio 20000 RTP/AVP 0 101"),
        "{}",
        msgs[0]
    );
    // Topology hiding: nothing of the far side's addressing, our own Contact.
    assert!(msgs[0].contains("Contact: <sip:riptide@127.0.0.1:5070>"));
}

#[test]
fn answer_2xx_is_retransmitted_until_ack() {
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    let ok = answer(&mut s, key);
    let tag = to_tag_of(&ok);
    s.advance(Duration::from_millis(1600));
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["SIP/2.0 200 OK", "SIP/2.0 200 OK"],
        "retransmitted at T1 and 2*T1"
    );
    s.sip(&in_dialog("ACK", "z9hG4bKack1", 1, &tag, None), CALLER);
    s.advance(Duration::from_secs(40));
    assert!(s.sip_out().is_empty(), "no retransmission after the ACK");
}

#[test]
fn cancel_before_answer_gives_487_and_ends_ript_leg() {
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    s.sip(&cancel("z9hG4bKinv1"), CALLER);
    let out = s.take();
    let sips = sip_texts(&out);
    assert_eq!(
        start_lines(&sips),
        vec!["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]
    );
    assert!(out.iter().any(|o| matches!(o,
        Output::Ript(RiptCmd::ClientSend { call, event }) if *call == key && event.name == EventName::End
            && event.reason.as_deref().unwrap_or("").contains("487"))));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Ript(RiptCmd::ClientClose { call }) if *call == key)));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaCmd::Close { call }) if *call == key)));
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn the_port_gauges_count_the_range_and_the_calls_holding_a_port() {
    let gauge = |s: &Sim| {
        let m = &s.e.metrics;
        (
            m.media_port_pairs
                .load(std::sync::atomic::Ordering::Relaxed),
            m.media_port_pairs_held
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let mut s = Sim::new();
    let pairs = crate::config::port_pairs(s.e.cfg.port_min, s.e.cfg.port_max) as u64;
    assert!(pairs > 1);
    assert_eq!(gauge(&s), (pairs, 0));
    a_call_created(&mut s);
    assert_eq!(gauge(&s), (pairs, 1));
    s.sip(&cancel("z9hG4bKinv1"), CALLER);
    s.take();
    assert_eq!(s.e.active_calls(), 0);
    assert_eq!(gauge(&s), (pairs, 0), "a cooling port is not held");
}

#[test]
fn cancel_crossing_our_200_has_no_effect_and_the_call_continues() {
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    let ok = answer(&mut s, key);
    let tag = to_tag_of(&ok);
    // The caller's CANCEL was sent before our 200 reached it.
    s.sip(&cancel("z9hG4bKinv1"), CALLER);
    let out = s.take();
    let sips = sip_texts(&out);
    assert_eq!(
        start_lines(&sips),
        vec!["SIP/2.0 200 OK"],
        "200 for the CANCEL only"
    );
    assert!(sips[0].contains("CSeq: 1 CANCEL"));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Ript(_))),
        "RIPT leg untouched"
    );
    assert_eq!(s.e.active_calls(), 1);
    s.sip(&in_dialog("ACK", "z9hG4bKack1", 1, &tag, None), CALLER);
    s.sip(&in_dialog("BYE", "z9hG4bKbye1", 2, &tag, None), CALLER);
    let out = s.take();
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Sip(s) if s.bytes.starts_with(b"SIP/2.0 200 OK"))));
    assert!(out.iter().any(|o| matches!(o,
        Output::Ript(RiptCmd::ClientSend { event, .. }) if event.name == EventName::End)));
    assert_eq!(s.e.active_calls(), 0);
}

/// Callee side (gateway B): a RIPT call in, its client's events stream open, the INVITE sent
/// to the trunk; returns key and INVITE.
pub(super) fn b_invite_sent(s: &mut Sim) -> (CallKey, String) {
    let (key, invite) = b_invite_sent_no_stream(s);
    s.ript(RiptEvent::ServerEventsOpened { call: key });
    s.take();
    (key, invite)
}

/// As `b_invite_sent`, but the client never opens its events stream.
pub(super) fn b_invite_sent_no_stream(s: &mut Sim) -> (CallKey, String) {
    s.ript(incoming_call(ReqId(1), Some("+12155551212"), "gateway-a"));
    let out = s.take();
    let key = accepted_key(&out);
    let invite = sip_texts(&out)
        .into_iter()
        .next()
        .expect("INVITE to the trunk");
    assert!(
        invite.starts_with("INVITE sip:answer@127.0.0.1:5080 SIP/2.0"),
        "{invite}"
    );
    assert!(
        invite.contains("m=audio 200") && invite.contains(" RTP/AVP 0 101\r\n"),
        "a port from the range, PCMU + telephone-event: {invite}"
    );
    (key, invite)
}

/// A call placed on the trunk that rang (180 with To tag `tag`) until the RIPT caller hung up:
/// its key, the INVITE, and the CANCEL that went out.
fn b_cancelled_while_ringing(s: &mut Sim, tag: &str) -> (CallKey, String, String) {
    let (key, inv) = b_invite_sent(s);
    s.sip(&reply(&inv, 180, "Ringing", tag, None), TRUNK);
    s.take();
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: ev(EventName::End, 0),
    });
    let msgs = s.sip_out();
    assert_eq!(
        start_lines(&msgs),
        vec!["CANCEL sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
    (key, inv, msgs[0].clone())
}

pub(super) fn server_events(out: &[Output]) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Ript(RiptCmd::ServerSend { event, .. }) => Some(event.clone()),
            _ => None,
        })
        .collect()
}

pub(super) const ANSWER: &str = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

#[test]
fn end_before_any_provisional_waits_then_cancels_and_a_crossing_200_gets_ack_and_bye() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    // BYE during setup: the RIPT caller hangs up before the trunk said anything.
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: ev(EventName::End, 0),
    });
    let out = s.take();
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Sip(s) if s.bytes.starts_with(b"CANCEL"))),
        "RFC 3261 §9.1: no CANCEL before a provisional"
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Ript(RiptCmd::ServerEnd { call }) if *call == key)));
    s.sip(&reply(&inv, 180, "Ringing", "callee1", None), TRUNK);
    let msgs = s.sip_out();
    assert_eq!(
        start_lines(&msgs),
        vec!["CANCEL sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
    // The callee answered at the same moment: the 200 crosses the CANCEL.
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(ANSWER)), TRUNK);
    let msgs = s.sip_out();
    let lines = start_lines(&msgs);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ACK sip:callee@127.0.0.1:5080")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("BYE sip:callee@127.0.0.1:5080")),
        "{lines:?}"
    );
    let bye = msgs.iter().find(|m| m.starts_with("BYE")).unwrap();
    assert!(bye.contains("Reason: "), "{bye}");
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn end_after_ringing_cancels_and_487_is_acked() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 180, "Ringing", "callee1", None), TRUNK);
    let evs = server_events(&s.take());
    assert_eq!(evs[0].name, EventName::Alerting);
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: ev(EventName::End, 0),
    });
    let msgs = s.sip_out();
    assert_eq!(
        start_lines(&msgs),
        vec!["CANCEL sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
    // The 200 to the CANCEL carries the INVITE's branch: it must not be taken for the
    // INVITE's 200 (no ACK, no BYE), and it stops the CANCEL's retransmissions.
    s.sip(&reply(&msgs[0], 200, "OK", "callee1", None), TRUNK);
    assert!(s.sip_out().is_empty(), "nothing answers a 200 to CANCEL");
    s.advance(Duration::from_secs(5));
    assert!(
        s.sip_out().is_empty(),
        "CANCEL not retransmitted after its 200"
    );
    s.sip(
        &reply(&inv, 487, "Request Terminated", "callee1", None),
        TRUNK,
    );
    let msgs = s.sip_out();
    assert_eq!(
        start_lines(&msgs),
        vec!["ACK sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn unanswered_invite_times_out_with_timer_b_as_failed_408() {
    let mut s = Sim::new();
    let (key, _inv) = b_invite_sent(&mut s);
    s.advance(Duration::from_millis(31_600));
    let msgs = s.sip_out();
    assert_eq!(
        msgs.len(),
        6,
        "Timer A retransmissions at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s"
    );
    assert!(server_events(&s.take()).is_empty());
    s.advance(Duration::from_millis(500));
    let out = s.take();
    let evs = server_events(&out);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].name, EventName::Failed);
    assert_eq!(evs[0].code, Some(408));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Ript(RiptCmd::ServerEnd { call }) if *call == key)));
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn ringing_past_the_no_answer_timeout_cancels_with_noanswer() {
    let mut s = Sim::new();
    let (_key, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 180, "Ringing", "callee1", None), TRUNK);
    s.take();
    s.advance(Duration::from_secs(61));
    let out = s.take();
    let evs = server_events(&out);
    assert_eq!(
        evs.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
        vec![EventName::Noanswer]
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Sip(s) if s.bytes.starts_with(b"CANCEL"))));
}

#[test]
fn events_stream_loss_is_reopened_with_backoff_and_replayed_events_are_deduplicated() {
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Alerting, 0),
    });
    assert_eq!(start_lines(&s.sip_out()), vec!["SIP/2.0 180 Ringing"]);
    s.ript(RiptEvent::ClientEventsLost { call: key });
    assert!(s.take().is_empty(), "no reopen before the backoff");
    s.advance(Duration::from_secs(1));
    assert!(s
        .take()
        .iter()
        .any(|o| matches!(o, Output::Ript(RiptCmd::ClientReopenEvents { call }) if *call == key)));
    // The server replays the current state on the new stream, then the call goes on.
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Alerting, 0),
    });
    assert!(
        s.sip_out().is_empty(),
        "replayed alerting is not a second 180"
    );
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Answered, 1),
    });
    assert_eq!(start_lines(&s.sip_out()), vec!["SIP/2.0 200 OK"]);
}

#[test]
fn events_stream_that_never_comes_back_ends_the_call() {
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    for _ in 0..9 {
        s.ript(RiptEvent::ClientEventsLost { call: key });
        s.advance(Duration::from_secs(3));
    }
    let msgs = s.sip_out();
    assert!(
        start_lines(&msgs)
            .iter()
            .any(|l| l.starts_with("SIP/2.0 503")),
        "{:?}",
        start_lines(&msgs)
    );
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn server_call_without_events_stream_ends_after_grace() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(ANSWER)), TRUNK);
    s.take();
    s.ript(RiptEvent::ServerEventsClosed { call: key });
    s.advance(Duration::from_secs(10));
    s.ript(RiptEvent::ServerEventsOpened { call: key });
    s.advance(Duration::from_secs(40));
    assert!(
        !s.sip_out().iter().any(|m| m.starts_with("BYE")),
        "re-opened in time"
    );
    s.ript(RiptEvent::ServerEventsClosed { call: key });
    s.advance(Duration::from_secs(31));
    assert!(s.sip_out().iter().any(|m| m.starts_with("BYE")));
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn reinvite_glare_gets_491_and_our_reinvite_is_retried() {
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    let ok = answer(&mut s, key);
    let tag = to_tag_of(&ok);
    s.sip(&in_dialog("ACK", "z9hG4bKack1", 1, &tag, None), CALLER);
    // The far RIPT side puts the call on hold: we re-INVITE the caller.
    let mut hold = ev(EventName::Hold, 1);
    hold.media_direction = Some("sendonly".into());
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: hold,
    });
    let msgs = s.sip_out();
    assert_eq!(
        start_lines(&msgs),
        vec!["INVITE sip:caller@127.0.0.1:5061 SIP/2.0"]
    );
    let our_reinvite = msgs[0].clone();
    assert!(our_reinvite.contains("a=sendonly"));
    // At the same time the caller re-INVITEs us: glare.
    let offer = OFFER.replace("a=sendrecv", "a=sendonly");
    s.sip(
        &in_dialog("INVITE", "z9hG4bKre2", 2, &tag, Some(&offer)),
        CALLER,
    );
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["SIP/2.0 491 Request Pending"]
    );
    s.sip(&in_dialog("ACK", "z9hG4bKre2", 2, &tag, None), CALLER);
    // The caller answers ours with 491 too; we retry after a random wait (≤ 2 s for the
    // non-owner of the Call-ID).
    let resp = reply(&our_reinvite, 491, "Request Pending", "caller1", None);
    s.sip(&resp, CALLER);
    let msgs = s.sip_out();
    assert!(
        start_lines(&msgs).iter().any(|l| l.starts_with("ACK")),
        "491 is ACKed: {:?}",
        start_lines(&msgs)
    );
    s.advance(Duration::from_millis(2001));
    let msgs = s.sip_out();
    let lines = start_lines(&msgs);
    assert!(!lines.is_empty(), "retried within 2 s");
    assert!(
        lines
            .iter()
            .all(|l| l == "INVITE sip:caller@127.0.0.1:5061 SIP/2.0"),
        "{lines:?}"
    );
    assert!(msgs[0].contains("a=sendonly"));
}

#[test]
fn hold_reinvite_is_answered_and_relayed_as_hold_event_and_refresh_is_not() {
    let mut s = Sim::new();
    let (_, tag) = a_call_answered(&mut s);
    let hold = OFFER.replace("a=sendrecv", "a=sendonly");
    s.sip(
        &in_dialog("INVITE", "z9hG4bKre2", 2, &tag, Some(&hold)),
        CALLER,
    );
    let out = s.take();
    let ok = sip_texts(&out).into_iter().next().unwrap();
    assert!(
        ok.starts_with("SIP/2.0 200 OK") && ok.contains("a=recvonly"),
        "{ok}"
    );
    assert!(out.iter().any(
        |o| matches!(o, Output::Ript(RiptCmd::ClientSend { event, .. })
        if event.name == EventName::Hold && event.media_direction.as_deref() == Some("sendonly"))
    ));
    s.sip(&in_dialog("ACK", "z9hG4bKack2", 2, &tag, None), CALLER);
    // Session refresh with the same offer: 200, no event.
    s.sip(
        &in_dialog("INVITE", "z9hG4bKre3", 3, &tag, Some(&hold)),
        CALLER,
    );
    let out = s.take();
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Sip(s) if s.bytes.starts_with(b"SIP/2.0 200"))));
    assert!(!out.iter().any(|o| matches!(o, Output::Ript(_))));
    // UPDATE resuming.
    s.sip(&in_dialog("ACK", "z9hG4bKack3", 3, &tag, None), CALLER);
    s.sip(
        &in_dialog("UPDATE", "z9hG4bKup4", 4, &tag, Some(OFFER)),
        CALLER,
    );
    let out = s.take();
    assert!(out.iter().any(|o| matches!(o, Output::Sip(s) if s.bytes.starts_with(b"SIP/2.0 200") && String::from_utf8_lossy(&s.bytes).contains("a=sendrecv"))));
    assert!(out.iter().any(
        |o| matches!(o, Output::Ript(RiptCmd::ClientSend { event, .. })
        if event.name == EventName::Hold && event.media_direction.as_deref() == Some("sendrecv"))
    ));
}

/// The silence limits given to the media hub among `out`.
fn silence_watches(out: &[Output]) -> Vec<Option<Duration>> {
    out.iter()
        .filter_map(|o| match o {
            Output::Media(MediaCmd::WatchSilence { limit, .. }) => Some(*limit),
            _ => None,
        })
        .collect()
}

#[test]
fn a_held_call_is_watched_for_silence_with_the_hold_limit_and_an_active_one_with_the_short() {
    const ACTIVE: Option<Duration> = Some(Duration::from_secs(60));
    const HELD: Option<Duration> = Some(Duration::from_secs(3600));
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Answered, 0),
    });
    let out = s.take();
    let tag = to_tag_of(&sip_texts(&out)[0]);
    assert_eq!(
        silence_watches(&out),
        vec![ACTIVE],
        "watched from the answer"
    );
    s.sip(&in_dialog("ACK", "z9hG4bKack1", 1, &tag, None), CALLER);
    // The caller holds (RFC 3264 §8.4, sendonly): a holder may send nothing at all.
    let sendonly = OFFER.replace("a=sendrecv", "a=sendonly");
    s.sip(
        &in_dialog("INVITE", "z9hG4bKre2", 2, &tag, Some(&sendonly)),
        CALLER,
    );
    assert_eq!(silence_watches(&s.take()), vec![HELD]);
    // A report under the 60 s limit that was under way is stale now.
    s.input(Input::Media(MediaEvent::Silent {
        call: key,
        silent_for: Duration::from_secs(60),
    }));
    assert!(s.take().is_empty(), "stale silence");
    assert_eq!(s.e.active_calls(), 1);
    s.sip(&in_dialog("ACK", "z9hG4bKack2", 2, &tag, None), CALLER);
    // inactive: still held, nothing new to say.
    let inactive = OFFER.replace("a=sendrecv", "a=inactive");
    s.sip(
        &in_dialog("INVITE", "z9hG4bKre3", 3, &tag, Some(&inactive)),
        CALLER,
    );
    assert!(silence_watches(&s.take()).is_empty());
    s.sip(&in_dialog("ACK", "z9hG4bKack3", 3, &tag, None), CALLER);
    s.sip(
        &in_dialog("UPDATE", "z9hG4bKup4", 4, &tag, Some(OFFER)),
        CALLER,
    );
    assert_eq!(silence_watches(&s.take()), vec![ACTIVE], "resumed");
    // An offerless re-INVITE: our 200 offers, the ACK answers with a hold.
    s.sip(&in_dialog("INVITE", "z9hG4bKre5", 5, &tag, None), CALLER);
    let ok = s.sip_out().remove(0);
    assert!(
        ok.starts_with("SIP/2.0 200") && ok.contains("m=audio"),
        "{ok}"
    );
    let answer = ANSWER.replace("a=sendrecv", "a=recvonly");
    s.sip(
        &in_dialog("ACK", "z9hG4bKack5", 5, &tag, Some(&answer)),
        CALLER,
    );
    let out = s.take();
    assert_eq!(silence_watches(&out), vec![HELD], "the ACK's answer holds");
    assert!(
        out.iter().any(|o| matches!(o,
            Output::Media(MediaCmd::SetRemote { rtp, .. }) if rtp.port() == 7000)),
        "the ACK's answer says where media goes: {out:?}"
    );
    // A callee that answers our INVITE recvonly holds from the start.
    let mut s = Sim::new();
    let (_, inv) = b_invite_sent(&mut s);
    let held = ANSWER.replace("a=sendrecv", "a=recvonly");
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(&held)), TRUNK);
    assert_eq!(silence_watches(&s.take()), vec![HELD]);
}

#[test]
fn a_media_timeout_before_the_callers_ack_ends_the_http3_side_once() {
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Answered, 0),
    });
    s.take();
    // No ACK yet, and the caller sends nothing.
    s.input(Input::Media(MediaEvent::Silent {
        call: key,
        silent_for: Duration::from_secs(60),
    }));
    let out = s.take();
    assert!(sent_to(&out, "BYE ").is_empty(), "no BYE before the ACK");
    let ends = |out: &[Output]| {
        out.iter()
            .filter(|o| {
                matches!(o, Output::Ript(RiptCmd::ClientClose { .. }))
                    || matches!(o, Output::Ript(RiptCmd::ClientSend { event, .. }) if event.name == EventName::End)
            })
            .count()
    };
    assert_eq!(ends(&out), 2, "one end event, one close: {out:?}");
    // The ACK never comes: the BYE goes with the media timeout's reason, and the HTTP/3 side,
    // already closed, hears nothing more.
    s.advance(Duration::from_secs(40));
    let out = s.take();
    let byes = sent_to(&out, "BYE ");
    assert!(!byes.is_empty(), "{:?}", sip_texts(&out));
    assert!(
        byes.iter().all(|(_, b)| b.contains("cause=102")),
        "{byes:?}"
    );
    assert_eq!(ends(&out), 0, "{out:?}");
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn a_sip_peer_gone_silent_ends_the_call_on_both_sides_with_a_media_timeout() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    // Ringing: silence does not count before the answer.
    s.sip(&reply(&inv, 180, "Ringing", "callee1", None), TRUNK);
    s.take();
    s.input(Input::Media(MediaEvent::Silent {
        call: key,
        silent_for: Duration::from_secs(61),
    }));
    assert!(s.take().is_empty(), "not answered yet");
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(ANSWER)), TRUNK);
    assert_eq!(
        silence_watches(&s.take()),
        vec![Some(Duration::from_secs(60))]
    );
    s.input(Input::Media(MediaEvent::Silent {
        call: key,
        silent_for: Duration::from_secs(60),
    }));
    let out = s.take();
    let (to, bye) = request_to(&out, "BYE");
    assert_eq!(to, TRUNK.parse::<SocketAddr>().unwrap());
    assert!(
        bye.contains("Reason: Q.850;cause=102;text=\"Media timeout\""),
        "{bye}"
    );
    let evs = server_events(&out);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].name, EventName::End);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Ript(RiptCmd::ServerEnd { call }) if *call == key)),
        "{out:?}"
    );
    assert_eq!(s.e.active_calls(), 0);
    assert_eq!(s.e.metrics.media_timeouts.load(Ordering::Relaxed), 1);
    // Without limits configured, nothing is watched.
    let mut s = Sim::with(EngineConfig {
        media_timeout: None,
        hold_media_timeout: None,
        ..cfg()
    });
    let (_, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(ANSWER)), TRUNK);
    assert_eq!(silence_watches(&s.take()), vec![None]);
}

#[test]
fn busy_maps_both_ways() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 486, "Busy Here", "callee1", None), TRUNK);
    let out = s.take();
    let evs = server_events(&out);
    assert_eq!(evs[0].name, EventName::Declined);
    assert_eq!(evs[0].code, Some(486));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Sip(s) if s.bytes.starts_with(b"ACK"))));
    let _ = key;
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    let mut d = ev(EventName::Declined, 0);
    d.code = Some(486);
    d.reason = Some("Busy Here".into());
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: d,
    });
    assert_eq!(start_lines(&s.sip_out()), vec!["SIP/2.0 486 Busy Here"]);
}

#[test]
fn no_common_codec_is_488_with_warning() {
    let mut s = Sim::new();
    let g729 = OFFER.replace("0 8 101", "18").replace("a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n", "");
    s.sip(&invite("z9hG4bKinv9", "cid-9", &g729), CALLER);
    let msgs = s.sip_out();
    let lines = start_lines(&msgs);
    assert_eq!(
        lines,
        vec!["SIP/2.0 100 Trying", "SIP/2.0 488 Not Acceptable Here"]
    );
    assert!(msgs[1].contains("Warning: 399 riptide"), "{}", msgs[1]);
}

#[test]
fn options_and_unknown_dialogs() {
    let mut s = Sim::new();
    let opt = "OPTIONS sip:127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKo1\r\nMax-Forwards: 70\r\nFrom: <sip:ping@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1:5070>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    s.sip(opt, CALLER);
    let m = s.sip_out().remove(0);
    assert!(m.starts_with("SIP/2.0 200 OK"));
    assert!(m.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS"));
    assert!(m.contains("Supported: "));
    assert!(m.contains("Accept: application/sdp"));
    s.sip(&in_dialog("BYE", "z9hG4bKx", 2, "nosuch", None), CALLER);
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
}

#[test]
fn invite_retransmission_is_absorbed() {
    let mut s = Sim::new();
    s.sip(&invite("z9hG4bKinv1", "cid-a", OFFER), CALLER);
    s.take();
    s.sip(&invite("z9hG4bKinv1", "cid-a", OFFER), CALLER);
    let out = s.take();
    assert_eq!(out.len(), 1, "only the 100 is re-sent: {out:?}");
    assert_eq!(s.e.active_calls(), 1);
}

#[test]
fn redirect_from_the_trunk_is_followed_to_its_contact() {
    let mut s = Sim::new();
    let (_key, inv) = b_invite_sent(&mut s);
    let moved = reply(&inv, 302, "Moved Temporarily", "callee1", None).replace(
        "Contact: <sip:callee@127.0.0.1:5080>",
        "Contact: <sip:other@127.0.0.1:5090>",
    );
    s.sip(&moved, TRUNK);
    let msgs = s.sip_out();
    let lines = start_lines(&msgs);
    assert_eq!(
        lines,
        vec![
            "ACK sip:answer@127.0.0.1:5080 SIP/2.0",
            "INVITE sip:other@127.0.0.1:5090 SIP/2.0"
        ],
        "the 302 is ACKed and the call follows the Contact"
    );
    let out = s.take();
    assert!(
        server_events(&out).is_empty(),
        "no failure reported to the RIPT side"
    );
}

/// The two addresses of a redirect's host name in the tests.
const REDIRECT_A: &str = "127.0.0.1:5090";
const REDIRECT_B: &str = "127.0.0.3:5090";

/// The trunk's 302 to `inv`, naming `contact`.
fn moved(inv: &str, contact: &str) -> String {
    reply(inv, 302, "Moved Temporarily", "callee1", None).replace(
        "Contact: <sip:callee@127.0.0.1:5080>",
        &format!("Contact: {contact}"),
    )
}

#[test]
fn a_redirect_to_a_host_name_is_looked_up_and_its_addresses_tried_in_turn() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    s.sip(&moved(&inv, "<sip:other@lnp.example.net>"), TRUNK);
    let out = s.take();
    assert_eq!(
        start_lines(&sip_texts(&out)),
        vec!["ACK sip:answer@127.0.0.1:5080 SIP/2.0"],
        "the 302 is ACKed; the INVITE waits for the name"
    );
    assert_eq!(
        lookups(&out),
        vec![(key, "sip:other@lnp.example.net".to_string(), Transport::Udp)]
    );
    assert!(server_events(&out).is_empty(), "nothing failed");
    let out = found(
        &mut s,
        key,
        "sip:other@lnp.example.net",
        &[REDIRECT_A, REDIRECT_B],
    );
    let (to, again) = request_to(&out, "INVITE");
    assert_eq!(to, REDIRECT_A.parse::<SocketAddr>().unwrap());
    assert!(
        again.starts_with("INVITE sip:other@lnp.example.net SIP/2.0"),
        "{again}"
    );
    // The first address is unavailable: the name's next one gets the INVITE (RFC 3263 §4.3).
    s.sip(&unavailable(&again, "busy1"), REDIRECT_A);
    let (to, _) = request_to(&s.take(), "INVITE");
    assert_eq!(to, REDIRECT_B.parse::<SocketAddr>().unwrap());
}

#[test]
fn a_redirect_whose_name_is_not_found_fails_the_call_with_the_redirect() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    s.sip(&moved(&inv, "<sip:other@nowhere.example.net>"), TRUNK);
    s.take();
    s.input(Input::HopAddr {
        call: key,
        uri: "sip:other@nowhere.example.net".into(),
        addrs: Err("NXDOMAIN".into()),
    });
    let out = s.take();
    assert!(sent_to(&out, "INVITE ").is_empty());
    let evs = server_events(&out);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(
        (evs[0].name.clone(), evs[0].code),
        (EventName::Failed, Some(302))
    );
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn a_caller_who_hangs_up_during_a_redirect_lookup_ends_the_call_at_once() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    s.sip(&moved(&inv, "<sip:other@lnp.example.net>"), TRUNK);
    s.take();
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: ev(EventName::End, 0),
    });
    let out = s.take();
    assert!(
        sip_texts(&out).is_empty(),
        "no INVITE is out: nothing to cancel"
    );
    assert_eq!(s.e.active_calls(), 0);
    let late = found(&mut s, key, "sip:other@lnp.example.net", &[REDIRECT_A]);
    assert!(sip_texts(&late).is_empty(), "the answer comes too late");
}

#[test]
fn a_redirect_crossing_our_cancel_is_not_followed() {
    let mut s = Sim::new();
    let (_, inv, _) = b_cancelled_while_ringing(&mut s, "callee1");
    s.sip(&moved(&inv, "<sip:other@127.0.0.1:5090>"), TRUNK);
    let msgs = s.sip_out();
    assert_eq!(
        start_lines(&msgs),
        vec!["ACK sip:answer@127.0.0.1:5080 SIP/2.0"],
        "the caller has hung up: the 302 ends the call"
    );
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn no_redirect_leaves_tls_for_a_weaker_transport_or_goes_to_a_tls_host_name() {
    // From TLS to UDP (RFC 3261 §26.2.2), by name or IP literal; and to a TLS host name, where
    // there is no certificate name to check the connection against.
    for (trunk, contact) in [
        (Transport::Tls, "<sip:other@lnp.example.net>"),
        (Transport::Tls, "<sip:other@127.0.0.1:5090>"),
        (Transport::Udp, "<sips:other@lnp.example.net>"),
    ] {
        let mut s = Sim::new();
        s.e.cfg.trunks[0].dest.transport = trunk;
        let (_, inv) = b_invite_sent(&mut s);
        s.sip(&moved(&inv, contact), TRUNK);
        let out = s.take();
        assert!(lookups(&out).is_empty(), "{contact}");
        assert!(sent_to(&out, "INVITE ").is_empty(), "{contact}");
        let evs = server_events(&out);
        assert_eq!(
            (evs[0].name.clone(), evs[0].code),
            (EventName::Failed, Some(302)),
            "{contact}"
        );
    }
}

#[test]
fn max_forwards_zero_is_refused_with_483() {
    let mut s = Sim::new();
    let inv = invite("z9hG4bKmf", "cid-mf", OFFER).replace("Max-Forwards: 70", "Max-Forwards: 0");
    s.sip(&inv, CALLER);
    assert_eq!(start_lines(&s.sip_out()), vec!["SIP/2.0 483 Too Many Hops"]);
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn record_route_is_echoed_and_in_dialog_requests_follow_the_route_set() {
    let mut s = Sim::new();
    let inv = invite("z9hG4bKrr", "cid-a", OFFER).replace(
        "Contact: <sip:caller@127.0.0.1:5061>",
        "Record-Route: <sip:127.0.0.1:5099;lr>\r\nContact: <sip:caller@127.0.0.1:5061>",
    );
    s.sip(&inv, CALLER);
    let out = s.take();
    let key = created_call(&out).unwrap();
    call_made(&mut s, key.0, &key.1);
    s.ript(RiptEvent::ClientEvent {
        call: key.0,
        event: ev(EventName::Answered, 0),
    });
    let ok = s.sip_out().remove(0);
    assert!(ok.contains("Record-Route: <sip:127.0.0.1:5099;lr>"), "{ok}");
    let tag = to_tag_of(&ok);
    let ack = in_dialog("ACK", "z9hG4bKack", 1, &tag, None);
    s.sip(&ack, CALLER);
    // The far side hangs up: our BYE carries the route set.
    s.ript(RiptEvent::ClientEvent {
        call: key.0,
        event: ev(EventName::End, 1),
    });
    let bye = s
        .sip_out()
        .into_iter()
        .find(|m| m.starts_with("BYE"))
        .expect("BYE");
    assert!(
        bye.starts_with("BYE sip:caller@127.0.0.1:5061 SIP/2.0"),
        "{bye}"
    );
    assert!(bye.contains("Route: <sip:127.0.0.1:5099;lr>"), "{bye}");
    assert!(bye.contains("Reason: Q.850;cause=16"), "{bye}");
}

#[test]
fn a_strict_router_in_the_route_set_gets_the_request_uri_and_the_target_goes_last() {
    // RFC 3261 §12.2.1.1: a first route without `lr` is a strict router (RFC 2543). It is
    // put in the Request-URI, and the remote target becomes the last Route.
    let (key, _, out) = b_call_answered_with(&mut Sim::new(), |inv| {
        ok_naming(
            inv,
            "<sip:callee@127.0.0.1:5080>",
            Some("<sip:127.0.0.1:5098;lr>, <sip:127.0.0.1:5099>"),
        )
    });
    let _ = key;
    let (to, ack) = request_to(&out, "ACK");
    assert_eq!(to, "127.0.0.1:5099".parse::<SocketAddr>().unwrap());
    assert!(ack.starts_with("ACK sip:127.0.0.1:5099 SIP/2.0"), "{ack}");
    assert!(
        ack.contains("Route: <sip:127.0.0.1:5098;lr>\r\nRoute: <sip:callee@127.0.0.1:5080>\r\n"),
        "{ack}"
    );
    // A loose router first: the target stays in the Request-URI.
    let mut s = Sim::new();
    let (key, _, out) = b_call_answered_with(&mut s, |inv| {
        ok_naming(
            inv,
            "<sip:callee@127.0.0.1:5080>",
            Some("<sip:127.0.0.1:5099>, <sip:127.0.0.1:5098;LR>"),
        )
    });
    let (to, ack) = request_to(&out, "ACK");
    assert_eq!(to, "127.0.0.1:5098".parse::<SocketAddr>().unwrap());
    assert!(
        ack.starts_with("ACK sip:callee@127.0.0.1:5080 SIP/2.0"),
        "{ack}"
    );
    let (_, bye) = b_hangs_up(&mut s, key);
    assert!(
        bye.starts_with("BYE sip:callee@127.0.0.1:5080 SIP/2.0"),
        "{bye}"
    );
    assert!(
        bye.contains("Route: <sip:127.0.0.1:5098;LR>\r\nRoute: <sip:127.0.0.1:5099>\r\n"),
        "{bye}"
    );
}

#[test]
fn cancelled_invite_that_never_gets_a_final_is_freed_after_64_t1() {
    let mut s = Sim::new();
    let (_, _, cancel) = b_cancelled_while_ringing(&mut s, "callee1");
    s.sip(&reply(&cancel, 200, "OK", "callee1", None), TRUNK);
    assert_eq!(
        s.e.active_calls(),
        1,
        "waits for the INVITE's final response"
    );
    // The UAS never answers the INVITE (RFC 3261 §9.1: give up 64*T1 after the CANCEL).
    s.advance(Duration::from_secs(33));
    assert_eq!(s.e.active_calls(), 0, "call freed");
    assert_eq!(
        s.e.pending_transactions(),
        (0, 0),
        "no transaction left behind"
    );
}

#[test]
fn ack_for_2xx_carries_the_invite_cseq_and_is_resent_on_2xx_retransmission() {
    let mut s = Sim::new();
    let (_key, inv) = b_invite_sent(&mut s);
    assert!(inv.contains("CSeq: 1 INVITE"));
    let ok = reply(&inv, 200, "OK", "callee1", Some(ANSWER));
    s.sip(&ok, TRUNK);
    let ack = s
        .sip_out()
        .into_iter()
        .find(|m| m.starts_with("ACK"))
        .expect("ACK");
    assert!(ack.contains("CSeq: 1 ACK"), "RFC 3261 §13.2.2.4: {ack}");
    s.sip(&ok, TRUNK);
    let again = s.sip_out();
    assert_eq!(again, vec![ack], "the same ACK for the retransmitted 2xx");
}

#[test]
fn cancel_is_sent_after_a_100_trying() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: ev(EventName::End, 0),
    });
    s.take();
    s.sip(
        &reply(&inv, 100, "Trying", "x", None).replace(";tag=x", ""),
        TRUNK,
    );
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["CANCEL sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
}

#[test]
fn cancel_while_the_ript_post_is_in_flight_ends_the_far_call_once_created() {
    let mut s = Sim::new();
    s.sip(&invite("z9hG4bKinv1", "cid-a", OFFER), CALLER);
    let key = s
        .take()
        .iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::CreateCall { call, .. }) => Some(*call),
            _ => None,
        })
        .unwrap();
    s.sip(&cancel("z9hG4bKinv1"), CALLER);
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]
    );
    assert_eq!(s.e.active_calls(), 0);
    s.ript(RiptEvent::CallCreated {
        call: key,
        description: description(Proposal::default()),
    });
    let out = s.take();
    assert!(out.iter().any(|o| matches!(o,
        Output::Ript(RiptCmd::ClientSend { call, event }) if *call == key && event.name == EventName::End)));
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Ript(RiptCmd::ClientClose { call }) if *call == key)));
}

#[test]
fn reasons_from_the_ript_side_cannot_inject_sip_headers() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(ANSWER)), TRUNK);
    s.take();
    let mut end = ev(EventName::End, 0);
    end.reason = Some("Q.850;cause=16\r\nContent-Length: 900\r\n\r\nX".into());
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: end,
    });
    let bye = s
        .sip_out()
        .into_iter()
        .find(|m| m.starts_with("BYE"))
        .expect("BYE");
    let (head, body) = bye.split_once("\r\n\r\n").unwrap();
    assert!(body.is_empty(), "nothing after the headers: {bye:?}");
    assert!(!head.contains("Content-Length: 900"), "{bye:?}");
    assert!(head.contains("Reason: Q.850;cause=16"), "{bye:?}");
    // A failure phrase with CR/LF becomes a clean status line on the other gateway.
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    let mut f = ev(EventName::Failed, 0);
    f.code = Some(503);
    f.reason = Some("Down\r\nX-Evil: 1".into());
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: f,
    });
    let m = s.sip_out().remove(0);
    assert!(m.starts_with("SIP/2.0 503 DownX-Evil\r\n"), "{m:?}");
    assert!(!m.contains("\r\nX-Evil"), "{m:?}");
}

#[test]
fn the_media_is_told_the_offer_rtcp_address() {
    // (a=rtcp line, where RTCP goes): RFC 3605's port, with its own address when given; else
    // the port after RTP's; nowhere apart with rtcp-mux.
    let cases = [
        ("", Some("127.0.0.1:6001")),
        ("a=rtcp:6011\r\n", Some("127.0.0.1:6011")),
        ("a=rtcp:7011 IN IP4 192.0.2.7\r\n", Some("192.0.2.7:7011")),
        ("a=rtcp-mux\r\na=rtcp:6000\r\n", None),
        // Port 0 names nothing; an address of the other family is not this media's.
        ("a=rtcp:0\r\n", Some("127.0.0.1:6001")),
        ("a=rtcp:7011 IN IP6 2001:db8::7\r\n", Some("127.0.0.1:6001")),
    ];
    for (i, (line, want)) in cases.into_iter().enumerate() {
        let mut s = Sim::new();
        let offer = format!("{OFFER}{line}");
        s.sip(
            &invite(&format!("z9hG4bKrt{i}"), &format!("cid-rt{i}"), &offer),
            CALLER,
        );
        let rtcp = s.take().into_iter().find_map(|o| match o {
            Output::Media(MediaCmd::SetRemote { rtcp, .. }) => Some(rtcp),
            _ => None,
        });
        let want = want.map(|a| a.parse::<SocketAddr>().unwrap());
        assert_eq!(rtcp, Some(want), "{line:?}");
    }
}

#[test]
fn rtp_port_65535_does_not_overflow() {
    let mut s = Sim::new();
    s.sip(
        &invite(
            "z9hG4bKhi",
            "cid-hi",
            &OFFER.replace("m=audio 6000", "m=audio 65535"),
        ),
        CALLER,
    );
    let out = s.take();
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Media(MediaCmd::SetRemote { rtcp: None, .. }))));
}

#[test]
fn retransmitted_busy_is_acked_again() {
    let mut s = Sim::new();
    let (_key, inv) = b_invite_sent(&mut s);
    let busy = reply(&inv, 486, "Busy Here", "callee1", None);
    s.sip(&busy, TRUNK);
    assert!(s.sip_out().iter().any(|m| m.starts_with("ACK")));
    s.sip(&busy, TRUNK);
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["ACK sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
}

#[test]
fn reinvite_stuck_after_a_provisional_ends_the_dialog_after_64_t1() {
    let mut s = Sim::new();
    let (key, _) = a_call_answered(&mut s);
    let mut hold = ev(EventName::Hold, 1);
    hold.media_direction = Some("sendonly".into());
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: hold,
    });
    let reinvite = s.sip_out().remove(0);
    s.sip(&reply(&reinvite, 100, "Trying", "caller1", None), CALLER);
    s.advance(Duration::from_secs(31));
    assert!(!s.sip_out().iter().any(|m| m.starts_with("BYE")));
    s.advance(Duration::from_secs(2));
    assert!(
        s.sip_out().iter().any(|m| m.starts_with("BYE")),
        "RFC 3261 §14.1"
    );
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn reoffer_must_keep_the_negotiated_codec_and_the_answer_follows_its_m_lines() {
    let mut s = Sim::new();
    let (_, tag) = a_call_answered(&mut s);
    // PCMA only: riptide does not transcode, so the change is refused.
    let pcma = OFFER
        .replace("0 8 101", "8")
        .replace("a=rtpmap:0 PCMU/8000\r\n", "");
    s.sip(
        &in_dialog("INVITE", "z9hG4bKre2", 2, &tag, Some(&pcma)),
        CALLER,
    );
    let m = s.sip_out().remove(0);
    assert!(m.starts_with("SIP/2.0 488"), "{m}");
    assert!(m.contains("Warning: 399 riptide"), "{m}");
    s.sip(&in_dialog("ACK", "z9hG4bKre2", 2, &tag, None), CALLER);
    // A re-offer that adds video: the answer has both m-lines, video rejected, audio kept.
    let with_video = format!("{OFFER}m=video 6002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n");
    s.sip(
        &in_dialog("INVITE", "z9hG4bKre3", 3, &tag, Some(&with_video)),
        CALLER,
    );
    let ok = s.sip_out().remove(0);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let audio = ok.find("m=audio 20000 RTP/AVP 0 101").expect("audio kept");
    let video = ok.find("m=video 0 RTP/AVP 96").expect("video rejected");
    assert!(audio < video, "the offer's m-line order: {ok}");
}

#[test]
fn server_call_whose_client_never_opens_an_events_stream_is_ended() {
    let mut s = Sim::new();
    let (_key, inv) = b_invite_sent_no_stream(&mut s);
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(ANSWER)), TRUNK);
    s.take();
    s.advance(Duration::from_secs(31));
    assert!(s.sip_out().iter().any(|m| m.starts_with("BYE")));
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn server_pings_its_client_and_ends_a_call_whose_client_went_silent() {
    let mut s = Sim::new();
    s.e.cfg.keepalive = Some(Duration::from_secs(10));
    let (key, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(ANSWER)), TRUNK);
    s.take();
    s.advance(Duration::from_secs(10));
    let pings: Vec<Event> = server_events(&s.take())
        .into_iter()
        .filter(|e| e.name == EventName::Ping)
        .collect();
    assert_eq!(pings.len(), 1);
    // The client answers: the call lives on.
    let mut pong = ev(EventName::Pong, 0);
    pong.nonce = pings[0].nonce.clone();
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: pong,
    });
    s.advance(Duration::from_secs(20));
    assert!(!s.sip_out().iter().any(|m| m.starts_with("BYE")));
    // Now it goes silent (its events GET vanished without the server noticing).
    s.advance(Duration::from_secs(21));
    assert!(
        s.sip_out().iter().any(|m| m.starts_with("BYE")),
        "ended after two unanswered pings"
    );
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn client_answers_ping_with_pong_echoing_the_nonce() {
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    let mut ping = ev(EventName::Ping, 0);
    ping.nonce = Some("n0nce".into());
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ping,
    });
    assert!(s.take().iter().any(
        |o| matches!(o, Output::Ript(RiptCmd::ClientSend { event, .. })
        if event.name == EventName::Pong && event.nonce.as_deref() == Some("n0nce"))
    ));
}

#[test]
fn outbound_proxy_gets_the_invite_with_a_route_header() {
    let mut s = Sim::new();
    s.e.cfg.trunks[0].dest = Dest {
        addr: "127.0.0.1:5099".parse().unwrap(),
        transport: Transport::Udp,
        conn: None,
    };
    s.e.cfg.trunks[0].proxy_route = Some("<sip:127.0.0.1:5099;lr>".into());
    s.ript(incoming_call(ReqId(1), None, "a"));
    let sent = s
        .take()
        .into_iter()
        .find_map(|o| match o {
            Output::Sip(s) => Some(s),
            _ => None,
        })
        .expect("INVITE");
    assert_eq!(
        sent.dest.addr,
        "127.0.0.1:5099".parse::<SocketAddr>().unwrap(),
        "sent to the proxy"
    );
    let text = String::from_utf8_lossy(&sent.bytes);
    assert!(
        text.starts_with("INVITE sip:answer@127.0.0.1:5080 SIP/2.0"),
        "{text}"
    );
    assert!(text.contains("Route: <sip:127.0.0.1:5099;lr>"), "{text}");
}

#[test]
fn nothing_of_the_callers_sip_addressing_crosses_to_the_ript_side() {
    let mut s = Sim::new();
    s.sip(&invite("z9hG4bKinv1", "cid-secret", OFFER), CALLER);
    let req = s
        .take()
        .into_iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::CreateCall { request, .. }) => Some(request),
            _ => None,
        })
        .unwrap();
    let json = serde_json::to_string(&req).unwrap();
    for leak in ["cid-secret", "z9hG4bK", "caller1", "5061", "caller@"] {
        assert!(!json.contains(leak), "{leak} leaked into {json}");
    }
    assert_eq!(req.destination, "answer");
    assert_eq!(
        req.from.as_deref(),
        Some("+12155551212"),
        "the number keeps its digits"
    );
}

#[test]
fn a_client_over_its_call_limit_gets_429_and_the_slot_frees_when_a_call_ends() {
    let mut s = Sim::new();
    let mut keys = vec![];
    for _ in 0..3 {
        keys.push(b_invite_sent(&mut s).0);
    }
    s.ript(incoming_call(ReqId(9), None, "gateway-a"));
    assert!(s.take().iter().any(|o| matches!(o,
        Output::Ript(RiptCmd::RespondCall { req: ReqId(9), result: Err(p) }) if p.status == 429)));
    s.ript(RiptEvent::ServerEvent {
        call: keys[0],
        event: ev(EventName::End, 0),
    });
    s.take();
    // The ended call is still waiting for its INVITE's final (CANCEL sent): give it the 487.
    s.advance(Duration::from_secs(33));
    s.take();
    let (k, _) = b_invite_sent(&mut s);
    assert!(!keys.contains(&k));
}

#[test]
fn reinvite_answered_481_ends_the_call_and_2xx_refreshes_the_target() {
    let mut s = Sim::new();
    let (key, _) = a_call_answered(&mut s);
    let mut hold = ev(EventName::Hold, 1);
    hold.media_direction = Some("sendonly".into());
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: hold,
    });
    let reinvite = s.sip_out().remove(0);
    // The caller moved: its 2xx names a new Contact, where the ACK and later requests go.
    let ok = reply(&reinvite, 200, "OK", "caller1", Some(OFFER)).replace(
        "Contact: <sip:callee@127.0.0.1:5080>",
        "Contact: <sip:moved@127.0.0.1:5061>",
    );
    s.sip(&ok, CALLER);
    let ack = s
        .sip_out()
        .into_iter()
        .find(|m| m.starts_with("ACK"))
        .expect("ACK");
    assert!(ack.starts_with("ACK sip:moved@127.0.0.1:5061"), "{ack}");
    let mut resume = ev(EventName::Hold, 2);
    resume.media_direction = Some("sendrecv".into());
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: resume,
    });
    let reinvite = s.sip_out().remove(0);
    assert!(
        reinvite.starts_with("INVITE sip:moved@127.0.0.1:5061"),
        "{reinvite}"
    );
    s.sip(
        &reply(
            &reinvite,
            481,
            "Call/Transaction Does Not Exist",
            "caller1",
            None,
        ),
        CALLER,
    );
    let out = s.take();
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Sip(m) if m.bytes.starts_with(b"BYE"))));
    assert!(out.iter().any(|o| matches!(o,
        Output::Ript(RiptCmd::ClientSend { event, .. }) if event.name == EventName::End)));
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn bye_waits_for_the_callers_ack() {
    let mut s = Sim::new();
    let key = a_call_created(&mut s);
    let tag = to_tag_of(&answer(&mut s, key));
    // The far side hangs up before the caller's ACK arrived.
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::End, 1),
    });
    assert!(
        !s.sip_out().iter().any(|m| m.starts_with("BYE")),
        "RFC 3261 §15"
    );
    s.sip(&in_dialog("ACK", "z9hG4bKack1", 1, &tag, None), CALLER);
    assert!(s.sip_out().iter().any(|m| m.starts_with("BYE")));
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn migrate_makes_the_client_reopen_its_streams() {
    let mut s = Sim::new();
    let (key, _) = a_call_answered(&mut s);
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Migrate, 1),
    });
    assert!(s
        .take()
        .iter()
        .any(|o| matches!(o, Output::Ript(RiptCmd::ClientReopenEvents { call }) if *call == key)));
    assert_eq!(s.e.active_calls(), 1, "the call goes on");
}

#[test]
fn a_second_fork_answering_gets_ack_and_bye_and_the_call_stays_with_the_first() {
    let mut s = Sim::new();
    let (_, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 200, "OK", "fork1", Some(ANSWER)), TRUNK);
    s.take();
    let second = reply(&inv, 200, "OK", "fork2", Some(ANSWER)).replace(
        "Contact: <sip:callee@127.0.0.1:5080>",
        "Contact: <sip:fork2@127.0.0.1:5081>",
    );
    s.sip(&second, TRUNK);
    let msgs = s.sip_out();
    let lines = start_lines(&msgs);
    assert_eq!(
        lines,
        vec![
            "ACK sip:fork2@127.0.0.1:5081 SIP/2.0",
            "BYE sip:fork2@127.0.0.1:5081 SIP/2.0"
        ],
        "{msgs:?}"
    );
    assert!(msgs.iter().all(|m| m.contains(";tag=fork2")));
    assert_eq!(s.e.active_calls(), 1, "the first fork's call goes on");
    // A retransmission of the first fork's 200 is still ACKed as that dialog.
    s.sip(&reply(&inv, 200, "OK", "fork1", Some(ANSWER)), TRUNK);
    let again = s.sip_out();
    assert_eq!(
        start_lines(&again),
        vec!["ACK sip:callee@127.0.0.1:5080 SIP/2.0"]
    );
}

/// The INVITE's CSeq number among its headers.
fn cseq_of(req: &str) -> u32 {
    header(req, "CSeq")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a CSeq number")
}

#[test]
fn a_second_fork_behind_proxies_is_acked_and_ended_along_its_record_route_once() {
    let mut s = Sim::new();
    let (_, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 200, "OK", "fork1", Some(ANSWER)), TRUNK);
    s.take();
    // Proxy P1 (nearest us, 127.0.0.3) record-routed first, P2 (127.0.0.2) on top of it: our
    // route set is the list reversed (RFC 3261 §12.1.2), P1 first.
    let second = ok_from(
        &inv,
        "fork2",
        "<sip:fork2@127.0.0.1:5081>",
        Some("<sip:127.0.0.2:5090;lr>, <sip:127.0.0.3:5091;lr>"),
    );
    s.sip(&second, TRUNK);
    let out = s.take();
    let p1: SocketAddr = "127.0.0.3:5091".parse().unwrap();
    let routes = "Route: <sip:127.0.0.3:5091;lr>\r\nRoute: <sip:127.0.0.2:5090;lr>\r\n";
    for method in ["ACK", "BYE"] {
        let (to, req) = request_to(&out, method);
        assert_eq!(to, p1, "{method} goes to the first route: {req}");
        assert!(
            req.starts_with(&format!("{method} sip:fork2@127.0.0.1:5081 SIP/2.0")),
            "{req}"
        );
        assert!(req.contains(routes), "{req}");
        assert!(req.contains(";tag=fork2"), "{req}");
    }
    // The fork retransmits its 200 until our ACK gets there: each copy is ACKed again, and its
    // dialog is ended once.
    s.sip(&second, TRUNK);
    let again = s.take();
    assert_eq!(request_to(&again, "ACK").0, p1);
    assert!(
        sent_to(&again, "BYE ").is_empty(),
        "{:?}",
        sip_texts(&again)
    );
    assert_eq!(s.e.active_calls(), 1, "the first fork's call goes on");
}

#[test]
fn a_2xx_after_its_call_ended_is_acked_and_its_dialog_ended_for_64_t1() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    let n = cseq_of(&inv);
    s.sip(&reply(&inv, 200, "OK", "fork1", Some(ANSWER)), TRUNK);
    s.take();
    let (_, bye) = b_hangs_up(&mut s, key);
    s.sip(&reply(&bye, 200, "OK", "fork1", None), TRUNK);
    s.take();
    assert_eq!(s.e.active_calls(), 0);
    // A second fork answers after the call is over (RFC 3261 §13.2.2.4: ACK it, then BYE).
    let late = ok_from(&inv, "fork2", "<sip:fork2@127.0.0.1:5081>", None);
    s.sip(&late, TRUNK);
    let out = s.take();
    let fork2: SocketAddr = "127.0.0.1:5081".parse().unwrap();
    let (ack_to, ack) = request_to(&out, "ACK");
    let (bye_to, late_bye) = request_to(&out, "BYE");
    assert_eq!((ack_to, bye_to), (fork2, fork2));
    assert!(
        ack.starts_with("ACK sip:fork2@127.0.0.1:5081 SIP/2.0"),
        "{ack}"
    );
    assert!(ack.contains(&format!("CSeq: {n} ACK")), "{ack}");
    assert!(
        late_bye.contains(&format!("CSeq: {} BYE", n + 1)),
        "{late_bye}"
    );
    for req in [&ack, &late_bye] {
        assert_eq!(header(req, "From"), header(&inv, "From"), "{req}");
        assert_eq!(header(req, "Call-ID"), header(&inv, "Call-ID"), "{req}");
        assert!(header(req, "To").ends_with(";tag=fork2"), "{req}");
    }
    assert!(
        late_bye.contains("Reason: SIP;cause=200;text=\"Call completed elsewhere\""),
        "{late_bye}"
    );
    // Its retransmission is ACKed again, without a second BYE.
    s.sip(&late, TRUNK);
    let again = s.take();
    assert_eq!(request_to(&again, "ACK").0, fork2);
    assert!(
        sent_to(&again, "BYE ").is_empty(),
        "{:?}",
        sip_texts(&again)
    );
    // The BYE is a transaction: retransmitted until its answer, then quiet.
    s.advance(Duration::from_millis(600));
    assert!(!sent_to(&s.take(), "BYE ").is_empty(), "BYE retransmitted");
    s.sip(&reply(&late_bye, 200, "OK", "fork2", None), TRUNK);
    s.advance(Duration::from_secs(6));
    assert!(s.sip_out().is_empty(), "nothing after the BYE's 200");
    // A 2xx for a dialog of ours that no call of ours made gets nothing.
    let stranger = late.replace(header(&inv, "Call-ID"), "not-ours@elsewhere");
    s.sip(&stranger, TRUNK);
    assert!(s.sip_out().is_empty(), "a Call-ID we never used");
    // 64*T1 after the call ended (as long as a UAS retransmits its 2xx), it is forgotten.
    s.advance(Duration::from_secs(33));
    s.take();
    s.sip(
        &ok_from(&inv, "fork3", "<sip:fork3@127.0.0.1:5082>", None),
        TRUNK,
    );
    assert!(s.sip_out().is_empty(), "remembered for 64*T1 only");
    assert_eq!(s.e.pending_transactions(), (0, 0));
}

#[test]
fn the_calls_own_2xx_retransmitted_after_its_end_is_only_acked() {
    // Answered, then hung up: a copy of the same 200 (our ACK was lost) is ACKed again, and
    // its dialog, already ended by our BYE, gets no second one.
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    let ok = reply(&inv, 200, "OK", "fork1", Some(ANSWER));
    s.sip(&ok, TRUNK);
    s.take();
    b_hangs_up(&mut s, key);
    s.sip(&ok, TRUNK);
    let out = s.take();
    assert_eq!(
        request_to(&out, "ACK").0,
        TRUNK.parse::<SocketAddr>().unwrap()
    );
    assert!(sent_to(&out, "BYE ").is_empty(), "{:?}", sip_texts(&out));
    // A 200 that crossed our CANCEL got ACK and BYE; its retransmission gets the ACK only.
    let mut s = Sim::new();
    let (_, inv, _) = b_cancelled_while_ringing(&mut s, "fork1");
    let ok = reply(&inv, 200, "OK", "fork1", Some(ANSWER));
    s.sip(&ok, TRUNK);
    assert_eq!(sent_to(&s.take(), "BYE ").len(), 1);
    s.sip(&ok, TRUNK);
    let out = s.take();
    assert_eq!(
        start_lines(&sip_texts(&out)),
        vec!["ACK sip:callee@127.0.0.1:5080 SIP/2.0"]
    );
}

#[test]
fn stray_2xx_are_taken_only_from_where_the_invite_went_and_end_a_few_forks_at_most() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 200, "OK", "fork1", Some(ANSWER)), TRUNK);
    s.take();
    b_hangs_up(&mut s, key);
    s.take();
    // From an address the INVITE never went to: not an answer of ours to act on.
    s.sip(
        &ok_from(&inv, "elsewhere", "<sip:victim@198.51.100.7>", None),
        "198.51.100.7:5060",
    );
    assert!(s.sip_out().is_empty(), "no ACK or BYE to a third party");
    // Far too many routes: dropped rather than echoed as Route headers.
    let rr = vec!["<sip:198.51.100.7;lr>"; 40].join(", ");
    s.sip(
        &ok_from(&inv, "routes", "<sip:victim@198.51.100.7>", Some(&rr)),
        TRUNK,
    );
    assert!(s.sip_out().is_empty(), "40 Record-Route entries");
    // A CSeq our INVITE never used.
    let odd = ok_from(&inv, "cseq", "<sip:x@127.0.0.1:5081>", None).replace(
        &format!("CSeq: {} INVITE", cseq_of(&inv)),
        "CSeq: 4294967295 INVITE",
    );
    s.sip(&odd, TRUNK);
    assert!(s.sip_out().is_empty(), "CSeq 2^32-1 is not ours");
    // Forks answering late: each ACKed, the first eight ended with a BYE.
    let mut byes = 0;
    for i in 0..10 {
        s.sip(
            &ok_from(&inv, &format!("late{i}"), "<sip:late@127.0.0.1:5081>", None),
            TRUNK,
        );
        let out = s.take();
        assert_eq!(sent_to(&out, "ACK ").len(), 1, "fork {i}");
        byes += sent_to(&out, "BYE ").len();
    }
    assert_eq!(byes, 8);
}

#[test]
fn a_2xx_while_a_redirect_is_looked_up_is_acked_and_ended() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    s.sip(&moved(&inv, "<sip:other@lnp.example.net>"), TRUNK);
    s.take();
    // Another fork of the first INVITE answers while the redirect's name is looked up.
    s.sip(
        &ok_from(&inv, "fork2", "<sip:fork2@127.0.0.1:5081>", None),
        TRUNK,
    );
    let msgs = s.sip_out();
    assert_eq!(
        start_lines(&msgs),
        vec![
            "ACK sip:fork2@127.0.0.1:5081 SIP/2.0",
            "BYE sip:fork2@127.0.0.1:5081 SIP/2.0"
        ]
    );
    assert!(
        msgs[1].contains("Reason: SIP;cause=487"),
        "the call was not answered: {}",
        msgs[1]
    );
    // The call goes on to the redirect's target.
    let out = found(&mut s, key, "sip:other@lnp.example.net", &[REDIRECT_A]);
    assert_eq!(
        request_to(&out, "INVITE").0,
        REDIRECT_A.parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn ended_invites_past_the_table_size_are_forgotten_and_counted() {
    // max_calls 1: the table holds 1024 ended INVITEs (its floor).
    let mut s = Sim::with(EngineConfig {
        max_calls: 1,
        max_calls_per_client: 1,
        ..cfg()
    });
    let mut first = None;
    for i in 0..1025u64 {
        let (_, inv) = b_invite_sent(&mut s);
        s.sip(&reply(&inv, 486, "Busy Here", "busy", None), TRUNK);
        s.take();
        first.get_or_insert(inv);
        s.now += Duration::from_millis(1);
        assert_eq!(s.e.active_calls(), 0, "call {i}");
    }
    assert_eq!(
        s.e.metrics.ended_dialogs_evicted.load(Ordering::Relaxed),
        1,
        "the 1025th pushed the first out"
    );
    // The first call's INVITE is no longer known: a late 2xx for it gets nothing.
    let inv = first.unwrap();
    s.sip(
        &ok_from(&inv, "late", "<sip:late@127.0.0.1:5081>", None),
        TRUNK,
    );
    assert!(s.sip_out().is_empty());
}

#[test]
fn late_answers_through_a_proxy_are_taken_from_the_proxy_not_from_the_first_forks_host() {
    // The trunk is a forking proxy that does not record-route: fork 1 answers with a Contact
    // on another host, and the dialog's requests go there. Later answers still come through
    // the proxy, where the INVITE went.
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    let ok1 = ok_from(&inv, "fork1", "<sip:fork1@127.0.0.9:5081>", None);
    s.sip(&ok1, TRUNK);
    s.take();
    let (to, bye) = b_hangs_up(&mut s, key);
    assert_eq!(to, "127.0.0.9:5081".parse::<SocketAddr>().unwrap());
    s.sip(&reply(&bye, 200, "OK", "fork1", None), "127.0.0.9:5081");
    s.take();
    // A copy of fork 1's 200 (our ACK was lost): ACKed again, no second BYE.
    s.sip(&ok1, TRUNK);
    let out = s.take();
    assert_eq!(sent_to(&out, "ACK ").len(), 1, "{:?}", sip_texts(&out));
    assert!(sent_to(&out, "BYE ").is_empty());
    // Fork 2 answers late, through the proxy: ACKed and ended.
    s.sip(
        &ok_from(&inv, "fork2", "<sip:fork2@127.0.0.10:5082>", None),
        TRUNK,
    );
    let out = s.take();
    let fork2: SocketAddr = "127.0.0.10:5082".parse().unwrap();
    assert_eq!(request_to(&out, "ACK").0, fork2);
    assert_eq!(request_to(&out, "BYE").0, fork2);
}

#[test]
fn a_2xx_after_the_invite_timed_out_is_acked_and_ended_as_never_answered() {
    let mut s = Sim::new();
    let (_, inv) = b_invite_sent(&mut s);
    // Timer B: no answer in 64*T1, the call fails with 408 and is gone.
    s.advance(Duration::from_millis(32_100));
    s.take();
    assert_eq!(s.e.active_calls(), 0);
    // A slow callee answers after all.
    s.sip(
        &ok_from(&inv, "slow", "<sip:slow@127.0.0.1:5081>", None),
        TRUNK,
    );
    let msgs = s.sip_out();
    assert_eq!(
        start_lines(&msgs),
        vec![
            "ACK sip:slow@127.0.0.1:5081 SIP/2.0",
            "BYE sip:slow@127.0.0.1:5081 SIP/2.0"
        ],
        "{msgs:?}"
    );
    assert!(
        msgs[1].contains("Reason: SIP;cause=487;text=\"Request Terminated\""),
        "never answered, so not 'completed elsewhere': {}",
        msgs[1]
    );
}

// ------------------------------------------------------------------ media security policy

/// The RIPT side accepts the call whose `CreateCall` is among `out` (PCMU); returns its key.
fn ript_call_created(s: &mut Sim, out: &[Output]) -> CallKey {
    let key = out
        .iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::CreateCall { call, .. }) => Some(*call),
            _ => None,
        })
        .expect("CreateCall");
    let proposal = negotiate::choose(&pcmu_adv(), &crate::config::default_codecs()).unwrap();
    s.ript(RiptEvent::CallCreated {
        call: key,
        description: description(proposal),
    });
    s.take();
    key
}

pub(super) fn secure_sim(
    security: crate::config::MediaSecurity,
    ice: crate::config::IceMode,
) -> Sim {
    let mut c = cfg();
    let policy = MediaPolicy {
        security,
        ice,
        latching: true,
        dtmf: crate::config::DtmfMode::Rfc4733,
    };
    c.media = policy;
    c.trunks[0].media = policy;
    Sim {
        e: Engine::new(c, Arc::new(Metrics::default())),
        now: Instant::now(),
        out: vec![],
    }
}

fn sdes_line(tag: u32, suite: crate::media::srtp::Suite, fill: u8) -> String {
    crate::media::srtp::CryptoAttr::generate(tag, suite, |b| {
        b.fill(fill);
        Ok(())
    })
    .unwrap()
    .to_attr_value()
}

fn savp_offer(crypto: &[String]) -> String {
    let mut o = OFFER.replace("RTP/AVP", "RTP/SAVP");
    for c in crypto {
        o.push_str(&format!("a=crypto:{c}\r\n"));
    }
    o
}

fn secure_cmds(out: &[Output]) -> Vec<(LegCrypto, Option<crate::media::LegIce>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Media(MediaCmd::Secure { negotiated, .. }) => {
                Some((negotiated.crypto.clone(), negotiated.ice.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn sdes_offer_is_answered_with_our_own_key_and_the_hub_is_keyed() {
    use crate::config::{IceMode, MediaSecurity};
    use crate::media::srtp::Suite;
    let mut s = secure_sim(MediaSecurity::Sdes, IceMode::Off);
    let theirs = sdes_line(1, Suite::AesCm128HmacSha1_80, 3);
    s.sip(
        &invite(
            "z9hG4bKs1",
            "cid-a",
            &savp_offer(std::slice::from_ref(&theirs)),
        ),
        CALLER,
    );
    let out = s.take();
    let cmds = secure_cmds(&out);
    assert_eq!(cmds.len(), 1, "{out:?}");
    let LegCrypto::Sdes { local, remote } = &cmds[0].0 else {
        panic!("{:?}", cmds[0]);
    };
    assert_eq!(remote.to_attr_value(), theirs);
    let key = ript_call_created(&mut s, &out);
    let ok = answer(&mut s, key);
    assert!(ok.contains(" RTP/SAVP 0 101\r\n"), "{ok}");
    assert!(
        ok.contains(&format!("a=crypto:{}\r\n", local.to_attr_value())),
        "{ok}"
    );
    assert!(
        !ok.contains(&theirs),
        "our answer carries our key, not theirs"
    );
}

#[test]
fn offers_the_policy_refuses_get_488_with_a_warning_that_says_why() {
    use crate::config::{IceMode, MediaSecurity};
    let cases = [
        (
            MediaSecurity::BestEffort,
            savp_offer(&[
                "1 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkw".into(),
            ]),
            "no supported SRTP crypto suite offered (offered F8_128_HMAC_SHA1_80",
        ),
        (
            MediaSecurity::Sdes,
            OFFER.to_string(),
            "media security policy sdes requires SRTP; plain RTP/AVP offered",
        ),
        (
            MediaSecurity::Rtp,
            savp_offer(&[sdes_line(
                1,
                crate::media::srtp::Suite::AesCm128HmacSha1_80,
                1,
            )]),
            "media security policy rtp does not accept SRTP (RTP/SAVP)",
        ),
    ];
    for (policy, offer, warning) in cases {
        let mut s = secure_sim(policy, IceMode::Off);
        s.sip(&invite("z9hG4bKr1", "cid-r", &offer), CALLER);
        let out = s.take();
        let msgs = sip_texts(&out);
        assert_eq!(
            start_lines(&msgs),
            vec!["SIP/2.0 100 Trying", "SIP/2.0 488 Not Acceptable Here"]
        );
        let w = msgs[1]
            .lines()
            .find(|l| l.starts_with("Warning:"))
            .unwrap_or_else(|| panic!("no Warning in {}", msgs[1]));
        assert!(w.contains(warning), "{policy:?}: {w}");
        assert!(secure_cmds(&out).is_empty());
        assert_eq!(s.e.active_calls(), 0);
    }
}

/// The trunk's SDES answer taking our crypto line `ours` (its own key, of the same suite).
fn sdes_answer(ours: &crate::media::srtp::CryptoAttr) -> String {
    format!(
        "{}a=crypto:{}\r\n",
        ANSWER.replace("RTP/AVP", "RTP/SAVP"),
        sdes_line(ours.tag, ours.suite, 5)
    )
}

#[test]
fn offer_toward_an_sdes_trunk_lists_every_suite_and_settles_on_the_answered_one() {
    use crate::config::{IceMode, MediaSecurity};
    let mut s = secure_sim(MediaSecurity::Sdes, IceMode::Off);
    s.ript(incoming_call(ReqId(1), Some("+12155551212"), "gateway-a"));
    let out = s.take();
    let key = accepted_key(&out);
    s.ript(RiptEvent::ServerEventsOpened { call: key });
    let inv = sip_texts(&out).remove(0);
    assert!(inv.contains(" RTP/SAVP 0 101\r\n"), "{inv}");
    let offered: Vec<&str> = inv
        .lines()
        .filter_map(|l| l.strip_prefix("a=crypto:"))
        .collect();
    assert_eq!(offered.len(), 4, "{inv}");
    let ours = crate::media::srtp::CryptoAttr::parse(offered[2]).unwrap();
    let answer_sdp = sdes_answer(&ours);
    s.take();
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(&answer_sdp)), TRUNK);
    let out = s.take();
    let cmds = secure_cmds(&out);
    assert_eq!(cmds.len(), 1);
    assert!(matches!(&cmds[0].0, LegCrypto::Sdes { local, .. } if *local == ours));
    assert!(server_events(&out)
        .iter()
        .any(|e| e.name == EventName::Answered));
}

/// RFC 3264 §8: our next offer's `o=` version is one more than the last one sent, however
/// often our description changed unsent in between (here the answer settled its crypto, and
/// the trunk's refresh UPDATE was answered without SDP).
#[test]
fn the_next_offer_after_an_unsent_change_and_a_bodyless_update_is_one_version_on() {
    use crate::config::{IceMode, MediaSecurity};
    let version = |m: &str| -> u64 {
        let o = m.lines().find(|l| l.starts_with("o=")).unwrap();
        o.split(' ').nth(2).unwrap().parse().unwrap()
    };
    let mut s = secure_sim(MediaSecurity::Sdes, IceMode::Off);
    s.ript(incoming_call(ReqId(1), None, "gateway-a"));
    let out = s.take();
    let key = accepted_key(&out);
    s.ript(RiptEvent::ServerEventsOpened { call: key });
    let inv = sip_texts(&out).remove(0);
    let first = inv
        .lines()
        .find_map(|l| l.strip_prefix("a=crypto:"))
        .unwrap();
    let ours = crate::media::srtp::CryptoAttr::parse(first).unwrap();
    let answer_sdp = sdes_answer(&ours);
    s.take();
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(&answer_sdp)), TRUNK);
    let ack = sip_texts(&s.take()).remove(0);
    assert!(ack.starts_with("ACK "), "{ack}");
    let update = super::payload_type_tests::from_trunk(&ack, "UPDATE", 2, "");
    s.sip(&update, TRUNK);
    let ok = sip_texts(&s.take()).remove(0);
    assert!(ok.starts_with("SIP/2.0 200") && !ok.contains("o="), "{ok}");
    let mut hold = ev(EventName::Hold, 1);
    hold.media_direction = Some("sendonly".into());
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: hold,
    });
    let reinvite = sip_texts(&s.take())
        .into_iter()
        .find(|m| m.starts_with("INVITE "))
        .expect("the hold re-INVITE");
    assert!(reinvite.contains("a=sendonly"), "{reinvite}");
    assert_eq!(version(&reinvite), version(&inv) + 1, "{reinvite}");
}

#[test]
fn an_sdes_trunk_answering_without_keys_fails_the_call_with_bye() {
    use crate::config::{IceMode, MediaSecurity};
    let mut s = secure_sim(MediaSecurity::Sdes, IceMode::Off);
    s.ript(incoming_call(ReqId(1), None, "gateway-a"));
    let out = s.take();
    let inv = sip_texts(&out).remove(0);
    let answer_sdp = ANSWER.replace("RTP/AVP", "RTP/SAVP");
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(&answer_sdp)), TRUNK);
    let out = s.take();
    assert_eq!(
        start_lines(&sip_texts(&out)),
        vec![
            "ACK sip:callee@127.0.0.1:5080 SIP/2.0",
            "BYE sip:callee@127.0.0.1:5080 SIP/2.0"
        ]
    );
    assert!(server_events(&out)
        .iter()
        .any(|e| e.name == EventName::Failed));
    assert!(secure_cmds(&out).is_empty());
}

#[test]
fn a_trunk_claiming_the_source_brings_its_policy() {
    use crate::config::{IceMode, MediaSecurity};
    let mut c = cfg();
    c.trunks[0].media.security = MediaSecurity::Sdes;
    c.trunks[0].match_sources = vec![(CALLER.parse::<SocketAddr>().unwrap().ip(), None)];
    let mut s = Sim {
        e: Engine::new(c, Arc::new(Metrics::default())),
        now: Instant::now(),
        out: vec![],
    };
    // The global policy (rtp) would accept this plain offer; the trunk's (sdes) does not.
    s.sip(&invite("z9hG4bKm1", "cid-m", OFFER), CALLER);
    let msgs = s.sip_out();
    assert_eq!(msgs.len(), 2);
    assert!(msgs[1].starts_with("SIP/2.0 488"), "{}", msgs[1]);
    let _ = IceMode::Off;
}

#[test]
fn ice_lite_answer_carries_credentials_and_a_host_candidate() {
    use crate::config::{IceMode, MediaSecurity};
    let mut s = secure_sim(MediaSecurity::Rtp, IceMode::Lite);
    let offer = format!(
        "{}a=ice-ufrag:peer\r\na=ice-pwd:peerpasswordpeerpassword\r\na=candidate:1 1 UDP 2113929471 127.0.0.2 6000 typ host\r\na=rtcp-mux\r\n",
        OFFER
    );
    s.sip(&invite("z9hG4bKi1", "cid-i", &offer), CALLER);
    let out = s.take();
    let cmds = secure_cmds(&out);
    let ice = cmds[0].1.clone().expect("ICE runs");
    assert!(ice.lite && !ice.controlling);
    assert_eq!(ice.remote_ufrag, "peer");
    assert_eq!(
        ice.remote_candidates,
        vec!["127.0.0.2:6000".parse::<SocketAddr>().unwrap()]
    );
    let key = ript_call_created(&mut s, &out);
    let ok = answer(&mut s, key);
    assert!(ok.contains("a=ice-lite\r\n"), "{ok}");
    assert!(
        ok.contains(&format!("a=ice-ufrag:{}\r\n", ice.local_ufrag)),
        "{ok}"
    );
    assert!(
        ok.contains("a=candidate:1 1 UDP 2130706431 127.0.0.1 20000 typ host\r\n"),
        "{ok}"
    );
    assert!(ok.contains("a=rtcp-mux\r\n"), "{ok}");
}

// ------------------------------------------------------------------ DTMF

fn info(branch: &str, cseq: u32, to_tag: &str, ct: &str, body: &str) -> String {
    format!(
        "INFO sip:riptide@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@127.0.0.1>;tag=caller1\r\nTo: <sip:answer@127.0.0.1:5070>;tag={to_tag}\r\nCall-ID: cid-a\r\nCSeq: {cseq} INFO\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn client_events(out: &[Output]) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Ript(RiptCmd::ClientSend { event, .. }) => Some(event.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn sip_info_dtmf_becomes_a_dtmf_event_and_rfc4733_toward_http3() {
    let mut s = Sim::new();
    let (key, tag) = a_call_answered(&mut s);
    s.take();
    s.sip(
        &info(
            "z9hG4bKi1",
            2,
            &tag,
            "application/dtmf-relay",
            "Signal=5\r\nDuration=160\r\n",
        ),
        CALLER,
    );
    let out = s.take();
    assert_eq!(start_lines(&sip_texts(&out)), vec!["SIP/2.0 200 OK"]);
    let evs = client_events(&out);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].name, EventName::Dtmf);
    assert_eq!(evs[0].digit.as_deref(), Some("5"));
    assert_eq!(evs[0].duration, Some(160));
    assert!(out.iter().any(|o| matches!(o,
        Output::Media(MediaCmd::SendDtmf { call, digit }) if *call == key && digit.digit == '5')));

    // The other body format, then what is refused.
    s.sip(&info("z9hG4bKi2", 3, &tag, "application/dtmf", "#"), CALLER);
    let evs = client_events(&s.take());
    assert_eq!(evs[0].digit.as_deref(), Some("#"));
    s.sip(&info("z9hG4bKi3", 4, &tag, "text/plain", "5"), CALLER);
    let msgs = s.sip_out();
    assert!(msgs[0].starts_with("SIP/2.0 415"), "{}", msgs[0]);
    assert!(
        msgs[0].contains("Accept: application/dtmf-relay"),
        "{}",
        msgs[0]
    );
    s.sip(
        &info(
            "z9hG4bKi4",
            5,
            &tag,
            "application/dtmf-relay",
            "Signal=X\r\n",
        ),
        CALLER,
    );
    let out = s.take();
    let msgs = sip_texts(&out);
    assert!(
        msgs[0].starts_with("SIP/2.0 400 Bad Request"),
        "{}",
        msgs[0]
    );
    assert!(client_events(&out).is_empty());
}

#[test]
fn keys_from_rtp_are_announced_and_go_as_info_toward_an_info_peer() {
    let mut s = Sim::new();
    let (key, _tag) = a_call_answered(&mut s);
    s.take();
    let digit = crate::media::dtmf::Digit::new('7', 120).unwrap();
    s.input(Input::Media(MediaEvent::Dtmf {
        call: key,
        digit,
        toward_legacy: false,
    }));
    let evs = client_events(&s.take());
    assert_eq!(evs.len(), 1);
    assert_eq!(
        (evs[0].digit.as_deref(), evs[0].duration),
        (Some("7"), Some(120))
    );

    s.input(Input::Media(MediaEvent::Dtmf {
        call: key,
        digit,
        toward_legacy: true,
    }));
    let msgs = s.sip_out();
    assert_eq!(msgs.len(), 1);
    assert!(
        msgs[0].starts_with("INFO sip:caller@127.0.0.1:5061 SIP/2.0"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[0].contains("Content-Type: application/dtmf-relay"),
        "{}",
        msgs[0]
    );
    assert!(msgs[0].contains("Signal=7"), "{}", msgs[0]);
    // Its 200 is absorbed.
    let ok = reply(&msgs[0], 200, "OK", "x", None);
    s.sip(&ok, CALLER);
    assert!(s.sip_out().is_empty());
}

#[test]
fn a_caller_whose_allow_lists_no_info_gets_no_info_unless_its_trunk_asks_for_it() {
    let no_info = "Allow: INVITE, ACK, BYE, CANCEL\r\n";
    for (allow, asked, sent) in [
        (no_info, false, 0),
        (no_info, true, 1),
        ("Allow: INVITE, ACK, BYE, CANCEL, INFO\r\n", false, 1),
        ("", false, 1),
    ] {
        let mut cfg = EngineConfig::example();
        if asked {
            cfg.media.dtmf = crate::config::DtmfMode::Info;
        }
        let mut s = Sim::with(cfg);
        let inv = super::session_timer_tests::with(&invite("z9hG4bKinv1", "cid-a", OFFER), allow);
        s.sip(&inv, CALLER);
        let out = s.take();
        let (key, adv) = created_call(&out).expect("CreateCall");
        call_made(&mut s, key, &adv);
        let tag = to_tag_of(&answer(&mut s, key));
        s.sip(&in_dialog("ACK", "z9hG4bKack1", 1, &tag, None), CALLER);
        s.take();
        s.input(Input::Media(MediaEvent::Dtmf {
            call: key,
            digit: crate::media::dtmf::Digit::new('4', 100).unwrap(),
            toward_legacy: true,
        }));
        assert_eq!(s.sip_out().len(), sent, "{allow:?} asked={asked}");
    }
}

#[test]
fn a_peer_that_refuses_info_gets_no_more_keys_that_way() {
    for (code, stops) in [
        (405, true),
        (501, true),
        (415, true),
        (500, false),
        (200, false),
    ] {
        let mut s = Sim::new();
        let (key, _tag) = a_call_answered(&mut s);
        s.take();
        let press = |s: &mut Sim, c| {
            s.input(Input::Media(MediaEvent::Dtmf {
                call: key,
                digit: crate::media::dtmf::Digit::new(c, 100).unwrap(),
                toward_legacy: true,
            }));
            s.sip_out()
        };
        let first = press(&mut s, '1');
        assert_eq!(first.len(), 1, "{code}");
        s.sip(&reply(&first[0], code, "Whatever", "x", None), CALLER);
        assert!(
            s.sip_out().is_empty(),
            "{code}: nothing answers the response"
        );
        let second = press(&mut s, '2');
        assert_eq!(second.len(), usize::from(!stops), "{code}: {second:?}");
        // Keys from the peer still reach the HTTP/3 side.
        s.take();
        s.input(Input::Media(MediaEvent::Dtmf {
            call: key,
            digit: crate::media::dtmf::Digit::new('3', 100).unwrap(),
            toward_legacy: false,
        }));
        assert_eq!(client_events(&s.take()).len(), 1, "{code}");
    }
}

/// A gateway whose SIP listener allows the browser origin `https://allowed.example`.
fn cors_sim() -> Sim {
    Sim {
        e: Engine::new(
            EngineConfig {
                sip_cors_origins: vec!["https://allowed.example".into()],
                ..cfg()
            },
            Arc::new(Metrics::default()),
        ),
        now: Instant::now(),
        out: vec![],
    }
}

/// An out-of-dialog OPTIONS with `origin_lines` (each a whole `Origin: ...` line, or others).
fn options_with(branch: &str, origin_lines: &[&str]) -> String {
    let extra: String = origin_lines.iter().map(|l| format!("{l}\r\n")).collect();
    format!(
        "OPTIONS sip:127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:browser@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1:5070>\r\nCall-ID: {branch}-cid\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

/// The value of `name` in a SIP message, if present.
pub(super) fn header_of(m: &str, name: &str) -> Option<String> {
    m.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Sends one OPTIONS and returns the single answer.
fn options_answer(s: &mut Sim, branch: &str, origin_lines: &[&str]) -> String {
    s.sip(&options_with(branch, origin_lines), CALLER);
    let mut msgs = s.sip_out();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    msgs.remove(0)
}

#[test]
fn sip_preflight_from_an_allowed_origin_gets_200_with_acao() {
    let mut s = cors_sim();
    let m = options_answer(&mut s, "z9hG4bKc1", &["Origin: https://allowed.example"]);
    assert!(m.starts_with("SIP/2.0 200 OK"), "{m}");
    assert_eq!(
        header_of(&m, "Access-Control-Allow-Origin").as_deref(),
        Some("https://allowed.example")
    );
    assert!(
        m.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS"),
        "{m}"
    );
    assert!(m.contains("Accept: application/sdp"), "{m}");
    assert!(header_of(&m, "Supported").is_some(), "{m}");
    // The header name is matched case-insensitively; scheme, host and default port are
    // normalised before the exact comparison, and the value is echoed as sent.
    let m = options_answer(
        &mut s,
        "z9hG4bKc2",
        &["origin: HTTPS://Allowed.Example:443"],
    );
    assert!(m.starts_with("SIP/2.0 200 OK"), "{m}");
    assert_eq!(
        header_of(&m, "Access-Control-Allow-Origin").as_deref(),
        Some("HTTPS://Allowed.Example:443")
    );
}

#[test]
fn sip_preflight_from_other_origins_gets_403_without_acao() {
    let mut s = cors_sim();
    for (i, origin) in [
        "https://evil.example",
        "null",
        "https://allowed.example.evil.com",
        "https://evil-allowed.example",
        "https://allowed.examplex",
        "https://sub.allowed.example",
        "https://allowed.example:8443",
        "http://allowed.example",
    ]
    .iter()
    .enumerate()
    {
        let m = options_answer(
            &mut s,
            &format!("z9hG4bKf{i}"),
            &[&format!("Origin: {origin}")],
        );
        assert!(m.starts_with("SIP/2.0 403 Forbidden"), "{origin}: {m}");
        assert_eq!(header_of(&m, "Access-Control-Allow-Origin"), None, "{m}");
    }
    // A listener with no list refuses every origin, its own included.
    let mut plain = Sim::new();
    let m = options_answer(
        &mut plain,
        "z9hG4bKf9",
        &["Origin: https://allowed.example"],
    );
    assert!(m.starts_with("SIP/2.0 403 Forbidden"), "{m}");
    assert_eq!(header_of(&m, "Access-Control-Allow-Origin"), None, "{m}");
}

#[test]
fn sip_preflight_with_two_origins_or_a_malformed_one_gets_400() {
    let mut s = cors_sim();
    let two = [
        "Origin: https://allowed.example",
        "Origin: https://allowed.example",
    ];
    let m = options_answer(&mut s, "z9hG4bKb1", &two);
    assert!(m.starts_with("SIP/2.0 400 Bad Request"), "{m}");
    assert_eq!(header_of(&m, "Access-Control-Allow-Origin"), None, "{m}");
    for (i, bad) in [
        "https://allowed.example/",
        "allowed.example",
        "https://allowed.example, https://evil.example",
        "https://user@allowed.example",
    ]
    .iter()
    .enumerate()
    {
        let m = options_answer(
            &mut s,
            &format!("z9hG4bKb{}", i + 2),
            &[&format!("Origin: {bad}")],
        );
        assert!(m.starts_with("SIP/2.0 400 Bad Request"), "{bad}: {m}");
        assert_eq!(header_of(&m, "Access-Control-Allow-Origin"), None, "{m}");
    }
}

#[test]
fn sip_options_without_origin_is_unchanged_and_answers_are_retransmitted_not_recomputed() {
    let mut s = cors_sim();
    let m = options_answer(&mut s, "z9hG4bKn1", &[]);
    assert!(m.starts_with("SIP/2.0 200 OK"), "{m}");
    assert_eq!(header_of(&m, "Access-Control-Allow-Origin"), None, "{m}");
    assert!(
        m.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS"),
        "{m}"
    );

    // A retransmitted refused preflight gets the same 403 from the transaction layer, until
    // the transaction is gone (Timer J, 64*T1 over UDP); no call state is ever created.
    let req = options_with("z9hG4bKr1", &["Origin: https://evil.example"]);
    s.sip(&req, CALLER);
    let first = s.sip_out();
    assert_eq!(start_lines(&first), vec!["SIP/2.0 403 Forbidden"]);
    s.advance(Duration::from_secs(2));
    assert!(
        s.sip_out().is_empty(),
        "a non-2xx to OPTIONS is not resent on its own"
    );
    s.sip(&req, CALLER);
    assert_eq!(
        s.sip_out(),
        first,
        "the retransmission gets the identical answer"
    );
    s.advance(Duration::from_secs(40));
    assert_eq!(s.e.active_calls(), 0);
}

// ------------------------------------------------------------------ SIP CORS preflight

const PAGE: &str = "https://allowed.example";

fn preflight_sim() -> Sim {
    let mut c = cfg();
    c.trunks[0].preflight = true;
    c.max_calls_per_client = 100;
    Sim {
        e: Engine::new(c, Arc::new(Metrics::default())),
        now: Instant::now(),
        out: vec![],
    }
}

#[test]
fn a_browser_call_is_invited_only_after_the_preflight_allows_its_origin() {
    let mut s = preflight_sim();
    s.ript(browser_call(ReqId(1), PAGE));
    let msgs = s.sip_out();
    assert_eq!(
        start_lines(&msgs),
        vec!["OPTIONS sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
    assert!(
        msgs[0].contains("Origin: https://allowed.example\r\n"),
        "{}",
        msgs[0]
    );
    // Allowed: now the INVITE.
    let ok = reply(&msgs[0], 200, "OK", "t1", None).replace(
        "Content-Length: 0",
        "Access-Control-Allow-Origin: https://allowed.example\r\nContent-Length: 0",
    );
    s.sip(&ok, TRUNK);
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["INVITE sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
    // The answer is cached for that target and origin: the next call goes straight on.
    s.ript(browser_call(ReqId(2), PAGE));
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["INVITE sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
    // A call that is not a browser's needs no preflight.
    s.ript(incoming_call(ReqId(3), None, "gateway-a"));
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["INVITE sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
}

#[test]
fn a_refusing_target_is_never_invited_and_not_asked_again_for_30_s() {
    let mut s = preflight_sim();
    s.ript(browser_call(ReqId(1), PAGE));
    let msgs = s.sip_out();
    // 200 without ACAO: no INVITE, and the call fails with 403.
    s.sip(&reply(&msgs[0], 200, "OK", "t1", None), TRUNK);
    let out = s.take();
    assert!(
        sip_texts(&out).is_empty(),
        "never INVITEd: {:?}",
        sip_texts(&out)
    );
    let failed = server_events(&out);
    assert!(
        failed
            .iter()
            .any(|e| e.name == EventName::Failed && e.code == Some(403)),
        "{failed:?}"
    );
    assert_eq!(s.e.active_calls(), 0);
    // Within 30 s: not contacted at all.
    s.advance(Duration::from_secs(29));
    s.ript(browser_call(ReqId(2), PAGE));
    let out = s.take();
    assert!(sip_texts(&out).is_empty());
    assert!(server_events(&out).iter().any(|e| e.code == Some(403)));
    // Later: asked again.
    s.advance(Duration::from_secs(2));
    s.ript(browser_call(ReqId(3), PAGE));
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["OPTIONS sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
}

#[test]
fn a_preflight_for_another_origin_or_an_error_does_not_allow_the_call() {
    for (code, acao) in [
        (200, Some("https://other.example")),
        (403, None),
        (200, Some("https://allowed.example, https://x.example")),
    ] {
        let mut s = preflight_sim();
        s.ript(browser_call(ReqId(1), PAGE));
        let msgs = s.sip_out();
        let mut r = reply(&msgs[0], code, "X", "t1", None);
        if let Some(a) = acao {
            r = r.replace(
                "Content-Length: 0",
                &format!("Access-Control-Allow-Origin: {a}\r\nContent-Length: 0"),
            );
        }
        s.sip(&r, TRUNK);
        let out = s.take();
        assert!(sip_texts(&out).is_empty(), "{code} {acao:?}");
        assert!(server_events(&out).iter().any(|e| e.code == Some(403)));
    }
    // No answer at all: the OPTIONS times out, the call fails, nothing is INVITEd.
    let mut s = preflight_sim();
    s.ript(browser_call(ReqId(1), PAGE));
    let key = accepted_key(&s.take());
    // The page holds its events stream, so only the preflight's timeout can end the call.
    s.ript(RiptEvent::ServerEventsOpened { call: key });
    s.advance(Duration::from_secs(40));
    let out = s.take();
    assert!(!sip_texts(&out).iter().any(|m| m.starts_with("INVITE")));
    assert!(server_events(&out).iter().any(|e| e.code == Some(403)));
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn a_browser_call_follows_no_redirect() {
    let mut s = Sim::new();
    s.ript(browser_call(ReqId(1), PAGE));
    let inv = s.sip_out().remove(0);
    assert!(inv.starts_with("INVITE"));
    let moved = reply(&inv, 302, "Moved Temporarily", "t1", None).replace(
        "Contact: <sip:callee@127.0.0.1:5080>",
        "Contact: <sip:victim@192.0.2.66:5060>",
    );
    s.sip(&moved, TRUNK);
    let msgs = s.sip_out();
    assert!(
        !msgs.iter().any(|m| m.starts_with("INVITE sip:victim")),
        "{msgs:?}"
    );
}

// ------------------------------------------------------------------ STIR/SHAKEN signing

const X5U: &str = "https://localhost:8443/sp-chain.pem";
const WALL: u64 = 1_800_000_000;

/// A gateway that signs, with the public point of its key.
fn signing_sim() -> (Sim, Vec<u8>) {
    let (key, _) = crate::stir::SigningKey::generate().unwrap();
    let point = key.public_point().to_vec();
    let mut c = cfg();
    c.stir = Some(Arc::new(StirSigner {
        key,
        x5u: X5U.into(),
    }));
    let mut s = Sim {
        e: Engine::new(c, Arc::new(Metrics::default())),
        now: Instant::now(),
        out: vec![],
    };
    s.e.set_wall_clock(s.now, WALL);
    (s, point)
}

/// The claims of a PASSporT whose signature verifies with `point`.
fn verified_claims(jws: &str, point: &[u8]) -> serde_json::Value {
    let d = crate::stir::passport::DecodedPassport::decode(jws).unwrap();
    d.verify_signature(point).expect("our signature verifies");
    assert_eq!(d.header_json["x5u"], X5U);
    d.claims_json
}

fn numbered_call(tns: Vec<String>) -> RiptEvent {
    match incoming_call(ReqId(1), Some("+1 215-555-1212"), "client") {
        RiptEvent::IncomingCall {
            req,
            tg,
            mut request,
            principal,
            origin,
            ..
        } => {
            request.destination = "+12155551213".into();
            RiptEvent::IncomingCall {
                req,
                tg,
                request,
                principal,
                origin,
                tns,
            }
        }
        e => e,
    }
}

#[test]
fn calls_leaving_on_sip_carry_an_identity_with_the_token_based_attestation() {
    for (tns, attest) in [
        (vec!["12155551212".to_string()], "A"),
        (vec!["19995550000".to_string()], "B"),
    ] {
        let (mut s, point) = signing_sim();
        s.ript(numbered_call(tns));
        let inv = s.sip_out().remove(0);
        let line = inv
            .lines()
            .find(|l| l.starts_with("Identity: "))
            .unwrap_or_else(|| panic!("no Identity in {inv}"));
        let id = crate::stir::IdentityHeader::parse_line(line).unwrap();
        assert_eq!(id.info(), X5U);
        let c = verified_claims(id.jws(), &point);
        assert_eq!(c["attest"], attest);
        assert_eq!(c["orig"]["tn"], "12155551212");
        assert_eq!(c["dest"]["tn"][0], "12155551213");
        assert_eq!(c["iat"], WALL);
    }
}

#[test]
fn calls_entering_over_sip_get_a_gateway_attested_passport_toward_http3() {
    let (mut s, point) = signing_sim();
    let inv = invite("z9hG4bKs1", "cid-s", OFFER).replace(
        "INVITE sip:answer@127.0.0.1:5070",
        "INVITE sip:+12155551213@127.0.0.1:5070",
    );
    s.sip(&inv, CALLER);
    let passport = s
        .take()
        .into_iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::CreateCall { request, .. }) => request.passport,
            _ => None,
        })
        .expect("a passport in POST {TG}/calls");
    let c = verified_claims(&passport, &point);
    assert_eq!(c["attest"], "C");
    assert_eq!(c["orig"]["tn"], "12155551212");
    // Names that are not numbers are not signed; nor is anything without a signer.
    let (mut s, _) = signing_sim();
    s.ript(incoming_call(ReqId(1), Some("alice"), "client"));
    assert!(!s.sip_out()[0].contains("Identity:"));
    let mut s = Sim::new();
    s.ript(numbered_call(vec![]));
    assert!(!s.sip_out()[0].contains("Identity:"));
}

// ------------------------------------------------------------------ STIR/SHAKEN verification

const VX5U: &str = "https://cert.example.net/sp.pem";

/// A gateway that verifies incoming SIP calls against a test PKI, and an Identity for a call
/// from +12155551212 to +12155551213 signed by that PKI's leaf now.
fn verifying_sim(reject: bool) -> (Sim, crate::stir::TestPki, String) {
    verifying_sim_with(reject, Default::default(), |_| {})
}

/// [`verifying_sim`] with a verification policy and a last say on the engine's config.
fn verifying_sim_with(
    reject: bool,
    policy: crate::stir::VerifyPolicy,
    tweak: impl FnOnce(&mut EngineConfig),
) -> (Sim, crate::stir::TestPki, String) {
    let pki = crate::stir::TestPki::generate("1234", WALL).unwrap();
    let trust = crate::stir::TrustStore::from_der_certs([pki.root.der.clone()]).unwrap();
    let mut c = cfg();
    c.stir_verify = Some(Arc::new(StirVerify {
        verifier: crate::stir::verify::Verifier::new(trust, vec![], policy),
        reject,
    }));
    tweak(&mut c);
    let mut s = Sim {
        e: Engine::new(c, Arc::new(Metrics::default())),
        now: Instant::now(),
        out: vec![],
    };
    s.e.set_wall_clock(s.now, WALL);
    let claims = crate::stir::ShakenClaims {
        attest: crate::stir::Attestation::A,
        dest_tns: vec!["12155551213".into()],
        iat: WALL,
        orig_tn: "12155551212".into(),
        origid: "x".into(),
    };
    let id = crate::stir::verify::sign(&claims, &pki.signing_key().unwrap(), VX5U).unwrap();
    (s, pki, id)
}

fn signed_invite(branch: &str, call_id: &str, identity: &str) -> String {
    let inv = invite(branch, call_id, OFFER)
        .replace(
            "INVITE sip:answer@127.0.0.1:5070",
            "INVITE sip:+12155551213@127.0.0.1:5070",
        )
        .replace("Call-ID: ", &format!("Identity: {identity}\r\nCall-ID: "));
    inv
}

/// Delivers the fetch the engine asked for (the PKI's chain for VX5U) and returns the outputs.
fn deliver_chain(s: &mut Sim, out: &[Output], pki: &crate::stir::TestPki) -> Vec<Output> {
    let (call, urls) = out
        .iter()
        .find_map(|o| match o {
            Output::StirFetch { call, urls } => Some((*call, urls.clone())),
            _ => None,
        })
        .expect("the engine asks for the x5u chain");
    assert_eq!(urls, vec![VX5U.to_string()]);
    s.input(Input::StirChains {
        call,
        chains: vec![(VX5U.into(), Ok(pki.chain()))],
    });
    s.take()
}

#[test]
fn a_verified_call_goes_on_with_its_verstat() {
    let (mut s, pki, id) = verifying_sim(true);
    s.sip(&signed_invite("z9hG4bKv1", "cid-v1", &id), CALLER);
    let out = s.take();
    assert_eq!(start_lines(&sip_texts(&out)), vec!["SIP/2.0 100 Trying"]);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Ript(_))),
        "nothing before the chain"
    );
    let out = deliver_chain(&mut s, &out, &pki);
    let verstat = out
        .iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::CreateCall { request, .. }) => request.verstat.clone(),
            _ => None,
        })
        .expect("the call goes on, with its verstat");
    assert_eq!(verstat, "TN-Validation-Passed");
    // The same Identity under another Call-ID is a replay (STIR-14): refused at once.
    s.sip(&signed_invite("z9hG4bKv2", "cid-v2", &id), CALLER);
    let msgs = s.sip_out();
    assert!(
        msgs.iter().any(|m| m.starts_with("SIP/2.0 438")),
        "{msgs:?}"
    );
}

#[test]
fn a_failed_verification_is_refused_or_marked_by_policy() {
    // A flipped signature byte: 438 with a STIR Reason under `reject` ...
    let (mut s, pki, id) = verifying_sim(true);
    let bad = {
        let (jws, rest) = id.split_once(';').unwrap();
        let mut parts: Vec<String> = jws.split('.').map(str::to_string).collect();
        // A character inside the signature: every bit of it is significant (the last one of a
        // base64url string carries padding bits, which a strict decoder refuses outright).
        let sig = &mut parts[2];
        let c = if sig.as_bytes()[10] == b'A' { "B" } else { "A" };
        sig.replace_range(10..11, c);
        format!("{};{rest}", parts.join("."))
    };
    s.sip(&signed_invite("z9hG4bKb1", "cid-b1", &bad), CALLER);
    let out = s.take();
    let out = deliver_chain(&mut s, &out, &pki);
    let msgs = sip_texts(&out);
    assert!(msgs[0].starts_with("SIP/2.0 438 "), "{msgs:?}");
    assert!(msgs[0].contains("Reason: STIR;cause=438"), "{}", msgs[0]);
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Ript(RiptCmd::CreateCall { .. }))));
    // ... and the call goes on as TN-Validation-Failed under `continue`.
    let (mut s, pki, _) = verifying_sim(false);
    s.sip(&signed_invite("z9hG4bKb2", "cid-b2", &bad), CALLER);
    let out = s.take();
    let out = deliver_chain(&mut s, &out, &pki);
    assert!(out.iter().any(|o| matches!(o,
        Output::Ript(RiptCmd::CreateCall { request, .. })
            if request.verstat.as_deref() == Some("TN-Validation-Failed"))));
    // No Identity at all: nothing to fetch, No-TN-Validation.
    let (mut s, _, _) = verifying_sim(true);
    s.sip(&invite("z9hG4bKn1", "cid-n1", OFFER), CALLER);
    let out = s.take();
    assert!(!out.iter().any(|o| matches!(o, Output::StirFetch { .. })));
    assert!(out.iter().any(|o| matches!(o,
        Output::Ript(RiptCmd::CreateCall { request, .. })
            if request.verstat.as_deref() == Some("No-TN-Validation"))));
}

/// The outputs once verification is done: the x5u chain is delivered when the engine asked for
/// it (checks that need no certificate decide without a fetch).
fn verified(s: &mut Sim, pki: &crate::stir::TestPki) -> Vec<Output> {
    let out = s.take();
    if out.iter().any(|o| matches!(o, Output::StirFetch { .. })) {
        deliver_chain(s, &out, pki)
    } else {
        out
    }
}

/// The `verstat` of the call placed toward HTTP/3, `None` when none was placed.
fn placed_verstat(out: &[Output]) -> Option<Option<String>> {
    out.iter().find_map(|o| match o {
        Output::Ript(RiptCmd::CreateCall { request, .. }) => Some(request.verstat.clone()),
        _ => None,
    })
}

/// The final response among `out` (the 100 Trying aside).
fn final_response(out: &[Output]) -> Option<String> {
    sip_texts(out)
        .into_iter()
        .find(|m| m.starts_with("SIP/2.0 ") && !m.starts_with("SIP/2.0 1"))
}

/// STIR-07 on whole INVITEs: `dest` must hold the Request-URI's number and `orig` must be the
/// caller's (P-Asserted-Identity, else From), compared in canonical form.
#[test]
fn stir_orig_and_dest_are_matched_against_the_invite() {
    let wrong_dest =
        |inv: String| inv.replace("INVITE sip:+12155551213@", "INVITE sip:+12155551299@");
    let wrong_orig =
        |inv: String| inv.replace("From: <sip:+12155551212@", "From: <sip:+12155550000@");
    let pai_wrong = |inv: String| {
        inv.replace(
            "Call-ID: ",
            "P-Asserted-Identity: <sip:+12155550000@127.0.0.1>\r\nCall-ID: ",
        )
    };
    for (name, mutate) in [
        ("dest", &wrong_dest as &dyn Fn(String) -> String),
        ("orig", &wrong_orig),
        ("PAI", &pai_wrong),
    ] {
        let (mut s, pki, id) = verifying_sim(true);
        s.sip(&mutate(signed_invite("z9hG4bKo1", "cid-o1", &id)), CALLER);
        let out = verified(&mut s, &pki);
        let fin = final_response(&out).unwrap_or_else(|| panic!("{name}: no final response"));
        assert!(fin.starts_with("SIP/2.0 438 "), "{name}: {fin}");
        assert!(fin.contains("Reason: STIR;cause=438"), "{name}: {fin}");
        assert_eq!(placed_verstat(&out), None, "{name}: no call placed");
        // Under `continue` the call goes on, marked failed.
        let (mut s, pki, id) = verifying_sim(false);
        s.sip(&mutate(signed_invite("z9hG4bKo2", "cid-o2", &id)), CALLER);
        let out = verified(&mut s, &pki);
        assert_eq!(
            placed_verstat(&out),
            Some(Some("TN-Validation-Failed".into())),
            "{name}"
        );
    }
    // Visual separators, `user=phone` and a matching PAI: the same numbers, so it passes.
    let (mut s, pki, id) = verifying_sim(true);
    let inv = signed_invite("z9hG4bKo3", "cid-o3", &id)
        .replace(
            "INVITE sip:+12155551213@127.0.0.1:5070",
            "INVITE sip:+1-215-555-1213@127.0.0.1:5070;user=phone",
        )
        .replace(
            "From: <sip:+12155551212@127.0.0.1>",
            "From: <sip:+1-215-555-1212@127.0.0.1;user=phone>",
        );
    s.sip(&inv, CALLER);
    let out = verified(&mut s, &pki);
    assert_eq!(
        placed_verstat(&out),
        Some(Some("TN-Validation-Passed".into())),
        "{:?}",
        sip_texts(&out)
    );
}

/// STIR-15: no Identity is 428 when one is required; a `verstat` the caller puts on its own
/// identity counts only from a trunk trusted for it, and never over our own verification.
#[test]
fn stir_missing_identity_and_untrusted_verstat() {
    let strict = crate::stir::VerifyPolicy {
        require_identity: true,
        ..Default::default()
    };
    let (mut s, _, _) = verifying_sim_with(true, strict.clone(), |_| {});
    s.sip(&invite("z9hG4bKm1", "cid-m1", OFFER), CALLER);
    let out = s.take();
    let fin = final_response(&out).expect("a final response");
    assert!(fin.starts_with("SIP/2.0 428 "), "{fin}");
    assert_eq!(placed_verstat(&out), None);
    // Under `continue` the call goes on without validation.
    let (mut s, _, _) = verifying_sim_with(false, strict, |_| {});
    s.sip(&invite("z9hG4bKm2", "cid-m2", OFFER), CALLER);
    assert_eq!(
        placed_verstat(&s.take()),
        Some(Some("No-TN-Validation".into()))
    );

    let claimed = |inv: String| {
        inv.replace(
            "From: <sip:+12155551212@127.0.0.1>",
            "From: <sip:+12155551212;verstat=TN-Validation-Passed@127.0.0.1;user=phone>",
        )
    };
    let trusting = |c: &mut EngineConfig| {
        c.trunks[0].match_sources = vec![(CALLER.parse::<SocketAddr>().unwrap().ip(), None)];
        c.trunks[0].trust_verstat = true;
    };
    // Not verifying, untrusted source: the claimed verstat is dropped.
    let mut s = Sim::new();
    s.sip(&claimed(invite("z9hG4bKt1", "cid-t1", OFFER)), CALLER);
    assert_eq!(placed_verstat(&s.take()), Some(None));
    // Not verifying, a trunk trusted for it: passed on.
    let mut c = cfg();
    trusting(&mut c);
    let mut s = Sim {
        e: Engine::new(c, Arc::new(Metrics::default())),
        now: Instant::now(),
        out: vec![],
    };
    s.sip(&claimed(invite("z9hG4bKt2", "cid-t2", OFFER)), CALLER);
    assert_eq!(
        placed_verstat(&s.take()),
        Some(Some("TN-Validation-Passed".into()))
    );
    // Verifying: our own result wins over the trusted trunk's claim.
    let (mut s, _, _) = verifying_sim_with(false, Default::default(), trusting);
    s.sip(&claimed(invite("z9hG4bKt3", "cid-t3", OFFER)), CALLER);
    assert_eq!(
        placed_verstat(&s.take()),
        Some(Some("No-TN-Validation".into()))
    );
    // Only the values RFC 8224 defines are taken.
    assert_eq!(
        verstat_param("sip:+12155551212;verstat=TN-Validation-Passed@h;user=phone"),
        Some("TN-Validation-Passed")
    );
    assert_eq!(
        verstat_param("tel:+12155551212;verstat=no-tn-validation"),
        Some("No-TN-Validation")
    );
    assert_eq!(verstat_param("sip:+12155551212;verstat=Trust-Me@h"), None);
    assert_eq!(
        verstat_param("sip:alice@h;verstat=TN-Validation-Passed"),
        None
    );
}

/// STIR-16: a valid shaken PASSporT decides beside a broken second Identity header, and the
/// broken one is reported in our provisional responses (RFC 9410 `Reason: STIR;cause=438`).
#[test]
fn stir_several_identity_headers_report_the_failing_one() {
    for reject in [false, true] {
        let (mut s, pki, id) = verifying_sim(reject);
        let inv = signed_invite("z9hG4bKs6", "cid-s6", &id).replace(
            "Call-ID: ",
            "Identity: garbage;info=<https://cert.example.net/other.pem>;ppt=rcd\r\nCall-ID: ",
        );
        s.sip(&inv, CALLER);
        let out = verified(&mut s, &pki);
        let key = out
            .iter()
            .find_map(|o| match o {
                Output::Ript(RiptCmd::CreateCall { call, request, .. }) => {
                    assert_eq!(request.verstat.as_deref(), Some("TN-Validation-Passed"));
                    Some(*call)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("reject={reject}: the call goes on: {:?}", sip_texts(&out)));
        s.ript(RiptEvent::ClientEvent {
            call: key,
            event: ev(EventName::Alerting, 0),
        });
        let ringing = s.sip_out().remove(0);
        assert!(ringing.starts_with("SIP/2.0 180 "), "{ringing}");
        assert!(
            ringing.contains("\r\nReason: STIR;cause=438"),
            "reject={reject}: {ringing}"
        );
    }
    // A call that passed on one header alone reports nothing.
    let (mut s, pki, id) = verifying_sim(false);
    s.sip(&signed_invite("z9hG4bKs7", "cid-s7", &id), CALLER);
    let out = verified(&mut s, &pki);
    let key = out
        .iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::CreateCall { call, .. }) => Some(*call),
            _ => None,
        })
        .unwrap();
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Alerting, 0),
    });
    assert!(!s.sip_out()[0].contains("Reason:"));
}

/// A CANCEL that arrives while the INVITE waits for its x5u certificates ends that INVITE
/// with 487 (RFC 3261 §9.2), and the certificates arriving later place no call.
#[test]
fn cancel_while_verifying_ends_the_invite() {
    let (mut s, pki, id) = verifying_sim(true);
    s.sip(&signed_invite("z9hG4bKc9", "cid-a", &id), CALLER);
    let waiting = s.take();
    assert!(waiting
        .iter()
        .any(|o| matches!(o, Output::StirFetch { .. })));
    s.sip(&cancel("z9hG4bKc9"), CALLER);
    let msgs = s.sip_out();
    let starts = start_lines(&msgs);
    assert!(starts.contains(&"SIP/2.0 200 OK".to_string()), "{starts:?}");
    let terminated = msgs
        .iter()
        .find(|m| m.starts_with("SIP/2.0 487 "))
        .unwrap_or_else(|| panic!("487 to the INVITE: {starts:?}"));
    assert!(terminated.contains("CSeq: 1 INVITE"), "{terminated}");
    let out = deliver_chain(&mut s, &waiting, &pki);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Ript(_))),
        "no call after the CANCEL: {out:?}"
    );
    assert!(sip_texts(&out).is_empty());
}

/// The verification result a trusted HTTP/3 client sends (`verstat` in `POST {TG}/calls`) rides
/// on the caller's number in the INVITE's From (RFC 8224 §6.2.3); unknown values and callers
/// that are not numbers carry none.
#[test]
fn verstat_from_http3_rides_on_the_callers_number() {
    let with = |from: &str, verstat: Option<&str>| {
        let mut s = Sim::new();
        let mut e = incoming_call(ReqId(1), Some(from), "client");
        if let RiptEvent::IncomingCall { request, .. } = &mut e {
            request.verstat = verstat.map(str::to_string);
        }
        s.ript(e);
        let inv = s.sip_out().remove(0);
        assert!(inv.starts_with("INVITE "), "{inv}");
        inv.lines()
            .find(|l| l.starts_with("From: "))
            .unwrap()
            .to_string()
    };
    let from = with("+12155551212", Some("TN-Validation-Passed"));
    assert!(
        from.starts_with("From: <sip:+12155551212;verstat=TN-Validation-Passed@")
            && from.contains(";user=phone>;tag="),
        "{from}"
    );
    let from = with("+12155551212", Some("no-tn-validation"));
    assert!(from.contains(";verstat=No-TN-Validation@"), "{from}");
    for (who, v) in [
        ("+12155551212", None),
        ("+12155551212", Some("Trust-Me")),
        ("alice", Some("TN-Validation-Passed")),
    ] {
        let from = with(who, v);
        assert!(
            !from.contains("verstat") && !from.contains("user=phone"),
            "{from}"
        );
    }
}

/// IN-04 / SIPCORS-01: OPTIONS (preflights included) from one source beyond its burst and rate
/// get 503 with Retry-After; another source is unaffected.
#[test]
fn options_are_rate_limited_per_source() {
    let mut c = cfg();
    c.options_limit = Some((20, 40));
    c.sip_cors_origins = vec!["https://allowed.example".into()];
    let mut s = Sim {
        e: Engine::new(c, Arc::new(Metrics::default())),
        now: Instant::now(),
        out: vec![],
    };
    // 200 OPTIONS in one second (every 5 ms), half of them preflights.
    let (mut ok, mut busy) = (0, 0);
    for i in 0..200 {
        let origin: &[&str] = if i % 2 == 0 {
            &["Origin: https://allowed.example"]
        } else {
            &[]
        };
        s.sip(&options_with(&format!("z9hG4bKr{i}"), origin), CALLER);
        let m = s.sip_out().remove(0);
        if m.starts_with("SIP/2.0 200 ") {
            ok += 1;
        } else {
            assert!(m.starts_with("SIP/2.0 503 "), "{m}");
            let retry: u64 = header_of(&m, "Retry-After").unwrap().parse().unwrap();
            assert!((1..=2).contains(&retry), "{m}");
            busy += 1;
        }
        s.advance(Duration::from_millis(5));
    }
    // The burst of 40, then 20 a second: about 60 answered, the rest refused.
    assert!((58..=62).contains(&ok), "answered {ok}");
    assert_eq!(ok + busy, 200);
    // Another address has its own allowance.
    s.sip(&options_with("z9hG4bKother", &[]), "127.0.0.2:5061");
    assert!(s.sip_out()[0].starts_with("SIP/2.0 200 "));
    // After a pause the first source is answered again.
    s.advance(Duration::from_secs(2));
    s.sip(&options_with("z9hG4bKlater", &[]), CALLER);
    assert!(s.sip_out()[0].starts_with("SIP/2.0 200 "));
}

/// An HTTP/3 call from +12155551212 to +12155551213 carrying `passport` (and `verstat` as the
/// client said it).
fn call_with_passport(passport: &str, verstat: Option<&str>) -> RiptEvent {
    let mut e = incoming_call(ReqId(9), Some("+12155551212"), "gateway-a");
    if let RiptEvent::IncomingCall { request, .. } = &mut e {
        request.destination = "+12155551213".into();
        request.passport = Some(passport.to_string());
        request.verstat = verstat.map(str::to_string);
    }
    e
}

/// The `Identity` and `From` of the INVITE among `out`.
fn invite_identity_and_from(out: &[Output]) -> (Option<String>, String) {
    let inv = sip_texts(out)
        .into_iter()
        .find(|m| m.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("no INVITE in {out:?}"));
    let h = |name: &str| {
        inv.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::to_string)
    };
    (h("Identity: "), h("From: ").unwrap())
}

/// Transit: a caller's PASSporT that verified travels on unchanged, SIP → HTTP/3 in
/// `passport` and HTTP/3 → SIP in `Identity`, instead of being replaced by ours.
#[test]
fn a_verified_passport_travels_on_unchanged() {
    let (mut s, pki, id) = verifying_sim(false);
    let jws = id.split(';').next().unwrap().to_string();
    s.sip(&signed_invite("z9hG4bKp1", "cid-p1", &id), CALLER);
    let out = verified(&mut s, &pki);
    let passport = out.iter().find_map(|o| match o {
        Output::Ript(RiptCmd::CreateCall { request, .. }) => Some(request.passport.clone()),
        _ => None,
    });
    assert_eq!(passport, Some(Some(jws.clone())), "SIP → HTTP/3");
    // A PASSporT that failed is not passed on.
    let (mut s, pki, id) = verifying_sim(false);
    let other_dest = signed_invite("z9hG4bKp2", "cid-p2", &id)
        .replace("INVITE sip:+12155551213@", "INVITE sip:+12155559999@");
    s.sip(&other_dest, CALLER);
    let out = verified(&mut s, &pki);
    assert!(out.iter().any(|o| matches!(o,
        Output::Ript(RiptCmd::CreateCall { request, .. })
            if request.passport.is_none()
                && request.verstat.as_deref() == Some("TN-Validation-Failed"))));

    // HTTP/3 → SIP, not verifying here: kept when the (trusted) client says it passed.
    let mut s = Sim::new();
    s.ript(call_with_passport(&jws, Some("TN-Validation-Passed")));
    let (identity, from) = invite_identity_and_from(&s.take());
    let identity = identity.expect("the caller's Identity");
    assert!(
        identity.starts_with(&format!("{jws};info=<{VX5U}>")),
        "{identity}"
    );
    assert!(from.contains(";verstat=TN-Validation-Passed@"), "{from}");
    // Without that word it is not passed on (and we have no signer: no Identity at all).
    let mut s = Sim::new();
    s.ript(call_with_passport(&jws, None));
    assert_eq!(invite_identity_and_from(&s.take()).0, None);
}

/// When we verify, a PASSporT arriving on HTTP/3 is checked before the call is placed: passed
/// on with verstat when good; refused (reject) or marked failed (continue) when not.
#[test]
fn passports_arriving_on_http3_are_verified() {
    let (mut s, pki, id) = verifying_sim(true);
    let jws = id.split(';').next().unwrap().to_string();
    // The client's own claim is replaced by our result.
    s.ript(call_with_passport(&jws, Some("TN-Validation-Failed")));
    let out = s.take();
    assert!(
        sip_texts(&out).is_empty(),
        "nothing is sent before the chain"
    );
    let out = deliver_chain(&mut s, &out, &pki);
    let (identity, from) = invite_identity_and_from(&out);
    assert!(identity.unwrap().starts_with(&jws));
    assert!(from.contains(";verstat=TN-Validation-Passed@"), "{from}");

    let tampered = {
        let mut parts: Vec<String> = jws.split('.').map(str::to_string).collect();
        let c = if parts[2].as_bytes()[10] == b'A' {
            "B"
        } else {
            "A"
        };
        parts[2].replace_range(10..11, c);
        parts.join(".")
    };
    for reject in [true, false] {
        let (mut s, pki, _) = verifying_sim(reject);
        s.ript(call_with_passport(&tampered, Some("TN-Validation-Passed")));
        let out = s.take();
        let out = deliver_chain(&mut s, &out, &pki);
        if reject {
            let refused = out.iter().find_map(|o| match o {
                Output::Ript(RiptCmd::RespondCall { result: Err(p), .. }) => Some(p.clone()),
                _ => None,
            });
            let p = refused.expect("refused");
            assert_eq!(p.status, 403);
            assert!(p.detail.contains("438"), "{}", p.detail);
            assert!(sip_texts(&out).is_empty(), "no INVITE");
        } else {
            let (identity, from) = invite_identity_and_from(&out);
            assert_eq!(identity, None, "a failed PASSporT is not passed on");
            assert!(from.contains(";verstat=TN-Validation-Failed@"), "{from}");
        }
    }
}

/// TLS-03 at the SIP layer: from a trunk that lists client certificates, a request outside a
/// dialog without a listed one gets 403 on any transport; in-dialog requests pass to the
/// dialog layer (they come back over our own connections, without client certificates).
#[test]
fn trunk_client_certificates_are_required_outside_dialogs_only() {
    let mut c = cfg();
    c.trunks[0].match_sources = vec![(CALLER.parse::<SocketAddr>().unwrap().ip(), None)];
    c.trunks[0].tls_client_fingerprints = vec![[7u8; 32]];
    let mut s = Sim::with(c);
    let deliver = |s: &mut Sim, text: &str, transport: Transport, cert: Option<[u8; 32]>| {
        let (msg, info) = msg::parse(text.as_bytes()).unwrap();
        s.input(Input::Sip(Box::new(SipInbound {
            msg,
            info,
            src: CALLER.parse().unwrap(),
            transport,
            conn: None,
            peer_cert_sha256: cert,
        })));
        start_lines(&s.sip_out())
    };
    for (i, (transport, cert)) in [
        (Transport::Udp, None),
        (Transport::Tls, None),
        (Transport::Tls, Some([8u8; 32])),
    ]
    .into_iter()
    .enumerate()
    {
        let got = deliver(
            &mut s,
            &options_with(&format!("z9hG4bKc{i}"), &[]),
            transport,
            cert,
        );
        assert_eq!(got, vec!["SIP/2.0 403 Forbidden"], "{transport:?} {cert:?}");
    }
    let got = deliver(
        &mut s,
        &options_with("z9hG4bKlisted", &[]),
        Transport::Tls,
        Some([7u8; 32]),
    );
    assert_eq!(got, vec!["SIP/2.0 200 OK"]);
    for transport in [Transport::Udp, Transport::Tls] {
        let bye = in_dialog("BYE", &format!("z9hG4bKbye{transport:?}"), 2, "gone", None);
        let got = deliver(&mut s, &bye, transport, None);
        assert_eq!(
            got,
            vec!["SIP/2.0 481 Call/Transaction Does Not Exist"],
            "{transport:?}"
        );
    }
}

#[test]
fn a_released_port_cools_before_it_is_handed_out_again() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut pool = PortPool::new(20000, 20008);
    let all: Vec<u16> = (0..4).map(|_| pool.take(t0).unwrap()).collect();
    assert_eq!(all, vec![20000, 20002, 20004, 20006]);
    // The round-robin is back at 20000, which was released last and still cools: the port
    // released first (cooled down by now) is handed out instead.
    pool.put(20002, t0);
    pool.put(20000, t0 + ms(200));
    assert_eq!(pool.take(t0 + ms(260)), Some(20002));
    assert_eq!(pool.take(t0 + ms(460)), Some(20000));
    // All in use or cooling: a cooling port rather than no port at all.
    pool.put(20004, t0 + ms(500));
    assert_eq!(pool.take(t0 + ms(501)), Some(20004));
    assert_eq!(pool.take(t0 + ms(502)), None);
}

#[test]
fn a_port_whose_bind_failed_is_passed_over_for_a_while() {
    let mut s = Sim::new();
    s.sip(&invite("z9hG4bKinv1", "cid-a", OFFER), CALLER);
    let out = s.take();
    let (key, port) = out
        .iter()
        .find_map(|o| match o {
            Output::Media(MediaCmd::OpenLegacy { call, port }) => Some((*call, *port)),
            _ => None,
        })
        .expect("a port opened");
    // Another socket on the host holds it.
    s.input(Input::Media(MediaEvent::BindFailed {
        call: key,
        port,
        reason: "Address in use".into(),
    }));
    assert!(
        start_lines(&s.sip_out())
            .iter()
            .any(|l| l.starts_with("SIP/2.0 503")),
        "the call fails"
    );
    // However many calls come next, that port is not drawn again until it rested.
    let (min, max) = (s.e.cfg.port_min, s.e.cfg.port_max);
    let pairs = crate::config::port_pairs(min, max);
    s.advance(Duration::from_secs(1));
    let mut pool_drawn = Vec::new();
    while let Some(p) = s.e.ports.take(s.now) {
        pool_drawn.push(p);
    }
    assert_eq!(pool_drawn.len(), pairs - 1, "every other port");
    assert!(!pool_drawn.contains(&port));
    for p in pool_drawn {
        s.e.ports.put(p, s.now);
    }
    s.advance(PORT_FAILED_REST);
    let mut again = Vec::new();
    while let Some(p) = s.e.ports.take(s.now) {
        again.push(p);
    }
    assert!(again.contains(&port), "rested: handed out again");
}

#[test]
fn the_pool_hands_out_exactly_the_pairs_the_config_counts() {
    let t0 = Instant::now();
    for (min, max) in [
        (20000, 20008),
        (20001, 20008),
        (20000, 20001),
        (20000, 20002),
        (20001, 20004),
        (65530, 65535),
        (10000, 29999),
    ] {
        let mut pool = PortPool::new(min, max);
        let mut got = std::collections::HashSet::new();
        while let Some(p) = pool.take(t0) {
            assert!(p % 2 == 0 && p >= min && p < max, "{p} from {min}-{max}");
            assert!(got.insert(p), "{p} twice from {min}-{max}");
        }
        assert_eq!(
            got.len(),
            crate::config::port_pairs(min, max),
            "{min}-{max}"
        );
    }
}

// ------------------------------------------------------------ trunk address failover (ADR 0020)

pub(super) const SECOND: &str = "127.0.0.2:5080";

fn first_addr() -> SocketAddr {
    TRUNK.parse().unwrap()
}

pub(super) fn second_addr() -> SocketAddr {
    SECOND.parse().unwrap()
}

/// The INVITEs among `out`: `(destination, text)`.
fn invites_to(out: &[Output]) -> Vec<(SocketAddr, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Sip(s) if s.bytes.starts_with(b"INVITE ") => {
                Some((s.dest.addr, String::from_utf8_lossy(&s.bytes).into_owned()))
            }
            _ => None,
        })
        .collect()
}

/// A 503 answer to `req`.
fn unavailable(req: &str, to_tag: &str) -> String {
    reply(req, 503, "Service Unavailable", to_tag, None)
}

pub(super) fn header<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
}

/// A trunk whose host name has two addresses: 127.0.0.1:5080, then `SECOND`.
pub(super) fn two_address_sim() -> Sim {
    let mut s = Sim::with(EngineConfig {
        // Longer than two Timer B's, as the default (180 s) is.
        no_answer_timeout: Duration::from_secs(180),
        ..cfg()
    });
    s.e.cfg.trunks[0].alternates = vec![second_addr()];
    s
}

/// `riptide_sip_trunk_failovers_total`: `[timeout, 503, transport]`.
fn failovers(s: &Sim) -> [u64; 3] {
    crate::metrics::Failover::ALL
        .map(|w| s.e.metrics.trunk_failovers[w as usize].load(std::sync::atomic::Ordering::Relaxed))
}

/// `out` tells the RIPT side that call `key` failed with `code` and ends it; no call is left.
fn assert_failed_and_ended(s: &Sim, out: &[Output], key: CallKey, code: u16) {
    let evs = server_events(out);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(
        (evs[0].name.clone(), evs[0].code),
        (EventName::Failed, Some(code))
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Ript(RiptCmd::ServerEnd { call }) if *call == key)));
    assert_eq!(s.e.active_calls(), 0);
}

/// A new call's first INVITE: its destination.
fn next_call_goes_to(s: &mut Sim, req: u64) -> SocketAddr {
    s.ript(incoming_call(ReqId(req), Some("+12155551212"), "gateway-a"));
    let sent = invites_to(&s.take());
    assert_eq!(sent.len(), 1, "{sent:?}");
    sent[0].0
}

#[test]
fn an_invite_nobody_answers_goes_to_the_trunks_next_address() {
    let mut s = two_address_sim();
    let (_key, first) = b_invite_sent(&mut s);
    // Timer A retransmits to the first address until Timer B (64 × T1 = 32 s).
    s.advance(Duration::from_millis(31_900));
    let retrans = invites_to(&s.take());
    assert_eq!(retrans.len(), 6);
    assert!(retrans.iter().all(|(to, _)| *to == first_addr()));
    s.advance(Duration::from_millis(200));
    let out = s.take();
    assert!(
        server_events(&out).is_empty(),
        "the caller is not told of it"
    );
    let sent = invites_to(&out);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (to, second) = &sent[0];
    assert_eq!(*to, second_addr());
    // A new transaction of the same call: same Call-ID and From tag, new branch, next CSeq;
    // the Request-URI still names the trunk's host.
    assert_eq!(header(second, "Call-ID"), header(&first, "Call-ID"));
    assert_eq!(header(second, "From"), header(&first, "From"));
    assert_ne!(header(second, "Via"), header(&first, "Via"));
    assert_eq!(header(&first, "CSeq"), "1 INVITE");
    assert_eq!(header(second, "CSeq"), "2 INVITE");
    assert!(
        second.starts_with("INVITE sip:answer@127.0.0.1:5080 SIP/2.0"),
        "{second}"
    );
    assert_eq!(failovers(&s), [1, 0, 0]);
    // The second address answers: the call is set up as usual.
    s.sip(&reply(second, 200, "OK", "callee2", Some(ANSWER)), SECOND);
    let out = s.take();
    assert!(
        sip_texts(&out)
            .iter()
            .any(|m| m.starts_with("ACK sip:callee@127.0.0.1:5080")),
        "the 200 is acknowledged"
    );
    assert!(server_events(&out)
        .iter()
        .any(|e| e.name == EventName::Answered));
    assert_eq!(s.e.active_calls(), 1);
    // For a minute, new calls try the address that did not answer last.
    assert_eq!(next_call_goes_to(&mut s, 2), second_addr());
    s.advance(Duration::from_secs(61));
    s.take();
    assert_eq!(next_call_goes_to(&mut s, 3), first_addr());
}

#[test]
fn a_503_goes_to_the_next_address_at_once_and_its_retry_after_orders_new_calls() {
    let mut s = two_address_sim();
    let (_key, first) = b_invite_sent(&mut s);
    s.sip(&reply(&first, 100, "Trying", "", None), TRUNK);
    s.take();
    let busy = unavailable(&first, "t503").replace(
        "Content-Length: 0",
        "Retry-After: 120 (maintenance);duration=60\r\nContent-Length: 0",
    );
    s.sip(&busy, TRUNK);
    let out = s.take();
    let lines = start_lines(&sip_texts(&out));
    assert_eq!(
        lines,
        vec![
            "ACK sip:answer@127.0.0.1:5080 SIP/2.0",
            "INVITE sip:answer@127.0.0.1:5080 SIP/2.0"
        ],
        "the 503 is acknowledged and the INVITE goes on"
    );
    assert_eq!(invites_to(&out)[0].0, second_addr());
    assert!(server_events(&out).is_empty());
    assert_eq!(failovers(&s), [0, 1, 0]);
    // For its Retry-After, the address that sent 503 is tried last.
    assert_eq!(next_call_goes_to(&mut s, 2), second_addr());
    s.advance(Duration::from_secs(100));
    s.take();
    assert_eq!(next_call_goes_to(&mut s, 3), second_addr());
    s.advance(Duration::from_secs(21));
    s.take();
    assert_eq!(next_call_goes_to(&mut s, 4), first_addr());
}

#[test]
fn a_503_without_retry_after_fails_over_but_leaves_the_order_alone() {
    let mut s = two_address_sim();
    let (_key, first) = b_invite_sent(&mut s);
    s.sip(&unavailable(&first, "t503"), TRUNK);
    assert_eq!(invites_to(&s.take())[0].0, second_addr());
    assert_eq!(next_call_goes_to(&mut s, 2), first_addr());
}

#[test]
fn when_the_last_address_fails_the_call_fails_as_it_would_with_one() {
    let mut s = two_address_sim();
    let (key, first) = b_invite_sent(&mut s);
    s.sip(&unavailable(&first, "t503"), TRUNK);
    let second = invites_to(&s.take()).remove(0).1;
    s.sip(&unavailable(&second, "t503b"), SECOND);
    let out = s.take();
    assert!(invites_to(&out).is_empty(), "no third try");
    assert_failed_and_ended(&s, &out, key, 503);

    // Both addresses silent: two Timer B's, then 408 as with one address.
    let (_key, _inv) = b_invite_sent(&mut s);
    s.advance(Duration::from_millis(32_100));
    assert_eq!(invites_to(&s.take()).last().unwrap().0, second_addr());
    s.advance(Duration::from_millis(32_000));
    let evs = server_events(&s.take());
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(
        (evs[0].name.clone(), evs[0].code),
        (EventName::Failed, Some(408))
    );
}

#[test]
fn a_caller_who_gave_up_is_not_failed_over() {
    let mut s = two_address_sim();
    let (key, _inv) = b_invite_sent(&mut s);
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: ev(EventName::End, 0),
    });
    s.take();
    s.advance(Duration::from_millis(32_100));
    let out = s.take();
    assert!(
        !invites_to(&out).iter().any(|(to, _)| *to == second_addr()),
        "no INVITE for a call that is over"
    );
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn a_redirect_ends_the_failover_list() {
    let mut s = two_address_sim();
    let (_key, inv) = b_invite_sent(&mut s);
    let moved = reply(&inv, 302, "Moved Temporarily", "callee1", None).replace(
        "Contact: <sip:callee@127.0.0.1:5080>",
        "Contact: <sip:other@127.0.0.1:5090>",
    );
    s.sip(&moved, TRUNK);
    let redirected = invites_to(&s.take()).remove(0).1;
    s.sip(&unavailable(&redirected, "t"), "127.0.0.1:5090");
    let out = s.take();
    assert!(
        invites_to(&out).is_empty(),
        "the redirect's target has no alternates"
    );
    assert_eq!(server_events(&out)[0].code, Some(503));
}

#[test]
fn a_call_under_way_keeps_the_addresses_it_started_with() {
    let mut s = two_address_sim();
    let (_key, first) = b_invite_sent(&mut s);
    s.input(Input::TrunkAddrs {
        trunk: 0,
        hop: HopAddrs::plain(vec!["127.0.0.3:5080".parse().unwrap()]),
        transport: Transport::Udp,
    });
    s.sip(&unavailable(&first, "t"), TRUNK);
    assert_eq!(invites_to(&s.take())[0].0, second_addr());
}

#[test]
fn addresses_from_a_new_lookup_apply_to_calls_placed_after_it() {
    let mut s = Sim::new();
    let (_key, _inv) = b_invite_sent(&mut s);
    let third: SocketAddr = "127.0.0.3:5080".parse().unwrap();
    s.input(Input::TrunkAddrs {
        trunk: 0,
        hop: HopAddrs::plain(vec![third, second_addr()]),
        transport: Transport::Udp,
    });
    assert_eq!(next_call_goes_to(&mut s, 2), third);
    // An empty answer and an unknown trunk are ignored.
    s.input(Input::TrunkAddrs {
        trunk: 0,
        hop: HopAddrs::plain(vec![]),
        transport: Transport::Udp,
    });
    s.input(Input::TrunkAddrs {
        trunk: 7,
        hop: HopAddrs::plain(vec![second_addr()]),
        transport: Transport::Udp,
    });
    assert_eq!(next_call_goes_to(&mut s, 3), third);
}

#[test]
fn a_browser_call_stays_at_the_address_its_preflight_allowed() {
    let mut s = preflight_sim();
    s.e.cfg.trunks[0].alternates = vec![second_addr()];
    s.ript(browser_call(ReqId(1), PAGE));
    let msgs = s.sip_out();
    let ok = reply(&msgs[0], 200, "OK", "t1", None).replace(
        "Content-Length: 0",
        "Access-Control-Allow-Origin: https://allowed.example\r\nContent-Length: 0",
    );
    s.sip(&ok, TRUNK);
    let invite = invites_to(&s.take()).remove(0).1;
    s.sip(&unavailable(&invite, "t503"), TRUNK);
    let out = s.take();
    assert!(
        invites_to(&out).is_empty(),
        "no INVITE to an address that was not preflighted"
    );
    assert_eq!(server_events(&out)[0].code, Some(503));
    // A gateway's call on the same trunk does fail over.
    let (_key, inv) = b_invite_sent(&mut s);
    s.sip(&unavailable(&inv, "t503"), TRUNK);
    assert_eq!(invites_to(&s.take())[0].0, second_addr());
}

/// A call on a two-address trunk whose first address timed out: the sim, the first INVITE and
/// the one sent to the second address.
fn failed_over() -> (Sim, String, String) {
    let mut s = two_address_sim();
    let (_key, first) = b_invite_sent(&mut s);
    s.advance(Duration::from_millis(32_100));
    let second = invites_to(&s.take()).pop().unwrap().1;
    (s, first, second)
}

/// `msgs` are the ACK and the BYE that end the first address's late dialog.
fn assert_acked_and_ended(msgs: &[String]) {
    assert_eq!(
        start_lines(msgs),
        vec![
            "ACK sip:callee@127.0.0.1:5080 SIP/2.0",
            "BYE sip:callee@127.0.0.1:5080 SIP/2.0"
        ],
        "{msgs:?}"
    );
}

#[test]
fn a_late_answer_from_an_address_that_had_timed_out_is_acked_and_ended() {
    let (mut s, first, second) = failed_over();
    // The first address was only slow: its 200 comes after the call moved on.
    let late = reply(&first, 200, "OK", "slow1", Some(ANSWER));
    s.sip(&late, TRUNK);
    let msgs = s.sip_out();
    assert_acked_and_ended(&msgs);
    assert!(msgs
        .iter()
        .all(|m| m.contains("To: ") && m.contains("tag=slow1")));
    assert!(
        server_events(&s.take()).is_empty(),
        "the call is still waiting for the second address"
    );
    // The second address answers: that is the call.
    s.sip(&reply(&second, 200, "OK", "callee2", Some(ANSWER)), SECOND);
    let out = s.take();
    assert!(server_events(&out)
        .iter()
        .any(|e| e.name == EventName::Answered));
    assert_eq!(
        start_lines(&sip_texts(&out)),
        vec!["ACK sip:callee@127.0.0.1:5080 SIP/2.0"]
    );
}

#[test]
fn a_late_answer_from_an_address_that_had_timed_out_is_acked_and_ended_after_the_call_too() {
    let (mut s, first, second) = failed_over();
    // The second address is busy: the call ends.
    s.sip(&reply(&second, 486, "Busy Here", "busy2", None), SECOND);
    assert_eq!(server_events(&s.take()).last().unwrap().code, Some(486));
    assert_eq!(s.e.active_calls(), 0);
    // Then the first address, only slow, answers: its dialog is ACKed and ended, although the
    // INVITE the call sent last went elsewhere.
    s.sip(&reply(&first, 200, "OK", "slow1", Some(ANSWER)), TRUNK);
    let msgs = s.sip_out();
    assert_acked_and_ended(&msgs);
    // A host the call never sent to still gets nothing.
    s.sip(
        &reply(&first, 200, "OK", "other3", Some(ANSWER)),
        "127.0.0.3:5080",
    );
    assert!(s.sip_out().is_empty());
}

#[test]
fn an_attempt_that_brought_early_media_is_not_failed_over() {
    let mut s = two_address_sim();
    let (_key, first) = b_invite_sent(&mut s);
    s.sip(
        &reply(&first, 183, "Session Progress", "early1", Some(ANSWER)),
        TRUNK,
    );
    s.take();
    s.sip(&unavailable(&first, "early1"), TRUNK);
    let out = s.take();
    assert!(
        invites_to(&out).is_empty(),
        "the offer was already fitted to this server's answer"
    );
    assert_eq!(server_events(&out).last().unwrap().code, Some(503));
    // A provisional without SDP changes nothing: that call does fail over.
    let (_key, first) = b_invite_sent(&mut s);
    s.sip(&reply(&first, 180, "Ringing", "r1", None), TRUNK);
    s.take();
    s.sip(&unavailable(&first, "r1"), TRUNK);
    assert_eq!(invites_to(&s.take())[0].0, second_addr());
}

#[test]
fn a_cancelled_attempt_is_not_failed_over() {
    let mut s = two_address_sim();
    let (key, first) = b_invite_sent(&mut s);
    s.sip(&reply(&first, 180, "Ringing", "r1", None), TRUNK);
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: ev(EventName::End, 0),
    });
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["CANCEL sip:answer@127.0.0.1:5080 SIP/2.0"]
    );
    // The server was going down anyway: 503 instead of 487.
    s.sip(&unavailable(&first, "r1"), TRUNK);
    assert!(invites_to(&s.take()).is_empty());
}

#[test]
fn credentials_for_one_address_are_not_sent_to_the_next() {
    let mut s = two_address_sim();
    s.e.cfg.trunks[0].digest_login = Some(Arc::new(crate::sip::digest::Login::new(
        "riptide", "trunk-pw",
    )));
    let (_key, first) = b_invite_sent(&mut s);
    let challenge = reply(&first, 401, "Unauthorized", "c1", None).replace(
        "Content-Length: 0",
        "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", qop=\"auth\"\r\nContent-Length: 0",
    );
    s.sip(&challenge, TRUNK);
    let retry = invites_to(&s.take()).remove(0).1;
    assert!(retry.contains("\r\nAuthorization: Digest"), "{retry}");
    s.sip(&unavailable(&retry, "c1"), TRUNK);
    let (to, next) = invites_to(&s.take()).remove(0);
    assert_eq!(to, second_addr());
    assert_eq!(header(&next, "CSeq"), "3 INVITE");
    assert!(
        !next.contains("Authorization:"),
        "the first server's nonce is not the second's: {next}"
    );
}

/// As [`two_address_sim`], over TCP.
fn tcp_trunk_sim(alternates: Vec<SocketAddr>) -> Sim {
    let mut s = two_address_sim();
    s.e.cfg.trunks[0].dest.transport = Transport::Tcp;
    s.e.cfg.trunks[0].alternates = alternates;
    s
}

#[test]
fn an_invite_that_could_not_be_sent_goes_to_the_next_address_at_once() {
    let mut s = tcp_trunk_sim(vec![second_addr()]);
    let (_key, first) = b_invite_sent(&mut s);
    assert!(header(&first, "Via").starts_with("SIP/2.0/TCP"), "{first}");
    // Another address, or the same one over another transport, is not this call's.
    s.input(Input::Unreachable {
        addr: second_addr(),
        transport: Transport::Tcp,
    });
    s.input(Input::Unreachable {
        addr: first_addr(),
        transport: Transport::Udp,
    });
    assert!(invites_to(&s.take()).is_empty());
    // The connect to the first address failed: the INVITE goes on now, not after Timer B.
    s.input(Input::Unreachable {
        addr: first_addr(),
        transport: Transport::Tcp,
    });
    let out = s.take();
    let sent = invites_to(&out);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, second_addr());
    assert_eq!(header(&sent[0].1, "CSeq"), "2 INVITE");
    assert!(server_events(&out).is_empty());
    assert_eq!(failovers(&s), [0, 0, 1]);
    // The abandoned transaction is gone: no Timer B of its own later.
    s.sip(&reply(&sent[0].1, 180, "Ringing", "r2", None), SECOND);
    s.take();
    s.advance(Duration::from_secs(40));
    let out = s.take();
    assert!(invites_to(&out).is_empty(), "{:?}", sip_texts(&out));
    assert!(server_events(&out).is_empty(), "still ringing");
    assert_eq!(s.e.active_calls(), 1);
}

#[test]
fn an_invite_that_could_not_be_sent_with_no_address_left_fails_at_once() {
    let mut s = tcp_trunk_sim(vec![]);
    let (key, _inv) = b_invite_sent(&mut s);
    s.input(Input::Unreachable {
        addr: first_addr(),
        transport: Transport::Tcp,
    });
    let out = s.take();
    assert_failed_and_ended(&s, &out, key, 503);
    // A call the server already answered with a provisional is not touched.
    let (_key, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 100, "Trying", "", None), TRUNK);
    s.take();
    s.input(Input::Unreachable {
        addr: first_addr(),
        transport: Transport::Tcp,
    });
    assert!(server_events(&s.take()).is_empty());
    assert_eq!(s.e.active_calls(), 1);
}

fn third_addr() -> SocketAddr {
    "127.0.0.3:5080".parse().unwrap()
}

const fn rank(priority: u16, weight: u16, target: u16) -> SrvRank {
    SrvRank::new(priority, weight, target)
}

/// A trunk whose addresses came from SRV records: `first_addr()` alone at priority 20; at
/// priority 10, `second_addr()` with weight 1 and `third_addr()` with weight 3.
fn srv_trunk_sim() -> Sim {
    // Room for the 90 calls of the drawing test.
    let mut s = Sim::with(EngineConfig {
        no_answer_timeout: Duration::from_secs(180),
        port_max: 21000,
        max_calls: 1000,
        max_calls_per_client: 1000,
        ..cfg()
    });
    let t = &mut s.e.cfg.trunks[0];
    t.alternates = vec![second_addr(), third_addr()];
    t.ranks = vec![rank(20, 0, 0), rank(10, 1, 1), rank(10, 3, 2)];
    s
}

#[test]
fn srv_ranked_addresses_are_drawn_per_call_by_priority_then_weight() {
    let mut s = srv_trunk_sim();
    let mut firsts: HashMap<SocketAddr, u32> = HashMap::new();
    for req in 1..=90 {
        *firsts.entry(next_call_goes_to(&mut s, req)).or_default() += 1;
    }
    assert_eq!(
        firsts.get(&first_addr()),
        None,
        "priority 20 is never first while priority 10 has addresses: {firsts:?}"
    );
    // Expected 22.5 and 67.5 of 90 (weights 1 : 3). Outside these bounds with probability
    // under 1e-6 (binomial); a fixed order (all to one server) is outside them. The exact
    // proportions are sip::srv's tests.
    let (light, heavy) = (firsts[&second_addr()], firsts[&third_addr()]);
    assert!(light >= 5 && heavy >= 45, "{firsts:?}");
}

#[test]
fn an_srv_trunk_fails_over_within_its_priority_before_the_next_priority() {
    let mut s = srv_trunk_sim();
    s.ript(incoming_call(ReqId(1), Some("+12155551212"), "gateway-a"));
    let sent = invites_to(&s.take());
    let (to, inv) = sent[0].clone();
    assert!(to == second_addr() || to == third_addr(), "{to}");
    s.sip(&unavailable(&inv, "t1"), &to.to_string());
    let sent = invites_to(&s.take());
    let (next, inv) = sent[0].clone();
    let other = if to == second_addr() {
        third_addr()
    } else {
        second_addr()
    };
    assert_eq!(next, other, "the other server of priority 10");
    s.sip(&unavailable(&inv, "t2"), &next.to_string());
    let sent = invites_to(&s.take());
    assert_eq!(sent[0].0, first_addr(), "then priority 20");
    assert!(
        header(&sent[0].1, "CSeq").starts_with("3 "),
        "{}",
        sent[0].1
    );
}

#[test]
fn a_lookup_that_changes_only_the_srv_ranks_is_taken() {
    let mut s = two_address_sim();
    // The same two addresses, now from SRV with the second one preferred.
    s.input(Input::TrunkAddrs {
        trunk: 0,
        hop: HopAddrs {
            addrs: vec![first_addr(), second_addr()],
            ranks: vec![rank(20, 0, 0), rank(10, 0, 1)],
        },
        transport: Transport::Udp,
    });
    assert_eq!(next_call_goes_to(&mut s, 1), second_addr());
    assert_eq!(s.e.cfg.trunks[0].ranks.len(), 2);
    // Back to plain A records: their order again.
    s.input(Input::TrunkAddrs {
        trunk: 0,
        hop: HopAddrs::plain(vec![first_addr(), second_addr()]),
        transport: Transport::Udp,
    });
    assert_eq!(next_call_goes_to(&mut s, 2), first_addr());
}

// ------------------------------------------------ in-dialog next hops named by host name

/// The lookups the engine asked the gateway for: call, URI, transport.
fn lookups(out: &[Output]) -> Vec<(CallKey, String, Transport)> {
    out.iter()
        .filter_map(|o| match o {
            Output::ResolveHop {
                call,
                uri,
                transport,
            } => Some((*call, uri.clone(), *transport)),
            _ => None,
        })
        .collect()
}

/// The first of `msgs` that starts with `start` (a request's method and a space, or a status
/// line's beginning); the test fails without one.
pub(super) fn first<'a>(msgs: &'a [String], start: &str) -> &'a String {
    msgs.iter()
        .find(|m| m.starts_with(start))
        .unwrap_or_else(|| panic!("no message starting with {start:?} among {msgs:?}"))
}

/// Every SIP message among `out` that starts with `start`: where it went, and its text.
pub(super) fn sent_to(out: &[Output], start: &str) -> Vec<(SocketAddr, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Sip(m) if m.bytes.starts_with(start.as_bytes()) => {
                Some((m.dest.addr, String::from_utf8_lossy(&m.bytes).into_owned()))
            }
            _ => None,
        })
        .collect()
}

/// The one request `method` among `out`: where it went, and its text.
pub(super) fn request_to(out: &[Output], method: &str) -> (SocketAddr, String) {
    let mut all = sent_to(out, &format!("{method} "));
    assert_eq!(all.len(), 1, "one {method} in {:?}", sip_texts(out));
    all.remove(0)
}

/// A call placed on the trunk and answered with `ok` (made from the INVITE): its key, the
/// INVITE, and the outputs of the answer.
fn b_call_answered_with(
    s: &mut Sim,
    ok: impl Fn(&str) -> String,
) -> (CallKey, String, Vec<Output>) {
    let (key, inv) = b_invite_sent(s);
    s.sip(&ok(&inv), TRUNK);
    (key, inv, s.take())
}

/// The trunk's 200 with `contact` and, if given, a Record-Route.
fn ok_naming(inv: &str, contact: &str, record_route: Option<&str>) -> String {
    ok_from(inv, "uas1", contact, record_route)
}

/// A 200 to `inv` from the fork with To tag `tag`, naming `contact` and, if given, a
/// Record-Route.
fn ok_from(inv: &str, tag: &str, contact: &str, record_route: Option<&str>) -> String {
    let rr = record_route.map_or(String::new(), |r| format!("Record-Route: {r}\r\n"));
    reply(inv, 200, "OK", tag, Some(ANSWER)).replace(
        &format!("Contact: <sip:callee@{TRUNK}>"),
        &format!("{rr}Contact: {contact}"),
    )
}

/// The callee's offerless re-INVITE in the dialog its 200 made (read from our `ack`), naming
/// `contact`.
pub(super) fn callee_reinvite(ack: &str, branch: &str, contact: &str) -> String {
    format!(
        "INVITE sip:riptide@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch={branch}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 INVITE\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n",
        header(ack, "To"),
        header(ack, "From"),
        header(ack, "Call-ID"),
    )
}

/// Where our BYE among `out` went.
fn bye_dest(out: &[Output]) -> Dest {
    out.iter()
        .find_map(|o| match o {
            Output::Sip(m) if m.bytes.starts_with(b"BYE ") => Some(m.dest),
            _ => None,
        })
        .expect("a BYE")
}

fn b_hangs_up(s: &mut Sim, key: CallKey) -> (SocketAddr, String) {
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: ev(EventName::End, 1),
    });
    request_to(&s.take(), "BYE")
}

fn found(s: &mut Sim, key: CallKey, uri: &str, addrs: &[&str]) -> Vec<Output> {
    s.input(Input::HopAddr {
        call: key,
        uri: uri.into(),
        addrs: Ok(addrs.iter().map(|a| a.parse().unwrap()).collect()),
    });
    s.take()
}

#[test]
fn a_record_route_host_name_is_looked_up_and_the_ack_and_bye_follow_the_answer() {
    let mut s = Sim::new();
    let (key, inv, out) = b_call_answered_with(&mut s, |inv| {
        ok_naming(
            inv,
            &format!("<sip:callee@{TRUNK}>"),
            Some("<sip:edge.provider.test;lr>"),
        )
    });
    let uri = "sip:edge.provider.test;lr";
    assert_eq!(lookups(&out), vec![(key, uri.to_string(), Transport::Udp)]);
    // The ACK leaves at once, toward the trunk, where the INVITE went.
    let (to, ack) = request_to(&out, "ACK");
    assert_eq!(to, first_addr(), "{ack}");
    assert!(ack.contains("Route: <sip:edge.provider.test;lr>"), "{ack}");
    // Once the name is found, the same ACK goes there too, and a retransmitted 2xx gets it
    // there.
    let out = found(&mut s, key, uri, &["192.0.2.50:5060", "192.0.2.51:5060"]);
    let edge: SocketAddr = "192.0.2.50:5060".parse().unwrap();
    assert_eq!(request_to(&out, "ACK"), (edge, ack.clone()));
    s.sip(
        &ok_naming(
            &inv,
            &format!("<sip:callee@{TRUNK}>"),
            Some("<sip:edge.provider.test;lr>"),
        ),
        TRUNK,
    );
    assert_eq!(request_to(&s.take(), "ACK"), (edge, ack));
    let (to, bye) = b_hangs_up(&mut s, key);
    assert_eq!(to, edge, "{bye}");
    assert!(
        bye.starts_with("BYE sip:callee@127.0.0.1:5080 SIP/2.0"),
        "{bye}"
    );
    assert!(bye.contains("Route: <sip:edge.provider.test;lr>"), "{bye}");
}

#[test]
fn a_contact_host_name_is_looked_up_and_a_failed_lookup_keeps_the_trunk() {
    for lookup_works in [true, false] {
        let mut s = Sim::new();
        let (key, _, out) = b_call_answered_with(&mut s, |inv| {
            ok_naming(inv, "<sip:callee@pbx.provider.test:5090>", None)
        });
        let uri = "sip:callee@pbx.provider.test:5090".to_string();
        assert_eq!(lookups(&out), vec![(key, uri.clone(), Transport::Udp)]);
        let pbx: SocketAddr = "192.0.2.60:5090".parse().unwrap();
        s.input(Input::HopAddr {
            call: key,
            uri,
            addrs: if lookup_works {
                Ok(vec![pbx])
            } else {
                Err("NXDOMAIN".into())
            },
        });
        s.take();
        let (to, bye) = b_hangs_up(&mut s, key);
        assert!(
            bye.starts_with("BYE sip:callee@pbx.provider.test:5090 SIP/2.0"),
            "{bye}"
        );
        assert_eq!(to, if lookup_works { pbx } else { first_addr() });
    }
}

#[test]
fn a_name_that_also_leads_where_the_dialog_goes_keeps_it_there() {
    let mut s = Sim::new();
    let (key, _, out) = b_call_answered_with(&mut s, |inv| {
        ok_naming(inv, "<sip:callee@cluster.provider.test:5080>", None)
    });
    assert_eq!(lookups(&out).len(), 1);
    // The trunk is one of the name's nodes, though not the first: the dialog stays on it, and
    // no ACK goes out again.
    let out = found(
        &mut s,
        key,
        "sip:callee@cluster.provider.test:5080",
        &["192.0.2.70:5080", TRUNK],
    );
    assert!(sip_texts(&out).is_empty(), "{:?}", sip_texts(&out));
    assert_eq!(b_hangs_up(&mut s, key).0, first_addr());
}

#[test]
fn an_answer_for_a_target_the_dialog_has_left_is_ignored() {
    let mut s = Sim::new();
    let (key, _, out) = b_call_answered_with(&mut s, |inv| {
        ok_naming(inv, "<sip:callee@old.provider.test>", None)
    });
    assert_eq!(lookups(&out).len(), 1);
    let ack = request_to(&out, "ACK").1;
    // The callee refreshes its target to an IP literal before the lookup of the old one ends.
    let reinvite = callee_reinvite(&ack, "z9hG4bKre1", "<sip:callee@192.0.2.70:5062>");
    s.sip(&reinvite, TRUNK);
    assert!(
        lookups(&s.take()).is_empty(),
        "an IP literal needs no lookup"
    );
    found(
        &mut s,
        key,
        "sip:callee@old.provider.test",
        &["192.0.2.99:5060"],
    );
    let (to, bye) = b_hangs_up(&mut s, key);
    assert!(
        bye.starts_with("BYE sip:callee@192.0.2.70:5062 SIP/2.0"),
        "{bye}"
    );
    assert_eq!(to, "192.0.2.70:5062".parse::<SocketAddr>().unwrap());
}

#[test]
fn a_dialog_keeps_its_transport_and_a_tls_dialog_stays_on_its_connection() {
    // TCP: a name without a transport parameter is looked up for TCP, not moved to UDP.
    let mut s = Sim::new();
    s.e.cfg.trunks[0].dest.transport = Transport::Tcp;
    let (key, _, out) = b_call_answered_with(&mut s, |inv| {
        ok_naming(inv, "<sip:callee@pbx.provider.test>", None)
    });
    let uri = "sip:callee@pbx.provider.test";
    assert_eq!(lookups(&out), vec![(key, uri.to_string(), Transport::Tcp)]);
    found(&mut s, key, uri, &["192.0.2.60:5060"]);
    let (to, bye) = b_hangs_up(&mut s, key);
    assert_eq!(to, "192.0.2.60:5060".parse::<SocketAddr>().unwrap());
    assert!(header(&bye, "Via").starts_with("SIP/2.0/TCP"), "{bye}");
    // TCP, an IP literal without a transport parameter: still TCP.
    let mut s = Sim::new();
    s.e.cfg.trunks[0].dest.transport = Transport::Tcp;
    let (key, _, _) = b_call_answered_with(&mut s, |inv| {
        ok_naming(inv, "<sip:callee@192.0.2.61:5070>", None)
    });
    let out = {
        s.ript(RiptEvent::ServerEvent {
            call: key,
            event: ev(EventName::End, 1),
        });
        s.take()
    };
    let bye = bye_dest(&out);
    assert_eq!(
        (bye.addr, bye.transport),
        ("192.0.2.61:5070".parse().unwrap(), Transport::Tcp)
    );
    // TLS: neither a sip: name nor a sips: one moves the dialog off its connection.
    for contact in [
        "<sip:callee@pbx.provider.test>",
        "<sips:callee@pbx.provider.test>",
        "<sip:callee@192.0.2.62>",
    ] {
        let mut s = Sim::new();
        s.e.cfg.trunks[0].dest.transport = Transport::Tls;
        let (key, _, out) = b_call_answered_with(&mut s, |inv| ok_naming(inv, contact, None));
        assert!(lookups(&out).is_empty(), "{contact}");
        s.ript(RiptEvent::ServerEvent {
            call: key,
            event: ev(EventName::End, 1),
        });
        let bye = bye_dest(&s.take());
        assert_eq!(
            (bye.addr, bye.transport),
            (first_addr(), Transport::Tls),
            "{contact}"
        );
    }
}

/// A caller's INVITE with `record_route`, answered by the RIPT side: the key, and the 200's
/// text and destination.
fn a_call_in_answered_with_route(
    s: &mut Sim,
    record_route: &str,
) -> (CallKey, (SocketAddr, String)) {
    let inv = invite("z9hG4bKrr", "cid-a", OFFER).replace(
        "Contact: <sip:caller@127.0.0.1:5061>",
        &format!("Record-Route: {record_route}\r\nContact: <sip:caller@127.0.0.1:5061>"),
    );
    s.sip(&inv, CALLER);
    let out = s.take();
    assert!(
        lookups(&out).is_empty(),
        "nothing is looked up before the call is answered"
    );
    let (key, adv) = created_call(&out).unwrap();
    call_made(s, key, &adv);
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Answered, 0),
    });
    let mut oks = sent_to(&s.take(), "SIP/2.0 200");
    assert_eq!(oks.len(), 1);
    (key, oks.remove(0))
}

#[test]
fn a_callers_responses_go_back_along_via_and_its_route_is_taken_from_its_ack() {
    for (route, ip_literal) in [
        ("<sip:proxy.corp.test;lr>", false),
        ("<sip:192.0.2.80:5099;lr>", true),
    ] {
        let mut s = Sim::new();
        let (key, (to, ok)) = a_call_in_answered_with_route(&mut s, route);
        assert_eq!(
            to,
            CALLER.parse::<SocketAddr>().unwrap(),
            "the 200 goes back: {ok}"
        );
        // Retransmissions of the 200 too.
        s.advance(Duration::from_millis(600));
        let again = sent_to(&s.take(), "SIP/2.0 200");
        assert!(!again.is_empty());
        assert!(again
            .iter()
            .all(|(a, _)| *a == CALLER.parse::<SocketAddr>().unwrap()));
        let tag = to_tag_of(&ok);
        s.sip(&in_dialog("ACK", "z9hG4bKack", 1, &tag, None), CALLER);
        let out = s.take();
        let proxy: SocketAddr = "192.0.2.80:5099".parse().unwrap();
        if ip_literal {
            assert!(lookups(&out).is_empty());
        } else {
            let uri = "sip:proxy.corp.test;lr";
            assert_eq!(lookups(&out), vec![(key, uri.to_string(), Transport::Udp)]);
            // No ACK of ours to send again on a UAS leg.
            assert!(sip_texts(&found(&mut s, key, uri, &["192.0.2.80:5099"])).is_empty());
        }
        s.ript(RiptEvent::ClientEvent {
            call: key,
            event: ev(EventName::End, 1),
        });
        let (to, bye) = request_to(&s.take(), "BYE");
        assert_eq!(to, proxy, "{route}: {bye}");
        assert!(
            bye.starts_with("BYE sip:caller@127.0.0.1:5061 SIP/2.0"),
            "{bye}"
        );
    }
}

#[test]
fn a_callers_contact_is_not_looked_up_and_a_refresh_does_not_ask_again_for_the_route() {
    // A caller's Contact: requests go back where its INVITE came from (NATs).
    let mut s = Sim::new();
    let inv = invite("z9hG4bKnm", "cid-a", OFFER).replace(
        "Contact: <sip:caller@127.0.0.1:5061>",
        "Contact: <sip:caller@phone.corp.test>",
    );
    s.sip(&inv, CALLER);
    assert!(lookups(&s.take()).is_empty());
    // A callee that record-routed: its target refresh moves nothing, the route stays.
    let mut s = Sim::new();
    let route = "<sip:edge.provider.test;lr>";
    let (key, _, out) = b_call_answered_with(&mut s, |inv| {
        ok_naming(inv, &format!("<sip:callee@{TRUNK}>"), Some(route))
    });
    assert_eq!(lookups(&out).len(), 1);
    let ack = request_to(&out, "ACK").1;
    let reinvite = callee_reinvite(&ack, "z9hG4bKre2", "<sip:callee@moved.provider.test>");
    s.sip(&reinvite, TRUNK);
    assert!(lookups(&s.take()).is_empty());
    found(
        &mut s,
        key,
        "sip:edge.provider.test;lr",
        &["192.0.2.50:5060"],
    );
    let (to, bye) = b_hangs_up(&mut s, key);
    assert_eq!(to, "192.0.2.50:5060".parse::<SocketAddr>().unwrap());
    assert!(
        bye.starts_with("BYE sip:callee@moved.provider.test SIP/2.0"),
        "{bye}"
    );
}

#[test]
fn a_trunk_without_an_address_yet_refuses_with_503_until_a_lookup_gives_it_one() {
    let mut c = cfg();
    c.trunks[0].unresolved = true;
    c.trunks[0].dest.addr = "0.0.0.0:0".parse().unwrap();
    let mut s = Sim::with(c);
    s.ript(incoming_call(ReqId(1), Some("+12155551212"), "gateway-a"));
    let out = s.take();
    assert!(sip_texts(&out).is_empty(), "nothing is sent anywhere");
    assert!(
        server_events(&out)
            .iter()
            .any(|e| e.name == EventName::Failed && e.code == Some(503)),
        "{out:?}"
    );
    assert_eq!(s.e.active_calls(), 0);
    // Found over TCP (its NAPTR records chose it): the next call goes there, over TCP.
    s.input(Input::TrunkAddrs {
        trunk: 0,
        hop: HopAddrs::plain(vec![TRUNK.parse().unwrap()]),
        transport: Transport::Tcp,
    });
    s.ript(incoming_call(ReqId(2), Some("+12155551212"), "gateway-a"));
    let sent: Vec<_> = s
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Sip(m) if m.bytes.starts_with(b"INVITE ") => Some(m.dest),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].addr, TRUNK.parse::<SocketAddr>().unwrap());
    assert_eq!(sent[0].transport, Transport::Tcp);
}
