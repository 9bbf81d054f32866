//! The server-side scripts, one `.lua` file per operation in `src/scripts/`, and the decoding of
//! their replies.
//!
//! Each script is `prelude.lua` followed by its own file. Every script receives all keys of the
//! mempool in the order of [`Keys::all`], so the prelude names them once. redis-rs sends
//! `EVALSHA` and loads a script on `NOSCRIPT` by itself; [`Scripts::load_all`] loads them when the
//! mempool opens so that the steady state is one round trip per call.

use redis::{Script, Value};

use crate::keys::Keys;
use crate::pool::RedisConn;
use crate::types::{BlockHash, ChainPoint, EraCbor, MempoolTx, MempoolTxStage, TxHash};
use crate::Error;

/// A script and its source (redis-rs keeps the source private, and `SCRIPT LOAD` needs it).
pub(crate) struct Lua {
    script: Script,
    source: &'static str,
    /// Whether the script writes: only those wait for replicas ([`Config::wait_replicas`]).
    ///
    /// [`Config::wait_replicas`]: crate::Config::wait_replicas
    writes: bool,
}

impl Lua {
    fn new(source: &'static str) -> Lua {
        Lua {
            script: Script::new(source),
            source,
            writes: false,
        }
    }

    fn writes(mut self) -> Lua {
        self.writes = true;
        self
    }
}

/// `prelude.lua`, then the named files in order (a shared fragment such as `undo.lua` before the
/// script that calls it).
macro_rules! lua {
    ($($file:literal),+) => {
        Lua::new(concat!(
            include_str!("scripts/prelude.lua"),
            $("\n", include_str!(concat!("scripts/", $file))),+
        ))
    };
}

/// All scripts, hashed once.
pub(crate) struct Scripts {
    pub receive: Lua,
    pub has_pending: Lua,
    pub peek: Lua,
    pub mark_inflight: Lua,
    pub mark_acknowledged: Lua,
    pub find_inflight: Lua,
    pub confirm: Lua,
    pub rollback_to: Lua,
    pub applied_points: Lua,
    pub check_status: Lua,
    pub dump_finalized: Lua,
    pub watcher_info: Lua,
    pub acquire: Lua,
    pub renew: Lua,
    pub release: Lua,
    pub stats: Lua,
    pub reset_lock: Lua,
    /// Run once at open, not preloaded.
    pub check_access: Lua,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            receive: lua!("receive.lua").writes(),
            has_pending: lua!("has_pending.lua"),
            peek: lua!("peek.lua"),
            mark_inflight: lua!("mark_inflight.lua").writes(),
            mark_acknowledged: lua!("mark_acknowledged.lua").writes(),
            find_inflight: lua!("find_inflight.lua"),
            confirm: lua!("undo.lua", "confirm.lua").writes(),
            rollback_to: lua!("undo.lua", "rollback_to.lua").writes(),
            applied_points: lua!("applied_points.lua"),
            check_status: lua!("check_status.lua"),
            dump_finalized: lua!("dump_finalized.lua"),
            watcher_info: lua!("watcher_info.lua"),
            acquire: lua!("acquire.lua").writes(),
            renew: lua!("renew.lua").writes(),
            release: lua!("release.lua").writes(),
            stats: lua!("stats.lua"),
            reset_lock: lua!("reset_lock.lua").writes(),
            check_access: lua!("check_access.lua"),
        }
    }

    fn all(&self) -> [&Lua; 17] {
        [
            &self.receive,
            &self.has_pending,
            &self.peek,
            &self.mark_inflight,
            &self.mark_acknowledged,
            &self.find_inflight,
            &self.confirm,
            &self.rollback_to,
            &self.applied_points,
            &self.check_status,
            &self.dump_finalized,
            &self.watcher_info,
            &self.acquire,
            &self.renew,
            &self.release,
            &self.stats,
            &self.reset_lock,
        ]
    }

    /// `SCRIPT LOAD`s every script. One command each (not a pipeline): a pipeline's error
    /// carries no error code, and the first error here is often the telling one (`NOAUTH`).
    pub fn load_all(&self, conn: &mut RedisConn) -> Result<(), Error> {
        for lua in self.all() {
            conn.run::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(lua.source))
                .map_err(Error::from_redis)?;
        }
        Ok(())
    }
}

/// `WAIT` after writing scripts: how many replicas, and how long at most.
pub(crate) type Wait = Option<(usize, std::time::Duration)>;

