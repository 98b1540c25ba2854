//! Live subscriptions: a non-durable stream of every message published to a matching
//! topic from now on, for whoever is connected (STOMP `/topic/…`), delivered by the live
//! engine's [`Topics`].
//!
//! Nothing is stored for them. Each subscription has a bounded channel; a subscriber that
//! falls behind by more than its capacity misses messages and is marked `lagged`, which the
//! session turns into its slow-consumer policy (typically: tell the client and close).
//!
//! A subscription made for a client gets only what the client may read *now*: the
//! messages its pattern matches and its subscription patterns allow (the intersection),
//! checked per message against the client's current rights, and nothing once the client
//! is deleted or its secret rotated.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use tokio::sync::mpsc;
use trunkline_realtime::{Event, Mailbox, Topics};
use trunkline_store::StoredMessage;

use crate::authz::Principal;

/// A message delivered live.
#[derive(Debug, Clone)]
pub struct LiveMessage {
    pub id: u64,
    pub data: Arc<StoredMessage>,
}

/// How the live engine reaches one subscription: its bounded channel, and whose rights
/// filter what it gets.
#[derive(Clone)]
pub(crate) struct LiveSender {
    tx: mpsc::Sender<LiveMessage>,
    lagged: Arc<AtomicBool>,
    /// `None` for the node's own subscribers.
    reader: Option<Principal>,
}

impl Mailbox for LiveSender {
    type Frame = LiveMessage;
    type Style = ();

    fn render((): (), event: &Event<'_>) -> Option<LiveMessage> {
        match *event {
            Event::Topic { id, message } => Some(LiveMessage {
                id,
                data: message.clone(),
            }),
            _ => None,
        }
    }

    fn push(&self, m: LiveMessage) -> bool {
        match self.tx.try_send(m) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Relaxed);
                false
            }
            // The subscriber is gone; its guard removes it.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn admits(&self, words: &[&str]) -> bool {
        self.reader
            .as_ref()
            .is_none_or(|r| r.with_access(|a| a.may_read_words(words)) == Some(true))
    }
}

/// Every live subscription of a node.
pub(crate) type Live = Topics<LiveSender>;

/// Subscribes to `pattern` (checked by the caller) with room for `capacity` messages.
pub(crate) fn subscribe(
    live: &Arc<RwLock<Live>>,
    pattern: String,
    capacity: usize,
    reader: Option<Principal>,
) -> LiveSubscription {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let lagged = Arc::new(AtomicBool::new(false));
    let sender = LiveSender {
        tx,
        lagged: lagged.clone(),
        reader,
    };
    let id = live
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .add(pattern, sender);
    LiveSubscription {
        id,
        rx,
        lagged,
        live: Arc::downgrade(live),
        on_drop: None,
    }
}

/// One live subscription. Dropping it unsubscribes.
pub struct LiveSubscription {
    id: u64,
    rx: mpsc::Receiver<LiveMessage>,
    lagged: Arc<AtomicBool>,
    live: Weak<RwLock<Live>>,
    /// Told when the subscription ends (a cluster unbinds the pattern it brought in).
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl LiveSubscription {
    /// The next message; `None` once the broker is gone.
    pub async fn recv(&mut self) -> Option<LiveMessage> {
        self.rx.recv().await
    }

    /// A message if one is waiting.
    pub fn try_recv(&mut self) -> Option<LiveMessage> {
        self.rx.try_recv().ok()
    }

    /// Calls `f` when this subscription ends.
    pub fn on_drop(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_drop = Some(Box::new(f));
        self
    }

    /// True once a message was missed because this subscriber was too slow.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
    }
}

impl Drop for LiveSubscription {
    fn drop(&mut self) {
        if let Some(live) = self.live.upgrade() {
            live.write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(self.id);
        }
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

/// Counters of live delivery.
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub delivered: AtomicU64,
    pub missed: AtomicU64,
}
