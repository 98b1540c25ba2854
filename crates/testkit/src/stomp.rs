//! A raw STOMP connection for tests: frames built and parsed with Trunkline's codec, so a
//! test sees exactly what is on the wire (`ERROR` codes, receipts, the close).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use trunkline_proto::{encode, Command, Decoder, Frame, Item, Limits};

/// A byte stream a STOMP connection runs over (TCP, TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One STOMP connection.
pub struct StompWire {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    decoder: Decoder,
}

impl StompWire {
    pub async fn open(addr: &str) -> StompWire {
        Self::over(Box::new(TcpStream::connect(addr).await.expect("connect")))
    }

    /// A connection over `stream`, already open (a TLS session, say).
    pub fn over(stream: Box<dyn Stream>) -> StompWire {
        StompWire {
            stream,
            buf: BytesMut::new(),
            decoder: Decoder::new(Limits::default()),
        }
    }

    pub async fn send(&mut self, f: Frame) {
        let mut out = BytesMut::new();
        encode(&f, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next frame within `wait` (heart-beats skipped): `Ok(None)` if the server
    /// closed, `Err(())` if nothing came in time.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<Frame>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Item::Frame(f))) => return Ok(Some(f)),
                Ok(Some(Item::HeartBeat)) => continue,
                Ok(None) => {}
                Err(e) => panic!("server sent garbage: {e}"),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0) | Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The `topic` headers of the MESSAGE frames that come within `wait`, and the ERROR
    /// frame if one ends it.
    pub async fn topics_within(&mut self, wait: Duration) -> (Vec<String>, Option<Frame>) {
        let mut topics = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Ok(Some(f)) if f.command == Command::Message => {
                    topics.push(f.get("topic").unwrap_or("?").to_owned())
                }
                Ok(Some(f)) if f.command == Command::Error => return (topics, Some(f)),
                Ok(Some(_)) => {}
                Ok(None) | Err(()) => return (topics, None),
            }
        }
    }

    /// The next frame (heart-beats skipped); `None` if the server closed. At most 10 s.
    pub async fn next(&mut self) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Item::Frame(f))) => return Some(f),
                Ok(Some(Item::HeartBeat)) => continue,
                Ok(None) => {}
                Err(e) => panic!("server sent garbage: {e}"),
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .expect("a frame within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    pub async fn connect(addr: &str, login: &str, passcode: &str) -> (StompWire, Frame) {
        let mut w = StompWire::open(addr).await;
        w.send(
            Frame::new(Command::Connect)
                .header("accept-version", "1.2")
                .header("host", "/")
                .header("login", login)
                .header("passcode", passcode),
        )
        .await;
        let f = w.next().await.expect("an answer to CONNECT");
        (w, f)
    }

    /// Expects an ERROR with `code`, then the connection closing.
    pub async fn expect_error(&mut self, code: &str) -> Frame {
        let f = self.next().await.expect("an ERROR frame");
        assert_eq!(
            (f.command, f.get("code")),
            (Command::Error, Some(code)),
            "{f:?}"
        );
        assert!(f.get("message").is_some_and(|m| !m.is_empty()));
        assert!(
            self.next().await.is_none(),
            "the connection closes after ERROR"
        );
        f
    }
}
