"""docs/performance.md from the results of bench/compare.sh.

    python3 bench/report.py RESULTS REPEATS OUT "SECTIONS" "SYSTEMS"

Every sentence that states a result or a verdict is computed here from the runs' JSON;
the fixed text only says how the runs were made. The report says where each system kept
its data (the path, file system and device each durable run reported) and whether every
message id checked out. Exits 3 when the comparison is invalid: the systems' data on
different file systems, or a durable run that did not say where its data was; the report
is still written, saying so at the top, with no verdict drawn.
"""
import datetime, glob, json, os, platform, statistics, subprocess, sys

results, repeats, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sections, systems = sys.argv[4].split(), sys.argv[5].split()
# The durable scenarios (section, name), in report order.
DURABLE = [("throughput", "1KiB"), ("throughput", "16B"), ("throughput", "64KiB"),
           ("latency", "1000"), ("latency", "10000"), ("sync", "1KiB")]
NATS = ("nats", "nats-pypi", "nats-pypi-sync")
BASE = {"trunkline": "Trunkline (STOMP)", "rabbitmq": "RabbitMQ STOMP",
        "amqp": "RabbitMQ AMQP"}


def runs(section, name, system):
    """The JSON reports of one scenario and system, one per repeat that did not fail;
    each gets `_run`, its repeat number."""
    rs = []
    for i in range(1, repeats + 1):
        p = os.path.join(results, f"{section}-{name}-{system}-{i}.json")
        if os.path.exists(p):
            with open(p) as f:
                r = json.load(f)
            r["_run"] = i
            rs.append(r)
    return rs


def durable_runs(system):
    """Every durable run of `system`, as (section, name, report)."""
    return [(section, name, r) for section, name in DURABLE if section in sections
            for r in runs(section, name, system)]


def durable_systems():
    return [s for s in systems if s != "node" and durable_runs(s)]


def server_of(system):
    """(version, settings) as the server of `system` reported them in its durable runs
    (NATS: the version in its INFO, the sync setting from its /varz); None where no run
    recorded them."""
    for _, _, r in durable_runs(system):
        if r.get("server"):
            return r["server"].split()[-1], r.get("settings")
    return None, None


def syncs_first(system):
    """True if `system` syncs each message before confirming it, as its runs say."""
    if system in NATS:
        settings = server_of(system)[1]
        return bool(settings) and "always" in settings
    return system in BASE


def label(system):
    if system in BASE:
        return BASE[system]
    version, settings = server_of(system)
    if syncs_first(system):
        sync = "sync always"
    elif settings and settings.startswith("sync_interval ") and "not reported" not in settings:
        sync = settings.split(" (")[0]
    elif settings:
        sync = "default sync"
    else:
        sync = "sync setting not recorded"
    return f"NATS JetStream {version or '(version not recorded)'}, {sync}"


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


def complete(r):
    return r.get("complete", r["consumed"] >= r["messages"])


