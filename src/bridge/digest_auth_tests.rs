//! SIP Digest in the engine, with simulated time: challenging calls from a digest trunk (UAS)
//! and answering a trunk's challenges to our INVITEs (UAC).

use super::super::tests::{first, pcmu_adv, sip_texts, Sim};
use super::super::*;
use crate::sip::digest::{self, Algorithm, Login, UserDb, UserSecret};

const CALLER: &str = "127.0.0.1:5061";
const TRUNK: &str = "127.0.0.1:5080";
const REALM: &str = "riptide.test";
const URI: &str = "sip:answer@127.0.0.1:5070";
/// Seconds a user stays locked out in these tests.
const LOCKOUT: u64 = 120;

/// Trunk `pbx` claims the caller's address and challenges it; toward it we log in as
/// `riptide` / `trunk-pw`.
fn cfg() -> EngineConfig {
    let mut c = EngineConfig {
        port_max: 20100,
        keepalive: None,
        ..EngineConfig::example()
    };
    let t = &mut c.trunks[0];
    t.match_sources = vec![("127.0.0.1".parse().unwrap(), Some(5061))];
    t.digest_users = Some(Arc::new(
        UserDb::new(
            REALM,
            vec![
                ("alice".into(), UserSecret::Password("s3cret".into())),
                ("bob".into(), UserSecret::Password("other".into())),
            ],
            LOCKOUT,
        )
        .unwrap(),
    ));
    t.digest_login = Some(Arc::new(Login::new("riptide", "trunk-pw")));
    c
}

fn created(out: &[Output]) -> bool {
    out.iter()
        .any(|o| matches!(o, Output::Ript(RiptCmd::CreateCall { .. })))
}

