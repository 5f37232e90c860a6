#!/usr/bin/env python3
"""What riptide sent a SIP peer on the browser call (interop/browser/run.sh, call_e2e.mjs).

Usage: tone_check.py PCAP DST_PORT [FREQ]

Reads the IPv4/UDP packets to DST_PORT (the SIPp UAS's media port) in a tcpdump pcap, takes the
RTP ones, and prints key=value lines:
  pcmu_packets   RTP packets with payload type 0
  seconds        decoded PCMU audio, in seconds
  tone_fraction  median over 1 s blocks of the share of the block's energy at FREQ (Goertzel;
                 default 440 Hz): near 1 for a clean tone, near 0 for silence or other sounds
  off_fraction   the same at FREQ + 120 Hz, for comparison
  rms            RMS of the decoded audio (full scale = 1)
  dtmf_packets   RTP packets with payload type 101 (RFC 4733 telephone-event)
  dtmf_digits    the distinct events of those packets, as keys (0-9 * # A-D)
  dtmf_ends      of those, packets with the E (end) bit
"""
import math
import os
import statistics
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from rtpcount import is_rtp, udp_packets  # noqa: E402

KEYS = "0123456789*#ABCD"


def ulaw(u: int) -> float:
    u = ~u & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return ((0x84 - t) if u & 0x80 else (t - 0x84)) / 32768


def rtp_payload(p: bytes) -> bytes:
    off = 12 + 4 * (p[0] & 0x0F)
    if p[0] & 0x10 and len(p) >= off + 4:
        off += 4 + 4 * struct.unpack("!H", p[off + 2:off + 4])[0]
    end = len(p) - (p[-1] if p[0] & 0x20 else 0)
    return p[off:end]


def fraction(block, freq, rate=8000):
    """Share of the block's energy at freq: 2|X(f)|^2 / N^2 over the mean square (1 for a pure
    sine at freq, Goertzel for X)."""
    n = len(block)
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in block:
        s1, s2 = x + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    ms = sum(x * x for x in block) / n
    return (2 * power / (n * n)) / ms if ms > 1e-9 else 0.0


def main() -> None:
    pcap, port = sys.argv[1], int(sys.argv[2])
    freq = float(sys.argv[3]) if len(sys.argv) > 3 else 440.0
    audio, n_pcmu, n_dtmf, ends, digits = [], 0, 0, 0, []
    for _, _, _, dport, payload in udp_packets(pcap):
        if dport != port or not is_rtp(payload):
            continue
        pt = payload[1] & 0x7F
        body = rtp_payload(payload)
        if pt == 0:
            n_pcmu += 1
            audio.extend(ulaw(b) for b in body)
        elif pt == 101 and len(body) >= 4:
            n_dtmf += 1
            key = KEYS[body[0]] if body[0] < len(KEYS) else f"event{body[0]}"
            if key not in digits:
                digits.append(key)
            ends += 1 if body[1] & 0x80 else 0
    blocks = [audio[i:i + 8000] for i in range(0, len(audio) - 7999, 8000)]
    tone = statistics.median(fraction(b, freq) for b in blocks) if blocks else 0.0
    off = statistics.median(fraction(b, freq + 120) for b in blocks) if blocks else 0.0
    rms = math.sqrt(sum(x * x for x in audio) / len(audio)) if audio else 0.0
    print(f"pcmu_packets={n_pcmu}")
    print(f"seconds={len(audio) / 8000:.2f}")
    print(f"tone_fraction={tone:.3f}")
    print(f"off_fraction={off:.3f}")
    print(f"rms={rms:.3f}")
    print(f"dtmf_packets={n_dtmf}")
    print(f"dtmf_digits={''.join(digits)}")
    print(f"dtmf_ends={ends}")


if __name__ == "__main__":
    main()
