"""bench/scaleout-results.md from the runs of bench/scaleout.sh.

    python3 bench/scaleout.py RESULTS REPEATS

Every number in the report is computed here from the runs' JSON.
"""
import json, os, platform, statistics, sys

results, repeats = sys.argv[1], int(sys.argv[2])
SYSTEMS = [("amqp", "RabbitMQ AMQP 0-9-1 (quorum queues)"),
           ("trunkline-1", "1 Trunkline node (STOMP) over RabbitMQ"),
           ("trunkline-3", "3 Trunkline nodes (STOMP) over RabbitMQ")]


def runs(system):
    rs = []
    for i in range(1, repeats + 1):
        p = os.path.join(results, f"{system}-{i}.json")
        if os.path.exists(p):
            with open(p) as f:
                rs.append(json.load(f))
    return rs


def med(rs, key):
    xs = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=1):
    return "–" if x is None else f"{x:,.{digits}f}"


base = runs("amqp")
rabbit_alone = med(base, "server_cpu_us_per_msg")
print("# Scale-out: Trunkline nodes over RabbitMQ, against RabbitMQ's own AMQP path\n")
print(f"Made by `bash bench/scaleout.sh {repeats}` on {platform.node()} "
      f"({os.cpu_count()} cores). Durable messages of 1 KiB, 4 publishers (window 100) and "
      "4 consumers (prefetch 100), every message confirmed, received and acked; one "
      "three-node RabbitMQ cluster on this machine under every system. Medians of "
      f"{repeats} repeats; the systems alternate within each repeat.\n")
print("| system | msgs/s | Trunkline CPU µs/msg | RabbitMQ CPU µs/msg | total CPU µs/msg | Trunkline's CPU per message, against RabbitMQ's alone | complete runs |")
print("|---|---|---|---|---|---|---|")
for key, name in SYSTEMS:
    rs = runs(key)
    complete = sum(1 for r in rs if r.get("complete"))
    if key == "amqp":
        rabbit, front = med(rs, "server_cpu_us_per_msg"), None
    else:
        rabbit, front = med(rs, "broker_cpu_us_per_msg"), med(rs, "server_cpu_us_per_msg")
    total = (rabbit or 0) + (front or 0) if rabbit is not None else None
    share = f"{100 * front / rabbit_alone:.0f}%" if front is not None and rabbit_alone else "–"
    print(f"| {name} | {fmt(med(rs, 'msgs_per_s'), 0)} | {fmt(front)} | {fmt(rabbit)} | "
          f"{fmt(total)} | {share} | {complete} of {len(rs)} |")
print()
if rabbit_alone:
    for key, name in SYSTEMS[1:]:
        front = med(runs(key), "server_cpu_us_per_msg")
        if front is None:
            continue
        verdict = "within" if front <= 0.25 * rabbit_alone else "over"
        print(f"- {name}: Trunkline spends {front:.1f} µs of CPU per message, "
              f"{100 * front / rabbit_alone:.0f}% of the {rabbit_alone:.1f} µs RabbitMQ spends "
              f"per message on its own AMQP path: {verdict} the aim of at most 25%.")
print("\nRabbitMQ's CPU counts every node of the cluster (each quorum queue has three "
      "replicas); Trunkline's counts every Trunkline node. The load generator runs on the "
      "same machine, so the systems share its cores with it.")
