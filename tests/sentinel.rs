//! Redis Sentinel (feature `sentinel`), with real processes on loopback: a primary, two replicas
//! and three sentinels started by the test. Two nodes under load with the durability option
//! (`wait_replicas(1, ..)`) live through a SIGKILL of the primary: the mempool works again after
//! the promotion, every acknowledged write is still there, one watcher leads, and no block is
//! applied twice, and no follower took the lock early because the watcher's liveness
//! subscription had not reached the new primary yet; after it, a crashed watcher is replaced
//! through its liveness subscription on the new primary. Also: a node whose connection reaches
//! a replica (a demoted primary) gets a transient error naming `READONLY`, and the connection is
//! replaced.
//!
//! Two replicas, not one: with `wait_replicas(1, ..)` the promoted replica needs a replica of
//! its own (the other one, which the sentinels move over) before any write can be acknowledged
//! again.

#![cfg(feature = "sentinel")]

use dolos_redis_testkit as support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dolos_redis::{
    ChainPoint, Config, ConfirmOutcome, EraCbor, Error, MempoolTx, RedisMempool, TxHash,
};
use support::logs::{capture_logs, logs_containing};
use support::server::SentinelOptions;
use support::{wait_until, RedisServer, ServerOptions};

const MASTER: &str = "m";
const TTL: Duration = Duration::from_secs(1);
/// How long the deployment may take to form (replicas synced, sentinels aware of each other).
const FORM: Duration = Duration::from_secs(15);
/// CI bound on the outage after the primary is killed; the measured value is printed.
const OUTAGE_BOUND: Duration = Duration::from_secs(15);
/// Bound for what takes milliseconds on an idle machine.
const SETTLE: Duration = Duration::from_secs(10);

/// Replicas sync at once (the default waits 5 s to batch diskless syncs), which matters after
/// the failover, when the remaining replica moves to the promoted one.
fn replication_args() -> Vec<String> {
    vec!["--repl-diskless-sync-delay".into(), "0".into()]
}

fn primary() -> RedisServer {
    RedisServer::start_with(ServerOptions {
        extra_args: replication_args(),
        ..Default::default()
    })
}

fn replica_of(primary: &RedisServer) -> RedisServer {
    let mut args = replication_args();
    args.extend([
        "--replicaof".to_string(),
        "127.0.0.1".to_string(),
        primary.port().to_string(),
    ]);
    RedisServer::start_with(ServerOptions {
        extra_args: args,
        ..Default::default()
    })
}

fn info(server: &RedisServer, section: &str) -> String {
    server
        .try_connection()
        .and_then(|mut c| redis::cmd("INFO").arg(section).query::<String>(&mut c))
        .unwrap_or_default()
}

fn link_up(replica: &RedisServer) -> bool {
    info(replica, "replication").contains("master_link_status:up")
}

/// Whether `n` replicas of `primary` are online from the primary's side: a replica counts for
/// `WAIT` only once it has acknowledged its sync, which may come up to a second after its own
/// link is up.
fn acknowledging(primary: &RedisServer, n: usize) -> bool {
    primary
        .try_connection()
        .and_then(|mut c| redis::cmd("WAIT").arg(n).arg(50).query::<usize>(&mut c))
        .is_ok_and(|acked| acked >= n)
}

struct Deployment {
    primary: RedisServer,
    replicas: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl Deployment {
    fn start() -> Deployment {
        let primary = primary();
        let replicas: Vec<RedisServer> = (0..2).map(|_| replica_of(&primary)).collect();
        assert!(
            wait_until(FORM, || replicas.iter().all(link_up)
                && acknowledging(&primary, 2)),
            "replicas did not sync"
        );
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_sentinel(SentinelOptions {
                    master_name: MASTER.into(),
                    primary: primary.addr(),
                    quorum: 2,
                    down_after: Duration::from_millis(500),
                    failover_timeout: Duration::from_millis(2000),
                })
            })
            .collect();
        // A failover needs each sentinel to know the replicas (from the primary's INFO) and
        // the other sentinels (from their hello messages, every 2 s).
        let formed = wait_until(FORM, || {
            sentinels.iter().all(|s| {
                let Ok(mut c) = s.try_connection() else {
                    return false;
                };
                let mut count = |what: &str| {
                    redis::cmd("SENTINEL")
                        .arg(what)
                        .arg(MASTER)
                        .query::<Vec<redis::Value>>(&mut c)
                        .map(|v| v.len())
                        .unwrap_or(0)
                };
                count("replicas") == 2 && count("sentinels") == 2
            })
        });
        assert!(
            formed,
            "sentinels did not discover each other and the replicas"
        );
        Deployment {
            primary,
            replicas,
            sentinels,
        }
    }

    fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| s.addr().to_string())
            .collect()
    }

    /// The primary the sentinels name now (the first that answers).
    fn named_primary(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let mut c = s.try_connection().ok()?;
            let (_, port): (String, u16) = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER)
                .query(&mut c)
                .ok()?;
            Some(port)
        })
    }
}

