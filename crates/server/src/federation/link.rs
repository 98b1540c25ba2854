//! Links: a declared queue forwarded to a peer node, as swpt_stomp's `swpt-client PEER
//! QUEUE` does it.
//!
//! A link leases messages from its queue (at most `buffer` held at a time), makes each
//! what the peer takes ([`check_outbound`]: its type, and a creditors agent's creditor ids
//! moved into the subnet the peer knows it by), and sends it over mutual TLS to a server
//! of the peer picked at random from its `stomp.toml`, opening with a `STOMP` frame as the
//! original does. A `RECEIPT` confirms the message it names and every one before: those
//! are acked in the queue, and only then gone. A message the peer must not get goes to the
//! queue's dead-letter queue (the original drops it).
//!
//! When the connection fails the link keeps what it holds, connects again (to a server
//! picked again) after a pause that doubles up to 15 s (so that a backlog moves within
//! seconds of a peer's return), and sends what was not confirmed first, in order: at least
//! once. When it stops (its peer deactivated, the
//! queue gone, the node stopping) what it holds goes back to the queue, in place.
//!
//! A fetch task of its own takes messages from the queue (never cancelled in the middle of
//! a receive, which would strand leases): the connection gives it room as receipts come.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use trunkline_broker::{Access, Backend, Delivery, Issuer, Principal, ReceiveOptions, Settle};
use trunkline_client::stomp::{Confirmation, StompClient, StompOptions};
use trunkline_federation::{check_outbound, NodeData, NodeDatabase, PeerData};
use trunkline_stomp::ClientConfig;

use crate::state::now_ms;

/// The label of a declared queue naming the peer it is forwarded to.
pub const PEER_LABEL: &str = "federation.peer";

/// How long a link holds a message it leased. Past it the message would be taken again;
/// a link holds its messages until confirmed, however long the peer is away, and a node
/// that stops gives them all back, so this is only a bound on what a link stuck for good
/// keeps from the queue.
const LEASE_MS: u64 = 12 * 3600 * 1000;

/// Longest pause between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// What every link of a node shares.
pub struct LinkEnv {
    pub db: NodeDatabase,
    pub node: NodeData,
    /// Our certificate and key (presented with the peer's `sub-ca.crt`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Most messages sent and not confirmed.
    pub buffer: usize,
}

/// One link's numbers, for `/metrics` and logs.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub sent: AtomicU64,
    pub confirmed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub connects: AtomicU64,
    /// 1 while connected.
    pub connected: AtomicU64,
}

/// Why a link stopped for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkEnd {
    #[error("stopped")]
    Stopped,
    #[error("peer {0} is not an active peer")]
    NotActive(String),
}

/// A message taken from a link's queue, until settled.
#[derive(Debug, Clone)]
pub struct Item {
    /// What settles it.
    pub receipt: String,
    pub id: u64,
    pub headers: Vec<(String, String)>,
    /// `None`: JSON.
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Item {
    /// Its SMP type: the `type` header, else the body's `type`.
    pub fn message_type(&self) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == "type")
            .map(|(_, v)| v.clone())
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&self.body)
                    .ok()?
                    .get("type")?
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    }
}

