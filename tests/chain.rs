//! `confirm` follows the chain: the applied chain Redis keeps, forks whose blocks have earlier
//! slots, undo calls that lower depth instead of adding to it, `rollback_to`, `applied_points`,
//! and the reconcile step a new watcher runs on takeover. Real `redis-server`, public API only.

mod common;
use dolos_redis_testkit as support;

use std::time::Duration;

use common::{
    config, fork_point, hash, hashes, lone_watcher, pending, propagate, single, status, status_of,
    SETTLE,
};
use dolos_redis::{ChainPoint, Config, ConfirmOutcome, Error, MempoolTxStage, RedisMempool};
use support::{wait_until, RedisServer};

use MempoolTxStage::{Confirmed, Dropped, Finalized, Pending, Propagated};

/// Dolos's thresholds.
const F: u32 = 6;
const D: u32 = 2;

fn forward(m: &RedisMempool, at: ChainPoint, seen: &[u32], f: u32, d: u32) -> ConfirmOutcome {
    m.confirm(&at, &hashes(seen), &[], f, d).expect("confirm")
}

fn undo(m: &RedisMempool, at: ChainPoint, unseen: &[u32], f: u32, d: u32) -> ConfirmOutcome {
    m.confirm(&at, &[], &hashes(unseen), f, d)
        .expect("confirm (undo)")
}

const APPLIED: ConfirmOutcome = ConfirmOutcome::Applied;
const ALREADY: ConfirmOutcome = ConfirmOutcome::AlreadyApplied;

// ---------------------------------------------------------------------------------------------
// The three ways the slot high-water mark went wrong (issue 9)
// ---------------------------------------------------------------------------------------------

/// The chain holds 110 and 125; 125 is undone; the fork's next block is at slot 115. It must
/// apply: its txs become Confirmed and the others stop missing blocks that were undone.
#[test]
fn a_forks_first_block_at_an_earlier_slot_is_applied() {
    let (_server, m) = single();
    // D = 3 so that b survives until the fork's block, which contains it.
    let d = 3;
    propagate(&m, &[0xa, 0xb]);
    assert_eq!(forward(&m, fork_point(110, 0), &[], F, d), APPLIED);
    assert_eq!(forward(&m, fork_point(125, 0), &[0xa], F, d), APPLIED);
    assert_eq!(undo(&m, fork_point(125, 0), &[0xa], F, d), APPLIED);
    assert_eq!(status_of(&m, 0xa).stage, Pending);
    // The undo lowered the chain: b has missed one block (110), not three.
    assert_eq!(status_of(&m, 0xb), status(Propagated, 0, 1, None));

    m.mark_inflight(&[hash(0xa)]).unwrap();
    let fork = fork_point(115, 1);
    assert_eq!(forward(&m, fork, &[0xa, 0xb], F, d), APPLIED);
    assert_eq!(status_of(&m, 0xa), status(Confirmed, 1, 0, Some(fork)));
    assert_eq!(status_of(&m, 0xb), status(Confirmed, 1, 0, Some(fork)));
    assert_eq!(
        m.applied_points(10).unwrap(),
        vec![fork, fork_point(110, 0)]
    );

    // The fork goes on; both finalize at depth F, nobody drops.
    for slot in 116..116 + u64::from(F) - 1 {
        forward(&m, fork_point(slot, 1), &[], F, d);
    }
    assert_eq!(status_of(&m, 0xa).stage, Finalized);
    assert_eq!(status_of(&m, 0xb), status(Finalized, F, 0, Some(fork)));
}

