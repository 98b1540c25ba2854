//! STOMP 1.2 sessions for Trunkline, as state machines without I/O.
//!
//! Modules:
//! - [`destination`]: `/topic/…` and `/queue/…` destinations, in RabbitMQ STOMP's
//!   conventions, so existing clients just work.
//! - [`server`]: [`ServerSession`], one client connection as the server sees it.
//! - [`client`]: [`ClientSession`], the other end: sends with cumulative receipts and a
//!   window, kept for resending after a reconnect.
//!
//! A session never awaits and never reads a clock: the connection driver feeds it decoded
//! items with [`ServerSession::handle_item`] and the time with
//! [`ServerSession::handle_timeout`], carries out the [`Event`]s it asks for (authenticate,
//! publish, subscribe, fetch, settle) against the broker, reports each outcome back, and
//! writes what [`ServerSession::poll_transmit`] hands out. Receipts leave in the order the
//! frames that asked for them arrived, each only after everything before it was confirmed,
//! so one receipt confirms every earlier message.
//!
//! ```
//! use trunkline_proto::{Command, Frame, Item};
//! use trunkline_stomp::{Event, Outgoing, ServerConfig, ServerSession};
//!
//! let mut s = ServerSession::new(ServerConfig::default(), 0);
//! s.handle_item(0, Item::Frame(Frame::new(Command::Connect)
//!     .header("accept-version", "1.2").header("login", "c1").header("passcode", "secret")));
//! assert!(matches!(s.poll_event(), Some(Event::Authenticate { .. })));
//! s.authenticated(1, Ok("c1".into()));
//! let Some(Outgoing::Frame(connected)) = s.poll_transmit(1) else { panic!() };
//! assert_eq!(connected.command, Command::Connected);
//! ```

pub mod client;
pub mod destination;
pub mod server;

pub use client::{ClientConfig, ClientEvent, ClientSession};
pub use destination::Destination;
pub use server::{
    AckMode, Delivered, Event, Outgoing, PublishItem, ServerConfig, ServerSession, StompError,
};
