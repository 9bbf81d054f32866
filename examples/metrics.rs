//! What the `metrics` feature publishes, as a Prometheus exporter shows it.
//!
//! ```text
//! cargo run --example metrics --features metrics          # starts a private redis-server
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example metrics --features metrics
//! ```
//!
//! The crate only talks to the [`metrics`](https://docs.rs/metrics) facade; the host installs
//! the recorder it already uses. Here that is `metrics-exporter-prometheus` without its HTTP
//! listener (`PrometheusBuilder::install_recorder`), and the text a scrape would get is
//! printed. A host serving `/metrics` uses the exporter's listener, or hands `render()` to its
//! own web server.
//!
//! Counters (`dolos_redis_lease_*_total`, `dolos_redis_blocks_*_total`) move by themselves, on
//! the lease thread and in `confirm`/`rollback_to`. Gauges (`dolos_redis_txs{stage=…}`, the
//! applied height, the epoch, Redis's memory) are what `stats()` returned last: a host calls
//! `stats()` on a timer, as below once.

use dolos_redis_testkit as support;

use std::time::{Duration, Instant};

use dolos_redis::{BlockHash, ChainPoint, Config, EraCbor, MempoolTx, RedisMempool, TxHash};
use metrics_exporter_prometheus::PrometheusBuilder;

const USAGE: &str = "\
usage: metrics [--help]

Prints, in Prometheus text format, what the `metrics` feature publishes for a
node that received transactions, applied a block and renewed its lock. Build
with --features metrics. Uses $REDIS_URL, else starts a private redis-server.";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    support::help_only("metrics", USAGE);
    // The host's recorder, installed before the mempool opens.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let (_server, url) = support::server::from_env();
    let config = Config::new(url)
        .key_prefix(format!("metrics-example:{}", std::process::id()))
        .watcher_lock_ttl(Duration::from_millis(600));
    let node = RedisMempool::open(config)?;

    let hashes: Vec<TxHash> = (1..=4u8).map(|i| TxHash::from([i; 32])).collect();
    for (i, hash) in hashes.iter().enumerate() {
        node.receive(MempoolTx::new(*hash, EraCbor(6, vec![0x84, i as u8])))?;
    }
    node.mark_inflight(&hashes[..3])?;
    node.mark_acknowledged(&hashes[..1])?;
    let block = ChainPoint::Specific(100, BlockHash::from([9; 32]));
    node.confirm(&block, &hashes[..1], &[], 4, 8)?;

    // A renewal every ttl/3: wait for the first, so its counter shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.stats()?.renewals == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The host's timer would do this every scrape interval: it sets the gauges.
    node.stats()?;

    print!("{}", prometheus.render());
    node.shutdown()?;
    Ok(())
}
