//! Relays (docs/relays.md): the twin registry read over HTTP ([`Directory`]), and one
//! logged-in connection to a relay's `/relay` WebSocket ([`RelayConn`]). [`crate::peer`]
//! builds a twin's gateway on them; the node uses them to forward to other relays.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trunkline_envelope::{Identity, Login, PublicKey, TwinClaim, Who};

use crate::{Client, Error, ErrorCode, RelayHello, RelayReady, TwinClaimBody, TwinInfo};

/// Seconds since 1970.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A twin as a relay or gateway uses it: its key read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Twin {
    pub id: u32,
    pub key: PublicKey,
    pub relays: Vec<String>,
}

impl TryFrom<TwinInfo> for Twin {
    type Error = Error;
    fn try_from(t: TwinInfo) -> Result<Self, Error> {
        Ok(Twin {
            id: t.id,
            key: PublicKey::from_text(&t.key)
                .map_err(|e| Error::Decode(format!("twin {}: {e}", t.id)))?,
            relays: t.relays,
        })
    }
}

/// How long a twin read from the registry is used before it is read again.
pub const TWIN_CACHE: Duration = Duration::from_secs(60);
/// How long "no such twin" is believed.
const UNKNOWN_CACHE: Duration = Duration::from_secs(5);

/// The twin registry of a node (`/twins`), read over HTTP and cached.
pub struct Directory {
    base: String,
    http: reqwest::Client,
    cache: Mutex<HashMap<u32, (Instant, Option<Twin>)>>,
}

