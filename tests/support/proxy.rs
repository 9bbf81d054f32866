//! A TCP proxy that injects network faults between a client and a server.
//!
//! Every accepted client connection gets its own upstream connection and two
//! pump threads, one per direction. Each pump decides, per chunk it reads,
//! whether to forward or swallow it according to the current [`ProxyMode`].
//! Control operations (mode changes, drop) act on the sockets directly with
//! `shutdown`, which wakes any pump blocked in `read` or `write` at once, so
//! they take effect immediately rather than at the next poll.

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
    Blackhole,
    /// Existing connections are closed (both sides) when this mode is set,
    /// and each new connection is closed right after accept, so clients see
    /// EOF / connection reset instead of ECONNREFUSED.
    Refuse,
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
}

/// Everything a mode change must see consistently. One lock makes "check the
/// mode, then forward or taint" in a pump atomic with respect to "set the
/// mode, then close the tainted links" in `set_mode`: without it a pump could
/// swallow a chunk just after heal inspected its link and left it open.
struct State {
    mode: ProxyMode,
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
}

impl Link {
    /// Closes both sides. Any pump blocked on either socket wakes up with
    /// EOF or an error and exits; the client sees EOF right away.
    fn close(&self) {
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
                stopping: false,
                next_id: 0,
                links: HashMap::new(),
            }),
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
    /// is forwarded under `Blackhole`, and under `Refuse` (or on healing a
    /// link that lost bytes) the affected sockets have already been shut
    /// down, although [`Self::connections`] may count them for a few more
    /// moments until their pump threads finish.
    pub fn set_mode(&self, mode: ProxyMode) {
        let mut state = self.shared.state();
        state.mode = mode;
        for link in state.links.values() {
            let close = match mode {
                ProxyMode::Pass => link.tainted.load(Ordering::SeqCst),
                ProxyMode::Blackhole => false,
                ProxyMode::Refuse => true,
            };
            if close {
                link.close();
            }
        }
    }

    /// Starts swallowing all traffic (see [`ProxyMode::Blackhole`]).
    pub fn blackhole(&self) {
        self.set_mode(ProxyMode::Blackhole)
    }

    /// Closes all connections and refuses new ones (see [`ProxyMode::Refuse`]).
    pub fn refuse(&self) {
        self.set_mode(ProxyMode::Refuse)
    }

    /// Back to forwarding; closes connections that lost bytes meanwhile.
    pub fn heal(&self) {
        self.set_mode(ProxyMode::Pass)
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.state().mode
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
        .spawn(move || pump(upstream, client, id, &back_link, &back_shared));
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
    pump(from, to, id, &link, &shared);
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
    })
}

/// Copies `from` to `to` until either side closes, forwarding or swallowing
/// each chunk according to the mode at the time it arrived.
fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, link: &Link, shared: &Shared) {
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
        let forward = {
            let state = shared.state();
            match state.mode {
                ProxyMode::Pass if !link.tainted.load(Ordering::SeqCst) => true,
                // Set under the lock so `set_mode(Pass)` cannot miss it.
                ProxyMode::Pass | ProxyMode::Blackhole => {
                    link.tainted.store(true, Ordering::SeqCst);
                    false
                }
                // `set_mode(Refuse)` already shut the link down; this chunk
                // was read just before that.
                ProxyMode::Refuse => break,
            }
        };
        // The write is outside the lock: it can block for as long as the
        // receiver does not read (e.g. a paused server), and must not stall
        // mode changes meanwhile. `Link::close` unblocks it.
        if forward && to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // One direction ending ends the connection: redis clients never
    // half-close, and a half-open link would only confuse tests.
    link.close();
    pump_done(id, link, shared);
}

fn pump_done(id: u64, link: &Link, shared: &Shared) {
    if link.pumps.fetch_sub(1, Ordering::AcqRel) == 1 {
        shared.state().links.remove(&id);
    }
}