/// Runs `lua` with every key of the mempool, the arguments every script takes (`event_history`:
/// how many events the event stream keeps) and `args`; one `EVALSHA`. With `wait` and a script
/// that writes, `WAIT` goes in the same round trip and too few replicas is
/// [`Error::NotReplicated`].
pub(crate) fn run(
    conn: &mut RedisConn,
    lua: &Lua,
    keys: &Keys,
    event_history: usize,
    args: &[&[u8]],
    wait: Wait,
) -> Result<Value, Error> {
    if let Some((replicas, timeout)) = wait.filter(|_| lua.writes) {
        return run_and_wait(conn, lua, keys, event_history, args, replicas, timeout);
    }
    let mut inv = lua.script.prepare_invoke();
    for key in keys.all() {
        inv.key(key);
    }
    inv.arg(event_history);
    for arg in args {
        inv.arg(*arg);
    }
    match conn.invoke(&inv) {
        Ok(value) => Ok(value),
        Err(e) if e.code() == Some("WRONGTYPE") && !conn.is_broken() => {
            Err(name_the_wrong_key(conn, keys).unwrap_or_else(|| Error::from_redis(e)))
        }
        Err(e) => Err(Error::from_redis(e)),
    }
}

/// `EVALSHA` and `WAIT` pipelined. redis-rs loads a script on `NOSCRIPT` only for a lone
/// invocation, so this does it here: a `NOSCRIPT` means the script did not run, and the pair is
/// sent again once the script is loaded (after a restart or a failover to a node that never
/// saw it).
fn run_and_wait(
    conn: &mut RedisConn,
    lua: &Lua,
    keys: &Keys,
    event_history: usize,
    args: &[&[u8]],
    replicas: usize,
    timeout: std::time::Duration,
) -> Result<Value, Error> {
    let all = keys.all();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let cmd = pipe
        .cmd("EVALSHA")
        .arg(lua.script.get_hash())
        .arg(all.len())
        .arg(&all[..])
        .arg(event_history);
    for arg in args {
        cmd.arg(*arg);
    }
    // WAIT reads 0 as "forever".
    let ms = (timeout.as_millis() as u64).max(1);
    pipe.cmd("WAIT").arg(replicas).arg(ms);
    let mut loaded = false;
    loop {
        let replies: Vec<Value> = conn.run_pipeline(&pipe).map_err(Error::from_redis)?;
        let [reply, acked]: [Value; 2] = replies
            .try_into()
            .map_err(|v: Vec<Value>| Error::UnexpectedReply(format!("evalsha+wait: {v:?}")))?;
        let reply = match reply {
            Value::ServerError(e) => {
                let e = redis::RedisError::from(e);
                conn.note_error(&e);
                if e.code() == Some("NOSCRIPT") && !loaded {
                    conn.run::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(lua.source))
                        .map_err(Error::from_redis)?;
                    loaded = true;
                    continue;
                }
                if e.code() == Some("WRONGTYPE") && !conn.is_broken() {
                    return Err(
                        name_the_wrong_key(conn, keys).unwrap_or_else(|| Error::from_redis(e))
                    );
                }
                return Err(Error::from_redis(e));
            }
            v => v,
        };
        let acked = match acked {
            Value::ServerError(e) => {
                let e = redis::RedisError::from(e);
                conn.note_error(&e);
                return Err(Error::from_redis(e));
            }
            v => uint(&v, "wait")? as usize,
        };
        if acked < replicas {
            return Err(Error::NotReplicated {
                acked,
                wanted: replicas,
            });
        }
        return Ok(reply);
    }
}

/// A script failed with a bare `WRONGTYPE` (scripts check types only where a partial write
/// could follow, see `prelude.lua`): find the key at fault, at the cost of one more round trip
/// on this error path only.
fn name_the_wrong_key(conn: &mut RedisConn, keys: &Keys) -> Option<Error> {
    let typed = keys.typed();
    let mut pipe = redis::pipe();
    for (key, _) in &typed {
        pipe.cmd("TYPE").arg(*key);
    }
    let types: Vec<String> = conn.run_pipeline(&pipe).ok()?;
    typed
        .iter()
        .zip(types)
        .find(|((_, expected), actual)| {
            expected.is_some_and(|expected| actual != "none" && actual != expected)
        })
        .map(|((key, _), _)| Error::WrongType {
            key: key.to_string(),
        })
}

// ---- reply decoding: never panics, every surprise is an `UnexpectedReply` ----

fn unexpected(what: &str, v: &Value) -> Error {
    Error::UnexpectedReply(format!("{what}: {v:?}"))
}

pub(crate) fn array(v: Value, what: &str) -> Result<Vec<Value>, Error> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(unexpected(what, &other)),
    }
}

pub(crate) fn int(v: &Value, what: &str) -> Result<i64, Error> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unexpected(what, v)),
        other => Err(unexpected(what, other)),
    }
}

