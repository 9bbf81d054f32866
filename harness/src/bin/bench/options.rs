//! The benchmark's command line (`cargo perf --help`).

use std::ffi::OsString;
use std::time::Duration;

use dolos_redis_harness::cli;

use crate::BATCH;

pub struct Opts {
    pub mode: &'static str,
    pub iters: usize,
    pub sizes: Vec<usize>,
    pub trials: usize,
    pub throughput: Duration,
    /// Alternating runs the throughput time is split into.
    pub tput_rounds: u32,
    pub counted: usize,
    pub server_iters: usize,
    pub memory_txs: usize,
    pub sequential_takeover: bool,
    /// Break the server time of each call down by the commands its script runs.
    pub profile: bool,
    /// Measured blocks of the steady state (issue 10's table).
    pub steady_blocks: usize,
    /// Txs of the mempool that the longest-command phase reads whole.
    pub longest_txs: u64,
    /// Phases to run (`None`: all).
    pub only: Option<Vec<String>>,
}

const PHASES: [&str; 10] = [
    "steady",
    "floors",
    "layouts",
    "per-item",
    "longest",
    "memory",
    "calls",
    "throughput",
    "scaling",
    "takeover",
];

pub const USAGE: &str = "\
usage: cargo perf [options]

  --quick             default: sizes 1k,10k,100k, 2000 iterations per call, about a minute
  --full              10000 iterations per call, 5 s throughput runs, 100 monitored calls
  --sizes A,B,...     mempool sizes for the scaling table (default 1000,10000,100000)
  --iters N           timed iterations per call (per size in the scaling table)
  --trials N          takeover trials of each kind (default 20)
  --sequential-takeover
                      run crash trials one after the other (default: staggered in parallel)
  --blocks N          measured blocks of the steady state (default 60; --full 300)
  --longest-txs N     txs read whole by the longest-command phase (default 100000)
  --only P,...        run only these phases: steady, floors, layouts, per-item, longest,
                      memory, calls, throughput, scaling, takeover
  --profile           break each call's server time down by the commands its script runs
                      (CONFIG RESETSTAT + INFO commandstats around every measured call)
  -h, --help          this text

Set REDIS_URL to use a running server instead of starting one.";

/// A positive number, `_` allowed between digits.
fn positive(v: &str) -> Result<usize, String> {
    v.replace('_', "")
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "not a positive number".to_string())
}

impl Opts {
    /// `None` for `--help`.
    pub fn parse(args: Vec<OsString>) -> Result<Option<Opts>, lexopt::Error> {
        use lexopt::prelude::*;
        let mut opts = Opts {
            mode: "quick",
            iters: 2000,
            sizes: vec![1_000, 10_000, 100_000],
            trials: 20,
            throughput: Duration::from_millis(1500),
            tput_rounds: 6,
            counted: 20,
            server_iters: 300,
            memory_txs: 10_000,
            sequential_takeover: false,
            profile: false,
            steady_blocks: 60,
            longest_txs: 100_000,
            only: None,
        };
        let mut iters = None;
        let mut parser = lexopt::Parser::from_args(args);
        while let Some(arg) = parser.next()? {
            match arg {
                Long("quick") => opts.mode = "quick",
                Long("full") => {
                    opts.mode = "full";
                    opts.iters = 10_000;
                    opts.throughput = Duration::from_secs(5);
                    opts.tput_rounds = 10;
                    opts.counted = 100;
                    opts.server_iters = 2000;
                    opts.steady_blocks = 300;
                }
                Long("blocks") => opts.steady_blocks = cli::value(&mut parser, "blocks", positive)?,
                Long("longest-txs") => {
                    opts.longest_txs = cli::value(&mut parser, "longest-txs", positive)? as u64
                }
                Long("iters") => iters = Some(cli::value(&mut parser, "iters", positive)?),
                Long("trials") => opts.trials = cli::value(&mut parser, "trials", positive)?,
                Long("sizes") => {
                    let v = parser.value()?.string()?;
                    let mut sizes = v
                        .split(',')
                        .map(|s| positive(s.trim()).map_err(|e| format!("--sizes {s:?}: {e}")))
                        .collect::<Result<Vec<_>, _>>()?;
                    sizes.sort_unstable();
                    sizes.dedup();
                    if sizes.iter().any(|&s| s < 2 * BATCH) {
                        return Err(
                            format!("--sizes: every size must be at least {}", 2 * BATCH).into(),
                        );
                    }
                    opts.sizes = sizes;
                }
                Long("sequential-takeover") => opts.sequential_takeover = true,
                Long("profile") => opts.profile = true,
                Long("only") => {
                    let v = parser.value()?.string()?;
                    let phases: Vec<String> = v.split(',').map(|p| p.trim().to_string()).collect();
                    if let Some(bad) = phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
                        return Err(format!("--only: unknown phase {bad:?}").into());
                    }
                    opts.only = Some(phases);
                }
                Short('h') | Long("help") => return Ok(None),
                _ => return Err(arg.unexpected()),
            }
        }
        if let Some(n) = iters {
            opts.iters = n;
        }
        Ok(Some(opts))
    }

    pub fn runs(&self, phase: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|p| p == phase))
    }
}
