//! Running a built example as a child process, for the tests of examples that spawn their own
//! node processes (the demo, the chaos run) and so cannot be called in-process.
//!
//! `cargo test` builds examples into `target/<profile>/examples/`, next to the test binary's
//! `deps/` directory; `cargo test --test <name>` alone does not rebuild them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The built example `name`; panics with how to build it if it is missing, and notes when it
/// is older than the sources.
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
        "{name} binary not found at {}: `cargo test --all-features` builds it; with \
         `--test {name}` alone, run `cargo build --example {name}` first",
        binary.display()
    );
    if is_stale(&binary) {
        println!(
            "note: {} is older than the sources; `cargo test` rebuilds it",
            binary.display()
        );
    }
    binary
}

/// Whether a source the example is built from changed after the binary was built.
fn is_stale(binary: &Path) -> bool {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src"), root.join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
            {
                return true;
            }
        }
    }
    false
}

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
        .expect("start the example");
    let output = Arc::new(Mutex::new(Vec::new()));
    collect(child.stdout.take().expect("piped stdout"), output.clone());
    collect(child.stderr.take().expect("piped stderr"), output.clone());

    let mut status = None;
    let finished = super::wait_until(timeout, || {
        status = child.try_wait().expect("wait for the example");
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
