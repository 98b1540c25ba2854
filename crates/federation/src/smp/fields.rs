//! The fields of each message type of the Swaptacular Messaging Protocol and their limits,
//! as a table: [`check_fields`] checks a message's JSON object against its type's row
//! (unknown fields are let through, as the protocol's own schemas drop them), then the
//! rules that tie fields together.

use serde_json::{Map, Value};

const MIN_I32: i64 = i32::MIN as i64;
const MAX_I32: i64 = i32::MAX as i64;
const CONFIG_DATA_MAX_BYTES: usize = 2000;
const COORDINATOR_TYPE_MAX_BYTES: usize = 30;
const ACCOUNT_ID_MAX_BYTES: usize = 100;
const TRANSFER_NOTE_MAX_BYTES: usize = 500;
const REJECTION_CODE_MAX_BYTES: usize = 30;
const STATUS_CODE_MAX_BYTES: usize = 30;
const IRI_MAX_LENGTH: usize = 200;
const CONTENT_TYPE_MAX_BYTES: usize = 100;

/// What a field must be.
#[derive(Clone, Copy)]
enum Kind {
    /// An integer in this range.
    Int(i64, i64),
    /// A number at least this (and at most that, if set).
    Float(f64, Option<f64>),
    /// A string of at most this many characters and (if set) bytes, ASCII only if set,
    /// matching `pattern` if set.
    Str {
        chars: usize,
        bytes: Option<usize>,
        ascii: bool,
        pattern: Option<fn(&str) -> bool>,
    },
    /// An ISO 8601 date and time.
    DateTime,
    /// An ISO 8601 date.
    Date,
}

use Kind::*;

const I64: Kind = Int(i64::MIN, i64::MAX);
const I32: Kind = Int(MIN_I32, MAX_I32);
const AMOUNT: Kind = Int(0, i64::MAX);

const fn text(chars: usize, ascii: bool) -> Kind {
    Str {
        chars,
        bytes: None,
        ascii,
        pattern: None,
    }
}

const CONFIG_DATA: Kind = Str {
    chars: CONFIG_DATA_MAX_BYTES,
    bytes: Some(CONFIG_DATA_MAX_BYTES),
    ascii: false,
    pattern: None,
};
const TRANSFER_NOTE: Kind = Str {
    chars: TRANSFER_NOTE_MAX_BYTES,
    bytes: Some(TRANSFER_NOTE_MAX_BYTES),
    ascii: false,
    pattern: None,
};
const TRANSFER_NOTE_FORMAT: Kind = Str {
    chars: 8,
    bytes: None,
    ascii: true,
    pattern: Some(|s| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    }),
};
const SHA256: Kind = Str {
    chars: 64,
    bytes: None,
    ascii: true,
    pattern: Some(|s| {
        s.is_empty()
            || (s.len() == 64
                && (s
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                    || s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))))
    }),
};
const COORDINATOR_TYPE: Kind = Str {
    chars: COORDINATOR_TYPE_MAX_BYTES,
    bytes: None,
    ascii: true,
    pattern: Some(|s| !s.is_empty()),
};
const RATE: Kind = Float(-100.0, Some(0.0));
const NOT_NEGATIVE: Kind = Float(0.0, None);

/// Every message's fields.
const COMMON: &[(&str, Kind)] = &[("debtor_id", I64), ("creditor_id", I64), ("ts", DateTime)];
/// Those of a message with a coordinator that has an id.
const COORDINATED: &[(&str, Kind)] = &[
    ("coordinator_type", COORDINATOR_TYPE),
    ("coordinator_id", I64),
    ("coordinator_request_id", I64),
];

