//! Several Trunkline nodes over one RabbitMQ (`docs/scale-out.md`): the registry is one
//! for all of them. A client made on one node logs in on another at once; a change on one
//! node ends sessions open on another within a second; two nodes making the same client
//! at once agree on one winner; a node restarted holds the registry again.
//!
//! Needs `TRUNKLINE_TEST_AMQP` (scripts/test.sh starts a private RabbitMQ); CI requires it.

use std::time::Duration;

use trunkline_api::{CreateClient, ErrorCode, Subscription};
use trunkline_client::{Client, ReceiveOptions};
use trunkline_proto::{Command, Frame};
use trunkline_testkit::{StompWire, TestServer};

/// The cluster's relay, as twins name it.
const RELAY: &str = "relay.cluster.test";

fn amqp() -> Option<String> {
    trunkline_testkit::rabbitmq_env("TRUNKLINE_TEST_AMQP")
}

/// Nodes n1..n`count` of one cluster: one namespace; nodes after the first start with no
/// keys and take the cluster's from the registry's log (only the relay's key is copied).
struct Cluster {
    nodes: Vec<TestServer>,
    url: String,
    namespace: String,
    admin_secret: String,
}

impl Cluster {
    async fn start(url: &str, count: usize) -> Self {
        let namespace = format!("tl-cluster-{:016x}", rand_u64());
        let first = start_node(url, &namespace, 1, None).await;
        let admin_secret = first.admin_credentials().secret;
        let mut nodes = vec![first];
        for i in 2..=count {
            let keys = nodes[0].data_dir().to_owned();
            nodes.push(start_node(url, &namespace, i, Some(&keys)).await);
        }
        Cluster {
            nodes,
            url: url.to_owned(),
            namespace,
            admin_secret,
        }
    }

    /// The admin, through node `i` (1-based).
    fn admin(&self, i: usize) -> Client {
        self.client(i, "admin", &self.admin_secret)
    }

    fn client(&self, i: usize, id: &str, secret: &str) -> Client {
        self.nodes[i - 1].client(id, secret)
    }

    async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// Starts node `i` of the cluster in a fresh directory, with the key files of `keys_from`.
async fn start_node(
    url: &str,
    namespace: &str,
    i: usize,
    keys_from: Option<&std::path::Path>,
) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    if let Some(from) = keys_from {
        std::fs::copy(from.join("relay.seed"), dir.path().join("relay.seed"))
            .expect("copy the relay's key");
    }
    let mut s = TestServer::start_in(dir.path(), |c| {
        c.broker.url = url.to_owned();
        c.broker.namespace = namespace.to_owned();
        c.broker.node = format!("n{i}");
        // Every node is the one relay of the cluster.
        c.relay.name = RELAY.to_owned();
    })
    .await;
    s.keep_dir(dir);
    s
}

async fn create(
    admin: &Client,
    id: &str,
    pattern: &str,
) -> Result<String, trunkline_client::Error> {
    admin
        .create_client(&CreateClient::new(
            id,
            Subscription::from_patterns(vec![pattern.into()]),
        ))
        .await
        .map(|c| c.secret)
}

