//! The node that `examples/node.rs` runs on its own and `examples/demo.rs` and
//! `examples/chaos.rs` run as child processes: what a Dolos node does with the shared mempool,
//! minus the Cardano parts.
//!
//! * It opens the mempool from the `[storage.mempool]` table of its TOML file, exactly as Dolos
//!   would, plus a small `[demo]` table of its own (name, pace, thresholds).
//! * Every tick it submits one transaction (random hash, ~300-byte body), acknowledges what it
//!   propagated on the previous tick, and propagates the head of the pending queue
//!   (`peek_pending` → `mark_inflight`).
//! * It keeps **its own chain**: the blocks read on stdin, less those rolled back. As the
//!   watcher it applies each new block with `confirm(point, txs, [])` and each rollback with
//!   `rollback_to(point)`; a follower only keeps its chain.
//! * **The reconcile step.** When it becomes the watcher, and after any call that failed or was
//!   refused (it then cannot know what Redis holds), it first makes the applied chain in Redis
//!   agree with its own chain ([`Node::reconcile`]) and then applies its blocks after the common
//!   point. Until that has worked it applies nothing: an error never skips a block, the next
//!   tick starts over from the reconcile.
//! * A call Redis refuses for memory (`Error::OutOfMemory`: nothing was stored) is made again
//!   on the next tick: the same transaction, the same acknowledgements; a refused block is
//!   offered again after the reconcile, before any later one.
//!
//! Input lines (stdin):
//!
//! ```text
//! block <slot> <block hash, 64 hex> [<tx hash, 64 hex> ...]   a block and the txs it contains
//! rollback <slot> <block hash> | rollback origin              the chain rolls back to that
//!                                                             block, which stays
//! submit off | submit on                                      stop / resume submitting
//! ping <token>                                                one Redis round trip, reported
//! quit                                                        release the lock and exit
//! ```
//!
//! Blank lines and lines starting with `#` are ignored.

use std::collections::HashMap;
use std::error::Error;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use dolos_redis::{
    BlockHash, ChainPoint, Config, ConfirmOutcome, EraCbor, MempoolTx, RedisMempool, TxHash,
};

/// The `[demo]` table: what a real node would take from the chain and its peers.
#[derive(Clone, Debug)]
pub struct Settings {
    pub name: String,
    /// One new transaction per interval.
    pub tx_interval: Duration,
    /// `confirm`'s finalize threshold: confirmations until Finalized.
    pub finalize_threshold: u32,
    /// `confirm`'s drop threshold: blocks an unconfirmed inflight tx may miss.
    pub drop_threshold: u32,
}

/// Reads a node's TOML file: the `[storage.mempool]` table becomes the `Config` through the
/// crate's own deserializer (feature `serde`), and `[demo]` the node's settings.
pub fn load(path: &Path) -> Result<(Config, Settings), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
    let table = doc
        .get("storage")
        .and_then(|s| s.get("mempool"))
        .ok_or_else(|| format!("{} has no [storage.mempool] table", path.display()))?;
    let config: Config = table
        .clone()
        .try_into()
        .map_err(|e| format!("{}: [storage.mempool]: {e}", path.display()))?;

    let demo = doc.get("demo").and_then(|d| d.as_table());
    let int = |key: &str, default: i64| -> Result<i64, String> {
        match demo.and_then(|d| d.get(key)) {
            None => Ok(default),
            Some(v) => v
                .as_integer()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("[demo] {key} must be a positive integer")),
        }
    };
    let default_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "node".into());
    let name = match demo.and_then(|d| d.get("name")) {
        None => default_name,
        Some(v) => v
            .as_str()
            .ok_or("[demo] name must be a string")?
            .to_string(),
    };
    let settings = Settings {
        name,
        tx_interval: Duration::from_millis(int("tx_interval_ms", 500)? as u64),
        finalize_threshold: int("finalize_threshold", 4)? as u32,
        drop_threshold: int("drop_threshold", 8)? as u32,
    };
    Ok((config, settings))
}

/// One parsed input line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Block {
        point: ChainPoint,
        txs: Vec<TxHash>,
    },
    /// The chain rolls back to this point, which stays (`Origin`: every block goes).
    Rollback(ChainPoint),
    Submit(bool),
    /// Proves the node is not stuck: its input loop answers and it reaches Redis.
    Ping(String),
    Quit,
}

/// The `block` line for a block; the demo's chain writes these to every node.
#[allow(dead_code)] // `examples/node.rs` only reads them
pub fn block_line(point: &ChainPoint, txs: &[TxHash]) -> String {
    let mut line = format!("block {}", point_words(point));
    for tx in txs {
        line.push(' ');
        line.push_str(&tx.to_hex());
    }
    line
}

/// The `rollback` line for a rollback to `to`.
#[allow(dead_code)] // `examples/node.rs` only reads them
pub fn rollback_line(to: &ChainPoint) -> String {
    format!("rollback {}", point_words(to))
}

fn point_words(point: &ChainPoint) -> String {
    match point {
        ChainPoint::Origin => "origin".into(),
        ChainPoint::Slot(slot) => slot.to_string(),
        ChainPoint::Specific(slot, hash) => format!("{slot} {hash}"),
    }
}

