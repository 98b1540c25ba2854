"""Interop tests: what a NOC Communications Backbone client adapter does, against the
real `trunkline` binary.

The node (one for the whole session, shared with the other interop tests) and the
`admin_token` and `make_client` fixtures are in conftest.py; see there. Every test makes
its own clients (deleted again afterwards), so tests do not see each other's messages.
Every HTTP call has a timeout.

Run: TRUNKLINE_BIN=target/debug/trunkline pytest -q tests/interop
"""

from __future__ import annotations

import stat
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests

from trunkline_node import Node, call, get_token, receive, uid

NOC_DESTINATION = "soar.noc.autosub.ah1.send.platform-mission"


# ----- HTTP helpers --------------------------------------------------------------------


def assert_error(r: requests.Response, status: int, code: str) -> dict:
    assert r.status_code == status, f"expected {status} {code}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body["error"]


def send(node: Node, token: str, message: dict, path: str = "/send") -> dict:
    r = call(node, "POST", path, token, json=message)
    assert r.status_code == 202, r.text
    out = r.json()
    assert isinstance(out["id"], int) and out["duplicate"] is False, out
    return out


def parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


# ----- the node's files ----------------------------------------------------------------


def test_node_writes_admin_credentials_readable_by_owner_only(node: Node):
    path = node.data_dir / "admin.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert node.admin["client_id"] == "admin"
    assert node.admin["subscription"] == "#"
    assert node.admin["api"] == node.url
    assert isinstance(node.admin["secret"], str) and len(node.admin["secret"]) >= 16
    assert (node.data_dir / "backend.key").is_file()


# ----- clients and tokens --------------------------------------------------------------


def test_admin_creates_client_and_the_secret_is_shown_once(node, admin_token, make_client):
    c = make_client("auv", "soar.noc.autosub.#", name="Autosub AH1")
    assert c.created == {
        "client_id": c.client_id,
        "client_name": "Autosub AH1",
        "subscription": "soar.noc.autosub.#",
        "secret": c.secret,
    }
    assert isinstance(c.secret, str) and len(c.secret) >= 16

    # Reading the client back never shows the secret, to the admin or the client.
    for token in (admin_token, c.token):
        r = call(node, "GET", f"/client/{c.client_id}", token)
        assert r.status_code == 200, r.text
        shown = r.json()
        assert shown["client_id"] == c.client_id
        assert shown["client_name"] == "Autosub AH1"
        assert shown["subscription"] == "soar.noc.autosub.#"
        assert "secret" not in shown
        assert c.secret not in r.text

    r = call(node, "GET", "/client", admin_token)
    assert r.status_code == 200, r.text
    listed = {x["client_id"]: x for x in r.json()}
    assert c.client_id in listed and "admin" in listed
    assert all("secret" not in x for x in listed.values())
    assert c.secret not in r.text

    # The id is taken now.
    r = call(
        node,
        "POST",
        "/client",
        admin_token,
        json={"client_id": c.client_id, "client_name": "again", "subscription": "#"},
    )
    assert_error(r, 409, "client_exists")

    assert_error(call(node, "GET", f"/client/nobody-{uid()}", admin_token), 404, "unknown_client")


def test_token_by_get_and_by_oauth_post(node, make_client):
    c = make_client("tok", f"tok.{uid()}")
    before = datetime.now(timezone.utc)

    r = call(node, "GET", "/token", params={"client_id": c.client_id, "secret": c.secret})
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == {"token", "expiry"}
    expiry = parse_time(got["expiry"])
    assert before < expiry <= before + timedelta(hours=24, seconds=5), got

    r = call(
        node,
        "POST",
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": c.client_id,
            "client_secret": c.secret,
        },
    )
    assert r.status_code == 200, r.text
    assert r.request.headers["content-type"] == "application/x-www-form-urlencoded"
    oauth = r.json()
    assert oauth["token_type"].lower() == "bearer"
    assert 0 < oauth["expires_in"] <= 24 * 3600

    # HTTP Basic credentials, as many OAuth2 libraries send them.
    r = call(
        node,
        "POST",
        "/token",
        data={"grant_type": "client_credentials"},
        auth=(c.client_id, c.secret),
    )
    assert r.status_code == 200, r.text
    basic = r.json()["access_token"]

    for token in (got["token"], oauth["access_token"], basic):
        assert receive(node, token) == []


