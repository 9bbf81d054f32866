//! The operator's view of a shared mempool: who is the watcher, how long its lock has left, and
//! how many transactions sit in each stage. The reference deployment's `watch-watcher.sh`, in
//! Rust, plus a safe way to reset the lock.
//!
//! ```text
//! cargo run --example inspector                              # refresh every 2 s, Ctrl-C to stop
//! cargo run --example inspector -- --once                    # one line, for scripts
//! cargo run --example inspector -- --events                  # also print every event as it comes
//! cargo run --example inspector -- --url redis://10.0.0.5:6379 --prefix dolos:mempool
//! cargo run --example inspector -- reset-lock                # delete the lock, whoever holds it
//! cargo run --example inspector -- reset-lock --holder <id>  # only if node <id> holds it
//! ```
//!
//! The URL comes from `--url`, else `REDIS_URL`, else `redis://127.0.0.1:6379`; the prefix from
//! `--prefix`, else `dolos:mempool` (the reference's default).
//!
//! A status line looks like
//!
//! ```text
//! Current watcher: 5d14d3fa (TTL: 8.2s, epoch 3) | pending 12 propagated 3 acknowledged 4 confirmed 7 | log 120 | blocks 57 (slot 1234) | redis 1.4 of 512.0 MB, noeviction
//! ```
//!
//! where `log` is the number of Finalized/Dropped entries the finalized log retains, `blocks`
//! the number of blocks applied so far (with the slot of the last one), and `redis` the memory
//! Redis uses of its `maxmemory`, with its eviction policy.
//!
//! The inspector opens the mempool as an *observer* (`Config::watcher_candidate(false)`): it
//! starts no lease thread, so running it never changes who is watcher.
//!
//! `reset-lock` is the safe form of `redis-cli DEL <prefix>:watcher:lock`: the lock is deleted
//! in one script only if it is held (by `--holder`, when given: the full node id, or the short
//! one the status line shows), the followers are woken so one of them takes over within
//! milliseconds instead of waiting for the TTL, and every subscriber sees a `WatcherReleased`
//! event. The old holder's `confirm` calls are refused by Redis at once, and it steps down at
//! its next renewal. Use it for a watcher that is stuck yet still renews, or for a lock set by
//! hand without an expiry.
//!
//! Exit status: 0 when the command did its job (including a reset that found nothing to
//! delete), 1 on an error, with one line on stderr saying what went wrong. In refresh mode a
//! failure after start-up is reported on its line and retried at the next refresh, as an
//! operator watching a Redis restart would want; `--once` exits 1 instead.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dolos_redis::{
    ChainPoint, Config, MempoolEvent, MempoolStats, MempoolTxStage, RedisMempool, WatcherInfo,
};

const REFRESH: Duration = Duration::from_secs(2);

