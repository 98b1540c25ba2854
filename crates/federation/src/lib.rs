//! Federation between nodes of different owners, as Swaptacular's `swpt_stomp` links
//! them: STOMP 1.2 over mutual TLS, each node identified by its certificate and listed in
//! a node database, a long-lived link per peer forwarding a durable queue.
//!
//! This crate holds what does not need a runtime: the node database
//! ([`nodedata`]: who we are, who our peers are, whether each is active, how to reach it)
//! the identity a peer's certificate carries ([`identity`]), and the routing keys and subnets that shard and check the messages of the Swaptacular
//! Messaging Protocol ([`routing`]), and what a node takes from a peer ([`smp`]). See `docs/federation.md`.

pub mod chain;
pub mod identity;
pub mod nodedata;
pub mod routing;
pub mod smp;
pub mod topology;

pub use identity::peer_node_id;
pub use nodedata::{DbError, NodeData, NodeDatabase, NodeType, PeerData, StompConfig};
pub use routing::{routing_key, Subnet, SubnetError};
pub use smp::{check_inbound, check_outbound, Inbound, Outbound, Refusal};
