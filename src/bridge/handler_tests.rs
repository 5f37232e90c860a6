//! SIP calls rung on registered handlers (protocol.md §2.7), with simulated time: the offer,
//! forking answers (take, decline, a second take), and the caller giving up.

use super::tests::{pcmu_adv, sip_texts, Sim};
use super::*;
use crate::ript::model::{Advertisement, CodecAd, Handler};

const CALLER: &str = "127.0.0.1:5061";
const HANDLER_URI: &str =
    "https://localhost:4434/.well-known/ript/v1/providertgs/web/handlers/page-1";

/// SIP calls to users starting with `page` ring the handlers of TG `web`; the rest go to
/// peer `b` as before.
fn cfg() -> EngineConfig {
    let mut c = EngineConfig {
        port_max: 20100,
        keepalive: None,
        ..EngineConfig::example()
    };
    c.sip_routes
        .push(("page".into(), SipTarget::Handlers("web".into())));
    c
}

/// PCMU, PCMA and telephone-event 0-16 at payload type 101.
const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n";

fn invite(user: &str) -> String {
    format!(
        "INVITE sip:{user}@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-h1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@127.0.0.1>;tag=caller1\r\nTo: <sip:{user}@127.0.0.1:5070>\r\nCall-ID: cid-h\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{CALLER}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        OFFER.len()
    )
}

fn in_dialog(method: &str, branch: &str, cseq: u32, to_tag: &str) -> String {
    format!(
        "{method} sip:riptide@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@127.0.0.1>;tag=caller1\r\nTo: <sip:page@127.0.0.1:5070>;tag={to_tag}\r\nCall-ID: cid-h\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn cancel() -> String {
    format!(
        "CANCEL sip:page@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK-h1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@127.0.0.1>;tag=caller1\r\nTo: <sip:page@127.0.0.1:5070>\r\nCall-ID: cid-h\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    )
}

fn status_lines(msgs: &[String]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.lines().next().unwrap_or("").to_string())
        .collect()
}

/// A browser page's handler: PCMU and telephone-event at its own payload type 96.
fn page_handler() -> Handler {
    let mut adv = pcmu_adv();
    adv.codecs[1].payload_type = Some(96);
    Handler {
        handler_id: "page-1".into(),
        advertisement: adv,
        uri: Some(HANDLER_URI.into()),
    }
}

/// Places the SIP call and returns its key and the offer the HTTP/3 server got.
fn offered(sim: &mut Sim) -> (CallKey, CallDescription) {
    sim.sip(&invite("page"), CALLER);
    let out = sim.take();
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Ript(RiptCmd::CreateCall { .. }))),
        "a handler call is not placed on a peer"
    );
    let (key, tg, id, d) = out
        .iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::Offer {
                call,
                tg,
                id,
                description,
            }) => Some((*call, tg.clone(), id.clone(), description.clone())),
            _ => None,
        })
        .expect("the call is offered to the handlers");
    assert_eq!(tg, "web");
    assert!(
        d.uri.ends_with(&format!("/providertgs/web/calls/{id}")),
        "{}",
        d.uri
    );
    assert_eq!(d.direction, Some(CallDirection::Inbound));
    assert_eq!(d.destination, "page");
    assert_eq!(d.from.as_deref(), Some("+12155551212"));
    assert!(
        d.proposal.streams.is_empty(),
        "no proposal before a handler takes it"
    );
    assert_eq!(status_lines(&sip_texts(&out)), vec!["SIP/2.0 100 Trying"]);
    (key, d)
}

fn take(sim: &mut Sim, req: u64, key: CallKey) -> Result<CallDescription, Problem> {
    sim.ript(RiptEvent::TakeCall {
        req: ReqId(req),
        call: key,
        handler: page_handler(),
        origin: Some("https://allowed.example".into()),
    });
    sim.take()
        .into_iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::RespondTake { req: r, result }) if r == ReqId(req) => {
                Some(result)
            }
            _ => None,
        })
        .expect("an answer to the take")
}

fn server_events(out: &[Output], key: CallKey) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Ript(RiptCmd::ServerSend { call, event }) if *call == key => {
                Some(event.clone())
            }
            _ => None,
        })
        .collect()
}

fn server_ended(out: &[Output], key: CallKey) -> bool {
    out.iter()
        .any(|o| matches!(o, Output::Ript(RiptCmd::ServerEnd { call }) if *call == key))
}

