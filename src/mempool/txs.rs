//! The calls any node makes on transactions: receive them, read the pending queue and the
//! inflight set, move them along, and read a status or the finalized log.
//!
//! No call holds Redis for long, whatever its size: a read of more than a page is served in
//! pages of [`READ_PAGE`] txs or [`LOG_PAGE`] lines of the log (two plain round trips each),
//! and a batch of more than [`WRITE_BATCH`] hashes is moved in batches of that size,
//! each one script. Reads of up to [`SCRIPT_READ`] txs are one script.

use std::collections::HashSet;

use redis::Value;

use super::RedisMempool;
use crate::codec;
use crate::keys::Key;
use crate::types::{EraCbor, MempoolPage, MempoolTx, MempoolTxStage, TxHash, TxStatus};
use crate::Error;

/// The largest read of `peek_pending`/`peek_inflight` served by a script in one round trip.
/// A script costs Redis about 1 µs more per tx than plain commands (each body crosses Lua
/// twice), plain commands cost the caller a second round trip. Redis's time is what every node
/// and the lease share, so past a small read the plain commands win; a small read, such as the
/// next few txs to propagate, keeps its single round trip (see DESIGN.md, "Large reads are
/// plain commands").
pub(crate) const SCRIPT_READ: usize = 32;

/// Txs per page of a plain read of `peek_pending`/`peek_inflight`: one `HMGET` of this many
/// 300-byte bodies costs Redis about half a millisecond on a 100k-tx mempool, within the 2 ms a
/// command may hold it (see BENCHMARKS.md).
pub(crate) const READ_PAGE: usize = 1000;

