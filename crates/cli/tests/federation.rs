//! The federation listener on a real node: peers connect over mutual TLS 1.3 as
//! swpt_stomp's client does (`STOMP` frame, heart-beats, a receipt on every `SEND`,
//! cumulative receipts back), and what they may not do is refused with clear `ERROR`s,
//! nothing routed.

use std::time::Duration;

use serde_json::{json, Value};
use trunkline_proto::{Command, Frame};
use trunkline_testkit::federation::{
    configure, triangle, Federation, AUTHORITY_ID as AA, CREDITORS_AGENT_ID as CA,
    DEBTORS_AGENT_ID as DA,
};
use trunkline_testkit::{StompWire, TestServer};

/// A creditor of the creditors agent as the authority knows it (its masq subnet
/// `000001`), and a debtor of the authority (`1234abcd`).
const CREDITOR: i64 = 0x0000_0100_0000_0007;
const DEBTOR: i64 = 0x1234_abcd_0000_0001;

fn configure_account(seqnum: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "ConfigureAccount", "creditor_id": CREDITOR, "debtor_id": DEBTOR,
        "ts": "2026-12-07T00:00:00+00:00", "seqnum": seqnum,
        "negligible_amount": 0.0, "config_data": "", "config_flags": 0
    }))
    .expect("json")
}

/// A `SEND` as swpt_stomp's client makes it.
fn smp_send(destination: &str, receipt: u64, body: Vec<u8>) -> Frame {
    Frame::new(Command::Send)
        .header("destination", destination)
        .header("type", "ConfigureAccount")
        .header("content-type", "application/json")
        .header("persistent", "true")
        .header("receipt", receipt.to_string())
        .body(body)
}

/// Opens a peer session: the `STOMP` frame swpt_stomp sends; the answer.
async fn stomp(w: &mut StompWire) -> Option<Frame> {
    w.send(
        Frame::new(Command::Stomp)
            .header("accept-version", "1.2")
            .header("host", "/")
            .header("heart-beat", "5000,30000"),
    )
    .await;
    w.next().await
}

/// The authority, a queue of what it takes from peers, and a client reading it.
struct Authority {
    server: TestServer,
    http: reqwest::Client,
    admin: String,
    reader: String,
}

