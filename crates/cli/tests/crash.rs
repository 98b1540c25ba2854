//! Durability under `kill -9`: concurrent publishers and consumers run against the real
//! binary, which is killed several times and restarted on the same data directory. Then
//! every inbox is drained. Half the consumers take their inbox with `/receive` and `/ack`,
//! the other half as pushes over a WebSocket session, acked there. What must hold:
//! - every publish that got a 202 is delivered (during the run or in the final drain);
//! - no delivery whose ack was confirmed is ever delivered again;
//! - nothing is delivered that was never sent.
//!
//! Duplicates of deliveries that were not acked yet (at-least-once) are allowed; they are
//! counted and printed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trunkline_testkit::{token, ProcessServer};

const CLIENTS: usize = 4;
const PUBLISHERS: usize = 8;
const ROUNDS: usize = 3;
/// Load time per round before the kill.
const LOAD: Duration = Duration::from_millis(1500);

type Key = (u64, u64);

#[derive(Default)]
struct Ledger {
    /// Publishes answered 202.
    accepted: HashSet<Key>,
    /// Deliveries whose ack the node confirmed.
    acked: HashSet<Key>,
    /// Every delivery seen, with how often.
    seen: HashMap<Key, u32>,
    /// Deliveries of an already-acked message: must stay zero.
    resurrected: Vec<Key>,
    /// Acks confirmed over WebSocket sessions.
    ws_acked: usize,
}

fn key(body: &Value) -> Option<Key> {
    Some((body["p"].as_u64()?, body["s"].as_u64()?))
}

/// Creates clients `c0`…`c{CLIENTS-1}`, each subscribed to `load.<i>.#`; returns their
/// secrets in order.
async fn create_load_clients(http: &reqwest::Client, base: &str, admin_token: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    for i in 0..CLIENTS {
        let r: Value = http
            .post(format!("{base}/client"))
            .bearer_auth(admin_token)
            .json(&json!({"client_id": format!("c{i}"), "client_name": "c", "subscription": format!("load.{i}.#")}))
            .send()
            .await
            .expect("create client")
            .json()
            .await
            .expect("json");
        secrets.push(r["secret"].as_str().expect("secret").to_owned());
    }
    secrets
}

