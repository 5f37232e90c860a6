//! The call engine: every call this gateway carries, both legs, sans-IO.
//!
//! One [`Engine`] owns all calls. Inputs are parsed SIP messages, RIPT events from the HTTP/3
//! drivers and media events; outputs are SIP messages to send, commands for the HTTP/3 drivers and
//! for the media hub. Time only enters through the `now` arguments, so races (CANCEL crossing a
//! 200, BYE during setup, re-INVITE glare, Timer B, event-stream loss) are unit-tested with
//! simulated time in `tests.rs`.
//!
//! A call has a SIP leg (UAS when the call came in over SIP, UAC when we place it toward a SIP
//! trunk) and a RIPT leg (client when we placed it over HTTP/3, server when it came in over
//! HTTP/3), or, for the built-in echo service, only a RIPT server leg.

use super::negotiate;
use super::secure::{LegSecurity, MediaPolicy, Negotiated};
use super::session_timer::{self, Asked, SessionTimer, TimerConfig, UasAnswer};
use crate::media::rtp::PayloadMap;
use crate::media::{MediaCmd, MediaEvent};
use crate::metrics::{CallOutcome, Failover, Metrics};
use crate::recent::{Inserted, Recent};
use crate::ript::model::{
    self, CallDescription, CallDirection, CallRequest, CallState, Direction, Event, EventName,
    Proposal,
};
use crate::ript::{CallAccepted, Problem, ReqId, RiptCmd, RiptEvent};
use crate::sdp::{self, LocalSdp, SdpDirection};
use crate::sip::msg::{self, Extra, RequestSpec, Transport};
use crate::sip::srv::{order_addrs, HopAddrs, SrvRank};
use crate::sip::txn::{
    ConnId, Dest, RequestDisposition, ResponseDisposition, ServerKey, SipOut, TxnLayer, TxnOutput,
};
use crate::CallKey;
use bytes::Bytes;
use rand::Rng;
use rsipstack::sip::{Method, Request, Response, SipMessage};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// A parsed SIP message as the transport delivers it.
#[derive(Debug, Clone)]
pub struct SipInbound {
    pub msg: SipMessage,
    pub info: msg::Info,
    pub src: SocketAddr,
    pub transport: Transport,
    pub conn: Option<ConnId>,
    /// SHA-256 of the client certificate of the TLS connection it came on, if any.
    pub peer_cert_sha256: Option<[u8; 32]>,
}

#[derive(Debug, Clone)]
pub enum Input {
    Sip(Box<SipInbound>),
    Ript(Box<RiptEvent>),
    Media(MediaEvent),
    /// The certificate chains a [`Output::StirFetch`] asked for: per URL, the DER chain (leaf
    /// first) or why it could not be had.
    StirChains {
        call: CallKey,
        chains: FetchedChains,
    },
    /// Messages to `addr` over `transport` could not be sent (a stream transport's connect or
    /// TLS handshake failed): INVITEs waiting there without any response are given up at once.
    Unreachable {
        addr: SocketAddr,
        transport: Transport,
    },
    /// The addresses `trunks[trunk]`'s host name resolves to now: in the order to try them
    /// (first one first), or with the SRV ranks each call orders them by. Calls placed from now
    /// on use them; calls under way keep theirs.
    TrunkAddrs {
        trunk: usize,
        hop: HopAddrs,
        /// The transport to reach them over: the one chosen at start, or for a trunk whose name
        /// was not found then, the one the first lookup that found it chose.
        transport: Transport,
    },
    /// The answer to an [`Output::ResolveHop`]: the addresses `uri` resolved to, in the order
    /// to prefer them (an SRV answer's drawn by priority and weight), or why none.
    HopAddr {
        call: CallKey,
        uri: String,
        addrs: Result<Vec<SocketAddr>, String>,
    },
}

/// Per x5u URL: the DER chain (leaf first), or why it could not be had.
pub type FetchedChains = Vec<(String, Result<Vec<Vec<u8>>, String>)>;

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Sip(SipOut),
    Ript(RiptCmd),
    Media(MediaCmd),
    /// Fetch these x5u URLs (through the cache) for the INVITE being verified as `call`; the
    /// answer is [`Input::StirChains`].
    StirFetch {
        call: CallKey,
        urls: Vec<String>,
    },
    /// Look up the host name in `uri` for `call` (RFC 3263: SRV without a port, then
    /// A/AAAA); the answer is [`Input::HopAddr`]. The URI is the call's in-dialog next hop
    /// (until the answer comes, the dialog's requests go where its INVITE went), or the target
    /// of a redirect it follows (its INVITE waits for the answer).
    ResolveHop {
        call: CallKey,
        uri: String,
        transport: Transport,
    },
}

/// Where calls arriving on a served TG go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TgTarget {
    Echo,
    Trunk(usize),
}

/// Where SIP calls go, by destination prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipTarget {
    /// Over HTTP/3 to `peers[i]` (`POST {TG}/calls` as a client).
    Peer(usize),
    /// Ring the handlers registered on our own TG of that name (protocol.md §2.7).
    Handlers(String),
}

#[derive(Debug, Clone)]
pub struct TgRoute {
    pub prefix: String,
    pub target: TgTarget,
}

#[derive(Debug, Clone)]
pub struct TgInfo {
    pub name: String,
    pub routes: Vec<TgRoute>,
}

#[derive(Debug, Clone)]
pub struct TrunkInfo {
    pub name: String,
    /// Request-URI host part (`host:port`) for calls to this trunk.
    pub host: String,
    pub dest: Dest,
    /// Further addresses of the same host name (or outbound proxy), tried in order when an
    /// INVITE to the one before it times out or gets 503 (RFC 3263 §4.3, RFC 3261 §21.5.4).
    pub alternates: Vec<SocketAddr>,
    /// SRV ranks of `dest.addr` and the `alternates`, in that order, when the addresses came from
    /// SRV records: each call orders them by priority and weight (RFC 2782). Empty: tried in
    /// the order given.
    pub ranks: Vec<SrvRank>,
    /// Outbound proxy: requests go there with a Route header for it.
    pub proxy_route: Option<String>,
    pub codecs: Vec<String>,
    pub max_redirects: u8,
    /// Media policy of this trunk's legs.
    pub media: MediaPolicy,
    /// INVITE sources that belong to this trunk (address, and port when given).
    pub match_sources: Vec<(IpAddr, Option<u16>)>,
    /// Browser-originated calls need a SIP CORS preflight (OPTIONS with `Origin`) first.
    pub preflight: bool,
    /// A `verstat` this trunk puts on P-Asserted-Identity/From (a verification service upstream)
    /// is passed on when we do not verify ourselves; from any other source it is ignored
    /// (RFC 8224 §6.2.3: only a trusted verifier's verstat counts).
    pub trust_verstat: bool,
    /// Client certificates (SHA-256) this trunk's requests must come with over SIP-TLS;
    /// empty: no such requirement.
    pub tls_client_fingerprints: Vec<[u8; 32]>,
    /// Digest authentication of the INVITEs this trunk sends us (`auth = "digest"`); none:
    /// they are not challenged.
    pub digest_users: Option<Arc<crate::sip::digest::UserDb>>,
    /// Our login when this trunk challenges our INVITE (401/407); none: the challenge ends
    /// the call.
    pub digest_login: Option<Arc<crate::sip::digest::Login>>,
    /// Its host name had no address at start (DNS down): calls to it get 503 until a lookup
    /// finds one (`dest` is a placeholder until then).
    pub unresolved: bool,
    /// Each address gets an OPTIONS this often, and one that does not answer is tried last
    /// (`ping_secs`); none: not pinged.
    pub ping: Option<Duration>,
}

impl TrunkInfo {
    /// Every address of the trunk's next hop, `dest.addr` first.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.dest.addr).chain(self.alternates.iter().copied())
    }

    /// The next hop's addresses with their SRV ranks.
    pub fn hop(&self) -> HopAddrs {
        HopAddrs {
            addrs: self.addrs().collect(),
            ranks: self.ranks.clone(),
        }
    }

    /// Takes `hop` as the next hop's addresses; false when it is empty or what the trunk has.
    pub fn set_hop(&mut self, hop: &HopAddrs) -> bool {
        let Some((&first, rest)) = hop.addrs.split_first() else {
            return false;
        };
        if self.dest.addr == first && self.alternates == rest && self.ranks == hop.ranks {
            return false;
        }
        self.dest.addr = first;
        self.alternates = rest.to_vec();
        self.ranks = hop.ranks.clone();
        self.unresolved = false;
        true
    }
}

#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub name: String,
    pub codecs: Vec<String>,
}

/// Who placed a call on our HTTP/3 server: the token's subject and telephone numbers, and the
/// page's origin when a browser made the request.
struct Caller {
    principal: String,
    origin: Option<String>,
    tns: Vec<String>,
}

/// The STIR/SHAKEN authentication service as the engine uses it: our leaf's key and where
/// verifiers fetch its certificate.
pub struct StirSigner {
    pub key: crate::stir::SigningKey,
    pub x5u: String,
}

impl std::fmt::Debug for StirSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("StirSigner")
            .field("x5u", &self.x5u)
            .finish_non_exhaustive()
    }
}

/// The STIR/SHAKEN verification service of SIP calls coming in.
pub struct StirVerify {
    pub verifier: crate::stir::verify::Verifier,
    /// Failures get their 4xx (`reject`); else the call goes on with its `verstat`.
    pub reject: bool,
}

impl std::fmt::Debug for StirVerify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StirVerify")
            .field("reject", &self.reject)
            .finish_non_exhaustive()
    }
}

/// What the engine needs of the configuration, resolved (names → indices, URIs → addresses).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node: String,
    /// Our `host:port` per transport, for Via and Contact.
    pub sip_hosts: HashMap<Transport, String>,
    pub media_ip: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
    /// Media policy of legacy legs no trunk claims.
    pub media: MediaPolicy,
    /// An answered call whose SIP peer sends nothing for this long is ended; `None`: never.
    pub media_timeout: Option<Duration>,
    /// The same while the peer holds the call (it sends no RTP).
    pub hold_media_timeout: Option<Duration>,
    /// Our DTLS certificate's `a=fingerprint` value.
    pub dtls_fingerprint: String,
    /// Signs calls that leave us (Identity on SIP, `passport` on HTTP/3); none: unsigned.
    pub stir: Option<Arc<StirSigner>>,
    /// Verifies the Identity of SIP calls coming in; none: not verified.
    pub stir_verify: Option<Arc<StirVerify>>,
    pub t1: Duration,
    pub max_calls: usize,
    pub no_answer_timeout: Duration,
    /// SIP → RIPT by longest prefix of the destination user part.
    pub sip_routes: Vec<(String, SipTarget)>,
    pub peers: Vec<PeerInfo>,
    pub tgs: Vec<TgInfo>,
    pub trunks: Vec<TrunkInfo>,
    /// `host:port` used in the call URIs we hand out.
    pub http_authority: String,
    /// How long a server-role call survives without any events stream (RIPT-00: 30 s).
    pub events_grace: Duration,
    /// Server role: ping the client this often; two pings without any event back end the call.
    /// A client that dropped its events GET on a live connection is otherwise invisible.
    pub keepalive: Option<Duration>,
    /// Most calls one RIPT client (token subject) may hold on our server role at once; more
    /// get 429.
    pub max_calls_per_client: usize,
    /// Origins an out-of-dialog `OPTIONS` carrying `Origin` may name (`[sip] cors_origins`).
    pub sip_cors_origins: Vec<String>,
    /// Out-of-dialog OPTIONS per second and burst per source address; `None`: unlimited.
    pub options_limit: Option<(u32, u32)>,
    /// Session timers (RFC 4028) on the SIP legs: `[sip] session_expires_secs`, `min_se_secs`.
    pub session_timer: TimerConfig,
}

impl EngineConfig {
    /// A small complete configuration: SIP on 127.0.0.1:5070, one RIPT peer `b` for every
    /// destination, TG `trunk` routing everything to SIP trunk `pbx` at 127.0.0.1:5080, plain
    /// RTP without ICE. Tests and benches start from it.
    pub fn example() -> EngineConfig {
        let mut sip_hosts = HashMap::new();
        sip_hosts.insert(Transport::Udp, "127.0.0.1:5070".to_string());
        let media = MediaPolicy {
            security: crate::config::MediaSecurity::Rtp,
            ice: crate::config::IceMode::Off,
            latching: true,
            dtmf: crate::config::DtmfMode::Rfc4733,
        };
        let trunk = "127.0.0.1:5080";
        EngineConfig {
            node: "t".into(),
            sip_hosts,
            media_ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port_min: 20000,
            port_max: 20999,
            media,
            media_timeout: Some(Duration::from_secs(60)),
            hold_media_timeout: Some(Duration::from_secs(3600)),
            dtls_fingerprint: "sha-256 00:11:22:33".into(),
            stir: None,
            stir_verify: None,
            t1: Duration::from_millis(500),
            max_calls: 200,
            no_answer_timeout: Duration::from_secs(60),
            sip_routes: vec![(String::new(), SipTarget::Peer(0))],
            peers: vec![PeerInfo {
                name: "b".into(),
                codecs: crate::config::default_codecs(),
            }],
            tgs: vec![TgInfo {
                name: "trunk".into(),
                routes: vec![TgRoute {
                    prefix: String::new(),
                    target: TgTarget::Trunk(0),
                }],
            }],
            trunks: vec![TrunkInfo {
                name: "pbx".into(),
                host: trunk.into(),
                dest: Dest {
                    addr: SocketAddr::from(([127, 0, 0, 1], 5080)),
                    transport: Transport::Udp,
                    conn: None,
                },
                alternates: vec![],
                ranks: vec![],
                proxy_route: None,
                codecs: crate::config::default_codecs(),
                max_redirects: 3,
                media,
                match_sources: vec![],
                preflight: false,
                trust_verstat: false,
                tls_client_fingerprints: vec![],
                digest_users: None,
                digest_login: None,
                unresolved: false,
                ping: None,
            }],
            http_authority: "localhost:4434".into(),
            events_grace: Duration::from_secs(30),
            keepalive: Some(Duration::from_secs(10)),
            max_calls_per_client: 100,
            sip_cors_origins: vec![],
            options_limit: None,
            session_timer: TimerConfig::default(),
        }
    }

    /// The trunk an INVITE from `src` belongs to: an entry with the port beats one without.
    fn trunk_of_source(&self, src: SocketAddr) -> Option<usize> {
        let exact = self.trunks.iter().position(|t| {
            t.match_sources
                .iter()
                .any(|(ip, port)| *ip == src.ip() && *port == Some(src.port()))
        });
        exact.or_else(|| {
            self.trunks.iter().position(|t| {
                t.match_sources
                    .iter()
                    .any(|(ip, port)| *ip == src.ip() && port.is_none())
            })
        })
    }

    fn via_host(&self, t: Transport) -> String {
        self.sip_hosts
            .get(&t)
            .or_else(|| self.sip_hosts.get(&Transport::Udp))
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:5060".into())
    }

    fn contact(&self, t: Transport) -> String {
        match t {
            Transport::Udp => format!("<sip:riptide@{}>", self.via_host(t)),
            Transport::Tcp => format!("<sip:riptide@{};transport=tcp>", self.via_host(t)),
            Transport::Tls => format!("<sips:riptide@{}>", self.via_host(t)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Waiting for the far side.
    Setup,
    /// Provisional with media seen.
    Early,
    Answered,
    /// Ended: waiting for nothing, removed at once.
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum CallTimer {
    Retransmit2xx = 0,
    NoAnswer = 1,
    GlareRetry = 2,
    EventsGrace = 3,
    EventsReopen = 4,
    /// RFC 3261 §9.1: if the INVITE gets no final response within 64·T1 of our CANCEL, the
    /// call is given up.
    CancelGuard = 5,
    /// Our re-INVITE got no final response within 64·T1: the dialog is given up (§14.1).
    ReinviteGuard = 6,
    /// Server role: time to ping the client (see `EngineConfig::keepalive`).
    Keepalive = 7,
    /// The SIP leg's session timer (RFC 4028): our refresh is due, or the peer's is overdue.
    Session = 8,
    /// UAS: our reliable provisional goes again, or has waited 64·T1 for its PRACK (RFC 3262).
    Reliable = 9,
}
const N_TIMERS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SipRole {
    Uas,
    Uac,
}

/// What a client transaction we started was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Invite,
    Cancel,
    Bye,
    ReInvite,
    /// SIP INFO carrying a DTMF key; its answer changes nothing.
    Info,
    /// OPTIONS with `Origin` before a browser-originated INVITE (SIP CORS preflight).
    Preflight,
    /// PRACK of a reliable provisional (RFC 3262); its answer changes nothing.
    Prack,
}

#[derive(Debug)]
struct Pending2xx {
    bytes: Bytes,
    dest: Dest,
    interval: Duration,
    started: Instant,
    cseq: u32,
}

#[derive(Debug)]
struct SipLeg {
    role: SipRole,
    call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    /// Our From (UAC) / To (UAS) value without tag.
    local_addr: String,
    /// Their To (UAC) / From (UAS) value without tag.
    remote_addr: String,
    /// Request-URI for in-dialog requests.
    remote_target: String,
    route_set: Vec<String>,
    dest: Dest,
    transport: Transport,
    local_cseq: u32,
    remote_cseq: u32,
    // --- UAS ---
    /// `Reason: STIR;cause=…` for Identity headers that failed verification while the call
    /// went on (`continue`), carried by our provisional responses (RFC 9410 §4).
    stir_reasons: Vec<String>,
    invite: Option<Request>,
    invite_src: Option<SocketAddr>,
    invite_key: Option<ServerKey>,
    // --- UAC ---
    invite_branch: Option<String>,
    invite_uri: String,
    invite_routes: Vec<String>,
    got_provisional: bool,
    cancel_wanted: Option<String>,
    cancel_sent: bool,
    redirects: u8,
    /// The trunk's further addresses this INVITE has yet to try, in order (see
    /// [`TrunkInfo::alternates`]); emptied by a redirect, which names its own target.
    failover: Vec<SocketAddr>,
    /// A provisional response to our INVITE carried SDP (whether or not it was accepted).
    early_answer: bool,
    /// The trunk a UAC leg was placed on.
    trunk: Option<usize>,
    /// The ACK for the last 2xx-answered (re-)INVITE and its CSeq, re-sent when that 2xx is
    /// retransmitted.
    ack: Option<(u32, SipOut)>,
    // --- both ---
    final_done: bool,
    pending_2xx: Option<Pending2xx>,
    local_sdp: Option<LocalSdp>,
    /// Media security and ICE of this leg across offer/answer rounds.
    sec: Option<LegSecurity>,
    /// UAC: the call came from a browser page with this `Origin` (POST {TG}/calls): it only
    /// reaches configured trunks (no redirects followed) and, where the trunk asks, only after
    /// a SIP CORS preflight allowed the origin.
    browser_origin: Option<String>,
    /// UAC: our preflight OPTIONS is in flight; the INVITE waits for its answer.
    preflight_pending: bool,
    /// UAC: the host name of a redirect's target (`invite_uri`) is being looked up; the
    /// INVITE waits for the answer. The 3xx's code and reason, to fail the call with if the
    /// name is not found.
    redirect_lookup: Option<(u16, String)>,
    /// Other forks' dialogs ended with a BYE (see `MAX_STRAY_BYES`).
    forks_ended: u8,
    /// Where our last INVITE went (its IP) and its CSeq: only from there, with at most that
    /// CSeq, can a 2xx answer it (ADR 0024). Not moved by the dialog's own next hop.
    invite_sent: Option<(IpAddr, u32)>,
    /// Where the call's earlier INVITEs went (the trunk addresses it failed over from): a
    /// slow one's 2xx may still come, and is ACKed and ended.
    earlier_hops: Vec<IpAddr>,
    /// Reliable provisionals (RFC 3262), either way.
    rel: prack::Reliable,
    /// UAS: the caller's INVITE had no SDP; our 2xx offers and its ACK must answer.
    delayed_offer: bool,
    /// UAS: ... or, the caller requiring 100rel, our first reliable provisional offered and its
    /// PRACK answers (RFC 3262 §5); the 2xx then carries no SDP.
    early_offer: bool,
    /// The silence limit last given to the media hub (`MediaCmd::WatchSilence`), once the call
    /// is answered.
    silence_watch: Option<Option<Duration>>,
    /// The direction of the peer's last SDP, offer or answer: whether it said it would send.
    remote_direction: SdpDirection,
    /// The audio formats of the peer's last SDP, offer or answer: the payload type numbers it
    /// expects to receive (RFC 3264 §5.1).
    remote_formats: Vec<sdp::Format>,
    /// The payload type renumbering last given to the media hub.
    payload_map: PayloadMap,
    /// The peer takes no keys as INFO, and none are sent to it: it answered one with 405, 415
    /// or 501, or its `Allow` lists no INFO and its trunk did not ask for INFO
    /// ([`no_info_unasked`]).
    info_refused: bool,
    /// Our 2xx to an offerless re-INVITE carries an offer: the caller's ACK has the answer.
    answer_in_ack: bool,
    /// Our re-INVITE in flight: its branch, the direction it offers, the direction before it,
    /// its CSeq (which its ACK carries, whatever the dialog sent since).
    reinvite_out: Option<(String, SdpDirection, SdpDirection, u32)>,
    /// The re-INVITE in flight is one sent again, after a challenge or a 422.
    reinvite_retried: bool,
    /// The largest `Min-SE` the peer's session requests (INVITE, re-INVITE, UPDATE) named:
    /// our refreshes' `Min-SE` is at least that (RFC 4028 §7.4).
    peer_min_se: u32,
    reinvite_in_unacked: bool,
    glare_retry: Option<SdpDirection>,
    /// The far side hung up before the caller ACKed our 2xx: the BYE waits for that ACK.
    bye_after_ack: Option<String>,
    /// UAS: the route set is taken as the requests' next hop once the caller ACKed our 2xx.
    /// Until then every response to its INVITE goes back where the INVITE came from (RFC 3261
    /// §18.2.2), and nothing a caller could make up is looked up before it was answered.
    route_pending: bool,
    /// The dialog's session timer (RFC 4028), once a 2xx set one up, and when the session
    /// expires unless refreshed.
    session: Option<SessionTimer>,
    session_deadline: Option<Instant>,
    /// UAC: the `Session-Expires` and `Min-SE` our INVITE asks for, and how many 422s raised
    /// them.
    session_ask: (u32, u32, u8),
}

/// Where a dialog's requests go next, as far as the engine can tell without DNS.
#[derive(Debug, PartialEq)]
enum NextHop<'a> {
    /// As they do now: a UAS leg without a route set (back where the INVITE came from, which
    /// also crosses NATs), or a dialog over TLS (the connection in use, whose certificate was
    /// checked for the name it was opened to).
    Keep,
    /// To this IP literal's address.
    Addr(Dest),
    /// To what this URI's host name resolves to, over this transport.
    Lookup(&'a str, Transport),
}

impl SipLeg {
    /// The CSeq number of the dialog's next request of ours: past our last one, and past our
    /// PRACKs, which count on from the INVITE in the early dialog (RFC 3262).
    fn next_cseq(&self) -> u32 {
        self.local_cseq.max(self.rel.prack_cseq) + 1
    }

    /// The URI in-dialog requests are sent toward (RFC 3261 §12.2.1.1): the first route, else
    /// on a UAC leg the remote target.
    fn hop_uri(&self) -> Option<&str> {
        match self.route_set.first() {
            Some(r) => Some(msg::addr_uri(r)),
            None if self.role == SipRole::Uac && !self.remote_target.is_empty() => {
                Some(self.remote_target.as_str())
            }
            None => None,
        }
    }

    fn next_hop(&self) -> NextHop<'_> {
        next_hop(&self.dest, self.hop_uri())
    }

    /// UAC: no INVITE is out yet; it waits for a preflight or a redirect target's lookup.
    /// Ending the call now needs no CANCEL.
    fn invite_waits(&self) -> bool {
        self.preflight_pending || self.redirect_lookup.is_some()
    }

    /// Points the dialog's requests at its next hop (after the route set or the remote target
    /// was learnt): an IP literal at once, a host name through `out` (asked of the gateway).
    fn retarget(&mut self, key: CallKey, out: &mut VecDeque<Output>) {
        match self.next_hop() {
            NextHop::Keep => {}
            NextHop::Addr(d) => self.dest = d,
            NextHop::Lookup(uri, transport) => out.push_back(Output::ResolveHop {
                call: key,
                uri: uri.to_string(),
                transport,
            }),
        }
    }

    /// A request outside the dialog's route set: the INVITE of a UAC leg, and its CANCEL.
    fn initial_request<'a>(
        &'a self,
        method: &'a str,
        via_host: &'a str,
        branch: &'a str,
        from: &'a str,
        contact: Option<&'a str>,
    ) -> RequestSpec<'a> {
        RequestSpec {
            method,
            uri: &self.invite_uri,
            via_host,
            transport: self.transport,
            branch,
            from,
            to: &self.remote_addr,
            call_id: &self.call_id,
            cseq: self.local_cseq,
            contact,
            routes: &self.invite_routes,
            max_forwards: 70,
        }
    }
}

/// `uri`'s host and port as the next hop of a dialog now sent to `current`, and the transport
/// toward it: the one the URI names (`sips:` or `transport=`), else the dialog's own, so that a
/// Contact or route without a transport parameter does not move a TCP dialog to UDP. `None`:
/// keep the dialog where it is, as a dialog over TLS always is (it never moves to a weaker
/// transport, or to a name its connection's certificate was not checked for).
fn hop_target(current: &Dest, uri: &str) -> Option<(String, Option<u16>, Transport)> {
    if current.transport == Transport::Tls {
        return None;
    }
    let (host, port, named) = msg::uri_target(uri)?;
    let t = if msg::uri_names_transport(uri) {
        named
    } else {
        current.transport
    };
    (t != Transport::Tls).then_some((host, port, t))
}

/// The destination for `addr` over `transport` from a dialog now sent to `current`: `current`
/// itself (and its connection) when it is the same place. Over TCP the same IP is the same
/// place: a connection the peer opened comes from a port of its own (RFC 5923's reuse, without
/// its alias parameter).
fn hop_dest(current: &Dest, addr: SocketAddr, transport: Transport) -> Dest {
    let same = transport == current.transport
        && (addr == current.addr
            || (transport != Transport::Udp && addr.ip() == current.addr.ip()));
    if same {
        *current
    } else {
        Dest {
            addr,
            transport,
            conn: None,
        }
    }
}

