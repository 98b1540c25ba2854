//! Limits that hold under attack (issue 11): a guesser cannot lock a client out from
//! another address, guessing is bounded per source address, and slow unauthenticated
//! connections from one address leave `/healthz` and everyone else served.
//!
//! Loopback is all of 127.0.0.0/8 on Linux, so each test binds its sockets to distinct
//! 127.0.0.x addresses to play several sources.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use trunkline_proto::{encode, Command, Decoder, Frame, Item, Limits};
use trunkline_testkit::TestServer;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// An HTTP client whose connections come from `source`.
fn http_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip(source))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A TCP connection to `addr` from `source`.
async fn connect_from(source: &str, addr: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr
        .trim_start_matches("http://")
        .parse()
        .expect("host:port");
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip(source), 0))?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

async fn create(server: &TestServer, id: &str) -> String {
    server
        .admin()
        .create_client(&trunkline_api::CreateClient::new(
            id,
            trunkline_api::Subscription::One(format!("{id}.#")),
        ))
        .await
        .expect("create client")
        .secret
}

async fn get_token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> (u16, Value) {
    let r = http
        .get(format!("{base}/token"))
        .query(&[("client_id", id), ("secret", secret)])
        .send()
        .await
        .expect("the node answers /token");
    let status = r.status().as_u16();
    if status == 429 {
        assert!(
            r.headers().get("retry-after").is_some(),
            "429 without Retry-After"
        );
    }
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> u16 {
    http.post(format!("{base}/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ])
        .send()
        .await
        .expect("the node answers POST /token")
        .status()
        .as_u16()
}

/// CONNECT over STOMP from `source`: the answer's command and `code` header.
async fn stomp_connect(
    source: &str,
    addr: &str,
    login: &str,
    passcode: &str,
) -> (Command, Option<String>) {
    let mut s = connect_from(source, addr).await.expect("connect");
    let mut out = BytesMut::new();
    let f = Frame::new(Command::Connect)
        .header("accept-version", "1.2")
        .header("host", "/")
        .header("login", login)
        .header("passcode", passcode);
    encode(&f, &mut out).expect("encode");
    s.write_all(&out).await.expect("write");
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(Item::Frame(f))) => return (f.command, f.get("code").map(str::to_owned)),
            Ok(Some(Item::HeartBeat)) | Ok(None) => {}
            Err(e) => panic!("server sent garbage: {e}"),
        }
        let n = tokio::time::timeout_at(deadline, s.read_buf(&mut buf))
            .await
            .expect("an answer to CONNECT within 10 s")
            .unwrap_or(0);
        assert!(n > 0, "closed without answering CONNECT");
    }
}

#[tokio::test]
async fn a_guesser_at_one_address_does_not_lock_the_client_out_at_another() {
    let server = TestServer::start().await;
    let base = server.http.clone();
    let secret = create(&server, "victim").await;
    let attacker = http_from("127.0.0.1");
    let victim = http_from("127.0.0.2");

    // Wrong secrets from the attacker's address, over both grants: five are answered 401,
    // then the attacker is throttled, with the right secret too, on every path.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get_token(&attacker, &base, "victim", "wrong").await.0);
    }
    statuses.push(post_token(&attacker, &base, "victim", "wrong").await);
    for _ in 0..3 {
        statuses.push(get_token(&attacker, &base, "victim", "wrong").await.0);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    assert_eq!(get_token(&attacker, &base, "victim", &secret).await.0, 429);
    assert_eq!(post_token(&attacker, &base, "victim", &secret).await, 429);
    let (cmd, code) = stomp_connect("127.0.0.1", &server.stomp, "victim", &secret).await;
    assert_eq!((cmd, code.as_deref()), (Command::Error, Some("throttled")));

    // The victim, at another address, logs in with the right secret on every path.
    let (st, v) = get_token(&victim, &base, "victim", &secret).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(post_token(&victim, &base, "victim", &secret).await, 200);
    let (cmd, code) = stomp_connect("127.0.0.2", &server.stomp, "victim", &secret).await;
    assert_eq!((cmd, code), (Command::Connected, None));

    // STOMP counts too: wrong passcodes from a third address throttle that address only.
    for i in 0..6 {
        let (cmd, code) = stomp_connect("127.0.0.3", &server.stomp, "victim", "wrong").await;
        let expect = if i < 5 {
            "invalid_credentials"
        } else {
            "throttled"
        };
        assert_eq!(
            (cmd, code.as_deref()),
            (Command::Error, Some(expect)),
            "try {i}"
        );
    }
    let (cmd, code) = stomp_connect("127.0.0.2", &server.stomp, "victim", &secret).await;
    assert_eq!((cmd, code), (Command::Connected, None));
    server.stop().await;
}

