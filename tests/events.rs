//! Events (`RedisMempool::subscribe`) against a real redis-server: every transition made by any
//! node reaches every subscriber on every node, in commit order; leadership changes are events
//! too; a reader cut off from Redis resumes without a gap, or says `Lagged` when the retained
//! history no longer covers the gap; a dropped or a slow subscriber costs the others nothing.
//!
//! Measured figures are printed (`cargo test --test events -- --nocapture`).

mod common;
use dolos_redis_testkit as support;

use std::time::{Duration, Instant};

use common::{config, hash, lone_watcher, open, point, tx, SETTLE};
use crossbeam_channel::Receiver;
use dolos_redis::{
    ChainPoint, ConfirmOutcome, EraCbor, MempoolEvent, MempoolTx, MempoolTxStage, RedisMempool,
    TxHash,
};
use support::{wait_until, FaultProxy, RedisServer};

use MempoolTxStage::{
    Acknowledged, Confirmed, Dropped, Finalized, Pending, Propagated, RolledBack,
};

/// The capacity of a subscriber's channel, as documented on `RedisMempool::subscribe`.
const SUBSCRIBER_CAPACITY: usize = 16_384;

/// What a `Tx` event carries: the payload is omitted (documented), so it is always empty.
fn ev_tx(
    seq: u64,
    h: TxHash,
    stage: MempoolTxStage,
    confirmations: u32,
    misses: u32,
    confirmed_at: Option<ChainPoint>,
) -> MempoolEvent {
    MempoolEvent::Tx {
        seq,
        tx: MempoolTx {
            hash: h,
            payload: EraCbor::default(),
            stage,
            confirmations,
            non_confirmations: misses,
            confirmed_at,
        },
    }
}

fn seq_of(event: &MempoolEvent) -> Option<u64> {
    match event {
        MempoolEvent::Tx { seq, .. }
        | MempoolEvent::BlockApplied { seq, .. }
        | MempoolEvent::WatcherAcquired { seq, .. }
        | MempoolEvent::WatcherReleased { seq, .. } => Some(*seq),
        _ => None,
    }
}

/// Drains `rx` until it has delivered `n` events (or `timeout` passed) and returns them.
fn collect(rx: &Receiver<MempoolEvent>, n: usize, timeout: Duration) -> Vec<MempoolEvent> {
    let mut got = Vec::new();
    wait_until(timeout, || {
        got.extend(rx.try_iter());
        got.len() >= n
    });
    got
}

/// Drains `rx` until an event with sequence `last` arrived (or `timeout` passed).
fn collect_through(rx: &Receiver<MempoolEvent>, last: u64, timeout: Duration) -> Vec<MempoolEvent> {
    let mut got: Vec<MempoolEvent> = Vec::new();
    wait_until(timeout, || {
        got.extend(rx.try_iter());
        got.last().and_then(seq_of).is_some_and(|s| s >= last)
    });
    got
}

fn assert_consecutive(events: &[MempoolEvent]) {
    let seqs: Vec<u64> = events.iter().filter_map(seq_of).collect();
    assert_eq!(seqs.len(), events.len(), "unexpected non-sequenced events");
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "gap or reordering in {seqs:?}");
    }
}

/// The sequence of the last committed event, read from a subscriber of an otherwise idle
/// prefix: one sentinel transition, whose event number tells where the stream stands.
fn sentinel(writer: &RedisMempool, rx: &Receiver<MempoolEvent>, id: u32) -> u64 {
    writer.receive(tx(id)).expect("sentinel receive");
    let got = collect(rx, 1, SETTLE);
    assert_eq!(got.len(), 1, "the sentinel event did not arrive");
    match &got[0] {
        MempoolEvent::Tx { seq, tx } if tx.hash == hash(id) => *seq,
        other => panic!("expected the sentinel's Pending event, got {other:?}"),
    }
}

