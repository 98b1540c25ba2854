"""Interop tests: RMB's Redis API, as applications written for threefoldtech's `rmb-peer`
use it, against `trunkline peer` gateways and the node's relay.

Each gateway has a redis-server of its own (started here on a free loopback port, as
RMB runs one per peer). The applications are written the way RMB's own tools are
(`tools/rmb_tester/rmb_tester.py` sends, `msg_handler.py` serves a command): JSON pushed
with LPUSH, popped with BLPOP, `dat` in standard base64. The twins' keys are made with
`trunkline twin keygen` and registered with `trunkline twin register`, as an operator
would. Every wait is bounded in time, every loop in count.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from nacl.signing import SigningKey

from trunkline_node import Node, binary, start_node, stop_node

WAIT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    proc: subprocess.Popen
    port: int

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=0)


def start_redis(tmp: Path, port: int | None = None) -> RedisServer:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    port = port or free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    r = RedisServer(proc, port)
    deadline = time.time() + WAIT
    while True:
        try:
            r.client().ping()
            return r
        except redis.ConnectionError:
            assert time.time() < deadline, "redis-server did not start"
            time.sleep(0.05)


def run(*args: str) -> str:
    out = subprocess.run([str(binary()), *args], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    return out.stdout


@dataclass
class Twin:
    id: int
    seed: Path


def new_twin(node: Node, tmp: Path, relays: list[str]) -> Twin:
    seed = tmp / f"twin-{uuid.uuid4().hex[:6]}.seed"
    key = run("twin", "keygen", "--seed-file", str(seed)).strip()
    assert key.startswith("ed25519:"), key
    args = ["twin", "register", "--credentials", str(node.data_dir / "admin.json"),
            "--api", node.url, "--seed-file", str(seed)]
    for r in relays:
        args += ["--relay", r]
    info = json.loads(run(*args))
    assert info["key"] == key
    return Twin(info["id"], seed)


@dataclass
class Gateway:
    proc: subprocess.Popen
    redis: RedisServer
    twin: Twin
    log: Path

    def r(self) -> redis.Redis:
        return self.redis.client()


def start_gateway(tmp: Path, twin: Twin, relay: str, registry: str | None = None) -> Gateway:
    rs = start_redis(tmp)
    log = tmp / f"peer-{twin.id}.log"
    args = [str(binary()), "peer", "--seed-file", str(twin.seed), "--relay", relay,
            "--redis", f"redis://127.0.0.1:{rs.port}"]
    if registry:
        args += ["--registry", registry]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    g = Gateway(proc, rs, twin, log)
    # Up once it answers rmb.version to itself.
    resp = request_all(g, [message("rmb.version", [twin.id], "")], timeout=WAIT)
    assert resp and resp[0]["err"] is None, (resp, log.read_text()[-2000:])
    return g


def stop_gateway(g: Gateway) -> None:
    for p in (g.proc, g.redis.proc):
        p.terminate()
        try:
            p.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ----- RMB's JSON shapes, as rmb_tester.py and msg_handler.py write them ---------------


def message(cmd: str, dst: list[int], data: str, exp: int = 120, ret: str | None = None,
            ref: str = "") -> dict:
    return {
        "ver": 1,
        "ref": ref,
        "cmd": cmd,
        "exp": exp,
        "dat": base64.b64encode(data.encode()).decode(),
        "dst": dst,
        "ret": ret or str(uuid.uuid4()),
        "shm": "application/json",
        "now": int(time.time()),
    }


def request_all(g: Gateway, msgs: list[dict], timeout: float = WAIT) -> list[dict]:
    """Pushes every message to msgbus.system.local, then waits for one response per
    destination on their `ret` queues."""
    r = g.r()
    expected = sum(len(m["dst"]) for m in msgs)
    queues = list({m["ret"] for m in msgs})
    with r.pipeline() as pipe:
        for m in msgs:
            pipe.lpush("msgbus.system.local", json.dumps(m))
        pipe.execute()
    out = []
    deadline = time.time() + timeout
    while len(out) < expected and time.time() < deadline:
        got = r.blpop(queues, timeout=max(1, int(deadline - time.time())))
        if got:
            out.append(json.loads(got[1]))
    return out


class Echo:
    """msg_handler.py: pops `msgbus.<cmd>`, swaps src and dst, pushes the message back
    to its `ret` (msgbus.system.reply), keeping every other key as it came."""

    def __init__(self, g: Gateway, cmd: str = "testme", delay: float = 0.0):
        self.r = g.r()
        self.cmd = cmd
        self.delay = delay
        self.seen: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            got = self.r.blpop([f"msgbus.{self.cmd}"], timeout=1)
            if not got:
                continue
            msg = json.loads(got[1])
            self.seen.append(dict(msg))
            if self.delay:
                time.sleep(self.delay)
            msg["now"] = int(time.time())
            msg["dst"], msg["src"] = msg["src"], msg.get("dst")
            self.r.lpush(msg["ret"], json.dumps(msg))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=WAIT)


# ----- one relay ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(node: Node, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rmb")
    alice = new_twin(node, tmp, [node.url])
    bob = new_twin(node, tmp, [node.url])
    ga = start_gateway(tmp, alice, node.url)
    gb = start_gateway(tmp, bob, node.url)
    try:
        yield ga, gb
    finally:
        stop_gateway(ga)
        stop_gateway(gb)


def test_requests_are_answered_as_rmb_tester_expects(pair):
    ga, gb = pair
    echo = Echo(gb)
    try:
        ret = str(uuid.uuid4())
        # rmb_tester sends one message N times: one ret queue, empty ref.
        msgs = [message("testme", [gb.twin.id], f"payload {i}", ret=ret) for i in range(200)]
        responses = request_all(ga, msgs, timeout=60)
    finally:
        echo.close()
    assert len(responses) == 200
    assert all(r["err"] is None for r in responses), responses[:3]
    assert {r["src"] for r in responses} == {str(gb.twin.id)}
    assert {r["ref"] for r in responses} == {""}
    got = sorted(base64.b64decode(r["dat"]).decode() for r in responses)
    assert got == sorted(f"payload {i}" for i in range(200))
    # What the service saw: RMB's incoming request.
    req = echo.seen[0]
    assert req["ver"] == 1 and req["cmd"] == "testme" and req["ret"] == "msgbus.system.reply"
    assert req["src"] == str(ga.twin.id)
    assert req["shm"] == "application/json"
    assert req["exp"] <= 120 and isinstance(req["now"], int)
    assert uuid.UUID(req["ref"])


def test_missing_optional_keys_and_unknown_ones(pair):
    ga, gb = pair
    echo = Echo(gb, "bare")
    try:
        m = {"cmd": "bare", "dst": [gb.twin.id], "ret": str(uuid.uuid4()), "exp": 60,
             "dat": base64.b64encode(b"x").decode(), "now": int(time.time()),
             "something_new": [1, 2]}
        (resp,) = request_all(ga, [m])
        m2 = message("bare", [gb.twin.id], "y", ref="my-ref-7")
        (resp2,) = request_all(ga, [m2])
    finally:
        echo.close()
    assert resp["err"] is None and base64.b64decode(resp["dat"]) == b"x"
    assert resp["ref"] is None
    assert resp2["ref"] == "my-ref-7"
    assert echo.seen[0]["tag"] is None and echo.seen[0]["shm"] is None


def test_rmb_version_is_answered_by_the_remote_gateway(pair):
    ga, gb = pair
    (resp,) = request_all(ga, [message("rmb.version", [gb.twin.id], "")])
    assert resp["err"] is None and resp["src"] == str(gb.twin.id)
    assert isinstance(json.loads(base64.b64decode(resp["dat"])), str)
    assert gb.r().llen("msgbus.rmb.version") == 0


def test_an_unknown_twin_is_answered_with_code_103(pair):
    ga, _ = pair
    (resp,) = request_all(ga, [message("testme", [999_999], "x")])
    assert resp["err"]["code"] == 103, resp
    assert resp["src"] == ""


def test_own_twin_and_large_payloads(pair):
    ga, _ = pair
    echo = Echo(ga, "big")
    try:
        data = "z" * (600 * 1024)
        (resp,) = request_all(ga, [message("big", [ga.twin.id], data)], timeout=60)
    finally:
        echo.close()
    assert resp["err"] is None
    assert base64.b64decode(resp["dat"]).decode() == data


def test_an_expired_request_is_dropped(pair):
    ga, gb = pair
    echo = Echo(gb, "late")
    try:
        m = message("late", [gb.twin.id], "x", exp=60)
        m["now"] = int(time.time()) - 600
        assert request_all(ga, [m], timeout=3) == []
    finally:
        echo.close()
    assert echo.seen == []


def test_a_reply_after_its_request_expired_is_dropped(pair):
    ga, gb = pair
    echo = Echo(gb, "slow", delay=4.0)
    try:
        assert request_all(ga, [message("slow", [gb.twin.id], "x", exp=2)], timeout=7) == []
    finally:
        echo.close()
    assert len(echo.seen) == 1


def test_a_request_to_several_twins_gets_one_response_each(pair):
    ga, gb = pair
    e1, e2 = Echo(gb, "multi"), Echo(ga, "multi")
    try:
        responses = request_all(ga, [message("multi", [gb.twin.id, ga.twin.id], "m")])
    finally:
        e1.close()
        e2.close()
    assert sorted(r["src"] for r in responses) == sorted([str(gb.twin.id), str(ga.twin.id)])
    assert all(r["err"] is None for r in responses)


def test_the_gateway_carries_on_when_its_redis_restarts(pair, tmp_path):
    ga, gb = pair
    ga.redis.proc.terminate()
    ga.redis.proc.wait(timeout=WAIT)
    ga.redis = start_redis(tmp_path, ga.redis.port)
    echo = Echo(gb, "again")
    try:
        (resp,) = request_all(ga, [message("again", [gb.twin.id], "back")], timeout=WAIT)
    finally:
        echo.close()
    assert resp["err"] is None and base64.b64decode(resp["dat"]) == b"back"


# ----- two relays forwarding to each other ------------------------------------------


def relay_key(seed: bytes) -> str:
    pk = SigningKey(seed).verify_key.encode()
    return "ed25519:" + base64.urlsafe_b64encode(pk).decode().rstrip("=")


def test_two_relays_forward_to_each_other(tmp_path):
    seeds = [bytes([7]) * 32, bytes([8]) * 32]
    ports = [free_port(), free_port()]
    names = [f"http://127.0.0.1:{p}" for p in ports]
    nodes = []
    try:
        for i in range(2):
            base = tmp_path / f"relay{i}"
            (base / "data").mkdir(parents=True)
            (base / "data" / "relay.seed").write_bytes(seeds[i])
            other = 1 - i
            toml = (
                "[relay]\n"
                f'peers = [{{ name = "{names[other]}", key = "{relay_key(seeds[other])}" }}]\n'
            )
            if i == 1:
                toml += f'registry = "{names[0]}"\n'
            nodes.append(start_node(base, toml, http=f"127.0.0.1:{ports[i]}"))
        alice = new_twin(nodes[0], tmp_path, [names[0]])
        bob = new_twin(nodes[0], tmp_path, [names[1]])
        ga = start_gateway(tmp_path, alice, names[0])
        gb = start_gateway(tmp_path, bob, names[1], registry=names[0])
        echo = Echo(gb)
        try:
            msgs = [message("testme", [bob.id], f"p{i}") for i in range(50)]
            responses = request_all(ga, msgs, timeout=60)
        finally:
            echo.close()
            stop_gateway(ga)
            stop_gateway(gb)
        assert len(responses) == 50
        assert all(r["err"] is None and r["src"] == str(bob.id) for r in responses)
    finally:
        for n in nodes:
            assert stop_node(n.proc) == "exited cleanly", n.log_tail()
