//! The accept loop: connection caps, a header timeout, and graceful shutdown.
//!
//! `axum::serve` has no header-read timeout, so a client that opens a connection and
//! trickles its headers would hold a task forever; hyper's own HTTP/1 builder has one.
//!
//! Connections are capped per listener and, on the public listener, per source address,
//! so that one address cannot take the listener from everyone else. Past the listener's
//! cap a few more connections are accepted into a reserve served by a router of its own
//! (`/healthz` and a 503 for everything else): health checks keep working while slow
//! clients hold every connection, and callers learn at once that the node is full instead
//! of waiting unanswered in the kernel's accept queue. Past the reserve, and past the
//! per-address cap, a connection gets a 503 written straight to the socket and is closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use trunkline_api::{ErrorBody, ErrorCode};

/// The next connection; `None` at shutdown. Accept errors (out of file descriptors and
/// the like) back off instead of spinning.
pub(crate) async fn accept_next(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    name: &'static str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(e) => {
                    tracing::warn!(cause = %e, listener = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// What one HTTP listener may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Open connections from one source address; `None` for no cap of its own (the
    /// backend listener, whose callers are a few known backends).
    pub per_address: Option<usize>,
    pub header_timeout: Duration,
}

/// Connections accepted past `max_connections`, served by the reserve router.
pub const RESERVE: usize = 32;

/// Open connections per source address. An address has an entry only while it has
/// connections open, so the table holds at most as many entries as there are connections.
#[derive(Debug, Default)]
pub(crate) struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// The place a connection holds in its address's count, for as long as any holder keeps
/// it: the connection task, and a WebSocket session the connection was upgraded to (which
/// outlives the HTTP connection and must still count against its address).
#[derive(Clone)]
pub struct ConnectionSlot {
    _held: Arc<AddressSlot>,
}

/// One open connection from `ip`; counted down when dropped.
pub(crate) struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Plain counters: one left behind by a panic is still usable.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one more connection from `ip`, unless it already has `max` open.
    pub(crate) fn enter(
        table: &Arc<PerAddress>,
        ip: IpAddr,
        max: Option<usize>,
    ) -> Option<AddressSlot> {
        let ip = trunkline_auth::throttle::source(ip);
        let mut open = table.open();
        let n = open.entry(ip).or_insert(0);
        if max.is_some_and(|max| *n >= max) {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open();
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The answer written straight to a connection that is over a cap.
fn refusal(message: &str) -> Vec<u8> {
    let code = ErrorCode::TooManyConnections;
    let body = serde_json::to_string(&ErrorBody::new(code, message)).unwrap_or_default();
    format!(
        "HTTP/1.1 {} Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        code.status(),
        body.len()
    )
    .into_bytes()
}

/// Writes `answer` if the socket takes it at once (a new socket's send buffer is empty,
/// so it does) and closes: a refused connection costs no task and no waiting.
fn refuse(stream: TcpStream, answer: &[u8]) {
    let _ = stream.try_write(answer);
}

/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains connections.
/// Connections past `limits.max_connections` get `reserve` instead (see the module docs).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    reserve: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    name: &'static str,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let reserve_permits = Arc::new(Semaphore::new(RESERVE));
    let per_address = Arc::new(PerAddress::default());
    let address_full = refusal("too many connections from your address; retry later");
    let listener_full = refusal("the node holds as many connections as it may; retry later");
    let connections = TaskTracker::new();
    while let Some((stream, peer)) = accept_next(&listener, &shutdown, name).await {
        let Some(slot) = PerAddress::enter(&per_address, peer.ip(), limits.per_address) else {
            tracing::debug!(peer = %peer, listener = name, "connection refused: per-address cap");
            refuse(stream, &address_full);
            continue;
        };
        let (permit, app, keep_alive) = match permits.clone().try_acquire_owned() {
            Ok(p) => (p, &app, true),
            Err(_) => match reserve_permits.clone().try_acquire_owned() {
                Ok(p) => (p, &reserve, false),
                Err(_) => {
                    tracing::debug!(peer = %peer, listener = name, "connection refused: listener full");
                    refuse(stream, &listener_full);
                    continue;
                }
            },
        };
        // Handlers that count failed logins by address read it as `ConnectInfo`; an upgrade
        // to a WebSocket session keeps the connection's place in its address's count.
        let slot = ConnectionSlot {
            _held: Arc::new(slot),
        };
        let held = slot.clone();
        let svc = app
            .clone()
            .map_request(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(held.clone());
                req
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(keep_alive);
        // With upgrades: `GET /ws` turns the connection into a WebSocket session (which
        // watches the same shutdown token itself).
        let conn = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    // Finish the request under way, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(cause = %e, peer = %peer, listener = name, "connection ended with an error");
            }
            drop(permit);
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "connections still open after the drain period; closing them"
        );
    }
}
