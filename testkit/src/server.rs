//! A throwaway `redis-server` process per test.
//!
//! Each server gets a free port on 127.0.0.1 and a private temp dir (for its
//! log and, with `appendonly`, its AOF), so tests can run in parallel without
//! seeing each other's data. The process is killed and the dir removed when
//! the [`RedisServer`] is dropped.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer PING after being spawned. Far more
/// than it needs when idle (a few ms), because on a loaded 2-core machine
/// with many test binaries starting servers at once the scheduler can starve
/// a fresh process for seconds; the deadline only matters when start-up has
/// genuinely failed.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Pause between readiness probes: a server normally comes up within a few
/// ms, so a short interval keeps tests fast without busy-waiting.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);

/// Bounds one readiness probe, so a port that accepts but never answers
/// (something other than our server took it) cannot stall the loop.
const PROBE_IO_TIMEOUT: Duration = Duration::from_millis(250);

/// How many fresh ports `start` tries before giving up. Losing the race for
/// a port is rare, so a handful of attempts is plenty.
const START_ATTEMPTS: usize = 10;

/// Connect, read and write timeout of [`RedisServer::connection`]: long
/// enough for a loaded machine, short enough that a hung test fails instead
/// of hanging CI.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// What redis logs when it cannot bind its port; the signal that a parallel
/// test won the race for the port we picked.
const ADDR_IN_USE: &str = "Address already in use";

const REDIS_LOG: &str = "redis.log";
/// stdout/stderr of the process: redis reports bad arguments there, before
/// it has opened its log file.
const STDOUT_LOG: &str = "stdout.log";

/// How to configure a [`RedisServer`].
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// `appendonly yes` with `appendfsync always`, so every acknowledged
    /// write survives a SIGKILL and comes back on [`RedisServer::restart`].
    pub appendonly: bool,
    /// Appended verbatim to the command line, e.g. `["--maxclients", "50"]`.
    pub extra_args: Vec<String>,
    /// Also listen for TLS on a second port ([`RedisServer::tls_port`]). The
    /// plain port stays open on 127.0.0.1 for the harness (its readiness
    /// probe and [`RedisServer::connection`] speak plain RESP).
    pub tls: Option<TlsOptions>,
}

/// The PEM files of a TLS listener (`redis-server --tls-port`).
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// The server's certificate (chain).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// The CA that client certificates must be signed by.
    pub ca_file: PathBuf,
    /// `tls-auth-clients yes`: refuse clients without a certificate
    /// signed by `ca_file` (Redis's own default); `false` makes them optional.
    pub auth_clients: bool,
}

/// A `redis-server` child process listening on 127.0.0.1 with its own dir.
pub struct RedisServer {
    /// `None` while killed.
    child: Option<Child>,
    /// Pid of the current (or, while killed, the last) process.
    pid: u32,
    port: u16,
    /// 0 without [`ServerOptions::tls`].
    tls_port: u16,
    dir: tempfile::TempDir,
    opts: ServerOptions,
    /// `Some` for a sentinel: the initial contents of its config file.
    sentinel_conf: Option<String>,
    /// `Some` for a cluster node ([`RedisServer::start_cluster_node`]): its cluster bus port,
    /// picked afresh with every attempt at a port, like `port`.
    cluster_port: Option<u16>,
}

/// What a sentinel started by [`RedisServer::start_sentinel`] monitors.
#[derive(Clone, Debug)]
pub struct SentinelOptions {
    /// The name clients ask for (`SENTINEL get-master-addr-by-name <name>`).
    pub master_name: String,
    /// The primary to monitor.
    pub primary: SocketAddr,
    /// How many sentinels must agree that the primary is down.
    pub quorum: u32,
    /// `down-after-milliseconds`.
    pub down_after: Duration,
    /// `failover-timeout`.
    pub failover_timeout: Duration,
}

/// Name of a sentinel's config file in its dir; Sentinel rewrites it as it learns the topology,
/// which is why it must be a file of its own and writable.
const SENTINEL_CONF: &str = "sentinel.conf";

/// What the examples and tools run against: the server at `REDIS_URL` when it is set, else a
/// private one. Returns the private server, to keep alive while it is used, and the URL.
pub fn from_env() -> (Option<RedisServer>, String) {
    match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    }
}