/// `Ok(None)` for blank and comment lines.
pub fn parse_line(line: &str) -> Result<Option<Input>, String> {
    let mut words = line.split_whitespace();
    let Some(first) = words.next() else {
        return Ok(None);
    };
    if first.starts_with('#') {
        return Ok(None);
    }
    // `<slot> <hash>`, or `origin` where `allow_origin`.
    let mut point = |allow_origin: bool| -> Result<ChainPoint, String> {
        match words.next() {
            Some("origin") if allow_origin => Ok(ChainPoint::Origin),
            Some(slot) => {
                let slot = slot
                    .parse()
                    .map_err(|_| format!("bad slot {slot:?} in {line:?}"))?;
                let hash: BlockHash = words
                    .next()
                    .ok_or_else(|| format!("no block hash in {line:?}"))?
                    .parse()
                    .map_err(|e| format!("{e} in {line:?}"))?;
                Ok(ChainPoint::Specific(slot, hash))
            }
            None => Err(format!("no point in {line:?}")),
        }
    };
    match first {
        "block" => {
            let point = point(false)?;
            let txs = words
                .map(|w| w.parse().map_err(|e| format!("{e} in {line:?}")))
                .collect::<Result<_, _>>()?;
            return Ok(Some(Input::Block { point, txs }));
        }
        "rollback" => {
            let to = point(true)?;
            if words.next().is_some() {
                return Err(format!("unexpected words after the point in {line:?}"));
            }
            return Ok(Some(Input::Rollback(to)));
        }
        _ => {}
    }
    match (first, words.next(), words.next()) {
        ("submit", Some("on"), None) => Ok(Some(Input::Submit(true))),
        ("submit", Some("off"), None) => Ok(Some(Input::Submit(false))),
        ("ping", Some(token), None) => Ok(Some(Input::Ping(token.to_string()))),
        ("quit", None, None) => Ok(Some(Input::Quit)),
        _ => Err(format!("unknown input line {line:?}")),
    }
}

/// A small deterministic generator (SplitMix64): enough for hashes and bodies that only need to
/// differ, without a dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator that repeats the same sequence for the same `seed`.
    #[allow(dead_code)] // only the chaos run needs a reproducible sequence
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Seeded from the clock, the process id and `salt`, so two nodes started together differ.
    pub fn seeded(salt: &str) -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut seed = nanos ^ (u64::from(std::process::id()) << 32);
        for b in salt.bytes() {
            seed = seed.rotate_left(7) ^ u64::from(b);
        }
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0; 32];
        self.fill(&mut out);
        out
    }
}

/// env_logger with the reference's line shape (`INFO dolos_redis::mempool: acquired watcher
/// lock`). Under the demo, the demo stamps each line itself, so no timestamp here.
pub fn init_logging(managed: bool) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if managed {
        builder.format(|buf, r| writeln!(buf, "{} {}: {}", r.level(), r.target(), r.args()));
    } else {
        builder.format(|buf, r| {
            let ts = buf.timestamp_millis();
            writeln!(buf, "{ts} {} {}: {}", r.level(), r.target(), r.args())
        });
    }
    builder.init();
}

/// Human lines go to stdout as they are; under the demo (`managed`), facts the demo checks also
/// go to stdout as `@`-lines, which the demo consumes instead of printing.
struct Out {
    managed: bool,
}

impl Out {
    fn say(&self, msg: &str) {
        println!("{msg}");
    }

    fn report(&self, fact: &str) {
        if self.managed {
            println!("@{fact}");
        }
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
    /// The chain length last reported to the demo.
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

    /// Tells the demo how long our chain is, when that changed.
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

/// Runs a node until `quit` (or, when `managed`, the end of stdin). Standalone, a terminal on
/// stdin is not read and the end of input only ends the blocks: the node keeps submitting and
/// propagating until it is interrupted.
#[allow(dead_code)] // the chaos run loads its config itself and calls `run_with`
pub fn run(path: &Path, managed: bool) -> Result<(), Box<dyn Error>> {
    let (config, settings) = load(path)?;
    run_with(config, settings, managed, |_| {})
}

/// [`run`] with the settings already loaded; `on_open` sees the mempool once it is open (the
/// chaos run starts its watcher-flag probe there).
pub fn run_with(
    config: Config,
    settings: Settings,
    managed: bool,
    on_open: impl FnOnce(&RedisMempool),
) -> Result<(), Box<dyn Error>> {
    let out = Out { managed };
    let mempool = open(&config, &out)?;
    on_open(&mempool);
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
    let mut input = if managed || !std::io::stdin().is_terminal() {
        spawn_input()
    } else {
        crossbeam_channel::never()
    };
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
    let mut next_summary = Instant::now() + Duration::from_secs(10);
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
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                if managed {
                    break;
                }
                input = crossbeam_channel::never();
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if now >= next_tick {
            node.tick();
            next_tick = (next_tick + interval).max(now);
        }
        if !managed && now >= next_summary {
            node.out.say(&node.summary());
            next_summary = now + Duration::from_secs(10);
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
