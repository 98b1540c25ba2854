//! Node databases for federation tests, written to disk in the layout Swaptacular's
//! `swpt_stomp` reads (`SWPT_NODEDATA_URL=file:///…`) and
//! `trunkline_federation::nodedata::NodeDatabase` reads back: each node's own root CA,
//! its node certificate and key, and for each peer the peer's root, our sub-CA signed by
//! the peer's root, the peer's type, how to reach it and the subnets the pair needs.
//!
//! ```text
//! DIR/<id>/                      the node database of node <id>
//!   root-ca.crt                  its self-signed root CA
//!   private/root-ca.key          the root's key (PKCS#8 PEM, not encrypted)
//!   server.crt, server.key       its node certificate (TLS server and client) and key
//!   db/nodeid, db/nodetype
//!   creditors-subnet.txt         (a creditors agent) / debtors-subnet.txt (a debtors agent)
//!   nodeinfo/stomp.toml          (after Federation::set_node_servers) how peers reach it
//!   peers/<peer>/ACTIVE, DEACTIVATED, root-ca.crt, sub-ca.crt, peercert.crt,
//!                nodetype.txt, nodeinfo/stomp.toml, subnet.txt | masq-subnet.txt
//! DIR/extra/<n>-…/               outsiders' and impostors' certificates and keys
//! ```
//!
//! The certificates, ECDSA P-256, follow Swaptacular's (`swpt-certificates.rst`); every
//! subject is `O=Swaptacular Nodes Registry, OU=<node type>, serialNumber=<id>`:
//!
//! - `root-ca.crt`: self-signed, CA (path length 1), keyCertSign and cRLSign.
//! - `server.crt`: the root's subject, issued by the root, not a CA, digitalSignature and
//!   keyEncipherment, extended key usages serverAuth and clientAuth, an authority key
//!   identifier, and the names `localhost` and `127.0.0.1`. A node uses it both to
//!   listen and to link; a link sends it followed by the peer's `sub-ca.crt`.
//! - `peers/<b>/sub-ca.crt` in `a`'s database: `a`'s root subject and key, issued by `b`'s
//!   root, CA (path length 0), keyCertSign and cRLSign, serverAuth and clientAuth, and a
//!   critical name constraint permitting `a`'s subject only (a `directoryName`, as
//!   Swaptacular's). So `b`, trusting only its own root, verifies `a`'s chain: server.crt →
//!   sub-ca.crt → `b`'s root.
//! - `peers/<b>/peercert.crt` in `a`'s database: the certificate `a` issued to `b` (the same
//!   bytes as `peers/<a>/sub-ca.crt` in `b`'s database), as in swpt_stomp's test data.
//!
//! rustls' own verifier (webpki) refuses any chain through a CA with a `directoryName`
//! name constraint; the node verifies these chains with `trunkline_federation::chain`.
//! [`Federation::impostor`] makes a certificate naming another node under a peer's root:
//! the constraint refuses it.
//!
//! ```no_run
//! # fn f(dir: &std::path::Path) {
//! use trunkline_testkit::federation::{triangle, AUTHORITY_ID};
//! let fed = triangle(dir);
//! fed.set_node_servers(AUTHORITY_ID, &["127.0.0.1:4101"]);
//! let aa = fed.node(AUTHORITY_ID);
//! println!("{} {} {}", aa.nodedata.display(), aa.cert.display(), aa.key.display());
//! # }
//! ```
//!
//! Dev-only: the functions panic on any error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use trunkline_federation::chain::{directory_name_constraint, NAME_CONSTRAINTS_OID};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CustomExtension, DistinguishedName, DnType,
    DnValue, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// The organization every node certificate names.
pub const REGISTRY: &str = "Swaptacular Nodes Registry";

/// The accounting authority of [`triangle`] (as in swpt_stomp's test data).
pub const AUTHORITY_ID: &str = "1234abcd";
/// The creditors agent of [`triangle`].
pub const CREDITORS_AGENT_ID: &str = "5921983fe0e6eb987aeedca54ad3c708";
/// The debtors agent of [`triangle`].
pub const DEBTORS_AGENT_ID: &str = "060791aeca7637fa3357dfc0299fb4c5";
/// The creditors agent's own creditors subnet in [`triangle`].
pub const CREDITORS_SUBNET: &str = "000008";
/// The subnet the authority of [`triangle`] knows the creditors agent's creditors by.
pub const CREDITORS_MASQ_SUBNET: &str = "000001";
/// The debtors agent's debtors subnet in [`triangle`] (within the authority's id).
pub const DEBTORS_SUBNET: &str = "1234abcd00";
/// Where [`triangle`]'s peers are reached until [`Federation::set_servers`] says otherwise
/// (nothing listens on port 1).
pub const PLACEHOLDER_SERVER: &str = "127.0.0.1:1";

