//! What `/metrics` shows: the node's counters and gauges, encoded by `prometheus-client`
//! in the OpenMetrics text format when Prometheus scrapes.
//!
//! The numbers live where they are counted: the broker's [`Counters`] and live counters,
//! the committer's [`CommitStats`], the listeners' connection and session counts, and
//! [`HttpCounters`]. [`NodeMetrics`] is a [`Collector`] that reads them at scrape time, so
//! counting costs the one atomic add it always did and there is no second set of metrics
//! to keep in sync.
//!
//! Names: the OpenMetrics text encoder appends `_total` to a counter's sample, so counters
//! are described under their family name (`trunkline_commits`) and their samples keep the
//! names they always had (`trunkline_commits_total`). No metric is given a unit, which the
//! encoder would also append to the name.
//!
//! [`Counters`]: trunkline_broker::Counters
//! [`CommitStats`]: trunkline_store::commit::CommitStats

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use trunkline_broker::Broker;
use trunkline_store::commit::Histogram;

use crate::live::Calls;
use crate::state::HttpCounters;
use crate::ws::Sessions;

/// The media type of what [`encode`] writes, the one its encoder is meant to be served with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Status classes of `trunkline_http_responses_total`, in the order of
/// [`HttpCounters::by_class`].
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Reads the node's counters when scraped. Cheap to clone: it holds handles.
#[derive(Clone)]
pub struct NodeMetrics {
    /// The node's own broker: its counters and its store's commit statistics.
    pub broker: Broker,
    /// The engine the front-ends use (the broker, or the cluster's): queue depths.
    pub engine: Arc<dyn trunkline_broker::Backend>,
    pub http: Arc<HttpCounters>,
    pub stomp_connections: Arc<AtomicU64>,
    pub sessions: Arc<Sessions>,
    pub calls: Arc<Calls>,
    /// The federation links running (none without federation).
    pub links: Arc<crate::federation::Links>,
    /// The relay, when enabled.
    pub relay: Option<Arc<crate::relay::Relay>>,
}

impl fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// A registry holding this collector and nothing else, for [`encode`].
    pub fn into_registry(self) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        registry
    }
}

/// The whole exposition of `registry`, `# EOF` included.
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(8 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// A counter family named `name`; its sample is `{name}_total`.
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = ConstCounter::new(v);
    m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let m = ConstGauge::new(v);
    m.encode(e.encode_descriptor(name, help, None, m.metric_type())?)
}

/// A gauge family with one label, one sample per `(label value, value)`.
fn labelled_gauges<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: impl Iterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in samples {
        ConstGauge::new(v).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

/// Families labelled by `peer` and `queue`, one sample per link, of the link numbers
/// `pick` reads.
fn link_family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    links: &[(String, String, Arc<crate::federation::link::LinkStats>)],
    pick: impl Fn(&crate::federation::link::LinkStats) -> &AtomicU64,
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, kind)?;
    for (peer, queue, s) in links {
        let labels = [("peer", peer.as_str()), ("queue", queue.as_str())];
        let v = load(pick(s));
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(family.encode_family(&labels)?)?,
            _ => ConstGauge::new(v).encode(family.encode_family(&labels)?)?,
        }
    }
    Ok(())
}

