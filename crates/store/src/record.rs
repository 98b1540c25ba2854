//! What the store holds.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A message body and its metadata, stored once however many queues hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub topic: String,
    /// The body: JSON text unless `content_type` says otherwise. Encoded as one byte
    /// string (not a sequence of single bytes): the same bytes on disk, written at memcpy
    /// speed.
    #[serde(with = "body_bytes")]
    pub body: Bytes,
    pub sender: String,
    /// Milliseconds since the Unix epoch at which the node accepted it.
    pub timestamp_ms: u64,
    /// Milliseconds since the Unix epoch after which it is dropped undelivered.
    pub expires_at_ms: Option<u64>,
    /// Media type of the body; `None` means JSON text (what the HTTP API takes).
    pub content_type: Option<String>,
    /// Publisher headers carried to consumers (STOMP `SEND` headers such as `type`).
    pub headers: Vec<(String, String)>,
}

/// One message's place in one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    pub msg_id: u64,
    /// How many times it has been handed out under a lease.
    pub delivery_count: u32,
}

/// Tables of opaque records the broker keeps (clients, queue settings, dedup, counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RecordTable {
    Clients,
    Queues,
    Dedup,
    Meta,
    /// Twins of the relay's registry (added last: the log writes a table by its index).
    Twins,
}

impl RecordTable {
    pub const ALL: [RecordTable; 5] = [
        RecordTable::Clients,
        RecordTable::Queues,
        RecordTable::Dedup,
        RecordTable::Meta,
        RecordTable::Twins,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RecordTable::Clients => "clients",
            RecordTable::Queues => "queues",
            RecordTable::Dedup => "dedup",
            RecordTable::Meta => "meta",
            RecordTable::Twins => "twins",
        }
    }
}

/// One change; a commit applies a slice of them atomically, in order. The log engine
/// stores ops as they are (postcard): variants and fields are only ever appended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    PutMessage {
        id: u64,
        msg: Arc<StoredMessage>,
    },
    DeleteMessage {
        id: u64,
    },
    PutEntry {
        queue: Arc<str>,
        seq: u64,
        entry: StoredEntry,
    },
    DeleteEntry {
        queue: Arc<str>,
        seq: u64,
    },
    PutRecord {
        table: RecordTable,
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    DeleteRecord {
        table: RecordTable,
        key: String,
    },
}

/// What a node needs of a stored message at start: its body stays in the store, read
/// back with [`crate::QueueStore::read_message`] when it is delivered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub expires_at_ms: Option<u64>,
}

impl From<&StoredMessage> for MessageMeta {
    fn from(m: &StoredMessage) -> Self {
        MessageMeta {
            expires_at_ms: m.expires_at_ms,
        }
    }
}

/// Everything a store holds, as read back at start (bodies excepted).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Messages ordered by id.
    pub messages: Vec<(u64, MessageMeta)>,
    /// Of `messages`, those that entries on disk only (of `spilled` queues) refer to too,
    /// and how many such entries: a node counts them as references. Ordered by id.
    pub on_disk: Vec<(u64, u32)>,
    /// Entries ordered by queue name, then sequence number.
    pub entries: Vec<(Arc<str>, u64, StoredEntry)>,
    pub records: HashMap<RecordTable, Vec<(String, Vec<u8>)>>,
    /// Queues found longer than memory at start: their entries past `entries` stay on disk
    /// only ([`crate::QueueStore::page_in`] brings them back). Ordered by queue name.
    pub spilled: Vec<SpilledQueue>,
}

/// A queue whose newer entries a store kept on disk only when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpilledQueue {
    pub queue: Arc<str>,
    /// Entries put fresh from this sequence number on are on disk only.
    pub from: u64,
    /// How many are.
    pub count: u64,
    /// The greatest sequence number among them.
    pub last: u64,
}

impl Snapshot {
    /// The records of one table (empty if it has none).
    pub fn records(&self, table: RecordTable) -> &[(String, Vec<u8>)] {
        self.records.get(&table).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// A body as one byte string, the encoding `serde_bytes` gives a `Vec<u8>` (so the stored
/// format does not depend on the type that holds it in memory).
mod body_bytes {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(body: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(body)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let buf: serde_bytes::ByteBuf = serde::Deserialize::deserialize(d)?;
        Ok(Bytes::from(buf.into_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored form of a message does not change with the types that hold it in
    /// memory: logs written by earlier versions must still open.
    #[test]
    fn a_put_message_encodes_as_it_always_has() {
        let msg = StoredMessage {
            topic: "a.b".into(),
            body: Bytes::from_static(b"{}"),
            sender: "s".into(),
            timestamp_ms: 1,
            expires_at_ms: None,
            content_type: None,
            headers: vec![("k".into(), "v".into())],
        };
        let op = Op::PutMessage {
            id: 5,
            msg: Arc::new(msg.clone()),
        };
        // Variant 0, id 5, "a.b", body as one byte string of 2, "s", 1, None, None,
        // one header ("k", "v").
        let expected = b"\x00\x05\x03a.b\x02{}\x01s\x01\x00\x00\x01\x01k\x01v";
        let bytes = postcard::to_allocvec(&op).expect("encode");
        assert_eq!(bytes, expected);
        let back: Op = postcard::from_bytes(expected).expect("decode");
        let Op::PutMessage { id, msg: decoded } = back else {
            panic!("decoded another op: {back:?}");
        };
        assert_eq!((id, &*decoded), (5, &msg));
    }
}
