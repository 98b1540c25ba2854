"""WebSocket sessions driven by Python's `websockets` library (a client we did not write),
as a browser-side or device-side program would: token in a header, in the query, or in a
first `authenticate` message; calls answered in the {service, message} envelope."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from trunkline_node import Node


def ws_url(node: Node, query: str = "") -> str:
    return node.url.replace("http://", "ws://", 1) + "/ws" + query


def call(ws, service: str, command: str, call_id, params=None) -> dict:
    ws.send(json.dumps({"service": service, "message": {"command": command, "params": params or {}, "callId": call_id}}))
    return json.loads(ws.recv(timeout=10))


def test_header_token_session_answers_calls(node: Node, make_client):
    c = make_client("ws", ["ws.#"])
    with connect(ws_url(node), additional_headers={"Authorization": f"Bearer {c.token}"}) as ws:
        welcome = json.loads(ws.recv(timeout=10))
        assert welcome["service"] == "session"
        assert welcome["message"]["type"] == "welcome"
        assert welcome["message"]["clientId"] == c.client_id
        r = call(ws, "session", "whoami", "a1")
        assert r == {"service": "session", "message": {"type": "response", "callId": "a1",
                     "data": {"sessionId": welcome["message"]["sessionId"], "clientId": c.client_id}}}


def test_browser_style_authentication(node: Node, make_client):
    c = make_client("ws", ["ws.#"])
    with connect(ws_url(node, f"?token={c.token}")) as ws:
        assert json.loads(ws.recv(timeout=10))["message"]["type"] == "welcome"
    with connect(ws_url(node)) as ws:
        r = call(ws, "auth", "authenticate", 1, {"token": c.token})
        assert r["message"]["type"] == "welcome"
        # The answer to authenticate comes after the welcome.
        r = json.loads(ws.recv(timeout=10))
        assert r == {"service": "auth", "message": {"type": "response", "callId": 1,
                     "data": {"sessionId": r["message"]["data"]["sessionId"], "clientId": c.client_id}}}
        assert call(ws, "session", "ping", 2)["message"]["data"] == "pong"


def test_bad_frames_get_error_answers(node: Node, make_client):
    c = make_client("ws", ["ws.#"])
    with connect(ws_url(node), additional_headers={"Authorization": f"Bearer {c.token}"}) as ws:
        ws.recv(timeout=10)
        ws.send("{oops")
        r = json.loads(ws.recv(timeout=10))
        assert r["message"]["type"] == "error" and r["message"]["code"] == "malformed_message"
        r = call(ws, "nosuch", "x", 5)
        assert (r["service"], r["message"]["code"], r["message"]["callId"]) == ("nosuch", "unknown_service", 5)
        r = call(ws, "session", "fly", 6)
        assert (r["message"]["code"], r["message"]["callId"]) == ("unknown_command", 6)


def test_refusals(node: Node):
    with pytest.raises(InvalidStatus) as e:
        connect(ws_url(node), additional_headers={"Authorization": "Bearer tl1.not.valid"})
    assert e.value.response.status_code == 401
    with connect(ws_url(node)) as ws:
        ws.send(json.dumps({"service": "session", "message": {"command": "whoami", "callId": 1}}))
        r = json.loads(ws.recv(timeout=10))
        assert (r["message"]["code"], r["message"]["callId"]) == ("missing_credentials", 1)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 4401


def test_inbox_push_ack_and_nack(node: Node, make_client, admin_token):
    from trunkline_node import call as http_call

    c = make_client("wsin", ["wsin.#"])
    with connect(ws_url(node), additional_headers={"Authorization": f"Bearer {c.token}"}) as ws:
        ws.recv(timeout=10)
        r = call(ws, "inbox", "subscribe", 1, {"window": 1, "lease": 30})
        assert r["message"]["data"]["window"] == 1
        for n in range(2):
            sent = http_call(node, "POST", "/send", admin_token, json={"topic": f"wsin.{c.client_id}.x", "body": {"n": n}})
            assert sent.status_code == 202, sent.text
        first = json.loads(ws.recv(timeout=10))["message"]
        assert first["type"] == "message" and first["body"] == {"n": 0}
        # Window 1: the second waits for the first to be settled; a nack gives it back.
        r = call(ws, "inbox", "nack", 2, {"receipts": [first["receipt"]]})
        assert r["message"]["data"]["done"] == 1
        # The freed place may go to the redelivery or to the next in line: settle both.
        got = {}
        for k in range(2):
            m = json.loads(ws.recv(timeout=10))["message"]
            got[m["body"]["n"]] = m
            r = call(ws, "inbox", "ack", 10 + k, {"receipts": [m["receipt"]]})
            assert r["message"]["data"] == {"done": 1, "unknown": []}
        assert got[0]["redelivered"] is True and got[0]["delivery_count"] == 2
        assert got[1]["redelivered"] is False


def test_snorky_backend_connector_publishes_to_a_channel(node: Node, make_client):
    """PyPI `snorky`'s own backend connector, unchanged, against POST /backend."""
    from snorky.backend import SnorkyBackend, SnorkyError, SnorkyHTTPTransport

    key = (node.data_dir / "backend.key").read_text().strip()
    backend = SnorkyBackend(SnorkyHTTPTransport(node.backend_url + "/backend", key))
    c = make_client("snk", ["snk.#"])
    with connect(ws_url(node), additional_headers={"Authorization": f"Bearer {c.token}"}) as ws:
        ws.recv(timeout=10)
        assert call(ws, "channel", "subscribe", 1, {"channel": "scores"})["message"]["type"] == "response"
        assert backend.call("pubsub", "publish", channel="scores", message={"home": 2}) is None
        m = json.loads(ws.recv(timeout=10))
        assert m == {"service": "channel", "message": {"type": "message", "channel": "scores",
                     "message": {"home": 2}, "from": {"backend": True}}}
    with pytest.raises(SnorkyError, match="Unknown command"):
        backend.call("pubsub", "subscribe", channel="scores")
    with pytest.raises(SnorkyError, match="Invalid params"):
        backend.call("pubsub", "publish", channel="not a name", message=1)
    with pytest.raises(SnorkyError, match="Unknown service"):
        backend.call("chat", "send", channel="x")
    # A wrong key is an HTTP error, which the connector raises as RuntimeError.
    with pytest.raises(RuntimeError):
        SnorkyBackend(SnorkyHTTPTransport(node.backend_url + "/backend", "wrong-key-0123456789")).call(
            "pubsub", "publish", channel="scores", message=1)


