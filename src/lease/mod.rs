//! The watcher lease. This file holds the state machine and the commands it sends, which the
//! invariant below is checked against; its arithmetic is in `timing.rs` (pure, unit-tested with
//! instants passed in), the thread that listens on the wake channel and keeps this node's
//! liveness subscription in `waker.rs`, and the liveness rules (the flag's gate, a follower's
//! verdict on the holder) in `liveness.rs`.
//!
//! One named thread per [`RedisMempool`](crate::RedisMempool) (shared by its clones) holds its
//! own Redis connection and runs a small state machine:
//!
//! * **Follower**: try `acquire.lua` (`SET lock <node-id> PX ttl` if free, `INCR epoch`). When
//!   another node holds the lock, read its `PTTL` and try again right after it can expire (at the
//!   latest every `ttl/3`), or at once when the holder announces a graceful release on the wake
//!   channel. With liveness checks on, look every [`Config::liveness_check`] (the same script
//!   also counts the holder's liveness subscribers), and once the holder was seen alive and then
//!   found gone one interval earlier, take the lock with `take_over.lua` (see `liveness.rs`).
//!   A node whose own liveness subscription is down does not compete.
//! * **Watcher**: renew every `ttl/3` with `renew.lua` (compare-and-extend on node id and epoch).
//!
//! Invariant: *the flag is up only while the lock is certainly ours on the server, and (with
//! liveness checks on) our liveness subscription stands.* The server sets the lock's expiry when
//! it runs our command, which is after we sent it; so a lock acquired or renewed by a command
//! sent at instant `sent` cannot expire before `sent + ttl`. The flag stays up until
//! `sent + ttl - margin` of the last successful command (the *local deadline*, on the monotonic
//! clock) and drops there if no renewal succeeded. Every lease command's read timeout is cut to
//! the time left before that deadline, so a hung link cannot hold the thread past it. The wake
//! thread drops the flag the moment the liveness connection breaks, and the flag comes back only
//! on a command sent after the new subscription was confirmed ([`liveness::Gate`]): followers
//! need two looks an interval apart before they take the lock from a holder whose subscription
//! vanished, so the flag is down before anyone can. A watcher that keeps renewing while its
//! subscription stays down for a renewal period releases the lock to a node the others can see.
//!
//! The flag is only an optimisation for callers: `confirm.lua` checks on the server that the lock
//! still holds this node's id and epoch, so a paused or partitioned ex-watcher cannot write even
//! if its flag is stale.
//!
//! Between lease steps, every [`policy_check_every`] and only when the next step is at least a
//! command timeout away, the thread also reads Redis's eviction policy again (`INFO memory`) and
//! warns once when it changed since `open` (see `src/memory.rs`).
//!
//! (Over 500 lines: the loop's steps, acquire, renew, take over, release and the flag's rule at
//! each, stay in one `impl` so that the invariant above is checked by reading one place; what
//! stands alone lives in the files named at the top.)

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
use crate::metrics::{self, LeaseEvent};
use crate::scripts::{self, Scripts};
use crate::{Config, Error, LOG_TARGET};

mod liveness;
mod timing;
mod waker;

