//! `riptide::sip::dns`: SIP next hops looked up as RFC 3263 §4.2 says, against a real DNS
//! server (dnsmasq) of the test's own: SRV records and their targets' addresses, the URI's
//! transport choosing the SRV name, A/AAAA when there is a port or no SRV record, answers that
//! rule a name out, and a server that does not answer; and the transport chosen by NAPTR
//! records, or by which SRV names have records, when the URI names none (§4.1).

mod cli_support;

use cli_support::Dnsmasq;
use riptide::sip::dns::{OnSrvFailure, SipResolver};
use riptide::sip::msg::Transport;
use riptide::sip::srv::{HopAddrs, SrvRank};
use std::net::SocketAddr;

fn records(r: &[&str]) -> Vec<String> {
    r.iter().map(|s| s.to_string()).collect()
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The lookup of `uri` must fail with an error whose text contains `why`.
async fn fails_with(r: &SipResolver, uri: &str, on_failure: OnSrvFailure, why: &str) {
    let e = r.resolve(uri, on_failure).await.unwrap_err();
    assert!(format!("{e:#}").contains(why), "{uri}: {e:#}");
}

const fn rank(priority: u16, weight: u16, target: u16) -> SrvRank {
    SrvRank::new(priority, weight, target)
}

/// The records most tests use.
fn zone() -> Dnsmasq {
    Dnsmasq::start(&records(&[
        // pbx: two servers over UDP (one of them with two addresses), one over TCP, one TLS.
        "--srv-host=_sip._udp.pbx.srv.test,a.srv.test,5071,10,5",
        "--srv-host=_sip._udp.pbx.srv.test,b.srv.test,5072,20,0",
        "--srv-host=_sip._tcp.pbx.srv.test,a.srv.test,5080,10,0",
        "--srv-host=_sips._tcp.pbx.srv.test,b.srv.test,5081,10,0",
        "--host-record=a.srv.test,127.0.0.2",
        "--host-record=b.srv.test,127.0.0.3",
        "--host-record=b.srv.test,127.0.0.4",
        "--host-record=pbx.srv.test,127.0.0.8",
        // plain: no SRV records at all.
        "--host-record=plain.srv.test,127.0.0.9",
        // nosip: SRV target "." (RFC 2782: no such service here).
        "--srv-host=_sip._udp.nosip.srv.test",
        // partly: one target without an address, one record with port 0 (not usable).
        "--srv-host=_sip._udp.partly.srv.test,ghost.srv.test,5090,10,0",
        "--srv-host=_sip._udp.partly.srv.test,a.srv.test,5091,20,0",
        "--srv-host=_sip._udp.partly.srv.test,b.srv.test,0,5,0",
        // gone: no target has an address.
        "--srv-host=_sip._udp.gone.srv.test,ghost.srv.test,5090,10,0",
        // alias: the SRV name is a CNAME of pbx's.
        "--cname=_sip._udp.alias.srv.test,_sip._udp.pbx.srv.test",
        // naptr: NAPTR prefers TCP, then UDP; over TLS for sips: URIs.
        "--naptr-record=naptr.srv.test,10,50,s,SIP+D2T,,_sip._tcp.naptr.srv.test",
        "--naptr-record=naptr.srv.test,20,50,s,SIP+D2U,,_sip._udp.naptr.srv.test",
        "--naptr-record=naptr.srv.test,30,50,s,SIPS+D2T,,_sips._tcp.pbx.srv.test",
        "--srv-host=_sip._tcp.naptr.srv.test,a.srv.test,5085,10,0",
        "--srv-host=_sip._udp.naptr.srv.test,a.srv.test,5086,10,0",
        // skip: the first NAPTR record's SRV name has no records, the second's has pbx's.
        "--naptr-record=skip.srv.test,10,10,s,SIP+D2T,,_sip._tcp.none.srv.test",
        "--naptr-record=skip.srv.test,10,20,s,SIP+D2U,,_sip._udp.pbx.srv.test",
        // carrier: NAPTR names another domain's SRV records; the domain has an address too.
        "--naptr-record=carrier.srv.test,10,10,s,SIP+D2T,,_sip._tcp.edge.srv.test",
        "--srv-host=_sip._tcp.edge.srv.test,a.srv.test,5089,10,0",
        "--host-record=carrier.srv.test,127.0.0.10",
        // emptytcp: NAPTR chooses TCP, whose SRV name has no records: the address, over TCP.
        "--naptr-record=emptytcp.srv.test,10,10,s,SIP+D2T,,_sip._tcp.emptytcp.srv.test",
        "--host-record=emptytcp.srv.test,127.0.0.11",
        // tcponly: no NAPTR records, SRV records for TCP only, and an address of its own.
        "--srv-host=_sip._tcp.tcponly.srv.test,a.srv.test,5087,10,0",
        "--host-record=tcponly.srv.test,127.0.0.9",
        // udpgone: UDP is ruled out by its SRV record, TCP is offered.
        "--srv-host=_sip._udp.udpgone.srv.test",
        "--srv-host=_sip._tcp.udpgone.srv.test,a.srv.test,5088,10,0",
    ]))
}

/// `hop`'s addresses with their ranks, sorted by address (the answer's order is the
/// server's).
fn sorted(hop: &HopAddrs) -> Vec<(SocketAddr, Option<(u16, u16)>)> {
    let mut v: Vec<_> = hop
        .addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, hop.ranks.get(i).map(|r| (r.priority, r.weight))))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn srv_records_give_every_targets_addresses_with_their_ranks() {
    let dns = zone();
    let r = SipResolver::new(&[dns.addr]).unwrap();
    let (hop, t) = r
        .resolve("sip:+15551234@pbx.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(t, Transport::Udp);
    assert_eq!(
        sorted(&hop),
        vec![
            (a("127.0.0.2:5071"), Some((10, 5))),
            (a("127.0.0.3:5072"), Some((20, 0))),
            (a("127.0.0.4:5072"), Some((20, 0))),
        ]
    );
    // b's two addresses are one server: the same target.
    let b: Vec<u16> = hop
        .addrs
        .iter()
        .zip(&hop.ranks)
        .filter(|(a, _)| a.port() == 5072)
        .map(|(_, r)| r.target)
        .collect();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0], b[1]);
    let a_target = hop.ranks[hop.addrs.iter().position(|x| x.port() == 5071).unwrap()];
    assert_ne!(a_target.target, b[0]);
}

