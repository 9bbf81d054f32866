//! What a host observes of a node without asking Redis: the reference deployment's four log
//! lines (message, level and target, as an operator's log filters match them), the epoch of the
//! node's watcher term, and with the `metrics` feature the counters and gauges a host's exporter
//! publishes.
//!
//! Every test of this binary captures the logs (one logger per process) and, with the feature,
//! shares one Prometheus recorder (one recorder per process).

mod common;
use dolos_redis_testkit as support;

use std::time::Duration;

use common::{config, lone_watcher, open, point, LONG_TTL, SETTLE};
use dolos_redis::{ConfirmOutcome, LOG_TARGET};
use support::logs::{capture_logs, logs_containing};
use support::{wait_until, RedisServer};

/// A TTL whose renewals (every ttl/3) come quickly.
const SHORT_TTL: Duration = Duration::from_millis(300);

/// The captured lines that carry `message`, each as `LEVEL target message…`; asserts they all
/// have `level` and the crate's log target, and returns how many there are.
fn lines_with(level: &str, message: &str) -> usize {
    let lines = logs_containing(message);
    let prefix = format!("{level} {LOG_TARGET} {message}");
    for line in &lines {
        assert!(line.starts_with(&prefix), "{line:?} is not {prefix:?}…");
    }
    lines.len()
}

#[test]
fn the_four_reference_log_lines_keep_their_level_and_target() {
    capture_logs();
    assert_eq!(LOG_TARGET, "dolos_redis::mempool");
    let server = RedisServer::start();

    // `acquired watcher lock` (INFO), then `watcher lock renewed` (DEBUG) every ttl/3.
    let watcher = lone_watcher(config(&server, "logs").watcher_lock_ttl(SHORT_TTL));
    assert!(lines_with("INFO", "acquired watcher lock") >= 1);
    assert!(
        wait_until(SETTLE, || lines_with("DEBUG", "watcher lock renewed") >= 1),
        "no renewal logged"
    );

    // `not watcher, skipping confirm` (DEBUG): a follower's confirm.
    let follower = open(config(&server, "logs").watcher_lock_ttl(SHORT_TTL));
    assert!(!follower.is_watcher());
    let before = lines_with("DEBUG", "not watcher, skipping confirm");
    let outcome = follower.confirm(&point(1), &[], &[], 4, 8).unwrap();
    assert_eq!(outcome, ConfirmOutcome::NotWatcher);
    assert_eq!(
        lines_with("DEBUG", "not watcher, skipping confirm"),
        before + 1
    );

    // `lost watcher lock, skipping confirm` (DEBUG): the flag is still up, Redis disagrees. An
    // operator's reset removes the lock; with a long TTL the next renewal, which would lower
    // the flag, is ttl/3 = 10 s away.
    let stale = lone_watcher(config(&server, "logs-lost").watcher_lock_ttl(LONG_TTL));
    let holder = stale.node_id().to_string();
    assert_eq!(
        stale.reset_watcher_lock(Some(&holder)).unwrap(),
        Some(holder)
    );
    assert!(
        stale.is_watcher(),
        "the flag drops only at the next renewal"
    );
    let outcome = stale.confirm(&point(1), &[], &[], 4, 8).unwrap();
    assert_eq!(outcome, ConfirmOutcome::LostLock);
    assert_eq!(
        lines_with("DEBUG", "lost watcher lock, skipping confirm"),
        1
    );

    // `released watcher lock` (INFO) on a graceful shutdown, which the SIGTERM test of the node
    // example relies on too.
    drop(follower);
    watcher.shutdown().unwrap();
    assert!(lines_with("INFO", "released watcher lock") >= 1);
    drop(stale);
}

