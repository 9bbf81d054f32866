//! The keys under a prefix, for the tools that clean up after themselves on a shared Redis
//! (`REDIS_URL`) and for the benchmark's memory figures.

/// Every key matching `pattern`, with `SCAN` (never `KEYS`, which blocks a shared server).
pub use dolos_redis_testkit::scan_keys as scan;

/// Deletes every key under `prefix` (`<prefix>:*`), synchronously, so that memory figures taken
/// afterwards are settled.
pub fn delete_prefix(conn: &mut redis::Connection, prefix: &str) -> redis::RedisResult<()> {
    let keys = scan(conn, &format!("{prefix}:*"))?;
    for chunk in keys.chunks(1000) {
        redis::cmd("DEL").arg(chunk).query::<()>(conn)?;
    }
    Ok(())
}
