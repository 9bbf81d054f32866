//! What the crate publishes through the [`metrics`](https://docs.rs/metrics) facade (cargo
//! feature `metrics`), so that the exporter a host already runs (Prometheus, StatsD, …) picks
//! it up. The library installs no recorder and exports nothing by itself; without a recorder,
//! or without the feature, every function here does nothing.
//!
//! * **Counters** move where the event happens, on the thread that makes it: the lease thread
//!   counts acquisitions, renewals, failed renewals and losses, and `confirm`/`rollback_to`
//!   count the blocks this node applied and undid.
//! * **Gauges** are what [`RedisMempool::stats`](crate::RedisMempool::stats) returns, set by
//!   every successful call to it (one round trip, which is why nothing calls it behind the
//!   host's back): a host calls `stats()` on a timer, every 10–15 s or at its scrape interval.
//!
//! Counters are per process: every `RedisMempool` opened in one process adds to the same ones.
//! [`NAMES`] lists every metric; the README's Metrics section shows them.

// Without the feature the names are only read by the unit test.
#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

/// Every metric the crate publishes: name, kind, and what it measures.
pub(crate) const NAMES: &[(&str, &str, &str)] = &[
    (ACQUIRED, "counter", "times this node acquired the watcher lock"),
    (RENEWALS, "counter", "successful renewals of the watcher lock by this node"),
    (FAILED_RENEWALS, "counter", "renewals by this node that failed (it retries until its deadline)"),
    (LOST, "counter", "times this node stepped down without a graceful release"),
    (BLOCKS_APPLIED, "counter", "blocks this node applied as the watcher (confirm returned Applied)"),
    (BLOCKS_UNDONE, "counter", "applied blocks this node undid as the watcher (confirm with unseen, rollback_to)"),
    (TXS, "gauge", "transactions per stage (label stage: pending, propagated, acknowledged, confirmed), at the last stats()"),
    (FINALIZED_LOG, "gauge", "entries (Finalized and Dropped) in the retained finalized log, at the last stats()"),
    (APPLIED_HEIGHT, "gauge", "height of the applied chain, at the last stats()"),
    (WATCHER_EPOCH, "gauge", "epoch of the watcher lock, at the last stats()"),
    (IS_WATCHER, "gauge", "1 while this node held the watcher lock, at the last stats()"),
    (USED_MEMORY, "gauge", "redis used_memory in bytes, at the last stats()"),
    (MAXMEMORY, "gauge", "redis maxmemory in bytes (0: no limit), at the last stats()"),
];

const ACQUIRED: &str = "dolos_redis_lease_acquired_total";
const RENEWALS: &str = "dolos_redis_lease_renewals_total";
const FAILED_RENEWALS: &str = "dolos_redis_lease_failed_renewals_total";
const LOST: &str = "dolos_redis_lease_lost_total";
const BLOCKS_APPLIED: &str = "dolos_redis_blocks_applied_total";
const BLOCKS_UNDONE: &str = "dolos_redis_blocks_undone_total";
const TXS: &str = "dolos_redis_txs";
const FINALIZED_LOG: &str = "dolos_redis_finalized_log_entries";
const APPLIED_HEIGHT: &str = "dolos_redis_applied_height";
const WATCHER_EPOCH: &str = "dolos_redis_watcher_epoch";
const IS_WATCHER: &str = "dolos_redis_is_watcher";
const USED_MEMORY: &str = "dolos_redis_used_memory_bytes";
const MAXMEMORY: &str = "dolos_redis_maxmemory_bytes";

/// What a lease step changed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LeaseEvent {
    Acquired,
    Renewed,
    RenewalFailed,
    Lost,
}

/// Counts a lease event (lease thread).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn lease(event: LeaseEvent) {
    #[cfg(feature = "metrics")]
    metrics::counter!(match event {
        LeaseEvent::Acquired => ACQUIRED,
        LeaseEvent::Renewed => RENEWALS,
        LeaseEvent::RenewalFailed => FAILED_RENEWALS,
        LeaseEvent::Lost => LOST,
    })
    .increment(1);
}

/// Counts blocks this node applied (`applied`) or undid.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn blocks(applied: bool, count: i64) {
    #[cfg(feature = "metrics")]
    metrics::counter!(if applied {
        BLOCKS_APPLIED
    } else {
        BLOCKS_UNDONE
    })
    .increment(count.max(0) as u64);
}

/// Sets the gauges to what `stats()` returned.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn stats(stats: &crate::MempoolStats) {
    #[cfg(feature = "metrics")]
    {
        describe();
        for (stage, n) in [
            ("pending", stats.pending),
            ("propagated", stats.propagated),
            ("acknowledged", stats.acknowledged),
            ("confirmed", stats.confirmed),
        ] {
            metrics::gauge!(TXS, "stage" => stage).set(n as f64);
        }
        metrics::gauge!(FINALIZED_LOG).set(stats.finalized_log as f64);
        metrics::gauge!(APPLIED_HEIGHT).set(stats.applied_blocks as f64);
        metrics::gauge!(WATCHER_EPOCH).set(stats.watcher.epoch as f64);
        metrics::gauge!(IS_WATCHER).set(if stats.is_watcher { 1.0 } else { 0.0 });
        metrics::gauge!(USED_MEMORY).set(stats.used_memory as f64);
        metrics::gauge!(MAXMEMORY).set(stats.maxmemory as f64);
    }
}

/// Gives every metric its description (the `# HELP` line of a Prometheus exporter), once the
/// host's recorder is installed: at `open` and at each `stats()` (a recorder ignores repeats).
pub(crate) fn describe() {
    #[cfg(feature = "metrics")]
    for (name, kind, help) in NAMES {
        if *kind == "counter" {
            metrics::describe_counter!(*name, *help);
        } else {
            metrics::describe_gauge!(*name, *help);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for (name, kind, help) in NAMES {
            assert!(name.starts_with("dolos_redis_"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            assert_eq!(name.ends_with("_total"), *kind == "counter", "{name}");
            assert!(!help.is_empty());
        }
    }
}
