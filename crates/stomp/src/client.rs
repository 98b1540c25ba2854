//! The client side of one STOMP connection.
//!
//! Sends carry a `receipt` with their sequence number; a `RECEIPT` confirms that message
//! and every earlier one (the server sends receipts in order, as Trunkline and swpt_stomp
//! do). Unconfirmed sends are kept, bounded by `window`, so that a new connection can send
//! them again ([`ClientSession::resume`]): at least once across reconnects.

use std::collections::VecDeque;

use bytes::Bytes;
use trunkline_proto::{Command, Frame, Item};

/// Settings of the client side.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The `host` header (RabbitMQ: the vhost, usually `/`).
    pub host: String,
    pub login: Option<String>,
    pub passcode: Option<String>,
    /// How often we can send heart-beats, and want to receive them, in ms (0: never).
    pub heartbeat_send_ms: u64,
    pub heartbeat_recv_ms: u64,
    /// Most unconfirmed sends.
    pub window: usize,
    /// Time allowed for `CONNECTED`.
    pub connect_timeout_ms: u64,
    /// Open with a `STOMP` frame instead of `CONNECT` (as swpt_stomp's client does).
    pub stomp_frame: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            host: "/".into(),
            login: None,
            passcode: None,
            heartbeat_send_ms: 5000,
            heartbeat_recv_ms: 30_000,
            window: 100,
            connect_timeout_ms: 10_000,
            stomp_frame: false,
        }
    }
}

/// What the session reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    Connected {
        server: Option<String>,
    },
    /// Every send with a sequence number up to `upto` is confirmed.
    Confirmed {
        upto: u64,
    },
    Message(Frame),
    /// The server refused something (or went silent); the connection is over.
    Failed {
        code: String,
        message: String,
    },
    /// The `DISCONNECT` was confirmed; the connection is over.
    Disconnected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Connected,
    Done,
}

/// Client side of one connection. See the module docs.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    opened: u64,
    last_sent: u64,
    last_recv: u64,
    send_every: u64,
    recv_every: u64,
    next_seq: u64,
    /// Sends not yet confirmed, oldest first.
    unconfirmed: VecDeque<(u64, Frame)>,
    transmit: VecDeque<Option<Frame>>,
    events: VecDeque<ClientEvent>,
}

const DISCONNECT_RECEIPT: &str = "disconnect";

impl ClientSession {
    /// A new connection opened at `now`: `CONNECT` is queued.
    pub fn new(config: ClientConfig, now: u64) -> Self {
        Self::resume(config, now, Vec::new(), 1)
    }

