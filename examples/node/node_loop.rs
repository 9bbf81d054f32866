//! The node that `examples/node.rs` runs on its own and `examples/demo.rs` runs as child
//! processes: what a Dolos node does with the shared mempool, minus the Cardano parts.
//!
//! * It opens the mempool from the `[storage.mempool]` table of its TOML file, exactly as Dolos
//!   would, plus a small `[demo]` table of its own (name, pace, thresholds).
//! * Every tick it submits one transaction (random hash, ~300-byte body), acknowledges what it
//!   propagated on the previous tick, and propagates the head of the pending queue
//!   (`peek_pending` → `mark_inflight`).
//! * For every block read on stdin it calls `confirm`. It keeps the blocks it knows and offers
//!   them in slot order from the last one it knows to be applied, so a node that becomes watcher
//!   applies the blocks its predecessor missed, and never one out of order (the server answers
//!   `AlreadyApplied` for the rest).
//! * A call Redis refuses for memory (`Error::OutOfMemory`: nothing was stored) is made again
//!   on the next tick: the same transaction, the same acknowledgements, and above all the same
//!   block before any later one, so no block is skipped.
//!
//! Input lines (stdin):
//!
//! ```text
//! block <slot> <block hash, 64 hex> [<tx hash, 64 hex> ...]   a block and the txs it contains
//! submit off | submit on                                      stop / resume submitting
//! ping <token>                                                one Redis round trip, reported
//! quit                                                        release the lock and exit
//! ```
//!
//! Blank lines and lines starting with `#` are ignored.

use std::collections::BTreeMap;
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
        slot: u64,
        hash: BlockHash,
        txs: Vec<TxHash>,
    },
    Submit(bool),
    /// Proves the node is not stuck: its input loop answers and it reaches Redis.
    Ping(String),
    Quit,
}