/// Waits up to `within` for a WebSocket session to be closed; its close reason.
async fn closed_within(ws: &trunkline_client::ws::WsSession, within: Duration) -> Option<String> {
    let until = tokio::time::Instant::now() + within;
    loop {
        if let Some(c) = ws.closed() {
            return Some(c);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), ws.next_event()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_one_for_every_node() {
    let Some(url) = amqp() else { return };
    let cluster = Cluster::start(&url, 3).await;

    // Nodes 2 and 3 started without keys and took node 1's.
    for i in 2..=3 {
        for f in ["token.key", "backend.key", "channel.key"] {
            let read = |n: usize| std::fs::read(cluster.nodes[n - 1].data_dir().join(f)).expect(f);
            assert!(read(i) == read(1), "node {i}'s {f} is the cluster's");
        }
    }
    // A node whose own keys are not the cluster's refuses to start.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = trunkline_testkit::test_config(dir.path());
    config.broker.url = cluster.url.clone();
    config.broker.namespace = cluster.namespace.clone();
    config.broker.node = "n9".into();
    let other = trunkline_server::config::Secrets {
        token_secret: None,
        backend_key: Some("another-backend-key-of-this-node".into()),
        channel_secret: None,
    };
    let refused = trunkline_server::Node::start(config, other).await;
    let e = refused.err().expect("refused").to_string();
    assert!(e.contains("not those of the cluster"), "{e}");

    // Made on node 1: logs in on node 3 at once, and gets what node 2 routes to it.
    let secret = create(&cluster.admin(1), "c1", "jobs.#")
        .await
        .expect("create c1");
    let on3 = cluster.client(3, "c1", &secret);
    on3.fetch_token().await.expect("c1 logs in on node 3");
    let sent = cluster
        .admin(2)
        .send("jobs.7", &serde_json::json!({"n": 7}))
        .await
        .expect("send on node 2");
    assert_eq!(sent.delivered_to, 2, "c1 and admin");
    let got = on3
        .receive(&ReceiveOptions {
            max_messages: 10,
            wait: 5,
            ..Default::default()
        })
        .await
        .expect("receive on node 3");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].topic, "jobs.7");

    // The same client made on two nodes at once: one wins, the other is told it exists.
    let (admin2, admin3) = (cluster.admin(2), cluster.admin(3));
    let (a, b) = tokio::join!(create(&admin2, "twice", "x"), create(&admin3, "twice", "y"));
    let won: Vec<bool> = [&a, &b].iter().map(|r| r.is_ok()).collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{a:?} {b:?}");
    let lost = if a.is_ok() { b } else { a };
    assert_eq!(
        lost.expect_err("one lost").code(),
        Some(ErrorCode::ClientExists)
    );
    let winner = cluster.admin(1).get_client("twice").await.expect("twice");
    for i in 1..=3 {
        let seen = cluster.admin(i).get_client("twice").await.expect("twice");
        assert_eq!(seen.subscription, winner.subscription, "node {i} agrees");
    }

    // Deleted through node 2: its session on node 3 ends within a second, and its
    // token is refused on node 1.
    let ws = on3.websocket().await.expect("ws on node 3");
    let token = cluster
        .client(1, "c1", &secret)
        .fetch_token()
        .await
        .expect("token")
        .token;
    cluster
        .admin(2)
        .delete_client("c1")
        .await
        .expect("delete on node 2");
    let reason = closed_within(&ws, Duration::from_secs(1)).await;
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("4401")),
        "{reason:?}"
    );
    let status = reqwest::Client::new()
        .get(format!("{}/receive", cluster.nodes[0].http))
        .bearer_auth(&token)
        .send()
        .await
        .expect("receive")
        .status();
    assert_eq!(status, 401);

    // Rotated through node 3: a session on node 1 ends; the new secret works on node 2.
    let s2 = create(&cluster.admin(1), "c2", "y").await.expect("c2");
    let ws = cluster
        .client(1, "c2", &s2)
        .websocket()
        .await
        .expect("ws on node 1");
    let rotated = cluster.admin(3).rotate_secret("c2").await.expect("rotate");
    let reason = closed_within(&ws, Duration::from_secs(1)).await;
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("4401")),
        "{reason:?}"
    );
    cluster
        .client(2, "c2", &rotated.secret)
        .fetch_token()
        .await
        .expect("new secret on node 2");

    // A node restarted on its directory reads the registry again.
    let Cluster {
        mut nodes,
        url,
        namespace,
        admin_secret,
    } = cluster;
    let n2 = nodes.remove(1);
    let dir = n2.data_dir().to_owned();
    let kept = n2.stop_keep().await;
    let mut again = TestServer::start_in(&dir, |c| {
        c.broker.url = url.clone();
        c.broker.namespace = namespace.clone();
        c.broker.node = "n2".into();
    })
    .await;
    if let Some(d) = kept {
        again.keep_dir(d);
    }
    again
        .client("c2", &rotated.secret)
        .fetch_token()
        .await
        .expect("c2 on node 2 restarted");
    assert!(again
        .client("admin", &admin_secret)
        .get_client("c1")
        .await
        .is_err());
    nodes.insert(1, again);
    Cluster {
        nodes,
        url,
        namespace,
        admin_secret,
    }
    .stop()
    .await;
}

