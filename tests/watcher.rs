//! Watcher election against a real redis-server: one watcher among several nodes, takeover after
//! a crash (here with liveness checks off: the TTL path; `crash_takeover.rs` has the fast one)
//! or a graceful shutdown, a lock deleted by hand, a frozen lease thread (fencing), and a
//! watcher that keeps its lease across many renewals.
//!
//! Every test uses a lock TTL of 1 s. Time-bound assertions carry margins that hold on a loaded
//! 2-core machine; the measured figures are printed (`cargo test -- --nocapture`) so that the
//! strict targets of the contract (crash: TTL + 100 ms, graceful: 100 ms) can be read off.

mod common;
use dolos_redis_testkit as support;

use std::time::{Duration, Instant};

use common::{
    assert_never_two_watchers, config, lock_key, open, raw_lock, settle_single_watcher, tx,
    wait_for_renewal, watchers, SETTLE,
};
use dolos_redis::{ChainPoint, ConfirmOutcome, MempoolTxStage, RedisMempool};
use support::{wait_until, RedisServer};

const TTL: Duration = Duration::from_secs(1);

/// A node of `prefix`, with the lock TTL of every test here.
fn node(server: &RedisServer, prefix: &str) -> RedisMempool {
    open(config(server, prefix).watcher_lock_ttl(TTL))
}

fn open_nodes(server: &RedisServer, prefix: &str, n: usize) -> Vec<RedisMempool> {
    (0..n).map(|_| node(server, prefix)).collect()
}

#[test]
fn exactly_one_of_three_nodes_is_watcher() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "watcher-test:one-of-three";
    let nodes = open_nodes(&server, prefix, 3);

    let w = settle_single_watcher(&nodes);
    // Several renewal periods: the watcher must neither flap nor be joined by another.
    assert_never_two_watchers(&nodes, Duration::from_millis(400));
    assert_eq!(
        watchers(&nodes),
        vec![w],
        "the watcher changed while nobody failed"
    );

    let id = nodes[w].node_id().to_string();
    let infos: Vec<_> = nodes
        .iter()
        .map(|n| n.watcher_info().expect("watcher_info"))
        .collect();
    for (i, info) in infos.iter().enumerate() {
        assert_eq!(
            info.holder.as_deref(),
            Some(id.as_str()),
            "node {i}: {info:?}"
        );
        assert!(info.epoch >= 1, "node {i}: {info:?}");
        assert_eq!(info.epoch, infos[0].epoch, "nodes disagree on the epoch");
        let ttl = info.ttl.expect("a held lock has a TTL");
        assert!(
            ttl <= TTL,
            "node {i}: lock TTL {ttl:?} above the configured {TTL:?}"
        );
        assert_eq!(info.is_self, i == w, "node {i}: {info:?}");
    }

    let (holder, pttl) = raw_lock(&server, prefix);
    assert_eq!(holder.as_deref(), Some(id.as_str()));
    assert!(pttl > 0 && pttl <= 1000, "PTTL {pttl}");

    // A follower never applies a block, and says so without asking Redis.
    let follower = &nodes[(w + 1) % 3];
    let outcome = follower
        .confirm(&ChainPoint::Slot(1), &[], &[], 6, 2)
        .expect("confirm");
    assert_eq!(outcome, ConfirmOutcome::NotWatcher);
    assert_eq!(follower.watcher_info().expect("info").applied_slot, None);
}

#[test]
fn without_liveness_checks_a_crashed_watcher_is_replaced_after_the_lock_expires() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "watcher-test:crash";
    // Without liveness checks `abandon` is a crash the followers cannot see: only the lock's
    // expiry tells them.
    let mut nodes: Vec<RedisMempool> = (0..3)
        .map(|_| {
            open(
                config(&server, prefix)
                    .watcher_lock_ttl(TTL)
                    .liveness_check(Duration::ZERO),
            )
        })
        .collect();
    let w = settle_single_watcher(&nodes);
    let epoch_before = nodes[0].watcher_info().expect("info").epoch;

    let crashed = nodes.remove(w);
    let crashed_id = crashed.node_id().to_string();
    let t0 = Instant::now();
    crashed.abandon();
    // Not released: the key stays until it expires.
    let (holder, pttl) = raw_lock(&server, prefix);
    assert_eq!(
        holder.as_deref(),
        Some(crashed_id.as_str()),
        "abandon released the lock"
    );
    let expiry = t0 + Duration::from_millis(pttl.max(0) as u64);

    let took_over = wait_until(TTL + SETTLE, || !watchers(&nodes).is_empty());
    let elapsed = t0.elapsed();
    eprintln!(
        "crash takeover: {} ms after abandon (strict target: TTL + 100 ms = {} ms)",
        elapsed.as_millis(),
        (TTL + Duration::from_millis(100)).as_millis()
    );
    assert!(took_over, "no node took over after the watcher crashed");
    assert!(
        elapsed < TTL + Duration::from_secs(1),
        "takeover took {elapsed:?}"
    );
    assert!(
        Instant::now() >= expiry,
        "taken over before the lock could expire"
    );

    let new = settle_single_watcher(&nodes);
    let info = nodes[new].watcher_info().expect("info");
    assert_eq!(info.holder.as_deref(), Some(nodes[new].node_id()));
    assert!(
        info.epoch > epoch_before,
        "{info:?} after epoch {epoch_before}"
    );
    assert_never_two_watchers(&nodes, Duration::from_millis(200));
}