impl Authority {
    async fn start(fed: &Federation, tweak: impl FnOnce(&mut trunkline_server::Config)) -> Self {
        let server = TestServer::start_with(|c| {
            configure(c, fed.node(AA));
            tweak(c);
        })
        .await;
        let http = reqwest::Client::new();
        let admin = server.admin_token().await;
        let url = |path: &str| format!("{}{path}", server.http);
        let (s, v) = call(
            &http,
            reqwest::Method::PUT,
            url("/queue/from-peers"),
            &admin,
            json!({"bindings": ["accounts_in.#"]}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let secret =
            trunkline_testkit::create_client(&http, &server.http, &admin, "reader", "nothing")
                .await;
        let (s, v) = call(
            &http,
            reqwest::Method::PATCH,
            url("/client/reader"),
            &admin,
            json!({"grants": ["from-peers"]}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let reader = trunkline_testkit::token(&http, &server.http, "reader", &secret).await;
        Authority {
            server,
            http,
            admin,
            reader,
        }
    }

    async fn taken(&self) -> Vec<Value> {
        let r = self
            .http
            .get(format!(
                "{}/receive?queue=from-peers&max_messages=1000",
                self.server.http
            ))
            .bearer_auth(&self.reader)
            .send()
            .await
            .expect("receive");
        assert_eq!(r.status(), 200);
        r.json::<Vec<Value>>().await.expect("json")
    }

    async fn depth(&self) -> u64 {
        let r = self
            .http
            .get(format!("{}/queue/from-peers", self.server.http))
            .bearer_auth(&self.admin)
            .send()
            .await
            .expect("queue");
        r.json::<Value>().await.expect("json")["depth"]
            .as_u64()
            .expect("depth")
    }
}

/// An admin call: its status and JSON answer.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    tok: &str,
    body: Value,
) -> (u16, Value) {
    let r = http
        .request(method, url)
        .bearer_auth(tok)
        .json(&body)
        .send()
        .await
        .expect("request");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_peer_sends_over_mutual_tls_and_its_messages_are_routed_by_their_keys() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fed = triangle(tmp.path());
    let aa = Authority::start(&fed, |_| {}).await;
    let mut w = fed.dial(CA, AA, &aa.server.federation).await.expect("TLS");
    let f = stomp(&mut w).await.expect("CONNECTED");
    assert_eq!(f.command, Command::Connected, "{f:?}");
    assert_eq!(f.get("version"), Some("1.2"));
    for n in 1..=50 {
        w.send(smp_send(
            "/exchange/accounts_in",
            n,
            configure_account(n as i64),
        ))
        .await;
    }
    // Cumulative receipts: the last one confirms all fifty, and none comes after it.
    let mut last = 0;
    while last < 50 {
        let f = w.next().await.expect("a receipt");
        assert_eq!(f.command, Command::Receipt, "{f:?}");
        let id: u64 = f.get("receipt-id").expect("id").parse().expect("number");
        assert!(id > last, "receipts go forward: {id} after {last}");
        last = id;
    }
    let got = aa.taken().await;
    assert_eq!(got.len(), 50);
    // Routed under the exchange by the message's routing key (md5 of debtor, creditor).
    let key = trunkline_federation::routing_key(&[DEBTOR, CREDITOR]);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["topic"], format!("accounts_in.{key}"), "{m}");
        assert_eq!(m["body"]["seqnum"], i as u64 + 1, "in order");
        assert_eq!(m["body"]["creditor_id"], CREDITOR);
        assert_eq!(m["headers"]["message-type"], "ConfigureAccount", "{m}");
        assert_eq!(m["headers"]["creditor-id"], CREDITOR.to_string(), "{m}");
        assert_eq!(m["sender"], format!("peer:{CA}"));
    }
    w.send(Frame::new(Command::Disconnect).header("receipt", "bye"))
        .await;
    let f = w.next().await.expect("receipt");
    assert_eq!(f.get("receipt-id"), Some("bye"));
    aa.server.stop().await;
}

#[tokio::test]
async fn what_a_peer_may_not_do_is_refused_and_nothing_is_routed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fed = triangle(tmp.path());
    let aa = Authority::start(&fed, |c| c.federation.max_frame_bytes = 8192).await;
    let addr = aa.server.federation.clone();

    // TLS refusals: the handshake fails (in TLS 1.3 the client learns of it on reading).
    let refused_tls = |r: Result<StompWire, String>| async move {
        match r {
            Err(_) => true,
            Ok(mut w) => stomp(&mut w).await.is_none(),
        }
    };
    let (cert, key) = fed.outsider(CA);
    assert!(
        refused_tls(fed.dial_with(CA, AA, &addr, &cert, &key).await).await,
        "unknown CA"
    );
    // Known CA (the agent's root, through the peer certificate we issued it), another
    // node's serial: the name constraint refuses it.
    let (cert, key) = fed.impostor(CA, DA);
    assert!(
        refused_tls(fed.dial_with(CA, AA, &addr, &cert, &key).await).await,
        "impostor"
    );
    let (cert, key) = fed.impostor(CA, "deadbeefdeadbeefdeadbeefdeadbeef");
    assert!(
        refused_tls(fed.dial_with(CA, AA, &addr, &cert, &key).await).await,
        "unknown serial"
    );

