//! The chaos run: three node processes share one mempool on a persistent Redis while faults hit
//! them at random; at the end it checks that nothing was lost, applied twice or held by two
//! watchers at once.
//!
//! ```text
//! cargo chaos                                          # 60 s of faults
//! cargo chaos --seed 42 --secs 20 --ttl-ms 1000
//! cargo chaos --secs 3600 --quiet                      # a soak
//! ```
//!
//! (`cargo chaos` is `cargo run --release -p dolos-redis-harness --bin chaos --`, an alias of
//! `.cargo/config.toml`.)
//!
//! Options: `--seed N` (decimal or 0x-hex; printed first, replays the same fault schedule),
//! `--secs S` (how long to inject faults, default 60, or `DOLOS_REDIS_SOAK_SECS`), `--ttl-ms T`
//! (watcher lock TTL, default 1000), `--quiet` (do not echo the nodes' output),
//! `--takeover-slack-ms M` (added to the strict takeover bounds before they fail the run; 0 by
//! default, the CI test passes 1000) and `--sched-ms M` (scheduling allowance in the watcher
//! overlap margin, default 50).
//!
//! Set-up: a private `redis-server` with `appendonly yes` + `appendfsync always` and
//! `maxmemory` [`MAXMEMORY`] under `noeviction`, a TCP fault
//! proxy per node, three node processes (this executable run as `chaos node <config.toml>`,
//! the node of `dolos_redis_harness::node`: it submits a tx every 250 ms, propagates, acknowledges, keeps
//! its own chain, applies it as the watcher and reconciles on every takeover), a simulated
//! chain (a block every 500–1000 ms from the inflight txs, written to every node, and in one
//! interval out of ten a fork instead: 1–3 blocks rolled back and replaced by one more, the
//! first at a lower slot, with new hashes) and an observer (`watcher_candidate(false)`) whose
//! event subscription is the audit trail. `confirm` uses F = 4 and D = 10 000: a takeover gap of
//! a few blocks can never drop a tx, so every accepted tx must end Finalized; forks are at most
//! 3 deep, below F, so a Finalized tx is never on an abandoned block.
//!
//! Faults, one at a time with a settled state and a quiet gap between them, from the moment the
//! chain holds blocks a fork can undo; the first five are the five kinds in a seeded order,
//! then a weighted draw:
//!
//! * `kill -9` of a node (the watcher 70 % of the time), then a restart: the kernel closes the
//!   dead watcher's liveness connection, and a follower must take over within 500 ms;
//! * SIGSTOP of the watcher for 1.2–2 × TTL (and until another node took over), then SIGCONT;
//! * a black-hole partition between a node (the watcher 70 %) and Redis for 1.2–2 × TTL (the
//!   proxy keeps the server's side of every connection open, as a real partition does). A
//!   paused or cut-off watcher's sockets stay open on the server, so the lock's TTL decides: a
//!   takeover before the old lock could expire fails the run;
//! * a Redis restart (SIGKILL; the data comes back from the AOF);
//! * `DEL <prefix>:watcher:lock` by hand;
//! * Redis full: filler keys up to `maxmemory` for 2.4–4 × TTL, then deleted. Redis runs with
//!   `maxmemory-policy noeviction` and a `maxmemory` far above what the run needs; the fault
//!   lowers `maxmemory` to 4 MB above what is used and fills those 4 MB with filler keys, then
//!   (since Redis frees some client buffers on its own) holds the limit 1 MB below what is used,
//!   and at the end deletes the fillers and puts the limit back. The nodes' writes fail with
//!   `OutOfMemory` meanwhile and are made again afterwards, the refused `confirm` before any
//!   later block; the watcher must keep its lock throughout.
//!
//! When the fault takes the watcher away (kill, SIGSTOP, partition of the watcher), the chain
//! forks right after it two times out of three (always after a SIGSTOP), so the blocks the lost
//! watcher applied last are abandoned and its successor's reconcile must undo them.
//!
//! Every node process runs a probe thread that samples `is_watcher()` every millisecond and
//! reports each change with `CLOCK_MONOTONIC` stamps; the harness stamps its faults with the same
//! clock. At the end (faults and forks stopped, submissions stopped, the chain runs until every
//! accepted tx is finalized) it prints the counts of each fault, fork and reconcile, the
//! measured takeovers and a table of invariants — among them that the applied chain is the
//! final chain and that the shared state is what one node fed the final chain would hold — and
//! exits non-zero if one fails. How each invariant is judged is written next to
//! its check in `check.rs`.

mod check;
mod faults;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dolos_redis::{Config, RedisMempool};
use dolos_redis_harness::chain::{Chain, Pace, MAX_FORK_DEPTH};
use dolos_redis_harness::clock::{self, mono_ns, ms_between, ns, Signal};
use dolos_redis_harness::cluster::{Flag, Node};
use dolos_redis_harness::ledger::Ledger;
use dolos_redis_harness::node_config::{self, NodeFile};
use dolos_redis_harness::timeline::elapsed;
use dolos_redis_harness::{cli, say, timeline};
use dolos_redis_testkit as support;

use faults::{Fault, Kind, Schedule, Takeover};

const NODE_NAMES: [&str; 3] = ["n1", "n2", "n3"];
const FINALIZE: u32 = 4;
/// The strict bound on a new watcher after a kill -9 of the watcher: the followers check its
/// liveness every 100 ms (the default) and need two looks, whatever the TTL.
const KILL_BOUND: Duration = Duration::from_millis(500);

