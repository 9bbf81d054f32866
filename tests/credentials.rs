//! Credentials: the password of a Redis URL never shows in `Debug` output, error messages or
//! logs (at every level), whether the config is invalid, the server is down, the password is
//! right or wrong, or an outage makes the lease thread and the pool log their failures; a missing
//! or wrong password is a fast, permanent `Error::Auth`.
//!
//! Every test of this binary captures the logs (one logger per process).

mod common;
use dolos_redis_testkit as support;

use std::time::{Duration, Instant};

use common::{closed_port, tx, SETTLE};
use dolos_redis::{Config, Error, RedisMempool};
use support::logs::{assert_never_shown, capture_logs};
use support::{wait_until, RedisServer};

/// Connect and command timeout: short to keep the failures fast, far above what a healthy local
/// Redis needs.
const SHORT: Duration = Duration::from_millis(300);

/// How much later than its configured timeout a failing call may return on a loaded 2-core
/// machine (thread wake-ups, r2d2's retry back-off).
const SLACK: Duration = Duration::from_secs(2);

#[test]
fn the_password_never_shows_in_debug_errors_or_logs() {
    capture_logs();
    const SECRET: &str = "sekret-7f3a9c";
    const WRONG: &str = "wrong-pass-51d2e8";

    let mut shown: Vec<String> = Vec::new();

    // Debug of the config, and errors from validation and from a dead server.
    let dead = format!("redis://user:{SECRET}@127.0.0.1:{}", closed_port());
    let config = Config::new(dead.clone()).connect_timeout(SHORT);
    shown.push(format!("{config:?}"));
    shown.push(config.redacted_url());
    let err = RedisMempool::open(config).unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    shown.push(format!("{err} / {err:?}"));
    for bad in [
        Config::new(dead.clone()).key_prefix(""),
        Config::new(format!("redis://user:{SECRET}@127.0.0.1:notaport")),
        Config::new(format!("http://user:{SECRET}@127.0.0.1")),
        Config::new(format!("redis://{SECRET}@127.0.0.1:notaport")),
    ] {
        shown.push(format!("{bad:?}"));
        let err = RedisMempool::open(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
        shown.push(format!("{err} / {err:?}"));
    }

    // A server that really requires the password. Set at run time rather than with
    // `--requirepass` because the harness's readiness probe PINGs without credentials.
    let server = RedisServer::start();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(SECRET)
        .query::<()>(&mut server.connection())
        .unwrap();
    let port = server.port();
    let with_password = |userinfo: &str| {
        Config::new(format!("redis://{userinfo}@127.0.0.1:{port}"))
            .key_prefix("auth")
            .watcher_lock_ttl(Duration::from_secs(1))
            .connect_timeout(SHORT)
            .command_timeout(SHORT)
    };
    let m = RedisMempool::open(with_password(&format!(":{SECRET}"))).unwrap();
    let other = RedisMempool::open(with_password(&format!("default:{SECRET}"))).unwrap();
    assert!(wait_until(SETTLE, || m.is_watcher() || other.is_watcher()));
    m.receive(tx(0)).unwrap();
    assert_eq!(other.peek_pending(10).unwrap().len(), 1);
    shown.push(format!("{m:?}"));
    shown.push(format!("{other:?}"));
    shown.push(format!("{:?}", m.config()));
    shown.push(format!("{:?}", m.watcher_info().unwrap()));

    for userinfo in [format!(":{WRONG}"), format!("default:{WRONG}")] {
        let err = RedisMempool::open(with_password(&userinfo)).unwrap_err();
        shown.push(format!("{err} / {err:?}"));
    }
    let err = RedisMempool::open(
        Config::new(server.url())
            .connect_timeout(SHORT)
            .command_timeout(SHORT),
    )
    .unwrap_err();
    shown.push(format!("{err} / {err:?}"));

    // An outage (the server stops answering) makes the lease thread and the pool log their
    // failures; afterwards both reconnect with the password.
    let watcher = if m.is_watcher() { &m } else { &other };
    server.pause();
    let err = watcher.has_pending().unwrap_err();
    shown.push(format!("{err} / {err:?}"));
    let dropped = wait_until(SETTLE, || !watcher.is_watcher());
    server.resume();
    assert!(dropped, "the watcher flag stayed up through an outage");
    assert!(wait_until(SETTLE, || m.is_watcher() || other.is_watcher()));
    assert!(wait_until(SETTLE, || watcher.has_pending().is_ok()));
    drop(m);
    drop(other);

    assert_never_shown(&shown, &[SECRET, WRONG]);
}

#[test]
fn a_missing_or_wrong_password_is_a_fast_permanent_auth_error() {
    capture_logs();
    let server = RedisServer::start();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("needed-here")
        .query::<()>(&mut server.connection())
        .unwrap();
    let started = Instant::now();
    let err = RedisMempool::open(
        Config::new(server.url())
            .connect_timeout(SHORT)
            .command_timeout(SHORT),
    )
    .unwrap_err();
    let took = started.elapsed();
    println!("open without the password failed after {took:?}: {err:?}");
    // NOAUTH is the server refusing access: neither a connection problem to retry nor a
    // reply of an unexpected shape.
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("NOAUTH")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(took < SHORT + SLACK, "took {took:?}");

    let err = RedisMempool::open(
        Config::new(format!("redis://:wrong@127.0.0.1:{}", server.port()))
            .connect_timeout(SHORT)
            .command_timeout(SHORT),
    )
    .unwrap_err();
    println!("open with a wrong password: {err:?}");
    assert!(matches!(&err, Error::Auth(_)), "{err:?}");
    assert!(!err.is_transient());
    assert!(!err.to_string().contains("wrong"), "password leaked: {err}");
}
