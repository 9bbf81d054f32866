//! [`RedisMempool`]: the public API. Each call borrows a pooled connection and runs one script
//! (see `src/scripts/`) against the keys of `src/keys.rs`; this file only turns arguments into
//! script arguments and replies into types.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use log::debug;
use parking_lot::Mutex;
use redis::Value;

use crate::codec;
use crate::connect::{self, ConnRole, Pool};
use crate::events::{EventHub, MempoolEvent, ReaderSetup};
use crate::keys::Keys;
use crate::lease::{Lease, LeaseShared};
use crate::memory;
use crate::scripts::{self, Call, Scripts};
use crate::types::{
    ChainPoint, ConfirmOutcome, MempoolPage, MempoolStats, MempoolTx, TxHash, TxStatus, WatcherInfo,
};
use crate::{Config, Error, LOG_TARGET};

/// A mempool shared through Redis by every node that uses the same key prefix.
///
/// Cheap to clone: clones share one connection pool and one lease thread. Every method blocks
/// the calling thread for at most about the configured timeouts; async hosts call them inside
/// `spawn_blocking`. Dropping the last clone shuts down like [`RedisMempool::shutdown`].
#[derive(Clone)]
pub struct RedisMempool {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    target: connect::Target,
    node_id: String,
    keys: Keys,
    scripts: Arc<Scripts>,
    pool: Pool,
    lease_shared: Arc<LeaseShared>,
    /// `None` once shut down (or abandoned); dropping the `Lease` stops its threads.
    lease: Mutex<Option<Lease>>,
    events: EventHub,
}

/// How many undelivered events a subscriber's channel holds before it starts missing events
/// (and is told so with [`MempoolEvent::Lagged`]).
const SUBSCRIBER_CAPACITY: usize = 16_384;

impl std::fmt::Debug for RedisMempool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMempool")
            .field("node_id", &self.inner.node_id)
            .field("config", &self.inner.config)
            .field("is_watcher", &self.is_watcher())
            .finish()
    }
}

/// Bounds an unbounded `limit` to what Redis accepts as an index or count.
fn clamp(limit: usize) -> u64 {
    (limit as u64).min(i64::MAX as u64 / 2)
}

impl RedisMempool {
    /// Validates `config`, connects (failing within the connect timeout if Redis is not
    /// reachable), loads the scripts and starts the lease thread (unless the config says the
    /// node is no [watcher candidate](Config::watcher_candidate)). Returns once the first attempt
    /// to acquire the watcher lock has been made, so a lone node is the watcher right away.
    ///
    /// Refuses a Redis that may evict the mempool's keys when it is full (`maxmemory-policy`
    /// other than `noeviction`) with [`Error::EvictionPolicy`], unless
    /// [`Config::allow_eviction`] says to run anyway.
    pub fn open(config: Config) -> Result<RedisMempool, Error> {
        config.validate()?;
        let target = connect::Target::of(&config).map_err(|_| {
            Error::InvalidConfig(format!("url: {:?} is not valid", config.redacted_url()).into())
        })?;
        let node_id = uuid::Uuid::new_v4().to_string();
        let keys = Keys::new(&config.key_prefix);
        // One direct connection first: it fails fast and with the real reason (refused
        // credentials, unreachable host), where the pool would retry until its timeout. It
        // reads what the server is and loads the scripts.
        let (scripts, policy) = {
            let mut conn = connect::RedisConn::open(
                &target,
                config.connect_timeout,
                config.command_timeout,
                &ConnRole::Open.name(&node_id),
            )
            .map_err(Error::from_redis)?;
            let facts = memory::ServerFacts::parse(&server_info(&mut conn)?);
            memory::check_policy(&facts.memory, config.allow_eviction)?;
            let headers = facts.script_headers() && config.script_headers();
            let scripts = Arc::new(Scripts::new(headers));
            scripts.load_all(&mut conn)?;
            // Every write of a node with the durability option ends with WAIT: a user that may
            // not run it would see each write made and then refused.
            if config.wait_replicas.is_some() {
                conn.run::<redis::Value>(redis::cmd("WAIT").arg(0).arg(1))
                    .map_err(|e| match Error::from_redis(e) {
                        Error::Auth(m) => Error::Auth(m.prefixed(
                            "wait_replicas needs the WAIT command, which the redis user may not run",
                        )),
                        other => other,
                    })?;
            }
            let missing = codec::array(
                scripts::run(
                    &mut conn,
                    &scripts.check_access(),
                    &keys,
                    config.event_history,
                    None,
                )?,
                "check_access",
            )?
            .iter()
            .map(|v| codec::text(v, "check_access"))
            .collect::<Result<Vec<_>, _>>()?;
            if !missing.is_empty() {
                return Err(Error::Auth(
                    format!(
                    "the redis user may not run what a node needs (see the README's ACL rule): {}",
                    missing.join(", ")
                )
                    .into(),
                ));
            }
            (scripts, facts.memory.policy)
        };
        let pool = connect::build_pool(target.clone(), &config, ConnRole::Pool.name(&node_id))?;
        let lease_shared = Arc::new(LeaseShared::default());
        let lease = if config.watcher_candidate {
            let (first_tx, first_rx) = crossbeam_channel::bounded(1);
            let lease = Lease::start(
                &config,
                target.clone(),
                keys.clone(),
                scripts.clone(),
                node_id.clone(),
                lease_shared.clone(),
                first_tx,
                policy,
            )?;
            // Best effort: if Redis is slow the lease settles in the background.
            let _ =
                first_rx.recv_timeout(config.lease_io_timeout() * 2 + Duration::from_millis(50));
            Some(lease)
        } else {
            None
        };
        debug!(target: LOG_TARGET, "opened mempool {} as node {node_id}", config.key_prefix);
        Ok(RedisMempool {
            inner: Arc::new(Inner {
                config,
                target,
                node_id,
                keys,
                scripts,
                pool,
                lease_shared,
                lease: Mutex::new(lease),
                events: EventHub::new(SUBSCRIBER_CAPACITY),
            }),
        })
    }