/// A dialog a response to our INVITE sets up ([`Engine::dialog_of_response`]), for requests in
/// it that no call leg sends: a PRACK in an early dialog, the BYE that ends another fork's.
struct ResponseDialog {
    from: String,
    to: String,
    call_id: String,
    /// The remote target (the response's Contact).
    target: String,
    uri: String,
    routes: Vec<String>,
    via_host: String,
    dest: Dest,
}

impl ResponseDialog {
    /// A request in the dialog: its new branch and bytes.
    fn request(&self, method: &str, cseq: u32, extra: &Extra<'_>) -> (String, Bytes) {
        let branch = msg::branch();
        let spec = RequestSpec {
            method,
            uri: &self.uri,
            via_host: &self.via_host,
            transport: self.dest.transport,
            branch: &branch,
            from: &self.from,
            to: &self.to,
            call_id: &self.call_id,
            cseq,
            contact: None,
            routes: &self.routes,
            max_forwards: 70,
        };
        let bytes = Bytes::from(msg::request(&spec, extra));
        (branch, bytes)
    }
}

/// Our `Supported` option tags: reliable provisionals (RFC 3262) always, session timers
/// (RFC 4028) when on.
fn supported(cfg: &EngineConfig) -> &'static str {
    if cfg.session_timer.on() {
        "100rel, timer"
    } else {
        "100rel"
    }
}

/// The Request-URI and Route headers of a request in a dialog with `remote_target` and
/// `route_set` (RFC 3261 §12.2.1.1). A first route with `lr` is a loose router: the target is
/// the Request-URI and the route set the Route headers. Without it, it is a strict router
/// (RFC 2543): it gets the Request-URI, and the target goes last among the Route headers.
fn request_uri_and_routes<'a>(
    remote_target: &'a str,
    route_set: &'a [String],
) -> (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, [String]>) {
    use std::borrow::Cow;
    match route_set.first() {
        Some(first) if !msg::uri_is_loose_router(msg::addr_uri(first)) => {
            let mut routes = route_set[1..].to_vec();
            routes.push(format!("<{remote_target}>"));
            (
                Cow::Owned(msg::addr_uri(first).to_string()),
                Cow::Owned(routes),
            )
        }
        _ => (Cow::Borrowed(remote_target), Cow::Borrowed(route_set)),
    }
}