#[tokio::test]
async fn guessing_across_client_ids_is_bounded_per_address() {
    let server = TestServer::start().await;
    let base = server.http.clone();
    let admin = server.admin_credentials().secret;
    let guesser = http_from("127.0.0.4");
    // One wrong try at each of many client ids: no single id reaches its bound, the
    // address does (20 per window by default).
    let mut first_429 = None;
    for i in 0..40 {
        let (st, _) = get_token(&guesser, &base, &format!("c{i}"), "wrong").await;
        if st == 429 {
            first_429 = Some(i);
            break;
        }
        assert_eq!(st, 401);
    }
    assert_eq!(
        first_429,
        Some(20),
        "the 21st guess from one address is throttled"
    );
    assert_eq!(get_token(&guesser, &base, "admin", &admin).await.0, 429);
    let (cmd, code) = stomp_connect("127.0.0.4", &server.stomp, "admin", &admin).await;
    assert_eq!((cmd, code.as_deref()), (Command::Error, Some("throttled")));
    // Everyone else is unaffected.
    assert_eq!(
        get_token(&http_from("127.0.0.2"), &base, "admin", &admin)
            .await
            .0,
        200
    );
    server.stop().await;
}

/// Opens a connection from `source` that sends the head of `POST /token` and one byte of
/// a 200-byte body, then nothing: it holds a connection for as long as the node lets it.
async fn slow_token_body(source: &str, addr: &str) -> std::io::Result<TcpStream> {
    let mut s = connect_from(source, addr).await?;
    s.write_all(
        b"POST /token HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\ng",
    )
    .await?;
    Ok(s)
}

/// What the node did with a connection within `limit`: the start of its answer, `""` if it
/// closed without one, `None` if it said nothing and kept it open.
async fn answer_within(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = vec![0u8; 512];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(Err(_)) => Some(String::new()),
        Err(_) => None,
    }
}

/// Asserts that `answer` is an HTTP answer with `status` and the error `code`.
fn assert_answered(answer: Option<String>, status: u16, code: &str) {
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with(&format!("HTTP/1.1 {status} ")) && a.contains(code)),
        "expected {status} {code}, got {answer:?}"
    );
}

