//! Capturing every `log` record a test binary emits, at every level, to check what never
//! appears in them (credentials). Replaces `init_logging` in the binaries that use it: a
//! process has one logger.

use std::sync::{Mutex, Once};

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let line = format!("{} {} {}", record.level(), record.target(), record.args());
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// Installs the capturing logger (once per process) at level Trace.
pub fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CAPTURE).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// Every captured line containing `needle`.
pub fn logs_containing(needle: &str) -> Vec<String> {
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Asserts that none of `secrets` appears in `shown` (Debug/Display strings the test collected)
/// nor in any captured log line, and that the capture saw the lease log at all.
pub fn assert_never_shown(shown: &[String], secrets: &[&str]) {
    for text in shown {
        println!("shown: {text}");
        for secret in secrets {
            assert!(!text.contains(secret), "password shown: {text}");
        }
    }
    let leaked: Vec<String> = secrets.iter().flat_map(|p| logs_containing(p)).collect();
    assert!(leaked.is_empty(), "password in logs: {leaked:#?}");
    // The capture works: the lease logged something in this binary.
    assert!(!logs_containing("watcher lock").is_empty());
}
