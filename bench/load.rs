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

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::{cpu_ticks, latency_json, peak_rss_kib, sys};

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
    let head = format!("{{\"t\":{sent_ns},\"pad\":\"");
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
    let at = memchr::memmem::find(payload, b"\"t\":")? + 4;
    let digits = payload.get(at..)?;
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

/// The clock of a run: body times count from `base`; nothing starts after `deadline`.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub base: Instant,
    pub deadline: Instant,
}

impl Clock {
    pub fn new(a: &LoadArgs) -> Clock {
        let base = Instant::now();
        Clock {
            base,
            deadline: base + Duration::from_secs(a.duration_limit),
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

/// The server's CPU time and the wall clock from the start of the load.
pub struct Meter {
    pid: u32,
    cpu0: u64,
    pub begin: Instant,
}

impl Meter {
    pub fn start(pid: u32) -> Result<Meter> {
        Ok(Meter {
            pid,
            cpu0: cpu_ticks(pid)?,
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
        let server_cpu_s =
            cpu_ticks(self.pid)?.saturating_sub(self.cpu0) as f64 / sys::clock_ticks_per_sec()?;
        let since_begin = |t: Option<Instant>| {
            t.unwrap_or_else(Instant::now)
                .saturating_duration_since(self.begin)
                .as_secs_f64()
        };
        let elapsed_s = since_begin(consumed.iter().map(|c| c.done).max());
        let publish_elapsed_s = since_begin(published.iter().map(|p| p.done).max());
        let mut o = Outcome {
            total,
            rate,
            publish_ns: Vec::new(),
            send_lag_ns: Vec::new(),
            end_to_end_ns: consumed.into_iter().flat_map(|c| c.end_to_end_ns).collect(),
            elapsed_s,
            publish_elapsed_s,
            server_cpu_s,
            server_pid: self.pid,
            publish_failure: None,
        };
        for p in published {
            o.publish_ns.extend(p.latency_ns);
            o.send_lag_ns.extend(p.send_lag_ns);
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
    /// The first send or confirmation that failed (the publisher stopped there).
    pub failure: Option<String>,
    /// When its last message was confirmed (before closing its connection).
    pub done: Instant,
}

/// Runs one publisher: `send(n, body)` sends message `n` and returns its confirmation,
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
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(Instant, C, OwnedSemaphorePermit)>();
    let mut send_lag_ns = Vec::new();
    let mut failure = None;

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
            match tokio::time::timeout(clock.left(), send(n, body(clock.ns(sent), pad))).await {
                Ok(Ok(confirmation)) => {
                    if sent_tx.send((sent, confirmation, permit)).is_err() {
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
        let mut waiting = FuturesUnordered::new();
        let mut open = true;
        let mut failed = None;
        let stop = tokio::time::sleep_until(clock.deadline.into());
        tokio::pin!(stop);
        while open || !waiting.is_empty() {
            tokio::select! {
                m = sent_rx.recv(), if open => match m {
                    Some((sent, confirmation, permit)) => waiting.push(async move {
                        let r = confirmation.await;
                        drop(permit);
                        (sent, r)
                    }),
                    None => open = false,
                },
                Some((sent, r)) = waiting.next(), if !waiting.is_empty() => match r {
                    Ok(()) => latency_ns.push(sent.elapsed().as_nanos() as u64),
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
        (latency_ns, failed)
    };

    let ((), (latency_ns, failed)) = tokio::join!(sender, confirmer);
    Published {
        latency_ns,
        send_lag_ns,
        failure: failure.or(failed),
        done: Instant::now(),
    }
}

/// What one consumer measured.
pub struct Consumed {
    /// Send time → delivery, per message consumed.
    pub end_to_end_ns: Vec<u64>,
    /// When it stopped consuming (before closing its connection).
    pub done: Instant,
}

/// What one run measured.
pub struct Outcome {
    pub total: u64,
    pub rate: Option<f64>,
    pub publish_ns: Vec<u64>,
    pub send_lag_ns: Vec<u64>,
    pub end_to_end_ns: Vec<u64>,
    pub elapsed_s: f64,
    pub publish_elapsed_s: f64,
    pub server_cpu_s: f64,
    pub server_pid: u32,
    pub publish_failure: Option<String>,
}

/// Prints the summary line and latencies, writes `--json`; true if every message was
/// consumed.
pub fn report(target: &str, a: &LoadArgs, o: Outcome) -> Result<bool> {
    let consumed = o.end_to_end_ns.len() as u64;
    let confirmed = o.publish_ns.len() as u64;
    let r = json!({
        "target": target, "messages": o.total, "size": a.size, "publishers": a.publishers,
        "consumers": a.consumers, "window": a.window, "prefetch": a.prefetch,
        "rate": o.rate,
        "confirmed": confirmed, "consumed": consumed, "elapsed_s": o.elapsed_s,
        "msgs_per_s": consumed as f64 / o.elapsed_s,
        "publish_elapsed_s": o.publish_elapsed_s,
        "publish_msgs_per_s": confirmed as f64 / o.publish_elapsed_s,
        "server_cpu_us_per_msg": o.server_cpu_s * 1e6 / consumed.max(1) as f64,
        "server_peak_rss_mib": peak_rss_kib(o.server_pid).unwrap_or(0) as f64 / 1024.0,
        "publish_latency": latency_json(o.publish_ns),
        "end_to_end_latency": latency_json(o.end_to_end_ns),
        "send_lag": o.rate.map(|_| latency_json(o.send_lag_ns)),
        "publish_failure": o.publish_failure,
    });
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
    println!("  publish latency    {}", ms(&r["publish_latency"]));
    println!("  end-to-end latency {}", ms(&r["end_to_end_latency"]));
    if o.rate.is_some() {
        println!("  send lag           {}", ms(&r["send_lag"]));
    }
    if let Some(e) = r["publish_failure"].as_str() {
        println!("  first failure      {e}");
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&r)?)?;
    }
    Ok(consumed == o.total)
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
}
