//! Redis paused or the link hung in ways other than a dead process: `DEBUG SLEEP` (the server
//! stops answering anyone), `CLIENT PAUSE ALL`, `CLIENT PAUSE WRITE`, and a link whose packets
//! are delayed. In each case:
//!
//! * mempool calls fail with a typed, transient error within about their command timeout;
//! * the watcher's flag drops before its lock can expire on the server — measured against the
//!   lock's PTTL read in the same pipeline that starts the pause, so no renewal can slip in
//!   between — and never overlaps another node's flag;
//! * once the pause ends, calls work again and a single watcher is elected.
//!
//! Measured times are printed (`cargo test --test hostile -- --nocapture`).

mod common;
use dolos_redis_testkit as support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{config_with, expect_transient, hash, lock_key, open, stage_of, tx, Endpoint, SETTLE};
use dolos_redis::{MempoolTxStage, RedisMempool};
use support::{wait_until, FaultProxy, RedisServer, ServerOptions};

const TTL: Duration = Duration::from_secs(1);

const COMMAND_TIMEOUT: Duration = Duration::from_millis(300);

/// How long each fault lasts: longer than the TTL, so the lease must give up.
const PAUSE: Duration = Duration::from_secs(2);

/// CI bound for a call that should fail after about `COMMAND_TIMEOUT` (it may also need a fresh
/// connection, bounded by the same timeout).
const CALL_BOUND: Duration = Duration::from_millis(1500);

fn debug_server() -> RedisServer {
    RedisServer::start_with(ServerOptions {
        extra_args: vec!["--enable-debug-command".into(), "yes".into()],
        ..ServerOptions::default()
    })
}

/// A (watcher) reaching Redis at `a_at` and B (follower) at `b_at`.
fn two_nodes(
    a_at: &impl Endpoint,
    b_at: &impl Endpoint,
    prefix: &str,
) -> (RedisMempool, RedisMempool) {
    let a = open(config_with(a_at, prefix, TTL, COMMAND_TIMEOUT));
    assert!(
        wait_until(SETTLE, || a.is_watcher()),
        "A never became watcher"
    );
    let b = open(config_with(b_at, prefix, TTL, COMMAND_TIMEOUT));
    assert!(!b.is_watcher());
    (a, b)
}

/// Watches the flags of A and B every millisecond from a thread: when A's went down and
/// whether both were ever up at once.
struct FlagSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Samples>,
}

#[derive(Debug, Default)]
struct Samples {
    a_down: Option<Instant>,
    /// The first instant both flags were seen up.
    overlap: Option<Instant>,
    count: u64,
}

impl FlagSampler {
    fn start(a: &RedisMempool, b: &RedisMempool) -> FlagSampler {
        let (a, b) = (a.clone(), b.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut s = Samples::default();
            while !stop_flag.load(Ordering::SeqCst) {
                let (wa, wb) = (a.is_watcher(), b.is_watcher());
                let now = Instant::now();
                if !wa && s.a_down.is_none() {
                    s.a_down = Some(now);
                }
                if wa && wb && s.overlap.is_none() {
                    s.overlap = Some(now);
                }
                s.count += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            s
        });
        FlagSampler { stop, handle }
    }

