//! Looking up a SIP next hop (RFC 3263 §4).
//!
//! - **Transport** ([`SipResolver::resolve`], §4.1): a URI that names one (`transport=`) or has
//!   a port keeps it (UDP for `sip:`, TLS for `sips:`). Otherwise, for a host name, its NAPTR
//!   records choose: those with flag `S` and a service this gateway can use (`SIP+D2U`,
//!   `SIP+D2T`; `SIPS+D2T` for a `sips:` URI), by order then preference, the first whose SRV
//!   name has records. Without such records, the SRV names of the usable transports are asked,
//!   UDP first, then TCP. TLS is chosen only for `sips:` URIs, whose TLS settings were made for
//!   them. A dialog's next hop keeps the dialog's transport instead
//!   ([`SipResolver::resolve_over`]).
//! - **Servers** (§4.2): a host name without a port is asked for SRV records first
//!   (`_sip._udp`, `_sip._tcp` or `_sips._tcp` by the transport), and the addresses of every
//!   target they name are kept with their records' priorities and weights, so that each call
//!   can order them (RFC 2782, [`super::srv::srv_order`]). A name with a port, or without SRV
//!   records, is looked up for A/AAAA records (port 5060, or 5061 for TLS).
//!
//! Which servers: with `[sip] dns_servers` set, those servers answer every query (SRV, the
//! targets' addresses, and names with a port), and `/etc/hosts` is not read. Without it, SRV
//! records and their targets' addresses come from `/etc/resolv.conf`'s servers (and
//! `/etc/hosts` as it was at start), and names with a port or without SRV records from the
//! system resolver (getaddrinfo: `/etc/hosts`, then DNS, read at each lookup).

use super::msg::{self, Transport};
use super::srv::{srv_name, HopAddrs, SrvRank};
use anyhow::{anyhow, Context};
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a query that got no answer (a timeout, SERVFAIL, no server) leads to, for the SRV
/// records or a target's addresses. An answer that rules the name out (target ".", or no target
/// with an address) fails the lookup either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSrvFailure {
    /// Do with what there is: targets whose query failed are left out, and a failed SRV query
    /// means the name's A/AAAA records (at start, when there are no earlier addresses to keep).
    UseAddressRecords,
    /// Fail the lookup: the caller keeps what it had (a refresh), rather than take a partial
    /// answer for a change.
    Fail,
}

/// Why an SRV lookup gave no addresses.
enum SrvError {
    /// A query got no answer.
    Query(anyhow::Error),
    /// The answer rules the name out.
    Answer(anyhow::Error),
}

/// What NAPTR and SRV records may choose from unless told otherwise.
const ALL_TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

/// CNAMEs followed from an SRV name before giving up.
const MAX_CNAMES: usize = 8;

/// Looks SIP next hops up; cheap to clone.
#[derive(Clone)]
pub struct SipResolver {
    /// `Err`: no DNS servers known (no usable `/etc/resolv.conf`): no SRV lookups.
    dns: Result<TokioResolver, Arc<str>>,
    /// Names with a port or without SRV records are asked of `dns` too (servers configured),
    /// rather than of the system resolver.
    own_servers: bool,
    /// The missing DNS servers were reported.
    warned: Arc<AtomicBool>,
    /// The transports NAPTR and SRV records may choose (see the module documentation).
    usable: Vec<Transport>,
}

/// A host name (not an address) without a port or `transport=` in `uri`: its DNS records
/// choose the transport (RFC 3263 §4.1).
fn dns_names_transport(uri: &str, host: &str, port: Option<u16>) -> bool {
    port.is_none() && !msg::uri_has_transport_param(uri) && host.parse::<IpAddr>().is_err()
}

/// A NAPTR record (RFC 3403), as far as RFC 3263 reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaptrRecord {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    /// The SRV name to ask next (flag `S`), as the record has it.
    pub replacement: String,
}

