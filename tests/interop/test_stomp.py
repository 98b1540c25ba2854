"""Interop tests: a real third-party STOMP client (stomp.py) against the real `trunkline`
binary's STOMP 1.2 listener.

The node is the session's shared one (conftest.py), found through `listen.json`; clients
are made over HTTP with the admin token and log in over STOMP with their id and secret
(or a token). What a user of stomp.py sees is what is asserted: CONNECTED / ERROR /
RECEIPT / MESSAGE frames and their headers, the connection's state, and for durability
the inbox as HTTP `/receive` shows it.

Every wait is bounded: frames are collected by a listener under a condition variable
and waited for with a deadline (WAIT seconds for what must happen; QUIET seconds of
silence for what must not).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Callable

import pytest
import requests
import stomp
from stomp.utils import Frame

from trunkline_node import HTTP_TIMEOUT, Client, Node, receive, start_node, stop_node, uid

# Seconds to wait for anything the server must do (a frame, a close).
WAIT = 10.0
# Seconds of silence taken to mean "nothing more is coming".
QUIET = 0.75


# ----- a stomp.py connection that records what arrives ---------------------------------


class Recorder(stomp.ConnectionListener):
    """Collects every frame and event stomp.py reports, for bounded waits."""

    def __init__(self):
        self.cond = threading.Condition()
        self.connected: Frame | None = None
        self.errors: list[Frame] = []
        self.messages: list[Frame] = []
        self.receipts: list[str] = []
        self.disconnected = False
        self.heartbeats_received = 0
        self.heartbeats_sent = 0
        self.heartbeat_timeouts = 0

    def _record(self, change: Callable[[], None]) -> None:
        with self.cond:
            change()
            self.cond.notify_all()

    def on_connected(self, frame):
        self._record(lambda: setattr(self, "connected", frame))

    def on_error(self, frame):
        self._record(lambda: self.errors.append(frame))

    def on_message(self, frame):
        self._record(lambda: self.messages.append(frame))

    def on_receipt(self, frame):
        self._record(lambda: self.receipts.append(frame.headers["receipt-id"]))

    def on_disconnected(self):
        self._record(lambda: setattr(self, "disconnected", True))

    def on_heartbeat(self):
        def bump():
            self.heartbeats_received += 1

        self._record(bump)

    def on_heartbeat_timeout(self):
        def bump():
            self.heartbeat_timeouts += 1

        self._record(bump)

    def on_send(self, frame):
        # stomp.py sends a heart-beat as a frame without a command.
        if frame.cmd is None:

            def bump():
                self.heartbeats_sent += 1

            self._record(bump)

    def describe(self) -> str:
        with self.cond:
            errors = [(e.headers, e.body) for e in self.errors]
            return (
                f"connected={self.connected is not None} disconnected={self.disconnected} "
                f"errors={errors} receipts={self.receipts} messages={len(self.messages)}"
            )

    def wait(self, predicate: Callable[[], object], what: str, timeout: float = WAIT):
        """Waits until `predicate()` is truthy and returns its value; fails after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"waited {timeout} s for {what}; got {self.describe()}"
                    )
                self.cond.wait(left)

    def stays(self, predicate: Callable[[], bool], seconds: float) -> bool:
        """True if `predicate()` holds for all of `seconds` (checked on every event)."""
        deadline = time.monotonic() + seconds
        with self.cond:
            while predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self.cond.wait(left)
            return False


