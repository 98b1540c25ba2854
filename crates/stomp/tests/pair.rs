//! A client session and a server session talking to each other in virtual time, with no
//! sockets: frames go through the real encoder and decoder.

use bytes::{Bytes, BytesMut};
use trunkline_proto::{encode, encode_heartbeat, Decoder, Limits};
use trunkline_stomp::{
    ClientConfig, ClientEvent, ClientSession, Event, Outgoing, ServerConfig, ServerSession,
};

struct Pair {
    client: ClientSession,
    server: ServerSession,
    now: u64,
    to_server: BytesMut,
    to_client: BytesMut,
    dec_s: Decoder,
    dec_c: Decoder,
    /// Server operations awaiting the "broker".
    ops: Vec<u64>,
    published: Vec<Bytes>,
    client_events: Vec<ClientEvent>,
}

impl Pair {
    fn new(client: ClientConfig, server: ServerConfig) -> Pair {
        Pair {
            client: ClientSession::new(client, 0),
            server: ServerSession::new(server, 0),
            now: 0,
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
            dec_s: Decoder::new(Limits::default()),
            dec_c: Decoder::new(Limits::default()),
            ops: Vec::new(),
            published: Vec::new(),
            client_events: Vec::new(),
        }
    }

    /// Moves everything that can move; `confirm` answers the server's operations.
    fn drive(&mut self, confirm: bool) {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(f) = self.client.poll_transmit(self.now) {
                match f {
                    Some(f) => encode(&f, &mut self.to_server).expect("encode"),
                    None => encode_heartbeat(&mut self.to_server),
                }
                moved = true;
            }
            while self.server.wants_read() {
                match self.dec_s.decode(&mut self.to_server).expect("decode") {
                    Some(item) => {
                        self.server.handle_item(self.now, item);
                        moved = true;
                    }
                    None => break,
                }
            }
            while let Some(ev) = self.server.poll_event() {
                moved = true;
                match ev {
                    Event::Authenticate { .. } => {
                        self.server.authenticated(self.now, Ok("c".into()))
                    }
                    Event::Publish { op, body, .. } => {
                        self.published.push(body);
                        self.ops.push(op);
                    }
                    Event::Settle { op, .. } | Event::Subscribe { op, .. } => self.ops.push(op),
                    _ => {}
                }
            }
            if confirm {
                for op in std::mem::take(&mut self.ops) {
                    self.server.complete(op, Ok(()));
                    moved = true;
                }
            }
            while let Some(o) = self.server.poll_transmit(self.now) {
                match o {
                    Outgoing::Frame(f) => encode(&f, &mut self.to_client).expect("encode"),
                    Outgoing::HeartBeat => encode_heartbeat(&mut self.to_client),
                }
                moved = true;
            }
            while let Some(item) = self.dec_c.decode(&mut self.to_client).expect("decode") {
                self.client.handle_item(self.now, item);
                moved = true;
            }
            while let Some(ev) = self.client.poll_event() {
                self.client_events.push(ev);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }
}

#[test]
fn sends_are_confirmed_cumulatively_and_in_order() {
    let mut p = Pair::new(
        ClientConfig {
            window: 3,
            ..Default::default()
        },
        ServerConfig::default(),
    );
    p.drive(true);
    assert!(p.client.is_connected());
    for i in 0..3 {
        assert!(p
            .client
            .send("/topic/a", &[], Bytes::from(format!("{i}")))
            .is_some());
    }
    assert!(
        p.client.send("/topic/a", &[], Bytes::new()).is_none(),
        "the window is full"
    );
    p.drive(false);
    assert_eq!(p.published.len(), 3);
    assert!(!p.client.can_send());
    p.drive(true);
    assert!(p.client.can_send());
    assert!(p
        .client_events
        .contains(&ClientEvent::Confirmed { upto: 3 }));
}

#[test]
fn unconfirmed_sends_are_sent_again_on_a_new_connection() {
    let mut p = Pair::new(ClientConfig::default(), ServerConfig::default());
    p.drive(true);
    p.client.send("/topic/a", &[], Bytes::from_static(b"1"));
    p.client.send("/topic/a", &[], Bytes::from_static(b"2"));
    p.drive(false);
    // The connection dies before the server confirms anything.
    let (unconfirmed, next) = p.client.take_unconfirmed();
    assert_eq!(unconfirmed.len(), 2);
    let mut q = Pair::new(ClientConfig::default(), ServerConfig::default());
    q.client = ClientSession::resume(ClientConfig::default(), 0, unconfirmed, next);
    q.drive(true);
    assert_eq!(
        q.published,
        vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
    );
    assert!(q
        .client_events
        .contains(&ClientEvent::Confirmed { upto: 2 }));
    assert_eq!(
        q.client.send("/topic/a", &[], Bytes::new()),
        Some(3),
        "the sequence goes on"
    );
}

#[test]
fn heart_beats_keep_an_idle_pair_alive_and_silence_kills_it() {
    let hb = ClientConfig {
        heartbeat_send_ms: 1000,
        heartbeat_recv_ms: 1000,
        ..Default::default()
    };
    let sc = ServerConfig {
        heartbeat_send_ms: 1000,
        heartbeat_recv_ms: 1000,
        ..Default::default()
    };
    let mut p = Pair::new(hb, sc);
    p.drive(true);
    for t in (0..20_000).step_by(250) {
        p.now = t;
        p.client.handle_timeout(t);
        p.server.handle_timeout(t);
        p.drive(true);
    }
    assert!(
        p.client.is_connected() && !p.server.is_closing(),
        "{:?}",
        p.client_events
    );
    // The client stops sending heart-beats: the server gives up on it.
    for t in (20_000..30_000).step_by(250) {
        p.now = t;
        p.server.handle_timeout(t);
        while p.server.poll_transmit(t).is_some() {}
    }
    assert!(p.server.is_closing());
}

#[test]
fn an_error_frame_fails_the_client() {
    let mut p = Pair::new(ClientConfig::default(), ServerConfig::default());
    p.drive(true);
    p.client.frame(
        trunkline_proto::Frame::new(trunkline_proto::Command::Subscribe)
            .header("id", "s")
            .header("destination", "/nowhere"),
    );
    p.drive(true);
    assert!(p.client.is_done());
    assert!(
        matches!(p.client_events.last(), Some(ClientEvent::Failed { code, .. }) if code == "invalid_destination")
    );
}
