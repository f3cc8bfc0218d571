//! The cluster credential: the certificate authorities whose certificates the peer plane
//! accepts, and the one each instance signs its own certificate with.
//!
//! A credential directory holds up to three files, each a CA certificate followed by its
//! private key (PEM):
//!
//! - `ca.pem`, the **primary**: every instance issues its own certificate from it at start
//!   (and again when the file changes), and accepts peers whose certificate it issued;
//! - `next.pem`, a new authority on its way in: accepted, not yet used to sign;
//! - `previous.pem`, the authority on its way out: still accepted, no longer used to sign.
//!
//! That is a keyring in the manner of memberlist's (one primary key, others accepted), so a
//! credential is rotated with no downtime: [`rotate`] adds `next.pem` everywhere, [`promote`]
//! makes it the primary (the old one becomes `previous.pem`), [`retire`] drops the old one.
//! Instances re-read the directory on their own ([`crate::Credentials::reload`]); each step
//! waits until every instance reports the new fingerprints before the next.
//!
//! Every instance holds the authority's key, so any instance can issue a certificate for a
//! new one (Compose's `--scale` starts containers that nobody could enrol one by one). The
//! directory is the cluster's secret: whoever reads it is a member of the cluster.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What a keyring is, by fingerprints (what `/placement` reports): part of the wire contract.
pub use poc_routing_wire::Fingerprints;

/// The primary authority's file.
pub const PRIMARY: &str = "ca.pem";
/// A new authority, accepted before it signs.
pub const NEXT: &str = "next.pem";
/// The old authority, accepted while instances move off it.
pub const PREVIOUS: &str = "previous.pem";

/// The name every instance's certificate carries, and the one a peer's certificate is checked
/// against: peers are dialled by address, and every instance is the same service.
pub const PEER_NAME: &str = "poc-routing-peer";

/// How long an authority made by [`generate`] is valid.
const AUTHORITY_DAYS: i64 = 3650;
/// How long an instance's own certificate is valid; it issues a new one long before
/// ([`crate::Credentials::reload`]).
pub(crate) const LEAF_DAYS: i64 = 30;

/// A credential that cannot be used, named by its file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Step { path: PathBuf, reason: String },
}

impl CredentialError {
    fn invalid(path: &Path, reason: impl std::fmt::Display) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn step(path: &Path, reason: impl std::fmt::Display) -> Self {
        Self::Step {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// A certificate authority: its certificate and its key.
pub struct Authority {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    fingerprint: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Authority")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The first 16 hex digits of the SHA-256 of a certificate: enough to tell authorities apart
/// in a report, and what `poc-client views` compares across instances.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref()[..8]
        .iter()
        .fold(String::with_capacity(16), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A new authority, as the text of its file.
pub fn generate() -> Result<String, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "poc-routing");
    name.push(
        DnType::CommonName,
        format!("poc-routing cluster authority {}", random_hex(4)),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(AUTHORITY_DAYS);
    let cert = params.self_signed(&key)?;
    Ok(format!("{}{}", cert.pem(), key.serialize_pem()))
}

/// `n` random bytes in hex, from the system's generator.
pub(crate) fn random_hex(n: usize) -> String {
    use ring::rand::SecureRandom;
    let mut bytes = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random generator");
    bytes.iter().fold(String::with_capacity(2 * n), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Authority {
    /// Reads an authority's file: one CA certificate and its private key.
    pub fn parse(path: &Path, text: &str) -> Result<Self, CredentialError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| CredentialError::invalid(path, format!("unreadable PEM: {e}")))?;
        let [der] = <[CertificateDer<'static>; 1]>::try_from(certs).map_err(|certs| {
            CredentialError::invalid(
                path,
                format!(
                    "expected one CA certificate and its key (`poc-server credential new` writes them), found {} certificates",
                    certs.len()
                ),
            )
        })?;
        let key_pem = pem_block(text, "PRIVATE KEY").ok_or_else(|| {
            CredentialError::invalid(
                path,
                "expected the CA's private key (PKCS#8 PEM) after its certificate",
            )
        })?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| CredentialError::invalid(path, format!("the private key: {e}")))?;
        // The certificate and the key must go together: issue one certificate to find out.
        let issuer = Issuer::from_ca_cert_der(&der, &key)
            .map_err(|e| CredentialError::invalid(path, format!("the certificate: {e}")))?;
        let probe = KeyPair::generate()
            .and_then(|k| {
                CertificateParams::new(vec![PEER_NAME.to_owned()])?.signed_by(&k, &issuer)
            })
            .map_err(|e| CredentialError::invalid(path, format!("the certificate and key: {e}")))?;
        if !issued_by(&probe, &der) {
            return Err(CredentialError::invalid(
                path,
                "the private key is not the certificate's",
            ));
        }
        let cert_pem = pem_block(text, "CERTIFICATE")
            .ok_or_else(|| CredentialError::invalid(path, "no CERTIFICATE block"))?;
        Ok(Self {
            cert_pem,
            key_pem,
            fingerprint: fingerprint(&der),
            der,
        })
    }

    /// The authority's certificate, as peers check it.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A certificate for this instance, issued by this authority, with a key made for it now:
    /// the chain (the instance's certificate, then the authority's) and the key.
    pub fn issue(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![PEER_NAME.to_owned()])?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, PEER_NAME);
        params.distinguished_name = name;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        // An hour back: a peer whose clock is a little behind still accepts it.
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(LEAF_DAYS);
        let cert = params.signed_by(&key, &issuer)?;
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| rcgen::Error::PemError(e.to_string()))?;
        Ok((vec![cert.der().clone(), self.der.clone()], key))
    }
}

