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