class StompClient:
    """One stomp.py 1.2 connection and its Recorder. Bodies stay bytes (auto_decode off),
    so what arrives can be compared byte for byte."""

    def __init__(self, address: tuple[str, int], heartbeats=(0, 0)):
        self.conn = stomp.Connection12(
            [address],
            heartbeats=heartbeats,
            auto_decode=False,
            reconnect_attempts_max=1,
        )
        self.rec = Recorder()
        self.conn.set_listener("recorder", self.rec)
        self._ids = itertools.count()

    def next_receipt(self) -> str:
        return f"r-{next(self._ids)}"

    # -- connecting --

    def _connect(self, login, passcode, headers) -> None:
        self.conn.connect(login, passcode, wait=False, headers=headers or {})
        self.rec.wait(
            lambda: self.rec.connected or self.rec.errors or self.rec.disconnected,
            "an answer to CONNECT",
        )

    def connect(self, login: str | None, passcode: str, headers=None) -> Frame:
        self._connect(login, passcode, headers)
        assert self.rec.connected is not None, f"CONNECT refused: {self.rec.describe()}"
        assert not self.rec.errors, self.rec.describe()
        return self.rec.connected

    def connect_refused(self, login: str | None, passcode: str) -> Frame:
        """CONNECT that must be answered by ERROR and a closed connection."""
        self._connect(login, passcode, None)
        assert self.rec.connected is None, "CONNECT was accepted"
        error = self.rec.wait(lambda: self.rec.errors and self.rec.errors[0], "ERROR")
        self.wait_closed()
        return error

    def wait_closed(self) -> None:
        self.rec.wait(lambda: self.rec.disconnected, "the server to close the connection")
        assert not self.conn.is_connected()

    # -- frames, each with a receipt unless asked otherwise --

    def wait_receipt(self, receipt: str) -> None:
        self.rec.wait(
            lambda: receipt in self.rec.receipts or self.rec.errors or self.rec.disconnected,
            f"RECEIPT {receipt}",
        )
        assert receipt in self.rec.receipts, f"no RECEIPT {receipt}: {self.rec.describe()}"

    def send(
        self,
        destination: str,
        body: bytes,
        content_type: str | None = None,
        headers: dict | None = None,
        receipt: bool = True,
        wait: bool = True,
        transaction: str | None = None,
    ) -> str | None:
        headers = dict(headers or {})
        rid = None
        if receipt:
            rid = headers["receipt"] = self.next_receipt()
        if transaction is not None:
            headers["transaction"] = transaction
        self.conn.send(destination, body, content_type=content_type, headers=headers)
        if rid is not None and wait:
            self.wait_receipt(rid)
        return rid

    def subscribe(self, destination: str, sub_id: str, ack: str = "auto", headers=None) -> None:
        rid = self.next_receipt()
        self.conn.subscribe(destination, sub_id, ack=ack, headers=dict(headers or {}, receipt=rid))
        self.wait_receipt(rid)

    def ack(self, message: Frame, transaction: str | None = None, receipt: bool = True) -> None:
        rid = self.next_receipt() if receipt else None
        self.conn.ack(message.headers["ack"], transaction=transaction, receipt=rid)
        if rid is not None:
            self.wait_receipt(rid)

    def nack(self, message: Frame, receipt: bool = True) -> None:
        rid = self.next_receipt() if receipt else None
        self.conn.nack(message.headers["ack"], receipt=rid)
        if rid is not None:
            self.wait_receipt(rid)

    # -- what arrived --

    def messages(self, sub_id: str | None = None) -> list[Frame]:
        with self.rec.cond:
            return [
                m
                for m in self.rec.messages
                if sub_id is None or m.headers.get("subscription") == sub_id
            ]

    def wait_messages(self, n: int, sub_id: str | None = None) -> list[Frame]:
        """Waits for at least `n` MESSAGEs (of `sub_id`); returns all that arrived."""
        self.rec.wait(
            lambda: len(self.messages(sub_id)) >= n or self.rec.errors or self.rec.disconnected,
            f"{n} MESSAGE frames" + (f" for subscription {sub_id}" if sub_id else ""),
        )
        got = self.messages(sub_id)
        assert len(got) >= n, f"{len(got)} of {n} messages: {self.rec.describe()}"
        return got

    def no_more_messages(self, count: int, sub_id: str | None = None) -> bool:
        """True if no MESSAGE beyond the first `count` arrives within QUIET seconds."""
        return self.rec.stays(lambda: len(self.messages(sub_id)) <= count, QUIET)

    # -- leaving --

    def disconnect(self) -> str:
        """DISCONNECT with a receipt, as stomp.py does it (it returns once the receipt is
        in), bounded by WAIT. Returns the receipt id."""
        rid = f"bye-{next(self._ids)}"
        t = threading.Thread(target=self.conn.disconnect, kwargs={"receipt": rid}, daemon=True)
        t.start()
        t.join(WAIT)
        assert not t.is_alive(), f"disconnect did not return within {WAIT} s: {self.rec.describe()}"
        self.rec.wait(lambda: rid in self.rec.receipts, f"the DISCONNECT receipt {rid}")
        self.wait_closed()
        return rid

    def close_quietly(self) -> None:
        """Teardown: leave however possible, never hang."""
        try:
            if self.conn.is_connected():
                t = threading.Thread(
                    target=self.conn.disconnect, kwargs={"receipt": "teardown"}, daemon=True
                )
                t.start()
                t.join(WAIT)
        except Exception:
            pass
        try:
            self.conn.transport.disconnect_socket()
        except Exception:
            pass