/// The OID of the `serialNumber` attribute (2.5.4.5), which carries the node id.
const SERIAL_NUMBER_OID: [u64; 4] = [2, 5, 4, 5];

/// The three kinds of node of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Authority,
    CreditorsAgent,
    DebtorsAgent,
}

impl Kind {
    /// As `db/nodetype`, `nodetype.txt` and the certificates' `OU` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Authority => "Accounting Authorities",
            Kind::CreditorsAgent => "Creditors Agents",
            Kind::DebtorsAgent => "Debtors Agents",
        }
    }

    /// The exchange a node of this kind receives its peers' messages in.
    pub fn inbound_exchange(self) -> &'static str {
        match self {
            Kind::Authority => "accounts_in",
            Kind::CreditorsAgent => "creditors_in",
            Kind::DebtorsAgent => "debtors_in",
        }
    }

    /// How many lowercase hex digits a node id of this kind has.
    pub fn id_digits(self) -> usize {
        match self {
            Kind::Authority => 8,
            Kind::CreditorsAgent | Kind::DebtorsAgent => 32,
        }
    }
}

/// A node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub kind: Kind,
    /// 8 lowercase hex digits for an authority, 32 for an agent.
    pub id: String,
    /// A creditors agent's `creditors-subnet.txt`, a debtors agent's `debtors-subnet.txt`
    /// (hex prefix; to peer with an authority, it should start with the authority's id).
    /// Empty for an authority, whose debtors subnet is its id.
    pub subnet: String,
    /// A creditors agent's creditors as authorities know them: the authority's
    /// `peers/<agent>/subnet.txt` and the agent's `peers/<authority>/masq-subnet.txt`; as
    /// long as `subnet`. Empty for other kinds.
    pub masq_subnet: String,
}

impl NodeSpec {
    pub fn authority(id: &str) -> NodeSpec {
        NodeSpec {
            kind: Kind::Authority,
            id: id.to_owned(),
            subnet: String::new(),
            masq_subnet: String::new(),
        }
    }

    pub fn creditors_agent(id: &str, subnet: &str, masq_subnet: &str) -> NodeSpec {
        NodeSpec {
            kind: Kind::CreditorsAgent,
            id: id.to_owned(),
            subnet: subnet.to_owned(),
            masq_subnet: masq_subnet.to_owned(),
        }
    }

    pub fn debtors_agent(id: &str, subnet: &str) -> NodeSpec {
        NodeSpec {
            kind: Kind::DebtorsAgent,
            id: id.to_owned(),
            subnet: subnet.to_owned(),
            masq_subnet: String::new(),
        }
    }

    /// Panics unless the id fits the kind and the subnets the kind needs are valid.
    fn check(&self) {
        let id_ok = self.id.len() == self.kind.id_digits()
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        assert!(id_ok, "{:?} is not a {:?} node id", self.id, self.kind);
        let subnet_ok = |s: &str| {
            s.len() <= 16
                && s.bytes().all(|b| b.is_ascii_hexdigit())
                && !(s.len() == 16 && s.bytes().all(|b| b == b'f' || b == b'F'))
        };
        match self.kind {
            Kind::Authority => {}
            Kind::CreditorsAgent => {
                assert!(
                    subnet_ok(&self.subnet) && subnet_ok(&self.masq_subnet),
                    "invalid subnets in {self:?}"
                );
                assert_eq!(
                    self.subnet.len(),
                    self.masq_subnet.len(),
                    "a creditors agent's subnet and masq subnet must be as long: {self:?}"
                );
            }
            Kind::DebtorsAgent => assert!(subnet_ok(&self.subnet), "invalid subnet in {self:?}"),
        }
    }
}

/// The files of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    pub id: String,
    pub kind: Kind,
    /// As in [`NodeSpec`].
    pub subnet: String,
    pub masq_subnet: String,
    /// The node database directory (`DIR/<id>`).
    pub nodedata: PathBuf,
    /// `server.crt`: the node certificate, PEM.
    pub cert: PathBuf,
    /// `server.key`: its key, PKCS#8 PEM.
    pub key: PathBuf,
    /// `root-ca.crt`: the node's root CA, PEM.
    pub root_ca: PathBuf,
}

struct Node {
    files: NodeFiles,
    root: Certificate,
    root_key: KeyPair,
}

/// A set of nodes on disk, with their root keys kept to sign sub-CAs as peers are added.
pub struct Federation {
    dir: PathBuf,
    nodes: Vec<Node>,
    /// Certificates issued by one node's root to another's, by (issuer, subject): each is
    /// the subject's `sub-ca.crt` and the issuer's `peercert.crt`, the same bytes.
    cross: Mutex<HashMap<(String, String), String>>,
    extra: AtomicUsize,
}

