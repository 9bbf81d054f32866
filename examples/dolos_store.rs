//! How Dolos would use this crate: its `MempoolStore` trait, implemented for a thin wrapper over
//! [`RedisMempool`]. The README's "Using it from Dolos" walks through it.
//!
//! ```text
//! cargo run --example dolos_store                    # starts a private redis-server
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example dolos_store
//! ```
//!
//! Dolos's core crate is not published, so [`dolos_core`] below declares the trait with the
//! signatures of `crates/core/src/mempool.rs` on Dolos's main branch, and stand-ins for the
//! types whose shape differs from ours (`MempoolTx` carries a validation report there,
//! `MempoolEvent` is a struct around a transaction, `MempoolError` has Dolos's variants). The
//! types whose names and fields match (`TxHash`, `ChainPoint`, `EraCbor`, `MempoolTxStage`,
//! `TxStatus`) are ours. [`RedisStore`] is the wrapper; what to copy is in it:
//!
//! * **The infallible methods** (`has_pending`, `peek_pending`, `find_inflight`,
//!   `peek_inflight`, `check_status`, `dump_finalized`) cannot report that Redis is down. They
//!   answer "nothing" instead — `false`, an empty list, `None`, `Unknown`, an empty last page —
//!   which Dolos reads as "nothing to do now" and asks again later; they never panic. The first
//!   failure of an outage is logged at WARN, the others not, and the first success after it
//!   at INFO. A call fails within the configured timeouts (`command_timeout_ms`).
//! * **The fallible ones** (`receive`, `mark_inflight`, `mark_acknowledged`, `confirm`) return
//!   the error, mapped to Dolos's `MempoolError` (`DuplicateTx`, `InvalidTx`, else `Internal`
//!   with our error inside).
//! * **`subscribe`** is a `futures_core::Stream`: a thread forwards the crossbeam receiver into
//!   a bounded tokio channel. Our `Tx` events become Dolos's `MempoolEvent`s; `Lagged` (the
//!   subscriber fell behind and missed events) becomes an `Err` item, which Dolos's
//!   `UpdateFilter` ends the stream on, so a subscriber learns it must resubscribe. The stream
//!   ends once the last `RedisStore` clone is gone.
//! * **`confirm` and the takeover reconcile step.** Dolos calls `confirm` on every node for
//!   every block (`seen` = its txs) and for every undone block (`unseen` = its txs). On a
//!   follower it does nothing. The watcher applies it, but whenever it begins a new term (a
//!   new [`RedisMempool::watcher_epoch`]: this catches a term that began and ended between two
//!   calls, which `is_watcher` alone would miss), or after a call that failed, it first makes
//!   the applied chain in Redis end on its own chain and replays its blocks after that point
//!   (README, "Forks and takeovers"). For that the wrapper reads the node's chain through
//!   [`ChainView`], which Dolos would implement over its WAL (here: a list in memory). The
//!   chain view also resolves what `confirm(point, [], [])` means: an undo when the chain no
//!   longer holds `point` (applied as `rollback_to` the block before it), a replay otherwise.
//! * **An async caller.** Dolos's trait is synchronous and every method blocks for one round
//!   trip (at most the timeouts when Redis hangs): from async code, call it inside
//!   `tokio::task::spawn_blocking` (as `main` does) or `tokio::task::block_in_place`. `open`
//!   blocks too. Dropping the last clone shuts the node down like [`RedisStore::shutdown`]: it
//!   joins the lease thread and releases the lock (a round trip), so end with `shutdown` on
//!   the blocking pool rather than a drop on an async worker.
//!
//! The story `main` plays: two nodes, A and B (B reaches Redis through a fault proxy), follow
//! one chain. A is the watcher: blocks 1–3 are applied, the chain forks (block 3 undone, 3'
//! applied), A shuts down and B takes over, reconciling first. Then B loses Redis for a while:
//! the infallible calls answer "nothing" with a single WARN, blocks keep coming, and once Redis
//! is back B reconciles and replays them. Each transaction ends as expected (exit 1 if not).

