//! RFC 3261 §17 transactions, sans-IO.
//!
//! The layer absorbs retransmissions and drives retransmission timers; it never touches a socket
//! or a clock. Inputs carry `now`; outputs are messages to send and timeouts to report, fetched
//! with [`TxnLayer::poll_output`]; [`TxnLayer::poll_timeout`] says when to call
//! [`TxnLayer::handle_timeout`] next.
//!
//! Simplifications, each deliberate: 2xx retransmission and 2xx ACKs belong to the dialog (the
//! engine), as RFC 3261 §13.3.1.4 says; server transactions for INVITE linger for 64·T1 after a
//! 2xx (RFC 6026 "Accepted") so that INVITE retransmissions are absorbed.

use super::msg::Transport;
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Identifies a stream connection in the transport driver (TCP/TLS); `None` for UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dest {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// For stream transports, the connection to reuse if it is still open; for UDP, the
    /// listening socket a request arrived on (replies leave from it).
    pub conn: Option<ConnId>,
}

/// A message for the transport driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipOut {
    pub dest: Dest,
    pub bytes: Bytes,
}

/// Server transactions are matched by branch, sent-by and method (RFC 3261 §17.2.3); ACK
/// matches the INVITE transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey {
    pub branch: String,
    pub sent_by: String,
    pub invite: bool,
    pub cancel: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutput {
    Send(SipOut),
    /// Timer B or F fired: the TU treats it as a 408 for the request with this branch.
    ClientTimeout {
        branch: String,
    },
}

/// What to do with an incoming request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestDisposition {
    /// A new request: the TU must handle it.
    New,
    /// A retransmission: already answered (last response re-sent) or being handled.
    Retransmission,
    /// An ACK that completed a non-2xx INVITE transaction; nothing for the TU.
    AckAbsorbed,
}

/// What to do with an incoming response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseDisposition {
    /// Pass to the TU.
    Deliver,
    /// Retransmission or stray: drop (any ACK needed has been re-sent).
    Absorb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    /// INVITE: Calling; non-INVITE: Trying.
    Initial,
    Proceeding,
    Completed,
}

#[derive(Debug)]
struct ClientTxn {
    invite: bool,
    /// The request as sent, for retransmissions; emptied once a final response completes the
    /// transaction.
    request: Bytes,
    dest: Dest,
    state: ClientState,
    interval: Duration,
    /// The ACK we sent for a non-2xx final, re-sent on retransmitted finals.
    ack: Option<Bytes>,
    gen: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    Proceeding,
    Completed,
    Accepted,
    Confirmed,
}

