//! Trunk health by OPTIONS (`[[sip_trunk]] ping_secs`), as carriers' SBCs ping their peers.
//!
//! Every `ping_secs`, each address of a pinged trunk gets an out-of-dialog OPTIONS (RFC 3261
//! §11). An address is **down** while its last ping went unanswered for a whole interval, or
//! was answered 408, 503 or 504 (a proxy in front of a dead target, an overloaded or closed
//! server); any other answer, 404 or 405 included, shows a server that is there, and the
//! address is **up**. A transport error (a refused TCP/TLS connect) takes it down at once.
//!
//! Down addresses are tried last by the trunk's new calls, like addresses that just timed out
//! (ADR 0020), and still tried: a trunk whose every address is down is not refused without an
//! attempt. The state is the trunk's own: two trunks behind one outbound proxy ping the same
//! address for different targets, and may well get different answers.
//! `riptide_sip_trunk_addresses{trunk}` and `riptide_sip_trunk_addresses_up{trunk}` show each
//! pinged trunk's state; every change is logged.

use super::*;

/// OPTIONS this engine has out: by branch, the trunk, address and transport pinged.
#[derive(Debug, Default)]
pub(super) struct Pings {
    pub(super) inflight: HashMap<String, (usize, SocketAddr, Transport)>,
    /// When each trunk's next round is due (`None`: not pinged, or not started).
    next: Vec<Option<Instant>>,
    /// Trunks' addresses whose last ping failed.
    pub(super) down: HashSet<(usize, SocketAddr)>,
}

/// Answers that say the address cannot take calls now.
fn is_down_answer(code: u16) -> bool {
    matches!(code, 408 | 503 | 504)
}

impl Engine {
    /// Starts pinging the trunks that ask for it: the first round goes now.
    pub fn start_pings(&mut self, now: Instant) {
        self.pings.next = (self.cfg.trunks.iter())
            .map(|t| t.ping.map(|_| now))
            .collect();
        self.run_pings(now);
        self.pump(now);
    }

    /// A pinged trunk's addresses changed (DNS): its next round goes now.
    pub(super) fn ping_new_addresses(&mut self, now: Instant, t: usize) {
        if let Some(next) = self.pings.next.get_mut(t).filter(|n| n.is_some()) {
            *next = Some(now);
        }
    }

    /// When the next round of pings is due.
    pub(super) fn next_ping(&self) -> Option<Instant> {
        self.pings.next.iter().flatten().min().copied()
    }

    /// Sends the rounds that are due.
    pub(super) fn run_pings(&mut self, now: Instant) {
        for t in 0..self.pings.next.len() {
            let (Some(at), Some(every)) = (self.pings.next[t], self.cfg.trunks[t].ping) else {
                continue;
            };
            if at <= now {
                self.pings.next[t] = Some(now + every);
                self.ping_round(now, t);
            }
        }
    }

    fn ping_round(&mut self, now: Instant, t: usize) {
        let trunk = &self.cfg.trunks[t];
        let addrs: Vec<SocketAddr> = if trunk.unresolved {
            Vec::new()
        } else {
            trunk.addrs().collect()
        };
        // Last round's pings still unanswered: those addresses are down (those the trunk no
        // longer has, after a DNS change, are just forgotten).
        let unanswered: Vec<(String, SocketAddr)> = (self.pings.inflight.iter())
            .filter(|(_, &(tt, ..))| tt == t)
            .map(|(b, &(_, a, _))| (b.clone(), a))
            .collect();
        for (branch, addr) in unanswered {
            self.pings.inflight.remove(&branch);
            self.txn.forget_client(&branch);
            if addrs.contains(&addr) {
                self.ping_result(t, addr, false, "no answer to OPTIONS");
            }
        }
        self.pings
            .down
            .retain(|(tt, a)| *tt != t || addrs.contains(a));
        for addr in addrs {
            self.send_ping(now, t, addr);
        }
        self.count_trunk(t);
    }

    fn send_ping(&mut self, now: Instant, t: usize, addr: SocketAddr) {
        let trunk = &self.cfg.trunks[t];
        let transport = trunk.dest.transport;
        let via_host = self.cfg.via_host(transport);
        let uri = format!("sip:{}", trunk.host);
        let to = format!("<{uri}>");
        let from = format!("<sip:riptide@{via_host}>;tag={}", msg::token(12));
        let call_id = format!("{}@{}", msg::token(20), self.cfg.node);
        let branch = msg::branch();
        let routes: Vec<String> = trunk.proxy_route.iter().cloned().collect();
        let spec = RequestSpec {
            method: "OPTIONS",
            uri: &uri,
            via_host: &via_host,
            transport,
            branch: &branch,
            from: &from,
            to: &to,
            call_id: &call_id,
            cseq: 1,
            contact: None,
            routes: &routes,
            max_forwards: 70,
        };
        let bytes = msg::request(&spec, &Extra::none().header("Accept", "application/sdp"));
        let dest = Dest {
            addr,
            transport,
            conn: None,
        };
        self.pings
            .inflight
            .insert(branch.clone(), (t, addr, transport));
        self.txn
            .send_request(now, &branch, false, bytes.into(), dest);
    }

    /// A response to one of our pings, if `branch` is one: true when it was.
    pub(super) fn on_ping_response(&mut self, now: Instant, branch: &str, code: u16) -> bool {
        let Some(&(t, addr, _)) = self.pings.inflight.get(branch) else {
            return false;
        };
        self.txn.on_response(now, branch, code, |_| None);
        if code < 200 {
            return true;
        }
        self.pings.inflight.remove(branch);
        let why = format!("{code} to OPTIONS");
        self.ping_result(t, addr, !is_down_answer(code), &why);
        self.count_trunk(t);
        true
    }

    /// Our ping to `branch` timed out (Timer F, when the interval is longer): true when it was
    /// a ping.
    pub(super) fn on_ping_timeout(&mut self, branch: &str) -> bool {
        let Some((t, addr, _)) = self.pings.inflight.remove(branch) else {
            return false;
        };
        self.ping_result(t, addr, false, "no answer to OPTIONS");
        self.count_trunk(t);
        true
    }

    /// A connection to `addr` failed: pings waiting there have their answer.
    pub(super) fn ping_unreachable(&mut self, addr: SocketAddr, transport: Transport) {
        let failed: Vec<(String, usize)> = (self.pings.inflight.iter())
            .filter(|(_, &(_, a, tr))| a == addr && tr == transport)
            .map(|(b, &(t, ..))| (b.clone(), t))
            .collect();
        for (branch, t) in failed {
            self.pings.inflight.remove(&branch);
            self.txn.forget_client(&branch);
            self.ping_result(t, addr, false, "could not connect");
            self.count_trunk(t);
        }
    }

    fn ping_result(&mut self, t: usize, addr: SocketAddr, up: bool, why: &str) {
        let trunk = &self.cfg.trunks[t].name;
        if up {
            if self.pings.down.remove(&(t, addr)) {
                info!(%trunk, %addr, %why, "trunk address up again");
            }
        } else if self.pings.down.insert((t, addr)) {
            warn!(%trunk, %addr, %why, "trunk address down: new calls try it last");
        }
    }

    /// Publishes how many of trunk `t`'s addresses are up (none while its name has none).
    fn count_trunk(&self, t: usize) {
        let trunk = &self.cfg.trunks[t];
        let (mut all, mut up) = (0, 0);
        if !trunk.unresolved {
            for a in trunk.addrs() {
                all += 1;
                up += u64::from(!self.pings.down.contains(&(t, a)));
            }
        }
        self.metrics.trunk_addresses(&trunk.name, all, up);
    }
}
