//! Bytes to [`Item`]s, incrementally.
//!
//! The decoder never consumes a partial item: `buf` keeps its bytes until a whole frame
//! (or one heart-beat EOL) is there, then exactly that item is split off the front.
//! Between calls a [`Decoder`] remembers how far it has scanned and the headers it has
//! already parsed, so each byte is looked at about once however the input is split.
//! The free function [`decode`] keeps nothing and rescans the buffered part of the
//! current frame on every call; it is linear per call and fine when reads are large,
//! but a connection should hold a `Decoder`.

use std::borrow::Cow;
use std::mem;

use bytes::{Buf, BytesMut};

use crate::command::{unknown_command, Command, MAX_COMMAND_LINE};
use crate::escape::unescape;
use crate::frame::{parse_content_length, Frame, Item, CONTENT_LENGTH};
use crate::limits::Limits;

/// How many bytes of a bad `content-length` value are kept in the error.
const CONTENT_LENGTH_SHOWN: usize = 32;

/// Why the bytes are not a STOMP 1.2 stream. Every one is fatal for the connection:
/// STOMP has no way to resynchronise, so the server answers with an `ERROR` frame
/// carrying [`DecodeError::code`] and closes.
///
/// `line` fields count from 1, the command line being line 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// `size` is exact when a `content-length` gave it, otherwise a lower bound
    /// (the bytes buffered when the limit was crossed).
    #[error("frame of at least {size} bytes exceeds the limit of {max}")]
    FrameTooLarge { size: usize, max: usize },
    #[error("header block exceeds the limit of {max} bytes")]
    HeaderBlockTooLarge { max: usize },
    #[error("more than {max} headers")]
    TooManyHeaders { max: usize },
    /// `size` is exact when a `content-length` gave it, otherwise a lower bound.
    #[error("body of at least {size} bytes exceeds the limit of {max}")]
    BodyTooLarge { size: usize, max: usize },
    #[error("header on line {line} has an invalid escape sequence")]
    BadEscape { line: usize },
    /// No `:`, an empty name, or a raw CR or NUL in the line.
    #[error("header on line {line} is malformed")]
    MalformedHeader { line: usize },
    #[error("unknown command {command:?}")]
    UnknownCommand { command: String },
    /// The byte after a `content-length` body is not NUL.
    #[error("frame body is not followed by NUL")]
    MissingNul,
    #[error("content-length {value:?} is not a decimal length")]
    InvalidContentLength { value: String },
    #[error("header on line {line} is not valid UTF-8")]
    InvalidUtf8 { line: usize },
}

impl DecodeError {
    /// A stable, machine-readable code for the `ERROR` frame (same form as the codes of
    /// `trunkline_api::ErrorCode`). A code never changes meaning once released.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::FrameTooLarge { .. } => "frame_too_large",
            DecodeError::HeaderBlockTooLarge { .. } => "header_block_too_large",
            DecodeError::TooManyHeaders { .. } => "too_many_headers",
            DecodeError::BodyTooLarge { .. } => "body_too_large",
            DecodeError::BadEscape { .. } => "bad_escape",
            DecodeError::MalformedHeader { .. } => "malformed_header",
            DecodeError::UnknownCommand { .. } => "unknown_command",
            DecodeError::MissingNul => "missing_nul",
            DecodeError::InvalidContentLength { .. } => "invalid_content_length",
            DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
        }
    }
}

/// Decodes one item from the front of `buf` with no memory of earlier calls.
///
/// `Ok(None)` means more bytes are needed; `buf` is then untouched. See [`Decoder::decode`].
pub fn decode(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Item>, DecodeError> {
    Decoder::new(*limits).decode(buf)
}

/// An incremental STOMP 1.2 decoder for one connection's byte stream.
///
/// Holds a scan position into the caller's buffer, so the caller must only append to
/// `buf` between calls (as a read loop does). If the buffer shrinks below the position,
/// the decoder starts the current frame over rather than misread; after an error, or to
/// reuse it on another stream, it starts afresh too.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    limits: Limits,
    state: State,
}

#[derive(Debug, Clone, Default)]
enum State {
    /// At an item boundary.
    #[default]
    Idle,
    /// Inside the command line or header lines.
    Head(Head),
    /// Header block complete; waiting for the body and its NUL.
    Body(Body),
}

