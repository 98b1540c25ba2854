//! What the durable scenarios share, whatever system they drive (`stomp-durable`,
//! `nats-durable`, `amqp-durable`): the shape of the load, the message body, the
//! publisher loop (window of unconfirmed messages, optional fixed rate), the server CPU
//! meter, and the report.
//!
//! Publisher `p` of `P` sends the messages `n = p, p + P, p + 2P, …` of the run, message
//! `n` to consumer `n % consumers`. Each message has a send time, carried in its body:
//! - closed loop (no `--rate`): the moment it is sent, once the window has room;
//! - open loop (`--rate R`): its place in the schedule, `begin + n / R`, whether or not
//!   the publisher managed to send it then. A message held back by a full window or a
//!   late publisher is charged for the wait, so a stalled server cannot hide its stall by
//!   slowing the publishers down (no coordinated omission).
//!
//! Publish latency runs from the send time to the confirmation, end-to-end latency from
//! the send time to the delivery.
//!
//! Every body also carries the message's id `n` and the run's tag `r`. Each consumer
//! keeps a [`Ledger`] of the ids it got; at the end [`Ids`] puts them together: every
//! message of the run received exactly once on its own queue, or the duplicates, the
//! missing ids (and which of them had been confirmed), the ids out of range, the
//! messages of another run and the unreadable bodies, each counted. A run is complete
//! only if the ids check out, every publish was confirmed and none failed.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::disk::Placement;
use crate::{cpu_ticks, disk_written, latency_json, peak_rss_kib, sys};

/// The shape of a durable publish → consume → ack run.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Unconfirmed messages per publisher (1: each message waits for its confirmation
    /// before the next is sent).
    #[arg(long, default_value_t = 100)]
    pub window: usize,
    /// Unacknowledged messages per consumer.
    #[arg(long, default_value_t = 100)]
    pub prefetch: usize,
    /// Publish at this many messages per second in total (open loop, latency measured
    /// from each message's place in the schedule); default: as fast as the window allows.
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, default_value_t = 120)]
    pub duration_limit: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl LoadArgs {
    /// Refuses shapes that cannot run.
    pub fn check(&self) -> Result<()> {
        if self.publishers == 0
            || self.consumers == 0
            || self.window == 0
            || self.prefetch == 0
            || self.messages == 0
            || self.duration_limit == 0
        {
            bail!("--messages, --publishers, --consumers, --window, --prefetch and --duration-limit must be at least 1");
        }
        if matches!(self.rate, Some(r) if !(r.is_finite() && r > 0.0)) {
            bail!("--rate must be a positive number of messages per second");
        }
        Ok(())
    }

    /// Messages per consumer, and the total actually sent (a multiple of the consumers).
    pub fn split(&self) -> (u64, u64) {
        let per_consumer = self.messages / self.consumers.max(1) as u64;
        (per_consumer, per_consumer * self.consumers.max(1) as u64)
    }
}

/// A JSON body carrying its send time (ns since the start of the run), padded to
/// `padding.len()` bytes; never shorter than the 20-odd bytes that carry the time.
pub fn body(sent_ns: u64, padding: &str) -> String {
    padded(format!("{{\"t\":{sent_ns},\"pad\":\""), padding)
}

/// A [`body`] that also carries the message's id `n` and the run's tag `r`, for the
/// [`Ledger`]; never shorter than the 40-odd bytes that carry them.
pub fn tagged_body(sent_ns: u64, tag: Tag, padding: &str) -> String {
    padded(
        format!(
            "{{\"t\":{sent_ns},\"n\":{},\"r\":{},\"pad\":\"",
            tag.n, tag.run
        ),
        padding,
    )
}

fn padded(head: String, padding: &str) -> String {
    let fill = padding.len().saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", &padding[..fill])
}

/// The padding for bodies of `size` bytes.
pub fn padding(size: usize) -> String {
    "x".repeat(size)
}

/// The send time a [`body`] carries, wherever it stands in `payload`: first in the body
/// as sent, or inside a frame that wraps it (Trunkline's WebSocket channel frames carry
/// the body re-serialized with its keys sorted, so `"t"` comes after the padding, which
/// is all `x`).
pub fn sent_ns(payload: &[u8]) -> Option<u64> {
    number(payload, b"\"t\":")
}

/// The unsigned number after the first `key` in `payload`.
fn number(payload: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(payload, key)? + key.len();
    let digits = payload.get(at..)?;
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

/// Which message of which run a [`tagged_body`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    /// The run's tag ([`Clock::run`]).
    pub run: u32,
    /// The message's id, `0..messages`.
    pub n: u64,
}

impl Tag {
    /// The tag of a [`tagged_body`], if `payload` is one.
    pub fn of(payload: &[u8]) -> Option<Tag> {
        Some(Tag {
            run: u32::try_from(number(payload, b"\"r\":")?).ok()?,
            n: number(payload, b"\"n\":")?,
        })
    }
}

