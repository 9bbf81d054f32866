//! Redis Cluster (feature `cluster`), with real processes on loopback: three primaries
//! (`redis-server --cluster-enabled yes`) that the test joins into one cluster. The whole life
//! of a mempool and the watcher's handover and takeover run against it; two mempools whose hash
//! tags fall on different primaries work side by side; a prefix without a hash tag is refused;
//! a dead or hung seed node is skipped; a slot moved to another primary is followed, by the
//! calls and by the watcher's liveness subscription, and nobody is declared dead meanwhile.
//!
//! The cluster is joined by hand (`CLUSTER ADDSLOTSRANGE`, `SET-CONFIG-EPOCH`, `MEET`) rather
//! than with `redis-cli --cluster create`, whose join loop sleeps a whole second per check.
//! Tests that only read and write share one cluster (it lives while one of them runs); the ones
//! that move a slot get their own.

#![cfg(feature = "cluster")]

mod common;
use dolos_redis_testkit as support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use common::full_run::{self, full_run};
use common::{closed_port, hash, pending, stage_of, tx, SETTLE};
use dolos_redis::{ChainPoint, Config, ConfirmOutcome, Error, MempoolTxStage, RedisMempool};
use support::{wait_until, FaultProxy, RedisServer};

/// `cluster-node-timeout`: how long a node may be silent before the others suspect it.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the cluster may take to form. A fresh primary waits 2 s before it reports
/// `cluster_state:ok`; the rest is room for a loaded machine.
const FORM: Duration = Duration::from_secs(20);
/// Lock TTL of the watcher test.
const TTL: Duration = Duration::from_secs(1);
/// The slots of each primary, as the test assigns them.
const RANGES: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    fn start() -> Cluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_cluster_node(NODE_TIMEOUT))
            .collect();
        for (i, (node, (first, last))) in nodes.iter().zip(RANGES).enumerate() {
            let mut c = node.connection();
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query::<()>(&mut c)
                .expect("addslotsrange");
            // Distinct epochs up front: nothing for the nodes to settle after they meet.
            redis::cmd("CLUSTER")
                .arg("SET-CONFIG-EPOCH")
                .arg(i + 1)
                .query::<()>(&mut c)
                .expect("set-config-epoch");
        }
        // Meeting the first node is enough: gossip introduces the others to each other.
        let mut first = nodes[0].connection();
        for other in &nodes[1..] {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(other.port())
                .arg(other.cluster_port())
                .query::<()>(&mut first)
                .expect("cluster meet");
        }
        let cluster = Cluster { nodes };
        let t0 = Instant::now();
        assert!(
            wait_until(FORM, || cluster.nodes.iter().all(|n| {
                let info = cluster_info(n);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            })),
            "the cluster did not form; {}",
            cluster.nodes[0].log_tail(20)
        );
        println!("cluster formed in {:?}", t0.elapsed());
        cluster
    }

    fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr().to_string()).collect()
    }

    /// `CLUSTER KEYSLOT` of `key`, asked of the cluster itself.
    fn keyslot(&self, key: &str) -> u16 {
        let mut c = self.nodes[0].connection();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .expect("keyslot")
    }

    /// The index of the node that owns `key`'s slot as first assigned.
    fn owner(&self, key: &str) -> usize {
        let slot = self.keyslot(key);
        RANGES
            .iter()
            .position(|(first, last)| (*first..=*last).contains(&slot))
            .expect("every slot is assigned")
    }

    fn node_id(&self, i: usize) -> String {
        let mut c = self.nodes[i].connection();
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut c)
            .expect("myid")
    }
}

fn cluster_info(node: &RedisServer) -> String {
    node.try_connection()
        .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
        .unwrap_or_default()
}

/// The cluster of the tests that only read and write their own prefixes: started by the first
/// of them, stopped when the last one running lets go.
fn shared_cluster() -> Arc<Cluster> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(Cluster::start());
    *shared = Arc::downgrade(&cluster);
    cluster
}

