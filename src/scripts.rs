//! The server-side scripts, one `.lua` file per operation in `src/scripts/`, and how they run
//! (their replies are read in `codec.rs`).
//!
//! Each script receives only the keys it uses, which the Rust side declares next to it (the
//! [`lua!`] lines below) and names for it in a first line `local K = {txs = KEYS[1], ...}`: a
//! script says `K.txs`, and a test checks that every key a script names is declared. What goes
//! to Redis is a `#!lua` header line (Redis ≥ 7, see [`Header`]), that `K` line, the shared
//! fragments the script uses (`common.lua`, `undo.lua`; the lease's scripts `prelude.lua`, then
//! `liveness.lua` for those that count liveness subscribers), and its own file, in that order.
//! A call is one `EVALSHA` ([`run`]), which loads its script and sends the call again on
//! `NOSCRIPT`; [`Scripts::load_all`] loads them when the mempool opens so that the steady state
//! is one round trip per call.
//!
//! Reads that one plain command answers atomically (`has_pending`, `applied_points`,
//! `dump_finalized`) are sent as that command, through [`plain`]; large reads of the pending
//! queue and the inflight set as plain commands too, through [`plain`] and [`plain_pipeline`].
//!
//! (A little over 500 lines: the table of scripts with their keys, and the tests that hold it to
//! the `.lua` files, are kept together.)

use redis::{Script, Value};

use crate::codec;
use crate::connect::RedisConn;
use crate::keys::{Key, Keys};
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
    /// The keys the script receives, in the order of its `KEYS`.
    keys: &'static [Key],
    /// The first line of the script's own file: `-- name(arg, ...) -> reply`, which its
    /// function in [`calls`] follows (checked by a test).
    #[cfg(test)]
    signature: &'static str,
    /// The shared fragments and the script's own file, to check the keys it names.
    #[cfg(test)]
    body: String,
    /// Whether the script writes: only those wait for replicas ([`Config::wait_replicas`]).
    ///
    /// [`Config::wait_replicas`]: crate::Config::wait_replicas
    writes: bool,
}

impl Lua {
    /// `own` is the script's own file, `shared` the fragments it calls (each followed by a
    /// newline), `keys` the keys it receives; the header line (if `headers`) and the line naming
    /// the keys go in front of them. The header must be the very first line Redis sees.
    fn new(
        own: &'static str,
        shared: &str,
        keys: &'static [Key],
        header: Header,
        headers: bool,
    ) -> Lua {
        let names: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| format!("{} = KEYS[{}]", key.name(), i + 1))
            .collect();
        let k_line = format!("local K = {{{}}}", names.join(", "));
        let source = if headers {
            format!("{}\n{k_line}\n{shared}{own}\n", header.line())
        } else {
            format!("{k_line}\n{shared}{own}\n")
        };
        Lua {
            script: Script::new(&source),
            source,
            keys,
            #[cfg(test)]
            signature: own.lines().next().unwrap_or(""),
            #[cfg(test)]
            body: format!("{shared}{own}"),
            writes: header != Header::Reads,
        }
    }
}

/// A script of the given [`Header`] kind, with the keys it receives: its header line, the line
/// naming its keys, the shared fragments it uses (such as `undo.lua`), then its own file.
macro_rules! lua {
    ($header:ident, $headers:expr, $file:literal, [$($key:ident),*] $(, with $shared:literal)*) => {
        Lua::new(
            include_str!(concat!("scripts/", $file)),
            concat!($(include_str!(concat!("scripts/", $shared)), "\n",)* ""),
            &[$(Key::$key),*],
            Header::$header,
            $headers,
        )
    };
}

