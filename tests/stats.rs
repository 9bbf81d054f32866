//! `RedisMempool::stats()` and the operator's `reset_watcher_lock`, against a real redis-server:
//! counts per stage through a lifecycle, the watcher fields, this node's lease figures, an
//! observer that never competes, and a reset that hands the lock over at once.
//!
//! Measured figures are printed (`cargo test --test stats -- --nocapture`).

mod common;
use dolos_redis_testkit as support;

use std::time::{Duration, Instant};

use common::{config, counts, hash, lone_watcher, open, point, tx, SETTLE};
use dolos_redis::{ConfirmOutcome, MempoolStats, RedisMempool, TxHash};
use support::{wait_until, FaultProxy, RedisServer};

const TTL: Duration = Duration::from_secs(1);

#[test]
fn counts_per_stage_follow_a_lifecycle() {
    const F: u32 = 3;
    const D: u32 = 2;
    let server = RedisServer::start();
    let m = lone_watcher(config(&server, "counts"));
    let follower = open(config(&server, "counts"));
    // Both nodes read the same shared counts.
    let check = |want: [u64; 6], step: &str| {
        for node in [&m, &follower] {
            assert_eq!(counts(&node.stats().unwrap()), want, "after {step}");
        }
    };
    check([0, 0, 0, 0, 0, 0], "open");

    for i in 1..=4 {
        m.receive(tx(i)).unwrap();
    }
    check([4, 0, 0, 0, 0, 0], "receiving 4");
    follower
        .mark_inflight(&[hash(1), hash(2), hash(3)])
        .unwrap();
    check([1, 3, 0, 0, 0, 0], "propagating 3");
    // A hash given twice moves, and counts, once.
    m.mark_acknowledged(&[hash(1), hash(2), hash(1)]).unwrap();
    check([1, 1, 2, 0, 0, 0], "2 acknowledged");
    // Ignored transitions change no count: pending → acknowledged, twice inflight.
    m.mark_acknowledged(&[hash(4), hash(1)]).unwrap();
    m.mark_inflight(&[hash(1)]).unwrap();
    check([1, 1, 2, 0, 0, 0], "ignored calls");

    let confirm = |slot, seen: &[TxHash], unseen: &[TxHash]| {
        assert_eq!(
            m.confirm(&point(slot), seen, unseen, F, D).unwrap(),
            ConfirmOutcome::Applied,
            "block at slot {slot}"
        );
    };
    confirm(1, &[hash(1), hash(3)], &[]);
    check([1, 0, 1, 2, 0, 1], "block 1 (2 confirmed)");
    // tx 2, unconfirmed since before block 1, has now missed 2 blocks: dropped.
    confirm(2, &[], &[]);
    check([1, 0, 0, 2, 1, 2], "block 2 (1 dropped)");
    // Undoing block 2 naming tx 3: it goes back to pending, and the chain is one block lower.
    confirm(2, &[], &[hash(3)]);
    check([2, 0, 0, 1, 1, 1], "undoing block 2 for tx 3");
    confirm(3, &[], &[]);
    check([2, 0, 0, 1, 1, 2], "block 3");
    // tx 1 reaches 3 confirmations.
    confirm(4, &[], &[]);
    check([2, 0, 0, 0, 2, 3], "block 4 (1 finalized)");
    assert_eq!(
        m.confirm(&point(4), &[], &[], F, D).unwrap(),
        ConfirmOutcome::AlreadyApplied
    );
    check([2, 0, 0, 0, 2, 3], "a block applied twice");

    let s = follower.stats().unwrap();
    assert_eq!(s.watcher.applied_slot, Some(4));
    assert_eq!(s.watcher.holder.as_deref(), Some(m.node_id()));
}

