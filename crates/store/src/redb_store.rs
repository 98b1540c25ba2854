//! The embedded engine: one redb file, `trunkline.redb`, in the data directory.
//!
//! Tables (see `docs/storage-format.md`):
//! - `messages`: `u64` message id → postcard [`StoredMessage`]
//! - `entries`: `(queue name, u64 seq)` → postcard [`StoredEntry`]
//! - `clients`, `queues`, `dedup`, `meta`: `&str` key → opaque bytes owned by the broker
//!
//! redb checksums its pages and commits with `Durability::Immediate`, so a commit that
//! returned is on disk and a torn one is rolled back when the file is opened again.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};

use crate::{Op, QueueStore, RecordTable, Snapshot, StoreError, StoredMessage};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");
const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
const DEDUP: TableDefinition<&str, &[u8]> = TableDefinition::new("dedup");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TWINS: TableDefinition<&str, &[u8]> = TableDefinition::new("twins");

fn record_def(table: RecordTable) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match table {
        RecordTable::Clients => CLIENTS,
        RecordTable::Queues => QUEUES,
        RecordTable::Dedup => DEDUP,
        RecordTable::Meta => META,
        RecordTable::Twins => TWINS,
    }
}

fn engine<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// A [`QueueStore`] on an embedded redb database.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`, recovering from an unclean stop.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(engine)?;
        // Create every table up front so that reads never meet a missing one.
        let txn = db.begin_write().map_err(engine)?;
        txn.open_table(MESSAGES).map_err(engine)?;
        txn.open_table(ENTRIES).map_err(engine)?;
        for t in RecordTable::ALL {
            txn.open_table(record_def(t)).map_err(engine)?;
        }
        txn.commit().map_err(engine)?;
        Ok(RedbStore { db })
    }
}

impl QueueStore for RedbStore {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut messages = txn.open_table(MESSAGES).map_err(engine)?;
            let mut entries = txn.open_table(ENTRIES).map_err(engine)?;
            let mut buf = Vec::with_capacity(256);
            for op in ops {
                match op {
                    Op::PutMessage { id, msg } => {
                        buf.clear();
                        let bytes = postcard::to_extend(msg.as_ref(), std::mem::take(&mut buf))
                            .map_err(engine)?;
                        messages.insert(*id, bytes.as_slice()).map_err(engine)?;
                        buf = bytes;
                    }
                    Op::DeleteMessage { id } => {
                        messages.remove(*id).map_err(engine)?;
                    }
                    Op::PutEntry { queue, seq, entry } => {
                        buf.clear();
                        let bytes =
                            postcard::to_extend(entry, std::mem::take(&mut buf)).map_err(engine)?;
                        entries
                            .insert((queue.as_ref(), *seq), bytes.as_slice())
                            .map_err(engine)?;
                        buf = bytes;
                    }
                    Op::DeleteEntry { queue, seq } => {
                        entries.remove((queue.as_ref(), *seq)).map_err(engine)?;
                    }
                    Op::PutRecord { table, key, value } => {
                        let mut t = txn.open_table(record_def(*table)).map_err(engine)?;
                        t.insert(key.as_str(), value.as_slice()).map_err(engine)?;
                    }
                    Op::DeleteRecord { table, key } => {
                        let mut t = txn.open_table(record_def(*table)).map_err(engine)?;
                        t.remove(key.as_str()).map_err(engine)?;
                    }
                }
            }
        }
        txn.commit().map_err(engine)
    }

    fn read_message(&self, id: u64) -> Result<Option<Arc<StoredMessage>>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let messages = txn.open_table(MESSAGES).map_err(engine)?;
        let Some(v) = messages.get(id).map_err(engine)? else {
            return Ok(None);
        };
        let msg = postcard::from_bytes(v.value()).map_err(|e| StoreError::Corrupt {
            table: "messages",
            cause: e.to_string(),
        })?;
        Ok(Some(Arc::new(msg)))
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let mut snap = Snapshot::default();
        let messages = txn.open_table(MESSAGES).map_err(engine)?;
        for row in messages.iter().map_err(engine)? {
            let (k, v) = row.map_err(engine)?;
            let msg: StoredMessage =
                postcard::from_bytes(v.value()).map_err(|e| StoreError::Corrupt {
                    table: "messages",
                    cause: e.to_string(),
                })?;
            snap.messages.push((k.value(), (&msg).into()));
        }
        let entries = txn.open_table(ENTRIES).map_err(engine)?;
        for row in entries.iter().map_err(engine)? {
            let (k, v) = row.map_err(engine)?;
            let (queue, seq) = k.value();
            let entry = postcard::from_bytes(v.value()).map_err(|e| StoreError::Corrupt {
                table: "entries",
                cause: e.to_string(),
            })?;
            snap.entries.push((Arc::from(queue), seq, entry));
        }
        for t in RecordTable::ALL {
            let table = txn.open_table(record_def(t)).map_err(engine)?;
            let mut rows = Vec::new();
            for row in table.iter().map_err(engine)? {
                let (k, v) = row.map_err(engine)?;
                rows.push((k.value().to_owned(), v.value().to_vec()));
            }
            snap.records.insert(t, rows);
        }
        Ok(snap)
    }
}