@pytest.fixture
def stomp_client(node: Node):
    """Opens stomp.py connections (to `node` unless told otherwise); closes them after
    the test. Called with a Client, it also logs in with the client's id and secret."""
    opened: list[StompClient] = []

    def open_(
        who: Client | None = None, *, on: Node | None = None, heartbeats=(0, 0)
    ) -> StompClient:
        c = StompClient((on or node).stomp, heartbeats=heartbeats)
        opened.append(c)
        if who is not None:
            c.connect(who.client_id, who.secret)
        return c

    yield open_
    for c in opened:
        c.close_quietly()


def inbox(client: Client) -> str:
    return f"/queue/{client.client_id}-inbox"


def bodies(frames: list[Frame]) -> list:
    return [json.loads(f.body) for f in frames]


def queue_gauges(node: Node, client: Client) -> list[str]:
    """The `/metrics` lines about `client`'s inbox (ready and leased counts), for a
    failure message."""
    r = requests.get(f"{node.backend_url}/metrics", timeout=HTTP_TIMEOUT)
    return [line for line in r.text.splitlines() if f"{client.client_id}-inbox" in line]


# ----- 1. connecting --------------------------------------------------------------------


def test_connect_with_secret_with_token_and_wrong_secret(node, make_client, stomp_client):
    c = make_client("stc", f"stc.{uid()}")

    by_secret = stomp_client()
    connected = by_secret.connect(c.client_id, c.secret)
    assert connected.cmd == "CONNECTED"
    assert connected.headers["version"] == "1.2"
    assert connected.headers["user-name"] == c.client_id
    assert connected.headers["server"].startswith("trunkline/")
    assert by_secret.conn.is_connected()

    # A bearer token from GET /token as the passcode, with or without the login.
    by_token = stomp_client()
    assert by_token.connect(c.client_id, c.token).headers["user-name"] == c.client_id
    token_only = stomp_client()
    assert token_only.connect(None, c.token).headers["user-name"] == c.client_id
    assert by_token.conn.is_connected() and token_only.conn.is_connected()

    refused = stomp_client()
    error = refused.connect_refused(c.client_id, c.secret + "x")
    assert error.cmd == "ERROR"
    assert error.headers["code"] == "invalid_credentials", error.headers
    assert error.headers["message"], error.headers
    assert not refused.conn.is_connected()

    # The refusal did not disturb the good connections.
    by_secret.send(inbox(c), b'{"still": "here"}')
    assert by_secret.conn.is_connected()


# ----- 2. sending to a topic ------------------------------------------------------------


