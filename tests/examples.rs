//! The examples as an operator or a developer runs them: real processes, found where `cargo
//! test` built them (`target/<profile>/examples/`; `cargo test --test examples` alone builds
//! none, see [`support::child::example_binary`]).
//!
//! * every example answers `--help` with its usage and exit status 0;
//! * the node runner hands the watcher lock over on SIGTERM: two node processes on a private
//!   redis-server, the watcher is sent SIGTERM, it releases its lock (the `WatcherReleased`
//!   event and its `released watcher lock` line) and the other takes over long before the lock
//!   could have expired;
//! * the node runner refuses a misspelt key of its `[storage.mempool]` table, naming the key it
//!   meant;
//! * the inspector prints the watcher's full node id, and one JSON object with `--json`;
//! * `dolos_store` plays its story to the end, with one WARN for its Redis outage.

#![cfg(unix)]

mod common;
use dolos_redis_testkit as support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{config, open};
use dolos_redis::MempoolEvent;
use support::child::{example_binary, run, Running};
use support::RedisServer;

/// Bound for a process to start, print or end: far above what it needs on an idle machine.
const PROCESS: Duration = Duration::from_secs(60);

/// Every example of the package (`metrics` needs its feature).
fn examples() -> Vec<&'static str> {
    let mut names = vec![
        "node",
        "inspector",
        "two_nodes",
        "async_host",
        "dolos_store",
    ];
    if cfg!(feature = "metrics") {
        names.push("metrics");
    }
    names
}

#[test]
fn every_example_answers_help_with_its_usage() {
    for name in examples() {
        for flag in ["--help", "-h"] {
            let out = run(
                Command::new(example_binary(name)).arg(flag),
                PROCESS,
                "usage",
            );
            let status = out.status.expect("--help returns at once");
            assert!(status.success(), "{name} {flag}: {status}\n{}", out.output);
            assert!(
                out.output.starts_with("usage: "),
                "{name} {flag}:\n{}",
                out.output
            );
        }
        // An argument it does not take is an error, not a file name or a run.
        let mut cmd = Command::new(example_binary(name));
        let out = run(cmd.arg("--no-such-option"), PROCESS, "usage");
        let status = out.status.expect("a bad option returns at once");
        assert!(!status.success(), "{name}: {status}\n{}", out.output);
        assert!(out.output.contains("usage"), "{name}:\n{}", out.output);
    }
}

/// A node runner's TOML file: the reference table (with a long TTL) and the runner's own.
fn write_node_file(dir: &Path, name: &str, url: &str, prefix: &str, ttl_secs: u64) -> String {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[storage.mempool]\n\
         backend = \"redis\"\n\
         url = \"{url}\"\n\
         key_prefix = \"{prefix}\"\n\
         pool_size = 2\n\
         watcher_lock_ttl = {ttl_secs}\n\
         \n\
         [node]\n\
         name = \"{name}\"\n"
    );
    std::fs::write(&path, text).expect("write the node file");
    path.to_string_lossy().into_owned()
}

fn node(path: &str) -> Running {
    Running::spawn(
        Command::new(example_binary("node"))
            .arg(path)
            .env("RUST_LOG", "info"),
    )
}

