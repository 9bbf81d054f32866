//! The lifecycle rules of the shared mempool (rules 1-10 of the contract), each proven against a
//! real `redis-server` started for the test, through the public API only.
//!
//! Most tests use one node, which is the watcher as soon as `open` returns. Tests about several
//! nodes say so in their name.

mod common;
use dolos_redis_testkit as support;

use std::time::Duration;

use common::{
    config, hash, hashes, inflight, lone_watcher, open, pending, propagate, receive, single,
    stage_of, status, status_of, tx, SETTLE,
};
use dolos_redis::{
    BlockHash, ChainPoint, ConfirmOutcome, EraCbor, Error, MempoolTx, MempoolTxStage, RedisMempool,
    TxHash, TxStatus,
};
use support::{wait_until, RedisServer};

use MempoolTxStage::{Acknowledged, Confirmed, Dropped, Finalized, Pending, Propagated, Unknown};

/// The thresholds of the contract's scenarios.
const F: u32 = 6;
const D: u32 = 2;

fn block(i: u8) -> BlockHash {
    BlockHash::from([0xb0 ^ i; 32])
}

fn confirm_with(
    m: &RedisMempool,
    point: ChainPoint,
    seen: &[u32],
    unseen: &[u32],
    finalize_threshold: u32,
    drop_threshold: u32,
) -> ConfirmOutcome {
    m.confirm(
        &point,
        &hashes(seen),
        &hashes(unseen),
        finalize_threshold,
        drop_threshold,
    )
    .expect("confirm")
}

/// Applies a block with the scenario thresholds (F=6, D=2) and insists it was applied.
fn apply_at(m: &RedisMempool, point: ChainPoint, seen: &[u32], unseen: &[u32]) {
    let outcome = confirm_with(m, point, seen, unseen, F, D);
    assert_eq!(outcome, ConfirmOutcome::Applied, "block at {point:?}");
}

fn apply(m: &RedisMempool, slot: u64, seen: &[u32], unseen: &[u32]) {
    apply_at(m, ChainPoint::Slot(slot), seen, unseen);
}

fn applied_slot(m: &RedisMempool) -> Option<u64> {
    m.watcher_info().expect("watcher_info").applied_slot
}

/// Every entry of the finalized log, oldest first.
fn log(m: &RedisMempool) -> Vec<MempoolTx> {
    let page = m.dump_finalized(0, usize::MAX).expect("dump_finalized");
    assert_eq!(page.next_cursor, None, "an unbounded page reaches the end");
    page.items
}

fn log_hashes(m: &RedisMempool) -> Vec<TxHash> {
    log(m).iter().map(|t| t.hash).collect()
}

// ---------------------------------------------------------------------------------------------
// Rule 1: receive
// ---------------------------------------------------------------------------------------------

#[test]
fn receive_stores_pending_at_the_tail_of_the_queue() {
    let (_server, m) = single();
    receive(&m, &[3, 1, 2]);
    assert_eq!(pending(&m), hashes(&[3, 1, 2]));
    assert_eq!(
        m.peek_pending(usize::MAX).unwrap(),
        vec![tx(3), tx(1), tx(2)]
    );
    assert_eq!(status_of(&m, 1), status(Pending, 0, 0, None));

    // Whatever stage and counters the caller fills in, a received tx enters as fresh Pending.
    let mut claimed = tx(4);
    claimed.stage = Finalized;
    claimed.confirmations = 9;
    claimed.non_confirmations = 3;
    claimed.confirmed_at = Some(ChainPoint::Slot(7));
    m.receive(claimed).unwrap();
    assert_eq!(status_of(&m, 4), status(Pending, 0, 0, None));
    assert_eq!(pending(&m), hashes(&[3, 1, 2, 4]));
}

#[test]
fn receive_rejects_pending_inflight_and_finalized_duplicates() {
    let (_server, m) = single();

    // Finalized first, with F=1, so later blocks cannot finalize the others.
    propagate(&m, &[5]);
    assert!(confirm_with(&m, ChainPoint::Slot(1), &[5], &[], 1, D).is_applied());
    assert_eq!(stage_of(&m, 5), Finalized);

    receive(&m, &[1]);
    propagate(&m, &[2, 3, 4]);
    m.mark_acknowledged(&[hash(3)]).unwrap();
    apply(&m, 2, &[4], &[]);
    let before: Vec<TxStatus> = (1..=5).map(|i| status_of(&m, i)).collect();
    assert_eq!(
        before.iter().map(|s| s.stage).collect::<Vec<_>>(),
        vec![Pending, Propagated, Acknowledged, Confirmed, Finalized]
    );

    for i in 1..=5 {
        // A different body under the same hash must not replace the stored one.
        let again = MempoolTx::new(hash(i), EraCbor(7, vec![0xff; 4]));
        assert_eq!(m.receive(again), Err(Error::DuplicateTx), "tx {i}");
    }
    let after: Vec<TxStatus> = (1..=5).map(|i| status_of(&m, i)).collect();
    assert_eq!(after, before, "a rejected duplicate changes nothing");
    assert_eq!(m.peek_pending(usize::MAX).unwrap(), vec![tx(1)]);
    let bodies: Vec<EraCbor> = m
        .peek_inflight(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|t| t.payload)
        .collect();
    assert_eq!(bodies, vec![tx(2).payload, tx(3).payload, tx(4).payload]);
    assert_eq!(log(&m).len(), 1);
}

#[test]
fn dropped_tx_can_be_received_again() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    apply(&m, 1, &[], &[]);
    apply(&m, 2, &[], &[]);
    assert_eq!(status_of(&m, 1), status(Dropped, 0, 2, None));

    let revived = MempoolTx::new(hash(1), EraCbor(7, vec![1, 2, 3]));
    m.receive(revived.clone()).unwrap();
    assert_eq!(status_of(&m, 1), status(Pending, 0, 0, None));
    assert_eq!(m.peek_pending(usize::MAX).unwrap(), vec![revived.clone()]);
    assert_eq!(m.receive(revived), Err(Error::DuplicateTx), "now pending");

    // The log still holds the earlier life of the tx, with its old body.
    let entries = log(&m);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].stage, Dropped);
    assert_eq!(entries[0].payload, tx(1).payload);

    // The revived tx lives a normal life again.
    m.mark_inflight(&[hash(1)]).unwrap();
    assert_eq!(status_of(&m, 1), status(Propagated, 0, 0, None));
}