async fn healthz_from(source: &str, base: &str) -> Result<u16, String> {
    let started = Instant::now();
    let r = http_from(source)
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("/healthz from {source}: {e}"))?;
    println!(
        "/healthz from {source}: {} in {:?}",
        r.status(),
        started.elapsed()
    );
    Ok(r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_from_one_address_leave_the_listener_to_everyone_else() {
    const PER_ADDRESS: usize = 32;
    let server = TestServer::start_with(|c| {
        c.http_limits.max_connections = 2 * PER_ADDRESS;
        c.http_limits.max_connections_per_address = PER_ADDRESS;
    })
    .await;
    let base = server.http.clone();
    let admin = server.admin_credentials().secret;

    // One address opens its cap and 50 more slow bodies.
    let mut held = Vec::new();
    for _ in 0..PER_ADDRESS + 50 {
        held.push(
            slow_token_body("127.0.0.3", &base)
                .await
                .expect("connect (the kernel queues what is not accepted)"),
        );
    }
    // Those over the cap are answered 503 (or closed) at once, not left hanging.
    let mut refused = 0;
    for s in held.iter_mut().skip(PER_ADDRESS) {
        match answer_within(s, Duration::from_secs(5)).await {
            Some(a) if a.is_empty() || a.starts_with("HTTP/1.1 503") => refused += 1,
            other => panic!("a connection over the per-address cap got {other:?}"),
        }
    }
    assert_eq!(refused, 50);
    held.truncate(PER_ADDRESS);
    // Everyone else is served: health checks and logins.
    assert_eq!(healthz_from("127.0.0.2", &base).await, Ok(200));
    assert_eq!(
        post_token(&http_from("127.0.0.2"), &base, "admin", &admin).await,
        200
    );

    // A second address fills what is left of the node's cap: /healthz is still answered
    // (from connections kept in reserve), other requests are refused at once.
    for _ in 0..PER_ADDRESS {
        held.push(slow_token_body("127.0.0.4", &base).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(healthz_from("127.0.0.5", &base).await, Ok(200));
    let started = Instant::now();
    let st = post_token(&http_from("127.0.0.5"), &base, "admin", &admin).await;
    assert_eq!(st, 503, "refused while the node is at its cap");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Once the slow clients go, logins work again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = post_token(&http_from("127.0.0.5"), &base, "admin", &admin).await;
        if st == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {st} 10 s after the slow clients left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_oversized_token_bodies_are_cut_short() {
    let server = TestServer::start_with(|c| {
        c.http_limits.body_timeout_secs = 1;
    })
    .await;
    let base = server.http.clone();
    // A /token body declared far larger than any credentials is refused before a byte of
    // it is read.
    let mut s = connect_from("127.0.0.2", &base).await.expect("connect");
    s.write_all(
        b"POST /token HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1048576\r\n\r\n",
    )
    .await
    .expect("write");
    let answer = answer_within(&mut s, Duration::from_secs(5)).await;
    assert_answered(answer, 413, "body_too_large");
    // A body that does not arrive within body_timeout_secs is answered 408, long before
    // the request timeout (90 s).
    let mut s = slow_token_body("127.0.0.2", &base).await.expect("connect");
    let answer = answer_within(&mut s, Duration::from_secs(5)).await;
    assert_answered(answer, 408, "request_timeout");
    server.stop().await;
}

/// STOMP counts connections per source address too: past the cap a connection is told
/// `ERROR too_many_connections` at once (it used to wait for a place), while another
/// address still connects.
#[tokio::test]
async fn stomp_connections_are_capped_per_address() {
    let server = TestServer::start_with(|c| c.stomp.max_connections_per_address = 3).await;
    let secret = server.admin_credentials().secret;
    // Three idle connections from one address hold its places (no CONNECT sent).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            connect_from("127.0.0.1", &server.stomp)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (cmd, code) = stomp_connect("127.0.0.1", &server.stomp, "admin", &secret).await;
    assert_eq!(
        (cmd, code.as_deref()),
        (Command::Error, Some("too_many_connections"))
    );
    let (cmd, _) = stomp_connect("127.0.0.2", &server.stomp, "admin", &secret).await;
    assert_eq!(cmd, Command::Connected, "another address is not affected");
    // Places come back when connections close.
    held.clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cmd, _) = stomp_connect("127.0.0.1", &server.stomp, "admin", &secret).await;
    assert_eq!(cmd, Command::Connected);
    server.stop().await;
}

/// A WebSocket session keeps counting against its address's connections after the
/// upgrade (it used to leave the count, so one address could hold every session place
/// with unauthenticated sessions).
#[tokio::test]
async fn websocket_sessions_count_against_their_address() {
    let server = TestServer::start_with(|c| c.http_limits.max_connections_per_address = 3).await;
    let host = server.http.trim_start_matches("http://").to_owned();
    let url = format!("ws://{host}/ws");
    let upgrade = |source: &'static str| {
        let (host, url) = (host.clone(), url.clone());
        async move {
            let stream = connect_from(source, &host).await.ok()?;
            tokio_tungstenite::client_async(url, stream)
                .await
                .ok()
                .map(|(ws, _)| ws)
        }
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        // Unauthenticated: each waits for its authenticate call.
        held.push(upgrade("127.0.0.1").await.expect("a session"));
    }
    assert!(
        upgrade("127.0.0.1").await.is_none(),
        "a fourth session from the same address is refused"
    );
    assert!(
        upgrade("127.0.0.2").await.is_some(),
        "another address is not affected"
    );
    held.clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(upgrade("127.0.0.1").await.is_some(), "places come back");
    server.stop().await;
}