    /// This node's id: a UUID v4 made at `open`, stored in the lock while this node is watcher.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The configuration this mempool was opened with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether this node currently holds the watcher lock (one atomic load; see the lease
    /// invariant in the README).
    pub fn is_watcher(&self) -> bool {
        self.inner.lease_shared.flag.load(Ordering::SeqCst)
    }

    /// A pooled connection; waits up to the connect timeout for one to be free.
    fn conn(&self) -> Result<r2d2::PooledConnection<connect::Manager>, Error> {
        self.inner
            .pool
            .get()
            .map_err(|e| Error::Unavailable(e.to_string().into()).with_source(e))
    }

    /// Makes one script call on a pooled connection.
    fn exec(&self, call: Call<'_>) -> Result<Value, Error> {
        let mut conn = self.conn()?;
        scripts::run(
            &mut conn,
            &call,
            &self.inner.keys,
            self.inner.config.event_history,
            self.inner.config.wait_replicas,
        )
    }

    /// Adds a transaction to the tail of the pending queue.
    ///
    /// Fails with [`Error::DuplicateTx`] if the hash is pending, inflight, or Finalized in the
    /// retained log (a Dropped tx may be received again), [`Error::TxTooLarge`] or
    /// [`Error::MempoolFull`]; nothing is stored then. The stage and counters of `tx` are
    /// ignored: it always enters as Pending.
    pub fn receive(&self, tx: MempoolTx) -> Result<(), Error> {
        let max = self.inner.config.max_tx_size;
        if tx.payload.1.len() > max {
            return Err(Error::TxTooLarge {
                size: tx.payload.1.len(),
                max,
            });
        }
        let call = self.inner.scripts.receive(
            &tx.hash,
            tx.payload.0,
            &tx.payload.1,
            self.inner.config.max_pending,
        );
        let reply = codec::array(self.exec(call)?, "receive")?;
        match codec::status(&reply, "receive")?.as_deref() {
            Some("ok") => Ok(()),
            Some("dup") => Err(Error::DuplicateTx),
            Some("full") => Err(Error::MempoolFull {
                max: self.inner.config.max_pending,
            }),
            _ => Err(Error::UnexpectedReply(format!("receive: {reply:?}").into())),
        }
    }

    /// Whether the pending queue holds any transaction.
    pub fn has_pending(&self) -> Result<bool, Error> {
        let n = codec::int(&self.exec(self.inner.scripts.has_pending())?, "has_pending")?;
        Ok(n > 0)
    }

    /// The first `limit` pending transactions in queue order, with payloads; nothing is removed.
    pub fn peek_pending(&self, limit: usize) -> Result<Vec<MempoolTx>, Error> {
        self.peek("pending", limit)
    }

