//! The simulated chain: a block every interval, made of the inflight transactions that no block
//! of the chain holds, written as a `block` line to the stdin of every running node; and now and
//! then a **fork**: the last 1–3 blocks are rolled back (a `rollback` line) and replaced by one
//! block more, the first of them at a lower slot than the first block it replaces.
//!
//! Slots advance by 10–30 per block, so a fork's blocks fit between the rollback point and the
//! blocks they replace; its last block lands above the old tip. Every block hash is random, so
//! each fork's blocks are new blocks.
//!
//! The transactions of rolled-back blocks are *held*: no block takes them again until the
//! applied chain in Redis has reached the fork (its tip is on the chain, at or above the fork's
//! first block). Before that, Redis may still hold them as Confirmed by an abandoned block, or
//! about to be returned to pending by the rollback; a block that took them then would name txs
//! that `confirm` does not count (it confirms inflight txs only).
//!
//! It also owns the nodes' stdin pipes, so that a (re)started node first receives the whole
//! chain so far (as a real node has it on disk), then every new line, with no gap and no
//! duplicate: both happen under one lock.
//!
//! Shared by the demo and the chaos run; each uses only part of it.

use std::collections::HashSet;
use std::io::Write;
use std::process::ChildStdin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use dolos_redis::{BlockHash, ChainPoint, MempoolTxStage, RedisMempool, TxHash};

use dolos_redis_testkit::Rng;

use crate::protocol::{block_line, rollback_line};

/// The deepest fork the chain makes. Below the finalize threshold of the demo and the chaos
/// run (4), so a Finalized tx's block is never rolled back.
pub const MAX_FORK_DEPTH: usize = 3;

/// How the chain runs.
#[derive(Clone, Debug)]
pub struct Pace {
    /// Each block interval is drawn uniformly from `min..=max`, as a real chain's blocks do not
    /// come on a fixed beat.
    pub min: Duration,
    pub max: Duration,
    /// Chance, in percent, that a block interval ends in a fork instead of a block (0: only
    /// forks asked for with [`Chain::fork`]).
    pub fork_percent: u64,
    /// Seeds the forks' depths and slots (block hashes and beats are random).
    pub seed: u64,
}

impl Pace {
    /// A block every `interval`, no random forks.
    pub fn steady(interval: Duration) -> Pace {
        Pace {
            min: interval,
            max: interval,
            fork_percent: 0,
            seed: 0,
        }
    }
}

enum Command {
    /// Produce the next block now instead of at the next interval.
    Now,
    /// Fork now, rolling back this many blocks; the fork is sent back.
    Fork(usize, Sender<Fork>),
}

/// One block of the chain.
#[derive(Clone, Debug)]
pub struct Block {
    pub point: ChainPoint,
    pub txs: Vec<TxHash>,
}

/// One fork: the chain rolled back to `to`, abandoning `undone`, and grew `added`.
#[derive(Clone, Debug)]
pub struct Fork {
    pub to: ChainPoint,
    pub undone: Vec<Block>,
    pub added: Vec<ChainPoint>,
}

#[derive(Default)]
struct State {
    /// The chain as it stands, oldest first.
    blocks: Vec<Block>,
    /// Every tx in a block of `blocks`.
    included: HashSet<TxHash>,
    /// Txs of rolled-back blocks, kept out of new blocks until the applied chain reaches the
    /// fork's first block, at height `hold_until`.
    held: HashSet<TxHash>,
    hold_until: usize,
    /// One stdin per node slot; `None` while that node is not running.
    feeds: Vec<Option<ChildStdin>>,
    forks: Vec<Fork>,
    /// No more random forks.
    calm: bool,
}

impl State {
    fn tip_slot(&self) -> u64 {
        self.blocks.last().map_or(0, |b| b.point.slot())
    }

    fn send(&mut self, line: &str) {
        for slot in self.feeds.iter_mut() {
            feed(slot, line);
        }
    }

    fn push(&mut self, point: ChainPoint, txs: Vec<TxHash>) {
        self.send(&block_line(&point, &txs));
        self.included.extend(txs.iter().copied());
        self.blocks.push(Block { point, txs });
    }

