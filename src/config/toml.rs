//! The `[storage.mempool]` table of a Dolos configuration file, read into a [`Config`] (feature
//! `serde`) exactly as Dolos writes it.

use super::{Config, SentinelSettings};
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
    /// crate reads as it stands. Unknown keys are ignored when reading (other tools may share
    /// the table), so a misspelt key would read just as well: every key is also given a value
    /// of the wrong type, which the table must then refuse.
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
