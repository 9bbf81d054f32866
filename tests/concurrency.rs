//! Eight threads on two nodes hammer a small pool of overlapping hashes for a few seconds with
//! every mutating call (and reads in between); afterwards the invariants are checked through the
//! public API only:
//!
//! * every accepted tx is in exactly one place: the pending queue, the inflight set or the
//!   finalized log — no hash twice within or across pending and inflight, and each hash is
//!   accounted for by the number of times `receive` accepted it (a Dropped tx may be received
//!   again, so a hash can have several Dropped entries, then at most one Finalized as its last);
//! * every Finalized entry has exactly F confirmations, every Dropped entry exactly D misses;
//! * `stats()` agrees with the lists, and `check_status` with where each hash is;
//! * the audit trail has one `BlockApplied` per Applied outcome, and no slot is applied twice,
//!   although some blocks are sent twice on purpose.
//!
//! The run is seeded (`CONCURRENCY_SEED` to replay; the seed is printed), though thread
//! interleavings are not reproducible.

mod common;
use dolos_redis_testkit as support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config, hash, open, tx, SETTLE};
use dolos_redis::{
    ChainPoint, ConfirmOutcome, Error, MempoolEvent, MempoolTx, MempoolTxStage, RedisMempool,
    TxHash,
};
use support::{wait_until, RedisServer, Rng};

const F: u32 = 3;
const D: u32 = 3;
/// Tx ids are 0..IDS: few, so that the workers' calls overlap.
const IDS: u64 = 200;
const THREADS_PER_NODE: usize = 4;
const RUN_FOR: Duration = Duration::from_secs(3);

/// A random tx id.
fn any_id(rng: &mut Rng) -> u32 {
    rng.below(IDS) as u32
}

/// What the workers did, as the client saw it.
#[derive(Default)]
struct Tally {
    /// How many times `receive` accepted each hash.
    accepted: Mutex<HashMap<TxHash, u64>>,
    /// Slots of the confirm calls that returned Applied.
    applied_slots: Mutex<Vec<u64>>,
    outcomes: Mutex<HashMap<&'static str, u64>>,
    calls: AtomicU64,
}

impl Tally {
    fn count(&self, what: &'static str) {
        *self.outcomes.lock().unwrap().entry(what).or_default() += 1;
    }
}

fn random_hashes(rng: &mut Rng, max: u64) -> Vec<TxHash> {
    (0..1 + rng.below(max)).map(|_| hash(any_id(rng))).collect()
}

fn expect_ok<T>(what: &str, r: Result<T, Error>) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e:?}"))
}

/// One worker: random calls on `node` until `stop`.
fn assert_once(what: &str, read: &[MempoolTx]) {
    let mut seen = HashSet::new();
    for tx in read {
        assert!(seen.insert(tx.hash), "{what} returned {} twice", tx.hash);
    }
}

fn work(node: RedisMempool, mut rng: Rng, slots: &AtomicU64, stop: &AtomicBool, tally: &Tally) {
    while !stop.load(Ordering::Relaxed) {
        tally.calls.fetch_add(1, Ordering::Relaxed);
        match rng.below(100) {
            0..=34 => {
                let id = any_id(&mut rng);
                match node.receive(tx(id)) {
                    Ok(()) => {
                        *tally.accepted.lock().unwrap().entry(hash(id)).or_default() += 1;
                        tally.count("receive ok");
                    }
                    Err(Error::DuplicateTx) => tally.count("receive duplicate"),
                    Err(e) => panic!("receive failed: {e:?}"),
                }
            }
            35..=49 => {
                // Mostly hashes that are pending right now, plus a few random ones.
                let mut hashes: Vec<TxHash> = expect_ok("peek_pending", node.peek_pending(8))
                    .into_iter()
                    .filter(|_| rng.chance(0.6))
                    .map(|t| t.hash)
                    .collect();
                hashes.extend(random_hashes(&mut rng, 3));
                expect_ok("mark_inflight", node.mark_inflight(&hashes));
            }
            50..=59 => {
                let hashes = random_hashes(&mut rng, 6);
                expect_ok("mark_acknowledged", node.mark_acknowledged(&hashes));
            }
            60..=69 => confirm(&node, &mut rng, slots, tally),
            // Reads of up to 32 txs are one script; larger ones are plain commands, between which
            // the other threads move and retire txs: they must still neither fail nor repeat.
            70..=81 => {
                let read = expect_ok("peek_pending", node.peek_pending(rng.below(80) as usize));
                assert_once("peek_pending", &read);
            }
            82..=91 => {
                let h = hash(any_id(&mut rng));
                expect_ok("check_status", node.check_status(&h));
            }
            92..=96 => {
                let read = expect_ok("peek_inflight", node.peek_inflight(rng.below(80) as usize));
                assert_once("peek_inflight", &read);
            }
            _ => {
                let h = hash(any_id(&mut rng));
                expect_ok("find_inflight", node.find_inflight(&h));
            }
        }
    }
}

