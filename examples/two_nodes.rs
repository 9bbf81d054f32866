//! Two nodes sharing one mempool, in one process.
//!
//! ```text
//! cargo run --example two_nodes                       # starts a private redis-server
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example two_nodes
//! RUST_LOG=dolos_redis=debug cargo run --example two_nodes   # shows the lease log lines
//! ```
//!
//! Both nodes receive transactions and propagate them; only the watcher's `confirm` applies a
//! block. Halfway through, the watcher shuts down and the other node takes over at once.

use dolos_redis_testkit as support;

use std::time::{Duration, Instant};

use dolos_redis::{
    BlockHash, ChainPoint, Config, EraCbor, MempoolTx, MempoolTxStage, RedisMempool, TxHash,
};

const USAGE: &str = "\
usage: two_nodes [--help]

Two nodes sharing one mempool in one process; the watcher shuts down halfway and
the other takes over at once. Uses $REDIS_URL, else starts a private redis-server
(redis-server on the PATH). RUST_LOG=dolos_redis=debug shows the lease lines.";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    support::help_only("two_nodes", USAGE);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    // `REDIS_URL`, else a private server, kept alive for the whole run (killed when dropped).
    let (_server, url) = support::server::from_env();
    let prefix = format!("example:{}", std::process::id());
    let config = Config::new(url)
        .key_prefix(prefix)
        .watcher_lock_ttl(Duration::from_secs(2));

    let node1 = RedisMempool::open(config.clone())?;
    let node2 = RedisMempool::open(config)?;
    let nodes = [node1, node2];
    let watcher = |nodes: &[RedisMempool]| nodes.iter().position(|n| n.is_watcher());
    println!(
        "node1 = {}, node2 = {}, watcher = node{}",
        nodes[0].node_id(),
        nodes[1].node_id(),
        watcher(&nodes).map_or(0, |i| i + 1)
    );

    // Each node receives its own transactions; both see the shared queue.
    let hashes: Vec<TxHash> = (0..10u8).map(|i| TxHash::from([i + 1; 32])).collect();
    for (i, hash) in hashes.iter().enumerate() {
        let body = vec![0x84, i as u8, 0xa0, 0xf5];
        nodes[i % 2].receive(MempoolTx::new(*hash, EraCbor(6, body)))?;
    }
    let pending: Vec<TxHash> = nodes[1].peek_pending(100)?.iter().map(|t| t.hash).collect();
    println!("pending seen by node2: {}", pending.len());
    nodes[0].mark_inflight(&pending)?;

    // A chain producing a block per step; the first block contains every tx.
    let mut nodes = nodes.to_vec();
    for slot in 1..=8u64 {
        if slot == 4 {
            let i = watcher(&nodes).unwrap_or(0);
            let old = nodes.remove(i);
            let started = Instant::now();
            old.shutdown()?;
            while watcher(&nodes).is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
            println!("watcher shut down; takeover after {:?}", started.elapsed());
        }
        let block_txs = if slot == 1 { hashes.clone() } else { vec![] };
        let point = ChainPoint::Specific(slot, BlockHash::from([slot as u8; 32]));
        for node in &nodes {
            let outcome = node.confirm(&point, &block_txs, &[], 6, 2)?;
            println!("slot {slot}: {} -> {outcome:?}", &node.node_id()[..8]);
        }
    }

    let finalized = nodes[0].dump_finalized(0, 100)?;
    let all_final = finalized
        .items
        .iter()
        .all(|t| t.stage == MempoolTxStage::Finalized && t.confirmations == 6);
    println!(
        "finalized log: {} entries, all Finalized with 6 confirmations: {all_final}",
        finalized.items.len()
    );
    println!("watcher: {:?}", nodes[0].watcher_info()?);
    for node in nodes {
        node.shutdown()?;
    }
    if !all_final || finalized.items.len() != hashes.len() {
        return Err("not every transaction finalized exactly once".into());
    }
    Ok(())
}