/// RFC 3263 §4.1: the transports `records` offer, with the SRV name to ask for each, in the
/// order to try them. Only records with flag `S` and a SIP service over `usable` transports
/// count: `SIPS+D2T` for a `sips:` URI (`secure`), `SIP+D2U` and `SIP+D2T` otherwise.
pub fn naptr_choices(
    records: &[NaptrRecord],
    secure: bool,
    usable: &[Transport],
) -> Vec<(Transport, String)> {
    let mut kept: Vec<(u16, u16, Transport, String)> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter_map(|r| {
            let t = match r.services.to_ascii_uppercase().as_str() {
                "SIP+D2U" if !secure => Transport::Udp,
                "SIP+D2T" if !secure => Transport::Tcp,
                "SIPS+D2T" if secure => Transport::Tls,
                _ => return None,
            };
            // Fully qualified, as `srv_name`'s: no search domain is appended.
            let name = r.replacement.trim_end_matches('.');
            (usable.contains(&t) && !name.is_empty())
                .then(|| (r.order, r.preference, t, format!("{name}.")))
        })
        .collect();
    kept.sort_by_key(|&(order, preference, ..)| (order, preference));
    kept.into_iter().map(|(_, _, t, n)| (t, n)).collect()
}

impl SipResolver {
    /// A resolver asking `servers` (each with its port), or the system's DNS servers when
    /// `servers` is empty. Must be made inside the tokio runtime.
    pub fn new(servers: &[SocketAddr]) -> anyhow::Result<SipResolver> {
        let provider = TokioRuntimeProvider::default();
        let warned = Arc::new(AtomicBool::new(false));
        if servers.is_empty() {
            let dns = TokioResolver::builder(provider)
                .and_then(|b| b.build())
                .map_err(|e| Arc::from(e.to_string()));
            return Ok(SipResolver {
                dns,
                own_servers: false,
                warned,
                usable: ALL_TRANSPORTS.to_vec(),
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
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        let dns = builder.build().context("sip.dns_servers")?;
        Ok(SipResolver {
            dns: Ok(dns),
            own_servers: true,
            warned,
            usable: ALL_TRANSPORTS.to_vec(),
        })
    }

    /// Lets NAPTR and SRV records choose only among `usable` transports (those this gateway
    /// listens on: its Contact must be reachable over the transport it sends on). All three by
    /// default.
    pub fn with_transports(mut self, usable: &[Transport]) -> SipResolver {
        self.usable = usable.to_vec();
        self
    }

    /// The addresses of `uri`'s next hop, and the transport to reach them over (chosen by
    /// NAPTR and SRV records when the URI names none; see the module documentation).
    pub async fn resolve(
        &self,
        uri: &str,
        on_failure: OnSrvFailure,
    ) -> anyhow::Result<(HopAddrs, Transport)> {
        self.resolve_among(uri, on_failure, &self.usable).await
    }

    /// Whether DNS records (NAPTR, SRV) choose `uri`'s transport: a host name without a port or
    /// `transport=` parameter, with DNS servers to ask.
    pub fn chooses_transport(&self, uri: &str) -> bool {
        self.dns.is_ok()
            && msg::uri_target(uri)
                .is_some_and(|(host, port, _)| dns_names_transport(uri, &host, port))
    }

    /// The transport [`SipResolver::resolve`] takes for `uri` when DNS does not answer: the
    /// URI's own where DNS has no say or for `sips:`, else the first usable of the URI's, UDP
    /// and TCP (as its SRV fallback, RFC 3263 §4.1). `None` for what is not a SIP URI.
    pub fn fallback_transport(&self, uri: &str) -> Option<Transport> {
        let (_, _, transport) = msg::uri_target(uri)?;
        if !self.chooses_transport(uri) || transport == Transport::Tls {
            return Some(transport);
        }
        [transport, Transport::Udp, Transport::Tcp]
            .into_iter()
            .find(|t| self.usable.contains(t))
            .or(Some(transport))
    }

    /// As [`SipResolver::resolve`], choosing only among `usable` transports. A trunk's
    /// refreshes pass the one chosen at start, so that they follow the same NAPTR record's SRV
    /// name and never change the transport.
    pub async fn resolve_among(
        &self,
        uri: &str,
        on_failure: OnSrvFailure,
        usable: &[Transport],
    ) -> anyhow::Result<(HopAddrs, Transport)> {
        let (host, port, transport) =
            msg::uri_target(uri).ok_or_else(|| anyhow!("{uri} is not a SIP URI"))?;
        // A `sips:` URI's NAPTR records still name its SRV name (only `SIPS+D2T` counts).
        let chosen_by_dns = dns_names_transport(uri, &host, port);
        let (true, Ok(dns)) = (chosen_by_dns, &self.dns) else {
            return self.resolve_over(uri, transport, on_failure).await;
        };
        let secure = transport == Transport::Tls;
        // The transports to ask SRV records for without NAPTR (§4.1), most wanted first: the
        // URI's own (TLS for `sips:`, whatever `usable` says), then the other usable ones.
        let fallback: Vec<Transport> = if secure {
            vec![Transport::Tls]
        } else {
            [transport, Transport::Udp, Transport::Tcp]
                .into_iter()
                .filter(|t| usable.contains(t))
                .fold(Vec::new(), |mut v, t| {
                    if !v.contains(&t) {
                        v.push(t);
                    }
                    v
                })
        };
        let (choices, naptr_failed) = match naptr_records(dns, &host).await {
            Ok(records) => {
                // A `sips:` URI is TLS whatever `usable` says (as `fallback`): its NAPTR record
                // names the SRV name to ask, at start as at refresh.
                let usable = if secure {
                    &[Transport::Tls][..]
                } else {
                    usable
                };
                let choices = naptr_choices(&records, secure, usable);
                if !records.is_empty() && choices.is_empty() {
                    tracing::debug!(%host, "no NAPTR record for a usable SIP transport; asking SRV records");
                }
                (choices, false)
            }
            Err(e) if on_failure == OnSrvFailure::UseAddressRecords => {
                tracing::warn!(%host, error = %format!("{e:#}"), "NAPTR lookup failed; asking SRV records");
                (Vec::new(), true)
            }
            Err(e) => return Err(e),
        };
        // Without NAPTR records for a usable transport: the SRV names of the fallback
        // transports. After a NAPTR query that got no answer, only the first: the server is
        // likely not answering, and each query would wait as long again.
        let candidates: Vec<(Transport, String)> = if choices.is_empty() {
            let n = if naptr_failed { 1 } else { fallback.len() };
            fallback
                .iter()
                .take(n)
                .map(|&t| (t, srv_name(&host, t)))
                .collect()
        } else {
            choices
        };
        // An answer that rules a transport out (SRV target ".") lets the next one be tried;
        // it fails the lookup only when no other has records. (RFC 3403 would stop at the
        // first ORDER that matched; trying the next records, as S-NAPTR (RFC 3958) does, only
        // adds a way to reach the domain.)
        let mut ruled_out = None;
        for (t, name) in &candidates {
            match srv(dns, name, on_failure).await {
                Ok(Some(hop)) => {
                    if *t != transport {
                        tracing::info!(%uri, transport = ?t, srv = %name, "the transport comes from DNS (NAPTR/SRV)");
                    }
                    return Ok((hop, *t));
                }
                Ok(None) => {}
                Err(SrvError::Query(e)) if on_failure == OnSrvFailure::UseAddressRecords => {
                    tracing::warn!(%name, error = %format!("{e:#}"), "SRV lookup failed; going on without it");
                }
                Err(SrvError::Query(e)) => return Err(e),
                Err(SrvError::Answer(e)) => {
                    ruled_out.get_or_insert(e);
                }
            }
        }
        if let Some(e) = ruled_out {
            return Err(e);
        }
        // No SRV records: the name's own addresses (§4.2), over the transport chosen so far:
        // the first NAPTR record's, else the first fallback's.
        let t = candidates
            .first()
            .map(|(t, _)| *t)
            .or(fallback.first().copied())
            .unwrap_or(transport);
        self.address_records(&host, None, t).await
    }

    /// As [`SipResolver::resolve`], over `transport` whatever the URI says (the SRV name asked
    /// and the default port follow it): a dialog's next hop keeps the dialog's transport when
    /// its URI names none.
    pub async fn resolve_over(
        &self,
        uri: &str,
        transport: Transport,
        on_failure: OnSrvFailure,
    ) -> anyhow::Result<(HopAddrs, Transport)> {
        let (host, port, _) =
            msg::uri_target(uri).ok_or_else(|| anyhow!("{uri} is not a SIP URI"))?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            let addr = SocketAddr::new(ip, port.unwrap_or(transport.default_port()));
            return Ok((HopAddrs::plain(vec![addr]), transport));
        }
        if port.is_none() {
            match &self.dns {
                Ok(dns) => {
                    if let Some(hop) =
                        srv_or_none(dns, &srv_name(&host, transport), on_failure).await?
                    {
                        return Ok((hop, transport));
                    }
                }
                Err(e) => {
                    if !self.warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "no DNS servers from /etc/resolv.conf: trunk host names get no SRV lookups");
                    }
                }
            }
        }
        self.address_records(&host, port, transport).await
    }

