//! A relay killed -9 while a twin sends to a session that is offline, then restarted on
//! its address: the sender's gateway keeps what the relay did not confirm storing
//! (`{"stored": n}`) and sends it again once the relay is back, so every envelope sent
//! reaches the session when it connects, each once (its gateway's replay window drops
//! the ones the relay had stored and got again).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use trunkline_client::peer::{Draft, Peer, PeerConfig};
use trunkline_client::Client;
use trunkline_envelope::{Address, Identity};
use trunkline_testkit::{free_port, ProcessServer};

/// Envelopes the sender sends (bounded in count and time).
const N: u32 = 400;

async fn depth(admin: &Client, queue: &str) -> u64 {
    admin.get_queue(queue).await.map_or(0, |q| q.depth)
}

fn start(bin: &Path, data: &Path, port: u16) -> ProcessServer {
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "serve",
        "--http",
        &format!("127.0.0.1:{port}"),
        "--backend",
        "127.0.0.1:0",
    ])
    .args(["--stomp", "127.0.0.1:0", "--data-dir"])
    .arg(data)
    .env("TRUNKLINE_LOG_LEVEL", "warn");
    ProcessServer::spawn(cmd, data).expect("start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_sent_survives_a_relay_kill_9() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_trunkline"));
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("node");
    let port = free_port();
    let mut node = start(&bin, &data, port);
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

    // Alice sends while bob is away; the relay is killed while it stores them, and
    // restarted on its address.
    let (a, _a_in) =
        Peer::start(PeerConfig::new(alice_key.clone(), alice, &node.http)).expect("peer");
    let mut sent = HashSet::new();
    for i in 0..N {
        let uid = a
            .send(Draft::request(
                Address::twin(bob),
                "job",
                i.to_be_bytes().to_vec(),
            ))
            .await
            .expect("send");
        sent.insert(uid);
    }
    // All are on their way (written, or waiting for the connection): kill the relay
    // once it stored a quarter of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while depth(&admin, &queue).await < u64::from(N / 4) {
        assert!(Instant::now() < deadline, "the relay stores nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.kill9();
    let stored_when_killed = {
        // Read from the data directory by the restarted node.
        node = start(&bin, &data, port);
        let creds = node.admin_credentials();
        let admin = Client::new(&node.http, &creds.client_id, &creds.secret).expect("admin");
        depth(&admin, &queue).await
    };
    let admin = {
        let creds = node.admin_credentials();
        Client::new(&node.http, &creds.client_id, &creds.secret).expect("admin")
    };
    // Everything reaches the relay's queue (some perhaps twice: sent again when their
    // confirmation was lost with the relay).
    while depth(&admin, &queue).await < u64::from(N) {
        assert!(
            Instant::now() < deadline,
            "stored: {}",
            depth(&admin, &queue).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = depth(&admin, &queue).await;

    let (_b, mut b_in) = Peer::start(PeerConfig::new(bob_key, bob, &node.http)).expect("peer");
    let mut got = HashSet::new();
    while got.len() < sent.len() {
        let e = tokio::time::timeout(Duration::from_secs(20), b_in.recv())
            .await
            .expect("all in time")
            .expect("peer runs");
        assert!(sent.contains(&e.uid), "an envelope alice sent");
        assert!(got.insert(e.uid), "each once");
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(1), b_in.recv())
            .await
            .is_err(),
        "nothing more"
    );
    println!(
        "sent {N}; {stored_when_killed} stored when the relay was killed (read after the restart); {stored} stored in the end ({} sent again); all {} delivered once",
        stored - u64::from(N),
        got.len()
    );
}
