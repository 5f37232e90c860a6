#!/usr/bin/env python3
"""Checks for the baresip interop run (Python 3 standard library, and sox for a second opinion).

  check.py wav FILE [--freq 440] [--tol 10] [--min-seconds 3] [--threshold 0.01]
      Reads a 16-bit PCM WAV (as written by baresip's sndfile module) and passes when
      - the non-silent audio lasts at least --min-seconds: 20 ms frames whose RMS is above
        --threshold of full scale (0.01 = -40 dBFS) are counted as non-silent, and
      - the dominant frequency (averaged Hann-windowed FFT magnitude spectra of ~1 s windows
        taken from the non-silent part, peak refined by parabolic interpolation, searched in
        50 Hz .. rate/2-50 Hz) is within --tol Hz of --freq.
      - and sox agrees: `sox FILE -n stat` reports a "Rough frequency" within --tol Hz too.
      Prints one line of key=value figures ending in `result=PASS|FAIL`; exit 0 only on PASS.

  check.py pcap FILE --mode MODE --leg NAME:UA_PORTS:GW_PORTS[:UA_SIP:GW_SIP] [--leg ...]
                [--min-media N] [--direct]
      Reads a classic pcap (tcpdump -w; Ethernet/cooked/raw link types, IPv4/UDP) and checks,
      for every legacy leg (UDP between the baresip media port range UA_PORTS, e.g. 31000-31099,
      and the gateway's media range GW_PORTS), in both directions:
      - every mode: >= N media packets (RTP v2 header, payload type 0 or 8), and no media
        directly between two UA ranges (that would bypass the gateways; not with --direct,
        where the one leg is UA to UA);
      - sdes/dtls/ice-*: no media packet has a plain-RTP length (G.711: the bytes after the
        RTP header are a multiple of 80 = 10 ms; 20 ms plain RTP is 172 bytes) and no other
        odd length: every one carries an SRTP tag (+10 AES_CM_*_80, +4 _32, +16 AEAD_AES_*_GCM).
        When the leg's negotiated suite is visible in the capture (SDES: a=crypto of the 200 OK
        to the INVITE exchanged between UA_SIP and GW_SIP; DTLS: the use_srtp profile of the
        ServerHello on the leg), the tag must be exactly that suite's;
      - dtls/ice-dtls: >= 1 DTLS handshake record (first byte 22) each way before the leg's
        first media packet;
      - ice-*: the leg's first packet is STUN (first byte 0x00/0x01, magic cookie 0x2112A442
        at offset 4) and, in each direction, STUN comes before the first media packet.
      Prints one `leg ...` line of figures per leg, `fail: ...` lines for each broken rule and
      `result=PASS|FAIL`; exit 0 only on PASS.
"""
import argparse
import cmath
import math
import os
import re
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from rtpcount import udp_packets  # noqa: E402  (the shared pcap reader)

# --------------------------------------------------------------------------- WAV