#[test]
fn graceful_shutdown_hands_over_at_once() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "watcher-test:graceful";
    let mut nodes = open_nodes(&server, prefix, 3);
    let w = settle_single_watcher(&nodes);
    let leaving = nodes.remove(w);

    let t0 = Instant::now();
    // Shutdown blocks until its threads are joined; the takeover is timed from here, in parallel.
    let shutdown = std::thread::spawn(move || leaving.shutdown());
    let took_over = wait_until(SETTLE, || !watchers(&nodes).is_empty());
    let elapsed = t0.elapsed();
    eprintln!(
        "graceful takeover: {} ms after shutdown (strict target: 100 ms)",
        elapsed.as_millis()
    );
    shutdown
        .join()
        .expect("shutdown thread")
        .expect("shutdown reports success");
    assert!(took_over, "no node took over after a graceful shutdown");
    assert!(
        elapsed < Duration::from_secs(1),
        "graceful takeover took {elapsed:?}, not faster than the TTL expiry"
    );

    let new = settle_single_watcher(&nodes);
    let (holder, _) = raw_lock(&server, prefix);
    assert_eq!(holder.as_deref(), Some(nodes[new].node_id()));
}

#[test]
fn lock_deleted_by_hand_yields_a_single_new_watcher() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "watcher-test:deleted";
    // Nodes start at different moments in production, so their lease ticks (every TTL/3) are
    // spread over the renewal period. Opening them a ninth of the TTL apart reproduces that;
    // opened back to back, the followers would always poll just after the watcher renews and
    // never get a chance to see the deleted key first.
    let mut nodes = vec![node(&server, prefix)];
    for _ in 0..2 {
        std::thread::sleep(TTL / 9);
        nodes.push(node(&server, prefix));
    }
    let old = settle_single_watcher(&nodes);
    let epoch_before = nodes[0].watcher_info().expect("info").epoch;

    // Deleting right after a renewal is the worst moment: the watcher will not look at the key
    // again for TTL/3, while each follower polls within that time. The fence the DEL leaves
    // behind keeps the followers out; the watcher takes its lock back at its next renewal.
    let mut con = server.connection();
    wait_for_renewal(&mut con, prefix);
    let deleted: i64 = redis::cmd("DEL")
        .arg(lock_key(prefix))
        .query(&mut con)
        .expect("DEL");
    assert_eq!(deleted, 1);
    let t0 = Instant::now();

    // Long enough for every node to notice (renewal or poll, each at most TTL/3 away).
    let samples = assert_never_two_watchers(&nodes, Duration::from_millis(1500));
    let new = settle_single_watcher(&nodes);
    eprintln!(
        "lock deleted by hand: node {old} was watcher, node {new} is now ({samples} samples, \
         {} ms)",
        t0.elapsed().as_millis()
    );
    let info = nodes[new].watcher_info().expect("info");
    assert_eq!(info.holder.as_deref(), Some(nodes[new].node_id()));
    assert!(
        info.epoch > epoch_before,
        "{info:?} after epoch {epoch_before}"
    );
}

