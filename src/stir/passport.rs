//! PASSporT (RFC 8225) with the SHAKEN extension (RFC 8588): canonical JSON, ES256 signing
//! and checking, and telephone-number canonicalization (RFC 8224 §8.3).
//!
//! Canonical JSON is written here over [`serde_json::Value`] with keys sorted explicitly, so the
//! bytes do not depend on whether some crate in the graph turns on `serde_json/preserve_order`.
//! Signatures are the JWS fixed 64-byte `r||s` (RFC 7518 §3.4), never DER.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use serde_json::{Map, Value};
use std::fmt;

/// The JWS `typ` of every PASSporT.
pub const TYP_PASSPORT: &str = "passport";
/// The only algorithm SHAKEN allows.
pub const ALG_ES256: &str = "ES256";
/// `ppt` of a SHAKEN PASSporT.
pub const PPT_SHAKEN: &str = "shaken";
/// Length of an ES256 JWS signature (`r||s`).
pub const ES256_SIGNATURE_LEN: usize = 64;

/// Why a PASSporT could not be decoded or does not have the SHAKEN shape. All of these are
/// 438 Invalid Identity Header, except [`PassportError::MissingX5u`] (436).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PassportError {
    #[error("the PASSporT has {0} dot-separated segments, not 3")]
    SegmentCount(usize),
    #[error("the PASSporT {0} is not valid base64url")]
    Base64(&'static str),
    #[error("the PASSporT {0} is not a JSON object")]
    NotJsonObject(&'static str),
    #[error("the PASSporT header alg is {0:?}, only ES256 is accepted")]
    UnsupportedAlg(String),
    #[error("the PASSporT header typ is {0:?}, not \"passport\"")]
    BadTyp(String),
    #[error("the PASSporT header has no x5u")]
    MissingX5u,
    #[error("claim {0} is missing")]
    MissingClaim(&'static str),
    #[error(
        "claim iat is not a non-negative integer (a string iat is an RFC 8588 errata 6656 bug)"
    )]
    IatNotNumber,
    #[error("claim attest is {0:?}, not A, B or C")]
    BadAttest(String),
    #[error("claim {0} has the wrong shape: {1}")]
    BadClaim(&'static str, &'static str),
    #[error("the signature is {0} bytes, not the 64-byte r||s of ES256 (DER-encoded?)")]
    SignatureLength(usize),
    #[error("the signature does not verify with the certificate's key")]
    BadSignature,
    #[error("the certificate's key is not a P-256 public key")]
    BadPublicKey,
}

/// RFC 8588 attestation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attestation {
    /// Full: the originating SP knows the customer and that it may use the number.
    A,
    /// Partial: the customer is known, the right to the number is not.
    B,
    /// Gateway: the call entered from an origin the SP cannot vouch for.
    C,
}

impl Attestation {
    pub fn as_str(self) -> &'static str {
        match self {
            Attestation::A => "A",
            Attestation::B => "B",
            Attestation::C => "C",
        }
    }

    /// Parses `A`, `B` or `C` exactly (RFC 8588 uses upper case).
    pub fn parse(s: &str) -> Option<Attestation> {
        match s {
            "A" => Some(Attestation::A),
            "B" => Some(Attestation::B),
            "C" => Some(Attestation::C),
            _ => None,
        }
    }
}

