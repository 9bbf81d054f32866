//! The reference deployment's story — two nodes, one Redis, the watcher failing over — run on
//! one machine with one command, no Docker:
//!
//! ```text
//! cargo demo                                       # about 10 s
//! RUST_LOG=dolos_redis=debug cargo demo            # + lease/confirm logs
//! REDIS_URL=redis://127.0.0.1:6379 cargo demo
//! cargo demo --quick                               # shorter TTL and blocks (the CI test)
//! ```
//!
//! (`cargo demo` is `cargo run -p dolos-redis-harness --bin demo --`, an alias of
//! `.cargo/config.toml`.)
//!
//! What it does:
//!
//! * starts a private `redis-server` on a free port (or uses `REDIS_URL`, under a key prefix of
//!   its own that it deletes at the end);
//! * starts a TCP fault proxy per node and two node **processes** (this executable, run as
//!   `demo node <config.toml>`, the node of `dolos_redis_harness::node`), each configured by a
//!   generated TOML file with the reference `[storage.mempool]` table pointing at its proxy;
//! * runs a simulated chain: every block interval, a block of the inflight transactions not yet
//!   in a block, sent to both nodes (F = 4 confirmations to finalize, D = 8 misses to drop: a
//!   failover gap is at most about TTL / block interval + 1 = 3 blocks). Each node keeps its
//!   own chain; the watcher applies it with `confirm` and `rollback_to`, and every node that
//!   becomes the watcher first **reconciles** the applied chain in Redis with its own;
//! * then, printing a timeline: (1) shows the watcher; (2) kills it with SIGKILL and, while
//!   nobody is watcher, forks the chain (2 blocks the dead watcher applied are replaced by 3,
//!   the first at a lower slot), measures the takeover (fast: the other node sees the dead
//!   one's liveness subscription gone), shows the new watcher's reconcile undo the abandoned
//!   blocks and apply the fork, restarts the killed node and shows it rejoins as a non-watcher;
//!   (3) cuts the new watcher off from Redis at its proxy, measures the takeover (the TTL: a
//!   cut-off node's connections stay open on the server), heals it and shows it rejoins as a
//!   non-watcher; (4) resets the lock the way an
//!   operator would (`reset_watcher_lock`), which hands over at once and shows the old
//!   watcher's next `confirm` refused by Redis; (5) stops submitting, lets the chain finalize
//!   everything and checks that every transaction that entered the mempool was Finalized
//!   exactly once with F confirmations, nothing Dropped or left behind, and that the applied
//!   chain in Redis — and the one the `BlockApplied` events build — is the chain, block for
//!   block.
//!
//! Exits non-zero if any step or check fails.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use dolos_redis::{ChainPoint, Config, MempoolStats, MempoolTxStage, RedisMempool, TxHash};
use dolos_redis_harness::chain::{Chain, Pace, Progress};
use dolos_redis_harness::cluster::{self, Node};
use dolos_redis_harness::ledger::{self, Ledger};
use dolos_redis_harness::node_config::{self, NodeFile};
use dolos_redis_harness::{cli, keys, say, timeline};
use dolos_redis_testkit as support;

const NODE_NAMES: [&str; 2] = ["dolos1", "dolos2"];

/// The demo's pace. `--quick` halves it for CI.
struct Plan {
    quick: bool,
    /// `watcher_lock_ttl`: whole seconds in the TOML table.
    ttl: Duration,
    block_interval: Duration,
    tx_interval: Duration,
    /// Connect and command timeouts of the nodes, so a cut-off node notices quickly.
    io_timeout: Duration,
    finalize: u32,
    drop: u32,
    stats_every: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let base = Plan {
            quick,
            ttl: Duration::from_secs(2),
            block_interval: Duration::from_secs(1),
            tx_interval: Duration::from_millis(300),
            io_timeout: Duration::from_millis(500),
            finalize: 4,
            drop: 8,
            stats_every: Duration::from_secs(3),
        };
        if quick {
            Plan {
                ttl: Duration::from_secs(1),
                block_interval: Duration::from_millis(500),
                stats_every: Duration::from_secs(2),
                ..base
            }
        } else {
            base
        }
    }

    /// Generous bound for anything that should happen within a lock TTL or two.
    fn patience(&self) -> Duration {
        self.ttl * 4 + Duration::from_secs(10)
    }
}

