//! What a media port range means on this host: how many calls it holds, and whether the kernel
//! may hand its ports to other sockets.
//!
//! A call's SIP leg binds an even port for RTP and the next one for RTCP. A port in the
//! kernel's ephemeral range (`net.ipv4.ip_local_port_range`, which covers IPv6 too) can be taken
//! at any moment by an outgoing socket of any process on the host (a DNS query, an HTTP/3 client
//! connection, a TCP connection to a trunk); the call that draws it then fails with 503. Ports
//! listed in `net.ipv4.ip_local_reserved_ports` are never handed out that way.

use super::Config;
use std::ops::RangeInclusive;

/// How many calls with a SIP leg the inclusive range `min..=max` holds: each takes an even port
/// and the one after it. The engine's port pool hands out exactly these.
pub fn port_pairs(min: u16, max: u16) -> usize {
    let first = u32::from(min) + u32::from(min) % 2;
    let max = u32::from(max);
    if first + 1 > max {
        0
    } else {
        ((max - 1 - first) / 2 + 1) as usize
    }
}

/// The kernel's port allocation settings that matter to a media range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPorts {
    /// `net.ipv4.ip_local_port_range`.
    pub ephemeral: RangeInclusive<u16>,
    /// `net.ipv4.ip_local_reserved_ports`.
    pub reserved: Vec<RangeInclusive<u16>>,
}

impl KernelPorts {
    /// Reads this host's settings from `/proc/sys/net/ipv4/`; `Err` names what could not be read.
    pub fn read() -> Result<KernelPorts, String> {
        let dir = std::path::Path::new("/proc/sys/net/ipv4");
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| format!("{}: {e}", dir.join(name).display()))
        };
        let range = read("ip_local_port_range")?;
        // Kernels without the reserved list have no ports reserved.
        let reserved = read("ip_local_reserved_ports").unwrap_or_default();
        KernelPorts::parse(&range, &reserved)
    }

    /// Parses `ip_local_port_range` ("32768\t60999") and `ip_local_reserved_ports`
    /// ("8080,9000-9100", or empty).
    pub fn parse(range: &str, reserved: &str) -> Result<KernelPorts, String> {
        let port = |s: &str, what: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| format!("{what}: {s:?} is not a port"))
        };
        let mut ends = range.split_whitespace();
        let (Some(lo), Some(hi), None) = (ends.next(), ends.next(), ends.next()) else {
            return Err(format!(
                "ip_local_port_range: expected two ports, got {:?}",
                range.trim()
            ));
        };
        let ephemeral = port(lo, "ip_local_port_range")?..=port(hi, "ip_local_port_range")?;
        let mut list = Vec::new();
        for item in reserved.trim().split(',').filter(|s| !s.trim().is_empty()) {
            let r = match item.split_once('-') {
                Some((a, b)) => {
                    port(a, "ip_local_reserved_ports")?..=port(b, "ip_local_reserved_ports")?
                }
                None => {
                    let p = port(item, "ip_local_reserved_ports")?;
                    p..=p
                }
            };
            list.push(r);
        }
        Ok(KernelPorts {
            ephemeral,
            reserved: list,
        })
    }

    /// The ports of `range` the kernel may give to outgoing sockets: the lowest, the highest and
    /// how many, or `None` when there are none.
    fn handed_out_in(&self, range: RangeInclusive<u16>) -> Option<(u16, u16, usize)> {
        let mut found: Option<(u16, u16, usize)> = None;
        for p in range {
            if self.ephemeral.contains(&p) && !self.reserved.iter().any(|r| r.contains(&p)) {
                found = Some(match found {
                    None => (p, p, 1),
                    Some((lo, _, n)) => (lo, p, n + 1),
                });
            }
        }
        found
    }
}

/// Warnings about `[media]`'s port range on a host with `kernel`'s settings (`None`: not known,
/// only the range's size is checked). Each is one sentence an operator can act on.
pub fn media_port_warnings(cfg: &Config, kernel: Option<&KernelPorts>) -> Vec<String> {
    let m = &cfg.media;
    let mut out = Vec::new();
    let pairs = port_pairs(m.port_min, m.port_max);
    if pairs < cfg.sip.max_calls {
        out.push(format!(
            "media.port_min-port_max ({}-{}) holds {pairs} calls with a SIP leg (an RTP and an \
             RTCP port each), fewer than sip.max_calls ({}): calls beyond {pairs} get 503 \"no \
             media port free\"",
            m.port_min, m.port_max, cfg.sip.max_calls
        ));
    }
    if let Some(k) = kernel {
        if let Some((lo, hi, n)) = k.handed_out_in(m.port_min..=m.port_max) {
            out.push(format!(
                "{n} ports of media.port_min-port_max ({}-{}), between {lo} and {hi}, are in the \
                 kernel's ephemeral port range ({}-{}, net.ipv4.ip_local_port_range): an \
                 outgoing socket of any process may take one, and the call that draws it fails \
                 with 503; move the media range below {} or list it in \
                 net.ipv4.ip_local_reserved_ports",
                m.port_min,
                m.port_max,
                k.ephemeral.start(),
                k.ephemeral.end(),
                k.ephemeral.start(),
            ));
        }
    }
    out
}