const CONFIGURE_ACCOUNT: &[(&str, Kind)] = &[
    ("negligible_amount", NOT_NEGATIVE),
    ("config_data", CONFIG_DATA),
    ("config_flags", I32),
    ("seqnum", I32),
];
const REJECTED_CONFIG: &[(&str, Kind)] = &[
    ("config_ts", DateTime),
    ("config_seqnum", I32),
    ("config_flags", I32),
    ("config_data", CONFIG_DATA),
    ("negligible_amount", NOT_NEGATIVE),
    ("rejection_code", text(REJECTION_CODE_MAX_BYTES, true)),
];
const PREPARE_TRANSFER: &[(&str, Kind)] = &[
    ("min_locked_amount", AMOUNT),
    ("max_locked_amount", AMOUNT),
    ("recipient", text(ACCOUNT_ID_MAX_BYTES, true)),
    ("final_interest_rate_ts", DateTime),
    ("max_commit_delay", Int(0, MAX_I32)),
];
const FINALIZE_TRANSFER: &[(&str, Kind)] = &[
    ("transfer_id", I64),
    ("committed_amount", AMOUNT),
    ("transfer_note_format", TRANSFER_NOTE_FORMAT),
    ("transfer_note", TRANSFER_NOTE),
];
const REJECTED_TRANSFER: &[(&str, Kind)] = &[
    ("status_code", text(STATUS_CODE_MAX_BYTES, true)),
    ("total_locked_amount", AMOUNT),
];
const PREPARED_TRANSFER: &[(&str, Kind)] = &[
    ("transfer_id", I64),
    ("locked_amount", AMOUNT),
    ("recipient", text(ACCOUNT_ID_MAX_BYTES, true)),
    ("prepared_at", DateTime),
    ("demurrage_rate", RATE),
    ("deadline", DateTime),
    ("final_interest_rate_ts", DateTime),
];
const FINALIZED_TRANSFER: &[(&str, Kind)] = &[
    ("transfer_id", I64),
    ("committed_amount", AMOUNT),
    ("status_code", text(STATUS_CODE_MAX_BYTES, true)),
    ("total_locked_amount", AMOUNT),
    ("prepared_at", DateTime),
];
const ACCOUNT_UPDATE: &[(&str, Kind)] = &[
    ("creation_date", Date),
    ("last_change_ts", DateTime),
    ("last_change_seqnum", I32),
    ("principal", I64),
    ("interest", Float(f64::NEG_INFINITY, None)),
    ("interest_rate", Float(-100.0, None)),
    ("last_interest_rate_change_ts", DateTime),
    ("last_config_ts", DateTime),
    ("last_config_seqnum", I32),
    ("negligible_amount", NOT_NEGATIVE),
    ("config_flags", I32),
    ("config_data", CONFIG_DATA),
    ("account_id", text(ACCOUNT_ID_MAX_BYTES, true)),
    ("debtor_info_iri", text(IRI_MAX_LENGTH, false)),
    (
        "debtor_info_content_type",
        text(CONTENT_TYPE_MAX_BYTES, true),
    ),
    ("debtor_info_sha256", SHA256),
    ("last_transfer_number", AMOUNT),
    ("last_transfer_committed_at", DateTime),
    ("demurrage_rate", RATE),
    ("commit_period", Int(0, MAX_I32)),
    (
        "transfer_note_max_bytes",
        Int(0, TRANSFER_NOTE_MAX_BYTES as i64),
    ),
    ("ttl", Int(0, MAX_I32)),
];
const ACCOUNT_TRANSFER: &[(&str, Kind)] = &[
    ("coordinator_type", COORDINATOR_TYPE),
    ("transfer_note_format", TRANSFER_NOTE_FORMAT),
    ("transfer_note", TRANSFER_NOTE),
    ("creation_date", Date),
    ("transfer_number", Int(1, i64::MAX)),
    ("sender", text(ACCOUNT_ID_MAX_BYTES, true)),
    ("recipient", text(ACCOUNT_ID_MAX_BYTES, true)),
    ("acquired_amount", I64),
    ("committed_at", DateTime),
    ("principal", I64),
    ("previous_transfer_number", AMOUNT),
];
const ACCOUNT_PURGE: &[(&str, Kind)] = &[("creation_date", Date)];

/// Each type's own fields (besides [`COMMON`], and [`COORDINATED`] where `true`).
fn own_fields(message_type: &str) -> Option<(bool, &'static [(&'static str, Kind)])> {
    Some(match message_type {
        "ConfigureAccount" => (false, CONFIGURE_ACCOUNT),
        "RejectedConfig" => (false, REJECTED_CONFIG),
        "PrepareTransfer" => (true, PREPARE_TRANSFER),
        "FinalizeTransfer" => (true, FINALIZE_TRANSFER),
        "RejectedTransfer" => (true, REJECTED_TRANSFER),
        "PreparedTransfer" => (true, PREPARED_TRANSFER),
        "FinalizedTransfer" => (true, FINALIZED_TRANSFER),
        "AccountUpdate" => (false, ACCOUNT_UPDATE),
        "AccountTransfer" => (false, ACCOUNT_TRANSFER),
        "AccountPurge" => (false, ACCOUNT_PURGE),
        _ => return None,
    })
}

