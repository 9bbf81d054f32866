//! `confirm` in Dolos's steady state against the least a script doing a block's work costs
//! (issue 10, BENCHMARKS.md run n), the third row of the floors' table.
//!
//! The marks' floors (`floors.rs`) take batches from a fixed mempool and put them back; a block
//! cannot be put back, so here three mempools live the steady state of `steady.rs` side by side
//! (55 txs received and propagated per block, 50 of them acknowledged and seen a block later,
//! F = 6, D = 2, a log of 2000 txs that trims every block). The first confirms each block with
//! the crate's `confirm`; the other two with [`FLOOR`], a script doing only the per-tx work a
//! block asks for: the seen txs become Confirmed (one lookup and one write each), the txs of
//! the block F - 1 back finalize (they leave the inflight set and enter the log's index under
//! their sequence, and one log entry carries their hashes), the log's oldest txs leave with
//! their records; the third mempool's floor also writes the block's one event entry. The floor
//! drops nothing (the 5 txs a block that `confirm` drops are not propagated on its mempools),
//! checks no fence, keeps no applied chain (so no exactly-once) and checks no key type: those
//! are the call's guarantees, and what they cost is the ratio of the call to its floor with
//! the event. The three take turns, block by block, in a rotating order.

use dolos_redis::{ChainPoint, ConfirmOutcome, TxHash};

use crate::floors::{server_us, CallFloors};
use crate::steady::{self, D, F, LOG, PER_BLOCK, SEEN, WARM_UP};
use crate::util::{self, median};
use crate::{progress, Bench};

/// Measured blocks.
pub const BLOCKS: usize = 150;