#[test]
fn oversized_tx_is_rejected_and_nothing_is_stored() {
    let server = RedisServer::start();
    let m = lone_watcher(config(&server, "lifecycle").max_tx_size(16));

    let big = MempoolTx::new(hash(1), EraCbor(6, vec![7; 17]));
    assert_eq!(m.receive(big), Err(Error::TxTooLarge { size: 17, max: 16 }));
    assert_eq!(status_of(&m, 1), status(Unknown, 0, 0, None));
    assert!(!m.has_pending().unwrap());
    assert!(pending(&m).is_empty());

    let fits = MempoolTx::new(hash(2), EraCbor(6, vec![7; 16]));
    m.receive(fits.clone()).unwrap();
    assert_eq!(m.peek_pending(usize::MAX).unwrap(), vec![fits]);
}

#[test]
fn full_pending_queue_rejects_and_stores_nothing() {
    let server = RedisServer::start();
    let m = lone_watcher(config(&server, "lifecycle").max_pending(2));
    receive(&m, &[1, 2]);
    assert_eq!(m.receive(tx(3)), Err(Error::MempoolFull { max: 2 }));
    assert_eq!(status_of(&m, 3), status(Unknown, 0, 0, None));
    assert_eq!(pending(&m), hashes(&[1, 2]));

    // The limit is on the pending queue: once a tx leaves it, there is room again.
    m.mark_inflight(&[hash(1)]).unwrap();
    receive(&m, &[3]);
    assert_eq!(pending(&m), hashes(&[2, 3]));
    assert_eq!(m.receive(tx(4)), Err(Error::MempoolFull { max: 2 }));
}

#[test]
fn payload_bytes_and_era_round_trip_exactly() {
    let (_server, m) = single();
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let largest = vec![0u8; 64 * 1024]; // the default max_tx_size
    let payloads = [
        EraCbor(0, Vec::new()),
        EraCbor(u16::MAX, all_bytes),
        EraCbor(1, vec![0, 0, 0]),
        EraCbor(6, b"|P|1|2|6|not a record\r\n".to_vec()),
        EraCbor(7, largest),
    ];
    let txs: Vec<MempoolTx> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| MempoolTx::new(hash(i as u32 + 1), p.clone()))
        .collect();
    for t in &txs {
        m.receive(t.clone()).unwrap();
    }
    assert_eq!(m.peek_pending(usize::MAX).unwrap(), txs);

    let ids: Vec<TxHash> = txs.iter().map(|t| t.hash).collect();
    m.mark_inflight(&ids).unwrap();
    let flying = m.peek_inflight(usize::MAX).unwrap();
    assert_eq!(
        flying.iter().map(|t| &t.payload).collect::<Vec<_>>(),
        payloads.iter().collect::<Vec<_>>()
    );
    for t in &txs {
        let found = m.find_inflight(&t.hash).unwrap().expect("inflight");
        assert_eq!(found.payload, t.payload);
    }

    assert!(m
        .confirm(&ChainPoint::Slot(1), &ids, &[], 1, D)
        .unwrap()
        .is_applied());
    let finalized = log(&m);
    assert_eq!(finalized.len(), txs.len());
    for t in &txs {
        let entry = finalized.iter().find(|e| e.hash == t.hash).expect("logged");
        assert_eq!(entry.payload, t.payload);
        assert_eq!(entry.stage, Finalized);
    }
}

// ---------------------------------------------------------------------------------------------
// Rule 2: peek_pending and has_pending
// ---------------------------------------------------------------------------------------------

