//! Session timers (RFC 4028) on both kinds of SIP leg, with simulated time: what our INVITEs
//! and 2xx responses carry, 422 both ways, refreshes sent and received, and the BYE when a
//! refresh does not come.

use super::tests::{
    answer, b_invite_sent, callee_reinvite, cfg, header_of, in_dialog, invite, reply, request_to,
    server_events, start_lines, to_tag_of, Sim, ANSWER, CALLER, OFFER, TRUNK,
};
use super::*;

/// `msg` with `lines` (each ending in CRLF) added after its Max-Forwards (a request) or its
/// Contact (a response).
pub(super) fn with(msg: &str, lines: &str) -> String {
    let at = if msg.starts_with("SIP/2.0") {
        "Content-Length"
    } else {
        "Max-Forwards: 70\r\n"
    };
    let i = msg.find(at).unwrap_or_else(|| panic!("no {at} in {msg}"));
    let i = if at.starts_with("Max") {
        i + at.len()
    } else {
        i
    };
    format!("{}{lines}{}", &msg[..i], &msg[i..])
}

/// The caller's INVITE with `lines` added went in; the HTTP/3 call was made. Returns the key,
/// or `None` with the outputs when the INVITE was answered here.
pub(super) fn a_invite(s: &mut Sim, lines: &str) -> Result<CallKey, Vec<String>> {
    s.sip(&with(&invite("z9hG4bKst1", "cid-a", OFFER), lines), CALLER);
    let out = s.take();
    let Some((key, adv)) = super::tests::created_call(&out) else {
        return Err(super::tests::sip_texts(&out));
    };
    super::tests::call_made(s, key, &adv);
    s.take();
    Ok(key)
}

/// As [`a_invite`], then answered from the HTTP/3 side and the 200 ACKed: the key, our 200
/// and its To tag.
fn a_answered(s: &mut Sim, lines: &str) -> (CallKey, String, String) {
    let key = a_invite(s, lines).unwrap();
    let ok = answer(s, key);
    let tag = to_tag_of(&ok);
    s.sip(&in_dialog("ACK", "z9hG4bKack1", 1, &tag, None), CALLER);
    (key, ok, tag)
}

fn ended_with_session_expiry(s: &mut Sim, out: &[Output], to: &str) {
    let (dest, bye) = request_to(out, "BYE");
    assert_eq!(dest, to.parse::<SocketAddr>().unwrap());
    assert!(
        bye.contains("Reason: Q.850;cause=102;text=\"Session timer expired\""),
        "{bye}"
    );
    let ended = out.iter().any(|o| match o {
        Output::Ript(RiptCmd::ClientSend { event, .. })
        | Output::Ript(RiptCmd::ServerSend { event, .. }) => {
            event.name == EventName::End
                && event
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("Session timer expired"))
        }
        _ => false,
    });
    assert!(ended, "the HTTP/3 side is told why: {out:?}");
    assert_eq!(s.e.active_calls(), 0);
    assert_eq!(s.e.metrics.session_expired.load(Ordering::Relaxed), 1);
}

