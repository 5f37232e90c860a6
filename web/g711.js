// G.711 µ-law (ITU-T G.711, the "PCMU" of RTP) for riptide's browser client (web/riptide-session.js).

const BIAS = 0x84;
const CLIP = 32635;

// One float sample in [-1, 1] to a µ-law byte.
export function encodeSample(x) {
    let s = Math.round(Math.max(-1, Math.min(1, x)) * 32767);
    const sign = s < 0 ? 0x80 : 0;
    s = Math.min(Math.abs(s), CLIP) + BIAS;
    let exponent = 7;
    for (let mask = 0x4000; exponent > 0 && !(s & mask); mask >>= 1) exponent--;
    const mantissa = (s >> (exponent + 3)) & 0x0f;
    return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

// µ-law byte to a float sample in [-1, 1].
export function decodeSample(u) {
    u = ~u & 0xff;
    const t = (((u & 0x0f) << 3) + BIAS) << ((u & 0x70) >> 4);
    return ((u & 0x80) ? BIAS - t : t - BIAS) / 32768;
}

// Whole frames.
export function encode(samples) {
    const out = new Uint8Array(samples.length);
    for (let i = 0; i < samples.length; i++) out[i] = encodeSample(samples[i]);
    return out;
}

export function decode(bytes) {
    const out = new Float32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) out[i] = decodeSample(bytes[i]);
    return out;
}

// G.711 A-law (the "PCMA" of RTP): 13-bit segments, even bits inverted (the 0x55 mask).
const A_SEG_END = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];

export function alawEncodeSample(x) {
    let s = Math.round(Math.max(-1, Math.min(1, x)) * 32767) >> 3; // 13-bit magnitude
    let mask = 0xd5;
    if (s < 0) { mask = 0x55; s = -s - 1; }
    let seg = 0;
    while (seg < 8 && s > A_SEG_END[seg]) seg++;
    if (seg === 8) return 0x7f ^ mask;
    const mantissa = (seg < 2 ? s >> 1 : s >> seg) & 0x0f;
    return ((seg << 4) | mantissa) ^ mask;
}

export function alawDecodeSample(a) {
    a ^= 0x55;
    let t = (a & 0x0f) << 4;
    const seg = (a & 0x70) >> 4;
    if (seg === 0) t += 8; else { t += 0x108; if (seg > 1) t <<= seg - 1; }
    return ((a & 0x80) ? t : -t) / 32768;
}

export function alawEncode(samples) {
    const out = new Uint8Array(samples.length);
    for (let i = 0; i < samples.length; i++) out[i] = alawEncodeSample(samples[i]);
    return out;
}

export function alawDecode(bytes) {
    const out = new Float32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) out[i] = alawDecodeSample(bytes[i]);
    return out;
}
