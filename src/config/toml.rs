//! The `[storage.mempool]` table of a Dolos configuration file, read into a [`Config`] (feature
//! `serde`) exactly as Dolos writes it.

use super::{Config, SentinelSettings};
use std::collections::BTreeMap;
use std::time::Duration;

/// The `[storage.mempool]` table as Dolos writes it. Every key must be one of these fields
/// ([`KNOWN_KEYS`]): a key the crate does not read is kept in `unknown` and refused by
/// [`Config::validate`] with the nearest known key, since a misspelt setting silently left at
/// its default (`watcher_lock_tll = 3` for a 10 s lock) is worse than a node that does not
/// start. (serde's `deny_unknown_fields` would refuse it too, but with no suggestion and not as
/// an [`Error::InvalidConfig`](crate::Error::InvalidConfig).)
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
    /// See [`Config::liveness_check`]; 0 turns it off.
    liveness_check_ms: Option<u64>,
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
    /// Every other key, with its value unread.
    #[serde(flatten)]
    unknown: BTreeMap<String, serde::de::IgnoredAny>,
}

/// The keys of the table, as [`RawConfig`] names them (a unit test holds the two together).
pub(super) const KNOWN_KEYS: &[&str] = &[
    "backend",
    "url",
    "sentinels",
    "master_name",
    "cluster_nodes",
    "wait_replicas",
    "wait_timeout_ms",
    "key_prefix",
    "pool_size",
    "max_finalized",
    "watcher_lock_ttl",
    "connect_timeout_ms",
    "command_timeout_ms",
    "max_pending",
    "max_tx_size",
    "event_history",
    "applied_history",
    "watcher_candidate",
    "liveness_check_ms",
    "allow_eviction",
    "tls_ca_file",
    "tls_client_cert_file",
    "tls_client_key_file",
];

/// How many single-character edits (insert, delete, replace, or swap two neighbours) turn `a`
/// into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The known key nearest to `key` (ties: the first in [`KNOWN_KEYS`]).
fn nearest_key(key: &str) -> (&'static str, usize) {
    KNOWN_KEYS
        .iter()
        .map(|known| (*known, edit_distance(&key.to_lowercase(), known)))
        .min_by_key(|(_, distance)| *distance)
        .unwrap_or(("url", usize::MAX))
}

/// The refusal of the unknown keys, if any: the first one (in key order) as the field, and
/// why, with the nearest known key and the others that are unknown too.
fn unknown_keys(unknown: &BTreeMap<String, serde::de::IgnoredAny>) -> Option<(String, String)> {
    let mut keys = unknown.keys();
    let first = keys.next()?;
    let (nearest, distance) = nearest_key(first);
    // Close enough to be a slip of the keyboard: a third of the key, at least two edits.
    let close = distance <= (first.chars().count() / 3).max(2);
    let mut why = if close {
        format!("not a key of [storage.mempool]; did you mean `{nearest}`?")
    } else {
        format!(
            "not a key of [storage.mempool] (the nearest known key is `{nearest}`; they are: {})",
            KNOWN_KEYS.join(", ")
        )
    };
    let others: Vec<&str> = keys.map(String::as_str).collect();
    if !others.is_empty() {
        why.push_str(&format!(" Also unknown: {}.", others.join(", ")));
    }
    why.push_str(
        " The table holds this crate's settings only, and a key it does not read would leave \
         that setting at its default without a word.",
    );
    Some((first.clone(), why))
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Config, String> {
        let unknown = unknown_keys(&raw.unknown);
        // A table refused here (say, `urll` for `url`) names the unknown key as well.
        let mut c = Config::try_from_known(raw).map_err(|e| match &unknown {
            Some((key, why)) => format!("{e}; and `{key}`: {why}"),
            None => e,
        })?;
        c.unknown_key = unknown;
        Ok(c)
    }
}

