#!/usr/bin/env bash
# Side by side, the same load shapes against every system: Trunkline and RabbitMQ's STOMP
# plugin driven by one STOMP client (trunkline-bench stomp-durable), RabbitMQ over AMQP
# 0-9-1 through lapin (amqp-durable), and NATS JetStream through async-nats
# (nats-durable); all share bench/load.rs. Systems alternate within each repeat; medians,
# ranges and ratios go to docs/performance.md.
#
#   bash bench/compare.sh [REPEATS]                   # default 3, every section
#   ONLY=latency bash bench/compare.sh 1              # some sections: throughput latency sync fanout wsfanout
#   SYSTEMS="trunkline amqp" bash bench/compare.sh 1  # some systems: trunkline rabbitmq amqp nats node
#   REPORT_ONLY=bench/results/compare-<time> bash bench/compare.sh 3   # rewrite the report only
#
# Sections: throughput (durable, as fast as the window allows, 16 B / 1 KiB / 64 KiB),
# latency (fixed rate, 1000 and 10000 msg/s, 1 KiB), sync (one publisher, window 1).
# fanout (live, one publisher to 4 subscribers: Trunkline STOMP /topic against NATS core).
# wsfanout (live over WebSocket, one publisher session to 1000 sessions: a Trunkline
# channel against a plain Node `ws` broadcast server, bench/node/ws-broadcast.mjs).
#
# With ONLY or SYSTEMS set, the report goes to bench/results/performance-partial.md, not
# docs/performance.md; OUT=FILE chooses either way. Every run's output and JSON are kept
# in bench/results/compare-<time>/. Every run is bounded in count (--messages), in time
# (--duration-limit) and by `timeout`.
#
# Installs rabbitmq-server and nats-server with apt if they are missing (as root), starts a
# private RabbitMQ (scripts/rabbitmq.sh) and a private nats-server on loopback when a
# section needs them, and stops them at the end. For wsfanout, installs npm `ws` in
# bench/node (npm ci) if it is not there.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
REPEATS="${1:-3}"
ALL_SYSTEMS="trunkline rabbitmq amqp nats node"
SECTIONS="${ONLY:-throughput latency sync fanout wsfanout}"
SECTIONS="${SECTIONS//,/ }"
SYSTEMS="${SYSTEMS:-$ALL_SYSTEMS}"
SYSTEMS="${SYSTEMS//,/ }"
if [ -n "${ONLY:-}" ] || [ "$SYSTEMS" != "$ALL_SYSTEMS" ]; then
    OUT="${OUT:-bench/results/performance-partial.md}"
else
    OUT="${OUT:-docs/performance.md}"
fi
for s in $SECTIONS; do
    case "$s" in throughput | latency | sync | fanout | wsfanout) ;; *) echo "unknown section $s (ONLY: throughput latency sync fanout wsfanout)" >&2; exit 2 ;; esac
done
for s in $SYSTEMS; do
    case "$s" in trunkline | rabbitmq | amqp | nats | node) ;; *) echo "unknown system $s (SYSTEMS: $ALL_SYSTEMS)" >&2; exit 2 ;; esac
done
# has WORD LIST: true if WORD is one of the words of LIST.
has() { case " $2 " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
case "$REPEATS" in '' | *[!0-9]* | 0) echo "REPEATS must be a positive number" >&2; exit 2 ;; esac

FAILED=0
if [ -n "${REPORT_ONLY:-}" ]; then
    # Only rewrite the report from an earlier run's results.
    RESULTS="$(cd "$REPORT_ONLY" && pwd)"
    NATS_PID=""
else
RESULTS="$ROOT/bench/results/compare-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS" "$(dirname "$OUT")"
# The commit measured, for the report ("+ changes" when the tree differs from it).
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    COMMIT="$COMMIT + changes"
fi
printf '%s\n' "$COMMIT" > "$RESULTS/commit"
NATS_PID=""
cleanup() {
    bash scripts/rabbitmq.sh stop >/dev/null 2>&1 || true
    if [ -n "$NATS_PID" ]; then kill "$NATS_PID" 2>/dev/null || true; fi
    rm -rf "$RESULTS/nats"
}
trap cleanup EXIT

