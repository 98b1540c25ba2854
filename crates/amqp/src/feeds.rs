//! Feeds: a queue's deliveries pushed to this node by a `basic.consume` consumer with a
//! prefetch window, instead of taken one `basic.get` at a time. On a quorum queue every
//! get is a consensus command of its own; a consumer's deliveries are not
//! (`docs/scale-out.md`, "Numbers").
//!
//! A feed serves the receives that wait with no deadline (a STOMP or WebSocket
//! subscription, a federation link, the relay) of one reader of one queue. It is made on
//! the first such receive, with that receive's window as its prefetch, on a channel of its
//! own: its deliveries are leased and settled by receipt on that channel
//! ([`crate::leases`]), and ending it is closing that channel, never `basic.cancel`
//! (RabbitMQ 3.10.8 crashes a channel whose quorum queue delivers to a consumer just
//! cancelled, and closes the whole connection with it, returning every lease of the
//! node). A feed ends once its reader stopped, or no receive used it for [`IDLE`], and
//! none of its deliveries is leased any more: closing the channel gives back what it was
//! pushed and did not hand out (RabbitMQ counts that as a return, once per window). A
//! channel RabbitMQ closed (the connection went, the queue was deleted) ends its feed at
//! once; its leases went back with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::mpsc;
use trunkline_broker::{BrokerError, Delivery, ReceiveOptions};

use crate::leases::Op;
use crate::{message, Amqp};

/// A feed no receive used for this long ends (once none of its deliveries is leased).
pub(crate) const IDLE: Duration = Duration::from_secs(3);
/// Feeds a node keeps at most (each is a channel; RabbitMQ allows 2047 per connection):
/// past this, receives take by `basic.get`.
const MAX_FEEDS: usize = 1024;

/// One reader's consumer of one queue.
pub(crate) struct Feed {
    queue: Arc<str>,
    /// Its channel's number in the leases.
    channel_no: u64,
    channel: Channel,
    rx: tokio::sync::Mutex<mpsc::Receiver<AmqpDelivery>>,
    /// Deliveries pushed and not yet handed out.
    buffered: Arc<AtomicUsize>,
    /// Once RabbitMQ ended it (its channel closed, or the consumer was cancelled).
    ended: Arc<AtomicBool>,
    /// Once its reader stopped.
    stopping: AtomicBool,
    last_used_ms: AtomicU64,
}

/// A feed's channel, its queue and what it holds unhanded, by the channel's number.
type FeedChannels = HashMap<u64, (Channel, Arc<str>, Arc<AtomicUsize>)>;

/// A node's feeds, by reader and queue.
#[derive(Default)]
pub(crate) struct Feeds {
    by_reader: tokio::sync::Mutex<HashMap<String, Arc<Feed>>>,
    /// Their channels by number, for settling (read without waiting for the map).
    channels: std::sync::Mutex<FeedChannels>,
    /// Whether a feed whose reader stopped waits for its last lease to be settled (so
    /// that a settle looks at the feeds only then).
    waiting_to_end: AtomicBool,
}

fn key(reader: &str, queue: &str) -> String {
    format!("{reader}\u{0}{queue}")
}

impl Feeds {
    fn channels(&self) -> std::sync::MutexGuard<'_, FeedChannels> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The channel of feed `no`, if it is open.
    pub(crate) fn channel(&self, no: u64) -> Option<Channel> {
        self.channels().get(&no).map(|(c, _, _)| c.clone())
    }

    /// Whether a stopped reader's feed waits for its leases to be settled.
    pub(crate) fn waiting_to_end(&self) -> bool {
        self.waiting_to_end.load(Ordering::Relaxed)
    }

    /// Deliveries of `queue` pushed to feeds and not handed out yet.
    pub(crate) fn buffered_of(&self, queue: &str) -> usize {
        self.channels()
            .values()
            .filter(|(_, q, _)| &**q == queue)
            .map(|(_, _, n)| n.load(Ordering::Relaxed))
            .sum()
    }
}

