//! Settings of a [`RedisMempool`](crate::RedisMempool), validated in one place
//! ([`Config::validate`]) when the mempool opens.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::connect::addr::{parse_host_port, redact_url, sentinel_url};
use crate::Error;

/// The lease cannot work below this TTL: it must fit a renewal period, a safety margin and a
/// socket timeout of the lease thread.
const MIN_WATCHER_LOCK_TTL: Duration = Duration::from_millis(100);

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
/// `watcher_lock_ttl` is given in whole seconds.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "toml_table::RawConfig"))]
pub struct Config {
    pub(crate) url: String,
    pub(crate) key_prefix: String,
    pub(crate) pool_size: u32,
    pub(crate) max_finalized: usize,
    pub(crate) watcher_lock_ttl: Duration,
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
        if let Some(nodes) = &self.cluster {
            return format!(
                "cluster nodes {}",
                nodes
                    .iter()
                    .map(|a| redact_url(a))
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        match &self.sentinel {
            Some(s) => format!(
                "sentinel master {:?} at {}",
                s.master_name,
                s.sentinels
                    .iter()
                    .map(|a| redact_url(a))
                    .collect::<Vec<_>>()
                    .join(",")
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

    /// Checks every setting; [`RedisMempool::open`](crate::RedisMempool::open) calls this first.
    /// The error names the field at fault.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &str, why: String| Err(Error::InvalidConfig(format!("{field}: {why}")));
        let tls = match (&self.sentinel, &self.cluster) {
            (Some(_), Some(_)) => {
                return bad(
                    "cluster_nodes",
                    "cannot be combined with sentinels: a deployment is either a Sentinel \
                     primary or a Redis Cluster"
                        .into(),
                )
            }
            (Some(sentinel), None) => {
                self.validate_sentinel(sentinel)?;
                false
            }
            (None, Some(nodes)) => {
                self.validate_cluster(nodes)?;
                false
            }
            (None, None) => self.validate_url()?,
        };
        if let Some((_, timeout)) = self.wait_replicas {
            if timeout.is_zero() {
                // WAIT reads 0 as "forever".
                return bad("wait_replicas", "the timeout must be more than zero".into());
            }
            if timeout >= self.command_timeout {
                return bad(
                    "wait_replicas",
                    format!(
                        "the timeout ({timeout:?}) must be shorter than command_timeout ({:?}), \
                         which bounds the whole call",
                        self.command_timeout
                    ),
                );
            }
        }
        if !tls && self.tls_ca_file.is_some() {
            return bad("tls_ca_file", "is only used with a rediss:// url".into());
        }
        if !tls && self.tls_client_cert.is_some() {
            return bad(
                "tls_client_cert",
                "is only used with a rediss:// url".into(),
            );
        }
        #[cfg(feature = "tls")]
        if tls {
            crate::connect::tls::certificates(self)?;
        }
        if self.key_prefix.is_empty() {
            return bad("key_prefix", "must not be empty".into());
        }
        if self
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return bad(
                "key_prefix",
                format!(
                    "{:?} must not contain spaces or control characters",
                    self.key_prefix
                ),
            );
        }
        if self.cluster.is_some() && crate::keys::hash_tag(&self.key_prefix).is_none() {
            return bad(
                "key_prefix",
                format!(
                    "{:?} has no hash tag: in a Redis Cluster every key of a mempool must hash to \
                     one slot, so the prefix must contain a non-empty tag in braces, which Redis \
                     hashes instead of the whole key (e.g. \"{{dolos}}:mempool\")",
                    self.key_prefix
                ),
            );
        }
        if self.pool_size == 0 {
            return bad("pool_size", "must be at least 1".into());
        }
        if self.max_finalized == 0 {
            return bad("max_finalized", "must be at least 1".into());
        }
        if self.max_pending == 0 {
            return bad("max_pending", "must be at least 1".into());
        }
        if self.max_tx_size == 0 {
            return bad("max_tx_size", "must be at least 1".into());
        }
        if self.event_history == 0 {
            return bad("event_history", "must be at least 1".into());
        }
        if self.applied_history == 0 {
            return bad("applied_history", "must be at least 1".into());
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be more than zero".into());
        }
        if self.command_timeout.is_zero() {
            return bad("command_timeout", "must be more than zero".into());
        }
        if self.watcher_lock_ttl < MIN_WATCHER_LOCK_TTL {
            return bad(
                "watcher_lock_ttl",
                format!(
                    "{:?} is too short: the lease needs room for renewals every ttl/3 and socket \
                     timeouts of ttl/4 (at least {:?})",
                    self.watcher_lock_ttl, MIN_WATCHER_LOCK_TTL
                ),
            );
        }
        if self.watcher_lock_ttl > Duration::from_secs(24 * 3600) {
            return bad(
                "watcher_lock_ttl",
                "must be at most 24 hours: a crashed watcher would block confirmations that long"
                    .into(),
            );
        }
        Ok(())
    }

    /// Checks `url` (without Sentinel); returns whether it asks for TLS.
    fn validate_url(&self) -> Result<bool, Error> {
        let bad = |field: &str, why: String| Err(Error::InvalidConfig(format!("{field}: {why}")));
        if self.url.trim().is_empty() {
            return bad("url", "must not be empty".into());
        }
        let scheme = self.url.split_once("://").map(|(s, _)| s);
        let tls = scheme == Some("rediss");
        match scheme {
            Some("redis") | Some("redis+unix") | Some("unix") => {}
            Some("rediss") if cfg!(feature = "tls") => {
                // redis-rs reads `#insecure` as "skip certificate verification", which this
                // crate does not build in: say so now rather than at the first connection.
                if self.url.contains('#') {
                    return bad(
                        "url",
                        "a rediss:// URL takes no #fragment (#insecure, which skips certificate \
                         checks, is not supported; give the server's CA with tls_ca_file)"
                            .into(),
                    );
                }
            }
            Some("rediss") => {
                return bad(
                    "url",
                    "rediss:// (TLS) is not supported by this build (enable the `tls` feature)"
                        .to_string(),
                )
            }
            Some(other) => {
                return bad(
                    "url",
                    format!("unsupported scheme {other:?} (use redis:// or redis+unix://)"),
                )
            }
            None => {
                return bad(
                    "url",
                    format!("{:?} is not a redis:// URL", self.redacted_url()),
                )
            }
        }
        // Parsing only: `Client::open` does not connect.
        if redis::Client::open(self.url.as_str()).is_err() {
            return bad(
                "url",
                format!("{:?} is not a valid redis URL", self.redacted_url()),
            );
        }
        Ok(tls)
    }

    /// Checks the Sentinel settings, and the url that then only carries credentials and db.
    fn validate_sentinel(&self, sentinel: &SentinelSettings) -> Result<(), Error> {
        let bad = |field: &str, why: String| Err(Error::InvalidConfig(format!("{field}: {why}")));
        if !cfg!(feature = "sentinel") {
            return bad(
                "sentinels",
                "Sentinel is not supported by this build (enable the `sentinel` feature)".into(),
            );
        }
        if sentinel.sentinels.is_empty() {
            return bad("sentinels", "must name at least one sentinel".into());
        }
        for addr in &sentinel.sentinels {
            let url = sentinel_url(addr);
            let ok = url.starts_with("redis://")
                && redis::Client::open(url.as_str()).is_ok_and(|c| {
                    matches!(
                        c.get_connection_info().addr(),
                        redis::ConnectionAddr::Tcp(..)
                    )
                });
            if !ok {
                return bad(
                    "sentinels",
                    format!(
                        "{:?} is not host:port or a redis://host:port URL",
                        redact_url(addr)
                    ),
                );
            }
        }
        let name = &sentinel.master_name;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad(
                "master_name",
                format!("{name:?} must be a non-empty name without spaces"),
            );
        }
        if !self.url.is_empty() {
            let ok =
                self.url.starts_with("redis://") && redis::Client::open(self.url.as_str()).is_ok();
            if !ok {
                return bad(
                    "url",
                    format!(
                        "{:?}: with sentinels the url only gives the nodes' credentials and db, \
                         as redis://user:password@primary/db (rediss:// and unix sockets are not \
                         supported with Sentinel)",
                        redact_url(&self.url)
                    ),
                );
            }
        }
        Ok(())
    }

    /// Checks the cluster's seed nodes, and the url that then only carries credentials.
    fn validate_cluster(&self, nodes: &[String]) -> Result<(), Error> {
        let bad = |field: &str, why: String| Err(Error::InvalidConfig(format!("{field}: {why}")));
        if !cfg!(feature = "cluster") {
            return bad(
                "cluster_nodes",
                "Redis Cluster is not supported by this build (enable the `cluster` feature)"
                    .into(),
            );
        }
        if nodes.is_empty() {
            return bad("cluster_nodes", "must name at least one node".into());
        }
        for addr in nodes {
            if parse_host_port(addr).is_none() {
                return bad(
                    "cluster_nodes",
                    format!(
                        "{:?} is not host:port (the nodes' credentials go in the url)",
                        redact_url(addr)
                    ),
                );
            }
        }
        if !self.url.is_empty() {
            let db = redis::Client::open(self.url.as_str())
                .ok()
                .filter(|_| self.url.starts_with("redis://"))
                .map(|c| c.get_connection_info().redis_settings().db());
            match db {
                Some(0) => {}
                Some(db) => {
                    return bad(
                        "url",
                        format!("database {db}: a Redis Cluster only has database 0"),
                    )
                }
                None => {
                    return bad(
                        "url",
                        format!(
                            "{:?}: with cluster_nodes the url only gives the nodes' credentials, \
                             as redis://user:password@cluster (rediss:// and unix sockets are \
                             not supported with Cluster)",
                            redact_url(&self.url)
                        ),
                    )
                }
            }
        }
        Ok(())
    }

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
            .finish()
    }
}