/// Every value of header `name` in a message, in order.
fn headers(m: &str, name: &str) -> Vec<String> {
    m.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

fn header(m: &str, name: &str) -> String {
    headers(m, name)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {name} in\n{m}"))
}

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

/// An INVITE from the caller (CSeq `cseq`), with these extra header lines.
fn invite(branch: &str, call_id: &str, cseq: u32, extra: &[String]) -> String {
    let extra: String = extra.iter().map(|l| format!("{l}\r\n")).collect();
    format!(
        "INVITE {URI} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@127.0.0.1>;tag=caller1\r\nTo: <{URI}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:caller@{CALLER}>\r\n{extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
        OFFER.len()
    )
}

/// The challenges of a 401, parsed.
fn challenges_of(resp: &str) -> Vec<digest::Challenge> {
    digest::challenges_of(&headers(resp, "WWW-Authenticate"))
}

/// `Authorization: ...` answering the `alg` challenge of `resp` as `user`/`pw`.
fn authorization(resp: &str, alg: Algorithm, user: &str, pw: &str, nc: u32) -> String {
    let chs = challenges_of(resp);
    let ch = chs
        .iter()
        .find(|c| c.algorithm() == Some(alg))
        .unwrap_or_else(|| panic!("no {alg} challenge in\n{resp}"));
    let c = digest::answer(ch, alg, &Login::new(user, pw), "INVITE", URI, "cn-1", nc);
    format!("Authorization: {}", c.render())
}

/// An INVITE goes unauthenticated and gets its 401; returns that 401.
fn challenged(s: &mut Sim, branch: &str, call_id: &str) -> String {
    s.sip(&invite(branch, call_id, 1, &[]), CALLER);
    let out = s.take();
    assert!(!created(&out), "no call before authentication");
    let msgs = sip_texts(&out);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(
        msgs[0].starts_with("SIP/2.0 401 Unauthorized\r\n"),
        "{}",
        msgs[0]
    );
    msgs[0].clone()
}

/// The caller ACKs a non-2xx final answer of its INVITE with `branch`.
fn ack_final(s: &mut Sim, branch: &str, call_id: &str, cseq: u32, resp: &str) {
    let to = header(resp, "To");
    s.sip(
        &format!(
            "ACK {URI} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@127.0.0.1>;tag=caller1\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"
        ),
        CALLER,
    );
}

#[test]
fn an_invite_from_a_digest_trunk_is_challenged_and_the_right_answer_places_the_call() {
    let mut s = Sim::with(cfg());
    let resp = challenged(&mut s, "z9hG4bKa1", "cid-1");
    // One challenge per algorithm, strongest first, each with qop=auth; a To tag; no stale.
    let chs = challenges_of(&resp);
    let algs: Vec<_> = chs.iter().map(|c| c.algorithm().unwrap()).collect();
    assert_eq!(
        algs,
        vec![Algorithm::Sha512_256, Algorithm::Sha256, Algorithm::Md5]
    );
    assert!(chs
        .iter()
        .all(|c| c.realm == REALM && c.qop == ["auth"] && !c.stale));
    assert!(header(&resp, "To").contains(";tag="), "{resp}");
    assert!(header(&resp, "CSeq") == "1 INVITE");
    // The ACK of the 401 ends the transaction and makes no call.
    ack_final(&mut s, "z9hG4bKa1", "cid-1", 1, &resp);
    assert!(s.take().is_empty());
    assert_eq!(s.e.active_calls(), 0);
    // Sent again with SHA-256 credentials: the call goes on (100 Trying, the HTTP/3 call).
    let auth = authorization(&resp, Algorithm::Sha256, "alice", "s3cret", 1);
    s.sip(&invite("z9hG4bKa2", "cid-1", 2, &[auth]), CALLER);
    let out = s.take();
    assert!(created(&out), "{out:?}");
    assert!(sip_texts(&out)[0].starts_with("SIP/2.0 100 Trying"));
    assert_eq!(s.e.active_calls(), 1);
    // And with the strongest algorithm, for another call.
    let resp = challenged(&mut s, "z9hG4bKb1", "cid-2");
    let auth = authorization(&resp, Algorithm::Sha512_256, "bob", "other", 1);
    s.sip(&invite("z9hG4bKb2", "cid-2", 2, &[auth]), CALLER);
    assert!(created(&s.take()));
}

#[test]
fn calls_from_other_sources_and_requests_in_a_dialog_are_not_challenged() {
    let mut s = Sim::with(cfg());
    // Not the trunk's address: no challenge.
    s.sip(&invite("z9hG4bKo1", "cid-o", 1, &[]), "127.0.0.1:5062");
    assert!(created(&s.take()));
    // The trunk's call, authenticated, answered; its BYE carries no credentials and is taken.
    let resp = challenged(&mut s, "z9hG4bKa1", "cid-1");
    let auth = authorization(&resp, Algorithm::Md5, "alice", "s3cret", 1);
    s.sip(&invite("z9hG4bKa2", "cid-1", 2, &[auth]), CALLER);
    let key = s
        .take()
        .iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::CreateCall { call, .. }) => Some(*call),
            _ => None,
        })
        .expect("CreateCall");
    s.ript(RiptEvent::CallCreated {
        call: key,
        description: CallDescription {
            uri: "https://localhost:4434/.well-known/ript/v1/providertgs/trunk/calls/x1".into(),
            handler: None,
            direction: None,
            destination: "answer".into(),
            from: None,
            state: CallState::Proceeding,
            proposal: negotiate::choose(&pcmu_adv(), &crate::config::default_codecs()).unwrap(),
            media_ticket: None,
        },
    });
    let mut answered = Event::new(EventName::Answered);
    answered.seq = Some(0);
    s.ript(RiptEvent::ClientEvent {
        call: key,
        event: answered,
    });
    let ok = first(&s.sip_out(), "SIP/2.0 200").to_string();
    let to = header(&ok, "To");
    let in_dialog = |method: &str, branch: &str, cseq: u32| {
        format!(
            "{method} sip:riptide@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@127.0.0.1>;tag=caller1\r\nTo: {to}\r\nCall-ID: cid-1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    s.sip(&in_dialog("ACK", "z9hG4bKack", 2), CALLER);
    s.sip(&in_dialog("BYE", "z9hG4bKbye", 3), CALLER);
    let msgs = s.sip_out();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("SIP/2.0 200 OK") && m.contains("CSeq: 3 BYE")),
        "{msgs:?}"
    );
    assert_eq!(s.e.active_calls(), 1, "the call from the other source");
}