/// Whether `cert` verifies under the key of the authority `ca` (DER).
fn issued_by(cert: &rcgen::Certificate, ca: &CertificateDer<'_>) -> bool {
    let Ok(ca) = x509_parser::parse_x509_certificate(ca) else {
        return false;
    };
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(cert.der()) else {
        return false;
    };
    leaf.verify_signature(Some(ca.1.public_key())).is_ok()
}

/// The first PEM block of `label` in `text`, whole.
fn pem_block(text: &str, label: &str) -> Option<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(format!("{}\n", &text[start..stop]))
}

/// The authorities a credential directory holds now.
#[derive(Debug)]
pub struct Keyring {
    /// `ca.pem`: signs this instance's certificate, and is accepted.
    pub primary: Authority,
    /// `next.pem` and `previous.pem`, when present: accepted.
    pub accepted: Vec<Authority>,
}

impl Keyring {
    /// Reads `dir`: `ca.pem` is required; `next.pem` and `previous.pem` are read if present.
    /// Returns the keyring and the bytes it was read from (to notice a change).
    pub fn load(dir: &Path) -> Result<(Self, Vec<u8>), CredentialError> {
        let mut source = Vec::new();
        let mut read = |name: &str, required: bool| -> Result<Option<Authority>, CredentialError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    source.extend_from_slice(name.as_bytes());
                    source.extend_from_slice(text.as_bytes());
                    Authority::parse(&path, &text).map(Some)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
                Err(e) => Err(CredentialError::io(&path, e)),
            }
        };
        let primary = read(PRIMARY, true)?.expect("required");
        let accepted = [read(NEXT, false)?, read(PREVIOUS, false)?]
            .into_iter()
            .flatten()
            .collect();
        Ok((Self { primary, accepted }, source))
    }

    /// Every authority accepted: the primary, then the others.
    pub fn trusted(&self) -> impl Iterator<Item = &Authority> {
        std::iter::once(&self.primary).chain(&self.accepted)
    }

    pub fn fingerprints(&self) -> Fingerprints {
        Fingerprints {
            primary: self.primary.fingerprint.clone(),
            accepted: self.trusted().map(|a| a.fingerprint.clone()).collect(),
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so that an instance reading
/// the directory meanwhile sees the old file or the new one, never half of one.
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<(), CredentialError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| CredentialError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| CredentialError::io(path, e))
}

fn exists(path: &Path) -> bool {
    path.try_exists().unwrap_or(true)
}

/// Makes a new credential in `dir` (created if missing): a new primary authority. Refuses to
/// replace one.
pub fn create(dir: &Path) -> Result<Fingerprints, CredentialError> {
    std::fs::create_dir_all(dir).map_err(|e| CredentialError::io(dir, e))?;
    let primary = dir.join(PRIMARY);
    if exists(&primary) {
        return Err(CredentialError::step(
            &primary,
            "a credential is already there (rotate replaces it without downtime: `poc-server credential rotate`)",
        ));
    }
    let text = generate().map_err(|e| CredentialError::step(&primary, e))?;
    write_atomically(&primary, &text)?;
    Ok(Keyring::load(dir)?.0.fingerprints())
}