#[cfg(feature = "serde")]
mod toml_table {
    use super::Config;
    use std::time::Duration;

    /// The `[storage.mempool]` table as Dolos writes it. Unknown keys are ignored so the
    /// same table can carry settings for other backends' tools.
    #[derive(serde::Deserialize)]
    pub(super) struct RawConfig {
        backend: String,
        /// Required without `sentinels`; with them it only carries credentials and db.
        url: Option<String>,
        /// With `master_name`: see [`Config::sentinel`].
        sentinels: Option<Vec<String>>,
        master_name: Option<String>,
        /// See [`Config::cluster`].
        cluster_nodes: Option<Vec<String>>,
        /// With `wait_timeout_ms`: see [`Config::wait_replicas`].
        wait_replicas: Option<usize>,
        wait_timeout_ms: Option<u64>,
        key_prefix: Option<String>,
        pool_size: Option<u32>,
        max_finalized: Option<usize>,
        /// Whole seconds, as in the reference deployment.
        watcher_lock_ttl: Option<u64>,
        connect_timeout_ms: Option<u64>,
        command_timeout_ms: Option<u64>,
        max_pending: Option<usize>,
        max_tx_size: Option<usize>,
        event_history: Option<usize>,
        applied_history: Option<usize>,
        watcher_candidate: Option<bool>,
        /// See [`Config::allow_eviction`].
        allow_eviction: Option<bool>,
        tls_ca_file: Option<std::path::PathBuf>,
        /// With `tls_client_key_file`: see [`Config::tls_client_cert`].
        tls_client_cert_file: Option<std::path::PathBuf>,
        tls_client_key_file: Option<std::path::PathBuf>,
    }

