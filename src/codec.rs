//! How values cross the wire: Redis replies read into Rust values, and the domain values
//! (chain points, stages, transactions, stream entries) in the forms the scripts store them.
//!
//! Nothing here panics: a reply of an unexpected shape is an [`Error::UnexpectedReply`] naming
//! what was being read, and stored data that does not decode is an [`Error::Corrupt`] naming
//! its key.

use redis::Value;

use crate::keys::{Key, Keys};
use crate::types::{BlockHash, ChainPoint, EraCbor, MempoolTx, MempoolTxStage, TxHash, TxStatus};
use crate::Error;

fn unexpected(what: &str, v: &Value) -> Error {
    Error::UnexpectedReply(format!("{what}: {v:?}").into())
}

pub(crate) fn array(v: Value, what: &str) -> Result<Vec<Value>, Error> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(unexpected(what, &other)),
    }
}

pub(crate) fn int(v: &Value, what: &str) -> Result<i64, Error> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unexpected(what, v)),
        other => Err(unexpected(what, other)),
    }
}

pub(crate) fn uint(v: &Value, what: &str) -> Result<u64, Error> {
    let n = int(v, what)?;
    u64::try_from(n).map_err(|_| unexpected(what, v))
}

pub(crate) fn text(v: &Value, what: &str) -> Result<String, Error> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| unexpected(what, v)),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Okay => Ok("OK".to_string()),
        other => Err(unexpected(what, other)),
    }
}

/// A reply that must be an array of exactly `N` items.
pub(crate) fn tuple<const N: usize>(v: Value, what: &str) -> Result<[Value; N], Error> {
    array(v, what)?
        .try_into()
        .map_err(|items: Vec<Value>| Error::UnexpectedReply(format!("{what}: {items:?}").into()))
}

/// Fails unless a reply's records match its hashes one for one (a zip would drop the extra
/// ones without a word).
pub(crate) fn same_len(hashes: usize, records: usize, what: &str) -> Result<(), Error> {
    if hashes == records {
        return Ok(());
    }
    Err(Error::UnexpectedReply(
        format!("{what}: {hashes} hashes but {records} records").into(),
    ))
}

/// The first item of a script's reply, as text: the word that says what the call did (`ok`,
/// `applied`, …); `None` for an empty reply.
pub(crate) fn status(reply: &[Value], what: &str) -> Result<Option<String>, Error> {
    reply.first().map(|v| text(v, what)).transpose()
}

/// `Nil` (Lua `false`) as `None`.
pub(crate) fn opt_text(v: &Value, what: &str) -> Result<Option<String>, Error> {
    match v {
        Value::Nil => Ok(None),
        other => text(other, what).map(Some),
    }
}

pub(crate) fn bytes(v: Value, what: &str) -> Result<Vec<u8>, Error> {
    match v {
        Value::BulkString(b) => Ok(b),
        other => Err(unexpected(what, &other)),
    }
}

/// Encodes a chain point for storage: `origin`, `<slot>` or `<slot>:<hash hex>`.
pub(crate) fn encode_point(p: &ChainPoint) -> String {
    match p {
        ChainPoint::Origin => "origin".to_string(),
        ChainPoint::Slot(s) => s.to_string(),
        ChainPoint::Specific(s, h) => format!("{s}:{h}"),
    }
}

/// The entry of a block in the applied chain (`P:chain`): the slot as 20 digits, so that slots
/// compare exactly as strings inside Lua, then `:<hash>` for a `Specific` point. `None` for
/// `Origin`, which names no block. [`decode_point`] reads it back.
pub(crate) fn chain_member(p: &ChainPoint) -> Option<String> {
    match p {
        ChainPoint::Origin => None,
        ChainPoint::Slot(s) => Some(format!("{s:020}")),
        ChainPoint::Specific(s, h) => Some(format!("{s:020}:{h}")),
    }
}

