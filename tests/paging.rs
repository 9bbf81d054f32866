//! No call holds Redis for long, whatever its size: on a 20k-entry mempool, `peek_pending`,
//! `peek_inflight` and `dump_finalized` with `usize::MAX` are served in bounded pages (no
//! command asks for more than a page of txs), and `mark_inflight` of 20k hashes goes in
//! bounded batches. The proof counts what each command asks for in the `MONITOR` feed, not how
//! long it takes: nothing here depends on the machine's speed. And a block of more txs than one
//! command inside a script takes is applied, and undone, whole.

mod common;
use dolos_redis_testkit as support;

use std::collections::HashSet;

use common::{config, hash, lone_watcher, point, tx};
use dolos_redis::{MempoolTxStage, TxHash};
use support::monitor::{client_names, Monitor, Seen};
use support::RedisServer;

/// The crate's page sizes, as its documentation states them.
const READ_PAGE: usize = 1000;
const LOG_PAGE: usize = 500;
const WRITE_BATCH: usize = 256;

const TXS: u32 = 20_000;

/// The addresses of the mempool's pooled connections (not the lease thread's, whose renewals
/// may land in any window).
fn pool(admin: &mut redis::Connection) -> HashSet<String> {
    client_names(admin)
        .into_iter()
        .filter(|(_, name)| name.starts_with("dolos-redis:") && name.ends_with(":pool"))
        .map(|(addr, _)| addr)
        .collect()
}

/// The commands of the window that came from the mempool's pool (not from a script, not from
/// this test's markers), with what each one asks for: the `LIMIT` of a page's `ZRANGE`, the
/// hashes of its `HMGET`, the number of hashes of a batch, the lines a page of the log asks for.
fn sizes(window: &[Seen], what: &str, pool: &HashSet<String>) -> Vec<usize> {
    window
        .iter()
        .filter(|s| pool.contains(&s.addr))
        .filter_map(|s| match (what, s.cmd.as_str()) {
            // ZRANGE key from +inf BYSCORE LIMIT 0 count [WITHSCORES]
            ("page", "ZRANGE")
                if s.args.get(3).map(String::as_str) == Some("BYSCORE")
                    && !s.args[0].ends_with(":done") =>
            {
                s.args.get(6)?.parse().ok()
            }
            ("bodies", "HMGET") => Some(s.args.len() - 1),
            // EVALSHA sha numkeys keys... event_history args...
            ("batch", "EVALSHA") => {
                let keys: usize = s.args[1].parse().ok()?;
                Some(s.args.len() - 2 - keys - 1)
            }
            // ZRANGE <prefix>:done from +inf BYSCORE LIMIT 0 lines
            ("log page", "ZRANGE") if s.args.first()?.ends_with(":done") => {
                s.args.get(6)?.parse().ok()
            }
            _ => None,
        })
        .collect()
}

/// Whether `got` is `want`, in order (without printing 20k hashes when not).
fn same(got: impl Iterator<Item = TxHash>, want: &[TxHash]) -> bool {
    got.collect::<Vec<_>>() == want
}

