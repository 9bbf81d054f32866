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
        client: &redis::Client,
        connect_timeout: Duration,
        io_timeout: Duration,
        name: &str,
    ) -> redis::RedisResult<RedisConn> {
        let deadline = Instant::now() + connect_timeout;
        // redis-rs applies its timeout to the TCP connect and then to each reply of its
        // handshake (AUTH, SELECT) separately, so it can take about three times what it is
        // given; a third keeps the whole inside our budget.
        let conn = client.get_connection_with_timeout(connect_timeout / 3)?;
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
            if Error::poisons_connection(e) {
                self.broken = true;
            }
        }
        result
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
    pub client: redis::Client,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub name: String,
}

impl r2d2::ManageConnection for Manager {
    type Connection = RedisConn;
    type Error = redis::RedisError;

    fn connect(&self) -> Result<RedisConn, redis::RedisError> {
        RedisConn::open(
            &self.client,
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
pub(crate) fn build(
    client: redis::Client,
    config: &crate::Config,
    name: String,
) -> Result<Pool, Error> {
    let manager = Manager {
        client,
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
