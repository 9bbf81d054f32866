//! Checks the test harness itself, so that a failing library test can be
//! trusted to point at the library rather than at the harness.

mod support;

use std::time::{Duration, Instant};

use support::{wait_until, FaultProxy, ProxyMode, RedisServer, ServerOptions};

/// Short enough to keep the fault tests fast, long enough that a loaded
/// machine answers a healthy PING well within it.
const SHORT: Duration = Duration::from_millis(200);

/// Generous bound for conditions that normally hold within milliseconds.
const SETTLE: Duration = Duration::from_secs(5);

fn ping(con: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(con)
}

/// A connection through `url` whose commands give up after [`SHORT`].
fn short_connection(url: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(url)?;
    let con = client.get_connection_with_timeout(SHORT)?;
    con.set_read_timeout(Some(SHORT))?;
    con.set_write_timeout(Some(SHORT))?;
    Ok(con)
}

/// Whether a fresh connection through `url` can complete a PING.
fn fresh_ping_works(url: &str) -> bool {
    short_connection(url)
        .and_then(|mut con| ping(&mut con))
        .is_ok_and(|reply| reply == "PONG")
}

#[test]
fn server_answers_ping() {
    support::init_logging();
    let mut server = RedisServer::start();
    assert!(server.is_running());
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(server.addr().port(), server.port());
    assert_eq!(ping(&mut server.connection()).unwrap(), "PONG");
}

#[test]
fn drop_kills_server_and_removes_dir() {
    let server = RedisServer::start();
    let dir = server.dir().to_path_buf();
    let url = server.url();
    assert!(dir.is_dir());
    // Even a stopped process must die on drop (SIGKILL works on it).
    server.pause();
    drop(server);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!fresh_ping_works(&url));
}

#[test]
fn parallel_starts_get_distinct_servers() {
    // Many servers racing for ports at once: each must end up with its own
    // process, or tests would silently share data.
    let servers: Vec<RedisServer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(RedisServer::start)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, server) in servers.iter().enumerate() {
        let mut con = server.connection();
        let _: () = redis::cmd("SET").arg("who").arg(i).query(&mut con).unwrap();
    }
    for (i, server) in servers.iter().enumerate() {
        let who: usize = redis::cmd("GET")
            .arg("who")
            .query(&mut server.connection())
            .unwrap();
        assert_eq!(who, i);
    }
}

#[test]
fn restart_with_appendonly_keeps_data() {
    let mut server = RedisServer::start_with(ServerOptions {
        appendonly: true,
        ..ServerOptions::default()
    });
    let port = server.port();
    let old_pid = server.pid();
    let _: () = redis::cmd("SET")
        .arg("key")
        .arg("value")
        .query(&mut server.connection())
        .unwrap();

    server.kill();
    assert!(!server.is_running());
    server.kill(); // idempotent
    assert!(!fresh_ping_works(&server.url()));

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), old_pid);
    let value: Option<String> = redis::cmd("GET")
        .arg("key")
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(value.as_deref(), Some("value"));
}

#[test]
fn restart_without_appendonly_starts_empty() {
    let mut server = RedisServer::start();
    let _: () = redis::cmd("SET")
        .arg("key")
        .arg("value")
        .query(&mut server.connection())
        .unwrap();
    // Restarting a running server kills it first.
    server.restart();
    let value: Option<String> = redis::cmd("GET")
        .arg("key")
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(value, None);
}

#[test]
fn pause_stalls_and_resume_recovers() {
    let mut server = RedisServer::start();
    let mut con = short_connection(&server.url()).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    server.pause();
    assert!(server.is_running(), "a stopped process is still running");
    let err = ping(&mut con).expect_err("PING answered by a paused server");
    assert!(err.is_timeout(), "expected a timeout, got {err}");

    server.resume();
    // The old connection's stream is out of sync after the timeout (the
    // reply to the lost PING is still coming), so judge by fresh ones.
    assert!(wait_until(SETTLE, || fresh_ping_works(&server.url())));
}

#[test]
fn proxy_passes_traffic() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    assert_eq!(proxy.upstream(), server.addr());
    assert_eq!(proxy.url(), format!("redis://{}", proxy.addr()));

    let mut con = short_connection(&proxy.url()).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
    // A reply larger than one pump buffer must arrive intact.
    let big = "x".repeat(100_000);
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query(&mut con)
        .unwrap();
    let back: String = redis::cmd("GET").arg("big").query(&mut con).unwrap();
    assert_eq!(back, big);
    assert!(wait_until(SETTLE, || proxy.connections() == 1));

    drop(con);
    assert!(wait_until(SETTLE, || proxy.connections() == 0));
}

#[test]
fn proxy_blackhole_times_out_and_heal_recovers() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let mut con = short_connection(&proxy.url()).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    proxy.blackhole();
    assert_eq!(proxy.mode(), ProxyMode::Blackhole);
    let err = ping(&mut con).expect_err("PING got through a blackhole");
    assert!(err.is_timeout(), "expected a timeout, got {err}");
    // The connection itself stays open: packets vanish, nothing is reset.
    assert_eq!(proxy.connections(), 1);
    // New connections are accepted but their handshake is swallowed too.
    assert!(!fresh_ping_works(&proxy.url()));

    proxy.heal();
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    // Links that lost bytes are closed on heal, so nothing stale survives.
    assert!(wait_until(SETTLE, || proxy.connections() == 0));
    assert!(fresh_ping_works(&proxy.url()));
}

#[test]
fn proxy_blackhole_spares_idle_connections() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let mut con = short_connection(&proxy.url()).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    // Nothing was sent during the partition, so nothing was lost and the
    // connection is still in sync afterwards.
    proxy.blackhole();
    proxy.heal();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
}

#[test]
fn proxy_refuse_closes_existing_and_new_connections() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let mut con = short_connection(&proxy.url()).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    proxy.refuse();
    assert_eq!(proxy.mode(), ProxyMode::Refuse);
    let err = ping(&mut con).expect_err("PING survived Refuse");
    // A closed connection, not a swallowed request.
    assert!(
        !err.is_timeout(),
        "expected the connection to be closed, got {err}"
    );
    assert!(wait_until(SETTLE, || proxy.connections() == 0));
    assert!(!fresh_ping_works(&proxy.url()));

    proxy.heal();
    assert!(fresh_ping_works(&proxy.url()));
}

#[test]
fn proxy_follows_upstream_death() {
    let mut server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let mut con = short_connection(&proxy.url()).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    server.kill();
    assert!(ping(&mut con).is_err());
    assert!(wait_until(SETTLE, || proxy.connections() == 0));
    assert!(!fresh_ping_works(&proxy.url()));

    server.restart();
    assert!(fresh_ping_works(&proxy.url()));
}

#[test]
fn proxy_drop_closes_connections_promptly() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let url = proxy.url();
    let mut con = short_connection(&url).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
    proxy.blackhole();

    let started = Instant::now();
    drop(proxy);
    // Below the proxy's 2 s grace for pumps, so a wedged pump would show.
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "drop took too long"
    );
    assert!(ping(&mut con).is_err());
    assert!(!fresh_ping_works(&url));
}

#[test]
fn wait_until_reports_outcome() {
    let mut calls = 0;
    assert!(wait_until(SETTLE, || {
        calls += 1;
        calls == 3
    }));
    assert_eq!(calls, 3);

    let started = Instant::now();
    assert!(!wait_until(Duration::from_millis(30), || false));
    assert!(started.elapsed() >= Duration::from_millis(30));
}