/// Far more blocks than any takeover gap lasts: no tx may be dropped.
const DROP: u32 = 10_000;
const TX_INTERVAL: Duration = Duration::from_millis(250);
const BLOCK_MIN: Duration = Duration::from_millis(500);
const BLOCK_MAX: Duration = Duration::from_millis(1000);
/// Chance, in percent, that a block interval ends in a fork instead of a block.
const FORK_PERCENT: u64 = 10;
const _: () = assert!(
    MAX_FORK_DEPTH < FINALIZE as usize,
    "a fork could undo a Finalized tx"
);
const PREFIX: &str = "chaos:mempool";
/// Redis's `maxmemory`: far more than an hour of the run needs (about 40 MB: the finalized log
/// keeps every tx, the event stream its default 100 000 entries), so only the "redis full"
/// fault makes it full.
const MAXMEMORY: &str = "256mb";
/// What the "redis full" fault fills with filler keys: this much above what Redis uses when the
/// fault starts.
const FILL_BYTES: u64 = 4 * 1024 * 1024;
/// One filler key's value.
const FILLER_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub secs: u64,
    pub ttl: Duration,
    pub quiet: bool,
    /// Added to the strict takeover bounds before a takeover fails the run.
    pub slack: Duration,
    /// Scheduling allowance: part of the overlap margin, and of the time a resumed node may
    /// keep its stale flag.
    pub sched: Duration,
}

const USAGE: &str = "\
usage: cargo chaos [--seed N] [--secs S] [--ttl-ms T] [--quiet] [--takeover-slack-ms M]
                   [--sched-ms M]

  --seed N                 the fault schedule's seed, decimal or 0x-hex (default: from the
                           clock; printed first, and replays the same schedule)
  --secs S                 how long to inject faults (default 60, or $DOLOS_REDIS_SOAK_SECS)
  --ttl-ms T               the watcher lock TTL (default 1000, at least 300)
  --quiet                  do not echo the nodes' output
  --takeover-slack-ms M    added to the strict takeover bounds before they fail the run
                           (default 0; the CI test passes 1000)
  --sched-ms M             scheduling allowance in the watcher overlap margin (default 50)
  -h, --help               this text";

impl Options {
    /// `None` for `--help`.
    fn parse(args: Vec<OsString>) -> Result<Option<Options>, lexopt::Error> {
        use lexopt::prelude::*;
        let mut opts = Options {
            seed: default_seed(),
            secs: match std::env::var("DOLOS_REDIS_SOAK_SECS") {
                Ok(v) => v
                    .parse()
                    .map_err(|_| format!("DOLOS_REDIS_SOAK_SECS={v:?} is not a number"))?,
                Err(_) => 60,
            },
            ttl: Duration::from_millis(1000),
            quiet: false,
            slack: Duration::ZERO,
            sched: Duration::from_millis(50),
        };
        let mut parser = lexopt::Parser::from_args(args);
        let number = |parser: &mut lexopt::Parser, option| cli::value(parser, option, parse_u64);
        let ms =
            |parser: &mut lexopt::Parser, option| number(parser, option).map(Duration::from_millis);
        while let Some(arg) = parser.next()? {
            match arg {
                Long("seed") => opts.seed = number(&mut parser, "seed")?,
                Long("secs") => opts.secs = number(&mut parser, "secs")?,
                Long("ttl-ms") => opts.ttl = ms(&mut parser, "ttl-ms")?,
                Long("takeover-slack-ms") => opts.slack = ms(&mut parser, "takeover-slack-ms")?,
                Long("sched-ms") => opts.sched = ms(&mut parser, "sched-ms")?,
                Long("quiet") => opts.quiet = true,
                Short('h') | Long("help") => return Ok(None),
                _ => return Err(arg.unexpected()),
            }
        }
        if opts.ttl < Duration::from_millis(300) {
            return Err("--ttl-ms must be at least 300: node timeouts are a fraction of it".into());
        }
        Ok(Some(opts))
    }

    /// The command that replays this run's fault schedule.
    pub fn reproduce(&self) -> String {
        let mut cmd = format!(
            "cargo chaos --seed {} --secs {} --ttl-ms {}",
            self.seed,
            self.secs,
            self.ttl.as_millis()
        );
        if !self.slack.is_zero() {
            cmd.push_str(&format!(" --takeover-slack-ms {}", self.slack.as_millis()));
        }
        if self.sched != Duration::from_millis(50) {
            cmd.push_str(&format!(" --sched-ms {}", self.sched.as_millis()));
        }
        cmd
    }

    /// Bound for anything that should happen within a TTL or two, on any machine.
    fn patience(&self) -> Duration {
        self.ttl * 5 + Duration::from_secs(20)
    }

    /// Timeouts of the nodes' mempool calls: short, so a partitioned node notices quickly.
    fn io_timeout(&self) -> Duration {
        (self.ttl / 2).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }
}

/// Decimal, or hex after `0x`.
fn parse_u64(s: &str) -> Result<u64, std::num::ParseIntError> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
}

fn default_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Small enough to type back.
    (nanos ^ u64::from(std::process::id()).rotate_left(20)) % 1_000_000_007
}

fn main() -> ExitCode {
    let args = cli::args();
    if let Some(code) = cli::node_subcommand(&args) {
        return code;
    }
    if !cfg!(unix) {
        eprintln!("the chaos run needs a Unix host (SIGSTOP, CLOCK_MONOTONIC)");
        return ExitCode::from(2);
    }
    let opts = match Options::parse(args) {
        Ok(Some(opts)) => opts,
        Ok(None) => return cli::help(USAGE),
        Err(e) => return cli::usage_error(USAGE, e),
    };
    timeline::start(7);
    // The observer's own library logs: errors only (its event reader warns on every Redis
    // restart, which is the point here).
    timeline::log_errors("chaos");
    say!("chaos seed {} (0x{:x})", opts.seed, opts.seed);
    say!("reproduce: {}", opts.reproduce());
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            say!("CHAOS RUN ABORTED: {e}");
            say!("reproduce: {}", opts.reproduce());
            ExitCode::FAILURE
        }
    }
}