use dolos_redis_testkit as support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use dolos_redis::{
    BlockHash, ChainPoint, Config, ConfirmOutcome, EraCbor, MempoolTxStage, RedisMempool, TxHash,
    TxStatus,
};
use tracing::{info, warn};

use dolos_core::{MempoolError, MempoolEvent, MempoolPage, MempoolStore, MempoolTx};

/// Stand-ins for `dolos-core`'s mempool types and its `MempoolStore` trait, with its
/// signatures.
pub mod dolos_core {
    use dolos_redis::{ChainPoint, EraCbor, MempoolTxStage, TxHash, TxStatus};

    /// The validation report Dolos keeps beside a transaction (not stored in Redis).
    pub type Report = Vec<u8>;

    /// Dolos's transaction: ours plus its validation report.
    #[derive(Clone, Debug)]
    pub struct MempoolTx {
        pub hash: TxHash,
        pub payload: EraCbor,
        pub stage: MempoolTxStage,
        pub confirmations: u32,
        pub non_confirmations: u32,
        pub confirmed_at: Option<ChainPoint>,
        pub report: Option<Report>,
    }

    /// Dolos's event: a transaction that changed.
    #[derive(Clone, Debug)]
    pub struct MempoolEvent {
        pub tx: MempoolTx,
    }

    pub struct MempoolPage {
        pub items: Vec<MempoolTx>,
        pub next_cursor: Option<u64>,
    }

    /// The variants of Dolos's `MempoolError` this store returns (Dolos has more).
    #[derive(Debug)]
    pub enum MempoolError {
        Internal(Box<dyn std::error::Error + Send + Sync>),
        InvalidTx(String),
        DuplicateTx,
    }

    impl std::fmt::Display for MempoolError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                MempoolError::Internal(e) => write!(f, "internal error: {e}"),
                MempoolError::InvalidTx(m) => write!(f, "invalid tx: {m}"),
                MempoolError::DuplicateTx => write!(f, "duplicate tx"),
            }
        }
    }

    impl std::error::Error for MempoolError {}

    pub trait MempoolStore: Clone + Send + Sync + 'static {
        type Stream: futures_core::Stream<Item = Result<MempoolEvent, MempoolError>>
            + Unpin
            + Send
            + Sync;

        fn receive(&self, tx: MempoolTx) -> Result<(), MempoolError>;
        fn has_pending(&self) -> bool;
        fn peek_pending(&self) -> Vec<MempoolTx>;
        fn mark_inflight(&self, hashes: &[TxHash]) -> Result<(), MempoolError>;
        fn mark_acknowledged(&self, hashes: &[TxHash]) -> Result<(), MempoolError>;
        fn find_inflight(&self, tx_hash: &TxHash) -> Option<MempoolTx>;
        fn peek_inflight(&self) -> Vec<MempoolTx>;
        fn confirm(
            &self,
            point: &ChainPoint,
            seen_txs: &[TxHash],
            unseen_txs: &[TxHash],
            finalize_threshold: u32,
            drop_threshold: u32,
        ) -> Result<(), MempoolError>;
        fn check_status(&self, tx_hash: &TxHash) -> TxStatus;
        fn dump_finalized(&self, cursor: u64, limit: usize) -> MempoolPage;
        fn subscribe(&self) -> Self::Stream;
    }
}

/// A block of the node's chain: its point and its transactions.
#[derive(Clone, Debug)]
pub struct Block {
    pub point: ChainPoint,
    pub txs: Vec<TxHash>,
}

