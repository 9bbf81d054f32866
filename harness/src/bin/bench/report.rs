//! What the benchmark measured, and the report it prints (Markdown, to stdout): the targets met
//! or missed first, then a table per phase.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::options::Opts;
use crate::util::{self, check, human_count, median, ms, sorted, times, us, Samples};
use crate::{Call, API_CALLS, POOL, THREADS};

pub struct RoundTrips {
    /// Top-level commands from the pool per measured call.
    pub per_call: Vec<usize>,
    /// Names of those commands.
    pub names: BTreeSet<String>,
    /// Commands run inside the script (`[0 lua]` lines), per call on average.
    pub inner: f64,
}

impl RoundTrips {
    fn exactly(&self, n: usize) -> bool {
        !self.per_call.is_empty() && self.per_call.iter().all(|&k| k == n)
    }

    fn cell(&self) -> String {
        let min = self.per_call.iter().min().copied().unwrap_or(0);
        let max = self.per_call.iter().max().copied().unwrap_or(0);
        let names = self.names.iter().cloned().collect::<Vec<_>>().join(", ");
        if min == max {
            format!("{min} ({names})")
        } else {
            let avg = self.per_call.iter().sum::<usize>() as f64 / self.per_call.len() as f64;
            format!("{avg:.2} ({min}–{max}; {names})")
        }
    }
}

pub struct Throughput {
    pub set1: f64,
    pub recv1: f64,
    pub set8: f64,
    pub recv8: f64,
}

pub struct Memory {
    pub pending: f64,
    pub inflight: f64,
    pub finalized: f64,
    /// Key (without the prefix) → bytes per tx (`MEMORY USAGE`) when the txs are pending,
    /// inflight, finalized.
    pub by_key: BTreeMap<String, [f64; 3]>,
}

pub struct Scaling {
    pub sizes: Vec<usize>,
    pub fill: Vec<Duration>,
    /// Per size, per call.
    pub samples: Vec<HashMap<Call, Samples>>,
    /// Per size, per call: the median over rounds of (this size's median in the round / the
    /// smallest size's median in the same round).
    pub ratios: Vec<HashMap<Call, f64>>,
    /// Server time (SLOWLOG), per size, per call; empty if the server refused.
    pub server: Vec<HashMap<Call, Samples>>,
}

/// What a takeover row is held to.
pub enum Goal {
    /// Median and max, in ms.
    MedianMax(f64, f64),
    /// Max only, in ms.
    Max(f64),
}

/// One kind of watcher failure and the takeovers measured after it.
pub struct TakeoverRow {
    pub what: &'static str,
    /// One figure per trial, in ms (each row says from when).
    pub ms: Vec<f64>,
    pub goal: Goal,
    /// For the faults whose sockets stay open: how many trials saw a takeover before the
    /// lock could expire (must be none).
    pub early: Option<usize>,
}

pub struct Takeover {
    pub rows: Vec<TakeoverRow>,
    /// Whether the TTL-path trials ran staggered in parallel.
    pub staggered: bool,
}

/// What the phases measured; a phase left out with `--only` leaves its field empty.
#[derive(Default)]
pub struct Results {
    pub machine: Vec<(String, String)>,
    pub memory: Option<Memory>,
    pub round_trips: Option<HashMap<Call, RoundTrips>>,
    pub server_time: Option<HashMap<Call, Samples>>,
    pub latency: Option<HashMap<Call, Samples>>,
    pub throughput: Option<Throughput>,
    pub scaling: Option<Scaling>,
    pub takeover: Option<Takeover>,
    pub steady: Option<crate::steady::Steady>,
    pub floors: Option<crate::floors::Floors>,
    pub layouts: Option<crate::layouts::Layouts>,
    pub per_item: Option<crate::per_item::PerItem>,
    /// What → its pages.
    pub longest: Option<BTreeMap<&'static str, crate::steady::Longest>>,
    pub profiles: Vec<(String, Call, usize, util::CommandStats)>,
}

struct Report {
    lines: Vec<String>,
    targets: Vec<(String, String, bool)>,
}

impl Report {
    fn line(&mut self, s: impl Into<String>) {
        self.lines.push(s.into());
    }

