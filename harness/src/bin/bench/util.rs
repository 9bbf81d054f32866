//! Helpers of the benchmark that know nothing about the phases: deterministic transactions,
//! latency statistics, server introspection and the machine description.

use std::collections::BTreeMap;
use std::time::Duration;

use dolos_redis::{EraCbor, MempoolTx, TxHash};
use dolos_redis_harness::keys;
use dolos_redis_testkit::Rng;

/// Size of every benchmark payload: a typical small Cardano transaction.
pub const PAYLOAD_LEN: usize = 300;

/// The hash of tx `i` of the population `tag`: the same (tag, i) always gives the same hash, so a
/// phase can name its transactions by index instead of storing them.
pub fn tx_hash(tag: u64, i: u64) -> TxHash {
    let seed = Rng::new(tag).next_u64() ^ i;
    TxHash::from(Rng::new(seed).bytes32())
}

/// Tx `i` of population `tag` with a 300-byte payload.
pub fn tx(tag: u64, i: u64) -> MempoolTx {
    let mut body = vec![0x5a; PAYLOAD_LEN];
    body[..8].copy_from_slice(&i.to_le_bytes());
    MempoolTx::new(tx_hash(tag, i), EraCbor(6, body))
}

/// The finite values, in order.
pub fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// The median of the finite values (NaN if none).
pub fn median(v: &[f64]) -> f64 {
    let v = sorted(v);
    if v.is_empty() {
        return f64::NAN;
    }
    // Lower median for even counts, like `Samples::median`.
    v[(v.len() - 1) / 2]
}

/// Durations of single calls, in nanoseconds.
#[derive(Default, Clone)]
pub struct Samples(Vec<u64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_nanos() as u64);
    }

    pub fn extend(&mut self, other: &Samples) {
        self.0.extend_from_slice(&other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        // Nearest-rank: the smallest sample with at least p of all samples at or below it.
        let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Duration::from_nanos(sorted[rank - 1])
    }

    pub fn median(&self) -> Duration {
        self.percentile(0.5)
    }

    pub fn p99(&self) -> Duration {
        self.percentile(0.99)
    }
}

/// Microseconds with one decimal ("–" when nothing was measured).
pub fn us(d: Duration) -> String {
    if d.is_zero() {
        return "–".into();
    }
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// A ratio as `1.23×` ("–" when one side was not measured).
pub fn times(x: f64) -> String {
    if x.is_finite() && x > 0.0 {
        format!("{x:.2}×")
    } else {
        "–".into()
    }
}

/// Milliseconds with one decimal; signed, for times measured against an estimated instant.
pub fn ms(d: f64) -> String {
    format!("{d:.1}")
}

pub fn check(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

pub fn human_count(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// `used_memory` of `INFO memory` less the clients' buffers (`mem_clients_normal` and
/// `mem_clients_slaves`), in bytes.
pub fn used_memory(admin: &mut redis::Connection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(admin)
        .expect("INFO memory");
    let field = |name: &str| -> i64 {
        info_field(&info, name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in INFO memory"))
    };
    // Without the clients' buffers: after a fill through eight connections they hold about
    // 30 KB each until Redis shrinks them (idle for a while), which is not the data's memory
    // and came to 20–40 B a tx over 10k.
    field("used_memory") - field("mem_clients_normal") - field("mem_clients_slaves")
}

pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (k, v) = line.trim_end().split_once(':')?;
        (k == field).then(|| v.to_string())
    })
}

pub use dolos_redis_testkit::monitor::client_names;

/// Deletes every key under `prefix` (synchronously, so that memory figures taken afterwards are
/// settled).
pub fn delete_prefix(admin: &mut redis::Connection, prefix: &str) {
    keys::delete_prefix(admin, prefix).expect("SCAN and DEL");
}

/// `MEMORY USAGE … SAMPLES 0` of every key under `prefix`, by key name without the prefix.
pub fn key_sizes(admin: &mut redis::Connection, prefix: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for key in keys::scan(admin, &format!("{prefix}:*")).expect("SCAN") {
        let bytes: Option<i64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query(admin)
            .expect("MEMORY USAGE");
        let short = key.strip_prefix(&format!("{prefix}:")).unwrap_or(&key);
        out.insert(short.to_string(), bytes.unwrap_or(0));
    }
    out
}

/// `INFO commandstats` summed over several calls: command → (calls, µs).
pub type CommandStats = BTreeMap<String, (u64, u64)>;

/// Adds the counters of `INFO commandstats` (since the last `CONFIG RESETSTAT`) to `into`,
/// leaving out the commands the benchmark itself sends on the side.
pub fn add_command_stats(admin: &mut redis::Connection, into: &mut CommandStats) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(admin)
        .expect("INFO commandstats");
    for line in info.lines() {
        let Some((name, fields)) = line.trim_end().split_once(':') else {
            continue;
        };
        let Some(name) = name.strip_prefix("cmdstat_") else {
            continue;
        };
        if name.starts_with("config") || name.starts_with("slowlog") || name == "info" {
            continue;
        }
        let field = |key: &str| -> u64 {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                .unwrap_or(0)
        };
        let entry = into.entry(name.to_string()).or_default();
        entry.0 += field("calls");
        entry.1 += field("usec");
    }
}

