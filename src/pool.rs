//! Blocking connections to Redis with timeouts, and the r2d2 pool that serves mempool calls.
//!
//! redis-rs ships an r2d2 manager, but it connects without timeouts and r2d2 would `PING` on
//! every checkout. Ours sets connect/read/write timeouts, names each connection (so `CLIENT
//! LIST` shows which node and role it belongs to), and is never tested on checkout: instead a
//! connection that saw an I/O error or a timeout is marked broken and thrown away, because a
//! late reply could otherwise be read as the answer to the next command.

use std::time::{Duration, Instant};

use redis::ConnectionLike;

use crate::Error;

/// A connection plus the knowledge of whether it can still be trusted.
pub(crate) struct RedisConn {
    pub conn: redis::Connection,
    pub broken: bool,
}

impl RedisConn {
    /// Opens a named connection, all of it — TCP connect, handshake, naming — within
    /// `connect_timeout`, then sets `io_timeout` for the commands that follow.
    pub fn open(
        target: &Target,
        connect_timeout: Duration,
        io_timeout: Duration,
        name: &str,
    ) -> redis::RedisResult<RedisConn> {
        let deadline = Instant::now() + connect_timeout;
        let conn = match target {
            // redis-rs applies its timeout to the TCP connect and then to each reply of its
            // handshake (AUTH, SELECT) separately, so it can take about three times what it is
            // given; a third keeps the whole inside our budget.
            Target::Direct(client) => client.get_connection_with_timeout(connect_timeout / 3)?,
            #[cfg(feature = "sentinel")]
            Target::Sentinel(sentinel) => sentinel.connect_primary(deadline)?,
            #[cfg(feature = "cluster")]
            Target::Cluster(cluster) => cluster.connect_owner(deadline)?,
        };
        let mut conn = RedisConn {
            conn,
            broken: false,
        };
        conn.set_timeouts(left(deadline)?)?;
        // Naming is a courtesy to operators; a server or ACL that refuses it must not stop us.
        if let Err(e) = conn.run::<()>(redis::cmd("CLIENT").arg("SETNAME").arg(name)) {
            if Error::poisons_connection(&e) {
                return Err(e);
            }
            log::debug!(target: crate::LOG_TARGET, "client setname refused: {e}");
        }
        conn.set_timeouts(io_timeout)?;
        Ok(conn)
    }

    fn set_timeouts(&mut self, timeout: Duration) -> redis::RedisResult<()> {
        self.conn.set_read_timeout(Some(timeout))?;
        self.conn.set_write_timeout(Some(timeout))
    }

    /// Runs one command, marking the connection broken if the link failed.
    pub fn run<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let result = cmd.query(&mut self.conn);
        self.note(result)
    }

    /// Runs a script invocation (EVALSHA, loading the script on NOSCRIPT).
    pub fn invoke(
        &mut self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<redis::Value> {
        let result = invocation.invoke(&mut self.conn);
        self.note(result)
    }

    /// Runs a pipeline as one round trip.
    pub fn run_pipeline<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        let result = pipe.query(&mut self.conn);
        self.note(result)
    }

    fn note<T>(&mut self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result {
            self.note_error(e);
        }
        result
    }

    /// Marks the connection broken if `err` (also one read from inside a pipeline's replies)
    /// means it cannot be trusted or used any more.
    pub fn note_error(&mut self, err: &redis::RedisError) {
        if Error::poisons_connection(err) {
            self.broken = true;
        }
    }

    /// Whether the connection must be discarded.
    pub fn is_broken(&self) -> bool {
        self.broken || !self.conn.is_open()
    }

    /// Sets the read timeout for the next commands (the lease thread shortens it so that a
    /// renewal never blocks past the local lease deadline).
    pub fn set_read_timeout(&mut self, timeout: Duration) -> redis::RedisResult<()> {
        let result = self
            .conn
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        self.note(result)
    }
}

/// The time left before `deadline`, or a timeout error if none is.
fn left(deadline: Instant) -> redis::RedisResult<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timeout spent before the connection was ready",
        )
        .into());
    }
    Ok(left)
}