    fn target(&mut self, what: impl Into<String>, measured: impl Into<String>, ok: bool) {
        self.targets.push((what.into(), measured.into(), ok));
    }

    fn machine(&mut self, res: &Results, opts: &Opts, elapsed: Duration) {
        let args: Vec<String> = dolos_redis_harness::cli::args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let command = if args.is_empty() {
            "cargo perf".to_string()
        } else {
            format!("cargo perf {}", args.join(" "))
        };
        self.line("### Machine");
        self.line("");
        self.line("| | |");
        self.line("|---|---|");
        for (k, v) in &res.machine {
            self.line(format!("| {k} | {v} |"));
        }
        self.line(format!(
            "| load average at end | {} |",
            util::load_average()
        ));
        self.line(format!(
            "| command | `{command}` ({} mode, {:.0} s) |",
            opts.mode,
            elapsed.as_secs_f64()
        ));
        self.line("");
    }

    fn per_call(&mut self, res: &Results, opts: &Opts) {
        let (Some(rt), Some(lat)) = (&res.round_trips, &res.latency) else {
            return;
        };
        let set = lat.get(&Call::Set).cloned().unwrap_or_default();
        self.line(format!(
            "### Per call (one thread; 1000 pending, 1000 inflight; {} timed calls each, {} of \
             the batch calls; {} counted with MONITOR)",
            set.len(),
            Call::Confirm.share(set.len()),
            opts.counted
        ));
        self.line("");
        self.line(
            "| call | round trips (commands) | commands inside the script | median µs | p99 µs \
             | server µs (median) | median / SET |",
        );
        self.line("|---|---|---:|---:|---:|---:|---:|");
        for call in std::iter::once(Call::Set).chain(API_CALLS) {
            let s = lat.get(&call).cloned().unwrap_or_default();
            let round = rt.get(&call);
            let server = res
                .server_time
                .as_ref()
                .and_then(|m| m.get(&call))
                .map(|s| us(s.median()))
                .unwrap_or_else(|| "–".into());
            self.line(format!(
                "| {} | {} | {} | {} | {} | {} | {:.2}× |",
                call.label(),
                round.map(RoundTrips::cell).unwrap_or_else(|| "–".into()),
                round
                    .map(|x| format!("{:.0}", x.inner))
                    .unwrap_or_else(|| "–".into()),
                us(s.median()),
                us(s.p99()),
                server,
                s.median().as_secs_f64() / set.median().as_secs_f64()
            ));
        }
        self.line("");
        self.line(
            "Round trips: top-level commands the server received from the pool's connections \
             during the call, a `MULTI` block counting as one (MONITOR; `[0 lua]` lines are the commands the script ran, shown \
             in the next column; the lease thread has its own connection and is not counted). \
             Server µs: execution time of the call in SLOWLOG (threshold 0, on only in chunks \
             between the latency rounds).",
        );
        self.line("");
        // Reads of more than 32 txs are plain commands: the hashes (a script for the log's
        // lines), then the bodies (src/mempool/txs.rs).
        let expected = |c: &Call| match c {
            Call::PeekPending | Call::PeekInflight | Call::DumpFinalized => 2,
            _ => 1,
        };
        let bad: Vec<&str> = API_CALLS
            .iter()
            .filter(|c| !rt.get(c).is_some_and(|r| r.exactly(expected(c))))
            .map(|c| c.label())
            .collect();
        self.target(
            "exactly 1 round trip per call (2 for reads of more than 32 txs)",
            if bad.is_empty() {
                "1 for every call, 2 for `peek_pending(50)`, `peek_inflight(100)` and \
                 `dump_finalized(0, 100)`"
                    .to_string()
            } else {
                format!("not as expected: {}", bad.join(", "))
            },
            bad.is_empty(),
        );
    }

