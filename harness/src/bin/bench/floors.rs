//! What the server's Lua engine charges per item, and the least a script can cost for each of
//! the two marks and for `receive` on the very txs the calls move (issue 10, BENCHMARKS.md runs
//! m and n; `confirm`, whose block cannot be put back, has its own file, `confirm_floor.rs`).
//!
//! The batch calls' server time is mostly Lua carrying data, not the commands it runs (see
//! `--profile`): every argument becomes a Lua string, every reply item another, every number
//! sent back is formatted. The first table prices each of those steps with small scripts on no
//! keys, 50 items at a time as a batch call has them, each measured against a script that
//! differs only by that step. The second puts `mark_acknowledged(50)`, `mark_inflight(50)` and
//! `receive` next to scripts doing the least that call must do on the crate's own keys: the
//! floor moves the txs (one lookup and one write per tx, nothing else; for `mark_inflight` the
//! removal from the queue is the lookup; for `receive`, the record stored and the tx queued
//! under the next number), the floor with its event adds the one
//! stream entry every writing call owes its subscribers (`HINCRBY` of the event counter, `XADD`
//! of the hashes). A target below that floor cannot be met by any script doing the call's job
//! on this server and this key layout; another layout moves the work, not always away
//! (BENCHMARKS.md run n: a tx's stage kept in a hash instead of its score).
//!
//! Server time from `INFO commandstats` differences, as everywhere in the benchmark; the `SET`
//! unit from the `SET`s of 300 B made through the pool right after each measured call, as in
//! the steady state. Batches are drawn at random from the
//! scratch mempool's txs and put back after each measurement with plain commands, which the
//! figures do not count (they are not `EVALSHA`).

use dolos_redis::TxHash;
use dolos_redis_testkit::Rng;

use crate::util::{self, median};
use crate::{progress, Bench};

/// Items per batch, as in the issue's `mark_*(50)`.
pub const BATCH: usize = 50;
/// Rounds; each measures every row once (the primitives [`REPS`] times back to back).
pub const ROUNDS: usize = 300;
/// Back-to-back runs of each engine step (each followed by a `SET`) per round.
const REPS: usize = 10;
/// Inflight (Propagated) and pending txs of the scratch mempool.
const INFLIGHT: u64 = 1000;
const PENDING: u64 = 1000;
/// A tx's stage sits in the low bits of its inflight score, as in the crate.
const STAGE_BITS: u64 = 131_072;

/// The engine's steps, each a script run with 50 arguments and the script it is compared
/// with: (label, script, base script, arguments are hashes (else 11-digit numbers)). The
/// first row's base runs without arguments.
const STEPS: [(&str, &str, &str, bool); 6] = [
    (
        "an argument (32 B) becomes a Lua string",
        "return 0",
        "return 0",
        true,
    ),
    (
        "a table slot is set (`t[i] = ARGV[i]`)",
        "local t = {} for i = 1, #ARGV do t[i] = ARGV[i] end return 0",
        "return 0",
        true,
    ),
    (
        "a whole number becomes text (`string.format('%d', n)`)",
        "local x for i = 1, #ARGV do x = string.format('%d', 13107200000 + i) end return 0",
        "local x for i = 1, #ARGV do x = 13107200000 + i end return 0",
        true,
    ),
    (
        "text becomes a number (`tonumber` of 11 digits)",
        "local x for i = 1, #ARGV do x = tonumber(ARGV[i]) end return 0",
        "local x for i = 1, #ARGV do x = ARGV[i] end return 0",
        false,
    ),
    (
        "32 B more of a new string (`table.concat` of the hashes; Redis's Lua hashes every byte)",
        "local s = table.concat(ARGV) return 0",
        "return 0",
        true,
    ),
    (
        "a member's score is read (`ZMSCORE` into Lua)",
        "redis.call('ZMSCORE', KEYS[1], unpack(ARGV)) return 0",
        "return 0",
        true,
    ),
];

