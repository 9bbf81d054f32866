//! Bad configuration, bad data in Redis, Redis going away and hostile arguments: every case ends
//! in a typed error (never a panic, never a quiet `false`/empty/`Unknown`), and the password of a
//! Redis URL never leaks into Debug output, error messages or logs.

use dolos_redis_testkit as support;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use dolos_redis::{
    BlockHash, ChainPoint, Config, ConfirmOutcome, EraCbor, Error, MempoolTx, MempoolTxStage,
    RedisMempool, TxHash,
};
use support::{wait_until, RedisServer};

/// Lease TTL for tests that do not exercise the lease: long, so that the watcher flag cannot drop
/// halfway through a test on a loaded machine.
const LONG_TTL: Duration = Duration::from_secs(30);

/// Timeouts for the outage tests: short to keep them fast, far above what a healthy local Redis
/// needs.
const SHORT: Duration = Duration::from_millis(300);

/// How much later than its configured timeout a failing call may return on a loaded 2-core
/// machine (thread wake-ups, r2d2's retry back-off).
const SLACK: Duration = Duration::from_secs(2);

/// Bound for conditions that normally hold within milliseconds.
const SETTLE: Duration = Duration::from_secs(10);

use support::logs::{assert_never_shown, capture_logs};

// ---- helpers ----

fn hash(tag: u8, i: u32) -> TxHash {
    let mut b = [tag; 32];
    b[..4].copy_from_slice(&i.to_be_bytes());
    TxHash::from(b)
}

fn tx(h: TxHash) -> MempoolTx {
    MempoolTx::new(h, EraCbor(6, vec![0x84, 0xa0, 0x01]))
}

fn open(server: &RedisServer, prefix: &str) -> RedisMempool {
    let m = RedisMempool::open(
        Config::new(server.url())
            .key_prefix(prefix)
            .watcher_lock_ttl(LONG_TTL),
    )
    .unwrap();
    assert!(wait_until(SETTLE, || m.is_watcher()));
    m
}

/// A port on 127.0.0.1 where nothing listens (nothing did a moment ago, and ports are not reused
/// that quickly).
fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn raw_set(server: &RedisServer, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query::<()>(&mut server.connection())
        .unwrap();
}

fn raw_del(server: &RedisServer, key: &str) {
    redis::cmd("DEL")
        .arg(key)
        .query::<()>(&mut server.connection())
        .unwrap();
}

#[track_caller]
fn assert_wrong_type<T: std::fmt::Debug>(result: Result<T, Error>, key: &str) {
    match result {
        Err(Error::WrongType { key: k }) => assert_eq!(k, key),
        other => panic!("expected WrongType {{ key: {key:?} }}, got {other:?}"),
    }
}

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(result: Result<T, Error>, key: &str) {
    match result {
        Err(Error::Corrupt { key: k, detail }) => {
            assert_eq!(k, key, "detail: {detail}");
        }
        other => panic!("expected Corrupt {{ key: {key:?}, .. }}, got {other:?}"),
    }
}

// ---- invalid configuration ----

#[test]
fn invalid_config_is_rejected_at_open_naming_the_field_without_connecting() {
    capture_logs();
    // A listener that never accepts: a connection attempt would sit in its backlog, where a
    // non-blocking accept finds it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let base = || Config::new(url.clone());

    let cases: Vec<(&str, Config, &str)> = vec![
        (
            "ttl 0",
            base().watcher_lock_ttl(Duration::ZERO),
            "watcher_lock_ttl",
        ),
        (
            "ttl 10 ms",
            base().watcher_lock_ttl(Duration::from_millis(10)),
            "watcher_lock_ttl",
        ),
        ("pool size 0", base().pool_size(0), "pool_size"),
        ("max_finalized 0", base().max_finalized(0), "max_finalized"),
        ("max_pending 0", base().max_pending(0), "max_pending"),
        ("max_tx_size 0", base().max_tx_size(0), "max_tx_size"),
        ("empty url", Config::new(""), "url"),
        ("blank url", Config::new("   "), "url"),
        ("not a url", Config::new("not a url"), "url"),
        ("colons only", Config::new("redis://:::"), "url"),
        ("bad port", Config::new("redis://127.0.0.1:notaport"), "url"),
        ("http scheme", Config::new("http://localhost"), "url"),
        ("empty prefix", base().key_prefix(""), "key_prefix"),
        (
            "prefix with a space",
            base().key_prefix("dolos mempool"),
            "key_prefix",
        ),
        (
            "prefix with a newline",
            base().key_prefix("dolos\nmempool"),
            "key_prefix",
        ),
        (
            "command_timeout 0",
            base().command_timeout(Duration::ZERO),
            "command_timeout",
        ),
        (
            "connect_timeout 0",
            base().connect_timeout(Duration::ZERO),
            "connect_timeout",
        ),
    ];

    let mut failures = Vec::new();
    for (what, config, field) in cases {
        let started = Instant::now();
        let result = RedisMempool::open(config);
        let took = started.elapsed();
        match result {
            Err(Error::InvalidConfig(msg)) => {
                if !msg.contains(field) {
                    failures.push(format!("{what}: message {msg:?} does not name {field}"));
                }
                // Validation is pure computation; anything slow went to the network.
                if took > Duration::from_millis(500) {
                    failures.push(format!("{what}: took {took:?}"));
                }
            }
            Err(other) => failures.push(format!("{what}: expected InvalidConfig, got {other:?}")),
            Ok(m) => failures.push(format!("{what}: opened {m:?}")),
        }
    }
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => failures.push(format!("an invalid config connected (from {peer})")),
        Err(e) => panic!("accept: {e}"),
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Control: the same base config is valid, so the failures above come from the one field.
    assert!(base().validate().is_ok());
}

