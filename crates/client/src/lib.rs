//! Rust SDK for Trunkline's HTTP API.
//!
//! A [`Client`] holds a base URL and client credentials; it fetches a token on first use,
//! keeps it, and fetches a new one when the node says it expired or was revoked. Every
//! error the node sends arrives as [`Error::Api`] with its stable [`ErrorCode`].
//!
//! It is not a connection pool manager or a retry policy: one request, one answer (plus
//! at most one token refresh).
//!
//! ```no_run
//! # async fn f() -> Result<(), trunkline_client::Error> {
//! use trunkline_client::{Client, ReceiveOptions};
//! let c = Client::new("http://127.0.0.1:8087", "noc-c2", "secret")?;
//! c.send("soar.noc.slocum.status", &serde_json::json!({"ok": true})).await?;
//! for m in c.receive(&ReceiveOptions::default()).await? {
//!     println!("{} {}", m.topic, m.body);
//! }
//! # Ok(()) }
//! ```

pub mod peer;
pub mod relay;
pub mod stomp;
pub mod ws;

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;
pub use trunkline_api::*;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node answered with an error.
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The node could not be reached, or the connection failed.
    #[error("cannot reach the node: {0}")]
    Transport(String),
    /// The answer was not what the API promises.
    #[error("unexpected answer: {0}")]
    Decode(String),
    #[error("invalid client settings: {0}")]
    Config(String),
    /// The WebSocket session ended (the reason, with the node's close code if it sent one).
    #[error("session closed: {0}")]
    Closed(String),
    /// A called function raised an exception (`call_exception`): its code and message.
    #[error("the function raised `{code}`: {message}")]
    Exception { code: String, message: String },
}

impl Error {
    /// The registry code of an API error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } => ErrorCode::from_code(code),
            _ => None,
        }
    }
}

/// How to receive.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    pub max_messages: usize,
    /// `Some(seconds)`: manual ack with this lease; `None`: auto-ack.
    pub lease: Option<u64>,
    /// Seconds to wait when nothing is ready.
    pub wait: u64,
    /// Read the dead-letter queue instead of the inbox.
    pub dead: bool,
    /// Read this queue (granted to the client) instead; overrides `dead`.
    pub queue: Option<String>,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            max_messages: 10,
            lease: None,
            wait: 0,
            dead: false,
            queue: None,
        }
    }
}

/// A message as received, with its body parsed.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Message {
    pub id: u64,
    pub topic: String,
    pub body: serde_json::Value,
    pub sender: String,
    pub timestamp: String,
    pub redelivered: bool,
    pub delivery_count: u32,
    #[serde(default)]
    pub receipt: Option<String>,
    /// Publisher headers (STOMP `SEND` headers such as `type`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Present when the body is not JSON (it is then a string).
    #[serde(default)]
    pub content_type: Option<String>,
}

/// A Trunkline API client. Cheap to clone? No: share it behind an `Arc`.
pub struct Client {
    base: String,
    http: reqwest::Client,
    client_id: String,
    secret: String,
    token: Mutex<Option<String>>,
}

