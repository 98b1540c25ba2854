//! A STOMP 1.2 client that speaks standard STOMP, to Trunkline and to other brokers
//! (RabbitMQ's STOMP plugin, for one).
//!
//! [`StompClient::connect`] starts a task that owns the connection. [`StompClient::send`]
//! queues a message for that task (waiting only while its command queue is full) and
//! returns a [`Confirmation`] that resolves when the server's receipt covers the message;
//! the task holds messages back while the window of unconfirmed ones is full, so time a
//! message from its confirmation, not from `send` returning ([`StompClient::publish`] sends without one). If the
//! connection drops, the task reconnects with backoff, sends every unconfirmed message
//! again, and subscribes again: at least once.
//! An `ERROR` from the server (bad credentials, a refused message) is final.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use trunkline_proto::{encode, encode_heartbeat, Command, Decoder, Frame, Limits};
use trunkline_stomp::{ClientConfig, ClientEvent, ClientSession};

/// Why a STOMP operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StompClientError {
    /// The server sent `ERROR` (its `code` and `message`).
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The client was closed or gave up.
    #[error("the connection is closed")]
    Closed,
    /// The connection, once open, ended without an `ERROR` (and was not to be opened
    /// again).
    #[error("the connection dropped")]
    Dropped,
}

/// TLS settings: trust `ca_pem` for the server and optionally present a client certificate.
#[derive(Clone)]
pub struct TlsOptions {
    pub ca_pem: Vec<u8>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    /// Name to check the server's certificate against.
    pub server_name: String,
}

/// How to connect.
#[derive(Clone)]
pub struct StompOptions {
    /// `host:port`.
    pub addr: String,
    pub session: ClientConfig,
    pub tls: Option<TlsOptions>,
    /// Reconnect after a dropped connection (not after an `ERROR`).
    pub reconnect: bool,
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
}

impl StompOptions {
    pub fn new(
        addr: impl Into<String>,
        login: impl Into<String>,
        passcode: impl Into<String>,
    ) -> Self {
        StompOptions {
            addr: addr.into(),
            session: ClientConfig {
                login: Some(login.into()),
                passcode: Some(passcode.into()),
                ..ClientConfig::default()
            },
            tls: None,
            reconnect: true,
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// A message from a subscription.
#[derive(Debug, Clone)]
pub struct StompMessage {
    pub destination: String,
    /// Headers in wire order (names of the common ones are constants, not allocated).
    pub headers: Vec<(std::borrow::Cow<'static, str>, String)>,
    pub body: Bytes,
    /// The id to pass to [`StompClient::ack`] (client ack modes).
    pub ack: Option<String>,
    pub redelivered: bool,
}

impl StompMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Resolves when the server confirmed a send.
pub struct Confirmation(oneshot::Receiver<Result<(), StompClientError>>);

impl std::future::Future for Confirmation {
    type Output = Result<(), StompClientError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StompClientError::Closed)))
    }
}

struct Sub {
    frame: Frame,
    tx: mpsc::Sender<StompMessage>,
}

enum Cmd {
    Send {
        destination: String,
        headers: Vec<(String, String)>,
        body: Bytes,
        done: oneshot::Sender<Result<(), StompClientError>>,
    },
    Subscribe {
        id: String,
        frame: Frame,
        tx: mpsc::Sender<StompMessage>,
    },
    Frame(Frame),
    Disconnect(oneshot::Sender<Result<(), StompClientError>>),
}

