//! What a drainer answers for a deactivated peer (swpt_stomp's `swpt-drainer`): messages
//! queued for the peer are dropped, and for some of them the drainer makes up the answer
//! the peer would have sent, so that what waits for it here is let go:
//!
//! - `AccountUpdate` (an authority to an agent): `ConfigureAccount` scheduling the account
//!   for deletion (`config_flags` 1, `negligible_amount` 1e30, `seqnum` 0);
//! - `PreparedTransfer`: `FinalizeTransfer` committing nothing (the transfer is dismissed);
//! - `ConfigureAccount` (an agent to an authority): `RejectedConfig` with
//!   `NO_CONNECTION_TO_DEBTOR`.
//!
//! [`drain_answer`] takes the message as the peer would have got it (after
//! [`super::check_outbound`]); its answer is then taken as from the peer
//! ([`super::check_inbound`]).

use serde_json::{json, Value};

/// The answer to `message_type` with `body` (JSON), made at `now_ms`: its type and body.
/// `None` for a message that needs none, or one that is not the JSON it should be.
pub fn drain_answer(message_type: &str, body: &[u8], now_ms: i64) -> Option<(String, Vec<u8>)> {
    let m: Value = serde_json::from_slice(body).ok()?;
    let ts = format_datetime(now_ms);
    let ids = |m: &Value| {
        Some((
            m.get("creditor_id")?.as_i64()?,
            m.get("debtor_id")?.as_i64()?,
        ))
    };
    let (creditor_id, debtor_id) = ids(&m)?;
    let (answer_type, answer) = match message_type {
        "AccountUpdate" => (
            "ConfigureAccount",
            json!({
                "type": "ConfigureAccount", "creditor_id": creditor_id, "debtor_id": debtor_id,
                "negligible_amount": 1e30, "config_data": "", "config_flags": 1,
                "seqnum": 0, "ts": ts,
            }),
        ),
        "PreparedTransfer" => (
            "FinalizeTransfer",
            json!({
                "type": "FinalizeTransfer", "creditor_id": creditor_id, "debtor_id": debtor_id,
                "transfer_id": m.get("transfer_id")?,
                "coordinator_type": m.get("coordinator_type")?,
                "coordinator_id": m.get("coordinator_id")?,
                "coordinator_request_id": m.get("coordinator_request_id")?,
                "committed_amount": 0, "transfer_note": "", "transfer_note_format": "",
                "ts": ts,
            }),
        ),
        "ConfigureAccount" => (
            "RejectedConfig",
            json!({
                "type": "RejectedConfig", "creditor_id": creditor_id, "debtor_id": debtor_id,
                "config_ts": m.get("ts")?, "config_seqnum": m.get("seqnum")?,
                "config_flags": m.get("config_flags")?,
                "negligible_amount": m.get("negligible_amount")?,
                "config_data": m.get("config_data")?,
                "rejection_code": "NO_CONNECTION_TO_DEBTOR", "ts": ts,
            }),
        ),
        _ => return None,
    };
    Some((answer_type.to_owned(), serde_json::to_vec(&answer).ok()?))
}

/// `ms` since 1970 as the protocol writes times: `YYYY-MM-DDTHH:MM:SS.mmm+00:00`.
pub fn format_datetime(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil from days (proleptic Gregorian), counted from March.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}+00:00")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smp::fields::parse_datetime;

    #[test]
    fn times_are_written_as_they_are_read() {
        for ms in [0, 951_782_400_123, 1_800_000_000_999, 4_102_444_799_000] {
            let s = format_datetime(ms);
            assert_eq!(parse_datetime(&s), Some((ms, true)), "{s}");
        }
        assert_eq!(
            format_datetime(951_782_400_123),
            "2000-02-29T00:00:00.123+00:00"
        );
    }

    #[test]
    fn each_answer_is_a_valid_message_of_its_type() {
        let now = 1_800_000_000_000;
        let ts = "2026-12-07T00:00:00+00:00";
        for (asked, body, answer) in [
            (
                "AccountUpdate",
                json!({"type": "AccountUpdate", "creditor_id": 7, "debtor_id": 9}),
                "ConfigureAccount",
            ),
            (
                "PreparedTransfer",
                json!({"type": "PreparedTransfer", "creditor_id": 7, "debtor_id": 9,
                    "transfer_id": 5, "coordinator_type": "direct", "coordinator_id": 7,
                    "coordinator_request_id": 3}),
                "FinalizeTransfer",
            ),
            (
                "ConfigureAccount",
                json!({"type": "ConfigureAccount", "creditor_id": 7, "debtor_id": 9, "ts": ts,
                    "seqnum": 4, "config_flags": 0, "negligible_amount": 2.5, "config_data": ""}),
                "RejectedConfig",
            ),
        ] {
            let (t, b) = drain_answer(asked, &serde_json::to_vec(&body).unwrap(), now)
                .unwrap_or_else(|| panic!("an answer to {asked}"));
            assert_eq!(t, answer);
            let fields: serde_json::Map<String, Value> = serde_json::from_slice(&b).unwrap();
            crate::smp::fields::check_fields(&t, &fields)
                .unwrap_or_else(|e| panic!("{t}: {e:?} in {fields:?}"));
            assert_eq!(
                (fields["creditor_id"].clone(), fields["debtor_id"].clone()),
                (json!(7), json!(9))
            );
        }
        assert_eq!(
            drain_answer("AccountPurge", b"{\"creditor_id\":1,\"debtor_id\":2}", now),
            None
        );
        assert_eq!(drain_answer("ConfigureAccount", b"nope", now), None);
    }
}
