//! Frames and the items a STOMP stream is made of.

use std::borrow::Cow;

use bytes::Bytes;

use crate::command::Command;

/// The header that gives the body's length in octets.
pub const CONTENT_LENGTH: &str = "content-length";

/// One STOMP frame: a command, headers in wire order, and a body.
///
/// Headers are kept as received, repeats included, because STOMP 1.2 gives the first
/// occurrence of a repeated header its meaning and a relay must not reorder them.
/// Names and values here are unescaped text; the codec escapes them on the wire. A name
/// is usually a constant (`Cow::Borrowed`), and costs no allocation then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Vec<(Cow<'static, str>, String)>,
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Self {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Appends a header (after any already present, so an earlier one with the same
    /// name keeps its meaning).
    #[must_use]
    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The value of the first header called `name` (case-sensitive). Later repeats are
    /// ignored, as STOMP 1.2 requires.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first `content-length` header as a number; `None` when there is none or it is
    /// not a plain decimal (a decoded frame never has an invalid one: the decoder refuses it).
    pub fn content_length(&self) -> Option<usize> {
        self.get(CONTENT_LENGTH)
            .and_then(|v| parse_content_length(v.as_bytes()))
    }
}

/// Parses a content length in its one canonical form: ASCII digits, no sign, no spaces,
/// no leading zero (except `0` itself). Being strict means a re-encoded frame carries the
/// same text it arrived with.
pub(crate) fn parse_content_length(text: &[u8]) -> Option<usize> {
    if text.is_empty() || (text.len() > 1 && text[0] == b'0') {
        return None;
    }
    text.iter().try_fold(0usize, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(usize::from(b - b'0'))
        } else {
            None
        }
    })
}

/// What one call to the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete frame.
    Frame(Frame),
    /// One EOL (`\n` or `\r\n`) between frames: a heart-beat from the peer, or padding
    /// after a frame's NUL. Either way it proves the peer is alive.
    HeartBeat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_keeps_order_and_first_header_wins() {
        let frame = Frame::new(Command::Send)
            .header("destination", "/a")
            .header("x", "1")
            .header("x", "2")
            .body("hi");
        assert_eq!(frame.get("x"), Some("1"));
        assert_eq!(frame.get("X"), None);
        assert_eq!(frame.headers.len(), 3);
        assert_eq!(&frame.body[..], b"hi");
    }

    #[test]
    fn content_length_accepts_only_canonical_decimals() {
        let with = |v: &str| Frame::new(Command::Send).header(CONTENT_LENGTH, v);
        assert_eq!(with("0").content_length(), Some(0));
        assert_eq!(with("1234").content_length(), Some(1234));
        for bad in [
            "",
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1a",
            "99999999999999999999999",
        ] {
            assert_eq!(with(bad).content_length(), None, "{bad:?}");
        }
        assert_eq!(Frame::new(Command::Send).content_length(), None);
    }
}