/// Lines of the log per page of `dump_finalized`: its `HMGET` reads at most this many records,
/// cold ones (last touched when the tx was received), within the 2 ms a command may hold Redis.
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
    /// A read of up to 32 txs is one script: one round trip, atomic. A larger read goes as
    /// plain commands, in pages of up to 1000 txs, each page two round trips: the page's hashes
    /// (one `ZRANGE`), then their bodies (one `HMGET`). Writes that land meanwhile show as they
    /// would to calls made one after the other: the result holds every tx that stayed pending
    /// throughout, in queue order, once each; a tx that left the queue meanwhile may still be
    /// there or missing (missing only if it also left the mempool, which can leave the result
    /// short of `limit`), and txs that joined meanwhile may follow at the end.
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
        if limit == 0 {
            return Ok(Vec::new());
        }
        if limit <= SCRIPT_READ {
            let call = self.inner.scripts.peek_pending(limit as u64);
            let [hashes, records] = codec::tuple(self.exec(call)?, "peek_pending")?;
            let hashes = codec::array(hashes, "pending hashes")?;
            let records = codec::array(records, "pending records")?;
            codec::same_len(hashes.len(), records.len(), "peek_pending")?;
            let mut out = Vec::with_capacity(hashes.len());
            for (hash, record) in hashes.iter().zip(records) {
                let hash = codec::hash(hash, "pending hash")?;
                let payload =
                    codec::decode_record(record, || format!("{} {hash}", self.inner.keys.txs))?;
                out.push(MempoolTx::new(hash, payload));
            }
            return Ok(out);
        }
        let keys = &self.inner.keys;
        let mut out = Vec::new();
        // A tx comes back under a new score after a rollback, so a later page may hold it
        // again; one page never holds a tx twice, and needs no set to say so.
        let single = limit <= READ_PAGE;
        let mut once = HashSet::new();
        let mut after = "-inf".to_string();
        while out.len() < limit {
            let count = (limit - out.len()).min(READ_PAGE);
            // The scores only where a next page goes on after the last one: Redis 7.0 formats
            // each score with printf, which costs about as much as a 300-byte body.
            let more = limit - out.len() > count;
            let mut page = redis::cmd("ZRANGE");
            page.arg(&keys.pending)
                .arg(&after)
                .arg("+inf")
                .arg("BYSCORE");
            page.arg("LIMIT").arg(0).arg(count);
            if more {
                page.arg("WITHSCORES");
            }
            let rows = codec::array(self.plain(&page, &[Key::Pending])?, "pending page")?;
            let mut hashes = Vec::with_capacity(rows.len());
            for row in rows.chunks(if more { 2 } else { 1 }) {
                let (hash, score) = match row {
                    [hash] => (hash, None),
                    [hash, score] => (hash, Some(score)),
                    _ => return Err(Error::UnexpectedReply(format!("pending: {row:?}").into())),
                };
                hashes.push(codec::hash(hash, "pending hash")?);
                if let Some(score) = score {
                    after = format!("({}", codec::text(score, "score")?);
                }
            }
            for (hash, payload) in hashes.iter().zip(self.bodies(&hashes, Key::Pending)?) {
                if let Some(payload) = payload {
                    if single || once.insert(*hash) {
                        out.push(MempoolTx::new(*hash, payload));
                    }
                }
            }
            if !more || hashes.len() < count {
                break;
            }
        }
        Ok(out)
    }

    /// Up to `limit` inflight transactions (Propagated, Acknowledged or Confirmed) in the order
    /// they were propagated, with payloads.
    ///
    /// Read like [`peek_pending`](RedisMempool::peek_pending): up to 32 txs in one atomic
    /// script, more in pages of up to 1000, each page two round trips (the page's hashes with
    /// what their stages and counters derive from, in one `MULTI`; then their bodies). A tx's
    /// stage and counters are those of the moment its page's hashes were read; a stage change
    /// after that shows in later pages only, no tx comes twice, and a tx that left the mempool
    /// before its body was read is missing (the result may then fall short of `limit`).
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
        if limit == 0 {
            return Ok(Vec::new());
        }
        if limit <= SCRIPT_READ {
            let call = self.inner.scripts.peek_inflight(limit as u64);
            let reply = codec::array(self.exec(call)?, "peek_inflight")?;
            // `{}` when nothing is inflight; any other shape is an error, never "none".
            if reply.is_empty() {
                return Ok(Vec::new());
            }
            let [height, rows, records, points, marks] =
                codec::tuple(Value::Array(reply), "peek_inflight")?;
            return self.inflight_txs(&height, rows, records, points, marks);
        }
        let keys = &self.inner.keys;
        let mut out = Vec::new();
        // A tx comes back under a new score after a rollback, so a later page may hold it
        // again; one page never holds a tx twice, and needs no set to say so.
        let single = limit <= READ_PAGE;
        let mut once = HashSet::new();
        let mut from = 0;
        while out.len() < limit {
            let count = (limit - out.len()).min(READ_PAGE);
            let mut page = redis::pipe();
            page.atomic();
            page.cmd("ZRANGE").arg(&keys.inflight).arg(from).arg("+inf");
            page.arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(count)
                .arg("WITHSCORES");
            page.cmd("HGET").arg(&keys.meta).arg("H");
            page.cmd("ZRANGE")
                .arg(keys.name(Key::Points))
                .arg(0)
                .arg(-1);
            page.cmd("ZRANGE")
                .arg(keys.name(Key::Marks))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES");
            let read = [Key::Inflight, Key::Meta, Key::Points, Key::Marks];
            let reply = self.plain_pipeline(&page, &read)?;
            let [rows, height, points, marks] = codec::tuple(Value::Array(reply), "inflight page")?;
            let height = match height {
                Value::Nil => Value::BulkString(b"0".to_vec()),
                h => h,
            };
            let view = codec::InflightView::new(&height, points, marks, keys)?;
            let rows = self.inflight_rows(rows)?;
            let hashes: Vec<TxHash> = rows.iter().map(|(hash, _)| *hash).collect();
            for ((hash, score), payload) in rows.iter().zip(self.bodies(&hashes, Key::Inflight)?) {
                if let Some(payload) = payload {
                    if single || once.insert(*hash) {
                        out.push(view.tx(*hash, *score, payload)?);
                    }
                }
            }
            match rows.last() {
                // Stage changes move a score only within its number's 2^17 (see src/keys.rs):
                // going on from the next number never skips nor repeats a tx.
                Some(&(_, score)) if rows.len() == count => {
                    from = (score / codec::STAGE_BITS + 1) * codec::STAGE_BITS
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Decodes what `peek_inflight.lua` and `find_inflight.lua` return.
    fn inflight_txs(
        &self,
        height: &Value,
        rows: Value,
        records: Value,
        points: Value,
        marks: Value,
    ) -> Result<Vec<MempoolTx>, Error> {
        let view = codec::InflightView::new(height, points, marks, &self.inner.keys)?;
        let rows = self.inflight_rows(rows)?;
        let records = codec::array(records, "inflight records")?;
        codec::same_len(rows.len(), records.len(), "peek_inflight")?;
        let mut out = Vec::with_capacity(rows.len());
        for ((hash, score), record) in rows.into_iter().zip(records) {
            let payload =
                codec::decode_record(record, || format!("{} {hash}", self.inner.keys.txs))?;
            out.push(view.tx(hash, score, payload)?);
        }
        Ok(out)
    }

    /// The (hash, score) pairs of a `ZRANGE … WITHSCORES` of `P:inflight`.
    fn inflight_rows(&self, rows: Value) -> Result<Vec<(TxHash, u64)>, Error> {
        let rows = codec::array(rows, "inflight rows")?;
        let mut out = Vec::with_capacity(rows.len() / 2);
        for pair in rows.chunks(2) {
            let [hash, score] = pair else {
                return Err(Error::UnexpectedReply(format!("inflight: {pair:?}").into()));
            };
            let hash = codec::hash(hash, "inflight hash")?;
            out.push((hash, codec::score(score, &self.inner.keys.inflight)?));
        }
        Ok(out)
    }

    /// The bodies of `hashes`, read with one plain `HMGET` after their hashes were read from
    /// `set` (`P:pending` or `P:inflight`): `None` for a tx that left the mempool in between.
    /// A body missing for another reason is corrupt data, not a departure: the rare read that
    /// finds one missing asks again, atomically, whether those txs are still in `set`.
    fn bodies(&self, hashes: &[TxHash], set: Key) -> Result<Vec<Option<EraCbor>>, Error> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.inner.keys;
        let mut read = redis::cmd("HMGET");
        read.arg(&keys.txs);
        for hash in hashes {
            read.arg(&hash.as_bytes()[..]);
        }
        let records = codec::array(self.plain(&read, &[Key::Txs])?, "tx records")?;
        if records.len() != hashes.len() {
            return Err(Error::UnexpectedReply(
                format!("HMGET of {} returned {}", hashes.len(), records.len()).into(),
            ));
        }
        let gone: Vec<&TxHash> = hashes
            .iter()
            .zip(&records)
            .filter(|(_, r)| matches!(r, Value::Nil))
            .map(|(hash, _)| hash)
            .collect();
        if !gone.is_empty() {
            let mut again = redis::pipe();
            again.atomic();
            again.cmd("ZMSCORE").arg(keys.name(set));
            for hash in &gone {
                again.arg(&hash.as_bytes()[..]);
            }
            again.cmd("HMGET").arg(&keys.txs);
            for hash in &gone {
                again.arg(&hash.as_bytes()[..]);
            }
            let reply = self.plain_pipeline(&again, &[set, Key::Txs])?;
            let [scores, records] = codec::tuple(Value::Array(reply), "records again")?;
            let scores = codec::array(scores, "scores again")?;
            let records = codec::array(records, "records again")?;
            for ((hash, score), record) in gone.iter().zip(scores).zip(records) {
                if score != Value::Nil && record == Value::Nil {
                    // Still in the set without a record: Err(Corrupt) naming the field.
                    codec::decode_record(record, || format!("{} {hash}", keys.txs))?;
                }
            }
        }
        hashes
            .iter()
            .zip(records)
            .map(|(hash, record)| match record {
                Value::Nil => Ok(None),
                record => codec::decode_record(record, || format!("{} {hash}", keys.txs)).map(Some),
            })
            .collect()
    }

    /// Moves each pending hash to Propagated (out of the pending queue; its miss count starts
    /// now). Hashes that are not pending are ignored, and a hash given twice moves once. Up to
    /// 256 distinct hashes are one atomic call; more are moved 256 at a time, each batch atomic.
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
        for batch in once_each(hashes).chunks(WRITE_BATCH) {
            let moved = self.exec(self.inner.scripts.mark_inflight(batch))?;
            codec::int(&moved, "moved")?;
        }
        Ok(())
    }

    /// Moves each Propagated hash to Acknowledged; others are ignored, and a hash given twice
    /// moves once. Batches of 256, as [`mark_inflight`](RedisMempool::mark_inflight).
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
        for batch in once_each(hashes).chunks(WRITE_BATCH) {
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
                let txs = self.inflight_txs(&height, rows, records, points, marks)?;
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
                let (id, fields, done) = (next(), next(), next());
                let seq = codec::score(&done, &keys.done)? / 2;
                let missing = || Error::Corrupt {
                    key: key.clone(),
                    detail: format!("points at a missing log line ({seq})"),
                };
                if id == Value::Nil {
                    return Err(missing());
                }
                let entry = codec::log_entry(Value::Array(vec![id, fields]), &keys.log)?;
                let lines = entry.lines(&keys.log)?;
                let Some(line) = lines.iter().find(|line| line.seq == seq) else {
                    return Err(missing());
                };
                let (logged, status) =
                    codec::decode_log_status(line.line, || entry.key(&keys.log))?;
                if logged != *hash {
                    return Err(Error::Corrupt {
                        key,
                        detail: format!("points at the log line of {logged}"),
                    });
                }
                Ok(status)
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
    /// Read like [`peek_pending`](RedisMempool::peek_pending): up to 32 entries in one atomic
    /// script, more in pages of up to 500, each page two round trips of plain commands (the
    /// hashes of the page's txs, then in one `MULTI` their status lines and records). Every
    /// page goes on at the sequence after the last one read: entries logged between pages show
    /// at the end, and entries trimmed meanwhile are missing.
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
        let mut items = Vec::new();
        // Sequences stay far below 2^52, where the scripts' numbers are exact.
        let mut from = cursor.min(1 << 52);
        loop {
            let want = (limit - items.len()).min(LOG_PAGE) as u64;
            let next = if limit <= SCRIPT_READ {
                self.log_page_script(from, want, &mut items)?
            } else {
                self.log_page(from, want, &mut items)?
            };
            match next {
                Some(next) if items.len() < limit => from = next,
                next => {
                    return Ok(MempoolPage {
                        items,
                        next_cursor: next,
                    })
                }
            }
        }
    }

    /// A small page of the log (lines `from..from + want`, `from` raised to the first line the
    /// log retains) in one script, appended to `items`; returns the cursor after it.
    fn log_page_script(
        &self,
        from: u64,
        want: u64,
        items: &mut Vec<MempoolTx>,
    ) -> Result<Option<u64>, Error> {
        let keys = &self.inner.keys;
        let call = self.inner.scripts.dump_finalized(from, want);
        let [lfirst, entries, records, replaced] =
            codec::tuple(self.exec(call)?, "dump_finalized")?;
        // The script starts at the log's first line when `from` is below it.
        let from = from.max(codec::uint(&lfirst, "the log's first line")?);
        let entries = log_entries(entries, &keys.log)?;
        let (lines, next) = page_lines(&entries, from, from + want, &keys.log)?;
        let records = records_of(records, lines.len())?;
        let replaced = codec::replaced_records(replaced, keys.name(Key::Replaced))?;
        for ((line, entry), record) in lines.iter().zip(records) {
            let record = replaced_record(&replaced, line.seq).unwrap_or(record);
            items.push(self.logged_tx(line, entry, record)?);
        }
        Ok(next)
    }

    /// A page of a large read of the log, appended to `items`, as plain commands in two round
    /// trips (three in a rare case); returns the cursor after it. A script would copy every
    /// line and record through Lua, which costs Redis more than the commands themselves.
    ///
    /// 1. Where the log starts (`lfirst`), and the hashes of the first `want` txs of `P:done`
    ///    from `from` on: the logged txs in sequence order, so that their records can be read
    ///    with the lines instead of after them.
    /// 2. In one `MULTI`: the entries holding lines `from..from + want` (`from` raised to
    ///    `lfirst`) and the one reaching past them, the records of those hashes, the page's
    ///    `P:replaced` records (which take precedence), and `lfirst` again.
    /// 3. Only for lines whose tx was not in that list (a Dropped tx received again leaves
    ///    `P:done`, its line stays; or a line logged between the round trips): their records.
    ///
    /// A line below the `lfirst` of the last round trip was let go meanwhile and is left out.
    fn log_page(
        &self,
        from: u64,
        want: u64,
        items: &mut Vec<MempoolTx>,
    ) -> Result<Option<u64>, Error> {
        let keys = &self.inner.keys;
        let mut head = redis::pipe();
        head.atomic();
        head.cmd("HGET").arg(&keys.meta).arg("lfirst");
        head.cmd("ZRANGE")
            .arg(&keys.done)
            .arg(2 * from)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(want);
        let reply = self.plain_pipeline(&head, &[Key::Meta, Key::Done])?;
        let [lfirst, hashes] = codec::tuple(Value::Array(reply), "log page")?;
        let from = from.max(first_line(lfirst)?);
        let last = from + want;
        let hashes = codec::array(hashes, "logged txs")?
            .into_iter()
            .map(|hash| codec::bytes(hash, "logged tx"))
            .collect::<Result<Vec<_>, _>>()?;

        let mut body = redis::pipe();
        body.atomic();
        body.cmd("XRANGE")
            .arg(&keys.log)
            .arg(format!("{from}-0"))
            .arg(last);
        body.cmd("XRANGE")
            .arg(&keys.log)
            .arg(format!("{}-0", last + 1))
            .arg("+")
            .arg("COUNT")
            .arg(1);
        self.replaced_and_first_line(&mut body, from, last);
        if !hashes.is_empty() {
            body.cmd("HMGET").arg(&keys.txs).arg(&hashes);
        }
        let reply = self.plain_pipeline(&body, &[Key::Log, Key::Replaced, Key::Meta, Key::Txs])?;
        let mut reply = reply.into_iter();
        let mut next_reply = || {
            reply
                .next()
                .ok_or_else(|| Error::UnexpectedReply("log page: too few replies".into()))
        };
        let mut entries = codec::array(next_reply()?, "log entries")?;
        entries.extend(codec::array(next_reply()?, "log entries")?);
        let entries = log_entries(Value::Array(entries), &keys.log)?;
        let mut replaced = codec::replaced_records(next_reply()?, keys.name(Key::Replaced))?;
        let mut lfirst = first_line(next_reply()?)?;
        let records = match hashes.is_empty() {
            true => Vec::new(),
            false => records_of(next_reply()?, hashes.len())?,
        };
        let mut known = PageRecords::new(hashes, records);
        let (lines, next) = page_lines(&entries, from, last, &keys.log)?;
        // Each line's record in `known`, found once: most lines by the cursor, in order.
        let mut at: Vec<Option<usize>> = lines
            .iter()
            .map(|(line, _)| known.find(line.hash.as_bytes()))
            .collect();

        let mut missing: Vec<&[u8]> = lines
            .iter()
            .zip(&at)
            .filter(|((line, _), found)| found.is_none() && line.seq >= lfirst)
            .filter(|((line, _), _)| replaced_record(&replaced, line.seq).is_none())
            .map(|((line, _), _)| &line.hash.as_bytes()[..])
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let mut more = redis::pipe();
            more.atomic();
            more.cmd("HMGET").arg(&keys.txs).arg(&missing);
            self.replaced_and_first_line(&mut more, from, last);
            let reply = self.plain_pipeline(&more, &[Key::Txs, Key::Replaced, Key::Meta])?;
            let [records, now_replaced, now_lfirst] =
                codec::tuple(Value::Array(reply), "log records")?;
            let records = records_of(records, missing.len())?;
            let first_new = known.extend(missing.into_iter().map(<[u8]>::to_vec), records);
            for ((line, _), found) in lines.iter().zip(&mut at) {
                if found.is_none() {
                    *found = known.find_from(first_new, line.hash.as_bytes());
                }
            }
            replaced = codec::replaced_records(now_replaced, keys.name(Key::Replaced))?;
            lfirst = first_line(now_lfirst)?;
        }

        for ((line, entry), found) in lines.iter().zip(at) {
            // Let go between the round trips, with its record.
            if line.seq < lfirst {
                continue;
            }
            let record = match replaced_record(&replaced, line.seq) {
                Some(record) => record,
                // A line at or above `lfirst` has its record (or it is corrupt data, which
                // `logged_tx` names).
                None => found
                    .and_then(|i| known.records.get(i).cloned())
                    .unwrap_or(Value::Nil),
            };
            items.push(self.logged_tx(line, entry, record)?);
        }
        Ok(next)
    }

    /// Adds to `pipe` the reads every round trip of a page needs along with its records: the
    /// `P:replaced` records of lines `from..last`, then `lfirst`.
    fn replaced_and_first_line(&self, pipe: &mut redis::Pipeline, from: u64, last: u64) {
        let keys = &self.inner.keys;
        pipe.cmd("ZRANGE")
            .arg(keys.name(Key::Replaced))
            .arg(from)
            .arg(last - 1)
            .arg("BYSCORE");
        pipe.cmd("HGET").arg(&keys.meta).arg("lfirst");
    }

    /// A logged tx from its line and record, naming where either sits if it is unreadable.
    fn logged_tx(
        &self,
        line: &codec::LogLine<'_>,
        entry: &codec::LogEntry,
        record: Value,
    ) -> Result<MempoolTx, Error> {
        let keys = &self.inner.keys;
        codec::logged_tx(
            line.line,
            record,
            || entry.key(&keys.log),
            || format!("{} {}", keys.txs, line.hash),
        )
    }
}