#[test]
fn watcher_fields_name_the_holder_and_its_epoch() {
    let server = RedisServer::start();
    let cfg = config(&server, "fields").watcher_lock_ttl(TTL);
    let a = lone_watcher(cfg.clone());
    let b = open(cfg);

    let sa = a.stats().unwrap();
    assert!(sa.is_watcher);
    assert_eq!(sa.watcher.holder.as_deref(), Some(a.node_id()));
    assert!(sa.watcher.is_self);
    assert_eq!(sa.watcher.epoch, 1);
    let ttl = sa.watcher.ttl.expect("a held lock has a TTL");
    assert!(ttl > Duration::ZERO && ttl <= TTL, "ttl {ttl:?}");
    assert_eq!(sa.watcher.applied_slot, None);

    let sb = b.stats().unwrap();
    assert!(!sb.is_watcher);
    assert_eq!(sb.watcher.holder.as_deref(), Some(a.node_id()));
    assert!(!sb.watcher.is_self);
    assert_eq!(sb.watcher.epoch, 1);
    assert_eq!((sb.times_acquired, sb.renewals), (0, 0));
    assert_eq!(sb.watcher, {
        let mut w = b.watcher_info().unwrap();
        // The TTL counts down between the two reads.
        w.ttl = sb.watcher.ttl;
        w
    });

    a.shutdown().unwrap();
    assert!(wait_until(SETTLE, || b.is_watcher()));
    let sb = b.stats().unwrap();
    assert_eq!(sb.watcher.holder.as_deref(), Some(b.node_id()));
    assert!(sb.watcher.is_self);
    assert_eq!(sb.watcher.epoch, 2);
    assert_eq!(sb.times_acquired, 1);
}

#[test]
fn lease_figures_count_renewals_acquisitions_and_losses() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    // The watcher reaches Redis through the proxy, so its link can be cut.
    let w = lone_watcher(config(&proxy, "lease").watcher_lock_ttl(TTL));
    let f = open(config(&server, "lease").watcher_lock_ttl(TTL));

    let s = w.stats().unwrap();
    assert_eq!(s.times_acquired, 1);
    assert_eq!((s.failed_renewals, s.times_lost), (0, 0));
    // Renewals every TTL/3: a few per second.
    let (r0, started) = (s.renewals, Instant::now());
    assert!(wait_until(SETTLE, || w.stats().unwrap().renewals >= r0 + 3));
    println!("3 renewals in {:?} (TTL {TTL:?})", started.elapsed());

    // Cut off: renewals fail, the flag drops before the lock can expire, the follower takes
    // over once it has.
    proxy.blackhole();
    let cut = Instant::now();
    assert!(wait_until(SETTLE, || !w.is_watcher()));
    let stepped_down = cut.elapsed();
    assert!(wait_until(SETTLE, || f.is_watcher()));
    println!(
        "cut off: stepped down after {stepped_down:?}, follower took over after {:?}",
        cut.elapsed()
    );
    proxy.heal();
    let s = wait_for_stats(&w);
    assert!(s.failed_renewals >= 1, "{s:?}");
    assert_eq!((s.times_acquired, s.times_lost), (1, 1), "{s:?}");
    assert!(!s.is_watcher);
    assert_eq!(s.watcher.holder.as_deref(), Some(f.node_id()));

    let s = f.stats().unwrap();
    assert_eq!(
        (s.times_acquired, s.times_lost, s.failed_renewals),
        (1, 0, 0)
    );
}

