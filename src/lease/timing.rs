//! The lease arithmetic: pure functions of instants and durations, tested with any `now`.

use std::time::{Duration, Instant};

/// The lease arithmetic, kept apart from I/O so it can be tested with any `now`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseTiming {
    pub ttl: Duration,
    /// Renew this long after the last successful renewal was sent.
    pub renew_every: Duration,
    /// Give up the flag this long before the earliest moment the key could expire.
    pub margin: Duration,
    /// After a failed attempt, try again this soon.
    pub retry: Duration,
}

impl LeaseTiming {
    pub fn new(ttl: Duration) -> LeaseTiming {
        LeaseTiming {
            ttl,
            renew_every: ttl / 3,
            margin: (ttl / 10).max(Duration::from_millis(5)),
            retry: (ttl / 10).max(Duration::from_millis(10)),
        }
    }

    /// Until when the flag may stay up after a successful acquire/renew sent at `sent`.
    pub fn valid_until(&self, sent: Instant) -> Instant {
        sent + self.ttl - self.margin
    }

    /// When to renew after a successful acquire/renew sent at `sent`.
    pub fn next_renewal(&self, sent: Instant) -> Instant {
        sent + self.renew_every
    }

    /// When to retry a failed renewal made at `now`: soon, but never after the deadline.
    pub fn renewal_retry(&self, now: Instant, valid_until: Instant) -> Instant {
        (now + self.retry).min(valid_until)
    }

    /// How long a follower waits before trying again, given the lock's `PTTL` reply.
    pub fn follower_wait(&self, pttl_ms: i64) -> Duration {
        match pttl_ms {
            // Just after the key expires (Redis expires keys on access, so SET NX succeeds as
            // soon as the TTL has passed), but check at least every ttl/3 in case the holder
            // releases or the key is deleted by hand.
            ms if ms >= 0 => {
                (Duration::from_millis(ms as u64) + Duration::from_millis(1)).min(self.renew_every)
            }
            // A lock without expiry (set by hand): poll.
            -1 => self.renew_every,
            // Gone between our SET and PTTL: try again at once.
            _ => Duration::ZERO,
        }
    }
}

/// How often the lease thread reads the eviction policy again: three lock TTLs, between 1 s and
/// 30 s (30 s with the default 10 s TTL). A node that is no watcher candidate has no lease
/// thread and does not look again.
pub(crate) fn policy_check_every(ttl: Duration) -> Duration {
    (ttl * 3).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_drops_before_the_key_can_expire() {
        let t = LeaseTiming::new(Duration::from_secs(1));
        let sent = Instant::now();
        // The server cannot expire the key before sent + ttl.
        assert!(t.valid_until(sent) < sent + t.ttl);
        assert_eq!(t.valid_until(sent), sent + Duration::from_millis(900));
        assert!(t.next_renewal(sent) < t.valid_until(sent));
        // Two more renewal attempts fit before the deadline.
        assert!(t.next_renewal(sent) + t.retry * 2 < t.valid_until(sent));
    }

    #[test]
    fn renewal_retries_never_pass_the_deadline() {
        let t = LeaseTiming::new(Duration::from_secs(1));
        let now = Instant::now();
        let deadline = now + Duration::from_millis(30);
        assert_eq!(t.renewal_retry(now, deadline), deadline);
        let deadline = now + Duration::from_secs(1);
        assert_eq!(t.renewal_retry(now, deadline), now + t.retry);
    }

    #[test]
    fn the_policy_is_read_again_every_three_ttls_within_bounds() {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        for (ttl, every) in [
            (s(10), s(30)),
            (s(1), s(3)),
            (ms(100), s(1)),
            (s(60), s(30)),
        ] {
            assert_eq!(policy_check_every(ttl), every, "ttl {ttl:?}");
        }
    }

    #[test]
    fn followers_wake_when_the_lock_can_expire() {
        let t = LeaseTiming::new(Duration::from_secs(3));
        assert_eq!(t.follower_wait(200), Duration::from_millis(201));
        assert_eq!(t.follower_wait(5_000), Duration::from_secs(1));
        assert_eq!(t.follower_wait(-1), Duration::from_secs(1));
        assert_eq!(t.follower_wait(-2), Duration::ZERO);
    }
}
