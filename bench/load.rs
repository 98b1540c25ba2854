//! What the durable scenarios share, whatever system they drive (`stomp-durable`,
//! `nats-durable`): the shape of the load, the message body, and the report.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use crate::{latency_json, peak_rss_kib};

/// The shape of a durable publish → consume → ack run.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// Unconfirmed messages per publisher.
    #[arg(long, default_value_t = 100)]
    pub window: usize,
    /// Unacknowledged messages per consumer.
    #[arg(long, default_value_t = 100)]
    pub prefetch: usize,
    #[arg(long, default_value_t = 120)]
    pub duration_limit: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl LoadArgs {
    /// Messages per consumer, and the total actually sent (a multiple of the consumers).
    pub fn split(&self) -> (u64, u64) {
        let per_consumer = self.messages / self.consumers.max(1) as u64;
        (per_consumer, per_consumer * self.consumers.max(1) as u64)
    }
}

/// A body of about `size` bytes carrying its send time (ns since the start of the run).
pub fn body(sent_ns: u64, pad: &str) -> String {
    format!("{{\"t\":{sent_ns},\"pad\":\"{pad}\"}}")
}

/// The padding that makes [`body`] `size` bytes long.
pub fn padding(size: usize) -> String {
    "x".repeat(size.saturating_sub(40))
}

/// The send time a [`body`] carries.
pub fn sent_ns(payload: &[u8]) -> Option<u64> {
    let head = std::str::from_utf8(&payload[..20.min(payload.len())]).ok()?;
    head.trim_start_matches("{\"t\":")
        .split(',')
        .next()?
        .parse()
        .ok()
}

/// What one run measured.
pub struct Outcome {
    pub total: u64,
    pub publish_ns: Vec<u64>,
    pub end_to_end_ns: Vec<u64>,
    pub elapsed_s: f64,
    pub server_cpu_s: f64,
    pub server_pid: u32,
}

/// Prints the summary line and latencies, writes `--json`; true if every message was
/// consumed.
pub fn report(target: &str, a: &LoadArgs, o: Outcome) -> Result<bool> {
    let consumed = o.end_to_end_ns.len() as u64;
    let r = json!({
        "target": target, "messages": o.total, "size": a.size, "publishers": a.publishers,
        "consumers": a.consumers, "window": a.window, "prefetch": a.prefetch,
        "confirmed": o.publish_ns.len(), "consumed": consumed, "elapsed_s": o.elapsed_s,
        "msgs_per_s": consumed as f64 / o.elapsed_s,
        "server_cpu_us_per_msg": o.server_cpu_s * 1e6 / consumed.max(1) as f64,
        "server_peak_rss_mib": peak_rss_kib(o.server_pid).unwrap_or(0) as f64 / 1024.0,
        "publish_latency": latency_json(o.publish_ns),
        "end_to_end_latency": latency_json(o.end_to_end_ns),
    });
    println!(
        "{target}: {} msgs of {} B, {} publishers (window {}), {} consumers (prefetch {}): {:.0} msgs/s consumed+acked, server CPU {:.1} µs/msg, peak RSS {:.1} MiB",
        o.total, a.size, a.publishers, a.window, a.consumers, a.prefetch,
        r["msgs_per_s"].as_f64().unwrap_or(0.0),
        r["server_cpu_us_per_msg"].as_f64().unwrap_or(0.0),
        r["server_peak_rss_mib"].as_f64().unwrap_or(0.0),
    );
    println!(
        "  publish latency {}\n  end-to-end latency {}",
        r["publish_latency"], r["end_to_end_latency"]
    );
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&r)?)?;
    }
    Ok(consumed == o.total)
}
