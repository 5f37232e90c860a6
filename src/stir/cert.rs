//! STI certificates: RFC 8226 extensions, the ATIS-1000080 leaf profile, chain validation to
//! the STI-PA trust list (rustls-webpki) and revocation against the STI-PA CRL.
//!
//! Real SHAKEN leaves encode TNAuthList with **explicit** context tags
//! (`30 08 A0 06 16 04 "318J"`, Comcast); a parser built for implicit tags rejects them, and a
//! certificate built with implicit tags is refused here (hard profile failure). The STI-PA CRL
//! is signed by a CRL signer that is not the certificate's issuer, which webpki's CRL support
//! does not handle, so [`StiCrl`] checks its signature itself against the configured signer.

use super::der::{
    self, elements, expect_single, ia5, read_single, tlv, uint, utf8, DerError, TAG_IA5_STRING,
    TAG_INTEGER, TAG_SEQUENCE, TAG_UTF8_STRING,
};
use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;
use std::time::Duration;
use webpki::{ExtendedKeyUsageValidator, KeyPurposeIdIter};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

/// id-pe-TNAuthList.
pub const OID_TN_AUTH_LIST: &str = "1.3.6.1.5.5.7.1.26";
/// id-pe-JWTClaimConstraints.
pub const OID_JWT_CLAIM_CONSTRAINTS: &str = "1.3.6.1.5.5.7.1.27";
/// SHAKEN certificate policy OIDs the STI-PA has established (US SHAKEN CP 1.3 and 1.4).
pub const SHAKEN_POLICY_OIDS: [&str; 2] = ["2.16.840.1.114569.1.1.3", "2.16.840.1.114569.1.1.4"];

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const OID_RSA_SHA256: &str = "1.2.840.113549.1.1.11";
const OID_RSA_SHA384: &str = "1.2.840.113549.1.1.12";
const OID_RSA_SHA512: &str = "1.2.840.113549.1.1.13";

/// Tag bytes of the TNEntry CHOICE.
const TAG_EXPLICIT_0: u8 = 0xA0;
const TAG_EXPLICIT_1: u8 = 0xA1;
const TAG_EXPLICIT_2: u8 = 0xA2;
const TAG_IMPLICIT_0: u8 = 0x80;
const TAG_IMPLICIT_2: u8 = 0x82;

// ---------------------------------------------------------------------------------------------
// TNAuthList

/// One TNEntry of a TNAuthList (RFC 8226 §9).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TnEntry {
    /// Service Provider Code: what SHAKEN certificates carry.
    Spc(String),
    Range {
        start: String,
        count: u64,
    },
    One(String),
}

/// Why a TNAuthList extension value is not a valid RFC 8226 list with explicit tags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TnAuthListError {
    #[error("TNAuthList is an IA5String ({0:?}), not a SEQUENCE of TNEntry")]
    Ia5StringInsteadOfSequence(String),
    #[error("TNAuthList is not a SEQUENCE (tag 0x{0:02x})")]
    NotSequence(u8),
    #[error("TNAuthList is empty")]
    Empty,
    #[error("TNAuthList uses implicit context tags; RFC 8226 requires explicit tags")]
    ImplicitTags,
    #[error("TNAuthList has an unknown TNEntry tag 0x{0:02x}")]
    UnknownEntry(u8),
    #[error("TNAuthList entry: {0}")]
    BadEntry(&'static str),
    #[error("TNAuthList DER: {0}")]
    Der(DerError),
}

impl From<DerError> for TnAuthListError {
    fn from(e: DerError) -> Self {
        TnAuthListError::Der(e)
    }
}

/// Parses the value (the OCTET STRING content) of a TNAuthList extension.
pub fn parse_tn_auth_list(value: &[u8]) -> Result<Vec<TnEntry>, TnAuthListError> {
    let outer = read_single(value)?;
    if outer.tag == TAG_IA5_STRING {
        let text = String::from_utf8_lossy(outer.value).into_owned();
        return Err(TnAuthListError::Ia5StringInsteadOfSequence(text));
    }
    if outer.tag != TAG_SEQUENCE {
        return Err(TnAuthListError::NotSequence(outer.tag));
    }
    let mut out = Vec::new();
    for entry in elements(outer.value) {
        let entry = entry?;
        let parsed = match entry.tag {
            TAG_EXPLICIT_0 => {
                let spc = ia5(expect_single(entry.value, TAG_IA5_STRING)?)?;
                if spc.is_empty() {
                    return Err(TnAuthListError::BadEntry("empty SPC"));
                }
                TnEntry::Spc(spc)
            }
            TAG_EXPLICIT_1 => {
                // Implicit tagging puts `start` (an IA5String) directly inside [1].
                if entry.value.first() == Some(&TAG_IA5_STRING) {
                    return Err(TnAuthListError::ImplicitTags);
                }
                let inner = read_single(entry.value)?;
                if inner.tag != TAG_SEQUENCE {
                    return Err(TnAuthListError::BadEntry("range is not a SEQUENCE"));
                }
                let mut fields = elements(inner.value);
                let start = match fields.next() {
                    Some(Ok(t)) if t.tag == TAG_IA5_STRING => ia5(t.value)?,
                    Some(Err(e)) => return Err(e.into()),
                    _ => return Err(TnAuthListError::BadEntry("range without start")),
                };
                let count = match fields.next() {
                    Some(Ok(t)) if t.tag == TAG_INTEGER => uint(t.value)?,
                    Some(Err(e)) => return Err(e.into()),
                    _ => return Err(TnAuthListError::BadEntry("range without count")),
                };
                if fields.next().is_some() {
                    return Err(TnAuthListError::BadEntry("range has extra fields"));
                }
                if !is_tn(&start) {
                    return Err(TnAuthListError::BadEntry("range start is not a number"));
                }
                TnEntry::Range { start, count }
            }
            TAG_EXPLICIT_2 => {
                let tn = ia5(expect_single(entry.value, TAG_IA5_STRING)?)?;
                if !is_tn(&tn) {
                    return Err(TnAuthListError::BadEntry("one is not a number"));
                }
                TnEntry::One(tn)
            }
            TAG_IMPLICIT_0 | TAG_IMPLICIT_2 => return Err(TnAuthListError::ImplicitTags),
            other => return Err(TnAuthListError::UnknownEntry(other)),
        };
        out.push(parsed);
    }
    if out.is_empty() {
        return Err(TnAuthListError::Empty);
    }
    Ok(out)
}

fn is_tn(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_digit() || c == b'*' || c == b'#')
}

