//! The node-wide memory cap under a fan-out flood, with the real binary in a process whose
//! memory is limited: 500 inboxes subscribed to `flood.#` and up to 5 000 3-byte messages
//! published to `flood.x` by several concurrent publishers. Each accepted message puts 501
//! entries in the queues (the 500 inboxes and the admin's), so the bodies alone (15 kB)
//! would never reach any cap; counted properly, an index held in memory would fill the
//! configured 64 MiB after ~650 messages. Past half the cap the node is pressed: each queue
//! keeps its head in memory and the rest in the log only, so the flood is bounded by disk.
//! What must hold:
//! - far more is accepted than memory could index, and what memory counts stays within the
//!   cap;
//! - the node is alive at the end (not killed, not aborted on a failed allocation), and its
//!   resident set stayed well inside the limit;
//! - anything refused is refused with 507 `node_full` and a message that says what is full;
//! - every publish that got a 202 is in every inbox (nothing accepted is lost), and the
//!   inboxes read out hold exactly those, once each.
//!
//! The limit is `RLIMIT_AS` (`ulimit -v` in a `sh` that then `exec`s the node, as the
//! workspace forbids the `unsafe` a `pre_exec` would need). Not a cgroup: a cgroup v2 memory
//! controller needs a delegated, writable hierarchy, which CI containers rarely have (this
//! one has the v1 hierarchy, owned by whatever runs the tests). An address-space limit
//! counts mappings, not memory used, so the node runs with `MALLOC_ARENA_MAX=2`: glibc
//! otherwise reserves 64 MiB of address space per arena, up to 8 per core (an idle
//! debug-build node on 2 cores already maps 300 MiB, four arenas of it). Without the cap
//! (or with the old one, which counted bodies only), the same run ends with the node
//! aborting on a failed allocation within seconds of reaching the limit.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use trunkline_testkit::{token, ProcessServer};

const INBOXES: usize = 500;
const MESSAGES: usize = 5_000;
const PUBLISHERS: usize = 8;
/// `inbox.max_memory_bytes`.
const CAP: u64 = 64 << 20;
/// The process's address-space limit.
const LIMIT: u64 = 256 << 20;
/// Publishing stops here even if not every message was tried (a slow debug build on a
/// busy machine); what was tried is still checked.
const PUBLISH_BUDGET: Duration = Duration::from_secs(90);

#[derive(Default)]
struct Tally {
    /// Ids of the messages answered 202.
    accepted: BTreeSet<u64>,
    node_full: usize,
    /// A 507 answer's body, to show.
    refusal: Option<Value>,
    /// Anything else: (status, body).
    other: Vec<(u16, String)>,
}

