//! What the bulk calls' core costs Redis from cold memory, by where live bodies are kept: as
//! fields of one hash (this crate's layout) or as entries of a stream per state (queue and
//! inflight set, in their orders), which a layout change could adopt. Not calls of the crate:
//! plain commands and small scripts on keys of their own, doing the least each call needs, to
//! size what such a change would win on the reads and cost on `mark_inflight`, which would then
//! copy each body from one stream to the other (stream entries cannot change). BENCHMARKS.md,
//! run f.
//!
//! Both layouts hold the same txs (a queue of [`TXS`] and an inflight set of [`TXS`]), written
//! interleaved with unrelated values so that a tx's pieces lie apart in memory as they do after a
//! day of traffic. Before each cold measurement the server scans a 64 MB string (`BITCOUNT`),
//! which pushes everything else out of the CPU caches; a read made again right after is the warm
//! one. Server time from `INFO commandstats` differences, as in the steady state (`exec` for a
//! `MULTI` block: it includes the commands it runs).

use dolos_redis_testkit::Rng;

use crate::util::{self, median};
use crate::{progress, Bench};

/// Txs in each of the queue and the inflight set.
pub const TXS: u64 = 5000;
/// Txs per read.
const READ: u64 = 100;
/// Txs per move.
const MOVE: u64 = 50;
/// Bodies read by the one plain `HMGET` that sizes a page of that many.
const BIG_READ: u64 = 1000;
/// Measurements of each kind.
pub const TRIALS: usize = 60;
/// A tx's stage sits in the low bits of its inflight score, as in the crate.
const STAGE_BITS: u64 = 131_072;

/// Hash layout, queue or inflight read: `ARGV[3]` ids from a score on (with their scores if
/// `ARGV[2]` is set), then the bodies.
const HASH_READ: &str = "\
local r = ARGV[2] == '1'
  and redis.call('ZRANGE', KEYS[1], ARGV[1], '+inf', 'BYSCORE', 'LIMIT', 0, ARGV[3], 'WITHSCORES')
  or redis.call('ZRANGE', KEYS[1], ARGV[1], '+inf', 'BYSCORE', 'LIMIT', 0, ARGV[3])
local step = ARGV[2] == '1' and 2 or 1
local h = {}
for i = 1, #r, step do h[#h + 1] = r[i] end
return {r, redis.call('HMGET', KEYS[2], unpack(h))}";