#[test]
fn a_caller_that_refreshes_keeps_its_call_and_one_that_stops_gets_bye() {
    let mut s = Sim::new();
    let key = a_invite(
        &mut s,
        "Session-Expires: 120;refresher=uac\r\nSupported: timer\r\n",
    )
    .unwrap();
    let ok = answer(&mut s, key);
    assert_eq!(
        header_of(&ok, "Session-Expires").as_deref(),
        Some("120;refresher=uac")
    );
    assert_eq!(header_of(&ok, "Require").as_deref(), Some("timer"));
    assert_eq!(header_of(&ok, "Supported").as_deref(), Some("timer"));
    let tag = to_tag_of(&ok);
    s.sip(&in_dialog("ACK", "z9hG4bKack1", 1, &tag, None), CALLER);
    s.advance(Duration::from_secs(60));
    assert!(s.sip_out().is_empty(), "the caller refreshes, not us");
    // The caller's refresh: an UPDATE without SDP gets a 200 without SDP (RFC 3311).
    let update = with(
        &in_dialog("UPDATE", "z9hG4bKup2", 2, &tag, None),
        "Session-Expires: 120;refresher=uac\r\nSupported: timer\r\n",
    );
    s.sip(&update, CALLER);
    let msgs = s.sip_out();
    assert_eq!(start_lines(&msgs), vec!["SIP/2.0 200 OK"]);
    assert_eq!(
        header_of(&msgs[0], "Session-Expires").as_deref(),
        Some("120;refresher=uac")
    );
    assert_eq!(header_of(&msgs[0], "Content-Length").as_deref(), Some("0"));
    // Expiry is 88 s (120 less 32) after the last refresh, not after the answer.
    s.advance(Duration::from_secs(87));
    assert!(s.take().is_empty());
    s.advance(Duration::from_secs(1));
    let out = s.take();
    ended_with_session_expiry(&mut s, &out, CALLER);
}

#[test]
fn an_interval_below_our_minimum_gets_422_and_an_unreadable_one_400() {
    let mut s = Sim::with(EngineConfig {
        session_timer: TimerConfig {
            expires: 1800,
            min_se: 300,
        },
        ..cfg()
    });
    let msgs = a_invite(&mut s, "Session-Expires: 120\r\nSupported: timer\r\n").unwrap_err();
    assert_eq!(
        start_lines(&msgs),
        vec!["SIP/2.0 422 Session Interval Too Small"]
    );
    assert_eq!(header_of(&msgs[0], "Min-SE").as_deref(), Some("300"));
    assert_eq!(s.e.active_calls(), 0);
    let mut s = Sim::new();
    let msgs = a_invite(&mut s, "Session-Expires: soon\r\n").unwrap_err();
    assert!(
        msgs[0].starts_with("SIP/2.0 400 Bad Request (Session-Expires"),
        "{msgs:?}"
    );
}

#[test]
fn require_timer_is_met_when_on_and_refused_with_420_when_off() {
    let mut s = Sim::new();
    let lines = "Session-Expires: 1800\r\nRequire: timer\r\n";
    assert!(a_invite(&mut s, lines).is_ok());
    let mut s = Sim::with(EngineConfig {
        session_timer: TimerConfig {
            expires: 0,
            min_se: 90,
        },
        ..cfg()
    });
    let msgs = a_invite(&mut s, lines).unwrap_err();
    assert_eq!(start_lines(&msgs), vec!["SIP/2.0 420 Bad Extension"]);
    assert_eq!(header_of(&msgs[0], "Unsupported").as_deref(), Some("timer"));
    // Off, nothing is offered or granted.
    let mut s = Sim::with(EngineConfig {
        session_timer: TimerConfig {
            expires: 0,
            min_se: 90,
        },
        ..cfg()
    });
    let key = a_invite(&mut s, "Session-Expires: 1800\r\nSupported: timer\r\n").unwrap();
    let ok = answer(&mut s, key);
    assert_eq!(header_of(&ok, "Session-Expires"), None);
    assert_eq!(header_of(&ok, "Supported"), None);
}

