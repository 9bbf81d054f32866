//! The node process of the demo and the chaos run (`demo node <file>`, `chaos node <file>`):
//! what a Dolos node does with the shared mempool, minus the Cardano parts. `examples/node.rs`
//! is a compact version of it to copy from; this one also reports to the harness and retries
//! what a full Redis refused.
//!
//! * It opens the mempool from the `[storage.mempool]` table of its TOML file, exactly as Dolos
//!   would, plus a small `[demo]` table of its own ([`crate::node_config`]).
//! * Every tick it submits one transaction (random hash, ~300-byte body), acknowledges what it
//!   propagated on the previous tick, and propagates the head of the pending queue
//!   (`peek_pending` → `mark_inflight`).
//! * It keeps **its own chain**: the blocks read on stdin ([`crate::protocol`]), less those
//!   rolled back. As the watcher it applies each new block with `confirm(point, txs, [])` and
//!   each rollback with `rollback_to(point)`; a follower only keeps its chain.
//! * **The reconcile step.** When it becomes the watcher, and after any call that failed or was
//!   refused (it then cannot know what Redis holds), it first makes the applied chain in Redis
//!   agree with its own chain (`Node::reconcile`) and then applies its blocks after the common
//!   point. Until that has worked it applies nothing: an error never skips a block, the next
//!   tick starts over from the reconcile.
//! * A call Redis refuses for memory (`Error::OutOfMemory`: nothing was stored) is made again
//!   on the next tick: the same transaction, the same acknowledgements; a refused block is
//!   offered again after the reconcile, before any later one.
//! * It writes what the harness checks as `@`-lines on stdout (its id, role, link state,
//!   confirm outcomes, reconciles, ...; [`crate::cluster`] reads them), its own log and human
//!   lines as they are, and ends at `quit` or at the end of its input.
//! * With a `[chaos]` table, a probe thread samples `is_watcher()` every millisecond and reports
//!   each change with `CLOCK_MONOTONIC` stamps ([`crate::clock`]).

use std::collections::HashMap;
use std::error::Error;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use dolos_redis::{ChainPoint, Config, ConfirmOutcome, EraCbor, MempoolTx, RedisMempool, TxHash};
use dolos_redis_testkit::Rng;

use crate::clock::mono_ns;
use crate::node_config::{self, Settings};
use crate::protocol::{parse_line, Input};

/// env_logger with the reference's line shape (`INFO dolos_redis::mempool: acquired watcher
/// lock`), without a timestamp: the harness stamps each line it prints.
fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, r| writeln!(buf, "{} {}: {}", r.level(), r.target(), r.args()))
        .init();
}

/// Human lines go to stdout as they are; facts the harness checks go to stdout as `@`-lines,
/// which the harness consumes instead of printing.
struct Out;

impl Out {
    fn say(&self, msg: &str) {
        println!("{msg}");
    }

    fn report(&self, fact: &str) {
        println!("@{fact}");
    }
}

#[derive(Default)]
struct Counts {
    submitted: u64,
    propagated: u64,
    acknowledged: u64,
    applied: u64,
    already: u64,
    rollbacks: u64,
    reconciles: u64,
    lost: u64,
}

/// A block of this node's chain.
struct Block {
    point: ChainPoint,
    txs: Vec<TxHash>,
}

/// What a reconcile did: where the applied chain now ends on our chain, and how many applied
/// blocks it undid to get there.
struct Reconciled {
    /// How many of our blocks, from the first, the applied chain now ends with.
    keep: usize,
    undone: usize,
}

struct Node {
    mempool: RedisMempool,
    settings: Settings,
    out: Out,
    rng: Rng,
    /// This node's chain, oldest first: every block read and not rolled back. A real node keeps
    /// it on disk; the demo and the chaos run feed a restarted node the whole chain so far.
    chain: Vec<Block>,
    /// `Some(n)`: the applied chain in Redis ends with our first `n` blocks, as our own calls
    /// left it. `None`: not known (not the watcher, a takeover, a failed or refused call), so
    /// the next `sync` reconciles first.
    synced: Option<usize>,
    /// Why the last reconcile chose to wait, so it is said once, not on every tick.
    waiting: Option<String>,
    /// The chain length last reported to the harness.
    reported_len: Option<usize>,
    submitting: bool,
    /// Propagated on the previous tick; acknowledged on this one, as peers would a moment later.
    awaiting_ack: Vec<TxHash>,
    link_up: bool,
    watcher: bool,
    counts: Counts,
    /// A transaction Redis refused for memory, submitted again on the next tick.
    retry_tx: Option<MempoolTx>,
    /// Whether the last writing call was refused for memory: said once per episode.
    redis_full: bool,
}

