//! Throttling repeated failures.
//!
//! Each key (a client id) may fail `max_failures` times within `window` seconds; after
//! that every attempt is refused, right or wrong, until the window that began with the
//! first failure ends. A success clears the key. The table is bounded: past `capacity`
//! keys, expired ones are dropped, and if all are live the oldest window goes first.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    failures: u32,
}

/// Failure counter per key. Thread-safe; the lock is held for a map lookup only.
#[derive(Debug)]
pub struct Throttle {
    max_failures: u32,
    window: u64,
    capacity: usize,
    keys: Mutex<HashMap<String, Window>>,
}

impl Throttle {
    pub fn new(max_failures: u32, window_secs: u64, capacity: usize) -> Self {
        Throttle {
            max_failures,
            window: window_secs,
            capacity: capacity.max(1),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` if `key` is throttled at `now`.
    pub fn check(&self, key: &str, now: u64) -> Result<(), u64> {
        let Ok(keys) = self.keys.lock() else {
            return Ok(());
        };
        match keys.get(key) {
            Some(w) if w.failures >= self.max_failures && now < w.start + self.window => {
                Err(w.start + self.window - now)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt for `key` at `now`.
    pub fn failure(&self, key: &str, now: u64) {
        let Ok(mut keys) = self.keys.lock() else {
            return;
        };
        if keys.len() >= self.capacity && !keys.contains_key(key) {
            let window = self.window;
            keys.retain(|_, w| now < w.start + window);
            if keys.len() >= self.capacity {
                if let Some(oldest) = keys
                    .iter()
                    .min_by_key(|(_, w)| w.start)
                    .map(|(k, _)| k.clone())
                {
                    keys.remove(&oldest);
                }
            }
        }
        let w = keys.entry(key.to_owned()).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now >= w.start + self.window {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures += 1;
    }

    /// Clears `key` after a successful attempt.
    pub fn success(&self, key: &str) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_after_max_failures_until_window_ends() {
        let t = Throttle::new(3, 60, 100);
        for _ in 0..3 {
            assert_eq!(t.check("a", 10), Ok(()));
            t.failure("a", 10);
        }
        assert_eq!(t.check("a", 20), Err(50));
        assert_eq!(t.check("b", 20), Ok(()));
        assert_eq!(t.check("a", 70), Ok(()));
        t.failure("a", 70);
        assert_eq!(t.check("a", 71), Ok(()));
    }

    #[test]
    fn success_clears_and_table_is_bounded() {
        let t = Throttle::new(1, 60, 2);
        t.failure("a", 0);
        t.success("a");
        assert_eq!(t.check("a", 1), Ok(()));
        for k in ["x", "y", "z"] {
            t.failure(k, 5);
        }
        assert!(t.keys.lock().map(|k| k.len()).unwrap_or(0) <= 2);
    }
}
