//! Benchmark: what a shared mempool call costs next to Redis itself, and whether it slows down as
//! the mempool grows.
//!
//! ```text
//! cargo perf                                           # quick: about a minute
//! cargo perf --full                                    # more iterations and longer runs
//! cargo perf --sizes 1000,10000 --iters 500 --trials 5
//! cargo perf --only calls,scaling --profile
//! REDIS_URL=redis://127.0.0.1:6379 cargo perf
//! ```
//!
//! (`cargo perf` is `cargo run --release -p dolos-redis-harness --bin bench --`, an alias of
//! `.cargo/config.toml`; `cargo bench` is cargo's own.)
//!
//! `--help` lists the options. `--profile` adds a table of the commands each script runs and
//! their server time (from `INFO commandstats` around every measured call): the first place to
//! look when a call misses its target.
//!
//! Without `REDIS_URL` it starts a private `redis-server` on a free port. The report (Markdown)
//! goes to stdout, progress to stderr. Every figure comes from the public API, plus
//! `baseline_set` (a plain `SET` through the same pool) as the physical limit:
//!
//! * round trips per call, counted with `MONITOR` (commands run inside a script show as
//!   `[0 lua]` and are not round trips; only the pool's connections count, found by the names the
//!   library gives them, so the lease thread is left out);
//! * median and p99 latency of each call on one thread, with MONITOR off, calls interleaved in
//!   rounds so that background load hits all of them alike; and the time the server spent in
//!   the call (SLOWLOG with a threshold of 0, in chunks between the latency rounds);
//! * throughput of `receive` and of `SET` with 1 and 8 threads sharing one pool;
//! * scaling of `receive`, `mark_inflight(50)`, `check_status` with the pending queue and of
//!   `confirm(50 seen)` with the inflight set, all sizes alive at once and measured in
//!   alternation;
//! * issue 10's table: the server time of each call in units of a plain `SET`'s, in Dolos's
//!   steady state, with end-to-end latencies next to a `SET` made right after each call
//!   (`steady.rs` says how), and the two bulk reads next to their floor on the same cold txs
//!   and next to the same reads made of plain commands in two round trips;
//! * the issue's first table end to end: each call per item next to the least the reference
//!   mempool can take on this machine (`per_item.rs`);
//! * what the server's Lua engine charges per item, and the two marks next to the least a
//!   script doing their job costs on the same txs (`floors.rs`), and the steady state's
//!   `confirm` next to the least a script doing a block's work costs (`confirm_floor.rs`);
//! * what 100 txs cost to read from cold memory kept as hash fields or as stream entries, on
//!   keys of its own (`layouts.rs`);
//! * the longest single command while a 100k-entry mempool is read whole (SLOWLOG);
//! * Redis memory per tracked tx beyond its payload;
//! * watcher takeover after kill -9 (at the default TTL of 10 s and at 1 s, and with liveness
//!   checks off), SIGSTOP, a black-hole partition and `shutdown` (`takeover.rs`).
//!
//! Calls that change state are measured in a steady state: what a measured call moves is moved
//! back afterwards with untimed calls (a rollback `confirm` returns inflight txs to the pending
//! queue), so every iteration sees the same mempool size.

mod confirm_floor;
mod floors;
mod layouts;
mod options;
mod per_item;
mod report;
mod steady;
mod takeover;
mod util;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use dolos_redis::{ChainPoint, Config, ConfirmOutcome, MempoolTxStage, RedisMempool, TxHash};
use dolos_redis_harness::cli;
use dolos_redis_testkit::monitor::{self, Monitor};
use dolos_redis_testkit::{self as support, Rng};

use options::Opts;
use report::{Goal, Memory, Results, RoundTrips, Scaling, Takeover, TakeoverRow, Throughput};
use util::{human_count, median, Samples};

/// Transactions per batch call (`mark_inflight`, `mark_acknowledged`, `confirm`'s seen list).
const BATCH: usize = 50;
/// A finalize / drop threshold that no tx reaches during the benchmark.
const NEVER: u32 = 1_000_000;
/// Threads that fill the mempool and that the 8-thread figures use; also the pool size.
const THREADS: usize = 8;
const POOL: u32 = THREADS as u32;
/// Batch calls run 1/BATCH_SHARE of the iterations (see [`Call::is_batch`]).
const BATCH_SHARE: usize = 4;
/// Iterations of each call per round of the interleaved latency loops.
const ROUND: usize = 100;

// ---------------------------------------------------------------------------------------------
// The calls

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Call {
    Set,
    Receive,
    HasPending,
    PeekPending,
    MarkInflight,
    MarkAcknowledged,
    FindInflight,
    PeekInflight,
    StatusPending,
    StatusInflight,
    StatusFinalized,
    StatusUnknown,
    Confirm,
    DumpFinalized,
    /// `rollback_to` the point 1 (10) blocks below the tip; each undone block confirmed 50 (5)
    /// of the inflight txs, which go back to pending. Only in the scaling table.
    RollbackTo1,
    RollbackTo10,
}

