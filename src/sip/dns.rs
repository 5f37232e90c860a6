//! Looking up a SIP next hop (RFC 3263 §4): a URI's host name without a port is asked for SRV
//! records first (`_sip._udp`, `_sip._tcp` or `_sips._tcp` by the URI's transport), and the
//! addresses of every target they name are kept with their records' priorities and weights, so
//! that each call can order them (RFC 2782, [`super::srv::srv_order`]). A name with a port, or
//! without SRV records, is looked up for A/AAAA records (port 5060, or 5061 for TLS). NAPTR is
//! not asked: the transport is the URI's (`transport=` parameter, or UDP for `sip:` and TLS for
//! `sips:`).
//!
//! SRV records come from the DNS servers of `[sip] dns_servers`, or of `/etc/resolv.conf`.
//! Addresses come from those same servers when `dns_servers` is set, and from the system
//! resolver (getaddrinfo: `/etc/hosts`, then DNS) otherwise.

use super::msg::{self, Transport};
use super::srv::{srv_name, HopAddrs, SrvRank};
use anyhow::{anyhow, Context};
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};

/// What an SRV query that got no answer (a timeout, SERVFAIL, no server) leads to. An answer
/// that rules the name out (target ".", or no target with an address) fails the lookup either
/// way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSrvFailure {
    /// Look the name up for A/AAAA records as if it had no SRV records (at start, when there
    /// are no earlier addresses to keep).
    UseAddressRecords,
    /// Fail the lookup: the caller keeps what it had (a refresh).
    Fail,
}

/// Why an SRV lookup gave no addresses.
enum SrvError {
    /// The query got no answer.
    Query(anyhow::Error),
    /// The answer rules the name out.
    Answer(anyhow::Error),
}

/// Looks SIP next hops up; cheap to clone.
#[derive(Clone)]
pub struct SipResolver {
    /// `None`: no DNS servers known (no `/etc/resolv.conf`): no SRV lookups.
    dns: Option<TokioResolver>,
    /// Addresses from `dns` too (servers configured), rather than from the system resolver.
    own_servers: bool,
}

