//! The wake thread: one subscription per candidate node, to the lock's wake channel and to the
//! node's own liveness channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use log::debug;

use super::liveness::Gate;
use super::LeaseShared;
use crate::connect::{RedisConn, Target};
use crate::LOG_TARGET;

/// What the wake thread tells the lease thread: what the wake channel said (see `acquire.lua`,
/// `release.lua`, `reset_lock.lua`), and changes of our own liveness subscription.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wake {
    Released,
    Acquired(String),
    /// A (new) liveness subscription stands.
    LivenessUp,
    /// The liveness connection broke; the flag is already down.
    LivenessLost,
}

impl Wake {
    pub(super) fn parse(payload: &str) -> Wake {
        match payload.strip_prefix("acquired ") {
            Some(node) => Wake::Acquired(node.to_string()),
            None => Wake::Released,
        }
    }
}

/// Keeps one subscription per candidate node, on its own connection: to the lock's wake
/// channel, whose messages it forwards to the lease thread (a follower takes over within
/// milliseconds of a graceful release instead of at its next poll, and a watcher whose lock was
/// deleted by hand and taken by another node steps down at once), and, with liveness checks on,
/// to the node's own liveness channel (see `liveness.rs`).
///
/// When that connection breaks it lowers the watcher flag before anything else, tells the lease
/// thread, and connects again at once: a follower waits one liveness interval before it
/// declares a vanished subscription dead, and a reconnect should land well within it.
pub(super) struct Waker {
    pub(super) target: Target,
    pub(super) wake_channel: String,
    /// `None` when liveness checks are off.
    pub(super) live_channel: Option<String>,
    pub(super) connect_timeout: Duration,
    /// How long the subscription may stay silent before we ping it.
    pub(super) ping_every: Duration,
    pub(super) name: String,
    pub(super) stop: Receiver<()>,
    pub(super) wake: Sender<Wake>,
    /// Told once the first subscription is in place.
    pub(super) subscribed: Option<Sender<()>>,
    pub(super) gate: Arc<Gate>,
    pub(super) shared: Arc<LeaseShared>,
}

/// How often a blocked subscriber read returns to check for shutdown and for a request to
/// subscribe again.
const WAKER_POLL: Duration = Duration::from_millis(100);

/// The pause after a failed attempt to subscribe doubles from the first to the last of these;
/// after a subscription that stood and broke, the next attempt is immediate.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(100);

/// The pause before the next attempt to subscribe, after one that failed following `previous`
/// (`None`: the subscription stood until it broke, so try again at once).
fn next_retry(previous: Option<Duration>) -> Duration {
    match previous {
        None => Duration::ZERO,
        Some(d) if d.is_zero() => RETRY_FIRST,
        Some(d) => (d * 2).min(RETRY_MAX),
    }
}

/// Why [`Waker::listen`] returned.
enum Ended {
    Stopped,
    /// The subscription stood, then broke (or the lease thread asked for a new one).
    Broke(redis::RedisError),
    /// It could not be set up.
    Failed(redis::RedisError),
}

impl Waker {
    pub(super) fn run(mut self) {
        let mut retry = None;
        loop {
            let pause = match self.listen() {
                Ended::Stopped => return,
                Ended::Broke(e) => {
                    // First of all: our flag must be down before any follower could conclude
                    // that we are gone.
                    if self.gate.broken(&self.shared.flag, Instant::now()) {
                        let _ = self.wake.try_send(Wake::LivenessLost);
                        debug!(target: LOG_TARGET, "liveness connection lost, subscribing again at once: {e}");
                    } else {
                        debug!(target: LOG_TARGET, "wake channel lost, subscribing again: {e}");
                    }
                    retry = None;
                    next_retry(retry)
                }
                Ended::Failed(e) => {
                    debug!(target: LOG_TARGET, "wake channel unavailable, retrying: {e}");
                    let pause = next_retry(retry);
                    retry = Some(pause);
                    pause
                }
            };
            if !pause.is_zero() {
                select! {
                    recv(self.stop) -> _ => return,
                    default(pause) => {}
                }
            }
        }
    }

    fn listen(&mut self) -> Ended {
        let mut conn = match RedisConn::open(
            &self.target,
            self.connect_timeout,
            self.connect_timeout,
            &self.name,
        ) {
            Ok(conn) => conn,
            Err(e) => return Ended::Failed(e),
        };
        let mut pubsub = conn.conn.as_pubsub();
        // One SUBSCRIBE for both channels: Redis has made both subscriptions by the time its
        // first confirmation comes back.
        let mut channels = vec![self.wake_channel.as_str()];
        channels.extend(self.live_channel.as_deref());
        if let Err(e) = pubsub
            .subscribe(&channels[..])
            .and_then(|()| pubsub.set_read_timeout(Some(WAKER_POLL)))
        {
            return Ended::Failed(e);
        }
        // A request made before this subscription is answered by it.
        self.gate.take_resubscribe();
        if self.live_channel.is_some() {
            self.gate.established(Instant::now());
            let _ = self.wake.try_send(Wake::LivenessUp);
        }
        if let Some(subscribed) = self.subscribed.take() {
            let _ = subscribed.send(());
        }
        let mut heard = Instant::now();
        loop {
            if !matches!(
                self.stop.try_recv(),
                Err(crossbeam_channel::TryRecvError::Empty)
            ) {
                return Ended::Stopped;
            }
            if self.gate.take_resubscribe() {
                return Ended::Broke(
                    std::io::Error::other("the lease thread asked for a new subscription").into(),
                );
            }
            match pubsub.get_message() {
                Ok(msg) => {
                    heard = Instant::now();
                    // Nothing is published on the liveness channel; anything that is, is not
                    // ours to act on.
                    if msg.get_channel_name() != self.wake_channel {
                        continue;
                    }
                    let payload: String = msg.get_payload().unwrap_or_default();
                    // Never block on a lease thread that is busy; a dropped wake-up only
                    // means the next poll does the work.
                    let _ = self.wake.try_send(Wake::parse(&payload));
                }
                // A link that died silently only shows when we speak: ping now and then, with
                // the full command timeout for the answer (a slow reply is no broken link).
                Err(e) if e.is_timeout() => {
                    if heard.elapsed() >= self.ping_every {
                        let pinged = pubsub
                            .set_read_timeout(Some(self.connect_timeout))
                            .and_then(|()| pubsub.ping::<redis::Value>())
                            .and_then(|_| pubsub.set_read_timeout(Some(WAKER_POLL)));
                        if let Err(e) = pinged {
                            return Ended::Broke(e);
                        }
                        heard = Instant::now();
                    }
                }
                Err(e) => return Ended::Broke(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_subscription_is_retried_at_once_and_failures_back_off() {
        assert_eq!(next_retry(None), Duration::ZERO);
        let mut pause = Some(Duration::ZERO);
        let mut pauses = Vec::new();
        for _ in 0..8 {
            let p = next_retry(pause);
            pauses.push(p.as_millis());
            pause = Some(p);
        }
        assert_eq!(pauses, [10, 20, 40, 80, 100, 100, 100, 100]);
    }

    #[test]
    fn wake_messages_say_who_acquired() {
        assert_eq!(Wake::parse("released"), Wake::Released);
        assert_eq!(Wake::parse("acquired abc"), Wake::Acquired("abc".into()));
    }
}