#[test]
fn peek_pending_returns_queue_order_and_removes_nothing() {
    let (_server, m) = single();
    assert!(!m.has_pending().unwrap());
    assert!(m.peek_pending(10).unwrap().is_empty());

    receive(&m, &[5, 4, 3, 2, 1]);
    assert!(m.has_pending().unwrap());
    assert!(m.peek_pending(0).unwrap().is_empty());
    assert_eq!(m.peek_pending(2).unwrap(), vec![tx(5), tx(4)]);
    assert_eq!(m.peek_pending(5).unwrap().len(), 5);
    let all = m.peek_pending(usize::MAX).unwrap();
    assert_eq!(all, vec![tx(5), tx(4), tx(3), tx(2), tx(1)]);
    assert_eq!(
        m.peek_pending(usize::MAX).unwrap(),
        all,
        "peeking removes nothing"
    );

    m.mark_inflight(&hashes(&[4, 2])).unwrap();
    assert_eq!(pending(&m), hashes(&[5, 3, 1]));
    m.mark_inflight(&hashes(&[5, 3, 1])).unwrap();
    assert!(!m.has_pending().unwrap());
    assert!(m.peek_pending(usize::MAX).unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Rule 3: mark_inflight
// ---------------------------------------------------------------------------------------------

#[test]
fn mark_inflight_moves_only_pending_txs() {
    let (_server, m) = single();
    // 4 Finalized (F=1 in its own block), 3 Confirmed, 2 Acknowledged with one miss, 1 pending.
    propagate(&m, &[4]);
    assert!(confirm_with(&m, ChainPoint::Slot(1), &[4], &[], 1, D).is_applied());
    propagate(&m, &[2, 3]);
    m.mark_acknowledged(&[hash(2)]).unwrap();
    apply_at(&m, ChainPoint::Specific(2, block(2)), &[3], &[]);
    receive(&m, &[1]);
    let before: Vec<TxStatus> = (2..=4).map(|i| status_of(&m, i)).collect();
    assert_eq!(
        before,
        vec![
            status(Acknowledged, 0, 1, None),
            status(Confirmed, 1, 0, Some(ChainPoint::Specific(2, block(2)))),
            status(Finalized, 1, 0, Some(ChainPoint::Slot(1))),
        ]
    );

    // Unknown 99 and a repeated hash in the same batch.
    m.mark_inflight(&hashes(&[1, 2, 3, 4, 99, 1])).unwrap();

    assert_eq!(status_of(&m, 1), status(Propagated, 0, 0, None));
    let after: Vec<TxStatus> = (2..=4).map(|i| status_of(&m, i)).collect();
    assert_eq!(
        after, before,
        "inflight and finalized txs are never overwritten"
    );
    assert_eq!(stage_of(&m, 99), Unknown);
    assert!(pending(&m).is_empty());
    assert_eq!(inflight(&m), hashes(&[2, 3, 1]), "tx 1 is inflight once");
    assert_eq!(log(&m).len(), 1);
}

#[test]
fn mark_inflight_with_an_empty_batch_changes_nothing() {
    let (_server, m) = single();
    receive(&m, &[1]);
    m.mark_inflight(&[]).unwrap();
    assert_eq!(pending(&m), hashes(&[1]));
    assert!(inflight(&m).is_empty());
}

#[test]
fn miss_count_starts_when_a_tx_becomes_inflight() {
    let (_server, m) = single();
    receive(&m, &[1]);
    // Blocks applied while the tx waits in the queue are not misses.
    for slot in 1..=3 {
        apply(&m, slot, &[], &[]);
    }
    assert_eq!(status_of(&m, 1), status(Pending, 0, 0, None));
    m.mark_inflight(&[hash(1)]).unwrap();
    assert_eq!(status_of(&m, 1), status(Propagated, 0, 0, None));
    apply(&m, 4, &[], &[]);
    assert_eq!(status_of(&m, 1), status(Propagated, 0, 1, None));
}

// ---------------------------------------------------------------------------------------------
// Rule 4: mark_acknowledged
// ---------------------------------------------------------------------------------------------

#[test]
fn mark_acknowledged_moves_only_propagated_txs() {
    let (_server, m) = single();
    propagate(&m, &[4]);
    assert!(confirm_with(&m, ChainPoint::Slot(1), &[4], &[], 1, D).is_applied());
    propagate(&m, &[2, 3]);
    apply(&m, 2, &[3], &[]);
    receive(&m, &[1]);
    let confirmed = status_of(&m, 3);
    let finalized = status_of(&m, 4);

    m.mark_acknowledged(&hashes(&[1, 2, 3, 4, 99])).unwrap();

    assert_eq!(status_of(&m, 1), status(Pending, 0, 0, None));
    assert_eq!(pending(&m), hashes(&[1]), "a pending tx stays queued");
    // The miss it had as Propagated carries over.
    assert_eq!(status_of(&m, 2), status(Acknowledged, 0, 1, None));
    assert_eq!(status_of(&m, 3), confirmed);
    assert_eq!(status_of(&m, 4), finalized);
    assert_eq!(stage_of(&m, 99), Unknown);

    m.mark_acknowledged(&hashes(&[2])).unwrap();
    assert_eq!(status_of(&m, 2), status(Acknowledged, 0, 1, None));
    m.mark_acknowledged(&[]).unwrap();
    assert_eq!(inflight(&m), hashes(&[2, 3]));
}

// ---------------------------------------------------------------------------------------------
// Rule 5: find_inflight and peek_inflight
// ---------------------------------------------------------------------------------------------

#[test]
fn find_and_peek_inflight_return_propagated_acknowledged_and_confirmed_txs() {
    let (_server, m) = single();
    receive(&m, &[1, 2, 3, 4]);
    m.mark_inflight(&[hash(4)]).unwrap();
    m.mark_inflight(&[hash(2)]).unwrap();
    m.mark_inflight(&[hash(3)]).unwrap();
    m.mark_acknowledged(&[hash(3)]).unwrap();
    let at = ChainPoint::Specific(9, block(9));
    apply_at(&m, at, &[4], &[]);

    let expect = |i: u32, stage, c, miss, confirmed_at| MempoolTx {
        stage,
        confirmations: c,
        non_confirmations: miss,
        confirmed_at,
        ..tx(i)
    };
    let two = expect(2, Propagated, 0, 1, None);
    let three = expect(3, Acknowledged, 0, 1, None);
    let four = expect(4, Confirmed, 1, 0, Some(at));

    assert_eq!(m.find_inflight(&hash(1)).unwrap(), None, "pending");
    assert_eq!(m.find_inflight(&hash(2)).unwrap(), Some(two.clone()));
    assert_eq!(m.find_inflight(&hash(3)).unwrap(), Some(three.clone()));
    assert_eq!(m.find_inflight(&hash(4)).unwrap(), Some(four.clone()));
    assert_eq!(m.find_inflight(&hash(99)).unwrap(), None, "unknown");

    assert!(m.peek_inflight(0).unwrap().is_empty());
    assert_eq!(m.peek_inflight(2).unwrap(), vec![four.clone(), two.clone()]);
    assert_eq!(m.peek_inflight(usize::MAX).unwrap(), vec![four, two, three]);

    // Once finalized or dropped a tx is no longer inflight.
    apply(&m, 10, &[], &[]);
    assert_eq!(stage_of(&m, 2), Dropped);
    assert_eq!(m.find_inflight(&hash(2)).unwrap(), None);
    assert_eq!(inflight(&m), hashes(&[4]));
}

// ---------------------------------------------------------------------------------------------
// Rules 6 and 7: confirm scenarios with F=6, D=2, and check_status
// ---------------------------------------------------------------------------------------------

#[test]
fn acknowledged_tx_finalizes_after_six_confirmations() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    m.mark_acknowledged(&[hash(1)]).unwrap();
    let first = ChainPoint::Specific(100, block(1));
    apply_at(&m, first, &[1], &[]);
    for (n, slot) in (101..=104).enumerate() {
        apply(&m, slot, &[1], &[]);
        assert_eq!(
            status_of(&m, 1),
            status(Confirmed, n as u32 + 2, 0, Some(first))
        );
    }
    apply(&m, 105, &[1], &[]);
    assert_eq!(status_of(&m, 1), status(Finalized, 6, 0, Some(first)));
    assert_eq!(m.find_inflight(&hash(1)).unwrap(), None);
    assert!(inflight(&m).is_empty());
    let expected = MempoolTx {
        stage: Finalized,
        confirmations: 6,
        confirmed_at: Some(first),
        ..tx(1)
    };
    assert_eq!(log(&m), vec![expected]);
}

#[test]
fn not_finalized_at_five_confirmations() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    for slot in 1..=5 {
        apply(&m, slot, &[1], &[]);
    }
    assert_eq!(
        status_of(&m, 1),
        status(Confirmed, 5, 0, Some(ChainPoint::Slot(1)))
    );
    assert!(m.find_inflight(&hash(1)).unwrap().is_some());
    assert!(log(&m).is_empty());
}

