//! Malformed input, per interface, against a real node: thousands of inputs made from a
//! seed by mutating valid requests (bit flips, truncations, splices of valid fragments,
//! wrong types, extreme numbers, duplicated keys, deep nesting, invalid UTF-8, NUL bytes,
//! oversized fields, bad headers, methods, paths and query strings; for STOMP bad commands,
//! headers, escapes and lengths, written in pieces split at random points; for WebSocket bad
//! envelopes and params, unknown services and commands, binary and broken frames).
//!
//! Every input must get a clear answer: HTTP a JSON error `{"error": {"code", "message"}}`
//! with a registry code and that code's status (or a 2xx for inputs that happen to be
//! valid), never a 5xx; STOMP an `ERROR` frame with a registry `code` and then the close
//! (or the normal answers, for valid input); WebSocket an error answer with a registry code
//! or a close with a documented close code. No input may hang, and nothing in the process
//! may panic (a panic hook counts them; the node's tasks run in this process). After each
//! run the node still answers `/healthz` and a valid request.
//!
//! Each test prints its totals. Rerun with another seed or count:
//! `TRUNKLINE_MALFORMED_SEED=7 TRUNKLINE_MALFORMED_INPUTS=10000 cargo nextest run -p trunkline-cli --test malformed --no-capture`.
//! A failure names the input's index; the same seed and index make the same input, and
//! `TRUNKLINE_MALFORMED_ONLY=<index>` runs it alone and shows all of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame as WsFrame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;
use trunkline_api::ErrorCode;
use trunkline_proto::{Command, Decoder, Item, Limits};
use trunkline_testkit::TestServer;

/// Inputs per interface unless `TRUNKLINE_MALFORMED_INPUTS` says otherwise.
const DEFAULT_INPUTS: usize = 3000;
/// The seed unless `TRUNKLINE_MALFORMED_SEED` says otherwise.
const DEFAULT_SEED: u64 = 11;
/// A run that has not finished its inputs by then stops and fails.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// Longest wait for the answer to one input.
const ANSWER_LIMIT: Duration = Duration::from_secs(15);
/// Failing inputs shown in a failure message.
const SHOWN: usize = 40;

// ---------------------------------------------------------------------------------------
// Shared: the seeded generator, mutations, panic counting and the tally.

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    env_or("TRUNKLINE_MALFORMED_SEED", DEFAULT_SEED)
}

/// `TRUNKLINE_MALFORMED_ONLY=<index>` runs that input alone and shows all of it.
fn only() -> Option<usize> {
    std::env::var("TRUNKLINE_MALFORMED_ONLY")
        .ok()
        .and_then(|v| v.parse().ok())
}

fn inputs() -> usize {
    match only() {
        Some(_) => 1,
        None => env_or("TRUNKLINE_MALFORMED_INPUTS", DEFAULT_INPUTS),
    }
}

/// xorshift64*: small, fast and the same everywhere.
struct Rng(u64);

impl Rng {
    /// The generator of input `index` of interface `tag`: the same whatever the order in
    /// which concurrent workers take inputs.
    fn for_input(seed: u64, tag: u64, index: usize) -> Rng {
        let mut r = Rng((seed ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_add((index as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9))
            | 1);
        for _ in 0..4 {
            r.next();
        }
        r
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic in this process (the node's tasks included: tokio and hyper catch
/// them, so a panicking handler would otherwise pass unnoticed), then reports as usual.
/// nextest runs each test in its own process; under `cargo test` the three tests share
/// one, so a failing sibling counts too.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// JSON that is wrong somewhere: wrong types, extremes, odd strings.
const WEIRD: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-0",
    "-1",
    "1.5",
    "1e999",
    "-1e999",
    "1e-400",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "\"\"",
    "\"x\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udfff\\ud800\"",
    "\"a.*\"",
    "\"#\"",
    "\"a..b\"",
    "\"\u{e9}\u{1F600}\"",
    "\"admin-inbox/1/1\"",
    "\"/queue/admin-inbox\"",
    "[]",
    "{}",
    "[null]",
    "[1,\"a\",{}]",
    "{\"a\":{}}",
    "{\"destination\":5}",
];

/// Keys that valid requests use, and a few that none does.
const KEYS: &[&str] = &[
    "topic",
    "body",
    "header",
    "payload",
    "destination",
    "message_id",
    "ttl",
    "receipts",
    "requeue",
    "client_id",
    "client_name",
    "subscription",
    "publish",
    "roles",
    "grants",
    "write_grants",
    "inbox",
    "max_length",
    "overflow",
    "max_deliveries",
    "service",
    "message",
    "command",
    "params",
    "callId",
    "channel",
    "token",
    "queue",
    "window",
    "lease",
    "functions",
    "name",
    "server",
    "function",
    "session_id",
    "timeout_ms",
    "colour",
    "",
];

/// A weird JSON value as text: mostly from [`WEIRD`], sometimes deep or long.
fn weird(rng: &mut Rng) -> String {
    match rng.below(100) {
        0..=89 => rng.pick(WEIRD).to_string(),
        90..=94 => {
            let n = *rng.pick(&[127, 128, 129, 130, 500, 5000]);
            format!("{}{}", "[".repeat(n), "]".repeat(n))
        }
        95..=97 => format!("\"{}\"", "a".repeat(*rng.pick(&[255, 256, 300, 5000]))),
        _ => {
            let n = *rng.pick(&[100, 1000]);
            let fields: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{{}}}", fields.join(","))
        }
    }
}

/// JSON pointers to every value in `v` (the root too).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                )
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out)
            }
        }
        _ => {}
    }
    out.push(at);
}

