//! The watcher's calls on the applied chain: apply or undo a block (`confirm`), roll back to a
//! point (`rollback_to`), and read the chain back (`applied_points`), which any node may.

use std::sync::atomic::Ordering;

use log::debug;
use redis::Value;

use super::{clamp, RedisMempool};
use crate::codec;
use crate::keys::Key;
use crate::metrics;
use crate::types::{ChainPoint, ConfirmOutcome, TxHash};
use crate::{Error, LOG_TARGET};

impl RedisMempool {
    /// Applies one block to the inflight transactions, or undoes one when `unseen` is not
    /// empty. Only the watcher changes anything, and Redis keeps the **applied chain** (the
    /// newest [`applied_history`](crate::Config::applied_history) applied blocks) to apply each block
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
    /// Within one call, txs come in this order (in the events, and in the finalized log): the
    /// Confirmed and Finalized txs by the block that first confirmed them, oldest first, and
    /// each block's in the order its `seen` listed them; the Dropped ones in the order they were
    /// propagated; the txs an undo returns to pending in `unseen`'s order, then by block as
    /// above.
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
                metrics::blocks(false, n(6)?);
            } else {
                debug!(
                    target: LOG_TARGET,
                    "applied block {point:?} (height {}): {} confirmed, {} finalized, {} dropped",
                    n(1)?, n(2)?, n(4)?, n(5)?
                );
                metrics::blocks(true, 1);
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
            metrics::blocks(false, n(3)?);
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
    /// [`applied_history`](crate::Config::applied_history)). Empty before the first block, or once
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
        let stop = clamp(limit) - 1;
        let cmd = redis::cmd("ZRANGE")
            .arg(&self.inner.keys.chain)
            .arg(0)
            .arg(stop)
            .arg("REV")
            .to_owned();
        let reply = self.plain(&cmd, &[Key::Chain])?;
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
}