#[test]
fn confirmed_tx_finalizes_over_empty_blocks() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    apply(&m, 1, &[1], &[]);
    for slot in 2..=5 {
        apply(&m, slot, &[], &[]);
    }
    let at = Some(ChainPoint::Slot(1));
    assert_eq!(status_of(&m, 1), status(Confirmed, 5, 0, at));
    apply(&m, 6, &[], &[]);
    assert_eq!(status_of(&m, 1), status(Finalized, 6, 0, at));
    assert_eq!(log_hashes(&m), hashes(&[1]));
}

#[test]
fn propagated_tx_confirms_and_finalizes() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    assert_eq!(stage_of(&m, 1), Propagated);
    apply(&m, 10, &[1], &[]);
    let at = Some(ChainPoint::Slot(10));
    assert_eq!(status_of(&m, 1), status(Confirmed, 1, 0, at));
    for slot in 11..=15 {
        apply(&m, slot, &[], &[]);
    }
    assert_eq!(status_of(&m, 1), status(Finalized, 6, 0, at));
}

#[test]
fn acknowledged_tx_drops_after_two_misses() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    m.mark_acknowledged(&[hash(1)]).unwrap();
    apply(&m, 1, &[], &[]);
    assert_eq!(status_of(&m, 1), status(Acknowledged, 0, 1, None));
    apply(&m, 2, &[], &[]);
    assert_eq!(status_of(&m, 1), status(Dropped, 0, 2, None));
    assert_eq!(m.find_inflight(&hash(1)).unwrap(), None);
    let expected = MempoolTx {
        stage: Dropped,
        non_confirmations: 2,
        ..tx(1)
    };
    assert_eq!(log(&m), vec![expected]);
}

#[test]
fn propagated_tx_drops_after_two_misses() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    apply(&m, 1, &[], &[]);
    assert_eq!(status_of(&m, 1), status(Propagated, 0, 1, None));
    apply(&m, 2, &[], &[]);
    assert_eq!(status_of(&m, 1), status(Dropped, 0, 2, None));
    assert!(inflight(&m).is_empty());
    assert_eq!(log_hashes(&m), hashes(&[1]));
}

#[test]
fn not_dropped_after_one_miss() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    apply(&m, 1, &[], &[]);
    assert_eq!(status_of(&m, 1), status(Propagated, 0, 1, None));
    assert!(m.find_inflight(&hash(1)).unwrap().is_some());
    assert!(log(&m).is_empty());
}

#[test]
fn seen_block_resets_misses() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    apply(&m, 1, &[], &[]);
    assert_eq!(status_of(&m, 1), status(Propagated, 0, 1, None));
    apply(&m, 2, &[1], &[]);
    let at = Some(ChainPoint::Slot(2));
    assert_eq!(status_of(&m, 1), status(Confirmed, 1, 0, at));
    // Further blocks without it count as confirmations, not misses: it never drops now.
    for slot in 3..=4 {
        apply(&m, slot, &[], &[]);
    }
    assert_eq!(status_of(&m, 1), status(Confirmed, 3, 0, at));
}

#[test]
fn rollback_returns_inflight_txs_to_the_tail_of_the_queue() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    apply_at(&m, ChainPoint::Specific(10, block(10)), &[1], &[]);
    propagate(&m, &[3]);
    apply(&m, 11, &[], &[]);
    receive(&m, &[2]);
    assert_eq!(
        status_of(&m, 1),
        status(Confirmed, 2, 0, Some(ChainPoint::Specific(10, block(10))))
    );
    assert_eq!(status_of(&m, 3), status(Propagated, 0, 1, None));

    // Block 11 is undone, and with it the txs the host says were in it.
    apply(&m, 11, &[], &[1, 3]);

    assert_eq!(status_of(&m, 1), status(Pending, 0, 0, None));
    assert_eq!(status_of(&m, 3), status(Pending, 0, 0, None));
    assert_eq!(
        m.peek_pending(usize::MAX).unwrap(),
        vec![tx(2), tx(1), tx(3)]
    );
    assert_eq!(m.find_inflight(&hash(1)).unwrap(), None);
    assert!(inflight(&m).is_empty());
    assert!(log(&m).is_empty());
}

#[test]
fn rolled_back_tx_confirms_again_and_finalizes() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    apply_at(&m, ChainPoint::Specific(10, block(10)), &[1], &[]);
    apply_at(&m, ChainPoint::Specific(10, block(10)), &[], &[1]);
    assert_eq!(status_of(&m, 1), status(Pending, 0, 0, None));
    assert_eq!(applied_slot(&m), None);

    m.mark_inflight(&[hash(1)]).unwrap();
    assert_eq!(status_of(&m, 1), status(Propagated, 0, 0, None));
    // The fork's block at the same slot contains it again.
    let fork = ChainPoint::Specific(10, block(11));
    apply_at(&m, fork, &[1], &[]);
    assert_eq!(status_of(&m, 1), status(Confirmed, 1, 0, Some(fork)));
    for slot in 11..=14 {
        apply(&m, slot, &[], &[]);
    }
    assert_eq!(status_of(&m, 1), status(Confirmed, 5, 0, Some(fork)));
    apply(&m, 15, &[], &[]);
    assert_eq!(status_of(&m, 1), status(Finalized, 6, 0, Some(fork)));
}

#[test]
fn a_call_with_both_seen_and_unseen_txs_is_invalid_and_changes_nothing() {
    let (_server, m) = single();
    propagate(&m, &[1, 2]);
    apply(&m, 20, &[2], &[]);
    let before: Vec<TxStatus> = (1..=2).map(|i| status_of(&m, i)).collect();

    for (seen, unseen) in [(&[1u32][..], &[2u32][..]), (&[1], &[1])] {
        let at = ChainPoint::Specific(21, block(21));
        let err = m
            .confirm(&at, &hashes(seen), &hashes(unseen), F, D)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    }
    let after: Vec<TxStatus> = (1..=2).map(|i| status_of(&m, i)).collect();
    assert_eq!(after, before);
    assert_eq!(m.applied_points(10).unwrap(), vec![ChainPoint::Slot(20)]);
}

