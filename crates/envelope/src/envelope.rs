//! The envelope and its one encoding, which is both what travels and what is signed.
//!
//! Byte layout (integers big-endian; `str8`/`str16` a length of 1 or 2 bytes then UTF-8;
//! `opt` a byte 0 or 1, then the value if 1):
//!
//! ```text
//! magic       4   "TLE" 0x01
//! uid         str8            1..=128 bytes
//! tags        opt str16       ..=1024 bytes
//! timestamp   u64             seconds since 1970 (UTC) when sent
//! expiration  u32             seconds it stays valid after timestamp, 1..=MAX_TTL
//! source      u32 twin, opt str8 session (1..=64 bytes)
//! destination u32 twin, opt str8 session
//! kind        u8  1 request: str8 command (1..=255 bytes)
//!                 2 response
//!                 3 error: u32 code, str16 message (..=4096 bytes)
//!                 4 ping, 5 pong
//! schema      opt str8
//! payload     u8 0 plain | 1 cipher, u32 length, bytes (..=MAX_PAYLOAD)
//! signature   64              ed25519 by the source twin over DOMAIN ‖ every byte above
//! ```
//!
//! Every field is signed, each with its length, so that no two envelopes share a signed
//! encoding (RMB signs the MD5 of its fields run together, so that `tags` "ab" with uid
//! "c" signs as uid "cab"...). Decoding refuses anything but this exact form: unknown
//! kinds, flags other than 0 and 1, bad UTF-8, lengths past their limits, trailing bytes.

use crate::identity::{Identity, PublicKey};

/// What an encoding starts with.
pub const MAGIC: [u8; 4] = *b"TLE\x01";
/// What a signature covers before the encoding: no signature over anything else (a relay
/// login token, say) can pass for one over an envelope.
pub const DOMAIN: &[u8] = b"trunkline envelope v1\0";
/// Longest life an envelope may ask for, in seconds (RMB caps at 1800 too).
pub const MAX_TTL: u32 = 1800;
/// Life when the sender asks for none.
pub const DEFAULT_TTL: u32 = 300;
/// Largest payload, in bytes.
pub const MAX_PAYLOAD: usize = 16 << 20;
/// How far ahead of the receiver's clock a timestamp may be.
pub const MAX_CLOCK_SKEW: u64 = 60;

const MAX_UID: usize = 128;
const MAX_TAGS: usize = 1024;
const MAX_SESSION: usize = 64;
const MAX_COMMAND: usize = 255;
const MAX_ERROR: usize = 4096;
const MAX_SCHEMA: usize = 255;

/// A twin, and optionally one of its sessions: `41` or `41:session`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    pub twin: u32,
    pub session: Option<String>,
}

impl Address {
    pub fn twin(twin: u32) -> Self {
        Address {
            twin,
            session: None,
        }
    }

    /// Reads `41` or `41:session`.
    pub fn parse(text: &str) -> Option<Self> {
        let (twin, session) = match text.split_once(':') {
            Some((t, s)) => (t, Some(s)),
            None => (text, None),
        };
        let twin = twin.parse().ok().filter(|_| !twin.starts_with('+'))?;
        let session = match session {
            Some(s) if valid_session(s) => Some(s.to_owned()),
            Some(_) => return None,
            None => None,
        };
        Some(Address { twin, session })
    }
}

pub(crate) fn valid_session(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SESSION && !s.contains(['\0', ':'])
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.session {
            Some(s) => write!(f, "{}:{s}", self.twin),
            None => write!(f, "{}", self.twin),
        }
    }
}

/// What an envelope is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Request { command: String },
    Response,
    Error { code: u32, message: String },
    Ping,
    Pong,
}

/// The payload: as sent, or sealed for the destination ([`crate::seal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Plain(Vec<u8>),
    Cipher(Vec<u8>),
}

impl Payload {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Plain(b) | Payload::Cipher(b) => b,
        }
    }
}

/// An envelope. Build it, [`Envelope::sign`] it, [`Envelope::encode`] it; on the other
/// side [`Envelope::decode`], [`Envelope::verify`], check it is current and not a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub uid: String,
    pub tags: Option<String>,
    pub timestamp: u64,
    pub expiration: u32,
    pub source: Address,
    pub destination: Address,
    pub kind: Kind,
    pub schema: Option<String>,
    pub payload: Payload,
    pub signature: [u8; 64],
}