/// Where the requests of a dialog now sent to `current` go when its next hop is `uri` (its
/// first route, else its remote target; `None` for neither).
fn next_hop<'a>(current: &Dest, uri: Option<&'a str>) -> NextHop<'a> {
    let Some(uri) = uri else {
        return NextHop::Keep;
    };
    let Some((host, port, transport)) = hop_target(current, uri) else {
        return NextHop::Keep;
    };
    match host.parse::<IpAddr>() {
        Ok(ip) => {
            let addr = SocketAddr::new(ip, port.unwrap_or(transport.default_port()));
            NextHop::Addr(hop_dest(current, addr, transport))
        }
        Err(_) => NextHop::Lookup(uri, transport),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RiptRole {
    Client { peer: usize },
    Server,
}

impl RiptRole {
    /// The proposal's directions of the media toward the SIP peer and from it: the RIPT
    /// server's media comes from its client (C2s) and goes back to it (S2c).
    fn peer_directions(&self) -> (Direction, Direction) {
        match self {
            RiptRole::Server => (Direction::C2s, Direction::S2c),
            RiptRole::Client { .. } => (Direction::S2c, Direction::C2s),
        }
    }
}

#[derive(Debug)]
struct RiptLeg {
    role: RiptRole,
    id: Option<String>,
    uri: Option<String>,
    out_seq: u64,
    in_seq: Option<u64>,
    proposal: Option<Proposal>,
    reopen_attempts: u32,
    echo: bool,
    /// Server role: pings sent since the client was last heard from.
    unanswered_pings: u8,
    /// A SIP call offered to our handlers: the caller's codecs as an advertisement, until a
    /// handler takes the call (then `proposal` is set).
    caller_adv: Option<model::Advertisement>,
}

#[derive(Debug)]
struct Call {
    phase: Phase,
    sip: Option<SipLeg>,
    ript: RiptLeg,
    port: Option<u16>,
    destination: String,
    from: Option<String>,
    timers: [u64; N_TIMERS],
    started: Instant,
    answered_at: Option<Instant>,
    /// One span per call with both legs' identifiers; every log line about the call is in it.
    span: tracing::Span,
    /// Server role: the token subject the call counts against.
    principal: Option<String>,
    /// STIR attestation our signature gives this call (A/B for HTTP/3 clients by their token's
    /// TNs, C for calls that entered over SIP).
    attest: crate::stir::Attestation,
    /// `Identity` to pass on unchanged when the call leaves on SIP: the caller's PASSporT,
    /// verified here or by a client trusted to say so (`verstat` TN-Validation-Passed).
    upstream_identity: Option<String>,
}

fn call_span(key: CallKey) -> tracing::Span {
    tracing::info_span!(
        "call",
        call = %key,
        sip_call_id = tracing::field::Empty,
        ript_call = tracing::field::Empty,
    )
}

pub struct Engine {
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
    txn: TxnLayer,
    // Boxed: a `Call` is over a kilobyte, and the table's spare capacity (up to half of it after
    // each growth) would otherwise cost that much per empty slot.
    calls: HashMap<CallKey, Box<Call>>,
    /// In-dialog request matching: (Call-ID, our tag).
    dialogs: HashMap<(String, String), CallKey>,
    /// Initial INVITE server transactions, for CANCEL.
    invites: HashMap<ServerKey, CallKey>,
    /// Our client transactions.
    branches: HashMap<String, (CallKey, Purpose)>,
    /// Trunk addresses that timed out on an INVITE or answered 503 with Retry-After, until
    /// when new calls try them only after the trunk's other addresses.
    avoid: HashMap<SocketAddr, Instant>,
    /// Trunk pings (OPTIONS) out, and the addresses they found down.
    pings: trunk_ping::Pings,
    /// Calls that ended while our `POST {TG}/calls` was in flight, with the `end` reason to
    /// send once the peer answers: the far side must not keep ringing a call nobody holds.
    orphans: HashMap<CallKey, String>,
    /// Our INVITEs whose calls have ended, by their (Call-ID, From tag) hashed: a 2xx that
    /// still comes for one is ACKed and its dialog ended (RFC 3261 §13.2.2.4) for 64*T1, as
    /// long as a UAS retransmits it.
    ended_invites: Recent<u64, EndedInvite>,
    /// Dialogs (Call-ID, From tag, To tag, hashed) that a BYE of ours ended, the calls' own
    /// included: a retransmission of the 2xx that made one is ACKed, and gets no second BYE.
    stray_byes: Recent<u64>,
    /// Hashes the keys of the two sets above (keyed per process: a peer cannot aim collisions).
    dialog_hasher: std::hash::RandomState,
    /// Server-role calls held per RIPT client.
    per_client: HashMap<String, usize>,
    /// SIP CORS preflights that allowed an origin at a target, until when.
    preflight_ok: HashMap<(SocketAddr, String), Instant>,
    /// Targets whose preflight failed are not contacted again until then (seed draft §6.2).
    preflight_bad: HashMap<SocketAddr, Instant>,
    /// The wall clock at one instant (PASSporT `iat`), given by the driver: the engine reads no
    /// clock itself. Without it nothing is signed.
    wall: Option<(Instant, u64)>,
    /// STIR replay window (RFC 8224 §6.2, STIR-14).
    replay: crate::stir::verify::ReplayCache,
    /// INVITEs waiting for their x5u chains, by the key of the call they will become.
    verifying: HashMap<CallKey, (Box<SipInbound>, crate::stir::verify::Prepared)>,
    /// HTTP/3 calls whose PASSporT waits for its x5u chain, by the key of that fetch.
    verifying_ript: HashMap<CallKey, Box<PendingRipt>>,
    /// Out-of-dialog OPTIONS per source (IN-04).
    options_limiter: Option<super::ratelimit::SourceLimiter>,
    timers: BinaryHeap<Reverse<(Instant, u64, CallKey, CallTimer)>>,
    /// SIP Digest: nonces, nc and lockouts (UAS), our credentials per call (UAC).
    digest: digest_auth::DigestState,
    out: VecDeque<Output>,
    next_key: u64,
    timer_gen: u64,
    ports: PortPool,
}

/// Even RTP ports from the configured range, handed out round-robin so that a port is not
/// reused right after release (late packets of the old call would land in the new one).
///
/// A released port also cools for [`PORT_COOLING`] before it is handed out again: the media hub
/// closes a call's sockets when the runtime drops its aborted tasks, so binding the port again
/// at once can fail with "address in use" (the case when the range is nearly full and the
/// round-robin comes back to it quickly).
#[derive(Debug)]
struct PortPool {
    min: u16,
    max: u16,
    next: u16,
    used: std::collections::HashSet<u16>,
    /// Released ports, still counted in `used`, oldest first.
    cooling: VecDeque<(Instant, u16)>,
    /// Ports whose bind failed (another socket holds them), not handed out until then.
    failed: HashMap<u16, Instant>,
}

/// How long a released media port rests before it is handed out again.
const PORT_COOLING: Duration = Duration::from_millis(250);

/// How long a media port whose bind failed is passed over: whatever holds it (another
/// process, an outgoing socket given an ephemeral port) usually holds it for long.
const PORT_FAILED_REST: Duration = Duration::from_secs(300);

/// How long new calls try a trunk address last after an INVITE to it got no response at all.
const AVOID_AFTER_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest Retry-After of a 503 honoured when ordering a trunk's addresses.
const MAX_AVOID_SECS: u64 = 3600;

/// Dialogs of one INVITE's extra forks that we end with a BYE; later forks are only ACKed.
const MAX_STRAY_BYES: u8 = 8;

/// A 2xx with more Record-Route entries than this, or a longer entry, is not acted on: its
/// routes would be echoed in our ACK and BYE.
const MAX_STRAY_ROUTES: usize = 16;
const MAX_ROUTE_LEN: usize = 512;

/// What is kept of a UAC call's INVITE once the call has ended (see `Engine::ended_invites`).
#[derive(Debug, Clone)]
struct EndedInvite {
    /// The call was answered: a later fork's BYE says "completed elsewhere".
    answered: bool,
    /// The CSeq number of its last INVITE: a 2xx with a higher one is not an answer to it.
    cseq: u32,
    /// Where its last INVITE went: answers come back from there ...
    next_hop: IpAddr,
    /// ... or from where its earlier ones went (failover).
    earlier_hops: Box<[IpAddr]>,
    /// The CSeq of its last PRACK (0: none): a late fork's BYE counts on from it.
    prack_cseq: u32,
    /// BYEs sent to its late forks so far.
    byes: u8,
}

/// The delta-seconds of a Retry-After value (RFC 3261 §20.33: `delta-seconds [comment]
/// *(;param)`).
fn retry_after_secs(v: &str) -> Option<u64> {
    let v = v.trim_start();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    v[..digits].parse().ok()
}

impl PortPool {
    /// Ports held by calls now (cooling ones not counted).
    fn held(&self) -> usize {
        self.used.len() - self.cooling.len()
    }

    fn new(min: u16, max: u16) -> Self {
        let min = min + (min % 2);
        PortPool {
            min,
            max,
            next: min,
            used: Default::default(),
            cooling: VecDeque::new(),
            failed: HashMap::new(),
        }
    }

    /// The bind of `p` failed: it is passed over for [`PORT_FAILED_REST`].
    fn failed(&mut self, p: u16, now: Instant) {
        self.failed.retain(|_, until| now < *until);
        self.failed.insert(p, now + PORT_FAILED_REST);
    }

    fn take(&mut self, now: Instant) -> Option<u16> {
        while let Some(&(at, p)) = self.cooling.front() {
            if now < at + PORT_COOLING {
                break;
            }
            self.cooling.pop_front();
            self.used.remove(&p);
        }
        let span = ((self.max.saturating_sub(self.min)) / 2 + 1) as usize;
        for _ in 0..span {
            let p = self.next;
            // In u32: at a range ending at 65535, p + 2 would not fit.
            self.next = if u32::from(p) + 3 > u32::from(self.max) {
                self.min
            } else {
                p + 2
            };
            if p < self.max
                && self.failed.get(&p).is_none_or(|until| now >= *until)
                && self.used.insert(p)
            {
                return Some(p);
            }
        }
        // Everything is in use or cooling: a cooling port beats refusing the call (one whose
        // bind failed does not).
        let usable = |p: &u16| self.failed.get(p).is_none_or(|until| now >= *until);
        let i = self.cooling.iter().position(|(_, p)| usable(p))?;
        self.cooling.remove(i).map(|(_, p)| p)
    }

    /// Releases `p`: it cools from `now` on.
    fn put(&mut self, p: u16, now: Instant) {
        if self.used.contains(&p) {
            self.cooling.push_back((now, p));
        }
    }
}

impl Engine {
    pub fn new(cfg: EngineConfig, metrics: Arc<Metrics>) -> Self {
        let options_limit = cfg.options_limit;
        // Transactions linger 64*T1 after their final response (RFC 6026 Timer L, Timer J), about
        // three per call: at 1000 calls/s that is ~100k live entries for 10k calls.
        let txn = TxnLayer::new(cfg.t1, cfg.max_calls.saturating_mul(32).max(1024));
        let ports = PortPool::new(cfg.port_min, cfg.port_max);
        let linger = cfg.t1 * 64;
        // As many as the transactions (see above): 64*T1 of calls at a high call rate.
        let ended_max = cfg.max_calls.saturating_mul(32).max(1024);
        metrics.media_port_pairs.store(
            crate::config::port_pairs(cfg.port_min, cfg.port_max) as u64,
            Ordering::Relaxed,
        );
        Engine {
            cfg,
            metrics,
            txn,
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            invites: HashMap::new(),
            branches: HashMap::new(),
            avoid: HashMap::new(),
            pings: trunk_ping::Pings::default(),
            orphans: HashMap::new(),
            ended_invites: Recent::new(linger, ended_max),
            stray_byes: Recent::new(linger, ended_max),
            dialog_hasher: std::hash::RandomState::new(),
            per_client: HashMap::new(),
            preflight_ok: HashMap::new(),
            preflight_bad: HashMap::new(),
            wall: None,
            replay: Default::default(),
            verifying: HashMap::new(),
            verifying_ript: HashMap::new(),
            options_limiter: options_limit
                .map(|(rate, burst)| super::ratelimit::SourceLimiter::new(rate, burst)),
            timers: BinaryHeap::new(),
            digest: digest_auth::DigestState::new(),
            out: VecDeque::new(),
            next_key: 1,
            timer_gen: 0,
            ports,
        }
    }

    /// A call refused before it was set up still counts in `calls_total{outcome="rejected"}`.
    fn count_rejected(&self) {
        self.metrics.call_started();
        self.metrics.call_ended(CallOutcome::Rejected);
    }

    /// The call's span (cheap clone), entered while the engine works on that call.
    fn span(&self, key: CallKey) -> tracing::Span {
        self.calls
            .get(&key)
            .map(|c| c.span.clone())
            .unwrap_or_else(tracing::Span::none)
    }

    /// Ties simulated or monotonic time to the wall clock: `unix` seconds at `at`.
    pub fn set_wall_clock(&mut self, at: Instant, unix: u64) {
        self.wall = Some((at, unix));
    }

    fn unix_at(&self, now: Instant) -> Option<u64> {
        let (at, unix) = self.wall?;
        Some(match now.checked_duration_since(at) {
            Some(d) => unix + d.as_secs(),
            None => unix.saturating_sub(at.duration_since(now).as_secs()),
        })
    }

    /// A signed SHAKEN PASSporT (compact JWS) for a call from `from` to `to`, when we sign and
    /// both are telephone numbers.
    fn passport(&self, now: Instant, key: CallKey, from: Option<&str>, to: &str) -> Option<String> {
        let signer = self.cfg.stir.as_ref()?;
        let call = self.calls.get(&key)?;
        let (Some(orig), Some(dest)) = (
            from.and_then(crate::stir::canonical_tn),
            crate::stir::canonical_tn(to),
        ) else {
            debug!(call = %key, "not signed: caller or callee is not a telephone number");
            return None;
        };
        let claims = crate::stir::ShakenClaims {
            attest: call.attest,
            dest_tns: vec![dest],
            iat: self.unix_at(now)?,
            orig_tn: orig,
            origid: uuid::Uuid::new_v4().to_string(),
        };
        match crate::stir::passport::encode_shaken_passport(&claims, &signer.key, &signer.x5u) {
            Ok(jws) => Some(jws),
            Err(e) => {
                warn!(call = %key, error = %e, "STIR signing failed: call goes unsigned");
                None
            }
        }
    }

    /// Live client and server transactions (for tests and metrics).
    pub fn pending_transactions(&self) -> (usize, usize) {
        self.txn.len()
    }

    /// Calls currently held.
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let a = self.timers.peek().map(|Reverse((at, ..))| *at);
        [a, self.txn.poll_timeout(), self.next_ping()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.txn.handle_timeout(now);
        self.pump(now);
        while let Some(Reverse((at, ..))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, gen, key, t))) = self.timers.pop() else {
                break;
            };
            let live = self
                .calls
                .get(&key)
                .map(|c| c.timers[t as usize] == gen)
                .unwrap_or(false);
            if live {
                let _g = self.span(key).entered();
                self.on_timer(now, key, t);
                self.pump(now);
            }
        }
        self.run_pings(now);
        self.pump(now);
    }

    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Sip(m) => self.on_sip(now, *m),
            Input::Ript(e) => self.on_ript(now, *e),
            Input::Media(MediaEvent::BindFailed { call, port, reason }) => {
                warn!(%call, port, %reason, "media port bind failed: passed over for 5 minutes");
                self.ports.failed(port, now);
                self.fail_call(now, call, 503, "Service Unavailable (media port)");
            }
            Input::Media(MediaEvent::Dtmf {
                call,
                digit,
                toward_legacy,
            }) => self.on_media_dtmf(now, call, digit, toward_legacy),
            Input::StirChains { call, chains } => self.on_stir_chains(now, call, chains),
            Input::TrunkAddrs {
                trunk,
                hop,
                transport,
            } => self.set_trunk_addrs(now, trunk, hop, transport),
            Input::HopAddr { call, uri, addrs } => self.on_hop_addr(now, call, &uri, addrs),
            Input::Unreachable { addr, transport } => self.on_unreachable(now, addr, transport),
            Input::Media(MediaEvent::Silent { call, silent_for }) => {
                self.on_media_silent(now, call, silent_for)
            }
            Input::Media(MediaEvent::SecurityFailed { call, reason }) => {
                let _g = self.span(call).entered();
                warn!(%call, %reason, "ending the call: legacy media security failed");
                self.fail_call(now, call, 488, "Not Acceptable Here");
            }
        }
        self.pump(now);
    }

    /// Moves transaction-layer output to ours, handling timeouts.
    fn pump(&mut self, now: Instant) {
        while let Some(o) = self.txn.poll_output() {
            match o {
                TxnOutput::Send(s) => self.out.push_back(Output::Sip(s)),
                TxnOutput::ClientTimeout { branch } => self.on_client_timeout(now, &branch),
            }
        }
    }

    fn arm(&mut self, now: Instant, key: CallKey, t: CallTimer, after: Duration) {
        self.timer_gen += 1;
        let gen = self.timer_gen;
        if let Some(c) = self.calls.get_mut(&key) {
            c.timers[t as usize] = gen;
            self.timers.push(Reverse((now + after, gen, key, t)));
        }
    }

    fn disarm(&mut self, key: CallKey, t: CallTimer) {
        if let Some(c) = self.calls.get_mut(&key) {
            c.timers[t as usize] = 0;
        }
    }

    // ------------------------------------------------------------------ SIP in

    fn on_sip(&mut self, now: Instant, m: SipInbound) {
        match &m.msg {
            SipMessage::Request(_) => self.on_request(now, m),
            SipMessage::Response(_) => self.on_response(now, m),
        }
    }

    /// Where responses go: the source address when the Via asks for `rport` (RFC 3581) or over
    /// a stream, else the received IP and the Via sent-by port (RFC 3261 §18.2.2).
    fn reply_dest(m: &SipInbound) -> Dest {
        let addr = if m.transport == Transport::Udp && !m.info.rport {
            SocketAddr::new(
                m.src.ip(),
                msg::sent_by_port(&m.info.via_sent_by).unwrap_or(5060),
            )
        } else {
            m.src
        };
        Dest {
            addr,
            transport: m.transport,
            conn: m.conn,
        }
    }

    fn server_key(m: &SipInbound, method: &Method) -> ServerKey {
        ServerKey {
            branch: m.info.branch.clone(),
            sent_by: m.info.via_sent_by.clone(),
            invite: matches!(method, Method::Invite | Method::Ack),
            cancel: *method == Method::Cancel,
        }
    }

    /// Sends a response within the request's server transaction.
    fn respond(
        &mut self,
        now: Instant,
        m: &SipInbound,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        extra: &Extra<'_>,
    ) {
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        let key = Self::server_key(m, &req.method);
        let bytes = msg::response(req, m.src, code, reason, to_tag, extra);
        self.txn.send_response(
            now,
            &key,
            code,
            SipOut {
                dest: Self::reply_dest(m),
                bytes: bytes.into(),
            },
        );
    }

    /// TLS-03: a request from a trunk that lists client certificates must come over TLS with
    /// one of them, else it gets 403 (an ACK is dropped); true when refused. Only requests
    /// outside a dialog are checked.
    fn refuse_unlisted_client_cert(&mut self, now: Instant, m: &SipInbound) -> bool {
        let Some(t) = self.cfg.trunk_of_source(m.src) else {
            return false;
        };
        let listed = &self.cfg.trunks[t].tls_client_fingerprints;
        // In-dialog requests are let through on any transport: the calls we place toward the
        // trunk run over UDP/TCP or over a TLS connection we opened (where the trunk proved
        // itself with its server certificate and presents no client certificate), and such a
        // request only reaches a dialog whose identifiers it knows.
        let in_dialog = m.info.to_tag.is_some();
        if listed.is_empty() || in_dialog || m.peer_cert_sha256.is_some_and(|c| listed.contains(&c))
        {
            return false;
        }
        warn!(src = %m.src, trunk = %self.cfg.trunks[t].name, "request without a client certificate listed for its trunk: 403");
        if !matches!(&m.msg, SipMessage::Request(r) if r.method == Method::Ack) {
            self.respond(now, m, 403, "Forbidden", None, &Extra::none());
        }
        true
    }

    fn on_request(&mut self, now: Instant, m: SipInbound) {
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        let method = req.method;
        let key = Self::server_key(&m, &method);
        match self.txn.on_request(now, &key, method == Method::Ack) {
            RequestDisposition::Retransmission | RequestDisposition::AckAbsorbed => return,
            RequestDisposition::New => {}
        }
        if self.refuse_unlisted_client_cert(now, &m) {
            return;
        }
        if method == Method::Ack {
            self.on_ack(now, &m);
            return;
        }
        if m.info.max_forwards == Some(0) && method != Method::Ack {
            self.respond(now, &m, 483, "Too Many Hops", None, &Extra::none());
            return;
        }
        if method != Method::Cancel {
            let SipMessage::Request(req) = &m.msg else {
                return;
            };
            // No extension is required of us that we implement (RFC 3261 §8.2.2.3).
            let timers = self.cfg.session_timer.on();
            let required: Vec<String> = msg::header_values(&req.headers, "Require")
                .iter()
                .flat_map(|v| v.split(',').map(|t| t.trim().to_string()))
                .filter(|t| {
                    !(t.is_empty()
                        || timers && t.eq_ignore_ascii_case("timer")
                        || t.eq_ignore_ascii_case("100rel"))
                })
                .collect();
            if !required.is_empty() {
                let unsupported = required.join(", ");
                self.respond(
                    now,
                    &m,
                    420,
                    "Bad Extension",
                    None,
                    &Extra::none().header("Unsupported", unsupported),
                );
                return;
            }
        }
        let in_dialog = m.info.to_tag.is_some();
        // Digest before anything else is done with a new call (RFC 3261 §22).
        if method == Method::Invite && !in_dialog && !self.digest_admits(now, &m) {
            return;
        }
        match method {
            Method::Invite if !in_dialog => self.on_initial_invite(now, m),
            Method::Cancel => self.on_cancel(now, &m),
            Method::Options if !in_dialog => self.on_options(now, &m),
            // A PRACK belongs to an (early) dialog: without a To tag it matches nothing.
            Method::PRack if !in_dialog => self.no_such_dialog(now, &m),
            _ if in_dialog => self.on_in_dialog(now, m),
            Method::Bye | Method::Update | Method::Info => {
                self.no_such_dialog(now, &m);
            }
            _ => {
                self.method_not_allowed(now, &m);
            }
        }
    }

    /// An out-of-dialog OPTIONS: a capabilities probe or keep-alive, or, when it carries
    /// `Origin`, the SIP "CORS" preflight (draft-jennings-rtcweb-api-00 as specified in
    /// docs/protocol.md): an origin on `sip_cors_origins` gets 200 with
    /// `Access-Control-Allow-Origin`, any other (`null` included) 403, and more than one
    /// `Origin` or a value that is not `scheme://host[:port]` 400.
    fn on_options(&mut self, now: Instant, m: &SipInbound) {
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        if let Some(l) = self.options_limiter.as_mut() {
            if !l.allow(now, m.src.ip()) {
                let retry = l.retry_after_secs(m.src.ip()).to_string();
                debug!(src = %m.src, "OPTIONS over the per-source rate: 503");
                self.count_rejected();
                let extra = Extra::none().header("Retry-After", retry);
                self.respond(now, m, 503, "Service Unavailable", None, &extra);
                return;
            }
        }
        let origins = msg::header_values(&req.headers, "Origin");
        let acao = match sip_origin_check(&origins, &self.cfg.sip_cors_origins) {
            OriginCheck::Absent => None,
            OriginCheck::Allowed(o) => Some(o),
            OriginCheck::Forbidden => {
                debug!(src = %m.src, origin = ?origins, "OPTIONS from an origin not allowed");
                self.respond(now, m, 403, "Forbidden", None, &Extra::none());
                return;
            }
            OriginCheck::Malformed(why) => {
                debug!(src = %m.src, origin = ?origins, why, "OPTIONS with a bad Origin");
                let reason = format!("Bad Request ({why})");
                self.respond(now, m, 400, &reason, None, &Extra::none());
                return;
            }
        };
        let tag = msg::token(10);
        let mut extra = Extra::none()
            .header("Allow", msg::ALLOW)
            .header("Accept", msg::ACCEPT);
        extra = extra.header("Supported", supported(&self.cfg));
        if let Some(o) = acao {
            extra = extra.header("Access-Control-Allow-Origin", o);
        }
        self.respond(now, m, 200, "OK", Some(&tag), &extra);
    }

    /// The `verstat` on P-Asserted-Identity (else From) of an INVITE from a trunk whose
    /// verstat we trust; `None` from any other source, so a caller cannot claim a verification
    /// nobody made.
    fn trusted_verstat(&self, m: &SipInbound, req: &Request) -> Option<String> {
        let trunk = self.cfg.trunk_of_source(m.src)?;
        if !self.cfg.trunks[trunk].trust_verstat {
            return None;
        }
        let who = msg::first_header(&req.headers, "P-Asserted-Identity")
            .or_else(|| msg::first_header(&req.headers, "From"))?;
        verstat_param(msg::addr_uri(&who)).map(str::to_string)
    }

    fn new_key(&mut self) -> CallKey {
        let k = CallKey(self.next_key);
        self.next_key += 1;
        k
    }

    /// The URI of our server-role call `id` on `tg`.
    fn call_uri(&self, tg: &str, id: &str) -> String {
        format!(
            "https://{}/.well-known/ript/v1/providertgs/{}/calls/{}",
            self.cfg.http_authority, tg, id
        )
    }

    fn route_sip(&self, user: &str) -> Option<SipTarget> {
        self.cfg
            .sip_routes
            .iter()
            .filter(|(p, _)| user.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, t)| t.clone())
    }

    /// An INVITE starting a call: verified first (STIR) when we verify, else placed at once.
    fn on_initial_invite(&mut self, now: Instant, m: SipInbound) {
        let (Some(v), Some(now_unix)) = (self.cfg.stir_verify.clone(), self.unix_at(now)) else {
            return self.place_invite(now, m, None);
        };
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        let mut ids = msg::header_values(&req.headers, "Identity");
        ids.extend(msg::header_values(&req.headers, "y"));
        let from = msg::first_header(&req.headers, "P-Asserted-Identity")
            .or_else(|| msg::first_header(&req.headers, "From"))
            .unwrap_or_default();
        let uri = req.uri.to_string();
        let ctx = crate::stir::verify::VerifyContext {
            now_unix,
            canonical_orig: crate::stir::canonical_tn(msg::addr_uri(&from)),
            canonical_dest: crate::stir::canonical_tn(&uri).into_iter().collect(),
            call_id: m.info.call_id.clone(),
        };
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let prepared = v.verifier.prepare(&refs, &ctx, &self.replay);
        let urls = prepared.x5u_to_fetch();
        if urls.is_empty() {
            let outcome = v.verifier.finish(prepared, &mut self.replay, |_| {
                Err::<Vec<Vec<u8>>, _>("nothing to fetch")
            });
            return self.verified_invite(now, m, outcome, v.reject);
        }
        // Stop the caller's retransmissions while the certificates come.
        self.respond(now, &m, 100, "Trying", None, &Extra::none());
        let key = self.new_key();
        self.verifying.insert(key, (Box::new(m), prepared));
        self.out.push_back(Output::StirFetch { call: key, urls });
    }

    fn on_stir_chains(&mut self, now: Instant, key: CallKey, chains: FetchedChains) {
        let Some(v) = self.cfg.stir_verify.clone() else {
            return;
        };
        let chain_for = |url: &str| {
            chains
                .iter()
                .find(|(u, _)| u == url)
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| Err("not fetched".into()))
        };
        if let Some((m, prepared)) = self.verifying.remove(&key) {
            let outcome = v.verifier.finish(prepared, &mut self.replay, chain_for);
            self.verified_invite(now, *m, outcome, v.reject);
        } else if let Some(p) = self.verifying_ript.remove(&key) {
            let PendingRipt {
                req,
                tg,
                request,
                caller,
                prepared,
            } = *p;
            let outcome = v.verifier.finish(prepared, &mut self.replay, chain_for);
            self.verified_incoming(now, req, tg, request, caller, outcome, v.reject);
        }
    }

    /// A call arriving on HTTP/3 with a PASSporT, when we verify: the PASSporT is checked
    /// against the call's `from` and `destination` (its x5u fetched like an INVITE's) before
    /// the call is placed, and the result becomes its `verstat`.
    fn incoming_verified_first(
        &mut self,
        now: Instant,
        req: ReqId,
        tg: String,
        request: CallRequest,
        caller: Caller,
    ) {
        let (Some(v), Some(now_unix), Some(jws)) = (
            self.cfg.stir_verify.clone(),
            self.unix_at(now),
            request.passport.clone(),
        ) else {
            return self.on_incoming_call(now, req, tg, request, caller);
        };
        // A PASSporT that does not even decode is checked as it is, and fails (438).
        let header = identity_for(&jws).unwrap_or(jws);
        let ctx = crate::stir::verify::VerifyContext {
            now_unix,
            canonical_orig: request.from.as_deref().and_then(crate::stir::canonical_tn),
            canonical_dest: crate::stir::canonical_tn(&request.destination)
                .into_iter()
                .collect(),
            call_id: format!("ript-{}", req.0),
        };
        let prepared = v.verifier.prepare(&[header.as_str()], &ctx, &self.replay);
        let urls = prepared.x5u_to_fetch();
        if urls.is_empty() {
            let outcome = v.verifier.finish(prepared, &mut self.replay, |_| {
                Err::<Vec<Vec<u8>>, _>("nothing to fetch")
            });
            return self.verified_incoming(now, req, tg, request, caller, outcome, v.reject);
        }
        let key = self.new_key();
        self.verifying_ript.insert(
            key,
            Box::new(PendingRipt {
                req,
                tg,
                request,
                caller,
                prepared,
            }),
        );
        self.out.push_back(Output::StirFetch { call: key, urls });
    }

    /// Acts on an HTTP/3 call's verification: refused (403 naming the STIR failure) under
    /// `reject`, else placed with its verstat; only a PASSporT that verified is passed on.
    #[allow(clippy::too_many_arguments)]
    fn verified_incoming(
        &mut self,
        now: Instant,
        req: ReqId,
        tg: String,
        mut request: CallRequest,
        caller: Caller,
        outcome: crate::stir::verify::VerifyOutcome,
        reject: bool,
    ) {
        if let (Some(code), true) = (outcome.code, reject) {
            info!(
                status = code.status(),
                "STIR verification refused an HTTP/3 call"
            );
            self.count_rejected();
            let detail = format!(
                "STIR verification failed: {} {}",
                code.status(),
                code.reason_phrase()
            );
            self.out.push_back(Output::Ript(RiptCmd::RespondCall {
                req,
                result: Err(Problem::new(403, "Forbidden", detail)),
            }));
            return;
        }
        request.verstat = Some(outcome.verstat.as_str().to_string());
        if outcome.verified().is_none() {
            request.passport = None;
        }
        self.on_incoming_call(now, req, tg, request, caller);
    }

    /// Acts on a verification: the 4xx under `reject`, else the call with its verstat.
    fn verified_invite(
        &mut self,
        now: Instant,
        m: SipInbound,
        outcome: crate::stir::verify::VerifyOutcome,
        reject: bool,
    ) {
        match outcome.code {
            Some(code) if reject => {
                info!(call_id = %m.info.call_id, status = code.status(), "STIR verification refused the call");
                let mut extra = Extra::none();
                for r in outcome.reason_headers() {
                    extra = extra.header("Reason", r);
                }
                self.respond(
                    now,
                    &m,
                    code.status(),
                    code.reason_phrase(),
                    Some(&msg::token(12)),
                    &extra,
                );
                self.count_rejected();
            }
            _ => {
                let v = match &m.msg {
                    SipMessage::Request(req) => {
                        let mut ids = msg::header_values(&req.headers, "Identity");
                        ids.extend(msg::header_values(&req.headers, "y"));
                        Verification::of(&outcome, &ids)
                    }
                    SipMessage::Response(_) => Verification::of(&outcome, &[]),
                };
                self.place_invite(now, m, Some(v));
            }
        }
    }

    /// Places a SIP call toward HTTP/3. `verstat` is our own verification's result; without one,
    /// a trusted trunk's is used. `stir_reasons` are the RFC 9410 Reason values for headers that
    /// failed.
    fn place_invite(&mut self, now: Instant, m: SipInbound, verification: Option<Verification>) {
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        let (verstat, stir_reasons, upstream) = match verification {
            Some(v) => (Some(v.verstat), v.reasons, v.passport),
            None => (self.trusted_verstat(&m, req), Vec::new(), None),
        };
        // Over the call limit, or the transaction table is full: 503 with Retry-After.
        if self.calls.len() >= self.cfg.max_calls || self.txn.is_full() {
            self.count_rejected();
            self.respond(
                now,
                &m,
                503,
                "Service Unavailable",
                None,
                &Extra::none().header("Retry-After", "5"),
            );
            return;
        }
        let asked = session_timer::asked(&req.headers);
        if self.refuse_session_interval(now, &m, &asked) {
            return;
        }
        let to_tag = msg::token(12);
        self.respond(now, &m, 100, "Trying", None, &Extra::none());
        let uri = req.uri.to_string();
        let to_val = msg::first_header(&req.headers, "To").unwrap_or_default();
        let destination = msg::uri_user(&uri)
            .or_else(|| msg::uri_user(msg::addr_uri(&to_val)))
            .unwrap_or("")
            .to_string();
        let from_val = msg::first_header(&req.headers, "From").unwrap_or_default();
        let from_user = msg::uri_user(msg::addr_uri(&from_val)).map(|s| s.to_string());
        let reject = |me: &mut Self, code: u16, reason: &str, warning: Option<&str>| {
            let mut extra = Extra::none();
            if let Some(w) = warning {
                extra = extra.header("Warning", msg::warning(w));
            }
            me.respond(now, &m, code, reason, Some(&to_tag), &extra);
            me.count_rejected();
        };
        let Some(target) = self.route_sip(&destination) else {
            reject(self, 404, "Not Found", Some("no route for destination"));
            return;
        };
        // No SDP: a delayed offer (RFC 3261 §13.2.1). Our 2xx offers, the caller's ACK answers.
        let offer = if req.body.is_empty() {
            None
        } else {
            match sdp::parse(&req.body) {
                Ok(o) => Some(o),
                Err(e) => {
                    let w = format!("bad SDP: {e}");
                    reject(self, 400, "Bad Request (SDP)", Some(&w));
                    return;
                }
            }
        };
        let audio = match offer.as_ref().map(|o| o.audio()) {
            Some(Some((_, audio))) => Some(audio),
            Some(None) => {
                reject(self, 488, "Not Acceptable Here", Some("no audio stream"));
                return;
            }
            None => None,
        };
        // A trunk that claims the source brings its media policy and codecs.
        let claimed = self.cfg.trunk_of_source(m.src);
        let (policy, codecs) = match (claimed, &target) {
            (Some(t), _) => (self.cfg.trunks[t].media, self.cfg.trunks[t].codecs.clone()),
            (None, SipTarget::Peer(peer)) => (self.cfg.media, self.cfg.peers[*peer].codecs.clone()),
            (None, SipTarget::Handlers(_)) => (self.cfg.media, crate::config::default_codecs()),
        };
        let adv = match audio {
            Some(audio) => negotiate::offer_to_advertisement(audio, &codecs),
            None => negotiate::codecs_to_advertisement(&codecs),
        };
        let adv = match adv {
            Ok(a) => a,
            Err(e) => {
                let w = e.to_string();
                reject(self, 488, "Not Acceptable Here", Some(&w));
                return;
            }
        };
        let remote_rtp = offer.as_ref().and_then(|o| o.audio_addr());
        if audio.is_some() && remote_rtp.is_none() {
            reject(
                self,
                400,
                "Bad Request (SDP)",
                Some("no connection address"),
            );
            return;
        }
        let Some(port) = self.take_port(now) else {
            reject(self, 503, "Service Unavailable", Some("no media port free"));
            return;
        };
        let mut sec = LegSecurity::new(policy, &self.cfg.dtls_fingerprint, self.cfg.media_ip, port);
        let negotiated = match (&offer, audio) {
            (Some(offer), Some(audio)) => sec
                .answer(&audio.proto, &offer.security(audio), remote_rtp)
                .map(Some),
            _ => sec.offer().map(|()| None),
        };
        let negotiated = match negotiated {
            Ok(n) => n,
            Err(why) => {
                self.put_port(port, now);
                reject(self, 488, "Not Acceptable Here", Some(&why));
                return;
            }
        };
        let key = self.new_key();
        // Our offer proposes rtcp-mux; an answer keeps what the caller's offer said.
        let rtcp_mux = audio.is_none_or(|a| a.rtcp_mux);
        let local_sdp = LocalSdp {
            username: "riptide".into(),
            session_id: key.0 + 1000,
            session_version: 1,
            ip: self.cfg.media_ip,
            port,
            formats: vec![],
            ptime: None,
            direction: audio.map_or(SdpDirection::SendRecv, |a| a.direction.reverse()),
            rtcp_mux,
            rejected: offer
                .iter()
                .flat_map(|o| {
                    let ai = o.audio().map(|(ai, _)| ai);
                    o.media
                        .iter()
                        .enumerate()
                        .filter(move |(i, _)| Some(*i) != ai)
                })
                .map(|(_, md)| (md.kind.clone(), md.proto.clone(), md.raw_formats.clone()))
                .collect(),
            audio_index: offer.as_ref().and_then(|o| o.audio()).map_or(0, |(i, _)| i),
            proto: sec.proto.clone(),
            session_attrs: sec.session_attrs.clone(),
            media_attrs: sec.media_attrs.clone(),
            sent: None,
        };
        let info_refused = no_info_unasked(&req.headers, &sec);
        let sip = SipLeg {
            role: SipRole::Uas,
            stir_reasons,
            call_id: m.info.call_id.clone(),
            local_tag: to_tag.clone(),
            remote_tag: m.info.from_tag.clone(),
            local_addr: strip_tag(&to_val),
            remote_addr: strip_tag(&from_val),
            remote_target: msg::first_header(&req.headers, "Contact")
                .map(|c| msg::addr_uri(&c).to_string())
                .unwrap_or_else(|| msg::addr_uri(&from_val).to_string()),
            route_set: msg::record_route(&req.headers),
            dest: Self::reply_dest(&m),
            transport: m.transport,
            local_cseq: 0,
            remote_cseq: m.info.cseq,
            invite: Some(req.clone()),
            invite_src: Some(m.src),
            invite_key: Some(Self::server_key(&m, &Method::Invite)),
            invite_branch: None,
            invite_uri: String::new(),
            invite_routes: vec![],
            got_provisional: false,
            cancel_wanted: None,
            cancel_sent: false,
            redirects: 0,
            failover: vec![],
            early_answer: false,
            trunk: None,
            ack: None,
            final_done: false,
            pending_2xx: None,
            local_sdp: Some(local_sdp),
            sec: Some(sec),
            browser_origin: None,
            preflight_pending: false,
            redirect_lookup: None,
            forks_ended: 0,
            invite_sent: None,
            earlier_hops: Vec::new(),
            rel: prack::Reliable::for_invite(&req.headers),
            silence_watch: None,
            remote_direction: audio.map_or(SdpDirection::SendRecv, |a| a.direction),
            remote_formats: audio.map(|a| a.formats.clone()).unwrap_or_default(),
            payload_map: PayloadMap::default(),
            info_refused,
            answer_in_ack: audio.is_none(),
            delayed_offer: audio.is_none(),
            early_offer: false,
            reinvite_out: None,
            reinvite_in_unacked: false,
            glare_retry: None,
            bye_after_ack: None,
            route_pending: false,
            session: None,
            session_deadline: None,
            session_ask: (0, 0, 0),
            reinvite_retried: false,
            peer_min_se: asked.min_se.unwrap_or(0),
        };
        let mut sip = sip;
        // RFC 3261 §12.2.1.1: in-dialog requests go to the first route when there is a route
        // set (from the caller's ACK on); without one, back to where the INVITE came from
        // (which also crosses NATs).
        sip.route_pending = !sip.route_set.is_empty();
        // A call for our handlers is a server-role call on that TG, created by us.
        let (role, ript_id, ript_uri) = match &target {
            SipTarget::Peer(peer) => (RiptRole::Client { peer: *peer }, None, None),
            SipTarget::Handlers(tg) => {
                let id = format!("{}-{}", self.cfg.node, uuid::Uuid::new_v4());
                let uri = self.call_uri(tg, &id);
                (RiptRole::Server, Some(id), Some(uri))
            }
        };
        let call = Call {
            phase: Phase::Setup,
            sip: Some(sip),
            ript: RiptLeg {
                role,
                id: ript_id,
                uri: ript_uri,
                out_seq: 0,
                in_seq: None,
                proposal: None,
                reopen_attempts: 0,
                echo: false,
                unanswered_pings: 0,
                caller_adv: None,
            },
            port: Some(port),
            destination: destination.clone(),
            from: from_user.clone(),
            timers: [0; N_TIMERS],
            started: now,
            answered_at: None,
            span: call_span(key),
            principal: None,
            // Entered over SIP: we cannot vouch for the caller (gateway attestation).
            attest: crate::stir::Attestation::C,
            upstream_identity: None,
        };
        call.span.record("sip_call_id", m.info.call_id.as_str());
        let _g = call.span.clone().entered();
        info!(
            %destination,
            to = %match &target {
                SipTarget::Peer(peer) => format!("peer {}", self.cfg.peers[*peer].name),
                SipTarget::Handlers(tg) => format!("handlers of TG {tg}"),
            },
            trunk = claimed.map_or("-", |t| self.cfg.trunks[t].name.as_str()),
            media = negotiated.as_ref().map_or("offered", |n| n.crypto.label()),
            ice = negotiated.as_ref().is_some_and(|n| n.ice.is_some()),
            "SIP call in"
        );
        self.metrics.call_started();
        self.dialogs.insert((m.info.call_id.clone(), to_tag), key);
        self.invites
            .insert(Self::server_key(&m, &Method::Invite), key);
        self.calls.insert(key, Box::new(call));
        self.out
            .push_back(Output::Media(MediaCmd::OpenLegacy { call: key, port }));
        // Keys before the address: nothing is sent to the peer unprotected in between. A
        // delayed offer has neither until the ACK answers.
        if let (Some(negotiated), Some(remote_rtp), Some(audio)) = (negotiated, remote_rtp, audio) {
            self.push_secure(key, negotiated);
            self.out.push_back(Output::Media(MediaCmd::SetRemote {
                call: key,
                rtp: remote_rtp,
                rtcp: rtcp_of(remote_rtp, audio),
                rtcp_mux,
                latching: policy.latching,
            }));
        }
        let na = self.cfg.no_answer_timeout;
        if let SipTarget::Handlers(tg) = target {
            // No PASSporT: the handler is our own client, and `verstat` is not carried to it.
            if let Some(c) = self.calls.get_mut(&key) {
                c.ript.caller_adv = Some(adv);
            }
            let Some(call) = self.calls.get(&key) else {
                return;
            };
            let (Some(id), Some(uri)) = (call.ript.id.clone(), call.ript.uri.clone()) else {
                return;
            };
            call.span.record("ript_call", id.as_str());
            let description = CallDescription {
                uri,
                handler: None,
                direction: Some(CallDirection::Inbound),
                destination,
                from: from_user,
                state: CallState::Proceeding,
                proposal: Proposal::default(),
                media_ticket: None,
            };
            self.out.push_back(Output::Ript(RiptCmd::Offer {
                call: key,
                tg,
                id,
                description,
            }));
            self.arm(now, key, CallTimer::NoAnswer, na);
            return;
        }
        let SipTarget::Peer(peer) = target else {
            return;
        };
        // A caller's PASSporT that verified travels on unchanged; else we sign (attest C).
        let passport =
            upstream.or_else(|| self.passport(now, key, from_user.as_deref(), &destination));
        self.out.push_back(Output::Ript(RiptCmd::CreateCall {
            call: key,
            peer,
            request: CallRequest {
                handler: None,
                destination,
                from: from_user,
                passport,
                verstat,
                advertisement: Some(adv),
            },
        }));
        // The far side (or the HTTP/3 driver) may never answer: the caller is not kept waiting
        // longer than the no-answer timeout.
        self.arm(now, key, CallTimer::NoAnswer, na);
    }

    fn push_secure(&mut self, call: CallKey, n: Negotiated) {
        self.out.push_back(Output::Media(MediaCmd::Secure {
            call,
            negotiated: Box::new(n),
        }));
    }

    /// Latching on a call's legacy leg.
    fn leg_latching(&self, key: CallKey) -> bool {
        self.calls
            .get(&key)
            .and_then(|c| c.sip.as_ref())
            .and_then(|s| s.sec.as_ref())
            .map_or(self.cfg.media.latching, |s| s.policy.latching)
    }

    /// Applies the peer's SDP answer to the leg's security; `Err` is why the call must fail.
    fn secure_answer(
        &mut self,
        key: CallKey,
        ans: &sdp::SessionDesc,
        audio: &sdp::MediaDesc,
    ) -> Result<(), String> {
        let Some(sec) = self
            .calls
            .get_mut(&key)
            .and_then(|c| c.sip.as_mut())
            .and_then(|s| s.sec.as_mut())
        else {
            return Ok(());
        };
        let n = sec.on_answer(&audio.proto, &ans.security(audio), ans.audio_addr())?;
        let (proto, session_attrs, media_attrs) = (
            sec.proto.clone(),
            sec.session_attrs.clone(),
            sec.media_attrs.clone(),
        );
        if let Some(local) = self
            .calls
            .get_mut(&key)
            .and_then(|c| c.sip.as_mut())
            .and_then(|s| s.local_sdp.as_mut())
        {
            // RFC 3264 §8: sent again (a 2xx to an offerless re-INVITE), a description that
            // changed here is a new version; `sdp::build_to_send` sees to it.
            let rtcp_mux = local.rtcp_mux && audio.rtcp_mux;
            local.proto = proto;
            local.session_attrs = session_attrs;
            local.media_attrs = media_attrs;
            local.rtcp_mux = rtcp_mux;
        }
        self.push_secure(key, n);
        Ok(())
    }

    fn on_cancel(&mut self, now: Instant, m: &SipInbound) {
        let invite_key = ServerKey {
            branch: m.info.branch.clone(),
            sent_by: m.info.via_sent_by.clone(),
            invite: true,
            cancel: false,
        };
        let Some(&key) = self.invites.get(&invite_key) else {
            // An INVITE still waiting for its x5u certificates is a pending transaction too
            // (RFC 3261 §9.2): end it with 487 and drop the verification.
            let waiting = self.verifying.iter().find_map(|(k, (inv, _))| {
                let SipMessage::Request(r) = &inv.msg else {
                    return None;
                };
                (Self::server_key(inv, &r.method) == invite_key).then_some(*k)
            });
            if let Some((inv, _)) = waiting.and_then(|k| self.verifying.remove(&k)) {
                let tag = msg::token(12);
                self.respond(now, m, 200, "OK", Some(&tag), &Extra::none());
                self.respond(
                    now,
                    &inv,
                    487,
                    "Request Terminated",
                    Some(&tag),
                    &Extra::none(),
                );
                debug!(call_id = %inv.info.call_id, "CANCEL while verifying: 487");
                return;
            }
            self.no_such_dialog(now, m);
            return;
        };
        let _g = self.span(key).entered();
        // RFC 3261 §9.2: the 200 to CANCEL carries the To tag of our INVITE responses.
        let tag = self
            .calls
            .get(&key)
            .and_then(|c| c.sip.as_ref())
            .map(|s| s.local_tag.clone());
        self.respond(now, m, 200, "OK", tag.as_deref(), &Extra::none());
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        let reason =
            msg::first_header(&req.headers, "Reason").unwrap_or_else(|| REQUEST_TERMINATED.into());
        let still_open = self.txn.server_proceeding(&invite_key);
        if !still_open {
            // CANCEL crossed our final response: it has no effect (RFC 3261 §9.2); the caller
            // will ACK and BYE.
            debug!(call = %key, "CANCEL after final response ignored");
            return;
        }
        self.final_to_caller(now, key, 487, "Request Terminated");
        self.end_ript(now, key, &reason);
        self.finish(now, key, CallOutcome::Cancelled);
    }

    /// 405 with the methods we do support (RFC 3261 §21.4.6).
    fn method_not_allowed(&mut self, now: Instant, m: &SipInbound) {
        let extra = Extra::none().header("Allow", msg::ALLOW);
        self.respond(now, m, 405, "Method Not Allowed", None, &extra);
    }

    /// 488 with a Warning saying why, for an offer riptide cannot take (RFC 3261 §20.43).
    fn refuse_offer(&mut self, now: Instant, m: &SipInbound, why: &str) {
        let extra = Extra::none().header("Warning", msg::warning(why));
        self.respond(now, m, 488, "Not Acceptable Here", None, &extra);
    }

    fn on_ack(&mut self, now: Instant, m: &SipInbound) {
        let Some(tag) = &m.info.to_tag else {
            return;
        };
        let Some(&key) = self.dialogs.get(&(m.info.call_id.clone(), tag.clone())) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if let Some(sip) = call.sip.as_mut() {
            if sip
                .pending_2xx
                .as_ref()
                .map(|p| p.cseq == m.info.cseq)
                .unwrap_or(false)
            {
                sip.pending_2xx = None;
                sip.reinvite_in_unacked = false;
                if std::mem::take(&mut sip.route_pending) {
                    sip.retarget(key, &mut self.out);
                }
                let answer_in_ack = std::mem::take(&mut sip.answer_in_ack);
                let bye = sip.bye_after_ack.take();
                self.disarm(key, CallTimer::Retransmit2xx);
                if let Some(reason) = bye {
                    self.send_bye(now, key, &reason);
                    self.finish(now, key, CallOutcome::Answered);
                    return;
                }
                if answer_in_ack {
                    self.on_answer_in_ack(now, key, m);
                }
            }
        }
    }

    /// The caller's answer, in its ACK, to the offer our 2xx made to its offerless re-INVITE
    /// (RFC 3261 §14.2, RFC 3264 §8): the media goes where it says, and a hold it declares is
    /// watched as one. An ACK without SDP leaves the session as it was; an answer whose security
    /// we cannot take ends the call (an ACK cannot be refused).
    fn on_answer_in_ack(&mut self, now: Instant, key: CallKey, m: &SipInbound) {
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        let delayed = (self.calls.get_mut(&key))
            .and_then(|c| c.sip.as_mut())
            .is_some_and(|s| std::mem::take(&mut s.delayed_offer));
        if delayed {
            self.answer_to_delayed_offer(now, key, &req.body);
            return;
        }
        if req.body.is_empty() {
            return;
        }
        let ans = match sdp::parse(&req.body) {
            Ok(a) => a,
            Err(e) => {
                warn!(call = %key, error = %e, "the ACK's SDP answer cannot be read; the session stays as it was");
                return;
            }
        };
        if self.take_dialog_answer(now, key, &ans, "the ACK's SDP answer") {
            self.watch_media(key);
        }
    }

    /// The caller's answer (in `what`, its ACK or PRACK) to the offer we made to its offerless
    /// INVITE, read and checked against it.
    fn delayed_answer(
        &self,
        key: CallKey,
        body: &[u8],
        what: &str,
    ) -> Result<sdp::SessionDesc, String> {
        let offered = (self.calls.get(&key))
            .and_then(|c| c.sip.as_ref())
            .and_then(|s| s.local_sdp.as_ref())
            .map(|l| l.formats.clone())
            .unwrap_or_default();
        if body.is_empty() {
            return Err(format!("no SDP answer in the {what}"));
        }
        let ans = sdp::parse(body).map_err(|e| e.to_string())?;
        let (_, audio) = ans.audio().ok_or("no audio stream")?;
        // Without an address nothing would set the media's security or destination.
        ans.audio_addr().ok_or("no connection address")?;
        negotiate::check_answer(audio, &offered).map_err(|e| e.to_string())?;
        Ok(ans)
    }

    /// The caller's PRACK answers the offer in our first reliable provisional (RFC 3262 §5).
    /// Without an answer we can take, the INVITE gets 488: nothing is confirmed yet.
    pub(super) fn answer_in_prack(&mut self, now: Instant, key: CallKey, body: &[u8]) {
        if let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) {
            sip.delayed_offer = false;
            // The exchange is complete: SDP in the ACK is no answer (RFC 6337 §3.1).
            sip.answer_in_ack = false;
        }
        let latching = self.leg_latching(key);
        let taken = self.delayed_answer(key, body, "PRACK").and_then(|ans| {
            let (_, audio) = ans.audio().ok_or("no audio stream")?;
            self.secure_answer(key, &ans, audio)?;
            self.take_remote_media(key, ans.audio_addr(), audio, latching);
            Ok(())
        });
        if let Err(why) = taken {
            warn!(call = %key, %why, "the PRACK does not answer our offer: 488");
            self.final_to_caller(now, key, 488, "Not Acceptable Here");
            self.end_ript(now, key, "SIP;cause=488;text=\"Not Acceptable Here\"");
            self.finish(now, key, CallOutcome::Failed);
        }
    }

    /// The caller's ACK answers the offer our 2xx made to its offerless INVITE. Without an
    /// answer we can take (none, unreadable, a codec or security we did not offer) the call has
    /// no media: it ends with BYE and 488 on both sides, an ACK being beyond refusal.
    fn answer_to_delayed_offer(&mut self, now: Instant, key: CallKey, body: &[u8]) {
        match self.delayed_answer(key, body, "ACK") {
            Ok(ans) => {
                if self.take_dialog_answer(now, key, &ans, "the ACK's SDP answer") {
                    self.watch_media(key);
                }
            }
            Err(why) => {
                warn!(call = %key, %why, "the ACK does not answer our offer: ending the call");
                let reason = "SIP;cause=488;text=\"Not Acceptable Here\"";
                self.send_bye(now, key, reason);
                self.end_ript(now, key, reason);
                self.finish(now, key, CallOutcome::Answered);
            }
        }
    }

    /// An SDP answer within an answered dialog (to our re-INVITE, or in the ACK after an
    /// offerless one): its security, the peer's direction, and where media goes. An answer
    /// whose security we cannot take ends the call (neither a 2xx nor an ACK can be refused);
    /// false then.
    fn take_dialog_answer(
        &mut self,
        now: Instant,
        key: CallKey,
        ans: &sdp::SessionDesc,
        what: &str,
    ) -> bool {
        let (Some(addr), Some((_, a))) = (ans.audio_addr(), ans.audio()) else {
            return true;
        };
        let latching = self.leg_latching(key);
        if let Err(why) = self.secure_answer(key, ans, a) {
            warn!(call = %key, %why, "{what} refused");
            self.send_bye(now, key, "SIP;cause=488;text=\"Not Acceptable Here\"");
            self.end_ript(now, key, "SIP;cause=488;text=\"Not Acceptable Here\"");
            self.finish(now, key, CallOutcome::Answered);
            return false;
        }
        self.take_remote_media(key, Some(addr), a, latching);
        true
    }

    /// The peer's SDP answer `a` (audio at `addr`, if it gives one), once accepted: whether it
    /// said it would send, and where our media goes.
    fn take_remote_media(
        &mut self,
        key: CallKey,
        addr: Option<SocketAddr>,
        a: &sdp::MediaDesc,
        latching: bool,
    ) {
        if let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) {
            sip.remote_direction = a.direction;
            sip.remote_formats.clone_from(&a.formats);
        }
        self.map_payload_types(key);
        if let Some(addr) = addr {
            self.out.push_back(Output::Media(MediaCmd::SetRemote {
                call: key,
                rtp: addr,
                rtcp: rtcp_of(addr, a),
                rtcp_mux: a.rtcp_mux,
                latching,
            }));
        }
    }

    fn on_in_dialog(&mut self, now: Instant, m: SipInbound) {
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        let tag = m.info.to_tag.clone().unwrap_or_default();
        let Some(&key) = self.dialogs.get(&(m.info.call_id.clone(), tag)) else {
            self.no_such_dialog(now, &m);
            return;
        };
        let _g = self.span(key).entered();
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        if m.info.cseq <= sip.remote_cseq && sip.remote_cseq != 0 && sip.role == SipRole::Uac
            || (sip.role == SipRole::Uas && m.info.cseq <= sip.remote_cseq)
        {
            self.respond(
                now,
                &m,
                500,
                "Server Internal Error (CSeq out of order)",
                None,
                &Extra::none(),
            );
            return;
        }
        sip.remote_cseq = m.info.cseq;
        match req.method {
            Method::Bye => {
                self.respond(now, &m, 200, "OK", None, &Extra::none());
                let reason = msg::first_header(&req.headers, "Reason")
                    .unwrap_or_else(|| NORMAL_CLEARING.to_string());
                let phase = self.calls.get(&key).map(|c| c.phase);
                if phase != Some(Phase::Answered) {
                    // BYE on an early dialog: our INVITE transaction still needs its final.
                    self.final_to_caller(now, key, 487, "Request Terminated");
                    self.end_ript(now, key, &reason);
                    self.finish(now, key, CallOutcome::Cancelled);
                } else {
                    self.end_ript(now, key, &reason);
                    self.finish(now, key, CallOutcome::Answered);
                }
            }
            Method::Invite | Method::Update => self.on_reoffer(now, key, &m),
            Method::Info => self.on_info(now, key, &m),
            Method::PRack => self.on_prack(now, key, &m),
            Method::Options => {
                self.respond(now, &m, 200, "OK", None, &Extra::none());
            }
            _ => {
                self.method_not_allowed(now, &m);
            }
        }
    }

    /// INFO in a dialog: a DTMF key (`application/dtmf-relay` or `application/dtmf`) becomes a
    /// `dtmf` event and RFC 4733 events toward the HTTP/3 side; an empty INFO is answered.
    fn on_info(&mut self, now: Instant, key: CallKey, m: &SipInbound) {
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        if req.body.is_empty() {
            self.respond(now, m, 200, "OK", None, &Extra::none());
            return;
        }
        let ct = msg::first_header(&req.headers, "Content-Type").unwrap_or_default();
        match crate::media::dtmf::parse_info(&ct, &req.body) {
            Ok(digit) => {
                self.respond(now, m, 200, "OK", None, &Extra::none());
                info!(call = %key, digit = %digit.digit, duration_ms = digit.duration_ms, "DTMF by SIP INFO");
                self.send_event(key, Event::dtmf(digit.digit, digit.duration_ms));
                self.out
                    .push_back(Output::Media(MediaCmd::SendDtmf { call: key, digit }));
            }
            Err(crate::media::dtmf::DtmfError::UnsupportedContentType(_)) => {
                let accept = "application/dtmf-relay, application/dtmf";
                self.respond(
                    now,
                    m,
                    415,
                    "Unsupported Media Type",
                    None,
                    &Extra::none().header("Accept", accept),
                );
            }
            Err(e) => {
                let reason = format!("Bad Request ({e})");
                self.respond(now, m, 400, &safe_phrase(&reason), None, &Extra::none());
            }
        }
    }

    /// A key seen in a telephone-event stream: from the legacy peer it is announced to the
    /// HTTP/3 side; toward a `dtmf = "info"` peer it goes as SIP INFO.
    fn on_media_dtmf(
        &mut self,
        now: Instant,
        key: CallKey,
        digit: crate::media::dtmf::Digit,
        toward_legacy: bool,
    ) {
        if !self.calls.contains_key(&key) {
            return;
        }
        let _g = self.span(key).entered();
        info!(digit = %digit.digit, duration_ms = digit.duration_ms, toward_legacy, "DTMF");
        if !toward_legacy {
            self.send_event(key, Event::dtmf(digit.digit, digit.duration_ms));
            return;
        }
        let refused = (self.calls.get(&key))
            .and_then(|c| c.sip.as_ref())
            .is_some_and(|s| s.info_refused);
        if refused {
            debug!(digit = %digit.digit, "not sent: the SIP peer refused INFO");
            return;
        }
        let (ct, body) = crate::media::dtmf::info_body(digit);
        let mut extra = Extra::none();
        extra.body = Some((ct, body.as_bytes()));
        if let Some((bytes, dest, branch)) = self.build_in_dialog(key, "INFO", None, &extra) {
            self.branches.insert(branch.clone(), (key, Purpose::Info));
            self.txn
                .send_request(now, &branch, false, bytes.into(), dest);
        }
    }

    /// re-INVITE or UPDATE with an offer: hold/resume or a session refresh.
    fn on_reoffer(&mut self, now: Instant, key: CallKey, m: &SipInbound) {
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        let is_invite = req.method == Method::Invite;
        // Every re-INVITE or UPDATE we accept is a session refresh (RFC 4028 §9).
        let asked = session_timer::asked(&req.headers);
        if self.refuse_session_interval(now, m, &asked) {
            return;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        // What the peer's re-offer is answered from: the codecs of the media the HTTP/3 side
        // takes from this peer (our SDP's), so that a telephone-event one re-offer left out
        // can come back.
        let relay_from = (call.ript.proposal.as_ref())
            .map(|p| negotiate::proposal_to_formats(p, call.ript.role.peer_directions().1).0);
        let Some(sip) = call.sip.as_mut() else {
            return;
        };
        sip.peer_min_se = sip.peer_min_se.max(asked.min_se.unwrap_or(0));
        if sip.reinvite_out.is_some() && (is_invite || !req.body.is_empty()) {
            // Glare (RFC 3261 §14.2, and RFC 3311 §5.2 for an UPDATE with an offer): our own
            // re-INVITE's offer is in flight. An UPDATE without one (a session refresh) is fine.
            self.respond(now, m, 491, "Request Pending", None, &Extra::none());
            return;
        }
        // RFC 3261 §14.2: also a re-INVITE in the early dialog, before our 2xx.
        let early = sip.role == SipRole::Uas && !sip.final_done;
        if is_invite && (sip.reinvite_in_unacked || sip.pending_2xx.is_some() || early) {
            self.respond(
                now,
                m,
                500,
                "Server Internal Error",
                None,
                &Extra::none().header("Retry-After", "1"),
            );
            return;
        }
        // Learn the peer's new target (RFC 3261 §12.2.2).
        if let Some(c) = msg::first_header(&req.headers, "Contact") {
            let target = msg::addr_uri(&c);
            if target != sip.remote_target {
                sip.remote_target = target.to_string();
                // The route set stays the dialog's next hop for its whole life.
                if sip.route_set.is_empty() {
                    sip.retarget(key, &mut self.out);
                }
            }
        }
        let mut changed = None;
        let our_offer_out = sip.reinvite_in_unacked && sip.answer_in_ack || sip.delayed_offer;
        if !is_invite && !req.body.is_empty() && our_offer_out {
            // RFC 3311 §5.2: our offer (in the 2xx to an offerless INVITE or re-INVITE) still
            // waits for its answer in the ACK, or (delayed offer, before our 2xx) is yet to go.
            self.respond(now, m, 491, "Request Pending", None, &Extra::none());
            return;
        }
        // An offerless re-INVITE: our 2xx offers, and its ACK answers (RFC 3261 §14.2). An
        // UPDATE leaves that as it is.
        if is_invite {
            sip.answer_in_ack = req.body.is_empty();
        }
        if !req.body.is_empty() {
            let offer = match sdp::parse(&req.body) {
                Ok(o) => o,
                Err(e) => {
                    self.refuse_offer(now, m, &format!("bad SDP: {e}"));
                    return;
                }
            };
            let Some((audio_index, audio)) = offer.audio() else {
                self.refuse_offer(now, m, "the offer has no audio stream");
                return;
            };
            // Security first: a refused re-offer leaves keys and ICE as they were.
            let secured = match sip.sec.as_mut().map(|sec| {
                sec.answer(&audio.proto, &offer.security(audio), offer.audio_addr())
                    .map(|n| (n, sec.clone()))
            }) {
                Some(Err(why)) => {
                    self.refuse_offer(now, m, &why);
                    return;
                }
                Some(Ok(x)) => Some(x),
                None => None,
            };
            let latching = sip
                .sec
                .as_ref()
                .map_or(self.cfg.media.latching, |s| s.policy.latching);
            {
                // RFC 3264 §6/§8: the answer follows the new offer's m-lines and payload types
                // and keeps the negotiated codec, which the offer must still contain (riptide does
                // not transcode, so a codec change cannot be accepted).
                let Some(local) = sip.local_sdp.as_mut() else {
                    return;
                };
                let mut formats = Vec::new();
                for f in relay_from.as_deref().unwrap_or(&local.formats) {
                    if let Some(o) = negotiate::counterpart(f, &audio.formats) {
                        formats.push(o.clone());
                    } else if !model::is_auxiliary_codec(&f.name) {
                        let why = format!("{} is no longer offered", f.name);
                        self.refuse_offer(now, m, &why);
                        return;
                    }
                }
                if !formats.is_empty() {
                    local.formats = formats;
                }
                local.audio_index = audio_index;
                local.rejected = offer
                    .media
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != audio_index)
                    .map(|(_, md)| (md.kind.clone(), md.proto.clone(), md.raw_formats.clone()))
                    .collect();
                local.rtcp_mux = audio.rtcp_mux;
                if let Some((_, sec)) = &secured {
                    local.proto = sec.proto.clone();
                    local.session_attrs = sec.session_attrs.clone();
                    local.media_attrs = sec.media_attrs.clone();
                }
                let ours = audio.direction.reverse();
                if local.direction != ours {
                    changed = Some(audio.direction);
                    local.direction = ours;
                }
                sip.remote_direction = audio.direction;
                sip.remote_formats.clone_from(&audio.formats);
                if let Some(addr) = offer.audio_addr() {
                    let rtcp_mux = audio.rtcp_mux;
                    self.out.push_back(Output::Media(MediaCmd::SetRemote {
                        call: key,
                        rtp: addr,
                        rtcp: rtcp_of(addr, audio),
                        rtcp_mux,
                        latching,
                    }));
                }
                if let Some((n, _)) = secured {
                    // Field access, not push_secure: `sip` still borrows the call.
                    self.out.push_back(Output::Media(MediaCmd::Secure {
                        call: key,
                        negotiated: Box::new(n),
                    }));
                }
            }
        }
        // An UPDATE without an offer gets no SDP back (RFC 3311 §5.2): a session refresh. Only
        // a body that goes out is built to send (it takes the next `o=` version).
        let answers = is_invite || !req.body.is_empty();
        let body = match sip.local_sdp.as_mut() {
            Some(l) if answers => sdp::build_to_send(l).into_bytes(),
            _ => Vec::new(),
        };
        let contact = self.cfg.contact(sip.transport);
        let mut extra = Extra::none().header("Contact", contact);
        let (session_headers, session) = session_timer::answer_2xx(&self.cfg.session_timer, &asked);
        for (name, value) in session_headers {
            extra = extra.header(name, value);
        }
        sip.session = session;
        if answers {
            extra = extra.sdp(&body);
        }
        let SipMessage::Request(req) = &m.msg else {
            return;
        };
        let bytes: Bytes = msg::response(req, m.src, 200, "OK", None, &extra).into();
        if is_invite {
            sip.reinvite_in_unacked = true;
            sip.pending_2xx = Some(Pending2xx {
                bytes: bytes.clone(),
                dest: Self::reply_dest(m),
                interval: self.cfg.t1,
                started: now,
                cseq: m.info.cseq,
            });
        }
        let skey = Self::server_key(m, &req.method);
        self.txn.send_response(
            now,
            &skey,
            200,
            SipOut {
                dest: Self::reply_dest(m),
                bytes,
            },
        );
        if is_invite {
            let t1 = self.cfg.t1;
            self.arm(now, key, CallTimer::Retransmit2xx, t1);
        }
        self.arm_session(now, key);
        if let Some(dir) = changed {
            let mut ev = Event::new(EventName::Hold);
            ev.media_direction = Some(dir.as_attr().to_string());
            self.send_event(key, ev);
        }
        self.map_payload_types(key);
        self.watch_media(key);
    }

    // ------------------------------------------------------------------ SIP responses

    fn on_response(&mut self, now: Instant, m: SipInbound) {
        let SipMessage::Response(resp) = &m.msg else {
            return;
        };
        let (code, reason) = msg::status(resp);
        // A CANCEL shares its INVITE's branch (RFC 3261 §9.1); its transaction is keyed apart.
        let branch = if m.info.cseq_method == Method::Cancel {
            cancel_key(&m.info.branch)
        } else {
            m.info.branch.clone()
        };
        if m.info.cseq_method == Method::Options && self.on_ping_response(now, &branch, code) {
            return;
        }
        let Some(&(key, purpose)) = self.branches.get(&branch) else {
            if (200..300).contains(&code) && m.info.cseq_method == Method::Invite {
                // A 2xx retransmission: the dialog re-sends its ACK.
                self.reack(now, &m, resp);
            } else {
                // A retransmitted non-2xx final: the transaction re-sends its ACK.
                self.txn.on_response(now, &branch, code, |_| None);
            }
            return;
        };
        let disp = self
            .txn
            .on_response(now, &branch, code, |req| build_ack_for(req, resp));
        if disp == ResponseDisposition::Absorb {
            if (200..300).contains(&code) && m.info.cseq_method == Method::Invite {
                self.reack(now, &m, resp);
            }
            return;
        }
        if code >= 200 {
            self.branches.remove(&branch);
        }
        let _g = self.span(key).entered();
        match purpose {
            Purpose::Invite => self.on_invite_response(now, key, &m, resp, code, &reason),
            Purpose::ReInvite => self.on_reinvite_response(now, key, resp, code),
            Purpose::Info => self.on_info_response(key, code, &reason),
            Purpose::Bye | Purpose::Cancel | Purpose::Prack => {}
            Purpose::Preflight => self.on_preflight_answer(now, key, resp, code),
        }
    }

    /// A key we sent as INFO was refused. 405, 501 (no INFO here) and 415 (not this body)
    /// will not change within the call (RFC 5057 §5.3: they end the transaction, not the
    /// dialog), so the keys after it are not sent; others are only logged.
    fn on_info_response(&mut self, key: CallKey, code: u16, reason: &str) {
        if code < 300 {
            return;
        }
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        if matches!(code, 405 | 415 | 501) {
            if !sip.info_refused {
                warn!(
                    code,
                    reason, "the SIP peer refused DTMF as INFO: its keys are not sent any more"
                );
            }
            sip.info_refused = true;
        } else {
            warn!(code, reason, "the SIP peer refused a DTMF INFO");
        }
    }

    fn reack(&mut self, now: Instant, m: &SipInbound, resp: &Response) {
        let tag = m.info.from_tag.clone().unwrap_or_default();
        let Some(&key) = self.dialogs.get(&(m.info.call_id.clone(), tag.clone())) else {
            self.after_its_call(now, m, resp, &tag);
            return;
        };
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        // Another fork's answer, a late answer to an attempt the call has moved on from (a
        // trunk address that had timed out, ADR 0020), or an answer to the INVITE a redirect
        // replaces: acknowledged, then ended.
        let other_fork = (sip.remote_tag.is_some() && sip.remote_tag != m.info.to_tag)
            || (!sip.final_done && m.info.cseq != sip.local_cseq)
            || sip.redirect_lookup.is_some();
        if other_fork {
            let reason = if sip.final_done {
                COMPLETED_ELSEWHERE
            } else {
                REQUEST_TERMINATED
            };
            let may_bye = sip.forks_ended < MAX_STRAY_BYES;
            let pracked = sip.rel.prack_cseq;
            debug!(call = %key, tag = m.info.to_tag.as_deref().unwrap_or(""), "ending a second fork");
            if self.end_stray_dialog(now, m, resp, reason, (may_bye, pracked)) {
                if let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) {
                    sip.forks_ended += 1;
                }
            }
            return;
        }
        if let Some((_, ack)) = sip.ack.clone().filter(|(cseq, _)| *cseq == m.info.cseq) {
            self.out.push_back(Output::Sip(ack));
        }
    }

    /// A 2xx to one of our INVITEs after its call ended (`local_tag` is its From tag): a fork
    /// that answered late, or an answer that crossed the end of the call. RFC 3261 §13.2.2.4:
    /// ACK it, then end its dialog.
    fn after_its_call(&mut self, now: Instant, m: &SipInbound, resp: &Response, local_tag: &str) {
        let h = self.dialog_hash(&m.info.call_id, local_tag, None);
        let Some(ended) = self.ended_invites.get(now, &h) else {
            debug!(call_id = %m.info.call_id, "a 2xx for no INVITE of ours: dropped");
            return;
        };
        // Only where an INVITE of the call went can answer it, and only with a CSeq it used:
        // nobody else can have us send requests to an address of their choosing.
        let src = m.src.ip();
        let from_hop = src == ended.next_hop || ended.earlier_hops.contains(&src);
        let (answered, byes, pracked) = (ended.answered, ended.byes, ended.prack_cseq);
        if !from_hop || m.info.cseq > ended.cseq {
            warn!(sip_call_id = %m.info.call_id, src = %m.src, cseq = m.info.cseq, "a 2xx for an ended call from elsewhere, or with a CSeq it never used: dropped");
            return;
        }
        info!(
            sip_call_id = %m.info.call_id,
            tag = m.info.to_tag.as_deref().unwrap_or(""),
            "a 2xx after its call ended: ACK and BYE"
        );
        let reason = if answered {
            COMPLETED_ELSEWHERE
        } else {
            REQUEST_TERMINATED
        };
        if self.end_stray_dialog(now, m, resp, reason, (byes < MAX_STRAY_BYES, pracked)) {
            if let Some(e) = self.ended_invites.get_mut(now, &h) {
                e.byes += 1;
            }
        }
    }

    /// The dialog a response to our INVITE sets up, as the response describes it: its From
    /// (our tag), To (the UAS's tag), Call-ID, its Contact as the remote target, and its
    /// Record-Route reversed as the route set (RFC 3261 §12.1.2). Requests go to the first
    /// route, else the Contact, when that is an IP literal, and otherwise back where the
    /// response came from. None without From or To, or with more routes than
    /// `MAX_STRAY_ROUTES` (or one longer than `MAX_ROUTE_LEN`).
    fn dialog_of_response(&self, m: &SipInbound, resp: &Response) -> Option<ResponseDialog> {
        let from = msg::first_header(&resp.headers, "From")?;
        let to = msg::first_header(&resp.headers, "To")?;
        let target = msg::first_header(&resp.headers, "Contact")
            .map(|c| msg::addr_uri(msg::first_of_list(&c)).to_string())
            .unwrap_or_else(|| msg::addr_uri(&to).to_string());
        let mut routes = msg::record_route(&resp.headers);
        if routes.len() > MAX_STRAY_ROUTES || routes.iter().any(|r| r.len() > MAX_ROUTE_LEN) {
            warn!(sip_call_id = %m.info.call_id, routes = routes.len(), "a response with too many or too long Record-Route entries: no request sent in its dialog");
            return None;
        }
        routes.reverse();
        let came_from = Dest {
            addr: m.src,
            transport: m.transport,
            conn: m.conn,
        };
        let hop = routes.first().map(|r| msg::addr_uri(r)).or(Some(&target));
        let dest = match next_hop(&came_from, hop) {
            NextHop::Addr(d) => d,
            NextHop::Keep | NextHop::Lookup(..) => came_from,
        };
        let via_host = self.cfg.via_host(dest.transport);
        let (uri, routes) = request_uri_and_routes(&target, &routes);
        let (uri, routes) = (uri.into_owned(), routes.into_owned());
        Some(ResponseDialog {
            from,
            to,
            call_id: m.info.call_id.clone(),
            uri,
            routes,
            target,
            via_host,
            dest,
        })
    }

    /// Ends the dialog that a 2xx to our INVITE made and that no call keeps: another fork's,
    /// or one after its call (RFC 3261 §13.2.2.4). Each copy of the 2xx is ACKed; the first one
    /// also gets a BYE with `reason` if `may_bye`, with a CSeq above the 2xx's and above
    /// `pracked` (our last PRACK's, which may have gone in that early dialog). Returns whether a
    /// BYE went. A 2xx with more
    /// routes than `MAX_STRAY_ROUTES` (or one longer than `MAX_ROUTE_LEN`) gets nothing.
    ///
    /// Everything comes from the 2xx: its From (our tag), To (the fork's tag), Call-ID and
    /// CSeq, its Contact as the remote target, and its Record-Route reversed as the route set
    /// (§12.1.2). The requests go to the first route, else the Contact, when that is an IP
    /// literal, and otherwise back where the 2xx came from: a dialog that is being ended is
    /// not worth a DNS lookup, and the proxy nearest us, the first route, is what sent the 2xx.
    fn end_stray_dialog(
        &mut self,
        now: Instant,
        m: &SipInbound,
        resp: &Response,
        reason: &str,
        (may_bye, pracked): (bool, u32),
    ) -> bool {
        let Some(dialog) = self.dialog_of_response(m, resp) else {
            return false;
        };
        let dest = dialog.dest;
        let send = |method: &str, cseq: u32, extra: &Extra<'_>| dialog.request(method, cseq, extra);
        let (_, ack) = send("ACK", m.info.cseq, &Extra::none());
        self.out.push_back(Output::Sip(SipOut { dest, bytes: ack }));
        let local_tag = m.info.from_tag.as_deref().unwrap_or("");
        let h = self.dialog_hash(&m.info.call_id, local_tag, m.info.to_tag.as_deref());
        let Some(cseq) = m.info.cseq.max(pracked).checked_add(1) else {
            return false;
        };
        if !may_bye || self.stray_byes.contains(now, &h) {
            return false;
        }
        if self.stray_byes.insert(now, h, ()) == Inserted::Evicting {
            self.metrics
                .ended_dialogs_evicted
                .fetch_add(1, Ordering::Relaxed);
        }
        let extra = Extra::none().header("Reason", reason);
        let (branch, bye) = send("BYE", cseq, &extra);
        self.txn.send_request(now, &branch, false, bye, dest);
        true
    }

    /// The key of a dialog (or, without `remote_tag`, of an INVITE) in `ended_invites` and
    /// `stray_byes`.
    fn dialog_hash(&self, call_id: &str, local_tag: &str, remote_tag: Option<&str>) -> u64 {
        use std::hash::BuildHasher;
        self.dialog_hasher
            .hash_one((call_id, local_tag, remote_tag))
    }

    fn on_invite_response(
        &mut self,
        now: Instant,
        key: CallKey,
        m: &SipInbound,
        resp: &Response,
        code: u16,
        reason: &str,
    ) {
        let latching = self.leg_latching(key);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(sip) = call.sip.as_mut() else {
            return;
        };
        if code < 200 {
            // Any provisional, 100 included, allows a CANCEL (RFC 3261 §9.1).
            sip.got_provisional = true;
            if let Some(reason) = sip.cancel_wanted.take() {
                self.send_cancel(now, key, &reason);
                return;
            }
            if code == 100 {
                return;
            }
            let Some(reliable) = self.take_provisional(now, key, m, resp) else {
                return;
            };
            let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
                return;
            };
            let mut media = false;
            if !resp.body.is_empty() {
                sip.early_answer = true;
                let offered = (sip.local_sdp.as_ref())
                    .map(|l| l.formats.clone())
                    .unwrap_or_default();
                let checked = match sdp::parse(&resp.body) {
                    Ok(ans) => match (ans.audio_addr(), ans.audio()) {
                        (Some(addr), Some((_, audio))) => negotiate::check_answer(audio, &offered)
                            .map_err(|e| e.to_string())
                            .and_then(|_| self.secure_answer(key, &ans, audio))
                            .map(|_| {
                                media = true;
                                self.take_remote_media(key, Some(addr), audio, latching);
                            }),
                        _ => Err("no audio stream with an address".to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                };
                if let Err(why) = &checked {
                    // No early media then; the 2xx's answer decides the call, or, when this
                    // provisional was reliable and the 2xx brings none, this one refuses it.
                    warn!(call = %key, %why, "early media refused");
                }
                if reliable {
                    self.reliable_answer(key, checked);
                }
            }
            if let Some(c) = self.calls.get_mut(&key) {
                if media {
                    c.phase = Phase::Early;
                }
            }
            let mut ev = Event::new(if code == 183 && media {
                EventName::Proceeding
            } else {
                EventName::Alerting
            });
            if code == 183 && !media {
                ev.name = EventName::Proceeding;
            }
            ev.media = media.then_some(true);
            self.send_event(key, ev);
            return;
        }
        if (200..300).contains(&code) {
            if let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) {
                if let Some(sec) = &sip.sec {
                    sip.info_refused |= no_info_unasked(&resp.headers, sec);
                }
            }
            self.on_invite_2xx(now, key, m, resp);
            return;
        }
        if matches!(code, 401 | 407) && self.digest_retry(now, key, resp, code) {
            return;
        }
        if code == 422 && self.session_retry(now, key, resp) {
            return;
        }
        if code == 503 {
            let retry_after = msg::first_header(&resp.headers, "Retry-After")
                .and_then(|v| retry_after_secs(&v))
                .map(|s| Duration::from_secs(s.min(MAX_AVOID_SECS)));
            if self.fail_over(now, key, retry_after, Failover::Unavailable) {
                return;
            }
        }
        if (300..400).contains(&code) && self.follow_redirect(now, key, resp, code, reason) {
            return;
        }
        self.invite_failed(now, key, code, reason);
    }

    /// Our INVITE's final failure `code` ends the call.
    fn invite_failed(&mut self, now: Instant, key: CallKey, code: u16, reason: &str) {
        let name = match code {
            486 | 600 | 603 => EventName::Declined,
            408 | 480 => EventName::Noanswer,
            _ => EventName::Failed,
        };
        let mut ev = Event::new(name.clone());
        ev.code = Some(code);
        ev.reason = Some(reason.to_string());
        self.send_event(key, ev);
        let outcome = match name {
            EventName::Declined => CallOutcome::Declined,
            EventName::Noanswer => CallOutcome::NoAnswer,
            _ => CallOutcome::Failed,
        };
        let cancelled = self
            .calls
            .get(&key)
            .and_then(|c| c.sip.as_ref())
            .map(|s| s.cancel_sent)
            .unwrap_or(false);
        self.end_server_call(key);
        self.finish(
            now,
            key,
            if cancelled {
                CallOutcome::Cancelled
            } else {
                outcome
            },
        );
    }

    /// A 3xx: the call follows its first Contact when the trunk allows one more redirect, the
    /// caller has not given up and the call is not a browser's (destination policy). An IP
    /// literal gets the INVITE at once. A host name is looked up first (RFC 3263, as a trunk's),
    /// and its addresses are tried in turn; not over TLS, where there would be no name to check
    /// the server's certificate against. False: not followed.
    fn follow_redirect(
        &mut self,
        now: Instant,
        key: CallKey,
        resp: &Response,
        code: u16,
        reason: &str,
    ) -> bool {
        let Some(target) = msg::first_header(&resp.headers, "Contact")
            .map(|c| msg::addr_uri(msg::first_of_list(&c)).to_string())
        else {
            return false;
        };
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return false;
        };
        let trunk_max = sip
            .trunk
            .and_then(|t| self.cfg.trunks.get(t))
            .map(|t| t.max_redirects)
            .unwrap_or(0);
        if sip.redirects >= trunk_max
            || sip.cancel_wanted.is_some()
            || sip.cancel_sent
            || sip.browser_origin.is_some()
        {
            return false;
        }
        let Some((_, _, transport)) = msg::uri_target(&target) else {
            return false;
        };
        let literal = msg::uri_socket(&target).map(|(addr, _)| addr);
        // Not from TLS to a weaker transport (RFC 3261 §26.2.2), and not to a TLS host name.
        if (sip.transport == Transport::Tls && transport != Transport::Tls)
            || (literal.is_none() && transport == Transport::Tls)
        {
            return false;
        }
        sip.redirects += 1;
        sip.failover.clear();
        sip.invite_uri = target.clone();
        sip.transport = transport;
        sip.invite_routes.clear();
        match literal {
            Some(addr) => {
                sip.dest = Dest {
                    addr,
                    transport,
                    conn: None,
                };
                info!(call = %key, %target, "following redirect");
                self.send_invite(now, key);
            }
            None => {
                sip.redirect_lookup = Some((code, reason.to_string()));
                info!(call = %key, %target, "following redirect: looking up its host");
                self.out.push_back(Output::ResolveHop {
                    call: key,
                    uri: target,
                    transport,
                });
            }
        }
        true
    }

    /// The addresses of a redirect target's host name (see `follow_redirect`): the INVITE goes
    /// to the first, and on to the others as it would to a trunk's (timeout, 503).
    fn on_redirect_addr(
        &mut self,
        now: Instant,
        key: CallKey,
        addrs: Result<Vec<SocketAddr>, String>,
    ) {
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        let Some((code, reason)) = sip.redirect_lookup.take() else {
            return;
        };
        match addrs {
            Ok(a) if !a.is_empty() => {
                sip.dest = Dest {
                    addr: a[0],
                    transport: sip.transport,
                    conn: None,
                };
                sip.failover = a[1..].to_vec();
                self.send_invite(now, key);
            }
            other => {
                let e = other.err().unwrap_or_else(|| "no address".into());
                warn!(call = %key, target = %sip.invite_uri, error = %e, "redirect target not found in DNS");
                self.invite_failed(now, key, code, &reason);
            }
        }
    }

    fn on_invite_2xx(&mut self, now: Instant, key: CallKey, m: &SipInbound, resp: &Response) {
        let latching = self.leg_latching(key);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(sip) = call.sip.as_mut() else {
            return;
        };
        sip.final_done = true;
        sip.remote_tag = m.info.to_tag.clone();
        if let Some(c) = msg::first_header(&resp.headers, "Contact") {
            sip.remote_target = msg::addr_uri(&c).to_string();
        }
        // RFC 3261 §12.1.2: the UAC's route set is the Record-Route list reversed.
        let mut rr = msg::record_route(&resp.headers);
        rr.reverse();
        sip.route_set = rr;
        sip.retarget(key, &mut self.out);
        let remote_tag = sip.remote_tag.clone().unwrap_or_default();
        self.dialogs
            .insert((sip.call_id.clone(), sip.local_tag.clone()), key);
        let _ = remote_tag;
        // ACK the 2xx (a new transaction per RFC 3261 §13.2.2.4) with the INVITE's CSeq.
        let cseq = sip.invite_sent.map_or(sip.local_cseq, |(_, c)| c);
        self.send_2xx_ack(key, cseq);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let cancel_wanted = call
            .sip
            .as_ref()
            .map(|s| s.cancel_wanted.is_some() || s.cancel_sent)
            .unwrap_or(false);
        if cancel_wanted || call.phase == Phase::Ended {
            // The 200 crossed our CANCEL: the dialog exists now, so end it with BYE.
            let reason = call
                .sip
                .as_mut()
                .and_then(|s| s.cancel_wanted.take())
                .unwrap_or_else(|| REQUEST_TERMINATED.into());
            self.send_bye(now, key, &reason);
            self.finish(now, key, CallOutcome::Cancelled);
            return;
        }
        // Check the answer picked one of our codecs and point media at it.
        let offered = call
            .sip
            .as_ref()
            .and_then(|s| s.local_sdp.as_ref())
            .map(|l| l.formats.clone())
            .unwrap_or_default();
        match sdp::parse(&resp.body) {
            Ok(ans) => {
                let audio = ans.audio().map(|(_, a)| a.clone());
                let checked = audio.map(|a| {
                    negotiate::check_answer(&a, &offered)
                        .map_err(|e| e.to_string())
                        // Without one nothing would tell the leg where media goes, or let it
                        // take any (ADR 0032).
                        .and_then(|_| {
                            ans.audio_addr()
                                .map(|_| ())
                                .ok_or_else(|| "no connection address".to_string())
                        })
                        .and_then(|_| self.secure_answer(key, &ans, &a))
                        .map(|_| a)
                });
                match checked {
                    Some(Ok(a)) => self.take_remote_media(key, ans.audio_addr(), &a, latching),
                    Some(Err(e)) => {
                        warn!(call = %key, error = %e, "answer refused");
                        self.refuse_answer(now, key, &e);
                        return;
                    }
                    None => {}
                }
            }
            Err(e) => match self.answer_in_provisional(key) {
                // RFC 3262 §5: the answer came in a reliable provisional, and it is the answer.
                Some(Err(why)) => {
                    warn!(call = %key, error = %why, "the answer in a reliable provisional was refused");
                    self.refuse_answer(now, key, &why);
                    return;
                }
                Some(Ok(())) => {}
                // Without any answer the 2xx is broken: keep the early answer's media if one
                // was taken, else the call would have none (ADR 0032).
                None if self
                    .calls
                    .get(&key)
                    .and_then(|c| c.sip.as_ref())
                    .is_some_and(|s| !s.remote_formats.is_empty()) =>
                {
                    debug!(call = %key, error = %e, "2xx without usable SDP: the early answer stands")
                }
                None => {
                    let why = format!("no usable SDP answer: {e}");
                    warn!(call = %key, %why, "answer refused");
                    self.refuse_answer(now, key, &why);
                    return;
                }
            },
        }
        let timers = self.cfg.session_timer.on();
        if let Some(c) = self.calls.get_mut(&key) {
            c.phase = Phase::Answered;
            c.answered_at = Some(now);
            if let Some(sip) = c.sip.as_mut().filter(|_| timers) {
                sip.session = session_timer::as_uac(session_timer::response_se(&resp.headers));
            }
        }
        self.arm_session(now, key);
        self.disarm(key, CallTimer::NoAnswer);
        self.send_event(key, Event::new(EventName::Answered));
        self.watch_media(key);
    }

    /// 481: the request names a dialog or transaction we do not have.
    fn no_such_dialog(&mut self, now: Instant, m: &SipInbound) {
        let reason = "Call/Transaction Does Not Exist";
        self.respond(now, m, 481, reason, None, &Extra::none());
    }

    /// The answer to our INVITE was refused (`why`) after its 2xx was ACKed: BYE with 488, and
    /// the call fails on the HTTP/3 side.
    fn refuse_answer(&mut self, now: Instant, key: CallKey, why: &str) {
        self.send_bye(now, key, "SIP;cause=488;text=\"Not Acceptable Here\"");
        let mut ev = Event::failed(488, "Not Acceptable Here");
        ev.reason = Some(format!("Not Acceptable Here: {why}"));
        self.send_event(key, ev);
        self.end_server_call(key);
        self.finish(now, key, CallOutcome::Failed);
    }

    fn on_reinvite_response(&mut self, now: Instant, key: CallKey, resp: &Response, code: u16) {
        if code < 200 {
            return;
        }
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        let Some((_, dir, prev, cseq)) = sip.reinvite_out.take() else {
            return;
        };
        self.disarm(key, CallTimer::ReinviteGuard);
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        if (200..300).contains(&code) {
            sip.reinvite_retried = false;
            // A refresh (RFC 4028 §7.4): the 2xx sets the interval and refresher anew, and
            // without Session-Expires ends the session timer.
            if let Some(t) = sip.session {
                let se = session_timer::response_se(&resp.headers);
                sip.session = if se.is_none() && !session_timer::supports_timer(&resp.headers) {
                    // A peer that does not know timers answers without them (§7.2): we keep
                    // the session timer and its refreshes.
                    Some(SessionTimer {
                        we_refresh: true,
                        refresh_sent: false,
                        ..t
                    })
                } else {
                    session_timer::as_uac(se)
                };
            }
            // Target refresh (RFC 3261 §12.2.1.2) and the answer's media address.
            if let Some(c) = msg::first_header(&resp.headers, "Contact") {
                let target = msg::addr_uri(&c);
                if target != sip.remote_target {
                    sip.remote_target = target.to_string();
                    if sip.route_set.is_empty() {
                        sip.retarget(key, &mut self.out);
                    }
                }
            }
            self.send_2xx_ack(key, cseq);
            self.arm_session(now, key);
            if let Ok(ans) = sdp::parse(&resp.body) {
                if !self.take_dialog_answer(now, key, &ans, "re-INVITE answer") {
                    return;
                }
            }
            // The direction it offered now holds.
            self.watch_media(key);
            return;
        }
        // Refused: the session stays as it was before the offer (RFC 3264 §8).
        if let Some(local) = sip.local_sdp.as_mut() {
            local.direction = prev;
        }
        // A digest trunk's challenge (its nonce expired during the call): the same offer
        // again with credentials for it, once in a row.
        let retried = std::mem::take(&mut sip.reinvite_retried);
        // A 422 to a refresh (RFC 4028 §7.4): the session interval raised to its Min-SE, and
        // the same offer again.
        let min_se = msg::first_header(&resp.headers, "Min-SE")
            .and_then(|v| session_timer::parse_min_se(&v))
            .filter(|m| code == 422 && *m <= session_timer::MAX_SE);
        let raised = match (sip.session.as_mut(), min_se) {
            (Some(t), Some(min)) if !retried && min > t.secs => {
                t.secs = min;
                sip.session_ask.1 = sip.session_ask.1.max(min);
                true
            }
            _ => false,
        };
        if raised
            || matches!(code, 401 | 407) && !retried && self.dialog_digest_answer(key, resp, code)
        {
            if let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) {
                sip.reinvite_retried = true;
            }
            self.send_reinvite(now, key, dir);
            return;
        }
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        if code == 408 || code == 481 {
            // RFC 3261 §14.1: the dialog is gone.
            self.send_bye(now, key, "SIP;cause=408;text=\"Request Timeout\"");
            self.end_ript(now, key, "Q.850;cause=41;text=\"Temporary failure\"");
            self.finish(now, key, CallOutcome::Answered);
            return;
        }
        if code == 491 {
            // RFC 3261 §14.1: retry after a random wait; the Call-ID owner waits 2.1–4 s.
            let owner = sip.role == SipRole::Uac;
            sip.glare_retry = Some(dir);
            let ms = if owner {
                2100 + rand_ms(1900)
            } else {
                rand_ms(2000)
            };
            self.arm(now, key, CallTimer::GlareRetry, Duration::from_millis(ms));
        }
        self.watch_media(key);
    }

    /// A transport error toward `addr` (RFC 3263 §4.3, RFC 3261 §8.1.3.1): each INVITE of ours
    /// that was waiting there with no response at all goes to the trunk's next address, or the
    /// call fails as with a 503, instead of waiting for Timer B.
    fn on_unreachable(&mut self, now: Instant, addr: SocketAddr, transport: Transport) {
        self.ping_unreachable(addr, transport);
        let hit: Vec<(CallKey, String)> = self
            .calls
            .iter()
            .filter_map(|(k, c)| {
                let s = c.sip.as_ref()?;
                let waiting = s.role == SipRole::Uac
                    && s.dest.addr == addr
                    && s.dest.transport == transport
                    && !s.got_provisional
                    && !s.final_done;
                Some((*k, s.invite_branch.clone().filter(|_| waiting)?))
            })
            .filter(|(_, b)| {
                self.branches
                    .get(b)
                    .is_some_and(|(_, p)| *p == Purpose::Invite)
            })
            .collect();
        for (key, branch) in hit {
            let _g = self.span(key).entered();
            self.txn.forget_client(&branch);
            self.branches.remove(&branch);
            if self.fail_over(now, key, Some(AVOID_AFTER_TIMEOUT), Failover::Transport) {
                continue;
            }
            warn!(call = %key, %addr, "INVITE could not be sent and no address is left");
            self.send_event(key, Event::failed(503, "Service Unavailable"));
            self.end_server_call(key);
            self.finish(now, key, CallOutcome::Failed);
        }
    }

    fn on_client_timeout(&mut self, now: Instant, branch: &str) {
        if self.on_ping_timeout(branch) {
            return;
        }
        let Some((key, purpose)) = self.branches.remove(branch) else {
            return;
        };
        match purpose {
            Purpose::Invite => {
                // Timer B: nobody answered at all.
                if self.fail_over(now, key, Some(AVOID_AFTER_TIMEOUT), Failover::Timeout) {
                    return;
                }
                let mut ev = Event::failed(408, "Request Timeout");
                ev.name = EventName::Failed;
                self.send_event(key, ev);
                self.end_server_call(key);
                self.finish(now, key, CallOutcome::Failed);
            }
            Purpose::Bye | Purpose::Cancel | Purpose::Info | Purpose::Prack => {}
            Purpose::Preflight => self.preflight_failed(now, key, "no answer to the preflight"),
            Purpose::ReInvite => {
                // RFC 3261 §14.1: a re-INVITE timeout ends the dialog.
                let reason = "SIP;cause=408;text=\"Request Timeout\"";
                self.send_bye(now, key, reason);
                self.end_ript(
                    now,
                    key,
                    "Q.850;cause=102;text=\"Recovery on timer expiry\"",
                );
                self.finish(now, key, CallOutcome::Answered);
            }
        }
    }

    // ------------------------------------------------------------------ RIPT in

    fn on_ript(&mut self, now: Instant, e: RiptEvent) {
        let key = match &e {
            RiptEvent::IncomingCall { .. } => None,
            RiptEvent::ServerEvent { call, .. }
            | RiptEvent::ServerEventsClosed { call }
            | RiptEvent::ServerEventsOpened { call }
            | RiptEvent::CallCreated { call, .. }
            | RiptEvent::CreateFailed { call, .. }
            | RiptEvent::ClientEvent { call, .. }
            | RiptEvent::ClientEventsLost { call }
            | RiptEvent::Offered { call, .. }
            | RiptEvent::TakeCall { call, .. } => Some(*call),
            RiptEvent::HandlerRegistered { .. }
            | RiptEvent::HandlerFailed { .. }
            | RiptEvent::HandlerEvent { .. } => None,
        };
        let _g = key.map(|k| self.span(k).entered());
        match e {
            RiptEvent::IncomingCall {
                req,
                tg,
                request,
                principal,
                origin,
                tns,
            } => self.incoming_verified_first(
                now,
                req,
                tg,
                request,
                Caller {
                    principal,
                    origin,
                    tns,
                },
            ),
            RiptEvent::CallCreated { call, description } => {
                self.on_call_created(now, call, description)
            }
            RiptEvent::CreateFailed {
                call,
                status,
                reason,
            } => {
                if self.orphans.remove(&call).is_some() {
                    return;
                }
                let (code, phrase) = match status {
                    0 => (503, "Service Unavailable"),
                    403 => (403, "Forbidden"),
                    404 => (404, "Not Found"),
                    429 | 503 => (503, "Service Unavailable"),
                    _ => (500, "Server Internal Error"),
                };
                warn!(%call, status, %reason, "RIPT call refused");
                self.final_to_caller(now, call, code, phrase);
                self.finish(now, call, CallOutcome::Failed);
            }
            RiptEvent::ClientEvent { call, event } | RiptEvent::ServerEvent { call, event } => {
                self.on_event(now, call, event)
            }
            RiptEvent::ClientEventsLost { call } => {
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                c.ript.reopen_attempts += 1;
                let n = c.ript.reopen_attempts;
                if n > 8 {
                    warn!(%call, "events stream could not be re-opened; ending the call");
                    self.fail_call(now, call, 503, "Service Unavailable (events stream lost)");
                    return;
                }
                let backoff = Duration::from_millis((100u64 << n.min(5)).min(2000));
                self.arm(now, call, CallTimer::EventsReopen, backoff);
            }
            RiptEvent::ServerEventsClosed { call } => {
                let grace = self.cfg.events_grace;
                self.arm(now, call, CallTimer::EventsGrace, grace);
            }
            RiptEvent::ServerEventsOpened { call } => self.disarm(call, CallTimer::EventsGrace),
            RiptEvent::Offered { call, handlers } => self.on_offered(now, call, handlers),
            RiptEvent::TakeCall {
                req,
                call,
                handler,
                origin,
            } => self.on_take(now, req, call, handler, origin),
            // Handler registration is a client of someone else's gateway (`riptide answer`).
            RiptEvent::HandlerRegistered { .. }
            | RiptEvent::HandlerFailed { .. }
            | RiptEvent::HandlerEvent { .. } => {}
        }
    }

    fn route_tg(&self, tg: &str, dest: &str) -> Option<TgTarget> {
        let tg = self.cfg.tgs.iter().find(|t| t.name == tg)?;
        tg.routes
            .iter()
            .filter(|r| dest.starts_with(r.prefix.as_str()))
            .max_by_key(|r| r.prefix.len())
            .map(|r| r.target.clone())
    }

    fn on_incoming_call(
        &mut self,
        now: Instant,
        req: ReqId,
        tg: String,
        request: CallRequest,
        caller: Caller,
    ) {
        let Caller {
            principal,
            origin,
            tns,
        } = caller;
        let respond_err = |me: &mut Self, p: Problem| {
            me.count_rejected();
            me.out.push_back(Output::Ript(RiptCmd::RespondCall {
                req,
                result: Err(p),
            }));
        };
        if self.calls.len() >= self.cfg.max_calls {
            respond_err(
                self,
                Problem::new(503, "Service Unavailable", "call limit reached"),
            );
            return;
        }
        if self.per_client.get(&principal).copied().unwrap_or(0) >= self.cfg.max_calls_per_client {
            respond_err(
                self,
                Problem::new(
                    429,
                    "Too Many Requests",
                    "this client's call limit is reached",
                ),
            );
            return;
        }
        let Some(target) = self.route_tg(&tg, &request.destination) else {
            respond_err(
                self,
                Problem::new(
                    404,
                    "Not Found",
                    format!("no route for {} on {tg}", request.destination),
                ),
            );
            return;
        };
        let Some(adv) = request.advertisement.clone() else {
            respond_err(
                self,
                Problem::new(400, "Bad Request", "the call carries no advertisement"),
            );
            return;
        };
        let codecs = match &target {
            TgTarget::Echo => crate::config::default_codecs(),
            TgTarget::Trunk(t) => self.cfg.trunks[*t].codecs.clone(),
        };
        let key = self.new_key();
        let id = format!("{}-{}", self.cfg.node, uuid::Uuid::new_v4());
        let uri = self.call_uri(&tg, &id);
        let proposal = negotiate::choose(&adv, &codecs);
        let mut call = Call {
            phase: Phase::Setup,
            sip: None,
            ript: RiptLeg {
                role: RiptRole::Server,
                id: Some(id.clone()),
                uri: Some(uri.clone()),
                out_seq: 0,
                in_seq: None,
                proposal: proposal.as_ref().ok().cloned(),
                reopen_attempts: 0,
                echo: target == TgTarget::Echo,
                unanswered_pings: 0,
                caller_adv: None,
            },
            port: None,
            destination: request.destination.clone(),
            from: request.from.clone(),
            timers: [0; N_TIMERS],
            started: now,
            answered_at: None,
            span: call_span(key),
            principal: Some(principal.clone()),
            // RFC 8588 / ATIS-1000074 §5.2.3: A when the client's token lists the calling
            // number, B for a known client with an unlisted number.
            attest: match request.from.as_deref().and_then(crate::stir::canonical_tn) {
                Some(tn) if tns.contains(&tn) => crate::stir::Attestation::A,
                _ => crate::stir::Attestation::B,
            },
            upstream_identity: request
                .passport
                .as_deref()
                .filter(|_| request.verstat.as_deref() == Some("TN-Validation-Passed"))
                .and_then(identity_for),
        };
        *self.per_client.entry(principal.clone()).or_insert(0) += 1;
        call.span.record("ript_call", id.as_str());
        let _g = call.span.clone().entered();
        info!(%principal, destination = %request.destination, "RIPT call in");
        self.metrics.call_started();
        let description = CallDescription {
            uri,
            handler: request.handler.clone(),
            direction: None,
            destination: request.destination.clone(),
            from: request.from.clone(),
            state: CallState::Proceeding,
            proposal: proposal.clone().unwrap_or_default(),
            media_ticket: None,
        };
        self.out.push_back(Output::Ript(RiptCmd::RespondCall {
            req,
            result: Ok(CallAccepted {
                key,
                id,
                description,
            }),
        }));
        let proposal = match proposal {
            Ok(p) => p,
            Err(e) => {
                self.calls.insert(key, Box::new(call));
                let mut ev = Event::failed(488, "Not Acceptable Here");
                ev.reason = Some(format!("Not Acceptable Here: {e}"));
                self.send_event(key, ev);
                self.end_server_call(key);
                self.finish(now, key, CallOutcome::Failed);
                return;
            }
        };
        match target {
            TgTarget::Echo => {
                call.phase = Phase::Answered;
                call.answered_at = Some(now);
                self.calls.insert(key, Box::new(call));
                self.out
                    .push_back(Output::Media(MediaCmd::Echo { call: key }));
                self.send_event(key, Event::new(EventName::Answered));
                // RIPT-00: a call with no events stream for 30 s is ended, including one whose
                // client never opened a stream at all (it gave up on the POST, or crashed).
                let grace = self.cfg.events_grace;
                self.arm(now, key, CallTimer::EventsGrace, grace);
                if let Some(k) = self.cfg.keepalive {
                    self.arm(now, key, CallTimer::Keepalive, k);
                }
            }
            TgTarget::Trunk(t) if self.cfg.trunks[t].unresolved => {
                warn!(trunk = %self.cfg.trunks[t].name, "no address for the trunk's host name yet: 503");
                self.calls.insert(key, Box::new(call));
                self.send_event(key, Event::failed(503, "Service Unavailable"));
                self.end_server_call(key);
                self.finish(now, key, CallOutcome::Failed);
            }
            TgTarget::Trunk(t) => {
                let Some(port) = self.take_port(now) else {
                    self.calls.insert(key, Box::new(call));
                    self.send_event(key, Event::failed(503, "Service Unavailable"));
                    self.end_server_call(key);
                    self.finish(now, key, CallOutcome::Failed);
                    return;
                };
                call.port = Some(port);
                let trunk = self.cfg.trunks[t].clone();
                let (first, mut failover) = self.trunk_order(now, t, &trunk);
                // A browser's call reaches a preflight trunk only at an address that allowed its
                // origin (ADR 0009): it is not failed over to one that was not asked.
                if origin.is_some() && trunk.preflight {
                    failover.clear();
                }
                let (formats, ptime) = negotiate::proposal_to_formats(&proposal, Direction::S2c);
                let mut sec = LegSecurity::new(
                    trunk.media,
                    &self.cfg.dtls_fingerprint,
                    self.cfg.media_ip,
                    port,
                );
                if let Err(e) = sec.offer() {
                    warn!(call = %key, error = %e, "no SRTP keys for the offer");
                    self.calls.insert(key, Box::new(call));
                    self.send_event(key, Event::failed(500, "Server Internal Error"));
                    self.end_server_call(key);
                    self.finish(now, key, CallOutcome::Failed);
                    return;
                }
                let local_sdp = LocalSdp {
                    username: "riptide".into(),
                    session_id: key.0 + 1000,
                    session_version: 1,
                    ip: self.cfg.media_ip,
                    port,
                    formats,
                    ptime: Some(ptime),
                    direction: SdpDirection::SendRecv,
                    // RFC 8843-era peers and ICE stacks expect it; a peer that does not mux
                    // simply leaves it out of its answer.
                    rtcp_mux: sec.policy.ice != crate::config::IceMode::Off,
                    rejected: vec![],
                    audio_index: 0,
                    proto: sec.proto.clone(),
                    session_attrs: sec.session_attrs.clone(),
                    media_attrs: sec.media_attrs.clone(),
                    sent: None,
                };
                self.out.push_back(Output::Media(codec_cmd(
                    key,
                    &local_sdp.formats,
                    trunk.media.dtmf == crate::config::DtmfMode::Info,
                )));
                let from_user = request
                    .from
                    .clone()
                    .filter(|f| {
                        !f.is_empty()
                            && f.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "+-_.!~*'()".contains(c))
                    })
                    .unwrap_or_else(|| "anonymous".into());
                let via_host = self.cfg.via_host(trunk.dest.transport);
                // RFC 8224 §6.2.3: the verification result rides on the caller's number
                // (the HTTP/3 server kept `verstat` only from clients trusted to assert it).
                let from_user = match request.verstat.as_deref().and_then(known_verstat) {
                    Some(v) if crate::stir::canonical_tn(&from_user).is_some() => {
                        format!("{from_user};verstat={v}")
                    }
                    _ => from_user,
                };
                let user_phone = if from_user.contains(";verstat=") {
                    ";user=phone"
                } else {
                    ""
                };
                let dest_user = sanitize_user(&request.destination);
                let invite_uri = format!("sip:{}@{}", dest_user, trunk.host);
                let sip = SipLeg {
                    role: SipRole::Uac,
                    stir_reasons: Vec::new(),
                    call_id: format!("{}@{}", msg::token(20), self.cfg.node),
                    local_tag: msg::token(12),
                    remote_tag: None,
                    local_addr: format!("<sip:{from_user}@{via_host}{user_phone}>"),
                    remote_addr: format!("<{invite_uri}>"),
                    remote_target: invite_uri.clone(),
                    route_set: vec![],
                    dest: Dest {
                        addr: first,
                        ..trunk.dest
                    },
                    transport: trunk.dest.transport,
                    local_cseq: 0,
                    remote_cseq: 0,
                    invite: None,
                    invite_src: None,
                    invite_key: None,
                    invite_branch: None,
                    invite_uri,
                    invite_routes: trunk.proxy_route.iter().cloned().collect(),
                    got_provisional: false,
                    cancel_wanted: None,
                    cancel_sent: false,
                    redirects: 0,
                    failover,
                    early_answer: false,
                    trunk: Some(t),
                    ack: None,
                    final_done: false,
                    pending_2xx: None,
                    local_sdp: Some(local_sdp),
                    sec: Some(sec),
                    browser_origin: origin.clone(),
                    preflight_pending: false,
                    redirect_lookup: None,
                    forks_ended: 0,
                    invite_sent: None,
                    earlier_hops: Vec::new(),
                    rel: prack::Reliable::default(),
                    delayed_offer: false,
                    early_offer: false,
                    silence_watch: None,
                    remote_direction: SdpDirection::SendRecv,
                    remote_formats: Vec::new(),
                    payload_map: PayloadMap::default(),
                    info_refused: false,
                    answer_in_ack: false,
                    reinvite_out: None,
                    reinvite_in_unacked: false,
                    glare_retry: None,
                    bye_after_ack: None,
                    route_pending: false,
                    session: None,
                    session_deadline: None,
                    reinvite_retried: false,
                    peer_min_se: 0,
                    session_ask: (
                        self.cfg.session_timer.expires,
                        self.cfg.session_timer.min_se,
                        0,
                    ),
                };
                call.span.record("sip_call_id", sip.call_id.as_str());
                call.sip = Some(sip);
                self.calls.insert(key, Box::new(call));
                self.out
                    .push_back(Output::Media(MediaCmd::OpenLegacy { call: key, port }));
                self.invite_or_preflight(now, key, t, origin.as_deref());
                let na = self.cfg.no_answer_timeout;
                self.arm(now, key, CallTimer::NoAnswer, na);
                let grace = self.cfg.events_grace;
                self.arm(now, key, CallTimer::EventsGrace, grace);
                if let Some(k) = self.cfg.keepalive {
                    self.arm(now, key, CallTimer::Keepalive, k);
                }
            }
        }
    }

    /// The HTTP/3 server rang `handlers` handlers with our offer of a SIP call.
    fn on_offered(&mut self, now: Instant, key: CallKey, handlers: usize) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if call.phase != Phase::Setup {
            return;
        }
        if handlers == 0 {
            info!(call = %key, "no handler reachable to ring");
            self.final_to_caller(now, key, 480, "Temporarily Unavailable");
            self.end_server_call(key);
            self.finish(now, key, CallOutcome::NoAnswer);
            return;
        }
        info!(call = %key, handlers, "ringing handlers");
        self.provisional_to_caller(now, key, 180, "Ringing", false);
    }

    /// A handler takes the call we offered: the proposal comes from its advertisement and the
    /// SIP caller's codecs, with the caller's payload types (the media is relayed as it is).
    fn on_take(
        &mut self,
        now: Instant,
        req: ReqId,
        key: CallKey,
        handler: model::Handler,
        origin: Option<String>,
    ) {
        let refuse = |me: &mut Self, status: u16, title: &str, detail: String| {
            me.out.push_back(Output::Ript(RiptCmd::RespondTake {
                req,
                result: Err(Problem::new(status, title, detail)),
            }));
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return refuse(
                self,
                404,
                "Not Found",
                "the call is no longer ringing".into(),
            );
        };
        if call.phase >= Phase::Answered {
            return refuse(
                self,
                404,
                "Not Found",
                "the call is no longer ringing".into(),
            );
        }
        if call.ript.proposal.is_some() {
            return refuse(
                self,
                409,
                "Conflict",
                "the call was taken by another handler".into(),
            );
        }
        let Some(caller) = call.ript.caller_adv.as_ref() else {
            return refuse(
                self,
                400,
                "Bad Request",
                "the call was not offered to handlers".into(),
            );
        };
        let allowed: Vec<String> = caller
            .codecs
            .iter()
            .map(|c| c.codec_name().to_string())
            .collect();
        let mut proposal = match negotiate::choose(&handler.advertisement, &allowed) {
            Ok(p) => p,
            Err(e) => {
                return refuse(
                    self,
                    400,
                    "Bad Request",
                    format!("no codec in common with the caller: {e}"),
                )
            }
        };
        for st in &mut proposal.streams {
            let same = caller.codecs.iter().find(|c| {
                c.media_type.eq_ignore_ascii_case(&st.media_type) && c.clock_rate == st.clock_rate
            });
            if let Some(pt) = same.and_then(|c| c.payload_type) {
                st.payload_type = pt;
            }
        }
        let (formats, ptime) = negotiate::proposal_to_formats(&proposal, Direction::S2c);
        let info = call
            .sip
            .as_ref()
            .and_then(|s| s.sec.as_ref())
            .is_some_and(|s| s.policy.dtmf == crate::config::DtmfMode::Info);
        if let Some(l) = call.sip.as_mut().and_then(|s| s.local_sdp.as_mut()) {
            l.formats = formats.clone();
            l.ptime = Some(ptime);
        }
        call.ript.proposal = Some(proposal.clone());
        let state = if call.phase == Phase::Early {
            CallState::Alerting
        } else {
            CallState::Proceeding
        };
        let description = CallDescription {
            uri: call.ript.uri.clone().unwrap_or_default(),
            handler: handler.uri.clone(),
            direction: Some(CallDirection::Inbound),
            destination: call.destination.clone(),
            from: call.from.clone(),
            state,
            proposal,
            media_ticket: None,
        };
        let _g = call.span.clone().entered();
        info!(
            handler = handler.uri.as_deref().unwrap_or("-"),
            origin = origin.as_deref().unwrap_or("-"),
            "call taken"
        );
        self.out
            .push_back(Output::Media(codec_cmd(key, &formats, info)));
        self.map_payload_types(key);
        self.out.push_back(Output::Ript(RiptCmd::RespondTake {
            req,
            result: Ok(description),
        }));
        // From here on the call is an ordinary server-role call: streams within the grace
        // period, keepalives.
        let grace = self.cfg.events_grace;
        self.arm(now, key, CallTimer::EventsGrace, grace);
        if let Some(k) = self.cfg.keepalive {
            self.arm(now, key, CallTimer::Keepalive, k);
        }
    }

    /// Closes the RIPT leg's streams after its final event (either role).
    fn close_ript(&mut self, key: CallKey) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let cmd = match call.ript.role {
            RiptRole::Server => RiptCmd::ServerEnd { call: key },
            RiptRole::Client { .. } => RiptCmd::ClientClose { call: key },
        };
        self.out.push_back(Output::Ript(cmd));
    }

    fn on_call_created(&mut self, now: Instant, key: CallKey, d: CallDescription) {
        if let Some(reason) = self.orphans.remove(&key) {
            // Ended while the POST was in flight: end the peer's call now.
            let mut ev = end_event(&reason);
            ev.seq = Some(0);
            ev.call = Some(d.uri.clone());
            ev.direction = Some(Direction::C2s);
            self.out.push_back(Output::Ript(RiptCmd::ClientSend {
                call: key,
                event: ev,
            }));
            self.out
                .push_back(Output::Ript(RiptCmd::ClientClose { call: key }));
            return;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.ript.id = d.uri.rsplit('/').next().map(str::to_string);
        if let Some(id) = &call.ript.id {
            call.span.record("ript_call", id.as_str());
        }
        call.ript.uri = Some(d.uri.clone());
        let (formats, ptime) = negotiate::proposal_to_formats(&d.proposal, Direction::C2s);
        call.ript.proposal = Some(d.proposal);
        if formats.is_empty() {
            return;
        }
        let info = call
            .sip
            .as_ref()
            .and_then(|s| s.sec.as_ref())
            .is_some_and(|s| s.policy.dtmf == crate::config::DtmfMode::Info);
        let codec = codec_cmd(key, &formats, info);
        if let Some(sip) = call.sip.as_mut() {
            if let Some(l) = sip.local_sdp.as_mut() {
                // Our answer keeps the caller's numbers; the relay rewrites (ADR 0031).
                l.formats = negotiate::in_their_numbers(&formats, &sip.remote_formats);
                l.ptime = Some(ptime);
            }
        }
        self.out.push_back(Output::Media(codec));
        self.map_payload_types(key);
        match d.state {
            CallState::Answered => self.on_event(now, key, Event::new(EventName::Answered)),
            CallState::Alerting => self.on_event(now, key, Event::new(EventName::Alerting)),
            _ => {}
        }
    }

    fn on_event(&mut self, now: Instant, key: CallKey, ev: Event) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if let Some(seq) = ev.seq {
            if call.ript.in_seq.map(|s| seq <= s).unwrap_or(false) {
                debug!(call = %key, seq, "duplicate event dropped");
                return;
            }
            call.ript.in_seq = Some(seq);
        }
        call.ript.reopen_attempts = 0;
        call.ript.unanswered_pings = 0;
        let server = call.ript.role == RiptRole::Server;
        // The RIPT side answers for the callee: a SIP caller's call to a peer gateway (client
        // role) or to one of our handlers (server role).
        let callee = call.sip.as_ref().is_some_and(|s| s.role == SipRole::Uas);
        // A call offered to handlers is answered only by the one that took it.
        let untaken = call.ript.caller_adv.is_some() && call.ript.proposal.is_none();
        let phase = call.phase;
        match ev.name {
            EventName::Ping => {
                let mut pong = Event::new(EventName::Pong);
                pong.nonce = ev.nonce;
                self.send_event(key, pong);
            }
            EventName::Migrate if !server => {
                // RIPT-00 §F1: tear down and re-establish the streams. Moving to a replacement
                // call URI (another authority) is not supported yet; the same URI is re-opened.
                info!(call = %key, uri = ev.uri.as_deref().unwrap_or("-"), "migrate: re-opening the call's streams");
                self.out
                    .push_back(Output::Ript(RiptCmd::ClientReopenEvents { call: key }));
            }
            EventName::Pong | EventName::Migrate | EventName::MediaPanic | EventName::Other(_) => {
                debug!(call = %key, event = ev.name.as_str(), "event ignored");
            }
            EventName::Proceeding | EventName::Alerting if callee && !untaken => {
                if phase >= Phase::Answered {
                    return;
                }
                if ev.media == Some(true) {
                    if let Some(c) = self.calls.get_mut(&key) {
                        c.phase = Phase::Early;
                    }
                    self.provisional_to_caller(now, key, 183, "Session Progress", true);
                } else if ev.name == EventName::Alerting {
                    self.provisional_to_caller(now, key, 180, "Ringing", false);
                }
            }
            EventName::Answered if callee && !untaken => {
                if phase >= Phase::Answered {
                    return;
                }
                self.answer_caller(now, key);
            }
            EventName::Answered if untaken => {
                warn!(call = %key, "answered by a handler that did not take the call; ignored");
            }
            EventName::Declined | EventName::Failed | EventName::Noanswer if callee => {
                let code = ev
                    .code
                    .filter(|c| (300..700).contains(c))
                    .unwrap_or(match ev.name {
                        EventName::Declined => 486,
                        EventName::Noanswer => 480,
                        _ => 500,
                    });
                let reason = ev
                    .reason
                    .clone()
                    .unwrap_or_else(|| default_reason(code).to_string());
                let reason = safe_phrase(reason.split(':').next().unwrap_or("").trim());
                let reason = if reason.is_empty() {
                    default_reason(code).to_string()
                } else {
                    reason
                };
                self.final_to_caller(now, key, code, &reason);
                if server {
                    // Handlers still ringing learn why it stopped (a 6xx ends every fork).
                    self.send_event(
                        key,
                        end_event(&format!("SIP;cause={code};text=\"{reason}\"")),
                    );
                }
                self.close_ript(key);
                let outcome = match ev.name {
                    EventName::Declined => CallOutcome::Declined,
                    EventName::Noanswer => CallOutcome::NoAnswer,
                    _ => CallOutcome::Failed,
                };
                self.finish(now, key, outcome);
            }
            EventName::End => {
                // The reason goes into SIP Reason headers: only a well-formed RFC 3326 value.
                let reason = safe_reason(ev.reason.as_deref().unwrap_or(""), NORMAL_CLEARING);
                self.on_remote_end(now, key, &reason);
            }
            EventName::Hold => {
                let Some(dir) = ev
                    .media_direction
                    .as_deref()
                    .and_then(SdpDirection::from_attr)
                else {
                    return;
                };
                if phase == Phase::Answered {
                    self.send_reinvite(now, key, dir);
                }
            }
            _ => {
                debug!(call = %key, event = ev.name.as_str(), server, "event not expected in this role");
            }
        }
    }

    /// The RIPT side ended the call.
    fn on_remote_end(&mut self, now: Instant, key: CallKey, reason: &str) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let answered = call.phase == Phase::Answered;
        let Some(sip) = call.sip.as_mut() else {
            // Echo: nothing behind it.
            self.end_server_call(key);
            self.finish(now, key, CallOutcome::Answered);
            return;
        };
        match sip.role {
            SipRole::Uas => {
                if answered && sip.pending_2xx.is_some() {
                    // RFC 3261 §15: no BYE before the caller's ACK for our 2xx; it goes out when
                    // the ACK arrives (or when the 2xx retransmissions give up).
                    sip.bye_after_ack = Some(reason.to_string());
                    self.close_ript(key);
                } else if answered {
                    self.send_bye(now, key, reason);
                    self.close_ript(key);
                    self.finish(now, key, CallOutcome::Answered);
                } else {
                    let code = model::parse_reason(reason)
                        .map(|r| {
                            if r.protocol.eq_ignore_ascii_case("SIP") {
                                r.cause
                            } else {
                                model::q850_to_sip_status(r.cause.min(255) as u8)
                            }
                        })
                        .filter(|c| (300..700).contains(c))
                        .unwrap_or(487);
                    self.final_to_caller(now, key, code, default_reason(code));
                    self.close_ript(key);
                    self.finish(now, key, CallOutcome::Cancelled);
                }
            }
            SipRole::Uac => {
                if sip.invite_waits() {
                    // No INVITE is out: nothing to cancel.
                    self.end_server_call(key);
                    self.finish(now, key, CallOutcome::Cancelled);
                } else if answered {
                    self.send_bye(now, key, reason);
                    self.end_server_call(key);
                    self.finish(now, key, CallOutcome::Answered);
                } else if sip.got_provisional {
                    self.send_cancel(now, key, reason);
                    self.end_server_call(key);
                    // Stays until the INVITE's final arrives (a crossing 200 gets ACK + BYE).
                    self.mark_ending(now, key, CallOutcome::Cancelled);
                } else {
                    // RFC 3261 §9.1: no CANCEL before a provisional; send it when one arrives.
                    sip.cancel_wanted = Some(reason.to_string());
                    self.end_server_call(key);
                    self.mark_ending(now, key, CallOutcome::Cancelled);
                }
            }
        }
    }

    // ------------------------------------------------------------------ timers

    fn on_timer(&mut self, now: Instant, key: CallKey, t: CallTimer) {
        match t {
            CallTimer::Retransmit2xx => {
                let t2 = Duration::from_secs(4);
                let t1 = self.cfg.t1;
                let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
                    return;
                };
                let Some(p) = sip.pending_2xx.as_mut() else {
                    return;
                };
                if now.duration_since(p.started) >= t1 * 64 {
                    // RFC 3261 §13.3.1.4: no ACK; end the dialog.
                    sip.pending_2xx = None;
                    warn!(call = %key, "no ACK for our 2xx; ending the call");
                    if let Some(reason) = sip.bye_after_ack.take() {
                        // The call was already ending (its HTTP/3 side is closed): the BYE
                        // that waited for the ACK goes now, with its own reason.
                        self.send_bye(now, key, &reason);
                        self.finish(now, key, CallOutcome::Answered);
                        return;
                    }
                    self.send_bye(now, key, "SIP;cause=408;text=\"ACK Timeout\"");
                    self.end_ript(
                        now,
                        key,
                        "Q.850;cause=102;text=\"Recovery on timer expiry\"",
                    );
                    self.finish(now, key, CallOutcome::Failed);
                    return;
                }
                if p.dest.transport == Transport::Udp {
                    self.out.push_back(Output::Sip(SipOut {
                        dest: p.dest,
                        bytes: p.bytes.clone(),
                    }));
                }
                p.interval = (p.interval * 2).min(t2);
                let i = p.interval;
                self.arm(now, key, CallTimer::Retransmit2xx, i);
            }
            CallTimer::NoAnswer => {
                let Some(call) = self.calls.get(&key) else {
                    return;
                };
                if call.phase == Phase::Answered {
                    return;
                }
                info!(call = %key, "no answer before the timeout");
                if call.sip.as_ref().map(|s| s.role) == Some(SipRole::Uas) {
                    // Caller-facing leg: 408 to the caller, `end` to the RIPT side.
                    self.final_to_caller(now, key, 408, "Request Timeout");
                    self.end_ript(now, key, "SIP;cause=408;text=\"Request Timeout\"");
                    self.finish(now, key, CallOutcome::NoAnswer);
                    return;
                }
                let mut ev = Event::new(EventName::Noanswer);
                ev.code = Some(480);
                ev.reason = Some("Temporarily Unavailable".into());
                self.send_event(key, ev);
                self.on_remote_end_quiet(now, key);
            }
            CallTimer::GlareRetry => {
                let dir = self
                    .calls
                    .get_mut(&key)
                    .and_then(|c| c.sip.as_mut())
                    .and_then(|s| s.glare_retry.take());
                if let Some(dir) = dir {
                    self.send_reinvite(now, key, dir);
                }
            }
            CallTimer::EventsGrace => {
                warn!(call = %key, "no events stream for the grace period; ending the call");
                let reason = "Q.850;cause=41;text=\"Temporary failure\"";
                let answered = self.calls.get(&key).map(|c| c.phase == Phase::Answered);
                self.on_remote_end(now, key, reason);
                let _ = answered;
            }
            CallTimer::ReinviteGuard => {
                let stuck = self
                    .calls
                    .get_mut(&key)
                    .and_then(|c| c.sip.as_mut())
                    .and_then(|s| s.reinvite_out.take());
                if let Some((branch, ..)) = stuck {
                    warn!(call = %key, "re-INVITE got no final response; ending the call");
                    self.txn.forget_client(&branch);
                    self.branches.remove(&branch);
                    self.send_bye(now, key, "SIP;cause=408;text=\"Request Timeout\"");
                    self.end_ript(
                        now,
                        key,
                        "Q.850;cause=102;text=\"Recovery on timer expiry\"",
                    );
                    self.finish(now, key, CallOutcome::Answered);
                }
            }
            CallTimer::Session => self.on_session_timer(now, key),
            CallTimer::Reliable => self.on_reliable_timer(now, key),
            CallTimer::Keepalive => {
                let Some(every) = self.cfg.keepalive else {
                    return;
                };
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                if call.ript.unanswered_pings >= 2 {
                    warn!(call = %key, "RIPT client silent for two keepalives; ending the call");
                    self.on_remote_end(now, key, "Q.850;cause=41;text=\"Temporary failure\"");
                    return;
                }
                call.ript.unanswered_pings += 1;
                let mut ping = Event::new(EventName::Ping);
                ping.nonce = Some(msg::token(8));
                self.send_event(key, ping);
                self.arm(now, key, CallTimer::Keepalive, every);
            }
            CallTimer::CancelGuard => {
                warn!(call = %key, "no final response 64*T1 after CANCEL; giving the call up");
                self.finish(now, key, CallOutcome::Cancelled);
            }
            CallTimer::EventsReopen => {
                self.out
                    .push_back(Output::Ript(RiptCmd::ClientReopenEvents { call: key }));
            }
        }
    }

    /// Cancel toward the SIP trunk after our own no-answer timer.
    fn on_remote_end_quiet(&mut self, now: Instant, key: CallKey) {
        let reason = "SIP;cause=480;text=\"Temporarily Unavailable\"";
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        if sip.invite_waits() {
            self.end_server_call(key);
            self.finish(now, key, CallOutcome::NoAnswer);
            return;
        }
        if sip.got_provisional {
            self.send_cancel(now, key, reason);
        } else {
            sip.cancel_wanted = Some(reason.into());
        }
        self.end_server_call(key);
        self.mark_ending(now, key, CallOutcome::NoAnswer);
    }

    // ------------------------------------------------------------------ SIP out

    /// Sends (or re-sends after a redirect) the INVITE of a UAC leg.
    /// Places a trunk call: at once, or for a browser's call toward a trunk with `preflight`,
    /// after an OPTIONS carrying the `Origin` came back with that origin allowed (cached per
    /// target and origin; a target that refused is not contacted again for 30 s).
    fn invite_or_preflight(
        &mut self,
        now: Instant,
        key: CallKey,
        trunk: usize,
        origin: Option<&str>,
    ) {
        let Some(origin) = origin.filter(|_| self.cfg.trunks[trunk].preflight) else {
            return self.send_invite(now, key);
        };
        // The address this call's INVITE would go to (the trunk's first one not being avoided).
        let Some(target) = self
            .calls
            .get(&key)
            .and_then(|c| c.sip.as_ref())
            .map(|s| s.dest.addr)
        else {
            return;
        };
        if self
            .preflight_bad
            .get(&target)
            .is_some_and(|until| *until > now)
        {
            return self.preflight_failed(now, key, "the target refused a preflight recently");
        }
        if self
            .preflight_ok
            .get(&(target, origin.to_string()))
            .is_some_and(|until| *until > now)
        {
            return self.send_invite(now, key);
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(sip) = call.sip.as_mut() else {
            return;
        };
        let via_host = self.cfg.via_host(sip.transport);
        sip.local_cseq += 1;
        let branch = msg::branch();
        let from = format!("{};tag={}", sip.local_addr, sip.local_tag);
        let spec = sip.initial_request("OPTIONS", &via_host, &branch, &from, None);
        let extra = Extra::none()
            .header("Origin", origin.to_string())
            .header("Accept", "application/sdp");
        let bytes = msg::request(&spec, &extra);
        sip.preflight_pending = true;
        let dest = sip.dest;
        self.branches
            .insert(branch.clone(), (key, Purpose::Preflight));
        info!(call = %key, %origin, %target, "SIP CORS preflight");
        self.txn
            .send_request(now, &branch, false, bytes.into(), dest);
    }

    /// The preflight's answer: the INVITE goes only when it allows the origin.
    fn on_preflight_answer(&mut self, now: Instant, key: CallKey, resp: &Response, code: u16) {
        if code < 200 {
            return;
        }
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        if !sip.preflight_pending {
            return;
        }
        sip.preflight_pending = false;
        let origin = sip.browser_origin.clone().unwrap_or_default();
        let target = sip.dest.addr;
        let acao = msg::header_values(&resp.headers, "Access-Control-Allow-Origin");
        let allowed = (200..300).contains(&code)
            && acao.len() == 1
            && (acao[0].trim() == origin || acao[0].trim() == "*");
        if !allowed {
            let why =
                format!("preflight answered {code} without Access-Control-Allow-Origin: {origin}");
            self.preflight_bad
                .insert(target, now + Duration::from_secs(30));
            return self.preflight_failed(now, key, &why);
        }
        // Access-Control-Max-Age from the answer, else 10 minutes, at most a day.
        let ttl = msg::first_header(&resp.headers, "Access-Control-Max-Age")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(600)
            .min(86_400);
        if self.preflight_ok.len() > 10_000 {
            self.preflight_ok.retain(|_, until| *until > now);
        }
        self.preflight_ok
            .insert((target, origin), now + Duration::from_secs(ttl));
        self.send_invite(now, key);
    }

    /// The browser's call is refused before any INVITE: 403 toward the HTTP/3 side.
    fn preflight_failed(&mut self, now: Instant, key: CallKey, why: &str) {
        if let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) {
            sip.preflight_pending = false;
            if let Some(t) = self.preflight_bad.get(&sip.dest.addr).copied() {
                if t <= now {
                    self.preflight_bad.remove(&sip.dest.addr);
                }
            }
        }
        warn!(call = %key, %why, "browser call not placed");
        let mut ev = Event::failed(403, "Forbidden");
        ev.reason = Some(format!("Forbidden: {why}"));
        self.send_event(key, ev);
        self.end_server_call(key);
        self.finish(now, key, CallOutcome::Failed);
    }

    /// The trunk's addresses in the order a new call tries them: those not being avoided
    /// first, each group in the trunk's own order. An address that timed out or sent 503 with
    /// Retry-After is still tried, last, rather than the call failing without a try.
    fn trunk_order(
        &mut self,
        now: Instant,
        t: usize,
        trunk: &TrunkInfo,
    ) -> (SocketAddr, Vec<SocketAddr>) {
        self.avoid.retain(|_, until| *until > now);
        // Most trunks have one address: nothing to order, nothing to allocate per call.
        if trunk.alternates.is_empty() {
            return (trunk.dest.addr, Vec::new());
        }
        let all: Vec<SocketAddr> = trunk.addrs().collect();
        let ranked = order_addrs(&all, &trunk.ranks, |n| rand::rng().random_range(0..n));
        let (mut order, avoided): (Vec<_>, Vec<_>) = ranked
            .into_iter()
            .partition(|a| !self.avoid.contains_key(a) && !self.pings.down.contains(&(t, *a)));
        order.extend(avoided);
        let first = order.remove(0);
        (first, order)
    }

    /// The gateway looked up a dialog's next hop: requests go there from now on, unless the
    /// dialog has moved on to another hop meanwhile. Where the dialog goes now is kept when the
    /// name leads there too (the same node of a cluster, the connection in use); otherwise the
    /// first address. The ACK of the 2xx, which left before the answer, is sent there again,
    /// and is what a retransmitted 2xx gets from now on.
    fn on_hop_addr(
        &mut self,
        now: Instant,
        key: CallKey,
        uri: &str,
        addrs: Result<Vec<SocketAddr>, String>,
    ) {
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        if sip.redirect_lookup.is_some() {
            if sip.invite_uri == uri {
                self.on_redirect_addr(now, key, addrs);
            }
            return;
        }
        if sip.hop_uri() != Some(uri) {
            return;
        }
        let Some((_, _, transport)) = hop_target(&sip.dest, uri) else {
            return;
        };
        let addrs = match addrs {
            Ok(a) if !a.is_empty() => a,
            other => {
                let e = other.err().unwrap_or_else(|| "no address".into());
                warn!(call = %key, %uri, error = %e, dest = %sip.dest.addr, "in-dialog next hop not found in DNS; requests keep going where they went");
                return;
            }
        };
        let dests: Vec<Dest> = addrs
            .iter()
            .map(|&a| hop_dest(&sip.dest, a, transport))
            .collect();
        if dests.contains(&sip.dest) {
            return;
        }
        sip.dest = dests[0];
        debug!(call = %key, %uri, addr = %sip.dest.addr, "in-dialog requests go to the looked-up next hop");
        if let Some((_, ack)) = sip.ack.as_mut() {
            ack.dest = sip.dest;
            self.out.push_back(Output::Sip(ack.clone()));
        }
    }

    fn set_trunk_addrs(&mut self, now: Instant, trunk: usize, hop: HopAddrs, transport: Transport) {
        let Some(t) = self.cfg.trunks.get_mut(trunk) else {
            return;
        };
        let moved = t.dest.transport != transport && !hop.addrs.is_empty();
        if moved {
            t.dest.transport = transport;
        }
        if t.set_hop(&hop) || moved {
            info!(trunk = %t.name, addresses = ?hop.addrs, srv = !hop.ranks.is_empty(), ?transport, "trunk addresses changed");
            self.ping_new_addresses(now, trunk);
        }
    }

    /// RFC 3263 §4.3 / RFC 3261 §21.5.4: an INVITE that timed out or got 503 goes to the
    /// trunk's next address, as a new transaction, unless the caller has given up. `avoid_for`:
    /// how long new calls try the failed address last. False when there is no address left.
    fn fail_over(
        &mut self,
        now: Instant,
        key: CallKey,
        avoid_for: Option<Duration>,
        why: Failover,
    ) -> bool {
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return false;
        };
        let failed = sip.dest.addr;
        // Only the trunk's own addresses are remembered: a redirect's target is not one.
        if let (Some(d), 0) = (avoid_for, sip.redirects) {
            self.avoid.insert(failed, now + d);
        }
        // An attempt that brought an SDP answer (early media) has changed the call's offer and
        // media to fit it: the call ends with it rather than offer that to another server.
        if sip.failover.is_empty()
            || sip.cancel_wanted.is_some()
            || sip.cancel_sent
            || sip.early_answer
        {
            return false;
        }
        let next = sip.failover.remove(0);
        if !sip.earlier_hops.contains(&failed.ip()) {
            sip.earlier_hops.push(failed.ip());
        }
        sip.dest = Dest {
            addr: next,
            transport: sip.dest.transport,
            conn: None,
        };
        // Credentials answered the failed server's challenge; the next server gets its own.
        self.digest.forget(key);
        let of = if sip.redirects > 0 {
            "the redirect target's"
        } else {
            "the trunk's"
        };
        info!(call = %key, %failed, %next, why = why.label(), "INVITE failing over to {of} next address");
        self.metrics.trunk_failover(why);
        self.send_invite(now, key);
        true
    }

    fn send_invite(&mut self, now: Instant, key: CallKey) {
        // RFC 8224: the authentication service signs the call as it leaves on SIP.
        let identity = self.calls.get(&key).and_then(|c| {
            if let Some(upstream) = &c.upstream_identity {
                return Some(upstream.clone());
            }
            let jws = self.passport(now, key, c.from.as_deref(), &c.destination)?;
            let x5u = &self.cfg.stir.as_ref()?.x5u;
            Some(crate::stir::IdentityHeader::new(&jws, x5u, "shaken").to_string())
        });
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(sip) = call.sip.as_mut() else {
            return;
        };
        let via_host = self.cfg.via_host(sip.transport);
        let contact = self.cfg.contact(sip.transport);
        // A PRACK of the attempt before may have counted on from its INVITE.
        sip.local_cseq = sip.next_cseq();
        sip.rel.new_attempt();
        let branch = msg::branch();
        let body = sip
            .local_sdp
            .as_mut()
            .map(|l| sdp::build_to_send(l).into_bytes())
            .unwrap_or_default();
        let from = format!("{};tag={}", sip.local_addr, sip.local_tag);
        let spec = sip.initial_request("INVITE", &via_host, &branch, &from, Some(&contact));
        let mut extra = Extra::none()
            .header("Allow", msg::ALLOW)
            .header("Supported", supported(&self.cfg))
            .sdp(&body);
        if self.cfg.session_timer.on() {
            // RFC 4028 §7.1: the interval we ask for; the callee picks the refresher.
            let (se, min_se, _) = sip.session_ask;
            extra = extra
                .header("Session-Expires", se.to_string())
                .header("Min-SE", min_se.to_string());
        }
        if let Some(id) = identity {
            extra = extra.header("Identity", id);
        }
        for (name, value) in self
            .digest
            .invite_headers(key, sip.local_cseq, &sip.invite_uri)
        {
            extra = extra.header(name, value);
        }
        let bytes = msg::request(&spec, &extra);
        sip.invite_branch = Some(branch.clone());
        sip.invite_sent = Some((sip.dest.addr.ip(), sip.local_cseq));
        sip.got_provisional = false;
        let dest = sip.dest;
        self.branches.insert(branch.clone(), (key, Purpose::Invite));
        self.dialogs
            .insert((sip.call_id.clone(), sip.local_tag.clone()), key);
        self.txn
            .send_request(now, &branch, true, bytes.into(), dest);
    }

    fn send_cancel(&mut self, now: Instant, key: CallKey, reason: &str) {
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        let Some(branch) = sip.invite_branch.clone() else {
            return;
        };
        if sip.cancel_sent || sip.final_done {
            return;
        }
        sip.cancel_sent = true;
        let via_host = self.cfg.via_host(sip.transport);
        let from = format!("{};tag={}", sip.local_addr, sip.local_tag);
        // CANCEL copies the INVITE's Request-URI, Via branch, From, To, Call-ID and CSeq number
        // (RFC 3261 §9.1).
        let spec = sip.initial_request("CANCEL", &via_host, &branch, &from, None);
        let bytes = msg::request(&spec, &Extra::none().header("Reason", reason.to_string()));
        let dest = sip.dest;
        // The CANCEL's own transaction is keyed apart from the INVITE's (same branch).
        let cbranch = cancel_key(&branch);
        let guard = self.cfg.t1 * 64;
        self.arm(now, key, CallTimer::CancelGuard, guard);
        self.branches
            .insert(cbranch.clone(), (key, Purpose::Cancel));
        self.txn
            .send_request(now, &cbranch, false, bytes.into(), dest);
    }

    /// Writes an in-dialog request for the call's SIP leg; returns bytes, destination, branch.
    fn build_in_dialog(
        &mut self,
        key: CallKey,
        method: &str,
        cseq: Option<u32>,
        extra: &Extra<'_>,
    ) -> Option<(Vec<u8>, Dest, String)> {
        // Toward a trunk that challenged our INVITE, the dialog's requests carry credentials.
        let login = self
            .calls
            .get(&key)?
            .sip
            .as_ref()?
            .trunk
            .and_then(|t| self.cfg.trunks.get(t))
            .and_then(|t| t.digest_login.clone());
        let creds = match (&login, method) {
            (Some(login), m) if m != "ACK" && m != "CANCEL" => {
                let sip = self.calls.get(&key)?.sip.as_ref()?;
                let uri = sip.remote_target.clone();
                let cseq = cseq.unwrap_or(sip.next_cseq());
                self.digest
                    .in_dialog_headers(key, login, (method, cseq), &uri)
            }
            _ => Vec::new(),
        };
        let mut extra = Extra {
            headers: extra.headers.clone(),
            body: extra.body,
        };
        for (name, value) in creds {
            extra = extra.header(name, value);
        }
        let extra = &extra;
        let sip = self.calls.get_mut(&key)?.sip.as_mut()?;
        let via_host = self.cfg.via_host(sip.transport);
        let contact = self.cfg.contact(sip.transport);
        let cseq = match cseq {
            Some(c) => c,
            None => {
                // Our PRACKs counted on from the INVITE in the early dialog (RFC 3262).
                sip.local_cseq = sip.next_cseq();
                sip.local_cseq
            }
        };
        let branch = msg::branch();
        let from = format!("{};tag={}", sip.local_addr, sip.local_tag);
        let to = match &sip.remote_tag {
            Some(t) => format!("{};tag={}", sip.remote_addr, t),
            None => sip.remote_addr.clone(),
        };
        let (uri, routes) = request_uri_and_routes(&sip.remote_target, &sip.route_set);
        let spec = RequestSpec {
            method,
            uri: &uri,
            via_host: &via_host,
            transport: sip.transport,
            branch: &branch,
            from: &from,
            to: &to,
            call_id: &sip.call_id,
            cseq,
            contact: (method == "INVITE" || method == "UPDATE").then_some(contact.as_str()),
            routes: &routes,
            max_forwards: 70,
        };
        Some((msg::request(&spec, extra), sip.dest, branch))
    }

    /// ACKs the 2xx to our (re-)INVITE with CSeq `cseq`: a new transaction with the INVITE's
    /// CSeq number (RFC 3261 §13.2.2.4), kept for re-sending when the 2xx is retransmitted.
    fn send_2xx_ack(&mut self, key: CallKey, cseq: u32) {
        // RFC 3261 §13.2.2.4: the ACK carries the INVITE's credentials.
        let mut extra = Extra::none();
        for (name, value) in self.digest.ack_headers(key, cseq) {
            extra = extra.header(name, value);
        }
        if let Some((bytes, dest, _)) = self.build_in_dialog(key, "ACK", Some(cseq), &extra) {
            let out = SipOut {
                dest,
                bytes: bytes.into(),
            };
            if let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) {
                sip.ack = Some((cseq, out.clone()));
            }
            self.out.push_back(Output::Sip(out));
        }
    }

    fn send_bye(&mut self, now: Instant, key: CallKey, reason: &str) {
        let extra = Extra::none().header("Reason", reason.to_string());
        if let Some((bytes, dest, branch)) = self.build_in_dialog(key, "BYE", None, &extra) {
            self.branches.insert(branch.clone(), (key, Purpose::Bye));
            self.txn
                .send_request(now, &branch, false, bytes.into(), dest);
        }
    }

    fn send_reinvite(&mut self, now: Instant, key: CallKey, dir: SdpDirection) {
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        // RFC 3261 §14.1: not while an INVITE transaction of the dialog (the first one
        // included, until its ACK) is still open either way.
        if sip.reinvite_out.is_some() || sip.reinvite_in_unacked || sip.pending_2xx.is_some() {
            sip.glare_retry = Some(dir);
            let ms = 500 + rand_ms(500);
            self.arm(now, key, CallTimer::GlareRetry, Duration::from_millis(ms));
            return;
        }
        let Some(local) = sip.local_sdp.as_mut() else {
            return;
        };
        let prev = local.direction;
        local.direction = dir;
        // `build_to_send` gives it a new version only when it changed since it was last sent
        // (the answer settles its crypto, setup and rtcp-mux lines): a session refresh repeats
        // it unchanged (RFC 3264 §8).
        let body = sdp::build_to_send(local).into_bytes();
        let mut extra = Extra::none().sdp(&body);
        if let Some(t) = sip.session {
            // §7.4: the refresh keeps the Min-SE the dialog was set up with (a 422 may have
            // raised ours), never above the interval in force.
            let min_se = (self.cfg.session_timer.min_se)
                .max(sip.session_ask.1)
                .max(sip.peer_min_se)
                .min(t.secs);
            extra = extra
                .header("Supported", "timer")
                .header("Session-Expires", t.request_header())
                .header("Min-SE", min_se.to_string());
        }
        if let Some((bytes, dest, branch)) = self.build_in_dialog(key, "INVITE", None, &extra) {
            if let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) {
                sip.reinvite_out = Some((branch.clone(), dir, prev, sip.local_cseq));
            }
            self.branches
                .insert(branch.clone(), (key, Purpose::ReInvite));
            self.txn
                .send_request(now, &branch, true, bytes.into(), dest);
            let guard = self.cfg.t1 * 64;
            self.arm(now, key, CallTimer::ReinviteGuard, guard);
        }
    }

    /// A provisional response on the caller's INVITE (UAS leg): reliable when the caller
    /// asked for that (RFC 3262), else as it is.
    fn provisional_to_caller(
        &mut self,
        now: Instant,
        key: CallKey,
        code: u16,
        reason: &str,
        sdp: bool,
    ) {
        // After a delayed offer our SDP would be an offer, which an unreliable provisional
        // cannot carry (RFC 3261 §13.2.1): the 183 goes without it, and the 2xx offers. A
        // caller that requires 100rel gets the offer in the first reliable provisional instead,
        // and answers in its PRACK (RFC 3262 §5); later provisionals carry no SDP.
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        let sdp = match (sip.delayed_offer, sip.rel.caller_requires()) {
            // Nothing to offer yet (a handler is still to take the call and choose): no
            // provisional, and the 2xx offers.
            (true, true)
                if !sip.early_offer
                    && sip.local_sdp.as_ref().is_none_or(|l| l.formats.is_empty()) =>
            {
                debug!(call = %key, code, "offerless INVITE requiring 100rel, no codecs yet: provisional not sent");
                return;
            }
            (true, true) => !std::mem::replace(&mut sip.early_offer, true),
            (true, false) => false,
            (false, _) => sdp && !sip.early_offer,
        };
        if self.reliable_provisional(now, key, code, reason, sdp) {
            return;
        }
        if let Some((out, skey)) = self.provisional_bytes(key, code, reason, sdp, Extra::none()) {
            self.txn.send_response(now, &skey, code, out);
        }
    }

    /// A provisional on the caller's INVITE, with `extra` headers and our SDP if `sdp`, and its
    /// transaction; None once the INVITE has its final response.
    fn provisional_bytes(
        &mut self,
        key: CallKey,
        code: u16,
        reason: &str,
        sdp: bool,
        extra: Extra<'_>,
    ) -> Option<(SipOut, ServerKey)> {
        let sip = self.calls.get_mut(&key)?.sip.as_mut()?;
        if sip.final_done {
            return None;
        }
        if sip.invite.is_none() || sip.invite_src.is_none() || sip.invite_key.is_none() {
            return None;
        }
        let body = match sip.local_sdp.as_mut() {
            Some(l) if sdp => Some(sdp::build_to_send(l).into_bytes()),
            _ => None,
        };
        let (Some(req), Some(src), Some(skey)) = (&sip.invite, sip.invite_src, &sip.invite_key)
        else {
            return None;
        };
        let contact = self.cfg.contact(sip.transport);
        let mut extra = extra.header("Contact", contact);
        for rr in msg::header_values(&req.headers, "Record-Route") {
            extra = extra.header("Record-Route", rr);
        }
        for r in &sip.stir_reasons {
            extra = extra.header("Reason", r.clone());
        }
        if let Some(b) = &body {
            extra = extra.sdp(b);
        }
        let bytes = msg::response(req, src, code, reason, Some(&sip.local_tag), &extra);
        let out = SipOut {
            dest: sip.dest,
            bytes: bytes.into(),
        };
        Some((out, skey.clone()))
    }

    /// 200 OK with our answer on the caller's INVITE.
    fn answer_caller(&mut self, now: Instant, key: CallKey) {
        if self.hold_2xx_for_prack(key) {
            // The callee answered: only the caller's PRACK is awaited now (at most 64·T1).
            self.disarm(key, CallTimer::NoAnswer);
            return;
        }
        let t1 = self.cfg.t1;
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.phase = Phase::Answered;
        call.answered_at = Some(now);
        let Some(sip) = call.sip.as_mut() else {
            return;
        };
        let (Some(req), Some(src), Some(skey)) =
            (&sip.invite, sip.invite_src, sip.invite_key.clone())
        else {
            return;
        };
        if !self.txn.server_proceeding(&skey) {
            return;
        }
        // After an offer in a reliable provisional the exchange is done: no SDP (RFC 6337 §3.1).
        let body = match sip.local_sdp.as_mut() {
            Some(l) if !sip.early_offer => sdp::build_to_send(l).into_bytes(),
            _ => Vec::new(),
        };
        let contact = self.cfg.contact(sip.transport);
        let mut extra = Extra::none()
            .header("Contact", contact)
            .header("Allow", msg::ALLOW);
        for rr in msg::header_values(&req.headers, "Record-Route") {
            extra = extra.header("Record-Route", rr);
        }
        let (session_headers, session) =
            session_timer::answer_2xx(&self.cfg.session_timer, &session_timer::asked(&req.headers));
        for (name, value) in session_headers {
            extra = extra.header(name, value);
        }
        if !body.is_empty() {
            extra = extra.sdp(&body);
        }
        let bytes: Bytes = msg::response(req, src, 200, "OK", Some(&sip.local_tag), &extra).into();
        sip.final_done = true;
        sip.session = session;
        sip.pending_2xx = Some(Pending2xx {
            bytes: bytes.clone(),
            dest: sip.dest,
            interval: t1,
            started: now,
            cseq: sip
                .invite
                .as_ref()
                .map(invite_cseq)
                .unwrap_or(sip.remote_cseq),
        });
        let out = SipOut {
            dest: sip.dest,
            bytes,
        };
        self.txn.send_response(now, &skey, 200, out);
        self.arm(now, key, CallTimer::Retransmit2xx, t1);
        self.arm_session(now, key);
        self.watch_media(key);
    }

    /// A final non-2xx on the caller's INVITE, if it is still open.
    fn final_to_caller(&mut self, now: Instant, key: CallKey, code: u16, reason: &str) {
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        if sip.role != SipRole::Uas || sip.final_done {
            return;
        }
        let (Some(req), Some(src), Some(skey)) =
            (&sip.invite, sip.invite_src, sip.invite_key.clone())
        else {
            return;
        };
        sip.final_done = true;
        let bytes = msg::response(req, src, code, reason, Some(&sip.local_tag), &Extra::none());
        let out = SipOut {
            dest: sip.dest,
            bytes: bytes.into(),
        };
        self.txn.send_response(now, &skey, code, out);
    }

    // ------------------------------------------------------------------ RIPT out

    fn send_event(&mut self, key: CallKey, mut ev: Event) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        ev.seq = Some(call.ript.out_seq);
        call.ript.out_seq += 1;
        ev.call = call.ript.uri.clone();
        ev.direction = Some(match call.ript.role {
            RiptRole::Server => Direction::S2c,
            RiptRole::Client { .. } => Direction::C2s,
        });
        let cmd = match call.ript.role {
            RiptRole::Server => RiptCmd::ServerSend {
                call: key,
                event: ev,
            },
            RiptRole::Client { .. } => {
                // Not created yet: `on_call_created` sends `end` for a call ended meanwhile.
                if call.ript.uri.is_none() {
                    return;
                }
                RiptCmd::ClientSend {
                    call: key,
                    event: ev,
                }
            }
        };
        self.out.push_back(Output::Ript(cmd));
    }

    /// Ends the RIPT leg of a call whose SIP side ended (sends `end`, closes the streams).
    fn end_ript(&mut self, _now: Instant, key: CallKey, reason: &str) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let role = call.ript.role;
        let created = call.ript.uri.is_some();
        self.send_event(key, end_event(reason));
        match role {
            RiptRole::Server => self
                .out
                .push_back(Output::Ript(RiptCmd::ServerEnd { call: key })),
            RiptRole::Client { .. } if created => self
                .out
                .push_back(Output::Ript(RiptCmd::ClientClose { call: key })),
            RiptRole::Client { .. } => {
                // The POST is still in flight: `on_call_created` sends `end` when it lands.
                self.orphans.insert(key, reason.to_string());
            }
        }
    }

    /// Tells the media hub how the SIP peer's payload type numbers differ from the HTTP/3
    /// side's (`MediaCmd::MapPayloadTypes`), once both the proposal and the peer's SDP are
    /// known; sent again only when that changed. Called after every SDP the peer sends and
    /// every answer of ours.
    fn map_payload_types(&mut self, key: CallKey) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let (Some(proposal), Some(sip)) = (call.ript.proposal.as_ref(), call.sip.as_mut()) else {
            return;
        };
        if call.port.is_none() || sip.remote_formats.is_empty() {
            return;
        }
        let (toward_peer, from_peer) = call.ript.role.peer_directions();
        let ours = sip.local_sdp.as_ref().map_or(&[][..], |l| &l.formats[..]);
        let toward = negotiate::proposal_to_formats(proposal, toward_peer).0;
        let map = negotiate::payload_map(
            &toward,
            &negotiate::proposal_to_formats(proposal, from_peer).0,
            ours,
            &sip.remote_formats,
        );
        if map == sip.payload_map {
            return;
        }
        // As the leg sees it: the telephone-event it detects keys with (`codec_cmd`).
        let events = voice_and_events(&toward).1;
        let no_events = |m: &PayloadMap| events.is_some_and(|pt| m.refused.contains(&pt));
        if no_events(&map) && !no_events(&sip.payload_map) {
            // The leg turns them into keys for `on_media_dtmf` (ADR 0031).
            if sip.info_refused {
                warn!(call = %key, "the SIP peer's SDP took no telephone-event and it takes no INFO: DTMF toward it is not sent");
            } else {
                info!(call = %key, "the SIP peer's SDP took no telephone-event: DTMF toward it goes as SIP INFO");
            }
        }
        if !map.is_identity() {
            info!(
                call = %key,
                to_peer = ?map.to_peer,
                from_peer = ?map.from_peer,
                not_sent = ?map.refused,
                "the SIP peer's payload types differ from the HTTP/3 side's: renumbering, and not sending it what it did not take"
            );
        }
        sip.payload_map = map.clone();
        self.out
            .push_back(Output::Media(MediaCmd::MapPayloadTypes { call: key, map }));
    }

    /// Watches an answered call's SIP peer for silence (`MediaCmd::WatchSilence`): for
    /// `media_timeout` while both sides' SDP say `sendrecv`, for `hold_media_timeout` while
    /// either side holds the call. Sent again only when the limit changes.
    fn watch_media(&mut self, key: CallKey) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.phase != Phase::Answered || call.port.is_none() {
            return;
        }
        let Some(sip) = call.sip.as_mut() else {
            return;
        };
        let Some(local) = sip.local_sdp.as_ref() else {
            return;
        };
        // Held by either side (RFC 3264 §8.4: sendonly, recvonly or inactive on either offer
        // or answer): a holding peer may send nothing at all, so the hold limit applies.
        let active = local.direction == SdpDirection::SendRecv
            && sip.remote_direction == SdpDirection::SendRecv;
        let limit = if active {
            self.cfg.media_timeout
        } else {
            self.cfg.hold_media_timeout
        };
        if sip.silence_watch == Some(limit) {
            return;
        }
        sip.silence_watch = Some(limit);
        self.out
            .push_back(Output::Media(MediaCmd::WatchSilence { call: key, limit }));
    }

    /// RFC 4028 §9 checks on a request we would otherwise accept: an unreadable
    /// `Session-Expires` gets 400, an interval below our `min_se_secs` 422 with our `Min-SE`.
    /// True when the request was answered here.
    fn refuse_session_interval(&mut self, now: Instant, m: &SipInbound, asked: &Asked) -> bool {
        let cfg = self.cfg.session_timer;
        if !cfg.on() {
            return false;
        }
        if asked.malformed {
            let reason =
                "Bad Request (Session-Expires is not delta-seconds with refresher=uac or uas)";
            self.respond(now, m, 400, reason, None, &Extra::none());
            return true;
        }
        if let UasAnswer::TooSmall { min_se } = session_timer::as_uas(&cfg, asked) {
            let extra = Extra::none().header("Min-SE", min_se.to_string());
            self.respond(now, m, 422, "Session Interval Too Small", None, &extra);
            return true;
        }
        false
    }

    /// A 422 to our INVITE (RFC 4028 §7.1): asked again with its `Min-SE` as our interval, at
    /// most twice, and only for an interval up to a day.
    fn session_retry(&mut self, now: Instant, key: CallKey, resp: &Response) -> bool {
        let Some(min) = msg::first_header(&resp.headers, "Min-SE")
            .and_then(|v| session_timer::parse_min_se(&v))
        else {
            return false;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return false;
        };
        let Some(sip) = call.sip.as_mut() else {
            return false;
        };
        let (se, _, tries) = sip.session_ask;
        if call.phase == Phase::Ended
            || sip.cancel_wanted.is_some()
            || sip.cancel_sent
            || !self.cfg.session_timer.on()
            || tries >= 2
            || min <= se
            || min > session_timer::MAX_SE
        {
            return false;
        }
        info!(call = %key, min_se = min, "asking again with the callee's minimum session interval");
        sip.session_ask = (min, min, tries + 1);
        // Credentials already given are computed anew (next nc, new cnonce): the same ones
        // again would look like a replay.
        let login = sip
            .trunk
            .and_then(|t| self.cfg.trunks.get(t))
            .and_then(|t| t.digest_login.clone());
        if let Some(login) = login {
            self.digest.renew_invite_answers(key, &login);
        }
        self.send_invite(now, key);
        true
    }

    /// (Re-)arms the leg's session timer from now, the time of its last refresh, or disarms it.
    fn arm_session(&mut self, now: Instant, key: CallKey) {
        let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) else {
            return;
        };
        sip.session_deadline = sip.session.map(|t| now + t.expiry());
        match sip.session.map(|t| t.next()) {
            Some(after) => self.arm(now, key, CallTimer::Session, after),
            None => self.disarm(key, CallTimer::Session),
        }
    }

    /// The session timer fired: our refresh is due (a re-INVITE offering the same SDP), or the
    /// session expired because no refresh came, ours or the peer's (RFC 4028 §10).
    fn on_session_timer(&mut self, now: Instant, key: CallKey) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.phase != Phase::Answered {
            return;
        }
        let Some(sip) = call.sip.as_mut() else {
            return;
        };
        if sip.bye_after_ack.is_some() {
            // Already ending (the BYE waits for the caller's ACK).
            return;
        }
        let Some(t) = sip.session.as_mut() else {
            return;
        };
        let deadline = sip.session_deadline.unwrap_or(now);
        if t.we_refresh && !t.refresh_sent && now < deadline {
            if sip.reinvite_out.is_some()
                || sip.glare_retry.is_some()
                || sip.reinvite_in_unacked
                || sip.pending_2xx.is_some()
            {
                // Another offer is under way (its 2xx refreshes too) or cannot be made yet:
                // try again shortly, as long as the session lasts.
                let again = REFRESH_RETRY.min(deadline - now);
                self.arm(now, key, CallTimer::Session, again);
                return;
            }
            t.refresh_sent = true;
            let dir = sip.local_sdp.as_ref().map(|l| l.direction);
            self.arm(now, key, CallTimer::Session, deadline - now);
            if let Some(dir) = dir {
                debug!(call = %key, "refreshing the session");
                self.send_reinvite(now, key, dir);
            }
            return;
        }
        let _g = self.span(key).entered();
        warn!(call = %key, "ending the call: the SIP session was not refreshed in time");
        self.metrics.session_expired.fetch_add(1, Ordering::Relaxed);
        self.send_event(key, end_event(SESSION_EXPIRED));
        self.on_remote_end(now, key, SESSION_EXPIRED);
    }

    /// Nothing came from the call's SIP peer for `silent_for`: a peer that vanished without a
    /// BYE. The call ends on both sides with `MEDIA_TIMEOUT`.
    fn on_media_silent(&mut self, now: Instant, key: CallKey, silent_for: Duration) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        // A report under an earlier limit (the call was put on hold since) is stale.
        let watched = call.sip.as_ref().and_then(|s| s.silence_watch).flatten();
        if call.phase != Phase::Answered || watched.is_none_or(|l| silent_for < l) {
            return;
        }
        let _g = self.span(key).entered();
        warn!(call = %key, ?silent_for, "ending the call: nothing heard from the SIP peer");
        self.metrics.media_timeouts.fetch_add(1, Ordering::Relaxed);
        // The HTTP/3 side is told why; the SIP side gets its BYE (after the caller's ACK if
        // our 2xx still waits for it).
        self.send_event(key, end_event(MEDIA_TIMEOUT));
        self.on_remote_end(now, key, MEDIA_TIMEOUT);
    }

    fn end_server_call(&mut self, key: CallKey) {
        if let Some(call) = self.calls.get(&key) {
            if call.ript.role == RiptRole::Server {
                self.out
                    .push_back(Output::Ript(RiptCmd::ServerEnd { call: key }));
            }
        }
    }

    /// Fails a call from whichever side is still open.
    fn fail_call(&mut self, now: Instant, key: CallKey, code: u16, reason: &str) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let answered = call.phase == Phase::Answered;
        let role = call.sip.as_ref().map(|s| s.role);
        match role {
            Some(SipRole::Uas) if !answered => self.final_to_caller(now, key, code, reason),
            Some(_) if answered => {
                self.send_bye(now, key, "Q.850;cause=41;text=\"Temporary failure\"")
            }
            Some(SipRole::Uac) if call.sip.as_ref().is_some_and(|s| s.invite_waits()) => {}
            Some(SipRole::Uac) => {
                // Unanswered toward a trunk: CANCEL once a provisional allows it, and keep the
                // call until the INVITE's final (a crossing 200 gets ACK + BYE).
                self.end_ript(now, key, "Q.850;cause=41;text=\"Temporary failure\"");
                let reason = "Q.850;cause=41;text=\"Temporary failure\"";
                let provisional = self
                    .calls
                    .get(&key)
                    .and_then(|c| c.sip.as_ref())
                    .map(|s| s.got_provisional)
                    .unwrap_or(false);
                if provisional {
                    self.send_cancel(now, key, reason);
                } else if let Some(sip) = self.calls.get_mut(&key).and_then(|c| c.sip.as_mut()) {
                    sip.cancel_wanted = Some(reason.into());
                }
                self.mark_ending(now, key, CallOutcome::Failed);
                return;
            }
            _ => {}
        }
        self.end_ript(now, key, "Q.850;cause=41;text=\"Temporary failure\"");
        self.finish(now, key, CallOutcome::Failed);
    }

    /// Marks a UAC call whose INVITE is being cancelled; it is freed when the final arrives.
    fn mark_ending(&mut self, now: Instant, key: CallKey, outcome: CallOutcome) {
        if let Some(c) = self.calls.get_mut(&key) {
            c.phase = Phase::Ended;
            let _ = outcome;
        }
        self.disarm(key, CallTimer::NoAnswer);
        // Keep the call entry: the INVITE transaction still runs. A final response (or Timer
        // B/C) frees it through `finish`. Media is released now.
        if let Some(c) = self.calls.get_mut(&key) {
            if let Some(p) = c.port.take() {
                self.put_port(p, now);
                self.out
                    .push_back(Output::Media(MediaCmd::Close { call: key }));
            }
        }
    }

    /// A media port for a new SIP leg, counted in `riptide_media_port_pairs_held`.
    fn take_port(&mut self, now: Instant) -> Option<u16> {
        let p = self.ports.take(now);
        self.port_gauge();
        p
    }

    /// Releases a SIP leg's media port: it cools, and no call holds it.
    fn put_port(&mut self, p: u16, now: Instant) {
        self.ports.put(p, now);
        self.port_gauge();
    }

    fn port_gauge(&self) {
        self.metrics
            .media_port_pairs_held
            .store(self.ports.held() as u64, Ordering::Relaxed);
    }

    /// Removes a call and releases everything it holds.
    fn finish(&mut self, now: Instant, key: CallKey, outcome: CallOutcome) {
        let Some(call) = self.calls.remove(&key) else {
            return;
        };
        self.digest.forget(key);
        if let Some(p) = call.port {
            self.put_port(p, now);
            self.out
                .push_back(Output::Media(MediaCmd::Close { call: key }));
        } else if call.ript.echo {
            self.out
                .push_back(Output::Media(MediaCmd::Close { call: key }));
        }
        if let Some(sip) = &call.sip {
            // An INVITE (or re-INVITE) still waiting for its final response would wait
            // forever once a provisional stopped Timer B: drop it with the call. BYE and
            // CANCEL transactions keep running so that they are retransmitted.
            let pending = sip
                .invite_branch
                .iter()
                .chain(sip.reinvite_out.as_ref().map(|(b, ..)| b));
            for b in pending {
                if self.txn.client_pending(b) {
                    self.txn.forget_client(b);
                    self.branches.remove(b);
                }
            }
            self.dialogs
                .remove(&(sip.call_id.clone(), sip.local_tag.clone()));
            if let (SipRole::Uac, Some((next_hop, cseq))) = (sip.role, sip.invite_sent) {
                let h = self.dialog_hash(&sip.call_id, &sip.local_tag, None);
                let ended = EndedInvite {
                    answered: call.answered_at.is_some(),
                    cseq,
                    next_hop,
                    earlier_hops: sip.earlier_hops.clone().into_boxed_slice(),
                    prack_cseq: sip.rel.prack_cseq,
                    byes: sip.forks_ended,
                };
                let mut evicted = self.ended_invites.insert(now, h, ended) == Inserted::Evicting;
                // The call's own dialog was ended with it: a copy of its 2xx is only ACKed.
                if let Some(remote) = sip.remote_tag.as_deref() {
                    let h = self.dialog_hash(&sip.call_id, &sip.local_tag, Some(remote));
                    evicted |= self.stray_byes.insert(now, h, ()) == Inserted::Evicting;
                }
                if evicted {
                    self.metrics
                        .ended_dialogs_evicted
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some(k) = &sip.invite_key {
                self.invites.remove(k);
            }
        }
        self.metrics.call_ended(outcome);
        if let Some(p) = &call.principal {
            if let Some(n) = self.per_client.get_mut(p) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_client.remove(p);
                }
            }
        }
        let _g = call.span.clone().entered();
        let duration_ms = call
            .answered_at
            .map(|a| a.elapsed_since_or_zero(call.started))
            .unwrap_or(0);
        info!(
            call = %key,
            sip_call_id = call.sip.as_ref().map(|s| s.call_id.as_str()).unwrap_or("-"),
            ript_call = call.ript.id.as_deref().unwrap_or("-"),
            outcome = ?outcome,
            setup_ms = duration_ms,
            destination = %call.destination,
            from = call.from.as_deref().unwrap_or("-"),
            "call ended"
        );
    }
}

