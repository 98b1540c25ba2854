"""Interop test: `/metrics` read by the Prometheus project's own OpenMetrics parser
(PyPI `prometheus-client`), against the real `trunkline` binary.

The test starts a node of its own (not the session's shared one), so the counters it
checks hold only its own traffic.

Run: TRUNKLINE_BIN=target/debug/trunkline pytest -q tests/interop/test_metrics.py
"""

from __future__ import annotations

import math

import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from trunkline_node import HTTP_TIMEOUT, call, get_token, receive, start_node, stop_node, uid

# Every metric family the node exposes, by type. Counters are named here as OpenMetrics
# names the family; their sample is the name with `_total`.
FAMILIES = {
    "trunkline_messages_published": "counter",
    "trunkline_messages_enqueued": "counter",
    "trunkline_messages_delivered": "counter",
    "trunkline_messages_acked": "counter",
    "trunkline_messages_nacked": "counter",
    "trunkline_messages_expired": "counter",
    "trunkline_messages_dead_lettered": "counter",
    "trunkline_messages_dropped_overflow": "counter",
    "trunkline_publishes_rejected_full": "counter",
    "trunkline_publishes_duplicate": "counter",
    "trunkline_commits": "counter",
    "trunkline_commit_ops": "counter",
    "trunkline_commit_failures": "counter",
    "trunkline_commit_batch_size": "histogram",
    "trunkline_commit_seconds": "histogram",
    "trunkline_clients": "gauge",
    "trunkline_dedup_entries": "gauge",
    "trunkline_queued_memory_bytes": "gauge",
    "trunkline_queued_memory_max_bytes": "gauge",
    # The log engine's (the default) disk budget.
    "trunkline_store_disk_bytes": "gauge",
    "trunkline_store_disk_max_bytes": "gauge",
    "trunkline_body_cache_bytes": "gauge",
    "trunkline_body_cache_max_bytes": "gauge",
    "trunkline_stomp_connections": "gauge",
    "trunkline_ws_sessions": "gauge",
    "trunkline_ws_calls_pending": "gauge",
    "trunkline_live_subscriptions": "gauge",
    "trunkline_live_delivered": "counter",
    "trunkline_live_missed": "counter",
    "trunkline_http_responses": "counter",
    "trunkline_queue_ready": "gauge",
    "trunkline_queue_leased": "gauge",
    # The relay (on by default; docs/relays.md).
    "trunkline_relay_stored": "counter",
    "trunkline_relay_forwarded": "counter",
    "trunkline_relay_delivered": "counter",
    "trunkline_relay_refused": "counter",
    "trunkline_relay_replays": "counter",
    "trunkline_relay_connections": "gauge",
}

# The committer's buckets (trunkline_store::commit::CommitStats), then +Inf.
BATCH_BOUNDS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, math.inf]
SECONDS_BOUNDS = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, math.inf,
]


def bucket_bounds(family) -> list[float]:
    return [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]


def sample(families, name: str, **labels) -> float:
    """The value of the one sample called `name` with exactly these labels."""
    found = [
        s.value
        for f in families.values()
        for s in f.samples
        if s.name == name and s.labels == labels
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_the_whole_exposition_parses_with_the_expected_types_and_values(tmp_path):
    node = start_node(tmp_path)
    try:
        admin = get_token(node, node.admin["client_id"], node.admin["secret"])
        client_id = f"metrics-{uid()}"
        topic = f"metrics.{uid()}"
        r = call(
            node,
            "POST",
            "/client",
            admin,
            json={"client_id": client_id, "client_name": "Metrics", "subscription": topic},
        )
        assert r.status_code == 201, r.text
        token = get_token(node, client_id, r.json()["secret"])

        # Four published; all four leased; two acked, one nacked back to ready, one still
        # leased. One request refused (no token): the only 4xx of this node.
        for i in range(4):
            r = call(node, "POST", "/send", token, json={"topic": topic, "body": {"n": i}})
            assert r.status_code == 202, r.text
        got = receive(node, token, ack="manual", lease=60)
        assert len(got) == 4, got
        r = call(node, "POST", "/ack", token, json={"receipts": [m["receipt"] for m in got[:2]]})
        assert r.json() == {"done": 2, "unknown": []}, r.text
        r = call(node, "POST", "/nack", token, json={"receipts": [got[2]["receipt"]], "requeue": True})
        assert r.json() == {"done": 1, "unknown": []}, r.text
        assert call(node, "GET", "/receive").status_code == 401

        r = requests.get(f"{node.backend_url}/metrics", timeout=HTTP_TIMEOUT)
    finally:
        assert stop_node(node.proc) == "exited cleanly", node.log_tail()

    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    text = r.text
    # The parser raises on any line it cannot read, on metadata after samples, on
    # histogram buckets out of order, and on a missing `# EOF`.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sample_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(sample_lines) == sum(len(f.samples) for f in families.values()), text

    assert {name: f.type for name, f in families.items()} == FAMILIES, text

    inbox = f"{client_id}-inbox"
    assert sample(families, "trunkline_messages_published_total") == 4
    assert sample(families, "trunkline_messages_delivered_total") == 4
    assert sample(families, "trunkline_messages_acked_total") == 2
    assert sample(families, "trunkline_messages_nacked_total") == 1
    assert sample(families, "trunkline_messages_dead_lettered_total") == 0
    assert sample(families, "trunkline_clients") == 2  # admin and ours
    assert sample(families, "trunkline_queue_ready", queue=inbox) == 1
    assert sample(families, "trunkline_queue_leased", queue=inbox) == 1
    assert sample(families, "trunkline_http_responses_total", **{"class": "4xx"}) == 1
    assert sample(families, "trunkline_http_responses_total", **{"class": "2xx"}) >= 8
    assert sample(families, "trunkline_queued_memory_bytes") > 0
    assert sample(families, "trunkline_queued_memory_max_bytes") > 0
    # One message is queued (ready) and one leased: their bodies are held.
    assert 0 < sample(families, "trunkline_body_cache_bytes") <= sample(
        families, "trunkline_body_cache_max_bytes"
    )
    assert 0 < sample(families, "trunkline_store_disk_bytes") < sample(
        families, "trunkline_store_disk_max_bytes"
    )

    # The committer's histograms: same buckets as ever, and at least one observation per
    # commit (an observation lands just before its commit is counted).
    commits = sample(families, "trunkline_commits_total")
    assert commits >= 1
    for name, bounds in [
        ("trunkline_commit_batch_size", BATCH_BOUNDS),
        ("trunkline_commit_seconds", SECONDS_BOUNDS),
    ]:
        assert bucket_bounds(families[name]) == bounds, text
        count = sample(families, f"{name}_count")
        assert count >= commits
        assert sample(families, f"{name}_bucket", le="+Inf") == count
    assert sample(families, "trunkline_commit_batch_size_sum") >= commits
    assert sample(families, "trunkline_commit_seconds_sum") > 0
