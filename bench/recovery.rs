//! `trunkline-bench recovery`: how long a node takes to recover a store full of queued
//! messages. In process: fills a store (`--engine log` or `redb`) through the broker (`--messages` 1 KiB
//! messages spread over `--clients` inboxes, published concurrently so commits batch),
//! closes it, and times `Broker::open` on it. The store is opened as a node with the
//! default configuration opens it (each queue's first `queue_memory_entries` ready entries
//! in memory, the rest on disk only), or with `--all-in-memory` with every entry in memory.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use trunkline_broker::{footprint, Broker, BrokerConfig, NewClient, Publish};
use trunkline_store::fs::RealFs;
use trunkline_store::{LogOptions, LogStore, QueueStore, RedbStore};

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
    /// Open the log with every entry in memory, as no node does (its queues keep their
    /// first `queue_memory_entries` ready entries in memory and the rest on disk only),
    /// and without the memory cap: the index of the whole backlog is built.
    #[arg(long)]
    pub all_in_memory: bool,
}

fn open_store(
    engine: &str,
    path: &std::path::Path,
    config: &BrokerConfig,
    all_in_memory: bool,
) -> Result<Arc<dyn QueueStore>> {
    Ok(match engine {
        "log" if all_in_memory => Arc::new(LogStore::open(path)?),
        // The node's bounds (`trunkline serve` opens its log the same way).
        "log" => Arc::new(LogStore::open_on(
            Arc::new(RealFs),
            path,
            LogOptions {
                spill_entries: Some(config.queue_memory_entries.max(1)),
                spill_node: Some(footprint::node_spill(config.max_memory_bytes)),
                ..LogOptions::default()
            },
        )?),
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
    if a.all_in_memory {
        // Room for any backlog's index, and queues that keep every entry in memory.
        config.max_memory_bytes = u64::MAX;
        config.queue_memory_entries = usize::MAX;
    }
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

    let (me, tick) = (std::process::id(), crate::sys::clock_ticks_per_sec()?);
    let cpu0 = crate::cpu_ticks(me)?;
    let start = Instant::now();
    let store = open_store(&a.engine, &path, &config, a.all_in_memory)?;
    let store_open = start.elapsed();
    let hot = config.queue_memory_entries;
    let broker = Broker::open(store, config, now_ms())?;
    let open = start.elapsed();
    let cpu = (crate::cpu_ticks(me)? - cpu0) as f64 / tick;
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
    let held = match (a.engine.as_str(), a.all_in_memory) {
        ("log", false) => format!(", queues holding their first {hot} entries in memory"),
        ("log", true) => ", every entry in memory".into(),
        _ => String::new(),
    };
    println!(
        "recovery ({}{how}{held}): {queued} queued messages of {} B ({} MiB store) {filled}; reopened in {:.0} ms = {:.2} s per million (store {:.0} ms, broker {:.0} ms), {:.0} ms of CPU",
        a.engine,
        a.size,
        size >> 20,
        open.as_secs_f64() * 1e3,
        per_million,
        store_open.as_secs_f64() * 1e3,
        (open - store_open).as_secs_f64() * 1e3,
        cpu * 1e3
    );
    let _ = broker.shutdown();
    Ok(
        json!({"engine": a.engine, "index_files": a.engine == "log" && !a.no_index,
        "all_in_memory": a.all_in_memory,
        "messages": queued, "size": a.size, "store_bytes": size,
        "fill_seconds": fill.map(|f| f.as_secs_f64()), "open_seconds": open.as_secs_f64(),
        "store_open_seconds": store_open.as_secs_f64(), "open_cpu_seconds": cpu,
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
    let broker = Broker::open(
        open_store(&a.engine, path, config, a.all_in_memory)?,
        config.clone(),
        now_ms(),
    )?;
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
