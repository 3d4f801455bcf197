//! Cooldown locks this server found held, remembered for a moment. A request that finds an
//! account's classifier lock held in Redis learns when the cooldown ends (the holder wrote it into
//! the lock's value); the same answer is given from memory to the account's next requests on
//! this server for at most [`REMEMBER_MS`] (never past the cooldown's end as read from Redis),
//! without a Redis command. A client that keeps asking during a cooldown — the case the lock
//! exists for — costs Redis about one command a second per server instead of one a request
//! (requests that arrive while the first answer is on its way still ask Redis).
//!
//! What it may get wrong, by at most [`REMEMBER_MS`]: a lock released or shortened meanwhile by
//! its holder (a request that decided not to run the classifier, or an exhausted free account's
//! shorter cooldown) still answers COOLDOWN, with the end first read. Only COOLDOWN is ever
//! answered from memory, never a run: the lock in Redis still decides every classifier run.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

/// Longest a held lock is remembered.
pub const REMEMBER_MS: u64 = 1_000;

/// Most locks remembered at once; past it, lapsed ones make room, and when fewer than a tenth
/// have lapsed all of them are forgotten (no scan of the whole map for every new lock).
pub const ENTRIES_MAX: usize = 100_000;

/// One held lock: when its cooldown ends, and until when this server answers it from memory.
#[derive(Debug, Clone, Copy)]
struct Held {
    ends_at: OffsetDateTime,
    until: Instant,
}

/// Held cooldown locks by Redis key (tenant and account).
#[derive(Debug, Default)]
pub struct HeldCooldowns {
    held: Mutex<HashMap<String, Held>>,
}

impl HeldCooldowns {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The end of the cooldown of `key` while it is remembered at `at`.
    pub fn ends_at(&self, key: &str, at: Instant) -> Option<OffsetDateTime> {
        let held = self.held();
        held.get(key).filter(|h| at < h.until).map(|h| h.ends_at)
    }

    /// Remembers that `key` was found held at `at` until `ends_at`, `remaining` from then: for
    /// [`REMEMBER_MS`] at most, and not past the end.
    pub fn remember(&self, key: &str, ends_at: OffsetDateTime, remaining: Duration, at: Instant) {
        let until = at + remaining.min(Duration::from_millis(REMEMBER_MS));
        let mut held = self.held();
        if held.len() >= ENTRIES_MAX && !held.contains_key(key) {
            held.retain(|_, h| at < h.until);
            if held.len() > ENTRIES_MAX - ENTRIES_MAX / 10 {
                held.clear();
            }
        }
        held.insert(key.to_owned(), Held { ends_at, until });
        debug_assert!(held.len() <= ENTRIES_MAX, "the remembered locks stay bounded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const END: OffsetDateTime = time::macros::datetime!(2026-11-30 06:00 UTC);

    #[test]
    fn a_held_lock_is_remembered_for_a_second_at_most() {
        let cooldowns = HeldCooldowns::default();
        let t0 = Instant::now();
        cooldowns.remember("k", END, Duration::from_secs(12 * 3600), t0);
        assert_eq!(cooldowns.ends_at("k", t0), Some(END));
        assert_eq!(cooldowns.ends_at("k", t0 + Duration::from_millis(REMEMBER_MS - 1)), Some(END));
        assert_eq!(cooldowns.ends_at("k", t0 + Duration::from_millis(REMEMBER_MS)), None);
        assert_eq!(cooldowns.ends_at("other", t0), None);
    }

    #[test]
    fn a_cooldown_about_to_end_is_remembered_only_until_it_ends() {
        let cooldowns = HeldCooldowns::default();
        let t0 = Instant::now();
        cooldowns.remember("k", END, Duration::from_millis(100), t0);
        assert_eq!(cooldowns.ends_at("k", t0 + Duration::from_millis(99)), Some(END));
        assert_eq!(cooldowns.ends_at("k", t0 + Duration::from_millis(100)), None);
    }

    #[test]
    fn the_remembered_locks_stay_bounded() {
        let cooldowns = HeldCooldowns::default();
        let t0 = Instant::now();
        for i in 0..ENTRIES_MAX {
            cooldowns.remember(&format!("k{i}"), END, Duration::from_millis(10), t0);
        }
        // Once they have lapsed, a new one makes room by forgetting them.
        let later = t0 + Duration::from_millis(20);
        cooldowns.remember("new", END, Duration::from_secs(60), later);
        assert_eq!(cooldowns.held().len(), 1);
        // While none has lapsed, a new one forgets them all rather than grow past the bound.
        for i in 0..ENTRIES_MAX - 1 {
            cooldowns.remember(&format!("k{i}"), END, Duration::from_secs(60), later);
        }
        cooldowns.remember("newer", END, Duration::from_secs(60), later);
        assert_eq!(cooldowns.held().len(), 1);
        assert_eq!(cooldowns.ends_at("newer", later), Some(END));
        // When a few have lapsed, they are not worth a scan for each new lock: all are forgotten.
        for i in 0..ENTRIES_MAX - 1 {
            let remaining = if i % 20 == 0 { Duration::ZERO } else { Duration::from_secs(60) };
            cooldowns.remember(&format!("m{i}"), END, remaining, later);
        }
        cooldowns.remember("newest", END, Duration::from_secs(60), later);
        assert_eq!(cooldowns.held().len(), 1);
        // When many have lapsed, the live ones stay.
        for i in 0..ENTRIES_MAX - 1 {
            let remaining = if i % 2 == 0 { Duration::ZERO } else { Duration::from_secs(60) };
            cooldowns.remember(&format!("n{i}"), END, remaining, later);
        }
        cooldowns.remember("last", END, Duration::from_secs(60), later);
        assert_eq!(cooldowns.held().len(), ENTRIES_MAX / 2 + 1);
        assert_eq!(cooldowns.ends_at("n1", later), Some(END));
    }
}
