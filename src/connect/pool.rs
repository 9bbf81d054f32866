//! The r2d2 pool that serves mempool calls, with our own connection manager: connections open
//! through [`RedisConn::open`] (timeouts, a name), are never tested on checkout, and are thrown
//! away once broken.

use std::time::Duration;

use super::{RedisConn, Target};
use crate::Error;

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
        conn.is_broken()
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
pub(crate) fn build_pool(
    target: Target,
    config: &crate::Config,
    name: String,
) -> Result<Pool, Error> {
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
        .map_err(|e| {
            Error::Unavailable(format!("{} ({})", e, config.redacted_url()).into()).with_source(e)
        })
}