#[test]
fn repeated_hashes_in_one_confirm_count_once() {
    let (_server, m) = single();
    propagate(&m, &[1, 2, 3]);
    apply(&m, 1, &[1, 1, 1], &[]);
    assert_eq!(
        status_of(&m, 1),
        status(Confirmed, 1, 0, Some(ChainPoint::Slot(1)))
    );
    // Block 2 (D = 100: nobody drops) is undone again, with duplicates in `unseen`.
    confirm_with(&m, ChainPoint::Slot(2), &[], &[], F, 100);
    apply(&m, 2, &[], &[2, 3, 2]);
    assert_eq!(pending(&m), hashes(&[2, 3]), "each rolled back once");
}

#[test]
fn confirm_leaves_pending_and_unknown_hashes_untouched() {
    let (_server, m) = single();
    receive(&m, &[1, 2]);
    apply(&m, 1, &[1, 99], &[]);
    apply(&m, 2, &[2], &[]);
    apply(&m, 2, &[], &[1, 98]);
    assert_eq!(status_of(&m, 1), status(Pending, 0, 0, None));
    assert_eq!(status_of(&m, 2), status(Pending, 0, 0, None));
    assert_eq!(pending(&m), hashes(&[1, 2]), "queue order unchanged");
    assert_eq!(stage_of(&m, 99), Unknown);
    assert_eq!(stage_of(&m, 98), Unknown);
    assert!(inflight(&m).is_empty());
    assert!(log(&m).is_empty());
}

#[test]
fn confirm_leaves_finalized_and_dropped_txs_untouched() {
    let (_server, m) = single();
    propagate(&m, &[1, 2]);
    apply(&m, 1, &[1], &[]);
    for slot in 2..=6 {
        apply(&m, slot, &[], &[]);
    }
    assert_eq!(stage_of(&m, 1), Finalized);
    assert_eq!(stage_of(&m, 2), Dropped);
    let (finalized, dropped) = (status_of(&m, 1), status_of(&m, 2));

    apply(&m, 7, &[1, 2], &[]);
    apply(&m, 7, &[], &[1, 2]);

    assert_eq!(status_of(&m, 1), finalized);
    assert_eq!(status_of(&m, 2), dropped);
    assert!(pending(&m).is_empty(), "a rollback does not revive them");
    assert!(inflight(&m).is_empty());
    assert_eq!(log(&m).len(), 2);
}

#[test]
fn confirmed_at_is_set_on_the_first_confirmation_only() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    let first = ChainPoint::Specific(30, block(30));
    apply_at(&m, first, &[1], &[]);
    apply_at(&m, ChainPoint::Specific(31, block(31)), &[1], &[]);
    assert_eq!(status_of(&m, 1), status(Confirmed, 2, 0, Some(first)));
    for slot in 32..=35 {
        apply(&m, slot, &[1], &[]);
    }
    assert_eq!(status_of(&m, 1), status(Finalized, 6, 0, Some(first)));
    assert_eq!(log(&m)[0].confirmed_at, Some(first));
}

#[test]
fn check_status_reports_every_stage() {
    let (_server, m) = single();
    // 6 finalizes with F=1 in block 1; 5 misses blocks 1 and 2 and drops.
    propagate(&m, &[5, 6]);
    assert!(confirm_with(&m, ChainPoint::Slot(1), &[6], &[], 1, D).is_applied());
    propagate(&m, &[4]);
    apply(&m, 2, &[4], &[]);
    propagate(&m, &[2, 3]);
    m.mark_acknowledged(&[hash(3)]).unwrap();
    receive(&m, &[1]);

    assert_eq!(status_of(&m, 1), status(Pending, 0, 0, None));
    assert_eq!(status_of(&m, 2), status(Propagated, 0, 0, None));
    assert_eq!(status_of(&m, 3), status(Acknowledged, 0, 0, None));
    assert_eq!(
        status_of(&m, 4),
        status(Confirmed, 1, 0, Some(ChainPoint::Slot(2)))
    );
    assert_eq!(status_of(&m, 5), status(Dropped, 0, 2, None));
    assert_eq!(
        status_of(&m, 6),
        status(Finalized, 1, 0, Some(ChainPoint::Slot(1)))
    );
    assert_eq!(status_of(&m, 7), TxStatus::unknown());
    assert_eq!(TxStatus::unknown(), status(Unknown, 0, 0, None));
}

// ---------------------------------------------------------------------------------------------
// Rule 8: dump_finalized and retention
// ---------------------------------------------------------------------------------------------

/// Finalizes each tx in its own block (F=1), so tx `i` gets the `i`-th log entry when the ids
/// are 1, 2, 3, ...
fn finalize_one_by_one(m: &RedisMempool, ids: &[u32], first_slot: u64) {
    for (n, &i) in ids.iter().enumerate() {
        propagate(m, &[i]);
        let slot = first_slot + n as u64;
        assert!(confirm_with(m, ChainPoint::Slot(slot), &[i], &[], 1, D).is_applied());
    }
}