/// The records a page of the log read, by the hashes they were read for. The hashes come from
/// `P:done` in sequence order, which is the lines' order too but for a line whose tx left
/// `P:done` or was logged again later: a cursor finds the usual line's record at once, and a
/// scan the rest (hashing every hash into a map cost the client more than the lookups; a page
/// of many such lines, which only txs received again after a drop make, scans more).
struct PageRecords {
    hashes: Vec<Vec<u8>>,
    records: Vec<Value>,
    /// Where the next line's hash is expected.
    next: usize,
}

impl PageRecords {
    fn new(hashes: Vec<Vec<u8>>, records: Vec<Value>) -> PageRecords {
        PageRecords {
            hashes,
            records,
            next: 0,
        }
    }

    /// The index of `hash`'s record, if one was read.
    fn find(&mut self, hash: &[u8]) -> Option<usize> {
        if self.hashes.get(self.next).is_some_and(|h| h[..] == *hash) {
            self.next += 1;
            return Some(self.next - 1);
        }
        self.find_from(0, hash)
    }

    /// The index of `hash`'s record among those from `from` on.
    fn find_from(&self, from: usize, hash: &[u8]) -> Option<usize> {
        let found = self.hashes.get(from..)?.iter().position(|h| h[..] == *hash);
        found.map(|i| from + i)
    }