    fn steady(&mut self, res: &Results) {
        let Some(st) = &res.steady else {
            return;
        };
        self.line(format!(
            "### Server time per call, in `SET`s (steady state: F = 6, D = 2, {} blocks)",
            st.blocks
        ));
        self.line("");
        // This machine's SET units against the issue's: the median factor of its reference
        // scripts (plain commands scale by the plain HMGET's).
        let factors = st.factors();
        let script_factor = median(factors.get(..4).unwrap_or(&[]));
        let plain_factor = factors.get(4).copied().unwrap_or(f64::NAN);
        self.line(
            "| call | server µs | in `SET`s | target | | ≈ the issue's `SET`s | end to end µs | \
             `SET` right after, µs | ratio |",
        );
        self.line("|---|---:|---:|---:|---|---:|---:|---:|---:|");
        for row in &st.rows {
            let server = crate::steady::trimmed(&row.server);
            let units = server / st.set_us;
            let calls: Vec<f64> = row.e2e.iter().map(|(c, _)| *c).collect();
            let sets: Vec<f64> = row.e2e.iter().map(|(_, s)| *s).collect();
            let ratios: Vec<f64> = row.e2e.iter().map(|(c, s)| c / s).collect();
            let ok = units <= row.target;
            let factor = if row.label.starts_with("`dump") || row.label.starts_with("`peek") {
                plain_factor
            } else {
                script_factor
            };
            self.line(format!(
                "| {} | {server:.1} | **{units:.1}** | ≤ {:.0} | {} | {:.0} | {:.1} | {:.1} | \
                 {:.2}× |",
                row.label,
                row.target,
                check(ok),
                units / factor,
                median(&calls),
                median(&sets),
                median(&ratios)
            ));
            self.target(
                format!("{} ≤ {:.0} `SET`s of server time", row.label, row.target),
                format!("{units:.1} ({server:.1} µs; `SET` {:.2} µs)", st.set_us),
                ok,
            );
        }
        self.line("");
        self.line(
            "What Redis itself needs, measured the same way in the same windows, next to the \
             issue's figures (its machine):",
        );
        self.line("");
        self.line("| reference | µs | in `SET`s here | the issue's `SET`s | here / issue |");
        self.line("|---|---:|---:|---:|---:|");
        for ((label, issue, _), (v, f)) in crate::steady::REFERENCES
            .iter()
            .zip(st.references.iter().zip(&factors))
        {
            let server = crate::steady::trimmed(v);
            self.line(format!(
                "| {label} | {server:.1} | {:.1} | {issue:.1} | {f:.2} |",
                server / st.set_us
            ));
        }
        self.line("");
        self.line(
            "The bulk reads (past 32 txs plain commands: the ids, then `HMGET` of the bodies) \
             against the least a script does for them on the same txs, and the same commands \
             sent plain, as the calls send theirs, both as cold (each run in the call's place on \
             one block in three; see `COLD` in steady.rs), and the warm script floor above \
             (`SET`s: this run's unit):",
        );
        self.line("");
        self.line(
            "| call | call µs | cold script floor µs | call / cold script floor | cold plain floor µs (`SET`s) | call / cold plain floor | warm floor µs |",
        );
        self.line("|---|---:|---:|---:|---:|---:|---:|");
        let warm = st
            .references
            .get(2)
            .map(|v| crate::steady::trimmed(v))
            .unwrap_or(f64::NAN);
        for (((row, label, _, _), v), p) in crate::steady::COLD.iter().zip(&st.cold).zip(&st.plain)
        {
            let call = st
                .rows
                .get(*row)
                .map(|r| crate::steady::trimmed(&r.server))
                .unwrap_or(f64::NAN);
            let floor = crate::steady::trimmed(v);
            let plain = crate::steady::trimmed(p);
            self.line(format!(
                "| {label} | {call:.1} | {floor:.1} | {:.2} | {plain:.1} ({:.1}) | {:.2} | {warm:.1} |",
                call / floor,
                plain / st.set_us,
                call / plain
            ));
        }
        let spread = util::sorted(&st.set_per_block);
        self.line("");
        self.line(format!(
            "\"≈ the issue's `SET`s\" divides by the median here/issue factor of the four \
             reference scripts ({script_factor:.2}; the plain `HMGET`'s, {plain_factor:.2}, for \
             the calls made of plain commands: both reads and `dump_finalized`): an estimate, as the references disagree. \
             Each reference runs {} times back to back in its window, as a benchmark of it \
             alone would (once, right after the window's `INFO`, it ran cold and cost up to \
             twice as much). \
             `SET` unit: {:.2} µs of server time (median of the blocks' means; blocks ranged \
             {:.2}–{:.2} µs). Server µs: mean of the middle half of the blocks; each block's \
             figure is an `INFO commandstats` difference around the call (`evalsha`; `zrange` and \
             `hmget`, or `exec` and `hmget`, for the reads; the two `exec`s of `dump_finalized`). End to end: medians over every call, and of the ratio to the \
             `SET` made right after each one.",
            crate::steady::REFERENCE_RUNS,
            st.set_us,
            spread.first().copied().unwrap_or(f64::NAN),
            spread.last().copied().unwrap_or(f64::NAN)
        ));
        self.line("");
    }

