//! RabbitMQ as Trunkline's durable engine, for nodes that share a RabbitMQ cluster (see
//! `docs/scale-out.md`): inboxes, dead-letter and declared queues are quorum queues,
//! topics route through a topic exchange, every publish waits for its publisher confirm,
//! and a lease is an unacked delivery held on the node's channel, given back when the
//! lease ends or the node goes.
//!
//! - [`Cluster`]: the node's [`trunkline_broker::Backend`] over RabbitMQ: its replica of the
//!   registry in its own [`trunkline_broker::Broker`], mirrored as RabbitMQ topology,
//!   messages in RabbitMQ; `admin.rs`, its changes of the registry.
//! - [`RegistryLog`]: the registry's shared log, a RabbitMQ stream every node follows.
//! - `dedup_log.rs`: the `message_id` records every node shares, another stream.
//! - `streams.rs`: declaring and reading those streams.
//! - [`LiveLink`]: live topic subscriptions and channel messages between nodes.
//! - [`Amqp`]: the connection (to the first of its URLs that answers, the next one when it
//!   is lost), declarations, publish, receive, settle and the lease sweep.
//! - [`message`]: a message as AMQP properties and headers, and back.
//! - [`topology`]: exchange names, and queue limits as quorum-queue arguments.
//! - [`leases`]: which delivery each receipt names, and when its lease ends.
//! - `acks.rs`: acks gathered for a moment and sent together per channel.
//! - `feeds.rs`: `basic.consume` consumers, a channel each, feeding the receives that wait
//!   (subscriptions, links, the relay).
//! - `follow.rs`: the loop that follows the stream and the node's live queue again after
//!   each loss.

mod acks;
mod admin;
pub mod cluster;
mod dedup_log;
mod engine;
mod feeds;
mod follow;
pub mod leases;
pub mod live;
pub mod message;
pub mod registry_log;
mod streams;
pub mod topology;

pub use cluster::Cluster;
pub use engine::{Amqp, AmqpConfig, Confirmed};
pub use live::LiveLink;
pub use registry_log::RegistryLog;