/// The clock of a run: body times count from `base`; nothing starts after `deadline`.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub base: Instant,
    pub deadline: Instant,
    /// This run's tag, in every body: a message left over from another run (a queue not
    /// emptied) is told apart from this run's message of the same id.
    pub run: u32,
}

impl Clock {
    pub fn new(a: &LoadArgs) -> Clock {
        let base = Instant::now();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(0);
        Clock {
            base,
            deadline: base + Duration::from_secs(a.duration_limit),
            run: nanos ^ std::process::id().rotate_left(16),
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// End-to-end latency of a message delivered now.
    pub fn end_to_end(&self, payload: &[u8]) -> Option<u64> {
        Some(self.ns(Instant::now()).saturating_sub(sent_ns(payload)?))
    }

    /// Time left until the deadline.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// The server's CPU time (all its processes: the nodes of a cluster), what it wrote to
/// disk, the CPU time of the broker under it if any (RabbitMQ under Trunkline nodes), and
/// the wall clock from the start of the load.
pub struct Meter {
    pids: Vec<u32>,
    cpu0: u64,
    written0: Option<u64>,
    broker: Vec<u32>,
    broker_cpu0: u64,
    pub begin: Instant,
}

fn cpu_of(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|p| cpu_ticks(*p)).sum()
}

fn written_of(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| disk_written(*p)).sum()
}

impl Meter {
    pub fn start(pid: u32) -> Result<Meter> {
        Meter::of(vec![pid], Vec::new())
    }

    /// A meter of the server's processes `pids` and of the broker's `broker`.
    pub fn of(pids: Vec<u32>, broker: Vec<u32>) -> Result<Meter> {
        Ok(Meter {
            cpu0: cpu_of(&pids)?,
            written0: written_of(&pids),
            broker_cpu0: cpu_of(&broker)?,
            pids,
            broker,
            begin: Instant::now(),
        })
    }

    /// Waits for every publisher and consumer task, reads the meter and puts the run's
    /// figures together.
    pub async fn finish(
        self,
        total: u64,
        rate: Option<f64>,
        publishers: Vec<tokio::task::JoinHandle<Published>>,
        consumers: Vec<tokio::task::JoinHandle<Consumed>>,
    ) -> Result<Outcome> {
        let mut published = Vec::with_capacity(publishers.len());
        for p in publishers {
            published.push(p.await?);
        }
        let mut consumed = Vec::with_capacity(consumers.len());
        for c in consumers {
            consumed.push(c.await?);
        }
        let tick = sys::clock_ticks_per_sec()?;
        let server_cpu_s = cpu_of(&self.pids)?.saturating_sub(self.cpu0) as f64 / tick;
        let broker_cpu_s = (!self.broker.is_empty())
            .then(|| cpu_of(&self.broker))
            .transpose()?
            .map(|now| now.saturating_sub(self.broker_cpu0) as f64 / tick);
        let server_written = written_of(&self.pids)
            .zip(self.written0)
            .map(|(now, then)| now.saturating_sub(then));
        let since_begin = |t: Option<Instant>| {
            t.unwrap_or_else(Instant::now)
                .saturating_duration_since(self.begin)
                .as_secs_f64()
        };
        let elapsed_s = since_begin(consumed.iter().map(|c| c.done).max());
        let publish_elapsed_s = since_begin(published.iter().map(|p| p.done).max());
        let ledgers: Vec<Ledger> = consumed.into_iter().map(|c| c.ledger).collect();
        let ids = Ids::check(
            total,
            &ledgers,
            published.iter().flat_map(|p| p.confirmed.iter().copied()),
        );
        let mut o = Outcome {
            total,
            rate,
            publish_ns: Vec::new(),
            send_lag_ns: Vec::new(),
            end_to_end_ns: ledgers.into_iter().flat_map(|l| l.end_to_end_ns).collect(),
            ids,
            body_bytes: None,
            elapsed_s,
            publish_elapsed_s,
            server_cpu_s,
            broker_cpu_s,
            server_written,
            server_pid: self.pids.first().copied().unwrap_or(0),
            publish_failures: 0,
            publish_failure: None,
        };
        for p in published {
            o.publish_ns.extend(p.latency_ns);
            o.send_lag_ns.extend(p.send_lag_ns);
            o.body_bytes = match (o.body_bytes, p.body_bytes) {
                (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
                (x, y) => x.or(y),
            };
            if p.failure.is_some() {
                o.publish_failures += 1;
            }
            o.publish_failure = o.publish_failure.or(p.failure);
        }
        Ok(o)
    }
}

/// When each publisher sends: the schedule of an open-loop run, or none.
pub struct Schedule {
    /// Per publisher, the send times of its messages (closed loop: `None`).
    slots: Vec<Option<mpsc::UnboundedReceiver<Instant>>>,
    clock: Clock,
    publishers: usize,
    window: usize,
    total: u64,
}

impl Schedule {
    /// The schedule of `total` messages from now. With `--rate`, a pacer thread hands each
    /// publisher its messages' send times, on time (it sleeps with the OS timer, far finer
    /// than the async runtime's millisecond wheel) and never held up by a publisher.
    pub fn start(a: &LoadArgs, clock: Clock, total: u64) -> Schedule {
        let begin = Instant::now();
        let mut slots = Vec::with_capacity(a.publishers);
        let Some(rate) = a.rate else {
            slots.resize_with(a.publishers, || None);
            return Schedule {
                slots,
                clock,
                publishers: a.publishers,
                window: a.window,
                total,
            };
        };
        let mut senders = Vec::with_capacity(a.publishers);
        for _ in 0..a.publishers {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            slots.push(Some(rx));
        }
        let deadline = clock.deadline;
        std::thread::spawn(move || {
            for n in 0..total {
                let due = begin + Duration::from_secs_f64(n as f64 / rate);
                if due > deadline || senders.iter().all(|s| s.is_closed()) {
                    break;
                }
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                // A publisher that gave up has dropped its receiver: the others go on.
                let _ = senders[n as usize % senders.len()].send(due);
            }
        });
        Schedule {
            slots,
            clock,
            publishers: a.publishers,
            window: a.window,
            total,
        }
    }