/// The node id a runner printed (`<name>: opened mempool "<prefix>" as node <id>`).
fn node_id(runner: &Running) -> String {
    let output = runner.output();
    output
        .lines()
        .find_map(|l| {
            l.split_once(" as node ")
                .map(|(_, id)| id.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no node id in:\n{output}"))
}

#[test]
fn sigterm_hands_the_watcher_lock_over() {
    // A lock that would take at least ttl - ttl/3 = 40 s to expire after the watcher's last
    // renewal: a takeover within TAKEOVER can only be the graceful handover.
    const TTL_SECS: u64 = 60;
    const TAKEOVER: Duration = Duration::from_secs(20);
    let server = RedisServer::start();
    let dir = support::tempfile::tempdir().expect("a temp dir");
    let prefix = "sigterm";
    let first = node(&write_node_file(
        dir.path(),
        "first",
        &server.url(),
        prefix,
        TTL_SECS,
    ));
    assert!(
        first.wait_for("first: now the watcher", PROCESS),
        "{}",
        first.output()
    );
    let mut second = node(&write_node_file(
        dir.path(),
        "second",
        &server.url(),
        prefix,
        TTL_SECS,
    ));
    assert!(
        second.wait_for("second: following", PROCESS),
        "{}",
        second.output()
    );
    let (first_id, second_id) = (node_id(&first), node_id(&second));

    // An observer's events show the release and the acquisition.
    let observer = open(config(&server, prefix).watcher_candidate(false));
    let events = observer.subscribe();

    let mut first = first;
    let sent = Instant::now();
    // SAFETY: kill(2) with a pid this test spawned and still owns (not yet reaped).
    let rc = unsafe { libc::kill(first.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill -TERM");
    let status = first.wait_exit(PROCESS).expect("the node exits on SIGTERM");
    assert!(status.success(), "{status}\n{}", first.output());
    let out = first.output();
    assert!(out.contains("released watcher lock"), "{out}");
    assert!(out.contains("first: handed the watcher lock over"), "{out}");

    assert!(
        second.wait_for("second: now the watcher", TAKEOVER),
        "no takeover within {TAKEOVER:?} of SIGTERM:\n{}",
        second.output()
    );
    println!("takeover {:?} after SIGTERM", sent.elapsed());
    let (mut released, mut acquired) = (false, false);
    let deadline = Instant::now() + TAKEOVER;
    while !(released && acquired) {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(MempoolEvent::WatcherReleased { node_id, .. }) if node_id == first_id => {
                released = true
            }
            Ok(MempoolEvent::WatcherAcquired { node_id, .. }) if node_id == second_id => {
                assert!(released, "acquired before the release");
                acquired = true;
            }
            Ok(_) => {}
            Err(e) => panic!("released {released}, acquired {acquired}: {e}"),
        }
    }

    // Ctrl-C (SIGINT) does the same for the new watcher.
    // SAFETY: as above.
    let rc = unsafe { libc::kill(second.pid() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0, "kill -INT");
    let status = second.wait_exit(PROCESS).expect("the node exits on SIGINT");
    assert!(status.success(), "{status}\n{}", second.output());
    assert!(second.output().contains("released watcher lock"));
    assert_eq!(observer.watcher_info().unwrap().holder, None);
}

#[test]
fn the_node_runner_refuses_a_misspelt_key() {
    let dir = support::tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("typo.toml");
    std::fs::write(
        &path,
        "[storage.mempool]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nwatcher_lock_tll = 3\n",
    )
    .unwrap();
    let mut cmd = Command::new(example_binary("node"));
    let out = run(cmd.arg(&path), PROCESS, "did you mean");
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{}", out.output);
    assert!(
        out.output.contains("watcher_lock_tll: ")
            && out.output.contains("did you mean `watcher_lock_ttl`?"),
        "{}",
        out.output
    );
}

#[test]
fn the_inspector_prints_the_full_node_id_and_json() {
    let server = RedisServer::start();
    let watcher = common::lone_watcher(config(&server, "inspected"));
    let id = watcher.node_id().to_string();
    let inspect = |extra: &[&str]| {
        let mut cmd = Command::new(example_binary("inspector"));
        cmd.args(["--url", &server.url(), "--prefix", "inspected", "--once"])
            .args(extra);
        let out = run(&mut cmd, PROCESS, "\n");
        assert!(out.status.is_some_and(|s| s.success()), "{}", out.output);
        out.output
    };
    let text = inspect(&[]);
    assert!(
        text.starts_with(&format!("Current watcher: {id} (TTL: ")),
        "{text}"
    );
    let json = inspect(&["--json"]);
    assert_eq!(json.lines().count(), 1, "{json}");
    assert!(
        json.starts_with(&format!("{{\"watcher\":{{\"holder\":\"{id}\",\"ttl_ms\":")),
        "{json}"
    );
    for field in [
        "\"pending\":0",
        "\"applied_blocks\":0",
        "\"maxmemory_policy\":\"noeviction\"",
    ] {
        assert!(json.contains(field), "{field} in {json}");
    }
    assert!(json.trim_end().ends_with("}}"), "{json}");
}

#[test]
fn dolos_store_plays_its_story_with_one_warning_per_outage() {
    let out = run(
        Command::new(example_binary("dolos_store")).env_remove("REDIS_URL"),
        PROCESS,
        "every transaction ended as expected",
    );
    let status = out.status.expect("dolos_store ends");
    assert!(status.success(), "{status}\n{}", out.output);
    assert!(
        out.output.contains("every transaction ended as expected"),
        "{}",
        out.output
    );
    assert_eq!(
        out.output.matches("redis unreachable (").count(),
        1,
        "{}",
        out.output
    );
    assert!(out.output.contains("redis answers again"), "{}", out.output);
}
