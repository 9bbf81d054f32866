//! One entry of the event stream per call, and the events it stands for.
//!
//! A writing script appends one entry carrying its transitions (see `src/keys.rs` for the
//! stream, the scripts for each kind); its id is `<n>-0`, `n` the number of its first event,
//! and the next entry starts where its events end, so numbers stay gapless per event. What the
//! fields say:
//!
//! | first field | call | events (numbered from `n`, in this order) |
//! |---|---|---|
//! | `P` hash | receive | Pending |
//! | `R` hashes | mark_inflight | one Propagated per hash |
//! | `A` hashes, `m` misses | mark_acknowledged | one Acknowledged per hash |
//! | `b` point, `h`, `node`, `epoch`, `kept`, `C`, `F`, `Fc`, `D`, `Dm` | confirm | BlockApplied; Confirmed for each of the `kept` txs that stay Confirmed; Confirmed(1) for each of `C`; Finalized for `F` (counts `Fc`); Dropped for `D` (misses `Dm`) |
//! | `u` undone blocks, `h`, `node`, `epoch`, `B` hashes | undo, rollback_to | BlockApplied (rollback) per undone block, newest first; RolledBack per hash of `B` |
//! | `k` = `leader` / `released` | the lease | WatcherAcquired / WatcherReleased |
//!
//! Hashes are 32 raw bytes each, concatenated. A block entry does not list the txs that stay
//! Confirmed, which would cost every block a write per Confirmed tx: the reader keeps its own copy
//! of the Confirmed set ([`Confirmed`], started from `events_snapshot.lua` and kept by the
//! entries themselves) and derives their events, checking its count against `kept`.

use std::collections::{BTreeMap, HashMap};

use redis::Value;

use super::MempoolEvent;
use crate::codec;
use crate::types::{ChainPoint, EraCbor, MempoolTx, MempoolTxStage, TxHash};
use crate::Error;

/// The reader's copy of the Confirmed txs: each with the height of the block that first
/// confirmed it and its place in that block's list, and the points of those blocks.
#[derive(Default, Debug)]
pub(super) struct Confirmed {
    /// (confirming height, place) → tx: the order of the Confirmed events of a block.
    txs: BTreeMap<(u64, u64), TxHash>,
    by_hash: HashMap<TxHash, (u64, u64)>,
    points: BTreeMap<u64, ChainPoint>,
    next_place: u64,
}

impl Confirmed {
    /// From `events_snapshot.lua`'s `P:confirmed` and `P:points` members.
    pub fn from_snapshot(entries: Value, points: Value, key: &str) -> Result<Confirmed, Error> {
        let mut out = Confirmed::default();
        for p in codec::array(points, "snapshot points")? {
            let member = codec::text(&p, "snapshot point")?;
            let (height, point) = codec::split_height(&member, key)?;
            if let Some(point) = codec::decode_point(point, key)? {
                out.points.insert(height, point);
            }
        }
        for e in codec::array(entries, "snapshot entries")? {
            let Value::BulkString(raw) = e else {
                return Err(Error::UnexpectedReply("snapshot entry".into()));
            };
            let tag = std::str::from_utf8(raw.get(..12).unwrap_or(b"")).unwrap_or("");
            let (height, _) = codec::split_height(tag, key)?;
            for hash in hashes(&raw[12..], key)? {
                out.add(height, hash);
            }
        }
        Ok(out)
    }

    fn add(&mut self, height: u64, hash: TxHash) {
        let at = (height, self.next_place);
        self.next_place += 1;
        self.txs.insert(at, hash);
        self.by_hash.insert(hash, at);
    }

    fn remove(&mut self, hash: &TxHash) -> Option<u64> {
        let at = self.by_hash.remove(hash)?;
        self.txs.remove(&at);
        Some(at.0)
    }

    /// Forgets the points no Confirmed tx refers to any more.
    fn prune_points(&mut self) {
        let oldest = self.txs.keys().next().map(|(h, _)| *h);
        match oldest {
            Some(oldest) => self.points.retain(|h, _| *h >= oldest),
            None => self.points.clear(),
        }
    }
}

/// Adds `n` missed events at the end of `out`, to a `Lagged` there if there is one.
fn lagged(out: &mut Vec<MempoolEvent>, n: u64) {
    if n == 0 {
        return;
    }
    match out.last_mut() {
        Some(MempoolEvent::Lagged { missed }) => *missed += n,
        _ => out.push(MempoolEvent::Lagged { missed: n }),
    }
}