impl Federation {
    /// Creates each node's own files under `dir` (`dir/<id>`): its root CA, node
    /// certificate and key, `db/nodeid`, `db/nodetype` and its subnet file. No peers yet.
    pub fn new(dir: &Path, specs: &[NodeSpec]) -> Federation {
        let mut nodes: Vec<Node> = Vec::new();
        for spec in specs {
            spec.check();
            assert!(
                nodes.iter().all(|n| n.files.id != spec.id),
                "node {} given twice",
                spec.id
            );
            let nodedata = dir.join(&spec.id);
            let (root, root_key) = new_root(spec.kind, &spec.id);
            let files = NodeFiles {
                id: spec.id.clone(),
                kind: spec.kind,
                subnet: spec.subnet.clone(),
                masq_subnet: spec.masq_subnet.clone(),
                cert: nodedata.join("server.crt"),
                key: nodedata.join("server.key"),
                root_ca: nodedata.join("root-ca.crt"),
                nodedata,
            };
            write(&files.root_ca, &root.pem());
            write(
                &files.nodedata.join("private/root-ca.key"),
                &root_key.serialize_pem(),
            );
            write(&files.nodedata.join("db/nodeid"), &format!("{}\n", spec.id));
            write(
                &files.nodedata.join("db/nodetype"),
                &format!("{}\n", spec.kind.as_str()),
            );
            match spec.kind {
                Kind::Authority => {}
                Kind::CreditorsAgent => write(
                    &files.nodedata.join("creditors-subnet.txt"),
                    &format!("{}\n", spec.subnet),
                ),
                Kind::DebtorsAgent => write(
                    &files.nodedata.join("debtors-subnet.txt"),
                    &format!("{}\n", spec.subnet),
                ),
            }
            let (cert, key) = leaf(subject(spec.kind, &spec.id), &root, &root_key);
            write(&files.cert, &cert);
            write(&files.key, &key);
            nodes.push(Node {
                files,
                root,
                root_key,
            });
        }
        Federation {
            dir: dir.to_owned(),
            nodes,
            cross: Mutex::new(HashMap::new()),
            extra: AtomicUsize::new(0),
        }
    }

    /// The directory the nodes are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node `id`; panics if there is none.
    pub fn node(&self, id: &str) -> &NodeFiles {
        &self.get(id).files
    }

