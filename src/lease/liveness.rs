//! Liveness: telling a watcher that died from one that is only paused or cut off.
//!
//! A process that dies has its sockets closed by its kernel, and Redis drops the connection at
//! once; a paused process (SIGSTOP, a long GC, a frozen VM) or a black-holed network leaves its
//! connections open on the server. So every candidate's wake thread also subscribes, on the
//! same connection as the wake channel, to a channel of its own, `P:watcher:live:<node id>`, on
//! which nothing is ever published: `PUBSUB NUMSUB` of that channel, read inside the lease
//! scripts, says whether the connection is still there.
//!
//! Two halves, both pure enough to test without Redis:
//!
//! * [`Gate`], the watcher's side. The flag may be up only while the lock is certainly ours
//!   (the lease deadline, `mod.rs`) **and** our liveness subscription is established. The wake
//!   thread lowers the flag the moment that connection breaks, under the same lock the lease
//!   thread raises it with, and the lease thread raises it only on an acquire or renewal it sent
//!   after the current subscription was confirmed, while that subscription still stands
//!   ([`Token`]). A follower needs two looks at least one check interval apart to declare us
//!   dead, so the flag is down long before anyone can take the lock early.
//! * [`HolderWatch`], the follower's side. It declares the holder dead only after it has seen the
//!   holder's subscription **on this same lease connection**, and then found it gone on two looks
//!   at least one interval apart (the second look is `take_over.lua`, which checks both things
//!   again and takes the lock in one step). After a Redis restart, a Sentinel or Cluster
//!   failover, or a reconnect of our own, our lease connection is a new one: nobody is declared
//!   dead merely because its liveness connection has not reconnected yet, and a node of an older
//!   version (which never subscribes) is never declared dead at all. Those cases, and pauses and
//!   partitions, keep the TTL path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Proof that our liveness subscription was established (in its current generation) when a
/// lease command was sent: the flag is raised on that command's success only if the same
/// generation still stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token(u64);

/// The watcher's side: the liveness subscription's state, and the one place the flag is raised.
#[derive(Debug)]
pub(crate) struct Gate {
    /// `false` when [`Config::liveness_check`](crate::Config::liveness_check) is zero: no
    /// subscription, and the flag follows the lease alone, as before liveness existed.
    enabled: bool,
    state: Mutex<State>,
    /// Set by the lease thread when a renewal showed that our subscription is not on the lock's
    /// server; the wake thread then subscribes again.
    resubscribe: AtomicBool,
}

#[derive(Debug)]
struct State {
    /// Bumped on every confirmed subscription.
    generation: u64,
    up: bool,
    /// When `up` last changed.
    since: Instant,
}

impl Gate {
    pub fn new(enabled: bool, now: Instant) -> Gate {
        Gate {
            enabled,
            state: Mutex::new(State {
                generation: 0,
                up: false,
                since: now,
            }),
            resubscribe: AtomicBool::new(false),
        }
    }

    /// A token for a lease command about to be sent; `None` while the subscription is down (the
    /// node then does not compete for the lock). Always one when liveness is off.
    pub fn token(&self) -> Option<Token> {
        if !self.enabled {
            return Some(Token(0));
        }
        let state = self.state.lock();
        state.up.then_some(Token(state.generation))
    }

    /// The wake thread confirmed a (new) subscription.
    pub fn established(&self, now: Instant) {
        let mut state = self.state.lock();
        state.generation += 1;
        state.up = true;
        state.since = now;
    }

    /// The wake thread lost its connection: the flag goes down now, before anything else.
    /// Returns whether the subscription was up.
    pub fn broken(&self, flag: &AtomicBool, now: Instant) -> bool {
        if !self.enabled {
            return false;
        }
        let mut state = self.state.lock();
        flag.store(false, Ordering::SeqCst);
        let was_up = state.up;
        if was_up {
            state.up = false;
            state.since = now;
        }
        was_up
    }

    /// Raises the flag if the subscription `token` was taken under still stands; returns whether
    /// it did. The lease thread calls this after an acquire or renewal succeeded.
    pub fn raise(&self, token: Token, flag: &AtomicBool) -> bool {
        if !self.enabled {
            flag.store(true, Ordering::SeqCst);
            return true;
        }
        let state = self.state.lock();
        let stands = state.up && Token(state.generation) == token;
        if stands {
            flag.store(true, Ordering::SeqCst);
        }
        stands
    }

    /// How long the subscription has been down, `None` while it is up (or liveness is off).
    pub fn down_for(&self, now: Instant) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        let state = self.state.lock();
        (!state.up).then(|| now.saturating_duration_since(state.since))
    }

    /// Asks the wake thread to subscribe again on a new connection.
    pub fn request_resubscribe(&self) {
        self.resubscribe.store(true, Ordering::SeqCst);
    }

    /// Whether a new subscription was asked for (and clears the request).
    pub fn take_resubscribe(&self) -> bool {
        self.resubscribe.swap(false, Ordering::SeqCst)
    }
}