/// The node's own chain, as the reconcile step needs it. Dolos would answer from its WAL, which
/// it keeps on disk, so a restarted node still knows the blocks before its restart (it must
/// know its chain back to the oldest block Redis keeps applied: `applied_history` blocks).
pub trait ChainView: Send + Sync + 'static {
    /// The chain now, oldest first.
    fn blocks(&self) -> Vec<Block>;

    /// Whether `point` is on the chain now.
    fn contains(&self, point: &ChainPoint) -> bool {
        self.blocks().iter().any(|b| b.point == *point)
    }
}

/// Dolos's `MempoolStore` over a shared Redis mempool. Cheap to clone; clones share one
/// `RedisMempool` (one pool, one lease thread).
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    mempool: RedisMempool,
    chain: Arc<dyn ChainView>,
    /// The watcher term under which the applied chain in Redis is known to end on our chain;
    /// `None`: not known (a new term, a failed call), reconcile before applying anything. The
    /// lock also keeps `confirm` calls one at a time.
    synced: Mutex<Option<u64>>,
    /// Whether the last call failed to reach Redis: the WARN is logged once per outage.
    outage: AtomicBool,
}

impl RedisStore {
    /// Opens the mempool (blocking: call it on a blocking thread) and starts its event reader,
    /// so that `subscribe` returns at once later.
    pub fn open(config: Config, chain: Arc<dyn ChainView>) -> Result<RedisStore, MempoolError> {
        let mempool = RedisMempool::open(config).map_err(internal)?;
        drop(mempool.subscribe());
        Ok(RedisStore {
            shared: Arc::new(Shared {
                mempool,
                chain,
                synced: Mutex::new(None),
                outage: AtomicBool::new(false),
            }),
        })
    }

    /// The mempool underneath, for what the trait does not cover (`stats`, `node_id`, …).
    pub fn mempool(&self) -> &RedisMempool {
        &self.shared.mempool
    }

    /// Releases the watcher lock at once so another node takes over, and stops the lease
    /// thread (for every clone). Blocks for a round trip: on a blocking thread.
    pub fn shutdown(self) -> Result<(), MempoolError> {
        self.shared.mempool.clone().shutdown().map_err(internal)
    }

    /// The answer of an infallible method: the value, or `fallback` when Redis failed, with a
    /// WARN at the start of an outage and an INFO at its end.
    fn or_else<T>(&self, what: &str, result: Result<T, dolos_redis::Error>, fallback: T) -> T {
        match result {
            Ok(value) => {
                if self.shared.outage.swap(false, Ordering::Relaxed) {
                    info!("redis answers again ({what})");
                }
                value
            }
            Err(e) if e.is_transient() => {
                if !self.shared.outage.swap(true, Ordering::Relaxed) {
                    warn!(
                        "redis unreachable ({what}: {e}); the mempool's reads answer \
                         \"nothing\" until it is back"
                    );
                }
                fallback
            }
            // Not an outage (bad data, refused permissions): say it every time.
            Err(e) => {
                warn!("{what} failed, answering \"nothing\": {e}");
                fallback
            }
        }
    }

    /// The reconcile step: makes the applied chain end on our chain and replays our blocks
    /// after that point. `Ok(false)` when it must wait (the applied tip is above our tip: we
    /// may be behind; or no applied block is on our chain, which starts after the oldest of
    /// them) or lost the lock meanwhile.
    fn reconcile(&self, f: u32, d: u32) -> Result<bool, dolos_redis::Error> {
        let mempool = &self.shared.mempool;
        let chain = self.shared.chain.blocks();
        let applied = mempool.applied_points(usize::MAX)?; // newest first
        let position = |p: &ChainPoint| chain.iter().position(|b| b.point == *p);
        let our_tip = chain.last().map_or(0, |b| b.point.slot());
        let our_first = chain.first().map_or(0, |b| b.point.slot());
        let keep = match (applied.first(), applied.iter().find_map(position)) {
            (None, _) => 0,
            (Some(tip), _) if position(tip).is_some() => position(tip).map_or(0, |i| i + 1),
            (Some(tip), _) if tip.slot() > our_tip => return Ok(false),
            (Some(_), Some(i)) => {
                rolled_back(mempool.rollback_to(&chain[i].point)?)?;
                i + 1
            }
            (Some(_), None) if applied.last().is_some_and(|o| our_first > o.slot()) => {
                return Ok(false)
            }
            (Some(_), None) => {
                rolled_back(mempool.rollback_to(&ChainPoint::Origin)?)?;
                0
            }
        };
        for block in &chain[keep..] {
            match mempool.confirm(&block.point, &block.txs, &[], f, d)? {
                ConfirmOutcome::Applied | ConfirmOutcome::AlreadyApplied => {}
                _ => return Ok(false),
            }
        }
        info!(
            kept = keep,
            replayed = chain.len() - keep,
            "reconciled the applied chain with ours"
        );
        Ok(true)
    }