/// Decodes what [`encode_point`] (or [`chain_member`]) wrote; `""` is no point.
pub(crate) fn decode_point(s: &str, key: &str) -> Result<Option<ChainPoint>, Error> {
    let bad = || Error::Corrupt {
        key: key.to_string(),
        detail: format!("bad chain point {s:?}"),
    };
    if s.is_empty() {
        return Ok(None);
    }
    if s == "origin" {
        return Ok(Some(ChainPoint::Origin));
    }
    let (slot, hash) = match s.split_once(':') {
        Some((slot, hash)) => (slot, Some(hash)),
        None => (s, None),
    };
    let slot: u64 = slot.parse().map_err(|_| bad())?;
    Ok(Some(match hash {
        Some(h) => ChainPoint::Specific(slot, h.parse::<BlockHash>().map_err(|_| bad())?),
        None => ChainPoint::Slot(slot),
    }))
}

/// What `P:txs` stores for a tx: `<era>|<body>`, written once by `receive`.
pub(crate) fn tx_record(payload: &EraCbor) -> Vec<u8> {
    let mut record = format!("{}|", payload.0).into_bytes();
    record.extend_from_slice(&payload.1);
    record
}

/// Reads a stored record back (see [`tx_record`]); `key` names it in the error.
pub(crate) fn decode_record(v: Value, key: impl Fn() -> String) -> Result<EraCbor, Error> {
    match v {
        Value::BulkString(record) => record_from(record, key),
        Value::Nil => Err(Error::Corrupt {
            key: key(),
            detail: "the tx has no record".into(),
        }),
        other => Err(unexpected("tx record", &other)),
    }
}

/// The record in `raw`, the bytes of a `P:txs` value.
fn record_from(mut raw: Vec<u8>, key: impl Fn() -> String) -> Result<EraCbor, Error> {
    let era = {
        let bar = raw.iter().position(|&b| b == b'|');
        bar.and_then(|bar| Some((std::str::from_utf8(&raw[..bar]).ok()?.parse().ok()?, bar)))
    };
    match era {
        // The body stays in the reply's buffer (no copy of it: a read returns up to a
        // thousand at a time).
        Some((era, bar)) => {
            raw.drain(..=bar);
            Ok(EraCbor(era, raw))
        }
        None => {
            let shown = &raw[..];
            Err(Error::Corrupt {
                key: key(),
                detail: format!(
                    "not a record: {:?}",
                    String::from_utf8_lossy(&shown[..shown.len().min(32)])
                ),
            })
        }
    }
}

/// A tx hash as Redis holds it: its 32 bytes.
pub(crate) fn hash(v: &Value, what: &str) -> Result<TxHash, Error> {
    match v {
        Value::BulkString(b) => <[u8; 32]>::try_from(&b[..])
            .map(TxHash::from)
            .map_err(|_| unexpected(what, v)),
        other => Err(unexpected(what, other)),
    }
}

/// A sorted-set score that must be a whole number (event numbers, sequences, heights).
pub(crate) fn score(v: &Value, key: &str) -> Result<u64, Error> {
    // The common case, a whole number in a bulk string, without an allocation (a read decodes
    // up to a thousand scores at a time).
    if let Value::BulkString(b) = v {
        if let Some(n) = std::str::from_utf8(b)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
        {
            return Ok(n);
        }
    }
    let text = text(v, "score")?;
    let bad = || Error::Corrupt {
        key: key.to_string(),
        detail: format!("not a whole score: {text:?}"),
    };
    match text.parse::<u64>() {
        Ok(n) => Ok(n),
        Err(_) => {
            let f: f64 = text.parse().map_err(|_| bad())?;
            if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 {
                Ok(f as u64)
            } else {
                Err(bad())
            }
        }
    }
}

/// What the stage bits of a `P:inflight` score are measured against (see `src/keys.rs`): a score
/// is `n·2¹⁷ + x`, with `x` 0 Propagated, 1 Acknowledged, `2 + (hc mod 131070)` Confirmed.
pub(crate) const STAGE_BITS: u64 = 1 << 17;
const HEIGHT_MOD: u64 = STAGE_BITS - 2;