#[test]
fn a_taken_call_is_answered_with_the_callers_payload_types() {
    let mut sim = Sim::with(cfg());
    let (key, _) = offered(&mut sim);
    sim.ript(RiptEvent::Offered {
        call: key,
        handlers: 2,
    });
    assert_eq!(
        status_lines(&sim.sip_out()),
        vec!["SIP/2.0 180 Ringing"],
        "ringing once a handler rings"
    );
    // `answered` before anyone took the call cannot answer it: there is no proposal yet.
    sim.ript(RiptEvent::ServerEvent {
        call: key,
        event: Event::new(EventName::Answered),
    });
    assert!(sim.sip_out().is_empty());

    let d = take(&mut sim, 1, key).expect("the first take succeeds");
    assert_eq!(d.handler.as_deref(), Some(HANDLER_URI));
    assert_eq!(d.direction, Some(CallDirection::Inbound));
    let pts: Vec<(String, u8)> = d
        .proposal
        .streams
        .iter()
        .filter(|s| s.direction == Direction::C2s)
        .map(|s| (s.media_type.clone(), s.payload_type))
        .collect();
    // The handler prefers PCMU (the caller's second choice) and says 96 for telephone-event;
    // the relay does not rewrite payload types, so the handler is told the caller's 101.
    assert_eq!(
        pts,
        vec![
            ("audio/PCMU".to_string(), 0),
            ("audio/telephone-event".to_string(), 101)
        ]
    );
    let again = take(&mut sim, 2, key).expect_err("a second take is refused");
    assert_eq!(again.status, 409);

    sim.ript(RiptEvent::ServerEvent {
        call: key,
        event: Event::new(EventName::Answered),
    });
    let msgs = sim.sip_out();
    assert_eq!(status_lines(&msgs), vec!["SIP/2.0 200 OK"]);
    assert!(
        msgs[0].contains("m=audio 20000 RTP/AVP 0 101\r\n"),
        "{}",
        msgs[0]
    );
    let to_tag = msg::param(
        msgs[0].lines().find(|l| l.starts_with("To:")).unwrap(),
        "tag",
    )
    .unwrap();
    sim.sip(&in_dialog("ACK", "z9hG4bK-h2", 1, &to_tag), CALLER);
    sim.sip(&in_dialog("BYE", "z9hG4bK-h3", 2, &to_tag), CALLER);
    let out = sim.take();
    assert_eq!(status_lines(&sip_texts(&out)), vec!["SIP/2.0 200 OK"]);
    let evs = server_events(&out, key);
    assert_eq!(evs.last().map(|e| e.name.clone()), Some(EventName::End));
    assert!(server_ended(&out, key));
    assert_eq!(sim.e.active_calls(), 0);
}

#[test]
fn with_no_handler_reachable_the_caller_gets_480() {
    let mut sim = Sim::with(cfg());
    let (key, _) = offered(&mut sim);
    sim.ript(RiptEvent::Offered {
        call: key,
        handlers: 0,
    });
    let out = sim.take();
    assert_eq!(
        status_lines(&sip_texts(&out)),
        vec!["SIP/2.0 480 Temporarily Unavailable"]
    );
    assert!(server_ended(&out, key));
    assert_eq!(sim.e.active_calls(), 0);
    let late = take(&mut sim, 1, key).expect_err("nothing left to take");
    assert_eq!(late.status, 404);
}

#[test]
fn the_callers_cancel_stops_the_ringing_with_its_reason() {
    let mut sim = Sim::with(cfg());
    let (key, _) = offered(&mut sim);
    sim.ript(RiptEvent::Offered {
        call: key,
        handlers: 1,
    });
    sim.take();
    sim.sip(&cancel(), CALLER);
    let out = sim.take();
    let lines = status_lines(&sip_texts(&out));
    assert!(
        lines.contains(&"SIP/2.0 487 Request Terminated".to_string()),
        "{lines:?}"
    );
    let end = server_events(&out, key)
        .into_iter()
        .find(|e| e.name == EventName::End)
        .expect("end for the handlers");
    assert!(
        end.reason.as_deref().unwrap_or("").contains("cause=487"),
        "{end:?}"
    );
    assert!(server_ended(&out, key));
    assert_eq!(sim.e.active_calls(), 0);
}