/// What one entry stands for.
pub(super) struct Decoded {
    /// How many event numbers it takes.
    pub count: u64,
    pub events: Vec<MempoolEvent>,
}

/// The reader's copy did not match an entry (`kept` differs): it must take a new snapshot.
pub(super) struct Diverged;

/// Splits concatenated 32-byte hashes.
fn hashes(raw: &[u8], key: &str) -> Result<Vec<TxHash>, Error> {
    if !raw.len().is_multiple_of(32) {
        return Err(Error::Corrupt {
            key: key.to_string(),
            detail: format!("hash list of {} bytes", raw.len()),
        });
    }
    Ok(raw
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0; 32];
            h.copy_from_slice(c);
            TxHash::from(h)
        })
        .collect())
}

fn tx_event(
    seq: u64,
    hash: TxHash,
    stage: MempoolTxStage,
    c: u32,
    m: u32,
    at: Option<ChainPoint>,
) -> MempoolEvent {
    MempoolEvent::Tx {
        seq,
        tx: MempoolTx {
            hash,
            payload: EraCbor::default(),
            stage,
            confirmations: c,
            non_confirmations: m,
            confirmed_at: at,
        },
    }
}

/// Decodes the entry numbered `n` (its fields, alternating) into its events, keeping
/// `confirmed` up to date. `Ok(Err(Diverged))` when the copy is found stale.
///
/// With `partial`, the copy knows only the txs confirmed since the reader lost track (see
/// `Reader::resync`): the events that need the others (the Confirmed events of a block, the
/// Finalized event of a tx it does not know) become a `Lagged` in their place.
pub(super) fn decode(
    n: u64,
    fields: Vec<Value>,
    key: &str,
    confirmed: &mut Confirmed,
    partial: bool,
) -> Result<Result<Decoded, Diverged>, Error> {
    let corrupt = |detail: String| Error::Corrupt {
        key: key.to_string(),
        detail,
    };
    let mut first = None;
    let mut map: HashMap<String, Vec<u8>> = HashMap::new();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let name = codec::text(&name, "event field")?;
        let Value::BulkString(value) = value else {
            return Err(corrupt(format!("field {name} is not a string")));
        };
        first.get_or_insert_with(|| name.clone());
        map.insert(name, value);
    }
    let raw = |f: &str| map.get(f).map(Vec::as_slice).unwrap_or(b"");
    let text = |f: &str| -> Result<&str, Error> {
        std::str::from_utf8(raw(f)).map_err(|_| corrupt(format!("field {f} is not text")))
    };
    let number = |f: &str| -> Result<u64, Error> {
        let t = text(f)?;
        t.parse()
            .map_err(|_| corrupt(format!("field {f} is not a number: {t:?}")))
    };
    // `m`, `Fc`, `Dm`: one number per tx, or one for all.
    let counts = |f: &str, len: usize| -> Result<Vec<u32>, Error> {
        let t = text(f)?;
        let bad = || corrupt(format!("field {f}: {t:?} for {len} txs"));
        let list: Vec<u32> = if t.is_empty() {
            Vec::new()
        } else {
            t.split(',')
                .map(|v| v.parse())
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?
        };
        match list.len() {
            1 => Ok(vec![list[0]; len]),
            l if l == len => Ok(list),
            _ => Err(bad()),
        }
    };
    let point = |f: &str| -> Result<ChainPoint, Error> {
        codec::decode_point(text(f)?, key)?.ok_or_else(|| corrupt(format!("field {f}: no point")))
    };
    let small = |v: u64| u32::try_from(v).map_err(|_| corrupt(format!("count out of range: {v}")));
    let mut events = Vec::new();
    use MempoolTxStage::*;
    match first.as_deref() {
        Some("P") | Some("R") => {
            let (field, stage) = match first.as_deref() {
                Some("P") => ("P", Pending),
                _ => ("R", Propagated),
            };
            for (i, h) in hashes(raw(field), key)?.into_iter().enumerate() {
                events.push(tx_event(n + i as u64, h, stage, 0, 0, None));
            }
        }
        Some("A") => {
            let list = hashes(raw("A"), key)?;
            let misses = counts("m", list.len())?;
            for (i, h) in list.into_iter().enumerate() {
                events.push(tx_event(n + i as u64, h, Acknowledged, 0, misses[i], None));
            }
        }
        Some("b") => {
            let (at, height) = (point("b")?, number("h")?);
            let (node_id, epoch) = (text("node")?.to_string(), number("epoch")?);
            let newly = hashes(raw("C"), key)?;
            let finalized = hashes(raw("F"), key)?;
            let fin_counts = counts("Fc", finalized.len())?;
            let dropped = hashes(raw("D"), key)?;
            let drop_misses = counts("Dm", dropped.len())?;
            let kept = number("kept")?;
            let count = 1 + kept + (newly.len() + finalized.len() + dropped.len()) as u64;
            let leaving: std::collections::HashSet<&TxHash> = finalized.iter().collect();
            let staying: Vec<((u64, u64), TxHash)> = confirmed
                .txs
                .iter()
                .filter(|(_, h)| !leaving.contains(h))
                .map(|(k, h)| (*k, *h))
                .collect();
            if !partial && staying.len() as u64 != kept {
                return Ok(Err(Diverged));
            }
            let mut s = n;
            let mut out = Vec::with_capacity(count as usize);
            out.push(MempoolEvent::BlockApplied {
                seq: s,
                point: at,
                height,
                rollback: false,
                node_id,
                epoch,
            });
            for ((hc, _), h) in staying {
                s += 1;
                let depth = small((height + 1).saturating_sub(hc))?;
                out.push(tx_event(
                    s,
                    h,
                    Confirmed,
                    depth,
                    0,
                    confirmed.points.get(&hc).copied(),
                ));
            }
            if !newly.is_empty() {
                confirmed.points.insert(height, at);
            }
            for h in newly {
                s += 1;
                confirmed.add(height, h);
                out.push(tx_event(s, h, Confirmed, 1, 0, Some(at)));
            }
            for (h, c) in finalized.into_iter().zip(fin_counts) {
                s += 1;
                let first_at = match confirmed.remove(&h) {
                    Some(hc) => confirmed.points.get(&hc).copied(),
                    // Not known to a partial copy: confirmed before it started.
                    None if partial => {
                        lagged(&mut out, 1);
                        continue;
                    }
                    // Confirmed and final in this block (F <= 1).
                    None => Some(at),
                };
                out.push(tx_event(s, h, Finalized, c, 0, first_at));
            }
            for (h, m) in dropped.into_iter().zip(drop_misses) {
                s += 1;
                out.push(tx_event(s, h, Dropped, 0, m, None));
            }
            confirmed.prune_points();
            return Ok(Ok(Decoded { count, events: out }));
        }
        Some("u") => {
            let undone: Vec<&str> = text("u")?.split(',').filter(|m| !m.is_empty()).collect();
            let height = number("h")?;
            let (node_id, epoch) = (text("node")?.to_string(), number("epoch")?);
            for (i, member) in undone.iter().enumerate().rev() {
                let point = codec::decode_point(member, key)?
                    .ok_or_else(|| corrupt("undone block without a point".into()))?;
                events.push(MempoolEvent::BlockApplied {
                    seq: n + (undone.len() - 1 - i) as u64,
                    point,
                    height: height + i as u64,
                    rollback: true,
                    node_id: node_id.clone(),
                    epoch,
                });
            }
            let base = n + undone.len() as u64;
            for (i, h) in hashes(raw("B"), key)?.into_iter().enumerate() {
                confirmed.remove(&h);
                events.push(tx_event(base + i as u64, h, RolledBack, 0, 0, None));
            }
            confirmed.points.retain(|h, _| *h <= height);
        }
        Some("k") => {
            let (node_id, epoch) = (text("node")?.to_string(), number("epoch")?);
            match text("k")? {
                "leader" => events.push(MempoolEvent::WatcherAcquired {
                    seq: n,
                    node_id,
                    epoch,
                }),
                "released" => events.push(MempoolEvent::WatcherReleased {
                    seq: n,
                    node_id,
                    epoch,
                }),
                _ => {
                    return Ok(Ok(Decoded {
                        count: 1,
                        events: Vec::new(),
                    }))
                }
            }
        }
        // A kind this version does not know (a newer writer): skipped.
        _ => {
            return Ok(Ok(Decoded {
                count: 1,
                events: Vec::new(),
            }))
        }
    }
    Ok(Ok(Decoded {
        count: events.len() as u64,
        events,
    }))
}