fn node_config(d: &Deployment, prefix: &str) -> Config {
    Config::sentinel(d.sentinel_addrs(), MASTER)
        .key_prefix(prefix)
        .watcher_lock_ttl(TTL)
        .connect_timeout(Duration::from_millis(500))
        .command_timeout(Duration::from_secs(1))
        .wait_replicas(1, Duration::from_millis(500))
}

fn node_hash(node: u8, n: u64) -> TxHash {
    let mut bytes = [0; 32];
    bytes[0] = node;
    bytes[24..].copy_from_slice(&n.to_be_bytes());
    TxHash::from(bytes)
}

/// What one node's load thread saw.
#[derive(Default)]
struct Record {
    /// Receives that returned `Ok` (acknowledged by a replica).
    acked: Vec<TxHash>,
    /// Slots for which `confirm` returned `Applied`.
    applied: Vec<u64>,
    /// First successful receive after the kill.
    back_at: Option<Instant>,
    errors_after_kill: u64,
    not_replicated: u64,
}

/// Receives, propagates and (when watcher) confirms until `stop`. Slots come from `tip`, the
/// chain both nodes follow; each node offers every slot once it has reached it, as Dolos does.
fn load(
    node: RedisMempool,
    id: u8,
    stop: Arc<AtomicBool>,
    tip: Arc<AtomicU64>,
    killed_at: Arc<Mutex<Option<Instant>>>,
    record: Arc<Mutex<Record>>,
) {
    let mut n = 0u64;
    let mut next_slot = 1u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let h = node_hash(id, n);
        let killed = *killed_at.lock().unwrap();
        match node.receive(MempoolTx::new(h, EraCbor(6, vec![0x84, id]))) {
            Ok(()) => {
                let mut r = record.lock().unwrap();
                r.acked.push(h);
                if killed.is_some() && r.back_at.is_none() {
                    r.back_at = Some(Instant::now());
                }
            }
            Err(e) => {
                let mut r = record.lock().unwrap();
                if matches!(e, Error::NotReplicated { .. }) {
                    r.not_replicated += 1;
                }
                if killed.is_some() {
                    r.errors_after_kill += 1;
                }
                drop(r);
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        let _ = node.mark_inflight(&[h]);
        while next_slot <= tip.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
            match node.confirm(&ChainPoint::Slot(next_slot), &[h], &[], 1_000, 1_000) {
                Ok(ConfirmOutcome::Applied) => {
                    record.lock().unwrap().applied.push(next_slot);
                    next_slot += 1;
                }
                Ok(_) => next_slot += 1,
                // Unknown outcome (link lost, or not replicated): offer the same block again.
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_mempool_survives_a_failover_without_losing_acknowledged_writes() {
    capture_logs();
    let started = Instant::now();
    let mut d = Deployment::start();
    println!("deployment formed in {:?}", started.elapsed());
    let old_primary = d.primary.port();
    let prefix = "sentinel-failover";
    let nodes: Vec<RedisMempool> = (0..2)
        .map(|_| RedisMempool::open(node_config(&d, prefix)).expect("open"))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let tip = Arc::new(AtomicU64::new(0));
    let killed_at = Arc::new(Mutex::new(None));
    let records: Vec<Arc<Mutex<Record>>> = (0..2).map(|_| Arc::default()).collect();
    let mut threads = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (node, stop, tip, killed_at, record) = (
            node.clone(),
            stop.clone(),
            tip.clone(),
            killed_at.clone(),
            records[i].clone(),
        );
        threads.push(std::thread::spawn(move || {
            load(node, i as u8 + 1, stop, tip, killed_at, record)
        }));
    }
    let chain = {
        let (stop, tip) = (stop.clone(), tip.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                tip.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // Load before the failure: both nodes write and blocks get applied.
    assert!(
        wait_until(Duration::from_secs(10), || records.iter().all(|r| r
            .lock()
            .unwrap()
            .acked
            .len()
            >= 20)
            && records
                .iter()
                .any(|r| !r.lock().unwrap().applied.is_empty())),
        "no load before the failure"
    );

    // Acknowledged with WAIT, so the promoted replica has it: the epoch must not go back.
    let epoch_before = nodes[0].watcher_info().expect("watcher_info").epoch;
    assert!(epoch_before >= 1);
    let kill = Instant::now();
    *killed_at.lock().unwrap() = Some(kill);
    d.primary.kill();

    let promoted = wait_until(OUTAGE_BOUND, || {
        d.named_primary().is_some_and(|p| p != old_primary)
    });
    let promotion = kill.elapsed();
    assert!(promoted, "the sentinels did not promote a replica");
    let back = wait_until(OUTAGE_BOUND, || {
        records.iter().all(|r| r.lock().unwrap().back_at.is_some())
    });
    let outage = records
        .iter()
        .filter_map(|r| r.lock().unwrap().back_at)
        .map(|t| t - kill)
        .max();
    println!("primary killed: promotion seen after {promotion:?}, both nodes writing again after {outage:?}");
    assert!(
        back,
        "the nodes did not write again within {OUTAGE_BOUND:?}"
    );

    // Keep the load going a little on the new primary, so blocks are applied there too.
    let tip_then = tip.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || records.iter().any(|r| r
            .lock()
            .unwrap()
            .applied
            .iter()
            .any(|&s| s > tip_then))),
        "no block applied after the failover"
    );
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    chain.join().unwrap();

    // One watcher, and Redis agrees.
    let one = wait_until(Duration::from_secs(5), || {
        let up: Vec<&RedisMempool> = nodes.iter().filter(|n| n.is_watcher()).collect();
        up.len() == 1
            && up[0]
                .watcher_info()
                .is_ok_and(|w| w.holder.as_deref() == Some(up[0].node_id()))
    });
    assert!(one, "not exactly one watcher after the failover");
    let epoch_after = nodes[0].watcher_info().expect("watcher_info").epoch;
    assert!(
        epoch_after >= epoch_before,
        "epoch went back from {epoch_before} to {epoch_after}"
    );
    for (i, node) in nodes.iter().enumerate() {
        let s = node.stats().expect("stats");
        println!(
            "node {i}: watcher {}, acquired {} times, lost {} times, epoch now {}",
            s.is_watcher, s.times_acquired, s.times_lost, s.watcher.epoch
        );
    }

    // Every acknowledged receive is still tracked.
    let mut total = 0;
    for (i, r) in records.iter().enumerate() {
        let r = r.lock().unwrap();
        println!(
            "node {i}: {} receives acknowledged, {} blocks applied, {} errors after the kill ({} not replicated)",
            r.acked.len(),
            r.applied.len(),
            r.errors_after_kill,
            r.not_replicated
        );
        for h in &r.acked {
            let status = nodes[0].check_status(h).expect("check_status");
            assert_ne!(
                status.stage,
                dolos_redis::MempoolTxStage::Unknown,
                "acknowledged tx {h} was lost in the failover"
            );
            total += 1;
        }
    }
    assert!(total > 0);

    // No block applied twice: no slot was reported `Applied` to two calls, and the surviving
    // history holds each block once and as many as the height says.
    let mut applied = HashSet::new();
    for r in &records {
        for &slot in &r.lock().unwrap().applied {
            assert!(applied.insert(slot), "slot {slot} was applied twice");
        }
    }
    let stats = nodes[0].stats().expect("stats");
    let new_primary = d
        .replicas
        .iter()
        .find(|r| Some(r.port()) == d.named_primary())
        .expect("the promoted replica");
    let mut c = new_primary.connection();
    // One entry per call; a block's entry has its point in `b` (hashes are raw bytes).
    let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:events"))
        .arg("-")
        .arg("+")
        .query(&mut c)
        .unwrap();
    let points: Vec<String> = entries
        .iter()
        .filter_map(|(_, f)| f.get("b"))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    let blocks: Vec<&String> = points.iter().collect();
    let distinct: HashSet<&&String> = blocks.iter().collect();
    assert_eq!(distinct.len(), blocks.len(), "a block was applied twice");
    assert_eq!(blocks.len() as u64, stats.applied_blocks);
    for slot in &applied {
        assert!(
            distinct.contains(&&slot.to_string()),
            "block {slot} acknowledged as applied was lost"
        );
    }
    // Every connection broke with the primary; the followers' new lease connections reached
    // the new primary before the watcher's liveness subscription did, or after: either way
    // nobody was declared dead for it.
    for node in &nodes {
        let early = logs_containing(&format!("previous holder {} is gone", node.node_id()));
        assert!(
            early.is_empty(),
            "a liveness takeover in the failover: {early:?}"
        );
    }
    for node in nodes {
        node.shutdown().unwrap();
    }

    // On the new primary, a crashed watcher is replaced through its liveness subscription,
    // long before its lock (with a TTL of 10 s) could expire.
    let prefix = "sentinel-after-failover";
    let node = || {
        RedisMempool::open(node_config(&d, prefix).watcher_lock_ttl(Duration::from_secs(10)))
            .expect("open")
    };
    let watcher = node();
    assert!(wait_until(SETTLE, || watcher.is_watcher()));
    let follower = node();
    let crashed = watcher.node_id().to_string();
    let t0 = Instant::now();
    watcher.abandon();
    let left = follower
        .watcher_info()
        .expect("watcher_info")
        .ttl
        .expect("the crashed watcher's lock");
    assert!(wait_until(SETTLE, || follower.is_watcher()));
    let took = t0.elapsed();
    println!(
        "{} blocks applied in all, {} acknowledged; after the failover a crashed watcher was \
         replaced in {took:?} (its lock had {left:?} left); test took {:?}",
        blocks.len(),
        applied.len(),
        started.elapsed()
    );
    assert!(took < left, "the follower waited for the lock to expire");
    assert_eq!(
        logs_containing(&format!("previous holder {crashed} is gone")).len(),
        1
    );
    follower.shutdown().unwrap();
}

#[test]
fn a_write_to_a_replica_is_a_transient_error_and_the_connection_is_replaced() {
    capture_logs();
    let primary = primary();
    let replica = replica_of(&primary);
    assert!(wait_until(FORM, || link_up(&replica)));
    // What a node's connections look like after a failover demoted their server.
    let node = RedisMempool::open(
        Config::new(replica.url())
            .key_prefix("readonly")
            .pool_size(1)
            .watcher_lock_ttl(TTL)
            .watcher_candidate(false),
    )
    .expect("open");
    let name = format!("dolos-redis:{}:pool", node.node_id());
    let pool_ids = || -> HashSet<String> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut replica.connection())
            .unwrap();
        list.lines()
            .filter(|l| l.contains(&format!("name={name} ")))
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect()
    };
    assert!(wait_until(Duration::from_secs(5), || !pool_ids().is_empty()));
    let before = pool_ids();

    let err = node
        .receive(MempoolTx::new(TxHash::from([7; 32]), EraCbor(6, vec![1])))
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        matches!(&err, Error::Unavailable(m) if m.contains("READONLY")),
        "{err:?}"
    );
    // The connection that met READONLY is closed, a fresh one takes its place.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let now = pool_ids();
            !now.is_empty() && now.is_disjoint(&before)
        }),
        "the pooled connection was not replaced"
    );
    // Reads still work on it.
    assert!(!node.has_pending().unwrap());
}

