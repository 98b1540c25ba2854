//! The node database: a directory saying who this node is and who its peers are, in the
//! layout `swpt_stomp` reads (`SWPT_NODEDATA_URL=file:///…`), so that one directory serves
//! either.
//!
//! ```text
//! root-ca.crt                 our root CA: the only one our server trusts
//! db/nodeid                   our id: 8 hex digits (an accounting authority) or 32
//! db/nodetype                 Accounting Authorities | Creditors Agents | Debtors Agents
//! creditors-subnet.txt        a creditors agent's creditor ids
//! debtors-subnet.txt          a debtors agent's debtor ids
//! peers/<id>/ACTIVE           present once everything for the peer is in place
//! peers/<id>/DEACTIVATED      present: the peer is refused, ACTIVE or not
//! peers/<id>/root-ca.crt      the peer's root CA: the only one our client trusts there
//! peers/<id>/sub-ca.crt       our key signed by the peer's root, sent after our cert
//! peers/<id>/nodetype.txt     the peer's type
//! peers/<id>/nodeinfo/stomp.toml   how to reach the peer (servers, host, destination, …)
//! peers/<id>/subnet.txt       (we are an accounting authority) the ids the peer speaks for
//! peers/<id>/masq-subnet.txt  (we are a creditors agent) our creditors as the peer knows them
//! ```
//!
//! One-line files may end in `\n`, `\r\n` or nothing; certificate files may hold text
//! around the PEM block (the first block is taken). Nothing is cached: each call reads the
//! files again, so that a peer deactivated or removed is refused at its next look-up.

use std::path::{Path, PathBuf};

use crate::routing::{Subnet, SubnetError};

/// The three kinds of node of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeType {
    AccountingAuthority,
    CreditorsAgent,
    DebtorsAgent,
}

impl NodeType {
    /// As `db/nodetype` and `nodetype.txt` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::AccountingAuthority => "Accounting Authorities",
            NodeType::CreditorsAgent => "Creditors Agents",
            NodeType::DebtorsAgent => "Debtors Agents",
        }
    }

    /// The exchange a node of this type receives its peers' messages in (the only
    /// destination its server takes is `/exchange/<this>`).
    pub fn inbound_exchange(self) -> &'static str {
        match self {
            NodeType::AccountingAuthority => "accounts_in",
            NodeType::CreditorsAgent => "creditors_in",
            NodeType::DebtorsAgent => "debtors_in",
        }
    }

    /// How many hex digits a node id of this type has.
    pub fn id_digits(self) -> usize {
        match self {
            NodeType::AccountingAuthority => 8,
            NodeType::CreditorsAgent | NodeType::DebtorsAgent => 32,
        }
    }
}

impl std::str::FromStr for NodeType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            NodeType::AccountingAuthority,
            NodeType::CreditorsAgent,
            NodeType::DebtorsAgent,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| format!("invalid node type {s:?}"))
    }
}

/// This node, as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeData {
    pub node_type: NodeType,
    pub node_id: String,
    /// Our root CA, PEM.
    pub root_cert: String,
    /// The creditor and debtor ids this node speaks for.
    pub creditors_subnet: Subnet,
    pub debtors_subnet: Subnet,
}

/// How to reach a peer: its `nodeinfo/stomp.toml`, with `${NODE_ID}` replaced by our id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StompConfig {
    /// Where its servers listen (a link picks one at random; one listed twice is picked
    /// twice as often).
    pub servers: Vec<(String, u16)>,
    /// The `host` header of the `STOMP` frame.
    pub host: String,
    /// The `destination` header of each `SEND`.
    pub destination: String,
    pub login: Option<String>,
    pub passcode: Option<String>,
    /// Content types the peer takes; always with `application/json`.
    pub accepted_content_types: Vec<String>,
}

/// A peer, as the database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerData {
    pub node_type: NodeType,
    pub node_id: String,
    pub stomp: StompConfig,
    /// The peer's root CA, PEM: the only CA a link to it trusts.
    pub root_cert: String,
    /// Our key signed by the peer's root, PEM: sent after our certificate.
    pub sub_cert: String,
    /// The creditor and debtor ids the peer may speak for (as we know them).
    pub creditors_subnet: Subnet,
    pub debtors_subnet: Subnet,
    /// `ACTIVE` is present and `DEACTIVATED` is not.
    pub active: bool,
    pub deactivated: bool,
}

/// A node database that cannot be read as one.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// A node database in a directory.
#[derive(Debug, Clone)]
pub struct NodeDatabase {
    root: PathBuf,
}

