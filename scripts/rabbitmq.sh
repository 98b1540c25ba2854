#!/usr/bin/env bash
# Starts or stops a private RabbitMQ (Debian's rabbitmq-server) on loopback with the STOMP
# plugin, for tests and benchmarks. State lives under $RMQ_DIR (default target/rabbitmq).
#
#   scripts/rabbitmq.sh start     # prints the STOMP address (host:port) when ready
#   scripts/rabbitmq.sh stop
#
# Ports: AMQP $RMQ_AMQP_PORT (default 25673), STOMP $RMQ_STOMP_PORT (default 25674).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${RMQ_DIR:-$root/target/rabbitmq}"
amqp="${RMQ_AMQP_PORT:-25673}"
stomp="${RMQ_STOMP_PORT:-25674}"
export RABBITMQ_NODENAME="${RMQ_NODENAME:-trunkline-test@localhost}"
export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
export RABBITMQ_MNESIA_BASE="$dir/mnesia"
export RABBITMQ_LOG_BASE="$dir/log"
export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
export RABBITMQ_DIST_PORT="${RMQ_DIST_PORT:-25675}"
export ERL_EPMD_ADDRESS=127.0.0.1
export HOME="${HOME:-/root}"

case "${1:-}" in
start)
    command -v rabbitmq-server >/dev/null || { echo "rabbitmq-server is not installed" >&2; exit 1; }
    mkdir -p "$dir/mnesia" "$dir/log"
    cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$amqp
stomp.listeners.tcp.1 = 127.0.0.1:$stomp
distribution.listener.interface = 127.0.0.1
loopback_users = none
CONF
    rabbitmq-plugins enable --offline rabbitmq_stomp >/dev/null
    if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq:rabbitmq "$dir"; fi
    bash "$root/scripts/rabbitmq-launch.sh"
    # await_startup fails at once until the node has registered; retry for two minutes.
    deadline=$((SECONDS + 120))
    until rabbitmqctl await_startup >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "RabbitMQ did not start; see $dir/log" >&2
            exit 1
        fi
        sleep 1
    done
    echo "127.0.0.1:$stomp"
    ;;
stop)
    pid="$(cat "$RABBITMQ_PID_FILE" 2>/dev/null || true)"
    rabbitmqctl stop >/dev/null 2>&1 || true
    # Wait for the node to go, then stop the port mapper it started (if no node is left).
    for _ in $(seq 30); do
        if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
        sleep 1
    done
    if ! epmd -names 2>/dev/null | grep -q '^name '; then epmd -kill >/dev/null 2>&1 || true; fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
