//! End-to-end encryption of a payload, from one twin to another: the x25519 agreement of
//! the sender's secret and the recipient's key, HKDF-SHA256 into a key for that direction
//! (sender's key, then recipient's, in the info), and XChaCha20-Poly1305 with a random
//! 24-byte nonce. The associated data binds the envelope's source, destination and uid, so
//! a sealed payload cannot be moved into another envelope, to or from anyone else.
//!
//! `cipher = nonce (24) ‖ ciphertext ‖ tag (16)`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::envelope::{Address, EnvelopeError, DOMAIN};
use crate::identity::{Identity, PublicKey};

/// The HKDF salt.
pub const SEAL_SALT: &[u8] = b"trunkline envelope v1 seal";
const NONCE: usize = 24;
const TAG: usize = 16;

fn key(
    shared: [u8; 32],
    sender: &PublicKey,
    recipient: &PublicKey,
) -> Result<[u8; 32], EnvelopeError> {
    // A small-order key gives an all-zero secret: refuse it rather than encrypt with it.
    if shared == [0; 32] {
        return Err(EnvelopeError::Invalid(
            "no shared secret with that key".into(),
        ));
    }
    let mut info = [0u8; 64];
    info[..32].copy_from_slice(&sender.to_bytes());
    info[32..].copy_from_slice(&recipient.to_bytes());
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(SEAL_SALT), &shared)
        .expand(&info, &mut okm)
        .map_err(|_| EnvelopeError::Invalid("key derivation".into()))?;
    Ok(okm)
}

/// The associated data of a payload sealed in the envelope `uid` from `source` to
/// `destination`.
pub fn associated_data(source: &Address, destination: &Address, uid: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(DOMAIN.len() + 64 + uid.len());
    ad.extend_from_slice(DOMAIN);
    ad.extend_from_slice(source.to_string().as_bytes());
    ad.push(0);
    ad.extend_from_slice(destination.to_string().as_bytes());
    ad.push(0);
    ad.extend_from_slice(uid.as_bytes());
    ad
}

/// Seals `plain` from `sender` to the twin whose key is `recipient`, with `nonce` (24
/// random bytes; [`seal`] draws them).
pub fn seal_with_nonce(
    plain: &[u8],
    sender: &Identity,
    recipient: &PublicKey,
    ad: &[u8],
    nonce: [u8; NONCE],
) -> Result<Vec<u8>, EnvelopeError> {
    let k = key(sender.agree(recipient), &sender.public(), recipient)?;
    let cipher = XChaCha20Poly1305::new(&k.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            AeadPayload {
                msg: plain,
                aad: ad,
            },
        )
        .map_err(|_| EnvelopeError::Invalid("encryption failed".into()))?;
    let mut out = Vec::with_capacity(NONCE + cipher.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&cipher);
    Ok(out)
}

/// Seals `plain` from `sender` to `recipient` with a fresh random nonce.
pub fn seal(
    plain: &[u8],
    sender: &Identity,
    recipient: &PublicKey,
    ad: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut nonce = [0u8; NONCE];
    getrandom::getrandom(&mut nonce)
        .map_err(|e| EnvelopeError::Invalid(format!("no randomness: {e}")))?;
    seal_with_nonce(plain, sender, recipient, ad, nonce)
}

/// Opens what `sender` sealed for `recipient`; refused if anything about it changed.
pub fn open(
    cipher: &[u8],
    recipient: &Identity,
    sender: &PublicKey,
    ad: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if cipher.len() < NONCE + TAG {
        return Err(EnvelopeError::Invalid("a sealed payload too short".into()));
    }
    let (nonce, body) = cipher.split_at(NONCE);
    let k = key(recipient.agree(sender), sender, &recipient.public())?;
    XChaCha20Poly1305::new(&k.into())
        .decrypt(
            XNonce::from_slice(nonce),
            AeadPayload { msg: body, aad: ad },
        )
        .map_err(|_| {
            EnvelopeError::Invalid(
                "the sealed payload does not open: not for this twin, or altered".into(),
            )
        })
}
