//! WebSocket sessions at `GET /ws`, as a client sees them: a real node on 127.0.0.1:0,
//! a real WebSocket client (tokio-tungstenite).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trunkline_testkit::TestServer;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

fn ws_url(server: &TestServer, query: &str) -> String {
    format!("{}/ws{query}", server.http.replacen("http://", "ws://", 1))
}

async fn connect(server: &TestServer, token: Option<&str>) -> Result<Ws, WsError> {
    let mut req = ws_url(server, "").into_client_request()?;
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header value"),
        );
    }
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// The next text frame as the server wrote it (pings are answered by the library
/// meanwhile).
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the session is open")
            .expect("a frame");
        match frame {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next text frame as JSON.
async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).expect("JSON from the server")
}

/// Reads until the server closes; its close code.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

async fn call(ws: &mut Ws, service: &str, command: &str, params: Value, id: u64) -> Value {
    let msg = json!({"service": service, "message": {"command": command, "params": params, "callId": id}});
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .expect("send");
    next_json(ws).await
}

#[tokio::test]
async fn a_session_authenticated_by_header_gets_a_welcome_and_answers_calls() {
    let server = TestServer::start().await;
    let token = server.admin_token().await;
    let mut ws = connect(&server, Some(&token)).await.expect("upgrade");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["service"], "session");
    assert_eq!(welcome["message"]["type"], "welcome");
    assert_eq!(welcome["message"]["clientId"], "admin");
    let session_id = welcome["message"]["sessionId"]
        .as_str()
        .expect("session id")
        .to_owned();
    let r = call(&mut ws, "session", "whoami", Value::Null, 7).await;
    assert_eq!(
        r,
        json!({"service": "session", "message": {"type": "response", "callId": 7,
               "data": {"sessionId": session_id, "clientId": "admin"}}})
    );
    let r = call(&mut ws, "session", "ping", Value::Null, 8).await;
    assert_eq!(r["message"]["data"], "pong");
    // A second session gets another id.
    let mut other = connect(&server, Some(&token)).await.expect("upgrade");
    let w2 = next_json(&mut other).await;
    assert_ne!(w2["message"]["sessionId"], json!(session_id));
}

#[tokio::test]
async fn every_bad_frame_gets_an_error_answer_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let token = server.admin_token().await;
    let mut ws = connect(&server, Some(&token)).await.expect("upgrade");
    next_json(&mut ws).await;
    let cases: [(Message, Value, &str); 6] = [
        (
            Message::Text("{not json".into()),
            Value::Null,
            "malformed_message",
        ),
        (
            Message::Text("[1,2]".into()),
            Value::Null,
            "malformed_message",
        ),
        (
            Message::Text(r#"{"service":"session","message":"whoami"}"#.into()),
            json!("session"),
            "malformed_message",
        ),
        (
            Message::Text(r#"{"service":"chat","message":{"command":"x","callId":"c1"}}"#.into()),
            json!("chat"),
            "unknown_service",
        ),
        (
            Message::Text(
                r#"{"service":"session","message":{"command":"dance","callId":3}}"#.into(),
            ),
            json!("session"),
            "unknown_command",
        ),
        (
            Message::Binary(vec![1, 2, 3].into()),
            Value::Null,
            "malformed_message",
        ),
    ];
    for (frame, service, code) in cases {
        ws.send(frame).await.expect("send");
        let r = next_json(&mut ws).await;
        assert_eq!(r["service"], service, "{r}");
        assert_eq!(r["message"]["type"], "error", "{r}");
        assert_eq!(r["message"]["code"], code, "{r}");
        assert!(r["message"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // The callId of a refused call comes back, so the caller can match it.
    let r = call(&mut ws, "nope", "x", Value::Null, 41).await;
    assert_eq!(r["message"]["callId"], 41);
    // Still working.
    let r = call(&mut ws, "session", "ping", Value::Null, 42).await;
    assert_eq!(r["message"]["data"], "pong");
}

#[tokio::test]
async fn browsers_authenticate_with_a_first_message_or_a_query_token() {
    let server = TestServer::start().await;
    let token = server.admin_token().await;
    // First message.
    let mut ws = connect(&server, None)
        .await
        .expect("upgrade without a token");
    let r = call(&mut ws, "auth", "authenticate", json!({"token": token}), 1).await;
    assert_eq!(r["message"]["type"], "welcome", "{r}");
    let r = next_json(&mut ws).await;
    assert_eq!(
        (&r["message"]["type"], &r["message"]["callId"]),
        (&json!("response"), &json!(1)),
        "{r}"
    );
    let r = call(&mut ws, "session", "whoami", Value::Null, 2).await;
    assert_eq!(r["message"]["data"]["clientId"], "admin");
    // Query token.
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&server, &format!("?token={token}")))
        .await
        .expect("upgrade with ?token=");
    assert_eq!(next_json(&mut ws).await["message"]["type"], "welcome");
    // Anything but authenticate first closes the session with 4401.
    let mut ws = connect(&server, None).await.expect("upgrade");
    ws.send(Message::Text(
        json!({"service": "session", "message": {"command": "whoami"}})
            .to_string()
            .into(),
    ))
    .await
    .expect("send");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::from(4401)));
    // So does a bad token in the first message.
    let mut ws = connect(&server, None).await.expect("upgrade");
    ws.send(Message::Text(
        json!({"service": "auth", "message": {"command": "authenticate", "params": {"token": "tl1.bad.bad"}}})
            .to_string()
            .into(),
    ))
    .await
    .expect("send");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::from(4401)));
}

#[tokio::test]
async fn a_bad_token_in_the_upgrade_is_refused_with_401() {
    let server = TestServer::start().await;
    match connect(&server, Some("tl1.forged.token")).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("json");
            assert_eq!(body["error"]["code"], "invalid_token");
        }
        other => panic!("expected a 401, got {:?}", other.map(|_| "a session")),
    }
}

