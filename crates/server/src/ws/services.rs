//! What a session does with each [`Command`]: authentication, its inbox, channels, RPC
//! and client functions. Every check of who may do what on a channel or a server name is
//! here; the live engine itself trusts its callers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use trunkline_api::ErrorCode;
use trunkline_auth::ChannelClaims;
use trunkline_broker::{BrokerError, Principal, WaitHandle};
use trunkline_realtime::{names, Caller, Kind, MemberInfo};

use super::command::{parse_envelope, CallParams, ChannelOp, Command, Refusal, Target};
use super::frames::{answer, error_frame, service_of, Flavor};
use super::{InboxSub, Next, Session, CLOSE_AUTH, MAX_JOINED, MAX_SERVED};
use crate::delivery::readable_queue;
use crate::error::ApiError;
use crate::live::{self, Reply, Request};
use crate::state::now_ms;

/// Why a call was refused, from a broker error.
fn refusal(e: BrokerError) -> Refusal {
    let e = ApiError::from(e);
    (e.code, e.message)
}

/// Snorky's words for an error, as its `PubSubService` answers.
fn snorky_words(code: ErrorCode, why: &str) -> &'static str {
    match code {
        ErrorCode::ProtocolError if why.starts_with("already") => "Already subscribed",
        ErrorCode::ProtocolError => "Not subscribed",
        ErrorCode::Forbidden | ErrorCode::InvalidToken => "Not authorized",
        ErrorCode::UnknownCommand => "Unknown command",
        _ => "Invalid params",
    }
}

impl Session {
    /// One text frame: rate, envelope, command, answer.
    pub(super) async fn on_text(&mut self, text: &str) -> Next {
        let envelope = parse_envelope(text);
        if !self.bucket.take(Instant::now()) {
            let (service, call_id) = match &envelope {
                Ok(c) => (Some(c.service.as_str()), &c.call_id),
                Err(u) => (u.service.as_deref(), &u.call_id),
            };
            let why = format!(
                "more than {} messages per second; this one was not handled",
                self.state.config.ws.rate_per_sec
            );
            return Next::Reply(error_frame(service, call_id, ErrorCode::RateLimited, &why));
        }
        let call = match envelope {
            Ok(c) => c,
            Err(u) => {
                return Next::Reply(error_frame(
                    u.service.as_deref(),
                    &u.call_id,
                    ErrorCode::MalformedMessage,
                    &u.why,
                ))
            }
        };
        let max_window = self.state.broker.config().max_receive as u64;
        let command = Command::parse(&call, max_window);
        let Some(principal) = self.principal.clone() else {
            return self.authenticate(&call.service, &call.call_id, command);
        };
        let service = call.service.as_str();
        let result = match command {
            Ok(command) => self.perform(command, &principal, &call.call_id).await,
            Err(refused) => Err(refused),
        };
        if service == "pubsub" {
            // Snorky's dialect: `data: null` on success, its own words on failure.
            let message = match result {
                Ok(_) => json!({"type": "response", "data": null}),
                Err((code, why)) => json!({"type": "error", "code": code,
                    "message": snorky_words(code, &why), "detail": why}),
            };
            return Next::Reply(answer(Some(service), &call.call_id, message));
        }
        Next::Reply(match result {
            Ok(None) => return Next::Nothing,
            Ok(Some(data)) => answer(
                Some(service),
                &call.call_id,
                json!({"type": "response", "data": data}),
            ),
            Err((code, why)) => error_frame(Some(service), &call.call_id, code, &why),
        })
    }

    /// The first call of a session that did not authenticate while upgrading. Accepted: the
    /// welcome push, then the answer (`{sessionId, clientId}`, as `whoami`). Refused, or
    /// another call: an error answer, then close 4401.
    fn authenticate(
        &mut self,
        service: &str,
        call_id: &trunkline_realtime::CallId,
        command: Result<Command, Refusal>,
    ) -> Next {
        let Ok(Command::Authenticate { token }) = command else {
            let why = "authenticate first: {\"service\": \"auth\", \"message\": {\"command\": \"authenticate\", \"params\": {\"token\": ...}}}";
            let refused = error_frame(Some(service), call_id, ErrorCode::MissingCredentials, why);
            return Next::Close(Some(refused), CLOSE_AUTH, why.into());
        };
        match self.state.principal_of(&token) {
            Ok(p) => {
                let data = json!({"sessionId": self.place.id, "clientId": &*p.client_id});
                self.principal = Some(p);
                self.register();
                let answered = answer(
                    Some("auth"),
                    call_id,
                    json!({"type": "response", "data": data}),
                );
                Next::Replies(vec![self.welcome(), answered])
            }
            Err(e) => {
                let refused = error_frame(Some("auth"), call_id, e.code, &e.message);
                let why = format!("{}: {}", e.code, e.message);
                Next::Close(Some(refused), CLOSE_AUTH, why)
            }
        }
    }