# Which outside systems the chosen sections and systems need.
NEED_RMQ=""
NEED_NATS=""
for s in $SECTIONS; do
    case "$s" in
    throughput | latency | sync)
        if has rabbitmq "$SYSTEMS" || has amqp "$SYSTEMS"; then NEED_RMQ=1; fi
        if has nats "$SYSTEMS"; then NEED_NATS=1; fi
        ;;
    fanout) if has nats "$SYSTEMS"; then NEED_NATS=1; fi ;;
    esac
done
NEED_NODE=""
if has wsfanout "$SECTIONS" && has node "$SYSTEMS"; then NEED_NODE=1; fi

if [ -n "$NEED_RMQ" ] && ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "==> installing rabbitmq-server"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
fi
if [ -n "$NEED_NATS" ] && ! command -v nats-server >/dev/null 2>&1; then
    echo "==> installing nats-server"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server
fi
if [ -n "$NEED_NODE" ]; then
    command -v node >/dev/null 2>&1 || { echo "wsfanout needs Node.js (node) for the ws broadcast server" >&2; exit 1; }
    if [ ! -f bench/node/node_modules/ws/package.json ]; then
        echo "==> installing npm ws in bench/node"
        (cd bench/node && npm ci --no-audit --no-fund --silent)
    fi
fi
echo "==> building (release)"
cargo build --release -q -p trunkline-cli -p trunkline-bench
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH="$TARGET/release/trunkline-bench"
SERVER="$TARGET/release/trunkline"
RMQ="" AMQP="" RMQ_PID="" NATS_ARGS=()
if [ -n "$NEED_RMQ" ]; then
    echo "==> starting RabbitMQ"
    RMQ="$(bash scripts/rabbitmq.sh start)"
    AMQP="amqp://guest:guest@127.0.0.1:${RMQ_AMQP_PORT:-25673}/%2f"
    RMQ_PID="$(cat "${RMQ_DIR:-$ROOT/target/rabbitmq}/rabbitmq.pid")"
fi
NATS_PORT="${NATS_PORT:-24222}"
if [ -n "$NEED_NATS" ]; then
    mkdir -p "$RESULTS/nats"
    nats-server -a 127.0.0.1 -p "$NATS_PORT" -m $((NATS_PORT + 1)) -js -sd "$RESULTS/nats" > "$RESULTS/nats.log" 2>&1 &
    NATS_PID=$!
    sleep 1
    kill -0 "$NATS_PID" || { echo "nats-server did not start; see $RESULTS/nats.log" >&2; exit 1; }
    NATS_ARGS=(--nats "127.0.0.1:$NATS_PORT" --server-pid "$NATS_PID")
fi

# section|name|load arguments|--duration-limit (s). Counts keep each run to a few
# seconds: the latency runs last messages ÷ rate (8 s and 5 s) when the system keeps up.
SCENARIOS=(
    "throughput|1KiB|--size 1024 --messages 20000|60"
    "throughput|16B|--size 16 --messages 40000|60"
    "throughput|64KiB|--size 65536 --messages 2000|60"
    "latency|1000|--size 1024 --rate 1000 --messages 8000|30"
    "latency|10000|--size 1024 --rate 10000 --messages 50000|30"
    "sync|1KiB|--size 1024 --publishers 1 --window 1 --consumers 1 --messages 2000|15"
)

