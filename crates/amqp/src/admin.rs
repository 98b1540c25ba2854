//! A cluster's changes of clients, declared queues and twins: decided on this node
//! (the registry's `plan_` methods), mirrored into RabbitMQ's topology, then recorded in
//! the shared log ([`crate::RegistryLog`]), which every node applies.

use trunkline_broker::changes::Change;
use trunkline_broker::named::QueueRecord;
use trunkline_broker::twins::TwinRecord;
use trunkline_broker::{
    dead_letter_of, dead_name, inbox_name, BrokerError, ClientRecord, ClientUpdate, ClientView,
    NewClient, Principal, QueueSpec, QueueView,
};
use trunkline_envelope::TwinClaim;

use crate::topology::Exchange;
use crate::Cluster;

impl Cluster {
    async fn declare_inbox(&self, c: &ClientRecord) -> Result<(), BrokerError> {
        let limits = self.registry.resolve_limits(&c.inbox);
        self.amqp
            .declare_inbox(&c.client_id, &c.patterns, &limits)
            .await
    }

    /// Declares a declared queue and binds its bindings.
    async fn declare_named(&self, q: &QueueRecord) -> Result<(), BrokerError> {
        let limits = self.registry.resolve_limits(&q.limits);
        let dead = dead_letter_of(&q.name);
        self.amqp
            .declare_queue(&q.name, &limits, Some(&dead))
            .await?;
        self.amqp
            .bindings(&q.name, Exchange::Topic, &q.bindings, &[])
            .await
    }

    /// Deletes `queue` once nothing this node publishes can reach it: unbound from its
    /// `routes` first, then after every publish already started has its outcome.
    /// (RabbitMQ 3.10 closes the connection of a publish that reaches a quorum queue
    /// while it is deleted, `docs/scale-out.md`.)
    async fn retire(
        &self,
        queue: &str,
        routes: &[(Exchange, Vec<String>)],
    ) -> Result<(), BrokerError> {
        for (exchange, keys) in routes {
            self.amqp.bindings(queue, *exchange, &[], keys).await?;
        }
        self.amqp.published().await;
        self.amqp.delete_queue(queue).await
    }

    pub(crate) async fn create_client_now(
        &self,
        c: NewClient,
        now: u64,
    ) -> Result<(ClientView, String), BrokerError> {
        let _admin = self.admin.lock().await;
        let (client, secret) = self.registry.plan_create_client(c, now)?;
        // Its queues first: a node routes to them as soon as it reads the record.
        self.declare_inbox(&client).await?;
        let id = client.client_id.clone();
        if let Err(e) = self
            .log
            .record(Change::CreateClient {
                client: client.clone(),
            })
            .await
        {
            // Another node made a client of this id first: its inbox keeps only its
            // own bindings.
            if let Some(winner) = self.registry.get_client(&id) {
                let ours: Vec<String> = (client.patterns.iter())
                    .filter(|p| !winner.patterns.contains(p))
                    .cloned()
                    .collect();
                let _ = self
                    .amqp
                    .bindings(&inbox_name(&id), Exchange::Topic, &[], &ours)
                    .await;
            }
            return Err(e);
        }
        let view = self
            .registry
            .get_client(&id)
            .ok_or(BrokerError::UnknownClient(id))?;
        Ok((view, secret))
    }

    pub(crate) async fn update_client_now(
        &self,
        client_id: &str,
        u: ClientUpdate,
    ) -> Result<ClientView, BrokerError> {
        let _admin = self.admin.lock().await;
        let before = self
            .registry
            .get_client(client_id)
            .ok_or_else(|| BrokerError::UnknownClient(client_id.to_owned()))?;
        if u.inbox.as_ref().is_some_and(|l| *l != before.inbox) {
            return Err(BrokerError::InvalidArgument(
                "with a RabbitMQ broker, an inbox's limits are fixed when it is made (its queue's arguments)".into(),
            ));
        }
        let client = self.registry.plan_update_client(client_id, u)?;
        let (added, removed) = changed(&before.patterns, &client.patterns);
        // New routes before the record, old ones after: no message meant for the
        // inbox misses it while nodes learn of the change.
        let inbox = inbox_name(client_id);
        self.amqp
            .bindings(&inbox, Exchange::Topic, &added, &[])
            .await?;
        self.log.record(Change::UpdateClient { client }).await?;
        self.amqp
            .bindings(&inbox, Exchange::Topic, &[], &removed)
            .await?;
        self.registry
            .get_client(client_id)
            .ok_or_else(|| BrokerError::UnknownClient(client_id.to_owned()))
    }

