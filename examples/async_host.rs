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
//! The story: one node opens the shared mempool (a lone node becomes the watcher at once), three
//! transactions are received and propagated, a small simulated chain applies a block every
//! 200 ms; two transactions reach Finalized and the third, never included, is Dropped. The node
//! then shuts down gracefully, releasing the lock, and the event stream ends.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use dolos_redis::{
    BlockHash, ChainPoint, Config, EraCbor, MempoolEvent, MempoolTx, MempoolTxStage, RedisMempool,
    TxHash,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Confirmations to finalize, and blocks missed to drop.
const FINALIZE: u32 = 3;
const DROP: u32 = 2;
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
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
    let (server, url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = tokio::task::spawn_blocking(support::RedisServer::start).await?;
            let url = server.url();
            (Some(server), url)
        }
    };
    info!(%url, "using redis");

    let config = Config::new(url)
        .key_prefix(format!("async-host:{}", std::process::id()))
        .watcher_lock_ttl(Duration::from_secs(3));
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

    // Three transactions: two get into the chain, one never does.
    let txs: Vec<TxHash> = (1..=3u8).map(|i| TxHash::from([i; 32])).collect();
    for (i, hash) in txs.iter().enumerate() {
        let tx = MempoolTx::new(*hash, EraCbor(6, vec![0x84, 0xa0, i as u8]));
        blocking(&mempool, move |m| m.receive(tx)).await?;
    }
    // Propagation: take what is pending, "send it to peers", mark it inflight.
    let pending: Vec<TxHash> = blocking(&mempool, |m| m.peek_pending(100))
        .await?
        .into_iter()
        .map(|tx| tx.hash)
        .collect();
    info!(count = pending.len(), "propagating");
    let sent = pending.clone();
    blocking(&mempool, move |m| m.mark_inflight(&sent)).await?;
    let acked = vec![txs[0]];
    blocking(&mempool, move |m| m.mark_acknowledged(&acked)).await?;

    // The chain: the first block contains txs 1 and 2, the others are empty.
    let included = vec![txs[0], txs[1]];
    let mut ticker = tokio::time::interval(BLOCK_TIME);
    for slot in 1..=FINALIZE as u64 {
        ticker.tick().await;
        let seen = if slot == 1 { included.clone() } else { vec![] };
        let point = ChainPoint::Specific(slot, BlockHash::from([slot as u8; 32]));
        let outcome = blocking(&mempool, move |m| {
            m.confirm(&point, &seen, &[], FINALIZE, DROP)
        })
        .await?;
        info!(slot, ?outcome, "block");
    }

    let mut ok = true;
    for (hash, want) in txs.iter().zip([
        MempoolTxStage::Finalized,
        MempoolTxStage::Finalized,
        MempoolTxStage::Dropped,
    ]) {
        let h = *hash;
        let status = blocking(&mempool, move |m| m.check_status(&h)).await?;
        info!(tx = %short(hash), stage = ?status.stage, confirmations = status.confirmations, "final status");
        ok &= status.stage == want;
    }
    let stats = blocking(&mempool, |m| m.stats()).await?;
    info!(
        finalized_log = stats.finalized_log,
        applied_blocks = stats.applied_blocks,
        renewals = stats.renewals,
        "stats"
    );

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
    // receive ×3, propagated ×3, acknowledged ×1, confirmed ×2 per block before the last,
    // finalized ×2, dropped ×1.
    let expected = 3 + 3 + 1 + 2 * (FINALIZE - 1) + 2 + 1;
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
