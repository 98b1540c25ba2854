//! The twin registry over HTTP: register with a client token and the twin's signature, read
//! without credentials, change with a newer claim signed by the key held.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use trunkline_envelope::{Identity, TwinClaim};
use trunkline_testkit::TestServer;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn body(id: u32, key: &Identity, signer: &Identity, relays: &[&str], ts: u64) -> Value {
    let claim = TwinClaim {
        id,
        key: key.public(),
        relays: relays.iter().map(|r| r.to_string()).collect(),
        timestamp: ts,
    };
    let sig = claim.sign(signer).expect("sign");
    json!({"key": key.public().to_text(), "relays": relays, "timestamp": ts,
        "signature": URL_SAFE_NO_PAD.encode(sig)})
}

async fn call(
    method: reqwest::Method,
    url: String,
    tok: Option<&str>,
    b: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method, url);
    if let Some(t) = tok {
        r = r.bearer_auth(t);
    }
    if let Some(b) = b {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request");
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn twins_register_read_and_change_over_http() {
    let server = TestServer::start().await;
    let tok = server.admin_token().await;
    let alice = Identity::from_seed(&[0x11; 32]);
    let base = server.http.clone();
    use reqwest::Method as M;
    let (s, v) = call(
        M::POST,
        format!("{base}/twins"),
        None,
        Some(body(0, &alice, &alice, &["relay.example"], now())),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("missing_credentials")),
        "{v}"
    );
    let (s, v) = call(
        M::POST,
        format!("{base}/twins"),
        Some(&tok),
        Some(body(0, &alice, &alice, &["relay.example"], now())),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_u64().expect("id");
    let (s, v) = call(M::GET, format!("{base}/twins/{id}"), None, None).await;
    assert_eq!(
        (s, v["key"].as_str()),
        (200, Some(alice.public().to_text().as_str())),
        "{v}"
    );
    let key = alice.public().to_text();
    let (s, v) = call(M::GET, format!("{base}/twins?key={key}"), None, None).await;
    assert_eq!((s, v["id"].as_u64()), (200, Some(id)), "{v}");
    // Signed by someone else: forbidden; the same key twice: a conflict; garbage: 400.
    let mallory = Identity::from_seed(&[0x66; 32]);
    let (s, v) = call(
        M::PUT,
        format!("{base}/twins/{id}"),
        None,
        Some(body(id as u32, &mallory, &mallory, &[], now())),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let (s, v) = call(
        M::POST,
        format!("{base}/twins"),
        Some(&tok),
        Some(body(0, &alice, &alice, &[], now())),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("twin_exists")),
        "{v}"
    );
    let (s, v) = call(
        M::POST,
        format!("{base}/twins"),
        Some(&tok),
        Some(json!({"key": "nope", "timestamp": 1, "signature": "x"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "not a key, so nothing verifies: {v}"
    );
    let (s, v) = call(
        M::POST,
        format!("{base}/twins"),
        Some(&tok),
        Some(json!({"key": alice.public().to_text(), "timestamp": "soon", "signature": "x"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{v}"
    );
    let (s, v) = call(M::GET, format!("{base}/twins/999"), None, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("unknown_twin")),
        "{v}"
    );
    // The twin moves relays with a newer claim it signs.
    let (s, v) = call(
        M::PUT,
        format!("{base}/twins/{id}"),
        None,
        Some(body(id as u32, &alice, &alice, &["r2.example"], now() + 1)),
    )
    .await;
    assert_eq!(
        (s, v["relays"].clone()),
        (200, json!(["r2.example"])),
        "{v}"
    );
    let (_, doc) = call(M::GET, format!("{base}/openapi.json"), None, None).await;
    assert!(doc["paths"].get("/twins").is_some() && doc["paths"].get("/twins/{id}").is_some());
    server.stop().await;
}