#[tokio::test]
async fn a_silent_session_is_closed_after_the_auth_timeout() {
    let server = TestServer::start_with(|c| c.ws.auth_timeout_secs = 1).await;
    let mut ws = connect(&server, None).await.expect("upgrade");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::from(4401)));
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed() {
    let server = TestServer::start_with(|c| {
        c.ws.ping_secs = 1;
        c.ws.idle_timeout_secs = 2;
    })
    .await;
    let token = server.admin_token().await;
    let mut ws = connect(&server, Some(&token)).await.expect("upgrade");
    next_json(&mut ws).await;
    // Not reading means not answering pings: like a half-open connection.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::from(4408)));
    // A session that keeps reading (so pings are answered) stays open past the timeout.
    let mut ws = connect(&server, Some(&token)).await.expect("upgrade");
    next_json(&mut ws).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    while let Ok(frame) = tokio::time::timeout_at(until, ws.next()).await {
        match frame {
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let r = call(&mut ws, "session", "ping", Value::Null, 1).await;
    assert_eq!(r["message"]["data"], "pong");
}

#[tokio::test]
async fn a_session_over_its_rate_gets_rate_limited_errors_then_recovers() {
    let server = TestServer::start_with(|c| c.ws.rate_per_sec = 5).await;
    let token = server.admin_token().await;
    let mut ws = connect(&server, Some(&token)).await.expect("upgrade");
    next_json(&mut ws).await;
    for id in 0..20u64 {
        let msg = json!({"service": "session", "message": {"command": "ping", "callId": id}});
        ws.send(Message::Text(msg.to_string().into()))
            .await
            .expect("send");
    }
    let mut limited = 0;
    for id in 0..20u64 {
        let r = next_json(&mut ws).await;
        assert_eq!(r["message"]["callId"], id, "answers come in order: {r}");
        match r["message"]["type"].as_str() {
            Some("response") => {}
            Some("error") => {
                assert_eq!(r["message"]["code"], "rate_limited");
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        (10..=15).contains(&limited),
        "{limited} of 20 limited at 5/s"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = call(&mut ws, "session", "ping", Value::Null, 99).await;
    assert_eq!(r["message"]["data"], "pong");
}

#[tokio::test]
async fn sessions_past_the_cap_are_refused_with_503_until_one_closes() {
    let server = TestServer::start_with(|c| c.ws.max_sessions = 1).await;
    let token = server.admin_token().await;
    let mut first = connect(&server, Some(&token)).await.expect("upgrade");
    next_json(&mut first).await;
    match connect(&server, Some(&token)).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 503),
        other => panic!("expected a 503, got {:?}", other.map(|_| "a session")),
    }
    first.close(None).await.expect("close");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match connect(&server, Some(&token)).await {
            Ok(mut ws) => {
                assert_eq!(next_json(&mut ws).await["message"]["type"], "welcome");
                break;
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the closed session's place never came back: {e}"),
        }
    }
}

#[tokio::test]
async fn a_plain_get_of_ws_gets_a_json_426() {
    let server = TestServer::start().await;
    let resp = reqwest::get(format!("{}/ws", server.http))
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 426);
    let body: Value = resp.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "upgrade_required");
}

/// Pushes until `n` inbox messages have come (other frames are not expected).
async fn pushes(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = next_json(ws).await;
        assert_eq!(v["service"], "inbox", "{v}");
        assert_eq!(v["message"]["type"], "message", "{v}");
        out.push(v["message"].clone());
    }
    out
}

