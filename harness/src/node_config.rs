//! A node's TOML file: the demo and the chaos run write one per node, and the node process
//! reads it back. It carries the reference `[storage.mempool]` table, exactly as a Dolos
//! configuration would, plus a `[demo]` table of the node's own (name, pace, thresholds) and,
//! for the chaos run's nodes, a `[chaos]` table (the lock TTL to the millisecond, which the
//! reference table gives in whole seconds, and the flag probe).

use std::path::Path;
use std::time::Duration;

use dolos_redis::Config;

/// What the demo or the chaos run puts in a node's file.
pub struct NodeFile<'a> {
    pub name: &'a str,
    /// The node's fault proxy, in front of Redis.
    pub url: &'a str,
    pub prefix: &'a str,
    pub pool_size: u32,
    pub max_finalized: usize,
    /// `watcher_lock_ttl`, written in whole seconds (rounded up); with `chaos`, also to the
    /// millisecond in `[chaos]`.
    pub ttl: Duration,
    /// The connect and command timeouts.
    pub io_timeout: Duration,
    pub tx_interval: Duration,
    pub finalize: u32,
    pub drop: u32,
    /// Adds the `[chaos]` table.
    pub chaos: bool,
}

/// A TOML string, quoted and escaped.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl NodeFile<'_> {
    pub fn render(&self) -> String {
        let name = self.name;
        let mut text = format!(
            "# Written for {name}.\n\
             [storage.mempool]\n\
             backend = \"redis\"\n\
             url = {url}  # {name}'s fault proxy, in front of redis\n\
             key_prefix = {prefix}\n\
             pool_size = {pool}\n\
             max_finalized = {max_finalized}\n\
             watcher_lock_ttl = {secs}\n\
             connect_timeout_ms = {io}\n\
             command_timeout_ms = {io}\n\
             \n\
             [demo]\n\
             name = {name_str}\n\
             tx_interval_ms = {tx}\n\
             finalize_threshold = {f}\n\
             drop_threshold = {d}\n",
            url = toml_str(self.url),
            prefix = toml_str(self.prefix),
            pool = self.pool_size,
            max_finalized = self.max_finalized,
            secs = self.ttl.as_millis().div_ceil(1000),
            io = self.io_timeout.as_millis(),
            name_str = toml_str(name),
            tx = self.tx_interval.as_millis(),
            f = self.finalize,
            d = self.drop,
        );
        if self.chaos {
            text.push_str(&format!(
                "\n[chaos]\nwatcher_lock_ttl_ms = {}\n",
                self.ttl.as_millis()
            ));
        }
        text
    }

    /// Writes the file as `<dir>/<name>.toml` and returns its path (`dir`: see [`temp_dir`]).
    pub fn write(&self, dir: &Path) -> Result<std::path::PathBuf, String> {
        let path = dir.join(format!("{}.toml", self.name));
        std::fs::write(&path, self.render())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

/// The `[demo]` table: what a real node would take from the chain and its peers.
#[derive(Clone, Debug)]
pub struct Settings {
    pub name: String,
    /// One new transaction per interval.
    pub tx_interval: Duration,
    /// `confirm`'s finalize threshold: confirmations until Finalized.
    pub finalize_threshold: u32,
    /// `confirm`'s drop threshold: blocks an unconfirmed inflight tx may miss.
    pub drop_threshold: u32,
    /// Whether the node runs a probe of its watcher flag (the chaos run's nodes: see
    /// [`crate::node`]).
    pub flag_probe: bool,
}

/// A new temp dir for a run's node files, `dolos-redis-<tool>-…`, removed when dropped.
pub fn temp_dir(tool: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(&format!("dolos-redis-{tool}-"))
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))
}

/// Reads a node's TOML file: the `[storage.mempool]` table becomes the `Config` through the
/// crate's own deserializer (feature `serde`), and `[demo]` the node's settings. A `[chaos]`
/// table sets the lock TTL to the millisecond and turns the flag probe on.
pub fn load(path: &Path) -> Result<(Config, Settings), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
    let table = doc
        .get("storage")
        .and_then(|s| s.get("mempool"))
        .ok_or_else(|| format!("{} has no [storage.mempool] table", path.display()))?;
    let config: Config = table
        .clone()
        .try_into()
        .map_err(|e| format!("{}: [storage.mempool]: {e}", path.display()))?;

    let demo = doc.get("demo").and_then(|d| d.as_table());
    let int = |key: &str, default: i64| -> Result<i64, String> {
        match demo.and_then(|d| d.get(key)) {
            None => Ok(default),
            Some(v) => v
                .as_integer()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("[demo] {key} must be a positive integer")),
        }
    };
    let default_name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "node".into());
    let name = match demo.and_then(|d| d.get("name")) {
        None => default_name,
        Some(v) => v
            .as_str()
            .ok_or("[demo] name must be a string")?
            .to_string(),
    };
    let settings = Settings {
        name,
        tx_interval: Duration::from_millis(int("tx_interval_ms", 500)? as u64),
        finalize_threshold: int("finalize_threshold", 4)? as u32,
        drop_threshold: int("drop_threshold", 8)? as u32,
        flag_probe: false,
    };
    match doc.get("chaos") {
        None => Ok((config, settings)),
        Some(chaos) => {
            let ttl = chaos
                .get("watcher_lock_ttl_ms")
                .and_then(|v| v.as_integer())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{}: no [chaos] watcher_lock_ttl_ms", path.display()))?;
            let config = config.watcher_lock_ttl(Duration::from_millis(ttl as u64));
            Ok((
                config,
                Settings {
                    flag_probe: true,
                    ..settings
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(chaos: bool) -> NodeFile<'static> {
        NodeFile {
            name: "n1",
            url: "redis://127.0.0.1:7000",
            prefix: "test:mempool",
            pool_size: 4,
            max_finalized: 1000,
            ttl: Duration::from_millis(1500),
            io_timeout: Duration::from_millis(300),
            tx_interval: Duration::from_millis(250),
            finalize: 4,
            drop: 10_000,
            chaos,
        }
    }

    #[test]
    fn a_written_file_loads_back() {
        let dir = temp_dir("test").unwrap();
        let (config, settings) = load(&file(false).write(dir.path()).unwrap()).unwrap();
        assert_eq!(config.get_key_prefix(), "test:mempool");
        // Whole seconds in the reference table, rounded up.
        assert_eq!(config.get_watcher_lock_ttl(), Duration::from_secs(2));
        assert_eq!(settings.name, "n1");
        assert_eq!(settings.tx_interval, Duration::from_millis(250));
        assert_eq!(
            (settings.finalize_threshold, settings.drop_threshold),
            (4, 10_000)
        );
        assert!(!settings.flag_probe);
    }

    #[test]
    fn the_chaos_table_sets_the_ttl_to_the_millisecond_and_the_probe() {
        let dir = temp_dir("test").unwrap();
        let (config, settings) = load(&file(true).write(dir.path()).unwrap()).unwrap();
        assert_eq!(config.get_watcher_lock_ttl(), Duration::from_millis(1500));
        assert!(settings.flag_probe);
    }
}
