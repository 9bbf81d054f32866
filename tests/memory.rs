//! Redis's memory, against real redis-servers started with a small `maxmemory`.
//!
//! A Redis that would evict keys when full (`allkeys-*`, `volatile-*`) is refused at `open`
//! with [`Error::EvictionPolicy`], or opened with one warning when the host allows it.
//!
//! Under `noeviction`, every call Redis refuses for memory is a typed [`Error::OutOfMemory`] that
//! stored nothing (the mempool's keys are byte for byte what they were), everything accepted
//! before stays consistent, the watcher keeps its lock while Redis is full (and a follower can
//! still take over), and a `confirm` refused for memory applies exactly once when it is made
//! again after memory was freed.
//!
//! Run with `--nocapture` to see the measured figures.

mod common;
use dolos_redis_testkit as support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{cmd, hash, lock_holder, lone_watcher, point, stage_of, SETTLE};
use dolos_redis::{
    Config, ConfirmOutcome, EraCbor, Error, MempoolTx, MempoolTxStage, RedisMempool, TxHash,
};
use support::logs::{capture_logs, logs_containing};
use support::{scan_keys, wait_until, RedisServer, ServerOptions};

const TTL: Duration = Duration::from_secs(1);

/// Payload size of the txs that fill Redis, as in the benchmark.
const BODY: usize = 300;

/// A server that refuses writes beyond 3 MB (about 900 kB of it are Redis's own at start).
fn full_able_server() -> RedisServer {
    server_with_policy("noeviction")
}

/// A server with a 3 MB `maxmemory` under `policy`.
fn server_with_policy(policy: &str) -> RedisServer {
    RedisServer::start_with(ServerOptions {
        extra_args: ["--maxmemory", "3mb", "--maxmemory-policy", policy]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
}

/// How the scripts are loaded: with their `#!lua` headers (Redis 7 and later), or without, as
/// on Redis 6.2, where Redis judges a script's memory at its first write instead of before it
/// runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Headers {
    Redis7,
    AsOnRedis62,
}

fn node_config(server: &RedisServer, prefix: &str, headers: Headers) -> Config {
    Config::new(server.url())
        .key_prefix(prefix)
        .watcher_lock_ttl(TTL)
        .test_script_headers(headers == Headers::Redis7)
}

/// A tx of [`BODY`] bytes.
fn body_tx(i: u32) -> MempoolTx {
    let mut body = vec![(i % 251) as u8; BODY];
    body[0] = 0x84;
    MempoolTx::new(hash(i), EraCbor(6, body))
}

fn is_oom(result: &Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(result, Err(Error::OutOfMemory(_)))
}

/// `used_memory` and `maxmemory` from `INFO memory`.
fn memory(con: &mut redis::Connection) -> (u64, u64) {
    let info: String = redis::cmd("INFO").arg("memory").query(con).expect("INFO");
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in INFO memory"))
    };
    (field("used_memory"), field("maxmemory"))
}

/// Receives txs numbered from `from` until Redis refuses one for memory; returns the hashes
/// accepted, in order, and the refusal.
fn fill_with_receives(m: &RedisMempool, from: u32) -> (Vec<TxHash>, Error) {
    let mut accepted = Vec::new();
    for i in from..from + 100_000 {
        match m.receive(body_tx(i)) {
            Ok(()) => accepted.push(hash(i)),
            Err(e @ Error::OutOfMemory(_)) => return (accepted, e),
            Err(e) => panic!("receive {i}: {e:?}"),
        }
    }
    panic!("redis never filled up")
}

/// Makes Redis full with 4 MB of 64 kB filler keys written over `con`, far beyond its 3 MB:
/// `maxmemory` is raised while they are written, then put back. (Redis refuses a `SET` once it
/// is full, and a Redis filled only up to its limit drifts below it on its own.) Deleting the
/// fillers frees all of it again. Returns their names.
fn fill_with_fillers(con: &mut redis::Connection) -> Vec<String> {
    let (_, max) = memory(con);
    set_maxmemory(con, "64mb");
    let value = vec![b'x'; 64 * 1024];
    let fillers: Vec<String> = (0..64).map(|i| format!("filler:{i}")).collect();
    for key in &fillers {
        redis::cmd("SET")
            .arg(key)
            .arg(&value)
            .query::<()>(con)
            .unwrap_or_else(|e| panic!("SET {key}: {e}"));
    }
    set_maxmemory(con, &max.to_string());
    let (used, max) = memory(con);
    assert!(used > max + 2 * 1024 * 1024, "not full: {used} of {max}");
    fillers
}