    /// Every node, in the order given.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeFiles> {
        self.nodes.iter().map(|n| &n.files)
    }

    /// `a`'s directory for peer `b` (`peers/<b>` in `a`'s database).
    pub fn peer_dir(&self, a: &str, b: &str) -> PathBuf {
        self.node(a).nodedata.join("peers").join(b)
    }

    /// `a` lists `b` as an ACTIVE peer whose servers are `servers` (`"127.0.0.1:port"`):
    /// `b`'s root, `a`'s sub-CA signed by `b`'s root, the certificate `a` issued to `b`
    /// (`peercert.crt`), `b`'s type, `nodeinfo/stomp.toml`, the subnet file the pair needs
    /// (`subnet.txt` when `a` is an authority, `masq-subnet.txt` when `a` is a creditors
    /// agent and `b` an authority), then `ACTIVE`. A `DEACTIVATED` already there stays.
    /// A pair the protocol refuses (not an agent with an authority) is written without a
    /// subnet file; reading it fails as `nodedata.rs` defines. Call it the other way round
    /// too for the two to be each other's peers.
    pub fn peer<S: AsRef<str>>(&self, a: &str, b: &str, servers: &[S]) {
        let (na, nb) = (self.get(a), self.get(b));
        assert!(a != b, "a node cannot be its own peer");
        let dir = self.peer_dir(a, b);
        write(&dir.join("root-ca.crt"), &nb.root.pem());
        write(&dir.join("sub-ca.crt"), &self.cross(nb, na));
        write(&dir.join("peercert.crt"), &self.cross(na, nb));
        write(
            &dir.join("nodetype.txt"),
            &format!("{}\n", nb.files.kind.as_str()),
        );
        self.set_servers(a, b, servers);
        let (subnet_file, subnet) = match (na.files.kind, nb.files.kind) {
            (Kind::Authority, Kind::CreditorsAgent) => ("subnet.txt", &nb.files.masq_subnet),
            (Kind::Authority, Kind::DebtorsAgent) => ("subnet.txt", &nb.files.subnet),
            (Kind::CreditorsAgent, Kind::Authority) => ("masq-subnet.txt", &na.files.masq_subnet),
            _ => ("", &na.files.subnet),
        };
        if !subnet_file.is_empty() {
            write(&dir.join(subnet_file), &format!("{subnet}\n"));
        }
        write(&dir.join("ACTIVE"), "");
    }

    /// Rewrites `a`'s `peers/<b>/nodeinfo/stomp.toml`: `servers`, `host = "/"`, and
    /// `destination = "/exchange/<b's inbound exchange>"`.
    pub fn set_servers<S: AsRef<str>>(&self, a: &str, b: &str, servers: &[S]) {
        let kind = self.get(b).files.kind;
        write(
            &self.peer_dir(a, b).join("nodeinfo/stomp.toml"),
            &stomp_toml(kind, servers),
        );
    }

    /// Node `id` listens at `servers`: every node that lists it as a peer is told so
    /// ([`Federation::set_servers`]), and its own `nodeinfo/stomp.toml` says so (what it
    /// would publish to its peers, as in swpt_stomp's test data).
    pub fn set_node_servers<S: AsRef<str>>(&self, id: &str, servers: &[S]) {
        let node = self.get(id);
        write(
            &node.files.nodedata.join("nodeinfo/stomp.toml"),
            &stomp_toml(node.files.kind, servers),
        );
        for other in &self.nodes {
            if other.files.id != id && self.peer_dir(&other.files.id, id).is_dir() {
                self.set_servers(&other.files.id, id, servers);
            }
        }
    }

    /// `a` refuses `b`: creates `peers/<b>/DEACTIVATED`.
    pub fn deactivate(&self, a: &str, b: &str) {
        write(&self.peer_dir(a, b).join("DEACTIVATED"), "");
    }

    /// Removes `peers/<b>/DEACTIVATED` from `a`'s database, if there.
    pub fn reactivate(&self, a: &str, b: &str) {
        remove(&self.peer_dir(a, b).join("DEACTIVATED"));
    }

    /// Removes `peers/<b>/ACTIVE` from `a`'s database, if there.
    pub fn remove_active(&self, a: &str, b: &str) {
        remove(&self.peer_dir(a, b).join("ACTIVE"));
    }

    /// Creates `peers/<b>/ACTIVE` in `a`'s database again.
    pub fn activate(&self, a: &str, b: &str) {
        write(&self.peer_dir(a, b).join("ACTIVE"), "");
    }

    /// A certificate and key naming node `id`, signed by a fresh root no node knows (an
    /// unknown CA). The certificate is shaped as a `server.crt` is; its root is beside it
    /// (`root-ca.crt`). Returns the paths of the certificate and the key.
    pub fn outsider(&self, id: &str) -> (PathBuf, PathBuf) {
        let kind = self.kind_of(id);
        let dir = self.extra_dir(&format!("outsider-{id}"));
        let (root, root_key) = new_root(kind, id);
        let (cert, key) = leaf(subject(kind, id), &root, &root_key);
        write(&dir.join("root-ca.crt"), &root.pem());
        self.write_pair(&dir, &cert, &key)
    }

    /// A certificate and key naming node `id`, signed by `signer`'s root: shaped as
    /// `signer`'s own `server.crt`, so that sent followed by `signer`'s
    /// `peers/<target>/sub-ca.crt` (as a link of `signer`'s sends it) it chains to the
    /// target's root and passes TLS, while naming `id` (an unknown node when `id` is not a
    /// peer of the target; another peer when it is). Returns the paths of the certificate
    /// and the key.
    pub fn impostor(&self, signer: &str, id: &str) -> (PathBuf, PathBuf) {
        let kind = self.kind_of(id);
        let dir = self.extra_dir(&format!("impostor-{signer}-{id}"));
        let s = self.get(signer);
        let (cert, key) = leaf(subject(kind, id), &s.root, &s.root_key);
        self.write_pair(&dir, &cert, &key)
    }

    fn get(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.files.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this federation"))
    }

    /// The kind of node `id`: its own if it is ours, else by its length.
    fn kind_of(&self, id: &str) -> Kind {
        match self.nodes.iter().find(|n| n.files.id == id) {
            Some(n) => n.files.kind,
            None if id.len() == 8 => Kind::Authority,
            None => Kind::CreditorsAgent,
        }
    }

    fn extra_dir(&self, what: &str) -> PathBuf {
        let n = self.extra.fetch_add(1, Ordering::Relaxed);
        self.dir.join("extra").join(format!("{n}-{what}"))
    }

    fn write_pair(&self, dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
        write(&cert_path, cert);
        write(&key_path, key);
        (cert_path, key_path)
    }

    /// The certificate `issuer`'s root issues to `subject`'s root key and subject (PEM),
    /// made once per pair.
    fn cross(&self, issuer: &Node, subject: &Node) -> String {
        let key = (issuer.files.id.clone(), subject.files.id.clone());
        let mut cache = self
            .cross
            .lock()
            .expect("invariant: no panic holds the lock");
        cache
            .entry(key)
            .or_insert_with(|| {
                let mut p = CertificateParams::default();
                p.distinguished_name = subject.root.params().distinguished_name.clone();
                p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                p.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ClientAuth,
                    ExtendedKeyUsagePurpose::ServerAuth,
                ];
                p.use_authority_key_identifier_extension = true;
                // As Swaptacular's: nothing below may name another node (rcgen's own name
                // constraints tag a directory name implicitly, which no verifier takes).
                let (_, root) = x509_parser::parse_x509_certificate(subject.root.der())
                    .expect("invariant: our own root parses");
                let mut nc = CustomExtension::from_oid_content(
                    NAME_CONSTRAINTS_OID,
                    directory_name_constraint(root.subject().as_raw()),
                );
                nc.set_criticality(true);
                p.custom_extensions.push(nc);
                p.signed_by(&subject.root_key, &issuer.root, &issuer.root_key)
                    .expect("sign a sub-CA")
                    .pem()
            })
            .clone()
    }
}

