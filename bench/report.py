"""docs/performance.md from the results of bench/compare.sh (moved out of compare.sh as it was).

python3 bench/report.py RESULTS REPEATS OUT "SECTIONS" "SYSTEMS"
"""
import datetime, glob, json, os, platform, statistics, subprocess, sys

results, repeats, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sections, systems = sys.argv[4].split(), sys.argv[5].split()
NAMES = {"trunkline": "Trunkline (STOMP)", "rabbitmq": "RabbitMQ STOMP",
         "amqp": "RabbitMQ AMQP", "nats": "NATS JetStream"}


def runs(section, name, system):
    """The JSON reports of one scenario and system, one per repeat that did not fail."""
    rs = []
    for i in range(1, repeats + 1):
        p = os.path.join(results, f"{section}-{name}-{system}-{i}.json")
        if os.path.exists(p):
            with open(p) as f:
                rs.append(json.load(f))
    return rs


def stat(rs, get):
    vals = [v for v in (get(r) for r in rs) if v is not None]
    if not vals:
        return None
    return dict(med=statistics.median(vals), lo=min(vals), hi=max(vals))


def lat(key, p):
    return lambda r: (r.get(key) or {}).get(p)


def num(x, d=0):
    return "-" if x is None else f"{x:.{d}f}"


def spread(s, d=0):
    if s is None:
        return "-"
    if repeats == 1:
        return num(s["med"], d)
    return f"{num(s['med'], d)} ({num(s['lo'], d)}–{num(s['hi'], d)})"


def incomplete(rs):
    return "†" if any(r["consumed"] < r["messages"] for r in rs) else ""


def med(rs, get):
    return (stat(rs, get) or {}).get("med")


