//! The calls any node makes on transactions: receive them, read the pending queue and the
//! inflight set, move them along, and read a status or the finalized log.
//!
//! No call holds Redis for long, whatever its size: a read of more than a page is served in
//! pages of [`READ_PAGE`] txs ([`LOG_PAGE`] log entries), one round trip each, and a batch of
//! more than [`WRITE_BATCH`] hashes is moved in batches of that size, each one script.

use std::collections::HashSet;

use redis::Value;

use super::RedisMempool;
use crate::codec;
use crate::keys::Key;
use crate::types::{MempoolPage, MempoolTx, MempoolTxStage, TxHash, TxStatus};
use crate::Error;

/// Txs per page of `peek_pending`/`peek_inflight`: one script returns at most this many (about
/// half a millisecond of server time for 300-byte txs on a shared 2-core machine, see
/// BENCHMARKS.md).
pub(crate) const READ_PAGE: usize = 250;

/// Log entries per page of `dump_finalized`: one `XRANGE` returns at most this many.
pub(crate) const LOG_PAGE: usize = 500;

/// Hashes per script of `mark_inflight`/`mark_acknowledged`.
pub(crate) const WRITE_BATCH: usize = 256;

impl RedisMempool {
    /// Adds a transaction to the tail of the pending queue.
    ///
    /// Fails with [`Error::DuplicateTx`] if the hash is pending, inflight, or Finalized in the
    /// retained log (a Dropped tx may be received again), [`Error::TxTooLarge`] or
    /// [`Error::MempoolFull`]; nothing is stored then. The stage and counters of `tx` are
    /// ignored: it always enters as Pending.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, EraCbor, Error, MempoolTx, RedisMempool, TxHash};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let tx = MempoolTx::new(TxHash::from([1; 32]), EraCbor(6, vec![0x84, 0xa0]));
    /// match mempool.receive(tx) {
    ///     Ok(()) => println!("queued"),
    ///     Err(Error::DuplicateTx) => println!("already known"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn receive(&self, tx: MempoolTx) -> Result<(), Error> {
        let max = self.inner.config.max_tx_size;
        if tx.payload.1.len() > max {
            return Err(Error::TxTooLarge {
                size: tx.payload.1.len(),
                max,
            });
        }
        let record = codec::tx_record(&tx.payload);
        let call = self
            .inner
            .scripts
            .receive(&tx.hash, &record, self.inner.config.max_pending);
        let reply = self.exec(call)?;
        match codec::text(&reply, "receive")?.as_str() {
            "ok" => Ok(()),
            "dup" => Err(Error::DuplicateTx),
            "full" => Err(Error::MempoolFull {
                max: self.inner.config.max_pending,
            }),
            _ => Err(Error::UnexpectedReply(format!("receive: {reply:?}").into())),
        }
    }

    /// Whether the pending queue holds any transaction.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// if mempool.has_pending()? {
    ///     println!("{} to propagate", mempool.peek_pending(usize::MAX)?.len());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn has_pending(&self) -> Result<bool, Error> {
        let keys = &self.inner.keys;
        let n = self.plain(redis::cmd("ZCARD").arg(&keys.pending), &[Key::Pending])?;
        Ok(codec::int(&n, "has_pending")? > 0)
    }

    /// The first `limit` pending transactions in queue order, with payloads; nothing is removed.
    ///
    /// Up to 250 txs are one atomic read. A larger `limit` is read in pages of 250, one round
    /// trip each, every page going on after the last tx of the one before: writes that land
    /// between pages show as they would to calls made one after the other. The result then holds
    /// every tx that stayed pending throughout, in queue order, once each; a tx that left the
    /// queue meanwhile may be missing, and txs that joined meanwhile may follow at the end.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool, TxHash};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let batch = mempool.peek_pending(50)?;
    /// // ... send each tx.payload to the peers, then:
    /// let sent: Vec<TxHash> = batch.iter().map(|tx| tx.hash).collect();
    /// mempool.mark_inflight(&sent)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn peek_pending(&self, limit: usize) -> Result<Vec<MempoolTx>, Error> {
        let mut out = Vec::new();
        let mut once = HashSet::new();
        let mut after = "-inf".to_string();
        while out.len() < limit {
            let want = limit - out.len();
            let count = want.min(READ_PAGE);
            let more = want > count;
            let call = self.inner.scripts.peek_pending(&after, count as u64, more);
            let [hashes, records, last] = codec::tuple(self.exec(call)?, "peek_pending")?;
            let hashes = codec::array(hashes, "pending hashes")?;
            let records = codec::array(records, "pending records")?;
            let full = hashes.len() == count;
            for (hash, record) in hashes.iter().zip(records) {
                let hash = codec::hash(hash, "pending hash")?;
                let payload =
                    codec::decode_record(record, || format!("{} {hash}", self.inner.keys.txs))?;
                if once.insert(hash) {
                    out.push(MempoolTx::new(hash, payload));
                }
            }
            match last {
                Value::Nil => break,
                last if full && more => after = format!("({}", codec::text(&last, "score")?),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Up to `limit` inflight transactions (Propagated, Acknowledged or Confirmed) in the order
    /// they were propagated, with payloads.
    ///
    /// Read in pages of 250 txs like [`peek_pending`](RedisMempool::peek_pending): each page is
    /// atomic, a stage change between pages shows in the later pages only, and no tx comes twice.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// for tx in mempool.peek_inflight(100)? {
    ///     println!("{} {:?}: {} confirmations", tx.hash, tx.stage, tx.confirmations);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn peek_inflight(&self, limit: usize) -> Result<Vec<MempoolTx>, Error> {
        let mut out = Vec::new();
        let mut once = HashSet::new();
        let mut from = 0;
        while out.len() < limit {
            let count = (limit - out.len()).min(READ_PAGE);
            let reply = codec::array(
                self.exec(self.inner.scripts.peek_inflight(from, count as u64))?,
                "peek_inflight",
            )?;
            let Ok([height, rows, records, points, marks]) = <[Value; 5]>::try_from(reply) else {
                break;
            };
            let (page, last) = self.inflight_rows(&height, rows, records, points, marks)?;
            let full = page.len() == count;
            out.extend(page.into_iter().filter(|tx| once.insert(tx.hash)));
            match last {
                Some(score) if full => from = (score / codec::STAGE_BITS + 1) * codec::STAGE_BITS,
                _ => break,
            }
        }
        Ok(out)
    }

    /// Decodes a page of inflight txs (see `peek_inflight.lua`); also returns the last score.
    fn inflight_rows(
        &self,
        height: &Value,
        rows: Value,
        records: Value,
        points: Value,
        marks: Value,
    ) -> Result<(Vec<MempoolTx>, Option<u64>), Error> {
        let keys = &self.inner.keys;
        let view = codec::InflightView::new(height, points, marks, keys)?;
        let rows = codec::array(rows, "inflight rows")?;
        let records = codec::array(records, "inflight records")?;
        let mut out = Vec::with_capacity(records.len());
        let mut last = None;
        for (pair, record) in rows.chunks(2).zip(records) {
            let [hash, score] = pair else {
                return Err(Error::UnexpectedReply(format!("inflight: {pair:?}").into()));
            };
            let hash = codec::hash(hash, "inflight hash")?;
            let score = codec::score(score, &keys.inflight)?;
            let payload = codec::decode_record(record, || format!("{} {hash}", keys.txs))?;
            out.push(view.tx(hash, score, payload)?);
            last = Some(score);
        }
        Ok((out, last))
    }

    /// Moves each pending hash to Propagated (out of the pending queue; its miss count starts
    /// now). Hashes that are not pending are ignored. Up to 256 hashes are one atomic call; more
    /// are moved 256 at a time, each batch atomic.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool, TxHash};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let hash = TxHash::from([1; 32]);
    /// mempool.mark_inflight(&[hash])?; // sent to the peers
    /// mempool.mark_acknowledged(&[hash])?; // a peer took it
    /// # Ok(())
    /// # }
    /// ```
    pub fn mark_inflight(&self, hashes: &[TxHash]) -> Result<(), Error> {
        if hashes.is_empty() {
            return Ok(());
        }
        for batch in hashes.chunks(WRITE_BATCH) {
            let moved = self.exec(self.inner.scripts.mark_inflight(batch))?;
            codec::int(&moved, "moved")?;
        }
        Ok(())
    }

    /// Moves each Propagated hash to Acknowledged; others are ignored. Batches of 256, as
    /// [`mark_inflight`](RedisMempool::mark_inflight).
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool, TxHash};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let hash = TxHash::from([1; 32]);
    /// mempool.mark_acknowledged(&[hash])?;
    /// println!("{:?}", mempool.check_status(&hash)?.stage);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mark_acknowledged(&self, hashes: &[TxHash]) -> Result<(), Error> {
        if hashes.is_empty() {
            return Ok(());
        }
        for batch in hashes.chunks(WRITE_BATCH) {
            let moved = self.exec(self.inner.scripts.mark_acknowledged(batch))?;
            codec::int(&moved, "moved")?;
        }
        Ok(())
    }

    /// The inflight transaction with this hash, if it is inflight.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool, TxHash};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let hash: TxHash = "ab".repeat(32).parse()?;
    /// if let Some(tx) = mempool.find_inflight(&hash)? {
    ///     println!("{} bytes of era {}", tx.payload.1.len(), tx.payload.0);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn find_inflight(&self, hash: &TxHash) -> Result<Option<MempoolTx>, Error> {
        match self.exec(self.inner.scripts.find_inflight(hash))? {
            Value::Nil => Ok(None),
            v => {
                let [height, rows, records, points, marks] = codec::tuple(v, "find_inflight")?;
                let (txs, _) = self.inflight_rows(&height, rows, records, points, marks)?;
                Ok(txs.into_iter().next())
            }
        }
    }

    /// The stage and counters of a transaction: live ones (pending or inflight) first, then
    /// the retained finalized log; `Unknown` otherwise.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, MempoolTxStage, RedisMempool, TxHash};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let status = mempool.check_status(&TxHash::from([1; 32]))?;
    /// if status.stage == MempoolTxStage::Finalized {
    ///     println!("final after {} confirmations", status.confirmations);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn check_status(&self, hash: &TxHash) -> Result<TxStatus, Error> {
        let keys = &self.inner.keys;
        let reply = self.exec(self.inner.scripts.check_status(hash))?;
        if reply == Value::Nil {
            return Ok(TxStatus::unknown());
        }
        let mut reply = codec::array(reply, "check_status")?.into_iter();
        let kind = codec::text(&reply.next().unwrap_or(Value::Nil), "check_status")?;
        let mut next = || reply.next().unwrap_or(Value::Nil);
        match kind.as_str() {
            "P" => Ok(TxStatus {
                stage: MempoolTxStage::Pending,
                ..TxStatus::unknown()
            }),
            "I" => {
                let (height, score, points, marks) = (next(), next(), next(), next());
                let view = codec::InflightView::new(&height, points, marks, keys)?;
                view.status(codec::score(&score, &keys.inflight)?)
            }
            "L" => {
                let key = format!("{} {hash}", keys.done);
                match next() {
                    Value::BulkString(raw) => {
                        let (logged, status) = codec::decode_log_status(&raw, &key)?;
                        if logged != *hash {
                            return Err(Error::Corrupt {
                                key,
                                detail: format!("points at the log entry of {logged}"),
                            });
                        }
                        Ok(status)
                    }
                    _ => Err(Error::Corrupt {
                        key,
                        detail: format!("points at a missing log entry ({:?})", next()),
                    }),
                }
            }
            _ => Err(Error::UnexpectedReply(
                format!("check_status: {kind}").into(),
            )),
        }
    }

    /// Entries of the finalized log (Finalized and Dropped txs, with payloads) whose sequence is
    /// at least `cursor`, oldest first, at most `limit` of them. Sequences start at 1 and are
    /// never reused; pass `next_cursor` back to read on. The log keeps the newest
    /// `max_finalized` entries.
    ///
    /// Up to 500 entries are one `XRANGE` (one atomic read); more are read 500 at a time, one
    /// round trip each, every page going on at the sequence after the last one read: entries
    /// logged between pages show at the end, and entries trimmed meanwhile may be missing.
    ///
    /// ```no_run
    /// # use dolos_redis::{Config, RedisMempool};
    /// # fn main() -> Result<(), dolos_redis::Error> {
    /// # let mempool = RedisMempool::open(Config::new("redis://127.0.0.1:6379"))?;
    /// let mut cursor = 1;
    /// loop {
    ///     let page = mempool.dump_finalized(cursor, 100)?;
    ///     for tx in &page.items {
    ///         println!("{} {:?}", tx.hash, tx.stage);
    ///     }
    ///     match page.next_cursor {
    ///         Some(next) => cursor = next,
    ///         None => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn dump_finalized(&self, cursor: u64, limit: usize) -> Result<MempoolPage, Error> {
        let keys = &self.inner.keys;
        let mut items = Vec::new();
        let mut from = cursor;
        loop {
            // One entry more than the page needs tells the next cursor.
            let count = (limit - items.len()).saturating_add(1).min(LOG_PAGE);
            let cmd = redis::cmd("XRANGE")
                .arg(&keys.log)
                .arg(format!("{from}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .to_owned();
            let entries = codec::array(self.plain(&cmd, &[Key::Log])?, "dump_finalized")?;
            let got = entries.len();
            for entry in entries {
                let (seq, tx) = codec::decode_log_entry(entry, keys)?;
                if items.len() == limit {
                    return Ok(MempoolPage {
                        items,
                        next_cursor: Some(seq),
                    });
                }
                items.push(tx);
                from = seq + 1;
            }
            if got < count {
                return Ok(MempoolPage {
                    items,
                    next_cursor: None,
                });
            }
        }
    }
}
