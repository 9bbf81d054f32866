//! Redis Sentinel (feature `sentinel`): every new connection asks the sentinels in turn for the
//! primary, within the connect budget, and checks with `ROLE` that the node it reaches is the
//! primary. redis-rs's sentinel client has no overall connect budget, so we do not use it.

use std::time::{Duration, Instant};

use super::addr::sentinel_url;
use super::{
    connect_at, connection_info, io_error, left, node_info, refused_access, set_io_timeouts,
};
use crate::config::SentinelSettings;

/// The sentinels to ask, and how to reach the node they name.
#[derive(Clone)]
pub(crate) struct SentinelTarget {
    /// Each sentinel's client and its address without credentials (for messages).
    sentinels: Vec<(redis::Client, String)>,
    master_name: String,
    /// The data nodes' credentials, database and protocol; the address is the sentinels' answer.
    node: redis::ConnectionInfo,
}

impl SentinelTarget {
    pub(super) fn new(
        config: &crate::Config,
        settings: &SentinelSettings,
    ) -> redis::RedisResult<SentinelTarget> {
        let sentinels = settings
            .sentinels
            .iter()
            .map(|addr| {
                let info = connection_info(&sentinel_url(addr))?;
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
    pub(super) fn connect_primary(
        &self,
        deadline: Instant,
    ) -> redis::RedisResult<redis::Connection> {
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
                Err(e) if refused_access(&e) => return Err(e),
                Err(e) => errors.push(format!(
                    "primary {}:{} named by sentinel {label}: {e}",
                    primary.0, primary.1
                )),
            }
        }
        Err(io_error(
            std::io::ErrorKind::NotConnected,
            format!(
                "no primary for {:?} reachable through the sentinels ({})",
                self.master_name,
                errors.join("; ")
            ),
        ))
    }

    /// `SENTINEL get-master-addr-by-name`, within `budget`.
    fn ask(&self, sentinel: &redis::Client, budget: Duration) -> redis::RedisResult<(String, u16)> {
        let deadline = Instant::now() + budget;
        let mut conn = sentinel.get_connection_with_timeout(budget / 3)?;
        set_io_timeouts(&conn, left(deadline)?)?;
        let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query(&mut conn)?;
        reply.ok_or_else(|| {
            io_error(
                std::io::ErrorKind::NotFound,
                format!("does not know master {:?}", self.master_name),
            )
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
            _ => Err(io_error(
                std::io::ErrorKind::NotConnected,
                "the node is not the primary (ROLE), the sentinel has not seen the failover yet",
            )),
        }
    }
}
