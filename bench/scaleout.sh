#!/usr/bin/env bash
# Scale-out numbers (docs/scale-out.md): durable 1 KiB messages through one and through
# three Trunkline nodes over one three-node RabbitMQ cluster (STOMP in, quorum queues
# under), against RabbitMQ's own AMQP 0-9-1 path to the same cluster (quorum queues too,
# through lapin), all in one run and on one machine. Systems alternate within each repeat.
#
#   bash bench/scaleout.sh [REPEATS]        # default 3; MESSAGES=20000 by default
#
# Each run measures messages per second (consumed and acked) and CPU per message: of the
# Trunkline nodes, and of RabbitMQ (every node of the cluster). bench/scaleout.py puts
# the runs together into bench/scaleout-results.md: medians, and Trunkline's CPU per
# message as a share of what RabbitMQ spends per message on its own AMQP path (the
# issue's aim: at most 25% more). Starts the cluster with scripts/rabbitmq-cluster.sh
# (RabbitMQ nodes trunkline-c1..3) and stops it at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
REPEATS="${1:-3}"
MESSAGES="${MESSAGES:-20000}"
OUT="${OUT:-bench/scaleout-results.md}"

cargo build --release -q -p trunkline-cli -p trunkline-bench
BENCH=target/release/trunkline-bench
urls="$(bash scripts/rabbitmq-cluster.sh start | paste -sd, -)"
trap 'bash scripts/rabbitmq-cluster.sh stop' EXIT
first="${urls%%,*}"
dir="bench/results/scaleout-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$dir"
shape=(--messages "$MESSAGES" --size 1024 --publishers 4 --consumers 4 --window 100
    --prefetch 100 --duration-limit 180)

for r in $(seq "$REPEATS"); do
    echo "==> repeat $r of $REPEATS: RabbitMQ AMQP (quorum queues)"
    timeout 300 "$BENCH" amqp-durable --quorum --amqp "$first" "${shape[@]}" \
        --json "$dir/amqp-$r.json" | tee "$dir/amqp-$r.txt" || true
    for n in 1 3; do
        echo "==> repeat $r of $REPEATS: $n Trunkline node(s) over RabbitMQ"
        timeout 300 "$BENCH" stomp-durable --target trunkline --server-bin target/release/trunkline \
            --broker "$urls" --nodes "$n" "${shape[@]}" \
            --json "$dir/trunkline-$n-$r.json" | tee "$dir/trunkline-$n-$r.txt" || true
    done
done
python3 bench/scaleout.py "$dir" "$REPEATS" > "$OUT"
echo "==> $OUT"
cat "$OUT"
