//! What queued messages cost in memory, as the node-wide cap (`max_memory_bytes`) counts
//! it.
//!
//! Bodies live in the store; memory holds an index of what is queued, and a cache of hot
//! bodies. The cap bounds both:
//! - the index ([`Account`]): per queue entry [`ENTRY_BYTES`] (the queue's slot, ready or
//!   leased with its deadline, and the log store's index of the same entry), per message
//!   [`MESSAGE_BYTES`] (the message record and the log store's location of it). A publish
//!   into N queues costs [`index_bytes`]`(N)`, whatever its body. Past [`pressed_at`] (half
//!   the cap) queues keep what passes their first [`PRESSED_HEAD`] ready entries in the
//!   store only, where an entry costs a few bytes and is not counted, and past
//!   [`bare_at`] (three quarters) every new entry; past the cap (entries brought back for
//!   consumers, leased ones), publishes are refused;
//! - the body cache (`queue::BodyCache`): bodies counted by [`body_bytes`] (the stored
//!   message, its strings and body), at most `body_cache_bytes` and never more than the
//!   index leaves under the cap. Bodies it lets go are read back from the store.
//!
//! The figures are estimates, checked against the resident set of a broker on the log
//! store with `examples/memory_cost.rs` (see `docs/storage-format.md` for what it
//! measured). They lean high rather than low, so the cap is a bound on memory, not a
//! hope; with the redb engine, which keeps no index in memory, they count high.

use std::sync::atomic::{AtomicU64, Ordering};

use trunkline_store::{NodeSpill, StoredMessage};

/// One queue entry: a ready entry takes a slot in its queue's ordered map (52 bytes with
/// the map's nodes about half full) and one in the log store's index (80 bytes); a leased
/// entry takes a slot in the lease table and one in the deadline index instead (about 104
/// bytes, more just after the table grew). Counted at the dearer, leased, state.
pub const ENTRY_BYTES: u64 = 200;

/// One message record, without its body: the broker's `Msg` behind its `Arc`, and the log
/// store's location of the message.
pub const MESSAGE_BYTES: u64 = 200;

/// Ready entries a queue keeps in memory while the node is pressed (its head, so that a
/// consumer keeping up is served from memory); past them, new ones stay in the store.
pub const PRESSED_HEAD: usize = 32;

/// Queued memory past which the node is pressed: queues holding [`PRESSED_HEAD`] ready
/// entries keep new ones in the store only, so that a backlog spread over many queues is
/// bounded by disk, not by `max` (half of it, so that the heads, the entries brought back
/// for consumers and the body cache have the rest).
pub const fn pressed_at(max: u64) -> u64 {
    max / 2
}

/// Queued memory past which queues keep no head at all: every new entry stays in the
/// store only, so that a backlog spread over more queues than the cap holds the heads of
/// (a fleet of devices offline, a few messages each) is bounded by disk too. Three
/// quarters of the cap: the rest is for entries brought back for consumers.
pub const fn bare_at(max: u64) -> u64 {
    max / 4 * 3
}

/// Ready entries a queue may hold in memory before new ones stay in the store only, with
/// `used` of `max` queued memory and `hot_max` its own bound.
pub const fn head(used: u64, max: u64, hot_max: usize) -> usize {
    if used >= bare_at(max) {
        0
    } else if used >= pressed_at(max) {
        if PRESSED_HEAD < hot_max {
            PRESSED_HEAD
        } else {
            hot_max
        }
    } else {
        hot_max
    }
}

/// Entries of one-queue messages that fill memory to [`pressed_at`]: the node-wide bound
/// a store applies as it replays its log at start.
pub const fn pressed_entries(max: u64) -> usize {
    (pressed_at(max) / index_bytes(1)) as usize
}

/// The node-wide bounds a store applies as it replays its log at start, the same as a
/// running node's with `max` bytes of queued memory.
pub const fn node_spill(max: u64) -> NodeSpill {
    NodeSpill {
        entries: pressed_entries(max),
        head: PRESSED_HEAD,
        bare: (bare_at(max) / index_bytes(1)) as usize,
    }
}

