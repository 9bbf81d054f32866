//! One Dolos-like node, configured by a TOML file that carries the reference `[storage.mempool]`
//! table (see `examples/config/dolos1.toml` and `dolos2.toml`).
//!
//! ```text
//! redis-server --port 6379 &                                     # or any Redis at that URL
//! cargo run --example node -- examples/config/dolos1.toml
//! cargo run --example node -- examples/config/dolos2.toml   # second terminal
//! ```
//!
//! The first node to start becomes the watcher (`INFO dolos_redis::mempool: acquired watcher
//! lock`). Stop it with Ctrl-C: the lock is not released, so the other node takes over once it
//! expires (`watcher_lock_ttl = 10`, as in the reference). Add `RUST_LOG=dolos_redis=debug` to see
//! renewals and `not watcher, skipping confirm`.
//!
//! Every `tx_interval_ms` the node submits a transaction, acknowledges what it propagated on the
//! previous tick and propagates the head of the pending queue (`peek_pending` → `mark_inflight`).
//! Its chain comes from stdin, one line each, when stdin is not a terminal:
//!
//! ```text
//! block <slot> <block hash, 64 hex> [<tx hash, 64 hex> ...]
//! rollback <slot> <block hash, 64 hex> | rollback origin
//! submit off | submit on
//! quit
//! ```
//!
//! The watcher applies that chain, block by block with `confirm` and each rollback with one
//! `rollback_to`; a node that becomes the watcher first reconciles what Redis applied with its
//! own chain ([`reconcile`]; README, "Forks and takeovers"). For example
//! `(sleep 1; echo "block 1 $(printf '01%.0s' {1..32})"; sleep 600) | cargo run --example node --
//! examples/config/dolos1.toml` feeds one empty block. Without blocks, propagated transactions
//! simply stay inflight. `cargo demo` runs the fuller node of `harness/src/node.rs` (which also
//! retries calls a full Redis refused, and reports to the harness) under a simulated chain.

use std::error::Error;
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use dolos_redis::{ChainPoint, Config, ConfirmOutcome, EraCbor, MempoolTx, RedisMempool, TxHash};

/// The node's TOML file: Dolos's `[storage.mempool]` table, and a `[demo]` table of its own.
#[derive(serde::Deserialize)]
struct File {
    storage: Storage,
    #[serde(default)]
    demo: Settings,
}

#[derive(serde::Deserialize)]
struct Storage {
    mempool: Config,
}

/// What a real node would take from the chain and its peers.
#[derive(serde::Deserialize)]
#[serde(default)]
struct Settings {
    name: String,
    tx_interval_ms: u64,
    /// `confirm`'s F: confirmations until Finalized.
    finalize_threshold: u32,
    /// `confirm`'s D: blocks an unconfirmed inflight tx may miss.
    drop_threshold: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            name: "node".into(),
            tx_interval_ms: 500,
            finalize_threshold: 4,
            drop_threshold: 8,
        }
    }
}

struct Block {
    point: ChainPoint,
    txs: Vec<TxHash>,
}

struct Node {
    mempool: RedisMempool,
    settings: Settings,
    /// This node's chain, oldest first (a real node keeps it on disk).
    chain: Vec<Block>,
    /// `Some(n)`: the applied chain in Redis ends with our first `n` blocks, as our own calls
    /// left it; `None`: not known (not the watcher, a takeover, a failed call): reconcile first.
    applied: Option<usize>,
    submitting: bool,
    /// Propagated on the previous tick; acknowledged on this one, as peers would.
    awaiting_ack: Vec<TxHash>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let Some(path) = std::env::args().nth(1) else {
        return Err("usage: node <config.toml>   (e.g. examples/config/dolos1.toml)".into());
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, r| {
            let ts = buf.timestamp_millis();
            writeln!(buf, "{ts} {} {}: {}", r.level(), r.target(), r.args())
        })
        .init();
    let file: File =
        toml::from_str(&std::fs::read_to_string(&path)?).map_err(|e| format!("{path}: {e}"))?;
    let mut node = Node {
        mempool: RedisMempool::open(file.storage.mempool)?,
        settings: file.demo,
        chain: Vec::new(),
        applied: None,
        submitting: true,
        awaiting_ack: Vec::new(),
    };
    println!(
        "{} opened the mempool as node {}",
        node.settings.name,
        node.mempool.node_id()
    );
    let mut input = if std::io::stdin().is_terminal() {
        crossbeam_channel::never()
    } else {
        stdin_lines()
    };
    let interval = Duration::from_millis(node.settings.tx_interval_ms);
    let (mut next_tick, mut next_summary) = (Instant::now(), Instant::now());
    let mut was_watcher = false;
    loop {
        match input.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(line) if line.trim() == "quit" => break,
            Ok(line) => {
                if let Err(e) = node.on_line(&line) {
                    println!("{e}: {line:?}");
                }
            }
            // The end of the input ends the blocks only; the node goes on until interrupted.
            Err(RecvTimeoutError::Disconnected) => input = crossbeam_channel::never(),
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if now >= next_tick {
            if let Err(e) = node.tick() {
                println!("tick: {e}");
            }
            next_tick = (next_tick + interval).max(now);
        }
        let watcher = node.mempool.is_watcher();
        if watcher != was_watcher {
            was_watcher = watcher;
            println!(
                "{}",
                if watcher {
                    "now the watcher"
                } else {
                    "following"
                }
            );
        }
        if input.is_empty() {
            node.sync();
        }
        if now >= next_summary {
            println!(
                "{}: watcher {watcher}, chain {} blocks, applied {:?}",
                node.settings.name,
                node.chain.len(),
                node.applied
            );
            next_summary = now + Duration::from_secs(10);
        }
    }
    node.mempool.shutdown()?; // hands the lock over at once
    Ok(())
}

