//! The server side of one STOMP connection.
//!
//! States: waiting for `CONNECT` (within `connect_timeout_ms`), authenticating (the driver
//! checks the credentials), connected, and closing (an `ERROR` or the last `RECEIPT` is on
//! its way and then the driver closes the socket).
//!
//! Every frame that has an effect the client may wait for (`SEND`, `ACK`, `NACK`,
//! `SUBSCRIBE`, and any frame with a `receipt` header) becomes an *operation* with a number.
//! Operations are confirmed by the driver, possibly out of order; receipts are sent in
//! operation order, each once every earlier operation is confirmed. While `buffer`
//! operations are unconfirmed the session asks the driver to stop reading
//! ([`ServerSession::wants_read`]), which bounds what one connection can make the node hold.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use trunkline_proto::{Command, Frame, Item};

use crate::destination::Destination;

/// Settings of the server side.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How often the server can send heart-beats, in ms (0: never).
    pub heartbeat_send_ms: u64,
    /// How often the server wants to hear from the client, in ms (0: no need).
    pub heartbeat_recv_ms: u64,
    /// Time allowed between the connection opening and `CONNECT`.
    pub connect_timeout_ms: u64,
    /// Operations (sends, acks, …) awaiting confirmation before reading pauses.
    pub buffer: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
    /// Most open transactions per connection, and frames per transaction.
    pub max_transactions: usize,
    pub max_transaction_frames: usize,
    /// Most messages a queue subscription may have unacknowledged (its `prefetch-count`
    /// is capped at this, and this is the default).
    pub max_prefetch: usize,
    /// The `server` header of `CONNECTED`.
    pub server_name: String,
    /// Send one `RECEIPT` for a run of operations confirmed together, the newest: it
    /// confirms every one before it too (as swpt_stomp's peers read receipts). Off: one
    /// per operation that asked, as STOMP 1.2 says.
    pub cumulative_receipts: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            heartbeat_send_ms: 10_000,
            heartbeat_recv_ms: 10_000,
            connect_timeout_ms: 10_000,
            buffer: 100,
            max_subscriptions: 100,
            max_transactions: 16,
            max_transaction_frames: 1000,
            max_prefetch: 100,
            server_name: concat!("trunkline/", env!("CARGO_PKG_VERSION")).to_owned(),
            cumulative_receipts: false,
        }
    }
}

/// How a subscription's messages are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Acknowledged as sent (at most once).
    Auto,
    /// `ACK` confirms this message and every earlier one of the subscription.
    Client,
    /// `ACK` confirms this message only.
    ClientIndividual,
}

/// A refusal: the `ERROR` frame's stable `code` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StompError {
    pub code: &'static str,
    pub message: String,
}

impl StompError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        StompError {
            code,
            message: message.into(),
        }
    }
}

/// What the driver must do for the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Check credentials; answer with [`ServerSession::authenticated`].
    Authenticate {
        login: Option<String>,
        passcode: Option<String>,
    },
    /// Publish durably; answer with [`ServerSession::complete`]`(op, …)`.
    Publish {
        op: u64,
        destination: Destination,
        body: Bytes,
        content_type: Option<String>,
        headers: Vec<(String, String)>,
    },
    /// Publish the `SEND`s of a committed transaction atomically (all or none); answer
    /// with `complete(op, …)`.
    PublishBatch { op: u64, items: Vec<PublishItem> },
    /// Start a subscription; answer with `complete(op, …)`.
    Subscribe {
        op: u64,
        id: String,
        destination: Destination,
        ack: AckMode,
    },
    /// Stop a subscription (its unacknowledged messages go back to their queue).
    Unsubscribe { id: String, unacked: Vec<String> },
    /// A queue subscription has room for `max` more messages: fetch up to that many,
    /// waiting for some if none are ready, and hand them over with
    /// [`ServerSession::deliver`].
    Fetch { id: String, max: usize },
    /// Acknowledge (or give back) deliveries by their broker receipts; answer with
    /// `complete(op, …)`.
    Settle {
        op: u64,
        receipts: Vec<String>,
        ack: bool,
    },
    /// Flush what is queued for sending and close the connection. Unacknowledged
    /// deliveries in `unacked` go back to their queues.
    Close { unacked: Vec<String> },
}

