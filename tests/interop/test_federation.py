"""Interop tests: the real `trunkline` binary as a Swaptacular accounting authority, its
federation listener reached by a swpt_stomp-like creditors agent (tests/interop/swpt_like.py).

The node databases and every certificate are made here in Python (`cryptography`), as
Swaptacular's scheme has them (peer certificates with a critical directory-name
constraint, as in swpt_stomp's test data); the ids and subnets are those of swpt_stomp's
test data. The node runs as authority 1234abcd with `[federation]` in its config file and
its listener on 127.0.0.1 port 0 (`listen.json` says where). The agent connects as
swpt-client does: mutual TLS 1.3, its node certificate followed by the peer certificate
the authority issued it, the server checked against the authority's root only; then
STOMP 1.2 with heart-beats, SENDs with a receipt counter, at most 100 unconfirmed,
cumulative receipts.

What arrives is read as an operator would: a declared queue bound to `accounts_in.#`, a
client granted it, `GET /receive`. Each test declares its own queue, so it sees only what
it sent. Every wait is bounded in time, every loop in count.
"""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

import swpt_like as swpt
from swpt_like import (
    AUTHORITY_ID as AA,
    CREDITORS_AGENT_ID as CA,
    DEBTORS_AGENT_ID as DA,
    SwptLikeClient,
    configure_account,
    peer_ssl_context,
    routing_key,
)
from trunkline_node import Node, call, get_token, receive, start_node, stop_node, uid

# The first creditor of the agent's masq subnet (000001, as the authority knows the
# agent's creditors) and the first debtor of the authority (1234abcd).
CREDITOR0 = 0x0000_0100_0000_0000
DEBTOR0 = 0x1234_ABCD_0000_0000
# Seconds for a connection to answer, or close, when it must.
WAIT = 10.0


# ----- the authority node ----------------------------------------------------------------


@dataclass
class Authority:
    node: Node
    fed: swpt.Federation
    admin: str
    # The federation listener, as the agent's database lists it (nodeinfo/stomp.toml).
    host: str
    port: int
    destination: str

    def context(self, cert: Path | None = None, key: Path | None = None):
        """The creditors agent's TLS context for this node (its own certificate unless
        `cert`/`key` are given)."""
        return peer_ssl_context(self.fed, CA, AA, cert, key)

    def client(self, **kw) -> SwptLikeClient:
        kw.setdefault("destination", self.destination)
        return SwptLikeClient(**kw)


@pytest.fixture(scope="module")
def authority(tmp_path_factory) -> Authority:
    base = tmp_path_factory.mktemp("trunkline-federation")
    # The agents' keys RSA 3072 as in swpt_stomp's test data, the authority's ECDSA P-256:
    # both kinds through both ends of the TLS handshake.
    fed = swpt.triangle(base / "nodes", agent_key_kind="rsa")
    aa = fed.node(AA)
    q = json.dumps  # TOML basic strings take JSON's escapes
    config = (
        "[federation]\n"
        f"nodedata = {q(str(aa.dir))}\n"
        'listen = "127.0.0.1:0"\n'
        f"cert = {q(str(aa.cert))}\n"
        f"key = {q(str(aa.key))}\n"
        "reread_secs = 1\n"
    )
    node = start_node(base, config)
    try:
        listen = json.loads((node.data_dir / "listen.json").read_text())
        assert "federation" in listen, f"no federation listener in listen.json: {listen}"
        fed.set_node_servers(AA, [listen["federation"]])
        # Where the agent reaches the authority: its own database, as swpt-client reads it.
        info = tomllib.loads(
            (fed.peer_dir(CA, AA) / "nodeinfo" / "stomp.toml").read_text()
        )
        host, port = info["servers"][0].rsplit(":", 1)
        admin = get_token(node, node.admin["client_id"], node.admin["secret"])
        yield Authority(node, fed, admin, host, int(port), info["destination"])
    finally:
        outcome = stop_node(node.proc)
    assert outcome == "exited cleanly", f"trunkline {outcome}:\n{node.log_tail()}"


@dataclass
class Reader:
    queue: str
    token: str


def declare_reader(a: Authority) -> Reader:
    """A declared queue bound to `accounts_in.#` and a client granted it."""
    name = f"from-peers-{uid()}"
    r = call(a.node, "PUT", f"/queue/{name}", a.admin, json={"bindings": ["accounts_in.#"]})
    assert r.status_code == 201, r.text
    client_id = f"reader-{uid()}"
    r = call(
        a.node,
        "POST",
        "/client",
        a.admin,
        json={
            "client_id": client_id,
            "client_name": "Federation reader",
            "subscription": f"nothing.{uid()}",
        },
    )
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    r = call(a.node, "PATCH", f"/client/{client_id}", a.admin, json={"grants": [name]})
    assert r.status_code == 200, r.text
    return Reader(name, get_token(a.node, client_id, secret))


