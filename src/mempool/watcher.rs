//! What any node reads about the watcher and the whole mempool (`watcher_info`, `stats`), and the
//! operator's reset of the watcher lock.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;

use super::RedisMempool;
use crate::codec;
use crate::memory;
use crate::metrics;
use crate::types::{MempoolStats, WatcherInfo};
use crate::Error;

impl RedisMempool {
    /// The watcher lock as Redis sees it now.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let info = mempool.watcher_info()?;
    /// match (&info.holder, info.ttl) {
    ///     (Some(node), Some(ttl)) => println!("watcher {node}, lock for {ttl:?}, epoch {}", info.epoch),
    ///     _ => println!("no watcher right now"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// With the cargo feature `metrics`, every successful call also sets the crate's gauges
    /// (`dolos_redis_txs{stage}`, `dolos_redis_applied_height`, …; the README's Metrics section
    /// lists them) through the `metrics` facade: a host that exports metrics calls this on a
    /// timer. The counters (lease events, blocks applied and undone) move by themselves.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let stats = mempool.stats()?;
    /// println!(
    ///     "pending {} inflight {} log {} (redis: {} of {} bytes, {})",
    ///     stats.pending,
    ///     stats.propagated + stats.acknowledged + stats.confirmed,
    ///     stats.finalized_log,
    ///     stats.used_memory,
    ///     stats.maxmemory,
    ///     stats.maxmemory_policy,
    /// );
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> Result<MempoolStats, Error> {
        let [pending, inflight, meta, holder, pttl, epoch, tip, info] =
            codec::tuple(self.exec(self.inner.scripts.stats())?, "stats")?;
        let [height, acknowledged, confirmed, lseq, lfirst] = codec::tuple(meta, "stats meta")?;
        let meta_count = |v: &Value, field: &str| -> Result<u64, Error> {
            match codec::opt_text(v, field)? {
                None => Ok(0),
                Some(t) => t.parse().map_err(|_| Error::Corrupt {
                    key: format!("{} {field}", self.inner.keys.meta),
                    detail: format!("not a number: {t:?}"),
                }),
            }
        };
        let lease = &self.inner.lease_shared.counters;
        // The rest of inflight is Propagated.
        let inflight = codec::uint(&inflight, "inflight")?;
        let acknowledged = meta_count(&acknowledged, "ack")?;
        let confirmed = meta_count(&confirmed, "nconf")?;
        let memory = memory::MemoryFacts::parse(&codec::text(&info, "info memory")?);
        let stats = MempoolStats {
            pending: codec::uint(&pending, "pending")?,
            propagated: inflight.saturating_sub(acknowledged + confirmed),
            acknowledged,
            confirmed,
            // The log holds the lines `lfirst` (1 until it is first trimmed) to `lseq`.
            finalized_log: (meta_count(&lseq, "lseq")? + 1)
                .saturating_sub(meta_count(&lfirst, "lfirst")?.max(1)),
            applied_blocks: meta_count(&height, "H")?,
            watcher: self.decode_watcher(&holder, &pttl, &epoch, &tip)?,
            is_watcher: self.is_watcher(),
            renewals: lease.renewals.load(Ordering::Relaxed),
            failed_renewals: lease.failed_renewals.load(Ordering::Relaxed),
            times_acquired: lease.acquired.load(Ordering::Relaxed),
            times_lost: lease.lost.load(Ordering::Relaxed),
            maxmemory_policy: memory.policy,
            maxmemory: memory.maxmemory,
            used_memory: memory.used_memory,
        };
        metrics::stats(&stats);
        Ok(stats)
    }

    /// The operator's reset of the watcher lock (what `redis-cli DEL <prefix>:watcher:lock` does,
    /// made safe): deletes the lock only if `expected_holder` holds it (any holder with `None`),
    /// wakes the followers so one takes over at once, and records a `WatcherReleased` event. The
    /// old holder notices at its next renewal and steps down; Redis already rejects its
    /// `confirm` calls. Returns the node id that was removed, `None` if nothing was deleted.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let stuck = mempool.watcher_info()?.holder;
    /// if let Some(removed) = mempool.reset_watcher_lock(stuck.as_deref())? {
    ///     println!("removed the lock of {removed}; a follower takes over");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn reset_watcher_lock(
        &self,
        expected_holder: Option<&str>,
    ) -> Result<Option<String>, Error> {
        let expected = expected_holder.unwrap_or("");
        let reply = self.exec(self.inner.scripts.reset_lock(expected))?;
        codec::opt_text(&reply, "reset_lock")
    }
}
