#!/usr/bin/env bash
# Property-based test of the HTTP API against its own OpenAPI document: starts a real
# `trunkline` node (127.0.0.1, port 0, a temporary data dir), runs Schemathesis with all
# checks against GET /openapi.json of both listeners, then stops the node. Fails if
# Schemathesis reports anything, or if the node died, stopped answering /healthz or lost
# its admin during a run. Bounded: a few examples per operation, and a time limit on
# each run and on every request. Run by scripts/test.sh.
#
#   bash tests/interop/schemathesis.sh
#
# Environment (all optional):
#   TRUNKLINE_BIN     binary to test (default target/debug/trunkline, built if missing)
#   ST_MAX_EXAMPLES   examples per operation and phase (default 20)
#   ST_RUN_TIMEOUT    seconds before one Schemathesis run is killed (default 150)
#   ST_SEED           Hypothesis seed (default 1; the failures print their own replay)
#   ST_VENV           venv for Schemathesis (default target/schemathesis-venv)
#   ST_REPORT_DIR     where the JUnit reports go (default: the temporary directory)
#   ST_KEEP=1         keep the temporary directory (node log, data dir, reports)
#   ST_LISTENERS      "public backend" (default), or just one of them
#
# Strings are generated as ASCII: topic, pattern, client name and message_id limits are
# in UTF-8 bytes, which JSON Schema's maxLength (characters) cannot express.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tests/interop"
MAX_EXAMPLES="${ST_MAX_EXAMPLES:-20}"
RUN_TIMEOUT="${ST_RUN_TIMEOUT:-150}"
SEED="${ST_SEED:-1}"
VENV="${ST_VENV:-$ROOT/target/schemathesis-venv}"
LISTENERS="${ST_LISTENERS:-public backend}"
# Seconds for the node to write listen.json, and to exit after SIGTERM (it drains
# connections for up to 10 s).
START_TIMEOUT=20
STOP_TIMEOUT=20

BIN="${TRUNKLINE_BIN:-$ROOT/target/debug/trunkline}"
if [[ ! -x "$BIN" ]]; then
    echo "==> building trunkline (cargo build -p trunkline-cli)"
    (cd "$ROOT" && cargo build -p trunkline-cli)
fi
[[ -x "$BIN" ]] || { echo "error: no trunkline binary at $BIN" >&2; exit 1; }

echo "==> Schemathesis venv at $VENV"
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    "${PYTHON:-python3}" -m venv --clear "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$HERE/requirements-schemathesis.txt"
ST="$VENV/bin/schemathesis"
echo "    $("$ST" --version)"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/trunkline-schemathesis.XXXXXX")"
REPORT_DIR="${ST_REPORT_DIR:-$TMP/reports}"
mkdir -p "$REPORT_DIR"
DATA="$TMP/data"
LOG="$TMP/trunkline.log"
NODE_PID=""

