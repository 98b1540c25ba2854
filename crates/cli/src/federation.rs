//! `trunkline federation …`: swpt_stomp's commands, against a running Trunkline node.
//!
//! - `configure-queue PEER QUEUE`: declares QUEUE on the node (admin credentials) bound to
//!   what this node sends PEER and labelled with it, so that the node's links forward it.
//! - `link PEER QUEUE`: forwards QUEUE to PEER in the foreground, reading it through the
//!   node's HTTP API (credentials granted the queue), as `swpt-client PEER QUEUE` reads
//!   RabbitMQ. The node runs the same link itself for every configured queue; this is for
//!   running one elsewhere, or by hand.
//! - `drain PEER QUEUE`: empties the queue of a deactivated peer, answering for it where
//!   `swpt-drainer` does; the answers go to the node as if the peer had sent them.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;
use trunkline_api::{DeclareQueue, QueueSettings};
use trunkline_broker::Settle;
use trunkline_client::stomp::StompClient;
use trunkline_client::{Client, ReceiveOptions};
use trunkline_federation::{check_inbound, check_outbound, smp, NodeDatabase};
use trunkline_server::federation::link::{self, Item, LinkEnv, LinkStats, Source};

use crate::{connect, signal, stomp_failure, stomp_options, CredsArgs, Failure, StompArgs};

#[derive(Subcommand)]
pub enum FederationCommand {
    /// Declare QUEUE on the node, bound to the messages this node sends PEER and labelled
    /// so that the node forwards it to PEER (swpt_stomp's configure-queue). Needs admin
    /// credentials. Running it again changes nothing.
    ConfigureQueue {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        creds: CredsArgs,
        peer: String,
        queue: String,
    },
    /// Forward QUEUE to PEER in the foreground until interrupted (swpt_stomp's
    /// swpt-client). Reads the queue through the node's HTTP API: the credentials' client
    /// needs a grant of it.
    Link {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        creds: CredsArgs,
        /// This node's certificate, presented to the peer with its sub-ca.crt.
        #[arg(long, env = "SWPT_SERVER_CERT", default_value = "/etc/swpt/server.crt")]
        cert: PathBuf,
        #[arg(
            long,
            env = "SWPT_SERVER_KEY",
            default_value = "/secrets/swpt-server.key"
        )]
        key: PathBuf,
        /// Most messages sent and not confirmed.
        #[arg(long, env = "SWPT_CLIENT_BUFFER", default_value_t = 100)]
        buffer: usize,
        peer: String,
        queue: String,
    },
    /// Empty QUEUE, kept for PEER after it was deactivated, answering for PEER where
    /// swpt_stomp's drainer does (an AccountUpdate with a ConfigureAccount deleting the
    /// account, a PreparedTransfer with a FinalizeTransfer committing nothing, a
    /// ConfigureAccount with a RejectedConfig). The answers are published on the node's
    /// STOMP listener (the client needs to be allowed to publish to the node's inbound
    /// exchange's topics); the queue is read through its HTTP API (with a grant).
    Drain {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        stomp: StompArgs,
        /// Stop once the queue is empty, instead of waiting for more.
        #[arg(long)]
        until_empty: bool,
        peer: String,
        queue: String,
    },
}

#[derive(Args)]
pub struct DbArgs {
    /// The node database: a directory, or a file:// URL.
    #[arg(
        long,
        env = "SWPT_NODEDATA_URL",
        default_value = "file:///var/lib/swpt-nodedata"
    )]
    nodedata: String,
}

/// How long a message read by a link or a drainer stays leased (the HTTP API's longest).
const LEASE_SECS: u64 = 12 * 3600;

fn db_failure(e: impl std::fmt::Display) -> Failure {
    Failure::Usage(format!("node database: {e}"))
}

pub async fn run(cmd: FederationCommand) -> Result<(), Failure> {
    match cmd {
        FederationCommand::ConfigureQueue {
            db,
            creds,
            peer,
            queue,
        } => {
            let db = NodeDatabase::new(&db.nodedata);
            let node = db.node().map_err(db_failure)?;
            let data = db
                .peer(&peer, false)
                .map_err(db_failure)?
                .ok_or_else(|| Failure::Usage(format!("peer {peer} is not in the database")))?;
            if data.deactivated {
                return Err(Failure::Usage(format!("peer {peer} has been deactivated")));
            }
            let spec =
                trunkline_server::federation::forward_spec(&node, &data).map_err(Failure::Usage)?;
            let body = DeclareQueue {
                bindings: spec.bindings,
                limits: QueueSettings {
                    max_length: spec.limits.max_length,
                    overflow: None,
                    max_deliveries: spec.limits.max_deliveries,
                },
                labels: spec.labels,
            };
            let info = connect(&creds)?.declare_queue(&queue, &body).await?;
            println!(
                "configured queue {} for peer {peer}: bound to {:?}, dead letters in {}",
                info.name, info.bindings, info.dead_letter
            );
            Ok(())
        }
        FederationCommand::Link {
            db,
            creds,
            cert,
            key,
            buffer,
            peer,
            queue,
        } => {
            let db = NodeDatabase::new(&db.nodedata);
            let node = db.node().map_err(db_failure)?;
            let env = Arc::new(LinkEnv {
                db,
                node,
                cert,
                key,
                buffer: buffer.max(1),
            });
            let source = Arc::new(HttpSource {
                client: connect(&creds)?,
                queue: queue.clone(),
                wait: 2,
            });
            let stats = Arc::new(LinkStats::default());
            let stop = CancellationToken::new();
            let stopper = stop.clone();
            let interrupted = signal();
            tokio::spawn(async move {
                interrupted.await;
                stopper.cancel();
            });
            let end = link::run(env, source, peer, queue, stats.clone(), stop).await;
            let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            println!(
                "link {end}: {} sent, {} confirmed, {} dead-lettered, {} connections",
                n(&stats.sent),
                n(&stats.confirmed),
                n(&stats.dead_lettered),
                n(&stats.connects)
            );
            match end {
                link::LinkEnd::Stopped => Ok(()),
                other => Err(Failure::Refused(other.to_string())),
            }
        }
        FederationCommand::Drain {
            db,
            stomp,
            until_empty,
            peer,
            queue,
        } => drain(&db, &stomp, until_empty, &peer, &queue).await,
    }
}

