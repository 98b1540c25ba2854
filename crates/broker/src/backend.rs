//! What the front-ends (HTTP, WebSocket, STOMP, federation, relay) ask of the durable
//! engine, as one trait: the embedded [`Broker`] is one implementation, a cluster engine
//! over RabbitMQ another (see `docs/scale-out.md`). A front-end holds an
//! `Arc<dyn Backend>` and does not know which it has.
//!
//! Every method means what the [`Broker`] method of the same name documents.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use trunkline_envelope::TwinClaim;

use crate::twins::TwinRecord;
use crate::{
    BatchTicket, Broker, BrokerConfig, BrokerError, ClientUpdate, ClientView, Counters, Delivery,
    LiveCounters, LiveSubscription, NewClient, Principal, Publish, Published, QueueDepth,
    QueueSpec, QueueView, ReceiveOptions, Sent, Settle, Settled, WaitHandle,
};

/// A future the trait's async methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a publish started with [`Backend::publish_then`] calls when it is durable.
pub type PublishDone = Box<dyn FnOnce(Result<Published, BrokerError>) + Send + 'static>;

/// A node's secrets: the token key, the channel-token key and the backend key, as
/// their text. The nodes of a cluster share them through the registry's log.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedKeys {
    pub token: String,
    pub channel: String,
    pub backend: String,
}

impl std::fmt::Debug for SharedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKeys { .. }")
    }
}

impl SharedKeys {
    /// A short fingerprint (not the keys), to tell sets apart in logs.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let text = format!("{}\n{}\n{}", self.token, self.channel, self.backend);
        let h = sha2::Sha256::digest(text);
        h.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// The durable engine as the front-ends see it.
pub trait Backend: Send + Sync + 'static {
    fn config(&self) -> &BrokerConfig;
    /// Whether the engine takes writes (false once a commit failed).
    fn healthy(&self) -> bool;