/// The least a block's `confirm` does, and with `ARGV[1]` = `1` its event entry. KEYS: inflight,
/// confirmed, meta, txs, done, log, events. ARGV: the flag, F, the txs the log keeps, the
/// block's point, the seen hashes. Scores and entries as the crate's (src/keys.rs): a tx's
/// stage in the low bits of its inflight score, one P:confirmed entry per block of its
/// Confirmed txs (here without the height tag); the log's index scored by sequence.
pub const FLOOR: &str = "\
local F, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local H = redis.call('HINCRBY', KEYS[3], 'H', '1')
local Hs = string.format('%d', H)
local newly, add = {}, {}
if #ARGV > 4 then
  local s = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, 5))
  for i = 5, #ARGV do
    local x = tonumber(s[i - 4])
    if x and x % 131072 < 2 then
      newly[#newly + 1] = ARGV[i]
      add[#add + 1] = string.format('%d', x - x % 131072 + 2 + H)
      add[#add + 1] = ARGV[i]
    end
  end
end
if #newly > 0 then
  redis.call('ZADD', KEYS[1], 'XX', unpack(add))
  redis.call('ZADD', KEYS[2], Hs, table.concat(newly))
end
local top = string.format('%d', H - F + 1)
local fin = {}
for _, e in ipairs(redis.call('ZRANGE', KEYS[2], '-inf', top, 'BYSCORE')) do
  for j = 1, #e, 32 do fin[#fin + 1] = string.sub(e, j, j + 31) end
end
if #fin > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', top)
  redis.call('ZREM', KEYS[1], unpack(fin))
  local last = redis.call('HINCRBY', KEYS[3], 'lseq', string.format('%d', #fin))
  local first = last - #fin + 1
  local index = {}
  for i, hash in ipairs(fin) do
    index[2 * i - 1] = string.format('%d', first + i - 1)
    index[2 * i] = hash
  end
  redis.call('ZADD', KEYS[5], unpack(index))
  redis.call('XADD', KEYS[6], string.format('%d-%d', last, first), 't', table.concat(fin))
  local lfirst = last - keep + 1
  if lfirst > 1 then
    local below = string.format('(%d', lfirst)
    local gone = redis.call('ZRANGE', KEYS[5], '-inf', below, 'BYSCORE')
    if #gone > 0 then
      redis.call('HDEL', KEYS[4], unpack(gone))
      redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', below)
    end
    redis.call('XTRIM', KEYS[6], 'MINID', string.format('%d-0', lfirst))
  end
end
if ARGV[1] == '1' then
  local k = 1 + #newly + #fin
  local n = redis.call('HINCRBY', KEYS[3], 'ev', string.format('%d', k)) - k + 1
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', '10000', string.format('%d-0', n), 'b', ARGV[4],
    'h', Hs, 'C', table.concat(newly), 'F', table.concat(fin))
end
return #newly";

impl Bench {
    /// `confirm` (50 seen, steady state) and its two floors, in `SET`s of server time (medians
    /// over [`BLOCKS`] blocks).
    pub fn confirm_floor(&mut self) -> CallFloors {
        progress(format!(
            "floors: confirm in the steady state against its least ({WARM_UP} + {BLOCKS} \
             blocks, three mempools)"
        ));
        let tag = self.tag();
        let prefixes: Vec<String> = ["call", "floor", "floor-event"]
            .iter()
            .map(|p| format!("{}:confirm-floor:{p}", self.root))
            .collect();
        let mps: Vec<_> = prefixes
            .iter()
            .map(|p| steady::open(&self.url, p, LOG))
            .collect();
        let admin = &mut self.admin;
        let sha = util::script_load(admin, FLOOR);
        let keys: Vec<Vec<String>> = prefixes
            .iter()
            .map(|p| {
                [
                    "inflight",
                    "confirmed",
                    "meta",
                    "txs",
                    "done",
                    "log",
                    "events",
                ]
                .iter()
                .map(|k| format!("{p}:{k}"))
                .collect()
            })
            .collect();
        let hash = |i: u64| util::tx_hash(tag, i);
        let set_key = format!("{}:set", prefixes[0]);
        let unit_set = || {
            mps[0]
                .baseline_set(&set_key, &[0x5a; util::PAYLOAD_LEN])
                .expect("SET")
        };
        for mp in &mps {
            for i in 0..1000 {
                mp.receive(util::tx(tag, i)).expect("receive");
            }
        }
        let (mut next, mut head, mut slot) = (1000u64, 0u64, 0u64);
        let mut previous: Vec<TxHash> = Vec::new();
        let mut turns: [Vec<f64>; 3] = Default::default();
        for block in 0..WARM_UP + BLOCKS {
            let batch: Vec<TxHash> = (head..head + SEEN as u64).map(hash).collect();
            let extra: Vec<TxHash> = (head + SEEN as u64..head + PER_BLOCK).map(hash).collect();
            for (m, mp) in mps.iter().enumerate() {
                for k in next..next + PER_BLOCK {
                    mp.receive(util::tx(tag, k)).expect("receive");
                }
                mp.mark_inflight(&batch).expect("mark_inflight");
                if m == 0 {
                    // Only the call drops them; on the floors' mempools they stay queued.
                    mp.mark_inflight(&extra).expect("mark_inflight");
                }
                mp.mark_acknowledged(&batch).expect("mark_acknowledged");
            }
            next += PER_BLOCK;
            head += PER_BLOCK;
            slot += 10;
            let seen = std::mem::replace(&mut previous, batch);
            let point = ChainPoint::Slot(slot);
            for k in 0..3 {
                let which = (k + block) % 3;
                let (us, unit) = server_us(admin, |a| {
                    if which == 0 {
                        let outcome = mps[0].confirm(&point, &seen, &[], F, D).expect("confirm");
                        assert_eq!(outcome, ConfirmOutcome::Applied);
                    } else {
                        let mut c = redis::cmd("EVALSHA");
                        c.arg(&sha)
                            .arg(keys[which].len())
                            .arg(&keys[which])
                            .arg(if which == 2 { "1" } else { "0" })
                            .arg(F)
                            .arg(LOG)
                            .arg(slot);
                        for h in &seen {
                            c.arg(&h.as_bytes()[..]);
                        }
                        let n: usize = c.query(a).expect("the confirm floor");
                        assert!(n == seen.len(), "the floor confirmed {n}");
                    }
                    unit_set();
                });
                if block >= WARM_UP {
                    turns[which].push(us / unit);
                }
            }
            // The floors' mempools keep their marks short, as `confirm` does (untimed).
            for p in &prefixes[1..] {
                let _: () = redis::cmd("ZREMRANGEBYRANK")
                    .arg(format!("{p}:marks"))
                    .arg(0)
                    .arg(-(D as i64) - 2)
                    .query(admin)
                    .expect("ZREMRANGEBYRANK");
            }
        }
        drop(mps);
        for p in &prefixes {
            util::delete_prefix(admin, p);
        }
        CallFloors {
            call: "`confirm` (50 seen, steady state)",
            target: 300.0,
            measured: median(&turns[0]),
            floor: median(&turns[1]),
            floor_event: median(&turns[2]),
        }
    }
}
