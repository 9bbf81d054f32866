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
//! | `P:chain`              | zset   | the applied chain: `<slot, 20 digits>[:<block hash>]` of each applied block scored by its height; the newest `applied_history` blocks |
//! | `P:height`             | string | `H`: the applied chain's height (its tip's score; an undo lowers it) |
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
//! | `P:watcher:live:<node>` | pub/sub channel | never published on: each candidate node subscribes to its own while it runs, so `PUBSUB NUMSUB` tells the others whether its connection is still open (see `src/lease/liveness.rs`) |
//!
//! Counters are derived, not stored per tx: with `H` the applied chain's height, a Confirmed tx has
//! `H - hc + 1` confirmations and an unconfirmed inflight tx has `H - hi` misses. That is why
//! `confirm` touches only the block's txs and the txs that finalize or drop in it.

/// Full key names of one mempool.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub lock: String,
    pub epoch: String,
    pub wake_channel: String,
    pub chain: String,
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
    /// The start of every node's liveness channel, `P:watcher:live:`; the node id follows. A
    /// channel, not a key: not in [`Keys::all`], passed to the lease scripts as an argument.
    pub live: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let k = |suffix: &str| format!("{prefix}:{suffix}");
        Keys {
            lock: k("watcher:lock"),
            epoch: k("watcher:epoch"),
            wake_channel: k("watcher:wake"),
            chain: k("chain"),
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
            live: k("watcher:live:"),
        }
    }

    /// The liveness channel of node `node_id`.
    pub fn live_channel(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.live)
    }

    /// Every key, in the order `prelude.lua` reads them from `KEYS`, with the Redis type it
    /// must hold (`None` for the wake channel, which is no key).
    pub fn typed(&self) -> [(&str, Option<&'static str>); 17] {
        [
            (&self.lock, Some("string")),
            (&self.epoch, Some("string")),
            (&self.wake_channel, None),
            (&self.chain, Some("zset")),
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

/// The hash tag of `prefix` as Redis Cluster reads it from every key that starts with it: the
/// text between the first `{` and the next `}`, if that is not empty. The suffixes this crate
/// appends hold no braces, so all keys of a mempool share the tag of its prefix, and so one slot.
pub(crate) fn hash_tag(prefix: &str) -> Option<&str> {
    let open = prefix.find('{')?;
    let rest = &prefix[open + 1..];
    let close = rest.find('}')?;
    (close > 0).then(|| &rest[..close])
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole key
/// without one, modulo 16384.
#[cfg(any(test, feature = "cluster"))]
pub(crate) fn slot(key: &str) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16_xmodem(hashed.as_bytes()) % 16384
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0, no reflection): the checksum Redis
/// Cluster maps keys to slots with. Bitwise rather than a table: it runs once per mempool.
#[cfg(any(test, feature = "cluster"))]
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_xmodem_check_value() {
        // The standard check value of CRC-16/XMODEM.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(crc16_xmodem(b""), 0);
    }

    #[test]
    fn slots_match_cluster_keyslot() {
        // What `CLUSTER KEYSLOT` answers on Redis 7.0.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("bar"), 5061);
        assert_eq!(slot("{dolos}:mempool:txs"), slot("dolos"));
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot("{}foo"), crc16_xmodem(b"{}foo") % 16384);
    }

    #[test]
    fn every_key_of_a_tagged_prefix_shares_one_slot() {
        for prefix in ["{dolos}:mempool", "preprod:{m1}", "a{b}c{d}"] {
            let keys = Keys::new(prefix);
            let first = slot(keys.lock.as_str());
            assert!(keys.all().iter().all(|k| slot(k) == first), "{prefix}");
        }
        assert_eq!(hash_tag("{dolos}:mempool"), Some("dolos"));
        assert_eq!(hash_tag("a{b}c{d}"), Some("b"));
        for untagged in ["dolos:mempool", "{}:mempool", "{dolos:mempool", "dolos}:{"] {
            assert_eq!(hash_tag(untagged), None, "{untagged}");
        }
    }

    #[test]
    fn liveness_channels_sit_under_the_prefix() {
        let keys = Keys::new("{dolos}:mempool");
        assert_eq!(keys.live_channel("n1"), "{dolos}:mempool:watcher:live:n1");
        assert!(keys.live_channel("n1").starts_with(&keys.live));
    }

    #[test]
    fn lock_key_matches_the_reference_deployment() {
        let keys = Keys::new("dolos:mempool");
        assert_eq!(keys.lock, "dolos:mempool:watcher:lock");
    }
}
