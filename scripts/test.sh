#!/usr/bin/env bash
# The one test command of the project: the Rust workspace tests, then the interop tests
# (pytest + requests) against the real `trunkline` binary.
#
#   bash scripts/test.sh            # from any directory
#
# Exits non-zero if any test fails. The Python tests run in a venv at .venv (created on
# first use); TRUNKLINE_BIN may point at another binary to test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# A private RabbitMQ for the STOMP client's interoperability test, when it is installed
# (.ci/run installs it; elsewhere the test says it was skipped).
if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "==> starting RabbitMQ (scripts/rabbitmq.sh)"
    if addr="$(bash scripts/rabbitmq.sh start)"; then
        export TRUNKLINE_TEST_RABBITMQ_STOMP="$addr"
        trap 'bash scripts/rabbitmq.sh stop' EXIT
    fi
fi

echo "==> Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
    # nextest does not run doctests.
    cargo test --workspace --doc
else
    echo "(cargo-nextest not found; using cargo test)"
    cargo test --workspace
fi

echo "==> building trunkline for the interop tests"
cargo build -p trunkline-cli
BIN="${TRUNKLINE_BIN:-$ROOT/target/debug/trunkline}"
if [[ ! -x "$BIN" ]]; then
    echo "error: no trunkline binary at $BIN after the build" >&2
    exit 1
fi

echo "==> schemathesis: the HTTP API against its own OpenAPI document"
TRUNKLINE_BIN="$BIN" bash tests/interop/schemathesis.sh

echo "==> interop tests"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    # Missing, or left broken by a Python that moved: (re)create it.
    "$PYTHON" -m venv --clear "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r tests/interop/requirements.txt
TRUNKLINE_BIN="$BIN" "$VENV/bin/python" -m pytest -q tests/interop
