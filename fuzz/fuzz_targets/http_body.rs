//! HTTP request bodies as the node reads them: `/send` and `/notify` (both body forms),
//! `POST /client`, `PATCH /client/{id}`, `/ack`, `/nack`, and any JSON object (`/backend`).
//!
//! Checks that no input panics; that every refusal carries a 4xx registry code and a
//! message; that `malformed_json` is said exactly when the bytes are not JSON text; and
//! that an accepted publish keeps the documented limits (its body is JSON, `message_id` 1
//! to 256 bytes, `ttl` more than 0 and at most a year).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use trunkline_api::{CreateClient, ErrorCode, UpdateClient};
use trunkline_server::http::error::ApiError;
use trunkline_server::http::extract::parse_json_object;
use trunkline_server::http::messages::{parse_publish, parse_settle};

const YEAR_MS: u64 = 365 * 86_400 * 1000;

fuzz_target!(|data: &[u8]| {
    // JSON text by a parser without a depth limit (serde's own errors call a document
    // nested deeper than 128 levels a syntax error).
    let is_json = serde_json::from_slice::<&RawValue>(data).is_ok();
    let refused = |what: &str, e: ApiError| {
        let status = e.code.status();
        assert!(
            (400..500).contains(&status) && !e.message.is_empty(),
            "{what}: {:?} {:?}",
            e.code,
            e.message
        );
        assert_eq!(
            e.code == ErrorCode::MalformedJson,
            !is_json,
            "{what}: {:?} {:?}",
            e.code,
            e.message
        );
    };
    for broadcast in [false, true] {
        match parse_publish(data, "fuzz", broadcast) {
            Ok(p) => {
                assert!(is_json);
                assert!(
                    serde_json::from_slice::<&RawValue>(&p.body).is_ok(),
                    "body not JSON"
                );
                assert_eq!((p.sender.as_str(), p.broadcast), ("fuzz", broadcast));
                if let Some(id) = &p.message_id {
                    assert!(
                        (1..=256).contains(&id.len()),
                        "message_id of {} bytes",
                        id.len()
                    );
                }
                if let Some(ttl) = p.ttl_ms {
                    assert!((1..=YEAR_MS).contains(&ttl), "ttl {ttl} ms");
                }
            }
            Err(e) => refused("publish", e),
        }
    }
    let object = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    match parse_json_object::<CreateClient>(data) {
        Ok(_) => assert!(object && is_json),
        Err(e) => refused("create client", e),
    }
    match parse_json_object::<UpdateClient>(data) {
        Ok(_) => assert!(object && is_json),
        Err(e) => refused("update client", e),
    }
    match parse_json_object::<serde_json::Value>(data) {
        Ok(v) => assert!(object && v.is_object()),
        Err(e) => refused("object", e),
    }
    for nack in [false, true] {
        match parse_settle(data, nack) {
            Ok((receipts, _)) => assert!(is_json && receipts.len() <= 10_000),
            Err(e) => refused("settle", e),
        }
    }
});