def incomplete(rs):
    return "†" if any(not complete(r) for r in rs) else ""


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
    rmq = version(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"])
    # The commit measured, as the run wrote it down (a report rewritten later, or from
    # results put together from several runs, says what was measured); else HEAD.
    try:
        commit = open(os.path.join(results, "commit")).read().strip()
    except OSError:
        commit = version(["git", "rev-parse", "--short", "HEAD"])
    rabbit = ""
    if "rabbitmq" in systems or "amqp" in systems:
        rabbit = f"; RabbitMQ {rmq or '?'} (Debian, default settings)"
    # NATS servers are named with their versions in their rows, as they reported them.
    return (f"{cpu or platform.machine()}, {os.cpu_count() or 0} cores, {mem:.0f} GiB, Linux "
            f"{platform.release()}{rabbit}; Trunkline {commit or '?'}")


def placements():
    """Per durable system, the data placement each of its runs reported; and whether the
    comparison is valid: every run reported one, all on one device."""
    by_system = {}
    for system in durable_systems():
        by_system[system] = [(section, name, r["_run"], r.get("data") or {
            "error": "not recorded (a run from before the bench reported it)"})
            for section, name, r in durable_runs(system)]
    devices = {d.get("device") for ps in by_system.values() for *_, d in ps}
    # Without durable runs there is no data to compare.
    valid = not by_system or (None not in devices and len(devices) == 1)
    return by_system, valid


def write_placements(f, by_system, valid):
    f.write("## Where each system kept its data\n\n")
    f.write("Each durable run reports where its system kept its data, as learnt from the system "
            "itself where it can be (Trunkline: the data directory the bench gave the server it "
            "started; RabbitMQ: the directory of the message store file its server holds open; "
            "NATS: the `store_dir` its `/varz` reports), with the file system type and source "
            "(`/proc/self/mountinfo`) and the device (`st_dev`) of that directory. The file "
            "system decides what an fsync costs, so the comparison holds only if every system's "
            "data is on the same device.\n\n")
    f.write("| system | data directory | file system | device | runs |\n|---|---|---|---|---|\n")
    for system, ps in by_system.items():
        seen = {}
        for *_, d in ps:
            key = (d.get("fs_type", "?"), d.get("source", "?"), d.get("device"), d.get("error"))
            seen.setdefault(key, []).append(d.get("path"))
        for (fs, source, device, error), paths in seen.items():
            known = [p for p in paths if p]
            if not known:
                where = "unknown: %s" % error
            elif len(set(known)) == 1:
                where = "`%s`" % known[0]
            else:
                where = "`%s/…` (one per run)" % os.path.commonpath(known)
            f.write("| %s | %s | %s | %s | %d |\n" % (
                label(system), where, "%s on %s" % (fs, source) if device else "-",
                device or "-", len(paths)))
    devices = sorted({d.get("device") for ps in by_system.values() for *_, d in ps} - {None})
    if valid:
        f.write("\nEvery system's data was on device %s: the same file system for all %d "
                "durable runs.\n\n" % (devices[0], sum(len(ps) for ps in by_system.values())))
    else:
        f.write("\n**Invalid comparison**: the durable runs' data was on %s. No verdict is "
                "drawn from these figures.\n\n" % (
                    "devices " + ", ".join(devices) if len(devices) > 1 else
                    "an unknown file system for some runs"))


def id_summary():
    """A computed sentence on the message ids of every durable run."""
    checked, clean, unchecked, bad = 0, 0, 0, []
    messages = 0
    for system in durable_systems():
        for section, name, r in durable_runs(system):
            ids = r.get("ids")
            if ids is None:
                unchecked += 1
                continue
            checked += 1
            messages += ids["expected"]
            if ids["clean"]:
                clean += 1
            else:
                bad.append("%s %s, %s, run %d: %d of %d received, %d duplicates, %d missing "
                           "(%d of them confirmed), %d out of range, %d from another run, "
                           "%d unreadable, %d on the wrong queue" % (
                               section, name, label(system), r["_run"], ids["received"],
                               ids["expected"], ids["duplicates"], ids["missing"],
                               ids["missing_confirmed"], ids["out_of_range"], ids["foreign"],
                               ids["unreadable"], ids["misrouted"]))
    s = ("Message ids: each body carries its message's id and the run's tag, and each consumer "
         "checks them against a bitmap. ")
    if checked and clean == checked:
        s += ("In all %d durable runs (%d messages) every message arrived exactly once, on its "
              "own queue, and nothing else did." % (checked, messages))
    elif checked:
        s += "%d of %d durable runs checked out; the others:" % (clean, checked)
    if unchecked:
        s += " %d run(s) did not record their ids (results from before the check)." % unchecked
    return s, bad


def run_problems():
    """(where, problems) of every durable run that is not complete."""
    out = []
    for system in durable_systems():
        for section, name, r in durable_runs(system):
            if not complete(r):
                why = r.get("problems") or ["%d of %d consumed" % (r["consumed"], r["messages"])]
                out.append(("%s %s, %s, run %d" % (section, name, label(system), r["_run"]),
                            "; ".join(why)))
    return out


def counts(section, name):
    """The message counts of a scenario's runs, as they ran."""
    ns = sorted({r["messages"] for s in systems for r in runs(section, name, s)})
    return " or ".join(str(n) for n in ns) or "?"


def body_sizes(name):
    """(size asked, smallest body, largest body) of a throughput scenario's runs."""
    rs = [r for s in systems for r in runs("throughput", name, s) if r.get("body_bytes")]
    if not rs:
        return None
    return (rs[0]["size"], min(r["body_bytes"]["min"] for r in rs),
            max(r["body_bytes"]["max"] for r in rs))


def write_throughput(f):
    f.write("## Durable publish → consume, every message acked\n\n")
    f.write("4 publishers, each keeping up to 100 messages unconfirmed; 4 consumers, one durable "
            "queue each, 100 unacknowledged at most, acking every message "
            "(`trunkline-bench stomp-durable|amqp-durable|nats-durable`, default shape). "
            "Throughput is messages consumed and acked per second, from the first publish to the "
            "last ack. Trunkline ÷ this: throughput ratio, above 1 means Trunkline is faster. "
            "Disk written: what the server process wrote to storage per message consumed "
            "(`write_bytes` of `/proc/PID/io`, median); a server that skips writing messages "
            "consumed and acked before it would have written them shows less than the body "
            "size.\n\n")
    f.write("| size | system | msg/s | server CPU µs/msg | disk written B/msg | peak RSS MiB | e2e p50 / p99 ms | Trunkline ÷ this |\n")
    f.write("|---|---|---|---|---|---|---|---|\n")
    for name in ["1KiB", "16B", "64KiB"]:
        t = stat(runs("throughput", name, "trunkline"), lambda r: r["msgs_per_s"])
        for system in systems:
            rs = runs("throughput", name, system)
            if not rs:
                continue
            rate = stat(rs, lambda r: r["msgs_per_s"])
            written = [r["server_disk_bytes_per_msg"] for r in rs
                       if r.get("server_disk_bytes_per_msg") is not None]
            f.write("| %s | %s%s | %s | %s | %s | %s | %s / %s | %s |\n" % (
                name, label(system), incomplete(rs), spread(rate),
                spread(stat(rs, lambda r: r["server_cpu_us_per_msg"]), 1),
                num(statistics.median(written)) if written else "-",
                num(max(r["server_peak_rss_mib"] for r in rs)),
                num(med(rs, lat("end_to_end_latency", "p50_ms")), 1),
                num(med(rs, lat("end_to_end_latency", "p99_ms")), 1),
                "" if system == "trunkline" else ratio(t, rate)))
    f.write("\n")
    for name in ["1KiB", "16B", "64KiB"]:
        b = body_sizes(name)
        if b and b[2] > b[0]:
            f.write("The %s bodies were in fact %d–%d B, the smallest JSON object that carries "
                    "the send time, the message id and the run's tag. " % (name, b[1], b[2]))
    f.write("End-to-end latency here includes queueing: publishers run ahead of consumers.\n\n")


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
            "below it say nothing about the server. %s. Trunkline ÷ this: ratio of end-to-end "
            "p99 latencies, below 1 means Trunkline's is lower.\n\n" % ", ".join(
                "%s messages at %s msg/s" % (counts("latency", n), n) for n in ["1000", "10000"]))
    f.write("| rate msg/s | system | achieved msg/s | publish p50 / p99 / max ms | e2e p50 / p99 / max ms "
            "| send lag p99 ms | server CPU µs/msg | peak RSS MiB | Trunkline ÷ this |\n")
    f.write("|---|---|---|---|---|---|---|---|---|\n")
    behind = []
    for name in ["1000", "10000"]:
        t = stat(runs("latency", name, "trunkline"), lat("end_to_end_latency", "p99_ms"))
        for system in systems:
            rs = runs("latency", name, system)
            if not rs:
                continue
            e2e99 = stat(rs, lat("end_to_end_latency", "p99_ms"))
            achieved = stat(rs, lambda r: r["msgs_per_s"])
            if achieved and achieved["med"] < 0.98 * float(name):
                behind.append("%s at %s msg/s (%.0f achieved)" % (label(system), name,
                                                                 achieved["med"]))
            m = lambda k, p: num(med(rs, lat(k, p)), 2)
            f.write("| %s | %s%s | %s | %s / %s / %s | %s / %s / %s | %s | %s | %s | %s |\n" % (
                name, label(system), incomplete(rs), spread(achieved),
                m("publish_latency", "p50_ms"), m("publish_latency", "p99_ms"),
                m("publish_latency", "max_ms"),
                m("end_to_end_latency", "p50_ms"), spread(e2e99, 2),
                m("end_to_end_latency", "max_ms"), m("send_lag", "p99_ms"),
                spread(stat(rs, lambda r: r["server_cpu_us_per_msg"]), 1),
                num(max(r["server_peak_rss_mib"] for r in rs)),
                "" if system == "trunkline" else ratio(t, e2e99)))
    f.write("\nA system that cannot sustain the rate falls behind the schedule and its latencies "
            "grow with the backlog (achieved msg/s below the rate). ")
    if behind:
        f.write("In this run, more than 2%% behind the schedule (median): %s.\n\n"
                % "; ".join(behind))
    else:
        f.write("In this run every system kept within 2% of the schedule (median).\n\n")


