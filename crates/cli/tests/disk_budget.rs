//! The disk budget (`store.max_disk_bytes`): a consumer that does not keep up fills the
//! log; publishes are then refused with 507 `disk_full` (nothing accepted is dropped); once
//! the consumer drains its inbox, compaction gives the space back and publishes are
//! accepted again.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trunkline_testkit::{create_client, metric, metrics_text, token, TestServer};

const BUDGET: u64 = 6 << 20;
const BODY: usize = 16 << 10;

async fn publish(http: &reqwest::Client, base: &str, t: &str, i: u64) -> (u16, Value) {
    let r = http
        .post(format!("{base}/send"))
        .bearer_auth(t)
        .json(&json!({"topic": "disk.x", "body": {"i": i, "pad": "p".repeat(BODY)}}))
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn past_the_disk_budget_publishes_wait_for_consumers_and_nothing_is_lost() {
    let node = TestServer::start_with(|c| {
        c.store.segment_mib = 1;
        c.store.max_disk_bytes = BUDGET;
    })
    .await;
    let base = node.http.clone();
    let http = reqwest::Client::new();
    let admin = node.admin_token().await;
    // The admin's inbox (subscribed to `#`) would keep every body: moved aside.
    let r = http
        .patch(format!("{base}/client/admin"))
        .bearer_auth(&admin)
        .json(&json!({"subscription": "nothing.here"}))
        .send()
        .await
        .expect("patch admin");
    assert!(r.status().is_success());
    let secret = create_client(&http, &base, &admin, "slow", "disk.#").await;
    let slow = token(&http, &base, "slow", &secret).await;

    // Fill: the budget holds about 6 MiB / 16 KiB ≈ 380 messages.
    let mut accepted = Vec::new();
    let mut refusal = None;
    for i in 0..2_000u64 {
        let (status, body) = publish(&http, &base, &admin, i).await;
        match status {
            202 => accepted.push(i),
            507 => {
                refusal = Some(body);
                break;
            }
            other => panic!("publish {i}: {other} {body}"),
        }
    }
    let refusal = refusal.expect("the budget never filled");
    assert_eq!(refusal["error"]["code"], "disk_full", "{refusal}");
    let why = refusal["error"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("max_disk_bytes"), "{why}");
    assert!(accepted.len() > 100, "only {} accepted", accepted.len());

    // Refused while full, however often it is tried.
    for i in 0..5 {
        assert_eq!(publish(&http, &base, &admin, 10_000 + i).await.0, 507);
    }

    // The consumer catches up: everything accepted is there, once, in order.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < accepted.len() {
        assert!(
            Instant::now() < deadline,
            "drained {} of {}",
            got.len(),
            accepted.len()
        );
        let msgs: Vec<Value> = http
            .get(format!("{base}/receive?max_messages=100"))
            .bearer_auth(&slow)
            .send()
            .await
            .expect("receive")
            .json()
            .await
            .expect("json");
        got.extend(msgs.iter().filter_map(|m| m["body"]["i"].as_u64()));
    }
    assert_eq!(got, accepted);

    // Compaction gives the space back; publishes are accepted again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = publish(&http, &base, &admin, 20_000).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 507, "{body}");
        assert!(
            Instant::now() < deadline,
            "the space never came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = metrics_text(&http, &node.backend, &node.backend_key).await;
    assert_eq!(
        metric(&metrics, "trunkline_store_disk_max_bytes"),
        Some(BUDGET)
    );
    assert!(metric(&metrics, "trunkline_store_disk_bytes").is_some_and(|b| b < BUDGET));
}