/// What a message queued in `places` queues adds to the index.
pub const fn index_bytes(places: usize) -> u64 {
    places as u64 * ENTRY_BYTES + MESSAGE_BYTES
}

/// A `StoredMessage` behind its `Arc`, as allocated.
const STORED_MESSAGE_BYTES: u64 = allocation(16 + std::mem::size_of::<StoredMessage>());

/// What the allocator takes for `n` bytes (glibc: 8 bytes of header, rounded up to 16,
/// at least 32); nothing for nothing.
pub const fn allocation(n: usize) -> u64 {
    if n == 0 {
        0
    } else {
        let chunk = (n + 8).div_ceil(16) * 16;
        (if chunk < 32 { 32 } else { chunk }) as u64
    }
}

/// What a message's body costs while the cache holds it: the stored message (with its
/// `Arc`), its strings, headers and body (and the body's shared handle).
pub fn body_bytes(
    topic: &str,
    sender: &str,
    body_len: usize,
    content_type: Option<&str>,
    headers: &[(String, String)],
) -> u64 {
    let headers_bytes = allocation(std::mem::size_of_val(headers))
        + headers
            .iter()
            .map(|(k, v)| allocation(k.len()) + allocation(v.len()))
            .sum::<u64>();
    STORED_MESSAGE_BYTES
        + allocation(topic.len())
        + allocation(sender.len())
        // The body, and the shared handle (3 words) `Bytes` allocates once it is cloned.
        + allocation(body_len)
        + allocation(24)
        + content_type.map_or(0, |c| allocation(c.len()))
        + headers_bytes
}

/// [`body_bytes`] of a stored message.
pub fn stored_body_bytes(m: &StoredMessage) -> u64 {
    body_bytes(
        &m.topic,
        &m.sender,
        m.body.len(),
        m.content_type.as_deref(),
        &m.headers,
    )
}

/// The node's count of memory held by queued messages, against its cap.
#[derive(Debug)]
pub(crate) struct Account {
    used: AtomicU64,
    max: u64,
}

/// The cap would be passed: what is in use, and the most allowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Full {
    pub used: u64,
    pub max: u64,
}

impl Account {
    pub(crate) fn new(max: u64) -> Self {
        Account {
            used: AtomicU64::new(0),
            max,
        }
    }

    /// Counts `n` more bytes if they fit under the cap (nothing always fits, even over
    /// the cap).
    pub(crate) fn try_add(&self, n: u64) -> Result<(), Full> {
        if n == 0 {
            return Ok(());
        }
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let next = cur.saturating_add(n);
            if next > self.max {
                return Err(Full {
                    used: cur,
                    max: self.max,
                });
            }
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Counts `n` more bytes whatever the cap (what is already stored, at start).
    pub(crate) fn add(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn sub(&self, n: u64) {
        // Never below zero, even if a release outran its count (it cannot, by
        // construction; a wrapped counter would refuse every publish).
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_round_as_glibc_does() {
        assert_eq!(
            (allocation(0), allocation(3), allocation(24), allocation(25)),
            (0, 32, 32, 48)
        );
    }

    #[test]
    fn the_cap_refuses_what_would_pass_it_and_nothing_else() {
        let a = Account::new(100);
        assert!(a.try_add(60).is_ok());
        assert!(matches!(a.try_add(41), Err(Full { used: 60, max: 100 })));
        assert!(a.try_add(40).is_ok());
        a.add(10);
        assert!(a.try_add(0).is_ok(), "nothing fits even over the cap");
        a.sub(110);
        a.sub(1);
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn estimates_cover_at_least_the_structs_themselves() {
        use std::mem::size_of;
        // `Msg` behind its `Arc` header, and the log store's key and location.
        let record = 16 + size_of::<crate::Msg>() + 8 + 12;
        assert!(MESSAGE_BYTES >= record as u64, "{record}");
        // A ready entry's key and slot, and the log store's key, entry and location.
        let entry = 8 + size_of::<crate::queue::Slot>() + 8 + 16 + 16;
        assert!(ENTRY_BYTES >= entry as u64, "{entry}");
    }
}