    /// Undoes the applied block at `point` and every block after it: a rollback to the applied
    /// block before it (an empty block's undo, which `confirm` would take for a replay).
    fn undo(&self, point: &ChainPoint) -> Result<ConfirmOutcome, dolos_redis::Error> {
        let mempool = &self.shared.mempool;
        let applied = mempool.applied_points(usize::MAX)?; // newest first
        match applied.iter().position(|p| p == point) {
            Some(i) => mempool.rollback_to(applied.get(i + 1).unwrap_or(&ChainPoint::Origin)),
            None => Ok(ConfirmOutcome::AlreadyApplied),
        }
    }
}

/// A `rollback_to` that did not apply (lost lock, not the watcher) ends the reconcile.
fn rolled_back(outcome: ConfirmOutcome) -> Result<(), dolos_redis::Error> {
    match outcome {
        ConfirmOutcome::Applied | ConfirmOutcome::AlreadyApplied => Ok(()),
        other => Err(dolos_redis::Error::InvalidInput(
            format!("rollback not applied: {other:?}").into(),
        )),
    }
}

fn internal(e: dolos_redis::Error) -> MempoolError {
    match e {
        dolos_redis::Error::DuplicateTx => MempoolError::DuplicateTx,
        e @ (dolos_redis::Error::InvalidInput(_) | dolos_redis::Error::TxTooLarge { .. }) => {
            MempoolError::InvalidTx(e.to_string())
        }
        e => MempoolError::Internal(Box::new(e)),
    }
}

fn to_dolos(tx: dolos_redis::MempoolTx) -> MempoolTx {
    MempoolTx {
        hash: tx.hash,
        payload: tx.payload,
        stage: tx.stage,
        confirmations: tx.confirmations,
        non_confirmations: tx.non_confirmations,
        confirmed_at: tx.confirmed_at,
        report: None,
    }
}

/// The events of [`RedisStore::subscribe`].
pub struct EventStream {
    rx: tokio::sync::mpsc::Receiver<Result<MempoolEvent, MempoolError>>,
}

