//! Every mempool call costs one round trip: exactly one top-level command reaches the server.
//!
//! The proof watches the server with `MONITOR`. Commands a script runs show up there as
//! `[0 lua]` and are not round trips, so they are skipped (`INFO commandstats` would count them
//! and over-count). Each call is fenced by two `ECHO` markers sent from a helper connection; the
//! call has returned before the closing marker is sent, and the server executes commands one at
//! a time, so every command the call sent shows up between the two markers. Only commands from
//! the pool's connections are counted: `CLIENT LIST` tells them apart from the lease thread's
//! and the wake subscriber's by the names the library gives its connections.

use dolos_redis_testkit as support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dolos_redis::{
    ChainPoint, Config, ConfirmOutcome, EraCbor, MempoolTx, MempoolTxStage, RedisMempool, TxHash,
};
use support::{wait_until, RedisServer};

/// Long enough that the lease thread renews (every TTL/3) at most once during the test; its
/// commands are filtered out anyway, this just keeps the monitor stream small.
const TTL: Duration = Duration::from_secs(30);

/// Bound for things that normally take milliseconds (a marker reaching the monitor).
const SETTLE: Duration = Duration::from_secs(10);

const HELPER_NAME: &str = "round-trips-helper";

/// One line of the `MONITOR` stream.
#[derive(Clone, Debug)]
struct Seen {
    /// `ip:port` of the client, or `lua` for commands run inside a script.
    addr: String,
    /// The command name, upper-cased.
    cmd: String,
    /// The first argument, if any (enough to recognise markers and subcommands).
    arg: Option<String>,
}

/// Splits `1700000000.123456 [0 127.0.0.1:54321] "EVALSHA" "ab.." ...`.
fn parse_monitor_line(line: &str) -> Option<Seen> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let (_db, addr) = line[open + 1..close].split_once(' ')?;
    let mut tokens = quoted_tokens(&line[close + 1..]);
    let cmd = tokens.next()?.to_ascii_uppercase();
    Some(Seen {
        addr: addr.to_string(),
        cmd,
        arg: tokens.next(),
    })
}

/// The double-quoted tokens of a monitor line, escapes left as they are (markers, command names
/// and subcommands contain none).
fn quoted_tokens(s: &str) -> impl Iterator<Item = String> + '_ {
    let mut rest = s;
    std::iter::from_fn(move || {
        let start = rest.find('"')? + 1;
        let mut end = start;
        let bytes = rest.as_bytes();
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        let token = rest.get(start..end.min(rest.len()))?.to_string();
        rest = rest.get(end + 1..).unwrap_or("");
        Some(token)
    })
}

/// A `MONITOR` session read by a background thread into a shared list.
struct Monitor {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Monitor {
    fn start(server: &RedisServer) -> Monitor {
        let mut stream = TcpStream::connect(server.addr()).expect("connect monitor");
        stream.write_all(b"*1\r\n$7\r\nMONITOR\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        assert_eq!(first.trim_end(), "+OK", "MONITOR refused");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        // Ends when the server dies at the end of the test (EOF).
        std::thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        // MONITOR escapes binary arguments, so one event is one line.
                        let text = line.trim_end().trim_start_matches('+');
                        if let Some(s) = parse_monitor_line(text) {
                            sink.lock().unwrap().push(s);
                        }
                    }
                }
            }
        });
        Monitor { seen }
    }

    fn position_of_marker(&self, marker: &str) -> Option<usize> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .position(|s| s.cmd == "ECHO" && s.arg.as_deref() == Some(marker))
    }
}

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
    markers: usize,
}

impl Meter {
    fn new(server: &RedisServer) -> Meter {
        let monitor = Monitor::start(server);
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
            markers: 0,
        }
    }

    /// Reloads the address → role map from `CLIENT LIST`.
    fn refresh_roles(&mut self) {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut self.helper)
            .unwrap();
        for line in list.lines() {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            };
            let (Some(addr), Some(name)) = (field("addr"), field("name")) else {
                continue;
            };
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
            self.roles.insert(addr.to_string(), role);
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

    fn marker(&mut self, tag: &str) -> String {
        let marker = format!("round-trip-{}-{tag}", self.markers);
        let echoed: String = redis::cmd("ECHO")
            .arg(&marker)
            .query(&mut self.helper)
            .unwrap();
        assert_eq!(echoed, marker);
        marker
    }

    /// Runs `call` between two markers and returns its result with the top-level commands the
    /// pool sent meanwhile.
    fn measure<T>(&mut self, call: impl FnOnce() -> T) -> (T, Vec<Seen>) {
        self.markers += 1;
        let begin = self.marker("begin");
        let out = call();
        let end = self.marker("end");
        assert!(
            wait_until(SETTLE, || self.monitor.position_of_marker(&end).is_some()),
            "marker {end} never reached the monitor"
        );
        let window: Vec<Seen> = {
            let seen = self.monitor.seen.lock().unwrap();
            let from = seen
                .iter()
                .position(|s| s.cmd == "ECHO" && s.arg.as_deref() == Some(begin.as_str()))
                .expect("begin marker seen");
            let to = seen
                .iter()
                .position(|s| s.cmd == "ECHO" && s.arg.as_deref() == Some(end.as_str()))
                .expect("end marker seen");
            seen[from + 1..to].to_vec()
        };
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
        (out, pool)
    }
}

