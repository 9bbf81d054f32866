//! Settings of a [`RedisMempool`](crate::RedisMempool): what a node is given, with their
//! defaults and setters. Checking them is `validate.rs` ([`Config::validate`], called when the
//! mempool opens); reading them from a Dolos TOML table is `toml.rs` (feature `serde`).
//!
//! (A little over 500 lines: one setter per setting, each saying its default and what it is for,
//! kept with the struct they fill.)

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::connect::addr::redact_url;
use crate::Error;

#[cfg(feature = "serde")]
mod toml;
mod validate;

/// The default of [`Config::liveness_check`].
const DEFAULT_LIVENESS_CHECK: Duration = Duration::from_millis(100);

/// The refusal of a setting: `<field>: <why>`, the one form of every [`Error::InvalidConfig`]
/// (callers and tests read the field from it).
pub(crate) fn invalid(field: &str, why: impl fmt::Display) -> Error {
    Error::InvalidConfig(format!("{field}: {why}").into())
}

/// How a node connects to Redis and shares its mempool.
///
/// Built with [`Config::new`] and by-value setters; every setter states its default.
///
/// ```
/// use std::time::Duration;
/// let config = dolos_redis::Config::new("redis://127.0.0.1:6379")
///     .key_prefix("preprod:mempool")
///     .watcher_lock_ttl(Duration::from_secs(5));
/// assert_eq!(config.get_pool_size(), 10);
/// ```
///
/// With the `serde` feature, the `[storage.mempool]` table of a Dolos configuration deserializes
/// into a `Config` unchanged (see the crate README): `backend` must be `"redis"` and
/// `watcher_lock_ttl` is given in whole seconds. A key the crate does not read (a misspelling
/// such as `watcher_lock_tll`) is refused: [`Config::validate`], and so
/// [`RedisMempool::open`](crate::RedisMempool::open), fails with [`Error::InvalidConfig`]
/// naming the key and the known key nearest to it. The table holds this crate's settings only.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "toml::RawConfig"))]
pub struct Config {
    pub(crate) url: String,
    pub(crate) key_prefix: String,
    pub(crate) pool_size: u32,
    pub(crate) max_finalized: usize,
    pub(crate) watcher_lock_ttl: Duration,
    /// [`Config::liveness_check`]; zero when off.
    pub(crate) liveness_check: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) max_pending: usize,
    pub(crate) max_tx_size: usize,
    pub(crate) event_history: usize,
    pub(crate) applied_history: usize,
    pub(crate) watcher_candidate: bool,
    pub(crate) tls_ca_file: Option<PathBuf>,
    pub(crate) tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// `Some` with [`Config::sentinel`]: the primary is found through these sentinels.
    pub(crate) sentinel: Option<SentinelSettings>,
    /// `(replicas, timeout)` of [`Config::wait_replicas`]; `None` when off.
    pub(crate) wait_replicas: Option<(usize, Duration)>,
    /// `Some` with [`Config::cluster`]: the seed nodes (`host:port`) of a Redis Cluster.
    pub(crate) cluster: Option<Vec<String>>,
    /// [`Config::test_script_headers`]: `false` loads the scripts without their `#!lua` line.
    #[cfg(feature = "test-hooks")]
    pub(crate) script_headers: bool,
    pub(crate) allow_eviction: bool,
    /// A key of the TOML table this crate does not read: `(key, why)`, refused by
    /// [`Config::validate`] (see `toml.rs`). Always `None` for a `Config` built in code.
    pub(crate) unknown_key: Option<(String, String)>,
}

/// Where the sentinels are and which primary to ask them for.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SentinelSettings {
    /// `host:port` or `redis://[user:password@]host:port` (credentials for the sentinels).
    pub sentinels: Vec<String>,
    pub master_name: String,
}

