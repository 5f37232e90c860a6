//! Test STI hierarchies made with rcgen: an STI-CA root, an intermediate, SHAKEN leaves with a
//! TNAuthList, and an STI-PA CRL signer. Used by the tests here, by `riptide stir` to make a
//! PKI for trying the gateway out, and by integration tests that serve an `x5u`.
//!
//! Nothing here is for production: keys are generated in memory and written unencrypted.

use super::cert::{encode_tn_auth_list, JwtClaimConstraints, TnEntry};
use super::der::{oid_der, tlv, TAG_SEQUENCE};
use super::passport::{SignError, SigningKey};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    CustomExtension, DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a test PKI could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum TestPkiError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the system clock is before 1970")]
    Clock,
    #[error("the system random number generator failed")]
    Rng,
    #[error("the SPC {0:?} must be 1-32 letters and digits")]
    BadSpc(String),
}

/// A certificate with its private key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub der: Vec<u8>,
    pub pem: String,
    /// PKCS#8 DER of the private key.
    pub key_pkcs8: Vec<u8>,
    /// PKCS#8 PEM of the private key.
    pub key_pem: String,
    /// Serial number as encoded in the certificate (big-endian).
    pub serial: Vec<u8>,
}

/// Which key a leaf gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKeyType {
    P256,
    P384,
}

/// The shape of a leaf; [`LeafSpec::shaken`] is an ATIS-1000080-conforming one and tests change
/// one field to make a negative vector.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// Subject CN.
    pub cn: String,
    /// TNAuthList extension value (DER); `None` leaves the extension out.
    pub tn_auth_list: Option<Vec<u8>>,
    pub key_type: LeafKeyType,
    /// Make the leaf a CA (a hard profile failure).
    pub is_ca: bool,
    pub not_before: u64,
    pub not_after: u64,
    /// Serial number bytes; `None` gives a random 72-bit one.
    pub serial: Option<Vec<u8>>,
    /// Certificate policy OIDs (arcs).
    pub policies: Vec<Vec<u64>>,
    pub jwt_claim_constraints: Option<JwtClaimConstraints>,
    pub crl_distribution_point: Option<String>,
    pub digital_signature: bool,
}

/// The SHAKEN certificate policy OID of US SHAKEN CP 1.3.
pub const SHAKEN_CP_ARCS: [u64; 8] = [2, 16, 840, 1, 114569, 1, 1, 3];
const CERTIFICATE_POLICIES_ARCS: [u64; 4] = [2, 5, 29, 32];
const TN_AUTH_LIST_ARCS: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 1, 26];
const JWT_CLAIM_CONSTRAINTS_ARCS: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 1, 27];

impl LeafSpec {
    /// A conforming SHAKEN leaf for `spc`, valid from an hour before `now_unix` for a year.
    pub fn shaken(spc: &str, now_unix: u64) -> LeafSpec {
        LeafSpec {
            cn: format!("SHAKEN {spc}"),
            tn_auth_list: Some(encode_tn_auth_list(&[TnEntry::Spc(spc.to_string())])),
            key_type: LeafKeyType::P256,
            is_ca: false,
            not_before: now_unix.saturating_sub(3600),
            not_after: now_unix + 365 * 24 * 3600,
            serial: None,
            policies: vec![SHAKEN_CP_ARCS.to_vec()],
            jwt_claim_constraints: None,
            crl_distribution_point: Some("https://sti-pa.example/crl".into()),
            digital_signature: true,
        }
    }
}

/// A root STI-CA, an intermediate, a conforming SHAKEN leaf and a separate CRL signer.
pub struct TestPki {
    pub root: IssuedCert,
    pub intermediate: IssuedCert,
    pub leaf: IssuedCert,
    pub crl_signer: IssuedCert,
    intermediate_params: CertificateParams,
    intermediate_key: KeyPair,
    crl_signer_params: CertificateParams,
    crl_signer_key: KeyPair,
    now_unix: u64,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("now_unix", &self.now_unix)
            .finish_non_exhaustive()
    }
}

/// rcgen's time type (from the `time` crate) is not re-exported, so it cannot be named in a
/// function signature.
macro_rules! time {
    ($unix:expr) => {
        rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs($unix)
    };
}

fn random_serial() -> Result<Vec<u8>, TestPkiError> {
    use ring::rand::SecureRandom;
    let mut s = [0u8; 9];
    ring::rand::SystemRandom::new()
        .fill(&mut s)
        .map_err(|_| TestPkiError::Rng)?;
    // 72 bits with the top bit clear: at least 64 significant bits, no sign padding.
    s[0] = (s[0] & 0x7f) | 0x40;
    Ok(s.to_vec())
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "riptide test STI");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str, now_unix: u64) -> Result<CertificateParams, TestPkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = time!(now_unix.saturating_sub(24 * 3600));
    p.not_after = time!(now_unix + 10 * 365 * 24 * 3600);
    p.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn issued(cert: &rcgen::Certificate, key: &KeyPair, serial: &[u8]) -> IssuedCert {
    IssuedCert {
        der: cert.der().to_vec(),
        pem: cert.pem(),
        key_pkcs8: key.serialize_der(),
        key_pem: key.serialize_pem(),
        serial: serial.to_vec(),
    }
}