/// How to read inflight txs: the applied chain's height, the points of the blocks that first
/// confirmed live txs, and the marks (where the misses of Propagated and Acknowledged txs count
/// from). Built from what `peek_inflight.lua`, `find_inflight.lua` and `check_status.lua` return.
pub(crate) struct InflightView {
    height: u64,
    /// Confirming height → its point.
    points: std::collections::BTreeMap<u64, ChainPoint>,
    /// (first event number, height), by event number.
    marks: Vec<(u64, u64)>,
    points_key: String,
    marks_key: String,
}

impl InflightView {
    /// From `H`, the `P:points` members and the `P:marks` members with their scores.
    pub fn new(height: &Value, points: Value, marks: Value, keys: &Keys) -> Result<Self, Error> {
        let points_key = keys.name(Key::Points).to_string();
        let marks_key = keys.name(Key::Marks).to_string();
        let height_text = text(height, "height")?;
        let height = height_text.parse().map_err(|_| Error::Corrupt {
            key: format!("{} H", keys.meta),
            detail: format!("not a number: {height_text:?}"),
        })?;
        let mut by_height = std::collections::BTreeMap::new();
        for p in array(points, "points")? {
            let member = text(&p, "point")?;
            let (at, point) = split_height(&member, &points_key)?;
            let point = decode_point(point, &points_key)?.ok_or_else(|| Error::Corrupt {
                key: points_key.clone(),
                detail: format!("no point in {member:?}"),
            })?;
            by_height.insert(at, point);
        }
        let flat = array(marks, "marks")?;
        let mut list = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [member, first] = pair else {
                return Err(unexpected("marks", &Value::Array(pair.to_vec())));
            };
            let member = text(member, "mark")?;
            let (at, rest) = split_height(&member, &marks_key)?;
            if !rest.is_empty() {
                return Err(Error::Corrupt {
                    key: marks_key.clone(),
                    detail: format!("not a height: {member:?}"),
                });
            }
            list.push((score(first, &marks_key)?, at));
        }
        list.sort_unstable();
        Ok(InflightView {
            height,
            points: by_height,
            marks: list,
            points_key,
            marks_key,
        })
    }

    /// The tx of `hash` with this `score` in `P:inflight` and its stored `record`.
    pub fn tx(&self, hash: TxHash, score: u64, payload: EraCbor) -> Result<MempoolTx, Error> {
        Ok(tx_with(hash, payload, self.status(score)?))
    }

    /// Stage and counters of an inflight tx from its score.
    pub fn status(&self, score: u64) -> Result<crate::types::TxStatus, Error> {
        let (n, x) = (score / STAGE_BITS, score % STAGE_BITS);
        let h = self.height;
        let small = |v: u64, key: &str| {
            u32::try_from(v).map_err(|_| Error::Corrupt {
                key: key.to_string(),
                detail: format!("counter out of range: {v}"),
            })
        };
        if x >= 2 {
            let back = (h + HEIGHT_MOD - (x - 2) % HEIGHT_MOD) % HEIGHT_MOD;
            let at = h
                .checked_sub(back)
                .and_then(|hc| Some((hc, self.points.get(&hc)?)));
            let (hc, at) = at.ok_or_else(|| Error::Corrupt {
                key: self.points_key.clone(),
                detail: format!("no point for the height of stage bits {x}"),
            })?;
            return Ok(crate::types::TxStatus {
                stage: MempoolTxStage::Confirmed,
                confirmations: small(h - hc + 1, &self.points_key)?,
                non_confirmations: 0,
                confirmed_at: Some(*at),
            });
        }
        // The last mark at or below `n` (marks are sorted by their first number).
        let below = self.marks.partition_point(|(first, _)| *first <= n);
        let hi = below
            .checked_sub(1)
            .and_then(|i| self.marks.get(i))
            .map(|(_, at)| *at)
            .filter(|at| *at <= h)
            .ok_or_else(|| Error::Corrupt {
                key: self.marks_key.clone(),
                detail: format!("no mark at or below event {n}"),
            })?;
        Ok(crate::types::TxStatus {
            stage: if x == 0 {
                MempoolTxStage::Propagated
            } else {
                MempoolTxStage::Acknowledged
            },
            confirmations: 0,
            non_confirmations: small(h - hi, &self.marks_key)?,
            confirmed_at: None,
        })
    }
}