/// Duration helper that never panics on clock order.
trait SinceOrZero {
    fn elapsed_since_or_zero(&self, earlier: Instant) -> u64;
}
impl SinceOrZero for Instant {
    fn elapsed_since_or_zero(&self, earlier: Instant) -> u64 {
        self.checked_duration_since(earlier)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

fn rand_ms(max: u64) -> u64 {
    rand::rng().random_range(0..=max)
}

fn strip_tag(v: &str) -> String {
    // Remove only the tag parameter outside <...>.
    let (head, params) = match v.rfind('>') {
        Some(i) => (&v[..=i], &v[i + 1..]),
        None => match v.find(';') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, ""),
        },
    };
    let kept: Vec<&str> = params
        .split(';')
        .filter(|p| !p.trim().is_empty() && !p.trim().to_ascii_lowercase().starts_with("tag="))
        .collect();
    if kept.is_empty() {
        head.trim().to_string()
    } else {
        format!("{};{}", head.trim(), kept.join(";"))
    }
}

/// The destination as a SIP user part: keeps digits, `+` and unreserved characters.
fn sanitize_user(d: &str) -> String {
    let d = d.strip_prefix("tel:").unwrap_or(d);
    let d = d.split('@').next().unwrap_or(d);
    d.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+-_.!~*'()&=$,;?/".contains(*c))
        .collect()
}