    /// Does what an authenticated session asked: `Some(data)` to answer with, `None` when
    /// the answer comes later (a call's outcome).
    async fn perform(
        &mut self,
        command: Command,
        principal: &Principal,
        call_id: &trunkline_realtime::CallId,
    ) -> Result<Option<Value>, Refusal> {
        let data = match command {
            Command::Authenticate { .. } => {
                return Err((
                    ErrorCode::ProtocolError,
                    "this session is already authenticated".into(),
                ))
            }
            Command::Whoami => {
                json!({"sessionId": self.place.id, "clientId": &*principal.client_id})
            }
            Command::Ping => json!("pong"),
            Command::Subscribe {
                queue,
                window,
                lease_secs,
            } => self.subscribe_inbox(principal, queue.as_deref(), window, lease_secs)?,
            Command::Unsubscribe => {
                self.give_back_in_flight();
                json!({})
            }
            Command::Settle { receipts, how } => {
                if let Some(sub) = self.inbox.as_mut() {
                    for r in &receipts {
                        sub.in_flight.remove(r);
                    }
                }
                let r = self
                    .state
                    .broker
                    .settle(principal, &receipts, how, now_ms())
                    .await
                    .map_err(refusal)?;
                json!({"done": r.done, "unknown": r.unknown})
            }
            Command::WatchSystem { op } => self.watch_system(principal, op)?,
            Command::Channel {
                flavor,
                channel,
                token,
                op,
            } => {
                let claims = match token {
                    Some(t) => Some(self.channel_token(&channel, &t)?),
                    None => None,
                };
                self.channel(principal, flavor, channel, claims, op)?
            }
            Command::Register {
                name,
                functions,
                token,
            } => {
                self.may_use_server(&name, token.as_deref(), principal, true)?;
                if self.serving.len() >= MAX_SERVED && !self.serving.contains(&name) {
                    return Err((
                        ErrorCode::ProtocolError,
                        format!("a session serves at most {MAX_SERVED} RPC names"),
                    ));
                }
                self.serving.insert(name.clone());
                self.uses_calls = true;
                let calls = &self.state.calls;
                calls.register(&name, &self.place.id, &self.mailbox, functions.clone());
                json!({"name": name, "functions": functions})
            }
            Command::Unregister { name } => {
                self.serving.remove(&name);
                if !self.state.calls.unregister(&name, &self.place.id) {
                    return Err((
                        ErrorCode::ProtocolError,
                        format!("this session does not serve `{name}`"),
                    ));
                }
                json!({})
            }
            Command::CallRpc {
                server,
                token,
                call,
            } => {
                self.may_use_server(&server, token.as_deref(), principal, false)?;
                let req = self.request(call, principal, call_id);
                self.uses_calls = true;
                let started = self.state.calls.call_rpc(&server, req);
                started.map_err(|e| (e.code, e.message))?;
                return Ok(None);
            }
            Command::Expose { functions } => {
                self.uses_calls = true;
                let calls = &self.state.calls;
                calls.expose(&self.place.id, &self.mailbox, functions.clone());
                json!({"functions": functions})
            }
            Command::CallFunction { target, call } => {
                self.call_function(principal, target, call, call_id)?;
                return Ok(None);
            }
            Command::Answer { kind, id, answer } => {
                let delivered = self.state.calls.answer(kind, &self.place.id, &id, answer);
                json!({"delivered": delivered})
            }
        };
        Ok(Some(data))
    }

    fn subscribe_inbox(
        &mut self,
        principal: &Principal,
        queue: Option<&str>,
        window: u64,
        lease_secs: u64,
    ) -> Result<Value, Refusal> {
        if self.inbox.is_some() {
            return Err((
                ErrorCode::ProtocolError,
                "already subscribed; unsubscribe first".into(),
            ));
        }
        let queue = readable_queue(principal, queue).map_err(|e| (e.code, e.message))?;
        let waiter = self
            .state
            .broker
            .waiter(&queue)
            .map(|w| w as Arc<dyn WaitHandle>);
        self.inbox = Some(InboxSub {
            queue: queue.clone(),
            window: window as usize,
            lease_ms: lease_secs * 1000,
            in_flight: HashMap::new(),
            waiter,
        });
        Ok(json!({"queue": queue, "window": window, "lease": lease_secs}))
    }

