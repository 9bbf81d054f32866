//! What the mempool needs to know about the Redis server's memory: its version (whether scripts
//! may carry a `#!lua` header, see [`Header`](crate::scripts::Header)), `maxmemory` and the
//! eviction policy, all read from `INFO`, which managed Redis services answer where they refuse
//! `CONFIG GET`.
//!
//! Under any policy but `noeviction` a full Redis deletes keys to make room, and the mempool's
//! keys are not a cache: `allkeys-*` deletes accepted transactions and the counters that keep
//! the rest consistent, `volatile-*` deletes the only keys with a TTL, the watcher lock and its
//! fence. `open` therefore refuses such a server unless the host allows it, and the lease thread
//! looks again now and then.

use log::warn;

use crate::{Error, LOG_TARGET};

/// The figures `open` reads from one `INFO` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerFacts {
    /// `redis_version`, as (major, minor); `None` if absent or not a version.
    pub version: Option<(u32, u32)>,
    pub memory: MemoryFacts,
}

/// The `INFO memory` figures the mempool cares about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemoryFacts {
    /// `maxmemory-policy`; [`NOT_REPORTED`] when the server did not say.
    pub policy: String,
    /// `maxmemory` in bytes; 0 is no limit.
    pub maxmemory: u64,
    /// `used_memory` in bytes.
    pub used_memory: u64,
}

/// Stands for a policy the server's `INFO` did not report.
pub(crate) const NOT_REPORTED: &str = "(not reported)";

/// The value of `name` in an `INFO` reply (`name:value` lines).
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

impl MemoryFacts {
    /// Reads the figures from an `INFO` or `INFO memory` reply.
    pub fn parse(info: &str) -> MemoryFacts {
        let number = |name| field(info, name).and_then(|v| v.parse().ok()).unwrap_or(0);
        MemoryFacts {
            policy: field(info, "maxmemory_policy")
                .filter(|p| !p.is_empty())
                .unwrap_or(NOT_REPORTED)
                .to_string(),
            maxmemory: number("maxmemory"),
            used_memory: number("used_memory"),
        }
    }
}

impl ServerFacts {
    /// Reads the figures from an `INFO` reply with the `server` and `memory` sections.
    pub fn parse(info: &str) -> ServerFacts {
        let version = field(info, "redis_version").and_then(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        });
        ServerFacts {
            version,
            memory: MemoryFacts::parse(info),
        }
    }

    /// Whether the server reads `#!lua` header lines (Redis 7 and later). A version that cannot
    /// be read counts as older: scripts without the header run everywhere.
    pub fn script_headers(&self) -> bool {
        matches!(self.version, Some((major, _)) if major >= 7)
    }
}

/// What `policy` would do to the mempool when Redis runs out of memory; `None` for
/// `noeviction`, which refuses writes instead (and the mempool reports
/// [`Error::OutOfMemory`](crate::Error::OutOfMemory), having stored nothing).
pub(crate) fn eviction_risk(policy: &str) -> Option<&'static str> {
    if policy == "noeviction" {
        None
    } else if policy.starts_with("allkeys-") {
        Some(
            "when memory runs out redis deletes any key, the mempool's too: transactions it \
             accepted vanish without an error, and what is left of the queues, records and \
             counters no longer agrees",
        )
    } else if policy.starts_with("volatile-") {
        Some(
            "when memory runs out redis deletes keys with a TTL first, and the watcher lock and \
             its fence are the mempool's only ones: the watcher loses its lock, and while none \
             holds it no block is applied",
        )
    } else {
        Some(
            "this crate does not know that policy; it may delete the mempool's keys when memory \
             runs out",
        )
    }
}

/// How to put it right, said after the refusal and the warnings.
pub(crate) const FIX: &str = "set `maxmemory-policy noeviction` on the redis server (and size \
     `maxmemory` as the README's Deployments section shows); on a redis shared with caches that \
     need eviction, open with `Config::allow_eviction(true)` (`allow_eviction = true` in the \
     TOML table) to run anyway with a warning";

/// The check at `open`: any policy but `noeviction` is [`Error::EvictionPolicy`], or with
/// [`Config::allow_eviction`](crate::Config::allow_eviction) one warning.
pub(crate) fn check_policy(memory: &MemoryFacts, allow_eviction: bool) -> Result<(), Error> {
    let Some(risk) = eviction_risk(&memory.policy) else {
        return Ok(());
    };
    if !allow_eviction {
        return Err(Error::EvictionPolicy {
            policy: memory.policy.clone(),
        });
    }
    warn!(
        target: LOG_TARGET,
        "redis maxmemory-policy is {} (maxmemory {} bytes): {risk}; opening anyway because \
         allow_eviction is set",
        memory.policy,
        memory.maxmemory
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n\r\n\
        # Memory\r\nused_memory:914736\r\nused_memory_human:893.30K\r\nmaxmemory:3145728\r\n\
        maxmemory_human:3.00M\r\nmaxmemory_policy:allkeys-lru\r\n";

    #[test]
    fn info_is_read_field_by_field() {
        let facts = ServerFacts::parse(INFO);
        assert_eq!(facts.version, Some((7, 0)));
        assert!(facts.script_headers());
        assert_eq!(facts.memory.policy, "allkeys-lru");
        assert_eq!(facts.memory.maxmemory, 3_145_728);
        assert_eq!(facts.memory.used_memory, 914_736);
        // `maxmemory_human` and `used_memory_human` do not shadow the plain fields.
        let facts = ServerFacts::parse("redis_version:6.2.14\nmaxmemory_human:0B\nmaxmemory:0\n");
        assert_eq!(facts.version, Some((6, 2)));
        assert!(!facts.script_headers());
        assert_eq!(facts.memory.maxmemory, 0);
        assert_eq!(facts.memory.policy, NOT_REPORTED);
    }

    #[test]
    fn the_version_says_whether_scripts_carry_headers() {
        // An unreadable version: scripts without headers, which every version runs.
        assert!(!ServerFacts::parse("redis_version:unstable\n").script_headers());
        assert!(!ServerFacts::parse("").script_headers());
        assert!(ServerFacts::parse("redis_version:7.2.4\n").script_headers());
        assert!(ServerFacts::parse("redis_version:255.255.255\n").script_headers());
    }

    #[test]
    fn only_noeviction_keeps_every_key() {
        assert_eq!(eviction_risk("noeviction"), None);
        for policy in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            assert!(eviction_risk(policy).is_some_and(|r| r.contains("vanish")));
        }
        for policy in [
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            assert!(eviction_risk(policy).is_some_and(|r| r.contains("watcher lock")));
        }
        assert!(eviction_risk(NOT_REPORTED).is_some());
        assert!(eviction_risk("").is_some());
    }

    #[test]
    fn the_check_refuses_or_warns() {
        let facts = |policy: &str| MemoryFacts {
            policy: policy.into(),
            maxmemory: 0,
            used_memory: 0,
        };
        assert_eq!(check_policy(&facts("noeviction"), false), Ok(()));
        let err = check_policy(&facts("volatile-lru"), false).unwrap_err();
        assert_eq!(
            err,
            Error::EvictionPolicy {
                policy: "volatile-lru".into()
            }
        );
        let text = err.to_string();
        for needle in [
            "volatile-lru",
            "watcher lock",
            "noeviction",
            "allow_eviction",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text:?}");
        }
        assert!(!err.is_transient());
        assert_eq!(check_policy(&facts("allkeys-lru"), true), Ok(()));
    }
}
