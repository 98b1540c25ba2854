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
        ws.send(json.dumps({"service": "session", "message": {"command": "whoami"}}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 4401