/// Where connections go: one fixed server, the primary the sentinels name at the moment of
/// connecting, or the cluster primary that owns the mempool's slot at that moment. Every
/// connection of a mempool — pooled, lease, wake, events — is opened from it by
/// [`RedisConn::open`].
#[derive(Clone)]
pub(crate) enum Target {
    Direct(redis::Client),
    #[cfg(feature = "sentinel")]
    Sentinel(SentinelTarget),
    #[cfg(feature = "cluster")]
    Cluster(ClusterTarget),
}

impl Target {
    /// The target of `config`: its URL, its sentinels, or its cluster.
    pub fn of(config: &crate::Config) -> redis::RedisResult<Target> {
        #[cfg(feature = "cluster")]
        if let Some(nodes) = &config.cluster {
            return Ok(Target::Cluster(ClusterTarget::new(config, nodes)?));
        }
        #[cfg(feature = "sentinel")]
        if let Some(settings) = &config.sentinel {
            return Ok(Target::Sentinel(SentinelTarget::new(config, settings)?));
        }
        client(config).map(Target::Direct)
    }
}

/// The sentinels to ask, and how to reach the node they name.
#[cfg(feature = "sentinel")]
#[derive(Clone)]
pub(crate) struct SentinelTarget {
    /// Each sentinel's client and its address without credentials (for messages).
    sentinels: Vec<(redis::Client, String)>,
    master_name: String,
    /// The data nodes' credentials, database and protocol; the address is the sentinels' answer.
    node: redis::ConnectionInfo,
}

#[cfg(feature = "sentinel")]
impl SentinelTarget {
    fn new(
        config: &crate::Config,
        settings: &crate::config::SentinelSettings,
    ) -> redis::RedisResult<SentinelTarget> {
        let without_lib_name = |url: &str| -> redis::RedisResult<redis::ConnectionInfo> {
            let info = redis::Client::open(url)?.get_connection_info().clone();
            let settings = info.redis_settings().clone().set_skip_set_lib_name();
            Ok(info.set_redis_settings(settings))
        };
        let sentinels = settings
            .sentinels
            .iter()
            .map(|addr| {
                let info = without_lib_name(&crate::config::sentinel_url(addr))?;
                let label = info.addr().to_string();
                Ok((redis::Client::open(info)?, label))
            })
            .collect::<redis::RedisResult<Vec<_>>>()?;
        let node = node_info(&config.url)?;
        Ok(SentinelTarget {
            sentinels,
            master_name: settings.master_name.clone(),
            node,
        })
    }

    /// Asks the sentinels in turn for the primary and connects to it, all before `deadline`.
    /// Each sentinel gets an equal share of the time left, keeping one share for the primary,
    /// so one hung sentinel cannot spend the whole budget. A sentinel may name a node that is
    /// down or no longer primary (it has not noticed the failover yet): the next one is asked.
    fn connect_primary(&self, deadline: Instant) -> redis::RedisResult<redis::Connection> {
        let mut errors = Vec::new();
        let n = self.sentinels.len();
        for (i, (sentinel, label)) in self.sentinels.iter().enumerate() {
            let share = left(deadline)? / (n - i + 1) as u32;
            let primary = match self.ask(sentinel, share) {
                Ok(addr) => addr,
                Err(e) => {
                    errors.push(format!("sentinel {label}: {e}"));
                    continue;
                }
            };
            match self.connect_node(&primary, deadline) {
                Ok(conn) => return Ok(conn),
                // Refused credentials or a missing permission (ROLE): the same at every
                // sentinel's answer, and not a reason to wait for a failover.
                Err(e) if matches!(Error::from_redis(e.clone()), Error::Auth(_)) => return Err(e),
                Err(e) => errors.push(format!(
                    "primary {}:{} named by sentinel {label}: {e}",
                    primary.0, primary.1
                )),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!(
                "no primary for {:?} reachable through the sentinels ({})",
                self.master_name,
                errors.join("; ")
            ),
        )
        .into())
    }