/// `mark_acknowledged`'s least: each Propagated tx's score + 1, and with `ARGV[1]` = `1` the
/// call's one event entry. KEYS: inflight, meta, events. ARGV: the flag, hashes.
const ACK_FLOOR: &str = "\
local s = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, 2))
local add, moved, k = {}, {}, 0
for i = 2, #ARGV do
  local x = tonumber(s[i - 1])
  if x and x % 131072 == 0 then
    k = k + 1
    moved[k] = ARGV[i]
    add[2 * k - 1] = string.format('%d', x + 1)
    add[2 * k] = ARGV[i]
  end
end
if k == 0 then return 0 end
if ARGV[1] == '1' then
  local n = redis.call('HINCRBY', KEYS[2], 'ev', string.format('%d', k)) - k + 1
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', '10000', string.format('%d-0', n), 'A',
    table.concat(moved))
end
redis.call('ZADD', KEYS[1], 'XX', unpack(add))
return k";

/// `mark_inflight`'s least: queued txs leave the queue and join the inflight set under
/// consecutive numbers, and with `ARGV[1]` = `1` the call's one event entry. The removal is
/// the lookup: its count tells that the whole batch was queued (the floor's batches are), as
/// in the call. KEYS: pending, inflight, meta, events. ARGV: the flag, hashes.
const PROP_FLOOR: &str = "\
local k = redis.call('ZREM', KEYS[1], unpack(ARGV, 2))
if k == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[3], 'ev', string.format('%d', k)) - k + 1
if ARGV[1] == '1' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', '10000', string.format('%d-0', n), 'R',
    table.concat(ARGV, '', 2))
end
local add = {}
for i = 1, k do
  add[2 * i - 1] = string.format('%d', (n + i - 1) * 131072)
  add[2 * i] = ARGV[i + 1]
end
redis.call('ZADD', KEYS[2], unpack(add))
return k";

/// `receive`'s least: the record stored and the tx queued under the next event number, and with
/// `ARGV[1]` = `1` its event entry. KEYS: txs, pending, meta, events. ARGV: the flag, the hash,
/// the record.
const RECV_FLOOR: &str = "\
local n = string.format('%d', redis.call('HINCRBY', KEYS[3], 'ev', '1'))
if ARGV[1] == '1' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', '10000', n .. '-0', 'P', ARGV[2])
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], n, ARGV[2])
return 1";

/// One engine step: per item, in µs and in `SET`s.
pub struct Step {
    pub label: &'static str,
    pub us: f64,
    pub sets: f64,
}

/// One call and its floors, in `SET`s of server time (medians over the rounds).
pub struct CallFloors {
    pub call: &'static str,
    /// The target for the call, in its `SET`s.
    pub target: f64,
    pub measured: f64,
    pub floor: f64,
    pub floor_event: f64,
}

pub struct Floors {
    pub steps: Vec<Step>,
    pub calls: Vec<CallFloors>,
    /// Median server µs of a `SET` of 300 B over the rounds.
    pub set_us: f64,
}

/// Server µs of the `EVALSHA`s that `run` makes, and of the `SET`s it makes through the pool
/// after each measured call (as in the steady state, `steady.rs`), each per call.
pub fn server_us(
    admin: &mut redis::Connection,
    run: impl FnOnce(&mut redis::Connection),
) -> (f64, f64) {
    let before = util::command_stats(admin);
    run(admin);
    let after = util::command_stats(admin);
    let per = |name| {
        let (calls, us) = util::usec(&before, &after, name);
        us as f64 / calls.max(1) as f64
    };
    (per("evalsha"), per("set"))
}

/// Server µs of one turn on `batch`, and of the `SET` after it: the call itself (`which` 0)
/// or the floor script `sha` on `keys`, without (1) or with (2) the call's event entry.
fn turn(
    admin: &mut redis::Connection,
    which: usize,
    call: impl FnOnce(),
    sha: &str,
    keys: &[&String],
    batch: &[TxHash],
    unit_set: &impl Fn(),
) -> (f64, f64) {
    server_us(admin, |a| {
        if which == 0 {
            call();
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(sha)
                .arg(keys.len())
                .arg(keys)
                .arg(if which == 2 { "1" } else { "0" });
            for h in batch {
                c.arg(&h.as_bytes()[..]);
            }
            let _: redis::Value = c.query(a).expect("a floor script");
        }
        unit_set();
    })
}

