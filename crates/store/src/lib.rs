//! Durable storage for Trunkline.
//!
//! Modules:
//! - [`record`]: what is stored: [`StoredMessage`], [`StoredEntry`], the [`Op`]s that
//!   change them, and the [`Snapshot`] a node recovers from.
//! - [`log_store`]: [`LogStore`], the default engine: an append-only log of commits in
//!   segment files, with the live state in memory.
//! - [`redb_store`]: [`RedbStore`], the first engine (one redb file), still selectable.
//! - [`commit`]: [`Committer`], group commit: one thread takes every batch of operations
//!   waiting, writes them in one durable transaction, and only then answers each caller.
//! - [`fs`]: the file operations the log makes ([`fs::Vfs`]), and durable `write_file` and
//!   `create_dir_all` over them.
//! - [`simfs`]: a file system in memory that loses unsynced changes at a simulated power
//!   loss, to test the log's promises.
//! - [`memory`]: [`MemoryStore`], a store that keeps nothing, for tests of the layers above.
//!
//! The API is synchronous; the only async piece is the answer channel of the committer
//! (a `tokio::sync::oneshot`, which needs no runtime). The store knows nothing of topics,
//! leases or clients beyond opaque records: that is the broker's business.
//!
//! ```
//! use std::sync::Arc;
//! use trunkline_store::{MemoryStore, Op, QueueStore, StoredEntry};
//! let store = MemoryStore::default();
//! store.commit(&[Op::PutEntry { queue: Arc::from("a-inbox"), seq: 1,
//!     entry: StoredEntry { msg_id: 7, delivery_count: 0 } }]).unwrap();
//! assert_eq!(store.load().unwrap().entries.len(), 1);
//! ```

pub mod commit;
pub mod fs;
pub mod log_store;
pub mod memory;
pub mod record;
pub mod redb_store;
pub mod simfs;

pub use commit::{CommitError, CommitStats, Committer};
pub use log_store::{LogOptions, LogStore, NodeSpill, Recover};
pub use memory::MemoryStore;
pub use record::{
    MessageMeta, Op, RecordTable, Snapshot, SpilledQueue, StoredEntry, StoredMessage,
};
pub use redb_store::RedbStore;

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("corrupt record in table {table}: {cause}")]
    Corrupt { table: &'static str, cause: String },
    #[error("the store failed earlier and accepts no more writes: {0}")]
    Failed(String),
}

/// A durable store of messages, queue entries and records.
///
/// `commit` must not return before every operation in it is durable (synced), and must
/// apply all or none of them.
pub trait QueueStore: Send + Sync + 'static {
    /// Applies `ops` atomically and durably.
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// Reads everything back, as after a restart, but the bodies.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Message `id` as stored (body and metadata), or `None` if there is none. A node keeps
    /// bodies in memory only while they are hot; the rest are read back with this.
    fn read_message(&self, id: u64) -> Result<Option<Arc<StoredMessage>>, StoreError>;
    /// Bytes the store takes on disk, kept current by the store and read without a lock
    /// (so that every publish can look); `None` if the engine does not keep count.
    fn disk_gauge(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicU64>> {
        None
    }
    /// From now on, keeps the entries newly put in `queue` with a sequence number of
    /// `from_seq` or more on disk only, and with them each message put in the same commit
    /// that no entry in memory refers to; [`QueueStore::page_in`] brings them back. Entries
    /// already in memory stay there, and so do rewrites of them. `false` if the engine
    /// keeps everything in memory (nothing changes then).
    fn spill(&self, _queue: &str, _from_seq: u64) -> bool {
        false
    }
    /// Brings entries of `queue` kept on disk only back into memory, oldest first: at least
    /// `want` if there are that many (more if they share what is read), none if there are
    /// none.
    fn page_in(&self, _queue: &str, _want: usize) -> Result<Vec<Paged>, StoreError> {
        Ok(Vec::new())
    }
    /// Stops spilling `queue` if none of its entries is left on disk only; whether it
    /// did (or was not spilling).
    fn unspill(&self, _queue: &str) -> bool {
        true
    }
}