    // ----- messages ----------------------------------------------------------------------
    fn publish(&self, p: Publish, now: u64) -> BoxFuture<'_, Result<Published, BrokerError>>;
    fn publish_then(&self, p: Publish, now: u64, done: PublishDone) -> Result<Sent, BrokerError>;
    fn publish_batch_start(&self, ps: Vec<Publish>, now: u64) -> Result<BatchTicket, BrokerError>;
    fn receive<'a>(
        &'a self,
        who: &'a Principal,
        queue: &'a str,
        opts: ReceiveOptions,
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BrokerError>>;
    #[allow(clippy::too_many_arguments)]
    fn receive_wait<'a>(
        &'a self,
        who: &'a Principal,
        queue: &'a str,
        opts: ReceiveOptions,
        deadline: Option<tokio::time::Instant>,
        stop: &'a tokio_util::sync::CancellationToken,
        now: &'a (dyn Fn() -> u64 + Send + Sync),
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BrokerError>>;
    fn settle<'a>(
        &'a self,
        who: &'a Principal,
        receipts: &'a [String],
        how: Settle,
        now: u64,
    ) -> BoxFuture<'a, Result<Settled, BrokerError>>;
    fn waiter(&self, queue: &str) -> Option<Arc<dyn WaitHandle>>;
    fn subscribe_live(
        &self,
        reader: Option<&Principal>,
        pattern: &str,
        capacity: usize,
    ) -> Result<LiveSubscription, BrokerError>;
    fn sweep(&self, now: u64) -> BoxFuture<'_, Result<(), BrokerError>>;

    // ----- clients -----------------------------------------------------------------------
    fn create_client(
        &self,
        c: NewClient,
        now: u64,
    ) -> BoxFuture<'_, Result<(ClientView, String), BrokerError>>;
    fn update_client<'a>(
        &'a self,
        client_id: &'a str,
        u: ClientUpdate,
    ) -> BoxFuture<'a, Result<ClientView, BrokerError>>;
    fn rotate_secret<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(ClientView, String), BrokerError>>;
    fn delete_client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;
    fn get_client(&self, client_id: &str) -> Option<ClientView>;
    fn list_clients(&self) -> Vec<ClientView>;
    fn client_count(&self) -> usize;
    fn authenticate(&self, client_id: &str, secret: &str) -> Option<(Principal, String)>;

    /// The secrets every node of a cluster uses (the first node's, from the registry's
    /// log); `None` on one node.
    fn shared_keys(&self) -> Option<SharedKeys> {
        None
    }

    /// How many changes of a shared registry this node applied (0 with its own registry).
    fn registry_seen(&self) -> u64 {
        0
    }

    /// Waits (at most `within`) for a change of a shared registry after the first
    /// `seen`; whether one came. With its own registry, a node knows every change at
    /// once and never waits.
    fn registry_after(&self, _seen: u64, _within: std::time::Duration) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(false))
    }
    fn principal(&self, client_id: &str) -> Option<Principal>;
    fn check_credential(&self, client_id: &str, credential_id: &str) -> Option<Principal>;

    // ----- declared queues ---------------------------------------------------------------
    fn declare_queue<'a>(
        &'a self,
        name: &'a str,
        spec: QueueSpec,
        now: u64,
    ) -> BoxFuture<'a, Result<(QueueView, bool), BrokerError>>;
    fn delete_queue<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;
    /// A declared queue; its `depth` and `dead_depth` as [`Backend::depth`] tells them
    /// only with the embedded engine (another may not count them without asking).
    fn get_queue(&self, name: &str) -> Option<QueueView>;
    /// Messages in a queue now (ready and leased; 0 for no queue).
    fn depth<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<u64, BrokerError>>;
    /// Deliveries of queue `name` leased now by this node (and not settled).
    fn leased(&self, name: &str) -> u64;
    fn list_queues(&self) -> Vec<QueueView>;
    fn has_queue(&self, name: &str) -> bool;

    // ----- twins -------------------------------------------------------------------------
    fn register_twin<'a>(
        &'a self,
        who: &'a Principal,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> BoxFuture<'a, Result<TwinRecord, BrokerError>>;
    fn update_twin(
        &self,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> BoxFuture<'_, Result<TwinRecord, BrokerError>>;
    fn get_twin(&self, id: u32) -> Option<TwinRecord>;
    fn find_twin(&self, key: &str) -> Option<TwinRecord>;

    /// Whether this node holds the claim on `name` now (taking it if free): of the nodes
    /// sharing the engine, one at a time holds a name (one federation link per peer and
    /// queue for a whole cluster); a node that goes away lets its claims go. One node
    /// holds every claim.
    fn claim<'a>(&'a self, name: &'a str) -> BoxFuture<'a, bool> {
        let _ = name;
        Box::pin(std::future::ready(true))
    }

    /// How the live engine reaches the other nodes of a cluster (none on one node).
    fn bus(&self) -> Option<Arc<dyn trunkline_realtime::Bus>> {
        None
    }

    /// Closes connections the engine holds (before the node stops); leased deliveries
    /// go back at once.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    // ----- observing ---------------------------------------------------------------------
    fn counters(&self) -> &Counters;
    fn live_counters(&self) -> &LiveCounters;
    fn live_subscriptions(&self) -> usize;
    fn queue_depths(&self) -> Vec<QueueDepth>;
}

