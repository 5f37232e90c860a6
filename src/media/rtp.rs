//! Per-packet framing for the relay: QUIC varints, the RoQ datagram header and the minimal
//! RTP/RTCP checks the hot path can afford.
//!
//! Nothing here parses an RTP packet beyond its first two octets: the relay forwards packets
//! verbatim, so it only needs to know "is this RTP, RTCP or garbage".

use bytes::{BufMut, Bytes, BytesMut};

/// RoQ flow identifier for RTP packets.
pub const FLOW_RTP: u64 = 0;
/// RoQ flow identifier for RTCP packets.
pub const FLOW_RTCP: u64 = 1;

/// Largest value a QUIC variable-length integer can hold (RFC 9000 §16).
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// Smallest RTP packet: the fixed header.
pub const RTP_HEADER_LEN: usize = 12;
/// Smallest RTCP packet: the common header plus the sender SSRC.
pub const RTCP_MIN_LEN: usize = 8;

/// Encoded length of `v` as a QUIC varint. Values above [`VARINT_MAX`] are not representable;
/// callers only encode stream ids and flow ids, which QUIC already bounds.
#[inline]
pub fn varint_len(v: u64) -> usize {
    if v < (1 << 6) {
        1
    } else if v < (1 << 14) {
        2
    } else if v < (1 << 30) {
        4
    } else {
        8
    }
}

/// Appends `v` as a QUIC varint. Returns `false` (and writes nothing) when `v > VARINT_MAX`.
#[inline]
pub fn put_varint(buf: &mut impl BufMut, v: u64) -> bool {
    match varint_len(v) {
        1 => buf.put_u8(v as u8),
        2 => buf.put_u16(0x4000 | v as u16),
        4 => buf.put_u32(0x8000_0000 | v as u32),
        _ => {
            if v > VARINT_MAX {
                return false;
            }
            buf.put_u64(0xc000_0000_0000_0000 | v)
        }
    }
    true
}

/// Reads a QUIC varint from the front of `b`: the value and how many bytes it took.
#[inline]
pub fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    Some((v, len))
}

/// What a packet from the legacy side (or a RoQ payload) is, by RFC 5761 §4 demultiplexing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Rtp,
    Rtcp,
    Invalid,
}

/// Classifies a packet from its first two octets: version must be 2; a second octet in
/// 192..=223 is RTCP (RFC 5761 §4: covers SR/RR/SDES/BYE/APP 200-204 and the feedback types,
/// and no RTP payload type in use collides with it once the marker bit is included).
#[inline]
pub fn classify(pkt: &[u8]) -> PacketKind {
    let (Some(&b0), Some(&b1)) = (pkt.first(), pkt.get(1)) else {
        return PacketKind::Invalid;
    };
    if b0 >> 6 != 2 {
        return PacketKind::Invalid;
    }
    if (192..=223).contains(&b1) {
        if pkt.len() >= RTCP_MIN_LEN {
            PacketKind::Rtcp
        } else {
            PacketKind::Invalid
        }
    } else if pkt.len() >= RTP_HEADER_LEN {
        PacketKind::Rtp
    } else {
        PacketKind::Invalid
    }
}

/// A 20 ms G.711 µ-law RTP packet (12-byte header, 160-byte payload, PT 0, timestamp
/// `seq * 160`) whose payload varies with `seq`; for tests, benches and load tools.
pub fn pcmu_packet(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(RTP_HEADER_LEN + 160);
    p.extend_from_slice(&[0x80, 0x00]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq).wrapping_mul(160)).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..160u8).map(|i| i ^ (seq as u8)));
    p
}

/// How a call's RTP payload type numbers differ between the HTTP/3 side and the legacy peer.
///
/// RFC 3264 lets each side of an offer/answer number a codec its own way: the numbers in an SDP
/// are the ones its sender expects to *receive* (§5.1), and an answerer SHOULD, not must, reuse
/// the offer's (§6.1). So a trunk may answer our `101 telephone-event` with `100`, and a PBX's
/// re-INVITE after a transfer may offer the new phone's numbering. riptide relays packets
/// verbatim otherwise; these pairs are the one octet it rewrites. Empty both ways: nothing to
/// rewrite (the usual case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadMap {
    /// `(relay, peer)`: a packet from the HTTP/3 side with payload type `relay` goes to the
    /// legacy peer as `peer`, the number its SDP gave.
    pub to_peer: Vec<(u8, u8)>,
    /// `(ours, relay)`: a packet from the legacy peer with payload type `ours`, the number our
    /// SDP gave it, goes to the HTTP/3 side as `relay`.
    pub from_peer: Vec<(u8, u8)>,
    /// The HTTP/3 side's numbers for formats the peer's SDP left out (an answer without
    /// telephone-event, say): not sent to it (RFC 3264 §6.1).
    pub refused: Vec<u8>,
}

impl PayloadMap {
    /// Nothing to rewrite or hold back either way.
    pub fn is_identity(&self) -> bool {
        self.to_peer.iter().all(|(a, b)| a == b)
            && self.from_peer.iter().all(|(a, b)| a == b)
            && self.refused.is_empty()
    }
}