#[test]
fn sentinel_configs_are_validated_and_never_show_passwords() {
    let ok = Config::sentinel(["127.0.0.1:26379", "redis://:s3cret@h:26379"], "m")
        .url("redis://u:hunter2@primary/1");
    assert_eq!(ok.validate(), Ok(()));
    let shown = format!("{ok:?} {}", ok.redacted_url());
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cret"),
        "{shown}"
    );
    let field = |c: Config| match c.validate() {
        Err(Error::InvalidConfig(m)) => m.split(':').next().unwrap().to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        field(Config::sentinel(Vec::<String>::new(), "m")),
        "sentinels"
    );
    assert_eq!(field(Config::sentinel(["not a host"], "m")), "sentinels");
    assert_eq!(field(Config::sentinel(["h:1"], "")), "master_name");
    assert_eq!(
        field(Config::sentinel(["h:1"], "m").url("redis+unix:///tmp/s")),
        "url"
    );
    assert_eq!(
        field(Config::new("redis://h").wait_replicas(1, Duration::ZERO)),
        "wait_replicas"
    );
    assert_eq!(
        field(Config::new("redis://h").wait_replicas(1, Duration::from_secs(5))),
        "wait_replicas"
    );
    let err = RedisMempool::open(
        Config::sentinel(["127.0.0.1:1"], "m")
            .url("redis://u:hunter2@primary")
            .connect_timeout(Duration::from_millis(200)),
    )
    .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn writes_too_few_replicas_confirmed_fail_and_raise_no_watcher_flag() {
    capture_logs();
    let primary = primary();
    let mut replica = replica_of(&primary);
    assert!(wait_until(FORM, || link_up(&replica) && acknowledging(&primary, 1)));
    let config = || {
        Config::new(primary.url())
            .key_prefix("wait")
            .watcher_lock_ttl(TTL)
            .wait_replicas(1, Duration::from_millis(200))
    };
    let node = RedisMempool::open(config()).expect("open");
    // Not necessarily at once: the lease thread gives WAIT half its socket timeout (ttl/8 here),
    // which a loaded machine may exceed.
    assert!(wait_until(TTL * 5, || node.is_watcher()));
    node.receive(MempoolTx::new(node_hash(1, 1), EraCbor(6, vec![1])))
        .expect("a replica confirms");
    // The pipelined EVALSHA + WAIT loads a script the server lost (restart, failover).
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut primary.connection())
        .unwrap();
    node.receive(MempoolTx::new(node_hash(1, 2), EraCbor(6, vec![1])))
        .expect("after SCRIPT FLUSH");

    replica.kill();
    let err = node
        .receive(MempoolTx::new(node_hash(1, 3), EraCbor(6, vec![1])))
        .unwrap_err();
    assert_eq!(
        err,
        Error::NotReplicated {
            acked: 0,
            wanted: 1
        }
    );
    // The write itself was made on the primary.
    assert_ne!(
        node.check_status(&node_hash(1, 3)).unwrap().stage,
        dolos_redis::MempoolTxStage::Unknown
    );
    // Renewals no longer reach a replica: the watcher steps down within the TTL...
    assert!(
        wait_until(TTL * 3, || !node.is_watcher()),
        "a watcher kept its flag on renewals no replica confirmed"
    );
    // ...and a node that joins now never raises its flag, although the primary holds the lock.
    let other = RedisMempool::open(config()).expect("open");
    std::thread::sleep(TTL * 2);
    assert!(!node.is_watcher() && !other.is_watcher());
}

