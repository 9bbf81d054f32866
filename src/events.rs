//! Events: every transition, on every node.
//!
//! The script that makes transitions also appends them to the `P:events` stream, one entry per
//! call (see [`entries`]), so there is no transition without its event and no event without its
//! transition, and the stream's order is the commit order. Each process runs one reader thread
//! (started by the first [`RedisMempool::subscribe`](crate::RedisMempool::subscribe)) that
//! follows the stream with `XREAD BLOCK` on its own connection, turns each entry into its events
//! and hands each event to every subscriber's bounded channel without ever blocking.
//!
//! Every event has a number: an entry's id is `<n>-0`, `n` the number of its first event, and
//! the next entry starts after its last one, so a gap in the numbers means trimmed history. The
//! reader then sends [`MempoolEvent::Lagged`] with the exact number of events missed instead of
//! leaving a silent hole, and starts again from a new snapshot. A block's entry does not list the
//! txs that stay Confirmed; the reader derives their events from its copy of the Confirmed set,
//! taken with `events_snapshot.lua` when it starts (and after a gap) and kept by the entries.
//! After a lost link it resumes from the last event it delivered — unless the stream now stands
//! below it (a failover or a restart lost the last writes): then it logs a warning, follows the
//! stream from the first entry it had not delivered (so numbers are reused rather than new events
//! skipped), and counts as `Lagged` what was written since that it cannot derive.
//!
//! (A little over 500 lines: the reader's ways back after a lost link, lost writes or a gap stay
//! next to the loop they interrupt; decoding an entry is in `entries.rs`.)

mod entries;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Receiver, Sender, TrySendError};
use log::{debug, warn};
use parking_lot::Mutex;
use redis::Value;

use crate::codec;
use crate::connect::{ConnRole, RedisConn};
use crate::keys::Keys;
use crate::scripts::{self, Scripts};
use crate::types::{ChainPoint, MempoolTx};
use crate::{Error, LOG_TARGET};
use entries::{Confirmed, Diverged};

/// A change in the shared mempool, as every node sharing the prefix sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MempoolEvent {
    /// A transaction changed: received (`Pending`), `Propagated`, `Acknowledged`, `Confirmed`
    /// (once per applied block, with its new count), `RolledBack` (back in the pending queue),
    /// `Finalized` or `Dropped`.
    ///
    /// **The payload is omitted**: `tx.payload` is empty (era 0, no bytes); read it with
    /// [`find_inflight`](crate::RedisMempool::find_inflight) or the pending queue if needed.
    Tx {
        /// Position in the shared event stream: strictly increasing, except after a Sentinel
        /// failover lost writes the reader had already delivered (asynchronous replication),
        /// when numbers can be given again.
        seq: u64,
        /// The transaction's hash, stage, counters and `confirmed_at`.
        tx: MempoolTx,
    },
    /// The watcher applied a block, or undid one (the audit trail of the applied chain; it comes
    /// before the transitions the call made). An undo of several blocks (an undo call that is
    /// not at the tip, or `rollback_to`) reports each undone block, newest first.
    BlockApplied {
        /// Position in the shared event stream.
        seq: u64,
        /// The block's point.
        point: ChainPoint,
        /// The applied chain's height once this block was applied (its own height) or undone
        /// (the height below it).
        height: u64,
        /// Whether the block was undone (an undo call, or `rollback_to`).
        rollback: bool,
        /// The watcher that applied it.
        node_id: String,
        /// The epoch of its lock.
        epoch: u64,
    },
    /// A node acquired the watcher lock.
    WatcherAcquired {
        /// Position in the shared event stream.
        seq: u64,
        /// The new watcher.
        node_id: String,
        /// The epoch of this acquisition.
        epoch: u64,
    },
    /// The watcher released the lock on a graceful shutdown. (A lock that expires makes no
    /// event; the next `WatcherAcquired` tells who took over.)
    WatcherReleased {
        /// Position in the shared event stream.
        seq: u64,
        /// The node that released it.
        node_id: String,
        /// The epoch it had held.
        epoch: u64,
    },
    /// `missed` events could not be delivered to this subscriber: the stream's retained history
    /// no longer covered a gap, or the subscriber's channel was full.
    Lagged {
        /// How many events were lost.
        missed: u64,
    },
}