def ratio(t, x):
    if t is None or x is None or not x["med"]:
        return "-"
    r = t["med"] / x["med"]
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.3f}x"


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    fs = version(["df", "--output=fstype", "/tmp"]).splitlines()[-1:] or [""]
    rmq = version(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"])
    nats = version(["nats-server", "--version"])
    # The commit measured, as the run wrote it down (a report rewritten later, or from
    # results put together from several runs, says what was measured); else HEAD.
    try:
        commit = open(os.path.join(results, "commit")).read().strip()
    except OSError:
        commit = version(["git", "rev-parse", "--short", "HEAD"])
    return (f"{cpu or platform.machine()}, {os.cpu_count() or 0} cores, {mem:.0f} GiB, Linux "
            f"{platform.release()}, data on {fs[0] or '?'}; RabbitMQ {rmq or '?'} (Debian, "
            f"default settings), {nats or 'nats-server ?'}, Trunkline {commit or '?'}")


def write_throughput(f):
    f.write("## Durable publish → consume, every message acked\n\n")
    f.write("4 publishers, each keeping up to 100 messages unconfirmed; 4 consumers, one durable "
            "queue each, 100 unacknowledged at most, acking every message "
            "(`trunkline-bench stomp-durable|amqp-durable|nats-durable`, default shape). "
            "Throughput is messages consumed and acked per second, from the first publish to the "
            "last ack. Trunkline ÷ this: throughput ratio, above 1 means Trunkline is faster.\n\n")
    f.write("| size | system | msg/s | server CPU µs/msg | peak RSS MiB | e2e p50 / p99 ms | Trunkline ÷ this |\n")
    f.write("|---|---|---|---|---|---|---|\n")
    for name in ["1KiB", "16B", "64KiB"]:
        t = stat(runs("throughput", name, "trunkline"), lambda r: r["msgs_per_s"])
        for system in systems:
            rs = runs("throughput", name, system)
            if not rs:
                continue
            rate = stat(rs, lambda r: r["msgs_per_s"])
            f.write("| %s | %s%s | %s | %s | %s | %s / %s | %s |\n" % (
                name, NAMES[system], incomplete(rs), spread(rate),
                spread(stat(rs, lambda r: r["server_cpu_us_per_msg"]), 1),
                num(max(r["server_peak_rss_mib"] for r in rs)),
                num(med(rs, lat("end_to_end_latency", "p50_ms")), 1),
                num(med(rs, lat("end_to_end_latency", "p99_ms")), 1),
                "" if system == "trunkline" else ratio(t, rate)))
    f.write("\nThe 16 B bodies are in fact 26–27 B, the smallest JSON object that carries the send "
            "time. End-to-end latency here includes queueing: publishers run ahead of consumers.\n\n")


def write_latency(f):
    f.write("## Latency at a fixed rate\n\n")
    f.write("The same shape (4 publishers, window 100, 4 consumers, prefetch 100), 1 KiB, but the "
            "publishers send on a schedule: message n is due at start + n ÷ rate (`--rate`). "
            "Latencies are measured from the due time, not from when the message left: a message "
            "held back by a full window or a late publisher is charged for the wait (no "
            "coordinated omission). Publish latency runs to the confirmation (Trunkline: receipt "
            "after the commit; RabbitMQ: publisher confirm; JetStream: publish ack), end-to-end "
            "to the delivery. Send lag is how late the load generator sent (its own timer and "
            "scheduling on a shared 2-core machine, plus any wait for the window): latencies "
            "below it say nothing about the server. 8000 messages at 1000 msg/s, 50 000 at "
            "10 000 msg/s. Trunkline ÷ this: ratio of end-to-end p99 latencies, below 1 means "
            "Trunkline's is lower.\n\n")
    f.write("| rate msg/s | system | achieved msg/s | publish p50 / p99 / max ms | e2e p50 / p99 / max ms "
            "| send lag p99 ms | server CPU µs/msg | peak RSS MiB | Trunkline ÷ this |\n")
    f.write("|---|---|---|---|---|---|---|---|---|\n")
    for name in ["1000", "10000"]:
        t = stat(runs("latency", name, "trunkline"), lat("end_to_end_latency", "p99_ms"))
        for system in systems:
            rs = runs("latency", name, system)
            if not rs:
                continue
            e2e99 = stat(rs, lat("end_to_end_latency", "p99_ms"))
            m = lambda k, p: num(med(rs, lat(k, p)), 2)
            f.write("| %s | %s%s | %s | %s / %s / %s | %s / %s / %s | %s | %s | %s | %s |\n" % (
                name, NAMES[system], incomplete(rs), spread(stat(rs, lambda r: r["msgs_per_s"])),
                m("publish_latency", "p50_ms"), m("publish_latency", "p99_ms"),
                m("publish_latency", "max_ms"),
                m("end_to_end_latency", "p50_ms"), spread(e2e99, 2),
                m("end_to_end_latency", "max_ms"), m("send_lag", "p99_ms"),
                spread(stat(rs, lambda r: r["server_cpu_us_per_msg"]), 1),
                num(max(r["server_peak_rss_mib"] for r in rs)),
                "" if system == "trunkline" else ratio(t, e2e99)))
    f.write("\nA system that cannot sustain the rate falls behind the schedule and its latencies "
            "grow with the backlog (achieved msg/s below the rate).\n\n")


def write_sync(f):
    f.write("## One synchronous durable publisher\n\n")
    f.write("One publisher with a window of 1 (each message waits for its confirmation before the "
            "next is sent), one consumer, 1 KiB, 2000 messages or 15 s. The rate is confirmed "
            "messages per second. Trunkline ÷ this: rate ratio, above 1 means Trunkline is "
            "faster.\n\n")
    f.write("| system | confirmed msg/s | publish p50 / p99 ms | e2e p50 / p99 ms | server CPU µs/msg | peak RSS MiB | Trunkline ÷ this |\n")
    f.write("|---|---|---|---|---|---|---|\n")
    t = stat(runs("sync", "1KiB", "trunkline"), lambda r: r["publish_msgs_per_s"])
    for system in systems:
        rs = runs("sync", "1KiB", system)
        if not rs:
            continue
        rate = stat(rs, lambda r: r["publish_msgs_per_s"])
        m = lambda k, p: num(med(rs, lat(k, p)), 2)
        f.write("| %s%s | %s | %s / %s | %s / %s | %s | %s | %s |\n" % (
            NAMES[system], incomplete(rs), spread(rate),
            m("publish_latency", "p50_ms"), m("publish_latency", "p99_ms"),
            m("end_to_end_latency", "p50_ms"), m("end_to_end_latency", "p99_ms"),
            spread(stat(rs, lambda r: r["server_cpu_us_per_msg"]), 1),
            num(max(r["server_peak_rss_mib"] for r in rs)),
            "" if system == "trunkline" else ratio(t, rate)))
    f.write("\n")


def write_bar(f):
    """The first performance bar of issue 4, from this run's medians."""
    def m(section, name, system, key):
        return (stat(runs(section, name, system), lambda r: r[key]) or {}).get("med")
    t = m("throughput", "1KiB", "trunkline", "msgs_per_s")
    cpu = m("throughput", "1KiB", "trunkline", "server_cpu_us_per_msg")
    rmq = [x for x in (m("throughput", "1KiB", s, "msgs_per_s") for s in ("rabbitmq", "amqp")) if x]
    fan = {s: (stat([r for r in runs("fanout", "1to4", s) if r["complete"] and not r["lost"]],
                    lambda r: r["deliveries_per_s"]) or {}).get("med") for s in ("trunkline", "nats")}
    sync_t = m("sync", "1KiB", "trunkline", "publish_msgs_per_s")
    sync_n = m("sync", "1KiB", "nats", "publish_msgs_per_s")
    rows = []
    if t and rmq:
        best = max(rmq)
        rows.append(("durable 1 KiB throughput ≥ 2x RabbitMQ's (the faster of STOMP and AMQP)",
                     "%.0f vs %.0f msg/s: %.2fx" % (t, best, t / best), t >= 2 * best))
    if cpu:
        rows.append(("durable 1 KiB: ≤ 30 µs server CPU per message", "%.1f µs" % cpu, cpu <= 30))
    if fan["trunkline"] and fan["nats"]:
        r = fan["trunkline"] / fan["nats"]
        rows.append(("live fan-out 1 → 4 ≥ 50% of NATS core", "%.0f%%" % (100 * r), r >= 0.5))
    if sync_t and sync_n:
        rows.append(("one synchronous durable publisher ≥ JetStream's rate",
                     "%.0f vs %.0f msg/s" % (sync_t, sync_n), sync_t >= sync_n))
    if not rows:
        return
    f.write("## The first bar\n\n| bar | this run | holds |\n|---|---|---|\n")
    for bar, seen, ok in rows:
        f.write("| %s | %s | %s |\n" % (bar, seen, "yes" if ok else "**no**"))
    f.write("\nThe synchronous publisher pays one `fdatasync` per message here (about 150 µs on "
            "this disk with the log's preallocated segments, 200 µs when appending) plus a round "
            "trip of thread wake-ups; JetStream 2.9 answers before it syncs (every two minutes by "
            "default); Debian's 2.9 has no setting to sync each write (later releases have "
            "`sync_interval`). Against the systems that sync first, RabbitMQ's rows, Trunkline is "
            "ahead. Matching JetStream on its terms would take an opt-in mode that answers "
            "before the sync, which Trunkline does not offer.\n\n")


def live_runs(section, name, names):
    """The runs of a live fan-out section by system, each complete with nothing lost and
    nothing out of order; notes on the runs left out; the configuration of the first run
    (None if there is none)."""
    cells, notes = {}, []
    for system in names:
        if system not in systems:
            continue
        rs = []
        for r in runs(section, name, system):
            if (not r["complete"] or r["lost"] or r["out_of_order"]
                    or r.get("publish_errors") or r.get("short_publishes")):
                notes.append(f"{names[system]}: a run with {r['lost']} lost and {r['out_of_order']} "
                             "out-of-order deliveries, or incomplete, is left out")
            else:
                rs.append(r)
        if rs:
            cells[system] = rs
    config = next(iter(cells.values()))[0]["config"] if cells else None
    return cells, notes, config


def write_notes(f, notes):
    for n in notes:
        f.write("\n- %s\n" % n)
    f.write("\n")


def live_table(f, cells, names, extra):
    """The table of a live fan-out section; `extra` holds (heading, cell of the runs)
    columns to put before peak RSS."""
    heads = ["system", "deliveries/s", "server CPU µs/delivery", "bench CPU µs/delivery",
             "e2e p50 / p99 / max ms"] + [h for h, _ in extra] + ["peak RSS MiB",
                                                                 "Trunkline ÷ this"]
    f.write("| %s |\n|%s\n" % (" | ".join(heads), "---|" * len(heads)))
    t = stat(cells.get("trunkline", []), lambda r: r["deliveries_per_s"])
    for system, rs in cells.items():
        rate = stat(rs, lambda r: r["deliveries_per_s"])
        m = lambda p: num(med(rs, lat("end_to_end_latency", p)), 1)
        row = [names[system], spread(rate),
               spread(stat(rs, lambda r: r["server_cpu_us_per_delivery"]), 2),
               num(med(rs, lambda r: r["bench_cpu_us_per_delivery"]), 2),
               "%s / %s / %s" % (m("p50_ms"), m("p99_ms"), m("max_ms"))]
        row += [cell(rs) for _, cell in extra]
        row += [num(max(r["server_peak_rss_mib"] for r in rs)),
                "" if system == "trunkline" else ratio(t, rate)]
        f.write("| %s |\n" % " | ".join(row))


def write_fanout(f):
    names = {"trunkline": "Trunkline (STOMP /topic)", "nats": "NATS core"}
    cells, notes, args = live_runs("fanout", "1to4", names)
    if not cells:
        return
    f.write("## Live fan-out, 1 publisher → %s subscribers\n\n" % args["subscribers"])
    f.write("`trunkline-bench fanout`, %s-byte messages: one publisher sends without waiting "
            "(Trunkline: STOMP `SEND` without a receipt to `/topic/…`, live subscriptions; NATS "
            "core: publish through async-nats), pausing while it is more than `--credit` %s "
            "messages ahead of the slowest subscriber, the same closed loop for both. "
            "Deliveries/s = messages × subscribers until the last subscriber has everything; only "
            "runs with nothing lost and nothing out of order count. The bench's own CPU per "
            "delivery is shown because it shares the 2 cores with the server.\n\n"
            % (args["size"], args["credit"]))
    live_table(f, cells, names, [])
    f.write("\nLatency here is mostly the credit draining: compare it at equal `--credit`.\n")
    write_notes(f, notes)


def write_wsfanout(f):
    names = {"trunkline": "Trunkline (channel)", "node": "Node `ws` broadcast"}
    cells, notes, args = live_runs("wsfanout", "1to1000", names)
    if not cells:
        return
    f.write("## WebSocket fan-out, 1 publisher → %s sessions\n\n" % args["subscribers"])
    f.write("`trunkline-bench wsfanout`, %s-byte messages, %s per run: one publisher session "
            "sends without waiting, %s receiver sessions get every message, each on its own "
            "connection (tokio-tungstenite, in the bench process). Trunkline: a server started "
            "for the run, sessions authenticated with a client token, receivers subscribed to the "
            "public channel `bench`, the publisher calling `channel.publish` with a channel token "
            "(its answers read and checked by a task: `delivered` must be every receiver); "
            "`[ws] rate_per_sec` is raised for the run, as the default 100/s would stop the one "
            "publisher. Node: `bench/node/ws-broadcast.mjs`, the plain broadcast server of npm "
            "`ws` %s, also started for the run: every message relayed to every other open client, "
            "with no authentication, channels or envelope. The publisher pauses while it is "
            "more than `--credit` %s messages ahead of the slowest receiver, the same closed loop "
            "for both. Deliveries/s = messages × sessions until the last session has everything; "
            "only runs with nothing lost, nothing out of order and no failed publish count. Idle "
            "session = the server's RSS with every receiver connected (and subscribed) minus its "
            "RSS before any, over the sessions, measured before the first message.\n\n"
            % (args["size"], args["messages"], args["subscribers"],
               "(%s)" % cells["node"][0].get("server", "?") if "node" in cells else "",
               args["credit"]))
    live_table(f, cells, names, [
        ("idle session KiB", lambda rs: spread(stat(rs, lambda r: r["idle_session_kib"]), 1))])
    t = stat(cells.get("trunkline", []), lambda r: r["deliveries_per_s"])
    node = stat(cells.get("node", []), lambda r: r["deliveries_per_s"])
    cpu = {s: med(cells.get(s, []), lambda r: r["server_cpu_us_per_delivery"])
           for s in ("trunkline", "node")}
    if t and node:
        r = t["med"] / node["med"]
        f.write("\nAim (issue 5): at least 3x the deliveries/s of the Node server. This run: "
                "%.2fx, %s." % (r, "holds" if r >= 3 else "**does not hold**"))
        if cpu["trunkline"] and cpu["node"]:
            f.write(" Per delivery Trunkline's server used %.2fx the CPU of Node's (%.2f against "
                    "%.2f µs)." % (cpu["trunkline"] / cpu["node"], cpu["trunkline"], cpu["node"]))
        f.write("\n")
    f.write("\nThe receivers run in the bench process on the same 2 cores, and each system's "
            "deliveries/s is what is left to it: Node's broadcast runs on one thread (its event "
            "loop), Trunkline's on both cores. "
            "Server CPU per delivery is the fair figure. Latency is mostly the credit draining "
            "(Little's law: credit ÷ messages/s). Where Trunkline's time went and what changed "
            "(a 4 KiB read buffer, batched writes, frames serialized once and shared): "
            "`bench/README.md`, WebSocket fan-out.\n")
    write_notes(f, notes)


with open(out, "w") as f:
    f.write("# Performance\n\n")
    f.write("Generated by `bash bench/compare.sh` on %s: %s.\n\n" % (datetime.date.today(), machine()))
    f.write("Method: every system runs on this machine on loopback, with the load generator "
            "beside it (it competes for the 2 cores). Trunkline (a fresh server and data directory "
            "per run) and RabbitMQ's STOMP plugin are driven by the same Rust STOMP client; "
            "RabbitMQ's native AMQP 0-9-1 by lapin; NATS JetStream (file storage) by async-nats. "
            "Durable everywhere: Trunkline answers a SEND's receipt after its commit; RabbitMQ "
            "gets persistent messages (`persistent:true`, `delivery_mode` 2) into durable queues "
            "and confirms after writing them to disk; **JetStream acknowledges before syncing to "
            "disk** (it syncs every two minutes by default), so its rows are not like for like. "
            "Queues are deleted before and after each RabbitMQ run, the stream before and after "
            "each JetStream run. Systems alternate within each of %d repeat(s); each figure is the "
            "median, with the range (min–max) where there are several runs. Server CPU is "
            "user + system time of the server process over the run, per message consumed; peak "
            "RSS is the process's high-water mark (RabbitMQ's and NATS's span the whole "
            "session). † marks a system with a run that stopped at its duration limit before "
            "every message was consumed. The machine is shared and noisy: compare ratios within "
            "one run of the script, not across runs.\n\n" % repeats)
    write_bar(f)
    writers = {"throughput": write_throughput, "latency": write_latency,
               "sync": write_sync, "fanout": write_fanout, "wsfanout": write_wsfanout}
    for s in ["throughput", "latency", "sync", "fanout", "wsfanout"]:
        if s in sections:
            writers[s](f)
    f.write("## Elsewhere\n\nThe CI regression guard (`trunkline-bench guard`, server CPU per message against "
            "`bench/guard.json`) and other figures (HTTP durable path, routing, recovery) are in "
            "`bench/README.md`. Raw results of this run: `%s` (not kept in git).\n"
            % os.path.relpath(results))
print(open(out).read())