#[test]
fn large_reads_and_batches_are_served_in_bounded_pages() {
    support::init_logging();
    let server = RedisServer::start();
    let m = lone_watcher(config(&server, "paging").max_finalized(TXS as usize));
    let all: Vec<TxHash> = (0..TXS).map(hash).collect();
    for i in 0..TXS {
        m.receive(tx(i)).unwrap();
    }
    let mut monitor = Monitor::on(&server);
    let mut admin = server.connection();

    let mut pending = Vec::new();
    let window = monitor.window(&mut admin, &mut || {
        pending = m.peek_pending(usize::MAX).unwrap();
    });
    let pages = sizes(&window, "page", &pool(&mut admin));
    let bodies = sizes(&window, "bodies", &pool(&mut admin));
    println!("peek_pending(usize::MAX) of {TXS}: {} pages", pages.len());
    assert!(
        same(pending.iter().map(|t| t.hash), &all),
        "the pending queue, in order"
    );
    assert!(pages.len() >= TXS as usize / READ_PAGE, "{pages:?}");
    assert!(pages.iter().all(|&n| n <= READ_PAGE), "{pages:?}");
    assert_eq!(bodies.iter().sum::<usize>(), TXS as usize, "{bodies:?}");
    assert!(bodies.iter().all(|&n| n <= READ_PAGE), "{bodies:?}");

    let window = monitor.window(&mut admin, &mut || m.mark_inflight(&all).unwrap());
    let batches = sizes(&window, "batch", &pool(&mut admin));
    println!("mark_inflight of {TXS}: {} batches", batches.len());
    assert_eq!(batches.iter().sum::<usize>(), TXS as usize);
    assert!(batches.iter().all(|&n| n <= WRITE_BATCH), "{batches:?}");

    let mut inflight = Vec::new();
    let window = monitor.window(&mut admin, &mut || {
        inflight = m.peek_inflight(usize::MAX).unwrap();
    });
    let pages = sizes(&window, "page", &pool(&mut admin));
    let bodies = sizes(&window, "bodies", &pool(&mut admin));
    println!("peek_inflight(usize::MAX) of {TXS}: {} pages", pages.len());
    assert!(
        same(inflight.iter().map(|t| t.hash), &all),
        "the inflight set, in order"
    );
    assert!(inflight
        .iter()
        .all(|t| t.stage == MempoolTxStage::Propagated));
    assert!(pages.len() >= TXS as usize / READ_PAGE, "{pages:?}");
    assert!(pages.iter().all(|&n| n <= READ_PAGE), "{pages:?}");
    assert_eq!(bodies.iter().sum::<usize>(), TXS as usize, "{bodies:?}");
    assert!(bodies.iter().all(|&n| n <= READ_PAGE), "{bodies:?}");

    // Blocks of 250 txs, each final at once (F = 1): the log fills with 20k lines.
    for (i, block) in all.chunks(250).enumerate() {
        let outcome = m.confirm(&point(i as u64 + 1), block, &[], 1, 1_000);
        assert!(outcome.unwrap().is_applied());
    }
    let mut log = None;
    let window = monitor.window(&mut admin, &mut || {
        log = Some(m.dump_finalized(0, usize::MAX).unwrap());
    });
    let log = log.unwrap();
    let pages = sizes(&window, "log page", &pool(&mut admin));
    let bodies = sizes(&window, "bodies", &pool(&mut admin));
    println!(
        "dump_finalized(0, usize::MAX) of {TXS}: {} pages",
        pages.len()
    );
    assert_eq!(log.next_cursor, None);
    assert!(
        same(log.items.iter().map(|t| t.hash), &all),
        "the log, in order"
    );
    assert!(pages.len() >= TXS as usize / LOG_PAGE, "{pages:?}");
    assert!(pages.iter().all(|&n| n <= LOG_PAGE), "{pages:?}");
    assert_eq!(bodies.iter().sum::<usize>(), TXS as usize, "{bodies:?}");
    assert!(bodies.iter().all(|&n| n <= LOG_PAGE), "{bodies:?}");
}

/// A block whose seen (or unseen) list is longer than one script command takes at once: the
/// script splits its reads and writes, and the block is applied, and undone, whole.
#[test]
fn a_block_of_more_txs_than_one_command_takes_is_applied_and_undone_whole() {
    support::init_logging();
    const BLOCK: u32 = 4_500;
    let server = RedisServer::start();
    let m = lone_watcher(config(&server, "paging-block"));
    let all: Vec<TxHash> = (0..BLOCK).map(hash).collect();
    for i in 0..BLOCK {
        m.receive(tx(i)).unwrap();
    }
    m.mark_inflight(&all).unwrap();
    assert!(m.confirm(&point(1), &all, &[], 6, 2).unwrap().is_applied());
    let stats = m.stats().unwrap();
    assert_eq!((stats.confirmed, stats.propagated), (BLOCK as u64, 0));
    assert!(m.confirm(&point(1), &[], &all, 6, 2).unwrap().is_applied());
    let stats = m.stats().unwrap();
    assert_eq!((stats.pending, stats.confirmed), (BLOCK as u64, 0));
    let back: Vec<TxHash> = m
        .peek_pending(usize::MAX)
        .unwrap()
        .iter()
        .map(|t| t.hash)
        .collect();
    assert!(
        same(back.into_iter(), &all),
        "back to pending, in unseen's order"
    );
}
