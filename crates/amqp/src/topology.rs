//! What Trunkline declares in RabbitMQ: two exchanges, and a quorum queue for each inbox,
//! dead-letter queue and declared queue, with the queue's limits as its arguments.

use lapin::types::{AMQPValue, FieldTable, LongString};
use trunkline_broker::{Limits, Overflow};

/// The namespace when none is configured.
pub const DEFAULT_NAMESPACE: &str = "trunkline";

/// Trunkline's exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// Every publish to a topic goes here; inboxes and declared queues bind to it with
    /// their patterns (AMQP's topic patterns are Trunkline's: `*` one word, `#` any).
    Topic,
    /// `/notify`: every inbox is bound to it (fanout).
    Notify,
}

/// RabbitMQ's names for a Trunkline cluster's exchanges and queues: all under one
/// namespace (`<ns>.topic`, `<ns>.c1-inbox`), so that several clusters (or test nodes)
/// can share one RabbitMQ without seeing each other's queues.
#[derive(Debug, Clone)]
pub struct Names {
    ns: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        let ns = if namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace
        };
        Names { ns: ns.to_owned() }
    }

    pub fn exchange(&self, e: Exchange) -> String {
        match e {
            Exchange::Topic => format!("{}.topic", self.ns),
            Exchange::Notify => format!("{}.notify", self.ns),
        }
    }

    /// The exchange of live traffic between nodes (`<ns>.live`).
    pub fn live_exchange(&self) -> String {
        format!("{}.live", self.ns)
    }

    /// The exchange of channel messages between nodes (`<ns>.channels`).
    pub fn channels_exchange(&self) -> String {
        format!("{}.channels", self.ns)
    }

    pub fn queue(&self, name: &str) -> String {
        format!("{}.{name}", self.ns)
    }

    /// A stream of Trunkline's own (`<ns>:<name>`: no declared queue's name has a `:`).
    pub fn stream(&self, name: &str) -> String {
        format!("{}:{name}", self.ns)
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Arguments of a quorum queue with `limits`, whose messages go to `dead` (RabbitMQ's
/// name) after
/// `max_deliveries` deliveries (a dead-letter queue itself has no `dead`).
///
/// A quorum queue's `x-delivery-limit` counts returns, not deliveries: limit `n - 1` lets
/// a message be delivered `n` times. Dead-lettering is at least once (RabbitMQ keeps the
/// message until the dead-letter queue confirms it), which RabbitMQ allows only with
/// `reject-publish`; with `drop-head`, at most once.
pub fn queue_arguments(limits: &Limits, dead: Option<&str>) -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-queue-type".into(), text("quorum"));
    let max_length = i64::try_from(limits.max_length).unwrap_or(i64::MAX);
    a.insert("x-max-length".into(), AMQPValue::LongLongInt(max_length));
    let overflow = match limits.overflow {
        Overflow::RejectPublish => "reject-publish",
        Overflow::DropOldest => "drop-head",
    };
    a.insert("x-overflow".into(), text(overflow));
    if let Some(dead) = dead {
        let returns = i64::from(limits.max_deliveries.max(1) - 1);
        a.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(returns));
        a.insert("x-dead-letter-exchange".into(), text(""));
        a.insert("x-dead-letter-routing-key".into(), text(dead));
        if limits.overflow == Overflow::RejectPublish {
            a.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_quorum_queue_arguments() {
        let limits = Limits {
            max_length: 5,
            overflow: Overflow::RejectPublish,
            max_deliveries: 3,
        };
        let a = queue_arguments(&limits, Some("c1-dead"));
        let get = |k: &str| a.inner().get(k).cloned();
        assert_eq!(get("x-queue-type"), Some(text("quorum")));
        assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(5)));
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(2)));
        assert_eq!(get("x-dead-letter-routing-key"), Some(text("c1-dead")));
        assert_eq!(get("x-dead-letter-strategy"), Some(text("at-least-once")));
        let drop = Limits {
            overflow: Overflow::DropOldest,
            ..limits
        };
        let a = queue_arguments(&drop, None);
        assert_eq!(
            a.inner().get("x-overflow").cloned(),
            Some(text("drop-head"))
        );
        assert!(!a.contains_key("x-delivery-limit") && !a.contains_key("x-dead-letter-strategy"));
    }
}