/// What becomes of an RTP packet on its way to the legacy peer ([`PayloadTables::to_peer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToPeer {
    /// Sent as it is.
    Keep,
    /// Sent with this second octet (marker kept, payload type renumbered).
    Renumber(u8),
    /// Not sent: the peer's SDP has no such format.
    Refused,
}

/// A table entry for a payload type that is not sent (payload types are 7 bits).
const REFUSED: u8 = 0xff;

/// A [`PayloadMap`] as two lookup tables, for the relay: one indexed load per packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadTables {
    to_peer: [u8; 128],
    from_peer: [u8; 128],
}

impl PayloadTables {
    /// The tables for `map`; `None` when it rewrites nothing (the relay then skips the step).
    pub fn new(map: &PayloadMap) -> Option<Box<PayloadTables>> {
        if map.is_identity() {
            return None;
        }
        let identity: [u8; 128] = std::array::from_fn(|i| i as u8);
        let mut t = Box::new(PayloadTables {
            to_peer: identity,
            from_peer: identity,
        });
        for (table, pairs) in [
            (&mut t.to_peer, &map.to_peer),
            (&mut t.from_peer, &map.from_peer),
        ] {
            for &(from, to) in pairs {
                table[usize::from(from & 0x7f)] = to & 0x7f;
            }
        }
        for &pt in &map.refused {
            t.to_peer[usize::from(pt & 0x7f)] = REFUSED;
        }
        Some(t)
    }

    /// Whether RTP with the HTTP/3 side's payload type `pt` is held back from the peer.
    pub fn refuses(&self, pt: u8) -> bool {
        self.to_peer[usize::from(pt & 0x7f)] == REFUSED
    }

    /// What `pkt`, RTP on its way to the legacy peer, becomes.
    #[inline]
    pub fn to_peer(&self, pkt: &[u8]) -> ToPeer {
        let Some(&b) = pkt.get(1) else {
            return ToPeer::Keep;
        };
        match self.to_peer[usize::from(b & 0x7f)] {
            REFUSED => ToPeer::Refused,
            pt if pt == b & 0x7f => ToPeer::Keep,
            pt => ToPeer::Renumber((b & 0x80) | pt),
        }
    }

    /// Rewrites the payload type of `pkt`, RTP from the legacy peer, to the HTTP/3 side's.
    #[inline]
    pub fn from_peer(&self, pkt: &mut [u8]) {
        if let Some(b) = pkt.get_mut(1) {
            *b = (*b & 0x80) | self.from_peer[usize::from(*b & 0x7f)];
        }
    }
}

/// The RFC 9297 + RoQ header of a datagram: Quarter Stream ID, flow id, and where the packet starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramHeader {
    pub qsid: u64,
    pub flow: u64,
    pub payload_offset: usize,
}

/// Parses the header of a received QUIC datagram; `None` when it is truncated.
#[inline]
pub fn parse_datagram(d: &[u8]) -> Option<DatagramHeader> {
    let (qsid, a) = get_varint(d)?;
    let (flow, b) = get_varint(&d[a..])?;
    Some(DatagramHeader {
        qsid,
        flow,
        payload_offset: a + b,
    })
}

/// Builds outgoing datagrams out of one large buffer, so that framing a packet costs a copy and
/// no allocation: each datagram is split off the front and frozen; once the datagrams sent
/// earlier are released by quinn, `reserve` reclaims the same allocation.
pub struct DatagramArena {
    buf: BytesMut,
    chunk: usize,
}

/// Default arena size: about twenty 20 ms G.711 packets between refills. Every call's relay
/// task holds one, so this is per-call memory (64 KiB here cost ~60 KiB per call for nothing);
/// a refill is one allocation per ~20 packets.
pub const ARENA_CHUNK: usize = 4 * 1024;

impl Default for DatagramArena {
    fn default() -> Self {
        DatagramArena::new(ARENA_CHUNK)
    }
}

impl DatagramArena {
    pub fn new(chunk: usize) -> Self {
        DatagramArena {
            buf: BytesMut::with_capacity(chunk),
            chunk,
        }
    }

