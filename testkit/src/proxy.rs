//! A TCP proxy that injects network faults between a client and a server.
//!
//! Every accepted client connection gets its own upstream connection and two
//! pump threads, one per direction. Each pump decides, per chunk it reads,
//! whether to forward or swallow it according to the current [`ProxyMode`].
//! Control operations (mode changes, drop) act on the sockets directly with
//! `shutdown`, which wakes any pump blocked in `read` or `write` at once, so
//! they take effect immediately rather than at the next poll.
//!
//! [`ProxyMode::Hold`] keeps what it reads in a per-link, per-direction
//! buffer instead; healing writes those buffers out before anything newer,
//! which models packets delayed in the network that arrive late.
//!
//! Apart from the mode, [`FaultProxy::cut_matching`] closes only the
//! connections whose client sent a given text at their start (a Redis
//! client's `CLIENT SETNAME`, say), and each new one as soon as it sends it:
//! one role of a client loses its link while its others keep theirs.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Upper bound on connecting to the upstream. On loopback a live server
/// accepts (and a dead one refuses) in microseconds; this only guards
/// against pathological cases so drop cannot hang on it for long.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Read timeout on proxied sockets. Pumps are woken by `shutdown` for every
/// control action; this is only a fallback so a pump notices shutdown of the
/// proxy even if a wake-up were missed. Long enough not to burn CPU when many
/// proxies idle on a 2-core machine.
const PUMP_POLL: Duration = Duration::from_millis(50);

/// How much of what a client sends first is kept per link for
/// [`FaultProxy::cut_matching`] to search: a Redis client names its
/// connection in its first commands.
const PREAMBLE: usize = 4096;

/// How long drop waits for pumps to release their sockets. They exit within
/// microseconds of `shutdown`; the bound only keeps a wedged thread from
/// hanging the test.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes both ways.
    Pass,
    /// A partition where packets vanish: connections stay open, every byte
    /// in either direction is read and discarded, so requests hang until the
    /// client's own timeout.
    ///
    /// New connections are still accepted (the TCP handshake completes) and
    /// swallowed the same way; the proxy itself is the "network", so the
    /// client's `connect` succeeds and its first command hangs. (A real
    /// partition would usually make `connect` time out instead.)
    ///
    /// Any connection that lost bytes is closed when the proxy heals back to
    /// `Pass`, because its request/reply stream is out of sync by then.
    ///
    /// A client that gives up and closes its connection meanwhile is not
    /// heard by the server either, as in a real partition where its FIN
    /// cannot cross: the upstream connection stays open (the server still
    /// counts the client, its subscriptions too) until the proxy heals.
    Blackhole,
    /// Existing connections are closed (both sides) when this mode is set,
    /// and each new connection is closed right after accept, so clients see
    /// EOF / connection reset instead of ECONNREFUSED.
    Refuse,
    /// Packets delayed in the network: bytes in either direction are read and
    /// kept, in order, instead of forwarded, so requests hang as in
    /// `Blackhole`; but on [`FaultProxy::heal`] the kept client→server bytes
    /// are written to the server (and the kept replies to the client) before
    /// anything newer, and forwarding resumes. Nothing is lost, so the link
    /// stays in sync and is not closed on heal.
    ///
    /// A client that gives up and closes its connection meanwhile does not
    /// cancel its held requests: the upstream connection stays open until
    /// heal has delivered them, then it is closed gracefully (the server
    /// sees the requests, then EOF) and the late replies are discarded.
    ///
    /// Switching to `Refuse` discards held bytes with the connection, and a
    /// link that lost bytes to a `Blackhole` in between is closed on heal as
    /// usual. [`FaultProxy::heal_except_held`] heals the network for all
    /// other traffic while the held connections stay delayed.
    Hold,
}

