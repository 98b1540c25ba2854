//! One connection at `GET /relay`: the hello with its challenge, the login, then
//! envelopes both ways.
//!
//! - Reading: each binary frame is an envelope for [`Relay::route`]; a text frame, or
//!   bytes that are no envelope, close the connection (as RMB's relay does).
//! - Writing: for a twin, a fetcher leases envelopes from its session's queue in order;
//!   the writer sends them, flushes, and then acks them: an envelope is gone from the
//!   queue only once it was written to the connection. What the relay answers (errors,
//!   pongs) is written between batches.
//! - A newer login of the same twin and session ends this connection; what it leased
//!   goes back to the queue, in its place.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trunkline_api::{ErrorCode, RelayHello, RelayReady, RelayStored};
use trunkline_broker::authz::{Access, Issuer};
use trunkline_broker::{Delivery, Principal, Settle};
use trunkline_client::relay::unix_now;
use trunkline_envelope::{Address, Login, Who};

use super::{Ack, Acker, Logged, Refusal, Relay};
use crate::error::ApiError;
use crate::state::{now_ms, AppState};

/// Time to log in after the hello.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers of the relay waiting to be written.
const ANSWERS: usize = 256;
/// The close code of a refused login or a broken protocol.
const POLICY: u16 = 1008;

/// `GET /relay`: a WebSocket upgrade logs in; a plain GET tells the relay's name and key.
pub async fn upgrade(
    State(state): State<AppState>,
    slot: Option<axum::Extension<crate::listener::ConnectionSlot>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Some(relay) = state.relay.clone() else {
        return ApiError::new(ErrorCode::NotFound, "this node runs no relay").into_response();
    };
    let Ok(ws) = ws else {
        return Json(RelayHello {
            relay: relay.name().to_owned(),
            key: relay.key().to_text(),
            challenge: None,
        })
        .into_response();
    };
    let max = relay.config().max_envelope_bytes;
    // A small read buffer (it grows for larger frames): tungstenite's default is 128 KiB
    // per connection, zero-filled before each read.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(crate::ws::READ_BUFFER)
        .on_upgrade(move |socket| async move {
            run(relay, socket, state.shutdown.clone()).await;
            drop(slot);
        })
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.chars().take(120).collect::<String>().into(),
    }))
}

/// Reads the login; `Err` is the reason to close with.
async fn login(
    relay: &Relay,
    socket: &mut WebSocket,
    challenge: &[u8; 32],
) -> Result<(Logged, trunkline_envelope::PublicKey), String> {
    let frame = tokio::time::timeout(LOGIN_TIMEOUT, socket.next())
        .await
        .map_err(|_| "no login in time".to_owned())?;
    let bytes = match frame {
        Some(Ok(Message::Binary(b))) => b,
        _ => return Err("the first message must be a login (a binary frame)".into()),
    };
    let login = Login::decode(&bytes).map_err(|e| e.to_string())?;
    let (who, key) = match &login.who {
        Who::Twin { id, session } => {
            let twin = relay
                .twin(*id)
                .await?
                .ok_or_else(|| format!("twin {id} is not in the registry"))?;
            let a = Address {
                twin: *id,
                session: session.clone(),
            };
            (Logged::Twin(a), twin.key)
        }
        Who::Relay { name } => {
            let key = relay
                .peer_key(name)
                .ok_or_else(|| format!("relay {name} is not a peer of this relay"))?;
            (Logged::Relay(name.clone()), key)
        }
    };
    login
        .verify(challenge, &key, unix_now())
        .map_err(|e| e.to_string())?;
    Ok((who, key))
}

