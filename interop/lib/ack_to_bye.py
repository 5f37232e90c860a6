#!/usr/bin/env python3
"""Seconds from the ACK a SIPp endpoint sent (or got) to the BYE it received, read from its
-trace_msg log: `ack_to_bye.py MESSAGES_LOG`. Prints the figure, or exits 1 when either is missing.
"""
import re
import sys
from datetime import datetime

STAMP = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$")


def main(path):
    ack = bye = None
    when = None
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    for i, line in enumerate(lines):
        m = STAMP.match(line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
            continue
        if when is None:
            continue
        if line.startswith("ACK ") and ack is None:
            ack = when
        elif line.startswith("BYE ") and bye is None and ack is not None:
            received = any("received" in l for l in lines[max(0, i - 3):i])
            if received:
                bye = when
    if ack is None or bye is None:
        print(f"no ACK then received BYE in {path}", file=sys.stderr)
        return 1
    print(f"{(bye - ack).total_seconds():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