impl futures_core::Stream for EventStream {
    type Item = Result<MempoolEvent, MempoolError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl MempoolStore for RedisStore {
    type Stream = EventStream;

    fn receive(&self, tx: MempoolTx) -> Result<(), MempoolError> {
        let ours = dolos_redis::MempoolTx::new(tx.hash, tx.payload);
        self.shared.mempool.receive(ours).map_err(internal)
    }

    /// `false` while Redis is unreachable.
    fn has_pending(&self) -> bool {
        self.or_else("has_pending", self.shared.mempool.has_pending(), false)
    }

    /// All of the pending queue, oldest first, as Dolos asks; empty while Redis is unreachable.
    fn peek_pending(&self) -> Vec<MempoolTx> {
        let txs = self.shared.mempool.peek_pending(usize::MAX);
        let txs = self.or_else("peek_pending", txs, Vec::new());
        txs.into_iter().map(to_dolos).collect()
    }

    fn mark_inflight(&self, hashes: &[TxHash]) -> Result<(), MempoolError> {
        self.shared.mempool.mark_inflight(hashes).map_err(internal)
    }

    fn mark_acknowledged(&self, hashes: &[TxHash]) -> Result<(), MempoolError> {
        self.shared
            .mempool
            .mark_acknowledged(hashes)
            .map_err(internal)
    }

    /// `None` while Redis is unreachable.
    fn find_inflight(&self, tx_hash: &TxHash) -> Option<MempoolTx> {
        let tx = self.shared.mempool.find_inflight(tx_hash);
        self.or_else("find_inflight", tx, None).map(to_dolos)
    }

    /// Empty while Redis is unreachable.
    fn peek_inflight(&self) -> Vec<MempoolTx> {
        let txs = self.shared.mempool.peek_inflight(usize::MAX);
        let txs = self.or_else("peek_inflight", txs, Vec::new());
        txs.into_iter().map(to_dolos).collect()
    }

    /// On a follower: nothing (`Ok`), the watcher applies the block. On the watcher: the block
    /// is applied or undone, after a reconcile in a new term or after a failed call. An error
    /// leaves the state unknown, so the next call reconciles again and no block is skipped.
    fn confirm(
        &self,
        point: &ChainPoint,
        seen_txs: &[TxHash],
        unseen_txs: &[TxHash],
        finalize_threshold: u32,
        drop_threshold: u32,
    ) -> Result<(), MempoolError> {
        let mempool = &self.shared.mempool;
        let mut synced = self.shared.synced.lock().unwrap_or_else(|e| e.into_inner());
        let Some(epoch) = mempool.watcher_epoch() else {
            // This block is not applied here. The flag may come back in the same term (it
            // drops while the liveness connection is down), so the next block reconciles
            // rather than trusting the epoch alone.
            *synced = None;
            return Ok(());
        };
        let (f, d) = (finalize_threshold, drop_threshold);
        if *synced != Some(epoch) {
            // The replay covers this block: our chain view has it already (or, for an undo,
            // no longer has it, so the reconcile rolls back past it).
            *synced = None;
            return match self.reconcile(f, d) {
                Ok(true) => {
                    *synced = Some(epoch);
                    Ok(())
                }
                Ok(false) => {
                    info!("not reconciling yet: the applied chain is ahead of ours");
                    Ok(())
                }
                Err(e) => Err(internal(e)),
            };
        }
        let outcome = if !unseen_txs.is_empty() {
            mempool.confirm(point, &[], unseen_txs, f, d)
        } else if !self.shared.chain.contains(point) {
            self.undo(point)
        } else {
            mempool.confirm(point, seen_txs, &[], f, d)
        };
        match outcome {
            Ok(ConfirmOutcome::Applied | ConfirmOutcome::AlreadyApplied) => Ok(()),
            // NotWatcher or LostLock: the lock went meanwhile; a later term reconciles.
            Ok(other) => {
                info!(?other, slot = point.slot(), "block not applied here");
                *synced = None;
                Ok(())
            }
            Err(e) => {
                *synced = None;
                Err(internal(e))
            }
        }
    }

    /// `Unknown` while Redis is unreachable.
    fn check_status(&self, tx_hash: &TxHash) -> TxStatus {
        let status = self.shared.mempool.check_status(tx_hash);
        self.or_else("check_status", status, TxStatus::unknown())
    }

    /// An empty last page (`next_cursor: None`) while Redis is unreachable: the reader stops
    /// and asks again later.
    fn dump_finalized(&self, cursor: u64, limit: usize) -> MempoolPage {
        let page = self.shared.mempool.dump_finalized(cursor, limit);
        let empty = dolos_redis::MempoolPage {
            items: Vec::new(),
            next_cursor: None,
        };
        let page = self.or_else("dump_finalized", page, empty);
        MempoolPage {
            items: page.items.into_iter().map(to_dolos).collect(),
            next_cursor: page.next_cursor,
        }
    }

    fn subscribe(&self) -> EventStream {
        let events = self.shared.mempool.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let bridge = std::thread::Builder::new()
            .name("dolos-store-events".into())
            .spawn(move || {
                for event in events {
                    let item = match event {
                        dolos_redis::MempoolEvent::Tx { tx, .. } => {
                            Ok(MempoolEvent { tx: to_dolos(tx) })
                        }
                        dolos_redis::MempoolEvent::Lagged { missed } => {
                            Err(MempoolError::Internal(
                                format!("the subscriber fell behind and missed {missed} events")
                                    .into(),
                            ))
                        }
                        // Blocks and watcher changes have no Dolos event.
                        _ => continue,
                    };
                    // Fails once the stream was dropped: stop forwarding.
                    if tx.blocking_send(item).is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = bridge {
            // Without the thread no event comes: the stream says so and ends.
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.try_send(Err(MempoolError::Internal(Box::new(e))));
            return EventStream { rx };
        }
        EventStream { rx }
    }
}

// ---- the story ----

/// The chain both nodes follow, in memory (in Dolos: each node's WAL).
#[derive(Default)]
struct MemoryChain(Mutex<Vec<Block>>);

impl ChainView for MemoryChain {
    fn blocks(&self) -> Vec<Block> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl MemoryChain {
    fn push(&self, block: Block) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(block);
    }

    /// Drops the tip and returns it.
    fn pop(&self) -> Option<Block> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const FINALIZE: u32 = 3;
const DROP: u32 = 5;

/// Runs `f` on a clone of `store` on tokio's blocking pool: every trait method blocks.
async fn blocking<T: Send + 'static>(
    store: &RedisStore,
    f: impl FnOnce(RedisStore) -> T + Send + 'static,
) -> Result<T, BoxError> {
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(store)).await?)
}

fn point(slot: u64, fork: u8) -> ChainPoint {
    ChainPoint::Specific(slot, BlockHash::from([fork; 32]))
}

fn block(slot: u64, fork: u8, txs: &[TxHash]) -> Block {
    Block {
        point: point(slot, fork),
        txs: txs.to_vec(),
    }
}

/// The next item of a stream (what `StreamExt::next` does, without the dependency).
fn next<S: futures_core::Stream + Unpin>(
    stream: &mut S,
) -> impl Future<Output = Option<S::Item>> + '_ {
    std::future::poll_fn(move |cx| Pin::new(&mut *stream).poll_next(cx))
}

/// A new block on the chain, given to every node as Dolos's chain-sync does.
async fn roll_forward(
    chain: &MemoryChain,
    nodes: &[&RedisStore],
    block: Block,
) -> Result<(), BoxError> {
    chain.push(block.clone());
    for node in nodes {
        let b = block.clone();
        let result = blocking(node, move |s| {
            s.confirm(&b.point, &b.txs, &[], FINALIZE, DROP)
        })
        .await?;
        if let Err(e) = result {
            warn!(slot = block.point.slot(), %e, "confirm failed; the next call reconciles");
        }
    }
    Ok(())
}

/// The chain drops its tip; every node is told, as Dolos's chain-sync does.
async fn roll_back(chain: &MemoryChain, nodes: &[&RedisStore]) -> Result<(), BoxError> {
    let Some(block) = chain.pop() else {
        return Ok(());
    };
    for node in nodes {
        let b = block.clone();
        blocking(node, move |s| {
            s.confirm(&b.point, &[], &b.txs, FINALIZE, DROP)
        })
        .await??;
    }
    Ok(())
}

/// What Dolos's propagation does: everything pending, sent to peers, marked inflight.
async fn propagate(node: &RedisStore) -> Result<(), BoxError> {
    let pending: Vec<TxHash> = blocking(node, |s| s.peek_pending())
        .await?
        .iter()
        .map(|t| t.hash)
        .collect();
    if !pending.is_empty() {
        info!(count = pending.len(), "propagating");
        blocking(node, move |s| s.mark_inflight(&pending)).await??;
    }
    Ok(())
}

const USAGE: &str = "\
usage: dolos_store [--help]

Dolos's MempoolStore trait implemented over RedisMempool, played by two nodes:
a fork, a takeover with its reconcile step, and an outage of one node's Redis
link. Uses $REDIS_URL, else starts a private redis-server (redis-server on the
PATH). RUST_LOG=debug adds the crate's DEBUG lines.";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    support::help_only("dolos_store", USAGE);
    let level = match std::env::var("RUST_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        _ => tracing::Level::INFO,
    };
    // Also the crate's `log` lines (tracing-subscriber's `tracing-log` bridge).
    tracing_subscriber::fmt().with_max_level(level).init();

