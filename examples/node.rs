//! A node runner for operators: one node of a shared mempool, configured by a TOML file that
//! carries the reference `[storage.mempool]` table (see `examples/config/dolos1.toml` and
//! `dolos2.toml`). It competes for the watcher lock, says when it becomes the watcher or stops
//! being it, and on SIGTERM or Ctrl-C shuts down cleanly: a watcher releases its lock and wakes
//! the other nodes, so one of them takes over within milliseconds (`systemctl stop`, `docker
//! stop` and Ctrl-C all hand the lock over; only a crash or `kill -9` leaves it to expire).
//!
//! ```text
//! redis-server --port 6379 &                                     # or any Redis at that URL
//! cargo run --example node -- examples/config/dolos1.toml
//! cargo run --example node -- examples/config/dolos2.toml        # second terminal
//! cargo run --example node -- --help
//! ```
//!
//! By default it writes nothing but its lease: pointed at a real Redis, it never touches the
//! transactions there. Two options make it act like a whole node, each only when asked:
//!
//! * `--fake-txs`: every `tx_interval_ms` it submits a made-up transaction, acknowledges what it
//!   propagated on the previous tick and marks the head of the pending queue inflight, as a node
//!   does with its peers (but sends nothing to anyone). Meant for a test Redis or a key prefix
//!   of its own: the fake transactions land in the shared mempool.
//! * `--blocks-from-stdin`: its chain comes from stdin, one line each (without the option stdin
//!   is not read, so the runner can go in the background):
//!
//!   ```text
//!   block <slot> <block hash, 64 hex> [<tx hash, 64 hex> ...]
//!   rollback <slot> <block hash, 64 hex> | rollback origin
//!   quit
//!   ```
//!
//!   As the watcher it applies that chain, block by block with `confirm` and each rollback with
//!   one `rollback_to`; whenever it begins a watcher term (a new [`RedisMempool::watcher_epoch`])
//!   it first reconciles what Redis applied with its own chain ([`reconcile`]; README, "Forks
//!   and takeovers"). For example `(sleep 1; echo "block 1 $(printf '01%.0s' {1..32})"; sleep
//!   600) | cargo run --example node -- examples/config/dolos1.toml --blocks-from-stdin` feeds
//!   one empty block.
//!
//! Add `RUST_LOG=dolos_redis=debug` to see renewals and `not watcher, skipping confirm`.
//! `cargo demo` runs the fuller node of `harness/src/node.rs` (which also retries calls a full
//! Redis refused, and reports to the harness) under a simulated chain.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use dolos_redis::{ChainPoint, Config, ConfirmOutcome, EraCbor, MempoolTx, RedisMempool, TxHash};

const USAGE: &str = "\
usage: node <config.toml> [--fake-txs] [--blocks-from-stdin]
       node --help

Runs one node of a shared mempool, configured by the [storage.mempool] table of
<config.toml> (and its optional [node] table: name, tx_interval_ms,
finalize_threshold, drop_threshold). SIGTERM or Ctrl-C shuts it down cleanly,
handing the watcher lock over at once; a second one exits at once.

  --fake-txs           submit, propagate and acknowledge made-up transactions
                       (they land in the shared mempool: use a test Redis)
  --blocks-from-stdin  read the node's chain from stdin, one line each:
                         block <slot> <block hash> [<tx hash> ...]
                         rollback <slot> <block hash> | rollback origin
                         quit
  -h, --help           this text";

/// The node's TOML file: Dolos's `[storage.mempool]` table, and a `[node]` table of its own.
#[derive(serde::Deserialize)]
struct File {
    storage: Storage,
    #[serde(default)]
    node: Settings,
}

#[derive(serde::Deserialize)]
struct Storage {
    mempool: Config,
}

/// What a real node would take from the chain and its peers.
#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    name: String,
    /// With `--fake-txs`: one transaction per interval.
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

struct Args {
    path: String,
    fake_txs: bool,
    blocks_from_stdin: bool,
}

/// `Ok(None)` for `--help`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let (mut path, mut fake_txs, mut blocks_from_stdin) = (None, false, false);
    for arg in args {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--fake-txs" => fake_txs = true,
            "--blocks-from-stdin" => blocks_from_stdin = true,
            other if other.starts_with('-') => return Err(format!("unknown option {other:?}")),
            other if path.is_none() => path = Some(other.to_string()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let path = path.ok_or("no config file given")?;
    Ok(Some(Args {
        path,
        fake_txs,
        blocks_from_stdin,
    }))
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
    /// left it; `None`: not known (not the watcher, a new term, a failed call): reconcile first.
    applied: Option<usize>,
    /// The watcher term `applied` belongs to: a new epoch means another node may have held the
    /// lock meanwhile, even if our flag was up at each of our polls.
    term: Option<u64>,
    /// Not before this does `sync` reconcile again after a reconcile that must wait or failed
    /// (a new block, or a new term, brings it forward).
    retry_at: Instant,
    /// Propagated on the previous tick; acknowledged on this one, as peers would.
    awaiting_ack: Vec<TxHash>,
}

/// How long a reconcile that must wait, or failed, waits before it tries again.
const RETRY: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "node: {e}\n{}\n(--help for more)",
                USAGE.lines().next().unwrap_or("")
            );
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, r| {
            let ts = buf.timestamp_millis();
            writeln!(buf, "{ts} {} {}: {}", r.level(), r.target(), r.args())
        })
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM, SIGINT (Ctrl-C) and SIGQUIT raise the returned flag; a second one while it is up
/// ends the process at once with status 1 (a shutdown that hangs can still be interrupted).
fn termination_flag() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in signal_hook::consts::TERM_SIGNALS {
        // In this order: the first signal only arms the exit, the second one exits.
        signal_hook::flag::register_conditional_shutdown(*signal, 1, flag.clone())?;
        signal_hook::flag::register(*signal, flag.clone())?;
    }
    Ok(flag)
}