/// Sets `c` up to run as `node`: its node database, certificate and key, and a
/// federation listener on 127.0.0.1 (port 0), reading the database again every second.
pub fn configure(c: &mut trunkline_server::Config, node: &NodeFiles) {
    let f = &mut c.federation;
    f.nodedata = Some(node.nodedata.display().to_string());
    f.listen = "127.0.0.1:0".parse().expect("invariant: literal address");
    f.cert = node.cert.clone();
    f.key = node.key.clone();
    f.reread_secs = 1;
}

impl Federation {
    /// A TLS connection to `server` (listening at `addr`) as `client` would open it: its
    /// certificate, then the peer certificate `server` issued it, trusting `server`'s root
    /// and nothing else. `Err` if the handshake fails.
    pub async fn dial(
        &self,
        client: &str,
        server: &str,
        addr: &str,
    ) -> Result<crate::StompWire, String> {
        let c = self.node(client);
        self.dial_with(client, server, addr, &c.cert, &c.key).await
    }

    /// As [`Federation::dial`], presenting `cert` and `key` instead of `client`'s own
    /// (an outsider's, an impostor's) with the peer certificate `client` has from `server`.
    pub async fn dial_with(
        &self,
        client: &str,
        server: &str,
        addr: &str,
        cert: &Path,
        key: &Path,
    ) -> Result<crate::StompWire, String> {
        let dir = self.peer_dir(client, server);
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| e.to_string());
        let connector = trunkline_server::federation::tls::connector(
            cert,
            key,
            &read(dir.join("sub-ca.crt"))?,
            &read(dir.join("root-ca.crt"))?,
            server,
        )
        .map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("peer").map_err(|e| e.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(crate::StompWire::over(Box::new(tls)))
    }
}

/// One authority ([`AUTHORITY_ID`]), one creditors agent ([`CREDITORS_AGENT_ID`], its
/// creditors [`CREDITORS_SUBNET`], known to the authority as [`CREDITORS_MASQ_SUBNET`])
/// and one debtors agent ([`DEBTORS_AGENT_ID`], its debtors [`DEBTORS_SUBNET`]), in
/// `dir`: each agent and the authority are each other's active peers (agents peer only
/// with authorities), reached at [`PLACEHOLDER_SERVER`] until
/// [`Federation::set_node_servers`] or [`Federation::set_servers`] says otherwise. The
/// ids and subnets are those of swpt_stomp's test data.
pub fn triangle(dir: &Path) -> Federation {
    let fed = Federation::new(
        dir,
        &[
            NodeSpec::authority(AUTHORITY_ID),
            NodeSpec::creditors_agent(CREDITORS_AGENT_ID, CREDITORS_SUBNET, CREDITORS_MASQ_SUBNET),
            NodeSpec::debtors_agent(DEBTORS_AGENT_ID, DEBTORS_SUBNET),
        ],
    );
    for agent in [CREDITORS_AGENT_ID, DEBTORS_AGENT_ID] {
        fed.peer(AUTHORITY_ID, agent, &[PLACEHOLDER_SERVER]);
        fed.peer(agent, AUTHORITY_ID, &[PLACEHOLDER_SERVER]);
    }
    fed
}

/// `O=Swaptacular Nodes Registry, OU=<kind>, serialNumber=<id>` (a PrintableString, as
/// X.520 has it).
fn subject(kind: Kind, id: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, REGISTRY);
    dn.push(DnType::OrganizationalUnitName, kind.as_str());
    let serial = id
        .try_into()
        .unwrap_or_else(|_| panic!("{id:?} cannot be a PrintableString"));
    dn.push(
        DnType::CustomDnType(SERIAL_NUMBER_OID.to_vec()),
        DnValue::PrintableString(serial),
    );
    dn
}

