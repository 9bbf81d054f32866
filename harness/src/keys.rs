//! The keys under a prefix, for the tools that clean up after themselves on a shared Redis
//! (`REDIS_URL`) and for the benchmark's memory figures.

/// Every key matching `pattern`, with `SCAN` (never `KEYS`, which blocks a shared server).
pub fn scan(conn: &mut redis::Connection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Deletes every key under `prefix` (`<prefix>:*`), synchronously, so that memory figures taken
/// afterwards are settled.
pub fn delete_prefix(conn: &mut redis::Connection, prefix: &str) -> redis::RedisResult<()> {
    let keys = scan(conn, &format!("{prefix}:*"))?;
    for chunk in keys.chunks(1000) {
        redis::cmd("DEL").arg(chunk).query::<()>(conn)?;
    }
    Ok(())
}
