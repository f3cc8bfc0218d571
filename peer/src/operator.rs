//! The operator's credential: bearer tokens for the endpoints that list client ids or describe
//! the cluster (`/registrations`, `/clients`, `/placement`, `/metrics`).
//!
//! A token file holds one or more tokens, one a line (blank lines and `#` comments aside).
//! Every token in it is accepted, and tools send the last one: rotation appends a new token,
//! moves the tools to it, then drops the old ones ([`rotate`], [`retire`]).

use std::path::Path;

use crate::credential::{random_hex, write_atomically, CredentialError};

/// The most tokens a file may hold: a rotation needs two.
pub const MAX_TOKENS: usize = 8;

/// The tokens accepted, kept as digests: a comparison's time says nothing about a token.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} accepted)", self.digests.len())
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub use poc_routing_wire::newest_operator_token as newest;
use poc_routing_wire::operator_tokens as lines;

impl Tokens {
    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Self, CredentialError> {
        let text = std::fs::read_to_string(path).map_err(|e| CredentialError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, CredentialError> {
        let invalid = |reason: String| CredentialError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let tokens: Vec<&str> = lines(text).collect();
        if tokens.is_empty() {
            return Err(invalid(
                "no token (`poc-server credential new` writes one)".into(),
            ));
        }
        if tokens.len() > MAX_TOKENS {
            return Err(invalid(format!(
                "{} tokens; at most {MAX_TOKENS}",
                tokens.len()
            )));
        }
        if let Some(short) = tokens.iter().find(|t| t.len() < 32) {
            return Err(invalid(format!(
                "a token of {} characters; at least 32 (random)",
                short.len()
            )));
        }
        Ok(Self {
            digests: tokens.iter().map(|t| digest(t.as_bytes())).collect(),
        })
    }

    /// Whether `authorization` (the header's value) is `Bearer <an accepted token>`.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(token) = value.strip_prefix(b"Bearer ") else {
            return false;
        };
        let presented = digest(token.trim_ascii());
        self.digests.contains(&presented)
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// A new token: 32 random bytes in hex.
pub fn generate() -> String {
    random_hex(32)
}

/// Writes a new token file at `path`; refuses to replace one.
pub fn create(path: &Path) -> Result<(), CredentialError> {
    if path.try_exists().unwrap_or(true) {
        return Err(CredentialError::Step {
            path: path.to_owned(),
            reason: "a token is already there".into(),
        });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CredentialError::Io {
            path: dir.to_owned(),
            source: e,
        })?;
    }
    write_atomically(path, &format!("{}\n", generate()))
}

/// Rotation, step 1: a new token after the others (servers accept both; tools send it).
pub fn rotate(path: &Path) -> Result<(), CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|e| CredentialError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    let mut tokens: Vec<&str> = lines(&text).collect();
    let new = generate();
    tokens.push(&new);
    write_atomically(path, &format!("{}\n", tokens.join("\n")))?;
    Tokens::load(path).map(|_| ())
}

/// Rotation, last step: only the newest token is accepted.
pub fn retire(path: &Path) -> Result<(), CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|e| CredentialError::Io {
        path: path.to_owned(),
        source: e,
    })?;
    let newest = newest(&text).ok_or_else(|| CredentialError::Invalid {
        path: path.to_owned(),
        reason: "no token".into(),
    })?;
    write_atomically(path, &format!("{newest}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_of_an_accepted_token_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        create(&path).unwrap();
        let first = std::fs::read_to_string(&path).unwrap().trim().to_owned();
        let tokens = Tokens::load(&path).unwrap();
        let bearer = |t: &str| format!("Bearer {t}");
        assert!(tokens.accepts(Some(bearer(&first).as_bytes())));
        for bad in [
            None,
            Some(first.clone()),
            Some(format!("Basic {first}")),
            Some(bearer(&first[1..])),
            Some(bearer("")),
            Some(bearer(&generate())),
        ] {
            assert!(
                !tokens.accepts(bad.as_deref().map(str::as_bytes)),
                "{bad:?}"
            );
        }

        rotate(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let second = newest(&text).unwrap().to_owned();
        assert_ne!(first, second);
        let both = Tokens::load(&path).unwrap();
        assert!(both.accepts(Some(bearer(&first).as_bytes())));
        assert!(both.accepts(Some(bearer(&second).as_bytes())));

        retire(&path).unwrap();
        let after = Tokens::load(&path).unwrap();
        assert!(!after.accepts(Some(bearer(&first).as_bytes())));
        assert!(after.accepts(Some(bearer(&second).as_bytes())));
        assert!(create(&path).is_err());
    }

    #[test]
    fn a_bad_token_file_says_what_it_needs() {
        for (text, want) in [
            ("", "no token"),
            ("# only a comment\n\n", "no token"),
            ("short\n", "at least 32"),
        ] {
            let err = Tokens::parse(Path::new("/t"), text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("/t: ") && err.contains(want), "{err}");
        }
        let many = (0..9).map(|_| generate()).collect::<Vec<_>>().join("\n");
        let err = Tokens::parse(Path::new("/t"), &many)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 8"), "{err}");
    }
}