/// Encodes a TNAuthList extension value with explicit tags, as real SHAKEN certificates do.
pub fn encode_tn_auth_list(entries: &[TnEntry]) -> Vec<u8> {
    let mut content = Vec::new();
    for e in entries {
        let encoded = match e {
            TnEntry::Spc(spc) => tlv(TAG_EXPLICIT_0, &tlv(TAG_IA5_STRING, spc.as_bytes())),
            TnEntry::Range { start, count } => {
                let mut seq = tlv(TAG_IA5_STRING, start.as_bytes());
                seq.extend_from_slice(&der::uint_der(*count));
                tlv(TAG_EXPLICIT_1, &tlv(TAG_SEQUENCE, &seq))
            }
            TnEntry::One(tn) => tlv(TAG_EXPLICIT_2, &tlv(TAG_IA5_STRING, tn.as_bytes())),
        };
        content.extend_from_slice(&encoded);
    }
    tlv(TAG_SEQUENCE, &content)
}

// ---------------------------------------------------------------------------------------------
// JWTClaimConstraints

/// RFC 8226 §8 JWTClaimConstraints: claims a PASSporT signed with this certificate must include,
/// and values some claims may take (e.g. `attest` limited to `["B","C"]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JwtClaimConstraints {
    pub must_include: Vec<String>,
    pub permitted_values: Vec<(String, Vec<String>)>,
}

/// How a PASSporT breaks its certificate's JWTClaimConstraints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimConstraintViolation {
    #[error("the certificate requires claim {0}, which the PASSporT lacks")]
    MissingClaim(String),
    #[error("the certificate does not permit {claim}={value}")]
    NotPermitted { claim: String, value: String },
}

impl JwtClaimConstraints {
    /// Parses the extension value. Both explicit and implicit tagging of the two optional
    /// fields are read, since a constraint is only ever a restriction on the signer.
    pub fn parse(value: &[u8]) -> Result<JwtClaimConstraints, DerError> {
        let outer = expect_single(value, TAG_SEQUENCE)?;
        let mut out = JwtClaimConstraints::default();
        for field in elements(outer) {
            let field = field?;
            match field.tag {
                TAG_EXPLICIT_0 => {
                    let names = match read_single(field.value) {
                        Ok(t) if t.tag == TAG_SEQUENCE => t.value,
                        _ => field.value,
                    };
                    for name in elements(names) {
                        let name = name?;
                        out.must_include.push(claim_name(name.tag, name.value)?);
                    }
                }
                TAG_EXPLICIT_1 => {
                    // Explicit: [1] { SEQUENCE { SEQUENCE {claim, SEQUENCE values} ... } }.
                    let list = match read_single(field.value) {
                        Ok(t)
                            if t.tag == TAG_SEQUENCE && t.value.first() == Some(&TAG_SEQUENCE) =>
                        {
                            t.value
                        }
                        _ => field.value,
                    };
                    for pv in elements(list) {
                        let pv = pv?;
                        if pv.tag != TAG_SEQUENCE {
                            return Err(DerError::UnexpectedTag {
                                expected: TAG_SEQUENCE,
                                found: pv.tag,
                            });
                        }
                        let mut parts = elements(pv.value);
                        let claim = match parts.next() {
                            Some(Ok(t)) => claim_name(t.tag, t.value)?,
                            Some(Err(e)) => return Err(e),
                            None => return Err(DerError::Truncated),
                        };
                        let values = match parts.next() {
                            Some(Ok(t)) if t.tag == TAG_SEQUENCE => t.value,
                            Some(Ok(t)) => {
                                return Err(DerError::UnexpectedTag {
                                    expected: TAG_SEQUENCE,
                                    found: t.tag,
                                })
                            }
                            Some(Err(e)) => return Err(e),
                            None => return Err(DerError::Truncated),
                        };
                        let mut permitted = Vec::new();
                        for v in elements(values) {
                            let v = v?;
                            permitted.push(match v.tag {
                                TAG_UTF8_STRING => utf8(v.value)?,
                                TAG_IA5_STRING => ia5(v.value)?,
                                found => {
                                    return Err(DerError::UnexpectedTag {
                                        expected: TAG_UTF8_STRING,
                                        found,
                                    })
                                }
                            });
                        }
                        out.permitted_values.push((claim, permitted));
                    }
                }
                found => {
                    return Err(DerError::UnexpectedTag {
                        expected: TAG_EXPLICIT_0,
                        found,
                    })
                }
            }
        }
        Ok(out)
    }

    /// Encodes with explicit tags (RFC 8226's module default).
    pub fn encode(&self) -> Vec<u8> {
        let mut content = Vec::new();
        if !self.must_include.is_empty() {
            let names: Vec<u8> = self
                .must_include
                .iter()
                .flat_map(|n| tlv(TAG_IA5_STRING, n.as_bytes()))
                .collect();
            content.extend_from_slice(&tlv(TAG_EXPLICIT_0, &tlv(TAG_SEQUENCE, &names)));
        }
        if !self.permitted_values.is_empty() {
            let mut list = Vec::new();
            for (claim, values) in &self.permitted_values {
                let vals: Vec<u8> = values
                    .iter()
                    .flat_map(|v| tlv(TAG_UTF8_STRING, v.as_bytes()))
                    .collect();
                let mut pv = tlv(TAG_IA5_STRING, claim.as_bytes());
                pv.extend_from_slice(&tlv(TAG_SEQUENCE, &vals));
                list.extend_from_slice(&tlv(TAG_SEQUENCE, &pv));
            }
            content.extend_from_slice(&tlv(TAG_EXPLICIT_1, &tlv(TAG_SEQUENCE, &list)));
        }
        tlv(TAG_SEQUENCE, &content)
    }

    /// Checks a PASSporT's claims (a JSON object) against the constraints. A constrained claim
    /// that is a string must be one of the permitted values; any other JSON value is compared
    /// through its canonical serialization.
    pub fn check(&self, claims: &Value) -> Result<(), ClaimConstraintViolation> {
        for name in &self.must_include {
            if claims.get(name).is_none() {
                return Err(ClaimConstraintViolation::MissingClaim(name.clone()));
            }
        }
        for (claim, permitted) in &self.permitted_values {
            let Some(v) = claims.get(claim) else { continue };
            let text = match v {
                Value::String(s) => s.clone(),
                other => super::passport::canonical_json(other),
            };
            if !permitted.contains(&text) {
                return Err(ClaimConstraintViolation::NotPermitted {
                    claim: claim.clone(),
                    value: text,
                });
            }
        }
        Ok(())
    }
}

fn claim_name(tag: u8, value: &[u8]) -> Result<String, DerError> {
    if tag != TAG_IA5_STRING {
        return Err(DerError::UnexpectedTag {
            expected: TAG_IA5_STRING,
            found: tag,
        });
    }
    ia5(value)
}

// ---------------------------------------------------------------------------------------------
// The leaf certificate and its profile