// ---- Redis down ----

#[test]
fn open_fails_within_the_connect_timeout_when_redis_is_down() {
    capture_logs();
    let timeout = Duration::from_millis(500);
    let url = format!("redis://127.0.0.1:{}", dead_port());
    let started = Instant::now();
    let err = RedisMempool::open(
        Config::new(url)
            .connect_timeout(timeout)
            .command_timeout(timeout),
    )
    .unwrap_err();
    let took = started.elapsed();
    println!("open against a closed port failed after {took:?}: {err}");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(took < timeout + SLACK, "took {took:?}");
}

#[test]
fn open_fails_within_the_timeouts_when_redis_hangs() {
    capture_logs();
    let server = RedisServer::start();
    // SIGSTOP: the kernel still completes TCP handshakes, but nothing answers.
    server.pause();
    let started = Instant::now();
    let result = RedisMempool::open(
        Config::new(server.url())
            .connect_timeout(SHORT)
            .command_timeout(SHORT),
    );
    let took = started.elapsed();
    server.resume();
    let err = result.unwrap_err();
    println!("open against a stopped server failed after {took:?}: {err}");
    assert!(err.is_transient(), "{err:?}");
    assert!(took < SHORT * 2 + SLACK, "took {took:?}");
}

#[test]
fn every_call_fails_while_redis_is_unreachable_then_recovers() {
    capture_logs();
    let mut server = RedisServer::start();
    let m = RedisMempool::open(
        Config::new(server.url())
            .key_prefix("down")
            .watcher_lock_ttl(LONG_TTL)
            .connect_timeout(SHORT)
            .command_timeout(SHORT),
    )
    .unwrap();
    assert!(wait_until(SETTLE, || m.is_watcher()));
    let a = hash(1, 0);
    m.receive(tx(a)).unwrap();
    m.mark_inflight(&[a]).unwrap();
    m.receive(tx(hash(1, 1))).unwrap();

    server.kill();

    let h = hash(1, 2);
    type Call<'a> = (&'a str, Box<dyn Fn() -> Result<String, Error> + 'a>);
    let calls: Vec<Call> = vec![
        // First, while the flag is surely still up (the TTL is long): the watcher's confirm
        // must reach Redis and fail, not report success.
        (
            "confirm",
            Box::new(|| {
                m.confirm(&ChainPoint::Slot(5), &[a], &[], 6, 2)
                    .map(|o| format!("{o:?}"))
            }),
        ),
        (
            "has_pending",
            Box::new(|| m.has_pending().map(|v| format!("{v:?}"))),
        ),
        (
            "peek_pending",
            Box::new(|| m.peek_pending(10).map(|v| format!("{v:?}"))),
        ),
        (
            "check_status",
            Box::new(|| m.check_status(&a).map(|v| format!("{v:?}"))),
        ),
        (
            "check_status (unknown)",
            Box::new(|| m.check_status(&h).map(|v| format!("{v:?}"))),
        ),
        (
            "dump_finalized",
            Box::new(|| m.dump_finalized(0, 10).map(|v| format!("{v:?}"))),
        ),
        (
            "receive",
            Box::new(|| m.receive(tx(h)).map(|v| format!("{v:?}"))),
        ),
        (
            "mark_inflight",
            Box::new(|| m.mark_inflight(&[h]).map(|v| format!("{v:?}"))),
        ),
        (
            "mark_acknowledged",
            Box::new(|| m.mark_acknowledged(&[a]).map(|v| format!("{v:?}"))),
        ),
        (
            "find_inflight",
            Box::new(|| m.find_inflight(&a).map(|v| format!("{v:?}"))),
        ),
        (
            "peek_inflight",
            Box::new(|| m.peek_inflight(10).map(|v| format!("{v:?}"))),
        ),
        (
            "watcher_info",
            Box::new(|| m.watcher_info().map(|v| format!("{v:?}"))),
        ),
    ];
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for (name, call) in &calls {
        let started = Instant::now();
        let result = call();
        let took = started.elapsed();
        slowest = slowest.max(took);
        match result {
            Ok(v) => failures.push(format!("{name}: Ok({v}) while redis is down")),
            Err(e) if !e.is_transient() => {
                failures.push(format!("{name}: {e:?} is not a connection error"))
            }
            Err(_) => {}
        }
        if took > SHORT + SLACK {
            failures.push(format!("{name}: took {took:?}"));
        }
    }
    println!("slowest failing call: {slowest:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Same port, empty data set, empty script cache: the pool reconnects and scripts reload.
    server.restart();
    assert!(
        wait_until(SETTLE, || m.has_pending().is_ok()),
        "calls keep failing after redis came back"
    );
    assert!(!m.has_pending().unwrap());
    m.receive(tx(h)).unwrap();
    assert_eq!(m.check_status(&h).unwrap().stage, MempoolTxStage::Pending);
    assert_eq!(m.peek_pending(10).unwrap().len(), 1);
}

#[test]
fn a_call_to_a_stalled_server_times_out_and_later_calls_get_their_own_replies() {
    capture_logs();
    let server = RedisServer::start();
    let m = RedisMempool::open(
        Config::new(server.url())
            .key_prefix("stalled")
            .pool_size(2)
            .watcher_lock_ttl(LONG_TTL)
            .connect_timeout(SHORT)
            .command_timeout(SHORT),
    )
    .unwrap();
    let a = hash(2, 0);
    m.receive(tx(a)).unwrap();

    server.pause();
    let started = Instant::now();
    let err = m.peek_pending(10).unwrap_err();
    let took = started.elapsed();
    let err2 = m.has_pending().unwrap_err();
    server.resume();
    println!("call to a stopped server failed after {took:?}: {err}");
    assert!(err.is_transient(), "{err:?}");
    assert!(err2.is_transient(), "{err2:?}");
    assert!(took < SHORT + SLACK, "took {took:?}");

    // The late replies to the timed-out calls are on connections that must have been thrown
    // away; if one were reused, a call below would read a reply meant for another.
    for _ in 0..5 {
        assert_eq!(
            m.check_status(&hash(2, 9)).unwrap().stage,
            MempoolTxStage::Unknown
        );
        assert!(m.has_pending().unwrap());
        let pending = m.peek_pending(10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].hash, a);
        assert!(m.watcher_info().unwrap().epoch >= 1);
    }
}

