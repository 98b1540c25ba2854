"""Swaptacular-like peers for the federation interop tests: node databases with their
certificates, made in Python with `cryptography` as Swaptacular's scheme
(swpt-certificates.rst in swaptacular/swpt_stomp) says, and an asyncio STOMP 1.2 client
over mutual TLS 1.3 that behaves as swpt_stomp's `swpt-client` does.

Node databases (the layout swpt_stomp reads with SWPT_NODEDATA_URL=file:///…, and
crates/testkit/src/federation.rs writes for the Rust tests):

    DIR/<id>/                       node <id>'s database
      root-ca.crt                   its self-signed root CA
      private/root-ca.key           the root's key (PKCS#8 PEM, not encrypted)
      server.crt, server.key        its node certificate (TLS server and client) and key
      db/nodeid, db/nodetype
      creditors-subnet.txt          (a creditors agent) / debtors-subnet.txt (a debtors agent)
      nodeinfo/stomp.toml           (Federation.set_node_servers) how peers reach it
      peers/<peer>/ACTIVE, DEACTIVATED, root-ca.crt, sub-ca.crt, peercert.crt,
                   nodetype.txt, nodeinfo/stomp.toml, subnet.txt | masq-subnet.txt
    DIR/extra/<n>-…/                outsiders' and impostors' certificates and keys

Every subject is `O=Swaptacular Nodes Registry, OU=<node type>, serialNumber=<node id>`,
one attribute per RDN. The certificates:

- `root-ca.crt`: self-signed; BasicConstraints CA (path length 1), critical; KeyUsage
  keyCertSign and cRLSign, critical; SubjectKeyIdentifier.
- `server.crt`: the root's subject, issued by the root; BasicConstraints CA:false,
  critical; KeyUsage digitalSignature and keyEncipherment, critical; EKU clientAuth and
  serverAuth; SubjectKeyIdentifier; AuthorityKeyIdentifier (without it OpenSSL takes a
  certificate whose subject is its issuer's for self-signed).
- a peer certificate (`peers/<b>/sub-ca.crt` in `a`'s database, the same bytes as
  `peers/<a>/peercert.crt` in `b`'s): `a`'s root subject and public key, issued by `b`'s
  root; BasicConstraints CA (path length 0), critical; KeyUsage keyCertSign and cRLSign,
  critical; EKU clientAuth and serverAuth; a critical NameConstraints permitting the
  directoryName of `a`'s subject (nothing below it may name another node);
  SubjectKeyIdentifier; AuthorityKeyIdentifier; and, when `b` is an accounting authority,
  the Netscape comment `Subnet: <hex>` (the ids it gives `a`). As swpt_stomp's test data
  `CA/peers/1234abcd/sub-ca.crt`.

The client (`SwptLikeClient`) does what swpt_stomp's `StompClient` protocol does: a
`STOMP` frame with `accept-version:1.2`, `host`, `heart-beat:5000,30000`; heart-beats
negotiated as STOMP says (each side sends every max(its minimum, what the other wants));
a watchdog that closes the connection when the server is silent past its interval plus
10 s; `SEND`s with `destination`, `type`, `content-type`, `persistent:true` and
`receipt:<counter from 1>`, at most `buffer` unconfirmed; a `RECEIPT` confirms everything
up to its id; an `ERROR` ends the connection. Its TLS is swpt-client's: TLS 1.3 only, our
certificate followed by the peer certificate the server's node issued us (one temporary
PEM file), the server verified against the peer's root only, no host name check.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

# ----- identities -----------------------------------------------------------------------

REGISTRY = "Swaptacular Nodes Registry"
AA_TYPE = "Accounting Authorities"
CA_TYPE = "Creditors Agents"
DA_TYPE = "Debtors Agents"
INBOUND_EXCHANGE = {AA_TYPE: "accounts_in", CA_TYPE: "creditors_in", DA_TYPE: "debtors_in"}

# The ids and subnets of swpt_stomp's test data (test_data/AA, CA, DA).
AUTHORITY_ID = "1234abcd"
CREDITORS_AGENT_ID = "5921983fe0e6eb987aeedca54ad3c708"
DEBTORS_AGENT_ID = "060791aeca7637fa3357dfc0299fb4c5"
CREDITORS_SUBNET = "000008"
CREDITORS_MASQ_SUBNET = "000001"
DEBTORS_SUBNET = "1234abcd00"

# The Netscape certificate comment (an IA5String), which an authority's peer
# certificates carry as "Subnet: <hex>".
NETSCAPE_COMMENT_OID = ObjectIdentifier("2.16.840.1.113730.1.13")

_DAY = datetime.timedelta(days=1)
_YEAR = datetime.timedelta(days=365)


def subject(node_type: str, node_id: str) -> x509.Name:
    """`O=Swaptacular Nodes Registry, OU=<node type>, serialNumber=<node id>` (the
    serialNumber a PrintableString, as X.520 has it; one attribute per RDN)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, REGISTRY),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, node_type),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, node_id),
        ]
    )


