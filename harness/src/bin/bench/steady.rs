//! Issue 10's table: what each call costs Redis, in units of a plain 300-byte `SET` measured in
//! the same run, in Dolos's steady state; and how long the longest single command runs while a
//! 100k-entry mempool is read whole.
//!
//! **Server time** is read from `INFO commandstats`: the `usec` of the commands a call sends
//! (`evalsha` for a script, `exec` for a `MULTI` of plain reads, `set` for the baseline), as the
//! difference between two readings around a window of calls. No `CONFIG RESETSTAT` between
//! calls: it evicts caches and made a `receive` look about 9 µs dearer in the scratch research
//! of this issue. Commands a script runs are counted inside its `evalsha` (and again under their
//! own names, which is why only the top-level command is summed). The lease thread's renewal (one
//! `evalsha` every TTL/3, TTL 60 s here) may land in a window now and then: each figure is the
//! mean of the middle half of the blocks (25–75 %), which leaves such outliers out.
//!
//! **The SET unit** is the mean server time of the `SET`s the run makes in the same windows: every
//! measured call is followed by one timed `baseline_set` (300 B, through the same pool), so each
//! block gives a SET mean next to its calls, and the unit is the median of those means.
//! **End to end**, each call's latency is compared with the `SET` right after it.
//!
//! **The steady state** (the issue's: Dolos's F = 6, D = 2, blocks kept applied): about 1000
//! pending; each block receives 55 txs, peeks the queue, propagates its head (50, then 5 more
//! that will drop), acknowledges those 50, peeks the inflight set, dumps the log's first 100,
//! and confirms the 50 propagated in the block before. So about 300 txs are Confirmed at any
//! time, 50 finalize and 5 drop per block, and the log (2000 entries) trims every block. The
//! rolled-back `confirm` row is the older benchmark's: a block of 50 seen on a mempool of 1000
//! inflight, undone (untimed) after each call, measured once per block in the same loop.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dolos_redis::{ChainPoint, Config, ConfirmOutcome, RedisMempool, TxHash};
use dolos_redis_testkit as support;

use crate::util::{self, median};
use crate::{progress, Bench, Call, NEVER, POOL};

/// Dolos's thresholds.
pub const F: u32 = 6;
pub const D: u32 = 2;
/// Txs received per block; the first [`SEEN`] of those propagated are confirmed a block later.
pub const PER_BLOCK: u64 = 55;
pub const SEEN: usize = 50;
/// Blocks run before measuring, so that the Confirmed set and the log are full.
pub const WARM_UP: usize = 12;
/// Txs the finalized log keeps (`max_finalized`), so that it trims every block.
pub const LOG: usize = 2000;

/// The calls of the table, with the issue's targets in SET units.
pub const ROWS: [(&str, f64); 8] = [
    ("`receive` (300 B)", 15.0),
    ("`peek_pending(100)`", 80.0),
    ("`peek_inflight(100)`", 80.0),
    ("`dump_finalized(0, 100)`", 80.0),
    ("`mark_inflight(50)`", 120.0),
    ("`mark_acknowledged(50)`", 80.0),
    ("`confirm` (50 seen, steady state)", 300.0),
    ("`confirm` (50 seen, rolled back each time)", 300.0),
];

/// The call behind each row of [`ROWS`], for the `--profile` table.
const PROFILED: [Call; 8] = [
    Call::Receive,
    Call::PeekPending,
    Call::PeekInflight,
    Call::DumpFinalized,
    Call::MarkInflight,
    Call::MarkAcknowledged,
    Call::Confirm,
    Call::Confirm,
];