// ---- wrong types and corrupt data ----

#[test]
fn a_key_of_the_wrong_type_is_named_and_other_calls_keep_working() {
    capture_logs();
    let server = RedisServer::start();

    // `pending` as a string, while the queue is empty so nothing is lost.
    let prefix = "wrong-pending";
    let m = open(&server, prefix);
    let b = hash(3, 0);
    let c = hash(3, 1);
    m.receive(tx(b)).unwrap();
    m.mark_inflight(&[b]).unwrap();
    let key = format!("{prefix}:pending");
    raw_set(&server, &key, "x");

    assert_wrong_type(m.has_pending(), &key);
    assert_wrong_type(m.peek_pending(10), &key);
    assert_wrong_type(m.receive(tx(c)), &key);
    assert_wrong_type(m.mark_inflight(&[b]), &key);
    assert_wrong_type(m.confirm(&ChainPoint::Slot(1), &[b], &[], 6, 2), &key);
    // Calls that do not use the queue are unaffected, and the failed ones wrote nothing.
    assert_eq!(m.check_status(&c).unwrap().stage, MempoolTxStage::Unknown);
    let status = m.check_status(&b).unwrap();
    assert_eq!(status.stage, MempoolTxStage::Propagated);
    assert_eq!(status.non_confirmations, 0);
    assert_eq!(m.find_inflight(&b).unwrap().unwrap().hash, b);
    assert_eq!(m.peek_inflight(10).unwrap().len(), 1);
    m.mark_acknowledged(&[b]).unwrap();
    assert!(m.dump_finalized(0, 10).unwrap().items.is_empty());
    assert_eq!(m.watcher_info().unwrap().applied_slot, None);

    raw_del(&server, &key);
    assert!(!m.has_pending().unwrap());
    m.receive(tx(c)).unwrap();
    assert_eq!(m.peek_pending(10).unwrap()[0].hash, c);
    assert_eq!(
        m.confirm(&ChainPoint::Slot(1), &[b], &[], 6, 2).unwrap(),
        ConfirmOutcome::Applied
    );
    assert_eq!(m.check_status(&b).unwrap().confirmations, 1);

    // `txs` as a string, before anything was stored under this prefix.
    let prefix = "wrong-txs";
    let key = format!("{prefix}:txs");
    raw_set(&server, &key, "x");
    let m = open(&server, prefix);
    let d = hash(3, 2);
    assert_wrong_type(m.receive(tx(d)), &key);
    // Empty queues: these calls never reach `txs`, so they may answer truly (nothing there).
    assert!(matches!(m.peek_pending(10).as_deref(), Ok([])));
    assert!(matches!(m.peek_inflight(10).as_deref(), Ok([])));
    assert_wrong_type(m.mark_inflight(&[d]), &key);
    assert_wrong_type(m.mark_acknowledged(&[d]), &key);
    assert_wrong_type(m.find_inflight(&d), &key);
    assert_wrong_type(m.check_status(&d), &key);
    assert_wrong_type(m.confirm(&ChainPoint::Slot(1), &[d], &[], 6, 2), &key);
    assert!(!m.has_pending().unwrap());
    assert!(m.dump_finalized(0, 10).unwrap().items.is_empty());
    assert_eq!(m.watcher_info().unwrap().applied_slot, None);
    raw_del(&server, &key);
    m.receive(tx(d)).unwrap();
    assert_eq!(m.check_status(&d).unwrap().stage, MempoolTxStage::Pending);

    // The finalized log as a string.
    let prefix = "wrong-log";
    let key = format!("{prefix}:log");
    let m = open(&server, prefix);
    raw_set(&server, &key, "x");
    assert_wrong_type(m.dump_finalized(0, 10), &key);
    m.receive(tx(d)).unwrap();
    assert!(m.has_pending().unwrap());
    raw_del(&server, &key);
    assert!(m.dump_finalized(0, 10).unwrap().items.is_empty());
}

