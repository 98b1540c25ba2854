"""Shared by the interop tests: starting and stopping a real `trunkline` node, and the
HTTP calls every test file needs (tokens, clients, /receive).

The fixtures built on these (`node`, `admin_token`, `make_client`) are in conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
# Seconds for any single HTTP call.
HTTP_TIMEOUT = 10
# Seconds for the node to write listen.json after it is started.
START_TIMEOUT = 20
# Seconds for the node to exit after SIGTERM (it drains connections for up to 10 s).
STOP_TIMEOUT = 20


# ----- the node ----------------------------------------------------------------------


@dataclass
class Node:
    proc: subprocess.Popen
    data_dir: Path
    log_path: Path
    url: str
    backend_url: str
    # The STOMP listener as (host, port).
    stomp: tuple[str, int]
    admin: dict

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])


def binary() -> Path:
    default = REPO / "target" / "debug" / "trunkline"
    path = Path(os.environ.get("TRUNKLINE_BIN") or default)
    if not path.is_absolute():
        path = Path.cwd() / path
    return path


def stop_node(proc: subprocess.Popen) -> str:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT. Returns how the process ended."""
    if proc.poll() is not None:
        return f"had already exited with code {proc.returncode} before SIGTERM"
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return f"did not exit within {STOP_TIMEOUT} s of SIGTERM and was killed"
    return "exited cleanly" if code == 0 else f"exited with code {code} on SIGTERM"


def _wait_for_listen(proc: subprocess.Popen, data_dir: Path, log_path: Path) -> dict:
    listen_path = data_dir / "listen.json"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"trunkline exited with code {proc.returncode} while starting:\n"
                + log_path.read_text(errors="replace")
            )
        if listen_path.exists():
            try:
                return json.loads(listen_path.read_text())
            except (OSError, ValueError):
                pass  # being written; try again
        time.sleep(0.05)
    raise RuntimeError(
        f"trunkline wrote no {listen_path} within {START_TIMEOUT} s:\n"
        + log_path.read_text(errors="replace")
    )


def start_node(
    base: Path,
    config_toml: str | None = None,
    log_level: str = "info",
    http: str = "127.0.0.1:0",
) -> Node:
    """Starts `trunkline serve` with its data in `base/data` and its log in
    `base/trunkline.log`, all listeners on 127.0.0.1 port 0, and waits until it is up.
    `config_toml` (optional) is written to `base/trunkline.toml` and passed as --config;
    without it the node runs with its shipped defaults. `log_level` is its tracing filter;
    `http` its public listener (a fixed port for nodes whose peers must name it first)."""
    path = binary()
    if not path.is_file():
        raise FileNotFoundError(
            f"no trunkline binary at {path}: run `cargo build -p trunkline-cli` "
            "or set TRUNKLINE_BIN"
        )
    data_dir = base / "data"
    log_path = base / "trunkline.log"
    args = [
        str(path),
        "serve",
        "--data-dir",
        str(data_dir),
        "--http",
        http,
        "--backend",
        "127.0.0.1:0",
        "--stomp",
        "127.0.0.1:0",
    ]
    if config_toml is not None:
        config_path = base / "trunkline.toml"
        config_path.write_text(config_toml)
        args += ["--config", str(config_path)]
    # The node reads TRUNKLINE_* / SOAR_* settings from the environment: keep the
    # caller's out so the node runs with its shipped defaults.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRUNKLINE_", "SOAR_"))
    }
    env["TRUNKLINE_LOG_LEVEL"] = log_level
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        listen = _wait_for_listen(proc, data_dir, log_path)
        assert listen["pid"] == proc.pid, listen
        admin = json.loads((data_dir / "admin.json").read_text())
        stomp_host, stomp_port = listen["stomp"].rsplit(":", 1)
        n = Node(
            proc=proc,
            data_dir=data_dir,
            log_path=log_path,
            url=f"http://{listen['http']}",
            backend_url=f"http://{listen['backend']}",
            stomp=(stomp_host, int(stomp_port)),
            admin=admin,
        )
        r = requests.get(f"{n.url}/healthz", timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
    except BaseException:
        stop_node(proc)
        raise
    return n


# ----- HTTP helpers --------------------------------------------------------------------


def call(node: Node, method: str, path: str, token: str | None = None, **kw):
    """One request to the public listener, always with a timeout."""
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(
        method, node.url + path, headers=headers, timeout=HTTP_TIMEOUT, **kw
    )


def get_token(node: Node, client_id: str, secret: str) -> str:
    r = call(node, "GET", "/token", params={"client_id": client_id, "secret": secret})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def receive(node: Node, token: str, **params) -> list:
    r = call(node, "GET", "/receive", token, params=params)
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out, list), out
    return out


def uid() -> str:
    return uuid.uuid4().hex[:8]


@dataclass
class Client:
    client_id: str
    secret: str
    token: str
    created: dict = field(repr=False)