fn default_reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Error",
    }
}

/// ACK for a non-2xx final response (RFC 3261 §17.1.1.3): the INVITE's Request-URI, top Via,
/// From, Call-ID, Route and CSeq number, the response's To.
fn build_ack_for(invite: &[u8], resp: &Response) -> Option<Bytes> {
    let SipMessage::Request(req) = rsipstack::sip::parser::parse_message(invite).ok()? else {
        return None;
    };
    let via = msg::first_of_list(&msg::first_header(&req.headers, "Via")?).to_string();
    let from = msg::first_header(&req.headers, "From")?;
    let call_id = msg::first_header(&req.headers, "Call-ID")?;
    let cseq = msg::first_header(&req.headers, "CSeq")?;
    let num = cseq.split_whitespace().next()?;
    let to = msg::first_header(&resp.headers, "To")?;
    let mut s = format!(
        "ACK {} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n",
        req.uri
    );
    for r in msg::header_values(&req.headers, "Route") {
        s.push_str(&format!("Route: {r}\r\n"));
    }
    s.push_str(&format!(
        "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {num} ACK\r\nContent-Length: 0\r\n\r\n"
    ));
    Some(Bytes::from(s))
}

/// The hub's view of a negotiated codec list: the voice codec's clock rate, and the
/// telephone-event payload type at that rate.
fn codec_cmd(call: CallKey, formats: &[sdp::Format], dtmf_as_info: bool) -> MediaCmd {
    let (clock_rate, dtmf_pt) = voice_and_events(formats);
    MediaCmd::SetCodec {
        call,
        clock_rate,
        dtmf_pt,
        dtmf_as_info,
    }
}