def test_rotating_a_secret_retires_the_old_secret_and_tokens(node, admin_token, make_client):
    c = make_client("rot", f"rot.{uid()}")
    r = call(node, "POST", f"/client/{c.client_id}/secret", admin_token)
    assert r.status_code == 200, r.text
    new_secret = r.json()["secret"]
    assert new_secret != c.secret

    assert_error(call(node, "GET", "/receive", c.token), 401, "invalid_token")
    r = call(node, "GET", "/token", params={"client_id": c.client_id, "secret": c.secret})
    assert_error(r, 401, "invalid_credentials")
    assert receive(node, get_token(node, c.client_id, new_secret)) == []


def test_deleting_a_client_revokes_its_token(node, admin_token, make_client):
    c = make_client("gone", f"gone.{uid()}")
    r = call(node, "DELETE", f"/client/{c.client_id}", admin_token)
    assert r.status_code == 204, r.text
    assert_error(call(node, "GET", "/receive", c.token), 401, "invalid_token")
    assert_error(call(node, "GET", f"/client/{c.client_id}", admin_token), 404, "unknown_client")


# ----- sending and receiving -----------------------------------------------------------


def test_send_topic_body_and_noc_message(node, make_client):
    platform = make_client("ah1", "soar.noc.autosub.#")
    noc = make_client("noc", f"noc.{uid()}.inbox")

    plain = {"topic": NOC_DESTINATION, "body": {"hello": "ah1", "n": 1}}
    text = {"topic": NOC_DESTINATION, "body": "a plain string body"}
    mission = {
        "header": {
            "message_ID": str(uuid.uuid4()),
            "timestamp": 1_700_000_000.0,
            "source": "noc-c2",
            "destination": NOC_DESTINATION,
            "encoded": False,
            "delivery_type": "publish",
        },
        "payload": {
            "message_type": "mission_plan",
            "target": "ah1",
            "plan_ID": 7,
            "plan": [
                {"action": "move", "latitude": 50.9, "longitude": -1.4, "depth": 10.0},
            ],
        },
    }
    sent = [send(node, noc.token, m) for m in (plain, text, mission)]
    # The platform and the admin (subscribed to `#`) each got every message.
    assert [s["delivered_to"] for s in sent] == [2, 2, 2]
    assert len({s["id"] for s in sent}) == 3

    got = receive(node, platform.token)
    assert [m["id"] for m in got] == [s["id"] for s in sent]
    assert [m["topic"] for m in got] == [NOC_DESTINATION] * 3
    assert got[0]["body"] == plain["body"]
    assert got[1]["body"] == "a plain string body"
    # A NOC message arrives as it was sent, header and payload.
    assert got[2]["body"] == mission
    assert got[2]["body"]["payload"]["message_type"] == "mission_plan"
    now = datetime.now(timezone.utc)
    for m in got:
        assert m["sender"] == noc.client_id
        assert m["redelivered"] is False
        assert m["delivery_count"] == 1
        assert "receipt" not in m
        assert now - timedelta(minutes=1) < parse_time(m["timestamp"]) <= now + timedelta(seconds=5)

    # The sender is not subscribed to the topic, so it got none of it.
    assert receive(node, noc.token) == []


def test_wildcard_subscriptions_get_exactly_their_messages(node, make_client):
    star_noc = make_client("starnoc", "soar.*.noc.#")
    autosub = make_client("autosub", "soar.noc.autosub.#")
    mission = make_client("mission", "#.platform-mission")
    nobody = make_client("nobody", f"unrelated.{uid()}")
    sender = make_client("sender", f"sender.{uid()}")

    S, A, M = star_noc.client_id, autosub.client_id, mission.client_id
    routes = [
        (NOC_DESTINATION, {A, M}),
        ("soar.po.noc.status", {S}),
        ("soar.po.noc", {S}),  # `#` matches zero words
        ("soar.noc.noc.platform-mission", {S, M}),
        ("soar.noc.autosub", {A}),
        ("platform-mission", {M}),
        ("soar.a.b.noc.status", set()),  # `*` is exactly one word
        ("soar.noc.autosubx.ah1", set()),  # whole words only
        ("soar.noc.autosub.ah1.platform-mission.ack", {A}),
        ("x.platform-mission.y", set()),
    ]
    ids = {}
    for i, (topic, receivers) in enumerate(routes):
        out = send(node, sender.token, {"topic": topic, "body": {"i": i}})
        # ...plus the admin, who is subscribed to `#`.
        assert out["delivered_to"] == len(receivers) + 1, (topic, out)
        ids[topic] = out["id"]

    for c in (star_noc, autosub, mission, nobody, sender):
        got = receive(node, c.token, max_messages=100)
        expected = [t for t, receivers in routes if c.client_id in receivers]
        assert [m["topic"] for m in got] == expected, c.client_id
        assert [m["id"] for m in got] == [ids[t] for t in expected]
        assert all(m["sender"] == sender.client_id for m in got)
        assert receive(node, c.token) == []


