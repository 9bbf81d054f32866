//! A stale watcher cannot write, however it got delayed.
//!
//! The lease flag is only a local optimisation; safety rests on `confirm.lua` checking, when the
//! server runs it, that the lock still holds the caller's node id and the epoch it acquired.
//! These tests deliver a watcher's `confirm` to Redis late — after it lost the lock, after
//! another node applied blocks, even after the same node re-acquired under a new epoch — through
//! a fault proxy that holds the request in the "network" ([`support::ProxyMode::Hold`]) and
//! delivers it after the client gave up. The late call must change nothing: counters, stages,
//! the applied slot and the audit trail (`BlockApplied` events) show only legitimate blocks.
//!
//! The late block always has a *higher* slot than the blocks applied meanwhile, so the
//! exactly-once check (rule 10) would let it through: only fencing can reject it.
//!
//! A frozen lease thread is covered in `tests/watcher.rs`; pausing the whole process (SIGSTOP)
//! cannot be done to a thread of the test binary itself and belongs to the chaos harness.

mod common;
use dolos_redis_testkit as support;

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    config, delete_lock, hash, lone_watcher, open, status, tx, wait_for_renewal, Endpoint, SETTLE,
};
use crossbeam_channel::Receiver;
use dolos_redis::{
    ChainPoint, Config, ConfirmOutcome, Error, MempoolEvent, MempoolTxStage, RedisMempool, TxHash,
};
use support::monitor::Monitor;
use support::{wait_until, FaultProxy, RedisServer};

const TTL: Duration = Duration::from_secs(1);

/// Long enough that the delayed `confirm` is still waiting for its reply when the lock has
/// expired and another node has taken over.
const SLOW_COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

const F: u32 = 6;
const D: u32 = 2;

fn node_config(at: &impl Endpoint, prefix: &str) -> Config {
    config(at, prefix)
        .watcher_lock_ttl(TTL)
        .command_timeout(SLOW_COMMAND_TIMEOUT)
}

/// One applied block as the audit trail shows it: slot, node, epoch.
type Applied = (u64, String, u64);

/// Reads `events` up to the `Pending` event of `marker` (which the caller has just received,
/// so everything committed before it has been delivered) and returns the applied blocks seen.
fn applied_blocks_until(events: &Receiver<MempoolEvent>, marker: TxHash) -> Vec<Applied> {
    let deadline = Instant::now() + SETTLE;
    let mut blocks = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events
            .recv_timeout(left)
            .expect("marker event not delivered")
        {
            MempoolEvent::BlockApplied {
                point,
                node_id,
                epoch,
                ..
            } => blocks.push((point.slot(), node_id, epoch)),
            MempoolEvent::Tx { tx, .. }
                if tx.hash == marker && tx.stage == MempoolTxStage::Pending =>
            {
                return blocks
            }
            MempoolEvent::Lagged { missed } => panic!("subscriber lagged by {missed} events"),
            _ => {}
        }
    }
}

/// Two inflight txs and one block applied by `watcher`: tx 1 is Confirmed (1 confirmation at
/// slot 10); tx 2 became inflight after that block, so it has no miss yet. The late block will
/// try to confirm tx 2.
fn prepare(watcher: &RedisMempool, other: &RedisMempool) {
    other.receive(tx(1)).unwrap();
    other.receive(tx(2)).unwrap();
    other.mark_inflight(&[hash(1)]).unwrap();
    assert_eq!(
        watcher
            .confirm(&ChainPoint::Slot(10), &[hash(1)], &[], F, D)
            .unwrap(),
        ConfirmOutcome::Applied
    );
    other.mark_inflight(&[hash(2)]).unwrap();
}

/// A confirm in flight on its own thread: what it returned, and after how long.
type LateCall = JoinHandle<(Result<ConfirmOutcome, Error>, Duration)>;