/// Depth follows the chain: a tx at depth 4 whose block survives a 3-block rollback is at depth 1
/// (not 7, which would finalize it with F = 6), and an inflight tx gets no misses from undos.
#[test]
fn a_rollback_lowers_depth_instead_of_adding_to_it() {
    let (_server, m) = single();
    propagate(&m, &[1, 2, 3, 4]);
    forward(&m, fork_point(1, 0), &[1], F, 100);
    forward(&m, fork_point(2, 0), &[2], F, 100);
    forward(&m, fork_point(3, 0), &[3], F, 100);
    forward(&m, fork_point(4, 0), &[4], F, 100);
    assert_eq!(
        status_of(&m, 1),
        status(Confirmed, 4, 0, Some(fork_point(1, 0)))
    );
    // Becomes inflight at the tip: it has missed nothing yet.
    propagate(&m, &[9]);

    // Dolos undoes blocks newest first, each with its txs.
    assert_eq!(undo(&m, fork_point(4, 0), &[4], F, D), APPLIED);
    assert_eq!(undo(&m, fork_point(3, 0), &[3], F, D), APPLIED);
    assert_eq!(
        status_of(&m, 9),
        status(Propagated, 0, 0, None),
        "D = 2 undos"
    );
    assert_eq!(undo(&m, fork_point(2, 0), &[2], F, D), APPLIED);

    assert_eq!(
        status_of(&m, 1),
        status(Confirmed, 1, 0, Some(fork_point(1, 0)))
    );
    assert_eq!(status_of(&m, 9), status(Propagated, 0, 0, None));
    assert_eq!(pending(&m), hashes(&[4, 3, 2]));
    assert_eq!(m.stats().unwrap().applied_blocks, 1);

    // From the new tip, depth and misses count again.
    forward(&m, fork_point(5, 1), &[], F, D);
    assert_eq!(
        status_of(&m, 1),
        status(Confirmed, 2, 0, Some(fork_point(1, 0)))
    );
    assert_eq!(status_of(&m, 9), status(Propagated, 0, 1, None));
    forward(&m, fork_point(6, 1), &[], F, D);
    assert_eq!(status_of(&m, 9).stage, Dropped);
}

/// Watcher A applies an orphan X and leaves; B never had X. B reconciles on takeover: it rolls
/// back to the newest applied point on its own chain and replays its blocks after it. X's txs
/// return to pending and are never Finalized while off the chain.
#[test]
fn a_new_watcher_reconciles_an_orphan_its_predecessor_applied() {
    let server = RedisServer::start();
    let cfg = || config(&server, "orphan").watcher_lock_ttl(Duration::from_secs(1));
    let a = lone_watcher(cfg());
    let b = RedisMempool::open(cfg()).expect("open b");
    propagate(&a, &[1, 2, 0x0f]);

    let common = [fork_point(10, 0), fork_point(11, 0)];
    forward(&a, common[0], &[1], F, 100);
    forward(&a, common[1], &[], F, 100);
    let orphan = fork_point(12, 0xa);
    forward(&a, orphan, &[0x0f], F, 100);
    assert_eq!(status_of(&b, 0x0f).stage, Confirmed);
    a.shutdown().expect("shutdown a");
    assert!(wait_until(SETTLE, || b.is_watcher()), "b takes over");

    // B's chain: the common blocks, then its fork, which holds tx 2.
    let b_chain = [
        common[0],
        common[1],
        fork_point(12, 0xb),
        fork_point(13, 0xb),
    ];
    let applied = b.applied_points(usize::MAX).unwrap();
    assert_eq!(applied, vec![orphan, common[1], common[0]]);
    let newest_common = applied
        .iter()
        .find(|p| b_chain.contains(p))
        .copied()
        .unwrap_or(ChainPoint::Origin);
    assert_eq!(newest_common, common[1]);
    assert_eq!(b.rollback_to(&newest_common).unwrap(), APPLIED);
    assert_eq!(status_of(&b, 0x0f).stage, Pending, "the orphan's tx");
    // Replaying from the start is harmless: blocks on the chain are AlreadyApplied.
    let seen_in = |p: &ChainPoint| -> &[u32] {
        match p.slot() {
            10 => &[1],
            12 => &[2],
            _ => &[],
        }
    };
    let outcomes: Vec<_> = b_chain
        .iter()
        .map(|p| forward(&b, *p, seen_in(p), F, 100))
        .collect();
    assert_eq!(outcomes, [ALREADY, ALREADY, APPLIED, APPLIED]);

    let mut rev = b_chain.to_vec();
    rev.reverse();
    assert_eq!(b.applied_points(usize::MAX).unwrap(), rev);
    assert_eq!(status_of(&b, 1), status(Confirmed, 4, 0, Some(common[0])));
    assert_eq!(status_of(&b, 2), status(Confirmed, 2, 0, Some(b_chain[2])));
    // The orphan's tx stays pending however long the chain grows.
    for slot in 14..24 {
        forward(&b, fork_point(slot, 0xb), &[], F, 100);
    }
    assert_eq!(status_of(&b, 0x0f).stage, Pending);
    assert_eq!(status_of(&b, 1).stage, Finalized);
    assert_eq!(status_of(&b, 2).stage, Finalized);
}