#[test]
fn a_lowered_finalize_threshold_finalizes_several_blocks_each_with_its_own_count_and_point() {
    const D: u32 = 100;
    let server = RedisServer::start();
    let a = lone_watcher(config(&server, "events"));
    let rx = a.subscribe();
    let txs = [hash(1), hash(2), hash(3), hash(4)];
    for i in 1..=4 {
        a.receive(tx(i)).unwrap();
    }
    a.mark_inflight(&txs).unwrap();
    // Blocks 1-3 confirm a tx each (the third two) under F = 6; block 4, under F = 2, finalizes
    // all three blocks at once, at depths 4, 3 and 2.
    let confirm = |slot, seen: &[TxHash], f| {
        let outcome = a.confirm(&point(slot), seen, &[], f, D).unwrap();
        assert_eq!(outcome, ConfirmOutcome::Applied, "block at slot {slot}");
    };
    confirm(1, &txs[..1], 6);
    confirm(2, &txs[1..2], 6);
    confirm(3, &txs[2..], 6);
    confirm(4, &[], 2);

    let expected = [
        (txs[0], 4, point(1)),
        (txs[1], 3, point(2)),
        (txs[2], 2, point(3)),
        (txs[3], 2, point(3)),
    ];
    // 4 Pending, 4 Propagated; blocks 1-3 with 1, 2 and 4 Confirmed; block 4 with 4 Finalized.
    let events = collect(&rx, 4 + 4 + 2 + 3 + 5 + 5, SETTLE);
    assert_eq!(events.len(), 23, "events: {events:#?}");
    let finalized: Vec<(TxHash, u32, ChainPoint)> = events
        .iter()
        .filter_map(|e| match e {
            MempoolEvent::Tx { tx, .. } if tx.stage == Finalized => {
                Some((tx.hash, tx.confirmations, tx.confirmed_at?))
            }
            _ => None,
        })
        .collect();
    assert_eq!(finalized, expected, "events: {events:#?}");
    // The log says the same, line by line and through each tx's status.
    let page = a.dump_finalized(0, 10).unwrap();
    let logged: Vec<(TxHash, u32, ChainPoint)> = page
        .items
        .iter()
        .map(|t| (t.hash, t.confirmations, t.confirmed_at.expect("a point")))
        .collect();
    assert_eq!(logged, expected);
    for (h, c, p) in expected {
        let st = a.check_status(&h).unwrap();
        assert_eq!(
            (st.stage, st.confirmations, st.confirmed_at),
            (Finalized, c, Some(p))
        );
    }
}

