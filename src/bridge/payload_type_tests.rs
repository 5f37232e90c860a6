//! Payload type numbers the SIP peer gives differently from the HTTP/3 side (RFC 3264 §5.1,
//! §6.1): the media hub is told which to rewrite, after each SDP either way.

use super::delayed_offer_tests::{ack, offerless_call, CALLER_ANSWER};
use super::tests::{
    answer, b_invite_sent, created_call, description, header, invite, reply, sip_texts, to_tag_of,
    Sim, ANSWER, CALLER, OFFER, TRUNK,
};
use super::*;

/// The payload type maps among `out`.
fn maps(out: &[Output]) -> Vec<PayloadMap> {
    out.iter()
        .filter_map(|o| match o {
            Output::Media(MediaCmd::MapPayloadTypes { map, .. }) => Some(map.clone()),
            _ => None,
        })
        .collect()
}

fn map(to_peer: &[(u8, u8)], from_peer: &[(u8, u8)], refused: &[u8]) -> PayloadMap {
    PayloadMap {
        to_peer: to_peer.to_vec(),
        from_peer: from_peer.to_vec(),
        refused: refused.to_vec(),
    }
}

/// `sdp` with telephone-event numbered `pt` instead of 101.
fn te_as(sdp: &str, pt: u8) -> String {
    sdp.replace(" 101", &format!(" {pt}"))
        .replace(":101 ", &format!(":{pt} "))
}

/// The trunk's `method` (a re-INVITE with `sdp`, or its ACK) in the dialog our `ack` is in.
pub(super) fn from_trunk(ack: &str, method: &str, cseq: u32, sdp: &str) -> String {
    let ct = if sdp.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{method} sip:riptide@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {TRUNK};branch=z9hG4bKro{cseq}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:callee@{TRUNK}>\r\n{ct}Content-Length: {}\r\n\r\n{sdp}",
        header(ack, "To"),
        header(ack, "From"),
        header(ack, "Call-ID"),
        sdp.len()
    )
}

/// The trunk re-offers `sdp` with CSeq `cseq` and ACKs our 200; what came out.
fn trunk_reoffer(s: &mut Sim, ack: &str, cseq: u32, sdp: &str) -> Vec<Output> {
    s.sip(&from_trunk(ack, "INVITE", cseq, sdp), TRUNK);
    let out = s.take();
    let ok = sip_texts(&out).remove(0);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    s.sip(&from_trunk(ack, "ACK", cseq, ""), TRUNK);
    out
}

#[test]
fn a_trunk_numbering_telephone_event_its_own_way_is_sent_its_numbers_in_answers_and_reoffers() {
    let mut s = Sim::new();
    let (_, inv) = b_invite_sent(&mut s);
    // Our offer said 101; the trunk answers 100: that is what it receives with. It sends with
    // our 101, so nothing comes back renumbered.
    s.sip(
        &reply(&inv, 200, "OK", "callee1", Some(&te_as(ANSWER, 100))),
        TRUNK,
    );
    let out = s.take();
    assert_eq!(maps(&out), [map(&[(101, 100)], &[], &[])]);
    let ack = sip_texts(&out).remove(0);
    assert!(ack.starts_with("ACK "), "{ack}");

    // A re-INVITE (a transfer on the trunk's side, say) numbers it 96: our answer keeps the
    // offer's numbers (RFC 3264 §6.1), so the trunk now sends 96 too.
    let out = trunk_reoffer(&mut s, &ack, 2, &te_as(ANSWER, 96));
    let ok = sip_texts(&out).remove(0);
    assert!(ok.contains(" RTP/AVP 0 96\r\n"), "{ok}");
    assert_eq!(maps(&out), [map(&[(101, 96)], &[(96, 101)], &[])]);

    // Back to the HTTP/3 side's numbers: nothing is rewritten any more; said once.
    let out = trunk_reoffer(&mut s, &ack, 3, ANSWER);
    assert_eq!(maps(&out), [PayloadMap::default()]);
    let out = trunk_reoffer(&mut s, &ack, 4, ANSWER);
    assert_eq!(maps(&out), []);

    // A re-offer without telephone-event: our answer has none, and none is sent ...
    let voice_only = ANSWER
        .replace("RTP/AVP 0 101", "RTP/AVP 0")
        .replace("a=rtpmap:101 telephone-event/8000\r\n", "");
    let out = trunk_reoffer(&mut s, &ack, 5, &voice_only);
    let ok = sip_texts(&out).remove(0);
    assert!(ok.contains(" RTP/AVP 0\r\n"), "{ok}");
    assert_eq!(maps(&out), [map(&[], &[], &[101])]);
    // ... until one offers it again: it is answered and sent again.
    let out = trunk_reoffer(&mut s, &ack, 6, ANSWER);
    let ok = sip_texts(&out).remove(0);
    assert!(ok.contains(" RTP/AVP 0 101\r\n"), "{ok}");
    assert_eq!(maps(&out), [PayloadMap::default()]);
}

