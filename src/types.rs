//! The data the mempool stores and returns. These mirror the types Dolos uses for its own
//! mempool, so a host can convert between them field by field.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::Error;

macro_rules! hash32 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lowercase hex, 64 characters: the form used in Redis keys and members.
            pub fn to_hex(&self) -> String {
                self.to_string()
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = Error;

            /// Parses 64 hex digits (either case).
            fn from_str(s: &str) -> Result<Self, Error> {
                parse_hex32(s).map(Self).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "{} must be 64 hex digits, got {:?}",
                        stringify!($name),
                        s
                    ).into())
                })
            }
        }
    };
}

hash32!(
    /// The hash of a transaction body (Blake2b-256 in Cardano).
    TxHash
);
hash32!(
    /// The hash of a block header.
    BlockHash
);

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A transaction body in CBOR together with the era it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct EraCbor(pub u16, pub Vec<u8>);

/// A point on the chain: where a block sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainPoint {
    /// Before the first block.
    Origin,
    /// A slot without a known block hash.
    Slot(u64),
    /// A block: its slot and hash.
    Specific(u64, BlockHash),
}

impl ChainPoint {
    /// The slot of the point; `Origin` is slot 0.
    pub fn slot(&self) -> u64 {
        match self {
            ChainPoint::Origin => 0,
            ChainPoint::Slot(s) | ChainPoint::Specific(s, _) => *s,
        }
    }

    /// The block hash, when the point names one.
    pub fn hash(&self) -> Option<BlockHash> {
        match self {
            ChainPoint::Specific(_, h) => Some(*h),
            _ => None,
        }
    }
}

/// Where a transaction is in its life.
///
/// `Pending → Propagated → Acknowledged → Confirmed → Finalized`, or `Dropped` when the chain
/// never picks it up. A rollback sends an inflight transaction back to `Pending`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MempoolTxStage {
    /// Received and waiting in the pending queue.
    Pending,
    /// Sent to peers (taken out of the pending queue).
    Propagated,
    /// A peer acknowledged it.
    Acknowledged,
    /// Seen in at least one applied block.
    Confirmed,
    /// Reached the finalize threshold; kept in the finalized log.
    Finalized,
    /// Missed too many blocks without being confirmed; kept in the finalized log.
    Dropped,
    /// Returned to the pending queue by a rollback (reported in events; a stored transaction
    /// that was rolled back reads as `Pending`).
    RolledBack,
    /// Not tracked (never received, or aged out of the finalized log).
    Unknown,
}

impl MempoolTxStage {
    /// Whether the transaction is inflight: Propagated, Acknowledged or Confirmed.
    pub fn is_inflight(&self) -> bool {
        matches!(
            self,
            MempoolTxStage::Propagated | MempoolTxStage::Acknowledged | MempoolTxStage::Confirmed
        )
    }
}

/// A transaction with its payload and where it is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MempoolTx {
    /// The transaction hash.
    pub hash: TxHash,
    /// The transaction body.
    pub payload: EraCbor,
    /// Current stage.
    pub stage: MempoolTxStage,
    /// Blocks of the applied chain from (and including) the first one that contained it: its
    /// depth. Undone blocks do not count.
    pub confirmations: u32,
    /// Blocks of the applied chain applied since it became inflight without it being confirmed.
    pub non_confirmations: u32,
    /// The block that first confirmed it.
    pub confirmed_at: Option<ChainPoint>,
}

impl MempoolTx {
    /// A new transaction, Pending with zero counters.
    pub fn new(hash: TxHash, payload: EraCbor) -> Self {
        MempoolTx {
            hash,
            payload,
            stage: MempoolTxStage::Pending,
            confirmations: 0,
            non_confirmations: 0,
            confirmed_at: None,
        }
    }

    /// The status part of this transaction.
    pub fn status(&self) -> TxStatus {
        TxStatus {
            stage: self.stage,
            confirmations: self.confirmations,
            non_confirmations: self.non_confirmations,
            confirmed_at: self.confirmed_at,
        }
    }
}

/// What [`RedisMempool::check_status`](crate::RedisMempool::check_status) reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxStatus {
    /// Current stage (`Unknown` if not tracked).
    pub stage: MempoolTxStage,
    /// See [`MempoolTx::confirmations`].
    pub confirmations: u32,
    /// See [`MempoolTx::non_confirmations`].
    pub non_confirmations: u32,
    /// See [`MempoolTx::confirmed_at`].
    pub confirmed_at: Option<ChainPoint>,
}

