//! A Trunkline message as an AMQP message: the body as the payload, the rest in properties
//! and `x-tl-*` headers, so that what a consumer reads back is what was published.
//!
//! | Trunkline | AMQP |
//! |---|---|
//! | body | payload |
//! | id | `message-id` property (decimal) |
//! | content type (`None`: JSON) | `content-type` property (`application/json` for JSON); one longer than 255 bytes in `x-tl-content-type` |
//! | topic | `x-tl-topic` header (the routing key is the queue's for point to point) |
//! | sender | `x-tl-sender` header (`user-id` is checked by RabbitMQ against the login) |
//! | accepted at (ms) | `x-tl-ts` header |
//! | ttl | `expiration` property (ms, decimal) and `x-tl-expires` (absolute ms) |
//! | publisher headers | `x-tl-headers`: an array of `[name, value]` arrays, in order |
//! | delivery count | `x-delivery-count` header (quorum queues) + 1 |

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use trunkline_store::StoredMessage;

const JSON: &str = "application/json";
const TOPIC: &str = "x-tl-topic";
const SENDER: &str = "x-tl-sender";
const TS: &str = "x-tl-ts";
const EXPIRES: &str = "x-tl-expires";
const HEADERS: &str = "x-tl-headers";
const DELIVERY_COUNT: &str = "x-delivery-count";
/// A content type too long for AMQP's property (255 bytes) travels in this header.
const LONG_CONTENT_TYPE: &str = "x-tl-content-type";
/// The longest short string AMQP carries (property values, routing keys).
const SHORT_MAX: usize = 255;

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The properties a message is published with (persistent).
pub fn properties(id: u64, m: &StoredMessage, ttl_ms: Option<u64>) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert(TOPIC.into(), long(&m.topic));
    h.insert(SENDER.into(), long(&m.sender));
    h.insert(TS.into(), AMQPValue::LongLongInt(m.timestamp_ms as i64));
    if let Some(at) = m.expires_at_ms {
        h.insert(EXPIRES.into(), AMQPValue::LongLongInt(at as i64));
    }
    if !m.headers.is_empty() {
        let mut pairs = FieldArray::default();
        for (k, v) in &m.headers {
            let mut pair = FieldArray::default();
            pair.push(long(k));
            pair.push(long(v));
            pairs.push(AMQPValue::FieldArray(pair));
        }
        h.insert(HEADERS.into(), AMQPValue::FieldArray(pairs));
    }
    let mut content_type = m.content_type.as_deref().unwrap_or(JSON);
    if content_type.len() > SHORT_MAX {
        h.insert(LONG_CONTENT_TYPE.into(), long(content_type));
        content_type = "application/octet-stream";
    }
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(id.to_string()))
        .with_content_type(ShortString::from(content_type))
        .with_headers(h);
    if let Some(ttl) = ttl_ms {
        p = p.with_expiration(ShortString::from(ttl.to_string()));
    }
    p
}

pub(crate) fn string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub(crate) fn int(v: &AMQPValue) -> Option<u64> {
    let n: i128 = match *v {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n.into(),
        AMQPValue::Timestamp(n) => n.into(),
        _ => return None,
    };
    u64::try_from(n).ok()
}

/// A message read back: its id, the message, and how many times it was delivered (this
/// time included). `routing_key` stands in for a topic the headers do not name.
pub fn read(
    props: &BasicProperties,
    payload: Vec<u8>,
    routing_key: &str,
) -> (u64, StoredMessage, u32) {
    let empty = FieldTable::default();
    let h = props.headers().as_ref().unwrap_or(&empty).inner();
    let get = |k: &str| h.get(k);
    let id = props
        .message_id()
        .as_ref()
        .and_then(|s| s.as_str().parse().ok())
        .unwrap_or(0);
    let content_type = match get(LONG_CONTENT_TYPE).and_then(string) {
        Some(long) => Some(long),
        None => props
            .content_type()
            .as_ref()
            .map(|s| s.as_str())
            .filter(|ct| *ct != JSON)
            .map(str::to_owned),
    };
    let headers = match get(HEADERS) {
        Some(AMQPValue::FieldArray(pairs)) => pairs
            .as_slice()
            .iter()
            .filter_map(|p| match p {
                AMQPValue::FieldArray(kv) => match kv.as_slice() {
                    [k, v] => Some((string(k)?, string(v)?)),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let m = StoredMessage {
        topic: get(TOPIC)
            .and_then(string)
            .unwrap_or_else(|| routing_key.to_owned()),
        body: payload.into(),
        sender: get(SENDER).and_then(string).unwrap_or_default(),
        timestamp_ms: get(TS).and_then(int).unwrap_or(0),
        expires_at_ms: get(EXPIRES).and_then(int),
        content_type,
        headers,
    };
    let returns = get(DELIVERY_COUNT).and_then(int).unwrap_or(0);
    let count = u32::try_from(returns.saturating_add(1)).unwrap_or(u32::MAX);
    (id, m, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_as_it_was_published() {
        let m = StoredMessage {
            topic: "fleet.7.status".into(),
            body: bytes::Bytes::from_static(b"{\"ok\":true}"),
            sender: "c1".into(),
            timestamp_ms: 1_700_000_000_123,
            expires_at_ms: Some(1_700_000_060_123),
            content_type: None,
            headers: vec![("type".into(), "A".into()), ("type".into(), "B".into())],
        };
        let p = properties(42, &m, Some(60_000));
        assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("60000"));
        let (id, back, count) = read(&p, m.body.to_vec(), "ignored");
        assert_eq!((id, count), (42, 1));
        assert_eq!(back, m);

        // A content type longer than AMQP's short strings goes in a header.
        let odd = StoredMessage {
            content_type: Some(format!("text/x-{}", "a".repeat(300))),
            ..m.clone()
        };
        let p = properties(43, &odd, None);
        assert_eq!(read(&p, odd.body.to_vec(), "ignored").1, odd);

        let text = StoredMessage {
            content_type: Some("text/plain".into()),
            headers: Vec::new(),
            expires_at_ms: None,
            ..m
        };
        let mut p = properties(7, &text, None);
        let mut h = p.headers().clone().unwrap_or_default();
        h.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(2));
        p = p.with_headers(h);
        let (_, back, count) = read(&p, text.body.to_vec(), "x");
        assert_eq!((back, count), (text, 3));
    }
}