/// The API calls of the per-call table, in the order of the issue.
const API_CALLS: [Call; 13] = [
    Call::Receive,
    Call::HasPending,
    Call::PeekPending,
    Call::MarkInflight,
    Call::MarkAcknowledged,
    Call::FindInflight,
    Call::PeekInflight,
    Call::StatusPending,
    Call::StatusInflight,
    Call::StatusFinalized,
    Call::StatusUnknown,
    Call::Confirm,
    Call::DumpFinalized,
];

impl Call {
    /// Calls that move or read a batch of txs: each takes ten times longer than a single-tx
    /// call (and their steady state needs untimed helper calls), so they run a quarter of the
    /// iterations.
    fn is_batch(self) -> bool {
        matches!(
            self,
            Call::PeekPending
                | Call::MarkInflight
                | Call::MarkAcknowledged
                | Call::PeekInflight
                | Call::Confirm
                | Call::DumpFinalized
                | Call::RollbackTo1
                | Call::RollbackTo10
        )
    }

    /// How many of `n` iterations this call runs.
    fn share(self, n: usize) -> usize {
        if self.is_batch() {
            n.div_ceil(BATCH_SHARE)
        } else {
            n
        }
    }

    fn label(self) -> &'static str {
        match self {
            Call::Set => "`SET` (baseline_set, 300 B)",
            Call::Receive => "`receive` (300 B)",
            Call::HasPending => "`has_pending`",
            Call::PeekPending => "`peek_pending(50)`",
            Call::MarkInflight => "`mark_inflight(50)`",
            Call::MarkAcknowledged => "`mark_acknowledged(50)`",
            Call::FindInflight => "`find_inflight`",
            Call::PeekInflight => "`peek_inflight(100)`",
            Call::StatusPending => "`check_status` (pending)",
            Call::StatusInflight => "`check_status` (inflight)",
            Call::StatusFinalized => "`check_status` (finalized)",
            Call::StatusUnknown => "`check_status` (unknown)",
            Call::Confirm => "`confirm` (50 seen)",
            Call::DumpFinalized => "`dump_finalized(0, 100)`",
            Call::RollbackTo1 => "`rollback_to` 1 block (50 txs back)",
            Call::RollbackTo10 => "`rollback_to` 10 blocks (50 txs back)",
        }
    }
}

/// How a step hands its measured call to the phase: the phase runs the closure exactly once,
/// timing it, fencing it with MONITOR markers, or reading the slowlog around it.
type Measure<'a> = dyn FnMut(&mut dyn FnMut()) + 'a;

// ---------------------------------------------------------------------------------------------
// A mempool under test

/// One mempool (its own key prefix) opened by one node, which is therefore the watcher.
struct Node {
    mp: RedisMempool,
    prefix: String,
    /// Names this mempool's tx population (see `util::tx_hash`).
    tag: u64,
    slot: u64,
    /// The blocks this node applied and did not undo, oldest first: the applied chain.
    chain: Vec<ChainPoint>,
}

impl Node {
    fn open(url: &str, prefix: String, tag: u64, max_finalized: usize) -> Node {
        let config = Config::new(url)
            .key_prefix(prefix.clone())
            .pool_size(POOL)
            .max_pending(100_000_000)
            .max_finalized(max_finalized);
        let mp = RedisMempool::open(config).expect("open the mempool");
        assert!(
            support::wait_until(Duration::from_secs(5), || mp.is_watcher()),
            "a lone node should become the watcher"
        );
        Node {
            mp,
            prefix,
            tag,
            slot: 0,
            chain: Vec::new(),
        }
    }

    fn hashes(&self, indices: impl IntoIterator<Item = u64>) -> Vec<TxHash> {
        indices
            .into_iter()
            .map(|i| util::tx_hash(self.tag, i))
            .collect()
    }

    /// A fresh block point.
    fn point(&mut self) -> ChainPoint {
        self.slot += 10;
        ChainPoint::Slot(self.slot)
    }

    /// Applies a new block on top of the chain.
    fn apply(&mut self, seen: &[TxHash], finalize: u32) {
        let point = self.point();
        let outcome = self
            .mp
            .confirm(&point, seen, &[], finalize, NEVER)
            .expect("confirm");
        assert_eq!(outcome, ConfirmOutcome::Applied, "helper confirm");
        self.chain.push(point);
    }

    /// Undoes the tip block (which the timed call applied, or `apply`), naming `batch`: they go
    /// back to the tail of the pending queue.
    fn rollback(&mut self, batch: &[TxHash]) {
        let tip = self.chain.pop().expect("a block to undo");
        let outcome = self
            .mp
            .confirm(&tip, &[], batch, NEVER, NEVER)
            .expect("confirm (undo)");
        assert_eq!(outcome, ConfirmOutcome::Applied, "helper undo");
    }

    /// Inflight txs back to the tail of the pending queue: an empty block, undone naming them.
    fn back_to_pending(&mut self, batch: &[TxHash]) {
        self.apply(&[], NEVER);
        self.rollback(batch);
    }

    /// Pending txs out of the mempool, into the finalized log.
    fn retire(&mut self, batch: &[TxHash]) {
        self.mp.mark_inflight(batch).expect("mark_inflight");
        self.apply(batch, 1);
    }

