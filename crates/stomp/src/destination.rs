//! Destinations, as RabbitMQ's STOMP plugin names them.
//!
//! - `/topic/<routing key or pattern>`: publish by topic (to every matching inbox and live
//!   subscriber); subscribe to a pattern, live and not stored.
//! - `/queue/<name>` (and `/amq/queue/<name>`): one named queue, such as `<client>-inbox`.
//! - `/exchange/amq.topic/<key>` is the same as `/topic/<key>`.
//! - `/exchange/<name>` (no key): an exchange of its own, which only a federation listener
//!   takes (a peer node sends to `/exchange/accounts_in` and its kin; the routing key comes
//!   from the message).

/// Where a `SEND` goes or what a `SUBSCRIBE` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Topic(String),
    Queue(String),
    Exchange(String),
}

impl Destination {
    /// Parses a destination header; `None` for one Trunkline does not serve.
    pub fn parse(d: &str) -> Option<Destination> {
        let (kind, rest) = if let Some(r) = d.strip_prefix("/topic/") {
            ("topic", r)
        } else if let Some(r) = d.strip_prefix("/exchange/amq.topic/") {
            ("topic", r)
        } else if let Some(r) = d.strip_prefix("/queue/") {
            ("queue", r)
        } else if let Some(r) = d.strip_prefix("/amq/queue/") {
            ("queue", r)
        } else if let Some(r) = d.strip_prefix("/exchange/").filter(|r| !r.contains('/')) {
            ("exchange", r)
        } else {
            return None;
        };
        if rest.is_empty() || rest.len() > 255 {
            return None;
        }
        Some(match kind {
            "topic" => Destination::Topic(rest.to_owned()),
            "exchange" => Destination::Exchange(rest.to_owned()),
            _ => Destination::Queue(rest.to_owned()),
        })
    }

    /// The destination as a header value.
    pub fn to_header(&self) -> String {
        match self {
            Destination::Topic(t) => format!("/topic/{t}"),
            Destination::Queue(q) => format!("/queue/{q}"),
            Destination::Exchange(e) => format!("/exchange/{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rabbitmq_destinations() {
        assert_eq!(
            Destination::parse("/topic/a.b"),
            Some(Destination::Topic("a.b".into()))
        );
        assert_eq!(
            Destination::parse("/exchange/amq.topic/a.*"),
            Some(Destination::Topic("a.*".into()))
        );
        assert_eq!(
            Destination::parse("/queue/c1-inbox"),
            Some(Destination::Queue("c1-inbox".into()))
        );
        assert_eq!(
            Destination::parse("/amq/queue/q"),
            Some(Destination::Queue("q".into()))
        );
        assert_eq!(
            Destination::parse("/exchange/accounts_in"),
            Some(Destination::Exchange("accounts_in".into()))
        );
        for bad in [
            "",
            "/topic/",
            "/queue/",
            "/exchange/",
            "queue/x",
            "/exchange/other/x",
            "/temp-queue/x",
        ] {
            assert_eq!(Destination::parse(bad), None, "{bad}");
        }
        assert_eq!(Destination::Topic("a".into()).to_header(), "/topic/a");
    }
}
