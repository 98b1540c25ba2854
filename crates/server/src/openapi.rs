//! The OpenAPI 3.1 description of the HTTP API, served at `/openapi.json`.
//!
//! Written by hand next to the handlers; a test checks that every route the router
//! serves is described here and that every error code used is in the registry.

use serde_json::{json, Map, Value};
use trunkline_api::ErrorCode;

use ErrorCode::*;

/// Error responses for `codes`, grouped by status, each listing its codes.
fn errors(codes: &[ErrorCode]) -> Map<String, Value> {
    let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
    for c in codes {
        by_status.entry(c.status()).or_default().push(c.as_str());
    }
    by_status
        .into_iter()
        .map(|(status, codes)| {
            (
                status.to_string(),
                json!({
                    "description": format!("Error; code one of: {}", codes.join(", ")),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }),
            )
        })
        .collect()
}

fn op(summary: &str, ok: (&str, Value), codes: &[ErrorCode], extra: Value) -> Value {
    let mut responses = errors(codes);
    responses.insert(ok.0.to_owned(), ok.1);
    let mut o = json!({"summary": summary, "responses": responses});
    if let (Some(o), Value::Object(extra)) = (o.as_object_mut(), extra) {
        o.extend(extra);
    }
    o
}

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn ok(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": schema}}})
}

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn q(name: &str, desc: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": desc, "schema": schema})
}

fn q_required(name: &str, desc: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": true, "description": desc, "schema": schema})
}

const AUTH: &[ErrorCode] = &[
    MissingCredentials,
    InvalidToken,
    TokenExpired,
    CredentialsInWrongPlace,
    CredentialsRevoked,
];

fn with(base: &[ErrorCode], more: &[ErrorCode]) -> Vec<ErrorCode> {
    let mut v = base.to_vec();
    v.extend_from_slice(more);
    v.extend_from_slice(&[RequestTimeout, Unavailable, TooManyConnections, Internal]);
    v
}