    // Session refusals: an ERROR naming the reason, then the close.
    // Signed by our own root, for a node that is no peer of ours: TLS lets it in (the
    // chain holds), the node database does not.
    let (cert, key) = fed.impostor(AA, "0123456789abcdef0123456789abcdef");
    let mut w = fed
        .dial_with(CA, AA, &addr, &cert, &key)
        .await
        .expect("TLS");
    let f = stomp(&mut w).await.expect("ERROR");
    assert_eq!(f.get("code"), Some("unknown_peer"), "not a peer: {f:?}");
    assert!(w.next().await.is_none(), "closed");
    fed.deactivate(AA, CA);
    let mut w = fed.dial(CA, AA, &addr).await.expect("TLS");
    let f = stomp(&mut w).await.expect("ERROR");
    assert_eq!(
        (f.command, f.get("code")),
        (Command::Error, Some("unknown_peer")),
        "{f:?}"
    );
    fed.reactivate(AA, CA);
    fed.remove_active(AA, CA);
    let mut w = fed.dial(CA, AA, &addr).await.expect("TLS");
    let f = stomp(&mut w).await.expect("ERROR");
    assert_eq!(f.get("code"), Some("unknown_peer"), "missing ACTIVE: {f:?}");
    fed.activate(AA, CA);

    for (why, frame, code) in [
        (
            "wrong destination",
            smp_send("/exchange/creditors_in", 1, configure_account(1)),
            "invalid_destination",
        ),
        (
            "a client destination",
            smp_send("/topic/accounts_in.0", 1, configure_account(1)),
            "invalid_destination",
        ),
        (
            "a queue",
            smp_send("/queue/from-peers", 1, configure_account(1)),
            "invalid_destination",
        ),
        (
            "a debtor not ours",
            smp_send(
                "/exchange/accounts_in",
                1,
                serde_json::to_vec(&json!({
                    "type": "ConfigureAccount", "creditor_id": CREDITOR, "debtor_id": 5,
                    "ts": "2026-12-07T00:00:00+00:00", "seqnum": 1,
                    "negligible_amount": 0.0, "config_data": "", "config_flags": 0
                }))
                .expect("json"),
            ),
            "invalid_message",
        ),
        (
            "not JSON",
            smp_send("/exchange/accounts_in", 1, b"nope".to_vec()),
            "invalid_message",
        ),
        (
            "oversized",
            smp_send("/exchange/accounts_in", 1, vec![b' '; 9000]),
            "frame_too_large",
        ),
    ] {
        let mut w = fed.dial(CA, AA, &addr).await.expect("TLS");
        let f = stomp(&mut w).await.expect("CONNECTED");
        assert_eq!(f.command, Command::Connected, "{why}: {f:?}");
        w.send(frame).await;
        let f = w.expect_error(code).await;
        assert!(
            f.get("message").is_some_and(|m| m.len() > 10),
            "{why}: a clear message: {f:?}"
        );
    }
    // A peer cannot read anything either.
    let mut w = fed.dial(CA, AA, &addr).await.expect("TLS");
    stomp(&mut w).await.expect("CONNECTED");
    w.send(
        Frame::new(Command::Subscribe)
            .header("destination", "/queue/from-peers")
            .header("id", "s")
            .header("receipt", "r"),
    )
    .await;
    w.expect_error("forbidden").await;
    assert_eq!(aa.depth().await, 0, "nothing was routed");
    aa.server.stop().await;
}

