//! The authorization matrix, tried as an attacker would: three clients, canary messages
//! that only their owner may ever see, and every read, write and admin path of HTTP,
//! STOMP and WebSocket; then deletions, rotations and changes while sessions are open.
//!
//! Every attempt is counted. A *leak* is a canary (or any message outside the reader's
//! rights) reaching someone else; a *privileged success* is a refused-by-rule action that
//! was carried out. The test prints the tally and fails on any of either.

use std::time::Duration;

use serde_json::{json, Value};
use trunkline_api::{CreateClient, Subscription, UpdateClient};
use trunkline_proto::{Command, Frame};
use trunkline_testkit::{StompWire, TestServer};

/// What the attacks came to.
#[derive(Default)]
struct Tally {
    attempts: u32,
    leaks: Vec<String>,
    privileged: Vec<String>,
}

impl Tally {
    /// An attempt that must be refused: `refused` says whether it was.
    fn refused(&mut self, what: &str, refused: bool) {
        self.attempts += 1;
        if !refused {
            self.privileged.push(what.to_owned());
        }
    }

    /// Messages seen by a reader: any whose topic it may not read is a leak.
    fn seen(&mut self, by: &str, topics: &[String], may_read: impl Fn(&str) -> bool) {
        self.attempts += 1;
        for t in topics {
            if !may_read(t) || t.contains("canary") {
                self.leaks.push(format!("{by} saw `{t}`"));
            }
        }
    }
}

struct Http {
    base: String,
    http: reqwest::Client,
}

impl Http {
    async fn token(&self, id: &str, secret: &str) -> String {
        trunkline_testkit::token(&self.http, &self.base, id, secret).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, v)
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }
}