/// Why bytes are not an envelope, or an envelope is not to be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not an envelope: {0}")]
    Malformed(&'static str),
    #[error("the signature is not the source twin's over this envelope")]
    BadSignature,
    #[error("the envelope expired {0} s ago")]
    Expired(u64),
    #[error("the envelope's timestamp is {0} s ahead of this clock")]
    FromTheFuture(u64),
    #[error("this envelope was seen before (a replay)")]
    Replay,
    #[error("{0}")]
    Invalid(String),
}

impl Envelope {
    /// An unsigned envelope from `source` to `destination`, sent `now` to live `ttl`
    /// seconds (0: [`DEFAULT_TTL`]; capped at [`MAX_TTL`]).
    pub fn new(
        uid: impl Into<String>,
        source: Address,
        destination: Address,
        kind: Kind,
        payload: Payload,
        now: u64,
        ttl: u32,
    ) -> Self {
        Envelope {
            uid: uid.into(),
            tags: None,
            timestamp: now,
            expiration: if ttl == 0 {
                DEFAULT_TTL
            } else {
                ttl.min(MAX_TTL)
            },
            source,
            destination,
            kind,
            schema: None,
            payload,
            signature: [0; 64],
        }
    }

    /// The encoding without its signature (what is signed, after [`DOMAIN`]).
    fn body(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut w = Writer(Vec::with_capacity(96 + self.payload.bytes().len()));
        w.0.extend_from_slice(&MAGIC);
        w.str8(&self.uid, 1, MAX_UID, "uid")?;
        w.opt_str16(self.tags.as_deref(), MAX_TAGS, "tags")?;
        w.0.extend_from_slice(&self.timestamp.to_be_bytes());
        if self.expiration == 0 || self.expiration > MAX_TTL {
            return Err(EnvelopeError::Malformed("expiration out of range"));
        }
        w.0.extend_from_slice(&self.expiration.to_be_bytes());
        w.address(&self.source)?;
        w.address(&self.destination)?;
        match &self.kind {
            Kind::Request { command } => {
                w.0.push(1);
                w.str8(command, 1, MAX_COMMAND, "command")?;
            }
            Kind::Response => w.0.push(2),
            Kind::Error { code, message } => {
                w.0.push(3);
                w.0.extend_from_slice(&code.to_be_bytes());
                w.str16(message, MAX_ERROR, "error message")?;
            }
            Kind::Ping => w.0.push(4),
            Kind::Pong => w.0.push(5),
        }
        match &self.schema {
            Some(s) => {
                w.0.push(1);
                w.str8(s, 0, MAX_SCHEMA, "schema")?;
            }
            None => w.0.push(0),
        }
        let (flag, bytes) = match &self.payload {
            Payload::Plain(b) => (0, b),
            Payload::Cipher(b) => (1, b),
        };
        if bytes.len() > MAX_PAYLOAD {
            return Err(EnvelopeError::Malformed("payload too large"));
        }
        w.0.push(flag);
        w.0.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        w.0.extend_from_slice(bytes);
        Ok(w.0)
    }

    fn signed_bytes(body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
        m.extend_from_slice(DOMAIN);
        m.extend_from_slice(body);
        m
    }

    /// Signs the envelope as `identity` (the source twin's).
    pub fn sign(&mut self, identity: &Identity) -> Result<(), EnvelopeError> {
        let body = self.body()?;
        self.signature = identity.sign(&Self::signed_bytes(&body));
        Ok(())
    }

    /// Whether the signature is `key`'s over this envelope as it is.
    pub fn verify(&self, key: &PublicKey) -> Result<(), EnvelopeError> {
        let body = self.body()?;
        if key.verify(&Self::signed_bytes(&body), &self.signature) {
            Ok(())
        } else {
            Err(EnvelopeError::BadSignature)
        }
    }

