//! What reading 100 txs costs Redis from cold memory, by where their bodies are kept: as fields
//! of a hash (this crate's layout: the ids from a sorted set, then `HMGET`, in a script) or as
//! entries of a stream (one `XRANGE`). Not a call of the crate: plain Redis commands on keys of
//! their own, to say what a layout change could win on the bulk reads (BENCHMARKS.md, run f).
//!
//! Both layouts hold the same txs, written interleaved with unrelated values so that a tx's
//! pieces lie apart in memory as they do after a day of traffic. Before each cold read the
//! server scans a 64 MB string (`BITCOUNT`), which pushes everything else out of the CPU caches;
//! the same read made again right after is the warm one. Server time from `INFO commandstats`
//! differences, as in the steady state.

use dolos_redis_testkit::Rng;

use crate::util::{self, median};
use crate::{progress, Bench};

/// Txs stored both ways.
pub const TXS: u64 = 5000;
/// Txs per read.
const READ: u64 = 100;
/// Reads of each kind.
pub const TRIALS: usize = 60;

/// The floor script of the hash layout: ids by rank, then their bodies.
const FROM_HASH: &str = "local h = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2]) \
     return {h, redis.call('HMGET', KEYS[2], unpack(h))}";

/// Median server µs of each read, cold and warm.
pub struct Layouts {
    pub hash: (f64, f64),
    pub stream: (f64, f64),
}

impl Bench {
    pub fn layouts(&mut self) -> Layouts {
        progress(format!(
            "layouts: {TXS} txs as hash fields and as stream entries"
        ));
        let prefix = format!("{}:layouts", self.root);
        let key = |k: &str| format!("{prefix}:{k}");
        let admin = &mut self.admin;
        let mut rng = Rng::new(self.next_tag);
        let mut pipe = redis::pipe();
        for i in 0..TXS {
            let hash = rng.bytes32();
            let mut body = vec![0u8; util::PAYLOAD_LEN];
            rng.fill(&mut body);
            pipe.cmd("ZADD")
                .arg(key("ids"))
                .arg(i)
                .arg(&hash[..])
                .ignore();
            pipe.cmd("HSET")
                .arg(key("txs"))
                .arg(&hash[..])
                .arg(&body)
                .ignore();
            pipe.cmd("XADD")
                .arg(key("stream"))
                .arg(format!("{}-0", i + 1))
                .arg("h")
                .arg(&hash[..])
                .arg("b")
                .arg(&body)
                .ignore();
            pipe.cmd("SET")
                .arg(key(&format!("other:{i}")))
                .arg(&body[..200])
                .ignore();
        }
        pipe.cmd("SETRANGE")
            .arg(key("flush"))
            .arg(64 << 20)
            .arg("x")
            .ignore();
        let () = pipe.query(admin).expect("fill the layouts");
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(FROM_HASH)
            .query(admin)
            .expect("SCRIPT LOAD");

        // Server µs of `cmd`, whose name in `INFO commandstats` is `name`.
        let server = |admin: &mut redis::Connection, name: &str, cmd: &redis::Cmd| {
            let mut before = util::CommandStats::new();
            util::add_command_stats(admin, &mut before);
            let _: redis::Value = cmd.query(admin).expect("read");
            let mut after = util::CommandStats::new();
            util::add_command_stats(admin, &mut after);
            let (c0, u0) = before.get(name).copied().unwrap_or_default();
            let (c1, u1) = after.get(name).copied().unwrap_or_default();
            (u1 - u0) as f64 / (c1 - c0).max(1) as f64
        };
        let flush = redis::cmd("BITCOUNT").arg(key("flush")).clone();
        let mut s = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..TRIALS {
            let first = rng.below(TXS - READ);
            let last = first + READ - 1;
            let from_hash = redis::cmd("EVALSHA")
                .arg(&sha)
                .arg(2)
                .arg(key("ids"))
                .arg(key("txs"))
                .arg(first)
                .arg(last)
                .clone();
            let from_stream = redis::cmd("XRANGE")
                .arg(key("stream"))
                .arg(format!("{}-0", first + 1))
                .arg("+")
                .arg("COUNT")
                .arg(READ)
                .clone();
            let _: redis::Value = flush.query(admin).expect("BITCOUNT");
            s[0].push(server(admin, "evalsha", &from_hash));
            s[1].push(server(admin, "evalsha", &from_hash));
            let _: redis::Value = flush.query(admin).expect("BITCOUNT");
            s[2].push(server(admin, "xrange", &from_stream));
            s[3].push(server(admin, "xrange", &from_stream));
        }
        util::delete_prefix(admin, &prefix);
        Layouts {
            hash: (median(&s[0]), median(&s[1])),
            stream: (median(&s[2]), median(&s[3])),
        }
    }
}
