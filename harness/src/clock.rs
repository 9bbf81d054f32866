//! The clock and the signals of the chaos run.
//!
//! Node processes stamp their watcher-flag changes and the harness stamps its faults with
//! `CLOCK_MONOTONIC`, which every process on the host reads alike, so the stamps can be compared
//! across processes (std's `Instant` reads the same clock but does not expose its value).

use std::time::Duration;

/// Nanoseconds on the host's monotonic clock.
#[cfg(unix)]
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists on every Unix we
    // support, so the call cannot fail.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Elsewhere the chaos run refuses to start (see its `main`); this only keeps the code compiling.
#[cfg(not(unix))]
pub fn mono_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Milliseconds from `from` to `to` (negative if `to` comes first).
pub fn ms_between(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / 1e6
}

pub fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

#[derive(Clone, Copy, Debug)]
pub enum Signal {
    Stop,
    Cont,
}

#[cfg(unix)]
pub fn send(pid: u32, signal: Signal) -> Result<(), String> {
    let sig = match signal {
        Signal::Stop => libc::SIGSTOP,
        Signal::Cont => libc::SIGCONT,
    };
    // SAFETY: kill(2) takes plain integers; a stale pid only makes it fail with ESRCH.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "kill({pid}, {signal:?}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

#[cfg(not(unix))]
pub fn send(pid: u32, signal: Signal) -> Result<(), String> {
    Err(format!("cannot send {signal:?} to {pid} on this platform"))
}

/// Whether the process is stopped (state `T` in `/proc/<pid>/stat`). Without `/proc` we cannot
/// tell, and say so with `None`.
pub fn is_stopped(pid: u32) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`: comm may contain spaces or parentheses, the state follows the last ')'.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    Some(state == "T" || state == "t")
}
