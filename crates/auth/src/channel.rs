//! Channel tokens: JWTs (HS256) that let one WebSocket session use one private, presence
//! or system channel (`pvt:`, `prs:`, `sys:`), minted by a trusted backend.
//!
//! Claims: `sid` (the session id the token is for), `cname` (the channel), `pub` (whether
//! the holder may publish), `conn_info` (what presence shows of the member), `exp` (seconds
//! since the epoch). Only `alg: HS256` is accepted.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::token::{TokenError, TokenKey};

/// What a channel token says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelClaims {
    pub sid: String,
    pub cname: String,
    #[serde(rename = "pub", default)]
    pub publish: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_info: Option<serde_json::Value>,
    pub exp: u64,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Signs `claims` as a JWT with `key`.
pub fn sign(key: &TokenKey, claims: &ChannelClaims) -> String {
    let mut out = URL_SAFE_NO_PAD.encode(HEADER);
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default()));
    let tag = key.tag(out.as_bytes());
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(tag));
    out
}

/// Checks a JWT's algorithm, signature and expiry at `now` (seconds since the epoch).
pub fn verify(key: &TokenKey, token: &str, now: u64) -> Result<ChannelClaims, TokenError> {
    if token.len() > 8192 {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let decode = |x: &str| URL_SAFE_NO_PAD.decode(x).map_err(|_| TokenError::Malformed);
    let header: Header = serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Malformed);
    }
    key.check_tag(&token.as_bytes()[..h.len() + 1 + p.len()], &decode(s)?)?;
    let claims: ChannelClaims =
        serde_json::from_slice(&decode(p)?).map_err(|_| TokenError::Malformed)?;
    if now >= claims.exp {
        return Err(TokenError::Expired {
            exp: claims.exp,
            now,
        });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> ChannelClaims {
        ChannelClaims {
            sid: "ws-1".into(),
            cname: "prs:room".into(),
            publish: true,
            conn_info: Some(serde_json::json!({"name": "m1"})),
            exp: 100,
        }
    }

    #[test]
    fn round_trip_expiry_and_tampering() {
        let k = TokenKey::generate();
        let t = sign(&k, &claims());
        assert_eq!(verify(&k, &t, 99), Ok(claims()));
        assert!(matches!(
            verify(&k, &t, 100),
            Err(TokenError::Expired { .. })
        ));
        assert_eq!(
            verify(&TokenKey::generate(), &t, 1),
            Err(TokenError::BadSignature)
        );
        // Another channel's header and payload under this token's signature.
        let mut other = claims();
        other.cname = "prs:other".into();
        let forged = sign(&k, &other);
        let (signed_other, _) = forged.rsplit_once('.').expect("jwt");
        let (_, sig) = t.rsplit_once('.').expect("jwt");
        assert_eq!(
            verify(&k, &format!("{signed_other}.{sig}"), 1),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn only_hs256_is_accepted() {
        let k = TokenKey::generate();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).expect("json"))
        );
        assert_eq!(verify(&k, &none, 1), Err(TokenError::Malformed));
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(verify(&k, bad, 1), Err(TokenError::Malformed), "{bad}");
        }
    }
}
