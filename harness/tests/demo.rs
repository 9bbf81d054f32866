//! The demo's scenarios, shortened (`demo --quick`: 1 s lock TTL, a block every 500 ms), so CI
//! proves they keep working: watcher killed while the chain forks (the new watcher reconciles),
//! watcher partitioned, operator reset, and the final check: every transaction Finalized exactly
//! once, the applied chain equal to the chain.
//!
//! The demo runs its nodes as child processes of its own executable, so this test runs the
//! built binary (which cargo builds before the test) rather than calling into it.

use dolos_redis_testkit as support;

use std::process::Command;
use std::time::Duration;

/// The quick demo takes about 6 s; this leaves room for a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);

/// `--quick` uses a 1 s lock TTL: a takeover after a partition takes at most about that long,
/// one after a kill a few liveness checks (about 150 ms; the line says how long the lock still
/// had), plus a margin for scheduling delays on a busy CI machine. Only the generous bound is
/// asserted; the figures are printed.
const TAKEOVER_LIMIT_MS: u64 = 1_000 + 1_000;

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
    let run = support::child::run(
        Command::new(env!("CARGO_BIN_EXE_demo")).arg("--quick"),
        TIMEOUT,
        "DEMO ",
    );
    let out = run.output;
    let status = run
        .status
        .unwrap_or_else(|| panic!("demo did not finish within {TIMEOUT:?}; output so far:\n{out}"));
    assert!(status.success(), "demo exited with {status}:\n{out}");
    println!("demo --quick took {:?}", run.elapsed);

    for expected in [
        "TAKEOVER (watcher killed)",
        "FORK while nobody is watcher",
        "RECONCILE on takeover",
        "TAKEOVER (watcher partitioned)",
        "LOCK RESET: ",
        "check: the applied chain is the chain, block for block",
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
