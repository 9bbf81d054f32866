//! What the integration tests share, built on the library: names for txs and blocks, opening
//! nodes, reading the watcher lock behind the library's back, waiting for a watcher and sampling
//! the flags, [`full_run`], a whole two-node life for the tests that change how a node
//! reaches Redis, and [`process`], nodes in processes of their own for the tests that kill or
//! pause one. The harness itself (servers, the fault proxy, the `MONITOR` follower, the RNG)
//! is `dolos_redis_testkit`, which must not depend on the library; this module does.
//!
//! Each test binary compiles its own copy (`mod common;`) and uses only part of it, so the rest
//! would be reported as dead code in every binary: hence the one `allow` below, for the whole
//! module.

#![allow(dead_code)]

pub mod full_run;
pub mod process;

use std::borrow::Borrow;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use dolos_redis::{
    BlockHash, ChainPoint, Config, EraCbor, Error, MempoolStats, MempoolTx, MempoolTxStage,
    RedisMempool, TxHash, TxStatus,
};
use dolos_redis_testkit::{wait_until, FaultProxy, RedisServer};

/// Bound for conditions that hold within milliseconds on an idle machine (or within a few lease
/// ticks); generous so that a loaded 2-core CI machine never flakes. Only failures wait this long.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Lock TTL for tests that do not exercise the lease: long, so that the watcher flag cannot drop
/// halfway through a test on a loaded machine.
pub const LONG_TTL: Duration = Duration::from_secs(30);

/// Between two samples of the watcher flags: fine enough to catch a short overlap of two flags,
/// coarse enough not to starve the lease threads of a 2-core machine.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(1);

// ---- names ----

/// The hash of tx `i`: distinct for every `i`, and ordered as the numbers are (hash order breaks
/// ties in the contract).
pub fn hash(i: u32) -> TxHash {
    let mut bytes = [0x5a; 32];
    bytes[..4].copy_from_slice(&i.to_be_bytes());
    TxHash::from(bytes)
}

pub fn hashes(ids: &[u32]) -> Vec<TxHash> {
    ids.iter().copied().map(hash).collect()
}

/// A small tx whose body names it (the low byte of `i`), so mixed-up payloads show in assertion
/// messages.
pub fn tx(i: u32) -> MempoolTx {
    MempoolTx::new(hash(i), EraCbor(6, vec![0x84, 0xa0, i as u8]))
}

/// The block at `slot` on fork `fork`: blocks of different forks at one slot are different
/// points.
pub fn fork_point(slot: u64, fork: u8) -> ChainPoint {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&slot.to_be_bytes());
    h[8] = fork;
    ChainPoint::Specific(slot, BlockHash::from(h))
}

/// The block at `slot` of the one chain most tests follow.
pub fn point(slot: u64) -> ChainPoint {
    fork_point(slot, 0)
}

/// A tx's status as `check_status` reports it.
pub fn status(
    stage: MempoolTxStage,
    confirmations: u32,
    non_confirmations: u32,
    confirmed_at: Option<ChainPoint>,
) -> TxStatus {
    TxStatus {
        stage,
        confirmations,
        non_confirmations,
        confirmed_at,
    }
}

// ---- nodes ----

/// Where a node connects: a server, or a proxy in front of one.
pub trait Endpoint {
    fn url(&self) -> String;
}

impl Endpoint for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
}

impl Endpoint for FaultProxy {
    fn url(&self) -> String {
        FaultProxy::url(self)
    }
}

/// The library's defaults, under `prefix`, reaching Redis at `at`.
pub fn config(at: &impl Endpoint, prefix: &str) -> Config {
    Config::new(at.url()).key_prefix(prefix)
}

/// [`config`] with a lock TTL and one connect and command timeout: the nodes of the fault tests,
/// where a hung call must end well within a lease period.
pub fn config_with(at: &impl Endpoint, prefix: &str, ttl: Duration, timeout: Duration) -> Config {
    config(at, prefix)
        .watcher_lock_ttl(ttl)
        .connect_timeout(timeout)
        .command_timeout(timeout)
}

pub fn open(config: Config) -> RedisMempool {
    RedisMempool::open(config).expect("open mempool")
}

/// Opens `config` as the only node of its prefix and waits until it is the watcher.
pub fn lone_watcher(config: Config) -> RedisMempool {
    let m = open(config);
    assert!(
        wait_until(SETTLE, || m.is_watcher()),
        "a lone node must become watcher"
    );
    m
}

/// A fresh server with one watcher node on it. Bind the server first (`let (_server, m) = ..`)
/// so the node shuts down before the server goes away.
pub fn single() -> (RedisServer, RedisMempool) {
    let server = RedisServer::start();
    let m = lone_watcher(config(&server, "mempool"));
    (server, m)
}

// ---- calls by tx number ----

pub fn receive(m: &RedisMempool, ids: &[u32]) {
    for &i in ids {
        m.receive(tx(i)).expect("receive");
    }
}

/// Receives the txs and marks them inflight (Propagated).
pub fn propagate(m: &RedisMempool, ids: &[u32]) {
    receive(m, ids);
    m.mark_inflight(&hashes(ids)).expect("mark_inflight");
}

pub fn status_of(m: &RedisMempool, i: u32) -> TxStatus {
    m.check_status(&hash(i)).expect("check_status")
}

