//! Reliable provisional responses (RFC 3262) on both kinds of SIP leg, with simulated time:
//! PRACKs we send for a trunk's reliable provisionals, and the reliable provisionals we send a
//! caller that asked for them.

use super::session_timer_tests::{a_invite, with};
use super::tests::{
    b_invite_sent, ev, header_of, in_dialog, reply, server_events, sip_texts, start_lines,
    to_tag_of, Sim, ANSWER, TRUNK,
};
use super::*;

fn header(m: &str, name: &str) -> String {
    header_of(m, name).unwrap_or_else(|| panic!("no {name} in {m}"))
}

fn client_event(s: &mut Sim, key: CallKey, name: EventName, seq: u64, media: bool) {
    let mut e = ev(name, seq);
    e.media = media.then_some(true);
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: e,
    });
}

fn prack(branch: &str, cseq: u32, to_tag: &str, rack: &str) -> String {
    with(
        &in_dialog("PRACK", branch, cseq, to_tag, None),
        &format!("RAck: {rack}\r\n"),
    )
}

#[test]
fn a_caller_that_requires_100rel_gets_each_provisional_reliably_in_turn() {
    let mut s = Sim::new();
    let key = a_invite(&mut s, "Require: 100rel\r\nSupported: 100rel\r\n").expect("not 420");
    client_event(&mut s, key, EventName::Alerting, 0, false);
    let ringing = s.sip_out().remove(0);
    assert!(ringing.starts_with("SIP/2.0 180 "), "{ringing}");
    assert_eq!(header(&ringing, "Require"), "100rel");
    let rseq: u32 = header(&ringing, "RSeq").parse().unwrap();
    assert!((1..1 << 31).contains(&rseq));
    let tag = to_tag_of(&ringing);
    // Not acknowledged: again at T1, then 2·T1 (§3).
    s.advance(Duration::from_millis(500));
    assert_eq!(s.sip_out(), vec![ringing.clone()]);
    s.advance(Duration::from_millis(900));
    assert!(s.sip_out().is_empty());
    s.advance(Duration::from_millis(100));
    assert_eq!(s.sip_out(), vec![ringing.clone()]);
    // Early media meanwhile waits for the PRACK: one reliable provisional at a time.
    client_event(&mut s, key, EventName::Proceeding, 1, true);
    assert!(s.sip_out().is_empty());
    // A PRACK for another RSeq matches nothing.
    s.sip(
        &prack("z9hG4bKpr0", 2, &tag, &format!("{} 1 INVITE", rseq + 5)),
        super::tests::CALLER,
    );
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
    // The right one: 200, and the 183 with our answer goes, reliably, with the next RSeq.
    s.sip(
        &prack("z9hG4bKpr1", 3, &tag, &format!("{rseq} 1 INVITE")),
        super::tests::CALLER,
    );
    let out = s.sip_out();
    assert_eq!(
        start_lines(&out),
        vec!["SIP/2.0 200 OK", "SIP/2.0 183 Session Progress"]
    );
    assert_eq!(header(&out[0], "CSeq"), "3 PRACK");
    let progress = &out[1];
    assert_eq!(header(progress, "RSeq"), (rseq + 1).to_string());
    assert!(progress.contains("m=audio"), "{progress}");
    // The callee answers before the caller acknowledged the answer in the 183: the 200 waits.
    client_event(&mut s, key, EventName::Answered, 2, false);
    assert!(
        s.sip_out().is_empty(),
        "no 2xx before the PRACK of the answer"
    );
    s.sip(
        &prack("z9hG4bKpr2", 4, &tag, &format!("{} 1 INVITE", rseq + 1)),
        super::tests::CALLER,
    );
    let out = s.sip_out();
    assert_eq!(start_lines(&out), vec!["SIP/2.0 200 OK", "SIP/2.0 200 OK"]);
    assert_eq!(header(&out[1], "CSeq"), "1 INVITE");
    assert!(out[1].contains("m=audio"));
    // Nothing is retransmitted after that but the 2xx itself, until its ACK.
    s.sip(
        &in_dialog("ACK", "z9hG4bKack1", 1, &tag, None),
        super::tests::CALLER,
    );
    s.advance(Duration::from_secs(40));
    let left: Vec<String> = s
        .sip_out()
        .into_iter()
        .filter(|m| m.starts_with("SIP/2.0 18"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_caller_that_only_supports_100rel_gets_ringing_as_is_and_its_early_answer_reliably() {
    let mut s = Sim::new();
    let key = a_invite(&mut s, "Supported: 100rel, timer\r\n").unwrap();
    client_event(&mut s, key, EventName::Alerting, 0, false);
    let ringing = s.sip_out().remove(0);
    assert!(header_of(&ringing, "RSeq").is_none(), "{ringing}");
    client_event(&mut s, key, EventName::Proceeding, 1, true);
    let progress = s.sip_out().remove(0);
    assert!(progress.starts_with("SIP/2.0 183 "), "{progress}");
    assert_eq!(header(&progress, "Require"), "100rel");
    assert!(header_of(&progress, "RSeq").is_some());
    // A caller that names neither gets neither.
    let mut s = Sim::new();
    let key = a_invite(&mut s, "").unwrap();
    client_event(&mut s, key, EventName::Proceeding, 0, true);
    let progress = s.sip_out().remove(0);
    assert!(header_of(&progress, "RSeq").is_none(), "{progress}");
    assert!(header_of(&progress, "Require").is_none(), "{progress}");
}

#[test]
fn no_prack_within_64_t1_gets_504_and_ends_the_call() {
    let mut s = Sim::new();
    let key = a_invite(&mut s, "Require: 100rel\r\n").unwrap();
    client_event(&mut s, key, EventName::Alerting, 0, false);
    s.take();
    s.advance(Duration::from_millis(31_900));
    assert!(sip_texts(&s.take())
        .iter()
        .all(|m| m.starts_with("SIP/2.0 180 ")));
    s.advance(Duration::from_millis(200));
    let out = s.take();
    assert_eq!(
        start_lines(&sip_texts(&out)),
        vec!["SIP/2.0 504 Server Time-out"]
    );
    let ended = out.iter().any(|o| {
        matches!(o, Output::Ript(RiptCmd::ClientSend { event, .. }) if event.name == EventName::End)
    });
    assert!(ended, "{out:?}");
    assert_eq!(s.e.active_calls(), 0);
}

/// The trunk's provisional `code` to `inv` in early dialog `tag`, reliable with `rseq`.
fn reliable(inv: &str, code: u16, reason: &str, tag: &str, rseq: u32, sdp: Option<&str>) -> String {
    with(
        &reply(inv, code, reason, tag, sdp),
        &format!("Require: 100rel\r\nRSeq: {rseq}\r\n"),
    )
}

#[test]
fn a_trunks_reliable_provisionals_are_pracked_once_each_in_order() {
    let mut s = Sim::new();
    let (key, inv) = b_invite_sent(&mut s);
    assert!(header(&inv, "Supported").contains("100rel"), "{inv}");
    assert!(header(&inv, "Allow").contains("PRACK"), "{inv}");
    s.sip(&reliable(&inv, 180, "Ringing", "t1", 7, None), TRUNK);
    let out = s.take();
    let msgs = sip_texts(&out);
    assert_eq!(
        start_lines(&msgs),
        vec![format!("PRACK sip:callee@{TRUNK} SIP/2.0")]
    );
    let pr = &msgs[0];
    assert_eq!(header(pr, "RAck"), "7 1 INVITE");
    assert_eq!(header(pr, "CSeq"), "2 PRACK");
    assert!(header(pr, "To").ends_with(";tag=t1"), "{pr}");
    assert_eq!(header(pr, "Call-ID"), header(&inv, "Call-ID"));
    assert_eq!(server_events(&out).len(), 1, "ringing told once");
    // The trunk's retransmission (our PRACK crossed it) is neither PRACKed nor told again;
    // one that skips an RSeq is dropped (§4).
    s.sip(&reliable(&inv, 180, "Ringing", "t1", 7, None), TRUNK);
    s.sip(&reliable(&inv, 180, "Ringing", "t1", 9, None), TRUNK);
    let out = s.take();
    assert!(
        sip_texts(&out).is_empty() && server_events(&out).is_empty(),
        "{out:?}"
    );
    // The PRACK's 200 changes nothing.
    s.sip(&reply(pr, 200, "OK", "t1", None), TRUNK);
    assert!(s.take().is_empty());
    // The next one, with the early answer.
    s.sip(
        &reliable(&inv, 183, "Session Progress", "t1", 8, Some(ANSWER)),
        TRUNK,
    );
    let out = s.take();
    let pr2 = sip_texts(&out).remove(0);
    assert_eq!(header(&pr2, "RAck"), "8 1 INVITE");
    assert_eq!(header(&pr2, "CSeq"), "3 PRACK");
    assert!(server_events(&out)
        .iter()
        .any(|e| e.name == EventName::Proceeding && e.media == Some(true)));
    // Answered: the ACK has the INVITE's CSeq; the dialog's next request counts on from the
    // PRACKs.
    s.sip(&reply(&inv, 200, "OK", "t1", Some(ANSWER)), TRUNK);
    let acks: Vec<String> = s
        .sip_out()
        .into_iter()
        .filter(|m| m.starts_with("ACK "))
        .collect();
    assert_eq!(header(&acks[0], "CSeq"), "1 ACK");
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: ev(EventName::End, 0),
    });
    let bye = s
        .sip_out()
        .into_iter()
        .find(|m| m.starts_with("BYE "))
        .expect("BYE");
    assert_eq!(header(&bye, "CSeq"), "4 BYE");
}

#[test]
fn an_unreliable_or_rseq_less_provisional_gets_no_prack() {
    let mut s = Sim::new();
    let (_key, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 180, "Ringing", "t1", None), TRUNK);
    s.sip(
        &with(
            &reply(&inv, 180, "Ringing", "t1", None),
            "Require: 100rel\r\n",
        ),
        TRUNK,
    );
    let out = s.take();
    assert!(sip_texts(&out).is_empty(), "{:?}", sip_texts(&out));
    assert_eq!(server_events(&out).len(), 2);
}

