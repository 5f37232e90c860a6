#!/usr/bin/env python3
"""Scenario (i): malformed-message probe against gateway A.

1. Reads riptide_sip_malformed_total from A's /metrics.
2. Sends one garbage UDP datagram to the SIP port.
3. Polls /metrics (bounded) until the counter has increased.
4. Sends an INVITE whose CSeq is broken ("CSeq: abc INVITE"); everything else is valid, so the
   gateway can answer. Retransmits like a UDP client (T1 = 500 ms, 7 tries) and requires a 400.
Exit 0 only if both checks hold. All traffic on 127.0.0.1. Prints what it saw.

Usage: malformed.py [--sip 127.0.0.1:5070] [--metrics http://127.0.0.1:9070/metrics]
"""
import argparse
import socket
import sys
import time
import urllib.request
import uuid


def malformed_total(url):
    with urllib.request.urlopen(url, timeout=3) as r:
        text = r.read().decode("utf-8", "replace")
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split()[0]
        if name == "riptide_sip_malformed_total":
            total += float(line.split()[-1])
            seen = True
    return total if seen else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sip", default="127.0.0.1:5070")
    ap.add_argument("--metrics", default="http://127.0.0.1:9070/metrics")
    ap.add_argument("--counter-wait", type=float, default=5.0)
    a = ap.parse_args()
    host, port = a.sip.rsplit(":", 1)
    target = (host, int(port))
    ok = True

    before = malformed_total(a.metrics)
    print(f"metrics: riptide_sip_malformed_total before = {before}")
    if before is None:
        # A labelled counter may only appear once it has a sample: absent counts as 0; the check
        # below still requires it to be exported (and > 0) after the garbage.
        print("metrics: riptide_sip_malformed_total not exported yet: taken as 0")
        before = 0.0

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    lport = sock.getsockname()[1]

    garbage = b"\x00\xffthis is not SIP\r\n\x13\x37" + bytes(range(256))
    sock.sendto(garbage, target)
    print(f"sent {len(garbage)}-byte garbage datagram to {a.sip}")

    after = before
    deadline = time.monotonic() + a.counter_wait
    while time.monotonic() < deadline:
        after = malformed_total(a.metrics) or 0.0
        if after > before:
            break
        time.sleep(0.1)
    print(f"metrics: riptide_sip_malformed_total after garbage = {after}")
    if not after > before:
        print(f"FAIL: counter did not increase within {a.counter_wait:g} s")
        ok = False

    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    call_id = uuid.uuid4().hex + "@127.0.0.1"
    invite = (
        f"INVITE sip:answer@{a.sip} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch};rport\r\n"
        f"From: <sip:probe@127.0.0.1:{lport}>;tag=probe1\r\n"
        f"To: <sip:answer@{a.sip}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: abc INVITE\r\n"
        f"Contact: <sip:probe@127.0.0.1:{lport}>\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    status = None
    sock.settimeout(0.5)
    for attempt in range(7):
        sock.sendto(invite, target)
        end = time.monotonic() + 0.5 * (2 ** min(attempt, 2))
        while time.monotonic() < end:
            try:
                data, _ = sock.recvfrom(65535)
            except socket.timeout:
                continue
            first = data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
            if call_id.encode() not in data:
                continue
            print(f"reply to broken INVITE: {first}")
            if first.startswith("SIP/2.0 1"):
                continue  # provisional: keep waiting for the final answer
            status = first
            break
        if status:
            break
    if status is None:
        print("FAIL: no final response to the broken INVITE")
        ok = False
    elif not status.startswith("SIP/2.0 400"):
        print(f"FAIL: expected 400, got {status!r}")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