#[test]
fn dump_finalized_pages_through_the_log_by_cursor() {
    let (_server, m) = single();
    assert_eq!(
        m.dump_finalized(0, usize::MAX).unwrap(),
        dolos_redis::MempoolPage {
            items: vec![],
            next_cursor: None
        }
    );
    finalize_one_by_one(&m, &[1, 2, 3, 4, 5], 1);

    let ids = |page: &dolos_redis::MempoolPage| -> Vec<TxHash> {
        page.items.iter().map(|t| t.hash).collect()
    };
    let all = m.dump_finalized(0, usize::MAX).unwrap();
    assert_eq!(ids(&all), hashes(&[1, 2, 3, 4, 5]));
    assert_eq!(all.next_cursor, None);
    assert!(all.items.iter().all(|t| t.stage == Finalized));

    // Limit 0 returns nothing but points at the first entry: sequences start at 1.
    let none = m.dump_finalized(0, 0).unwrap();
    assert!(none.items.is_empty());
    assert_eq!(none.next_cursor, Some(1));

    let page = m.dump_finalized(1, 2).unwrap();
    assert_eq!((ids(&page), page.next_cursor), (hashes(&[1, 2]), Some(3)));
    let page = m.dump_finalized(3, 2).unwrap();
    assert_eq!((ids(&page), page.next_cursor), (hashes(&[3, 4]), Some(5)));
    let page = m.dump_finalized(5, 2).unwrap();
    assert_eq!((ids(&page), page.next_cursor), (hashes(&[5]), None));
    let page = m.dump_finalized(6, usize::MAX).unwrap();
    assert_eq!((ids(&page), page.next_cursor), (vec![], None));
    let page = m.dump_finalized(u64::MAX, usize::MAX).unwrap();
    assert_eq!((ids(&page), page.next_cursor), (vec![], None));
    let page = m.dump_finalized(2, usize::MAX).unwrap();
    assert_eq!(
        (ids(&page), page.next_cursor),
        (hashes(&[2, 3, 4, 5]), None)
    );

    // Walking one entry at a time visits strictly increasing sequences 1..=5.
    let mut cursor = 0;
    let mut seen = Vec::new();
    let mut sequences = Vec::new();
    loop {
        let page = m.dump_finalized(cursor, 1).unwrap();
        seen.extend(ids(&page));
        match page.next_cursor {
            Some(next) => {
                assert!(next > cursor, "cursor must advance: {cursor} -> {next}");
                sequences.push(next);
                cursor = next;
            }
            None => break,
        }
    }
    assert_eq!(seen, hashes(&[1, 2, 3, 4, 5]));
    assert_eq!(sequences, vec![2, 3, 4, 5]);

    // Dropped entries share the same log and sequence.
    propagate(&m, &[6]);
    apply(&m, 100, &[], &[]);
    apply(&m, 101, &[], &[]);
    let page = m.dump_finalized(6, usize::MAX).unwrap();
    assert_eq!(ids(&page), hashes(&[6]));
    assert_eq!(page.items[0].stage, Dropped);
}

#[test]
fn retention_keeps_the_newest_max_finalized_entries() {
    let server = RedisServer::start();
    let m = lone_watcher(config(&server, "lifecycle").max_finalized(3));
    finalize_one_by_one(&m, &[1, 2, 3, 4, 5], 1);

    assert_eq!(log_hashes(&m), hashes(&[3, 4, 5]));
    assert_eq!(m.dump_finalized(0, 0).unwrap().next_cursor, Some(3));
    let page = m.dump_finalized(1, 1).unwrap();
    assert_eq!(page.items[0].hash, hash(3));
    assert_eq!(page.next_cursor, Some(4));
    assert_eq!(status_of(&m, 1), TxStatus::unknown());
    assert_eq!(status_of(&m, 2), TxStatus::unknown());
    assert_eq!(
        status_of(&m, 3),
        status(Finalized, 1, 0, Some(ChainPoint::Slot(3)))
    );

    // Aged out: no longer a duplicate. Still retained: a duplicate.
    receive(&m, &[1]);
    assert_eq!(status_of(&m, 1), status(Pending, 0, 0, None));
    assert_eq!(m.receive(tx(3)), Err(Error::DuplicateTx));

    // Sequences are never reused after trimming.
    finalize_one_by_one(&m, &[6], 10);
    assert_eq!(log_hashes(&m), hashes(&[4, 5, 6]));
    let page = m.dump_finalized(6, usize::MAX).unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].hash, hash(6));
    assert_eq!(m.dump_finalized(0, 0).unwrap().next_cursor, Some(4));
    assert_eq!(status_of(&m, 3), TxStatus::unknown());
}

#[test]
fn retention_of_a_tx_logged_twice_follows_its_newest_entry() {
    let server = RedisServer::start();
    let m = lone_watcher(config(&server, "lifecycle").max_finalized(2));
    // Tx 1 drops (entry 1), comes back and drops again (entry 2).
    propagate(&m, &[1]);
    apply(&m, 1, &[], &[]);
    apply(&m, 2, &[], &[]);
    propagate(&m, &[1]);
    apply(&m, 3, &[], &[]);
    apply(&m, 4, &[], &[]);
    assert_eq!(log_hashes(&m), hashes(&[1, 1]));

    // Entry 1 ages out; tx 1 is still known through entry 2.
    finalize_one_by_one(&m, &[2], 5);
    assert_eq!(log_hashes(&m), hashes(&[1, 2]));
    assert_eq!(status_of(&m, 1), status(Dropped, 0, 2, None));

    // Entry 2 ages out too.
    finalize_one_by_one(&m, &[3], 6);
    assert_eq!(log_hashes(&m), hashes(&[2, 3]));
    assert_eq!(status_of(&m, 1), TxStatus::unknown());
}

/// A logged tx's record stays in `P:txs` while the log holds its line (see src/keys.rs), and
/// leaves with it; so does the record a Dropped tx had when it came back with another one.
#[test]
fn records_leave_with_the_lines_that_hold_them() {
    let server = RedisServer::start();
    let m = lone_watcher(config(&server, "records").max_finalized(2));
    let size = |key: &str, cmd: &str| -> usize {
        redis::cmd(cmd)
            .arg(format!("records:{key}"))
            .query(&mut server.connection())
            .unwrap()
    };
    // Tx 1 drops (line 1) and comes back with another body, which its line does not take.
    propagate(&m, &[1]);
    apply(&m, 1, &[], &[]);
    apply(&m, 2, &[], &[]);
    let revived = MempoolTx::new(hash(1), EraCbor(7, vec![9, 9]));
    m.receive(revived.clone()).unwrap();
    assert_eq!(size("txs", "HLEN"), 1);
    assert_eq!(size("replaced", "ZCARD"), 1);
    for limit in [1, 100] {
        let page = m.dump_finalized(0, limit).unwrap();
        assert_eq!(page.items[0].payload, tx(1).payload, "limit {limit}");
    }
    assert_eq!(m.peek_pending(1).unwrap(), vec![revived]);

    // Lines 2 and 3: line 1 and the old body go; tx 1 keeps its new one.
    finalize_one_by_one(&m, &[2, 3], 3);
    assert_eq!(log_hashes(&m), hashes(&[2, 3]));
    assert_eq!(size("replaced", "ZCARD"), 0);
    assert_eq!(size("txs", "HLEN"), 3);
    // Line 4: the record of tx 2 goes with its line.
    finalize_one_by_one(&m, &[4], 5);
    assert_eq!(log_hashes(&m), hashes(&[3, 4]));
    assert_eq!(size("txs", "HLEN"), 3);
    assert_eq!(
        m.peek_pending(1).unwrap()[0].payload,
        EraCbor(7, vec![9, 9])
    );
}