#[test]
fn for_a_caller_without_timers_we_refresh_with_the_same_media_and_keep_refreshing() {
    let mut s = Sim::new();
    // A proxy asked for the timer; the caller itself does not support it: we refresh.
    let key = a_invite(&mut s, "Session-Expires: 120\r\n").unwrap();
    let ok = answer(&mut s, key);
    assert_eq!(
        header_of(&ok, "Session-Expires").as_deref(),
        Some("120;refresher=uas")
    );
    assert_eq!(header_of(&ok, "Require"), None);
    let tag = to_tag_of(&ok);
    s.sip(&in_dialog("ACK", "z9hG4bKack1", 1, &tag, None), CALLER);
    let version = |m: &str| {
        let o = m.lines().find(|l| l.starts_with("o=")).unwrap();
        o.split(' ').nth(2).unwrap().parse::<u64>().unwrap()
    };
    let media = |m: &str| -> Vec<String> {
        m.lines()
            .filter(|l| l.starts_with("m=") || l.starts_with("a=") || l.starts_with("c="))
            .map(str::to_string)
            .collect()
    };
    for round in 0..2u64 {
        s.advance(Duration::from_secs(59));
        assert!(s.take().is_empty(), "round {round}");
        s.advance(Duration::from_secs(1));
        let out = s.take();
        let (to, reinvite) = request_to(&out, "INVITE");
        assert_eq!(to, CALLER.parse::<SocketAddr>().unwrap());
        assert_eq!(
            header_of(&reinvite, "Session-Expires").as_deref(),
            Some("120;refresher=uac")
        );
        // The same media, offered with the same version: nothing changed (RFC 3264 §8), so a
        // peer has nothing to renegotiate.
        assert_eq!(media(&reinvite), media(&ok), "{reinvite}");
        assert_eq!(version(&reinvite), version(&ok), "{reinvite}");
        // The caller knows nothing of timers: its 200 has no Session-Expires, and the
        // refreshes go on.
        s.sip(&reply(&reinvite, 200, "OK", "caller1", Some(OFFER)), CALLER);
        // Acknowledged (toward the 2xx's Contact, the dialog's new target).
        let msgs = s.sip_out();
        assert_eq!(
            start_lines(&msgs),
            vec!["ACK sip:callee@127.0.0.1:5080 SIP/2.0"]
        );
    }
    // A refresh that gets no answer leaves the session to expire: the re-INVITE's own guard
    // (64*T1) or the timer, whichever is first, ends the call.
    s.advance(Duration::from_secs(60));
    let _ = request_to(&s.take(), "INVITE");
    s.advance(Duration::from_secs(60));
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn our_invite_asks_for_a_timer_and_a_422_raises_the_interval_once() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    assert_eq!(header_of(&inv, "Session-Expires").as_deref(), Some("1800"));
    assert_eq!(header_of(&inv, "Min-SE").as_deref(), Some("90"));
    assert_eq!(
        header_of(&inv, "Supported").as_deref(),
        Some("100rel, timer")
    );
    s.sip(
        &with(
            &reply(&inv, 422, "Session Interval Too Small", "uas1", None),
            "Min-SE: 3600\r\n",
        ),
        TRUNK,
    );
    let msgs = s.sip_out();
    assert_eq!(
        start_lines(&msgs),
        vec![
            "ACK sip:answer@127.0.0.1:5080 SIP/2.0",
            "INVITE sip:answer@127.0.0.1:5080 SIP/2.0"
        ]
    );
    let again = &msgs[1];
    assert_eq!(header_of(again, "Session-Expires").as_deref(), Some("3600"));
    assert_eq!(header_of(again, "Min-SE").as_deref(), Some("3600"));
    assert_eq!(header_of(again, "CSeq").as_deref(), Some("2 INVITE"));
    // The same minimum again is not a reason to ask again: the call fails.
    s.sip(
        &with(
            &reply(again, 422, "Session Interval Too Small", "uas1", None),
            "Min-SE: 3600\r\n",
        ),
        TRUNK,
    );
    let out = s.take();
    assert!(
        server_events(&out)
            .iter()
            .any(|e| e.name == EventName::Failed),
        "{out:?}"
    );
    assert_eq!(s.e.active_calls(), 0, "{key}");
}