    /// `host`'s A/AAAA records, at `port` (else the transport's default).
    async fn address_records(
        &self,
        host: &str,
        port: Option<u16>,
        transport: Transport,
    ) -> anyhow::Result<(HopAddrs, Transport)> {
        let port = port.unwrap_or(transport.default_port());
        let addrs = match (&self.dns, self.own_servers) {
            (Ok(dns), true) => dns_addresses(dns, host)
                .await
                .map_err(|e| anyhow!(e).context(format!("cannot resolve {host}")))?,
            _ => {
                let mut addrs = Vec::new();
                for a in tokio::net::lookup_host((host, port))
                    .await
                    .with_context(|| format!("cannot resolve {host}"))?
                {
                    addrs.push(a.ip());
                }
                addrs
            }
        };
        let mut hop = HopAddrs::default();
        for ip in addrs {
            let a = SocketAddr::new(ip, port);
            if !hop.addrs.contains(&a) {
                hop.addrs.push(a);
            }
        }
        if hop.addrs.is_empty() {
            return Err(anyhow!("{host} has no address"));
        }
        Ok((hop, transport))
    }
}

/// [`srv`], with `on_failure`'s policy for a query that got no answer: `None` (as for no
/// records, after a warning) or the error.
async fn srv_or_none(
    dns: &TokioResolver,
    name: &str,
    on_failure: OnSrvFailure,
) -> anyhow::Result<Option<HopAddrs>> {
    match srv(dns, name, on_failure).await {
        Ok(hop) => Ok(hop),
        Err(SrvError::Query(e)) if on_failure == OnSrvFailure::UseAddressRecords => {
            tracing::warn!(%name, error = %format!("{e:#}"), "SRV lookup failed; going on without it");
            Ok(None)
        }
        Err(SrvError::Query(e) | SrvError::Answer(e)) => Err(e),
    }
}

