//! Throttling failed logins without letting a third party lock a client out.
//!
//! Failures are counted in windows of `window_secs` that begin with a key's first failure,
//! under three keys:
//! - **(source address, client id)**: after `per_client_address` failures, that address is
//!   refused for that client, right secret or wrong, until the window ends. A guesser at
//!   another address never touches this key, so it cannot lock the client out.
//! - **source address**: after `per_address` failures over all client ids, every login
//!   from that address is refused until the window ends, so guessing across many client
//!   ids from one address is bounded too.
//! - **client id**, over all addresses: past `per_client` failures (many addresses guessing
//!   at one client), each address is allowed one failure for that client instead of
//!   `per_client_address`. That slows distributed guessing five-fold (with the default
//!   limits) without refusing anyone outright: an address that has not failed for the
//!   client still gets in with the right secret. A hard per-client bound would hand the
//!   lock-out back to whoever controls enough addresses.
//!
//! Addresses are keyed by [`source`]: IPv4 as it is, IPv6 by its /64 prefix, since one
//! host commonly holds a whole /64. A success clears its (address, client) pair only: the
//! address's and the client's counts stand, so logging in to a client of one's own does
//! not reset the bound on guessing at others.
//!
//! Each table is bounded: past `capacity` keys, expired ones are dropped, and if all are
//! live the oldest window goes first.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard};

/// The bounds of a [`Throttle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// Failures for one client from one address before that address is refused for it.
    pub per_client_address: u32,
    /// Failures from one address, over all clients, before the address is refused.
    pub per_address: u32,
    /// Failures for one client from all addresses past which each address may fail once.
    pub per_client: u32,
    pub window_secs: u64,
    /// Most keys each table holds.
    pub capacity: usize,
}

/// The key a source address is counted under: IPv4 (and IPv4-mapped IPv6) as it is,
/// IPv6 by its /64 prefix.
pub fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::V6(Ipv6Addr::from(s))
        }
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    failures: u32,
}

/// Failure windows by key, at most `capacity` of them.
#[derive(Debug)]
struct Windows<K> {
    map: HashMap<K, Window>,
}

impl<K: Hash + Eq + Clone> Windows<K> {
    fn new() -> Self {
        Windows {
            map: HashMap::new(),
        }
    }

    /// The failures of `key` in its window at `now`, and the seconds left in that window.
    fn live(&self, key: &K, now: u64, window: u64) -> Option<(u32, u64)> {
        let w = self.map.get(key)?;
        let end = w.start.saturating_add(window);
        (now < end).then(|| (w.failures, end - now))
    }

    fn count(&mut self, key: K, now: u64, window: u64, capacity: usize) {
        if self.map.len() >= capacity && !self.map.contains_key(&key) {
            self.map.retain(|_, w| now < w.start.saturating_add(window));
            if self.map.len() >= capacity {
                if let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, w)| w.start)
                    .map(|(k, _)| k.clone())
                {
                    self.map.remove(&oldest);
                }
            }
        }
        let w = self.map.entry(key).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now >= w.start.saturating_add(window) {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
    }
}

#[derive(Debug)]
struct Tables {
    pairs: Windows<(IpAddr, String)>,
    addresses: Windows<IpAddr>,
    clients: Windows<String>,
}

/// Failed-login counters. Thread-safe; the lock is held for a few map operations only.
#[derive(Debug)]
pub struct Throttle {
    limits: ThrottleLimits,
    tables: Mutex<Tables>,
}

