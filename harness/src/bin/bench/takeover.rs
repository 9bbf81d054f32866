//! The takeover phase: how long the mempool is without a watcher after each way a watcher can
//! fail. The watcher runs in a process of its own (this executable, as `bench holder …`), so
//! that `kill -9` closes its sockets the way the kernel closes a dead process's, SIGSTOP
//! freezes it whole, and a fault proxy in front of it black-holes its link; the follower runs
//! in the benchmark's process and is timed by polling its flag (an atomic load, no Redis
//! traffic).
//!
//! * kill -9 at the default TTL (10 s) and at 1 s: from the kill to the follower's flag. The
//!   follower finds the watcher's liveness subscription gone (`Config::liveness_check`,
//!   100 ms) and takes over long before the lock expires.
//! * kill -9 with liveness checks off (TTL 1 s): the TTL path, timed from the lock's expiry.
//! * SIGSTOP longer than the TTL, and a black-hole partition (TTL 1 s): the paused or cut-off
//!   watcher's sockets stay open on the server, so the TTL decides. Timed from the fault; a
//!   takeover before the lock could expire (a lower bound read with PTTL right after the fault)
//!   is counted as early, and must never happen.
//! * `shutdown`: the lock is released and the follower woken.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dolos_redis::{Config, RedisMempool};
use dolos_redis_harness::clock::{self, Signal};
use dolos_redis_testkit::{self as support, FaultProxy, Rng};

/// The default lock TTL, and the short one most trials use.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
pub const SHORT_TTL: Duration = Duration::from_secs(1);
/// The default liveness check interval.
const CHECK: Duration = Duration::from_millis(100);
/// How long a faulty watcher may take to be replaced before a trial gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// `bench holder <url> <prefix> <ttl_ms> <check_ms>`: one node, until its stdin closes. Prints
/// `@watcher` once its flag is up.
pub fn holder_main(args: &[String]) -> ExitCode {
    let [url, prefix, ttl, check] = args else {
        eprintln!("usage: bench holder <url> <prefix> <ttl_ms> <check_ms>");
        return ExitCode::from(2);
    };
    let ms = |s: &str| s.parse().map(Duration::from_millis);
    let (Ok(ttl), Ok(check)) = (ms(ttl), ms(check)) else {
        eprintln!("holder: the TTL and the check interval are whole milliseconds");
        return ExitCode::from(2);
    };
    let config = Config::new(url.as_str())
        .key_prefix(prefix.as_str())
        .pool_size(1)
        .watcher_lock_ttl(ttl)
        .liveness_check(check)
        .connect_timeout(Duration::from_millis(250))
        .command_timeout(Duration::from_millis(250));
    let node = match RedisMempool::open(config) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("holder: {e}");
            return ExitCode::FAILURE;
        }
    };
    if support::wait_until(PATIENCE, || node.is_watcher()) {
        println!("@watcher");
    }
    // Until the benchmark closes our stdin (or kills us).
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    let _ = node.shutdown();
    ExitCode::SUCCESS
}

/// A watcher in its own process.
struct Holder {
    child: Child,
}