// ---------------------------------------------------------------------------------------------
// The contract, rule by rule
// ---------------------------------------------------------------------------------------------

#[test]
fn points_are_compared_whole() {
    let (_server, m) = single();
    assert_eq!(forward(&m, fork_point(5, 0), &[], F, D), APPLIED);
    // Same slot, other hash: another block. A bare slot is a third one.
    assert_eq!(forward(&m, fork_point(5, 1), &[], F, D), APPLIED);
    assert_eq!(forward(&m, ChainPoint::Slot(5), &[], F, D), APPLIED);
    assert_eq!(forward(&m, ChainPoint::Slot(5), &[], F, D), ALREADY);
    assert_eq!(forward(&m, fork_point(5, 0), &[], F, D), ALREADY);
    assert_eq!(
        m.applied_points(usize::MAX).unwrap(),
        vec![ChainPoint::Slot(5), fork_point(5, 1), fork_point(5, 0)]
    );
}

#[test]
fn an_undo_removes_the_block_and_every_block_after_it() {
    let (_server, m) = single();
    propagate(&m, &[1, 2, 3]);
    forward(&m, fork_point(1, 0), &[1], F, 100);
    forward(&m, fork_point(2, 0), &[2], F, 100);
    forward(&m, fork_point(3, 0), &[3], F, 100);

    // Undo block 2 (not the tip): blocks 2 and 3 go, and with them tx 3, which block 3 first
    // confirmed although the host did not list it.
    assert_eq!(undo(&m, fork_point(2, 0), &[2], F, 100), APPLIED);
    assert_eq!(m.applied_points(10).unwrap(), vec![fork_point(1, 0)]);
    assert_eq!(pending(&m), hashes(&[2, 3]));
    assert_eq!(
        status_of(&m, 1),
        status(Confirmed, 1, 0, Some(fork_point(1, 0)))
    );

    // Replaying the undo (or an undo of a block never applied) changes nothing.
    assert_eq!(undo(&m, fork_point(2, 0), &[2], F, 100), ALREADY);
    assert_eq!(undo(&m, fork_point(3, 0), &[3], F, 100), ALREADY);
    assert_eq!(undo(&m, fork_point(9, 0), &[1], F, 100), ALREADY);
    assert_eq!(
        status_of(&m, 1),
        status(Confirmed, 1, 0, Some(fork_point(1, 0)))
    );
    assert_eq!(pending(&m), hashes(&[2, 3]));
}

#[test]
fn an_undo_returns_every_inflight_tx_it_names_but_never_a_final_one() {
    let (_server, m) = single();
    propagate(&m, &[1, 2, 3]);
    m.mark_acknowledged(&hashes(&[2])).unwrap();
    forward(&m, fork_point(1, 0), &[1], 1, 100); // tx 1 finalizes at once (F = 1)
    forward(&m, fork_point(2, 0), &[], F, 100);
    assert_eq!(status_of(&m, 1).stage, Finalized);

    // Tx 3 was confirmed by no undone block, but the host lists it: back to pending too.
    assert_eq!(undo(&m, fork_point(2, 0), &[3, 1, 2], F, 100), APPLIED);
    assert_eq!(pending(&m), hashes(&[3, 2]));
    assert_eq!(status_of(&m, 1).stage, Finalized);
    assert_eq!(m.stats().unwrap().acknowledged, 0);
}

#[test]
fn an_empty_undo_is_a_replay() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    forward(&m, fork_point(1, 0), &[1], F, D);
    // What Dolos sends to undo a block without txs is what a replay of that block looks like.
    assert_eq!(forward(&m, fork_point(1, 0), &[], F, D), ALREADY);
    assert_eq!(m.applied_points(10).unwrap(), vec![fork_point(1, 0)]);
    assert_eq!(
        status_of(&m, 1),
        status(Confirmed, 1, 0, Some(fork_point(1, 0)))
    );
}