/// The NAPTR records of `host` (none when it has none).
async fn naptr_records(dns: &TokioResolver, host: &str) -> anyhow::Result<Vec<NaptrRecord>> {
    let fq = format!("{}.", host.trim_end_matches('.'));
    match dns.lookup(fq.as_str(), RecordType::NAPTR).await {
        Ok(answer) => Ok(answer
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::NAPTR(n) => Some(NaptrRecord {
                    order: n.order,
                    preference: n.preference,
                    flags: String::from_utf8_lossy(&n.flags).into_owned(),
                    services: String::from_utf8_lossy(&n.services).into_owned(),
                    replacement: n.replacement.to_ascii(),
                }),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(anyhow!(e).context(format!("NAPTR lookup of {host}"))),
    }
}

/// The SRV answer for `name` as addresses with their ranks; `None` when there are no such
/// records (the name's A/AAAA records are used instead, RFC 3263 §4.2).
async fn srv(
    dns: &TokioResolver,
    name: &str,
    on_failure: OnSrvFailure,
) -> Result<Option<HopAddrs>, SrvError> {
    let mut records = match srv_records(dns, name).await {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(None),
        Err(e) => return Err(SrvError::Query(e.context(format!("SRV lookup of {name}")))),
    };
    // RFC 2782: a single record with target "." says the service is not offered there.
    if records.len() == 1 && records[0].target.is_root() {
        return Err(SrvError::Answer(anyhow!(
            "{name}: SRV target \".\": no SIP service at this domain"
        )));
    }
    // Servers may rotate the records from one answer to the next: in a fixed order, the same
    // records are the same addresses, and a refresh sees no change.
    records.sort_by(|a, b| {
        (a.priority, &a.target, a.port, a.weight).cmp(&(b.priority, &b.target, b.port, b.weight))
    });
    let usable: Vec<_> = records
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.target.is_root() && s.port != 0)
        .collect();
    let targets: Vec<String> = usable.iter().map(|(_, s)| s.target.to_ascii()).collect();
    // The targets are asked at once: a slow one does not hold up the others.
    let found = futures_util::future::join_all(targets.iter().map(|t| dns_addresses(dns, t))).await;
    let mut hop = HopAddrs::default();
    let (mut absent, mut failed) = (Vec::new(), Vec::new());
    for (((i, s), found), target) in usable.iter().zip(found).zip(targets) {
        match found {
            Ok(mut addrs) => {
                // One server's addresses are tried together, in any order: a fixed one.
                addrs.sort();
                for ip in addrs {
                    let a = SocketAddr::new(ip, s.port);
                    if !hop.addrs.contains(&a) {
                        hop.addrs.push(a);
                        hop.ranks
                            .push(SrvRank::new(s.priority, s.weight, *i as u16));
                    }
                }
            }
            Err(e) if e.is_no_records_found() => absent.push(target),
            Err(e) => failed.push(format!("{target}: {e}")),
        }
    }
    if !failed.is_empty() && on_failure == OnSrvFailure::Fail {
        return Err(SrvError::Query(anyhow!(
            "{name}: SRV targets not looked up ({})",
            failed.join("; ")
        )));
    }
    let left_out = absent
        .into_iter()
        .chain(failed)
        .collect::<Vec<_>>()
        .join("; ");
    if hop.addrs.is_empty() {
        return Err(SrvError::Answer(anyhow!(
            "{name}: no SRV target has an address ({left_out})"
        )));
    }
    if !left_out.is_empty() {
        tracing::warn!(%name, %left_out, "some SRV targets have no address; using the others");
    }
    Ok(Some(hop))
}