/// The committer's cumulative histogram as prometheus-client takes one: a count per
/// bucket (it sums them again), then the `+Inf` bucket.
fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, h: &Histogram) -> fmt::Result {
    let (cumulative, count, sum) = h.snapshot();
    let mut buckets = Vec::with_capacity(cumulative.len() + 1);
    let mut below = 0;
    for (le, c) in cumulative {
        // The snapshot reads its atomics one by one while commits go on: never let a
        // bucket hold fewer than the ones below it.
        buckets.push((le, c.saturating_sub(below)));
        below = below.max(c);
    }
    let count = count.max(below);
    buckets.push((f64::INFINITY, count - below));
    e.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for NodeMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let e = &mut e;
        let b = &self.broker;
        let c = b.counters();
        let s = b.committer().stats();
        let lc = b.live_counters();
        let counters = [
            (
                "trunkline_messages_published",
                "Messages accepted by /send and /notify.",
                &c.published,
            ),
            (
                "trunkline_messages_enqueued",
                "Queue entries created by publishes (one per matching inbox).",
                &c.enqueued,
            ),
            (
                "trunkline_messages_delivered",
                "Messages handed to consumers.",
                &c.delivered,
            ),
            (
                "trunkline_messages_acked",
                "Leased deliveries acked.",
                &c.acked,
            ),
            (
                "trunkline_messages_nacked",
                "Leased deliveries nacked.",
                &c.nacked,
            ),
            (
                "trunkline_messages_expired",
                "Messages dropped because their TTL passed.",
                &c.expired,
            ),
            (
                "trunkline_messages_dead_lettered",
                "Messages moved to a dead-letter queue.",
                &c.dead_lettered,
            ),
            (
                "trunkline_messages_dropped_overflow",
                "Messages dropped by a drop-oldest queue.",
                &c.dropped_overflow,
            ),
            (
                "trunkline_publishes_rejected_full",
                "Publishes refused because a queue, or the memory for queued messages, was full.",
                &c.rejected_full,
            ),
            (
                "trunkline_publishes_duplicate",
                "Publishes recognised as duplicates by message_id.",
                &c.duplicates,
            ),
            (
                "trunkline_commits",
                "Durable commits (each one sync).",
                &s.commits,
            ),
            (
                "trunkline_commit_ops",
                "Store operations committed.",
                &s.ops,
            ),
            ("trunkline_commit_failures", "Failed commits.", &s.failures),
            (
                "trunkline_live_delivered",
                "Messages handed to live subscribers.",
                &lc.delivered,
            ),
            (
                "trunkline_live_missed",
                "Messages live subscribers missed by falling behind.",
                &lc.missed,
            ),
        ];
        for (name, help, v) in counters {
            counter(e, name, help, load(v))?;
        }
        histogram(
            e,
            "trunkline_commit_batch_size",
            "Requests sharing one commit.",
            &s.batch_size,
        )?;
        histogram(
            e,
            "trunkline_commit_seconds",
            "Time to write and sync one commit.",
            &s.latency,
        )?;

        let gauges = [
            ("trunkline_clients", "Registered clients.", b.client_count() as u64),
            ("trunkline_dedup_entries", "Remembered publisher message ids.", b.dedup_len() as u64),
            ("trunkline_queued_memory_bytes", "Memory the index of queued messages takes, as the node-wide cap counts it: queue entries and message records (bodies are in the store).", b.memory_used()),
            ("trunkline_queued_memory_max_bytes", "The node-wide cap on memory held by queued messages (inbox.max_memory_bytes).", b.config().max_memory_bytes),
            ("trunkline_body_cache_bytes", "Bytes of queued message bodies held in memory; the rest are read back from the log when delivered.", b.body_cache().0),
            ("trunkline_body_cache_max_bytes", "The most queued message bodies may hold in memory now: store.body_cache_bytes, or what the index leaves under inbox.max_memory_bytes.", b.body_cache().1),
            ("trunkline_stomp_connections", "Open STOMP connections.", load(&self.stomp_connections)),
            ("trunkline_ws_sessions", "Open WebSocket sessions.", self.sessions.open() as u64),
            ("trunkline_ws_calls_pending", "RPC and client-function calls waiting for their callee's answer.", self.calls.pending() as u64),
            ("trunkline_live_subscriptions", "Open live subscriptions.", b.live_subscriptions() as u64),
        ];
        for (name, help, v) in gauges {
            gauge(e, name, help, v)?;
        }
        // Only a store that keeps count of its disk (the log engine) has these.
        if let Some((used, max)) = b.disk_usage() {
            gauge(
                e,
                "trunkline_store_disk_bytes",
                "Bytes the store's log takes on disk (the newest segment at its preallocated size).",
                used,
            )?;
            gauge(
                e,
                "trunkline_store_disk_max_bytes",
                "The most disk the log may take (store.max_disk_bytes); past it publishes get 507 disk_full.",
                max,
            )?;
        }

        let mut responses = e.encode_descriptor(
            "trunkline_http_responses",
            "HTTP responses by status class.",
            None,
            MetricType::Counter,
        )?;
        for (class, n) in STATUS_CLASSES.iter().zip(&self.http.by_class) {
            ConstCounter::new(load(n)).encode(responses.encode_family(&[("class", *class)])?)?;
        }

        let mut depths = self.engine.queue_depths();
        depths.sort_by(|a, b| a.name.cmp(&b.name));
        labelled_gauges(
            e,
            "trunkline_queue_ready",
            "Messages ready for delivery.",
            "queue",
            depths.iter().map(|d| (&*d.name, d.ready)),
        )?;
        labelled_gauges(
            e,
            "trunkline_queue_leased",
            "Messages delivered and awaiting ack.",
            "queue",
            depths.iter().map(|d| (&*d.name, d.leased)),
        )?;

        if let Some(r) = &self.relay {
            let rc = &r.counters;
            let relay_counters = [
                ("trunkline_relay_stored", "Envelopes the relay stored for its own sessions.", &rc.routed_local),
                ("trunkline_relay_forwarded", "Envelopes the relay stored for another relay.", &rc.forwarded),
                ("trunkline_relay_delivered", "Envelopes the relay wrote to its sessions.", &rc.delivered),
                ("trunkline_relay_refused", "Envelopes the relay refused (bad source, signature or time, unknown twin, rate, no route).", &rc.refused),
                ("trunkline_relay_replays", "Envelopes the relay dropped as replays.", &rc.replays),
            ];
            for (name, help, v) in relay_counters {
                counter(e, name, help, load(v))?;
            }
            gauge(
                e,
                "trunkline_relay_connections",
                "Connections logged in to the relay (twins' sessions and other relays).",
                load(&rc.connections),
            )?;
        }

        let links = self.links.stats();
        if links.is_empty() {
            return Ok(());
        }
        type Pick = fn(&crate::federation::link::LinkStats) -> &AtomicU64;
        let families: [(&str, &str, MetricType, Pick); 5] = [
            ("trunkline_federation_link_sent", "Messages a link sent its peer (again after a reconnect too).", MetricType::Counter, |s| &s.sent),
            ("trunkline_federation_link_confirmed", "Messages a link's peer confirmed, acked in its queue.", MetricType::Counter, |s| &s.confirmed),
            ("trunkline_federation_link_dead_lettered", "Messages a link would not send (not for its peer), moved to the queue's dead-letter queue.", MetricType::Counter, |s| &s.dead_lettered),
            ("trunkline_federation_link_connects", "Connections a link opened.", MetricType::Counter, |s| &s.connects),
            ("trunkline_federation_link_connected", "1 while a link is connected to its peer.", MetricType::Gauge, |s| &s.connected),
        ];
        for (name, help, kind, pick) in families {
            link_family(e, name, help, kind, &links, pick)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(
        f: impl Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
    ) -> String {
        struct One<F>(F);
        impl<F> fmt::Debug for One<F> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("One")
            }
        }
        impl<F: Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static> Collector for One<F> {
            fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
                (self.0)(&mut e)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(One(f)));
        encode(&registry).expect("a String takes any write")
    }

    #[test]
    fn a_counter_keeps_its_total_name() {
        let text = encoded(|e| counter(e, "trunkline_commits", "Durable commits.", 7));
        assert_eq!(
            text,
            "# HELP trunkline_commits Durable commits.\n\
             # TYPE trunkline_commits counter\n\
             trunkline_commits_total 7\n\
             # EOF\n"
        );
    }

    #[test]
    fn the_committer_histogram_keeps_its_buckets_and_counts() {
        static BOUNDS: [f64; 3] = [1.0, 2.0, 5.0];
        let h = Arc::new(Histogram::new(&BOUNDS));
        for v in [1.0, 1.0, 3.0, 9.0] {
            h.observe(v);
        }
        let text = encoded(move |e| histogram(e, "h", "A histogram.", &h));
        assert_eq!(
            text,
            "# HELP h A histogram.\n\
             # TYPE h histogram\n\
             h_sum 14.0\n\
             h_count 4\n\
             h_bucket{le=\"1.0\"} 2\n\
             h_bucket{le=\"2.0\"} 2\n\
             h_bucket{le=\"5.0\"} 3\n\
             h_bucket{le=\"+Inf\"} 4\n\
             # EOF\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let text =
            encoded(|e| labelled_gauges(e, "q", "Q.", "queue", [("a\"b\\c\nd", 1)].into_iter()));
        assert!(text.contains("q{queue=\"a\\\"b\\\\c\\nd\"} 1\n"), "{text}");
    }
}