def read_wav(path):
    """Return (rate, samples of channel 0 as ints, note). Tolerates a data chunk whose size was
    never filled in (sndfile writes it when the call ends): then the rest of the file is used."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 12 or data[0:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    pos, fmt, note = 12, None, "ok"
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if cid == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body:body + 16])
            if tag == 0xFFFE and size >= 40:
                tag = struct.unpack("<H", data[body + 24:body + 26])[0]
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            if fmt is None:
                raise ValueError("data chunk before fmt chunk")
            tag, channels, rate, bits = fmt
            if tag != 1 or bits != 16:
                raise ValueError(f"unsupported WAV format tag={tag} bits={bits} (want PCM s16)")
            if size == 0 or body + size > len(data):
                size, note = len(data) - body, "header-size-unset"
            frame = 2 * channels
            size -= size % frame
            raw = struct.unpack(f"<{size // 2}h", data[body:body + size])
            return rate, list(raw[::channels]), note
        pos = body + size + (size & 1)
    raise ValueError("no data chunk")


def fft(x):
    """In-place iterative radix-2 FFT of a list of complex numbers (len is a power of two)."""
    n = len(x)
    j = 0
    for i in range(1, n):
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            x[i], x[j] = x[j], x[i]
    size = 2
    while size <= n:
        half = size // 2
        step = cmath.exp(-2j * math.pi / size)
        tw = [1 + 0j] * half
        for k in range(1, half):
            tw[k] = tw[k - 1] * step
        for start in range(0, n, size):
            for k in range(half):
                a = x[start + k]
                b = x[start + k + half] * tw[k]
                x[start + k] = a + b
                x[start + k + half] = a - b
        size *= 2
    return x


def analyse_wav(path, threshold):
    rate, s, note = read_wav(path)
    total = len(s) / rate if rate else 0.0
    flen = max(1, rate // 50)  # 20 ms frames
    limit = threshold * 32768.0
    loud = []
    for i in range(0, len(s) - flen + 1, flen):
        fr = s[i:i + flen]
        rms = math.sqrt(sum(v * v for v in fr) / flen)
        loud.append(rms > limit)
    nonsilent = sum(loud) * flen / rate if rate else 0.0

    # ~1 s windows (a power of two) drawn from stretches that are at least 90 % non-silent.
    n = 1
    while n * 2 <= rate:
        n *= 2
    n *= 2 if n < rate else 1  # 8000 Hz -> 8192 (1.02 s); the bin is < 1 Hz wide
    if len(s) < n:
        n = 1
        while n < len(s):
            n *= 2
    frames_per_win = max(1, n // flen)
    starts = []
    i = 0
    while i + frames_per_win <= len(loud) and len(starts) < 8:
        if sum(loud[i:i + frames_per_win]) >= 0.9 * frames_per_win and i * flen + n <= len(s):
            starts.append(i * flen)
            i += frames_per_win
        else:
            i += 1
    if not starts and any(loud):
        starts = [0]  # too short or choppy: one zero-padded window over the start of the file
    dominant = None
    if starts and n >= 64:
        hann = [0.5 - 0.5 * math.cos(2 * math.pi * k / (n - 1)) for k in range(n)]
        mag = [0.0] * (n // 2)
        for st in starts:
            seg = s[st:st + n]
            seg = seg + [0] * (n - len(seg))
            mean = sum(seg) / n
            spec = fft([complex((v - mean) * w) for v, w in zip(seg, hann)])
            for k in range(n // 2):
                mag[k] += abs(spec[k])
        lo = max(1, int(50 * n / rate))
        hi = min(n // 2 - 2, int((rate / 2 - 50) * n / rate))
        k = max(range(lo, hi + 1), key=lambda b: mag[b])
        if mag[k] > 0:
            a, b, c = mag[k - 1], mag[k], mag[k + 1]
            den = a - 2 * b + c
            off = 0.5 * (a - c) / den if den else 0.0
            dominant = (k + off) * rate / n
    return {"rate": rate, "seconds": total, "nonsilent": nonsilent, "dominant": dominant,
            "windows": len(starts), "header": note}


def sox_rough_frequency(path):
    """`sox FILE -n stat`'s "Rough frequency" in Hz, or None when sox fails or omits it."""
    import subprocess
    try:
        out = subprocess.run(["sox", path, "-n", "stat"], capture_output=True, text=True,
                             timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        if line.startswith("Rough") and "frequency" in line:
            try:
                return int(line.split(":")[1].strip())
            except (IndexError, ValueError):
                return None
    return None


def cmd_wav(a):
    try:
        r = analyse_wav(a.file, a.threshold)
    except (OSError, ValueError, struct.error) as e:
        print(f"file={a.file} error={str(e).replace(' ', '_')} result=FAIL")
        return 1
    ok_f = r["dominant"] is not None and abs(r["dominant"] - a.freq) <= a.tol
    ok_s = r["nonsilent"] >= a.min_seconds
    # Second opinion from sox: `stat`'s zero-crossing "Rough frequency" must agree too.
    sox_hz = sox_rough_frequency(a.file)
    ok_sox = sox_hz is not None and abs(sox_hz - a.freq) <= a.tol
    if not ok_sox:
        ok_f = False
    dom = "none" if r["dominant"] is None else f"{r['dominant']:.1f}"
    why = []
    if not ok_s:
        why.append(f"non-silent {r['nonsilent']:.2f}s < {a.min_seconds}s")
    if not ok_f:
        why.append(f"dominant {dom} Hz (sox: {sox_hz}) not within {a.freq}±{a.tol} Hz")
    print(f"file={a.file} rate={r['rate']} seconds={r['seconds']:.2f} nonsilent={r['nonsilent']:.2f} "
          f"dominant_hz={dom} sox_rough_hz={sox_hz} windows={r['windows']} header={r['header']} "
          f"result={'PASS' if ok_f and ok_s else 'FAIL'}"
          + (f" why={'; '.join(why).replace(' ', '_')}" if why else ""))
    return 0 if ok_f and ok_s else 1

# --------------------------------------------------------------------------- pcap


STUN_COOKIE = b"\x21\x12\xa4\x42"
SRTP_TAGS = {10: "+10", 4: "+4", 16: "+16"}
# Authentication tag bytes per SDES crypto suite (RFC 4568, 6188, 7714) and DTLS-SRTP profile
# (RFC 5764, 7714; IANA "DTLS-SRTP Protection Profiles").
SDES_TAG = {
    "AES_CM_128_HMAC_SHA1_80": 10, "AES_CM_128_HMAC_SHA1_32": 4,
    "AES_192_CM_HMAC_SHA1_80": 10, "AES_192_CM_HMAC_SHA1_32": 4,
    "AES_256_CM_HMAC_SHA1_80": 10, "AES_256_CM_HMAC_SHA1_32": 4,
    "F8_128_HMAC_SHA1_80": 10, "AEAD_AES_128_GCM": 16, "AEAD_AES_256_GCM": 16,
}
DTLS_PROFILE = {
    0x0001: ("SRTP_AES128_CM_HMAC_SHA1_80", 10), 0x0002: ("SRTP_AES128_CM_HMAC_SHA1_32", 4),
    0x0007: ("SRTP_AEAD_AES_128_GCM", 16), 0x0008: ("SRTP_AEAD_AES_256_GCM", 16),
}


def sdes_answer_suite(p):
    """The crypto suite of a SIP 200 OK to an INVITE carrying SDP with a=crypto, else None."""
    if not p.startswith(b"SIP/2.0 200"):
        return None
    head, _, body = p.partition(b"\r\n\r\n")
    if not re.search(rb"(?im)^CSeq:[ \t]*\d+[ \t]+INVITE", head):
        return None
    m = re.search(rb"(?m)^a=crypto:\d+[ \t]+([A-Za-z0-9_]+)", body)
    return m.group(1).decode() if m else None


def dtls_srtp_profile(p):
    """The use_srtp profile chosen in a DTLS 1.x ServerHello inside datagram p, else None."""
    pos = 0
    while pos + 13 <= len(p):
        ctype, rlen = p[pos], struct.unpack("!H", p[pos + 11:pos + 13])[0]
        rec = p[pos + 13:pos + 13 + rlen]
        pos += 13 + rlen
        if ctype != 22 or len(rec) < 12 or rec[0] != 2:  # handshake, ServerHello
            continue
        flen = int.from_bytes(rec[9:12], "big")
        if int.from_bytes(rec[6:9], "big") != 0:
            continue  # a later fragment: the extensions might be split; ignore
        b = rec[12:12 + flen]
        try:
            i = 2 + 32
            i += 1 + b[i]  # session id
            i += 2 + 1  # cipher suite, compression
            ext_end = i + 2 + struct.unpack("!H", b[i:i + 2])[0]
            i += 2
            while i + 4 <= min(ext_end, len(b)):
                etype, elen = struct.unpack("!HH", b[i:i + 4])
                if etype == 14 and elen >= 4:  # use_srtp: profiles<2..2^16-1>, mki<0..255>
                    return struct.unpack("!H", b[i + 6:i + 8])[0]
                i += 4 + elen
        except (IndexError, struct.error):
            return None
    return None


def classify(p):
    """stun | dtls-hs | dtls | media | rtcp | rtp-other | other, per RFC 7983 demultiplexing."""
    if len(p) >= 20 and p[0] in (0, 1) and p[4:8] == STUN_COOKIE:
        return "stun"
    if 20 <= p[0] <= 63:
        return "dtls-hs" if p[0] == 22 else "dtls"
    if 128 <= p[0] <= 191 and len(p) >= 12:
        pt = p[1] & 0x7F
        if 64 <= pt <= 95:
            return "rtcp"
        return "media" if pt in (0, 8) else "rtp-other"
    return "other"


def rtp_body_len(p):
    """Bytes after the RTP header (fixed part, CSRCs, extension): payload (+ SRTP tag)."""
    hl = 12 + 4 * (p[0] & 0x0F)
    if p[0] & 0x10 and len(p) >= hl + 4:
        hl += 4 + 4 * struct.unpack("!H", p[hl + 2:hl + 4])[0]
    return len(p) - hl


def parse_range(text):
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


class Dir:
    def __init__(self):
        self.count = {}
        self.first = {}
        self.lengths = {}
        self.plain = self.srtp = self.oddlen = 0
        self.tags = {}

    def add(self, idx, kind, p):
        self.count[kind] = self.count.get(kind, 0) + 1
        self.first.setdefault(kind, idx)
        if kind == "media":
            self.lengths[len(p)] = self.lengths.get(len(p), 0) + 1
            rest = rtp_body_len(p) % 80
            if rest == 0:
                self.plain += 1
            elif rest in SRTP_TAGS:
                self.srtp += 1
                self.tags[rest] = self.tags.get(rest, 0) + 1
            else:
                self.oddlen += 1

    def n(self, kind):
        return self.count.get(kind, 0)

    def lens(self):
        top = sorted(self.lengths.items(), key=lambda kv: -kv[1])[:3]
        return "/".join(f"{length}B:{c}" for length, c in top) or "-"


def cmd_pcap(a):
    legs = []
    for spec in a.leg:
        parts = spec.split(":")
        if len(parts) not in (3, 5):
            raise SystemExit(f"bad --leg {spec!r}: want NAME:UA_PORTS:GW_PORTS[:UA_SIP:GW_SIP]")
        sip = (int(parts[3]), int(parts[4])) if len(parts) == 5 else None
        legs.append({"name": parts[0], "ua": parse_range(parts[1]), "gw": parse_range(parts[2]),
                     "sip": sip, "dirs": {"ua>gw": Dir(), "gw>ua": Dir()}, "order": [],
                     "sdes": None, "dtls": None})
    ua_ranges = [lg["ua"] for lg in legs]
    inr = lambda port, r: r[0] <= port <= r[1]  # noqa: E731
    bypass = 0
    for idx, (_, sport, _, dport, p) in enumerate(udp_packets(a.file)):
        if not p:
            continue
        kind = classify(p)
        for lg in legs:
            if lg["sip"] and {sport, dport} == set(lg["sip"]) and lg["sdes"] is None:
                lg["sdes"] = sdes_answer_suite(p)
            if inr(sport, lg["ua"]) and inr(dport, lg["gw"]):
                d = "ua>gw"
            elif inr(sport, lg["gw"]) and inr(dport, lg["ua"]):
                d = "gw>ua"
            else:
                continue
            lg["dirs"][d].add(idx, kind, p)
            lg["order"].append((idx, d, kind))
            if kind == "dtls-hs" and lg["dtls"] is None:
                lg["dtls"] = dtls_srtp_profile(p)
        if not a.direct and kind == "media" and any(inr(sport, r) for r in ua_ranges) \
                and any(inr(dport, r) for r in ua_ranges):
            bypass += 1

    fails = []
    secure = a.mode != "rtp"
    dtls = a.mode in ("dtls", "ice-dtls")
    ice = a.mode.startswith("ice-")
    for lg in legs:
        name, dirs, order = lg["name"], lg["dirs"], lg["order"]
        # The suite the leg negotiated, when the capture shows it.
        want_tag, suite = None, "unknown"
        if dtls and lg["dtls"] is not None:
            suite, want_tag = DTLS_PROFILE.get(lg["dtls"], (f"profile-0x{lg['dtls']:04x}", None))
        elif not dtls and lg["sdes"]:
            suite, want_tag = lg["sdes"], SDES_TAG.get(lg["sdes"])
        figures = []
        for d in ("ua>gw", "gw>ua"):
            x = dirs[d]
            tags = "/".join(f"+{t}:{c}" for t, c in sorted(x.tags.items())) or "-"
            figures.append(f"{d} media={x.n('media')} plain={x.plain} srtp={x.srtp}({tags}) oddlen={x.oddlen} "
                           f"lens={x.lens()} stun={x.n('stun')} dtls_hs={x.n('dtls-hs')} "
                           f"rtcp={x.n('rtcp')}")
            where = f"{name} {d}"
            if x.n("media") < a.min_media:
                fails.append(f"{where}: {x.n('media')} media packets (need >= {a.min_media})")
            if secure:
                if x.plain:
                    fails.append(f"{where}: {x.plain} media packets with a plain-RTP length "
                                 f"(e.g. 172 B for 20 ms G.711): RTP not protected")
                if x.oddlen:
                    fails.append(f"{where}: {x.oddlen} media packets whose length fits neither RTP nor SRTP")
                if x.n("media") and not x.srtp:
                    fails.append(f"{where}: no media packet with an SRTP length")
                wrong = sum(c for t, c in x.tags.items() if want_tag is not None and t != want_tag)
                if wrong:
                    fails.append(f"{where}: {wrong} SRTP packets whose tag is not the negotiated "
                                 f"{suite}'s +{want_tag} B ({tags})")
        if secure and want_tag is None and sum(dirs[d].srtp for d in dirs):
            figures.append("suite not seen in the capture: any SRTP tag length accepted")
        if dtls:
            first_media = min([dirs[d].first["media"] for d in dirs if "media" in dirs[d].first], default=None)
            for d in ("ua>gw", "gw>ua"):
                fh = dirs[d].first.get("dtls-hs")
                if fh is None:
                    fails.append(f"{name} {d}: no DTLS handshake record")
                elif first_media is not None and fh > first_media:
                    fails.append(f"{name} {d}: first DTLS handshake record comes after the leg's first media packet")
        if ice:
            if order and order[0][2] != "stun":
                fails.append(f"{name}: first packet on the leg is {order[0][2]} ({order[0][1]}), not STUN")
            for d in ("ua>gw", "gw>ua"):
                fs, fm = dirs[d].first.get("stun"), dirs[d].first.get("media")
                if fs is None:
                    fails.append(f"{name} {d}: no STUN packet")
                elif fm is not None and fs > fm:
                    fails.append(f"{name} {d}: media before the first STUN packet")
        first = order[0][2] if order else "none"
        print(f"leg {name} ua={lg['ua'][0]}-{lg['ua'][1]} gw={lg['gw'][0]}-{lg['gw'][1]} first={first} "
              f"suite={suite if secure else '-'} | " + " | ".join(figures))
    if bypass:
        fails.append(f"{bypass} media packets went directly between baresip media ports (bypassing the gateways)")
    for f in fails:
        print(f"fail: {f}")
    print(f"result={'FAIL' if fails else 'PASS'}")
    return 1 if fails else 0


# --------------------------------------------------------------------------- pcap self-test

def write_pcap(path, pkts):
    """pkts: (sport, dport, payload) on 127.0.0.1, written as Ethernet/IPv4/UDP (Linux lo)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, (sp, dp, pl) in enumerate(pkts):
            udp = struct.pack("!HHHH", sp, dp, 8 + len(pl), 0) + pl
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                             b"\x7f\0\0\x01", b"\x7f\0\0\x01") + udp
            frame = b"\0" * 12 + b"\x08\x00" + ip
            f.write(struct.pack("<IIII", i // 50, (i % 50) * 20000, len(frame), len(frame)) + frame)


def selftest_pcap():
    """Synthetic captures that each rule must pass or fail; returns the number of mismatches."""
    import contextlib
    import io
    import os
    import tempfile

    ua, gw, ua_sip, gw_sip = 31000, 20000, 5090, 5070

    def rtp(seq, tag=0, pt=0):
        return bytes([0x80, pt]) + struct.pack("!HII", seq, seq * 160, 1234) + b"\xff" * (160 + tag)

    stun = lambda resp: bytes([0x01 if resp else 0x00, 0x01, 0, 0]) + STUN_COOKIE + b"\0" * 12  # noqa: E731
    hello = bytes([22, 0xFE, 0xFD]) + b"\0" * 8 + struct.pack("!H", 1) + b"\x01"

    def server_hello(profile):
        ext = struct.pack("!HHHHB", 14, 5, 2, profile, 0)
        body = b"\xfe\xfd" + b"\0" * 32 + b"\x00" + b"\xc0\x2b" + b"\x00" + struct.pack("!H", len(ext)) + ext
        hs = bytes([2]) + len(body).to_bytes(3, "big") + b"\0\0" + b"\0\0\0" + len(body).to_bytes(3, "big") + body
        return bytes([22, 0xFE, 0xFD]) + b"\0" * 8 + struct.pack("!H", len(hs)) + hs

    def ok200(suite):
        return (b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\r\n"
                b"v=0\r\nm=audio 20000 RTP/SAVP 0\r\na=crypto:1 " + suite.encode() + b" inline:x\r\n")

    def media(tag, n=120, pt=0):
        out = []
        for i in range(n):
            out += [(ua, gw, rtp(i, tag, pt)), (gw, ua, rtp(i, tag, pt))]
        return out

    cases = [
        ("rtp", "plain RTP both ways", media(0), "PASS"),
        ("rtp", "RTP one way only", [(ua, gw, rtp(i)) for i in range(120)], "FAIL"),
        ("rtp", "too few packets", media(0, 20), "FAIL"),
        ("sdes", "plain RTP (172 B)", media(0), "FAIL"),
        ("sdes", "SRTP +10, negotiated AES_CM_80", [(gw_sip, ua_sip, ok200("AES_CM_128_HMAC_SHA1_80"))] + media(10), "PASS"),
        ("sdes", "SRTP +16, negotiated AES_CM_80", [(gw_sip, ua_sip, ok200("AES_CM_128_HMAC_SHA1_80"))] + media(16), "FAIL"),
        ("sdes", "one plain packet among SRTP", media(10) + [(gw, ua, rtp(999))], "FAIL"),
        ("sdes", "PCMA SRTP +4, negotiated _32", [(gw_sip, ua_sip, ok200("AES_CM_128_HMAC_SHA1_32"))] + media(4, pt=8), "PASS"),
        ("dtls", "handshake then SRTP", [(gw, ua, hello), (ua, gw, server_hello(1))] + media(10), "PASS"),
        ("dtls", "SRTP, no handshake", media(10), "FAIL"),
        ("dtls", "handshake one way only", [(ua, gw, server_hello(1))] + media(10), "FAIL"),
        ("dtls", "media before the handshake", media(10, 5) + [(gw, ua, hello), (ua, gw, server_hello(1))] + media(10), "FAIL"),
        ("dtls", "profile AES_CM_80, SRTP +4", [(gw, ua, hello), (ua, gw, server_hello(1))] + media(4), "FAIL"),
        ("ice-sdes", "STUN then SRTP", [(ua, gw, stun(False)), (gw, ua, stun(True))] + media(10), "PASS"),
        ("ice-sdes", "SRTP then STUN", media(10) + [(ua, gw, stun(False)), (gw, ua, stun(True))], "FAIL"),
        ("ice-sdes", "no STUN back from the gateway", [(ua, gw, stun(False))] + media(10), "FAIL"),
        ("ice-dtls", "STUN, DTLS, SRTP", [(ua, gw, stun(False)), (gw, ua, stun(True)), (gw, ua, hello),
                                          (ua, gw, server_hello(7))] + media(16), "PASS"),
        ("ice-dtls", "DTLS before STUN", [(gw, ua, hello), (ua, gw, stun(False)), (gw, ua, stun(True)),
                                          (ua, gw, server_hello(7))] + media(16), "FAIL"),
    ]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (mode, what, pkts, want) in enumerate(cases):
            path = os.path.join(tmp, f"{i}.pcap")
            write_pcap(path, pkts)
            args = argparse.Namespace(file=path, mode=mode, min_media=100, direct=False,
                                      leg=[f"caller:{ua}-{ua + 99}:{gw}-{gw + 4999}:{ua_sip}:{gw_sip}"])
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                got = "PASS" if cmd_pcap(args) == 0 else "FAIL"
            why = "; ".join(line[6:] for line in buf.getvalue().splitlines() if line.startswith("fail: "))
            ok = got == want
            bad += not ok
            print(f"{'ok  ' if ok else 'BAD '} pcap {mode}: {what}: expected {want}, got {got}" + (f" ({why})" if why else ""))
    return bad


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wav")
    w.add_argument("file")
    w.add_argument("--freq", type=float, default=440.0)
    w.add_argument("--tol", type=float, default=10.0)
    w.add_argument("--min-seconds", type=float, default=3.0)
    w.add_argument("--threshold", type=float, default=0.01)
    p = sub.add_parser("pcap")
    p.add_argument("file")
    p.add_argument("--mode", required=True, choices=["rtp", "sdes", "dtls", "ice-sdes", "ice-dtls", "ice-full"])
    p.add_argument("--leg", action="append", required=True)
    p.add_argument("--min-media", type=int, default=100)
    p.add_argument("--direct", action="store_true")
    sub.add_parser("selftest-pcap")
    a = ap.parse_args(argv)
    if a.cmd == "selftest-pcap":
        return 1 if selftest_pcap() else 0
    return cmd_wav(a) if a.cmd == "wav" else cmd_pcap(a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