/// A direct connection to Redis for what an operator does by hand (`DEL`, `PTTL`,
/// `CLIENT LIST`); reconnects after a restart.
struct Raw {
    client: redis::Client,
    conn: Option<redis::Connection>,
}

impl Raw {
    fn connection(&mut self) -> Result<&mut redis::Connection, String> {
        if self.conn.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(Duration::from_secs(1))
                .map_err(|e| e.to_string())?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            conn.set_write_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or_else(|| "no connection".into())
    }

    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, String> {
        let conn = self.connection()?;
        cmd.query(conn).map_err(|e| {
            self.conn = None;
            e.to_string()
        })
    }

    /// `SET key value`; `Ok(false)` when Redis refuses it for memory.
    fn set_unless_full(&mut self, key: &str, value: &[u8]) -> Result<bool, String> {
        let conn = self.connection()?;
        match redis::cmd("SET").arg(key).arg(value).query::<()>(conn) {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some("OOM") => Ok(false),
            Err(e) => {
                self.conn = None;
                Err(format!("SET {key}: {e}"))
            }
        }
    }
}

/// One node process, as the harness knows it.
pub struct RunMeta {
    pub id: String,
    /// Before it was spawned.
    pub started_ns: u64,
    /// After it was killed (reaped) or exited.
    pub ended_ns: Option<u64>,
    /// SIGSTOP windows: from when it was certainly stopped to when SIGCONT was sent.
    pub stops: Vec<(u64, u64)>,
}

/// A node and one of its processes.
pub type RunId = (usize, usize);

/// The random values one fault may use, drawn in a fixed order whatever the fault, so that a
/// seed replays the same schedule.
struct Draw {
    on_watcher: bool,
    follower: usize,
    hold: Duration,
    delay: Duration,
    gap: Duration,
    /// Blocks a fork right after a fault that takes the watcher away rolls back (0: no fork).
    fork: usize,
}

pub struct Chaos<'a> {
    pub opts: &'a Options,
    server: support::RedisServer,
    raw: Raw,
    pub observer: RedisMempool,
    pub ledger: Ledger,
    pub chain: Chain,
    pub nodes: Vec<Node>,
    pub meta: Vec<Vec<RunMeta>>,
    schedule: Schedule,
    pub faults: Vec<Fault>,
    /// Each `DEL` of the lock: the run that held it, and when.
    pub dels: Vec<(RunId, u64)>,
    /// Failures of the run itself: a fault that could not be injected, a state that did not
    /// settle, a node that did not answer at the end.
    pub problems: Vec<String>,
    lock_key: String,
}