#[derive(Debug, Clone, Default)]
struct Head {
    /// `None` until the command line is complete.
    command: Option<Command>,
    headers: Vec<(Cow<'static, str>, String)>,
    /// Where the line being scanned starts.
    line_start: usize,
    /// Everything before this has been scanned.
    scanned: usize,
}

#[derive(Debug, Clone)]
struct Body {
    command: Command,
    headers: Vec<(Cow<'static, str>, String)>,
    /// Where the body starts (the header block's length).
    start: usize,
    length: BodyLength,
}

#[derive(Debug, Clone, Copy)]
enum BodyLength {
    /// From `content-length`.
    Known(usize),
    /// Up to the first NUL; everything before `scanned` has no NUL.
    UntilNul { scanned: usize },
}

impl State {
    /// How far into the buffer this state has looked.
    fn position(&self) -> usize {
        match self {
            State::Idle => 0,
            State::Head(head) => head.scanned,
            State::Body(body) => match body.length {
                BodyLength::Known(_) => body.start,
                BodyLength::UntilNul { scanned } => scanned,
            },
        }
    }
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            state: State::Idle,
        }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes the frame being decoded takes in the buffer, from its start to its NUL, once
    /// its headers say (a `content-length`); 0 otherwise. A reader can make room for it
    /// all at once instead of growing the buffer as the body arrives.
    pub fn frame_len(&self) -> usize {
        match &self.state {
            State::Body(Body {
                start,
                length: BodyLength::Known(len),
                ..
            }) => start + len + 1,
            _ => 0,
        }
    }

    /// Forgets any partly decoded frame.
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// Decodes one item from the front of `buf`.
    ///
    /// - `Ok(Some(item))`: the item's bytes have been removed from `buf`. A frame's body
    ///   is a zero-copy slice of `buf`'s storage; copy it if it is kept for long.
    /// - `Ok(None)`: `buf` holds only part of an item (maybe none); `buf` is untouched.
    ///   Call again after appending more bytes.
    /// - `Err(_)`: the stream is invalid; `buf` is untouched and the connection should be
    ///   closed. Limits are checked as soon as the buffered bytes prove them exceeded.
    ///
    /// Each EOL between frames, including those a peer writes after a frame's NUL, is
    /// returned as its own [`Item::HeartBeat`].
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        if self.state.position() > buf.len() {
            self.state = State::Idle;
        }
        let result = self.step(buf);
        if result.is_err() {
            self.state = State::Idle;
        }
        result
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, DecodeError> {
        loop {
            match &mut self.state {
                State::Idle => {
                    match buf.first() {
                        None => return Ok(None),
                        Some(b'\n') => {
                            buf.advance(1);
                            return Ok(Some(Item::HeartBeat));
                        }
                        Some(b'\r') => match buf.get(1) {
                            None => return Ok(None),
                            Some(b'\n') => {
                                buf.advance(2);
                                return Ok(Some(Item::HeartBeat));
                            }
                            // Not an EOL: the command line will be refused.
                            Some(_) => {}
                        },
                        Some(_) => {}
                    }
                    self.state = State::Head(Head::default());
                }
                State::Head(head) => {
                    let Some((command, start)) = scan_head(head, buf, &self.limits)? else {
                        return Ok(None);
                    };
                    let headers = mem::take(&mut head.headers);
                    let length = body_length(&headers, start, &self.limits)?;
                    self.state = State::Body(Body {
                        command,
                        headers,
                        start,
                        length,
                    });
                }
                State::Body(body) => {
                    let Some(len) = scan_body(body, buf, &self.limits)? else {
                        return Ok(None);
                    };
                    let (command, headers, start) =
                        (body.command, mem::take(&mut body.headers), body.start);
                    self.state = State::Idle;
                    let mut bytes = buf.split_to(start + len + 1);
                    bytes.advance(start);
                    bytes.truncate(len);
                    return Ok(Some(Item::Frame(Frame {
                        command,
                        headers,
                        body: bytes.freeze(),
                    })));
                }
            }
        }
    }
}

/// Scans header lines, parsing each as it completes. Returns the command and the header
/// block's length once its blank line is in `buf`.
fn scan_head(
    head: &mut Head,
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(Command, usize)>, DecodeError> {
    // The block's final LF must sit before `limit` for the block to fit.
    let limit = limits.max_header_block_bytes.min(limits.max_frame_bytes);
    let window = buf.len().min(limit);
    while head.scanned < window {
        let Some(lf) = memchr::memchr(b'\n', &buf[head.scanned..window]) else {
            head.scanned = window;
            break;
        };
        let end = head.scanned + lf;
        let raw = &buf[head.line_start..end];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        head.line_start = end + 1;
        head.scanned = end + 1;
        match head.command {
            None => head.command = Some(Command::from_bytes(line)?),
            Some(command) if line.is_empty() => return Ok(Some((command, end + 1))),
            Some(command) => {
                if head.headers.len() >= limits.max_headers {
                    return Err(DecodeError::TooManyHeaders {
                        max: limits.max_headers,
                    });
                }
                let number = head.headers.len() + 2;
                head.headers
                    .push(parse_header(line, command.escapes_headers(), number)?);
            }
        }
    }
    if head.command.is_none() && head.scanned > MAX_COMMAND_LINE {
        return Err(unknown_command(&buf[..head.scanned]));
    }
    if window >= limit {
        return Err(if limits.max_header_block_bytes <= limits.max_frame_bytes {
            DecodeError::HeaderBlockTooLarge {
                max: limits.max_header_block_bytes,
            }
        } else {
            DecodeError::FrameTooLarge {
                size: window + 1,
                max: limits.max_frame_bytes,
            }
        });
    }
    Ok(None)
}

/// One header line (EOL removed) to a name and value.
fn parse_header(
    line: &[u8],
    escaped: bool,
    number: usize,
) -> Result<(Cow<'static, str>, String), DecodeError> {
    let malformed = DecodeError::MalformedHeader { line: number };
    // CR is only allowed as part of the EOL; NUL is refused so that no peer whose parser
    // looks for the frame's NUL first can be fooled by a relayed header.
    if memchr::memchr2(b'\r', 0, line).is_some() {
        return Err(malformed);
    }
    let colon = memchr::memchr(b':', line).ok_or_else(|| malformed.clone())?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() {
        return Err(malformed);
    }
    let text = |raw: &[u8]| -> Result<String, DecodeError> {
        let bytes = if escaped {
            unescape(raw).ok_or(DecodeError::BadEscape { line: number })?
        } else {
            raw.into()
        };
        String::from_utf8(bytes.into_owned()).map_err(|_| DecodeError::InvalidUtf8 { line: number })
    };
    let name = match known_name(name) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(text(name)?),
    };
    Ok((name, text(value)?))
}

/// The headers most frames carry, so that decoding them allocates no name.
const KNOWN_NAMES: [&str; 14] = [
    "accept-version",
    "ack",
    "content-length",
    "content-type",
    "destination",
    "heart-beat",
    "host",
    "id",
    "login",
    "message-id",
    "passcode",
    "receipt",
    "subscription",
    "transaction",
];

/// `raw` as one of [`KNOWN_NAMES`] (none needs unescaping, so this holds escaped or not).
fn known_name(raw: &[u8]) -> Option<&'static str> {
    KNOWN_NAMES.iter().copied().find(|n| n.as_bytes() == raw)
}