    fn floors(&mut self, res: &Results) {
        let Some(f) = &res.floors else {
            return;
        };
        self.line(
            "### What the Lua engine charges per item, and the batch calls against their least",
        );
        self.line("");
        self.line("| step, per item | µs | in `SET`s |");
        self.line("|---|---:|---:|");
        for s in &f.steps {
            self.line(format!("| {} | {:.3} | {:.2} |", s.label, s.us, s.sets));
        }
        self.line("");
        self.line(
            "| call | target (the issue's `SET`s) | the call | its floor | its floor with the \
             event entry | call / floor with event |",
        );
        self.line("|---|---:|---:|---:|---:|---:|");
        for c in &f.calls {
            self.line(format!(
                "| {} | ≤ {:.0} | {:.1} | {:.1} | {:.1} | {:.2} |",
                c.call,
                c.target,
                c.measured,
                c.floor,
                c.floor_event,
                c.measured / c.floor_event
            ));
        }
        self.line("");
        self.line(format!(
            "Server time in `SET`s of this run (a `SET` of 300 B through the pool right after \
             each measured call, as in the steady state: {:.2} µs, median); medians of {} \
             rounds. Steps: scripts on no keys with {} arguments, each \
             against one that differs only by that step (`floors.rs`). Floors: on a mempool of \
             its own, each mark and two scripts doing the least it must — one lookup and one \
             write per tx; then also the one event entry every writing call owes its \
             subscribers — on batches of their own, drawn at random and put back after. \
             `confirm`: three mempools in the steady state side by side, {} blocks, one \
             confirming with the call, two with a script doing only a block's per-tx work \
             (the seen txs Confirmed, the block F - 1 back finalized into the log, the log's \
             oldest txs gone with their records; no drops, fence, applied chain or type checks: \
             the call's guarantees, which the ratio prices), the second with the event entry \
             (`confirm_floor.rs`).",
            f.set_us,
            crate::floors::ROUNDS,
            crate::floors::BATCH,
            crate::confirm_floor::BLOCKS,
        ));
        self.line("");
    }

    fn layouts(&mut self, res: &Results) {
        let Some(l) = &res.layouts else {
            return;
        };
        self.line("### The bulk calls' core on cold memory, by where live bodies are kept");
        self.line("");
        self.line("| what | cold µs | warm µs | cold / warm |");
        self.line("|---|---:|---:|---:|");
        for row in &l.rows {
            let (warm, ratio) = match row.warm {
                Some(w) => (format!("{w:.1}"), format!("{:.2}", row.cold / w)),
                None => ("–".to_string(), "–".to_string()),
            };
            self.line(format!(
                "| {} | {:.1} | {warm} | {ratio} |",
                row.label, row.cold
            ));
        }
        self.line("");
        self.line(format!(
            "Plain commands and small scripts on keys of their own (`layouts.rs`), doing the \
             least each call needs: {} queued and {} inflight txs stored both ways, interleaved \
             with other values; before each cold measurement the server scans a 64 MB string, \
             the warm read is the same one again; medians of {} each. (A `SET` made in these \
             conditions is itself cold, so no `SET` units here.)",
            crate::layouts::TXS,
            crate::layouts::TXS,
            crate::layouts::TRIALS
        ));
        self.line("");
    }