/// The SRV records of `name`, following CNAMEs; `None` when there are none.
///
/// hickory's cache, given an answer that reaches the SRV records through a CNAME, goes on to ask
/// for SRV records of the SRV target and reports that none were found (its query then names
/// another name): such a name is followed by asking its CNAME, then the SRV records there.
async fn srv_records(
    dns: &TokioResolver,
    name: &str,
) -> anyhow::Result<Option<Vec<hickory_resolver::proto::rr::rdata::SRV>>> {
    let mut name = Name::from_ascii(name).map_err(|e| anyhow!("{name}: {e}"))?;
    for _ in 0..MAX_CNAMES {
        match dns.srv_lookup(name.clone()).await {
            Ok(answer) => {
                let records: Vec<_> = answer
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                return Ok((!records.is_empty()).then_some(records));
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(none)))
                if none.query.name() == &name || none.query.query_type() != RecordType::SRV =>
            {
                return Ok(None);
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(_))) => {
                // Reached through a CNAME (see above).
                let cname = dns
                    .lookup(name.clone(), RecordType::CNAME)
                    .await
                    .map_err(|e| anyhow!(e).context(format!("CNAME of {name}")))?;
                let Some(next) = cname.answers().iter().find_map(|r| match &r.data {
                    RData::CNAME(c) => Some(c.0.clone()),
                    _ => None,
                }) else {
                    return Ok(None);
                };
                name = next;
            }
            Err(e) => return Err(anyhow!(e)),
        }
    }
    Err(anyhow!("more than {MAX_CNAMES} CNAMEs from {name}"))
}

