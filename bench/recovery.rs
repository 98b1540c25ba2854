//! `trunkline-bench recovery`: how long a node takes to recover a store full of queued
//! messages. In process: fills a store (`--engine log` or `redb`) through the broker (`--messages` 1 KiB
//! messages spread over `--clients` inboxes, published concurrently so commits batch),
//! closes it, and times `Broker::open` on it.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use trunkline_broker::{Broker, BrokerConfig, NewClient, Publish};
use trunkline_store::{LogStore, QueueStore, RedbStore};

#[derive(clap::Args, Clone, Debug)]
pub struct RecoveryArgs {
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 10)]
    pub clients: u64,
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// `log` (the default engine) or `redb`.
    #[arg(long, default_value = "log")]
    pub engine: String,
    /// Keep the store in this directory instead of a temporary one; when it already
    /// holds one (from an earlier run with the same `--engine`), only time its reopening.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// With the log engine: time an open that reads every segment whole (its index files
    /// removed first), instead of one from the index files that a running node writes for
    /// its sealed segments.
    #[arg(long)]
    pub no_index: bool,
}

fn open_store(engine: &str, path: &std::path::Path) -> Result<Arc<dyn QueueStore>> {
    Ok(match engine {
        "log" => Arc::new(LogStore::open(path)?),
        "redb" => Arc::new(RedbStore::open(path)?),
        other => anyhow::bail!("--engine must be log or redb, not {other}"),
    })
}

/// Bytes in a file, or in the files of a directory.
fn disk_bytes(path: &std::path::Path) -> Result<u64> {
    if path.is_dir() {
        let mut n = 0;
        for e in std::fs::read_dir(path)? {
            n += e?.metadata()?.len();
        }
        Ok(n)
    } else {
        Ok(std::fs::metadata(path)?.len())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub async fn run(a: &RecoveryArgs) -> Result<Value> {
    let tmp = tempfile::tempdir().context("temp dir")?;
    let path = a.dir.as_deref().unwrap_or(tmp.path()).join(&a.engine);
    let mut config = BrokerConfig::default();
    config.default_limits.max_length = a.messages + 1;
    // What is measured is recovery, not the cap: room for any backlog's index.
    config.max_memory_bytes = u64::MAX;
    let (stored, fill) = if path.exists() {
        (None, None)
    } else {
        let (stored, fill) = fill(a, &path, &config).await?;
        (Some(stored), Some(fill))
    };
    if a.engine == "log" {
        // As a node that ran for a while has them: an index file for every sealed segment
        // (its background thread writes them), or none.
        if a.no_index {
            for e in std::fs::read_dir(&path)? {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "idx") {
                    std::fs::remove_file(p)?;
                }
            }
        } else {
            LogStore::open(&path)?.write_indexes()?;
        }
    }
    let size = disk_bytes(&path)?;

    let start = Instant::now();
    let store = open_store(&a.engine, &path)?;
    let store_open = start.elapsed();
    let broker = Broker::open(store, config, now_ms())?;
    let open = start.elapsed();
    let queued: u64 = broker.queue_depths().iter().map(|d| d.ready).sum();
    if let Some(stored) = stored {
        anyhow::ensure!(queued == stored, "recovered {queued} of {stored} messages");
    }
    let per_million = open.as_secs_f64() * 1e6 / queued.max(1) as f64;
    let filled = fill
        .map(|f| format!("filled in {:.1} s", f.as_secs_f64()))
        .unwrap_or_else(|| "kept from an earlier run".into());
    let how = match (a.engine.as_str(), a.no_index) {
        ("log", false) => ", from index files",
        ("log", true) => ", every segment read whole",
        _ => "",
    };
    println!(
        "recovery ({}{how}): {queued} queued messages of {} B ({} MiB store) {filled}; reopened in {:.0} ms = {:.2} s per million (store {:.0} ms, broker {:.0} ms)",
        a.engine,
        a.size,
        size >> 20,
        open.as_secs_f64() * 1e3,
        per_million,
        store_open.as_secs_f64() * 1e3,
        (open - store_open).as_secs_f64() * 1e3
    );
    let _ = broker.shutdown();
    Ok(
        json!({"engine": a.engine, "index_files": a.engine == "log" && !a.no_index,
        "messages": queued, "size": a.size, "store_bytes": size,
        "fill_seconds": fill.map(|f| f.as_secs_f64()), "open_seconds": open.as_secs_f64(),
        "store_open_seconds": store_open.as_secs_f64(),
        "seconds_per_million": per_million}),
    )
}

/// Fills a new store at `path` through the broker; returns how many messages it holds
/// and how long that took.
async fn fill(
    a: &RecoveryArgs,
    path: &std::path::Path,
    config: &BrokerConfig,
) -> Result<(u64, std::time::Duration)> {
    let broker = Broker::open(open_store(&a.engine, path)?, config.clone(), now_ms())?;
    for c in 0..a.clients {
        broker
            .create_client(
                NewClient::new(format!("c{c}"), "c", vec![format!("r.{c}.#")]),
                now_ms(),
            )
            .await?;
    }
    let body = format!("\"{}\"", "x".repeat(a.size.saturating_sub(2)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let per_task = a.messages / 64;
    for t in 0..64u64 {
        let (broker, body) = (broker.clone(), body.clone());
        let clients = a.clients.max(1);
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let topic = format!("r.{}.m", (t * per_task + i) % clients);
                broker
                    .publish(
                        Publish::new(topic, body.clone().into_bytes(), "bench"),
                        now_ms(),
                    )
                    .await?;
            }
            Ok::<_, trunkline_broker::BrokerError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let fill = start.elapsed();
    broker
        .shutdown()
        .map_err(|_| anyhow!("broker still shared"))?;
    Ok((per_task * 64, fill))
}