/// Where a link's messages come from: the node's own queue ([`BrokerSource`]), or a
/// node's HTTP API for a link run on its own (`trunkline federation link`).
pub trait Source: Send + Sync + 'static {
    /// At most `max` messages, leased to this link, waiting while there are none until
    /// `stop`. Never given up in the middle: what it took is returned.
    fn take(
        &self,
        max: usize,
        stop: &CancellationToken,
    ) -> impl std::future::Future<Output = Result<Vec<Item>, String>> + Send;

    /// Acks, gives back (`Nack { requeue: true }`) or dead-letters what was taken.
    fn settle(
        &self,
        receipts: Vec<String>,
        how: Settle,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// A queue of this node, read as a principal that may read that queue only.
pub struct BrokerSource {
    broker: Arc<dyn Backend>,
    who: Principal,
    queue: String,
    _issuer: Issuer,
}

impl BrokerSource {
    pub fn new(broker: Arc<dyn Backend>, peer_id: &str, queue: &str) -> Self {
        let issuer = Issuer::new(Access::limited(
            &format!("link:{peer_id}"),
            &[],
            &[queue.to_owned()],
        ));
        BrokerSource {
            broker,
            who: issuer.principal(),
            queue: queue.to_owned(),
            _issuer: issuer,
        }
    }
}

impl Source for BrokerSource {
    async fn take(&self, max: usize, stop: &CancellationToken) -> Result<Vec<Item>, String> {
        let opts = ReceiveOptions::leased(max, LEASE_MS);
        let got = self
            .broker
            .receive_wait(&self.who, &self.queue, opts, None, stop, &now_ms)
            .await
            .map_err(|e| e.to_string())?;
        Ok(got
            .into_iter()
            .filter_map(|d: Delivery| {
                Some(Item {
                    receipt: d.receipt?,
                    id: d.id,
                    headers: d.data.headers.clone(),
                    content_type: d.data.content_type.clone(),
                    body: d.data.body.clone(),
                })
            })
            .collect())
    }

    async fn settle(&self, receipts: Vec<String>, how: Settle) -> Result<(), String> {
        self.broker
            .settle(&self.who, &receipts, how, now_ms())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// A message leased from the queue and made ready for the peer.
struct Held {
    receipt: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// Runs the link of `queue` to `peer_id`, taking its messages from `source`, until `stop`
/// or until the peer is no longer active; gives back what it holds before returning.
pub async fn run<S: Source>(
    env: Arc<LinkEnv>,
    source: Arc<S>,
    peer_id: String,
    queue: String,
    stats: Arc<LinkStats>,
    stop: CancellationToken,
) -> LinkEnd {
    let room = Arc::new(Semaphore::new(env.buffer));
    let (fetched_tx, mut fetched) = mpsc::channel(1);
    let fetch_stop = stop.child_token();
    let fetcher = tokio::spawn(fetch(
        source.clone(),
        queue.clone(),
        room.clone(),
        fetched_tx,
        fetch_stop.clone(),
    ));
    let mut held: VecDeque<Held> = VecDeque::new();
    let mut backoff = Duration::from_secs(1);
    let end = loop {
        if stop.is_cancelled() {
            break LinkEnd::Stopped;
        }
        let peer = match env.db.peer(&peer_id, true) {
            Ok(Some(p)) => p,
            Ok(None) => break LinkEnd::NotActive(peer_id.clone()),
            Err(e) => {
                tracing::warn!(peer = %peer_id, queue = %queue, cause = %e, "link: cannot read the peer's data");
                if pause(&stop, backoff).await {
                    break LinkEnd::Stopped;
                }
                continue;
            }
        };
        let started = Instant::now();
        let confirmed_before = stats.confirmed.load(Ordering::Relaxed);
        let mut s = Session {
            env: &env,
            source: &*source,
            peer: &peer,
            queue: &queue,
            held: &mut held,
            fetched: &mut fetched,
            room: &room,
            stats: &stats,
        };
        let outcome = s.run(&stop).await;
        stats.connected.store(0, Ordering::Relaxed);
        match outcome {
            Ok(()) => break LinkEnd::Stopped,
            Err(e) => {
                // A connection that lasted, or got something confirmed, resets the pause
                // (one that fails at once, or is refused by the peer, does not).
                let progressed = stats.confirmed.load(Ordering::Relaxed) > confirmed_before;
                if progressed || started.elapsed() > MAX_BACKOFF {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(peer = %peer_id, queue = %queue, cause = %e, retry_in_ms = backoff.as_millis() as u64, held = held.len(), "link: connection failed");
                if pause(&stop, backoff).await {
                    break LinkEnd::Stopped;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    fetch_stop.cancel();
    // Closed before waiting for the fetch task: one blocked handing over a batch gets it
    // back at once (and gives it back to the queue) instead of waiting for us forever.
    fetched.close();
    let _ = fetcher.await;
    // What was fetched and not yet taken, and what is held, goes back in place.
    let mut receipts: Vec<String> = held.drain(..).map(|h| h.receipt).collect();
    while let Ok(more) = fetched.try_recv() {
        receipts.extend(more.into_iter().map(|i: Item| i.receipt));
    }
    if !receipts.is_empty() {
        if let Err(e) = source
            .settle(receipts, Settle::Nack { requeue: true })
            .await
        {
            tracing::warn!(queue = %queue, cause = %e, "link: could not give back what it held; its leases will end");
        }
    }
    tracing::info!(peer = %peer_id, queue = %queue, why = %end, "link stopped");
    end
}

/// Sleeps `d`; true if `stop` came first.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    let jitter = Duration::from_millis(rand::random::<u64>() % (d.as_millis() as u64 / 4 + 1));
    tokio::select! {
        _ = tokio::time::sleep(d + jitter) => false,
        _ = stop.cancelled() => true,
    }
}

/// Takes messages from the queue while there is room, and hands them over.
async fn fetch<S: Source>(
    source: Arc<S>,
    queue: String,
    room: Arc<Semaphore>,
    out: mpsc::Sender<Vec<Item>>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            p = room.acquire() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        first.forget();
        let mut n = 1;
        while let Ok(p) = room.try_acquire() {
            p.forget();
            n += 1;
        }
        let got = match source.take(n, &stop).await {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(queue = %queue, cause = %e, "link: cannot read its queue");
                room.add_permits(n);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        room.add_permits(n - got.len().min(n));
        if got.is_empty() {
            continue;
        }
        if let Err(mpsc::error::SendError(got)) = out.send(got).await {
            let receipts: Vec<String> = got.into_iter().map(|i| i.receipt).collect();
            let _ = source
                .settle(receipts, Settle::Nack { requeue: true })
                .await;
            return;
        }
    }
}

/// One connection of a link.
struct Session<'a, S> {
    env: &'a LinkEnv,
    source: &'a S,
    peer: &'a PeerData,
    queue: &'a str,
    held: &'a mut VecDeque<Held>,
    fetched: &'a mut mpsc::Receiver<Vec<Item>>,
    room: &'a Semaphore,
    stats: &'a LinkStats,
}

impl<S: Source> Session<'_, S> {
    async fn connect(&self) -> Result<StompClient, String> {
        let p = self.peer;
        let servers = &p.stomp.servers;
        let (host, port) = &servers[rand::random::<u64>() as usize % servers.len()];
        let connector = super::tls::connector(
            &self.env.cert,
            &self.env.key,
            &p.sub_cert,
            &p.root_cert,
            &p.node_id,
        )
        .map_err(|e| e.to_string())?;
        let addr = format!("{host}:{port}");
        let wait = Duration::from_secs(10);
        let tcp = tokio::time::timeout(wait, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| format!("{addr}: timed out"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        // No host name is checked (the peer is who its certificate names); the name only
        // goes out as SNI.
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .or_else(|_| rustls::pki_types::ServerName::try_from("peer"))
            .map_err(|e| e.to_string())?;
        let tls = tokio::time::timeout(wait, connector.connect(name, tcp))
            .await
            .map_err(|_| format!("{addr}: TLS timed out"))?
            .map_err(|e| format!("{addr}: TLS: {e}"))?;
        let opts = StompOptions {
            addr,
            session: ClientConfig {
                host: p.stomp.host.clone(),
                login: p.stomp.login.clone(),
                passcode: p.stomp.passcode.clone(),
                heartbeat_send_ms: 5000,
                heartbeat_recv_ms: 30_000,
                window: self.env.buffer,
                connect_timeout_ms: 10_000,
                stomp_frame: true,
            },
            tls: None,
            reconnect: false,
            max_backoff: MAX_BACKOFF,
        };
        StompClient::connect_over(Box::new(tls), opts)
            .await
            .map_err(|e| e.to_string())
    }

    async fn send(&self, client: &StompClient, h: &Held) -> Result<Confirmation, String> {
        let headers: Vec<(&str, &str)> = h
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let c = client
            .send(&self.peer.stomp.destination, &headers, h.body.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(c)
    }

    /// Connects, sends what is held, then what comes, until `stop` (`Ok`) or a failure.
    async fn run(&mut self, stop: &CancellationToken) -> Result<(), String> {
        let client = self.connect().await?;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        self.stats.connected.store(1, Ordering::Relaxed);
        tracing::info!(peer = %self.peer.node_id, queue = %self.queue, resending = self.held.len(), "link connected");
        let mut confirms: VecDeque<Confirmation> = VecDeque::new();
        for h in self.held.iter() {
            confirms.push_back(self.send(&client, h).await?);
        }
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    // Receipts still owed are not waited for: what they would confirm
                    // goes back to the queue and is sent again later.
                    drop(client);
                    return Ok(());
                }
                r = async { match confirms.front_mut() { Some(c) => c.await, None => std::future::pending().await } } => {
                    r.map_err(|e| e.to_string())?;
                    confirms.pop_front();
                    let mut n = 1;
                    // Everything already confirmed with it, in one ack.
                    while let Some(c) = confirms.front_mut() {
                        match futures::FutureExt::now_or_never(&mut *c) {
                            Some(r) => {
                                r.map_err(|e| e.to_string())?;
                                confirms.pop_front();
                                n += 1;
                            }
                            None => break,
                        }
                    }
                    self.confirmed(n).await;
                }
                got = self.fetched.recv() => {
                    let Some(got) = got else { return Ok(()) };
                    // Held first, sent then: what a failed send leaves unsent is held, and
                    // goes first on the next connection.
                    for d in got {
                        if let Some(h) = self.prepare(d).await {
                            self.held.push_back(h);
                        }
                    }
                    for h in self.held.iter().skip(confirms.len()) {
                        confirms.push_back(self.send(&client, h).await?);
                    }
                }
                // An idle link learns here that its connection is gone (heart-beats
                // stopped, the peer closed it), not at its next message.
                _ = client.closed() => return Err("the connection dropped".into()),
            }
        }
    }

    /// The oldest `n` held messages are confirmed: they leave the queue.
    async fn confirmed(&mut self, n: usize) {
        let receipts: Vec<String> = self.held.drain(..n).map(|h| h.receipt).collect();
        self.room.add_permits(n);
        self.stats.confirmed.fetch_add(n as u64, Ordering::Relaxed);
        if let Err(e) = self.source.settle(receipts, Settle::Ack).await {
            // They will be sent again once their lease ends: at least once.
            tracing::warn!(queue = %self.queue, cause = %e, "link: cannot ack what the peer confirmed");
        }
    }

    /// A leased message as the peer takes it; `None` (after dead-lettering it) for one
    /// the peer must not get.
    async fn prepare(&mut self, item: Item) -> Option<Held> {
        let content_type = item.content_type.as_deref().unwrap_or("application/json");
        match check_outbound(
            &self.env.node,
            self.peer,
            &item.message_type(),
            content_type,
            &item.body,
        ) {
            Ok(out) => Some(Held {
                receipt: item.receipt,
                headers: vec![
                    ("type".into(), out.message_type),
                    ("content-type".into(), "application/json".into()),
                    ("persistent".into(), "true".into()),
                ],
                body: Bytes::from(out.body),
            }),
            Err(why) => {
                tracing::error!(peer = %self.peer.node_id, queue = %self.queue, id = item.id, cause = %why, "link: a message the peer must not get goes to the dead-letter queue");
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.room.add_permits(1);
                let _ = self
                    .source
                    .settle(vec![item.receipt], Settle::Nack { requeue: false })
                    .await;
                None
            }
        }
    }
}