    /// Up to `limit` inflight transactions (Propagated, Acknowledged or Confirmed) in the order
    /// they were propagated, with payloads.
    pub fn peek_inflight(&self, limit: usize) -> Result<Vec<MempoolTx>, Error> {
        self.peek("inflight", limit)
    }

    fn peek(&self, set: &'static str, limit: usize) -> Result<Vec<MempoolTx>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let call = self.inner.scripts.peek(set, clamp(limit) - 1);
        let reply = codec::array(self.exec(call)?, "peek")?;
        reply
            .into_iter()
            .map(|v| codec::decode_tx(v, &self.inner.keys))
            .collect()
    }

    /// Moves each pending hash to Propagated (out of the pending queue; its miss count starts
    /// now). Hashes that are not pending are ignored.
    pub fn mark_inflight(&self, hashes: &[TxHash]) -> Result<(), Error> {
        if hashes.is_empty() {
            return Ok(());
        }
        let moved = self.exec(self.inner.scripts.mark_inflight(hashes))?;
        codec::int(&moved, "moved").map(drop)
    }

    /// Moves each Propagated hash to Acknowledged; others are ignored.
    pub fn mark_acknowledged(&self, hashes: &[TxHash]) -> Result<(), Error> {
        if hashes.is_empty() {
            return Ok(());
        }
        let moved = self.exec(self.inner.scripts.mark_acknowledged(hashes))?;
        codec::int(&moved, "moved").map(drop)
    }

    /// The inflight transaction with this hash, if it is inflight.
    pub fn find_inflight(&self, hash: &TxHash) -> Result<Option<MempoolTx>, Error> {
        match self.exec(self.inner.scripts.find_inflight(hash))? {
            Value::Nil => Ok(None),
            v => codec::decode_tx(v, &self.inner.keys).map(Some),
        }
    }

