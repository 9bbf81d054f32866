//! The demo's scenarios, shortened (`demo --quick`: 1 s lock TTL, a block every 500 ms), so CI
//! proves they keep working: watcher killed, watcher partitioned, operator reset, and the final
//! exactly-once check of every transaction.
//!
//! The demo runs its nodes as child processes of its own executable, so this test runs the
//! built example rather than calling into it. `cargo test` builds examples into
//! `target/<profile>/examples/`, next to this test's `deps/` directory — for this one only with
//! the `serde` feature, hence the `cfg` (CI runs `cargo test --all-features`).

#![cfg(feature = "serde")]

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The quick demo takes about 10 s; this leaves room for a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);

/// `--quick` uses a 1 s lock TTL: a takeover after a crash or a partition takes at most about
/// that long, plus a margin for scheduling delays on a busy CI machine.
const TAKEOVER_LIMIT_MS: u64 = 1_000 + 1_000;

fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/demo-<hash> → target/<profile>/examples/demo
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    profile_dir
        .join("examples")
        .join(format!("demo{}", std::env::consts::EXE_SUFFIX))
}

/// Whether a source the demo is built from changed after the binary was built: `cargo test
/// --test demo` alone does not rebuild examples.
fn binary_is_stale(binary: &Path) -> bool {
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

/// The number in `... took over after <n> ms` on the line containing `marker`.
fn takeover_ms(output: &str, marker: &str) -> u64 {
    let line = output
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line with {marker:?} in the demo's output"));
    let after = line
        .split("took over after ")
        .nth(1)
        .unwrap_or_else(|| panic!("no takeover time in {line:?}"));
    after
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no takeover time in {line:?}"))
}

#[test]
fn quick_demo_passes_every_scenario() {
    let demo = demo_binary();
    assert!(
        demo.exists(),
        "demo binary not found at {}: `cargo test --features serde` (or --all-features) builds \
         it; with `--test demo` alone, run `cargo build --features serde --example demo` first",
        demo.display()
    );
    if binary_is_stale(&demo) {
        println!(
            "note: {} is older than the sources; `cargo test --features serde` rebuilds it",
            demo.display()
        );
    }
    let started = Instant::now();
    let mut child = Command::new(&demo)
        .arg("--quick")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let output = Arc::new(Mutex::new(Vec::new()));
    collect(child.stdout.take().unwrap(), output.clone());
    collect(child.stderr.take().unwrap(), output.clone());

    let mut status = None;
    let finished = support::wait_until(TIMEOUT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The reader threads finish once the demo and its nodes have closed their pipes.
    let text = || String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    support::wait_until(Duration::from_secs(5), || {
        text().contains("DEMO PASSED") || text().contains("DEMO FAILED")
    });
    let out = text();
    assert!(
        finished,
        "demo did not finish within {TIMEOUT:?}; output so far:\n{out}"
    );
    let status = status.unwrap();
    assert!(status.success(), "demo exited with {status}:\n{out}");
    println!("demo --quick took {:?}", started.elapsed());

    for expected in [
        "TAKEOVER (watcher killed)",
        "TAKEOVER (watcher partitioned)",
        "LOCK RESET: ",
        "check: every transaction reached Finalized exactly once",
        "DEMO PASSED",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert_eq!(
        out.matches("rejoined as a non-watcher").count(),
        2,
        "both the restarted and the healed node rejoin as non-watchers:\n{out}"
    );
    for marker in [
        "TAKEOVER (watcher killed)",
        "TAKEOVER (watcher partitioned)",
    ] {
        let took = takeover_ms(&out, marker);
        println!("{marker}: {took} ms");
        assert!(
            took < TAKEOVER_LIMIT_MS,
            "{marker} took {took} ms (limit {TAKEOVER_LIMIT_MS} ms):\n{out}"
        );
    }
}