pub(crate) fn uint(v: &Value, what: &str) -> Result<u64, Error> {
    let n = int(v, what)?;
    u64::try_from(n).map_err(|_| unexpected(what, v))
}

pub(crate) fn count(v: &Value, what: &str) -> Result<u32, Error> {
    let n = int(v, what)?;
    u32::try_from(n).map_err(|_| unexpected(what, v))
}

pub(crate) fn text(v: &Value, what: &str) -> Result<String, Error> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| unexpected(what, v)),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Okay => Ok("OK".to_string()),
        other => Err(unexpected(what, other)),
    }
}

/// `Nil` (Lua `false`) as `None`.
pub(crate) fn opt_text(v: &Value, what: &str) -> Result<Option<String>, Error> {
    match v {
        Value::Nil => Ok(None),
        other => text(other, what).map(Some),
    }
}

fn bytes(v: Value, what: &str) -> Result<Vec<u8>, Error> {
    match v {
        Value::BulkString(b) => Ok(b),
        other => Err(unexpected(what, &other)),
    }
}

/// Encodes a chain point for storage: `origin`, `<slot>` or `<slot>:<hash hex>`.
pub(crate) fn encode_point(p: &ChainPoint) -> String {
    match p {
        ChainPoint::Origin => "origin".to_string(),
        ChainPoint::Slot(s) => s.to_string(),
        ChainPoint::Specific(s, h) => format!("{s}:{h}"),
    }
}

/// The entry of a block in the applied chain (`P:chain`): the slot as 20 digits, so that slots
/// compare exactly as strings inside Lua, then `:<hash>` for a `Specific` point. `None` for
/// `Origin`, which names no block. [`decode_point`] reads it back.
pub(crate) fn chain_member(p: &ChainPoint) -> Option<String> {
    match p {
        ChainPoint::Origin => None,
        ChainPoint::Slot(s) => Some(format!("{s:020}")),
        ChainPoint::Specific(s, h) => Some(format!("{s:020}:{h}")),
    }
}

/// Decodes what [`encode_point`] (or [`chain_member`]) wrote; `""` is no point.
pub(crate) fn decode_point(s: &str, key: &str) -> Result<Option<ChainPoint>, Error> {
    let bad = || Error::Corrupt {
        key: key.to_string(),
        detail: format!("bad chain point {s:?}"),
    };
    if s.is_empty() {
        return Ok(None);
    }
    if s == "origin" {
        return Ok(Some(ChainPoint::Origin));
    }
    let (slot, hash) = match s.split_once(':') {
        Some((slot, hash)) => (slot, Some(hash)),
        None => (s, None),
    };
    let slot: u64 = slot.parse().map_err(|_| bad())?;
    Ok(Some(match hash {
        Some(h) => ChainPoint::Specific(slot, h.parse::<BlockHash>().map_err(|_| bad())?),
        None => ChainPoint::Slot(slot),
    }))
}

pub(crate) fn decode_stage(code: &str, key: &str) -> Result<MempoolTxStage, Error> {
    Ok(match code {
        "P" => MempoolTxStage::Pending,
        "R" => MempoolTxStage::Propagated,
        "A" => MempoolTxStage::Acknowledged,
        "C" => MempoolTxStage::Confirmed,
        "F" => MempoolTxStage::Finalized,
        "D" => MempoolTxStage::Dropped,
        other => {
            return Err(Error::Corrupt {
                key: key.to_string(),
                detail: format!("unknown stage {other:?}"),
            })
        }
    })
}

/// Decodes `{hash, stage, confirmations, misses, confirmed_at, era, body}` (see `tx_reply` in
/// `prelude.lua`).
pub(crate) fn decode_tx(v: Value, keys: &Keys) -> Result<MempoolTx, Error> {
    let items = array(v, "tx")?;
    let [hash, stage, c, m, at, era, body]: [Value; 7] = items
        .try_into()
        .map_err(|items: Vec<Value>| Error::UnexpectedReply(format!("tx: {items:?}")))?;
    let hash_text = text(&hash, "tx hash")?;
    let key = format!("{} {}", keys.txs, hash_text);
    let hash: TxHash = hash_text.parse().map_err(|_| Error::Corrupt {
        key: key.clone(),
        detail: "bad tx hash".into(),
    })?;
    let era = text(&era, "era")?;
    let era: u16 = era.parse().map_err(|_| Error::Corrupt {
        key: key.clone(),
        detail: format!("bad era {era:?}"),
    })?;
    Ok(MempoolTx {
        hash,
        payload: EraCbor(era, bytes(body, "payload")?),
        stage: decode_stage(&text(&stage, "stage")?, &key)?,
        confirmations: count(&c, "confirmations")?,
        non_confirmations: count(&m, "misses")?,
        confirmed_at: decode_point(&text(&at, "confirmed_at")?, &key)?,
    })
}

