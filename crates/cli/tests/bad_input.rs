//! Bad input gets a clear JSON error, never a 5xx, a panic or a hang, and loses nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use trunkline_api::ErrorCode;
use trunkline_testkit::TestServer;

async fn call(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut r = http
        .request(method.parse().expect("method"), url)
        .body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("the node answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asserts an error answer: the status, the JSON shape, a registry code, and that code.
fn assert_error(what: &str, (status, v): &(u16, Value), expect: ErrorCode) {
    let code = v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a JSON error: {status} {v}"));
    assert!(
        ErrorCode::from_code(code).is_some(),
        "{what}: unregistered code {code}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: no message"
    );
    assert_eq!(
        (*status, code),
        (expect.status(), expect.as_str()),
        "{what}: {v}"
    );
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let server = TestServer::start().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let base = server.http.clone();
    let secret = server.admin_credentials().secret;
    let tok: Value = http
        .get(format!("{base}/token?client_id=admin&secret={secret}"))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let token = tok["token"].as_str().expect("token").to_owned();
    let bearer = format!("Bearer {token}");
    let auth = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];

    use ErrorCode::*;
    let deep = format!(
        "{{\"topic\":\"a\",\"body\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let long_topic = format!("{{\"topic\":\"{}\",\"body\":1}}", "a".repeat(300));
    let bodies: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("empty", b"".to_vec(), MalformedJson),
        ("truncated", b"{\"topic\":".to_vec(), MalformedJson),
        ("not json", b"hello".to_vec(), MalformedJson),
        ("invalid utf-8", vec![b'"', 0xff, 0xfe, b'"'], MalformedJson),
        ("deep nesting", deep.into_bytes(), InvalidBody),
        ("array", b"[]".to_vec(), InvalidBody),
        ("null", b"null".to_vec(), InvalidBody),
        ("number", b"1".to_vec(), InvalidBody),
        (
            "topic not a string",
            br#"{"topic":1,"body":1}"#.to_vec(),
            InvalidBody,
        ),
        (
            "topic without body",
            br#"{"topic":"a"}"#.to_vec(),
            InvalidBody,
        ),
        (
            "unknown field",
            br#"{"topic":"a","body":1,"colour":"red"}"#.to_vec(),
            InvalidBody,
        ),
        (
            "mixed forms",
            br#"{"topic":"a","body":1,"header":{"destination":"b"}}"#.to_vec(),
            InvalidBody,
        ),
        (
            "destination not a string",
            br#"{"header":{"destination":5},"payload":1}"#.to_vec(),
            InvalidBody,
        ),
        (
            "wildcard topic",
            br#"{"topic":"a.*","body":1}"#.to_vec(),
            InvalidTopic,
        ),
        (
            "empty word",
            br#"{"topic":"a..b","body":1}"#.to_vec(),
            InvalidTopic,
        ),
        (
            "empty topic",
            br#"{"topic":"","body":1}"#.to_vec(),
            InvalidTopic,
        ),
        ("long topic", long_topic.into_bytes(), InvalidTopic),
        (
            "negative ttl",
            br#"{"topic":"a","body":1,"ttl":-1}"#.to_vec(),
            InvalidBody,
        ),
        (
            "empty message_id",
            br#"{"topic":"a","body":1,"message_id":""}"#.to_vec(),
            InvalidBody,
        ),
        (
            "null ttl",
            br#"{"topic":"a","body":1,"ttl":null}"#.to_vec(),
            InvalidBody,
        ),
        (
            "null topic",
            br#"{"topic":null,"body":1}"#.to_vec(),
            InvalidBody,
        ),
        (
            "null header",
            br#"{"header":null,"payload":1}"#.to_vec(),
            InvalidBody,
        ),
        (
            "null destination",
            br#"{"header":{"destination":null},"payload":1}"#.to_vec(),
            InvalidBody,
        ),
        ("too large", vec![b' '; 2 * 1024 * 1024], BodyTooLarge),
    ];
    for (what, body, code) in &bodies {
        let r = call(&http, "POST", &format!("{base}/send"), &auth, body.clone()).await;
        assert_error(&format!("/send {what}"), &r, *code);
    }

    let client_bodies: Vec<(&str, &str, ErrorCode)> = vec![
        ("missing fields", r##"{"client_id":"x"}"##, InvalidBody),
        (
            "bad id",
            r##"{"client_id":"Bad Id","client_name":"x","subscription":"#"}"##,
            InvalidClientId,
        ),
        (
            "bad pattern",
            r##"{"client_id":"x","client_name":"x","subscription":"a.b*"}"##,
            InvalidPattern,
        ),
        (
            "empty pattern list",
            r##"{"client_id":"x","client_name":"x","subscription":[]}"##,
            InvalidBody,
        ),
        (
            "unknown role",
            r##"{"client_id":"x","client_name":"x","subscription":"#","roles":["god"]}"##,
            InvalidBody,
        ),
        (
            "negative length",
            r##"{"client_id":"x","client_name":"x","subscription":"#","inbox":{"max_length":-1}}"##,
            InvalidBody,
        ),
        (
            "zero length",
            r##"{"client_id":"x","client_name":"x","subscription":"#","inbox":{"max_length":0}}"##,
            InvalidBody,
        ),
        (
            "bad overflow",
            r##"{"client_id":"x","client_name":"x","subscription":"#","inbox":{"overflow":"explode"}}"##,
            InvalidBody,
        ),
        (
            "existing",
            r##"{"client_id":"admin","client_name":"x","subscription":"#"}"##,
            ClientExists,
        ),
    ];
    for (what, body, code) in &client_bodies {
        let r = call(
            &http,
            "POST",
            &format!("{base}/client"),
            &auth,
            body.as_bytes().to_vec(),
        )
        .await;
        assert_error(&format!("/client {what}"), &r, *code);
    }
    let r = call(
        &http,
        "PATCH",
        &format!("{base}/client/ghost"),
        &auth,
        b"{}".to_vec(),
    )
    .await;
    assert_error("patch unknown client", &r, UnknownClient);
    let r = call(
        &http,
        "DELETE",
        &format!("{base}/client/ghost"),
        &auth,
        vec![],
    )
    .await;
    assert_error("delete unknown client", &r, UnknownClient);
    let r = call(
        &http,
        "POST",
        &format!("{base}/ack"),
        &auth,
        br#"{"receipts":"x"}"#.to_vec(),
    )
    .await;
    assert_error("ack receipts not a list", &r, InvalidBody);
    let r = call(
        &http,
        "POST",
        &format!("{base}/ack"),
        &auth,
        br#"{"receipts":[],"requeue":true}"#.to_vec(),
    )
    .await;
    assert_error("ack with requeue", &r, InvalidBody);
    let r = call(
        &http,
        "POST",
        &format!("{base}/nack"),
        &auth,
        br#"{"receipts":[],"requeue":null}"#.to_vec(),
    )
    .await;
    assert_error("nack with a null requeue", &r, InvalidBody);

    let queries: Vec<(&str, ErrorCode)> = vec![
        ("max_messages=abc", InvalidQuery),
        ("max_messages=-1", InvalidQuery),
        ("max_messages=100000", InvalidQuery),
        ("ack=maybe", InvalidQuery),
        ("ack=manual&lease=0", InvalidQuery),
        ("wait=100000", InvalidQuery),
        ("queue=someone-else", Forbidden),
        ("colour=red", InvalidQuery),
        ("token=abc", CredentialsInWrongPlace),
    ];
    for (q, code) in &queries {
        let r = call(&http, "GET", &format!("{base}/receive?{q}"), &auth, vec![]).await;
        assert_error(&format!("/receive?{q}"), &r, *code);
    }

    // Credentials.
    let key_text = std::fs::read_to_string(server.data_dir().join("token.key")).expect("token.key");
    let key = trunkline_auth::TokenKey::from_text(&key_text).expect("key");
    let expired = key.sign(&trunkline_auth::Claims {
        sub: "admin".into(),
        cid: "x".into(),
        exp: 1,
    });
    let ghost = key.sign(&trunkline_auth::Claims {
        sub: "ghost".into(),
        cid: "x".into(),
        exp: u64::MAX / 2,
    });
    let forged = trunkline_auth::TokenKey::generate().sign(&trunkline_auth::Claims {
        sub: "admin".into(),
        cid: "x".into(),
        exp: u64::MAX / 2,
    });
    let cases: Vec<(Vec<(&str, String)>, ErrorCode)> = vec![
        (vec![], MissingCredentials),
        (
            vec![("authorization", "Basic YWRtaW46eA==".into())],
            InvalidToken,
        ),
        (vec![("authorization", "Bearer".into())], InvalidToken),
        (
            vec![("authorization", "Bearer garbage".into())],
            InvalidToken,
        ),
        (
            vec![("authorization", format!("Bearer {expired}"))],
            TokenExpired,
        ),
        (
            vec![("authorization", format!("Bearer {ghost}"))],
            InvalidToken,
        ),
        (
            vec![("authorization", format!("Bearer {forged}"))],
            InvalidToken,
        ),
    ];
    for (headers, code) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = call(&http, "GET", &format!("{base}/receive"), &h, vec![]).await;
        assert_error(&format!("credentials {headers:?}"), &r, *code);
    }
    let r = call(
        &http,
        "POST",
        &format!("{base}/send"),
        &[("authorization", &bearer), ("content-type", "text/plain")],
        b"{}".to_vec(),
    )
    .await;
    assert_error("text/plain", &r, UnsupportedMediaType);
    let r = call(
        &http,
        "GET",
        &format!("{base}/token?client_id=ghost&secret=x"),
        &[],
        vec![],
    )
    .await;
    assert_error("unknown client token", &r, InvalidCredentials);
    let r = call(&http, "GET", &format!("{base}/token"), &[], vec![]).await;
    assert_error("token without params", &r, InvalidQuery);
    let r = call(
        &http,
        "POST",
        &format!("{base}/token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        b"grant_type=password".to_vec(),
    )
    .await;
    assert_error("wrong grant", &r, InvalidBody);
    let r = call(&http, "GET", &format!("{base}/no/such/thing"), &[], vec![]).await;
    assert_error("unknown path", &r, NotFound);
    let r = call(&http, "DELETE", &format!("{base}/send"), &auth, vec![]).await;
    assert_error("wrong method", &r, MethodNotAllowed);

    // Nothing broke and nothing was published by the bad requests.
    let (s, v) = call(
        &http,
        "GET",
        &format!("{base}/receive?max_messages=1000"),
        &auth,
        vec![],
    )
    .await;
    assert_eq!((s, v.as_array().map(|a| a.len())), (200, Some(0)), "{v}");
    let (s, _) = call(
        &http,
        "POST",
        &format!("{base}/send"),
        &auth,
        br#"{"topic":"ok","body":1}"#.to_vec(),
    )
    .await;
    assert_eq!(s, 202);
    server.stop().await;
}

/// Reads until the peer closes; `true` if it closed within `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_half_open_and_garbage_connections() {
    let server = TestServer::start_with(|c| {
        c.http_limits.header_timeout_secs = 1;
        c.http_limits.request_timeout_secs = 2;
        c.http_limits.max_wait_secs = 1;
    })
    .await;
    let addr = server.http.trim_start_matches("http://").to_owned();
    let results = tokio::task::spawn_blocking(move || {
        // Idle connections that never send a byte.
        let idle: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(&addr).expect("connect")).collect();
        // Slow loris: headers that never end are cut off by the header timeout.
        let mut slow = TcpStream::connect(&addr).expect("connect");
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("write");
        let slow_closed = closed_within(&mut slow, Duration::from_secs(5));
        // A body that never arrives in full is answered 408.
        let mut body = TcpStream::connect(&addr).expect("connect");
        body.write_all(b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer x\r\nContent-Length: 100\r\n\r\n{\"to").expect("write");
        body.set_read_timeout(Some(Duration::from_secs(6))).expect("timeout");
        let mut answer = String::new();
        let mut buf = [0u8; 1024];
        if let Ok(n) = body.read(&mut buf) {
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // Garbage instead of HTTP.
        let mut junk = TcpStream::connect(&addr).expect("connect");
        junk.write_all(b"\x00\x01\x02 NOT HTTP AT ALL\r\n\r\n").expect("write");
        let junk_closed = closed_within(&mut junk, Duration::from_secs(5));
        drop(idle);
        (slow_closed, answer, junk_closed)
    })
    .await
    .expect("join");
    let (slow_closed, answer, junk_closed) = results;
    assert!(slow_closed, "a connection trickling headers was not closed");
    // Either the bearer check (401) or the body timeout (408) answers; never silence.
    assert!(
        answer.starts_with("HTTP/1.1 401") || answer.starts_with("HTTP/1.1 408"),
        "{answer:?}"
    );
    assert!(junk_closed, "a garbage connection was not closed");
    // The node still serves.
    let r = reqwest::get(format!("{}/healthz", server.http))
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_times_out_with_408() {
    let server = TestServer::start_with(|c| {
        c.http_limits.request_timeout_secs = 2;
        c.http_limits.max_wait_secs = 1;
    })
    .await;
    let secret = server.admin_credentials().secret;
    let v: Value = reqwest::get(format!(
        "{}/token?client_id=admin&secret={secret}",
        server.http
    ))
    .await
    .expect("token")
    .json()
    .await
    .expect("json");
    let token = v["token"].as_str().expect("token").to_owned();
    let addr = server.http.trim_start_matches("http://").to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&addr).expect("connect");
        let head = format!(
            "POST /send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{\"to"
        );
        s.write_all(head.as_bytes()).expect("write");
        s.set_read_timeout(Some(Duration::from_secs(8))).expect("timeout");
        let mut buf = [0u8; 2048];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .expect("join");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("request_timeout"), "{answer:?}");
    server.stop().await;
}
