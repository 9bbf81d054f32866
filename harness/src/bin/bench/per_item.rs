//! Issue 10's first table, end to end: each call it lists, per item, next to what the reference
//! Redis mempool (Dolos PR #920) took on the machine, and next to the least that
//! reference can take here, its round trips made of the cheapest commands that could do them:
//! a round trip costs at least a `SET`'s (measured alternating with the calls), and one that
//! carries the bodies at least a plain `HMGET` of as many. For `peek_inflight` that is the
//! reference's shape itself, run here on the same txs: three plain round trips (`ZRANGE …
//! WITHSCORES` of the ids, `HMGET` of the bodies, `HGET` of the height).
//!
//! The mempool: 100 finalized (the log `dump_finalized` reads), 1000 inflight (`peek_inflight`
//! reads all of them, and `confirm` sees 50 of them as the rolled-back row of the steady state
//! does: undone and propagated again, untimed, after each call), and a pending queue that
//! `receive` grows. Each round times every call once, each followed by a `SET`; medians over
//! the rounds.

use std::time::Duration;

use dolos_redis::{ChainPoint, Config, ConfirmOutcome, RedisMempool, TxHash};
use dolos_redis_testkit as support;

use crate::steady::with_set;
use crate::util::{self, median};
use crate::{progress, Bench, NEVER};

/// Rounds (each times every call once).
const ROUNDS: usize = 60;
/// Inflight txs, all read by `peek_inflight`.
const INFLIGHT: u64 = 1000;
/// Txs seen by each `confirm`.
const SEEN: usize = 50;

/// One row of the first table: the call, its items per call, and the reference's round
/// trips and µs end to end on the machine.
pub struct Reference {
    pub label: &'static str,
    pub items: usize,
    pub round_trips: usize,
    pub us: f64,
}

pub const REFERENCES: [Reference; 4] = [
    Reference {
        label: "`receive` (300 B)",
        items: 1,
        round_trips: 6,
        us: 622.0,
    },
    Reference {
        label: "`dump_finalized(0, 100)`",
        items: 100,
        round_trips: 3,
        us: 360.0,
    },
    Reference {
        label: "`peek_inflight` (1000 items)",
        items: 1000,
        round_trips: 3,
        us: 1233.0,
    },
    Reference {
        label: "`confirm` (50 seen, 1k inflight)",
        items: SEEN,
        round_trips: 282,
        us: 34_100.0,
    },
];

pub struct PerItem {
    /// Per row of [`REFERENCES`]: end-to-end µs of each call, and of the `SET` right after it.
    pub calls: Vec<Vec<(f64, f64)>>,
    /// The reference's shape of `peek_inflight` run here: µs of its three round trips, and of
    /// the `SET` right after.
    pub plain_inflight: Vec<(f64, f64)>,
    /// A plain `HMGET` of 100 bodies: µs, and of the `SET` right after.
    pub hmget100: Vec<(f64, f64)>,
}

impl PerItem {
    /// Median µs of the `SET`s made after every call of the phase.
    pub fn set_us(&self) -> f64 {
        let all: Vec<f64> = self
            .calls
            .iter()
            .flatten()
            .chain(&self.plain_inflight)
            .chain(&self.hmget100)
            .map(|(_, s)| *s)
            .collect();
        median(&all)
    }

    /// The least each row of [`REFERENCES`] can take here, µs, and how it is counted.
    pub fn least(&self) -> Vec<(f64, &'static str)> {
        let first = |v: &[(f64, f64)]| median(&v.iter().map(|(c, _)| *c).collect::<Vec<_>>());
        let set = self.set_us();
        REFERENCES
            .iter()
            .enumerate()
            .map(|(i, r)| match i {
                1 => (
                    (r.round_trips - 1) as f64 * set + first(&self.hmget100),
                    "a plain `HMGET` of 100 + 2 `SET`s",
                ),
                2 => (
                    first(&self.plain_inflight),
                    "its three plain commands, run here",
                ),
                _ => (r.round_trips as f64 * set, "that many `SET`s"),
            })
            .collect()
    }
}