def test_send_to_topic_with_receipt_reaches_the_subscribed_inbox(node, make_client, stomp_client):
    ns = uid()
    rx = make_client("strx", f"st2.{ns}.#")
    other = make_client("stother", f"st2other.{ns}")
    tx = make_client("sttx", f"sttx.{ns}")
    topic = f"st2.{ns}.ah1.mission"

    pub = stomp_client(tx)
    plan = {"plan_ID": 7, "target": "ah1", "plan": [{"action": "move", "depth": 10.0}]}
    # send() waits for the RECEIPT: the message is durable in rx's inbox now.
    pub.send(
        f"/topic/{topic}",
        json.dumps(plan).encode(),
        content_type="application/json",
        headers={"type": "mission_plan"},
    )

    sub = stomp_client(rx)
    sub.subscribe(inbox(rx), "in")
    [m] = sub.wait_messages(1)
    assert m.cmd == "MESSAGE"
    assert json.loads(m.body) == plan
    assert m.headers["destination"] == inbox(rx)
    assert m.headers["subscription"] == "in"
    assert m.headers["content-type"] == "application/json"
    assert m.headers["type"] == "mission_plan"
    assert m.headers["topic"] == topic
    assert m.headers["sender"] == tx.client_id
    assert m.headers["message-id"]
    assert m.headers.get("redelivered", "false") == "false"

    # Not JSON: arrives byte for byte, with its content type.
    text = "Position report\r\nlat: 50.9\tlon: -1.4  \n\u00fc\u00df \u2014 {not json]\n\n".encode()
    pub.send(
        f"/topic/{topic}", text, content_type="text/plain; charset=utf-8", headers={"type": "note"}
    )
    m2 = sub.wait_messages(2)[1]
    assert m2.body == text
    assert m2.headers["content-type"] == "text/plain; charset=utf-8"
    assert m2.headers["type"] == "note"
    assert sub.no_more_messages(2)
    sub.disconnect()

    # Another message, read over HTTP this time.
    pub.send(
        f"/topic/{topic}",
        b"surface at 12:00",
        content_type="text/plain",
        headers={"type": "status"},
    )
    pub.send(f"/topic/{topic}", b'{"depth": 3}', headers={"type": "depth"})
    got = receive(node, rx.token)
    assert [(g["topic"], g["sender"], g["body"]) for g in got] == [
        (topic, tx.client_id, "surface at 12:00"),
        (topic, tx.client_id, {"depth": 3}),
    ]
    assert got[0]["content_type"] == "text/plain"
    assert got[0]["headers"] == {"type": "status"}
    assert "content_type" not in got[1]  # JSON
    assert got[1]["headers"] == {"type": "depth"}

    # Only the subscribed inbox got them.
    assert receive(node, other.token) == []
    assert receive(node, tx.token) == []


def test_binary_body_sent_point_to_point_arrives_byte_exact(node, make_client, stomp_client):
    rx = make_client("stbin", f"stbin.{uid()}")
    # Putting messages straight into another client's inbox needs a write grant.
    tx = make_client("stbintx", f"stbintx.{uid()}", write_grants=[f"{rx.client_id}-inbox"])
    blob = bytes(range(256)) * 8  # NUL bytes included

    stomp_client(tx).send(inbox(rx), blob, content_type="application/octet-stream")

    sub = stomp_client(rx)
    sub.subscribe(inbox(rx), "bin")
    [m] = sub.wait_messages(1)
    assert m.body == blob
    assert m.headers["content-type"] == "application/octet-stream"
    assert m.headers["sender"] == tx.client_id


def test_a_publisher_cannot_forge_the_sender_or_topic_headers(node, make_client, stomp_client):
    ns = uid()
    rx = make_client("stforge", f"stforge.{ns}")
    tx = make_client("stforgetx", f"stforgetx.{ns}")

    stomp_client(tx).send(
        f"/topic/stforge.{ns}",
        b'{"order": "abort mission"}',
        headers={"sender": "admin", "topic": "soar.noc.command"},
    )
    sub = stomp_client(rx)
    sub.subscribe(inbox(rx), "in")
    [m] = sub.wait_messages(1)
    # A STOMP client reads the first of repeated headers (STOMP 1.2; stomp.py does).
    assert m.headers["sender"] == tx.client_id, m.headers
    assert m.headers["topic"] == f"stforge.{ns}", m.headers


# ----- 3. client-individual acks, nack, redelivery on disconnect ------------------------


