#!/usr/bin/env bash
# Starts, stops or restarts nodes of a private three-node RabbitMQ cluster on loopback
# (Debian's rabbitmq-server), for the scale-out tests and benchmarks. Node N (1 to 3) is
# `trunkline-cN@localhost`, with its state under $RMQC_DIR/nN (default
# target/rabbitmq-cluster) and its AMQP port $RMQC_BASE_PORT + N (default 25780 + N).
#
#   scripts/rabbitmq-cluster.sh start          # prints the three AMQP URLs when clustered
#   scripts/rabbitmq-cluster.sh stop           # stops every node and forgets the cluster
#   scripts/rabbitmq-cluster.sh stop-node N    # stops node N only (state kept)
#   scripts/rabbitmq-cluster.sh start-node N   # starts node N again; it rejoins
#
# The nodes find each other with classic config peer discovery on first boot.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${RMQC_DIR:-$root/target/rabbitmq-cluster}"
base="${RMQC_BASE_PORT:-25780}"
export ERL_EPMD_ADDRESS=127.0.0.1
export HOME="${HOME:-/root}"

node_env() {
    local n="$1"
    export RABBITMQ_NODENAME="trunkline-c$n@localhost"
    export RABBITMQ_CONFIG_FILE="$dir/n$n/rabbitmq"
    export RABBITMQ_MNESIA_BASE="$dir/n$n/mnesia"
    export RABBITMQ_LOG_BASE="$dir/n$n/log"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/n$n/enabled_plugins"
    export RABBITMQ_PID_FILE="$dir/n$n/rabbitmq.pid"
    export RABBITMQ_DIST_PORT=$((base + 10 + n))
}

launch() {
    local n="$1"
    node_env "$n"
    mkdir -p "$dir/n$n/mnesia" "$dir/n$n/log"
    cat > "$dir/n$n/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$((base + n))
distribution.listener.interface = 127.0.0.1
loopback_users = none
management_agent.disable_metrics_collector = true
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = trunkline-c1@localhost
cluster_formation.classic_config.nodes.2 = trunkline-c2@localhost
cluster_formation.classic_config.nodes.3 = trunkline-c3@localhost
CONF
    : > "$dir/n$n/enabled_plugins"
    if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq:rabbitmq "$dir"; fi
    bash "$root/scripts/rabbitmq-launch.sh"
}

await() {
    local n="$1"
    node_env "$n"
    local deadline=$((SECONDS + 180))
    until rabbitmqctl -n "$RABBITMQ_NODENAME" await_startup >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "RabbitMQ node $n did not start; see $dir/n$n/log" >&2
            exit 1
        fi
        sleep 1
    done
}

stop_node() {
    local n="$1"
    node_env "$n"
    local pid
    pid="$(cat "$RABBITMQ_PID_FILE" 2>/dev/null || true)"
    rabbitmqctl -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || true
    for _ in $(seq 30); do
        if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
        sleep 1
    done
}

case "${1:-}" in
start)
    command -v rabbitmq-server >/dev/null || { echo "rabbitmq-server is not installed" >&2; exit 1; }
    for n in 1 2 3; do launch "$n"; done
    for n in 1 2 3; do await "$n"; done
    # Every node must see the other two before the cluster is used.
    node_env 1
    deadline=$((SECONDS + 120))
    until [ "$(rabbitmqctl -n "$RABBITMQ_NODENAME" eval 'length(rabbit_nodes:all_running()).' 2>/dev/null)" = 3 ]; do
        if ((SECONDS > deadline)); then
            echo "the three RabbitMQ nodes did not form a cluster; see $dir/n*/log" >&2
            exit 1
        fi
        sleep 1
    done
    for n in 1 2 3; do echo "amqp://guest:guest@127.0.0.1:$((base + n))/%2f"; done
    ;;
start-node)
    launch "$2"
    await "$2"
    ;;
stop-node)
    stop_node "$2"
    ;;
stop)
    for n in 3 2 1; do stop_node "$n"; done
    rm -rf "$dir"
    # The port mapper the nodes started goes too, unless another node still uses it.
    if ! epmd -names 2>/dev/null | grep -q '^name '; then epmd -kill >/dev/null 2>&1 || true; fi
    ;;
*)
    echo "usage: $0 start|stop|start-node N|stop-node N" >&2
    exit 2
    ;;
esac
