//! Errors of the broker.

use crate::topic::TopicError;

/// Why a broker operation was refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    #[error("invalid topic `{topic}`: {cause}")]
    InvalidTopic { topic: String, cause: TopicError },
    #[error("invalid subscription pattern `{pattern}`: {cause}")]
    InvalidPattern { pattern: String, cause: TopicError },
    #[error("invalid client id `{0}`: it must match [a-z0-9][a-z0-9._-]{{0,63}}")]
    InvalidClientId(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("a client with id `{0}` already exists")]
    ClientExists(String),
    #[error("no client with id `{0}`")]
    UnknownClient(String),
    #[error("no queue named `{0}`")]
    UnknownQueue(String),
    #[error("no twin {0}")]
    UnknownTwin(u32),
    /// A grant names a queue that does not exist (the request conflicts with the node's
    /// state: declare the queue first).
    #[error("`{0}` names no queue: declare it, or create its client, first")]
    GrantOfUnknownQueue(String),
    /// A name no queue can have.
    #[error("{0}")]
    NoSuchQueueName(String),
    /// A queue name the broker gives its own queues (`-inbox`, `-dead`, `.XQ`), or
    /// another queue's.
    #[error("{0}")]
    QueueNameTaken(String),
    #[error("that key is twin {0}'s already")]
    TwinKeyTaken(u32),
    #[error("queue full, message rejected: {}", queues.join(", "))]
    QueueFull { queues: Vec<String> },
    #[error(
        "node memory for queued messages is full: their index (queue entries and message \
         records) takes {used} of its {max} bytes (inbox.max_memory_bytes), and this message \
         needs {needed} more; consumers must catch up"
    )]
    NodeFull { used: u64, needed: u64, max: u64 },
    #[error(
        "the node's store takes all the disk it may ({used} of its {max} bytes, \
         store.max_disk_bytes); publishes are refused until consumers catch up and \
         compaction gives space back"
    )]
    DiskFull { used: u64, max: u64 },
    #[error("`{0}` is the last admin client: deleting it or taking its admin role would lock everyone out")]
    LastAdmin(String),
    #[error("a message with this message_id is being published right now")]
    DuplicateInFlight,
    /// The caller may not do this (the message says what it may do).
    #[error("{0}")]
    Forbidden(String),
    /// The caller's client was deleted or its secret rotated since it authenticated.
    #[error("client `{0}` was deleted or its secret rotated; authenticate again")]
    Revoked(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<trunkline_store::CommitError> for BrokerError {
    fn from(e: trunkline_store::CommitError) -> Self {
        BrokerError::Unavailable(e.to_string())
    }
}
