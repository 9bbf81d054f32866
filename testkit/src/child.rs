//! Running a built tool as a child process, for the tests of tools that spawn their own node
//! processes (the demo, the chaos run) and so cannot be called in-process. Such a test finds
//! its binary with `env!("CARGO_BIN_EXE_<name>")`, which cargo builds before the test; an
//! example has no such variable, and [`example_binary`] finds it instead. [`run`] waits for the
//! end; [`Running`] lets a test act on what a process says while it runs.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a finished (or timed-out) run printed.
pub struct Run {
    /// `None` when the run did not finish within its timeout (it was killed).
    pub status: Option<ExitStatus>,
    /// Stdout and stderr, interleaved as they came.
    pub output: String,
    pub elapsed: Duration,
}

/// Runs `cmd` with its output collected, killing it after `timeout`. Once it exits, waits
/// briefly until the output contains `last_words` (the readers finish when the run and its
/// node processes have closed their pipes).
pub fn run(cmd: &mut Command, timeout: Duration, last_words: &str) -> Run {
    let started = Instant::now();
    let mut running = Running::spawn(cmd);
    let status = running.wait_exit(timeout);
    if status.is_none() {
        let _ = running.child.kill();
        let _ = running.child.wait();
    }
    super::wait_until(Duration::from_secs(5), || {
        running.output().contains(last_words)
    });
    Run {
        status,
        output: running.output(),
        elapsed: started.elapsed(),
    }
}

/// Collects a child's output stream on a thread, which counts itself in `ended` at the
/// stream's end.
fn collect(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
    ended: Arc<AtomicUsize>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        ended.fetch_add(1, Ordering::SeqCst);
    });
}

/// The built example `name`: `cargo test` builds every example (that its features allow) into
/// `target/<profile>/examples/`, beside the test binary's `deps/`, before any test runs. Panics
/// with how to build it when it is missing (`cargo test --test <name>` alone builds none).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/examples/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "example {name} not found at {}: `cargo test --all-features` builds it; with `--test` \
         alone, run `cargo build --all-features --examples` first",
        binary.display()
    );
    binary
}

/// A child process whose output (stdout and stderr, interleaved) is collected as it comes.
/// Dropping it kills the process if it still runs.
pub struct Running {
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    /// How many of its two output streams have been read to their end.
    ended: Arc<AtomicUsize>,
}

impl Running {
    /// Starts `cmd` with stdin closed and its output collected.
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the child process");
        let output = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicUsize::new(0));
        let stdout = child.stdout.take().expect("piped stdout");
        collect(stdout, output.clone(), ended.clone());
        let stderr = child.stderr.take().expect("piped stderr");
        collect(stderr, output.clone(), ended.clone());
        Running {
            child,
            output,
            ended,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until its output contains `text`; returns whether it did within `timeout`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.output().contains(text))
    }

    /// Waits for it to exit; `None` if it still runs after `timeout` (it is left running).
    /// Once it has exited, also waits (up to 5 s) until what it printed last has been read:
    /// the reader threads lag behind the exit, so a line written just before it (a log line
    /// on stderr, say) may not be in [`output`](Running::output) yet when the exit shows.
    /// Processes it started and that outlive it may hold the streams open; then the wait ends
    /// at the 5 s.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        super::wait_until(timeout, || {
            status = self.child.try_wait().expect("wait for the child process");
            status.is_some()
        });
        if status.is_some() {
            super::wait_until(Duration::from_secs(5), || {
                self.ended.load(Ordering::SeqCst) == 2
            });
        }
        status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
