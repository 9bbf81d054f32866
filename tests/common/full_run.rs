//! One complete run of the mempool — every public call a node makes, from two nodes, with a
//! graceful handover, the operator's lock reset and a crashed watcher replaced through its
//! liveness subscription — for the tests that change *how* a node
//! reaches Redis (a restricted ACL user, TLS, a cluster) rather than what it does there. If any
//! command a node sends were refused or mangled on that path, some step here fails.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use dolos_redis::{
    BlockHash, ChainPoint, Config, ConfirmOutcome, Error, MempoolEvent, MempoolTxStage,
    RedisMempool, TxHash,
};

use dolos_redis_testkit::wait_until;

use super::{hash, stage_of, tx, SETTLE};

/// Lock TTL of the run: long enough that the watcher never loses its lock by accident on a
/// loaded machine, and that a follower's poll (every third of it) is far slower than the wake
/// channel — so a fast handover proves the wake channel works on this path.
pub const TTL: Duration = Duration::from_secs(6);

/// Finalize and drop thresholds of the run.
const F: u32 = 3;
const D: u32 = 3;

/// What the run measured, for the caller to print.
#[derive(Debug)]
pub struct Report {
    /// From `shutdown` of the watcher to the other node's flag going up.
    pub handover: Duration,
    /// From the operator's reset of the watcher's lock to the other node's flag going up.
    pub takeover_after_reset: Duration,
    /// From a crash of the watcher (`abandon`, which closes its liveness connection as the
    /// kernel would) to a follower's flag going up.
    pub takeover_after_crash: Duration,
    /// How long the crashed watcher's lock still had to live: the takeover came before it.
    pub crashed_lock_left: Duration,
}

