//! Client secrets.
//!
//! A secret is 256 random bits made by the node, shown once, and stored only as a salted
//! SHA-256. A slow password hash (argon2, bcrypt) protects low-entropy, human-chosen
//! passwords from dictionary attacks; a 256-bit random secret has no dictionary, so a
//! fast hash is as safe here and keeps `/token` cheap.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::random_b64;

/// A new client secret: 32 random bytes, base64url (43 characters).
pub fn generate_secret() -> String {
    random_b64(32)
}

/// A new credential id: names one secret of one client, so that tokens issued for it stop
/// working when the secret is rotated or the client deleted and made again.
pub fn generate_credential_id() -> String {
    random_b64(12)
}

/// Compares two byte strings in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Hashing first makes the comparison independent of the lengths as well.
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.ct_eq(&hb).into()
}

/// A stored secret: `v1$<salt>$<sha256(salt || secret)>`, both parts base64url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHash(String);

impl SecretHash {
    /// Hashes `secret` with a fresh random salt.
    pub fn of(secret: &str) -> Self {
        let salt = random_b64(16);
        let digest = Self::digest(&salt, secret);
        SecretHash(format!("v1${salt}${digest}"))
    }

    /// Wraps a stored hash string (as read from the store).
    pub fn from_stored(s: String) -> Self {
        SecretHash(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if `secret` is the one this hash was made from.
    pub fn verify(&self, secret: &str) -> bool {
        let mut parts = self.0.splitn(3, '$');
        let (Some("v1"), Some(salt), Some(digest)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let expect = Self::digest(salt, secret);
        expect.as_bytes().ct_eq(digest.as_bytes()).into()
    }

    fn digest(salt: &str, secret: &str) -> String {
        let mut h = Sha256::new();
        h.update(salt.as_bytes());
        h.update(b"$");
        h.update(secret.as_bytes());
        URL_SAFE_NO_PAD.encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_its_secret() {
        let s = generate_secret();
        assert_eq!(s.len(), 43);
        let h = SecretHash::of(&s);
        assert!(h.verify(&s));
        assert!(!h.verify("wrong"));
        assert!(!h.as_str().contains(&s));
        // Same secret, different salt, different stored form.
        assert_ne!(SecretHash::of(&s), h);
        assert!(!SecretHash::from_stored("garbage".into()).verify(&s));
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