/// Sends `confirm(slot 30, seen = [tx 2])` from `node` in a thread and returns its handle; the
/// caller has put the node's proxy in Hold, so the call waits until its command timeout.
fn send_late_confirm(node: &RedisMempool) -> LateCall {
    assert!(
        node.is_watcher(),
        "the flag must still be up, or confirm would not reach the network"
    );
    let node = node.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let outcome = node.confirm(&ChainPoint::Slot(30), &[hash(2)], &[], F, D);
        (outcome, started.elapsed())
    })
}

/// After [`prepare`], holds A's link and sends the late confirm from A (see
/// [`send_late_confirm`]); returns once A's flag is down, with the epoch A held, when the hold
/// began and the late call. Whether the flag drops in time is checked in tests/hostile.rs; here
/// only the server state matters.
fn hold_a_late_confirm(
    proxy: &FaultProxy,
    a: &RedisMempool,
    other: &RedisMempool,
) -> (u64, Instant, LateCall) {
    prepare(a, other);
    let epoch = other.watcher_info().unwrap().epoch;
    // A call right before the fault leaves an idle pooled connection, so the delayed confirm
    // is really written to the network rather than stuck opening a connection.
    a.check_status(&hash(2)).unwrap();

    proxy.hold();
    let held_at = Instant::now();
    let late = send_late_confirm(a);
    assert!(wait_until(SETTLE, || !a.is_watcher()), "A kept its flag");
    println!("A's flag down {:?} after the hold", held_at.elapsed());
    (epoch, held_at, late)
}

/// Lets the held requests through with `deliver` and waits until the late confirm has reached
/// Redis (seen with MONITOR: a request lost on the way would make the test pass vacuously) and
/// every late request has run and been answered.
fn deliver_late(server: &RedisServer, proxy: &FaultProxy, deliver: impl FnOnce(&FaultProxy)) {
    let mut monitor = Monitor::on(server);
    deliver(proxy);
    // Slots travel zero-padded to 20 digits.
    let slot = format!("{:020}", 30);
    assert!(
        monitor
            .wait_for(SETTLE, |s| s.cmd == "EVALSHA" && s.args.contains(&slot))
            .is_some(),
        "the delayed confirm never reached Redis"
    );
    assert!(
        wait_until(SETTLE, || proxy.orphans() == 0),
        "late requests not delivered"
    );
}

/// The late call must have been sent and abandoned by the client: a typed, transient error.
fn assert_gave_up(result: (Result<ConfirmOutcome, Error>, Duration)) {
    let (outcome, took) = result;
    println!("delayed confirm returned after {took:?}: {outcome:?}");
    match outcome {
        Err(e) => assert!(e.is_transient(), "expected a timeout, got {e:?}"),
        Ok(o) => panic!("the delayed confirm was answered ({o:?}); it should have timed out"),
    }
}

/// Checks the state left by `prepare` plus one more block at slot 20 that saw tx 1, as any node
/// reads it: the late block (slot 30, seen tx 2) left no trace.
fn assert_only_legitimate_blocks(
    reader: &RedisMempool,
    events: &Receiver<MempoolEvent>,
    expected: &[Applied],
) {
    assert_eq!(
        reader.check_status(&hash(1)).unwrap(),
        status(MempoolTxStage::Confirmed, 2, 0, Some(ChainPoint::Slot(10))),
        "tx 1 must count exactly the two legitimate blocks"
    );
    assert_eq!(
        reader.check_status(&hash(2)).unwrap(),
        status(MempoolTxStage::Propagated, 0, 1, None),
        "the late block must not have confirmed tx 2"
    );
    let info = reader.watcher_info().unwrap();
    assert_eq!(
        info.applied_slot,
        Some(20),
        "the late block moved the applied slot"
    );
    assert_eq!(reader.stats().unwrap().applied_blocks, 2);

    reader.receive(tx(99)).unwrap();
    assert_eq!(applied_blocks_until(events, hash(99)), expected);
}