#[test]
fn the_challenge_comes_before_routing() {
    // No route for any destination: an authenticated INVITE would get 404, this one gets 401.
    let mut s = Sim::with(EngineConfig {
        sip_routes: vec![],
        ..cfg()
    });
    let resp = challenged(&mut s, "z9hG4bKa1", "cid-1");
    let auth = authorization(&resp, Algorithm::Sha256, "alice", "s3cret", 1);
    s.sip(&invite("z9hG4bKa2", "cid-1", 2, &[auth]), CALLER);
    let msgs = s.sip_out();
    assert!(
        msgs.iter().any(|m| m.starts_with("SIP/2.0 404")),
        "{msgs:?}"
    );
}

/// One call attempt (number `n`, for unique branches and Call-IDs) from [`CALLER`]: an INVITE,
/// its challenge, the INVITE again answering it as `user`/`pw`. Gives "call" when the call went
/// on, else the status line of the one answer.
fn attempt(s: &mut Sim, n: u32, user: &str, pw: &str) -> String {
    let (b1, b2, cid) = (
        format!("z9hG4bKw{n}a"),
        format!("z9hG4bKw{n}b"),
        format!("cid-w{n}"),
    );
    let resp = challenged(s, &b1, &cid);
    let auth = authorization(&resp, Algorithm::Sha256, user, pw, 1);
    s.sip(&invite(&b2, &cid, 2, &[auth]), CALLER);
    let out = s.take();
    if created(&out) {
        return "call".into();
    }
    let msgs = sip_texts(&out);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    msgs[0].lines().next().unwrap().to_string()
}

#[test]
fn a_wrong_password_is_challenged_again_and_ten_lock_the_user_out() {
    let mut s = Sim::with(cfg());
    let mut call = 0;
    let mut attempt = |s: &mut Sim, pw: &str| -> String {
        call += 1;
        attempt(s, call, "alice", pw)
    };
    for i in 1..10 {
        assert_eq!(
            attempt(&mut s, "guess"),
            "SIP/2.0 401 Unauthorized",
            "try {i}"
        );
    }
    assert_eq!(
        attempt(&mut s, "guess"),
        "SIP/2.0 403 Forbidden",
        "the 10th"
    );
    // Locked: the right password too gets 403 until the lockout time has passed.
    assert_eq!(attempt(&mut s, "s3cret"), "SIP/2.0 403 Forbidden");
    s.advance(Duration::from_secs(LOCKOUT - 5));
    s.take(); // retransmitted 401s nobody ACKed
    assert_eq!(attempt(&mut s, "s3cret"), "SIP/2.0 403 Forbidden");
    s.advance(Duration::from_secs(6));
    s.take();
    assert_eq!(attempt(&mut s, "s3cret"), "call");
}

#[test]
fn an_address_that_tries_many_names_is_locked_out_whatever_it_sends() {
    let mut s = Sim::with(cfg());
    let mut call = 0;
    let mut attempt = |s: &mut Sim, user: &str, pw: &str| -> String {
        call += 1;
        attempt(s, call, user, pw)
    };
    // One wrong guess each for 29 names: no name reaches its own lockout.
    for i in 1..digest::MAX_SOURCE_FAILURES {
        assert_eq!(
            attempt(&mut s, &format!("user{i}"), "guess"),
            "SIP/2.0 401 Unauthorized",
            "try {i}"
        );
    }
    assert_eq!(
        attempt(&mut s, "user30", "guess"),
        "SIP/2.0 403 Forbidden",
        "the 30th"
    );
    // Locked: no new challenge, and a configured user's right password gets 403 too.
    s.sip(&invite("z9hG4bKs-none", "cid-s-none", 1, &[]), CALLER);
    let msgs = sip_texts(&s.take());
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].starts_with("SIP/2.0 403 Forbidden"), "{}", msgs[0]);
    s.advance(Duration::from_secs(LOCKOUT + 1));
    s.take(); // retransmitted 401s nobody ACKed
    assert_eq!(attempt(&mut s, "alice", "s3cret"), "call");
}