#[test]
fn a_2xx_naming_us_gets_refreshes_and_one_naming_the_callee_expires_without_them() {
    // We refresh: a re-INVITE at half the interval, re-armed by each 2xx.
    let mut s = Sim::new();
    let (_, inv) = b_invite_sent(&mut s);
    s.sip(
        &with(
            &reply(&inv, 200, "OK", "uas1", Some(ANSWER)),
            "Session-Expires: 90;refresher=uac\r\nRequire: timer\r\n",
        ),
        TRUNK,
    );
    s.take();
    for _ in 0..2 {
        s.advance(Duration::from_secs(44));
        assert!(s.take().is_empty());
        s.advance(Duration::from_secs(1));
        let (to, reinvite) = request_to(&s.take(), "INVITE");
        assert_eq!(to, TRUNK.parse::<SocketAddr>().unwrap());
        assert_eq!(
            header_of(&reinvite, "Session-Expires").as_deref(),
            Some("90;refresher=uac")
        );
        assert_eq!(header_of(&reinvite, "Min-SE").as_deref(), Some("90"));
        s.sip(
            &with(
                &reply(&reinvite, 200, "OK", "uas1", Some(ANSWER)),
                "Session-Expires: 90;refresher=uac\r\n",
            ),
            TRUNK,
        );
        assert_eq!(start_lines(&s.sip_out()).len(), 1, "the ACK");
    }

    // The callee refreshes: its re-INVITE at 40 s moves the expiry to 100 s (90 less 30).
    let mut s = Sim::new();
    let (_, inv) = b_invite_sent(&mut s);
    s.sip(
        &with(
            &reply(&inv, 200, "OK", "uas1", Some(ANSWER)),
            "Session-Expires: 90;refresher=uas\r\nRequire: timer\r\n",
        ),
        TRUNK,
    );
    let ack = request_to(&s.take(), "ACK").1;
    s.advance(Duration::from_secs(40));
    let refresh = with(
        &callee_reinvite(&ack, "z9hG4bKre9", &format!("<sip:callee@{TRUNK}>")),
        "Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n",
    );
    s.sip(&refresh, TRUNK);
    let msgs = s.sip_out();
    assert!(msgs[0].starts_with("SIP/2.0 200 OK"), "{msgs:?}");
    assert_eq!(
        header_of(&msgs[0], "Session-Expires").as_deref(),
        Some("90;refresher=uac")
    );
    s.sip(
        &format!(
            "ACK sip:riptide@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKack9\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n",
            header_of(&refresh, "From").unwrap(),
            header_of(&msgs[0], "To").unwrap(),
            header_of(&refresh, "Call-ID").unwrap(),
        ),
        TRUNK,
    );
    s.advance(Duration::from_secs(59));
    assert!(s.take().is_empty(), "not yet: 99 s");
    s.advance(Duration::from_secs(1));
    let out = s.take();
    ended_with_session_expiry(&mut s, &out, TRUNK);
}

#[test]
fn a_callee_without_session_expires_in_its_2xx_runs_no_timer() {
    let mut s = Sim::new();
    let (_, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 200, "OK", "uas1", Some(ANSWER)), TRUNK);
    s.take();
    s.advance(Duration::from_secs(7200));
    assert!(s.sip_out().is_empty());
    assert_eq!(s.e.active_calls(), 1);
}

/// The first INVITE among `out` (UDP retransmissions of it may follow).
fn first_invite(out: &[Output]) -> String {
    super::tests::sip_texts(out)
        .into_iter()
        .find(|m| m.starts_with("INVITE "))
        .expect("an INVITE")
}