/// All scripts, hashed once. Each is called through its typed function in [`calls`].
pub(crate) struct Scripts {
    receive: Lua,
    peek_pending: Lua,
    peek_inflight: Lua,
    mark_inflight: Lua,
    mark_acknowledged: Lua,
    find_inflight: Lua,
    confirm: Lua,
    rollback_to: Lua,
    check_status: Lua,
    dump_finalized: Lua,
    watcher_info: Lua,
    events_snapshot: Lua,
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
    /// which still comes before anything is stored (every script reads before it writes, and
    /// its first write grows memory); a renewal's first write (`PEXPIRE`) may always run, so
    /// the watcher keeps its lock, but an acquisition's (`SET`) is refused, so nobody takes
    /// over until memory is back.
    pub fn new(headers: bool) -> Scripts {
        let h = headers;
        Scripts {
            receive: lua!(
                Writes,
                h,
                "receive.lua",
                [Txs, Pending, Done, Replaced, Meta, Events]
            ),
            peek_pending: lua!(Reads, h, "peek_pending.lua", [Pending, Txs]),
            peek_inflight: lua!(
                Reads,
                h,
                "peek_inflight.lua",
                [Inflight, Txs, Meta, Points, Marks]
            ),
            mark_inflight: lua!(
                Writes,
                h,
                "mark_inflight.lua",
                [Pending, Inflight, Marks, Meta, Events, Done, Txs],
                with "common.lua"
            ),
            mark_acknowledged: lua!(
                Writes,
                h,
                "mark_acknowledged.lua",
                [Inflight, Marks, Meta, Events],
                with "common.lua"
            ),
            find_inflight: lua!(
                Reads,
                h,
                "find_inflight.lua",
                [Inflight, Txs, Meta, Points, Marks]
            ),
            confirm: lua!(
                Writes,
                h,
                "confirm.lua",
                [
                    Lock, Epoch, Chain, Meta, Txs, Pending, Inflight, Marks, Confirmed, Points,
                    Log, Done, Replaced, Events
                ],
                with "common.lua",
                with "undo.lua"
            ),
            rollback_to: lua!(
                Writes,
                h,
                "rollback_to.lua",
                [Lock, Epoch, Chain, Meta, Pending, Inflight, Marks, Confirmed, Points, Events],
                with "common.lua",
                with "undo.lua"
            ),
            check_status: lua!(
                Reads,
                h,
                "check_status.lua",
                [Pending, Inflight, Meta, Points, Marks, Done, Log]
            ),
            dump_finalized: lua!(
                Reads,
                h,
                "dump_finalized.lua",
                [Meta, Log, Txs, Replaced],
                with "common.lua"
            ),
            watcher_info: lua!(Reads, h, "watcher_info.lua", [Lock, Epoch, Chain]),
            events_snapshot: lua!(Reads, h, "events_snapshot.lua", [Meta, Confirmed, Points]),
            acquire: lua!(KeepsLock, h, "acquire.lua", [Lock, Fence, Epoch, Wake, Meta, Events], with "prelude.lua", with "liveness.lua"),
            renew: lua!(KeepsLock, h, "renew.lua", [Lock, Fence, Epoch, Wake, Meta, Events], with "prelude.lua", with "liveness.lua"),
            release: lua!(KeepsLock, h, "release.lua", [Lock, Fence, Epoch, Wake, Meta, Events], with "prelude.lua"),
            take_over: lua!(KeepsLock, h, "take_over.lua", [Lock, Fence, Epoch, Wake, Meta, Events], with "prelude.lua", with "liveness.lua"),
            stats: lua!(
                Reads,
                h,
                "stats.lua",
                [Pending, Inflight, Meta, Lock, Epoch, Chain]
            ),
            reset_lock: lua!(KeepsLock, h, "reset_lock.lua", [Lock, Fence, Epoch, Wake, Meta, Events], with "prelude.lua"),
            check_access: lua!(
                Reads,
                h,
                "check_access.lua",
                [
                    Lock, Epoch, Wake, Fence, Meta, Chain, Txs, Pending, Inflight, Marks,
                    Confirmed, Points, Log, Done, Replaced, Events
                ]
            ),
        }
    }