const USAGE: &str = "\
usage: inspector [--url URL] [--prefix PREFIX] [--once] [--events]
       inspector reset-lock [--holder NODE_ID] [--url URL] [--prefix PREFIX]

  --url URL        Redis server (default: $REDIS_URL, else redis://127.0.0.1:6379)
  --prefix PREFIX  key prefix shared by the nodes (default: dolos:mempool)
  --once           print one status line and exit
  --events         also print every mempool event as it arrives
  --holder NODE_ID reset-lock only if this node holds the lock (full id, or the
                   short id of the status line)";

#[derive(Debug)]
enum Command {
    Watch { once: bool, events: bool },
    ResetLock { holder: Option<String> },
}

#[derive(Debug)]
struct Args {
    url: String,
    prefix: String,
    command: Command,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut url = std::env::var("REDIS_URL").ok();
    let mut prefix = None;
    let mut reset = false;
    let (mut once, mut events) = (false, false);
    let mut holder = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--url" => url = Some(value("--url")?),
            "--prefix" => prefix = Some(value("--prefix")?),
            "--holder" => holder = Some(value("--holder")?),
            "--once" => once = true,
            "--events" => events = true,
            "reset-lock" if !reset => reset = true,
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let command = if reset {
        if once || events {
            return Err("--once and --events do not apply to reset-lock".into());
        }
        Command::ResetLock { holder }
    } else {
        if holder.is_some() {
            return Err("--holder only applies to reset-lock".into());
        }
        Command::Watch { once, events }
    };
    Ok(Some(Args {
        url: url.unwrap_or_else(|| "redis://127.0.0.1:6379".to_string()),
        prefix: prefix.unwrap_or_else(|| "dolos:mempool".to_string()),
        command,
    }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("inspector: {e}\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inspector: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    // Short timeouts: an operator tool should say "unreachable" in about a second, not hang.
    let config = Config::new(args.url.as_str())
        .key_prefix(args.prefix.as_str())
        .watcher_candidate(false)
        .pool_size(2)
        .connect_timeout(Duration::from_secs(1))
        .command_timeout(Duration::from_secs(1));
    let url = config.redacted_url();
    let mempool = RedisMempool::open(config)
        .map_err(|e| format!("cannot open mempool {:?} at {url}: {e}", args.prefix))?;
    match args.command {
        Command::Watch { once, events } => watch(&mempool, once, events),
        Command::ResetLock { holder } => reset_lock(&mempool, holder.as_deref()),
    }
}

fn watch(mempool: &RedisMempool, once: bool, events: bool) -> Result<(), String> {
    if events {
        // The reader thread delivers in commit order; printing from a thread of our own keeps
        // events flowing while the main thread sleeps between refreshes.
        let rx = mempool.subscribe();
        std::thread::Builder::new()
            .name("inspector-events".into())
            .spawn(move || {
                for event in rx {
                    println!("{}", describe_event(&event));
                }
            })
            .map_err(|e| format!("cannot start the event thread: {e}"))?;
    }
    loop {
        let started = Instant::now();
        match mempool.stats() {
            Ok(stats) => println!("{}", status_line(&stats)),
            Err(e) if once => return Err(format!("cannot read the mempool: {e}")),
            Err(e) => eprintln!("inspector: cannot read the mempool (retrying): {e}"),
        }
        if once {
            return Ok(());
        }
        std::thread::sleep(REFRESH.saturating_sub(started.elapsed()));
    }
}

fn reset_lock(mempool: &RedisMempool, holder: Option<&str>) -> Result<(), String> {
    let before = mempool
        .watcher_info()
        .map_err(|e| format!("cannot read the watcher lock: {e}"))?;
    // The status line shows short ids: accept one when it names the current holder. The reset
    // itself compares the full id on the server, so a lock that changed hands meanwhile stays.
    let holder = match (holder, &before.holder) {
        (Some(given), Some(current)) if !given.is_empty() && current.starts_with(given) => {
            Some(current.as_str())
        }
        (given, _) => given,
    };
    let removed = mempool
        .reset_watcher_lock(holder)
        .map_err(|e| format!("cannot reset the watcher lock: {e}"))?;
    let Some(removed) = removed else {
        match (&before.holder, holder) {
            (None, _) => println!("no node holds the watcher lock: nothing to reset"),
            (Some(current), Some(expected)) => {
                println!("the watcher lock is held by {current}, not {expected}: left as it is")
            }
            // Released between our read and the reset.
            (Some(_), None) => {
                println!("the watcher lock was released meanwhile: nothing to reset")
            }
        }
        return Ok(());
    };
    println!(
        "removed the watcher lock held by {removed} (epoch {}); followers woken",
        before.epoch
    );
    // Followers are woken by the reset, so a takeover is a matter of milliseconds; without any
    // candidate node running, nobody takes over and the lock stays free.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(3);
    loop {
        let info = mempool
            .watcher_info()
            .map_err(|e| format!("cannot read the watcher lock: {e}"))?;
        if let Some(next) = &info.holder {
            println!(
                "new watcher: {} (epoch {}) after {} ms",
                short(next),
                info.epoch,
                started.elapsed().as_millis()
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            println!("no node took the lock within 3 s (is any node running?)");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The first 8 characters of a node id (a UUID): enough to tell nodes apart in a status line.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn watcher_part(w: &WatcherInfo) -> String {
    match (&w.holder, w.ttl) {
        (Some(holder), Some(ttl)) => format!(
            "Current watcher: {} (TTL: {:.1}s, epoch {})",
            short(holder),
            ttl.as_secs_f64(),
            w.epoch
        ),
        // A lock without expiry can only have been set by hand; reset-lock clears it.
        (Some(holder), None) => format!(
            "Current watcher: {} (TTL: none, epoch {})",
            short(holder),
            w.epoch
        ),
        (None, _) => format!("Current watcher: none (epoch {})", w.epoch),
    }
}

fn status_line(s: &MempoolStats) -> String {
    let slot = match s.watcher.applied_slot {
        Some(slot) => format!(" (slot {slot})"),
        None => String::new(),
    };
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let memory = match s.maxmemory {
        0 => format!("redis {:.1} MB, no maxmemory", mb(s.used_memory)),
        max => format!("redis {:.1} of {:.1} MB", mb(s.used_memory), mb(max)),
    };
    let stages = format!(
        "pending {} propagated {} acknowledged {} confirmed {}",
        s.pending, s.propagated, s.acknowledged, s.confirmed
    );
    format!(
        "{} | {stages} | log {} | blocks {}{slot} | {memory}, {}",
        watcher_part(&s.watcher),
        s.finalized_log,
        s.applied_blocks,
        s.maxmemory_policy
    )
}

fn describe_event(event: &MempoolEvent) -> String {
    match event {
        MempoolEvent::Tx { seq, tx } => {
            let hash = tx.hash.to_string();
            let detail = match tx.stage {
                MempoolTxStage::Confirmed | MempoolTxStage::Finalized => {
                    let at = match tx.confirmed_at {
                        Some(ChainPoint::Origin) => ", first at the origin".to_string(),
                        Some(point) => format!(", first in slot {}", point.slot()),
                        None => String::new(),
                    };
                    let s = if tx.confirmations == 1 { "" } else { "s" };
                    format!(" ({} confirmation{s}{at})", tx.confirmations)
                }
                MempoolTxStage::Dropped => {
                    format!(" (after {} blocks without it)", tx.non_confirmations)
                }
                _ => String::new(),
            };
            format!("event {seq}: tx {} {:?}{detail}", &hash[..16], tx.stage)
        }
        MempoolEvent::BlockApplied {
            seq,
            point,
            height,
            rollback,
            node_id,
            epoch,
        } => format!(
            "event {seq}: block at slot {} {} by watcher {} (call {height}, epoch {epoch})",
            point.slot(),
            if *rollback { "undone" } else { "applied" },
            short(node_id)
        ),
        MempoolEvent::WatcherAcquired {
            seq,
            node_id,
            epoch,
        } => format!(
            "event {seq}: watcher {} acquired the lock (epoch {epoch})",
            short(node_id)
        ),
        MempoolEvent::WatcherReleased {
            seq,
            node_id,
            epoch,
        } => format!(
            "event {seq}: watcher {} released the lock (epoch {epoch})",
            short(node_id)
        ),
        MempoolEvent::Lagged { missed } => {
            format!("events lost: {missed} (history trimmed, or this inspector fell behind)")
        }
        // `MempoolEvent` is non-exhaustive: newer kinds are shown raw.
        other => format!("event: {other:?}"),
    }
}