/// Checks the fields of a message of type `message_type`; `Err` names the first field
/// that is missing or out of its limits, or the rule broken.
pub(crate) fn check_fields(message_type: &str, fields: &Map<String, Value>) -> Result<(), String> {
    let (coordinated, own) = own_fields(message_type).ok_or("unknown type")?;
    let extra: &[(&str, Kind)] = if coordinated { COORDINATED } else { &[] };
    for (name, kind) in COMMON.iter().chain(extra).chain(own) {
        let value = fields
            .get(*name)
            .ok_or_else(|| format!("{name} is missing"))?;
        if !fits(value, *kind) {
            return Err(format!("{name} is invalid"));
        }
    }
    let int = |name: &str| fields.get(name).and_then(Value::as_i64);
    let string = |name: &str| fields.get(name).and_then(Value::as_str);
    let rule = match message_type {
        "PrepareTransfer" if int("min_locked_amount") > int("max_locked_amount") => {
            "max_locked_amount must be at least min_locked_amount"
        }
        "RejectedTransfer" if string("status_code") == Some("OK") => "status_code cannot be OK",
        "FinalizedTransfer"
            if string("status_code") != Some("OK") && int("committed_amount") != Some(0) =>
        {
            "committed_amount must be 0 unless status_code is OK"
        }
        "AccountTransfer" if int("acquired_amount") == Some(0) => "acquired_amount cannot be 0",
        "AccountTransfer" if int("previous_transfer_number") >= int("transfer_number") => {
            "transfer_number must be past previous_transfer_number"
        }
        _ => return Ok(()),
    };
    Err(rule.into())
}

fn fits(value: &Value, kind: Kind) -> bool {
    match kind {
        Int(min, max) => value.as_i64().is_some_and(|n| (min..=max).contains(&n)),
        Float(min, max) => value
            .as_f64()
            .is_some_and(|x| x >= min && max.is_none_or(|max| x <= max)),
        Str {
            chars,
            bytes,
            ascii,
            pattern,
        } => value.as_str().is_some_and(|s| {
            s.chars().count() <= chars
                && bytes.is_none_or(|b| s.len() <= b)
                && (!ascii || s.is_ascii())
                && pattern.is_none_or(|p| p(s))
        }),
        DateTime => value.as_str().and_then(parse_datetime).is_some(),
        Date => value.as_str().and_then(parse_date).is_some(),
    }
}

/// Days since 1970-01-01 of a calendar date, if it is one.
fn days(year: i64, month: i64, day: i64) -> Option<i64> {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=9999).contains(&year) || !(1..=12).contains(&month) {
        return None;
    }
    if !(1..=month_days[(month - 1) as usize]).contains(&day) {
        return None;
    }
    // Days from civil (proleptic Gregorian), counted from March so that leap days fall last.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Digits `1..=max` long at the start of `s`: their value and what follows.
fn digits(s: &str, min: usize, max: usize) -> Option<(i64, &str)> {
    let n = s.bytes().take(max).take_while(u8::is_ascii_digit).count();
    if n < min {
        return None;
    }
    Some((s[..n].parse().ok()?, &s[n..]))
}

/// An ISO 8601 date, `YYYY-M-D` (one or two digits for month and day): days since 1970.
pub(crate) fn parse_date(s: &str) -> Option<i64> {
    let (year, rest) = digits(s, 4, 4)?;
    let (month, rest) = digits(rest.strip_prefix('-')?, 1, 2)?;
    let (day, rest) = digits(rest.strip_prefix('-')?, 1, 2)?;
    rest.is_empty().then_some(())?;
    days(year, month, day)
}

/// An ISO 8601 date and time as the protocol's schemas read it: `YYYY-MM-DD`, `T` or a
/// space, `HH:MM`, optional `:SS` and fraction (up to 12 digits, microseconds kept), and an
/// optional `Z` or `±HH[:MM]`: milliseconds since 1970 (UTC), and whether it had an offset.
pub(crate) fn parse_datetime(s: &str) -> Option<(i64, bool)> {
    let (year, rest) = digits(s, 4, 4)?;
    let (month, rest) = digits(rest.strip_prefix('-')?, 1, 2)?;
    let (day, rest) = digits(rest.strip_prefix('-')?, 1, 2)?;
    let rest = rest.strip_prefix(['T', ' '])?;
    let (hour, rest) = digits(rest, 1, 2)?;
    let (minute, mut rest) = digits(rest.strip_prefix(':')?, 1, 2)?;
    let (mut second, mut micros) = (0, 0);
    if let Some(r) = rest.strip_prefix(':') {
        let (sec, r) = digits(r, 1, 2)?;
        second = sec;
        rest = r;
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take(12).take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return None;
            }
            let kept = &r[..n.min(6)];
            micros = kept.parse::<i64>().ok()? * 10i64.pow(6 - kept.len() as u32);
            rest = &r[n..];
        }
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let (offset_minutes, zoned) = match rest {
        "" => (0, false),
        "Z" => (0, true),
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, r) = digits(&rest[1..], 2, 2)?;
            let r = r.strip_prefix(':').unwrap_or(r);
            let m = if r.is_empty() {
                0
            } else {
                digits(r, 2, 2).filter(|(_, t)| t.is_empty())?.0
            };
            if h > 23 || m > 59 {
                return None;
            }
            (sign * (h * 60 + m), true)
        }
    };
    let day_ms = days(year, month, day)? * 86_400_000;
    let ms = day_ms + ((hour * 60 + minute - offset_minutes) * 60 + second) * 1000 + micros / 1000;
    Some((ms, zoned))
}
