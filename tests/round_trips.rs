//! Every mempool call costs one round trip: exactly one top-level command reaches the server (a
//! script, or for a read that one command answers atomically, that command). The one exception
//! is by design: a read of more than 32 pending or inflight txs goes as plain commands, two
//! round trips a page (the hashes, then the bodies), and those are checked command by command.
//!
//! The proof watches the server with `MONITOR`. Commands a script runs show up there as
//! `[0 lua]` and are not round trips, so they are skipped (`INFO commandstats` would count them
//! and over-count). Each call is fenced by two `ECHO` markers sent from a helper connection; the
//! call has returned before the closing marker is sent, and the server executes commands one at
//! a time, so every command the call sent shows up between the two markers. Only commands from
//! the pool's connections are counted: `CLIENT LIST` tells them apart from the lease thread's
//! and the wake subscriber's by the names the library gives its connections.

mod common;
use dolos_redis_testkit as support;

use std::collections::HashMap;
use std::time::Duration;

use common::{config, hash, lone_watcher, open};
use dolos_redis::{ChainPoint, ConfirmOutcome, EraCbor, MempoolTx, MempoolTxStage, TxHash};
use support::monitor::{client_names, round_trips, Monitor, Seen};
use support::RedisServer;

/// Long enough that the lease thread renews (every TTL/3) at most once during the test; its
/// commands are filtered out anyway, this just keeps the monitor stream small.
const TTL: Duration = Duration::from_secs(30);

const HELPER_NAME: &str = "round-trips-helper";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Pool,
    Lease,
    Wake,
    Helper,
}

/// Measures calls between markers and attributes commands to connection roles.
struct Meter {
    monitor: Monitor,
    helper: redis::Connection,
    roles: HashMap<String, Role>,
}

impl Meter {
    fn new(server: &RedisServer) -> Meter {
        let mut monitor = Monitor::on(server);
        // For the check over the whole run, between the measured windows too.
        monitor.keep_everything();
        let mut helper = server.connection();
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(HELPER_NAME)
            .query::<()>(&mut helper)
            .unwrap();
        Meter {
            monitor,
            helper,
            roles: HashMap::new(),
        }
    }

    /// Reloads the address → role map from `CLIENT LIST`.
    fn refresh_roles(&mut self) {
        for (addr, name) in client_names(&mut self.helper) {
            let role = if name == HELPER_NAME {
                Role::Helper
            } else if !name.starts_with("dolos-redis:") {
                continue;
            } else if name.ends_with(":pool") {
                Role::Pool
            } else if name.ends_with(":lease") {
                Role::Lease
            } else if name.ends_with(":wake") {
                Role::Wake
            } else {
                continue;
            };
            self.roles.insert(addr, role);
        }
    }

    fn role(&mut self, addr: &str) -> Role {
        if !self.roles.contains_key(addr) {
            self.refresh_roles();
        }
        *self.roles.get(addr).unwrap_or_else(|| {
            panic!("a command came from {addr}, which is no named connection of ours")
        })
    }

    /// Runs `call` between two markers and returns its result with the top-level commands the
    /// pool sent meanwhile.
    fn measure<T>(&mut self, call: impl FnOnce() -> T) -> (T, Vec<Seen>) {
        let mut call = Some(call);
        let mut out = None;
        let window = self.monitor.window(&mut self.helper, &mut || {
            out = call.take().map(|f| f());
        });
        let mut pool = Vec::new();
        for s in window {
            // Commands run by a script are part of the script's single round trip.
            if s.addr == "lua" {
                continue;
            }
            if self.role(&s.addr) == Role::Pool {
                pool.push(s);
            }
        }
        (out.expect("the measured call ran"), pool)
    }
}

/// A tx whose body holds bytes that MONITOR has to escape, to show binary payloads do not
/// confuse the count.
fn escaped_tx(i: u32) -> MempoolTx {
    MempoolTx::new(
        hash(i),
        EraCbor(6, vec![0x84, b'\r', b'\n', b'"', 0, 0xff, i as u8]),
    )
}

struct Row {
    call: &'static str,
    expected: usize,
    commands: Vec<Seen>,
}

impl Row {
    fn round_trips(&self) -> usize {
        round_trips(&self.commands)
    }
}