/// Why a certificate could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("certificate is not valid DER X.509: {0}")]
    Parse(String),
    #[error("trailing bytes after the certificate")]
    TrailingData,
    #[error("malformed PEM: {0}")]
    Pem(String),
    #[error("no certificate in the PEM input")]
    NoCertificate,
    #[error("trust anchor not usable: {0}")]
    BadTrustAnchor(String),
}

/// The key of a certificate, as far as the profile cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafKey {
    /// Uncompressed P-256 point, 65 bytes.
    P256(Vec<u8>),
    P384,
    Rsa,
    /// Anything else, by algorithm (and curve) OID.
    Other(String),
}

/// What the verifier needs from an STI certificate, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StiCertificate {
    der: Vec<u8>,
    /// Subject common name, when present and a string.
    pub subject_cn: Option<String>,
    /// Serial number, big-endian, without sign padding.
    pub serial: Vec<u8>,
    /// Validity, seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub key: LeafKey,
    /// Signature algorithm OID of the certificate itself.
    pub signature_algorithm: String,
    /// `(critical, cA)` of BasicConstraints.
    pub basic_constraints: Option<(bool, bool)>,
    /// `(critical, digitalSignature)` of KeyUsage.
    pub key_usage: Option<(bool, bool)>,
    /// The TNAuthList extension: `None` when absent.
    pub tn_auth_list: Option<Result<Vec<TnEntry>, TnAuthListError>>,
    pub jwt_claim_constraints: Option<Result<JwtClaimConstraints, DerError>>,
    /// Certificate policy OIDs; `None` when the extension is absent.
    pub policies: Option<Vec<String>>,
    /// Number of CRL distribution points.
    pub crl_distribution_points: usize,
}

/// One finding of the leaf profile check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileIssue {
    // Hard (437).
    #[error("no TNAuthList extension")]
    NoTnAuthList,
    #[error("{0}")]
    TnAuthList(TnAuthListError),
    #[error("TNAuthList has {0} SPC entries; exactly one is required")]
    SpcCount(usize),
    #[error("the leaf is a CA certificate")]
    CaCertificate,
    #[error("the leaf key is {0}, not P-256")]
    KeyNotP256(String),
    #[error("KeyUsage does not allow digitalSignature")]
    NoDigitalSignature,
    #[error("JWTClaimConstraints is malformed: {0}")]
    JwtClaimConstraintsMalformed(DerError),
    #[error("{0}")]
    ClaimConstraint(ClaimConstraintViolation),
    // Soft (logged).
    #[error("subject CN is \"SHAKEN\" without the SPC")]
    CnWithoutSpc,
    #[error("subject CN {cn:?} is not \"SHAKEN {spc}\"")]
    CnMismatch { cn: String, spc: String },
    #[error("no certificate policies extension")]
    NoCertificatePolicy,
    #[error("no SHAKEN certificate policy among {0:?}")]
    NoShakenPolicy(Vec<String>),
    #[error("serial number has {0} bits, fewer than 64")]
    SerialTooShort(usize),
    #[error("no KeyUsage extension")]
    NoKeyUsage,
    #[error("KeyUsage is not critical")]
    KeyUsageNotCritical,
    #[error("no BasicConstraints extension")]
    NoBasicConstraints,
    #[error("BasicConstraints is not critical")]
    BasicConstraintsNotCritical,
    #[error("{0} CRL distribution points, expected one")]
    CrlDistributionPoints(usize),
    #[error("certificate signature algorithm {0} is not ecdsa-with-SHA256")]
    SignatureAlgorithm(String),
}

/// Result of the leaf profile check: hard issues make the credential unusable (437), soft
/// ones are only worth a log line (production certificates commonly have them).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileReport {
    pub hard: Vec<ProfileIssue>,
    pub soft: Vec<ProfileIssue>,
}