    let (server, url) = tokio::task::spawn_blocking(support::server::from_env).await?;
    // B reaches Redis through a proxy the story cuts.
    let upstream = redis_addr(&url).ok_or("REDIS_URL must be redis://[user:pass@]host:port")?;
    let proxy = support::FaultProxy::start(upstream);
    let prefix = format!("dolos-store:{}", std::process::id());
    let config = |url: String| {
        Config::new(url)
            .key_prefix(prefix.clone())
            .watcher_lock_ttl(Duration::from_secs(1))
            .connect_timeout(Duration::from_millis(300))
            .command_timeout(Duration::from_millis(300))
    };
    let chain = Arc::new(MemoryChain::default());
    let (a_config, a_chain) = (config(url.clone()), chain.clone());
    let a = tokio::task::spawn_blocking(move || RedisStore::open(a_config, a_chain)).await??;
    let (b_config, b_chain) = (config(proxy.url()), chain.clone());
    let b = tokio::task::spawn_blocking(move || RedisStore::open(b_config, b_chain)).await??;
    info!(
        a = a.mempool().node_id(),
        b = b.mempool().node_id(),
        "two nodes"
    );
    if !a.mempool().is_watcher() {
        return Err("node A, opened first, should be the watcher".into());
    }

    // B's events, as Dolos's UpdateFilter would read them.
    let mut stream = blocking(&b, |s| s.subscribe()).await?;
    let consumer = tokio::spawn(async move {
        let mut seen = 0u32;
        while let Some(item) = next(&mut stream).await {
            match item {
                Ok(MempoolEvent { tx }) => {
                    seen += 1;
                    info!(tx = %&tx.hash.to_string()[..8], stage = ?tx.stage, "event");
                }
                Err(e) => warn!(%e, "event stream error"),
            }
        }
        info!(seen, "event stream ended");
        seen
    });