#[test]
fn a_late_forks_bye_counts_on_past_our_pracks_in_its_early_dialog() {
    let mut s = Sim::new();
    let (_key, inv) = b_invite_sent(&mut s);
    // Fork B rings reliably twice (PRACKs with CSeq 2 and 3) ...
    s.sip(&reliable(&inv, 180, "Ringing", "forkb", 1, None), TRUNK);
    s.sip(
        &reliable(&inv, 183, "Session Progress", "forkb", 2, None),
        TRUNK,
    );
    let pracks: Vec<String> = s
        .sip_out()
        .into_iter()
        .filter(|m| m.starts_with("PRACK "))
        .map(|m| header(&m, "CSeq"))
        .collect();
    assert_eq!(pracks, vec!["2 PRACK", "3 PRACK"]);
    // ... fork A answers, then fork B: its dialog is ACKed and ended with a BYE above 3.
    s.sip(&reply(&inv, 200, "OK", "forka", Some(ANSWER)), TRUNK);
    s.take();
    s.sip(&reply(&inv, 200, "OK", "forkb", Some(ANSWER)), TRUNK);
    let msgs = s.sip_out();
    let bye = msgs.iter().find(|m| m.starts_with("BYE ")).expect("BYE");
    assert!(header(bye, "To").ends_with("tag=forkb"), "{bye}");
    assert_eq!(header(bye, "CSeq"), "4 BYE");
}