fn topics_of(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["topic"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn create(
    admin: &trunkline_client::Client,
    id: &str,
    sub: &str,
    publish: Option<&str>,
) -> String {
    admin
        .create_client(&CreateClient {
            client_id: id.into(),
            client_name: id.into(),
            subscription: Subscription::One(sub.into()),
            publish: publish.map(|p| Subscription::One(p.into())),
            roles: vec![],
            grants: vec![],
            write_grants: vec![],
            read_topics: vec![],
            inbox: Default::default(),
        })
        .await
        .expect("create client")
        .secret
}

fn send(dest: &str, receipt: &str) -> Frame {
    Frame::new(Command::Send)
        .header("destination", dest)
        .header("receipt", receipt)
        .header("content-type", "application/json")
        .body(b"{\"x\":1}".to_vec())
}

fn subscribe(dest: &str, id: &str) -> Frame {
    Frame::new(Command::Subscribe)
        .header("destination", dest)
        .header("id", id)
        .header("ack", "client-individual")
        .header("receipt", format!("sub-{id}"))
}

/// Sends `f` on a fresh connection of `login` and tells whether it was refused (an ERROR
/// with `code`), not carried out (a RECEIPT).
async fn stomp_refused(
    server: &TestServer,
    login: &str,
    secret: &str,
    f: Frame,
    code: &str,
) -> bool {
    let (mut w, connected) = StompWire::connect(&server.stomp, login, secret).await;
    assert_eq!(connected.command, Command::Connected, "{connected:?}");
    w.send(f).await;
    match w.next().await {
        Some(f) if f.command == Command::Error => f.get("code") == Some(code),
        _ => false,
    }
}

async fn ws_inbox_topics(s: &trunkline_client::ws::WsSession, wait: Duration) -> Vec<String> {
    let mut topics = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(wait, s.next_event()).await {
        if let trunkline_client::ws::Event::Inbox(m) = ev {
            topics.push(m["topic"].as_str().unwrap_or("?").to_owned());
        }
    }
    topics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leaks_and_no_privileged_successes_over_every_interface() {
    let server = TestServer::start().await;
    let http = Http {
        base: server.http.clone(),
        http: reqwest::Client::new(),
    };
    let admin = server.admin();
    let admin_secret = server.admin_credentials().secret;
    let admin_tok = http.token("admin", &admin_secret).await;
    // Victim `ca` reads a.#; attacker `cb` reads b.# and may publish anywhere (the
    // default); attacker `cc` reads c.# and may publish to c.# only.
    let ca = create(&admin, "ca", "a.#", None).await;
    let cb = create(&admin, "cb", "b.#", None).await;
    let cc = create(&admin, "cc", "c.#", Some("c.#")).await;
    let (ta, tb, tc) = (
        http.token("ca", &ca).await,
        http.token("cb", &cb).await,
        http.token("cc", &cc).await,
    );
    let mut t = Tally::default();

    // Live subscriptions of the attackers, open before the canaries are published:
    // wider patterns than they may read.
    let mut live = Vec::new();
    for (i, dest) in [
        "/topic/#",
        "/topic/a.#",
        "/topic/*.secret",
        "/exchange/amq.topic/#",
    ]
    .into_iter()
    .enumerate()
    {
        let (mut w, _) = StompWire::connect(&server.stomp, "cb", &cb).await;
        w.send(subscribe(dest, &format!("l{i}"))).await;
        let r = w.next().await.expect("receipt");
        assert_eq!(r.command, Command::Receipt, "{dest}: {r:?}");
        live.push((dest, w));
    }

    // A declared queue that holds every canary too, read by nobody here.
    let (s, _) = http
        .call(
            reqwest::Method::PUT,
            "/queue/vault",
            &admin_tok,
            Some(json!({"bindings": ["a.#"]})),
        )
        .await;
    assert_eq!(s, 201);
    // Canaries for `ca`: in its inbox, and one in its dead-letter queue.
    for topic in ["a.canary.1", "a.canary.2", "a.secret"] {
        let (s, _) = http
            .post(
                "/send",
                &admin_tok,
                json!({"topic": topic, "body": {"canary": true}}),
            )
            .await;
        assert_eq!(s, 202);
    }
    // A message the attackers may read, so that "saw nothing" is not the only outcome.
    let (s, _) = http
        .post("/send", &admin_tok, json!({"topic": "b.ok", "body": 1}))
        .await;
    assert_eq!(s, 202);
    let (_, leased) = http
        .get("/receive?ack=manual&lease=60&max_messages=1", &ta)
        .await;
    let leased_receipt = leased[0]["receipt"].as_str().expect("receipt").to_owned();
    let (s, _) = http
        .post(
            "/nack",
            &ta,
            json!({"receipts": [leased_receipt], "requeue": false}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, again) = http
        .get("/receive?ack=manual&lease=60&max_messages=1", &ta)
        .await;
    let held = again[0]["receipt"].as_str().expect("receipt").to_owned();

    // --- reads ---------------------------------------------------------------------------
    for (dest, w) in &mut live {
        let (topics, _) = w.topics_within(Duration::from_millis(500)).await;
        t.seen(&format!("cb live {dest}"), &topics, |t| t.starts_with("b."));
        // Narrowed to the intersection: `#` gives what cb may read, `a.#` nothing.
        let expect: &[&str] = if dest.ends_with("/#") { &["b.ok"] } else { &[] };
        t.refused(&format!("cb live {dest} gets {expect:?}"), topics == expect);
    }
    for q in [
        "ca-inbox",
        "ca-dead",
        "admin-inbox",
        "vault",
        "vault.XQ",
        "nope",
    ] {
        for tok in [&tb, &tc] {
            let (s, v) = http.get(&format!("/receive?queue={q}"), tok).await;
            t.refused(&format!("HTTP receive {q}"), s == 403);
            t.seen(&format!("HTTP receive {q}"), &topics_of(&v), |_| false);
        }
        for (login, secret) in [("cb", &cb), ("cc", &cc)] {
            for prefix in ["/queue/", "/amq/queue/"] {
                let f = subscribe(&format!("{prefix}{q}"), "x");
                t.refused(
                    &format!("STOMP {login} SUBSCRIBE {prefix}{q}"),
                    stomp_refused(&server, login, secret, f, "forbidden").await,
                );
            }
        }
        let ws = trunkline_client::Client::new(&server.http, "cb", &cb)
            .expect("client")
            .websocket()
            .await
            .expect("ws");
        let r = ws.request("inbox", "subscribe", json!({"queue": q})).await;
        t.refused(&format!("WS inbox.subscribe {q}"), r.is_err());
        t.seen(
            "WS cb",
            &ws_inbox_topics(&ws, Duration::from_millis(200)).await,
            |_| false,
        );
        ws.close().await;
    }
    // Own inboxes hold no canary.
    for tok in [&tb, &tc] {
        let (_, v) = http.get("/receive?max_messages=100", tok).await;
        t.seen("own inbox", &topics_of(&v), |t| {
            t.starts_with("b.") || t.starts_with("c.")
        });
    }
    // Settling someone else's lease by its receipt.
    for tok in [&tb, &tc] {
        for path in ["/ack", "/nack"] {
            let (s, v) = http.post(path, tok, json!({"receipts": [held]})).await;
            t.refused(
                &format!("HTTP {path} of ca's receipt"),
                s == 200 && v["done"] == 0,
            );
        }
        let (s, v) = http
            .post("/nack", tok, json!({"receipts": [held], "requeue": false}))
            .await;
        t.refused(
            "HTTP nack-to-dead of ca's receipt",
            s == 200 && v["done"] == 0,
        );
    }
    // WebSocket channel rights: system channels and private channels without a token.
    let ws = trunkline_client::Client::new(&server.http, "cb", &cb)
        .expect("client")
        .websocket()
        .await
        .expect("ws");
    for channel in ["sys:*", "pvt:ops", "prs:ops", "sys:ops"] {
        let r = ws.subscribe(channel, None).await;
        t.refused(&format!("WS subscribe {channel}"), r.is_err());
    }
    let r = ws
        .request(
            "rpc",
            "register",
            json!({"name": "pvt:svc", "functions": ["f"]}),
        )
        .await;
    t.refused("WS serve pvt:svc without token", r.is_err());
    ws.close().await;

    // --- writes --------------------------------------------------------------------------
    for (path, body) in [
        ("/send", json!({"topic": "a.x", "body": 1})),
        (
            "/send",
            json!({"header": {"destination": "a.x"}, "payload": 1}),
        ),
        ("/notify", json!({"body": 1})),
    ] {
        let (s, _) = http.post(path, &tc, body.clone()).await;
        t.refused(&format!("HTTP cc {path} {body}"), s == 403);
    }
    for (login, secret) in [("cb", &cb), ("cc", &cc)] {
        for dest in [
            "/queue/ca-inbox",
            "/queue/ca-dead",
            &format!("/queue/{login}-dead"),
            "/queue/admin-inbox",
            "/amq/queue/ca-inbox",
            "/queue/vault",
            "/queue/vault.XQ",
        ] {
            t.refused(
                &format!("STOMP {login} SEND {dest}"),
                stomp_refused(&server, login, secret, send(dest, "r"), "forbidden").await,
            );
        }
    }
    for dest in ["/topic/a.x", "/exchange/amq.topic/a.x", "/topic/b.x"] {
        t.refused(
            &format!("STOMP cc SEND {dest}"),
            stomp_refused(&server, "cc", &cc, send(dest, "r"), "forbidden").await,
        );
    }
    // A transaction holding one forbidden SEND commits nothing.
    let (mut w, _) = StompWire::connect(&server.stomp, "cc", &cc).await;
    w.send(Frame::new(Command::Begin).header("transaction", "tx"))
        .await;
    w.send(send("/topic/c.ok", "r1").header("transaction", "tx"))
        .await;
    w.send(send("/topic/a.x", "r2").header("transaction", "tx"))
        .await;
    w.send(
        Frame::new(Command::Commit)
            .header("transaction", "tx")
            .header("receipt", "rc"),
    )
    .await;
    // A SEND in a transaction is receipted when it is buffered; the COMMIT's answer tells.
    let f = loop {
        let f = w.next().await.expect("answer");
        if f.command == Command::Error || f.get("receipt-id") == Some("rc") {
            break f;
        }
    };
    t.refused(
        &format!("STOMP cc COMMIT with a forbidden SEND: {f:?}"),
        f.command == Command::Error && f.get("code") == Some("forbidden"),
    );
    let (_, v) = http.get("/receive?max_messages=100", &tc).await;
    t.refused(
        "the refused transaction's c.ok is not in cc's inbox",
        topics_of(&v).is_empty(),
    );

    // --- admin ---------------------------------------------------------------------------
    for tok in [&tb, &tc] {
        let (s, _) = http.get("/client", tok).await;
        t.refused("HTTP list clients", s == 403);
        let (s, _) = http.get("/client/ca", tok).await;
        t.refused("HTTP show ca", s == 403);
        let (s, _) = http
            .post(
                "/client",
                tok,
                json!({"client_id": "evil", "client_name": "e", "subscription": "#"}),
            )
            .await;
        t.refused("HTTP create client", s == 403);
        let (s, _) = http
            .call(
                reqwest::Method::PATCH,
                "/client/cb",
                tok,
                Some(json!({"subscription": "#", "roles": ["admin"]})),
            )
            .await;
        t.refused("HTTP widen itself", s == 403);
        let (s, _) = http.post("/client/ca/secret", tok, json!({})).await;
        t.refused("HTTP rotate ca", s == 403);
        let (s, _) = http
            .call(reqwest::Method::DELETE, "/client/ca", tok, None)
            .await;
        t.refused("HTTP delete ca", s == 403);
        let (s, _) = http.get("/queue", tok).await;
        t.refused("HTTP list queues", s == 403);
        let (s, _) = http.get("/queue/vault", tok).await;
        t.refused("HTTP show vault", s == 403);
        for (method, body) in [
            (reqwest::Method::PUT, Some(json!({"bindings": ["#"]}))),
            (reqwest::Method::DELETE, None),
        ] {
            let (s, _) = http.call(method.clone(), "/queue/vault", tok, body).await;
            t.refused(&format!("HTTP {method} /queue/vault"), s == 403);
        }
        let (s, _) = http
            .call(
                reqwest::Method::PATCH,
                "/client/cb",
                tok,
                Some(json!({"grants": ["vault"]})),
            )
            .await;
        t.refused("HTTP grant itself vault", s == 403);
    }

    // The victim still has every canary (nothing was taken, acked or dead-lettered by
    // the attacks): 3 published, 1 moved to dead, 1 of them held by ca's lease.
    let (_, v) = http.get("/receive?max_messages=100", &ta).await;
    t.refused("ca's inbox intact", topics_of(&v).len() == 1);
    let (_, v) = http.get("/receive?queue=dead&max_messages=100", &ta).await;
    t.refused("ca's dead letters intact", topics_of(&v).len() == 1);
    let (_, v) = http.get("/queue/vault", &admin_tok).await;
    t.refused(
        &format!("the vault holds its 3 canaries and nothing more: {v}"),
        v["depth"] == 3 && v["bindings"] == json!(["a.#"]) && v["dead_depth"] == 0,
    );

    // --- changes while connected ---------------------------------------------------------
    // ca: a STOMP consumer of its inbox, a live topic subscriber, a WebSocket inbox
    // session. Then ca is deleted and made again; the new ca's messages must reach none
    // of the old sessions, which are closed.
    let (mut q, _) = StompWire::connect(&server.stomp, "ca", &ca).await;
    q.send(subscribe("/queue/ca-inbox", "q")).await;
    let (mut l, _) = StompWire::connect(&server.stomp, "ca", &ca).await;
    l.send(subscribe("/topic/a.#", "l")).await;
    let ws = trunkline_client::Client::new(&server.http, "ca", &ca)
        .expect("client")
        .websocket()
        .await
        .expect("ws");
    ws.subscribe_inbox(10, 30).await.expect("ws inbox");
    for w in [&mut q, &mut l] {
        let f = w.next().await.expect("receipt");
        assert_eq!(f.command, Command::Receipt, "{f:?}");
    }
    // Drain what the old sessions legitimately get now.
    let _ = q.topics_within(Duration::from_millis(300)).await;
    let _ = ws_inbox_topics(&ws, Duration::from_millis(300)).await;

    admin.delete_client("ca").await.expect("delete ca");
    let ca2 = create(&admin, "ca", "a.#", None).await;
    let (s, _) = http
        .post(
            "/send",
            &admin_tok,
            json!({"topic": "a.canary.new", "body": "for the new ca only"}),
        )
        .await;
    assert_eq!(s, 202);
    for (name, w) in [("queue", &mut q), ("live", &mut l)] {
        let (topics, err) = w.topics_within(Duration::from_secs(2)).await;
        t.seen(
            &format!("old ca STOMP {name} after delete"),
            &topics,
            |_| false,
        );
        t.refused(
            &format!("old ca STOMP {name} closed with credentials_revoked"),
            err.is_some_and(|e| e.get("code") == Some("credentials_revoked")),
        );
    }
    t.seen(
        "old ca WS after delete",
        &ws_inbox_topics(&ws, Duration::from_secs(1)).await,
        |_| false,
    );
    t.refused(
        "old ca WS closed 4401",
        ws.closed().is_some_and(|c| c.contains("4401")),
    );
    let (s, _) = http.get("/receive", &ta).await;
    t.refused("old ca token after delete", s == 401);

    // Rotation: sessions of the new ca opened before end; the old token stops.
    let (mut r, _) = StompWire::connect(&server.stomp, "ca", &ca2).await;
    r.send(subscribe("/queue/ca-inbox", "q")).await;
    let ta2 = http.token("ca", &ca2).await;
    let ws2 = trunkline_client::Client::new(&server.http, "ca", &ca2)
        .expect("client")
        .websocket()
        .await
        .expect("ws");
    let _ = r.topics_within(Duration::from_millis(300)).await;
    admin.rotate_secret("ca").await.expect("rotate");
    let (_, err) = r.topics_within(Duration::from_secs(2)).await;
    t.refused(
        "rotated ca STOMP closed",
        err.is_some_and(|e| e.get("code") == Some("credentials_revoked")),
    );
    let _ = ws_inbox_topics(&ws2, Duration::from_millis(500)).await;
    t.refused(
        "rotated ca WS closed 4401",
        ws2.closed().is_some_and(|c| c.contains("4401")),
    );
    let (s, _) = http.get("/receive", &ta2).await;
    t.refused("rotated ca old token", s == 401);
    t.refused(
        "old secret refused over STOMP",
        StompWire::connect(&server.stomp, "ca", &ca2)
            .await
            .1
            .command
            == Command::Error,
    );

    // A narrowed subscription reaches a live subscription that is open.
    let (_, mut w) = live.pop().expect("a live subscription");
    admin
        .update_client(
            "cb",
            &UpdateClient {
                subscription: Some(Subscription::One("d.#".into())),
                ..Default::default()
            },
        )
        .await
        .expect("narrow cb");
    for topic in ["b.after", "d.after"] {
        let (s, _) = http
            .post("/send", &admin_tok, json!({"topic": topic, "body": 1}))
            .await;
        assert_eq!(s, 202);
    }
    let (topics, _) = w.topics_within(Duration::from_millis(800)).await;
    t.seen("cb live after narrowing", &topics, |t| t.starts_with("d."));
    t.refused("cb live gets d.after", topics == ["d.after"]);

    println!(
        "authorization matrix: {} attempts, {} leaks, {} privileged successes",
        t.attempts,
        t.leaks.len(),
        t.privileged.len()
    );
    for l in &t.leaks {
        println!("  LEAK: {l}");
    }
    for p in &t.privileged {
        println!("  PRIVILEGED: {p}");
    }
    assert!(
        t.leaks.is_empty() && t.privileged.is_empty(),
        "leaks: {:?}; privileged successes: {:?}",
        t.leaks,
        t.privileged
    );
    assert!(
        t.attempts > 100,
        "the matrix shrank: {} attempts",
        t.attempts
    );
    server.stop().await;
}

/// The roles that remain do what they say: `backend` acts as a trusted backend in its
/// WebSocket sessions and manages nobody; `admin` manages clients and has the backend
/// rights too. The removed roles are refused with the reason.
#[tokio::test]
async fn roles_have_the_documented_effect() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let mut be = CreateClient::new("be", Subscription::One("be.#".into()));
    be.roles = vec!["backend".into()];
    let secret = admin
        .create_client(&be)
        .await
        .expect("backend client")
        .secret;
    let client = trunkline_client::Client::new(&server.http, "be", &secret).expect("client");
    let ws = client.websocket().await.expect("ws");
    for channel in ["sys:*", "pvt:ops", "prs:ops"] {
        let r = ws.subscribe(channel, None).await;
        assert!(r.is_ok(), "backend joins {channel} without a token: {r:?}");
    }
    let r = ws
        .request(
            "rpc",
            "register",
            json!({"name": "pvt:svc", "functions": ["f"]}),
        )
        .await;
    assert!(r.is_ok(), "backend serves pvt:svc: {r:?}");
    let r = client.list_clients().await;
    assert!(r.is_err(), "a backend client manages nobody: {r:?}");
    ws.close().await;
    for removed in ["publisher", "peer"] {
        let mut c = CreateClient::new("old", Subscription::One("x".into()));
        c.roles = vec![removed.into()];
        let e = admin.create_client(&c).await.expect_err("a removed role");
        assert!(format!("{e}").contains("removed"), "{removed}: {e}");
    }
    server.stop().await;
}

/// `read_topics` is a read path of its own: live only (nothing of it lands in the inbox),
/// and a live subscription gets it and the subscription, nothing else.
#[tokio::test]
async fn read_topics_are_live_only() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let mut w = CreateClient::new("watch", Subscription::One("own.#".into()));
    w.read_topics = vec!["fleet.#".into()];
    let secret = admin.create_client(&w).await.expect("watcher").secret;
    let (mut s, _) = StompWire::connect(&server.stomp, "watch", &secret).await;
    s.send(subscribe("/topic/#", "all")).await;
    assert_eq!(s.next().await.expect("receipt").command, Command::Receipt);
    for topic in ["fleet.1", "own.1", "secret.canary"] {
        admin
            .send(topic, &json!({"t": topic}))
            .await
            .expect("publish");
    }
    let (mut topics, _) = s.topics_within(Duration::from_millis(800)).await;
    topics.sort();
    assert_eq!(
        topics,
        ["fleet.1", "own.1"],
        "live: read_topics and subscription only"
    );
    let client = trunkline_client::Client::new(&server.http, "watch", &secret).expect("client");
    let inbox: Vec<String> = client
        .receive(&Default::default())
        .await
        .expect("receive")
        .into_iter()
        .map(|m| m.topic)
        .collect();
    assert_eq!(
        inbox,
        ["own.1"],
        "read_topics does not route into the inbox"
    );
    server.stop().await;
}
