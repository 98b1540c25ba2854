//! RPC and client functions over WebSocket sessions, and the backend's call endpoints: a
//! real node on 127.0.0.1:0, sessions through the Rust client's WebSocket API.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use trunkline_client::ws::{Event, IncomingCall, WsSession};
use trunkline_client::{Error, ErrorCode};
use trunkline_testkit::TestServer;

const WAIT: Duration = Duration::from_secs(10);

async fn mint(server: &TestServer, sid: &str, cname: &str, publish: bool, info: Value) -> String {
    let (status, v) = server
        .backend_post(
            "/channel-token",
            json!({"sid": sid, "cname": cname, "pub": publish, "conn_info": info}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    v["token"].as_str().expect("token").to_owned()
}

async fn admin_session(server: &TestServer) -> WsSession {
    server.admin().websocket().await.expect("admin session")
}

fn code(e: &Error) -> Option<ErrorCode> {
    e.code()
}

/// Answers `add` with the sum, `count` with parts 1..=n then "done", `fail` with an
/// exception, and never answers `hang`.
async fn calculator(call: IncomingCall) {
    let p = call.payload.clone();
    match call.function.as_str() {
        "add" => {
            let sum = p["a"].as_i64().unwrap_or(0) + p["b"].as_i64().unwrap_or(0);
            let _ = call.end(json!({"sum": sum})).await;
        }
        "count" => {
            for i in 1..=p["n"].as_u64().unwrap_or(0) {
                let _ = call.next(json!(i)).await;
            }
            let _ = call.end(json!("done")).await;
        }
        "fail" => {
            let _ = call.exception("E42", "no can do").await;
        }
        _ => {}
    }
}

#[tokio::test]
async fn rpc_calls_are_answered_streamed_shared_and_fail_with_distinct_errors() {
    let server = TestServer::start().await;
    let callee = admin_session(&server).await;
    callee
        .serve("calc", &["add", "count", "fail", "hang"], None, calculator)
        .await
        .expect("serve");
    let user = server
        .new_client("user-1", &["x.none"])
        .await
        .websocket()
        .await
        .expect("user session");

    let r = user
        .call_rpc("calc", "add", json!({"a": 2, "b": 40}), WAIT, None)
        .await
        .expect("add");
    assert_eq!(r.data, json!({"sum": 42}));
    assert!(r.parts.is_empty());

    let r = user
        .call_rpc("calc", "count", json!({"n": 3}), WAIT, None)
        .await
        .expect("count");
    assert_eq!(r.parts, vec![json!(1), json!(2), json!(3)]);
    assert_eq!(r.data, json!("done"));

    match user.call_rpc("calc", "fail", json!({}), WAIT, None).await {
        Err(Error::Exception { code, message }) => {
            assert_eq!((code.as_str(), message.as_str()), ("E42", "no can do"))
        }
        other => panic!("expected the callee's exception, got {other:?}"),
    }

    let e = user
        .call_rpc("calc", "hang", json!({}), Duration::from_millis(300), None)
        .await
        .expect_err("a call nobody answers times out");
    assert_eq!(code(&e), Some(ErrorCode::CallTimeout), "{e}");

    for (server_name, function) in [("calc", "nope"), ("nobody", "add")] {
        let e = user
            .call_rpc(server_name, function, json!({}), WAIT, None)
            .await
            .expect_err("nothing serves it");
        assert_eq!(code(&e), Some(ErrorCode::NoCallee), "{e}");
    }

    // The backend calls the same server over REST and gets data and parts.
    let (status, v) = server
        .backend_post("/rpc/calc/count", json!({"payload": {"n": 2}}))
        .await;
    assert_eq!(
        (status, &v),
        (200, &json!({"data": "done", "parts": [1, 2]}))
    );
    let (status, v) = server.backend_post("/rpc/calc/fail", json!({})).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "call_exception");
    assert_eq!(
        v["error"]["details"]["exception"],
        json!({"code": "E42", "message": "no can do"})
    );
    let (status, v) = server
        .backend_post("/rpc/calc/hang", json!({"timeout_ms": 200}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (504, Some("call_timeout"))
    );
    let (status, v) = server
        .backend_post("/rpc/calc/add", json!({"timeout_ms": 0}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    let (status, v) = server.backend_post("/rpc/none/add", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("no_callee"))
    );
}

#[tokio::test]
async fn sessions_serving_one_name_share_its_calls() {
    let server = TestServer::start().await;
    let mut callees = Vec::new();
    let counts: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    for n in &counts {
        let s = admin_session(&server).await;
        let n = n.clone();
        s.serve("work", &["do"], None, move |call| {
            n.fetch_add(1, Ordering::Relaxed);
            async move {
                let _ = call.end(json!("ok")).await;
            }
        })
        .await
        .expect("serve");
        callees.push(s);
    }
    let caller = admin_session(&server).await;
    for _ in 0..10 {
        caller
            .call_rpc("work", "do", Value::Null, WAIT, None)
            .await
            .expect("call");
    }
    let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(
        got,
        vec![5, 5],
        "calls go round the sessions serving the name"
    );

    // One server leaves: the other takes every call.
    callees[0]
        .request("rpc", "unregister", json!({"name": "work"}))
        .await
        .expect("unregister");
    for _ in 0..4 {
        caller
            .call_rpc("work", "do", Value::Null, WAIT, None)
            .await
            .expect("call");
    }
    assert_eq!(counts[1].load(Ordering::Relaxed), 9);
}

#[tokio::test]
async fn a_callee_that_disconnects_or_is_full_gives_its_caller_a_distinct_error() {
    let server = TestServer::start_with(|c| c.ws.max_pending_calls = 2).await;
    let callee = admin_session(&server).await;
    // No handler: calls arrive as events and stay unanswered until we say.
    callee
        .request(
            "rpc",
            "register",
            json!({"name": "slow", "functions": ["wait"]}),
        )
        .await
        .expect("register");
    let caller = Arc::new(admin_session(&server).await);
    let pending: Vec<_> = (0..2)
        .map(|_| {
            let c = caller.clone();
            tokio::spawn(async move { c.call_rpc("slow", "wait", Value::Null, WAIT, None).await })
        })
        .collect();
    let mut held = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(WAIT, callee.next_event())
            .await
            .expect("a call")
        {
            Some(Event::Call(c)) => held.push(c),
            other => panic!("expected a call, got {other:?}"),
        }
    }
    let e = caller
        .call_rpc("slow", "wait", Value::Null, WAIT, None)
        .await
        .expect_err("the callee holds two calls already");
    assert_eq!(code(&e), Some(ErrorCode::CalleeBusy), "{e}");
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", server.backend))
        .header("x-backend-key", &server.backend_key)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(text.contains("trunkline_ws_calls_pending 2\n"), "{text}");

    // Answering one makes room; its caller gets the answer.
    let first = held.remove(0);
    assert!(first.end(json!("first")).await.expect("end"));

    // The callee goes away holding the other: its caller hears `callee_gone`.
    drop(callee);
    let mut outcomes = Vec::new();
    for p in pending {
        outcomes.push(
            tokio::time::timeout(WAIT, p)
                .await
                .expect("in time")
                .expect("task"),
        );
    }
    let ok = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(r) if r.data == json!("first")))
        .count();
    let gone = outcomes
        .iter()
        .filter(|o| matches!(o, Err(e) if e.code() == Some(ErrorCode::CalleeGone)))
        .count();
    assert_eq!((ok, gone), (1, 1), "{outcomes:?}");

    // A late answer to a call that timed out is dropped, and the callee is told.
    let callee = admin_session(&server).await;
    callee
        .request(
            "rpc",
            "register",
            json!({"name": "late", "functions": ["f"]}),
        )
        .await
        .expect("register");
    let e = caller
        .call_rpc("late", "f", Value::Null, Duration::from_millis(200), None)
        .await
        .expect_err("times out");
    assert_eq!(code(&e), Some(ErrorCode::CallTimeout));
    let Some(Event::Call(late)) = callee.next_event().await else {
        panic!("expected the call");
    };
    match callee.next_event().await {
        Some(Event::Other { service, message }) => {
            assert_eq!(service, "rpc");
            assert_eq!(message["type"], "cancelled");
            assert_eq!(message["id"].as_str(), Some(late.id.as_str()));
            assert_eq!(message["reason"], "timeout");
        }
        other => panic!("expected `cancelled`, got {other:?}"),
    }
    assert!(
        !late.end(json!("too late")).await.expect("answer"),
        "not delivered"
    );
}