impl Directory {
    /// The registry of the node at `base` (`http://127.0.0.1:8087`).
    pub fn new(base: &str) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Directory {
            base: base.trim_end_matches('/').to_owned(),
            http,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Twin `id`, `None` if the registry has none.
    pub async fn twin(&self, id: u32) -> Result<Option<Twin>, Error> {
        if let Some((at, t)) = self.cache.lock().ok().and_then(|c| c.get(&id).cloned()) {
            let keep = if t.is_some() {
                TWIN_CACHE
            } else {
                UNKNOWN_CACHE
            };
            if at.elapsed() < keep {
                return Ok(t);
            }
        }
        let got = self.get(&format!("{}/twins/{id}", self.base)).await?;
        if let Ok(mut c) = self.cache.lock() {
            if c.len() > 100_000 {
                c.clear();
            }
            c.insert(id, (Instant::now(), got.clone()));
        }
        Ok(got)
    }

    /// The twin holding `key`, if any (not cached).
    pub async fn find(&self, key: &PublicKey) -> Result<Option<Twin>, Error> {
        self.get(&format!("{}/twins?key={}", self.base, key.to_text()))
            .await
    }

    /// Forgets what it read of twin `id` (its key changed, say).
    pub fn forget(&self, id: u32) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(&id);
        }
    }

    async fn get(&self, url: &str) -> Result<Option<Twin>, Error> {
        let resp = self.http.get(url).send().await.map_err(Client::transport)?;
        match Client::decode::<TwinInfo>(resp).await {
            Ok(t) => Ok(Some(t.try_into()?)),
            Err(e) if e.code() == Some(ErrorCode::UnknownTwin) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Changes twin `id` with a claim signed by `signer` (the key the registry holds for
    /// it): to `key`'s identity, reached through `relays`.
    pub async fn update(
        &self,
        id: u32,
        signer: &Identity,
        key: &PublicKey,
        relays: &[String],
    ) -> Result<TwinInfo, Error> {
        // A change must be newer than the claim held, to the second.
        let url = format!("{}/twins/{id}", self.base);
        let held = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(Client::transport)?;
        let held: TwinInfo = Client::decode(held).await?;
        let body = claim_body(id, signer, key, relays, unix_now().max(held.updated + 1))?;
        let resp = self
            .http
            .put(url)
            .json(&body)
            .send()
            .await
            .map_err(Client::transport)?;
        self.forget(id);
        Client::decode(resp).await
    }
}

/// A signed claim as the registry takes it.
pub fn claim_body(
    id: u32,
    signer: &Identity,
    key: &PublicKey,
    relays: &[String],
    timestamp: u64,
) -> Result<TwinClaimBody, Error> {
    let claim = TwinClaim {
        id,
        key: *key,
        relays: relays.to_vec(),
        timestamp,
    };
    let signature = claim
        .sign(signer)
        .map_err(|e| Error::Config(e.to_string()))?;
    Ok(TwinClaimBody {
        key: key.to_text(),
        relays: claim.relays,
        timestamp: claim.timestamp,
        signature: URL_SAFE_NO_PAD.encode(signature),
    })
}

impl Client {
    /// Registers `identity` as a new twin reached through `relays` (`POST /twins`).
    pub async fn register_twin(
        &self,
        identity: &Identity,
        relays: &[String],
    ) -> Result<TwinInfo, Error> {
        let body = claim_body(0, identity, &identity.public(), relays, unix_now())?;
        self.json(reqwest::Method::POST, "/twins", &body).await
    }
}

/// The WebSocket URL of a relay named `name`: a URL (`http://127.0.0.1:8087`,
/// `wss://relay.example`) as it is, with `http` read as `ws` and `/relay` as the path when
/// it has none; a bare `host[:port]` over TLS (`wss://host:port/relay`).
pub fn relay_url(name: &str) -> String {
    let (scheme, rest) = match name.split_once("://") {
        Some(("http", r)) | Some(("ws", r)) => ("ws", r),
        Some(("https", r)) | Some(("wss", r)) => ("wss", r),
        Some((s, r)) => (s, r),
        None => ("wss", name),
    };
    if rest.contains('/') {
        format!("{scheme}://{rest}")
    } else {
        format!("{scheme}://{rest}/relay")
    }
}

/// The HTTP base URL of the node whose relay is named `name` (where its registry is, when
/// it keeps one): `wss://r.example` is `https://r.example`, a bare `host:port` is
/// `https://host:port`.
pub fn node_url(name: &str) -> String {
    let ws = relay_url(name);
    let base = ws.strip_suffix("/relay").unwrap_or(&ws);
    if let Some(rest) = base.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = base.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        base.to_owned()
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long the relay has to say hello, and to take the login.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A logged-in connection to a relay. Envelopes travel as binary frames.
pub struct RelayConn {
    ws: Ws,
    /// What the relay said of itself.
    pub hello: RelayHello,
    /// The key the relay signs its own envelopes with.
    pub relay_key: PublicKey,
}

/// The sending half of a [`RelayConn`].
pub type RelaySink = SplitSink<Ws, Frame>;
/// The receiving half of a [`RelayConn`].
pub type RelayStream = SplitStream<Ws>;

impl RelayConn {
    /// Connects to the relay named `relay` ([`relay_url`]) and logs in as `who`, signing
    /// the relay's challenge with `identity`.
    pub async fn connect(relay: &str, identity: &Identity, who: Who) -> Result<Self, Error> {
        let url = relay_url(relay);
        let run = async {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(|e| Error::Transport(format!("{url}: {e}")))?;
            let hello: RelayHello = match ws.next().await {
                Some(Ok(Frame::Text(t))) => {
                    serde_json::from_str(&t).map_err(|e| Error::Decode(e.to_string()))?
                }
                other => return Err(closed(other)),
            };
            let relay_key =
                PublicKey::from_text(&hello.key).map_err(|e| Error::Decode(e.to_string()))?;
            let challenge: [u8; 32] = hello
                .challenge
                .as_deref()
                .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
                .and_then(|c| c.try_into().ok())
                .ok_or_else(|| Error::Decode("the relay's hello has no challenge".into()))?;
            let login = Login::sign(identity, challenge, who, unix_now())
                .map_err(|e| Error::Config(e.to_string()))?
                .encode()
                .map_err(|e| Error::Config(e.to_string()))?;
            ws.send(Frame::Binary(login.into()))
                .await
                .map_err(|e| Error::Transport(e.to_string()))?;
            match ws.next().await {
                Some(Ok(Frame::Text(t))) => {
                    serde_json::from_str::<RelayReady>(&t)
                        .map_err(|e| Error::Decode(e.to_string()))?;
                }
                other => return Err(closed(other)),
            }
            Ok(RelayConn {
                ws,
                hello,
                relay_key,
            })
        };
        tokio::time::timeout(LOGIN_TIMEOUT, run)
            .await
            .map_err(|_| Error::Transport(format!("{url}: no login in {LOGIN_TIMEOUT:?}")))?
    }

    /// The two halves, to send and receive at once.
    pub fn split(self) -> (RelaySink, RelayStream) {
        self.ws.split()
    }
}

/// What a connection that ended instead of answering said.
fn closed(frame: Option<Result<Frame, tokio_tungstenite::tungstenite::Error>>) -> Error {
    match frame {
        Some(Ok(Frame::Close(Some(c)))) => Error::Closed(format!("{}: {}", c.code, c.reason)),
        None | Some(Ok(Frame::Close(None))) => Error::Closed("the relay closed".into()),
        Some(Ok(f)) => Error::Decode(format!("unexpected frame from the relay: {f:?}")),
        Some(Err(e)) => Error::Transport(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::relay_url;

    #[test]
    fn relay_names_become_websocket_urls() {
        assert_eq!(relay_url("http://127.0.0.1:80"), "ws://127.0.0.1:80/relay");
        assert_eq!(relay_url("https://r.example"), "wss://r.example/relay");
        assert_eq!(relay_url("r.example:8443"), "wss://r.example:8443/relay");
        assert_eq!(relay_url("ws://h:1/x"), "ws://h:1/x");
        assert_eq!(
            super::node_url("http://127.0.0.1:80"),
            "http://127.0.0.1:80"
        );
        assert_eq!(super::node_url("wss://r.example"), "https://r.example");
        assert_eq!(super::node_url("r.example:8443"), "https://r.example:8443");
    }
}