    fn per_item(&mut self, res: &Results) {
        let Some(p) = &res.per_item else {
            return;
        };
        let set = p.set_us();
        self.line("### End to end per item, next to the reference (issue 10's first table)");
        self.line("");
        self.line(
            "| call | µs here | per item | reference on its machine: round trips / µs | per \
             item | the reference's least here | per item | counted as | |",
        );
        self.line("|---|---:|---:|---:|---:|---:|---:|---|---|");
        for ((r, v), (least, how)) in crate::per_item::REFERENCES
            .iter()
            .zip(&p.calls)
            .zip(p.least())
        {
            let here = median(&v.iter().map(|(c, _)| *c).collect::<Vec<_>>());
            let items = r.items as f64;
            let ok = here <= least;
            self.line(format!(
                "| {} | {here:.0} | {:.2} | {} / {:.0} | {:.2} | {least:.0} | {:.2} | {how} | {} |",
                r.label,
                here / items,
                r.round_trips,
                r.us,
                r.us / items,
                least / items,
                check(ok)
            ));
            self.target(
                format!(
                    "{} end to end per item ≤ the reference's least here",
                    r.label
                ),
                format!(
                    "{:.2} vs {:.2} µs per item ({here:.0} vs {least:.0} µs: {how})",
                    here / items,
                    least / items
                ),
                ok,
            );
        }
        self.line("");
        self.line(format!(
            "The reference's least here: its round trips, each at least a `SET`'s ({set:.0} µs, \
             the median of the `SET`s made right after each call), and the one that carries the \
             bodies at least a plain command returning as many. `peek_inflight(1000)` is one \
             page of plain commands: a `MULTI` block with the ids and scores, `H`, the points \
             and the marks, then `HMGET` of the bodies. Medians of {} rounds, every call \
             followed by a `SET` (`per_item.rs`).",
            p.plain_inflight.len()
        ));
        self.line("");
    }

    fn longest(&mut self, res: &Results) {
        let Some(longest) = &res.longest else {
            return;
        };
        self.line("### The longest single command while a large mempool is read whole");
        self.line("");
        self.line(
            "| call | txs read | pages | page µs, median | p99 | pages over 2 ms | longest \
             command |",
        );
        self.line("|---|---:|---:|---:|---:|---:|---:|");
        for (what, l) in longest {
            self.line(format!(
                "| `{what}` | {} | {} | {:.0} | {:.0} | {} | {} µs |",
                human_count(l.txs),
                l.pages,
                l.median,
                l.p99,
                l.over_2ms,
                l.longest
            ));
            if *what == crate::steady::PLAIN_HMGET {
                continue;
            }
            self.target(
                format!(
                    "no command over ~2 ms during `{what}` of {}",
                    human_count(l.txs)
                ),
                format!(
                    "longest {} µs; pages: median {:.0} µs, p99 {:.0} µs, {} of {} over 2 ms",
                    l.longest, l.median, l.p99, l.over_2ms, l.pages
                ),
                l.longest <= 2000,
            );
        }
        self.line("");
        self.line(
            "SLOWLOG at a 0 µs threshold during the call: a page's figure is its costliest \
             command, the `HMGET` of its bodies (its records, for the log); the \
             longest command is over every entry. On a shared 2-core machine the longest entry \
             includes whatever preemption hit it; the median and p99 say what a page costs.",
        );
        self.line("");
    }

