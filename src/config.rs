//! Settings of a [`RedisMempool`](crate::RedisMempool), validated in one place
//! ([`Config::validate`]) when the mempool opens.

use std::fmt;
use std::time::Duration;

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
    pub(crate) watcher_candidate: bool,
}

impl Config {
    /// A configuration for the Redis server at `url` (`redis://[user:password@]host[:port][/db]`
    /// or `redis+unix:///path/to/socket`), with every other setting at its default.
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
            watcher_candidate: true,
        }
    }

    /// The prefix of every key this mempool uses; nodes that share a prefix share a mempool.
    /// No spaces or control characters. To keep a mempool in one Redis Cluster slot, put a hash
    /// tag in it (`{dolos}:mempool`).
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

    /// Whether this node competes for the watcher lock. Observers — inspectors, dashboards,
    /// tools that only read or subscribe — set it to `false`: they start no lease thread and
    /// never apply `confirm`.
    ///
    /// Defaults to `true`.
    pub fn watcher_candidate(mut self, candidate: bool) -> Config {
        self.watcher_candidate = candidate;
        self
    }

    /// The Redis URL, with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
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
        if self.url.trim().is_empty() {
            return bad("url", "must not be empty".into());
        }
        let scheme = self.url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("redis") | Some("redis+unix") | Some("unix") => {}
            Some("rediss") => {
                return bad(
                    "url",
                    "rediss:// (TLS) is not supported by this build".to_string(),
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
            .field("url", &self.redacted_url())
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("max_finalized", &self.max_finalized)
            .field("watcher_lock_ttl", &self.watcher_lock_ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("max_pending", &self.max_pending)
            .field("max_tx_size", &self.max_tx_size)
            .field("event_history", &self.event_history)
            .field("watcher_candidate", &self.watcher_candidate)
            .finish()
    }
}

/// Replaces the password of a URL's user info (`scheme://user:password@host`) with `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = authority.split_at(at);
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // `redis://secret@host`: redis-rs reads a lone user-info part as a user name, but
        // operators sometimes put a password there; hide it as well.
        None => "***".to_string(),
    };
    format!("{scheme}://{user}{host}{path}")
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
        url: String,
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
        watcher_candidate: Option<bool>,
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
            let mut c = Config::new(raw.url);
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
            if let Some(v) = raw.watcher_candidate {
                c = c.watcher_candidate(v);
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
        assert!(c.validate().is_ok());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:hunter2@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:hunter2@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
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
    fn lease_timeout_fits_inside_the_ttl() {
        let c = Config::new("redis://h").watcher_lock_ttl(Duration::from_secs(1));
        assert_eq!(c.lease_io_timeout(), Duration::from_millis(250));
        let c = Config::new("redis://h");
        assert_eq!(c.lease_io_timeout(), Duration::from_secs(2));
    }
}