impl Backend for Broker {
    fn config(&self) -> &BrokerConfig {
        Broker::config(self)
    }
    fn healthy(&self) -> bool {
        !self.committer().has_failed()
    }
    fn publish(&self, p: Publish, now: u64) -> BoxFuture<'_, Result<Published, BrokerError>> {
        Box::pin(Broker::publish(self, p, now))
    }
    fn publish_then(&self, p: Publish, now: u64, done: PublishDone) -> Result<Sent, BrokerError> {
        Broker::publish_then(self, p, now, done)
    }
    fn publish_batch_start(&self, ps: Vec<Publish>, now: u64) -> Result<BatchTicket, BrokerError> {
        Broker::publish_batch_start(self, ps, now)
    }
    fn receive<'a>(
        &'a self,
        who: &'a Principal,
        queue: &'a str,
        opts: ReceiveOptions,
        now: u64,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BrokerError>> {
        Box::pin(Broker::receive(self, who, queue, opts, now))
    }
    fn receive_wait<'a>(
        &'a self,
        who: &'a Principal,
        queue: &'a str,
        opts: ReceiveOptions,
        deadline: Option<tokio::time::Instant>,
        stop: &'a tokio_util::sync::CancellationToken,
        now: &'a (dyn Fn() -> u64 + Send + Sync),
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BrokerError>> {
        Box::pin(Broker::receive_wait(
            self, who, queue, opts, deadline, stop, now,
        ))
    }
    fn settle<'a>(
        &'a self,
        who: &'a Principal,
        receipts: &'a [String],
        how: Settle,
        now: u64,
    ) -> BoxFuture<'a, Result<Settled, BrokerError>> {
        Box::pin(Broker::settle(self, who, receipts, how, now))
    }
    fn waiter(&self, queue: &str) -> Option<Arc<dyn WaitHandle>> {
        Broker::waiter(self, queue).map(|w| w as Arc<dyn WaitHandle>)
    }
    fn subscribe_live(
        &self,
        reader: Option<&Principal>,
        pattern: &str,
        capacity: usize,
    ) -> Result<LiveSubscription, BrokerError> {
        Broker::subscribe_live(self, reader, pattern, capacity)
    }
    fn sweep(&self, now: u64) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(Broker::sweep(self, now))
    }
    fn create_client(
        &self,
        c: NewClient,
        now: u64,
    ) -> BoxFuture<'_, Result<(ClientView, String), BrokerError>> {
        Box::pin(Broker::create_client(self, c, now))
    }
    fn update_client<'a>(
        &'a self,
        client_id: &'a str,
        u: ClientUpdate,
    ) -> BoxFuture<'a, Result<ClientView, BrokerError>> {
        Box::pin(Broker::update_client(self, client_id, u))
    }
    fn rotate_secret<'a>(
        &'a self,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(ClientView, String), BrokerError>> {
        Box::pin(Broker::rotate_secret(self, client_id))
    }
    fn delete_client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(Broker::delete_client(self, client_id))
    }
    fn get_client(&self, client_id: &str) -> Option<ClientView> {
        Broker::get_client(self, client_id)
    }
    fn list_clients(&self) -> Vec<ClientView> {
        Broker::list_clients(self)
    }
    fn client_count(&self) -> usize {
        Broker::client_count(self)
    }
    fn authenticate(&self, client_id: &str, secret: &str) -> Option<(Principal, String)> {
        Broker::authenticate(self, client_id, secret)
    }
    fn principal(&self, client_id: &str) -> Option<Principal> {
        Broker::principal(self, client_id)
    }
    fn check_credential(&self, client_id: &str, credential_id: &str) -> Option<Principal> {
        Broker::check_credential(self, client_id, credential_id)
    }
    fn declare_queue<'a>(
        &'a self,
        name: &'a str,
        spec: QueueSpec,
        now: u64,
    ) -> BoxFuture<'a, Result<(QueueView, bool), BrokerError>> {
        Box::pin(Broker::declare_queue(self, name, spec, now))
    }
    fn delete_queue<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(Broker::delete_queue(self, name))
    }
    fn get_queue(&self, name: &str) -> Option<QueueView> {
        Broker::get_queue(self, name)
    }
    fn depth<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<u64, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.depth_of(name))))
    }
    fn leased(&self, name: &str) -> u64 {
        self.leased_of(name)
    }
    fn list_queues(&self) -> Vec<QueueView> {
        Broker::list_queues(self)
    }
    fn has_queue(&self, name: &str) -> bool {
        Broker::has_queue(self, name)
    }
    fn register_twin<'a>(
        &'a self,
        who: &'a Principal,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> BoxFuture<'a, Result<TwinRecord, BrokerError>> {
        Box::pin(Broker::register_twin(self, who, claim, signature, now))
    }
    fn update_twin(
        &self,
        claim: TwinClaim,
        signature: [u8; 64],
        now: u64,
    ) -> BoxFuture<'_, Result<TwinRecord, BrokerError>> {
        Box::pin(Broker::update_twin(self, claim, signature, now))
    }
    fn get_twin(&self, id: u32) -> Option<TwinRecord> {
        Broker::get_twin(self, id)
    }
    fn find_twin(&self, key: &str) -> Option<TwinRecord> {
        Broker::find_twin(self, key)
    }
    fn counters(&self) -> &Counters {
        Broker::counters(self)
    }
    fn live_counters(&self) -> &LiveCounters {
        Broker::live_counters(self)
    }
    fn live_subscriptions(&self) -> usize {
        Broker::live_subscriptions(self)
    }
    fn queue_depths(&self) -> Vec<QueueDepth> {
        Broker::queue_depths(self)
    }
}