    /// Adds records read later; returns the index of the first.
    fn extend(&mut self, hashes: impl Iterator<Item = Vec<u8>>, records: Vec<Value>) -> usize {
        let first = self.hashes.len();
        self.hashes.extend(hashes);
        self.records.extend(records);
        first
    }
}

/// The entries of an `XRANGE` of the finalized log `log`.
fn log_entries(v: Value, log: &str) -> Result<Vec<codec::LogEntry>, Error> {
    codec::array(v, "log entries")?
        .into_iter()
        .map(|entry| codec::log_entry(entry, log))
        .collect()
}

/// A line of a page of the log, with the entry that holds it.
type PageLine<'e> = (codec::LogLine<'e>, &'e codec::LogEntry);

/// The lines `from..last` of `entries` (oldest first), and the cursor after them: `last` when
/// the entries hold that line (the log goes on), else none.
fn page_lines<'e>(
    entries: &'e [codec::LogEntry],
    from: u64,
    last: u64,
    log: &str,
) -> Result<(Vec<PageLine<'e>>, Option<u64>), Error> {
    let mut lines = Vec::new();
    for entry in entries {
        for line in entry.lines(log)? {
            if line.seq >= last {
                return Ok((lines, Some(last)));
            }
            if line.seq >= from {
                lines.push((line, entry));
            }
        }
    }
    Ok((lines, None))
}

