//! The node processes: each is the running executable itself (the demo's, the chaos run's) run
//! as `<tool> node <config.toml>` ([`crate::node`]), behind its own fault proxy. Their output
//! is printed with the node's name; the `@`-lines they write for the harness are recorded in a
//! [`Report`] instead.
//!
//! Shared by the demo and the chaos run; each uses only part of it.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::chain::Chain;
use dolos_redis_testkit::{wait_until, FaultProxy};

/// What one node process told the demo.
#[derive(Debug, Default)]
pub struct ReportState {
    pub id: Option<String>,
    /// Hashes whose `receive` returned Ok.
    pub submitted: Vec<String>,
    pub watcher: bool,
    pub link_downs: u32,
    pub link_ups: u32,
    /// `confirm` outcomes, in order (`Applied`, `AlreadyApplied`, `LostLock`, ...).
    pub outcomes: Vec<String>,
    /// How many blocks the node's own chain holds, as it last said.
    pub chain_len: usize,
    /// Each reconcile it made as the watcher: applied blocks undone, blocks replayed.
    pub reconciles: Vec<(usize, usize)>,
    /// Changes of the watcher flag, as a chaos node's probe saw them.
    pub flags: Vec<Flag>,
    /// Answers to `ping <token>`: the token, and whether the node reached Redis.
    pub pongs: Vec<(String, bool)>,
    /// Output lines that report a panic.
    pub panics: Vec<String>,
    /// Calls Redis refused for memory (`OutOfMemory`), by name, in order.
    pub refused_for_memory: Vec<String>,
}

impl ReportState {
    /// Whether the node's last call reached Redis.
    pub fn link_up(&self) -> bool {
        self.link_ups >= self.link_downs
    }
}

/// One change of a node's watcher flag, on the host's monotonic clock (nanoseconds). The probe
/// samples the flag, so the change happened after `after_ns` (the previous sample) and was seen
/// at `seen_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flag {
    pub up: bool,
    pub after_ns: u64,
    pub seen_ns: u64,
}

impl Flag {
    /// `up|down <after_ns> <seen_ns>`.
    fn parse(text: &str) -> Option<Flag> {
        let mut words = text.split(' ');
        let up = match words.next()? {
            "up" => true,
            "down" => false,
            _ => return None,
        };
        let after_ns = words.next()?.parse().ok()?;
        let seen_ns = words.next()?.parse().ok()?;
        Some(Flag {
            up,
            after_ns,
            seen_ns,
        })
    }
}

#[derive(Debug, Default)]
pub struct Report {
    state: Mutex<ReportState>,
}

impl Report {
    pub fn state(&self) -> MutexGuard<'_, ReportState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, fact: &str) {
        let mut s = self.state();
        let (word, rest) = fact.split_once(' ').unwrap_or((fact, ""));
        match (word, rest) {
            ("id", id) => s.id = Some(id.to_string()),
            ("submitted", hash) => s.submitted.push(hash.to_string()),
            ("role", role) => s.watcher = role == "watcher",
            ("link", "down") => s.link_downs += 1,
            ("link", "up") => s.link_ups += 1,
            ("confirm", rest) => {
                if let Some((_, outcome)) = rest.split_once(' ') {
                    s.outcomes.push(outcome.to_string());
                }
            }
            ("chain", len) => match len.parse() {
                Ok(len) => s.chain_len = len,
                Err(_) => say!("bad chain report {fact:?}"),
            },
            ("reconciled", rest) => {
                let mut n = rest.split(' ').map(str::parse::<usize>);
                match (n.next(), n.next()) {
                    (Some(Ok(undone)), Some(Ok(replayed))) => s.reconciles.push((undone, replayed)),
                    _ => say!("bad reconcile report {fact:?}"),
                }
            }
            ("flag", rest) => match Flag::parse(rest) {
                Some(flag) => s.flags.push(flag),
                None => say!("bad flag report {fact:?}"),
            },
            ("oom", call) => s.refused_for_memory.push(call.to_string()),
            ("pong", rest) => {
                let (token, result) = rest.split_once(' ').unwrap_or((rest, ""));
                s.pongs.push((token.to_string(), result == "ok"));
            }
            _ => say!("demo: unknown report {fact:?}"),
        }
    }

    pub fn id(&self) -> Option<String> {
        self.state().id.clone()
    }
}