/// Splits `<height, 12 digits><rest>` (members of `P:points`, `P:marks`, `P:confirmed`).
pub(crate) fn split_height<'a>(member: &'a str, key: &str) -> Result<(u64, &'a str), Error> {
    member
        .get(..12)
        .and_then(|h| h.parse().ok())
        .map(|h| (h, &member[12..]))
        .ok_or_else(|| Error::Corrupt {
            key: key.to_string(),
            detail: format!("no height in {member:?}"),
        })
}

/// One entry of one of our streams (the finalized log, the events), whose ids are `<n>-0`.
pub(crate) struct StreamEntry {
    /// `n`: the log sequence or the event number.
    pub seq: u64,
    /// The entry's id as Redis sent it, to name the entry in an error ([`StreamEntry::key`]).
    id: Vec<u8>,
    /// Field names and values, alternating.
    pub fields: Vec<Value>,
}

impl StreamEntry {
    /// `<stream> <id>`, naming the entry in a `Corrupt` error. Built only when needed: a read
    /// of the log decodes up to 500 entries a page.
    pub fn key(&self, stream: &str) -> String {
        entry_key(stream, &self.id)
    }
}

fn entry_key(stream: &str, id: &[u8]) -> String {
    format!("{stream} {}", String::from_utf8_lossy(id))
}

/// Splits a raw `XRANGE`/`XREAD` entry `[id, [field, value, ...]]` of `stream`.
pub(crate) fn stream_entry(v: Value, stream: &str) -> Result<StreamEntry, Error> {
    let [id, fields] = tuple(v, "stream entry")?;
    let id = bytes(id, "stream entry id")?;
    let seq = id
        .iter()
        .position(|&b| b == b'-')
        .and_then(|dash| std::str::from_utf8(&id[..dash]).ok()?.parse().ok());
    let Some(seq) = seq else {
        return Err(Error::Corrupt {
            key: entry_key(stream, &id),
            detail: "bad entry id".into(),
        });
    };
    Ok(StreamEntry {
        seq,
        id,
        fields: array(fields, "stream entry fields")?,
    })
}

