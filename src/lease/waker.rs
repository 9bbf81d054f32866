//! The wake thread: one subscription per node, to the lock's wake channel.

use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use log::debug;

use crate::connect::{RedisConn, Target};
use crate::LOG_TARGET;

/// What the wake channel says (see `acquire.lua`, `release.lua`, `reset_lock.lua`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wake {
    Released,
    Acquired(String),
}

impl Wake {
    pub(super) fn parse(payload: &str) -> Wake {
        match payload.strip_prefix("acquired ") {
            Some(node) => Wake::Acquired(node.to_string()),
            None => Wake::Released,
        }
    }
}

/// Forwards the wake channel's messages to the lease thread: a follower takes over within
/// milliseconds of a graceful release instead of at its next poll, and a watcher whose lock
/// was deleted by hand and taken by another node steps down at once.
pub(super) struct Waker {
    pub(super) target: Target,
    pub(super) channel: String,
    pub(super) connect_timeout: Duration,
    pub(super) retry: Duration,
    pub(super) name: String,
    pub(super) stop: Receiver<()>,
    pub(super) wake: Sender<Wake>,
    /// Told once the first subscription is in place.
    pub(super) subscribed: Option<Sender<()>>,
}

/// How often a blocked subscriber read returns to check for shutdown.
const WAKER_POLL: Duration = Duration::from_millis(100);

impl Waker {
    pub(super) fn run(mut self) {
        loop {
            if let Err(e) = self.listen() {
                debug!(target: LOG_TARGET, "wake channel unavailable, retrying: {e}");
            }
            select! {
                recv(self.stop) -> _ => return,
                default(self.retry) => {}
            }
        }
    }

    /// Returns `Ok` on shutdown, `Err` when the subscription broke.
    fn listen(&mut self) -> Result<(), redis::RedisError> {
        let mut conn = RedisConn::open(&self.target, self.connect_timeout, WAKER_POLL, &self.name)?;
        let mut pubsub = conn.conn.as_pubsub();
        pubsub.subscribe(&self.channel)?;
        pubsub.set_read_timeout(Some(WAKER_POLL))?;
        if let Some(subscribed) = self.subscribed.take() {
            let _ = subscribed.send(());
        }
        let mut heard = Instant::now();
        loop {
            if !matches!(
                self.stop.try_recv(),
                Err(crossbeam_channel::TryRecvError::Empty)
            ) {
                return Ok(());
            }
            match pubsub.get_message() {
                Ok(msg) => {
                    heard = Instant::now();
                    let payload: String = msg.get_payload().unwrap_or_default();
                    // Never block on a lease thread that is busy; a dropped wake-up only
                    // means the next poll does the work.
                    let _ = self.wake.try_send(Wake::parse(&payload));
                }
                // A link that died silently only shows when we speak: ping now and then.
                Err(e) if e.is_timeout() => {
                    if heard.elapsed() >= self.retry {
                        pubsub.ping::<redis::Value>()?;
                        heard = Instant::now();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_messages_say_who_acquired() {
        assert_eq!(Wake::parse("released"), Wake::Released);
        assert_eq!(Wake::parse("acquired abc"), Wake::Acquired("abc".into()));
    }
}
