//! Trunk pings (`[[sip_trunk]] ping_secs`): an OPTIONS to each address every interval; an
//! address that leaves one unanswered or answers 408/503/504 is tried last until it answers.

use super::tests::{
    incoming_call, reply, second_addr, sent_to, two_address_sim, Sim, SECOND, TRUNK,
};
use super::*;

/// The trunk `pbx` at 127.0.0.1:5080 and 127.0.0.2:5080, pinged every 30 s from now on.
fn pinged() -> Sim {
    let mut s = two_address_sim();
    s.e.cfg.trunks[0].ping = Some(Duration::from_secs(30));
    s.e.start_pings(s.now);
    s.collect();
    s
}

fn first_addr() -> SocketAddr {
    TRUNK.parse().unwrap()
}

/// The pings among `out` (first copies only, not retransmissions): where each went, its text.
fn pings(out: &[Output]) -> Vec<(SocketAddr, String)> {
    let mut seen = HashSet::new();
    sent_to(out, "OPTIONS ")
        .into_iter()
        .filter(|(_, m)| seen.insert(m.clone()))
        .collect()
}

/// The last ping among `pings` that went to `addr` (earlier ones may be the last round's,
/// retransmitted).
fn to(pings: &[(SocketAddr, String)], addr: SocketAddr) -> String {
    let last = pings.iter().rfind(|(a, _)| *a == addr);
    last.expect("a ping there").1.clone()
}

/// Where a new call's INVITE goes first.
fn first_try(s: &mut Sim, n: u64) -> SocketAddr {
    s.ript(incoming_call(ReqId(n), Some("+12155551212"), "gateway-a"));
    sent_to(&s.take(), "INVITE ")[0].0
}

fn gauges(s: &Sim) -> Vec<String> {
    s.e.metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("riptide_sip_trunk_addresses"))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_address_that_stops_answering_pings_is_tried_last_until_it_answers_again() {
    let mut s = pinged();
    let round = pings(&s.take());
    assert_eq!(round.len(), 2, "one ping per address");
    let ping = to(&round, first_addr());
    assert!(
        ping.starts_with("OPTIONS sip:127.0.0.1:5080 SIP/2.0\r\n")
            && ping.contains("\r\nMax-Forwards: 70\r\n")
            && ping.contains("\r\nCSeq: 1 OPTIONS\r\n"),
        "{ping}"
    );
    // The second address answers; the first says nothing for the whole interval.
    s.sip(
        &reply(&to(&round, second_addr()), 200, "OK", "p2", None),
        SECOND,
    );
    assert_eq!(
        first_try(&mut s, 1),
        first_addr(),
        "nothing known against it yet"
    );
    s.advance(Duration::from_secs(30));
    let round = pings(&s.take());
    assert_eq!(
        gauges(&s),
        [
            "riptide_sip_trunk_addresses{trunk=\"pbx\"} 2",
            "riptide_sip_trunk_addresses_up{trunk=\"pbx\"} 1"
        ]
    );
    assert_eq!(
        first_try(&mut s, 2),
        second_addr(),
        "the silent one goes last"
    );
    // It answers again (even 404: a server is there), and is first again.
    s.sip(
        &reply(&to(&round, first_addr()), 404, "Not Found", "p1", None),
        TRUNK,
    );
    assert_eq!(
        gauges(&s)[1],
        "riptide_sip_trunk_addresses_up{trunk=\"pbx\"} 2"
    );
    assert_eq!(first_try(&mut s, 3), first_addr());
}