/// The `n` records of a reply that reads that many.
fn records_of(v: Value, n: usize) -> Result<Vec<Value>, Error> {
    let records = codec::array(v, "log records")?;
    if records.len() != n {
        return Err(Error::UnexpectedReply(
            format!("{} log records for {n}", records.len()).into(),
        ));
    }
    Ok(records)
}

/// The record a line had when its tx came back with another one (see `receive.lua`).
fn replaced_record(replaced: &[(u64, Vec<u8>)], seq: u64) -> Option<Value> {
    replaced
        .iter()
        .find(|(at, _)| *at == seq)
        .map(|(_, older)| Value::BulkString(older.clone()))
}

/// The first line the log retains, from `P:meta`'s `lfirst` (absent: 1).
fn first_line(v: Value) -> Result<u64, Error> {
    match v {
        Value::Nil => Ok(1),
        v => Ok(codec::uint(&v, "the log's first line")?.max(1)),
    }
}

/// `hashes` with each hash kept at its first place only. The marks' scripts move each hash
/// they are given: a duplicate would be moved twice (two events, the second number winning),
/// so the batch is deduplicated here, where a set costs nothing on the server (in the script it
/// cost a Lua table insert per tx on every call).
fn once_each(hashes: &[TxHash]) -> Vec<TxHash> {
    let mut seen = HashSet::with_capacity(hashes.len());
    hashes.iter().copied().filter(|h| seen.insert(*h)).collect()
}