#[test]
fn a_replayed_nc_is_challenged_again() {
    let mut s = Sim::with(cfg());
    let resp = challenged(&mut s, "z9hG4bKa1", "cid-1");
    let auth = authorization(&resp, Algorithm::Sha256, "alice", "s3cret", 1);
    s.sip(
        &invite("z9hG4bKa2", "cid-1", 2, std::slice::from_ref(&auth)),
        CALLER,
    );
    assert!(created(&s.take()));
    // The same credentials on a new INVITE (a replay): challenged, stale, no call.
    s.sip(&invite("z9hG4bKr1", "cid-r", 1, &[auth]), CALLER);
    let out = s.take();
    assert!(!created(&out));
    let msgs = sip_texts(&out);
    assert!(msgs[0].starts_with("SIP/2.0 401"), "{}", msgs[0]);
    assert!(challenges_of(&msgs[0]).iter().all(|c| c.stale));
    // The next nonce count of the same nonce is accepted.
    let auth = authorization(&resp, Algorithm::Sha256, "alice", "s3cret", 2);
    s.sip(&invite("z9hG4bKr2", "cid-r", 2, &[auth]), CALLER);
    assert!(created(&s.take()));
}

#[test]
fn a_nonce_older_than_five_minutes_gets_a_stale_challenge() {
    let mut s = Sim::with(cfg());
    let resp = challenged(&mut s, "z9hG4bKa1", "cid-1");
    s.advance(Duration::from_secs(301));
    s.take(); // the 401's retransmissions
    let auth = authorization(&resp, Algorithm::Sha256, "alice", "s3cret", 1);
    s.sip(&invite("z9hG4bKa2", "cid-1", 2, &[auth]), CALLER);
    let msgs = s.sip_out();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].starts_with("SIP/2.0 401"), "{}", msgs[0]);
    let fresh = challenges_of(&msgs[0]);
    assert_eq!(fresh.len(), 3);
    assert!(fresh.iter().all(|c| c.stale), "{}", msgs[0]);
    assert!(headers(&msgs[0], "WWW-Authenticate")
        .iter()
        .all(|h| h.contains("stale=true")));
    assert_ne!(fresh[0].nonce, challenges_of(&resp)[0].nonce);
    // The fresh nonce works.
    let auth = authorization(&msgs[0], Algorithm::Sha256, "alice", "s3cret", 1);
    s.sip(&invite("z9hG4bKa3", "cid-1", 3, &[auth]), CALLER);
    assert!(created(&s.take()));
}

#[test]
fn malformed_or_misaddressed_credentials_get_400() {
    let mut s = Sim::with(cfg());
    let resp = challenged(&mut s, "z9hG4bKa1", "cid-1");
    let bad = format!(
        "Authorization: Digest username=\"alice\", realm=\"{REALM}\", nonce=\"n\", uri=\"{URI}\", response=\"x"
    );
    s.sip(&invite("z9hG4bKa2", "cid-1", 2, &[bad]), CALLER);
    let msgs = s.sip_out();
    assert!(
        msgs[0].starts_with("SIP/2.0 400 Bad Request (Authorization"),
        "{}",
        msgs[0]
    );
    // Right response, but for another Request-URI than this INVITE's.
    let ch = &challenges_of(&resp)[1];
    let c = digest::answer(
        ch,
        Algorithm::Sha256,
        &Login::new("alice", "s3cret"),
        "INVITE",
        "sip:other@127.0.0.1:5070",
        "cn",
        1,
    );
    let auth = format!("Authorization: {}", c.render());
    s.sip(&invite("z9hG4bKa3", "cid-1", 3, &[auth]), CALLER);
    let msgs = s.sip_out();
    assert!(msgs[0].starts_with("SIP/2.0 400"), "{}", msgs[0]);
    assert!(msgs[0].contains("Request-URI"), "{}", msgs[0]);
    // Credentials for another realm only: challenged as if there were none.
    let other = format!(
        "Authorization: Digest username=\"alice\", realm=\"elsewhere\", nonce=\"n\", uri=\"{URI}\", response=\"x\""
    );
    s.sip(&invite("z9hG4bKa4", "cid-1", 4, &[other]), CALLER);
    let msgs = s.sip_out();
    assert!(msgs[0].starts_with("SIP/2.0 401"), "{}", msgs[0]);
}

// ------------------------------------------------------------------ UAC