/// The A/AAAA addresses of `host` from `dns`, asked as a fully qualified name (no search
/// domains). Callers drop repeats as they pair them with a port.
async fn dns_addresses(dns: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, NetError> {
    let fq = format!("{}.", host.trim_end_matches('.'));
    Ok(dns.lookup_ip(fq.as_str()).await?.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naptr(order: u16, preference: u16, flags: &str, services: &str, to: &str) -> NaptrRecord {
        NaptrRecord {
            order,
            preference,
            flags: flags.into(),
            services: services.into(),
            replacement: to.into(),
        }
    }

    const ALL: &[Transport] = &ALL_TRANSPORTS;

    #[tokio::test]
    async fn the_fallback_transport_is_the_uris_own_unless_dns_may_choose_among_usable_ones() {
        // Its own servers (nothing is asked here): DNS may choose.
        let tcp_only = SipResolver::new(&["127.0.0.1:53".parse().unwrap()])
            .unwrap()
            .with_transports(&[Transport::Tcp]);
        let fb = |uri| tcp_only.fallback_transport(uri);
        assert!(tcp_only.chooses_transport("sip:pbx.example.net"));
        // A gateway listening on TCP only is never given UDP by DNS.
        assert_eq!(fb("sip:pbx.example.net"), Some(Transport::Tcp));
        // Where the URI says, DNS has no say.
        assert_eq!(fb("sip:pbx.example.net:5060"), Some(Transport::Udp));
        assert_eq!(
            fb("sip:pbx.example.net;transport=udp"),
            Some(Transport::Udp)
        );
        assert_eq!(fb("sip:192.0.2.1"), Some(Transport::Udp));
        assert!(!tcp_only.chooses_transport("sip:192.0.2.1"));
        assert_eq!(fb("sips:pbx.example.net"), Some(Transport::Tls));
        assert_eq!(fb("mailto:x@example.net"), None);
    }

    #[test]
    fn naptr_records_are_tried_by_order_then_preference() {
        let records = [
            naptr(20, 10, "s", "SIP+D2U", "_sip._udp.example.net."),
            naptr(10, 50, "S", "SIP+D2T", "_sip._tcp.b.example.net."),
            naptr(10, 20, "s", "sip+d2t", "_sip._tcp.a.example.net."),
        ];
        assert_eq!(
            naptr_choices(&records, false, ALL),
            vec![
                (Transport::Tcp, "_sip._tcp.a.example.net.".to_string()),
                (Transport::Tcp, "_sip._tcp.b.example.net.".to_string()),
                (Transport::Udp, "_sip._udp.example.net.".to_string()),
            ]
        );
    }

    #[test]
    fn only_sip_services_over_usable_transports_with_flag_s_count() {
        let records = [
            naptr(10, 10, "s", "SIP+D2S", "_sip._sctp.example.net."),
            naptr(10, 20, "s", "SIP+D2W", "_sip._ws.example.net."),
            naptr(10, 30, "a", "SIP+D2U", "example.net."),
            naptr(10, 40, "", "SIP+D2U", "example.net."),
            naptr(10, 50, "s", "E2U+sip", "_sip._udp.example.net."),
            naptr(10, 60, "s", "SIP+D2T", "_sip._tcp.example.net."),
            naptr(10, 70, "s", "SIP+D2U", "."),
            naptr(10, 80, "s", "SIP+D2U", "_sip._udp.example.net."),
        ];
        assert_eq!(
            naptr_choices(&records, false, ALL),
            vec![
                (Transport::Tcp, "_sip._tcp.example.net.".to_string()),
                (Transport::Udp, "_sip._udp.example.net.".to_string()),
            ]
        );
        assert_eq!(
            naptr_choices(&records, false, &[Transport::Udp]),
            vec![(Transport::Udp, "_sip._udp.example.net.".to_string())],
            "no TCP listener: TCP is not chosen"
        );
    }

    #[test]
    fn a_sips_uri_takes_only_sips_over_tls_and_a_sip_uri_never_does() {
        let records = [
            naptr(10, 10, "s", "SIPS+D2T", "_sips._tcp.example.net."),
            naptr(20, 10, "s", "SIP+D2U", "_sip._udp.example.net."),
        ];
        assert_eq!(
            naptr_choices(&records, true, ALL),
            vec![(Transport::Tls, "_sips._tcp.example.net.".to_string())]
        );
        assert_eq!(
            naptr_choices(&records, false, ALL),
            vec![(Transport::Udp, "_sip._udp.example.net.".to_string())]
        );
        assert!(naptr_choices(&records, true, &[Transport::Udp]).is_empty());
    }
}