    // Three transactions, received by A, propagated by B, one acknowledged.
    let txs: Vec<TxHash> = (1..=3u8).map(|i| TxHash::from([i; 32])).collect();
    for (i, hash) in txs.iter().enumerate() {
        let tx = MempoolTx {
            hash: *hash,
            payload: EraCbor(6, vec![0x84, 0xa0, i as u8]),
            stage: MempoolTxStage::Pending,
            confirmations: 0,
            non_confirmations: 0,
            confirmed_at: None,
            report: Some(Vec::new()),
        };
        blocking(&a, move |s| s.receive(tx)).await??;
    }
    propagate(&b).await?;
    let first = txs[0];
    blocking(&b, move |s| s.mark_acknowledged(&[first])).await??;

    // Blocks 1-3, then the chain forks: block 3 is undone, 3' (lower slot) replaces it.
    let both = [&a, &b];
    roll_forward(&chain, &both, block(10, 1, &[txs[0]])).await?;
    roll_forward(&chain, &both, block(20, 2, &[])).await?;
    roll_forward(&chain, &both, block(30, 3, &[txs[1]])).await?;
    roll_back(&chain, &both).await?;
    roll_forward(&chain, &both, block(25, 0xf3, &[])).await?;
    // The undo returned block 3's transaction to pending: B propagates it again.
    propagate(&b).await?;