/// A RIPT call in for `answer`, routed to trunk `pbx`; returns its key and our INVITE.
fn uac_invite(s: &mut Sim) -> (CallKey, String) {
    s.ript(RiptEvent::IncomingCall {
        req: ReqId(1),
        tg: "trunk".into(),
        request: CallRequest {
            handler: None,
            destination: "answer".into(),
            from: Some("+12155551212".into()),
            passport: None,
            verstat: None,
            advertisement: Some(pcmu_adv()),
        },
        principal: "gateway-a".into(),
        origin: None,
        tns: vec![],
    });
    let out = s.take();
    let key = out
        .iter()
        .find_map(|o| match o {
            Output::Ript(RiptCmd::RespondCall {
                result: Ok(acc), ..
            }) => Some(acc.key),
            _ => None,
        })
        .expect("201 for the call");
    s.ript(RiptEvent::ServerEventsOpened { call: key });
    let inv = sip_texts(&out).remove(0);
    assert!(
        inv.starts_with("INVITE sip:answer@127.0.0.1:5080 SIP/2.0"),
        "{inv}"
    );
    assert!(headers(&inv, "Authorization").is_empty());
    (key, inv)
}

/// The trunk's response to our request `req`, with extra header lines.
fn reply(req: &str, code: u16, reason: &str, extra: &[String], sdp: Option<&str>) -> String {
    let to = header(req, "To");
    let to = if to.contains(";tag=") {
        to
    } else {
        format!("{to};tag=callee1")
    };
    let extra: String = extra.iter().map(|l| format!("{l}\r\n")).collect();
    let body = sdp.unwrap_or("");
    let ct = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    format!(
        "SIP/2.0 {code} {reason}\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <sip:callee@{TRUNK}>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
        header(req, "Via"),
        header(req, "From"),
        header(req, "Call-ID"),
        header(req, "CSeq"),
        body.len()
    )
}

const ANSWER: &str = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

/// Checks `creds` (a credential header value) answers `nonce` for our INVITE with the
/// trunk's password, with `alg`.
fn assert_valid(creds: &str, alg: Algorithm, nonce: &str, qop: bool) {
    let c = digest::parse_credentials(creds).unwrap();
    assert_eq!(c.username, "riptide");
    assert_eq!(c.nonce, nonce);
    assert_eq!(c.uri, "sip:answer@127.0.0.1:5080");
    assert_eq!(c.algorithm(), Some(alg));
    let ha1 = digest::ha1(alg, "riptide", &c.realm, "trunk-pw");
    let auth = if qop {
        assert_eq!(c.qop.as_deref(), Some("auth"));
        Some((c.nc.as_deref().unwrap(), c.cnonce.as_deref().unwrap()))
    } else {
        assert_eq!(c.qop, None);
        None
    };
    let want = digest::response(alg, &ha1, &c.nonce, auth, "INVITE", &c.uri);
    assert_eq!(c.response, want, "{creds}");
}

fn c_seq(m: &str) -> u32 {
    header(m, "CSeq")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn branch_of(m: &str) -> String {
    msg::param(&header(m, "Via"), "branch").unwrap()
}

fn server_events(out: &[Output]) -> Vec<Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Ript(RiptCmd::ServerSend { event, .. }) => Some(event.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_401_is_answered_with_the_strongest_offered_algorithm_and_the_dialog_counts_on() {
    let mut s = Sim::with(cfg());
    let (key, inv) = uac_invite(&mut s);
    // MD5 listed first, SHA-256 second, SHA3 unknown: SHA-256 is chosen.
    let chs = [
        "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n-md5\", algorithm=MD5, qop=\"auth\"",
        "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n-sha\", algorithm=SHA-256, qop=\"auth\", opaque=\"op\"",
        "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n-sha3\", algorithm=SHA3-256, qop=\"auth\"",
    ]
    .map(String::from);
    s.sip(&reply(&inv, 401, "Unauthorized", &chs, None), TRUNK);
    let msgs = s.sip_out();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    // The 401 is ACKed (by the transaction: the INVITE's branch and CSeq number).
    let ack = first(&msgs, "ACK ");
    assert_eq!(header(ack, "CSeq"), "1 ACK");
    assert_eq!(branch_of(ack), branch_of(&inv));
    // The INVITE again: same Call-ID and From tag, next CSeq, new branch, credentials.
    let inv2 = first(&msgs, "INVITE ");
    assert_eq!(header(inv2, "Call-ID"), header(&inv, "Call-ID"));
    assert_eq!(header(inv2, "From"), header(&inv, "From"));
    assert_eq!(header(inv2, "CSeq"), "2 INVITE");
    assert_ne!(branch_of(inv2), branch_of(&inv));
    let creds = header(inv2, "Authorization");
    assert_valid(&creds, Algorithm::Sha256, "n-sha", true);
    assert!(creds.contains("opaque=\"op\""), "{creds}");
    // Answered: the ACK of the 2xx has CSeq 2 and the INVITE's credentials.
    s.sip(&reply(inv2, 200, "OK", &[], Some(ANSWER)), TRUNK);
    let msgs = s.sip_out();
    let ack = first(&msgs, "ACK ");
    assert_eq!(header(ack, "CSeq"), "2 ACK");
    assert_eq!(header(ack, "Authorization"), creds);
    // The caller hangs up: the BYE comes next in the dialog's CSeq space.
    let mut end = Event::new(EventName::End);
    end.seq = Some(0);
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: end,
    });
    let msgs = s.sip_out();
    let bye = first(&msgs, "BYE ");
    assert_eq!(header(bye, "CSeq"), "3 BYE");
    // It carries credentials for the same challenge, computed for BYE and its Request-URI,
    // with the next nonce count.
    let c = digest::parse_credentials(&header(bye, "Authorization")).unwrap();
    let bye_uri = bye.split(' ').nth(1).unwrap();
    assert_eq!((c.nonce.as_str(), c.uri.as_str()), ("n-sha", bye_uri));
    assert_eq!(c.nc.as_deref(), Some("00000002"));
    let ha1 = digest::ha1(Algorithm::Sha256, "riptide", &c.realm, "trunk-pw");
    let auth = Some((c.nc.as_deref().unwrap(), c.cnonce.as_deref().unwrap()));
    let want = digest::response(Algorithm::Sha256, &ha1, &c.nonce, auth, "BYE", &c.uri);
    assert_eq!(c.response, want);
}