impl Node {
    /// Notes whether Redis answered; reports a change of link state once.
    fn check<T>(&mut self, what: &str, result: Result<T, dolos_redis::Error>) -> Option<T> {
        match result {
            Ok(v) => {
                if !self.link_up {
                    self.link_up = true;
                    self.out.say("redis answers again");
                    self.out.report("link up");
                }
                Some(v)
            }
            Err(e) if e.is_transient() => {
                if self.link_up {
                    self.link_up = false;
                    self.out.say(&format!("cannot reach redis ({what}: {e})"));
                    self.out.report("link down");
                }
                None
            }
            // Nothing was stored; the caller keeps what it tried and tries again next tick.
            Err(e @ dolos_redis::Error::OutOfMemory(_)) => {
                if !self.redis_full {
                    self.redis_full = true;
                    self.out
                        .say(&format!("redis is full, will try again ({what}: {e})"));
                }
                self.out.report(&format!("oom {what}"));
                None
            }
            Err(e) => {
                self.out.say(&format!("{what} failed: {e}"));
                None
            }
        }
    }

    /// Notes that a writing call went through: Redis takes writes again.
    fn wrote(&mut self) {
        if self.redis_full {
            self.redis_full = false;
            self.out.say("redis takes writes again");
        }
    }

    /// [`Node::check`] for `confirm` and `rollback_to`, whose `NotWatcher` is answered locally
    /// and says nothing about the link.
    fn outcome(
        &mut self,
        what: &str,
        result: Result<ConfirmOutcome, dolos_redis::Error>,
    ) -> Option<ConfirmOutcome> {
        let outcome = match result {
            Ok(ConfirmOutcome::NotWatcher) => return Some(ConfirmOutcome::NotWatcher),
            result => self.check(what, result)?,
        };
        if outcome == ConfirmOutcome::LostLock {
            self.counts.lost += 1;
            self.out.say(&format!(
                "redis refused my {what}: the lock is no longer mine"
            ));
        }
        Some(outcome)
    }

    fn check_role(&mut self) {
        let watcher = self.mempool.is_watcher();
        if watcher != self.watcher {
            self.watcher = watcher;
            // Whoever held the lock meanwhile may have applied or undone blocks.
            self.synced = None;
            self.out.say(if watcher {
                "now the watcher: reconciling, then applying my blocks"
            } else {
                "no longer the watcher"
            });
            self.out.report(if watcher {
                "role watcher"
            } else {
                "role follower"
            });
        }
    }

    fn tick(&mut self) {
        if self.submitting || self.retry_tx.is_some() {
            let tx = self.retry_tx.take().unwrap_or_else(|| {
                let hash = TxHash::from(self.rng.bytes32());
                let mut body = vec![0u8; 250 + (self.rng.next_u64() % 100) as usize];
                self.rng.fill(&mut body);
                // A CBOR array header, so the body at least starts like a transaction.
                body[0] = 0x84;
                MempoolTx::new(hash, EraCbor(6, body))
            });
            let hash = tx.hash;
            let result = self.mempool.receive(tx.clone());
            let full = matches!(result, Err(dolos_redis::Error::OutOfMemory(_)));
            if self.check("receive", result).is_some() {
                self.wrote();
                self.counts.submitted += 1;
                self.out.report(&format!("submitted {hash}"));
            } else if full {
                self.retry_tx = Some(tx);
            } else if !self.link_up {
                // Redis is out of reach: one call per tick is enough to notice its return.
                return;
            }
        }
        let acks = std::mem::take(&mut self.awaiting_ack);
        if !acks.is_empty() {
            let result = self.mempool.mark_acknowledged(&acks);
            let full = matches!(result, Err(dolos_redis::Error::OutOfMemory(_)));
            if self.check("mark_acknowledged", result).is_some() {
                self.wrote();
                self.counts.acknowledged += acks.len() as u64;
            } else if full {
                self.awaiting_ack = acks;
            }
        }
        let result = self.mempool.peek_pending(64);
        if let Some(txs) = self.check("peek_pending", result) {
            // Here a real node sends `tx.payload` to its peers.
            let hashes: Vec<TxHash> = txs.iter().map(|t| t.hash).collect();
            // Refused for memory, they stay pending and are peeked again next tick.
            if !hashes.is_empty() {
                let result = self.mempool.mark_inflight(&hashes);
                if self.check("mark_inflight", result).is_some() {
                    self.wrote();
                    self.counts.propagated += hashes.len() as u64;
                    self.awaiting_ack.extend(hashes);
                }
            }
        }
    }

