//! [`Config::validate`]: every setting checked before anything connects, each refusal an
//! [`Error::InvalidConfig`] that starts with the field at fault (see [`invalid`]).

use std::time::Duration;

use super::{invalid, Config, SentinelSettings};
use crate::connect::addr::{parse_host_port, redact_url, sentinel_url};
use crate::Error;

/// The lease cannot work below this TTL: it must fit a renewal period, a safety margin and a
/// socket timeout of the lease thread.
const MIN_WATCHER_LOCK_TTL: Duration = Duration::from_millis(100);

/// The shortest liveness check interval: each follower runs a lease script per interval, and a
/// holder's reconnect in flight must fit between two looks.
const MIN_LIVENESS_CHECK: Duration = Duration::from_millis(10);

impl Config {
    /// Checks every setting; [`RedisMempool::open`](crate::RedisMempool::open) calls this first.
    /// The error names the field at fault.
    pub fn validate(&self) -> Result<(), Error> {
        // First: a misspelt key means some setting is not what the operator wrote.
        if let Some((key, why)) = &self.unknown_key {
            return Err(invalid(key, why));
        }
        let tls = match (&self.sentinel, &self.cluster) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "cluster_nodes",
                    "cannot be combined with sentinels: a deployment is either a Sentinel \
                     primary or a Redis Cluster",
                ))
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
                return Err(invalid(
                    "wait_replicas",
                    "the timeout must be more than zero",
                ));
            }
            if timeout >= self.command_timeout {
                return Err(invalid(
                    "wait_replicas",
                    format!(
                        "the timeout ({timeout:?}) must be shorter than command_timeout ({:?}), \
                         which bounds the whole call",
                        self.command_timeout
                    ),
                ));
            }
        }
        if !tls && self.tls_ca_file.is_some() {
            return Err(invalid("tls_ca_file", "is only used with a rediss:// url"));
        }
        if !tls && self.tls_client_cert.is_some() {
            return Err(invalid(
                "tls_client_cert",
                "is only used with a rediss:// url",
            ));
        }
        #[cfg(feature = "tls")]
        if tls {
            crate::connect::tls::certificates(self)?;
        }
        if self.key_prefix.is_empty() {
            return Err(invalid("key_prefix", "must not be empty"));
        }
        if self
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "key_prefix",
                format!(
                    "{:?} must not contain spaces or control characters",
                    self.key_prefix
                ),
            ));
        }
        if self.cluster.is_some() && crate::keys::hash_tag(&self.key_prefix).is_none() {
            return Err(invalid(
                "key_prefix",
                format!(
                    "{:?} has no hash tag: in a Redis Cluster every key of a mempool must hash to \
                     one slot, so the prefix must contain a non-empty tag in braces, which Redis \
                     hashes instead of the whole key (e.g. \"{{dolos}}:mempool\")",
                    self.key_prefix
                ),
            ));
        }
        let counts = [
            ("pool_size", self.pool_size as usize),
            ("max_finalized", self.max_finalized),
            ("max_pending", self.max_pending),
            ("max_tx_size", self.max_tx_size),
            ("event_history", self.event_history),
            ("applied_history", self.applied_history),
        ];
        if let Some((field, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(invalid(field, "must be at least 1"));
        }
        let timeouts = [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
        ];
        if let Some((field, _)) = timeouts.iter().find(|(_, t)| t.is_zero()) {
            return Err(invalid(field, "must be more than zero"));
        }
        if self.watcher_lock_ttl < MIN_WATCHER_LOCK_TTL {
            return Err(invalid(
                "watcher_lock_ttl",
                format!(
                    "{:?} is too short: the lease needs room for renewals every ttl/3 and socket \
                     timeouts of ttl/4 (at least {:?})",
                    self.watcher_lock_ttl, MIN_WATCHER_LOCK_TTL
                ),
            ));
        }
        if self.watcher_lock_ttl > Duration::from_secs(24 * 3600) {
            return Err(invalid(
                "watcher_lock_ttl",
                "must be at most 24 hours: a crashed watcher would block confirmations that long",
            ));
        }
        if !self.liveness_check.is_zero() && self.liveness_check < MIN_LIVENESS_CHECK {
            return Err(invalid(
                "liveness_check",
                format!(
                    "{:?} is too short: at least {MIN_LIVENESS_CHECK:?}, or zero to turn the \
                     checks off",
                    self.liveness_check
                ),
            ));
        }
        Ok(())
    }

    /// Checks `url` (without Sentinel); returns whether it asks for TLS.
    fn validate_url(&self) -> Result<bool, Error> {
        if self.url.trim().is_empty() {
            return Err(invalid("url", "must not be empty"));
        }
        let scheme = self.url.split_once("://").map(|(s, _)| s);
        let tls = scheme == Some("rediss");
        let refused = match scheme {
            Some("redis" | "redis+unix" | "unix") => None,
            // redis-rs reads `#insecure` as "skip certificate verification", which this crate
            // does not build in: say so now rather than at the first connection.
            Some("rediss") if cfg!(feature = "tls") && self.url.contains('#') => Some(
                "a rediss:// URL takes no #fragment (#insecure, which skips certificate checks, \
                 is not supported; give the server's CA with tls_ca_file)"
                    .to_string(),
            ),
            Some("rediss") if cfg!(feature = "tls") => None,
            Some("rediss") => Some(
                "rediss:// (TLS) is not supported by this build (enable the `tls` feature)"
                    .to_string(),
            ),
            Some(other) => Some(format!(
                "unsupported scheme {other:?} (use redis:// or redis+unix://)"
            )),
            None => Some(format!("{:?} is not a redis:// URL", self.redacted_url())),
        };
        if let Some(why) = refused {
            return Err(invalid("url", why));
        }
        // Parsing only: `Client::open` does not connect.
        if redis::Client::open(self.url.as_str()).is_err() {
            return Err(invalid(
                "url",
                format!("{:?} is not a valid redis URL", self.redacted_url()),
            ));
        }
        Ok(tls)
    }

    /// Checks the Sentinel settings, and the url that then only carries credentials and db.
    fn validate_sentinel(&self, sentinel: &SentinelSettings) -> Result<(), Error> {
        if !cfg!(feature = "sentinel") {
            return Err(invalid(
                "sentinels",
                "Sentinel is not supported by this build (enable the `sentinel` feature)",
            ));
        }
        if sentinel.sentinels.is_empty() {
            return Err(invalid("sentinels", "must name at least one sentinel"));
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
                return Err(invalid(
                    "sentinels",
                    format!(
                        "{:?} is not host:port or a redis://host:port URL",
                        redact_url(addr)
                    ),
                ));
            }
        }
        let name = &sentinel.master_name;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "master_name",
                format!("{name:?} must be a non-empty name without spaces"),
            ));
        }
        if !self.url.is_empty() {
            let ok =
                self.url.starts_with("redis://") && redis::Client::open(self.url.as_str()).is_ok();
            if !ok {
                return Err(invalid(
                    "url",
                    format!(
                        "{:?}: with sentinels the url only gives the nodes' credentials and db, \
                         as redis://user:password@primary/db (rediss:// and unix sockets are not \
                         supported with Sentinel)",
                        redact_url(&self.url)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks the cluster's seed nodes, and the url that then only carries credentials.
    fn validate_cluster(&self, nodes: &[String]) -> Result<(), Error> {
        if !cfg!(feature = "cluster") {
            return Err(invalid(
                "cluster_nodes",
                "Redis Cluster is not supported by this build (enable the `cluster` feature)",
            ));
        }
        if nodes.is_empty() {
            return Err(invalid("cluster_nodes", "must name at least one node"));
        }
        for addr in nodes {
            if parse_host_port(addr).is_none() {
                return Err(invalid(
                    "cluster_nodes",
                    format!(
                        "{:?} is not host:port (the nodes' credentials go in the url)",
                        redact_url(addr)
                    ),
                ));
            }
        }
        if !self.url.is_empty() {
            let db = redis::Client::open(self.url.as_str())
                .ok()
                .filter(|_| self.url.starts_with("redis://"))
                .map(|c| c.get_connection_info().redis_settings().db());
            let why = match db {
                Some(0) => return Ok(()),
                Some(db) => format!("database {db}: a Redis Cluster only has database 0"),
                None => format!(
                    "{:?}: with cluster_nodes the url only gives the nodes' credentials, as \
                     redis://user:password@cluster (rediss:// and unix sockets are not supported \
                     with Cluster)",
                    redact_url(&self.url)
                ),
            };
            return Err(invalid("url", why));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field a refusal names.
    fn field_of(c: Config) -> String {
        match c.validate() {
            Err(Error::InvalidConfig(m)) => m.split(':').next().unwrap().to_string(),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let base = || Config::new("redis://127.0.0.1:6379");
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
        assert_eq!(
            field_of(base().liveness_check(Duration::from_millis(5))),
            "liveness_check"
        );
        assert!(base().liveness_check(Duration::ZERO).validate().is_ok());
        assert!(base()
            .liveness_check(Duration::from_millis(10))
            .validate()
            .is_ok());
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
}
