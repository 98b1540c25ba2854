//! Who may do what: the one set of rules every front-end (HTTP, STOMP, WebSocket, and
//! later federation) applies before it reads, writes or manages anything.
//!
//! A client's rights come from its record, compiled into an [`Access`]:
//! - **read**: topics matching its subscription patterns (through its inbox, or live) or
//!   its `read_topics` (live only), its own inbox and dead-letter queue, and the queues it
//!   was granted for reading;
//! - **write**: topics matching its publish patterns (none given: every topic, as the NOC
//!   behaves), its own inbox, and the queues it was granted for writing; never a
//!   dead-letter queue, which only the broker fills; a broadcast (reaching every inbox
//!   whatever its subscription) only for a client whose publishing is not narrowed;
//! - **roles**: `admin` manages clients (and has the `backend` rights); `backend` acts as a
//!   trusted backend in WebSocket sessions (channels and calls without channel tokens).
//!   Roles give no data rights: an admin reads and writes by its own patterns and grants.
//!
//! A [`Principal`], the identity behind a request or an open session, reads its client's
//! current `Access` at every check, so a change to the client reaches open sessions at
//! once. Deleting the client or rotating its secret revokes every principal issued
//! before: each check then fails with [`BrokerError::Revoked`], and sessions watching
//! [`Principal::revocation`] close.

use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::registry::{dead_name, inbox_name, ClientRecord};
use crate::BrokerError;

/// Roles a client may hold.
pub const ROLES: &[&str] = &["admin", "backend"];

/// Roles of earlier versions that did nothing, with what replaced them (a record that
/// still names one loses it when loaded).
pub const REMOVED_ROLES: &[(&str, &str)] = &[
    (
        "publisher",
        "what a client may publish is set by its `publish` patterns",
    ),
    (
        "peer",
        "peer nodes are identified by certificates in the node database, not by clients",
    ),
];