/// Hash layout, `mark_inflight`'s core: queued txs get inflight scores; bodies stay.
/// KEYS: queue, inflight. ARGV: first number, hashes.
const HASH_MOVE: &str = "\
local r = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, 2))
local n, add = tonumber(ARGV[1]), {}
for i = 2, #ARGV do
  if r[i - 1] then add[#add + 1] = n * 131072; add[#add + 1] = ARGV[i]; n = n + 1 end
end
redis.call('ZREM', KEYS[1], unpack(ARGV, 2))
redis.call('ZADD', KEYS[2], unpack(add))
return #add / 2";

/// Stream layout, the same move: each body is read from the queue's stream (one `XRANGE` over
/// the batch's span), appended to the inflight stream, and deleted from the queue's.
/// KEYS: queue, queue stream, inflight stream, inflight. ARGV: first number, hashes.
const STREAM_MOVE: &str = "\
local r = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, 2))
local lo, hi
for i = 1, #r do
  local x = tonumber(r[i])
  if x then
    if not lo or x < lo then lo = x end
    if not hi or x > hi then hi = x end
  end
end
if not lo then return 0 end
local want = {}
for i = 2, #ARGV do want[ARGV[i]] = true end
local n, ids, add = tonumber(ARGV[1]), {}, {}
for _, e in ipairs(redis.call('XRANGE', KEYS[2], lo .. '-0', hi .. '-0')) do
  local f = e[2]
  if want[f[2]] then
    redis.call('XADD', KEYS[3], n .. '-0', 'h', f[2], 'b', f[4])
    ids[#ids + 1] = e[1]
    add[#add + 1] = n * 131072
    add[#add + 1] = f[2]
    n = n + 1
  end
end
redis.call('XDEL', KEYS[2], unpack(ids))
redis.call('ZREM', KEYS[1], unpack(ARGV, 2))
redis.call('ZADD', KEYS[4], unpack(add))
return #ids";

/// One measured operation: median server µs cold, and warm where it can be repeated.
pub struct Measured {
    pub label: &'static str,
    pub cold: f64,
    pub warm: Option<f64>,
}

pub struct Layouts {
    pub rows: Vec<Measured>,
}

/// Server µs of one call that `run` makes, from the `usec` of the commands `names` (the
/// call's top-level commands).
fn server(
    admin: &mut redis::Connection,
    names: &[&str],
    run: impl FnOnce(&mut redis::Connection),
) -> f64 {
    let before = util::command_stats(admin);
    run(admin);
    let after = util::command_stats(admin);
    names
        .iter()
        .map(|n| util::usec(&before, &after, n).1 as f64)
        .sum()
}

/// Runs `cmd`, whatever it answers.
fn run(cmd: &redis::Cmd) -> impl FnOnce(&mut redis::Connection) + '_ {
    move |admin| {
        let _: redis::Value = cmd.query(admin).expect("layouts: a measured command");
    }
}

impl Bench {
    pub fn layouts(&mut self) -> Layouts {
        progress(format!(
            "layouts: {TXS} queued and {TXS} inflight txs as hash fields and as stream entries"
        ));
        let prefix = format!("{}:layouts", self.root);
        let key = |k: &str| format!("{prefix}:{k}");
        let admin = &mut self.admin;
        let mut rng = Rng::new(self.next_tag);
        let mut pipe = redis::pipe();
        let mut all = Vec::with_capacity(2 * TXS as usize);
        // Hash layout: `hq`, `hi` (sorted sets), `txs` (bodies). Stream layout: `sq`, `si`
        // (sorted sets), `sqs`, `sis` (bodies, by queue and inflight number).
        for i in 1..=2 * TXS {
            let hash = rng.bytes32();
            all.push(hash);
            let mut body = vec![0u8; util::PAYLOAD_LEN];
            rng.fill(&mut body);
            let queued = i <= TXS;
            let (score, hz, sz, ss) = if queued {
                (i, "hq", "sq", "sqs")
            } else {
                (i * STAGE_BITS, "hi", "si", "sis")
            };
            pipe.cmd("ZADD")
                .arg(key(hz))
                .arg(score)
                .arg(&hash[..])
                .ignore();
            pipe.cmd("HSET")
                .arg(key("txs"))
                .arg(&hash[..])
                .arg(&body)
                .ignore();
            pipe.cmd("ZADD")
                .arg(key(sz))
                .arg(score)
                .arg(&hash[..])
                .ignore();
            pipe.cmd("XADD")
                .arg(key(ss))
                .arg(format!("{i}-0"))
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
        let (read, hash_move, stream_move) = (
            util::script_load(admin, HASH_READ),
            util::script_load(admin, HASH_MOVE),
            util::script_load(admin, STREAM_MOVE),
        );
        let flush = redis::cmd("BITCOUNT").arg(key("flush")).clone();
        let flush = |admin: &mut redis::Connection| {
            let _: redis::Value = flush.query(admin).expect("BITCOUNT");
        };

        // Cold then warm, for each read; cold for each move.
        let mut reads: [Vec<(f64, f64)>; 4] = Default::default();
        let mut moves: [Vec<f64>; 2] = Default::default();
        let mut big: Vec<f64> = Vec::new();
        let mut number = 10 * TXS;
        for trial in 0..TRIALS {
            // The reads' window lies past the queue's part that the moves take (its head).
            let moved = MOVE * TRIALS as u64;
            let first = moved + 1 + rng.below(TXS - moved - READ);
            let hash_read = |z: &str, from: u64, scores: bool| {
                redis::cmd("EVALSHA")
                    .arg(&read)
                    .arg(2)
                    .arg(key(z))
                    .arg(key("txs"))
                    .arg(from)
                    .arg(if scores { "1" } else { "0" })
                    .arg(READ)
                    .clone()
            };
            // The queue's read is one XRANGE from its first tx; the inflight set's adds its
            // scores in the same MULTI block, one round trip.
            let queue_read = redis::cmd("XRANGE")
                .arg(key("sqs"))
                .arg(format!("{first}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(READ)
                .clone();
            let inflight_first = (TXS + first) * STAGE_BITS;
            let mut inflight_read = redis::pipe();
            inflight_read
                .atomic()
                .cmd("XRANGE")
                .arg(key("sis"))
                .arg(format!("{}-0", TXS + first))
                .arg("+")
                .arg("COUNT")
                .arg(READ)
                .cmd("ZRANGE")
                .arg(key("si"))
                .arg(inflight_first)
                .arg("+inf")
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(READ)
                .arg("WITHSCORES");
            let (hq, hi) = (
                hash_read("hq", first, false),
                hash_read("hi", inflight_first, true),
            );
            let timed: [&dyn Fn(&mut redis::Connection) -> f64; 4] = [
                &|a| server(a, &["evalsha"], run(&hq)),
                &|a| server(a, &["xrange"], run(&queue_read)),
                &|a| server(a, &["evalsha"], run(&hi)),
                &|a| {
                    server(a, &["multi", "exec"], |a| {
                        let _: redis::Value = inflight_read.query(a).expect("MULTI read");
                    })
                },
            ];
            for (i, measure) in timed.iter().enumerate() {
                flush(admin);
                let cold = measure(admin);
                let warm = measure(admin);
                reads[i].push((cold, warm));
            }
            // Moves: the queue's next 50 (the head, as Dolos propagates), alternating which
            // layout goes first.
            for k in 0..2 {
                let layout = (k + trial) % 2;
                let z = if layout == 0 { "hq" } else { "sq" };
                let head: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                    .arg(key(z))
                    .arg(0)
                    .arg(MOVE - 1)
                    .query(admin)
                    .expect("the queue's head");
                let mut cmd = redis::cmd("EVALSHA");
                if layout == 0 {
                    cmd.arg(&hash_move).arg(2).arg(key("hq")).arg(key("hi"));
                } else {
                    cmd.arg(&stream_move)
                        .arg(4)
                        .arg(key("sq"))
                        .arg(key("sqs"))
                        .arg(key("sis"))
                        .arg(key("si"));
                }
                cmd.arg(number);
                for h in &head {
                    cmd.arg(&h[..]);
                }
                flush(admin);
                moves[layout].push(server(admin, &["evalsha"], run(&cmd)));
            }
            number += MOVE;
            // One plain `HMGET` of BIG_READ bodies, the reference's way to read 1000 txs.
            let from = rng.below(2 * TXS - BIG_READ) as usize;
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(key("txs"));
            for h in &all[from..from + BIG_READ as usize] {
                hmget.arg(&h[..]);
            }
            flush(admin);
            big.push(server(admin, &["hmget"], run(&hmget)));
        }
        util::delete_prefix(admin, &prefix);
        let labels = [
            "queue, 100 read: hash fields, script `ZRANGE` + `HMGET` (this crate's layout)",
            "queue, 100 read: stream entries, one `XRANGE … COUNT 100`",
            "inflight, 100 read with scores: hash fields, script `ZRANGE … WITHSCORES` + `HMGET` \
             (this crate's layout)",
            "inflight, 100 read with scores: stream entries, `MULTI` `XRANGE` + `ZRANGE … \
             WITHSCORES` `EXEC`",
        ];
        let mut rows: Vec<Measured> = labels
            .iter()
            .zip(&reads)
            .map(|(label, v)| Measured {
                label,
                cold: median(&v.iter().map(|(c, _)| *c).collect::<Vec<_>>()),
                warm: Some(median(&v.iter().map(|(_, w)| *w).collect::<Vec<_>>())),
            })
            .collect();
        rows.push(Measured {
            label: "`mark_inflight(50)`'s core: hash fields, scores change, bodies stay \
                    (this crate's layout)",
            cold: median(&moves[0]),
            warm: None,
        });
        rows.push(Measured {
            label: "`mark_inflight(50)`'s core: stream entries, each body copied to the \
                    inflight stream",
            cold: median(&moves[1]),
            warm: None,
        });
        rows.push(Measured {
            label: "1000 bodies in one plain `HMGET` (the reference's read of 1000 txs)",
            cold: median(&big),
            warm: None,
        });
        Layouts { rows }
    }
}