impl SipResolver {
    /// A resolver asking `servers` (each with its port), or the system's DNS servers when
    /// `servers` is empty. Must be made inside the tokio runtime.
    pub fn new(servers: &[SocketAddr]) -> anyhow::Result<SipResolver> {
        let provider = TokioRuntimeProvider::default();
        if servers.is_empty() {
            let dns = match TokioResolver::builder(provider).and_then(|b| b.build()) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "no DNS servers from /etc/resolv.conf: trunk host names get no SRV lookups");
                    None
                }
            };
            return Ok(SipResolver {
                dns,
                own_servers: false,
            });
        }
        let mut config = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
        for s in servers {
            let conn = |mut c: ConnectionConfig| {
                c.port = s.port();
                c
            };
            config.add_name_server(NameServerConfig::new(
                s.ip(),
                true,
                vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
            ));
        }
        let mut builder = TokioResolver::builder_with_config(config, provider);
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let dns = builder.build().context("sip.dns_servers")?;
        Ok(SipResolver {
            dns: Some(dns),
            own_servers: true,
        })
    }

    /// The addresses of `uri`'s next hop, and the transport to reach them over.
    pub async fn resolve(
        &self,
        uri: &str,
        on_srv_failure: OnSrvFailure,
    ) -> anyhow::Result<(HopAddrs, Transport)> {
        if let Some((addr, transport)) = msg::uri_socket(uri) {
            return Ok((HopAddrs::plain(vec![addr]), transport));
        }
        let (host, port, transport) =
            msg::uri_target(uri).ok_or_else(|| anyhow!("{uri} is not a SIP URI"))?;
        if let (None, Some(dns)) = (port, &self.dns) {
            let name = srv_name(&host, transport);
            match self.srv(dns, &name).await {
                Ok(Some(hop)) => return Ok((hop, transport)),
                Ok(None) => {}
                Err(SrvError::Query(e)) if on_srv_failure == OnSrvFailure::UseAddressRecords => {
                    tracing::warn!(%name, error = %format!("{e:#}"), "SRV lookup failed; using the name's A/AAAA records");
                }
                Err(SrvError::Query(e) | SrvError::Answer(e)) => return Err(e),
            }
        }
        let port = port.unwrap_or(if transport == Transport::Tls {
            5061
        } else {
            5060
        });
        let addrs = self.addresses(&host, port).await?;
        if addrs.is_empty() {
            return Err(anyhow!("{host} has no address"));
        }
        Ok((HopAddrs::plain(addrs), transport))
    }

    /// The SRV answer for `name` as addresses with their ranks; `None` when there are no such
    /// records (the name's A/AAAA records are used instead, RFC 3263 §4.2).
    async fn srv(&self, dns: &TokioResolver, name: &str) -> Result<Option<HopAddrs>, SrvError> {
        let answer = match dns.srv_lookup(name).await {
            Ok(a) => a,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(None),
            Err(e) => {
                return Err(SrvError::Query(
                    anyhow!(e).context(format!("SRV lookup of {name}")),
                ))
            }
        };
        let mut records: Vec<_> = answer
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        // Servers may rotate the records from one answer to the next: in a fixed order, the
        // same records are the same addresses, and a refresh sees no change.
        records.sort_by(|a, b| {
            (a.priority, &a.target, a.port, a.weight)
                .cmp(&(b.priority, &b.target, b.port, b.weight))
        });
        if records.is_empty() {
            return Ok(None);
        }
        // RFC 2782: a single record with target "." says the service is not offered there.
        if records.len() == 1 && records[0].target.is_root() {
            return Err(SrvError::Answer(anyhow!(
                "{name}: SRV target \".\": no SIP service at this domain"
            )));
        }
        let mut hop = HopAddrs::default();
        let mut failures = Vec::new();
        for (i, s) in records.iter().enumerate() {
            if s.target.is_root() {
                continue;
            }
            let target = s.target.to_ascii();
            let target = target.trim_end_matches('.');
            match self.addresses(target, s.port).await {
                Ok(mut addrs) => {
                    // One server's addresses are tried together, in any order: a fixed one.
                    addrs.sort();
                    for a in addrs {
                        if !hop.addrs.contains(&a) {
                            hop.addrs.push(a);
                            hop.ranks.push(SrvRank {
                                priority: s.priority,
                                weight: s.weight,
                                target: i as u16,
                            });
                        }
                    }
                }
                Err(e) => failures.push(format!("{target}: {e:#}")),
            }
        }
        if hop.addrs.is_empty() {
            return Err(SrvError::Answer(anyhow!(
                "{name}: no SRV target has an address ({})",
                failures.join("; ")
            )));
        }
        if !failures.is_empty() {
            tracing::warn!(%name, failed = %failures.join("; "), "some SRV targets have no address; using the others");
        }
        Ok(Some(hop))
    }

    /// The A/AAAA addresses of `host`, each with `port`, without repeats.
    async fn addresses(&self, host: &str, port: u16) -> anyhow::Result<Vec<SocketAddr>> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut add = |ip: IpAddr| {
            let a = SocketAddr::new(ip, port);
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        };
        match (&self.dns, self.own_servers) {
            (Some(dns), true) => {
                // Fully qualified: the configured servers are asked for the name as written.
                let fq = format!("{}.", host.trim_end_matches('.'));
                let found = dns
                    .lookup_ip(fq.as_str())
                    .await
                    .with_context(|| format!("cannot resolve {host}"))?;
                found.iter().for_each(&mut add);
            }
            _ => {
                for a in tokio::net::lookup_host((host, port))
                    .await
                    .with_context(|| format!("cannot resolve {host}"))?
                {
                    add(a.ip());
                }
            }
        }
        Ok(addrs)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// dnsmasq answering only from `records` (its `--srv-host` / `--host-record` options) for the
    /// `srv.test` domain, on a port of its own on 127.0.0.1; stopped when dropped.
    pub(crate) struct Dnsmasq {
        child: Child,
        pub(crate) addr: SocketAddr,
    }

    impl Dnsmasq {
        pub(crate) fn start(records: &[&str]) -> Dnsmasq {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let bin = ["/usr/sbin/dnsmasq", "dnsmasq"]
                .into_iter()
                .find(|b| Command::new(b).arg("--version").output().is_ok())
                .expect(
                    "dnsmasq is installed (package dnsmasq-base; interop/test-all.sh installs it)",
                );
            let child = Command::new(bin)
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--local=/srv.test/",
                    "--user=root",
                    "--pid-file=",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .args(records)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq starts");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            // It listens on TCP as well once it is up.
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect(addr).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "dnsmasq did not come up on {addr}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Dnsmasq { child, addr }
        }
    }

    impl Drop for Dnsmasq {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rank(priority: u16, weight: u16, target: u16) -> SrvRank {
        SrvRank {
            priority,
            weight,
            target,
        }
    }

    /// The records most tests use.
    fn zone() -> Dnsmasq {
        Dnsmasq::start(&[
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
            // partly: one target without an address.
            "--srv-host=_sip._udp.partly.srv.test,ghost.srv.test,5090,10,0",
            "--srv-host=_sip._udp.partly.srv.test,a.srv.test,5091,20,0",
            // gone: no target has an address.
            "--srv-host=_sip._udp.gone.srv.test,ghost.srv.test,5090,10,0",
        ])
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
        let e = r
            .resolve("sip:nothing.srv.test", OnSrvFailure::Fail)
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot resolve nothing.srv.test"),
            "{e:#}"
        );
    }

    #[tokio::test]
    async fn srv_targets_that_say_no_service_or_have_no_address() {
        let dns = zone();
        let r = SipResolver::new(&[dns.addr]).unwrap();
        let e = r
            .resolve("sip:nosip.srv.test", OnSrvFailure::UseAddressRecords)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("no SIP service"), "{e:#}");
        // One target without an address: the others are used.
        let (hop, _) = r
            .resolve("sip:partly.srv.test", OnSrvFailure::Fail)
            .await
            .unwrap();
        assert_eq!(hop.addrs, vec![a("127.0.0.2:5091")]);
        assert_eq!(hop.ranks.len(), 1);
        assert_eq!((hop.ranks[0].priority, hop.ranks[0].weight), (20, 0));
        let e = r
            .resolve("sip:gone.srv.test", OnSrvFailure::Fail)
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("no SRV target has an address"),
            "{e:#}"
        );
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
        let e = r
            .resolve("sip:pbx.srv.test", OnSrvFailure::Fail)
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("SRV lookup of _sip._udp.pbx.srv.test."),
            "{e:#}"
        );
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
}