    /// Checks a channel token for this session, its client and `channel`.
    fn channel_token(&self, channel: &str, token: &str) -> Result<ChannelClaims, Refusal> {
        let now = now_ms() / 1000;
        let claims = trunkline_auth::channel::verify(&self.state.keys.channel_key, token, now)
            .map_err(|e| (ErrorCode::InvalidToken, format!("channel token: {e}")))?;
        let client = self.principal.as_ref().map_or("", |p| &*p.client_id);
        claims
            .check_use(&self.place.id, client, channel)
            .map_err(|e| (ErrorCode::Forbidden, e.to_string()))?;
        Ok(claims)
    }

    fn channel(
        &mut self,
        principal: &Principal,
        flavor: Flavor,
        channel: String,
        token: Option<ChannelClaims>,
        op: ChannelOp,
    ) -> Result<Value, Refusal> {
        match op {
            ChannelOp::Subscribe => {
                if names::needs_token(&channel) && token.is_none() && !principal.is_backend() {
                    return Err((
                        ErrorCode::Forbidden,
                        format!("`{channel}` needs a channel token (params.token)"),
                    ));
                }
                if self.joined.contains_key(&channel) {
                    return Err((
                        ErrorCode::ProtocolError,
                        format!("already subscribed to `{channel}`"),
                    ));
                }
                if self.joined.len() >= MAX_JOINED {
                    return Err((
                        ErrorCode::TooManySubscriptions,
                        format!("a session joins at most {MAX_JOINED} channels"),
                    ));
                }
                let may_publish =
                    principal.is_backend() || token.as_ref().is_some_and(|c| c.publish);
                let info = MemberInfo {
                    session_id: self.place.id.clone(),
                    client_id: principal.client_id.to_string(),
                    info: token.and_then(|c| c.conn_info).unwrap_or(Value::Null),
                };
                let mailbox = self.mailbox.clone();
                let members = self.state.channels.join(&channel, info, mailbox, flavor);
                self.joined.insert(channel.clone(), may_publish);
                let mut data = json!({"channel": channel, "publish": may_publish});
                if names::has_presence(&channel) {
                    data["members"] = json!(members);
                }
                Ok(data)
            }
            ChannelOp::Unsubscribe => {
                if self.joined.remove(&channel).is_none() {
                    return Err((
                        ErrorCode::ProtocolError,
                        format!("not subscribed to `{channel}`"),
                    ));
                }
                self.state.channels.leave(&channel, &self.place.id);
                Ok(json!({}))
            }
            ChannelOp::Publish {
                message,
                exclude_self,
            } => {
                let allowed = principal.is_backend()
                    || token
                        .as_ref()
                        .map(|c| c.publish)
                        .or(self.joined.get(&channel).copied())
                        .unwrap_or(false);
                if !allowed {
                    return Err((
                        ErrorCode::Forbidden,
                        format!("publishing to `{channel}` needs a channel token with pub: true"),
                    ));
                }
                let from = self.caller(principal);
                let except = exclude_self.then_some(self.place.id.as_str());
                let n = self
                    .state
                    .channels
                    .publish(&channel, &message, &from, except);
                Ok(json!({"delivered": n}))
            }
        }
    }

    /// `sys:*`: an admin session (a trusted backend) follows every `sys:` channel at once.
    fn watch_system(&mut self, principal: &Principal, op: ChannelOp) -> Result<Value, Refusal> {
        let all = names::ALL_SYSTEM;
        match op {
            ChannelOp::Subscribe if !principal.is_backend() => Err((
                ErrorCode::Forbidden,
                format!("only admin or backend clients may subscribe to `{all}`"),
            )),
            ChannelOp::Subscribe if self.joined.contains_key(all) => Err((
                ErrorCode::ProtocolError,
                format!("already subscribed to `{all}`"),
            )),
            ChannelOp::Subscribe => {
                let channels = self
                    .state
                    .channels
                    .watch_system(&self.place.id, self.mailbox.clone());
                self.joined.insert(all.to_owned(), false);
                Ok(json!({"channel": all, "channels": channels}))
            }
            ChannelOp::Unsubscribe if self.joined.remove(all).is_some() => {
                self.state.channels.unwatch_system(&self.place.id);
                Ok(json!({}))
            }
            ChannelOp::Unsubscribe => Err((
                ErrorCode::ProtocolError,
                format!("not subscribed to `{all}`"),
            )),
            ChannelOp::Publish { .. } => Err((
                ErrorCode::InvalidParams,
                format!("`{all}` can only be subscribed to, not published to"),
            )),
        }
    }