#[test]
fn delayed_confirm_of_a_deposed_watcher_changes_nothing() {
    support::init_logging();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let prefix = "stale:deposed";
    let a = lone_watcher(node_config(&proxy, prefix));
    let b = open(node_config(&server, prefix));
    assert!(!b.is_watcher());
    let events = b.subscribe();

    let (epoch_a, held_at, late) = hold_a_late_confirm(&proxy, &a, &b);
    assert!(wait_until(SETTLE, || b.is_watcher()), "B never took over");
    println!("B watcher {:?} after the hold", held_at.elapsed());

    let epoch_b = b.watcher_info().unwrap().epoch;
    assert!(epoch_b > epoch_a);
    assert_eq!(
        b.confirm(&ChainPoint::Slot(20), &[hash(1)], &[], F, D)
            .unwrap(),
        ConfirmOutcome::Applied
    );

    assert_gave_up(late.join().unwrap());
    // The confirm's connection is orphaned with its request still held.
    assert!(wait_until(SETTLE, || proxy.orphans() >= 1));
    let held = proxy.held_bytes();

    deliver_late(&server, &proxy, FaultProxy::heal);
    println!("delivered {held} held bytes after {:?}", held_at.elapsed());

    assert_only_legitimate_blocks(
        &b,
        &events,
        &[
            (10, a.node_id().to_string(), epoch_a),
            (20, b.node_id().to_string(), epoch_b),
        ],
    );
    // A rejoins as a follower: B still holds the lock.
    let info = b.watcher_info().unwrap();
    assert_eq!(info.holder.as_deref(), Some(b.node_id()));
    assert!(!a.is_watcher());
}

#[test]
fn delayed_confirm_from_an_earlier_epoch_of_the_same_node_is_rejected() {
    support::init_logging();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let prefix = "stale:same-node";
    let a = lone_watcher(node_config(&proxy, prefix));
    // Never competes for the lock, so A is the one that re-acquires.
    let observer = open(node_config(&server, prefix).watcher_candidate(false));
    let events = observer.subscribe();

    let (epoch_1, _, late) = hold_a_late_confirm(&proxy, &a, &observer);
    assert_gave_up(late.join().unwrap());
    assert!(wait_until(SETTLE, || proxy.orphans() >= 1));

    // The network recovers for A's new connections while its old request is still on its way.
    proxy.heal_except_held();
    let healed_at = Instant::now();
    let mut epoch_2 = 0;
    let reacquired = wait_until(SETTLE, || {
        let info = observer.watcher_info().unwrap();
        epoch_2 = info.epoch;
        a.is_watcher() && info.holder.as_deref() == Some(a.node_id()) && info.epoch > epoch_1
    });
    assert!(reacquired, "A did not re-acquire");
    println!(
        "A re-acquired (epoch {epoch_1} -> {epoch_2}) {:?} after the heal",
        healed_at.elapsed()
    );
    assert_eq!(
        a.confirm(&ChainPoint::Slot(20), &[hash(1)], &[], F, D)
            .unwrap(),
        ConfirmOutcome::Applied
    );
    assert!(
        proxy.held_bytes() > 0,
        "the old request was delivered early"
    );

    // Now the epoch-1 confirm arrives, from the node that holds the lock again.
    deliver_late(&server, &proxy, FaultProxy::deliver_held);

    assert_only_legitimate_blocks(
        &observer,
        &events,
        &[
            (10, a.node_id().to_string(), epoch_1),
            (20, a.node_id().to_string(), epoch_2),
        ],
    );
    assert!(
        a.is_watcher(),
        "the late request must not disturb the lease"
    );
}

/// Opens A (watcher) then B (follower), both direct, with tx 1 inflight.
fn two_direct_nodes(server: &RedisServer, prefix: &str) -> (RedisMempool, RedisMempool) {
    let a = lone_watcher(node_config(server, prefix));
    // Not synchronisation: it puts B's lease ticks half-way between A's renewals, as nodes
    // started at different moments have them. Opened back to back, B would poll just after
    // each renewal of A and A would always be first to see a deleted lock.
    std::thread::sleep(TTL / 6);
    let b = open(node_config(server, prefix));
    assert!(!b.is_watcher());
    a.receive(tx(1)).unwrap();
    a.mark_inflight(&[hash(1)]).unwrap();
    (a, b)
}