    /// The encoding, signature last.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = self.body()?;
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Reads an encoding, refusing anything but its exact form.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(EnvelopeError::Malformed("not an envelope (magic)"));
        }
        let uid = r.str8(1, MAX_UID)?;
        let tags = match r.flag()? {
            true => Some(r.str16(MAX_TAGS)?),
            false => None,
        };
        let timestamp = r.u64()?;
        let expiration = r.u32()?;
        if expiration == 0 || expiration > MAX_TTL {
            return Err(EnvelopeError::Malformed("expiration out of range"));
        }
        let source = r.address()?;
        let destination = r.address()?;
        let kind = match r.u8()? {
            1 => Kind::Request {
                command: r.str8(1, MAX_COMMAND)?,
            },
            2 => Kind::Response,
            3 => Kind::Error {
                code: r.u32()?,
                message: r.str16(MAX_ERROR)?,
            },
            4 => Kind::Ping,
            5 => Kind::Pong,
            _ => return Err(EnvelopeError::Malformed("unknown kind")),
        };
        let schema = match r.flag()? {
            true => Some(r.str8(0, MAX_SCHEMA)?),
            false => None,
        };
        let cipher = r.flag()?;
        let len = r.u32()? as usize;
        if len > MAX_PAYLOAD {
            return Err(EnvelopeError::Malformed("payload too large"));
        }
        let data = r.take(len)?.to_vec();
        let payload = if cipher {
            Payload::Cipher(data)
        } else {
            Payload::Plain(data)
        };
        let signature: [u8; 64] = r
            .take(64)?
            .try_into()
            .map_err(|_| EnvelopeError::Malformed("signature"))?;
        if !r.0.is_empty() {
            return Err(EnvelopeError::Malformed("bytes after the signature"));
        }
        Ok(Envelope {
            uid,
            tags,
            timestamp,
            expiration,
            source,
            destination,
            kind,
            schema,
            payload,
            signature,
        })
    }

    /// When it stops being valid (seconds since 1970).
    pub fn expires_at(&self) -> u64 {
        self.timestamp.saturating_add(u64::from(self.expiration))
    }

    /// `Ok` if the envelope is valid at `now`: not expired, and not stamped more than
    /// [`MAX_CLOCK_SKEW`] ahead.
    pub fn check_time(&self, now: u64) -> Result<(), EnvelopeError> {
        if self.timestamp > now + MAX_CLOCK_SKEW {
            return Err(EnvelopeError::FromTheFuture(self.timestamp - now));
        }
        if self.expires_at() <= now {
            return Err(EnvelopeError::Expired(now - self.expires_at()));
        }
        Ok(())
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn str8(
        &mut self,
        s: &str,
        min: usize,
        max: usize,
        what: &'static str,
    ) -> Result<(), EnvelopeError> {
        if s.len() < min || s.len() > max.min(255) {
            return Err(EnvelopeError::Malformed(what));
        }
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn str16(&mut self, s: &str, max: usize, what: &'static str) -> Result<(), EnvelopeError> {
        if s.len() > max.min(u16::MAX as usize) {
            return Err(EnvelopeError::Malformed(what));
        }
        self.0.extend_from_slice(&(s.len() as u16).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn opt_str16(
        &mut self,
        s: Option<&str>,
        max: usize,
        what: &'static str,
    ) -> Result<(), EnvelopeError> {
        match s {
            Some(s) => {
                self.0.push(1);
                self.str16(s, max, what)
            }
            None => {
                self.0.push(0);
                Ok(())
            }
        }
    }

    fn address(&mut self, a: &Address) -> Result<(), EnvelopeError> {
        self.0.extend_from_slice(&a.twin.to_be_bytes());
        match &a.session {
            Some(s) if valid_session(s) => {
                self.0.push(1);
                self.str8(s, 1, MAX_SESSION, "session")
            }
            Some(_) => Err(EnvelopeError::Malformed("session")),
            None => {
                self.0.push(0);
                Ok(())
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        if self.0.len() < n {
            return Err(EnvelopeError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, EnvelopeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(EnvelopeError::Malformed("a flag that is not 0 or 1")),
        }
    }

    fn u32(&mut self) -> Result<u32, EnvelopeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, EnvelopeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn utf8(&mut self, n: usize) -> Result<String, EnvelopeError> {
        std::str::from_utf8(self.take(n)?)
            .map(str::to_owned)
            .map_err(|_| EnvelopeError::Malformed("text that is not UTF-8"))
    }

    fn str8(&mut self, min: usize, max: usize) -> Result<String, EnvelopeError> {
        let n = self.u8()? as usize;
        if n < min || n > max {
            return Err(EnvelopeError::Malformed(
                "a string out of its length limits",
            ));
        }
        self.utf8(n)
    }

    fn str16(&mut self, max: usize) -> Result<String, EnvelopeError> {
        let b = self.take(2)?;
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        if n > max {
            return Err(EnvelopeError::Malformed(
                "a string out of its length limits",
            ));
        }
        self.utf8(n)
    }

    fn address(&mut self) -> Result<Address, EnvelopeError> {
        let twin = self.u32()?;
        let session = match self.flag()? {
            true => {
                let s = self.str8(1, MAX_SESSION)?;
                if !valid_session(&s) {
                    return Err(EnvelopeError::Malformed("session"));
                }
                Some(s)
            }
            false => None,
        };
        Ok(Address { twin, session })
    }
}