impl fmt::Display for Attestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims of a SHAKEN PASSporT. TNs are canonical (see [`canonical_tn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShakenClaims {
    pub attest: Attestation,
    /// `dest.tn`, in order.
    pub dest_tns: Vec<String>,
    /// `iat`, seconds since the epoch.
    pub iat: u64,
    /// `orig.tn`.
    pub orig_tn: String,
    /// `origid`: opaque origination identifier (a UUID) for traceback.
    pub origid: String,
}

impl ShakenClaims {
    /// The claims as a JSON object; serialize with [`canonical_json`].
    pub fn to_value(&self) -> Value {
        let mut dest = Map::new();
        dest.insert(
            "tn".into(),
            Value::Array(self.dest_tns.iter().cloned().map(Value::String).collect()),
        );
        let mut orig = Map::new();
        orig.insert("tn".into(), Value::String(self.orig_tn.clone()));
        let mut m = Map::new();
        m.insert("attest".into(), Value::String(self.attest.as_str().into()));
        m.insert("dest".into(), Value::Object(dest));
        m.insert("iat".into(), Value::from(self.iat));
        m.insert("orig".into(), Value::Object(orig));
        m.insert("origid".into(), Value::String(self.origid.clone()));
        Value::Object(m)
    }

    /// Reads SHAKEN claims, insisting on RFC 8225/8588 shapes: numeric `iat`, `orig` an object
    /// with a string `tn`, `dest` an object with an array `tn` (errata 5715), `attest` A/B/C
    /// and a string `origid`. Stringified objects (old libstirshaken) are refused.
    pub fn from_value(claims: &Value) -> Result<ShakenClaims, PassportError> {
        let obj = claims
            .as_object()
            .ok_or(PassportError::NotJsonObject("claims"))?;
        let iat = iat_of(claims)?;
        let attest = match obj.get("attest") {
            None => return Err(PassportError::MissingClaim("attest")),
            Some(Value::String(s)) => {
                Attestation::parse(s).ok_or_else(|| PassportError::BadAttest(s.clone()))?
            }
            Some(other) => return Err(PassportError::BadAttest(other.to_string())),
        };
        let orig = obj.get("orig").ok_or(PassportError::MissingClaim("orig"))?;
        let orig = orig
            .as_object()
            .ok_or(PassportError::BadClaim("orig", "not an object"))?;
        let orig_tn = match orig.get("tn") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(PassportError::BadClaim("orig", "tn is not a string")),
            None => return Err(PassportError::BadClaim("orig", "no tn")),
        };
        let dest = obj.get("dest").ok_or(PassportError::MissingClaim("dest"))?;
        let dest = dest
            .as_object()
            .ok_or(PassportError::BadClaim("dest", "not an object"))?;
        let dest_tns = match dest.get("tn") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or(PassportError::BadClaim(
                            "dest",
                            "tn has a non-string element",
                        ))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(Value::Array(_)) => return Err(PassportError::BadClaim("dest", "tn is empty")),
            Some(_) => return Err(PassportError::BadClaim("dest", "tn is not an array")),
            None => return Err(PassportError::BadClaim("dest", "no tn")),
        };
        let origid = match obj.get("origid") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(PassportError::BadClaim("origid", "not a non-empty string")),
            None => return Err(PassportError::MissingClaim("origid")),
        };
        Ok(ShakenClaims {
            attest,
            dest_tns,
            iat,
            orig_tn,
            origid,
        })
    }
}

/// `iat` of any PASSporT's claims: must be a JSON integer (RFC 8225 §5.1.1).
pub fn iat_of(claims: &Value) -> Result<u64, PassportError> {
    match claims.get("iat") {
        None => Err(PassportError::MissingClaim("iat")),
        Some(Value::Number(n)) => n.as_u64().ok_or(PassportError::IatNotNumber),
        Some(_) => Err(PassportError::IatNotNumber),
    }
}

/// The JOSE header fields a verifier looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassportHeader {
    pub alg: Option<String>,
    pub ppt: Option<String>,
    pub typ: Option<String>,
    pub x5u: Option<String>,
}

impl PassportHeader {
    fn from_value(v: &Value) -> Result<PassportHeader, PassportError> {
        let obj = v
            .as_object()
            .ok_or(PassportError::NotJsonObject("header"))?;
        let field = |name: &'static str| -> Result<Option<String>, PassportError> {
            match obj.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(PassportError::BadClaim(
                    name,
                    "header field is not a string",
                )),
            }
        };
        Ok(PassportHeader {
            alg: field("alg")?,
            ppt: field("ppt")?,
            typ: field("typ")?,
            x5u: field("x5u")?,
        })
    }

    /// Checks `alg` (must be ES256) and `typ` (`passport` when present).
    pub fn check_alg_typ(&self) -> Result<(), PassportError> {
        match self.alg.as_deref() {
            Some(ALG_ES256) => {}
            other => return Err(PassportError::UnsupportedAlg(other.unwrap_or("").into())),
        }
        match self.typ.as_deref() {
            None | Some(TYP_PASSPORT) => Ok(()),
            Some(other) => Err(PassportError::BadTyp(other.into())),
        }
    }
}

/// A full-form PASSporT split and decoded, not yet verified.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedPassport {
    pub header: PassportHeader,
    pub header_json: Value,
    pub claims_json: Value,
    pub signature: Vec<u8>,
    /// `BASE64URL(header) "." BASE64URL(claims)` exactly as received.
    pub signing_input: String,
}

impl DecodedPassport {
    /// Decodes a full-form compact JWS. Bytes are kept as received: the signature is checked
    /// over them, not over a re-serialization.
    pub fn decode(jws: &str) -> Result<DecodedPassport, PassportError> {
        let segments: Vec<&str> = jws.split('.').collect();
        let [h64, c64, s64] = segments[..] else {
            return Err(PassportError::SegmentCount(segments.len()));
        };
        let header_json = decode_json(h64, "header")?;
        let claims_json = decode_json(c64, "claims")?;
        let signature = B64
            .decode(s64)
            .map_err(|_| PassportError::Base64("signature"))?;
        Ok(DecodedPassport {
            header: PassportHeader::from_value(&header_json)?,
            header_json,
            claims_json,
            signature,
            signing_input: format!("{h64}.{c64}"),
        })
    }

    /// Checks the ES256 signature with an uncompressed P-256 point (the leaf's SPKI key).
    pub fn verify_signature(&self, public_point: &[u8]) -> Result<(), PassportError> {
        verify_es256(self.signing_input.as_bytes(), &self.signature, public_point)
    }
}

fn decode_json(b64: &str, what: &'static str) -> Result<Value, PassportError> {
    let bytes = B64.decode(b64).map_err(|_| PassportError::Base64(what))?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|_| PassportError::NotJsonObject(what))?;
    if !v.is_object() {
        return Err(PassportError::NotJsonObject(what));
    }
    Ok(v)
}

/// Verifies an ES256 JWS signature (`r||s`, 64 bytes) over `signing_input`.
pub fn verify_es256(
    signing_input: &[u8],
    signature: &[u8],
    public_point: &[u8],
) -> Result<(), PassportError> {
    if signature.len() != ES256_SIGNATURE_LEN {
        return Err(PassportError::SignatureLength(signature.len()));
    }
    if public_point.len() != 65 || public_point.first() != Some(&0x04) {
        return Err(PassportError::BadPublicKey);
    }
    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public_point)
        .verify(signing_input, signature)
        .map_err(|_| PassportError::BadSignature)
}

/// The signing input the compact form implies (RFC 8225 §7): header and claims rebuilt by the
/// verifier from the SIP request, serialized canonically.
pub fn compact_signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64.encode(canonical_json(header)),
        B64.encode(canonical_json(claims))
    )
}

/// The canonical SHAKEN JOSE header for `x5u`.
pub fn shaken_header(x5u: &str) -> Value {
    let mut m = Map::new();
    m.insert("alg".into(), Value::String(ALG_ES256.into()));
    m.insert("ppt".into(), Value::String(PPT_SHAKEN.into()));
    m.insert("typ".into(), Value::String(TYP_PASSPORT.into()));
    m.insert("x5u".into(), Value::String(x5u.into()));
    Value::Object(m)
}

/// RFC 8225 §9 deterministic JSON: object keys in code-point order at every level, no
/// white space, arrays in order, strings minimally escaped, numbers as numbers.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            // Sorting here (not relying on the map's order) keeps the bytes independent of
            // `serde_json/preserve_order`. Byte order on UTF-8 equals code-point order.
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(val, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

/// Minimal JSON string escaping: `"` and `\`, the short escapes for control characters that
/// have one, `\u00XX` for the rest; everything else (including `/` and non-ASCII) as is.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Canonical form of a telephone number (RFC 8224 §8.3) from a `tel:`/`sip:`/`sips:` URI or
/// a bare number: the user part (before `@` and before any `;` parameter), visual
/// separators (`-`, `.`, `(`, `)`, space) removed, a leading `+` dropped; digits, `*` and `#`
/// kept. `None` when what remains is empty or holds anything else (e.g. `sip:alice@host`).
///
/// `sip:+1-215-555-1212@example.com;user=phone` and `tel:+12155551212` both give
/// `12155551212`. National numbers are returned as they are: adding a country code is
/// local policy.
pub fn canonical_tn(uri_or_number: &str) -> Option<String> {
    let s = uri_or_number.trim();
    let s = s
        .strip_prefix('<')
        .and_then(|x| x.split_once('>').map(|(inner, _)| inner))
        .unwrap_or(s);
    let lower_prefix = |p: &str| {
        s.get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    };
    let user = if lower_prefix("tel:") {
        &s[4..]
    } else if lower_prefix("sips:") {
        let rest = &s[5..];
        rest.split_once('@').map(|(u, _)| u)?
    } else if lower_prefix("sip:") {
        let rest = &s[4..];
        rest.split_once('@').map(|(u, _)| u)?
    } else {
        s
    };
    let user = user.split(';').next().unwrap_or("");
    let user = percent_decode_visual(user);
    let mut out = String::with_capacity(user.len());
    let mut chars = user.chars().peekable();
    while chars.peek().is_some_and(|c| is_visual_separator(*c)) {
        chars.next();
    }
    if chars.peek() == Some(&'+') {
        chars.next();
    }
    for c in chars {
        match c {
            '0'..='9' | '*' | '#' => out.push(c),
            c if is_visual_separator(c) => {}
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

fn is_visual_separator(c: char) -> bool {
    matches!(c, '-' | '.' | '(' | ')' | ' ')
}

/// Undoes the percent-encodings a user part may carry for characters a TN can contain
/// (`%23` for `#`, `%2B` for `+`, `%20` for a space); other escapes are left and then refused.
fn percent_decode_visual(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let code = rest.get(pos + 1..pos + 3);
        let decoded = match code.map(|c| c.to_ascii_uppercase()) {
            Some(c) if c == "23" => Some('#'),
            Some(c) if c == "2B" => Some('+'),
            Some(c) if c == "20" => Some(' '),
            Some(c) if c == "2A" => Some('*'),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[pos + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Why signing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("not a PKCS#8 ECDSA P-256 private key: {0}")]
    BadKey(String),
    #[error("no private key in the PEM input")]
    NoKeyInPem,
    #[error("the x5u {0:?} is not an absolute https URI usable in an Identity header")]
    BadX5u(String),
    #[error("{0} {1:?} is not a canonical telephone number (digits, * and # only)")]
    NotCanonical(&'static str, String),
    #[error("origid is empty")]
    EmptyOrigid,
    #[error("dest has no telephone number")]
    NoDest,
    #[error("the system random number generator failed")]
    Rng,
}

/// An ES256 (P-256) private key for the authentication service.
pub struct SigningKey {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey").finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a PKCS#8 DER P-256 key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, SignError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| SignError::BadKey(e.to_string()))?;
        Ok(SigningKey { key, rng })
    }

    /// Loads the first `PRIVATE KEY` (PKCS#8) block of a PEM file. SEC1 (`EC PRIVATE KEY`)
    /// keys are refused: convert with `openssl pkcs8 -topk8 -nocrypt`.
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, SignError> {
        let mut reader = pem;
        loop {
            match rustls_pemfile::read_one(&mut reader) {
                Ok(Some(rustls_pemfile::Item::Pkcs8Key(k))) => {
                    return SigningKey::from_pkcs8_der(k.secret_pkcs8_der())
                }
                Ok(Some(rustls_pemfile::Item::Sec1Key(_))) => {
                    return Err(SignError::BadKey(
                        "SEC1 EC PRIVATE KEY; convert it to PKCS#8".into(),
                    ))
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err(SignError::NoKeyInPem),
                Err(e) => return Err(SignError::BadKey(format!("malformed PEM: {e:?}"))),
            }
        }
    }

    /// Generates a new key, returning it and its PKCS#8 DER.
    pub fn generate() -> Result<(SigningKey, Vec<u8>), SignError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| SignError::Rng)?;
        let der = doc.as_ref().to_vec();
        Ok((SigningKey::from_pkcs8_der(&der)?, der))
    }

    /// The uncompressed public point (65 bytes).
    pub fn public_point(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Signs `input`, returning the 64-byte `r||s`.
    pub fn sign_raw(&self, input: &[u8]) -> Result<Vec<u8>, SignError> {
        self.key
            .sign(&self.rng, input)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| SignError::Rng)
    }
}

/// Makes a full-form SHAKEN PASSporT (compact JWS serialization) for `claims`, signed by `key`
/// with `x5u` in its header.
pub fn encode_shaken_passport(
    claims: &ShakenClaims,
    key: &SigningKey,
    x5u: &str,
) -> Result<String, SignError> {
    check_x5u_for_signing(x5u)?;
    if claims.origid.is_empty() {
        return Err(SignError::EmptyOrigid);
    }
    if claims.dest_tns.is_empty() {
        return Err(SignError::NoDest);
    }
    let canonical = |what: &'static str, tn: &str| {
        if !tn.is_empty()
            && tn
                .chars()
                .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
        {
            Ok(())
        } else {
            Err(SignError::NotCanonical(what, tn.to_string()))
        }
    };
    canonical("orig", &claims.orig_tn)?;
    for tn in &claims.dest_tns {
        canonical("dest", tn)?;
    }
    let signing_input = compact_signing_input(&shaken_header(x5u), &claims.to_value());
    let sig = key.sign_raw(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", B64.encode(sig)))
}

/// An x5u must be an absolute https URI without characters that would break the Identity
/// header's `<...>`.
fn check_x5u_for_signing(x5u: &str) -> Result<(), SignError> {
    let ok = x5u
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        && x5u.len() > 8
        && x5u
            .bytes()
            .all(|c| c.is_ascii_graphic() && !matches!(c, b'<' | b'>' | b'"'));
    if ok {
        Ok(())
    } else {
        Err(SignError::BadX5u(x5u.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc8588_claims() -> ShakenClaims {
        ShakenClaims {
            attest: Attestation::A,
            dest_tns: vec!["12125551213".into()],
            iat: 1443208345,
            orig_tn: "12155551212".into(),
            origid: "123e4567-e89b-12d3-a456-426655440000".into(),
        }
    }

    /// STIR-02: the RFC 8588 claims (errata 6656) give exactly the bytes in security.md §1.4.
    #[test]
    fn rfc8588_canonical_vectors() {
        let header = shaken_header("https://cert.example.org/passport.cer");
        assert_eq!(
            canonical_json(&header),
            r#"{"alg":"ES256","ppt":"shaken","typ":"passport","x5u":"https://cert.example.org/passport.cer"}"#
        );
        assert_eq!(
            B64.encode(canonical_json(&header)),
            "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jZXJ0LmV4YW1wbGUub3JnL3Bhc3Nwb3J0LmNlciJ9"
        );
        let claims = rfc8588_claims().to_value();
        assert_eq!(
            canonical_json(&claims),
            r#"{"attest":"A","dest":{"tn":["12125551213"]},"iat":1443208345,"orig":{"tn":"12155551212"},"origid":"123e4567-e89b-12d3-a456-426655440000"}"#
        );
        assert_eq!(
            B64.encode(canonical_json(&claims)),
            "eyJhdHRlc3QiOiJBIiwiZGVzdCI6eyJ0biI6WyIxMjEyNTU1MTIxMyJdfSwiaWF0IjoxNDQzMjA4MzQ1LCJvcmlnIjp7InRuIjoiMTIxNTU1NTEyMTIifSwib3JpZ2lkIjoiMTIzZTQ1NjctZTg5Yi0xMmQzLWE0NTYtNDI2NjU1NDQwMDAwIn0"
        );
    }

    /// STIR-02: the bytes do not depend on the order in which keys were inserted or parsed,
    /// which is what `serde_json/preserve_order` would change.
    #[test]
    fn canonical_json_ignores_input_order() {
        let scrambled: Value = serde_json::from_str(
            r#"{ "origid":"123e4567-e89b-12d3-a456-426655440000", "orig":{"tn":"12155551212"},
                 "iat":1443208345, "dest":{"tn":["12125551213"]}, "attest":"A" }"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&scrambled),
            canonical_json(&rfc8588_claims().to_value())
        );
        // Nested objects, escaping, non-ASCII and numbers.
        let v: Value = serde_json::from_str(
            r#"{"b":{"z":1,"a":[3,{"y":null,"x":true}]},"a":"q\"\\/\n\u0001é","c":-1.5}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_json(&v),
            "{\"a\":\"q\\\"\\\\/\\n\\u0001é\",\"b\":{\"a\":[3,{\"x\":true,\"y\":null}],\"z\":1},\"c\":-1.5}"
        );
    }

    #[test]
    fn claims_shape_is_enforced() {
        let good = rfc8588_claims().to_value();
        assert_eq!(ShakenClaims::from_value(&good).unwrap(), rfc8588_claims());
        let with = |patch: &dyn Fn(&mut Map<String, Value>)| {
            let mut v = good.clone();
            if let Value::Object(m) = &mut v {
                patch(m);
            }
            ShakenClaims::from_value(&v)
        };
        assert_eq!(
            with(&|m| {
                m.insert("iat".into(), Value::String("1443208345".into()));
            }),
            Err(PassportError::IatNotNumber)
        );
        assert_eq!(
            with(&|m| {
                m.insert("iat".into(), serde_json::json!(1.5));
            }),
            Err(PassportError::IatNotNumber)
        );
        assert_eq!(
            with(&|m| {
                m.insert("attest".into(), Value::String("D".into()));
            }),
            Err(PassportError::BadAttest("D".into()))
        );
        assert!(matches!(
            with(&|m| {
                m.insert("dest".into(), Value::String("{\"tn\":\"1\"}".into()));
            }),
            Err(PassportError::BadClaim("dest", _))
        ));
        assert!(matches!(
            with(&|m| {
                m.insert("dest".into(), serde_json::json!({"tn": "12125551213"}));
            }),
            Err(PassportError::BadClaim("dest", _))
        ));
        assert!(matches!(
            with(&|m| {
                m.insert("orig".into(), Value::String("{\"tn\":\"1\"}".into()));
            }),
            Err(PassportError::BadClaim("orig", _))
        ));
        assert_eq!(
            with(&|m| {
                m.remove("origid");
            }),
            Err(PassportError::MissingClaim("origid"))
        );
    }

    /// STIR-03: 100 signatures with one key all verify and all differ (ECDSA is randomized).
    #[test]
    fn hundred_signatures_verify_and_differ() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = SigningKey::from_pkcs8_der(kp.serialized_der()).unwrap();
        assert_eq!(key.public_point(), kp.public_key_raw());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let mut claims = rfc8588_claims();
            claims.iat = 1_700_000_000;
            let jws =
                encode_shaken_passport(&claims, &key, "https://cert.example.org/passport.cer")
                    .unwrap();
            let d = DecodedPassport::decode(&jws).unwrap();
            assert_eq!(d.signature.len(), ES256_SIGNATURE_LEN);
            d.verify_signature(kp.public_key_raw()).unwrap();
            assert_eq!(ShakenClaims::from_value(&d.claims_json).unwrap(), claims);
            assert!(seen.insert(d.signature.clone()), "signature repeated");
        }
        assert_eq!(seen.len(), 100);
    }

    #[test]
    fn signature_mutations_fail() {
        let (key, _) = SigningKey::generate().unwrap();
        let jws =
            encode_shaken_passport(&rfc8588_claims(), &key, "https://x.example/c.pem").unwrap();
        let d = DecodedPassport::decode(&jws).unwrap();
        d.verify_signature(key.public_point()).unwrap();
        let mut bad = d.clone();
        bad.signature[10] ^= 1;
        assert_eq!(
            bad.verify_signature(key.public_point()),
            Err(PassportError::BadSignature)
        );
        let mut der_like = d.clone();
        der_like.signature.push(0);
        assert_eq!(
            der_like.verify_signature(key.public_point()),
            Err(PassportError::SignatureLength(65))
        );
        assert_eq!(
            d.verify_signature(&[4u8; 10]),
            Err(PassportError::BadPublicKey)
        );
    }

    #[test]
    fn signing_refuses_bad_input() {
        let (key, _) = SigningKey::generate().unwrap();
        let mut c = rfc8588_claims();
        assert!(matches!(
            encode_shaken_passport(&c, &key, "http://x/c.pem"),
            Err(SignError::BadX5u(_))
        ));
        assert!(matches!(
            encode_shaken_passport(&c, &key, "https://x/c>.pem"),
            Err(SignError::BadX5u(_))
        ));
        c.orig_tn = "+12155551212".into();
        assert!(matches!(
            encode_shaken_passport(&c, &key, "https://x/c.pem"),
            Err(SignError::NotCanonical("orig", _))
        ));
        assert!(SigningKey::from_pkcs8_der(b"junk").is_err());
        assert_eq!(
            SigningKey::from_pem(b"nothing here").unwrap_err(),
            SignError::NoKeyInPem
        );
    }

    #[test]
    fn pem_key_loads() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = SigningKey::from_pem(kp.serialize_pem().as_bytes()).unwrap();
        assert_eq!(key.public_point(), kp.public_key_raw());
        assert!(format!("{key:?}").starts_with("SigningKey"));
    }

    #[test]
    fn tn_canonicalization() {
        for (input, want) in [
            ("sip:+1-215-555-1212@x;user=phone", Some("12155551212")),
            ("tel:+12155551212", Some("12155551212")),
            (
                "sip:+1-(215)-555-1212@example.com;user=phone",
                Some("12155551212"),
            ),
            (
                "<sip:+12155551212@gw.example;user=phone>;tag=1",
                Some("12155551212"),
            ),
            ("<tel:+1.215.555.1212>", Some("12155551212")),
            (
                "tel:+12155551212;verstat=TN-Validation-Passed",
                Some("12155551212"),
            ),
            ("sips:12155551212@x", Some("12155551212")),
            ("SIP:+12155551212@X", Some("12155551212")),
            ("sip:+12155551212;npdi;rn=1@x", Some("12155551212")),
            ("+1 215 555 1212", Some("12155551212")),
            ("12155551212", Some("12155551212")),
            ("tel:*67#", Some("*67#")),
            ("sip:%2B12155551212@x", Some("12155551212")),
            ("sip:alice@example.com", None),
            ("sip:anonymous@anonymous.invalid", None),
            ("sip:example.com", None),
            ("tel:", None),
            ("", None),
            ("tel:+1-215-555-121x", None),
            ("tel:++12155551212", None),
        ] {
            assert_eq!(canonical_tn(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn decode_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let len = (state % 200) as usize;
            let mut s = String::new();
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
                s.push(char::from(
                    alphabet[(state % alphabet.len() as u64) as usize],
                ));
            }
            let _ = DecodedPassport::decode(&s);
        }
        let (key, _) = SigningKey::generate().unwrap();
        let jws =
            encode_shaken_passport(&rfc8588_claims(), &key, "https://x.example/c.pem").unwrap();
        for end in 0..jws.len() {
            if let Ok(d) = DecodedPassport::decode(&jws[..end]) {
                assert!(d.verify_signature(key.public_point()).is_err());
            }
        }
        for junk in ["..", "a.b.c", "e30.e30.", "W10.e30.AA", "bnVsbA.e30.AA"] {
            let _ = DecodedPassport::decode(junk);
        }
        assert_eq!(
            DecodedPassport::decode("W10.e30.AA"),
            Err(PassportError::NotJsonObject("header"))
        );
        assert!(canonical_tn("\u{1F600}@x").is_none());
        assert!(canonical_tn("sip:\u{1F600}@x").is_none());
    }
}
