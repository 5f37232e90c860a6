//! DNS SRV for SIP next hops (RFC 3263 §4.2, RFC 2782), sans-IO: which name to ask, and in which
//! order to try the targets the answer names. The lookups themselves are in [`super::dns`].

use super::msg::Transport;
use std::net::SocketAddr;

/// Where an address came from in an SRV answer: its record's priority and weight, and which
/// record (several addresses can share one target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrvRank {
    pub priority: u16,
    pub weight: u16,
    /// The record's place in the answer: addresses with the same `target` are one server.
    pub target: u16,
}

/// A next hop's addresses, in the order found, with the SRV ranks they came with. `ranks` is
/// empty when the addresses did not come from SRV (an explicit port, or no SRV records: tried
/// in the order given); otherwise it has one entry per address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HopAddrs {
    pub addrs: Vec<SocketAddr>,
    pub ranks: Vec<SrvRank>,
}

impl HopAddrs {
    /// Addresses not from SRV.
    pub fn plain(addrs: Vec<SocketAddr>) -> Self {
        HopAddrs {
            addrs,
            ranks: Vec::new(),
        }
    }

    /// Only the addresses `keep` accepts, each with its rank.
    pub fn retain(&mut self, mut keep: impl FnMut(&SocketAddr) -> bool) {
        if self.ranks.is_empty() {
            self.addrs.retain(keep);
            return;
        }
        let (addrs, ranks) = self
            .addrs
            .iter()
            .zip(&self.ranks)
            .filter(|(a, _)| keep(a))
            .map(|(a, r)| (*a, *r))
            .unzip();
        self.addrs = addrs;
        self.ranks = ranks;
    }
}

/// The SRV name to ask for a SIP URI's host over `transport` (RFC 3263 §4.2: `_sips._tcp` for
/// TLS, `_sip._tcp` and `_sip._udp` otherwise), fully qualified so that no search domain is
/// appended.
pub fn srv_name(host: &str, transport: Transport) -> String {
    let service = match transport {
        Transport::Udp => "_sip._udp",
        Transport::Tcp => "_sip._tcp",
        Transport::Tls => "_sips._tcp",
    };
    let host = host.trim_end_matches('.');
    format!("{service}.{host}.")
}

