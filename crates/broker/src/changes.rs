//! Changes to the registry (clients, declared queues, twins) as records.
//!
//! A change is *decided* by the node that takes the request: checked against the registry
//! as that node holds it, and made into a [`Change`] (the `plan_` methods of
//! [`Broker`]). It is then *applied* ([`Broker::apply`]). The embedded engine applies it
//! at once, under its admin lock. The nodes of a cluster first *record* it in a log they
//! share, and each applies every change in the log's order (`docs/scale-out.md`). So
//! [`Broker::apply`] checks again what another node's change may have made untrue in
//! between (the client exists, the queues it is granted exist, an admin is left), and
//! decides alike on every node: it looks at nothing but the registry.

use serde::{Deserialize, Serialize};
use trunkline_store::{Op, RecordTable};

use crate::named::{self, QueueRecord};
use crate::registry::ClientRecord;
use crate::twins::TwinRecord;
use crate::{
    client_put, client_queues, dead_letter_of, dead_name, inbox_name, lock, read, write, Broker,
    BrokerError,
};

/// One change of the registry, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A new client and its two queues; refused if the id is taken.
    CreateClient { client: ClientRecord },
    /// A client's new fields or new secret; refused if it is gone.
    UpdateClient { client: ClientRecord },
    /// A client, its queues and what they hold, and grants of them.
    DeleteClient { client_id: String },
    /// A declared queue, new or changed.
    PutQueue { queue: QueueRecord },
    /// A declared queue, its dead-letter queue, what they hold, and grants of them.
    DeleteQueue { name: String },
    /// A twin: `new` ones are refused if their id or key is taken, changes unless newer.
    PutTwin { twin: TwinRecord, new: bool },
}

impl Change {
    /// What it changes, for logs.
    pub fn subject(&self) -> String {
        match self {
            Change::CreateClient { client } | Change::UpdateClient { client } => {
                format!("client {}", client.client_id)
            }
            Change::DeleteClient { client_id } => format!("client {client_id}"),
            Change::PutQueue { queue } => format!("queue {}", queue.name),
            Change::DeleteQueue { name } => format!("queue {name}"),
            Change::PutTwin { twin, .. } => format!("twin {}", twin.id),
        }
    }
}

impl Broker {
    /// Applies a change (see the module's opening); `true` if it made something that was
    /// not there (a client, a queue, a twin).
    pub async fn apply(&self, change: &Change) -> Result<bool, BrokerError> {
        let _admin = self.inner.admin.lock().await;
        self.apply_locked(change).await
    }

