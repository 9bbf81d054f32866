//! Everything that happened, as the event stream told the demo's observer: the life of every
//! transaction and every change of watcher. The final check reads it.
//!
//! Shared by the demo and the chaos run; each uses only part of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dolos_redis::{ChainPoint, MempoolEvent, MempoolTxStage, RedisMempool, TxHash};

/// A node acquired the lock.
#[derive(Clone, Debug)]
pub struct Acquired {
    pub at: Instant,
    pub node_id: String,
    pub epoch: u64,
}

/// One `BlockApplied` event: a block applied, or undone (`undo`).
#[derive(Clone, Debug)]
pub struct BlockEvent {
    pub point: ChainPoint,
    /// The applied chain's height once the block was applied (its own height) or undone.
    pub height: u64,
    pub undo: bool,
    pub node_id: String,
}

#[derive(Default)]
pub struct State {
    /// Every transaction that entered the mempool (a `Pending` event), with the stages it went
    /// through and the confirmation count each event carried.
    pub txs: HashMap<TxHash, Vec<(MempoolTxStage, u32)>>,
    /// Transitions seen for a hash before its `Pending` event (must stay empty).
    pub orphans: u64,
    pub acquired: Vec<Acquired>,
    /// Every block event, in order.
    pub blocks: Vec<BlockEvent>,
    /// The applied chain as the block events build it, oldest first: an applied block is
    /// pushed, an undone one popped.
    pub applied: Vec<ChainPoint>,
    /// Block events that do not fit that replay: a block applied while on the chain, an undo
    /// of a block that is not the tip, a height that does not follow (must stay empty).
    pub audit: Vec<String>,
    pub lagged: u64,
    /// Events whose sequence did not increase (must stay 0).
    pub out_of_order: u64,
    pub finalized: u64,
    pub dropped: u64,
    /// The height of the applied block whose `confirm` finalized each tx (its `BlockApplied`
    /// event comes just before the transitions it made).
    pub finalized_in: HashMap<TxHash, u64>,
}

pub struct Ledger {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ledger {
    /// Subscribes before returning, so every event committed from now on is recorded.
    pub fn start(observer: &RedisMempool) -> Ledger {
        let events = observer.subscribe();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut last_seq = 0;
            let mut applying: Option<u64> = None;
            let mut check_seq = |seq: u64, s: &mut State| {
                if seq <= last_seq {
                    s.out_of_order += 1;
                }
                last_seq = seq;
            };
            while !stopping.load(Ordering::SeqCst) {
                let Ok(event) = events.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    MempoolEvent::Tx { seq, tx } => {
                        check_seq(seq, &mut s);
                        match tx.stage {
                            MempoolTxStage::Finalized => {
                                s.finalized += 1;
                                if let Some(height) = applying {
                                    s.finalized_in.insert(tx.hash, height);
                                }
                            }
                            MempoolTxStage::Dropped => s.dropped += 1,
                            _ => {}
                        }
                        if tx.stage == MempoolTxStage::Pending {
                            s.txs.entry(tx.hash).or_default();
                        }
                        match s.txs.get_mut(&tx.hash) {
                            Some(life) => life.push((tx.stage, tx.confirmations)),
                            None => s.orphans += 1,
                        }
                    }
                    MempoolEvent::WatcherAcquired {
                        seq,
                        node_id,
                        epoch,
                    } => {
                        check_seq(seq, &mut s);
                        s.acquired.push(Acquired {
                            at: Instant::now(),
                            node_id,
                            epoch,
                        });
                    }
                    MempoolEvent::WatcherReleased { seq, .. } => check_seq(seq, &mut s),
                    MempoolEvent::BlockApplied {
                        seq,
                        point,
                        height,
                        rollback: undo,
                        node_id,
                        ..
                    } => {
                        check_seq(seq, &mut s);
                        applying = (!undo).then_some(height);
                        replay(&mut s, &point, height, undo);
                        s.blocks.push(BlockEvent {
                            point,
                            height,
                            undo,
                            node_id,
                        });
                    }
                    MempoolEvent::Lagged { missed } => s.lagged += missed,
                    _ => {}
                }
            }
        });
        Ledger {
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first acquisition by `node_id` recorded after `since`.
    pub fn acquired_by(&self, node_id: &str, since: Instant) -> Option<Acquired> {
        self.state()
            .acquired
            .iter()
            .find(|a| a.node_id == node_id && a.at >= since)
            .cloned()
    }
}

/// Follows one block event on the replayed applied chain; notes what does not fit.
fn replay(s: &mut State, point: &ChainPoint, height: u64, undo: bool) {
    if undo {
        if s.applied.last() == Some(point) {
            s.applied.pop();
        } else {
            s.audit
                .push(format!("undid {point:?}, which is not the applied tip"));
        }
        if height != s.applied.len() as u64 {
            s.audit.push(format!(
                "undid {point:?} leaving height {height}, but {} blocks",
                s.applied.len()
            ));
        }
    } else {
        if s.applied.contains(point) {
            s.audit.push(format!(
                "applied {point:?} while it was on the applied chain"
            ));
        }
        s.applied.push(*point);
        if height != s.applied.len() as u64 {
            s.audit.push(format!(
                "applied {point:?} at height {height}, but the chain has {} blocks",
                s.applied.len()
            ));
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What is wrong with one transaction's life, given the finalize threshold `f`: it must start
/// Pending and end Finalized exactly once with `f` confirmations, never Dropped. Since it last
/// entered the mempool's inflight set (its start, or its last RolledBack when a fork undid its
/// block), its confirmation counts go 1, 2, …, f-1: each at least once (once per applied
/// block), up by at most one per block (an undo lowers the count; it emits nothing, and the
/// next block repeats a count), never f or more.
pub fn life_problem(life: &[(MempoolTxStage, u32)], f: u32) -> Option<String> {
    use MempoolTxStage::*;
    let stages: Vec<MempoolTxStage> = life.iter().map(|(s, _)| *s).collect();
    if life.first().map(|(s, _)| *s) != Some(Pending) {
        return Some(format!("does not start Pending: {stages:?}"));
    }
    let finals = life
        .iter()
        .filter(|(s, _)| matches!(s, Finalized | Dropped))
        .count();
    match life.last() {
        Some((Finalized, c)) if finals == 1 && *c == f => {}
        _ => {
            return Some(format!(
                "does not end Finalized once with {f} confirmations: {life:?}"
            ))
        }
    }
    if life.iter().any(|(s, _)| matches!(s, Unknown | Dropped)) {
        return Some(format!("unexpected stage in {stages:?}"));
    }
    let since = life
        .iter()
        .rposition(|(s, _)| *s == RolledBack)
        .map_or(0, |i| i + 1);
    let confirmations: Vec<u32> = life[since..]
        .iter()
        .filter(|(s, _)| *s == Confirmed)
        .map(|(_, c)| *c)
        .collect();
    let mut previous = 0;
    for &c in &confirmations {
        if c == 0 || c >= f || c > previous + 1 {
            return Some(format!(
                "confirmation counts {confirmations:?}: expected 1, 2, …, {} with no jump",
                f - 1
            ));
        }
        previous = c;
    }
    if previous != f - 1 && f > 1 {
        return Some(format!(
            "confirmation counts {confirmations:?} do not reach {} before Finalized",
            f - 1
        ));
    }
    None
}
