//! One typed function per script. Each takes the script's arguments as Rust values, encodes them
//! as the script reads them, and passes them in the order and under the names of the script's
//! signature line (the first line of its `.lua` file, such as
//! `-- release(node_id, epoch) -> 1 | 0`). The test below reads every signature line and checks
//! that its function passes the same names in the same order, as the prelude's test does for the
//! keys: a script and its caller cannot drift apart unnoticed.

use std::borrow::Cow;
use std::time::Duration;

use super::{Lua, Scripts};
use crate::codec;
use crate::types::{ChainPoint, TxHash};

/// One call of one script: the script, and its arguments under the names its signature line
/// gives them (`name...` for a variadic tail, which takes any number of values).
pub(crate) struct Call<'a> {
    pub(super) lua: &'a Lua,
    names: Vec<&'static str>,
    values: Vec<Cow<'a, [u8]>>,
}

impl<'a> Call<'a> {
    fn new(lua: &'a Lua) -> Call<'a> {
        Call {
            lua,
            names: Vec::new(),
            values: Vec::new(),
        }
    }

    /// An argument sent as its text (numbers, hashes).
    fn text(mut self, name: &'static str, value: impl ToString) -> Call<'a> {
        self.names.push(name);
        self.values.push(Cow::Owned(value.to_string().into_bytes()));
        self
    }

    /// An argument sent as it is, without a copy (ids, payloads).
    fn bytes(mut self, name: &'static str, value: &'a [u8]) -> Call<'a> {
        self.names.push(name);
        self.values.push(Cow::Borrowed(value));
        self
    }

    /// The variadic tail `name...`: every hash, as its 32 bytes, one argument each.
    fn hashes(mut self, name: &'static str, hashes: &'a [TxHash]) -> Call<'a> {
        self.names.push(name);
        self.values
            .extend(hashes.iter().map(|h| Cow::Borrowed(&h.as_bytes()[..])));
        self
    }

    /// The arguments, in order.
    pub(super) fn args(&self) -> impl Iterator<Item = &[u8]> {
        self.values.iter().map(|v| v.as_ref())
    }
}

