//! The twin registry: a twin registered by the key it holds, changed only by that key with a
//! newer claim, one twin per key, and kept across a restart.

use std::sync::Arc;

use trunkline_broker::{Broker, BrokerConfig, BrokerError, NewClient};
use trunkline_envelope::{Identity, TwinClaim};
use trunkline_store::LogStore;

const NOW: u64 = 1_800_000_000;

fn open(dir: &std::path::Path) -> Broker {
    let store = Arc::new(LogStore::open_with(dir, 64 << 10).expect("open log"));
    Broker::open(store, BrokerConfig::default(), NOW * 1000).expect("open broker")
}

fn claim(id: u32, key: &Identity, relays: &[&str], ts: u64) -> TwinClaim {
    TwinClaim {
        id,
        key: key.public(),
        relays: relays.iter().map(|r| r.to_string()).collect(),
        timestamp: ts,
    }
}

#[tokio::test]
async fn twins_are_registered_and_changed_by_their_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    b.create_client(NewClient::new("c", "C", vec!["x".into()]), 0)
        .await
        .unwrap();
    let who = b.principal("c").unwrap();
    let alice = Identity::from_seed(&[1; 32]);
    let c = claim(0, &alice, &["r1.example"], NOW);
    let sig = c.sign(&alice).unwrap();
    let t = b.register_twin(&who, c.clone(), sig, NOW).await.unwrap();
    assert_eq!(
        (t.id, t.relays.clone()),
        (1, vec!["r1.example".to_string()])
    );
    // The same key again, and a claim signed by another key, are refused.
    let again = b.register_twin(&who, c.clone(), sig, NOW).await;
    assert!(
        matches!(again, Err(BrokerError::TwinKeyTaken(1))),
        "{again:?}"
    );
    let mallory = Identity::from_seed(&[9; 32]);
    let forged = claim(0, &alice, &["evil.example"], NOW);
    let r = b
        .register_twin(&who, forged.clone(), forged.sign(&mallory).unwrap(), NOW)
        .await;
    assert!(matches!(r, Err(BrokerError::Forbidden(_))), "{r:?}");
    // A claim far from the node's clock is refused.
    let old = claim(0, &mallory, &[], NOW - 1000);
    let r = b
        .register_twin(&who, old.clone(), old.sign(&mallory).unwrap(), NOW)
        .await;
    assert!(matches!(r, Err(BrokerError::Forbidden(_))), "{r:?}");

    // Changes: newer, signed by the key held; Mallory cannot take twin 1.
    let take = claim(1, &mallory, &["evil.example"], NOW + 1);
    let r = b
        .update_twin(take.clone(), take.sign(&mallory).unwrap(), NOW + 1)
        .await;
    assert!(matches!(r, Err(BrokerError::Forbidden(_))), "{r:?}");
    let moved = claim(1, &alice, &["r2.example", "r3.example"], NOW + 2);
    let sig = moved.sign(&alice).unwrap();
    b.update_twin(moved.clone(), sig, NOW + 2).await.unwrap();
    // The same claim again is not newer: a captured change cannot be played back.
    let r = b.update_twin(moved, sig, NOW + 3).await;
    assert!(matches!(r, Err(BrokerError::Forbidden(_))), "{r:?}");
    // Alice hands her twin to a new key, signing with the old one.
    let alice2 = Identity::from_seed(&[2; 32]);
    let rotate = claim(1, &alice2, &["r2.example"], NOW + 4);
    b.update_twin(rotate.clone(), rotate.sign(&alice).unwrap(), NOW + 4)
        .await
        .unwrap();
    let old_key = claim(1, &alice, &[], NOW + 5);
    let r = b
        .update_twin(old_key.clone(), old_key.sign(&alice).unwrap(), NOW + 5)
        .await;
    assert!(
        matches!(r, Err(BrokerError::Forbidden(_))),
        "the old key no longer holds it"
    );
    let r = b
        .update_twin(claim(7, &alice, &[], NOW), [0; 64], NOW)
        .await;
    assert!(matches!(r, Err(BrokerError::UnknownTwin(7))));
    b.shutdown().ok().expect("sole handle");

    let b = open(dir.path());
    let t = b.get_twin(1).expect("kept");
    assert_eq!(t.key, alice2.public().to_text());
    assert_eq!(t.relays, vec!["r2.example".to_string()]);
    assert_eq!(
        b.find_twin(&alice2.public().to_text()).map(|t| t.id),
        Some(1)
    );
    assert!(b.find_twin(&alice.public().to_text()).is_none());
}
