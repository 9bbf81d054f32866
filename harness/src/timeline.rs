//! The timeline the demo and the chaos run print: every line stamped with the seconds since the
//! run started ([`say!`](crate::say)), the lines of the node processes and the run's own log
//! lines alike.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();
/// The stamp's width, its two decimals included.
static WIDTH: OnceLock<usize> = OnceLock::new();

/// Starts the clock (if nothing stamped a line yet) and sets the width of the stamps.
pub fn start(width: usize) {
    START.get_or_init(Instant::now);
    let _ = WIDTH.set(width);
}

/// Seconds since the run started.
pub fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// `[  1.23s]`.
pub fn stamp() -> String {
    let width = WIDTH.get().copied().unwrap_or(6);
    format!("[{:>width$.2}s]", elapsed())
}

/// The run's own library logs (its observer's) on the timeline, as `[  1.23s] [tag] LEVEL
/// target: message`: errors only, unless `RUST_LOG` says otherwise (the observer's event
/// reader warns whenever Redis goes away, which the runs make it do).
pub fn log_errors(tag: &'static str) {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error"))
        .format(move |buf, r| {
            writeln!(
                buf,
                "{} [{tag}] {} {}: {}",
                stamp(),
                r.level(),
                r.target(),
                r.args()
            )
        })
        .try_init();
}