#[tokio::test]
async fn a_deactivated_peer_loses_its_connections_and_a_peer_has_a_connection_cap() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fed = triangle(tmp.path());
    let aa = Authority::start(&fed, |c| c.federation.max_connections_per_peer = 2).await;
    let addr = aa.server.federation.clone();
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut w = fed.dial(CA, AA, &addr).await.expect("TLS");
        assert_eq!(
            stomp(&mut w).await.expect("answer").command,
            Command::Connected
        );
        open.push(w);
    }
    let mut third = fed.dial(CA, AA, &addr).await.expect("TLS");
    let f = stomp(&mut third).await.expect("ERROR");
    assert_eq!(f.get("code"), Some("unknown_peer"), "{f:?}");
    assert!(f.get("message").unwrap_or_default().contains("connections"));
    // Another peer is not held back by this one's cap.
    let mut da = fed.dial(DA, AA, &addr).await.expect("TLS");
    assert_eq!(
        stomp(&mut da).await.expect("answer").command,
        Command::Connected
    );

    let started = std::time::Instant::now();
    fed.deactivate(AA, CA);
    for w in &mut open {
        let f = w.next().await.expect("ERROR");
        assert_eq!(f.get("code"), Some("credentials_revoked"), "{f:?}");
        assert!(w.next().await.is_none(), "closed");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The other peer's connection stays.
    da.send(smp_send("/exchange/accounts_in", 1, b"{}".to_vec()))
        .await;
    let f = da.next().await.expect("answer");
    assert_eq!(
        f.get("code"),
        Some("invalid_message"),
        "still served: {f:?}"
    );
    // Reactivated: it may connect again.
    fed.reactivate(AA, CA);
    let mut w = fed.dial(CA, AA, &addr).await.expect("TLS");
    assert_eq!(
        stomp(&mut w).await.expect("answer").command,
        Command::Connected
    );
    aa.server.stop().await;
}

/// The creditors agent's own creditor (its subnet `000008`); the authority knows it as
/// [`CREDITOR`].
const OWN_CREDITOR: i64 = 0x0000_0800_0000_0007;

/// Declares on `node` the queue `configure-queue PEER QUEUE` declares, for `peer`.
async fn forward_queue(node: &TestServer, fed: &Federation, me: &str, peer: &str, queue: &str) {
    let db = trunkline_federation::NodeDatabase::new(&fed.node(me).nodedata);
    let spec = trunkline_server::federation::forward_spec(
        &db.node().expect("node"),
        &db.peer(peer, true).expect("read").expect("active"),
    )
    .expect("spec");
    let engine = node.engine().expect("engine");
    engine.declare_queue(queue, spec, 0).await.expect("declare");
}

#[tokio::test]
async fn a_link_forwards_a_queue_to_a_trunkline_peer_confirmed_by_receipts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fed = triangle(tmp.path());
    let aa = Authority::start(&fed, |_| {}).await;
    fed.set_servers(CA, AA, &[aa.server.federation.as_str()]);
    let ca = TestServer::start_with(|c| configure(c, fed.node(CA))).await;
    forward_queue(&ca, &fed, CA, AA, "to-aa").await;
    let http = reqwest::Client::new();
    let n = 300;
    agent_publishes(&ca, n).await;
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < n as usize && std::time::Instant::now() < deadline {
        got.extend(aa.taken().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.len(), n as usize, "all forwarded within 30 s");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["body"]["seqnum"], i as u64 + 1, "in order: {m}");
        // Moved into the subnet the authority knows the agent by.
        assert_eq!(m["body"]["creditor_id"], CREDITOR, "{m}");
        assert_eq!(m["headers"]["type"], "ConfigureAccount");
    }
    // Confirmed, so acked: the agent's queue empties.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let depth = ca.depth("to-aa").await;
        if depth == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {depth} in to-aa"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = trunkline_testkit::metrics_text(&http, &ca.backend, &ca.backend_key).await;
    let confirmed =
        format!("trunkline_federation_link_confirmed_total{{peer=\"{AA}\",queue=\"to-aa\"}} {n}");
    assert!(metrics.contains(&confirmed), "{metrics}");
    ca.stop().await;
    aa.server.stop().await;
}

/// Runs `trunkline federation …` to completion: its status and output.
async fn federation_cmd(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_trunkline"))
            .arg("federation")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run trunkline");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    })
    .await
    .expect("join")
}

/// Publishes `n` ConfigureAccount messages for the authority on the agent's node.
async fn agent_publishes(ca: &TestServer, n: i64) {
    agent_publishes_from(ca, &ca.admin_token().await, 1, n).await
}

