//! The registry of stable error codes.
//!
//! Every error Trunkline reports, over HTTP today and over STOMP `ERROR` frames later,
//! carries one of these codes. A code never changes meaning once released; clients may
//! match on it. The HTTP status is fixed per code, here and nowhere else.

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = ($code:literal, $status:literal), )*) => {
        /// A stable, machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in registry order (used by the OpenAPI document and tests).
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The code as sent on the wire, e.g. `"unknown_client"`.
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// The HTTP status this code is answered with.
            pub fn status(self) -> u16 {
                match self { $( ErrorCode::$variant => $status, )* }
            }

            /// Looks a wire code up; `None` for a code this version does not know.
            pub fn from_code(code: &str) -> Option<Self> {
                match code { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

error_codes! {
    /// The request body is not valid JSON.
    MalformedJson = ("malformed_json", 400),
    /// The JSON is well formed but a field is missing or has the wrong type.
    InvalidBody = ("invalid_body", 400),
    /// A query parameter is missing or invalid.
    InvalidQuery = ("invalid_query", 400),
    /// A topic is not a valid topic (empty word, wildcard, too long).
    InvalidTopic = ("invalid_topic", 400),
    /// A subscription pattern is invalid (empty word, `*`/`#` inside a word, too long).
    InvalidPattern = ("invalid_pattern", 400),
    /// A client id does not match `[a-z0-9][a-z0-9._-]{0,63}`.
    InvalidClientId = ("invalid_client_id", 400),
    /// A credential was sent somewhere it must not be (a token in the query string).
    CredentialsInWrongPlace = ("credentials_in_wrong_place", 400),
    /// The content type is not one this endpoint accepts.
    UnsupportedMediaType = ("unsupported_media_type", 415),
    /// No credentials were sent.
    MissingCredentials = ("missing_credentials", 401),
    /// The token is malformed, has a bad signature, or its client or secret is gone.
    InvalidToken = ("invalid_token", 401),
    /// The token has expired; get a new one from `/token`.
    TokenExpired = ("token_expired", 401),
    /// The client was deleted or its secret rotated after this session or token was
    /// authenticated: the session is closed; authenticate again with current credentials.
    CredentialsRevoked = ("credentials_revoked", 401),
    /// The client id and secret do not match.
    InvalidCredentials = ("invalid_credentials", 401),
    /// The backend key is wrong.
    InvalidBackendKey = ("invalid_backend_key", 401),
    /// The caller is authenticated but not allowed to do this.
    Forbidden = ("forbidden", 403),
    /// No client with this id.
    UnknownClient = ("unknown_client", 404),
    /// No queue with this name.
    UnknownQueue = ("unknown_queue", 404),
    /// Relays: no twin with this id.
    UnknownTwin = ("unknown_twin", 404),
    /// No such route.
    NotFound = ("not_found", 404),
    /// The route exists but not with this method.
    MethodNotAllowed = ("method_not_allowed", 405),
    /// A client with this id already exists.
    ClientExists = ("client_exists", 409),
    /// The change would leave the node without an admin client.
    LastAdmin = ("last_admin", 409),
    /// A grant names a queue that does not exist: declare it (or create its client) first.
    GrantOfUnknownQueue = ("grant_of_unknown_queue", 409),
    /// A queue name the broker keeps for its own queues (ending in `-inbox`, `-dead` or
    /// `.XQ`), or another queue's.
    QueueNameTaken = ("queue_name_taken", 409),
    /// Relays: the key is another twin's already (one twin per key).
    TwinExists = ("twin_exists", 409),
    /// A message with this `message_id` is being published right now.
    DuplicateInFlight = ("duplicate_in_flight", 409),
    /// A receipt is unknown, already acked, or its lease has expired.
    UnknownReceipt = ("unknown_receipt", 409),
    /// The request was not received, or not handled, within the time allowed.
    RequestTimeout = ("request_timeout", 408),
    /// The body is larger than the configured limit.
    BodyTooLarge = ("body_too_large", 413),
    /// Too many failed attempts; wait and retry.
    Throttled = ("throttled", 429),
    /// A matching queue is full and its overflow policy rejects new messages.
    QueueFull = ("queue_full", 507),
    /// The index of queued messages (queue entries, message records) takes all the memory
    /// the node allows it (`inbox.max_memory_bytes`); consumers must catch up.
    NodeFull = ("node_full", 507),
    /// The store takes all the disk the node allows it (`store.max_disk_bytes`); consumers
    /// must catch up (acks still work, and compaction gives the space back).
    DiskFull = ("disk_full", 507),
    /// The node is shutting down or its store has failed; retry elsewhere or later.
    Unavailable = ("unavailable", 503),
    /// The listener holds as many connections as it may, from the caller's source address
    /// or in all; retry later.
    TooManyConnections = ("too_many_connections", 503),
    /// STOMP: a frame that is not allowed here, or lacks a required header.
    ProtocolError = ("protocol_error", 400),
    /// STOMP: bytes that are not a STOMP frame (bad command, escape, header, length).
    MalformedFrame = ("malformed_frame", 400),
    /// STOMP: a frame, header block or body over the configured limits.
    FrameTooLarge = ("frame_too_large", 413),
    /// STOMP: the client does not offer STOMP 1.2.
    UnsupportedVersion = ("unsupported_version", 400),
    /// STOMP: a destination Trunkline does not serve.
    InvalidDestination = ("invalid_destination", 400),
    /// Federation: the certificate names no node that is an active peer of this one (not in
    /// its node database, `DEACTIVATED`, or without `ACTIVE`), or the peer has as many
    /// connections as it may.
    UnknownPeer = ("unknown_peer", 403),
    /// Federation: a message a peer sent is not one this node takes (its type, fields, ids
    /// or time); the `ERROR` names what is wrong.
    InvalidMessage = ("invalid_message", 400),
    /// STOMP: the client fell silent for longer than the negotiated heart-beat allows.
    HeartbeatTimeout = ("heartbeat_timeout", 408),
    /// STOMP: more subscriptions than a connection may hold; WebSocket: more channels than a
    /// session may join.
    TooManySubscriptions = ("too_many_subscriptions", 429),
    /// STOMP: more frames in one transaction than allowed.
    TransactionTooLarge = ("transaction_too_large", 413),
    /// A live subscriber fell behind and missed messages.
    SlowConsumer = ("slow_consumer", 503),
    /// WebSocket: a frame that is not a JSON envelope `{service, message}`.
    MalformedMessage = ("malformed_message", 400),
    /// WebSocket: no service of this name.
    UnknownService = ("unknown_service", 404),
    /// WebSocket: the service has no command of this name.
    UnknownCommand = ("unknown_command", 404),
    /// WebSocket: a call's `params` are missing, of the wrong type or out of range.
    InvalidParams = ("invalid_params", 400),
    /// WebSocket: more messages per second than the session may send.
    RateLimited = ("rate_limited", 429),
    /// WebSocket: no open session with this id.
    UnknownSession = ("unknown_session", 404),
    /// WebSocket: the node holds as many sessions as it may.
    TooManySessions = ("too_many_sessions", 503),
    /// WebSocket: `GET /ws` without a valid WebSocket upgrade request.
    UpgradeRequired = ("upgrade_required", 426),
    /// RPC and client functions: no session serves or exposes the function called.
    NoCallee = ("no_callee", 404),
    /// RPC and client functions: the callee did not answer within the call's timeout.
    CallTimeout = ("call_timeout", 504),
    /// RPC and client functions: the callee's session ended before it answered.
    CalleeGone = ("callee_gone", 502),
    /// RPC and client functions: every callee holds as many calls as it may.
    CalleeBusy = ("callee_busy", 503),
    /// RPC and client functions: the function raised an exception (its code and message
    /// come with the error).
    CallException = ("call_exception", 502),
    /// An internal error; details are in the server log, never in the answer.
    Internal = ("internal", 500),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The inner object of an error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// A stable code from the registry (a string, so that newer codes still parse).
    pub code: String,
    /// A human-readable explanation; never contains secrets or internal details.
    pub message: String,
    /// More, for the codes that have it: `{"exception": {code, message}}` for
    /// `call_exception`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// The JSON body of every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.as_str().to_owned(),
                message: message.into(),
                details: None,
            },
        }
    }

    /// The registry entry for this body's code, if this version knows it.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(&self.error.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate code {code}");
            assert_eq!(ErrorCode::from_code(code.as_str()), Some(*code));
            assert!((400..600).contains(&code.status()));
        }
    }
}

#[cfg(test)]
mod docs {
    use super::ErrorCode;

    /// docs/errors.md lists every code with its status, so users need not read the sources.
    #[test]
    fn every_code_is_documented_with_its_status() {
        let doc = include_str!("../../../docs/errors.md");
        for code in ErrorCode::ALL {
            let row = format!("| `{}` | {} |", code.as_str(), code.status());
            assert!(doc.contains(&row), "docs/errors.md lacks the row {row}");
        }
    }
}
