//! The server-side scripts, one `.lua` file per operation in `src/scripts/`, and how they run
//! (their replies are read in `codec.rs`).
//!
//! Each script is a `#!lua` header line (Redis ≥ 7, see [`Header`]), `prelude.lua` and its own
//! file, in that order. Every script receives all keys of the
//! mempool in the order of [`Keys::all`], so the prelude names them once. redis-rs sends
//! `EVALSHA` and loads a script on `NOSCRIPT` by itself; [`Scripts::load_all`] loads them when the
//! mempool opens so that the steady state is one round trip per call.

use redis::{Script, Value};

use crate::codec;
use crate::connect::RedisConn;
use crate::keys::Keys;
use crate::Error;

mod calls;

pub(crate) use calls::Call;

/// What a script tells Redis about itself in its `#!lua` first line (Redis ≥ 7), which decides
/// what Redis does with it while it is out of memory (`used_memory` above `maxmemory` under
/// `noeviction`).
///
/// Redis 7 judges a script with such a line once, before it runs: one that may write and does
/// not say `allow-oom` is refused whole with `OOM` (nothing runs, so nothing is stored), and one
/// that starts runs to its end. A script without the line is judged command by command: it is
/// refused only at its first command that may grow memory, and only if it wrote nothing before;
/// our scripts put every write after their reads, so that also refuses them whole, but the
/// header says it in one place. Redis 6.2 cannot read the line, so there the scripts are sent
/// without it (see [`Scripts::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// `#!lua flags=no-writes`: reads only, and runs whatever the memory.
    Reads,
    /// `#!lua`: writes, and is refused whole while Redis is full.
    Writes,
    /// `#!lua flags=allow-oom`: the lease's scripts, which keep or hand over the lock and add at
    /// most one event. They run even while Redis is full, so a full Redis never costs the
    /// watcher its lock nor the followers their turn.
    KeepsLock,
}

impl Header {
    fn line(self) -> &'static str {
        match self {
            Header::Reads => "#!lua flags=no-writes",
            Header::Writes => "#!lua",
            Header::KeepsLock => "#!lua flags=allow-oom",
        }
    }
}

/// A script and its source (redis-rs keeps the source private, and `SCRIPT LOAD` needs it).
pub(crate) struct Lua {
    script: Script,
    source: String,
    /// The first line of the script's own file: `-- name(arg, ...) -> reply`, which its
    /// function in [`calls`] follows (checked by a test).
    #[cfg(test)]
    signature: &'static str,
    /// Whether the script writes: only those wait for replicas ([`Config::wait_replicas`]).
    ///
    /// [`Config::wait_replicas`]: crate::Config::wait_replicas
    writes: bool,
}

impl Lua {
    /// `own` is the script's own file, `shared` the fragments it calls (each followed by a
    /// newline); the header line (if `headers`) and `prelude.lua` go in front of them. The
    /// header must be the very first line Redis sees.
    fn new(own: &'static str, shared: &str, header: Header, headers: bool) -> Lua {
        let prelude = include_str!("scripts/prelude.lua");
        let source = if headers {
            format!("{}\n{prelude}\n{shared}{own}\n", header.line())
        } else {
            format!("{prelude}\n{shared}{own}\n")
        };
        Lua {
            script: Script::new(&source),
            source,
            #[cfg(test)]
            signature: own.lines().next().unwrap_or(""),
            writes: header != Header::Reads,
        }
    }
}

/// A script of the given [`Header`] kind: its header line, `prelude.lua`, the shared fragments
/// it uses (such as `undo.lua`), then its own file.
macro_rules! lua {
    ($header:ident, $headers:expr, $file:literal $(, with $shared:literal)*) => {
        Lua::new(
            include_str!(concat!("scripts/", $file)),
            concat!($(include_str!(concat!("scripts/", $shared)), "\n",)* ""),
            Header::$header,
            $headers,
        )
    };
}

/// All scripts, hashed once. Each is called through its typed function in [`calls`].
pub(crate) struct Scripts {
    receive: Lua,
    has_pending: Lua,
    peek: Lua,
    mark_inflight: Lua,
    mark_acknowledged: Lua,
    find_inflight: Lua,
    confirm: Lua,
    rollback_to: Lua,
    applied_points: Lua,
    check_status: Lua,
    dump_finalized: Lua,
    watcher_info: Lua,
    acquire: Lua,
    renew: Lua,
    release: Lua,
    take_over: Lua,
    stats: Lua,
    reset_lock: Lua,
    /// Run once at open, not preloaded.
    check_access: Lua,
}