/// One entry of one of our streams (the finalized log, the events), whose ids are `<n>-0`.
pub(crate) struct StreamEntry {
    /// `n`: the log sequence or the event number.
    pub seq: u64,
    /// `<stream> <id>`, to name the entry in a `Corrupt` error.
    pub key: String,
    /// Field names and values, alternating.
    pub fields: Vec<Value>,
}

/// Splits a raw `XRANGE`/`XREAD` entry `[id, [field, value, ...]]` of `stream`.
pub(crate) fn stream_entry(v: Value, stream: &str) -> Result<StreamEntry, Error> {
    let items = array(v, "stream entry")?;
    let [id, fields]: [Value; 2] = items
        .try_into()
        .map_err(|v: Vec<Value>| Error::UnexpectedReply(format!("stream entry: {v:?}")))?;
    let id = text(&id, "stream entry id")?;
    let key = format!("{stream} {id}");
    let seq = id
        .split_once('-')
        .and_then(|(n, _)| n.parse().ok())
        .ok_or_else(|| Error::Corrupt {
            key: key.clone(),
            detail: "bad entry id".into(),
        })?;
    Ok(StreamEntry {
        seq,
        key,
        fields: array(fields, "stream entry fields")?,
    })
}

/// Decodes one raw `XRANGE` entry of the finalized log into its sequence and tx.
pub(crate) fn decode_log_entry(v: Value, keys: &Keys) -> Result<(u64, MempoolTx), Error> {
    let StreamEntry { seq, key, fields } = stream_entry(v, &keys.log)?;
    let corrupt = |detail: String| Error::Corrupt {
        key: key.clone(),
        detail,
    };
    let mut fields = fields.into_iter();
    let (mut tx, mut st, mut c, mut m, mut at, mut era, mut body) =
        (None, None, None, None, None, None, None);
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match text(&name, "log field name")?.as_str() {
            "tx" => tx = Some(text(&value, "tx")?),
            "st" => st = Some(text(&value, "st")?),
            "c" => c = Some(count(&value, "c")?),
            "m" => m = Some(count(&value, "m")?),
            "at" => at = Some(text(&value, "at")?),
            "era" => era = Some(text(&value, "era")?),
            "body" => body = Some(bytes(value, "body")?),
            _ => {}
        }
    }
    let missing = |f: &str| corrupt(format!("field {f} missing"));
    let hash: TxHash = tx
        .ok_or_else(|| missing("tx"))?
        .parse()
        .map_err(|_| corrupt("bad tx hash".into()))?;
    let era = era.ok_or_else(|| missing("era"))?;
    let era: u16 = era
        .parse()
        .map_err(|_| corrupt(format!("bad era {era:?}")))?;
    Ok((
        seq,
        MempoolTx {
            hash,
            payload: EraCbor(era, body.ok_or_else(|| missing("body"))?),
            stage: decode_stage(&st.ok_or_else(|| missing("st"))?, &key)?,
            confirmations: c.ok_or_else(|| missing("c"))?,
            non_confirmations: m.ok_or_else(|| missing("m"))?,
            confirmed_at: decode_point(&at.unwrap_or_default(), &key)?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prelude_names_the_keys_in_the_order_rust_passes_them() {
        let prelude = include_str!("scripts/prelude.lua");
        let keys = Keys::new("p");
        for (i, key) in keys.all().iter().enumerate() {
            let name = key.strip_prefix("p:").unwrap().replace(':', "_");
            let name = name.strip_prefix("watcher_").unwrap_or(&name);
            let decl = format!("{name} = KEYS[{}]", i + 1);
            assert!(prelude.contains(&decl), "prelude lacks `{decl}`");
            // check_types in the prelude must expect what Rust expects.
            if let Some(kind) = keys.typed()[i].1 {
                let expected = format!("{name} = '{kind}'");
                assert!(prelude.contains(&expected), "prelude lacks `{expected}`");
            }
        }
    }

    #[test]
    fn points_round_trip() {
        let h = BlockHash::from([7; 32]);
        for p in [
            ChainPoint::Origin,
            ChainPoint::Slot(42),
            ChainPoint::Specific(u64::MAX, h),
        ] {
            assert_eq!(decode_point(&encode_point(&p), "k").unwrap(), Some(p));
            if let Some(member) = chain_member(&p) {
                assert_eq!(decode_point(&member, "k").unwrap(), Some(p));
                assert_eq!(member.find(':').unwrap_or(member.len()), 20);
            }
        }
        assert_eq!(chain_member(&ChainPoint::Origin), None);
        assert!(decode_point("x:y", "k").is_err());
    }
}
