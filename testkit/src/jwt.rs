//! A JWT issuer for tests and the bench: an ES256 key pair made on the spot (by `ring`), its
//! JWKS for Envoy's `jwt_authn`, and tokens signed with it (by `jsonwebtoken`). Nothing here
//! implements cryptography; it only wires the two crates together.

use anyhow::{Context, Result};
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// The `iss` every token of an [`Issuer`] carries, and the JWKS provider must expect.
pub const ISSUER: &str = "poc-routing-test";

/// A P-256 signing key and the JWKS that verifies it.
pub struct Issuer {
    kid: String,
    key: EncodingKey,
    jwks: String,
}

impl Issuer {
    /// A new key pair, published under `kid`.
    pub fn new(kid: &str) -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate a P-256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("cannot read the P-256 key back"))?;
        // The public key is the uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]});
        Ok(Self {
            kid: kid.to_owned(),
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwks: jwks.to_string(),
        })
    }

    /// The JWKS (JSON) that verifies this issuer's tokens.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// A token for `sub` that expires `expires_in` seconds from now (negative: already
    /// expired).
    pub fn token(&self, sub: &str, expires_in: i64) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": sub, "iat": now, "exp": now + expires_in,
        });
        encode(&header, &claims, &self.key).context("sign a token")
    }
}