    /// A new connection that sends `unconfirmed` again (after `CONNECTED`), continuing the
    /// sequence at `next_seq`.
    pub fn resume(
        config: ClientConfig,
        now: u64,
        unconfirmed: Vec<(u64, Frame)>,
        next_seq: u64,
    ) -> Self {
        let command = if config.stomp_frame {
            Command::Stomp
        } else {
            Command::Connect
        };
        let mut connect = Frame::new(command)
            .header("accept-version", "1.2")
            .header("host", config.host.clone())
            .header(
                "heart-beat",
                format!("{},{}", config.heartbeat_send_ms, config.heartbeat_recv_ms),
            );
        if let Some(l) = &config.login {
            connect = connect.header("login", l.clone());
        }
        if let Some(p) = &config.passcode {
            connect = connect.header("passcode", p.clone());
        }
        ClientSession {
            config,
            state: State::Connecting,
            opened: now,
            last_sent: now,
            last_recv: now,
            send_every: 0,
            recv_every: 0,
            next_seq,
            unconfirmed: unconfirmed.into(),
            transmit: VecDeque::from([Some(connect)]),
            events: VecDeque::new(),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True while another send fits in the window.
    pub fn can_send(&self) -> bool {
        self.unconfirmed.len() < self.config.window
    }

    /// Sends not yet confirmed, with their sequence numbers, and the next number: what a
    /// new connection needs to carry on ([`ClientSession::resume`]).
    pub fn take_unconfirmed(&mut self) -> (Vec<(u64, Frame)>, u64) {
        (self.unconfirmed.drain(..).collect(), self.next_seq)
    }

    /// Queues a `SEND`; returns its sequence number, confirmed later by
    /// [`ClientEvent::Confirmed`]. `None` if the window is full.
    pub fn send(
        &mut self,
        destination: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Option<u64> {
        if !self.can_send() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut f = Frame::new(Command::Send).header("destination", destination);
        for (k, v) in headers {
            f = f.header(k.clone(), v.clone());
        }
        let f = f.header("receipt", seq.to_string()).body(body);
        if self.state == State::Connected {
            self.transmit.push_back(Some(f.clone()));
        }
        self.unconfirmed.push_back((seq, f));
        Some(seq)
    }

    /// Queues any other frame (`SUBSCRIBE`, `ACK`, `NACK`, …). Frames queued before
    /// `CONNECTED` are sent after it.
    pub fn frame(&mut self, f: Frame) {
        self.transmit.push_back(Some(f));
    }

    /// Asks to disconnect once everything sent is confirmed.
    pub fn disconnect(&mut self) {
        self.transmit.push_back(Some(
            Frame::new(Command::Disconnect).header("receipt", DISCONNECT_RECEIPT),
        ));
    }

    pub fn poll_transmit(&mut self, now: u64) -> Option<Option<Frame>> {
        // Nothing but CONNECT before CONNECTED.
        if self.state == State::Connecting
            && !matches!(self.transmit.front(), Some(Some(f)) if matches!(f.command, Command::Connect | Command::Stomp))
        {
            return None;
        }
        if self.state == State::Done {
            return None;
        }
        let f = self.transmit.pop_front()?;
        self.last_sent = now;
        Some(f)
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        match self.state {
            State::Connecting => Some(self.opened + self.config.connect_timeout_ms),
            State::Connected => {
                let send = (self.send_every > 0).then(|| self.last_sent + self.send_every);
                let recv =
                    (self.recv_every > 0).then(|| self.last_recv + self.recv_every * 2 + 1000);
                match (send, recv) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            State::Done => None,
        }
    }

    pub fn handle_timeout(&mut self, now: u64) {
        match self.state {
            State::Connecting if now >= self.opened + self.config.connect_timeout_ms => {
                self.fail("request_timeout", "no CONNECTED frame in time".into());
            }
            State::Connected => {
                if self.recv_every > 0 && now >= self.last_recv + self.recv_every * 2 + 1000 {
                    self.fail(
                        "heartbeat_timeout",
                        format!("nothing received for {} ms", now - self.last_recv),
                    );
                } else if self.send_every > 0
                    && now >= self.last_sent + self.send_every
                    && self.transmit.is_empty()
                {
                    self.transmit.push_back(None);
                }
            }
            _ => {}
        }
    }

    fn fail(&mut self, code: &str, message: String) {
        if self.state != State::Done {
            self.state = State::Done;
            self.events.push_back(ClientEvent::Failed {
                code: code.into(),
                message,
            });
        }
    }

    pub fn handle_item(&mut self, now: u64, item: Item) {
        self.last_recv = now;
        let Item::Frame(f) = item else { return };
        match (self.state, f.command) {
            (State::Done, _) => {}
            (State::Connecting, Command::Connected) => {
                if f.get("version") != Some("1.2") {
                    return self.fail(
                        "unsupported_version",
                        format!("the server speaks {:?}, not 1.2", f.get("version")),
                    );
                }
                let (sx, sy) = f
                    .get("heart-beat")
                    .and_then(|v| v.split_once(','))
                    .and_then(|(a, b)| {
                        Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?))
                    })
                    .unwrap_or((0, 0));
                let (cx, cy) = (self.config.heartbeat_send_ms, self.config.heartbeat_recv_ms);
                self.send_every = if cx == 0 || sy == 0 { 0 } else { cx.max(sy) };
                self.recv_every = if cy == 0 || sx == 0 { 0 } else { cy.max(sx) };
                self.state = State::Connected;
                // What was sent before and not confirmed goes again, before anything new.
                let resend: Vec<Option<Frame>> = self
                    .unconfirmed
                    .iter()
                    .map(|(_, f)| Some(f.clone()))
                    .collect();
                for f in resend.into_iter().rev() {
                    self.transmit.push_front(f);
                }
                self.events.push_back(ClientEvent::Connected {
                    server: f.get("server").map(str::to_owned),
                });
            }
            (_, Command::Error) => {
                let code = f.get("code").unwrap_or("error").to_owned();
                let message = f
                    .get("message")
                    .map(str::to_owned)
                    .unwrap_or_else(|| String::from_utf8_lossy(&f.body).into_owned());
                self.fail(&code, message);
            }
            (State::Connected, Command::Receipt) => {
                let Some(id) = f.get("receipt-id") else {
                    return;
                };
                if id == DISCONNECT_RECEIPT {
                    self.state = State::Done;
                    self.events.push_back(ClientEvent::Disconnected);
                    return;
                }
                let Ok(seq) = id.parse::<u64>() else { return };
                let before = self.unconfirmed.len();
                while self.unconfirmed.front().is_some_and(|(s, _)| *s <= seq) {
                    self.unconfirmed.pop_front();
                }
                if self.unconfirmed.len() != before {
                    self.events.push_back(ClientEvent::Confirmed { upto: seq });
                }
            }
            (State::Connected, Command::Message) => self.events.push_back(ClientEvent::Message(f)),
            (_, other) => self.fail(
                "protocol_error",
                format!("unexpected {} from the server", other.as_str()),
            ),
        }
    }
}
