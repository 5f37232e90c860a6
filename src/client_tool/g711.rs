//! G.711 µ-law (PCMU) sample conversion, ITU-T G.711 with the usual bias-33 segment search.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

/// One 16-bit linear sample to a µ-law octet.
pub fn encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    // The segment: position of the highest set bit among bits 14..7.
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// One µ-law octet to a 16-bit linear sample.
pub fn decode(code: u8) -> i16 {
    let u = !code;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes() {
        // Silence encodes to 0xFF; full scale positive to 0x80, negative to 0x00.
        assert_eq!(encode(0), 0xff);
        assert_eq!(encode(32767), 0x80);
        assert_eq!(encode(-32768), 0x00);
        assert_eq!(decode(0xff), 0);
        assert_eq!(decode(0x80), 32124);
        assert_eq!(decode(0x00), -32124);
    }

    #[test]
    fn round_trip_error_is_within_the_segment_step() {
        for s in (-32000i32..32000).step_by(37) {
            let back = i32::from(decode(encode(s as i16)));
            // Segment 7 steps are 1024 wide; the error is at most half a step (plus the bias).
            let step = (s.abs() / 16).max(8);
            assert!((back - s).abs() <= step, "{s} -> {back}");
        }
    }

    #[test]
    fn every_code_is_a_fixed_point() {
        for c in 0..=255u8 {
            // 0x7F (negative zero) decodes to 0, which encodes as positive zero.
            if c == 0x7f {
                continue;
            }
            assert_eq!(encode(decode(c)), c, "code {c:#04x}");
        }
    }
}
