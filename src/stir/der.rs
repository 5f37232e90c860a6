//! The sliver of DER that the STIR certificate extensions need.
//!
//! TNAuthList and JWTClaimConstraints (RFC 8226) are small and their tagging is exactly what
//! implementations get wrong (explicit versus implicit context tags), so they are read here
//! byte by byte rather than through a generic ASN.1 layer that would hide the tags.

use std::fmt;

/// Universal tags used by the STIR extensions.
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTF8_STRING: u8 = 0x0C;
pub(crate) const TAG_IA5_STRING: u8 = 0x16;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// Why a DER element could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerError {
    /// The input ended inside a tag, length or value.
    Truncated,
    /// A high-tag-number form (`0x1f`) tag; nothing in the STIR extensions uses one.
    HighTagNumber,
    /// Indefinite length (`0x80`) is BER, not DER.
    IndefiniteLength,
    /// A length that does not fit the four bytes allowed here.
    LengthTooLarge,
    /// Bytes left over after the outermost element.
    TrailingData,
    /// A different element was expected.
    UnexpectedTag { expected: u8, found: u8 },
    /// An INTEGER that is negative, empty or longer than 64 bits.
    BadInteger,
    /// A string that is not valid for its type (IA5String must be ASCII).
    BadString,
}

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DerError::Truncated => write!(f, "DER truncated"),
            DerError::HighTagNumber => write!(f, "DER high tag number not supported"),
            DerError::IndefiniteLength => write!(f, "DER indefinite length"),
            DerError::LengthTooLarge => write!(f, "DER length too large"),
            DerError::TrailingData => write!(f, "DER trailing data"),
            DerError::UnexpectedTag { expected, found } => {
                write!(
                    f,
                    "DER tag 0x{found:02x} where 0x{expected:02x} was expected"
                )
            }
            DerError::BadInteger => write!(f, "DER INTEGER out of range"),
            DerError::BadString => write!(f, "DER string has invalid characters"),
        }
    }
}

impl std::error::Error for DerError {}

/// One tag-length-value element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
}

/// Reads one element from the front of `input`, returning it and the rest.
pub(crate) fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError::Truncated)?;
    if tag & 0x1f == 0x1f {
        return Err(DerError::HighTagNumber);
    }
    let (&first, mut rest) = rest.split_first().ok_or(DerError::Truncated)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else if first == 0x80 {
        return Err(DerError::IndefiniteLength);
    } else {
        let n = usize::from(first & 0x7f);
        if n > 4 {
            return Err(DerError::LengthTooLarge);
        }
        if rest.len() < n {
            return Err(DerError::Truncated);
        }
        let (len_bytes, after) = rest.split_at(n);
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return Err(DerError::Truncated);
    }
    let (value, rest) = rest.split_at(len);
    Ok((Tlv { tag, value }, rest))
}

/// Reads exactly one element that must fill `input`.
pub(crate) fn read_single(input: &[u8]) -> Result<Tlv<'_>, DerError> {
    let (tlv, rest) = read_tlv(input)?;
    if !rest.is_empty() {
        return Err(DerError::TrailingData);
    }
    Ok(tlv)
}

/// Reads exactly one element with tag `expected` that fills `input`.
pub(crate) fn expect_single(input: &[u8], expected: u8) -> Result<&[u8], DerError> {
    let tlv = read_single(input)?;
    if tlv.tag != expected {
        return Err(DerError::UnexpectedTag {
            expected,
            found: tlv.tag,
        });
    }
    Ok(tlv.value)
}

/// Iterates over the elements of a constructed value (the content of a SEQUENCE).
pub(crate) fn elements(mut input: &[u8]) -> impl Iterator<Item = Result<Tlv<'_>, DerError>> {
    std::iter::from_fn(move || {
        if input.is_empty() {
            return None;
        }
        match read_tlv(input) {
            Ok((tlv, rest)) => {
                input = rest;
                Some(Ok(tlv))
            }
            Err(e) => {
                input = &[];
                Some(Err(e))
            }
        }
    })
}

