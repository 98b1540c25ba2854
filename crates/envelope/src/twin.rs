//! A twin's claim to the registry: its id (0 to ask for a new one), its key, the relays it
//! is reached through, and the time it was made, signed by the twin's key (for a change,
//! the key the registry holds now: a twin hands its id to a new key by signing the claim
//! naming it with the old one).
//!
//! Signed bytes: `trunkline twin v1` NUL, `u32` id, the 32 key bytes, `u8` count of relays
//! then each as `str8`, `u64` timestamp (big-endian).

use crate::identity::{Identity, PublicKey};

/// What a claim's signature covers first.
pub const TWIN_DOMAIN: &[u8] = b"trunkline twin v1\0";
/// Most relays a twin may list (RMB's peers list at most four too).
pub const MAX_RELAYS: usize = 4;
/// Longest relay name, in bytes.
pub const MAX_RELAY: usize = 255;

/// What a twin says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinClaim {
    /// 0: a new twin, the registry picks its id.
    pub id: u32,
    pub key: PublicKey,
    /// Relays (host names, `host:port`) the twin is connected to.
    pub relays: Vec<String>,
    /// Seconds since 1970; a change must be newer than the one before.
    pub timestamp: u64,
}

/// Why a claim is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("a twin lists at most {MAX_RELAYS} relays, each 1 to {MAX_RELAY} bytes of printable ASCII without spaces")]
    Relays,
    #[error("the claim's signature is not the key's")]
    BadSignature,
}

impl TwinClaim {
    fn check_relays(&self) -> Result<(), ClaimError> {
        let ok = |r: &String| {
            !r.is_empty() && r.len() <= MAX_RELAY && r.bytes().all(|b| b.is_ascii_graphic())
        };
        if self.relays.len() > MAX_RELAYS || !self.relays.iter().all(ok) {
            return Err(ClaimError::Relays);
        }
        Ok(())
    }

    /// The bytes a claim's signature covers.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, ClaimError> {
        self.check_relays()?;
        let mut m = Vec::with_capacity(64 + 64 * self.relays.len());
        m.extend_from_slice(TWIN_DOMAIN);
        m.extend_from_slice(&self.id.to_be_bytes());
        m.extend_from_slice(&self.key.to_bytes());
        m.push(self.relays.len() as u8);
        for r in &self.relays {
            m.push(r.len() as u8);
            m.extend_from_slice(r.as_bytes());
        }
        m.extend_from_slice(&self.timestamp.to_be_bytes());
        Ok(m)
    }

    /// Signs the claim as `signer`.
    pub fn sign(&self, signer: &Identity) -> Result<[u8; 64], ClaimError> {
        Ok(signer.sign(&self.signed_bytes()?))
    }

    /// `Ok` if `signature` is `signer`'s over this claim.
    pub fn verify(&self, signer: &PublicKey, signature: &[u8; 64]) -> Result<(), ClaimError> {
        if signer.verify(&self.signed_bytes()?, signature) {
            Ok(())
        } else {
            Err(ClaimError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_signed_whole() {
        let me = Identity::from_seed(&[5; 32]);
        let claim = TwinClaim {
            id: 0,
            key: me.public(),
            relays: vec!["relay.example:8087".into()],
            timestamp: 1_800_000_000,
        };
        let sig = claim.sign(&me).expect("sign");
        claim.verify(&me.public(), &sig).expect("verifies");
        for changed in [
            TwinClaim {
                id: 7,
                ..claim.clone()
            },
            TwinClaim {
                relays: vec!["evil.example".into()],
                ..claim.clone()
            },
            TwinClaim {
                timestamp: 1_800_000_001,
                ..claim.clone()
            },
            TwinClaim {
                key: Identity::from_seed(&[6; 32]).public(),
                ..claim.clone()
            },
        ] {
            assert_eq!(
                changed.verify(&me.public(), &sig),
                Err(ClaimError::BadSignature)
            );
        }
        let other = Identity::from_seed(&[6; 32]);
        assert_eq!(
            claim.verify(&other.public(), &sig),
            Err(ClaimError::BadSignature)
        );
        for relays in [
            vec!["".to_string()],
            vec!["a b".into()],
            vec!["r".into(); 5],
        ] {
            let c = TwinClaim {
                relays,
                ..claim.clone()
            };
            assert_eq!(c.sign(&me), Err(ClaimError::Relays));
        }
    }
}
