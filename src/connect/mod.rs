//! Every connection to Redis: opened with timeouts and a name, told apart when it can no longer
//! be trusted, and pooled for the mempool calls.
//!
//! redis-rs ships an r2d2 manager, but it connects without timeouts and r2d2 would `PING` on
//! every checkout. Ours sets connect/read/write timeouts, names each connection (so `CLIENT
//! LIST` shows which node and role it belongs to), and is never tested on checkout: instead a
//! connection that saw an I/O error or a timeout is marked broken and thrown away, because a
//! late reply could otherwise be read as the answer to the next command.
//!
//! Where a connection goes is its [`Target`]: one server (this file), the primary the sentinels
//! name (`sentinel.rs`) or the cluster node that owns the mempool's slot (`cluster.rs`). TLS
//! settings are read in `tls.rs`, addresses parsed and redacted in `addr.rs`, and the r2d2 pool
//! built in `pool.rs`.

use std::time::{Duration, Instant};

use redis::ConnectionLike;

use crate::Error;

pub(crate) mod addr;
#[cfg(feature = "cluster")]
mod cluster;
mod pool;
#[cfg(feature = "sentinel")]
mod sentinel;
#[cfg(feature = "tls")]
pub(crate) mod tls;

pub(crate) use pool::{build_pool, Manager, Pool};

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
        set_io_timeouts(&self.conn, timeout)
    }

    /// Runs one command, marking the connection broken if the link failed.
    pub fn run<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let result = cmd.query(&mut self.conn);
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
        return Err(io_error(
            std::io::ErrorKind::TimedOut,
            "connect timeout spent before the connection was ready",
        ));
    }
    Ok(left)
}

/// A failure to connect of our own making (no node found, none answered), as an I/O error:
/// what redis-rs reports for the same situation, so it is sorted (transient, poisons the
/// connection) like one.
fn io_error(kind: std::io::ErrorKind, message: impl Into<String>) -> redis::RedisError {
    std::io::Error::new(kind, message.into()).into()
}

/// Whether `err` is a refusal of the credentials or of a permission: the same answer from every
/// node, so asking the next sentinel or seed is no use.
#[cfg(any(feature = "sentinel", feature = "cluster"))]
fn refused_access(err: &redis::RedisError) -> bool {
    matches!(Error::from_redis(err.clone()), Error::Auth(_))
}

/// What a connection is for. Each connection is named after it, as `dolos-redis:<node>:<role>`
/// (`CLIENT SETNAME`), so `CLIENT LIST` tells every node's connections apart; this is the one
/// place that name is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnRole {
    /// The direct connection `open` checks the server with.
    Open,
    /// A pooled connection for mempool calls.
    Pool,
    /// The lease thread's.
    Lease,
    /// The wake thread's subscription to the lock's channel.
    Wake,
    /// The event reader's.
    Events,
}

impl ConnRole {
    /// The connection name of this role for node `node_id`.
    pub fn name(self, node_id: &str) -> String {
        let role = match self {
            ConnRole::Open => "open",
            ConnRole::Pool => "pool",
            ConnRole::Lease => "lease",
            ConnRole::Wake => "wake",
            ConnRole::Events => "events",
        };
        format!("dolos-redis:{node_id}:{role}")
    }
}

/// Sets the read and write timeouts of a raw connection.
fn set_io_timeouts(conn: &redis::Connection, timeout: Duration) -> redis::RedisResult<()> {
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))
}

/// Where connections go: one fixed server, the primary the sentinels name at the moment of
/// connecting, or the cluster primary that owns the mempool's slot at that moment. Every
/// connection of a mempool — pooled, lease, wake, events — is opened from it by
/// [`RedisConn::open`].
#[derive(Clone)]
pub(crate) enum Target {
    Direct(redis::Client),
    #[cfg(feature = "sentinel")]
    Sentinel(sentinel::SentinelTarget),
    #[cfg(feature = "cluster")]
    Cluster(cluster::ClusterTarget),
}

impl Target {
    /// The target of `config`: its URL, its sentinels, or its cluster.
    pub fn of(config: &crate::Config) -> redis::RedisResult<Target> {
        #[cfg(feature = "cluster")]
        if let Some(nodes) = &config.cluster {
            return Ok(Target::Cluster(cluster::ClusterTarget::new(config, nodes)?));
        }
        #[cfg(feature = "sentinel")]
        if let Some(settings) = &config.sentinel {
            return Ok(Target::Sentinel(sentinel::SentinelTarget::new(
                config, settings,
            )?));
        }
        client(config).map(Target::Direct)
    }
}

/// The connection settings of `url` without redis-rs's `CLIENT SETINFO` handshake: two more
/// replies to wait for on every connect, which we do not need (connections are named with
/// `CLIENT SETNAME`).
fn connection_info(url: &str) -> redis::RedisResult<redis::ConnectionInfo> {
    let info = redis::Client::open(url)?.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    Ok(info.set_redis_settings(settings))
}

/// A client for the configured URL (see [`connection_info`]). A `rediss://` URL gets the
/// configured CA and client certificate.
fn client(config: &crate::Config) -> redis::RedisResult<redis::Client> {
    let info = connection_info(&config.url)?;
    #[cfg(feature = "tls")]
    if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return tls::client(config, info);
    }
    redis::Client::open(info)
}

/// The nodes' connection settings from the url of a Sentinel or Cluster config, which carries
/// only credentials and database (none given: no credentials, database 0); the address is
/// filled in per connection.
#[cfg(any(feature = "sentinel", feature = "cluster"))]
fn node_info(url: &str) -> redis::RedisResult<redis::ConnectionInfo> {
    connection_info(if url.is_empty() {
        "redis://127.0.0.1"
    } else {
        url
    })
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
    set_io_timeouts(&conn, left(deadline)?)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_named_after_node_and_role() {
        // Operators grep `CLIENT LIST` for these, and the tests match them.
        let roles = [
            (ConnRole::Open, "open"),
            (ConnRole::Pool, "pool"),
            (ConnRole::Lease, "lease"),
            (ConnRole::Wake, "wake"),
            (ConnRole::Events, "events"),
        ];
        for (role, word) in roles {
            assert_eq!(role.name("n1"), format!("dolos-redis:n1:{word}"));
        }
    }
}
