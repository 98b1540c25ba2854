//! The WebSocket envelope `{"service", "message": {"command", "params", "callId"}}` as a
//! session reads each text frame.
//!
//! Checks that no input panics; that an accepted envelope has exactly the service,
//! command, params and callId the JSON says; and that a refusal explains itself and
//! echoes the service and callId it could read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trunkline_server::ws::parse_envelope;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (the socket closes the session on anything else).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    match parse_envelope(text) {
        Ok(call) => {
            let v = parsed.expect("an accepted envelope is JSON");
            let m = &v["message"];
            assert_eq!(v["service"].as_str(), Some(call.service.as_str()));
            assert_eq!(m["command"].as_str(), Some(call.command.as_str()));
            assert_eq!(m.get("params").cloned().unwrap_or(Value::Null), call.params);
            assert_eq!(
                m.get("callId").cloned().unwrap_or(Value::Null),
                call.call_id
            );
        }
        Err((service, call_id, why)) => {
            assert!(!why.is_empty());
            let v = parsed.unwrap_or(Value::Null);
            assert_eq!(service.as_deref(), v.get("service").and_then(Value::as_str));
            let echoed = v
                .get("message")
                .and_then(|m| m.get("callId"))
                .cloned()
                .unwrap_or(Value::Null);
            assert_eq!(call_id, echoed);
            let ok_shape = v["service"].is_string()
                && v["message"].is_object()
                && v["message"]["command"].is_string();
            assert!(!ok_shape, "a well-formed envelope was refused: {why}");
        }
    }
});