/// Why one attempt to bring up a server failed.
enum StartError {
    /// Someone else holds the port: worth retrying.
    PortTaken(String),
    /// Anything else (bad arguments, missing binary, timeout): retrying would
    /// only fail again, more slowly.
    Fatal(String),
}

impl RedisServer {
    /// Starts a server with default options (no persistence).
    ///
    /// Panics with the tail of the server's log if it does not come up.
    pub fn start() -> RedisServer {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a server with `opts`.
    ///
    /// Panics with the tail of the server's log if it does not come up.
    pub fn start_with(opts: ServerOptions) -> RedisServer {
        Self::launch(opts, None, None)
    }

    /// Starts an empty Redis Cluster node (`--cluster-enabled yes`, `nodes.conf` in its dir,
    /// `--cluster-node-timeout` as given) on a free port, with its cluster bus on another free
    /// port ([`Self::cluster_port`]): Redis's default, port + 10000, may be taken or above
    /// 65535. The node owns no slots and knows no other node until the test joins them
    /// (`CLUSTER ADDSLOTSRANGE`, `CLUSTER MEET`).
    ///
    /// Panics with the tail of its log if it does not come up.
    pub fn start_cluster_node(node_timeout: Duration) -> RedisServer {
        let opts = ServerOptions {
            extra_args: vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-node-timeout".into(),
                node_timeout.as_millis().to_string(),
            ],
            ..Default::default()
        };
        Self::launch(opts, None, Some(0))
    }

    /// The cluster bus port of a node started by [`Self::start_cluster_node`].
    ///
    /// Panics for any other server.
    pub fn cluster_port(&self) -> u16 {
        self.cluster_port
            .unwrap_or_else(|| panic!("redis on port {} is no cluster node", self.port))
    }

    /// Starts a Redis Sentinel (`redis-server <dir>/sentinel.conf --sentinel`) on a free port,
    /// monitoring `opts.primary` with `parallel-syncs 1`. [`Self::url`] and
    /// [`Self::connection`] reach the sentinel itself.
    ///
    /// Panics with the tail of its log if it does not come up.
    pub fn start_sentinel(opts: SentinelOptions) -> RedisServer {
        let name = &opts.master_name;
        let conf = format!(
            "sentinel monitor {name} {} {} {}\n\
             sentinel down-after-milliseconds {name} {}\n\
             sentinel failover-timeout {name} {}\n\
             sentinel parallel-syncs {name} 1\n",
            opts.primary.ip(),
            opts.primary.port(),
            opts.quorum,
            opts.down_after.as_millis(),
            opts.failover_timeout.as_millis(),
        );
        Self::launch(ServerOptions::default(), Some(conf), None)
    }

