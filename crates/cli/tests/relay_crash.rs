//! A relay killed -9 while a twin sends to a session that is offline, then restarted: every
//! envelope the relay had stored (its session queue's depth, read before the kill) reaches
//! the session when it connects, in the order sent, each once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use trunkline_client::peer::{Draft, Peer, PeerConfig};
use trunkline_client::Client;
use trunkline_envelope::{Address, Identity};
use trunkline_testkit::ProcessServer;

/// Envelopes the sender sends (bounded in count and time).
const N: u32 = 400;

async fn depth(admin: &Client, queue: &str) -> u64 {
    admin.get_queue(queue).await.map_or(0, |q| q.depth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_sessions_envelopes_survive_a_relay_kill_9() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_trunkline"));
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("node");
    let mut node = ProcessServer::start(&bin, &data).expect("start");
    let creds = node.admin_credentials();
    let admin = Client::new(&node.http, &creds.client_id, &creds.secret).expect("admin");
    let (alice_key, bob_key) = (Identity::from_seed(&[1; 32]), Identity::from_seed(&[2; 32]));
    let alice = admin
        .register_twin(&alice_key, &[])
        .await
        .expect("alice")
        .id;
    let bob = admin.register_twin(&bob_key, &[]).await.expect("bob").id;
    let queue = trunkline_server::relay::Relay::queue_name(&Address::twin(bob));

    // Alice sends while bob is away; the relay is killed once it has stored some.
    let (a, _a_in) =
        Peer::start(PeerConfig::new(alice_key.clone(), alice, &node.http)).expect("peer");
    let mut sent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stored_before_kill = 0;
    for i in 0..N {
        let uid = a
            .send(Draft::request(
                Address::twin(bob),
                "job",
                i.to_be_bytes().to_vec(),
            ))
            .await
            .expect("send");
        sent.push(uid);
        if i == N / 2 {
            // Under load: the other half is still being sent.
            while depth(&admin, &queue).await < 50 {
                assert!(Instant::now() < deadline, "the relay stores nothing");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stored_before_kill = depth(&admin, &queue).await;
            node.kill9();
            break;
        }
    }
    drop(a);

    let node = ProcessServer::start(&bin, &data).expect("restart");
    let creds = node.admin_credentials();
    let admin = Client::new(&node.http, &creds.client_id, &creds.secret).expect("admin");
    let after = depth(&admin, &queue).await;
    assert!(
        after >= stored_before_kill,
        "stored before the kill: {stored_before_kill}, after the restart: {after}"
    );

    let (_b, mut b_in) = Peer::start(PeerConfig::new(bob_key, bob, &node.http)).expect("peer");
    let mut got = Vec::new();
    while (got.len() as u64) < after {
        let e = tokio::time::timeout(Duration::from_secs(20), b_in.recv())
            .await
            .expect("all in time")
            .expect("peer runs");
        got.push(e.uid);
    }
    // Nothing more comes.
    assert!(tokio::time::timeout(Duration::from_secs(1), b_in.recv())
        .await
        .is_err());
    let distinct: HashSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "each once");
    // In the order sent: positions in `sent` increase.
    let pos: Vec<usize> = got
        .iter()
        .map(|u| {
            sent.iter()
                .position(|s| s == u)
                .expect("an envelope alice sent")
        })
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "in order: {pos:?}");
    println!(
        "sent {} before the kill, stored {stored_before_kill} when killed, {after} after the restart, all {} delivered",
        sent.len(),
        got.len()
    );
}