/// Decides how the body ends, refusing a declared length over the limits at once.
fn body_length(
    headers: &[(Cow<'static, str>, String)],
    start: usize,
    limits: &Limits,
) -> Result<BodyLength, DecodeError> {
    let Some((_, value)) = headers.iter().find(|(n, _)| n == CONTENT_LENGTH) else {
        return Ok(BodyLength::UntilNul { scanned: start });
    };
    let len = parse_content_length(value.as_bytes()).ok_or_else(|| {
        let shown: String = value.chars().take(CONTENT_LENGTH_SHOWN).collect();
        DecodeError::InvalidContentLength { value: shown }
    })?;
    if len > limits.max_body_bytes {
        return Err(DecodeError::BodyTooLarge {
            size: len,
            max: limits.max_body_bytes,
        });
    }
    let size = start.saturating_add(len).saturating_add(1);
    if size > limits.max_frame_bytes {
        return Err(DecodeError::FrameTooLarge {
            size,
            max: limits.max_frame_bytes,
        });
    }
    Ok(BodyLength::Known(len))
}

/// Returns the body's length once the body and its NUL are in `buf`.
fn scan_body(body: &mut Body, buf: &[u8], limits: &Limits) -> Result<Option<usize>, DecodeError> {
    match &mut body.length {
        BodyLength::Known(len) => {
            let nul = body.start + *len;
            match buf.get(nul) {
                None => Ok(None),
                Some(0) => Ok(Some(*len)),
                Some(_) => Err(DecodeError::MissingNul),
            }
        }
        BodyLength::UntilNul { scanned } => {
            // The NUL must sit before `limit` for both the body and the frame to fit.
            let body_limit = body
                .start
                .saturating_add(limits.max_body_bytes)
                .saturating_add(1);
            let limit = body_limit.min(limits.max_frame_bytes);
            let window = buf.len().min(limit);
            if *scanned < window {
                if let Some(at) = memchr::memchr(0, &buf[*scanned..window]) {
                    return Ok(Some(*scanned + at - body.start));
                }
                *scanned = window;
            }
            if window < limit {
                return Ok(None);
            }
            Err(if body_limit <= limits.max_frame_bytes {
                DecodeError::BodyTooLarge {
                    size: window - body.start,
                    max: limits.max_body_bytes,
                }
            } else {
                DecodeError::FrameTooLarge {
                    size: window + 1,
                    max: limits.max_frame_bytes,
                }
            })
        }
    }
}
