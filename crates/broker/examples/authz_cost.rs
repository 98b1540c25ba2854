//! What one authorization check costs, next to what a durable message costs (about
//! 20 µs of server CPU on the machines the guard was recorded on):
//!
//!     cargo run --release -p trunkline-broker --example authz_cost
//!
//! A STOMP SEND asks `check_publish` once; a receive and a settle ask `check_read` once per
//! call; a live delivery asks the subscriber's current rights once per message.

use std::sync::Arc;
use std::time::Instant;

use trunkline_broker::{Broker, BrokerConfig, NewClient, Publish, Target};
use trunkline_store::MemoryStore;

const N: u32 = 2_000_000;

fn per_call(what: &str, mut f: impl FnMut(u32) -> bool) {
    let start = Instant::now();
    let mut ok = 0u32;
    for i in 0..N {
        ok += u32::from(f(i));
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(N);
    println!("{what:<58} {ns:>7.1} ns/check ({ok} allowed)");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let b = Broker::open(Arc::new(MemoryStore::default()), BrokerConfig::default(), 0)?;
    let mut open = NewClient::new("open", "o", vec!["fleet.*.cmd.#".into()]);
    open.publish = None;
    b.create_client(open, 0).await?;
    let mut narrow = NewClient::new("narrow", "n", vec!["fleet.7.cmd.#".into()]);
    narrow.publish = Some(vec!["fleet.7.status.#".into(), "fleet.7.log.*".into()]);
    b.create_client(narrow, 0).await?;
    let (open, narrow) = (
        b.principal("open").ok_or("open")?,
        b.principal("narrow").ok_or("narrow")?,
    );
    let p = Publish::new("fleet.7.status.battery", b"1".to_vec(), "x");
    per_call("check_publish, every topic allowed (the default)", |_| {
        open.check_publish(&p).is_ok()
    });
    per_call("check_publish, two publish patterns", |_| {
        narrow.check_publish(&p).is_ok()
    });
    per_call("check_read of its own inbox", |_| {
        narrow.check_read(Target::Queue("narrow-inbox")).is_ok()
    });
    let words: Vec<&str> = "fleet.7.cmd.reboot".split('.').collect();
    per_call("live delivery check (topic against one pattern)", |_| {
        narrow.with_access(|a| a.may_read_words(&words)) == Some(true)
    });
    Ok(())
}
