//! [`Frame`]s to bytes.

use bytes::{BufMut, BytesMut};

use crate::command::Command;
use crate::escape::escape_into;
use crate::frame::{Frame, CONTENT_LENGTH};

/// How many characters of a header name are kept in [`EncodeError::Unencodable`].
const NAME_SHOWN: usize = 64;

/// A frame the wire cannot carry. Nothing is written when encoding fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Header number `index` (from 0) has an empty name.
    #[error("header {index} has an empty name")]
    EmptyHeaderName { index: usize },
    /// A header holds an octet this command cannot carry: NUL anywhere, or in the
    /// unescaped `CONNECT`/`CONNECTED` frames a CR or LF anywhere or a `:` in the name.
    #[error("header {name:?} cannot be carried by a {command} frame")]
    Unencodable { command: Command, name: String },
}

/// Appends `frame` to `dst` in STOMP 1.2 form.
///
/// - Header names and values are escaped, except in `CONNECT` and `CONNECTED` frames,
///   which STOMP 1.2 sends verbatim.
/// - Lines end in a bare LF.
/// - The body always travels with a correct `content-length`: the first `content-length`
///   header (if any) is written with the body's actual length in place of its value, and
///   a non-empty body without one gets one after the other headers. Later repeats are
///   written as they are; receivers ignore them (first wins). An empty body without the
///   header is sent without it. The added header counts against the receiver's
///   [`Limits::max_headers`](crate::Limits::max_headers) like any other, so a relayed
///   frame can need one more header than it arrived with.
/// - The frame ends with NUL; no EOL follows (see [`encode_heartbeat`]).
pub fn encode(frame: &Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let escaped = frame.command.escapes_headers();
    let mut size = frame.command.as_str().len() + 2 + frame.body.len() + 1;
    for (index, (name, value)) in frame.headers.iter().enumerate() {
        if name.is_empty() {
            return Err(EncodeError::EmptyHeaderName { index });
        }
        let forbidden = |b: &u8| *b == 0 || (!escaped && (*b == b'\r' || *b == b'\n'));
        if name
            .bytes()
            .any(|b| forbidden(&b) || (!escaped && b == b':'))
            || value.bytes().any(|b| forbidden(&b))
        {
            return Err(EncodeError::Unencodable {
                command: frame.command,
                name: name.chars().take(NAME_SHOWN).collect(),
            });
        }
        size += name.len() + value.len() + 2;
    }
    let length = frame.body.len().to_string();
    dst.reserve(size + CONTENT_LENGTH.len() + length.len() + 2);

    dst.put_slice(frame.command.as_str().as_bytes());
    dst.put_u8(b'\n');
    let mut wrote_length = false;
    for (name, value) in &frame.headers {
        if name == CONTENT_LENGTH && !wrote_length {
            put_content_length(dst, &length);
            wrote_length = true;
        } else if escaped {
            escape_into(name, dst);
            dst.put_u8(b':');
            escape_into(value, dst);
            dst.put_u8(b'\n');
        } else {
            dst.put_slice(name.as_bytes());
            dst.put_u8(b':');
            dst.put_slice(value.as_bytes());
            dst.put_u8(b'\n');
        }
    }
    if !wrote_length && !frame.body.is_empty() {
        put_content_length(dst, &length);
    }
    dst.put_u8(b'\n');
    dst.put_slice(&frame.body);
    dst.put_u8(0);
    Ok(())
}

fn put_content_length(dst: &mut BytesMut, length: &str) {
    dst.put_slice(CONTENT_LENGTH.as_bytes());
    dst.put_u8(b':');
    dst.put_slice(length.as_bytes());
    dst.put_u8(b'\n');
}

/// Appends one heart-beat: a single LF.
pub fn encode_heartbeat(dst: &mut BytesMut) {
    dst.put_u8(b'\n');
}
