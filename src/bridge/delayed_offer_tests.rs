//! An INVITE without SDP (delayed offer, RFC 3261 §13.2.1 and RFC 3264): our 2xx offers, and
//! the caller's ACK answers.

use super::tests::{
    answer, ev, header_of, in_dialog, invite, sip_texts, start_lines, to_tag_of, Sim, CALLER,
};
use super::*;

/// The caller's answer to our offer: PCMU and telephone-event at 127.0.0.1:6100.
pub(super) const CALLER_ANSWER: &str = "v=0\r\no=- 5 5 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6100 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

/// An offerless INVITE went in and the HTTP/3 call was made: the key.
pub(super) fn offerless_call(s: &mut Sim) -> CallKey {
    offerless_call_with(s, "")
}

/// As [`offerless_call`], with `lines` added to the INVITE.
fn offerless_call_with(s: &mut Sim, lines: &str) -> CallKey {
    let inv = super::session_timer_tests::with(&invite("z9hG4bKdo1", "cid-a", ""), lines);
    s.sip(&inv, CALLER);
    let out = s.take();
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Media(MediaCmd::SetRemote { .. }))),
        "no address to send media to yet"
    );
    let (key, adv) = super::tests::created_call(&out)
        .unwrap_or_else(|| panic!("no call made: {:?}", sip_texts(&out)));
    // Our own codecs, in the configured order, with their usual payload types; only G.711
    // (with telephone-event and CN), since the far side's pick is all our offer will hold.
    let names: Vec<(String, Option<u8>)> = adv
        .codecs
        .iter()
        .map(|c| (c.media_type.clone(), c.payload_type))
        .collect();
    let want = [
        ("audio/PCMU", Some(0)),
        ("audio/PCMA", Some(8)),
        ("audio/telephone-event", Some(101)),
        ("audio/CN", Some(13)),
    ]
    .map(|(n, pt)| (n.to_string(), pt));
    assert_eq!(names, want);
    super::tests::call_made(s, key, &adv);
    s.take();
    key
}

pub(super) fn ack(tag: &str, sdp: Option<&str>) -> String {
    in_dialog("ACK", "z9hG4bKdoack", 1, tag, sdp)
}

#[test]
fn an_offerless_invite_gets_our_offer_in_the_2xx_and_the_acks_answer_sets_the_media() {
    let mut s = Sim::new();
    let key = offerless_call(&mut s);
    // Early media cannot carry an offer in an unreliable provisional: a 183 without SDP.
    let mut e = ev(EventName::Proceeding, 0);
    e.media = Some(true);
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: e,
    });
    let progress = s.sip_out().remove(0);
    assert!(progress.starts_with("SIP/2.0 183 "), "{progress}");
    assert!(!progress.contains("m=audio"), "{progress}");
    // Answered: the 200 offers the codec the HTTP/3 side chose.
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Answered, 1),
    });
    let ok = s.sip_out().remove(0);
    assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
    assert!(ok.contains("m=audio ") && ok.contains("RTP/AVP 0"), "{ok}");
    assert!(ok.contains("a=sendrecv"), "{ok}");
    let tag = to_tag_of(&ok);
    // The ACK answers: media goes where it says.
    s.sip(&ack(&tag, Some(CALLER_ANSWER)), CALLER);
    let out = s.take();
    let remote = out.iter().find_map(|o| match o {
        Output::Media(MediaCmd::SetRemote { rtp, .. }) => Some(*rtp),
        _ => None,
    });
    assert_eq!(remote, Some("127.0.0.1:6100".parse().unwrap()));
    assert!(!sip_texts(&out).iter().any(|m| m.starts_with("BYE ")));
    assert_eq!(s.e.active_calls(), 1);
}

#[test]
fn an_ack_without_an_acceptable_answer_ends_the_offerless_call() {
    let pcma = CALLER_ANSWER
        .replace("RTP/AVP 0 101", "RTP/AVP 8")
        .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000");
    for answer_sdp in [None, Some(pcma.as_str()), Some("v=0\r\nnonsense")] {
        let mut s = Sim::new();
        let key = offerless_call(&mut s);
        let ok = answer(&mut s, key);
        assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
        let tag = to_tag_of(&ok);
        s.sip(&ack(&tag, answer_sdp), CALLER);
        let out = s.take();
        let msgs = sip_texts(&out);
        assert_eq!(
            start_lines(&msgs),
            vec![format!("BYE sip:caller@{CALLER} SIP/2.0")],
            "{answer_sdp:?}"
        );
        assert!(
            header_of(&msgs[0], "Reason").is_some_and(|r| r.contains("488")),
            "{}",
            msgs[0]
        );
        let ended = out.iter().any(|o| {
            matches!(o, Output::Ript(RiptCmd::ClientSend { event, .. }) if event.name == EventName::End)
        });
        assert!(ended, "{answer_sdp:?}: {out:?}");
        assert_eq!(s.e.active_calls(), 0);
    }
}