struct Running {
    child: Child,
    report: Arc<Report>,
    readers: Vec<JoinHandle<()>>,
}

/// One node: its config, its proxy, and its current process (if any).
pub struct Node {
    pub index: usize,
    pub name: String,
    pub config: PathBuf,
    pub proxy: FaultProxy,
    /// Whether its output is printed (panics always are).
    pub echo: bool,
    running: Option<Running>,
    /// Every process this node has run, for the final accounting.
    pub runs: Vec<Arc<Report>>,
}

/// Prints each line of `from` with the node's name; hands `@`-lines to the report instead.
fn pump(
    name: String,
    from: impl Read + Send + 'static,
    report: Arc<Report>,
    echo: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            match line.strip_prefix('@') {
                Some(fact) => report.record(fact),
                None => {
                    let panicked = line.contains("panicked");
                    if panicked {
                        report.state().panics.push(line.clone());
                    }
                    if echo || panicked {
                        say!("[{name}] {line}");
                    }
                }
            }
        }
    })
}

impl Node {
    pub fn new(index: usize, name: &str, config: PathBuf, proxy: FaultProxy) -> Node {
        Node {
            index,
            name: name.to_string(),
            config,
            proxy,
            echo: true,
            running: None,
            runs: Vec::new(),
        }
    }

    /// Starts a process and waits until it has opened the mempool.
    pub fn spawn(&mut self, chain: &Chain) -> Result<Arc<Report>, String> {
        let exe = std::env::current_exe().map_err(|e| format!("no current exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg("node")
            .arg(&self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.name))?;
        let report = Arc::new(Report::default());
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(pump(self.name.clone(), out, report.clone(), self.echo));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(pump(self.name.clone(), err, report.clone(), self.echo));
        }
        if let Some(stdin) = child.stdin.take() {
            chain.attach(self.index, stdin);
        }
        let pid = child.id();
        self.running = Some(Running {
            child,
            report: report.clone(),
            readers,
        });
        self.runs.push(report.clone());
        // Nodes retry opening for 30 s when Redis is slow to answer.
        let patience = Duration::from_secs(40);
        wait_until(patience, || report.id().is_some() || self.exited());
        match report.id() {
            Some(_) => Ok(report),
            None if self.exited() => Err(format!(
                "{} (pid {pid}) exited before opening its mempool (see its output above)",
                self.name
            )),
            None => Err(format!(
                "{} (pid {pid}) did not open its mempool within {patience:?}",
                self.name
            )),
        }
    }

    /// Whether the current process is running (a stopped one counts as running).
    pub fn alive(&mut self) -> bool {
        !self.exited()
    }

    fn exited(&mut self) -> bool {
        match &mut self.running {
            Some(r) => !matches!(r.child.try_wait(), Ok(None)),
            None => true,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    pub fn report(&self) -> Option<Arc<Report>> {
        self.running.as_ref().map(|r| r.report.clone())
    }

    /// The node id of the current process.
    pub fn id(&self) -> Option<String> {
        self.report().and_then(|r| r.id())
    }

    /// SIGKILL: the process gets no chance to release its lock.
    pub fn kill(&mut self, chain: &Chain) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
            for reader in r.readers {
                let _ = reader.join();
            }
        }
        // Only now: closing its stdin first would ask it to exit gracefully, releasing the lock.
        chain.detach(self.index);
    }

    /// Asks the process to release its lock and exit; kills it if it does not within `grace`.
    pub fn quit(&mut self, chain: &Chain, grace: Duration) -> Result<(), String> {
        chain.send(self.index, "quit");
        chain.detach(self.index);
        let Some(mut r) = self.running.take() else {
            return Ok(());
        };
        let mut status = None;
        wait_until(grace, || {
            status = r.child.try_wait().ok().flatten();
            status.is_some()
        });
        for reader in std::mem::take(&mut r.readers) {
            if status.is_some() {
                let _ = reader.join();
            }
        }
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("{} exited with {s}", self.name)),
            None => {
                let _ = r.child.kill();
                let _ = r.child.wait();
                Err(format!("{} did not exit within {grace:?}", self.name))
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}
