//! The Redis key layout: every key one mempool uses, in one place.
//!
//! All keys start with the configured prefix `P` (default `dolos:mempool`). Transaction hashes
//! appear as 64 lowercase hex digits so that `redis-cli` output is readable.
//!
//! | key                    | type   | holds |
//! |------------------------|--------|-------|
//! | `P:watcher:lock`       | string | node id (UUID v4) of the watcher; expires after `watcher_lock_ttl` |
//! | `P:watcher:epoch`      | string | counter, +1 on every acquisition of the lock; never expires |
//! | `P:watcher:wake`       | pub/sub channel | `released` when the lock is released, `acquired <node>` when taken: followers take over at once, a deposed watcher steps down at once |
//! | `P:applied`            | string | `<slot, 20 digits>` of the last applied block (after a rollback: the slot below the undone block) |
//! | `P:height`             | string | `H`: how many `confirm` calls were applied, ever |
//! | `P:txs`                | hash   | tx hash → `stage|hi|hc|era|confirmed_at` `\n` CBOR body, for every pending and inflight tx (see `prelude.lua`); never expires |
//! | `P:pending`            | zset   | pending queue: tx hash scored by the number of the event that queued it |
//! | `P:inflight`           | zset   | inflight txs scored by the number of the event that propagated them |
//! | `P:unconfirmed`        | zset   | inflight txs not yet confirmed, scored by `hi` (the `H` when they became inflight); may still hold txs confirmed since, which `confirm` skips and removes once their score is `H - D` or less |
//! | `P:confirmed`          | zset   | Confirmed txs scored by `hc` (the `H` of their first confirmation) |
//! | `P:log`                | stream | finalized log: entry id `<seq>-0`, fields tx, st (F/D), c, m, at, era, body |
//! | `P:log:seq`            | string | last sequence given to a log entry (sequences are never reused) |
//! | `P:done`               | hash   | tx hash → `F<seq>` / `D<seq>`: where the tx sits in the retained log |
//! | `P:acked`              | string | how many inflight txs are Acknowledged (the other stage counts are set sizes), for stats |
//! | `P:events`             | stream | every transition, appended by the script that makes it: entry id `<n>-0`; trimmed to about `event_history` entries |
//! | `P:events:seq`         | string | last event number `n` (a reader that sees `n` jump knows it missed events) |
//! | `P:watcher:fence`      | string | the watcher's node id again, same TTL, kept by acquire/renew: outlives a lock deleted by hand, so nobody else takes it while the watcher lives (deleted by release and by the operator's reset) |
//!
//! Counters are derived, not stored per tx: with `H` the applied-call count, a Confirmed tx has
//! `H - hc + 1` confirmations and an unconfirmed inflight tx has `H - hi` misses. That is why
//! `confirm` touches only the block's txs and the txs that finalize or drop in it.

/// Full key names of one mempool.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub lock: String,
    pub epoch: String,
    pub wake_channel: String,
    pub applied: String,
    pub height: String,
    pub txs: String,
    pub pending: String,
    pub inflight: String,
    pub unconfirmed: String,
    pub confirmed: String,
    pub log: String,
    pub log_seq: String,
    pub done: String,
    pub acked: String,
    pub events: String,
    pub events_seq: String,
    pub fence: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let k = |suffix: &str| format!("{prefix}:{suffix}");
        Keys {
            lock: k("watcher:lock"),
            epoch: k("watcher:epoch"),
            wake_channel: k("watcher:wake"),
            applied: k("applied"),
            height: k("height"),
            txs: k("txs"),
            pending: k("pending"),
            inflight: k("inflight"),
            unconfirmed: k("unconfirmed"),
            confirmed: k("confirmed"),
            log: k("log"),
            log_seq: k("log:seq"),
            done: k("done"),
            acked: k("acked"),
            events: k("events"),
            events_seq: k("events:seq"),
            fence: k("watcher:fence"),
        }
    }

    /// Every key, in the order `prelude.lua` reads them from `KEYS`, with the Redis type it
    /// must hold (`None` for the wake channel, which is no key).
    pub fn typed(&self) -> [(&str, Option<&'static str>); 17] {
        [
            (&self.lock, Some("string")),
            (&self.epoch, Some("string")),
            (&self.wake_channel, None),
            (&self.applied, Some("string")),
            (&self.height, Some("string")),
            (&self.txs, Some("hash")),
            (&self.pending, Some("zset")),
            (&self.inflight, Some("zset")),
            (&self.unconfirmed, Some("zset")),
            (&self.confirmed, Some("zset")),
            (&self.log, Some("stream")),
            (&self.log_seq, Some("string")),
            (&self.done, Some("hash")),
            (&self.acked, Some("string")),
            (&self.events, Some("stream")),
            (&self.events_seq, Some("string")),
            (&self.fence, Some("string")),
        ]
    }

    /// Every key, in the order `prelude.lua` reads them from `KEYS`.
    pub fn all(&self) -> [&str; 17] {
        self.typed().map(|(key, _)| key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_key_matches_the_reference_deployment() {
        let keys = Keys::new("dolos:mempool");
        assert_eq!(keys.lock, "dolos:mempool:watcher:lock");
    }
}
