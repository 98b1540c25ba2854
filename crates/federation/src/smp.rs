//! What a node does with a message of the Swaptacular Messaging Protocol that a peer sends
//! it, before it takes it: which message types a node of its type takes, which ids the peer
//! may speak for, how a creditors agent moves creditor ids into its own subnet, and the
//! routing key and headers the message is queued with. [`check_inbound`] is that decision.
//!
//! Each message type's fields and their limits are in [`fields`].

mod drain;
mod fields;

pub use drain::{drain_answer, format_datetime};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::nodedata::{NodeData, NodeType, PeerData};
use crate::routing::routing_key;

/// What a creditors agent's peer (an accounting authority) sends it, and a debtors agent's:
/// the answers of an accounting authority.
pub const OUT_MESSAGE_TYPES: [&str; 7] = [
    "RejectedConfig",
    "RejectedTransfer",
    "PreparedTransfer",
    "FinalizedTransfer",
    "AccountUpdate",
    "AccountPurge",
    "AccountTransfer",
];

/// What an accounting authority takes from its agents.
pub const IN_MESSAGE_TYPES: [&str; 3] = ["ConfigureAccount", "PrepareTransfer", "FinalizeTransfer"];

/// The creditor of an issuing transfer (the debtor's own account).
pub const ROOT_CREDITOR_ID: i64 = 0;

/// How far ahead of this node's clock a message's `ts` may be.
pub const MAX_TS_AHEAD_MS: i64 = 2 * 3600 * 1000;

/// A message taken: where it goes and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The SMP message type (`type` in the body and the frame).
    pub message_type: String,
    /// 24 words `0`/`1` ([`routing_key`]).
    pub routing_key: String,
    /// `message-type`, `debtor-id`, `creditor-id`, then `ca-creditors` and `ca-trade` (for
    /// a creditors agent), `coordinator-id` and `coordinator-type` (when the message has a
    /// coordinator id).
    pub headers: Vec<(String, String)>,
    /// The body, with the creditor and coordinator ids as this node knows them.
    pub body: Vec<u8>,
}

/// Why a message is refused: the text of the `ERROR` frame's `message` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// The fields every message has, and the coordinator fields of those that have them.
#[derive(Deserialize)]
struct Common {
    #[serde(rename = "type")]
    message_type: String,
    debtor_id: i64,
    creditor_id: i64,
    coordinator_type: Option<String>,
    coordinator_id: Option<i64>,
}

/// Decides what this node (`owner`) does with a message `peer` sent, at `now_ms`: its
/// frame's `type` and `content-type` headers and its body. The message is refused unless
/// it is JSON of a type a node of this type takes, with that type's fields within their
/// limits, a `ts` at most two hours ahead, its ids in the peer's subnets, and a coordinator
/// that fits the two nodes' types.
pub fn check_inbound(
    owner: &NodeData,
    peer: &PeerData,
    message_type: &str,
    content_type: &str,
    body: &[u8],
    now_ms: i64,
) -> Result<Inbound, Refusal> {
    let refuse = |what: String| Err(Refusal(what));
    let taken: &[&str] = match owner.node_type {
        NodeType::AccountingAuthority => &IN_MESSAGE_TYPES,
        NodeType::CreditorsAgent | NodeType::DebtorsAgent => &OUT_MESSAGE_TYPES,
    };
    let (mut fields, common) = parse(taken, message_type, content_type, body)?;
    let invalid = || Refusal(format!("Invalid {message_type} message."));
    let ts = fields
        .get("ts")
        .and_then(Value::as_str)
        .and_then(fields::parse_datetime);
    match ts {
        Some((ts, true)) if ts - now_ms > MAX_TS_AHEAD_MS => {
            let ahead = (ts - now_ms) as f64 / 1000.0;
            return refuse(format!(
                "The message timestamp is {ahead:.0} seconds in the future."
            ));
        }
        Some((_, true)) => {}
        // Without an offset the time cannot be compared.
        _ => return Err(invalid()),
    }
    let (debtor_id, mut creditor_id) = (common.debtor_id, common.creditor_id);
    if !peer.creditors_subnet.contains(creditor_id) {
        return refuse(format!("Invalid creditor ID: {}.", hex(creditor_id)));
    }
    if !peer.debtors_subnet.contains(debtor_id) {
        return refuse(format!("Invalid debtor ID: {}.", hex(debtor_id)));
    }
    let coordinator_type = common.coordinator_type.as_deref();
    let mut coordinator_id = common.coordinator_id;
    if coordinator_id.is_some() && coordinator_type.is_none() {
        return Err(invalid());
    }
    if let (Some(kind), Some(id)) = (coordinator_type, coordinator_id) {
        let types = [owner.node_type, peer.node_type];
        let agent_side = types.contains(&NodeType::CreditorsAgent);
        let debtor_side = types.contains(&NodeType::DebtorsAgent);
        if (agent_side && kind != "direct" && kind != "agent") || (debtor_side && kind != "issuing")
        {
            return refuse(format!("Invalid coordinator type: {kind}."));
        }
        let fits = match kind {
            "direct" => id == creditor_id,
            "agent" => peer.creditors_subnet.contains(id),
            "issuing" => id == debtor_id && creditor_id == ROOT_CREDITOR_ID,
            _ => true,
        };
        if !fits {
            return refuse("Invalid coordinator ID.".into());
        }
    }
    let mut key = None;
    let mut ca_headers = None;
    if owner.node_type == NodeType::CreditorsAgent {
        // The lowest 2^32 creditor ids of an agent's 40 bits are its system accounts, for
        // circular trades.
        let trade_account = creditor_id & 0xff_0000_0000 == 0;
        let trade_notification =
            message_type == "AccountTransfer" && coordinator_type == Some("agent");
        let mut trade_transfer = false;
        let to_ours = |id: i64| {
            peer.creditors_subnet
                .translate(id, &owner.creditors_subnet)
                .ok_or_else(|| Refusal(format!("Invalid creditor ID: {}.", hex(id))))
        };
        creditor_id = to_ours(creditor_id)?;
        fields.insert("creditor_id".into(), creditor_id.into());
        if let Some(id) = coordinator_id {
            let id = to_ours(id)?;
            coordinator_id = Some(id);
            fields.insert("coordinator_id".into(), id.into());
            if coordinator_type == Some("agent") {
                trade_transfer = true;
                key = Some(routing_key(&[id]));
            }
        }
        ca_headers = Some([
            ("ca-creditors", !(trade_account || trade_transfer)),
            (
                "ca-trade",
                trade_account || trade_transfer || trade_notification,
            ),
        ]);
    }
    let key = key.unwrap_or_else(|| match owner.node_type {
        NodeType::AccountingAuthority => routing_key(&[debtor_id, creditor_id]),
        NodeType::CreditorsAgent => routing_key(&[creditor_id]),
        NodeType::DebtorsAgent => routing_key(&[debtor_id]),
    });
    let mut headers = vec![
        ("message-type".to_owned(), message_type.to_owned()),
        ("debtor-id".to_owned(), debtor_id.to_string()),
        ("creditor-id".to_owned(), creditor_id.to_string()),
    ];
    for (name, on) in ca_headers.into_iter().flatten() {
        headers.push((name.to_owned(), on.to_string()));
    }
    if let (Some(id), Some(kind)) = (coordinator_id, coordinator_type) {
        headers.push(("coordinator-id".to_owned(), id.to_string()));
        headers.push(("coordinator-type".to_owned(), kind.to_owned()));
    }
    let body = serde_json::to_vec(&Value::Object(fields)).map_err(|_| invalid())?;
    Ok(Inbound {
        message_type: message_type.to_owned(),
        routing_key: key,
        headers,
        body,
    })
}