    /// Applies one block to the inflight transactions, or undoes one when `unseen` is not
    /// empty. Only the watcher changes anything, and Redis keeps the **applied chain** (the
    /// newest [`applied_history`](Config::applied_history) applied blocks) to apply each block
    /// once and to let depth follow the chain. With `H` the chain's height:
    ///
    /// * **Forward** (`unseen` empty): [`AlreadyApplied`](ConfirmOutcome::AlreadyApplied) if
    ///   `point` is on the applied chain, or if the chain is full and `point`'s slot is at or
    ///   below its oldest block's. Otherwise the block becomes the new tip, whatever its slot is
    ///   next to blocks undone before (a fork's block may have an earlier slot): each inflight tx
    ///   in `seen` becomes Confirmed (recording `point`), every Confirmed tx has
    ///   `H − h + 1` confirmations (`h`: the height of the block that first confirmed it) and
    ///   every other inflight tx `H − h'` misses (`h'`: the height when it became inflight); txs
    ///   reaching `finalize_threshold` confirmations are Finalized and unconfirmed ones reaching
    ///   `drop_threshold` misses are Dropped (both move to the finalized log).
    /// * **Undo** (`unseen` not empty): applied only if `point` is on the applied chain; that
    ///   block **and every block after it** are undone, which lowers `H` (an undo never counts
    ///   as a block). Every inflight tx in `unseen`, and every tx first confirmed by an undone
    ///   block, returns to the tail of the pending queue with a `RolledBack` event; unconfirmed
    ///   txs that became inflight above the new tip count their misses from it. A point that is
    ///   not on the chain changes nothing (`AlreadyApplied`), so replaying an undo is harmless.
    ///   Finalized and Dropped txs stay as they are.
    ///
    /// Dolos also calls `confirm(point, [], [])` to undo a block without transactions; that is
    /// indistinguishable from a replay of the block and is treated as one. A host that knows it
    /// rolls back calls [`rollback_to`](RedisMempool::rollback_to).
    ///
    /// Returns [`ConfirmOutcome::NotWatcher`] without contacting Redis when this node is not the
    /// watcher, and [`ConfirmOutcome::LostLock`] when Redis says the lock (or its epoch) is no
    /// longer ours. A call with both `seen` and `unseen` non-empty, or at `Origin` (no block), is
    /// [`Error::InvalidInput`] and changes nothing.
    ///
    /// [`Error::OutOfMemory`] (Redis is full) means nothing was applied: make the same call
    /// again, before offering the next block, and it applies once when memory is back.
    ///
    /// ```no_run
    /// # use dolos_redis::{BlockHash, ChainPoint, Config, ConfirmOutcome, RedisMempool, TxHash};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let block = ChainPoint::Specific(1_000, BlockHash::from([7; 32]));
    /// let txs = [TxHash::from([1; 32])];
    /// match mempool.confirm(&block, &txs, &[], 6, 2)? {
    ///     ConfirmOutcome::Applied => println!("block applied"),
    ///     ConfirmOutcome::AlreadyApplied => println!("a replay: nothing to do"),
    ///     other => println!("not applied here: {other:?}"),
    /// }
    /// // The chain rolled back past that block: undo it.
    /// mempool.confirm(&block, &[], &txs, 6, 2)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn confirm(
        &self,
        point: &ChainPoint,
        seen: &[TxHash],
        unseen: &[TxHash],
        finalize_threshold: u32,
        drop_threshold: u32,
    ) -> Result<ConfirmOutcome, Error> {
        if !seen.is_empty() && !unseen.is_empty() {
            return Err(Error::InvalidInput(
                format!(
                "confirm at {point:?}: a block is either applied (seen) or undone (unseen), not \
                 both; got {} seen and {} unseen",
                seen.len(),
                unseen.len()
            )
                .into(),
            ));
        }
        let Some(member) = codec::chain_member(point) else {
            return Err(Error::InvalidInput(
                "confirm: Origin names no block (to undo every block, call rollback_to(Origin))"
                    .into(),
            ));
        };
        if !self.is_watcher() {
            debug!(target: LOG_TARGET, "not watcher, skipping confirm");
            return Ok(ConfirmOutcome::NotWatcher);
        }
        let epoch = self.inner.lease_shared.epoch.load(Ordering::SeqCst);
        let call = self.inner.scripts.confirm(
            &self.inner.node_id,
            epoch,
            &member,
            point,
            finalize_threshold,
            drop_threshold,
            self.inner.config.max_finalized,
            self.inner.config.applied_history,
            seen,
            unseen,
        );
        let reply = codec::array(self.exec(call)?, "confirm")?;
        let undo = !unseen.is_empty();
        self.chain_outcome(&reply, "confirm", |n| {
            if undo {
                debug!(
                    target: LOG_TARGET,
                    "undid block {point:?} and {} after it (height now {}): {} rolled back",
                    n(6)?.saturating_sub(1), n(1)?, n(3)?
                );
            } else {
                debug!(
                    target: LOG_TARGET,
                    "applied block {point:?} (height {}): {} confirmed, {} finalized, {} dropped",
                    n(1)?, n(2)?, n(4)?, n(5)?
                );
            }
            Ok(())
        })
    }

    /// Undoes every applied block after `point` (the block at `point` stays applied), with the
    /// effects of an undo in [`confirm`](RedisMempool::confirm) and no transaction list needed:
    /// txs first confirmed by an undone block return to the pending queue, the others' depth
    /// follows the chain's new height. `Origin` undoes the whole retained chain. Watcher only and
    /// fenced like `confirm`.
    ///
    /// Returns [`ConfirmOutcome::Applied`] when blocks were undone,
    /// [`ConfirmOutcome::AlreadyApplied`] when `point` is the tip already (nothing after it), and
    /// `NotWatcher`/`LostLock` as `confirm` does. A point that is not on the applied chain is
    /// [`Error::InvalidInput`] naming it, and changes nothing.
    ///
    /// This is the tool of the takeover reconcile step: a node that becomes the watcher reads
    /// [`applied_points`](RedisMempool::applied_points), finds the newest one on its own chain,
    /// rolls back to it, then replays its own blocks after it.
    ///
    /// ```no_run
    /// # use dolos_redis::{ChainPoint, Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let my_chain: Vec<ChainPoint> = Vec::new();
    /// let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// // Newest first: the newest applied block that is also on this node's chain.
    /// let common = mempool
    ///     .applied_points(usize::MAX)?
    ///     .into_iter()
    ///     .find(|p| my_chain.contains(p))
    ///     .unwrap_or(ChainPoint::Origin);
    /// mempool.rollback_to(&common)?;
    /// // ... then confirm() this node's blocks after `common`, oldest first.
    /// # Ok(())
    /// # }
    /// ```
    pub fn rollback_to(&self, point: &ChainPoint) -> Result<ConfirmOutcome, Error> {
        if !self.is_watcher() {
            debug!(target: LOG_TARGET, "not watcher, skipping rollback");
            return Ok(ConfirmOutcome::NotWatcher);
        }
        let epoch = self.inner.lease_shared.epoch.load(Ordering::SeqCst);
        let member = codec::chain_member(point).unwrap_or_default();
        let call = self
            .inner
            .scripts
            .rollback_to(&self.inner.node_id, epoch, &member);
        let reply = codec::array(self.exec(call)?, "rollback_to")?;
        if codec::status(&reply, "rollback_to")?.as_deref() == Some("unknown") {
            return Err(Error::InvalidInput(
                format!("rollback_to: {point:?} is not on the applied chain").into(),
            ));
        }
        self.chain_outcome(&reply, "rollback_to", |n| {
            debug!(
                target: LOG_TARGET,
                "rolled back to {point:?}: {} blocks undone (height now {}), {} txs back to pending",
                n(3)?, n(1)?, n(2)?
            );
            Ok(())
        })
    }

    /// Maps the reply of `confirm.lua`/`rollback_to.lua` (`{'applied', counts...}`, `{'lost'}`,
    /// `{'already'}`) to an outcome; `log` reports an applied call, given the reply's numbers.
    fn chain_outcome(
        &self,
        reply: &[Value],
        what: &str,
        log: impl FnOnce(&dyn Fn(usize) -> Result<i64, Error>) -> Result<(), Error>,
    ) -> Result<ConfirmOutcome, Error> {
        let status = codec::status(reply, what)?;
        match status.as_deref() {
            Some("applied") => {
                let n = |i: usize| match reply.get(i) {
                    Some(v) => codec::int(v, what),
                    None => Err(Error::UnexpectedReply(format!("{what}: {reply:?}").into())),
                };
                log(&n)?;
                Ok(ConfirmOutcome::Applied)
            }
            Some("lost") => {
                debug!(target: LOG_TARGET, "lost watcher lock, skipping confirm");
                Ok(ConfirmOutcome::LostLock)
            }
            Some("already") => {
                debug!(target: LOG_TARGET, "{what}: already applied, nothing to do");
                Ok(ConfirmOutcome::AlreadyApplied)
            }
            _ => Err(Error::UnexpectedReply(format!("{what}: {reply:?}").into())),
        }
    }

    /// The applied chain as Redis keeps it: the points of the newest applied blocks, **newest
    /// first**, at most `limit` of them (and at most
    /// [`applied_history`](Config::applied_history)). Empty before the first block, or once
    /// every retained block was undone.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// if let Some(tip) = mempool.applied_points(1)?.first() {
    ///     println!("the watcher applied up to {tip:?}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn applied_points(&self, limit: usize) -> Result<Vec<ChainPoint>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reply = self.exec(self.inner.scripts.applied_points(clamp(limit) - 1))?;
        codec::array(reply, "applied_points")?
            .iter()
            .map(|v| {
                let member = codec::text(v, "applied point")?;
                codec::decode_point(&member, &self.inner.keys.chain)?.ok_or_else(|| {
                    Error::Corrupt {
                        key: self.inner.keys.chain.clone(),
                        detail: "empty chain entry".into(),
                    }
                })
            })
            .collect()
    }

    /// The stage and counters of a transaction: live ones (pending or inflight) first, then
    /// the retained finalized log; `Unknown` otherwise.
    pub fn check_status(&self, hash: &TxHash) -> Result<TxStatus, Error> {
        let hex = hash.to_hex();
        let reply = self.exec(self.inner.scripts.check_status(hash))?;
        if reply == Value::Nil {
            return Ok(TxStatus::unknown());
        }
        let [stage, c, m, at] = codec::tuple(reply, "check_status")?;
        let key = format!("{} {hex}", self.inner.keys.txs);
        Ok(TxStatus {
            stage: codec::decode_stage(&codec::text(&stage, "stage")?, &key)?,
            confirmations: codec::count(&c, "confirmations")?,
            non_confirmations: codec::count(&m, "misses")?,
            confirmed_at: codec::decode_point(&codec::text(&at, "confirmed_at")?, &key)?,
        })
    }

    /// Entries of the finalized log (Finalized and Dropped txs, with payloads) whose sequence is
    /// at least `cursor`, oldest first, at most `limit` of them. Sequences start at 1 and are
    /// never reused; pass `next_cursor` back to read on. The log keeps the newest
    /// `max_finalized` entries.
    pub fn dump_finalized(&self, cursor: u64, limit: usize) -> Result<MempoolPage, Error> {
        let call = self.inner.scripts.dump_finalized(cursor, clamp(limit) + 1);
        let reply = self.exec(call)?;
        let mut items = Vec::new();
        let mut next_cursor = None;
        for entry in codec::array(reply, "dump_finalized")? {
            let (seq, tx) = codec::decode_log_entry(entry, &self.inner.keys)?;
            if items.len() == limit {
                next_cursor = Some(seq);
                break;
            }
            items.push(tx);
        }
        Ok(MempoolPage { items, next_cursor })
    }

    /// The watcher lock as Redis sees it now.
    pub fn watcher_info(&self) -> Result<WatcherInfo, Error> {
        let [holder, pttl, epoch, tip] = codec::tuple(
            self.exec(self.inner.scripts.watcher_info())?,
            "watcher_info",
        )?;
        self.decode_watcher(&holder, &pttl, &epoch, &tip)
    }

    fn decode_watcher(
        &self,
        holder: &Value,
        pttl: &Value,
        epoch: &Value,
        tip: &Value,
    ) -> Result<WatcherInfo, Error> {
        let holder = codec::opt_text(holder, "holder")?;
        let pttl = codec::int(pttl, "pttl")?;
        let epoch = match codec::opt_text(epoch, "epoch")? {
            None => 0,
            Some(e) => e.parse().map_err(|_| Error::Corrupt {
                key: self.inner.keys.epoch.clone(),
                detail: format!("not a counter: {e:?}"),
            })?,
        };
        // The tip's entry starts with its slot in 20 digits (see `codec::chain_member`).
        let applied_slot =
            match codec::opt_text(tip, "tip")? {
                None => None,
                Some(t) => Some(t.get(..20).and_then(|s| s.parse().ok()).ok_or_else(|| {
                    Error::Corrupt {
                        key: self.inner.keys.chain.clone(),
                        detail: format!("not a chain entry: {t:?}"),
                    }
                })?),
            };
        Ok(WatcherInfo {
            is_self: holder.as_deref() == Some(self.inner.node_id.as_str()),
            ttl: (holder.is_some() && pttl >= 0).then(|| Duration::from_millis(pttl as u64)),
            holder,
            epoch,
            applied_slot,
        })
    }

    /// Counts per stage, the watcher, this node's lease figures and the server's memory settings
    /// (eviction policy, `maxmemory`, `used_memory`), in one round trip.
    pub fn stats(&self) -> Result<MempoolStats, Error> {
        let [counts, log_len, holder, pttl, epoch, tip, height, info] =
            codec::tuple(self.exec(self.inner.scripts.stats())?, "stats")?;
        let counts = codec::array(counts, "stage counts")?;
        let count = |i: usize| -> Result<u64, Error> {
            match counts.get(i) {
                Some(v) => Ok(codec::int(v, "stage count")?.max(0) as u64),
                None => Err(Error::UnexpectedReply(
                    format!("stage counts: {counts:?}").into(),
                )),
            }
        };
        let lease = &self.inner.lease_shared.counters;
        // [pending, inflight, Acknowledged, Confirmed]; the rest of inflight is Propagated.
        let (inflight, acknowledged, confirmed) = (count(1)?, count(2)?, count(3)?);
        let memory = memory::MemoryFacts::parse(&codec::text(&info, "info memory")?);
        Ok(MempoolStats {
            pending: count(0)?,
            propagated: inflight.saturating_sub(acknowledged + confirmed),
            acknowledged,
            confirmed,
            finalized_log: codec::uint(&log_len, "log length")?,
            applied_blocks: codec::uint(&height, "height")?,
            watcher: self.decode_watcher(&holder, &pttl, &epoch, &tip)?,
            is_watcher: self.is_watcher(),
            renewals: lease.renewals.load(Ordering::Relaxed),
            failed_renewals: lease.failed_renewals.load(Ordering::Relaxed),
            times_acquired: lease.acquired.load(Ordering::Relaxed),
            times_lost: lease.lost.load(Ordering::Relaxed),
            maxmemory_policy: memory.policy,
            maxmemory: memory.maxmemory,
            used_memory: memory.used_memory,
        })
    }

    /// Every change to the shared mempool — made by any node sharing the prefix — in commit
    /// order: transitions of transactions and changes of watcher. See [`MempoolEvent`].
    ///
    /// The first call starts one reader thread per mempool (shared by all subscribers and
    /// clones) and returns once it knows where the stream stands, so every event committed after
    /// this returns is delivered. A subscriber never slows anything down: if it does not keep up
    /// (16 384 undelivered events) it misses events and receives [`MempoolEvent::Lagged`] with
    /// their number; dropping the receiver unsubscribes. After a lost link to Redis the reader
    /// resumes where it stopped, without a gap as long as the stream's retained history
    /// ([`Config::event_history`]) covers it, and with a `Lagged` otherwise.
    pub fn subscribe(&self) -> crossbeam_channel::Receiver<MempoolEvent> {
        let inner = &self.inner;
        inner.events.subscribe(|| ReaderSetup {
            target: inner.target.clone(),
            stream: inner.keys.events.clone(),
            counter: inner.keys.events_seq.clone(),
            node_id: inner.node_id.clone(),
            connect_timeout: inner.config.connect_timeout,
            io_timeout: inner.config.command_timeout,
        })
    }

    /// Stops the lease thread for this mempool and all its clones: a watcher deletes its lock
    /// (only if it is still its own) and wakes the other nodes so one takes over at once.
    /// Mempool calls on remaining clones keep working; they just never become watcher again.
    ///
    /// Reports an error if the lock could not be released (it then expires after its TTL) or the
    /// lease thread panicked.
    pub fn shutdown(self) -> Result<(), Error> {
        let lease = self.inner.lease.lock().take();
        match lease {
            Some(lease) => lease.stop(true),
            None => Ok(()),
        }
    }

    /// Stops the lease thread the way a crash would: the lock is **not** released and other
    /// nodes take over only once it expires. Meant for tests and for hosts that must exit
    /// without touching Redis.
    pub fn abandon(self) {
        let lease = self.inner.lease.lock().take();
        if let Some(lease) = lease {
            let _ = lease.stop(false);
        }
        self.inner.lease_shared.flag.store(false, Ordering::SeqCst);
    }

    /// The operator's reset of the watcher lock (what `redis-cli DEL <prefix>:watcher:lock` does,
    /// made safe): deletes the lock only if `expected_holder` holds it (any holder with `None`),
    /// wakes the followers so one takes over at once, and records a `WatcherReleased` event. The
    /// old holder notices at its next renewal and steps down; Redis already rejects its
    /// `confirm` calls. Returns the node id that was removed, `None` if nothing was deleted.
    pub fn reset_watcher_lock(
        &self,
        expected_holder: Option<&str>,
    ) -> Result<Option<String>, Error> {
        let expected = expected_holder.unwrap_or("");
        let reply = self.exec(self.inner.scripts.reset_lock(expected))?;
        codec::opt_text(&reply, "reset_lock")
    }

    /// Benchmark hook (feature `test-hooks`): a plain `SET key value` through the same pool and
    /// connection settings as every mempool call — the physical limit a call is compared with.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn baseline_set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.conn()?
            .run::<()>(redis::cmd("SET").arg(key).arg(value))
            .map_err(Error::from_redis)
    }

    /// Test hook (feature `test-hooks`): blocks the lease thread for `duration`, as if it were
    /// descheduled, while its flag stays as it was. Used to prove that a stale watcher cannot
    /// write.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_freeze_lease(&self, duration: Duration) {
        if let Some(lease) = self.inner.lease.lock().as_ref() {
            lease.freeze(duration);
        }
    }
}

/// `INFO` (its default sections, which hold `server` and `memory` on every version), once at
/// `open`. A user the ACL refuses it to gets an [`Error::Auth`] that says what to add.
fn server_info(conn: &mut connect::RedisConn) -> Result<String, Error> {
    conn.run(&redis::cmd("INFO"))
        .map_err(|e| match Error::from_redis(e) {
            Error::Auth(m) => Error::Auth(m.prefixed(
                "open reads the server's version and memory settings with INFO, which the redis \
                 user may not run; add +info to its ACL rule (see the README)",
            )),
            other => other,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mempool_can_be_shared_between_threads() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<RedisMempool>();
    }
}