    fn on_block(&mut self, point: ChainPoint, txs: Vec<TxHash>) {
        self.chain.push(Block { point, txs });
    }

    /// The chain rolls back to `to`, which stays. If Redis holds blocks after it that our calls
    /// applied, the watcher undoes them at once with one `rollback_to(to)`. Not block by block
    /// with `confirm(point, [], unseen)`: an undone block without txs has an empty `unseen`, and
    /// `confirm(point, [], [])` cannot be told from a replay of that block, so it undoes nothing.
    fn on_rollback(&mut self, to: ChainPoint) {
        let keep = match to {
            ChainPoint::Origin => 0,
            _ => match self.chain.iter().rposition(|b| b.point == to) {
                Some(i) => i + 1,
                None => {
                    self.out.say(&format!(
                        "ignored a rollback to {to:?}, which is not on my chain"
                    ));
                    return;
                }
            },
        };
        self.chain.truncate(keep);
        self.counts.rollbacks += 1;
        if self.synced.is_none_or(|n| n <= keep) {
            // Nothing of ours is applied after `to` (or we do not know: a reconcile comes first).
            return;
        }
        let result = self.mempool.rollback_to(&to);
        self.synced = match self.outcome("rollback_to", result) {
            Some(ConfirmOutcome::Applied | ConfirmOutcome::AlreadyApplied) => Some(keep),
            _ => None,
        };
    }

    /// Brings the applied chain in Redis up to this node's chain, if this node is the watcher:
    /// from where the two agree, or after a reconcile when that is not known. Stops at the first
    /// call that does not succeed and forgets where it was, so the next tick starts over from
    /// a reconcile and no block is ever skipped.
    fn sync(&mut self) {
        if !self.mempool.is_watcher() {
            self.synced = None;
            return;
        }
        let (from, reconciled) = match self.synced {
            Some(n) => (n, None),
            None => match self.reconcile() {
                Some(r) => {
                    self.synced = Some(r.keep);
                    (r.keep, Some(r))
                }
                None => return,
            },
        };
        let (f, d) = (
            self.settings.finalize_threshold,
            self.settings.drop_threshold,
        );
        let mut offered = 0;
        for i in from..self.chain.len() {
            let (point, slot) = (self.chain[i].point, self.chain[i].point.slot());
            let result = self.mempool.confirm(&point, &self.chain[i].txs, &[], f, d);
            let outcome = self.outcome(&format!("confirm of slot {slot}"), result);
            if let Some(outcome) = outcome {
                self.out.report(&format!("confirm {slot} {outcome:?}"));
            }
            match outcome {
                Some(ConfirmOutcome::Applied) => {
                    self.wrote();
                    self.counts.applied += 1;
                }
                Some(ConfirmOutcome::AlreadyApplied) => self.counts.already += 1,
                // Not the watcher any more, refused, or failed: start over from a reconcile.
                _ => {
                    self.synced = None;
                    break;
                }
            }
            offered += 1;
            self.synced = Some(i + 1);
        }
        if let Some(r) = reconciled {
            let at = match r.keep {
                0 => "origin".to_string(),
                n => format!("slot {}", self.chain[n - 1].point.slot()),
            };
            let what = match r.undone {
                0 if r.keep == 0 => "nothing applied yet".to_string(),
                0 => format!("the applied chain ends on my chain at {at}, nothing to undo"),
                n => format!("rolled back to {at} ({n} applied blocks undone)"),
            };
            self.out.say(&format!(
                "reconciled: {what}, replayed {offered} block{}{}",
                if offered == 1 { "" } else { "s" },
                if self.synced.is_none() {
                    " (stopped by a failed call: will reconcile again)"
                } else {
                    ""
                }
            ));
            self.out
                .report(&format!("reconciled {} {offered}", r.undone));
        }
    }