    fn limit(&mut self, res: &Results, opts: &Opts) {
        let Some(tput) = &res.throughput else {
            return;
        };
        let lat = res.latency.clone().unwrap_or_default();
        let set = lat.get(&Call::Set).cloned().unwrap_or_default();
        let recv = lat.get(&Call::Receive).cloned().unwrap_or_default();
        let server = |call| {
            res.server_time
                .as_ref()
                .and_then(|m: &HashMap<Call, Samples>| m.get(&call))
                .map(|s| us(s.median()))
                .unwrap_or_else(|| "–".into())
        };
        let lat_ratio = recv.median().as_secs_f64() / set.median().as_secs_f64();
        let tput_ratio = tput.recv8 / tput.set8;
        self.line("### Against the limit: a plain `SET` through the same pool");
        self.line("");
        self.line(format!(
            "| | median µs (1 thread) | p99 µs | server µs | calls/s, 1 thread | calls/s, \
             {THREADS} threads |"
        ));
        self.line("|---|---:|---:|---:|---:|---:|");
        self.line(format!(
            "| `SET` 300 B | {} | {} | {} | {:.0} | {:.0} |",
            us(set.median()),
            us(set.p99()),
            server(Call::Set),
            tput.set1,
            tput.set8
        ));
        self.line(format!(
            "| `receive` 300 B | {} | {} | {} | {:.0} | {:.0} |",
            us(recv.median()),
            us(recv.p99()),
            server(Call::Receive),
            tput.recv1,
            tput.recv8
        ));
        self.line(format!(
            "| `receive` / `SET` | **{}** | {} | | {} | **{}** |",
            times(lat_ratio),
            times(recv.p99().as_secs_f64() / set.p99().as_secs_f64()),
            times(tput.recv1 / tput.set1),
            times(tput_ratio)
        ));
        self.line("");
        self.line(format!(
            "Latency: `receive` and `SET` alternate call by call. Throughput: {THREADS} threads \
             share one `RedisMempool` (clones) with `pool_size({POOL})`; each figure is the \
             total of {} alternating runs of {:.2} s.",
            opts.tput_rounds,
            opts.throughput.as_secs_f64() / opts.tput_rounds as f64
        ));
        self.line("");
        if res.latency.is_some() {
            self.target(
                "`receive` latency ≤ 1.3× `SET`",
                format!(
                    "{:.2}× ({} vs {} µs)",
                    lat_ratio,
                    us(recv.median()),
                    us(set.median())
                ),
                lat_ratio <= 1.3,
            );
        }
        self.target(
            format!("{THREADS}-thread `receive` throughput ≥ 0.5× `SET`"),
            format!(
                "{:.2}× ({:.0} vs {:.0} /s)",
                tput_ratio, tput.recv8, tput.set8
            ),
            tput_ratio >= 0.5,
        );
    }

    fn scaling(&mut self, res: &Results, opts: &Opts) {
        let Some(scaling) = &res.scaling else {
            return;
        };
        let sizes = &scaling.sizes;
        let (first, last) = (human_count(sizes[0]), human_count(sizes[sizes.len() - 1]));
        self.line(format!(
            "### Scaling (median µs, one thread; {} calls per size, {} of the batch calls; ratio \
             to {first}, paired by round)",
            opts.iters,
            Call::Confirm.share(opts.iters)
        ));
        self.line("");
        let mut head = "| call |".to_string();
        let mut rule = "|---|".to_string();
        for &n in sizes {
            head.push_str(&format!(" {} |", human_count(n)));
            rule.push_str("---:|");
        }
        head.push_str(" worst ratio | target | server µs at each size |");
        rule.push_str("---:|---|---:|");
        self.line(head);
        self.line(rule);
        for (call, what) in [
            (Call::Receive, "pending"),
            (Call::MarkInflight, "pending"),
            (Call::StatusPending, "pending"),
            (Call::Confirm, "inflight"),
            (Call::RollbackTo1, "inflight"),
            (Call::RollbackTo10, "inflight"),
        ] {
            let medians: Vec<f64> = scaling
                .samples
                .iter()
                .map(|m| {
                    m.get(&call)
                        .map(|s| s.median().as_secs_f64())
                        .unwrap_or(0.0)
                })
                .collect();
            let mut row = format!("| {} at N {what} |", call.label());
            let mut worst: f64 = 1.0;
            for (i, m) in medians.iter().enumerate() {
                let ratio = scaling.ratios[i].get(&call).copied().unwrap_or(f64::NAN);
                worst = worst.max(ratio);
                if i == 0 {
                    row.push_str(&format!(" {:.1} |", m * 1e6));
                } else {
                    row.push_str(&format!(" {:.1} ({ratio:.2}×) |", m * 1e6));
                }
            }
            let ok = worst <= 1.3;
            let server: Vec<String> = scaling
                .server
                .iter()
                .map(|m| m.get(&call).map(|s| us(s.median())).unwrap_or("–".into()))
                .collect();
            row.push_str(&format!(
                " {worst:.2}× | ≤ 1.3× {} | {} |",
                check(ok),
                server.join(" / ")
            ));
            self.line(row);
            self.target(
                format!("{} flat from {first} to {last} {what}", call.label()),
                format!("{worst:.2}×"),
                ok,
            );
        }
        self.line("");
        let fills: Vec<String> = sizes
            .iter()
            .zip(&scaling.fill)
            .map(|(n, d)| {
                format!(
                    "{} in {:.1} s ({:.0}/s)",
                    human_count(*n),
                    d.as_secs_f64(),
                    *n as f64 / d.as_secs_f64()
                )
            })
            .collect();
        self.line(format!(
            "All sizes are live at once and measured in alternating rounds; a ratio is the \
             median over rounds of (this size's median / the smallest size's median in the same \
             round), so load that comes and goes between rounds cancels out. Filled through \
             `receive` with {THREADS} threads: {}. `receive` and `mark_inflight` keep the size \
             steady (what they add or move is retired or rolled back, untimed); `confirm` \
             applies a new block whose 50 txs are inflight, then the block is rolled back \
             (untimed).",
            fills.join(", ")
        ));
        self.line("");
    }