    /// [`Broker::apply`], with the admin lock held by the caller.
    pub(crate) async fn apply_locked(&self, change: &Change) -> Result<bool, BrokerError> {
        match change {
            Change::CreateClient { client } => {
                if read(&self.inner.registry)
                    .clients
                    .contains_key(&client.client_id)
                {
                    return Err(BrokerError::ClientExists(client.client_id.clone()));
                }
                self.check_grants(client)?;
                self.commit_registry(vec![client_put(client)]).await?;
                self.add_queues(client_queues(client, &self.inner.config));
                write(&self.inner.registry).insert(client.clone());
                Ok(true)
            }
            Change::UpdateClient { client } => {
                self.record(&client.client_id)?;
                self.check_grants(client)?;
                if !client.is_admin() && self.is_last_admin(&client.client_id) {
                    return Err(BrokerError::LastAdmin(client.client_id.clone()));
                }
                self.commit_registry(vec![client_put(client)]).await?;
                // Both queues, as `client_queues` makes them at start.
                for q in client_queues(client, &self.inner.config) {
                    if let Some(cell) = self.queue(&q.name) {
                        lock(&cell.state).limits = q.limits;
                    }
                }
                write(&self.inner.registry).insert(client.clone());
                Ok(false)
            }
            Change::DeleteClient { client_id } => {
                self.record(client_id)?;
                if self.is_last_admin(client_id) {
                    return Err(BrokerError::LastAdmin(client_id.to_owned()));
                }
                // Stop routing to it first, so nothing new lands in queues being purged;
                // its principals are revoked with it, which ends its open sessions.
                let gone = [inbox_name(client_id), dead_name(client_id)];
                let mut ops = vec![Op::DeleteRecord {
                    table: RecordTable::Clients,
                    key: client_id.to_owned(),
                }];
                {
                    let mut reg = write(&self.inner.registry);
                    reg.remove(client_id);
                    // Grants of its queues go with them.
                    for rec in reg.drop_grants(&gone) {
                        ops.push(client_put(&rec));
                    }
                }
                self.remove_queues(&gone, ops).await?;
                Ok(false)
            }
            Change::PutQueue { queue } => {
                let existing = read(&self.inner.registry).queues.get(&queue.name).cloned();
                if existing.is_none() && self.queue(&queue.name).is_some() {
                    return Err(BrokerError::QueueNameTaken(format!(
                        "`{}` is taken by another queue",
                        queue.name
                    )));
                }
                let mut rec = queue.clone();
                if let Some(e) = &existing {
                    rec.created_ms = e.created_ms;
                }
                self.commit_registry(vec![named::queue_put(&rec)]).await?;
                let [q, dead] = named::queues_of(&rec, &self.inner.config);
                if existing.is_some() {
                    for q in [q, dead] {
                        if let Some(cell) = self.queue(&q.name) {
                            lock(&cell.state).limits = q.limits;
                        }
                    }
                } else {
                    self.add_queues([q, dead]);
                }
                write(&self.inner.registry).insert_queue(rec);
                Ok(existing.is_none())
            }
            Change::DeleteQueue { name } => {
                let gone = [name.to_owned(), dead_letter_of(name)];
                let mut ops = vec![Op::DeleteRecord {
                    table: RecordTable::Queues,
                    key: name.to_owned(),
                }];
                {
                    let mut reg = write(&self.inner.registry);
                    reg.remove_queue(name)
                        .ok_or_else(|| BrokerError::UnknownQueue(name.to_owned()))?;
                    for rec in reg.drop_grants(&gone) {
                        ops.push(client_put(&rec));
                    }
                }
                self.remove_queues(&gone, ops).await?;
                Ok(false)
            }
            Change::PutTwin { twin, new } => {
                {
                    let reg = read(&self.inner.registry);
                    if let Some(t) = reg
                        .twins
                        .values()
                        .find(|t| t.key == twin.key && t.id != twin.id)
                    {
                        return Err(BrokerError::TwinKeyTaken(t.id));
                    }
                    match (reg.twins.get(&twin.id), new) {
                        (Some(_), true) => {
                            return Err(BrokerError::Unavailable(format!(
                                "twin id {} was taken meanwhile; register again",
                                twin.id
                            )))
                        }
                        (None, false) => return Err(BrokerError::UnknownTwin(twin.id)),
                        (Some(held), false) if twin.updated <= held.updated => {
                            return Err(BrokerError::Forbidden(format!(
                                "twin {} holds a claim of {}; a change must be newer",
                                twin.id, held.updated
                            )))
                        }
                        _ => {}
                    }
                }
                self.commit_registry(vec![crate::twins::twin_put(twin)])
                    .await?;
                write(&self.inner.registry)
                    .twins
                    .insert(twin.id, twin.clone());
                Ok(*new)
            }
        }
    }

    /// Every queue a client is granted exists.
    fn check_grants(&self, client: &ClientRecord) -> Result<(), BrokerError> {
        let queues = read(&self.inner.queues);
        match (client.grants.iter())
            .chain(&client.write_grants)
            .find(|g| !queues.contains_key(g.as_str()))
        {
            Some(missing) => Err(BrokerError::GrantOfUnknownQueue(missing.clone())),
            None => Ok(()),
        }
    }

    /// Commits `ops`; with a shared registry, those of the registry's tables are left out
    /// (the shared log keeps them).
    pub(crate) async fn commit_registry(&self, mut ops: Vec<Op>) -> Result<(), BrokerError> {
        if self.inner.config.shared_registry {
            ops.retain(|op| !is_registry_op(op));
        }
        if !ops.is_empty() {
            self.inner.committer.commit(ops).await?;
        }
        Ok(())
    }
}

/// An op on a table of the registry (clients, declared queues, twins).
pub(crate) fn is_registry_op(op: &Op) -> bool {
    let table = match op {
        Op::PutRecord { table, .. } | Op::DeleteRecord { table, .. } => table,
        _ => return false,
    };
    matches!(
        table,
        RecordTable::Clients | RecordTable::Queues | RecordTable::Twins
    )
}
