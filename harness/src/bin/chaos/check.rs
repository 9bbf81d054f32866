//! The end of the chaos run: every invariant, judged from what the observer's event stream,
//! Redis itself, the chain and the nodes' reports say, then the tables.

use std::collections::{BTreeMap, HashMap, HashSet};

use dolos_redis::{ChainPoint, MempoolTx, MempoolTxStage, TxHash};

use dolos_redis_harness::chain::MAX_FORK_DEPTH;
use dolos_redis_harness::clock::{mono_ns, ns};
use dolos_redis_harness::ledger;
use dolos_redis_harness::timeline::elapsed;

use crate::faults::{median, Fault, Kind};
use crate::{Chaos, RunId, FINALIZE};

/// Pending, inflight and the finalized log, as Redis holds them now.
type Places = (Vec<MempoolTx>, Vec<MempoolTx>, Vec<MempoolTx>);

/// A takeover table row: its name and the faults it covers.
type Group = (&'static str, fn(&Fault) -> bool);

struct Row {
    name: &'static str,
    pass: bool,
    detail: String,
}

impl Row {
    /// A row that passes when there are no `problems`; up to `n` of them end its detail, after
    /// `sep`.
    fn judged(name: &'static str, detail: String, sep: &str, problems: &[String], n: usize) -> Row {
        Row {
            name,
            pass: problems.is_empty(),
            detail: detail + &and_examples(sep, problems, n),
        }
    }

    /// A row whose check could not be made.
    fn failed(name: &'static str, why: String) -> Row {
        Row {
            name,
            pass: false,
            detail: why,
        }
    }
}

/// A stretch of time during which a process held the watcher flag.
#[derive(Clone, Copy, Debug)]
struct Holding {
    run: RunId,
    from: u64,
    to: u64,
}

/// Up to `n` examples, for a failing row.
fn examples(items: &[String], n: usize) -> String {
    let mut out: Vec<String> = items.iter().take(n).cloned().collect();
    if items.len() > n {
        out.push(format!("... {} more", items.len() - n));
    }
    out.join("; ")
}

/// `sep` and up to `n` of `items`, or nothing when there are none: how a row's detail ends.
fn and_examples(sep: &str, items: &[String], n: usize) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("{sep}{}", examples(items, n))
    }
}

fn stats_of(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some((v[0], median(&v), v[v.len() - 1]))
}

fn fmt_stats(values: &[f64]) -> String {
    match stats_of(values) {
        Some((min, med, max)) => format!("{min:.0}/{med:.0}/{max:.0}"),
        None => "-".into(),
    }
}

/// The order rows are printed in.
const ROWS: [&str; 8] = [
    "kill -9 (watcher)",
    "kill -9 (follower)",
    "SIGSTOP watcher",
    "partition (watcher)",
    "partition (follower)",
    "redis restart",
    "DEL lock",
    "redis full",
];