    fn memory(&mut self, res: &Results, opts: &Opts) {
        let Some(memory) = &res.memory else {
            return;
        };
        self.line(format!(
            "### Redis memory per tracked tx beyond its {} B payload (`INFO memory` delta over \
             {} txs)",
            util::PAYLOAD_LEN,
            human_count(opts.memory_txs)
        ));
        self.line("");
        self.line("| | pending | inflight | in the finalized log |");
        self.line("|---|---:|---:|---:|");
        self.line(format!(
            "| **used_memory delta − payload** | **{:.0} B** | **{:.0} B** | **{:.0} B** |",
            memory.pending, memory.inflight, memory.finalized
        ));
        let events = memory.by_key.get("events").copied().unwrap_or_default();
        self.line(format!(
            "| of which the event stream (until it reaches `event_history`) | {:.0} B | {:.0} B \
             | {:.0} B |",
            events[0], events[1], events[2]
        ));
        self.line(format!(
            "| without the event stream | {:.0} B | {:.0} B | {:.0} B |",
            memory.pending - events[0],
            memory.inflight - events[1],
            memory.finalized - events[2]
        ));
        self.target(
            "Redis memory beyond the payload ≤ 300 B per pending tx (event stream included)",
            format!(
                "{:.0} B ({:.0} B without the stream)",
                memory.pending,
                memory.pending - events[0]
            ),
            memory.pending <= 300.0,
        );
        self.target(
            "Redis memory beyond the payload ≤ 450 B per inflight tx (event stream included)",
            format!(
                "{:.0} B ({:.0} B without the stream)",
                memory.inflight,
                memory.inflight - events[1]
            ),
            memory.inflight <= 450.0,
        );
        for (key, [p, i, f]) in &memory.by_key {
            if p.abs() < 0.5 && i.abs() < 0.5 && f.abs() < 0.5 {
                continue;
            }
            self.line(format!(
                "| `MEMORY USAGE` of `P:{key}` | {p:.0} B | {i:.0} B | {f:.0} B |"
            ));
        }
        self.line("");
        self.line(
            "The delta leaves out the clients' buffers (`mem_clients_normal`), which hold what \
             the connections last carried, not the data. Per-key figures are `MEMORY USAGE … \
             SAMPLES 0` per tx and include the payload where the key holds it (`txs`, `log`); \
             the event stream grows with every transition until it reaches its configured \
             length.",
        );
        self.line("");
    }