/// A hash tag no other test (or earlier run) uses.
fn unique_tag(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn cluster_config(cluster: &Cluster, prefix: &str) -> Config {
    Config::cluster(cluster.seeds()).key_prefix(prefix)
}

#[test]
fn a_full_run_against_a_cluster() {
    support::init_logging();
    let cluster = shared_cluster();
    let prefix = format!("{{{}}}:mempool", unique_tag("full"));
    let report = full_run(&|| cluster_config(&cluster, &prefix).watcher_lock_ttl(full_run::TTL));
    println!("cluster: {report:?}");
    // Every key of the mempool is on the primary that owns the tag's slot.
    let owner = &cluster.nodes[cluster.owner(&prefix)];
    let mut c = owner.connection();
    let logged: String = redis::cmd("HGET")
        .arg(format!("{prefix}:meta"))
        .arg("lseq")
        .query(&mut c)
        .expect("the log's last line, on the owner");
    assert_eq!(logged, "2");
    let entries: usize = redis::cmd("XLEN")
        .arg(format!("{prefix}:log"))
        .query(&mut c)
        .expect("xlen on the owner");
    assert!(entries >= 1);
}

#[test]
fn the_watcher_hands_over_and_is_taken_over_on_a_cluster() {
    support::init_logging();
    let cluster = shared_cluster();
    let prefix = format!("{{{}}}:mempool", unique_tag("watch"));
    let mut nodes: Vec<RedisMempool> = (0..3)
        .map(|_| {
            RedisMempool::open(cluster_config(&cluster, &prefix).watcher_lock_ttl(TTL))
                .expect("open")
        })
        .collect();
    let one_watcher = |nodes: &[RedisMempool]| nodes.iter().filter(|n| n.is_watcher()).count() == 1;
    assert!(
        wait_until(SETTLE, || one_watcher(&nodes)),
        "no single watcher"
    );
    let watcher = nodes
        .iter()
        .position(|n| n.is_watcher())
        .expect("a watcher");
    assert_eq!(
        nodes[watcher]
            .confirm(&ChainPoint::Slot(1), &[], &[], 3, 3)
            .expect("confirm"),
        ConfirmOutcome::Applied
    );

    // Graceful shutdown: the followers hear the release on the wake channel (published by the
    // script on the owner, subscribed to through the same resolution).
    let t0 = Instant::now();
    nodes.remove(watcher).shutdown().expect("shutdown");
    assert!(
        wait_until(SETTLE, || nodes.iter().any(|n| n.is_watcher())),
        "no takeover after a graceful shutdown"
    );
    let handover = t0.elapsed();
    println!("cluster: handover after shutdown in {handover:?}");
    assert!(
        handover < Duration::from_secs(1),
        "handover took {handover:?}"
    );
    assert!(one_watcher(&nodes), "two watchers");

    // A crash: the lock stays, but its holder's liveness subscription (on the slot's owner)
    // goes with it: a follower takes over within a few checks (`full_run` shows it on a
    // longer TTL), at worst when the lock expires.
    let watcher = nodes
        .iter()
        .position(|n| n.is_watcher())
        .expect("a watcher");
    let t0 = Instant::now();
    nodes.remove(watcher).abandon();
    assert!(
        wait_until(SETTLE, || nodes[0].is_watcher()),
        "no takeover after the watcher crashed"
    );
    let takeover = t0.elapsed();
    println!("cluster: takeover after a crash in {takeover:?} (ttl {TTL:?})");
    assert!(
        takeover < TTL + Duration::from_secs(1),
        "takeover took {takeover:?}"
    );
    assert_eq!(
        nodes[0]
            .confirm(&ChainPoint::Slot(1), &[], &[], 3, 3)
            .expect("confirm again"),
        ConfirmOutcome::AlreadyApplied
    );
    assert_eq!(
        nodes[0]
            .confirm(&ChainPoint::Slot(2), &[], &[], 3, 3)
            .expect("confirm"),
        ConfirmOutcome::Applied
    );
}

#[test]
fn two_mempools_on_different_primaries_work_side_by_side() {
    support::init_logging();
    let cluster = shared_cluster();
    let a = format!("{{{}}}:mempool", unique_tag("a"));
    // Tags are tried until one falls on another primary than `a` (two in three do).
    let b = std::iter::repeat_with(|| format!("{{{}}}:mempool", unique_tag("b")))
        .find(|b| cluster.owner(b) != cluster.owner(&a))
        .expect("an endless iterator");
    let ma = RedisMempool::open(cluster_config(&cluster, &a)).expect("open a");
    let mb = RedisMempool::open(cluster_config(&cluster, &b)).expect("open b");
    assert!(wait_until(SETTLE, || ma.is_watcher() && mb.is_watcher()));

    ma.receive(tx(1)).expect("receive into a");
    mb.receive(tx(2)).expect("receive into b");
    mb.receive(tx(3)).expect("receive into b");
    assert_eq!(pending(&ma), vec![hash(1)]);
    assert_eq!(pending(&mb), vec![hash(2), hash(3)]);
    ma.mark_inflight(&[hash(1)]).expect("mark_inflight a");
    mb.mark_inflight(&[hash(2)]).expect("mark_inflight b");
    let at = ChainPoint::Slot(5);
    assert_eq!(
        ma.confirm(&at, &[hash(1)], &[], 3, 3).expect("confirm a"),
        ConfirmOutcome::Applied
    );
    assert_eq!(
        mb.confirm(&at, &[hash(2)], &[], 3, 3).expect("confirm b"),
        ConfirmOutcome::Applied
    );
    assert_eq!(stage_of(&ma, 1), MempoolTxStage::Confirmed);
    assert_eq!(stage_of(&mb, 2), MempoolTxStage::Confirmed);
    assert_eq!(stage_of(&mb, 1), MempoolTxStage::Unknown);
    assert_eq!(mb.stats().expect("stats b").pending, 1);

    // Each mempool's keys live on its own primary.
    for (prefix, stored) in [(&a, 1), (&b, 2)] {
        let mut c = cluster.nodes[cluster.owner(prefix)].connection();
        let n: usize = redis::cmd("HLEN")
            .arg(format!("{prefix}:txs"))
            .query(&mut c)
            .expect("hlen on the owner");
        assert_eq!(n, stored, "{prefix}");
    }
}

#[test]
fn a_prefix_without_a_hash_tag_is_refused() {
    for prefix in ["dolos:mempool", "{}:mempool", "{dolos:mempool"] {
        let config = Config::cluster(["127.0.0.1:7000"]).key_prefix(prefix);
        match RedisMempool::open(config) {
            Err(Error::InvalidConfig(m)) => {
                assert!(m.starts_with("key_prefix:"), "{m}");
                assert!(m.contains("{dolos}:mempool"), "the fix is not shown: {m}");
            }
            Err(other) => panic!("{prefix}: expected InvalidConfig, got {other:?}"),
            Ok(_) => panic!("{prefix}: accepted"),
        }
    }
}

#[test]
fn dead_and_hung_seed_nodes_are_skipped() {
    support::init_logging();
    let cluster = shared_cluster();
    // A port nobody listens on (refused at once) and a node that accepts connections but never
    // answers (each connection spends that seed's share of the connect timeout on it).
    let refused = format!("127.0.0.1:{}", closed_port());
    let hung = FaultProxy::start(cluster.nodes[0].addr());
    hung.blackhole();
    let mut seeds = vec![refused.clone(), hung.addr().to_string()];
    seeds.extend(cluster.seeds());
    let prefix = format!("{{{}}}:mempool", unique_tag("seeds"));
    let m = RedisMempool::open(Config::cluster(seeds).key_prefix(&prefix)).expect("open");
    m.receive(tx(1)).expect("receive");
    assert!(m.has_pending().expect("has_pending"));
    assert!(wait_until(SETTLE, || m.is_watcher()));

    // With no live seed at all, `open` fails within the connect timeout, naming the seeds.
    let connect_timeout = Duration::from_millis(500);
    let t0 = Instant::now();
    let err = RedisMempool::open(
        Config::cluster([refused.as_str(), &hung.addr().to_string()])
            .key_prefix(&prefix)
            .connect_timeout(connect_timeout),
    )
    .expect_err("open without a live seed");
    let took = t0.elapsed();
    println!("cluster: no live seed, open failed in {took:?}: {err}");
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(&refused), "{err}");
    assert!(took < connect_timeout + Duration::from_secs(1), "{took:?}");
}

