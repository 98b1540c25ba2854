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

async fn admin_token(server: &TestServer) -> String {
    let c = server.admin_credentials();
    let url = format!(
        "{}/token?client_id={}&secret={}",
        server.http, c.client_id, c.secret
    );
    let v: Value = reqwest::get(url)
        .await
        .expect("token request")
        .json()
        .await
        .expect("token json");
    v["token"].as_str().expect("token").to_owned()
}

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

/// The next text frame as JSON (pings are answered by the library meanwhile).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the session is open")
            .expect("a frame");
        match frame {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON from the server"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
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
    let token = admin_token(&server).await;
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
    let token = admin_token(&server).await;
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
    let token = admin_token(&server).await;
    // First message.
    let mut ws = connect(&server, None)
        .await
        .expect("upgrade without a token");
    let r = call(&mut ws, "auth", "authenticate", json!({"token": token}), 1).await;
    assert_eq!(r["message"]["type"], "welcome", "{r}");
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
    let token = admin_token(&server).await;
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
    let token = admin_token(&server).await;
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
    let token = admin_token(&server).await;
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
    let (mut admin, _) = session(&server, &admin_token(&server).await).await;
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
    let token = admin_token(&server).await;
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
    let token = admin_token(&server).await;
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
    let blob = "x".repeat(32 * 1024);
    let http = reqwest::Client::new();
    for _ in 0..2500 {
        let r = http
            .post(format!("{}/channels/firehose/publish", server.backend))
            .header("X-Backend-Key", &server.backend_key)
            .json(&json!({"message": blob}))
            .send()
            .await
            .expect("publish");
        assert_eq!(r.status().as_u16(), 200);
    }
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
    let token = admin_token(&server).await;
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
    let token = admin_token(&server).await;
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