def sync_rate(system):
    return (stat(runs("sync", "1KiB", system), lambda r: r["publish_msgs_per_s"]) or {}).get("med")


def write_sync(f):
    f.write("## One synchronous durable publisher\n\n")
    f.write("One publisher with a window of 1 (each message waits for its confirmation before the "
            "next is sent), one consumer, 1 KiB, %s messages or 15 s. The rate is confirmed "
            "messages per second. Trunkline ÷ this: rate ratio, above 1 means Trunkline is "
            "faster.\n\n" % counts("sync", "1KiB"))
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
            label(system), incomplete(rs), spread(rate),
            m("publish_latency", "p50_ms"), m("publish_latency", "p99_ms"),
            m("end_to_end_latency", "p50_ms"), m("end_to_end_latency", "p99_ms"),
            spread(stat(rs, lambda r: r["server_cpu_us_per_msg"]), 1),
            num(max(r["server_peak_rss_mib"] for r in rs)),
            "" if system == "trunkline" else ratio(t, rate)))
    f.write("\n")


def sync_verdict():
    """Sentences comparing the synchronous publishers, from this run's medians."""
    t = sync_rate("trunkline")
    if not t:
        return ""
    first, after = [], []
    for system in systems:
        x = sync_rate(system) if system != "trunkline" else None
        if not x:
            continue
        (first if syncs_first(system) else after).append((label(system), t / x))
    def cmp(items):
        return "; ".join("%s: %.2fx (%s)" % (n, r, "Trunkline faster" if r > 1 else
                                             "Trunkline slower" if r < 1 else "even")
                         for n, r in items)
    p50 = med(runs("sync", "1KiB", "trunkline"), lat("publish_latency", "p50_ms"))
    out = ("Trunkline's synchronous publisher confirmed %.0f msg/s here, each message waiting "
           "for its commit (a `fdatasync`): publish p50 %s ms." % (t, num(p50, 2)))
    if first:
        out += " Against the systems that also sync each message before confirming it: %s." % cmp(first)
    if after:
        out += (" Against the systems that confirm before syncing (so not like for like): %s."
                % cmp(after))
        if any(r < 1 for _, r in after):
            out += (" Matching those on their terms would take an opt-in mode that answers "
                    "before the sync, which Trunkline does not offer.")
    return out


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
                notes.append(f"{names[system]}, run {r['_run']}: {r['lost']} lost and "
                             f"{r['out_of_order']} out-of-order deliveries"
                             f"{'' if r['complete'] else ', incomplete'}: left out")
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


