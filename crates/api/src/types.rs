//! Request and response bodies of the HTTP API.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One topic pattern or several; the NOC sends one string, Trunkline also takes a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Subscription {
    One(String),
    Many(Vec<String>),
}

impl Subscription {
    /// The patterns as a list.
    pub fn patterns(&self) -> Vec<String> {
        match self {
            Subscription::One(p) => vec![p.clone()],
            Subscription::Many(ps) => ps.clone(),
        }
    }

    /// Builds the NOC shape (a plain string) for one pattern, a list otherwise.
    pub fn from_patterns(mut patterns: Vec<String>) -> Self {
        if patterns.len() == 1 {
            Subscription::One(patterns.remove(0))
        } else {
            Subscription::Many(patterns)
        }
    }
}

/// What happens when a queue is at its length limit and another message arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    /// The publish fails with `queue_full` and nothing is enqueued anywhere.
    #[default]
    RejectPublish,
    /// The oldest message in the queue is dropped to make room.
    DropOldest,
}

/// Per-queue limits; any field left out takes the node's default. Read from a JSON object
/// only (serde would take `[max_length, overflow, max_deliveries]` as well).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "ObjectOnly<QueueSettingsFields>")]
pub struct QueueSettings {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub max_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<OverflowPolicy>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    pub max_deliveries: Option<u32>,
}

/// The fields of [`QueueSettings`], as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueSettingsFields {
    #[serde(default, deserialize_with = "whole")]
    max_length: Option<u64>,
    #[serde(default)]
    overflow: Option<OverflowPolicy>,
    #[serde(default, deserialize_with = "whole")]
    max_deliveries: Option<u32>,
}

/// A `T` read from a JSON object only, never from an array of its fields.
struct ObjectOnly<T>(T);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        serde_json::from_value(serde_json::Value::Object(map))
            .map(ObjectOnly)
            .map_err(D::Error::custom)
    }
}

impl From<ObjectOnly<QueueSettingsFields>> for QueueSettings {
    fn from(o: ObjectOnly<QueueSettingsFields>) -> Self {
        let f = o.0;
        QueueSettings {
            max_length: f.max_length,
            overflow: f.overflow,
            max_deliveries: f.max_deliveries,
        }
    }
}

/// A whole number, also when written `5.0` (JSON does not tell the two apart, and
/// JavaScript clients send what they have).
fn whole<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let v = match (n.as_u64(), n.as_f64()) {
        (Some(v), _) => v,
        (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => f as u64,
        _ => {
            return Err(D::Error::custom(format!(
                "expected a whole number of at least 0, got {n}"
            )))
        }
    };
    T::try_from(v)
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{v} is too large")))
}

fn every_topic() -> Subscription {
    Subscription::One("#".into())
}

/// `POST /client`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateClient {
    pub client_id: String,
    pub client_name: String,
    pub subscription: Subscription,
    /// Topic patterns this client may publish to; left out: every topic (`#`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Subscription>,
    /// Roles: `admin`, `backend`; none by default.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Other queues (such as `<other client>-inbox`) this client may consume from. Each
    /// must exist; a grant goes when its queue's owner is deleted.
    #[serde(default)]
    pub grants: Vec<String>,
    /// Other queues this client may put messages into directly (STOMP `SEND /queue/…`);
    /// never a dead-letter queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_grants: Vec<String>,
    /// Topic patterns this client may also read live (STOMP `/topic/…`) without them
    /// routing into its inbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_topics: Vec<String>,
    /// Limits of the client's inbox.
    #[serde(default)]
    pub inbox: QueueSettings,
}

impl CreateClient {
    /// A client named by its id, with `subscription` and every other field at its default.
    pub fn new(client_id: impl Into<String>, subscription: Subscription) -> Self {
        let client_id = client_id.into();
        CreateClient {
            client_name: client_id.clone(),
            client_id,
            subscription,
            publish: None,
            roles: Vec::new(),
            grants: Vec::new(),
            write_grants: Vec::new(),
            read_topics: Vec::new(),
            inbox: QueueSettings::default(),
        }
    }
}

/// `PATCH /client/{id}`: every field is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateClient {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Subscription>,
    /// `"#"` lets the client publish to every topic again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Subscription>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_grants: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_topics: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox: Option<QueueSettings>,
}