/// Every key of the layout, with whether Redis stores it as a string.
const LAYOUT: &[(&str, bool)] = &[
    ("watcher:lock", true),
    ("watcher:epoch", true),
    ("chain", false),
    ("height", true),
    ("txs", false),
    ("pending", false),
    ("inflight", false),
    ("unconfirmed", false),
    ("confirmed", false),
    ("log", false),
    ("log:seq", true),
    ("done", false),
    ("acked", true),
    ("events", false),
    ("events:seq", true),
    ("watcher:fence", true),
];

/// Whichever key holds the wrong type, every call either works or names that key; none fails
/// with a bare server error (a script that touched the key without checking its type first).
#[test]
fn any_key_of_the_wrong_type_is_named_by_every_call_that_fails() {
    capture_logs();
    let server = RedisServer::start();
    let mut failures = Vec::new();
    for (n, &(suffix, is_string)) in LAYOUT.iter().enumerate() {
        let prefix = format!("sweep{n}");
        let key = format!("{prefix}:{suffix}");
        let m = open(&server, &prefix);
        let h = |i| hash(7, i);
        let (p, i1, i2, f) = (h(0), h(1), h(2), h(3));
        for t in [p, i1, i2, f] {
            m.receive(tx(t)).unwrap();
        }
        m.mark_inflight(&[i1, i2, f]).unwrap();
        m.mark_acknowledged(&[i2]).unwrap();
        assert!(m
            .confirm(&ChainPoint::Slot(1), &[f], &[], 1, 5)
            .unwrap()
            .is_applied());
        assert!(m
            .confirm(&ChainPoint::Slot(2), &[i1], &[], 6, 5)
            .unwrap()
            .is_applied());

        let mut con = server.connection();
        redis::cmd("DEL").arg(&key).query::<()>(&mut con).unwrap();
        if is_string {
            redis::cmd("HSET")
                .arg(&key)
                .arg("f")
                .arg("v")
                .query::<()>(&mut con)
                .unwrap();
        } else {
            redis::cmd("SET")
                .arg(&key)
                .arg("x")
                .query::<()>(&mut con)
                .unwrap();
        }

        let calls: Vec<(&str, Result<String, Error>)> = vec![
            ("receive", m.receive(tx(h(4))).map(|v| format!("{v:?}"))),
            ("has_pending", m.has_pending().map(|v| format!("{v:?}"))),
            ("peek_pending", m.peek_pending(10).map(|v| format!("{v:?}"))),
            (
                "find_inflight",
                m.find_inflight(&i1).map(|v| format!("{v:?}")),
            ),
            (
                "peek_inflight",
                m.peek_inflight(10).map(|v| format!("{v:?}")),
            ),
            (
                "check_status p",
                m.check_status(&p).map(|v| format!("{v:?}")),
            ),
            (
                "check_status i1",
                m.check_status(&i1).map(|v| format!("{v:?}")),
            ),
            (
                "check_status f",
                m.check_status(&f).map(|v| format!("{v:?}")),
            ),
            (
                "check_status ?",
                m.check_status(&h(9)).map(|v| format!("{v:?}")),
            ),
            (
                "dump_finalized",
                m.dump_finalized(0, 10).map(|v| format!("{v:?}")),
            ),
            ("watcher_info", m.watcher_info().map(|v| format!("{v:?}"))),
            (
                "mark_inflight",
                m.mark_inflight(&[p]).map(|v| format!("{v:?}")),
            ),
            (
                "mark_acknowledged",
                m.mark_acknowledged(&[i1, i2]).map(|v| format!("{v:?}")),
            ),
            (
                "confirm",
                m.confirm(&ChainPoint::Slot(3), &[i2], &[], 6, 5)
                    .map(|v| format!("{v:?}")),
            ),
            (
                "confirm (rollback)",
                m.confirm(&ChainPoint::Slot(3), &[], &[i1], 6, 5)
                    .map(|v| format!("{v:?}")),
            ),
            (
                "confirm (finalize)",
                m.confirm(&ChainPoint::Slot(4), &[i2], &[], 1, 1)
                    .map(|v| format!("{v:?}")),
            ),
            (
                "reset_watcher_lock",
                m.reset_watcher_lock(Some("nobody"))
                    .map(|v| format!("{v:?}")),
            ),
        ];
        let mut named = 0;
        for (call, result) in calls {
            match result {
                Ok(_) => {}
                Err(Error::WrongType { key: k }) if k == key => named += 1,
                Err(e) => failures.push(format!("{key} broken: {call} -> {e:?}")),
            }
        }
        println!("{key}: {named} calls named it");
        // Every key is used by some call; none naming it means the layout changed under us.
        if named == 0 {
            failures.push(format!("{key} broken: no call noticed"));
        }
        // The lease thread may be failing on a broken lock key; do not wait for its release.
        m.abandon();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_corrupt_record_is_named_and_isolated() {
    capture_logs();
    let server = RedisServer::start();
    let prefix = "corrupt";
    let m = open(&server, prefix);
    let (a, b, c) = (hash(4, 0), hash(4, 1), hash(4, 2));
    for h in [a, b, c] {
        m.receive(tx(h)).unwrap();
    }
    m.mark_inflight(&[a, b]).unwrap();
    // D = 5 keeps `a` from being picked for dropping in the blocks below.
    assert!(m
        .confirm(&ChainPoint::Slot(10), &[b], &[], 6, 5)
        .unwrap()
        .is_applied());

    let txs_key = format!("{prefix}:txs");
    redis::cmd("HSET")
        .arg(&txs_key)
        .arg(a.to_hex())
        .arg("garbage")
        .query::<()>(&mut server.connection())
        .unwrap();
    let key = format!("{txs_key} {}", a.to_hex());
    let height = || -> Option<String> {
        redis::cmd("GET")
            .arg(format!("{prefix}:height"))
            .query(&mut server.connection())
            .unwrap()
    };
    let h_before = height();
    let b_before = m.check_status(&b).unwrap();
    assert_eq!(b_before.stage, MempoolTxStage::Confirmed);
    assert_eq!(b_before.confirmations, 1);

    assert_corrupt(m.check_status(&a), &key);
    assert_corrupt(m.find_inflight(&a), &key);
    assert_corrupt(m.peek_inflight(10), &key);
    assert_corrupt(m.mark_acknowledged(&[a]), &key);
    // A block that touches the corrupt record changes nothing at all.
    assert_corrupt(m.confirm(&ChainPoint::Slot(11), &[a, b], &[], 6, 5), &key);
    assert_eq!(height(), h_before);
    assert_eq!(m.check_status(&b).unwrap(), b_before);
    assert_eq!(m.watcher_info().unwrap().applied_slot, Some(10));
    assert!(m.dump_finalized(0, 10).unwrap().items.is_empty());

    // Other txs keep working, and so does a block that does not touch the corrupt record.
    assert_eq!(m.find_inflight(&b).unwrap().unwrap().confirmations, 1);
    assert_eq!(m.check_status(&c).unwrap().stage, MempoolTxStage::Pending);
    assert_eq!(m.peek_pending(10).unwrap()[0].hash, c);
    m.mark_inflight(&[c]).unwrap();
    m.mark_acknowledged(&[c]).unwrap();
    assert_eq!(
        m.check_status(&c).unwrap().stage,
        MempoolTxStage::Acknowledged
    );
    assert!(m
        .confirm(&ChainPoint::Slot(11), &[b], &[], 6, 5)
        .unwrap()
        .is_applied());
    assert_eq!(m.check_status(&b).unwrap().confirmations, 2);
}

/// Values that no script writes: each is reported as `Corrupt` naming where it sits, by the
/// calls that read it, and never taken for a valid state.
#[test]
fn corrupt_values_are_reported_not_acted_on() {
    capture_logs();
    let server = RedisServer::start();
    let setup = |prefix: &str| {
        let m = open(&server, prefix);
        let h = |i| hash(8, i);
        let (p, i1, f) = (h(0), h(1), h(2));
        for t in [p, i1, f] {
            m.receive(tx(t)).unwrap();
        }
        m.mark_inflight(&[i1, f]).unwrap();
        assert!(m
            .confirm(&ChainPoint::Slot(1), &[f], &[], 1, 5)
            .unwrap()
            .is_applied());
        (m, p, i1, f)
    };
    let run = |args: &[&str]| {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query::<()>(&mut server.connection()).unwrap();
    };
    let mut failures = Vec::new();
    let mut expect_corrupt = |what: &str, result: Result<String, Error>, key: &str| match result {
        Err(Error::Corrupt { key: k, .. }) if k == key => {}
        other => failures.push(format!(
            "{what}: expected Corrupt at {key:?}, got {other:?}"
        )),
    };

    // The applied-call counter.
    let (m, _, i1, _) = setup("corrupt-height");
    let key = "corrupt-height:height";
    run(&["SET", key, "many"]);
    expect_corrupt(
        "height: check_status",
        m.check_status(&i1).map(|v| format!("{v:?}")),
        key,
    );
    expect_corrupt(
        "height: find_inflight",
        m.find_inflight(&i1).map(|v| format!("{v:?}")),
        key,
    );
    expect_corrupt(
        "height: confirm",
        m.confirm(&ChainPoint::Slot(2), &[i1], &[], 6, 5)
            .map(|v| format!("{v:?}")),
        key,
    );

    // An entry of the applied chain that no script writes: read back as Corrupt, never as a
    // point.
    let (m, ..) = setup("corrupt-chain");
    let key = "corrupt-chain:chain";
    run(&["ZADD", key, "5", "garbage"]);
    expect_corrupt(
        "chain: watcher_info",
        m.watcher_info().map(|v| format!("{v:?}")),
        key,
    );
    expect_corrupt("chain: stats", m.stats().map(|v| format!("{v:?}")), key);
    expect_corrupt(
        "chain: applied_points",
        m.applied_points(10).map(|v| format!("{v:?}")),
        key,
    );

    // The epoch counter.
    let (m, ..) = setup("corrupt-epoch");
    let key = "corrupt-epoch:watcher:epoch";
    run(&["SET", key, "first"]);
    expect_corrupt(
        "epoch: watcher_info",
        m.watcher_info().map(|v| format!("{v:?}")),
        key,
    );

    // A pending tx whose record lost the separator before its body.
    let (m, p, ..) = setup("corrupt-payload");
    let key = format!("corrupt-payload:txs {}", p.to_hex());
    run(&["HSET", "corrupt-payload:txs", &p.to_hex(), "P|||6|"]);
    expect_corrupt(
        "payload: peek_pending",
        m.peek_pending(10).map(|v| format!("{v:?}")),
        &key,
    );

    // The index of the finalized log pointing at nonsense, and at an entry that is gone.
    let (m, _, _, f) = setup("corrupt-done");
    let key = format!("corrupt-done:done {}", f.to_hex());
    run(&["HSET", "corrupt-done:done", &f.to_hex(), "Fnot-a-sequence"]);
    expect_corrupt(
        "done: check_status (garbage)",
        m.check_status(&f).map(|v| format!("{v:?}")),
        &key,
    );
    run(&["HSET", "corrupt-done:done", &f.to_hex(), "F999"]);
    expect_corrupt(
        "done: check_status (gone)",
        m.check_status(&f).map(|v| format!("{v:?}")),
        &key,
    );

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- credentials ----

#[test]
fn the_password_never_shows_in_debug_errors_or_logs() {
    capture_logs();
    const SECRET: &str = "sekret-7f3a9c";
    const WRONG: &str = "wrong-pass-51d2e8";

    let mut shown: Vec<String> = Vec::new();

    // Debug of the config, and errors from validation and from a dead server.
    let dead = format!("redis://user:{SECRET}@127.0.0.1:{}", dead_port());
    let config = Config::new(dead.clone()).connect_timeout(SHORT);
    shown.push(format!("{config:?}"));
    shown.push(config.redacted_url());
    let err = RedisMempool::open(config).unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    shown.push(format!("{err} / {err:?}"));
    for bad in [
        Config::new(dead.clone()).key_prefix(""),
        Config::new(format!("redis://user:{SECRET}@127.0.0.1:notaport")),
        Config::new(format!("http://user:{SECRET}@127.0.0.1")),
        Config::new(format!("redis://{SECRET}@127.0.0.1:notaport")),
    ] {
        shown.push(format!("{bad:?}"));
        let err = RedisMempool::open(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
        shown.push(format!("{err} / {err:?}"));
    }

    // A server that really requires the password. Set at run time rather than with
    // `--requirepass` because the harness's readiness probe PINGs without credentials.
    let server = RedisServer::start();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(SECRET)
        .query::<()>(&mut server.connection())
        .unwrap();
    let port = server.port();
    let with_password = |userinfo: &str| {
        Config::new(format!("redis://{userinfo}@127.0.0.1:{port}"))
            .key_prefix("auth")
            .watcher_lock_ttl(Duration::from_secs(1))
            .connect_timeout(SHORT)
            .command_timeout(SHORT)
    };
    let m = RedisMempool::open(with_password(&format!(":{SECRET}"))).unwrap();
    let other = RedisMempool::open(with_password(&format!("default:{SECRET}"))).unwrap();
    assert!(wait_until(SETTLE, || m.is_watcher() || other.is_watcher()));
    m.receive(tx(hash(5, 0))).unwrap();
    assert_eq!(other.peek_pending(10).unwrap().len(), 1);
    shown.push(format!("{m:?}"));
    shown.push(format!("{other:?}"));
    shown.push(format!("{:?}", m.config()));
    shown.push(format!("{:?}", m.watcher_info().unwrap()));

    for userinfo in [format!(":{WRONG}"), format!("default:{WRONG}")] {
        let err = RedisMempool::open(with_password(&userinfo)).unwrap_err();
        shown.push(format!("{err} / {err:?}"));
    }
    let err = RedisMempool::open(
        Config::new(server.url())
            .connect_timeout(SHORT)
            .command_timeout(SHORT),
    )
    .unwrap_err();
    shown.push(format!("{err} / {err:?}"));

    // An outage (the server stops answering) makes the lease thread and the pool log their
    // failures; afterwards both reconnect with the password.
    let watcher = if m.is_watcher() { &m } else { &other };
    server.pause();
    let err = watcher.has_pending().unwrap_err();
    shown.push(format!("{err} / {err:?}"));
    let dropped = wait_until(SETTLE, || !watcher.is_watcher());
    server.resume();
    assert!(dropped, "the watcher flag stayed up through an outage");
    assert!(wait_until(SETTLE, || m.is_watcher() || other.is_watcher()));
    assert!(wait_until(SETTLE, || watcher.has_pending().is_ok()));
    drop(m);
    drop(other);

    assert_never_shown(&shown, &[SECRET, WRONG]);
}

#[test]
fn a_missing_or_wrong_password_is_a_fast_permanent_auth_error() {
    capture_logs();
    let server = RedisServer::start();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("needed-here")
        .query::<()>(&mut server.connection())
        .unwrap();
    let started = Instant::now();
    let err = RedisMempool::open(
        Config::new(server.url())
            .connect_timeout(SHORT)
            .command_timeout(SHORT),
    )
    .unwrap_err();
    let took = started.elapsed();
    println!("open without the password failed after {took:?}: {err:?}");
    // NOAUTH is the server refusing access: neither a connection problem to retry nor a
    // reply of an unexpected shape.
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("NOAUTH")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(took < SHORT + SLACK, "took {took:?}");

    let err = RedisMempool::open(
        Config::new(format!("redis://:wrong@127.0.0.1:{}", server.port()))
            .connect_timeout(SHORT)
            .command_timeout(SHORT),
    )
    .unwrap_err();
    println!("open with a wrong password: {err:?}");
    assert!(matches!(&err, Error::Auth(_)), "{err:?}");
    assert!(!err.is_transient());
    assert!(!err.to_string().contains("wrong"), "password leaked: {err}");
}

// ---- odd arguments ----

#[test]
fn odd_arguments_give_typed_errors_or_harmless_results() {
    capture_logs();
    let server = RedisServer::start();
    let m = RedisMempool::open(
        Config::new(server.url())
            .key_prefix("odd")
            .watcher_lock_ttl(LONG_TTL)
            .max_tx_size(100)
            .max_pending(3),
    )
    .unwrap();
    assert!(wait_until(SETTLE, || m.is_watcher()));
    let h = |i| hash(6, i);

    // Oversized payload: typed error, nothing stored.
    let big = MempoolTx::new(h(0), EraCbor(6, vec![0; 101]));
    assert_eq!(
        m.receive(big),
        Err(Error::TxTooLarge {
            size: 101,
            max: 100
        })
    );
    assert_eq!(
        m.check_status(&h(0)).unwrap().stage,
        MempoolTxStage::Unknown
    );
    assert!(!m.has_pending().unwrap());
    m.receive(MempoolTx::new(h(0), EraCbor(6, vec![0xff; 100])))
        .unwrap();
    // An empty payload is a payload too.
    m.receive(MempoolTx::new(h(1), EraCbor(0, Vec::new())))
        .unwrap();
    assert_eq!(m.find_inflight(&h(1)).unwrap(), None);
    assert_eq!(m.receive(tx(h(0))), Err(Error::DuplicateTx));

    // Full queue.
    m.receive(tx(h(2))).unwrap();
    assert_eq!(m.receive(tx(h(3))), Err(Error::MempoolFull { max: 3 }));
    assert_eq!(
        m.check_status(&h(3)).unwrap().stage,
        MempoolTxStage::Unknown
    );
    assert_eq!(m.peek_pending(usize::MAX).unwrap().len(), 3);

    // Duplicates inside one batch count once.
    m.mark_inflight(&[h(0), h(0), h(1), h(0)]).unwrap();
    let inflight: Vec<TxHash> = m
        .peek_inflight(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|t| t.hash)
        .collect();
    assert_eq!(inflight, vec![h(0), h(1)]);
    m.mark_acknowledged(&[h(0), h(0)]).unwrap();
    assert_eq!(
        m.check_status(&h(0)).unwrap().stage,
        MempoolTxStage::Acknowledged
    );
    assert!(m
        .confirm(&ChainPoint::Slot(1), &[h(0), h(0), h(0)], &[], 6, 5)
        .unwrap()
        .is_applied());
    assert_eq!(m.check_status(&h(0)).unwrap().confirmations, 1);
    assert_eq!(m.check_status(&h(1)).unwrap().non_confirmations, 1);

    // Empty batches.
    m.mark_inflight(&[]).unwrap();
    m.mark_acknowledged(&[]).unwrap();
    assert!(m
        .confirm(&ChainPoint::Slot(2), &[], &[], 6, 5)
        .unwrap()
        .is_applied());
    assert_eq!(m.check_status(&h(0)).unwrap().confirmations, 2);
    assert_eq!(m.check_status(&h(1)).unwrap().non_confirmations, 2);

    // Duplicates in `unseen` roll back once.
    assert!(m
        .confirm(&ChainPoint::Slot(2), &[], &[h(1), h(1)], 6, 5)
        .unwrap()
        .is_applied());
    let pending: Vec<TxHash> = m
        .peek_pending(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|t| t.hash)
        .collect();
    assert_eq!(pending, vec![h(2), h(1)]);

    // Limits 0 and usize::MAX, cursors 0 and u64::MAX.
    assert!(m.peek_pending(0).unwrap().is_empty());
    assert!(m.peek_inflight(0).unwrap().is_empty());
    assert_eq!(m.peek_inflight(usize::MAX).unwrap().len(), 1);
    let page = m.dump_finalized(0, 0).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next_cursor, None);
    let page = m.dump_finalized(u64::MAX, usize::MAX).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next_cursor, None);

    // Extreme thresholds: nothing finalizes or drops, nothing overflows.
    assert!(m
        .confirm(&ChainPoint::Slot(4), &[h(0)], &[], u32::MAX, u32::MAX)
        .unwrap()
        .is_applied());
    assert_eq!(
        m.check_status(&h(0)).unwrap().stage,
        MempoolTxStage::Confirmed
    );
    // Finalize at F = 1 so the log has one entry; then page through it with odd limits.
    assert!(m
        .confirm(&ChainPoint::Slot(5), &[], &[], 1, u32::MAX)
        .unwrap()
        .is_applied());
    assert_eq!(
        m.check_status(&h(0)).unwrap().stage,
        MempoolTxStage::Finalized
    );
    let page = m.dump_finalized(0, 0).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next_cursor, Some(1));
    let page = m.dump_finalized(0, usize::MAX).unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.next_cursor, None);
    // A slot at the top of the range.
    assert!(m
        .confirm(&ChainPoint::Slot(u64::MAX), &[], &[], 6, 5)
        .unwrap()
        .is_applied());
    assert_eq!(m.watcher_info().unwrap().applied_slot, Some(u64::MAX));
    assert_eq!(
        m.confirm(&ChainPoint::Slot(u64::MAX), &[], &[], 6, 5)
            .unwrap(),
        ConfirmOutcome::AlreadyApplied
    );

    // Unknown hashes: ignored, never invented.
    let unknown = h(99);
    assert_eq!(
        m.check_status(&unknown).unwrap().stage,
        MempoolTxStage::Unknown
    );
    assert_eq!(m.find_inflight(&unknown).unwrap(), None);
    m.mark_inflight(&[unknown]).unwrap();
    m.mark_acknowledged(&[unknown]).unwrap();
    assert!(m
        .confirm(&ChainPoint::Slot(6), &[unknown], &[], 6, 5)
        .unwrap()
        .is_applied());
    assert!(m
        .confirm(&ChainPoint::Slot(6), &[], &[h(98)], 6, 5)
        .unwrap()
        .is_applied());
    assert_eq!(
        m.check_status(&unknown).unwrap().stage,
        MempoolTxStage::Unknown
    );
    assert_eq!(
        m.check_status(&h(98)).unwrap().stage,
        MempoolTxStage::Unknown
    );
    assert_eq!(m.find_inflight(&unknown).unwrap(), None);
}