#[test]
fn frozen_watcher_gets_lost_lock_and_changes_nothing() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "watcher-test:frozen";
    let a = node(&server, prefix);
    assert!(a.is_watcher(), "a lone node is watcher once open returns");
    let b = node(&server, prefix);
    assert!(!b.is_watcher());

    // Some state for a stale confirm to corrupt: an inflight tx with one miss, slot 10 applied.
    let t = tx(1);
    a.receive(t.clone()).expect("receive");
    a.mark_inflight(&[t.hash]).expect("mark_inflight");
    let applied = a
        .confirm(&ChainPoint::Slot(10), &[], &[], 6, 2)
        .expect("confirm");
    assert_eq!(applied, ConfirmOutcome::Applied);
    let status_before = a.check_status(&t.hash).expect("status");
    assert_eq!(status_before.stage, MempoolTxStage::Propagated);
    assert_eq!(status_before.non_confirmations, 1);
    let info_before = a.watcher_info().expect("info");
    assert_eq!(info_before.applied_slot, Some(10));

    let freeze = Duration::from_millis(2500);
    let t0 = Instant::now();
    a.test_freeze_lease(freeze);
    assert!(
        wait_until(TTL + SETTLE, || b.is_watcher()),
        "b did not take over from the frozen watcher"
    );
    eprintln!(
        "takeover from a frozen watcher: {} ms after the freeze",
        t0.elapsed().as_millis()
    );
    assert!(
        t0.elapsed() < freeze - Duration::from_millis(300),
        "takeover came too late to test a stale watcher ({:?})",
        t0.elapsed()
    );

    // The frozen thread cannot lower the flag, so `a` still believes it is the watcher; the
    // server-side fence is what stops it.
    assert!(a.is_watcher(), "the frozen lease thread lowered its flag");
    let stale = a
        .confirm(&ChainPoint::Slot(20), &[t.hash], &[], 6, 2)
        .expect("confirm");
    assert_eq!(stale, ConfirmOutcome::LostLock);
    assert_eq!(a.check_status(&t.hash).expect("status"), status_before);
    let info = a.watcher_info().expect("info");
    assert_eq!(
        info.applied_slot,
        Some(10),
        "a stale confirm moved the applied slot"
    );
    assert_eq!(info.holder.as_deref(), Some(b.node_id()));
    assert!(!info.is_self);
    assert!(info.epoch > info_before.epoch);

    // Once thawed, the flag goes down at the first tick and `a` stays a follower.
    assert!(
        wait_until(freeze + SETTLE, || !a.is_watcher()),
        "the thawed node kept its flag"
    );
    assert!(
        t0.elapsed() >= freeze,
        "the flag went down while the thread was frozen"
    );
    assert_never_two_watchers(&[a.clone(), b.clone()], Duration::from_millis(400));
    assert!(b.is_watcher());
    assert!(!a.is_watcher());
    assert_eq!(
        a.confirm(&ChainPoint::Slot(20), &[t.hash], &[], 6, 2)
            .expect("confirm"),
        ConfirmOutcome::NotWatcher
    );

    // The real watcher applies the same block normally.
    assert_eq!(
        b.confirm(&ChainPoint::Slot(20), &[t.hash], &[], 6, 2)
            .expect("confirm"),
        ConfirmOutcome::Applied
    );
    let status = b.check_status(&t.hash).expect("status");
    assert_eq!(status.stage, MempoolTxStage::Confirmed);
    assert_eq!(status.confirmations, 1);
}

#[test]
fn watcher_keeps_its_lease_across_many_renewals() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "watcher-test:renewals";
    let node = node(&server, prefix);
    assert!(wait_until(SETTLE, || node.is_watcher()));
    let before = node.watcher_info().expect("info");
    assert!(before.is_self);

    // Over 3 TTLs, i.e. about nine renewals: any lost or late renewal would lower the flag.
    let end = Instant::now() + TTL * 3 + Duration::from_millis(200);
    let mut samples = 0u32;
    while Instant::now() < end {
        assert!(node.is_watcher(), "flag dropped after {samples} samples");
        samples += 1;
        std::thread::sleep(Duration::from_millis(5));
    }

    let after = node.watcher_info().expect("info");
    assert!(after.is_self, "{after:?}");
    assert_eq!(
        after.epoch, before.epoch,
        "the lock was re-acquired instead of renewed"
    );
    let (holder, pttl) = raw_lock(&server, prefix);
    assert_eq!(holder.as_deref(), Some(node.node_id()));
    assert!(pttl > 0 && pttl <= 1000, "PTTL {pttl}");
}

#[test]
fn node_opened_after_a_handover_is_a_follower() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "watcher-test:reopen";
    let a = node(&server, prefix);
    assert!(a.is_watcher());
    let b = node(&server, prefix);
    a.shutdown().expect("shutdown");
    assert!(wait_until(SETTLE, || b.is_watcher()), "b did not take over");

    let c = node(&server, prefix);
    assert!(
        !c.is_watcher(),
        "a new node took the lock from a live watcher"
    );
    assert_never_two_watchers(&[b.clone(), c.clone()], Duration::from_millis(500));
    assert!(b.is_watcher());
    assert!(!c.is_watcher());
    let info = c.watcher_info().expect("info");
    assert_eq!(info.holder.as_deref(), Some(b.node_id()));
    assert!(!info.is_self);
    assert_eq!(
        c.confirm(&ChainPoint::Slot(5), &[], &[], 6, 2)
            .expect("confirm"),
        ConfirmOutcome::NotWatcher
    );
}