/// `name value` of a line in `/proc/<pid>/status`, in kB.
fn proc_status_kb(pid: u32, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: &str,
) -> T {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_flood_is_bounded_by_disk_within_the_memory_cap_and_the_node_lives() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_trunkline"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let config = tmp.path().join("node.toml");
    std::fs::write(&config, format!("[inbox]\nmax_memory_bytes = {CAP}\n")).expect("config");
    let serve = ProcessServer::serve_command(&bin, &dir, "off");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -v {} && ulimit -Sn 512 && exec \"$@\"",
            LIMIT / 1024
        ))
        .arg("sh")
        .arg(serve.get_program())
        .args(serve.get_args())
        .arg("--config")
        .arg(&config)
        .env("TRUNKLINE_LOG_LEVEL", "warn")
        .env("MALLOC_ARENA_MAX", "2");
    let mut node = ProcessServer::spawn(cmd, &dir).expect("start node");
    let pid = node.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let as_line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap_or_default();
    assert!(
        as_line.contains(&LIMIT.to_string()),
        "the node runs under the limit: {as_line}"
    );
    // It raised its open files limit as far as it may (a descriptor per log segment).
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        files.get(3),
        files.get(4),
        "soft and hard open files: {files:?}"
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let base = node.http.clone();
    let admin = node.admin_credentials();
    let admin_token = token(&http, &base, &admin.client_id, &admin.secret).await;

    // 500 inboxes on flood.#, created over HTTP as the admin.
    let started = Instant::now();
    let created: Vec<(String, String)> = futures::stream::iter(0..INBOXES)
        .map(|i| {
            let (http, base, admin_token) = (&http, &base, &admin_token);
            async move {
                let id = format!("f{i:03}");
                let r = http
                    .post(format!("{base}/client"))
                    .bearer_auth(admin_token)
                    .json(&json!({"client_id": id, "client_name": "flood", "subscription": "flood.#"}))
                    .send()
                    .await
                    .expect("create client");
                assert_eq!(r.status(), 201, "create {id}");
                let v: Value = r.json().await.expect("json");
                (id, v["secret"].as_str().expect("secret").to_owned())
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let setup = started.elapsed();

    // The flood: numbered 3-byte bodies (100..999), several publishers at once.
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = Instant::now() + PUBLISH_BUDGET;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..PUBLISHERS {
        let (http, base, admin_token) = (http.clone(), base.clone(), admin_token.clone());
        let (next, tally) = (next.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= MESSAGES || Instant::now() > deadline {
                    break;
                }
                let body = 100 + (n % 900) as u64;
                let r = http
                    .post(format!("{base}/send"))
                    .bearer_auth(&admin_token)
                    .json(&json!({"topic": "flood.x", "body": body}))
                    .send()
                    .await;
                let (status, text) = match r {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let mut t = tally.lock().expect("tally");
                match status {
                    202 if v["delivered_to"] == json!(INBOXES + 1) && v["id"].is_u64() => {
                        t.accepted.insert(v["id"].as_u64().unwrap_or_default());
                    }
                    507 if v["error"]["code"] == "node_full" => {
                        t.node_full += 1;
                        t.refusal.get_or_insert(v);
                    }
                    _ => t.other.push((status, text)),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let publish_time = started.elapsed();
    let tried = next.load(Ordering::Relaxed).min(MESSAGES);

    // Alive, and still answering.
    assert!(
        matches!(node.child.try_wait(), Ok(None)),
        "the node died: {:?}\n{}",
        node.child.try_wait(),
        std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
    );
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let rss_peak_kb = proc_status_kb(pid, "VmHWM").unwrap_or(0);
    let rss_kb = proc_status_kb(pid, "VmRSS").unwrap_or(0);
    let vm_peak_kb = proc_status_kb(pid, "VmPeak").unwrap_or(0);
    let backend_key = std::fs::read_to_string(dir.join("backend.key")).expect("backend.key");
    let metrics = http
        .get(format!("{}/metrics", node.backend))
        .header("X-Backend-Key", backend_key.trim())
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let counted = metric(&metrics, "trunkline_queued_memory_bytes").expect("memory metric");

    let t = std::mem::take(&mut *tally.lock().expect("tally"));
    println!(
        "{INBOXES} inboxes (set up in {setup:.1?}); {tried} of {MESSAGES} messages tried in \
         {publish_time:.1?} by {PUBLISHERS} publishers: {} answered 202, {} answered 507 \
         node_full, {} other; counted {:.1} MiB of the {} MiB cap; node RSS peak {:.1} MiB \
         (now {:.1} MiB), address space peak {:.1} MiB, under a {} MiB address-space limit",
        t.accepted.len(),
        t.node_full,
        t.other.len(),
        counted as f64 / 1048576.0,
        CAP >> 20,
        rss_peak_kb as f64 / 1024.0,
        rss_kb as f64 / 1024.0,
        vm_peak_kb as f64 / 1024.0,
        LIMIT >> 20,
    );
    if let Some(r) = &t.refusal {
        println!("a refusal: {r}");
    }
    assert!(
        t.other.is_empty(),
        "only 202 and 507 node_full: {:?}",
        &t.other[..t.other.len().min(5)]
    );
    // An index of every entry in memory (200 bytes each, as the cap counts them) would
    // have filled the cap after ~650 messages.
    let in_memory_only = CAP / (200 * (INBOXES as u64 + 1) + 200);
    assert!(
        t.accepted.len() as u64 > 3 * in_memory_only,
        "{} accepted: no more than memory alone could index ({in_memory_only})",
        t.accepted.len()
    );
    if t.node_full > 0 {
        let message = t
            .refusal
            .as_ref()
            .and_then(|r| r["error"]["message"].as_str());
        assert!(
            message.is_some_and(|m| m.contains("memory") && m.contains("queue entries")),
            "the refusal says what is full: {message:?}"
        );
    }
    assert!(counted <= CAP, "{counted} counted over the cap");
    assert!(
        rss_peak_kb * 1024 < LIMIT,
        "resident set {rss_peak_kb} kB inside the limit"
    );

    // Every accepted message is in every inbox: each depth is the number of 202s...
    let clients: Vec<Value> = get_json(&http, &format!("{base}/client"), &admin_token).await;
    let accepted = t.accepted.len() as u64;
    let flood: Vec<&Value> = clients
        .iter()
        .filter(|c| c["client_id"].as_str().is_some_and(|i| i.starts_with('f')))
        .collect();
    assert_eq!(flood.len(), INBOXES);
    for c in &flood {
        assert_eq!(
            c["inbox_depth"].as_u64(),
            Some(accepted),
            "inbox of {}",
            c["client_id"]
        );
    }
    // ...and a few inboxes, read out, hold exactly the accepted messages.
    for (id, secret) in created.iter().step_by(INBOXES / 4) {
        let tok = token(&http, &base, id, secret).await;
        let mut got = Vec::new();
        loop {
            let batch: Vec<Value> =
                get_json(&http, &format!("{base}/receive?max_messages=1000"), &tok).await;
            if batch.is_empty() {
                break;
            }
            got.extend(batch.iter().filter_map(|m| m["id"].as_u64()));
        }
        let got_set: BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(got.len(), got_set.len(), "no message twice in {id}");
        assert_eq!(got_set, t.accepted, "inbox of {id}");
    }
    node.kill9();
}
