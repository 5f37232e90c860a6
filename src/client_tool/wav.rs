//! Minimal RIFF/WAVE reading and writing for the call tool: 8 kHz mono 16-bit PCM only.

use std::path::Path;

/// The only format the call tool plays and records.
pub const RATE: u32 = 8000;

/// Reads an 8 kHz mono 16-bit PCM WAV file; any other format is an error naming the file
/// and what it contains.
pub fn read(path: &Path) -> Result<Vec<i16>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses WAV bytes (see [`read`]).
pub fn parse(b: &[u8]) -> Result<Vec<i16>, String> {
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let mut pos = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let len = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]) as usize;
        let body_start = pos + 8;
        let body_end = body_start.saturating_add(len).min(b.len());
        let body = &b[body_start..body_end];
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err("fmt chunk too short".into());
                }
                let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                format = Some((u16_at(0), u16_at(2), rate, u16_at(14)));
            }
            b"data" => {
                let Some((tag, channels, rate, bits)) = format else {
                    return Err("data chunk before the fmt chunk".into());
                };
                // 1 = PCM; 0xFFFE = WAVE_FORMAT_EXTENSIBLE, accepted when the rest matches.
                if !(tag == 1 || tag == 0xfffe) || channels != 1 || rate != RATE || bits != 16 {
                    let kind = match tag {
                        1 | 0xfffe => "PCM".to_string(),
                        3 => "IEEE float".to_string(),
                        6 => "A-law".to_string(),
                        7 => "µ-law".to_string(),
                        t => format!("format tag {t}"),
                    };
                    return Err(format!(
                        "{kind}, {rate} Hz, {channels} channel(s), {bits}-bit; \
                         need 8000 Hz mono 16-bit PCM"
                    ));
                }
                return Ok(body
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect());
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = body_start.saturating_add(len).saturating_add(len & 1);
    }
    Err(if format.is_none() {
        "no fmt chunk".into()
    } else {
        "no data chunk".into()
    })
}

/// WAV bytes for 8 kHz mono 16-bit PCM `samples`.
pub fn encode(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut b = Vec::with_capacity(44 + samples.len() * 2);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&RATE.to_le_bytes());
    b.extend_from_slice(&(RATE * 2).to_le_bytes()); // byte rate
    b.extend_from_slice(&2u16.to_le_bytes()); // block align
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    b
}

/// Writes `samples` as an 8 kHz mono 16-bit PCM WAV file.
pub fn write(path: &Path, samples: &[i16]) -> Result<(), String> {
    std::fs::write(path, encode(samples)).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s: Vec<i16> = (0..1000).map(|i| (i * 31 - 15000) as i16).collect();
        let b = encode(&s);
        assert_eq!(b.len(), 44 + 2000);
        assert_eq!(parse(&b).unwrap(), s);
    }

    #[test]
    fn skips_unknown_chunks_with_padding() {
        let s = [1i16, -2, 3];
        let plain = encode(&s);
        // Insert an odd-sized LIST chunk (padded) between fmt and data.
        let mut b = plain[..36].to_vec();
        b.extend_from_slice(b"LIST");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&[9, 9, 9, 0]);
        b.extend_from_slice(&plain[36..]);
        assert_eq!(parse(&b).unwrap(), s);
    }

    #[test]
    fn wrong_formats_are_named() {
        let mut b = encode(&[0; 4]);
        b[24..28].copy_from_slice(&44100u32.to_le_bytes());
        let e = parse(&b).unwrap_err();
        assert!(
            e.contains("44100 Hz") && e.contains("need 8000 Hz mono"),
            "{e}"
        );
        let mut b = encode(&[0; 4]);
        b[22..24].copy_from_slice(&2u16.to_le_bytes());
        assert!(parse(&b).unwrap_err().contains("2 channel(s)"));
        let mut b = encode(&[0; 4]);
        b[20..22].copy_from_slice(&3u16.to_le_bytes());
        b[34..36].copy_from_slice(&32u16.to_le_bytes());
        assert!(parse(&b)
            .unwrap_err()
            .contains("IEEE float, 8000 Hz, 1 channel(s), 32-bit"));
        assert_eq!(parse(b"hello").unwrap_err(), "not a RIFF/WAVE file");
        assert_eq!(parse(&encode(&[])[..36]).unwrap_err(), "no data chunk");
    }
}