#[test]
fn a_decline_ends_every_fork_with_its_code() {
    let mut sim = Sim::with(cfg());
    let (key, _) = offered(&mut sim);
    sim.ript(RiptEvent::Offered {
        call: key,
        handlers: 3,
    });
    sim.take();
    // One device declines without taking the call (accept(false) in the browser library).
    sim.ript(RiptEvent::ServerEvent {
        call: key,
        event: Event::declined(603),
    });
    let out = sim.take();
    assert_eq!(status_lines(&sip_texts(&out)), vec!["SIP/2.0 603 Decline"]);
    let end = server_events(&out, key)
        .into_iter()
        .find(|e| e.name == EventName::End)
        .expect("end for the other handlers");
    assert!(
        end.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("SIP;cause=603"),
        "{end:?}"
    );
    assert!(server_ended(&out, key));
    assert_eq!(sim.e.active_calls(), 0);
}

#[test]
fn a_call_nobody_takes_times_out_and_a_taken_one_needs_its_streams() {
    let mut sim = Sim::with(cfg());
    let na = sim.e.cfg.no_answer_timeout;
    let (key, _) = offered(&mut sim);
    sim.ript(RiptEvent::Offered {
        call: key,
        handlers: 1,
    });
    sim.take();
    sim.advance(na + Duration::from_millis(1));
    let out = sim.take();
    assert!(status_lines(&sip_texts(&out)).contains(&"SIP/2.0 408 Request Timeout".to_string()));
    assert!(server_ended(&out, key));
    assert_eq!(sim.e.active_calls(), 0);

    // Taken, but the taker never opens the call's events streams: given up after the grace.
    let mut sim = Sim::with(cfg());
    let grace = sim.e.cfg.events_grace;
    let (key, _) = offered(&mut sim);
    sim.ript(RiptEvent::Offered {
        call: key,
        handlers: 1,
    });
    take(&mut sim, 1, key).expect("taken");
    sim.advance(grace + Duration::from_millis(1));
    let out = sim.take();
    let lines = status_lines(&sip_texts(&out));
    assert!(
        lines.iter().any(|l| l.starts_with("SIP/2.0 5")),
        "the caller gets a 5xx: {lines:?}"
    );
    assert!(server_ended(&out, key));
}

#[test]
fn a_handler_without_a_common_codec_cannot_take_the_call() {
    let mut sim = Sim::with(cfg());
    let (key, _) = offered(&mut sim);
    sim.ript(RiptEvent::Offered {
        call: key,
        handlers: 2,
    });
    sim.take();
    sim.ript(RiptEvent::TakeCall {
        req: ReqId(7),
        call: key,
        handler: Handler {
            handler_id: "g722-only".into(),
            advertisement: Advertisement {
                codecs: vec![CodecAd::named("G722")],
            },
            uri: None,
        },
        origin: None,
    });
    let refused = sim.take().into_iter().find_map(|o| match o {
        Output::Ript(RiptCmd::RespondTake { result: Err(p), .. }) => Some(p),
        _ => None,
    });
    assert_eq!(refused.map(|p| p.status), Some(400));
    // Another handler still can.
    take(&mut sim, 8, key).expect("a handler with PCMU takes it");
}

/// An offerless INVITE requiring 100rel toward handlers: nothing to offer while no handler has
/// chosen, so no provisional (it would have to carry an offer, RFC 3262 §5); the 2xx offers
/// the codec the handler took.
#[test]
fn an_offerless_caller_requiring_100rel_gets_the_offer_of_the_handlers_codec_in_the_2xx() {
    let mut sim = Sim::with(cfg());
    let inv = invite("page")
        .replace("Content-Type: application/sdp\r\n", "Require: 100rel\r\n")
        .replace(
            &format!("Content-Length: {}\r\n\r\n{OFFER}", OFFER.len()),
            "Content-Length: 0\r\n\r\n",
        );
    sim.sip(&inv, CALLER);
    let key = sim
        .take()
        .iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::Offer { call, .. }) => Some(*call),
            _ => None,
        })
        .expect("offered to the handlers");
    sim.ript(RiptEvent::Offered {
        call: key,
        handlers: 1,
    });
    assert!(
        sim.sip_out().is_empty(),
        "no 180 without an offer to put in it"
    );
    take(&mut sim, 1, key).expect("taken");
    sim.ript(RiptEvent::ServerEvent {
        call: key,
        event: Event::new(EventName::Answered),
    });
    let ok = sim.sip_out().remove(0);
    assert!(
        ok.starts_with("SIP/2.0 200 OK") && ok.contains(" RTP/AVP 0 "),
        "{ok}"
    );
}