def session(node: Node, token: str):
    ws = connect(ws_url(node), additional_headers={"Authorization": f"Bearer {token}"})
    welcome = json.loads(ws.recv(timeout=10))
    return ws, welcome["message"]["sessionId"]


def answer_one_call(ws, service: str, reply) -> dict:
    """Reads the next `call` push and answers it with `reply(call)`: ("next"/"end"/
    "exception", params) pairs, in order; the pushed call."""
    pushed = json.loads(ws.recv(timeout=10))["message"]
    assert pushed["type"] == "call", pushed
    for n, (command, params) in enumerate(reply(pushed)):
        r = call(ws, service, command, f"a{n}", {"id": pushed["id"], **params})
        assert r["message"]["data"] == {"delivered": True}, r
    return pushed


def test_client_functions_called_by_a_backend(node: Node, make_client):
    """A device written with `websockets` exposes a function; a backend calls it over REST."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    key = (node.data_dir / "backend.key").read_text().strip()
    c = make_client("dev", ["dev.#"])
    ws, sid = session(node, c.token)
    with ws:
        r = call(ws, "functions", "expose", 1, {"functions": ["status"]})
        assert r["message"]["data"] == {"functions": ["status"]}
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                requests.post, f"{node.backend_url}/sessions/{sid}/functions/status",
                json={"payload": {"verbose": True}, "timeout_ms": 5000},
                headers={"X-Backend-Key": key}, timeout=30)
            pushed = answer_one_call(ws, "functions", lambda p: [
                ("next", {"data": "warming up"}), ("end", {"data": {"battery": 91, "asked": p["payload"]}})])
            resp = pending.result(timeout=30)
        assert pushed["function"] == "status" and pushed["from"] == {"backend": True}
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"data": {"battery": 91, "asked": {"verbose": True}}, "parts": ["warming up"]}


def test_rpc_between_two_websockets_sessions(node: Node, make_client, admin_token):
    """One `websockets` session serves `calc`; another calls it and gets the parts, the
    answer, and the callee's exception."""
    server_ws, _ = session(node, admin_token)
    caller = make_client("rpc", ["rpc.#"])
    caller_ws, _ = session(node, caller.token)
    with server_ws, caller_ws:
        r = call(server_ws, "rpc", "register", 1, {"name": "calc", "functions": ["add"]})
        assert r["message"]["data"] == {"name": "calc", "functions": ["add"]}
        caller_ws.send(json.dumps({"service": "rpc", "message": {"command": "call", "callId": "c1",
                                   "params": {"server": "calc", "function": "add", "payload": [2, 40]}}}))
        answer_one_call(server_ws, "rpc", lambda p: [("next", {"data": "adding"}), ("end", {"data": sum(p["payload"])})])
        assert json.loads(caller_ws.recv(timeout=10)) == {
            "service": "rpc", "message": {"type": "next", "callId": "c1", "data": "adding"}}
        assert json.loads(caller_ws.recv(timeout=10)) == {
            "service": "rpc", "message": {"type": "response", "callId": "c1", "data": 42}}

        caller_ws.send(json.dumps({"service": "rpc", "message": {"command": "call", "callId": "c2",
                                   "params": {"server": "calc", "function": "add", "payload": "x"}}}))
        answer_one_call(server_ws, "rpc", lambda p: [("exception", {"code": "E_TYPE", "message": "numbers only"})])
        err = json.loads(caller_ws.recv(timeout=10))["message"]
        assert (err["type"], err["callId"], err["code"]) == ("error", "c2", "call_exception")
        assert err["exception"] == {"code": "E_TYPE", "message": "numbers only"}