#[derive(Debug)]
struct ServerTxn {
    state: ServerState,
    last: Option<SipOut>,
    interval: Duration,
    gen: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    Client {
        branch: String,
        kind: ClientTimer,
    },
    Server {
        key: ServerKeyOrd,
        kind: ServerTimer,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ClientTimer {
    Retransmit,
    Timeout,
    Linger,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ServerTimer {
    Retransmit,
    Timeout,
    Linger,
}

/// `ServerKey` in a form that can sit in the timer heap.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ServerKeyOrd(String, String, bool, bool);

impl From<&ServerKey> for ServerKeyOrd {
    fn from(k: &ServerKey) -> Self {
        ServerKeyOrd(k.branch.clone(), k.sent_by.clone(), k.invite, k.cancel)
    }
}

impl From<&ServerKeyOrd> for ServerKey {
    fn from(k: &ServerKeyOrd) -> Self {
        ServerKey {
            branch: k.0.clone(),
            sent_by: k.1.clone(),
            invite: k.2,
            cancel: k.3,
        }
    }
}

pub struct TxnLayer {
    t1: Duration,
    t2: Duration,
    t4: Duration,
    clients: HashMap<String, ClientTxn>,
    servers: HashMap<ServerKey, ServerTxn>,
    timers: BinaryHeap<Reverse<(Instant, u64, TimerRef)>>,
    out: VecDeque<TxnOutput>,
    gen: u64,
    max: usize,
}

impl TxnLayer {
    /// `max` bounds the number of live transactions of each kind.
    pub fn new(t1: Duration, max: usize) -> Self {
        TxnLayer {
            t1,
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            clients: HashMap::new(),
            servers: HashMap::new(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            gen: 0,
            max,
        }
    }

    pub fn len(&self) -> (usize, usize) {
        (self.clients.len(), self.servers.len())
    }

    pub fn is_full(&self) -> bool {
        self.clients.len() >= self.max || self.servers.len() >= self.max
    }

    fn next_gen(&mut self) -> u64 {
        self.gen += 1;
        self.gen
    }

    fn arm(&mut self, at: Instant, gen: u64, t: TimerRef) {
        self.timers.push(Reverse((at, gen, t)));
    }

    /// Sends a request in a new client transaction identified by its (unique) branch.
    pub fn send_request(
        &mut self,
        now: Instant,
        branch: &str,
        invite: bool,
        bytes: Bytes,
        dest: Dest,
    ) {
        let gen = self.next_gen();
        self.out.push_back(TxnOutput::Send(SipOut {
            dest,
            bytes: bytes.clone(),
        }));
        if !dest.transport.is_reliable() {
            self.arm(
                now + self.t1,
                gen,
                TimerRef::Client {
                    branch: branch.to_string(),
                    kind: ClientTimer::Retransmit,
                },
            );
        }
        self.arm(
            now + self.t1 * 64,
            gen,
            TimerRef::Client {
                branch: branch.to_string(),
                kind: ClientTimer::Timeout,
            },
        );
        self.clients.insert(
            branch.to_string(),
            ClientTxn {
                invite,
                request: bytes,
                dest,
                state: ClientState::Initial,
                interval: self.t1,
                ack: None,
                gen,
            },
        );
    }

    /// Drops a client transaction the TU no longer wants (its call is gone); its timers
    /// become stale and fire into nothing.
    pub fn forget_client(&mut self, branch: &str) {
        self.clients.remove(branch);
    }

    /// Whether a client transaction with this branch is still waiting for a final response.
    pub fn client_pending(&self, branch: &str) -> bool {
        self.clients
            .get(branch)
            .map(|t| t.state != ClientState::Completed)
            .unwrap_or(false)
    }

    /// An incoming response for the client transaction `branch`. For a non-2xx final to an
    /// INVITE, `ack` builds the ACK (called once; RFC 3261 §17.1.1.3).
    pub fn on_response(
        &mut self,
        now: Instant,
        branch: &str,
        code: u16,
        ack: impl FnOnce(&[u8]) -> Option<Bytes>,
    ) -> ResponseDisposition {
        let t1 = self.t1;
        let t4 = self.t4;
        let Some(t) = self.clients.get_mut(branch) else {
            return ResponseDisposition::Absorb;
        };
        if code < 200 {
            if t.state == ClientState::Completed {
                return ResponseDisposition::Absorb;
            }
            t.state = ClientState::Proceeding;
            if t.invite {
                // Timer A stops on a provisional; Timer B keeps running only until then (the TU
                // has its own no-answer timer from here on).
                t.gen += 1;
            } else {
                t.interval = self.t2;
            }
            return ResponseDisposition::Deliver;
        }
        if t.state == ClientState::Completed {
            if let Some(a) = &t.ack {
                self.out.push_back(TxnOutput::Send(SipOut {
                    dest: t.dest,
                    bytes: a.clone(),
                }));
            }
            return ResponseDisposition::Absorb;
        }
        t.state = ClientState::Completed;
        t.gen += 1;
        let gen = t.gen;
        let reliable = t.dest.transport.is_reliable();
        if t.invite && code >= 300 {
            t.ack = ack(&t.request);
            if let Some(a) = &t.ack {
                self.out.push_back(TxnOutput::Send(SipOut {
                    dest: t.dest,
                    bytes: a.clone(),
                }));
            }
        }
        // Never sent again: a completed transaction only absorbs (or re-ACKs) retransmitted
        // finals, and an INVITE's lingers 32 s after a 2xx, most of a short call.
        t.request = Bytes::new();
        // Timer D (32 s, INVITE non-2xx), K (T4, non-INVITE); a 2xx ends an INVITE client
        // transaction at once (RFC 6026 keeps it briefly to absorb retransmissions: 64·T1).
        let linger = if reliable && !t.invite {
            Duration::ZERO
        } else if t.invite && code < 300 {
            t1 * 64
        } else if t.invite {
            Duration::from_secs(32)
        } else {
            t4
        };
        self.arm(
            now + linger,
            gen,
            TimerRef::Client {
                branch: branch.to_string(),
                kind: ClientTimer::Linger,
            },
        );
        ResponseDisposition::Deliver
    }

    /// An incoming request. Retransmissions are answered here with the last response.
    pub fn on_request(
        &mut self,
        now: Instant,
        key: &ServerKey,
        is_ack: bool,
    ) -> RequestDisposition {
        if is_ack {
            let k = ServerKey {
                invite: true,
                cancel: false,
                ..key.clone()
            };
            let t4 = self.t4;
            if let Some(t) = self.servers.get_mut(&k) {
                if t.state == ServerState::Completed {
                    t.state = ServerState::Confirmed;
                    t.gen += 1;
                    let gen = t.gen;
                    self.arm(
                        now + t4,
                        gen,
                        TimerRef::Server {
                            key: (&k).into(),
                            kind: ServerTimer::Linger,
                        },
                    );
                    return RequestDisposition::AckAbsorbed;
                }
                if t.state == ServerState::Confirmed {
                    return RequestDisposition::AckAbsorbed;
                }
            }
            // ACK for a 2xx: the dialog's business.
            return RequestDisposition::New;
        }
        if let Some(t) = self.servers.get(key) {
            if let Some(last) = &t.last {
                if t.state != ServerState::Accepted {
                    self.out.push_back(TxnOutput::Send(last.clone()));
                }
            }
            return RequestDisposition::Retransmission;
        }
        let gen = self.next_gen();
        self.servers.insert(
            key.clone(),
            ServerTxn {
                state: ServerState::Proceeding,
                last: None,
                interval: self.t1,
                gen,
            },
        );
        RequestDisposition::New
    }

    /// Whether the INVITE server transaction `key` can still take a final response.
    pub fn server_proceeding(&self, key: &ServerKey) -> bool {
        self.servers
            .get(key)
            .map(|t| t.state == ServerState::Proceeding)
            .unwrap_or(false)
    }

    /// Sends a response within the server transaction `key`.
    pub fn send_response(&mut self, now: Instant, key: &ServerKey, code: u16, out: SipOut) {
        let t1 = self.t1;
        let t2 = self.t2;
        let reliable = out.dest.transport.is_reliable();
        let Some(t) = self.servers.get_mut(key) else {
            // The transaction is gone (e.g. a late answer): send anyway, statelessly.
            self.out.push_back(TxnOutput::Send(out));
            return;
        };
        if t.state != ServerState::Proceeding {
            return;
        }
        self.out.push_back(TxnOutput::Send(out.clone()));
        t.last = Some(out);
        if code < 200 {
            return;
        }
        t.gen += 1;
        let gen = t.gen;
        let k: ServerKeyOrd = key.into();
        if key.invite && code >= 300 {
            t.state = ServerState::Completed;
            t.interval = t1;
            if !reliable {
                self.arm(
                    now + t1,
                    gen,
                    TimerRef::Server {
                        key: k.clone(),
                        kind: ServerTimer::Retransmit,
                    },
                );
            }
            self.arm(
                now + t1 * 64,
                gen,
                TimerRef::Server {
                    key: k,
                    kind: ServerTimer::Timeout,
                },
            );
            let _ = t2;
        } else if key.invite {
            t.state = ServerState::Accepted;
            self.arm(
                now + t1 * 64,
                gen,
                TimerRef::Server {
                    key: k,
                    kind: ServerTimer::Linger,
                },
            );
        } else {
            t.state = ServerState::Completed;
            let linger = if reliable { Duration::ZERO } else { t1 * 64 };
            self.arm(
                now + linger,
                gen,
                TimerRef::Server {
                    key: k,
                    kind: ServerTimer::Linger,
                },
            );
        }
    }

    pub fn poll_output(&mut self) -> Option<TxnOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, gen, t))) = self.timers.pop() else {
                break;
            };
            match t {
                TimerRef::Client { branch, kind } => self.client_timer(now, &branch, gen, kind),
                TimerRef::Server { key, kind } => self.server_timer(now, &key, gen, kind),
            }
        }
    }

    fn client_timer(&mut self, now: Instant, branch: &str, gen: u64, kind: ClientTimer) {
        let t2 = self.t2;
        let Some(t) = self.clients.get_mut(branch) else {
            return;
        };
        // A timer armed in an earlier state is stale, except Timer B/F which spans Proceeding
        // for non-INVITE (its generation is bumped only on final responses there).
        let stale = gen != t.gen;
        match kind {
            ClientTimer::Retransmit => {
                if stale || t.state == ClientState::Completed {
                    return;
                }
                if t.invite && t.state != ClientState::Initial {
                    return;
                }
                self.out.push_back(TxnOutput::Send(SipOut {
                    dest: t.dest,
                    bytes: t.request.clone(),
                }));
                t.interval = if t.invite {
                    t.interval * 2
                } else {
                    (t.interval * 2).min(t2)
                };
                let next = now + t.interval;
                let gen = t.gen;
                self.arm(
                    next,
                    gen,
                    TimerRef::Client {
                        branch: branch.to_string(),
                        kind: ClientTimer::Retransmit,
                    },
                );
            }
            ClientTimer::Timeout => {
                if t.state == ClientState::Completed {
                    return;
                }
                // For INVITE a provisional stops Timer B (the TU's no-answer timer takes over).
                if t.invite && t.state == ClientState::Proceeding {
                    return;
                }
                self.clients.remove(branch);
                self.out.push_back(TxnOutput::ClientTimeout {
                    branch: branch.to_string(),
                });
            }
            ClientTimer::Linger => {
                if !stale {
                    self.clients.remove(branch);
                }
            }
        }
    }

    fn server_timer(&mut self, now: Instant, k: &ServerKeyOrd, gen: u64, kind: ServerTimer) {
        let key: ServerKey = k.into();
        let t2 = self.t2;
        let Some(t) = self.servers.get_mut(&key) else {
            return;
        };
        if gen != t.gen {
            return;
        }
        match kind {
            ServerTimer::Retransmit => {
                if t.state != ServerState::Completed {
                    return;
                }
                if let Some(last) = &t.last {
                    self.out.push_back(TxnOutput::Send(last.clone()));
                }
                t.interval = (t.interval * 2).min(t2);
                let at = now + t.interval;
                self.arm(
                    at,
                    gen,
                    TimerRef::Server {
                        key: k.clone(),
                        kind: ServerTimer::Retransmit,
                    },
                );
            }
            ServerTimer::Timeout | ServerTimer::Linger => {
                self.servers.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(t: Transport) -> Dest {
        Dest {
            addr: "127.0.0.1:5080".parse().unwrap(),
            transport: t,
            conn: None,
        }
    }

    /// A layer with one request sent at `t0` on branch `b1` (its first send already drained).
    fn sent(invite: bool, t: Transport) -> (Instant, TxnLayer) {
        let t0 = Instant::now();
        let mut l = TxnLayer::new(Duration::from_millis(500), 100);
        let body: &'static [u8] = if invite { b"INVITE" } else { b"BYE" };
        l.send_request(t0, "b1", invite, Bytes::from_static(body), dest(t));
        drain(&mut l);
        (t0, l)
    }

    fn drain(l: &mut TxnLayer) -> Vec<TxnOutput> {
        std::iter::from_fn(|| l.poll_output()).collect()
    }

    fn run_until(l: &mut TxnLayer, start: Instant, until: Instant) -> Vec<(Duration, TxnOutput)> {
        let mut got = Vec::new();
        while let Some(at) = l.poll_timeout() {
            if at > until {
                break;
            }
            l.handle_timeout(at);
            for o in drain(l) {
                got.push((at - start, o));
            }
        }
        got
    }

    #[test]
    fn invite_retransmits_on_timer_a_and_times_out_on_timer_b() {
        let t0 = Instant::now();
        let mut l = TxnLayer::new(Duration::from_millis(500), 100);
        l.send_request(
            t0,
            "b1",
            true,
            Bytes::from_static(b"INVITE"),
            dest(Transport::Udp),
        );
        assert_eq!(drain(&mut l).len(), 1);
        let got = run_until(&mut l, t0, t0 + Duration::from_secs(40));
        let sends: Vec<_> = got
            .iter()
            .filter(|(_, o)| matches!(o, TxnOutput::Send(_)))
            .map(|(d, _)| d.as_millis())
            .collect();
        // Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s.
        assert_eq!(sends, vec![500, 1500, 3500, 7500, 15500, 31500]);
        let timeout: Vec<_> = got
            .iter()
            .filter(|(_, o)| matches!(o, TxnOutput::ClientTimeout { .. }))
            .map(|(d, _)| d.as_millis())
            .collect();
        assert_eq!(timeout, vec![32000], "Timer B = 64*T1");
    }

    #[test]
    fn provisional_stops_invite_retransmission_and_timer_b() {
        let (t0, mut l) = sent(true, Transport::Udp);
        assert_eq!(
            l.on_response(t0 + Duration::from_millis(100), "b1", 180, |_| None),
            ResponseDisposition::Deliver
        );
        let got = run_until(&mut l, t0, t0 + Duration::from_secs(60));
        assert!(got.is_empty(), "{got:?}");
        assert!(l.client_pending("b1"));
    }

    #[test]
    fn non_2xx_final_is_acked_and_retransmitted_final_reacked() {
        let (t0, mut l) = sent(true, Transport::Udp);
        let d = l.on_response(t0, "b1", 486, |_| Some(Bytes::from_static(b"ACK")));
        assert_eq!(d, ResponseDisposition::Deliver);
        let out = drain(&mut l);
        assert!(matches!(&out[..], [TxnOutput::Send(s)] if &s.bytes[..] == b"ACK"));
        let d = l.on_response(t0, "b1", 486, |_| panic!("ACK is built once"));
        assert_eq!(d, ResponseDisposition::Absorb);
        assert_eq!(drain(&mut l).len(), 1, "ACK re-sent");
    }

    #[test]
    fn reliable_transport_does_not_retransmit() {
        let (t0, mut l) = sent(false, Transport::Tcp);
        let got = run_until(&mut l, t0, t0 + Duration::from_secs(40));
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0].1, TxnOutput::ClientTimeout { .. }));
    }

    #[test]
    fn server_retransmission_gets_last_response_and_non_2xx_retransmits_until_ack() {
        let t0 = Instant::now();
        let mut l = TxnLayer::new(Duration::from_millis(500), 100);
        let key = ServerKey {
            branch: "z9hG4bKx".into(),
            sent_by: "127.0.0.1:5061".into(),
            invite: true,
            cancel: false,
        };
        assert_eq!(l.on_request(t0, &key, false), RequestDisposition::New);
        let out = |b: &'static [u8]| SipOut {
            dest: dest(Transport::Udp),
            bytes: Bytes::from_static(b),
        };
        l.send_response(t0, &key, 100, out(b"100"));
        drain(&mut l);
        assert_eq!(
            l.on_request(t0, &key, false),
            RequestDisposition::Retransmission
        );
        assert!(matches!(&drain(&mut l)[..], [TxnOutput::Send(s)] if &s.bytes[..] == b"100"));
        l.send_response(t0, &key, 486, out(b"486"));
        drain(&mut l);
        // Timer G: 0.5, 1.5 s ... until the ACK arrives at 2 s.
        let got = run_until(&mut l, t0, t0 + Duration::from_secs(2));
        assert_eq!(got.len(), 2);
        assert_eq!(
            l.on_request(t0 + Duration::from_secs(2), &key, true),
            RequestDisposition::AckAbsorbed
        );
        let got = run_until(&mut l, t0, t0 + Duration::from_secs(60));
        assert!(got.is_empty(), "no retransmission after ACK: {got:?}");
        assert_eq!(l.len().1, 0, "transaction freed after Timer I");
    }
}
