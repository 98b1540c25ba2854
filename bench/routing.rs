//! `trunkline-bench routing`: how long topic matching takes with many subscriptions.
//!
//! Builds the broker's topic trie with `--subscriptions` bindings of mixed shapes (exact
//! topics, `*` and `#` patterns, like a fleet of devices and the services watching them),
//! then matches `--topics` topics against it and reports the time per match. In-process,
//! no server: this isolates routing from I/O.

use std::time::Instant;

use serde_json::{json, Value};
use trunkline_broker::topic::TopicTrie;

#[derive(clap::Args, Clone, Debug)]
pub struct RoutingArgs {
    /// Bindings (pattern, queue) in the trie.
    #[arg(long, default_value_t = 100_000)]
    pub subscriptions: usize,
    /// Topics to match.
    #[arg(long, default_value_t = 1_000_000)]
    pub topics: usize,
}

/// A cheap deterministic generator, so runs are comparable.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

fn pattern(i: usize) -> String {
    match i % 5 {
        0 => format!("fleet.v{i}.#"),
        1 => format!("*.v{i}.status"),
        2 => format!("soar.*.noc{i}.#"),
        3 => format!("fleet.v{i}.send.mission"),
        _ => format!("region{}.*.v{i}.*", i % 100),
    }
}

fn topic(rng: &mut Lcg, n: usize) -> String {
    let v = rng.next(n);
    match rng.next(4) {
        0 => format!("fleet.v{v}.send.mission"),
        1 => format!("site.v{v}.status"),
        2 => format!("soar.x.noc{v}.a.b"),
        _ => format!("region{}.r.v{v}.temp", v % 100),
    }
}

pub fn run(a: &RoutingArgs) -> Value {
    let mut trie = TopicTrie::new();
    let start = Instant::now();
    for i in 0..a.subscriptions {
        trie.insert(&pattern(i), i as u32);
    }
    let build = start.elapsed();
    let mut rng = Lcg(42);
    let topics: Vec<String> = (0..a.topics.min(100_000))
        .map(|_| topic(&mut rng, a.subscriptions))
        .collect();
    let mut out = Vec::new();
    let mut matched = 0usize;
    let start = Instant::now();
    for i in 0..a.topics {
        out.clear();
        trie.matches(&topics[i % topics.len()], &mut out);
        matched += out.len();
    }
    let elapsed = start.elapsed();
    let ns = elapsed.as_nanos() as f64 / a.topics.max(1) as f64;
    let r = json!({
        "subscriptions": a.subscriptions,
        "topics": a.topics,
        "build_ms": build.as_secs_f64() * 1e3,
        "ns_per_match": ns,
        "matches_per_topic": matched as f64 / a.topics.max(1) as f64,
        "matches_per_second": 1e9 / ns.max(1e-9),
    });
    println!(
        "routing: {} subscriptions built in {:.0} ms; {:.0} ns per topic ({:.2} matches each, {:.1} M topics/s)",
        a.subscriptions,
        build.as_secs_f64() * 1e3,
        ns,
        matched as f64 / a.topics.max(1) as f64,
        1e3 / ns.max(1e-9)
    );
    r
}