/// Rotation, step 1: a new authority as `next.pem`, accepted by every instance that reads it,
/// used by none yet.
pub fn rotate(dir: &Path) -> Result<Fingerprints, CredentialError> {
    let (ring, _) = Keyring::load(dir)?;
    let next = dir.join(NEXT);
    if exists(&next) {
        return Err(CredentialError::step(
            &next,
            "a rotation is under way: `poc-server credential promote` is its next step",
        ));
    }
    if exists(&dir.join(PREVIOUS)) {
        return Err(CredentialError::step(
            &dir.join(PREVIOUS),
            "the last rotation is not finished: `poc-server credential retire` is its last step",
        ));
    }
    drop(ring);
    let text = generate().map_err(|e| CredentialError::step(&next, e))?;
    write_atomically(&next, &text)?;
    Ok(Keyring::load(dir)?.0.fingerprints())
}

/// Rotation, step 2 (once every instance accepts `next.pem`): it becomes the primary, and the
/// old primary `previous.pem`, still accepted.
pub fn promote(dir: &Path) -> Result<Fingerprints, CredentialError> {
    Keyring::load(dir)?;
    let next = dir.join(NEXT);
    let next_text = match std::fs::read_to_string(&next) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CredentialError::step(
                &next,
                "nothing to promote: `poc-server credential rotate` makes it",
            ))
        }
        Err(e) => return Err(CredentialError::io(&next, e)),
    };
    let primary = dir.join(PRIMARY);
    let old = std::fs::read_to_string(&primary).map_err(|e| CredentialError::io(&primary, e))?;
    // Accepted before anything stops accepting it: previous first, then the new primary,
    // then next goes. A reader in between sees an authority twice, never one missing.
    write_atomically(&dir.join(PREVIOUS), &old)?;
    write_atomically(&primary, &next_text)?;
    std::fs::remove_file(&next).map_err(|e| CredentialError::io(&next, e))?;
    Ok(Keyring::load(dir)?.0.fingerprints())
}

/// Rotation, step 3 (once every instance signs with the new primary): the old authority is no
/// longer accepted.
pub fn retire(dir: &Path) -> Result<Fingerprints, CredentialError> {
    Keyring::load(dir)?;
    let previous = dir.join(PREVIOUS);
    match std::fs::remove_file(&previous) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CredentialError::step(
                &previous,
                "nothing to retire: `poc-server credential promote` leaves the old authority here",
            ))
        }
        Err(e) => return Err(CredentialError::io(&previous, e)),
    }
    Ok(Keyring::load(dir)?.0.fingerprints())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_keeps_every_step_accepting_what_the_step_before_signed_with() {
        let dir = tempfile::tempdir().unwrap();
        let first = create(dir.path()).unwrap();
        assert_eq!(first.accepted, std::slice::from_ref(&first.primary));
        assert!(create(dir.path()).is_err(), "never replaced by accident");
        assert!(promote(dir.path()).is_err(), "nothing to promote yet");
        assert!(retire(dir.path()).is_err(), "nothing to retire yet");

        let rotated = rotate(dir.path()).unwrap();
        assert_eq!(rotated.primary, first.primary, "step 1 signs as before");
        assert_eq!(rotated.accepted.len(), 2);
        let next = rotated.accepted[1].clone();
        assert!(rotate(dir.path()).is_err(), "one rotation at a time");

        let promoted = promote(dir.path()).unwrap();
        assert_eq!(promoted.primary, next);
        assert_eq!(promoted.accepted, [next.clone(), first.primary.clone()]);
        assert!(rotate(dir.path()).is_err(), "the last one is not retired");

        let retired = retire(dir.path()).unwrap();
        assert_eq!(retired.accepted, [next]);
    }

    #[test]
    fn an_issued_certificate_chains_to_its_authority() {
        let text = generate().unwrap();
        let ca = Authority::parse(Path::new("ca.pem"), &text).unwrap();
        let (chain, _key) = ca.issue().unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(&chain[1], ca.certificate());
        assert_ne!(fingerprint(&chain[0]), ca.fingerprint());
    }

    #[test]
    fn a_bad_file_is_named_with_what_it_should_hold() {
        let cert_only = {
            let text = generate().unwrap();
            pem_block(&text, "CERTIFICATE").unwrap()
        };
        let two = format!("{cert_only}{}", generate().unwrap());
        for (text, want) in [
            ("", "found 0 certificates"),
            ("not pem at all", "found 0 certificates"),
            (cert_only.as_str(), "private key"),
            (two.as_str(), "found 2 certificates"),
        ] {
            let err = Authority::parse(Path::new("/run/secrets/peer/ca.pem"), text).unwrap_err();
            let line = err.to_string();
            assert!(line.starts_with("/run/secrets/peer/ca.pem: "), "{line}");
            assert!(line.contains(want), "{text:?}: {line}");
        }
        let dir = tempfile::tempdir().unwrap();
        let err = Keyring::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("No such file"),
            "{err}"
        );
    }
}