/// Whether the peer's `Allow` (in its INVITE or 2xx) lists methods and not INFO, on a leg whose
/// trunk did not ask for keys as INFO: the keys that go as INFO only because its SDP took no
/// telephone-event (ADR 0031) are then not sent at all, rather than one INFO per key that it
/// would refuse. A trunk with `dtmf = "info"` gets them whatever its `Allow` says.
fn no_info_unasked(headers: &rsipstack::sip::Headers, sec: &LegSecurity) -> bool {
    let allow = msg::header_values(headers, "Allow");
    sec.policy.dtmf != crate::config::DtmfMode::Info
        && !allow.is_empty()
        && !allow
            .iter()
            .flat_map(|v| v.split(','))
            .any(|m| m.trim().eq_ignore_ascii_case("INFO"))
}

/// The voice codec's clock rate (8000 without one) and the telephone-event payload type at
/// that rate: what the leg detects keys with.
fn voice_and_events(formats: &[sdp::Format]) -> (u32, Option<u8>) {
    let voice = formats.iter().find(|f| !model::is_auxiliary_codec(&f.name));
    let clock_rate = voice.map_or(8000, |f| f.clock_rate);
    let dtmf_pt = formats
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("telephone-event") && f.clock_rate == clock_rate)
        .map(|f| f.pt);
    (clock_rate, dtmf_pt)
}