#[test]
fn a_lifecycle_driven_from_two_nodes_reaches_both_subscribers_in_the_same_order() {
    const F: u32 = 3;
    const D: u32 = 2;
    let server = RedisServer::start();
    let a = lone_watcher(config(&server, "events"));
    let b = open(config(&server, "events"));
    assert!(!b.is_watcher());
    let rx_a = a.subscribe();
    let rx_b = b.subscribe();

    let (x, y) = (hash(1), hash(2));
    a.receive(tx(1)).unwrap();
    b.receive(tx(2)).unwrap();
    b.mark_inflight(&[x, y]).unwrap();
    a.mark_acknowledged(&[x]).unwrap();
    // Ignored calls make no event: a second acknowledgement, and a follower's confirm.
    b.mark_acknowledged(&[x]).unwrap();
    assert_eq!(
        b.confirm(&point(1), &[x, y], &[], F, D).unwrap(),
        ConfirmOutcome::NotWatcher
    );
    let confirm = |slot, seen: &[TxHash], unseen: &[TxHash]| {
        let outcome = a.confirm(&point(slot), seen, unseen, F, D).unwrap();
        assert_eq!(outcome, ConfirmOutcome::Applied, "block at slot {slot}");
    };
    confirm(1, &[x, y], &[]);
    confirm(2, &[], &[]);
    // Block 2 is undone, naming y: y goes back to pending; x, first confirmed by block 1, stays
    // Confirmed (one block deep again: the undo lowered the chain, no event per tx for that).
    confirm(2, &[], &[y]);
    confirm(3, &[], &[]);
    confirm(4, &[], &[]); // x reaches F
    a.mark_inflight(&[y]).unwrap();
    confirm(5, &[], &[]);
    confirm(6, &[], &[]); // y missed D blocks

    let expected_len = 21;
    let got_a = collect(&rx_a, expected_len, SETTLE);
    let got_b = collect(&rx_b, expected_len, SETTLE);
    assert_eq!(got_a.len(), expected_len, "node A got {got_a:#?}");
    assert_eq!(
        got_a, got_b,
        "both nodes must see the same events in the same order"
    );

    let s0 = seq_of(&got_a[0]).expect("a sequenced event");
    let block = |i: u64, slot: u64, height: u64, rollback: bool| MempoolEvent::BlockApplied {
        seq: s0 + i,
        point: point(slot),
        height,
        rollback,
        node_id: a.node_id().to_string(),
        epoch: 1,
    };
    let p1 = Some(point(1));
    let expected = vec![
        ev_tx(s0, x, Pending, 0, 0, None),
        ev_tx(s0 + 1, y, Pending, 0, 0, None),
        ev_tx(s0 + 2, x, Propagated, 0, 0, None),
        ev_tx(s0 + 3, y, Propagated, 0, 0, None),
        ev_tx(s0 + 4, x, Acknowledged, 0, 0, None),
        block(5, 1, 1, false),
        ev_tx(s0 + 6, x, Confirmed, 1, 0, p1),
        ev_tx(s0 + 7, y, Confirmed, 1, 0, p1),
        block(8, 2, 2, false),
        ev_tx(s0 + 9, x, Confirmed, 2, 0, p1),
        ev_tx(s0 + 10, y, Confirmed, 2, 0, p1),
        block(11, 2, 1, true),
        ev_tx(s0 + 12, y, RolledBack, 0, 0, None),
        block(13, 3, 2, false),
        ev_tx(s0 + 14, x, Confirmed, 2, 0, p1),
        block(15, 4, 3, false),
        ev_tx(s0 + 16, x, Finalized, 3, 0, p1),
        ev_tx(s0 + 17, y, Propagated, 0, 0, None),
        block(18, 5, 4, false),
        block(19, 6, 5, false),
        ev_tx(s0 + 20, y, Dropped, 0, 2, None),
    ];
    assert_eq!(got_a, expected);
    assert_consecutive(&got_a);

    // The stages a tx goes through, in the order the brief of this suite lists them.
    let stages: Vec<MempoolTxStage> = got_a
        .iter()
        .filter_map(|e| match e {
            MempoolEvent::Tx { tx, .. } => Some(tx.stage),
            _ => None,
        })
        .collect();
    let order = [
        Pending,
        Propagated,
        Acknowledged,
        Confirmed,
        RolledBack,
        Finalized,
        Dropped,
    ];
    let firsts: Vec<usize> = order
        .iter()
        .map(|st| stages.iter().position(|s| s == st).expect("stage present"))
        .collect();
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "stages first appear out of order: {stages:?}"
    );
    let x_counts: Vec<u32> = got_a
        .iter()
        .filter_map(|e| match e {
            MempoolEvent::Tx { tx, .. } if tx.hash == x && tx.stage == Confirmed => {
                Some(tx.confirmations)
            }
            _ => None,
        })
        .collect();
    assert_eq!(x_counts, [1, 2, 2], "one Confirmed event per applied block");

    assert!(
        rx_a.try_recv().is_err() && rx_b.try_recv().is_err(),
        "no event beyond the transitions"
    );
}

#[test]
fn a_graceful_handover_is_a_release_then_an_acquisition_at_the_next_epoch() {
    let server = RedisServer::start();
    let cfg = config(&server, "leader").watcher_lock_ttl(Duration::from_secs(1));
    let a = lone_watcher(cfg.clone());
    let b = open(cfg.clone());
    let observer = open(cfg.watcher_candidate(false));
    let epoch = b.watcher_info().unwrap().epoch;
    let rx_b = b.subscribe();
    let rx_o = observer.subscribe();
    let a_id = a.node_id().to_string();

    let started = Instant::now();
    a.shutdown().unwrap();
    let got = collect(&rx_b, 2, SETTLE);
    println!(
        "release -> acquisition event seen after {:?}",
        started.elapsed()
    );
    assert_eq!(got.len(), 2, "got {got:?}");
    let s0 = seq_of(&got[0]).unwrap();
    assert_eq!(
        got,
        vec![
            MempoolEvent::WatcherReleased {
                seq: s0,
                node_id: a_id,
                epoch,
            },
            MempoolEvent::WatcherAcquired {
                seq: s0 + 1,
                node_id: b.node_id().to_string(),
                epoch: epoch + 1,
            },
        ]
    );
    assert_eq!(collect(&rx_o, 2, SETTLE), got, "the observer sees the same");

    // The operator's reset is recorded the same way.
    let removed = observer.reset_watcher_lock(None).unwrap();
    assert_eq!(removed.as_deref(), Some(b.node_id()));
    let got = collect(&rx_o, 1, SETTLE);
    assert_eq!(
        got.first(),
        Some(&MempoolEvent::WatcherReleased {
            seq: s0 + 2,
            node_id: b.node_id().to_string(),
            epoch: epoch + 1,
        })
    );
}