    /// Releases the held txs once the applied chain in Redis holds the fork's first block.
    fn release(&mut self, applied_tip: Option<ChainPoint>) {
        if self.held.is_empty() {
            return;
        }
        let height = applied_tip.and_then(|tip| self.blocks.iter().rposition(|b| b.point == tip));
        if height.is_some_and(|i| i + 1 >= self.hold_until) {
            self.held.clear();
        }
    }
}

pub struct Chain {
    state: Arc<Mutex<State>>,
    commands: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes one line; a node that died is simply no longer fed.
fn feed(slot: &mut Option<ChildStdin>, line: &str) {
    if let Some(stdin) = slot {
        if writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .is_err()
        {
            *slot = None;
        }
    }
}

/// The producer thread's own state.
struct Producer {
    observer: RedisMempool,
    state: Arc<Mutex<State>>,
    hashes: Rng,
    forks: Rng,
}

impl Producer {
    /// A slot step of an ordinary block.
    fn step(&mut self) -> u64 {
        10 + self.forks.next_u64() % 21
    }

    fn hash(&mut self) -> BlockHash {
        BlockHash::from(self.hashes.bytes32())
    }

    /// The inflight txs no block of the chain holds, and the applied tip; `None` (and a line on
    /// the timeline) when Redis cannot be read.
    fn read(&self) -> Option<(Vec<TxHash>, Option<ChainPoint>)> {
        // The observer talks to Redis directly, never through a node's fault proxy.
        let inflight = self.observer.peek_inflight(100_000);
        let tip = self.observer.applied_points(1);
        match (inflight, tip) {
            (Ok(inflight), Ok(tip)) => Some((
                inflight
                    .into_iter()
                    .filter(|t| {
                        matches!(
                            t.stage,
                            MempoolTxStage::Propagated | MempoolTxStage::Acknowledged
                        )
                    })
                    .map(|t| t.hash)
                    .collect(),
                tip.first().copied(),
            )),
            (Err(e), _) | (_, Err(e)) => {
                say!("chain: cannot read redis, no block this time: {e}");
                None
            }
        }
    }

    /// The next block, of the txs that may go in one.
    fn block(&mut self) {
        let Some((inflight, applied_tip)) = self.read() else {
            return;
        };
        let step = self.step();
        let hash = self.hash();
        let mut s = lock(&self.state);
        s.release(applied_tip);
        let txs: Vec<TxHash> = inflight
            .into_iter()
            .filter(|h| !s.included.contains(h) && !s.held.contains(h))
            .collect();
        let point = ChainPoint::Specific(s.tip_slot() + step, hash);
        s.push(point, txs);
    }