/// A structural mutation of a JSON document: values replaced by weird ones, keys removed,
/// added, renamed or duplicated, the whole wrapped or trailed by junk.
fn mutate_json(rng: &mut Rng, doc: &Value) -> Vec<u8> {
    let mut v = doc.clone();
    // Weird values go in as placeholder strings, replaced in the text afterwards (serde's
    // `Value` cannot hold `1e999` or a lone surrogate).
    let mut raw: Vec<String> = Vec::new();
    let placeholder = |i: usize| Value::String(format!("\u{1}{i}"));
    for _ in 0..1 + rng.below(2) {
        let mut ptrs = Vec::new();
        pointers(&v, String::new(), &mut ptrs);
        let objects: Vec<String> = ptrs
            .iter()
            .filter(|p| v.pointer(p).is_some_and(Value::is_object))
            .cloned()
            .collect();
        match rng.below(10) {
            0..=5 => {
                // The root only now and then: most bugs hide in the fields.
                let p = if ptrs.len() > 1 && !rng.chance(5) {
                    ptrs[rng.below(ptrs.len() - 1)].clone()
                } else {
                    String::new()
                };
                if let Some(slot) = v.pointer_mut(&p) {
                    *slot = placeholder(raw.len());
                    raw.push(weird(rng));
                }
            }
            6 | 7 if !objects.is_empty() => {
                let p = rng.pick(&objects).clone();
                if let Some(Value::Object(m)) = v.pointer_mut(&p) {
                    if !m.is_empty() && rng.chance(50) {
                        let k = m
                            .keys()
                            .nth(rng.below(m.len()))
                            .cloned()
                            .unwrap_or_default();
                        m.remove(&k);
                    } else {
                        m.insert(rng.pick(KEYS).to_string(), placeholder(raw.len()));
                        raw.push(weird(rng));
                    }
                }
            }
            8 if !objects.is_empty() => {
                let p = rng.pick(&objects).clone();
                if let Some(Value::Object(m)) = v.pointer_mut(&p) {
                    if let Some(k) = m.keys().nth(rng.below(m.len().max(1))).cloned() {
                        if let Some(x) = m.remove(&k) {
                            m.insert(rng.pick(KEYS).to_string(), x);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let mut text = v.to_string();
    for (i, w) in raw.iter().enumerate() {
        text = text.replacen(&format!("\"\\u0001{i}\""), w, 1);
    }
    match rng.below(20) {
        // A duplicated key at the top: `{"topic":…,"topic":…}`.
        0..=2 => {
            if let Some(k) = doc.as_object().and_then(|m| m.keys().next()) {
                if text.starts_with('{') {
                    text.insert_str(1, &format!("\"{k}\":{},", weird(rng)));
                }
            }
        }
        3 => text = format!("[{text}]"),
        4 => {
            let n = *rng.pick(&[128, 129, 1000]);
            text = format!("{}{text}{}", "[".repeat(n), "]".repeat(n));
        }
        5 => text.push_str(rng.pick::<&str>(&["}", ",", " x", "\u{0}", "{}", "\n\n"])),
        6 => text.insert(0, '\u{feff}'),
        _ => {}
    }
    text.into_bytes()
}

/// Bytes that parsers treat specially.
const SPECIAL: &[u8] = &[
    0x00, 0xff, 0xfe, 0xc3, 0x80, 0xed, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'\n',
    b'\r', b' ', b'0', b'-', b'e',
];

/// Byte-level mutations: bit flips, truncations, splices of valid fragments, deletions,
/// duplications, special bytes, long runs.
fn mutate_bytes(rng: &mut Rng, base: &[u8], fragments: &[&[u8]]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = v.len();
        let at = if len == 0 { 0 } else { rng.below(len + 1) };
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.truncate(at),
            2 => {
                let f = rng.pick(fragments);
                v.splice(at..at, f.iter().copied());
            }
            3 if len > 0 => {
                let end = (at + 1 + rng.below(16)).min(len);
                let f = rng.pick(fragments);
                v.splice(at.min(end)..end, f.iter().copied());
            }
            4 if len > 0 => {
                let end = (at + 1 + rng.below(16)).min(len);
                v.drain(at.min(end)..end);
            }
            5 if len > 0 => {
                let from = rng.below(len);
                let end = (from + 1 + rng.below(32)).min(len);
                let piece = v[from..end].to_vec();
                v.splice(at..at, piece);
            }
            6 => v.insert(at, *rng.pick(SPECIAL)),
            7 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            8 => {
                let n = *rng.pick(&[64, 300, 5000, 70_000]);
                let b = *rng.pick(SPECIAL);
                v.splice(at..at, std::iter::repeat_n(b, n));
            }
            _ => {}
        }
    }
    v
}

/// Splits `bytes` at random points (mostly small pieces, sometimes single bytes).
fn split(rng: &mut Rng, bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below(8),
            2 => 1 + rng.below(64),
            _ => 1 + rng.below(4096),
        }
        .min(rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

/// A short, printable view of an input for failure messages.
fn show(bytes: &[u8]) -> String {
    let limit = if only().is_some() { 1 << 20 } else { 240 };
    let cut = &bytes[..bytes.len().min(limit)];
    let more = if bytes.len() > cut.len() {
        format!(" … ({} bytes)", bytes.len())
    } else {
        String::new()
    };
    format!("{}{more}", cut.escape_ascii())
}

/// Counts of outcomes by class, and the inputs that broke a rule.
#[derive(Default)]
struct Tally {
    inputs: usize,
    classes: BTreeMap<String, usize>,
    /// Answers of the 5xx kind (HTTP status, or a server-fault code over STOMP/WebSocket).
    server_errors: usize,
    hangs: usize,
    failures: Vec<String>,
}

impl Tally {
    fn count(&mut self, class: impl Into<String>) {
        *self.classes.entry(class.into()).or_default() += 1;
    }

    fn fail(&mut self, index: usize, input: &[u8], why: impl std::fmt::Display) {
        self.failures
            .push(format!("input {index}: {why}\n    {}", show(input)));
    }

    fn report(&self, interface: &str, started: Instant) -> String {
        let classes: Vec<String> = self
            .classes
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        format!(
            "malformed {interface}: {} inputs (seed {}) in {:.1} s; 5xx {}, hangs {}, panics {}, rule breaks {}\n  {}",
            self.inputs,
            seed(),
            started.elapsed().as_secs_f64(),
            self.server_errors,
            self.hangs,
            PANICS.load(Ordering::SeqCst),
            self.failures.len(),
            classes.join(", ")
        )
    }

    /// Fails the test on any rule break, 5xx, hang, panic, or missing input.
    fn check(&self, interface: &str, started: Instant, panics_before: usize) {
        let report = self.report(interface, started);
        println!("{report}");
        let panics = PANICS.load(Ordering::SeqCst) - panics_before;
        let shown: Vec<&str> = self
            .failures
            .iter()
            .take(SHOWN)
            .map(String::as_str)
            .collect();
        assert!(
            self.failures.is_empty() && self.server_errors == 0 && self.hangs == 0 && panics == 0,
            "{report}\n{}",
            shown.join("\n")
        );
        assert_eq!(
            self.inputs,
            inputs(),
            "{interface}: not every input ran within {RUN_LIMIT:?}"
        );
    }
}

/// A registry code, and whether it is of the 5xx kind (a fault of the node, not of the input).
fn registered(code: &str) -> Option<(ErrorCode, bool)> {
    ErrorCode::from_code(code).map(|c| (c, c.status() >= 500))
}

/// Runs `work(index)` for inputs 0..n on `workers` tasks, until done or [`RUN_LIMIT`].
async fn run_pool<F, Fut>(workers: usize, work: F)
where
    F: Fn(usize, Arc<AtomicUsize>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| tokio::spawn(work(w, next.clone())))
        .collect();
    for t in tasks {
        t.await.expect("a worker panicked");
    }
}

/// The next input index for a worker, or `None` when done or out of time.
fn take(next: &AtomicUsize, started: Instant) -> Option<usize> {
    if started.elapsed() > RUN_LIMIT {
        return None;
    }
    let i = next.fetch_add(1, Ordering::Relaxed);
    match only() {
        Some(index) => (i == 0).then_some(index),
        None => (i < inputs()).then_some(i),
    }
}

/// A node for these tests: short timeouts so that incomplete input is answered quickly,
/// no login throttle and no WebSocket rate limit (they would answer most inputs with
/// `throttled` or `rate_limited` and hide the parsers), a 64 KiB WebSocket message limit.
async fn node() -> TestServer {
    TestServer::start_with(|c| {
        c.http_limits.header_timeout_secs = 2;
        c.http_limits.request_timeout_secs = 3;
        c.http_limits.max_wait_secs = 1;
        c.auth.max_failed_logins = 1_000_000;
        c.auth.max_failed_logins_per_address = 1_000_000;
        c.auth.max_failed_logins_per_client = 1_000_000;
        c.http_limits.max_connections_per_address = 100_000;
        c.stomp.max_connections_per_address = 100_000;
        c.stomp.connect_timeout_secs = 2;
        c.stomp.frame_timeout_secs = 1;
        c.ws.rate_per_sec = 1_000_000;
        c.ws.max_message_bytes = 64 * 1024;
        c.ws.auth_timeout_secs = 2;
    })
    .await
}

/// The node still serves: `/healthz` and a valid publish.
async fn assert_alive(server: &TestServer, token: &str) {
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/healthz", server.http))
        .send()
        .await
        .expect("healthz after the run");
    assert_eq!(r.status(), 200, "healthz after the run");
    let r = http
        .post(format!("{}/send", server.http))
        .bearer_auth(token)
        .json(&json!({"topic": "after.run", "body": {"ok": true}}))
        .send()
        .await
        .expect("a valid send after the run");
    assert_eq!(r.status(), 202, "a valid send after the run");
}

// ---------------------------------------------------------------------------------------
// HTTP

/// A valid request to start from: method, path with query, JSON body, which listener.
struct HttpTemplate {
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    backend: bool,
}

const fn template(
    backend: bool,
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
) -> HttpTemplate {
    HttpTemplate {
        method,
        path,
        body,
        backend,
    }
}

/// A request to the public listener, with the admin's token.
const fn public(m: &'static str, p: &'static str, b: Option<&'static str>) -> HttpTemplate {
    template(false, m, p, b)
}

/// A request to the backend listener, with the backend key.
const fn backend(m: &'static str, p: &'static str, b: Option<&'static str>) -> HttpTemplate {
    template(true, m, p, b)
}

// Client patterns start with `cl.` and published topics with `fuzz.`, and no template
// names the admin client, so that valid mutants cannot fill an inbox that refuses
// publishes (a legitimate 507) or take the runner's rights away.
const HTTP_TEMPLATES: &[HttpTemplate] = &[
    public(
        "POST",
        "/send",
        Some(r#"{"topic":"fuzz.a.b","body":{"n":1,"s":"x","l":[1,2]}}"#),
    ),
    public(
        "POST",
        "/send",
        Some(r#"{"topic":"fuzz.c","body":[1,2,3],"message_id":"m-1","ttl":30}"#),
    ),
    public(
        "POST",
        "/send",
        Some(r#"{"header":{"destination":"fuzz.noc","priority":1},"payload":{"k":"v"}}"#),
    ),
    public("POST", "/notify", Some(r#"{"body":{"alert":true}}"#)),
    public(
        "POST",
        "/notify",
        Some(r#"{"topic":"fuzz.n","body":"text","ttl":0.5}"#),
    ),
    public("GET", "/receive?max_messages=5", None),
    public("GET", "/receive?ack=manual&lease=5&max_messages=2", None),
    public("GET", "/receive?queue=dead", None),
    public(
        "POST",
        "/ack",
        Some(r#"{"receipts":["admin-inbox/1/1","x"]}"#),
    ),
    public(
        "POST",
        "/nack",
        Some(r#"{"receipts":["admin-inbox/2/1"],"requeue":false}"#),
    ),
    public(
        "POST",
        "/client",
        Some(
            r#"{"client_id":"fz-new","client_name":"Fuzz","subscription":"cl.one.two","inbox":{"max_length":100,"overflow":"drop-oldest","max_deliveries":3}}"#,
        ),
    ),
    public(
        "POST",
        "/client",
        Some(
            r#"{"client_id":"fz-two","client_name":"Fuzz","subscription":["cl.a.*","cl.b.#"],"publish":"fuzz.#","roles":[],"grants":[],"write_grants":[]}"#,
        ),
    ),
    public(
        "PATCH",
        "/client/fz-new",
        Some(r#"{"client_name":"renamed","subscription":"cl.three","roles":["backend"]}"#),
    ),
    public(
        "PATCH",
        "/client/ghost",
        Some(r#"{"inbox":{"max_length":5,"overflow":"reject-publish"}}"#),
    ),
    public("GET", "/client", None),
    public("GET", "/client/fz-new", None),
    public("DELETE", "/client/fz-two", None),
    public("POST", "/client/fz-new/secret", None),
    public("GET", "/token?client_id=fz-new&secret=wrong", None),
    public(
        "POST",
        "/token",
        Some(r#"{"grant_type":"client_credentials","client_id":"fz-new","client_secret":"x"}"#),
    ),
    public("GET", "/healthz", None),
    public("GET", "/ws", None),
    public("GET", "/ws?token=abc", None),
    backend(
        "POST",
        "/client",
        Some(r#"{"client_id":"fz-b","client_name":"B","subscription":"cl.b"}"#),
    ),
    backend(
        "POST",
        "/channel-token",
        Some(r#"{"sid":"ws-1","cname":"pvt:room","pub":true,"conn_info":{"n":1},"ttl":60}"#),
    ),
    backend(
        "POST",
        "/channels/fuzz-room/publish",
        Some(r#"{"message":{"hello":1}}"#),
    ),
    backend("GET", "/channels/prs:room/members", None),
    backend(
        "POST",
        "/backend",
        Some(
            r#"{"service":"pubsub","message":{"command":"publish","params":{"channel":"fuzz-room","message":"m"},"callId":1}}"#,
        ),
    ),
    backend(
        "POST",
        "/sessions/ws-1/send",
        Some(r#"{"message":{"x":1}}"#),
    ),
    backend("DELETE", "/sessions/ws-1", None),
    backend(
        "POST",
        "/rpc/fuzz-calc/add",
        Some(r#"{"payload":{"a":1},"timeout_ms":100}"#),
    ),
    backend(
        "POST",
        "/channels/fuzz-room/functions/f",
        Some(r#"{"payload":null,"timeout_ms":100}"#),
    ),
];

const QUERY_BITS: &[&str] = &[
    "max_messages=abc",
    "max_messages=-1",
    "max_messages=0",
    "max_messages=18446744073709551616",
    "max_messages=1.5",
    "max_messages=",
    "max_messages",
    "max_messages=5&max_messages=6",
    "ack=manual",
    "ack=maybe",
    "ack=manual&ack=auto",
    "lease=0",
    "lease=99999999",
    "lease=5",
    "wait=1",
    "wait=2",
    "wait=-1",
    "queue=dead",
    "queue=inbox",
    "queue=someone-else",
    "queue=%00",
    "colour=red",
    "token=abc",
    "secret=x",
    "access_token=x",
    "a=b=c",
    "=",
    "&&",
    "%",
    "%zz",
    "%ff%fe",
    "client_id=admin",
    "client_id=",
    "x=%F0%9F%98%80",
    "token=%ff",
    "token=a&token=b",
    ";",
    "+",
];

const PATHS: &[&str] = &[
    "/send/",
    "//send",
    "/SEND",
    "/send%00",
    "/client/%ff",
    "/client/a%2Fb",
    "/client/fz-new/secret/x",
    "/client//secret",
    "/client/..",
    "/client/%2e%2e",
    "/client/Bad%20Id",
    "/client/ghost",
    "/receive/",
    "/",
    "/metrics",
    "/backend",
    "/channel-token",
    "/openapi.json/x",
    "/ack",
    "/nack",
    "/token",
    "/notify",
    "/%7e",
    "/sessions/%00",
    "/channels/%ff/publish",
    "/rpc/a/",
    "/rpc//f",
];

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "get", "FOO", "P0ST",
];

const CONTENT_TYPES: &[&[u8]] = &[
    b"text/plain",
    b"application/json; charset=utf-8",
    b"APPLICATION/JSON",
    b"application/vnd.api+json",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=x",
    b"",
    b"application/jsonx",
    b"json",
    b"\xff\xfe",
];

/// One HTTP input: the bytes to write and how to read the answer.
struct HttpInput {
    bytes: Vec<u8>,
    backend: bool,
    /// A HEAD request: the answer has no body.
    head: bool,
    /// The request line or headers were mutated at the byte level, or are past the HTTP/1
    /// parser's limits: the parser may refuse it before the node sees a request (with a
    /// bare 400 or 431, or a close), and the connection is not reused.
    raw: bool,
}

fn http_input(rng: &mut Rng, token: &str, backend_key: &str) -> HttpInput {
    let t = rng.pick(HTTP_TEMPLATES);
    let mut method = t.method.to_owned();
    let (path, query) = t.path.split_once('?').unwrap_or((t.path, ""));
    let (mut path, mut query) = (path.to_owned(), query.to_owned());
    let mut body: Vec<u8> = t.body.map(|b| b.as_bytes().to_vec()).unwrap_or_default();
    let mut content_type: Option<Vec<u8>> = t.body.map(|_| b"application/json".to_vec());
    let mut auth: Option<Vec<u8>> = Some(if t.backend {
        format!("X-Backend-Key: {backend_key}").into_bytes()
    } else {
        format!("Authorization: Bearer {token}").into_bytes()
    });
    let mut extra: Vec<Vec<u8>> = Vec::new();
    let mut raw = false;
    let fragments: Vec<&[u8]> = HTTP_TEMPLATES
        .iter()
        .filter_map(|t| t.body)
        .map(str::as_bytes)
        .chain(WEIRD.iter().map(|w| w.as_bytes()))
        .collect();
    // One in twenty stays valid, as a control.
    let kinds = if rng.chance(5) { 0 } else { 1 + rng.below(2) };
    for _ in 0..kinds {
        match rng.below(100) {
            0..=44 => match t.body.and_then(|b| serde_json::from_str::<Value>(b).ok()) {
                Some(doc) => body = mutate_json(rng, &doc),
                None => body = rng.pick(&fragments).to_vec(),
            },
            45..=59 => body = mutate_bytes(rng, &body, &fragments),
            60..=67 => {
                let bit = rng.pick(QUERY_BITS);
                query = match rng.below(3) {
                    0 => bit.to_string(),
                    1 if !query.is_empty() => format!("{query}&{bit}"),
                    _ => format!("{bit}&{query}"),
                };
            }
            68..=73 => {
                path = if rng.chance(70) {
                    rng.pick(PATHS).to_string()
                } else {
                    format!("{path}/{}", "a".repeat(*rng.pick(&[1, 300, 9000])))
                }
            }
            74..=78 => method = rng.pick(METHODS).to_string(),
            79..=85 => {
                content_type = if rng.chance(20) {
                    None
                } else {
                    Some(rng.pick(CONTENT_TYPES).to_vec())
                }
            }
            86..=91 => {
                // A token with one bit flipped, kept printable: a control byte in a header
                // is the HTTP parser's to refuse, not the node's.
                let flipped = {
                    let mut b = token.as_bytes().to_vec();
                    let i = rng.below(b.len());
                    let c = b[i] ^ (1 << rng.below(7));
                    b[i] = if c.is_ascii_graphic() { c } else { b'~' };
                    b
                };
                auth = match rng.below(10) {
                    0 => None,
                    1 => Some(b"Authorization: Bearer".to_vec()),
                    2 => Some(b"Authorization: Bearer garbage".to_vec()),
                    3 => Some(format!("Authorization: bearer {token}").into_bytes()),
                    4 => Some(b"Authorization: Basic YWRtaW46eA==".to_vec()),
                    5 => Some([b"Authorization: Bearer ".as_slice(), &flipped].concat()),
                    6 => Some(format!("Authorization: Bearer {token} extra").into_bytes()),
                    7 => Some(format!("Authorization: Bearer {}", "a".repeat(5000)).into_bytes()),
                    8 => Some(b"X-Backend-Key: wrong".to_vec()),
                    _ => Some(format!("X-Backend-Key: {backend_key}").into_bytes()),
                };
            }
            92..=94 => extra.push(match rng.below(4) {
                0 => b"Content-Type: text/plain".to_vec(),
                1 => {
                    // Past the HTTP/1 parser's limits on header size and count.
                    raw = true;
                    format!("X-Long: {}", "v".repeat(*rng.pick(&[8000, 70_000]))).into_bytes()
                }
                2 => {
                    raw = true;
                    (0..150)
                        .map(|i| format!("X-H{i}: {i}"))
                        .collect::<Vec<_>>()
                        .join("\r\n")
                        .into_bytes()
                }
                _ => b"X-Bytes: \x80\xff\xfe".to_vec(),
            }),
            95..=96 => body = vec![b' '; 1024 * 1024 + 1 + rng.below(1024)],
            _ => raw = true,
        }
    }
    let target = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    for h in auth.iter().chain(&extra) {
        head.extend_from_slice(h);
        head.extend_from_slice(b"\r\n");
    }
    if let Some(ct) = &content_type {
        head.extend_from_slice(b"Content-Type: ");
        head.extend_from_slice(ct);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    if raw {
        let frags: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b" ",
            b":",
            b"HTTP/1.1",
            b"HTTP/9.9",
            b"Transfer-Encoding: chunked\r\n",
            b"Content-Length: 5\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: 99999999999999999999\r\n",
            b"CONNECT",
            b"\x00",
            b"\xff",
            b"/\x7f",
        ];
        head = mutate_bytes(rng, &head, frags);
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(&body);
    HttpInput {
        bytes: head,
        backend: t.backend,
        head: method == "HEAD",
        raw,
    }
}

/// What came back for one HTTP request.
enum HttpAnswer {
    Response {
        status: u16,
        body: Vec<u8>,
    },
    /// The connection closed (or was reset) before an answer.
    Closed,
    /// Nothing within [`ANSWER_LIMIT`].
    Hang,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads bytes until `buf` holds at least `n` (false if the peer closed first).
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    while buf.len() < n {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    true
}

/// Reads one HTTP/1.1 response (skipping 1xx): content-length, chunked or until close.
async fn read_response(s: &mut TcpStream, head_request: bool) -> Option<(u16, Vec<u8>, bool)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        buf.drain(..end);
        if (100..200).contains(&status) {
            continue;
        }
        let close = header("connection:").is_some_and(|v| v == "close");
        if head_request || status == 204 || status == 304 {
            return Some((status, Vec::new(), close));
        }
        if let Some(n) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
            let complete = fill(s, &mut buf, n).await;
            buf.truncate(n);
            return complete.then_some((status, buf, close));
        }
        if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&buf, b"\r\n") {
                        break i;
                    }
                    let want = buf.len() + 1;
                    if !fill(s, &mut buf, want).await {
                        return None;
                    }
                };
                let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
                buf.drain(..line_end + 2);
                if !fill(s, &mut buf, size + 2).await {
                    return None;
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
                if size == 0 {
                    return Some((status, body, close));
                }
            }
        }
        // Neither: the body runs until the close.
        while let Ok(k) = s.read(&mut chunk).await {
            if k == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..k]);
        }
        return Some((status, buf, true));
    }
}

/// Sends one request on `conn` (opening it if needed) and reads the answer.
async fn exchange(addr: &str, conn: &mut Option<TcpStream>, input: &HttpInput) -> HttpAnswer {
    let attempt = async {
        // A kept-alive connection the node has closed meanwhile gets one retry on a new one.
        for retry in [false, true] {
            let reused = conn.is_some();
            if conn.is_none() {
                match TcpStream::connect(addr).await {
                    Ok(s) => *conn = Some(s),
                    Err(_) => return HttpAnswer::Closed,
                }
            }
            let Some(s) = conn.as_mut() else {
                return HttpAnswer::Closed;
            };
            // A write may fail when the node answers (413) and closes before taking all of a
            // large body: the answer is still there to read.
            let _ = s.write_all(&input.bytes).await;
            match read_response(s, input.head).await {
                Some((status, body, close)) => {
                    if close || input.raw {
                        *conn = None;
                    }
                    return HttpAnswer::Response { status, body };
                }
                None => {
                    *conn = None;
                    // Only a first try on a reused connection is tried again.
                    if retry || !reused {
                        return HttpAnswer::Closed;
                    }
                }
            }
        }
        HttpAnswer::Closed
    };
    match tokio::time::timeout(ANSWER_LIMIT, attempt).await {
        Ok(a) => a,
        Err(_) => {
            *conn = None;
            HttpAnswer::Hang
        }
    }
}

/// Checks one HTTP answer against the rules and counts it.
fn judge_http(tally: &mut Tally, index: usize, input: &HttpInput, answer: HttpAnswer) {
    let (status, body) = match answer {
        HttpAnswer::Hang => {
            tally.hangs += 1;
            tally.fail(index, &input.bytes, "no answer in time");
            return tally.count("hang");
        }
        HttpAnswer::Closed if input.raw => return tally.count("raw: closed without answer"),
        HttpAnswer::Closed => {
            tally.fail(index, &input.bytes, "closed without an answer");
            return tally.count("closed without answer");
        }
        HttpAnswer::Response { status, body } => (status, body),
    };
    if status >= 500 {
        tally.server_errors += 1;
        tally.fail(index, &input.bytes, format!("{status}: {}", show(&body)));
        return tally.count(format!("{status}"));
    }
    if status < 400 {
        return tally.count(format!("{}xx", status / 100));
    }
    if input.head {
        // A HEAD answer has no body to check.
        return tally.count(format!("HEAD {status}"));
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str();
    let message = v["error"]["message"].as_str().unwrap_or("");
    match code.and_then(registered) {
        Some((code, _)) if code.status() == status && !message.is_empty() => {
            tally.count(code.as_str())
        }
        _ if input.raw && body.is_empty() => {
            // The HTTP/1 parser refused the bytes before any request reached the node.
            tally.count(format!("raw: {status} from the HTTP parser"))
        }
        _ => {
            tally.fail(
                index,
                &input.bytes,
                format!("{status} without a registry JSON error: {}", show(&body)),
            );
            tally.count(format!("{status} unclear"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_malformed_requests_get_clear_errors() {
    count_panics();
    let panics_before = PANICS.load(Ordering::SeqCst);
    let server = node().await;
    let token = server.admin_token().await;
    let public_addr = server.http.trim_start_matches("http://").to_owned();
    let backend_addr = server.backend.trim_start_matches("http://").to_owned();
    let key = server.backend_key.clone();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let seed = seed();
    run_pool(12, |_, next| {
        let (token, key, tally) = (token.clone(), key.clone(), tally.clone());
        let (public_addr, backend_addr) = (public_addr.clone(), backend_addr.clone());
        async move {
            let (mut public_conn, mut backend_conn) = (None, None);
            while let Some(i) = take(&next, started) {
                let input = http_input(&mut Rng::for_input(seed, 1, i), &token, &key);
                let answer = if input.backend {
                    exchange(&backend_addr, &mut backend_conn, &input).await
                } else {
                    exchange(&public_addr, &mut public_conn, &input).await
                };
                let mut t = tally.lock().expect("tally");
                t.inputs += 1;
                judge_http(&mut t, i, &input, answer);
            }
        }
    })
    .await;
    assert_alive(&server, &token).await;
    tally
        .lock()
        .expect("tally")
        .check("HTTP", started, panics_before);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// STOMP

fn stomp_frames(token: &str) -> Vec<Vec<u8>> {
    [
        "SEND\ndestination:/topic/fuzz.s\ncontent-type:application/json\nreceipt:r1\ncontent-length:7\n\n{\"a\":1}\0".to_owned(),
        "SEND\ndestination:/queue/admin-inbox\nreceipt:r2\n\nplain text\0".to_owned(),
        "SUBSCRIBE\nid:0\ndestination:/queue/admin-inbox\nack:client-individual\nprefetch-count:2\nreceipt:r3\n\n\0".to_owned(),
        "SUBSCRIBE\nid:1\ndestination:/topic/fuzz.#\nreceipt:r4\n\n\0".to_owned(),
        "UNSUBSCRIBE\nid:1\nreceipt:r5\n\n\0".to_owned(),
        "ACK\nid:admin-inbox/1/1\nreceipt:r6\n\n\0".to_owned(),
        "NACK\nid:x\n\n\0".to_owned(),
        "BEGIN\ntransaction:t1\n\n\0".to_owned(),
        "SEND\ndestination:/topic/fuzz.t\ntransaction:t1\n\n{}\0".to_owned(),
        "COMMIT\ntransaction:t1\nreceipt:r7\n\n\0".to_owned(),
        "ABORT\ntransaction:t1\n\n\0".to_owned(),
        "SEND\ndestination:/exchange/amq.topic/fuzz.e\nheader\\c:va\\nl\\\\ue\n\n\0".to_owned(),
        format!("STOMP\naccept-version:1.2\nhost:/\npasscode:{token}\n\n\0"),
        "\n\r\n".to_owned(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// Fragments spliced into STOMP frames.
const STOMP_FRAGMENTS: &[&[u8]] = &[
    b"\0",
    b"\n",
    b"\r\n",
    b"\n\n",
    b":",
    b"\\",
    b"\\x",
    b"\\c",
    b"content-length:",
    b"content-length:99999999\n",
    b"content-length:-1\n",
    b"content-length:abc\n",
    b"content-length:3\n",
    b"destination:/topic/a..b\n",
    b"destination:/queue/someone-inbox\n",
    b"destination:/foo\n",
    b"id:\n",
    b"ack:sometimes\n",
    b"receipt:x\n",
    b"transaction:nope\n",
    b"heart-beat:1,1\n",
    b"heart-beat:x,y\n",
    b"accept-version:1.0\n",
    b"prefetch-count:0\n",
    b"SEND",
    b"send",
    b"FOO",
    b"CONNECT",
    b"\xff\xfe",
    b"\xc3",
];

fn stomp_input(rng: &mut Rng, token: &str) -> Vec<u8> {
    let connect = format!(
        "CONNECT\naccept-version:1.2\nhost:/\nlogin:admin\npasscode:{token}\nheart-beat:0,0\n\n\0"
    )
    .into_bytes();
    let frames = stomp_frames(token);
    let mut fragments: Vec<&[u8]> = STOMP_FRAGMENTS.to_vec();
    fragments.extend(frames.iter().map(Vec::as_slice));
    let mut out = if rng.chance(85) {
        connect
    } else {
        mutate_bytes(rng, &connect, &fragments)
    };
    for _ in 0..1 + rng.below(4) {
        let f = rng.pick(&frames);
        let mutated = match rng.below(100) {
            0..=19 => f.clone(),
            20..=79 => mutate_bytes(rng, f, &fragments),
            80..=84 => {
                // Many or long headers, a body over the limit.
                let mut f = f.clone();
                let at = f.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
                let extra: Vec<u8> = match rng.below(3) {
                    0 => (0..200)
                        .flat_map(|i| format!("h{i}:v\n").into_bytes())
                        .collect(),
                    1 => format!("h:{}\n", "v".repeat(70_000)).into_bytes(),
                    _ => b"content-length:2000000\n".to_vec(),
                };
                f.splice(at..at, extra);
                f
            }
            85..=89 => b"SEND\ndestination:/topic/fuzz.big\n\n"
                .iter()
                .copied()
                .chain(std::iter::repeat_n(b'x', 1024 * 1024 + 10))
                .chain([0])
                .collect(),
            _ => {
                // A valid command with its headers shuffled into a wrong shape.
                let mut f = f.clone();
                for b in f.iter_mut().filter(|b| **b == b':') {
                    if rng.chance(30) {
                        *b = b'=';
                    }
                }
                f
            }
        };
        out.extend_from_slice(&mutated);
    }
    out
}

/// How one STOMP connection ended.
#[derive(Debug)]
enum StompEnd {
    /// An `ERROR` with these headers, then (`closed`) the close.
    Error {
        code: Option<String>,
        message: Option<String>,
        closed: bool,
    },
    /// The receipt of the final `DISCONNECT`, then the close.
    Receipt,
    /// Closed with neither.
    Silent,
    /// The server sent bytes that are not STOMP, or frames after its `ERROR`.
    Garbage(String),
    Hang,
}

/// What ends every input: a `DISCONNECT` whose receipt the node sends before it closes.
const TRAILER: &[u8] = b"\nDISCONNECT\nreceipt:end-of-input\n\n\0";
/// How often the trailer is sent again while the connection is open: a mutated frame may
/// have swallowed it (as a header of a valid frame), leaving a healthy connection.
const NUDGE: Duration = Duration::from_secs(2);

/// Writes `input` and the trailer in random pieces, and reads until the close.
async fn stomp_exchange(rng: &mut Rng, addr: &str, input: &[u8]) -> (StompEnd, usize) {
    let Ok(s) = TcpStream::connect(addr).await else {
        return (StompEnd::Silent, 0);
    };
    let pieces = split(rng, &[input, TRAILER].concat());
    let (mut rd, mut wr) = s.into_split();
    // Written by its own task, so that a node that stops reading (back-pressure) or has
    // closed does not stop us reading its answers. The write side stays open: a
    // half-close would end the session as a hang-up.
    let mut writer = Some(tokio::spawn(async move {
        for p in pieces {
            if wr.write_all(&p).await.is_err() {
                return None;
            }
            tokio::task::yield_now().await;
        }
        Some(wr)
    }));
    let mut decoder = Decoder::new(Limits {
        max_frame_bytes: usize::MAX,
        max_header_block_bytes: usize::MAX,
        max_headers: usize::MAX,
        max_body_bytes: usize::MAX,
    });
    let mut buf = BytesMut::new();
    let (mut frames, mut nudges) = (0usize, 0);
    // The ERROR seen, and whether the last frame was the trailer's receipt.
    let mut error: Option<(Option<String>, Option<String>)> = None;
    let mut receipt_last = false;
    let mut idle_writer = None;
    let deadline = tokio::time::Instant::now() + ANSWER_LIMIT;
    // Not reset by what arrives: a live subscription may be fed without pause.
    let mut next_nudge = tokio::time::Instant::now() + NUDGE;
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Item::Frame(f))) => {
                    frames += 1;
                    if error.is_some() {
                        return (StompEnd::Garbage(format!("{f:?} after ERROR")), frames);
                    }
                    receipt_last = f.command == Command::Receipt
                        && f.get("receipt-id") == Some("end-of-input");
                    if f.command == Command::Error {
                        error = Some((
                            f.get("code").map(str::to_owned),
                            f.get("message").map(str::to_owned),
                        ));
                    }
                }
                Ok(Some(Item::HeartBeat)) => {}
                Ok(None) => break,
                Err(e) => return (StompEnd::Garbage(e.to_string()), frames),
            }
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => if matches!(r, Ok(0) | Err(_)) {
                let end = match (error, receipt_last) {
                    (Some((code, message)), _) => StompEnd::Error { code, message, closed: true },
                    (None, true) => StompEnd::Receipt,
                    (None, false) => StompEnd::Silent,
                };
                return (end, frames);
            },
            _ = tokio::time::sleep_until(next_nudge.min(deadline)) => {
                if tokio::time::Instant::now() >= deadline {
                    return match error {
                        Some((code, message)) => (StompEnd::Error { code, message, closed: false }, frames),
                        None => (StompEnd::Hang, frames),
                    };
                }
                if let Some(w) = writer.take_if(|w| w.is_finished()) {
                    idle_writer = w.await.ok().flatten();
                }
                next_nudge += NUDGE;
                if let Some(wr) = idle_writer.as_mut().filter(|_| nudges < 5) {
                    nudges += 1;
                    let _ = wr.write_all(TRAILER).await;
                }
            }
        }
    }
}

fn judge_stomp(tally: &mut Tally, index: usize, input: &[u8], end: StompEnd, frames: usize) {
    match end {
        StompEnd::Error {
            code,
            message,
            closed,
        } => {
            let code = code.unwrap_or_default();
            match registered(&code) {
                None => tally.fail(
                    index,
                    input,
                    format!("ERROR with unregistered code `{code}`"),
                ),
                Some((_, true)) => {
                    tally.server_errors += 1;
                    tally.fail(index, input, format!("ERROR {code}: a server fault"));
                }
                Some(_) if message.as_deref().is_none_or(str::is_empty) => {
                    tally.fail(index, input, format!("ERROR {code} without a message"))
                }
                Some(_) if !closed => tally.fail(
                    index,
                    input,
                    format!("ERROR {code} not followed by the close"),
                ),
                Some(_) => {}
            }
            tally.count(format!("ERROR {code}"));
        }
        StompEnd::Receipt => tally.count(if frames > 1 {
            "answered, then the DISCONNECT receipt"
        } else {
            "the DISCONNECT receipt"
        }),
        StompEnd::Silent => {
            tally.fail(index, input, "closed without ERROR or receipt");
            tally.count("closed silently");
        }
        StompEnd::Garbage(why) => {
            tally.fail(index, input, format!("bad output from the node: {why}"));
            tally.count("bad output");
        }
        StompEnd::Hang => {
            tally.hangs += 1;
            tally.fail(index, input, "no close in time");
            tally.count("hang");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_malformed_frames_get_error_then_close() {
    count_panics();
    let panics_before = PANICS.load(Ordering::SeqCst);
    let server = node().await;
    let token = server.admin_token().await;
    let addr = server.stomp.clone();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let seed = seed();
    run_pool(32, |_, next| {
        let (token, addr, tally) = (token.clone(), addr.clone(), tally.clone());
        async move {
            while let Some(i) = take(&next, started) {
                let mut rng = Rng::for_input(seed, 2, i);
                let input = stomp_input(&mut rng, &token);
                let (end, frames) = stomp_exchange(&mut rng, &addr, &input).await;
                let mut t = tally.lock().expect("tally");
                t.inputs += 1;
                judge_stomp(&mut t, i, &input, end, frames);
            }
        }
    })
    .await;
    assert_alive(&server, &token).await;
    // A valid STOMP exchange still works.
    let (mut w, f) = trunkline_testkit::StompWire::connect(&server.stomp, "admin", &token).await;
    assert_eq!(f.command, Command::Connected, "{f:?}");
    w.raw(b"SEND\ndestination:/topic/after.run\nreceipt:ok\n\n{}\0")
        .await;
    let f = w.next().await.expect("a receipt");
    assert_eq!(
        (f.command, f.get("receipt-id")),
        (Command::Receipt, Some("ok"))
    );
    tally
        .lock()
        .expect("tally")
        .check("STOMP", started, panics_before);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// WebSocket

const WS_TEMPLATES: &[&str] = &[
    r#"{"service":"session","message":{"command":"whoami","callId":1}}"#,
    r#"{"service":"session","message":{"command":"ping","params":{},"callId":"c"}}"#,
    r#"{"service":"inbox","message":{"command":"subscribe","params":{"window":5,"lease":10},"callId":2}}"#,
    r#"{"service":"inbox","message":{"command":"ack","params":{"receipts":["admin-inbox/1/1"]},"callId":3}}"#,
    r#"{"service":"inbox","message":{"command":"nack","params":{"receipts":[],"requeue":false},"callId":4}}"#,
    r#"{"service":"inbox","message":{"command":"unsubscribe","callId":5}}"#,
    r#"{"service":"channel","message":{"command":"subscribe","params":{"channel":"fuzz-room"},"callId":6}}"#,
    r#"{"service":"channel","message":{"command":"publish","params":{"channel":"fuzz-room","message":{"hi":1},"exclude_self":true},"callId":7}}"#,
    r#"{"service":"channel","message":{"command":"unsubscribe","params":{"channel":"fuzz-room"},"callId":8}}"#,
    r#"{"service":"channel","message":{"command":"subscribe","params":{"channel":"pvt:x","token":"abc"},"callId":9}}"#,
    r#"{"service":"pubsub","message":{"command":"subscribe","params":{"channel":"fuzz-ps"},"callId":10}}"#,
    r#"{"service":"pubsub","message":{"command":"publish","params":{"channel":"fuzz-ps","message":"m"},"callId":11}}"#,
    r#"{"service":"rpc","message":{"command":"register","params":{"name":"fuzz-calc","functions":["add"]},"callId":12}}"#,
    r#"{"service":"rpc","message":{"command":"call","params":{"server":"fuzz-none","function":"add","payload":{"a":1},"timeout_ms":200},"callId":13}}"#,
    r#"{"service":"rpc","message":{"command":"end","params":{"id":"1","data":2},"callId":14}}"#,
    r#"{"service":"functions","message":{"command":"expose","params":{"functions":["f"]},"callId":15}}"#,
    r#"{"service":"functions","message":{"command":"call","params":{"session_id":"ws-1","function":"f","timeout_ms":200},"callId":16}}"#,
    r#"{"service":"functions","message":{"command":"exception","params":{"id":"9","code":"x"},"callId":17}}"#,
    r#"{"service":"auth","message":{"command":"authenticate","params":{"token":"x"},"callId":18}}"#,
    r#"{"service":"nosuch","message":{"command":"x","callId":19}}"#,
];

/// Close codes `docs/ws-protocol.md` names, and those of RFC 6455 for broken frames.
const CLOSE_CODES: &[u16] = &[
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 4000, 4401, 4408, 4429,
];

/// One WebSocket input.
enum WsInput {
    Text(String),
    /// A text frame whose payload is not UTF-8.
    BadText(Vec<u8>),
    Binary(Vec<u8>),
    /// A frame with a reserved opcode or a ping with a payload too long for a control frame.
    Broken(WsFrame),
}

impl WsInput {
    fn bytes(&self) -> Vec<u8> {
        match self {
            WsInput::Text(t) => t.clone().into_bytes(),
            WsInput::BadText(b) | WsInput::Binary(b) => b.clone(),
            WsInput::Broken(f) => format!("{f:?}").into_bytes(),
        }
    }

    /// A call whose answer comes when its callee answers, not before the next one's.
    fn answered_later(&self) -> bool {
        let WsInput::Text(t) = self else { return false };
        let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
        matches!(v["service"].as_str(), Some("rpc" | "functions"))
            && v["message"]["command"].as_str() == Some("call")
    }

    fn message(self) -> Message {
        match self {
            WsInput::Text(t) => Message::text(t),
            WsInput::BadText(b) => {
                Message::Frame(WsFrame::message(b, OpCode::Data(Data::Text), true))
            }
            WsInput::Binary(b) => Message::binary(b),
            WsInput::Broken(f) => Message::Frame(f),
        }
    }
}

fn ws_input(rng: &mut Rng) -> WsInput {
    let t = rng.pick(WS_TEMPLATES);
    let fragments: Vec<&[u8]> = WS_TEMPLATES
        .iter()
        .map(|t| t.as_bytes())
        .chain(WEIRD.iter().map(|w| w.as_bytes()))
        .collect();
    match rng.below(100) {
        0..=4 => WsInput::Text(t.to_string()),
        5..=69 => {
            let doc: Value = serde_json::from_str(t).unwrap_or(Value::Null);
            let bytes = mutate_json(rng, &doc);
            match String::from_utf8(bytes) {
                Ok(s) => WsInput::Text(s),
                Err(e) => WsInput::BadText(e.into_bytes()),
            }
        }
        70..=93 => {
            let bytes = mutate_bytes(rng, t.as_bytes(), &fragments);
            match String::from_utf8(bytes) {
                Ok(s) => WsInput::Text(s),
                Err(e) => WsInput::BadText(e.into_bytes()),
            }
        }
        94..=96 => WsInput::Binary(t.as_bytes().to_vec()),
        97 => WsInput::Text(format!(
            "{{\"service\":\"session\",\"message\":{{\"command\":\"ping\",\"params\":\"{}\"}}}}",
            "x".repeat(70_000)
        )),
        _ => {
            // A reserved opcode, a ping longer than a control frame may be, or an
            // extension bit no extension was agreed for.
            let (opcode, payload, rsv1) = match rng.below(3) {
                0 => (
                    OpCode::Data(Data::Reserved(3)),
                    t.as_bytes().to_vec(),
                    false,
                ),
                1 => (OpCode::Control(Control::Ping), vec![b'p'; 200], false),
                _ => (OpCode::Data(Data::Text), t.as_bytes().to_vec(), true),
            };
            let header = FrameHeader {
                opcode,
                rsv1,
                ..FrameHeader::default()
            };
            WsInput::Broken(WsFrame::from_payload(header, payload.into()))
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// What one WebSocket input got before the sentinel's answer.
#[derive(Debug)]
enum WsEnd {
    /// An answer (`response`, `error` with its code and message, or the `welcome`).
    Answer {
        kind: String,
        code: Option<String>,
        message: Option<String>,
    },
    /// The sentinel answered first.
    Nothing,
    /// The session was closed (the code is judged with every close).
    Closed,
    /// The connection ended without a close frame.
    Dropped,
    Garbage(String),
    Hang,
}

/// How the session stood after an input: open, or closed with this close code (`None`
/// for a connection dropped without a close frame).
type WsAfter = Option<Option<u16>>;

/// Sends `input` then a sentinel ping, and reads until the sentinel's answer or the close.
async fn ws_exchange(ws: &mut Ws, input: WsInput, sentinel: &str) -> (WsEnd, WsAfter) {
    let run = async {
        // A failed send means the node closed already; the close is read below.
        let _ = ws.send(input.message()).await;
        let ping =
            json!({"service": "session", "message": {"command": "ping", "callId": sentinel}});
        let _ = ws.send(Message::text(ping.to_string())).await;
        let mut first: Option<WsEnd> = None;
        loop {
            let frame = match ws.next().await {
                None | Some(Err(_)) => return (first.unwrap_or(WsEnd::Dropped), Some(None)),
                Some(Ok(f)) => f,
            };
            let text = match frame {
                Message::Text(t) => t,
                Message::Close(c) => {
                    let code = c.map(|c| u16::from(c.code));
                    return (first.unwrap_or(WsEnd::Closed), Some(code));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                Message::Binary(b) => {
                    return (WsEnd::Garbage(format!("binary {}", show(&b))), Some(None))
                }
            };
            let v: Value = match serde_json::from_str(text.as_str()) {
                Ok(v) => v,
                Err(e) => {
                    let why = format!("not JSON ({e}): {}", text.as_str());
                    return (WsEnd::Garbage(why), Some(None));
                }
            };
            let m = &v["message"];
            if !m.is_object() {
                return (WsEnd::Garbage(format!("not an envelope: {v}")), Some(None));
            }
            if m["callId"].as_str() == Some(sentinel) {
                return (first.unwrap_or(WsEnd::Nothing), None);
            }
            let kind = m["type"].as_str().unwrap_or("").to_owned();
            if first.is_none() && matches!(kind.as_str(), "response" | "error" | "welcome") {
                first = Some(WsEnd::Answer {
                    kind,
                    code: m["code"].as_str().map(str::to_owned),
                    message: m["message"].as_str().map(str::to_owned),
                });
            } else if kind == "error" {
                // A pushed error (a call's timeout, say) follows the same rules.
                let code = m["code"].as_str().unwrap_or("");
                if registered(code).is_none_or(|(_, fault)| fault && !call_outcome(code)) {
                    let why = format!("pushed error with code `{code}`: {v}");
                    return (WsEnd::Garbage(why), Some(None));
                }
            }
        }
    };
    tokio::time::timeout(ANSWER_LIMIT, run)
        .await
        .unwrap_or((WsEnd::Hang, Some(None)))
}

/// Call outcomes of the 5xx kind that are the callee's doing, not the node's.
fn call_outcome(code: &str) -> bool {
    matches!(
        code,
        "call_timeout" | "callee_gone" | "callee_busy" | "call_exception"
    )
}

/// Judges one input and what became of its session; true if the session is over.
fn judge_ws(
    tally: &mut Tally,
    index: usize,
    input: &[u8],
    later: bool,
    (end, after): (WsEnd, WsAfter),
) -> bool {
    match end {
        WsEnd::Answer {
            kind,
            code,
            message,
        } => {
            if kind == "error" {
                let code = code.unwrap_or_default();
                match registered(&code) {
                    None => tally.fail(
                        index,
                        input,
                        format!("error with unregistered code `{code}`"),
                    ),
                    Some((_, true)) if !call_outcome(&code) => {
                        tally.server_errors += 1;
                        tally.fail(index, input, format!("error {code}: a server fault"));
                    }
                    _ if message.as_deref().is_none_or(str::is_empty) => {
                        tally.fail(index, input, format!("error {code} without a message"))
                    }
                    _ => {}
                }
                tally.count(format!("error {code}"));
            } else {
                tally.count(kind);
            }
        }
        WsEnd::Nothing if later => tally.count("call (answered when the callee answers)"),
        WsEnd::Nothing => {
            tally.fail(index, input, "no answer");
            tally.count("no answer");
        }
        // Judged below, as every close is.
        WsEnd::Closed => {}
        WsEnd::Dropped => {}
        WsEnd::Garbage(why) => {
            tally.fail(index, input, format!("bad output from the node: {why}"));
            tally.count("bad output");
            return true;
        }
        WsEnd::Hang => {
            tally.hangs += 1;
            tally.fail(index, input, "no answer in time");
            tally.count("hang");
            return true;
        }
    }
    match after {
        None => false,
        Some(Some(c)) if CLOSE_CODES.contains(&c) => {
            tally.count(format!("close {c}"));
            true
        }
        Some(code) => {
            tally.fail(
                index,
                input,
                format!("session ended with close code {code:?}"),
            );
            tally.count(format!("close {code:?}"));
            true
        }
    }
}

/// Opens a session: with the token in a header, in the query, or (`None`) with none.
async fn ws_open(server: &TestServer, token: Option<&str>, in_query: bool) -> Option<Ws> {
    let base = server.http.replacen("http://", "ws://", 1);
    let url = match (token, in_query) {
        (Some(t), true) => format!("{base}/ws?token={t}"),
        _ => format!("{base}/ws"),
    };
    let mut req = url.into_client_request().ok()?;
    if let (Some(t), false) = (token, in_query) {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().ok()?);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.ok()?;
    if token.is_some() {
        // The welcome.
        let first = tokio::time::timeout(ANSWER_LIMIT, ws.next())
            .await
            .ok()??
            .ok()?;
        if !matches!(&first, Message::Text(t) if t.as_str().contains("welcome")) {
            return None;
        }
    }
    Some(ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_malformed_messages_get_errors_or_documented_closes() {
    count_panics();
    let panics_before = PANICS.load(Ordering::SeqCst);
    let server = Arc::new(node().await);
    let token = server.admin_token().await;
    // Messages in the admin inbox, for `inbox.subscribe` to push.
    let http = reqwest::Client::new();
    for n in 0..20 {
        http.post(format!("{}/send", server.http))
            .bearer_auth(&token)
            .json(&json!({"topic": "fuzz.ws", "body": {"n": n}}))
            .send()
            .await
            .expect("send");
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let seed = seed();
    run_pool(12, |w, next| {
        let (token, server, tally) = (token.clone(), server.clone(), tally.clone());
        async move {
            let mut ws: Option<Ws> = None;
            let mut session_inputs = 0;
            while let Some(i) = take(&next, started) {
                let mut rng = Rng::for_input(seed, 3, i);
                let fresh = ws.is_none() || session_inputs >= 25;
                let mut input = None;
                if fresh {
                    if let Some(mut old) = ws.take() {
                        let _ = old.close(None).await;
                    }
                    session_inputs = 0;
                    ws = match rng.below(10) {
                        0 => ws_open(&server, Some(&token), true).await,
                        1 => {
                            // No token: the input's first message must authenticate.
                            let auth = json!({"service": "auth", "message": {"command": "authenticate", "params": {"token": token}, "callId": 0}});
                            input = Some(if rng.chance(70) {
                                WsInput::Text(auth.to_string())
                            } else {
                                let bytes = mutate_json(&mut rng, &auth);
                                match String::from_utf8(bytes) {
                                    Ok(s) => WsInput::Text(s),
                                    Err(e) => WsInput::BadText(e.into_bytes()),
                                }
                            });
                            ws_open(&server, None, false).await
                        }
                        _ => ws_open(&server, Some(&token), false).await,
                    };
                }
                let input = input.unwrap_or_else(|| ws_input(&mut rng));
                let (bytes, later) = (input.bytes(), input.answered_later());
                let Some(session) = ws.as_mut() else {
                    let mut t = tally.lock().expect("tally");
                    t.inputs += 1;
                    t.fail(i, &bytes, "the upgrade failed");
                    t.count("upgrade failed");
                    continue;
                };
                session_inputs += 1;
                let end = ws_exchange(session, input, &format!("sentinel-{w}-{i}")).await;
                let mut t = tally.lock().expect("tally");
                t.inputs += 1;
                if judge_ws(&mut t, i, &bytes, later, end) {
                    ws = None;
                }
            }
            if let Some(mut s) = ws {
                let _ = s.close(None).await;
            }
        }
    })
    .await;
    assert_alive(&server, &token).await;
    // A valid session still works.
    let mut ws = ws_open(&server, Some(&token), false)
        .await
        .expect("a session after the run");
    let (end, _) = ws_exchange(
        &mut ws,
        WsInput::Text(WS_TEMPLATES[0].to_owned()),
        "sentinel-after",
    )
    .await;
    assert!(
        matches!(&end, WsEnd::Answer { kind, .. } if kind == "response"),
        "{end:?}"
    );
    tally
        .lock()
        .expect("tally")
        .check("WebSocket", started, panics_before);
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
}