impl Bench {
    pub fn per_item(&mut self) -> PerItem {
        progress(format!(
            "per item: {INFLIGHT} inflight, 100 finalized; {ROUNDS} rounds"
        ));
        let prefix = format!("{}:per-item", self.root);
        let config = Config::new(self.url.as_str())
            .key_prefix(&prefix)
            .pool_size(2)
            .max_finalized(1000)
            .watcher_lock_ttl(Duration::from_secs(60));
        let mp = RedisMempool::open(config).expect("open the mempool");
        assert!(
            support::wait_until(Duration::from_secs(5), || mp.is_watcher()),
            "a lone node should become the watcher"
        );
        let (logged, inflight, received) = (self.tag(), self.tag(), self.tag());
        let mut slot = 0u64;
        let mut point = || {
            slot += 10;
            ChainPoint::Slot(slot)
        };
        // 100 finalized: propagated and confirmed once, F = 1.
        let log: Vec<TxHash> = (0..100).map(|i| util::tx_hash(logged, i)).collect();
        for i in 0..100 {
            mp.receive(util::tx(logged, i)).expect("receive");
        }
        mp.mark_inflight(&log).expect("mark_inflight");
        mp.confirm(&point(), &log, &[], 1, NEVER).expect("confirm");
        let all: Vec<TxHash> = (0..INFLIGHT).map(|i| util::tx_hash(inflight, i)).collect();
        for i in 0..INFLIGHT {
            mp.receive(util::tx(inflight, i)).expect("receive");
        }
        mp.mark_inflight(&all).expect("mark_inflight");

        let mut con = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("a connection for the reference's shape");
        let key = |k: &str| format!("{prefix}:{k}");
        let set_key = key("set");
        let mut calls: Vec<Vec<(f64, f64)>> = vec![Vec::new(); REFERENCES.len()];
        let mut plain_inflight = Vec::new();
        let mut hmget100 = Vec::new();
        for round in 0..ROUNDS {
            calls[0].push(with_set(&mp, &set_key, || {
                mp.receive(util::tx(received, round as u64))
                    .expect("receive")
            }));
            calls[1].push(with_set(&mp, &set_key, || {
                let page = mp.dump_finalized(0, 100).expect("dump_finalized");
                assert_eq!(page.items.len(), 100);
            }));
            calls[2].push(with_set(&mp, &set_key, || {
                let got = mp.peek_inflight(INFLIGHT as usize).expect("peek_inflight");
                assert_eq!(got.len(), INFLIGHT as usize);
            }));
            plain_inflight.push(with_set(&mp, &set_key, || {
                let ids: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
                    .arg(key("inflight"))
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query(&mut con)
                    .expect("ZRANGE");
                let bodies: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                    .arg(key("txs"))
                    .arg(ids.iter().map(|(h, _)| &h[..]).collect::<Vec<_>>())
                    .query(&mut con)
                    .expect("HMGET");
                let _: Option<String> = redis::cmd("HGET")
                    .arg(key("meta"))
                    .arg("H")
                    .query(&mut con)
                    .expect("HGET");
                assert_eq!(bodies.len(), INFLIGHT as usize);
            }));
            hmget100.push(with_set(&mp, &set_key, || {
                let bodies: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                    .arg(key("txs"))
                    .arg(
                        all[..100]
                            .iter()
                            .map(|h| &h.as_bytes()[..])
                            .collect::<Vec<_>>(),
                    )
                    .query(&mut con)
                    .expect("HMGET");
                assert!(bodies.iter().all(Option::is_some));
            }));
            let k = (round * SEEN) % INFLIGHT as usize;
            let batch = &all[k..k + SEEN];
            let at = point();
            calls[3].push(with_set(&mp, &set_key, || {
                let outcome = mp.confirm(&at, batch, &[], NEVER, NEVER).expect("confirm");
                assert_eq!(outcome, ConfirmOutcome::Applied);
            }));
            mp.confirm(&at, &[], batch, NEVER, NEVER).expect("undo");
            mp.mark_inflight(batch).expect("mark_inflight");
        }
        drop(mp);
        util::delete_prefix(&mut self.admin, &prefix);
        PerItem {
            calls,
            plain_inflight,
            hmget100,
        }
    }
}