#[test]
fn a_slot_moved_to_another_primary_is_followed() {
    support::init_logging();
    // Its own cluster: moving a slot must not disturb the other tests.
    let cluster = Cluster::start();
    let prefix = format!("{{{}}}:mempool", unique_tag("moved"));
    let slot = cluster.keyslot(&prefix);
    let from = cluster.owner(&prefix);
    let to = (from + 1) % 3;
    let m = RedisMempool::open(cluster_config(&cluster, &prefix).watcher_candidate(false))
        .expect("open");
    assert!(!m.has_pending().expect("has_pending"));
    // `open` wrote the layout marker: the slot holds a key, which moves with it.
    move_slot(&cluster, slot, from, to);

    // The pooled connections still go to the old owner, which answers MOVED: a transient
    // error, and the connection is replaced by one to the new owner.
    let first = m.has_pending();
    assert!(
        matches!(&first, Err(e @ Error::Unavailable(m)) if e.is_transient() && m.contains("MOVED")),
        "{first:?}"
    );
    assert!(
        wait_until(SETTLE, || m.has_pending().is_ok()),
        "the new owner was never reached"
    );
    m.receive(tx(1)).expect("receive after the move");
    let mut c = cluster.nodes[to].connection();
    let n: usize = redis::cmd("HLEN")
        .arg(format!("{prefix}:txs"))
        .query(&mut c)
        .expect("hlen on the new owner");
    assert_eq!(n, 1);
}