    /// `SENTINEL get-master-addr-by-name`, within `budget`.
    fn ask(&self, sentinel: &redis::Client, budget: Duration) -> redis::RedisResult<(String, u16)> {
        let deadline = Instant::now() + budget;
        let mut conn = sentinel.get_connection_with_timeout(budget / 3)?;
        let timeout = left(deadline)?;
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query(&mut conn)?;
        reply.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("does not know master {:?}", self.master_name),
            )
            .into()
        })
    }

    /// Connects to `addr` with the nodes' credentials and checks that it is the primary.
    fn connect_node(
        &self,
        addr: &(String, u16),
        deadline: Instant,
    ) -> redis::RedisResult<redis::Connection> {
        let mut conn = connect_at(&self.node, addr, deadline)?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn)?;
        match role.first() {
            Some(redis::Value::BulkString(r)) if r == b"master" => Ok(conn),
            Some(redis::Value::SimpleString(r)) if r == "master" => Ok(conn),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the node is not the primary (ROLE), the sentinel has not seen the failover yet",
            )
            .into()),
        }
    }
}

/// The nodes' connection settings from the url of a Sentinel or Cluster config, which carries
/// only credentials and database (none given: no credentials, database 0), without redis-rs's
/// `CLIENT SETINFO` handshake; the address is filled in per connection.
#[cfg(any(feature = "sentinel", feature = "cluster"))]
fn node_info(url: &str) -> redis::RedisResult<redis::ConnectionInfo> {
    let url = if url.is_empty() {
        "redis://127.0.0.1"
    } else {
        url
    };
    let info = redis::Client::open(url)?.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    Ok(info.set_redis_settings(settings))
}

/// Connects to `addr` with the nodes' settings `node`, the whole before `deadline`.
#[cfg(any(feature = "sentinel", feature = "cluster"))]
fn connect_at(
    node: &redis::ConnectionInfo,
    addr: &(String, u16),
    deadline: Instant,
) -> redis::RedisResult<redis::Connection> {
    let info = node
        .clone()
        .set_addr(redis::ConnectionAddr::Tcp(addr.0.clone(), addr.1));
    // A third: see `RedisConn::open`.
    let conn = redis::Client::open(info)?.get_connection_with_timeout(left(deadline)? / 3)?;
    let timeout = left(deadline)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// The seed nodes of a Redis Cluster, and the slot whose owner every connection goes to.
#[cfg(feature = "cluster")]
#[derive(Clone)]
pub(crate) struct ClusterTarget {
    /// `(host, port)` of each seed node.
    seeds: Vec<(String, u16)>,
    /// The slot of the key prefix's hash tag: every key of the mempool is in it.
    slot: u16,
    /// The nodes' credentials and protocol; the address is the owner's.
    node: redis::ConnectionInfo,
}

#[cfg(feature = "cluster")]
impl ClusterTarget {
    fn new(config: &crate::Config, seeds: &[String]) -> redis::RedisResult<ClusterTarget> {
        let seeds = seeds
            .iter()
            .map(|addr| {
                crate::config::parse_host_port(addr).ok_or_else(|| {
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
    fn connect_owner(&self, deadline: Instant) -> redis::RedisResult<redis::Connection> {
        let mut errors = Vec::new();
        let n = self.seeds.len();
        for (i, seed) in self.seeds.iter().enumerate() {
            let share = left(deadline)? / (n - i + 1) as u32;
            let (conn, owner) = match self.ask(seed, Instant::now() + share) {
                Ok(answer) => answer,
                // The nodes share one set of credentials: the others would refuse them too.
                Err(e) if matches!(Error::from_redis(e.clone()), Error::Auth(_)) => return Err(e),
                Err(e) => {
                    errors.push(format!("node {}:{}: {e}", seed.0, seed.1));
                    continue;
                }
            };
            if owner == *seed {
                let timeout = left(deadline)?;
                conn.set_read_timeout(Some(timeout))?;
                conn.set_write_timeout(Some(timeout))?;
                return Ok(conn);
            }
            drop(conn);
            match connect_at(&self.node, &owner, deadline) {
                Ok(conn) => return Ok(conn),
                Err(e) if matches!(Error::from_redis(e.clone()), Error::Auth(_)) => return Err(e),
                Err(e) => errors.push(format!(
                    "owner {}:{} named by node {}:{}: {e}",
                    owner.0, owner.1, seed.0, seed.1
                )),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!(
                "no owner of hash slot {} reachable through the cluster nodes ({})",
                self.slot,
                errors.join("; ")
            ),
        )
        .into())
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
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "hash slot {} has no primary (is the cluster formed?)",
                    self.slot
                ),
            ))
        })?;
        Ok((conn, owner))
    }
}

/// The primary of `slot` in a `CLUSTER SLOTS` reply: entries `[first, last, [host, port, id,
/// …] (the primary), replicas…]`. A node whose address the answering node does not know
/// reports an empty host (or nil), meaning "the one you asked", `asked_host`; `?` (unknown
/// hostname) counts as no answer.
#[cfg(feature = "cluster")]
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

/// A client for the configured URL that skips redis-rs's `CLIENT SETINFO` handshake: two more
/// replies to wait for on every connect, which we do not need (connections are named with
/// `CLIENT SETNAME`). A `rediss://` URL gets the configured CA and client certificate.
pub(crate) fn client(config: &crate::Config) -> redis::RedisResult<redis::Client> {
    let info = redis::Client::open(config.url.as_str())?
        .get_connection_info()
        .clone();
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let info = info.set_redis_settings(settings);
    #[cfg(feature = "tls")]
    if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        // redis-rs asks rustls for the process's default crypto provider, which rustls picks by
        // itself only when exactly one is compiled in; a host may bring another. Install ours
        // unless the host installed one first (then this does nothing).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificates = config.tls_certificates().map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "tls", e.to_string()))
        })?;
        return redis::Client::build_with_tls(info, certificates);
    }
    redis::Client::open(info)
}