#[test]
fn rollback_to_undoes_every_block_after_the_point() {
    let (_server, m) = single();
    propagate(&m, &[1, 2, 3]);
    forward(&m, fork_point(1, 0), &[1], F, 100);
    forward(&m, fork_point(2, 0), &[2], F, 100);
    propagate(&m, &[4]); // inflight at height 2
    forward(&m, fork_point(3, 0), &[3], F, 100);
    assert_eq!(status_of(&m, 4), status(Propagated, 0, 1, None));

    assert_eq!(m.rollback_to(&fork_point(1, 0)).unwrap(), APPLIED);
    assert_eq!(m.applied_points(10).unwrap(), vec![fork_point(1, 0)]);
    assert_eq!(
        pending(&m),
        hashes(&[2, 3]),
        "in the order they were confirmed"
    );
    assert_eq!(
        status_of(&m, 1),
        status(Confirmed, 1, 0, Some(fork_point(1, 0)))
    );
    // Became inflight above the new tip: counts from it.
    assert_eq!(status_of(&m, 4), status(Propagated, 0, 0, None));

    // At the tip already: nothing to do.
    assert_eq!(m.rollback_to(&fork_point(1, 0)).unwrap(), ALREADY);
    // Origin undoes the whole retained chain.
    assert_eq!(m.rollback_to(&ChainPoint::Origin).unwrap(), APPLIED);
    assert!(m.applied_points(10).unwrap().is_empty());
    assert_eq!(pending(&m), hashes(&[2, 3, 1]));
    assert_eq!(m.rollback_to(&ChainPoint::Origin).unwrap(), ALREADY);
    assert_eq!(m.stats().unwrap().applied_blocks, 0);
}

#[test]
fn rollback_to_a_point_off_the_chain_is_invalid_and_changes_nothing() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    forward(&m, fork_point(1, 0), &[], F, D);
    forward(&m, fork_point(2, 0), &[1], F, D);
    let before = status_of(&m, 1);
    for off in [fork_point(1, 1), ChainPoint::Slot(1), fork_point(3, 0)] {
        match m.rollback_to(&off) {
            Err(Error::InvalidInput(msg)) => assert!(msg.contains("not on the applied chain")),
            other => panic!("rollback_to({off:?}): {other:?}"),
        }
    }
    assert_eq!(status_of(&m, 1), before);
    assert_eq!(
        m.applied_points(10).unwrap(),
        vec![fork_point(2, 0), fork_point(1, 0)]
    );
}

#[test]
fn only_the_watcher_rolls_back() {
    let server = RedisServer::start();
    let cfg = || config(&server, "rb-fence");
    let watcher = lone_watcher(cfg());
    let follower = RedisMempool::open(cfg()).expect("open");
    forward(&watcher, fork_point(1, 0), &[], F, D);
    forward(&watcher, fork_point(2, 0), &[], F, D);
    assert_eq!(
        follower.rollback_to(&fork_point(1, 0)).unwrap(),
        ConfirmOutcome::NotWatcher
    );
    assert_eq!(follower.applied_points(10).unwrap().len(), 2);
}

#[test]
fn the_chain_keeps_the_newest_applied_history_blocks() {
    let server = RedisServer::start();
    let m = lone_watcher(config(&server, "history").applied_history(3));
    for slot in 1..=5 {
        assert_eq!(forward(&m, fork_point(slot, 0), &[], F, D), APPLIED);
    }
    assert_eq!(
        m.applied_points(usize::MAX).unwrap(),
        vec![fork_point(5, 0), fork_point(4, 0), fork_point(3, 0)]
    );
    assert_eq!(
        m.applied_points(2).unwrap(),
        vec![fork_point(5, 0), fork_point(4, 0)]
    );
    assert!(m.applied_points(0).unwrap().is_empty());
    // Full: a block at or below the oldest retained slot is taken for a replay.
    assert_eq!(forward(&m, fork_point(2, 0), &[], F, D), ALREADY);
    assert_eq!(forward(&m, fork_point(3, 7), &[], F, D), ALREADY);
    assert_eq!(forward(&m, fork_point(4, 7), &[], F, D), APPLIED);
    assert_eq!(m.stats().unwrap().applied_blocks, 6);
    // Rolling back reaches the oldest retained block, not what was trimmed.
    assert_eq!(m.rollback_to(&fork_point(4, 0)).unwrap(), APPLIED);
    assert_eq!(m.stats().unwrap().applied_blocks, 4);
    assert_eq!(
        m.applied_points(usize::MAX).unwrap(),
        vec![fork_point(4, 0)]
    );
    assert!(matches!(
        m.rollback_to(&fork_point(3, 0)),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn applied_history_must_be_at_least_one() {
    let err = RedisMempool::open(Config::new("redis://127.0.0.1:1").applied_history(0))
        .expect_err("refused");
    assert!(
        matches!(&err, Error::InvalidConfig(m) if m.starts_with("applied_history")),
        "{err:?}"
    );
}
