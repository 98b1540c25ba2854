//! Group commit.
//!
//! Callers hand a batch of [`Op`]s to the [`Committer`] and wait for its answer. One
//! thread owns the store: it takes the first batch waiting, then every other batch already
//! queued (up to a limit), writes them all in one transaction, syncs once, and answers
//! every caller. Under load, many publishers share one sync; with one caller, a commit
//! costs one sync. Nobody is answered before the transaction holding their ops is durable.
//!
//! A failed commit fails its callers and every later one: the in-memory state above may no
//! longer match the disk, so the node stops accepting writes (fail-stop) rather than
//! acknowledge something it cannot keep.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::{Op, QueueStore, StoreError};

/// Most ops written in one transaction; more waiting go in the next.
const MAX_OPS_PER_COMMIT: usize = 50_000;

/// Why a commit did not happen.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    #[error("store failed: {0}")]
    Failed(String),
    #[error("the committer has stopped")]
    Stopped,
}

/// A fixed-bucket histogram with atomic counters (Prometheus `le` buckets).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum scaled by 1e6 to keep it an integer.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&self.buckets) {
            if v <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    /// `(upper bound, cumulative count)` per bucket, then the total count and sum.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let b = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        (
            b,
            self.count.load(Ordering::Relaxed),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// Counters of the committer, read by `/metrics`.
#[derive(Debug)]
pub struct CommitStats {
    pub commits: AtomicU64,
    pub ops: AtomicU64,
    pub failures: AtomicU64,
    /// Callers' batches per commit.
    pub batch_size: Histogram,
    /// Seconds per commit, including the sync.
    pub latency: Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        CommitStats {
            commits: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            batch_size: Histogram::new(&[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
            ]),
            latency: Histogram::new(&[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
        }
    }
}

/// What happens once a batch's commit is done: answer an awaiting caller, or run a
/// callback on the commit thread (callbacks run in submission order, so work that must
/// follow commit order, such as making messages visible, can be done there).
pub type Callback = Box<dyn FnOnce(&Result<(), CommitError>) + Send>;

enum Completion {
    Reply(oneshot::Sender<Result<(), CommitError>>),
    Callback(Callback),
}

impl Completion {
    fn complete(self, r: &Result<(), CommitError>) {
        match self {
            Completion::Reply(tx) => {
                let _ = tx.send(r.clone());
            }
            Completion::Callback(f) => f(r),
        }
    }
}

type Request = (Vec<Op>, Completion);

/// Handle to the group-commit thread. Cheap to clone: clones share the one thread.
#[derive(Clone)]
pub struct Committer {
    // Unbounded, so that submitting never waits and never reorders: what may be waiting
    // is bounded upstream, where requests are admitted (connection caps, the HTTP one
    // request per connection, the STOMP per-connection buffer).
    tx: mpsc::UnboundedSender<Request>,
    failed: Arc<AtomicBool>,
    stats: Arc<CommitStats>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Committer {
    /// Starts the commit thread over `store`.
    pub fn start(store: Arc<dyn QueueStore>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(CommitStats::default());
        let thread = {
            let failed = failed.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("trunkline-commit".into())
                .spawn(move || run(store, rx, failed, stats))
                .ok()
        };
        Committer {
            tx,
            failed,
            stats,
            thread: Arc::new(Mutex::new(thread)),
        }
    }

    /// Commits `ops` durably, sharing the sync with whatever else is waiting.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), CommitError> {
        if ops.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((ops, Completion::Reply(reply)))
            .map_err(|_| CommitError::Stopped)?;
        answer.await.map_err(|_| CommitError::Stopped)?
    }

    /// Submits `ops` now, without waiting; `done` runs on the commit thread once they are
    /// durable (or failed), after the callbacks of everything submitted earlier. Keep it
    /// short: the next commit waits for it.
    pub fn submit(&self, ops: Vec<Op>, done: Callback) {
        if let Err(mpsc::error::SendError((_, completion))) =
            self.tx.send((ops, Completion::Callback(done)))
        {
            completion.complete(&Err(CommitError::Stopped));
        }
    }

