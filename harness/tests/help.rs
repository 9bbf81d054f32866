//! Each tool answers `--help` (and `-h`) with its usage and exit status 0, and refuses an option
//! it does not know with status 2, without starting a run.

use dolos_redis_testkit as support;

use std::process::Command;
use std::time::Duration;

#[test]
fn every_tool_answers_help_with_its_usage() {
    for (name, exe) in [
        ("demo", env!("CARGO_BIN_EXE_demo")),
        ("chaos", env!("CARGO_BIN_EXE_chaos")),
        ("bench", env!("CARGO_BIN_EXE_bench")),
    ] {
        for flag in ["--help", "-h"] {
            let out = support::child::run(
                Command::new(exe).arg(flag),
                Duration::from_secs(60),
                "usage",
            );
            let status = out.status.expect("--help returns at once");
            assert!(status.success(), "{name} {flag}: {status}\n{}", out.output);
            assert!(
                out.output.starts_with("usage: cargo "),
                "{name} {flag}:\n{}",
                out.output
            );
        }
        let out = support::child::run(
            Command::new(exe).arg("--no-such-option"),
            Duration::from_secs(60),
            "usage",
        );
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(2),
            "{name}:\n{}",
            out.output
        );
    }
}
