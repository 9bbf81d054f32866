//! What the tests, examples and tools of dolos-redis share: real parts to test against, never
//! mocks. It depends only on std, `redis`, `log`, `env_logger` and `tempfile`, never on
//! `dolos_redis` itself, so a broken library build cannot hide a broken harness (or the other
//! way round).
//!
//! * [`RedisServer`]: a throwaway `redis-server` process on a free port with its own temp dir,
//!   which can be killed, restarted (keeping its AOF), paused and resumed.
//! * [`FaultProxy`]: a TCP proxy in front of a server that can pass traffic, swallow it (a
//!   network partition) or refuse connections.
//! * [`monitor::Monitor`]: follows the server's `MONITOR` feed to count the commands a call
//!   sends.
//! * [`Rng`]: a small seeded generator for reproducible random runs.
//! * [`wait_until`], [`init_logging`], [`logs::capture_logs`], and [`child`] for running a
//!   built tool as a child process.

pub mod child;
pub mod logs;
pub mod monitor;
pub mod proxy;
mod rng;
pub mod server;

pub use proxy::{FaultProxy, ProxyMode};
pub use rng::Rng;
pub use server::{RedisServer, ServerOptions};
/// Temp dirs for tests that need files of their own (the servers' dirs use it too).
pub use tempfile;

use std::time::{Duration, Instant};

/// How often [`wait_until`] re-evaluates its condition: short enough that
/// tests do not idle, long enough not to steal a core from the code under
/// test on a 2-core machine.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Polls `cond` every few ms until it returns true or `timeout` passes;
/// returns whether it became true.
///
/// The condition is always evaluated at least once, and once more at the
/// deadline, so a condition that turns true just as time runs out is not
/// reported as a failure.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Every key matching `pattern` (a `SCAN MATCH` glob such as `prefix:*`), with `SCAN`: never
/// `KEYS`, which blocks a shared server.
pub fn scan_keys(con: &mut redis::Connection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(con)?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Installs env_logger for tests once (`is_test(true)`), honouring `RUST_LOG`.
///
/// Safe to call from every test: only the first call in a process installs
/// the logger, later ones are no-ops. `is_test` routes output through the
/// test harness's capture so logs show up only for failing tests.
pub fn init_logging() {
    // `builder()` reads RUST_LOG; `try_init` fails harmlessly when another
    // test already installed the logger.
    let _ = env_logger::builder().is_test(true).try_init();
}

/// The command line of an example that takes no arguments but `--help`: prints `usage` and
/// exits 0 for `-h`/`--help`, names an unexpected argument and exits 2, returns otherwise.
pub fn help_only(program: &str, usage: &str) {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("-h" | "--help") => {
            println!("{usage}");
            std::process::exit(0);
        }
        Some(other) => {
            eprintln!("{program}: unexpected argument {other:?}\n{usage}");
            std::process::exit(2);
        }
    }
}