fn hash(i: u32) -> TxHash {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&i.to_be_bytes());
    b[31] = 0x5a;
    TxHash::from(b)
}

fn tx(i: u32) -> MempoolTx {
    // Bytes that MONITOR has to escape, to show binary payloads do not confuse the count.
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

#[test]
fn each_call_is_one_round_trip() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "round-trips";
    // Two pooled connections: r2d2 opens both in `open` and, with min_idle equal to the pool
    // size, never opens more while they stay healthy, so no connection set-up can land inside a
    // measured window.
    let config = || {
        Config::new(server.url())
            .key_prefix(prefix)
            .pool_size(2)
            .watcher_lock_ttl(TTL)
    };
    let watcher = RedisMempool::open(config()).unwrap();
    assert!(wait_until(SETTLE, || watcher.is_watcher()));
    let follower = RedisMempool::open(config()).unwrap();
    assert!(!follower.is_watcher());

    // Started after open, so the scripts' SCRIPT LOAD is behind us: the steady state is measured.
    let mut meter = Meter::new(&server);
    meter.refresh_roles();

    // Warm-up, unmeasured: 119 txs in; every pooled connection used at least once.
    for i in 0..119 {
        watcher.receive(tx(i)).unwrap();
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

    let (r, c) = meter.measure(|| watcher.receive(tx(119)));
    r.unwrap();
    row("receive", 1, c);

    let (r, c) = meter.measure(|| watcher.has_pending());
    assert!(r.unwrap());
    row("has_pending", 1, c);

    let (r, c) = meter.measure(|| watcher.peek_pending(50));
    assert_eq!(r.unwrap().len(), 50);
    row("peek_pending(50)", 1, c);

    let (r, c) = meter.measure(|| watcher.mark_inflight(&first50));
    r.unwrap();
    row("mark_inflight(50)", 1, c);

    let (r, c) = meter.measure(|| watcher.mark_acknowledged(&first50));
    r.unwrap();
    row("mark_acknowledged(50)", 1, c);

    let (r, c) = meter.measure(|| watcher.find_inflight(&hash(7)));
    assert_eq!(r.unwrap().unwrap().stage, MempoolTxStage::Acknowledged);
    row("find_inflight", 1, c);

    let (r, c) = meter.measure(|| watcher.peek_inflight(100));
    assert_eq!(r.unwrap().len(), 50);
    row("peek_inflight(100)", 1, c);

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

    let (r, c) = meter.measure(|| watcher.dump_finalized(0, 100));
    let page = r.unwrap();
    assert_eq!(page.items.len(), 50);
    assert_eq!(page.next_cursor, None);
    row("dump_finalized(0, 100)", 1, c);

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
        "\n{:<28} {:>8} {:>8}  commands",
        "call", "expected", "measured"
    );
    for r in &rows {
        let names: Vec<String> = r
            .commands
            .iter()
            .map(|s| match &s.arg {
                Some(a) if s.cmd == "SCRIPT" || s.cmd == "CLIENT" => format!("{} {a}", s.cmd),
                _ => s.cmd.clone(),
            })
            .collect();
        println!(
            "{:<28} {:>8} {:>8}  {}",
            r.call,
            r.expected,
            r.commands.len(),
            names.join(", ")
        );
    }

    let mut failures = Vec::new();
    for r in &rows {
        if r.commands.len() != r.expected {
            failures.push(format!(
                "{}: {} commands, expected {}: {:?}",
                r.call,
                r.commands.len(),
                r.expected,
                r.commands
            ));
        }
        // Scripts were loaded at open, so the steady state is EVALSHA alone: no SCRIPT LOAD,
        // no EVAL with the source, and no PING when a connection is checked out.
        for s in &r.commands {
            if s.cmd != "EVALSHA" {
                failures.push(format!(
                    "{}: sent {} (expected only EVALSHA)",
                    r.call, s.cmd
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Across the whole run (warm-up included), the pool never pinged.
    let all: Vec<Seen> = meter.monitor.seen.lock().unwrap().clone();
    for s in all.iter().filter(|s| s.addr != "lua") {
        if s.cmd == "PING" {
            assert_ne!(meter.role(&s.addr), Role::Pool, "the pool sent PING");
        }
    }
    drop(follower);
    drop(watcher);
}

#[test]
fn monitor_lines_parse() {
    let s = parse_monitor_line(r#"1700000000.123456 [0 127.0.0.1:54321] "EVALSHA" "abc\"def" "x""#)
        .unwrap();
    assert_eq!(s.addr, "127.0.0.1:54321");
    assert_eq!(s.cmd, "EVALSHA");
    assert_eq!(s.arg.as_deref(), Some(r#"abc\"def"#));
    let s = parse_monitor_line(r#"1700000000.123456 [0 lua] "hget" "k" "f""#).unwrap();
    assert_eq!(s.addr, "lua");
    assert_eq!(s.cmd, "HGET");
    assert_eq!(s.arg.as_deref(), Some("k"));
}
