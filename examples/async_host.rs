//! How an async host such as Dolos uses this synchronous crate.
//!
//! ```text
//! cargo run --example async_host                    # starts a private redis-server
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example async_host
//! RUST_LOG=debug cargo run --example async_host     # also the DEBUG lines (lock renewals, ...)
//! ```
//!
//! Three things to copy:
//!
//! 1. **Blocking calls stay off the async workers.** Every mempool call blocks its thread for up
//!    to the configured timeouts, so each one runs inside `tokio::task::spawn_blocking`, on a
//!    clone of the `RedisMempool` (clones are cheap and share one pool and one lease thread).
//!    `open` and the first `subscribe` block too (they wait for Redis), so they go there as well.
//!
//! 2. **Events become an async stream.** `subscribe()` hands out a crossbeam receiver. A plain
//!    thread `recv()`s from it and forwards into a `tokio::sync::mpsc` channel, which a task
//!    consumes with `while let Some(event) = rx.recv().await`. The stream ends by itself: once the
//!    last `RedisMempool` clone is gone, the crossbeam channel disconnects, the bridge thread
//!    returns and drops the mpsc sender. A consumer that falls behind only fills the mpsc channel
//!    and then the crossbeam one; the library never waits for it and reports what such a
//!    subscriber lost with `MempoolEvent::Lagged`.
//!
//! 3. **Our `log` lines land in the host's `tracing` subscriber.** The crate logs with the `log`
//!    facade (target `dolos_redis::mempool`, as in the reference deployment). With
//!    `tracing-subscriber`'s default features, `tracing_subscriber::fmt().init()` also installs
//!    `tracing_log::LogTracer` (its `tracing-log` feature, on by default), which turns every `log`
//!    record into a `tracing` event. So `acquired watcher lock` appears below formatted by
//!    tracing-subscriber, next to the host's own `tracing::info!` lines, with no extra code. A host
//!    that turns tracing-subscriber's default features off, or installs its subscriber with
//!    `tracing::subscriber::set_global_default`, gets no bridge that way and must install it
//!    itself with `tracing_log::LogTracer::init()` (crate `tracing-log`).
//!    The `LogTracer` passes on only records at or above the subscriber's level at install
//!    time, which is why the level is chosen before `init()`.
//!
//! 4. **The reconcile step on takeover.** A host applies its own chain as the watcher, and
//!    whenever it *becomes* the watcher it first reconciles the applied chain in Redis with its
//!    chain: the newest applied point on its chain, `rollback_to` it, then its blocks after it
//!    (`reconcile` below; `examples/node.rs` does the same, and `harness/src/node.rs` with the
//!    reasons). A call that fails is not skipped: the next block starts over from a reconcile.
//!
//! The story: another node is the watcher first. It applies blocks 1 and 2 and a block 3 that
//! the chain then abandons, and shuts down, handing the lock over at once. This host's chain
//! went 1, 2, 3' (a fork block at a lower slot than 3), and grows 4', 5', … one block every
//! 200 ms. On takeover it reconciles: it rolls back to block 2, which returns the abandoned
//! block's transaction to pending, and replays 3' and 4'. That transaction is propagated again,
//! lands in block 5' and reaches Finalized; the one that was in block 1 was Finalized by the
//! first watcher already (depth counts, not which block); the third, never included, is
//! Dropped. The host then shuts down gracefully, releasing the lock, and the event stream ends.

use dolos_redis_testkit as support;

use std::time::Duration;