/// What an action reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Messages routed by this topic (a topic, never a pattern).
    Topic(&'a str),
    /// One named queue.
    Queue(&'a str),
    /// A message for every inbox, whatever its subscription.
    Broadcast,
}

/// `true` for the name of a dead-letter queue, which only the broker fills: a client's
/// `<id>-dead`, or a declared queue's `<name>.XQ`.
pub fn is_dead_letter_queue(queue: &str) -> bool {
    queue.ends_with("-dead") || queue.ends_with(crate::named::DEAD_LETTER_SUFFIX)
}

/// A set of topic patterns, asked whether any matches a topic. A client has a few, and
/// each check is on the path of every message it sends or gets live, so they are matched
/// one by one without the routing trie's bookkeeping.
#[derive(Debug, Clone)]
struct Patterns {
    list: Vec<String>,
    /// One of them is `#`: every topic matches.
    all: bool,
    /// Each pattern split into its words.
    words: Vec<Vec<Box<str>>>,
}

impl Patterns {
    fn new(list: &[String]) -> Self {
        Patterns {
            list: list.to_vec(),
            all: list.iter().any(|p| p == "#"),
            words: list
                .iter()
                .map(|p| p.split('.').map(Box::from).collect())
                .collect(),
        }
    }

    fn matches(&self, topic: &str) -> bool {
        if self.all {
            return true;
        }
        if self.words.is_empty() {
            return false;
        }
        let topic: Vec<&str> = topic.split('.').collect();
        self.matches_words(&topic)
    }

    fn matches_words(&self, topic: &[&str]) -> bool {
        self.all || self.words.iter().any(|p| words_match(p, topic))
    }
}

/// AMQP topic matching over words: `*` is exactly one word, `#` zero or more. Two
/// pointers that go back to just after the last `#` seen on a mismatch (as glob matching
/// does with `*`): at most pattern × topic steps, no recursion, no allocation.
fn words_match(pattern: &[Box<str>], topic: &[&str]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `#`: (pattern index after it, topic index it took up to).
    let mut resume: Option<(usize, usize)> = None;
    while t < topic.len() {
        match pattern.get(p).map(|w| &**w) {
            Some("#") => {
                resume = Some((p + 1, t));
                p += 1;
            }
            Some(w) if w == "*" || w == topic[t] => {
                p += 1;
                t += 1;
            }
            _ => match resume {
                Some((after, took)) => {
                    // Let the `#` take one more word, and try the rest again.
                    resume = Some((after, took + 1));
                    p = after;
                    t = took + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|w| &**w == "#")
}

/// What one client may do, compiled from its record. Replaced as a whole when the client
/// changes.
#[derive(Debug, Clone)]
pub struct Access {
    client_id: Arc<str>,
    admin: bool,
    backend: bool,
    read: Patterns,
    /// `None`: every topic.
    publish: Option<Patterns>,
    read_queues: Vec<String>,
    write_queues: Vec<String>,
    /// Its own inbox and dead-letter queue (a client's; `None` for a limited identity).
    own: Option<(String, String)>,
}

impl Access {
    pub fn of(rec: &ClientRecord) -> Self {
        let has = |role: &str| rec.roles.iter().any(|r| r == role);
        Access {
            client_id: Arc::from(rec.client_id.as_str()),
            admin: has("admin"),
            backend: has("backend"),
            read: Patterns::new(&[rec.patterns.as_slice(), &rec.read_topics].concat()),
            publish: rec.publish.as_deref().map(Patterns::new),
            read_queues: rec.grants.clone(),
            write_queues: rec.write_grants.clone(),
            own: Some((inbox_name(&rec.client_id), dead_name(&rec.client_id))),
        }
    }

    /// Rights of an identity that is not a client (a peer node of the federation, a link
    /// of this node's): it may publish to topics matching `publish` and read the queues
    /// `read_queues`, nothing else. No inbox, no roles.
    pub fn limited(id: &str, publish: &[String], read_queues: &[String]) -> Self {
        Access {
            client_id: Arc::from(id),
            admin: false,
            backend: false,
            read: Patterns::new(&[]),
            publish: Some(Patterns::new(publish)),
            read_queues: read_queues.to_vec(),
            write_queues: Vec::new(),
            own: None,
        }
    }

    pub fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    /// May this client see messages of `target`?
    pub fn may_read(&self, target: Target<'_>) -> bool {
        match target {
            Target::Topic(topic) => self.read.matches(topic),
            Target::Queue(q) => {
                self.own
                    .as_ref()
                    .is_some_and(|(inbox, dead)| q == inbox || q == dead)
                    || self.read_queues.iter().any(|g| g == q)
            }
            // Every inbox gets a broadcast: that is what it is.
            Target::Broadcast => true,
        }
    }

    /// [`Access::may_read`] of a topic already split into its words (for live fan-out,
    /// which splits each message's topic once for all its subscribers).
    pub fn may_read_words(&self, topic: &[&str]) -> bool {
        self.read.matches_words(topic)
    }

    /// May this client put messages into `target`?
    pub fn may_write(&self, target: Target<'_>) -> bool {
        match target {
            Target::Topic(topic) => self.publish.as_ref().is_none_or(|p| p.matches(topic)),
            Target::Queue(q) => {
                !is_dead_letter_queue(q)
                    && (self.own.as_ref().is_some_and(|(inbox, _)| q == inbox)
                        || self.write_queues.iter().any(|g| g == q))
            }
            Target::Broadcast => self.publish.as_ref().is_none_or(|p| p.all),
        }
    }

    /// May this client manage clients (create, change, delete, rotate others' secrets)?
    pub fn may_admin(&self) -> bool {
        self.admin
    }

    /// Does this client act as a trusted backend in its WebSocket sessions (channels
    /// without channel tokens, `sys:*`, any RPC name, any session's functions)?
    pub fn is_backend(&self) -> bool {
        self.admin || self.backend
    }

    /// Why reading `target` is refused, for the error message.
    fn read_refusal(&self, target: Target<'_>) -> String {
        let id = &self.client_id;
        match target {
            Target::Topic(t) => format!(
                "client `{id}` may not read topic `{t}`: its subscription is {:?}",
                self.read.list
            ),
            Target::Queue(q) => match &self.own {
                Some((inbox, dead)) => format!(
                    "client `{id}` may read `{inbox}`, `{dead}` and queues granted to it, not `{q}`"
                ),
                None => format!("`{id}` may read {:?} only, not `{q}`", self.read_queues),
            },
            Target::Broadcast => format!("client `{id}` may not read broadcasts"),
        }
    }

    /// Why writing `target` is refused, for the error message.
    fn write_refusal(&self, target: Target<'_>) -> String {
        let id = &self.client_id;
        let publish = self
            .publish
            .as_ref()
            .map(|p| p.list.clone())
            .unwrap_or_default();
        match target {
            Target::Topic(t) => format!(
                "client `{id}` may not publish to topic `{t}`: it may publish to {publish:?}"
            ),
            Target::Queue(q) if is_dead_letter_queue(q) => {
                format!("`{q}` is a dead-letter queue: only the broker puts messages there")
            }
            Target::Queue(q) => match &self.own {
                Some((inbox, _)) => format!(
                    "client `{id}` may put messages into `{inbox}` and queues granted to it for writing, not `{q}`"
                ),
                None => format!("`{id}` may put messages into no queue, not `{q}`"),
            },
            Target::Broadcast => format!(
                "client `{id}` may publish to {publish:?} only, and a broadcast reaches every inbox"
            ),
        }
    }
}

/// The shared state behind every principal of one client credential.
#[derive(Debug)]
pub(crate) struct Holder {
    access: RwLock<Arc<Access>>,
    /// The credential (secret) these principals were issued for.
    pub credential_id: String,
    revoked: CancellationToken,
}

impl Holder {
    pub fn new(rec: &ClientRecord) -> Arc<Self> {
        Arc::new(Holder {
            access: RwLock::new(Arc::new(Access::of(rec))),
            credential_id: rec.credential_id.clone(),
            revoked: CancellationToken::new(),
        })
    }

    fn of_access(access: Access) -> Arc<Self> {
        Arc::new(Holder {
            access: RwLock::new(Arc::new(access)),
            credential_id: String::new(),
            revoked: CancellationToken::new(),
        })
    }

    /// The client changed: checks from now on use its new rights.
    pub fn update(&self, rec: &ClientRecord) {
        *self.access.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Access::of(rec));
    }

    /// The client was deleted or its secret rotated.
    pub fn revoke(&self) {
        self.revoked.cancel();
    }

    fn current(&self) -> Arc<Access> {
        self.access
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Issues principals for an identity that is not a client, and changes or revokes them
/// all at once (the federation holds one per peer node, revoked when the node database
/// deactivates the peer).
#[derive(Debug)]
pub struct Issuer {
    holder: Arc<Holder>,
}

impl Issuer {
    pub fn new(access: Access) -> Self {
        Issuer {
            holder: Holder::of_access(access),
        }
    }

    /// A principal with the rights this issuer gives now, and later.
    pub fn principal(&self) -> Principal {
        let id = self.holder.current().client_id.clone();
        Principal {
            client_id: id,
            holder: self.holder.clone(),
        }
    }

    /// Checks from now on use `access`.
    pub fn update(&self, access: Access) {
        *self
            .holder
            .access
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(access);
    }

    /// Every principal issued fails its checks from now on, and sessions watching its
    /// revocation close.
    pub fn revoke(&self) {
        self.holder.revoke();
    }

    pub fn is_revoked(&self) -> bool {
        self.holder.revoked.is_cancelled()
    }
}

/// The identity behind an authenticated request or an open session. Cheap to clone; every
/// check reads the client's current rights, and fails once the client was deleted or its
/// secret rotated.
#[derive(Debug, Clone)]
pub struct Principal {
    pub client_id: Arc<str>,
    holder: Arc<Holder>,
}

impl PartialEq for Principal {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.holder, &other.holder)
    }
}

impl Principal {
    pub(crate) fn new(holder: &Arc<Holder>, client_id: &str) -> Self {
        Principal {
            client_id: Arc::from(client_id),
            holder: holder.clone(),
        }
    }

    /// The client's current rights, or [`BrokerError::Revoked`].
    pub fn access(&self) -> Result<Arc<Access>, BrokerError> {
        if self.holder.revoked.is_cancelled() {
            return Err(BrokerError::Revoked(self.client_id.to_string()));
        }
        Ok(self.holder.current())
    }

    /// Runs `f` with the client's current rights (without taking a reference to them);
    /// `None` once revoked. For checks on every message.
    pub fn with_access<T>(&self, f: impl FnOnce(&Access) -> T) -> Option<T> {
        if self.holder.revoked.is_cancelled() {
            return None;
        }
        Some(f(&self
            .holder
            .access
            .read()
            .unwrap_or_else(|e| e.into_inner())))
    }

    /// The rights this principal last had, revoked or not: for giving back what a closing
    /// session held, which must work after a revocation too.
    pub(crate) fn last_access(&self) -> Arc<Access> {
        self.holder.current()
    }

    /// `Ok` if this client may read `target`; [`BrokerError::Forbidden`] otherwise.
    pub fn check_read(&self, target: Target<'_>) -> Result<Arc<Access>, BrokerError> {
        let a = self.access()?;
        if a.may_read(target) {
            Ok(a)
        } else {
            Err(BrokerError::Forbidden(a.read_refusal(target)))
        }
    }

    /// `Ok` if this client may write `target`; [`BrokerError::Forbidden`] otherwise.
    pub fn check_write(&self, target: Target<'_>) -> Result<Arc<Access>, BrokerError> {
        let a = self.access()?;
        if a.may_write(target) {
            Ok(a)
        } else {
            Err(BrokerError::Forbidden(a.write_refusal(target)))
        }
    }

    /// `Ok` if this client may publish `p` (to its topic, its queue, or every inbox).
    pub fn check_publish(&self, p: &crate::Publish) -> Result<(), BrokerError> {
        let target = match (&p.queue, p.broadcast) {
            (Some(q), _) => Target::Queue(q),
            (None, true) => Target::Broadcast,
            (None, false) => Target::Topic(&p.topic),
        };
        self.check_write(target).map(drop)
    }

    /// `Ok` if this client may manage clients.
    pub fn check_admin(&self) -> Result<(), BrokerError> {
        let a = self.access()?;
        if a.may_admin() {
            Ok(())
        } else {
            Err(BrokerError::Forbidden(format!(
                "client `{}` is not an admin",
                self.client_id
            )))
        }
    }

    /// True if the client is an admin now (false once revoked).
    pub fn is_admin(&self) -> bool {
        self.access().is_ok_and(|a| a.may_admin())
    }

    /// True if the client acts as a backend now (false once revoked).
    pub fn is_backend(&self) -> bool {
        self.access().is_ok_and(|a| a.is_backend())
    }

    pub fn is_revoked(&self) -> bool {
        self.holder.revoked.is_cancelled()
    }

    /// Cancelled when the client is deleted or its secret rotated: sessions wait on it to
    /// close themselves.
    pub fn revocation(&self) -> CancellationToken {
        self.holder.revoked.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, patterns: &[&str], publish: Option<&[&str]>) -> ClientRecord {
        ClientRecord {
            client_id: id.into(),
            client_name: id.into(),
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
            publish: publish.map(|p| p.iter().map(|s| s.to_string()).collect()),
            roles: vec![],
            grants: vec!["shared-inbox".into()],
            write_grants: vec!["ops-inbox".into()],
            read_topics: vec!["live.#".into()],
            secret_hash: String::new(),
            credential_id: "c1".into(),
            inbox: Default::default(),
            created_ms: 0,
        }
    }

    /// The rules as a table: (target, may read, may write) for a client `cb` subscribed to
    /// `b.#` that may publish to `b.#` and `x.*`.
    #[test]
    fn rules_table() {
        let a = Access::of(&record("cb", &["b.#"], Some(&["b.#", "x.*"])));
        let table: &[(Target, bool, bool)] = &[
            (Target::Topic("b"), true, true),
            (Target::Topic("b.c.d"), true, true),
            (Target::Topic("a.secret"), false, false),
            (Target::Topic("x.y"), false, true),
            (Target::Topic("live.feed"), true, false),
            (Target::Topic("x.y.z"), false, false),
            (Target::Queue("cb-inbox"), true, true),
            (Target::Queue("cb-dead"), true, false),
            (Target::Queue("shared-inbox"), true, false),
            (Target::Queue("ops-inbox"), false, true),
            (Target::Queue("admin-inbox"), false, false),
            (Target::Queue("other-dead"), false, false),
            (Target::Broadcast, true, false),
        ];
        for (target, read, write) in table {
            assert_eq!(a.may_read(*target), *read, "read {target:?}");
            assert_eq!(a.may_write(*target), *write, "write {target:?}");
        }
        assert!(!a.may_admin());
        assert!(!a.is_backend());
    }

    proptest::proptest! {
        /// The matcher agrees with the reference one on short patterns and topics.
        #[test]
        fn matching_agrees_with_the_reference(
            pattern in proptest::collection::vec(proptest::sample::select(&["a", "b", "*", "#"][..]), 1..6),
            topic in proptest::collection::vec(proptest::sample::select(&["a", "b", "c"][..]), 1..7),
        ) {
            let (pattern, topic) = (pattern.join("."), topic.join("."));
            let p = Patterns::new(std::slice::from_ref(&pattern));
            proptest::prop_assert_eq!(
                p.matches(&topic),
                crate::topic::naive_match(&pattern, &topic),
                "{} ~ {}", pattern, topic
            );
        }
    }

    #[test]
    fn default_publish_is_every_topic_and_broadcast() {
        let a = Access::of(&record("c", &["b.#"], None));
        assert!(a.may_write(Target::Topic("anything.at.all")));
        assert!(a.may_write(Target::Broadcast));
        let narrowed_to_all = Access::of(&record("c", &["b.#"], Some(&["#"])));
        assert!(narrowed_to_all.may_write(Target::Broadcast));
    }

    #[test]
    fn roles() {
        let mut rec = record("c", &["#"], None);
        rec.roles = vec!["backend".into()];
        let a = Access::of(&rec);
        assert!(a.is_backend() && !a.may_admin());
        rec.roles = vec!["admin".into()];
        let a = Access::of(&rec);
        assert!(a.is_backend() && a.may_admin());
        // An admin reads by its patterns and grants like anyone.
        assert!(!a.may_read(Target::Queue("x-inbox")));
    }

    #[test]
    fn revoked_principals_fail_every_check() {
        let rec = record("c", &["#"], None);
        let h = Holder::new(&rec);
        let p = Principal::new(&h, "c");
        assert!(p.check_read(Target::Topic("a")).is_ok());
        h.revoke();
        assert!(matches!(
            p.check_read(Target::Topic("a")),
            Err(BrokerError::Revoked(_))
        ));
        assert!(matches!(
            p.check_write(Target::Queue("c-inbox")),
            Err(BrokerError::Revoked(_))
        ));
        assert!(p.revocation().is_cancelled());
        assert!(!p.is_admin());
    }

    #[test]
    fn updates_reach_existing_principals() {
        let mut rec = record("c", &["a.#"], None);
        let h = Holder::new(&rec);
        let p = Principal::new(&h, "c");
        assert!(p.check_read(Target::Topic("b.x")).is_err());
        rec.patterns = vec!["b.#".into()];
        h.update(&rec);
        assert!(p.check_read(Target::Topic("b.x")).is_ok());
        assert!(p.check_read(Target::Topic("a.x")).is_err());
    }

    #[test]
    fn an_issuer_gives_limited_rights_and_takes_them_back() {
        let issuer = Issuer::new(Access::limited(
            "peer:1234abcd",
            &["accounts_in.#".into()],
            &["aa.out".into()],
        ));
        let p = issuer.principal();
        assert_eq!(&*p.client_id, "peer:1234abcd");
        assert!(p.check_write(Target::Topic("accounts_in.0.1")).is_ok());
        for refused in [
            Target::Topic("creditors_in.0"),
            Target::Broadcast,
            Target::Queue("aa.out"),
            Target::Queue(""),
        ] {
            assert!(
                matches!(p.check_write(refused), Err(BrokerError::Forbidden(_))),
                "{refused:?}"
            );
        }
        assert!(p.check_read(Target::Queue("aa.out")).is_ok());
        for refused in [
            Target::Queue(""),
            Target::Queue("x"),
            Target::Topic("accounts_in.0"),
        ] {
            assert!(p.check_read(refused).is_err(), "{refused:?}");
        }
        assert!(p.check_admin().is_err() && !p.is_backend());
        issuer.update(Access::limited("peer:1234abcd", &[], &[]));
        assert!(p.check_write(Target::Topic("accounts_in.0.1")).is_err());
        let watch = p.revocation();
        issuer.revoke();
        assert!(watch.is_cancelled() && issuer.is_revoked());
        assert!(matches!(p.access(), Err(BrokerError::Revoked(_))));
    }
}