#[test]
fn an_answer_in_a_reliable_provisional_is_the_answer_when_the_2xx_has_none() {
    // Taken: a 2xx without SDP answers the call.
    let mut s = Sim::new();
    let (_key, inv) = b_invite_sent(&mut s);
    s.sip(
        &reliable(&inv, 183, "Session Progress", "t1", 1, Some(ANSWER)),
        TRUNK,
    );
    s.take();
    s.sip(&reply(&inv, 200, "OK", "t1", None), TRUNK);
    let out = s.take();
    assert!(server_events(&out)
        .iter()
        .any(|e| e.name == EventName::Answered));
    assert!(!sip_texts(&out).iter().any(|m| m.starts_with("BYE ")));
    // Refused (a codec we did not offer): the 2xx without SDP is ACKed, then the call ends
    // with 488, as a 2xx with that answer would.
    let mut s = Sim::new();
    let (_key, inv) = b_invite_sent(&mut s);
    let g729 = ANSWER
        .replace("RTP/AVP 0 101", "RTP/AVP 18")
        .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000");
    s.sip(
        &reliable(&inv, 183, "Session Progress", "t1", 1, Some(&g729)),
        TRUNK,
    );
    let early = server_events(&s.take());
    assert!(
        early.iter().all(|e| e.media.is_none()),
        "no early media: {early:?}"
    );
    s.sip(&reply(&inv, 200, "OK", "t1", None), TRUNK);
    let out = s.take();
    assert_eq!(
        start_lines(&sip_texts(&out)),
        vec![
            format!("ACK sip:callee@{TRUNK} SIP/2.0"),
            format!("BYE sip:callee@{TRUNK} SIP/2.0")
        ]
    );
    let evs = server_events(&out);
    assert_eq!(evs.last().map(|e| e.code), Some(Some(488)), "{evs:?}");
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn a_peers_cseq_in_a_reliable_provisional_is_not_counted_on() {
    let mut s = Sim::new();
    let (_key, inv) = b_invite_sent(&mut s);
    let odd = reliable(&inv, 180, "Ringing", "t1", 1, None)
        .replace("CSeq: 1 INVITE", "CSeq: 4294967295 INVITE");
    s.sip(&odd, TRUNK);
    for pr in s.sip_out().iter().filter(|m| m.starts_with("PRACK ")) {
        assert_eq!(header(pr, "RAck"), "1 1 INVITE", "our INVITE's CSeq");
        assert_eq!(header(pr, "CSeq"), "2 PRACK");
    }
}

#[test]
fn a_prack_without_a_dialog_or_an_rack_is_refused() {
    let mut s = Sim::new();
    let key = a_invite(&mut s, "Require: 100rel\r\n").unwrap();
    client_event(&mut s, key, EventName::Alerting, 0, false);
    let tag = to_tag_of(&s.sip_out().remove(0));
    s.sip(
        &in_dialog("PRACK", "z9hG4bKpr9", 2, &tag, None),
        super::tests::CALLER,
    );
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["SIP/2.0 400 Bad Request (missing or malformed RAck)"]
    );
    let no_tag = prack("z9hG4bKpr8", 3, "x", "1 1 INVITE").replace(";tag=x", "");
    s.sip(&no_tag, super::tests::CALLER);
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
}

