//! The Redis key layout: every key one mempool uses, in one place.
//!
//! All keys start with the configured prefix `P` (default `dolos:mempool`). Transaction hashes
//! are stored as their **32 raw bytes** (fields, members, stream values): half the memory of hex
//! and no conversion in the scripts. `redis-cli` shows them as `\x..` escapes; the inspector
//! example prints them in hex.
//!
//! | key                    | type   | holds |
//! |------------------------|--------|-------|
//! | `P:watcher:lock`       | string | node id (UUID v4) of the watcher; expires after `watcher_lock_ttl` |
//! | `P:watcher:epoch`      | string | counter, +1 on every acquisition of the lock; never expires |
//! | `P:watcher:wake`       | pub/sub channel | `released` when the lock is released, `acquired <node>` when taken: followers take over at once, a deposed watcher steps down at once |
//! | `P:watcher:fence`      | string | the watcher's node id again, same TTL, kept by acquire/renew: outlives a lock deleted by hand, so nobody else takes it while the watcher lives (deleted by release and by the operator's reset) |
//! | `P:watcher:live:<node>` | pub/sub channel | never published on: each candidate node subscribes to its own while it runs, so `PUBSUB NUMSUB` tells the others whether its connection is still open (see `src/lease/liveness.rs`) |
//! | `P:meta`               | hash   | `layout` (the version of this layout, see [`LAYOUT`]), `H` (the applied chain's height), `ev` (the last event number), `cur` (the drop cursor, see `confirm.lua`), `ack` (Acknowledged txs), `nconf` (Confirmed txs), `lseq` (the last log sequence), `lfirst` (the first sequence the log retains; absent: 1) |
//! | `P:chain`              | zset   | the applied chain: `<slot, 20 digits>[:<block hash>]` of each applied block scored by its height; the newest `applied_history` blocks |
//! | `P:txs`                | hash   | tx hash → `<era>\|<CBOR body>`, for every pending and inflight tx, and every tx of the retained log (its record stays where it was: `confirm` copies no body); written by `receive` (again only for a Dropped tx that comes back) |
//! | `P:pending`            | zset   | the pending queue: tx hash scored by the number of the event that queued it |
//! | `P:inflight`           | zset   | inflight txs scored `n·2¹⁷ + x`: `n` the number of the event that propagated them (their order), `x` the stage: 0 Propagated, 1 Acknowledged, `2 + (hc mod 131070)` Confirmed at height `hc` |
//! | `P:marks`              | zset   | height (12 digits) scored by the first event number propagated at it: a tx's `hi` (the `H` it became inflight at) is the mark with the greatest score at or below its `n`; a few entries |
//! | `P:confirmed`          | zset   | one member per block that first confirmed txs still Confirmed: `<hc, 12 digits><their hashes>` scored by `hc` |
//! | `P:points`             | zset   | the point of each such block: `<hc, 12 digits><point>` scored by `hc` (`confirmed_at`, which may be older than the retained chain) |
//! | `P:log`                | stream | finalized log: one entry per `confirm` that lets txs go (per 256 of them), id `<last seq>-<first seq>`, one field `t` = their status lines `<F\|D><hash><c>\|<m>\|<point>` in sequence order, separated by line breaks; lines below `lfirst` are no longer retained |
//! | `P:done`               | zset   | tx hash scored `2·seq + 1` (Finalized) or `2·seq` (Dropped): where the tx sits in the retained log; a Dropped tx received again leaves it. Read for a duplicate `receive`, `check_status`, and the hashes of a large page of `dump_finalized` |
//! | `P:replaced`           | zset   | the record a Dropped tx of the retained log had when it came back with another one: `<seq, 16 digits><era>\|<body>` scored by its line's `seq`; usually empty |
//! | `P:events`             | stream | one entry per call, carrying its transitions, appended by the script that makes them: entry id `<n>-0`, `n` the number of its first event; trimmed to about `event_history` entries (see `events.rs`) |
//!
//! A tx with a record in `P:txs` sits in exactly one of `P:pending`, `P:inflight` and `P:done`,
//! and a tx in none of them has no record: every script that moves a tx moves it from one to
//! another, and a record leaves only with a place in `P:done` trimmed. `mark_inflight` relies
//! on it to tell, after taking a batch out of the queue, which of its txs were there.
//!
//! Scores are doubles: `n·2¹⁷ + x` stays exact while `n` is below 2³⁶ (69 billion events), and
//! the confirming height is recovered exactly while a tx stays Confirmed fewer than 131070
//! blocks (Dolos finalizes after a handful).
//!
//! Counters are derived, not stored per tx: with `H` the applied chain's height, a Confirmed tx has
//! `H - hc + 1` confirmations and an unconfirmed inflight tx has `H - hi` misses. That is why
//! `confirm` touches only the block's txs and the txs that finalize or drop in it.