#[tokio::test]
async fn serving_needs_an_admin_or_a_publish_token_and_private_names_need_a_token_to_call() {
    let server = TestServer::start().await;
    let device = server
        .new_client("dev-1", &["x.none"])
        .await
        .websocket()
        .await
        .expect("session");
    let e = device
        .serve("pvt:jobs", &["run"], None, calculator)
        .await
        .expect_err("a plain client may not serve without a token");
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    let read_only = mint(&server, device.id(), "pvt:jobs", false, Value::Null).await;
    let e = device
        .serve("pvt:jobs", &["run"], Some(&read_only), calculator)
        .await
        .expect_err("a token without pub: true does not let it serve");
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    let other_name = mint(&server, device.id(), "pvt:other", true, Value::Null).await;
    let e = device
        .serve("pvt:jobs", &["run"], Some(&other_name), calculator)
        .await
        .expect_err("a token for another name");
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    let serve = mint(&server, device.id(), "pvt:jobs", true, Value::Null).await;
    device
        .serve("pvt:jobs", &["add"], Some(&serve), calculator)
        .await
        .expect("serve with a publish token");

    let caller = server
        .new_client("user-2", &["x.none"])
        .await
        .websocket()
        .await
        .expect("session");
    let e = caller
        .call_rpc("pvt:jobs", "add", json!({"a": 1, "b": 1}), WAIT, None)
        .await
        .expect_err("a private name needs a token to call");
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    let token = mint(&server, caller.id(), "pvt:jobs", false, Value::Null).await;
    let r = caller
        .call_rpc(
            "pvt:jobs",
            "add",
            json!({"a": 1, "b": 1}),
            WAIT,
            Some(&token),
        )
        .await
        .expect("call with a token");
    assert_eq!(r.data, json!({"sum": 2}));

    // Bad params get clear errors.
    for (params, what) in [
        (json!({"name": "x"}), "functions"),
        (json!({"name": "x", "functions": []}), "functions"),
        (
            json!({"name": "bad name", "functions": ["f"]}),
            "server name",
        ),
    ] {
        let e = device
            .request("rpc", "register", params)
            .await
            .expect_err("bad params");
        assert_eq!(code(&e), Some(ErrorCode::InvalidParams), "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
    let e = caller
        .request(
            "rpc",
            "call",
            json!({"server": "calc", "function": "f", "timeout_ms": 300001}),
        )
        .await
        .expect_err("timeout out of range");
    assert_eq!(code(&e), Some(ErrorCode::InvalidParams), "{e}");
    let e = caller
        .request("rpc", "shout", json!({}))
        .await
        .expect_err("no such command");
    assert_eq!(code(&e), Some(ErrorCode::UnknownCommand), "{e}");
}

#[tokio::test]
async fn client_functions_are_called_by_backends_and_by_sessions_their_tokens_allow() {
    let server = TestServer::start().await;
    let device = server
        .new_client("dev-2", &["x.none"])
        .await
        .websocket()
        .await
        .expect("session");
    device
        .expose(&["add", "count", "fail"], calculator)
        .await
        .expect("expose");

    // A backend calls it by session id.
    let path = format!("/sessions/{}/functions/add", device.id());
    let (status, v) = server
        .backend_post(&path, json!({"payload": {"a": 1, "b": 2}}))
        .await;
    assert_eq!(
        (status, &v),
        (200, &json!({"data": {"sum": 3}, "parts": []}))
    );
    let path = format!("/sessions/{}/functions/nope", device.id());
    let (status, v) = server.backend_post(&path, json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("no_callee"))
    );
    let (status, v) = server
        .backend_post("/sessions/ws-999999/functions/add", json!({}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("no_callee"))
    );

    // An admin session calls it too.
    let admin = admin_session(&server).await;
    let r = admin
        .call_function(device.id(), "count", json!({"n": 2}), WAIT)
        .await
        .expect("admin call");
    assert_eq!((r.data, r.parts), (json!("done"), vec![json!(1), json!(2)]));

    // A plain session may not, unless it has publish rights on a channel the target is in.
    let peer = server
        .new_client("peer-1", &["x.none"])
        .await
        .websocket()
        .await
        .expect("session");
    let e = peer
        .call_function(device.id(), "add", json!({}), WAIT)
        .await
        .expect_err("no rights over the device");
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
    let t = mint(&server, device.id(), "prs:team", false, Value::Null).await;
    device
        .subscribe("prs:team", Some(&t))
        .await
        .expect("device joins");
    let t = mint(&server, peer.id(), "prs:team", true, Value::Null).await;
    peer.subscribe("prs:team", Some(&t))
        .await
        .expect("peer joins with pub");
    let r = peer
        .call_function(device.id(), "add", json!({"a": 5, "b": 5}), WAIT)
        .await
        .expect("allowed through prs:team");
    assert_eq!(r.data, json!({"sum": 10}));
    let all = peer
        .call_channel("prs:team", "add", json!({"a": 1, "b": 1}), WAIT)
        .await
        .expect("call the channel's members");
    assert_eq!(all.len(), 1, "every member but the caller: {all:?}");
    assert_eq!(all[0]["session_id"], device.id());
    assert_eq!(all[0]["data"], json!({"sum": 2}));
    // The device, without publish rights, may not call the peer.
    let e = device
        .call_channel("prs:team", "add", json!({}), WAIT)
        .await
        .expect_err("no pub on prs:team");
    assert_eq!(code(&e), Some(ErrorCode::Forbidden), "{e}");
}

/// Seed 004's command-and-control story: machines join `sys:commandControl` with tokens
/// their backend mints; a monitoring backend sees them join and leave, calls a function
/// on each, and lists those whose reported load is over a threshold.
#[tokio::test]
async fn command_and_control_of_machines_on_a_system_channel() {
    let server = TestServer::start().await;
    const CHANNEL: &str = "sys:commandControl";
    let monitor = admin_session(&server).await;
    monitor
        .subscribe("sys:*", None)
        .await
        .expect("follow every system channel");

    let loads = [0.35, 0.92, 0.10, 0.81];
    let mut machines = Vec::new();
    for (i, load) in loads.into_iter().enumerate() {
        let name = format!("machine-{i}");
        let m = server
            .new_client(&name, &["x.none"])
            .await
            .websocket()
            .await
            .expect("machine session");
        m.expose(&["get_load"], move |call| async move {
            let _ = call.end(json!({"load": load})).await;
        })
        .await
        .expect("expose");
        // The machine's backend mints its token for this session and channel.
        let token = mint(&server, m.id(), CHANNEL, false, json!({"sysid": name})).await;
        m.subscribe(CHANNEL, Some(&token)).await.expect("join");
        machines.push(m);
    }

    // The monitor saw each join, with what the token says of the machine.
    let mut online = Vec::new();
    while online.len() < loads.len() {
        match tokio::time::timeout(WAIT, monitor.next_event())
            .await
            .expect("an event")
        {
            Some(Event::Joined { channel, member }) => {
                assert_eq!(channel, CHANNEL);
                online.push((
                    member.session_id,
                    member.info["sysid"].as_str().unwrap_or("").to_owned(),
                ));
            }
            Some(Event::Left { .. }) => panic!("nobody left yet"),
            _ => {}
        }
    }

    // It asks each machine for its load, at once, and lists the busy ones.
    let answers = monitor
        .call_channel(CHANNEL, "get_load", Value::Null, WAIT)
        .await
        .expect("call every machine");
    assert_eq!(answers.len(), loads.len());
    let mut busy: Vec<String> = answers
        .iter()
        .filter(|a| a["data"]["load"].as_f64().unwrap_or(0.0) > 0.8)
        .map(|a| a["info"]["sysid"].as_str().unwrap_or("").to_owned())
        .collect();
    busy.sort();
    assert_eq!(busy, vec!["machine-1", "machine-3"]);

    // And one by one, through the REST interface, by session id.
    for (session, sysid) in &online {
        let (status, v) = server
            .backend_post(
                &format!("/sessions/{session}/functions/get_load"),
                json!({}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let i: usize = sysid.trim_start_matches("machine-").parse().expect("index");
        assert_eq!(v["data"]["load"].as_f64(), Some(loads[i]));
    }

    // A machine goes offline without a goodbye: the monitor sees it leave.
    let gone = machines.remove(1);
    let gone_id = gone.id().to_owned();
    drop(gone);
    loop {
        match tokio::time::timeout(WAIT, monitor.next_event())
            .await
            .expect("an event")
        {
            Some(Event::Left { channel, member }) => {
                assert_eq!(
                    (channel.as_str(), member.session_id.as_str()),
                    (CHANNEL, gone_id.as_str())
                );
                assert_eq!(member.info["sysid"], "machine-1");
                break;
            }
            Some(_) => {}
            None => panic!("the monitor's session ended"),
        }
    }
    // The REST channel call now reaches the three left.
    let (status, v) = server
        .backend_post(
            &format!("/channels/{CHANNEL}/functions/get_load"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(3));
    assert!(v
        .as_array()
        .into_iter()
        .flatten()
        .all(|a| a["data"]["load"].is_number()));
}

#[tokio::test]
async fn a_session_serves_and_joins_a_bounded_number_of_names() {
    let server = TestServer::start_with(|c| c.ws.rate_per_sec = 100_000).await;
    let s = admin_session(&server).await;
    for i in 0..64 {
        s.request(
            "rpc",
            "register",
            json!({"name": format!("svc{i}"), "functions": ["f"]}),
        )
        .await
        .expect("register");
    }
    let e = s
        .request(
            "rpc",
            "register",
            json!({"name": "svc64", "functions": ["f"]}),
        )
        .await
        .expect_err("the 65th name");
    assert_eq!(code(&e), Some(ErrorCode::ProtocolError), "{e}");
    // Registering a name it serves again replaces its functions.
    s.request(
        "rpc",
        "register",
        json!({"name": "svc0", "functions": ["g"]}),
    )
    .await
    .expect("re-register");
    for i in 0..1024 {
        s.subscribe(&format!("ch{i}"), None).await.expect("join");
    }
    let e = s
        .subscribe("ch1024", None)
        .await
        .expect_err("the 1025th channel");
    assert_eq!(code(&e), Some(ErrorCode::TooManySubscriptions), "{e}");
}

#[tokio::test]
async fn a_backend_call_ends_before_its_http_request_times_out() {
    let server = TestServer::start_with(|c| {
        c.http_limits.request_timeout_secs = 3;
        c.http_limits.max_wait_secs = 1;
    })
    .await;
    let callee = admin_session(&server).await;
    callee
        .serve("calc", &["hang"], None, calculator)
        .await
        .expect("serve");
    let started = std::time::Instant::now();
    let (status, v) = server
        .backend_post("/rpc/calc/hang", json!({"timeout_ms": 60000}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (504, Some("call_timeout")),
        "{v}"
    );
    // Cut to 2 s, far from the 60 s asked for.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
