//! The twin registry: who a twin is (its key) and where it is reached (its relays), as
//! relays and gateways look twins up (RMB keeps this on its chain).
//!
//! A client of the node registers a twin by presenting the twin's claim, signed by the
//! twin's key: proof that it holds the key (at most [`MAX_TWINS_PER_CLIENT`] each, one twin
//! per key). Anyone may then change a twin with a newer claim signed by the key the
//! registry holds for it (the twin hands its id to a new key that way). Claims more than
//! [`MAX_CLAIM_SKEW`] seconds away from the node's clock are refused, and a change must be
//! newer than the last: a captured claim cannot be played again.

use serde::{Deserialize, Serialize};
use trunkline_envelope::{PublicKey, TwinClaim};
use trunkline_store::{Op, RecordTable};

use crate::changes::Change;
use crate::{read, Broker, BrokerError, Principal};

/// Most twins one client may register.
pub const MAX_TWINS_PER_CLIENT: usize = 16;
/// How far a claim's timestamp may be from the node's clock, in seconds.
pub const MAX_CLAIM_SKEW: u64 = 300;

/// A twin as stored (JSON in the `twins` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinRecord {
    pub id: u32,
    /// `ed25519:…`
    pub key: String,
    pub relays: Vec<String>,
    /// The timestamp of the claim it holds.
    pub updated: u64,
    /// The client that registered it.
    pub owner: String,
}

pub(crate) fn twin_put(rec: &TwinRecord) -> Op {
    Op::PutRecord {
        table: RecordTable::Twins,
        key: rec.id.to_string(),
        value: serde_json::to_vec(rec).unwrap_or_default(),
    }
}

fn check_claim(
    claim: &TwinClaim,
    signer: &PublicKey,
    signature: &[u8; 64],
    now: u64,
) -> Result<(), BrokerError> {
    if claim.timestamp.abs_diff(now) > MAX_CLAIM_SKEW {
        return Err(BrokerError::Forbidden(format!(
            "the claim's timestamp is {} s from this node's clock; at most {MAX_CLAIM_SKEW} s is allowed",
            claim.timestamp.abs_diff(now)
        )));
    }
    claim
        .verify(signer, signature)
        .map_err(|e| BrokerError::Forbidden(e.to_string()))
}

impl Broker {
    /// Checks a new twin's claim (its id 0) for client `who` and picks the twin's id;
    /// applying [`Change::PutTwin`] registers it.
    pub fn plan_register_twin(
        &self,
        who: &Principal,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> Result<TwinRecord, BrokerError> {
        who.access()?;
        if claim.id != 0 {
            return Err(BrokerError::InvalidArgument(
                "a new twin's claim has id 0: the registry picks the id".into(),
            ));
        }
        check_claim(&claim, &claim.key, &signature, now)?;
        let key = claim.key.to_text();
        let reg = read(&self.inner.registry);
        if let Some(t) = reg.twins.values().find(|t| t.key == key) {
            return Err(BrokerError::TwinKeyTaken(t.id));
        }
        let owned = reg
            .twins
            .values()
            .filter(|t| *t.owner == *who.client_id)
            .count();
        if owned >= MAX_TWINS_PER_CLIENT {
            return Err(BrokerError::Forbidden(format!(
                "client `{}` has registered {owned} twins, as many as a client may",
                who.client_id
            )));
        }
        let id = reg
            .twins
            .keys()
            .next_back()
            .map_or(1, |last| last.saturating_add(1));
        if id == u32::MAX {
            return Err(BrokerError::Unavailable("no twin ids left".into()));
        }
        Ok(TwinRecord {
            id,
            key,
            relays: claim.relays,
            updated: claim.timestamp,
            owner: who.client_id.to_string(),
        })
    }

    /// Checks a change of twin `claim.id`: signed by the key the registry holds for it,
    /// and newer than the claim it holds; the twin as it would be after.
    pub fn plan_update_twin(
        &self,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> Result<TwinRecord, BrokerError> {
        let mut rec = self
            .get_twin(claim.id)
            .ok_or(BrokerError::UnknownTwin(claim.id))?;
        let holder = PublicKey::from_text(&rec.key)
            .map_err(|e| BrokerError::Unavailable(format!("twin {}: stored key: {e}", rec.id)))?;
        check_claim(&claim, &holder, &signature, now)?;
        if claim.timestamp <= rec.updated {
            return Err(BrokerError::Forbidden(format!(
                "twin {} holds a claim of {}; a change must be newer",
                rec.id, rec.updated
            )));
        }
        let key = claim.key.to_text();
        if let Some(t) = read(&self.inner.registry)
            .twins
            .values()
            .find(|t| t.key == key && t.id != rec.id)
        {
            return Err(BrokerError::TwinKeyTaken(t.id));
        }
        rec.key = key;
        rec.relays = claim.relays;
        rec.updated = claim.timestamp;
        Ok(rec)
    }

    /// Registers the twin of `claim` (its id 0) for client `who`; returns it with its id.
    pub async fn register_twin(
        &self,
        who: &Principal,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> Result<TwinRecord, BrokerError> {
        let _admin = self.inner.admin.lock().await;
        let twin = self.plan_register_twin(who, claim, signature, now)?;
        self.apply_locked(&Change::PutTwin {
            twin: twin.clone(),
            new: true,
        })
        .await?;
        Ok(twin)
    }

    /// Changes twin `claim.id` to what the claim says, if the key it holds signed it and it
    /// is newer than the claim it holds.
    pub async fn update_twin(
        &self,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> Result<TwinRecord, BrokerError> {
        let _admin = self.inner.admin.lock().await;
        let twin = self.plan_update_twin(claim, signature, now)?;
        self.apply_locked(&Change::PutTwin {
            twin: twin.clone(),
            new: false,
        })
        .await?;
        Ok(twin)
    }

    pub fn get_twin(&self, id: u32) -> Option<TwinRecord> {
        read(&self.inner.registry).twins.get(&id).cloned()
    }

    /// The twin holding `key` (`ed25519:…`).
    pub fn find_twin(&self, key: &str) -> Option<TwinRecord> {
        read(&self.inner.registry)
            .twins
            .values()
            .find(|t| t.key == key)
            .cloned()
    }
}