impl Chaos<'_> {
    pub fn label(&self, (i, r): RunId) -> String {
        format!("{}#{}", self.nodes[i].name, r + 1)
    }

    fn current(&self, i: usize) -> RunId {
        (i, self.nodes[i].runs.len().saturating_sub(1))
    }

    pub fn flags(&self, (i, r): RunId) -> Vec<Flag> {
        self.nodes[i].runs[r].state().flags.clone()
    }

    pub fn runs(&self) -> Vec<RunId> {
        (0..self.nodes.len())
            .flat_map(|i| (0..self.nodes[i].runs.len()).map(move |r| (i, r)))
            .collect()
    }

    fn flag_up(&self, run: RunId) -> bool {
        self.flags(run).last().is_some_and(|f| f.up)
    }

    fn run_of_id(&self, id: &str) -> Option<RunId> {
        self.runs()
            .into_iter()
            .find(|&(i, r)| self.meta[i].get(r).is_some_and(|m| m.id == id))
    }

    /// The node whose current process holds the lock.
    fn watcher(&self) -> Option<usize> {
        let holder = self.observer.watcher_info().ok()?.holder?;
        let (i, r) = self.run_of_id(&holder)?;
        (self.current(i) == (i, r)).then_some(i)
    }

    /// The first flag raised (seen) at or after `since` by a process other than `except`.
    fn first_up(&self, since: u64, except: Option<RunId>) -> Option<(RunId, Flag)> {
        self.runs()
            .into_iter()
            .filter(|run| Some(*run) != except)
            .filter_map(|run| {
                self.flags(run)
                    .into_iter()
                    .find(|f| f.up && f.seen_ns >= since)
                    .map(|f| (run, f))
            })
            .min_by_key(|(_, f)| f.seen_ns)
    }

    fn first_down(&self, run: RunId, since: u64) -> Option<Flag> {
        self.flags(run)
            .into_iter()
            .find(|f| !f.up && f.seen_ns >= since)
    }

    /// When the lock expires, from its PTTL read now. Taken from before the command was sent
    /// (and PTTL rounds down), so it is at most a millisecond plus the read's latency early:
    /// a takeover measured from it can only look later than it was.
    fn lock_expiry(&mut self) -> Option<u64> {
        let sent = mono_ns();
        let pttl: i64 = self
            .raw
            .query(redis::cmd("PTTL").arg(&self.lock_key))
            .ok()?;
        (pttl >= 0).then(|| sent + pttl as u64 * 1_000_000)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let started_ns = mono_ns();
        let result = self.nodes[i].spawn(&self.chain);
        // `spawn` records the process even when it fails to open: keep the lists aligned.
        while self.meta[i].len() < self.nodes[i].runs.len() {
            let r = self.meta[i].len();
            let id = self.nodes[i].runs[r].id().unwrap_or_default();
            self.meta[i].push(RunMeta {
                id,
                started_ns,
                ended_ns: None,
                stops: Vec::new(),
            });
        }
        result.map(|_| ())
    }

    fn kill(&mut self, i: usize) {
        let (_, r) = self.current(i);
        self.nodes[i].kill(&self.chain);
        if let Some(m) = self.meta[i].get_mut(r) {
            m.ended_ns = Some(mono_ns());
        }
    }

    fn node_line(&self, i: usize) -> String {
        let run = self.current(i);
        format!(
            "{} (pid {}, node {})",
            self.label(run),
            self.nodes[i].pid().unwrap_or(0),
            self.meta[i]
                .get(run.1)
                .map(|m| m.id.get(..8).unwrap_or(&m.id).to_string())
                .unwrap_or_default()
        )
    }

    /// Waits for another process's flag after a fault at `t0`.
    fn await_takeover(
        &self,
        t0: u64,
        old: RunId,
        expiry: Option<u64>,
        bound: Duration,
        wait: Duration,
    ) -> Takeover {
        let mut found = None;
        support::wait_until(wait, || {
            found = self.first_up(t0, Some(old));
            found.is_some()
        });
        self.takeover_from(t0, found, expiry, bound)
    }

    fn takeover_from(
        &self,
        t0: u64,
        found: Option<(RunId, Flag)>,
        expiry: Option<u64>,
        bound: Duration,
    ) -> Takeover {
        match found {
            Some((run, flag)) => Takeover {
                ms: Some(ms_between(t0, flag.seen_ns)),
                after_expiry_ms: expiry.map(|e| ms_between(e, flag.seen_ns)),
                bound_ms: bound.as_secs_f64() * 1e3,
                by: self.label(run),
            },
            None => Takeover {
                ms: None,
                after_expiry_ms: None,
                bound_ms: bound.as_secs_f64() * 1e3,
                by: "nobody".into(),
            },
        }
    }

    fn fault(&self, kind: Kind, on_watcher: bool, target: String) -> Fault {
        Fault {
            kind,
            at: elapsed(),
            on_watcher,
            target,
            lasted_ms: None,
            takeover: None,
            flag_down_ms: None,
            full: None,
            fork: None,
            note: String::new(),
        }
    }

    fn say_takeover(&self, t: &Takeover) {
        match (t.ms, t.after_expiry_ms) {
            (Some(ms), Some(after)) => say!(
                "  -> {} took over after {ms:.0} ms ({after:.0} ms after the old lock could expire; bound {:.0} ms)",
                t.by,
                t.bound_ms
            ),
            (Some(ms), None) => say!(
                "  -> watcher {} after {ms:.0} ms (bound {:.0} ms)",
                t.by,
                t.bound_ms
            ),
            (None, _) => say!("  -> NO TAKEOVER within the patience"),
        }
    }

    fn inject(&mut self, kind: Kind, draw: &Draw) -> Result<Fault, String> {
        let w = self
            .watcher()
            .ok_or("no watcher among the running nodes before the fault")?;
        let follower = (0..self.nodes.len())
            .filter(|&i| i != w)
            .nth(draw.follower)
            .unwrap_or((w + 1) % self.nodes.len());
        match kind {
            Kind::Kill => self.fault_kill(if draw.on_watcher { w } else { follower }, w, draw),
            Kind::Stop => self.fault_stop(w, draw),
            Kind::Partition => {
                self.fault_partition(if draw.on_watcher { w } else { follower }, w, draw)
            }
            Kind::RedisRestart => self.fault_restart(w),
            Kind::DelLock => self.fault_del(w),
            Kind::RedisFull => self.fault_full(w, draw),
        }
    }

    /// Forks the chain right after the watcher was taken away, rolling back `depth` blocks
    /// (0: no fork): the blocks it applied last are abandoned, and whoever takes over must undo
    /// them when it reconciles.
    fn fork_while_away(&mut self, fault: &mut Fault, depth: usize) {
        if depth == 0 {
            return;
        }
        match self.chain.fork(depth) {
            Some(f) => {
                say!(
                    "  FORK while the watcher is away: rolled back {} blocks to slot {}, {} new \
                     from slot {}",
                    f.undone.len(),
                    f.to.slot(),
                    f.added.len(),
                    f.added.first().map_or(0, |p| p.slot())
                );
                fault.fork = Some(f.undone.len());
            }
            None => say!("  no fork: no block to undo, or the chain could not read redis"),
        }
    }

    fn fault_kill(&mut self, target: usize, w: usize, draw: &Draw) -> Result<Fault, String> {
        let on_watcher = target == w;
        let run = self.current(target);
        let mut fault = self.fault(Kind::Kill, on_watcher, self.node_line(target));
        say!(
            "FAULT kill -9 {} [{}]",
            fault.target,
            if on_watcher { "watcher" } else { "follower" }
        );
        let t0 = mono_ns();
        self.kill(target);
        if on_watcher {
            let expiry = self.lock_expiry();
            self.fork_while_away(&mut fault, draw.fork);
            // The kernel closed the dead watcher's liveness connection: the followers see it
            // gone within a few checks, long before the lock expires.
            let bound = KILL_BOUND;
            let t = self.await_takeover(t0, run, expiry, bound, self.opts.patience());
            self.say_takeover(&t);
            fault.takeover = Some(t);
        } else {
            std::thread::sleep(draw.delay);
        }
        self.spawn(target)?;
        say!("  restarted as {}", self.node_line(target));
        Ok(fault)
    }

    fn fault_stop(&mut self, w: usize, draw: &Draw) -> Result<Fault, String> {
        let run = self.current(w);
        let pid = self.nodes[w].pid().ok_or("the watcher has no process")?;
        let mut fault = self.fault(Kind::Stop, true, self.node_line(w));
        say!(
            "FAULT SIGSTOP {} for at least {} ms",
            fault.target,
            draw.hold.as_millis()
        );
        clock::send(pid, Signal::Stop)?;
        // The stopped window starts once the kernel shows it stopped, never earlier.
        if !support::wait_until(Duration::from_secs(2), || {
            clock::is_stopped(pid).unwrap_or(true)
        }) {
            let _ = clock::send(pid, Signal::Cont);
            return Err(format!("pid {pid} did not stop"));
        }
        let t_stop = mono_ns();
        let expiry = self.lock_expiry();
        self.fork_while_away(&mut fault, draw.fork.max(1));
        // At least `hold`, and until another node took over (within the patience), so that the
        // resumed node always meets a successor.
        let hold_until = t_stop + ns(draw.hold);
        let mut found = None;
        support::wait_until(self.opts.patience(), || {
            if found.is_none() {
                found = self.first_up(t_stop, Some(run));
            }
            found.is_some() && mono_ns() >= hold_until
        });
        let t_cont = mono_ns();
        clock::send(pid, Signal::Cont)?;
        self.meta[run.0][run.1].stops.push((t_stop, t_cont));
        fault.lasted_ms = Some(ms_between(t_stop, t_cont));
        let bound = self.opts.ttl + Duration::from_millis(100);
        let t = self.takeover_from(t_stop, found, expiry, bound);
        self.say_takeover(&t);
        fault.takeover = Some(t);
        // Frozen, its flag stayed up; resumed, its lease thread must lower it at once (its
        // local deadline has long passed).
        let mut down = None;
        support::wait_until(self.opts.patience(), || {
            down = self.first_down(run, t_cont);
            down.is_some()
        });
        match down {
            Some(f) => {
                let ms = ms_between(t_cont, f.seen_ns);
                fault.flag_down_ms = Some(ms);
                say!(
                    "  SIGCONT after {:.0} ms; its stale flag came down {ms:.1} ms after",
                    ms_between(t_stop, t_cont)
                );
            }
            None => {
                fault.note = "the resumed node never lowered its flag".into();
                self.problems.push(format!(
                    "{} never lowered its flag after SIGCONT",
                    fault.target
                ));
                say!("  SIGCONT; the resumed node NEVER lowered its flag");
            }
        }
        Ok(fault)
    }

    fn fault_partition(&mut self, target: usize, w: usize, draw: &Draw) -> Result<Fault, String> {
        let on_watcher = target == w;
        let run = self.current(target);
        let mut fault = self.fault(Kind::Partition, on_watcher, self.node_line(target));
        say!(
            "FAULT partition {} [{}] from redis for at least {} ms",
            fault.target,
            if on_watcher { "watcher" } else { "follower" },
            draw.hold.as_millis()
        );
        self.nodes[target].proxy.blackhole();
        let t0 = mono_ns();
        let expiry = if on_watcher { self.lock_expiry() } else { None };
        if on_watcher {
            self.fork_while_away(&mut fault, draw.fork);
        }
        let hold_until = t0 + ns(draw.hold);
        let mut found = None;
        support::wait_until(self.opts.patience(), || {
            if on_watcher && found.is_none() {
                found = self.first_up(t0, Some(run));
            }
            (!on_watcher || found.is_some()) && mono_ns() >= hold_until
        });
        if on_watcher {
            let bound = self.opts.ttl + Duration::from_millis(100);
            let t = self.takeover_from(t0, found, expiry, bound);
            self.say_takeover(&t);
            fault.takeover = Some(t);
            if let Some(f) = self.first_down(run, t0) {
                let ms = ms_between(t0, f.seen_ns);
                fault.flag_down_ms = Some(ms);
                say!("  the cut-off watcher lowered its flag {ms:.0} ms after the cut");
            }
        }
        self.nodes[target].proxy.heal();
        fault.lasted_ms = Some(ms_between(t0, mono_ns()));
        say!("  healed after {:.0} ms", fault.lasted_ms.unwrap_or(0.0));
        Ok(fault)
    }

    fn fault_restart(&mut self, w: usize) -> Result<Fault, String> {
        let holder = self.current(w);
        let mut fault = self.fault(Kind::RedisRestart, false, "redis".into());
        say!("FAULT redis restart (SIGKILL, then start on the same AOF)");
        let before = self
            .observer
            .stats()
            .map_err(|e| format!("stats before the restart: {e}"))?;
        let t0 = mono_ns();
        let server = &mut self.server;
        let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.restart()));
        let t_back = mono_ns();
        if restarted.is_err() {
            return Err("redis did not come back (see the panic above)".into());
        }
        fault.lasted_ms = Some(ms_between(t0, t_back));
        // Counters that only grow: one that went back means the AOF lost acknowledged writes.
        // (Not the chain's height: an undo lowers it. A lost confirm would show in the final
        // check that the applied chain is the chain.)
        let mut after = None;
        support::wait_until(self.opts.patience(), || {
            after = self.observer.stats().ok();
            after.is_some()
        });
        match after {
            Some(a)
                if a.watcher.epoch >= before.watcher.epoch
                    && a.finalized_log >= before.finalized_log => {}
            Some(a) => self.problems.push(format!(
                "redis came back with less than it had: epoch {} -> {}, log {} -> {}",
                before.watcher.epoch, a.watcher.epoch, before.finalized_log, a.finalized_log
            )),
            None => self
                .problems
                .push("the observer could not read redis after the restart".into()),
        }
        // A watcher again: the lock held by a node whose flag is up.
        let mut holder_now = None;
        support::wait_until(self.opts.patience(), || {
            holder_now = self.watcher();
            holder_now.is_some_and(|i| self.flag_up(self.current(i)))
        });
        let bound = self.opts.ttl + Duration::from_millis(100);
        let kept =
            holder_now == Some(w) && self.first_down(holder, t0).is_none() && self.flag_up(holder);
        let t = if kept {
            Takeover {
                ms: Some(0.0),
                after_expiry_ms: None,
                bound_ms: bound.as_secs_f64() * 1e3,
                by: format!("{} (kept its lease)", self.label(holder)),
            }
        } else {
            let found = self.first_up(t0, None);
            // Measured from when Redis answered again: nobody could acquire before.
            let mut t = self.takeover_from(t_back, found, None, bound);
            if let Some(ms) = t.ms.as_mut() {
                *ms = ms.max(0.0);
            }
            t
        };
        say!(
            "  redis back after {:.0} ms; watcher {} {}",
            fault.lasted_ms.unwrap_or(0.0),
            t.by,
            match t.ms {
                Some(ms) if kept => format!("({ms:.0} ms without one)"),
                Some(ms) => format!("{ms:.0} ms after redis was back"),
                None => "NOT back within the patience".into(),
            }
        );
        fault.takeover = Some(t);
        Ok(fault)
    }

    fn fault_del(&mut self, w: usize) -> Result<Fault, String> {
        let run = self.current(w);
        let mut fault = self.fault(Kind::DelLock, true, self.node_line(w));
        let epoch = self
            .observer
            .watcher_info()
            .map_err(|e| format!("watcher_info: {e}"))?
            .epoch;
        say!(
            "FAULT DEL {} (held by {}, epoch {epoch})",
            self.lock_key,
            fault.target
        );
        let t0 = mono_ns();
        let deleted: i64 = self.raw.query(redis::cmd("DEL").arg(&self.lock_key))?;
        self.dels.push((run, t0));
        if deleted != 1 {
            fault.note = "the lock was already gone".into();
        }
        let mut info = None;
        support::wait_until(self.opts.patience(), || {
            info = self
                .observer
                .watcher_info()
                .ok()
                .filter(|i| i.epoch > epoch);
            info.is_some()
        });
        let t1 = mono_ns();
        let bound = self.opts.ttl / 3 + Duration::from_millis(100);
        let by = info
            .as_ref()
            .and_then(|i| i.holder.as_deref())
            .and_then(|h| self.run_of_id(h));
        let t = Takeover {
            ms: info.as_ref().map(|_| ms_between(t0, t1)),
            after_expiry_ms: None,
            bound_ms: bound.as_secs_f64() * 1e3,
            by: by.map(|r| self.label(r)).unwrap_or_else(|| "nobody".into()),
        };
        // The old holder learns at its next renewal; until then its flag is stale (Redis fences
        // its confirm calls).
        if by != Some(run) {
            let mut down = None;
            support::wait_until(self.opts.patience(), || {
                down = self.first_down(run, t0);
                down.is_some()
            });
            fault.flag_down_ms = down.map(|f| ms_between(t0, f.seen_ns));
            if down.is_none() {
                self.problems.push(format!(
                    "{} never lowered its flag after the DEL",
                    fault.target
                ));
            }
        }
        say!(
            "  new epoch after {} by {}{}",
            t.ms.map_or("NEVER".into(), |ms| format!("{ms:.0} ms")),
            t.by,
            fault.flag_down_ms.map_or(String::new(), |ms| format!(
                "; the old holder lowered its flag {ms:.0} ms after the DEL"
            ))
        );
        fault.takeover = Some(t);
        Ok(fault)
    }

    /// `used_memory` and `maxmemory` from `INFO memory`.
    fn memory(&mut self) -> Result<(u64, u64), String> {
        let info: String = self.raw.query(redis::cmd("INFO").arg("memory"))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("no {name} in INFO memory"))
        };
        Ok((field("used_memory")?, field("maxmemory")?))
    }

    /// Every call the nodes reported refused for memory so far, by name.
    fn refused_for_memory(&self) -> Vec<String> {
        self.runs()
            .into_iter()
            .flat_map(|(i, r)| self.nodes[i].runs[r].state().refused_for_memory.clone())
            .collect()
    }

    /// Writes filler keys numbered from `next` until Redis refuses one for memory.
    fn fill(&mut self, next: &mut usize) -> Result<(), String> {
        let value = vec![b'f'; FILLER_BYTES];
        while self
            .raw
            .set_unless_full(&format!("chaos:filler:{next}"), &value)?
        {
            *next += 1;
        }
        Ok(())
    }

    fn fault_full(&mut self, w: usize, draw: &Draw) -> Result<Fault, String> {
        let holder = self.current(w);
        let mut fault = self.fault(Kind::RedisFull, false, "redis".into());
        let before = self
            .observer
            .watcher_info()
            .map_err(|e| format!("watcher_info before the fault: {e}"))?;
        let refused_before = self.refused_for_memory().len();
        let (used, max) = self.memory()?;
        let hold = draw.hold * 2;
        say!(
            "FAULT redis full: filler keys up to a maxmemory of {:.1} MB (used {:.1} MB) for {} ms",
            (used + FILL_BYTES) as f64 / 1048576.0,
            used as f64 / 1048576.0,
            hold.as_millis()
        );
        self.raw.query::<()>(
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(used + FILL_BYTES),
        )?;
        let t0 = mono_ns();
        let mut next = 0;
        // Held full: Redis frees some memory on its own (the query buffers of clients that
        // sent big values, or went idle), up to a few hundred kB, which the nodes' writes
        // would take; so once the fillers reached the limit it goes 1 MB below what is used.
        let held = self.fill(&mut next).and_then(|_| {
            let (used, _) = self.memory()?;
            self.raw.query::<()>(
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("maxmemory")
                    .arg(used.saturating_sub(1024 * 1024)),
            )?;
            std::thread::sleep(Duration::from_nanos(
                (t0 + ns(hold)).saturating_sub(mono_ns()),
            ));
            Ok(())
        });
        // Freed whatever happened: the fillers go, the limit comes back.
        let mut freed = Ok(());
        for i in 0..next {
            if let Err(e) = self
                .raw
                .query::<i64>(redis::cmd("DEL").arg(format!("chaos:filler:{i}")))
            {
                freed = Err(e);
            }
        }
        let restored = self
            .raw
            .query::<()>(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(max));
        let t1 = mono_ns();
        held?;
        freed?;
        restored?;
        fault.lasted_ms = Some(ms_between(t0, t1));
        let after = self
            .observer
            .watcher_info()
            .map_err(|e| format!("watcher_info after the fault: {e}"))?;
        let refused: Vec<String> = self.refused_for_memory()[refused_before..].to_vec();
        let kept_lock = after.epoch == before.epoch
            && after.holder == before.holder
            && self.first_down(holder, t0).is_none();
        say!(
            "  freed after {:.0} ms ({next} fillers); {} calls refused for memory meanwhile ({}); \
             the watcher {}",
            fault.lasted_ms.unwrap_or(0.0),
            refused.len(),
            count_by_name(&refused),
            if kept_lock {
                "kept its lock"
            } else {
                "LOST its lock"
            }
        );
        if refused.is_empty() {
            self.problems
                .push("redis full: no node saw a call refused for memory".into());
        }
        fault.full = Some(crate::faults::FullRedis { refused, kept_lock });
        Ok(fault)
    }

    /// Why the cluster is not in a steady state yet, if it is not: every node running and
    /// reaching Redis, one watcher (the lock's holder, flag up, nobody else's flag up) whose
    /// applied chain ends with the chain's tip, and every node's lease connection open.
    fn unsettled(&mut self) -> Option<String> {
        for node in self.nodes.iter_mut() {
            if !node.alive() {
                return Some(format!("{} is not running", node.name));
            }
        }
        let tip = self.chain.progress().tip();
        let info = match self.observer.watcher_info() {
            Ok(info) => info,
            Err(e) => return Some(format!("watcher_info: {e}")),
        };
        let Some(holder) = info.holder else {
            return Some("nobody holds the lock".into());
        };
        let Some(holder_run) = self.run_of_id(&holder) else {
            return Some(format!("the lock is held by an unknown node {holder}"));
        };
        for i in 0..self.nodes.len() {
            let run = self.current(i);
            if self.flag_up(run) != (run == holder_run) {
                return Some(format!(
                    "{}'s flag is {} (lock holder {})",
                    self.label(run),
                    if self.flag_up(run) { "up" } else { "down" },
                    self.label(holder_run)
                ));
            }
            if !self.nodes[i].runs[run.1].state().link_up() {
                return Some(format!("{} cannot reach redis", self.label(run)));
            }
        }
        let applied_tip = match self.observer.applied_points(1) {
            Ok(points) => points.first().copied(),
            Err(e) => return Some(format!("applied_points: {e}")),
        };
        if applied_tip != tip {
            return Some(format!(
                "the applied chain ends at slot {:?}, the chain at slot {:?}",
                applied_tip.map(|p| p.slot()),
                tip.map(|p| p.slot())
            ));
        }
        let list: String = match self.raw.query(redis::cmd("CLIENT").arg("LIST")) {
            Ok(list) => list,
            Err(e) => return Some(format!("CLIENT LIST: {e}")),
        };
        for i in 0..self.nodes.len() {
            let run = self.current(i);
            let name = format!("name=dolos-redis:{}:lease", self.meta[i][run.1].id);
            if !list.lines().any(|l| l.split(' ').any(|f| f == name)) {
                return Some(format!("{} has no lease connection yet", self.label(run)));
            }
        }
        None
    }

    fn settle(&mut self, after: &str) -> Result<(), String> {
        let patience = self.opts.patience();
        let mut why = None;
        if support::wait_until(patience, || {
            why = self.unsettled();
            why.is_none()
        }) {
            Ok(())
        } else {
            Err(format!(
                "not settled {patience:?} after {after}: {}",
                why.unwrap_or_default()
            ))
        }
    }

    fn draw(&mut self) -> Draw {
        let ttl = self.opts.ttl;
        Draw {
            on_watcher: self.schedule.chance(70),
            follower: self.schedule.below(self.nodes.len() - 1),
            hold: self.schedule.between(ttl * 6 / 5, ttl * 2),
            delay: self.schedule.between(Duration::ZERO, ttl),
            gap: self
                .schedule
                .between(Duration::from_millis(500), Duration::from_millis(1500)),
            fork: match self.schedule.below(3) {
                0 => 0,
                _ => 1 + self.schedule.below(MAX_FORK_DEPTH),
            },
        }
    }

    fn fault_phase(&mut self) {
        let end = Instant::now() + Duration::from_secs(self.opts.secs);
        say!(
            "== faults for {} s (and until each kind was injected once) ==",
            self.opts.secs
        );
        // The first fault waits for blocks a fork can undo: a SIGSTOP always forks the chain
        // behind the stopped watcher (the CI test counts on it), and a fork of an empty chain
        // undoes nothing.
        let blocks = MAX_FORK_DEPTH;
        if !support::wait_until(BLOCK_MAX * (blocks as u32 + 2), || {
            self.chain.blocks().len() >= blocks
        }) {
            self.problems.push(format!(
                "the chain held fewer than {blocks} blocks before the faults"
            ));
        }
        while Instant::now() < end || !self.schedule.covered() {
            let kind = self.schedule.next_kind();
            let draw = self.draw();
            match self.inject(kind, &draw) {
                Ok(fault) => self.faults.push(fault),
                Err(e) => {
                    self.problems.push(format!("{}: {e}", kind.label()));
                    say!("FAULT {} could not be injected: {e}", kind.label());
                    return;
                }
            }
            if let Err(e) = self.settle(kind.label()) {
                say!("STUCK: {e}");
                self.problems.push(e);
                return;
            }
            // A quiet gap, so the next fault starts from a steady state and its takeover is
            // its own.
            std::thread::sleep(draw.gap);
        }
    }

    /// Stops faults, forks and submissions, lets the chain finalize everything, stops the
    /// chain.
    fn final_phase(&mut self) {
        say!("== faults stopped: healing, no more forks, stopping submissions, finalizing everything ==");
        self.chain.calm();
        for node in &self.nodes {
            node.proxy.heal();
        }
        if let Err(e) = self.settle("the last fault") {
            say!("STUCK: {e}");
            self.problems.push(e);
        }
        for i in 0..self.nodes.len() {
            self.chain.send(i, "submit off");
        }
        let deadline = BLOCK_MAX * (FINALIZE + 8) + self.opts.patience();
        let done = support::wait_until(deadline, || {
            let Ok(stats) = self.observer.stats() else {
                return false;
            };
            let live = stats.pending + stats.propagated + stats.acknowledged + stats.confirmed;
            let s = self.ledger.state();
            let settled = (s.finalized + s.dropped) as usize;
            live == 0 && settled == s.txs.len() && stats.finalized_log as usize == settled
        });
        if !done {
            self.problems.push(format!(
                "not every accepted tx was finalized within {deadline:?}"
            ));
        }
        let height = self.chain.stop();
        let tip = self.chain.progress().tip();
        let applied = support::wait_until(self.opts.patience(), || {
            self.ledger.state().applied.last().copied() == tip
                && self.observer.applied_points(1).ok() == tip.map(|t| vec![t])
        });
        if !applied {
            self.problems.push(format!(
                "the chain's last block (slot {:?}) was not applied in time",
                tip.map(|t| t.slot())
            ));
        }
        say!(
            "chain stopped at slot {} ({height} blocks)",
            tip.map_or(0, |t| t.slot())
        );
    }

    /// Every node must be alive, answer a ping with a Redis round trip, and exit cleanly.
    fn stop_nodes(&mut self) {
        for i in 0..self.nodes.len() {
            let run = self.current(i);
            if !self.nodes[i].alive() {
                self.problems
                    .push(format!("{} is not running at the end", self.label(run)));
                continue;
            }
            let token = format!("end-{i}");
            self.chain.send(i, &format!("ping {token}"));
            let report = self.nodes[i].runs[run.1].clone();
            let answered = support::wait_until(Duration::from_secs(10), || {
                report
                    .state()
                    .pongs
                    .iter()
                    .any(|(t, ok)| *t == token && *ok)
            });
            if !answered {
                self.problems.push(format!(
                    "{} did not answer a ping through redis within 10 s",
                    self.label(run)
                ));
            }
        }
        for i in 0..self.nodes.len() {
            let run = self.current(i);
            let quit = self.nodes[i].quit(&self.chain, Duration::from_secs(10));
            if let Some(m) = self.meta[i].get_mut(run.1) {
                m.ended_ns.get_or_insert_with(mono_ns);
            }
            if let Err(e) = quit {
                self.problems
                    .push(format!("{} did not stop cleanly: {e}", self.label(run)));
            }
        }
    }
}