impl StiCertificate {
    /// Parses a DER certificate. Fails only when it is not X.509 at all; profile problems are
    /// reported by [`StiCertificate::profile`].
    pub fn from_der(der: &[u8]) -> Result<StiCertificate, CertError> {
        let (rest, x509) =
            X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::TrailingData);
        }
        let subject_cn = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let serial = strip_zeros(x509.raw_serial()).to_vec();
        let validity = x509.validity();
        let spki = x509.public_key();
        let key = match spki.algorithm.algorithm.to_id_string().as_str() {
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                let point = spki.subject_public_key.data.to_vec();
                match curve.as_str() {
                    OID_P256 if point.len() == 65 && point[0] == 4 => LeafKey::P256(point),
                    OID_P384 => LeafKey::P384,
                    _ => LeafKey::Other(format!("EC curve {curve}")),
                }
            }
            "1.2.840.113549.1.1.1" => LeafKey::Rsa,
            other => LeafKey::Other(other.to_string()),
        };
        let mut out = StiCertificate {
            der: der.to_vec(),
            subject_cn,
            serial,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            key,
            signature_algorithm: x509.signature_algorithm.algorithm.to_id_string(),
            basic_constraints: None,
            key_usage: None,
            tn_auth_list: None,
            jwt_claim_constraints: None,
            policies: None,
            crl_distribution_points: 0,
        };
        for ext in x509.extensions() {
            let oid = ext.oid.to_id_string();
            match oid.as_str() {
                OID_TN_AUTH_LIST => out.tn_auth_list = Some(parse_tn_auth_list(ext.value)),
                OID_JWT_CLAIM_CONSTRAINTS => {
                    out.jwt_claim_constraints = Some(JwtClaimConstraints::parse(ext.value))
                }
                _ => match ext.parsed_extension() {
                    ParsedExtension::BasicConstraints(bc) => {
                        out.basic_constraints = Some((ext.critical, bc.ca))
                    }
                    ParsedExtension::KeyUsage(ku) => {
                        out.key_usage = Some((ext.critical, ku.digital_signature()))
                    }
                    ParsedExtension::CertificatePolicies(p) => {
                        out.policies =
                            Some(p.iter().map(|pi| pi.policy_id.to_id_string()).collect())
                    }
                    ParsedExtension::CRLDistributionPoints(dps) => {
                        out.crl_distribution_points = dps.points.len()
                    }
                    _ => {}
                },
            }
        }
        Ok(out)
    }

    /// The certificate as received.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The SPC, when the TNAuthList is valid and holds exactly one.
    pub fn spc(&self) -> Option<&str> {
        let Some(Ok(entries)) = &self.tn_auth_list else {
            return None;
        };
        let mut spcs = entries.iter().filter_map(|e| match e {
            TnEntry::Spc(s) => Some(s.as_str()),
            _ => None,
        });
        let first = spcs.next()?;
        spcs.next().is_none().then_some(first)
    }

    /// The P-256 public point, when the key is one.
    pub fn public_point(&self) -> Option<&[u8]> {
        match &self.key {
            LeafKey::P256(p) => Some(p),
            _ => None,
        }
    }

    /// Number of significant bits of the serial number.
    pub fn serial_bits(&self) -> usize {
        match self.serial.first() {
            None => 0,
            Some(first) => (self.serial.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        }
    }

    /// The ATIS-1000080 §6.4.1 leaf profile, split into hard and soft findings (STIR-12).
    pub fn profile(&self) -> ProfileReport {
        let mut r = ProfileReport::default();
        let mut spc = None;
        match &self.tn_auth_list {
            None => r.hard.push(ProfileIssue::NoTnAuthList),
            Some(Err(e)) => r.hard.push(ProfileIssue::TnAuthList(e.clone())),
            Some(Ok(entries)) => {
                let spcs: Vec<&str> = entries
                    .iter()
                    .filter_map(|e| match e {
                        TnEntry::Spc(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect();
                if spcs.len() == 1 {
                    spc = Some(spcs[0]);
                } else {
                    r.hard.push(ProfileIssue::SpcCount(spcs.len()));
                }
            }
        }
        match self.basic_constraints {
            Some((_, true)) => r.hard.push(ProfileIssue::CaCertificate),
            Some((false, false)) => r.soft.push(ProfileIssue::BasicConstraintsNotCritical),
            Some((true, false)) => {}
            None => r.soft.push(ProfileIssue::NoBasicConstraints),
        }
        match &self.key {
            LeafKey::P256(_) => {}
            LeafKey::P384 => r.hard.push(ProfileIssue::KeyNotP256("P-384".into())),
            LeafKey::Rsa => r.hard.push(ProfileIssue::KeyNotP256("RSA".into())),
            LeafKey::Other(o) => r.hard.push(ProfileIssue::KeyNotP256(o.clone())),
        }
        match self.key_usage {
            Some((_, false)) => r.hard.push(ProfileIssue::NoDigitalSignature),
            Some((false, true)) => r.soft.push(ProfileIssue::KeyUsageNotCritical),
            Some((true, true)) => {}
            None => r.soft.push(ProfileIssue::NoKeyUsage),
        }
        if let Some(Err(e)) = &self.jwt_claim_constraints {
            r.hard
                .push(ProfileIssue::JwtClaimConstraintsMalformed(e.clone()));
        }
        if let Some(spc) = spc {
            match self.subject_cn.as_deref() {
                Some("SHAKEN") => r.soft.push(ProfileIssue::CnWithoutSpc),
                Some(cn) if cn == format!("SHAKEN {spc}") => {}
                cn => r.soft.push(ProfileIssue::CnMismatch {
                    cn: cn.unwrap_or("").to_string(),
                    spc: spc.to_string(),
                }),
            }
        }
        match &self.policies {
            None => r.soft.push(ProfileIssue::NoCertificatePolicy),
            Some(p) if !p.iter().any(|o| SHAKEN_POLICY_OIDS.contains(&o.as_str())) => {
                r.soft.push(ProfileIssue::NoShakenPolicy(p.clone()))
            }
            Some(_) => {}
        }
        let bits = self.serial_bits();
        if bits < 64 {
            r.soft.push(ProfileIssue::SerialTooShort(bits));
        }
        if self.crl_distribution_points != 1 {
            r.soft.push(ProfileIssue::CrlDistributionPoints(
                self.crl_distribution_points,
            ));
        }
        if self.signature_algorithm != OID_ECDSA_SHA256 {
            r.soft.push(ProfileIssue::SignatureAlgorithm(
                self.signature_algorithm.clone(),
            ));
        }
        r
    }

    /// Checks the certificate's JWTClaimConstraints, if any, against PASSporT claims.
    pub fn check_claim_constraints(&self, claims: &Value) -> Result<(), ProfileIssue> {
        match &self.jwt_claim_constraints {
            None => Ok(()),
            Some(Err(e)) => Err(ProfileIssue::JwtClaimConstraintsMalformed(e.clone())),
            Some(Ok(c)) => c.check(claims).map_err(ProfileIssue::ClaimConstraint),
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let skip = b.iter().take_while(|x| **x == 0).count();
    &b[skip..]
}

// ---------------------------------------------------------------------------------------------
// PEM helpers

/// Every certificate of a PEM bundle, in order, as DER.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------------------------
// Chain validation

/// Why a chain does not lead to a trusted STI-CA (all 437).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("the certificate chain is empty")]
    Empty,
    #[error("the chain does not lead to a trusted STI-CA (unknown root or missing intermediate)")]
    UnknownIssuer,
    #[error("a certificate in the chain has expired")]
    Expired,
    #[error("a certificate in the chain is not valid yet")]
    NotYetValid,
    #[error("a CA certificate is used as the signing certificate")]
    CaUsedAsEndEntity,
    #[error("a certificate has a critical extension the verifier does not know")]
    UnsupportedCriticalExtension,
    #[error("a certificate signature in the chain does not verify")]
    BadSignature,
    #[error("chain validation failed: {0}")]
    Other(String),
}

impl From<webpki::Error> for ChainError {
    fn from(e: webpki::Error) -> Self {
        use webpki::Error as E;
        match e {
            E::UnknownIssuer => ChainError::UnknownIssuer,
            E::CertExpired { .. } => ChainError::Expired,
            E::CertNotValidYet { .. } => ChainError::NotYetValid,
            E::CaUsedAsEndEntity => ChainError::CaUsedAsEndEntity,
            E::UnsupportedCriticalExtension => ChainError::UnsupportedCriticalExtension,
            E::InvalidSignatureForPublicKey => ChainError::BadSignature,
            other => ChainError::Other(format!("{other:?}")),
        }
    }
}

/// SHAKEN leaves carry no EKU; webpki's stock `KeyUsage` validators are for TLS, so any (or
/// no) EKU is accepted here.
struct AnyEku;

impl ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, _iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

/// Signature algorithms accepted on chain certificates: ECDSA only, as in the SHAKEN PKI.
static CHAIN_ALGS: &[&dyn rustls::pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
];

/// The STI-PA list of trusted STI-CA certificates.
#[derive(Debug, Clone)]
pub struct TrustStore {
    anchors: Vec<TrustAnchor<'static>>,
}

/// A chain that validated: serials (big-endian, no sign padding) of the leaf and of the
/// intermediates on the path, for the revocation check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedChain {
    pub path_serials: Vec<Vec<u8>>,
}

impl TrustStore {
    /// Trust anchors from DER certificates.
    pub fn from_der_certs<I, C>(certs: I) -> Result<TrustStore, CertError>
    where
        I: IntoIterator<Item = C>,
        C: AsRef<[u8]>,
    {
        let mut anchors = Vec::new();
        for c in certs {
            let der = CertificateDer::from(c.as_ref());
            let anchor = webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| CertError::BadTrustAnchor(format!("{e:?}")))?;
            anchors.push(anchor.to_owned());
        }
        Ok(TrustStore { anchors })
    }

    /// Trust anchors from a PEM bundle (at least one certificate).
    pub fn from_pem(pem: &[u8]) -> Result<TrustStore, CertError> {
        TrustStore::from_der_certs(pem_certificates(pem)?)
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Validates `chain` (leaf first, then any intermediates from the `x5u` bundle, in any
    /// order) to one of the anchors at `now_unix`.
    pub fn validate<D: AsRef<[u8]>>(
        &self,
        chain: &[D],
        now_unix: u64,
    ) -> Result<ValidatedChain, ChainError> {
        let (leaf, rest) = chain.split_first().ok_or(ChainError::Empty)?;
        let leaf = leaf.as_ref();
        let leaf_der = CertificateDer::from(leaf);
        let ee = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|e| ChainError::Other(format!("leaf: {e:?}")))?;
        let intermediates: Vec<CertificateDer<'_>> = rest
            .iter()
            .map(|c| CertificateDer::from(c.as_ref()))
            .collect();
        let time = UnixTime::since_unix_epoch(Duration::from_secs(now_unix));
        let path = ee.verify_for_usage(
            CHAIN_ALGS,
            &self.anchors,
            &intermediates,
            time,
            AnyEku,
            None,
            None,
        )?;
        let mut path_serials = vec![strip_zeros(ee_serial(leaf)).to_vec()];
        for cert in path.intermediate_certificates() {
            path_serials.push(strip_zeros(cert.serial()).to_vec());
        }
        Ok(ValidatedChain { path_serials })
    }
}

fn ee_serial(der: &[u8]) -> &[u8] {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.raw_serial())
        .unwrap_or(&[])
}

// ---------------------------------------------------------------------------------------------
// STI-PA CRL

/// Why a CRL could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error("CRL is not valid DER: {0}")]
    Parse(String),
    #[error("CRL signer certificate: {0}")]
    Signer(CertError),
    #[error("the CRL issuer is not the configured CRL signer")]
    IssuerMismatch,
    #[error("the CRL signer certificate's KeyUsage does not allow cRLSign")]
    SignerNotCrlSigner,
    #[error("CRL signature algorithm {0} is not supported")]
    UnsupportedAlgorithm(String),
    #[error("the CRL signature does not verify with the signer's key")]
    BadSignature,
    #[error("malformed PEM: {0}")]
    Pem(String),
    #[error("no CRL in the PEM input")]
    NoCrl,
}

/// An STI-PA CRL whose signature has been checked against the configured CRL signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StiCrl {
    revoked: HashSet<Vec<u8>>,
    this_update: i64,
    next_update: Option<i64>,
}

