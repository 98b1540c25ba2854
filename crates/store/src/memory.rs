//! A store that keeps everything in memory and nothing across restarts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::{Op, QueueStore, RecordTable, Snapshot, StoreError, StoredEntry, StoredMessage};

#[derive(Default)]
struct State {
    messages: BTreeMap<u64, Arc<StoredMessage>>,
    entries: BTreeMap<(Arc<str>, u64), StoredEntry>,
    records: HashMap<RecordTable, BTreeMap<String, Vec<u8>>>,
}

/// A [`QueueStore`] in memory; its `commit` is atomic but of course not durable.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl QueueStore for MemoryStore {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| StoreError::Failed("memory store lock poisoned".into()))?;
        for op in ops {
            match op {
                Op::PutMessage { id, msg } => {
                    st.messages.insert(*id, msg.clone());
                }
                Op::DeleteMessage { id } => {
                    st.messages.remove(id);
                }
                Op::PutEntry { queue, seq, entry } => {
                    st.entries.insert((queue.clone(), *seq), *entry);
                }
                Op::DeleteEntry { queue, seq } => {
                    st.entries.remove(&(queue.clone(), *seq));
                }
                Op::PutRecord { table, key, value } => {
                    st.records
                        .entry(*table)
                        .or_default()
                        .insert(key.clone(), value.clone());
                }
                Op::DeleteRecord { table, key } => {
                    if let Some(t) = st.records.get_mut(table) {
                        t.remove(key);
                    }
                }
            }
        }
        Ok(())
    }

    fn read_message(&self, id: u64) -> Result<Option<Arc<StoredMessage>>, StoreError> {
        let st = self
            .state
            .lock()
            .map_err(|_| StoreError::Failed("memory store lock poisoned".into()))?;
        Ok(st.messages.get(&id).cloned())
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let st = self
            .state
            .lock()
            .map_err(|_| StoreError::Failed("memory store lock poisoned".into()))?;
        Ok(Snapshot {
            messages: st
                .messages
                .iter()
                .map(|(id, m)| (*id, (&**m).into()))
                .collect(),
            // Keeps nothing on disk only.
            on_disk: Vec::new(),
            entries: st
                .entries
                .iter()
                .map(|((q, s), e)| (q.clone(), *s, *e))
                .collect(),
            records: st
                .records
                .iter()
                .map(|(t, m)| (*t, m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
                .collect(),
            spilled: Vec::new(),
        })
    }
}