/// The value of an IA5String as text.
pub(crate) fn ia5(value: &[u8]) -> Result<String, DerError> {
    if !value.is_ascii() {
        return Err(DerError::BadString);
    }
    String::from_utf8(value.to_vec()).map_err(|_| DerError::BadString)
}

/// The value of a UTF8String as text.
pub(crate) fn utf8(value: &[u8]) -> Result<String, DerError> {
    String::from_utf8(value.to_vec()).map_err(|_| DerError::BadString)
}

/// A non-negative INTEGER that fits 64 bits.
pub(crate) fn uint(value: &[u8]) -> Result<u64, DerError> {
    let (&first, _) = value.split_first().ok_or(DerError::BadInteger)?;
    if first & 0x80 != 0 {
        return Err(DerError::BadInteger);
    }
    let digits = if first == 0 { &value[1..] } else { value };
    if digits.len() > 8 {
        return Err(DerError::BadInteger);
    }
    Ok(digits
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Encodes one element.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Encodes a non-negative INTEGER.
pub(crate) fn uint_der(v: u64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    let mut content = Vec::with_capacity(9);
    if bytes[skip] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(&bytes[skip..]);
    tlv(TAG_INTEGER, &content)
}

/// Encodes an OBJECT IDENTIFIER from its arcs; `arcs` must have at least two elements with
/// the first two forming a valid prefix (callers pass constants).
pub(crate) fn oid_der(arcs: &[u64]) -> Vec<u8> {
    let mut content = Vec::new();
    let (first, rest) = match arcs {
        [a, b, rest @ ..] => (a * 40 + b, rest),
        [a] => (a * 40, &[][..]),
        [] => (0, &[][..]),
    };
    for arc in std::iter::once(first).chain(rest.iter().copied()) {
        let mut groups = Vec::new();
        let mut v = arc;
        groups.push((v & 0x7f) as u8);
        v >>= 7;
        while v > 0 {
            groups.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        groups.reverse();
        content.extend_from_slice(&groups);
    }
    tlv(TAG_OID, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![0x41; len];
            let enc = tlv(TAG_IA5_STRING, &content);
            let t = read_single(&enc).unwrap();
            assert_eq!(t.tag, TAG_IA5_STRING);
            assert_eq!(t.value.len(), len);
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        assert_eq!(read_tlv(&[0x30]), Err(DerError::Truncated));
        assert_eq!(read_tlv(&[0x30, 0x80]), Err(DerError::IndefiniteLength));
        assert_eq!(
            read_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]),
            Err(DerError::LengthTooLarge)
        );
        assert_eq!(read_tlv(&[0x30, 0x05, 1]), Err(DerError::Truncated));
        assert_eq!(read_tlv(&[0x1f, 0x01, 0x00]), Err(DerError::HighTagNumber));
        assert_eq!(
            read_single(&[0x05, 0x00, 0x00]),
            Err(DerError::TrailingData)
        );
    }

    #[test]
    fn integers() {
        for v in [0u64, 1, 127, 128, 255, 256, u64::MAX] {
            let enc = uint_der(v);
            let t = read_single(&enc).unwrap();
            assert_eq!(uint(t.value).unwrap(), v);
        }
        assert_eq!(uint(&[0xff]), Err(DerError::BadInteger));
        assert_eq!(uint(&[]), Err(DerError::BadInteger));
    }

    #[test]
    fn oid_encoding_matches_known_bytes() {
        // 1.3.6.1.5.5.7.1.26 (id-pe-TNAuthList)
        assert_eq!(
            oid_der(&[1, 3, 6, 1, 5, 5, 7, 1, 26]),
            vec![0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1a]
        );
        // 2.16.840.1.114569.1.1.3 (SHAKEN certificate policy)
        assert_eq!(
            oid_der(&[2, 16, 840, 1, 114569, 1, 1, 3]),
            vec![0x06, 0x0a, 0x60, 0x86, 0x48, 0x01, 0x86, 0xff, 0x09, 0x01, 0x01, 0x03]
        );
    }
}
