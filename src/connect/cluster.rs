//! Redis Cluster (feature `cluster`): a mempool's keys share one hash slot (its prefix carries a
//! hash tag), so every connection goes to the primary that owns that slot, found with `CLUSTER
//! SLOTS` on each new connection. redis-rs's cluster client routes per command without our
//! timeouts; we need no routing.

use std::time::Instant;

use super::addr::parse_host_port;
use super::{connect_at, io_error, left, node_info, refused_access, set_io_timeouts};

/// The seed nodes of a Redis Cluster, and the slot whose owner every connection goes to.
#[derive(Clone)]
pub(crate) struct ClusterTarget {
    /// `(host, port)` of each seed node.
    seeds: Vec<(String, u16)>,
    /// The slot of the key prefix's hash tag: every key of the mempool is in it.
    slot: u16,
    /// The nodes' credentials and protocol; the address is the owner's.
    node: redis::ConnectionInfo,
}

impl ClusterTarget {
    pub(super) fn new(
        config: &crate::Config,
        seeds: &[String],
    ) -> redis::RedisResult<ClusterTarget> {
        let seeds = seeds
            .iter()
            .map(|addr| {
                parse_host_port(addr).ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "cluster node is not host:port",
                    ))
                })
            })
            .collect::<redis::RedisResult<Vec<_>>>()?;
        Ok(ClusterTarget {
            seeds,
            slot: crate::keys::slot(&config.key_prefix),
            node: node_info(&config.url)?,
        })
    }

    /// Asks the seeds in turn which primary owns the slot (`CLUSTER SLOTS`) and connects to it,
    /// all before `deadline`. Like Sentinel, each seed gets an equal share of the time left,
    /// keeping one share for the owner, so one hung seed cannot spend the whole budget. When
    /// the seed asked is the owner (one in as many as there are primaries), its connection is
    /// kept. A seed with a stale view sends us to a node that answers `MOVED`: that connection
    /// is then thrown away and the next one asks again.
    pub(super) fn connect_owner(&self, deadline: Instant) -> redis::RedisResult<redis::Connection> {
        let mut errors = Vec::new();
        let n = self.seeds.len();
        for (i, seed) in self.seeds.iter().enumerate() {
            let share = left(deadline)? / (n - i + 1) as u32;
            let (conn, owner) = match self.ask(seed, Instant::now() + share) {
                Ok(answer) => answer,
                // The nodes share one set of credentials: the others would refuse them too.
                Err(e) if refused_access(&e) => return Err(e),
                Err(e) => {
                    errors.push(format!("node {}:{}: {e}", seed.0, seed.1));
                    continue;
                }
            };
            if owner == *seed {
                set_io_timeouts(&conn, left(deadline)?)?;
                return Ok(conn);
            }
            drop(conn);
            match connect_at(&self.node, &owner, deadline) {
                Ok(conn) => return Ok(conn),
                Err(e) if refused_access(&e) => return Err(e),
                Err(e) => errors.push(format!(
                    "owner {}:{} named by node {}:{}: {e}",
                    owner.0, owner.1, seed.0, seed.1
                )),
            }
        }
        Err(io_error(
            std::io::ErrorKind::NotConnected,
            format!(
                "no owner of hash slot {} reachable through the cluster nodes ({})",
                self.slot,
                errors.join("; ")
            ),
        ))
    }

    /// Connects to `seed` and reads from `CLUSTER SLOTS` the primary serving our slot.
    fn ask(
        &self,
        seed: &(String, u16),
        deadline: Instant,
    ) -> redis::RedisResult<(redis::Connection, (String, u16))> {
        let mut conn = connect_at(&self.node, seed, deadline)?;
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn)?;
        let owner = owner_of(&ranges, self.slot, &seed.0).ok_or_else(|| {
            io_error(
                std::io::ErrorKind::NotFound,
                format!(
                    "hash slot {} has no primary (is the cluster formed?)",
                    self.slot
                ),
            )
        })?;
        Ok((conn, owner))
    }
}

/// The primary of `slot` in a `CLUSTER SLOTS` reply: entries `[first, last, [host, port, id,
/// …] (the primary), replicas…]`. A node whose address the answering node does not know
/// reports an empty host (or nil), meaning "the one you asked", `asked_host`; `?` (unknown
/// hostname) counts as no answer.
fn owner_of(ranges: &[redis::Value], slot: u16, asked_host: &str) -> Option<(String, u16)> {
    use redis::Value;
    let int = |v: &Value| redis::from_redis_value_ref::<i64>(v).ok();
    ranges.iter().find_map(|range| {
        let Value::Array(range) = range else {
            return None;
        };
        let (first, last) = (int(range.first()?)?, int(range.get(1)?)?);
        if !(first..=last).contains(&i64::from(slot)) {
            return None;
        }
        let Value::Array(primary) = range.get(2)? else {
            return None;
        };
        let host = match primary.first()? {
            Value::Nil => String::new(),
            v => redis::from_redis_value_ref::<String>(v).ok()?,
        };
        let host = match host.as_str() {
            "" => asked_host.to_string(),
            "?" => return None,
            _ => host,
        };
        let port = u16::try_from(int(primary.get(1)?)?).ok()?;
        Some((host, port))
    })
}

#[cfg(test)]
mod tests {
    use super::owner_of;
    use redis::Value;

    fn range(first: i64, last: i64, host: Value, port: i64) -> Value {
        let primary = Value::Array(vec![
            host,
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ]);
        Value::Array(vec![Value::Int(first), Value::Int(last), primary])
    }

    fn text(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_owner_is_read_from_cluster_slots() {
        let ranges = [
            range(0, 5460, text("10.0.0.1"), 7000),
            range(5461, 10922, text(""), 7001),
            range(10923, 16383, text("?"), 7002),
        ];
        let owner = |slot| owner_of(&ranges, slot, "seed");
        assert_eq!(owner(0), Some(("10.0.0.1".to_string(), 7000)));
        assert_eq!(owner(5460), Some(("10.0.0.1".to_string(), 7000)));
        // An empty host means the node that was asked.
        assert_eq!(owner(5461), Some(("seed".to_string(), 7001)));
        assert_eq!(owner(16383), None);
        assert_eq!(owner_of(&ranges[..1], 9000, "seed"), None);
        let nil = [range(0, 16383, Value::Nil, 7003)];
        assert_eq!(owner_of(&nil, 1, "seed"), Some(("seed".to_string(), 7003)));
    }
}