    /// The reconcile step (README, "Forks and takeovers"). The applied chain in Redis is what
    /// the previous watcher applied from *its* chain, which may end with blocks our chain has
    /// rolled back, or lack blocks we have. Find the newest applied block that is on our chain,
    /// undo every applied block after it with `rollback_to`, and return where to replay from.
    ///
    /// It waits instead (returns `None`; the next tick tries again) when it cannot tell an
    /// abandoned block from one it has not read yet:
    /// * the applied tip's slot is above our tip's: we may be behind (a node that restarted
    ///   and is still reading its chain), and undoing blocks we have not seen would undo good
    ///   ones;
    /// * no applied block is on our chain but our chain starts after the oldest applied block:
    ///   only a node that knows its chain back to there may conclude that all of them are
    ///   abandoned and roll back to Origin.
    fn reconcile(&mut self) -> Option<Reconciled> {
        let result = self.mempool.applied_points(usize::MAX);
        let applied = self.check("applied_points", result)?; // newest first
        let ours: HashMap<ChainPoint, usize> = self
            .chain
            .iter()
            .enumerate()
            .map(|(i, b)| (b.point, i))
            .collect();
        let our_tip = self.chain.last().map_or(0, |b| b.point.slot());
        let our_first = self.chain.first().map_or(0, |b| b.point.slot());
        let common = applied.iter().position(|p| ours.contains_key(p));
        let (undone, keep) = match (common, applied.first(), applied.last()) {
            (None, None, _) => (0, 0), // nothing applied yet
            (Some(0), Some(tip), _) => (0, ours[tip] + 1),
            (_, Some(tip), _) if tip.slot() > our_tip => {
                self.wait(format!(
                    "the applied tip (slot {}) is ahead of my chain (slot {our_tip}): waiting \
                     for my chain to get there",
                    tip.slot()
                ));
                return None;
            }
            (Some(k), _, _) => (k, ours[&applied[k]] + 1),
            (None, _, Some(oldest)) if our_first > oldest.slot() => {
                self.wait(format!(
                    "no applied block is on my chain, which starts after the oldest applied one \
                     (slot {}): waiting",
                    oldest.slot()
                ));
                return None;
            }
            (None, _, _) => (applied.len(), 0),
        };
        self.waiting = None;
        if undone > 0 {
            let to = match keep {
                0 => ChainPoint::Origin,
                n => self.chain[n - 1].point,
            };
            let result = self.mempool.rollback_to(&to);
            match self.outcome("rollback_to", result)? {
                ConfirmOutcome::Applied | ConfirmOutcome::AlreadyApplied => {}
                _ => return None, // NotWatcher, LostLock (the enum is non_exhaustive)
            }
        }
        self.counts.reconciles += 1;
        Some(Reconciled { keep, undone })
    }

    fn wait(&mut self, why: String) {
        if self.waiting.as_ref() != Some(&why) {
            self.out.say(&format!("not reconciling yet: {why}"));
            self.waiting = Some(why);
        }
    }

    /// Tells the harness how long our chain is, when that changed.
    fn report_chain(&mut self) {
        if self.reported_len != Some(self.chain.len()) {
            self.reported_len = Some(self.chain.len());
            self.out.report(&format!("chain {}", self.chain.len()));
        }
    }

    /// Answers `ping <token>` with `@pong <token> ok|err` after one Redis round trip.
    fn ping(&mut self, token: &str) {
        let result = self.mempool.watcher_info();
        let ok = self.check("ping", result).is_some();
        self.out
            .report(&format!("pong {token} {}", if ok { "ok" } else { "err" }));
    }

    fn summary(&self) -> String {
        let c = &self.counts;
        format!(
            "{}: submitted {}, propagated {}, acknowledged {}; chain {} blocks, {} rollbacks; \
             blocks applied {}, already applied {}, reconciles {}, refused {}; watcher: {}",
            self.settings.name,
            c.submitted,
            c.propagated,
            c.acknowledged,
            self.chain.len(),
            c.rollbacks,
            c.applied,
            c.already,
            c.reconciles,
            c.lost,
            if self.watcher { "yes" } else { "no" }
        )
    }
}

