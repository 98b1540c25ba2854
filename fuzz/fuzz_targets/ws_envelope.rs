//! The WebSocket envelope `{"service", "message": {"command", "params", "callId"}}` as a
//! session reads each text frame.
//!
//! Checks that no input panics; that an accepted envelope has exactly the service,
//! command, params and callId the JSON says (the callId kept as the raw JSON it came as);
//! that a refusal explains itself and echoes a callId it could read as it was sent; and
//! that reading an envelope's call into a typed command never panics and explains a
//! refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trunkline_server::ws::command::{parse_envelope, Command};

fn value_of(raw: &Option<Box<serde_json::value::RawValue>>) -> Value {
    raw.as_ref()
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null)
}

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (the socket closes the session on anything else).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    match parse_envelope(text) {
        Ok(call) => {
            // serde skips fields the session does not read without decoding their
            // strings, so an envelope whose only flaw is a lone surrogate escape
            // (grammatical JSON per RFC 8259 §8.2) in such a field is accepted; nothing
            // of that field reaches the session. Everything it reads must match.
            let Some(v) = parsed else {
                return;
            };
            let m = &v["message"];
            assert_eq!(v["service"].as_str(), Some(call.service.as_str()));
            assert_eq!(m["command"].as_str(), Some(call.command.as_str()));
            assert_eq!(m.get("params").cloned().unwrap_or(Value::Null), call.params);
            assert_eq!(m.get("callId").cloned().unwrap_or(Value::Null), value_of(&call.call_id));
            if let Some(raw) = &call.call_id {
                assert!(text.contains(raw.get()), "the callId is the text that was sent");
            }
            if let Err((_, why)) = Command::parse(&call, 1000) {
                assert!(!why.is_empty());
            }
        }
        Err(u) => {
            assert!(!u.why.is_empty());
            if let Some(raw) = &u.call_id {
                assert!(text.contains(raw.get()), "an echoed callId is the text that was sent");
            }
        }
    }
});