impl TxStatus {
    /// The status of a transaction the mempool does not track.
    pub fn unknown() -> Self {
        TxStatus {
            stage: MempoolTxStage::Unknown,
            confirmations: 0,
            non_confirmations: 0,
            confirmed_at: None,
        }
    }
}

/// One page of the finalized log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MempoolPage {
    /// Entries (Finalized or Dropped), oldest first.
    pub items: Vec<MempoolTx>,
    /// The sequence of the next entry, to pass as `cursor` for the next page; `None` at the end.
    pub next_cursor: Option<u64>,
}

/// What a call to [`RedisMempool::confirm`](crate::RedisMempool::confirm) did.
///
/// Non-exhaustive: a later version may tell more outcomes apart, so a `match` needs a `_` arm
/// (or use [`ConfirmOutcome::is_applied`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfirmOutcome {
    /// The block was applied.
    Applied,
    /// This node is not the watcher; nothing was sent to Redis.
    NotWatcher,
    /// This node believed it was the watcher, but Redis says the lock (or its epoch) belongs to
    /// someone else now; nothing changed.
    LostLock,
    /// Nothing to do, nothing changed: a forward block already on the applied chain (or older
    /// than all of a full chain), an undo of a block that is not on it, or a rollback to the
    /// tip.
    AlreadyApplied,
}

impl ConfirmOutcome {
    /// Whether the call changed the mempool.
    pub fn is_applied(&self) -> bool {
        matches!(self, ConfirmOutcome::Applied)
    }
}

/// The watcher lock as Redis sees it now. Non-exhaustive: a later version may report more.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatcherInfo {
    /// The node id stored in the lock, if any node holds it.
    pub holder: Option<String>,
    /// Remaining time to live of the lock (`None` when nobody holds it).
    pub ttl: Option<Duration>,
    /// How many times the lock has been acquired, ever (0 if never).
    pub epoch: u64,
    /// The slot of the applied chain's tip: the newest applied block that is not undone
    /// (`None` before the first block, or once every retained block was undone). See
    /// [`RedisMempool::applied_points`](crate::RedisMempool::applied_points) for the chain.
    pub applied_slot: Option<u64>,
    /// Whether the holder is this node.
    pub is_self: bool,
}

/// What a host exports as metrics: the shared mempool's counts and this node's lease figures.
/// Non-exhaustive: a later version may report more.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MempoolStats {
    /// Transactions in the pending queue.
    pub pending: u64,
    /// Inflight transactions in stage Propagated.
    pub propagated: u64,
    /// Inflight transactions in stage Acknowledged.
    pub acknowledged: u64,
    /// Inflight transactions in stage Confirmed.
    pub confirmed: u64,
    /// Entries (Finalized and Dropped) in the retained finalized log.
    pub finalized_log: u64,
    /// The applied chain's height `H`: blocks applied, ever, less those undone (an undo lowers
    /// it). Depth is measured against it.
    pub applied_blocks: u64,
    /// The watcher lock as Redis sees it.
    pub watcher: WatcherInfo,
    /// Whether this node's flag is up.
    pub is_watcher: bool,
    /// Successful renewals of the lock by this node.
    pub renewals: u64,
    /// Renewals by this node that failed (timeout, link down); it retries until its deadline.
    pub failed_renewals: u64,
    /// Times this node acquired the lock.
    pub times_acquired: u64,
    /// Times this node stepped down without a graceful release.
    pub times_lost: u64,
    /// The Redis server's `maxmemory-policy` now (`noeviction` is the one that keeps every key;
    /// see [`Config::allow_eviction`](crate::Config::allow_eviction)).
    pub maxmemory_policy: String,
    /// The Redis server's `maxmemory` in bytes (0: no limit).
    pub maxmemory: u64,
    /// The Redis server's `used_memory` in bytes: all of its data, not only this mempool's.
    pub used_memory: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_through_hex() {
        let h = TxHash::from([0xab; 32]);
        let s = h.to_string();
        assert_eq!(s.len(), 64);
        assert!(s.starts_with("abab"));
        assert_eq!(s.parse::<TxHash>().unwrap(), h);
        assert_eq!(s.to_uppercase().parse::<TxHash>().unwrap(), h);
        assert!("zz".parse::<TxHash>().is_err());
        assert!("é".repeat(32).parse::<BlockHash>().is_err());
    }

    #[test]
    fn chain_point_accessors() {
        let b = BlockHash::from([1; 32]);
        assert_eq!(ChainPoint::Origin.slot(), 0);
        assert_eq!(ChainPoint::Slot(7).hash(), None);
        assert_eq!(ChainPoint::Specific(9, b).slot(), 9);
        assert_eq!(ChainPoint::Specific(9, b).hash(), Some(b));
    }
}