    /// Who this session is, as those it calls or publishes to see it.
    fn caller(&self, principal: &Principal) -> Caller {
        Caller::Session {
            session_id: self.place.id.clone(),
            client_id: principal.client_id.to_string(),
        }
    }

    /// Checks that this session may use RPC server `name`: to serve it (admin or backend
    /// clients, or a channel token for `name` with `pub: true`) or to call it (any session
    /// for a public name; admin or backend clients or a token for `name` for `pvt:`,
    /// `prs:` and `sys:` names).
    fn may_use_server(
        &self,
        name: &str,
        token: Option<&str>,
        principal: &Principal,
        serve: bool,
    ) -> Result<(), Refusal> {
        if let Some(why) = names::invalid_name(name) {
            return Err((ErrorCode::InvalidParams, format!("server name: {why}")));
        }
        if principal.is_backend() || !(serve || names::needs_token(name)) {
            return Ok(());
        }
        let claims = match token {
            Some(t) => self.channel_token(name, t)?,
            None if serve => return Err((ErrorCode::Forbidden, format!(
                "serving `{name}` needs an admin or backend client or a token for `{name}` with pub: true (params.token)"))),
            None => return Err((ErrorCode::Forbidden, format!("calling `{name}` needs a token for it (params.token)"))),
        };
        if serve && !claims.publish {
            return Err((
                ErrorCode::Forbidden,
                format!("serving `{name}` needs a token with pub: true"),
            ));
        }
        Ok(())
    }

    /// A client-function call to one session, or to every other member of a channel
    /// (answered with every member's outcome at once).
    fn call_function(
        &mut self,
        principal: &Principal,
        target: Target,
        call: CallParams,
        call_id: &trunkline_realtime::CallId,
    ) -> Result<(), Refusal> {
        let req = self.request(call, principal, call_id);
        self.uses_calls = true;
        match target {
            Target::Session(session) => {
                let channels = &self.state.channels;
                if !self.may_command(principal, |c| channels.is_member(c, &session)) {
                    return Err((ErrorCode::Forbidden, format!(
                        "calling session `{session}` needs an admin or backend client, or publish rights on a channel it is a member of")));
                }
                let started = self.state.calls.call_function(&session, req);
                started.map_err(|e| (e.code, e.message))
            }
            Target::Channel(channel) => {
                if !self.may_command(principal, |c| c == channel) {
                    return Err((ErrorCode::Forbidden, format!(
                        "calling the members of `{channel}` needs an admin or backend client, or publish rights on it")));
                }
                let mut members = self.state.channels.members(&channel);
                members.retain(|m| m.session_id != self.place.id);
                let calls = self.state.calls.clone();
                let mailbox = self.mailbox.clone();
                let call_id = call_id.clone();
                tokio::spawn(async move {
                    let results = live::call_members(&calls, members, req).await;
                    let frame = answer(
                        Some(service_of(Kind::Function)),
                        &call_id,
                        json!({"type": "response", "data": results}),
                    );
                    trunkline_realtime::Mailbox::push(&mailbox, frame);
                });
                Ok(())
            }
        }
    }

    /// Whether this session may call client functions of the sessions `on` a channel
    /// picks: admin and backend clients may call any; others need publish rights on such
    /// a channel.
    fn may_command(&self, principal: &Principal, on: impl Fn(&str) -> bool) -> bool {
        principal.is_backend()
            || self
                .joined
                .iter()
                .any(|(c, may_publish)| *may_publish && on(c))
    }

    /// The call this session asks for, answered to it.
    fn request(
        &self,
        call: CallParams,
        principal: &Principal,
        call_id: &trunkline_realtime::CallId,
    ) -> Request {
        Request {
            function: call.function,
            payload: call.payload,
            from: self.caller(principal),
            timeout: call.timeout,
            reply: Reply::Session {
                session_id: self.place.id.clone(),
                mailbox: self.mailbox.clone(),
                call_id: call_id.clone(),
            },
        }
    }
}