def test_client_individual_ack_nack_and_redelivery_after_disconnect(
    node, make_client, stomp_client
):
    c = make_client("stind", f"stind.{uid()}")
    pub = stomp_client(c)
    for i in range(4):
        pub.send(inbox(c), json.dumps({"n": i}).encode())

    s = stomp_client(c)
    s.subscribe(inbox(c), "in", ack="client-individual")
    first = s.wait_messages(4)
    assert bodies(first) == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
    assert all(m.headers["ack"] for m in first)
    assert all(m.headers.get("redelivered", "false") == "false" for m in first)
    assert s.no_more_messages(4)

    s.ack(first[0])
    s.nack(first[1])
    again = s.wait_messages(5)[4]
    assert json.loads(again.body) == {"n": 1}
    assert again.headers["redelivered"] == "true"
    assert again.headers["message-id"] == first[1].headers["message-id"]
    s.ack(again)
    assert s.no_more_messages(5)

    # 2 and 3 are unacknowledged when the connection ends: the next subscriber gets them.
    s.disconnect()
    s2 = stomp_client(c)
    s2.subscribe(inbox(c), "in2", ack="client-individual")
    back = s2.wait_messages(2)
    assert bodies(back) == [{"n": 2}, {"n": 3}]
    assert [m.headers["message-id"] for m in back] == [m.headers["message-id"] for m in first[2:]]
    assert all(m.headers["redelivered"] == "true" for m in back)
    assert s2.no_more_messages(2)
    for m in back:
        s2.ack(m)
    s2.disconnect()

    # Everything was acknowledged: nothing is left.
    assert receive(node, c.token) == []
    assert receive(node, c.token, queue="dead") == []


def test_a_message_arriving_as_the_consumer_disconnects_is_not_held_back(
    node, make_client, stomp_client
):
    c = make_client("strace", f"strace.{uid()}")
    pub = stomp_client(c)
    # A message published just as its consumer leaves must be available to the next
    # one at once: either it reached the consumer (then DISCONNECT gives it back) or it
    # stayed in the inbox. Different delays hit different moments of the fetch.
    for i, delay in enumerate([0.0, 0.0005, 0.001, 0.002, 0.004] * 8):
        s = stomp_client(c)
        s.subscribe(inbox(c), "in", ack="client-individual")
        pub.send(inbox(c), json.dumps({"i": i}).encode(), receipt=False)
        time.sleep(delay)
        s.disconnect()
        # A message held back would stay leased for the STOMP lease (1800 s); 10 s leaves
        # room for a slow sync on a busy machine without hiding that.
        got = []
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            got = receive(node, c.token)
            if not got:
                time.sleep(0.02)
        assert [m["body"] for m in got] == [{"i": i}], (
            f"message {i} (DISCONNECT {delay * 1000} ms after its SEND) not back in the "
            f"inbox within 10 s; the consumer saw {bodies(s.messages())}; "
            f"the queue: {queue_gauges(node, c)}; the publisher: {pub.rec.describe()}; "
            f"the node's log:\n{node.log_tail(20)}"
        )
    pub.disconnect()


# ----- 4. client (cumulative) acks ------------------------------------------------------


def test_client_ack_acknowledges_everything_up_to_the_message(node, make_client, stomp_client):
    c = make_client("stcum", f"stcum.{uid()}")
    pub = stomp_client(c)
    for i in range(5):
        pub.send(inbox(c), json.dumps({"n": i}).encode())

    s = stomp_client(c)
    s.subscribe(inbox(c), "in", ack="client")
    got = s.wait_messages(5)
    assert bodies(got) == [{"n": i} for i in range(5)]

    # ACK of the third acknowledges the first three.
    s.ack(got[2])
    s.disconnect()

    left = receive(node, c.token)
    assert [m["body"] for m in left] == [{"n": 3}, {"n": 4}]
    assert all(m["redelivered"] is True for m in left)

    # The same cumulative ack, seen by a second subscriber: ack of the last one clears all.
    for i in range(5, 8):
        pub.send(inbox(c), json.dumps({"n": i}).encode())
    s2 = stomp_client(c)
    s2.subscribe(inbox(c), "in2", ack="client")
    got2 = s2.wait_messages(3)
    assert bodies(got2) == [{"n": 5}, {"n": 6}, {"n": 7}]
    s2.ack(got2[-1])
    s2.disconnect()
    assert receive(node, c.token) == []