    fn finish(self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// The moment the pipeline that started the fault was sent, and the lock's PTTL the server read
/// just before the fault began: the lock cannot expire before `sent + pttl`.
struct FaultStart {
    sent: Instant,
    pttl: Duration,
    /// When the command that started the fault was answered (for `DEBUG SLEEP`: when it ended).
    replied: Instant,
}

/// Sends `PTTL <lock>` and then `fault` in one pipeline from a thread, so the server reads the
/// lock's TTL and starts the fault with no other command in between.
fn start_fault(server: &RedisServer, prefix: &str, fault: redis::Cmd) -> JoinHandle<FaultStart> {
    let mut con = server.connection();
    let key = lock_key(prefix);
    std::thread::spawn(move || {
        let sent = Instant::now();
        let (pttl, _): (i64, redis::Value) = redis::pipe()
            .cmd("PTTL")
            .arg(&key)
            .add_command(fault)
            .query(&mut con)
            .unwrap();
        assert!(
            pttl > 0,
            "A held no lock with a TTL when the fault began ({pttl})"
        );
        FaultStart {
            sent,
            pttl: Duration::from_millis(pttl as u64),
            replied: Instant::now(),
        }
    })
}

/// Whether a write from a fresh connection hangs, i.e. the fault is in effect.
fn writes_hang(server: &RedisServer) -> bool {
    let probe = || -> redis::RedisResult<()> {
        let client = redis::Client::open(server.url())?;
        let mut con = client.get_connection_with_timeout(Duration::from_millis(100))?;
        con.set_read_timeout(Some(Duration::from_millis(100)))?;
        redis::cmd("SET")
            .arg("hostile:probe")
            .arg(1)
            .query(&mut con)
    };
    probe().is_err()
}

/// Runs `call`, checks that it fails with a transient error within [`CALL_BOUND`].
fn assert_times_out<T: std::fmt::Debug>(
    what: &str,
    call: impl FnOnce() -> Result<T, dolos_redis::Error>,
) {
    expect_transient(what, CALL_BOUND, call);
}

/// While the server answers nobody: reads and writes from either node time out.
fn every_call_times_out(a: &RedisMempool, b: &RedisMempool) {
    assert_times_out("has_pending", || a.has_pending());
    assert_times_out("receive", || a.receive(tx(2)));
    assert_times_out("check_status", || b.check_status(&hash(1)));
}

/// After the fault: calls work and exactly one of A and B is the watcher, as Redis sees it.
fn assert_recovered(a: &RedisMempool, b: &RedisMempool, fault_end: Instant, n: u32) {
    let mut holder = None;
    let elected = wait_until(SETTLE, || {
        let Ok(info) = b.watcher_info() else {
            return false;
        };
        holder = info.holder.clone();
        let flags = [a.is_watcher(), b.is_watcher()];
        let expected = [
            holder.as_deref() == Some(a.node_id()),
            holder.as_deref() == Some(b.node_id()),
        ];
        holder.is_some() && flags == expected
    });
    assert!(
        elected,
        "no single watcher after the fault (lock holder {holder:?}, flags A {} B {})",
        a.is_watcher(),
        b.is_watcher()
    );
    let who = if holder.as_deref() == Some(a.node_id()) {
        "A"
    } else {
        "B"
    };
    println!(
        "  single watcher ({who}) {:?} after the fault ended",
        fault_end.elapsed()
    );
    // A pooled connection that timed out is thrown away; the next call gets a fresh one.
    a.receive(tx(n)).unwrap();
    assert_eq!(stage_of(b, n), MempoolTxStage::Pending);
}

/// The lease half of every scenario: A's flag went down before the lock could expire, and the
/// two flags never overlapped.
fn assert_stepped_down_in_time(samples: &Samples, start: &FaultStart) {
    let expiry = start.sent + start.pttl;
    let down = samples
        .a_down
        .expect("A's flag was still up when sampling stopped");
    let before_expiry = expiry.saturating_duration_since(down);
    println!(
        "  A's flag down {:?} after the fault began, {before_expiry:?} before the lock could \
         expire (PTTL was {:?}; {} samples)",
        down.saturating_duration_since(start.sent),
        start.pttl,
        samples.count
    );
    assert!(
        down < expiry,
        "A's flag stayed up {:?} past the earliest expiry of its lock",
        down - expiry
    );
    if let Some(at) = samples.overlap {
        panic!(
            "A and B both held the flag {:?} after the fault began",
            at.saturating_duration_since(start.sent)
        );
    }
}

#[test]
fn debug_sleep_times_out_calls_and_the_lease_steps_down_in_time() {
    support::init_logging();
    let server = debug_server();
    let prefix = "hostile:debug-sleep";
    let (a, b) = two_nodes(&server, &server, prefix);
    a.receive(tx(1)).unwrap();
    let sampler = FlagSampler::start(&a, &b);

    println!("DEBUG SLEEP {PAUSE:?}:");
    let mut sleep = redis::cmd("DEBUG");
    sleep.arg("SLEEP").arg(PAUSE.as_secs_f64());
    let fault = start_fault(&server, prefix, sleep);
    assert!(wait_until(SETTLE, || writes_hang(&server)));
    every_call_times_out(&a, &b);

    let start = fault.join().unwrap();
    println!("  the server slept {:?}", start.replied - start.sent);
    assert_recovered(&a, &b, start.replied, 3);
    assert_stepped_down_in_time(&sampler.finish(), &start);
}

/// `CLIENT PAUSE` for [`PAUSE`] in `mode` (`ALL` or `WRITE`), with `calls` made while it lasts.
/// The pause ends on the server's clock: once writes pass again, a single watcher must be
/// elected, and A's flag must have gone down in time.
fn client_pause(mode: &str, calls: impl FnOnce(&RedisMempool, &RedisMempool)) {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = format!("hostile:pause-{}", mode.to_lowercase());
    let (a, b) = two_nodes(&server, &server, &prefix);
    a.receive(tx(1)).unwrap();
    let sampler = FlagSampler::start(&a, &b);

    println!("CLIENT PAUSE {PAUSE:?} {mode}:");
    let mut pause = redis::cmd("CLIENT");
    pause.arg("PAUSE").arg(PAUSE.as_millis() as u64).arg(mode);
    let start = start_fault(&server, &prefix, pause).join().unwrap();
    assert!(wait_until(SETTLE, || writes_hang(&server)));
    calls(&a, &b);

    assert!(wait_until(SETTLE, || !writes_hang(&server)));
    let ended = Instant::now();
    println!(
        "  writes passed again {:?} after the pause began",
        ended - start.sent
    );
    assert_recovered(&a, &b, ended, 3);
    assert_stepped_down_in_time(&sampler.finish(), &start);
}

#[test]
fn client_pause_all_times_out_calls_and_the_lease_steps_down_in_time() {
    client_pause("ALL", every_call_times_out);
}

#[test]
fn client_pause_write_times_out_writes_and_the_lease_steps_down_in_time() {
    client_pause("WRITE", |a, b| {
        assert_times_out("receive", || a.receive(tx(2)));
        assert_times_out("mark_inflight", || a.mark_inflight(&[hash(1)]));
        // Reads may pass or wait, depending on whether the server can tell the script is
        // read-only; either way they answer correctly or fail with a typed timeout in time.
        let started = Instant::now();
        let read = b.check_status(&hash(1));
        let took = started.elapsed();
        println!("  check_status: {read:?} after {took:?}");
        match read {
            Ok(status) => assert_eq!(status.stage, MempoolTxStage::Pending),
            Err(e) => assert!(e.is_transient(), "{e:?}"),
        }
        assert!(took < CALL_BOUND, "check_status took {took:?}");
    });
}

/// The watcher's link (not the server) hangs: its packets are held in the network while the
/// other node still reaches Redis, so the lock really can be taken over as soon as it expires.
#[test]
fn hung_link_lease_steps_down_before_another_node_can_take_over() {
    support::init_logging();
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let prefix = "hostile:hung-link";
    let (a, b) = two_nodes(&proxy, &server, prefix);
    let sampler = FlagSampler::start(&a, &b);

    println!("watcher link held by the proxy:");
    proxy.hold();
    // A renewal the proxy forwarded just before the hold may still be running: read the lock's
    // TTL twice and keep the later expiry (each reading is a lower bound of the real one).
    let mut con = server.connection();
    let mut read_expiry = || {
        let sent = Instant::now();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(lock_key(prefix))
            .query(&mut con)
            .unwrap();
        assert!(
            pttl > 0,
            "A held no lock with a TTL when the hold began ({pttl})"
        );
        (sent, Duration::from_millis(pttl as u64))
    };
    let first = read_expiry();
    std::thread::sleep(Duration::from_millis(20));
    let second = read_expiry();
    let (sent, pttl) = if second.0 + second.1 > first.0 + first.1 {
        second
    } else {
        first
    };
    let start = FaultStart {
        sent,
        pttl,
        replied: Instant::now(),
    };
    assert_times_out("has_pending", || a.has_pending());
    assert!(wait_until(SETTLE, || b.is_watcher()), "B never took over");
    let took_over = Instant::now();
    println!("  B watcher {:?} after the hold", took_over - start.sent);

    assert!(wait_until(SETTLE, || !a.is_watcher()), "A kept its flag");
    proxy.heal();
    let samples = sampler.finish();
    assert_stepped_down_in_time(&samples, &start);
    assert_recovered(&a, &b, Instant::now(), 3);
}
