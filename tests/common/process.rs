//! Node processes, for the tests that kill or pause a watcher: `kill -9` must close its sockets
//! the way the kernel closes a dead process's, and SIGSTOP must freeze every thread of the node
//! at once, so only a real process will do. Building a binary for it would cost CI a link step;
//! instead the test binary starts itself again, running only its `child_node` test, which opens
//! one node as the environment says and reports on stdout:
//!
//! ```ignore
//! #[test]
//! fn child_node() {
//!     common::process::child_node()
//! }
//! ```
//!
//! In a normal run that test finds no node to run and passes at once.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dolos_redis::{ChainPoint, Config, RedisMempool};
use dolos_redis_testkit::wait_until;

use super::SETTLE;

/// The environment variable that turns `child_node` into a node: `url`, `prefix`, the lock TTL
/// and the liveness check interval in ms, tab-separated.
const NODE: &str = "DOLOS_REDIS_TEST_NODE";

/// The body of every binary's `child_node` test: runs the node the environment describes until
/// its stdin closes (or the line `quit`), then shuts it down; nothing without that environment.
///
/// It prints `@id <node id>` once open and `@flag up` / `@flag down` as its flag changes (sampled
/// every millisecond), and answers `confirm <slot>` with `@confirm <slot> <outcome>`.
pub fn child_node() {
    let Ok(spec) = std::env::var(NODE) else {
        return;
    };
    let fields: Vec<&str> = spec.split('\t').collect();
    let [url, prefix, ttl, check] = fields[..] else {
        panic!("bad {NODE}: {spec:?}");
    };
    let ms = |s: &str| Duration::from_millis(s.parse().expect("a number of ms"));
    let config = Config::new(url)
        .key_prefix(prefix)
        .watcher_lock_ttl(ms(ttl))
        .liveness_check(ms(check))
        .connect_timeout(Duration::from_secs(2))
        .command_timeout(Duration::from_secs(2));
    let node = RedisMempool::open(config).expect("open the child node");
    println!("@id {}", node.node_id());
    let probe = node.clone();
    std::thread::spawn(move || {
        let mut up = None;
        loop {
            let now = probe.is_watcher();
            if up != Some(now) {
                up = Some(now);
                println!("@flag {}", if now { "up" } else { "down" });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line == "quit" {
            break;
        }
        if let Some(slot) = line.strip_prefix("confirm ") {
            let slot: u64 = slot.parse().expect("a slot");
            let outcome = node.confirm(&ChainPoint::Slot(slot), &[], &[], 6, 2);
            println!("@confirm {slot} {outcome:?}");
        }
    }
    node.shutdown().expect("shutdown");
}

/// What a node process reported so far.
#[derive(Debug, Default)]
pub struct Reports {
    pub id: Option<String>,
    pub watcher: bool,
    /// When the flag was last seen to rise and to fall (as the lines arrived).
    pub up_at: Option<Instant>,
    pub down_at: Option<Instant>,
    pub lines: Vec<String>,
}

/// A node in a process of its own (see the module comment).
pub struct NodeProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    reports: Arc<Mutex<Reports>>,
    pub id: String,
}

impl NodeProcess {
    /// Starts a node of `prefix` at `url` (lock TTL `ttl`, liveness checks every `check`) and
    /// waits until it opened.
    pub fn start(url: &str, prefix: &str, ttl: Duration, check: Duration) -> NodeProcess {
        let exe = std::env::current_exe().expect("the test binary");
        let spec = format!(
            "{url}\t{prefix}\t{}\t{}",
            ttl.as_millis(),
            check.as_millis()
        );
        let mut child = Command::new(exe)
            .args([
                "child_node",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(NODE, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a node process");
        let reports = Arc::new(Mutex::new(Reports::default()));
        let stdout = child.stdout.take().expect("piped stdout");
        let into = reports.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The test harness starts its line `test child_node ... ` before the node's
                // first report: a report starts at its `@`.
                let line = match line.find('@') {
                    Some(at) => line[at..].to_string(),
                    None => line,
                };
                let mut r = into.lock().unwrap();
                if let Some(id) = line.strip_prefix("@id ") {
                    r.id = Some(id.to_string());
                } else if line == "@flag up" {
                    r.watcher = true;
                    r.up_at = Some(Instant::now());
                } else if line == "@flag down" {
                    r.watcher = false;
                    r.down_at = Some(Instant::now());
                }
                r.lines.push(line);
            }
        });
        let stdin = child.stdin.take();
        let mut id = None;
        let opened = wait_until(SETTLE, || {
            id = reports.lock().unwrap().id.clone();
            id.is_some()
        });
        assert!(opened, "the node process did not open");
        NodeProcess {
            child,
            stdin,
            reports,
            id: id.unwrap_or_default(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether its last report said its flag is up.
    pub fn is_watcher(&self) -> bool {
        self.reports.lock().unwrap().watcher
    }

    /// Reads what it reported.
    pub fn reports<T>(&self, read: impl FnOnce(&Reports) -> T) -> T {
        read(&self.reports.lock().unwrap())
    }

    /// Sends one line to its stdin.
    pub fn send(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
        }
    }

    /// SIGKILL, and waits until the process is gone (its sockets closed by the kernel).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP; returns once the kernel shows it stopped.
    pub fn pause(&self) {
        self.signal("STOP");
        let stat = format!("/proc/{}/stat", self.pid());
        let stopped = wait_until(SETTLE, || {
            // The state is the field after the parenthesised command name.
            std::fs::read_to_string(&stat).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            })
        });
        assert!(stopped, "the node process did not stop");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Ends it gracefully: closes its stdin and waits for it to exit.
    pub fn quit(mut self) {
        self.stdin = None;
        let exited = wait_until(SETTLE, || matches!(self.child.try_wait(), Ok(Some(_))));
        assert!(exited, "the node process did not exit");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
