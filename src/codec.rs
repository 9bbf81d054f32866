//! How values cross the wire: Redis replies read into Rust values, and the domain values
//! (chain points, stages, transactions, stream entries) in the forms the scripts store them.
//!
//! Nothing here panics: a reply of an unexpected shape is an [`Error::UnexpectedReply`] naming
//! what was being read, and stored data that does not decode is an [`Error::Corrupt`] naming
//! its key.

use redis::Value;

use crate::keys::Keys;
use crate::types::{BlockHash, ChainPoint, EraCbor, MempoolTx, MempoolTxStage, TxHash};
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

pub(crate) fn count(v: &Value, what: &str) -> Result<u32, Error> {
    let n = int(v, what)?;
    u32::try_from(n).map_err(|_| unexpected(what, v))
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

fn bytes(v: Value, what: &str) -> Result<Vec<u8>, Error> {
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

pub(crate) fn decode_stage(code: &str, key: &str) -> Result<MempoolTxStage, Error> {
    Ok(match code {
        "P" => MempoolTxStage::Pending,
        "R" => MempoolTxStage::Propagated,
        "A" => MempoolTxStage::Acknowledged,
        "C" => MempoolTxStage::Confirmed,
        "F" => MempoolTxStage::Finalized,
        "D" => MempoolTxStage::Dropped,
        other => {
            return Err(Error::Corrupt {
                key: key.to_string(),
                detail: format!("unknown stage {other:?}"),
            })
        }
    })
}

/// Decodes `{hash, stage, confirmations, misses, confirmed_at, era, body}` (see `tx_reply` in
/// `prelude.lua`).
pub(crate) fn decode_tx(v: Value, keys: &Keys) -> Result<MempoolTx, Error> {
    let [hash, stage, c, m, at, era, body] = tuple(v, "tx")?;
    let hash_text = text(&hash, "tx hash")?;
    let key = format!("{} {}", keys.txs, hash_text);
    let hash: TxHash = hash_text.parse().map_err(|_| Error::Corrupt {
        key: key.clone(),
        detail: "bad tx hash".into(),
    })?;
    let era = text(&era, "era")?;
    let era: u16 = era.parse().map_err(|_| Error::Corrupt {
        key: key.clone(),
        detail: format!("bad era {era:?}"),
    })?;
    Ok(MempoolTx {
        hash,
        payload: EraCbor(era, bytes(body, "payload")?),
        stage: decode_stage(&text(&stage, "stage")?, &key)?,
        confirmations: count(&c, "confirmations")?,
        non_confirmations: count(&m, "misses")?,
        confirmed_at: decode_point(&text(&at, "confirmed_at")?, &key)?,
    })
}

/// One entry of one of our streams (the finalized log, the events), whose ids are `<n>-0`.
pub(crate) struct StreamEntry {
    /// `n`: the log sequence or the event number.
    pub seq: u64,
    /// `<stream> <id>`, to name the entry in a `Corrupt` error.
    pub key: String,
    /// Field names and values, alternating.
    pub fields: Vec<Value>,
}

/// Splits a raw `XRANGE`/`XREAD` entry `[id, [field, value, ...]]` of `stream`.
pub(crate) fn stream_entry(v: Value, stream: &str) -> Result<StreamEntry, Error> {
    let [id, fields] = tuple(v, "stream entry")?;
    let id = text(&id, "stream entry id")?;
    let key = format!("{stream} {id}");
    let seq = id
        .split_once('-')
        .and_then(|(n, _)| n.parse().ok())
        .ok_or_else(|| Error::Corrupt {
            key: key.clone(),
            detail: "bad entry id".into(),
        })?;
    Ok(StreamEntry {
        seq,
        key,
        fields: array(fields, "stream entry fields")?,
    })
}

/// Decodes one raw `XRANGE` entry of the finalized log into its sequence and tx.
pub(crate) fn decode_log_entry(v: Value, keys: &Keys) -> Result<(u64, MempoolTx), Error> {
    let StreamEntry { seq, key, fields } = stream_entry(v, &keys.log)?;
    let corrupt = |detail: String| Error::Corrupt {
        key: key.clone(),
        detail,
    };
    let mut fields = fields.into_iter();
    let (mut tx, mut st, mut c, mut m, mut at, mut era, mut body) =
        (None, None, None, None, None, None, None);
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match text(&name, "log field name")?.as_str() {
            "tx" => tx = Some(text(&value, "tx")?),
            "st" => st = Some(text(&value, "st")?),
            "c" => c = Some(count(&value, "c")?),
            "m" => m = Some(count(&value, "m")?),
            "at" => at = Some(text(&value, "at")?),
            "era" => era = Some(text(&value, "era")?),
            "body" => body = Some(bytes(value, "body")?),
            _ => {}
        }
    }
    let missing = |f: &str| corrupt(format!("field {f} missing"));
    let hash: TxHash = tx
        .ok_or_else(|| missing("tx"))?
        .parse()
        .map_err(|_| corrupt("bad tx hash".into()))?;
    let era = era.ok_or_else(|| missing("era"))?;
    let era: u16 = era
        .parse()
        .map_err(|_| corrupt(format!("bad era {era:?}")))?;
    Ok((
        seq,
        MempoolTx {
            hash,
            payload: EraCbor(era, body.ok_or_else(|| missing("body"))?),
            stage: decode_stage(&st.ok_or_else(|| missing("st"))?, &key)?,
            confirmations: c.ok_or_else(|| missing("c"))?,
            non_confirmations: m.ok_or_else(|| missing("m"))?,
            confirmed_at: decode_point(&at.unwrap_or_default(), &key)?,
        },
    ))
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
}