    /// `qsid` + `flow` + `payload` as one datagram. `None` if `qsid` is not a valid varint.
    #[inline]
    pub fn frame(&mut self, qsid: u64, flow: u64, payload: &[u8]) -> Option<Bytes> {
        let need = varint_len(qsid) + varint_len(flow) + payload.len();
        if self.buf.capacity() < need {
            self.buf.reserve(self.chunk.max(need));
        }
        if !put_varint(&mut self.buf, qsid) || !put_varint(&mut self.buf, flow) {
            self.buf.clear();
            return None;
        }
        self.buf.extend_from_slice(payload);
        Some(self.buf.split().freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_tables_rewrite_only_the_mapped_types_and_keep_the_marker() {
        assert!(PayloadTables::new(&PayloadMap::default()).is_none());
        let same = PayloadMap {
            to_peer: vec![(0, 0)],
            from_peer: vec![(101, 101)],
            refused: vec![],
        };
        assert!(PayloadTables::new(&same).is_none());
        let t = PayloadTables::new(&PayloadMap {
            to_peer: vec![(101, 100)],
            from_peer: vec![(96, 101)],
            refused: vec![13],
        })
        .unwrap();
        let mut pkt = pcmu_packet(1, 7);
        assert_eq!(t.to_peer(&pkt), ToPeer::Keep, "PCMU is not renumbered");
        pkt[1] = 101;
        assert_eq!(t.to_peer(&pkt), ToPeer::Renumber(100));
        pkt[1] = 0x80 | 101;
        assert_eq!(
            t.to_peer(&pkt),
            ToPeer::Renumber(0x80 | 100),
            "the marker bit stays"
        );
        pkt[1] = 13;
        assert_eq!(t.to_peer(&pkt), ToPeer::Refused, "CN the peer did not take");
        assert_eq!(
            t.to_peer(&[0x80]),
            ToPeer::Keep,
            "too short to carry a payload type"
        );
        pkt[1] = 0x80 | 96;
        t.from_peer(&mut pkt);
        assert_eq!(pkt[1], 0x80 | 101);
        pkt[1] = 100;
        t.from_peer(&mut pkt);
        assert_eq!(
            pkt[1], 100,
            "only what our SDP numbered differently is rewritten"
        );
    }

    fn enc(v: u64) -> Vec<u8> {
        let mut b = Vec::new();
        assert!(put_varint(&mut b, v));
        b
    }

    #[test]
    fn varint_forms_match_rfc9000_examples() {
        // RFC 9000 Appendix A.1 sample encodings.
        assert_eq!(enc(37), vec![0x25]);
        assert_eq!(enc(15293), vec![0x7b, 0xbd]);
        assert_eq!(enc(494_878_333), vec![0x9d, 0x7f, 0x3e, 0x7d]);
        assert_eq!(
            enc(151_288_809_941_952_652),
            vec![0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]
        );
        assert_eq!(get_varint(&[0x25]), Some((37, 1)));
        assert_eq!(get_varint(&[0x40, 0x25]), Some((37, 2)));
        assert_eq!(get_varint(&[0x7b, 0xbd]), Some((15293, 2)));
        assert_eq!(
            get_varint(&[0x9d, 0x7f, 0x3e, 0x7d]),
            Some((494_878_333, 4))
        );
        assert_eq!(
            get_varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
    }

    #[test]
    fn varint_boundaries_round_trip() {
        for v in [0, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, VARINT_MAX] {
            let b = enc(v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(get_varint(&b), Some((v, b.len())));
        }
        let mut b = Vec::new();
        assert!(!put_varint(&mut b, VARINT_MAX + 1));
        assert!(b.is_empty());
    }

    #[test]
    fn truncated_varint_is_none() {
        assert_eq!(get_varint(&[]), None);
        assert_eq!(get_varint(&[0x40]), None);
        assert_eq!(get_varint(&[0x80, 0, 0]), None);
        assert_eq!(get_varint(&[0xc0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn classify_follows_rfc5761() {
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 0; // PCMU
        assert_eq!(classify(&rtp), PacketKind::Rtp);
        rtp[1] = 0x80 | 96; // marker + dynamic PT
        assert_eq!(classify(&rtp), PacketKind::Rtp);
        assert_eq!(classify(&rtp[..11]), PacketKind::Invalid);
        for pt in [200u8, 201, 202, 203, 204, 205, 206] {
            let rtcp = [0x81, pt, 0, 1, 0, 0, 0, 1];
            assert_eq!(classify(&rtcp), PacketKind::Rtcp, "pt {pt}");
        }
        assert_eq!(classify(&[0x81, 200, 0, 1]), PacketKind::Invalid);
        rtp[0] = 0x40; // version 1
        assert_eq!(classify(&rtp), PacketKind::Invalid);
        assert_eq!(classify(&[]), PacketKind::Invalid);
    }

    #[test]
    fn arena_frames_and_parses_back() {
        let mut arena = DatagramArena::new(64);
        let payload = [0x80u8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        let mut held = Vec::new();
        // More datagrams than one chunk holds forces refills; earlier ones must stay intact.
        for qsid in [0u64, 1, 63, 64, 16384, 1 << 30] {
            let d = arena.frame(qsid, FLOW_RTP, &payload).expect("valid qsid");
            let h = parse_datagram(&d).expect("header");
            assert_eq!(h.qsid, qsid);
            assert_eq!(h.flow, FLOW_RTP);
            assert_eq!(&d[h.payload_offset..], &payload);
            held.push((qsid, d));
        }
        for (qsid, d) in &held {
            assert_eq!(parse_datagram(d).map(|h| h.qsid), Some(*qsid));
        }
        assert_eq!(arena.frame(VARINT_MAX + 1, FLOW_RTP, &payload), None);
    }

    #[test]
    fn parse_datagram_rejects_truncation() {
        assert_eq!(parse_datagram(&[]), None);
        assert_eq!(parse_datagram(&[0x04]), None);
        assert_eq!(
            parse_datagram(&[0x04, 0x01]),
            Some(DatagramHeader {
                qsid: 4,
                flow: 1,
                payload_offset: 2
            })
        );
    }
}