impl TestPki {
    /// Makes the hierarchy; validity windows are placed around `now_unix`.
    pub fn generate(spc: &str, now_unix: u64) -> Result<TestPki, TestPkiError> {
        // A per-hierarchy tag in every CA name, so two test PKIs never share issuer names
        // (webpki would then report a bad signature rather than an unknown issuer).
        let tag: String = random_serial()?[1..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let root_params = ca_params(&format!("riptide test STI-CA root {tag}"), now_unix)?;
        let root_cert = root_params.self_signed(&root_key)?;
        let root_serial = root_params
            .serial_number
            .as_ref()
            .map(|s| s.to_bytes())
            .unwrap_or_default();
        let root_issuer = Issuer::from_params(&root_params, &root_key);

        let intermediate_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut intermediate_params =
            ca_params(&format!("riptide test STI-CA intermediate {tag}"), now_unix)?;
        intermediate_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let intermediate_cert = intermediate_params.signed_by(&intermediate_key, &root_issuer)?;
        let intermediate_serial = intermediate_params
            .serial_number
            .as_ref()
            .map(|s| s.to_bytes())
            .unwrap_or_default();

        let crl_signer_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut crl_signer_params =
            ca_params(&format!("riptide test STI-PA CRL signer {tag}"), now_unix)?;
        crl_signer_params.is_ca = IsCa::ExplicitNoCa;
        crl_signer_params.key_usages = vec![KeyUsagePurpose::CrlSign];
        let crl_signer_cert = crl_signer_params.self_signed(&crl_signer_key)?;
        let crl_signer_serial = crl_signer_params
            .serial_number
            .as_ref()
            .map(|s| s.to_bytes())
            .unwrap_or_default();

        let mut pki = TestPki {
            root: issued(&root_cert, &root_key, &root_serial),
            intermediate: issued(&intermediate_cert, &intermediate_key, &intermediate_serial),
            leaf: IssuedCert {
                der: Vec::new(),
                pem: String::new(),
                key_pkcs8: Vec::new(),
                key_pem: String::new(),
                serial: Vec::new(),
            },
            crl_signer: issued(&crl_signer_cert, &crl_signer_key, &crl_signer_serial),
            intermediate_params,
            intermediate_key,
            crl_signer_params,
            crl_signer_key,
            now_unix,
        };
        pki.leaf = pki.issue_leaf(&LeafSpec::shaken(spc, now_unix))?;
        Ok(pki)
    }

    /// Issues a leaf signed by the intermediate.
    pub fn issue_leaf(&self, spec: &LeafSpec) -> Result<IssuedCert, TestPkiError> {
        let key = match spec.key_type {
            LeafKeyType::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            LeafKeyType::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?,
        };
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CountryName, "US");
        name.push(DnType::OrganizationName, "riptide test SP");
        name.push(DnType::CommonName, spec.cn.as_str());
        p.distinguished_name = name;
        p.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        p.key_usages = if spec.digital_signature {
            vec![KeyUsagePurpose::DigitalSignature]
        } else {
            vec![KeyUsagePurpose::KeyAgreement]
        };
        if spec.is_ca {
            p.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        p.not_before = time!(spec.not_before);
        p.not_after = time!(spec.not_after);
        let serial = match &spec.serial {
            Some(s) => s.clone(),
            None => random_serial()?,
        };
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.use_authority_key_identifier_extension = true;
        if let Some(url) = &spec.crl_distribution_point {
            p.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![url.clone()],
            }];
        }
        if let Some(tn) = &spec.tn_auth_list {
            p.custom_extensions.push(CustomExtension::from_oid_content(
                &TN_AUTH_LIST_ARCS,
                tn.clone(),
            ));
        }
        if let Some(c) = &spec.jwt_claim_constraints {
            p.custom_extensions.push(CustomExtension::from_oid_content(
                &JWT_CLAIM_CONSTRAINTS_ARCS,
                c.encode(),
            ));
        }
        if !spec.policies.is_empty() {
            let infos: Vec<u8> = spec
                .policies
                .iter()
                .flat_map(|arcs| tlv(TAG_SEQUENCE, &oid_der(arcs)))
                .collect();
            p.custom_extensions.push(CustomExtension::from_oid_content(
                &CERTIFICATE_POLICIES_ARCS,
                tlv(TAG_SEQUENCE, &infos),
            ));
        }
        let issuer = Issuer::from_params(&self.intermediate_params, &self.intermediate_key);
        let cert = p.signed_by(&key, &issuer)?;
        Ok(issued(&cert, &key, &serial))
    }

    /// The `x5u` bundle: leaf then intermediate, DER.
    pub fn chain(&self) -> Vec<Vec<u8>> {
        vec![self.leaf.der.clone(), self.intermediate.der.clone()]
    }

    /// The `x5u` bundle for another leaf.
    pub fn chain_for(&self, leaf: &IssuedCert) -> Vec<Vec<u8>> {
        vec![leaf.der.clone(), self.intermediate.der.clone()]
    }

    /// The leaf's key, for signing PASSporTs.
    pub fn signing_key(&self) -> Result<SigningKey, SignError> {
        SigningKey::from_pkcs8_der(&self.leaf.key_pkcs8)
    }

    /// A certificate with the CRL signer's name and a different key (a forged signer).
    #[cfg(test)]
    pub(crate) fn impostor_crl_signer(&self) -> Result<IssuedCert, TestPkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = self.crl_signer_params.self_signed(&key)?;
        Ok(issued(&cert, &key, &self.crl_signer.serial))
    }

    /// An STI-PA CRL signed by the CRL signer, revoking `serials`, covering
    /// `this_update..next_update` (seconds since the epoch). DER.
    pub fn crl(
        &self,
        serials: &[&[u8]],
        this_update: u64,
        next_update: u64,
    ) -> Result<Vec<u8>, TestPkiError> {
        let params = CertificateRevocationListParams {
            this_update: time!(this_update),
            next_update: time!(next_update),
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: time!(this_update),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_params(&self.crl_signer_params, &self.crl_signer_key);
        Ok(params.signed_by(&issuer)?.der().to_vec())
    }
}