#[test]
fn a_407_is_answered_with_md5_proxy_credentials_and_a_cancel_follows_the_new_invite() {
    let mut s = Sim::with(cfg());
    let (key, inv) = uac_invite(&mut s);
    let ch = [
        "Proxy-Authenticate: Digest realm=\"proxy\", nonce=\"pn1\", algorithm=MD5, qop=\"auth\""
            .to_string(),
    ];
    s.sip(
        &reply(&inv, 407, "Proxy Authentication Required", &ch, None),
        TRUNK,
    );
    let msgs = s.sip_out();
    let inv2 = first(&msgs, "INVITE ");
    assert!(headers(inv2, "Authorization").is_empty());
    assert_valid(
        &header(inv2, "Proxy-Authorization"),
        Algorithm::Md5,
        "pn1",
        true,
    );
    assert_eq!(header(inv2, "CSeq"), "2 INVITE");
    // Ringing, then the caller gives up: the CANCEL matches the second INVITE.
    s.sip(&reply(inv2, 180, "Ringing", &[], None), TRUNK);
    s.take();
    let mut end = Event::new(EventName::End);
    end.seq = Some(0);
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: end,
    });
    let msgs = s.sip_out();
    let cancel = first(&msgs, "CANCEL ");
    assert_eq!(header(cancel, "CSeq"), "2 CANCEL");
    assert_eq!(branch_of(cancel), branch_of(inv2));
}

#[test]
fn legacy_md5_without_qop_is_answered_in_rfc2069_form() {
    let mut s = Sim::with(cfg());
    let (_key, inv) = uac_invite(&mut s);
    let ch = ["WWW-Authenticate: Digest realm=\"old\", nonce=\"legacy1\"".to_string()];
    s.sip(&reply(&inv, 401, "Unauthorized", &ch, None), TRUNK);
    let msgs = s.sip_out();
    let inv2 = first(&msgs, "INVITE ");
    let creds = header(inv2, "Authorization");
    let c = digest::parse_credentials(&creds).unwrap();
    assert_eq!((c.cnonce, c.nc, c.algorithm), (None, None, None));
    let ha1 = digest::ha1(Algorithm::Md5, "riptide", "old", "trunk-pw");
    let want = digest::response(Algorithm::Md5, &ha1, "legacy1", None, "INVITE", &c.uri);
    assert_eq!(c.response, want);
}