# ----- 5. prefetch-count ----------------------------------------------------------------


def test_prefetch_count_limits_unacknowledged_deliveries(node, make_client, stomp_client):
    c = make_client("stpre", f"stpre.{uid()}")
    pub = stomp_client(c)
    for i in range(5):
        pub.send(inbox(c), json.dumps({"n": i}).encode())

    s = stomp_client(c)
    s.subscribe(inbox(c), "in", ack="client-individual", headers={"prefetch-count": "2"})
    got = s.wait_messages(2)
    assert s.no_more_messages(2), f"more than 2 unacked: {bodies(s.messages())}"
    assert bodies(got) == [{"n": 0}, {"n": 1}]

    s.ack(got[0])
    got = s.wait_messages(3)
    assert s.no_more_messages(3), f"more than 2 unacked: {bodies(s.messages())}"
    assert json.loads(got[2].body) == {"n": 2}

    # Acking the rest as they come drains the queue in order.
    for m in got[1:]:
        s.ack(m)
    got = s.wait_messages(5)
    for m in got[3:]:
        s.ack(m)
    assert bodies(got) == [{"n": i} for i in range(5)]
    assert s.no_more_messages(5)
    s.disconnect()
    assert receive(node, c.token) == []


# ----- 6. transactions ------------------------------------------------------------------


def test_transaction_abort_discards_and_commit_delivers(node, make_client, stomp_client):
    ns = uid()
    rx = make_client("sttxrx", f"sttx.{ns}.#")
    tx = make_client("sttxtx", f"sttxtx.{ns}")
    topic = f"/topic/sttx.{ns}.log"

    sub = stomp_client(rx)
    sub.subscribe(inbox(rx), "in")
    pub = stomp_client(tx)

    t1 = pub.conn.begin()
    pub.send(topic, b'{"tx": 1, "n": 1}', transaction=t1, receipt=False)
    pub.send(topic, b'{"tx": 1, "n": 2}', transaction=t1, receipt=False)
    rid = pub.next_receipt()
    pub.conn.abort(t1, receipt=rid)
    pub.wait_receipt(rid)
    # A message after the abort arrives first: the aborted ones were never published.
    pub.send(topic, b'{"marker": true}')
    assert bodies(sub.wait_messages(1)) == [{"marker": True}]
    assert sub.no_more_messages(1)

    t2 = pub.conn.begin()
    pub.send(topic, b'{"tx": 2, "n": 1}', transaction=t2, receipt=False)
    pub.send(topic, b'{"tx": 2, "n": 2}', transaction=t2, receipt=False)
    # Nothing is delivered before COMMIT.
    assert sub.no_more_messages(1)
    rid = pub.next_receipt()
    pub.conn.commit(t2, receipt=rid)
    pub.wait_receipt(rid)
    got = sub.wait_messages(3)
    # (In either order: see test_sends_of_one_connection_keep_their_order.)
    assert sorted(bodies(got[1:]), key=lambda b: b["n"]) == [{"tx": 2, "n": 1}, {"tx": 2, "n": 2}]
    assert sub.no_more_messages(3)


def test_an_ack_in_an_aborted_transaction_does_not_count(node, make_client, stomp_client):
    c = make_client("sttxack", f"sttxack.{uid()}")
    stomp_client(c).send(inbox(c), b'{"n": 1}')

    s = stomp_client(c)
    s.subscribe(inbox(c), "in", ack="client-individual")
    [m] = s.wait_messages(1)
    t = s.conn.begin()
    s.ack(m, transaction=t, receipt=False)
    rid = s.next_receipt()
    s.conn.abort(t, receipt=rid)
    s.wait_receipt(rid)
    s.disconnect()

    # Still unacknowledged, so it was given back.
    s2 = stomp_client(c)
    s2.subscribe(inbox(c), "in", ack="client-individual")
    [again] = s2.wait_messages(1)
    assert again.headers["message-id"] == m.headers["message-id"]
    assert again.headers["redelivered"] == "true"
    # Committed, the ack counts.
    t = s2.conn.begin()
    s2.ack(again, transaction=t, receipt=False)
    rid = s2.next_receipt()
    s2.conn.commit(t, receipt=rid)
    s2.wait_receipt(rid)
    s2.disconnect()
    assert receive(node, c.token) == []