/// Reads stdin lines on a thread; `None` marks the end of input.
fn spawn_input() -> Receiver<Option<String>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(line) => {
                    if tx.send(Some(line)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    rx
}

/// Opens the mempool, retrying for a while if Redis is not reachable yet (a node may start
/// before Redis does, or on a machine too busy to connect within the timeout).
fn open(config: &Config, out: &Out) -> Result<RedisMempool, dolos_redis::Error> {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        match RedisMempool::open(config.clone()) {
            Err(e) if e.is_transient() && Instant::now() < give_up => {
                out.say(&format!("cannot open the mempool yet ({e}); retrying"));
                std::thread::sleep(Duration::from_millis(500));
            }
            result => return result,
        }
    }
}

/// `demo node <file>` / `chaos node <file>`: runs the node of that file until `quit` or the end
/// of its input.
pub fn main(args: &[String]) -> ExitCode {
    let [path] = args else {
        eprintln!("usage: node <config.toml>");
        return ExitCode::from(2);
    };
    init_logging();
    match run(Path::new(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> Result<(), Box<dyn Error>> {
    let (config, settings) = node_config::load(path)?;
    let out = Out;
    let mempool = open(&config, &out)?;
    if settings.flag_probe {
        start_probe(mempool.clone());
    }
    out.report(&format!("id {}", mempool.node_id()));
    out.say(&format!(
        "{} opened mempool {:?} at {} as node {} (lock TTL {:?}; F = {}, D = {})",
        settings.name,
        config.get_key_prefix(),
        config.redacted_url(),
        mempool.node_id(),
        config.get_watcher_lock_ttl(),
        settings.finalize_threshold,
        settings.drop_threshold,
    ));
    let input = spawn_input();
    let mut node = Node {
        rng: Rng::seeded(&settings.name),
        out,
        settings,
        mempool,
        chain: Vec::new(),
        synced: None,
        waiting: None,
        reported_len: None,
        submitting: true,
        awaiting_ack: Vec::new(),
        link_up: true,
        watcher: false,
        counts: Counts::default(),
        retry_tx: None,
        redis_full: false,
    };
    if !node.mempool.is_watcher() {
        node.out
            .say("following: another node holds the watcher lock");
        node.out.report("role follower");
    }
    node.check_role();

    let interval = node.settings.tx_interval;
    let mut next_tick = Instant::now();
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let received = input.recv_timeout(wait);
        node.check_role();
        match received {
            Ok(Some(line)) => match parse_line(&line) {
                Ok(Some(Input::Quit)) => break,
                Ok(Some(Input::Submit(on))) => {
                    node.submitting = on;
                    node.out.say(if on {
                        "submitting transactions"
                    } else {
                        "stopped submitting transactions"
                    });
                }
                Ok(Some(Input::Block { point, txs })) => node.on_block(point, txs),
                Ok(Some(Input::Rollback(to))) => node.on_rollback(to),
                Ok(Some(Input::Ping(token))) => node.ping(&token),
                Ok(None) => {}
                Err(e) => node.out.say(&e),
            },
            Ok(None) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if now >= next_tick {
            node.tick();
            next_tick = (next_tick + interval).max(now);
        }
        node.check_role();
        // Once the lines that came together are all read: a restarted node reads its whole
        // chain before it reconciles, and a burst of blocks costs one pass.
        if input.is_empty() {
            node.sync();
            node.report_chain();
        }
    }
    node.out.say(&node.summary());
    node.mempool.shutdown()?;
    Ok(())
}

/// Samples the flag every millisecond and reports each change as `@flag up|down <after> <seen>`:
/// the change happened after the previous sample was taken (`after`; 0 for the first sample,
/// which the harness reads as "since the process started") and was seen at `seen`. The harness
/// takes `after` as the start of a holding and `seen` as its end, so the holdings it checks
/// contain the real ones.
fn start_probe(mempool: RedisMempool) {
    let spawned = std::thread::Builder::new()
        .name("flag-probe".into())
        .spawn(move || {
            let mut up = false;
            let mut previous = 0;
            loop {
                let before = mono_ns();
                let now_up = mempool.is_watcher();
                let seen = mono_ns();
                if now_up != up {
                    up = now_up;
                    println!("@flag {} {previous} {seen}", if up { "up" } else { "down" });
                }
                previous = before;
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    if let Err(e) = spawned {
        // Without its probe the node's holdings are unknown: the harness fails the run.
        eprintln!("cannot start the flag probe: {e}");
    }
}