    impl TryFrom<RawConfig> for Config {
        type Error = String;

        fn try_from(raw: RawConfig) -> Result<Config, String> {
            if raw.backend != "redis" {
                return Err(format!(
                    "backend must be \"redis\" for this crate, got {:?}",
                    raw.backend
                ));
            }
            let cluster = raw.cluster_nodes;
            let mut c = match (raw.sentinels, raw.master_name, raw.url) {
                (None, None, Some(url)) => Config::new(url),
                (None, None, None) if cluster.is_some() => Config::new(""),
                (None, None, None) => return Err("missing field `url`".to_string()),
                (Some(sentinels), Some(master_name), url) => {
                    // Built by hand so that a build without the feature still reads the table
                    // and `validate` names the missing feature.
                    let mut c = Config::new(url.unwrap_or_default());
                    c.sentinel = Some(super::SentinelSettings {
                        sentinels,
                        master_name,
                    });
                    c
                }
                _ => return Err("sentinels and master_name go together".to_string()),
            };
            // By hand too, for the same reason; `validate` refuses it next to sentinels.
            c.cluster = cluster;
            match (raw.wait_replicas, raw.wait_timeout_ms) {
                (Some(n), Some(ms)) => c = c.wait_replicas(n, Duration::from_millis(ms)),
                (None, None) => {}
                _ => return Err("wait_replicas and wait_timeout_ms go together".to_string()),
            }
            if let Some(v) = raw.key_prefix {
                c = c.key_prefix(v);
            }
            if let Some(v) = raw.pool_size {
                c = c.pool_size(v);
            }
            if let Some(v) = raw.max_finalized {
                c = c.max_finalized(v);
            }
            if let Some(v) = raw.watcher_lock_ttl {
                c = c.watcher_lock_ttl(Duration::from_secs(v));
            }
            if let Some(v) = raw.connect_timeout_ms {
                c = c.connect_timeout(Duration::from_millis(v));
            }
            if let Some(v) = raw.command_timeout_ms {
                c = c.command_timeout(Duration::from_millis(v));
            }
            if let Some(v) = raw.max_pending {
                c = c.max_pending(v);
            }
            if let Some(v) = raw.max_tx_size {
                c = c.max_tx_size(v);
            }
            if let Some(v) = raw.event_history {
                c = c.event_history(v);
            }
            if let Some(v) = raw.applied_history {
                c = c.applied_history(v);
            }
            if let Some(v) = raw.watcher_candidate {
                c = c.watcher_candidate(v);
            }
            if let Some(v) = raw.allow_eviction {
                c = c.allow_eviction(v);
            }
            if let Some(v) = raw.tls_ca_file {
                c = c.tls_ca_file(v);
            }
            match (raw.tls_client_cert_file, raw.tls_client_key_file) {
                (Some(cert), Some(key)) => c = c.tls_client_cert(cert, key),
                (None, None) => {}
                _ => {
                    return Err(
                        "tls_client_cert_file and tls_client_key_file go together".to_string()
                    )
                }
            }
            Ok(c)
        }
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
    fn validation_names_the_field() {
        let base = || Config::new("redis://127.0.0.1:6379");
        let field_of = |c: Config| match c.validate() {
            Err(Error::InvalidConfig(m)) => m.split(':').next().unwrap().to_string(),
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        assert_eq!(field_of(Config::new("")), "url");
        assert_eq!(field_of(Config::new("http://x")), "url");
        assert_eq!(field_of(Config::new("not a url")), "url");
        assert_eq!(field_of(base().key_prefix("")), "key_prefix");
        assert_eq!(field_of(base().key_prefix("a b")), "key_prefix");
        assert_eq!(field_of(base().pool_size(0)), "pool_size");
        assert_eq!(field_of(base().max_finalized(0)), "max_finalized");
        assert_eq!(field_of(base().applied_history(0)), "applied_history");
        assert_eq!(
            field_of(base().watcher_lock_ttl(Duration::ZERO)),
            "watcher_lock_ttl"
        );
        assert_eq!(
            field_of(base().watcher_lock_ttl(Duration::from_millis(10))),
            "watcher_lock_ttl"
        );
        assert_eq!(
            field_of(base().command_timeout(Duration::ZERO)),
            "command_timeout"
        );
    }

    #[test]
    fn tls_settings_need_a_rediss_url_and_rediss_needs_the_feature() {
        let err = Config::new("redis://h").tls_ca_file("ca.crt").validate();
        assert!(matches!(err, Err(Error::InvalidConfig(m)) if m.starts_with("tls_ca_file:")));
        let err = Config::new("redis://h")
            .tls_client_cert("c.crt", "c.key")
            .validate();
        assert!(matches!(err, Err(Error::InvalidConfig(m)) if m.starts_with("tls_client_cert:")));
        let rediss = Config::new("rediss://u:hunter2@h:6380").validate();
        if cfg!(feature = "tls") {
            // The built-in roots: nothing to read or check before connecting.
            assert_eq!(rediss, Ok(()));
        } else {
            assert!(
                matches!(&rediss, Err(Error::InvalidConfig(m)) if m.contains("`tls` feature")),
                "{rediss:?}"
            );
        }
    }

    #[test]
    fn cluster_settings_are_checked() {
        // Built by hand, like the TOML table does, so that this runs without the feature too.
        let cluster = |nodes: &[&str], prefix: &str| {
            let mut c = Config::new("").key_prefix(prefix);
            c.cluster = Some(nodes.iter().map(|n| n.to_string()).collect());
            c
        };
        let field_of = |c: Config| match c.validate() {
            Err(Error::InvalidConfig(m)) => m.split(':').next().unwrap().to_string(),
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        if !cfg!(feature = "cluster") {
            let err = cluster(&["h:7000"], "{d}:m").validate();
            assert!(
                matches!(&err, Err(Error::InvalidConfig(m)) if m.contains("`cluster` feature")),
                "{err:?}"
            );
            return;
        }
        assert_eq!(
            cluster(&["h:7000", "10.0.0.2:7001"], "{d}:m").validate(),
            Ok(())
        );
        assert_eq!(cluster(&["[::1]:7000"], "p:{d}").validate(), Ok(()));
        for prefix in ["dolos:mempool", "{}:m", "{d:m", "d}:{m"] {
            assert_eq!(
                field_of(cluster(&["h:7000"], prefix)),
                "key_prefix",
                "{prefix}"
            );
        }
        assert_eq!(field_of(cluster(&[], "{d}:m")), "cluster_nodes");
        for bad in ["h", "h:0", "h:x", "redis://h:7000", "u:p@h:7000", ":7000"] {
            assert_eq!(field_of(cluster(&[bad], "{d}:m")), "cluster_nodes", "{bad}");
        }
        assert_eq!(
            field_of(cluster(&["h:1"], "{d}:m").url("redis://h/2")),
            "url"
        );
        assert_eq!(
            field_of(cluster(&["h:1"], "{d}:m").url("redis+unix:///s")),
            "url"
        );
        let with_credentials = cluster(&["h:1"], "{d}:m").url("redis://u:hunter2@h/0");
        assert_eq!(with_credentials.validate(), Ok(()));
        assert!(!format!("{with_credentials:?}").contains("hunter2"));
        let mut both = cluster(&["h:1"], "{d}:m");
        both.sentinel = Some(SentinelSettings {
            sentinels: vec!["h:26379".into()],
            master_name: "m".into(),
        });
        assert_eq!(field_of(both), "cluster_nodes");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn the_toml_table_reads_allow_eviction() {
        let read = |extra: &str| -> Config {
            toml::from_str(&format!(
                "backend = \"redis\"\nurl = \"redis://h\"\n{extra}"
            ))
            .unwrap()
        };
        assert!(!read("").allow_eviction);
        assert!(read("allow_eviction = true").allow_eviction);
        assert!(!read("allow_eviction = false").allow_eviction);
        assert!(!Config::new("redis://h").allow_eviction);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn the_toml_table_reads_cluster_nodes() {
        let c: Config = toml::from_str(
            r#"
            backend = "redis"
            cluster_nodes = ["10.0.0.1:7000", "10.0.0.2:7000"]
            url = "redis://dolos:secret@cluster"
            key_prefix = "{dolos}:mempool"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.cluster,
            Some(vec![
                "10.0.0.1:7000".to_string(),
                "10.0.0.2:7000".to_string()
            ])
        );
        assert_eq!(c.url, "redis://dolos:secret@cluster");
        let c: Config = toml::from_str(
            r#"
            backend = "redis"
            cluster_nodes = ["10.0.0.1:7000"]
            "#,
        )
        .unwrap();
        assert_eq!(c.url, "");
        // The default prefix has no hash tag: the operator must choose one.
        assert!(
            matches!(c.validate(), Err(Error::InvalidConfig(m)) if m.starts_with(
            if cfg!(feature = "cluster") { "key_prefix:" } else { "cluster_nodes:" }))
        );
    }

    #[test]
    fn lease_timeout_fits_inside_the_ttl() {
        let c = Config::new("redis://h").watcher_lock_ttl(Duration::from_secs(1));
        assert_eq!(c.lease_io_timeout(), Duration::from_millis(250));
        let c = Config::new("redis://h");
        assert_eq!(c.lease_io_timeout(), Duration::from_secs(2));
    }
}