/// Paths of the files [`create_test_pki`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPkiFiles {
    /// The STI-CA root: what a verifier puts in its trust list.
    pub root_cert: PathBuf,
    pub intermediate_cert: PathBuf,
    pub leaf_cert: PathBuf,
    /// The leaf's PKCS#8 private key: what the authentication service signs with.
    pub leaf_key: PathBuf,
    /// Leaf then intermediate: what the `x5u` URL serves (`application/pem-certificate-chain`).
    pub chain: PathBuf,
    /// The STI-PA CRL signer certificate and an empty CRL it signed.
    pub crl_signer_cert: PathBuf,
    pub crl: PathBuf,
}

/// Writes a test PKI for `tn_spc` into `dir` (created if needed): `sti-ca-root.pem`,
/// `sti-ca-intermediate.pem`, `sp-leaf.pem`, `sp-leaf.key` (0600), `sp-chain.pem`,
/// `sti-pa-crl-signer.pem` and `sti-pa.crl` (PEM, empty, valid 30 days). Validity is
/// placed around the current time.
pub fn create_test_pki(dir: &Path, tn_spc: &str) -> Result<TestPkiFiles, TestPkiError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| TestPkiError::Clock)?
        .as_secs();
    create_test_pki_at(dir, tn_spc, now)
}

/// [`create_test_pki`] with the time given.
pub fn create_test_pki_at(
    dir: &Path,
    tn_spc: &str,
    now_unix: u64,
) -> Result<TestPkiFiles, TestPkiError> {
    if tn_spc.is_empty() || tn_spc.len() > 32 || !tn_spc.bytes().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(TestPkiError::BadSpc(tn_spc.to_string()));
    }
    let pki = TestPki::generate(tn_spc, now_unix)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TestPkiError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let files = TestPkiFiles {
        root_cert: dir.join("sti-ca-root.pem"),
        intermediate_cert: dir.join("sti-ca-intermediate.pem"),
        leaf_cert: dir.join("sp-leaf.pem"),
        leaf_key: dir.join("sp-leaf.key"),
        chain: dir.join("sp-chain.pem"),
        crl_signer_cert: dir.join("sti-pa-crl-signer.pem"),
        crl: dir.join("sti-pa.crl"),
    };
    let crl_der = pki.crl(&[], now_unix.saturating_sub(60), now_unix + 30 * 24 * 3600)?;
    let crl_pem = pem_block("X509 CRL", &crl_der);
    let write = |path: &Path, text: &str| std::fs::write(path, text).map_err(io(path));
    write(&files.root_cert, &pki.root.pem)?;
    write(&files.intermediate_cert, &pki.intermediate.pem)?;
    write(&files.leaf_cert, &pki.leaf.pem)?;
    write(
        &files.chain,
        &format!("{}{}", pki.leaf.pem, pki.intermediate.pem),
    )?;
    write(&files.crl_signer_cert, &pki.crl_signer.pem)?;
    write(&files.crl, &crl_pem)?;
    write_private(&files.leaf_key, pki.leaf.key_pem.as_bytes()).map_err(io(&files.leaf_key))?;
    Ok(files)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    // The mode above only applies when the file is created; tighten an existing one too.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

/// `der` as one PEM block labelled `label`, 64 characters a line.
pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