/// `calls` and `usec` of every command so far (`INFO commandstats`).
pub fn command_stats(admin: &mut redis::Connection) -> CommandStats {
    let mut s = CommandStats::new();
    add_command_stats(admin, &mut s);
    s
}

/// How many calls of `cmd`, and how many µs of server time, between two readings.
pub fn usec(before: &CommandStats, after: &CommandStats, cmd: &str) -> (u64, u64) {
    let (c0, u0) = before.get(cmd).copied().unwrap_or_default();
    let (c1, u1) = after.get(cmd).copied().unwrap_or_default();
    (c1 - c0, u1 - u0)
}

/// One `SLOWLOG GET` entry reduced to what the benchmark needs.
pub struct SlowEntry {
    pub micros: u64,
    pub client_name: String,
    /// The command's name (`evalsha`, `xrange`, …).
    pub command: String,
}

/// Reads up to `n` slowlog entries (newest first).
pub fn slowlog(admin: &mut redis::Connection, n: usize) -> Vec<SlowEntry> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(n)
        .query(admin)
        .expect("SLOWLOG GET");
    entries
        .into_iter()
        .filter_map(|e| match e {
            // id, timestamp, duration (µs), args, client addr, client name
            redis::Value::Array(fields) if fields.len() >= 6 => {
                let micros = match &fields[2] {
                    redis::Value::Int(n) => *n as u64,
                    _ => return None,
                };
                let client_name = match &fields[5] {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    redis::Value::SimpleString(s) => s.clone(),
                    _ => String::new(),
                };
                let command = match &fields[3] {
                    redis::Value::Array(args) => match args.first() {
                        Some(redis::Value::BulkString(b)) => {
                            String::from_utf8_lossy(b).to_lowercase()
                        }
                        _ => String::new(),
                    },
                    _ => String::new(),
                };
                Some(SlowEntry {
                    micros,
                    client_name,
                    command,
                })
            }
            _ => None,
        })
        .collect()
}

/// `CONFIG GET name` (None when the server refuses, e.g. a managed Redis).
/// Loads `script` (`SCRIPT LOAD`); returns its SHA for `EVALSHA`.
pub fn script_load(admin: &mut redis::Connection, script: &str) -> String {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query(admin)
        .expect("SCRIPT LOAD")
}

pub fn config_get(admin: &mut redis::Connection, name: &str) -> Option<String> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query(admin)
        .ok()?;
    pair.get(1).cloned()
}

pub fn config_set(admin: &mut redis::Connection, name: &str, value: &str) -> bool {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query::<()>(admin)
        .is_ok()
}

/// One line per fact about the machine the numbers come from.
pub fn machine(admin: &mut redis::Connection) -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let local_redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "not installed".into());
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(admin)
        .unwrap_or_default();
    let served_by = format!(
        "{} (io-threads {})",
        info_field(&info, "redis_version").unwrap_or_else(|| "?".into()),
        config_get(admin, "io-threads").unwrap_or_else(|| "?".into())
    );
    vec![
        ("CPUs (nproc)".into(), cpus),
        ("CPU model".into(), model),
        ("kernel".into(), kernel),
        ("load average at start".into(), load_average()),
        ("`redis-server --version`".into(), local_redis),
        ("server under test".into(), served_by),
    ]
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