def test_receive_takes_at_most_10_by_default_and_removes_them(node, make_client):
    c = make_client("batch", f"batch.{uid()}")
    topic = c.created["subscription"]
    for i in range(15):
        send(node, c.token, {"topic": topic, "body": {"seq": i}})

    first = receive(node, c.token)
    assert [m["body"]["seq"] for m in first] == list(range(10))
    second = receive(node, c.token, max_messages=3)
    assert [m["body"]["seq"] for m in second] == [10, 11, 12]
    third = receive(node, c.token)
    assert [m["body"]["seq"] for m in third] == [13, 14]
    # Received messages are gone: nothing is delivered twice.
    assert receive(node, c.token) == []
    assert all(not m["redelivered"] for m in first + second + third)

    assert_error(call(node, "GET", "/receive", c.token, params={"max_messages": 0}), 400, "invalid_query")


def test_notify_reaches_every_client(node, admin_token, make_client):
    clients = [
        make_client("alpha", f"alpha.{uid()}"),
        make_client("beta", "soar.*.noc.#"),
        make_client("gamma", ["x.#", f"gamma.{uid()}"]),
    ]
    r = call(node, "GET", "/client", admin_token)
    assert r.status_code == 200, r.text
    everyone = len(r.json())

    body = {"alert": "surface now", "level": 3}
    out = send(node, clients[0].token, {"body": body}, path="/notify")
    assert out["delivered_to"] == everyone

    for c in clients:  # the sender included
        got = receive(node, c.token)
        assert len(got) == 1, (c.client_id, got)
        assert got[0]["id"] == out["id"]
        assert got[0]["body"] == body
        assert got[0]["sender"] == clients[0].client_id
        assert got[0]["topic"] == "broadcast"


