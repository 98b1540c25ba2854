//! Durable storage for Trunkline.
//!
//! Modules:
//! - [`record`]: what is stored: [`StoredMessage`], [`StoredEntry`], the [`Op`]s that
//!   change them, and the [`Snapshot`] a node recovers from.
//! - [`redb_store`]: [`RedbStore`], the embedded engine (one file in the data directory).
//! - [`commit`]: [`Committer`], group commit: one thread takes every batch of operations
//!   waiting, writes them in one durable transaction, and only then answers each caller.
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
pub mod memory;
pub mod record;
pub mod redb_store;

pub use commit::{CommitError, CommitStats, Committer};
pub use memory::MemoryStore;
pub use record::{Op, RecordTable, Snapshot, StoredEntry, StoredMessage};
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
    /// Reads everything back, as after a restart.
    fn load(&self) -> Result<Snapshot, StoreError>;
}