/// An entry [`QueueStore::page_in`] brought back into memory, with what a node needs of
/// its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paged {
    pub seq: u64,
    pub entry: StoredEntry,
    pub meta: MessageMeta,
    /// Entries of the same message still on disk only (of other queues): they refer to it
    /// too.
    pub others: u32,
}

use std::sync::Arc;

/// Everything a store holds, bodies included, as ordered values that compare (for tests
/// and tools): messages by id, entries by queue and sequence number, records by table and
/// key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub messages: Vec<(u64, StoredMessage)>,
    pub entries: Vec<(Arc<str>, u64, StoredEntry)>,
    pub records: Vec<(RecordTable, String, Vec<u8>)>,
}

impl Contents {
    /// Reads `store` whole: its snapshot, and every body back from it.
    pub fn of(store: &dyn QueueStore) -> Result<Self, StoreError> {
        let snap = store.load()?;
        let mut messages = Vec::with_capacity(snap.messages.len());
        for (id, meta) in snap.messages {
            let msg = store.read_message(id)?.ok_or_else(|| StoreError::Corrupt {
                table: "messages",
                cause: format!("message {id} is listed but does not read back"),
            })?;
            if MessageMeta::from(&*msg) != meta {
                return Err(StoreError::Corrupt {
                    table: "messages",
                    cause: format!("message {id} reads back other than it is listed"),
                });
            }
            messages.push((id, (*msg).clone()));
        }
        let mut records: Vec<_> = snap
            .records
            .into_iter()
            .flat_map(|(t, rows)| rows.into_iter().map(move |(k, v)| (t, k, v)))
            .collect();
        records.sort();
        Ok(Contents {
            messages,
            entries: snap.entries,
            records,
        })
    }
}

#[cfg(test)]
mod engine_tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;

    /// A message with every field set.
    pub(crate) fn sample_message() -> StoredMessage {
        StoredMessage {
            topic: "a.b".into(),
            body: bytes::Bytes::from_static(b"{\"x\":1}"),
            sender: "s".into(),
            timestamp_ms: 5,
            expires_at_ms: Some(9),
            content_type: Some("text/plain".into()),
            headers: vec![("type".into(), "t".into())],
        }
    }

    /// What any engine must do: apply a commit's ops in order and give them back after
    /// a reopen.
    type Open = dyn Fn(&Path) -> Result<Box<dyn QueueStore>, StoreError>;

    fn survives_reopen(open: &Open) {
        let dir = tempfile::tempdir().expect("tempdir");
        let msg = sample_message();
        let entry = StoredEntry {
            msg_id: 1,
            delivery_count: 2,
        };
        {
            let s = open(dir.path()).expect("open");
            s.commit(&[
                Op::PutMessage {
                    id: 1,
                    msg: Arc::new(msg.clone()),
                },
                Op::PutEntry {
                    queue: Arc::from("q"),
                    seq: 3,
                    entry,
                },
                Op::PutRecord {
                    table: RecordTable::Clients,
                    key: "c".into(),
                    value: vec![9],
                },
                Op::PutRecord {
                    table: RecordTable::Meta,
                    key: "gone".into(),
                    value: vec![1],
                },
                Op::DeleteRecord {
                    table: RecordTable::Meta,
                    key: "gone".into(),
                },
            ])
            .expect("commit");
        }
        let store = open(dir.path()).expect("reopen");
        let snap = store.load().expect("load");
        assert_eq!(store.read_message(1).expect("read").as_deref(), Some(&msg));
        assert!(store.read_message(2).expect("read").is_none());
        assert_eq!(snap.messages, vec![(1, MessageMeta::from(&msg))]);
        assert_eq!(snap.entries, vec![(Arc::from("q"), 3, entry)]);
        assert_eq!(
            snap.records(RecordTable::Clients),
            &[("c".to_string(), vec![9])]
        );
        assert!(snap.records(RecordTable::Meta).is_empty());
    }

    #[test]
    fn the_log_survives_reopen() {
        survives_reopen(&|p| Ok(Box::new(LogStore::open(p)?)));
    }

    #[test]
    fn redb_survives_reopen() {
        survives_reopen(&|p| Ok(Box::new(RedbStore::open(&p.join("t.redb"))?)));
    }
}