impl Chaos<'_> {
    /// Checks everything, prints the tables; true if every invariant holds.
    pub fn report(&mut self) -> bool {
        let rows = vec![
            self.check_chain(),
            self.check_events(),
            self.check_places(),
            self.check_model(),
            self.check_overlap(),
            self.check_takeovers(),
            self.check_full(),
            self.check_panics(),
            self.check_stuck(),
        ];
        let passed = rows.iter().all(|r| r.pass);
        println!();
        println!(
            "================================ chaos run summary ================================"
        );
        let blocks = self.chain.blocks();
        println!(
            "seed {} | {:.1} s | lock TTL {} ms | {} faults | final chain {} blocks (tip slot {}) \
             | {} forks | F = {FINALIZE}",
            self.opts.seed,
            elapsed(),
            self.opts.ttl.as_millis(),
            self.faults.len(),
            blocks.len(),
            blocks.last().map_or(0, |b| b.point.slot()),
            self.chain.forks().len()
        );
        self.print_faults();
        self.print_takeovers();
        println!();
        println!("{:<46} {:<6} detail", "invariant", "result");
        for row in &rows {
            println!(
                "{:<46} {:<6} {}",
                row.name,
                if row.pass { "PASS" } else { "FAIL" },
                row.detail
            );
        }
        println!();
        println!("RESULT: {}", if passed { "PASS" } else { "FAIL" });
        println!(
            "seed {}; reproduce: {}",
            self.opts.seed,
            self.opts.reproduce()
        );
        passed
    }

    fn print_faults(&self) {
        println!();
        println!("{:<28} {:>5}", "faults injected", "count");
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for f in &self.faults {
            *counts.entry(f.row()).or_default() += 1;
        }
        for row in ROWS {
            println!("  {:<26} {:>5}", row, counts.get(row).copied().unwrap_or(0));
        }
        let kinds: Vec<String> = Kind::ALL
            .iter()
            .map(|k| {
                let n = self.faults.iter().filter(|f| f.kind == *k).count();
                format!("{} {n}", k.label())
            })
            .collect();
        println!(
            "  {:<26} {:>5}   ({})",
            "total",
            self.faults.len(),
            kinds.join(", ")
        );
        let forks = self.chain.forks();
        let undone: usize = forks.iter().map(|f| f.undone.len()).sum();
        let mut depths = [0; MAX_FORK_DEPTH];
        for f in &forks {
            if let Some(n) = f
                .undone
                .len()
                .checked_sub(1)
                .and_then(|i| depths.get_mut(i))
            {
                *n += 1;
            }
        }
        let depths: Vec<String> = depths.iter().map(|n| n.to_string()).collect();
        let away = self.faults.iter().filter(|f| f.fork.is_some()).count();
        println!(
            "  {:<26} {:>5}   ({undone} blocks undone; by depth 1/2/3 {}; {away} right after a \
             fault took the watcher away)",
            "chain forks",
            forks.len(),
            depths.join("/")
        );
        let reconciles: Vec<(usize, usize)> = self
            .runs()
            .iter()
            .flat_map(|&(i, r)| self.nodes[i].runs[r].state().reconciles.clone())
            .collect();
        let undoing: Vec<usize> = reconciles.iter().map(|r| r.0).filter(|n| *n > 0).collect();
        println!(
            "  {:<26} {:>5}   (on a takeover or after a failed call; {} undid abandoned blocks, {} \
             in all; {} blocks replayed)",
            "reconciles",
            reconciles.len(),
            undoing.len(),
            undoing.iter().sum::<usize>(),
            reconciles.iter().map(|r| r.1).sum::<usize>()
        );
    }

    fn print_takeovers(&self) {
        println!();
        println!(
            "{:<32} {:>3} {:>7} {:>7} {:>7} {:>7} {:>7}   after lock expiry min/med/max",
            "takeover (ms)", "n", "min", "median", "max", "bound", "strict"
        );
        let groups: [Group; 5] = [
            ("kill -9 → new watcher", |f| {
                f.kind == Kind::Kill && f.on_watcher
            }),
            ("SIGSTOP watcher: new watcher", |f| f.kind == Kind::Stop),
            ("partition watcher: new watcher", |f| {
                f.kind == Kind::Partition && f.on_watcher
            }),
            ("redis restart: watcher back", |f| {
                f.kind == Kind::RedisRestart
            }),
            ("DEL lock: new epoch", |f| f.kind == Kind::DelLock),
        ];
        for (name, pick) in groups.iter() {
            let ts: Vec<_> = self
                .faults
                .iter()
                .filter(|f| pick(f))
                .filter_map(|f| f.takeover.clone())
                .collect();
            let ms: Vec<f64> = ts.iter().map(|t| t.ms.unwrap_or(f64::INFINITY)).collect();
            let after: Vec<f64> = ts.iter().filter_map(|t| t.after_expiry_ms).collect();
            let strict = ts.iter().filter(|t| t.within(0.0)).count();
            let bound = ts
                .first()
                .map_or("-".into(), |t| format!("{:.0}", t.bound_ms));
            let (min, med, max) = match stats_of(&ms) {
                Some((a, b, c)) => (format!("{a:.0}"), format!("{b:.0}"), format!("{c:.0}")),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let never = ms.iter().filter(|m| !m.is_finite()).count();
            println!(
                "  {:<30} {:>3} {:>7} {:>7} {:>7} {:>7} {:>7}   {}{}",
                name,
                ts.len(),
                min,
                med,
                max,
                bound,
                format!("{strict}/{}", ts.len()),
                fmt_stats(&after),
                if never > 0 {
                    format!("   ({never} never)")
                } else {
                    String::new()
                }
            );
        }
        let stale: Vec<f64> = self
            .faults
            .iter()
            .filter(|f| f.kind == Kind::Stop)
            .filter_map(|f| f.flag_down_ms)
            .collect();
        let cut: Vec<f64> = self
            .faults
            .iter()
            .filter(|f| f.kind == Kind::Partition && f.on_watcher)
            .filter_map(|f| f.flag_down_ms)
            .collect();
        let del: Vec<f64> = self
            .faults
            .iter()
            .filter(|f| f.kind == Kind::DelLock)
            .filter_map(|f| f.flag_down_ms)
            .collect();
        println!(
            "  stale flag after SIGCONT (ms) min/med/max {}; cut-off watcher lowered its flag after \
             (ms) {}; old holder after a DEL (ms) {}",
            fmt_stats(&stale),
            fmt_stats(&cut),
            fmt_stats(&del)
        );
    }

    /// The applied chain is the final chain, from two independent sources: Redis (its applied
    /// chain, the newest `applied_history` blocks, is the final chain's tail, and its height H
    /// is the final chain's height) and the observer's `BlockApplied` events, which replay —
    /// an applied block pushed, an undone one popped — to the whole final chain, each event
    /// fitting the replay (no block applied while on the applied chain, no undo below the tip,
    /// heights that follow). Reported, not failed: blocks of the final chain that were undone
    /// and applied again (a watcher rolling back good blocks), which the other rows judge by
    /// their effect.
    fn check_chain(&self) -> Row {
        let points: Vec<ChainPoint> = self.chain.blocks().iter().map(|b| b.point).collect();
        let on_chain: HashSet<ChainPoint> = points.iter().copied().collect();
        let s = self.ledger.state();
        let mut problems: Vec<String> = s.audit.clone();
        if s.applied != points {
            let same = s
                .applied
                .iter()
                .zip(&points)
                .take_while(|(a, b)| a == b)
                .count();
            problems.push(format!(
                "the events build {} blocks, the final chain has {}; they part after block {same}",
                s.applied.len(),
                points.len()
            ));
        }
        let server = self
            .observer
            .applied_points(usize::MAX)
            .and_then(|p| Ok((p, self.observer.stats()?.applied_blocks)));
        let retained = match server {
            Ok((mut in_redis, height)) => {
                in_redis.reverse();
                let tail = &points[points.len().saturating_sub(in_redis.len())..];
                if in_redis.as_slice() != tail || in_redis.is_empty() != points.is_empty() {
                    problems.push(format!(
                        "redis's applied chain ({} blocks, ending at slot {:?}) is not the final \
                         chain's tail",
                        in_redis.len(),
                        in_redis.last().map(|p| p.slot())
                    ));
                }
                if height != points.len() as u64 {
                    problems.push(format!(
                        "redis's applied height is {height}, the final chain has {} blocks",
                        points.len()
                    ));
                }
                in_redis.len()
            }
            Err(e) => {
                problems.push(format!("applied_points/stats: {e}"));
                0
            }
        };
        let applied = s.blocks.iter().filter(|b| !b.undo).count();
        let undone: Vec<_> = s.blocks.iter().filter(|b| b.undo).collect();
        let good_undone = undone
            .iter()
            .filter(|b| on_chain.contains(&b.point))
            .count();
        let mut by: Vec<(String, usize)> = Vec::new();
        for b in s.blocks.iter().filter(|b| !b.undo) {
            let label = self
                .run_of_id(&b.node_id)
                .map(|r| self.label(r))
                .unwrap_or_else(|| "?".into());
            match by.last_mut() {
                Some((l, n)) if *l == label => *n += 1,
                _ => by.push((label, 1)),
            }
        }
        let detail = format!(
            "{} blocks; redis holds the final chain's last {retained} and height {}; the events \
             replay to it: {applied} applied, {} undone ({} abandoned, {good_undone} of the \
             final chain), {} watcher terms",
            points.len(),
            points.len(),
            undone.len(),
            undone.len() - good_undone,
            by.len()
        );
        let name = "applied chain = the final chain";
        Row::judged(name, detail, "; ", &problems, 6)
    }

    /// The audit trail itself must be whole for the other checks to mean anything.
    fn check_events(&self) -> Row {
        let s = self.ledger.state();
        let pass = s.lagged == 0 && s.out_of_order == 0 && s.orphans == 0;
        Row {
            name: "observer's event trail complete",
            pass,
            detail: format!(
                "{} missed, {} out of order, {} transitions of unknown txs; {} watcher \
                 acquisitions seen",
                s.lagged,
                s.out_of_order,
                s.orphans,
                s.acquired.len()
            ),
        }
    }

    /// Hashes whose `receive` a node reported Ok.
    fn reported(&self) -> (HashSet<TxHash>, Vec<String>) {
        let mut set = HashSet::new();
        let mut bad = Vec::new();
        for run in self.runs() {
            for hex in self.nodes[run.0].runs[run.1].state().submitted.iter() {
                match hex.parse::<TxHash>() {
                    Ok(h) => {
                        set.insert(h);
                    }
                    Err(_) => bad.push(format!("{} reported a bad hash {hex}", self.label(run))),
                }
            }
        }
        (set, bad)
    }

    fn places(&self) -> Result<Places, String> {
        let pending = self
            .observer
            .peek_pending(usize::MAX)
            .map_err(|e| format!("peek_pending: {e}"))?;
        let inflight = self
            .observer
            .peek_inflight(usize::MAX)
            .map_err(|e| format!("peek_inflight: {e}"))?;
        let mut log = Vec::new();
        let mut cursor = 0;
        loop {
            let page = self
                .observer
                .dump_finalized(cursor, 1000)
                .map_err(|e| format!("dump_finalized: {e}"))?;
            log.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = next,
                None => break,
            }
        }
        Ok((pending, inflight, log))
    }

    /// Every tx ever accepted is in exactly one place. Accepted = what the nodes reported (the
    /// `receive` calls that returned Ok) plus what the observer saw enter (`Pending` events,
    /// which are authoritative: a node killed right after Redis stored its tx, or whose reply
    /// was lost to a Redis restart, never reported it). A reported tx that never entered is lost.
    fn check_places(&self) -> Row {
        let name = "every accepted tx in exactly one place";
        let (reported, mut problems) = self.reported();
        let entered: HashSet<TxHash> = self.ledger.state().txs.keys().copied().collect();
        for h in reported.difference(&entered) {
            problems.push(format!(
                "{h} accepted by a node but never entered the mempool"
            ));
        }
        let unreported = entered.difference(&reported).count();
        let accepted: HashSet<TxHash> = reported.union(&entered).copied().collect();
        let (pending, inflight, log) = match self.places() {
            Ok(p) => p,
            Err(e) => return Row::failed(name, e),
        };
        let mut count: HashMap<TxHash, Vec<&str>> = HashMap::new();
        for (place, txs) in [
            ("pending", &pending),
            ("inflight", &inflight),
            ("log", &log),
        ] {
            for tx in txs.iter() {
                count.entry(tx.hash).or_default().push(place);
            }
        }
        for h in &accepted {
            match count.get(h).map(Vec::as_slice) {
                Some([_]) => {}
                None => problems.push(format!("{h} is nowhere")),
                Some(places) => problems.push(format!("{h} is in {places:?}")),
            }
        }
        for h in count.keys().filter(|h| !accepted.contains(*h)) {
            problems.push(format!("{h} is stored but was never accepted"));
        }
        let detail = format!(
            "{} accepted ({} reported by nodes + {unreported} stored but unreported, from Pending \
             events): {} in the log, {} pending, {} inflight",
            accepted.len(),
            reported.len(),
            log.len(),
            pending.len(),
            inflight.len()
        );
        Row::judged(name, detail, "; ", &problems, 6)
    }

    /// The shared state is what one node fed the final chain would hold. With N the final
    /// chain's height and j the height of the block that holds a tx: a tx at depth
    /// N - j + 1 >= F is Finalized exactly once with F confirmations, confirmed at its block and
    /// finalized by the block at height j + F - 1 (which may since have been abandoned: depth
    /// counts, not the block), its life as `ledger::life_problem` wants it; a shallower one is
    /// Confirmed with N - j + 1 confirmations at its block. A tx on no block of the final chain
    /// is neither Finalized nor Confirmed, only pending or inflight. Nothing is Dropped (D is
    /// far above any gap), and no tx is in two blocks of the final chain.
    fn check_model(&self) -> Row {
        let name = "state = one node fed the final chain";
        let blocks = self.chain.blocks();
        let n = blocks.len() as u64;
        let mut problems = Vec::new();
        // tx -> (height, point) on the final chain.
        let mut at: HashMap<TxHash, (u64, ChainPoint)> = HashMap::new();
        for (i, b) in blocks.iter().enumerate() {
            for tx in &b.txs {
                if at.insert(*tx, (i as u64 + 1, b.point)).is_some() {
                    problems.push(format!("{tx} is in two blocks of the final chain"));
                }
            }
        }
        let (pending, inflight, log) = match self.places() {
            Ok(p) => p,
            Err(e) => return Row::failed(name, e),
        };
        let s = self.ledger.state();
        let f = u64::from(FINALIZE);
        let (mut finalized, mut confirmed, mut off_chain, mut rolled_back) = (0, 0, 0, 0);
        let mut seen: HashSet<TxHash> = HashSet::new();
        for tx in log.iter().chain(&inflight).chain(&pending) {
            let h = tx.hash;
            seen.insert(h);
            let Some(&(j, point)) = at.get(&h) else {
                off_chain += 1;
                if !matches!(
                    tx.stage,
                    MempoolTxStage::Pending
                        | MempoolTxStage::Propagated
                        | MempoolTxStage::Acknowledged
                ) {
                    problems.push(format!(
                        "{h} is on no block of the final chain but {:?}",
                        tx.stage
                    ));
                }
                continue;
            };
            let depth = n - j + 1;
            let (stage, count) = if depth >= f {
                (MempoolTxStage::Finalized, f)
            } else {
                (MempoolTxStage::Confirmed, depth)
            };
            if tx.stage != stage
                || u64::from(tx.confirmations) != count
                || tx.confirmed_at != Some(point)
            {
                problems.push(format!(
                    "{h} in block {j} (depth {depth}): {:?} with {} confirmations at {:?}, \
                     expected {stage:?} with {count} at slot {}",
                    tx.stage,
                    tx.confirmations,
                    tx.confirmed_at.map(|p| p.slot()),
                    point.slot()
                ));
                continue;
            }
            if stage == MempoolTxStage::Confirmed {
                confirmed += 1;
                continue;
            }
            finalized += 1;
            match s.finalized_in.get(&h) {
                Some(height) if *height == j + f - 1 => {}
                other => problems.push(format!(
                    "{h} in block {j}: finalized at height {other:?}, expected {}",
                    j + f - 1
                )),
            }
            match s.txs.get(&h) {
                Some(life) => {
                    if life.iter().any(|(st, _)| *st == MempoolTxStage::RolledBack) {
                        rolled_back += 1;
                    }
                    if let Some(p) = ledger::life_problem(life, FINALIZE) {
                        problems.push(format!("{h}: {p}"));
                    }
                }
                None => problems.push(format!("{h} is in the log but never entered")),
            }
        }
        for h in at.keys().filter(|h| !seen.contains(*h)) {
            problems.push(format!(
                "{h} is on the final chain but nowhere in the mempool"
            ));
        }
        let detail = format!(
            "{} txs on the final chain: {finalized} Finalized with {FINALIZE} confirmations at \
             their block, by the block F-1 above it ({rolled_back} rolled back by a fork or a \
             reconcile first), {confirmed} Confirmed less deep; {off_chain} off it, none \
             Confirmed or Finalized",
            at.len()
        );
        Row::judged(name, detail, "; ", &problems, 6)
    }

    /// Each process's holdings of the flag, as an over-approximation: from the sample before it
    /// rose (or the process's start) to the sample that saw it fall (or the process's death),
    /// minus the windows in which the process was certainly stopped (a frozen process cannot
    /// act, and Redis fences whatever it sends after it resumes).
    fn holdings(&self) -> Vec<Holding> {
        let now = mono_ns();
        let mut out = Vec::new();
        for run in self.runs() {
            let meta = &self.meta[run.0][run.1];
            let end = meta.ended_ns.unwrap_or(now);
            let mut raw = Vec::new();
            let mut open = None;
            for f in self.flags(run) {
                if f.up {
                    if open.is_none() {
                        open = Some(if f.after_ns == 0 {
                            meta.started_ns
                        } else {
                            f.after_ns
                        });
                    }
                } else if let Some(from) = open.take() {
                    raw.push((from, f.seen_ns));
                }
            }
            if let Some(from) = open {
                raw.push((from, end.max(from)));
            }
            for (from, to) in raw {
                let mut pieces = vec![(from, to)];
                for &(a, b) in &meta.stops {
                    pieces = pieces
                        .into_iter()
                        .flat_map(|(s, e)| {
                            if b <= s || a >= e {
                                vec![(s, e)]
                            } else {
                                let mut v = Vec::new();
                                if a > s {
                                    v.push((s, a));
                                }
                                if e > b {
                                    v.push((b, e));
                                }
                                v
                            }
                        })
                        .collect();
                }
                out.extend(
                    pieces
                        .into_iter()
                        .map(|(from, to)| Holding { run, from, to }),
                );
            }
        }
        out
    }

    /// No two processes held the flag at once for longer than the lease margin (TTL/10, the
    /// gap the lease keeps between its local deadline and the key's expiry) plus the scheduling
    /// allowance (`--sched-ms`: the probe samples every millisecond, and a resumed process needs
    /// to be scheduled before it lowers its flag). One exception, reported apart: after a `DEL`
    /// of the lock by hand the old holder keeps its flag until its next renewal (at most TTL/3)
    /// while another node may already hold the new lock; Redis fences the old holder's writes.
    fn check_overlap(&self) -> Row {
        let ttl = self.opts.ttl;
        let margin = ns(ttl / 10 + self.opts.sched);
        let del_window = ns(ttl / 3) + margin;
        let holdings = self.holdings();
        let mut closest: Option<i64> = None;
        let mut within = Vec::new();
        let mut excused = Vec::new();
        let mut violations = Vec::new();
        for (k, a) in holdings.iter().enumerate() {
            for b in &holdings[k + 1..] {
                if a.run == b.run {
                    continue;
                }
                let start = a.from.max(b.from);
                let end = a.to.min(b.to);
                let overlap = end as i64 - start as i64;
                let after_del = self.dels.iter().any(|(run, at)| {
                    (*run == a.run || *run == b.run)
                        && start + margin >= *at
                        && end <= at + del_window
                });
                if overlap > 0 && after_del {
                    excused.push(overlap as f64 / 1e6);
                    continue;
                }
                closest = Some(closest.map_or(overlap, |c| c.max(overlap)));
                if overlap <= 0 {
                    continue;
                }
                let text = format!(
                    "{} and {} both up for {:.1} ms",
                    self.label(a.run),
                    self.label(b.run),
                    overlap as f64 / 1e6
                );
                if overlap as u64 <= margin {
                    within.push((overlap, text));
                } else {
                    violations.push((overlap, text));
                }
            }
        }
        let stops: usize = self.meta.iter().flatten().map(|m| m.stops.len()).sum();
        let closest = match closest {
            Some(c) if c <= 0 => format!("closest handover: a gap of {:.1} ms", -c as f64 / 1e6),
            Some(_) => format!(
                "largest overlap: {}",
                within
                    .iter()
                    .chain(violations.iter())
                    .max_by_key(|(o, _)| *o)
                    .map_or(String::new(), |(_, t)| t.clone())
            ),
            None => "no handover".into(),
        };
        let texts: Vec<String> = violations.iter().map(|(_, t)| t.clone()).collect();
        let detail = format!(
            "{} holdings; margin {:.0} ms (TTL/10 + {} ms); {closest}; {} overlaps within the \
             margin; {} after a DEL ({} ms max, allowed TTL/3 + margin); {stops} SIGSTOP windows \
             not counted as holding",
            holdings.len(),
            margin as f64 / 1e6,
            self.opts.sched.as_millis(),
            within.len(),
            excused.len(),
            excused.iter().fold(0.0f64, |m, x| m.max(*x)).round(),
        );
        let name = "no two watcher flags overlap beyond margin";
        Row::judged(name, detail, "; violations: ", &texts, 6)
    }

    /// Crash of the watcher: another node's flag within 500 ms of the kill (the followers see
    /// its liveness connection closed). Pause and partition of the watcher: within TTL + 100 ms
    /// of the fault (the old lock can live at most TTL past the fault, and followers retry
    /// right when it expires) and **never before the old lock could expire**: the paused or
    /// cut-off node's sockets are open on the server, so nobody may declare it dead. DEL: a new
    /// epoch within TTL/3 + 100 ms (every node asks at least every TTL/3). Redis restart: a
    /// watcher within TTL + 100 ms of Redis answering again. The run fails on any early
    /// takeover, and on a late one only beyond bound + `--takeover-slack-ms`; the strict count
    /// is printed either way.
    fn check_takeovers(&self) -> Row {
        let slack = self.opts.slack.as_secs_f64() * 1e3;
        let measured: Vec<(&Fault, &crate::faults::Takeover)> = self
            .faults
            .iter()
            .filter_map(|f| f.takeover.as_ref().map(|t| (f, t)))
            .collect();
        let strict = measured.iter().filter(|(_, t)| t.within(0.0)).count();
        let late: Vec<String> = measured
            .iter()
            .filter(|(_, t)| !t.within(slack))
            .map(|(f, t)| {
                format!(
                    "{} at {:.1}s: {} (bound {:.0} + {slack:.0})",
                    f.row(),
                    f.at,
                    t.ms.map_or("never".into(), |ms| format!("{ms:.0} ms")),
                    t.bound_ms
                )
            })
            .collect();
        // The expiry is a lower bound (PTTL counted from before it was sent), and the flag's
        // stamp comes after its rise: a negative figure is a takeover before the lock could
        // expire, with no tolerance needed.
        let early: Vec<String> = measured
            .iter()
            .filter(|(f, _)| matches!(f.kind, Kind::Stop | Kind::Partition) && f.on_watcher)
            .filter_map(|(f, t)| {
                let after = t.after_expiry_ms.filter(|ms| *ms < 0.0)?;
                Some(format!(
                    "{} at {:.1}s: taken over {:.0} ms before the lock could expire",
                    f.row(),
                    f.at,
                    -after
                ))
            })
            .collect();
        let over_strict: Vec<String> = measured
            .iter()
            .filter(|(_, t)| !t.within(0.0) && t.within(slack))
            .map(|(f, t)| format!("{} {:.0} ms", f.row(), t.ms.unwrap_or(0.0)))
            .collect();
        let paused_or_cut = measured
            .iter()
            .filter(|(f, _)| matches!(f.kind, Kind::Stop | Kind::Partition) && f.on_watcher)
            .count();
        let detail = format!(
            "{strict}/{} within the strict bound{}; {}/{} within bound + slack {slack:.0} ms; \
             {}/{paused_or_cut} paused or cut-off watchers kept their lock until it could expire",
            measured.len(),
            if over_strict.is_empty() {
                String::new()
            } else {
                format!(" (over it: {})", examples(&over_strict, 4))
            },
            measured.len() - late.len(),
            measured.len(),
            paused_or_cut - early.len()
        );
        let problems: Vec<String> = early.into_iter().chain(late).collect();
        let name = "takeover after each fault within its bound";
        Row::judged(name, detail, "; ", &problems, 6)
    }

    /// Redis full: the nodes' writes were refused for memory (else the fault tested nothing),
    /// and the watcher kept its lock throughout — same holder, same epoch, its flag never down
    /// (the lease's scripts run whatever the memory). That nothing refused was lost or applied
    /// twice is what the other rows check: every refused call was made again afterwards.
    fn check_full(&self) -> Row {
        let full: Vec<(&Fault, &crate::faults::FullRedis)> = self
            .faults
            .iter()
            .filter_map(|f| f.full.as_ref().map(|r| (f, r)))
            .collect();
        let lost: Vec<String> = full
            .iter()
            .filter(|(_, r)| !r.kept_lock)
            .map(|(f, _)| format!("the watcher lost its lock in the fault at {:.1}s", f.at))
            .collect();
        let idle: Vec<String> = full
            .iter()
            .filter(|(_, r)| r.refused.is_empty())
            .map(|(f, _)| format!("no call refused in the fault at {:.1}s", f.at))
            .collect();
        let refused: Vec<String> = full.iter().flat_map(|(_, r)| r.refused.clone()).collect();
        let lasted: Vec<f64> = full.iter().filter_map(|(f, _)| f.lasted_ms).collect();
        let problems: Vec<String> = lost.into_iter().chain(idle).collect();
        let detail = format!(
            "{} faults, full for {} ms (min/med/max); {} calls refused for memory ({}), each made \
             again after; the watcher kept its lock in {}/{}",
            full.len(),
            fmt_stats(&lasted),
            refused.len(),
            crate::count_by_name(&refused),
            full.iter().filter(|(_, r)| r.kept_lock).count(),
            full.len(),
        );
        Row::judged(
            "a full redis: refused, lease kept",
            detail,
            "; ",
            &problems,
            4,
        )
    }

    fn check_panics(&self) -> Row {
        let mut lines = Vec::new();
        for run in self.runs() {
            for line in self.nodes[run.0].runs[run.1].state().panics.iter() {
                lines.push(format!("{}: {line}", self.label(run)));
            }
        }
        let runs = self.runs().len();
        Row {
            name: "no panics",
            pass: lines.is_empty(),
            detail: if lines.is_empty() {
                format!("no \"panicked\" in the output of {runs} node processes")
            } else {
                examples(&lines, 4)
            },
        }
    }

    fn check_stuck(&self) -> Row {
        let restarts = self.runs().len() - self.nodes.len();
        Row {
            name: "no stuck node",
            pass: self.problems.is_empty(),
            detail: if self.problems.is_empty() {
                format!(
                    "every fault settled; all {} nodes alive at the end, answered a ping through \
                     redis and exited cleanly ({restarts} restarts)",
                    self.nodes.len()
                )
            } else {
                examples(&self.problems, 6)
            },
        }
    }
}