/// One message of a [`Event::PublishBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct PublishItem {
    pub destination: Destination,
    pub body: Bytes,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// A message for a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub message_id: u64,
    /// The `destination` header of the `MESSAGE`.
    pub destination: String,
    pub body: Bytes,
    pub content_type: Option<String>,
    pub headers: Vec<(Cow<'static, str>, String)>,
    pub redelivered: bool,
    /// The broker's receipt for a leased delivery (client ack modes); `None` when the
    /// delivery needs no acknowledgement.
    pub receipt: Option<String>,
}

/// What to write to the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Frame(Frame),
    HeartBeat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingConnect,
    Authenticating,
    Connected,
    Closing,
}

#[derive(Debug)]
struct Subscription {
    destination: Destination,
    ack: AckMode,
    prefetch: usize,
    /// Broker receipts of delivered, unacknowledged messages, oldest first.
    unacked: VecDeque<String>,
    /// A fetch is under way.
    fetching: bool,
    /// Confirmed by the driver (subscriptions start after `complete`).
    started: bool,
}

#[derive(Debug)]
struct Pending {
    op: u64,
    receipt: Option<String>,
    done: bool,
    /// Close once this receipt is sent (`DISCONNECT`).
    then_close: bool,
}

/// Server side of one connection. See the module docs.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    state: State,
    opened: u64,
    last_recv: u64,
    last_sent: u64,
    /// Negotiated intervals (0 = off): we send every `send_every`, expect every `recv_every`.
    send_every: u64,
    recv_every: u64,
    next_op: u64,
    pending: VecDeque<Pending>,
    /// Publishing operations not yet confirmed (what `buffer` bounds).
    unconfirmed: usize,
    subscriptions: HashMap<String, Subscription>,
    /// Which subscription a delivery's ack id belongs to.
    ack_owner: HashMap<String, String>,
    transactions: HashMap<String, Vec<Frame>>,
    transmit: VecDeque<Outgoing>,
    events: VecDeque<Event>,
    client_heartbeat: (u64, u64),
    session_id: String,
    /// Subscribe operations awaiting confirmation, by operation.
    subscribe_ops: HashMap<u64, String>,
    /// `NACK`s not settled yet, by operation, with their subscription: it fetches again
    /// once they are.
    nack_ops: HashMap<u64, String>,
    /// `Event::Close` was emitted.
    closed: bool,
}