#[test]
fn a_second_401_ends_the_call_with_that_status_and_a_stale_one_is_answered_again() {
    let challenge = |nonce: &str, stale: bool| {
        let stale = if stale { ", stale=true" } else { "" };
        [format!(
            "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"{nonce}\", algorithm=SHA-256, qop=\"auth\"{stale}"
        )]
    };
    // Stale: answered again with the new nonce.
    let mut s = Sim::with(cfg());
    let (_key, inv) = uac_invite(&mut s);
    s.sip(
        &reply(&inv, 401, "Unauthorized", &challenge("n1", false), None),
        TRUNK,
    );
    let inv2 = first(&s.sip_out(), "INVITE ").to_string();
    s.sip(
        &reply(&inv2, 401, "Unauthorized", &challenge("n2", true), None),
        TRUNK,
    );
    let msgs = s.sip_out();
    let inv3 = first(&msgs, "INVITE ");
    assert_eq!(header(inv3, "CSeq"), "3 INVITE");
    assert_valid(
        &header(inv3, "Authorization"),
        Algorithm::Sha256,
        "n2",
        true,
    );
    // Not stale: our password was refused; the call ends with 401, the 401 ACKed.
    s.sip(
        &reply(inv3, 401, "Unauthorized", &challenge("n3", false), None),
        TRUNK,
    );
    let out = s.take();
    let msgs = sip_texts(&out);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(msgs[0].starts_with("ACK ") && header(&msgs[0], "CSeq") == "3 ACK");
    let evs = server_events(&out);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(
        (evs[0].name.clone(), evs[0].code),
        (EventName::Failed, Some(401))
    );
    assert_eq!(s.e.active_calls(), 0);
}

#[test]
fn without_a_login_or_an_answerable_challenge_the_401_ends_the_call() {
    let mut no_login = cfg();
    no_login.trunks[0].digest_login = None;
    let sha = [
        "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", algorithm=SHA-256, qop=\"auth\""
            .to_string(),
    ];
    let int_only = [
        "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", algorithm=SHA-256, qop=\"auth-int\""
            .to_string(),
    ];
    for (c, chs) in [(no_login, &sha), (cfg(), &int_only)] {
        let mut s = Sim::with(c);
        let (_key, inv) = uac_invite(&mut s);
        s.sip(&reply(&inv, 401, "Unauthorized", chs, None), TRUNK);
        let out = s.take();
        let lines: Vec<String> = sip_texts(&out)
            .iter()
            .map(|m| m.lines().next().unwrap().to_string())
            .collect();
        assert_eq!(lines, vec!["ACK sip:answer@127.0.0.1:5080 SIP/2.0"]);
        assert_eq!(server_events(&out)[0].code, Some(401));
        assert_eq!(s.e.active_calls(), 0);
    }
}

#[test]
fn an_invite_asked_again_after_a_422_carries_fresh_credentials() {
    let mut s = Sim::with(cfg());
    let (_, inv) = uac_invite(&mut s);
    let ch = ["WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", algorithm=MD5, qop=\"auth\""]
        .map(String::from);
    s.sip(&reply(&inv, 401, "Unauthorized", &ch, None), TRUNK);
    let inv2 = first(&s.sip_out(), "INVITE ").to_string();
    let first_creds = header(&inv2, "Authorization");
    // The trunk wants a longer session interval (RFC 4028 §7.1): the INVITE goes again with
    // it, and its credentials are not a replay of the last ones.
    let min_se = ["Min-SE: 3600".to_string()];
    s.sip(
        &reply(&inv2, 422, "Session Interval Too Small", &min_se, None),
        TRUNK,
    );
    let inv3 = first(&s.sip_out(), "INVITE ").to_string();
    assert_eq!(header(&inv3, "CSeq"), "3 INVITE");
    assert_eq!(header(&inv3, "Session-Expires"), "3600");
    let again = header(&inv3, "Authorization");
    assert_valid(&again, Algorithm::Md5, "n1", true);
    let (a, b) = (
        digest::parse_credentials(&first_creds).unwrap(),
        digest::parse_credentials(&again).unwrap(),
    );
    assert_eq!(a.nc.as_deref(), Some("00000001"));
    assert_eq!(b.nc.as_deref(), Some("00000002"));
    assert_ne!(a.cnonce, b.cnonce);
}

