//! STOMP 1.2 frames and an incremental codec for Trunkline.
//!
//! This is the bytes ↔ frames layer and nothing else: it owns no socket, no buffer of its
//! own, no clock and no session. It does not know what a destination, a receipt or a
//! login means, does not negotiate heart-beats and does not check that a command is
//! allowed at this point of a conversation; the connection and session layers do.
//!
//! Modules:
//! - [`command`]: [`Command`], the fifteen STOMP 1.2 commands.
//! - [`frame`]: [`Frame`] (command, headers in wire order, body) and [`Item`], a frame or
//!   a heart-beat.
//! - [`limits`]: [`Limits`], how much one frame may make the decoder buffer.
//! - [`decoder`]: [`Decoder`] and [`decode`]: bytes to items, `Ok(None)` when more are
//!   needed, working on input split at any byte; [`DecodeError`] with stable codes.
//! - [`encoder`]: [`encode`] and [`encode_heartbeat`]: frames to bytes.
//!
//! Wire rules, from the STOMP 1.2 specification: lines end in LF or CR LF; header names
//! and values are escaped (`\r`, `\n`, `\c`, `\\`) except in `CONNECT` and `CONNECTED`;
//! the first of repeated headers wins; the body is `content-length` octets when that
//! header is present, otherwise everything up to the first NUL; EOLs between frames are
//! heart-beats.
//!
//! ```
//! use bytes::BytesMut;
//! use trunkline_proto::{encode, Command, Decoder, Frame, Item, Limits};
//!
//! let mut buf = BytesMut::from(&b"SEND\ndestination:/queue/a\\cb\n\nhello\0\n"[..]);
//! let mut decoder = Decoder::new(Limits::default());
//!
//! let Some(Item::Frame(frame)) = decoder.decode(&mut buf)? else {
//!     panic!("a whole frame is buffered");
//! };
//! assert_eq!(frame.command, Command::Send);
//! assert_eq!(frame.get("destination"), Some("/queue/a:b"));
//! assert_eq!(&frame.body[..], b"hello");
//! assert_eq!(decoder.decode(&mut buf)?, Some(Item::HeartBeat));
//! assert_eq!(decoder.decode(&mut buf)?, None);
//!
//! let mut out = BytesMut::new();
//! encode(&Frame::new(Command::Receipt).header("receipt-id", "7"), &mut out)?;
//! assert_eq!(&out[..], b"RECEIPT\nreceipt-id:7\n\n\0");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod command;
pub mod decoder;
pub mod encoder;
mod escape;
pub mod frame;
pub mod limits;

pub use command::Command;
pub use decoder::{decode, DecodeError, Decoder};
pub use encoder::{encode, encode_heartbeat, EncodeError};
pub use frame::{Frame, Item, CONTENT_LENGTH};
pub use limits::Limits;
