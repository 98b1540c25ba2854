//! Clients: made, changed, given new secrets and deleted by admins, and looked up by
//! every front-end to authenticate and authorize.

use trunkline_auth::{generate_credential_id, generate_secret, SecretHash};

use crate::changes::Change;
use crate::registry::{self, ClientRecord, LimitSettings};
use crate::{
    authz, inbox_name, lock, read, topic, valid_client_id, Broker, BrokerError, ClientUpdate,
    ClientView, NewClient, Principal, REMOVED_ROLES, ROLES,
};

impl Broker {
    fn check_client_fields(&self, f: Fields<'_>) -> Result<(), BrokerError> {
        let Fields {
            name,
            patterns,
            publish,
            read_topics,
            roles,
            limits,
            grants,
            write_grants,
        } = f;
        for (field, grants) in [("grants", grants), ("write_grants", write_grants)] {
            let Some(grants) = grants else { continue };
            let ok = |g: &String| {
                !g.is_empty()
                    && g.len() <= 128
                    && g.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            };
            if grants.len() > registry::MAX_PATTERNS || !grants.iter().all(ok) {
                return Err(BrokerError::InvalidArgument(format!(
                    "{field} must be at most {} queue names of letters, digits, `.`, `_` and `-`",
                    registry::MAX_PATTERNS
                )));
            }
            // A grant names a queue that exists now; it goes when the queue's owner goes,
            // so a client created later under the same name does not inherit it.
            let queues = read(&self.inner.queues);
            if let Some(missing) = grants.iter().find(|g| !queues.contains_key(g.as_str())) {
                return Err(BrokerError::GrantOfUnknownQueue(missing.clone()));
            }
        }
        if let Some(bad) = write_grants
            .into_iter()
            .flatten()
            .find(|g| authz::is_dead_letter_queue(g))
        {
            return Err(BrokerError::InvalidArgument(format!(
                "`{bad}` is a dead-letter queue: only the broker puts messages there"
            )));
        }
        for (field, list) in [("publish", publish), ("read_topics", read_topics)] {
            let Some(list) = list else { continue };
            if list.len() > registry::MAX_PATTERNS {
                return Err(BrokerError::InvalidArgument(format!(
                    "{field} must have at most {} patterns",
                    registry::MAX_PATTERNS
                )));
            }
            for p in list {
                topic::validate_pattern(p).map_err(|cause| BrokerError::InvalidPattern {
                    pattern: p.clone(),
                    cause,
                })?;
            }
        }
        if let Some(name) = name {
            if name.trim().is_empty() || name.len() > registry::MAX_NAME_LEN {
                return Err(BrokerError::InvalidArgument(format!(
                    "client_name must be 1 to {} bytes",
                    registry::MAX_NAME_LEN
                )));
            }
        }
        if let Some(patterns) = patterns {
            if patterns.is_empty() || patterns.len() > registry::MAX_PATTERNS {
                return Err(BrokerError::InvalidArgument(format!(
                    "subscription must have 1 to {} patterns",
                    registry::MAX_PATTERNS
                )));
            }
            for p in patterns {
                topic::validate_pattern(p).map_err(|cause| BrokerError::InvalidPattern {
                    pattern: p.clone(),
                    cause,
                })?;
            }
        }
        if let Some(roles) = roles {
            if let Some(bad) = roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
                let why = REMOVED_ROLES
                    .iter()
                    .find(|(r, _)| r == bad)
                    .map(|(_, why)| format!(" (it was removed: {why})"))
                    .unwrap_or_default();
                return Err(BrokerError::InvalidArgument(format!(
                    "unknown role `{bad}`{why}; roles are {}",
                    ROLES.join(", ")
                )));
            }
        }
        if let Some(l) = limits {
            l.check()?;
        }
        Ok(())
    }

    pub(crate) fn view(&self, rec: &ClientRecord) -> ClientView {
        let inbox_depth = self
            .queue(&inbox_name(&rec.client_id))
            .map(|c| lock(&c.state).depth())
            .unwrap_or(0);
        ClientView {
            client_id: rec.client_id.clone(),
            client_name: rec.client_name.clone(),
            patterns: rec.patterns.clone(),
            publish: rec.publish.clone().unwrap_or_else(|| vec!["#".into()]),
            roles: rec.roles.clone(),
            grants: rec.grants.clone(),
            write_grants: rec.write_grants.clone(),
            read_topics: rec.read_topics.clone(),
            inbox: rec.inbox,
            inbox_depth,
        }
    }

    /// Checks a new client against the registry and makes its record and secret (the
    /// secret is not kept: only its hash is in the record); applying
    /// [`Change::CreateClient`] makes it exist.
    pub fn plan_create_client(
        &self,
        c: NewClient,
        now: u64,
    ) -> Result<(ClientRecord, String), BrokerError> {
        if !valid_client_id(&c.client_id) {
            return Err(BrokerError::InvalidClientId(c.client_id));
        }
        self.check_client_fields(Fields {
            name: Some(&c.client_name),
            patterns: Some(&c.patterns),
            publish: c.publish.as_deref(),
            read_topics: Some(&c.read_topics),
            roles: Some(&c.roles),
            limits: Some(&c.inbox),
            grants: Some(&c.grants),
            write_grants: Some(&c.write_grants),
        })?;
        if read(&self.inner.registry)
            .clients
            .contains_key(&c.client_id)
        {
            return Err(BrokerError::ClientExists(c.client_id));
        }
        let secret = generate_secret();
        let mut c = c;
        c.roles.sort();
        c.roles.dedup();
        let rec = ClientRecord {
            client_id: c.client_id,
            client_name: c.client_name,
            patterns: c.patterns,
            publish: every_topic_is_none(c.publish),
            roles: c.roles,
            grants: c.grants,
            write_grants: c.write_grants,
            read_topics: c.read_topics,
            secret_hash: SecretHash::of(&secret).as_str().to_owned(),
            credential_id: generate_credential_id(),
            inbox: c.inbox,
            created_ms: now,
        };
        Ok((rec, secret))
    }

    /// Checks a change of a client and makes its record as it would be after.
    pub fn plan_update_client(
        &self,
        client_id: &str,
        u: ClientUpdate,
    ) -> Result<ClientRecord, BrokerError> {
        self.check_client_fields(Fields {
            name: u.client_name.as_deref(),
            patterns: u.patterns.as_deref(),
            publish: u.publish.as_deref(),
            read_topics: u.read_topics.as_deref(),
            roles: u.roles.as_deref(),
            limits: u.inbox.as_ref(),
            grants: u.grants.as_deref(),
            write_grants: u.write_grants.as_deref(),
        })?;
        let mut rec = self.record(client_id)?;
        if u.roles
            .as_ref()
            .is_some_and(|r| !r.iter().any(|r| r == "admin"))
            && self.is_last_admin(client_id)
        {
            return Err(BrokerError::LastAdmin(client_id.to_owned()));
        }
        if let Some(n) = u.client_name {
            rec.client_name = n;
        }
        if let Some(p) = u.patterns {
            rec.patterns = p;
        }
        if let Some(g) = u.grants {
            rec.grants = g;
        }
        if let Some(g) = u.write_grants {
            rec.write_grants = g;
        }
        if let Some(t) = u.read_topics {
            rec.read_topics = t;
        }
        if u.publish.is_some() {
            rec.publish = every_topic_is_none(u.publish);
        }
        if let Some(mut r) = u.roles {
            r.sort();
            r.dedup();
            rec.roles = r;
        }
        if let Some(l) = u.inbox {
            rec.inbox = l;
        }
        Ok(rec)
    }

    /// A client's record with a new secret (returned; only its hash is in the record).
    pub fn plan_rotate_secret(
        &self,
        client_id: &str,
    ) -> Result<(ClientRecord, String), BrokerError> {
        let mut rec = self.record(client_id)?;
        let secret = generate_secret();
        rec.secret_hash = SecretHash::of(&secret).as_str().to_owned();
        rec.credential_id = generate_credential_id();
        Ok((rec, secret))
    }

    /// Creates a client and its inbox; returns it with its secret, which is not kept.
    pub async fn create_client(
        &self,
        c: NewClient,
        now: u64,
    ) -> Result<(ClientView, String), BrokerError> {
        let _admin = self.inner.admin.lock().await;
        let (client, secret) = self.plan_create_client(c, now)?;
        self.apply_locked(&Change::CreateClient {
            client: client.clone(),
        })
        .await?;
        Ok((self.view(&client), secret))
    }

    /// Changes a client; takes effect for the next message published.
    pub async fn update_client(
        &self,
        client_id: &str,
        u: ClientUpdate,
    ) -> Result<ClientView, BrokerError> {
        let _admin = self.inner.admin.lock().await;
        let client = self.plan_update_client(client_id, u)?;
        self.apply_locked(&Change::UpdateClient {
            client: client.clone(),
        })
        .await?;
        Ok(self.view(&client))
    }

    /// Gives a client a new secret; tokens issued for the old one stop working.
    pub async fn rotate_secret(
        &self,
        client_id: &str,
    ) -> Result<(ClientView, String), BrokerError> {
        let _admin = self.inner.admin.lock().await;
        let (client, secret) = self.plan_rotate_secret(client_id)?;
        self.apply_locked(&Change::UpdateClient {
            client: client.clone(),
        })
        .await?;
        Ok((self.view(&client), secret))
    }

    /// Deletes a client, its inbox and dead-letter queue, and what they held.
    pub async fn delete_client(&self, client_id: &str) -> Result<(), BrokerError> {
        self.apply(&Change::DeleteClient {
            client_id: client_id.to_owned(),
        })
        .await
        .map(drop)
    }

    /// True if `client_id` is an admin and no other client is.
    pub(crate) fn is_last_admin(&self, client_id: &str) -> bool {
        let reg = read(&self.inner.registry);
        reg.clients.get(client_id).is_some_and(|r| r.is_admin())
            && !reg
                .clients
                .values()
                .any(|r| r.client_id != client_id && r.is_admin())
    }

    pub(crate) fn record(&self, client_id: &str) -> Result<ClientRecord, BrokerError> {
        read(&self.inner.registry)
            .clients
            .get(client_id)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownClient(client_id.to_owned()))
    }

    pub fn get_client(&self, client_id: &str) -> Option<ClientView> {
        let rec = read(&self.inner.registry).clients.get(client_id).cloned()?;
        Some(self.view(&rec))
    }

    /// Every client, ordered by id.
    pub fn list_clients(&self) -> Vec<ClientView> {
        let mut recs: Vec<ClientRecord> = read(&self.inner.registry)
            .clients
            .values()
            .cloned()
            .collect();
        recs.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        recs.iter().map(|r| self.view(r)).collect()
    }

    pub fn client_count(&self) -> usize {
        read(&self.inner.registry).clients.len()
    }

    /// Checks a client's secret; on success returns who it is and its credential id.
    pub fn authenticate(&self, client_id: &str, secret: &str) -> Option<(Principal, String)> {
        let (hash, credential_id) = {
            let reg = read(&self.inner.registry);
            let rec = reg.clients.get(client_id)?;
            (rec.secret_hash.clone(), rec.credential_id.clone())
        };
        // Hashing is slow on purpose: not under the registry lock.
        if !SecretHash::from_stored(hash).verify(secret) {
            return None;
        }
        let p = self.check_credential(client_id, &credential_id)?;
        Some((p, credential_id))
    }

    /// The client `client_id`, if it exists (for identities proven otherwise, such as a
    /// verified TLS client certificate). Revoked when the client is deleted or its secret
    /// rotated, like every principal.
    pub fn principal(&self, client_id: &str) -> Option<Principal> {
        read(&self.inner.registry).principal(client_id)
    }

    /// The client behind a token, if it still exists with the same credential.
    pub fn check_credential(&self, client_id: &str, credential_id: &str) -> Option<Principal> {
        let reg = read(&self.inner.registry);
        let rec = reg.clients.get(client_id)?;
        if rec.credential_id != credential_id {
            return None;
        }
        reg.principal(client_id)
    }
}

/// The client fields [`Broker::check_client_fields`] checks; `None` is not being set.
struct Fields<'a> {
    name: Option<&'a str>,
    patterns: Option<&'a [String]>,
    publish: Option<&'a [String]>,
    read_topics: Option<&'a [String]>,
    roles: Option<&'a [String]>,
    limits: Option<&'a LimitSettings>,
    grants: Option<&'a [String]>,
    write_grants: Option<&'a [String]>,
}

/// Publish patterns as stored: a list that allows every topic is stored as none.
fn every_topic_is_none(publish: Option<Vec<String>>) -> Option<Vec<String>> {
    publish.filter(|p| !p.iter().any(|p| p == "#"))
}