pub fn stage_of(m: &RedisMempool, i: u32) -> MempoolTxStage {
    status_of(m, i).stage
}

/// The pending queue, head first.
pub fn pending(m: &RedisMempool) -> Vec<TxHash> {
    let txs = m.peek_pending(usize::MAX).expect("peek_pending");
    txs.iter().map(|t| t.hash).collect()
}

/// The inflight set, in the order `peek_inflight` gives.
pub fn inflight(m: &RedisMempool) -> Vec<TxHash> {
    let txs = m.peek_inflight(usize::MAX).expect("peek_inflight");
    txs.iter().map(|t| t.hash).collect()
}

/// The counts of `stats`: pending, propagated, acknowledged, confirmed, log, applied blocks.
pub fn counts(s: &MempoolStats) -> [u64; 6] {
    [
        s.pending,
        s.propagated,
        s.acknowledged,
        s.confirmed,
        s.finalized_log,
        s.applied_blocks,
    ]
}

// ---- Redis behind the library's back ----

/// A Redis command from its words.
pub fn cmd(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// A port on 127.0.0.1 where nothing listens (nothing did a moment ago, and ports are not reused
/// that quickly): connecting to it is refused.
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub fn lock_key(prefix: &str) -> String {
    format!("{prefix}:watcher:lock")
}

/// The node id in the watcher lock, read over `con`.
pub fn lock_holder(con: &mut redis::Connection, prefix: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(lock_key(prefix))
        .query(con)
        .expect("GET lock")
}

fn lock_pttl(con: &mut redis::Connection, prefix: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(lock_key(prefix))
        .query(con)
        .expect("PTTL lock")
}

/// The lock as the server sees it: holder and PTTL.
pub fn raw_lock(server: &RedisServer, prefix: &str) -> (Option<String>, i64) {
    let mut con = server.connection();
    (lock_holder(&mut con, prefix), lock_pttl(&mut con, prefix))
}

/// Deletes the lock and its fence by hand: a full reset that frees the lock for any node. (A
/// `DEL` of the lock alone is repaired by its holder at its next renewal: the fence keeps others
/// out meanwhile.)
pub fn delete_lock(server: &RedisServer, prefix: &str) {
    let deleted: i64 = redis::cmd("DEL")
        .arg(lock_key(prefix))
        .arg(format!("{prefix}:watcher:fence"))
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(deleted, 2);
}

/// Waits until the watcher has just renewed its lock (its PTTL, polled over `con`, jumps back
/// up: between renewals it only decreases) and returns the instant the renewal was seen. The
/// renewal was sent before that instant, so the watcher's flag must be down within a TTL of it
/// if no later renewal succeeds.
pub fn wait_for_renewal(con: &mut redis::Connection, prefix: &str) -> Instant {
    let mut last = lock_pttl(con, prefix);
    let renewed = wait_until(SETTLE, || {
        let now = lock_pttl(con, prefix);
        let jumped = last > 0 && now > last + 100;
        last = now;
        jumped
    });
    assert!(renewed, "the watcher never renewed its lock");
    Instant::now()
}

// ---- watcher flags ----

/// Indices of the nodes whose flag is up right now.
pub fn watchers<N: Borrow<RedisMempool>>(nodes: &[N]) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].borrow().is_watcher())
        .collect()
}

/// Waits until exactly one node is watcher and returns its index.
pub fn settle_single_watcher<N: Borrow<RedisMempool>>(nodes: &[N]) -> usize {
    let mut found = None;
    let ok = wait_until(SETTLE, || {
        let w = watchers(nodes);
        found = w.first().copied();
        w.len() == 1
    });
    if !ok {
        let ids: Vec<&str> = nodes.iter().map(|n| n.borrow().node_id()).collect();
        panic!(
            "no single watcher emerged; flags up: {:?}, nodes {ids:?}, lock as seen by node 0: \
             {:?}",
            watchers(nodes),
            nodes[0].borrow().watcher_info()
        );
    }
    found.expect("a watcher")
}

/// Samples every node's flag for `window` and fails at the first sample with two flags up.
/// Returns how many samples were taken.
pub fn assert_never_two_watchers<N: Borrow<RedisMempool>>(nodes: &[N], window: Duration) -> usize {
    let end = Instant::now() + window;
    let mut samples = 0;
    while Instant::now() < end {
        let w = watchers(nodes);
        assert!(
            w.len() <= 1,
            "two watchers at once after {samples} samples: nodes {w:?}"
        );
        samples += 1;
        std::thread::sleep(SAMPLE_EVERY);
    }
    samples
}

// ---- failures ----

/// Runs `call`, asserting that it fails with a transient error within `bound`; returns the error
/// and how long it took (printed too).
pub fn expect_transient<T: std::fmt::Debug>(
    what: &str,
    bound: Duration,
    call: impl FnOnce() -> Result<T, Error>,
) -> (Error, Duration) {
    let started = Instant::now();
    let result = call();
    let took = started.elapsed();
    println!("  {what}: {result:?} after {took:?}");
    let err = match result {
        Err(e) => e,
        Ok(v) => panic!("{what}: answered during the fault: {v:?}"),
    };
    assert!(err.is_transient(), "{what}: {err:?} is not a link error");
    assert!(took < bound, "{what} took {took:?}");
    (err, took)
}