    fn takeover(&mut self, res: &Results, opts: &Opts) {
        let Some(takeover) = &res.takeover else {
            return;
        };
        let stats = |v: &[f64]| -> (f64, f64, f64) {
            let s = sorted(v);
            (
                s.first().copied().unwrap_or(f64::NAN),
                median(v),
                s.last().copied().unwrap_or(f64::NAN),
            )
        };
        self.line(format!(
            "### Watcher takeover ({} trials each, 2 nodes, ms)",
            opts.trials
        ));
        self.line("");
        self.line("| | min | median | max | target |");
        self.line("|---|---:|---:|---:|---|");
        for row in &takeover.rows {
            let (min, med, max) = stats(&row.ms);
            let (goal, mut ok) = match row.goal {
                Goal::MedianMax(m, x) => (
                    format!("median ≤ {m:.0}, max ≤ {x:.0}"),
                    med <= m && max <= x,
                ),
                Goal::Max(x) => (format!("max ≤ {x:.0}"), max <= x),
            };
            let early = match row.early {
                Some(n) => {
                    ok &= n == 0;
                    format!("; {n} taken over before the lock could expire")
                }
                None => String::new(),
            };
            self.line(format!(
                "| {} | {} | {} | {} | {goal}{early} {} |",
                row.what,
                ms(min),
                ms(med),
                ms(max),
                check(ok)
            ));
            self.target(
                format!(
                    "takeover, {}: {goal}{}",
                    row.what,
                    if row.early.is_some() {
                        ", none early"
                    } else {
                        ""
                    }
                ),
                format!("median {} ms, max {} ms{early}", ms(med), ms(max)),
                ok,
            );
        }
        self.line("");
        self.line(format!(
            "The watcher runs in a process of its own (`bench holder`), the follower in the \
             benchmark's; takeover is the moment the follower's `is_watcher()` turns true. The \
             faults come at a random point (0–400 ms) of the renewal cycle. After a kill -9 \
             the follower sees the watcher's liveness subscription gone (checks every 100 ms) \
             and takes the lock well before it expires; without the checks, and for a paused or \
             cut-off watcher (whose sockets stay open), the lock's TTL decides. The expiry is \
             estimated from the lock's PTTL read right after the fault, counted from before \
             the command was sent (so \"before the lock could expire\" is never a false alarm). \
             The kill -9 trials ran one after the other; the others {}.",
            if takeover.staggered {
                "staggered 130 ms apart, each with its own prefix and processes"
            } else {
                "one after the other"
            }
        ));
        self.line("");
    }

    fn profiles(&mut self, res: &Results) {
        if res.profiles.is_empty() {
            return;
        }
        self.line("### Where the server time goes (`--profile`)");
        self.line("");
        self.line(
            "Per measured call: the commands its script ran (`INFO commandstats`), as count × \
             and total µs; the rest of the server time is Lua itself and the call's setup.",
        );
        self.line("");
        self.line(
            "| call | where | script total µs | inner commands (count, µs), most costly first |",
        );
        self.line("|---|---|---:|---|");
        for (label, call, n, stats) in &res.profiles {
            let n = (*n).max(1) as f64;
            let mut inner: Vec<(&String, &(u64, u64))> = stats
                .iter()
                .filter(|(name, _)| !matches!(name.as_str(), "evalsha" | "eval" | "set"))
                // Less than once per call: another node's lease traffic, not this call.
                .filter(|(_, (calls, _))| *calls as f64 / n >= 0.5)
                .collect();
            inner.sort_by_key(|entry| std::cmp::Reverse(entry.1 .1));
            let top = inner
                .iter()
                .map(|(name, (calls, usec))| {
                    format!(
                        "{} {:.0}× {:.1}",
                        name.to_uppercase(),
                        *calls as f64 / n,
                        *usec as f64 / n
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let total = stats
                .iter()
                .filter(|(name, _)| matches!(name.as_str(), "evalsha" | "eval" | "set"))
                .map(|(_, (_, usec))| *usec)
                .sum::<u64>() as f64
                / n;
            let inner_sum = inner.iter().map(|(_, (_, u))| *u).sum::<u64>() as f64 / n;
            self.line(format!(
                "| {} | {label} | {total:.1} (inner {inner_sum:.1}) | {top} |",
                call.label()
            ));
        }
        self.line("");
    }
}

/// The report, in Markdown: the targets first, then the tables.
pub fn report(res: &Results, opts: &Opts, elapsed: Duration) -> String {
    let mut r = Report {
        lines: Vec::new(),
        targets: Vec::new(),
    };
    r.machine(res, opts, elapsed);
    r.steady(res);
    r.floors(res);
    r.layouts(res);
    r.per_item(res);
    r.longest(res);
    r.per_call(res, opts);
    r.limit(res, opts);
    r.scaling(res, opts);
    r.memory(res, opts);
    r.takeover(res, opts);
    r.profiles(res);
    // Targets first, then the details.
    let mut out = vec!["### Targets".to_string(), String::new()];
    out.push("| target | measured | |".into());
    out.push("|---|---|---|".into());
    for (what, measured, ok) in &r.targets {
        out.push(format!("| {what} | {measured} | {} |", check(*ok)));
    }
    out.push(String::new());
    out.extend(r.lines);
    out.join("\n")
}

// ---------------------------------------------------------------------------------------------