/// A block with some of the inflight txs (and a few pending or unknown hashes, which it must
/// ignore). One block in ten re-sends a slot already used, which must never apply twice.
///
/// Blocks see few txs, so most lifecycles end Dropped and the hash is received again: a
/// Finalized hash stays out for good, and the small pool would soon be used up otherwise.
fn confirm(node: &RedisMempool, rng: &mut Rng, slots: &AtomicU64, tally: &Tally) {
    // A follower's call returns NotWatcher without a round trip; skip building its block.
    let mut seen: Vec<TxHash> = if node.is_watcher() {
        expect_ok("peek_inflight", node.peek_inflight(30))
            .into_iter()
            .filter(|_| rng.chance(0.01))
            .map(|t| t.hash)
            .collect()
    } else {
        Vec::new()
    };
    if rng.chance(0.02) {
        seen.extend(random_hashes(rng, 2));
    }
    let slot = if rng.chance(0.1) {
        // Taken by another call already (applied or about to be).
        slots
            .load(Ordering::SeqCst)
            .saturating_sub(rng.below(3))
            .max(1)
    } else {
        slots.fetch_add(1, Ordering::SeqCst) + 1
    };
    match expect_ok(
        "confirm",
        node.confirm(&ChainPoint::Slot(slot), &seen, &[], F, D),
    ) {
        ConfirmOutcome::Applied => {
            tally.applied_slots.lock().unwrap().push(slot);
            tally.count("confirm applied");
        }
        ConfirmOutcome::AlreadyApplied => tally.count("confirm already applied"),
        ConfirmOutcome::LostLock => tally.count("confirm lost lock"),
        ConfirmOutcome::NotWatcher => tally.count("confirm not watcher"),
        other => panic!("an outcome this test does not know: {other:?}"),
    }
}

/// Reads the whole finalized log, page by page.
fn whole_log(node: &RedisMempool) -> Vec<MempoolTx> {
    let mut log = Vec::new();
    let mut cursor = 1;
    loop {
        let page = node.dump_finalized(cursor, 97).unwrap();
        log.extend(page.items);
        match page.next_cursor {
            Some(next) => {
                assert!(next > cursor, "cursor went from {cursor} to {next}");
                cursor = next;
            }
            None => return log,
        }
    }
}