    fn all(&self) -> [&Lua; 18] {
        [
            &self.receive,
            &self.peek_pending,
            &self.peek_inflight,
            &self.mark_inflight,
            &self.mark_acknowledged,
            &self.find_inflight,
            &self.confirm,
            &self.rollback_to,
            &self.check_status,
            &self.dump_finalized,
            &self.watcher_info,
            &self.events_snapshot,
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

/// Makes `call` with the keys of its script, the argument every script takes first
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
    // One `EVALSHA` built in place: redis-rs's `ScriptInvocation` copies every argument twice
    // more (a body too) before packing it, which shows in the 8-thread `receive` rate, where the
    // clients share the cores with Redis.
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(lua.script.get_hash()).arg(lua.keys.len());
    for key in lua.keys {
        cmd.arg(keys.name(*key));
    }
    cmd.arg(event_history);
    for arg in args {
        cmd.arg(arg);
    }
    match conn.run(&cmd) {
        // The server lost its scripts (a restart, a failover to a node that never loaded
        // them): the script did not run; load it and send the call again, once.
        Err(e) if e.code() == Some("NOSCRIPT") => {
            conn.run::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(&lua.source))
                .map_err(Error::from_redis)?;
            conn.run(&cmd)
        }
        other => other,
    }
    .map_err(|e| explain(conn, e, keys, lua.keys))
}

/// A read that one plain command answers (atomically, as every single command is): `keys` are
/// the keys it reads, to name the one of the wrong type.
pub(crate) fn plain(
    conn: &mut RedisConn,
    cmd: &redis::Cmd,
    keys: &Keys,
    read: &[Key],
) -> Result<Value, Error> {
    conn.run(cmd).map_err(|e| explain(conn, e, keys, read))
}

/// Plain reads sent together in one round trip (a `MULTI` when `pipe` is atomic, so they see
/// one moment); `read` as for [`plain`].
pub(crate) fn plain_pipeline(
    conn: &mut RedisConn,
    pipe: &redis::Pipeline,
    keys: &Keys,
    read: &[Key],
) -> Result<Vec<Value>, Error> {
    conn.run_pipeline(pipe).map_err(|e| {
        // A command of the pipeline refused (say WRONGTYPE) comes wrapped as a pipeline
        // failure: sort its first server error as a lone command's.
        let first = e
            .clone()
            .into_server_errors()
            .and_then(|errors| errors.first().map(|(_, err)| err.clone()));
        match first {
            Some(err) => explain(conn, redis::RedisError::from(err), keys, read),
            None => explain(conn, e, keys, read),
        }
    })
}

/// Sorts an error of a call on `used` keys: a bare `WRONGTYPE` names the key at fault, a
/// counter of `P:meta` that is not a number is corrupt data.
fn explain(conn: &mut RedisConn, e: redis::RedisError, keys: &Keys, used: &[Key]) -> Error {
    let code = crate::error::script_error(&e)
        .map(|(code, _)| code)
        .or(e.code());
    if code == Some("WRONGTYPE") && !conn.is_broken() {
        return name_the_wrong_key(conn, keys, used).unwrap_or_else(|| Error::from_redis(e));
    }
    // HINCRBY on a field that holds no integer: only P:meta's counters are incremented.
    if e.to_string().contains("hash value is not an integer") {
        return Error::Corrupt {
            key: keys.meta.clone(),
            detail: "a counter is not an integer".into(),
        };
    }
    Error::from_redis(e)
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
    let names: Vec<&str> = lua.keys.iter().map(|k| keys.name(*k)).collect();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let cmd = pipe
        .cmd("EVALSHA")
        .arg(lua.script.get_hash())
        .arg(names.len())
        .arg(&names[..])
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
                return Err(explain(conn, e, keys, lua.keys));
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

/// A call failed with a bare `WRONGTYPE` (scripts check types only where a partial write could
/// follow): find the key at fault among the ones it used, at the cost of one more round trip on
/// this error path only.
fn name_the_wrong_key(conn: &mut RedisConn, keys: &Keys, used: &[Key]) -> Option<Error> {
    let typed: Vec<(&str, &str)> = used
        .iter()
        .filter_map(|k| Some((keys.name(*k), k.kind()?)))
        .collect();
    let mut pipe = redis::pipe();
    for (key, _) in &typed {
        pipe.cmd("TYPE").arg(*key);
    }
    let types: Vec<String> = conn.run_pipeline(&pipe).ok()?;
    typed
        .iter()
        .zip(types)
        .find(|((_, expected), actual)| actual != "none" && actual != expected)
        .map(|((key, _), _)| Error::WrongType {
            key: key.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names `K.<name>` a piece of Lua uses, and those it passes to `check_types`.
    fn names_used(lua: &str) -> Vec<String> {
        let mut out = Vec::new();
        let ident = |rest: &str| -> String {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        for (i, _) in lua.match_indices("K.") {
            let before = lua[..i].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            out.push(ident(&lua[i + 2..]));
        }
        for (i, _) in lua.match_indices("check_types(") {
            let args = &lua[i + "check_types(".len()..];
            let args = &args[..args.find(')').unwrap_or(0)];
            out.extend(
                args.split(',')
                    .map(|a| a.trim().trim_matches('\'').to_string())
                    .filter(|a| !a.is_empty() && !a.starts_with('.')),
            );
        }
        out
    }

    #[test]
    fn every_key_a_script_names_is_one_it_receives() {
        let scripts = Scripts::new(true);
        for lua in scripts.all().into_iter().chain([&scripts.check_access]) {
            let declared: Vec<&str> = lua.keys.iter().map(|k| k.name()).collect();
            for name in names_used(&lua.body) {
                assert!(
                    declared.contains(&name.as_str()),
                    "{}: names K.{name}, which it does not receive ({declared:?})",
                    lua.signature
                );
            }
            // The K line is the second line, right after the header.
            let k_line = lua.source.lines().nth(1).unwrap_or("");
            assert!(k_line.starts_with("local K = {"), "{k_line}");
            for (i, name) in declared.iter().enumerate() {
                assert!(k_line.contains(&format!("{name} = KEYS[{}]", i + 1)));
            }
        }
        // The check itself sees uses.
        assert_eq!(
            names_used("x = K.txs .. K.meta; check_types('lock', 'a')"),
            ["txs", "meta", "lock", "a"]
        );
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
            &with.peek_pending,
            &with.peek_inflight,
            &with.find_inflight,
            &with.check_status,
            &with.dump_finalized,
            &with.watcher_info,
            &with.events_snapshot,
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
        // Redis 6.2 cannot compile the header: none at all, the keys first.
        let without = Scripts::new(false);
        for lua in without.all() {
            assert!(!lua.source.starts_with("#!"));
            assert!(lua.source.starts_with("local K = {"));
        }
        assert_ne!(
            with.receive.script.get_hash(),
            without.receive.script.get_hash()
        );
    }
}