# ----- 7. live topic subscriptions ------------------------------------------------------


def test_live_topic_subscriptions_with_wildcards(node, make_client, stomp_client):
    pubc = make_client("stlivepub", f"stlivepub.{uid()}")
    # It may read fleet.# live (read_topics) without fleet.# routing into its inbox.
    watcher = make_client("stlive", f"stlive.{uid()}", read_topics=["fleet.#"])
    pub = stomp_client(pubc)

    # Published before anyone subscribes: no live subscriber sees it.
    pub.send("/topic/fleet.ah1.status", b'{"before": true}')

    w = stomp_client(watcher)
    w.subscribe("/topic/fleet.*.status", "star")
    w.subscribe("/topic/fleet.#", "hash")

    topics = [
        "fleet.ah1.status",  # both
        "fleet.ah1.position",  # fleet.# only
        "fleet.status",  # fleet.# (zero words after fleet.); * needs exactly one word
        "fleet",  # fleet.# matches zero words
        "fleet.ah1.sub.status",  # fleet.# only
        "fleetx.ah1.status",  # neither: whole words
        "other.ah1.status",  # neither
        "fleet.ah2.status",  # both
    ]
    for i, t in enumerate(topics):
        pub.send(f"/topic/{t}", json.dumps({"i": i}).encode())

    star = ["fleet.ah1.status", "fleet.ah2.status"]
    hash_ = [t for t in topics if t == "fleet" or t.startswith("fleet.")]
    got_star = w.wait_messages(len(star), "star")
    got_hash = w.wait_messages(len(hash_), "hash")
    assert w.no_more_messages(len(star) + len(hash_))
    for got, expected, sub_id in ((got_star, star, "star"), (got_hash, hash_, "hash")):
        assert [m.headers["topic"] for m in got] == expected, sub_id
        assert [m.headers["destination"] for m in got] == [f"/topic/{t}" for t in expected]
        assert [json.loads(m.body)["i"] for m in got] == [topics.index(t) for t in expected]
        assert all(m.headers["sender"] == pubc.client_id for m in got)
        assert all(m.headers["subscription"] == sub_id for m in got)

    # Live, not stored: the watcher's inbox (subscription stlive.*) got none of it.
    assert receive(node, watcher.token) == []


# ----- 8. another client's inbox --------------------------------------------------------


def test_subscribing_to_another_clients_inbox_is_forbidden(node, make_client, stomp_client):
    me = make_client("stme", f"stme.{uid()}")
    victim = make_client("stvictim", f"stvictim.{uid()}")
    stomp_client(victim).send(inbox(victim), b'{"for": "victim"}')

    # Nor may it put messages into it (no write grant).
    s = stomp_client(me)
    rid = s.next_receipt()
    s.conn.send(inbox(victim), b'{"from": "me"}', headers={"receipt": rid})
    error = s.rec.wait(lambda: s.rec.errors and s.rec.errors[0], "ERROR")
    assert error.headers["code"] == "forbidden", error.headers
    assert error.headers.get("receipt-id") == rid, error.headers
    s.wait_closed()

    for queue in (inbox(victim), f"/queue/{victim.client_id}-dead"):
        s = stomp_client(me)
        rid = s.next_receipt()
        s.conn.subscribe(queue, "steal", ack="auto", headers={"receipt": rid})
        error = s.rec.wait(lambda: s.rec.errors and s.rec.errors[0], "ERROR")
        assert error.headers["code"] == "forbidden", error.headers
        assert error.headers.get("receipt-id") == rid, error.headers
        s.wait_closed()
        assert s.messages() == []

    # The victim's message is untouched.
    got = receive(node, victim.token)
    assert [m["body"] for m in got] == [{"for": "victim"}]