/// Reads stdin on a thread; the channel closes with the input.
fn stdin_lines() -> Receiver<String> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// `<slot> <block hash>` as a point.
fn point(slot: &str, hash: &str) -> Result<ChainPoint, Box<dyn Error>> {
    Ok(ChainPoint::Specific(slot.parse()?, hash.parse()?))
}

impl Node {
    fn on_line(&mut self, line: &str) -> Result<(), Box<dyn Error>> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["submit", on @ ("on" | "off")] => self.submitting = *on == "on",
            ["block", slot, hash, txs @ ..] => {
                let point = point(slot, hash)?;
                let txs = txs.iter().map(|t| t.parse()).collect::<Result<_, _>>()?;
                self.chain.push(Block { point, txs });
            }
            ["rollback", "origin"] => self.rollback(ChainPoint::Origin),
            ["rollback", slot, hash] => self.rollback(point(slot, hash)?),
            _ => return Err("unknown input line".into()),
        }
        Ok(())
    }

    /// Submits, acknowledges and propagates, as a node does with its peers.
    fn tick(&mut self) -> Result<(), dolos_redis::Error> {
        if self.submitting {
            let mut hash = [0u8; 32];
            hash[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            hash[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            // A CBOR array header, so the body at least starts like a transaction.
            let mut body = vec![0x84];
            body.resize(300, 0xa0);
            self.mempool
                .receive(MempoolTx::new(TxHash::from(hash), EraCbor(6, body)))?;
        }
        let acks = std::mem::take(&mut self.awaiting_ack);
        if !acks.is_empty() {
            self.mempool.mark_acknowledged(&acks)?;
        }
        // Here a real node sends the payloads to its peers.
        let pending: Vec<TxHash> = self
            .mempool
            .peek_pending(64)?
            .iter()
            .map(|t| t.hash)
            .collect();
        if !pending.is_empty() {
            self.mempool.mark_inflight(&pending)?;
            self.awaiting_ack = pending;
        }
        Ok(())
    }

    /// The chain rolls back to `to`, which stays. What we applied after it is undone at once,
    /// with one `rollback_to` (an undo block by block could not undo an empty block).
    fn rollback(&mut self, to: ChainPoint) {
        let kept = match to {
            ChainPoint::Origin => Some(0),
            _ => self
                .chain
                .iter()
                .rposition(|b| b.point == to)
                .map(|i| i + 1),
        };
        let Some(keep) = kept else {
            println!("ignored a rollback to {to:?}, not on my chain");
            return;
        };
        self.chain.truncate(keep);
        if self.applied.is_some_and(|n| n > keep) {
            self.applied = match self.mempool.rollback_to(&to) {
                Ok(ConfirmOutcome::Applied | ConfirmOutcome::AlreadyApplied) => Some(keep),
                _ => None,
            };
        }
    }

    /// As the watcher, applies our blocks that Redis lacks; after a takeover or a failed call,
    /// reconciles first. A block that fails is offered again after the next reconcile, so none
    /// is skipped.
    fn sync(&mut self) {
        if !self.mempool.is_watcher() {
            self.applied = None;
            return;
        }
        if self.applied.is_none() {
            match reconcile(&self.mempool, &self.chain) {
                Ok(Some(n)) => {
                    println!("reconciled: the applied chain ends with my first {n} blocks");
                    self.applied = Some(n);
                }
                Ok(None) => return,
                Err(e) => {
                    println!("reconcile: {e}");
                    return;
                }
            }
        }
        let (f, d) = (
            self.settings.finalize_threshold,
            self.settings.drop_threshold,
        );
        while let Some(n) = self.applied.filter(|n| *n < self.chain.len()) {
            let block = &self.chain[n];
            self.applied = match self.mempool.confirm(&block.point, &block.txs, &[], f, d) {
                Ok(ConfirmOutcome::Applied | ConfirmOutcome::AlreadyApplied) => Some(n + 1),
                other => {
                    println!("confirm of slot {}: {other:?}", block.point.slot());
                    None
                }
            };
        }
    }
}

/// The reconcile step: the applied chain in Redis is what the previous watcher applied from its
/// own chain. Undo what is not on ours, back to the newest applied block that is, and return
/// how many of our blocks stay applied. `Ok(None)` when it must wait: the applied tip is above
/// our tip (we may be behind, and would undo good blocks), or nothing applied is on our chain,
/// which starts after the oldest applied block (only a node that knows its chain back to there
/// may roll back to Origin).
fn reconcile(mempool: &RedisMempool, chain: &[Block]) -> Result<Option<usize>, dolos_redis::Error> {
    let applied = mempool.applied_points(usize::MAX)?; // newest first
    let (Some(tip), Some(oldest)) = (applied.first(), applied.last()) else {
        return Ok(Some(0));
    };
    let position = |p: &ChainPoint| chain.iter().position(|b| b.point == *p);
    let our_tip = chain.last().map_or(0, |b| b.point.slot());
    let our_first = chain.first().map_or(0, |b| b.point.slot());
    let (to, keep) = match (position(tip), applied.iter().find_map(position)) {
        (Some(i), _) => return Ok(Some(i + 1)),
        _ if tip.slot() > our_tip => return Ok(None),
        (None, Some(i)) => (chain[i].point, i + 1),
        (None, None) if our_first > oldest.slot() => return Ok(None),
        (None, None) => (ChainPoint::Origin, 0),
    };
    Ok(match mempool.rollback_to(&to)? {
        ConfirmOutcome::Applied | ConfirmOutcome::AlreadyApplied => Some(keep),
        // NotWatcher, LostLock, or an outcome a later version adds: not in sync.
        _ => None,
    })
}
