//! STIR/SHAKEN caller-ID signing and verification (RFC 8224, 8225, 8226, 8588; ATIS-1000074),
//! sans-IO.
//!
//! The core (every module but [`fetch`] and [`repo`]) touches no network and reads no clock:
//! the current time is an argument, and the certificate chain an `x5u` points at is fetched by
//! the caller and handed in as a list of DER certificates, leaf first.
//!
//! - [`identity`]: the SIP `Identity` header (RFC 8224 §4), parse and format.
//! - [`passport`]: PASSporT (RFC 8225/8588): canonical JSON, ES256 signing and checking,
//!   telephone-number canonicalization.
//! - [`cert`]: STI certificates (RFC 8226, ATIS-1000080): TNAuthList, JWTClaimConstraints, the
//!   leaf profile, chain validation against the STI-PA trust list, the STI-PA CRL.
//! - [`verify`]: the verification service (ATIS-1000074 order: cheap local checks before any
//!   fetch), the replay cache and the authentication service's [`verify::sign`].
//! - [`testpki`]: rcgen-made STI hierarchies for tests and `riptide stir`.
//! - [`fetch`] and [`repo`] (the I/O side, kept apart from the above): the `x5u` fetcher with
//!   its SSRF guard and cache, and the HTTPS repository serving our own certificates.
//!
//! Verification is split so that an async driver can fetch between the two halves:
//! [`verify::Verifier::prepare`] parses and checks everything local and says which `x5u` URLs
//! are needed; [`verify::Verifier::finish`] takes the fetched chains and decides.

mod der;

pub mod cert;
pub mod fetch;
pub mod identity;
pub mod passport;
pub mod repo;
pub mod testpki;
pub mod verify;

pub use cert::{RevocationPolicy, StiCertificate, StiCrl, TnEntry, TrustStore};
pub use der::DerError;
pub use identity::{IdentityError, IdentityHeader};
pub use passport::{canonical_json, canonical_tn, Attestation, ShakenClaims, SigningKey};
pub use testpki::{create_test_pki, TestPki, TestPkiFiles};
pub use verify::{
    sign, verify_identity_offline, verify_signature_only, ReplayCache, Verifier, VerifyContext,
    VerifyOutcome, VerifyPolicy,
};

use std::fmt;

/// The SIP responses a verification service gives (RFC 8224 §6.2.2, §13.2; RFC 4474's 403
/// "Stale Date" for freshness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StirCode {
    /// 403: `iat` outside the freshness window.
    StaleDate,
    /// 428: no usable Identity header and policy requires one.
    UseIdentityHeader,
    /// 436: `info`/`x5u` missing, malformed, disallowed, different from each other, or not
    /// retrievable.
    BadIdentityInfo,
    /// 437: the credential cannot be used: untrusted, expired, revoked, or failing the profile.
    UnsupportedCredential,
    /// 438: the signature does not verify, or the header or PASSporT is malformed, stale in
    /// content or contradicted by the request.
    InvalidIdentityHeader,
}

impl StirCode {
    /// The SIP status code.
    pub fn status(self) -> u16 {
        match self {
            StirCode::StaleDate => 403,
            StirCode::UseIdentityHeader => 428,
            StirCode::BadIdentityInfo => 436,
            StirCode::UnsupportedCredential => 437,
            StirCode::InvalidIdentityHeader => 438,
        }
    }

    /// The reason phrase RFC 8224 gives the code.
    pub fn reason_phrase(self) -> &'static str {
        match self {
            StirCode::StaleDate => "Stale Date",
            StirCode::UseIdentityHeader => "Use Identity Header",
            StirCode::BadIdentityInfo => "Bad Identity Info",
            StirCode::UnsupportedCredential => "Unsupported Credential",
            StirCode::InvalidIdentityHeader => "Invalid Identity Header",
        }
    }

    /// The RFC 9410 `Reason` header value for this code, e.g.
    /// `STIR;cause=438;text="Invalid Identity Header"`.
    pub fn reason_header(self) -> String {
        format!(
            "STIR;cause={};text=\"{}\"",
            self.status(),
            self.reason_phrase()
        )
    }
}

impl fmt::Display for StirCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason_phrase())
    }
}

/// The 3GPP TS 24.229 `verstat` tel-URI/SIP-URI parameter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verstat {
    TnValidationPassed,
    TnValidationFailed,
    NoTnValidation,
}

impl Verstat {
    pub fn as_str(self) -> &'static str {
        match self {
            Verstat::TnValidationPassed => "TN-Validation-Passed",
            Verstat::TnValidationFailed => "TN-Validation-Failed",
            Verstat::NoTnValidation => "No-TN-Validation",
        }
    }
}

impl fmt::Display for Verstat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_phrases() {
        assert_eq!(
            StirCode::UseIdentityHeader.to_string(),
            "428 Use Identity Header"
        );
        assert_eq!(
            StirCode::BadIdentityInfo.to_string(),
            "436 Bad Identity Info"
        );
        assert_eq!(
            StirCode::UnsupportedCredential.to_string(),
            "437 Unsupported Credential"
        );
        assert_eq!(
            StirCode::InvalidIdentityHeader.reason_header(),
            "STIR;cause=438;text=\"Invalid Identity Header\""
        );
        assert_eq!(StirCode::StaleDate.status(), 403);
        assert_eq!(Verstat::NoTnValidation.as_str(), "No-TN-Validation");
    }
}