    /// Publisher `p`'s part of the run, to pass to [`publish`].
    pub fn publisher(&mut self, p: usize) -> Part {
        let count = self
            .total
            .saturating_sub(p as u64)
            .div_ceil(self.publishers as u64);
        Part {
            p,
            publishers: self.publishers,
            count,
            window: self.window,
            clock: self.clock,
            slots: self.slots.get_mut(p).and_then(Option::take),
        }
    }
}

/// One publisher's messages and their schedule.
pub struct Part {
    p: usize,
    publishers: usize,
    count: u64,
    window: usize,
    clock: Clock,
    slots: Option<mpsc::UnboundedReceiver<Instant>>,
}

/// What one publisher measured.
pub struct Published {
    /// Send time → confirmation, per confirmed message.
    pub latency_ns: Vec<u64>,
    /// Open loop: how late each message left, after its place in the schedule.
    pub send_lag_ns: Vec<u64>,
    /// The ids of the messages confirmed.
    pub confirmed: Vec<u64>,
    /// The shortest and the longest body sent, in bytes.
    pub body_bytes: Option<(usize, usize)>,
    /// The first send or confirmation that failed (the publisher stopped there).
    pub failure: Option<String>,
    /// When its last message was confirmed (before closing its connection).
    pub done: Instant,
}

/// Runs one publisher: `send(n, body)` sends message `n` (its [`tagged_body`]) and
/// returns its confirmation,
/// a future that resolves once the server has made the message durable. At most
/// `--window` messages are unconfirmed at a time; the loop stops at the deadline, at the
/// first failure, or when every message is confirmed.
pub async fn publish<S, F, C>(part: Part, pad: &str, mut send: S) -> Published
where
    S: FnMut(u64, String) -> F,
    F: Future<Output = Result<C>>,
    C: Future<Output = Result<()>>,
{
    let Part {
        p,
        publishers,
        count,
        window,
        clock,
        mut slots,
    } = part;
    let room = Arc::new(Semaphore::new(window));
    let (sent_tx, mut sent_rx) =
        mpsc::unbounded_channel::<(u64, Instant, C, OwnedSemaphorePermit)>();
    let mut send_lag_ns = Vec::new();
    let mut failure = None;
    let mut body_bytes: Option<(usize, usize)> = None;

    let sender = async {
        for i in 0..count {
            let n = i * publishers as u64 + p as u64;
            let due = match &mut slots {
                Some(slots) => match tokio::time::timeout(clock.left(), slots.recv()).await {
                    Ok(Some(due)) => Some(due),
                    _ => break,
                },
                None => None,
            };
            let Ok(Ok(permit)) =
                tokio::time::timeout(clock.left(), room.clone().acquire_owned()).await
            else {
                break;
            };
            let now = Instant::now();
            if let Some(due) = due {
                send_lag_ns.push(now.saturating_duration_since(due).as_nanos() as u64);
            }
            let sent = due.unwrap_or(now);
            let body = tagged_body(clock.ns(sent), Tag { run: clock.run, n }, pad);
            let len = body.len();
            body_bytes = Some(body_bytes.map_or((len, len), |(a, b)| (a.min(len), b.max(len))));
            match tokio::time::timeout(clock.left(), send(n, body)).await {
                Ok(Ok(confirmation)) => {
                    if sent_tx.send((n, sent, confirmation, permit)).is_err() {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    failure = Some(format!("send: {e:#}"));
                    break;
                }
                Err(_) => break,
            }
        }
        drop(sent_tx);
    };

    // Confirmations may resolve out of order (several per acknowledgement, or not in
    // sequence): each is awaited on its own, and frees its place in the window.
    let confirmer = async {
        let mut latency_ns = Vec::with_capacity(count as usize);
        let mut confirmed = Vec::with_capacity(count as usize);
        let mut waiting = FuturesUnordered::new();
        let mut open = true;
        let mut failed = None;
        let stop = tokio::time::sleep_until(clock.deadline.into());
        tokio::pin!(stop);
        while open || !waiting.is_empty() {
            tokio::select! {
                m = sent_rx.recv(), if open => match m {
                    Some((n, sent, confirmation, permit)) => waiting.push(async move {
                        let r = confirmation.await;
                        drop(permit);
                        (n, sent, r)
                    }),
                    None => open = false,
                },
                Some((n, sent, r)) = waiting.next(), if !waiting.is_empty() => match r {
                    Ok(()) => {
                        latency_ns.push(sent.elapsed().as_nanos() as u64);
                        confirmed.push(n);
                    }
                    Err(e) => {
                        failed = Some(format!("confirmation: {e:#}"));
                        // Closing the window stops the sender.
                        room.close();
                        break;
                    }
                },
                _ = &mut stop => break,
            }
        }
        room.close();
        (latency_ns, confirmed, failed)
    };

    let ((), (latency_ns, confirmed, failed)) = tokio::join!(sender, confirmer);
    Published {
        latency_ns,
        send_lag_ns,
        confirmed,
        body_bytes,
        failure: failure.or(failed),
        done: Instant::now(),
    }
}

/// What one consumer measured.
pub struct Consumed {
    /// The messages it got, and their latencies.
    pub ledger: Ledger,
    /// When it stopped consuming (before closing its connection).
    pub done: Instant,
}

/// The deliveries one consumer got, by message id: a bitmap over the run's ids, and
/// counts of what does not belong.
pub struct Ledger {
    clock: Clock,
    total: u64,
    queue: u64,
    queues: u64,
    seen: Vec<u64>,
    /// Messages of this run for this queue, each counted once.
    distinct: u64,
    /// Send time → first delivery, per message.
    pub end_to_end_ns: Vec<u64>,
    duplicates: u64,
    out_of_range: u64,
    foreign: u64,
    unreadable: u64,
    misrouted: u64,
}

impl Ledger {
    /// The ledger of consumer `queue` of `queues`, in a run of `total` messages (message
    /// `n` is for queue `n % queues`).
    pub fn new(clock: Clock, total: u64, queue: usize, queues: usize) -> Ledger {
        Ledger {
            clock,
            total,
            queue: queue as u64,
            queues: queues.max(1) as u64,
            seen: vec![0; total.div_ceil(64) as usize],
            distinct: 0,
            end_to_end_ns: Vec::new(),
            duplicates: 0,
            out_of_range: 0,
            foreign: 0,
            unreadable: 0,
            misrouted: 0,
        }
    }

    /// Records a delivery of `payload`, with its end-to-end latency if it is the first
    /// delivery of a message of this run.
    pub fn delivered(&mut self, payload: &[u8]) {
        let Some(tag) = Tag::of(payload) else {
            self.unreadable += 1;
            return;
        };
        if tag.run != self.clock.run {
            self.foreign += 1;
            return;
        }
        if tag.n >= self.total {
            self.out_of_range += 1;
            return;
        }
        let (word, bit) = ((tag.n / 64) as usize, 1u64 << (tag.n % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        if tag.n % self.queues == self.queue {
            self.distinct += 1;
        } else {
            // Counted in the bitmap all the same: [`Ids::check`] then sees it once.
            self.misrouted += 1;
        }
        if let Some(l) = self.clock.end_to_end(payload) {
            self.end_to_end_ns.push(l);
        }
    }

    /// Messages of this run meant for this consumer that it got, each counted once: it
    /// has them all at `messages / queues`.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }
}

/// What the ids of every delivery of a run show.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    /// Messages in the run (ids `0..expected`).
    pub expected: u64,
    /// Distinct ids received.
    pub received: u64,
    /// Deliveries of an id already received (by the same consumer or another).
    pub duplicates: u64,
    /// Ids never received.
    pub missing: u64,
    /// Of the missing ids, those whose publish had been confirmed: messages lost.
    pub missing_confirmed: u64,
    /// The first few missing ids.
    pub first_missing: Vec<u64>,
    /// Ids at or above `expected`.
    pub out_of_range: u64,
    /// Messages tagged with another run.
    pub foreign: u64,
    /// Bodies without an id.
    pub unreadable: u64,
    /// Messages received by a consumer they were not meant for.
    pub misrouted: u64,
}

impl Ids {
    /// Puts the consumers' ledgers together, with the ids whose publish was confirmed.
    pub fn check(total: u64, ledgers: &[Ledger], confirmed: impl Iterator<Item = u64>) -> Ids {
        let mut all = vec![0u64; total.div_ceil(64) as usize];
        let mut ids = Ids {
            expected: total,
            ..Ids::default()
        };
        for l in ledgers {
            for (a, w) in all.iter_mut().zip(&l.seen) {
                ids.duplicates += u64::from((*a & w).count_ones());
                *a |= w;
            }
            ids.duplicates += l.duplicates;
            ids.out_of_range += l.out_of_range;
            ids.foreign += l.foreign;
            ids.unreadable += l.unreadable;
            ids.misrouted += l.misrouted;
        }
        let has = |n: u64| all[(n / 64) as usize] & (1u64 << (n % 64)) != 0;
        ids.received = all.iter().map(|w| u64::from(w.count_ones())).sum();
        ids.missing = total - ids.received;
        let mut confirmed_seen = vec![0u64; all.len()];
        for n in confirmed.filter(|&n| n < total) {
            confirmed_seen[(n / 64) as usize] |= 1u64 << (n % 64);
        }
        ids.missing_confirmed = all
            .iter()
            .zip(&confirmed_seen)
            .map(|(a, c)| u64::from((c & !a).count_ones()))
            .sum();
        ids.first_missing = (0..total).filter(|&n| !has(n)).take(10).collect();
        ids
    }

    /// True if every message of the run arrived exactly once, on its own queue, and
    /// nothing else did.
    pub fn clean(&self) -> bool {
        self.received == self.expected
            && self.duplicates == 0
            && self.out_of_range == 0
            && self.foreign == 0
            && self.unreadable == 0
            && self.misrouted == 0
    }

    pub fn to_json(&self) -> Value {
        json!({
            "expected": self.expected,
            "received": self.received,
            "duplicates": self.duplicates,
            "missing": self.missing,
            "missing_confirmed": self.missing_confirmed,
            "first_missing": self.first_missing,
            "out_of_range": self.out_of_range,
            "foreign": self.foreign,
            "unreadable": self.unreadable,
            "misrouted": self.misrouted,
            "clean": self.clean(),
        })
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} of {} received ({} duplicates, {} missing of which {} confirmed, {} out of range, \
             {} from another run, {} unreadable, {} on the wrong queue)",
            self.received,
            self.expected,
            self.duplicates,
            self.missing,
            self.missing_confirmed,
            self.out_of_range,
            self.foreign,
            self.unreadable,
            self.misrouted
        );
        if !self.first_missing.is_empty() {
            let first: Vec<String> = self.first_missing.iter().map(u64::to_string).collect();
            s.push_str(&format!("; first missing: {}", first.join(", ")));
        }
        s
    }
}

/// The system a run drove, for the report: what it is, and where it keeps its data.
pub struct System {
    /// Name and version, as the server gave it where it can (`nats-server 2.15.1`).
    pub server: String,
    /// Settings that matter for the comparison (`sync_interval always`), if any.
    pub settings: Option<String>,
    /// Where it keeps its data, or why that is not known.
    pub data: std::result::Result<Placement, String>,
    /// The server process.
    pub pid: u32,
}

impl System {
    fn to_json(&self) -> Value {
        let data = match &self.data {
            Ok(p) => {
                let mut v = p.to_json();
                v["server_files_open_there"] =
                    json!(crate::disk::open_files_under(self.pid, &p.path));
                v
            }
            Err(e) => json!({ "error": e }),
        };
        json!({ "server": self.server, "settings": self.settings, "data": data })
    }
}

/// What one run measured.
pub struct Outcome {
    pub total: u64,
    pub rate: Option<f64>,
    pub publish_ns: Vec<u64>,
    pub send_lag_ns: Vec<u64>,
    pub end_to_end_ns: Vec<u64>,
    pub ids: Ids,
    /// The shortest and the longest body sent.
    pub body_bytes: Option<(usize, usize)>,
    pub elapsed_s: f64,
    pub publish_elapsed_s: f64,
    pub server_cpu_s: f64,
    /// CPU time of the broker under the server (RabbitMQ under Trunkline nodes).
    pub broker_cpu_s: Option<f64>,
    /// Bytes the server wrote to storage during the run, if the kernel says.
    pub server_written: Option<u64>,
    pub server_pid: u32,
    /// Publishers that stopped on a failed send or confirmation.
    pub publish_failures: u64,
    pub publish_failure: Option<String>,
}

impl Outcome {
    /// Why the run is not complete: empty if every message was confirmed, received once
    /// and acked, and no publish failed.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let confirmed = self.publish_ns.len() as u64;
        if self.publish_failures > 0 {
            p.push(format!(
                "{} publisher(s) stopped on a failure",
                self.publish_failures
            ));
        }
        if confirmed < self.total {
            p.push(format!(
                "{} of {} publishes confirmed",
                confirmed, self.total
            ));
        }
        if !self.ids.clean() {
            p.push(format!("message ids: {}", self.ids.describe()));
        }
        p
    }
}

/// Prints the summary line and latencies, writes `--json`; true if the run was complete
/// (see [`Outcome::problems`]).
pub fn report(target: &str, a: &LoadArgs, system: &System, o: Outcome) -> Result<bool> {
    let consumed = o.ids.received;
    let confirmed = o.publish_ns.len() as u64;
    let problems = o.problems();
    let mut r = json!({
        "target": target, "messages": o.total, "size": a.size, "publishers": a.publishers,
        "consumers": a.consumers, "window": a.window, "prefetch": a.prefetch,
        "rate": o.rate,
        "body_bytes": o.body_bytes.map(|(lo, hi)| json!({"min": lo, "max": hi})),
        "confirmed": confirmed, "consumed": consumed, "elapsed_s": o.elapsed_s,
        "msgs_per_s": consumed as f64 / o.elapsed_s,
        "publish_elapsed_s": o.publish_elapsed_s,
        "publish_msgs_per_s": confirmed as f64 / o.publish_elapsed_s,
        "server_cpu_us_per_msg": o.server_cpu_s * 1e6 / consumed.max(1) as f64,
        "broker_cpu_us_per_msg": o.broker_cpu_s.map(|s| s * 1e6 / consumed.max(1) as f64),
        "server_peak_rss_mib": peak_rss_kib(o.server_pid).unwrap_or(0) as f64 / 1024.0,
        "server_disk_bytes_per_msg": o.server_written.map(|w| w as f64 / consumed.max(1) as f64),
        "publish_latency": latency_json(o.publish_ns),
        "end_to_end_latency": latency_json(o.end_to_end_ns),
        "send_lag": o.rate.map(|_| latency_json(o.send_lag_ns)),
        "ids": o.ids.to_json(),
        "publish_failures": o.publish_failures,
        "publish_failure": o.publish_failure,
        "complete": problems.is_empty(),
        "problems": problems,
    });
    if let (Some(r), Value::Object(x)) = (r.as_object_mut(), system.to_json()) {
        r.extend(x);
    }
    let pace = match o.rate {
        Some(rate) => format!(" at {rate:.0} msgs/s"),
        None => String::new(),
    };
    println!(
        "{target}: {} msgs of {} B{pace}, {} publishers (window {}), {} consumers (prefetch {}): {:.0} msgs/s consumed+acked ({:.0} msgs/s confirmed), server CPU {:.1} µs/msg, peak RSS {:.1} MiB",
        o.total, a.size, a.publishers, a.window, a.consumers, a.prefetch,
        r["msgs_per_s"].as_f64().unwrap_or(0.0),
        r["publish_msgs_per_s"].as_f64().unwrap_or(0.0),
        r["server_cpu_us_per_msg"].as_f64().unwrap_or(0.0),
        r["server_peak_rss_mib"].as_f64().unwrap_or(0.0),
    );
    let ms = |v: &serde_json::Value| {
        let f = |k: &str| match v[k].as_f64() {
            Some(x) => format!("{x:.2}"),
            None => "-".into(),
        };
        format!(
            "p50 {} ms  p99 {} ms  max {} ms",
            f("p50_ms"),
            f("p99_ms"),
            f("max_ms")
        )
    };
    if let Some(b) = r["broker_cpu_us_per_msg"].as_f64() {
        println!("  broker CPU         {b:.1} µs/msg (RabbitMQ under the nodes)");
    }
    println!("  publish latency    {}", ms(&r["publish_latency"]));
    println!("  end-to-end latency {}", ms(&r["end_to_end_latency"]));
    if o.rate.is_some() {
        println!("  send lag           {}", ms(&r["send_lag"]));
    }
    println!("  message ids        {}", o.ids.describe());
    let settings = system
        .settings
        .as_ref()
        .map(|s| format!(", {s}"))
        .unwrap_or_default();
    println!("  server             {}{settings}", system.server);
    match &system.data {
        Ok(p) => println!(
            "  data               {} ({} of its files open there)",
            p.describe(),
            r["data"]["server_files_open_there"]
        ),
        Err(e) => println!("  data               unknown: {e}"),
    }
    if let Some(e) = r["publish_failure"].as_str() {
        println!("  first failure      {e}");
    }
    for p in r["problems"].as_array().into_iter().flatten() {
        println!("  INCOMPLETE         {}", p.as_str().unwrap_or_default());
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&r)?)?;
    }
    Ok(r["complete"].as_bool() == Some(true))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    fn args(messages: u64, publishers: usize, window: usize, rate: Option<f64>) -> LoadArgs {
        LoadArgs {
            messages,
            size: 64,
            publishers,
            consumers: 1,
            window,
            prefetch: 1,
            rate,
            duration_limit: 10,
            json: None,
        }
    }

    /// Runs every publisher of `a` against a fake server whose confirmations take `delay`;
    /// returns what they measured, the messages sent and the most unconfirmed at once
    /// by one publisher.
    async fn run(a: &LoadArgs, delay: Duration) -> (Vec<Published>, BTreeSet<u64>, usize) {
        let clock = Clock::new(a);
        let mut schedule = Schedule::start(a, clock, a.messages);
        let sent = Mutex::new(BTreeSet::new());
        let most = AtomicUsize::new(0);
        let mut published = Vec::new();
        let runs = (0..a.publishers).map(|p| {
            let part = schedule.publisher(p);
            let (sent, most) = (&sent, &most);
            async move {
                let unconfirmed = Arc::new(AtomicUsize::new(0));
                publish(part, "", |n, body| {
                    let unconfirmed = unconfirmed.clone();
                    async move {
                        assert!(sent_ns(body.as_bytes()).is_some(), "{body}");
                        assert!(sent.lock().expect("lock").insert(n), "{n} sent twice");
                        let now = unconfirmed.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        Ok(async move {
                            tokio::time::sleep(delay).await;
                            unconfirmed.fetch_sub(1, Ordering::SeqCst);
                            Ok(())
                        })
                    }
                })
                .await
            }
        });
        for p in futures::future::join_all(runs).await {
            published.push(p);
        }
        let sent = sent.into_inner().expect("lock");
        (published, sent, most.into_inner())
    }

    #[tokio::test]
    async fn every_message_is_sent_once_and_confirmed() {
        let a = args(103, 4, 10, None);
        let (published, sent, _) = run(&a, Duration::ZERO).await;
        assert_eq!(sent, (0..103).collect());
        let confirmed: usize = published.iter().map(|p| p.latency_ns.len()).sum();
        assert_eq!(confirmed, 103);
        assert!(published.iter().all(|p| p.failure.is_none()));
    }

    #[tokio::test]
    async fn the_window_bounds_unconfirmed_messages() {
        for window in [1, 3] {
            let a = args(30, 1, window, None);
            let (_, sent, most) = run(&a, Duration::from_millis(2)).await;
            assert_eq!(sent.len(), 30);
            assert_eq!(most, window, "window {window}");
        }
    }

    #[tokio::test]
    async fn a_rate_spreads_the_messages_over_time() {
        // 40 messages at 400/s: the last is due 97.5 ms after the first.
        let a = args(40, 2, 100, Some(400.0));
        let started = Instant::now();
        let (published, sent, _) = run(&a, Duration::ZERO).await;
        assert_eq!(sent.len(), 40);
        assert!(started.elapsed() >= Duration::from_millis(97));
        let lags: usize = published.iter().map(|p| p.send_lag_ns.len()).sum();
        assert_eq!(lags, 40);
    }

    #[tokio::test]
    async fn a_late_confirmation_counts_from_the_due_time() {
        // Window 1 and confirmations taking 20 ms at 1000/s: the publisher falls behind,
        // and the wait for the window is part of each message's latency.
        let a = args(5, 1, 1, Some(1000.0));
        let (published, _, most) = run(&a, Duration::from_millis(20)).await;
        assert_eq!(most, 1);
        let mut lat = published[0].latency_ns.clone();
        lat.sort_unstable();
        // The fifth message was due at 4 ms and confirmed after five 20 ms waits.
        assert!(lat[4] >= 90_000_000, "{lat:?}");
    }

    #[test]
    fn the_body_carries_its_send_time_in_size_bytes() {
        for (t, size) in [(0, 1024), (123_456_789, 1024), (u64::MAX, 65536), (7, 100)] {
            let b = body(t, &padding(size));
            assert_eq!(sent_ns(b.as_bytes()), Some(t));
            assert_eq!(b.len(), size);
            assert!(serde_json::from_str::<serde_json::Value>(&b).is_ok(), "{b}");
        }
        // Too small for the time: as short as it can be.
        let b = body(12_345_678_901, &padding(16));
        assert_eq!(b, r#"{"t":12345678901,"pad":""}"#);
    }

    #[test]
    fn a_tagged_body_carries_its_id_run_and_send_time_in_size_bytes() {
        let tag = Tag {
            run: u32::MAX,
            n: 39_999,
        };
        for size in [1024, 100, 65536] {
            let b = tagged_body(123_456_789, tag, &padding(size));
            assert_eq!(b.len(), size);
            assert_eq!(Tag::of(b.as_bytes()), Some(tag));
            assert_eq!(sent_ns(b.as_bytes()), Some(123_456_789));
            assert!(serde_json::from_str::<serde_json::Value>(&b).is_ok(), "{b}");
        }
        assert_eq!(Tag::of(body(5, &padding(64)).as_bytes()), None);
    }

    fn ledgers(clock: Clock, total: u64, queues: usize) -> Vec<Ledger> {
        (0..queues)
            .map(|q| Ledger::new(clock, total, q, queues))
            .collect()
    }

    fn deliver(l: &mut Ledger, run: u32, n: u64) {
        l.delivered(tagged_body(0, Tag { run, n }, "").as_bytes());
    }

    /// Received, duplicates, missing, missing though confirmed.
    fn once(ids: &Ids) -> (u64, u64, u64, u64) {
        (
            ids.received,
            ids.duplicates,
            ids.missing,
            ids.missing_confirmed,
        )
    }

    #[test]
    fn every_message_once_checks_out() {
        let clock = Clock::new(&args(10, 1, 1, None));
        let mut ls = ledgers(clock, 10, 2);
        for n in 0..10 {
            deliver(&mut ls[(n % 2) as usize], clock.run, n);
        }
        assert_eq!(ls[0].distinct(), 5);
        let ids = Ids::check(10, &ls, 0..10);
        assert!(ids.clean(), "{ids:?}");
        assert_eq!((ids.received, ids.missing), (10, 0));
        assert_eq!(ls.iter().map(|l| l.end_to_end_ns.len()).sum::<usize>(), 10);
    }

    #[test]
    fn a_lost_or_duplicated_message_is_caught() {
        let clock = Clock::new(&args(10, 1, 1, None));
        let mut ls = ledgers(clock, 10, 2);
        // 7 is lost (confirmed all the same), 4 comes twice.
        for n in (0..10).filter(|&n| n != 7).chain([4]) {
            deliver(&mut ls[(n % 2) as usize], clock.run, n);
        }
        // The consumer of 7 never has all of its messages: it waits.
        assert_eq!((ls[0].distinct(), ls[1].distinct()), (5, 4));
        let ids = Ids::check(10, &ls, 0..10);
        assert!(!ids.clean());
        assert_eq!(once(&ids), (9, 1, 1, 1));
        assert_eq!(ids.first_missing, vec![7]);
        // A message lost before its confirmation is missing, not lost after confirming.
        let ids = Ids::check(10, &ls, (0..10).filter(|&n| n != 7));
        assert_eq!((ids.missing, ids.missing_confirmed), (1, 0));
    }

    #[test]
    fn strangers_are_counted_and_never_fill_a_ledger() {
        let clock = Clock::new(&args(4, 1, 1, None));
        let mut ls = ledgers(clock, 4, 2);
        deliver(&mut ls[0], clock.run, 4); // out of range
        deliver(&mut ls[0], clock.run.wrapping_add(1), 2); // another run's message 2
        ls[0].delivered(br#"{"t":1,"pad":""}"#); // no id
        deliver(&mut ls[0], clock.run, 1); // queue 1's message, on queue 0
        deliver(&mut ls[1], clock.run, 1); // ... and on its own
        assert_eq!((ls[0].distinct(), ls[1].distinct()), (0, 1));
        let ids = Ids::check(4, &ls, 0..4);
        assert_eq!(
            (
                ids.out_of_range,
                ids.foreign,
                ids.unreadable,
                ids.misrouted,
                ids.duplicates
            ),
            (1, 1, 1, 1, 1)
        );
        assert_eq!((ids.received, ids.missing), (1, 3));
        assert!(!ids.clean());
    }

    #[tokio::test]
    async fn the_ids_of_a_run_through_a_faulty_queue_show_its_faults() {
        // Publishers send through a fake server that drops message 3 and delivers 5 twice.
        let a = args(20, 2, 4, None);
        let clock = Clock::new(&a);
        let mut schedule = Schedule::start(&a, clock, a.messages);
        let queue = Mutex::new(Vec::new());
        let mut published = Vec::new();
        for p in 0..a.publishers {
            let queue = &queue;
            published.push(
                publish(schedule.publisher(p), "", |n, body| async move {
                    let mut q = queue.lock().expect("lock");
                    match n {
                        3 => {}
                        5 => q.extend([body.clone(), body]),
                        _ => q.push(body),
                    }
                    Ok(async { Ok(()) })
                })
                .await,
            );
        }
        let mut ledger = Ledger::new(clock, a.messages, 0, 1);
        for body in queue.into_inner().expect("lock") {
            ledger.delivered(body.as_bytes());
        }
        let ids = Ids::check(
            a.messages,
            &[ledger],
            published.iter().flat_map(|p| p.confirmed.iter().copied()),
        );
        assert_eq!(once(&ids), (19, 1, 1, 1));
        assert_eq!(ids.first_missing, vec![3]);
    }
}