fn set_maxmemory(con: &mut redis::Connection, value: &str) {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(value)
        .query::<()>(con)
        .expect("CONFIG SET maxmemory");
}

/// Keeps Redis full once it has filled up: `used_memory` falls on its own by a few hundred kB
/// (Redis frees the query buffers of clients idle for 2 s: about 16-32 kB per connection), so
/// `maxmemory` goes 1 MB below what is used now.
fn hold_full(con: &mut redis::Connection) {
    let (used, _) = memory(con);
    set_maxmemory(con, &(used - 1024 * 1024).to_string());
}

/// Frees memory the way an operator would when Redis is full: more `maxmemory` (64 MB).
fn memory_back(con: &mut redis::Connection) {
    set_maxmemory(con, "64mb");
}

/// Every key under `prefix` with its contents read back in a canonical order (not `DUMP`: the
/// order of a hash's fields in it changes when Redis rehashes the table, which reads do): equal
/// snapshots mean nothing under the prefix changed. Expiry times are not part of it, so the
/// lease renewing its lock does not count as a change.
fn snapshot(con: &mut redis::Connection, prefix: &str) -> BTreeMap<String, String> {
    scan_keys(con, &format!("{prefix}:*"))
        .expect("SCAN")
        .into_iter()
        .map(|k| {
            let kind: String = redis::cmd("TYPE").arg(&k).query(con).expect("TYPE");
            fn read(con: &mut redis::Connection, c: &mut redis::Cmd) -> redis::Value {
                c.query(con).expect("read")
            }
            let contents = match kind.as_str() {
                "string" => format!("{:?}", read(con, redis::cmd("GET").arg(&k))),
                "hash" => {
                    let mut fields: Vec<(Vec<u8>, Vec<u8>)> =
                        redis::cmd("HGETALL").arg(&k).query(con).expect("HGETALL");
                    fields.sort();
                    format!("{fields:?}")
                }
                "zset" => format!(
                    "{:?}",
                    read(
                        con,
                        redis::cmd("ZRANGE")
                            .arg(&k)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES")
                    )
                ),
                "stream" => format!(
                    "{:?} {:?}",
                    read(con, redis::cmd("XRANGE").arg(&k).arg("-").arg("+")),
                    read(con, redis::cmd("XINFO").arg("STREAM").arg(&k))
                ),
                other => panic!("{k} is a {other}"),
            };
            (k, contents)
        })
        .collect()
}