/// A Dropped tx received again with the same body leaves `P:done` but keeps its line: a large
/// read of the log, which finds the records of the other lines through `P:done`, still shows it
/// with its record (its own round trip), next to the small read's answer.
#[test]
fn a_line_whose_tx_came_back_keeps_its_record() {
    let server = RedisServer::start();
    let m = lone_watcher(config(&server, "came-back"));
    propagate(&m, &[1, 2]);
    apply(&m, 1, &[], &[]);
    apply(&m, 2, &[], &[]);
    m.receive(tx(1)).unwrap();
    for limit in [10, 100] {
        let page = m.dump_finalized(0, limit).unwrap();
        let got: Vec<_> = page.items.iter().map(|t| (t.hash, t.stage)).collect();
        assert_eq!(
            got,
            vec![
                (hash(1), MempoolTxStage::Dropped),
                (hash(2), MempoolTxStage::Dropped)
            ],
            "limit {limit}"
        );
        assert_eq!(page.items[0].payload, tx(1).payload, "limit {limit}");
        assert_eq!(page.items[1].payload, tx(2).payload, "limit {limit}");
    }
    assert_eq!(status_of(&m, 1).stage, MempoolTxStage::Pending);
}

// ---------------------------------------------------------------------------------------------
// Rule 9: fencing (the simple part; lost locks are covered by the watcher tests)
// ---------------------------------------------------------------------------------------------

#[test]
fn follower_confirm_returns_not_watcher_and_changes_nothing() {
    let server = RedisServer::start();
    let watcher = lone_watcher(config(&server, "fenced"));
    let follower = open(config(&server, "fenced"));
    assert!(!follower.is_watcher());

    propagate(&watcher, &[1, 2]);
    apply(&watcher, 1, &[1], &[]);
    let before: Vec<TxStatus> = (1..=2).map(|i| status_of(&watcher, i)).collect();

    let outcomes = [
        confirm_with(&follower, ChainPoint::Slot(2), &[2], &[], F, D),
        confirm_with(&follower, ChainPoint::Slot(3), &[], &[1], F, D),
        confirm_with(&follower, ChainPoint::Slot(4), &[], &[], 1, 1),
    ];
    assert_eq!(outcomes, [ConfirmOutcome::NotWatcher; 3]);
    assert!(!outcomes[0].is_applied());

    let after: Vec<TxStatus> = (1..=2).map(|i| status_of(&follower, i)).collect();
    assert_eq!(after, before);
    assert!(pending(&follower).is_empty());
    assert!(log(&follower).is_empty());
    let info = follower.watcher_info().unwrap();
    assert_eq!(info.holder.as_deref(), Some(watcher.node_id()));
    assert!(!info.is_self);
    assert_eq!(info.applied_slot, Some(1));

    // The watcher's next block counts as the second one for everybody.
    apply(&watcher, 2, &[], &[]);
    assert_eq!(status_of(&follower, 1).confirmations, 2);
    assert_eq!(status_of(&follower, 2).non_confirmations, 2);
}

// ---------------------------------------------------------------------------------------------
// Rule 10: exactly once per block
// ---------------------------------------------------------------------------------------------

#[test]
fn a_replayed_block_is_already_applied_and_changes_nothing() {
    let (_server, m) = single();
    propagate(&m, &[1, 2]);
    apply(&m, 9, &[], &[]);
    apply(&m, 10, &[1], &[]);
    assert_eq!(applied_slot(&m), Some(10));
    let before: Vec<TxStatus> = (1..=2).map(|i| status_of(&m, i)).collect();

    for slot in [10, 9] {
        let outcome = confirm_with(&m, ChainPoint::Slot(slot), &[1, 2], &[], F, D);
        assert_eq!(outcome, ConfirmOutcome::AlreadyApplied, "slot {slot}");
        assert!(!outcome.is_applied());
    }
    let after: Vec<TxStatus> = (1..=2).map(|i| status_of(&m, i)).collect();
    assert_eq!(after, before);
    assert_eq!(applied_slot(&m), Some(10));

    apply(&m, 11, &[], &[]);
    assert_eq!(status_of(&m, 1).confirmations, 2);
    assert_eq!(applied_slot(&m), Some(11));
}

#[test]
fn origin_names_no_block() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    for unseen in [&[][..], &[1u32][..]] {
        let err = m
            .confirm(&ChainPoint::Origin, &[], &hashes(unseen), F, D)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    }
    assert_eq!(status_of(&m, 1), status(Propagated, 0, 0, None));
    assert!(m.applied_points(usize::MAX).unwrap().is_empty());
}

#[test]
fn slots_near_u64_max_compare_exactly() {
    let (_server, m) = single();
    propagate(&m, &[1]);
    apply(&m, u64::MAX - 1, &[], &[]);
    apply(&m, u64::MAX, &[1], &[]);
    assert_eq!(applied_slot(&m), Some(u64::MAX));
    assert_eq!(
        confirm_with(&m, ChainPoint::Slot(u64::MAX), &[], &[], F, D),
        ConfirmOutcome::AlreadyApplied
    );
    assert_eq!(
        status_of(&m, 1),
        status(Confirmed, 1, 0, Some(ChainPoint::Slot(u64::MAX)))
    );
    apply(&m, u64::MAX, &[], &[1]);
    assert_eq!(applied_slot(&m), Some(u64::MAX - 1));
    assert_eq!(
        m.applied_points(usize::MAX).unwrap(),
        vec![ChainPoint::Slot(u64::MAX - 1)]
    );
}