#[tokio::test]
async fn an_srv_name_that_is_a_cname_leads_to_the_records_of_its_target() {
    let dns = zone();
    let r = SipResolver::new(&[dns.addr]).unwrap();
    let (alias, _) = r
        .resolve("sip:alias.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    let (pbx, _) = r
        .resolve("sip:pbx.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(alias, pbx);
    assert_eq!(alias.ranks.len(), 3, "{alias:?}");
}

#[tokio::test]
async fn the_uris_transport_decides_which_srv_name_is_asked() {
    let dns = zone();
    let r = SipResolver::new(&[dns.addr]).unwrap();
    let (hop, t) = r
        .resolve("sip:pbx.srv.test;transport=tcp", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!((hop.addrs, t), (vec![a("127.0.0.2:5080")], Transport::Tcp));
    assert_eq!(hop.ranks, vec![rank(10, 0, 0)]);
    let (hop, t) = r
        .resolve("sips:pbx.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(t, Transport::Tls);
    assert_eq!(
        sorted(&hop),
        vec![
            (a("127.0.0.3:5081"), Some((10, 0))),
            (a("127.0.0.4:5081"), Some((10, 0))),
        ]
    );
}

#[tokio::test]
async fn a_port_or_no_srv_records_means_the_names_address_records() {
    let dns = zone();
    let r = SipResolver::new(&[dns.addr]).unwrap();
    // A port: no SRV lookup, even though the name has SRV records.
    let (hop, _) = r
        .resolve("sip:pbx.srv.test:5999", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(hop, HopAddrs::plain(vec![a("127.0.0.8:5999")]));
    // No SRV records: A/AAAA at the transport's default port.
    let (hop, _) = r
        .resolve("sip:plain.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(hop, HopAddrs::plain(vec![a("127.0.0.9:5060")]));
    let (hop, _) = r
        .resolve("sips:plain.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(hop, HopAddrs::plain(vec![a("127.0.0.9:5061")]));
    fails_with(
        &r,
        "sip:nothing.srv.test",
        OnSrvFailure::Fail,
        "cannot resolve nothing.srv.test",
    )
    .await;
}

#[tokio::test]
async fn srv_targets_that_say_no_service_or_have_no_address() {
    let dns = zone();
    let r = SipResolver::new(&[dns.addr]).unwrap();
    fails_with(
        &r,
        "sip:nosip.srv.test",
        OnSrvFailure::UseAddressRecords,
        "no SIP service",
    )
    .await;
    // One target without an address, one with port 0: the other is used.
    let (hop, _) = r
        .resolve("sip:partly.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(hop.addrs, vec![a("127.0.0.2:5091")]);
    assert_eq!(hop.ranks.len(), 1);
    assert_eq!((hop.ranks[0].priority, hop.ranks[0].weight), (20, 0));
    fails_with(
        &r,
        "sip:gone.srv.test",
        OnSrvFailure::Fail,
        "no SRV target has an address",
    )
    .await;
}

#[tokio::test]
async fn a_dns_server_that_does_not_answer_fails_the_lookup() {
    // Nothing listens there.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = SipResolver::new(&[([127, 0, 0, 1], port).into()]).unwrap();
    fails_with(
        &r,
        "sip:pbx.srv.test",
        OnSrvFailure::Fail,
        "NAPTR lookup of pbx.srv.test",
    )
    .await;
    // IP literals need no DNS.
    let (hop, _) = r
        .resolve("sip:127.0.0.1:5080", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(hop, HopAddrs::plain(vec![a("127.0.0.1:5080")]));
}

#[tokio::test]
async fn without_dns_servers_configured_addresses_come_from_the_system_resolver() {
    let r = SipResolver::new(&[]).unwrap();
    let (hop, t) = r
        .resolve("sip:127.0.0.1:5080;transport=tcp", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(
        (hop, t),
        (HopAddrs::plain(vec![a("127.0.0.1:5080")]), Transport::Tcp)
    );
    // /etc/hosts: localhost.
    let (hop, t) = r
        .resolve("sip:localhost:5090", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert!(
        !hop.addrs.is_empty()
            && hop
                .addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 5090),
        "{hop:?}"
    );
    assert!(hop.ranks.is_empty());
    assert_eq!(t, Transport::Udp);
    let mut unique = hop.addrs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), hop.addrs.len(), "each address once: {hop:?}");
    assert!(r
        .resolve("sip:no-such-host.invalid:5060", OnSrvFailure::Fail)
        .await
        .is_err());
    assert!(r.resolve("http://x", OnSrvFailure::Fail).await.is_err());
}

#[tokio::test]
async fn naptr_records_choose_the_transport_of_a_uri_that_names_none() {
    let dns = zone();
    let r = SipResolver::new(&[dns.addr]).unwrap();
    let hop = |uri: &'static str, r: &SipResolver| {
        let r = r.clone();
        async move {
            let (hop, t) = r.resolve(uri, OnSrvFailure::Fail).await.unwrap();
            (hop.addrs, t)
        }
    };
    assert_eq!(
        hop("sip:+15551234@naptr.srv.test", &r).await,
        (vec![a("127.0.0.2:5085")], Transport::Tcp),
        "NAPTR's first choice is TCP"
    );
    assert_eq!(
        hop("sip:naptr.srv.test;transport=udp", &r).await,
        (vec![a("127.0.0.2:5086")], Transport::Udp),
        "a URI that names its transport keeps it"
    );
    let (tls, t) = r
        .resolve("sips:naptr.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(t, Transport::Tls);
    assert_eq!(tls.addrs.len(), 2, "b.srv.test's two addresses: {tls:?}");
    let (skip, t) = r
        .resolve("sip:skip.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(
        t,
        Transport::Udp,
        "the record whose SRV name has none is passed over"
    );
    assert_eq!(skip.addrs.len(), 3, "pbx's UDP servers: {skip:?}");
    // A sips: URI follows its SIPS+D2T record even where the gateway has no TLS listener,
    // as its refreshes (limited to TLS) will.
    let (tls, t) = SipResolver::new(&[dns.addr])
        .unwrap()
        .with_transports(&[Transport::Udp, Transport::Tcp])
        .resolve("sips:naptr.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!((tls.addrs.len(), t), (2, Transport::Tls), "{tls:?}");
    // A gateway without a TCP listener cannot take TCP: NAPTR's next choice, UDP.
    let udp_only = SipResolver::new(&[dns.addr])
        .unwrap()
        .with_transports(&[Transport::Udp]);
    assert_eq!(
        hop("sip:naptr.srv.test", &udp_only).await,
        (vec![a("127.0.0.2:5086")], Transport::Udp)
    );
}

#[tokio::test]
async fn without_naptr_records_the_transport_with_srv_records_is_taken() {
    let dns = zone();
    let r = SipResolver::new(&[dns.addr]).unwrap();
    let (hop, t) = r
        .resolve("sip:tcponly.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!((hop.addrs, t), (vec![a("127.0.0.2:5087")], Transport::Tcp));
    let (hop, t) = r
        .resolve("sip:udpgone.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(
        (hop.addrs, t),
        (vec![a("127.0.0.2:5088")], Transport::Tcp),
        "UDP ruled out by its SRV record, TCP offered"
    );
    // UDP only: the name's own address, as before SRV.
    let udp_only = SipResolver::new(&[dns.addr])
        .unwrap()
        .with_transports(&[Transport::Udp]);
    let (hop, t) = udp_only
        .resolve("sip:tcponly.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!((hop.addrs, t), (vec![a("127.0.0.9:5060")], Transport::Udp));
    fails_with(
        &udp_only,
        "sip:udpgone.srv.test",
        OnSrvFailure::Fail,
        "no SIP service",
    )
    .await;
}

#[tokio::test]
async fn a_refresh_limited_to_the_transport_chosen_at_start_follows_the_same_naptr_record() {
    let dns = zone();
    let r = SipResolver::new(&[dns.addr]).unwrap();
    let uri = "sip:carrier.srv.test";
    let at_start = r.resolve(uri, OnSrvFailure::Fail).await.unwrap();
    assert_eq!(
        (at_start.0.addrs.clone(), at_start.1),
        (vec![a("127.0.0.2:5089")], Transport::Tcp),
        "NAPTR leads to edge's SRV records"
    );
    // What a refresh asks: the same answer, not _sip._tcp.carrier's (none) nor the domain's
    // own address.
    let refreshed = r
        .resolve_among(uri, OnSrvFailure::Fail, &[Transport::Tcp])
        .await
        .unwrap();
    assert_eq!(refreshed, at_start);
    // NAPTR chose TCP but its SRV name has none: the name's address, still over TCP (§4.2).
    let (hop, t) = r
        .resolve("sip:emptytcp.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!((hop.addrs, t), (vec![a("127.0.0.11:5060")], Transport::Tcp));
    // A port means no NAPTR or SRV: the address, over the URI's transport.
    let (hop, t) = r
        .resolve("sip:carrier.srv.test:5099", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!((hop.addrs, t), (vec![a("127.0.0.10:5099")], Transport::Udp));
}

#[tokio::test]
async fn a_gateway_listening_on_tcp_only_is_never_given_udp() {
    let dns = zone();
    let r = SipResolver::new(&[dns.addr])
        .unwrap()
        .with_transports(&[Transport::Tcp]);
    // Both _sip._udp and _sip._tcp records: TCP's.
    let (hop, t) = r
        .resolve("sip:pbx.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!((hop.addrs, t), (vec![a("127.0.0.2:5080")], Transport::Tcp));
    // No SRV records at all: the address, over TCP.
    let (hop, t) = r
        .resolve("sip:plain.srv.test", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!((hop.addrs, t), (vec![a("127.0.0.9:5060")], Transport::Tcp));
    // A URI that names UDP keeps it: the operator said so.
    let (_, t) = r
        .resolve("sip:pbx.srv.test;Transport=UDP", OnSrvFailure::Fail)
        .await
        .unwrap();
    assert_eq!(t, Transport::Udp);
}