/// Creates pooled connections for r2d2.
pub(crate) struct Manager {
    pub target: Target,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub name: String,
}

impl r2d2::ManageConnection for Manager {
    type Connection = RedisConn;
    type Error = redis::RedisError;

    fn connect(&self) -> Result<RedisConn, redis::RedisError> {
        RedisConn::open(
            &self.target,
            self.connect_timeout,
            self.io_timeout,
            &self.name,
        )
    }

    /// Only used if someone turns `test_on_check_out` back on; we do not.
    fn is_valid(&self, conn: &mut RedisConn) -> Result<(), redis::RedisError> {
        conn.run::<()>(&redis::cmd("PING"))
    }

    fn has_broken(&self, conn: &mut RedisConn) -> bool {
        conn.is_broken() || !conn.conn.is_open()
    }
}

/// r2d2 logs every failed connection attempt at error level from its worker threads; while Redis
/// is down that is one line per attempt. We report the outage through the failing calls instead.
#[derive(Debug)]
pub(crate) struct QuietErrors;

impl r2d2::HandleError<redis::RedisError> for QuietErrors {
    fn handle_error(&self, error: redis::RedisError) {
        log::debug!(target: crate::LOG_TARGET, "pool could not open a connection: {error}");
    }
}

pub(crate) type Pool = r2d2::Pool<Manager>;

/// Builds the pool, waiting (up to the connect timeout) for the first connections.
pub(crate) fn build(target: Target, config: &crate::Config, name: String) -> Result<Pool, Error> {
    let manager = Manager {
        target,
        connect_timeout: config.connect_timeout,
        io_timeout: config.command_timeout,
        name,
    };
    r2d2::Pool::builder()
        .max_size(config.pool_size)
        .min_idle(Some(config.pool_size.min(2)))
        .test_on_check_out(false)
        .connection_timeout(config.connect_timeout)
        .error_handler(Box::new(QuietErrors))
        .build(manager)
        .map_err(|e| Error::Unavailable(format!("{} ({})", e, config.redacted_url())))
}

#[cfg(all(test, feature = "cluster"))]
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