use liveness::{Gate, HolderWatch, Token};
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
        let checks = !config.liveness_check.is_zero();
        let gate = Arc::new(Gate::new(checks, Instant::now()));

        let waker = Waker {
            target: target.clone(),
            wake_channel: keys.wake_channel.clone(),
            live_channel: checks.then(|| keys.live_channel(&node_id)),
            connect_timeout: config.lease_io_timeout(),
            ping_every: LeaseTiming::new(config.watcher_lock_ttl).renew_every,
            name: ConnRole::Wake.name(&node_id),
            stop: waker_stop_rx,
            wake: wake_tx,
            subscribed: Some(subscribed_tx),
            gate: gate.clone(),
            shared: shared.clone(),
        };
        std::thread::Builder::new()
            .name(format!("dolos-redis-wake-{short}"))
            .spawn(move || waker.run())
            .map_err(|e| {
                Error::Unavailable(format!("cannot spawn the wake thread: {e}").into())
                    .with_source(e)
            })?;
        // A node must hear releases from the moment it competes, or a release right after
        // `open` would leave it waiting for its next poll; and with liveness checks it competes
        // only once its liveness subscription stands. Bounded: without Redis, the lease starts
        // anyway and keeps retrying.
        let _ = subscribed_rx.recv_timeout(config.lease_io_timeout());

        let lease_loop = LeaseLoop {
            timing: LeaseTiming::new(config.watcher_lock_ttl),
            io_timeout: config.lease_io_timeout(),
            event_history: config.event_history,
            wait_replicas: config.wait_replicas,
            live: if checks {
                keys.live.clone()
            } else {
                String::new()
            },
            target,
            keys,
            scripts,
            name: ConnRole::Lease.name(&node_id),
            node_id,
            shared,
            conn: None,
            link: 0,
            gate,
            watch: HolderWatch::new(config.liveness_check),
            own_check: OwnCheck::default(),
            renewed_unseen: 0,
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
    /// the followers; without, the lock is left behind, as after a crash: the wake thread closes
    /// its connection within one poll of its read, so followers that check liveness take over
    /// at once, and the others once the lock expires.
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

/// Whether our own liveness subscription shows on the lock's server (see
/// [`LeaseLoop::check_own_liveness`]).
#[derive(Debug, Default)]
struct OwnCheck {
    /// Asked the wake thread to subscribe again, and no reply has shown the subscription since.
    asked: bool,
    /// Said once that it did not help.
    warned: bool,
}

struct LeaseLoop {
    timing: LeaseTiming,
    io_timeout: Duration,
    event_history: usize,
    /// [`Config::wait_replicas`]: an acquisition or renewal that too few replicas confirmed
    /// fails like one that did not reach Redis, so the flag never rests on a lock a failover
    /// could lose.
    wait_replicas: crate::scripts::Wait,
    /// The start of the liveness channels (`Keys::live`) passed to the scripts; empty when this
    /// node checks no liveness.
    live: String,
    target: Target,
    keys: Keys,
    scripts: Arc<Scripts>,
    node_id: String,
    name: String,
    shared: Arc<LeaseShared>,
    conn: Option<RedisConn>,
    /// How many lease connections were opened: a follower's looks count only on one of them.
    link: u64,
    /// Our liveness subscription, and the one way the flag is raised.
    gate: Arc<Gate>,
    /// What this node, following, has seen of the holder's liveness.
    watch: HolderWatch,
    own_check: OwnCheck,
    /// Successful renewals in a row made while our liveness subscription was down.
    renewed_unseen: u32,
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
                    // The lock was released: followers try at once. Our liveness subscription
                    // is back: a follower competes again at once, a watcher renews at once to
                    // raise its flag again.
                    Ok(Wake::Released | Wake::LivenessUp) => match &mut self.role {
                        Role::Follower { next_try } => *next_try = Instant::now(),
                        Role::Watcher { next_renew, .. } => {
                            if !self.shared.flag.load(Ordering::SeqCst) {
                                *next_renew = Instant::now();
                            }
                        }
                    },
                    // The wake thread has already lowered the flag; the lease goes on until
                    // the subscription is back or has been down for a renewal period.
                    Ok(Wake::LivenessLost) => {}
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
    /// runs only on a lease connection that is open, and for a watcher only when the next lease
    /// step is at least a command timeout away, with that as its read timeout: it ends before
    /// the next renewal is due, let alone its deadline. A failure is left to the next lease step, which
    /// reconnects if it must.
    fn check_policy(&mut self, now: Instant) {
        // A follower may spend a look's delay on it (it looks every liveness interval, which
        // would otherwise never leave room); a watcher only time it does not need.
        let follower = matches!(self.role, Role::Follower { .. });
        if now < self.next_policy_check
            || (!follower && self.due().saturating_duration_since(now) < self.io_timeout)
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
                if now < next_try {
                    return;
                }
                let Some(token) = self.gate.token() else {
                    // Our liveness subscription is down: nobody could tell our death from a
                    // pause, so we leave the lock to nodes they can see. The wake thread tells
                    // us when it is back; until then look again now and then. (`open` is told
                    // that the first attempt was made: it found us unable to compete yet.)
                    self.role = Role::Follower {
                        next_try: now + self.timing.retry,
                    };
                    if let Some(tx) = self.first_attempt.take() {
                        let _ = tx.send(());
                    }
                    return;
                };
                // A look on a new connection cannot build on looks made on the old one.
                if self.conn.as_ref().is_none_or(|c| c.is_broken()) {
                    self.watch.forget();
                }
                let gone = self.watch.dead_holder(self.link, now).map(str::to_string);
                self.try_acquire(token, gone);
            }
        }
    }

    /// One look at the lock: `acquire.lua`, or `take_over.lua` when the holder `gone` was seen
    /// alive and then found gone an interval ago. Either takes the lock if it can.
    fn try_acquire(&mut self, token: Token, gone: Option<String>) {
        let sent = Instant::now();
        let which = match &gone {
            Some(gone) => Which::TakeOver { gone },
            None => Which::Acquire,
        };
        let reply = self.call(self.io_timeout, which);
        let now = Instant::now();
        match reply.and_then(parse_acquire) {
            Ok(Acquire::Won { epoch, subscribers }) => {
                self.watch.forget();
                self.renewed_unseen = 0;
                self.shared.epoch.store(epoch, Ordering::SeqCst);
                let raised = self.gate.raise(token, &self.shared.flag);
                self.shared
                    .counters
                    .acquired
                    .fetch_add(1, Ordering::Relaxed);
                metrics::lease(LeaseEvent::Acquired);
                self.last_holder = Some(self.node_id.clone());
                self.role = Role::Watcher {
                    epoch,
                    valid_until: self.timing.valid_until(sent),
                    next_renew: self.timing.next_renewal(sent),
                };
                match gone {
                    Some(gone) => info!(
                        target: LOG_TARGET,
                        "acquired watcher lock (node {}, epoch {epoch}): previous holder {gone} is \
                         gone (its liveness connection closed)",
                        self.node_id
                    ),
                    None => info!(
                        target: LOG_TARGET,
                        "acquired watcher lock (node {}, epoch {epoch})",
                        self.node_id
                    ),
                }
                if !raised {
                    debug!(target: LOG_TARGET, "liveness connection broke during the acquisition: flag down until it is back");
                }
                self.check_own_liveness(subscribers, token);
            }
            Ok(Acquire::Held {
                pttl_ms,
                holder,
                subscribers,
            }) => {
                if self.last_holder.as_deref() != Some(holder.as_str()) {
                    debug!(target: LOG_TARGET, "watcher lock held by {holder}; following");
                    self.last_holder = Some(holder.clone());
                }
                if let Some(gone) = gone {
                    debug!(target: LOG_TARGET, "not taking over from {gone}: the lock is {holder}'s, with {subscribers:?} liveness subscribers");
                }
                self.watch.look(self.link, &holder, subscribers, now);
                self.role = Role::Follower {
                    next_try: self
                        .watch
                        .next_look(now, self.timing.follower_wait(pttl_ms)),
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
        // Without a token (our liveness subscription is down) the renewal keeps the lock while
        // the wake thread reconnects, but cannot raise the flag.
        let token = self.gate.token();
        let sent = Instant::now();
        let left = valid_until.saturating_duration_since(sent);
        let reply = self.call(self.io_timeout.min(left), Which::Renew { epoch });
        let now = Instant::now();
        match reply.and_then(parse_renew) {
            Ok(renewed @ (Renew::Renewed(_) | Renew::TakenBack(..))) => {
                let (epoch, subscribers) = match renewed {
                    Renew::TakenBack(new_epoch, n) => {
                        // The flag stays up: nobody else could hold the lock meanwhile (the
                        // fence). Only the epoch moves on, which rejects our own calls sent
                        // under the old one.
                        self.shared.epoch.store(new_epoch, Ordering::SeqCst);
                        info!(target: LOG_TARGET, "watcher lock was deleted by hand; took it back (epoch {new_epoch})");
                        (new_epoch, n)
                    }
                    Renew::Renewed(n) => {
                        debug!(target: LOG_TARGET, "watcher lock renewed");
                        (epoch, n)
                    }
                    Renew::Lost(_) => (epoch, None),
                };
                match token {
                    Some(token) => {
                        self.renewed_unseen = 0;
                        let was_up = self.shared.flag.load(Ordering::SeqCst);
                        if self.gate.raise(token, &self.shared.flag) && !was_up {
                            info!(target: LOG_TARGET, "watcher flag up again: the liveness connection is back and the lock is still ours");
                        }
                        self.check_own_liveness(subscribers, token);
                    }
                    None => self.renewed_unseen += 1,
                }
                self.shared
                    .counters
                    .renewals
                    .fetch_add(1, Ordering::Relaxed);
                metrics::lease(LeaseEvent::Renewed);
                self.role = Role::Watcher {
                    epoch,
                    valid_until: self.timing.valid_until(sent),
                    next_renew: self.timing.next_renewal(sent),
                };
                // Redis answers us, but our liveness subscription has not come back for a
                // whole renewal period (the wake thread retries every 100 ms at most).
                if self.renewed_unseen >= 2 {
                    self.renewed_unseen = 0;
                    self.give_up(epoch, self.gate.down_for(now).unwrap_or_default());
                }
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
                metrics::lease(LeaseEvent::RenewalFailed);
                self.role = Role::Watcher {
                    epoch,
                    valid_until,
                    next_renew: self.timing.renewal_retry(now, valid_until),
                };
            }
        }
    }

    /// A watcher that renewed twice in a row (a renewal period) while its liveness subscription
    /// was down: Redis answers, but no follower that comes to look could tell its death from a
    /// pause, so it hands the lock to one they can see (release and wake them), and competes
    /// again once its subscription is back.
    fn give_up(&mut self, epoch: u64, down: Duration) {
        self.step_down(&format!(
            "the liveness connection has been down for {} ms; releasing the lock to a node the \
             others can see",
            down.as_millis()
        ));
        if let Ok(1) = self
            .call(self.io_timeout, Which::Release { epoch })
            .and_then(|v| codec::int(&v, "release"))
        {
            info!(target: LOG_TARGET, "released watcher lock");
        }
        self.role = Role::Follower {
            next_try: Instant::now() + self.timing.retry,
        };
    }

    /// An acquisition or renewal counted `subscribers` on our own liveness channel on the lock's
    /// server while our subscription stood (`token`). None means it sits on another server (a
    /// Cluster or Sentinel failover left it on the old primary) or the server dropped it without
    /// our noticing: followers there cannot see us alive, so our crash would cost them the TTL.
    /// The wake thread is asked once to subscribe again (which drops the flag until a renewal
    /// sent after that, as any break); if that does not help (a proxy that sends pub/sub
    /// elsewhere), it is said once and left as it is: the TTL path still works.
    fn check_own_liveness(&mut self, subscribers: Option<u64>, token: Token) {
        match subscribers {
            Some(0) if self.gate.token() == Some(token) => {
                if !self.own_check.asked {
                    self.own_check.asked = true;
                    info!(target: LOG_TARGET, "this node's liveness subscription is not on the lock's server; subscribing again");
                    self.gate.request_resubscribe();
                } else if !self.own_check.warned {
                    self.own_check.warned = true;
                    warn!(target: LOG_TARGET, "this node's liveness subscription does not show on the lock's server even after subscribing again (a proxy between the node and redis?): if this node dies, the others wait for the lock's TTL");
                }
            }
            Some(n) if n > 0 => self.own_check = OwnCheck::default(),
            _ => {}
        }
    }

    fn step_down(&mut self, why: &str) {
        self.shared.flag.store(false, Ordering::SeqCst);
        self.shared.counters.lost.fetch_add(1, Ordering::Relaxed);
        metrics::lease(LeaseEvent::Lost);
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
        let reply = match self.call(self.io_timeout, Which::Release { epoch }) {
            // A link that broke while the thread had nothing to send (a network blip between
            // two renewals) shows only now: once more on a new connection, or the lock would be
            // left to expire. The script deletes only our own lock, so a repeat is harmless.
            Err(Error::Unavailable(_)) => self.call(self.io_timeout, Which::Release { epoch })?,
            reply => reply?,
        };
        if codec::int(&reply, "release")? == 1 {
            info!(target: LOG_TARGET, "released watcher lock");
        }
        Ok(())
    }

    /// Runs one lease script, (re)connecting as needed; logs a change of link state once.
    fn call(&mut self, timeout: Duration, which: Which<'_>) -> Result<redis::Value, Error> {
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

    fn call_inner(&mut self, timeout: Duration, which: Which<'_>) -> Result<redis::Value, Error> {
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
            // A take-over rests on looks made on this connection: never on a new one.
            None if matches!(which, Which::TakeOver { .. }) => {
                return Err(Error::Unavailable(
                    "the lease connection the holder was watched on is gone".into(),
                ))
            }
            None => {
                // Connecting counts against the same budget: the deadline does not wait.
                let conn = RedisConn::open(&self.target, timeout, self.io_timeout, &self.name)
                    .map_err(Error::from_redis)?;
                self.link += 1;
                self.conn.insert(conn)
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(no_time());
        }
        conn.set_read_timeout(left).map_err(Error::from_redis)?;
        let (scripts, node_id, ttl) = (&self.scripts, self.node_id.as_str(), self.timing.ttl);
        let live = self.live.as_str();
        let call = match which {
            Which::Acquire => scripts.acquire(node_id, ttl, live),
            Which::TakeOver { gone } => scripts.take_over(node_id, ttl, gone, live),
            Which::Renew { epoch } => scripts.renew(node_id, epoch, ttl, live),
            Which::Release { epoch } => scripts.release(node_id, epoch),
        };
        // WAIT gets half of what is left, so the script and the reply fit in the other half.
        let wait = self
            .wait_replicas
            .map(|(replicas, timeout)| (replicas, timeout.min(left / 2)));
        scripts::run(conn, &call, &self.keys, self.event_history, wait)
    }
}

/// Which lease script to run, with what only the caller knows (the node id, TTL and liveness
/// channels are the loop's own).
#[derive(Clone, Copy)]
enum Which<'a> {
    Acquire,
    /// Take the lock from `gone`, found without its liveness subscription.
    TakeOver {
        gone: &'a str,
    },
    Renew {
        epoch: u64,
    },
    Release {
        epoch: u64,
    },
}

/// The reply of `acquire.lua` and of `take_over.lua`. `subscribers` counts liveness
/// subscriptions (ours when we won, the holder's otherwise); `None` when not asked.
enum Acquire {
    Won {
        epoch: u64,
        subscribers: Option<u64>,
    },
    Held {
        pttl_ms: i64,
        holder: String,
        subscribers: Option<u64>,
    },
}

/// A count of liveness subscribers as the scripts give it: `-1` when not asked.
fn subscribers(v: &redis::Value) -> Result<Option<u64>, Error> {
    let n = codec::int(v, "subscribers")?;
    Ok((n >= 0).then_some(n as u64))
}

fn parse_acquire(v: redis::Value) -> Result<Acquire, Error> {
    let items = codec::array(v, "acquire")?;
    match items.as_slice() {
        [won, epoch, n] if codec::int(won, "acquire")? == 1 => Ok(Acquire::Won {
            epoch: codec::uint(epoch, "epoch")?,
            subscribers: subscribers(n)?,
        }),
        [_, pttl, holder, n] => Ok(Acquire::Held {
            pttl_ms: codec::int(pttl, "pttl")?,
            holder: codec::text(holder, "holder")?,
            subscribers: subscribers(n)?,
        }),
        _ => Err(Error::UnexpectedReply(format!("acquire: {items:?}").into())),
    }
}

enum Renew {
    /// With our own liveness subscribers on the lock's server.
    Renewed(Option<u64>),
    /// The lock had been deleted by hand; we took it back under this epoch.
    TakenBack(u64, Option<u64>),
    /// Someone else holds it now (`""`: nobody).
    Lost(String),
}

fn parse_renew(v: redis::Value) -> Result<Renew, Error> {
    let items = codec::array(v, "renew")?;
    let code = match items.first() {
        Some(code) => codec::int(code, "renew")?,
        None => return Err(Error::UnexpectedReply("renew: an empty reply".into())),
    };
    match (code, items.as_slice()) {
        (1, [_, n]) => Ok(Renew::Renewed(subscribers(n)?)),
        (2, [_, epoch, n]) => Ok(Renew::TakenBack(
            codec::uint(epoch, "epoch")?,
            subscribers(n)?,
        )),
        (0, [_, holder]) => Ok(Renew::Lost(codec::text(holder, "holder")?)),
        _ => Err(Error::UnexpectedReply(format!("renew: {items:?}").into())),
    }
}