stop_node() {
    [[ -n "$NODE_PID" ]] || return 0
    if kill -0 "$NODE_PID" 2>/dev/null; then
        kill -TERM "$NODE_PID" 2>/dev/null || true
        for _ in $(seq $((STOP_TIMEOUT * 10))); do
            kill -0 "$NODE_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$NODE_PID" 2>/dev/null; then
            echo "warning: trunkline did not stop within ${STOP_TIMEOUT} s of SIGTERM; killing it" >&2
            kill -KILL "$NODE_PID" 2>/dev/null || true
        fi
    fi
    wait "$NODE_PID" 2>/dev/null || true
    NODE_PID=""
}
cleanup() {
    stop_node
    if [[ "${ST_KEEP:-}" == 1 ]]; then
        echo "(kept $TMP)"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

json_field() { "$VENV/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# Long polls (GET /receive?wait=) are capped at 2 s so that no request runs long.
cat >"$TMP/trunkline.toml" <<'EOF'
[http_limits]
max_wait_secs = 2
EOF

echo "==> starting trunkline ($BIN)"
# The node reads TRUNKLINE_* / SOAR_* settings from the environment: keep the caller's out.
unset_env=()
while IFS='=' read -r name _; do
    [[ "$name" == TRUNKLINE_* || "$name" == SOAR_* ]] && unset_env+=(-u "$name")
done < <(env)
env "${unset_env[@]}" TRUNKLINE_LOG_LEVEL=info "$BIN" serve --config "$TMP/trunkline.toml" \
    --data-dir "$DATA" --http 127.0.0.1:0 --backend 127.0.0.1:0 --stomp 127.0.0.1:0 \
    </dev/null >"$LOG" 2>&1 &
NODE_PID=$!
for _ in $(seq $((START_TIMEOUT * 10))); do
    [[ -s "$DATA/listen.json" && -s "$DATA/admin.json" ]] && break
    kill -0 "$NODE_PID" 2>/dev/null || { echo "error: trunkline exited while starting:" >&2; cat "$LOG" >&2; exit 1; }
    sleep 0.1
done
sleep 0.2 # listen.json may be in the middle of being written
PUBLIC="http://$(json_field "$DATA/listen.json" http)"
BACKEND="http://$(json_field "$DATA/listen.json" backend)"
SECRET="$(json_field "$DATA/admin.json" secret)"
BACKEND_KEY="$(cat "$DATA/backend.key")"
TOKEN="$(curl -fsS -m 10 -G "$PUBLIC/token" --data-urlencode client_id=admin \
    --data-urlencode "secret=$SECRET" | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["token"])')"
echo "    public $PUBLIC, backend $BACKEND"

# The node is up, answers /healthz, and the run's admin token still works.
node_ok() {
    local ok=0
    if ! kill -0 "$NODE_PID" 2>/dev/null; then
        echo "FAIL: trunkline is no longer running" >&2
        return 1
    fi
    curl -fsS -m 10 -o /dev/null "$PUBLIC/healthz" || { echo "FAIL: /healthz does not answer 200" >&2; ok=1; }
    curl -fsS -m 10 -o /dev/null -H "Authorization: Bearer $TOKEN" "$PUBLIC/client/admin" ||
        { echo "FAIL: the admin token no longer works (was the admin deleted or rotated?)" >&2; ok=1; }
    return $ok
}

status=0
for listener in $LISTENERS; do
    case "$listener" in
        public) url="$PUBLIC"; headers=(-H "Authorization: Bearer $TOKEN") ;;
        backend) url="$BACKEND"; headers=(-H "Authorization: Bearer $TOKEN" -H "X-Backend-Key: $BACKEND_KEY") ;;
        *) echo "error: unknown listener '$listener'" >&2; exit 2 ;;
    esac
    echo "==> schemathesis against the $listener listener ($url/openapi.json)"
    # GET /ws is a WebSocket upgrade: a plain HTTP fuzzer cannot make the handshake, so
    # every schema-valid request it sends is rightly refused (426). The sessions are tested
    # by crates/cli/tests/ws.rs and tests/interop/test_ws.py instead.
    rc=0
    (cd "$TMP" && SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$HERE" \
        timeout --kill-after=10 "$RUN_TIMEOUT" "$ST" run "$url/openapi.json" \
        "${headers[@]}" \
        --checks all \
        --exclude-path /ws \
        --max-examples "$MAX_EXAMPLES" \
        --seed "$SEED" \
        --generation-codec ascii \
        --generation-database none \
        --request-timeout 15 \
        --max-failures 100 \
        --no-color \
        --report junit --report-junit-path "$REPORT_DIR/schemathesis-$listener.xml") || rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        echo "FAIL: schemathesis did not finish within ${RUN_TIMEOUT} s" >&2
    elif [[ $rc -ne 0 ]]; then
        echo "FAIL: schemathesis reported failures against the $listener listener (exit $rc)" >&2
    fi
    [[ $rc -eq 0 ]] || status=1
    node_ok || status=1
done

if [[ $status -ne 0 ]]; then
    echo "---- last lines of the node log ($LOG) ----"
    tail -n 30 "$LOG" || true
fi
stop_node
if grep -qE 'panicked|ERROR' "$LOG"; then
    echo "FAIL: the node logged errors or panics:" >&2
    grep -E 'panicked|ERROR' "$LOG" | head -n 20 >&2
    status=1
fi
if [[ $status -eq 0 ]]; then
    echo "schemathesis: 1 passed, 0 failed"
else
    echo "schemathesis: 0 passed, 1 failed"
fi
exit $status