    /// Receives txs `range` with [`THREADS`] threads sharing the pool; returns how long it took.
    fn fill(&self, range: std::ops::Range<u64>) -> Duration {
        let next = AtomicU64::new(range.start);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                let mp = self.mp.clone();
                let next = &next;
                let end = range.end;
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        return;
                    }
                    mp.receive(util::tx(self.tag, i)).expect("receive (fill)");
                });
            }
        });
        start.elapsed()
    }

    fn mark_all_inflight(&self, range: std::ops::Range<u64>) {
        let all: Vec<u64> = range.collect();
        for chunk in all.chunks(500) {
            let hashes = self.hashes(chunk.iter().copied());
            self.mp
                .mark_inflight(&hashes)
                .expect("mark_inflight (setup)");
        }
    }

    fn pool_name(&self) -> String {
        format!("dolos-redis:{}:pool", self.mp.node_id())
    }
}

/// A range of tx indices that are in some state between steps.
#[derive(Clone, Copy, Default)]
struct Span {
    start: u64,
    len: u64,
}

/// Drives one [`Node`] through the calls, keeping its state steady.
struct Workload {
    node: Node,
    /// Pending between steps.
    pending: Span,
    /// Propagated between steps.
    inflight: Span,
    /// In the finalized log.
    finalized: Span,
    /// The next never-used index, for `receive`.
    fresh: u64,
    received: Vec<TxHash>,
    pending_cursor: u64,
    inflight_cursor: u64,
    set_counter: u64,
    rng: Rng,
}

impl Workload {
    fn new(node: Node, pending: Span, inflight: Span, finalized: Span) -> Workload {
        let tag = node.tag;
        Workload {
            node,
            pending,
            inflight,
            finalized,
            fresh: 1 << 40,
            received: Vec::new(),
            pending_cursor: 0,
            inflight_cursor: 0,
            set_counter: 0,
            rng: Rng::new(tag),
        }
    }

    fn rotate(cursor: &mut u64, span: Span) -> Vec<u64> {
        assert!(span.len >= BATCH as u64, "a span must hold a batch");
        let batch = (0..BATCH as u64)
            .map(|k| span.start + (*cursor + k) % span.len)
            .collect();
        *cursor = (*cursor + BATCH as u64) % span.len;
        batch
    }

    fn pick(&mut self, span: Span) -> TxHash {
        util::tx_hash(self.node.tag, span.start + self.rng.below(span.len))
    }

    /// Runs `call` once through `measure`, with whatever untimed calls keep the state steady.
    fn step(&mut self, call: Call, measure: &mut Measure<'_>) {
        match call {
            Call::Set => {
                let key = format!("{}:set:{}", self.node.prefix, self.set_counter % 1000);
                self.set_counter += 1;
                let value = [0x5a; util::PAYLOAD_LEN];
                let mp = &self.node.mp;
                measure(&mut || mp.baseline_set(&key, &value).expect("SET"));
            }
            Call::Receive => {
                let mut tx = Some(util::tx(self.node.tag, self.fresh));
                self.fresh += 1;
                let hash = util::tx_hash(self.node.tag, self.fresh - 1);
                let mp = &self.node.mp;
                measure(&mut || {
                    if let Some(tx) = tx.take() {
                        mp.receive(tx).expect("receive");
                    }
                });
                self.received.push(hash);
                if self.received.len() == BATCH {
                    let batch = std::mem::take(&mut self.received);
                    self.node.retire(&batch);
                }
            }
            Call::HasPending => {
                let mp = &self.node.mp;
                measure(&mut || assert!(mp.has_pending().expect("has_pending")));
            }
            Call::PeekPending => {
                let mp = &self.node.mp;
                measure(&mut || {
                    assert_eq!(mp.peek_pending(BATCH).expect("peek_pending").len(), BATCH)
                });
            }
            Call::MarkInflight => {
                let batch = self
                    .node
                    .hashes(Self::rotate(&mut self.pending_cursor, self.pending));
                let mp = &self.node.mp;
                measure(&mut || mp.mark_inflight(&batch).expect("mark_inflight"));
                self.node.back_to_pending(&batch);
            }
            Call::MarkAcknowledged => {
                let batch = self
                    .node
                    .hashes(Self::rotate(&mut self.inflight_cursor, self.inflight));
                let mp = &self.node.mp;
                measure(&mut || mp.mark_acknowledged(&batch).expect("mark_acknowledged"));
                self.node.back_to_pending(&batch);
                self.node.mp.mark_inflight(&batch).expect("mark_inflight");
            }
            Call::FindInflight => {
                let hash = self.pick(self.inflight);
                let mp = &self.node.mp;
                measure(&mut || assert!(mp.find_inflight(&hash).expect("find_inflight").is_some()));
            }
            Call::PeekInflight => {
                let mp = &self.node.mp;
                measure(&mut || {
                    assert_eq!(mp.peek_inflight(100).expect("peek_inflight").len(), 100)
                });
            }
            Call::StatusPending
            | Call::StatusInflight
            | Call::StatusFinalized
            | Call::StatusUnknown => {
                let (hash, want): (TxHash, fn(MempoolTxStage) -> bool) = match call {
                    Call::StatusPending => {
                        (self.pick(self.pending), |s| s == MempoolTxStage::Pending)
                    }
                    Call::StatusInflight => (self.pick(self.inflight), |s| s.is_inflight()),
                    Call::StatusFinalized => (self.pick(self.finalized), |s| {
                        s == MempoolTxStage::Finalized
                    }),
                    _ => (
                        util::tx_hash(!self.node.tag, self.rng.below(u64::MAX)),
                        |s| s == MempoolTxStage::Unknown,
                    ),
                };
                let mp = &self.node.mp;
                measure(&mut || {
                    let stage = mp.check_status(&hash).expect("check_status").stage;
                    assert!(want(stage), "{call:?}: unexpected stage {stage:?}");
                });
            }
            Call::Confirm => {
                let batch = self
                    .node
                    .hashes(Self::rotate(&mut self.inflight_cursor, self.inflight));
                let point = self.node.point();
                let mp = &self.node.mp;
                measure(&mut || {
                    let outcome = mp
                        .confirm(&point, &batch, &[], NEVER, NEVER)
                        .expect("confirm");
                    assert_eq!(outcome, ConfirmOutcome::Applied);
                });
                self.node.chain.push(point);
                self.node.rollback(&batch);
                self.node.mp.mark_inflight(&batch).expect("mark_inflight");
            }
            Call::RollbackTo1 | Call::RollbackTo10 => {
                let blocks = if call == Call::RollbackTo1 { 1 } else { 10 };
                let batch = self
                    .node
                    .hashes(Self::rotate(&mut self.inflight_cursor, self.inflight));
                // Untimed: the blocks to undo on top of the chain, their txs spread over them.
                let base = self
                    .node
                    .chain
                    .last()
                    .copied()
                    .unwrap_or(ChainPoint::Origin);
                let per_block = batch.len().div_ceil(blocks);
                for seen in batch.chunks(per_block) {
                    self.node.apply(seen, NEVER);
                }
                let mp = &self.node.mp;
                measure(&mut || {
                    let outcome = mp.rollback_to(&base).expect("rollback_to");
                    assert_eq!(outcome, ConfirmOutcome::Applied);
                });
                let keep = self.node.chain.len() - blocks;
                self.node.chain.truncate(keep);
                self.node.mp.mark_inflight(&batch).expect("mark_inflight");
            }
            Call::DumpFinalized => {
                let mp = &self.node.mp;
                measure(&mut || {
                    let page = mp.dump_finalized(0, 100).expect("dump_finalized");
                    assert_eq!(page.items.len(), 100);
                });
            }
        }
    }

