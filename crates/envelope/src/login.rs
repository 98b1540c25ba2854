//! Logging in to a relay: the relay opens with a random challenge, the party answers with a
//! login naming who it is and signed by that identity's key, over the challenge. A login is
//! good for one connection to one relay: it cannot be replayed on another connection (the
//! challenge differs) or kept for later (its timestamp must be within
//! [`MAX_LOGIN_SKEW`] of the relay's clock). RMB's peers log in with a JWT in the URL's
//! query string, which lasts 300 s, works on any relay and on any number of connections,
//! and is written to access logs.
//!
//! Signed bytes: `trunkline relay login v1` NUL, the 32-byte challenge, `u8` who (1 a twin,
//! 2 a relay), then for a twin `u32` id and `opt str8` session, for a relay `str8` its
//! name; `u64` timestamp. The login on the wire is those bytes without the domain, then the
//! 64-byte signature.

use crate::envelope::valid_session;
use crate::identity::{Identity, PublicKey};

/// What a login's signature covers first.
pub const LOGIN_DOMAIN: &[u8] = b"trunkline relay login v1\0";
/// How far a login's timestamp may be from the relay's clock, in seconds.
pub const MAX_LOGIN_SKEW: u64 = 60;
/// Length of a relay's challenge.
pub const CHALLENGE_LEN: usize = 32;

/// Who logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// A twin, with its session (`None`: the twin's default one, as RMB's `rmb-peer`).
    Twin { id: u32, session: Option<String> },
    /// Another relay, by the name twins list it under.
    Relay { name: String },
}

/// A login: who, when, over which challenge, and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub challenge: [u8; CHALLENGE_LEN],
    pub who: Who,
    pub timestamp: u64,
    pub signature: [u8; 64],
}

/// Why a login is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("not a login: {0}")]
    Malformed(&'static str),
    #[error("the login answers another challenge")]
    WrongChallenge,
    #[error("the login's timestamp is {0} s from the relay's clock; at most {MAX_LOGIN_SKEW} s is allowed")]
    Time(u64),
    #[error("the login's signature is not the key's")]
    BadSignature,
}

impl Login {
    /// Makes and signs a login.
    pub fn sign(
        identity: &Identity,
        challenge: [u8; CHALLENGE_LEN],
        who: Who,
        timestamp: u64,
    ) -> Result<Login, LoginError> {
        let mut login = Login {
            challenge,
            who,
            timestamp,
            signature: [0; 64],
        };
        let mut m = LOGIN_DOMAIN.to_vec();
        m.extend_from_slice(&login.body()?);
        login.signature = identity.sign(&m);
        Ok(login)
    }

    fn body(&self) -> Result<Vec<u8>, LoginError> {
        let mut b = Vec::with_capacity(CHALLENGE_LEN + 80);
        b.extend_from_slice(&self.challenge);
        match &self.who {
            Who::Twin { id, session } => {
                b.push(1);
                b.extend_from_slice(&id.to_be_bytes());
                match session {
                    Some(s) if valid_session(s) => {
                        b.push(1);
                        b.push(s.len() as u8);
                        b.extend_from_slice(s.as_bytes());
                    }
                    Some(_) => return Err(LoginError::Malformed("session")),
                    None => b.push(0),
                }
            }
            Who::Relay { name } => {
                if name.is_empty() || name.len() > 255 {
                    return Err(LoginError::Malformed("relay name"));
                }
                b.push(2);
                b.push(name.len() as u8);
                b.extend_from_slice(name.as_bytes());
            }
        }
        b.extend_from_slice(&self.timestamp.to_be_bytes());
        Ok(b)
    }

    /// The login as sent.
    pub fn encode(&self) -> Result<Vec<u8>, LoginError> {
        let mut b = self.body()?;
        b.extend_from_slice(&self.signature);
        Ok(b)
    }