/// The version of the layout above, stored as `layout` in `P:meta`. `open` refuses a prefix
/// that holds another one, or the keys of the first layout (which had no version). Layout 3
/// changed only the log's entries (one field where layout 2 had a status and a record); layout
/// 4 keeps the records of logged txs in `P:txs` and one log entry per `confirm`.
pub(crate) const LAYOUT: u32 = 4;

/// Keys only the first layout had: finding one of them means the prefix holds data this version
/// cannot read.
const FIRST_LAYOUT_ONLY: [&str; 5] = ["height", "events:seq", "log:seq", "acked", "unconfirmed"];

/// One key of the layout: how a script names it (its entry in the `K` table the Rust side puts
/// in front of each script), its suffix after the prefix, and the Redis type it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Lock,
    Epoch,
    Wake,
    Fence,
    Meta,
    Chain,
    Txs,
    Pending,
    Inflight,
    Marks,
    Confirmed,
    Points,
    Log,
    Done,
    Replaced,
    Events,
}

impl Key {
    /// Every key.
    pub const ALL: [Key; 16] = [
        Key::Lock,
        Key::Epoch,
        Key::Wake,
        Key::Fence,
        Key::Meta,
        Key::Chain,
        Key::Txs,
        Key::Pending,
        Key::Inflight,
        Key::Marks,
        Key::Confirmed,
        Key::Points,
        Key::Log,
        Key::Done,
        Key::Replaced,
        Key::Events,
    ];

    /// The name scripts use: `K.<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Key::Lock => "lock",
            Key::Epoch => "epoch",
            Key::Wake => "wake",
            Key::Fence => "fence",
            Key::Meta => "meta",
            Key::Chain => "chain",
            Key::Txs => "txs",
            Key::Pending => "pending",
            Key::Inflight => "inflight",
            Key::Marks => "marks",
            Key::Confirmed => "confirmed",
            Key::Points => "points",
            Key::Log => "log",
            Key::Done => "done",
            Key::Replaced => "replaced",
            Key::Events => "events",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Key::Lock => "watcher:lock",
            Key::Epoch => "watcher:epoch",
            Key::Wake => "watcher:wake",
            Key::Fence => "watcher:fence",
            other => other.name(),
        }
    }

    /// The Redis type the key holds; `None` for the wake channel, which is no key.
    pub fn kind(self) -> Option<&'static str> {
        Some(match self {
            Key::Wake => return None,
            Key::Lock | Key::Epoch | Key::Fence => "string",
            Key::Meta | Key::Txs => "hash",
            Key::Log | Key::Events => "stream",
            _ => "zset",
        })
    }
}

/// Full key names of one mempool.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    names: Vec<String>,
    pub epoch: String,
    pub wake_channel: String,
    pub meta: String,
    pub chain: String,
    pub txs: String,
    pub pending: String,
    pub inflight: String,
    pub log: String,
    pub done: String,
    pub events: String,
    /// The keys of the first layout that this one dropped (see [`LAYOUT`]).
    pub first_layout: Vec<String>,
    /// The start of every node's liveness channel, `P:watcher:live:`; the node id follows. A
    /// channel, not a key: not a [`Key`], passed to the lease scripts as an argument.
    pub live: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let k = |suffix: &str| format!("{prefix}:{suffix}");
        let names: Vec<String> = Key::ALL.iter().map(|key| k(key.suffix())).collect();
        let name = |key: Key| names[key as usize].clone();
        Keys {
            epoch: name(Key::Epoch),
            wake_channel: name(Key::Wake),
            meta: name(Key::Meta),
            chain: name(Key::Chain),
            txs: name(Key::Txs),
            pending: name(Key::Pending),
            inflight: name(Key::Inflight),
            log: name(Key::Log),
            done: name(Key::Done),
            events: name(Key::Events),
            first_layout: FIRST_LAYOUT_ONLY.iter().map(|s| k(s)).collect(),
            live: k("watcher:live:"),
            names,
        }
    }

    /// The liveness channel of node `node_id`.
    pub fn live_channel(&self, node_id: &str) -> String {
        format!("{}{node_id}", self.live)
    }

    /// The full name of `key`.
    pub fn name(&self, key: Key) -> &str {
        &self.names[key as usize]
    }

    /// Every key, in the order of [`Key::ALL`].
    #[cfg(test)]
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
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
            let first = slot(keys.name(Key::Lock));
            assert!(keys.all().all(|k| slot(k) == first), "{prefix}");
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
        assert_eq!(keys.name(Key::Lock), "dolos:mempool:watcher:lock");
        for key in Key::ALL {
            assert_eq!(Key::ALL[key as usize], key);
        }
        assert_eq!(keys.name(Key::Meta), "dolos:mempool:meta");
    }
}