/// The issue's measurements of what Redis itself needs (Redis 7.0.15, its machine), in its SET
/// units: the same scripts run here, in the same windows as the calls, say how this machine's
/// SET units compare with the issue's (a Lua-heavy script costs more `SET`s on a machine where a
/// `SET` is cheap). Each is (label, the issue's figure, script or `None` for a plain `HMGET`).
pub const REFERENCES: [(&str, f64, Option<&str>); 5] = [
    ("`EVALSHA` of `return 1`", 1.7, Some("return 1")),
    (
        "script: `HSET` + `ZADD` + `XADD` (a bare receive)",
        12.0,
        Some(
            "local n = redis.call('INCR', KEYS[4]) \
             redis.call('HSET', KEYS[1], ARGV[1] .. n, ARGV[2]) \
             redis.call('ZADD', KEYS[2], n, ARGV[1] .. n) \
             redis.call('XADD', KEYS[3], 'MAXLEN', '~', 1000, '*', 'P', ARGV[1] .. n) return 1",
        ),
    ),
    (
        "script: `ZRANGE` + `HMGET` of 100, returned",
        68.0,
        Some(
            "local h = redis.call('ZRANGE', KEYS[1], 0, 99) \
             return {h, redis.call('HMGET', KEYS[2], unpack(h))}",
        ),
    ),
    (
        "script: `HGET` + `HSET` + `ZADD` for 50 txs",
        112.0,
        Some(
            "local h = redis.call('ZRANGE', KEYS[1], 0, 49) \
             for i, x in ipairs(h) do local v = redis.call('HGET', KEYS[2], x) \
             redis.call('HSET', KEYS[3], x, v) redis.call('ZADD', KEYS[4], i, x) end return 1",
        ),
    ),
    ("plain `HMGET` of 100 × 300 B", 10.0, None),
];

/// How many times each of [`REFERENCES`] runs in its window, back to back: the issue measured
/// them over many calls (mean `usec` per call between two readings), and a single call right
/// after the window's `INFO` runs cold, which made the cheap scripts cost here up to twice
/// what they cost warm and put the "≈ issue" estimate on the flattering side.
pub const REFERENCE_RUNS: usize = 10;

/// The floors of the two bulk reads, on the very txs the call reads and as cold: each script
/// does the least any layout storing bodies in a hash must do for its call (the first 100 ids
/// and, for the inflight set, the scores that carry each tx's stage; then `HMGET` of the
/// bodies), and so do the same commands sent plain, in two round trips as the calls send theirs
/// (`ZRANGE`, then `HMGET`). Blocks take turns (see [`Variant`]): on one block in three the
/// script runs right before the call, where the call would run, on another the plain commands
/// do, and that block's call is not counted (the floor has just warmed its txs); on the third
/// the call runs alone and counts. Since reads of more than 32 txs are plain commands, the
/// script floors are what a script would cost at least, and the plain floors what the calls
/// cost at least on this layout. The references above run at the end of the block, on a head that
/// `peek_pending` and `mark_inflight` have just read: warm. Each is (row of [`ROWS`], label,
/// script, its sorted set's key suffix).
pub const COLD: [(usize, &str, &str, &str); 2] = [
    (
        1,
        "`peek_pending(100)`",
        "local h = redis.call('ZRANGE', KEYS[1], 0, 99) if #h == 0 then return {} end \
         return {h, redis.call('HMGET', KEYS[2], unpack(h))}",
        "pending",
    ),
    (
        2,
        "`peek_inflight(100)`",
        "local r = redis.call('ZRANGE', KEYS[1], 0, 99, 'WITHSCORES') local h = {} \
         for i = 1, #r, 2 do h[#h + 1] = r[i] end if #h == 0 then return {} end \
         return {r, redis.call('HMGET', KEYS[2], unpack(h))}",
        "inflight",
    ),
];

/// What one row measured.
pub struct Row {
    pub label: &'static str,
    pub target: f64,
    /// Server µs per call, one figure per block.
    pub server: Vec<f64>,
    /// End-to-end µs of each call, and of the `SET` right after it.
    pub e2e: Vec<(f64, f64)>,
}

pub struct Steady {
    pub blocks: usize,
    /// The SET unit, µs: the median over blocks of each block's mean `SET` server time.
    pub set_us: f64,
    pub set_per_block: Vec<f64>,
    pub rows: Vec<Row>,
    /// Server µs of each of [`REFERENCES`], one figure per block.
    pub references: Vec<Vec<f64>>,
    /// Server µs of each of [`COLD`], one figure per block.
    pub cold: Vec<Vec<f64>>,
    /// Server µs of each of [`COLD`]'s commands sent plain, one figure per block.
    pub plain: Vec<Vec<f64>>,
}