/// A reader node whose every Redis connection goes through `proxy`, with short timeouts so a
/// cut-off link is noticed quickly. An observer: its link is cut, and it must not compete.
fn reader_behind(proxy: &FaultProxy, prefix: &str) -> RedisMempool {
    open(
        config(proxy, prefix)
            .watcher_candidate(false)
            .connect_timeout(Duration::from_millis(500))
            .command_timeout(Duration::from_millis(500)),
    )
}

#[test]
fn a_reader_cut_off_from_redis_resumes_without_a_gap() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let writer = lone_watcher(config(&server, "resume"));
    let reader = reader_behind(&proxy, "resume");
    let rx = reader.subscribe();
    let before = sentinel(&writer, &rx, 1000);

    proxy.blackhole();
    let ids = 1..=20u32;
    for i in ids.clone() {
        writer.receive(tx(i)).unwrap();
    }
    let hashes: Vec<TxHash> = ids.clone().map(hash).collect();
    writer.mark_inflight(&hashes).unwrap();
    assert!(writer
        .confirm(&point(1), &hashes[..5], &[], 6, 2)
        .unwrap()
        .is_applied());
    // Nothing gets through while cut off; waiting past the reader's read timeout (its XREAD
    // blocks 500 ms, plus 500 ms of command timeout) makes its link break for real.
    let cut = Instant::now();
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(1500)),
        Err(crossbeam_channel::RecvTimeoutError::Timeout),
        "an event went through a blackholed link"
    );
    proxy.heal();
    let healed = Instant::now();

    // 20 received, 20 propagated, 1 block, 5 confirmed.
    let expected = 46;
    let got = collect(&rx, expected, SETTLE);
    println!(
        "after {:?} cut off: {} events caught up {:?} after healing",
        healed - cut,
        got.len(),
        healed.elapsed()
    );
    assert_eq!(got.len(), expected, "got {got:#?}");
    assert!(!got.iter().any(|e| matches!(e, MempoolEvent::Lagged { .. })));
    assert_eq!(seq_of(&got[0]), Some(before + 1), "the first missed event");
    assert_consecutive(&got);
    let received: Vec<TxHash> = got[..20]
        .iter()
        .map(|e| match e {
            MempoolEvent::Tx { tx, .. } if tx.stage == Pending => tx.hash,
            other => panic!("expected a Pending event, got {other:?}"),
        })
        .collect();
    assert_eq!(received, hashes, "in commit order");

    // And it goes on following the stream.
    let last = seq_of(got.last().unwrap()).unwrap();
    assert_eq!(sentinel(&writer, &rx, 1001), last + 1);
}

#[test]
fn a_reader_cut_off_longer_than_the_history_is_told_what_it_missed() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    // The writer trims the stream on every append; Redis trims `MAXLEN ~` only by whole
    // internal nodes (100 entries by default), so many more events than 5 are needed for a gap.
    let writer = lone_watcher(config(&server, "lagged").event_history(5));
    let reader = reader_behind(&proxy, "lagged");
    let rx = reader.subscribe();
    let before = sentinel(&writer, &rx, 100_000);

    proxy.blackhole();
    let n = 500u64;
    for i in 0..n as u32 {
        writer.receive(tx(i)).unwrap();
    }
    let last = before + n;
    proxy.heal();

    let got = collect_through(&rx, last, SETTLE);
    let missed = match got.first() {
        Some(MempoolEvent::Lagged { missed }) => *missed,
        other => panic!(
            "expected Lagged first, got {other:?} ({} events)",
            got.len()
        ),
    };
    let rest = &got[1..];
    println!(
        "history 5 (~): missed {missed}, then {} retained events",
        rest.len()
    );
    assert!(missed > 0);
    assert_consecutive(rest);
    assert_eq!(
        seq_of(&rest[0]),
        Some(before + missed + 1),
        "no silent hole"
    );
    assert_eq!(seq_of(rest.last().unwrap()), Some(last));
    assert_eq!(
        missed + rest.len() as u64,
        n,
        "every event is delivered or counted"
    );

    assert_eq!(sentinel(&writer, &rx, 100_001), last + 1);
}

