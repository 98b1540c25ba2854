//! Settlements sent together. A client acks its deliveries one by one (STOMP
//! `client-individual`, each WebSocket `ack`), and each `basic.ack` is a frame of its own
//! through the client library's I/O loop. Settlements wait in the leases
//! ([`crate::leases::Leases::due`]) for a moment instead, and go per channel: on a feed's
//! channel, the acks below every tag still leased or to be nacked as one `basic.ack`
//! with `multiple`; the others one by one. Nacks (a client giving back, a lease that
//! ended) are sent at once.
//!
//! An ack is not a promise to anyone (AMQP does not confirm it), so sending it a moment
//! later changes nothing a client sees; a node that dies in that moment has its
//! deliveries given back, as it would a moment earlier. A feed's channel is flushed
//! before it closes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::Notify;

use crate::leases::Op;
use crate::Amqp;

/// How long acks are gathered before they are sent.
const GATHER: Duration = Duration::from_millis(2);

/// Wakes the task that sends gathered acks.
#[derive(Default)]
pub(crate) struct Acks {
    wake: Arc<Notify>,
}

impl Acks {
    /// Settlements wait: send them soon.
    pub(crate) fn soon(&self) {
        self.wake.notify_one();
    }
}

impl Amqp {
    /// Sends the settlements waiting: of every channel, or of `only`.
    pub(crate) async fn flush_acks(&self, only: Option<u64>) {
        if !self.leases().has_waiting() {
            return;
        }
        let Ok(take) = self.channels().await else {
            return;
        };
        // Deliveries come out of the consuming channel (`basic.get`) to concurrent
        // receives, not in tag order: its acks go one by one.
        let due = self.leases().due(only, |c| c != take.2);
        for (no, ops) in due {
            let Some(ch) = self.channel_no(&take, no) else {
                continue;
            };
            for (tag, op) in ops {
                let r = match op {
                    Op::Ack { multiple } => ch.basic_ack(tag, BasicAckOptions { multiple }).await,
                    Op::Nack { requeue } => {
                        let opts = BasicNackOptions {
                            requeue,
                            multiple: false,
                        };
                        ch.basic_nack(tag, opts).await
                    }
                };
                if let Err(e) = r {
                    tracing::warn!(cause = %e, "settle: the channel's deliveries go back");
                    break;
                }
            }
        }
    }
}

/// Sends acks a moment after the first of a batch comes. Ends with the engine.
pub(crate) async fn acker(amqp: Weak<Amqp>) {
    let Some(wake) = amqp.upgrade().map(|a| a.acks.wake.clone()) else {
        return;
    };
    loop {
        // Looks now and then whether the engine is gone.
        if tokio::time::timeout(Duration::from_secs(1), wake.notified())
            .await
            .is_err()
        {
            if amqp.strong_count() == 0 {
                return;
            }
            continue;
        }
        tokio::time::sleep(GATHER).await;
        match amqp.upgrade() {
            Some(a) => a.flush_acks(None).await,
            None => return,
        }
    }
}
