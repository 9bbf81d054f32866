//! The lines the harness writes to a node's stdin: the chain (`block`, `rollback`) and control
//! lines, one a line, in order. (What the node writes back, its `@`-lines, is read by
//! [`crate::cluster`].)
//!
//! ```text
//! block <slot> <block hash, 64 hex> [<tx hash, 64 hex> ...]   a block and the txs it contains
//! rollback <slot> <block hash> | rollback origin              the chain rolls back to that
//!                                                             block, which stays
//! submit off | submit on                                      stop / resume submitting
//! ping <token>                                                one Redis round trip, reported
//! quit                                                        release the lock and exit
//! ```
//!
//! Blank lines and lines starting with `#` are ignored.

use dolos_redis::{BlockHash, ChainPoint, TxHash};

/// One parsed input line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Block {
        point: ChainPoint,
        txs: Vec<TxHash>,
    },
    /// The chain rolls back to this point, which stays (`Origin`: every block goes).
    Rollback(ChainPoint),
    Submit(bool),
    /// Proves the node is not stuck: its input loop answers and it reaches Redis.
    Ping(String),
    Quit,
}

/// The `block` line for a block; the simulated chain writes these to every node.
pub fn block_line(point: &ChainPoint, txs: &[TxHash]) -> String {
    let mut line = format!("block {}", point_words(point));
    for tx in txs {
        line.push(' ');
        line.push_str(&tx.to_hex());
    }
    line
}

/// The `rollback` line for a rollback to `to`.
pub fn rollback_line(to: &ChainPoint) -> String {
    format!("rollback {}", point_words(to))
}

fn point_words(point: &ChainPoint) -> String {
    match point {
        ChainPoint::Origin => "origin".into(),
        ChainPoint::Slot(slot) => slot.to_string(),
        ChainPoint::Specific(slot, hash) => format!("{slot} {hash}"),
    }
}

/// `Ok(None)` for blank and comment lines.
pub fn parse_line(line: &str) -> Result<Option<Input>, String> {
    let mut words = line.split_whitespace();
    let Some(first) = words.next() else {
        return Ok(None);
    };
    if first.starts_with('#') {
        return Ok(None);
    }
    // `<slot> <hash>`, or `origin` where `allow_origin`.
    let mut point = |allow_origin: bool| -> Result<ChainPoint, String> {
        match words.next() {
            Some("origin") if allow_origin => Ok(ChainPoint::Origin),
            Some(slot) => {
                let slot = slot
                    .parse()
                    .map_err(|_| format!("bad slot {slot:?} in {line:?}"))?;
                let hash: BlockHash = words
                    .next()
                    .ok_or_else(|| format!("no block hash in {line:?}"))?
                    .parse()
                    .map_err(|e| format!("{e} in {line:?}"))?;
                Ok(ChainPoint::Specific(slot, hash))
            }
            None => Err(format!("no point in {line:?}")),
        }
    };
    match first {
        "block" => {
            let point = point(false)?;
            let txs = words
                .map(|w| w.parse().map_err(|e| format!("{e} in {line:?}")))
                .collect::<Result<_, _>>()?;
            return Ok(Some(Input::Block { point, txs }));
        }
        "rollback" => {
            let to = point(true)?;
            if words.next().is_some() {
                return Err(format!("unexpected words after the point in {line:?}"));
            }
            return Ok(Some(Input::Rollback(to)));
        }
        _ => {}
    }
    match (first, words.next(), words.next()) {
        ("submit", Some("on"), None) => Ok(Some(Input::Submit(true))),
        ("submit", Some("off"), None) => Ok(Some(Input::Submit(false))),
        ("ping", Some(token), None) => Ok(Some(Input::Ping(token.to_string()))),
        ("quit", None, None) => Ok(Some(Input::Quit)),
        _ => Err(format!("unknown input line {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_the_chain_writes_read_back_as_they_were_meant() {
        let point = ChainPoint::Specific(42, BlockHash::from([7; 32]));
        let txs = vec![TxHash::from([1; 32]), TxHash::from([2; 32])];
        assert_eq!(
            parse_line(&block_line(&point, &txs)),
            Ok(Some(Input::Block {
                point,
                txs: txs.clone()
            }))
        );
        for to in [point, ChainPoint::Origin] {
            assert_eq!(
                parse_line(&rollback_line(&to)),
                Ok(Some(Input::Rollback(to)))
            );
        }
        assert_eq!(parse_line("submit off"), Ok(Some(Input::Submit(false))));
        assert_eq!(parse_line("ping a1"), Ok(Some(Input::Ping("a1".into()))));
        assert_eq!(parse_line("quit"), Ok(Some(Input::Quit)));
        assert_eq!(parse_line("  # a comment"), Ok(None));
        assert!(parse_line("block origin").is_err());
        assert!(parse_line("rollback 1").is_err());
        assert!(parse_line("quit now").is_err());
    }
}