/// What runs in the bulk reads' place in a block: the call alone (counted), or before it (which
/// then does not count) its floor script, or its floor's commands sent plain.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Call,
    Floor,
    Plain,
}

impl Steady {
    /// How many of this run's `SET`s one of the issue's is worth, from each reference: this
    /// run's `SET`s for the reference / the issue's.
    pub fn factors(&self) -> Vec<f64> {
        self.references
            .iter()
            .zip(REFERENCES)
            .map(|(v, (_, issue, _))| trimmed(v) / self.set_us / issue)
            .collect()
    }
}

/// The longest-command phase's comparison row: not a call of the crate but the reference's
/// way to read many txs, a plain `HMGET` of 1000 bodies (no target of ours).
pub const PLAIN_HMGET: &str = "HMGET of 1000 bodies at a time, plain (the reference's read)";

/// One large read, page by page (SLOWLOG, µs).
pub struct Longest {
    pub txs: usize,
    pub pages: usize,
    pub median: f64,
    pub p99: f64,
    /// The longest command logged meanwhile, whichever it was.
    pub longest: u64,
    /// Pages over 2 ms.
    pub over_2ms: usize,
}

/// The trimmed mean (middle half) of `v`.
pub fn trimmed(v: &[f64]) -> f64 {
    let s = util::sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let (lo, hi) = (s.len() / 4, s.len() - s.len() / 4);
    let mid = &s[lo..hi.max(lo + 1)];
    mid.iter().sum::<f64>() / mid.len() as f64
}

pub fn open(url: &str, prefix: &str, max_finalized: usize) -> RedisMempool {
    let config = Config::new(url)
        .key_prefix(prefix)
        .pool_size(POOL)
        .max_pending(100_000_000)
        .max_finalized(max_finalized)
        .watcher_lock_ttl(Duration::from_secs(60));
    let mp = RedisMempool::open(config).expect("open the mempool");
    assert!(
        support::wait_until(Duration::from_secs(5), || mp.is_watcher()),
        "a lone node should become the watcher"
    );
    mp
}

/// The first 100 hashes of the pending queue, as stored (for the plain `HMGET` reference).
fn head_hashes(mp: &RedisMempool) -> Vec<[u8; 32]> {
    mp.peek_pending(100)
        .expect("peek_pending")
        .iter()
        .map(|t| *t.hash.as_bytes())
        .collect()
}

/// Server µs of reference `i` (see [`REFERENCES`]): the mean of [`REFERENCE_RUNS`] runs on the
/// admin connection against the steady mempool's queue and records and scratch keys of its own;
/// scripts by `EVALSHA`, each with only the keys it uses.
fn reference(
    admin: &mut redis::Connection,
    prefix: &str,
    i: usize,
    script: Option<&str>,
    head: &[[u8; 32]],
) -> f64 {
    let key = |k: &str| format!("{prefix}:{k}");
    let mut c;
    let name;
    match script {
        Some(source) => {
            let sha = util::script_load(admin, source);
            c = redis::cmd("EVALSHA");
            c.arg(sha);
            match i {
                0 => {
                    c.arg(0);
                }
                1 => {
                    c.arg(4)
                        .arg(key("ref:txs"))
                        .arg(key("ref:queue"))
                        .arg(key("ref:events"))
                        .arg(key("ref:n"))
                        .arg("r:")
                        .arg(&[0x5a; util::PAYLOAD_LEN][..]);
                }
                2 => {
                    c.arg(2).arg(key("pending")).arg(key("txs"));
                }
                _ => {
                    c.arg(4)
                        .arg(key("pending"))
                        .arg(key("txs"))
                        .arg(key("ref:txs"))
                        .arg(key("ref:queue"));
                }
            }
            name = "evalsha";
        }
        None => {
            c = redis::cmd("HMGET");
            c.arg(key("txs"));
            for h in head {
                c.arg(&h[..]);
            }
            name = "hmget";
        }
    }
    let before = util::command_stats(admin);
    for _ in 0..REFERENCE_RUNS {
        let _: redis::Value = c.query(admin).expect("reference");
    }
    let after = util::command_stats(admin);
    let (calls, us) = util::usec(&before, &after, name);
    us as f64 / calls.max(1) as f64
}