const USAGE: &str = "\
usage: cargo demo [--quick]

  --quick     a 1 s lock TTL and a block every 500 ms: about 6 s (what CI runs)
  -h, --help  this text

Set REDIS_URL to use a running server instead of starting one, RUST_LOG=dolos_redis=debug to
see the nodes' lease and confirm log lines.";

/// `Some(quick)`, or `None` for `--help`.
fn parse(args: Vec<OsString>) -> Result<Option<bool>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut quick = false;
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("quick") => quick = true,
            Short('h') | Long("help") => return Ok(None),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Some(quick))
}

fn main() -> ExitCode {
    let args = cli::args();
    if let Some(code) = cli::node_subcommand(&args) {
        return code;
    }
    let quick = match parse(args) {
        Ok(Some(quick)) => quick,
        Ok(None) => return cli::help(USAGE),
        Err(e) => return cli::usage_error(USAGE, e),
    };
    timeline::start(6);
    // The observer's own library logs. Errors only by default: its event reader warns when the
    // private server stops at the very end.
    timeline::log_errors("demo");
    let plan = Plan::new(quick);
    match run(&plan) {
        Ok(()) => {
            say!("DEMO PASSED in {:.1} s", timeline::elapsed());
            ExitCode::SUCCESS
        }
        Err(e) => {
            say!("DEMO FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Node id → `dolos1 (1a2b3c4d)`, for every process the demo started.
#[derive(Clone, Default)]
struct Names(Arc<Mutex<HashMap<String, String>>>);

impl Names {
    fn add(&self, id: &str, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), name.to_string());
    }

    fn label(&self, id: &str) -> String {
        let names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let name = names.get(id).map(String::as_str).unwrap_or("unknown node");
        format!("{name} ({})", short(id))
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn wait_for(what: &str, timeout: Duration, cond: impl FnMut() -> bool) -> Result<(), String> {
    if support::wait_until(timeout, cond) {
        Ok(())
    } else {
        Err(format!("timed out after {timeout:?} waiting for {what}"))
    }
}

fn wait_for_value<T>(
    what: &str,
    timeout: Duration,
    mut get: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let mut value = None;
    wait_for(what, timeout, || {
        value = get();
        value.is_some()
    })?;
    value.ok_or_else(|| format!("lost track of {what}"))
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The demo's Redis: a private server, or `REDIS_URL`.
struct Target {
    _server: Option<support::RedisServer>,
    url: String,
    upstream: SocketAddr,
    prefix: String,
    external: bool,
}

fn redis_target() -> Result<Target, String> {
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let (_, hostport, _) = split_redis_url(&url)?;
            let upstream = hostport
                .to_socket_addrs()
                .map_err(|e| format!("REDIS_URL: cannot resolve {hostport}: {e}"))?
                .next()
                .ok_or_else(|| format!("REDIS_URL: {hostport} has no address"))?;
            // A prefix of its own, so a shared server's other data is never touched.
            let prefix = format!(
                "dolos-demo-{}-{}:mempool",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
            );
            Ok(Target {
                _server: None,
                url,
                upstream,
                prefix,
                external: true,
            })
        }
        Err(_) => {
            let server = support::RedisServer::start();
            Ok(Target {
                url: server.url(),
                upstream: server.addr(),
                _server: Some(server),
                prefix: "dolos:mempool".into(),
                external: false,
            })
        }
    }
}

/// `redis://[userinfo@]host[:port][/db]` → (`redis://userinfo@`, `host:port`, `/db`).
fn split_redis_url(url: &str) -> Result<(String, String, String), String> {
    let Some(("redis", rest)) = url.split_once("://") else {
        return Err(
            "REDIS_URL must be a redis:// URL: the demo's nodes reach it through TCP fault proxies"
                .into(),
        );
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let has_port = hostport
        .rfind(':')
        .is_some_and(|i| !hostport[i..].contains(']'));
    let hostport = if has_port {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    };
    Ok((format!("redis://{userinfo}"), hostport, tail.to_string()))
}

/// The URL a node uses: the target's, with the node's proxy in place of host and port.
fn proxied_url(url: &str, proxy: SocketAddr) -> Result<String, String> {
    let (head, _, tail) = split_redis_url(url)?;
    Ok(format!("{head}{proxy}{tail}"))
}

/// Prints the shared mempool's counts every few seconds.
struct StatsPrinter {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn stats_line(stats: &MempoolStats, names: &Names, chain: &Progress) -> String {
    let watcher = match &stats.watcher.holder {
        Some(id) => format!(
            "watcher {}, epoch {}, TTL {} ms",
            names.label(id),
            stats.watcher.epoch,
            stats.watcher.ttl.map_or(0, ms)
        ),
        None => format!("no watcher (epoch {})", stats.watcher.epoch),
    };
    format!(
        "stats | {watcher} | pending {}, propagated {}, acknowledged {}, confirmed {}, finalized {} \
         | chain height {}, applied {}",
        stats.pending,
        stats.propagated,
        stats.acknowledged,
        stats.confirmed,
        stats.finalized_log,
        chain.height(),
        stats.applied_blocks,
    )
}

impl StatsPrinter {
    fn start(observer: RedisMempool, names: Names, chain: Progress, every: Duration) -> Self {
        let (stop, rx) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                match observer.stats() {
                    Ok(stats) => say!("{}", stats_line(&stats, &names, &chain)),
                    Err(e) => say!("stats unavailable: {e}"),
                }
            }
        });
        StatsPrinter {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for StatsPrinter {
    fn drop(&mut self) {
        self.stop = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Everything the steps share.
struct Demo<'a> {
    plan: &'a Plan,
    observer: RedisMempool,
    ledger: Ledger,
    chain: Chain,
    nodes: Vec<Node>,
    names: Names,
    prefix: String,
    /// Redis itself (not a proxy), for the operator's `CLIENT LIST`.
    url: String,
    takeovers: Vec<(String, u128)>,
}

impl Demo<'_> {
    /// The index and id of the node whose current process holds the lock.
    fn watcher(&self) -> Result<(usize, String), String> {
        let info = self.observer.watcher_info().map_err(|e| e.to_string())?;
        let holder = info.holder.ok_or("nobody holds the watcher lock")?;
        let index = self
            .nodes
            .iter()
            .position(|n| n.id().as_deref() == Some(holder.as_str()))
            .ok_or_else(|| format!("the lock is held by {holder}, not by a running node"))?;
        Ok((index, holder))
    }

    fn spawn(&mut self, i: usize) -> Result<String, String> {
        let report = self.nodes[i].spawn(&self.chain)?;
        let id = report.id().unwrap_or_default();
        self.names.add(&id, &self.nodes[i].name);
        Ok(id)
    }

    /// Waits until `node_id` acquires the lock after `since`; prints and records the takeover.
    fn takeover(&mut self, node_id: &str, since: Instant, why: &str) -> Result<(), String> {
        let patience = self.plan.patience();
        let acquired = wait_for_value("the other node to take over", patience, || {
            self.ledger.acquired_by(node_id, since)
        })?;
        let took = ms(acquired.at - since);
        say!(
            "TAKEOVER ({why}): {} took over after {took} ms (epoch {}; lock TTL {} ms)",
            self.names.label(node_id),
            acquired.epoch,
            ms(self.plan.ttl)
        );
        self.takeovers.push((why.to_string(), took));
        Ok(())
    }

    /// Waits until the applied chain in Redis ends with the chain's tip.
    fn caught_up(&self) -> Result<(), String> {
        let progress = self.chain.progress();
        let mut tip = None;
        wait_for(
            "the watcher to apply the chain's blocks",
            self.plan.patience(),
            || {
                tip = progress.tip();
                tip.is_some() && self.observer.applied_points(1).ok() == tip.map(|t| vec![t])
            },
        )?;
        say!(
            "the watcher has applied every block up to slot {}: none was skipped",
            tip.map_or(0, |t| t.slot())
        );
        Ok(())
    }

    /// Checks that the lock is still `holder`'s and that node `i` is not watcher.
    fn rejoined_as_follower(&self, i: usize, holder: &str) -> Result<(), String> {
        let report = self.nodes[i].report().ok_or("node not running")?;
        let info = self.observer.watcher_info().map_err(|e| e.to_string())?;
        if info.holder.as_deref() != Some(holder) || report.state().watcher {
            return Err(format!(
                "{} rejoined but the lock is held by {:?} (expected {})",
                self.nodes[i].name,
                info.holder,
                self.names.label(holder)
            ));
        }
        Ok(())
    }

    fn step_1_show_watcher(&mut self) -> Result<(), String> {
        say!("== 1. Which node is the watcher? ==");
        wait_for("a watcher", self.plan.patience(), || self.watcher().is_ok())?;
        let info = self.observer.watcher_info().map_err(|e| e.to_string())?;
        let holder = info.holder.unwrap_or_default();
        say!(
            "watcher: {} — GET {}:watcher:lock = {holder}, TTL {} ms, epoch {}",
            self.names.label(&holder),
            self.prefix,
            info.ttl.map_or(0, ms),
            info.epoch
        );
        say!("both nodes submit and propagate; the chain makes a block every {} ms from inflight txs", ms(self.plan.block_interval));
        wait_for(
            "a first finalized transaction",
            self.plan.patience(),
            || self.ledger.state().finalized > 0,
        )?;
        say!(
            "first transactions finalized: {} confirmations from the watcher's confirm calls",
            self.plan.finalize
        );
        Ok(())
    }

    fn step_2_kill(&mut self) -> Result<(), String> {
        say!("== 2. The watcher dies (SIGKILL: its lock is not released) and the chain forks ==");
        let (w, _) = self.watcher()?;
        let other = 1 - w;
        let other_id = self.nodes[other].id().ok_or("other node not running")?;
        let other_report = self.nodes[other].report().ok_or("other node not running")?;
        let reconciles_before = other_report.state().reconciles.len();
        // The blocks the fork abandons must be ones the dead watcher applied.
        self.caught_up()?;
        let pid = self.nodes[w].pid().unwrap_or(0);
        let since = Instant::now();
        self.nodes[w].kill(&self.chain);
        let left = self
            .observer
            .watcher_info()
            .ok()
            .and_then(|i| i.ttl)
            .unwrap_or_default();
        say!(
            "killed {} (pid {pid}); its lock still has {} ms to live, but the kernel closed its \
             connections: {} takes over once it sees its liveness subscription gone",
            self.nodes[w].name,
            ms(left),
            self.nodes[other].name
        );
        // Dead, it applies nothing more: what it left applied is what its successor finds.
        let left = self
            .observer
            .applied_points(usize::MAX)
            .map_err(|e| format!("applied_points: {e}"))?;
        let fork = self.chain.fork(2).ok_or("the chain could not fork")?;
        let abandoned = fork
            .undone
            .iter()
            .filter(|b| left.contains(&b.point))
            .count();
        let slots = |points: &mut dyn Iterator<Item = &ChainPoint>| -> String {
            points
                .map(|p| p.slot().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        say!(
            "FORK while nobody is watcher: the chain rolled back to slot {} and replaced its blocks \
             at slots {} (applied by the dead watcher) with blocks at slots {}; the first is \
             below the ones it replaces",
            fork.to.slot(),
            slots(&mut fork.undone.iter().map(|b| &b.point)),
            slots(&mut fork.added.iter())
        );
        self.takeover(&other_id, since, "watcher killed")?;
        say!(
            "  (before the dead watcher's lock expired: the liveness check, not the TTL of {} ms)",
            ms(self.plan.ttl)
        );
        let (undone, replayed) =
            wait_for_value("the new watcher to reconcile", self.plan.patience(), || {
                other_report
                    .state()
                    .reconciles
                    .get(reconciles_before)
                    .copied()
            })?;
        if undone != abandoned {
            return Err(format!(
                "the new watcher's reconcile undid {undone} blocks; the dead watcher had applied \
                 {abandoned} of the abandoned ones"
            ));
        }
        say!(
            "RECONCILE on takeover: {} rolled back to slot {} ({undone} abandoned blocks undone, \
             their txs back to pending) and replayed the {replayed} blocks of its chain after it",
            self.names.label(&other_id),
            fork.to.slot()
        );
        self.caught_up()?;

        let id = self.spawn(w)?;
        say!(
            "restarted {} as {} (pid {}); it reads the chain so far, as a node reads its own from \
             disk",
            self.nodes[w].name,
            short(&id),
            self.nodes[w].pid().unwrap_or(0)
        );
        let report = self.nodes[w].report().ok_or("node not running")?;
        let height = self.chain.progress().height();
        wait_for(
            "the restarted node to read the chain",
            self.plan.patience(),
            || report.state().chain_len >= height,
        )?;
        self.rejoined_as_follower(w, &other_id)?;
        say!(
            "{} rejoined as a non-watcher: it follows the chain ({height} blocks) and leaves \
             confirm to the watcher; {} keeps the lock",
            self.names.label(&id),
            self.names.label(&other_id)
        );
        Ok(())
    }

    fn step_3_partition(&mut self) -> Result<(), String> {
        say!("== 3. The watcher is cut off from Redis (its fault proxy swallows every byte) ==");
        let (w, w_id) = self.watcher()?;
        let other = 1 - w;
        let other_id = self.nodes[other].id().ok_or("other node not running")?;
        let report = self.nodes[w].report().ok_or("node not running")?;
        let (downs, ups) = {
            let s = report.state();
            (s.link_downs, s.link_ups)
        };
        let since = Instant::now();
        self.nodes[w].proxy.blackhole();
        say!(
            "partitioned {}: requests hang, renewals time out; its connections stay open on the \
             server, so nobody may declare it dead: {} waits for the lock to expire",
            self.names.label(&w_id),
            self.nodes[other].name
        );
        self.takeover(&other_id, since, "watcher partitioned")?;
        wait_for("the cut-off node to notice", self.plan.patience(), || {
            let s = report.state();
            s.link_downs > downs && !s.watcher
        })?;
        say!(
            "{} knows it cannot reach redis and is no longer watcher",
            self.nodes[w].name
        );
        self.caught_up()?;

        let healed = Instant::now();
        self.nodes[w].proxy.heal();
        say!("healed the partition of {}", self.nodes[w].name);
        wait_for(
            "the healed node to reach redis",
            self.plan.patience(),
            || report.state().link_ups > ups,
        )?;
        self.rejoined_as_follower(w, &other_id)?;
        say!(
            "{} reached redis again after {} ms and rejoined as a non-watcher; {} keeps the lock",
            self.names.label(&w_id),
            ms(healed.elapsed()),
            self.names.label(&other_id)
        );
        Ok(())
    }

    /// Whether every running node has its lease and wake connections open, as `CLIENT LIST`
    /// shows them (the crate names each connection after its node and role).
    fn lease_links_up(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
            return false;
        };
        let list = match redis::cmd("CLIENT").arg("LIST").query::<String>(&mut conn) {
            Ok(list) => list,
            // A server that refuses CLIENT LIST (ACL): go ahead without the check.
            Err(e) if e.code().is_some() => return true,
            Err(_) => return false,
        };
        self.nodes.iter().all(|node| {
            node.id().is_some_and(|id| {
                ["lease", "wake"].iter().all(|role| {
                    let name = format!("name=dolos-redis:{id}:{role}");
                    list.lines()
                        .any(|l| l.split(' ').any(|field| field == name))
                })
            })
        })
    }

    fn step_4_reset(&mut self) -> Result<(), String> {
        say!("== 4. An operator resets the lock (the reference's emergency DEL, made safe) ==");
        // A node just healed may still be reconnecting its lease; a reset is only a handover
        // if the follower can hear the wake-up and ask at once.
        wait_for(
            "every node's lease and wake connections",
            self.plan.patience(),
            || self.lease_links_up(),
        )?;
        say!("CLIENT LIST shows the lease and wake connections of both nodes");
        let (w, w_id) = self.watcher()?;
        let report = self.nodes[w].report().ok_or("node not running")?;
        let refused = |r: &cluster::Report| {
            r.state()
                .outcomes
                .iter()
                .filter(|o| *o == "LostLock")
                .count()
        };
        let refused_before = refused(&report);
        let since = Instant::now();
        let removed = self
            .observer
            .reset_watcher_lock(Some(&w_id))
            .map_err(|e| format!("reset_watcher_lock: {e}"))?;
        if removed.as_deref() != Some(w_id.as_str()) {
            return Err(format!("reset removed {removed:?}, expected {w_id}"));
        }
        // A block right away, so the old watcher calls confirm before its next renewal.
        self.chain.block_now();
        say!(
            "reset_watcher_lock(Some({})) deleted the lock and woke the followers",
            short(&w_id)
        );
        let acquired = wait_for_value(
            "a node to take the freed lock",
            self.plan.patience(),
            || {
                let s = self.ledger.state();
                s.acquired.iter().find(|a| a.at >= since).cloned()
            },
        )?;
        let took = ms(acquired.at - since);
        self.takeovers.push(("lock reset".into(), took));
        if acquired.node_id == w_id {
            // Allowed: a reset frees the lock for whichever node asks first, and the old
            // watcher asks again as soon as its renewal finds the key gone.
            say!(
                "LOCK RESET: {} took the lock again after {took} ms (epoch {}): its renewal came \
                 before the follower's attempt",
                self.names.label(&w_id),
                acquired.epoch
            );
            return self.caught_up();
        }
        say!(
            "LOCK RESET: {} took over after {took} ms (epoch {}): woken by the reset, no TTL to wait for",
            self.names.label(&acquired.node_id),
            acquired.epoch
        );
        wait_for("the old watcher to step down", self.plan.patience(), || {
            !report.state().watcher
        })?;
        if refused(&report) > refused_before {
            say!(
                "{}'s next confirm was refused by redis (LostLock, \"lost watcher lock, skipping confirm\"); it stepped down",
                self.names.label(&w_id)
            );
        } else {
            say!(
                "{} stepped down at its next renewal, before its next confirm",
                self.names.label(&w_id)
            );
        }
        self.caught_up()
    }

    fn step_5_check(&mut self) -> Result<(), String> {
        say!("== 5. Stop submitting, let the chain finalize everything, check ==");
        for i in 0..self.nodes.len() {
            self.chain.send(i, "submit off");
        }
        let timeout = self.plan.block_interval * (self.plan.finalize + 6) + self.plan.patience();
        wait_for("every transaction to be finalized", timeout, || {
            let Ok(stats) = self.observer.stats() else {
                return false;
            };
            let live = stats.pending + stats.propagated + stats.acknowledged + stats.confirmed;
            let s = self.ledger.state();
            live == 0
                && s.finalized + s.dropped == stats.finalized_log
                && s.finalized + s.dropped == s.txs.len() as u64
        })?;
        let height = self.chain.stop();
        let blocks = self.chain.blocks();
        let tip = blocks.last().map(|b| b.point);
        wait_for("the last block to be applied", self.plan.patience(), || {
            // Its BlockApplied event too: the audit-trail check below reads the ledger.
            self.ledger.state().applied.last().copied() == tip
                && self.observer.applied_points(1).ok() == tip.map(|t| vec![t])
        })?;
        let last_slot = tip.map_or(0, |t| t.slot());
        say!(
            "chain stopped at slot {last_slot} ({height} blocks); every transaction has left the \
             mempool"
        );

        let f = self.plan.finalize;
        let mut problems = Vec::new();
        let stats = self.observer.stats().map_err(|e| e.to_string())?;
        let s = self.ledger.state();
        if s.lagged > 0 {
            problems.push(format!("the event subscriber missed {} events", s.lagged));
        }
        if s.out_of_order > 0 || s.orphans > 0 {
            problems.push(format!(
                "{} events out of order, {} transitions of unknown txs",
                s.out_of_order, s.orphans
            ));
        }
        for (hash, life) in &s.txs {
            if let Some(p) = ledger::life_problem(life, f) {
                problems.push(format!("tx {hash}: {p}"));
            }
        }
        // Every receive a node saw succeed must have entered the mempool.
        let mut accepted = Vec::new();
        for node in &self.nodes {
            let mut per_run = Vec::new();
            for run in &node.runs {
                let submitted = run.state().submitted.clone();
                per_run.push(submitted.len());
                for hex in submitted {
                    match hex.parse::<TxHash>() {
                        Ok(h) if s.txs.contains_key(&h) => {}
                        _ => problems.push(format!(
                            "{} reported {hex} accepted, but it never entered",
                            node.name
                        )),
                    }
                }
            }
            accepted.push(format!(
                "{} {} ({} process{})",
                node.name,
                per_run.iter().sum::<usize>(),
                per_run.len(),
                if per_run.len() == 1 { "" } else { "es" }
            ));
        }
        // The finalized log agrees, entry for entry.
        let mut in_log: HashMap<TxHash, u32> = HashMap::new();
        let mut cursor = 0;
        loop {
            let page = self
                .observer
                .dump_finalized(cursor, 500)
                .map_err(|e| e.to_string())?;
            for tx in &page.items {
                *in_log.entry(tx.hash).or_default() += 1;
                if tx.stage != MempoolTxStage::Finalized || tx.confirmations != f {
                    problems.push(format!(
                        "log entry {}: {:?} with {} confirmations",
                        tx.hash, tx.stage, tx.confirmations
                    ));
                }
            }
            match page.next_cursor {
                Some(next) => cursor = next,
                None => break,
            }
        }
        if in_log.len() != s.txs.len()
            || in_log.values().any(|n| *n != 1)
            || !s.txs.keys().all(|h| in_log.contains_key(h))
        {
            problems.push(format!(
                "finalized log has {} distinct entries ({} in all) for {} transactions",
                in_log.len(),
                in_log.values().sum::<u32>(),
                s.txs.len()
            ));
        }
        let live = stats.pending + stats.propagated + stats.acknowledged + stats.confirmed;
        if live > 0 {
            problems.push(format!("{live} transactions left pending or inflight"));
        }
        // The applied chain is the chain, block for block: as Redis holds it, and as the
        // BlockApplied events build it (each block applied while off the chain, each undo
        // of the tip).
        let points: Vec<ChainPoint> = blocks.iter().map(|b| b.point).collect();
        let mut in_redis = self
            .observer
            .applied_points(usize::MAX)
            .map_err(|e| e.to_string())?;
        in_redis.reverse();
        if stats.applied_blocks != height as u64 || in_redis != points {
            problems.push(format!(
                "the applied chain in redis (height {}, {} points) is not the chain ({height} \
                 blocks)",
                stats.applied_blocks,
                in_redis.len()
            ));
        }
        if s.applied != points {
            problems.push(format!(
                "the BlockApplied events build a chain of {} blocks that is not the chain",
                s.applied.len()
            ));
        }
        problems.extend(s.audit.iter().cloned());
        let undone = s.blocks.iter().filter(|b| b.undo).count();
        let rolled_back = s
            .txs
            .values()
            .filter(|life| life.iter().any(|(st, _)| *st == MempoolTxStage::RolledBack))
            .count();
        let mut by_node: Vec<(String, usize)> = Vec::new();
        for b in s.blocks.iter().filter(|b| !b.undo) {
            let label = self.names.label(&b.node_id);
            match by_node.last_mut() {
                Some((last, n)) if *last == label => *n += 1,
                _ => by_node.push((label, 1)),
            }
        }
        let by_node: Vec<String> = by_node
            .iter()
            .map(|(label, n)| format!("{label} {n}"))
            .collect();
        let terms: Vec<String> = s
            .acquired
            .iter()
            .map(|a| format!("{} e{}", self.names.label(&a.node_id), a.epoch))
            .collect();
        say!(
            "check: {} transactions entered the mempool; accepted per node: {}",
            s.txs.len(),
            accepted.join(", ")
        );
        say!(
            "check: {} Finalized exactly once with {f} confirmations (Confirmed 1..{} once per \
             applied block; {rolled_back} were rolled back by the fork first), {} Dropped, {live} \
             left pending or inflight",
            s.finalized,
            f - 1,
            s.dropped
        );
        say!(
            "check: the applied chain is the chain, block for block: {height} blocks, {} forks; \
             the events show {} blocks applied and {undone} undone; applied by {}",
            self.chain.forks().len(),
            s.blocks.len() - undone,
            by_node.join(", then ")
        );
        say!("check: watchers in turn: {}", terms.join(" -> "));
        if !problems.is_empty() {
            for p in problems.iter().take(20) {
                say!("PROBLEM: {p}");
            }
            return Err(format!("{} problems found", problems.len()));
        }
        say!("check: every transaction reached Finalized exactly once — OK");
        Ok(())
    }
}

fn run(plan: &Plan) -> Result<(), String> {
    say!(
        "dolos-redis demo{}: two node processes share one Redis-backed mempool",
        if plan.quick { " (--quick)" } else { "" }
    );
    let target = redis_target()?;
    if target.external {
        say!(
            "redis: REDIS_URL at {} (key prefix {}, removed at the end)",
            target.upstream,
            target.prefix
        );
    } else {
        say!(
            "redis: private redis-server on {} (set REDIS_URL to use your own)",
            target.upstream
        );
    }
    let observer = RedisMempool::open(
        Config::new(target.url.clone())
            .key_prefix(target.prefix.clone())
            .watcher_candidate(false),
    )
    .map_err(|e| format!("cannot open the observer: {e}"))?;
    let ledger = Ledger::start(&observer);
    let dir = node_config::temp_dir("demo")?; // the nodes' files, removed at the end
    let mut nodes = Vec::new();
    for (i, name) in NODE_NAMES.iter().enumerate() {
        let proxy = support::FaultProxy::start(target.upstream);
        let url = proxied_url(&target.url, proxy.addr())?;
        let path = NodeFile {
            name,
            url: &url,
            prefix: &target.prefix,
            pool_size: 10,
            max_finalized: 10_000,
            ttl: plan.ttl,
            io_timeout: plan.io_timeout,
            tx_interval: plan.tx_interval,
            finalize: plan.finalize,
            drop: plan.drop,
            chaos: false,
        }
        .write(dir.path())?;
        nodes.push(Node::new(i, name, path, proxy));
    }
    say!(
        "lock TTL {} ms, a block every {} ms, each node submits a tx every {} ms; confirm(F = {}, D = {})",
        ms(plan.ttl),
        ms(plan.block_interval),
        ms(plan.tx_interval),
        plan.finalize,
        plan.drop
    );
    if let Ok(text) = std::fs::read_to_string(&nodes[0].config) {
        say!("{} ({}):", nodes[0].name, nodes[0].config.display());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            println!("           {line}");
        }
    }

    let chain = Chain::start(
        observer.clone(),
        Pace::steady(plan.block_interval),
        nodes.len(),
    );
    let names = Names::default();
    let stats = StatsPrinter::start(
        observer.clone(),
        names.clone(),
        chain.progress(),
        plan.stats_every,
    );
    let mut demo = Demo {
        plan,
        observer,
        ledger,
        chain,
        nodes,
        names,
        prefix: target.prefix.clone(),
        url: target.url.clone(),
        takeovers: Vec::new(),
    };
    for i in 0..demo.nodes.len() {
        let id = demo.spawn(i)?;
        say!(
            "started {} (pid {}) as node {}, through fault proxy {}",
            demo.nodes[i].name,
            demo.nodes[i].pid().unwrap_or(0),
            short(&id),
            demo.nodes[i].proxy.addr()
        );
    }

    let outcome = (|| {
        demo.step_1_show_watcher()?;
        demo.step_2_kill()?;
        demo.step_3_partition()?;
        demo.step_4_reset()?;
        demo.step_5_check()
    })();
    drop(stats);
    for node in demo.nodes.iter_mut() {
        if let Err(e) = node.quit(&demo.chain, Duration::from_secs(5)) {
            say!("stopping {}: {e}", node.name);
        }
    }
    let summary: Vec<String> = demo
        .takeovers
        .iter()
        .map(|(why, took)| format!("{why}: {took} ms"))
        .collect();
    say!(
        "takeover times (lock TTL {} ms): {}",
        ms(plan.ttl),
        summary.join(", ")
    );
    if target.external {
        if let Err(e) = delete_prefix(&target.url, &target.prefix) {
            say!(
                "could not remove the demo's keys under {}: {e}",
                target.prefix
            );
        }
    }
    outcome
}

/// Removes the demo's keys from a shared server (`REDIS_URL`).
fn delete_prefix(url: &str, prefix: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    keys::delete_prefix(&mut conn, prefix).map_err(|e| e.to_string())
}