/// A fault-injecting TCP proxy on 127.0.0.1 in front of `upstream`.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Serialises mode changes, so that the delivery of held bytes on heal
    /// finishes before another mode can start holding new ones.
    control: Mutex<()>,
}

/// Everything a mode change must see consistently. One lock makes "check the
/// mode, then forward or taint" in a pump atomic with respect to "set the
/// mode, then close the tainted links" in `set_mode`: without it a pump could
/// swallow a chunk just after heal inspected its link and left it open.
struct State {
    mode: ProxyMode,
    /// [`FaultProxy::cut_matching`]: links whose preamble holds this are closed.
    cut: Option<Vec<u8>>,
    stopping: bool,
    next_id: u64,
    links: HashMap<u64, Arc<Link>>,
}

/// One proxied connection: the accepted client socket and its upstream.
struct Link {
    client: TcpStream,
    upstream: TcpStream,
    /// Set (under the state lock) once a byte in either direction has been
    /// swallowed; such a link can never carry a valid protocol stream again.
    tainted: AtomicBool,
    /// Pumps still running; the last one to stop deregisters the link.
    pumps: AtomicUsize,
    /// Bytes held under [`ProxyMode::Hold`], client→server and
    /// server→client. Each mutex is also taken around every write in its
    /// direction, so held bytes always go out before newer ones, whoever
    /// (a pump or `heal`) writes first.
    held_up: Mutex<Vec<u8>>,
    held_down: Mutex<Vec<u8>>,
    /// Set (under the state lock) once the link has held a byte: from then
    /// on a client that closes does not take the upstream down with it.
    held_any: AtomicBool,
    /// The client closed while requests of its were (or may have been)
    /// held; its upstream is closed gracefully once they are delivered.
    client_gone: AtomicBool,
    /// Set by [`Link::close`], so an EOF it caused is not taken for a
    /// client that left.
    closed: AtomicBool,
    /// Set (under the state lock) by `heal_except_held`: this link keeps
    /// holding whatever the mode, until `deliver_held` or `heal`.
    frozen: AtomicBool,
    /// The first [`PREAMBLE`] bytes the client sent (changed under the state
    /// lock), which [`FaultProxy::cut_matching`] searches.
    preamble: Mutex<Vec<u8>>,
}

/// Locks one of a link's held buffers, tolerating poison like `state`.
fn lock_held(held: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    held.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which way a pump copies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server (requests).
    Up,
    /// Server to client (replies).
    Down,
}

/// Whether `haystack` contains `needle` (an empty needle matches nothing).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

impl Link {
    /// Whether the client sent `pattern` at the start of its connection.
    fn sent(&self, pattern: &[u8]) -> bool {
        contains(&lock_held(&self.preamble), pattern)
    }

    fn held(&self, dir: Direction) -> &Mutex<Vec<u8>> {
        match dir {
            Direction::Up => &self.held_up,
            Direction::Down => &self.held_down,
        }
    }

    /// Writes out the bytes held on this link (requests first) and, if the
    /// client is gone, half-closes the upstream so the server runs them and
    /// then hangs up. Called by `heal` after the mode is back to `Pass`.
    fn deliver_held(&self) {
        {
            let mut up = lock_held(&self.held_up);
            let mut upstream = &self.upstream;
            if !up.is_empty() && upstream.write_all(&up).is_err() {
                self.close();
            }
            up.clear();
            if self.client_gone.load(Ordering::SeqCst) {
                let _ = self.upstream.shutdown(Shutdown::Write);
            }
        }
        let mut down = lock_held(&self.held_down);
        let mut client = &self.client;
        if !down.is_empty()
            && !self.client_gone.load(Ordering::SeqCst)
            && client.write_all(&down).is_err()
        {
            self.close();
        }
        down.clear();
    }