impl Config {
    /// [`RawConfig`]'s known keys as a `Config`.
    fn try_from_known(raw: RawConfig) -> Result<Config, String> {
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
                c.sentinel = Some(SentinelSettings {
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
        if let Some(v) = raw.liveness_check_ms {
            c = c.liveness_check(Duration::from_millis(v));
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
            _ => return Err("tls_client_cert_file and tls_client_key_file go together".to_string()),
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn the_toml_table_reads_allow_eviction() {
        let read = |extra: &str| -> Config {
            ::toml::from_str(&format!(
                "backend = \"redis\"\nurl = \"redis://h\"\n{extra}"
            ))
            .unwrap()
        };
        assert!(!read("").allow_eviction);
        assert!(read("allow_eviction = true").allow_eviction);
        assert!(!read("allow_eviction = false").allow_eviction);
        assert!(!Config::new("redis://h").allow_eviction);
    }

    #[test]
    fn the_toml_table_reads_liveness_check_ms() {
        let read = |extra: &str| -> Config {
            ::toml::from_str(&format!(
                "backend = \"redis\"\nurl = \"redis://h\"\n{extra}"
            ))
            .unwrap()
        };
        assert_eq!(read("").liveness_check, Duration::from_millis(100));
        assert_eq!(
            read("liveness_check_ms = 250").liveness_check,
            Duration::from_millis(250)
        );
        assert_eq!(read("liveness_check_ms = 0").liveness_check, Duration::ZERO);
    }

    #[test]
    fn the_toml_table_reads_cluster_nodes() {
        let c: Config = ::toml::from_str(
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
        let c: Config = ::toml::from_str(
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

    /// The table with `extra` after a minimal valid one.
    fn table(extra: &str) -> Result<Config, ::toml::de::Error> {
        ::toml::from_str(&format!(
            "backend = \"redis\"\nurl = \"redis://h\"\n{extra}"
        ))
    }

    /// What `validate` says of the table with `extra`.
    fn refusal(extra: &str) -> String {
        match table(extra).map(|c| c.validate()) {
            Ok(Err(Error::InvalidConfig(m))) => m.to_string(),
            other => panic!("{extra:?}: expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn a_misspelt_key_is_refused_with_the_nearest_known_one() {
        let m = refusal("watcher_lock_tll = 3");
        assert!(m.starts_with("watcher_lock_tll: "), "{m}");
        assert!(m.contains("did you mean `watcher_lock_ttl`?"), "{m}");
        for (typo, meant) in [
            ("keyprefix = \"a\"", "key_prefix"),
            ("pool_sise = 4", "pool_size"),
            ("max_pneding = 4", "max_pending"),
            ("command_timeout = 5", "command_timeout_ms"),
            ("Pool_Size = 4", "pool_size"),
            ("allow_evictoin = true", "allow_eviction"),
        ] {
            let m = refusal(typo);
            assert!(
                m.contains(&format!("did you mean `{meant}`?")),
                "{typo}: {m}"
            );
        }
        // Far from every key: still named, with the nearest and the whole list.
        let m = refusal("frobnicate_everything = 1");
        assert!(m.starts_with("frobnicate_everything: "), "{m}");
        assert!(m.contains("the nearest known key is `"), "{m}");
        assert!(m.contains("watcher_candidate"), "{m}");
        // Several: the first by name, the others listed; the same through `Display`.
        let m = refusal("zz = 1\npool_sise = 4");
        assert!(
            m.starts_with("pool_sise: ") && m.contains("Also unknown: zz."),
            "{m}"
        );
        let shown = table("pool_sise = 4")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(shown.starts_with("invalid config: pool_sise: "), "{shown}");
        // A table refused for another reason names the unknown key too.
        let e = ::toml::from_str::<Config>("backend = \"redis\"\nurll = \"redis://h\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing field `url`") && e.contains("did you mean `url`?"),
            "{e}"
        );
        // Known keys are not refused, and a table built in code never is.
        assert_eq!(table("pool_size = 4").unwrap().validate(), Ok(()));
        assert_eq!(Config::new("redis://h").unknown_key, None);
    }

    /// Every name of [`KNOWN_KEYS`] is a field of [`RawConfig`] (a value of the wrong type is
    /// refused, where an unknown key's value is never read), and every field is in the list
    /// (it is not reported unknown).
    #[test]
    fn the_known_keys_are_the_fields_of_the_table() {
        for key in KNOWN_KEYS {
            let wrong = format!("{key} = {{ nested = 1 }}");
            let read = ::toml::from_str::<Config>(&format!(
                "backend = \"redis\"\nurl = \"redis://h\"\n{wrong}"
            ));
            assert!(read.is_err() || *key == "backend" || *key == "url", "{key}");
        }
        let all: String = [
            "url = \"redis://h\"",
            "key_prefix = \"p\"",
            "pool_size = 1",
            "max_finalized = 1",
            "watcher_lock_ttl = 1",
            "connect_timeout_ms = 1",
            "command_timeout_ms = 1",
            "max_pending = 1",
            "max_tx_size = 1",
            "event_history = 1",
            "applied_history = 1",
            "watcher_candidate = true",
            "liveness_check_ms = 1",
            "allow_eviction = true",
            "wait_replicas = 1",
            "wait_timeout_ms = 1",
            "tls_ca_file = \"a\"",
            "tls_client_cert_file = \"a\"",
            "tls_client_key_file = \"a\"",
        ]
        .join("\n");
        let c: Config = ::toml::from_str(&format!("backend = \"redis\"\n{all}")).unwrap();
        assert_eq!(c.unknown_key, None);
        let raw = |text: &str| ::toml::from_str::<RawConfig>(text).map(|r| r.unknown.len());
        let extra = "sentinels = [\"a:1\"]\nmaster_name = \"m\"\ncluster_nodes = [\"a:1\"]";
        assert_eq!(
            raw(&format!("backend = \"redis\"\n{all}\n{extra}")).unwrap(),
            0
        );
        assert_eq!(
            KNOWN_KEYS.len(),
            1 + all.lines().count() + extra.lines().count()
        );
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("ttl", "ttl"), 0);
        assert_eq!(edit_distance("tll", "ttl"), 1); // a swap
        assert_eq!(edit_distance("pool", "pools"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    /// The ```toml blocks of a markdown text.
    fn toml_blocks(markdown: &str) -> Vec<String> {
        let mut blocks = Vec::new();
        let mut block: Option<String> = None;
        for line in markdown.lines() {
            let fence = line.trim_start().starts_with("```");
            match &mut block {
                Some(text) if fence => blocks.push(std::mem::take(text)),
                Some(text) => text.push_str(&format!("{line}\n")),
                None => {}
            }
            if fence {
                block = match block {
                    Some(_) => None,
                    None => line.trim_start().starts_with("```toml").then(String::new),
                };
            }
        }
        blocks
    }

    /// The README's TOML tables are what an operator copies: each must be a Dolos table this
    /// crate reads as it stands, with no key it does not know (refused by `validate`, which the
    /// TLS, Sentinel and Cluster tables cannot all pass here), and every key given a value of
    /// the wrong type must then be refused when reading.
    #[test]
    fn every_toml_block_of_the_readme_is_a_table_this_crate_reads() {
        let blocks = toml_blocks(include_str!("../../README.md"));
        assert!(blocks.len() >= 4, "{blocks:?}");
        for block in &blocks {
            let document: ::toml::Table =
                ::toml::from_str(block).unwrap_or_else(|e| panic!("not TOML: {e}\n{block}"));
            let table = document
                .get("storage")
                .and_then(|s| s.get("mempool"))
                .and_then(|m| m.as_table())
                .unwrap_or_else(|| panic!("no [storage.mempool] table:\n{block}"));
            let read =
                |table: &::toml::Table| ::toml::Value::Table(table.clone()).try_into::<Config>();
            let config = read(table).unwrap_or_else(|e| panic!("{e}\n{block}"));
            assert_eq!(config.unknown_key, None, "{block}");
            for key in table.keys() {
                let mut wrong = table.clone();
                wrong.insert(key.clone(), ::toml::Value::Table(::toml::Table::new()));
                assert!(
                    read(&wrong).is_err(),
                    "the table does not know {key:?}:\n{block}"
                );
            }
            // The files named by a TLS example do not exist here, and Sentinel and Cluster
            // need their features; everything else must pass the checks `open` makes first.
            let names_files = table.keys().any(|k| k.ends_with("_file"));
            let lacks_feature = (table.contains_key("sentinels") && !cfg!(feature = "sentinel"))
                || (table.contains_key("cluster_nodes") && !cfg!(feature = "cluster"));
            if !names_files && !lacks_feature {
                assert_eq!(config.validate(), Ok(()), "{block}");
            }
        }
    }
}