/// The agent's messages `from..from + n` (as seqnums), published on `ca` with `tok`.
async fn agent_publishes_from(ca: &TestServer, tok: &str, from: i64, n: i64) {
    let http = reqwest::Client::new();
    let topic = format!(
        "creditors_out.{}",
        trunkline_federation::topology::id_words(DEBTOR)
    );
    for seq in from..from + n {
        let mut body: Value = serde_json::from_slice(&configure_account(seq)).expect("json");
        body["creditor_id"] = json!(OWN_CREDITOR);
        let r = http
            .post(format!("{}/send", ca.http))
            .bearer_auth(tok)
            .json(&json!({"topic": topic, "body": body}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 202);
    }
}

#[tokio::test]
async fn configure_queue_then_drain_a_deactivated_peer_answering_for_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fed = triangle(tmp.path());
    let ca = TestServer::start_with(|c| configure(c, fed.node(CA))).await;
    let creds = ca.data_dir().join("admin.json").display().to_string();
    let nodedata = fed.node(CA).nodedata.display().to_string();
    let args = |more: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = more.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--nodedata".into(),
            nodedata.clone(),
            "--credentials".into(),
            creds.clone(),
        ]);
        v
    };
    let (ok, out) = federation_cmd(args(&["configure-queue", AA, "to-aa"])).await;
    assert!(ok, "{out}");
    let q = ca
        .engine()
        .expect("engine")
        .get_queue("to-aa")
        .expect("declared");
    assert_eq!(q.bindings, vec!["creditors_out.12.34.ab.cd.#".to_string()]);
    assert_eq!(q.labels["federation.peer"], AA);
    // Again: nothing changes.
    let (ok, out) = federation_cmd(args(&["configure-queue", AA, "to-aa"])).await;
    assert!(ok, "{out}");
    let (ok, out) = federation_cmd(args(&[
        "configure-queue",
        "0123456789abcdef0123456789abcdef",
        "x",
    ]))
    .await;
    assert!(!ok && out.contains("not in the database"), "{out}");

    // The authority is deactivated (and unreachable): what waits for it is drained, and
    // each ConfigureAccount answered with a RejectedConfig as from the authority.
    fed.deactivate(CA, AA);
    agent_publishes(&ca, 20).await;
    let admin = ca.admin_token().await;
    let http = reqwest::Client::new();
    for (method, path, body) in [
        (
            reqwest::Method::PUT,
            "/queue/answers",
            json!({"bindings": ["creditors_in.#"]}),
        ),
        (
            reqwest::Method::PATCH,
            "/client/admin",
            json!({"grants": ["to-aa", "answers"]}),
        ),
    ] {
        let (s, v) = call(&http, method, format!("{}{path}", ca.http), &admin, body).await;
        assert!(s == 200 || s == 201, "{path}: {v}");
    }
    let mut drain = args(&["drain", AA, "to-aa", "--until-empty"]);
    drain.extend(["--stomp".into(), ca.stomp.clone()]);
    let (ok, out) = federation_cmd(drain).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("drained 20 messages") && out.contains("answered 20"),
        "{out}"
    );
    assert_eq!(ca.depth("to-aa").await, 0);
    let r = http
        .get(format!(
            "{}/receive?queue=answers&max_messages=100",
            ca.http
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("receive");
    let answers: Vec<Value> = r.json().await.expect("json");
    assert_eq!(answers.len(), 20);
    for a in &answers {
        assert_eq!(a["body"]["type"], "RejectedConfig", "{a}");
        assert_eq!(a["body"]["rejection_code"], "NO_CONNECTION_TO_DEBTOR");
        // Back in the agent's own subnet, as an answer from the authority would be.
        assert_eq!(a["body"]["creditor_id"], OWN_CREDITOR, "{a}");
        assert!(a["topic"]
            .as_str()
            .unwrap_or_default()
            .starts_with("creditors_in."));
    }
    // Draining an active peer is refused.
    fed.reactivate(CA, AA);
    let (ok, out) = federation_cmd(args(&["drain", AA, "to-aa", "--until-empty"])).await;
    assert!(!ok && out.contains("has not been deactivated"), "{out}");
    ca.stop().await;
}

#[tokio::test]
async fn a_link_run_in_the_foreground_forwards_a_queue_read_over_http() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fed = triangle(tmp.path());
    let aa = Authority::start(&fed, |_| {}).await;
    fed.set_servers(CA, AA, &[aa.server.federation.as_str()]);
    // The node runs no links of its own: the command does.
    let ca = TestServer::start_with(|c| {
        configure(c, fed.node(CA));
        c.federation.links = false;
    })
    .await;
    forward_queue(&ca, &fed, CA, AA, "to-aa").await;
    let admin = ca.admin_token().await;
    let http = reqwest::Client::new();
    let (s, v) = call(
        &http,
        reqwest::Method::PATCH,
        format!("{}/client/admin", ca.http),
        &admin,
        json!({"grants": ["to-aa"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    agent_publishes(&ca, 50).await;
    let node = fed.node(CA);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trunkline"))
        .args(["federation", "link", AA, "to-aa", "--nodedata"])
        .arg(&node.nodedata)
        .arg("--credentials")
        .arg(ca.data_dir().join("admin.json"))
        .arg("--cert")
        .arg(&node.cert)
        .arg("--key")
        .arg(&node.key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn link");
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 50 && std::time::Instant::now() < deadline {
        got.extend(aa.taken().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got.len(), 50);
    assert_eq!(got[0]["body"]["creditor_id"], CREDITOR);
    // Interrupted: it stops, saying what it did.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ca.depth("to-aa").await > 0 {
        assert!(std::time::Instant::now() < deadline, "acked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || {
        let status = child.wait().expect("wait");
        let mut s = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .expect("out")
            .read_to_string(&mut s)
            .expect("read");
        (status, s)
    })
    .await
    .expect("join");
    assert!(out.0.success(), "{out:?}");
    assert!(out.1.contains("50 confirmed"), "{}", out.1);
    ca.stop().await;
    aa.server.stop().await;
}

#[tokio::test]
async fn a_link_whose_peer_goes_away_while_idle_delivers_what_comes_once_it_is_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fed = triangle(tmp.path());
    let port = trunkline_testkit::free_port();
    let on_port = move |c: &mut trunkline_server::Config| {
        c.federation.listen = format!("127.0.0.1:{port}").parse().expect("addr");
    };
    let aa = Authority::start(&fed, on_port).await;
    fed.set_servers(CA, AA, &[aa.server.federation.as_str()]);
    let ca = TestServer::start_with(|c| configure(c, fed.node(CA))).await;
    forward_queue(&ca, &fed, CA, AA, "to-aa").await;
    agent_publishes(&ca, 5).await;
    assert_eq!(wait_depth(&aa.server, 5).await, 5);
    // The authority goes away while the link has nothing to send, and comes back.
    let kept = aa.server.stop_keep().await.expect("data dir kept");
    agent_publishes(&ca, 5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let back = TestServer::start_in(kept.path(), |c| {
        configure(c, fed.node(AA));
        on_port(c);
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(
        wait_depth(&back, 10).await,
        10,
        "all five sent while it was away"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // Nothing stranded on the agent: its queue empties.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let q_depth = ca.depth("to-aa").await;
        if q_depth == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} left in to-aa",
            q_depth
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    back.stop().await;
    ca.stop().await;
}

/// Messages in the authority's queue `from-peers`, waiting (at most 30 s) for `want`.
async fn wait_depth(server: &TestServer, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut d = server.depth("from-peers").await;
    while d < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        d = server.depth("from-peers").await;
    }
    d
}

#[tokio::test]
async fn a_link_stopped_while_its_peer_is_unreachable_gives_back_everything_it_took() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fed = triangle(tmp.path());
    // The authority's servers are a port nobody listens on: the link cannot connect.
    let ca = TestServer::start_with(|c| {
        configure(c, fed.node(CA));
        c.federation.buffer = 5;
    })
    .await;
    forward_queue(&ca, &fed, CA, AA, "to-aa").await;
    let leased = |server: &TestServer| server.engine().expect("engine").leased("to-aa");
    let wait_leased = |want: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let ca = &ca;
        async move {
            while leased(ca) != want && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            leased(ca)
        }
    };
    // The link takes one message (all there is) and hands it over, then takes what comes
    // next and waits to hand that over too, while it cannot connect.
    agent_publishes(&ca, 1).await;
    assert_eq!(wait_leased(1).await, 1);
    agent_publishes(&ca, 11).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while leased(&ca) < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(leased(&ca) >= 2, "a second batch taken");
    // Deactivated: the link stops and gives all back to the queue.
    fed.deactivate(CA, AA);
    assert_eq!(
        wait_leased(0).await,
        0,
        "nothing stays leased to a stopped link"
    );
    assert_eq!(ca.depth("to-aa").await, 12);
    // And the node stops promptly (its links are waited for).
    tokio::time::timeout(Duration::from_secs(10), ca.stop())
        .await
        .expect("the node stops within 10 s");
}

/// Messages the authority got, waiting (at most 30 s) until there are `n`: their seqnums.
async fn taken_seqnums(aa: &Authority, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < n && std::time::Instant::now() < deadline {
        got.extend(aa.taken().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got.iter()
        .map(|m| m["body"]["seqnum"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_one_link_per_queue_and_another_node_takes_it_over() {
    let Some(url) = trunkline_testkit::rabbitmq_env("TRUNKLINE_TEST_AMQP") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let fed = triangle(tmp.path());
    let aa = Authority::start(&fed, |_| {}).await;
    fed.set_servers(CA, AA, &[aa.server.federation.as_str()]);
    // Two nodes of the creditors agent, one cluster over RabbitMQ, the same keys.
    let namespace = format!("tl-fedcluster-{}", std::process::id());
    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        if i > 0 {
            for f in ["token.key", "backend.key", "channel.key"] {
                std::fs::copy(dirs[0].path().join(f), dir.path().join(f)).expect("copy key");
            }
        }
        nodes.push(
            TestServer::start_in(dir.path(), |c| {
                configure(c, fed.node(CA));
                c.broker.url = url.clone();
                c.broker.namespace = namespace.clone();
                c.broker.node = format!("ca{i}");
            })
            .await,
        );
    }
    let tok = nodes[0].admin_token().await;
    forward_queue(&nodes[0], &fed, CA, AA, "to-aa").await;
    agent_publishes_from(&nodes[1], &tok, 1, 20).await;
    // One link for the cluster: everything once, in order.
    let got = taken_seqnums(&aa, 20).await;
    assert_eq!(got, (1..=20).collect::<Vec<u64>>());
    let http = reqwest::Client::new();
    let connected =
        format!("trunkline_federation_link_connected{{peer=\"{AA}\",queue=\"to-aa\"}} 1");
    let mut holders = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let m = trunkline_testkit::metrics_text(&http, &n.backend, &n.backend_key).await;
        if m.contains(&connected) {
            holders.push(i);
        }
    }
    assert_eq!(holders.len(), 1, "one node runs the link: {holders:?}");
    // The node holding it stops: the other takes the link over and carries on.
    let holder = nodes.remove(holders[0]);
    holder.stop().await;
    let other = nodes.pop().expect("the other node");
    agent_publishes_from(&other, &tok, 21, 10).await;
    let got = taken_seqnums(&aa, 10).await;
    assert_eq!(got, (21..=30).collect::<Vec<u64>>());
    other.stop().await;
    aa.server.stop().await;
}