/// `receive 12, confirm 3`: how many of each name.
pub fn count_by_name(names: &[String]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for name in names {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(n, c)| format!("{n} {c}")).collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn run(opts: &Options) -> Result<bool, String> {
    say!(
        "chaos run: {} nodes, lock TTL {} ms, faults for {} s, a block every {}-{} ms, \
         confirm(F = {FINALIZE}, D = {DROP})",
        NODE_NAMES.len(),
        opts.ttl.as_millis(),
        opts.secs,
        BLOCK_MIN.as_millis(),
        BLOCK_MAX.as_millis()
    );
    let server = support::RedisServer::start_with(support::ServerOptions {
        appendonly: true,
        extra_args: ["--maxmemory", MAXMEMORY, "--maxmemory-policy", "noeviction"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    say!(
        "redis: private redis-server on {} (appendonly yes, appendfsync always, maxmemory \
         {MAXMEMORY}, noeviction)",
        server.addr()
    );
    let raw = Raw {
        client: redis::Client::open(server.url()).map_err(|e| e.to_string())?,
        conn: None,
    };
    let observer = RedisMempool::open(
        Config::new(server.url())
            .key_prefix(PREFIX)
            .watcher_candidate(false)
            .max_finalized(1_000_000)
            .connect_timeout(Duration::from_secs(1))
            .command_timeout(Duration::from_secs(2)),
    )
    .map_err(|e| format!("cannot open the observer: {e}"))?;
    let ledger = Ledger::start(&observer);
    let dir = node_config::temp_dir("chaos")?; // the nodes' files, removed at the end
    let mut nodes = Vec::new();
    for (i, name) in NODE_NAMES.iter().enumerate() {
        let proxy = support::FaultProxy::start(server.addr());
        let path = NodeFile {
            name,
            url: &proxy.url(),
            prefix: PREFIX,
            pool_size: 4,
            max_finalized: 1_000_000,
            ttl: opts.ttl,
            io_timeout: opts.io_timeout(),
            tx_interval: TX_INTERVAL,
            finalize: FINALIZE,
            drop: DROP,
            chaos: true,
        }
        .write(dir.path())?;
        let mut node = Node::new(i, name, path, proxy);
        node.echo = !opts.quiet;
        nodes.push(node);
    }
    let chain = Chain::start(
        observer.clone(),
        Pace {
            min: BLOCK_MIN,
            max: BLOCK_MAX,
            fork_percent: FORK_PERCENT,
            seed: opts.seed,
        },
        nodes.len(),
    );
    let mut chaos = Chaos {
        opts,
        server,
        raw,
        observer,
        ledger,
        chain,
        meta: nodes.iter().map(|_| Vec::new()).collect(),
        nodes,
        schedule: Schedule::new(opts.seed),
        faults: Vec::new(),
        dels: Vec::new(),
        problems: Vec::new(),
        lock_key: format!("{PREFIX}:watcher:lock"),
    };
    for i in 0..chaos.nodes.len() {
        chaos.spawn(i)?;
        say!(
            "started {} through proxy {}",
            chaos.node_line(i),
            chaos.nodes[i].proxy.addr()
        );
    }
    chaos.settle("start-up")?;
    chaos.fault_phase();
    chaos.final_phase();
    chaos.stop_nodes();
    let passed = chaos.report();
    Ok(passed)
}