/// The keys that differ between two snapshots (not their contents: a stream's dump is large).
fn changed_keys(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

fn int(con: &mut redis::Connection, words: &[&str]) -> u64 {
    let v: Option<u64> = cmd(words)
        .query(con)
        .unwrap_or_else(|e| panic!("{words:?}: {e}"));
    v.unwrap_or(0)
}

/// `allkeys-lru` deletes accepted transactions when memory runs out: refused at open, with a
/// message that names the policy, what it would do and the fix; allowed, one warning.
#[test]
fn allkeys_eviction_is_refused_at_open_unless_allowed() {
    refused_unless_allowed("allkeys-lru", "vanish");
}

/// `volatile-lru` deletes the watcher lock (the only key with a TTL) first.
#[test]
fn volatile_eviction_is_refused_at_open_unless_allowed() {
    refused_unless_allowed("volatile-lru", "watcher lock");
}

fn refused_unless_allowed(policy: &str, consequence: &str) {
    capture_logs();
    let server = server_with_policy(policy);
    let prefix = format!("mem-{policy}");
    let err = RedisMempool::open(node_config(&server, &prefix, Headers::Redis7))
        .expect_err("open must refuse an evicting redis");
    println!("{policy}: {err}");
    assert_eq!(
        err,
        Error::EvictionPolicy {
            policy: policy.into()
        }
    );
    let text = err.to_string();
    for needle in [policy, consequence, "noeviction", "allow_eviction"] {
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
    assert!(!err.is_transient());
    // Refused before anything was written.
    assert!(snapshot(&mut server.connection(), &prefix).is_empty());

    let warning = format!("maxmemory-policy is {policy}");
    assert!(logs_containing(&warning).is_empty());
    let m = lone_watcher(node_config(&server, &prefix, Headers::Redis7).allow_eviction(true));
    m.receive(body_tx(1)).expect("receive");
    let warnings = logs_containing(&warning);
    println!("{warnings:?}");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("WARN "), "{warnings:?}");
    assert!(warnings[0].contains(consequence), "{warnings:?}");
    m.shutdown().expect("shutdown");
}

/// A change of policy at run time: `stats` shows it at once, and the lease thread warns once
/// per change (it reads the policy every three TTLs).
#[test]
fn a_change_of_policy_at_run_time_is_shown_and_warned_about_once() {
    capture_logs();
    let server = full_able_server();
    let prefix = "mem-policy-change";
    let m = lone_watcher(node_config(&server, prefix, Headers::Redis7));
    let stats = m.stats().expect("stats");
    assert_eq!(stats.maxmemory_policy, "noeviction");
    assert_eq!(stats.maxmemory, 3 * 1024 * 1024);
    assert!(stats.used_memory > 0 && stats.used_memory < stats.maxmemory);

    let mut admin = server.connection();
    let set_policy = |con: &mut redis::Connection, policy: &str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query::<()>(con)
            .expect("CONFIG SET maxmemory-policy")
    };
    let changed_at = Instant::now();
    set_policy(&mut admin, "allkeys-lfu");
    assert_eq!(m.stats().expect("stats").maxmemory_policy, "allkeys-lfu");
    let to_lfu = "maxmemory-policy changed from noeviction to allkeys-lfu";
    assert!(
        wait_until(TTL * 3 + SETTLE, || !logs_containing(to_lfu).is_empty()),
        "no warning about the change"
    );
    println!(
        "warned {:?} after the change: {:?}",
        changed_at.elapsed(),
        logs_containing(to_lfu)
    );
    assert!(logs_containing(to_lfu)[0].starts_with("WARN "));
    // Two more reads of the policy (INFO calls other than this test's own): still one warning.
    let mut polls = 0;
    let mut info_calls = || {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut admin)
            .expect("INFO");
        polls += 1;
        let calls: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_info:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .expect("cmdstat_info");
        // This test's earlier polls are counted; the current one is not yet.
        calls - (polls - 1)
    };
    let base = info_calls();
    assert!(
        wait_until(TTL * 6 + SETTLE, || info_calls() >= base + 2),
        "the lease thread stopped reading the policy"
    );
    assert_eq!(logs_containing(to_lfu).len(), 1);
    // And back: one more line, not a warning.
    set_policy(&mut server.connection(), "noeviction");
    let back = "maxmemory-policy changed from allkeys-lfu to noeviction";
    assert!(
        wait_until(TTL * 3 + SETTLE, || !logs_containing(back).is_empty()),
        "no word about the change back"
    );
    assert!(logs_containing(back)[0].starts_with("INFO "));
    assert_eq!(logs_containing(to_lfu).len(), 1);
    assert_eq!(m.stats().expect("stats").maxmemory_policy, "noeviction");
}

/// Redis filled by `receive` calls: the call that finds it full fails with a typed error that
/// says what to do, stores nothing, and everything accepted before is there and consistent.
#[test]
fn a_full_redis_refuses_receive_with_a_typed_error_and_keeps_what_it_accepted() {
    refuses_receive_and_keeps_what_it_accepted(Headers::Redis7);
}

/// The same with scripts loaded as on Redis 6.2: every script reads before it writes, so Redis
/// refuses it at its first write, before anything is stored.
#[test]
fn without_script_headers_a_full_redis_still_refuses_receive_whole() {
    refuses_receive_and_keeps_what_it_accepted(Headers::AsOnRedis62);
}