/// The `block` line for a block; the demo's chain writes these to every node.
#[allow(dead_code)] // `examples/node.rs` only reads them
pub fn block_line(slot: u64, hash: &BlockHash, txs: &[TxHash]) -> String {
    let mut line = format!("block {slot} {hash}");
    for tx in txs {
        line.push(' ');
        line.push_str(&tx.to_hex());
    }
    line
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
    match (first, words.next()) {
        ("block", Some(slot)) => {
            let slot = slot
                .parse()
                .map_err(|_| format!("bad slot {slot:?} in {line:?}"))?;
            let hash = words
                .next()
                .ok_or_else(|| format!("block line without a block hash: {line:?}"))?
                .parse()
                .map_err(|e| format!("{e} in {line:?}"))?;
            let txs = words
                .map(|w| w.parse().map_err(|e| format!("{e} in {line:?}")))
                .collect::<Result<_, _>>()?;
            Ok(Some(Input::Block { slot, hash, txs }))
        }
        ("submit", Some("on")) => Ok(Some(Input::Submit(true))),
        ("submit", Some("off")) => Ok(Some(Input::Submit(false))),
        ("ping", Some(token)) => Ok(Some(Input::Ping(token.to_string()))),
        ("quit", None) => Ok(Some(Input::Quit)),
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
    not_watcher: u64,
    lost: u64,
}

struct Node {
    mempool: RedisMempool,
    settings: Settings,
    out: Out,
    rng: Rng,
    /// Blocks not known to be applied yet, by slot.
    blocks: BTreeMap<u64, (ChainPoint, Vec<TxHash>)>,
    /// The highest slot known to be applied (from `watcher_info` or our own `confirm` calls).
    /// Only ever a lower bound of the server's value, which is what makes offering blocks from
    /// here on safe.
    known_applied: Option<u64>,
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

    fn check_role(&mut self) {
        let watcher = self.mempool.is_watcher();
        if watcher != self.watcher {
            self.watcher = watcher;
            self.out.say(if watcher {
                "now the watcher: my confirm calls apply blocks"
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

    /// Notes that a writing call went through: Redis takes writes again.
    fn wrote(&mut self) {
        if self.redis_full {
            self.redis_full = false;
            self.out.say("redis takes writes again");
        }
    }

    fn tick(&mut self) {
        // Blocks a refused confirm left behind, before anything else is written.
        if self.mempool.is_watcher() && !self.blocks.is_empty() {
            self.apply_blocks();
        }
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

    fn on_block(&mut self, slot: u64, hash: BlockHash, txs: Vec<TxHash>) {
        if self.known_applied.is_some_and(|a| slot <= a) {
            return;
        }
        self.blocks
            .insert(slot, (ChainPoint::Specific(slot, hash), txs));
        self.apply_blocks();
    }

    /// Offers every block above the last known applied slot to `confirm`, oldest first. Only the
    /// watcher's calls change anything; a follower's first call returns `NotWatcher` at once.
    fn apply_blocks(&mut self) {
        // The watcher skips what the server already has rather than learning it one
        // AlreadyApplied round trip at a time; a follower only does so now and then, to keep
        // its list of blocks short.
        if self.mempool.is_watcher() || self.blocks.len() > 100 {
            let result = self.mempool.watcher_info();
            let Some(info) = self.check("watcher_info", result) else {
                return;
            };
            if info.applied_slot > self.known_applied {
                self.known_applied = info.applied_slot;
            }
        }
        if let Some(applied) = self.known_applied {
            self.blocks = self.blocks.split_off(&(applied + 1));
        }
        let (f, d) = (
            self.settings.finalize_threshold,
            self.settings.drop_threshold,
        );
        let mut applied_now = Vec::new();
        let slots: Vec<u64> = self.blocks.keys().copied().collect();
        for slot in slots {
            let (point, txs) = &self.blocks[&slot];
            let outcome = match self.mempool.confirm(point, txs, &[], f, d) {
                // Answered locally, without Redis: it says nothing about the link.
                Ok(ConfirmOutcome::NotWatcher) => ConfirmOutcome::NotWatcher,
                // On any failure the block stays and is offered again, at the next tick or
                // block, before any later block.
                result => match self.check("confirm", result) {
                    Some(outcome) => outcome,
                    None => break,
                },
            };
            if outcome == ConfirmOutcome::Applied {
                self.wrote();
            }
            self.out.report(&format!("confirm {slot} {outcome:?}"));
            match outcome {
                ConfirmOutcome::Applied => {
                    self.counts.applied += 1;
                    applied_now.push(slot);
                }
                ConfirmOutcome::AlreadyApplied => self.counts.already += 1,
                ConfirmOutcome::NotWatcher => {
                    self.counts.not_watcher += 1;
                    break;
                }
                ConfirmOutcome::LostLock => {
                    self.counts.lost += 1;
                    self.out.say(&format!(
                        "redis refused my confirm of slot {slot}: the lock is no longer mine"
                    ));
                    break;
                }
            }
            self.known_applied = Some(slot);
            self.blocks.remove(&slot);
        }
        if applied_now.len() > 1 {
            self.out.say(&format!(
                "caught up: applied {} blocks (slots {}..={}) in order",
                applied_now.len(),
                applied_now[0],
                applied_now[applied_now.len() - 1]
            ));
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
            "{}: submitted {}, propagated {}, acknowledged {}; blocks applied {}, already applied {}, \
             not watcher {}, refused {}; watcher: {}",
            self.settings.name,
            c.submitted,
            c.propagated,
            c.acknowledged,
            c.applied,
            c.already,
            c.not_watcher,
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
        blocks: BTreeMap::new(),
        known_applied: None,
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
        match input.recv_timeout(wait) {
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
                Ok(Some(Input::Block { slot, hash, txs })) => node.on_block(slot, hash, txs),
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
    }
    node.out.say(&node.summary());
    node.mempool.shutdown()?;
    Ok(())
}