impl Config {
    /// A configuration for the Redis server at `url` (`redis://[user:password@]host[:port][/db]`
    /// or `redis+unix:///path/to/socket`; with the `tls` feature also
    /// `rediss://[user:password@]host[:port][/db]`), with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Config {
        Config {
            url: url.into(),
            key_prefix: "dolos:mempool".to_string(),
            pool_size: 10,
            max_finalized: 10_000,
            watcher_lock_ttl: Duration::from_secs(10),
            liveness_check: DEFAULT_LIVENESS_CHECK,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            max_pending: 100_000,
            max_tx_size: 64 * 1024,
            event_history: 100_000,
            applied_history: 4_320,
            watcher_candidate: true,
            tls_ca_file: None,
            tls_client_cert: None,
            sentinel: None,
            wait_replicas: None,
            cluster: None,
            #[cfg(feature = "test-hooks")]
            script_headers: true,
            allow_eviction: false,
            unknown_key: None,
        }
    }

    /// A configuration for a Redis Cluster (`cluster` feature): `nodes` are `host:port` of
    /// some of its nodes (seeds; any node will do, the others are only asked when it does not
    /// answer). A mempool lives in one hash slot, so the key prefix must carry a hash tag
    /// (`{dolos}:mempool`; see [`Config::key_prefix`]). Every new connection asks the seeds in
    /// turn which primary owns that slot (`CLUSTER SLOTS`) and connects to it, so after a
    /// failover or a slot migration broken connections are replaced by connections to the new
    /// owner. Mempools with different tags may live on different primaries.
    ///
    /// The nodes' credentials go in [`Config::url`] (`redis://user:password@cluster`; its host
    /// and port are ignored, and the database must be 0, the only one a cluster has).
    ///
    /// ```
    /// let config = dolos_redis::Config::cluster(["10.0.0.1:7000", "10.0.0.2:7000"])
    ///     .key_prefix("{dolos}:mempool")
    ///     .url("redis://dolos:secret@cluster");
    /// assert!(config.validate().is_ok());
    /// ```
    #[cfg(feature = "cluster")]
    pub fn cluster(nodes: impl IntoIterator<Item = impl Into<String>>) -> Config {
        let mut config = Config::new("");
        config.cluster = Some(nodes.into_iter().map(Into::into).collect());
        config
    }

    /// A configuration that finds the Redis primary through Redis Sentinel (`sentinel`
    /// feature): `sentinels` are `host:port` (or `redis://[user:password@]host:port` when the
    /// sentinels want credentials), asked in turn for the primary of `master_name`. Every new
    /// connection asks again and checks with `ROLE` that the node it reaches is the primary, so
    /// after a failover broken connections are replaced by connections to the new primary.
    ///
    /// The data nodes' credentials and database go in [`Config::url`]
    /// (`redis://user:password@primary/0`; its host and port are ignored). See also
    /// [`Config::wait_replicas`].
    ///
    /// ```
    /// let config = dolos_redis::Config::sentinel(
    ///     ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"],
    ///     "mymaster",
    /// )
    /// .url("redis://dolos:secret@primary/0");
    /// assert!(config.validate().is_ok());
    /// ```
    #[cfg(feature = "sentinel")]
    pub fn sentinel(
        sentinels: impl IntoIterator<Item = impl Into<String>>,
        master_name: impl Into<String>,
    ) -> Config {
        let mut config = Config::new("");
        config.sentinel = Some(SentinelSettings {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master_name: master_name.into(),
        });
        config
    }

    /// Replaces the URL given to [`Config::new`]. With [`Config::sentinel`] the URL only
    /// carries the data nodes' user, password and database (`redis://user:password@primary/0`):
    /// its host and port are ignored, since the sentinels name the primary.
    ///
    /// Defaults to the URL given to `new`; none with `sentinel` (no credentials, database 0).
    pub fn url(mut self, url: impl Into<String>) -> Config {
        self.url = url.into();
        self
    }

    /// Durability option: after every call that writes (`receive`, `mark_inflight`,
    /// `mark_acknowledged`, `confirm`, `reset_watcher_lock` and the lease's acquire, renew and
    /// release), wait until `replicas` replicas have the write (`WAIT`, pipelined with the
    /// script: still one round trip), at most `timeout`. A call whose write reached fewer fails
    /// with [`Error::NotReplicated`] — the write was made on the primary but a failover may lose
    /// it. A lock acquisition or renewal that did not reach them counts as failed: the node
    /// never acts as watcher on a lock the replicas do not have. `replicas` 0 turns it off.
    /// `timeout` must be shorter than the command timeout; the lease thread waits at most half
    /// its own socket timeout.
    ///
    /// Defaults to off: a write is acknowledged once the primary has it, and asynchronous
    /// replication may lose the last writes (and the lock) on failover.
    pub fn wait_replicas(mut self, replicas: usize, timeout: Duration) -> Config {
        self.wait_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// The prefix of every key this mempool uses; nodes that share a prefix share a mempool.
    /// No spaces or control characters.
    ///
    /// With [`Config::cluster`] the prefix must carry a hash tag: a non-empty part in braces,
    /// as in `{dolos}:mempool` or `preprod:{dolos}`. Redis Cluster then places every key of the
    /// mempool by the tag alone, so they all share one slot and the scripts, which touch all of
    /// them at once, can run. Mempools with different tags may live on different primaries;
    /// two prefixes with the same tag share a slot (and a primary) but not their keys.
    ///
    /// Defaults to `"dolos:mempool"`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Config {
        self.key_prefix = prefix.into();
        self
    }

    /// The most pooled connections used for mempool calls (the lease thread has its own).
    ///
    /// Defaults to 10.
    pub fn pool_size(mut self, size: u32) -> Config {
        self.pool_size = size;
        self
    }

    /// How many Finalized/Dropped entries the finalized log retains (oldest go first).
    ///
    /// Defaults to 10 000.
    pub fn max_finalized(mut self, max: usize) -> Config {
        self.max_finalized = max;
        self
    }

    /// Lifetime of the watcher lock in Redis. The watcher renews it every third of this; a
    /// crashed watcher is replaced after at most this long. Whole milliseconds, at least 100 ms.
    ///
    /// Defaults to 10 seconds.
    pub fn watcher_lock_ttl(mut self, ttl: Duration) -> Config {
        self.watcher_lock_ttl = ttl;
        self
    }

    /// How often a follower looks whether the watcher's process is still alive, so that a
    /// watcher that died (killed, crashed, OOM-killed) is replaced within a few of these instead
    /// of after the lock's TTL. `Duration::ZERO` turns it off: the TTL alone decides, as in
    /// the reference deployment.
    ///
    /// Every candidate node keeps a subscription to a channel of its own under the prefix
    /// (`<prefix>:watcher:live:<node id>`, on the connection that also listens on the wake
    /// channel) for as long as it runs; when its process dies, its kernel closes that
    /// connection and Redis drops it at once. A follower declares the watcher dead when it has
    /// seen that subscription and then finds it gone on two looks at least this far apart; the
    /// second look takes the lock in the same step, under a new epoch. A paused watcher, one cut
    /// off from Redis or a hung Redis keep their connections open on the server: for them the
    /// TTL still decides. A watcher lowers its flag the moment its own subscription breaks, and
    /// raises it again only on a renewal sent after it subscribed again, so two flags are never
    /// up together because of this. At least 10 ms when not zero; each follower runs one
    /// lease script per interval.
    ///
    /// Defaults to 100 ms.
    pub fn liveness_check(mut self, interval: Duration) -> Config {
        self.liveness_check = interval;
        self
    }

    /// How long to wait for a TCP connection to Redis, and for a free pooled connection.
    /// The lease thread uses the smaller of this and a quarter of the lock TTL.
    ///
    /// Defaults to 2 seconds.
    pub fn connect_timeout(mut self, timeout: Duration) -> Config {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for Redis to answer one command (read and write timeout).
    /// The lease thread uses the smaller of this and a quarter of the lock TTL.
    ///
    /// Defaults to 2 seconds.
    pub fn command_timeout(mut self, timeout: Duration) -> Config {
        self.command_timeout = timeout;
        self
    }

    /// The most transactions the pending queue may hold; `receive` fails with
    /// [`Error::MempoolFull`] beyond it.
    ///
    /// Defaults to 100 000.
    pub fn max_pending(mut self, max: usize) -> Config {
        self.max_pending = max;
        self
    }

    /// The largest payload (`EraCbor` body) accepted by `receive`, in bytes; larger ones fail with
    /// [`Error::TxTooLarge`].
    ///
    /// Defaults to 65 536 (four times Cardano's current 16 KiB limit).
    pub fn max_tx_size(mut self, max: usize) -> Config {
        self.max_tx_size = max;
        self
    }

    /// About how many events the shared event stream keeps (Redis trims it approximately). A
    /// subscriber cut off from Redis resumes without a gap if fewer events than this happened
    /// meanwhile; otherwise it is told how many it missed.
    ///
    /// Defaults to 100 000.
    pub fn event_history(mut self, events: usize) -> Config {
        self.event_history = events;
        self
    }

    /// How many of the newest applied blocks Redis remembers (the applied chain that
    /// [`RedisMempool::confirm`](crate::RedisMempool::confirm) checks for replays and undoes
    /// blocks from). A forward call for a block older than all of them is `AlreadyApplied` once
    /// the chain holds this many; a rollback can reach back this far. The watcher's setting
    /// trims the chain. At least 1.
    ///
    /// Defaults to 4 320: twice Cardano's security parameter k = 2 160, the deepest rollback the
    /// chain allows.
    pub fn applied_history(mut self, blocks: usize) -> Config {
        self.applied_history = blocks;
        self
    }

    /// Whether this node competes for the watcher lock. Observers — inspectors, dashboards,
    /// tools that only read or subscribe — set it to `false`: they start no lease thread and
    /// never apply `confirm`.
    ///
    /// Defaults to `true`.
    pub fn watcher_candidate(mut self, candidate: bool) -> Config {
        self.watcher_candidate = candidate;
        self
    }

    /// Whether `open` accepts a Redis whose `maxmemory-policy` is not `noeviction`. Such a
    /// server deletes keys when it runs out of memory: `allkeys-*` any key, so transactions
    /// the mempool accepted vanish and the rest no longer agrees; `volatile-*` the keys with a
    /// TTL first, which are the watcher lock and its fence. With `false`, `open` refuses it
    /// with [`Error::EvictionPolicy`]; with `true` (a Redis shared with caches that need
    /// eviction, and a mempool that can afford to lose what it holds) it logs one warning and
    /// opens. Either way the lease thread reads the policy again every three lock TTLs (at most
    /// every 30 s) and logs once when it changes at run time; nodes that are no
    /// [watcher candidate](Config::watcher_candidate) have no lease thread and do not.
    /// [`RedisMempool::stats`](crate::RedisMempool::stats) shows the policy as it is now.
    ///
    /// Defaults to `false`: only `noeviction`, under which a full Redis refuses writes
    /// instead ([`Error::OutOfMemory`], nothing stored).
    pub fn allow_eviction(mut self, allow: bool) -> Config {
        self.allow_eviction = allow;
        self
    }

    /// Test hook (feature `test-hooks`): with `false`, the scripts are loaded without their
    /// `#!lua` header lines even on Redis 7, as they are on Redis 6.2 (which cannot read them),
    /// so that the crate's tests can run that path on the Redis they have.
    ///
    /// Defaults to `true`: headers whenever the server reads them.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_script_headers(mut self, on: bool) -> Config {
        self.script_headers = on;
        self
    }

    /// Whether the scripts may carry their `#!lua` header (when the server reads it): always,
    /// unless a test turned it off with [`Config::test_script_headers`].
    pub(crate) fn script_headers(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return self.script_headers;
        #[cfg(not(feature = "test-hooks"))]
        true
    }

    /// For `rediss://` URLs (`tls` feature): a PEM file with the certificate(s) of the CA that
    /// signed the Redis server's certificate, trusted *instead of* the built-in public roots —
    /// for a server whose certificate comes from a private CA (or any CA not among Mozilla's
    /// roots). The server's certificate must name the host of the URL.
    ///
    /// Defaults to none: Mozilla's root certificates, built into the crate (what a managed
    /// Redis with a publicly issued certificate needs). The system's trust store is not read.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Config {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// For `rediss://` URLs (`tls` feature): the PEM certificate (chain) and private key this
    /// node presents to a server that authenticates clients by certificate (`tls-auth-clients
    /// yes`, which is Redis's own default when TLS is on). The files are read when the mempool
    /// opens.
    ///
    /// Defaults to none: no client certificate.
    pub fn tls_client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Config {
        self.tls_client_cert = Some((cert_file.into(), key_file.into()));
        self
    }

    /// The Redis URL, with any password replaced by `***` (with Sentinel: the master name and
    /// the sentinels, passwords replaced as well; with Cluster: the seed nodes).
    pub fn redacted_url(&self) -> String {
        let list = |addrs: &[String]| addrs.iter().map(|a| redact_url(a)).collect::<Vec<_>>();
        if let Some(nodes) = &self.cluster {
            return format!("cluster nodes {}", list(nodes).join(","));
        }
        match &self.sentinel {
            Some(s) => format!(
                "sentinel master {:?} at {}",
                s.master_name,
                list(&s.sentinels).join(",")
            ),
            None => redact_url(&self.url),
        }
    }

    /// See [`Config::key_prefix`].
    pub fn get_key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// See [`Config::pool_size`].
    pub fn get_pool_size(&self) -> u32 {
        self.pool_size
    }

    /// See [`Config::max_finalized`].
    pub fn get_max_finalized(&self) -> usize {
        self.max_finalized
    }

    /// See [`Config::watcher_lock_ttl`].
    pub fn get_watcher_lock_ttl(&self) -> Duration {
        self.watcher_lock_ttl
    }

    /// See [`Config::liveness_check`].
    pub fn get_liveness_check(&self) -> Duration {
        self.liveness_check
    }

    /// Socket timeout of the lease thread: short enough that a hung renewal is noticed well
    /// before the lock could expire on the server.
    pub(crate) fn lease_io_timeout(&self) -> Duration {
        (self.watcher_lock_ttl / 4)
            .min(self.command_timeout)
            .min(self.connect_timeout)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("max_finalized", &self.max_finalized)
            .field("watcher_lock_ttl", &self.watcher_lock_ttl)
            .field("liveness_check", &self.liveness_check)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("max_pending", &self.max_pending)
            .field("max_tx_size", &self.max_tx_size)
            .field("event_history", &self.event_history)
            .field("applied_history", &self.applied_history)
            .field("watcher_candidate", &self.watcher_candidate)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client_cert", &self.tls_client_cert)
            .field(
                "sentinel",
                &self.sentinel.as_ref().map(|_| self.redacted_url()),
            )
            .field("wait_replicas", &self.wait_replicas)
            .field(
                "cluster",
                &self.cluster.as_ref().map(|_| self.redacted_url()),
            )
            .field("allow_eviction", &self.allow_eviction)
            .field(
                "unknown_key",
                &self.unknown_key.as_ref().map(|(key, _)| key),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference_deployment() {
        let c = Config::new("redis://redis:6379");
        assert_eq!(c.key_prefix, "dolos:mempool");
        assert_eq!(c.pool_size, 10);
        assert_eq!(c.max_finalized, 10_000);
        assert_eq!(c.watcher_lock_ttl, Duration::from_secs(10));
        assert_eq!(c.applied_history, 4_320);
        assert_eq!(c.liveness_check, Duration::from_millis(100));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn debug_and_errors_hide_the_password() {
        let c = Config::new("redis://u:hunter2@h:1");
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = Config::new("redis://u:hunter2@h:1:2:3").key_prefix("");
        assert!(!c.validate().unwrap_err().to_string().contains("hunter2"));
    }

    #[test]
    fn lease_timeout_fits_inside_the_ttl() {
        let c = Config::new("redis://h").watcher_lock_ttl(Duration::from_secs(1));
        assert_eq!(c.lease_io_timeout(), Duration::from_millis(250));
        let c = Config::new("redis://h");
        assert_eq!(c.lease_io_timeout(), Duration::from_secs(2));
    }
}