#[test]
fn a_dolos_toml_table_configures_sentinel_and_the_durability_option() {
    let config: Config = toml::from_str(
        r#"
        backend = "redis"
        sentinels = ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"]
        master_name = "mymaster"
        url = "redis://dolos-node:hunter2@primary/0"
        key_prefix = "dolos:mempool"
        wait_replicas = 1
        wait_timeout_ms = 500
        "#,
    )
    .expect("table");
    assert_eq!(config.validate(), Ok(()));
    let expected = Config::sentinel(
        ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"],
        "mymaster",
    )
    .url("redis://dolos-node:hunter2@primary/0")
    .wait_replicas(1, Duration::from_millis(500));
    assert_eq!(config, expected);
    assert!(!format!("{config:?}").contains("hunter2"));
    let half: Result<Config, _> = toml::from_str(
        r#"
        backend = "redis"
        sentinels = ["10.0.0.1:26379"]
        "#,
    );
    assert!(half.unwrap_err().to_string().contains("master_name"));
}

#[test]
fn the_event_reader_follows_a_stream_that_lost_its_last_writes() {
    capture_logs();
    // A restart without persistence loses every write, as a failover loses the ones no replica
    // had: the stream's counter comes back below what the reader delivered.
    let mut server = RedisServer::start();
    let node = RedisMempool::open(
        Config::new(server.url())
            .key_prefix("lost-events")
            .watcher_candidate(false)
            .connect_timeout(Duration::from_millis(500)),
    )
    .expect("open");
    let events = node.subscribe();
    for n in 1..=5 {
        node.receive(MempoolTx::new(node_hash(9, n), EraCbor(6, vec![1])))
            .unwrap();
    }
    for _ in 1..=5 {
        events.recv_timeout(Duration::from_secs(5)).expect("event");
    }
    server.restart();
    let fresh = node_hash(9, 100);
    assert!(wait_until(Duration::from_secs(10), || node
        .receive(MempoolTx::new(fresh, EraCbor(6, vec![1])))
        .is_ok()));
    let got = events
        .recv_timeout(Duration::from_secs(10))
        .expect("the new event");
    assert!(
        matches!(&got, dolos_redis::MempoolEvent::Tx { tx, .. } if tx.hash == fresh),
        "{got:?}"
    );
}

#[test]
fn a_user_without_wait_is_refused_at_open_when_the_durability_option_is_on() {
    let server = RedisServer::start();
    redis::cmd("ACL")
        .arg(
            &[
                "SETUSER", "nowait", "on", ">pw", "~*", "&*", "+@all", "-wait",
            ][..],
        )
        .query::<()>(&mut server.connection())
        .unwrap();
    let url = format!("redis://nowait:pw@{}", server.addr());
    let err = RedisMempool::open(
        Config::new(url)
            .key_prefix("nowait")
            .wait_replicas(1, Duration::from_millis(100)),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("WAIT") && !m.contains("pw@")),
        "{err:?}"
    );
}