#[test]
fn a_challenge_to_our_reinvite_is_answered_once_in_a_row() {
    let mut s = Sim::with(cfg());
    let (key, inv) = uac_invite(&mut s);
    let ch = |nonce: &str, stale: bool| {
        let stale = if stale { ", stale=true" } else { "" };
        [format!(
            "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"{stale}"
        )]
    };
    s.sip(
        &reply(&inv, 401, "Unauthorized", &ch("n1", false), None),
        TRUNK,
    );
    let inv2 = first(&s.sip_out(), "INVITE ").to_string();
    s.sip(&reply(&inv2, 200, "OK", &[], Some(ANSWER)), TRUNK);
    s.take();
    let hold = |s: &mut Sim, dir: &str, seq: u64| {
        let mut e = Event::new(EventName::Hold);
        e.seq = Some(seq);
        e.media_direction = Some(dir.into());
        s.ript(RiptEvent::ServerEvent {
            call: key,
            event: e,
        });
        first(&s.sip_out(), "INVITE ").to_string()
    };
    // Much later the nonce has expired: the trunk challenges our re-INVITE (stale).
    let re1 = hold(&mut s, "sendonly", 0);
    s.sip(
        &reply(&re1, 401, "Unauthorized", &ch("n2", true), None),
        TRUNK,
    );
    let msgs = s.sip_out();
    let re2 = first(&msgs, "INVITE ");
    assert!(re2.contains("a=sendonly"), "{re2}");
    let c = digest::parse_credentials(&header(re2, "Authorization")).unwrap();
    assert_eq!(
        (c.nonce.as_str(), c.nc.as_deref()),
        ("n2", Some("00000001"))
    );
    s.sip(&reply(re2, 200, "OK", &[], Some(ANSWER)), TRUNK);
    // RFC 3261 §13.2.2.4: the ACK of the re-INVITE's 2xx carries the re-INVITE's credentials.
    let msgs = s.sip_out();
    let ack = first(&msgs, "ACK ");
    assert_eq!(header(ack, "CSeq"), format!("{} ACK", c_seq(re2)));
    assert_eq!(header(ack, "Authorization"), header(re2, "Authorization"));
    s.take();
    // A second challenge later is answered again; one right after the retry is not.
    let re3 = hold(&mut s, "sendrecv", 1);
    s.sip(
        &reply(&re3, 401, "Unauthorized", &ch("n3", true), None),
        TRUNK,
    );
    let re4 = first(&s.sip_out(), "INVITE ").to_string();
    s.sip(
        &reply(&re4, 401, "Unauthorized", &ch("n4", true), None),
        TRUNK,
    );
    assert!(
        !s.sip_out().iter().any(|m| m.starts_with("INVITE ")),
        "no third try in a row"
    );
}

#[test]
fn after_a_prack_the_reinvites_ack_still_carries_its_credentials() {
    let mut s = Sim::with(cfg());
    let (key, inv) = uac_invite(&mut s);
    let ch = [
        "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", algorithm=MD5, qop=\"auth\""
            .to_string(),
    ];
    s.sip(&reply(&inv, 401, "Unauthorized", &ch, None), TRUNK);
    let inv2 = first(&s.sip_out(), "INVITE ").to_string();
    // A reliable 180: PRACKed with CSeq 3, with credentials too.
    let ringing = super::session_timer_tests::with(
        &reply(&inv2, 180, "Ringing", &[], None),
        "Require: 100rel\r\nRSeq: 1\r\n",
    );
    s.sip(&ringing, TRUNK);
    let pr = first(&s.sip_out(), "PRACK ").to_string();
    assert_eq!(header(&pr, "CSeq"), "3 PRACK");
    assert!(!header(&pr, "Authorization").is_empty(), "{pr}");
    s.sip(&reply(&inv2, 200, "OK", &[], Some(ANSWER)), TRUNK);
    s.take();
    let mut e = Event::new(EventName::Hold);
    e.seq = Some(0);
    e.media_direction = Some("sendonly".into());
    s.ript(RiptEvent::ServerEvent {
        call: key,
        event: e,
    });
    let re = first(&s.sip_out(), "INVITE ").to_string();
    assert_eq!(header(&re, "CSeq"), "4 INVITE");
    s.sip(&reply(&re, 200, "OK", &[], Some(ANSWER)), TRUNK);
    let msgs = s.sip_out();
    let ack = first(&msgs, "ACK ");
    assert_eq!(header(ack, "CSeq"), "4 ACK");
    assert_eq!(header(ack, "Authorization"), header(&re, "Authorization"));
}