#[test]
fn nodes_taking_turns_as_watcher_never_double_count() {
    let server = RedisServer::start();
    let cfg = || config(&server, "turns").watcher_lock_ttl(Duration::from_secs(1));
    let mut nodes = vec![lone_watcher(cfg()), open(cfg())];
    propagate(&nodes[1], &[1]);

    const BLOCKS: u64 = 5;
    let mut appliers: Vec<String> = Vec::new();
    let mut epochs: Vec<u64> = Vec::new();
    for slot in 1..=BLOCKS {
        // Every node replays all blocks so far, as a node catching up with the chain does,
        // until the current watcher (whoever it is after the hand-over) applies the newest one.
        // Older blocks must never apply again.
        let mut applied_by = Vec::new();
        let done = wait_until(SETTLE, || {
            for node in &nodes {
                for replay in 1..=slot {
                    let outcome = confirm_with(node, ChainPoint::Slot(replay), &[1], &[], 100, 100);
                    if outcome.is_applied() {
                        assert_eq!(replay, slot, "block {replay} applied a second time");
                        applied_by.push(node.node_id().to_string());
                    }
                }
            }
            !applied_by.is_empty()
        });
        assert!(done, "no node applied block {slot}");
        assert_eq!(
            applied_by.len(),
            1,
            "block {slot} applied by {applied_by:?}"
        );
        assert_eq!(u64::from(status_of(&nodes[0], 1).confirmations), slot);

        let w = nodes
            .iter()
            .position(|n| n.node_id() == applied_by[0])
            .unwrap();
        epochs.push(nodes[w].watcher_info().unwrap().epoch);
        appliers.push(applied_by.remove(0));

        // The watcher leaves gracefully and a fresh node joins.
        let leaving = nodes.remove(w);
        leaving.shutdown().unwrap();
        nodes.push(open(cfg()));
    }

    assert_eq!(
        status_of(&nodes[0], 1),
        status(Confirmed, BLOCKS as u32, 0, Some(ChainPoint::Slot(1)))
    );
    assert!(
        appliers.windows(2).all(|w| w[0] != w[1]),
        "consecutive blocks were applied by different watchers: {appliers:?}"
    );
    assert!(
        epochs.windows(2).all(|w| w[0] < w[1]),
        "each watcher holds a newer epoch: {epochs:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Sharing: one prefix is one mempool, another prefix another
// ---------------------------------------------------------------------------------------------

#[test]
fn nodes_sharing_a_prefix_see_every_change_at_once() {
    let server = RedisServer::start();
    let a = lone_watcher(config(&server, "shared"));
    let b = open(config(&server, "shared"));

    a.receive(tx(1)).unwrap();
    assert_eq!(b.peek_pending(usize::MAX).unwrap(), vec![tx(1)]);
    assert!(b.has_pending().unwrap());
    assert_eq!(b.receive(tx(1)), Err(Error::DuplicateTx));

    b.mark_inflight(&[hash(1)]).unwrap();
    assert_eq!(stage_of(&a, 1), Propagated);
    assert!(!a.has_pending().unwrap());
    a.mark_acknowledged(&[hash(1)]).unwrap();
    assert_eq!(
        b.find_inflight(&hash(1)).unwrap().unwrap().stage,
        Acknowledged
    );

    let at = ChainPoint::Specific(1, block(1));
    apply_at(&a, at, &[1], &[]);
    assert_eq!(status_of(&b, 1), status(Confirmed, 1, 0, Some(at)));
    assert_eq!(b.peek_inflight(usize::MAX).unwrap().len(), 1);
    assert!(confirm_with(&a, ChainPoint::Slot(2), &[], &[], 1, D).is_applied());
    assert_eq!(log_hashes(&b), hashes(&[1]));
    assert_eq!(b.watcher_info().unwrap().applied_slot, Some(2));
}

#[test]
fn concurrent_calls_from_two_nodes_apply_once() {
    let server = RedisServer::start();
    let a = lone_watcher(config(&server, "race"));
    let b = open(config(&server, "race"));

    // Eight threads on two nodes receive the same tx: exactly one stores it.
    let results: Vec<Result<(), Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let node = if i % 2 == 0 { a.clone() } else { b.clone() };
                scope.spawn(move || node.receive(tx(1)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .all(|r| r.is_ok() || *r == Err(Error::DuplicateTx)));
    assert_eq!(pending(&b), hashes(&[1]));

    // And they all mark it inflight at once: it moves once.
    std::thread::scope(|scope| {
        for i in 0..8 {
            let node = if i % 2 == 0 { &a } else { &b };
            scope.spawn(move || node.mark_inflight(&[hash(1)]).unwrap());
        }
    });
    assert_eq!(inflight(&a), hashes(&[1]));
    assert_eq!(status_of(&b, 1), status(Propagated, 0, 0, None));
}

#[test]
fn different_prefixes_are_isolated() {
    let server = RedisServer::start();
    let a = lone_watcher(config(&server, "net-a:mempool"));
    // A separate prefix has its own lock, so this node is a watcher too.
    let b = lone_watcher(config(&server, "net-b:mempool"));
    assert!(a.is_watcher() && b.is_watcher());

    propagate(&a, &[1]);
    receive(&a, &[2]);
    assert!(!b.has_pending().unwrap());
    assert!(b.peek_pending(usize::MAX).unwrap().is_empty());
    assert!(b.peek_inflight(usize::MAX).unwrap().is_empty());
    assert_eq!(status_of(&b, 1), TxStatus::unknown());
    assert_eq!(b.find_inflight(&hash(1)).unwrap(), None);

    // The same hash is a new tx over there.
    receive(&b, &[1]);
    assert_eq!(stage_of(&b, 1), Pending);
    assert_eq!(stage_of(&a, 1), Propagated);

    // Blocks and applied points are separate too.
    assert!(confirm_with(&a, ChainPoint::Slot(50), &[1], &[], 1, D).is_applied());
    assert_eq!(stage_of(&a, 1), Finalized);
    assert_eq!(stage_of(&b, 1), Pending);
    assert!(log(&b).is_empty());
    assert_eq!(b.watcher_info().unwrap().applied_slot, None);
    assert!(confirm_with(&b, ChainPoint::Slot(50), &[], &[], F, D).is_applied());
    assert_ne!(
        a.watcher_info().unwrap().holder,
        b.watcher_info().unwrap().holder
    );
}
