//! The Redis key layout: every key one mempool uses, in one place.
//!
//! All keys start with the configured prefix `P` (default `dolos:mempool`). Transaction hashes
//! appear as 64 lowercase hex digits so that `redis-cli` output is readable.
//!
//! | key                    | type   | holds |
//! |------------------------|--------|-------|
//! | `P:watcher:lock`       | string | node id (UUID v4) of the watcher; expires after `watcher_lock_ttl` |
//! | `P:watcher:fence`      | string | the watcher's node id again, same TTL, kept by acquire/renew: outlives a lock deleted by hand, so nobody else takes it while the watcher lives (deleted by release and by the operator's reset) |
//! | `P:watcher:epoch`      | string | counter, +1 on every acquisition of the lock; never expires |
//! | `P:watcher:wake`       | pub/sub channel | a message when a watcher releases the lock, so followers take over at once |
//! | `P:applied`            | string | `<slot, 20 digits>` of the last applied block (after a rollback: the slot below the undone block) |
//! | `P:height`             | string | `H`: how many `confirm` calls were applied, ever |
//! | `P:seq`                | string | counter that orders the pending queue and the inflight set |
//! | `P:txs`                | hash   | tx hash → state record `stage|hi|hc|era|confirmed_at` (see `prelude.lua`) |
//! | `P:payloads`           | hash   | tx hash → CBOR body, for every pending and inflight tx; never expires |
//! | `P:pending`            | zset   | pending queue: tx hash scored by arrival order |
//! | `P:inflight`           | zset   | inflight txs scored by the order they were propagated |
//! | `P:unconfirmed`        | zset   | inflight txs not yet confirmed, scored by `hi` (the `H` when they became inflight) |
//! | `P:confirmed`          | zset   | Confirmed txs scored by `hc` (the `H` of their first confirmation) |
//! | `P:log`                | stream | finalized log: entry id `<seq>-0`, fields tx, st (F/D), c, m, at, era, body |
//! | `P:log:seq`            | string | last sequence given to a log entry (sequences are never reused) |
//! | `P:done`               | hash   | tx hash → `F<seq>` / `D<seq>`: where the tx sits in the retained log |
//! | `P:stages`             | hash   | live tx count per stage (`P`, `R`, `A`, `C`), for stats |
//! | `P:events`             | stream | every transition, appended by the script that makes it: entry id `<n>-0`; trimmed to about `event_history` entries |
//! | `P:events:seq`         | string | last event number `n` (a reader that sees `n` jump knows it missed events) |
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
    pub seq: String,
    pub txs: String,
    pub payloads: String,
    pub pending: String,
    pub inflight: String,
    pub unconfirmed: String,
    pub confirmed: String,
    pub log: String,
    pub log_seq: String,
    pub done: String,
    pub stages: String,
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
            seq: k("seq"),
            txs: k("txs"),
            payloads: k("payloads"),
            pending: k("pending"),
            inflight: k("inflight"),
            unconfirmed: k("unconfirmed"),
            confirmed: k("confirmed"),
            log: k("log"),
            log_seq: k("log:seq"),
            done: k("done"),
            stages: k("stages"),
            events: k("events"),
            events_seq: k("events:seq"),
            fence: k("watcher:fence"),
        }
    }

    /// Every key, in the order `prelude.lua` reads them from `KEYS`.
    pub fn all(&self) -> [&str; 19] {
        [
            &self.lock,
            &self.epoch,
            &self.wake_channel,
            &self.applied,
            &self.height,
            &self.seq,
            &self.txs,
            &self.payloads,
            &self.pending,
            &self.inflight,
            &self.unconfirmed,
            &self.confirmed,
            &self.log,
            &self.log_seq,
            &self.done,
            &self.stages,
            &self.events,
            &self.events_seq,
            &self.fence,
        ]
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