use dolos_redis::{
    BlockHash, ChainPoint, Config, ConfirmOutcome, EraCbor, MempoolEvent, MempoolTx,
    MempoolTxStage, RedisMempool, TxHash,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Confirmations to finalize, and blocks missed to drop.
const FINALIZE: u32 = 3;
const DROP: u32 = 4;
const BLOCK_TIME: Duration = Duration::from_millis(200);

/// Runs `f` on a clone of `mempool` on tokio's blocking pool and awaits it.
async fn blocking<T, F>(mempool: &RedisMempool, f: F) -> Result<T, BoxError>
where
    F: FnOnce(RedisMempool) -> Result<T, dolos_redis::Error> + Send + 'static,
    T: Send + 'static,
{
    let m = mempool.clone();
    Ok(tokio::task::spawn_blocking(move || f(m)).await??)
}

/// Forwards the crossbeam receiver into a tokio channel from a dedicated thread; the returned
/// receiver yields `None` once the mempool is gone.
fn event_stream(
    events: crossbeam_channel::Receiver<MempoolEvent>,
) -> std::io::Result<mpsc::Receiver<MempoolEvent>> {
    let (tx, rx) = mpsc::channel(1024);
    std::thread::Builder::new()
        .name("events-bridge".into())
        .spawn(move || {
            for event in events {
                // Fails only when the async side dropped its receiver: stop listening.
                if tx.blocking_send(event).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

fn short(hash: &TxHash) -> String {
    hash.to_string()[..8].to_string()
}

/// A block of a chain: its point and the transactions it contains.
type Block = (ChainPoint, Vec<TxHash>);

fn point(slot: u64, fork: u8) -> ChainPoint {
    ChainPoint::Specific(slot, BlockHash::from([fork; 32]))
}

/// The reconcile step, on the blocking pool: makes the applied chain in Redis end on `chain`
/// and returns how many of `chain`'s blocks it now holds (the host replays the rest), or `None`
/// when it must wait: the applied tip is above our tip (this host may be behind), or no applied
/// block is on our chain and ours starts after the oldest of them (only a host that knows its
/// chain back to there may roll back to Origin).
async fn reconcile(mempool: &RedisMempool, chain: &[Block]) -> Result<Option<usize>, BoxError> {
    let applied = blocking(mempool, |m| m.applied_points(usize::MAX)).await?; // newest first
    let position = |p: &ChainPoint| chain.iter().position(|(q, _)| q == p);
    let our_tip = chain.last().map_or(0, |(p, _)| p.slot());
    let our_first = chain.first().map_or(0, |(p, _)| p.slot());
    let common = applied.iter().position(|p| position(p).is_some());
    let (undo, keep) = match (common, applied.first(), applied.last()) {
        (None, None, _) => (false, 0),
        (Some(0), Some(tip), _) => (false, position(tip).map_or(0, |i| i + 1)),
        (_, Some(tip), _) if tip.slot() > our_tip => return Ok(None),
        (Some(k), _, _) => (true, position(&applied[k]).map_or(0, |i| i + 1)),
        (None, _, Some(oldest)) if our_first > oldest.slot() => return Ok(None),
        (None, _, _) => (true, 0),
    };
    if undo {
        let to = keep
            .checked_sub(1)
            .map_or(ChainPoint::Origin, |i| chain[i].0);
        let outcome = blocking(mempool, move |m| m.rollback_to(&to)).await?;
        info!(
            to = to.slot(),
            undone = common.unwrap_or(applied.len()),
            ?outcome,
            "reconcile: rolled back"
        );
        if !matches!(
            outcome,
            ConfirmOutcome::Applied | ConfirmOutcome::AlreadyApplied
        ) {
            return Ok(None);
        }
    }
    Ok(Some(keep))
}

/// Propagation: takes what is pending, "sends it to peers", marks it inflight.
async fn propagate(mempool: &RedisMempool) -> Result<(), BoxError> {
    let pending: Vec<TxHash> = blocking(mempool, |m| m.peek_pending(100))
        .await?
        .into_iter()
        .map(|tx| tx.hash)
        .collect();
    if !pending.is_empty() {
        info!(count = pending.len(), "propagating");
        blocking(mempool, move |m| m.mark_inflight(&pending)).await?;
    }
    Ok(())
}

const USAGE: &str = "\
usage: async_host [--help]

A tokio host in the style of Dolos: calls in spawn_blocking, events as an async
stream, the crate's log lines in a tracing subscriber, the reconcile step on
takeover. Uses $REDIS_URL, else starts a private redis-server (redis-server on
the PATH). RUST_LOG=debug adds the DEBUG lines.";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    support::help_only("async_host", USAGE);
    // Only plain level names here: the `env-filter` feature (full RUST_LOG syntax) is not
    // enabled, to keep the example's dependencies small.
    let level = match std::env::var("RUST_LOG").as_deref() {
        Ok("trace") => tracing::Level::TRACE,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    // Installs the global tracing subscriber *and* the LogTracer (see point 3 above).
    tracing_subscriber::fmt().with_max_level(level).init();

    // Keep the private server alive until the end; dropping it kills the process.
    let (server, url) = tokio::task::spawn_blocking(support::server::from_env).await?;
    info!(%url, "using redis");

    let config = Config::new(url)
        .key_prefix(format!("async-host:{}", std::process::id()))
        .watcher_lock_ttl(Duration::from_secs(3));
    // The watcher before us: opened first, so it holds the lock.
    let first_config = config.clone();
    let first = tokio::task::spawn_blocking(move || RedisMempool::open(first_config)).await??;
    let mempool = tokio::task::spawn_blocking(move || RedisMempool::open(config)).await??;
    info!(node = %mempool.node_id(), watcher = mempool.is_watcher(), "mempool open");

    // Subscribe before acting, so the stream holds every transition below.
    let events = blocking(&mempool, |m| Ok(m.subscribe())).await?;
    let mut stream = event_stream(events)?;

    // The consumer: logs each event, says when our own release has been seen, and returns how
    // many tx events it saw once the stream ends.
    let node_id = mempool.node_id().to_string();
    let (released_tx, released_rx) = oneshot::channel();
    let consumer = tokio::spawn(async move {
        let mut released = Some(released_tx);
        let mut tx_events = 0u32;
        while let Some(event) = stream.recv().await {
            match &event {
                MempoolEvent::Tx { seq, tx } => {
                    tx_events += 1;
                    info!(
                        seq,
                        tx = %short(&tx.hash),
                        stage = ?tx.stage,
                        confirmations = tx.confirmations,
                        misses = tx.non_confirmations,
                        "event: tx"
                    );
                }
                MempoolEvent::BlockApplied {
                    seq,
                    point,
                    height,
                    rollback,
                    ..
                } => {
                    info!(
                        seq,
                        slot = point.slot(),
                        height,
                        rollback,
                        "event: block applied"
                    );
                }
                MempoolEvent::WatcherAcquired {
                    seq,
                    node_id,
                    epoch,
                } => {
                    info!(seq, node = &node_id[..8], epoch, "event: watcher acquired");
                }
                MempoolEvent::WatcherReleased {
                    seq,
                    node_id: who,
                    epoch,
                } => {
                    info!(seq, node = &who[..8], epoch, "event: watcher released");
                    if *who == node_id {
                        if let Some(tx) = released.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                MempoolEvent::Lagged { missed } => warn!(missed, "event: lagged"),
                other => info!(?other, "event"),
            }
        }
        info!("event stream ended");
        tx_events
    });

    // Three transactions, propagated by this host: one gets into block 1, one into the
    // abandoned block 3 (and later into 5'), one never gets into a block.
    let txs: Vec<TxHash> = (1..=3u8).map(|i| TxHash::from([i; 32])).collect();
    for (i, hash) in txs.iter().enumerate() {
        let tx = MempoolTx::new(*hash, EraCbor(6, vec![0x84, 0xa0, i as u8]));
        blocking(&mempool, move |m| m.receive(tx)).await?;
    }
    propagate(&mempool).await?;
    let acked = vec![txs[0]];
    blocking(&mempool, move |m| m.mark_acknowledged(&acked)).await?;

    // The first watcher's chain: 1, 2, then 3, which the chain abandons.
    let theirs: Vec<Block> = vec![
        (point(10, 1), vec![txs[0]]),
        (point(20, 2), vec![]),
        (point(30, 3), vec![txs[1]]),
    ];
    blocking(&first, move |m| {
        for (p, seen) in &theirs {
            m.confirm(p, seen, &[], FINALIZE, DROP)?;
        }
        Ok(())
    })
    .await?;
    blocking(&first, |m| m.shutdown()).await?;
    info!("the first watcher applied blocks 1, 2, 3 and shut down");
    // Its release woke this host's lease thread, which takes over within milliseconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !mempool.is_watcher() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Our chain: 1, 2, then the fork 3' (slot 25, below block 3's 30), read while the other
    // node was watcher; then one new block per tick. 5' holds the tx of the abandoned block.
    let mut chain: Vec<Block> = vec![
        (point(10, 1), vec![txs[0]]),
        (point(20, 2), vec![]),
        (point(25, 0xf3), vec![]),
    ];
    let arriving: Vec<Block> = vec![
        (point(40, 0xf4), vec![]),
        (point(50, 0xf5), vec![txs[1]]),
        (point(60, 0xf6), vec![]),
        (point(70, 0xf7), vec![]),
    ];
    // `Some(n)`: Redis's applied chain ends with our first n blocks.
    let mut synced: Option<usize> = None;
    let mut was_watcher = false;
    let mut ticker = tokio::time::interval(BLOCK_TIME);
    for block in arriving {
        ticker.tick().await;
        chain.push(block);
        propagate(&mempool).await?;
        let watcher = mempool.is_watcher();
        if watcher != was_watcher {
            // A takeover (or a loss): whoever held the lock meanwhile may have changed it.
            synced = None;
            was_watcher = watcher;
        }
        if !watcher {
            continue;
        }
        if synced.is_none() {
            match reconcile(&mempool, &chain).await {
                Ok(Some(keep)) => {
                    info!(replaying = chain.len() - keep, "reconciled");
                    synced = Some(keep);
                }
                Ok(None) => info!("not reconciling yet: the applied chain is ahead of ours"),
                Err(e) => warn!(%e, "reconcile failed; trying again at the next block"),
            }
        }
        let Some(from) = synced else { continue };
        for (i, (p, seen)) in chain.iter().enumerate().skip(from) {
            let (p, seen) = (*p, seen.clone());
            match blocking(&mempool, move |m| m.confirm(&p, &seen, &[], FINALIZE, DROP)).await {
                Ok(outcome @ (ConfirmOutcome::Applied | ConfirmOutcome::AlreadyApplied)) => {
                    info!(slot = p.slot(), ?outcome, "block");
                    synced = Some(i + 1);
                }
                other => {
                    // Not applied: start over from a reconcile, never skip the block.
                    warn!(slot = p.slot(), ?other, "block not applied");
                    synced = None;
                    break;
                }
            }
        }
    }

    let mut ok = true;
    let expected = [
        (MempoolTxStage::Finalized, Some(point(10, 1))),
        (MempoolTxStage::Finalized, Some(point(50, 0xf5))),
        (MempoolTxStage::Dropped, None),
    ];
    for (hash, (stage, at)) in txs.iter().zip(expected) {
        let h = *hash;
        let status = blocking(&mempool, move |m| m.check_status(&h)).await?;
        info!(
            tx = %short(hash),
            stage = ?status.stage,
            confirmations = status.confirmations,
            confirmed_at = ?status.confirmed_at.map(|p| p.slot()),
            "final status"
        );
        ok &= status.stage == stage && status.confirmed_at == at;
    }
    let stats = blocking(&mempool, |m| m.stats()).await?;
    info!(
        finalized_log = stats.finalized_log,
        applied_blocks = stats.applied_blocks,
        renewals = stats.renewals,
        "stats"
    );
    // The applied chain is ours, block for block.
    let mut applied = blocking(&mempool, |m| m.applied_points(usize::MAX)).await?;
    applied.reverse();
    let ours: Vec<ChainPoint> = chain.iter().map(|(p, _)| *p).collect();
    info!(
        height = applied.len(),
        "applied chain = our chain: {}",
        applied == ours
    );
    ok &= applied == ours;

    // Graceful stop: release the lock (on a clone), wait until the release comes back as an
    // event, then drop the last clone, which ends the stream.
    blocking(&mempool, |m| m.shutdown()).await?;
    if tokio::time::timeout(Duration::from_secs(5), released_rx)
        .await
        .is_err()
    {
        warn!("no release event within 5 s");
        ok = false;
    }
    drop(mempool);
    let tx_events = consumer.await?;
    // received ×3, propagated ×4 (tx 2 twice), acknowledged ×1, confirmed ×5 (tx 1 by blocks 1
    // and 2; tx 2 by 3, then by 5' and 6'), finalized ×2, dropped ×1, rolled back ×1 (tx 2).
    let expected = 3 + 4 + 1 + 5 + 2 + 1 + 1;
    info!(tx_events, expected, "done");
    ok &= tx_events == expected;

    if let Some(server) = server {
        tokio::task::spawn_blocking(move || drop(server)).await?;
    }
    if !ok {
        return Err("the transactions did not end as expected".into());
    }
    Ok(())
}
