//! [`RedisMempool`]: the public API. Each call borrows a pooled connection and runs one script
//! (see `src/scripts/`) against the keys of `src/keys.rs`; these files only turn arguments into
//! a typed script call and replies into types. This one opens and stops a mempool and holds
//! what every call shares; the calls themselves are in `txs.rs` (transactions, any node),
//! `chain.rs` (the applied chain, the watcher) and `watcher.rs` (the lock and the figures).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use log::debug;
use parking_lot::Mutex;
use redis::Value;

use crate::codec;
use crate::connect::{self, ConnRole, Pool};
use crate::events::{EventHub, MempoolEvent, ReaderSetup};
use crate::keys::{Key, Keys, LAYOUT};
use crate::lease::{Lease, LeaseShared};
use crate::memory;
use crate::scripts::{self, Call, Scripts};
use crate::{Config, Error, LOG_TARGET};

mod chain;
mod txs;
mod watcher;

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
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// use std::time::Duration;
    ///
    /// let config = Config::new("redis://127.0.0.1:6379")
    ///     .key_prefix("preprod:mempool")
    ///     .watcher_lock_ttl(Duration::from_secs(10));
    /// let mempool = RedisMempool::open(config)?;
    /// println!("node {} (watcher: {})", mempool.node_id(), mempool.is_watcher());
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(config: Config) -> Result<RedisMempool, Error> {
        config.validate()?;
        crate::metrics::describe();
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
            check_layout(&mut conn, &keys, &config.key_prefix)?;
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
            // A candidate that checks liveness subscribes to its own channel and counts others'.
            let live = if config.watcher_candidate && !config.liveness_check.is_zero() {
                keys.live_channel(&node_id)
            } else {
                String::new()
            };
            let missing = codec::array(
                scripts::run(
                    &mut conn,
                    &scripts.check_access(&live),
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
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let info = mempool.watcher_info()?;
    /// assert_eq!(info.is_self, info.holder.as_deref() == Some(mempool.node_id()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The configuration this mempool was opened with.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// println!("sharing the mempool under {}", mempool.config().get_key_prefix());
    /// # Ok(())
    /// # }
    /// ```
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether this node currently holds the watcher lock (one atomic load; see the lease
    /// invariant in the README).
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// if mempool.is_watcher() {
    ///     println!("this node applies the blocks");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_watcher(&self) -> bool {
        self.inner.lease_shared.flag.load(Ordering::SeqCst)
    }

    /// The epoch of this node's watcher lock while its flag is up, `None` otherwise (two atomic
    /// loads, no round trip). Every acquisition takes a new epoch, so a host that remembers the
    /// epoch it last reconciled under sees every new term, even one that began and ended
    /// between two of its polls of [`is_watcher`](RedisMempool::is_watcher). (The epoch also
    /// moves on, with the flag up, when the watcher takes back a lock deleted by hand;
    /// reconciling then is harmless.) The flag can also drop and rise again *within* a term —
    /// while its liveness connection reconnects, the lock stays ours — so a host that let a
    /// block go unapplied because this was `None` reconciles before the next one as well.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let mut reconciled_under: Option<u64> = None;
    /// // ... before applying a block:
    /// match mempool.watcher_epoch() {
    ///     Some(epoch) if reconciled_under != Some(epoch) => {
    ///         // a new term, or back after a gap: run the reconcile step (README), then
    ///         reconciled_under = Some(epoch);
    ///     }
    ///     Some(_) => { /* apply the block */ }
    ///     // Not applied here: whoever applies it next reconciles first.
    ///     None => reconciled_under = None,
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn watcher_epoch(&self) -> Option<u64> {
        let shared = &self.inner.lease_shared;
        // The lease thread stores the epoch before it raises the flag.
        shared
            .flag
            .load(Ordering::SeqCst)
            .then(|| shared.epoch.load(Ordering::SeqCst))
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

    /// Makes one plain read command on a pooled connection (`read`: the keys it reads).
    fn plain(&self, cmd: &redis::Cmd, read: &[Key]) -> Result<Value, Error> {
        let mut conn = self.conn()?;
        scripts::plain(&mut conn, cmd, &self.inner.keys, read)
    }

    /// Sends plain read commands as one pipeline (a `MULTI` when `pipe` is atomic) on a pooled
    /// connection, returning their replies (`read`: the keys they read).
    fn plain_pipeline(&self, pipe: &redis::Pipeline, read: &[Key]) -> Result<Vec<Value>, Error> {
        let mut conn = self.conn()?;
        scripts::plain_pipeline(&mut conn, pipe, &self.inner.keys, read)
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
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, MempoolEvent, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let events = mempool.subscribe();
    /// std::thread::spawn(move || {
    ///     for event in events {
    ///         if let MempoolEvent::Lagged { missed } = event {
    ///             eprintln!("missed {missed} events");
    ///         }
    ///     }
    /// });
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&self) -> crossbeam_channel::Receiver<MempoolEvent> {
        let inner = &self.inner;
        inner.events.subscribe(|| ReaderSetup {
            target: inner.target.clone(),
            keys: inner.keys.clone(),
            scripts: inner.scripts.clone(),
            event_history: inner.config.event_history,
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
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// // ... on the host's way out:
    /// mempool.shutdown()?; // a watcher hands the lock over at once
    /// # Ok(())
    /// # }
    /// ```
    pub fn shutdown(self) -> Result<(), Error> {
        let lease = self.inner.lease.lock().take();
        match lease {
            Some(lease) => lease.stop(true),
            None => Ok(()),
        }
    }

    /// Stops the lease thread the way a crash would: the lock is **not** released. The wake
    /// thread closes its connection (within about 100 ms), as the kernel would for a dead
    /// process, so followers that check liveness ([`Config::liveness_check`]) take over within a
    /// few check intervals; others wait until the lock expires. Meant for tests and for hosts
    /// that must exit without touching Redis.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// // Exit without a word to Redis, as a crash would: another node takes over as soon as it
    /// // sees this node's liveness connection gone (or once the lock expires).
    /// mempool.abandon();
    /// # Ok(())
    /// # }
    /// ```
    pub fn abandon(self) {
        let lease = self.inner.lease.lock().take();
        if let Some(lease) = lease {
            let _ = lease.stop(false);
        }
        self.inner.lease_shared.flag.store(false, Ordering::SeqCst);
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

/// Checks that the keys under the prefix are of this version's layout ([`LAYOUT`], `layout` in
/// `P:meta`); a prefix without any of them gets it. A prefix written by another version (or by
/// the first layout, which had no version and whose own keys tell it) is refused: this version
/// would misread it.
fn check_layout(conn: &mut connect::RedisConn, keys: &Keys, prefix: &str) -> Result<(), Error> {
    let refuse = |found: String| Error::IncompatibleLayout {
        prefix: prefix.to_string(),
        found,
    };
    for _ in 0..2 {
        let (found, first): (Option<String>, u64) = conn
            .run_pipeline(
                redis::pipe()
                    .cmd("HGET")
                    .arg(&keys.meta)
                    .arg("layout")
                    .cmd("EXISTS")
                    .arg(&keys.first_layout[..]),
            )
            .map_err(|e| match Error::from_redis(e) {
                Error::Server(m) if m.contains("WRONGTYPE") => Error::WrongType {
                    key: keys.meta.clone(),
                },
                other => other,
            })?;
        match found {
            Some(v) if v == LAYOUT.to_string() => return Ok(()),
            Some(v) => return Err(refuse(format!("layout {v}"))),
            None if first > 0 => {
                return Err(refuse(
                    "layout 1 (that of dolos-redis before layouts had numbers)".into(),
                ))
            }
            None => {
                // A new prefix (or one emptied by hand): it takes this layout, unless another
                // node gave it one meanwhile, which the next round reads. A server that takes no
                // write now (a replica, a full Redis) leaves that to the next node that opens:
                // without the first layout's keys, a prefix without a version is this layout's.
                let set = redis::cmd("HSETNX")
                    .arg(&keys.meta)
                    .arg("layout")
                    .arg(LAYOUT)
                    .to_owned();
                match conn.run::<i64>(&set) {
                    Ok(0) => {}
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        debug!(target: LOG_TARGET, "layout version not written now: {e}");
                        return Ok(());
                    }
                }
            }
        }
    }
    Err(refuse("a layout that changed while it was read".into()))
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