impl Scripts {
    /// Every script, with its `#!lua` header when `headers` (the server is Redis 7 or later;
    /// `open` reads its version). Without headers the scripts behave the same except while
    /// Redis is full: it refuses a writing script at its first write that may grow memory,
    /// which still comes before anything is stored (every script reads before it writes); a
    /// renewal's first write (`PEXPIRE`) may always run, so the watcher keeps its lock, but an
    /// acquisition's (`SET`) is refused, so nobody takes over until memory is back.
    pub fn new(headers: bool) -> Scripts {
        Scripts {
            receive: lua!(Writes, headers, "receive.lua"),
            has_pending: lua!(Reads, headers, "has_pending.lua"),
            peek: lua!(Reads, headers, "peek.lua"),
            mark_inflight: lua!(Writes, headers, "mark_inflight.lua"),
            mark_acknowledged: lua!(Writes, headers, "mark_acknowledged.lua"),
            find_inflight: lua!(Reads, headers, "find_inflight.lua"),
            confirm: lua!(Writes, headers, "confirm.lua", with "undo.lua"),
            rollback_to: lua!(Writes, headers, "rollback_to.lua", with "undo.lua"),
            applied_points: lua!(Reads, headers, "applied_points.lua"),
            check_status: lua!(Reads, headers, "check_status.lua"),
            dump_finalized: lua!(Reads, headers, "dump_finalized.lua"),
            watcher_info: lua!(Reads, headers, "watcher_info.lua"),
            acquire: lua!(KeepsLock, headers, "acquire.lua", with "liveness.lua"),
            renew: lua!(KeepsLock, headers, "renew.lua", with "liveness.lua"),
            release: lua!(KeepsLock, headers, "release.lua"),
            take_over: lua!(KeepsLock, headers, "take_over.lua", with "liveness.lua"),
            stats: lua!(Reads, headers, "stats.lua"),
            reset_lock: lua!(KeepsLock, headers, "reset_lock.lua"),
            check_access: lua!(Reads, headers, "check_access.lua"),
        }
    }

    fn all(&self) -> [&Lua; 18] {
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
            &self.take_over,
            &self.stats,
            &self.reset_lock,
        ]
    }

    /// `SCRIPT LOAD`s every script. One command each (not a pipeline): a pipeline's error
    /// carries no error code, and the first error here is often the telling one (`NOAUTH`).
    pub fn load_all(&self, conn: &mut RedisConn) -> Result<(), Error> {
        for lua in self.all() {
            conn.run::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(&lua.source))
                .map_err(Error::from_redis)?;
        }
        Ok(())
    }
}

/// `WAIT` after writing scripts: how many replicas, and how long at most.
pub(crate) type Wait = Option<(usize, std::time::Duration)>;

/// Makes `call` with every key of the mempool, the argument every script takes first
/// (`event_history`: how many events the event stream keeps) and the call's own arguments; one
/// `EVALSHA`. With `wait` and a script that writes, `WAIT` goes in the same round trip and too
/// few replicas is [`Error::NotReplicated`].
pub(crate) fn run(
    conn: &mut RedisConn,
    call: &Call<'_>,
    keys: &Keys,
    event_history: usize,
    wait: Wait,
) -> Result<Value, Error> {
    let (lua, args) = (call.lua, call.args());
    if let Some((replicas, timeout)) = wait.filter(|_| lua.writes) {
        return run_and_wait(conn, lua, keys, event_history, args, replicas, timeout);
    }
    let mut inv = lua.script.prepare_invoke();
    for key in keys.all() {
        inv.key(key);
    }
    inv.arg(event_history);
    for arg in args {
        inv.arg(arg);
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
fn run_and_wait<'a>(
    conn: &mut RedisConn,
    lua: &Lua,
    keys: &Keys,
    event_history: usize,
    args: impl Iterator<Item = &'a [u8]>,
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
        cmd.arg(arg);
    }
    // WAIT reads 0 as "forever".
    let ms = (timeout.as_millis() as u64).max(1);
    pipe.cmd("WAIT").arg(replicas).arg(ms);
    let mut loaded = false;
    loop {
        let replies: Vec<Value> = conn.run_pipeline(&pipe).map_err(Error::from_redis)?;
        let [reply, acked] = codec::tuple(Value::Array(replies), "evalsha+wait")?;
        let reply = match reply {
            Value::ServerError(e) => {
                let e = redis::RedisError::from(e);
                conn.note_error(&e);
                if e.code() == Some("NOSCRIPT") && !loaded {
                    conn.run::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(&lua.source))
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
            v => codec::uint(&v, "wait")? as usize,
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
    fn the_header_is_the_first_line_and_says_what_the_script_may_do() {
        let with = Scripts::new(true);
        let first_line = |lua: &Lua| lua.source.lines().next().unwrap_or("").to_string();
        for lua in with.all().into_iter().chain([&with.check_access]) {
            assert!(first_line(lua).starts_with("#!lua"), "{}", first_line(lua));
        }
        // Only the lease's scripts may run while Redis is out of memory.
        let keeps_lock = [
            &with.acquire,
            &with.renew,
            &with.release,
            &with.take_over,
            &with.reset_lock,
        ];
        let writes = [
            &with.receive,
            &with.mark_inflight,
            &with.mark_acknowledged,
            &with.confirm,
            &with.rollback_to,
        ];
        let reads = [
            &with.has_pending,
            &with.peek,
            &with.find_inflight,
            &with.applied_points,
            &with.check_status,
            &with.dump_finalized,
            &with.watcher_info,
            &with.stats,
            &with.check_access,
        ];
        let kinds: [(&[&Lua], &str, bool); 3] = [
            (&keeps_lock, "#!lua flags=allow-oom", true),
            (&writes, "#!lua", true),
            (&reads, "#!lua flags=no-writes", false),
        ];
        for (scripts, line, may_write) in kinds {
            for lua in scripts {
                assert_eq!(first_line(lua), line);
                assert_eq!(lua.writes, may_write, "{line}");
            }
        }
        assert_eq!(keeps_lock.len() + writes.len() + reads.len(), 19);
        // Redis 6.2 cannot compile the header: none at all, the prelude first.
        let without = Scripts::new(false);
        for lua in without.all() {
            assert!(!lua.source.starts_with("#!"));
            assert!(lua.source.starts_with("-- Shared head of every script"));
        }
        assert_ne!(
            with.receive.script.get_hash(),
            without.receive.script.get_hash()
        );
    }
}