/// The order to try addresses ranked by SRV (RFC 2782): lower priority first; within a priority,
/// servers drawn one after the other with a probability proportional to their weight (weight-0
/// servers first in the list, so that they are drawn only when `pick` says 0); a server's
/// addresses stay together. `pick(sum)` returns a uniform random number in `0..=sum`. Gives
/// indices into `ranks`.
pub fn srv_order(ranks: &[SrvRank], mut pick: impl FnMut(u32) -> u32) -> Vec<usize> {
    // One entry per server: its rank and its addresses' indices.
    let mut servers: Vec<(SrvRank, Vec<usize>)> = Vec::new();
    for (i, r) in ranks.iter().enumerate() {
        match servers.iter_mut().find(|(s, _)| s.target == r.target) {
            Some((_, idx)) => idx.push(i),
            None => servers.push((*r, vec![i])),
        }
    }
    // Stable: equal priorities keep the answer's order, weight-0 servers moved ahead.
    servers.sort_by_key(|(r, _)| (r.priority, r.weight != 0));
    let mut order = Vec::with_capacity(ranks.len());
    let mut rest = servers.as_slice();
    while let Some((first, _)) = rest.first() {
        let same = rest
            .iter()
            .take_while(|(r, _)| r.priority == first.priority)
            .count();
        let mut group: Vec<&(SrvRank, Vec<usize>)> = rest[..same].iter().collect();
        rest = &rest[same..];
        while !group.is_empty() {
            let sum: u32 = group.iter().map(|(r, _)| u32::from(r.weight)).sum();
            let drawn = pick(sum).min(sum);
            let mut running = 0u32;
            let at = group
                .iter()
                .position(|(r, _)| {
                    running += u32::from(r.weight);
                    running >= drawn
                })
                .unwrap_or(group.len() - 1);
            order.extend_from_slice(&group.remove(at).1);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(priority: u16, weight: u16, target: u16) -> SrvRank {
        SrvRank {
            priority,
            weight,
            target,
        }
    }

    /// A `pick` that returns the scripted numbers in turn and records each sum it was asked for.
    fn scripted(
        draws: &[u32],
    ) -> (
        impl FnMut(u32) -> u32 + '_,
        std::rc::Rc<std::cell::RefCell<Vec<u32>>>,
    ) {
        let sums = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = sums.clone();
        let mut next = draws.iter();
        (
            move |sum| {
                seen.borrow_mut().push(sum);
                *next.next().expect("no more draws scripted")
            },
            sums,
        )
    }

    #[test]
    fn the_srv_name_follows_the_transport() {
        assert_eq!(
            srv_name("example.com", Transport::Udp),
            "_sip._udp.example.com."
        );
        assert_eq!(
            srv_name("example.com", Transport::Tcp),
            "_sip._tcp.example.com."
        );
        assert_eq!(
            srv_name("example.com.", Transport::Tls),
            "_sips._tcp.example.com."
        );
    }

    #[test]
    fn lower_priorities_come_first_whatever_the_weights() {
        let ranks = [rank(20, 100, 0), rank(10, 0, 1), rank(30, 5, 2)];
        let (pick, _) = scripted(&[0, 0, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![1, 0, 2]);
    }

    #[test]
    fn within_a_priority_the_running_sum_of_weights_picks_the_server() {
        // Weights 10, 30, 60 (sum 100). A draw of 11..=40 lands on the second; it is then
        // removed and the sum is 70: a draw of 70 takes the last one listed (60), then the first.
        let ranks = [rank(10, 10, 0), rank(10, 30, 1), rank(10, 60, 2)];
        let (pick, sums) = scripted(&[40, 70, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![1, 2, 0]);
        assert_eq!(*sums.borrow(), vec![100, 70, 10]);
        // The boundaries: a draw of 10 is still the first server's (running sum >= draw).
        let (pick, _) = scripted(&[10, 0, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![0, 1, 2]);
        let (pick, _) = scripted(&[11, 0, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![1, 0, 2]);
    }

    #[test]
    fn a_weight_0_server_is_drawn_only_on_a_draw_of_0() {
        let ranks = [rank(10, 50, 0), rank(10, 0, 1)];
        let (pick, _) = scripted(&[0, 0]);
        assert_eq!(
            srv_order(&ranks, pick),
            vec![1, 0],
            "0 lands on the weight-0 server"
        );
        let (pick, _) = scripted(&[1, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![0, 1]);
        // All weights 0: nothing to choose, the answer's order.
        let ranks = [rank(10, 0, 0), rank(10, 0, 1), rank(10, 0, 2)];
        let (pick, _) = scripted(&[0, 0, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![0, 1, 2]);
    }

    #[test]
    fn a_servers_addresses_stay_together() {
        // Server 0 has two addresses (A and AAAA, say), server 1 one.
        let ranks = [rank(10, 1, 0), rank(10, 1, 0), rank(10, 3, 1)];
        let (pick, sums) = scripted(&[4, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![2, 0, 1]);
        assert_eq!(
            *sums.borrow(),
            vec![4, 1],
            "one draw per server, not per address"
        );
    }

    #[test]
    fn an_out_of_range_draw_takes_the_last_server() {
        let ranks = [rank(10, 1, 0), rank(10, 1, 1)];
        let (pick, _) = scripted(&[99, 5]);
        assert_eq!(srv_order(&ranks, pick), vec![1, 0]);
    }

    #[test]
    fn retain_keeps_the_ranks_with_their_addresses() {
        let a: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let b: SocketAddr = "[::1]:5060".parse().unwrap();
        let mut h = HopAddrs {
            addrs: vec![b, a],
            ranks: vec![rank(10, 0, 0), rank(20, 0, 1)],
        };
        h.retain(|x| x.is_ipv4());
        assert_eq!(h.addrs, vec![a]);
        assert_eq!(h.ranks, vec![rank(20, 0, 1)]);
        let mut p = HopAddrs::plain(vec![b, a]);
        p.retain(|x| x.is_ipv4());
        assert_eq!(p, HopAddrs::plain(vec![a]));
    }
}
