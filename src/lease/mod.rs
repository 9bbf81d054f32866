//! The watcher lease. This file holds the state machine and the commands it sends, which the
//! invariant below is checked against; its arithmetic is in `timing.rs` (pure, unit-tested with
//! instants passed in) and the thread that listens on the wake channel in `waker.rs`.
//!
//! One named thread per [`RedisMempool`](crate::RedisMempool) (shared by its clones) holds its
//! own Redis connection and runs a small state machine:
//!
//! * **Follower**: try `acquire.lua` (`SET lock <node-id> PX ttl` if free, `INCR epoch`). When
//!   another node holds the lock, read its `PTTL` and try again right after it can expire (at the
//!   latest every `ttl/3`), or at once when the holder announces a graceful release on the wake
//!   channel.
//! * **Watcher**: renew every `ttl/3` with `renew.lua` (compare-and-extend on node id and epoch).
//!
//! Invariant: *the flag is up only while the lock is certainly ours on the server.* The server
//! sets the lock's expiry when it runs our command, which is after we sent it; so a lock acquired
//! or renewed by a command sent at instant `sent` cannot expire before `sent + ttl`. The flag stays
//! up until `sent + ttl - margin` of the last successful command (the *local deadline*, on the
//! monotonic clock) and drops there if no renewal succeeded. Every lease command's read timeout is
//! cut to the time left before that deadline, so a hung link cannot hold the thread past it.
//!
//! The flag is only an optimisation for callers: `confirm.lua` checks on the server that the lock
//! still holds this node's id and epoch, so a paused or partitioned ex-watcher cannot write even
//! if its flag is stale.
//!
//! Between lease steps, every [`policy_check_every`] and only when the next step is at least a
//! command timeout away, the thread also reads Redis's eviction policy again (`INFO memory`) and
//! warns once when it changed since `open` (see `src/memory.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, Receiver, Sender};
use log::{debug, info, warn};

use crate::codec;
use crate::connect::{ConnRole, RedisConn, Target};
use crate::keys::Keys;
use crate::memory::{self, MemoryFacts};
use crate::scripts::{self, Scripts};
use crate::{Config, Error, LOG_TARGET};

mod timing;
mod waker;

use timing::{policy_check_every, LeaseTiming};
use waker::{Wake, Waker};

/// Figures a host exports as metrics.
#[derive(Debug, Default)]
pub(crate) struct LeaseCounters {
    pub renewals: AtomicU64,
    pub failed_renewals: AtomicU64,
    pub acquired: AtomicU64,
    pub lost: AtomicU64,
}

/// What the lease thread publishes; read without locks by any thread.
#[derive(Debug, Default)]
pub(crate) struct LeaseShared {
    /// Up while this node is the watcher (see the module invariant).
    pub flag: AtomicBool,
    /// The epoch of the current (or last) acquisition; meaningful while `flag` is up.
    pub epoch: AtomicU64,
    pub counters: LeaseCounters,
}

enum Command {
    /// Test hook: block the thread as if it were descheduled.
    #[cfg(feature = "test-hooks")]
    Freeze(Duration),
    /// Stop without releasing the lock, as a crash would.
    Abandon,
}

/// Owns the lease thread (and the follower wake-up thread) of one mempool.
pub(crate) struct Lease {
    commands: Option<Sender<Command>>,
    thread: Option<JoinHandle<Result<(), Error>>>,
    /// Dropping the sender stops the wake thread.
    waker: Option<Sender<()>>,
}