/// Waits until `n` nodes listen on the prefix's wake channel (`<prefix>:watcher:wake`, see the
/// README's key layout). A node's `open` returns before its wake subscription is necessarily in
/// place; a reset made in that window is missed by that node, which then learns of the free lock
/// only at its next poll (TTL/3), by when the reset watcher may have taken its lock back.
fn wait_for_wake_listeners(server: &RedisServer, prefix: &str, n: i64) {
    let mut con = server.connection();
    let channel = format!("{prefix}:watcher:wake");
    let listening = wait_until(SETTLE, || {
        let reply: (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query(&mut con)
            .expect("PUBSUB NUMSUB");
        reply.1 >= n
    });
    assert!(listening, "{n} nodes never listened on {channel}");
}

/// `stats` from a node whose link was just healed: its pooled connections may still be the
/// broken ones, so the first calls can fail.
fn wait_for_stats(m: &RedisMempool) -> MempoolStats {
    let mut stats = None;
    assert!(
        wait_until(SETTLE, || {
            stats = m.stats().ok();
            stats.is_some()
        }),
        "stats never succeeded after healing"
    );
    stats.unwrap()
}

#[test]
fn an_observer_never_becomes_watcher_even_alone() {
    let server = RedisServer::start();
    let observer = open(
        config(&server, "observer")
            .watcher_lock_ttl(TTL)
            .watcher_candidate(false),
    );
    // A candidate would be watcher as soon as `open` returns; an observer stays out for good.
    let end = Instant::now() + TTL + Duration::from_millis(500);
    while Instant::now() < end {
        let s = observer.stats().unwrap();
        assert!(!s.is_watcher);
        assert_eq!(s.watcher.holder, None);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        observer.confirm(&point(1), &[], &[], 6, 2).unwrap(),
        ConfirmOutcome::NotWatcher
    );
    let s = observer.stats().unwrap();
    assert_eq!(
        (
            s.times_acquired,
            s.renewals,
            s.failed_renewals,
            s.times_lost
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(s.watcher.epoch, 0);

    // A candidate on the same prefix takes the free lock at once.
    let candidate = lone_watcher(config(&server, "observer").watcher_lock_ttl(TTL));
    let s = observer.stats().unwrap();
    assert_eq!(s.watcher.holder.as_deref(), Some(candidate.node_id()));
    assert!(!s.watcher.is_self && !s.is_watcher);
    // The observer's shutdown releases nothing.
    observer.shutdown().unwrap();
    assert!(candidate.is_watcher());
    assert_eq!(
        candidate.watcher_info().unwrap().holder.as_deref(),
        Some(candidate.node_id())
    );
}

#[test]
fn reset_lock_removes_only_the_named_holder_and_a_follower_takes_over_at_once() {
    let server = RedisServer::start();
    // A long TTL: the takeover must come from the reset waking the follower, not from expiry.
    let cfg = config(&server, "reset").watcher_lock_ttl(Duration::from_secs(10));
    let stuck = lone_watcher(cfg.clone());
    let follower = open(cfg.clone());
    let operator = open(cfg.watcher_candidate(false));
    wait_for_wake_listeners(&server, "reset", 2);
    let before = operator.watcher_info().unwrap();
    assert_eq!(before.holder.as_deref(), Some(stuck.node_id()));

    // A reset aimed at another node leaves the lock alone.
    assert_eq!(
        operator
            .reset_watcher_lock(Some("00000000-0000-0000-0000-000000000000"))
            .unwrap(),
        None
    );
    let info = operator.watcher_info().unwrap();
    assert_eq!((info.holder, info.epoch), (before.holder, before.epoch));
    assert!(stuck.is_watcher() && !follower.is_watcher());

    // The watcher is stuck (its lease thread does not run), so only the reset can hand over
    // before the TTL; frozen, it also cannot race the follower for the free lock. (Its first
    // renewal is due 3.3 s after it acquired, long after this point.)
    stuck.test_freeze_lease(Duration::from_secs(2));
    let started = Instant::now();
    let removed = operator.reset_watcher_lock(Some(stuck.node_id())).unwrap();
    assert_eq!(removed.as_deref(), Some(stuck.node_id()));
    assert!(wait_until(SETTLE, || follower.is_watcher()));
    let takeover = started.elapsed();
    println!("reset -> follower is watcher after {takeover:?} (TTL 10 s)");
    assert!(takeover < Duration::from_secs(1), "took {takeover:?}");
    let info = operator.watcher_info().unwrap();
    assert_eq!(info.holder.as_deref(), Some(follower.node_id()));
    assert_eq!(info.epoch, before.epoch + 1);

    // Redis already rejects the old watcher's confirm; it steps down once its lease thread
    // runs again (it was told of the new holder meanwhile).
    assert_eq!(
        stuck.confirm(&point(1), &[], &[], 6, 2).unwrap(),
        ConfirmOutcome::LostLock
    );
    assert!(wait_until(SETTLE, || !stuck.is_watcher()));
    println!("old watcher stepped down after {:?}", started.elapsed());
    let s = stuck.stats().unwrap();
    assert_eq!((s.times_acquired, s.times_lost), (1, 1));
    assert!(follower.is_watcher());

    // With nothing held by that node any more, a second reset does nothing.
    assert_eq!(
        operator.reset_watcher_lock(Some(stuck.node_id())).unwrap(),
        None
    );
}

/// The lease invariant as a host sees it: a watcher cut off from Redis lowers its flag before its
/// lock can expire, so no other node raises its flag while this one's is still up. Cut just
/// after a renewal, where the flag has the longest to live (TTL 1 s: renewals every 333 ms,
/// socket timeouts of 250 ms, local deadline 900 ms after the last renewal was sent).
#[test]
fn a_cut_off_watcher_lowers_its_flag_before_another_node_raises_its_own() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let w = lone_watcher(config(&proxy, "overlap").watcher_lock_ttl(TTL));
    let f = open(config(&server, "overlap").watcher_lock_ttl(TTL));
    let r0 = w.stats().unwrap().renewals;
    assert!(wait_until(SETTLE, || w.stats().unwrap().renewals > r0));
    proxy.blackhole();
    let cut = Instant::now();

    let (mut w_down, mut f_up, mut overlap) = (None, None, None);
    while f_up.is_none() && cut.elapsed() < SETTLE {
        // Read the follower first: a follower's flag seen up while the old watcher's is still
        // up afterwards is certainly an overlap.
        let f_now = f.is_watcher();
        let w_now = w.is_watcher();
        let t = cut.elapsed();
        if !w_now && w_down.is_none() {
            w_down = Some(t);
        }
        if f_now {
            f_up = Some(t);
            if w_now {
                overlap = Some(t);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    proxy.heal();
    println!("after the cut: old watcher's flag down at {w_down:?}, new watcher's up at {f_up:?}");
    assert!(f_up.is_some(), "the follower never took over");
    assert_eq!(
        overlap, None,
        "two watcher flags up at once: the cut-off watcher kept its flag past its lock's expiry \
         (down at {w_down:?}, follower up at {f_up:?})"
    );
}

/// The reset of a watcher that runs normally: the woken follower takes the lock, and its
/// acquisition wakes the old watcher, which checks its lock and steps down at once instead of
/// keeping its flag until its next renewal. The measured times are printed.
#[test]
fn reset_of_a_running_watcher_hands_over_and_the_old_one_steps_down_at_once() {
    let server = RedisServer::start();
    // TTL 10 s: the old watcher's first renewal is due 3.3 s after it acquired, so a step-down
    // well before that comes from the wake-up, and no renewal races the follower for the lock.
    let cfg = config(&server, "reset-live").watcher_lock_ttl(Duration::from_secs(10));
    let old = lone_watcher(cfg.clone());
    let follower = open(cfg.clone());
    let operator = open(cfg.watcher_candidate(false));
    wait_for_wake_listeners(&server, "reset-live", 2);

    let started = Instant::now();
    let removed = operator.reset_watcher_lock(Some(old.node_id())).unwrap();
    assert_eq!(removed.as_deref(), Some(old.node_id()));
    let (mut taken_over, mut stepped_down, mut both_up_until) = (None, None, None);
    while started.elapsed() < SETTLE && (taken_over.is_none() || stepped_down.is_none()) {
        // The follower first: seen up, and the old one still up afterwards, is an overlap.
        let new_up = follower.is_watcher();
        let old_up = old.is_watcher();
        let t = started.elapsed();
        if new_up && taken_over.is_none() {
            taken_over = Some(t);
        }
        if !old_up && stepped_down.is_none() {
            stepped_down = Some(t);
        }
        if new_up && old_up {
            both_up_until = Some(t);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "reset of a running watcher: follower up after {taken_over:?}, old one down after \
         {stepped_down:?}, both flags up until {both_up_until:?}"
    );
    let taken_over = taken_over.expect("the follower took over");
    assert!(taken_over < Duration::from_secs(1), "took {taken_over:?}");
    let stepped_down = stepped_down.expect("the old watcher stepped down");
    assert!(
        stepped_down < Duration::from_secs(2),
        "the old watcher waited for its renewal: {stepped_down:?}"
    );
    assert_eq!(
        old.confirm(&point(1), &[], &[], 6, 2).unwrap(),
        ConfirmOutcome::NotWatcher
    );
    assert_eq!(old.stats().unwrap().times_lost, 1);
}
