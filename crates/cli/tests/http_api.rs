//! The HTTP API as a user sees it: a real node on 127.0.0.1:0, real sockets.

use std::time::Duration;

use serde_json::{json, Value};
use trunkline_testkit::TestServer;

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: &str) -> Self {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("http client"),
            base: base.to_owned(),
        }
    }

    async fn token(&self, id: &str, secret: &str) -> String {
        let (status, v) = self
            .get(&format!("/token?client_id={id}&secret={secret}"), None)
            .await;
        assert_eq!(status, 200, "token for {id}: {v}");
        v["token"].as_str().expect("token").to_owned()
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, token, body).await
    }

    /// Creates a client with the admin token; returns its secret.
    async fn create(&self, admin: &str, id: &str, sub: Value) -> String {
        let (s, v) = self
            .post(
                "/client",
                Some(admin),
                &json!({"client_id": id, "client_name": id, "subscription": sub}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["secret"].as_str().expect("secret").to_owned()
    }

    async fn receive(&self, token: &str, query: &str) -> Vec<Value> {
        let (s, v) = self.get(&format!("/receive?{query}"), Some(token)).await;
        assert_eq!(s, 200, "{v}");
        v.as_array().expect("array").clone()
    }
}

fn topics(msgs: &[Value]) -> Vec<&str> {
    msgs.iter()
        .map(|m| m["topic"].as_str().unwrap_or(""))
        .collect()
}

async fn setup() -> (TestServer, Api, String) {
    let server = TestServer::start().await;
    let api = Api::new(&server.http);
    let admin = api.token("admin", &server.admin_credentials().secret).await;
    (server, api, admin)
}

#[tokio::test]
async fn noc_flow_with_wildcards_and_notify() {
    let (server, api, admin) = setup().await;
    let s1 = api.create(&admin, "noc-c2", json!("soar.*.noc.#")).await;
    let s2 = api
        .create(
            &admin,
            "autosub",
            json!(["soar.noc.autosub.#", "#.platform-mission"]),
        )
        .await;
    let t1 = api.token("noc-c2", &s1).await;
    let t2 = api.token("autosub", &s2).await;

    // The bootstrap admin sees everything but never blocks publishers.
    let (_, v) = api.get("/client/admin", Some(&admin)).await;
    assert_eq!(
        (v["subscription"].as_str(), v["inbox"]["overflow"].as_str()),
        (Some("#"), Some("drop-oldest")),
        "{v}"
    );
    // The secret is shown once only.
    let (s, v) = api.get("/client/noc-c2", Some(&admin)).await;
    assert_eq!(s, 200);
    assert!(
        v.get("secret").is_none() && v["subscription"] == "soar.*.noc.#",
        "{v}"
    );
    let (_, list) = api.get("/client", Some(&admin)).await;
    assert!(list
        .as_array()
        .expect("list")
        .iter()
        .all(|c| c.get("secret").is_none()));

    for topic in [
        "soar.x.noc",
        "soar.noc.autosub.ah1.send.platform-mission",
        "other.platform-mission",
        "soar.noc",
    ] {
        let (s, v) = api
            .post(
                "/send",
                Some(&t1),
                &json!({"topic": topic, "body": {"t": topic}}),
            )
            .await;
        assert_eq!(s, 202, "{v}");
    }
    // A NOC message: the topic is header.destination, the body is the whole message.
    let noc = json!({"header": {"destination": "soar.y.noc.z", "source": "x"}, "payload": {"message_type": "mission_plan"}});
    let (s, v) = api.post("/send", Some(&t2), &noc).await;
    assert_eq!((s, v["delivered_to"].as_u64()), (202, Some(2)), "{v}");

    let got1 = api.receive(&t1, "").await;
    assert_eq!(topics(&got1), ["soar.x.noc", "soar.y.noc.z"]);
    assert_eq!(got1[1]["body"], noc);
    assert_eq!(got1[1]["sender"], "autosub");
    assert_eq!(got1[0]["redelivered"], false);
    let got2 = api.receive(&t2, "").await;
    assert_eq!(
        topics(&got2),
        [
            "soar.noc.autosub.ah1.send.platform-mission",
            "other.platform-mission"
        ]
    );
    // Destructive: a second read finds nothing.
    assert!(api.receive(&t1, "").await.is_empty());

    // The admin subscribes to `#`: it got all five.
    assert_eq!(api.receive(&admin, "").await.len(), 5);
    let (s, v) = api
        .post("/notify", Some(&t1), &json!({"body": "all hands"}))
        .await;
    assert_eq!((s, v["delivered_to"].as_u64()), (202, Some(3)), "{v}");
    for t in [&t1, &t2, &admin] {
        let got = api.receive(t, "").await;
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0]["topic"].as_str(), got[0]["body"].as_str()),
            (Some("broadcast"), Some("all hands"))
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn max_messages_defaults_to_ten() {
    let (server, api, admin) = setup().await;
    for i in 0..25 {
        api.post("/send", Some(&admin), &json!({"topic": "a.b", "body": i}))
            .await;
    }
    assert_eq!(api.receive(&admin, "").await.len(), 10);
    assert_eq!(api.receive(&admin, "max_messages=12").await.len(), 12);
    assert_eq!(api.receive(&admin, "max_messages=100").await.len(), 3);
    let (s, v) = api.get("/receive?max_messages=0", Some(&admin)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    server.stop().await;
}

#[tokio::test]
async fn changes_take_effect_without_restart() {
    let (server, api, admin) = setup().await;
    // Created while the node runs: receives the next matching message.
    let s = api.create(&admin, "late", json!("fleet.*.status")).await;
    let t = api.token("late", &s).await;
    api.post(
        "/send",
        Some(&admin),
        &json!({"topic": "fleet.ah1.status", "body": 1}),
    )
    .await;
    assert_eq!(api.receive(&t, "").await.len(), 1);
    // Re-subscribed: the old pattern stops, the new one starts, at once.
    let (st, v) = api
        .send(
            reqwest::Method::PATCH,
            "/client/late",
            Some(&admin),
            &json!({"subscription": "fleet.*.alarm"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    api.post(
        "/send",
        Some(&admin),
        &json!({"topic": "fleet.ah1.status", "body": 2}),
    )
    .await;
    api.post(
        "/send",
        Some(&admin),
        &json!({"topic": "fleet.ah1.alarm", "body": 3}),
    )
    .await;
    let got = api.receive(&t, "").await;
    assert_eq!(topics(&got), ["fleet.ah1.alarm"]);
    server.stop().await;
}

#[tokio::test]
async fn tokens_die_with_rotation_and_deletion() {
    let (server, api, admin) = setup().await;
    let s = api.create(&admin, "c1", json!("#")).await;
    let t = api.token("c1", &s).await;
    assert_eq!(api.get("/receive", Some(&t)).await.0, 200);
    let (st, v) = api
        .post("/client/c1/secret", Some(&admin), &json!({}))
        .await;
    assert_eq!(st, 200);
    let (st, v2) = api.get("/receive", Some(&t)).await;
    assert_eq!(
        (st, v2["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    let (st, _) = api
        .get(&format!("/token?client_id=c1&secret={s}"), None)
        .await;
    assert_eq!(st, 401, "the old secret no longer works");
    let t2 = api
        .token("c1", v["secret"].as_str().expect("new secret"))
        .await;
    assert_eq!(api.get("/receive", Some(&t2)).await.0, 200);
    let (st, _) = api
        .send(
            reqwest::Method::DELETE,
            "/client/c1",
            Some(&admin),
            &json!(null),
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(api.get("/receive", Some(&t2)).await.0, 401);
    let (st, v) = api.get("/client/c1", Some(&admin)).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("unknown_client"))
    );
    server.stop().await;
}

#[tokio::test]
async fn permissions() {
    let (server, api, admin) = setup().await;
    let s = api.create(&admin, "plain", json!("#")).await;
    let t = api.token("plain", &s).await;
    let (st, v) = api
        .post(
            "/client",
            Some(&t),
            &json!({"client_id": "x", "client_name": "x", "subscription": "#"}),
        )
        .await;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(api.get("/client", Some(&t)).await.0, 403);
    assert_eq!(
        api.get("/client/plain", Some(&t)).await.0,
        200,
        "a client may read itself"
    );
    assert_eq!(api.get("/client/admin", Some(&t)).await.0, 403);
    // No credentials at all: POST /client is not open (the NOC left it open).
    let (st, v) = api
        .post(
            "/client",
            None,
            &json!({"client_id": "x", "client_name": "x", "subscription": "#"}),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("missing_credentials"))
    );
    // The backend key works on the backend listener only.
    let key = server.backend_key.clone();
    let c = reqwest::Client::new();
    let body = json!({"client_id": "viakey", "client_name": "k", "subscription": "#"});
    let r = c
        .post(format!("{}/client", server.http))
        .header("X-Backend-Key", &key)
        .json(&body)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("{}/client", server.backend))
        .header("X-Backend-Key", "wrong-key-wrong-key")
        .json(&body)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{}/client", server.backend))
        .header("X-Backend-Key", &key)
        .json(&body)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 201);
    server.stop().await;
}

#[tokio::test]
async fn oauth_token_and_throttling() {
    let (server, api, _) = setup().await;
    let secret = server.admin_credentials().secret;
    let c = reqwest::Client::new();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "admin"),
        ("client_secret", secret.as_str()),
    ];
    let r: Value = c
        .post(format!("{}/token", server.http))
        .form(&form)
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(r["token_type"], "Bearer");
    assert!(r["expires_in"].as_u64().unwrap_or(0) > 23 * 3600);
    let t = r["access_token"].as_str().expect("access_token");
    assert_eq!(api.get("/receive", Some(t)).await.0, 200);
    // Basic auth also works.
    let r = c
        .post(format!("{}/token", server.http))
        .basic_auth("admin", Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    for _ in 0..5 {
        let (st, v) = api.get("/token?client_id=admin&secret=nope", None).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (401, Some("invalid_credentials"))
        );
    }
    let r = c
        .get(format!(
            "{}/token?client_id=admin&secret={secret}",
            server.http
        ))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 429, "throttled even with the right secret");
    assert!(r.headers().get("retry-after").is_some());
    server.stop().await;
}

#[tokio::test]
async fn manual_ack_nack_and_lease_expiry() {
    let (server, api, admin) = setup().await;
    for i in 0..3 {
        api.post("/send", Some(&admin), &json!({"topic": "a", "body": i}))
            .await;
    }
    let got = api.receive(&admin, "ack=manual&lease=1").await;
    assert_eq!(got.len(), 3);
    let r: Vec<String> = got
        .iter()
        .map(|m| m["receipt"].as_str().expect("receipt").to_owned())
        .collect();
    // Leased messages are not handed out again while the lease runs.
    assert!(api.receive(&admin, "ack=manual").await.is_empty());
    let (st, v) = api
        .post("/ack", Some(&admin), &json!({"receipts": [r[0]]}))
        .await;
    assert_eq!((st, v["done"].as_u64()), (200, Some(1)));
    let (_, v) = api
        .post("/ack", Some(&admin), &json!({"receipts": [r[0], "bogus"]}))
        .await;
    assert_eq!(v["done"].as_u64(), Some(0));
    assert_eq!(v["unknown"].as_array().map(|a| a.len()), Some(2));
    let (_, v) = api
        .post("/nack", Some(&admin), &json!({"receipts": [r[1]]}))
        .await;
    assert_eq!(v["done"].as_u64(), Some(1));
    let again = api.receive(&admin, "ack=manual&lease=30").await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (
            again[0]["body"].as_i64(),
            again[0]["redelivered"].as_bool(),
            again[0]["delivery_count"].as_u64()
        ),
        (Some(1), Some(true), Some(2))
    );
    // The third one's lease runs out and it comes back.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let back = api.receive(&admin, "").await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0]["body"].as_i64(), back[0]["redelivered"].as_bool()),
        (Some(2), Some(true))
    );
    // Receipts are the caller's own.
    let s = api.create(&admin, "other", json!("zzz")).await;
    let t = api.token("other", &s).await;
    let receipt = again[0]["receipt"].as_str().expect("receipt");
    let (_, v) = api
        .post("/ack", Some(&t), &json!({"receipts": [receipt]}))
        .await;
    assert_eq!(v["done"].as_u64(), Some(0));
    let (_, v) = api
        .post("/ack", Some(&admin), &json!({"receipts": [receipt]}))
        .await;
    assert_eq!(v["done"].as_u64(), Some(1));
    server.stop().await;
}

