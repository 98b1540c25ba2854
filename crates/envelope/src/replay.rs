//! A replay window: each signed envelope is taken once until it expires.
//!
//! Keyed by the signature. Signatures are verified strictly (one message, one signature)
//! and ed25519 signs deterministically, so the same signed envelope sent again has the same
//! key, and any other envelope another one: a response that carries its request's uid, or
//! a request sent to several twins with one uid (one envelope each), pass, as RMB means
//! them to; a replay of one of them does not. An entry is kept until its envelope expires,
//! after which the envelope is refused as expired anyway.
//!
//! Bounded: at `capacity` the entry that expires first is dropped (a replay of that one
//! would then pass until it expires; size the window for the traffic of a TTL).

use std::collections::{BTreeSet, HashMap};

use crate::envelope::{Envelope, EnvelopeError};

/// Envelopes seen and not yet expired.
#[derive(Debug)]
pub struct ReplayWindow {
    seen: HashMap<[u8; 64], u64>,
    by_expiry: BTreeSet<(u64, [u8; 64])>,
    capacity: usize,
}

impl ReplayWindow {
    pub fn new(capacity: usize) -> Self {
        ReplayWindow {
            seen: HashMap::new(),
            by_expiry: BTreeSet::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Takes `env` (already verified and current at `now`) if it was not seen before.
    pub fn check(&mut self, env: &Envelope, now: u64) -> Result<(), EnvelopeError> {
        // What expired is refused as expired from now on: forget it.
        while let Some(&(expires, sig)) = self.by_expiry.first() {
            if expires > now {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&sig);
        }
        if self.seen.contains_key(&env.signature) {
            return Err(EnvelopeError::Replay);
        }
        if self.seen.len() >= self.capacity {
            if let Some((_, sig)) = self.by_expiry.pop_first() {
                self.seen.remove(&sig);
            }
        }
        let expires = env.expires_at();
        self.seen.insert(env.signature, expires);
        self.by_expiry.insert((expires, env.signature));
        Ok(())
    }
}