def test_manual_ack_and_nack_round_trip(node, make_client):
    c = make_client("acker", f"ack.{uid()}")
    topic = c.created["subscription"]
    for i in range(3):
        send(node, c.token, {"topic": topic, "body": {"n": i}})

    got = receive(node, c.token, ack="manual", lease=30)
    assert [m["body"]["n"] for m in got] == [0, 1, 2]
    assert all(isinstance(m["receipt"], str) and m["receipt"] for m in got)
    assert all(m["delivery_count"] == 1 and not m["redelivered"] for m in got)
    first, second, third = got

    # Leased messages are not handed out again while the lease runs.
    assert receive(node, c.token, ack="manual", lease=30) == []

    r = call(node, "POST", "/ack", c.token, json={"receipts": [first["receipt"]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"done": 1, "unknown": []}

    r = call(node, "POST", "/nack", c.token, json={"receipts": [second["receipt"]], "requeue": True})
    assert r.status_code == 200, r.text
    assert r.json() == {"done": 1, "unknown": []}

    again = receive(node, c.token, ack="manual", lease=30)
    assert [m["id"] for m in again] == [second["id"]]
    assert again[0]["redelivered"] is True
    assert again[0]["delivery_count"] == 2
    assert again[0]["body"] == {"n": 1}

    # Acking twice: the second time the receipt is unknown.
    r = call(node, "POST", "/ack", c.token, json={"receipts": [first["receipt"], again[0]["receipt"]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"done": 1, "unknown": [first["receipt"]]}

    # Nack without requeue: straight to the dead-letter queue.
    r = call(node, "POST", "/nack", c.token, json={"receipts": [third["receipt"]], "requeue": False})
    assert r.status_code == 200, r.text
    assert r.json() == {"done": 1, "unknown": []}
    assert receive(node, c.token) == []
    dead = receive(node, c.token, queue="dead")
    assert [m["id"] for m in dead] == [third["id"]]
    assert dead[0]["body"] == {"n": 2}


def test_an_expired_lease_redelivers(node, make_client):
    c = make_client("lease", f"lease.{uid()}")
    out = send(node, c.token, {"topic": c.created["subscription"], "body": "once"})
    got = receive(node, c.token, ack="manual", lease=1)
    assert [m["id"] for m in got] == [out["id"]]

    deadline = time.monotonic() + 10
    again = []
    while not again and time.monotonic() < deadline:
        time.sleep(0.25)
        again = receive(node, c.token, ack="manual", lease=30)
    assert [m["id"] for m in again] == [out["id"]], "not redelivered within 10 s"
    assert again[0]["redelivered"] is True and again[0]["delivery_count"] == 2

    # The old receipt is dead; the new one acks.
    r = call(node, "POST", "/ack", c.token, json={"receipts": [got[0]["receipt"], again[0]["receipt"]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"done": 1, "unknown": [got[0]["receipt"]]}
    assert receive(node, c.token) == []


# ----- errors --------------------------------------------------------------------------


def test_wrong_secret_is_401_invalid_credentials(node, make_client):
    c = make_client("wrong", f"wrong.{uid()}")
    r = call(node, "GET", "/token", params={"client_id": c.client_id, "secret": c.secret + "x"})
    assert_error(r, 401, "invalid_credentials")
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")

    r = call(
        node,
        "POST",
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": c.client_id,
            "client_secret": "not-the-secret",
        },
    )
    assert_error(r, 401, "invalid_credentials")

    # An unknown client looks the same as a wrong secret.
    r = call(node, "GET", "/token", params={"client_id": f"nobody-{uid()}", "secret": c.secret})
    assert_error(r, 401, "invalid_credentials")

    # The right secret still works after a couple of failures.
    assert receive(node, get_token(node, c.client_id, c.secret)) == []


def test_requests_without_a_valid_token_are_401(node, make_client):
    c = make_client("noauth", f"noauth.{uid()}")
    for method, path, kw in [
        ("GET", "/receive", {}),
        ("POST", "/send", {"json": {"topic": c.created["subscription"], "body": 1}}),
        ("POST", "/notify", {"json": {"body": 1}}),
        ("POST", "/ack", {"json": {"receipts": []}}),
        ("GET", "/client", {}),
        ("POST", "/client", {"json": {"client_id": f"x-{uid()}", "client_name": "x", "subscription": "#"}}),
    ]:
        r = call(node, method, path, **kw)
        assert_error(r, 401, "missing_credentials")
        assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
        assert_error(call(node, method, path, "not-a-token", **kw), 401, "invalid_token")

    # Nothing was sent by the refused requests.
    assert receive(node, c.token) == []

    # A token belongs in the header, never in the URL.
    r = call(node, "GET", "/receive", params={"token": c.token})
    assert_error(r, 400, "credentials_in_wrong_place")


def test_malformed_json_is_400_malformed_json(node, admin_token, make_client):
    c = make_client("badjson", f"badjson.{uid()}")
    headers = {"Content-Type": "application/json"}
    for path, token, truncated in [
        ("/send", c.token, '{"topic": "a.b", "body": '),
        ("/send", c.token, '{"header": {"destination": "a.b"}, "payload": {"message_type": '),
        ("/notify", c.token, '{"body": {"alert": '),
        ("/ack", c.token, '{"receipts": ["r1", '),
        ("/client", admin_token, '{"client_id": "abc", "client_name": '),
    ]:
        for broken in (truncated, "{not json}", "", "{'single': 'quotes'}"):
            r = call(node, "POST", path, token, data=broken, headers=headers)
            assert_error(r, 400, "malformed_json")

    # Well-formed JSON of the wrong shape is a different error.
    r = call(node, "POST", "/send", c.token, json={"topic": c.created["subscription"]})
    assert_error(r, 400, "invalid_body")

    # Nothing was sent, and the node is still fine.
    assert receive(node, c.token) == []
    send(node, c.token, {"topic": c.created["subscription"], "body": "ok"})
    assert [m["body"] for m in receive(node, c.token)] == ["ok"]


@pytest.mark.parametrize(
    "path, broken",
    [
        ("/send", '{"x": 1'),
        ("/send", '{"topic": "a.b", "body": 1, "priority": '),
        ("/send", "[1,"),
        ("/ack", '{"receipts": 5,'),
        ("/client", '{"topic": "a.b"'),
    ],
)
def test_invalid_json_is_malformed_json_whatever_it_starts_with(
    node, admin_token, make_client, path, broken
):
    c = make_client("badjson2", f"badjson2.{uid()}")
    token = admin_token if path == "/client" else c.token
    r = call(node, "POST", path, token, data=broken, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "malformed_json")


def test_a_non_admin_cannot_manage_clients(node, admin_token, make_client):
    c = make_client("plain", f"plain.{uid()}")
    other = make_client("other", f"other.{uid()}")
    new_id = f"sneaky-{uid()}"

    r = call(
        node,
        "POST",
        "/client",
        c.token,
        json={"client_id": new_id, "client_name": "Sneaky", "subscription": "#"},
    )
    assert_error(r, 403, "forbidden")
    assert_error(call(node, "GET", f"/client/{new_id}", admin_token), 404, "unknown_client")

    assert_error(call(node, "GET", "/client", c.token), 403, "forbidden")
    assert_error(call(node, "GET", f"/client/{other.client_id}", c.token), 403, "forbidden")
    r = call(node, "PATCH", f"/client/{other.client_id}", c.token, json={"subscription": "#"})
    assert_error(r, 403, "forbidden")
    r = call(node, "PATCH", f"/client/{c.client_id}", c.token, json={"subscription": "#"})
    assert_error(r, 403, "forbidden")
    assert_error(call(node, "DELETE", f"/client/{other.client_id}", c.token), 403, "forbidden")
    r = call(node, "POST", f"/client/{other.client_id}/secret", c.token)
    assert_error(r, 403, "forbidden")

    # The other client is untouched.
    r = call(node, "GET", f"/client/{other.client_id}", admin_token)
    assert r.status_code == 200, r.text
    assert r.json()["subscription"] == other.created["subscription"]
    assert receive(node, other.token) == []


def test_patched_subscription_applies_to_the_next_message(node, admin_token, make_client):
    pid = node.proc.pid
    ns = uid()
    c = make_client("mover", f"old.{ns}.#")
    sender = make_client("pub", f"pub.{ns}")

    send(node, sender.token, {"topic": f"old.{ns}.a", "body": 1})
    assert [m["body"] for m in receive(node, c.token)] == [1]

    r = call(node, "PATCH", f"/client/{c.client_id}", admin_token, json={"subscription": f"new.{ns}.*"})
    assert r.status_code == 200, r.text
    assert r.json()["subscription"] == f"new.{ns}.*"
    r = call(node, "GET", f"/client/{c.client_id}", admin_token)
    assert r.json()["subscription"] == f"new.{ns}.*"

    # No restart: same process, and the client's token still works.
    assert node.proc.poll() is None and node.proc.pid == pid
    old = send(node, sender.token, {"topic": f"old.{ns}.a", "body": 2})
    new = send(node, sender.token, {"topic": f"new.{ns}.b", "body": 3})
    assert old["delivered_to"] == 1  # the admin only
    assert new["delivered_to"] == 2
    got = receive(node, c.token)
    assert [(m["topic"], m["body"]) for m in got] == [(f"new.{ns}.b", 3)]

    # A list of patterns works too.
    r = call(
        node,
        "PATCH",
        f"/client/{c.client_id}",
        admin_token,
        json={"subscription": [f"old.{ns}.#", f"new.{ns}.*"]},
    )
    assert r.status_code == 200, r.text
    send(node, sender.token, {"topic": f"old.{ns}.c", "body": 4})
    send(node, sender.token, {"topic": f"new.{ns}.d", "body": 5})
    assert [m["body"] for m in receive(node, c.token)] == [4, 5]

    r = call(node, "PATCH", f"/client/{c.client_id}", admin_token, json={"subscription": "bad..pattern"})
    assert_error(r, 400, "invalid_pattern")