/// Moves `slot` from node `from` to node `to`, keys and all, the documented way: importing on
/// the target, migrating on the source, the keys over (`MIGRATE`), then the new owner on every
/// node, the target first (which bumps its config epoch, so its claim wins in gossip). The
/// source refuses to give up a slot that still holds keys, so none may be left behind.
fn move_slot(cluster: &Cluster, slot: u16, from: usize, to: usize) {
    let (from_id, to_id) = (cluster.node_id(from), cluster.node_id(to));
    let set_slot = |node: usize, args: &[&str]| {
        let mut c = cluster.nodes[node].connection();
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(args)
            .query::<()>(&mut c)
            .unwrap_or_else(|e| panic!("setslot {args:?} on node {node}: {e}"));
    };
    set_slot(to, &["IMPORTING", &from_id]);
    set_slot(from, &["MIGRATING", &to_id]);
    let mut source = cluster.nodes[from].connection();
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query(&mut source)
            .expect("getkeysinslot");
        if keys.is_empty() {
            break;
        }
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(cluster.nodes[to].port())
            .arg("")
            .arg(0)
            .arg(5_000)
            .arg("KEYS")
            .arg(&keys)
            .query::<()>(&mut source)
            .expect("migrate");
    }
    for node in [to, from, 3 - to - from] {
        set_slot(node, &["NODE", &to_id]);
    }
}

/// The number of subscribers of `channel` on one cluster node (`PUBSUB NUMSUB` counts only that
/// node's own).
fn subscribers(node: &RedisServer, channel: &str) -> i64 {
    let mut c = node.connection();
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut c)
        .expect("pubsub numsub");
    n
}

#[test]
fn after_its_slot_moves_nobody_is_declared_dead_early_and_liveness_follows_the_lock() {
    support::init_logging();
    // Its own cluster: moving a slot must not disturb the other tests.
    let cluster = Cluster::start();
    let prefix = format!("{{{}}}:mempool", unique_tag("live"));
    let slot = cluster.keyslot(&prefix);
    let from = cluster.owner(&prefix);
    let to = (from + 1) % 3;
    // A TTL far longer than the test: any takeover before the crash would be a liveness one.
    let ttl = Duration::from_secs(10);
    let node = || {
        RedisMempool::open(cluster_config(&cluster, &prefix).watcher_lock_ttl(ttl)).expect("open")
    };
    let watcher = node();
    assert!(wait_until(SETTLE, || watcher.is_watcher()));
    let follower = node();
    let live = format!("{prefix}:watcher:live:{}", watcher.node_id());
    assert_eq!(subscribers(&cluster.nodes[from], &live), 1);

    move_slot(&cluster, slot, from, to);
    let moved = Instant::now();

    // The watcher's liveness subscription is still on the old owner, and the follower's lease
    // connection was replaced (MOVED): on the new owner it has not seen the watcher alive, so
    // it must not take over. The watcher's next renewal (within a third of the TTL) finds its
    // own subscription missing there and subscribes again, on the new owner.
    let followed = wait_until(ttl * 2, || {
        assert!(
            !follower.is_watcher(),
            "the follower took over after the move"
        );
        subscribers(&cluster.nodes[to], &live) == 1
    });
    assert!(
        followed,
        "the watcher's liveness never reached the new owner"
    );
    println!(
        "slot moved: the watcher's liveness subscription reached the new owner after {:?}",
        moved.elapsed()
    );
    assert!(
        wait_until(SETTLE, || watcher.is_watcher()),
        "the watcher did not keep its flag"
    );
    assert!(
        wait_until(SETTLE, || subscribers(&cluster.nodes[from], &live) == 0),
        "the old subscription is still there"
    );
    // Long enough for the follower to see it alive there.
    assert!(!wait_until(Duration::from_millis(500), || follower.is_watcher()));

    // Now a crash is seen on the new owner, long before the lock expires.
    let t0 = Instant::now();
    watcher.abandon();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:watcher:lock"))
        .query(&mut cluster.nodes[to].connection())
        .expect("pttl on the new owner");
    let left = Duration::from_millis(pttl.max(0) as u64);
    assert!(wait_until(SETTLE, || follower.is_watcher()));
    let took = t0.elapsed();
    println!("after the move a crashed watcher was replaced in {took:?} ({left:?} left)");
    assert!(took < left, "the follower waited for the lock to expire");
}
