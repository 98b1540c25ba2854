//! Three nodes linked as Swaptacular's are (an accounting authority, a creditors agent, a
//! debtors agent), each its own process on loopback, with messages flowing both ways
//! while the authority is killed -9 and restarted, then the creditors agent, then the
//! authority deactivates the agent and activates it again. Every message a publisher was
//! told was taken (202) must reach its peer; the only duplicates allowed are of messages
//! sent and not yet confirmed when a link broke; a link's backlog must arrive within 30 s
//! of its return.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use trunkline_testkit::federation::{
    triangle, Federation, AUTHORITY_ID as AA, CREDITORS_AGENT_ID as CA, DEBTORS_AGENT_ID as DA,
};
use trunkline_testkit::{free_port, token, ProcessServer};

/// Messages each publisher sends (bounded in count and time).
const N: i64 = 600;
/// Duplicates allowed in all: a link resends at most its window (100) per break, and there
/// are three breaks on each of a few links.
const MAX_DUPLICATES: usize = 1200;

const TS: &str = "2026-12-07T00:00:00+00:00";
/// The agent's creditor as it knows it, and as the authority does.
const OWN_CREDITOR: i64 = 0x0000_0800_0000_0007;
const MASQ_CREDITOR: i64 = 0x0000_0100_0000_0007;
const DEBTOR: i64 = 0x1234_abcd_0000_0001;

fn words(id: i64) -> String {
    trunkline_federation::topology::id_words(id)
}

/// One node as a process, restartable on the same ports and data.
struct Node {
    id: &'static str,
    dir: PathBuf,
    federation_port: u16,
    stomp_port: u16,
    config: PathBuf,
    proc: Option<ProcessServer>,
    /// Its current HTTP address (changes on a restart), shared with its publisher.
    http: Arc<Mutex<String>>,
}

impl Node {
    fn new(fed: &Federation, root: &Path, id: &'static str) -> Node {
        let dir = root.join(format!("node-{id}"));
        let config = root.join(format!("{id}.toml"));
        let n = fed.node(id);
        std::fs::write(
            &config,
            format!(
                "[federation]\nnodedata = {:?}\ncert = {:?}\nkey = {:?}\nreread_secs = 1\n",
                n.nodedata.display().to_string(),
                n.cert.display().to_string(),
                n.key.display().to_string()
            ),
        )
        .expect("config");
        Node {
            id,
            dir,
            federation_port: free_port(),
            stomp_port: free_port(),
            config,
            proc: None,
            http: Arc::default(),
        }
    }

    fn federation_addr(&self) -> String {
        format!("127.0.0.1:{}", self.federation_port)
    }