/// Times one call and the `SET` after it; returns their latencies in µs.
pub fn with_set(mp: &RedisMempool, key: &str, call: impl FnOnce()) -> (f64, f64) {
    let t = Instant::now();
    call();
    let call_us = t.elapsed().as_secs_f64() * 1e6;
    let t = Instant::now();
    mp.baseline_set(key, &[0x5a; util::PAYLOAD_LEN])
        .expect("SET");
    (call_us, t.elapsed().as_secs_f64() * 1e6)
}

impl Bench {
    pub fn steady(&mut self) -> Steady {
        let blocks = self.opts.steady_blocks;
        progress(format!(
            "steady state: {WARM_UP} + {blocks} blocks (F = {F}, D = {D}, {PER_BLOCK} txs each)"
        ));
        let tag = self.tag();
        let prefix = format!("{}:steady", self.root);
        let mp = open(&self.url, &prefix, LOG);
        let hash = |i: u64| util::tx_hash(tag, i);
        // The rolled-back row's mempool: 1000 inflight.
        let rb_tag = self.tag();
        let rb_prefix = format!("{}:rolled-back", self.root);
        let rb = open(&self.url, &rb_prefix, 1000);
        for i in 0..1000 {
            rb.receive(util::tx(rb_tag, i)).expect("receive");
        }
        let rb_all: Vec<TxHash> = (0..1000).map(|i| util::tx_hash(rb_tag, i)).collect();
        rb.mark_inflight(&rb_all).expect("mark_inflight");

        for i in 0..1000 {
            mp.receive(util::tx(tag, i)).expect("receive");
        }
        let mut next = 1000u64;
        let mut head = 0u64;
        let mut slot = 0u64;
        let mut previous: Vec<TxHash> = Vec::new();
        let mut rows: Vec<Row> = ROWS
            .iter()
            .map(|(label, target)| Row {
                label,
                target: *target,
                server: Vec::new(),
                e2e: Vec::new(),
            })
            .collect();
        let mut set_per_block = Vec::new();
        let mut references: Vec<Vec<f64>> = Vec::new();
        let mut cold: Vec<Vec<f64>> = vec![Vec::new(); COLD.len()];
        let mut plain: Vec<Vec<f64>> = vec![Vec::new(); COLD.len()];
        // Its own connection: the windows below hold the admin connection.
        let mut cold_conn = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("a connection for the cold references");
        let cold_shas: Vec<String> = COLD
            .iter()
            .map(|(_, _, script, _)| util::script_load(&mut cold_conn, script))
            .collect();
        // Server µs of cold reference `i`: the script (`Variant::Floor`), or its commands sent
        // plain (`Variant::Plain`): the ids, with their scores for the inflight set, then the
        // bodies.
        let mut floor = |variant: Variant, i: usize| -> f64 {
            let (key, txs) = (format!("{prefix}:{}", COLD[i].3), format!("{prefix}:txs"));
            let before = util::command_stats(&mut cold_conn);
            let cmds: &[&str] = if variant == Variant::Plain {
                let scores = COLD[i].3 == "inflight";
                let mut ids = redis::cmd("ZRANGE");
                ids.arg(&key).arg(0).arg(99);
                if scores {
                    ids.arg("WITHSCORES");
                }
                let reply: Vec<Vec<u8>> = ids.query(&mut cold_conn).expect("plain floor: ids");
                let hashes: Vec<&Vec<u8>> = reply.iter().step_by(1 + scores as usize).collect();
                if !hashes.is_empty() {
                    let _: redis::Value = redis::cmd("HMGET")
                        .arg(&txs)
                        .arg(hashes)
                        .query(&mut cold_conn)
                        .expect("plain floor: bodies");
                }
                &["zrange", "hmget"]
            } else {
                let mut c = redis::cmd("EVALSHA");
                c.arg(&cold_shas[i]).arg(2).arg(&key).arg(&txs);
                let _: redis::Value = c.query(&mut cold_conn).expect("cold reference");
                &["evalsha"]
            };
            let after = util::command_stats(&mut cold_conn);
            cmds.iter()
                .map(|cmd| util::usec(&before, &after, cmd).1 as f64)
                .sum::<f64>()
        };
        let set_key = format!("{prefix}:set");
        // With `--profile`: per row, the calls measured and every command's counters in their
        // windows, the `SET`s after each call left out.
        let profile = self.opts.profile;
        let mut profiles: Vec<(usize, util::CommandStats)> = vec![Default::default(); ROWS.len()];
        for block in 0..WARM_UP + blocks {
            let measured = block >= WARM_UP;
            let mut block_rows: Vec<(f64, Vec<(f64, f64)>)> = vec![(0.0, Vec::new()); ROWS.len()];
            let (mut set_calls, mut set_usec) = (0u64, 0u64);
            let admin = &mut self.admin;
            // Runs `call` `n` times in one window; row `r` gets the mean server µs per call of
            // the commands `cmds` (`exec` covers the commands of its MULTI).
            let mut window = |r: usize, cmds: &[&str], n: usize, call: &mut dyn FnMut(usize)| {
                let before = util::command_stats(admin);
                let mut e2e = Vec::with_capacity(n);
                for k in 0..n {
                    e2e.push(with_set(&mp, &set_key, || call(k)));
                }
                let after = util::command_stats(admin);
                let us: u64 = cmds.iter().map(|c| util::usec(&before, &after, c).1).sum();
                let (sc, su) = util::usec(&before, &after, "set");
                set_calls += sc;
                set_usec += su;
                block_rows[r] = (us as f64 / n as f64, e2e);
                if profile && measured {
                    let (count, stats) = &mut profiles[r];
                    *count += n;
                    for (cmd, (c1, u1)) in &after {
                        if cmd == "set" {
                            continue;
                        }
                        let (c, u) = util::usec(&before, &after, cmd);
                        if c > 0 && *c1 > 0 && *u1 > 0 {
                            let e = stats.entry(cmd.clone()).or_default();
                            e.0 += c;
                            e.1 += u;
                        }
                    }
                }
            };
            window(0, &["evalsha"], PER_BLOCK as usize, &mut |k| {
                mp.receive(util::tx(tag, next + k as u64)).expect("receive")
            });
            next += PER_BLOCK;
            // Blocks take turns: the call alone, or a floor first (see [`COLD`]).
            let variant = [Variant::Call, Variant::Floor, Variant::Plain][block % 3];
            let mut before_read = |i: usize| match variant {
                Variant::Call => f64::NAN,
                floor_variant => floor(floor_variant, i),
            };
            let cold_pending = before_read(0);
            window(1, &["zrange", "hmget"], 1, &mut |_| {
                assert_eq!(mp.peek_pending(100).expect("peek_pending").len(), 100)
            });
            let batch: Vec<TxHash> = (head..head + SEEN as u64).map(hash).collect();
            let extra: Vec<TxHash> = (head + SEEN as u64..head + PER_BLOCK).map(hash).collect();
            head += PER_BLOCK;
            window(4, &["evalsha"], 1, &mut |_| {
                mp.mark_inflight(&batch).expect("mark_inflight")
            });
            mp.mark_inflight(&extra).expect("mark_inflight");
            window(5, &["evalsha"], 1, &mut |_| {
                mp.mark_acknowledged(&batch).expect("mark_acknowledged")
            });
            let cold_inflight = before_read(1);
            window(2, &["exec", "hmget"], 1, &mut |_| {
                let got = mp.peek_inflight(100).expect("peek_inflight").len();
                assert!(got == 100 || !measured, "peek_inflight: {got}");
            });
            window(3, &["exec"], 1, &mut |_| {
                let page = mp.dump_finalized(0, 100).expect("dump_finalized");
                assert!(page.items.len() == 100 || !measured);
            });
            slot += 10;
            let seen = std::mem::replace(&mut previous, batch);
            window(6, &["evalsha"], 1, &mut |_| {
                let outcome = mp
                    .confirm(&ChainPoint::Slot(slot), &seen, &[], F, D)
                    .expect("confirm");
                assert_eq!(outcome, ConfirmOutcome::Applied);
            });
            // The rolled-back row: a block of 50 seen, undone and propagated again untimed.
            let k = (block * SEEN) % 1000;
            let rb_batch = &rb_all[k..k + SEEN];
            let rb_point = ChainPoint::Slot(slot);
            window(7, &["evalsha"], 1, &mut |_| {
                let outcome = rb
                    .confirm(&rb_point, rb_batch, &[], NEVER, NEVER)
                    .expect("confirm");
                assert_eq!(outcome, ConfirmOutcome::Applied);
            });
            rb.confirm(&rb_point, &[], rb_batch, NEVER, NEVER)
                .expect("undo");
            rb.mark_inflight(rb_batch).expect("mark_inflight");
            let mut refs = Vec::with_capacity(REFERENCES.len());
            for (i, (_, _, script)) in REFERENCES.iter().enumerate() {
                refs.push(reference(
                    &mut self.admin,
                    &prefix,
                    i,
                    *script,
                    &head_hashes(&mp),
                ));
            }
            if measured {
                references.push(refs);
                set_per_block.push(set_usec as f64 / set_calls.max(1) as f64);
                for (i, floor) in [cold_pending, cold_inflight].into_iter().enumerate() {
                    match variant {
                        Variant::Call => continue,
                        Variant::Floor => cold[i].push(floor),
                        Variant::Plain => plain[i].push(floor),
                    }
                    block_rows[COLD[i].0] = (f64::NAN, Vec::new());
                }
                for (row, (server, e2e)) in rows.iter_mut().zip(block_rows) {
                    if !server.is_nan() {
                        row.server.push(server);
                    }
                    row.e2e.extend(e2e);
                }
            }
        }
        let stats = mp.stats().expect("stats");
        progress(format!(
            "steady state: {} pending, {} inflight ({} Confirmed), log {}",
            stats.pending,
            stats.propagated + stats.acknowledged + stats.confirmed,
            stats.confirmed,
            stats.finalized_log
        ));
        if profile {
            for (r, (n, stats)) in profiles.into_iter().enumerate() {
                let at = if r == 7 {
                    "steady, rolled back"
                } else {
                    "steady state"
                };
                self.profiles.push((at.to_string(), PROFILED[r], n, stats));
            }
        }
        drop(mp);
        drop(rb);
        util::delete_prefix(&mut self.admin, &prefix);
        util::delete_prefix(&mut self.admin, &rb_prefix);
        let references = (0..REFERENCES.len())
            .map(|i| references.iter().map(|r| r[i]).collect())
            .collect();
        Steady {
            blocks,
            set_us: median(&set_per_block),
            set_per_block,
            rows,
            references,
            cold,
            plain,
        }
    }

