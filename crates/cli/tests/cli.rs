//! The `trunkline` command line, run as a user runs it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use trunkline_testkit::TestServer;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trunkline"))
}

async fn run(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        bin()
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run trunkline")
    })
    .await
    .expect("join")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn config_default_and_show() {
    let o = run(&["config", "default"]).await;
    assert!(o.status.success());
    let defaults = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        defaults.contains("http = \"0.0.0.0:8087\"")
            && defaults.contains("backend = \"127.0.0.1:8088\"")
    );
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("t.toml");
    std::fs::write(
        &file,
        "http = \"127.0.0.1:9999\"\n[inbox]\nmax_length = 7\n",
    )
    .expect("write");
    let o = run(&[
        "config",
        "show",
        "--config",
        file.to_str().expect("path"),
        "--backend",
        "127.0.0.1:7777",
    ])
    .await;
    let shown = text(&o);
    assert!(o.status.success(), "{shown}");
    assert!(
        shown.contains("127.0.0.1:9999")
            && shown.contains("127.0.0.1:7777")
            && shown.contains("max_length = 7"),
        "{shown}"
    );
    std::fs::write(&file, "htp = 1\n").expect("write");
    let o = run(&["config", "show", "--config", file.to_str().expect("path")]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unknown field"), "{}", text(&o));
}

#[tokio::test]
async fn client_send_receive_round_trip() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let admin = server.data_dir().join("admin.json");
    let admin = admin.to_str().expect("path");
    let sensor = dir.path().join("sensor.json");
    let sensor = sensor.to_str().expect("path");

    let o = run(&[
        "client",
        "create",
        "sensor",
        "--sub",
        "fleet.#",
        "--sub",
        "alarm.*",
        "--save",
        sensor,
        "--credentials",
        admin,
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(sensor)
            .expect("saved")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let o = run(&["client", "list", "--credentials", admin]).await;
    assert!(text(&o).contains("\"sensor\""), "{}", text(&o));
    assert!(!text(&o).contains("secret"));

    let o = run(&[
        "send",
        "fleet.ah1.status",
        "{\"x\":1}",
        "--credentials",
        admin,
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["send", "alarm.fire", "plain text", "--credentials", admin]).await;
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["receive", "--credentials", sensor]).await;
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (lines[0]["topic"].as_str(), &lines[0]["body"]),
        (Some("fleet.ah1.status"), &serde_json::json!({"x": 1}))
    );
    assert_eq!(lines[1]["body"], "plain text");

    // Exit codes: 1 refused by the node, 2 bad local input, 3 node unreachable.
    let o = run(&["client", "list", "--credentials", sensor]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("forbidden"));
    let o = run(&["send", "a", "1", "--credentials", "/nonexistent/creds.json"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&[
        "send",
        "a",
        "1",
        "--credentials",
        admin,
        "--api",
        "http://127.0.0.1:1",
    ])
    .await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    let o = run(&["client", "rotate", "sensor", "--credentials", admin]).await;
    assert!(
        o.status.success() && text(&o).contains("secret"),
        "{}",
        text(&o)
    );
    let o = run(&["receive", "--credentials", sensor]).await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "the old secret is refused: {}",
        text(&o)
    );
    let o = run(&["client", "delete", "sensor", "--credentials", admin]).await;
    assert!(o.status.success(), "{}", text(&o));
    server.stop().await;
}

#[tokio::test]
async fn receive_follow_prints_messages_as_they_arrive() {
    let server = TestServer::start().await;
    let admin = server.data_dir().join("admin.json");
    let mut child = bin()
        .args([
            "receive",
            "--follow",
            "--manual-ack",
            "--credentials",
            admin.to_str().expect("path"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let reader = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        lines.next().and_then(|l| l.ok())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server
        .admin()
        .send("live.one", &serde_json::json!("hello"))
        .await
        .expect("send");
    let line = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("a line within 10 s")
        .expect("join");
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&line.expect("a line")).expect("json");
    assert_eq!(v["body"], "hello");
    server.stop().await;
}

fn wait_for(path: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn serve_reads_env_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let mut child = bin()
        .arg("serve")
        .env("TRUNKLINE_DATA_DIR", &data)
        .env("TRUNKLINE_HTTP", "127.0.0.1:0")
        .env("TRUNKLINE_BACKEND", "127.0.0.1:0")
        .env("TRUNKLINE_STOMP", "127.0.0.1:0")
        .env("TRUNKLINE_LOG_FORMAT", "json")
        .env(
            "TRUNKLINE_BACKEND_KEY",
            "a-backend-key-from-the-environment",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(
        wait_for(&data.join("listen.json"), Duration::from_secs(20)),
        "the node did not start"
    );
    assert!(
        !data.join("backend.key").exists(),
        "a key from the environment is not written to disk"
    );
    let admin = std::fs::read_to_string(data.join("admin.json")).expect("admin.json");
    let secret = serde_json::from_str::<serde_json::Value>(&admin).expect("json")["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "exit status {code}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut log)
        .expect("log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!lines.is_empty(), "JSON logs expected: {log}");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "trunkline listening"),
        "{log}"
    );
    assert!(
        !log.contains(&secret),
        "the admin secret must never be logged"
    );
}

#[tokio::test]
async fn stomp_send_and_subscribe() {
    let server = TestServer::start().await;
    let admin = server.data_dir().join("admin.json");
    let admin = admin.to_str().expect("path");
    let o = run(&[
        "stomp",
        "send",
        "--credentials",
        admin,
        "--stomp",
        &server.stomp,
        "/topic/cli.test",
        "{\"n\":1}",
        "--header",
        "type=Ping",
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("\"confirmed\": true"));
    let o = run(&[
        "stomp",
        "subscribe",
        "--credentials",
        admin,
        "--stomp",
        &server.stomp,
        "/queue/admin-inbox",
        "--count",
        "1",
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).expect("one JSON line");
    assert_eq!(
        (line["body"].as_str(), line["headers"]["type"].as_str()),
        (Some("{\"n\":1}"), Some("Ping"))
    );
    // Acked after printing: the inbox is empty now.
    let o = run(&["receive", "--credentials", admin]).await;
    assert!(
        String::from_utf8_lossy(&o.stdout).trim().is_empty(),
        "{}",
        text(&o)
    );
    let o = run(&[
        "stomp",
        "send",
        "--credentials",
        admin,
        "--stomp",
        &server.stomp,
        "/nowhere/x",
        "1",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("invalid_destination"));
    server.stop().await;
}