/// Runs the whole life of three transactions from two nodes opened with `config()` (plus an
/// observer), checking every answer. `config()` must give the same key prefix each time and
/// a TTL of [`TTL`]; the prefix must be unused.
pub fn full_run(config: &dyn Fn() -> Config) -> Report {
    let a = RedisMempool::open(config()).expect("open node a");
    assert!(
        wait_until(SETTLE, || a.is_watcher()),
        "a lone node must become watcher"
    );
    let b = RedisMempool::open(config()).expect("open node b");
    assert!(!b.is_watcher(), "two watchers");
    // An observer, which never competes for the lock, reads the events (XREAD) of every
    // transition the others make, and later resets the lock as an operator's tool would.
    let observer =
        RedisMempool::open(config().watcher_candidate(false)).expect("open the observer");
    let events = observer.subscribe();

    // Receive from both nodes; a duplicate is refused.
    a.receive(tx(1)).expect("receive 1");
    b.receive(tx(2)).expect("receive 2");
    a.receive(tx(3)).expect("receive 3");
    assert_eq!(a.receive(tx(1)), Err(Error::DuplicateTx));
    assert!(b.has_pending().expect("has_pending"));
    let pending: Vec<TxHash> = b
        .peek_pending(10)
        .expect("peek_pending")
        .iter()
        .map(|t| t.hash)
        .collect();
    assert_eq!(pending, vec![hash(1), hash(2), hash(3)]);
    // Past 32 txs a read is plain commands (ZRANGE, HMGET), not a script: the same answer.
    assert_eq!(
        a.peek_pending(100).expect("peek_pending (plain)"),
        b.peek_pending(10).expect("peek_pending")
    );

    // Propagate and acknowledge.
    b.mark_inflight(&[hash(1), hash(2), hash(3)])
        .expect("mark_inflight");
    a.mark_acknowledged(&[hash(1)]).expect("mark_acknowledged");
    assert!(!a.has_pending().expect("has_pending"));
    assert_eq!(b.peek_inflight(10).expect("peek_inflight").len(), 3);
    // The plain read: a MULTI block, then HMGET.
    assert_eq!(
        a.peek_inflight(100).expect("peek_inflight (plain)"),
        b.peek_inflight(10).expect("peek_inflight")
    );
    let found = a
        .find_inflight(&hash(1))
        .expect("find_inflight")
        .expect("tx 1 is inflight");
    assert_eq!(found.stage, MempoolTxStage::Acknowledged);
    assert_eq!(found.payload, tx(1).payload);

    // Blocks, applied by the watcher only (thresholds F = D = 3): tx 1 and 3 confirmed at slot
    // 10, block 11 applied and undone naming tx 3 (back to pending), then tx 1 finalizes and
    // tx 2 drops at slot 13, the third block of the applied chain.
    let at = ChainPoint::Specific(10, BlockHash::from([0xb1; 32]));
    assert_eq!(
        b.confirm(&at, &[hash(1), hash(3)], &[], F, D).expect("b"),
        ConfirmOutcome::NotWatcher
    );
    assert_eq!(
        a.confirm(&at, &[hash(1), hash(3)], &[], F, D)
            .expect("confirm"),
        ConfirmOutcome::Applied
    );
    assert_eq!(
        a.confirm(&at, &[hash(1), hash(3)], &[], F, D)
            .expect("confirm again"),
        ConfirmOutcome::AlreadyApplied
    );
    let confirmed = b.check_status(&hash(1)).expect("check_status");
    assert_eq!(confirmed.stage, MempoolTxStage::Confirmed);
    assert_eq!(confirmed.confirmed_at, Some(at));
    assert_eq!(
        a.confirm(&ChainPoint::Slot(11), &[], &[], F, D)
            .expect("confirm 11"),
        ConfirmOutcome::Applied
    );
    assert_eq!(
        a.confirm(&ChainPoint::Slot(11), &[], &[hash(3)], F, D)
            .expect("rollback"),
        ConfirmOutcome::Applied
    );
    assert_eq!(stage_of(&b, 3), MempoolTxStage::Pending);
    assert_eq!(
        a.rollback_to(&at).expect("rollback_to"),
        ConfirmOutcome::AlreadyApplied
    );
    assert_eq!(b.applied_points(10).expect("applied_points"), vec![at]);
    for slot in [12, 13] {
        assert_eq!(
            a.confirm(&ChainPoint::Slot(slot), &[], &[], F, D)
                .expect("confirm"),
            ConfirmOutcome::Applied
        );
    }
    assert_eq!(stage_of(&b, 1), MempoolTxStage::Finalized);
    assert_eq!(stage_of(&b, 2), MempoolTxStage::Dropped);
    let page = b.dump_finalized(0, 10).expect("dump_finalized");
    let logged: Vec<(TxHash, MempoolTxStage)> =
        page.items.iter().map(|t| (t.hash, t.stage)).collect();
    assert_eq!(
        logged,
        vec![
            (hash(1), MempoolTxStage::Finalized),
            (hash(2), MempoolTxStage::Dropped)
        ]
    );
    assert_eq!(page.next_cursor, None);

    // Reading the lock and the counts.
    let info = b.watcher_info().expect("watcher_info");
    assert_eq!(info.holder.as_deref(), Some(a.node_id()));
    assert_eq!(info.applied_slot, Some(13));
    let stats = a.stats().expect("stats");
    assert_eq!(
        (stats.pending, stats.finalized_log, stats.applied_blocks),
        (1, 2, 3),
        "{stats:?}"
    );
    assert!(stats.is_watcher);

    // Every transition reached the follower's subscriber, up to the last one made.
    let seen = wait_for_event(&events, |e| {
        matches!(e, MempoolEvent::Tx { tx, .. }
            if tx.hash == hash(2) && tx.stage == MempoolTxStage::Dropped)
    });
    assert!(
        seen.iter()
            .any(|e| matches!(e, MempoolEvent::BlockApplied { rollback: true, .. })),
        "no rollback event among {seen:#?}"
    );

    // The operator's reset: the follower hears the release on the wake channel and takes over;
    // the old watcher steps down at its next renewal.
    let t0 = Instant::now();
    let removed = observer
        .reset_watcher_lock(Some(a.node_id()))
        .expect("reset_watcher_lock");
    assert_eq!(removed.as_deref(), Some(a.node_id()));
    assert!(
        wait_until(SETTLE, || b.is_watcher()),
        "no takeover after the reset"
    );
    let takeover_after_reset = t0.elapsed();
    assert!(
        wait_until(SETTLE, || !a.is_watcher()),
        "the old watcher did not step down"
    );
    wait_for_event(
        &events,
        |e| matches!(e, MempoolEvent::WatcherAcquired { node_id, .. } if node_id == b.node_id()),
    );
    assert_eq!(
        b.confirm(&ChainPoint::Slot(14), &[], &[], F, D)
            .expect("confirm 14"),
        ConfirmOutcome::Applied
    );
    assert_eq!(
        a.confirm(&ChainPoint::Slot(15), &[], &[], F, D)
            .expect("confirm by the old watcher"),
        ConfirmOutcome::NotWatcher
    );
    // The new watcher rolls back and applies again, as a reconcile step does.
    assert_eq!(
        b.rollback_to(&ChainPoint::Slot(13)).expect("rollback_to"),
        ConfirmOutcome::Applied
    );
    assert_eq!(
        b.confirm(&ChainPoint::Slot(14), &[], &[], F, D)
            .expect("confirm 14 again"),
        ConfirmOutcome::Applied
    );

    // Graceful handover back: a hears b's release on the wake channel.
    let b_id = b.node_id().to_string();
    let t0 = Instant::now();
    b.shutdown().expect("graceful shutdown of the watcher");
    assert!(
        wait_until(SETTLE, || a.is_watcher()),
        "no takeover after a graceful shutdown"
    );
    let handover = t0.elapsed();
    wait_for_event(
        &events,
        |e| matches!(e, MempoolEvent::WatcherReleased { node_id, .. } if *node_id == b_id),
    );
    assert_eq!(
        a.confirm(&ChainPoint::Slot(15), &[], &[], F, D)
            .expect("confirm 15"),
        ConfirmOutcome::Applied
    );

    // A crash: the lock is left behind, but its holder's liveness subscription goes with it, so
    // a follower (which looked at it when it opened) takes over long before the lock expires.
    let c = RedisMempool::open(config()).expect("open node c");
    assert!(!c.is_watcher(), "two watchers");
    let t0 = Instant::now();
    a.abandon();
    let left = observer
        .watcher_info()
        .expect("watcher_info")
        .ttl
        .expect("the crashed watcher's lock is still there");
    assert!(
        wait_until(SETTLE, || c.is_watcher()),
        "no takeover after the watcher crashed"
    );
    let takeover_after_crash = t0.elapsed();
    assert!(
        takeover_after_crash < left,
        "the follower waited for the lock to expire ({takeover_after_crash:?}, {left:?} left)"
    );
    assert_eq!(
        c.confirm(&ChainPoint::Slot(16), &[], &[], F, D)
            .expect("confirm 16"),
        ConfirmOutcome::Applied
    );
    c.shutdown().expect("shutdown c");
    assert_eq!(
        observer.watcher_info().expect("watcher_info").holder,
        None,
        "the lock outlived the last watcher's shutdown"
    );
    Report {
        handover,
        takeover_after_reset,
        takeover_after_crash,
        crashed_lock_left: left,
    }
}

/// Waits until `rx` yields an event that `wanted` accepts; returns every event received up to
/// and including it. Panics after [`SETTLE`].
pub fn wait_for_event(
    rx: &Receiver<MempoolEvent>,
    wanted: impl Fn(&MempoolEvent) -> bool,
) -> Vec<MempoolEvent> {
    let deadline = Instant::now() + SETTLE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => {
                let done = wanted(&e);
                seen.push(e);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("the awaited event did not come; received {seen:#?}"),
        }
    }
}