/// The document for one listener: the backend listener also takes the backend key and
/// serves `/metrics`.
pub fn document(backend: bool, config: &crate::Config) -> Value {
    let admin = if backend {
        with(AUTH, &[Forbidden, InvalidBackendKey])
    } else {
        with(AUTH, &[Forbidden])
    };
    let id_param = json!([{"name": "client_id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let admin_sec = if backend {
        json!([{"bearer": []}, {"backendKey": []}])
    } else {
        json!([{"bearer": []}])
    };
    let client_ops = json!({
        "post": op("Create a client; the answer holds its secret, shown only this once.",
            ("201", ok("Created", r("ClientCredentials"))),
            &with(&admin, &[MalformedJson, InvalidBody, InvalidClientId, InvalidPattern, UnsupportedMediaType, BodyTooLarge, ClientExists, GrantOfUnknownQueue]),
            json!({"requestBody": body("CreateClient"), "security": admin_sec})),
        "get": op("List clients (never their secrets).", ("200", ok("Clients", json!({"type": "array", "items": r("Client")}))),
            &admin, json!({"security": admin_sec})),
    });
    let one_client = json!({
        "parameters": id_param,
        "get": op("Show a client (admins, or the client itself).", ("200", ok("Client", r("Client"))),
            &with(&admin, &[UnknownClient]), json!({"security": admin_sec})),
        "patch": op("Change name, subscription, publish patterns, roles, grants or inbox limits; effective at once, for open sessions too.", ("200", ok("Client", r("Client"))),
            &with(&admin, &[MalformedJson, InvalidBody, InvalidPattern, UnsupportedMediaType, BodyTooLarge, UnknownClient, GrantOfUnknownQueue, LastAdmin]),
            json!({"requestBody": body("UpdateClient"), "security": admin_sec})),
        "delete": op("Delete a client, its inbox, its tokens, grants of its queues and its open sessions (not the last admin).", ("204", json!({"description": "Deleted"})),
            &with(&admin, &[UnknownClient, LastAdmin]), json!({"security": admin_sec})),
    });
    let rotate = json!({
        "parameters": id_param,
        "post": op("Rotate a client's secret (admins, or the client itself); old tokens stop working.",
            ("200", ok("New credentials", r("ClientCredentials"))), &with(&admin, &[UnknownClient]), json!({"security": admin_sec})),
    });
    let name_param =
        json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let queue_list = json!({
        "get": op("List declared queues.", ("200", ok("Queues", json!({"type": "array", "items": r("Queue")}))),
            &admin, json!({"security": admin_sec})),
    });
    let mut one_queue = json!({
        "parameters": name_param,
        "get": op("Show a declared queue.", ("200", ok("Queue", r("Queue"))),
            &with(&admin, &[UnknownQueue]), json!({"security": admin_sec})),
        "put": op("Declare a queue (201), or change the bindings, limits and labels of one that exists (200); what it holds stays.",
            ("200", ok("Changed", r("Queue"))),
            &with(&admin, &[MalformedJson, InvalidBody, InvalidPattern, UnsupportedMediaType, BodyTooLarge, NotFound, QueueNameTaken]),
            json!({"requestBody": body("DeclareQueue"), "security": admin_sec})),
        "delete": op("Delete a declared queue, its dead-letter queue, what they hold and the grants naming them.", ("204", json!({"description": "Deleted"})),
            &with(&admin, &[UnknownQueue]), json!({"security": admin_sec})),
    });
    one_queue["put"]["responses"]["201"] = ok("Declared", r("Queue"));
    let twin_claim =
        json!({"required": true, "content": {"application/json": {"schema": r("TwinClaim")}}});
    let twin_ok = |d: &str| ok(d, r("Twin"));
    let twin_list = json!({
        "post": op("Register a twin: its claim (id 0), signed by the twin's own key; the registry picks its id. A client may register 16.",
            ("201", twin_ok("Registered")),
            &with(AUTH, &[MalformedJson, InvalidBody, UnsupportedMediaType, BodyTooLarge, Forbidden, TwinExists]),
            json!({"requestBody": twin_claim, "security": [{"bearer": []}]})),
        "get": op("The twin holding a key.", ("200", twin_ok("Twin")), &with(&[], &[InvalidQuery, UnknownTwin]),
            json!({"parameters": [q_required("key", "ed25519:<base64url>", json!({"type": "string"}))]})),
    });
    let one_twin = json!({
        "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0, "maximum": u32::MAX}}],
        "get": op("Show a twin: its key and relays.", ("200", twin_ok("Twin")), &with(&[], &[NotFound, UnknownTwin]), json!({})),
        "put": op("Change a twin (key, relays) with a claim newer than the one it holds, signed by the key it holds.",
            ("200", twin_ok("Changed")),
            &with(&[], &[MalformedJson, InvalidBody, UnsupportedMediaType, BodyTooLarge, Forbidden, NotFound, UnknownTwin, TwinExists]),
            json!({"requestBody": twin_claim})),
    });
    let token = json!({
        "get": op("Client-credentials grant (NOC).", ("200", ok("Token", r("Token"))),
            &with(&[], &[InvalidQuery, InvalidCredentials, Throttled]),
            json!({"parameters": [q_required("client_id", "Client id", json!({"type": "string"})), q_required("secret", "Client secret", json!({"type": "string"}))]})),
        "post": op("OAuth2 client-credentials grant, as a form or JSON, or with HTTP Basic credentials.",
            ("200", ok("Token", r("OAuthToken"))),
            &with(&[], &[MalformedJson, InvalidBody, UnsupportedMediaType, InvalidCredentials, Throttled, BodyTooLarge]),
            json!({"requestBody": {"required": true, "content": {
                "application/x-www-form-urlencoded": {"schema": r("OAuthTokenRequest")},
                "application/json": {"schema": r("OAuthTokenRequest")}}}})),
    });
    let publish_errors = with(
        AUTH,
        &[
            MalformedJson,
            InvalidBody,
            InvalidTopic,
            UnsupportedMediaType,
            BodyTooLarge,
            QueueFull,
            NodeFull,
            DiskFull,
            DuplicateInFlight,
            Forbidden,
        ],
    );
    let send = json!({"post": op("Publish to a topic; 202 once durable in every matching inbox.",
        ("202", ok("Accepted", r("SendResult"))), &publish_errors,
        json!({"requestBody": body("SendRequest"), "security": [{"bearer": []}]}))});
    let notify = json!({"post": op("Broadcast to every inbox; 202 once durable in all of them.",
        ("202", ok("Accepted", r("SendResult"))), &publish_errors,
        json!({"requestBody": body("NotifyRequest"), "security": [{"bearer": []}]}))});
    let receive = json!({"get": op("Take messages from the caller's inbox.",
        ("200", ok("Messages, oldest first", json!({"type": "array", "items": r("Message")}))),
        &with(AUTH, &[InvalidQuery, UnknownQueue, Forbidden]),
        json!({"security": [{"bearer": []}], "parameters": [
            q("max_messages", "At most this many (default 10)", json!({"type": "integer", "minimum": 1, "maximum": 1000})),
            q("ack", "`auto` (default): removed as returned, as the NOC. `manual`: leased, with receipts", json!({"enum": ["auto", "manual"]})),
            q("lease", "Seconds a delivery stays leased (default 30); ignored with ack=auto", json!({"type": "integer", "minimum": 1, "maximum": 43200})),
            q("wait", "Seconds to wait for a message if none is ready (long poll, default 0)", json!({"type": "integer", "minimum": 0, "maximum": config.http_limits.max_wait_secs})),
            q("queue", "`inbox` (default), `dead` (the dead-letter queue), or the name of a queue granted to the caller", json!({"type": "string", "minLength": 1}))]}))});
    let settle_errors = with(
        AUTH,
        &[
            MalformedJson,
            InvalidBody,
            UnsupportedMediaType,
            BodyTooLarge,
        ],
    );
    let ack = json!({"post": op("Acknowledge leased deliveries: they are removed.", ("200", ok("Result", r("AckResult"))),
        &settle_errors, json!({"requestBody": body("AckRequest"), "security": [{"bearer": []}]}))});
    let nack = json!({"post": op("Give leased deliveries back: requeued, or dead-lettered with requeue=false.", ("200", ok("Result", r("AckResult"))),
        &settle_errors, json!({"requestBody": body("NackRequest"), "security": [{"bearer": []}]}))});
    let healthz = json!({"get": {"summary": "Liveness and store health.", "responses": {
        "200": ok("Healthy", r("Health")), "503": ok("The store has failed", r("Health"))}}});
    let openapi = json!({"get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI 3.1"}}}});
    let metrics = json!({"get": {"summary": "Prometheus metrics (backend listener only).",
        "responses": {"200": {"description": "OpenMetrics text format", "content": {"application/openmetrics-text": {}}}}}});

    let pattern = json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^(\*|#|[^.*#\u0000-\u0020\u007f-\u009f]+)(\.(\*|#|[^.*#\u0000-\u0020\u007f-\u009f]+))*$",
        "description": "Dot-separated words, at most 255 bytes; `*` = one word, `#` = zero or more words, each only as a whole word"});
    let subscription = json!({"oneOf": [pattern, {"type": "array", "items": pattern, "minItems": 1, "maxItems": 64}]});
    // `null` is the same as leaving a field out: the node's default.
    let queue_settings = json!({"type": "object", "additionalProperties": false, "properties": {
        "max_length": {"type": ["integer", "null"], "minimum": 1, "maximum": trunkline_broker::registry::MAX_LENGTH_LIMIT},
        "overflow": {"enum": ["reject-publish", "drop-oldest", null]},
        "max_deliveries": {"type": ["integer", "null"], "minimum": 1, "maximum": trunkline_broker::registry::MAX_DELIVERIES_LIMIT}}});
    let name = json!({"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"\S"});
    let grants = json!({"type": "array", "maxItems": 64, "description": "Other queues (such as `<client>-inbox`) this client may consume from; each must exist",
        "items": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._-]+$"}});
    let write_grants = json!({"type": "array", "maxItems": 64, "description": "Other queues this client may put messages into directly; each must exist and not be a dead-letter queue",
        "items": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._-]+$"}});
    let read_topics = json!({"type": "array", "items": pattern, "maxItems": 64,
        "description": "Topic patterns this client may also read live (STOMP /topic subscriptions), without them routing into its inbox"});
    let publish = json!({"oneOf": [pattern, {"type": "array", "items": pattern, "maxItems": 64}],
        "description": "Topic patterns this client may publish to; left out: every topic (`#`). A client whose publishing is narrowed may not broadcast (/notify)"});
    let topic = json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[^.*#\u0000-\u0020\u007f-\u009f]+(\.[^.*#\u0000-\u0020\u007f-\u009f]+)*$",
        "description": "Dot-separated words, at most 255 bytes, no wildcards"});
    let message_id = json!({"type": "string", "minLength": 1, "maxLength": 256, "description": "Dedup key within the window (at most 256 bytes)"});
    let ttl = json!({"type": "number", "exclusiveMinimum": 0, "maximum": 31_536_000, "description": "Seconds until the message expires undelivered"});

    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Trunkline", "version": env!("CARGO_PKG_VERSION"),
            "description": "Durable message backbone; NOC Communications Backbone compatible HTTP API. Every error is {\"error\": {\"code\", \"message\"}} with a stable code."},
        "paths": {
            "/client": client_ops, "/client/{client_id}": one_client, "/client/{client_id}/secret": rotate,
            "/queue": queue_list, "/queue/{name}": one_queue,
            "/twins": twin_list, "/twins/{id}": one_twin,
            "/token": token, "/send": send, "/notify": notify, "/receive": receive, "/ack": ack, "/nack": nack,
            "/healthz": healthz, "/openapi.json": openapi
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Token from /token"},
                "backendKey": {"type": "apiKey", "in": "header", "name": "X-Backend-Key", "description": "Backend listener only"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"],
                    "properties": {"code": {"enum": ErrorCode::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>()}, "message": {"type": "string"},
                    "details": {"type": "object", "description": "for call_exception: {exception: {code, message}}"}}}}},
                "CreateClient": {"type": "object", "additionalProperties": false, "required": ["client_id", "client_name", "subscription"], "properties": {
                    "client_id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"}, "client_name": name,
                    "subscription": subscription, "publish": publish, "roles": {"type": "array", "uniqueItems": true, "items": {"enum": trunkline_broker::ROLES}},
                    "grants": grants, "write_grants": write_grants, "read_topics": read_topics, "inbox": queue_settings}},
                "UpdateClient": {"type": "object", "additionalProperties": false, "properties": {
                    "client_name": name, "subscription": subscription, "publish": publish,
                    "roles": {"type": "array", "uniqueItems": true, "items": {"enum": trunkline_broker::ROLES}},
                    "grants": grants, "write_grants": write_grants, "read_topics": read_topics, "inbox": queue_settings}},
                "Client": {"type": "object", "properties": {"client_id": {"type": "string"}, "client_name": {"type": "string"},
                    "subscription": subscription, "publish": subscription, "roles": {"type": "array", "items": {"type": "string"}},
                    "grants": {"type": "array", "items": {"type": "string"}}, "write_grants": {"type": "array", "items": {"type": "string"}},
                    "read_topics": {"type": "array", "items": {"type": "string"}}, "inbox": queue_settings,
                    "inbox_depth": {"type": "integer"}}},
                "DeclareQueue": {"type": "object", "additionalProperties": false, "properties": {
                    "bindings": {"type": "array", "maxItems": 64, "items": pattern},
                    "limits": queue_settings,
                    "labels": {"type": "object", "maxProperties": 16, "propertyNames": {"minLength": 1, "maxLength": 256},
                        "additionalProperties": {"type": "string", "maxLength": 256}}}},
                "Queue": {"type": "object", "properties": {"name": {"type": "string"},
                    "bindings": {"type": "array", "items": {"type": "string"}}, "limits": queue_settings,
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "dead_letter": {"type": "string"}, "depth": {"type": "integer"}, "dead_depth": {"type": "integer"}}},
                "TwinClaim": {"type": "object", "additionalProperties": false, "required": ["key", "timestamp", "signature"], "properties": {
                    "key": {"type": "string", "pattern": "^ed25519:[A-Za-z0-9_-]{43}$", "description": "ed25519:<32 bytes, unpadded base64url>"},
                    "relays": {"type": "array", "maxItems": 4, "items": {"type": "string", "pattern": "^[!-~]{1,255}$"}},
                    "timestamp": {"type": "integer", "minimum": 0, "description": "Seconds since 1970; a claim more than 300 s from the node's clock is refused (403)"},
                    "signature": {"type": "string", "pattern": "^[A-Za-z0-9_-]{86}$", "description": "64 bytes, unpadded base64url: ed25519 over the claim (docs/relays.md); one that does not verify is 403"}}},
                "Twin": {"type": "object", "properties": {"id": {"type": "integer"}, "key": {"type": "string"},
                    "relays": {"type": "array", "items": {"type": "string"}}, "updated": {"type": "integer"}}},
                "ClientCredentials": {"type": "object", "properties": {"client_id": {"type": "string"}, "client_name": {"type": "string"},
                    "subscription": subscription, "secret": {"type": "string"}}},
                "Token": {"type": "object", "properties": {"token": {"type": "string"}, "expiry": {"type": "string", "format": "date-time"}}},
                "OAuthTokenRequest": {"type": "object", "required": ["grant_type", "client_id", "client_secret"],
                    "description": "client_id and client_secret may instead be sent as HTTP Basic credentials",
                    "properties": {"grant_type": {"const": "client_credentials"}, "client_id": {"type": "string"}, "client_secret": {"type": "string"}}},
                "OAuthToken": {"type": "object", "properties": {"access_token": {"type": "string"}, "token_type": {"const": "Bearer"},
                    "expires_in": {"type": "integer"}}},
                "SendRequest": {"oneOf": [
                    {"type": "object", "additionalProperties": false, "required": ["topic", "body"], "properties": {
                        "topic": topic, "body": {"description": "Any JSON value"}, "message_id": message_id, "ttl": ttl}},
                    {"type": "object", "additionalProperties": false, "required": ["header"],
                        "description": "A NOC message: the topic is header.destination and the whole message is the body",
                        "properties": {"header": {"type": "object", "required": ["destination"], "properties": {"destination": topic}},
                        "payload": {}, "message_id": message_id, "ttl": ttl}}]},
                "NotifyRequest": {"oneOf": [
                    {"type": "object", "additionalProperties": false, "required": ["body"], "properties": {
                        "topic": topic, "body": {"description": "Any JSON value"}, "message_id": message_id, "ttl": ttl},
                        "description": "The topic defaults to `broadcast`"},
                    {"type": "object", "additionalProperties": false, "required": ["header"],
                        "properties": {"header": {"type": "object", "properties": {"destination": topic}},
                        "payload": {}, "message_id": message_id, "ttl": ttl}}]},
                "SendResult": {"type": "object", "properties": {"id": {"type": "integer"}, "delivered_to": {"type": "integer"}, "duplicate": {"type": "boolean"}}},
                "Message": {"type": "object", "properties": {"id": {"type": "integer"}, "topic": {"type": "string"}, "body": {},
                    "sender": {"type": "string"}, "timestamp": {"type": "string", "format": "date-time"}, "redelivered": {"type": "boolean"},
                    "delivery_count": {"type": "integer"}, "receipt": {"type": "string", "description": "With ack=manual"},
                    "content_type": {"type": "string", "description": "Present when the body is not JSON; it is then shown as a string"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Publisher headers (STOMP)"}}},
                "AckRequest": {"type": "object", "additionalProperties": false, "required": ["receipts"], "properties": {
                    "receipts": {"type": "array", "items": {"type": "string"}, "maxItems": 10000}}},
                "NackRequest": {"type": "object", "additionalProperties": false, "required": ["receipts"], "properties": {
                    "receipts": {"type": "array", "items": {"type": "string"}, "maxItems": 10000},
                    "requeue": {"type": "boolean", "description": "false: straight to the dead-letter queue (default true)"}}},
                "AckResult": {"type": "object", "properties": {"done": {"type": "integer"}, "unknown": {"type": "array", "items": {"type": "string"}}}},
                "Health": {"type": "object", "properties": {"status": {"type": "string"}, "version": {"type": "string"}}}
            }
        }
    });
    if backend {
        doc["paths"]["/metrics"] = metrics;
        let channel = json!({"type": "string", "pattern": r"^(?:[A-Za-z0-9._-]{1,64}|(?:pvt|prs|sys):[A-Za-z0-9.:_-]{0,60})$",
            "description": "A channel name: [a-zA-Z0-9.:_-]{1,64}; with `:` only after pvt:, prs: or sys:"});
        let channel_param =
            json!([{"name": "channel", "in": "path", "required": true, "schema": channel}]);
        let body_errors = with(
            &admin,
            &[
                MalformedJson,
                InvalidBody,
                UnsupportedMediaType,
                BodyTooLarge,
            ],
        );
        doc["paths"]["/channel-token"] = json!({"post": op(
            "Mint a channel token (JWT, HS256) binding one open WebSocket session, and its client, to one channel (docs/ws-protocol.md).",
            ("200", ok("The token", json!({"type": "object", "properties": {"token": {"type": "string"}, "exp": {"type": "integer"}}}))),
            &with(&body_errors, &[UnknownSession]),
            json!({"security": admin_sec, "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": false, "required": ["sid", "cname"], "properties": {
                    "sid": {"type": "string", "description": "The id of an open session (from its welcome); the token names that session's client too"},
                    "cname": channel, "pub": {"type": "boolean", "description": "May publish (default false)"},
                    "conn_info": {"description": "What presence shows of the member"},
                    "ttl": {"type": ["integer", "null"], "minimum": 1, "maximum": 604800, "description": "Seconds (default 3600)"}}}}}}}))});
        doc["paths"]["/channels/{channel}/publish"] = json!({"post": op(
            "Publish to every session subscribed to a channel.",
            ("200", ok("Sessions it was queued for", json!({"type": "object", "properties": {"delivered": {"type": "integer"}}}))),
            &body_errors,
            json!({"security": admin_sec, "parameters": channel_param, "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": false, "required": ["message"], "properties": {"message": {}}}}}}}))});
        doc["paths"]["/backend"] = json!({"post": op(
            "Snorky's backend interface: {service, message: {command, params, callId?}} answered in the same wrapping, HTTP 200 whatever the outcome. Service `pubsub`, command `publish {channel, message}`.",
            ("200", ok("The answer", json!({"type": "object", "required": ["service", "message"], "properties": {
                "service": {"type": "string"}, "message": {"type": "object", "required": ["type"]}}}))),
            &body_errors,
            json!({"security": admin_sec, "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "required": ["service", "message"], "properties": {
                    "service": {"type": "string"},
                    "message": {"type": "object", "required": ["command"], "properties": {
                        "command": {"type": "string"}, "params": {"type": "object"}, "callId": {}}}}}}}}}))});
        let session_param = json!([{"name": "session_id", "in": "path", "required": true, "schema": {"type": "string"}}]);
        let done = ("200", ok("Done", json!({"type": "object"})));
        doc["paths"]["/sessions/{session_id}/send"] = json!({"post": op(
            "Push a message to one WebSocket session ({service: session, message: {type: message, message, from: {backend: true}}}).",
            done.clone(),
            &with(&body_errors, &[UnknownSession]),
            json!({"security": admin_sec, "parameters": session_param, "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": false, "required": ["message"], "properties": {"message": {}}}}}}}))});
        doc["paths"]["/sessions/{session_id}"] = json!({"delete": op(
            "Close a WebSocket session (close code 4000); it leaves its channels.",
            done,
            &with(&admin, &[UnknownSession]),
            json!({"security": admin_sec, "parameters": session_param}))});
        let call_body = json!({"required": true, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": false, "properties": {
                "payload": {"description": "Handed to the function (default null)"},
                "timeout_ms": {"type": ["integer", "null"], "minimum": 1, "maximum": 300000, "description": "Milliseconds (default 10000)"}}}}}});
        let call_ok = (
            "200",
            ok(
                "The function's `end` data, and the `next` parts before it (at most 1024)",
                json!({"type": "object", "properties": {"data": {}, "parts": {"type": "array"}}}),
            ),
        );
        let call_errors = with(
            &body_errors,
            &[NoCallee, CallTimeout, CalleeGone, CalleeBusy, CallException],
        );
        let function_param = json!({"name": "function", "in": "path", "required": true, "schema": {"type": "string"}});
        doc["paths"]["/rpc/{server}/{function}"] = json!({"post": op(
            "Call a function of an RPC server: one of the WebSocket sessions serving the name, in turn. Waits for the answer.",
            call_ok.clone(),
            &call_errors,
            json!({"security": admin_sec, "requestBody": call_body, "parameters": [
                {"name": "server", "in": "path", "required": true, "schema": {"type": "string"}}, function_param]}))});
        doc["paths"]["/sessions/{session_id}/functions/{function}"] = json!({"post": op(
            "Call a client function of one WebSocket session. Waits for the answer.",
            call_ok,
            &call_errors,
            json!({"security": admin_sec, "requestBody": call_body, "parameters": [session_param[0], function_param]}))});
        doc["paths"]["/channels/{channel}/functions/{function}"] = json!({"post": op(
            "Call a client function of every session subscribed to a channel, at once. Waits for every answer; each member's data or error.",
            ("200", ok("Each member's answer", json!({"type": "array", "items": {"type": "object", "properties": {
                "session_id": {"type": "string"}, "client_id": {"type": "string"}, "info": {}, "data": {},
                "error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "exception": {}}},
                "parts": {"type": "array"}}}}))),
            &body_errors,
            json!({"security": admin_sec, "requestBody": call_body, "parameters": [channel_param[0], function_param]}))});
        doc["paths"]["/channels/{channel}/members"] = json!({"get": op(
            "The sessions subscribed to a channel.",
            ("200", ok("Members", json!({"type": "array", "items": {"type": "object", "properties": {
                "session_id": {"type": "string"}, "client_id": {"type": "string"}, "info": {}}}}))),
            &with(&admin, &[InvalidBody]),
            json!({"security": admin_sec, "parameters": channel_param}))});
    } else {
        let ws = json!({"get": op(
            "Upgrade to a WebSocket session (docs/ws-protocol.md). The token may come as a bearer header, as ?token= (never logged), or in a first `authenticate` message.",
            ("101", json!({"description": "Switching Protocols: the session begins"})),
            &[InvalidToken, TokenExpired, UpgradeRequired, TooManySessions],
            json!({"parameters": [q("token", "A client token, for browsers that cannot set headers", json!({"type": "string"}))]}))});
        doc["paths"]["/ws"] = ws;
        doc["paths"]["/relay"] = json!({"get": op(
            "The relay (docs/relays.md): a WebSocket upgrade opens a relay connection (the relay's hello with a challenge, a signed login, then envelopes as binary frames); a plain GET tells the relay's name and key.",
            ("200", ok("The relay", json!({"type": "object", "required": ["relay", "key"], "properties": {
                "relay": {"type": "string"}, "key": {"type": "string", "pattern": "^ed25519:"}}}))),
            &[NotFound],
            json!({}))});
        if let Some(schemes) = doc["components"]["securitySchemes"].as_object_mut() {
            schemes.remove("backendKey");
        }
    }
    doc
}
