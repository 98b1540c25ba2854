"""Fixtures shared by the interop tests.

One node is started for the whole session in a temporary data directory, on 127.0.0.1
with port 0 for every listener (HTTP, backend, STOMP); its addresses come from
`listen.json` and the admin credentials from `admin.json`, as an operator would read
them. Every test makes its own clients (deleted again afterwards), so tests do not see
each other's messages.

Run: TRUNKLINE_BIN=target/debug/trunkline pytest -q tests/interop
"""

from __future__ import annotations

import pytest

from trunkline_node import Client, Node, binary, call, get_token, start_node, stop_node, uid


@pytest.fixture(scope="session")
def node(tmp_path_factory) -> Node:
    if not binary().is_file():
        pytest.fail(
            f"no trunkline binary at {binary()}: run `cargo build -p trunkline-cli` "
            "or set TRUNKLINE_BIN"
        )
    n = start_node(tmp_path_factory.mktemp("trunkline"))
    try:
        yield n
    finally:
        outcome = stop_node(n.proc)
    assert outcome == "exited cleanly", f"trunkline {outcome}:\n{n.log_tail()}"


@pytest.fixture(scope="session")
def admin_token(node: Node) -> str:
    return get_token(node, node.admin["client_id"], node.admin["secret"])


@pytest.fixture
def make_client(node: Node, admin_token: str):
    """Creates clients the NOC way (admin token, POST /client, keep the secret shown
    once, then GET /token) and deletes them after the test."""
    made: list[str] = []

    def make(prefix: str, subscription, name: str | None = None, **fields) -> Client:
        """`fields` go into the request as they are (`publish`, `write_grants`, ...)."""
        client_id = f"{prefix}-{uid()}"
        r = call(
            node,
            "POST",
            "/client",
            admin_token,
            json={
                "client_id": client_id,
                "client_name": name or f"Test {prefix}",
                "subscription": subscription,
                **fields,
            },
        )
        assert r.status_code == 201, r.text
        made.append(client_id)
        created = r.json()
        token = get_token(node, client_id, created["secret"])
        return Client(client_id, created["secret"], token, created)

    yield make
    for client_id in made:
        r = call(node, "DELETE", f"/client/{client_id}", admin_token)
        assert r.status_code in (204, 404), r.text