/// Receives and acks one batch; `Err` once the node is gone.
async fn consume_once(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    ledger: &Mutex<Ledger>,
) -> Result<usize, reqwest::Error> {
    let msgs: Vec<Value> = http
        .get(format!(
            "{base}/receive?ack=manual&lease=60&max_messages=100&wait=1"
        ))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let delivered = record_deliveries(&msgs, ledger);
    if delivered.is_empty() {
        return Ok(0);
    }
    let receipts: Vec<&str> = delivered.iter().map(|(r, _)| r.as_str()).collect();
    let r: Value = http
        .post(format!("{base}/ack"))
        .bearer_auth(token)
        .json(&json!({ "receipts": receipts }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    record_acks(&r, delivered, ledger);
    Ok(msgs.len())
}

/// Records deliveries in the ledger (and any of an already-acked message); returns their
/// receipts and keys.
fn record_deliveries(msgs: &[Value], ledger: &Mutex<Ledger>) -> Vec<(String, Key)> {
    let mut l = ledger.lock().expect("ledger");
    let mut out = Vec::new();
    for m in msgs {
        let k = key(&m["body"]).expect("delivered message has the shape that was sent");
        if l.acked.contains(&k) {
            l.resurrected.push(k);
        }
        *l.seen.entry(k).or_default() += 1;
        out.push((m["receipt"].as_str().expect("receipt").to_owned(), k));
    }
    out
}

/// Marks as acked the deliveries whose receipts the node's ack answer `r` does not list as
/// unknown.
fn record_acks(r: &Value, delivered: Vec<(String, Key)>, ledger: &Mutex<Ledger>) -> usize {
    let unknown: HashSet<&str> = r["unknown"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let mut l = ledger.lock().expect("ledger");
    let mut n = 0;
    for (r, k) in delivered {
        if !unknown.contains(r.as_str()) {
            l.acked.insert(k);
            n += 1;
        }
    }
    n
}

/// Takes an inbox as pushes over a WebSocket session (window 100) and acks them in
/// batches, until `until` or until the node is gone.
async fn consume_ws(base: &str, token: &str, ledger: &Mutex<Ledger>, until: Instant) {
    use trunkline_client::ws::{Event, WsSession};
    let Ok(session) = WsSession::connect(base, token).await else {
        return;
    };
    if session.subscribe_inbox(100, 60).await.is_err() {
        return;
    }
    while Instant::now() < until {
        // A batch: what has come within a few milliseconds of the first push.
        let mut msgs = Vec::new();
        let mut wait = Duration::from_millis(200);
        while msgs.len() < 100 {
            match tokio::time::timeout(wait, session.next_event()).await {
                Ok(Some(Event::Inbox(m))) => msgs.push(m),
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => break,
            }
            wait = Duration::from_millis(5);
        }
        if msgs.is_empty() {
            continue;
        }
        let delivered = record_deliveries(&msgs, ledger);
        let receipts: Vec<String> = delivered.iter().map(|(r, _)| r.clone()).collect();
        match session.ack(&receipts).await {
            Ok(r) => {
                let n = record_acks(&r, delivered, ledger);
                ledger.lock().expect("ledger").ws_acked += n;
            }
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_message() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_trunkline"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    // Set up clients on a first node, and keep their secrets.
    let mut secrets = Vec::new();
    {
        let mut node = ProcessServer::start(&bin, &dir).expect("start node");
        let admin = node.admin_credentials();
        let t = token(&http, &node.http, "admin", &admin.secret).await;
        secrets.extend(create_load_clients(&http, &node.http, &t).await);
        secrets.push(admin.secret);
        node.kill9();
    }

    let mut seq = 0u64;
    let mut in_doubt = 0u64;
    for round in 0..ROUNDS {
        let mut node = ProcessServer::start(&bin, &dir).expect("restart node");
        let base = node.http.clone();
        let pub_token = token(&http, &base, "admin", &secrets[CLIENTS]).await;
        let mut tasks = Vec::new();
        let doubt = Arc::new(Mutex::new(0u64));
        let stop_at = Instant::now() + LOAD + Duration::from_secs(5);
        for p in 0..PUBLISHERS {
            let (http, base, t, ledger, doubt) = (
                http.clone(),
                base.clone(),
                pub_token.clone(),
                ledger.clone(),
                doubt.clone(),
            );
            let p = (round * PUBLISHERS + p) as u64;
            let start = seq;
            tasks.push(tokio::spawn(async move {
                for s in start.. {
                    if Instant::now() > stop_at {
                        break;
                    }
                    let topic = format!("load.{}.m", s as usize % CLIENTS);
                    let body =
                        json!({"topic": topic, "body": {"p": p, "s": s, "pad": "x".repeat(200)}});
                    let r = http
                        .post(format!("{base}/send"))
                        .bearer_auth(&t)
                        .json(&body)
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status() == 202 => {
                            ledger.lock().expect("ledger").accepted.insert((p, s));
                        }
                        Ok(resp) => panic!("publish refused: {}", resp.status()),
                        Err(_) => {
                            // Killed mid-request: the outcome is unknown, either is fine.
                            *doubt.lock().expect("doubt") += 1;
                            break;
                        }
                    }
                }
            }));
        }
        for (i, secret) in secrets.iter().take(CLIENTS).enumerate() {
            let (http, base, ledger) = (http.clone(), base.clone(), ledger.clone());
            let t = token(&http, &base, &format!("c{i}"), secret).await;
            tasks.push(tokio::spawn(async move {
                if i % 2 == 1 {
                    consume_ws(&base, &t, &ledger, stop_at).await;
                    return;
                }
                while Instant::now() < stop_at {
                    if consume_once(&http, &base, &t, &ledger).await.is_err() {
                        break;
                    }
                }
            }));
        }
        tokio::time::sleep(LOAD).await;
        node.kill9();
        for t in tasks {
            t.await.expect("load task");
        }
        in_doubt += *doubt.lock().expect("doubt");
        seq += 1_000_000;
    }

    // Final drain on a clean restart.
    let node = ProcessServer::start(&bin, &dir).expect("final restart");
    for (i, secret) in secrets.iter().take(CLIENTS).enumerate() {
        let t = token(&http, &node.http, &format!("c{i}"), secret).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "drain did not finish");
            let n = consume_once(&http, &node.http, &t, &ledger)
                .await
                .expect("drain");
            if n == 0 {
                break;
            }
        }
    }
    drop(node);

    let l = ledger.lock().expect("ledger");
    let lost: Vec<&Key> = l
        .accepted
        .iter()
        .filter(|k| !l.seen.contains_key(k))
        .collect();
    let never_sent = l.seen.keys().filter(|k| !l.accepted.contains(k)).count();
    let duplicates: u32 = l.seen.values().map(|n| n - 1).sum();
    eprintln!(
        "accepted {} publishes over {ROUNDS} kill -9 rounds; {} delivered; {} acked ({} over WebSocket); \
         {duplicates} redeliveries of unacked messages; {never_sent} delivered whose publish \
         was cut off by the kill (outcome unknown to the publisher; {in_doubt} such requests); \
         lost {}; resurrected after ack {}",
        l.accepted.len(),
        l.seen.len(),
        l.acked.len(),
        l.ws_acked,
        lost.len(),
        l.resurrected.len()
    );
    assert!(
        l.accepted.len() > 100,
        "the load was too small to mean anything"
    );
    assert!(l.ws_acked > 0, "the WebSocket consumers acked nothing");
    assert!(
        lost.is_empty(),
        "acknowledged publishes lost: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert!(
        l.resurrected.is_empty(),
        "acked deliveries came back: {:?}",
        l.resurrected
    );
    assert!(
        never_sent as u64 <= in_doubt,
        "{never_sent} delivered messages were never sent (only {in_doubt} publishes were in doubt)"
    );
}

/// A STOMP publisher that counts a message as delivered only on its (cumulative) RECEIPT,
/// as swpt_stomp does: everything receipted must survive `kill -9`.
async fn stomp_publish_until_killed(
    addr: String,
    secret: String,
    round: u64,
    accepted: Arc<Mutex<HashSet<Key>>>,
) {
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use trunkline_proto::{encode, Command, Decoder, Frame, Item, Limits};
    let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
        return;
    };
    let mut out = BytesMut::new();
    let connect = Frame::new(Command::Connect)
        .header("accept-version", "1.2")
        .header("login", "admin")
        .header("passcode", secret);
    encode(&connect, &mut out).expect("encode");
    let mut decoder = Decoder::new(Limits::default());
    let mut inbuf = BytesMut::new();
    let mut sent: Vec<u64> = Vec::new();
    let mut confirmed = 0usize;
    let (mut rd, mut wr) = stream.split();
    let deadline = Instant::now() + LOAD + Duration::from_secs(5);
    let mut s = 0u64;
    loop {
        if Instant::now() > deadline {
            return;
        }
        // Keep up to 50 unconfirmed messages in flight.
        while sent.len() - confirmed < 50 {
            let body = json!({"p": 1000 + round, "s": s}).to_string();
            let f = Frame::new(Command::Send)
                .header(
                    "destination",
                    format!("/topic/load.{}.stomp", s as usize % CLIENTS),
                )
                .header("receipt", s.to_string())
                .header("content-type", "application/json")
                .body(body.into_bytes());
            encode(&f, &mut out).expect("encode");
            sent.push(s);
            s += 1;
        }
        if !out.is_empty() && wr.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        match tokio::time::timeout(Duration::from_secs(5), rd.read_buf(&mut inbuf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        while let Ok(Some(item)) = decoder.decode(&mut inbuf) {
            let Item::Frame(f) = item else { continue };
            if f.command == Command::Receipt {
                let id: u64 = f
                    .get("receipt-id")
                    .and_then(|r| r.parse().ok())
                    .expect("receipt id");
                // Cumulative: this receipt confirms every earlier message too.
                let upto = sent
                    .iter()
                    .position(|x| *x == id)
                    .expect("a receipt for a sent message");
                let mut a = accepted.lock().expect("accepted");
                for x in &sent[confirmed..=upto] {
                    a.insert((1000 + round, *x));
                }
                confirmed = upto + 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_stomp_receipted_message() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_trunkline"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http");
    let mut secrets = Vec::new();
    let admin_secret;
    {
        let mut node = ProcessServer::start(&bin, &dir).expect("start node");
        admin_secret = node.admin_credentials().secret;
        let t = token(&http, &node.http, "admin", &admin_secret).await;
        // The admin inbox (subscribed to `#`) is moved aside so that each message has one home.
        http.patch(format!("{}/client/admin", node.http))
            .bearer_auth(&t)
            .json(&json!({"subscription": "nothing.here"}))
            .send()
            .await
            .expect("patch admin");
        secrets.extend(create_load_clients(&http, &node.http, &t).await);
        node.kill9();
    }
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    for round in 0..ROUNDS as u64 {
        let mut node = ProcessServer::start(&bin, &dir).expect("restart");
        let task = tokio::spawn(stomp_publish_until_killed(
            node.stomp.clone(),
            admin_secret.clone(),
            round,
            accepted.clone(),
        ));
        tokio::time::sleep(LOAD).await;
        node.kill9();
        task.await.expect("publisher");
    }
    let node = ProcessServer::start(&bin, &dir).expect("final restart");
    let ledger = Mutex::new(Ledger::default());
    for (i, secret) in secrets.iter().enumerate() {
        let t = token(&http, &node.http, &format!("c{i}"), secret).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while consume_once(&http, &node.http, &t, &ledger)
            .await
            .expect("drain")
            > 0
        {
            assert!(Instant::now() < deadline, "drain did not finish");
        }
    }
    let accepted = accepted.lock().expect("accepted");
    let l = ledger.lock().expect("ledger");
    let lost: Vec<&Key> = accepted
        .iter()
        .filter(|k| !l.seen.contains_key(k))
        .collect();
    eprintln!(
        "STOMP: {} receipted over {ROUNDS} kill -9 rounds, {} stored, lost {}",
        accepted.len(),
        l.seen.len(),
        lost.len()
    );
    assert!(
        accepted.len() > 100,
        "the load was too small to mean anything"
    );
    assert!(
        lost.is_empty(),
        "receipted messages lost: {:?}",
        &lost[..lost.len().min(10)]
    );
}