    /// Times `n` steps of `call`.
    fn time(&mut self, call: Call, n: usize, samples: &mut Samples) {
        for _ in 0..n {
            self.step(call, &mut |f| {
                let start = Instant::now();
                f();
                samples.push(start.elapsed());
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark

struct Bench {
    url: String,
    admin: redis::Connection,
    client_info: redis::ConnectionInfo,
    /// Every key of this run starts with it.
    root: String,
    opts: Opts,
    next_tag: u64,
    /// With `--profile`: (where, call, calls measured, inner command stats).
    profiles: Vec<(String, Call, usize, util::CommandStats)>,
}

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn progress(msg: impl AsRef<str>) {
    let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[bench {t:5.1} s] {}", msg.as_ref());
}

impl Bench {
    fn connect(url: &str) -> redis::Connection {
        let client = redis::Client::open(url).expect("a valid redis URL");
        let conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to redis");
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        conn
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn node(&mut self, name: &str, max_finalized: usize) -> Node {
        let tag = self.tag();
        let node = Node::open(
            &self.url,
            format!("{}:{name}", self.root),
            tag,
            max_finalized,
        );
        self.warm(&node);
        node
    }

    /// Opens all pooled connections now, so that none is opened (with its `CLIENT SETNAME`)
    /// inside a measured call.
    fn warm(&mut self, node: &Node) {
        let name = node.pool_name();
        let ok = support::wait_until(Duration::from_secs(10), || {
            std::thread::scope(|s| {
                for _ in 0..THREADS {
                    let mp = node.mp.clone();
                    s.spawn(move || {
                        for _ in 0..50 {
                            mp.has_pending().expect("has_pending (warm-up)");
                        }
                    });
                }
            });
            let open = util::client_names(&mut self.admin)
                .values()
                .filter(|n| **n == name)
                .count();
            open >= POOL as usize
        });
        if !ok {
            progress(format!("warning: the pool of {} did not fill", node.prefix));
        }
    }

    /// Base state of the per-call table: 1000 pending, 1000 inflight, 100 finalized.
    fn base(&mut self) -> Workload {
        let node = self.node("base", 1_000_000);
        node.fill(0..2100);
        node.mark_all_inflight(1000..2100);
        let mut node = node;
        let done = node.hashes(2000..2100);
        node.retire(&done);
        Workload::new(
            node,
            Span {
                start: 0,
                len: 1000,
            },
            Span {
                start: 1000,
                len: 1000,
            },
            Span {
                start: 2000,
                len: 100,
            },
        )
    }

    fn memory(&mut self) -> Memory {
        let n = self.opts.memory_txs as u64;
        progress(format!("memory: {n} txs of {} B", util::PAYLOAD_LEN));
        let mut node = self.node("memory", 10 * n as usize);
        // Creates the keys (and warms every script) before the baseline.
        node.fill(1 << 40..(1 << 40) + 1);
        let before = util::used_memory(&mut self.admin);
        let keys_before = util::key_sizes(&mut self.admin, &node.prefix);
        node.fill(0..n);
        let pending = util::used_memory(&mut self.admin);
        let keys_pending = util::key_sizes(&mut self.admin, &node.prefix);
        node.mark_all_inflight(0..n);
        let inflight = util::used_memory(&mut self.admin);
        let keys_inflight = util::key_sizes(&mut self.admin, &node.prefix);
        let all: Vec<u64> = (0..n).collect();
        for chunk in all.chunks(500) {
            let hashes = node.hashes(chunk.iter().copied());
            node.apply(&hashes, 1);
        }
        let finalized = util::used_memory(&mut self.admin);
        let keys_finalized = util::key_sizes(&mut self.admin, &node.prefix);
        let per = |after: i64| (after - before) as f64 / n as f64 - util::PAYLOAD_LEN as f64;
        let mut by_key: BTreeMap<String, [f64; 3]> = BTreeMap::new();
        for (stage, sizes) in [keys_pending, keys_inflight, keys_finalized]
            .iter()
            .enumerate()
        {
            for (key, bytes) in sizes {
                let was = keys_before.get(key).copied().unwrap_or(0);
                by_key.entry(key.clone()).or_default()[stage] = (bytes - was) as f64 / n as f64;
            }
        }
        let out = Memory {
            pending: per(pending),
            inflight: per(inflight),
            finalized: per(finalized),
            by_key,
        };
        let prefix = node.prefix.clone();
        drop(node);
        util::delete_prefix(&mut self.admin, &prefix);
        out
    }

    fn round_trips(&mut self, work: &mut Workload) -> HashMap<Call, RoundTrips> {
        progress(format!(
            "round trips: {} monitored calls each",
            self.opts.counted
        ));
        let mut monitor = Monitor::start(&self.client_info).expect("start MONITOR");
        let pool = work.node.pool_name();
        let mut out = HashMap::new();
        for call in std::iter::once(Call::Set).chain(API_CALLS) {
            let mut windows = Vec::new();
            for _ in 0..self.opts.counted {
                let admin = &mut self.admin;
                work.step(call, &mut |f| windows.push(monitor.window(admin, f)));
            }
            // Taken after the windows: a connection opened inside one is listed too.
            let names = util::client_names(&mut self.admin);
            let mut rt = RoundTrips {
                per_call: Vec::new(),
                names: BTreeSet::new(),
                inner: 0.0,
            };
            for window in &windows {
                let ours: Vec<_> = window
                    .iter()
                    .filter(|s| s.addr != "lua" && names.get(&s.addr) == Some(&pool))
                    .collect();
                rt.per_call.push(monitor::round_trips(ours.iter().copied()));
                rt.names.extend(ours.iter().map(|s| s.cmd.clone()));
                rt.inner += window.iter().filter(|s| s.addr == "lua").count() as f64;
            }
            rt.inner /= windows.len().max(1) as f64;
            out.insert(call, rt);
        }
        out
    }

    /// Time the server spent executing each call (`iters` calls, a share of them for batch
    /// calls), from SLOWLOG with a 0 µs threshold, added to `into`. Returns false if the server
    /// does not let us change the slowlog settings.
    fn server_time(
        &mut self,
        work: &mut Workload,
        calls: &[Call],
        iters: usize,
        label: &str,
        into: &mut HashMap<Call, Samples>,
    ) -> bool {
        let (Some(old_threshold), Some(old_len)) = (
            util::config_get(&mut self.admin, "slowlog-log-slower-than"),
            util::config_get(&mut self.admin, "slowlog-max-len"),
        ) else {
            return false;
        };
        if !util::config_set(&mut self.admin, "slowlog-log-slower-than", "0")
            || !util::config_set(&mut self.admin, "slowlog-max-len", "128")
        {
            return false;
        }
        let pool = work.node.pool_name();
        let profile = self.opts.profile;
        for &call in calls {
            let samples = into.entry(call).or_default();
            let mut stats = util::CommandStats::new();
            let n = call.share(iters);
            for _ in 0..n {
                let admin = &mut self.admin;
                work.step(call, &mut |f| {
                    if profile {
                        let _: () = redis::cmd("CONFIG")
                            .arg("RESETSTAT")
                            .query(admin)
                            .expect("CONFIG RESETSTAT");
                    }
                    let _: () = redis::cmd("SLOWLOG")
                        .arg("RESET")
                        .query(admin)
                        .expect("SLOWLOG RESET");
                    f();
                    let micros: u64 = util::slowlog(admin, 32)
                        .iter()
                        .filter(|e| e.client_name == pool)
                        .map(|e| e.micros)
                        .sum();
                    samples.push(Duration::from_micros(micros));
                    if profile {
                        util::add_command_stats(admin, &mut stats);
                    }
                });
            }
            if profile {
                match self
                    .profiles
                    .iter_mut()
                    .find(|(l, c, _, _)| l == label && *c == call)
                {
                    Some((_, _, total, all)) => {
                        *total += n;
                        for (cmd, (calls, usec)) in stats {
                            let e = all.entry(cmd).or_default();
                            e.0 += calls;
                            e.1 += usec;
                        }
                    }
                    None => self.profiles.push((label.to_string(), call, n, stats)),
                }
            }
        }
        util::config_set(&mut self.admin, "slowlog-log-slower-than", &old_threshold);
        util::config_set(&mut self.admin, "slowlog-max-len", &old_len);
        true
    }

    /// Latency of every call, and (in alternation with it, so both see the same machine) the
    /// server time: SLOWLOG is on only during the server-time chunks.
    fn latency(
        &mut self,
        work: &mut Workload,
    ) -> (HashMap<Call, Samples>, Option<HashMap<Call, Samples>>) {
        let iters = self.opts.iters;
        progress(format!(
            "latency: {iters} calls each ({} for batch calls), one thread; server time \
             (SLOWLOG): {} calls each, in between",
            iters.div_ceil(BATCH_SHARE),
            self.opts.server_iters
        ));
        let mut out: HashMap<Call, Samples> = HashMap::new();
        let mut server: Option<HashMap<Call, Samples>> = Some(HashMap::new());
        let all_calls: Vec<Call> = std::iter::once(Call::Set).chain(API_CALLS).collect();
        let mut discard = Samples::default();
        for call in API_CALLS {
            work.time(call, 20, &mut discard);
        }
        let rounds = iters.div_ceil(ROUND);
        for round in 0..rounds {
            let n = ROUND.min(iters - round * ROUND);
            // receive and SET alternate call by call: their ratio is the headline figure.
            for _ in 0..n {
                work.time(Call::Receive, 1, out.entry(Call::Receive).or_default());
                work.time(Call::Set, 1, out.entry(Call::Set).or_default());
            }
            for call in &API_CALLS[1..] {
                work.time(*call, call.share(n), out.entry(*call).or_default());
            }
            if let Some(into) = server.as_mut() {
                let share = self.opts.server_iters.div_ceil(rounds);
                if !self.server_time(work, &all_calls, share, "per call", into) {
                    server = None;
                }
            }
        }
        (out, server)
    }

    fn throughput(&mut self) -> Throughput {
        let dur = self.opts.throughput;
        progress(format!(
            "throughput: receive and SET, 1 and {THREADS} threads, {:.1} s each",
            dur.as_secs_f64()
        ));
        let node = self.node("throughput", 1000);
        let next = AtomicU64::new(0);
        let tag = node.tag;
        let receive = |mp: &RedisMempool, _t: usize, _n: u64| {
            let i = next.fetch_add(1, Ordering::Relaxed);
            mp.receive(util::tx(tag, i)).expect("receive");
        };
        let value = [0x5a; util::PAYLOAD_LEN];
        let prefix = node.prefix.clone();
        let set = |mp: &RedisMempool, t: usize, n: u64| {
            mp.baseline_set(&format!("{prefix}:set:{t}:{}", n % 1000), &value)
                .expect("SET");
        };
        // Rounds in alternation, so a burst of background load does not favour one side.
        let mut ops = [(0u64, Duration::ZERO); 4];
        for _ in 0..self.opts.tput_rounds {
            for (k, (threads, op)) in [
                (1, &set as &(dyn Fn(&RedisMempool, usize, u64) + Sync)),
                (1, &receive),
                (THREADS, &set),
                (THREADS, &receive),
            ]
            .into_iter()
            .enumerate()
            {
                let (n, t) = rate(&node.mp, threads, dur / self.opts.tput_rounds, op);
                ops[k].0 += n;
                ops[k].1 += t;
            }
        }
        let per_s = |(n, t): (u64, Duration)| n as f64 / t.as_secs_f64();
        let out = Throughput {
            set1: per_s(ops[0]),
            recv1: per_s(ops[1]),
            set8: per_s(ops[2]),
            recv8: per_s(ops[3]),
        };
        let prefix = node.prefix.clone();
        drop(node);
        util::delete_prefix(&mut self.admin, &prefix);
        out
    }

    fn scaling(&mut self) -> Scaling {
        let sizes = self.opts.sizes.clone();
        let iters = self.opts.iters;
        let mut works = Vec::new();
        let mut fill = Vec::new();
        for &n in &sizes {
            progress(format!("scaling: filling {} pending", human_count(n)));
            let node = self.node(&format!("scale-{n}"), 1000);
            fill.push(node.fill(0..n as u64));
            works.push(Workload::new(
                node,
                Span {
                    start: 0,
                    len: n as u64,
                },
                Span::default(),
                Span::default(),
            ));
        }
        let mut samples: Vec<HashMap<Call, Samples>> = vec![HashMap::new(); sizes.len()];
        let mut by_round: Vec<HashMap<Call, Vec<f64>>> = vec![HashMap::new(); sizes.len()];
        let rounds = iters.div_ceil(ROUND);
        let mut interleaved = |works: &mut Vec<Workload>, calls: &[Call]| {
            let mut discard = Samples::default();
            for w in works.iter_mut() {
                for &call in calls {
                    w.time(call, BATCH, &mut discard);
                }
            }
            for round in 0..rounds {
                let n = ROUND.min(iters - round * ROUND);
                // Vary which size goes first, so none always runs right after the big fill.
                for k in 0..works.len() {
                    let i = (k + round) % works.len();
                    for &call in calls {
                        let mut round_samples = Samples::default();
                        works[i].time(call, call.share(n), &mut round_samples);
                        by_round[i]
                            .entry(call)
                            .or_default()
                            .push(round_samples.median().as_secs_f64());
                        samples[i].entry(call).or_default().extend(&round_samples);
                    }
                }
            }
        };
        progress(format!(
            "scaling: receive, mark_inflight(50), check_status at {:?} pending, {iters} calls \
             each ({} for mark_inflight)",
            sizes,
            iters.div_ceil(BATCH_SHARE)
        ));
        let pending_calls = [Call::Receive, Call::MarkInflight, Call::StatusPending];
        interleaved(&mut works, &pending_calls);
        let mut server: Vec<HashMap<Call, Samples>> = vec![HashMap::new(); sizes.len()];
        self.scaling_server_time(&mut works, &pending_calls, "pending", &mut server);
        for (w, &n) in works.iter_mut().zip(&sizes) {
            w.node.mark_all_inflight(0..n as u64);
            w.inflight = w.pending;
            w.pending = Span::default();
        }
        progress(format!(
            "scaling: confirm(50 seen), rollback_to 1 and 10 blocks at {:?} inflight, {} calls each",
            sizes,
            iters.div_ceil(BATCH_SHARE)
        ));
        let inflight_calls = [Call::Confirm, Call::RollbackTo1, Call::RollbackTo10];
        interleaved(&mut works, &inflight_calls);
        self.scaling_server_time(&mut works, &inflight_calls, "inflight", &mut server);
        for w in works {
            let prefix = w.node.prefix.clone();
            drop(w);
            util::delete_prefix(&mut self.admin, &prefix);
        }
        // Paired by round: each round measured every size within moments, so the ratio of
        // their medians in one round does not see load that came and went between rounds.
        let ratios = by_round
            .iter()
            .map(|m| {
                m.iter()
                    .map(|(call, medians)| {
                        let base = &by_round[0][call];
                        let per_round: Vec<f64> =
                            medians.iter().zip(base).map(|(x, b)| x / b).collect();
                        (*call, median(&per_round))
                    })
                    .collect()
            })
            .collect();
        Scaling {
            sizes,
            fill,
            samples,
            ratios,
            server,
        }
    }

    /// Server time of `calls` at every size, in alternating rounds like the latency.
    fn scaling_server_time(
        &mut self,
        works: &mut [Workload],
        calls: &[Call],
        what: &str,
        into: &mut [HashMap<Call, Samples>],
    ) {
        const ROUNDS: usize = 5;
        let share = self.opts.server_iters.div_ceil(ROUNDS);
        for _ in 0..ROUNDS {
            for (w, m) in works.iter_mut().zip(into.iter_mut()) {
                let label = format!(
                    "{} {what}",
                    human_count((w.pending.len + w.inflight.len) as usize)
                );
                if !self.server_time(w, calls, share, &label, m) {
                    return;
                }
            }
        }
    }

    fn takeover(&mut self) -> Takeover {
        let n = self.opts.trials;
        let (url, root) = (self.url.clone(), self.root.clone());
        let prefix = |what: &str, k: usize| format!("{root}:{what}-{k}");
        let mut prefixes = Vec::new();
        let check = Duration::from_millis(100);
        let mut rows = Vec::new();

        // kill -9 trials one after the other: the fast path is timed to the millisecond.
        for (what, ttl, tag) in [
            (
                "kill -9, TTL 10 s (the default): new watcher after the kill",
                takeover::DEFAULT_TTL,
                "kill10",
            ),
            (
                "kill -9, TTL 1 s: new watcher after the kill",
                takeover::SHORT_TTL,
                "kill1",
            ),
        ] {
            progress(format!(
                "takeover: {n} kill -9 trials, TTL {} ms",
                ttl.as_millis()
            ));
            let ms = (0..n)
                .map(|k| {
                    prefixes.push(prefix(tag, k));
                    takeover::kill_trial(&url, &prefix(tag, k), ttl, check, k)
                })
                .collect();
            rows.push(TakeoverRow {
                what,
                ms,
                goal: Goal::MedianMax(250.0, 500.0),
                early: None,
            });
        }

        // The TTL path: kill -9 without liveness checks, SIGSTOP, partition.
        let ttl = takeover::SHORT_TTL;
        let bound = ttl.as_secs_f64() * 1e3 + 100.0;
        let staggered = !self.opts.sequential_takeover;
        progress(format!(
            "takeover: {n} trials each of kill -9 without liveness checks, SIGSTOP and partition, \
             TTL {} ms ({})",
            ttl.as_millis(),
            if staggered {
                "staggered in parallel"
            } else {
                "sequential"
            }
        ));
        let off = trials(n, staggered, |k| {
            takeover::kill_trial(&url, &prefix("off", k), ttl, Duration::ZERO, k)
        });
        rows.push(TakeoverRow {
            what: "kill -9 without liveness checks, TTL 1 s: new watcher after the lock expired",
            ms: off,
            goal: Goal::MedianMax(20.0, 100.0),
            early: None,
        });
        for (what, how, tag) in [
            (
                "SIGSTOP for TTL + 200 ms, TTL 1 s: new watcher after the stop",
                takeover::Away::Paused,
                "stop",
            ),
            (
                "black-hole partition for TTL + 200 ms, TTL 1 s: new watcher after the cut",
                takeover::Away::Partitioned,
                "cut",
            ),
        ] {
            let results = trials(n, staggered, |k| {
                takeover::away_trial(&url, &prefix(tag, k), ttl, how, k)
            });
            rows.push(TakeoverRow {
                what,
                ms: results.iter().map(|r| r.0).collect(),
                goal: Goal::Max(bound),
                early: Some(results.iter().filter(|r| r.1).count()),
            });
        }
        for tag in ["off", "stop", "cut"] {
            prefixes.extend((0..n).map(|k| prefix(tag, k)));
        }

        progress(format!("takeover: {n} graceful trials"));
        let graceful = (0..n)
            .map(|k| {
                prefixes.push(prefix("graceful", k));
                takeover::graceful_trial(&url, &prefix("graceful", k), k)
            })
            .collect();
        rows.push(TakeoverRow {
            what: "graceful (`shutdown`): new watcher after the call",
            ms: graceful,
            goal: Goal::MedianMax(20.0, 100.0),
            early: None,
        });
        for p in &prefixes {
            util::delete_prefix(&mut self.admin, p);
        }
        Takeover { rows, staggered }
    }
}

/// Runs `trial(k)` for `k` in `0..n`, one after the other or staggered 130 ms apart on threads
/// of their own (each trial has its own prefix and processes), so that no two are likely to be
/// at their critical moment (a lock expiring) together.
fn trials<T: Send>(n: usize, staggered: bool, trial: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if !staggered {
        return (0..n).map(&trial).collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|k| {
                let trial = &trial;
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(130) * k as u32);
                    trial(k)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a takeover trial"))
            .collect()
    })
}

/// Runs `op` on `threads` threads (each with a clone of `mp`) for about `dur`; returns the
/// operations done and the time they took.
fn rate(
    mp: &RedisMempool,
    threads: usize,
    dur: Duration,
    op: &(dyn Fn(&RedisMempool, usize, u64) + Sync),
) -> (u64, Duration) {
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let barrier = Barrier::new(threads + 1);
    let mut start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let mp = mp.clone();
            let (stop, total, barrier) = (&stop, &total, &barrier);
            s.spawn(move || {
                barrier.wait();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    op(&mp, t, n);
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
        barrier.wait();
        start = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
    });
    (total.load(Ordering::Relaxed), start.elapsed())
}

/// The URL without its password, for printing.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) if at > scheme.len() => {
            format!("{scheme}://***@{}", &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn main() -> ExitCode {
    let args = cli::args();
    if args.first().is_some_and(|a| a == "holder") {
        let rest: Vec<String> = args[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return takeover::holder_main(&rest);
    }
    let opts = match Opts::parse(args) {
        Ok(Some(opts)) => opts,
        Ok(None) => return cli::help(options::USAGE),
        Err(e) => return cli::usage_error(options::USAGE, e),
    };
    let started = *STARTED.get_or_init(Instant::now);
    let (server, url) = support::server::from_env();
    let private = if server.is_some() {
        " (private server)"
    } else {
        ""
    };
    progress(format!("redis at {}{private}", redact(&url)));
    let client_info = redis::Client::open(url.as_str())
        .expect("a valid redis URL")
        .get_connection_info()
        .clone();
    let mut admin = Bench::connect(&url);
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("bench-admin")
        .query(&mut admin)
        .expect("CLIENT SETNAME");
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        ^ ((std::process::id() as u64) << 40);
    let mut res = Results {
        machine: util::machine(&mut admin),
        ..Results::default()
    };
    let mut bench = Bench {
        url,
        admin,
        client_info,
        root: format!("dolos-bench:{run:x}"),
        opts,
        next_tag: run,
        profiles: Vec::new(),
    };

    if bench.opts.runs("steady") {
        res.steady = Some(bench.steady());
    }
    if bench.opts.runs("floors") {
        let mut floors = bench.floors();
        floors.calls.push(bench.confirm_floor());
        res.floors = Some(floors);
    }
    if bench.opts.runs("layouts") {
        res.layouts = Some(bench.layouts());
    }
    if bench.opts.runs("per-item") {
        res.per_item = Some(bench.per_item());
    }
    if bench.opts.runs("memory") {
        res.memory = Some(bench.memory());
    }
    if bench.opts.runs("calls") {
        progress("per call: filling the base mempool (2100 txs)");
        let mut base = bench.base();
        res.round_trips = Some(bench.round_trips(&mut base));
        let (latency, server) = bench.latency(&mut base);
        res.latency = Some(latency);
        res.server_time = server;
        let prefix = base.node.prefix.clone();
        drop(base);
        util::delete_prefix(&mut bench.admin, &prefix);
    }
    if bench.opts.runs("throughput") {
        res.throughput = Some(bench.throughput());
    }
    if bench.opts.runs("scaling") {
        res.scaling = Some(bench.scaling());
    }
    if bench.opts.runs("takeover") {
        res.takeover = Some(bench.takeover());
    }
    if bench.opts.runs("longest") {
        let n = bench.opts.longest_txs;
        res.longest = Some(bench.longest(n));
    }

    res.profiles = std::mem::take(&mut bench.profiles);
    println!("{}", report::report(&res, &bench.opts, started.elapsed()));
    progress("done");
    drop(server);
    ExitCode::SUCCESS
}