#[test]
fn an_offer_in_a_prack_is_answered_in_its_2xx() {
    let mut s = Sim::new();
    let key = a_invite(&mut s, "Require: 100rel\r\n").unwrap();
    client_event(&mut s, key, EventName::Proceeding, 0, true);
    let progress = s.sip_out().remove(0);
    let (tag, rseq) = (to_tag_of(&progress), header(&progress, "RSeq"));
    // RFC 3262 §5: the caller's new offer (hold) rides on the PRACK of our answer.
    let offer = super::tests::OFFER
        .replace("o=- 1 1", "o=- 1 2")
        .replace("a=sendrecv", "a=sendonly");
    let pr = with(
        &in_dialog("PRACK", "z9hG4bKpro", 2, &tag, Some(&offer)),
        &format!("RAck: {rseq} 1 INVITE\r\n"),
    );
    s.sip(&pr, super::tests::CALLER);
    let out = s.sip_out();
    assert_eq!(start_lines(&out), vec!["SIP/2.0 200 OK"], "{out:?}");
    assert_eq!(header(&out[0], "CSeq"), "2 PRACK");
    assert!(
        out[0].contains("a=recvonly"),
        "our answer to the hold: {}",
        out[0]
    );
    // The provisional was acknowledged: no more copies of it.
    s.advance(Duration::from_secs(5));
    assert!(!s.sip_out().iter().any(|m| m.starts_with("SIP/2.0 183")));
}