/// [`media_port_warnings`] for this host, reading its kernel settings; a host whose settings
/// cannot be read (not Linux) gets the size check only.
pub fn host_media_port_warnings(cfg: &Config) -> Vec<String> {
    let kernel = KernelPorts::read()
        .map_err(|e| tracing::debug!(error = %e, "kernel port settings not known"))
        .ok();
    media_port_warnings(cfg, kernel.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: u16, max: u16, max_calls: usize) -> Config {
        let mut c = super::super::embedded_default();
        c.media.port_min = min;
        c.media.port_max = max;
        c.sip.max_calls = max_calls;
        c
    }

    fn linux_default() -> KernelPorts {
        KernelPorts::parse("32768\t60999\n", "\n").unwrap()
    }

    #[test]
    fn pairs_count_even_ports_with_room_for_rtcp() {
        assert_eq!(port_pairs(30000, 34999), 2500);
        assert_eq!(port_pairs(10000, 29999), 10000);
        assert_eq!(port_pairs(30000, 30001), 1);
        assert_eq!(port_pairs(30000, 30002), 1, "30002 has no 30003 for RTCP");
        assert_eq!(port_pairs(30001, 30002), 0, "an odd port is never RTP");
        assert_eq!(port_pairs(30001, 30004), 1);
        assert_eq!(port_pairs(65534, 65535), 1);
        assert_eq!(port_pairs(65535, 65535), 0);
        assert_eq!(port_pairs(1, 65535), 32767);
    }

    #[test]
    fn kernel_settings_parse_as_proc_prints_them() {
        let k = KernelPorts::parse("32768\t60999\n", "8080,40000-40999\n").unwrap();
        assert_eq!(k.ephemeral, 32768..=60999);
        assert_eq!(k.reserved, vec![8080..=8080, 40000..=40999]);
        assert_eq!(linux_default().reserved, vec![]);
        for (range, reserved) in [("32768", ""), ("a b", ""), ("1 2 3", ""), ("1 2", "9-x")] {
            let e = KernelPorts::parse(range, reserved).unwrap_err();
            assert!(e.starts_with("ip_local_"), "{e}");
        }
    }

    #[test]
    fn the_default_range_holds_max_calls_clear_of_the_ephemeral_ports() {
        let c = super::super::embedded_default();
        assert_eq!(
            media_port_warnings(&c, Some(&linux_default())),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_range_smaller_than_max_calls_is_named_with_both_numbers() {
        let w = media_port_warnings(&cfg(20000, 24999, 10_000), None);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("(20000-24999) holds 2500 calls"), "{}", w[0]);
        assert!(w[0].contains("sip.max_calls (10000)"), "{}", w[0]);
        assert!(media_port_warnings(&cfg(20000, 24999, 2500), None).is_empty());
    }

    #[test]
    fn ephemeral_overlap_is_counted_without_the_reserved_ports() {
        let w = media_port_warnings(&cfg(30000, 34999, 2500), Some(&linux_default()));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "2232 ports of media.port_min-port_max (30000-34999), between 32768 and 34999"
            ),
            "{}",
            w[0]
        );
        assert!(
            w[0].contains("(32768-60999, net.ipv4.ip_local_port_range)"),
            "{}",
            w[0]
        );

        let partly = KernelPorts::parse("32768 60999", "32768-33999").unwrap();
        let w = media_port_warnings(&cfg(30000, 34999, 2500), Some(&partly));
        assert!(
            w[0].starts_with(
                "1000 ports of media.port_min-port_max (30000-34999), between 34000 and 34999"
            ),
            "{}",
            w[0]
        );

        let all = KernelPorts::parse("32768 60999", "30000-34999").unwrap();
        assert!(media_port_warnings(&cfg(30000, 34999, 2500), Some(&all)).is_empty());
    }

    #[test]
    fn this_host_s_settings_are_readable() {
        // Linux always has the range; the reserved list may be empty.
        let k = KernelPorts::read().expect("/proc/sys/net/ipv4/ip_local_port_range");
        assert!(k.ephemeral.start() <= k.ephemeral.end());
    }
}