/// One status line of a log entry ([`LogEntry`]): `<F|D><hash, 32 bytes><c>|<m>|<point>`.
pub(crate) fn decode_log_status(
    raw: &[u8],
    key: impl Fn() -> String,
) -> Result<(TxHash, TxStatus), Error> {
    let bad = || Error::Corrupt {
        key: key(),
        detail: format!(
            "not a log status: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(48)])
        ),
    };
    if raw.len() < 33 {
        return Err(bad());
    }
    let stage = match raw[0] {
        b'F' => MempoolTxStage::Finalized,
        b'D' => MempoolTxStage::Dropped,
        _ => return Err(bad()),
    };
    let hash = TxHash::from(<[u8; 32]>::try_from(&raw[1..33]).map_err(|_| bad())?);
    let rest = std::str::from_utf8(&raw[33..]).map_err(|_| bad())?;
    let mut parts = rest.splitn(3, '|');
    let (Some(c), Some(m), Some(at)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    Ok((
        hash,
        TxStatus {
            stage,
            confirmations: c.parse().map_err(|_| bad())?,
            non_confirmations: m.parse().map_err(|_| bad())?,
            confirmed_at: decode_point(at, "").map_err(|_| bad())?,
        },
    ))
}

/// One entry of the finalized log: the status lines ([`decode_log_status`]) of the txs one
/// `confirm` let go (up to 256 of them), sequences `first..=last` (its id is `<last>-<first>`),
/// separated by line breaks. A line ends at the first line break after its hash, whose raw
/// bytes may hold one; a point never does.
pub(crate) struct LogEntry {
    /// The sequence of its first line.
    pub first: u64,
    /// The sequence of its last line.
    pub last: u64,
    id: Vec<u8>,
    t: Vec<u8>,
}

impl LogEntry {
    /// `<log> <id>`, naming the entry in a `Corrupt` error.
    pub fn key(&self, log: &str) -> String {
        entry_key(log, &self.id)
    }

    /// Its lines, oldest first; `Corrupt` unless there are as many as its id says.
    pub fn lines(&self, log: &str) -> Result<Vec<LogLine<'_>>, Error> {
        let t = &self.t[..];
        let mut out = Vec::with_capacity((self.last - self.first + 1).min(256) as usize);
        let mut p = 0;
        while p < t.len() {
            let short = || Error::Corrupt {
                key: self.key(log),
                detail: format!("line {} is too short", out.len() + 1),
            };
            let hash = t.get(p + 1..p + 33).ok_or_else(short)?;
            let hash = TxHash::from(<[u8; 32]>::try_from(hash).map_err(|_| short())?);
            // In bounds: the hash just read ends at p + 33, and `end` stays within `t`.
            let end = t[p + 33..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(t.len(), |i| p + 33 + i);
            out.push(LogLine {
                seq: self.first + out.len() as u64,
                hash,
                line: &t[p..end],
            });
            p = end + 1;
        }
        if out.len() as u64 != self.last - self.first + 1 {
            return Err(Error::Corrupt {
                key: self.key(log),
                detail: format!(
                    "holds {} lines, its id says {}",
                    out.len(),
                    self.last - self.first + 1
                ),
            });
        }
        Ok(out)
    }
}

/// One line of a [`LogEntry`].
pub(crate) struct LogLine<'a> {
    pub seq: u64,
    /// The tx the line is about (its bytes 1 to 32).
    pub hash: TxHash,
    /// The whole status line ([`decode_log_status`]).
    pub line: &'a [u8],
}

/// Splits a raw `XRANGE` entry of the finalized log `log` (see [`LogEntry`]).
pub(crate) fn log_entry(v: Value, log: &str) -> Result<LogEntry, Error> {
    let StreamEntry {
        seq: last,
        id,
        fields,
    } = stream_entry(v, log)?;
    let corrupt = |detail: &str| Error::Corrupt {
        key: entry_key(log, &id),
        detail: detail.to_string(),
    };
    let first = id
        .iter()
        .position(|&b| b == b'-')
        .and_then(|dash| {
            std::str::from_utf8(&id[dash + 1..])
                .ok()?
                .parse::<u64>()
                .ok()
        })
        .filter(|first| (1..=last).contains(first))
        .ok_or_else(|| corrupt("bad entry id"))?;
    let mut fields = fields.into_iter();
    let mut t = None;
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if matches!(&name, Value::BulkString(n) if n == b"t") {
            t = Some(value);
            break;
        }
    }
    match t {
        Some(Value::BulkString(t)) => Ok(LogEntry { first, last, id, t }),
        Some(other) => Err(unexpected("log entry", &other)),
        None => Err(corrupt("field t missing")),
    }
}

/// The members of a `ZRANGE` of `P:replaced` (named `key` in errors): `<seq, 16 digits><record>`
/// each, as (seq, record).
pub(crate) fn replaced_records(v: Value, key: &str) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    array(v, "replaced records")?
        .into_iter()
        .map(|member| {
            let mut raw = bytes(member, "replaced record")?;
            let seq = raw
                .get(..16)
                .and_then(|digits| std::str::from_utf8(digits).ok()?.parse().ok())
                .ok_or_else(|| Error::Corrupt {
                    key: key.to_string(),
                    detail: format!(
                        "not a replaced record: {:?}",
                        String::from_utf8_lossy(&raw[..raw.len().min(32)])
                    ),
                })?;
            raw.drain(..16);
            Ok((seq, raw))
        })
        .collect()
}