# ----- 9. heart-beats -------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_heartbeat_node(tmp_path_factory):
    """A second node whose STOMP heart-beats are 500 ms (the shipped 10 s would make a
    few seconds of idling prove nothing)."""
    n = start_node(
        tmp_path_factory.mktemp("trunkline-hb"),
        "[stomp]\nheartbeat_send_ms = 500\nheartbeat_recv_ms = 500\n",
    )
    try:
        yield n
    finally:
        outcome = stop_node(n.proc)
    assert outcome == "exited cleanly", f"trunkline {outcome}:\n{n.log_tail()}"


def test_heartbeats_keep_an_idle_connection_up(fast_heartbeat_node, stomp_client):
    n = fast_heartbeat_node
    s = stomp_client(on=n, heartbeats=(500, 500))
    connected = s.connect(n.admin["client_id"], n.admin["secret"])
    assert connected.headers["heart-beat"] == "500,500"

    # Idle for 3 s: more than the server's allowance (2 × 500 ms + 1 s) without
    # stomp.py's heart-beats, and stomp.py drops the connection itself after 750 ms
    # without the server's.
    assert s.rec.stays(lambda: not s.rec.disconnected and not s.rec.errors, 3.0), s.rec.describe()
    assert s.conn.is_connected()
    assert s.rec.heartbeat_timeouts == 0
    assert s.rec.heartbeats_received >= 3, s.rec.describe()
    assert s.rec.heartbeats_sent >= 3, s.rec.describe()

    # Still usable.
    s.send(f"/queue/{n.admin['client_id']}-inbox", b'{"alive": true}')
    s.disconnect()


def test_a_client_that_promises_heartbeats_and_stays_silent_is_dropped(
    fast_heartbeat_node, stomp_client
):
    n = fast_heartbeat_node
    # stomp.py sends no heart-beats (heartbeats=(0, 0)) while the CONNECT promises one
    # every 500 ms.
    s = stomp_client(on=n)
    s.connect(n.admin["client_id"], n.admin["secret"], headers={"heart-beat": "500,0"})
    error = s.rec.wait(lambda: s.rec.errors and s.rec.errors[0], "ERROR heartbeat_timeout")
    assert error.headers["code"] == "heartbeat_timeout", error.headers
    s.wait_closed()


# ----- 10. DISCONNECT with receipt ------------------------------------------------------


def test_receipts_in_order_and_disconnect_receipt_after_every_send_is_durable(
    node, make_client, stomp_client
):
    ns = uid()
    rx = make_client("stdur", f"stdur.{ns}.#")
    tx = make_client("stdurtx", f"stdurtx.{ns}")
    s = stomp_client(tx)
    pad = "x" * 4000

    # Receipts come back in the order the SENDs went out.
    rids = [
        s.send(f"/topic/stdur.{ns}.a", json.dumps({"n": i, "pad": pad}).encode(), wait=False)
        for i in range(10)
    ]
    s.rec.wait(lambda: len(s.rec.receipts) >= 10, "10 receipts")
    assert s.rec.receipts == rids

    # Then sends without receipts, and DISCONNECT with one: once stomp.py's disconnect()
    # returns, every message is in the inbox.
    for i in range(10, 40):
        s.send(f"/topic/stdur.{ns}.b", json.dumps({"n": i, "pad": pad}).encode(), receipt=False)
    s.disconnect()
    assert not s.rec.errors, s.rec.describe()

    got = receive(node, rx.token, max_messages=100)
    # All 40, in some order (see test_sends_of_one_connection_keep_their_order).
    assert sorted(m["body"]["n"] for m in got) == list(range(40))
    assert all(m["sender"] == tx.client_id for m in got)


def test_sends_of_one_connection_keep_their_order(node, make_client, stomp_client):
    c = make_client("storder", f"storder.{uid()}")
    s = stomp_client(c)
    # Pipelined, as any publisher that does not wait for each receipt sends them.
    for i in range(100):
        s.send(inbox(c), json.dumps({"n": i}).encode(), receipt=False)
    s.disconnect()

    got = []
    while batch := receive(node, c.token, max_messages=100):
        got += [m["body"]["n"] for m in batch]
    assert sorted(got) == list(range(100))  # all there...
    assert got == list(range(100))  # ...and in the order they were sent