    /// Closes both sides. Any pump blocked on either socket wakes up with
    /// EOF or an error and exits; the client sees EOF right away.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking pump must not take every later test assertion down
        // with a poisoned lock; the state stays consistent regardless.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FaultProxy {
    /// Starts a proxy in [`ProxyMode::Pass`] on a free port of 127.0.0.1,
    /// forwarding to `upstream`.
    ///
    /// The listener is bound before this returns and kept for the proxy's
    /// life, so unlike a server's port this one cannot be lost to a race.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .unwrap_or_else(|e| panic!("fault proxy: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fault proxy: no local address: {e}"));
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                mode: ProxyMode::Pass,
                cut: None,
                stopping: false,
                next_id: 0,
                links: HashMap::new(),
            }),
            control: Mutex::new(()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name(format!("fault-proxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, accept_shared))
            .unwrap_or_else(|e| panic!("fault proxy: cannot spawn accept thread: {e}"));
        FaultProxy {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// Where clients should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Where the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Switches mode. Takes effect before this returns: from then on no byte
    /// is forwarded under `Blackhole` or `Hold`, and under `Refuse` (or on
    /// healing a link that lost bytes) the affected sockets have already been
    /// shut down, although [`Self::connections`] may count them for a few
    /// more moments until their pump threads finish. Switching to `Pass`
    /// hands the bytes held under `Hold` to the kernel before returning.
    pub fn set_mode(&self, mode: ProxyMode) {
        let _control = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let to_deliver: Vec<Arc<Link>> = {
            let mut state = self.shared.state();
            state.mode = mode;
            let mut keep = Vec::new();
            for link in state.links.values() {
                if mode == ProxyMode::Pass {
                    link.frozen.store(false, Ordering::SeqCst);
                }
                let close = match mode {
                    // Also the links whose client left during a black hole (see
                    // `client_left_requests_behind`), unless they hold requests to deliver.
                    ProxyMode::Pass => {
                        link.tainted.load(Ordering::SeqCst)
                            || (link.client_gone.load(Ordering::SeqCst)
                                && !link.held_any.load(Ordering::SeqCst))
                    }
                    ProxyMode::Blackhole | ProxyMode::Hold => false,
                    ProxyMode::Refuse => true,
                };
                if close {
                    link.close();
                } else if mode == ProxyMode::Pass && link.held_any.load(Ordering::SeqCst) {
                    keep.push(Arc::clone(link));
                }
            }
            keep
        };
        // Outside the state lock: a write may block while the receiver does
        // not read, and pumps must not stall meanwhile.
        for link in to_deliver {
            link.deliver_held();
        }
    }

    /// Closes every connection whose client sent `pattern` among its first
    /// bytes (a Redis client's `CLIENT SETNAME dolos-redis:<node>:wake`, for
    /// one), and from now on every new one as soon as it sends it, until
    /// [`Self::stop_cutting`]. Other connections go on as the mode says: one
    /// role of a client is cut off while its other connections keep working.
    /// Takes effect before this returns.
    pub fn cut_matching(&self, pattern: &str) {
        let mut state = self.shared.state();
        let pattern = pattern.as_bytes().to_vec();
        for link in state.links.values() {
            if link.sent(&pattern) {
                link.close();
            }
        }
        state.cut = Some(pattern);
    }

    /// Ends [`Self::cut_matching`]: new connections are no longer closed.
    pub fn stop_cutting(&self) {
        self.shared.state().cut = None;
    }

    /// Starts swallowing all traffic (see [`ProxyMode::Blackhole`]).
    pub fn blackhole(&self) {
        self.set_mode(ProxyMode::Blackhole)
    }

    /// Closes all connections and refuses new ones (see [`ProxyMode::Refuse`]).
    pub fn refuse(&self) {
        self.set_mode(ProxyMode::Refuse)
    }

    /// Back to [`ProxyMode::Pass`] for every connection except those holding
    /// bytes right now: they stay delayed (holding whatever they carry next,
    /// in order) until [`Self::deliver_held`] or [`Self::heal`]. Models a
    /// network that recovered while some old packets are still on their way,
    /// so a client can reconnect and act before its old requests arrive.
    pub fn heal_except_held(&self) {
        let _control = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut state = self.shared.state();
        state.mode = ProxyMode::Pass;
        for link in state.links.values() {
            // A buffer locked right now belongs to a pump forwarding (maybe
            // blocked on a slow receiver): that direction holds nothing.
            let holds = |held: &Mutex<Vec<u8>>| match held.try_lock() {
                Ok(bytes) => !bytes.is_empty(),
                Err(std::sync::TryLockError::Poisoned(e)) => !e.into_inner().is_empty(),
                Err(std::sync::TryLockError::WouldBlock) => false,
            };
            let holding = holds(&link.held_up) || holds(&link.held_down);
            if link.tainted.load(Ordering::SeqCst) {
                link.close();
            } else if holding {
                link.frozen.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Delivers the connections kept delayed by [`Self::heal_except_held`]
    /// (as `heal` would) and lets them forward again.
    pub fn deliver_held(&self) {
        let _control = self
            .shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let frozen: Vec<Arc<Link>> = {
            let state = self.shared.state();
            state
                .links
                .values()
                .filter(|l| l.frozen.swap(false, Ordering::SeqCst))
                .cloned()
                .collect()
        };
        for link in frozen {
            link.deliver_held();
        }
    }

    /// Connections whose client closed while their requests were held: they
    /// stay open until those requests were delivered and the server hung up
    /// (which it does only after running them). Zero after a heal means every
    /// late request has been executed.
    pub fn orphans(&self) -> usize {
        self.shared
            .state()
            .links
            .values()
            .filter(|l| l.client_gone.load(Ordering::SeqCst))
            .count()
    }

    /// Starts delaying all traffic (see [`ProxyMode::Hold`]).
    pub fn hold(&self) {
        self.set_mode(ProxyMode::Hold)
    }

    /// Back to forwarding; closes connections that lost bytes meanwhile and
    /// delivers the bytes held by [`ProxyMode::Hold`].
    pub fn heal(&self) {
        self.set_mode(ProxyMode::Pass)
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.state().mode
    }

    /// Bytes currently held by [`ProxyMode::Hold`], both directions of all
    /// connections together: lets a test wait until a request has really
    /// reached the proxy before it acts on the "network".
    pub fn held_bytes(&self) -> usize {
        let links: Vec<Arc<Link>> = self.shared.state().links.values().cloned().collect();
        links
            .iter()
            .map(|l| lock_held(&l.held_up).len() + lock_held(&l.held_down).len())
            .sum()
    }

    /// Number of currently open proxied connections. Connections are counted
    /// once their upstream connection is established and stop counting once
    /// both pump threads have finished, which happens shortly (not
    /// instantly) after a close; assert on it with `wait_until`.
    pub fn connections(&self) -> usize {
        self.shared.state().links.len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state();
            state.stopping = true;
            for link in state.links.values() {
                link.close();
            }
        }
        // Wake the accept loop, which is blocked in `accept` and checks
        // `stopping` after each connection. If this connect fails, the
        // listener is already gone, so the thread has ended and join returns.
        let _ = TcpStream::connect_timeout(&self.addr, UPSTREAM_CONNECT_TIMEOUT);
        if let Some(handle) = self.accept_thread.take() {
            let _ = handle.join();
        }
        // Wait for the pumps to drop their sockets, so that once the proxy
        // is gone the upstream has really seen its connections close.
        let shared = &self.shared;
        super::wait_until(DROP_GRACE, || shared.state().links.is_empty());
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        let (stopping, mode) = {
            let state = shared.state();
            (state.stopping, state.mode)
        };
        if stopping {
            break;
        }
        let client = match incoming {
            Ok(client) => client,
            Err(_) => {
                // E.g. EMFILE under a burst of connections. Back off briefly
                // instead of spinning on an error that will repeat at once.
                thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        if mode == ProxyMode::Refuse {
            drop(client);
            continue;
        }
        // The upstream connect happens off the accept thread so one slow
        // connect cannot delay other clients or drop.
        let link_shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("fault-proxy-link".into())
            .spawn(move || run_link(client, link_shared));
        // On failure the closure, and with it the client socket, is dropped:
        // the client sees its connection closed, which is an honest fault.
        drop(spawned);
    }
}

/// Connects upstream, registers the link and pumps both directions until it
/// closes. Runs on its own thread.
fn run_link(client: TcpStream, shared: Arc<Shared>) {
    // A dead upstream means the client's connection is closed right away,
    // as it would be by a server that went down.
    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT)
    else {
        return;
    };
    let Ok(link) = make_link(&client, &upstream) else {
        return;
    };
    let link = Arc::new(link);

    let id = {
        let mut state = shared.state();
        // Mode or stop may have changed while we were connecting; honour
        // them as if the connection had been open already.
        if state.stopping || state.mode == ProxyMode::Refuse {
            link.close();
            return;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.links.insert(id, Arc::clone(&link));
        id
    };

    let back_shared = Arc::clone(&shared);
    let back_link = Arc::clone(&link);
    let spawned = thread::Builder::new()
        .name("fault-proxy-pump".into())
        .spawn(move || {
            pump(
                upstream,
                client,
                Direction::Down,
                id,
                &back_link,
                &back_shared,
            )
        });
    if spawned.is_err() {
        // Without the second pump the link is useless: close it and account
        // for the pump that never ran; ours then exits at once.
        link.close();
        pump_done(id, &link, &shared);
        return;
    }
    let (Ok(from), Ok(to)) = (link.client.try_clone(), link.upstream.try_clone()) else {
        link.close();
        pump_done(id, &link, &shared);
        return;
    };
    pump(from, to, Direction::Up, id, &link, &shared);
}

/// Configures both sockets and keeps clones for control.
fn make_link(client: &TcpStream, upstream: &TcpStream) -> io::Result<Link> {
    for s in [client, upstream] {
        // Redis traffic is many small request/reply messages; Nagle plus
        // delayed ACKs would add ~40 ms per round trip through the proxy.
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(PUMP_POLL))?;
    }
    Ok(Link {
        client: client.try_clone()?,
        upstream: upstream.try_clone()?,
        tainted: AtomicBool::new(false),
        pumps: AtomicUsize::new(2),
        held_up: Mutex::new(Vec::new()),
        held_down: Mutex::new(Vec::new()),
        held_any: AtomicBool::new(false),
        client_gone: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        frozen: AtomicBool::new(false),
        preamble: Mutex::new(Vec::new()),
    })
}

/// What a pump does with a chunk it read.
enum Action {
    Forward,
    /// Keep it for delivery on heal (`Hold`).
    Keep,
    /// Drop it and taint the link (`Blackhole`).
    Swallow,
    /// Drop it without harm: a late reply for a client that is gone.
    Discard,
    Stop,
}

/// Copies `from` to `to` (in direction `dir`) until either side closes,
/// forwarding, holding or swallowing each chunk according to the mode at the
/// time it arrived.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    dir: Direction,
    id: u64,
    link: &Link,
    shared: &Shared,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if shared.state().stopping {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        let action = {
            let state = shared.state();
            let cut = dir == Direction::Up && {
                let mut preamble = lock_held(&link.preamble);
                if preamble.len() < PREAMBLE {
                    let take = n.min(PREAMBLE - preamble.len());
                    preamble.extend_from_slice(&buf[..take]);
                }
                state
                    .cut
                    .as_ref()
                    .is_some_and(|pattern| contains(&preamble, pattern))
            };
            if cut {
                link.close();
                Action::Stop
            } else if dir == Direction::Down && link.client_gone.load(Ordering::SeqCst) {
                Action::Discard
            } else if state.mode != ProxyMode::Refuse && link.frozen.load(Ordering::SeqCst) {
                lock_held(link.held(dir)).extend_from_slice(&buf[..n]);
                Action::Keep
            } else {
                match state.mode {
                    ProxyMode::Pass if !link.tainted.load(Ordering::SeqCst) => Action::Forward,
                    // Set under the lock so `set_mode(Pass)` cannot miss it.
                    ProxyMode::Pass | ProxyMode::Blackhole => {
                        link.tainted.store(true, Ordering::SeqCst);
                        Action::Swallow
                    }
                    ProxyMode::Hold => {
                        link.held_any.store(true, Ordering::SeqCst);
                        lock_held(link.held(dir)).extend_from_slice(&buf[..n]);
                        Action::Keep
                    }
                    // `set_mode(Refuse)` already shut the link down; this chunk
                    // was read just before that.
                    ProxyMode::Refuse => Action::Stop,
                }
            }
        };
        match action {
            Action::Forward => {
                // The write is outside the state lock: it can block for as
                // long as the receiver does not read (e.g. a paused server),
                // and must not stall mode changes meanwhile. `Link::close`
                // unblocks it. The held-buffer lock orders it after any bytes
                // held before the heal.
                let mut held = lock_held(link.held(dir));
                let ok = (held.is_empty() || to.write_all(&held).is_ok())
                    && to.write_all(&buf[..n]).is_ok();
                held.clear();
                if !ok {
                    break;
                }
            }
            Action::Keep | Action::Swallow | Action::Discard => {}
            Action::Stop => break,
        }
    }
    if dir == Direction::Up && client_left_requests_behind(link, shared) {
        pump_done(id, link, shared);
        return;
    }
    // One direction ending ends the connection: redis clients never
    // half-close, and a half-open link would only confuse tests.
    link.close();
    pump_done(id, link, shared);
}

/// Called when the client side of a link ended. If the link has held bytes
/// (now or earlier), the client's requests may still be on their way (see
/// [`ProxyMode::Hold`]): marks the client gone and keeps the upstream open,
/// half-closing it now if nothing is left to deliver. During a black hole
/// the server cannot hear the client leave: the upstream stays open until
/// the heal closes it. Returns whether the upstream was kept; otherwise the
/// caller closes the link as usual.
fn client_left_requests_behind(link: &Link, shared: &Shared) -> bool {
    let still_holding = {
        let state = shared.state();
        if state.mode == ProxyMode::Blackhole
            && !state.stopping
            && !link.closed.load(Ordering::SeqCst)
            && !link.held_any.load(Ordering::SeqCst)
        {
            link.client_gone.store(true, Ordering::SeqCst);
            return true;
        }
        let keep = !state.stopping
            && state.mode != ProxyMode::Refuse
            && !link.closed.load(Ordering::SeqCst)
            && !link.tainted.load(Ordering::SeqCst)
            && link.held_any.load(Ordering::SeqCst);
        if !keep {
            return false;
        }
        // Set under the state lock, so a heal that starts after this sees
        // it when it delivers and half-closes the upstream itself.
        link.client_gone.store(true, Ordering::SeqCst);
        state.mode == ProxyMode::Hold || link.frozen.load(Ordering::SeqCst)
    };
    // Outside the state lock: a delivery in progress holds this buffer while
    // it writes, and checks `client_gone` only after that.
    if !still_holding && lock_held(&link.held_up).is_empty() {
        // Already delivered: let the server finish and hang up; the other
        // pump then sees EOF and closes the link.
        let _ = link.upstream.shutdown(Shutdown::Write);
    }
    true
}

fn pump_done(id: u64, link: &Link, shared: &Shared) {
    if link.pumps.fetch_sub(1, Ordering::AcqRel) == 1 {
        shared.state().links.remove(&id);
    }
}