/// A logged tx from its status line and its record.
pub(crate) fn logged_tx(
    line: &[u8],
    record: Value,
    line_key: impl Fn() -> String,
    record_key: impl Fn() -> String,
) -> Result<MempoolTx, Error> {
    let (hash, status) = decode_log_status(line, line_key)?;
    Ok(tx_with(hash, decode_record(record, record_key)?, status))
}

/// A tx from its hash, payload and status: the one place the fields are put together.
fn tx_with(hash: TxHash, payload: EraCbor, status: TxStatus) -> MempoolTx {
    MempoolTx {
        hash,
        payload,
        stage: status.stage,
        confirmations: status.confirmations,
        non_confirmations: status.non_confirmations,
        confirmed_at: status.confirmed_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_round_trip() {
        let h = BlockHash::from([7; 32]);
        for p in [
            ChainPoint::Origin,
            ChainPoint::Slot(42),
            ChainPoint::Specific(u64::MAX, h),
        ] {
            assert_eq!(decode_point(&encode_point(&p), "k").unwrap(), Some(p));
            if let Some(member) = chain_member(&p) {
                assert_eq!(decode_point(&member, "k").unwrap(), Some(p));
                assert_eq!(member.find(':').unwrap_or(member.len()), 20);
            }
        }
        assert_eq!(chain_member(&ChainPoint::Origin), None);
        assert!(decode_point("x:y", "k").is_err());
    }

    #[test]
    fn records_and_log_statuses_round_trip() {
        let payload = EraCbor(6, vec![0x84, b'|', 0, 0xff]);
        let record = tx_record(&payload);
        assert_eq!(&record[..2], b"6|");
        let back = decode_record(Value::BulkString(record), || "k".into()).unwrap();
        assert_eq!(back, payload);
        assert!(decode_record(Value::BulkString(b"garbage".to_vec()), || "k".into()).is_err());
        assert!(decode_record(Value::Nil, || "k".into()).is_err());

        let hash = TxHash::from([b'|'; 32]);
        let mut raw = b"F".to_vec();
        raw.extend_from_slice(hash.as_bytes());
        raw.extend_from_slice(b"6|0|12:");
        raw.extend_from_slice(BlockHash::from([1; 32]).to_string().as_bytes());
        let (h, status) = decode_log_status(&raw, || "k".into()).unwrap();
        assert_eq!(h, hash);
        assert_eq!(status.stage, MempoolTxStage::Finalized);
        assert_eq!(status.confirmations, 6);
        assert_eq!(status.confirmed_at.map(|p| p.slot()), Some(12));
        assert!(decode_log_status(b"X", || "k".into()).is_err());
    }

    #[test]
    fn an_inflight_score_says_stage_and_counters() {
        let keys = Keys::new("p");
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let view = InflightView::new(
            &bulk("10"),
            Value::Array(vec![bulk("00000000000912")]),
            Value::Array(vec![
                bulk("000000000007"),
                bulk("5"),
                bulk("000000000009"),
                bulk("40"),
            ]),
            &keys,
        )
        .unwrap();
        let status = |n: u64, x: u64| view.status(n * STAGE_BITS + x).unwrap();
        assert_eq!(status(5, 0).stage, MempoolTxStage::Propagated);
        assert_eq!(status(5, 0).non_confirmations, 3);
        assert_eq!(status(39, 1).non_confirmations, 3);
        assert_eq!(status(40, 1).stage, MempoolTxStage::Acknowledged);
        assert_eq!(status(40, 1).non_confirmations, 1);
        let c = status(41, 2 + 9);
        assert_eq!(c.stage, MempoolTxStage::Confirmed);
        assert_eq!(c.confirmations, 2);
        assert_eq!(c.confirmed_at, Some(ChainPoint::Slot(12)));
        // Before every mark, or confirmed at a height without a point: corrupt.
        assert!(view.status(4 * STAGE_BITS).is_err());
        assert!(view.status(41 * STAGE_BITS + 2 + 8).is_err());
    }
}
