#!/usr/bin/env python3
"""Seconds from the first SIP message starting with FIRST that a SIPp endpoint sent or got to the
first message starting with THEN that it received after it, read from its -trace_msg log:
`sip_gap.py MESSAGES_LOG [FIRST [THEN]]` (default: "ACK" then "BYE"). Prints the figure, or exits
1 when either is missing.
"""
import re
import sys
from datetime import datetime

STAMP = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$")


def main(path, first="ACK", then="BYE"):
    start = end = None
    when = None
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    for i, line in enumerate(lines):
        m = STAMP.match(line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
            continue
        if when is None:
            continue
        if line.startswith(first + " ") and start is None:
            start = when
        elif line.startswith(then + " ") and end is None and start is not None:
            received = any("received" in l for l in lines[max(0, i - 3):i])
            if received:
                end = when
    if start is None or end is None:
        print(f"no {first} then received {then} in {path}", file=sys.stderr)
        return 1
    print(f"{(end - start).total_seconds():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