#[tokio::test]
async fn dead_letter_ttl_dedup_and_overflow() {
    let server = TestServer::start_with(|c| {
        c.inbox.max_deliveries = 2;
    })
    .await;
    let api = Api::new(&server.http);
    let admin = api.token("admin", &server.admin_credentials().secret).await;

    // Dead letter after two deliveries.
    api.post(
        "/send",
        Some(&admin),
        &json!({"topic": "dl", "body": "poison"}),
    )
    .await;
    for _ in 0..2 {
        let m = api.receive(&admin, "ack=manual").await;
        api.post(
            "/nack",
            Some(&admin),
            &json!({"receipts": [m[0]["receipt"]]}),
        )
        .await;
    }
    assert!(api.receive(&admin, "").await.is_empty());
    let dead = api.receive(&admin, "queue=dead").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["body"], "poison");

    // TTL.
    api.post(
        "/send",
        Some(&admin),
        &json!({"topic": "t", "body": 1, "ttl": 0.2}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(api.receive(&admin, "").await.is_empty());

    // Dedup.
    let (_, a) = api
        .post(
            "/send",
            Some(&admin),
            &json!({"topic": "d", "body": 1, "message_id": "m-1"}),
        )
        .await;
    let (s, b) = api
        .post(
            "/send",
            Some(&admin),
            &json!({"topic": "d", "body": 1, "message_id": "m-1"}),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(
        (b["id"].clone(), b["duplicate"].as_bool()),
        (a["id"].clone(), Some(true))
    );
    assert_eq!(api.receive(&admin, "").await.len(), 1);

    // Overflow: reject-publish by default, drop-oldest when asked.
    let (s, _) = api
        .post("/client", Some(&admin), &json!({"client_id": "small", "client_name": "s", "subscription": "o.#", "inbox": {"max_length": 2}}))
        .await;
    assert_eq!(s, 201);
    api.post("/send", Some(&admin), &json!({"topic": "o.1", "body": 1}))
        .await;
    api.post("/send", Some(&admin), &json!({"topic": "o.2", "body": 2}))
        .await;
    if TestServer::on_rabbitmq() {
        // A quorum queue refuses only once it is over its limit: it takes one more, and
        // the other queues of a refused publish keep it (docs/scale-out.md). Its limits
        // cannot change either: the rest is the embedded engine's.
        let (s, _) = api
            .post("/send", Some(&admin), &json!({"topic": "o.3", "body": 3}))
            .await;
        assert_eq!(s, 202);
        let (s, v) = api
            .post("/send", Some(&admin), &json!({"topic": "o.4", "body": 4}))
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (507, Some("queue_full")),
            "{v}"
        );
        server.stop().await;
        return;
    }
    let (s, v) = api
        .post("/send", Some(&admin), &json!({"topic": "o.3", "body": 3}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (507, Some("queue_full")),
        "{v}"
    );
    // Atomic: the admin (subscribed to #) did not get o.3 either.
    assert_eq!(topics(&api.receive(&admin, "").await), ["o.1", "o.2"]);
    let (s, _) = api
        .send(
            reqwest::Method::PATCH,
            "/client/small",
            Some(&admin),
            &json!({"inbox": {"max_length": 2, "overflow": "drop-oldest"}}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .post("/send", Some(&admin), &json!({"topic": "o.3", "body": 3}))
        .await;
    assert_eq!(s, 202);
    server.stop().await;
}

#[tokio::test]
async fn long_poll_wakes_on_publish() {
    let (server, api, admin) = setup().await;
    let api2 = Api::new(&server.http);
    let t = admin.clone();
    let waiter = tokio::spawn(async move { api2.receive(&t, "wait=10").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = std::time::Instant::now();
    api.post(
        "/send",
        Some(&admin),
        &json!({"topic": "x", "body": "wake"}),
    )
    .await;
    let got = waiter.await.expect("join");
    assert_eq!(got.len(), 1);
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "woken by the publish, not by the timeout"
    );
    server.stop().await;
}

#[tokio::test]
async fn state_survives_restart() {
    let (server, api, admin) = setup().await;
    let s = api.create(&admin, "keeper", json!("k.#")).await;
    api.post(
        "/send",
        Some(&admin),
        &json!({"topic": "k.1", "body": "kept"}),
    )
    .await;
    let dir = server.stop_keep().await.expect("temp dir");
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let api = Api::new(&server.http);
    let t = api.token("keeper", &s).await;
    let got = api.receive(&t, "").await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["body"], "kept");
    // admin.json is not rewritten on a restart and is private to the owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("admin.json"))
        .expect("admin.json")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    server.stop().await;
}

#[tokio::test]
async fn operations_endpoints() {
    let (server, api, admin) = setup().await;
    api.post("/send", Some(&admin), &json!({"topic": "m", "body": 1}))
        .await;
    let (s, v) = api.get("/healthz", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    let resp = reqwest::get(format!("{}/metrics", server.backend))
        .await
        .expect("metrics");
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let metrics = resp.text().await.expect("text");
    assert!(metrics.ends_with("\n# EOF\n"), "{metrics}");
    assert!(
        metrics.contains("trunkline_messages_published_total 1"),
        "{metrics}"
    );
    // Per-queue depths: on RabbitMQ as last asked of it (every 5 s).
    let ready = "trunkline_queue_ready{queue=\"admin-inbox\"} 1";
    let mut seen = metrics.contains(ready);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(12);
    while !seen && TestServer::on_rabbitmq() && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let again = reqwest::get(format!("{}/metrics", server.backend))
            .await
            .expect("metrics");
        seen = again.text().await.expect("text").contains(ready);
    }
    assert!(seen, "{metrics}");
    assert!(metrics.contains("trunkline_commit_batch_size_count"));
    assert!(metrics.contains("trunkline_commit_seconds_bucket"));
    // /metrics is not on the public listener.
    assert_eq!(api.get("/metrics", None).await.0, 404);
    let (s, doc) = api.get("/openapi.json", None).await;
    assert_eq!(s, 200);
    for path in [
        "/client",
        "/client/{client_id}",
        "/client/{client_id}/secret",
        "/queue",
        "/queue/{name}",
        "/token",
        "/send",
        "/notify",
        "/receive",
        "/ack",
        "/nack",
        "/healthz",
        "/openapi.json",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    // Each listener describes itself: /metrics and the backend key on the backend only.
    assert!(doc["paths"].get("/metrics").is_none());
    assert!(doc["components"]["securitySchemes"]
        .get("backendKey")
        .is_none());
    let backend_doc: Value = reqwest::get(format!("{}/openapi.json", server.backend))
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    assert!(backend_doc["paths"].get("/metrics").is_some());
    assert!(backend_doc["components"]["securitySchemes"]
        .get("backendKey")
        .is_some());
    server.stop().await;
}

#[tokio::test]
async fn declared_queues_are_managed_by_admins_and_read_by_grant() {
    let (server, api, admin) = setup().await;
    let put = |name: &str, body: Value| {
        let (api, admin, path) = (&api, admin.clone(), format!("/queue/{name}"));
        async move {
            api.send(reqwest::Method::PUT, &path, Some(&admin), &body)
                .await
        }
    };
    let (s, v) = put(
        "jobs",
        json!({"bindings": ["jobs.#"], "limits": {"max_deliveries": 2}, "labels": {"team": "ops"}}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["dead_letter"], "jobs.XQ");
    assert_eq!(v["limits"]["max_deliveries"], 2);
    let mut again = json!({"bindings": ["jobs.#", "work.*"]});
    if TestServer::on_rabbitmq() {
        // RabbitMQ fixes a queue's arguments when it is made: other limits are refused
        // (docs/scale-out.md).
        let (s, v) = put("jobs", again.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("invalid_body")),
            "{v}"
        );
        again["limits"] = json!({"max_deliveries": 2});
    }
    let (s, v) = put("jobs", again).await;
    assert_eq!(s, 200, "declared again: {v}");
    assert_eq!(v["bindings"], json!(["jobs.#", "work.*"]));
    for (name, body, code) in [
        ("bad name", json!({}), "not_found"),
        ("x-inbox", json!({}), "queue_name_taken"),
        ("x.XQ", json!({}), "queue_name_taken"),
        ("ok", json!({"bindings": ["a.b*"]}), "invalid_pattern"),
        ("ok", json!({"bindings": "a"}), "invalid_body"),
        ("ok", json!({"nope": 1}), "invalid_body"),
        ("ok", json!({"limits": [null, null]}), "invalid_body"),
        // Past what the OpenAPI document says.
        (
            "ok",
            json!({"limits": {"max_deliveries": 1_000_001}}),
            "invalid_body",
        ),
        (
            "ok",
            json!({"limits": {"max_length": 1_000_000_001u64}}),
            "invalid_body",
        ),
    ] {
        let (s, v) = put(name, body.clone()).await;
        let status = match code {
            "queue_name_taken" => 409,
            "not_found" => 404,
            _ => 400,
        };
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{name} {body}: {v}"
        );
    }
    let (s, v) = api
        .post(
            "/send",
            Some(&admin),
            &json!({"topic": "work.1", "body": {"n": 1}}),
        )
        .await;
    // The queue and the admin's inbox (it reads `#`).
    assert_eq!((s, v["delivered_to"].as_u64()), (202, Some(2)), "{v}");
    let worker = api.create(&admin, "worker", json!("nothing")).await;
    let wt = api.token("worker", &worker).await;
    let (s, v) = api.get("/receive?queue=jobs", Some(&wt)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let (s, _) = api
        .send(
            reqwest::Method::PATCH,
            "/client/worker",
            Some(&admin),
            &json!({"grants": ["jobs"]}),
        )
        .await;
    assert_eq!(s, 200);
    let got = api.receive(&wt, "queue=jobs").await;
    assert_eq!(topics(&got), vec!["work.1"]);
    let (s, list) = api.get("/queue", Some(&admin)).await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().map(|l| l.len()), Some(1), "{list}");
    let (s, _) = api
        .send(
            reqwest::Method::DELETE,
            "/queue/jobs",
            Some(&admin),
            &json!(null),
        )
        .await;
    assert_eq!(s, 204);
    let (s, v) = api.get("/queue/jobs", Some(&admin)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("unknown_queue"))
    );
    let (_, c) = api.get("/client/worker", Some(&admin)).await;
    assert_eq!(c["grants"], json!([]), "the grant went with the queue");
    server.stop().await;
}
