//! Channel tokens: JWTs (HS256) that let one WebSocket session use one private, presence
//! or system channel (`pvt:`, `prs:`, `sys:`), minted by a trusted backend.
//!
//! Claims: `sid` (the session id the token is for), `client_id` (the client of that
//! session), `cname` (the channel), `pub` (whether the holder may publish), `conn_info`
//! (what presence shows of the member), `exp` (seconds since the epoch). Only `alg: HS256`
//! is accepted, and a token without `client_id` is refused. [`ChannelClaims::check_use`]
//! says whether a valid token fits the session, client and channel it is used with.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::token::{TokenError, TokenKey};

/// What a channel token says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelClaims {
    pub sid: String,
    /// The client of session `sid`. Session ids are random, but a token also names its
    /// client so that it is worth nothing to any other client. Read as empty when missing,
    /// which [`verify`] refuses.
    #[serde(default)]
    pub client_id: String,
    pub cname: String,
    #[serde(rename = "pub", default)]
    pub publish: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_info: Option<serde_json::Value>,
    pub exp: u64,
}

/// Why a valid channel token does not fit where it is used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Misuse {
    #[error("the channel token is for session `{token}`, not this one")]
    Session { token: String },
    #[error("the channel token is for client `{token}`, not `{used_by}`")]
    Client { token: String, used_by: String },
    #[error("the channel token is for channel `{token}`, not `{used_on}`")]
    Channel { token: String, used_on: String },
}

impl ChannelClaims {
    /// Checks that the token is used by the session and client it was minted for, on its
    /// channel.
    pub fn check_use(
        &self,
        session_id: &str,
        client_id: &str,
        channel: &str,
    ) -> Result<(), Misuse> {
        if self.sid != session_id {
            return Err(Misuse::Session {
                token: self.sid.clone(),
            });
        }
        if self.client_id != client_id {
            return Err(Misuse::Client {
                token: self.client_id.clone(),
                used_by: client_id.to_owned(),
            });
        }
        if self.cname != channel {
            return Err(Misuse::Channel {
                token: self.cname.clone(),
                used_on: channel.to_owned(),
            });
        }
        Ok(())
    }
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

/// Checks a JWT's algorithm, signature, `client_id` claim and expiry at `now` (seconds since
/// the epoch).
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
    if claims.client_id.is_empty() {
        return Err(TokenError::MissingClaim { claim: "client_id" });
    }
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
            client_id: "machine-1".into(),
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

    /// A token minted before tokens named their client (no `client_id`), even well signed
    /// and unexpired, is refused.
    #[test]
    fn a_token_without_a_client_is_refused() {
        let k = TokenKey::generate();
        let mut payload = serde_json::to_value(claims()).expect("json");
        payload
            .as_object_mut()
            .expect("an object")
            .remove("client_id");
        let mut t = URL_SAFE_NO_PAD.encode(HEADER);
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(payload.to_string()));
        let tag = k.tag(t.as_bytes());
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(tag));
        let err = verify(&k, &t, 1).expect_err("refused");
        assert_eq!(err, TokenError::MissingClaim { claim: "client_id" });
        assert!(err.to_string().contains("client_id"), "{err}");
        // An empty client is no client either.
        let mut c = claims();
        c.client_id.clear();
        assert_eq!(
            verify(&k, &sign(&k, &c), 1),
            Err(TokenError::MissingClaim { claim: "client_id" })
        );
    }

    #[test]
    fn a_token_fits_only_its_session_client_and_channel() {
        let c = claims();
        assert_eq!(c.check_use("ws-1", "machine-1", "prs:room"), Ok(()));
        // The same session id (a restart, a guess) from another client is refused.
        let e = c
            .check_use("ws-1", "machine-2", "prs:room")
            .expect_err("another client");
        assert_eq!(
            e.to_string(),
            "the channel token is for client `machine-1`, not `machine-2`"
        );
        assert!(matches!(
            c.check_use("ws-2", "machine-1", "prs:room"),
            Err(Misuse::Session { .. })
        ));
        assert!(matches!(
            c.check_use("ws-1", "machine-1", "prs:other"),
            Err(Misuse::Channel { .. })
        ));
    }
}