    /// True once a commit has failed; the node then refuses writes.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Waits for the thread to finish what is queued once every handle is dropped.
    /// Used at shutdown, from a blocking context.
    pub fn join(self) {
        let handle = self.thread.lock().ok().and_then(|mut h| h.take());
        drop(self.tx);
        if let Some(h) = handle {
            // Only the last handle's drop closes the channel; other clones may still live,
            // in which case join would wait for them. Callers drop the broker first.
            let _ = h.join();
        }
    }
}

fn run(
    store: Arc<dyn QueueStore>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    failed: Arc<AtomicBool>,
    stats: Arc<CommitStats>,
) {
    let mut ops: Vec<Op> = Vec::new();
    let mut replies = Vec::new();
    let mut failure: Option<String> = None;
    while let Some((first, reply)) = rx.blocking_recv() {
        ops.extend(first);
        replies.push(reply);
        while ops.len() < MAX_OPS_PER_COMMIT {
            match rx.try_recv() {
                Ok((more, reply)) => {
                    ops.extend(more);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let result = match &failure {
            Some(cause) => Err(CommitError::Failed(cause.clone())),
            // Nothing to write (live-only publishes): keep the order, skip the sync.
            None if ops.is_empty() => Ok(()),
            None => {
                let start = Instant::now();
                let r = store.commit(&ops);
                stats.latency.observe(start.elapsed().as_secs_f64());
                stats.batch_size.observe(replies.len() as f64);
                match r {
                    Ok(()) => {
                        stats.commits.fetch_add(1, Ordering::Relaxed);
                        stats.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => {
                        let cause = match e {
                            StoreError::Failed(c) => c,
                            other => other.to_string(),
                        };
                        tracing::error!(cause = %cause, "commit failed; refusing further writes");
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        failed.store(true, Ordering::Relaxed);
                        failure = Some(cause.clone());
                        Err(CommitError::Failed(cause))
                    }
                }
            }
        };
        ops.clear();
        for completion in replies.drain(..) {
            completion.complete(&result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, StoredEntry};

    struct FailingStore;
    impl QueueStore for FailingStore {
        fn commit(&self, _: &[Op]) -> Result<(), StoreError> {
            Err(StoreError::Engine("disk full".into()))
        }
        fn load(&self) -> Result<crate::Snapshot, StoreError> {
            Ok(Default::default())
        }
        fn read_message(&self, _: u64) -> Result<Option<Arc<crate::StoredMessage>>, StoreError> {
            Ok(None)
        }
    }

    fn entry(seq: u64) -> Op {
        Op::PutEntry {
            queue: Arc::from("q"),
            seq,
            entry: StoredEntry {
                msg_id: seq,
                delivery_count: 0,
            },
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_commits() -> Result<(), CommitError> {
        // A store whose first commit waits at a gate, like a slow fsync: everything that
        // arrives meanwhile must go into the one commit after it, and nobody is answered
        // before their commit is done.
        struct Gated {
            inner: MemoryStore,
            gate: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
        }
        impl QueueStore for Gated {
            fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
                let rx = self.gate.lock().ok().and_then(|mut g| g.take());
                if let Some(rx) = rx {
                    let _ = rx.recv();
                }
                self.inner.commit(ops)
            }
            fn load(&self) -> Result<crate::Snapshot, StoreError> {
                self.inner.load()
            }
            fn read_message(
                &self,
                id: u64,
            ) -> Result<Option<Arc<crate::StoredMessage>>, StoreError> {
                self.inner.read_message(id)
            }
        }
        let (open, gate) = std::sync::mpsc::channel();
        let store = Arc::new(Gated {
            inner: MemoryStore::default(),
            gate: std::sync::Mutex::new(Some(gate)),
        });
        let c = Committer::start(store.clone());
        let first = {
            let c = c.clone();
            tokio::spawn(async move { c.commit(vec![entry(0)]).await })
        };
        while c.stats().batch_size.snapshot().1 == 0
            && store.gate.lock().map(|g| g.is_some()).unwrap_or(false)
        {
            tokio::task::yield_now().await;
        }
        // 499 more submitted while the first commit is held: submitting never waits, and
        // callbacks run in submission order.
        let order = Arc::new(Mutex::new(Vec::new()));
        let (all_done, done_rx) = oneshot::channel();
        let mut all_done = Some(all_done);
        for i in 1..500u64 {
            let order = order.clone();
            let last = if i == 499 { all_done.take() } else { None };
            c.submit(
                vec![entry(i)],
                Box::new(move |r| {
                    if r.is_ok() {
                        order.lock().map(|mut o| o.push(i)).unwrap_or(());
                    }
                    if let Some(tx) = last {
                        let _ = tx.send(());
                    }
                }),
            );
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!first.is_finished(), "answered before its commit finished");
        let _ = open.send(());
        first.await.map_err(|_| CommitError::Stopped)??;
        done_rx.await.map_err(|_| CommitError::Stopped)?;
        let order = order.lock().map(|o| o.clone()).unwrap_or_default();
        assert_eq!(
            order,
            (1..500).collect::<Vec<u64>>(),
            "callbacks run in submission order"
        );
        let snap = store
            .load()
            .map_err(|e| CommitError::Failed(e.to_string()))?;
        assert_eq!(snap.entries.len(), 500);
        assert_eq!(
            c.stats().commits.load(Ordering::Relaxed),
            2,
            "499 callers shared one commit"
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_empty_batch_is_answered_without_touching_the_store() {
        // FailingStore fails every commit it sees: an empty batch must not reach it.
        let c = Committer::start(Arc::new(FailingStore));
        assert!(c.commit(Vec::new()).await.is_ok());
        assert_eq!(c.stats().commits.load(Ordering::Relaxed), 0);
        assert!(c.commit(vec![entry(1)]).await.is_err());
    }

    #[tokio::test]
    async fn a_failure_is_sticky() {
        let c = Committer::start(Arc::new(FailingStore));
        assert!(matches!(
            c.commit(vec![entry(1)]).await,
            Err(CommitError::Failed(_))
        ));
        assert!(c.has_failed());
        assert!(matches!(
            c.commit(vec![entry(2)]).await,
            Err(CommitError::Failed(_))
        ));
    }
}