def test_query_tokens_never_reach_the_log(tmp_path):
    """A `?token=` in the upgrade URL (good or bad) is not written to the log, even at
    debug level."""
    from trunkline_node import get_token, start_node, stop_node

    node = start_node(tmp_path, log_level="debug")
    try:
        token = get_token(node, node.admin["client_id"], node.admin["secret"])
        with connect(ws_url(node, f"?token={token}")) as ws:
            assert json.loads(ws.recv(timeout=10))["message"]["type"] == "welcome"
        bad = "tl1.bogus-token-for-the-log-check"
        with pytest.raises(InvalidStatus):
            connect(ws_url(node, f"?token={bad}"))
    finally:
        assert stop_node(node.proc) == "exited cleanly"
    log = node.log_path.read_text(errors="replace")
    assert "/ws" in log, "the upgrades were logged at debug level"
    assert token not in log and bad not in log
    assert token.split(".")[-1] not in log


def test_snorky_pubsub_frontend_frames(node: Node, make_client):
    """Service `pubsub` in Snorky's own frontend shape (what snorky.js's PubSub service
    sends and expects), next to a native `channel` subscriber, fed by PyPI snorky's
    backend connector."""
    from snorky.backend import SnorkyBackend, SnorkyHTTPTransport

    key = (node.data_dir / "backend.key").read_text().strip()
    backend = SnorkyBackend(SnorkyHTTPTransport(node.backend_url + "/backend", key))
    c = make_client("snf", ["snf.#"])
    snorky_ws, _ = session(node, c.token)
    native_ws, _ = session(node, c.token)
    with snorky_ws, native_ws:
        r = call(snorky_ws, "pubsub", "subscribe", 0, {"channel": "scores"})
        assert r == {"service": "pubsub", "message": {"type": "response", "callId": 0, "data": None}}
        r = call(snorky_ws, "pubsub", "subscribe", 1, {"channel": "scores"})
        assert (r["message"]["type"], r["message"]["callId"], r["message"]["message"]) == ("error", 1, "Already subscribed")
        assert call(native_ws, "channel", "subscribe", 1, {"channel": "scores"})["message"]["type"] == "response"

        backend.call("pubsub", "publish", channel="scores", message={"home": 3})
        assert json.loads(snorky_ws.recv(timeout=10)) == {
            "service": "pubsub", "message": {"type": "message", "channel": "scores", "message": {"home": 3}}}
        assert json.loads(native_ws.recv(timeout=10))["message"] == {
            "type": "message", "channel": "scores", "message": {"home": 3}, "from": {"backend": True}}

        r = call(snorky_ws, "pubsub", "publish", 2, {"channel": "scores", "message": 1})
        assert r["message"]["message"] == "Not authorized"
        r = call(snorky_ws, "pubsub", "unsubscribe", 3, {"channel": "scores"})
        assert r["message"] == {"type": "response", "callId": 3, "data": None}
        r = call(snorky_ws, "pubsub", "unsubscribe", 4, {"channel": "scores"})
        assert r["message"]["message"] == "Not subscribed"
        r = call(snorky_ws, "pubsub", "shout", 5, {})
        assert r["message"]["message"] == "Unknown command"
        r = call(snorky_ws, "pubsub", "subscribe", 6, {"channel": ["not", "a", "name"]})
        assert r["message"]["message"] == "Invalid params"