#[test]
fn watcher_epoch_names_the_current_term() {
    capture_logs();
    let server = RedisServer::start();
    let first = lone_watcher(config(&server, "epoch").watcher_lock_ttl(LONG_TTL));
    let epoch = first.watcher_epoch().expect("the watcher has an epoch");
    assert_eq!(epoch, first.watcher_info().unwrap().epoch);

    let second = open(config(&server, "epoch").watcher_lock_ttl(LONG_TTL));
    assert_eq!(second.watcher_epoch(), None, "a follower has none");
    first.shutdown().unwrap();
    assert!(wait_until(SETTLE, || second.is_watcher()));
    let next = second
        .watcher_epoch()
        .expect("the new watcher has an epoch");
    assert!(next > epoch, "{next} after {epoch}");
    assert_eq!(next, second.watcher_info().unwrap().epoch);

    // An observer never has one.
    let observer = open(config(&server, "epoch").watcher_candidate(false));
    assert_eq!(observer.watcher_epoch(), None);
}

#[cfg(feature = "metrics")]
mod metrics {
    use super::*;
    use std::sync::OnceLock;

    use common::{hash, propagate};
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

    /// The process's recorder, as a host would install it before opening the mempool.
    fn recorder() -> &'static PrometheusHandle {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        HANDLE.get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("the only recorder of this test binary")
        })
    }

    /// The value of the sample `series` (a name, with its labels if any) in the exporter's
    /// text output; 0 when absent.
    fn sample(series: &str) -> f64 {
        let text = recorder().render();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    #[test]
    fn counters_move_by_themselves_and_gauges_follow_stats() {
        capture_logs();
        recorder();
        let server = RedisServer::start();
        let m = lone_watcher(config(&server, "metrics").watcher_lock_ttl(SHORT_TTL));
        // Other tests of this binary acquire and renew too: counters only grow.
        assert!(sample("dolos_redis_lease_acquired_total") >= 1.0);
        assert!(wait_until(SETTLE, || sample(
            "dolos_redis_lease_renewals_total"
        ) >= 1.0));

        propagate(&m, &[1, 2, 3]);
        m.mark_acknowledged(&[hash(2)]).unwrap();
        assert_eq!(
            m.confirm(&point(10), &[hash(3)], &[], 4, 8).unwrap(),
            ConfirmOutcome::Applied
        );
        assert_eq!(
            m.confirm(&point(20), &[], &[], 4, 8).unwrap(),
            ConfirmOutcome::Applied
        );
        assert_eq!(sample("dolos_redis_blocks_applied_total"), 2.0);
        assert_eq!(m.rollback_to(&point(10)).unwrap(), ConfirmOutcome::Applied);
        assert_eq!(sample("dolos_redis_blocks_undone_total"), 1.0);
        m.receive(common::tx(4)).unwrap();

        // Gauges: what this stats() returned (the only stats() call of the binary).
        let stats = m.stats().unwrap();
        for (stage, n) in [
            ("pending", 1),
            ("propagated", 1),
            ("acknowledged", 1),
            ("confirmed", 1),
        ] {
            assert_eq!(
                sample(&format!("dolos_redis_txs{{stage=\"{stage}\"}}")),
                n as f64
            );
        }
        assert_eq!(sample("dolos_redis_applied_height"), 1.0);
        assert_eq!(
            sample("dolos_redis_applied_height"),
            stats.applied_blocks as f64
        );
        assert_eq!(sample("dolos_redis_is_watcher"), 1.0);
        assert_eq!(
            sample("dolos_redis_watcher_epoch"),
            stats.watcher.epoch as f64
        );
        assert_eq!(sample("dolos_redis_finalized_log_entries"), 0.0);
        assert!(sample("dolos_redis_used_memory_bytes") > 0.0);
        let text = recorder().render();
        assert!(
            text.contains("# HELP dolos_redis_lease_renewals_total successful renewals"),
            "{text}"
        );
        assert!(text.contains("# TYPE dolos_redis_txs gauge"), "{text}");

        // A loss counts: the lock removed under the watcher, which steps down at its next
        // renewal (ttl/3).
        let lost = sample("dolos_redis_lease_lost_total");
        m.reset_watcher_lock(Some(m.node_id())).unwrap();
        assert!(wait_until(SETTLE, || sample(
            "dolos_redis_lease_lost_total"
        ) > lost));
    }
}