/// A queue read through a node's HTTP API (manual acks, long leases), waiting up to
/// `wait` seconds for messages at a time (how long a stop may wait for a receive).
struct HttpSource {
    client: Client,
    queue: String,
    wait: u64,
}

impl Source for HttpSource {
    async fn take(&self, max: usize, stop: &CancellationToken) -> Result<Vec<Item>, String> {
        if stop.is_cancelled() {
            return Ok(Vec::new());
        }
        let opts = ReceiveOptions {
            max_messages: max.min(1000),
            lease: Some(LEASE_SECS),
            wait: self.wait,
            dead: false,
            queue: Some(self.queue.clone()),
        };
        let got = self
            .client
            .receive(&opts)
            .await
            .map_err(|e| e.to_string())?;
        Ok(got
            .into_iter()
            .filter_map(|m| {
                let body = match (&m.content_type, &m.body) {
                    (Some(_), serde_json::Value::String(s)) => Bytes::from(s.clone().into_bytes()),
                    (_, v) => Bytes::from(serde_json::to_vec(v).ok()?),
                };
                Some(Item {
                    receipt: m.receipt?,
                    id: m.id,
                    headers: m.headers.into_iter().collect(),
                    content_type: m.content_type,
                    body,
                })
            })
            .collect())
    }

    async fn settle(&self, receipts: Vec<String>, how: Settle) -> Result<(), String> {
        let r = match how {
            Settle::Ack => self.client.ack(&receipts).await,
            Settle::Nack { requeue } => self.client.nack(&receipts, requeue).await,
        };
        r.map(drop).map_err(|e| e.to_string())
    }
}

/// Takes QUEUE's messages for the deactivated PEER, publishes the answers PEER would have
/// sent (as the node's federation listener would route them), and acks each message once
/// its answer is confirmed.
async fn drain(
    db: &DbArgs,
    stomp: &StompArgs,
    until_empty: bool,
    peer: &str,
    queue: &str,
) -> Result<(), Failure> {
    let db = NodeDatabase::new(&db.nodedata);
    let node = db.node().map_err(db_failure)?;
    let data = db
        .peer(peer, false)
        .map_err(db_failure)?
        .ok_or_else(|| Failure::Usage(format!("peer {peer} is not in the database")))?;
    if !data.deactivated {
        return Err(Failure::Usage(format!(
            "peer {peer} has not been deactivated (its DEACTIVATED file is missing)"
        )));
    }
    let source = HttpSource {
        client: connect(&stomp.creds)?,
        queue: queue.to_owned(),
        wait: if until_empty { 0 } else { 10 },
    };
    let publisher = StompClient::connect(stomp_options(stomp)?)
        .await
        .map_err(stomp_failure)?;
    let exchange = node.node_type.inbound_exchange();
    let never = CancellationToken::new();
    let interrupted = signal();
    tokio::pin!(interrupted);
    let (mut drained, mut answered) = (0u64, 0u64);
    loop {
        let batch = tokio::select! {
            b = source.take(100, &never) => b.map_err(Failure::Unreachable)?,
            _ = &mut interrupted => break,
        };
        if batch.is_empty() {
            if until_empty {
                break;
            }
            continue;
        }
        let now = now_ms();
        let mut confirmations = Vec::new();
        for item in &batch {
            let content_type = item.content_type.as_deref().unwrap_or("application/json");
            // As the peer would have got it, and what it would have answered.
            let sent = check_outbound(&node, &data, &item.message_type(), content_type, &item.body);
            let Some((answer_type, answer)) = sent
                .ok()
                .and_then(|out| smp::drain_answer(&out.message_type, &out.body, now))
            else {
                continue;
            };
            let taken =
                match check_inbound(&node, &data, &answer_type, "application/json", &answer, now) {
                    Ok(t) => t,
                    Err(why) => {
                        eprintln!("warning: no answer to message {}: {why}", item.id);
                        continue;
                    }
                };
            let mut headers: Vec<(&str, &str)> = taken
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            headers.push(("type", &taken.message_type));
            headers.push(("content-type", "application/json"));
            let destination = format!("/topic/{exchange}.{}", taken.routing_key);
            confirmations.push(
                publisher
                    .send(&destination, &headers, taken.body)
                    .await
                    .map_err(stomp_failure)?,
            );
        }
        for c in confirmations {
            c.await.map_err(stomp_failure)?;
            answered += 1;
        }
        let receipts: Vec<String> = batch.into_iter().map(|i| i.receipt).collect();
        drained += receipts.len() as u64;
        source
            .settle(receipts, Settle::Ack)
            .await
            .map_err(Failure::Unreachable)?;
    }
    println!("drained {drained} messages of {queue}, answered {answered} for peer {peer}");
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