#[test]
fn a_refresh_due_while_our_hold_is_in_flight_waits_and_offers_what_holds_after_it() {
    let mut s = Sim::new();
    let (key, _, _) = a_answered(&mut s, "Session-Expires: 120\r\n");
    s.advance(Duration::from_secs(59));
    // The far side holds: our re-INVITE goes out a second before the refresh is due.
    let mut hold = super::tests::ev(EventName::Hold, 1);
    hold.media_direction = Some("sendonly".into());
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: hold,
    });
    let hold_reinvite = request_to(&s.take(), "INVITE").1;
    assert!(hold_reinvite.contains("a=sendonly"));
    // It carries the session timer too.
    assert_eq!(
        header_of(&hold_reinvite, "Session-Expires").as_deref(),
        Some("120;refresher=uac")
    );
    let cseqs = |out: &[Output]| -> Vec<String> {
        super::tests::sip_texts(out)
            .iter()
            .filter(|m| m.starts_with("INVITE "))
            .filter_map(|m| header_of(m, "CSeq"))
            .collect()
    };
    s.advance(Duration::from_millis(1500));
    let hold_cseq = header_of(&hold_reinvite, "CSeq").unwrap();
    assert!(
        cseqs(&s.take()).iter().all(|c| *c == hold_cseq),
        "no second offer while the hold is in flight"
    );
    // The hold is refused: the session stays as it was, and the refresh offers that.
    s.sip(
        &reply(&hold_reinvite, 488, "Not Acceptable Here", "caller1", None),
        CALLER,
    );
    s.take();
    s.advance(Duration::from_secs(2));
    let refresh = first_invite(&s.take());
    assert_ne!(header_of(&refresh, "CSeq").unwrap(), hold_cseq);
    assert!(refresh.contains("a=sendrecv"), "{refresh}");
    assert_eq!(
        header_of(&refresh, "Session-Expires").as_deref(),
        Some("120;refresher=uac")
    );
}

#[test]
fn no_refresh_goes_before_the_callers_ack_of_our_2xx() {
    // T1 of 1 s: our 2xx is retransmitted for 64 s, past the refresh due at 45 s.
    let mut s = Sim::with(EngineConfig {
        t1: Duration::from_secs(1),
        ..cfg()
    });
    let key = a_invite(&mut s, "Session-Expires: 90\r\n").unwrap();
    let ok = answer(&mut s, key);
    s.advance(Duration::from_secs(46));
    let out = s.take();
    assert!(
        !super::tests::sip_texts(&out)
            .iter()
            .any(|m| m.starts_with("INVITE ")),
        "no re-INVITE before the ACK"
    );
    s.sip(
        &in_dialog("ACK", "z9hG4bKack1", 1, &to_tag_of(&ok), None),
        CALLER,
    );
    s.advance(Duration::from_secs(2));
    let refresh = first_invite(&s.take());
    assert_eq!(
        header_of(&refresh, "Session-Expires").as_deref(),
        Some("90;refresher=uac")
    );
}

#[test]
fn an_update_with_an_offer_crossing_our_reinvite_gets_491_and_a_refresh_update_does_not() {
    let mut s = Sim::new();
    let (key, _, tag) = a_answered(
        &mut s,
        "Session-Expires: 1800;refresher=uac\r\nSupported: timer\r\n",
    );
    let mut hold = super::tests::ev(EventName::Hold, 1);
    hold.media_direction = Some("sendonly".into());
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: hold,
    });
    let _ = first_invite(&s.take());
    s.sip(
        &in_dialog("UPDATE", "z9hG4bKup2", 2, &tag, Some(OFFER)),
        CALLER,
    );
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["SIP/2.0 491 Request Pending"]
    );
    let refresh = with(
        &in_dialog("UPDATE", "z9hG4bKup3", 3, &tag, None),
        "Session-Expires: 1800;refresher=uac\r\nSupported: timer\r\n",
    );
    s.sip(&refresh, CALLER);
    let msgs = s.sip_out();
    assert_eq!(start_lines(&msgs), vec!["SIP/2.0 200 OK"]);
    assert_eq!(header_of(&msgs[0], "Content-Length").as_deref(), Some("0"));
}

#[test]
fn the_ack_of_our_reinvite_carries_its_cseq_after_an_info_crossed_it() {
    let mut s = Sim::new();
    let (key, _, _) = a_answered(&mut s, "Session-Expires: 120\r\n");
    s.advance(Duration::from_secs(60));
    let refresh = first_invite(&s.take());
    assert_eq!(header_of(&refresh, "CSeq").as_deref(), Some("1 INVITE"));
    // A key toward the caller goes as INFO while the refresh waits for its answer.
    s.input(Input::Media(MediaEvent::Dtmf {
        call: key,
        digit: crate::media::dtmf::Digit::new('5', 100).unwrap(),
        toward_legacy: true,
    }));
    let info = s.sip_out().remove(0);
    assert_eq!(header_of(&info, "CSeq").as_deref(), Some("2 INFO"));
    s.sip(&reply(&refresh, 200, "OK", "caller1", Some(OFFER)), CALLER);
    let ack = s.sip_out().remove(0);
    assert!(ack.starts_with("ACK "), "{ack}");
    assert_eq!(header_of(&ack, "CSeq").as_deref(), Some("1 ACK"));
}