/// The CSeq number of a request we hold.
fn invite_cseq(req: &Request) -> u32 {
    msg::first_header(&req.headers, "CSeq")
        .and_then(|c| c.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Where the peer takes RTCP: nowhere apart with rtcp-mux (RFC 5761), else its `a=rtcp`
/// (RFC 3605: a port, and an address when not the media's), else the RTP port + 1.
fn rtcp_of(rtp: SocketAddr, audio: &sdp::MediaDesc) -> Option<SocketAddr> {
    if audio.rtcp_mux {
        return None;
    }
    // Port 0 names nothing, and an address of the other family is not where this media goes.
    let given = audio
        .rtcp
        .filter(|(port, addr)| *port != 0 && addr.is_none_or(|a| a.is_ipv4() == rtp.is_ipv4()));
    match given {
        Some((port, addr)) => Some(SocketAddr::new(addr.unwrap_or(rtp.ip()), port)),
        None => rtp
            .port()
            .checked_add(1)
            .map(|p| SocketAddr::new(rtp.ip(), p)),
    }
}

/// A reason from the network, made safe to put in a SIP header: parsed and re-rendered, or
/// `default` when it does not parse (RFC 3326 grammar; no CR/LF can survive).
fn safe_reason(r: &str, default: &str) -> String {
    model::parse_reason(r)
        .map(|r| r.to_header_value())
        .filter(|v| !v.contains(['\r', '\n']))
        .unwrap_or_else(|| default.to_string())
}

/// A reason phrase from the network, safe for a status line: printable ASCII, at most 80 bytes.
/// What an OPTIONS' `Origin` headers say.
#[derive(Debug, PartialEq, Eq)]
enum OriginCheck {
    /// No `Origin`: an ordinary OPTIONS.
    Absent,
    /// On the list; the value to echo in `Access-Control-Allow-Origin` (as received).
    Allowed(String),
    /// A well-formed origin not on the list, or `null`.
    Forbidden,
    /// More than one `Origin`, or a value that is not `scheme://host[:port]`.
    Malformed(&'static str),
}

/// Matches `Origin` values against `allowed` after normalising both (lower-case scheme and host,
/// default port dropped): exact matches only, never a prefix or suffix.
fn sip_origin_check(values: &[String], allowed: &[String]) -> OriginCheck {
    let v = match values {
        [] => return OriginCheck::Absent,
        [v] => v.trim(),
        _ => return OriginCheck::Malformed("more than one Origin"),
    };
    if v.eq_ignore_ascii_case("null") {
        return OriginCheck::Forbidden;
    }
    let Some(norm) = crate::config::normalize_origin(v) else {
        return OriginCheck::Malformed("Origin is not scheme://host[:port]");
    };
    let on_list = allowed
        .iter()
        .any(|a| crate::config::normalize_origin(a).as_deref() == Some(norm.as_str()));
    if on_list {
        OriginCheck::Allowed(v.to_string())
    } else {
        OriginCheck::Forbidden
    }
}

/// A `POST {TG}/calls` whose PASSporT is being verified.
struct PendingRipt {
    req: ReqId,
    tg: String,
    request: CallRequest,
    caller: Caller,
    prepared: crate::stir::verify::Prepared,
}

/// What our verification service concluded about a call coming in.
struct Verification {
    /// RFC 8224 §6.2.3 value.
    verstat: String,
    /// RFC 9410 Reason values for Identity headers that failed beside the decisive one.
    reasons: Vec<String>,
    /// The decisive SHAKEN PASSporT (full-form compact JWS) when it verified: passed on
    /// unchanged as the call leaves, rather than replaced by our own signature (transit).
    passport: Option<String>,
}

impl Verification {
    fn of(outcome: &crate::stir::verify::VerifyOutcome, headers: &[String]) -> Verification {
        let passport = outcome
            .verified()
            .and(outcome.decisive)
            .and_then(|i| headers.get(i))
            .and_then(|h| crate::stir::IdentityHeader::parse(h).ok())
            .filter(|h| h.form() == crate::stir::identity::PassportForm::Full)
            .map(|h| h.jws().to_string());
        Verification {
            verstat: outcome.verstat.as_str().to_string(),
            reasons: outcome.reason_headers(),
            passport,
        }
    }
}

/// The SIP `Identity` header value that carries `jws` (a full-form SHAKEN PASSporT), with
/// `info` taken from the PASSporT's own `x5u`; `None` when it does not decode.
fn identity_for(jws: &str) -> Option<String> {
    let d = crate::stir::passport::DecodedPassport::decode(jws).ok()?;
    let x5u = d.header.x5u?;
    Some(crate::stir::IdentityHeader::new(jws, &x5u, "shaken").to_string())
}

/// The `verstat` parameter of a tel URI or of a SIP URI's user part (RFC 8224 §6.2.3), when it
/// is one of the values the RFC defines.
fn verstat_param(uri: &str) -> Option<&str> {
    let user = uri.split_once('@').map_or(uri, |(u, _)| u);
    let v = user.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("verstat").then_some(v.trim())
    })?;
    known_verstat(v)
}

/// `v` as one of the `verstat` values RFC 8224 §6.2.3 defines.
fn known_verstat(v: &str) -> Option<&'static str> {
    [
        "TN-Validation-Passed",
        "TN-Validation-Failed",
        "No-TN-Validation",
    ]
    .into_iter()
    .find(|known| known.eq_ignore_ascii_case(v))
}

