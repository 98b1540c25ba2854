//! Credentials for Trunkline: client secrets, signed tokens, backend keys, throttling.
//!
//! Modules:
//! - [`secret`]: generating client secrets and storing them only as salted hashes.
//! - [`token`]: HMAC-SHA256 signed, expiring bearer tokens bound to one credential.
//! - [`throttle`]: counting failed logins per (address, client), per address and per client,
//!   and refusing for a while after too many.
//! - [`channel`]: channel tokens (JWT, HS256) binding a WebSocket session and its client to
//!   one channel.
//!
//! No I/O, no async, no clock of its own: time is always an argument.
//!
//! ```
//! use trunkline_auth::{generate_secret, Claims, SecretHash, TokenKey};
//! let secret = generate_secret();
//! let stored = SecretHash::of(&secret);
//! assert!(stored.verify(&secret));
//! let key = TokenKey::generate();
//! let token = key.sign(&Claims { sub: "noc-c2".into(), cid: "c1".into(), exp: 2_000 });
//! assert_eq!(key.verify(&token, 1_000).unwrap().sub, "noc-c2");
//! assert!(key.verify(&token, 2_001).is_err());
//! ```

pub mod channel;
pub mod secret;
pub mod throttle;
pub mod token;

pub use channel::ChannelClaims;
pub use secret::{constant_time_eq, generate_credential_id, generate_secret, SecretHash};
pub use throttle::{Throttle, ThrottleLimits};
pub use token::{Claims, TokenError, TokenKey};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

/// `n` random bytes from the OS-seeded generator, base64url without padding.
pub(crate) fn random_b64(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}