#[test]
fn busy_or_unreachable_addresses_are_down_at_once() {
    let mut s = pinged();
    let round = pings(&s.take());
    // 503 from the first: down now, not at the next round.
    s.sip(
        &reply(
            &to(&round, first_addr()),
            503,
            "Service Unavailable",
            "p1",
            None,
        ),
        TRUNK,
    );
    assert_eq!(
        gauges(&s)[1],
        "riptide_sip_trunk_addresses_up{trunk=\"pbx\"} 1"
    );
    assert_eq!(first_try(&mut s, 1), second_addr());
    // A connection to the second that fails takes it down too: both are down, and a call
    // still tries them (in the configured order), rather than failing untried.
    s.input(Input::Unreachable {
        addr: second_addr(),
        transport: Transport::Udp,
    });
    assert_eq!(
        gauges(&s)[1],
        "riptide_sip_trunk_addresses_up{trunk=\"pbx\"} 0"
    );
    assert_eq!(first_try(&mut s, 2), first_addr());
    // The next round's answers bring both back.
    s.advance(Duration::from_secs(30));
    let round = pings(&s.take());
    for addr in [first_addr(), second_addr()] {
        s.sip(
            &reply(&to(&round, addr), 200, "OK", "p", None),
            &addr.to_string(),
        );
    }
    assert_eq!(
        gauges(&s)[1],
        "riptide_sip_trunk_addresses_up{trunk=\"pbx\"} 2"
    );
}

#[test]
fn trunks_without_ping_secs_get_no_options() {
    let mut s = two_address_sim();
    s.e.start_pings(s.now);
    s.collect();
    s.advance(Duration::from_secs(120));
    assert!(pings(&s.take()).is_empty());
    assert!(gauges(&s).is_empty());
}

/// Two trunks behind one proxy ping the same addresses for different targets: one's dead
/// target (503 from the proxy) does not reorder the other's calls.
#[test]
fn each_trunk_keeps_its_own_view_of_a_shared_address() {
    let mut s = two_address_sim();
    let mut other = s.e.cfg.trunks[0].clone();
    other.name = "dead".into();
    s.e.cfg.trunks.push(other);
    for t in &mut s.e.cfg.trunks {
        t.ping = Some(Duration::from_secs(30));
    }
    s.e.start_pings(s.now);
    s.collect();
    let round = pings(&s.take());
    assert_eq!(round.len(), 4, "each trunk pings each address");
    // Pings to the first address, in trunk order (pbx's first).
    let first: Vec<&String> = (round.iter())
        .filter(|(a, _)| *a == first_addr())
        .map(|(_, m)| m)
        .collect();
    s.sip(&reply(first[0], 200, "OK", "p", None), TRUNK);
    s.sip(
        &reply(first[1], 503, "Service Unavailable", "p", None),
        TRUNK,
    );
    assert_eq!(
        first_try(&mut s, 1),
        first_addr(),
        "pbx's own ping was answered"
    );
    let g = gauges(&s);
    assert!(
        g.contains(&"riptide_sip_trunk_addresses_up{trunk=\"dead\"} 1".to_string()),
        "{g:?}"
    );
    assert!(
        g.contains(&"riptide_sip_trunk_addresses_up{trunk=\"pbx\"} 2".to_string()),
        "{g:?}"
    );
}

/// A DNS change drops an address and adds one: a round goes at once, the dropped address's
/// unanswered ping is forgotten rather than counted down, and the new one is pinged.
#[test]
fn addresses_a_lookup_dropped_are_forgotten_and_new_ones_pinged_at_once() {
    let mut s = pinged();
    s.take();
    let third: SocketAddr = "127.0.0.3:5080".parse().unwrap();
    s.input(Input::TrunkAddrs {
        trunk: 0,
        hop: crate::sip::srv::HopAddrs {
            addrs: vec![first_addr(), third],
            ranks: vec![],
        },
        transport: Transport::Udp,
    });
    s.advance(Duration::ZERO);
    let round: Vec<SocketAddr> = pings(&s.take()).iter().map(|(a, _)| *a).collect();
    assert!(
        round.contains(&third) && !round.contains(&second_addr()),
        "{round:?}"
    );
    assert!(
        !s.e.pings
            .inflight
            .values()
            .any(|(_, a, _)| *a == second_addr()),
        "the dropped address's ping is forgotten"
    );
    assert!(
        !s.e.pings.down.contains(&(0, second_addr())),
        "gone, not down"
    );
    // The first address left the first round's ping unanswered: down.
    assert_eq!(
        gauges(&s),
        [
            "riptide_sip_trunk_addresses{trunk=\"pbx\"} 2",
            "riptide_sip_trunk_addresses_up{trunk=\"pbx\"} 1"
        ]
    );
}