#[test]
fn a_caller_is_sent_its_own_numbers_whatever_the_far_side_chose() {
    // The usual case: the proposal keeps the caller's numbers, and nothing is said.
    let mut s = Sim::new();
    s.sip(&invite("z9hG4bKpt1", "cid-pt1", OFFER), CALLER);
    let out = s.take();
    let (key, adv) = created_call(&out).expect("CreateCall");
    let proposal = negotiate::choose(&adv, &crate::config::default_codecs()).unwrap();
    s.ript(RiptEvent::CallCreated {
        call: key,
        description: description(proposal.clone()),
    });
    assert_eq!(maps(&s.take()), []);

    // A far side that numbers telephone-event 96 both ways: our answer keeps the caller's 101
    // (RFC 3264 §6.1), and the relay rewrites between 101 and 96 both ways.
    let mut s = Sim::new();
    s.sip(&invite("z9hG4bKpt2", "cid-pt2", OFFER), CALLER);
    let (key, _) = created_call(&s.take()).expect("CreateCall");
    let mut renumbered = proposal;
    for st in &mut renumbered.streams {
        if st.payload_type == 101 {
            st.payload_type = 96;
        }
    }
    s.ript(RiptEvent::CallCreated {
        call: key,
        description: description(renumbered),
    });
    assert_eq!(maps(&s.take()), [map(&[(96, 101)], &[(101, 96)], &[])]);
    let ok = answer(&mut s, key);
    assert!(ok.contains(" RTP/AVP 0 101\r\n"), "{ok}");
}

#[test]
fn the_answer_in_the_ack_to_our_delayed_offer_may_number_telephone_event_its_own_way() {
    let mut s = Sim::new();
    let key = offerless_call(&mut s);
    let ok = answer(&mut s, key);
    assert!(ok.contains(" RTP/AVP 0 101 13\r\n"), "our offer: {ok}");
    assert_eq!(maps(&s.take()), [], "no SDP from the caller yet");
    s.sip(
        &ack(&to_tag_of(&ok), Some(&te_as(CALLER_ANSWER, 100))),
        CALLER,
    );
    // Our offer had CN too, and the answer left it out: not sent to the caller.
    assert_eq!(maps(&s.take()), [map(&[(101, 100)], &[], &[13])]);
}

#[test]
fn formats_the_trunks_answer_leaves_out_are_not_sent_to_it() {
    let mut s = Sim::new();
    let (_, inv) = b_invite_sent(&mut s);
    let voice_only = ANSWER
        .replace("RTP/AVP 0 101", "RTP/AVP 0")
        .replace("a=rtpmap:101 telephone-event/8000\r\n", "");
    s.sip(&reply(&inv, 200, "OK", "callee1", Some(&voice_only)), TRUNK);
    assert_eq!(maps(&s.take()), [map(&[], &[], &[101])]);
}

/// A 2xx without a usable SDP answer, and no early answer to stand on: the leg would take no
/// media, so the answer is refused (ACK, then BYE with 488).
#[test]
fn a_2xx_without_an_answer_is_refused() {
    let mut s = Sim::new();
    let (_, inv) = b_invite_sent(&mut s);
    s.sip(&reply(&inv, 200, "OK", "callee1", None), TRUNK);
    let msgs = sip_texts(&s.take());
    assert!(
        msgs[0].starts_with("ACK ") && msgs[1].starts_with("BYE "),
        "{msgs:?}"
    );
    assert!(msgs[1].contains("cause=488"), "{}", msgs[1]);
}