def queue_info(a: Authority, name: str) -> dict:
    r = call(a.node, "GET", f"/queue/{name}", a.admin)
    assert r.status_code == 200, r.text
    return r.json()


def drain(a: Authority, reader: Reader, expected: int, timeout: float = 20.0) -> list:
    """Receives (auto-ack) until `expected` messages came or `timeout` s passed."""
    got: list = []
    deadline = time.monotonic() + timeout
    for _ in range(expected // 100 + 50):
        if len(got) >= expected or time.monotonic() > deadline:
            break
        batch = receive(a.node, reader.token, queue=reader.queue, max_messages=100)
        got += batch
        if not batch:
            time.sleep(0.1)
    return got


def run(coro, timeout: float = 60.0):
    """Runs one asyncio scenario, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ----- 1. a thousand messages over mutual TLS ---------------------------------------------


def test_a_thousand_configure_accounts_are_confirmed_and_routed_in_order(authority):
    a = authority
    reader = declare_reader(a)
    n = 1000
    # Creditors spread over the agent's masq subnet, debtors over the authority's: each
    # message has its own routing key.
    msgs = [
        configure_account(CREDITOR0 + i * 7919, DEBTOR0 + (i % 97), seqnum=i)
        for i in range(1, n + 1)
    ]
    bodies = [json.dumps(m).encode() for m in msgs]

    async def scenario():
        c = a.client()
        first = await c.open(a.host, a.port, a.context(), WAIT)
        assert first is not None and first.command == "CONNECTED", (first, c.close_cause)
        await c.send_all([("ConfigureAccount", b) for b in bodies], timeout=45)
        await c.close()
        return c

    started = time.monotonic()
    c = run(scenario())
    elapsed = time.monotonic() - started
    assert c.error is None, c.error
    assert c.problems == [], c.problems
    # The server is the node the agent meant to reach (swpt-client checks the serial).
    assert c.server_serial == AA
    assert c.connected.get("version") == "1.2"
    assert (c.sent, c.confirmed) == (n, n), (c.sent, c.confirmed, c.close_cause)
    # Cumulative receipts: ids of sent messages, strictly increasing, the last one n;
    # one receipt may confirm many.
    ids = [int(r) for r in c.receipts]
    assert ids == sorted(set(ids)) and ids[-1] == n, ids[-5:]
    assert 1 <= len(ids) <= n
    print(f"\n{n} messages confirmed by {len(ids)} receipts in {elapsed:.2f} s")

    got = drain(a, reader, n)
    assert len(got) == n, f"{len(got)} of {n} arrived"
    for i, (m, sent) in enumerate(zip(got, msgs)):
        debtor, creditor = sent["debtor_id"], sent["creditor_id"]
        assert m["body"] == sent, f"message {i}: {m}"
        assert m["topic"] == f"accounts_in.{routing_key(debtor, creditor)}", m
        # swpt_stomp's server's headers (an authority adds no ca-creditors / ca-trade),
        # and the frame's type.
        assert m.get("headers") == {
            "message-type": "ConfigureAccount",
            "debtor-id": str(debtor),
            "creditor-id": str(creditor),
            "type": "ConfigureAccount",
        }, m
        assert m["sender"] == f"peer:{CA}", m
    print(f"headers of the first: {got[0].get('headers')}, content_type "
          f"{got[0].get('content_type')!r}")
    # Exactly those: nothing more comes.
    assert receive(a.node, reader.token, queue=reader.queue, max_messages=100) == []
    assert queue_info(a, reader.queue)["depth"] == 0


# ----- 2. heart-beats --------------------------------------------------------------------


def test_heartbeats_keep_an_idle_peer_connected_and_a_silent_one_is_closed(authority):
    a = authority

    async def scenario():
        # As swpt-client: heart-beat 5000,30000, sending heart-beats as negotiated.
        idle = a.client()
        # The same, but it never sends a heart-beat.
        silent = a.client(send_heartbeats=False)
        # One that wants the server's heart-beats as often as the server can send them.
        listener = a.client(hb_recv_desired=1000)
        firsts = await asyncio.gather(
            *(c.open(a.host, a.port, a.context(), WAIT) for c in (idle, silent, listener))
        )
        for c, f in zip((idle, silent, listener), firsts):
            assert f is not None and f.command == "CONNECTED", (f, c.close_cause)
        hb = idle.connected.get("heart-beat")
        assert hb is not None, idle.connected
        sx, sy = (int(v) for v in hb.split(","))
        if sy == 0:
            for c in (idle, silent, listener):
                await c.abort()
            pytest.skip(f"the server asks for no heart-beats (heart-beat:{hb})")
        # The client must send every max(5000, sy) ms; docs/stomp.md: a client silent for
        # twice its interval plus a second gets ERROR heartbeat_timeout.
        interval = max(swpt.HB_SEND_MIN, sy) / 1000
        limit = 2 * interval + 1
        assert idle.hb_send == interval * 1000
        closed = await silent.wait_closed(limit + 5)
        silent_after = (silent.closed_at or time.monotonic()) - silent.opened_at
        # The heart-beating one is still up past that, and past ~12 s in any case.
        hold = max(12.0, silent_after + 2)
        await asyncio.sleep(max(0.0, idle.opened_at + hold - time.monotonic()))
        idle_alive = not idle.closed.is_set()
        idle_receipt = await idle.disconnect("still-here", WAIT)
        listener_beats = listener.heartbeats_received
        await listener.abort()
        await idle.abort()
        return dict(
            hb=(sx, sy),
            interval=interval,
            limit=limit,
            silent_closed=closed,
            silent_after=silent_after,
            silent_error=silent.error,
            silent_cause=silent.close_cause,
            hold=hold,
            idle=idle,
            idle_alive=idle_alive,
            idle_receipt=idle_receipt,
            listener=listener,
            listener_beats=listener_beats,
        )

    r = run(scenario(), timeout=45)
    print(
        f"\nserver heart-beat {r['hb']}; client interval {r['interval']} s; silent closed "
        f"after {r['silent_after']:.1f} s ({r['silent_error']}); idle sent "
        f"{r['idle'].heartbeats_sent} heart-beats in {r['hold']:.1f} s; listener got "
        f"{r['listener_beats']} heart-beats"
    )
    sx, sy = r["hb"]
    # The silent connection: ERROR heartbeat_timeout, then closed, within the limit.
    assert r["silent_closed"], f"not closed within {r['limit'] + 5} s"
    assert r["silent_error"] is not None, r["silent_cause"]
    assert r["silent_error"].get("code") == "heartbeat_timeout", r["silent_error"]
    assert r["interval"] <= r["silent_after"] <= r["limit"] + 3, r["silent_after"]
    # The heart-beating one stayed open, sent heart-beats, and still answers.
    assert r["idle_alive"], r["idle"].close_cause
    assert r["idle"].heartbeats_sent >= 1
    assert r["idle_receipt"], (r["idle"].frames, r["idle"].close_cause)
    assert r["idle"].problems == [] and r["idle"].error is None
    # The server sends heart-beats every max(sx, what the client wants).
    if sx:
        assert r["listener"].hb_recv == max(sx, 1000)
        if r["hold"] >= r["listener"].hb_recv / 1000 + 1:
            assert r["listener_beats"] >= 1, r["listener"].frames
    assert r["listener"].problems == [], r["listener"].problems


# ----- 3. refusals -----------------------------------------------------------------------


async def _tls_refused(a: Authority, cert: Path, key: Path) -> tuple[bool, SwptLikeClient]:
    """Connects with `cert`/`key` (followed by the agent's peer certificate); True if no
    STOMP frame ever came (the handshake failed, or in TLS 1.3 the connection was closed
    after it)."""
    c = a.client()
    first = await c.open(a.host, a.port, a.context(cert, key), WAIT)
    if first is None:
        await c.wait_closed(WAIT)
    refused = first is None and c.closed.is_set()
    await c.abort()
    return refused, c


async def _first_error(a: Authority, frames=()) -> tuple[SwptLikeClient, object]:
    """Connects as the agent; sends `frames` (each (type, body, headers)) once CONNECTED;
    returns the client and its first frame."""
    c = a.client()
    first = await c.open(a.host, a.port, a.context(), WAIT)
    if first is not None and first.command == "CONNECTED":
        for message_type, body, headers in frames:
            await c.send(message_type, body, **headers)
        await c.wait_until(lambda: c.error is not None or c.closed.is_set(), WAIT)
    await c.wait_closed(WAIT)
    await c.abort()
    return c, first


def test_refused_peers_and_messages_route_nothing(authority):
    a = authority
    fed = a.fed
    reader = declare_reader(a)
    good = configure_account(CREDITOR0 + 7, DEBTOR0 + 1, seqnum=1)

    def body(**change):
        m = dict(good)
        m.update(change)
        return json.dumps(m).encode()

    async def scenario():
        out = {}
        # TLS: a certificate naming the agent from a CA nobody knows.
        cert, key = fed.outsider(CA)
        out["outsider"] = await _tls_refused(a, cert, key)
        # The agent's root issuing a certificate that names another node (the debtors
        # agent, and a node nobody knows), sent with the agent's peer certificate: the
        # chain reaches the authority's root, the name constraint refuses it.
        for other in (DA, "deadbeef" * 4):
            cert, key = fed.impostor(CA, other)
            out[f"impostor {other}"] = await _tls_refused(a, cert, key)

        # Session refusals: ERROR with a code, then the close.
        fed.deactivate(AA, CA)
        try:
            out["deactivated"] = await _first_error(a)
        finally:
            fed.reactivate(AA, CA)
        (fed.peer_dir(AA, CA) / "ACTIVE").unlink()
        try:
            out["not active"] = await _first_error(a)
        finally:
            (fed.peer_dir(AA, CA) / "ACTIVE").write_text("")

        sends = {
            "wrong destination": ("ConfigureAccount", body(), {"destination": "/exchange/creditors_in"}),
            "a topic": ("ConfigureAccount", body(), {"destination": "/topic/accounts_in.0"}),
            "debtor not the authority's": (
                "ConfigureAccount", body(debtor_id=0x1234_ABCE_0000_0001), {}),
            "creditor outside the agent's subnet": (
                "ConfigureAccount", body(creditor_id=0x0000_0800_0000_0001), {}),
            "ts without offset": ("ConfigureAccount", body(ts="2026-01-01T00:00:00"), {}),
            "ts far ahead": ("ConfigureAccount", body(ts="2999-01-01T00:00:00+00:00"), {}),
            "seqnum past i32": ("ConfigureAccount", body(seqnum=2**31), {}),
            "not JSON": ("ConfigureAccount", b"nope", {}),
            "type not the body's": ("PrepareTransfer", body(), {}),
            "an agent's type": ("AccountUpdate", body(type="AccountUpdate"), {}),
            "content type": ("ConfigureAccount", body(), {"content_type": "text/plain"}),
        }
        for why, frame in sends.items():
            out[why] = await _first_error(a, [frame])
        # Still served after all that.
        c = a.client()
        first = await c.open(a.host, a.port, a.context(), WAIT)
        out["afterwards"] = (c, first)
        await c.close()
        return out

    out = run(scenario(), timeout=50)
    report = []
    for why in ("outsider", f"impostor {DA}", f"impostor {'deadbeef' * 4}"):
        refused, c = out[why]
        report.append(f"{why}: refused={refused} ({c.close_cause})")
        assert refused, f"{why}: {c.frames} {c.close_cause}"
    # The impostors were refused for the name constraint, not for some other flaw of
    # their chains (the node logs why it refused a certificate).
    for other in (DA, "deadbeef" * 4):
        needle = f"serialNumber={other}` is outside the names"
        deadline = time.monotonic() + 5
        while needle not in a.node.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"no `{needle}` in the log:\n{a.node.log_tail()}"
            time.sleep(0.1)

    expected = {
        "deactivated": ("unknown_peer", None),
        "not active": ("unknown_peer", None),
        "wrong destination": ("invalid_destination", None),
        "a topic": ("invalid_destination", None),
        "debtor not the authority's": ("invalid_message", "Invalid debtor ID: 0x1234abce00000001."),
        "creditor outside the agent's subnet": (
            "invalid_message", "Invalid creditor ID: 0x0000080000000001."),
        "ts without offset": ("invalid_message", "Invalid ConfigureAccount message."),
        "ts far ahead": ("invalid_message", None),
        "seqnum past i32": ("invalid_message", "Invalid ConfigureAccount message."),
        "not JSON": ("invalid_message", "Invalid ConfigureAccount message."),
        "type not the body's": ("invalid_message", None),
        "an agent's type": ("invalid_message", "Invalid message type: AccountUpdate."),
        "content type": ("invalid_message", "Unsupported content type: text/plain."),
    }
    for why, (code, text) in expected.items():
        c, first = out[why]
        report.append(f"{why}: {c.error!r}")
        assert c.error is not None, f"{why}: no ERROR; {c.frames} {c.close_cause}"
        assert c.error.get("code") == code, f"{why}: {c.error}"
        message = c.error.get("message") or ""
        assert len(message) > 10, f"{why}: {c.error}"
        if text is not None:
            assert message == text, f"{why}: {c.error}"
        assert c.closed.is_set(), f"{why}: not closed after the ERROR"
        assert c.confirmed == 0, f"{why}: confirmed {c.confirmed}"
    print("\n" + "\n".join(report))
    c, first = out["afterwards"]
    assert first is not None and first.command == "CONNECTED", (first, c.close_cause)

    # Nothing was routed by any of them.
    assert receive(a.node, reader.token, queue=reader.queue, max_messages=100) == []
    info = queue_info(a, reader.queue)
    assert info["depth"] == 0, info