impl Amqp {
    /// Takes up to `opts.max` messages of `queue` for `reader` from its feed (made if there
    /// is none), waiting at most `wait` (or until `stop`) for the first. Leased or acked as
    /// [`Amqp::receive`]'s, once `may_read` (asked when they are in hand) says so;
    /// otherwise they go back and none is returned. `None` when the node has no room
    /// for another feed: take by [`Amqp::receive`] then.
    #[allow(clippy::too_many_arguments)]
    pub async fn receive_fed(
        &self,
        reader: &str,
        queue: &str,
        opts: ReceiveOptions,
        now_ms: u64,
        wait: Duration,
        stop: &tokio_util::sync::CancellationToken,
        may_read: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Option<Vec<Delivery>>, BrokerError> {
        let prefetch = u16::try_from(opts.max.clamp(1, 10_000)).unwrap_or(1);
        let Some(feed) = self.feed(reader, queue, prefetch, now_ms).await? else {
            return Ok(None);
        };
        feed.last_used_ms.store(now_ms, Ordering::Relaxed);
        feed.stopping.store(false, Ordering::Relaxed);
        let mut rx = feed.rx.lock().await;
        let first = tokio::select! {
            d = tokio::time::timeout(wait, rx.recv()) => d.ok().flatten(),
            () = stop.cancelled() => None,
        };
        let Some(first) = first else {
            return Ok(Some(Vec::new()));
        };
        let mut batch = vec![first];
        while batch.len() < opts.max {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        feed.buffered.fetch_sub(batch.len(), Ordering::Relaxed);
        // The batch is held (or settled) before the next one is taken, and so before any
        // later tag of this channel is handed out: the acks sent together as one
        // (`crate::acks`) never reach below a tag of it.
        let allowed = may_read();
        let got = {
            let mut got = Vec::with_capacity(batch.len());
            let mut leases = self.leases();
            for d in batch {
                let no = feed.channel_no;
                if !allowed {
                    leases.settle_later(no, d.delivery_tag, Op::Nack { requeue: true });
                    continue;
                }
                let (id, data, delivery_count) =
                    message::read(&d.properties, d.data, d.routing_key.as_str());
                let receipt = match opts.lease_ms {
                    Some(ms) => {
                        let until = now_ms.saturating_add(ms);
                        let held = leases.hold(no, d.delivery_tag, until, feed.queue.clone());
                        // None: the channel closed meanwhile, and the delivery went back.
                        let Some(receipt) = held else { continue };
                        Some(receipt)
                    }
                    None => {
                        leases.settle_later(no, d.delivery_tag, Op::Ack { multiple: false });
                        None
                    }
                };
                got.push(Delivery {
                    id,
                    data: Arc::new(data),
                    delivery_count,
                    receipt,
                });
            }
            got
        };
        drop(rx);
        if !allowed {
            self.flush_acks(Some(feed.channel_no)).await;
        } else if opts.lease_ms.is_none() {
            self.acks.soon();
        }
        Ok(Some(got))
    }

    /// The feed of `reader` on `queue`, made if there is none (or it ended); `None` when
    /// there is no room for another.
    async fn feed(
        &self,
        reader: &str,
        queue: &str,
        prefetch: u16,
        now_ms: u64,
    ) -> Result<Option<Arc<Feed>>, BrokerError> {
        let key = key(reader, queue);
        let mut feeds = self.feeds.by_reader.lock().await;
        if let Some(f) = feeds.get(&key) {
            if !f.ended.load(Ordering::Relaxed) && f.channel.status().connected() {
                return Ok(Some(f.clone()));
            }
        }
        if feeds.len() >= MAX_FEEDS {
            return Ok(None);
        }
        let channel = self.admin_channel().await?;
        let channel_no = self.leases().opened();
        let name = self.names().queue(queue);
        let tag = format!("feed.{}.{reader}.{queue}", self.origin());
        let started = start(&channel, &name, &tag, prefetch).await;
        let (consumer, buffered, ended) = match started {
            Ok(s) => s,
            Err(e) => {
                self.leases().closed(channel_no);
                let _ = channel.close(200, "no feed".into()).await;
                return Err(BrokerError::Unavailable(format!("RabbitMQ: consume: {e}")));
            }
        };
        let feed = Arc::new(Feed {
            queue: Arc::from(queue),
            channel_no,
            channel: channel.clone(),
            rx: tokio::sync::Mutex::new(consumer),
            buffered: buffered.clone(),
            ended,
            stopping: AtomicBool::new(false),
            last_used_ms: AtomicU64::new(now_ms),
        });
        self.feeds
            .channels()
            .insert(channel_no, (channel, feed.queue.clone(), buffered));
        if let Some(old) = feeds.insert(key, feed.clone()) {
            self.close_feed(&old).await;
        }
        Ok(Some(feed))
    }

    /// `reader` stopped reading `queue`: its feed ends once none of its deliveries is
    /// leased.
    pub async fn end_feed(&self, reader: &str, queue: &str) {
        let key = key(reader, queue);
        let done = {
            let mut feeds = self.feeds.by_reader.lock().await;
            let Some(f) = feeds.get(&key) else { return };
            f.stopping.store(true, Ordering::Relaxed);
            if self.leases().count_on(f.channel_no) > 0 {
                self.feeds.waiting_to_end.store(true, Ordering::Relaxed);
                return;
            }
            feeds.remove(&key)
        };
        if let Some(f) = done {
            self.close_feed(&f).await;
        }
    }

    /// Ends the feeds whose channel closed, and those stopped or idle with nothing leased.
    pub(crate) async fn tidy_feeds(&self, now_ms: u64) {
        let done: Vec<Arc<Feed>> = {
            let mut feeds = self.feeds.by_reader.lock().await;
            let leases = self.leases();
            let over = |f: &Feed| {
                if f.ended.load(Ordering::Relaxed) || !f.channel.status().connected() {
                    return true;
                }
                let idle = now_ms.saturating_sub(f.last_used_ms.load(Ordering::Relaxed))
                    > IDLE.as_millis() as u64;
                (idle || f.stopping.load(Ordering::Relaxed)) && leases.count_on(f.channel_no) == 0
            };
            let gone: Vec<String> = (feeds.iter())
                .filter(|(_, f)| over(f))
                .map(|(k, _)| k.clone())
                .collect();
            drop(leases);
            let done = gone.iter().filter_map(|k| feeds.remove(k)).collect();
            let waiting = feeds.values().any(|f| f.stopping.load(Ordering::Relaxed));
            self.feeds.waiting_to_end.store(waiting, Ordering::Relaxed);
            done
        };
        for f in done {
            self.close_feed(&f).await;
        }
    }

    /// Closes a feed's channel: what it was pushed and did not hand out goes back, and so
    /// does anything still leased on it.
    async fn close_feed(&self, f: &Feed) {
        self.flush_acks(Some(f.channel_no)).await;
        self.feeds.channels().remove(&f.channel_no);
        self.leases().closed(f.channel_no);
        if f.channel.status().connected() {
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                f.channel.close(200, "feed ends".into()),
            )
            .await;
        }
    }
}

/// Consumes `queue` (RabbitMQ's name) on `channel` with a window of `prefetch`: the
/// deliveries as they come, how many wait, and whether the consumer ended.
async fn start(
    channel: &Channel,
    queue: &str,
    tag: &str,
    prefetch: u16,
) -> lapin::Result<(
    mpsc::Receiver<AmqpDelivery>,
    Arc<AtomicUsize>,
    Arc<AtomicBool>,
)> {
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Room for the whole window: the consumer never waits on a slow reader.
    let (tx, rx) = mpsc::channel(usize::from(prefetch.max(1)));
    let ended = Arc::new(AtomicBool::new(false));
    let buffered = Arc::new(AtomicUsize::new(0));
    let (done, count) = (ended.clone(), buffered.clone());
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            count.fetch_add(1, Ordering::Relaxed);
            if tx.send(d).await.is_err() {
                break;
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    Ok((rx, buffered, ended))
}