# One run: writes $RESULTS/<section>-<name>-<system>-<i>.{log,json}.
run_one() {
    local section="$1" name="$2" system="$3" args="$4" limit="$5" i="$6"
    local base="$RESULTS/$section-$name-$system-$i" rc=0
    local cmd
    case "$system" in
    trunkline) cmd=("$BENCH" stomp-durable --target trunkline --server-bin "$SERVER") ;;
    rabbitmq) cmd=("$BENCH" stomp-durable --target rabbitmq --rabbitmq "$RMQ" --amqp "$AMQP" --server-pid "$RMQ_PID") ;;
    amqp) cmd=("$BENCH" amqp-durable --amqp "$AMQP" --server-pid "$RMQ_PID") ;;
    nats) cmd=("$BENCH" nats-durable --nats "127.0.0.1:$NATS_PORT" --server-pid "$NATS_PID") ;;
    *) return 0 ;; # node takes part in wsfanout only
    esac
    echo "==> $section $name, $system, run $i"
    # shellcheck disable=SC2086
    timeout -k 10 $((limit + 60)) "${cmd[@]}" $args --duration-limit "$limit" \
        --json "$base.json" > "$base.log" 2>&1 || rc=$?
    head -1 "$base.log"
    case "$rc" in
    0) ;;
    2) echo "    (incomplete: the run hit --duration-limit $limit s)" ;;
    *)
        echo "    FAILED (exit $rc); see $base.log"
        rm -f "$base.json"
        FAILED=$((FAILED + 1))
        ;;
    esac
}

run_section() {
    local section="$1" s name rest args limit i system
    for s in "${SCENARIOS[@]}"; do
        [ "${s%%|*}" = "$section" ] || continue
        rest="${s#*|}"
        name="${rest%%|*}"
        rest="${rest#*|}"
        args="${rest%|*}"
        limit="${rest##*|}"
        for i in $(seq "$REPEATS"); do
            for system in $SYSTEMS; do
                run_one "$section" "$name" "$system" "$args" "$limit" "$i"
            done
        done
    done
}

# Live fan-out runs of the subcommand <section> (its name too), for the systems it takes:
#   run_live <section> <name> "<systems>" <arguments...>
# writes $RESULTS/<section>-<name>-<system>-<i>.{log,json}.
run_live() {
    local section="$1" name="$2" takes="$3" i system base rc
    shift 3
    for i in $(seq "$REPEATS"); do
        for system in $SYSTEMS; do
            has "$system" "$takes" || continue
            base="$RESULTS/$section-$name-$system-$i"
            rc=0
            echo "==> $section, $system, run $i"
            timeout -k 10 180 "$BENCH" "$section" --target "$system" "$@" \
                --duration-limit 120 --json "$base.json" > "$base.log" 2>&1 || rc=$?
            grep -m1 "^$section" "$base.log" || tail -3 "$base.log"
            if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then
                echo "    FAILED (exit $rc); see $base.log"
                rm -f "$base.json"
                FAILED=$((FAILED + 1))
            fi
        done
    done
}

# Live fan-out, one publisher to 4 subscribers (trunkline-bench fanout): Trunkline's live
# STOMP /topic subscriptions against NATS core (the nats-server above; core pub/sub does not
# touch JetStream).
FANOUT_ARGS="${FANOUT_ARGS:---subscribers 4 --size 1024 --messages 200000 --credit 500}"
# WebSocket fan-out, one publisher session to 1000 sessions (trunkline-bench wsfanout):
# a Trunkline public channel against the plain Node `ws` broadcast server; both servers
# are started by the bench for each run.
WSFANOUT_ARGS="${WSFANOUT_ARGS:---sessions 1000 --size 1024 --messages 2000 --credit 50}"

for section in $SECTIONS; do
    case "$section" in
    fanout)
        # shellcheck disable=SC2086
        run_live fanout 1to4 "trunkline nats" --server-bin "$SERVER" "${NATS_ARGS[@]}" $FANOUT_ARGS
        ;;
    wsfanout)
        # shellcheck disable=SC2086
        run_live wsfanout 1to1000 "trunkline node" --server-bin "$SERVER" \
            --node-script "$ROOT/bench/node/ws-broadcast.mjs" $WSFANOUT_ARGS
        ;;
    *) run_section "$section" ;;
    esac
done
fi

python3 bench/report.py "$RESULTS" "$REPEATS" "$OUT" "$SECTIONS" "$SYSTEMS"
echo "==> report in $OUT; runs in $RESULTS"
if [ "$FAILED" -gt 0 ]; then
    echo "$FAILED run(s) failed" >&2
    exit 1
fi