struct Subscriber {
    tx: Sender<MempoolEvent>,
    /// Events this subscriber lost to a full channel and has not been told about yet.
    missed: u64,
}

#[derive(Default)]
struct Subscribers {
    list: Mutex<Vec<Subscriber>>,
}

impl Subscribers {
    /// Hands `event` to every subscriber without blocking; forgets the ones whose receiver is
    /// gone.
    fn publish(&self, event: &MempoolEvent) {
        self.list.lock().retain_mut(|sub| {
            if sub.missed > 0 {
                match sub.tx.try_send(MempoolEvent::Lagged { missed: sub.missed }) {
                    Ok(()) => sub.missed = 0,
                    Err(TrySendError::Full(_)) => {
                        sub.missed += 1;
                        return true;
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            match sub.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    sub.missed += 1;
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }
}

/// The per-process side of events: the subscribers and the reader thread.
pub(crate) struct EventHub {
    subscribers: Arc<Subscribers>,
    /// Dropping the sender stops the reader thread; `None` until the first subscriber.
    reader: Mutex<Option<Sender<()>>>,
    capacity: usize,
}

/// How long one `XREAD` blocks on the server; the reader notices shutdown within this.
const BLOCK: Duration = Duration::from_millis(500);

pub(crate) struct ReaderSetup {
    pub target: crate::connect::Target,
    pub keys: Keys,
    /// For `events_snapshot.lua`.
    pub scripts: Arc<Scripts>,
    pub event_history: usize,
    pub node_id: String,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
}

impl EventHub {
    pub fn new(capacity: usize) -> EventHub {
        EventHub {
            subscribers: Arc::default(),
            reader: Mutex::new(None),
            capacity,
        }
    }

    /// Registers a subscriber. The first one starts the reader thread (built by `setup`) and
    /// waits until it has found the stream's current position, so every event committed after
    /// this returns is delivered. If Redis cannot be reached within the timeouts, it returns
    /// anyway and the reader starts from where the stream is once the link comes up.
    pub fn subscribe(&self, setup: impl FnOnce() -> ReaderSetup) -> Receiver<MempoolEvent> {
        let (tx, rx) = crossbeam_channel::bounded(self.capacity);
        self.subscribers
            .list
            .lock()
            .push(Subscriber { tx, missed: 0 });
        let mut reader = self.reader.lock();
        if reader.is_none() {
            let setup = setup();
            let wait = setup.connect_timeout + setup.io_timeout;
            let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let name = format!(
                "dolos-redis-events-{}",
                setup.node_id.get(..8).unwrap_or("")
            );
            let reader_loop = Reader {
                subscribers: self.subscribers.clone(),
                stop: stop_rx,
                last: None,
                ready: Some(ready_tx),
                setup,
                link_up: true,
                recent: VecDeque::new(),
                confirmed: Confirmed::default(),
                catching_up: None,
            };
            match std::thread::Builder::new()
                .name(name)
                .spawn(move || reader_loop.run())
            {
                Ok(_) => {
                    let _ = ready_rx.recv_timeout(wait);
                    *reader = Some(stop_tx);
                }
                // Without a thread no event will come: say so on the channel rather than
                // leaving the subscriber waiting on silence.
                Err(e) => {
                    warn!(target: LOG_TARGET, "cannot spawn the event thread: {e}");
                    self.subscribers
                        .publish(&MempoolEvent::Lagged { missed: u64::MAX });
                }
            }
        }
        rx
    }
}

struct Reader {
    subscribers: Arc<Subscribers>,
    stop: Receiver<()>,
    setup: ReaderSetup,
    /// The last event number delivered; `None` until the reader first reached Redis.
    last: Option<u64>,
    /// Told once the starting position is known.
    ready: Option<Sender<()>>,
    link_up: bool,
    /// The last entries delivered, as Redis sent them (number, entry), to tell after a loss of
    /// writes which entries of the stream were delivered already.
    recent: VecDeque<(u64, Value)>,
    /// The Confirmed txs as of event `last`, to derive the Confirmed events of blocks.
    confirmed: Confirmed,
    /// After the reader lost track (see [`Reader::resync`]): the snapshot it takes over from
    /// once it has read up to the snapshot's last event; `confirmed` is partial until then.
    catching_up: Option<Snapshot>,
}

/// What `events_snapshot.lua` returns: the last event number and the Confirmed set then.
struct Snapshot {
    last: u64,
    confirmed: Confirmed,
}

/// How many delivered entries the reader remembers (see `Reader::recent`).
const RECENT: usize = 256;

impl Reader {
    fn run(mut self) {
        loop {
            match self.follow() {
                Ok(()) => return,
                // Shut down while the link broke (typically Redis stopped right after the last
                // handle was dropped): nothing to report.
                Err(_) if self.stopped() => return,
                Err(e) => {
                    if self.link_up {
                        warn!(target: LOG_TARGET, "event reader lost redis, will resume after event {:?}: {e}", self.last);
                        self.link_up = false;
                    }
                }
            }
            select! {
                recv(self.stop) -> _ => return,
                default(BLOCK) => {}
            }
        }
    }

    fn stopped(&self) -> bool {
        !matches!(
            self.stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Empty)
        )
    }

    /// Follows the stream until shutdown (`Ok`) or a broken link (`Err`).
    fn follow(&mut self) -> Result<(), Error> {
        let s = &self.setup;
        let mut conn = RedisConn::open(
            &s.target,
            s.connect_timeout,
            BLOCK + s.io_timeout,
            &ConnRole::Events.name(&s.node_id),
        )
        .map_err(Error::from_redis)?;
        if !self.link_up {
            debug!(target: LOG_TARGET, "event reader reconnected");
            self.link_up = true;
        }
        let mut last = match self.last {
            None => {
                let snap = self.snapshot(&mut conn)?;
                self.confirmed = snap.confirmed;
                self.last = Some(snap.last);
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(());
                }
                snap.last
            }
            Some(last) => {
                let counter = self.counter(&mut conn)?;
                if counter < last {
                    // The stream is behind what we delivered: the server lost its last writes (a
                    // failover to a replica that had not received them, or a restart without
                    // persistence). Waiting for the counter to pass `last` would silently skip
                    // the events written meanwhile; follow the stream as it is now, from a new
                    // snapshot (the copy of the Confirmed set holds lost changes).
                    let from = self.first_undelivered(&mut conn, counter)?;
                    warn!(target: LOG_TARGET, "event stream went back from event {last} to {counter} (redis lost its last writes); following it from event {}", from + 1);
                    self.resync(&mut conn, from)?
                } else {
                    last
                }
            }
        };
        loop {
            if self.stopped() {
                return Ok(());
            }
            let reply: Value = conn
                .run(
                    redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(1000)
                        .arg("BLOCK")
                        .arg(BLOCK.as_millis() as u64)
                        .arg("STREAMS")
                        .arg(&self.setup.keys.events)
                        .arg(format!("{last}-0")),
                )
                .map_err(Error::from_redis)?;
            last = self.deliver(&mut conn, reply, last)?;
            self.last = Some(last);
        }
    }

    /// The last event number the stream has given.
    fn counter(&self, conn: &mut RedisConn) -> Result<u64, Error> {
        let keys = &self.setup.keys;
        let value: Option<String> = conn
            .run(redis::cmd("HGET").arg(&keys.meta).arg("ev"))
            .map_err(Error::from_redis)?;
        match value {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| Error::Corrupt {
                key: format!("{} ev", keys.meta),
                detail: format!("not a counter: {v:?}"),
            }),
        }
    }

    fn snapshot(&self, conn: &mut RedisConn) -> Result<Snapshot, Error> {
        let s = &self.setup;
        let reply = scripts::run(
            conn,
            &s.scripts.events_snapshot(),
            &s.keys,
            s.event_history,
            None,
        )?;
        let [last, entries, points] = codec::tuple(reply, "events_snapshot")?;
        Ok(Snapshot {
            last: codec::uint(&last, "last event")?,
            confirmed: Confirmed::from_snapshot(entries, points, &s.keys.events)?,
        })
    }

    /// Starts again from a new snapshot, having delivered (or reported) every event up to
    /// `delivered`: the entries after it are still delivered as they come, but the reader's copy
    /// of the Confirmed set is lost, so until it has read up to the snapshot's last event its
    /// copy is partial (the txs confirmed since), and what needs the rest (the Confirmed events
    /// of a block, the Finalized event of a tx confirmed before) is told as `Lagged`. Then the
    /// snapshot's copy takes over. Returns `delivered`, where reading goes on.
    fn resync(&mut self, conn: &mut RedisConn, delivered: u64) -> Result<u64, Error> {
        let snap = self.snapshot(conn)?;
        self.confirmed = Confirmed::default();
        self.catching_up = Some(snap);
        self.take_over(delivered);
        self.last = Some(delivered);
        Ok(delivered)
    }

    /// Once the reader has read up to the snapshot it caught up with, its copy takes over.
    fn take_over(&mut self, last: u64) {
        if self.catching_up.as_ref().is_some_and(|s| s.last <= last) {
            if let Some(snap) = self.catching_up.take() {
                self.confirmed = snap.confirmed;
            }
        }
    }

    /// After the stream went back to `counter`: the number after which its entries were not
    /// delivered. Entries written before the loss are the ones delivered (same number, same
    /// content); the first that differs was written since. Older than what the reader
    /// remembers counts as delivered.
    fn first_undelivered(&mut self, conn: &mut RedisConn, counter: u64) -> Result<u64, Error> {
        let start = counter.saturating_sub(RECENT as u64 - 1).max(1);
        let reply: Value = conn
            .run(
                redis::cmd("XRANGE")
                    .arg(&self.setup.keys.events)
                    .arg(format!("{start}-0"))
                    .arg(format!("{counter}-0")),
            )
            .map_err(Error::from_redis)?;
        let oldest = self.recent.front().map(|(m, _)| *m);
        let mut delivered = start - 1;
        for entry in codec::array(reply, "xrange")? {
            let n = entry_number(&entry, &self.setup.keys.events)?;
            match self.recent.iter().find(|(m, _)| *m == n) {
                Some((_, value)) if value == &entry => delivered = self.end_of(n),
                // Same number, other event: written after the loss.
                Some(_) => break,
                // Older than what we remember: assumed delivered.
                None if oldest.is_none_or(|oldest| n < oldest) => delivered = n,
                // A number we never saw (trimmed away when we read): new.
                None => break,
            }
        }
        self.recent.retain(|(m, _)| *m <= delivered);
        Ok(delivered)
    }

    /// The last event number of the remembered entry numbered `n`.
    fn end_of(&self, n: u64) -> u64 {
        let next = self.recent.iter().map(|(m, _)| *m).find(|m| *m > n);
        match (next, self.last) {
            (Some(next), _) => next - 1,
            (None, Some(last)) => last.max(n),
            (None, None) => n,
        }
    }

    /// Hands the entries of one `XREAD` reply to the subscribers; returns the last event number.
    fn deliver(&mut self, conn: &mut RedisConn, reply: Value, mut last: u64) -> Result<u64, Error> {
        // Nil: the block timed out with nothing new. Otherwise [[stream, [entry...]]] (RESP2)
        // or a map of stream → entries (RESP3).
        let entries = match reply {
            Value::Nil => return Ok(last),
            Value::Array(streams) => match streams.into_iter().next() {
                Some(stream) => match codec::array(stream, "xread stream")?.pop() {
                    Some(entries) => codec::array(entries, "xread entries")?,
                    None => return Ok(last),
                },
                None => return Ok(last),
            },
            Value::Map(streams) => match streams.into_iter().next() {
                Some((_, entries)) => codec::array(entries, "xread entries")?,
                None => return Ok(last),
            },
            other => return Err(Error::UnexpectedReply(format!("xread: {other:?}").into())),
        };
        let stream = self.setup.keys.events.clone();
        for entry in entries {
            let n = entry_number(&entry, &stream)?;
            if n <= last {
                continue;
            }
            if n > last + 1 {
                // Trimmed history: what it held is lost to this reader, and so is the state
                // that derives the Confirmed events after it.
                self.subscribers.publish(&MempoolEvent::Lagged {
                    missed: n - last - 1,
                });
                last = self.resync(conn, n - 1)?;
            }
            let raw = entry.clone();
            let entry = codec::stream_entry(entry, &stream)?;
            let key = entry.key(&stream);
            let fields = entry.fields;
            let partial = self.catching_up.is_some();
            match entries::decode(n, fields, &key, &mut self.confirmed, partial)? {
                Ok(decoded) => {
                    if self.recent.len() == RECENT {
                        self.recent.pop_front();
                    }
                    self.recent.push_back((n, raw));
                    for event in &decoded.events {
                        self.subscribers.publish(event);
                    }
                    last = n + decoded.count.max(1) - 1;
                    self.take_over(last);
                }
                Err(Diverged) => {
                    warn!(target: LOG_TARGET, "event {n}: this reader's copy of the Confirmed txs differs from the stream's; taking a new snapshot");
                    return self.resync(conn, last);
                }
            }
            self.last = Some(last);
        }
        Ok(last)
    }
}

/// The event number of a stream entry (its id is `<n>-0`).
fn entry_number(entry: &Value, stream: &str) -> Result<u64, Error> {
    let id = match entry {
        Value::Array(items) => items.first(),
        _ => None,
    };
    let id = codec::text(id.unwrap_or(&Value::Nil), "event id")?;
    id.split_once('-')
        .and_then(|(n, _)| n.parse().ok())
        .ok_or_else(|| Error::Corrupt {
            key: format!("{stream} {id}"),
            detail: "bad event id".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_subscriber_is_told_what_it_missed() {
        let subs = Subscribers::default();
        let (tx, rx) = crossbeam_channel::bounded(1);
        subs.list.lock().push(Subscriber { tx, missed: 0 });
        let ev = |n| MempoolEvent::Lagged { missed: n };
        subs.publish(&ev(100));
        subs.publish(&ev(101)); // full: missed
        subs.publish(&ev(102)); // full: missed
        assert_eq!(rx.try_recv().unwrap(), ev(100));
        subs.publish(&ev(103)); // the lag report goes first, then 103 finds the channel full
        assert_eq!(rx.try_recv().unwrap(), MempoolEvent::Lagged { missed: 2 });
        subs.publish(&ev(104));
        assert_eq!(rx.try_recv().unwrap(), MempoolEvent::Lagged { missed: 1 });
    }

    #[test]
    fn a_dropped_receiver_is_forgotten() {
        let subs = Subscribers::default();
        let (tx, rx) = crossbeam_channel::bounded(1);
        subs.list.lock().push(Subscriber { tx, missed: 0 });
        drop(rx);
        subs.publish(&MempoolEvent::Lagged { missed: 1 });
        assert!(subs.list.lock().is_empty());
    }
}