def fanout_names():
    names = {"trunkline": "Trunkline (STOMP /topic)"}
    for system in ("nats", "nats-pypi"):
        rs = runs("fanout", "1to4", system)
        server = next((r["server"] for r in rs if r.get("server")), None)
        names[system] = "NATS core %s" % (server.split()[-1] if server else
                                          "(version not recorded)")
    return names


def write_fanout(f):
    names = fanout_names()
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
            "publisher, and `[http_limits] max_connections_per_address`, as every session comes "
            "from one loopback address. Node: `bench/node/ws-broadcast.mjs`, the plain broadcast server of npm "
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


def write_bar(f, valid):
    """The first performance bar of issue 4, from this run's medians."""
    def m(section, name, system, key):
        return (stat(runs(section, name, system), lambda r: r[key]) or {}).get("med")
    t = m("throughput", "1KiB", "trunkline", "msgs_per_s")
    cpu = m("throughput", "1KiB", "trunkline", "server_cpu_us_per_msg")
    rmq = [x for x in (m("throughput", "1KiB", s, "msgs_per_s") for s in ("rabbitmq", "amqp")) if x]
    names = fanout_names()
    fan = {s: (stat([r for r in runs("fanout", "1to4", s) if r["complete"] and not r["lost"]],
                    lambda r: r["deliveries_per_s"]) or {}).get("med")
           for s in ("trunkline", "nats", "nats-pypi")}
    sync_t = sync_rate("trunkline")
    rows = []
    if t and rmq:
        best = max(rmq)
        rows.append(("durable 1 KiB throughput ≥ 2x RabbitMQ's (the faster of STOMP and AMQP)",
                     "%.0f vs %.0f msg/s: %.2fx" % (t, best, t / best), t >= 2 * best))
    if cpu:
        rows.append(("durable 1 KiB: ≤ 30 µs server CPU per message", "%.1f µs" % cpu, cpu <= 30))
    for s in ("nats", "nats-pypi"):
        if fan["trunkline"] and fan[s]:
            r = fan["trunkline"] / fan[s]
            rows.append(("live fan-out 1 → 4 ≥ 50%% of %s" % names[s], "%.0f%%" % (100 * r),
                         r >= 0.5))
    for s in NATS:
        x = sync_rate(s)
        if sync_t and x:
            rows.append(("one synchronous durable publisher ≥ %s" % label(s),
                         "%.0f vs %.0f msg/s" % (sync_t, x), sync_t >= x))
    if not rows:
        return
    f.write("## The first bar\n\n")
    if not valid:
        f.write("Not judged: the systems' data was not shown to be on one file system (see "
                "below).\n\n")
        return
    f.write("| bar | this run | holds |\n|---|---|---|\n")
    for bar, seen, ok in rows:
        f.write("| %s | %s | %s |\n" % (bar, seen, "yes" if ok else "**no**"))
    f.write("\n")
    s = sync_verdict()
    if s:
        f.write(s + " nats-server before 2.10 has no setting to sync each write; from 2.10 on, "
                "`sync_interval: always` does.\n\n")


