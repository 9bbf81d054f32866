//! Running a built tool as a child process, for the tests of tools that spawn their own node
//! processes (the demo, the chaos run) and so cannot be called in-process. Such a test finds
//! its binary with `env!("CARGO_BIN_EXE_<name>")`, which cargo builds before the test.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
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
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child process");
    let output = Arc::new(Mutex::new(Vec::new()));
    collect(child.stdout.take().expect("piped stdout"), output.clone());
    collect(child.stderr.take().expect("piped stderr"), output.clone());

    let mut status = None;
    let finished = super::wait_until(timeout, || {
        status = child.try_wait().expect("wait for the child process");
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = || String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    super::wait_until(Duration::from_secs(5), || text().contains(last_words));
    Run {
        status,
        output: text(),
        elapsed: started.elapsed(),
    }
}

/// Collects a child's output stream on a thread.
fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
}
