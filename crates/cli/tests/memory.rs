//! Memory under slow bodies (issue 11): a thousand connections that declare 1 MiB bodies
//! and trickle them a byte at a time must not make the node hold kilobytes per byte
//! received, and what they held must be freed when they close.
//!
//! Runs the real binary and reads its resident size from `/proc/<pid>/status` (Linux).
//!
//! Freed is not returned: glibc keeps freed heap pages that are not at the top of an
//! arena until `malloc_trim`, so RSS stays near its peak after the connections close
//! (measured: 20 MiB before, 35 during the first round and after it, 40 after the second;
//! `malloc_trim(0)` called from a debugger then brought it to 21). What is kept must be
//! reused, so the test runs three rounds and checks that the last adds little. The old code
//! held 4.5 KiB per byte received: +174 MiB during the first round, 143 MiB after it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use trunkline_testkit::ProcessServer;

/// Connections, spread over this many loopback source addresses so that each stays
/// under the default per-address connection cap (256).
const CONNECTIONS: usize = 1000;
const SOURCES: usize = 4;
/// Bytes each connection sends, one per tick.
const TICKS: usize = 40;
const TICK: Duration = Duration::from_millis(100);

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source.parse().expect("ip"), 0))
        .expect("bind");
    tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .expect("connect within 5 s")
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_bodies_hold_little_memory_and_give_it_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_trunkline"));
    let node = ProcessServer::start(&bin, &dir).expect("start node");
    let pid = node.pid();
    let addr: SocketAddr = node
        .http
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let admin = trunkline_client::Client::from_credentials(&node.admin_credentials())
        .expect("admin client");
    let token = admin.fetch_token().await.expect("token").token;
    // Warm the node up with a few ordinary requests first.
    for _ in 0..20 {
        admin.send("warm.up", &1).await.expect("send");
    }
    let before = rss_kib(pid);
    // An authenticated client may send bodies up to the node's limit (1 MiB): declare
    // that, and trickle it. Twice: what the first round leaves behind must be reused by
    // the second, not added to.
    let head = format!(
        "POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
    );
    let mut rounds = Vec::new();
    for _ in 0..3 {
        rounds.push(trickle_round(pid, addr, &head, before).await);
    }
    // The node still serves.
    assert_eq!(admin.health().await.expect("healthz").status, "ok");
    for (round, r) in rounds.iter().enumerate() {
        println!(
            "round {}: RSS before {} MiB, during {} MiB (+{} MiB for {CONNECTIONS} connections, \
             {} bytes trickled over {:?}, {} KiB per connection), after closing {} MiB",
            round + 1,
            before / 1024,
            r.during / 1024,
            (r.during - before) / 1024,
            r.sent,
            r.took,
            (r.during - before) / CONNECTIONS as u64,
            r.after / 1024,
        );
    }
    // The node's own state for 1000 open HTTP connections (hyper's 8 KiB read and write
    // buffers, the connection task, the request being read) comes to 15-20 MiB; holding
    // kilobytes per byte received would be far more (the old code: +174 MiB here).
    // After closing, the heap glibc keeps for reuse (up to ~25 MiB, see the module docs).
    for r in &rounds {
        assert!(
            r.during < before + 100 * 1024,
            "RSS grew by {} MiB for {} bytes received",
            (r.during - before) / 1024,
            r.sent
        );
        assert!(
            r.after < before + 40 * 1024,
            "RSS stayed at {} MiB after the connections closed (was {} MiB before)",
            r.after / 1024,
            before / 1024
        );
    }
    // What the allocator kept is reused, not added to. Fragmentation adds some at first
    // and converges (measured peaks over six rounds: 35, 40, 42, 43, 44, 44 MiB); a leak of
    // what each connection holds would add ~15 MiB every round.
    let (second, third) = (&rounds[1], &rounds[2]);
    assert!(
        third.during < second.during + 7 * 1024,
        "the third round grew RSS from {} to {} MiB",
        second.during / 1024,
        third.during / 1024
    );
}

struct Round {
    during: u64,
    after: u64,
    sent: usize,
    took: Duration,
}

/// Opens the connections, trickles a byte on each every tick, closes them, and waits for
/// the node's RSS to settle.
async fn trickle_round(pid: u32, addr: SocketAddr, head: &str, before: u64) -> Round {
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let source = format!("127.0.0.{}", 2 + i % SOURCES);
        let mut s = connect_from(&source, addr).await;
        s.set_nodelay(true).expect("nodelay");
        s.write_all(head.as_bytes()).await.expect("write head");
        conns.push(s);
    }
    let started = Instant::now();
    let mut during = before;
    let mut sent = 0usize;
    for _ in 0..TICKS {
        let tick = tokio::time::Instant::now() + TICK;
        for s in &mut conns {
            // Whitespace: valid JSON so far, one byte.
            if s.write_all(b" ").await.is_ok() {
                sent += 1;
            }
        }
        during = during.max(rss_kib(pid));
        tokio::time::sleep_until(tick).await;
    }
    let took = started.elapsed();
    during = during.max(rss_kib(pid));
    drop(conns);
    // Give the node time to see the connections close and free what they held: until
    // its RSS holds still for half a second, at most 5 s.
    let mut after = rss_kib(pid);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid);
        if now == after {
            break;
        }
        after = now;
    }
    Round {
        during,
        after,
        sent,
        took,
    }
}