    // A shuts down on the blocking pool (it joins its lease thread and releases the lock).
    blocking(&a, |s| s.shutdown()).await??;
    drop(a);
    let taken = tokio::time::timeout(Duration::from_secs(10), async {
        while b.mempool().watcher_epoch().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    taken.await.map_err(|_| "B did not take over")?;
    info!(epoch = b.mempool().watcher_epoch(), "B is the watcher");
    // Its first block reconciles first (nothing to undo here) and is applied.
    roll_forward(&chain, &[&b], block(40, 0xf4, &[txs[1]])).await?;

    // B loses Redis: the reads answer "nothing" (one WARN for the whole outage), blocks go on.
    proxy.refuse();
    info!("B's link to redis is cut");
    let during = blocking(&b, move |s| {
        (
            s.has_pending(),
            s.peek_pending().len(),
            s.check_status(&first).stage,
        )
    })
    .await?;
    info!(?during, "B's reads during the outage");
    roll_forward(&chain, &[&b], block(50, 0xf5, &[])).await?;
    roll_forward(&chain, &[&b], block(60, 0xf6, &[])).await?;
    proxy.heal();
    info!("B's link to redis is back");
    let back = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let up = blocking(&b, |s| {
                s.mempool().has_pending().is_ok() && s.mempool().watcher_epoch().is_some()
            });
            if up.await.unwrap_or(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    back.await
        .map_err(|_| "B did not become the watcher again")?;
    // The next block reconciles (the blocks of the outage are replayed) and applies.
    roll_forward(&chain, &[&b], block(70, 0xf7, &[])).await?;

    // What each transaction became, and the applied chain against ours.
    let mut ok = during == (false, 0, MempoolTxStage::Unknown);
    let expected = [
        (MempoolTxStage::Finalized, Some(point(10, 1))),
        (MempoolTxStage::Finalized, Some(point(40, 0xf4))),
        (MempoolTxStage::Dropped, None),
    ];
    for (hash, (stage, at)) in txs.iter().zip(expected) {
        let h = *hash;
        let status = blocking(&b, move |s| s.check_status(&h)).await?;
        info!(tx = %&hash.to_string()[..8], stage = ?status.stage, confirmations = status.confirmations, "final status");
        ok &= status.stage == stage && status.confirmed_at == at;
    }
    let page = blocking(&b, |s| s.dump_finalized(0, 10)).await?;
    ok &= page.items.len() == 3;
    let mut applied = blocking(&b, |s| s.mempool().applied_points(usize::MAX)).await??;
    applied.reverse();
    let ours: Vec<ChainPoint> = chain.blocks().iter().map(|b| b.point).collect();
    info!(
        blocks = applied.len(),
        same = applied == ours,
        "applied chain = our chain"
    );
    ok &= applied == ours;

    // The end: shut B down on the blocking pool; the event stream then ends.
    blocking(&b, |s| s.shutdown()).await??;
    tokio::task::spawn_blocking(move || drop(b)).await?;
    let seen = consumer.await?;
    ok &= seen > 0;
    drop(proxy);
    if let Some(server) = server {
        tokio::task::spawn_blocking(move || drop(server)).await?;
    }
    if !ok {
        return Err("the transactions or the applied chain did not end as expected".into());
    }
    info!("dolos_store: every transaction ended as expected");
    Ok(())
}

/// `host:port` of a `redis://[user:password@]host:port[/db]` URL.
fn redis_addr(url: &str) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let rest = url.strip_prefix("redis://")?;
    let host_port = rest.rsplit('@').next()?.split('/').next()?;
    host_port.to_socket_addrs().ok()?.next()
}