async fn run(relay: Arc<Relay>, mut socket: WebSocket, shutdown: CancellationToken) {
    let challenge: [u8; 32] = rand::random();
    let hello = RelayHello {
        relay: relay.name().to_owned(),
        key: relay.key().to_text(),
        challenge: Some(URL_SAFE_NO_PAD.encode(challenge)),
    };
    let text = serde_json::to_string(&hello).unwrap_or_default();
    if socket.send(Message::Text(text.into())).await.is_err() {
        return;
    }
    let (who, key) = match login(&relay, &mut socket, &challenge).await {
        Ok(w) => w,
        Err(why) => {
            tracing::info!(reason = %why, "relay: login refused");
            let _ = socket
                .send(close(POLICY, &format!("login refused: {why}")))
                .await;
            return;
        }
    };
    let queue = match &who {
        Logged::Twin(a) => match relay.ensure_queue(a).await {
            Ok(q) => Some(q),
            Err(why) => {
                let _ = socket.send(close(POLICY, &why)).await;
                return;
            }
        },
        Logged::Relay(_) => None,
    };
    let ready = RelayReady {
        logged_in: who.to_string(),
    };
    let text = serde_json::to_string(&ready).unwrap_or_default();
    if socket.send(Message::Text(text.into())).await.is_err() {
        return;
    }
    let stop = shutdown.child_token();
    let generation = relay.attach(&who, key, stop.clone());
    relay.counters.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(who = %who, "relay: logged in");

    let (answer_tx, answers) = mpsc::channel(ANSWERS);
    let (acker, stored) = Acker::new();
    let (batches_tx, batches) = mpsc::channel(1);
    // The connection reads its session's queue, and nothing else.
    let issuer = queue.as_ref().map(|q| {
        Issuer::new(Access::limited(
            &format!("relay:{who}"),
            &[],
            std::slice::from_ref(q),
        ))
    });
    let me = issuer.as_ref().map(Issuer::principal);
    let fetcher = match (&queue, &me) {
        (Some(q), Some(me)) => Some(tokio::spawn(fetch(
            relay.clone(),
            me.clone(),
            q.clone(),
            batches_tx,
            stop.clone(),
        ))),
        _ => None,
    };
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write(
        relay.clone(),
        me,
        sink,
        answers,
        batches,
        stored,
        stop.clone(),
    ));

    let mut seq = 0u64;
    // A connection silent for this long is gone (the relay pings every third of it).
    let idle = Duration::from_secs(relay.config().idle_timeout_secs.max(1));
    let mut heard = tokio::time::Instant::now();
    let why = loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break "replaced or shutting down".to_owned(),
            _ = tokio::time::sleep_until(heard + idle) => break "silent".to_owned(),
            f = stream.next() => f,
        };
        heard = tokio::time::Instant::now();
        match frame {
            Some(Ok(Message::Binary(b))) => {
                seq += 1;
                let ack = Ack {
                    seq,
                    acker: acker.clone(),
                };
                match relay.route(&who, &b, &answer_tx, ack).await {
                    Ok(()) => {}
                    Err(Refusal::Answer(e)) => {
                        if answer_tx.send(e).await.is_err() {
                            break "writer ended".to_owned();
                        }
                    }
                    Err(Refusal::Drop(_)) => {}
                    Err(Refusal::Close(why)) => {
                        let _ = answer_tx.send(Vec::new()).await;
                        break why;
                    }
                }
            }
            Some(Ok(Message::Text(_))) => break "text frames are not envelopes".to_owned(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break "closed".to_owned(),
            Some(Ok(_)) => {}
        }
    };
    tracing::debug!(who = %who, reason = %why, "relay: connection ends");
    stop.cancel();
    drop(answer_tx);
    if let Some(f) = fetcher {
        let _ = f.await;
    }
    let _ = writer.await;
    relay.detach(&who, generation);
    relay.counters.connections.fetch_sub(1, Ordering::Relaxed);
    if let Logged::Twin(a) = &who {
        relay.release_queue(a).await;
    }
}

/// Leases envelopes of `queue` in order and hands them to the writer; gives back a batch
/// it could not hand over.
async fn fetch(
    relay: Arc<Relay>,
    me: Principal,
    queue: String,
    out: mpsc::Sender<Vec<Delivery>>,
    stop: CancellationToken,
) {
    let broker = relay.broker();
    while !stop.is_cancelled() {
        let got = super::lease(broker, &me, &queue, &stop).await;
        let batch = match got {
            Ok(b) if b.is_empty() => continue,
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(queue, error = %e, "relay: cannot read a session's queue");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let receipts: Vec<String> = batch.iter().filter_map(|d| d.receipt.clone()).collect();
        let handed = tokio::select! {
            r = out.send(batch) => r.is_ok(),
            _ = stop.cancelled() => false,
        };
        if !handed {
            let _ = broker
                .settle(&me, &receipts, Settle::Nack { requeue: true }, now_ms())
                .await;
            return;
        }
    }
}

/// Writes answers and leased envelopes; acks each batch once written.
async fn write(
    relay: Arc<Relay>,
    me: Option<Principal>,
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut answers: mpsc::Receiver<Vec<u8>>,
    mut batches: mpsc::Receiver<Vec<Delivery>>,
    mut stored: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let broker = relay.broker();
    let mut fetching = me.is_some();
    let mut confirming = true;
    let mut ping =
        tokio::time::interval(Duration::from_secs(relay.config().idle_timeout_secs.max(3)) / 3);
    ping.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    stop.cancel();
                    return;
                }
            }
            a = answers.recv() => match a {
                // An empty answer: the reader closes the connection.
                Some(b) if b.is_empty() => {
                    let _ = sink.send(close(POLICY, "not an envelope")).await;
                    return;
                }
                Some(b) => {
                    if sink.send(Message::Binary(b.into())).await.is_err() {
                        stop.cancel();
                        return;
                    }
                }
                None => {
                    let _ = sink.send(close(1000, "bye")).await;
                    return;
                }
            },
            changed = stored.changed(), if confirming => {
                if changed.is_err() {
                    confirming = false;
                    continue;
                }
                let n = *stored.borrow_and_update();
                let text = serde_json::to_string(&RelayStored { stored: n }).unwrap_or_default();
                if sink.send(Message::Text(text.into())).await.is_err() {
                    stop.cancel();
                    return;
                }
            }
            b = batches.recv(), if fetching => {
                let (Some(batch), Some(me)) = (b, &me) else {
                    fetching = false;
                    continue;
                };
                // A twin's gateway does not confirm: written is delivered.
                let ok = super::write_batch(&mut sink, &batch, Message::Binary).await;
                super::settle(broker, me, &batch, ok).await;
                if ok {
                    relay.counters.delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
                } else {
                    stop.cancel();
                    return;
                }
            }
        }
    }
}