fn safe_phrase(p: &str) -> String {
    p.chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .take(80)
        .collect()
}

/// Our key for the client transaction of a CANCEL (it shares the INVITE's branch on the wire).
fn cancel_key(invite_branch: &str) -> String {
    format!("{invite_branch}\u{0}cancel")
}

fn end_event(reason: &str) -> Event {
    let mut ev = Event::new(EventName::End);
    ev.reason = Some(reason.to_string());
    ev
}

/// The Reason of ending a call whose SIP peer went silent (`[media] timeout_secs`).
const MEDIA_TIMEOUT: &str = "Q.850;cause=102;text=\"Media timeout\"";
/// A session refresh that cannot go out yet (another offer is under way) is tried again after
/// this long.
const REFRESH_RETRY: Duration = Duration::from_secs(2);
/// Reason of the BYE (and of the HTTP/3 side's end) when the SIP peer's session refresh is
/// overdue (RFC 4028 §10).
const SESSION_EXPIRED: &str = "Q.850;cause=102;text=\"Session timer expired\"";

/// The Reason of a BYE to a fork whose answer came after another fork's.
const COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";

/// The Reason for ending a call that was never answered: a CANCEL without one of its own, or
/// a BYE to an answer that crossed the CANCEL.
const REQUEST_TERMINATED: &str = "SIP;cause=487;text=\"Request Terminated\"";

/// RFC 3326 reason for an ordinary hang-up.
pub const NORMAL_CLEARING: &str = "Q.850;cause=16;text=\"Normal call clearing\"";

#[path = "digest_auth.rs"]
mod digest_auth;

#[path = "prack.rs"]
mod prack;

#[path = "trunk_ping.rs"]
mod trunk_ping;

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "handler_tests.rs"]
mod handler_tests;

#[cfg(test)]
#[path = "session_timer_tests.rs"]
mod session_timer_tests;

#[cfg(test)]
#[path = "prack_tests.rs"]
mod prack_tests;

#[cfg(test)]
#[path = "delayed_offer_tests.rs"]
mod delayed_offer_tests;

#[cfg(test)]
#[path = "payload_type_tests.rs"]
mod payload_type_tests;

#[cfg(test)]
#[path = "trunk_ping_tests.rs"]
mod trunk_ping_tests;