    /// Rolls back `depth` blocks (fewer if the chain is shorter) and adds `depth + 1`: the first
    /// between the rollback point and the first abandoned block, the last above the old tip.
    fn fork(&mut self, depth: usize) -> Option<Fork> {
        let (inflight, applied_tip) = self.read()?;
        let state = self.state.clone();
        let mut s = lock(&state);
        s.release(applied_tip);
        let depth = depth.min(s.blocks.len());
        if depth == 0 {
            return None;
        }
        let old_tip = s.tip_slot();
        let keep = s.blocks.len() - depth;
        let undone = s.blocks.split_off(keep);
        let to = s.blocks.last().map_or(ChainPoint::Origin, |b| b.point);
        for tx in undone.iter().flat_map(|b| b.txs.iter()) {
            s.included.remove(tx);
            s.held.insert(*tx);
        }
        s.send(&rollback_line(&to));
        // Between the rollback point and the first abandoned block (at its slot if there is no
        // room: a fork may undo a fork's first block, which may sit right after the point).
        let (lo, hi) = (to.slot() + 1, undone[0].point.slot().saturating_sub(1));
        let mut slot = match hi.checked_sub(lo) {
            Some(spread) => lo + self.forks.next_u64() % (spread + 1),
            None => lo,
        };
        let txs: Vec<TxHash> = inflight
            .into_iter()
            .filter(|h| !s.included.contains(h) && !s.held.contains(h))
            .collect();
        let mut added = Vec::new();
        for i in 0..=depth {
            if i > 0 {
                slot += self.step();
            }
            if i == depth {
                slot = slot.max(old_tip + 1);
            }
            let point = ChainPoint::Specific(slot, self.hash());
            s.push(point, if i == 0 { txs.clone() } else { Vec::new() });
            added.push(point);
        }
        s.hold_until = keep + 1;
        let fork = Fork { to, undone, added };
        s.forks.push(fork.clone());
        Some(fork)
    }
}

impl Chain {
    /// Starts producing blocks (and forks, if `pace` says so), the first one after an interval.
    pub fn start(observer: RedisMempool, pace: Pace, nodes: usize) -> Chain {
        let state = Arc::new(Mutex::new(State {
            feeds: (0..nodes).map(|_| None).collect(),
            ..State::default()
        }));
        let (commands, rx) = crossbeam_channel::unbounded();
        let mut producer = Producer {
            observer,
            state: state.clone(),
            hashes: Rng::seeded("chain"),
            forks: Rng::new(pace.seed ^ 0x5eed_f04c),
        };
        let thread = std::thread::spawn(move || {
            let spread = pace.max.saturating_sub(pace.min).as_millis() as u64;
            let mut beat = Rng::seeded("beat");
            let mut interval = || pace.min + Duration::from_millis(beat.next_u64() % (spread + 1));
            let mut next = Instant::now() + interval();
            loop {
                match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Ok(Command::Fork(depth, reply)) => {
                        if let Some(fork) = producer.fork(depth) {
                            let _ = reply.send(fork);
                        }
                        continue;
                    }
                    Ok(Command::Now) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                next = Instant::now() + interval();
                let roll = producer.forks.next_u64() % 100;
                if roll < pace.fork_percent && !lock(&producer.state).calm {
                    let depth = 1 + (producer.forks.next_u64() % MAX_FORK_DEPTH as u64) as usize;
                    if producer.fork(depth).is_some() {
                        continue;
                    }
                }
                producer.block();
            }
        });
        Chain {
            state,
            commands: Some(commands),
            thread: Some(thread),
        }
    }

    /// Gives a freshly started node the chain so far, then every new line.
    pub fn attach(&self, node: usize, stdin: ChildStdin) {
        let mut state = lock(&self.state);
        let mut slot = Some(stdin);
        for block in &state.blocks {
            feed(&mut slot, &block_line(&block.point, &block.txs));
        }
        state.feeds[node] = slot;
    }

    /// Stops feeding a node (it was killed, or is being stopped).
    pub fn detach(&self, node: usize) {
        lock(&self.state).feeds[node] = None;
    }

    /// Sends a control line (`submit off`, `quit`) to a running node, in order with the blocks.
    pub fn send(&self, node: usize, line: &str) {
        feed(&mut lock(&self.state).feeds[node], line);
    }

    pub fn block_now(&self) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(Command::Now);
        }
    }

    /// Forks now, rolling back `depth` blocks; `None` if the chain is empty, Redis could not be
    /// read, or the chain is stopped.
    pub fn fork(&self, depth: usize) -> Option<Fork> {
        let commands = self.commands.as_ref()?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        commands.send(Command::Fork(depth, reply)).ok()?;
        answer.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Stops random forks, for the end of a run (forks asked for with [`Chain::fork`] still
    /// happen).
    pub fn calm(&self) {
        lock(&self.state).calm = true;
    }

    /// The chain as it stands, oldest first.
    pub fn blocks(&self) -> Vec<Block> {
        lock(&self.state).blocks.clone()
    }

    /// Every fork so far.
    pub fn forks(&self) -> Vec<Fork> {
        lock(&self.state).forks.clone()
    }

    /// A handle that reads how far the chain is, for other threads.
    pub fn progress(&self) -> Progress {
        Progress(self.state.clone())
    }

    /// Stops producing blocks; returns the chain's height.
    pub fn stop(&mut self) -> usize {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        lock(&self.state).blocks.len()
    }
}

/// See [`Chain::progress`].
#[derive(Clone)]
pub struct Progress(Arc<Mutex<State>>);

impl Progress {
    /// How many blocks the chain holds.
    pub fn height(&self) -> usize {
        lock(&self.0).blocks.len()
    }

    /// The chain's last block.
    pub fn tip(&self) -> Option<ChainPoint> {
        lock(&self.0).blocks.last().map(|b| b.point)
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.stop();
    }
}
