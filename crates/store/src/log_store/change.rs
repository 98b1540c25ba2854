//! What the log's index needs of an op: everything but a message's body, borrowed.
//!
//! Replay decodes each stored [`Op`] as an [`OpRef`], which borrows its strings and body
//! from the segment's bytes and allocates nothing for them, and keeps only its
//! [`Change`]: for a message, its id and expiry. The commit path makes the same
//! [`Change`] from the [`Op`] it writes. A segment's index file ([`super::index`]) is its
//! changes, so reopening reads those instead of the bodies.

use serde::{Deserialize, Serialize};

use crate::{MessageMeta, Op, RecordTable, StoredEntry};

/// One op as the index sees it: a message's metadata `M` (its [`MessageMeta`]), not its
/// body. With `M` = [`MessageRef`] it is the stored [`Op`] itself, borrowed ([`OpRef`]):
/// the same encoding, variant for variant and field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Change<'a, M = MessageMeta> {
    PutMessage {
        id: u64,
        msg: M,
    },
    DeleteMessage {
        id: u64,
    },
    PutEntry {
        queue: &'a str,
        seq: u64,
        entry: StoredEntry,
    },
    DeleteEntry {
        queue: &'a str,
        seq: u64,
    },
    PutRecord {
        table: RecordTable,
        key: &'a str,
        #[serde(with = "serde_bytes")]
        value: &'a [u8],
    },
    DeleteRecord {
        table: RecordTable,
        key: &'a str,
    },
}

/// A stored [`Op`], decoded without copying its strings and body.
pub(crate) type OpRef<'a> = Change<'a, MessageRef<'a>>;

impl<M> Change<'_, M> {
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Change::DeleteMessage { .. } | Change::DeleteEntry { .. } | Change::DeleteRecord { .. }
        )
    }
}

impl<'a> From<&'a Op> for Change<'a> {
    fn from(op: &'a Op) -> Self {
        match op {
            Op::PutMessage { id, msg } => Change::PutMessage {
                id: *id,
                msg: (&**msg).into(),
            },
            Op::DeleteMessage { id } => Change::DeleteMessage { id: *id },
            Op::PutEntry { queue, seq, entry } => Change::PutEntry {
                queue,
                seq: *seq,
                entry: *entry,
            },
            Op::DeleteEntry { queue, seq } => Change::DeleteEntry { queue, seq: *seq },
            Op::PutRecord { table, key, value } => Change::PutRecord {
                table: *table,
                key,
                value,
            },
            Op::DeleteRecord { table, key } => Change::DeleteRecord { table: *table, key },
        }
    }
}

/// A stored message's fields, borrowed (see [`crate::StoredMessage`]).
#[derive(Deserialize)]
#[allow(dead_code)] // Decoded to validate the encoding; only the expiry is kept.
pub(crate) struct MessageRef<'a> {
    topic: &'a str,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
    sender: &'a str,
    timestamp_ms: u64,
    expires_at_ms: Option<u64>,
    content_type: Option<&'a str>,
    #[serde(borrow)]
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> From<OpRef<'a>> for Change<'a> {
    fn from(op: OpRef<'a>) -> Self {
        match op {
            Change::PutMessage { id, msg } => Change::PutMessage {
                id,
                msg: MessageMeta {
                    expires_at_ms: msg.expires_at_ms,
                },
            },
            Change::DeleteMessage { id } => Change::DeleteMessage { id },
            Change::PutEntry { queue, seq, entry } => Change::PutEntry { queue, seq, entry },
            Change::DeleteEntry { queue, seq } => Change::DeleteEntry { queue, seq },
            Change::PutRecord { table, key, value } => Change::PutRecord { table, key, value },
            Change::DeleteRecord { table, key } => Change::DeleteRecord { table, key },
        }
    }
}

/// Decodes the [`Op`] at the start of `bytes` as a [`Change`]; returns it and the rest.
pub(crate) fn take_op(bytes: &[u8]) -> postcard::Result<(Change<'_>, &[u8])> {
    postcard::take_from_bytes::<OpRef<'_>>(bytes).map(|(op, rest)| (op.into(), rest))
}

/// Decodes the [`Change`] at the start of `bytes` (as an index stores it); returns it and
/// the rest.
pub(crate) fn take_change(bytes: &[u8]) -> postcard::Result<(Change<'_>, &[u8])> {
    postcard::take_from_bytes::<Change<'_>>(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Every op decodes through [`OpRef`] to the change the commit path makes of it.
    #[test]
    fn a_borrowed_decode_gives_the_change_of_the_op() {
        let msg = crate::engine_tests::sample_message();
        let ops = [
            Op::PutMessage {
                id: 1,
                msg: Arc::new(msg),
            },
            Op::DeleteMessage { id: 1 },
            Op::PutEntry {
                queue: Arc::from("q"),
                seq: 3,
                entry: StoredEntry {
                    msg_id: 1,
                    delivery_count: 2,
                },
            },
            Op::DeleteEntry {
                queue: Arc::from("q"),
                seq: 3,
            },
            Op::PutRecord {
                table: RecordTable::Dedup,
                key: "k".into(),
                value: vec![1, 2],
            },
            Op::DeleteRecord {
                table: RecordTable::Meta,
                key: "k".into(),
            },
        ];
        let mut bytes = Vec::new();
        for op in &ops {
            bytes = postcard::to_extend(op, bytes).expect("encode");
        }
        let mut rest = bytes.as_slice();
        for op in &ops {
            let (change, tail) = take_op(rest).expect("decode");
            assert_eq!(change, Change::from(op));
            rest = tail;
        }
        assert!(rest.is_empty());
    }
}
