//! The operator's view of a shared mempool: who is the watcher, how long its lock has left, and
//! how many transactions sit in each stage. The reference deployment's `watch-watcher.sh`, in
//! Rust, plus a safe way to reset the lock.
//!
//! ```text
//! cargo run --example inspector                              # refresh every 2 s, Ctrl-C to stop
//! cargo run --example inspector -- --once                    # one line, for scripts
//! cargo run --example inspector -- --events                  # also print every event as it comes
//! cargo run --example inspector -- --once --json             # one JSON object, for scripts
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
//! Current watcher: 5d14d3fa-6a0e-4c1b-9d57-0e3f2b8c1a44 (TTL: 8.2s, epoch 3) | pending 12 propagated 3 acknowledged 4 confirmed 7 | log 120 | blocks 57 (slot 1234) | redis 1.4 of 512.0 MB, noeviction
//! ```
//!
//! where `log` is the number of Finalized/Dropped entries the finalized log retains, `blocks`
//! the number of blocks applied so far (with the slot of the last one), and `redis` the memory
//! Redis uses of its `maxmemory`, with its eviction policy. The watcher is named by its full
//! node id, as the reference's `watch-watcher.sh` prints it and as each node logs it
//! (`acquired watcher lock (node …)`), so the two can be matched by eye or by `grep`.
//!
//! With `--json` every line is one JSON object instead, for scripts (`jq`):
//!
//! ```text
//! {"watcher":{"holder":"5d14d3fa-…","ttl_ms":8200,"epoch":3,"applied_slot":1234},"pending":12,"propagated":3,"acknowledged":4,"confirmed":7,"finalized_log":120,"applied_blocks":57,"redis":{"used_memory":1468006,"maxmemory":536870912,"maxmemory_policy":"noeviction"}}
//! ```
//!
//! `holder`, `ttl_ms` and `applied_slot` are `null` when there is none; `--events` adds one
//! object per event (`{"event":"tx","seq":…}`), and `reset-lock` prints one object saying
//! what it removed and who took over.
//!
//! The inspector opens the mempool as an *observer* (`Config::watcher_candidate(false)`): it
//! starts no lease thread, so running it never changes who is watcher.
//!
//! `reset-lock` is the safe form of `redis-cli DEL <prefix>:watcher:lock`: the lock is deleted
//! in one script only if it is held (by `--holder`, when given: the node id, or its first
//! characters), the followers are woken so one of them takes over within
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
usage: inspector [--url URL] [--prefix PREFIX] [--once] [--events] [--json]
       inspector reset-lock [--holder NODE_ID] [--url URL] [--prefix PREFIX] [--json]

  --url URL        Redis server (default: $REDIS_URL, else redis://127.0.0.1:6379)
  --prefix PREFIX  key prefix shared by the nodes (default: dolos:mempool)
  --once           print one status line and exit
  --events         also print every mempool event as it arrives
  --json           one JSON object per line instead of text, for scripts
  --holder NODE_ID reset-lock only if this node holds the lock (the node id, or
                   its first characters)
  -h, --help       this text";

#[derive(Debug)]
enum Command {
    Watch { once: bool, events: bool },
    ResetLock { holder: Option<String> },
}

#[derive(Debug)]
struct Args {
    url: String,
    prefix: String,
    json: bool,
    command: Command,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut url = std::env::var("REDIS_URL").ok();
    let mut prefix = None;
    let mut reset = false;
    let (mut once, mut events, mut json) = (false, false, false);
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
            "--json" => json = true,
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
        json,
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
        Command::Watch { once, events } => watch(&mempool, once, events, args.json),
        Command::ResetLock { holder } => reset_lock(&mempool, holder.as_deref(), args.json),
    }
}