    /// The longest single command while `peek_pending(usize::MAX)`, `peek_inflight(usize::MAX)`
    /// and `dump_finalized(0, usize::MAX)` read a mempool of `n` txs, from SLOWLOG at a 0 µs
    /// threshold (commands inside scripts are logged too; the script's own entry covers them).
    pub fn longest(&mut self, n: u64) -> BTreeMap<&'static str, Longest> {
        progress(format!("longest command: filling {n} txs"));
        let tag = self.tag();
        let prefix = format!("{}:longest", self.root);
        let mp = open(&self.url, &prefix, n as usize);
        let fill = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..POOL {
                let (mp, fill) = (mp.clone(), &fill);
                s.spawn(move || loop {
                    let i = fill.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    mp.receive(util::tx(tag, i)).expect("receive");
                });
            }
        });
        let all: Vec<TxHash> = (0..n).map(|i| util::tx_hash(tag, i)).collect();
        let mut out = BTreeMap::new();
        // `top`: the pages' command; `client`: the end of the name of the connection sending
        // them (the pool's, or the plain reads' below).
        let mut measure = |admin: &mut redis::Connection,
                           what: &'static str,
                           (top, client): (&str, &str),
                           call: &mut dyn FnMut() -> usize| {
            let old_len = util::config_get(admin, "slowlog-max-len");
            let old_threshold = util::config_get(admin, "slowlog-log-slower-than");
            util::config_set(admin, "slowlog-max-len", "1000000");
            util::config_set(admin, "slowlog-log-slower-than", "0");
            let _: () = redis::cmd("SLOWLOG")
                .arg("RESET")
                .query(admin)
                .expect("SLOWLOG RESET");
            let got = call();
            util::config_set(admin, "slowlog-log-slower-than", "1000000");
            let entries = util::slowlog(admin, 1_000_000);
            if let Some(v) = old_threshold {
                util::config_set(admin, "slowlog-log-slower-than", &v);
            }
            if let Some(v) = old_len {
                util::config_set(admin, "slowlog-max-len", &v);
            }
            assert_eq!(got, n as usize, "{what} read everything");
            // The pages: the call's own top-level commands (a script's entry covers the
            // commands it ran, which are logged too).
            let pages: Vec<f64> = entries
                .iter()
                .filter(|e| e.command == top && e.client_name.ends_with(client))
                .map(|e| e.micros as f64)
                .collect();
            let longest = entries.iter().map(|e| e.micros).max().unwrap_or(0);
            out.insert(
                what,
                Longest {
                    txs: got,
                    pages: pages.len(),
                    median: median(&pages),
                    p99: util::sorted(&pages)
                        .get(pages.len() * 99 / 100)
                        .copied()
                        .unwrap_or(f64::NAN),
                    longest,
                    over_2ms: pages.iter().filter(|&&p| p > 2000.0).count(),
                },
            );
        };
        progress("longest command: peek_pending(usize::MAX)");
        measure(
            &mut self.admin,
            "peek_pending(usize::MAX)",
            ("hmget", ":pool"),
            &mut || mp.peek_pending(usize::MAX).expect("peek_pending").len(),
        );
        for chunk in all.chunks(256) {
            mp.mark_inflight(chunk).expect("mark_inflight");
        }
        progress("longest command: peek_inflight(usize::MAX)");
        measure(
            &mut self.admin,
            "peek_inflight(usize::MAX)",
            ("hmget", ":pool"),
            &mut || mp.peek_inflight(usize::MAX).expect("peek_inflight").len(),
        );
        // The reference's way to read many txs, for comparison: one plain `HMGET` of 1000
        // bodies, here of every inflight tx, 1000 at a time (their order in the hash is random).
        progress("longest command: plain HMGET of 1000 bodies at a time");
        let mut plain = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("a connection for the plain HMGETs");
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("bench-plain-hmget")
            .query(&mut plain)
            .expect("CLIENT SETNAME");
        let txs = format!("{prefix}:txs");
        measure(
            &mut self.admin,
            PLAIN_HMGET,
            ("hmget", "plain-hmget"),
            &mut || {
                let mut read = 0;
                for chunk in all.chunks(1000) {
                    let bodies: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                        .arg(&txs)
                        .arg(chunk.iter().map(|h| &h.as_bytes()[..]).collect::<Vec<_>>())
                        .query(&mut plain)
                        .expect("HMGET");
                    read += bodies.iter().flatten().count();
                }
                read
            },
        );
        progress(format!(
            "longest command: finalizing {n} txs, 250 per block"
        ));
        for (i, chunk) in all.chunks(250).enumerate() {
            let point = ChainPoint::Slot(10 * (i as u64 + 1));
            mp.confirm(&point, chunk, &[], 1, NEVER).expect("confirm");
        }
        progress("longest command: dump_finalized(0, usize::MAX)");
        measure(
            &mut self.admin,
            "dump_finalized(0, usize::MAX)",
            ("hmget", ":pool"),
            &mut || {
                mp.dump_finalized(0, usize::MAX)
                    .expect("dump_finalized")
                    .items
                    .len()
            },
        );
        drop(mp);
        util::delete_prefix(&mut self.admin, &prefix);
        out
    }
}