def node_id_from_key(public_key) -> str:
    """An agent's node id as the scheme recommends: the highest 128 bits of the SHA-256
    of its root's DER public key, as 32 lowercase hex digits."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:32]


def new_key(kind: str = "ec"):
    """An ECDSA P-256 key (`ec`) or an RSA 3072 one (`rsa`, as swpt's test data has)."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key kind {kind!r}")


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ia5(text: str) -> bytes:
    raw = text.encode("ascii")
    assert len(raw) < 128
    return bytes([0x16, len(raw)]) + raw


def _builder(subj: x509.Name, issuer: x509.Name, public_key, lifetime: datetime.timedelta):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subj)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + lifetime)
    )


def _key_usage(*, digital_signature=False, key_encipherment=False, cert_sign=False):
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


_CLIENT_AND_SERVER = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
)


def make_root(node_type: str, node_id: str, key) -> x509.Certificate:
    """The node's self-signed root CA (500 years)."""
    name = subject(node_type, node_id)
    pub = key.public_key()
    b = (
        _builder(name, name, pub, 500 * _YEAR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    return b.sign(key, hashes.SHA256())


def make_server_cert(
    subj: x509.Name, issuer: x509.Certificate, issuer_key, key
) -> x509.Certificate:
    """A node (server) certificate for `subj` and `key`, issued by `issuer` (1 year)."""
    pub = key.public_key()
    b = (
        _builder(subj, issuer.subject, pub, _YEAR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_encipherment=True), critical=True
        )
        .add_extension(_CLIENT_AND_SERVER, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    return b.sign(issuer_key, hashes.SHA256())


def make_peer_cert(
    subject_root: x509.Certificate,
    issuer_root: x509.Certificate,
    issuer_key,
    subnet: str | None = None,
) -> x509.Certificate:
    """The peer certificate the node of `issuer_root` issues the node of `subject_root`:
    that root's subject and public key, a CA constrained to that subject's directory name
    (500 years). `subnet`: the Netscape comment an accounting authority adds."""
    pub = subject_root.public_key()
    b = (
        _builder(subject_root.subject, issuer_root.subject, pub, 500 * _YEAR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(_CLIENT_AND_SERVER, critical=False)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DirectoryName(subject_root.subject)],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if subnet is not None:
        b = b.add_extension(
            x509.UnrecognizedExtension(NETSCAPE_COMMENT_OID, _ia5(f"Subnet: {subnet}")),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


# ----- node databases -------------------------------------------------------------------


@dataclass
class NodeSpec:
    node_type: str
    node_id: str
    # A creditors agent's creditors-subnet.txt, a debtors agent's debtors-subnet.txt.
    subnet: str = ""
    # A creditors agent's creditors as authorities know them (the authority's
    # peers/<agent>/subnet.txt and the agent's peers/<authority>/masq-subnet.txt).
    masq_subnet: str = ""
    # "ec" (P-256) or "rsa" (3072 bits, as swpt's test data).
    key_kind: str = "ec"


@dataclass
class NodeFiles:
    spec: NodeSpec
    dir: Path
    root: x509.Certificate
    root_key: object = field(repr=False)

    @property
    def node_id(self) -> str:
        return self.spec.node_id

    @property
    def node_type(self) -> str:
        return self.spec.node_type

    @property
    def cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def key(self) -> Path:
        return self.dir / "server.key"

    @property
    def root_ca(self) -> Path:
        return self.dir / "root-ca.crt"


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)


def stomp_toml(node_type: str, servers: list[str]) -> str:
    """A peer's nodeinfo/stomp.toml: where it listens, host "/" and its inbound exchange."""
    assert servers, "a node needs at least one server"
    listed = ", ".join(json.dumps(s) for s in servers)
    return (
        f"servers = [{listed}]\n"
        'host = "/"\n'
        f'destination = "/exchange/{INBOUND_EXCHANGE[node_type]}"\n'
    )


class Federation:
    """Node databases of a set of nodes under one directory, with their root keys kept to
    issue peer certificates as peers are added."""

    def __init__(self, dir: Path, specs: list[NodeSpec]):
        self.dir = Path(dir)
        self.nodes: dict[str, NodeFiles] = {}
        self._cross: dict[tuple[str, str], bytes] = {}
        self._extra = 0
        for spec in specs:
            assert spec.node_id not in self.nodes, f"node {spec.node_id} given twice"
            digits = 8 if spec.node_type == AA_TYPE else 32
            assert len(spec.node_id) == digits and all(
                c in "0123456789abcdef" for c in spec.node_id
            ), f"{spec.node_id!r} is not a node id of {spec.node_type}"
            root_key = new_key(spec.key_kind)
            root = make_root(spec.node_type, spec.node_id, root_key)
            n = NodeFiles(spec, self.dir / spec.node_id, root, root_key)
            _write(n.root_ca, cert_pem(root))
            _write(n.dir / "private" / "root-ca.key", key_pem(root_key))
            _write(n.dir / "db" / "nodeid", f"{spec.node_id}\n")
            _write(n.dir / "db" / "nodetype", f"{spec.node_type}\n")
            if spec.node_type == CA_TYPE:
                assert len(spec.subnet) == len(spec.masq_subnet)
                _write(n.dir / "creditors-subnet.txt", f"{spec.subnet}\n")
            elif spec.node_type == DA_TYPE:
                _write(n.dir / "debtors-subnet.txt", f"{spec.subnet}\n")
            server_key = new_key(spec.key_kind)
            server = make_server_cert(root.subject, root, root_key, server_key)
            _write(n.cert, cert_pem(server))
            _write(n.key, key_pem(server_key))
            self.nodes[spec.node_id] = n

    def node(self, node_id: str) -> NodeFiles:
        return self.nodes[node_id]

    def peer_dir(self, a: str, b: str) -> Path:
        """`a`'s directory for peer `b`."""
        return self.nodes[a].dir / "peers" / b

    def cross(self, issuer: str, subj: str) -> bytes:
        """The peer certificate `issuer`'s root issues `subj` (PEM), made once per pair."""
        k = (issuer, subj)
        if k not in self._cross:
            i, s = self.nodes[issuer], self.nodes[subj]
            subnet = None
            if i.node_type == AA_TYPE:
                subnet = s.spec.masq_subnet if s.node_type == CA_TYPE else s.spec.subnet
            self._cross[k] = cert_pem(make_peer_cert(s.root, i.root, i.root_key, subnet))
        return self._cross[k]

    def peer(self, a: str, b: str, servers: list[str]) -> None:
        """`a` lists `b` as an ACTIVE peer reached at `servers`: `b`'s root, the peer
        certificate `b` issued `a` (sub-ca.crt), the one `a` issued `b` (peercert.crt),
        `b`'s type, nodeinfo/stomp.toml, the subnet file of the pair, then ACTIVE."""
        na, nb = self.nodes[a], self.nodes[b]
        d = self.peer_dir(a, b)
        _write(d / "root-ca.crt", cert_pem(nb.root))
        _write(d / "sub-ca.crt", self.cross(b, a))
        _write(d / "peercert.crt", self.cross(a, b))
        _write(d / "nodetype.txt", f"{nb.node_type}\n")
        self.set_servers(a, b, servers)
        pair = (na.node_type, nb.node_type)
        if pair == (AA_TYPE, CA_TYPE):
            _write(d / "subnet.txt", f"{nb.spec.masq_subnet}\n")
        elif pair == (AA_TYPE, DA_TYPE):
            _write(d / "subnet.txt", f"{nb.spec.subnet}\n")
        elif pair == (CA_TYPE, AA_TYPE):
            _write(d / "masq-subnet.txt", f"{na.spec.masq_subnet}\n")
        _write(d / "ACTIVE", "")

    def set_servers(self, a: str, b: str, servers: list[str]) -> None:
        _write(
            self.peer_dir(a, b) / "nodeinfo" / "stomp.toml",
            stomp_toml(self.nodes[b].node_type, servers),
        )

    def set_node_servers(self, node_id: str, servers: list[str]) -> None:
        """Node `node_id` listens at `servers`: its own nodeinfo/stomp.toml, and that of
        every node listing it as a peer."""
        n = self.nodes[node_id]
        _write(n.dir / "nodeinfo" / "stomp.toml", stomp_toml(n.node_type, servers))
        for other in self.nodes:
            if other != node_id and self.peer_dir(other, node_id).is_dir():
                self.set_servers(other, node_id, servers)

    def deactivate(self, a: str, b: str) -> None:
        _write(self.peer_dir(a, b) / "DEACTIVATED", "")

    def reactivate(self, a: str, b: str) -> None:
        (self.peer_dir(a, b) / "DEACTIVATED").unlink(missing_ok=True)

    def _extra_dir(self, what: str) -> Path:
        self._extra += 1
        return self.dir / "extra" / f"{self._extra}-{what}"

    def _kind_of(self, node_id: str) -> str:
        if node_id in self.nodes:
            return self.nodes[node_id].node_type
        return AA_TYPE if len(node_id) == 8 else CA_TYPE

    def outsider(self, node_id: str) -> tuple[Path, Path]:
        """A node certificate naming `node_id`, issued by a fresh root no node knows (its
        root beside it). Returns the paths of the certificate and the key."""
        kind = self._kind_of(node_id)
        d = self._extra_dir(f"outsider-{node_id}")
        root_key = new_key()
        root = make_root(kind, node_id, root_key)
        key = new_key()
        cert = make_server_cert(subject(kind, node_id), root, root_key, key)
        _write(d / "root-ca.crt", cert_pem(root))
        _write(d / "server.crt", cert_pem(cert))
        _write(d / "server.key", key_pem(key))
        return d / "server.crt", d / "server.key"

    def impostor(self, signer: str, node_id: str) -> tuple[Path, Path]:
        """A node certificate naming `node_id`, issued by `signer`'s root: sent followed
        by `signer`'s peer certificate from a peer, it chains to that peer's root, and only
        the peer certificate's name constraint says it is not `signer`'s."""
        kind = self._kind_of(node_id)
        d = self._extra_dir(f"impostor-{signer}-{node_id}")
        s = self.nodes[signer]
        key = new_key()
        cert = make_server_cert(subject(kind, node_id), s.root, s.root_key, key)
        _write(d / "server.crt", cert_pem(cert))
        _write(d / "server.key", key_pem(key))
        return d / "server.crt", d / "server.key"


def triangle(dir: Path, *, agent_key_kind: str = "ec") -> Federation:
    """swpt_stomp's test federation: authority 1234abcd, creditors agent 5921…c708 (its
    creditors 000008, known to the authority as 000001) and debtors agent 0607…b4c5 (its
    debtors 1234abcd00), each agent and the authority each other's active peers, reached
    at 127.0.0.1:1 until `set_node_servers` says otherwise."""
    fed = Federation(
        dir,
        [
            NodeSpec(AA_TYPE, AUTHORITY_ID),
            NodeSpec(
                CA_TYPE,
                CREDITORS_AGENT_ID,
                CREDITORS_SUBNET,
                CREDITORS_MASQ_SUBNET,
                key_kind=agent_key_kind,
            ),
            NodeSpec(DA_TYPE, DEBTORS_AGENT_ID, DEBTORS_SUBNET, key_kind=agent_key_kind),
        ],
    )
    for agent in (CREDITORS_AGENT_ID, DEBTORS_AGENT_ID):
        fed.peer(AUTHORITY_ID, agent, ["127.0.0.1:1"])
        fed.peer(agent, AUTHORITY_ID, ["127.0.0.1:1"])
    return fed


# ----- routing keys and messages ----------------------------------------------------------


def routing_key(*ids: int) -> str:
    """The top 24 bits of the MD5 of the ids (each 8 bytes, big-endian, signed), as 24
    words 0/1 joined by dots (swpt_stomp's `_calc_bin_routing_key`)."""
    digest = hashlib.md5(b"".join(i.to_bytes(8, "big", signed=True) for i in ids)).digest()
    bits = "".join(format(b, "08b") for b in digest[:3])
    return ".".join(bits)


def configure_account(
    creditor_id: int, debtor_id: int, seqnum: int, ts: str | None = None, **extra
) -> dict:
    """A valid ConfigureAccount message (Swaptacular Messaging Protocol)."""
    if ts is None:
        # With an offset other than UTC, to the microsecond.
        tz = datetime.timezone(datetime.timedelta(hours=2))
        ts = datetime.datetime.now(tz).isoformat()
    msg = {
        "type": "ConfigureAccount",
        "creditor_id": creditor_id,
        "debtor_id": debtor_id,
        "ts": ts,
        "seqnum": seqnum,
        "negligible_amount": 0.0,
        "config_data": "",
        "config_flags": 0,
    }
    msg.update(extra)
    return msg


# ----- STOMP 1.2 frames -----------------------------------------------------------------

_ESCAPES = {"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"}
_UNESCAPES = {"\\": "\\", "r": "\r", "n": "\n", "c": ":"}
# STOMP 1.2: CONNECT and CONNECTED frames do not escape header octets (STOMP is CONNECT).
_UNESCAPED_COMMANDS = {"CONNECT", "CONNECTED", "STOMP"}


class ProtocolError(Exception):
    pass


@dataclass
class Frame:
    command: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        """A header's value: its first occurrence, as STOMP 1.2 says."""
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def __repr__(self) -> str:
        body = self.body[:200]
        return f"Frame({self.command}, {self.headers}, {body!r})"


def escape(value: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in value)


def unescape(raw: str) -> str:
    out, i = [], 0
    while i < len(raw):
        c = raw[i]
        if c == "\\":
            if i + 1 >= len(raw) or raw[i + 1] not in _UNESCAPES:
                raise ProtocolError(f"undefined escape in header {raw!r}")
            out.append(_UNESCAPES[raw[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def encode(command: str, headers: list[tuple[str, str]] | dict, body: bytes = b"") -> bytes:
    """One frame: command, headers (escaped unless CONNECT/STOMP), content-length when
    there is a body, the body and NUL."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if body and not any(k == "content-length" for k, _ in items):
        items.append(("content-length", str(len(body))))
    esc = (lambda s: s) if command in _UNESCAPED_COMMANDS else escape
    head = "".join(f"{esc(k)}:{esc(v)}\n" for k, v in items)
    return f"{command}\n{head}\n".encode("utf-8") + body + b"\0"


HEARTBEAT = object()


class Parser:
    """Incremental STOMP 1.2 parser: `feed(bytes)` returns the frames completed, and
    HEARTBEAT for each end-of-line between frames."""

    def __init__(self, max_frame: int = 1 << 20):
        self.buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list:
        self.buf += data
        out: list = []
        while True:
            # EOLs between frames are heart-beats.
            while self.buf[:1] == b"\n" or self.buf[:2] == b"\r\n":
                del self.buf[: 1 if self.buf[:1] == b"\n" else 2]
                out.append(HEARTBEAT)
            if not self.buf or self.buf == b"\r":
                return out
            end = self.buf.find(b"\n\n")
            end_crlf = self.buf.find(b"\n\r\n")
            cands = [(e, 2) for e in [end] if e >= 0] + [(e, 3) for e in [end_crlf] if e >= 0]
            if not cands:
                if len(self.buf) > self.max_frame:
                    raise ProtocolError("frame head too large")
                return out
            head_end, sep = min(cands)
            head = self.buf[:head_end].decode("utf-8")
            lines = [ln[:-1] if ln.endswith("\r") else ln for ln in head.split("\n")]
            command = lines[0]
            if not command.isalpha() or not command.isupper():
                raise ProtocolError(f"bad command line {command!r}")
            raw_escape = command not in _UNESCAPED_COMMANDS
            headers: list[tuple[str, str]] = []
            for ln in lines[1:]:
                if ":" not in ln:
                    raise ProtocolError(f"bad header line {ln!r}")
                k, v = ln.split(":", 1)
                if raw_escape:
                    k, v = unescape(k), unescape(v)
                headers.append((k, v))
            body_start = head_end + sep
            length = next((v for k, v in headers if k == "content-length"), None)
            if length is not None:
                n = int(length)
                if len(self.buf) < body_start + n + 1:
                    return out
                if self.buf[body_start + n] != 0:
                    raise ProtocolError("no NUL after content-length octets")
                body_end = body_start + n
            else:
                body_end = self.buf.find(b"\0", body_start)
                if body_end < 0:
                    if len(self.buf) > self.max_frame:
                        raise ProtocolError("frame too large")
                    return out
            body = bytes(self.buf[body_start:body_end])
            del self.buf[: body_end + 1]
            out.append(Frame(command, headers, body))


# ----- TLS ------------------------------------------------------------------------------


def client_ssl_context(cert: Path, key: Path, sub_ca: bytes, peer_root: bytes) -> ssl.SSLContext:
    """swpt-client's TLS: 1.3 only; our certificate then the peer certificate the server's
    node issued us (one temporary PEM file); the server's chain verified against its
    node's root only, with no host name check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=peer_root.decode("ascii"))
    with tempfile.NamedTemporaryFile(suffix=".pem") as f:
        f.write(Path(cert).read_bytes())
        f.write(b"\n")
        f.write(sub_ca)
        f.flush()
        ctx.load_cert_chain(certfile=f.name, keyfile=str(key))
    return ctx


def peer_ssl_context(fed: Federation, client: str, server: str, cert=None, key=None):
    """The context `client` connects to `server` with (its own certificate and key unless
    `cert`/`key` are given: an outsider's, an impostor's)."""
    c = fed.node(client)
    d = fed.peer_dir(client, server)
    return client_ssl_context(
        cert or c.cert,
        key or c.key,
        (d / "sub-ca.crt").read_bytes(),
        (d / "root-ca.crt").read_bytes(),
    )


def peer_subject_serial(ssl_object) -> str | None:
    """The serialNumber of the server's certificate under O=Swaptacular Nodes Registry
    (swpt_stomp's `get_peer_serial_number`)."""
    try:
        cert = ssl_object.getpeercert() if ssl_object else None
    except ValueError:  # the connection failed right after the handshake
        return None
    data: dict = {}
    for rdn in (cert or {}).get("subject", ()):
        k, v = rdn[0]
        if k in ("organizationName", "serialNumber"):
            if len(rdn) > 1 or k in data:
                return None
            data[k] = v
    if data.get("organizationName") != REGISTRY:
        return None
    return data.get("serialNumber")


# ----- the client -----------------------------------------------------------------------

HB_SEND_MIN = 5_000
HB_RECV_DESIRED = 30_000
MAX_NETWORK_DELAY = 10_000


def _calc_heartbeat(send_min: int, recv_desired: int) -> int:
    if send_min == 0 or recv_desired == 0:
        return 0
    return max(send_min, recv_desired)


class SwptLikeClient:
    """One STOMP connection to a peer's server, as swpt_stomp's client makes it.

        c = SwptLikeClient(destination="/exchange/accounts_in")
        first = await c.open("127.0.0.1", port, ctx)   # CONNECTED, ERROR or None
        await c.send_all([(type, body_bytes), ...], timeout=30)
        await c.close()

    Everything it sees is recorded: `frames` (in order), `heartbeats_received`,
    `heartbeats_sent`, `receipts` (ids in order), `confirmed` (the highest message
    confirmed), `error` (an ERROR frame), `closed` (an event), `close_cause`, and
    `problems` (what broke the protocol: receipts out of order, unexpected frames).
    """

    def __init__(
        self,
        *,
        destination: str = "/exchange/accounts_in",
        host: str = "/",
        buffer: int = 100,
        hb_send_min: int = HB_SEND_MIN,
        hb_recv_desired: int = HB_RECV_DESIRED,
        send_heartbeats: bool = True,
        max_network_delay: int = MAX_NETWORK_DELAY,
    ):
        self.destination = destination
        self.host = host
        self.buffer = buffer
        self.hb_send_min = hb_send_min
        self.hb_recv_desired = hb_recv_desired
        self.send_heartbeats = send_heartbeats
        self.max_network_delay = max_network_delay
        self.frames: list[Frame] = []
        self.receipts: list[str] = []
        self.problems: list[str] = []
        self.heartbeats_received = 0
        self.heartbeats_sent = 0
        self.hb_send = 0
        self.hb_recv = 0
        self.sent = 0
        self.confirmed = 0
        self.error: Frame | None = None
        self.connected: Frame | None = None
        self.close_cause: str | None = None
        self.closed_at: float | None = None
        self.opened_at: float | None = None
        self.server_serial: str | None = None
        self._parser = Parser()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task] = []
        self._changed: asyncio.Condition | None = None
        self.closed: asyncio.Event | None = None
        self._last_data = 0.0

    # -- opening

    async def open(self, host: str, port: int, ctx: ssl.SSLContext, timeout: float = 10.0):
        """Connects (TLS), sends the STOMP frame and waits for the first frame. Returns it
        (CONNECTED or ERROR), or None when the connection ended before any frame (a TLS
        refusal shows so in TLS 1.3: the handshake completes on the client's side before
        the server has judged its certificate); `close_cause` says why."""
        self._changed = asyncio.Condition()
        self.closed = asyncio.Event()
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, ssl_handshake_timeout=timeout),
                timeout,
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
            self._mark_closed(f"handshake: {type(e).__name__}: {e}")
            return None
        self.opened_at = time.monotonic()
        self._last_data = self.opened_at
        self.server_serial = peer_subject_serial(self._writer.get_extra_info("ssl_object"))
        stomp = [
            ("accept-version", "1.2"),
            ("host", self.host),
            ("heart-beat", f"{self.hb_send_min},{self.hb_recv_desired}"),
        ]
        self._writer.write(encode("STOMP", stomp))
        self._tasks.append(asyncio.create_task(self._read_loop()))
        try:
            await self.wait_until(lambda: self.frames or self.closed.is_set(), timeout)
        except asyncio.TimeoutError:
            self.problems.append(f"no answer to STOMP within {timeout} s")
            await self.abort()
            return None
        return self.frames[0] if self.frames else None

    def _mark_closed(self, cause: str) -> None:
        if self.closed is not None and not self.closed.is_set():
            self.close_cause = cause
            self.closed_at = time.monotonic()
            self.closed.set()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate, timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    # -- reading

    async def _read_loop(self) -> None:
        cause = "EOF"
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                self._last_data = time.monotonic()
                for item in self._parser.feed(data):
                    if item is HEARTBEAT:
                        self.heartbeats_received += 1
                    else:
                        self._on_frame(item)
                await self._notify()
        except (OSError, ssl.SSLError, ProtocolError) as e:
            cause = f"{type(e).__name__}: {e}"
        except asyncio.CancelledError:
            cause = "cancelled"
            raise
        finally:
            self._mark_closed(cause)
            for t in self._tasks:
                if t is not asyncio.current_task():
                    t.cancel()
            if self._writer is not None:
                self._writer.close()
            try:
                await self._notify()
            except RuntimeError:
                pass

    def _on_frame(self, f: Frame) -> None:
        self.frames.append(f)
        if f.command == "CONNECTED":
            if self.connected is not None:
                self.problems.append("CONNECTED more than once")
                return
            if f.get("version") != "1.2":
                self.problems.append(f"wrong protocol version: {f}")
            self.connected = f
            self._start_heartbeats(f.get("heart-beat", "0,0"))
        elif f.command == "RECEIPT":
            if self.connected is None:
                self.problems.append("RECEIPT before CONNECTED")
            rid = f.get("receipt-id")
            if rid is None:
                self.problems.append("RECEIPT without receipt-id")
                return
            self.receipts.append(rid)
            if rid.isdigit():
                n = int(rid)
                if n <= self.confirmed or n > self.sent:
                    self.problems.append(
                        f"receipt {n} after {self.confirmed} with {self.sent} sent"
                    )
                self.confirmed = max(self.confirmed, n)
        elif f.command == "ERROR":
            self.error = f
        else:
            self.problems.append(f"unexpected {f.command}")

    # -- heart-beats

    def _start_heartbeats(self, value: str) -> None:
        try:
            sx, sy = (int(n) for n in value.split(",", 1))
            if sx < 0 or sy < 0:
                raise ValueError
        except ValueError:
            self.problems.append(f"invalid heart-beat {value!r}")
            return
        self.hb_send = _calc_heartbeat(self.hb_send_min, sy)
        self.hb_recv = _calc_heartbeat(sx, self.hb_recv_desired)
        if self.hb_send and self.send_heartbeats:
            self._tasks.append(asyncio.create_task(self._heartbeat_loop()))
        if self.hb_recv:
            self._tasks.append(asyncio.create_task(self._watchdog()))

    async def _heartbeat_loop(self) -> None:
        # As swpt_stomp: the first one hb_send after the connection started, then every
        # hb_send, whatever else is sent.
        start = self.opened_at or time.monotonic()
        k = 1
        while not self.closed.is_set():
            await asyncio.sleep(max(0.0, start + k * self.hb_send / 1000 - time.monotonic()))
            if self.closed.is_set():
                return
            self._writer.write(b"\n")
            self.heartbeats_sent += 1
            k += 1

    async def _watchdog(self) -> None:
        limit = (self.hb_recv + self.max_network_delay) / 1000
        while not self.closed.is_set():
            await asyncio.sleep(1.0)
            if time.monotonic() - self._last_data > limit:
                self.problems.append(f"no data from the server for {limit:.1f} s")
                await self.abort()
                return

    # -- sending

    async def send(self, message_type: str, body: bytes, **extra_headers: str) -> int:
        """One SEND with the next receipt number, once fewer than `buffer` are
        unconfirmed (waits for that). Returns its number, 0 if the connection ended."""
        await self.wait_until(
            lambda: self.sent - self.confirmed < self.buffer or self.closed.is_set(), 60
        )
        if self.closed.is_set():
            return 0
        self.sent += 1
        headers = [
            ("destination", extra_headers.pop("destination", self.destination)),
            ("type", message_type),
            ("content-type", extra_headers.pop("content_type", "application/json")),
            ("persistent", "true"),
            ("receipt", str(self.sent)),
        ] + list(extra_headers.items())
        self._writer.write(encode("SEND", headers, body))
        await self._writer.drain()
        return self.sent

    async def send_all(self, messages, timeout: float = 60.0) -> None:
        """Sends every (type, body) in order, at most `buffer` unconfirmed, and waits
        until all are confirmed or the connection ends (or `timeout` s pass:
        asyncio.TimeoutError)."""

        async def run():
            for message_type, body in messages:
                if not await self.send(message_type, body):
                    return
            await self.wait_until(
                lambda: self.confirmed >= self.sent or self.closed.is_set(), timeout
            )

        await asyncio.wait_for(run(), timeout)

    # -- closing

    async def wait_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def disconnect(self, receipt: str, timeout: float = 10.0) -> bool:
        """DISCONNECT with `receipt`; True if that RECEIPT came back (then the server
        closes)."""
        if self.closed.is_set():
            return False
        self._writer.write(encode("DISCONNECT", [("receipt", receipt)]))
        try:
            await self.wait_until(lambda: receipt in self.receipts or self.closed.is_set(), timeout)
        except asyncio.TimeoutError:
            return False
        return receipt in self.receipts

    async def close(self, timeout: float = 10.0) -> None:
        """As swpt_stomp's client ends a connection: at once if everything sent is
        confirmed, else DISCONNECT with the last message's id as receipt and wait for it."""
        if self.closed is None:
            return
        if not self.closed.is_set() and self.sent and self.confirmed < self.sent:
            await self.disconnect(str(self.sent), timeout)
        await self.abort()

    async def abort(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()
        self._mark_closed(self.close_cause or "closed by us")
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        for t in self._tasks:
            if t is not asyncio.current_task():
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer.wait_closed(), 5)
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                pass