#[test]
fn eight_threads_on_two_nodes_keep_every_invariant() {
    support::init_logging();
    let seed = std::env::var("CONCURRENCY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("seed {seed} (CONCURRENCY_SEED={seed} to replay the random choices)");

    let server = RedisServer::start();
    let config = || {
        config(&server, "concurrency")
            .watcher_lock_ttl(Duration::from_secs(1))
            // Nothing may leave the retained log: the accounting needs all of it.
            .max_finalized(1_000_000)
    };
    let nodes = [open(config()), open(config())];
    assert!(wait_until(SETTLE, || nodes
        .iter()
        .any(RedisMempool::is_watcher)));

    // The audit trail, drained as it comes so the subscriber never lags.
    // An id the workers never use.
    let marker = hash(u32::MAX);
    let events = nodes[0].subscribe();
    let drain = std::thread::spawn(move || {
        let mut blocks = Vec::new();
        loop {
            match events.recv_timeout(SETTLE + RUN_FOR) {
                Ok(MempoolEvent::BlockApplied {
                    point, rollback, ..
                }) => {
                    assert!(!rollback, "no rollback was sent");
                    blocks.push(point.slot());
                }
                Ok(MempoolEvent::Tx { tx, .. })
                    if tx.hash == marker && tx.stage == MempoolTxStage::Pending =>
                {
                    return blocks
                }
                Ok(MempoolEvent::Lagged { missed }) => {
                    panic!("the audit trail lost {missed} events")
                }
                Ok(_) => {}
                Err(e) => panic!("event stream stalled: {e}"),
            }
        }
    });

    let tally = Arc::new(Tally::default());
    let slots = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for t in 0..THREADS_PER_NODE {
            let (node, tally, slots, stop) = (
                node.clone(),
                Arc::clone(&tally),
                Arc::clone(&slots),
                Arc::clone(&stop),
            );
            let rng = Rng::new(seed ^ (((n * THREADS_PER_NODE + t) as u64 + 1) << 32));
            workers.push(std::thread::spawn(move || {
                work(node, rng, &slots, &stop, &tally)
            }));
        }
    }
    let started = Instant::now();
    while started.elapsed() < RUN_FOR {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("a worker panicked");
    }
    let ran = started.elapsed();

    // Everything committed before the marker is delivered before it.
    nodes[1].receive(tx(u32::MAX)).unwrap();
    *tally.accepted.lock().unwrap().entry(marker).or_default() += 1;
    let block_events = drain.join().expect("the event drain panicked");

    let reader = &nodes[1];
    let pending = reader.peek_pending(usize::MAX).unwrap();
    let inflight = reader.peek_inflight(usize::MAX).unwrap();
    let log = whole_log(reader);
    let stats = reader.stats().unwrap();
    let accepted = tally.accepted.lock().unwrap().clone();
    let applied_slots = tally.applied_slots.lock().unwrap().clone();

    let mut outcomes: Vec<_> = tally.outcomes.lock().unwrap().clone().into_iter().collect();
    outcomes.sort();
    println!(
        "{} calls in {ran:?}; {outcomes:?}",
        tally.calls.load(Ordering::Relaxed)
    );
    let finalized = log
        .iter()
        .filter(|t| t.stage == MempoolTxStage::Finalized)
        .count();
    println!(
        "end state: {} pending, {} inflight, {} log entries ({finalized} finalized, {} dropped), \
         {} distinct hashes accepted {} times, {} blocks applied",
        pending.len(),
        inflight.len(),
        log.len(),
        log.len() - finalized,
        accepted.len(),
        accepted.values().sum::<u64>(),
        applied_slots.len()
    );

    // No hash twice within or across the live sets.
    let mut live = HashSet::new();
    for t in pending.iter().chain(&inflight) {
        assert!(live.insert(t.hash), "{} is live twice", t.hash);
    }
    for t in &pending {
        assert_eq!(t.stage, MempoolTxStage::Pending, "{t:?}");
    }
    for t in &inflight {
        assert!(t.stage.is_inflight(), "{t:?}");
    }

    // Log entries per hash, in log order; their counters.
    let mut entries: HashMap<TxHash, Vec<MempoolTxStage>> = HashMap::new();
    for t in &log {
        match t.stage {
            MempoolTxStage::Finalized => {
                assert_eq!((t.confirmations, t.non_confirmations), (F, 0), "{t:?}");
                assert!(t.confirmed_at.is_some(), "{t:?}");
            }
            MempoolTxStage::Dropped => {
                assert_eq!((t.confirmations, t.non_confirmations), (0, D), "{t:?}");
            }
            other => panic!("log entry in stage {other:?}: {t:?}"),
        }
        entries.entry(t.hash).or_default().push(t.stage);
    }

    // Every accepted tx is in exactly one place: each acceptance of a hash is either its live
    // copy (at most one) or one of its log entries; a Finalized entry is its last.
    let mut all_hashes: HashSet<TxHash> = accepted.keys().copied().collect();
    all_hashes.extend(live.iter().copied());
    all_hashes.extend(entries.keys().copied());
    for h in &all_hashes {
        let times = accepted.get(h).copied().unwrap_or(0);
        let in_log = entries.get(h).map(Vec::as_slice).unwrap_or(&[]);
        let is_live = live.contains(h);
        assert_eq!(
            times,
            u64::from(is_live) + in_log.len() as u64,
            "{h}: accepted {times} times, live {is_live}, log {in_log:?}"
        );
        if let Some(pos) = in_log.iter().position(|s| *s == MempoolTxStage::Finalized) {
            assert_eq!(
                pos,
                in_log.len() - 1,
                "{h}: entries after Finalized: {in_log:?}"
            );
            assert!(!is_live, "{h}: live again after Finalized");
        }
        // check_status agrees with where the hash is.
        let status = reader.check_status(h).unwrap();
        let expected = if let Some(t) = pending.iter().chain(&inflight).find(|t| t.hash == *h) {
            t.stage
        } else {
            *in_log.last().expect("accounted for above")
        };
        assert_eq!(status.stage, expected, "{h}");
    }
    assert_eq!(
        accepted.values().sum::<u64>(),
        (pending.len() + inflight.len() + log.len()) as u64
    );

    // stats() agrees with the lists.
    let by_stage = |s: MempoolTxStage| inflight.iter().filter(|t| t.stage == s).count() as u64;
    assert_eq!(stats.pending, pending.len() as u64);
    assert_eq!(stats.propagated, by_stage(MempoolTxStage::Propagated));
    assert_eq!(stats.acknowledged, by_stage(MempoolTxStage::Acknowledged));
    assert_eq!(stats.confirmed, by_stage(MempoolTxStage::Confirmed));
    assert_eq!(stats.finalized_log, log.len() as u64);
    assert_eq!(stats.applied_blocks, applied_slots.len() as u64);

    // The audit trail: one event per applied call, no slot twice, the same slots.
    assert_eq!(block_events.len(), applied_slots.len());
    let mut event_slots = block_events.clone();
    event_slots.sort_unstable();
    let before = event_slots.len();
    event_slots.dedup();
    assert_eq!(event_slots.len(), before, "a slot was applied twice");
    let mut outcome_slots = applied_slots;
    outcome_slots.sort_unstable();
    assert_eq!(event_slots, outcome_slots);
    // Enough happened for the checks to mean something.
    assert!(
        finalized > 0 && log.len() > finalized,
        "too little activity"
    );
}