#[test]
fn hash_parsing_rejects_bad_input_without_panicking() {
    let good = "ab".repeat(32);
    assert_eq!(good.parse::<TxHash>().unwrap(), TxHash::from([0xab; 32]));
    assert_eq!(
        good.to_uppercase().parse::<TxHash>().unwrap(),
        TxHash::from([0xab; 32])
    );
    let bad = [
        String::new(),
        "ab".into(),
        "a".repeat(63),
        "a".repeat(65),
        "a".repeat(128),
        "zz".repeat(32),
        format!("0x{}", "a".repeat(62)),
        format!(" {}", "a".repeat(63)),
        format!("{}\n", "a".repeat(63)),
        format!("+{}", "a".repeat(63)),
        format!("-{}", "a".repeat(63)),
        // Multi-byte characters: 64 bytes but fewer characters, or 64 characters but more bytes,
        // and a character straddling a byte pair.
        "é".repeat(32),
        format!("é{}", "a".repeat(62)),
        format!("a{}", "é".repeat(31)) + "a",
        "é".repeat(64),
        format!("{}€", "a".repeat(61)),
        "🦀".repeat(16),
        "\0".repeat(64),
    ];
    for s in &bad {
        match s.parse::<TxHash>() {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(h) => panic!("{s:?} parsed as {h}"),
        }
        assert!(
            s.parse::<BlockHash>().is_err(),
            "{s:?} parsed as a block hash"
        );
    }
}