/// The PRACK of our first reliable provisional on an offerless INVITE, with `sdp`.
fn prack(tag: &str, rseq: &str, sdp: Option<&str>) -> String {
    super::session_timer_tests::with(
        &in_dialog("PRACK", "z9hG4bKdopr", 2, tag, sdp),
        &format!("RAck: {rseq} 1 INVITE\r\n"),
    )
}

/// An offerless INVITE requiring 100rel, and the far side ringing: the key and our 180.
fn ringing_with_100rel(s: &mut Sim) -> (CallKey, String) {
    let key = offerless_call_with(s, "Require: 100rel\r\n");
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Alerting, 0),
    });
    (key, s.sip_out().remove(0))
}

/// RFC 3262 §5: a caller that sends no offer and requires 100rel gets our offer in the first
/// reliable provisional and answers in its PRACK; the 2xx then carries no SDP.
#[test]
fn an_offerless_invite_that_requires_100rel_gets_our_offer_in_the_first_reliable_provisional() {
    let mut s = Sim::new();
    let (key, ringing) = ringing_with_100rel(&mut s);
    assert!(
        ringing.starts_with("SIP/2.0 180 ")
            && ringing.contains("m=audio ")
            && ringing.contains("RTP/AVP 0"),
        "{ringing}"
    );
    let rseq = header_of(&ringing, "RSeq").expect("reliable");
    let tag = to_tag_of(&ringing);
    // The callee answers before the PRACK: the 2xx waits for it.
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Answered, 1),
    });
    assert!(s.sip_out().is_empty(), "the 2xx waits for the PRACK");
    s.sip(&prack(&tag, &rseq, Some(CALLER_ANSWER)), CALLER);
    let out = s.take();
    let remote = out.iter().find_map(|o| match o {
        Output::Media(MediaCmd::SetRemote { rtp, .. }) => Some(*rtp),
        _ => None,
    });
    assert_eq!(
        remote,
        Some("127.0.0.1:6100".parse().unwrap()),
        "the PRACK's answer is taken"
    );
    let msgs = sip_texts(&out);
    assert_eq!(
        start_lines(&msgs),
        vec!["SIP/2.0 200 OK".to_string(), "SIP/2.0 200 OK".to_string()],
        "the PRACK's, then the INVITE's"
    );
    let ok = &msgs[1];
    assert!(
        ok.contains("CSeq: 1 INVITE") && !ok.contains("m=audio") && !ok.contains("Content-Type"),
        "no SDP again: {ok}"
    );
    // SDP in the ACK now is no answer (RFC 6337 §3.1): nothing changes.
    let elsewhere = CALLER_ANSWER.replace("6100", "6200");
    s.sip(&ack(&tag, Some(&elsewhere)), CALLER);
    let out = s.take();
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(s.e.active_calls(), 1);
}

#[test]
fn a_prack_without_an_answer_to_our_early_offer_gets_the_invite_refused() {
    let mut s = Sim::new();
    let (_, ringing) = ringing_with_100rel(&mut s);
    let rseq = header_of(&ringing, "RSeq").expect("reliable");
    s.sip(&prack(&to_tag_of(&ringing), &rseq, None), CALLER);
    assert_eq!(
        start_lines(&s.sip_out()),
        vec![
            "SIP/2.0 200 OK".to_string(),
            "SIP/2.0 488 Not Acceptable Here".to_string()
        ]
    );
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn a_secure_leg_takes_the_acks_answer_only_with_its_keys_and_address() {
    use crate::config::{IceMode, MediaSecurity};
    // Our offer in the 200 carries SDES keys.
    let mut s = super::tests::secure_sim(MediaSecurity::Sdes, IceMode::Off);
    let key = offerless_call(&mut s);
    let ok = answer(&mut s, key);
    assert!(ok.contains("RTP/SAVP") && ok.contains("a=crypto:"), "{ok}");
    let tag = to_tag_of(&ok);
    // An answer without c= (and without keys) is no answer to it.
    let no_addr = CALLER_ANSWER.replace("c=IN IP4 127.0.0.1\r\n", "");
    s.sip(&ack(&tag, Some(&no_addr)), CALLER);
    assert_eq!(
        start_lines(&s.sip_out()),
        vec![format!("BYE sip:caller@{CALLER} SIP/2.0")]
    );
    assert_eq!(s.e.active_calls(), 0);
    // One with the caller's key: the keys are applied before the address.
    let mut s = super::tests::secure_sim(MediaSecurity::Sdes, IceMode::Off);
    let key = offerless_call(&mut s);
    let ok = answer(&mut s, key);
    let tag = to_tag_of(&ok);
    let crypto = ok
        .lines()
        .find(|l| l.starts_with("a=crypto:1 "))
        .expect("our first suite")
        .to_string();
    let theirs = format!(
        "{}a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n",
        CALLER_ANSWER.replace("RTP/AVP", "RTP/SAVP")
    );
    assert!(crypto.contains("AES"), "{crypto}");
    s.sip(&ack(&tag, Some(&theirs)), CALLER);
    let out = s.take();
    let order: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Output::Media(MediaCmd::Secure { .. }) => Some("secure"),
            Output::Media(MediaCmd::SetRemote { .. }) => Some("remote"),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec!["secure", "remote"], "{out:?}");
    assert_eq!(s.e.active_calls(), 1);
}