/// The follower's side: what it has seen of the lock holder's liveness subscription, look by
/// look, on one lease connection.
#[derive(Debug)]
pub(crate) struct HolderWatch {
    /// Between the two looks that must both find the holder gone; zero turns the checks off.
    interval: Duration,
    seen: Option<Seen>,
}

#[derive(Debug)]
struct Seen {
    holder: String,
    /// The lease connection the looks were made on (a counter of connections opened).
    link: u64,
    /// Whether a look on this connection found the holder's subscription there.
    alive: bool,
    /// The reply instant of the first look that found it gone since it was last seen alive.
    gone_since: Option<Instant>,
}

impl HolderWatch {
    pub fn new(interval: Duration) -> HolderWatch {
        HolderWatch {
            interval,
            seen: None,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }

    /// Forgets everything (we hold the lock, or our lease connection is gone).
    pub fn forget(&mut self) {
        self.seen = None;
    }

    /// One look at the lock, made on lease connection `link` and answered at `replied`: it is
    /// held by `holder`, whose liveness channel had `subscribers` (`None`: not asked).
    pub fn look(&mut self, link: u64, holder: &str, subscribers: Option<u64>, replied: Instant) {
        if !self.enabled() {
            return;
        }
        let same = self
            .seen
            .as_ref()
            .is_some_and(|s| s.link == link && s.holder == holder);
        if !same {
            self.seen = Some(Seen {
                holder: holder.to_string(),
                link,
                alive: false,
                gone_since: None,
            });
        }
        let Some(seen) = self.seen.as_mut() else {
            return;
        };
        match subscribers {
            Some(n) if n > 0 => {
                seen.alive = true;
                seen.gone_since = None;
            }
            // Gone, and seen alive before on this connection: the first look of two. Without
            // having seen it alive here, nothing is concluded (see the module comment).
            Some(_) if seen.alive => {
                seen.gone_since.get_or_insert(replied);
            }
            _ => {}
        }
    }

    /// The holder to take the lock from at `now` on connection `link`: one whose subscription
    /// was seen here and then found gone by a look answered at least one interval before `now`.
    /// The look that follows (`take_over.lua`) is the second, and checks again.
    pub fn dead_holder(&self, link: u64, now: Instant) -> Option<&str> {
        let seen = self.seen.as_ref().filter(|s| s.link == link && s.alive)?;
        let gone = seen.gone_since?;
        (now >= gone + self.interval).then_some(seen.holder.as_str())
    }

    /// When to look again after a look answered at `replied`, given how long the lease alone
    /// would wait (`lease_wait`, from the lock's PTTL): never later than one interval, and for
    /// the second look exactly one interval after the first found the holder gone.
    pub fn next_look(&self, replied: Instant, lease_wait: Duration) -> Instant {
        let by_lease = replied + lease_wait;
        if !self.enabled() {
            return by_lease;
        }
        match self.seen.as_ref().and_then(|s| s.gone_since) {
            Some(gone) => by_lease.min(gone + self.interval),
            None => by_lease.min(replied + self.interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_holder_seen_alive_then_gone_twice_an_interval_apart_is_dead() {
        let t0 = Instant::now();
        let mut w = HolderWatch::new(INTERVAL);
        w.look(1, "h", Some(1), t0);
        assert_eq!(w.dead_holder(1, t0 + ms(500)), None, "alive");
        assert_eq!(w.next_look(t0, ms(5_000)), t0 + INTERVAL);
        // First look that finds it gone.
        let first = t0 + ms(100);
        w.look(1, "h", Some(0), first);
        assert_eq!(w.dead_holder(1, first + ms(99)), None, "too soon");
        assert_eq!(w.dead_holder(1, first + INTERVAL), Some("h"));
        assert_eq!(w.next_look(first, ms(5_000)), first + INTERVAL);
        // A later look that still finds it gone does not move the first one.
        w.look(1, "h", Some(0), first + ms(50));
        assert_eq!(w.dead_holder(1, first + INTERVAL), Some("h"));
        // Another connection: nothing is known there.
        assert_eq!(w.dead_holder(2, first + INTERVAL), None);
    }

    #[test]
    fn a_holder_never_seen_alive_on_this_connection_is_never_declared_dead() {
        let t0 = Instant::now();
        let mut w = HolderWatch::new(INTERVAL);
        // After a restart of Redis (or of this follower), the holder's subscription is not
        // back yet: looks find it gone, for as long as they like.
        for i in 0..50 {
            w.look(7, "h", Some(0), t0 + ms(100 * i));
        }
        assert_eq!(w.dead_holder(7, t0 + ms(10_000)), None);
        // A node that does not check (or an old one) reports no count.
        w.look(7, "h", None, t0);
        assert_eq!(w.dead_holder(7, t0 + ms(10_000)), None);
    }

    #[test]
    fn a_new_connection_or_holder_starts_over() {
        let t0 = Instant::now();
        let mut w = HolderWatch::new(INTERVAL);
        w.look(1, "h", Some(1), t0);
        // Our lease connection broke and came back (a failover, say): what we saw on the old
        // one says nothing about the server we reach now.
        w.look(2, "h", Some(0), t0 + ms(10));
        w.look(2, "h", Some(0), t0 + ms(500));
        assert_eq!(w.dead_holder(2, t0 + ms(1_000)), None);
        // A new holder: seen alive, then gone, on this connection.
        w.look(2, "k", Some(1), t0 + ms(600));
        w.look(2, "k", Some(0), t0 + ms(700));
        assert_eq!(w.dead_holder(2, t0 + ms(800)), Some("k"));
        w.look(2, "h", Some(0), t0 + ms(800));
        assert_eq!(
            w.dead_holder(2, t0 + ms(2_000)),
            None,
            "h was not seen here"
        );
    }

    #[test]
    fn a_reconnect_between_the_two_looks_clears_the_suspicion() {
        let t0 = Instant::now();
        let mut w = HolderWatch::new(INTERVAL);
        w.look(1, "h", Some(1), t0);
        w.look(1, "h", Some(0), t0 + ms(100));
        w.look(1, "h", Some(1), t0 + ms(150));
        assert_eq!(w.dead_holder(1, t0 + ms(1_000)), None);
        // Gone again: the interval counts from this look.
        w.look(1, "h", Some(0), t0 + ms(300));
        assert_eq!(w.dead_holder(1, t0 + ms(399)), None);
        assert_eq!(w.dead_holder(1, t0 + ms(400)), Some("h"));
        w.forget();
        assert_eq!(w.dead_holder(1, t0 + ms(1_000)), None);
    }

    #[test]
    fn looks_follow_the_lease_when_it_is_sooner_or_checks_are_off() {
        let t0 = Instant::now();
        let mut w = HolderWatch::new(INTERVAL);
        w.look(1, "h", Some(1), t0);
        // The lock expires in 30 ms: look then.
        assert_eq!(w.next_look(t0, ms(31)), t0 + ms(31));
        let mut off = HolderWatch::new(Duration::ZERO);
        off.look(1, "h", Some(1), t0);
        off.look(1, "h", Some(0), t0 + ms(10));
        assert_eq!(off.dead_holder(1, t0 + ms(10_000)), None);
        assert_eq!(off.next_look(t0, ms(3_000)), t0 + ms(3_000));
    }

    #[test]
    fn the_flag_rises_only_on_a_command_sent_under_the_standing_subscription() {
        let t0 = Instant::now();
        let flag = AtomicBool::new(false);
        let gate = Gate::new(true, t0);
        assert_eq!(gate.token(), None, "not subscribed yet: do not compete");
        assert_eq!(gate.down_for(t0 + ms(5)), Some(ms(5)));
        gate.established(t0);
        let token = gate.token().expect("subscribed");
        assert!(gate.raise(token, &flag));
        assert!(flag.load(Ordering::SeqCst));
        // The connection breaks: the flag drops at once.
        assert!(gate.broken(&flag, t0 + ms(10)));
        assert!(!flag.load(Ordering::SeqCst));
        assert_eq!(gate.token(), None);
        // A renewal sent before the break succeeds after it: no flag.
        assert!(!gate.raise(token, &flag));
        // Subscribed again: still not with the old token, but with a new one.
        gate.established(t0 + ms(20));
        assert!(!gate.raise(token, &flag));
        assert!(!flag.load(Ordering::SeqCst));
        let fresh = gate.token().expect("subscribed again");
        assert!(gate.raise(fresh, &flag));
        assert!(flag.load(Ordering::SeqCst));
        assert_eq!(gate.down_for(t0 + ms(30)), None);
    }

    #[test]
    fn without_liveness_the_gate_is_always_open() {
        let t0 = Instant::now();
        let flag = AtomicBool::new(false);
        let gate = Gate::new(false, t0);
        let token = gate.token().expect("always");
        assert!(!gate.broken(&flag, t0));
        assert!(gate.raise(token, &flag));
        assert!(flag.load(Ordering::SeqCst));
        assert_eq!(gate.down_for(t0 + ms(100)), None);
    }
}