/// A self-signed root CA for node `id`, and its key.
fn new_root(kind: Kind, id: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("generate a key");
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(kind, id);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).expect("sign a root");
    (cert, key)
}

/// A node certificate for `subject` issued by `root`: the certificate and its key, PEM.
fn leaf(subject: DistinguishedName, root: &Certificate, root_key: &KeyPair) -> (String, String) {
    let key = KeyPair::generate().expect("generate a key");
    let mut p = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("invariant: valid names");
    p.distinguished_name = subject;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    // Without it, OpenSSL takes a certificate whose subject is its issuer's for self-signed.
    p.use_authority_key_identifier_extension = true;
    let cert = p
        .signed_by(&key, root, root_key)
        .expect("sign a node certificate");
    (cert.pem(), key.serialize_pem())
}

fn stomp_toml<S: AsRef<str>>(kind: Kind, servers: &[S]) -> String {
    assert!(!servers.is_empty(), "a peer needs at least one server");
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let list: Vec<String> = servers.iter().map(|s| quote(s.as_ref())).collect();
    format!(
        "servers = [{}]\nhost = \"/\"\ndestination = \"/exchange/{}\"\n",
        list.join(", "),
        kind.inbound_exchange()
    )
}

fn write(path: &Path, contents: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    //! Each database reads back with `trunkline_federation::nodedata`; each certificate
    //! names its node; and the chains verify (or not) as peers verify them
    //! (`trunkline_federation::chain`).

    use super::*;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use trunkline_federation::chain::{verify_chain, Usage};
    use trunkline_federation::nodedata::{parse_stomp_toml, NodeDatabase, NodeType};
    use trunkline_federation::{peer_node_id, Subnet};

    const AA: &str = AUTHORITY_ID;
    const CA: &str = CREDITORS_AGENT_ID;
    const DA: &str = DEBTORS_AGENT_ID;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
        rustls_pemfile::certs(&mut read(path).as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM certificates")
    }

    fn key(path: &Path) -> PrivateKeyDer<'static> {
        rustls_pemfile::private_key(&mut read(path).as_bytes())
            .expect("PEM")
            .expect("a private key")
    }

    /// The node id the first certificate of a file names.
    fn named(path: &Path) -> Option<String> {
        peer_node_id(&certs(path)[0])
    }

    /// The serialNumber of a certificate's issuer: the node whose root (or sub-CA) issued it.
    fn issuer_node_id(der: &[u8]) -> Option<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let serial = cert
            .issuer()
            .iter_attributes()
            .find(|a| *a.attr_type() == x509_parser::oid_registry::OID_X509_SERIALNUMBER)?;
        serial.as_str().ok().map(str::to_owned)
    }

    fn subnet(hex: &str) -> Subnet {
        Subnet::parse(hex).expect("a subnet")
    }

    fn node_type(kind: Kind) -> NodeType {
        match kind {
            Kind::Authority => NodeType::AccountingAuthority,
            Kind::CreditorsAgent => NodeType::CreditorsAgent,
            Kind::DebtorsAgent => NodeType::DebtorsAgent,
        }
    }

    #[test]
    fn every_node_and_peer_reads_back_as_nodedata_defines_it() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let fed = triangle(tmp.path());
        fed.set_node_servers(AA, &["127.0.0.1:4101", "127.0.0.1:4102"]);
        fed.set_node_servers(CA, &["127.0.0.1:4201"]);
        fed.set_node_servers(DA, &["127.0.0.1:4301"]);
        let db = |id: &str| NodeDatabase::new(&fed.node(id).nodedata);

        for n in fed.nodes() {
            let me = db(&n.id).node().unwrap_or_else(|e| panic!("{}: {e}", n.id));
            assert_eq!(me.node_id, n.id);
            assert_eq!(me.node_type, node_type(n.kind));
            assert_eq!(me.root_cert, read(&n.root_ca));
            let subnets = match n.kind {
                Kind::Authority => (Subnet::ALL, subnet(&n.id)),
                Kind::CreditorsAgent => (subnet(&n.subnet), Subnet::ALL),
                Kind::DebtorsAgent => (Subnet::ZERO, subnet(&n.subnet)),
            };
            assert_eq!(
                (me.creditors_subnet, me.debtors_subnet),
                subnets,
                "{}",
                n.id
            );
            let url = NodeDatabase::new(format!("file://{}", n.nodedata.display()));
            assert_eq!(url.node().expect("by URL").node_id, n.id);
            // Its own nodeinfo says where it listens, as its peers' say.
            let own = parse_stomp_toml(&read(&n.nodedata.join("nodeinfo/stomp.toml")), &n.id)
                .expect("own stomp.toml");
            assert_eq!(
                own.destination,
                format!("/exchange/{}", n.kind.inbound_exchange())
            );
        }

        let mut agents = vec![CA.to_owned(), DA.to_owned()];
        agents.sort();
        assert_eq!(db(AA).peer_ids().expect("AA peers"), agents);
        assert_eq!(db(CA).peer_ids().expect("CA peers"), vec![AA.to_owned()]);
        assert_eq!(db(DA).peer_ids().expect("DA peers"), vec![AA.to_owned()]);

        let aa_servers = vec![
            ("127.0.0.1".to_owned(), 4101),
            ("127.0.0.1".to_owned(), 4102),
        ];
        let masq = subnet(CREDITORS_MASQ_SUBNET);
        let debtors = subnet(DEBTORS_SUBNET);
        for (owner, peer, creditors_subnet, debtors_subnet, servers) in [
            (
                AA,
                CA,
                masq,
                subnet(AA),
                vec![("127.0.0.1".to_owned(), 4201)],
            ),
            (
                AA,
                DA,
                Subnet::ZERO,
                debtors,
                vec![("127.0.0.1".to_owned(), 4301)],
            ),
            (CA, AA, masq, subnet(AA), aa_servers.clone()),
            (DA, AA, Subnet::ZERO, debtors, aa_servers),
        ] {
            let p = db(owner)
                .peer(peer, true)
                .unwrap_or_else(|e| panic!("{owner} peer {peer}: {e}"))
                .unwrap_or_else(|| panic!("{owner} has active peer {peer}"));
            let kind = fed.node(peer).kind;
            assert_eq!(p.node_type, node_type(kind));
            assert_eq!(p.node_id, peer);
            assert_eq!(p.stomp.servers, servers, "{owner} peer {peer}");
            assert_eq!(p.stomp.host, "/");
            assert_eq!(
                p.stomp.destination,
                format!("/exchange/{}", kind.inbound_exchange())
            );
            assert_eq!(
                (p.stomp.login.as_deref(), p.stomp.passcode.as_deref()),
                (None, None)
            );
            assert_eq!(
                p.stomp.accepted_content_types,
                vec!["application/json".to_owned()]
            );
            assert_eq!(p.root_cert, read(&fed.node(peer).root_ca));
            let dir = fed.peer_dir(owner, peer);
            assert_eq!(p.sub_cert, read(&dir.join("sub-ca.crt")));
            // What the peer issued us is what it lists as the certificate it issued us.
            assert_eq!(
                p.sub_cert,
                read(&fed.peer_dir(peer, owner).join("peercert.crt"))
            );
            assert_eq!(p.creditors_subnet, creditors_subnet, "{owner} peer {peer}");
            assert_eq!(p.debtors_subnet, debtors_subnet, "{owner} peer {peer}");
            assert!(p.active && !p.deactivated);
        }
        // The creditors agent's creditors move between its subnet and the masq one.
        let own = subnet(CREDITORS_SUBNET);
        assert_eq!(
            own.translate(0x0000_0800_0000_0007, &masq),
            Some(0x0000_0100_0000_0007)
        );

        // Activation, as nodedata.rs reads it.
        let state = || {
            let any = db(AA)
                .peer(CA, false)
                .expect("read")
                .map(|p| (p.active, p.deactivated));
            (db(AA).peer(CA, true).expect("read").is_some(), any)
        };
        assert_eq!(state(), (true, Some((true, false))));
        fed.deactivate(AA, CA);
        assert_eq!(state(), (false, Some((false, true))));
        fed.reactivate(AA, CA);
        assert_eq!(state(), (true, Some((true, false))));
        fed.remove_active(AA, CA);
        assert_eq!(state(), (false, Some((false, false))));
        fed.deactivate(AA, CA);
        assert_eq!(state(), (false, Some((false, true))));
        fed.reactivate(AA, CA);
        fed.activate(AA, CA);
        assert_eq!(state(), (true, Some((true, false))));
        assert!(db(AA).peer_ids().expect("peers").contains(&CA.to_owned()));

        // Servers rewritten for one pair only.
        fed.set_servers(CA, AA, &["127.0.0.1:5000"]);
        let p = db(CA).peer(AA, true).expect("read").expect("active");
        assert_eq!(p.stomp.servers, vec![("127.0.0.1".to_owned(), 5000)]);
        let p = db(DA).peer(AA, true).expect("read").expect("active");
        assert_eq!(p.stomp.servers.len(), 2);

        // A pair the protocol refuses is written, and refused on reading.
        fed.peer(CA, DA, &["127.0.0.1:4301"]);
        assert!(db(CA).peer(DA, true).is_err());
    }

    #[test]
    fn every_certificate_names_its_node_and_chains_as_the_scheme_needs() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let fed = triangle(tmp.path());
        for n in fed.nodes() {
            assert_eq!(named(&n.cert).as_deref(), Some(n.id.as_str()));
            assert_eq!(named(&n.root_ca).as_deref(), Some(n.id.as_str()));
            key(&n.key);
        }
        for (a, b) in [(AA, CA), (AA, DA), (CA, AA), (DA, AA)] {
            let leaf_der = certs(&fed.node(a).cert).remove(0);
            let root_der = certs(&fed.node(a).root_ca).remove(0);
            let sub_der = certs(&fed.peer_dir(a, b).join("sub-ca.crt")).remove(0);
            let peer_root_der = certs(&fed.node(b).root_ca).remove(0);
            let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).expect("leaf");
            let (_, root) = x509_parser::parse_x509_certificate(&root_der).expect("root");
            let (_, sub) = x509_parser::parse_x509_certificate(&sub_der).expect("sub-CA");
            let (_, peer_root) =
                x509_parser::parse_x509_certificate(&peer_root_der).expect("peer root");
            // The sub-CA is our root's subject and key, issued by the peer's root.
            assert_eq!(sub.subject().as_raw(), root.subject().as_raw());
            assert_eq!(sub.public_key().raw, root.public_key().raw);
            assert_eq!(sub.issuer().as_raw(), peer_root.subject().as_raw());
            assert_eq!(leaf.issuer().as_raw(), sub.subject().as_raw());
            assert!(sub.is_ca() && root.is_ca() && !leaf.is_ca());
            let eku = leaf
                .extended_key_usage()
                .expect("EKU")
                .expect("EKU present")
                .value;
            assert!(eku.server_auth && eku.client_auth);
            assert_eq!(
                named(&fed.peer_dir(a, b).join("sub-ca.crt")).as_deref(),
                Some(a)
            );
            assert_eq!(
                named(&fed.peer_dir(a, b).join("peercert.crt")).as_deref(),
                Some(b)
            );
        }
        let stranger = "0123456789abcdef0123456789abcdef";
        let (cert, key_path) = fed.outsider(stranger);
        assert_eq!(named(&cert).as_deref(), Some(stranger));
        key(&key_path);
        let (cert, _) = fed.outsider(CA);
        assert_eq!(named(&cert).as_deref(), Some(CA));
        for id in [DA, "deadbeef", stranger] {
            let (cert, key_path) = fed.impostor(CA, id);
            assert_eq!(named(&cert).as_deref(), Some(id));
            assert_eq!(issuer_node_id(&certs(&cert)[0]).as_deref(), Some(CA));
            key(&key_path);
        }
    }

    /// Each chain as the node's peers verify it (the TLS of the federation listener and of
    /// links, end to end, is tested on real nodes in crates/cli/tests/federation.rs).
    #[test]
    fn chains_verify_as_peers_verify_them() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let fed = triangle(tmp.path());
        let now = 1_800_000_000;
        let der = |p: &Path| certs(p).remove(0).to_vec();
        for (client, server) in [(AA, CA), (AA, DA), (CA, AA), (DA, AA)] {
            let leaf = der(&fed.node(client).cert);
            let sub = der(&fed.peer_dir(client, server).join("sub-ca.crt"));
            let root = der(&fed.node(server).root_ca);
            let id = verify_chain(&[&leaf, &sub], &root, now, Usage::Client);
            assert_eq!(id.as_deref(), Ok(client), "{client} -> {server}");
            // And the link's view of the server: straight to the root the client has for it.
            let server_leaf = der(&fed.node(server).cert);
            let theirs = der(&fed.peer_dir(client, server).join("root-ca.crt"));
            let id = verify_chain(&[&server_leaf], &theirs, now, Usage::Server);
            assert_eq!(id.as_deref(), Ok(server));
        }
        let aa_root = der(&fed.node(AA).root_ca);
        let ca_sub = der(&fed.peer_dir(CA, AA).join("sub-ca.crt"));
        let (cert, _) = fed.outsider(CA);
        assert!(verify_chain(&[&der(&cert), &ca_sub], &aa_root, now, Usage::Client).is_err());
        for id in [DA, "deadbeef"] {
            let (cert, _) = fed.impostor(CA, id);
            let e = verify_chain(&[&der(&cert), &ca_sub], &aa_root, now, Usage::Client)
                .expect_err("an impostor");
            assert!(e.0.contains("outside the names"), "{e}");
        }
    }
}