/// A client as `GET /client` shows it: never with its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub client_id: String,
    pub client_name: String,
    pub subscription: Subscription,
    /// Topic patterns it may publish to (`"#"`: every topic).
    #[serde(default = "every_topic")]
    pub publish: Subscription,
    pub roles: Vec<String>,
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default)]
    pub write_grants: Vec<String>,
    #[serde(default)]
    pub read_topics: Vec<String>,
    pub inbox: QueueSettings,
    /// Messages waiting in the inbox (ready and leased).
    #[serde(default)]
    pub inbox_depth: u64,
}

/// `PUT /queue/{name}`: declares a queue, or changes the bindings, limits and labels of
/// one that exists (what it holds stays).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclareQueue {
    /// Topic patterns routed into the queue.
    #[serde(default)]
    pub bindings: Vec<String>,
    #[serde(default)]
    pub limits: QueueSettings,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A declared queue as `GET /queue` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    pub bindings: Vec<String>,
    pub limits: QueueSettings,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its dead-letter queue, `<name>.XQ`.
    pub dead_letter: String,
    /// Messages in it (ready and leased), and in its dead-letter queue.
    pub depth: u64,
    pub dead_depth: u64,
}

/// `POST /client` and `POST /client/{id}/secret` answers: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_name: String,
    pub subscription: Subscription,
    pub secret: String,
}

/// A credentials file, in the shape of the NOC's `soar-config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialsFile {
    pub api: String,
    pub client_id: String,
    pub client_name: String,
    pub subscription: Subscription,
    pub secret: String,
}

/// `GET /token` answer (NOC shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    /// RFC 3339 time in UTC after which the token is refused.
    pub expiry: String,
}

/// `POST /token` request (OAuth2 client-credentials grant), as a form or JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuthTokenRequest {
    pub grant_type: String,
    pub client_id: String,
    pub client_secret: String,
}

/// `POST /token` answer (OAuth2 shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OAuthTokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
}

/// `POST /send` and `POST /notify` answer: the message is durable in `delivered_to` inboxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    pub id: u64,
    pub delivered_to: u64,
    /// True when this `message_id` was already accepted within the dedup window; the
    /// answer then repeats the first one and nothing was enqueued again.
    #[serde(default)]
    pub duplicate: bool,
}

/// One message of a `GET /receive` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceivedMessage {
    pub id: u64,
    pub topic: String,
    /// The body exactly as it was sent (any JSON value).
    pub body: Box<RawValue>,
    pub sender: String,
    /// RFC 3339 time in UTC at which the node accepted the message.
    pub timestamp: String,
    pub redelivered: bool,
    pub delivery_count: u32,
    /// Present in `ack=manual` mode: pass it to `/ack` or `/nack` before the lease ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

/// `POST /ack` and `POST /nack`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipts {
    pub receipts: Vec<String>,
}

/// `POST /ack` and `POST /nack` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AckResponse {
    /// How many receipts took effect.
    pub done: u64,
    /// Receipts that were unknown, already settled, or whose lease had expired.
    pub unknown: Vec<String>,
}

/// `GET /healthz` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// A twin as the registry shows it (`GET /twins/{id}`, `GET /twins?key=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinInfo {
    pub id: u32,
    /// `ed25519:…`
    pub key: String,
    /// The relays it is reached through (empty: any relay that holds it in its registry).
    pub relays: Vec<String>,
    /// The timestamp of the claim the registry holds.
    pub updated: u64,
}

/// A twin's claim as `POST /twins` and `PUT /twins/{id}` take it (docs/relays.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TwinClaimBody {
    pub key: String,
    #[serde(default)]
    pub relays: Vec<String>,
    pub timestamp: u64,
    /// base64url of the 64-byte signature.
    pub signature: String,
}

/// The relay's first message on `/relay` (a text frame), and `GET /relay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayHello {
    /// The name twins list this relay under.
    pub relay: String,
    /// The key its own envelopes (errors, pongs) are signed with: `ed25519:…`.
    pub key: String,
    /// base64url of 32 random bytes the login signs; absent from `GET /relay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
}

/// The relay's answer to a good login (a text frame); envelopes flow after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayReady {
    /// Who is logged in: `41`, `41:session`, or `relay:<name>`.
    pub logged_in: String,
}

/// The relay's confirmation (a text frame): the first `stored` envelopes this connection
/// sent are handled: stored and synced (here or for another relay), or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStored {
    pub stored: u64,
}