impl Lease {
    /// Starts the threads; `first_attempt` receives a message once the first acquisition attempt
    /// has finished, so `open` can return with the lease settled. `policy` is Redis's eviction
    /// policy as `open` read it, which the thread compares later readings with.
    // Each argument is a separate part of what `open` built; a struct for one call site would
    // only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: &Config,
        target: Target,
        keys: Keys,
        scripts: Arc<Scripts>,
        node_id: String,
        shared: Arc<LeaseShared>,
        first_attempt: Sender<()>,
        policy: String,
    ) -> Result<Lease, Error> {
        let (commands_tx, commands_rx) = crossbeam_channel::unbounded();
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(16);
        let (waker_stop_tx, waker_stop_rx) = crossbeam_channel::bounded::<()>(0);
        let short = short_id(&node_id).to_string();
        let (subscribed_tx, subscribed_rx) = crossbeam_channel::bounded(1);

        let waker = Waker {
            target: target.clone(),
            channel: keys.wake_channel.clone(),
            connect_timeout: config.lease_io_timeout(),
            retry: LeaseTiming::new(config.watcher_lock_ttl).renew_every,
            name: ConnRole::Wake.name(&node_id),
            stop: waker_stop_rx,
            wake: wake_tx,
            subscribed: Some(subscribed_tx),
        };
        std::thread::Builder::new()
            .name(format!("dolos-redis-wake-{short}"))
            .spawn(move || waker.run())
            .map_err(|e| {
                Error::Unavailable(format!("cannot spawn the wake thread: {e}").into())
                    .with_source(e)
            })?;
        // A node must hear releases from the moment it competes, or a release right after
        // `open` would leave it waiting for its next poll. Bounded: without Redis, the lease
        // starts anyway and keeps retrying.
        let _ = subscribed_rx.recv_timeout(config.lease_io_timeout());

        let lease_loop = LeaseLoop {
            timing: LeaseTiming::new(config.watcher_lock_ttl),
            io_timeout: config.lease_io_timeout(),
            event_history: config.event_history,
            wait_replicas: config.wait_replicas,
            target,
            keys,
            scripts,
            name: ConnRole::Lease.name(&node_id),
            node_id,
            shared,
            conn: None,
            role: Role::Follower {
                next_try: Instant::now(),
            },
            link_up: None,
            last_holder: None,
            first_attempt: Some(first_attempt),
            policy,
            policy_every: policy_check_every(config.watcher_lock_ttl),
            next_policy_check: Instant::now() + policy_check_every(config.watcher_lock_ttl),
        };
        let thread = std::thread::Builder::new()
            .name(format!("dolos-redis-lease-{short}"))
            .spawn(move || lease_loop.run(commands_rx, wake_rx))
            .map_err(|e| {
                Error::Unavailable(format!("cannot spawn the lease thread: {e}").into())
                    .with_source(e)
            })?;

        Ok(Lease {
            commands: Some(commands_tx),
            thread: Some(thread),
            waker: Some(waker_stop_tx),
        })
    }

    /// Stops the threads. With `release`, a watcher deletes its lock (if still its own) and wakes
    /// the followers; without, the lock is left to expire, as after a crash.
    pub fn stop(mut self, release: bool) -> Result<(), Error> {
        self.stop_inner(release)
    }

    /// Test hook: see [`RedisMempool::test_freeze_lease`](crate::RedisMempool::test_freeze_lease).
    #[cfg(feature = "test-hooks")]
    pub fn freeze(&self, duration: Duration) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(Command::Freeze(duration));
        }
    }

    fn stop_inner(&mut self, release: bool) -> Result<(), Error> {
        if let Some(tx) = self.commands.take() {
            if !release {
                let _ = tx.send(Command::Abandon);
            }
            // Dropping the sender is the shutdown signal.
            drop(tx);
        }
        // The wake thread notices the stop within one poll of its subscriber read; it holds no
        // state worth waiting for, so it is not joined (that would add up to WAKER_POLL to
        // every shutdown).
        self.waker = None;
        match self.thread.take() {
            Some(thread) => match thread.join() {
                Ok(result) => result,
                Err(_) => Err(Error::LeaseThreadPanicked),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner(true) {
            warn!(target: LOG_TARGET, "watcher lock not released on drop: {e}");
        }
    }
}

fn short_id(node_id: &str) -> &str {
    node_id.get(..8).unwrap_or(node_id)
}

enum Role {
    Follower {
        next_try: Instant,
    },
    Watcher {
        epoch: u64,
        valid_until: Instant,
        next_renew: Instant,
    },
}

struct LeaseLoop {
    timing: LeaseTiming,
    io_timeout: Duration,
    event_history: usize,
    /// [`Config::wait_replicas`]: an acquisition or renewal that too few replicas confirmed
    /// fails like one that did not reach Redis, so the flag never rests on a lock a failover
    /// could lose.
    wait_replicas: crate::scripts::Wait,
    target: Target,
    keys: Keys,
    scripts: Arc<Scripts>,
    node_id: String,
    name: String,
    shared: Arc<LeaseShared>,
    conn: Option<RedisConn>,
    role: Role,
    /// Whether the last lease command reached Redis (None before the first): we log changes of
    /// this, not every failed tick.
    link_up: Option<bool>,
    last_holder: Option<String>,
    first_attempt: Option<Sender<()>>,
    /// The eviction policy last seen (at `open`, then by [`LeaseLoop::check_policy`]).
    policy: String,
    policy_every: Duration,
    next_policy_check: Instant,
}

impl LeaseLoop {
    /// When the next lease step is due.
    fn due(&self) -> Instant {
        match self.role {
            Role::Follower { next_try } => next_try,
            Role::Watcher {
                valid_until,
                next_renew,
                ..
            } => next_renew.min(valid_until),
        }
    }

    fn run(mut self, commands: Receiver<Command>, mut wake: Receiver<Wake>) -> Result<(), Error> {
        loop {
            let timeout = self.due().saturating_duration_since(Instant::now());
            select! {
                recv(commands) -> cmd => match cmd {
                    #[cfg(feature = "test-hooks")]
                    Ok(Command::Freeze(d)) => std::thread::sleep(d),
                    Ok(Command::Abandon) => return Ok(()),
                    Err(_) => break,
                },
                recv(wake) -> msg => match msg {
                    // Another node acquired the lock: if we think we hold it, check now.
                    Ok(Wake::Acquired(by)) if by != self.node_id => {
                        if let Role::Watcher { next_renew, .. } = &mut self.role {
                            *next_renew = Instant::now();
                        }
                    }
                    Ok(Wake::Acquired(_)) => {}
                    // The lock was released: followers try at once.
                    Ok(Wake::Released) => {
                        if let Role::Follower { next_try } = &mut self.role {
                            *next_try = Instant::now();
                        }
                    }
                    // The wake thread is gone; followers still poll on the PTTL schedule.
                    Err(_) => wake = never(),
                },
                default(timeout) => {}
            }
            self.step(Instant::now());
            self.check_policy(Instant::now());
        }
        self.release()
    }

    /// Reads Redis's eviction policy again when it is due, and warns once if it changed. It
    /// runs only on a lease connection that is open, and only when the next lease step is at
    /// least a command timeout away, with that as its read timeout: it ends before the next
    /// renewal is due, let alone its deadline. A failure is left to the next lease step, which
    /// reconnects if it must.
    fn check_policy(&mut self, now: Instant) {
        if now < self.next_policy_check
            || self.due().saturating_duration_since(now) < self.io_timeout
        {
            return;
        }
        let Some(conn) = self.conn.as_mut().filter(|c| !c.is_broken()) else {
            return;
        };
        self.next_policy_check = now + self.policy_every;
        let info = conn
            .set_read_timeout(self.io_timeout)
            .and_then(|()| conn.run::<String>(redis::cmd("INFO").arg("memory")));
        let policy = match info {
            Ok(info) => MemoryFacts::parse(&info).policy,
            Err(e) => {
                debug!(target: LOG_TARGET, "could not read the eviction policy again: {e}");
                return;
            }
        };
        if policy == self.policy {
            return;
        }
        match memory::eviction_risk(&policy) {
            Some(risk) => warn!(
                target: LOG_TARGET,
                "redis maxmemory-policy changed from {} to {policy} at run time: {risk}. To fix: {}",
                self.policy,
                memory::FIX
            ),
            None => info!(
                target: LOG_TARGET,
                "redis maxmemory-policy changed from {} to {policy} at run time: the mempool's \
                 keys are not evicted any more",
                self.policy
            ),
        }
        self.policy = policy;
    }

    /// Does whatever is due at `now`.
    fn step(&mut self, now: Instant) {
        match self.role {
            Role::Watcher {
                valid_until,
                next_renew,
                epoch,
            } => {
                if now >= valid_until {
                    self.step_down("no renewal succeeded before the local lease deadline");
                    self.role = Role::Follower { next_try: now };
                } else if now >= next_renew {
                    self.renew(epoch, valid_until);
                }
            }
            Role::Follower { next_try } => {
                if now >= next_try {
                    self.try_acquire();
                }
            }
        }
    }

    fn try_acquire(&mut self) {
        let sent = Instant::now();
        let reply = self.call(self.io_timeout, Which::Acquire);
        let now = Instant::now();
        match reply.and_then(parse_acquire) {
            Ok(Acquire::Won(epoch)) => {
                self.shared.epoch.store(epoch, Ordering::SeqCst);
                self.shared.flag.store(true, Ordering::SeqCst);
                self.shared
                    .counters
                    .acquired
                    .fetch_add(1, Ordering::Relaxed);
                self.last_holder = Some(self.node_id.clone());
                self.role = Role::Watcher {
                    epoch,
                    valid_until: self.timing.valid_until(sent),
                    next_renew: self.timing.next_renewal(sent),
                };
                info!(target: LOG_TARGET, "acquired watcher lock (node {}, epoch {epoch})", self.node_id);
            }
            Ok(Acquire::Held { pttl_ms, holder }) => {
                if self.last_holder.as_deref() != Some(holder.as_str()) {
                    debug!(target: LOG_TARGET, "watcher lock held by {holder}; following");
                    self.last_holder = Some(holder);
                }
                self.role = Role::Follower {
                    next_try: now + self.timing.follower_wait(pttl_ms),
                };
            }
            // The lock is ours on the primary, but a failover could lose it: not acting on it.
            // Each attempt takes it under a new epoch (and records a `WatcherAcquired` event),
            // so while replicas are missing try at the follower's pace, not the retry's.
            Err(Error::NotReplicated { .. }) => {
                self.role = Role::Follower {
                    next_try: now + self.timing.renew_every,
                };
            }
            Err(_) => {
                self.role = Role::Follower {
                    next_try: now + self.timing.retry,
                };
            }
        }
        if let Some(tx) = self.first_attempt.take() {
            let _ = tx.send(());
        }
    }

    fn renew(&mut self, epoch: u64, valid_until: Instant) {
        let sent = Instant::now();
        let left = valid_until.saturating_duration_since(sent);
        let reply = self.call(self.io_timeout.min(left), Which::Renew { epoch });
        let now = Instant::now();
        match reply.and_then(parse_renew) {
            Ok(renewed @ (Renew::Renewed | Renew::TakenBack(_))) => {
                let epoch = match renewed {
                    Renew::TakenBack(new_epoch) => {
                        // The flag stays up: nobody else could hold the lock meanwhile (the
                        // fence). Only the epoch moves on, which rejects our own calls sent
                        // under the old one.
                        self.shared.epoch.store(new_epoch, Ordering::SeqCst);
                        info!(target: LOG_TARGET, "watcher lock was deleted by hand; took it back (epoch {new_epoch})");
                        new_epoch
                    }
                    _ => {
                        debug!(target: LOG_TARGET, "watcher lock renewed");
                        epoch
                    }
                };
                self.shared
                    .counters
                    .renewals
                    .fetch_add(1, Ordering::Relaxed);
                self.role = Role::Watcher {
                    epoch,
                    valid_until: self.timing.valid_until(sent),
                    next_renew: self.timing.next_renewal(sent),
                };
            }
            Ok(Renew::Lost(holder)) => {
                let why = if holder.is_empty() {
                    "the lock key is gone".to_string()
                } else {
                    format!("the lock is held by {holder}")
                };
                self.step_down(&why);
                // A deleted key usually means an operator reset aimed at this node: leave the
                // followers (woken by the reset) a moment to take it before trying again.
                self.role = Role::Follower {
                    next_try: now + self.timing.retry,
                };
            }
            Err(_) => {
                self.shared
                    .counters
                    .failed_renewals
                    .fetch_add(1, Ordering::Relaxed);
                self.role = Role::Watcher {
                    epoch,
                    valid_until,
                    next_renew: self.timing.renewal_retry(now, valid_until),
                };
            }
        }
    }

    fn step_down(&mut self, why: &str) {
        self.shared.flag.store(false, Ordering::SeqCst);
        self.shared.counters.lost.fetch_add(1, Ordering::Relaxed);
        warn!(target: LOG_TARGET, "lost watcher lock: {why}");
    }

    /// On shutdown: lower the flag, then delete the lock if it is still ours and wake the others.
    fn release(&mut self) -> Result<(), Error> {
        let Role::Watcher { epoch, .. } = self.role else {
            return Ok(());
        };
        self.shared.flag.store(false, Ordering::SeqCst);
        self.role = Role::Follower {
            next_try: Instant::now(),
        };
        let reply = self.call(self.io_timeout, Which::Release { epoch })?;
        if codec::int(&reply, "release")? == 1 {
            info!(target: LOG_TARGET, "released watcher lock");
        }
        Ok(())
    }

    /// Runs one lease script, (re)connecting as needed; logs a change of link state once.
    fn call(&mut self, timeout: Duration, which: Which) -> Result<redis::Value, Error> {
        let result = self.call_inner(timeout, which);
        match &result {
            Ok(_) if self.link_up != Some(true) => {
                if self.link_up.is_some() {
                    info!(target: LOG_TARGET, "lease link to redis is back");
                }
                self.link_up = Some(true);
            }
            Err(e @ Error::NotReplicated { .. }) if self.link_up != Some(false) => {
                warn!(target: LOG_TARGET, "lease writes do not reach enough replicas, will keep retrying: {e}");
                self.link_up = Some(false);
            }
            Err(e) if self.link_up != Some(false) => {
                warn!(target: LOG_TARGET, "lease cannot reach redis, will keep retrying: {e}");
                self.link_up = Some(false);
            }
            _ => {}
        }
        result
    }

    fn call_inner(&mut self, timeout: Duration, which: Which) -> Result<redis::Value, Error> {
        let deadline = Instant::now() + timeout;
        let no_time = || Error::Timeout("no time left before the lease deadline".into());
        if timeout.is_zero() {
            return Err(no_time());
        }
        if self.conn.as_ref().is_some_and(|c| c.is_broken()) {
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                // Connecting counts against the same budget: the deadline does not wait.
                let conn = RedisConn::open(&self.target, timeout, self.io_timeout, &self.name)
                    .map_err(Error::from_redis)?;
                self.conn.insert(conn)
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(no_time());
        }
        conn.set_read_timeout(left).map_err(Error::from_redis)?;
        let (scripts, node_id, ttl) = (&self.scripts, self.node_id.as_str(), self.timing.ttl);
        let call = match which {
            Which::Acquire => scripts.acquire(node_id, ttl),
            Which::Renew { epoch } => scripts.renew(node_id, epoch, ttl),
            Which::Release { epoch } => scripts.release(node_id, epoch),
        };
        // WAIT gets half of what is left, so the script and the reply fit in the other half.
        let wait = self
            .wait_replicas
            .map(|(replicas, timeout)| (replicas, timeout.min(left / 2)));
        scripts::run(conn, &call, &self.keys, self.event_history, wait)
    }
}

/// Which lease script to run, with what only the caller knows (the node id and TTL are the
/// loop's own).
#[derive(Clone, Copy)]
enum Which {
    Acquire,
    Renew { epoch: u64 },
    Release { epoch: u64 },
}

enum Acquire {
    Won(u64),
    Held { pttl_ms: i64, holder: String },
}

fn parse_acquire(v: redis::Value) -> Result<Acquire, Error> {
    let items = codec::array(v, "acquire")?;
    match items.as_slice() {
        [won, epoch] if codec::int(won, "acquire")? == 1 => {
            Ok(Acquire::Won(codec::uint(epoch, "epoch")?))
        }
        [_, pttl, holder] => Ok(Acquire::Held {
            pttl_ms: codec::int(pttl, "pttl")?,
            holder: codec::text(holder, "holder")?,
        }),
        _ => Err(Error::UnexpectedReply(format!("acquire: {items:?}").into())),
    }
}

enum Renew {
    Renewed,
    /// The lock had been deleted by hand; we took it back under this epoch.
    TakenBack(u64),
    /// Someone else holds it now (`""`: nobody).
    Lost(String),
}

fn parse_renew(v: redis::Value) -> Result<Renew, Error> {
    let items = codec::array(v, "renew")?;
    match items.as_slice() {
        [ok] if codec::int(ok, "renew")? == 1 => Ok(Renew::Renewed),
        [code, epoch] if codec::int(code, "renew")? == 2 => {
            Ok(Renew::TakenBack(codec::uint(epoch, "epoch")?))
        }
        [_, holder] => Ok(Renew::Lost(codec::text(holder, "holder")?)),
        _ => Err(Error::UnexpectedReply(format!("renew: {items:?}").into())),
    }
}