fn subscribe(dest: &str, id: &str) -> Frame {
    Frame::new(Command::Subscribe)
        .header("destination", dest)
        .header("id", id)
        .header("receipt", format!("sub-{id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_topics_reach_subscribers_on_every_node() {
    let Some(url) = amqp() else { return };
    let cluster = Cluster::start(&url, 3).await;
    let admin = cluster.admin(1);
    let watcher = create(&admin, "watcher", "news.#").await.expect("watcher");
    let blind = create(&admin, "blind", "other").await.expect("blind");
    let (mut w, _) = StompWire::connect(&cluster.nodes[1].stomp, "watcher", &watcher).await;
    w.send(subscribe("/topic/news.#", "w")).await;
    let (mut b, _) = StompWire::connect(&cluster.nodes[2].stomp, "blind", &blind).await;
    b.send(subscribe("/topic/#", "b")).await;
    for s in [&mut w, &mut b] {
        let f = s.next().await.expect("receipt");
        assert_eq!(f.command, Command::Receipt, "{f:?}");
    }
    // The subscriber's node binds its pattern in the background: probe until it is.
    let mut bound = false;
    for _ in 0..50 {
        admin
            .send("news.probe", &serde_json::json!({}))
            .await
            .expect("probe");
        if !w
            .topics_within(Duration::from_millis(100))
            .await
            .0
            .is_empty()
        {
            bound = true;
            break;
        }
    }
    assert!(bound, "node 2 never got a message published on node 1");
    let _ = w.topics_within(Duration::from_millis(300)).await.0;
    for (i, node) in [(1, 1), (2, 3), (3, 2)] {
        cluster
            .admin(node)
            .send(&format!("news.{i}"), &serde_json::json!({"i": i}))
            .await
            .expect("send");
    }
    let mut got = w.topics_within(Duration::from_secs(2)).await.0;
    got.sort();
    assert_eq!(got, ["news.1", "news.2", "news.3"], "from nodes 1, 3 and 2");
    cluster
        .admin(1)
        .send("other", &serde_json::json!({}))
        .await
        .expect("send other");
    let seen = b.topics_within(Duration::from_secs(1)).await.0;
    // Every news.* message reached node 3 too (it follows `#`), and none was blind's.
    assert_eq!(seen, ["other"], "blind reads only its own topics");
    cluster.stop().await;
}

/// The `n` field of the channel messages `ws` gets within `wait`.
async fn channel_numbers(ws: &trunkline_client::ws::WsSession, wait: Duration) -> Vec<i64> {
    let mut got = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(wait, ws.next_event()).await {
        if let trunkline_client::ws::Event::Message { message, .. } = ev {
            got.push(message["n"].as_i64().unwrap_or(-1));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_messages_reach_members_on_every_node() {
    let Some(url) = amqp() else { return };
    let cluster = Cluster::start(&url, 3).await;
    // A backend session may publish to any channel (others need a channel token).
    let mut member = CreateClient::new("member", Subscription::from_patterns(vec!["none".into()]));
    member.roles = vec!["backend".into()];
    let secret = cluster
        .admin(1)
        .create_client(&member)
        .await
        .expect("member")
        .secret;
    let on1 = cluster
        .client(1, "member", &secret)
        .websocket()
        .await
        .expect("ws 1");
    let on3 = cluster
        .client(3, "member", &secret)
        .websocket()
        .await
        .expect("ws 3");
    for ws in [&on1, &on3] {
        ws.subscribe("room.1", None).await.expect("subscribe");
    }
    // Node 1 binds the channel in the background: publish from node 3 until it arrives.
    let mut crossed = false;
    for _ in 0..50 {
        on3.publish("room.1", &serde_json::json!({"n": 0}), true)
            .await
            .expect("probe");
        if !channel_numbers(&on1, Duration::from_millis(100))
            .await
            .is_empty()
        {
            crossed = true;
            break;
        }
    }
    assert!(
        crossed,
        "a message published on node 3 never reached node 1"
    );
    let _ = channel_numbers(&on1, Duration::from_millis(300)).await;
    let _ = channel_numbers(&on3, Duration::from_millis(300)).await;

    // A session's message, not to itself; a backend's through node 2, which has no
    // members: both reach the members on nodes 1 and 3.
    on3.publish("room.1", &serde_json::json!({"n": 1}), true)
        .await
        .expect("publish");
    let (status, _) = cluster.nodes[1]
        .backend_post(
            "/channels/room.1/publish",
            serde_json::json!({"message": {"n": 2}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(channel_numbers(&on1, Duration::from_secs(1)).await, [1, 2]);
    assert_eq!(channel_numbers(&on3, Duration::from_secs(1)).await, [2]);

    // Once node 1's member leaves, node 1 gets nothing more.
    on1.unsubscribe("room.1").await.expect("unsubscribe");
    on3.publish("room.1", &serde_json::json!({"n": 3}), false)
        .await
        .expect("publish");
    assert!(channel_numbers(&on1, Duration::from_millis(500))
        .await
        .is_empty());
    assert_eq!(channel_numbers(&on3, Duration::from_secs(1)).await, [3]);
    cluster.stop().await;
}

/// A channel token from node `i`'s backend for session `sid` on `channel`.
async fn mint(cluster: &Cluster, i: usize, sid: &str, channel: &str) -> String {
    let (status, v) = cluster.nodes[i - 1]
        .backend_post(
            "/channel-token",
            serde_json::json!({"sid": sid, "cname": channel, "pub": true, "conn_info": {"node": i}}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["token"].as_str().expect("token").to_owned()
}

/// The next joined or left event within `within`, skipping others: `("joined", session)`.
async fn presence_event(
    ws: &trunkline_client::ws::WsSession,
    within: Duration,
) -> Option<(&'static str, String)> {
    use trunkline_client::ws::Event;
    let until = tokio::time::Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, ws.next_event()).await {
            Ok(Some(Event::Joined { member, .. })) => return Some(("joined", member.session_id)),
            Ok(Some(Event::Left { member, .. })) => return Some(("left", member.session_id)),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

/// The session ids of a channel's members, as node `i`'s backend lists them.
async fn members_on(cluster: &Cluster, i: usize, channel: &str) -> Vec<String> {
    let (status, v) = cluster.nodes[i - 1]
        .backend_request("GET", &format!("/channels/{channel}/members"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    let mut ids: Vec<String> = v
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["session_id"].as_str().expect("session_id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// Waits (at most 10 s) until node `i` lists exactly `want` as the channel's members.
async fn members_become(cluster: &Cluster, i: usize, channel: &str, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = members_on(cluster, i, channel).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {i} lists {got:?} as members of {channel}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_the_union_over_nodes_and_calls_reach_sessions_on_other_nodes() {
    let Some(url) = amqp() else { return };
    let cluster = Cluster::start(&url, 3).await;
    let on1 = cluster.admin(1).websocket().await.expect("ws 1");
    let on3 = cluster.admin(3).websocket().await.expect("ws 3");
    let (a, c) = (on1.id().to_owned(), on3.id().to_owned());
    let room = "prs:room";

    // Presence: node 2, with no member, lists a once node 1 told it.
    let t = mint(&cluster, 1, &a, room).await;
    assert!(on1
        .subscribe(room, Some(&t))
        .await
        .expect("a joins")
        .members
        .is_empty());
    members_become(&cluster, 2, room, &[&a]).await;
    members_become(&cluster, 3, room, &[&a]).await;
    // c, on node 3, finds a there; a is told that c joined.
    let t = mint(&cluster, 3, &c, room).await;
    let before = on3
        .subscribe(room, Some(&t))
        .await
        .expect("c joins")
        .members;
    assert_eq!(
        before
            .iter()
            .map(|m| m.session_id.as_str())
            .collect::<Vec<_>>(),
        [a.as_str()]
    );
    assert_eq!(before[0].info, serde_json::json!({"node": 1}));
    assert_eq!(
        presence_event(&on1, Duration::from_secs(5)).await,
        Some(("joined", c.clone()))
    );
    members_become(&cluster, 2, room, &[&a, &c]).await;

    // RPC: served on node 3, called from node 1 (a session) and node 2 (a backend).
    on3.serve("calc", &["add"], None, |call| async move {
        let p = &call.payload;
        let sum = p[0].as_i64().unwrap_or(0) + p[1].as_i64().unwrap_or(0);
        let _ = call.next(serde_json::json!("adding")).await;
        let _ = call.end(serde_json::json!(sum)).await;
    })
    .await
    .expect("serve");
    let mut answered = None;
    for _ in 0..100 {
        let r = on1
            .call_rpc(
                "calc",
                "add",
                serde_json::json!([2, 3]),
                Duration::from_secs(5),
                None,
            )
            .await;
        match r {
            Ok(r) => {
                answered = Some(r);
                break;
            }
            // Until node 1 has heard that node 3 serves it.
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::NoCallee), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let r = answered.expect("node 1 never heard that node 3 serves calc");
    assert_eq!(r.data, serde_json::json!(5));
    assert_eq!(r.parts, [serde_json::json!("adding")]);
    let (status, v) = cluster.nodes[1]
        .backend_post("/rpc/calc/add", serde_json::json!({"payload": [40, 2]}))
        .await;
    assert_eq!((status, &v["data"]), (200, &serde_json::json!(42)), "{v}");
    // A function node 3's sessions do not serve is no_callee, as on one node.
    let e = on1
        .call_rpc(
            "calc",
            "div",
            serde_json::json!([1, 1]),
            Duration::from_secs(2),
            None,
        )
        .await
        .expect_err("no div");
    assert_eq!(e.code(), Some(ErrorCode::NoCallee), "{e}");

    // Client functions: c's, called from node 1 by session id and on the channel.
    on3.expose(&["whoami"], |call| async move {
        let _ = call.end(serde_json::json!({"node": 3})).await;
    })
    .await
    .expect("expose");
    let mut answered = None;
    for _ in 0..100 {
        match on1
            .call_function(
                &c,
                "whoami",
                serde_json::json!(null),
                Duration::from_secs(5),
            )
            .await
        {
            Ok(r) => {
                answered = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(
        answered.expect("c's function from node 1").data,
        serde_json::json!({"node": 3})
    );
    let all = on1
        .call_channel(
            room,
            "whoami",
            serde_json::json!(null),
            Duration::from_secs(5),
        )
        .await
        .expect("call the channel");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["session_id"], serde_json::json!(c));
    assert_eq!(all[0]["data"], serde_json::json!({"node": 3}));
    let (status, v) = cluster.nodes[1]
        .backend_post(
            &format!("/sessions/{c}/functions/whoami"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (status, &v["data"]),
        (200, &serde_json::json!({"node": 3})),
        "{v}"
    );

    // A call whose callee's session ends before it answers: callee_gone, across nodes.
    let slow = cluster.admin(3).websocket().await.expect("ws slow");
    slow.serve("slow", &["wait"], None, |_call| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await
    .expect("serve slow");
    let caller = tokio::spawn({
        let on1 = cluster.admin(1).websocket().await.expect("ws caller");
        async move {
            let mut last = None;
            for _ in 0..100 {
                match on1
                    .call_rpc(
                        "slow",
                        "wait",
                        serde_json::json!(null),
                        Duration::from_secs(30),
                        None,
                    )
                    .await
                {
                    Err(e) if e.code() == Some(ErrorCode::NoCallee) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => {
                        last = Some(other);
                        break;
                    }
                }
            }
            last
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    slow.close().await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), caller)
        .await
        .expect("the caller is answered")
        .expect("task")
        .expect("a call");
    assert_eq!(
        outcome.expect_err("callee gone").code(),
        Some(ErrorCode::CalleeGone)
    );

    // c leaves: a is told, and node 2 lists a alone.
    on3.unsubscribe(room).await.expect("c leaves");
    assert_eq!(
        presence_event(&on1, Duration::from_secs(5)).await,
        Some(("left", c.clone()))
    );
    members_become(&cluster, 2, room, &[&a]).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_leave_within_the_keepalive() {
    use trunkline_testkit::ProcessServer;
    let Some(url) = amqp() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let namespace = format!("tl-dead-{:016x}", rand_u64());
    // The keepalive: a session (and a node) silent for 3 s is gone; pings every second.
    let config = dir.path().join("trunkline.toml");
    std::fs::write(&config, "[ws]\nidle_timeout_secs = 3\nping_secs = 1\n").expect("config");
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_trunkline"));
    let start = |i: usize| {
        let data = dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&data).expect("data dir");
        if i > 1 {
            for f in ["token.key", "backend.key", "channel.key"] {
                std::fs::copy(dir.path().join("n1").join(f), data.join(f)).expect("copy key");
            }
        }
        let mut cmd = ProcessServer::serve_command(&bin, &data, "127.0.0.1:0");
        cmd.args(["--broker", &url, "--namespace", &namespace])
            .args(["--node", &format!("n{i}")])
            .arg("--config")
            .arg(&config);
        ProcessServer::spawn(cmd, &data).expect("start node")
    };
    let n1 = start(1);
    let mut n2 = start(2);
    let secret = n1.admin_credentials().secret;
    let key = std::fs::read_to_string(n1.data_dir.join("backend.key")).expect("backend key");
    let http = reqwest::Client::new();
    let mint = |backend: String, sid: String| {
        let (http, key) = (http.clone(), key.trim().to_owned());
        async move {
            let v: serde_json::Value = http
                .post(format!("{backend}/channel-token"))
                .header("X-Backend-Key", key)
                .json(&serde_json::json!({"sid": sid, "cname": "prs:room", "pub": true}))
                .send()
                .await
                .expect("mint")
                .json()
                .await
                .expect("token");
            v["token"].as_str().expect("token").to_owned()
        }
    };
    let a = Client::new(&n1.http, "admin", &secret)
        .expect("client")
        .websocket()
        .await
        .expect("ws 1");
    let b = Client::new(&n2.http, "admin", &secret)
        .expect("client")
        .websocket()
        .await
        .expect("ws 2");
    let t = mint(n1.backend.clone(), a.id().to_owned()).await;
    a.subscribe("prs:room", Some(&t)).await.expect("a joins");
    // b finds a there (once node 2 heard of it); a is told that b joined.
    let t = mint(n2.backend.clone(), b.id().to_owned()).await;
    let before = b
        .subscribe("prs:room", Some(&t))
        .await
        .expect("b joins")
        .members;
    assert!(before.iter().all(|m| m.session_id == a.id()), "{before:?}");
    assert_eq!(
        presence_event(&a, Duration::from_secs(5)).await,
        Some(("joined", b.id().to_owned()))
    );
    let b_id = b.id().to_owned();
    n2.kill9();
    let killed = std::time::Instant::now();
    // Node 1 hears nothing more from node 2: within the keepalive (and a beat), b left.
    assert_eq!(
        presence_event(&a, Duration::from_secs(10)).await,
        Some(("left", b_id))
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(3 + 3),
        "b left {took:?} after its node died (keepalive 3 s)"
    );
    eprintln!("a dead node's member left after {took:?}");
    drop(n1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_through_another_node_is_known_by_its_message_id() {
    let Some(url) = amqp() else { return };
    let cluster = Cluster::start(&url, 2).await;
    let secret = create(&cluster.admin(1), "once", "once.#")
        .await
        .expect("create");
    let send = |i: usize| {
        let admin = cluster.admin(i);
        async move {
            admin
                .send_raw(&serde_json::json!({
                    "topic": "once.1",
                    "body": {"n": 1},
                    "message_id": "m-1"
                }))
                .await
                .expect("send")
        }
    };
    let first = send(1).await;
    assert!(!first.duplicate);
    // The answer went to the stream before node 1 gave it; node 2 reads it within
    // moments (a retry sooner than that could be taken again: docs/scale-out.md).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut again = send(2).await;
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.id, first.id);
    again = send(1).await;
    assert!(again.duplicate && again.id == first.id);
    let got = cluster
        .client(2, "once", &secret)
        .receive(&ReceiveOptions {
            max_messages: 10,
            wait: 2,
            ..Default::default()
        })
        .await
        .expect("receive");
    assert_eq!(got.len(), 1, "one copy: {got:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_on_two_nodes_of_one_relay_reach_each_other() {
    use trunkline_client::peer::{Draft, Peer, PeerConfig};
    use trunkline_envelope::{Address, Identity, Kind, Payload};
    let Some(url) = amqp() else { return };
    let cluster = Cluster::start(&url, 2).await;
    let relays = [RELAY.to_owned()];
    let (alice_key, bob_key) = (
        Identity::from_seed(&[31; 32]),
        Identity::from_seed(&[32; 32]),
    );
    let alice = cluster
        .admin(1)
        .register_twin(&alice_key, &relays)
        .await
        .expect("alice")
        .id;
    let bob = cluster
        .admin(2)
        .register_twin(&bob_key, &relays)
        .await
        .expect("bob")
        .id;
    // Alice's gateway on node 1, Bob's on node 2.
    let start = |key: &Identity, twin, i: usize| {
        Peer::start(PeerConfig::new(
            key.clone(),
            twin,
            &cluster.nodes[i - 1].http,
        ))
        .expect("peer")
    };
    let (a, mut a_in) = start(&alice_key, alice, 1);
    let (b, mut b_in) = start(&bob_key, bob, 2);
    for i in 0..10u32 {
        let body = format!("question {i}").into_bytes();
        let uid = a
            .send(Draft::request(Address::twin(bob), "echo", body.clone()))
            .await
            .expect("send");
        let req = next_envelope(&mut b_in).await;
        assert_eq!(
            (req.uid.as_str(), &req.source),
            (uid.as_str(), &Address::twin(alice))
        );
        b.send(Draft::response(req.source.clone(), &req.uid, body.clone()))
            .await
            .expect("answer");
        let resp = next_envelope(&mut a_in).await;
        assert_eq!(
            (resp.uid.as_str(), &resp.kind),
            (uid.as_str(), &Kind::Response)
        );
        assert_eq!(resp.payload, Payload::Plain(body));
    }
    cluster.stop().await;
}

async fn next_envelope(
    rx: &mut tokio::sync::mpsc::Receiver<trunkline_envelope::Envelope>,
) -> trunkline_envelope::Envelope {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an envelope in time")
        .expect("the peer runs")
}