fn refuses_receive_and_keeps_what_it_accepted(headers: Headers) {
    capture_logs();
    let server = full_able_server();
    let prefix = "mem-receive";
    let m = lone_watcher(node_config(&server, prefix, headers));
    let mut con = server.connection();
    let t0 = Instant::now();
    let (accepted, err) = fill_with_receives(&m, 0);
    let (used, max) = memory(&mut con);
    hold_full(&mut con);
    println!(
        "{} receives of {BODY} B accepted in {:?}, then: {err}; used_memory {used} of {max}",
        accepted.len(),
        t0.elapsed()
    );
    assert!(
        accepted.len() > 1000,
        "filled too early: {}",
        accepted.len()
    );
    assert!(used > max / 10 * 9, "used_memory {used} of {max}");
    // The message says nothing was stored and what to do; it is not a link error.
    let text = err.to_string();
    for needle in [
        "nothing was stored",
        "maxmemory",
        "max_pending",
        "max_finalized",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
    assert!(!err.is_transient());

    // Every writing call is refused the same way, and leaves every key as it was. (Without
    // headers a call with nothing to write runs: acknowledging pending txs moves none.)
    let before = snapshot(&mut con, prefix);
    let next = accepted.len() as u32;
    assert!(is_oom(&m.receive(body_tx(next))));
    assert!(is_oom(&m.mark_inflight(&accepted[..10])));
    let acked = m.mark_acknowledged(&accepted[..10]);
    match headers {
        Headers::Redis7 => assert!(is_oom(&acked), "{acked:?}"),
        Headers::AsOnRedis62 => assert!(is_oom(&acked) || acked.is_ok(), "{acked:?}"),
    }
    assert!(is_oom(&m.confirm(&point(1), &accepted[..10], &[], 6, 2)));
    let changed = changed_keys(&before, &snapshot(&mut con, prefix));
    assert!(changed.is_empty(), "a refused call changed {changed:?}");

    // What was accepted is all there, in order, and the records agree: one pending entry and
    // one record per accepted tx, one event per change (the leader event, then one per tx).
    let count = accepted.len() as u64;
    assert_eq!(
        int(&mut con, &["ZCARD", &format!("{prefix}:pending")]),
        count
    );
    assert_eq!(int(&mut con, &["HLEN", &format!("{prefix}:txs")]), count);
    let events_seq = int(&mut con, &["HGET", &format!("{prefix}:meta"), "ev"]);
    assert_eq!(events_seq, count + 1);
    assert_eq!(
        int(&mut con, &["XLEN", &format!("{prefix}:events")]),
        count + 1
    );
    let pending = m
        .peek_pending(accepted.len() + 10)
        .expect("peek while full");
    let hashes: Vec<TxHash> = pending.iter().map(|t| t.hash).collect();
    assert_eq!(hashes, accepted);
    assert!(pending.iter().all(|t| t.payload.1.len() == BODY));
    m.check_status(&accepted[0])
        .expect("check_status while full");
    assert!(m.has_pending().expect("has_pending while full"));
    let stats = m.stats().expect("stats while full");
    assert_eq!(stats.pending, count);
    m.shutdown().expect("shutdown while full");
}

/// While receives keep Redis full, the watcher renews its lock for three TTLs and more without
/// losing it, and when it dies a follower still takes over: the lease's scripts run whatever
/// the memory (`allow-oom`).
#[test]
fn the_watcher_keeps_its_lock_while_redis_is_full_and_a_follower_can_take_over() {
    keeps_the_lock_while_full(Headers::Redis7);
}

/// As on Redis 6.2 the watcher keeps its lock too (a renewal's first write, `PEXPIRE`, may
/// always run, and a script that has written runs to its end), but an acquisition's first
/// write is a `SET`, refused while Redis is full: a follower takes over only once memory is
/// back.
#[test]
fn without_script_headers_the_watcher_keeps_its_lock_but_nobody_acquires_while_full() {
    keeps_the_lock_while_full(Headers::AsOnRedis62);
}

fn keeps_the_lock_while_full(headers: Headers) {
    capture_logs();
    let server = full_able_server();
    let prefix = "mem-lease";
    let a = lone_watcher(node_config(&server, prefix, headers));
    let b = RedisMempool::open(node_config(&server, prefix, headers)).expect("open b");
    let epoch = a.watcher_info().expect("watcher_info").epoch;
    let (accepted, _) = fill_with_receives(&a, 0);
    let mut con = server.connection();
    hold_full(&mut con);
    let full_at = Instant::now();
    let renewals = a.stats().expect("stats").renewals;
    // Three TTLs and more while full, the lock sampled all along: a lock nobody renews expires
    // within one TTL.
    let mut holders = BTreeMap::new();
    wait_until(TTL * 3 + TTL / 2, || {
        *holders.entry(lock_holder(&mut con, prefix)).or_insert(0) += 1;
        false
    });
    let held = full_at.elapsed();
    let stats = a.stats().expect("stats");
    println!(
        "full after {} receives; in {held:?} while full the watcher renewed {} times; lock \
         samples {holders:?}",
        accepted.len(),
        stats.renewals - renewals
    );
    assert_eq!(
        holders.keys().collect::<Vec<_>>(),
        vec![&Some(a.node_id().to_string())],
        "the lock was not held by the watcher all along"
    );
    assert!(stats.renewals >= renewals + 6, "too few renewals");
    assert!(a.is_watcher() && !b.is_watcher());
    assert_eq!(stats.times_lost, 0);
    let info = a.watcher_info().expect("watcher_info");
    assert_eq!(
        info.epoch, epoch,
        "the lock changed hands while redis was full"
    );
    assert!(info.is_self);
    assert!(
        is_oom(&a.receive(body_tx(1_000_000))),
        "redis is no longer full"
    );

    // A crash while full: the follower takes over (at once, through the crashed watcher's
    // vanished liveness subscription, since the lease's scripts run whatever the memory; as
    // on Redis 6.2 only once memory is back, whatever the lock says).
    let crashed = Instant::now();
    a.abandon();
    if headers == Headers::AsOnRedis62 {
        // Nobody for two TTLs: the lock expired long before, but no acquisition may write.
        assert!(
            !wait_until(TTL * 2, || b.is_watcher()),
            "acquired while full"
        );
        assert_eq!(lock_holder(&mut con, prefix), None);
        memory_back(&mut con);
    }
    assert!(wait_until(TTL + SETTLE, || b.is_watcher()), "no takeover");
    println!("takeover after {:?} ({headers:?})", crashed.elapsed());
    assert_eq!(b.watcher_info().expect("watcher_info").epoch, epoch + 1);
    if headers == Headers::Redis7 {
        assert!(
            is_oom(&b.receive(body_tx(1_000_001))),
            "redis is no longer full"
        );
    }
}

/// A `confirm` refused for memory applies nothing; made again once memory is freed, it applies
/// the block once, and a third time it is `AlreadyApplied`.
#[test]
fn a_confirm_refused_for_memory_applies_once_when_memory_is_back() {
    confirm_applies_once_when_memory_is_back(Headers::Redis7);
}

/// The same with scripts loaded as on Redis 6.2: `confirm`'s first write comes after all its
/// reads, so Redis refuses it there, before anything is stored.
#[test]
fn without_script_headers_a_confirm_refused_for_memory_applies_once_later() {
    confirm_applies_once_when_memory_is_back(Headers::AsOnRedis62);
}

fn confirm_applies_once_when_memory_is_back(headers: Headers) {
    capture_logs();
    let server = full_able_server();
    let prefix = "mem-confirm";
    let m = lone_watcher(node_config(&server, prefix, headers));
    let events = m.subscribe();
    for i in 0..3 {
        m.receive(body_tx(i)).expect("receive");
    }
    let inflight = [hash(0), hash(1), hash(2)];
    m.mark_inflight(&inflight).expect("mark_inflight");
    let mut admin = server.connection();
    let fillers = fill_with_fillers(&mut admin);
    let before = snapshot(&mut admin, prefix);

    let seen = [hash(0), hash(1)];
    for _ in 0..3 {
        let refused = m.confirm(&point(7), &seen, &[], 6, 2);
        assert!(is_oom(&refused), "{refused:?}");
    }
    let changed = changed_keys(&before, &snapshot(&mut admin, prefix));
    assert!(changed.is_empty(), "a refused confirm changed {changed:?}");
    assert_eq!(m.watcher_info().expect("watcher_info").applied_slot, None);
    assert_eq!(stage_of(&m, 0), MempoolTxStage::Propagated);

    // Memory back: the same call applies, once.
    let mut deleted = 0;
    for key in &fillers {
        deleted += int(&mut admin, &["DEL", key]);
    }
    assert_eq!(deleted, fillers.len() as u64);
    let (used, max) = memory(&mut admin);
    assert!(used + 512 * 1024 < max, "still full: {used} of {max}");
    assert_eq!(
        m.confirm(&point(7), &seen, &[], 6, 2).expect("confirm"),
        ConfirmOutcome::Applied
    );
    assert_eq!(
        m.confirm(&point(7), &seen, &[], 6, 2).expect("confirm"),
        ConfirmOutcome::AlreadyApplied
    );
    let status = m.check_status(&hash(0)).expect("status");
    assert_eq!(status.stage, MempoolTxStage::Confirmed);
    assert_eq!(status.confirmations, 1);
    assert_eq!(
        m.check_status(&hash(2)).expect("status").non_confirmations,
        1
    );
    let stats = m.stats().expect("stats");
    assert_eq!(stats.applied_blocks, 1);
    // The audit trail: exactly one BlockApplied, for slot 7.
    let mut blocks = Vec::new();
    let _ = wait_until(SETTLE / 10, || {
        while let Ok(event) = events.try_recv() {
            if let dolos_redis::MempoolEvent::BlockApplied { point: p, .. } = event {
                blocks.push(p);
            }
        }
        !blocks.is_empty()
    });
    assert_eq!(blocks, vec![point(7)]);
}