def jetstream_method():
    """What the JetStream rows of this run are, from the settings their servers reported."""
    present = [s for s in NATS if s in durable_systems()]
    if not present:
        return ""
    first = [label(s) for s in present if syncs_first(s)]
    after = [label(s) for s in present if not syncs_first(s)]
    out = ""
    if first:
        out += ("JetStream with `sync_interval: always` (%s) syncs each write before its ack, "
                "like the others. " % "; ".join(first))
    if after:
        out += ("**JetStream without it (%s) acknowledges before syncing to disk** (it syncs "
                "on its own schedule, every two minutes by default), so those rows are not like "
                "for like. "
                % "; ".join(after))
    return out


by_system, valid = placements()
with open(out, "w") as f:
    f.write("# Performance\n\n")
    if not valid:
        f.write("**This comparison is invalid: the systems' data was not shown to be on one file "
                "system** (see \"Where each system kept its data\"). The figures are below for "
                "the record; no verdict is drawn from them.\n\n")
    f.write("Generated by `bash bench/compare.sh` on %s: %s.\n\n" % (datetime.date.today(), machine()))
    f.write("Method: every system runs on this machine on loopback, with the load generator "
            "beside it (it competes for the 2 cores). Trunkline (a fresh server and data directory "
            "per run) and RabbitMQ's STOMP plugin are driven by the same Rust STOMP client; "
            "RabbitMQ's native AMQP 0-9-1 by lapin; NATS JetStream (file storage) by async-nats, "
            "each NATS row naming the server's version and sync setting as the server reported "
            "them. Trunkline answers a SEND's receipt after its commit; RabbitMQ gets persistent "
            "messages (`persistent:true`, `delivery_mode` 2) into durable queues and confirms "
            "after writing them to disk. " + jetstream_method() +
            "Queues are deleted before and after each RabbitMQ run, the stream before and after "
            "each JetStream run. Systems alternate within each of %d repeat(s); each figure is the "
            "median, with the range (min–max) where there are several runs. Server CPU is "
            "user + system time of the server process over the run, per message consumed; peak "
            "RSS is the process's high-water mark (RabbitMQ's and NATS's span the whole "
            "session). † marks a system with an incomplete run: stopped at its duration limit, a "
            "publish failed or went unconfirmed, or its message ids did not check out (listed "
            "under \"Incomplete runs\"). The machine is shared and noisy: compare ratios within "
            "one run of the script, not across runs.\n\n" % repeats)
    if by_system:
        ids, bad = id_summary()
        f.write(ids + "\n")
        for b in bad:
            f.write("\n- %s" % b)
        f.write("\n\n")
    write_bar(f, valid)
    if by_system:
        write_placements(f, by_system, valid)
    writers = {"throughput": write_throughput, "latency": write_latency,
               "sync": write_sync, "fanout": write_fanout, "wsfanout": write_wsfanout}
    for s in ["throughput", "latency", "sync", "fanout", "wsfanout"]:
        if s in sections:
            writers[s](f)
    problems = run_problems()
    if problems:
        f.write("## Incomplete runs\n\n")
        for where, why in problems:
            f.write("- %s: %s\n" % (where, why))
        f.write("\n")
    f.write("## Elsewhere\n\nThe CI regression guard (`trunkline-bench guard`, server CPU per message against "
            "`bench/guard.json`) and other figures (HTTP durable path, routing, recovery) are in "
            "`bench/README.md`. Raw results of this run: `%s` (not kept in git).\n"
            % os.path.relpath(results))
print(open(out).read())
if not valid:
    print("the comparison is invalid: the systems' data was not shown to be on one file system",
          file=sys.stderr)
    sys.exit(3)
