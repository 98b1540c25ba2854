//! The log on disk, through the real binary: a headerless segment left by an earlier
//! version loses nothing, damage stops the node with a message saying what to do,
//! `trunkline store check` and `store recover` do what they say, and a second node on the
//! same data directory is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trunkline_testkit::{create_client, token, ProcessServer};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trunkline"))
}

fn run(args: &[&str], data: &Path) -> Output {
    Command::new(bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run trunkline")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// SIGTERM, and wait (at most 20 s) for a clean exit.
fn stop(mut node: ProcessServer) {
    let status = Command::new("kill")
        .args(["-TERM", &node.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let start = Instant::now();
    loop {
        if let Some(s) = node.child.try_wait().expect("wait") {
            assert!(s.success(), "exit status {s}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Creates client `c` (subscribed to `x.#`) and sends it `n` messages; returns its secret.
async fn fill(node: &ProcessServer, n: usize) -> String {
    let http = reqwest::Client::new();
    let admin = node.admin_credentials();
    let admin_token = token(&http, &node.http, "admin", &admin.secret).await;
    let secret = create_client(&http, &node.http, &admin_token, "c", "x.#").await;
    for i in 0..n {
        let r = http
            .post(format!("{}/send", node.http))
            .bearer_auth(&admin_token)
            .json(&json!({"topic": "x.1", "body": {"i": i, "pad": "p".repeat(200)}}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 202);
    }
    secret
}

/// What client `c` finds in its inbox (the `i` of each message).
async fn drain(node: &ProcessServer, secret: &str) -> Vec<u64> {
    let http = reqwest::Client::new();
    let t = token(&http, &node.http, "c", secret).await;
    let msgs: Vec<Value> = http
        .get(format!("{}/receive?max_messages=100", node.http))
        .bearer_auth(&t)
        .send()
        .await
        .expect("receive")
        .json()
        .await
        .expect("json");
    msgs.iter()
        .filter_map(|m| m["body"]["i"].as_u64())
        .collect()
}

/// Issue 12's reproduction: an empty first segment (what an earlier version left when
/// power went before the segment's header was synced) cost every commit made after it.
#[tokio::test]
async fn a_segment_without_a_header_loses_nothing_committed_after_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("log")).expect("mkdir");
    std::fs::write(data.join("log/00000000000000000001.seg"), b"").expect("empty segment");
    let node = ProcessServer::start(&bin(), &data).expect("start");
    let secret = fill(&node, 3).await;
    stop(node);
    let node = ProcessServer::start(&bin(), &data).expect("restart");
    assert_eq!(drain(&node, &secret).await, vec![0, 1, 2]);
}

#[tokio::test]
async fn damage_stops_the_node_until_store_recover_cuts_the_log_there() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let node = ProcessServer::start(&bin(), &data).expect("start");
    let secret = fill(&node, 6).await;
    stop(node);

    let clean = run(&["store", "check"], &data);
    assert!(clean.status.success(), "{}", text(&clean));
    assert!(text(&clean).contains("whole"), "{}", text(&clean));

    // One bit in the middle of the segment: whole frames follow it.
    let seg = data.join("log/00000000000000000001.seg");
    let mut bytes = std::fs::read(&seg).expect("segment");
    let end = bytes.iter().rposition(|b| *b != 0).expect("frames");
    let at = end / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&seg, &bytes).expect("damage");

    let refused = ProcessServer::start(&bin(), &data);
    let why = match refused {
        Ok(_) => panic!("the node started on a damaged log"),
        Err(e) => e.to_string(),
    };
    assert!(why.contains("damaged at offset"), "{why}");
    assert!(why.contains("trunkline store recover"), "{why}");
    assert_eq!(
        std::fs::read(&seg).expect("segment"),
        bytes,
        "a refused start changed the log"
    );

    let checked = run(&["store", "check"], &data);
    assert_eq!(checked.status.code(), Some(1), "{}", text(&checked));
    assert!(
        text(&checked).contains("DAMAGED at offset"),
        "{}",
        text(&checked)
    );

    let recovered = run(&["store", "recover"], &data);
    assert!(recovered.status.success(), "{}", text(&recovered));
    assert!(
        text(&recovered).contains("cut segment 1 at offset"),
        "{}",
        text(&recovered)
    );
    assert!(text(&recovered).contains("dropped"), "{}", text(&recovered));

    // What came before the damage is there; the node runs again.
    let node = ProcessServer::start(&bin(), &data).expect("start after recovery");
    let got = drain(&node, &secret).await;
    assert!(got.len() < 6, "nothing was dropped: {got:?}");
    assert_eq!(got, (0..got.len() as u64).collect::<Vec<_>>());
    let again = run(&["store", "recover"], &data);
    assert!(
        !again.status.success(),
        "recover ran beside a running node: {}",
        text(&again)
    );
    assert!(text(&again).contains("another process"), "{}", text(&again));
}

#[test]
fn a_second_node_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let _first = ProcessServer::start(&bin(), &data).expect("start");
    match ProcessServer::start(&bin(), &data) {
        Ok(_) => panic!("two nodes run on one data directory"),
        Err(e) => assert!(e.to_string().contains("another process"), "{e}"),
    }
}