impl Holder {
    /// Starts one and waits until it is the watcher.
    fn start(url: &str, prefix: &str, ttl: Duration, check: Duration) -> Holder {
        let exe = std::env::current_exe().expect("the bench executable");
        let mut child = Command::new(exe)
            .args([
                "holder",
                url,
                prefix,
                &ttl.as_millis().to_string(),
                &check.as_millis().to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a holder process");
        let leads = Arc::new(Mutex::new(false));
        let stdout = child.stdout.take().expect("piped stdout");
        let seen = leads.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) if l == "@watcher" => *seen.lock().unwrap() = true,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        let led = support::wait_until(PATIENCE, || *leads.lock().unwrap());
        assert!(led, "the holder process never became watcher");
        Holder { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = clock::send(self.pid(), Signal::Cont);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A follower in this process, with the holder's settings.
fn follower(url: &str, prefix: &str, ttl: Duration, check: Duration) -> RedisMempool {
    let config = Config::new(url)
        .key_prefix(prefix)
        .pool_size(1)
        .watcher_lock_ttl(ttl)
        .liveness_check(check);
    let node = RedisMempool::open(config).expect("open a follower");
    assert!(!node.is_watcher(), "the follower took a held lock");
    node
}

/// Polls the flag until it is up; the instant it was seen up.
fn watcher_seen(node: &RedisMempool, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if node.is_watcher() {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64() * 1e3
    } else {
        -((earlier - later).as_secs_f64() * 1e3)
    }
}

/// The earliest moment the lock of `prefix` can expire: its PTTL read now, counted from before
/// the command was sent (the server counts from when it runs it, later).
fn earliest_expiry(admin: &mut redis::Connection, prefix: &str) -> Instant {
    let sent = Instant::now();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:watcher:lock"))
        .query(admin)
        .expect("PTTL of the lock");
    sent + Duration::from_millis(pttl.max(0) as u64)
}

/// A pause before the fault, so that it lands at a random point of the holder's renewal cycle
/// and of the follower's looks.
fn random_pause(seed: u64) {
    std::thread::sleep(Duration::from_millis(Rng::new(seed).below(400)));
}

/// kill -9 of the watcher. With liveness checks (`check` not zero): ms from the kill to the new
/// watcher. Without: ms from the lock's expiry.
pub fn kill_trial(url: &str, prefix: &str, ttl: Duration, check: Duration, k: usize) -> f64 {
    let mut admin = connect(url);
    let mut holder = Holder::start(url, prefix, ttl, check);
    let b = follower(url, prefix, ttl, check);
    random_pause(k as u64);
    let killed = Instant::now();
    holder.kill();
    let from = if check.is_zero() {
        earliest_expiry(&mut admin, prefix)
    } else {
        killed
    };
    let seen = watcher_seen(&b, ttl + PATIENCE).expect("the follower takes over");
    let _ = b.shutdown();
    ms(seen, from)
}

/// How a watcher is taken away while its process lives.
#[derive(Clone, Copy)]
pub enum Away {
    /// SIGSTOP, for longer than the TTL.
    Paused,
    /// Its proxy swallows every byte, for longer than the TTL.
    Partitioned,
}

/// The watcher paused or cut off: ms from the fault to the new watcher, and whether the
/// takeover came before the lock could expire.
pub fn away_trial(url: &str, prefix: &str, ttl: Duration, how: Away, k: usize) -> (f64, bool) {
    let mut admin = connect(url);
    let proxy = FaultProxy::start(socket_addr(url));
    let through = match how {
        Away::Paused => url.to_string(),
        Away::Partitioned => with_addr(url, &proxy.addr().to_string()),
    };
    let holder = Holder::start(&through, prefix, ttl, CHECK);
    let b = follower(url, prefix, ttl, CHECK);
    random_pause(1_000 + k as u64);
    let fault = Instant::now();
    match how {
        Away::Paused => clock::send(holder.pid(), Signal::Stop).expect("SIGSTOP"),
        Away::Partitioned => proxy.blackhole(),
    }
    let expiry = earliest_expiry(&mut admin, prefix);
    let seen = watcher_seen(&b, ttl + PATIENCE).expect("the follower takes over");
    // Longer than the TTL in every case.
    let until = fault + ttl + Duration::from_millis(200);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    match how {
        Away::Paused => clock::send(holder.pid(), Signal::Cont).expect("SIGCONT"),
        Away::Partitioned => proxy.heal(),
    }
    let _ = b.shutdown();
    drop(holder);
    (ms(seen, fault), seen < expiry)
}

/// `shutdown` of the watcher (both in this process): ms from the call to the new watcher.
pub fn graceful_trial(url: &str, prefix: &str, k: usize) -> f64 {
    let a = follower_or_watcher(url, prefix);
    assert!(support::wait_until(Duration::from_secs(3), || a.is_watcher()));
    let b = follower(url, prefix, SHORT_TTL, CHECK);
    random_pause(2_000 + k as u64);
    let start = Instant::now();
    let stopper = std::thread::spawn(move || a.shutdown());
    let seen = watcher_seen(&b, SHORT_TTL * 3).expect("the follower takes over");
    stopper
        .join()
        .expect("shutdown thread")
        .expect("shutdown releases the lock");
    let _ = b.shutdown();
    ms(seen, start)
}

fn follower_or_watcher(url: &str, prefix: &str) -> RedisMempool {
    let config = Config::new(url)
        .key_prefix(prefix)
        .pool_size(1)
        .watcher_lock_ttl(SHORT_TTL);
    RedisMempool::open(config).expect("open a node")
}

fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .expect("connect to redis")
}

/// Where `url` points (a TCP server).
fn socket_addr(url: &str) -> SocketAddr {
    let info = redis::Client::open(url)
        .expect("a valid redis URL")
        .get_connection_info()
        .clone();
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.as_str(), *port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .expect("a reachable host"),
        other => panic!("the partition trials need a TCP redis, not {other:?}"),
    }
}

/// `url` with its host and port replaced by `addr` (credentials and database kept).
fn with_addr(url: &str, addr: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let (creds, hostpart) = match rest.rsplit_once('@') {
        Some((c, h)) => (format!("{c}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpart.find('/').map_or("", |i| &hostpart[i..]);
    format!("{scheme}://{creds}{addr}{path}")
}