/// How long the loop waits at most, so a signal is acted on within this.
const POLL: Duration = Duration::from_millis(50);

fn run(args: Args) -> Result<(), String> {
    let stop = termination_flag().map_err(|e| format!("cannot handle signals: {e}"))?;
    let text = std::fs::read_to_string(&args.path)
        .map_err(|e| format!("cannot read {}: {e}", args.path))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", args.path))?;
    let prefix = file.storage.mempool.get_key_prefix().to_string();
    let mempool = RedisMempool::open(file.storage.mempool)
        .map_err(|e| format!("cannot open the mempool: {e}"))?;
    let mut node = Node {
        mempool,
        settings: file.node,
        chain: Vec::new(),
        applied: None,
        term: None,
        retry_at: Instant::now(),
        awaiting_ack: Vec::new(),
    };
    let name = node.settings.name.clone();
    println!(
        "{name}: opened mempool {prefix:?} as node {}",
        node.mempool.node_id()
    );
    if args.fake_txs {
        println!(
            "{name}: --fake-txs: submitting made-up transactions under {prefix:?} every {} ms",
            node.settings.tx_interval_ms
        );
    }
    let mut input = if args.blocks_from_stdin {
        stdin_lines()
    } else {
        crossbeam_channel::never()
    };
    let interval = Duration::from_millis(node.settings.tx_interval_ms.max(1));
    let (mut next_tick, mut next_summary) = (Instant::now(), Instant::now());
    let mut was_watcher = None;
    while !stop.load(Ordering::SeqCst) {
        let wait = if args.fake_txs {
            next_tick
                .saturating_duration_since(Instant::now())
                .min(POLL)
        } else {
            POLL
        };
        match input.recv_timeout(wait) {
            Ok(line) if line.trim() == "quit" => break,
            Ok(line) => {
                if let Err(e) = node.on_line(&line) {
                    println!("{name}: {e}: {line:?}");
                }
            }
            // The end of the input ends the blocks only; the node goes on until stopped.
            Err(RecvTimeoutError::Disconnected) => input = crossbeam_channel::never(),
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if args.fake_txs && now >= next_tick {
            if let Err(e) = node.fake_traffic() {
                println!("{name}: fake traffic: {e}");
            }
            next_tick = (next_tick + interval).max(now);
        }
        let epoch = node.mempool.watcher_epoch();
        if was_watcher != Some(epoch.is_some()) {
            was_watcher = Some(epoch.is_some());
            match epoch {
                Some(epoch) => println!("{name}: now the watcher (epoch {epoch})"),
                None => println!("{name}: following"),
            }
        }
        // The chain comes from stdin only: without it there is nothing to apply.
        if args.blocks_from_stdin && input.is_empty() {
            node.sync(now);
        }
        if now >= next_summary {
            println!(
                "{name}: watcher {}, chain {} blocks, applied {:?}",
                epoch.is_some(),
                node.chain.len(),
                node.applied
            );
            next_summary = now + Duration::from_secs(10);
        }
    }
    let was = node.mempool.is_watcher();
    println!("{name}: shutting down");
    node.mempool
        .shutdown()
        .map_err(|e| format!("shutdown: {e}"))?;
    if was {
        println!("{name}: handed the watcher lock over");
    }
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
fn point(slot: &str, hash: &str) -> Result<ChainPoint, String> {
    let slot = slot.parse().map_err(|e| format!("slot {slot:?}: {e}"))?;
    let hash = hash.parse().map_err(|e| format!("{e}"))?;
    Ok(ChainPoint::Specific(slot, hash))
}

impl Node {
    fn on_line(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["block", slot, hash, txs @ ..] => {
                let point = point(slot, hash)?;
                let txs = txs
                    .iter()
                    .map(|t| t.parse().map_err(|e| format!("{e}")))
                    .collect::<Result<_, _>>()?;
                self.chain.push(Block { point, txs });
                self.retry_at = Instant::now();
            }
            ["rollback", "origin"] => self.rollback(ChainPoint::Origin),
            ["rollback", slot, hash] => self.rollback(point(slot, hash)?),
            _ => return Err("unknown input line".into()),
        }
        Ok(())
    }

    /// `--fake-txs`: submits a made-up transaction, acknowledges and propagates, as a node does
    /// with its peers.
    fn fake_traffic(&mut self) -> Result<(), dolos_redis::Error> {
        let mut hash = [0u8; 32];
        hash[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        hash[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        // A CBOR array header, so the body at least starts like a transaction.
        let mut body = vec![0x84];
        body.resize(300, 0xa0);
        self.mempool
            .receive(MempoolTx::new(TxHash::from(hash), EraCbor(6, body)))?;
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

    /// As the watcher, applies our blocks that Redis lacks; in a new term or after a failed
    /// call, reconciles first. A block that fails is offered again after the next reconcile,
    /// so none is skipped.
    fn sync(&mut self, now: Instant) {
        let epoch = self.mempool.watcher_epoch();
        if epoch != self.term {
            self.applied = None;
            self.term = epoch;
            self.retry_at = now;
        }
        if epoch.is_none() || (self.applied.is_none() && now < self.retry_at) {
            return;
        }
        if self.applied.is_none() {
            match reconcile(&self.mempool, &self.chain) {
                Ok(Some(n)) => {
                    println!("reconciled: the applied chain ends with my first {n} blocks");
                    self.applied = Some(n);
                }
                Ok(None) => {
                    self.retry_at = now + RETRY;
                    return;
                }
                Err(e) => {
                    println!("reconcile: {e}");
                    self.retry_at = now + RETRY;
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