#[test]
fn while_our_offer_waits_in_the_callers_ack_an_update_offer_gets_491_and_a_refresh_keeps_it() {
    let mut s = Sim::new();
    let (_, _, tag) = a_answered(&mut s, "Supported: timer\r\n");
    // An offerless re-INVITE: our 200 offers.
    s.sip(&in_dialog("INVITE", "z9hG4bKre2", 2, &tag, None), CALLER);
    let ours = s.sip_out().remove(0);
    assert!(
        ours.starts_with("SIP/2.0 200") && ours.contains("m=audio"),
        "{ours}"
    );
    s.sip(
        &in_dialog("UPDATE", "z9hG4bKup3", 3, &tag, Some(OFFER)),
        CALLER,
    );
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["SIP/2.0 491 Request Pending"]
    );
    // A session refresh without an offer is fine, and the ACK still carries the answer.
    s.sip(
        &with(
            &in_dialog("UPDATE", "z9hG4bKup4", 4, &tag, None),
            "Session-Expires: 1800\r\nSupported: timer\r\n",
        ),
        CALLER,
    );
    assert_eq!(start_lines(&s.sip_out()), vec!["SIP/2.0 200 OK"]);
    let moved = OFFER.replace("127.0.0.1\r\nt=", "127.0.0.5\r\nt=");
    s.sip(
        &in_dialog("ACK", "z9hG4bKack2", 2, &tag, Some(&moved)),
        CALLER,
    );
    let out = s.take();
    assert!(
        out.iter().any(|o| matches!(o,
            Output::Media(crate::media::MediaCmd::SetRemote { rtp, .. })
                if *rtp == "127.0.0.5:6000".parse::<SocketAddr>().unwrap())),
        "the ACK's answer is taken: {out:?}"
    );
}

#[test]
fn our_refresh_keeps_the_callers_min_se_and_a_422_to_it_raises_the_interval() {
    let mut s = Sim::new();
    // We refresh (the caller does not support timers) a session whose Min-SE is 100.
    let (_, _, _) = a_answered(&mut s, "Session-Expires: 120\r\nMin-SE: 100\r\n");
    s.advance(Duration::from_secs(60));
    let refresh = first_invite(&s.take());
    assert_eq!(header_of(&refresh, "Min-SE").as_deref(), Some("100"));
    // A proxy on the way wants at least 600 s now.
    s.sip(
        &with(
            &reply(&refresh, 422, "Session Interval Too Small", "caller1", None),
            "Min-SE: 600\r\n",
        ),
        CALLER,
    );
    let again = first_invite(&s.take());
    assert_ne!(header_of(&again, "CSeq"), header_of(&refresh, "CSeq"));
    assert_eq!(
        header_of(&again, "Session-Expires").as_deref(),
        Some("600;refresher=uac")
    );
    assert_eq!(header_of(&again, "Min-SE").as_deref(), Some("600"));
    s.sip(&reply(&again, 200, "OK", "caller1", Some(OFFER)), CALLER);
    s.take();
    // The next refresh comes at half the new interval.
    s.advance(Duration::from_secs(299));
    assert!(!super::tests::sip_texts(&s.take())
        .iter()
        .any(|m| m.starts_with("INVITE ")));
    s.advance(Duration::from_secs(1));
    let next = first_invite(&s.take());
    assert_eq!(
        header_of(&next, "Session-Expires").as_deref(),
        Some("600;refresher=uac")
    );
}
