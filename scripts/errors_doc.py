#!/usr/bin/env python3
"""Writes docs/errors.md from the error-code registry (crates/api/src/error.rs).

    python3 scripts/errors_doc.py

A test (trunkline-api, error::docs) fails when the page lacks a code, so run this after
adding one.
"""
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent.parent
src = (root / "crates/api/src/error.rs").read_text()
start = src.index("error_codes! {")
body = src[start : src.index("\n}\n", start)]
rows, doc = [], []
for line in body.splitlines()[1:]:
    line = line.strip()
    if line.startswith("///"):
        doc.append(line[3:].strip())
    m = re.match(r'(\w+) = \("([a-z_]+)", (\d+)\),', line)
    if m:
        rows.append((m.group(2), m.group(3), " ".join(doc).replace("|", "\\|")))
        doc = []
out = [
    "# Error codes",
    "",
    "Every error Trunkline reports carries one of these stable codes: over HTTP as",
    '`{"error": {"code": "...", "message": "..."}}` with the status below, over STOMP as an `ERROR`',
    "frame with a `code` header (and `message`), over WebSocket as an answer",
    '`{"type": "error", "callId", "code", "message"}`. A code never changes meaning once released;',
    "`message` is for people and may change. One mapping turns broker errors into codes for all",
    "three protocols (`crates/server/src/error.rs`); the registry itself is",
    "`crates/api/src/error.rs`; this page is written from it by `scripts/errors_doc.py`, and a",
    "test checks that it lists every code with its status.",
    "",
    "| code | HTTP status | meaning |",
    "|---|---|---|",
]
out += [f"| `{c}` | {st} | {d} |" for c, st, d in rows]
out += ["", "WebSocket close codes are listed in `docs/ws-protocol.md`.", ""]
(root / "docs/errors.md").write_text("\n".join(out))
print(f"docs/errors.md: {len(rows)} codes")