/// A message's body, checked: its content type, its type (one of `allowed`, and the one
/// its body says), and its type's fields.
fn parse(
    allowed: &[&str],
    message_type: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(Map<String, Value>, Common), Refusal> {
    if content_type != "application/json" {
        return Err(Refusal(format!(
            "Unsupported content type: {content_type}."
        )));
    }
    if !allowed.contains(&message_type) {
        return Err(Refusal(format!("Invalid message type: {message_type}.")));
    }
    let invalid = || Refusal(format!("Invalid {message_type} message."));
    let fields: Map<String, Value> = serde_json::from_slice(body).map_err(|_| invalid())?;
    let common: Common =
        serde_json::from_value(Value::Object(fields.clone())).map_err(|_| invalid())?;
    if common.message_type != message_type {
        return Err(invalid());
    }
    fields::check_fields(message_type, &fields).map_err(|_| invalid())?;
    Ok((fields, common))
}

/// A message this node sends a peer: its type and its body as the peer knows the ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub message_type: String,
    pub body: Vec<u8>,
}

/// What this node (`owner`) sends `peer` of a message queued for it: a type a node of this
/// type sends (an authority its answers, agents their requests), its fields within their
/// limits, and its ids in the subnets the peer knows us by. A creditors agent moves the
/// creditor id, and a `direct` or `agent` coordinator's, from its own subnet to the one the
/// peer knows it by. `Err` for a message that must not go (the original drops it from the
/// queue with an error logged).
pub fn check_outbound(
    owner: &NodeData,
    peer: &PeerData,
    message_type: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Outbound, Refusal> {
    let sent: &[&str] = match owner.node_type {
        NodeType::AccountingAuthority => &OUT_MESSAGE_TYPES,
        NodeType::CreditorsAgent | NodeType::DebtorsAgent => &IN_MESSAGE_TYPES,
    };
    let (mut fields, common) = parse(sent, message_type, content_type, body)?;
    let (debtor_id, mut creditor_id) = (common.debtor_id, common.creditor_id);
    if owner.node_type == NodeType::CreditorsAgent {
        let to_theirs = |id: i64, what: &str| {
            owner
                .creditors_subnet
                .translate(id, &peer.creditors_subnet)
                .ok_or_else(|| Refusal(format!("Invalid {what} ID: {}.", hex(id))))
        };
        creditor_id = to_theirs(creditor_id, "creditor")?;
        fields.insert("creditor_id".into(), creditor_id.into());
        let coordinated = matches!(common.coordinator_type.as_deref(), Some("direct" | "agent"));
        if let Some(id) = common.coordinator_id.filter(|_| coordinated) {
            fields.insert(
                "coordinator_id".into(),
                to_theirs(id, "coordinator")?.into(),
            );
        }
    }
    if !peer.creditors_subnet.contains(creditor_id) {
        return Err(Refusal(format!(
            "Invalid creditor ID: {}.",
            hex(creditor_id)
        )));
    }
    if !peer.debtors_subnet.contains(debtor_id) {
        return Err(Refusal(format!("Invalid debtor ID: {}.", hex(debtor_id))));
    }
    let body = serde_json::to_vec(&Value::Object(fields))
        .map_err(|_| Refusal(format!("Invalid {message_type} message.")))?;
    Ok(Outbound {
        message_type: message_type.to_owned(),
        body,
    })
}

/// An id as the original writes it in refusals: 8 bytes, big-endian two's complement, hex.
fn hex(id: i64) -> String {
    format!("0x{:016x}", id as u64)
}

#[cfg(test)]
mod tests;
