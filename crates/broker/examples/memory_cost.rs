//! Measures what queued messages cost in memory (resident set), to check the estimates the
//! node-wide memory cap counts (`trunkline_broker::footprint`).
//!
//! ```sh
//! cargo run -p trunkline-broker --example memory_cost -- log 500 4000 lease
//! cargo run -p trunkline-broker --example memory_cost -- log 1 1000000
//! cargo run -p trunkline-broker --example memory_cost -- log 1 1000000 head=1000000
//! ```
//!
//! (Either profile: sizes do not depend on it, a release build only runs faster.) What it
//! measured when the estimates were set is in `docs/storage-format.md`.
//!
//! Arguments: the store (`log`: the default engine, which keeps its own index of every
//! entry in memory; `none`: a store that keeps nothing, to see the broker's share alone),
//! the number of inboxes (all subscribed to `flood.#`), the number of 3-byte messages
//! published to `flood.x`, and optionally `lease` to lease every entry afterwards (a
//! leased entry is indexed differently from a ready one) and `head=N` for the ready entries
//! a queue keeps in memory (`store.queue_memory_entries`, 10 000 by default; the rest stay
//! in the store only). Prints the resident set growth
//! per entry and per message next to what the cap counts.

use std::sync::Arc;

use trunkline_broker::{footprint, Broker, BrokerConfig, NewClient, Publish, ReceiveOptions};
use trunkline_store::{LogStore, Op, QueueStore, Snapshot, StoreError};

/// Keeps nothing: only the broker's own memory is measured. Bodies read back are all one
/// small stand-in.
struct NoStore;

impl QueueStore for NoStore {
    fn commit(&self, _: &[Op]) -> Result<(), StoreError> {
        Ok(())
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }
    fn read_message(
        &self,
        _: u64,
    ) -> Result<Option<std::sync::Arc<trunkline_store::StoredMessage>>, StoreError> {
        Ok(Some(Arc::new(trunkline_store::StoredMessage {
            topic: "flood.x".into(),
            body: bytes::Bytes::from_static(b"100"),
            sender: "pub".into(),
            timestamp_ms: 2,
            expires_at_ms: None,
            content_type: None,
            headers: Vec::new(),
        })))
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let store_kind = args.first().map_or("log", String::as_str);
    let inboxes: usize = args.get(1).map_or(Ok(500), |a| a.parse())?;
    let messages: usize = args.get(2).map_or(Ok(4000), |a| a.parse())?;
    let lease = args.iter().skip(3).any(|a| a == "lease");
    let head = args
        .iter()
        .skip(3)
        .find_map(|a| a.strip_prefix("head="))
        .map(str::parse)
        .transpose()?;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn QueueStore> = match store_kind {
        "log" => Arc::new(LogStore::open(dir.path())?),
        "none" => Arc::new(NoStore),
        other => anyhow::bail!("store must be log or none, not {other}"),
    };
    let mut config = BrokerConfig {
        max_memory_bytes: u64::MAX,
        // The index alone: every body is let go once durable (and read back when needed).
        body_cache_bytes: 0,
        ..BrokerConfig::default()
    };
    if let Some(head) = head {
        config.queue_memory_entries = head;
    }
    config.default_limits.max_length = u64::MAX / 2;
    let b = Broker::open(store, config, 1)?;
    for i in 0..inboxes {
        b.create_client(
            NewClient::new(format!("c{i}"), "c", vec!["flood.#".into()]),
            1,
        )
        .await?;
    }
    let before = rss_bytes();
    // Batches keep the commits (and the syncs of the log) few.
    let batch = (20_000 / inboxes).clamp(1, 1000);
    let mut sent = 0;
    while sent < messages {
        let n = batch.min(messages - sent);
        let ps = (0..n)
            .map(|i| Publish::new("flood.x", format!("{}", 100 + (sent + i) % 900), "pub"))
            .collect();
        b.publish_batch_start(ps, 2)?.await?;
        sent += n;
    }
    let entries = (inboxes * messages) as u64;
    let after = rss_bytes();
    let grown = after.saturating_sub(before) as f64;
    println!(
        "{store_kind}: {inboxes} inboxes x {messages} messages = {entries} entries: \
         RSS +{:.1} MiB, {:.1} bytes per entry (all in), {:.1} bytes per message (all in)",
        grown / 1048576.0,
        grown / entries as f64,
        grown / messages as f64,
    );
    println!(
        "counted by the cap: {} bytes ({:.1} per entry)",
        b.memory_used(),
        b.memory_used() as f64 / entries as f64
    );
    if lease {
        for i in 0..inboxes {
            let id = format!("c{i}");
            let inbox = format!("c{i}-inbox");
            let who = b.principal(&id).expect("the client was just created");
            loop {
                let got = b
                    .receive(&who, &inbox, ReceiveOptions::leased(1000, 3_600_000), 3)
                    .await?;
                if got.is_empty() {
                    break;
                }
            }
        }
        let leased = rss_bytes();
        println!(
            "after leasing every entry: RSS +{:.1} MiB more, {:.1} bytes per entry more",
            leased.saturating_sub(after) as f64 / 1048576.0,
            leased.saturating_sub(after) as f64 / entries as f64,
        );
    }
    println!(
        "estimates: {} bytes per entry, {} bytes per message record (bodies are in the store)",
        footprint::ENTRY_BYTES,
        footprint::MESSAGE_BYTES
    );
    Ok(())
}
