//! Faults between the nodes and Redis: the watcher's link cut (swallowed or refused) through a
//! [`FaultProxy`], the server killed and restarted, the server frozen (SIGSTOP), `open` against
//! an address that does not answer, every call made while Redis is away, and calls to a stalled
//! server whose late replies must not reach later calls.
//!
//! The lease must keep its invariant through all of them: a watcher's flag goes down before its
//! lock can expire on the server, so no two nodes ever believe they are watcher at once; calls
//! fail with a transient error within about the configured timeouts instead of hanging or
//! panicking, and everything works again once Redis is back.

mod common;
use dolos_redis_testkit as support;

use std::time::{Duration, Instant};

use common::{
    assert_never_two_watchers, closed_port, config_with, expect_transient, hash, lock_holder,
    lone_watcher, settle_single_watcher, stage_of, tx, wait_for_renewal, Endpoint, LONG_TTL,
    SAMPLE_EVERY, SETTLE,
};
use dolos_redis::{
    ChainPoint, Config, ConfirmOutcome, Error, MempoolTxStage, RedisMempool, TxHash,
};
use support::{wait_until, FaultProxy, RedisServer, ServerOptions};

const TTL: Duration = Duration::from_secs(1);

/// Connect and command timeout of every node: well under the TTL, so that a hung call cannot
/// outlive a lease period.
const IO_TIMEOUT: Duration = Duration::from_millis(250);

/// CI bound for a call that should fail within about [`IO_TIMEOUT`] (r2d2 may retry connecting
/// for up to the connect timeout on top of a command timeout).
const CALL_BOUND: Duration = Duration::from_secs(2);

fn node_config(at: &impl Endpoint, prefix: &str) -> Config {
    config_with(at, prefix, TTL, IO_TIMEOUT)
}

/// Opening makes several connections; on a machine loaded by other test binaries that can take
/// longer than the short timeouts the faults are measured with.
const OPEN_ATTEMPTS: usize = 5;

fn open_node(at: &impl Endpoint, prefix: &str) -> RedisMempool {
    let mut last = None;
    for _ in 0..OPEN_ATTEMPTS {
        match RedisMempool::open(node_config(at, prefix)) {
            Ok(m) => return m,
            Err(e) if e.is_transient() => last = Some(e),
            Err(e) => panic!("open: {e:?}"),
        }
    }
    panic!("open: {last:?}")
}