    /// A server (a sentinel with `sentinel_conf`, a cluster node with `cluster_port`) in a new
    /// temp dir, started on a free port.
    fn launch(
        opts: ServerOptions,
        sentinel_conf: Option<String>,
        cluster_port: Option<u16>,
    ) -> RedisServer {
        // Built before anything can fail, so that a panic below drops it and so removes the
        // temp dir.
        let mut server = RedisServer {
            child: None,
            pid: 0,
            port: 0,
            tls_port: 0,
            dir: tempfile::Builder::new()
                .prefix("dolos-redis-test-")
                .tempdir()
                .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}")),
            opts,
            sentinel_conf,
            cluster_port,
        };
        server.start_on_free_port();
        server
    }

    /// The part of starting shared by servers and sentinels: pick a port, spawn, wait, and try
    /// another port if a parallel test took it.
    fn start_on_free_port(&mut self) {
        let server = self;
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            // The port is free when we look, but nothing reserves it until
            // redis binds it, so a parallel test may take it in between; the
            // attempt then fails with `PortTaken` and we pick another.
            server.port = free_port();
            if server.opts.tls.is_some() {
                server.tls_port = free_port();
            }
            if server.cluster_port.is_some() {
                server.cluster_port = Some(free_port());
            }
            match server.spawn_and_wait() {
                Ok(()) => return,
                Err(StartError::PortTaken(msg)) => last_error = msg,
                Err(StartError::Fatal(msg)) => server.fail(&msg),
            }
        }
        server.fail(&format!(
            "gave up after {START_ATTEMPTS} ports were taken; last: {last_error}"
        ))
    }

    /// The TCP port the server listens on; stable across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS port; stable across restarts.
    ///
    /// Panics if the server was started without [`ServerOptions::tls`].
    pub fn tls_port(&self) -> u16 {
        assert!(
            self.opts.tls.is_some(),
            "redis on port {} has no TLS listener (ServerOptions::tls)",
            self.port
        );
        self.tls_port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// Pid of the running process (or of the last one, after `kill`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The server's private directory (log, AOF).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh direct connection with 5 s connect, read and write timeouts.
    ///
    /// Panics if the server cannot be reached; see [`Self::try_connection`].
    pub fn connection(&self) -> redis::Connection {
        self.try_connection()
            .unwrap_or_else(|e| panic!("cannot connect to redis at {}: {e}", self.url()))
    }

    /// Like [`Self::connection`] but returns the error, for tests that expect
    /// the server to be unreachable.
    pub fn try_connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        let con = client.get_connection_with_timeout(CONNECTION_TIMEOUT)?;
        // The connect timeout only covers the handshake; without these a
        // command to a stopped server would block forever.
        con.set_read_timeout(Some(CONNECTION_TIMEOUT))?;
        con.set_write_timeout(Some(CONNECTION_TIMEOUT))?;
        Ok(con)
    }

    /// SIGKILLs the server and reaps it. Idempotent.
    ///
    /// SIGKILL rather than SIGTERM so that tests see what a crash leaves
    /// behind: no final AOF rewrite, no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if the process already exited, which is fine.
            let _ = child.kill();
            // Reaping also guarantees the listening socket is closed before
            // `restart` tries to bind the port again.
            let _ = child.wait();
        }
    }

    /// Kills the server if running, then starts it again on the same port
    /// with the same dir and options (so an AOF is replayed), and waits until
    /// it answers PING and has finished loading.
    pub fn restart(&mut self) {
        self.kill();
        // The port has to stay the same (clients and proxies point at it), so
        // unlike `start` we cannot move elsewhere if it is taken; instead we
        // retry until whoever grabbed it in the meantime (typically a
        // short-lived outgoing connection that got it as its ephemeral port)
        // lets go.
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut retries = 0;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(StartError::PortTaken(msg)) if Instant::now() < deadline => {
                    retries += 1;
                    if retries == 1 {
                        log_retry(&msg);
                    }
                    // Back off a little: the holder needs time to go away,
                    // and respawning redis in a tight loop would only slow
                    // it down on a loaded machine.
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(StartError::PortTaken(msg)) | Err(StartError::Fatal(msg)) => {
                    self.fail(&format!("restart on port {}: {msg}", self.port))
                }
            }
        }
    }

    /// Freezes the process (SIGSTOP): it keeps its port and connections but
    /// answers nothing, like a server stuck in a long GC or swap storm.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Undoes [`Self::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Whether the process is alive (a paused process counts as running).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last `lines` lines of the server's log and of its stdout/stderr,
    /// for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in [REDIS_LOG, STDOUT_LOG] {
            let text = fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!("--- {name} (last {} lines) ---\n", tail.len()));
            for line in tail {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn signal(&self, sig: &str) {
        assert!(
            self.child.is_some(),
            "cannot send SIG{sig} to redis on port {}: it is not running",
            self.port
        );
        // std has no way to send arbitrary signals and we avoid a libc
        // dependency, so use kill(1).
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill -{sig}`: {e}"));
        assert!(
            status.success(),
            "`kill -{sig} {}` failed: {status}",
            self.pid
        );
    }

    /// Panics with `msg`, the server's identity and its log tail.
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "redis-server (port {}, dir {}): {msg}\n{}",
            self.port,
            self.dir.path().display(),
            self.log_tail(40)
        )
    }

    /// Spawns redis on `self.port` and waits until it is ready; on success
    /// `self.child` and `self.pid` describe the new process.
    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let log_path = self.dir.path().join(REDIS_LOG);
        // Redis appends to its log across restarts; only what this attempt
        // writes tells whether this attempt lost the port.
        let log_offset = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(STDOUT_LOG))
            .map_err(|e| StartError::Fatal(format!("cannot open {STDOUT_LOG}: {e}")))?;
        let err = out
            .try_clone()
            .map_err(|e| StartError::Fatal(format!("cannot clone {STDOUT_LOG}: {e}")))?;

        let mut cmd = Command::new("redis-server");
        if let Some(conf) = &self.sentinel_conf {
            // Written once: across restarts Sentinel keeps what it rewrote into it.
            let path = self.dir.path().join(SENTINEL_CONF);
            if !path.exists() {
                fs::write(&path, conf).map_err(|e| {
                    StartError::Fatal(format!("cannot write {}: {e}", path.display()))
                })?;
            }
            cmd.arg(path).arg("--sentinel");
        }
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            // No RDB snapshots: they would only slow tests down, and the
            // persistence tests care about the AOF.
            .args(["--save", ""])
            .arg("--appendonly")
            .arg(if self.opts.appendonly { "yes" } else { "no" });
        if self.opts.appendonly {
            cmd.args(["--appendfsync", "always"]);
        }
        if let Some(bus) = self.cluster_port {
            cmd.arg("--cluster-port").arg(bus.to_string());
        }
        if let Some(tls) = &self.opts.tls {
            cmd.arg("--tls-port")
                .arg(self.tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file)
                .arg("--tls-auth-clients")
                .arg(if tls.auth_clients { "yes" } else { "no" });
        }
        cmd.args(["--daemonize", "no"])
            .arg("--logfile")
            .arg(&log_path)
            .args(["--protected-mode", "no"])
            .args(&self.opts.extra_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);

        let child = cmd.spawn().map_err(|e| {
            StartError::Fatal(format!(
                "cannot spawn redis-server (is it installed and on PATH?): {e}"
            ))
        })?;
        self.pid = child.id();
        self.child = Some(child);

        match self.wait_ready(&log_path, log_offset) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.kill();
                Err(e)
            }
        }
    }

    /// Polls until our own process answers PING on our port.
    fn wait_ready(&mut self, log_path: &Path, log_offset: u64) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("spawn_and_wait sets child");
            if let Ok(Some(status)) = child.try_wait() {
                let fresh = read_from(log_path, log_offset);
                return Err(if fresh.contains(ADDR_IN_USE) {
                    StartError::PortTaken(format!("port {} already in use", self.port))
                } else {
                    StartError::Fatal(format!("exited with {status} before answering PING"))
                });
            }
            match probe(self.addr()) {
                Some(pid) if pid == self.pid => return Ok(()),
                // Another server answers on "our" port: it won the race and
                // ours is about to exit with EADDRINUSE. Checking the pid is
                // what stops us from handing a test somebody else's server.
                Some(other) => {
                    return Err(StartError::PortTaken(format!(
                        "port {} is served by another redis-server (pid {other})",
                        self.port
                    )))
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(StartError::Fatal(format!(
                    "did not answer PING within {READY_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // The dir goes when the field drops, after this: once the process is gone.
        self.kill();
    }
}

/// One readiness probe: `Some(pid)` of the redis-server answering PING with
/// PONG on `addr` (so not still loading its AOF), `None` if nothing usable
/// answers yet.
///
/// Speaks RESP by hand rather than through the `redis` crate so that the
/// LOADING reply and the server's identity are visible without depending on
/// how the client library treats them during its own handshake.
fn probe(addr: SocketAddr) -> Option<u32> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_IO_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_IO_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(PROBE_IO_TIMEOUT)).ok()?;
    // Pipelined: one round trip for both. INFO works even while loading,
    // but we only look at it once PING says the server is ready.
    stream
        .write_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    if line != "+PONG\r\n" {
        // Typically "-LOADING ...": up, but not ready for tests.
        return None;
    }
    line.clear();
    reader.read_line(&mut line).ok()?;
    let len: usize = line.strip_prefix('$')?.trim_end().parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// A port that was free a moment ago. Nothing holds it for us afterwards,
/// which is why callers must cope with losing it.
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"))
}

/// The contents of `path` from byte `offset` on (empty if unreadable).
fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}

/// Port clashes on restart are expected now and then; leave one trace for
/// whoever is debugging a slow test, without failing it.
fn log_retry(msg: &str) {
    eprintln!("support::RedisServer: {msg}; retrying for up to {READY_TIMEOUT:?}");
}