/// The commands a call sends: a script (`EVALSHA`), or for the reads one plain command answers
/// atomically, that command; for a large read, its plain commands in order.
fn commands_of(call: &str, n: usize) -> Vec<&'static str> {
    match call {
        c if c.starts_with("has_pending") || c.starts_with("control") => vec!["ZCARD"; n],
        c if c.starts_with("dump_finalized (plain)") => {
            vec![
                "MULTI", "HGET", "ZRANGE", "EXEC", "MULTI", "XRANGE", "XRANGE", "ZRANGE", "HGET",
                "HMGET", "EXEC",
            ]
        }
        c if c.starts_with("applied_points") => vec!["ZRANGE"; n],
        c if c.starts_with("peek_pending (plain)") => vec!["ZRANGE", "HMGET"],
        c if c.starts_with("peek_inflight (plain)") => {
            vec![
                "MULTI", "ZRANGE", "HGET", "ZRANGE", "ZRANGE", "EXEC", "HMGET",
            ]
        }
        _ => vec!["EVALSHA"; n],
    }
}

#[test]
fn each_call_is_one_round_trip() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "round-trips";
    // Two pooled connections: r2d2 opens both in `open` and, with min_idle equal to the pool
    // size, never opens more while they stay healthy, so no connection set-up can land inside a
    // measured window.
    let config = || config(&server, prefix).pool_size(2).watcher_lock_ttl(TTL);
    let watcher = lone_watcher(config());
    let follower = open(config());
    assert!(!follower.is_watcher());

    // Started after open, so the scripts' SCRIPT LOAD is behind us: the steady state is measured.
    let mut meter = Meter::new(&server);
    meter.refresh_roles();

    // Warm-up, unmeasured: 119 txs in; every pooled connection used at least once.
    for i in 0..119 {
        watcher.receive(escaped_tx(i)).unwrap();
    }
    follower.has_pending().unwrap();
    follower.has_pending().unwrap();

    let first50: Vec<TxHash> = (0..50).map(hash).collect();
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |call: &'static str, expected: usize, commands: Vec<Seen>| {
        rows.push(Row {
            call,
            expected,
            commands,
        })
    };

    let (r, c) = meter.measure(|| watcher.receive(escaped_tx(119)));
    r.unwrap();
    row("receive", 1, c);

    let (r, c) = meter.measure(|| watcher.has_pending());
    assert!(r.unwrap());
    row("has_pending", 1, c);

    let (r, c) = meter.measure(|| watcher.peek_pending(32));
    assert_eq!(r.unwrap().len(), 32);
    row("peek_pending(32)", 1, c);

    let (r, c) = meter.measure(|| watcher.peek_pending(50));
    assert_eq!(r.unwrap().len(), 50);
    row("peek_pending (plain) 50", 2, c);

    let (r, c) = meter.measure(|| watcher.mark_inflight(&first50));
    r.unwrap();
    row("mark_inflight(50)", 1, c);

    let (r, c) = meter.measure(|| watcher.mark_acknowledged(&first50));
    r.unwrap();
    row("mark_acknowledged(50)", 1, c);

    let (r, c) = meter.measure(|| watcher.find_inflight(&hash(7)));
    assert_eq!(r.unwrap().unwrap().stage, MempoolTxStage::Acknowledged);
    row("find_inflight", 1, c);

    let (r, c) = meter.measure(|| watcher.peek_inflight(32));
    assert_eq!(r.unwrap().len(), 32);
    row("peek_inflight(32)", 1, c);

    let (r, c) = meter.measure(|| watcher.peek_inflight(100));
    assert_eq!(r.unwrap().len(), 50);
    row("peek_inflight (plain) 100", 2, c);

    let (r, c) = meter.measure(|| watcher.check_status(&hash(60)));
    assert_eq!(r.unwrap().stage, MempoolTxStage::Pending);
    row("check_status (pending)", 1, c);

    let (r, c) = meter.measure(|| watcher.check_status(&hash(7)));
    assert_eq!(r.unwrap().stage, MempoolTxStage::Acknowledged);
    row("check_status (inflight)", 1, c);

    let (r, c) = meter.measure(|| watcher.check_status(&hash(10_000)));
    assert_eq!(r.unwrap().stage, MempoolTxStage::Unknown);
    row("check_status (unknown)", 1, c);

    // F = 1: the block finalizes all 50, which fills the finalized log in the same script.
    let (r, c) = meter.measure(|| watcher.confirm(&ChainPoint::Slot(100), &first50, &[], 1, 2));
    assert_eq!(r.unwrap(), ConfirmOutcome::Applied);
    row("confirm (watcher, 50 seen)", 1, c);

    let (r, c) = meter.measure(|| watcher.check_status(&hash(7)));
    assert_eq!(r.unwrap().stage, MempoolTxStage::Finalized);
    row("check_status (finalized)", 1, c);

    let (r, c) = meter.measure(|| watcher.dump_finalized(0, 32));
    let page = r.unwrap();
    assert_eq!(page.items.len(), 32);
    assert_eq!(page.next_cursor, Some(33));
    row("dump_finalized(0, 32)", 1, c);

    let (r, c) = meter.measure(|| watcher.dump_finalized(0, 100));
    let page = r.unwrap();
    assert_eq!(page.items.len(), 50);
    assert_eq!(page.next_cursor, None);
    row("dump_finalized (plain) (0, 100)", 2, c);

    let (r, c) = meter.measure(|| watcher.watcher_info());
    assert!(r.unwrap().is_self);
    row("watcher_info", 1, c);

    let (r, c) = meter.measure(|| watcher.confirm(&ChainPoint::Slot(100), &[], &[], 1, 2));
    assert_eq!(r.unwrap(), ConfirmOutcome::AlreadyApplied);
    row("confirm (replay)", 1, c);

    let (r, c) = meter.measure(|| watcher.applied_points(usize::MAX));
    assert_eq!(r.unwrap(), vec![ChainPoint::Slot(100)]);
    row("applied_points", 1, c);

    let (r, c) = meter.measure(|| watcher.rollback_to(&ChainPoint::Origin));
    assert_eq!(r.unwrap(), ConfirmOutcome::Applied);
    row("rollback_to(Origin)", 1, c);

    let (r, c) = meter.measure(|| follower.rollback_to(&ChainPoint::Origin));
    assert_eq!(r.unwrap(), ConfirmOutcome::NotWatcher);
    row("rollback_to (not watcher)", 0, c);

    let (r, c) = meter.measure(|| watcher.applied_points(0));
    assert!(r.unwrap().is_empty());
    row("applied_points(0)", 0, c);

    let (r, c) = meter.measure(|| follower.confirm(&ChainPoint::Slot(101), &[hash(60)], &[], 1, 2));
    assert_eq!(r.unwrap(), ConfirmOutcome::NotWatcher);
    row("confirm (not watcher)", 0, c);

    let (r, c) = meter.measure(|| watcher.mark_inflight(&[]));
    r.unwrap();
    row("mark_inflight(empty)", 0, c);

    let (r, c) = meter.measure(|| watcher.mark_acknowledged(&[]));
    r.unwrap();
    row("mark_acknowledged(empty)", 0, c);

    let (r, c) = meter.measure(|| watcher.peek_pending(0));
    assert!(r.unwrap().is_empty());
    row("peek_pending(0)", 0, c);

    let (r, c) = meter.measure(|| watcher.peek_inflight(0));
    assert!(r.unwrap().is_empty());
    row("peek_inflight(0)", 0, c);

    // Control: the meter sees every command, not just the first one of a window.
    let (r, c) = meter.measure(|| (watcher.has_pending(), follower.has_pending()));
    assert!(r.0.is_ok() && r.1.is_ok());
    row("control: two calls", 2, c);

    println!(
        "\n{:<28} {:>8} {:>8}  commands (round trips expected, measured)",
        "call", "expected", "measured"
    );
    for r in &rows {
        let names: Vec<String> = r
            .commands
            .iter()
            .map(|s| match s.cmd.as_str() {
                "SCRIPT" | "CLIENT" => format!("{} {}", s.cmd, s.arg),
                _ => s.cmd.clone(),
            })
            .collect();
        println!(
            "{:<28} {:>8} {:>8}  {}",
            r.call,
            r.expected,
            r.round_trips(),
            names.join(", ")
        );
    }

    let mut failures = Vec::new();
    for r in &rows {
        if r.round_trips() != r.expected {
            failures.push(format!(
                "{}: {} round trips, expected {}: {:?}",
                r.call,
                r.round_trips(),
                r.expected,
                r.commands
            ));
        }
        // Scripts were loaded at open, so the steady state is EVALSHA alone: no SCRIPT LOAD,
        // no EVAL with the source, and no PING when a connection is checked out.
        let sent: Vec<&str> = r.commands.iter().map(|s| s.cmd.as_str()).collect();
        let expected = commands_of(r.call, sent.len());
        if sent != expected {
            failures.push(format!("{}: sent {sent:?} (expected {expected:?})", r.call));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Across the whole run (warm-up included), the pool never pinged.
    let all = meter.monitor.everything(&mut meter.helper);
    for s in all.iter().filter(|s| s.addr != "lua") {
        if s.cmd == "PING" {
            assert_ne!(meter.role(&s.addr), Role::Pool, "the pool sent PING");
        }
    }
    drop(follower);
    drop(watcher);
}