#[test]
fn a_dropped_receiver_costs_nothing() {
    let server = RedisServer::start();
    let a = lone_watcher(config(&server, "dropped"));
    let b = open(config(&server, "dropped"));
    let dropped = a.subscribe();
    let kept = a.subscribe();
    let other = b.subscribe();
    drop(dropped);

    let n = 1000;
    let started = Instant::now();
    for i in 0..n as u32 {
        a.receive(tx(i)).unwrap();
    }
    let elapsed = started.elapsed();
    println!("{n} transitions with a dropped subscriber: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");

    for (name, rx) in [("same node", &kept), ("other node", &other)] {
        let got = collect(rx, n, SETTLE);
        assert_eq!(got.len(), n, "{name}");
        assert_consecutive(&got);
        for (i, event) in got.iter().enumerate() {
            match event {
                MempoolEvent::Tx { tx, .. } => assert_eq!(tx.hash, hash(i as u32), "{name}"),
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn a_subscriber_that_never_reads_blocks_nobody() {
    const F: u32 = 1_000;
    let server = RedisServer::start();
    let a = lone_watcher(config(&server, "slow"));
    let slow = a.subscribe();
    let fast = a.subscribe();

    // Events are cheapest in bulk: one confirm emits one event per Confirmed tx. 1000 txs
    // confirmed in block 1 and carried through 16 more blocks make 2 000 + 17 × 1 001 = 19 017
    // events in about 1 000 calls, more than a subscriber's channel holds.
    let n_txs = 1000u32;
    let blocks = 17u64;
    let total = 2 * n_txs as usize + blocks as usize * (1 + n_txs as usize);
    assert!(total > SUBSCRIBER_CAPACITY);

    // A reader that keeps up, on its own thread, like a host's event loop.
    let fast_reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(total);
        while got.len() < total {
            match fast.recv_timeout(SETTLE) {
                Ok(event) => got.push(event),
                Err(_) => break,
            }
        }
        got
    });

    let started = Instant::now();
    let txs: Vec<TxHash> = (0..n_txs).map(hash).collect();
    for i in 0..n_txs {
        a.receive(tx(i)).unwrap();
    }
    a.mark_inflight(&txs).unwrap();
    for slot in 1..=blocks {
        let seen = if slot == 1 { &txs[..] } else { &[] };
        let outcome = a.confirm(&point(slot), seen, &[], F, 2).unwrap();
        assert!(outcome.is_applied(), "block {slot}: {outcome:?}");
    }
    let elapsed = started.elapsed();
    println!("{total} events made in {elapsed:?} with a subscriber that never reads");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    assert!(a.is_watcher(), "the lease thread kept its lock meanwhile");

    // The reader that keeps up got everything, in order.
    let fast_got = fast_reader.join().unwrap();
    println!("the reader that keeps up got {} events", fast_got.len());
    assert_eq!(fast_got.len(), total);
    assert_consecutive(&fast_got);

    // The one that never read holds a full channel: the oldest events, and nothing else.
    assert_eq!(slow.len(), SUBSCRIBER_CAPACITY);
    let slow_got: Vec<MempoolEvent> = slow.try_iter().collect();
    assert!(slow_got[..] == fast_got[..SUBSCRIBER_CAPACITY]);
    // Once it has room again, it is told how many it missed before the next event.
    let last = seq_of(fast_got.last().unwrap()).unwrap();
    a.receive(tx(n_txs)).unwrap();
    let after = collect(&slow, 2, SETTLE);
    assert_eq!(
        after,
        vec![
            MempoolEvent::Lagged {
                missed: (total - SUBSCRIBER_CAPACITY) as u64
            },
            ev_tx(last + 1, hash(n_txs), Pending, 0, 0, None),
        ]
    );
}
