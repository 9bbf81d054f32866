//! The simulated chain: a block every interval, made of the inflight transactions no earlier
//! block contained, written as a `block` line to the stdin of every running node.
//!
//! It also owns the nodes' stdin pipes, so that a (re)started node first receives the whole
//! history, then every new block, with no gap and no duplicate: both happen under one lock.
//!
//! Shared by the demo and the chaos run; each uses only part of it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Write;
use std::process::ChildStdin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use dolos_redis::{BlockHash, MempoolTxStage, RedisMempool, TxHash};

use crate::node_loop::{block_line, Rng};

enum Command {
    /// Produce the next block now instead of at the next interval.
    Now,
}

#[derive(Default)]
struct State {
    /// Every block line so far, in order.
    history: Vec<String>,
    /// One stdin per node slot; `None` while that node is not running.
    feeds: Vec<Option<ChildStdin>>,
    last_slot: u64,
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

impl Chain {
    /// Starts producing blocks, the first one `interval` from now.
    pub fn start(observer: RedisMempool, interval: Duration, nodes: usize) -> Chain {
        Chain::start_between(observer, interval, interval, nodes)
    }

    /// Like [`Chain::start`], with each block interval drawn uniformly from `min..=max`, as a
    /// real chain's blocks do not come on a fixed beat.
    pub fn start_between(
        observer: RedisMempool,
        min: Duration,
        max: Duration,
        nodes: usize,
    ) -> Chain {
        let state = Arc::new(Mutex::new(State {
            feeds: (0..nodes).map(|_| None).collect(),
            ..State::default()
        }));
        let (commands, rx) = crossbeam_channel::unbounded();
        let shared = state.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = Rng::seeded("chain");
            let mut included: HashSet<TxHash> = HashSet::new();
            let spread = max.saturating_sub(min).as_millis() as u64;
            let mut beat = Rng::seeded("beat");
            let mut interval = || min + Duration::from_millis(beat.next_u64() % (spread + 1));
            let mut next = Instant::now() + interval();
            loop {
                match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Ok(Command::Now) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                next = Instant::now() + interval();
                // The observer talks to Redis directly, never through a node's fault proxy.
                let inflight = match observer.peek_inflight(100_000) {
                    Ok(txs) => txs,
                    Err(e) => {
                        say!("chain: cannot read inflight txs, skipping a block: {e}");
                        continue;
                    }
                };
                let txs: Vec<TxHash> = inflight
                    .into_iter()
                    .filter(|t| {
                        matches!(
                            t.stage,
                            MempoolTxStage::Propagated | MempoolTxStage::Acknowledged
                        )
                    })
                    .map(|t| t.hash)
                    .filter(|h| included.insert(*h))
                    .collect();
                let mut state = lock(&shared);
                state.last_slot += 1;
                let line = block_line(state.last_slot, &BlockHash::from(rng.bytes32()), &txs);
                for slot in state.feeds.iter_mut() {
                    feed(slot, &line);
                }
                state.history.push(line);
            }
        });
        Chain {
            state,
            commands: Some(commands),
            thread: Some(thread),
        }
    }

    /// Gives a freshly started node every block so far, then every new one.
    pub fn attach(&self, node: usize, stdin: ChildStdin) {
        let mut state = lock(&self.state);
        let mut slot = Some(stdin);
        for line in &state.history {
            feed(&mut slot, line);
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

    /// Every block line so far, in order.
    pub fn history(&self) -> Vec<String> {
        lock(&self.state).history.clone()
    }

    /// A handle that reads how far the chain is, for other threads.
    pub fn progress(&self) -> Progress {
        Progress(self.state.clone())
    }

    /// Stops producing blocks; returns the last slot.
    pub fn stop(&mut self) -> u64 {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        lock(&self.state).last_slot
    }
}

/// See [`Chain::progress`].
#[derive(Clone)]
pub struct Progress(Arc<Mutex<State>>);

impl Progress {
    /// The last block's slot (slots start at 1, one per block, so also the block count).
    pub fn tip(&self) -> u64 {
        lock(&self.0).last_slot
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.stop();
    }
}
