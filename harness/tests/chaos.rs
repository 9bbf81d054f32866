//! The chaos run (`cargo chaos`) in CI: three node processes, a simulated chain that
//! forks now and then and a fault proxy per node on a persistent Redis, with kill -9, SIGSTOP,
//! partitions, Redis restarts, a hand-made `DEL` of the lock and a full Redis injected at random
//! for a short while (every kind at least once), then every invariant checked. About 30 s.
//!
//! `DOLOS_REDIS_SOAK_SECS=<n>` runs a soak of `n` seconds of faults instead (quiet, only the
//! summary is printed); `DOLOS_REDIS_CHAOS_SEED=<n>` replays a seed.
//!
//! The run spawns its nodes from its own executable, so this test runs the built binary (which
//! cargo builds before the test) rather than calling into it.

#![cfg(unix)]

use dolos_redis_testkit as support;

use std::process::Command;
use std::time::Duration;

/// Seconds of faults in CI: enough for the six kinds and a few more.
const CI_SECS: u64 = 20;

/// The example's strict bounds (TTL + 100 ms after a crash, pause or partition) hold on an idle
/// machine; on a loaded 2-core CI machine a follower's lease thread can be scheduled late, so
/// CI fails a takeover only beyond bound + this, and prints the measured values either way.
const TAKEOVER_SLACK_MS: u64 = 1_000;

/// Scheduling allowance in the watcher-overlap margin (TTL/10 + this): a resumed or cut-off
/// watcher's lease thread, and the probes that sample the flags every millisecond, may run late
/// on a loaded machine.
const SCHED_MS: u64 = 250;

/// The count on the `faults injected` line for `row`.
fn fault_count(out: &str, row: &str) -> usize {
    out.lines()
        .find(|l| l.trim_start().starts_with(row) && !l.contains(':'))
        .and_then(|l| l.trim_start()[row.len()..].split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fault count for {row:?} in:\n{out}"))
}

#[test]
fn chaos_run_keeps_every_invariant() {
    let soak: Option<u64> = std::env::var("DOLOS_REDIS_SOAK_SECS").ok().map(|v| {
        v.parse()
            .expect("DOLOS_REDIS_SOAK_SECS must be a number of seconds")
    });
    let secs = soak.unwrap_or(CI_SECS);
    // A hang guard, far above the expected time (secs + about 10 s).
    let timeout = Duration::from_secs(secs + 120);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chaos"));
    cmd.args(["--secs", &secs.to_string(), "--ttl-ms", "1000"])
        .args(["--takeover-slack-ms", &TAKEOVER_SLACK_MS.to_string()])
        .args(["--sched-ms", &SCHED_MS.to_string()]);
    if soak.is_some() {
        cmd.arg("--quiet");
    }
    if let Ok(seed) = std::env::var("DOLOS_REDIS_CHAOS_SEED") {
        cmd.args(["--seed", &seed]);
    }
    let run = support::child::run(&mut cmd, timeout, "reproduce: ");
    let out = run.output;
    let status = run.status.unwrap_or_else(|| {
        panic!("the chaos run did not finish within {timeout:?}; output so far:\n{out}")
    });
    assert!(status.success(), "the chaos run failed ({status}):\n{out}");
    assert!(out.contains("RESULT: PASS"), "no RESULT: PASS in:\n{out}");

    let summary = out
        .split_once("chaos run summary")
        .map(|(_, s)| s)
        .unwrap_or(&out);
    println!("chaos run took {:?}{summary}", run.elapsed);
    assert!(
        fault_count(&out, "kill -9 (watcher)") + fault_count(&out, "kill -9 (follower)") >= 1,
        "no kill -9 injected:\n{out}"
    );
    assert!(
        fault_count(&out, "partition (watcher)") + fault_count(&out, "partition (follower)") >= 1,
        "no partition injected:\n{out}"
    );
    for row in ["SIGSTOP watcher", "redis restart", "DEL lock", "redis full"] {
        assert!(fault_count(&out, row) >= 1, "no {row} injected:\n{out}");
    }
    // Every SIGSTOP forks the chain behind the stopped watcher, and its successor reconciles.
    for row in ["chain forks", "reconciles"] {
        assert!(fault_count(&out, row) >= 1, "no {row} in:\n{out}");
    }
}