    /// Reads a login; refuses anything but exactly one.
    pub fn decode(bytes: &[u8]) -> Result<Login, LoginError> {
        let mut r = bytes;
        let mut take = |n: usize, what: &'static str| -> Result<&[u8], LoginError> {
            if r.len() < n {
                return Err(LoginError::Malformed(what));
            }
            let (a, b) = r.split_at(n);
            r = b;
            Ok(a)
        };
        let mut challenge = [0; CHALLENGE_LEN];
        challenge.copy_from_slice(take(CHALLENGE_LEN, "challenge")?);
        let who = match take(1, "who")?[0] {
            1 => {
                let id = u32::from_be_bytes(take(4, "twin")?.try_into().unwrap_or_default());
                let session = match take(1, "session")?[0] {
                    0 => None,
                    1 => {
                        let n = take(1, "session")?[0] as usize;
                        let s = std::str::from_utf8(take(n, "session")?)
                            .ok()
                            .filter(|s| valid_session(s))
                            .ok_or(LoginError::Malformed("session"))?;
                        Some(s.to_owned())
                    }
                    _ => return Err(LoginError::Malformed("session")),
                };
                Who::Twin { id, session }
            }
            2 => {
                let n = take(1, "relay name")?[0] as usize;
                let name = std::str::from_utf8(take(n, "relay name")?)
                    .ok()
                    .filter(|s| !s.is_empty())
                    .ok_or(LoginError::Malformed("relay name"))?;
                Who::Relay {
                    name: name.to_owned(),
                }
            }
            _ => return Err(LoginError::Malformed("who")),
        };
        let timestamp = u64::from_be_bytes(take(8, "timestamp")?.try_into().unwrap_or_default());
        let mut signature = [0; 64];
        signature.copy_from_slice(take(64, "signature")?);
        if !r.is_empty() {
            return Err(LoginError::Malformed("bytes after the signature"));
        }
        Ok(Login {
            challenge,
            who,
            timestamp,
            signature,
        })
    }

    /// Checks the login answers `challenge`, is current at `now` and is signed by `key`.
    pub fn verify(
        &self,
        challenge: &[u8; CHALLENGE_LEN],
        key: &PublicKey,
        now: u64,
    ) -> Result<(), LoginError> {
        if &self.challenge != challenge {
            return Err(LoginError::WrongChallenge);
        }
        let skew = self.timestamp.abs_diff(now);
        if skew > MAX_LOGIN_SKEW {
            return Err(LoginError::Time(skew));
        }
        let mut m = LOGIN_DOMAIN.to_vec();
        m.extend_from_slice(&self.body()?);
        if !key.verify(&m, &self.signature) {
            return Err(LoginError::BadSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twin(session: Option<&str>) -> Who {
        Who::Twin {
            id: 41,
            session: session.map(str::to_owned),
        }
    }

    #[test]
    fn a_login_verifies_once_for_its_challenge_key_and_time() {
        let alice = Identity::from_seed(&[1; 32]);
        let mallory = Identity::from_seed(&[9; 32]);
        let challenge = [7; 32];
        for who in [
            twin(None),
            twin(Some("s1")),
            Who::Relay {
                name: "relay.example:8080".into(),
            },
        ] {
            let login = Login::sign(&alice, challenge, who, 1000).unwrap();
            let wire = login.encode().unwrap();
            let back = Login::decode(&wire).unwrap();
            assert_eq!(back, login);
            back.verify(&challenge, &alice.public(), 1030).unwrap();
            assert_eq!(
                back.verify(&[8; 32], &alice.public(), 1000),
                Err(LoginError::WrongChallenge)
            );
            assert_eq!(
                back.verify(&challenge, &mallory.public(), 1000),
                Err(LoginError::BadSignature)
            );
            assert_eq!(
                back.verify(&challenge, &alice.public(), 1061),
                Err(LoginError::Time(61))
            );
            // Every byte of the login counts.
            for i in 0..wire.len() {
                let mut bad = wire.clone();
                bad[i] ^= 1;
                if let Ok(l) = Login::decode(&bad) {
                    assert!(
                        l.verify(&challenge, &alice.public(), 1000).is_err(),
                        "byte {i}"
                    );
                }
            }
            assert!(Login::decode(&wire[..wire.len() - 1]).is_err());
            let mut long = wire.clone();
            long.push(0);
            assert!(Login::decode(&long).is_err());
        }
    }

    #[test]
    fn a_login_with_an_impossible_session_is_refused() {
        let alice = Identity::from_seed(&[1; 32]);
        assert!(Login::sign(&alice, [0; 32], twin(Some("a:b")), 1).is_err());
        assert!(Login::sign(&alice, [0; 32], twin(Some("")), 1).is_err());
    }
}
