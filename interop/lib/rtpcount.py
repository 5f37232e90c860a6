#!/usr/bin/env python3
"""Count RTP packets in a pcap written by tcpdump (no third-party modules).

Usage:
  rtpcount.py PCAP SPEC [SPEC ...] [--until REGEX [--until-dst PORT]]

SPEC is  name,src=PORT|LO-HI,dst=PORT|LO-HI,pt=N  (src/dst/pt optional). For every
SPEC the script prints `name=<count>` where count is the number of IPv4/UDP packets
whose ports match and whose payload looks like RTP (version 2, payload type not in
the RTCP range 72-76, at least 12 bytes), with payload type N when `pt` is given.

--until REGEX stops counting at the first UDP packet whose payload matches REGEX
(Python bytes regex, DOTALL; optionally only packets to --until-dst PORT) and prints
`until_found=1` (or 0 when it never appeared: then the counts cover the whole file).
This is how the early-media check counts RTP that arrived before the 200 OK.
"""
import re
import struct
import sys


def parse_range(text):
    if "-" in text:
        lo, hi = text.split("-", 1)
        return int(lo), int(hi)
    return int(text), int(text)


def parse_spec(spec):
    parts = spec.split(",")
    name, src, dst, pt = parts[0], None, None, None
    for p in parts[1:]:
        key, _, val = p.partition("=")
        if key == "src":
            src = parse_range(val)
        elif key == "dst":
            dst = parse_range(val)
        elif key == "pt":
            pt = int(val)
        else:
            raise SystemExit(f"bad spec part {p!r} in {spec!r}")
    return name, src, dst, pt


def udp_records(path):
    """Yield (src_ip, sport, dst_ip, dport, payload, length) for each IPv4/UDP packet, in capture
    order: addresses as 4 raw bytes, the payload as captured (trimmed to the UDP length; shorter
    when tcpdump's snap length cut it), `length` the payload length the UDP header states."""
    with open(path, "rb") as f:
        hdr = f.read(24)
        if len(hdr) < 24:
            return
        magic = hdr[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            endian = "<"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            endian = ">"
        else:
            raise SystemExit(f"{path}: not a pcap file (pcapng is not supported)")
        linktype = struct.unpack(endian + "I", hdr[20:24])[0]
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            _, _, incl, _ = struct.unpack(endian + "IIII", rec)
            data = f.read(incl)
            if len(data) < incl:
                return
            if linktype == 1:  # Ethernet (Linux lo)
                if len(data) < 14 or data[12:14] != b"\x08\x00":
                    continue
                ip = data[14:]
            elif linktype == 113:  # Linux cooked
                if len(data) < 16 or data[14:16] != b"\x08\x00":
                    continue
                ip = data[16:]
            elif linktype == 276:  # Linux cooked v2
                if len(data) < 20 or data[0:2] != b"\x08\x00":
                    continue
                ip = data[20:]
            elif linktype in (101, 12, 228):  # raw IPv4
                ip = data
            elif linktype == 0:  # BSD loopback
                ip = data[4:]
            else:
                raise SystemExit(f"unsupported pcap link type {linktype}")
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            ihl = (ip[0] & 0x0F) * 4
            udp = ip[ihl:]
            if len(udp) < 8:
                continue
            sport, dport, ulen = struct.unpack("!HHH", udp[:6])
            payload = udp[8:ulen] if 8 <= ulen <= len(udp) else udp[8:]
            yield ip[12:16], sport, ip[16:20], dport, payload, max(ulen - 8, 0)


def udp_packets(path):
    """Yield (src_ip, sport, dst_ip, dport, payload) for each IPv4/UDP packet (see udp_records).
    Shared with interop/baresip/check.py."""
    for src, sport, dst, dport, payload, _ in udp_records(path):
        yield src, sport, dst, dport, payload


def packets(path):
    """Yield (sport, dport, payload) for each IPv4/UDP packet."""
    for _, sport, _, dport, payload in udp_packets(path):
        yield sport, dport, payload


def is_rtp(payload):
    return len(payload) >= 12 and payload[0] >> 6 == 2 and not 72 <= (payload[1] & 0x7F) <= 76


def main(argv):
    args, specs, until, until_dst = list(argv), [], None, None
    if not args:
        raise SystemExit(__doc__)
    pcap = args.pop(0)
    while args:
        a = args.pop(0)
        if a == "--until":
            until = re.compile(args.pop(0).encode(), re.DOTALL)
        elif a == "--until-dst":
            until_dst = int(args.pop(0))
        else:
            specs.append(parse_spec(a))
    counts = {name: 0 for name, _, _, _ in specs}
    found = 0
    for sport, dport, payload in packets(pcap):
        if until is not None and (until_dst is None or dport == until_dst) and until.search(payload):
            found = 1
            break
        if not is_rtp(payload):
            continue
        for name, src, dst, pt in specs:
            if src and not src[0] <= sport <= src[1]:
                continue
            if dst and not dst[0] <= dport <= dst[1]:
                continue
            if pt is not None and payload[1] & 0x7F != pt:
                continue
            counts[name] += 1
    for name, _, _, _ in specs:
        print(f"{name}={counts[name]}")
    if until is not None:
        print(f"until_found={found}")


if __name__ == "__main__":
    main(sys.argv[1:])
