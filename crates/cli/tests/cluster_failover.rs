//! Three Trunkline nodes (real processes) over a three-node RabbitMQ cluster on loopback
//! (`scripts/rabbitmq-cluster.sh`), with producers and a consumer spread over them:
//! a Trunkline node killed -9 mid-load and a RabbitMQ node stopped mid-load lose nothing
//! acknowledged, and clients carry on through the other nodes.
//!
//! Needs `TRUNKLINE_TEST_AMQP_CLUSTER` (the cluster's three URLs, comma-separated);
//! `scripts/test.sh` starts the cluster and sets it, and CI requires it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trunkline_api::{CreateClient, Subscription};
use trunkline_client::{Client, ReceiveOptions};
use trunkline_testkit::ProcessServer;

/// How long producers send, and when the faults come (from the start of the load).
const LOAD: Duration = Duration::from_secs(12);
const KILL_NODE_AT: Duration = Duration::from_secs(3);
const STOP_RABBIT_AT: Duration = Duration::from_secs(6);
/// Most messages one producer sends.
const MAX_PER_PRODUCER: usize = 5_000;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq-cluster.sh")
}

fn rabbit(verb: &str, n: usize) {
    let out = std::process::Command::new("bash")
        .arg(script())
        .args([verb, &n.to_string()])
        .output()
        .expect("run rabbitmq-cluster.sh");
    assert!(
        out.status.success(),
        "rabbitmq-cluster.sh {verb} {n}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Node `i` (1-based) of the cluster: it tries RabbitMQ node `i` first.
fn start_node(dir: &Path, urls: &[String], namespace: &str, i: usize) -> ProcessServer {
    let data = dir.join(format!("n{i}"));
    std::fs::create_dir_all(&data).expect("data dir");
    if i > 1 {
        for f in ["token.key", "backend.key", "channel.key"] {
            std::fs::copy(dir.join("n1").join(f), data.join(f)).expect("copy key");
        }
    }
    let mut order = urls.to_vec();
    order.rotate_left((i - 1) % urls.len());
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_trunkline"));
    let mut cmd = ProcessServer::serve_command(&bin, &data, "127.0.0.1:0");
    cmd.args(["--broker", &order.join(","), "--namespace", namespace])
        .args(["--node", &format!("n{i}")]);
    ProcessServer::spawn(cmd, &data).expect("start node")
}

/// Runs `f` with each node's index in turn, starting at `first`, until one answers (or 30 s
/// pass): a node that is gone or answers 5xx is passed over. The index that answered.
async fn on_some_node<T, F, Fut>(nodes: usize, first: usize, mut f: F) -> Option<(usize, T)>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, trunkline_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut i = first;
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(15), f(i)).await {
            Ok(Ok(v)) => return Some((i, v)),
            Ok(Err(trunkline_client::Error::Api {
                status,
                code,
                message,
            })) if status < 500 => {
                panic!("node {} refused: {status} {code}: {message}", i + 1)
            }
            _ => {
                i = (i + 1) % nodes;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_a_rabbitmq_node_stopped_lose_nothing_acknowledged() {
    let Some(urls) = trunkline_testkit::rabbitmq_env("TRUNKLINE_TEST_AMQP_CLUSTER") else {
        return;
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    assert_eq!(urls.len(), 3, "three RabbitMQ nodes");
    let dir = tempfile::tempdir().expect("temp dir");
    let namespace = format!("tl-failover-{}", std::process::id());
    let mut nodes: Vec<ProcessServer> = (1..=3)
        .map(|i| start_node(dir.path(), &urls, &namespace, i))
        .collect();
    let admin_secret = nodes[0].admin_credentials().secret;
    let on = |id: &str, secret: &str| -> Vec<Client> {
        nodes
            .iter()
            .map(|n| Client::new(&n.http, id, secret).expect("client"))
            .collect()
    };
    let admins = on("admin", &admin_secret);

    // Made through node 1, it logs in on node 3 at once.
    let sink = admins[0]
        .create_client(&CreateClient::new(
            "sink",
            Subscription::from_patterns(vec!["load.#".into()]),
        ))
        .await
        .expect("create sink");
    let sinks = on("sink", &sink.secret);
    sinks[2]
        .fetch_token()
        .await
        .expect("sink logs in on node 3");

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(HashSet::<String>::new()));
    let retried = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for k in 0..3 {
        let clients = on("admin", &admin_secret);
        let (stop, acked, retried) = (stop.clone(), acked.clone(), retried.clone());
        producers.push(tokio::spawn(async move {
            let mut node = k;
            for i in 0..MAX_PER_PRODUCER {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("p{k}-{i}");
                let req = serde_json::json!({
                    "topic": format!("load.p{k}"),
                    "body": {"id": id},
                    "message_id": id,
                });
                let Some((answered, _)) =
                    on_some_node(clients.len(), node, |i| clients[i].send_raw(&req)).await
                else {
                    panic!("no node took {id} within 30 s");
                };
                if answered != node {
                    retried.fetch_add(1, Ordering::Relaxed);
                    node = answered;
                }
                acked.lock().unwrap().insert(id);
            }
        }));
    }
    let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
    let consumer = {
        let (stop, seen, acked) = (stop.clone(), seen.clone(), acked.clone());
        let clients = on("sink", &sink.secret);
        tokio::spawn(async move {
            let mut node = 2;
            let deadline = tokio::time::Instant::now() + LOAD + Duration::from_secs(90);
            loop {
                let done = stop.load(Ordering::Relaxed) && {
                    let (a, s) = (acked.lock().unwrap(), seen.lock().unwrap());
                    a.is_subset(&s)
                };
                if done || tokio::time::Instant::now() > deadline {
                    return;
                }
                let o = ReceiveOptions {
                    max_messages: 200,
                    lease: Some(30),
                    wait: 1,
                    ..Default::default()
                };
                let Some((at, got)) =
                    on_some_node(clients.len(), node, |i| clients[i].receive(&o)).await
                else {
                    continue;
                };
                node = at;
                let receipts: Vec<String> = got.iter().filter_map(|m| m.receipt.clone()).collect();
                {
                    let mut s = seen.lock().unwrap();
                    for m in &got {
                        s.insert(m.body["id"].as_str().unwrap_or_default().to_owned());
                    }
                }
                // An ack lost with its node is no loss: the message comes again.
                let _ = clients[at].ack(&receipts).await;
            }
        })
    };

    let started = tokio::time::Instant::now();
    tokio::time::sleep_until(started + KILL_NODE_AT).await;
    let before_kill = acked.lock().unwrap().len();
    nodes[1].kill9();
    tokio::time::sleep_until(started + STOP_RABBIT_AT).await;
    let before_stop = acked.lock().unwrap().len();
    tokio::task::spawn_blocking(|| rabbit("stop-node", 3))
        .await
        .expect("stop RabbitMQ node 3");
    tokio::time::sleep_until(started + LOAD).await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.expect("producer");
    }
    consumer.await.expect("consumer");
    // Leave the RabbitMQ cluster whole for whoever comes next.
    tokio::task::spawn_blocking(|| rabbit("start-node", 3))
        .await
        .expect("start RabbitMQ node 3");

    let (acked, seen) = (acked.lock().unwrap().clone(), seen.lock().unwrap().clone());
    let lost: Vec<&String> = acked.difference(&seen).collect();
    eprintln!(
        "acknowledged {} ({before_kill} before the kill -9, {before_stop} before RabbitMQ node 3 \
         stopped), received {}, lost {}, producers moved to another node {} times",
        acked.len(),
        seen.len(),
        lost.len(),
        retried.load(Ordering::Relaxed)
    );
    assert!(before_kill > 0 && before_stop > before_kill && acked.len() > before_stop);
    assert!(lost.is_empty(), "acknowledged but never received: {lost:?}");
    assert!(
        retried.load(Ordering::Relaxed) > 0,
        "the producer on the killed node carried on elsewhere"
    );
}