impl Throttle {
    pub fn new(limits: ThrottleLimits) -> Self {
        Throttle {
            limits: ThrottleLimits {
                capacity: limits.capacity.max(1),
                ..limits
            },
            tables: Mutex::new(Tables {
                pairs: Windows::new(),
                addresses: Windows::new(),
                clients: Windows::new(),
            }),
        }
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // The tables are counters only; one left half-updated by a panic is still usable.
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(seconds to wait)` if a login to `client` from `addr` is refused at `now`.
    pub fn check(&self, addr: IpAddr, client: &str, now: u64) -> Result<(), u64> {
        let l = &self.limits;
        let addr = source(addr);
        let t = self.tables();
        let mut wait = 0;
        if let Some((failures, left)) = t.addresses.live(&addr, now, l.window_secs) {
            if failures >= l.per_address {
                wait = left;
            }
        }
        let under_attack = t
            .clients
            .live(&client.to_owned(), now, l.window_secs)
            .is_some_and(|(failures, _)| failures >= l.per_client);
        let allowed = if under_attack {
            1
        } else {
            l.per_client_address
        };
        if let Some((failures, left)) = t.pairs.live(&(addr, client.to_owned()), now, l.window_secs)
        {
            if failures >= allowed {
                wait = wait.max(left);
            }
        }
        if wait > 0 {
            Err(wait)
        } else {
            Ok(())
        }
    }

    /// Counts a failed login to `client` from `addr` at `now`.
    pub fn failure(&self, addr: IpAddr, client: &str, now: u64) {
        let l = &self.limits;
        let addr = source(addr);
        let mut t = self.tables();
        t.pairs
            .count((addr, client.to_owned()), now, l.window_secs, l.capacity);
        t.addresses.count(addr, now, l.window_secs, l.capacity);
        t.clients
            .count(client.to_owned(), now, l.window_secs, l.capacity);
    }

    /// Clears the (address, client) pair after a successful login.
    pub fn success(&self, addr: IpAddr, client: &str) {
        let addr = source(addr);
        self.tables().pairs.map.remove(&(addr, client.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ThrottleLimits {
        ThrottleLimits {
            per_client_address: 3,
            per_address: 10,
            per_client: 6,
            window_secs: 60,
            capacity: 100,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn a_pair_is_throttled_after_its_failures_until_its_window_ends() {
        let t = Throttle::new(limits());
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        for _ in 0..3 {
            assert_eq!(t.check(a, "v", 10), Ok(()));
            t.failure(a, "v", 10);
        }
        assert_eq!(t.check(a, "v", 20), Err(50));
        // Another address, or another client from this address, is not affected.
        assert_eq!(t.check(b, "v", 20), Ok(()));
        assert_eq!(t.check(a, "w", 20), Ok(()));
        assert_eq!(t.check(a, "v", 70), Ok(()));
        t.failure(a, "v", 70);
        assert_eq!(t.check(a, "v", 71), Ok(()));
    }

    #[test]
    fn an_address_is_throttled_after_failures_across_clients() {
        let t = Throttle::new(limits());
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        for i in 0..10 {
            assert_eq!(t.check(a, &format!("c{i}"), 5), Ok(()));
            t.failure(a, &format!("c{i}"), 5);
        }
        assert_eq!(t.check(a, "someone-else", 6), Err(59));
        assert_eq!(t.check(b, "someone-else", 6), Ok(()));
        // A success to one's own client clears the pair, not the address's count.
        t.success(a, "mine");
        assert_eq!(t.check(a, "mine", 6), Err(59));
    }

    #[test]
    fn a_client_guessed_at_from_many_addresses_allows_each_one_failure() {
        let t = Throttle::new(limits());
        for i in 0..6 {
            t.failure(ip(&format!("10.0.1.{i}")), "v", 0);
        }
        // Each of those addresses has failed once: that is now all it gets.
        assert_eq!(t.check(ip("10.0.1.0"), "v", 1), Err(59));
        // An address that has not failed for `v` still logs in.
        assert_eq!(t.check(ip("10.0.2.1"), "v", 1), Ok(()));
        // Other clients keep the usual allowance.
        t.failure(ip("10.0.1.0"), "w", 1);
        assert_eq!(t.check(ip("10.0.1.0"), "w", 1), Ok(()));
    }

    #[test]
    fn success_clears_the_pair() {
        let t = Throttle::new(limits());
        let a = ip("10.0.0.1");
        for _ in 0..2 {
            t.failure(a, "v", 0);
        }
        t.success(a, "v");
        for _ in 0..2 {
            t.failure(a, "v", 0);
        }
        assert_eq!(t.check(a, "v", 1), Ok(()));
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let t = Throttle::new(limits());
        for i in 0..3 {
            t.failure(ip(&format!("2001:db8:1:2::{i}")), "v", 0);
        }
        assert!(t.check(ip("2001:db8:1:2:ffff::1"), "v", 1).is_err());
        assert_eq!(t.check(ip("2001:db8:1:3::1"), "v", 1), Ok(()));
        assert_eq!(source(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn tables_are_bounded() {
        let t = Throttle::new(ThrottleLimits {
            capacity: 2,
            ..limits()
        });
        for (i, k) in ["x", "y", "z"].into_iter().enumerate() {
            t.failure(ip(&format!("10.0.0.{i}")), k, 5);
        }
        let tables = t.tables();
        assert!(tables.pairs.map.len() <= 2);
        assert!(tables.addresses.map.len() <= 2);
        assert!(tables.clients.map.len() <= 2);
    }
}
