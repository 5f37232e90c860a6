#!/usr/bin/env python3
"""Write a raw (headerless) G.711 mu-law file: 440 Hz tone, 8 kHz, default 2 s.

SIPp's `rtp_stream` action sends raw codec bytes, 160 bytes (20 ms) per packet.
Usage: mktone.py OUT [SECONDS]
"""
import math
import sys


def lin2ulaw(sample: int) -> int:
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), clip) + bias
    exponent, mask = 7, 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def main() -> None:
    out = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    n = int(8000 * seconds)
    data = bytes(lin2ulaw(int(8000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(n))
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    import os
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
