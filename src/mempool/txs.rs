//! The calls any node makes on transactions: receive them, read the pending queue and the
//! inflight set, move them along, and read a status or the finalized log.

use redis::Value;

use super::{clamp, RedisMempool};
use crate::codec;
use crate::types::{MempoolPage, MempoolTx, TxHash, TxStatus};
use crate::Error;

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
        let call = self.inner.scripts.receive(
            &tx.hash,
            tx.payload.0,
            &tx.payload.1,
            self.inner.config.max_pending,
        );
        let reply = codec::array(self.exec(call)?, "receive")?;
        match codec::status(&reply, "receive")?.as_deref() {
            Some("ok") => Ok(()),
            Some("dup") => Err(Error::DuplicateTx),
            Some("full") => Err(Error::MempoolFull {
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
        let n = codec::int(&self.exec(self.inner.scripts.has_pending())?, "has_pending")?;
        Ok(n > 0)
    }

    /// The first `limit` pending transactions in queue order, with payloads; nothing is removed.
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
        self.peek("pending", limit)
    }

    /// Up to `limit` inflight transactions (Propagated, Acknowledged or Confirmed) in the order
    /// they were propagated, with payloads.
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
        self.peek("inflight", limit)
    }

    fn peek(&self, set: &'static str, limit: usize) -> Result<Vec<MempoolTx>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let call = self.inner.scripts.peek(set, clamp(limit) - 1);
        let reply = codec::array(self.exec(call)?, "peek")?;
        reply
            .into_iter()
            .map(|v| codec::decode_tx(v, &self.inner.keys))
            .collect()
    }

    /// Moves each pending hash to Propagated (out of the pending queue; its miss count starts
    /// now). Hashes that are not pending are ignored.
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
        let moved = self.exec(self.inner.scripts.mark_inflight(hashes))?;
        codec::int(&moved, "moved").map(drop)
    }

    /// Moves each Propagated hash to Acknowledged; others are ignored.
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
        let moved = self.exec(self.inner.scripts.mark_acknowledged(hashes))?;
        codec::int(&moved, "moved").map(drop)
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
            v => codec::decode_tx(v, &self.inner.keys).map(Some),
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
        let hex = hash.to_hex();
        let reply = self.exec(self.inner.scripts.check_status(hash))?;
        if reply == Value::Nil {
            return Ok(TxStatus::unknown());
        }
        let [stage, c, m, at] = codec::tuple(reply, "check_status")?;
        let key = format!("{} {hex}", self.inner.keys.txs);
        Ok(TxStatus {
            stage: codec::decode_stage(&codec::text(&stage, "stage")?, &key)?,
            confirmations: codec::count(&c, "confirmations")?,
            non_confirmations: codec::count(&m, "misses")?,
            confirmed_at: codec::decode_point(&codec::text(&at, "confirmed_at")?, &key)?,
        })
    }

    /// Entries of the finalized log (Finalized and Dropped txs, with payloads) whose sequence is
    /// at least `cursor`, oldest first, at most `limit` of them. Sequences start at 1 and are
    /// never reused; pass `next_cursor` back to read on. The log keeps the newest
    /// `max_finalized` entries.
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
        let call = self.inner.scripts.dump_finalized(cursor, clamp(limit) + 1);
        let reply = self.exec(call)?;
        let mut items = Vec::new();
        let mut next_cursor = None;
        for entry in codec::array(reply, "dump_finalized")? {
            let (seq, tx) = codec::decode_log_entry(entry, &self.inner.keys)?;
            if items.len() == limit {
                next_cursor = Some(seq);
                break;
            }
            items.push(tx);
        }
        Ok(MempoolPage { items, next_cursor })
    }
}