impl Client {
    /// A client for the node at `base` (e.g. `http://127.0.0.1:8087`).
    pub fn new(base: &str, client_id: &str, secret: &str) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            http,
            client_id: client_id.to_owned(),
            secret: secret.to_owned(),
            token: Mutex::new(None),
        })
    }

    /// A client from a credentials file's contents (`{api, client_id, secret, ...}`).
    pub fn from_credentials(c: &CredentialsFile) -> Result<Self, Error> {
        Self::new(&c.api, &c.client_id, &c.secret)
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub(crate) async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, Error> {
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        if status.is_success() {
            let bytes = if status == StatusCode::NO_CONTENT {
                &b"null"[..]
            } else {
                &bytes[..]
            };
            return serde_json::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => Err(Error::Api {
                status: status.as_u16(),
                code: b.error.code,
                message: b.error.message,
            }),
            Err(_) => Err(Error::Api {
                status: status.as_u16(),
                code: "unknown".into(),
                message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            }),
        }
    }

    pub(crate) fn transport(e: reqwest::Error) -> Error {
        Error::Transport(e.to_string())
    }

    /// Opens a WebSocket session (`GET /ws`) as this client.
    pub async fn websocket(&self) -> Result<ws::WsSession, Error> {
        let token = self.token(false).await?;
        ws::WsSession::connect(&self.base, &token).await
    }

    /// Gets a token with `GET /token` (not cached).
    pub async fn fetch_token(&self) -> Result<TokenResponse, Error> {
        let resp = self
            .http
            .get(format!("{}/token", self.base))
            .query(&[("client_id", &self.client_id), ("secret", &self.secret)])
            .send()
            .await
            .map_err(Self::transport)?;
        Self::decode(resp).await
    }

    async fn token(&self, fresh: bool) -> Result<String, Error> {
        let mut t = self.token.lock().await;
        if fresh || t.is_none() {
            *t = Some(self.fetch_token().await?.token);
        }
        t.clone().ok_or_else(|| Error::Decode("no token".into()))
    }

    /// Sends an authenticated request, refreshing the token once if it was refused.
    async fn call<T: DeserializeOwned>(
        &self,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<T, Error> {
        let token = self.token(false).await?;
        let resp = build(&self.http)
            .bearer_auth(&token)
            .send()
            .await
            .map_err(Self::transport)?;
        match Self::decode(resp).await {
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::TokenExpired | ErrorCode::InvalidToken)
                ) =>
            {
                let token = self.token(true).await?;
                let resp = build(&self.http)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map_err(Self::transport)?;
                Self::decode(resp).await
            }
            other => other,
        }
    }

    pub(crate) async fn json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let url = format!("{}{}", self.base, path);
        self.call(|h| h.request(method.clone(), &url).json(body))
            .await
    }

    /// `POST /send {topic, body}`.
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        topic: &str,
        body: &B,
    ) -> Result<SendResponse, Error> {
        self.json(
            Method::POST,
            "/send",
            &serde_json::json!({"topic": topic, "body": body}),
        )
        .await
    }

    /// `POST /send` with any body form (`{topic, body, message_id, ttl}` or a NOC message).
    pub async fn send_raw(&self, request: &serde_json::Value) -> Result<SendResponse, Error> {
        self.json(Method::POST, "/send", request).await
    }

    /// `POST /notify {body}`.
    pub async fn notify<B: Serialize + ?Sized>(&self, body: &B) -> Result<SendResponse, Error> {
        self.json(Method::POST, "/notify", &serde_json::json!({"body": body}))
            .await
    }

    /// `GET /receive`.
    pub async fn receive(&self, o: &ReceiveOptions) -> Result<Vec<Message>, Error> {
        let mut q = vec![("max_messages", o.max_messages.to_string())];
        if let Some(lease) = o.lease {
            q.push(("ack", "manual".into()));
            q.push(("lease", lease.to_string()));
        }
        if o.wait > 0 {
            q.push(("wait", o.wait.to_string()));
        }
        if let Some(queue) = &o.queue {
            q.push(("queue", queue.clone()));
        } else if o.dead {
            q.push(("queue", "dead".into()));
        }
        let url = format!("{}/receive", self.base);
        self.call(|h| h.get(&url).query(&q)).await
    }

    /// `POST /ack`.
    pub async fn ack(&self, receipts: &[String]) -> Result<AckResponse, Error> {
        self.json(
            Method::POST,
            "/ack",
            &serde_json::json!({"receipts": receipts}),
        )
        .await
    }

    /// `POST /nack`.
    pub async fn nack(&self, receipts: &[String], requeue: bool) -> Result<AckResponse, Error> {
        self.json(
            Method::POST,
            "/nack",
            &serde_json::json!({"receipts": receipts, "requeue": requeue}),
        )
        .await
    }

    /// `PUT /queue/{name}` (admin): declares a queue, or changes one.
    pub async fn declare_queue(&self, name: &str, d: &DeclareQueue) -> Result<QueueInfo, Error> {
        self.json(Method::PUT, &format!("/queue/{name}"), d).await
    }

    /// `GET /queue/{name}` (admin).
    pub async fn get_queue(&self, name: &str) -> Result<QueueInfo, Error> {
        let url = format!("{}/queue/{}", self.base, name);
        self.call(|h| h.get(&url)).await
    }

    /// `POST /client` (admin).
    pub async fn create_client(&self, c: &CreateClient) -> Result<ClientCredentials, Error> {
        self.json(Method::POST, "/client", c).await
    }

    /// `GET /client` (admin).
    pub async fn list_clients(&self) -> Result<Vec<ClientInfo>, Error> {
        let url = format!("{}/client", self.base);
        self.call(|h| h.get(&url)).await
    }

    /// `GET /client/{id}`.
    pub async fn get_client(&self, id: &str) -> Result<ClientInfo, Error> {
        let url = format!("{}/client/{}", self.base, id);
        self.call(|h| h.get(&url)).await
    }

    /// `PATCH /client/{id}` (admin).
    pub async fn update_client(&self, id: &str, u: &UpdateClient) -> Result<ClientInfo, Error> {
        self.json(Method::PATCH, &format!("/client/{id}"), u).await
    }

    /// `DELETE /client/{id}` (admin).
    pub async fn delete_client(&self, id: &str) -> Result<(), Error> {
        let url = format!("{}/client/{}", self.base, id);
        self.call::<serde_json::Value>(|h| h.delete(&url))
            .await
            .map(|_| ())
    }

    /// `POST /client/{id}/secret`.
    pub async fn rotate_secret(&self, id: &str) -> Result<ClientCredentials, Error> {
        let url = format!("{}/client/{}/secret", self.base, id);
        self.call(|h| h.post(&url)).await
    }

    /// `GET /healthz` (no credentials).
    pub async fn health(&self) -> Result<Health, Error> {
        let resp = self
            .http
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .map_err(Self::transport)?;
        Self::decode(resp).await
    }
}