    pub(crate) async fn rotate_secret_now(
        &self,
        client_id: &str,
    ) -> Result<(ClientView, String), BrokerError> {
        let _admin = self.admin.lock().await;
        let (client, secret) = self.registry.plan_rotate_secret(client_id)?;
        self.log.record(Change::UpdateClient { client }).await?;
        let view = self
            .registry
            .get_client(client_id)
            .ok_or_else(|| BrokerError::UnknownClient(client_id.to_owned()))?;
        Ok((view, secret))
    }

    pub(crate) async fn delete_client_now(&self, client_id: &str) -> Result<(), BrokerError> {
        let _admin = self.admin.lock().await;
        let patterns = self
            .registry
            .get_client(client_id)
            .map(|c| c.patterns)
            .unwrap_or_default();
        self.log
            .record(Change::DeleteClient {
                client_id: client_id.to_owned(),
            })
            .await?;
        let routes = [
            (Exchange::Topic, patterns),
            (Exchange::Notify, vec![String::new()]),
        ];
        self.retire(&inbox_name(client_id), &routes).await?;
        self.amqp.delete_queue(&dead_name(client_id)).await
    }

    pub(crate) async fn declare_queue_now(
        &self,
        name: &str,
        spec: QueueSpec,
        now: u64,
    ) -> Result<(QueueView, bool), BrokerError> {
        let _admin = self.admin.lock().await;
        let before = self.registry.get_queue(name);
        if let Some(b) = &before {
            if b.limits != spec.limits {
                return Err(BrokerError::InvalidArgument(
                    "with a RabbitMQ broker, a queue's limits are fixed when it is made (its arguments)".into(),
                ));
            }
        }
        let queue = self.registry.plan_declare_queue(name, spec, now)?;
        let (_, gone) = changed(
            &before.map(|b| b.bindings).unwrap_or_default(),
            &queue.bindings,
        );
        self.declare_named(&queue).await?;
        let made = match self.log.record(Change::PutQueue { queue }).await {
            Ok(made) => made,
            Err(e) => {
                // Declared for nothing, unless another node declared it meanwhile.
                if !self.registry.has_queue(name) {
                    let _ = self.amqp.delete_queue(name).await;
                    let _ = self.amqp.delete_queue(&dead_letter_of(name)).await;
                }
                return Err(e);
            }
        };
        self.amqp
            .bindings(name, Exchange::Topic, &[], &gone)
            .await?;
        let view = self
            .registry
            .get_queue(name)
            .ok_or_else(|| BrokerError::UnknownQueue(name.to_owned()))?;
        Ok((view, made))
    }

    pub(crate) async fn delete_queue_now(&self, name: &str) -> Result<(), BrokerError> {
        let _admin = self.admin.lock().await;
        let bindings = self
            .registry
            .get_queue(name)
            .map(|q| q.bindings)
            .unwrap_or_default();
        self.log
            .record(Change::DeleteQueue {
                name: name.to_owned(),
            })
            .await?;
        self.retire(name, &[(Exchange::Topic, bindings)]).await?;
        self.amqp.delete_queue(&dead_letter_of(name)).await
    }

    pub(crate) async fn register_twin_now(
        &self,
        who: &Principal,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> Result<TwinRecord, BrokerError> {
        let _admin = self.admin.lock().await;
        let twin = self
            .registry
            .plan_register_twin(who, claim, signature, now)?;
        self.log
            .record(Change::PutTwin {
                twin: twin.clone(),
                new: true,
            })
            .await?;
        Ok(twin)
    }

    pub(crate) async fn update_twin_now(
        &self,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> Result<TwinRecord, BrokerError> {
        let _admin = self.admin.lock().await;
        let twin = self.registry.plan_update_twin(claim, signature, now)?;
        self.log
            .record(Change::PutTwin {
                twin: twin.clone(),
                new: false,
            })
            .await?;
        Ok(twin)
    }
}

/// What `after` has that `before` has not, and what `before` has that `after` has not.
fn changed(before: &[String], after: &[String]) -> (Vec<String>, Vec<String>) {
    let only = |a: &[String], b: &[String]| a.iter().filter(|p| !b.contains(p)).cloned().collect();
    (only(after, before), only(before, after))
}