/// Deletes the lock by hand right after A renewed it, until B (not A) is the one that takes it
/// (A retakes it at once if its renewal comes first); returns when B's flag is up.
fn delete_until_b_takes_over(
    server: &RedisServer,
    prefix: &str,
    a: &RedisMempool,
    b: &RedisMempool,
) {
    for round in 1..=5 {
        let epoch = b.watcher_info().unwrap().epoch;
        wait_for_renewal(&mut server.connection(), prefix);
        delete_lock(server, prefix);
        let deleted_at = Instant::now();
        let mut holder = None;
        assert!(wait_until(SETTLE, || {
            let info = b.watcher_info().unwrap();
            holder = info.holder;
            holder.is_some() && info.epoch > epoch
        }));
        if holder.as_deref() == Some(b.node_id()) {
            assert!(wait_until(SETTLE, || b.is_watcher()));
            println!(
                "round {round}: B took the deleted lock, flag up {:?} after the DEL",
                deleted_at.elapsed()
            );
            return;
        }
        assert_eq!(holder.as_deref(), Some(a.node_id()));
        println!("round {round}: A retook the deleted lock first; again");
    }
    panic!("B never won the deleted lock in 5 rounds");
}

fn assert_untouched(reader: &RedisMempool) {
    assert_eq!(
        reader.check_status(&hash(1)).unwrap(),
        status(MempoolTxStage::Propagated, 0, 0, None)
    );
    let stats = reader.stats().unwrap();
    assert_eq!(stats.applied_blocks, 0);
    assert_eq!(stats.watcher.applied_slot, None);
}

#[test]
fn watcher_whose_lock_was_deleted_and_taken_cannot_confirm() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "stale:deleted";
    let (a, b) = two_direct_nodes(&server, prefix);

    delete_until_b_takes_over(&server, prefix, &a, &b);
    let a_flag = a.is_watcher();
    let outcome = a
        .confirm(&ChainPoint::Slot(10), &[hash(1)], &[], F, D)
        .unwrap();
    println!("A's flag then {a_flag}, its confirm: {outcome:?}");
    assert!(
        matches!(
            outcome,
            ConfirmOutcome::LostLock | ConfirmOutcome::NotWatcher
        ),
        "{outcome:?}"
    );
    assert_untouched(&b);

    // A finds out at its next renewal at the latest.
    assert!(wait_until(SETTLE, || !a.is_watcher()));
    assert_eq!(
        b.confirm(&ChainPoint::Slot(10), &[hash(1)], &[], F, D)
            .unwrap(),
        ConfirmOutcome::Applied
    );
}

#[test]
fn watcher_with_a_stale_flag_gets_lost_lock_after_the_lock_was_deleted_and_taken() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "stale:deleted-frozen";
    let (a, b) = two_direct_nodes(&server, prefix);

    // Keep A's flag up while another node takes the lock, so confirm reaches the server. A's
    // frozen lease cannot retake the lock first.
    wait_for_renewal(&mut server.connection(), prefix);
    a.test_freeze_lease(Duration::from_secs(2));
    delete_lock(&server, prefix);
    let deleted_at = Instant::now();
    assert!(wait_until(SETTLE, || b.is_watcher()), "B never took over");
    println!("B watcher {:?} after the DEL", deleted_at.elapsed());
    assert!(
        a.is_watcher(),
        "the frozen lease should still show the flag"
    );
    assert_eq!(
        a.confirm(&ChainPoint::Slot(10), &[hash(1)], &[], F, D)
            .unwrap(),
        ConfirmOutcome::LostLock
    );
    assert_untouched(&b);
    assert!(wait_until(SETTLE, || !a.is_watcher()));
}
