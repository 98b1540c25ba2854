"""The envelope test vectors (crates/envelope/tests/vectors.json, made by the Rust code),
and a relay login, checked with independent implementations: PyNaCl (libsodium) for ed25519, the ed25519 to
x25519 conversion, x25519 and XChaCha20-Poly1305; `cryptography` for HKDF-SHA256; and the
byte layout of docs/relays.md read here by hand.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import nacl.bindings as sodium
import nacl.signing
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "crates/envelope/tests/vectors.json").read_text()
)


def h(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name])


def public_key(text: str) -> bytes:
    assert text.startswith("ed25519:")
    b64 = text[len("ed25519:"):]
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))


class Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.at:self.at + n]
        assert len(out) == n, "truncated"
        self.at += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def str8(self) -> str:
        return self.take(self.u8()).decode()

    def str16(self) -> str:
        return self.take(struct.unpack(">H", self.take(2))[0]).decode()

    def address(self) -> str:
        twin = self.u32()
        return f"{twin}:{self.str8()}" if self.u8() else str(twin)


def parse(envelope: bytes) -> dict:
    r = Reader(envelope)
    assert r.take(4) == b"TLE\x01"
    e = {"uid": r.str8()}
    e["tags"] = r.str16() if r.u8() else None
    e["timestamp"], e["expiration"] = r.u64(), r.u32()
    e["source"], e["destination"] = r.address(), r.address()
    kind = r.u8()
    e["kind"] = {1: "request", 2: "response", 3: "error", 4: "ping", 5: "pong"}[kind]
    if kind == 1:
        e["command"] = r.str8()
    elif kind == 3:
        e["code"], e["message"] = r.u32(), r.str16()
    e["schema"] = r.str8() if r.u8() else None
    e["cipher"] = r.u8() == 1
    e["payload"] = r.take(r.u32())
    body_end = r.at
    e["signature"] = r.take(64)
    assert r.at == len(envelope), "bytes after the signature"
    e["body"] = envelope[:body_end]
    return e


def test_keys_come_from_the_seeds_as_libsodium_makes_them():
    for who in ("sender", "recipient"):
        sk = nacl.signing.SigningKey(h(f"{who}_seed"))
        assert bytes(sk.verify_key) == public_key(VECTORS[f"{who}_public"])


def test_the_envelope_reads_by_its_layout_and_its_signature_verifies():
    e = parse(h("envelope"))
    assert e["uid"] == "vector-1"
    assert (e["source"], e["destination"]) == ("41", "42:s1")
    assert (e["kind"], e["command"], e["schema"]) == ("request", "calc.add", "application/json")
    assert (e["timestamp"], e["expiration"]) == (1_800_000_000, 300)
    assert e["cipher"] and e["payload"] == h("cipher")
    vk = nacl.signing.VerifyKey(public_key(VECTORS["sender_public"]))
    vk.verify(h("signed_prefix") + e["body"], e["signature"])
    # Any change to what is signed fails.
    tampered = bytearray(e["body"])
    tampered[5] ^= 1
    with pytest.raises(nacl.exceptions.BadSignatureError):
        vk.verify(h("signed_prefix") + bytes(tampered), e["signature"])


def test_the_payload_opens_with_the_recipients_key_only():
    sender_pk = public_key(VECTORS["sender_public"])
    recipient_pk = public_key(VECTORS["recipient_public"])
    recipient_sk = h("recipient_seed") + recipient_pk
    x_secret = sodium.crypto_sign_ed25519_sk_to_curve25519(recipient_sk)
    x_sender = sodium.crypto_sign_ed25519_pk_to_curve25519(sender_pk)
    shared = sodium.crypto_scalarmult(x_secret, x_sender)
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=h("seal_salt"), info=sender_pk + recipient_pk
    ).derive(shared)
    cipher = h("cipher")
    nonce, body = cipher[:24], cipher[24:]
    assert nonce == h("nonce")
    ad = h("associated_data")
    assert ad == h("signed_prefix") + b"41\x0042:s1\x00vector-1"
    plain = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(body, ad, nonce, key)
    assert plain == h("plain")
    # Bound to its envelope: another uid in the associated data does not open it.
    with pytest.raises(Exception):
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(body, ad[:-1] + b"2", nonce, key)
    # Sealed the other way (recipient to sender) is another key.
    reverse = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=h("seal_salt"), info=recipient_pk + sender_pk
    ).derive(shared)
    with pytest.raises(Exception):
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(body, ad, nonce, reverse)


def test_a_relay_login_reads_by_its_layout_and_its_signature_verifies():
    login = h("login")
    challenge = h("login_challenge")
    assert login[:32] == challenge
    assert login[32] == 1, "a twin"
    (twin,) = struct.unpack(">I", login[33:37])
    assert twin == 41
    assert login[37] == 1 and login[38] == 2 and login[39:41] == b"s1"
    (timestamp,) = struct.unpack(">Q", login[41:49])
    assert timestamp == 1_800_000_000
    body, signature = login[:49], login[49:]
    assert len(signature) == 64
    vk = nacl.signing.VerifyKey(public_key(VECTORS["sender_public"]))
    vk.verify(h("login_prefix") + body, signature)
    # Another challenge (another connection) does not verify.
    with pytest.raises(nacl.exceptions.BadSignatureError):
        vk.verify(h("login_prefix") + bytes(32) + body[32:], signature)