#[test]
fn an_update_with_an_offer_before_the_ack_gets_491() {
    let mut s = Sim::new();
    let key = offerless_call(&mut s);
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Alerting, 0),
    });
    let ringing = s.sip_out().remove(0);
    let tag = to_tag_of(&ringing);
    // Before our 2xx (which must carry our offer) and after it, until the ACK answers.
    s.sip(
        &in_dialog("UPDATE", "z9hG4bKup1", 2, &tag, Some(CALLER_ANSWER)),
        CALLER,
    );
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["SIP/2.0 491 Request Pending"]
    );
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: ev(EventName::Answered, 1),
    });
    s.take();
    s.sip(
        &in_dialog("UPDATE", "z9hG4bKup2", 3, &tag, Some(CALLER_ANSWER)),
        CALLER,
    );
    assert_eq!(
        start_lines(&s.sip_out()),
        vec!["SIP/2.0 491 Request Pending"]
    );
    s.sip(&ack(&tag, Some(CALLER_ANSWER)), CALLER);
    s.take();
    assert_eq!(s.e.active_calls(), 1);
}

#[test]
fn a_description_the_answer_narrowed_goes_out_again_as_a_new_version() {
    use crate::config::{IceMode, MediaSecurity};
    let o_version = |m: &str| -> u64 {
        let o = m.lines().find(|l| l.starts_with("o=")).expect("o= line");
        o.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let mut s = super::tests::secure_sim(MediaSecurity::Sdes, IceMode::Off);
    let key = offerless_call(&mut s);
    let ok = answer(&mut s, key);
    assert!(ok.matches("a=crypto:").count() > 1, "{ok}");
    let tag = to_tag_of(&ok);
    let theirs = format!(
        "{}a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n",
        CALLER_ANSWER.replace("RTP/AVP", "RTP/SAVP")
    );
    s.sip(&ack(&tag, Some(&theirs)), CALLER);
    s.take();
    // An offerless re-INVITE: our 2xx offers the description the answer settled (one suite),
    // under a higher o= version (RFC 3264 §8).
    s.sip(&in_dialog("INVITE", "z9hG4bKre1", 2, &tag, None), CALLER);
    let re = s
        .sip_out()
        .into_iter()
        .find(|m| m.starts_with("SIP/2.0 200"))
        .expect("200 to the re-INVITE");
    assert_eq!(re.matches("a=crypto:").count(), 1, "{re}");
    assert!(o_version(&re) > o_version(&ok), "{ok}\n{re}");
}

/// RFC 3261 §14.2: a re-INVITE in the early dialog, before our 2xx, gets 500 with Retry-After
/// (and does not touch our outstanding offer).
#[test]
fn a_reinvite_before_our_2xx_gets_500() {
    let mut s = Sim::new();
    let (_, ringing) = ringing_with_100rel(&mut s);
    let tag = to_tag_of(&ringing);
    s.sip(
        &in_dialog("INVITE", "z9hG4bKdore", 2, &tag, Some(CALLER_ANSWER)),
        CALLER,
    );
    let msgs = s.sip_out();
    assert_eq!(
        start_lines(&msgs),
        vec!["SIP/2.0 500 Server Internal Error".to_string()]
    );
    assert!(header_of(&msgs[0], "Retry-After").is_some());
}