/// A STOMP client. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct StompClient {
    cmds: mpsc::Sender<Cmd>,
    next_sub: Arc<std::sync::atomic::AtomicU64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A byte stream a connection runs over (TCP, TLS, …).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn open(opts: &StompOptions) -> Result<Box<dyn Stream>, StompClientError> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&opts.addr),
    )
    .await
    .map_err(|_| StompClientError::Connect(format!("{}: timed out", opts.addr)))?
    .map_err(|e| StompClientError::Connect(format!("{}: {e}", opts.addr)))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &opts.tls else {
        return Ok(Box::new(tcp));
    };
    let bad = |e: String| StompClientError::Connect(format!("TLS: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut tls.ca_pem.as_slice()) {
        roots
            .add(c.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = rustls_pemfile::certs(&mut cert.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            let key = rustls_pemfile::private_key(&mut key.as_slice())
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| bad("no private key in the PEM".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad(e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
        .map_err(|e| bad(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| bad(e.to_string()))?;
    Ok(Box::new(stream))
}

impl StompClient {
    /// Connects (waiting for `CONNECTED`) and starts the connection task.
    pub async fn connect(opts: StompOptions) -> Result<StompClient, StompClientError> {
        let stream = open(&opts).await?;
        Self::connect_over(stream, opts).await
    }

    /// Speaks STOMP over `stream`, a connection already open (and secured) by the caller
    /// (waiting for `CONNECTED`). `opts.addr` and `opts.tls` are used only to reconnect:
    /// set `opts.reconnect` to false where only the caller can open a new connection.
    pub async fn connect_over(
        stream: Box<dyn Stream>,
        opts: StompOptions,
    ) -> Result<StompClient, StompClientError> {
        let (cmds, rx) = mpsc::channel(256);
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(run(opts, stream, rx, ready_tx));
        ready_rx.await.unwrap_or(Err(StompClientError::Closed))?;
        Ok(StompClient {
            cmds,
            next_sub: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        })
    }

    /// Queues a message for sending (waiting only while the connection task's command
    /// queue is full; the task itself keeps at most the window unconfirmed). Await the
    /// returned [`Confirmation`] to know it is durable.
    pub async fn send(
        &self,
        destination: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Confirmation, StompClientError> {
        let (done, rx) = oneshot::channel();
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.cmds
            .send(Cmd::Send {
                destination: destination.to_owned(),
                headers,
                body: body.into(),
                done,
            })
            .await
            .map_err(|_| StompClientError::Closed)?;
        Ok(Confirmation(rx))
    }

    /// Sends a message without a receipt: fire and forget, like a NATS core publish.
    /// Nothing confirms it, it takes no room in the window, and it is not sent again after
    /// a reconnect (at most once). It waits while the connection has 1 MiB waiting to be
    /// written. A later [`StompClient::send`]'s confirmation covers it
    /// too on a server that confirms in frame order, as Trunkline does.
    pub async fn publish(
        &self,
        destination: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<(), StompClientError> {
        let mut frame = Frame::new(Command::Send).header("destination", destination);
        for (k, v) in headers {
            frame = frame.header(k.to_string(), *v);
        }
        self.cmds
            .send(Cmd::Frame(frame.body(body)))
            .await
            .map_err(|_| StompClientError::Closed)
    }

    /// Subscribes; messages arrive on the returned channel. `ack` is `auto`, `client` or
    /// `client-individual`.
    ///
    /// The channel holds twice `prefetch` (default 100) messages. When it is full the
    /// connection stops reading from the server until the channel is read: receipts and
    /// other subscriptions' messages wait behind it. With a client ack mode and a
    /// `prefetch`, the server sends at most that many unacknowledged messages, so the
    /// channel never fills; otherwise (`auto`, a live `/topic`, or a server whose own
    /// prefetch is larger) read the channel from a task of its own if the same connection
    /// also waits for send confirmations.
    pub async fn subscribe(
        &self,
        destination: &str,
        ack: &str,
        prefetch: Option<usize>,
    ) -> Result<mpsc::Receiver<StompMessage>, StompClientError> {
        let n = self
            .next_sub
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("sub-{n}");
        let mut frame = Frame::new(Command::Subscribe)
            .header("id", id.clone())
            .header("destination", destination)
            .header("ack", ack);
        if let Some(p) = prefetch {
            frame = frame.header("prefetch-count", p.to_string());
        }
        let (tx, rx) = mpsc::channel(prefetch.unwrap_or(100).max(1) * 2);
        self.cmds
            .send(Cmd::Subscribe { id, frame, tx })
            .await
            .map_err(|_| StompClientError::Closed)?;
        Ok(rx)
    }

    /// Acknowledges a message (client ack modes).
    pub async fn ack(&self, m: &StompMessage) -> Result<(), StompClientError> {
        self.settle(Command::Ack, m).await
    }

    /// Gives a message back.
    pub async fn nack(&self, m: &StompMessage) -> Result<(), StompClientError> {
        self.settle(Command::Nack, m).await
    }

    async fn settle(&self, cmd: Command, m: &StompMessage) -> Result<(), StompClientError> {
        let Some(id) = &m.ack else { return Ok(()) };
        self.cmds
            .send(Cmd::Frame(Frame::new(cmd).header("id", id.clone())))
            .await
            .map_err(|_| StompClientError::Closed)
    }

    /// Resolves once the connection is over for good (it failed, dropped and is not
    /// opened again, or was closed): a caller that has nothing in flight learns it here.
    pub async fn closed(&self) {
        self.cmds.closed().await
    }

    /// Waits until every message sent is confirmed, then disconnects.
    pub async fn disconnect(self) -> Result<(), StompClientError> {
        let (done, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Disconnect(done))
            .await
            .map_err(|_| StompClientError::Closed)?;
        rx.await.unwrap_or(Err(StompClientError::Closed))
    }
}

/// Encoded bytes waiting for the socket past which no more commands are taken.
const MAX_BUFFERED: usize = 1 << 20;

type Pending = std::collections::BTreeMap<u64, oneshot::Sender<Result<(), StompClientError>>>;

/// The connection task: one connection at a time, reconnecting while allowed.
async fn run(
    opts: StompOptions,
    first: Box<dyn Stream>,
    mut cmds: mpsc::Receiver<Cmd>,
    ready: oneshot::Sender<Result<(), StompClientError>>,
) {
    let mut ready = Some(ready);
    let mut pending: Pending = Default::default();
    let mut subs: HashMap<String, Sub> = HashMap::new();
    let mut session = ClientSession::new(opts.session.clone(), now_ms());
    let mut stream = Some(first);
    let mut backoff = Duration::from_millis(100);
    let mut disconnecting: Option<oneshot::Sender<Result<(), StompClientError>>> = None;
    loop {
        let s = match stream.take() {
            Some(s) => s,
            None => match open(&opts).await {
                Ok(s) => s,
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(opts.max_backoff);
                    continue;
                }
            },
        };
        // Subscriptions are made again on every connection.
        for sub in subs.values() {
            session.frame(sub.frame.clone());
        }
        let outcome = drive(
            s,
            &mut session,
            &mut cmds,
            &mut pending,
            &mut subs,
            &mut ready,
            &mut disconnecting,
        )
        .await;
        match outcome {
            Outcome::Finished => return,
            Outcome::Failed(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e.clone()));
                }
                for (_, done) in std::mem::take(&mut pending) {
                    let _ = done.send(Err(e.clone()));
                }
                if let Some(d) = disconnecting.take() {
                    let _ = d.send(Err(e));
                }
                return;
            }
            Outcome::Dropped => {
                if !opts.reconnect || ready.is_some() {
                    let e = if ready.is_some() {
                        StompClientError::Connect("the connection dropped".into())
                    } else {
                        StompClientError::Dropped
                    };
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e.clone()));
                    }
                    for (_, done) in std::mem::take(&mut pending) {
                        let _ = done.send(Err(e.clone()));
                    }
                    return;
                }
                let (unconfirmed, next) = session.take_unconfirmed();
                session = ClientSession::resume(opts.session.clone(), now_ms(), unconfirmed, next);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(opts.max_backoff);
            }
        }
    }
}

enum Outcome {
    Finished,
    Failed(StompClientError),
    Dropped,
}

async fn drive(
    stream: Box<dyn Stream>,
    session: &mut ClientSession,
    cmds: &mut mpsc::Receiver<Cmd>,
    pending: &mut Pending,
    subs: &mut HashMap<String, Sub>,
    ready: &mut Option<oneshot::Sender<Result<(), StompClientError>>>,
    disconnecting: &mut Option<oneshot::Sender<Result<(), StompClientError>>>,
) -> Outcome {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut decoder = Decoder::new(Limits::default());
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    loop {
        let now = now_ms();
        while let Some(f) = session.poll_transmit(now) {
            match f {
                Some(f) => {
                    if encode(&f, &mut wbuf).is_err() {
                        return Outcome::Failed(StompClientError::Refused {
                            code: "unencodable".into(),
                            message: "a frame cannot be encoded".into(),
                        });
                    }
                }
                None => encode_heartbeat(&mut wbuf),
            }
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                ClientEvent::Connected { .. } => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                }
                ClientEvent::Confirmed { upto } => {
                    let rest = pending.split_off(&(upto + 1));
                    for (_, done) in std::mem::replace(pending, rest) {
                        let _ = done.send(Ok(()));
                    }
                }
                ClientEvent::Message(f) => {
                    let sub = f.get("subscription").unwrap_or_default().to_owned();
                    let m = StompMessage {
                        destination: f.get("destination").unwrap_or_default().to_owned(),
                        ack: f.get("ack").map(str::to_owned),
                        redelivered: f.get("redelivered") == Some("true"),
                        headers: f.headers,
                        body: f.body,
                    };
                    if let Some(s) = subs.get(&sub) {
                        // Back-pressure: a slow reader of the channel slows this connection.
                        let _ = s.tx.send(m).await;
                    }
                }
                ClientEvent::Failed { code, message } => {
                    return Outcome::Failed(StompClientError::Refused { code, message })
                }
                ClientEvent::Disconnected => {
                    if let Some(d) = disconnecting.take() {
                        let _ = d.send(Ok(()));
                    }
                    let _ = wr.shutdown().await;
                    return Outcome::Finished;
                }
            }
        }
        let timeout = session.poll_timeout().map(|t| {
            tokio::time::Instant::now() + Duration::from_millis(t.saturating_sub(now_ms()))
        });
        // Frames without receipts (publish, acks) take no room in the window: the write
        // buffer bounds them, so that a server that does not read holds the caller back.
        let can_take = session.is_connected()
            && session.can_send()
            && disconnecting.is_none()
            && wbuf.len() < MAX_BUFFERED;
        tokio::select! {
            r = rd.read_buf(&mut rbuf) => match r {
                Ok(0) | Err(_) => return Outcome::Dropped,
                Ok(_) => loop {
                    match decoder.decode(&mut rbuf) {
                        Ok(Some(item)) => session.handle_item(now_ms(), item),
                        Ok(None) => break,
                        Err(e) => return Outcome::Failed(StompClientError::Refused { code: e.code().into(), message: e.to_string() }),
                    }
                },
            },
            r = wr.write_buf(&mut wbuf), if !wbuf.is_empty() => {
                if r.is_err() {
                    return Outcome::Dropped;
                }
            }
            cmd = cmds.recv(), if can_take => match cmd {
                None => {
                    let _ = wr.shutdown().await;
                    return Outcome::Finished;
                }
                Some(Cmd::Send { destination, headers, body, done }) => {
                    if let Some(seq) = session.send(&destination, &headers, body) {
                        pending.insert(seq, done);
                    }
                }
                Some(Cmd::Subscribe { id, frame, tx }) => {
                    session.frame(frame.clone());
                    subs.insert(id, Sub { frame, tx });
                }
                Some(Cmd::Frame(f)) => session.frame(f),
                Some(Cmd::Disconnect(done)) => {
                    session.disconnect();
                    *disconnecting = Some(done);
                }
            },
            _ = async { match timeout { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                session.handle_timeout(now_ms());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers CONNECT and then never reads again.
    async fn deaf_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            while !buf.contains(&0) {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "closed before CONNECT");
                buf.extend_from_slice(&chunk[..n]);
            }
            s.write_all(b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0")
                .await
                .expect("write");
            // Hold the socket open, unread.
            std::future::pending::<()>().await;
        });
        addr
    }

    #[tokio::test]
    async fn publish_waits_when_the_server_does_not_read() {
        let addr = deaf_server().await;
        let c = StompClient::connect(StompOptions::new(addr, "me", "secret"))
            .await
            .expect("connect");
        let body = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut handed = 0u64;
        // 64 MiB in all: far more than the kernel's socket buffers, the command channel
        // and the write buffer hold together.
        for _ in 0..1024 {
            let sent = tokio::time::timeout(
                Duration::from_secs(2),
                c.publish("/topic/t", &[], body.clone()),
            )
            .await;
            match sent {
                Ok(r) => r.expect("publish"),
                Err(_) => break,
            }
            handed += 1;
        }
        assert!(
            handed < 1024,
            "publish() kept taking messages the server does not read: the client buffers without bound"
        );
    }
}
