//! Bearer tokens.
//!
//! `tl1.<claims>.<mac>`: the claims are base64url JSON `{sub, cid, exp}` and the mac is
//! base64url HMAC-SHA256 over `tl1.<claims>` with the node's token key. A token is
//! self-contained, so checking one needs no store lookup beyond "does client `sub` still
//! have credential `cid`", which the caller does.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::random_b64;

const PREFIX: &str = "tl1.";
/// Shortest accepted configured key, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The client id.
    pub sub: String,
    /// The credential id the token was issued for.
    pub cid: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("the token has no `{claim}` claim; mint a new one")]
    MissingClaim { claim: &'static str },
    #[error("the token key must be at least {MIN_KEY_LEN} bytes, got {len}")]
    KeyTooShort { len: usize },
}

/// The key tokens are signed with.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(***)")
    }
}

impl TokenKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        TokenKey(random_b64(32).into_bytes())
    }

    /// A key from configuration text (e.g. `TRUNKLINE_TOKEN_SECRET`), used as given.
    pub fn from_text(text: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        if t.len() < MIN_KEY_LEN {
            return Err(TokenError::KeyTooShort { len: t.len() });
        }
        Ok(TokenKey(t.as_bytes().to_vec()))
    }

    /// The key as text, to be saved in the data directory.
    pub fn to_text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; new_from_slice cannot fail for it.
        match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("invariant: HMAC accepts keys of every length"),
        }
    }

    /// HMAC-SHA256 of `data` under this key.
    pub(crate) fn tag(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// Checks `tag` against `data` in constant time.
    pub(crate) fn check_tag(&self, data: &[u8], tag: &[u8]) -> Result<(), TokenError> {
        let mut mac = self.mac();
        mac.update(data);
        mac.verify_slice(tag).map_err(|_| TokenError::BadSignature)
    }

    /// Signs `claims` into a token.
    pub fn sign(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let mut out = String::with_capacity(PREFIX.len() + json.len() * 2 + 44);
        out.push_str(PREFIX);
        out.push_str(&URL_SAFE_NO_PAD.encode(json));
        let tag = self.tag(out.as_bytes());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(tag));
        out
    }

    /// Checks a token's signature and expiry at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > 4096 || !token.starts_with(PREFIX) {
            return Err(TokenError::Malformed);
        }
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        self.check_tag(signed.as_bytes(), &tag)?;
        let payload = URL_SAFE_NO_PAD
            .decode(&signed[PREFIX.len()..])
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if now >= claims.exp {
            return Err(TokenError::Expired {
                exp: claims.exp,
                now,
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            sub: "a".into(),
            cid: "c".into(),
            exp: 100,
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let k = TokenKey::generate();
        let t = k.sign(&claims());
        assert_eq!(k.verify(&t, 99), Ok(claims()));
        assert_eq!(
            k.verify(&t, 100),
            Err(TokenError::Expired { exp: 100, now: 100 })
        );
    }

    #[test]
    fn tampering_and_other_keys_are_refused() {
        let k = TokenKey::generate();
        let t = k.sign(&claims());
        assert_eq!(
            TokenKey::generate().verify(&t, 1),
            Err(TokenError::BadSignature)
        );
        let forged = Claims {
            sub: "admin".into(),
            ..claims()
        };
        let forged_payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap_or_default());
        let tag = t.rsplit_once('.').map(|(_, tag)| tag).unwrap_or_default();
        let tampered = format!("{PREFIX}{forged_payload}.{tag}");
        assert_eq!(k.verify(&tampered, 1), Err(TokenError::BadSignature));
        for junk in [
            "",
            "tl1.",
            "tl1..",
            "Bearer x",
            "tl1.!!.!!",
            &"x".repeat(5000),
        ] {
            assert!(k.verify(junk, 1).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn configured_keys() {
        assert!(matches!(
            TokenKey::from_text("short"),
            Err(TokenError::KeyTooShort { .. })
        ));
        let a = TokenKey::from_text("0123456789abcdef-0123").map_err(|e| e.to_string());
        let b = TokenKey::from_text("0123456789abcdef-0123").map_err(|e| e.to_string());
        let (Ok(a), Ok(b)) = (a, b) else {
            panic!("valid keys refused")
        };
        assert_eq!(b.verify(&a.sign(&claims()), 1), Ok(claims()));
    }
}
