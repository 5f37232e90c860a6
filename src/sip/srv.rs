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

impl SrvRank {
    pub const fn new(priority: u16, weight: u16, target: u16) -> SrvRank {
        SrvRank {
            priority,
            weight,
            target,
        }
    }
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

    /// The addresses in the order to prefer them (see [`order_addrs`]).
    pub fn ordered(&self, pick: impl FnMut(u32) -> u32) -> Vec<SocketAddr> {
        order_addrs(&self.addrs, &self.ranks, pick)
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

/// `addrs` in the order to try them: an SRV order drawn with `pick` (see [`srv_order`]) when
/// `ranks` has one rank per address, else as given.
pub fn order_addrs(
    addrs: &[SocketAddr],
    ranks: &[SrvRank],
    pick: impl FnMut(u32) -> u32,
) -> Vec<SocketAddr> {
    debug_assert!(
        ranks.is_empty() || ranks.len() == addrs.len(),
        "one SRV rank per address"
    );
    if !ranks.is_empty() && ranks.len() == addrs.len() {
        srv_order(ranks, pick)
            .into_iter()
            .map(|i| addrs[i])
            .collect()
    } else {
        addrs.to_vec()
    }
}

/// The order to try addresses ranked by SRV (RFC 2782): lower priority first; within a priority,
/// servers drawn one after the other, each with a probability proportional to its weight. A
/// server's addresses stay together. Gives indices into `ranks`.
///
/// `pick(n)` returns a uniform random number in `0..n` (`n` ≥ 1). The draw follows RFC 2782's
/// running sums, with two corrections to its letter: a draw in `0..=sum` gives the first
/// weighted server one chance too many (weights 1 and 3 would come first 40 % and 60 % of the
/// time), so the draw is in `1..=sum` unless a weight-0 server is left, which then gets the one
/// draw of 0 (the "very small chance" the RFC gives it); and servers whose weights are all 0
/// ("no selection to do") are drawn uniformly rather than always in the answer's order, so that
/// calls spread over them.
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
            let at = if sum == 0 {
                (pick(group.len() as u32) as usize).min(group.len() - 1)
            } else {
                let zero_left = group[0].0.weight == 0;
                let drawn = if zero_left {
                    pick(sum + 1)
                } else {
                    1 + pick(sum)
                };
                let mut running = 0u32;
                group
                    .iter()
                    .position(|(r, _)| {
                        running += u32::from(r.weight);
                        running >= drawn
                    })
                    .unwrap_or(group.len() - 1)
            };
            order.extend_from_slice(&group.remove(at).1);
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn rank(priority: u16, weight: u16, target: u16) -> SrvRank {
        SrvRank::new(priority, weight, target)
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

    /// How often each server comes first, over every value `pick` can give for the first draw
    /// (later draws 0).
    fn first_counts(ranks: &[SrvRank]) -> Vec<u32> {
        let mut n = None;
        srv_order(ranks, |k| {
            n.get_or_insert(k);
            0
        });
        let n = n.expect("one draw at least");
        let mut counts = vec![0; ranks.len()];
        for d in 0..n {
            let mut first = Some(d);
            let order = srv_order(ranks, |_| first.take().unwrap_or(0));
            counts[order[0]] += 1;
        }
        counts
    }

    #[test]
    fn each_server_comes_first_in_proportion_to_its_weight() {
        assert_eq!(
            first_counts(&[rank(10, 1, 0), rank(10, 3, 1)]),
            vec![1, 3],
            "weights 1 : 3, not RFC 2782's literal 2 : 3"
        );
        assert_eq!(first_counts(&[rank(10, 1, 0), rank(10, 1, 1)]), vec![1, 1]);
        assert_eq!(
            first_counts(&[rank(10, 10, 0), rank(10, 30, 1), rank(10, 60, 2)]),
            vec![10, 30, 60]
        );
        // A weight-0 server: one draw of its own, the others in proportion.
        assert_eq!(
            first_counts(&[rank(10, 1, 0), rank(10, 0, 1), rank(10, 3, 2)]),
            vec![1, 1, 3]
        );
        // All weights 0: each server as often.
        assert_eq!(
            first_counts(&[rank(10, 0, 0), rank(10, 0, 1), rank(10, 0, 2)]),
            vec![1, 1, 1]
        );
    }

    #[test]
    fn within_a_priority_the_running_sum_of_weights_picks_the_server() {
        // Weights 10, 30, 60 (sum 100): a draw of 39 (running sum 40 reached) is the second
        // server; then the sum is 70 and a draw of 69 is the last (60); then the first.
        let ranks = [rank(10, 10, 0), rank(10, 30, 1), rank(10, 60, 2)];
        let (pick, sums) = scripted(&[39, 69, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![1, 2, 0]);
        assert_eq!(*sums.borrow(), vec![100, 70, 10]);
        // The boundaries: draws 0..=9 are the first server's, 10 the second's.
        let (pick, _) = scripted(&[9, 0, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![0, 1, 2]);
        let (pick, _) = scripted(&[10, 0, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![1, 0, 2]);
    }

    #[test]
    fn a_weight_0_server_is_drawn_only_on_a_draw_of_0() {
        let ranks = [rank(10, 50, 0), rank(10, 0, 1)];
        let (pick, sums) = scripted(&[0, 0]);
        assert_eq!(
            srv_order(&ranks, pick),
            vec![1, 0],
            "0 lands on the weight-0 server"
        );
        assert_eq!(*sums.borrow(), vec![51, 50]);
        let (pick, _) = scripted(&[1, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![0, 1]);
        // All weights 0: a uniform draw among them.
        let ranks = [rank(10, 0, 0), rank(10, 0, 1), rank(10, 0, 2)];
        let (pick, sums) = scripted(&[2, 0, 0]);
        assert_eq!(srv_order(&ranks, pick), vec![2, 0, 1]);
        assert_eq!(*sums.borrow(), vec![3, 2, 1]);
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