/// Whether `id` can be a node id: 8 or 32 lowercase hex digits. Anything else is never
/// looked up (it names a directory).
pub fn is_node_id(id: &str) -> bool {
    matches!(id.len(), 8 | 32)
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl NodeDatabase {
    /// The database in directory `root` (a path, or a `file://` URL as swpt_stomp takes).
    pub fn new(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        let root = match root.to_str().and_then(|s| s.strip_prefix("file://")) {
            Some(path) => PathBuf::from(path),
            None => root.to_path_buf(),
        };
        NodeDatabase { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This node.
    pub fn node(&self) -> Result<NodeData, DbError> {
        let root_cert = self.cert("root-ca.crt")?;
        let node_id = self.one_line("db/nodeid")?;
        let node_type = self.node_type("db/nodetype")?;
        if node_id.len() != node_type.id_digits() || !is_node_id(&node_id) {
            return Err(self.invalid(
                "db/nodeid",
                format!(
                    "{node_id:?} is not {} lowercase hex digits",
                    node_type.id_digits()
                ),
            ));
        }
        let (creditors_subnet, debtors_subnet) = match node_type {
            NodeType::AccountingAuthority => (Subnet::ALL, self.subnet_of("db/nodeid", &node_id)?),
            NodeType::CreditorsAgent => (self.subnet("creditors-subnet.txt")?, Subnet::ALL),
            NodeType::DebtorsAgent => (Subnet::ZERO, self.subnet("debtors-subnet.txt")?),
        };
        Ok(NodeData {
            node_type,
            node_id,
            root_cert,
            creditors_subnet,
            debtors_subnet,
        })
    }

    /// Peer `id`, read again now; `None` if there is no such peer (no directory, or no
    /// `sub-ca.crt` in it), or if `active_only` and it is not active.
    pub fn peer(&self, id: &str, active_only: bool) -> Result<Option<PeerData>, DbError> {
        if !is_node_id(id) {
            return Ok(None);
        }
        let dir = format!("peers/{id}");
        if !self.root.join(&dir).is_dir() || !self.exists(&format!("{dir}/sub-ca.crt")) {
            return Ok(None);
        }
        let deactivated = self.exists(&format!("{dir}/DEACTIVATED"));
        let active = !deactivated && self.exists(&format!("{dir}/ACTIVE"));
        if active_only && !active {
            return Ok(None);
        }
        let sub_cert = self.cert(&format!("{dir}/sub-ca.crt"))?;
        let root_cert = self.cert(&format!("{dir}/root-ca.crt"))?;
        let node_type = self.node_type(&format!("{dir}/nodetype.txt"))?;
        if id.len() != node_type.id_digits() {
            return Err(self.invalid(
                &format!("{dir}/nodetype.txt"),
                format!(
                    "a peer of type {:?} has {} hex digits to its id, not {}",
                    node_type.as_str(),
                    node_type.id_digits(),
                    id.len()
                ),
            ));
        }
        let owner = self.node()?;
        let toml_path = format!("{dir}/nodeinfo/stomp.toml");
        let stomp = parse_stomp_toml(&self.text(&toml_path)?, &owner.node_id)
            .map_err(|what| self.invalid(&toml_path, what))?;
        let wrong_type = || {
            self.invalid(
                &format!("{dir}/nodetype.txt"),
                format!(
                    "a peer of type {:?} cannot be a peer of {:?}",
                    node_type.as_str(),
                    owner.node_type.as_str()
                ),
            )
        };
        use NodeType::*;
        let (creditors_subnet, debtors_subnet) = match (owner.node_type, node_type) {
            (AccountingAuthority, CreditorsAgent) => (
                self.subnet(&format!("{dir}/subnet.txt"))?,
                owner.debtors_subnet,
            ),
            (AccountingAuthority, DebtorsAgent) => {
                (Subnet::ZERO, self.subnet(&format!("{dir}/subnet.txt"))?)
            }
            (CreditorsAgent, AccountingAuthority) => {
                let path = format!("{dir}/masq-subnet.txt");
                let masq = self.subnet(&path)?;
                if masq.value_and_mask().1 != owner.creditors_subnet.value_and_mask().1 {
                    return Err(self.invalid(
                        &path,
                        format!(
                            "{masq} is not as long as our creditors subnet {}",
                            owner.creditors_subnet
                        ),
                    ));
                }
                (masq, self.subnet_of(&dir, id)?)
            }
            (DebtorsAgent, AccountingAuthority) => (Subnet::ZERO, owner.debtors_subnet),
            _ => return Err(wrong_type()),
        };
        Ok(Some(PeerData {
            node_type,
            node_id: id.to_owned(),
            stomp,
            root_cert,
            sub_cert,
            creditors_subnet,
            debtors_subnet,
            active,
            deactivated,
        }))
    }

    /// The ids of the peers listed (directories under `peers/` named as node ids), sorted;
    /// active or not.
    pub fn peer_ids(&self) -> Result<Vec<String>, DbError> {
        let dir = self.root.join("peers");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(DbError::Io { path: dir, source }),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| DbError::Io {
                path: dir.clone(),
                source,
            })?;
            if let Some(name) = entry.file_name().to_str().filter(|n| is_node_id(n)) {
                if entry.path().is_dir() {
                    ids.push(name.to_owned());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn invalid(&self, rel: &str, what: String) -> DbError {
        DbError::Invalid {
            path: self.root.join(rel),
            what,
        }
    }

    fn exists(&self, rel: &str) -> bool {
        self.root.join(rel).is_file()
    }

    fn text(&self, rel: &str) -> Result<String, DbError> {
        let path = self.root.join(rel);
        let bytes = std::fs::read(&path).map_err(|source| DbError::Io {
            path: path.clone(),
            source,
        })?;
        String::from_utf8(bytes).map_err(|_| DbError::Invalid {
            path,
            what: "not UTF-8".into(),
        })
    }

    /// A one-line file, without its line end.
    fn one_line(&self, rel: &str) -> Result<String, DbError> {
        let text = self.text(rel)?;
        let line = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        Ok(line.to_owned())
    }

    fn node_type(&self, rel: &str) -> Result<NodeType, DbError> {
        self.one_line(rel)?
            .parse()
            .map_err(|what| self.invalid(rel, what))
    }

    fn subnet(&self, rel: &str) -> Result<Subnet, DbError> {
        let line = self.one_line(rel)?;
        self.subnet_of(rel, &line)
    }

    fn subnet_of(&self, rel: &str, hex: &str) -> Result<Subnet, DbError> {
        Subnet::parse(hex).map_err(|e: SubnetError| self.invalid(rel, e.to_string()))
    }

    /// The first PEM certificate block of a file, with its line end.
    fn cert(&self, rel: &str) -> Result<String, DbError> {
        let text = self.text(rel)?;
        first_pem_certificate(&text)
            .map(str::to_owned)
            .ok_or_else(|| self.invalid(rel, "no PEM certificate in it".into()))
    }
}

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The first PEM certificate block in `text`: its markers each a line of their own, and
/// with the line end after the end marker if there is one. Text before and after it
/// (comments, more certificates) is left out.
pub fn first_pem_certificate(text: &str) -> Option<&str> {
    let mut at = 0;
    while let Some(found) = text[at..].find(BEGIN) {
        let start = at + found;
        at = start + BEGIN.len();
        let line_start = start == 0 || text[..start].ends_with('\n');
        let rest = &text[at..];
        let after_begin = rest
            .strip_prefix("\r\n")
            .or_else(|| rest.strip_prefix('\n'));
        if !line_start || after_begin.is_none() {
            continue;
        }
        let end = rest.find(END)?;
        let body = &rest[..end];
        if body.contains('-') || !body.ends_with('\n') {
            continue;
        }
        let mut stop = at + end + END.len();
        let tail = &text[stop..];
        if tail.starts_with("\r\n") {
            stop += 2;
        } else if tail.starts_with('\n') {
            stop += 1;
        } else if !tail.is_empty() {
            continue;
        }
        return Some(&text[start..stop]);
    }
    None
}

/// Reads a peer's `stomp.toml`, `${NODE_ID}` replaced by `our_id` in `host`,
/// `destination` and `login`.
pub fn parse_stomp_toml(text: &str, our_id: &str) -> Result<StompConfig, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("not TOML: {e}"))?;
    let string = |key: &str| -> Result<Option<String>, String> {
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.replace("${NODE_ID}", our_id))),
            Some(_) => Err(format!("{key} must be a string")),
        }
    };
    let servers = match table.get("servers") {
        Some(toml::Value::Array(list)) if !list.is_empty() => list
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => parse_server(s),
                _ => Err("servers must be strings \"host:port\"".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(toml::Value::Array(_)) => return Err("servers is empty".into()),
        _ => return Err("servers must be a list of \"host:port\"".into()),
    };
    let host = string("host")?.ok_or("host is missing")?;
    let destination = string("destination")?.ok_or("destination is missing")?;
    let login = string("login")?;
    let passcode = match table.get("passcode") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("passcode must be a string".into()),
    };
    let mut accepted_content_types = match table.get("accepted-content-types") {
        None => Vec::new(),
        Some(toml::Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or("accepted-content-types must be strings")?,
        Some(_) => return Err("accepted-content-types must be a list".into()),
    };
    accepted_content_types.push("application/json".into());
    Ok(StompConfig {
        servers,
        host,
        destination,
        login,
        passcode,
        accepted_content_types,
    })
}

/// `host:port`, the host a DNS name or IPv4 address (labels of letters, digits and
/// inner hyphens), the port 1 to 65535.
fn parse_server(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .split_once(':')
        .ok_or_else(|| format!("invalid server {s:?}: expected host:port"))?;
    if !is_hostname(host) {
        return Err(format!("invalid host {host:?}"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0 && port.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("invalid port {port:?}"))?;
    Ok((host.to_owned(), port))
}

fn is_hostname(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests;