/// No frame but pings for `ms` milliseconds.
async fn quiet_for(ws: &mut Ws, ms: u64) {
    let until = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(frame) = tokio::time::timeout_at(until, ws.next()).await {
        match frame {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_inbox_is_pushed_within_the_window_with_leases_acks_and_redelivery() {
    let server = TestServer::start().await;
    let dev = server.new_client("dev-1", &["dev.#"]).await;
    let token = dev.fetch_token().await.expect("token").token;
    let admin = server.admin();
    for i in 0..5 {
        admin
            .send("dev.temp", &json!({"n": i}))
            .await
            .expect("send");
    }
    let mut ws = connect(&server, Some(&token)).await.expect("upgrade");
    next_json(&mut ws).await;
    let r = call(
        &mut ws,
        "inbox",
        "subscribe",
        json!({"window": 2, "lease": 30}),
        1,
    )
    .await;
    assert_eq!(
        r["message"]["data"],
        json!({"queue": "dev-1-inbox", "window": 2, "lease": 30})
    );
    // Two in flight at most.
    let first = pushes(&mut ws, 2).await;
    assert_eq!(first[0]["body"], json!({"n": 0}));
    assert_eq!(first[1]["body"], json!({"n": 1}));
    assert_eq!(first[0]["topic"], "dev.temp");
    assert_eq!(first[0]["redelivered"], false);
    quiet_for(&mut ws, 300).await;
    // An ack makes room for the next.
    let r = call(
        &mut ws,
        "inbox",
        "ack",
        json!({"receipts": [first[0]["receipt"]]}),
        2,
    )
    .await;
    assert_eq!(r["message"]["data"], json!({"done": 1, "unknown": []}));
    let next = pushes(&mut ws, 1).await;
    assert_eq!(next[0]["body"], json!({"n": 2}));
    // A nack (requeue) sends it round again, marked redelivered.
    let r = call(
        &mut ws,
        "inbox",
        "nack",
        json!({"receipts": [first[1]["receipt"]]}),
        3,
    )
    .await;
    assert_eq!(r["message"]["data"]["done"], 1);
    let mut seen = pushes(&mut ws, 1).await;
    let mut extra_acks = 0;
    if seen[0]["body"] != json!({"n": 1}) {
        extra_acks += 1;
        // The freed place may first go to the next message in line.
        let r = call(
            &mut ws,
            "inbox",
            "ack",
            json!({"receipts": [seen[0]["receipt"]]}),
            4,
        )
        .await;
        assert_eq!(r["message"]["data"]["done"], 1);
        seen = pushes(&mut ws, 1).await;
    }
    assert_eq!(seen[0]["body"], json!({"n": 1}));
    assert_eq!(seen[0]["redelivered"], true);
    assert_eq!(seen[0]["delivery_count"], 2);
    // A message published while subscribed is pushed when there is room.
    let r = call(
        &mut ws,
        "inbox",
        "ack",
        json!({"receipts": [seen[0]["receipt"], next[0]["receipt"]]}),
        5,
    )
    .await;
    assert_eq!(r["message"]["data"]["done"], 2);
    // Closing the session gives back what it still holds, at once.
    drop(ws);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut left = Vec::new();
    let expected = 2 - extra_acks;
    while left.len() < expected && tokio::time::Instant::now() < deadline {
        let got = dev
            .receive(&trunkline_client::ReceiveOptions {
                max_messages: 10,
                ..Default::default()
            })
            .await
            .expect("receive");
        left.extend(got.into_iter().map(|m| m.body.to_string()));
        if left.len() < expected {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        left.len(),
        expected,
        "the messages still in flight came back: {left:?}"
    );
}

#[tokio::test]
async fn a_new_message_is_pushed_to_a_waiting_subscriber_and_bad_params_are_refused() {
    let server = TestServer::start().await;
    let dev = server.new_client("dev-2", &["dev.#"]).await;
    let token = dev.fetch_token().await.expect("token").token;
    let mut ws = connect(&server, Some(&token)).await.expect("upgrade");
    next_json(&mut ws).await;
    for (params, code) in [
        (json!({"window": 0}), "invalid_params"),
        (json!({"window": "ten"}), "invalid_params"),
        (json!({"lease": 0}), "invalid_params"),
        (json!({"queue": "admin-inbox"}), "forbidden"),
    ] {
        let r = call(&mut ws, "inbox", "subscribe", params.clone(), 1).await;
        assert_eq!(r["message"]["code"], code, "{params}: {r}");
    }
    let r = call(&mut ws, "inbox", "ack", json!({"receipts": "x"}), 2).await;
    assert_eq!(r["message"]["code"], "invalid_params");
    let r = call(&mut ws, "inbox", "subscribe", Value::Null, 3).await;
    assert_eq!(r["message"]["type"], "response");
    let r = call(&mut ws, "inbox", "subscribe", Value::Null, 4).await;
    assert_eq!(
        r["message"]["code"], "protocol_error",
        "one subscription per session"
    );
    quiet_for(&mut ws, 200).await;
    server
        .admin()
        .send("dev.door", &json!("open"))
        .await
        .expect("send");
    let got = pushes(&mut ws, 1).await;
    assert_eq!(got[0]["body"], "open");
    assert_eq!(got[0]["queue"], "dev-2-inbox");
    assert!(got[0]["receipt"].as_str().is_some());
}

/// `GET /channels/{channel}/members` on the backend listener.
async fn members_of(server: &TestServer, channel: &str) -> Value {
    let (status, v) = server
        .backend_request("GET", &format!("/channels/{channel}/members"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn mint(server: &TestServer, claims: Value) -> String {
    let (status, v) = server.backend_post("/channel-token", claims).await;
    assert_eq!(status, 200, "{v}");
    v["token"].as_str().expect("token").to_owned()
}

/// `channel.subscribe` with a channel token; the answer.
async fn subscribe_with(ws: &mut Ws, channel: &str, token: &str) -> Value {
    let params = json!({"channel": channel, "token": token});
    call(ws, "channel", "subscribe", params, 1).await
}

/// A session and its id.
async fn session(server: &TestServer, token: &str) -> (Ws, String) {
    let mut ws = connect(server, Some(token)).await.expect("upgrade");
    let w = next_json(&mut ws).await;
    let sid = w["message"]["sessionId"].as_str().expect("sid").to_owned();
    (ws, sid)
}

#[tokio::test]
async fn public_channels_take_any_session_and_backends_publish_to_them() {
    let server = TestServer::start().await;
    let user = server.new_client("user-1", &["user.#"]).await;
    let user_token = user.fetch_token().await.expect("token").token;
    let (mut a, _) = session(&server, &user_token).await;
    let (mut b, _) = session(&server, &user_token).await;
    for ws in [&mut a, &mut b] {
        let r = call(ws, "channel", "subscribe", json!({"channel": "news"}), 1).await;
        assert_eq!(
            r["message"]["data"],
            json!({"channel": "news", "publish": false})
        );
    }
    // End clients may not publish without a token that says so.
    let r = call(
        &mut a,
        "channel",
        "publish",
        json!({"channel": "news", "message": "hi"}),
        2,
    )
    .await;
    assert_eq!(r["message"]["code"], "forbidden");
    let (status, v) = server
        .backend_post(
            "/channels/news/publish",
            json!({"message": {"headline": "x"}}),
        )
        .await;
    assert_eq!((status, v), (200, json!({"delivered": 2})));
    for ws in [&mut a, &mut b] {
        let m = next_json(ws).await;
        assert_eq!(
            m,
            json!({"service": "channel", "message": {"type": "message", "channel": "news",
                   "message": {"headline": "x"}, "from": {"backend": true}}})
        );
    }
    for (params, code) in [
        (json!({"channel": "bad name"}), "invalid_params"),
        (json!({"channel": "x:y"}), "invalid_params"),
        (json!({}), "invalid_params"),
        (json!({"channel": "pvt:secret"}), "forbidden"),
    ] {
        let r = call(&mut a, "channel", "subscribe", params.clone(), 3).await;
        assert_eq!(r["message"]["code"], code, "{params}");
    }

    // An admin client's session is a backend: it joins any channel and publishes
    // without a token.
    let (mut admin, _) = session(&server, &server.admin_token().await).await;
    let r = call(
        &mut admin,
        "channel",
        "subscribe",
        json!({"channel": "pvt:secret"}),
        1,
    )
    .await;
    assert_eq!(
        r["message"]["data"],
        json!({"channel": "pvt:secret", "publish": true})
    );
    let r = call(
        &mut admin,
        "channel",
        "publish",
        json!({"channel": "news", "message": "hi"}),
        2,
    )
    .await;
    assert_eq!(r["message"]["data"], json!({"delivered": 2}));
    for ws in [&mut a, &mut b] {
        let m = next_json(ws).await;
        assert_eq!(m["message"]["message"], "hi");
    }
}

#[tokio::test]
async fn presence_channels_need_a_token_for_this_session_and_show_joins_and_leaves() {
    let server = TestServer::start().await;
    let token = server.admin_token().await;
    let (mut a, sid_a) = session(&server, &token).await;
    let (mut b, sid_b) = session(&server, &token).await;
    let room = "prs:room.1";
    // Tokens that do not fit are refused, each with a clear error.
    let for_b = mint(&server, json!({"sid": sid_b, "cname": room})).await;
    let other_room = mint(&server, json!({"sid": sid_a, "cname": "prs:elsewhere"})).await;
    let expired = trunkline_auth::channel::sign(
        &trunkline_auth::TokenKey::from_text(
            &std::fs::read_to_string(server.data_dir().join("channel.key")).expect("channel.key"),
        )
        .expect("key"),
        &trunkline_auth::ChannelClaims {
            sid: sid_a.clone(),
            client_id: "admin".into(),
            cname: room.into(),
            publish: false,
            conn_info: None,
            exp: 1,
        },
    );
    for (t, code) in [
        (for_b.as_str(), "forbidden"),
        (other_room.as_str(), "forbidden"),
        (expired.as_str(), "invalid_token"),
        ("eyJhbGciOiJIUzI1NiJ9.e30.AAAA", "invalid_token"),
    ] {
        let r = call(
            &mut a,
            "channel",
            "subscribe",
            json!({"channel": room, "token": t}),
            1,
        )
        .await;
        assert_eq!(r["message"]["code"], code, "{r}");
    }
    // A joins: nobody else there yet.
    let ta = mint(
        &server,
        json!({"sid": sid_a, "cname": room, "conn_info": {"name": "machine-a"}}),
    )
    .await;
    let r = call(
        &mut a,
        "channel",
        "subscribe",
        json!({"channel": room, "token": ta}),
        2,
    )
    .await;
    assert_eq!(r["message"]["data"]["members"], json!([]));
    // B joins with publish rights: it sees A, A sees B join.
    let tb = mint(
        &server,
        json!({"sid": sid_b, "cname": room, "pub": true, "conn_info": {"name": "machine-b"}}),
    )
    .await;
    let r = call(
        &mut b,
        "channel",
        "subscribe",
        json!({"channel": room, "token": tb}),
        3,
    )
    .await;
    assert_eq!(
        r["message"]["data"]["members"],
        json!([{"session_id": sid_a, "client_id": "admin", "info": {"name": "machine-a"}}])
    );
    let joined = next_json(&mut a).await;
    assert_eq!(joined["message"]["type"], "joined");
    assert_eq!(joined["message"]["member"]["session_id"], json!(sid_b));
    assert_eq!(
        joined["message"]["member"]["info"],
        json!({"name": "machine-b"})
    );
    // B publishes, excluding itself.
    let r = call(
        &mut b,
        "channel",
        "publish",
        json!({"channel": room, "message": 42, "exclude_self": true}),
        4,
    )
    .await;
    assert_eq!(r["message"]["data"], json!({"delivered": 1}));
    let m = next_json(&mut a).await;
    assert_eq!(m["message"]["message"], 42);
    assert_eq!(m["message"]["from"]["session_id"], json!(sid_b));
    // The backend lists the members.
    let members = members_of(&server, room).await;
    assert_eq!(members.as_array().map(Vec::len), Some(2));
    // B drops without a goodbye: A is told it left.
    drop(b);
    let left = next_json(&mut a).await;
    assert_eq!(left["message"]["type"], "left");
    assert_eq!(left["message"]["member"]["session_id"], json!(sid_b));
}

#[tokio::test]
async fn a_session_that_stops_reading_its_channels_is_closed_as_a_slow_consumer() {
    let server = TestServer::start().await;
    let token = server.admin_token().await;
    let (mut slow, _) = session(&server, &token).await;
    let r = call(
        &mut slow,
        "channel",
        "subscribe",
        json!({"channel": "firehose"}),
        1,
    )
    .await;
    assert_eq!(r["message"]["type"], "response");
    let (mut fast, _) = session(&server, &token).await;
    call(
        &mut fast,
        "channel",
        "subscribe",
        json!({"channel": "firehose"}),
        1,
    )
    .await;
    // `slow` reads nothing; `fast` keeps reading. Big messages fill the socket, then the
    // session's queue.
    let reader = tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), fast.next()).await
        {
            if matches!(m, Message::Text(_)) {
                n += 1;
            }
        }
        n
    });
    publish_blobs(&server, "firehose", 2500, 32 * 1024).await;
    assert_eq!(close_code(&mut slow).await, Some(CloseCode::from(4429)));
    assert_eq!(
        reader.await.expect("reader"),
        2500,
        "the fast reader got everything"
    );
}

#[tokio::test]
async fn the_snorky_backend_endpoint_answers_every_request() {
    let server = TestServer::start().await;
    let url = format!("{}/backend", server.backend);
    let http = reqwest::Client::new();
    let body = json!({"service": "pubsub", "message": {"command": "publish", "params": {"channel": "c", "message": 1}, "callId": 9}});
    // No key, a wrong key, bad JSON: clear HTTP errors.
    let r = http.post(&url).json(&body).send().await.expect("request");
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .post(&url)
        .header("X-Backend-Key", "not-the-key-0123456789")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .post(&url)
        .header("X-Backend-Key", &server.backend_key)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
    // A call: answered in Snorky's wrapping, callId echoed.
    let (status, v) = server.backend_post("/backend", body).await;
    assert_eq!(
        (status, v),
        (
            200,
            json!({"service": "pubsub", "message": {"type": "response", "callId": 9, "data": null}})
        )
    );
    let (status, v) = server
        .backend_post(
            "/backend",
            json!({"service": "x", "message": {"command": "y"}}),
        )
        .await;
    assert_eq!(
        (status, v),
        (
            200,
            json!({"service": "x", "message": {"type": "error", "message": "Unknown service"}})
        )
    );
}

#[tokio::test]
async fn a_backend_pushes_to_one_session_and_disconnects_it() {
    let server = TestServer::start().await;
    let token = server.admin_token().await;
    let (mut ws, sid) = session(&server, &token).await;
    let r = call(&mut ws, "channel", "subscribe", json!({"channel": "prs:ops", "token": mint(&server, json!({"sid": sid, "cname": "prs:ops"})).await}), 1).await;
    assert_eq!(r["message"]["type"], "response");
    let (status, _) = server
        .backend_post(
            &format!("/sessions/{sid}/send"),
            json!({"message": {"cmd": "reboot"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        next_json(&mut ws).await,
        json!({"service": "session", "message": {"type": "message", "message": {"cmd": "reboot"}, "from": {"backend": true}}})
    );
    let (status, v) = server
        .backend_post("/sessions/ws-999999/send", json!({"message": 1}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (404, json!("unknown_session"))
    );
    let disconnect = || async {
        reqwest::Client::new()
            .delete(format!("{}/sessions/{sid}", server.backend))
            .header("X-Backend-Key", &server.backend_key)
            .send()
            .await
            .expect("delete")
            .status()
            .as_u16()
    };
    assert_eq!(disconnect().await, 200);
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::from(4000)));
    // Gone from its channel, and no longer reachable.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let members = members_of(&server, "prs:ops").await;
        if members == json!([]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still a member: {members}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        disconnect().await,
        404,
        "a closed session is no longer there"
    );
}

#[tokio::test]
async fn an_admin_session_follows_every_system_channel_at_once() {
    let server = TestServer::start().await;
    let token = server.admin_token().await;
    let (mut watcher, _) = session(&server, &token).await;
    let r = call(
        &mut watcher,
        "channel",
        "subscribe",
        json!({"channel": "sys:*"}),
        1,
    )
    .await;
    assert_eq!(
        r["message"]["data"],
        json!({"channel": "sys:*", "channels": {}})
    );
    // Not for end clients.
    let dev = server.new_client("dev-9", &["dev.#"]).await;
    let dev_token = dev.fetch_token().await.expect("token").token;
    let (mut other, _) = session(&server, &dev_token).await;
    let r = call(
        &mut other,
        "channel",
        "subscribe",
        json!({"channel": "sys:*"}),
        1,
    )
    .await;
    assert_eq!(r["message"]["code"], "forbidden");
    // A machine joins a system channel it was given a token for: the watcher sees it.
    let (mut machine, sid) = session(&server, &dev_token).await;
    let t = mint(
        &server,
        json!({"sid": sid, "cname": "sys:commandControl", "conn_info": {"host": "m1"}}),
    )
    .await;
    let r = call(
        &mut machine,
        "channel",
        "subscribe",
        json!({"channel": "sys:commandControl", "token": t}),
        2,
    )
    .await;
    assert_eq!(r["message"]["type"], "response");
    let joined = next_json(&mut watcher).await;
    assert_eq!(joined["message"]["type"], "joined");
    assert_eq!(joined["message"]["channel"], "sys:commandControl");
    assert_eq!(joined["message"]["member"]["info"], json!({"host": "m1"}));
    let (status, v) = server
        .backend_post(
            "/channels/sys:commandControl/publish",
            json!({"message": "status?"}),
        )
        .await;
    assert_eq!((status, v), (200, json!({"delivered": 1})));
    assert_eq!(
        next_json(&mut machine).await["message"]["message"],
        "status?"
    );
    assert_eq!(
        next_json(&mut watcher).await["message"]["message"],
        "status?"
    );
    drop(machine);
    let left = next_json(&mut watcher).await;
    assert_eq!(left["message"]["type"], "left");
    assert_eq!(left["message"]["member"]["session_id"], json!(sid));
    // Public channels are not followed.
    server
        .backend_post("/channels/news/publish", json!({"message": 1}))
        .await;
    quiet_for(&mut watcher, 200).await;
}

/// The channel key of a node, to sign channel tokens as a backend would not.
fn channel_key(server: &TestServer) -> trunkline_auth::TokenKey {
    trunkline_auth::TokenKey::from_text(
        &std::fs::read_to_string(server.data_dir().join("channel.key")).expect("channel.key"),
    )
    .expect("key")
}

/// `ws-` and 128 bits in hex.
fn looks_random(sid: &str) -> bool {
    sid.strip_prefix("ws-")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn session_ids_are_random_and_a_channel_token_does_not_outlive_a_restart() {
    let server = TestServer::start().await;
    let x = server.new_client("client-x", &["x.#"]).await;
    let token_x = x.fetch_token().await.expect("token").token;
    let (ws_x, sid_x) = session(&server, &token_x).await;
    let minted = mint(&server, json!({"sid": sid_x, "cname": "pvt:ops"})).await;
    // Ids of one node: no counter, no shared prefix.
    let mut ids = vec![sid_x.clone()];
    for _ in 0..3 {
        ids.push(session(&server, &token_x).await.1);
    }
    for (i, a) in ids.iter().enumerate() {
        assert!(looks_random(a), "{a}");
        for b in &ids[i + 1..] {
            let differ = a.bytes().zip(b.bytes()).filter(|(p, q)| p != q).count();
            assert!(differ >= 16, "{a} and {b} look related");
        }
    }
    drop(ws_x);
    let dir = server.stop_keep().await.expect("temp dir");
    // The same data directory, another node: another client's first session.
    let server = TestServer::start_in(dir.path(), |_| {}).await;
    let y = server.new_client("client-y", &["y.#"]).await;
    let token_y = y.fetch_token().await.expect("token").token;
    let (mut ws_y, sid_y) = session(&server, &token_y).await;
    assert!(looks_random(&sid_y), "{sid_y}");
    assert!(
        !ids.contains(&sid_y),
        "a session id came again after a restart: {sid_y}"
    );
    // The token minted for client x's session before the restart is worth nothing now.
    let r = subscribe_with(&mut ws_y, "pvt:ops", &minted).await;
    assert_eq!(r["message"]["code"], "forbidden", "{r}");
    server.stop().await;
}

#[tokio::test]
async fn a_channel_token_binds_the_client_of_its_session() {
    let server = TestServer::start().await;
    let y = server.new_client("client-y", &["y.#"]).await;
    let token_y = y.fetch_token().await.expect("token").token;
    let (mut ws, sid) = session(&server, &token_y).await;
    // A token naming this session's id but another client, as one minted for client x's
    // session of the same id would: refused, saying why.
    let key = channel_key(&server);
    let for_x = trunkline_auth::channel::sign(
        &key,
        &trunkline_auth::ChannelClaims {
            sid: sid.clone(),
            client_id: "client-x".into(),
            cname: "prs:room".into(),
            publish: true,
            conn_info: None,
            exp: u64::MAX,
        },
    );
    let r = subscribe_with(&mut ws, "prs:room", &for_x).await;
    assert_eq!(r["message"]["code"], "forbidden", "{r}");
    assert_eq!(
        r["message"]["message"],
        "the channel token is for client `client-x`, not `client-y`"
    );
    // The backend's token names the session's client, and is taken.
    let minted = mint(&server, json!({"sid": sid, "cname": "prs:room"})).await;
    let claims = trunkline_auth::channel::verify(&key, &minted, 1).expect("a valid token");
    assert_eq!(
        (claims.sid.as_str(), claims.client_id.as_str()),
        (sid.as_str(), "client-y")
    );
    let r = subscribe_with(&mut ws, "prs:room", &minted).await;
    assert_eq!(r["message"]["type"], "response", "{r}");
    // No token for a session that is not open: the backend cannot know its client.
    let (status, v) = server
        .backend_post(
            "/channel-token",
            json!({"sid": "ws-00000000000000000000000000000001", "cname": "prs:room"}),
        )
        .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("unknown_session")),
        "{v}"
    );
}

/// A frame as [`RawWs::send`] takes it: its first byte, its payload, whether it is masked.
type RawFrame = (u8, Vec<u8>, bool);

/// A WebSocket client written by hand, to send the frames libraries refuse to send.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Upgrades with a bearer token and reads the welcome.
    async fn connect(server: &TestServer, token: &str) -> RawWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = server.http.trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("upgrade");
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("an answer in time")
                .expect("read");
            assert!(n > 0, "closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.drain(..end);
        let mut ws = RawWs { stream, buf };
        let (op, welcome) = ws.frame().await.expect("the welcome");
        assert_eq!(op, 0x1, "{}", String::from_utf8_lossy(&welcome));
        ws
    }

    /// Sends one frame: `first` is its first byte as is (FIN, RSV bits, opcode); the
    /// payload is masked unless `masked` is false.
    async fn send(&mut self, first: u8, payload: &[u8], masked: bool) {
        use tokio::io::AsyncWriteExt;
        let mut out = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x37, 0xfa, 0x21, 0x3d];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        self.stream.write_all(&out).await.expect("send a frame");
    }

    async fn fill(&mut self, n: usize) -> bool {
        use tokio::io::AsyncReadExt;
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("a frame in time")
            {
                Ok(0) | Err(_) => return false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    }

    /// The next frame from the server: its opcode and payload; `None` once the connection
    /// is gone.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.fill(2).await {
            return None;
        }
        let (op, len) = (self.buf[0] & 0x0f, self.buf[1] & 0x7f);
        assert_eq!(self.buf[1] & 0x80, 0, "a server's frames are not masked");
        let (head, len) = match len {
            126 => {
                self.fill(4).await.then_some(())?;
                (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize)
            }
            127 => {
                self.fill(10).await.then_some(())?;
                let mut n = [0u8; 8];
                n.copy_from_slice(&self.buf[2..10]);
                (10, u64::from_be_bytes(n) as usize)
            }
            n => (2, n as usize),
        };
        self.fill(head + len).await.then_some(())?;
        let payload = self.buf[head..head + len].to_vec();
        self.buf.drain(..head + len);
        Some((op, payload))
    }

    /// Reads until the close frame: its code and reason (`None` if the connection ended
    /// without one, or the frame had no code).
    async fn close(&mut self) -> Option<(u16, String)> {
        loop {
            let (op, payload) = self.frame().await?;
            if op == 0x8 {
                let code = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
                return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
            }
        }
    }
}

#[tokio::test]
async fn frames_the_session_cannot_take_close_it_with_their_code_and_a_reason() {
    let server = TestServer::start_with(|c| c.ws.max_message_bytes = 1024).await;
    let token = server.admin_token().await;
    let ping = br#"{"service":"session","message":{"command":"ping","callId":1}}"#;
    let big = format!(
        r#"{{"service":"session","message":{{"command":"ping","pad":"{}"}}}}"#,
        "x".repeat(2000)
    );
    // (what, the frames, the close code)
    let cases: Vec<(&str, Vec<RawFrame>, u16)> = vec![
        (
            "a message over the limit",
            vec![(0x81, big.clone().into_bytes(), true)],
            1009,
        ),
        (
            "a frame announcing far more than the limit",
            vec![(0x81, vec![b' '; 64 * 1024], true)],
            1009,
        ),
        (
            "fragments over the limit together",
            vec![
                (0x01, big.as_bytes()[..700].to_vec(), true),
                (0x80, big.as_bytes()[700..1400].to_vec(), true),
            ],
            1009,
        ),
        (
            "invalid UTF-8 in a text frame",
            vec![(0x81, vec![b'"', 0xff, 0xfe, b'"'], true)],
            1007,
        ),
        (
            "a reserved bit set",
            vec![(0xc1, ping.to_vec(), true)],
            1002,
        ),
        (
            "an unknown data opcode",
            vec![(0x83, ping.to_vec(), true)],
            1002,
        ),
        (
            "an unknown control opcode",
            vec![(0x8b, vec![], true)],
            1002,
        ),
        (
            "an unmasked frame",
            vec![(0x81, ping.to_vec(), false)],
            1002,
        ),
        (
            "a control frame over 125 bytes",
            vec![(0x89, vec![b'p'; 126], true)],
            1002,
        ),
        (
            "a fragmented control frame",
            vec![(0x09, b"p".to_vec(), true)],
            1002,
        ),
        (
            "a continuation with nothing to continue",
            vec![(0x80, ping.to_vec(), true)],
            1002,
        ),
        (
            "a close frame of one byte",
            vec![(0x88, vec![3], true)],
            1002,
        ),
        (
            "a close code no one may send",
            vec![(0x88, 999u16.to_be_bytes().to_vec(), true)],
            1002,
        ),
        (
            "a close reason that is not UTF-8",
            vec![(0x88, vec![3, 232, 0xff], true)],
            1007,
        ),
        (
            "a normal close, answered with its code",
            vec![(0x88, vec![3, 232, b'b', b'y', b'e'], true)],
            1000,
        ),
    ];
    for (what, frames, code) in cases {
        let mut ws = RawWs::connect(&server, &token).await;
        for (first, payload, masked) in frames {
            ws.send(first, &payload, masked).await;
        }
        let (got, reason) = ws
            .close()
            .await
            .unwrap_or_else(|| panic!("{what}: no close code"));
        assert_eq!(got, code, "{what}: {reason}");
        assert!(
            !reason.is_empty() && reason.len() <= 123,
            "{what}: {reason:?}"
        );
    }
    // A message at the limit is taken.
    let mut ws = RawWs::connect(&server, &token).await;
    let mut at_limit = ping.to_vec();
    at_limit.resize(1024, b' ');
    ws.send(0x81, &at_limit, true).await;
    let (op, answer) = ws.frame().await.expect("an answer");
    assert_eq!(op, 0x1);
    let answer: Value = serde_json::from_slice(&answer).expect("JSON");
    assert_eq!(answer["message"]["data"], "pong", "{answer}");
}

#[tokio::test]
async fn a_call_id_comes_back_exactly_as_it_was_sent() {
    let server = TestServer::start().await;
    let token = server.admin_token().await;
    let (mut ws, _) = session(&server, &token).await;
    let ids = [
        "1180591620717411303424",
        "-12.50",
        r#""c-\u00e9""#,
        r#"{"n": [1, 2.0], "k": null}"#,
        "null",
    ];
    for id in ids {
        for (command, kind) in [("ping", "response"), ("dance", "error")] {
            let text = format!(
                r#"{{"service":"session","message":{{"command":"{command}","callId":{id}}}}}"#
            );
            ws.send(Message::Text(text.into())).await.expect("send");
            let got = next_text(&mut ws).await;
            assert!(got.contains(&format!(r#""callId":{id}"#)), "{id}: {got}");
            assert!(got.contains(&format!(r#""type":"{kind}""#)), "{got}");
        }
    }
    // A callId that strict parsers cannot read back is refused, not echoed.
    for id in [
        "1e400",
        r#""\ud800""#,
        &format!("{}1{}", "[".repeat(20), "]".repeat(20)),
    ] {
        let text =
            format!(r#"{{"service":"session","message":{{"command":"ping","callId":{id}}}}}"#);
        ws.send(Message::Text(text.into())).await.expect("send");
        let got = next_text(&mut ws).await;
        assert!(got.contains(r#""callId":null"#), "{id}: {got}");
        assert!(got.contains("malformed_message"), "{id}: {got}");
    }
    // A malformed call still echoes its callId; so does a rate-limited one (not tried here).
    let text = r#"{"service":"session","message":{"command":7,"callId":1180591620717411303424}}"#;
    ws.send(Message::Text(text.into())).await.expect("send");
    let got = next_text(&mut ws).await;
    assert!(got.contains(r#""callId":1180591620717411303424"#), "{got}");
    assert!(got.contains("malformed_message"), "{got}");

    // Through an RPC call: the parts and the answer carry the caller's callId.
    let (mut callee, _) = session(&server, &token).await;
    let r = call(
        &mut callee,
        "rpc",
        "register",
        json!({"name": "calc", "functions": ["add"]}),
        1,
    )
    .await;
    assert_eq!(r["message"]["type"], "response", "{r}");
    let big = "1180591620717411303424";
    let text = format!(
        r#"{{"service":"rpc","message":{{"command":"call","params":{{"server":"calc","function":"add"}},"callId":{big}}}}}"#
    );
    ws.send(Message::Text(text.into())).await.expect("send");
    let pushed = next_json(&mut callee).await;
    assert_eq!(pushed["message"]["type"], "call", "{pushed}");
    let id = pushed["message"]["id"].clone();
    for (n, command) in ["next", "end"].into_iter().enumerate() {
        let r = call(&mut callee, "rpc", command, json!({"id": id, "data": n}), 2).await;
        assert_eq!(r["message"]["data"], json!({"delivered": true}), "{r}");
    }
    for kind in ["next", "response"] {
        let got = next_text(&mut ws).await;
        assert!(got.contains(&format!(r#""callId":{big}"#)), "{got}");
        assert!(got.contains(&format!(r#""type":"{kind}""#)), "{got}");
    }
}

#[tokio::test]
async fn the_authenticate_call_is_answered_with_its_call_id() {
    let server = TestServer::start().await;
    let token = server.admin_token().await;
    // Accepted: the welcome push, then the answer.
    let mut ws = connect(&server, None).await.expect("upgrade");
    let text = json!({"service": "auth", "message": {"command": "authenticate",
                      "params": {"token": token}, "callId": "auth-1"}});
    ws.send(Message::Text(text.to_string().into()))
        .await
        .expect("send");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["message"]["type"], "welcome", "{welcome}");
    let sid = welcome["message"]["sessionId"].clone();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"service": "auth", "message": {"type": "response", "callId": "auth-1",
               "data": {"sessionId": sid, "clientId": "admin"}}})
    );
    // Refused: an error answer with the callId and code, then 4401.
    let mut ws = connect(&server, None).await.expect("upgrade");
    let text = r#"{"service":"auth","message":{"command":"authenticate","params":{"token":"tl1.bad.bad"},"callId":1180591620717411303424}}"#;
    ws.send(Message::Text(text.into())).await.expect("send");
    let got = next_text(&mut ws).await;
    assert!(got.contains(r#""callId":1180591620717411303424"#), "{got}");
    let got: Value = serde_json::from_str(&got).expect("JSON");
    assert_eq!(got["service"], "auth");
    assert_eq!(got["message"]["type"], "error");
    assert_eq!(got["message"]["code"], "invalid_token");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::from(4401)));
    // Another call first: an error answer too, then 4401.
    let mut ws = connect(&server, None).await.expect("upgrade");
    let r = call(&mut ws, "session", "whoami", Value::Null, 3).await;
    assert_eq!(r["service"], "session");
    assert_eq!(r["message"]["callId"], 3);
    assert_eq!(r["message"]["code"], "missing_credentials", "{r}");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::from(4401)));
}

/// Joins `channel` with a token the backend minted; the answer.
async fn join(server: &TestServer, ws: &mut Ws, sid: &str, channel: &str) -> Value {
    let t = mint(server, json!({"sid": sid, "cname": channel})).await;
    let r = subscribe_with(ws, channel, &t).await;
    assert_eq!(r["message"]["type"], "response", "{r}");
    r
}

/// A backend publishes `n` strings of `size` bytes to `channel`, one request each.
async fn publish_blobs(server: &TestServer, channel: &str, n: usize, size: usize) {
    let blob = "x".repeat(size);
    let http = reqwest::Client::new();
    for _ in 0..n {
        let r = http
            .post(format!("{}/channels/{channel}/publish", server.backend))
            .header("X-Backend-Key", &server.backend_key)
            .json(&json!({"message": blob}))
            .send()
            .await
            .expect("publish");
        assert_eq!(r.status().as_u16(), 200);
    }
}

/// A node that pings every 2 s and closes sessions silent for 4 s, two admin sessions on it
/// (their ids), both joined to `channel`: the first joins first.
async fn two_members(channel: &str) -> (TestServer, [(Ws, String); 2]) {
    let server = TestServer::start_with(|c| {
        c.ws.ping_secs = 2;
        c.ws.idle_timeout_secs = 4;
    })
    .await;
    let token = server.admin_token().await;
    let mut first = session(&server, &token).await;
    let mut second = session(&server, &token).await;
    join(&server, &mut first.0, &first.1, channel).await;
    join(&server, &mut second.0, &second.1, channel).await;
    (server, [first, second])
}

/// Reads (answering pings) until a `left` event; it, and when it came.
async fn left_event(ws: &mut Ws) -> (Value, tokio::time::Instant) {
    loop {
        let v = next_json(ws).await;
        if v["message"]["type"] == "left" {
            return (v, tokio::time::Instant::now());
        }
    }
}

#[tokio::test]
async fn a_silent_presence_member_is_closed_and_announced_as_left_on_time() {
    let (_server, [(mut watcher, _), (mut silent, sid)]) = two_members("prs:room").await;
    // Its last frame was the subscribe; from now on it reads nothing (so answers no ping).
    let silent_since = tokio::time::Instant::now();
    let joined = next_json(&mut watcher).await;
    assert_eq!(joined["message"]["type"], "joined", "{joined}");
    let (left, at) = left_event(&mut watcher).await;
    assert_eq!(left["message"]["member"]["session_id"], json!(sid));
    let after = at - silent_since;
    assert!(
        after >= Duration::from_millis(3500) && after < Duration::from_millis(5000),
        "left {after:?} after the member fell silent; the idle timeout is 4 s"
    );
    assert_eq!(close_code(&mut silent).await, Some(CloseCode::from(4408)));
}

#[tokio::test]
async fn a_member_that_reads_nothing_of_a_busy_channel_is_closed_and_announced_as_left() {
    let (server, [(mut watcher, _), (stalled, sid)]) = two_members("prs:busy").await;
    // The watcher reads everything; the other member nothing, so that its socket fills
    // up and writes to it wait.
    let joined = next_json(&mut watcher).await;
    assert_eq!(joined["message"]["type"], "joined", "{joined}");
    let reader = tokio::spawn(async move { left_event(&mut watcher).await });
    publish_blobs(&server, "prs:busy", 400, 64 * 1024).await;
    let published = tokio::time::Instant::now();
    let (left, at) = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the stalled member left in time")
        .expect("reader");
    assert_eq!(left["message"]["member"]["session_id"], json!(sid));
    assert!(
        at.saturating_duration_since(published) < Duration::from_secs(5),
        "left {:?} after the last publish",
        at.saturating_duration_since(published)
    );
    drop(stalled);
}
