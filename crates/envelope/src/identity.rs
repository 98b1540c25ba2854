//! Identities: one 32-byte seed gives a twin both its keys, an ed25519 key that signs and
//! the x25519 key that agrees on encryption keys (the ed25519 secret scalar used as an
//! x25519 secret, as libsodium's `crypto_sign_ed25519_sk_to_curve25519` does). So a twin
//! publishes one public key, its ed25519 key; the x25519 one follows from it
//! (`crypto_sign_ed25519_pk_to_curve25519`).
//!
//! A public key's text form is `ed25519:` and the 32 bytes in unpadded base64url.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// What a public key's text form starts with.
pub const KEY_PREFIX: &str = "ed25519:";

/// Why a public key cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a public key is `ed25519:` and 32 bytes in unpadded base64url")]
    Format,
    #[error(
        "not a valid ed25519 public key (a point that is not on the curve, or of small order)"
    )]
    Invalid,
}

/// A twin's secret: its seed and the keys made from it.
pub struct Identity {
    signing: SigningKey,
    agreement: x25519_dalek::StaticSecret,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity::from_seed(&self.seed())
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public().to_text())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity of `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let agreement = x25519_dalek::StaticSecret::from(signing.to_scalar_bytes());
        Identity { signing, agreement }
    }

    /// A new identity from the operating system's randomness.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed)?;
        Ok(Self::from_seed(&seed))
    }

    /// The seed, to keep (it is the whole secret).
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// Signs `message` (ed25519, deterministic).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The x25519 shared secret with `other`.
    pub(crate) fn agree(&self, other: &PublicKey) -> [u8; 32] {
        let theirs = x25519_dalek::PublicKey::from(other.0.to_montgomery().to_bytes());
        self.agreement.diffie_hellman(&theirs).to_bytes()
    }
}

/// A twin's public key (ed25519; its x25519 key follows from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// From its 32 bytes; refuses a point that is not one or of small order.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::Invalid)?;
        if key.is_weak() {
            return Err(KeyError::Invalid);
        }
        Ok(PublicKey(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// `ed25519:<base64url>`.
    pub fn to_text(&self) -> String {
        format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0.as_bytes()))
    }

    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let b64 = text.strip_prefix(KEY_PREFIX).ok_or(KeyError::Format)?;
        let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| KeyError::Format)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Format)?;
        Self::from_bytes(&bytes)
    }

    /// The x25519 public key this key agrees with (its Montgomery form).
    pub fn agreement_key(&self) -> [u8; 32] {
        self.0.to_montgomery().to_bytes()
    }

    /// Whether `signature` is this key's over `message` (strict: no malleable or
    /// non-canonical signatures, so one message has one signature).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_gives_both_keys_and_they_agree() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[2; 32]);
        assert_eq!(a.agree(&b.public()), b.agree(&a.public()));
        assert_ne!(a.agree(&b.public()), a.agree(&a.public()));
        // The x25519 public key made from the secret is the ed25519 key's Montgomery form.
        let from_secret = x25519_dalek::PublicKey::from(&a.agreement).to_bytes();
        assert_eq!(from_secret, a.public().agreement_key());
        assert_eq!(Identity::from_seed(&a.seed()).public(), a.public());
    }

    #[test]
    fn public_keys_read_back_from_text_and_nothing_else_does() {
        let a = Identity::from_seed(&[7; 32]).public();
        let text = a.to_text();
        assert!(
            text.starts_with("ed25519:") && text.len() == 8 + 43,
            "{text}"
        );
        assert_eq!(PublicKey::from_text(&text), Ok(a));
        for bad in [
            "",
            "ed25519:",
            &text[8..],
            &format!("x25519:{}", &text[8..]),
            &format!("{text}A"),
            &text[..text.len() - 1],
        ] {
            assert_eq!(PublicKey::from_text(bad), Err(KeyError::Format), "{bad}");
        }
        // The identity point is of small order: no key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(KeyError::Invalid));
    }

    #[test]
    fn signatures_verify_strictly() {
        let a = Identity::from_seed(&[3; 32]);
        let sig = a.sign(b"hello");
        assert!(a.public().verify(b"hello", &sig));
        assert!(!a.public().verify(b"hellO", &sig));
        let mut bad = sig;
        bad[63] ^= 0x10;
        assert!(!a.public().verify(b"hello", &bad));
        assert!(!Identity::from_seed(&[4; 32])
            .public()
            .verify(b"hello", &sig));
    }
}