/// The scores of `batch` in the sorted set `key` (plain `ZMSCORE`, not measured).
fn scores_of(admin: &mut redis::Connection, key: &str, batch: &[TxHash]) -> Vec<Option<u64>> {
    redis::cmd("ZMSCORE")
        .arg(key)
        .arg(batch.iter().map(|h| &h.as_bytes()[..]).collect::<Vec<_>>())
        .query(admin)
        .expect("ZMSCORE")
}

/// `k` distinct indices below `n`.
fn pick(rng: &mut Rng, n: u64, k: usize) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::with_capacity(k);
    while out.len() < k {
        let i = rng.below(n);
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

impl Bench {
    pub fn floors(&mut self) -> Floors {
        progress(format!(
            "floors: the engine's steps, and the marks and receive against their least ({INFLIGHT} \
             inflight, {PENDING} pending)"
        ));
        let node = self.node("floors", 1000);
        let total = INFLIGHT + PENDING;
        node.fill(0..total);
        node.mark_all_inflight(0..INFLIGHT);
        let key = |k: &str| format!("{}:{k}", node.prefix);
        let (inflight, pending, meta, events) =
            (key("inflight"), key("pending"), key("meta"), key("events"));
        let admin = &mut self.admin;
        let mut rng = Rng::new(self.next_tag ^ 0xf1002);
        let hash_of = |i: u64| util::tx_hash(node.tag, i);

        let steps: Vec<(String, String, bool)> = STEPS
            .iter()
            .map(|(_, s, b, h)| (util::script_load(admin, s), util::script_load(admin, b), *h))
            .collect();
        let (ack_floor, prop_floor, recv_floor) = (
            util::script_load(admin, ACK_FLOOR),
            util::script_load(admin, PROP_FLOOR),
            util::script_load(admin, RECV_FLOOR),
        );
        let txs = key("txs");
        // Txs received by the `receive` rows, each new (and removed again after).
        let mut fresh = total;
        let set_key = key("floors:set");
        let unit_set = || {
            node.mp
                .baseline_set(&set_key, &[0x5a; util::PAYLOAD_LEN])
                .expect("SET")
        };

        let mut set_us = Vec::new();
        let mut step_sets: Vec<Vec<f64>> = vec![Vec::new(); STEPS.len()];
        let mut step_us: Vec<Vec<f64>> = vec![Vec::new(); STEPS.len()];
        // [call, floor, floor with event] for mark_acknowledged, mark_inflight, receive.
        let mut calls: [[Vec<f64>; 3]; 3] = Default::default();
        for round in 0..ROUNDS {
            // The engine's steps, on 50 inflight hashes (or 50 numbers).
            let batch: Vec<TxHash> = pick(&mut rng, INFLIGHT, BATCH)
                .into_iter()
                .map(hash_of)
                .collect();
            for (i, (step, base, hashes)) in steps.iter().enumerate() {
                let with_args = |sha: &str, args: bool| {
                    let mut c = redis::cmd("EVALSHA");
                    c.arg(sha).arg(1).arg(&inflight);
                    if args {
                        for (j, h) in batch.iter().enumerate() {
                            if *hashes {
                                c.arg(&h.as_bytes()[..]);
                            } else {
                                c.arg(format!("{}", 13_107_200_000u64 + j as u64));
                            }
                        }
                    }
                    c
                };
                let mut reps = |c: redis::Cmd| {
                    server_us(admin, |a| {
                        for _ in 0..REPS {
                            let _: redis::Value = c.query(a).expect("floors: a step");
                            unit_set();
                        }
                    })
                };
                let (a, u1) = reps(with_args(step, true));
                let (b, u2) = reps(with_args(base, i != 0));
                let per = (a - b) / BATCH as f64;
                set_us.extend([u1, u2]);
                step_us[i].push(per);
                step_sets[i].push(2.0 * per / (u1 + u2));
            }

            // mark_acknowledged(50): the call and its floors, each on a batch of its own of
            // Propagated txs, in a rotating order; then the batches are Propagated again.
            for k in 0..3 {
                let which = (k + round) % 3;
                let batch: Vec<TxHash> = pick(&mut rng, INFLIGHT, BATCH)
                    .into_iter()
                    .map(hash_of)
                    .collect();
                let keys = [&inflight, &meta, &events];
                let call = || {
                    node.mp
                        .mark_acknowledged(&batch)
                        .expect("mark_acknowledged");
                };
                let (us, unit) = turn(admin, which, call, &ack_floor, &keys, &batch, &unit_set);
                set_us.push(unit);
                calls[0][which].push(us / unit);
                // Back to Propagated: the stage bits of each score cleared.
                let scores = scores_of(admin, &inflight, &batch);
                let mut reset = redis::cmd("ZADD");
                reset.arg(&inflight).arg("XX");
                for (h, s) in batch.iter().zip(scores) {
                    let s = s.expect("an inflight tx of the floors' mempool");
                    reset.arg(s - s % STAGE_BITS).arg(&h.as_bytes()[..]);
                }
                let _: redis::Value = reset.query(admin).expect("ZADD (reset)");
            }

            // mark_inflight(50): the same, on pending txs, which go back to the queue under
            // their old numbers.
            for k in 0..3 {
                let which = (k + round) % 3;
                let batch: Vec<TxHash> = pick(&mut rng, PENDING, BATCH)
                    .into_iter()
                    .map(|i| hash_of(INFLIGHT + i))
                    .collect();
                let queued = scores_of(admin, &pending, &batch);
                let keys = [&pending, &inflight, &meta, &events];
                let call = || node.mp.mark_inflight(&batch).expect("mark_inflight");
                let (us, unit) = turn(admin, which, call, &prop_floor, &keys, &batch, &unit_set);
                set_us.push(unit);
                calls[1][which].push(us / unit);
                let mut back = redis::pipe();
                back.cmd("ZREM").arg(&inflight);
                for h in &batch {
                    back.arg(&h.as_bytes()[..]);
                }
                back.cmd("ZADD").arg(&pending);
                for (h, n) in batch.iter().zip(queued) {
                    back.arg(n.expect("a pending tx of the floors' mempool"))
                        .arg(&h.as_bytes()[..]);
                }
                let () = back.query(admin).expect("back to the queue");
            }

            // receive (300 B): the call and its floors, each on a new tx, which leaves again.
            for k in 0..3 {
                let which = (k + round) % 3;
                let tx = util::tx(node.tag, fresh);
                fresh += 1;
                let hash = &tx.hash.as_bytes()[..];
                // As the crate stores it: `<era>|<body>`.
                let mut record = format!("{}|", tx.payload.0).into_bytes();
                record.extend_from_slice(&tx.payload.1);
                let (us, unit) = server_us(admin, |a| {
                    if which == 0 {
                        node.mp.receive(tx.clone()).expect("receive");
                    } else {
                        let _: i64 = redis::cmd("EVALSHA")
                            .arg(&recv_floor)
                            .arg(4)
                            .arg(&[&txs, &pending, &meta, &events][..])
                            .arg(if which == 2 { "1" } else { "0" })
                            .arg(hash)
                            .arg(&record)
                            .query(a)
                            .expect("the receive floor");
                    }
                    unit_set();
                });
                set_us.push(unit);
                calls[2][which].push(us / unit);
                let mut gone = redis::pipe();
                gone.cmd("ZREM").arg(&pending).arg(hash);
                gone.cmd("HDEL").arg(&txs).arg(hash);
                let () = gone.query(admin).expect("the received tx leaves");
            }
        }
        let prefix = node.prefix.clone();
        drop(node);
        util::delete_prefix(admin, &prefix);

        let steps = STEPS
            .iter()
            .enumerate()
            .map(|(i, (label, ..))| Step {
                label,
                us: median(&step_us[i]),
                sets: median(&step_sets[i]),
            })
            .collect();
        let calls = [
            ("`mark_acknowledged(50)`", 80.0),
            ("`mark_inflight(50)`", 120.0),
            ("`receive` (300 B)", 15.0),
        ]
        .iter()
        .zip(&calls)
        .map(|((call, target), v)| CallFloors {
            call,
            target: *target,
            measured: median(&v[0]),
            floor: median(&v[1]),
            floor_event: median(&v[2]),
        })
        .collect();
        Floors {
            steps,
            calls,
            set_us: median(&set_us),
        }
    }
}