    fn start(&mut self) {
        let bin = Path::new(env!("CARGO_BIN_EXE_trunkline"));
        let mut cmd =
            ProcessServer::serve_command(bin, &self.dir, &format!("127.0.0.1:{}", self.stomp_port));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--federation-listen")
            .arg(self.federation_addr());
        let p = ProcessServer::spawn(cmd, &self.dir).expect("start node");
        *self.http.lock().expect("lock") = p.http.clone();
        self.proc = Some(p);
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    fn http(&self) -> String {
        self.http.lock().expect("lock").clone()
    }

    fn admin_secret(&self) -> String {
        self.proc
            .as_ref()
            .expect("running")
            .admin_credentials()
            .secret
    }
}

async fn admin(http: &reqwest::Client, node: &Node) -> String {
    token(http, &node.http(), "admin", &node.admin_secret()).await
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    tok: &str,
    body: Value,
) {
    let r = http
        .request(method, &url)
        .bearer_auth(tok)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status();
    assert!(
        status.is_success(),
        "{url}: {status} {}",
        r.text().await.unwrap_or_default()
    );
}

/// Declares on `node` the queue for `peer` (as configure-queue does) and a queue of what
/// `node` takes from peers, read by its admin.
async fn set_up(http: &reqwest::Client, fed: &Federation, node: &Node, peers: &[&str]) {
    let tok = admin(http, node).await;
    let db = trunkline_federation::NodeDatabase::new(&fed.node(node.id).nodedata);
    let me = db.node().expect("node");
    for peer in peers {
        let data = db.peer(peer, true).expect("read").expect("active");
        let spec = trunkline_server::federation::forward_spec(&me, &data).expect("spec");
        let body = json!({"bindings": spec.bindings, "labels": spec.labels,
            "limits": {"max_length": spec.limits.max_length, "max_deliveries": spec.limits.max_deliveries}});
        call(
            http,
            reqwest::Method::PUT,
            format!("{}/queue/to-{peer}", node.http()),
            &tok,
            body,
        )
        .await;
    }
    let inbound = format!("{}.#", me.node_type.inbound_exchange());
    call(
        http,
        reqwest::Method::PUT,
        format!("{}/queue/taken", node.http()),
        &tok,
        json!({"bindings": [inbound]}),
    )
    .await;
    call(
        http,
        reqwest::Method::PATCH,
        format!("{}/client/admin", node.http()),
        &tok,
        json!({"grants": ["taken"]}),
    )
    .await;
}

/// Publishes seqnum 1..=N to `topic` on the node at `http` (read again after a failure:
/// the node may be restarting); the seqnums confirmed with a 202.
async fn publish(
    http_addr: Arc<Mutex<String>>,
    data_dir: PathBuf,
    topic: String,
    body: impl Fn(i64) -> Value,
    confirmed: Arc<Mutex<Vec<i64>>>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tok: Option<String> = None;
    let mut seq = 1;
    while seq <= N && Instant::now() < deadline {
        let base = http_addr.lock().expect("lock").clone();
        if tok.is_none() {
            let secret = std::fs::read_to_string(data_dir.join("admin.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["secret"].as_str().map(str::to_owned));
            let r = match secret {
                Some(s) => http
                    .get(format!("{base}/token?client_id=admin&secret={s}"))
                    .send()
                    .await
                    .ok(),
                None => None,
            };
            match r {
                Some(r) if r.status() == 200 => {
                    let v: Value = r.json().await.unwrap_or_default();
                    tok = v["token"].as_str().map(str::to_owned);
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let r = http
            .post(format!("{base}/send"))
            .bearer_auth(tok.as_deref().unwrap_or_default())
            .json(&json!({"topic": topic, "body": body(seq)}))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 202 => {
                confirmed.lock().expect("lock").push(seq);
                seq += 1;
            }
            // Not taken (the node is down or restarting): send it again.
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Reads everything in `node`'s queue `taken`: seqnum → how many times, per sender type.
async fn taken(http: &reqwest::Client, node: &Node, into: &mut BTreeMap<(String, i64), usize>) {
    let tok = admin(http, node).await;
    loop {
        let r = http
            .get(format!(
                "{}/receive?queue=taken&max_messages=1000",
                node.http()
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .expect("receive");
        let got: Vec<Value> = r.json().await.expect("json");
        if got.is_empty() {
            return;
        }
        for m in got {
            let kind = m["body"]["type"].as_str().unwrap_or_default().to_owned();
            let seq = m["body"]["seqnum"]
                .as_i64()
                .or_else(|| m["body"]["config_seqnum"].as_i64())
                .unwrap_or(-1);
            let from = m["sender"].as_str().unwrap_or_default().to_owned();
            *into.entry((format!("{from}/{kind}"), seq)).or_default() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_lose_nothing_confirmed_through_kills_and_a_deactivation() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fed = triangle(tmp.path());
    let mut nodes: BTreeMap<&str, Node> = [AA, CA, DA]
        .into_iter()
        .map(|id| (id, Node::new(&fed, tmp.path(), id)))
        .collect();
    for n in nodes.values() {
        fed.set_node_servers(n.id, &[n.federation_addr()]);
    }
    for n in nodes.values_mut() {
        n.start();
    }
    let http = reqwest::Client::new();
    set_up(&http, &fed, &nodes[AA], &[CA, DA]).await;
    set_up(&http, &fed, &nodes[CA], &[AA]).await;
    set_up(&http, &fed, &nodes[DA], &[AA]).await;

    let configure = |creditor: i64, debtor: i64| {
        move |seq: i64| {
            json!({"type": "ConfigureAccount", "creditor_id": creditor, "debtor_id": debtor,
                "ts": TS, "seqnum": seq, "negligible_amount": 0.0, "config_data": "",
                "config_flags": 0})
        }
    };
    let rejected = |seq: i64| {
        json!({"type": "RejectedConfig", "creditor_id": MASQ_CREDITOR, "debtor_id": DEBTOR,
            "ts": TS, "config_ts": TS, "config_seqnum": seq, "config_flags": 0,
            "config_data": "", "negligible_amount": 0.0, "rejection_code": "NO_CONNECTION"})
    };
    let mut confirmed = BTreeMap::new();
    let mut publishers = Vec::new();
    for (node, topic, body) in [
        (
            CA,
            format!("creditors_out.{}", words(DEBTOR)),
            Box::new(configure(OWN_CREDITOR, DEBTOR)) as Box<dyn Fn(i64) -> Value + Send>,
        ),
        (
            DA,
            format!("debtors_out.{}", words(DEBTOR)),
            Box::new(configure(0, DEBTOR)),
        ),
        (
            AA,
            format!("to_creditors.{}", words(MASQ_CREDITOR)),
            Box::new(rejected),
        ),
    ] {
        let c = Arc::new(Mutex::new(Vec::new()));
        confirmed.insert(node, c.clone());
        let n = &nodes[node];
        publishers.push(tokio::spawn(publish(
            n.http.clone(),
            n.dir.clone(),
            topic,
            body,
            c,
        )));
    }
    let count = |node: &str| confirmed[node].lock().expect("lock").len() as i64;
    let wait_for = |node: &'static str, at: i64| {
        let confirmed = confirmed[node].clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while (confirmed.lock().expect("lock").len() as i64) < at && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // The authority killed -9 while messages flow both ways, and back a second later.
    wait_for(CA, N / 4).await;
    nodes.get_mut(AA).expect("AA").kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes.get_mut(AA).expect("AA").start();
    // Then the creditors agent.
    wait_for(CA, N / 2).await;
    nodes.get_mut(CA).expect("CA").kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes.get_mut(CA).expect("CA").start();
    // Then the authority deactivates the agent for a while.
    wait_for(CA, 3 * N / 4).await;
    fed.deactivate(AA, CA);
    tokio::time::sleep(Duration::from_secs(3)).await;
    fed.reactivate(AA, CA);
    let returned = Instant::now();
    for p in publishers {
        p.await.expect("publisher");
    }
    for node in [AA, CA, DA] {
        assert_eq!(count(node), N, "{node}'s publisher finished");
    }

    // Everything confirmed arrives, within 30 s of the link's return.
    let expected: [(&str, &str, String); 3] = [
        (AA, CA, format!("peer:{CA}/ConfigureAccount")),
        (AA, DA, format!("peer:{DA}/ConfigureAccount")),
        (CA, AA, format!("peer:{AA}/RejectedConfig")),
    ];
    let mut seen: BTreeMap<&str, BTreeMap<(String, i64), usize>> = BTreeMap::new();
    let complete = |seen: &BTreeMap<&str, BTreeMap<(String, i64), usize>>| {
        expected.iter().all(|(at, _, key)| {
            (1..=N).all(|s| {
                seen.get(at)
                    .is_some_and(|m| m.contains_key(&(key.clone(), s)))
            })
        })
    };
    loop {
        for at in [AA, CA] {
            taken(&http, &nodes[at], seen.entry(at).or_default()).await;
        }
        if complete(&seen) || returned.elapsed() > Duration::from_secs(45) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered_in = returned.elapsed();
    let mut duplicates = 0;
    for (at, from, key) in &expected {
        let m = &seen[at];
        let missing: Vec<i64> = (1..=N)
            .filter(|s| !m.contains_key(&(key.clone(), *s)))
            .collect();
        assert!(
            missing.is_empty(),
            "{from} -> {at}: confirmed and lost: {missing:?}"
        );
        duplicates += m
            .iter()
            .filter(|((k, _), _)| k == key)
            .map(|(_, n)| n - 1)
            .sum::<usize>();
        let strays: Vec<_> = m
            .keys()
            .filter(|(k, s)| k == key && !(1..=N).contains(s))
            .collect();
        assert!(strays.is_empty(), "{strays:?}");
    }
    eprintln!(
        "3 nodes, {} messages confirmed: 0 lost, {duplicates} duplicates, backlog delivered {:.1} s after the agent's reactivation",
        3 * N,
        delivered_in.as_secs_f64()
    );
    assert!(duplicates <= MAX_DUPLICATES, "{duplicates} duplicates");
    assert!(
        delivered_in < Duration::from_secs(30),
        "backlog took {delivered_in:?}"
    );
}