fn header_u64_pair(v: Option<&str>) -> Option<(u64, u64)> {
    let v = v?;
    let (a, b) = v.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Headers a publisher may not pass on to consumers (the server sets these).
const RESERVED: &[&str] = &[
    "destination",
    "receipt",
    "transaction",
    "content-length",
    "content-type",
    "message-id",
    "subscription",
    "ack",
    "redelivered",
    // Set by the server on delivery; a publisher must not be able to forge them.
    "sender",
    "topic",
];

impl ServerSession {
    /// A session for a connection opened at `now` (ms).
    pub fn new(config: ServerConfig, now: u64) -> Self {
        ServerSession {
            config,
            state: State::AwaitingConnect,
            opened: now,
            last_recv: now,
            last_sent: now,
            send_every: 0,
            recv_every: 0,
            next_op: 0,
            pending: VecDeque::new(),
            unconfirmed: 0,
            subscriptions: HashMap::new(),
            ack_owner: HashMap::new(),
            transactions: HashMap::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            client_heartbeat: (0, 0),
            session_id: String::new(),
            subscribe_ops: HashMap::new(),
            nack_ops: HashMap::new(),
            closed: false,
        }
    }

    /// Sets the id reported in `CONNECTED` (the driver's connection id).
    pub fn set_session_id(&mut self, id: impl Into<String>) {
        self.session_id = id.into();
    }

    /// True while the driver should read more from the socket.
    pub fn wants_read(&self) -> bool {
        match self.state {
            State::AwaitingConnect => true,
            State::Connected => self.unconfirmed < self.config.buffer,
            State::Authenticating | State::Closing => false,
        }
    }

    /// True once the session is done: the driver flushes what is queued and closes. (After
    /// a `DISCONNECT` with a receipt the session stops reading but is not done until that
    /// receipt is out.)
    pub fn is_closing(&self) -> bool {
        self.closed
    }

    /// The next thing to write, if any.
    pub fn poll_transmit(&mut self, now: u64) -> Option<Outgoing> {
        if self.config.cumulative_receipts {
            self.flush_receipts();
        }
        let out = self.transmit.pop_front()?;
        self.last_sent = now;
        Some(out)
    }

    /// The next thing for the driver to do, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`ServerSession::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::AwaitingConnect => Some(self.opened + self.config.connect_timeout_ms),
            State::Connected => {
                let send = (self.send_every > 0).then(|| self.last_sent + self.send_every);
                let recv = (self.recv_every > 0).then(|| self.last_recv + self.recv_deadline());
                match (send, recv) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::Authenticating | State::Closing => None,
        }
    }

    /// Silence tolerated from the client: twice the interval plus network slack.
    fn recv_deadline(&self) -> u64 {
        self.recv_every * 2 + 1000
    }

    /// Handles the passing of time: heart-beats to send, a client gone silent, a
    /// `CONNECT` that never came.
    pub fn handle_timeout(&mut self, now: u64) {
        match self.state {
            State::AwaitingConnect if now >= self.opened + self.config.connect_timeout_ms => {
                self.fail(
                    StompError::new("request_timeout", "no CONNECT frame in time"),
                    None,
                );
            }
            State::Connected => {
                if self.recv_every > 0 && now >= self.last_recv + self.recv_deadline() {
                    self.fail(
                        StompError::new(
                            "heartbeat_timeout",
                            format!("nothing received for {} ms", now - self.last_recv),
                        ),
                        None,
                    );
                    return;
                }
                if self.send_every > 0
                    && now >= self.last_sent + self.send_every
                    && self.transmit.is_empty()
                {
                    self.transmit.push_back(Outgoing::HeartBeat);
                }
            }
            _ => {}
        }
    }

    /// Handles one decoded item (a frame or a heart-beat) received at `now`.
    pub fn handle_item(&mut self, now: u64, item: Item) {
        self.last_recv = now;
        let Item::Frame(frame) = item else { return };
        match self.state {
            State::Closing => {}
            State::Authenticating => self.fail(
                StompError::new("protocol_error", "frame received before CONNECTED"),
                Some(&frame),
            ),
            State::AwaitingConnect => self.on_connect(frame),
            State::Connected => self.on_frame(frame, true),
        }
    }

    /// Reports a decode error of the connection's input: `ERROR` and close.
    pub fn decode_failed(&mut self, code: &'static str, message: String) {
        if self.state != State::Closing {
            self.fail(StompError::new(code, message), None);
        }
    }

    fn on_connect(&mut self, frame: Frame) {
        if !matches!(frame.command, Command::Connect | Command::Stomp) {
            return self.fail(
                StompError::new(
                    "protocol_error",
                    format!("expected CONNECT, got {}", frame.command.as_str()),
                ),
                Some(&frame),
            );
        }
        let versions = frame.get("accept-version").unwrap_or("1.0");
        if !versions.split(',').any(|v| v.trim() == "1.2") {
            return self.fail(
                StompError::new(
                    "unsupported_version",
                    format!("only STOMP 1.2 is supported; the client offers {versions}"),
                ),
                None,
            );
        }
        self.client_heartbeat = match frame.get("heart-beat") {
            None => (0, 0),
            Some(v) => match header_u64_pair(Some(v)) {
                Some(hb) => hb,
                None => {
                    return self.fail(
                        StompError::new("protocol_error", format!("bad heart-beat header `{v}`")),
                        None,
                    )
                }
            },
        };
        self.state = State::Authenticating;
        self.events.push_back(Event::Authenticate {
            login: frame.get("login").map(str::to_owned),
            passcode: frame.get("passcode").map(str::to_owned),
        });
    }

    /// The driver's answer to [`Event::Authenticate`]: the client id, or why not.
    pub fn authenticated(&mut self, now: u64, result: Result<String, StompError>) {
        if self.state != State::Authenticating {
            return;
        }
        let user = match result {
            Ok(user) => user,
            Err(e) => return self.fail(e, None),
        };
        let (cx, cy) = self.client_heartbeat;
        let (sx, sy) = (self.config.heartbeat_send_ms, self.config.heartbeat_recv_ms);
        self.send_every = if sx == 0 || cy == 0 { 0 } else { sx.max(cy) };
        self.recv_every = if cx == 0 || sy == 0 { 0 } else { cx.max(sy) };
        self.state = State::Connected;
        self.last_recv = now;
        let mut f = Frame::new(Command::Connected)
            .header("version", "1.2")
            .header("heart-beat", format!("{sx},{sy}"))
            .header("server", self.config.server_name.clone())
            .header("user-name", user);
        if !self.session_id.is_empty() {
            f = f.header("session", self.session_id.clone());
        }
        self.transmit.push_back(Outgoing::Frame(f));
    }

    fn new_op(&mut self, receipt: Option<String>, done: bool) -> u64 {
        self.next_op += 1;
        let op = self.next_op;
        if !done {
            self.unconfirmed += 1;
        }
        self.pending.push_back(Pending {
            op,
            receipt,
            done,
            then_close: false,
        });
        op
    }

    fn on_frame(&mut self, frame: Frame, may_transact: bool) {
        let receipt = frame.get("receipt").map(str::to_owned);
        if may_transact {
            if let Some(tx) = frame.get("transaction") {
                if matches!(frame.command, Command::Send | Command::Ack | Command::Nack) {
                    let tx = tx.to_owned();
                    let max = self.config.max_transaction_frames;
                    match self.transactions.get_mut(&tx) {
                        Some(frames) if frames.len() < max => {
                            frames.push(frame);
                            if receipt.is_some() {
                                self.new_op(receipt, true);
                                self.flush_receipts();
                            }
                        }
                        Some(_) => self.fail(
                            StompError::new(
                                "transaction_too_large",
                                format!("more than {max} frames in transaction {tx}"),
                            ),
                            Some(&frame),
                        ),
                        None => self.fail(
                            StompError::new(
                                "protocol_error",
                                format!("unknown transaction `{tx}`"),
                            ),
                            Some(&frame),
                        ),
                    }
                    return;
                }
            }
        }
        match frame.command {
            Command::Send => self.on_send(frame, receipt),
            Command::Subscribe => self.on_subscribe(frame, receipt),
            Command::Unsubscribe => self.on_unsubscribe(frame, receipt),
            Command::Ack | Command::Nack => self.on_ack(frame, receipt),
            Command::Begin | Command::Commit | Command::Abort => {
                self.on_transaction(frame, receipt)
            }
            Command::Disconnect => self.on_disconnect(receipt),
            Command::Connect | Command::Stomp => self.fail(
                StompError::new("protocol_error", "CONNECT received more than once"),
                Some(&frame),
            ),
            other => self.fail(
                StompError::new(
                    "protocol_error",
                    format!("a client may not send {}", other.as_str()),
                ),
                Some(&frame),
            ),
        }
    }

    fn destination(&mut self, frame: &Frame) -> Option<Destination> {
        let Some(d) = frame.get("destination") else {
            self.fail(
                StompError::new(
                    "protocol_error",
                    format!("{} without a destination header", frame.command.as_str()),
                ),
                Some(frame),
            );
            return None;
        };
        match Destination::parse(d) {
            Some(d) => Some(d),
            None => {
                let msg =
                    format!("unsupported destination `{d}`: use /topic/<key> or /queue/<name>");
                self.fail(StompError::new("invalid_destination", msg), Some(frame));
                None
            }
        }
    }

    /// What a `SEND` publishes; `None` (after failing the session) if it cannot.
    fn publish_item(&mut self, frame: Frame) -> Option<PublishItem> {
        let destination = self.destination(&frame)?;
        let headers = frame
            .headers
            .iter()
            .filter(|(k, _)| !RESERVED.contains(&&**k))
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Some(PublishItem {
            destination,
            content_type: frame.get("content-type").map(str::to_owned),
            body: frame.body,
            headers,
        })
    }

    fn on_send(&mut self, frame: Frame, receipt: Option<String>) {
        let Some(item) = self.publish_item(frame) else {
            return;
        };
        let op = self.new_op(receipt, false);
        self.events.push_back(Event::Publish {
            op,
            destination: item.destination,
            content_type: item.content_type,
            body: item.body,
            headers: item.headers,
        });
    }

    fn on_subscribe(&mut self, frame: Frame, receipt: Option<String>) {
        let Some(destination) = self.destination(&frame) else {
            return;
        };
        let Some(id) = frame.get("id").map(str::to_owned) else {
            return self.fail(
                StompError::new("protocol_error", "SUBSCRIBE without an id header"),
                Some(&frame),
            );
        };
        if self.subscriptions.contains_key(&id) {
            return self.fail(
                StompError::new(
                    "protocol_error",
                    format!("subscription id `{id}` is in use"),
                ),
                Some(&frame),
            );
        }
        if self.subscriptions.len() >= self.config.max_subscriptions {
            return self.fail(
                StompError::new(
                    "too_many_subscriptions",
                    format!("at most {} subscriptions", self.config.max_subscriptions),
                ),
                Some(&frame),
            );
        }
        let ack = match frame.get("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => {
                return self.fail(
                    StompError::new("protocol_error", format!("unknown ack mode `{other}`")),
                    Some(&frame),
                )
            }
        };
        let prefetch = match frame.get("prefetch-count").map(str::parse::<usize>) {
            None => self.config.max_prefetch,
            Some(Ok(n)) if n > 0 => n.min(self.config.max_prefetch),
            Some(_) => {
                return self.fail(
                    StompError::new("protocol_error", "prefetch-count must be a positive number"),
                    Some(&frame),
                )
            }
        };
        let op = self.new_op(receipt, false);
        self.subscribe_ops.insert(op, id.clone());
        self.subscriptions.insert(
            id.clone(),
            Subscription {
                destination: destination.clone(),
                ack,
                prefetch,
                unacked: VecDeque::new(),
                fetching: false,
                started: false,
            },
        );
        self.events.push_back(Event::Subscribe {
            op,
            id,
            destination,
            ack,
        });
    }

    fn on_unsubscribe(&mut self, frame: Frame, receipt: Option<String>) {
        let Some(id) = frame.get("id") else {
            return self.fail(
                StompError::new("protocol_error", "UNSUBSCRIBE without an id header"),
                Some(&frame),
            );
        };
        let Some(sub) = self.subscriptions.remove(id) else {
            return self.fail(
                StompError::new("protocol_error", format!("no subscription `{id}`")),
                Some(&frame),
            );
        };
        for r in &sub.unacked {
            self.ack_owner.remove(r);
        }
        self.events.push_back(Event::Unsubscribe {
            id: id.to_owned(),
            unacked: sub.unacked.into(),
        });
        if receipt.is_some() {
            self.new_op(receipt, true);
            self.flush_receipts();
        }
    }

    fn on_ack(&mut self, frame: Frame, receipt: Option<String>) {
        let ack = frame.command == Command::Ack;
        let Some(id) = frame.get("id").map(str::to_owned) else {
            return self.fail(
                StompError::new(
                    "protocol_error",
                    format!("{} without an id header", frame.command.as_str()),
                ),
                Some(&frame),
            );
        };
        let Some(sub_id) = self.ack_owner.get(&id).cloned() else {
            return self.fail(
                StompError::new(
                    "unknown_receipt",
                    format!("no unacknowledged message with ack id `{id}`"),
                ),
                Some(&frame),
            );
        };
        let Some(sub) = self.subscriptions.get_mut(&sub_id) else {
            return;
        };
        let receipts: Vec<String> = match sub.ack {
            AckMode::Client => {
                let Some(pos) = sub.unacked.iter().position(|r| *r == id) else {
                    return;
                };
                sub.unacked.drain(..=pos).collect()
            }
            _ => {
                sub.unacked.retain(|r| *r != id);
                vec![id]
            }
        };
        for r in &receipts {
            self.ack_owner.remove(r);
        }
        let op = self.new_op(receipt, false);
        self.events.push_back(Event::Settle { op, receipts, ack });
        if ack {
            self.want_fetch(&sub_id);
        } else {
            // What a NACK gives back keeps its place, ahead of later messages, but is
            // deliverable only once the settle is durable: a fetch now would overtake it.
            self.nack_ops.insert(op, sub_id);
        }
    }

    fn on_transaction(&mut self, frame: Frame, receipt: Option<String>) {
        let Some(tx) = frame.get("transaction").map(str::to_owned) else {
            return self.fail(
                StompError::new(
                    "protocol_error",
                    format!("{} without a transaction header", frame.command.as_str()),
                ),
                Some(&frame),
            );
        };
        match frame.command {
            Command::Begin => {
                if self.transactions.contains_key(&tx) {
                    return self.fail(
                        StompError::new(
                            "protocol_error",
                            format!("transaction `{tx}` is already open"),
                        ),
                        Some(&frame),
                    );
                }
                if self.transactions.len() >= self.config.max_transactions {
                    return self.fail(
                        StompError::new(
                            "protocol_error",
                            format!("at most {} open transactions", self.config.max_transactions),
                        ),
                        Some(&frame),
                    );
                }
                self.transactions.insert(tx, Vec::new());
            }
            Command::Commit => {
                let Some(frames) = self.transactions.remove(&tx) else {
                    return self.fail(
                        StompError::new("protocol_error", format!("unknown transaction `{tx}`")),
                        Some(&frame),
                    );
                };
                // The SENDs go as one atomic publish; ACKs and NACKs follow, in order.
                let mut items = Vec::new();
                let mut settles = Vec::new();
                for f in frames {
                    if f.command == Command::Send {
                        match self.publish_item(f) {
                            Some(item) => items.push(item),
                            None => return,
                        }
                    } else {
                        settles.push(f);
                    }
                }
                if !items.is_empty() {
                    let op = self.new_op(None, false);
                    self.events.push_back(Event::PublishBatch { op, items });
                }
                for mut f in settles {
                    // Their own receipts were answered when they were buffered.
                    f.headers
                        .retain(|(k, _)| k != "receipt" && k != "transaction");
                    self.on_frame(f, false);
                    if self.state == State::Closing || self.closed {
                        return;
                    }
                }
            }
            _ => {
                if self.transactions.remove(&tx).is_none() {
                    return self.fail(
                        StompError::new("protocol_error", format!("unknown transaction `{tx}`")),
                        Some(&frame),
                    );
                }
            }
        }
        if receipt.is_some() {
            self.new_op(receipt, true);
            self.flush_receipts();
        }
    }

    fn on_disconnect(&mut self, receipt: Option<String>) {
        match receipt {
            Some(r) => {
                self.new_op(Some(r), true);
                if let Some(last) = self.pending.back_mut() {
                    last.then_close = true;
                }
                // No more input: what is in flight finishes, then the receipt, then close.
                self.state = State::Closing;
                self.flush_receipts();
            }
            None => self.close(),
        }
    }

    /// The driver's answer to an operation (publish, subscribe, settle).
    pub fn complete(&mut self, op: u64, result: Result<(), StompError>) {
        let Some(p) = self.pending.iter_mut().find(|p| p.op == op) else {
            return;
        };
        if !p.done {
            p.done = true;
            self.unconfirmed = self.unconfirmed.saturating_sub(1);
        }
        let receipt = p.receipt.clone();
        let subscription = self.subscribe_ops.remove(&op);
        let nacked = self.nack_ops.remove(&op);
        if let Err(e) = result {
            if let Some(id) = &subscription {
                self.subscriptions.remove(id);
            }
            return self.fail_with_receipt(e, receipt);
        }
        // A subscription starts fetching once it is confirmed.
        if let Some(id) = subscription {
            if let Some(sub) = self.subscriptions.get_mut(&id) {
                sub.started = true;
            }
            self.want_fetch(&id);
        }
        if let Some(id) = nacked {
            self.want_fetch(&id);
        }
        // Cumulative receipts wait for the next transmit: whatever completes meanwhile
        // is confirmed by one receipt.
        if !self.config.cumulative_receipts {
            self.flush_receipts();
        }
    }

    fn flush_receipts(&mut self) {
        // After the `ERROR` or the last receipt nothing more goes out: the driver closes.
        if self.closed {
            return;
        }
        let mut held = None;
        while let Some(p) = self.pending.front() {
            if !p.done {
                break;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if let Some(r) = p.receipt {
                if self.config.cumulative_receipts && !p.then_close {
                    held = Some(r);
                } else {
                    held = None;
                    self.transmit.push_back(Outgoing::Frame(
                        Frame::new(Command::Receipt).header("receipt-id", r),
                    ));
                }
            }
            if p.then_close {
                self.close();
                return;
            }
        }
        if let Some(r) = held {
            self.transmit.push_back(Outgoing::Frame(
                Frame::new(Command::Receipt).header("receipt-id", r),
            ));
        }
    }

    fn want_fetch(&mut self, id: &str) {
        if self.state != State::Connected {
            return;
        }
        let Some(sub) = self.subscriptions.get_mut(id) else {
            return;
        };
        if !sub.started || sub.fetching || !matches!(sub.destination, Destination::Queue(_)) {
            return;
        }
        let room = sub.prefetch.saturating_sub(sub.unacked.len());
        if room > 0 {
            sub.fetching = true;
            self.events.push_back(Event::Fetch {
                id: id.to_owned(),
                max: room,
            });
        }
    }

    /// Messages for subscription `id` (from a fetch, or live). Queues a `MESSAGE` frame for
    /// each; asks for the next fetch when the window has room.
    pub fn deliver(&mut self, id: &str, messages: Vec<Delivered>) {
        let sub = match self.subscriptions.get_mut(id) {
            Some(sub) if !self.closed => Some(sub),
            _ => None,
        };
        let Some(sub) = sub else {
            // Unsubscribed meanwhile, or the session is over (nothing more goes out after
            // its `ERROR` or last receipt): give leased ones back.
            let unacked: Vec<String> = messages.into_iter().filter_map(|m| m.receipt).collect();
            if !unacked.is_empty() {
                self.events.push_back(Event::Unsubscribe {
                    id: id.to_owned(),
                    unacked,
                });
            }
            return;
        };
        sub.fetching = false;
        for m in messages {
            let mut f = Frame {
                headers: Vec::with_capacity(6 + m.headers.len()),
                ..Frame::new(Command::Message)
            }
            .header("subscription", id)
            .header("message-id", m.message_id.to_string())
            .header("destination", m.destination);
            if let Some(r) = &m.receipt {
                if sub.ack != AckMode::Auto {
                    f = f.header("ack", r.clone());
                    sub.unacked.push_back(r.clone());
                    self.ack_owner.insert(r.clone(), id.to_owned());
                }
            }
            if m.redelivered {
                f = f.header("redelivered", "true");
            }
            f = f.header(
                "content-type",
                m.content_type
                    .unwrap_or_else(|| "application/json".to_owned()),
            );
            f.headers.extend(m.headers);
            self.transmit.push_back(Outgoing::Frame(f.body(m.body)));
        }
        self.want_fetch(id);
    }

    /// Tells a live subscriber it fell behind (slow consumer policy): `ERROR` and close.
    pub fn lagged(&mut self, id: &str) {
        self.fail(
            StompError::new(
                "slow_consumer",
                format!("subscription `{id}` fell behind and missed messages"),
            ),
            None,
        );
    }

    /// Unacknowledged broker receipts of every subscription.
    fn all_unacked(&mut self) -> Vec<String> {
        self.ack_owner.clear();
        self.subscriptions
            .values_mut()
            .flat_map(|s| std::mem::take(&mut s.unacked))
            .collect()
    }

    fn close(&mut self) {
        self.state = State::Closing;
        if self.closed {
            return;
        }
        self.closed = true;
        let unacked = self.all_unacked();
        self.events.push_back(Event::Close { unacked });
    }

    fn fail(&mut self, e: StompError, frame: Option<&Frame>) {
        let receipt = frame.and_then(|f| f.get("receipt")).map(str::to_owned);
        self.fail_with_receipt(e, receipt)
    }

    fn fail_with_receipt(&mut self, e: StompError, receipt: Option<String>) {
        if self.closed {
            return;
        }
        let mut f = Frame::new(Command::Error)
            .header("code", e.code)
            .header("message", e.message.clone());
        if let Some(r) = receipt {
            f = f.header("receipt-id", r);
        }
        self.transmit.push_back(Outgoing::Frame(
            f.header("content-type", "text/plain").body(e.message),
        ));
        self.close();
    }
}