impl Scripts {
    /// `record` is what `P:txs` stores: `<era>|<body>` ([`codec::tx_record`]).
    pub fn receive<'a>(
        &'a self,
        hash: &'a TxHash,
        record: &'a [u8],
        max_pending: usize,
    ) -> Call<'a> {
        Call::new(&self.receive)
            .bytes("hash", hash.as_bytes())
            .bytes("record", record)
            .text("max_pending", max_pending)
    }

    pub fn peek_pending(&self, count: u64) -> Call<'_> {
        Call::new(&self.peek_pending).text("count", count)
    }

    pub fn peek_inflight(&self, count: u64) -> Call<'_> {
        Call::new(&self.peek_inflight).text("count", count)
    }

    pub fn mark_inflight<'a>(&'a self, hashes: &'a [TxHash]) -> Call<'a> {
        Call::new(&self.mark_inflight).hashes("hash...", hashes)
    }

    pub fn mark_acknowledged<'a>(&'a self, hashes: &'a [TxHash]) -> Call<'a> {
        Call::new(&self.mark_acknowledged).hashes("hash...", hashes)
    }

    pub fn find_inflight<'a>(&'a self, hash: &'a TxHash) -> Call<'a> {
        Call::new(&self.find_inflight).bytes("hash", hash.as_bytes())
    }

    /// `member` is the point's entry in the applied chain ([`codec::chain_member`]).
    // One parameter per name of the signature line, in its order: that is the point of this
    // function, and a struct would only name them a second time.
    #[allow(clippy::too_many_arguments)]
    pub fn confirm<'a>(
        &'a self,
        node_id: &'a str,
        epoch: u64,
        member: &'a str,
        point: &ChainPoint,
        finalize_threshold: u32,
        drop_threshold: u32,
        max_log: usize,
        history: usize,
        seen: &'a [TxHash],
        unseen: &'a [TxHash],
    ) -> Call<'a> {
        Call::new(&self.confirm)
            .bytes("node_id", node_id.as_bytes())
            .text("epoch", epoch)
            .bytes("member", member.as_bytes())
            .text("point", codec::encode_point(point))
            .text("F", finalize_threshold)
            .text("D", drop_threshold)
            .text("max_log", max_log)
            .text("history", history)
            .text("nseen", seen.len())
            .hashes("seen...", seen)
            .hashes("unseen...", unseen)
    }

    pub fn rollback_to<'a>(&'a self, node_id: &'a str, epoch: u64, member: &'a str) -> Call<'a> {
        Call::new(&self.rollback_to)
            .bytes("node_id", node_id.as_bytes())
            .text("epoch", epoch)
            .bytes("member", member.as_bytes())
    }

    pub fn check_status<'a>(&'a self, hash: &'a TxHash) -> Call<'a> {
        Call::new(&self.check_status).bytes("hash", hash.as_bytes())
    }

    pub fn dump_finalized(&self, from: u64, lines: u64) -> Call<'_> {
        Call::new(&self.dump_finalized)
            .text("from", from)
            .text("lines", lines)
    }

    pub fn watcher_info(&self) -> Call<'_> {
        Call::new(&self.watcher_info)
    }

    pub fn events_snapshot(&self) -> Call<'_> {
        Call::new(&self.events_snapshot)
    }

    /// `live` is the start of the liveness channels (`Keys::live`), empty when this node checks
    /// no liveness.
    pub fn acquire<'a>(&'a self, node_id: &'a str, ttl: Duration, live: &'a str) -> Call<'a> {
        Call::new(&self.acquire)
            .bytes("node_id", node_id.as_bytes())
            .text("ttl_ms", ttl.as_millis())
            .bytes("live", live.as_bytes())
    }

    pub fn renew<'a>(
        &'a self,
        node_id: &'a str,
        epoch: u64,
        ttl: Duration,
        live: &'a str,
    ) -> Call<'a> {
        Call::new(&self.renew)
            .bytes("node_id", node_id.as_bytes())
            .text("epoch", epoch)
            .text("ttl_ms", ttl.as_millis())
            .bytes("live", live.as_bytes())
    }

    /// Takes the lock from `gone`, whose liveness subscription is no longer there.
    pub fn take_over<'a>(
        &'a self,
        node_id: &'a str,
        ttl: Duration,
        gone: &'a str,
        live: &'a str,
    ) -> Call<'a> {
        Call::new(&self.take_over)
            .bytes("node_id", node_id.as_bytes())
            .text("ttl_ms", ttl.as_millis())
            .bytes("gone", gone.as_bytes())
            .bytes("live", live.as_bytes())
    }

    pub fn release<'a>(&'a self, node_id: &'a str, epoch: u64) -> Call<'a> {
        Call::new(&self.release)
            .bytes("node_id", node_id.as_bytes())
            .text("epoch", epoch)
    }

    pub fn stats(&self) -> Call<'_> {
        Call::new(&self.stats)
    }

    /// `expected_holder` empty: whoever holds the lock.
    pub fn reset_lock<'a>(&'a self, expected_holder: &'a str) -> Call<'a> {
        Call::new(&self.reset_lock).bytes("expected_holder", expected_holder.as_bytes())
    }

    /// `live`: this node's liveness channel, empty when it checks no liveness.
    pub fn check_access<'a>(&'a self, live: &'a str) -> Call<'a> {
        Call::new(&self.check_access).bytes("live", live.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name and parameter names of a signature line `-- name(a, b, rest...) -> reply`.
    fn signature(line: &str) -> (&str, Vec<&str>) {
        let (name, rest) = line
            .strip_prefix("-- ")
            .and_then(|l| l.split_once('('))
            .unwrap_or_else(|| panic!("not a signature line: {line:?}"));
        let (params, _) = rest
            .split_once(')')
            .unwrap_or_else(|| panic!("not a signature line: {line:?}"));
        let params = params
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        (name, params)
    }

    #[test]
    fn every_call_passes_the_arguments_of_its_signature_line_in_that_order() {
        let s = Scripts::new(true);
        let (h, point, ttl) = (TxHash::from([1; 32]), ChainPoint::Slot(1), Duration::ZERO);
        let hh = [h, h];
        let calls = [
            ("receive", s.receive(&h, b"6|body", 10)),
            ("peek_pending", s.peek_pending(10)),
            ("peek_inflight", s.peek_inflight(10)),
            ("mark_inflight", s.mark_inflight(&hh)),
            ("mark_acknowledged", s.mark_acknowledged(&hh[..1])),
            ("find_inflight", s.find_inflight(&h)),
            (
                "confirm",
                s.confirm("n", 1, "m", &point, 6, 2, 10, 10, &hh[..1], &[]),
            ),
            ("rollback_to", s.rollback_to("n", 1, "m")),
            ("check_status", s.check_status(&h)),
            ("dump_finalized", s.dump_finalized(1, 10)),
            ("watcher_info", s.watcher_info()),
            ("events_snapshot", s.events_snapshot()),
            ("acquire", s.acquire("n", ttl, "l")),
            ("renew", s.renew("n", 1, ttl, "l")),
            ("release", s.release("n", 1)),
            ("take_over", s.take_over("n", ttl, "g", "l")),
            ("stats", s.stats()),
            ("reset_lock", s.reset_lock("")),
            ("check_access", s.check_access("l")),
        ];
        for (function, call) in &calls {
            let (script, params) = signature(call.lua.signature);
            assert_eq!(script, *function, "{function} runs the script of {script}");
            assert_eq!(
                call.names, params,
                "{function}: Rust passes {:?}, its signature line names {params:?}",
                call.names
            );
        }
        // Every script has its function, and only one.
        let all: Vec<&Lua> = s.all().into_iter().chain([&s.check_access]).collect();
        assert_eq!(calls.len(), all.len());
        for lua in all {
            let callers = calls.iter().filter(|(_, c)| std::ptr::eq(c.lua, lua));
            assert_eq!(callers.count(), 1, "{}", lua.signature);
        }
    }

    #[test]
    fn a_variadic_tail_takes_one_argument_per_value() {
        let s = Scripts::new(true);
        let hashes = [TxHash::from([1; 32]), TxHash::from([2; 32])];
        let call = s.confirm(
            "n",
            3,
            "m",
            &ChainPoint::Slot(9),
            6,
            2,
            10,
            20,
            &hashes,
            &[],
        );
        let args: Vec<&[u8]> = call.args().collect();
        assert_eq!(args.len(), 9 + 2);
        assert_eq!(args[8], b"2"); // nseen
        assert_eq!(args[9], hashes[0].as_bytes());
        assert_eq!(args[3], b"9"); // the point
    }
}