/// Whether a CRL covers a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlFreshness {
    Current,
    /// `now` is past nextUpdate.
    Expired,
    /// `now` is before thisUpdate.
    NotYetValid,
}

impl StiCrl {
    /// Parses a DER CRL and checks that `signer_der` (the STI-PA CRL signer certificate, which
    /// is trusted as configured) issued and signed it.
    pub fn from_der(crl_der: &[u8], signer_der: &[u8]) -> Result<StiCrl, CrlError> {
        let (_, crl) =
            x509_parser::parse_x509_crl(crl_der).map_err(|e| CrlError::Parse(e.to_string()))?;
        let (_, signer) = X509Certificate::from_der(signer_der)
            .map_err(|e| CrlError::Signer(CertError::Parse(e.to_string())))?;
        if crl.issuer().as_raw() != signer.subject().as_raw() {
            return Err(CrlError::IssuerMismatch);
        }
        if let Ok(Some(ku)) = signer.key_usage() {
            if !ku.value.crl_sign() {
                return Err(CrlError::SignerNotCrlSigner);
            }
        }
        let sig_alg = crl.signature_algorithm.algorithm.to_id_string();
        let spki = signer.public_key();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string())
            .unwrap_or_default();
        use ring::signature as rs;
        let alg: &dyn rs::VerificationAlgorithm = match (sig_alg.as_str(), curve.as_str()) {
            (OID_ECDSA_SHA256, OID_P256) => &rs::ECDSA_P256_SHA256_ASN1,
            (OID_ECDSA_SHA384, OID_P256) => &rs::ECDSA_P256_SHA384_ASN1,
            (OID_ECDSA_SHA256, OID_P384) => &rs::ECDSA_P384_SHA256_ASN1,
            (OID_ECDSA_SHA384, OID_P384) => &rs::ECDSA_P384_SHA384_ASN1,
            (OID_RSA_SHA256, _) => &rs::RSA_PKCS1_2048_8192_SHA256,
            (OID_RSA_SHA384, _) => &rs::RSA_PKCS1_2048_8192_SHA384,
            (OID_RSA_SHA512, _) => &rs::RSA_PKCS1_2048_8192_SHA512,
            _ => return Err(CrlError::UnsupportedAlgorithm(sig_alg)),
        };
        rs::UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
            .verify(crl.tbs_cert_list.as_ref(), &crl.signature_value.data)
            .map_err(|_| CrlError::BadSignature)?;
        let revoked = crl
            .iter_revoked_certificates()
            .map(|r| strip_zeros(r.raw_serial()).to_vec())
            .collect();
        Ok(StiCrl {
            revoked,
            this_update: crl.last_update().timestamp(),
            next_update: crl.next_update().map(|t| t.timestamp()),
        })
    }

    /// Like [`StiCrl::from_der`] with PEM input (`X509 CRL` and `CERTIFICATE` blocks).
    pub fn from_pem(crl_pem: &[u8], signer_pem: &[u8]) -> Result<StiCrl, CrlError> {
        let crl = rustls_pemfile::crls(&mut &crl_pem[..])
            .next()
            .ok_or(CrlError::NoCrl)?
            .map_err(|e| CrlError::Pem(e.to_string()))?;
        let signer = pem_certificates(signer_pem).map_err(CrlError::Signer)?;
        StiCrl::from_der(crl.as_ref(), &signer[0])
    }

    /// Whether `serial` (big-endian; sign padding ignored) is listed.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.contains(strip_zeros(serial))
    }

    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }

    pub fn freshness(&self, now_unix: u64) -> CrlFreshness {
        let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
        if now < self.this_update {
            CrlFreshness::NotYetValid
        } else if self.next_update.is_some_and(|n| now > n) {
            CrlFreshness::Expired
        } else {
            CrlFreshness::Current
        }
    }
}