fn watch(mempool: &RedisMempool, once: bool, events: bool, json: bool) -> Result<(), String> {
    if events {
        // The reader thread delivers in commit order; printing from a thread of our own keeps
        // events flowing while the main thread sleeps between refreshes.
        let rx = mempool.subscribe();
        std::thread::Builder::new()
            .name("inspector-events".into())
            .spawn(move || {
                for event in rx {
                    if json {
                        println!("{}", event_json(&event));
                    } else {
                        println!("{}", describe_event(&event));
                    }
                }
            })
            .map_err(|e| format!("cannot start the event thread: {e}"))?;
    }
    loop {
        let started = Instant::now();
        match mempool.stats() {
            Ok(stats) if json => println!("{}", status_json(&stats)),
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

fn reset_lock(mempool: &RedisMempool, holder: Option<&str>, json: bool) -> Result<(), String> {
    let before = mempool
        .watcher_info()
        .map_err(|e| format!("cannot read the watcher lock: {e}"))?;
    // Accept the first characters of the id when they name the current holder. The reset itself
    // compares the full id on the server, so a lock that changed hands meanwhile stays.
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
        let why = match (&before.holder, holder) {
            (None, _) => "no node holds the watcher lock: nothing to reset".to_string(),
            (Some(current), Some(expected)) => {
                format!("the watcher lock is held by {current}, not {expected}: left as it is")
            }
            // Released between our read and the reset.
            (Some(_), None) => "the watcher lock was released meanwhile: nothing to reset".into(),
        };
        if json {
            println!(
                "{{\"removed\":null,\"holder\":{},\"epoch\":{},\"new_watcher\":null,\"why\":{}}}",
                json_opt_str(before.holder.as_deref()),
                before.epoch,
                json_str(&why)
            );
        } else {
            println!("{why}");
        }
        return Ok(());
    };
    if !json {
        println!(
            "removed the watcher lock held by {removed} (epoch {}); followers woken",
            before.epoch
        );
    }
    // Followers are woken by the reset, so a takeover is a matter of milliseconds; without any
    // candidate node running, nobody takes over and the lock stays free.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(3);
    let next = loop {
        let info = mempool
            .watcher_info()
            .map_err(|e| format!("cannot read the watcher lock: {e}"))?;
        if let Some(next) = info.holder {
            break Some((next, info.epoch, started.elapsed().as_millis()));
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    match (json, &next) {
        (true, Some((id, epoch, ms))) => println!(
            "{{\"removed\":{},\"epoch\":{},\"new_watcher\":{},\"new_epoch\":{epoch},\"takeover_ms\":{ms}}}",
            json_str(&removed),
            before.epoch,
            json_str(id)
        ),
        (true, None) => println!(
            "{{\"removed\":{},\"epoch\":{},\"new_watcher\":null}}",
            json_str(&removed),
            before.epoch
        ),
        (false, Some((id, epoch, ms))) => {
            println!("new watcher: {id} (epoch {epoch}) after {ms} ms")
        }
        (false, None) => println!("no node took the lock within 3 s (is any node running?)"),
    }
    Ok(())
}

fn watcher_part(w: &WatcherInfo) -> String {
    match (&w.holder, w.ttl) {
        (Some(holder), Some(ttl)) => format!(
            "Current watcher: {holder} (TTL: {:.1}s, epoch {})",
            ttl.as_secs_f64(),
            w.epoch
        ),
        // A lock without expiry can only have been set by hand; reset-lock clears it.
        (Some(holder), None) => format!("Current watcher: {holder} (TTL: none, epoch {})", w.epoch),
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
            node_id
        ),
        MempoolEvent::WatcherAcquired {
            seq,
            node_id,
            epoch,
        } => format!("event {seq}: watcher {node_id} acquired the lock (epoch {epoch})"),
        MempoolEvent::WatcherReleased {
            seq,
            node_id,
            epoch,
        } => format!("event {seq}: watcher {node_id} released the lock (epoch {epoch})"),
        MempoolEvent::Lagged { missed } => {
            format!("events lost: {missed} (history trimmed, or this inspector fell behind)")
        }
        // `MempoolEvent` is non-exhaustive: newer kinds are shown raw.
        other => format!("event: {other:?}"),
    }
}

/// `text` as a JSON string.
fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt_str(text: Option<&str>) -> String {
    text.map_or_else(|| "null".to_string(), json_str)
}

fn json_opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn status_json(s: &MempoolStats) -> String {
    let w = &s.watcher;
    format!(
        "{{\"watcher\":{{\"holder\":{},\"ttl_ms\":{},\"epoch\":{},\"applied_slot\":{}}},\
         \"pending\":{},\"propagated\":{},\"acknowledged\":{},\"confirmed\":{},\
         \"finalized_log\":{},\"applied_blocks\":{},\
         \"redis\":{{\"used_memory\":{},\"maxmemory\":{},\"maxmemory_policy\":{}}}}}",
        json_opt_str(w.holder.as_deref()),
        json_opt(w.ttl.map(|t| t.as_millis())),
        w.epoch,
        json_opt(w.applied_slot),
        s.pending,
        s.propagated,
        s.acknowledged,
        s.confirmed,
        s.finalized_log,
        s.applied_blocks,
        s.used_memory,
        s.maxmemory,
        json_str(&s.maxmemory_policy)
    )
}

fn event_json(event: &MempoolEvent) -> String {
    match event {
        MempoolEvent::Tx { seq, tx } => format!(
            "{{\"event\":\"tx\",\"seq\":{seq},\"hash\":\"{}\",\"stage\":\"{:?}\",\
             \"confirmations\":{},\"non_confirmations\":{},\"confirmed_at_slot\":{}}}",
            tx.hash,
            tx.stage,
            tx.confirmations,
            tx.non_confirmations,
            json_opt(tx.confirmed_at.map(|p| p.slot()))
        ),
        MempoolEvent::BlockApplied {
            seq,
            point,
            height,
            rollback,
            node_id,
            epoch,
        } => format!(
            "{{\"event\":\"block\",\"seq\":{seq},\"slot\":{},\"hash\":{},\"height\":{height},\
             \"rollback\":{rollback},\"node_id\":{},\"epoch\":{epoch}}}",
            point.slot(),
            json_opt_str(point.hash().map(|h| h.to_string()).as_deref()),
            json_str(node_id)
        ),
        MempoolEvent::WatcherAcquired {
            seq,
            node_id,
            epoch,
        } => format!(
            "{{\"event\":\"watcher_acquired\",\"seq\":{seq},\"node_id\":{},\"epoch\":{epoch}}}",
            json_str(node_id)
        ),
        MempoolEvent::WatcherReleased {
            seq,
            node_id,
            epoch,
        } => format!(
            "{{\"event\":\"watcher_released\",\"seq\":{seq},\"node_id\":{},\"epoch\":{epoch}}}",
            json_str(node_id)
        ),
        MempoolEvent::Lagged { missed } => {
            format!("{{\"event\":\"lagged\",\"missed\":{missed}}}")
        }
        // `MempoolEvent` is non-exhaustive: newer kinds are shown raw.
        other => format!(
            "{{\"event\":\"other\",\"debug\":{}}}",
            json_str(&format!("{other:?}"))
        ),
    }
}
