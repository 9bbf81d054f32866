//! The tools of dolos-redis, as binaries of this crate: the demo (`cargo demo`) and the chaos run
//! (`cargo chaos`), which run whole deployments on one machine, and the benchmark (`cargo perf`).
//! What the demo and the chaos run share lives here:
//!
//! * [`node`]: the node process they both start (their own executable run as `<tool> node
//!   <file>`), configured by a file of [`node_config`] and fed the chain by the lines of
//!   [`protocol`];
//! * [`cluster`]: those processes seen from the harness, each behind a fault proxy, and what
//!   they report;
//! * [`chain`]: the simulated chain, which forks now and then;
//! * [`ledger`]: every event the mempool published, for the final checks;
//! * [`clock`]: a clock shared across processes, and signals;
//! * [`timeline`] and [`say!`]: the stamped lines they print;
//! * [`keys`]: the keys of a prefix, for the tools that clean up after themselves;
//! * [`cli`]: what their command lines share.

/// Prints one timeline line, stamped with the time since the run started
/// ([`timeline::stamp`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{} {}", $crate::timeline::stamp(), format_args!($($arg)*))
    };
}

pub mod chain;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod keys;
pub mod ledger;
pub mod node;
pub mod node_config;
pub mod protocol;
pub mod timeline;