/// What to do with a CRL that does not cover the current time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationPolicy {
    /// Use it anyway and warn (its revocations still count).
    #[default]
    Soft,
    /// Refuse every credential (437) until a current CRL is loaded.
    Hard,
}

/// Revocation outcome that stops verification (437).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    #[error("the certificate (serial {0}) is revoked by the STI-PA CRL")]
    Revoked(String),
    #[error("the STI-PA CRL is {0:?} and revocation policy is hard")]
    CrlNotCurrent(CrlFreshness),
}

/// A revocation finding that does not stop verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationWarning {
    #[error("the STI-PA CRL is {0:?}; used anyway under the soft revocation policy")]
    CrlNotCurrent(CrlFreshness),
}

/// Checks every serial of a validated path against every CRL.
pub fn check_revocation(
    chain: &ValidatedChain,
    crls: &[StiCrl],
    now_unix: u64,
    policy: RevocationPolicy,
) -> Result<Vec<RevocationWarning>, RevocationError> {
    let mut warnings = Vec::new();
    for crl in crls {
        let fresh = crl.freshness(now_unix);
        if fresh != CrlFreshness::Current {
            match policy {
                RevocationPolicy::Hard => return Err(RevocationError::CrlNotCurrent(fresh)),
                RevocationPolicy::Soft => warnings.push(RevocationWarning::CrlNotCurrent(fresh)),
            }
        }
        for serial in &chain.path_serials {
            if crl.is_revoked(serial) {
                return Err(RevocationError::Revoked(hex(serial)));
            }
        }
    }
    Ok(warnings)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl fmt::Display for CrlFreshness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CrlFreshness::Current => "current",
            CrlFreshness::Expired => "expired",
            CrlFreshness::NotYetValid => "not yet valid",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stir::testpki::{LeafKeyType, LeafSpec, TestPki};

    const NOW: u64 = 1_750_000_000;
    const COMCAST_DER: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/stir/comcast_shaken_leaf.der"
    ));
    const SP_PEM: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/stir/libstirshaken_sp.pem"
    ));
    const CA_PEM: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/stir/libstirshaken_ca.pem"
    ));

    #[test]
    fn tn_auth_list_explicit_tags_round_trip() {
        // The Comcast production value, byte for byte.
        let comcast = [0x30, 0x08, 0xa0, 0x06, 0x16, 0x04, b'3', b'1', b'8', b'J'];
        assert_eq!(
            parse_tn_auth_list(&comcast).unwrap(),
            vec![TnEntry::Spc("318J".into())]
        );
        assert_eq!(
            encode_tn_auth_list(&[TnEntry::Spc("318J".into())]),
            comcast.to_vec()
        );
        let all = vec![
            TnEntry::Spc("1234".into()),
            TnEntry::Range {
                start: "12155550000".into(),
                count: 300,
            },
            TnEntry::One("12155551212".into()),
        ];
        assert_eq!(parse_tn_auth_list(&encode_tn_auth_list(&all)).unwrap(), all);
    }

    #[test]
    fn tn_auth_list_negative_forms() {
        // libstirshaken sp.pem: an IA5String URL.
        let url = tlv(TAG_IA5_STRING, b"http://190.102.98.199/sti-ca/x/1");
        assert!(matches!(
            parse_tn_auth_list(&url),
            Err(TnAuthListError::Ia5StringInsteadOfSequence(_))
        ));
        // rvoip-style implicit tags.
        let implicit_spc = tlv(TAG_SEQUENCE, &tlv(0x80, b"1234"));
        assert_eq!(
            parse_tn_auth_list(&implicit_spc),
            Err(TnAuthListError::ImplicitTags)
        );
        let implicit_one = tlv(TAG_SEQUENCE, &tlv(0x82, b"12155551212"));
        assert_eq!(
            parse_tn_auth_list(&implicit_one),
            Err(TnAuthListError::ImplicitTags)
        );
        let mut range = tlv(TAG_IA5_STRING, b"1215555");
        range.extend_from_slice(&der::uint_der(10));
        let implicit_range = tlv(TAG_SEQUENCE, &tlv(0xA1, &range));
        assert_eq!(
            parse_tn_auth_list(&implicit_range),
            Err(TnAuthListError::ImplicitTags)
        );
        assert_eq!(
            parse_tn_auth_list(&tlv(TAG_SEQUENCE, &[])),
            Err(TnAuthListError::Empty)
        );
        assert_eq!(
            parse_tn_auth_list(&tlv(TAG_SEQUENCE, &tlv(0xA5, &[]))),
            Err(TnAuthListError::UnknownEntry(0xA5))
        );
        assert!(matches!(
            parse_tn_auth_list(&[0x30, 0x08, 0xa0]),
            Err(TnAuthListError::Der(_))
        ));
    }

    #[test]
    fn jwt_claim_constraints_round_trip_and_check() {
        let c = JwtClaimConstraints {
            must_include: vec!["origid".into()],
            permitted_values: vec![("attest".into(), vec!["B".into(), "C".into()])],
        };
        let parsed = JwtClaimConstraints::parse(&c.encode()).unwrap();
        assert_eq!(parsed, c);
        let claims_b = serde_json::json!({"attest":"B","origid":"x"});
        let claims_a = serde_json::json!({"attest":"A","origid":"x"});
        assert_eq!(c.check(&claims_b), Ok(()));
        assert_eq!(
            c.check(&claims_a),
            Err(ClaimConstraintViolation::NotPermitted {
                claim: "attest".into(),
                value: "A".into()
            })
        );
        assert_eq!(
            c.check(&serde_json::json!({"attest":"B"})),
            Err(ClaimConstraintViolation::MissingClaim("origid".into()))
        );
        // Implicitly tagged permittedValues is read as well.
        let mut pv = tlv(TAG_IA5_STRING, b"attest");
        pv.extend_from_slice(&tlv(TAG_SEQUENCE, &tlv(TAG_UTF8_STRING, b"C")));
        let implicit = tlv(TAG_SEQUENCE, &tlv(0xA1, &tlv(TAG_SEQUENCE, &pv)));
        let parsed = JwtClaimConstraints::parse(&implicit).unwrap();
        assert_eq!(
            parsed.permitted_values,
            vec![("attest".to_string(), vec!["C".to_string()])]
        );
        assert!(JwtClaimConstraints::parse(&[0x30, 0x03, 0xA7, 0x01, 0x00]).is_err());
    }

    /// STIR-12: the real Comcast leaf parses to SPC 318J with explicit tags; its profile has no
    /// hard problems and the soft ones the lint reports name (CN without SPC, no CP, 63-bit
    /// serial).
    #[test]
    fn comcast_leaf_parses_to_spc_318j() {
        let c = StiCertificate::from_der(COMCAST_DER).unwrap();
        assert_eq!(c.spc(), Some("318J"));
        assert_eq!(c.subject_cn.as_deref(), Some("SHAKEN"));
        assert_eq!(c.serial_bits(), 63);
        assert!(matches!(c.key, LeafKey::P256(_)));
        assert_eq!(c.key_usage, Some((true, true)));
        assert_eq!(c.basic_constraints, Some((true, false)));
        assert_eq!(c.crl_distribution_points, 1);
        let p = c.profile();
        assert!(p.hard.is_empty(), "{:?}", p.hard);
        assert!(p.soft.contains(&ProfileIssue::CnWithoutSpc));
        assert!(p.soft.contains(&ProfileIssue::NoCertificatePolicy));
        assert!(p.soft.contains(&ProfileIssue::SerialTooShort(63)));
    }

    /// STIR-10: the Comcast leaf expired in October 2023; validation at any later time fails
    /// on time before the (absent) issuer is even looked for.
    #[test]
    fn comcast_leaf_is_expired() {
        let pki = TestPki::generate("1234", NOW).unwrap();
        let trust = TrustStore::from_der_certs([&pki.root.der]).unwrap();
        let chain = vec![COMCAST_DER.to_vec()];
        assert_eq!(trust.validate(&chain, NOW), Err(ChainError::Expired));
        // 2023-09-20: inside its validity, so the missing Comcast CA is what fails.
        assert_eq!(
            trust.validate(&chain, 1_695_168_000),
            Err(ChainError::UnknownIssuer)
        );
    }

    /// STIR-12: libstirshaken's sp.pem has a TNAuthList IA5String: a hard profile failure.
    #[test]
    fn libstirshaken_sp_pem_fails_the_profile() {
        let der = pem_certificates(SP_PEM).unwrap().remove(0);
        let c = StiCertificate::from_der(&der).unwrap();
        let p = c.profile();
        assert!(
            matches!(
                p.hard.as_slice(),
                [ProfileIssue::TnAuthList(TnAuthListError::Ia5StringInsteadOfSequence(url))]
                    if url.contains("authority-over-the-number-check")
            ),
            "{:?}",
            p.hard
        );
        assert!(p.soft.contains(&ProfileIssue::NoKeyUsage));
        assert!(p.soft.contains(&ProfileIssue::NoBasicConstraints));
        assert!(p.soft.contains(&ProfileIssue::SerialTooShort(0)));
        assert_eq!(c.spc(), None);
    }

    #[test]
    fn libstirshaken_sp_pem_chains_to_its_ca() {
        let trust = TrustStore::from_pem(CA_PEM).unwrap();
        let chain = pem_certificates(SP_PEM).unwrap();
        // iat of the README PASSporT + 5 s.
        let r = trust.validate(&chain, 1_616_442_528);
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn leaf_profile_variants() {
        let pki = TestPki::generate("1234", NOW).unwrap();
        let base = LeafSpec::shaken("1234", NOW);
        let profile = |spec: &LeafSpec| {
            let leaf = pki.issue_leaf(spec).unwrap();
            StiCertificate::from_der(&leaf.der).unwrap().profile()
        };
        let good = profile(&base);
        assert!(good.hard.is_empty() && good.soft.is_empty(), "{good:?}");

        let hard = |spec: LeafSpec| profile(&spec).hard;
        assert_eq!(
            hard(LeafSpec {
                tn_auth_list: None,
                ..base.clone()
            }),
            vec![ProfileIssue::NoTnAuthList]
        );
        assert!(matches!(
            hard(LeafSpec {
                tn_auth_list: Some(tlv(TAG_IA5_STRING, b"http://x/1")),
                ..base.clone()
            })
            .as_slice(),
            [ProfileIssue::TnAuthList(
                TnAuthListError::Ia5StringInsteadOfSequence(_)
            )]
        ));
        assert_eq!(
            hard(LeafSpec {
                tn_auth_list: Some(tlv(TAG_SEQUENCE, &tlv(0x80, b"1234"))),
                ..base.clone()
            }),
            vec![ProfileIssue::TnAuthList(TnAuthListError::ImplicitTags)]
        );
        assert_eq!(
            hard(LeafSpec {
                tn_auth_list: Some(encode_tn_auth_list(&[
                    TnEntry::Spc("1234".into()),
                    TnEntry::Spc("5678".into())
                ])),
                ..base.clone()
            }),
            vec![ProfileIssue::SpcCount(2)]
        );
        assert!(hard(LeafSpec {
            is_ca: true,
            ..base.clone()
        })
        .contains(&ProfileIssue::CaCertificate));
        assert_eq!(
            hard(LeafSpec {
                key_type: LeafKeyType::P384,
                ..base.clone()
            }),
            vec![ProfileIssue::KeyNotP256("P-384".into())]
        );
        assert_eq!(
            hard(LeafSpec {
                digital_signature: false,
                ..base.clone()
            }),
            vec![ProfileIssue::NoDigitalSignature]
        );

        let soft = |spec: LeafSpec| {
            let p = profile(&spec);
            assert!(p.hard.is_empty(), "{:?}", p.hard);
            p.soft
        };
        assert_eq!(
            soft(LeafSpec {
                cn: "SHAKEN".into(),
                ..base.clone()
            }),
            vec![ProfileIssue::CnWithoutSpc]
        );
        assert_eq!(
            soft(LeafSpec {
                policies: vec![],
                ..base.clone()
            }),
            vec![ProfileIssue::NoCertificatePolicy]
        );
        assert_eq!(
            soft(LeafSpec {
                policies: vec![vec![2, 16, 840, 1, 114569, 1, 1, 1]],
                ..base.clone()
            }),
            vec![ProfileIssue::NoShakenPolicy(vec![
                "2.16.840.1.114569.1.1.1".into()
            ])]
        );
        assert_eq!(
            soft(LeafSpec {
                serial: Some(vec![0x57, 0x93, 0x0c, 0xf8, 0x40, 0xa7, 0x9c, 0x3b]),
                ..base.clone()
            }),
            vec![ProfileIssue::SerialTooShort(63)]
        );
    }

    #[test]
    fn chain_validation() {
        let pki = TestPki::generate("1234", NOW).unwrap();
        let other = TestPki::generate("1234", NOW).unwrap();
        let trust = TrustStore::from_pem(pki.root.pem.as_bytes()).unwrap();
        assert_eq!(trust.len(), 1);

        let ok = trust.validate(&pki.chain(), NOW).unwrap();
        assert_eq!(ok.path_serials.len(), 2);
        assert!(ok.path_serials.contains(&pki.intermediate.serial));

        // Intermediate delivered out of order behind an unrelated certificate.
        let mixed = vec![
            pki.leaf.der.clone(),
            other.intermediate.der.clone(),
            pki.intermediate.der.clone(),
        ];
        assert!(trust.validate(&mixed, NOW).is_ok());
        // Missing intermediate.
        assert_eq!(
            trust.validate(std::slice::from_ref(&pki.leaf.der), NOW),
            Err(ChainError::UnknownIssuer)
        );
        // Unknown root.
        assert_eq!(
            trust.validate(&other.chain(), NOW),
            Err(ChainError::UnknownIssuer)
        );
        assert_eq!(trust.validate::<Vec<u8>>(&[], NOW), Err(ChainError::Empty));
        // Expired and not yet valid.
        let expired = pki
            .issue_leaf(&LeafSpec {
                not_before: NOW - 40 * 86400,
                not_after: NOW - 10 * 86400,
                ..LeafSpec::shaken("1234", NOW)
            })
            .unwrap();
        assert_eq!(
            trust.validate(&pki.chain_for(&expired), NOW),
            Err(ChainError::Expired)
        );
        let future = pki
            .issue_leaf(&LeafSpec {
                not_before: NOW + 86400,
                not_after: NOW + 40 * 86400,
                ..LeafSpec::shaken("1234", NOW)
            })
            .unwrap();
        assert_eq!(
            trust.validate(&pki.chain_for(&future), NOW),
            Err(ChainError::NotYetValid)
        );
        // A CA as leaf.
        let ca_leaf = pki
            .issue_leaf(&LeafSpec {
                is_ca: true,
                ..LeafSpec::shaken("1234", NOW)
            })
            .unwrap();
        assert_eq!(
            trust.validate(&pki.chain_for(&ca_leaf), NOW),
            Err(ChainError::CaUsedAsEndEntity)
        );
    }

    #[test]
    fn crl_signed_by_separate_signer() {
        let pki = TestPki::generate("1234", NOW).unwrap();
        let crl_der = pki.crl(&[&pki.leaf.serial], NOW - 60, NOW + 86400).unwrap();
        let crl = StiCrl::from_der(&crl_der, &pki.crl_signer.der).unwrap();
        assert_eq!(crl.len(), 1);
        assert!(crl.is_revoked(&pki.leaf.serial));
        assert!(!crl.is_revoked(&pki.intermediate.serial));
        assert_eq!(crl.freshness(NOW), CrlFreshness::Current);
        assert_eq!(crl.freshness(NOW + 2 * 86400), CrlFreshness::Expired);
        assert_eq!(crl.freshness(NOW - 3600), CrlFreshness::NotYetValid);

        // Not the configured signer: the issuer name differs.
        assert_eq!(
            StiCrl::from_der(&crl_der, &pki.intermediate.der),
            Err(CrlError::IssuerMismatch)
        );
        // Tampered signature.
        let mut bad = crl_der.clone();
        let last = bad.len() - 3;
        bad[last] ^= 0x01;
        assert!(matches!(
            StiCrl::from_der(&bad, &pki.crl_signer.der),
            Err(CrlError::BadSignature) | Err(CrlError::Parse(_))
        ));
        // Same subject, another key: the signature check catches it.
        let impostor = pki.impostor_crl_signer().unwrap();
        assert_eq!(
            StiCrl::from_der(&crl_der, &impostor.der),
            Err(CrlError::BadSignature)
        );

        let chain = ValidatedChain {
            path_serials: vec![pki.leaf.serial.clone()],
        };
        assert!(matches!(
            check_revocation(
                &chain,
                std::slice::from_ref(&crl),
                NOW,
                RevocationPolicy::Soft
            ),
            Err(RevocationError::Revoked(_))
        ));
        let clean = StiCrl::from_der(
            &pki.crl(&[&pki.intermediate.serial], NOW - 60, NOW + 60)
                .unwrap(),
            &pki.crl_signer.der,
        )
        .unwrap();
        assert_eq!(
            check_revocation(
                &chain,
                std::slice::from_ref(&clean),
                NOW,
                RevocationPolicy::Hard
            ),
            Ok(vec![])
        );
        assert_eq!(
            check_revocation(
                &chain,
                std::slice::from_ref(&clean),
                NOW + 3600,
                RevocationPolicy::Soft
            ),
            Ok(vec![RevocationWarning::CrlNotCurrent(
                CrlFreshness::Expired
            )])
        );
        assert_eq!(
            check_revocation(&chain, &[clean], NOW + 3600, RevocationPolicy::Hard),
            Err(RevocationError::CrlNotCurrent(CrlFreshness::Expired))
        );
    }

    #[test]
    fn crl_pem_loading() {
        let pki = TestPki::generate("1234", NOW).unwrap();
        let der = pki.crl(&[], NOW, NOW + 60).unwrap();
        use base64::Engine as _;
        let pem = format!(
            "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let crl = StiCrl::from_pem(pem.as_bytes(), pki.crl_signer.pem.as_bytes()).unwrap();
        assert!(crl.is_empty());
        assert_eq!(
            StiCrl::from_pem(b"", pki.crl_signer.pem.as_bytes()),
            Err(CrlError::NoCrl)
        );
    }

    /// Random and truncated DER never panics any parser.
    #[test]
    fn junk_der_never_panics() {
        let pki = TestPki::generate("1234", NOW).unwrap();
        let trust = TrustStore::from_der_certs([&pki.root.der]).unwrap();
        let crl = pki.crl(&[&pki.leaf.serial], NOW, NOW + 60).unwrap();
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for src in [&pki.leaf.der, &crl, &COMCAST_DER.to_vec()] {
            for end in (0..src.len()).step_by(7) {
                inputs.push(src[..end].to_vec());
            }
            for i in (0..src.len()).step_by(11) {
                let mut m = src.clone();
                m[i] ^= 0xff;
                inputs.push(m);
            }
        }
        let mut state = 0x1234_5678_9abc_def1u64;
        for _ in 0..500 {
            let len = (state % 400) as usize;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                v.push((state & 0xff) as u8);
            }
            if let Some(b) = v.first_mut() {
                *b = 0x30;
            }
            inputs.push(v);
        }
        for input in &inputs {
            if let Ok(c) = StiCertificate::from_der(input) {
                let _ = c.profile();
                let _ = c.check_claim_constraints(&serde_json::json!({"attest":"A"}));
            }
            let _ = parse_tn_auth_list(input);
            let _ = JwtClaimConstraints::parse(input);
            let _ = StiCrl::from_der(input, &pki.crl_signer.der);
            let _ = StiCrl::from_der(&crl, input);
            let _ = TrustStore::from_der_certs([input]);
            let _ = trust.validate(std::slice::from_ref(input), NOW);
            let _ = trust.validate(&[pki.leaf.der.clone(), input.clone()], NOW);
            let _ = pem_certificates(input);
        }
    }
}