/// Watches `node`'s flag from another thread, so that slow calls on the test thread do not
/// delay noticing when it goes down; `join` returns the instant it was first seen down.
fn watch_flag_drop(node: &RedisMempool) -> std::thread::JoinHandle<Option<Instant>> {
    let node = node.clone();
    std::thread::spawn(move || {
        let end = Instant::now() + TTL + SETTLE;
        while Instant::now() < end {
            if !node.is_watcher() {
                return Some(Instant::now());
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
        None
    })
}

/// The watcher `a` reaches Redis through a proxy, the follower `b` directly. `cut` breaks the
/// proxy; `a`'s flag must go down before its key expires and before `b` takes over, and `a`
/// must come back as a follower once the proxy heals.
fn watcher_link_cut(label: &str, cut: impl FnOnce(&FaultProxy)) {
    support::init_logging();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let prefix = format!("faults-test:cut-{label}");
    let a = open_node(&proxy, &prefix);
    assert!(a.is_watcher(), "a lone node is watcher once open returns");
    let b = open_node(&server, &prefix);
    assert!(!b.is_watcher());
    let t = tx(1);
    a.receive(t.clone()).expect("receive");
    let mut raw = server.connection();
    assert_eq!(lock_holder(&mut raw, &prefix).as_deref(), Some(a.node_id()));

    let t0 = Instant::now();
    cut(&proxy);

    // Each sample reads the key, then b's flag, then a's. Neither the key nor b's flag can turn
    // back to `a` while its link is cut, so seeing `a` up after either has moved on proves that
    // the flag outlived the lock, however late this loop runs.
    let (mut dropped, mut key_gone, mut taken) = (None, None, None);
    let deadline = t0 + TTL + SETTLE;
    while (dropped.is_none() || key_gone.is_none() || taken.is_none()) && Instant::now() < deadline
    {
        let holder = lock_holder(&mut raw, &prefix);
        let b_up = b.is_watcher();
        let a_up = a.is_watcher();
        let now = t0.elapsed();
        let a_lost_key = holder.as_deref() != Some(a.node_id());
        assert!(
            !(a_up && (a_lost_key || b_up)),
            "{label}: a's flag is still up {} ms after the cut, but the lock is {holder:?} \
             (b is watcher: {b_up})",
            now.as_millis()
        );
        if !a_up && dropped.is_none() {
            dropped = Some(now);
        }
        if a_lost_key && key_gone.is_none() {
            key_gone = Some(now);
        }
        if b_up && taken.is_none() {
            taken = Some(now);
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    eprintln!(
        "{label}: a's flag down after {:?} ms, its key gone after {:?} ms, b watcher after {:?} \
         ms (from the cut)",
        dropped.map(|d| d.as_millis()),
        key_gone.map(|d| d.as_millis()),
        taken.map(|d| d.as_millis())
    );
    let dropped = dropped.expect("a's flag never went down");
    let taken = taken.expect("b never took over");
    assert!(dropped <= taken);
    assert!(dropped <= key_gone.expect("a's key never went away"));
    assert!(
        taken < TTL + Duration::from_secs(1),
        "b took over after {taken:?}"
    );

    // Calls through the cut link fail fast with a link error; b's calls work on.
    expect_transient(
        &format!("{label}: a call over the cut link"),
        CALL_BOUND,
        || a.check_status(&t.hash),
    );
    assert_eq!(
        b.check_status(&t.hash).expect("status").stage,
        MempoolTxStage::Pending
    );
    assert_eq!(
        a.confirm(&ChainPoint::Slot(1), &[], &[], 6, 2)
            .expect("confirm"),
        ConfirmOutcome::NotWatcher
    );

    proxy.heal();
    let healed = Instant::now();
    assert!(
        wait_until(SETTLE, || a.check_status(&t.hash).is_ok()),
        "{label}: calls through the healed link still fail"
    );
    eprintln!(
        "{label}: calls work again {} ms after heal",
        healed.elapsed().as_millis()
    );
    // Long enough for a's lease thread to reconnect and find b holding the lock.
    assert_never_two_watchers(&[&a, &b], Duration::from_millis(700));
    assert!(
        !a.is_watcher(),
        "{label}: the healed node took the lock back"
    );
    assert!(b.is_watcher());
    let info = a.watcher_info().expect("info");
    assert_eq!(info.holder.as_deref(), Some(b.node_id()));
    assert!(!info.is_self);
    assert_eq!(
        a.check_status(&t.hash).expect("status").stage,
        MempoolTxStage::Pending
    );

    // A live lease thread, not just a quiet one: it takes over when b hands over.
    b.shutdown().expect("shutdown");
    assert!(
        wait_until(SETTLE, || a.is_watcher()),
        "{label}: the healed node never became watcher again"
    );
}

#[test]
fn blackholed_watcher_steps_down_before_its_lock_expires() {
    watcher_link_cut("blackhole", |proxy| proxy.blackhole());
}

#[test]
fn refused_watcher_steps_down_before_its_lock_expires() {
    watcher_link_cut("refuse", |proxy| proxy.refuse());
}

/// A server fault under a watcher `a` that has just renewed its lock and a follower `b`:
/// `fault` takes the server away, `calls_fail` checks calls made meanwhile (on tx `h`), `mend`
/// brings the server back. `a`'s flag must go down within a TTL of its last renewal, `b` cannot
/// win a lock on a server that does not answer, and afterwards calls work again, the tx is
/// still pending and a single watcher applies a block.
fn server_outage(
    label: &str,
    server: &mut RedisServer,
    fault: impl FnOnce(&mut RedisServer),
    calls_fail: impl FnOnce(&RedisMempool, &RedisMempool, &TxHash),
    mend: impl FnOnce(&mut RedisServer),
) {
    let prefix = format!("faults-test:{label}");
    let a = open_node(&*server, &prefix);
    assert!(a.is_watcher());
    let b = open_node(&*server, &prefix);
    let t = tx(1);
    a.receive(t.clone()).expect("receive");

    let mut raw = server.connection();
    let renewed = wait_for_renewal(&mut raw, &prefix);
    let flag = watch_flag_drop(&a);
    fault(server);
    let faulted = Instant::now();
    calls_fail(&a, &b, &t.hash);

    let dropped = flag
        .join()
        .expect("monitor")
        .expect("the watcher kept its flag");
    let since_renewal = dropped - renewed;
    eprintln!(
        "{label}: watcher flag down {} ms after its last renewal ({} ms after the fault); the \
         key would expire {} ms after the renewal",
        since_renewal.as_millis(),
        dropped.saturating_duration_since(faulted).as_millis(),
        TTL.as_millis()
    );
    // The flag is due down TTL/10 before the key could expire; this catches a lease thread that
    // overshoots its deadline, while leaving that TTL/10 for observing it late. A frozen server
    // accepts connections (the kernel does) but never answers, so this also checks that
    // reconnecting cannot hold the lease thread past its deadline.
    assert!(
        since_renewal < TTL,
        "flag down only {since_renewal:?} after the last renewal"
    );
    assert!(
        !b.is_watcher(),
        "b cannot have won a lock on a server that does not answer"
    );

    mend(server);
    let mended = Instant::now();
    assert!(
        wait_until(
            SETTLE,
            || matches!(b.check_status(&t.hash), Ok(s) if s.stage == MempoolTxStage::Pending)
        ),
        "calls did not recover after the fault (or the tx was lost)"
    );
    assert!(
        wait_until(SETTLE, || a.check_status(&t.hash).is_ok()),
        "the former watcher's calls did not recover"
    );
    let w = settle_single_watcher(&[&a, &b]);
    eprintln!(
        "{label}: calls and a single watcher back {} ms after the fault ended",
        mended.elapsed().as_millis()
    );
    assert_never_two_watchers(&[&a, &b], Duration::from_millis(300));
    let watcher = [&a, &b][w];
    let info = watcher.watcher_info().expect("info");
    assert_eq!(info.holder.as_deref(), Some(watcher.node_id()));
    assert_eq!(
        watcher
            .confirm(&ChainPoint::Slot(7), &[], &[], 6, 2)
            .expect("confirm"),
        ConfirmOutcome::Applied
    );
}

#[test]
fn redis_killed_and_restarted() {
    support::init_logging();
    let mut server = RedisServer::start_with(ServerOptions {
        appendonly: true,
        ..Default::default()
    });
    server_outage(
        "kill",
        &mut server,
        RedisServer::kill,
        |a, b, h| {
            // The first calls find pooled connections the kill has reset (each is then
            // discarded); once the idle ones are used up the pool must dial, which is refused
            // until its connect timeout runs out. Both kinds must fail fast.
            for i in 0..4 {
                expect_transient(&format!("call {i} after kill"), CALL_BOUND, || {
                    b.check_status(h)
                });
            }
            expect_transient("watcher's call after kill", CALL_BOUND, || {
                a.peek_pending(10)
            });
            expect_transient("watcher_info after kill", CALL_BOUND, || a.watcher_info());
        },
        RedisServer::restart,
    );
}

#[test]
fn redis_paused_and_resumed() {
    support::init_logging();
    let mut server = RedisServer::start();
    server_outage(
        "pause",
        &mut server,
        |s| s.pause(),
        |a, b, h| {
            let (err, _) =
                expect_transient("call to a paused server", CALL_BOUND, || b.check_status(h));
            assert!(
                matches!(err, Error::Timeout(_) | Error::Unavailable(_)),
                "{err:?}"
            );
            expect_transient("watcher's call to a paused server", CALL_BOUND, || {
                a.has_pending()
            });
        },
        |s| s.resume(),
    );
}

/// Connect and command timeout of the nodes that `open` against an address that does not
/// answer.
const OPEN_TIMEOUT: Duration = Duration::from_millis(300);

/// `open` must give up within about its timeouts, with an error rather than a panic; returns the
/// error and how long it took.
fn open_fails_fast(label: &str, url: String) -> (Error, Duration) {
    let config = Config::new(url)
        .key_prefix("faults-test:unreachable")
        .watcher_lock_ttl(TTL)
        .connect_timeout(OPEN_TIMEOUT)
        .command_timeout(OPEN_TIMEOUT);
    let t0 = Instant::now();
    let result = RedisMempool::open(config);
    let took = t0.elapsed();
    eprintln!("open {label}: {result:?} after {} ms", took.as_millis());
    let err = result.expect_err("open against an unreachable redis");
    assert!(err.is_transient(), "{label}: {err:?}");
    assert!(took < Duration::from_secs(3), "{label}: open took {took:?}");
    (err, took)
}

#[test]
fn open_against_a_closed_port_fails_fast() {
    support::init_logging();
    let (err, took) = open_fails_fast(
        "closed port",
        format!("redis://127.0.0.1:{}", closed_port()),
    );
    // Refused, not timed out: within the connect timeout.
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(took < OPEN_TIMEOUT + CALL_BOUND, "took {took:?}");
}

#[test]
fn open_against_a_silent_server_fails_fast() {
    support::init_logging();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    // Accepts the connection but never answers: only the timeouts can end the wait.
    proxy.blackhole();
    open_fails_fast("blackholed proxy", proxy.url());
    proxy.refuse();
    open_fails_fast("refusing proxy", proxy.url());
    // SIGSTOP: the kernel still completes TCP handshakes, but nothing answers. A connect and
    // a command timeout at the most.
    server.pause();
    let (_, took) = open_fails_fast("paused server", server.url());
    server.resume();
    assert!(took < OPEN_TIMEOUT * 2 + CALL_BOUND, "took {took:?}");
}

// ---- calls while Redis is away ----

#[test]
fn every_call_fails_while_redis_is_unreachable_then_recovers() {
    support::init_logging();
    let mut server = RedisServer::start();
    // Without liveness checks: with them, the flag drops the moment Redis closes the wake
    // connection, and `confirm` would answer `NotWatcher` without asking Redis; this test
    // wants the watcher's `confirm` to reach the dead server.
    let m = lone_watcher(
        config_with(&server, "down", LONG_TTL, IO_TIMEOUT).liveness_check(Duration::ZERO),
    );
    let a = hash(0);
    m.receive(tx(0)).unwrap();
    m.mark_inflight(&[a]).unwrap();
    m.receive(tx(1)).unwrap();

    server.kill();

    let h = hash(2);
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
        // Past 32 txs the reads are plain commands, not a script.
        (
            "peek_pending (plain)",
            Box::new(|| m.peek_pending(100).map(|v| format!("{v:?}"))),
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
            Box::new(|| m.receive(tx(2)).map(|v| format!("{v:?}"))),
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
            "peek_inflight (plain)",
            Box::new(|| m.peek_inflight(100).map(|v| format!("{v:?}"))),
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
        if took > CALL_BOUND {
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
    m.receive(tx(2)).unwrap();
    assert_eq!(m.check_status(&h).unwrap().stage, MempoolTxStage::Pending);
    assert_eq!(m.peek_pending(10).unwrap().len(), 1);
    assert_eq!(m.peek_pending(100).unwrap().len(), 1);
}

#[test]
fn a_call_to_a_stalled_server_times_out_and_later_calls_get_their_own_replies() {
    support::init_logging();
    let server = RedisServer::start();
    let m = RedisMempool::open(config_with(&server, "stalled", LONG_TTL, IO_TIMEOUT).pool_size(2))
        .unwrap();
    let (a, b) = (hash(0), hash(1));
    m.receive(tx(0)).unwrap();
    m.receive(tx(1)).unwrap();
    m.mark_inflight(&[b]).unwrap();

    server.pause();
    let started = Instant::now();
    let err = m.peek_pending(10).unwrap_err();
    let took = started.elapsed();
    // A large read is a MULTI block and then an HMGET: its connection goes the same way.
    let err2 = m.peek_inflight(100).unwrap_err();
    server.resume();
    println!("call to a stopped server failed after {took:?}: {err}");
    assert!(err.is_transient(), "{err:?}");
    assert!(err2.is_transient(), "{err2:?}");
    assert!(took < CALL_BOUND, "took {took:?}");

    // The late replies to the timed-out calls are on connections that must have been thrown
    // away; if one were reused, a call below would read a reply meant for another.
    for _ in 0..5 {
        assert_eq!(stage_of(&m, 9), MempoolTxStage::Unknown);
        assert!(m.has_pending().unwrap());
        let pending = m.peek_pending(10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].hash, a);
        let inflight = m.peek_inflight(100).unwrap();
        assert_eq!(inflight.len(), 1);
        assert_eq!(inflight[0].hash, b);
        assert!(m.watcher_info().unwrap().epoch >= 1);
    }
}

/// A blip that closed the lease thread's idle connection between two renewals shows only when
/// the thread next speaks: a shutdown right after it must still release the lock (on a new
/// connection), not leave it to expire.
#[test]
fn shutdown_after_a_blip_on_the_idle_lease_link_still_releases_the_lock() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    // Renewals every ttl/3 = 10 s: the lease link stays idle through the blip.
    let node = lone_watcher(config_with(&proxy, "blip", LONG_TTL, IO_TIMEOUT));
    proxy.refuse(); // closes every open connection
    proxy.heal();
    // The flag may be down for a moment (the liveness connection broke too); the lock is still
    // this node's, and a shutdown must hand it over.
    assert_eq!(
        lock_holder(&mut server.connection(), "blip").as_deref(),
        Some(node.node_id())
    );
    node.shutdown()
        .expect("the release is made on a new connection");
    assert_eq!(lock_holder(&mut server.connection(), "blip"), None);
}
