//! TLS (`rediss://`, the `tls` feature) against a local `redis-server --tls-port` whose
//! certificates the test makes with the `openssl` command line: a node runs fully over TLS with
//! a client certificate and a password; a wrong CA, a certificate for another name, a missing
//! client certificate, a plain-text peer or a server that never answers the handshake are each
//! a quick, clear error, never a hang; bad TLS settings are refused at `open`, naming the field.
//!
//! Run with `--nocapture` to see the measured figures and the errors as a user sees them.

#![cfg(feature = "tls")]

mod common;
use dolos_redis_testkit as support;
use dolos_redis_testkit::tempfile::TempDir;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::full_run::{full_run, TTL};
use common::{tx, SETTLE};
use dolos_redis::{Config, Error, RedisMempool};
use support::server::TlsOptions;
use support::{RedisServer, ServerOptions};

/// Timeouts of the connections that are meant to time out: short to keep the tests fast.
const SHORT: Duration = Duration::from_millis(500);

/// Timeouts of the connections refused for their certificates: long enough that a loaded
/// machine cannot turn the refusal into a timeout (a refusal comes within milliseconds).
const PATIENT: Duration = Duration::from_secs(3);

/// How much later than its timeout a failing `open` may return on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(2);

/// A throwaway PKI in its own temp dir: a CA, a server certificate for `localhost` only (so
/// that `127.0.0.1` is a name it does not cover), a client certificate, and an unrelated CA.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = dolos_redis_testkit::tempfile::Builder::new()
            .prefix("dolos-redis-tls-")
            .tempdir()
            .expect("create the PKI dir");
        let pki = Pki { dir };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.leaf(
            "server",
            2,
            "localhost",
            "serverAuth",
            "subjectAltName=DNS:localhost\n",
        );
        pki.leaf("client", 3, "dolos-node", "clientAuth", "");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A self-signed CA: `<name>.crt`, `<name>.key`. EC keys: generated in milliseconds.
    fn ca(&self, name: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=dolos-redis test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    /// A certificate signed by `ca`: `<name>.crt`, `<name>.key`.
    fn leaf(&self, name: &str, serial: u32, cn: &str, usage: &str, extra: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let ext = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage={usage}\n{extra}"
        );
        std::fs::write(self.path(&format!("{name}.ext")), ext).expect("write extensions");
        openssl(
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial.to_string(),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    /// A TLS server that, like Redis by default, requires a client certificate.
    fn server(&self) -> RedisServer {
        RedisServer::start_with(ServerOptions {
            tls: Some(TlsOptions {
                cert_file: self.path("server.crt"),
                key_file: self.path("server.key"),
                ca_file: self.path("ca.crt"),
                auth_clients: true,
            }),
            ..ServerOptions::default()
        })
    }

    /// A node's configuration for `url`, trusting our CA and presenting the client certificate.
    fn config(&self, url: String) -> Config {
        Config::new(url)
            .tls_ca_file(self.path("ca.crt"))
            .tls_client_cert(self.path("client.crt"), self.path("client.key"))
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `openssl` (the TLS tests make their certificates with it): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tls_url(server: &RedisServer, userinfo: &str, host: &str) -> String {
    format!("rediss://{userinfo}{host}:{}", server.tls_port())
}

/// Opens `config` with `timeout` as connect and command timeout, expecting an error; returns
/// it and how long it took.
fn open_fails(what: &str, config: Config, timeout: Duration) -> (Error, Duration) {
    let started = Instant::now();
    let result = RedisMempool::open(
        config
            .key_prefix("tls-refused")
            .connect_timeout(timeout)
            .command_timeout(timeout),
    );
    let took = started.elapsed();
    let err = match result {
        Err(e) => e,
        Ok(m) => panic!("{what}: open succeeded ({m:?})"),
    };
    println!("{what}: after {took:?}: {err}");
    assert!(took < timeout + SLACK, "{what}: took {took:?}");
    (err, took)
}

#[test]
fn a_node_runs_fully_over_tls_with_a_client_certificate_and_a_password() {
    let pki = Pki::new();
    let server = pki.server();
    // A password over TLS too, as a managed Redis wants: an ACL user, made over the plain
    // admin port that only the harness uses.
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&["tls-node", "on", ">tls-pass-6a1f", "~*", "&*", "+@all"])
        .query::<()>(&mut server.connection())
        .expect("ACL SETUSER");
    let url = tls_url(&server, "tls-node:tls-pass-6a1f@", "localhost");
    let started = Instant::now();
    let report = full_run(&|| {
        pki.config(url.clone())
            .key_prefix("tls-full")
            .watcher_lock_ttl(TTL)
    });
    println!(
        "over TLS: whole run {:?}; takeover {} ms after the reset, graceful handover {} ms, \
         takeover {} ms after a crash (its lock had {} ms left)",
        started.elapsed(),
        report.takeover_after_reset.as_millis(),
        report.handover.as_millis(),
        report.takeover_after_crash.as_millis(),
        report.crashed_lock_left.as_millis()
    );
    // Through the wake channel (a follower's own poll comes only every third of the TTL).
    assert!(report.takeover_after_reset < TTL / 3, "{report:?}");
    assert!(report.handover < TTL / 3, "{report:?}");
}

#[test]
fn a_wrong_or_missing_certificate_is_a_quick_clear_error() {
    let pki = Pki::new();
    let server = pki.server();
    let mut failures = Vec::new();
    let mut check = |what: &str, config: Config, mentions: &[&str]| {
        let (err, _) = open_fails(what, config, PATIENT);
        let text = err.to_string().to_lowercase();
        if !matches!(err, Error::Unavailable(_) | Error::Auth(_)) {
            failures.push(format!("{what}: unexpected variant {err:?}"));
        }
        if !mentions.iter().any(|m| text.contains(m)) {
            failures.push(format!("{what}: {err} mentions none of {mentions:?}"));
        }
    };
    let localhost = tls_url(&server, "", "localhost");
    check(
        "a CA that did not sign the server's certificate",
        pki.config(localhost.clone())
            .tls_ca_file(pki.path("other-ca.crt")),
        &["certificate"],
    );
    check(
        "the built-in public roots, which do not know the test CA",
        Config::new(localhost.clone())
            .tls_client_cert(pki.path("client.crt"), pki.path("client.key")),
        &["certificate"],
    );
    check(
        "a host name the certificate does not cover",
        pki.config(tls_url(&server, "", "127.0.0.1")),
        &["certificate"],
    );
    check(
        "no client certificate for a server that requires one",
        Config::new(localhost.clone()).tls_ca_file(pki.path("ca.crt")),
        &["certificate"],
    );
    check(
        "plain text to the TLS port",
        Config::new(format!("redis://localhost:{}", server.tls_port())),
        &["connection", "closed", "reset", "broken", "eof"],
    );
    assert!(failures.is_empty(), "{failures:#?}");
    // Redis reads the ClientHello as the start of an inline command and waits for the rest of
    // the line: the connect timeout ends it.
    let (err, _) = open_fails(
        "TLS to a plain-text port",
        pki.config(format!("rediss://localhost:{}", server.port())),
        SHORT,
    );
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
}

#[test]
fn a_server_that_never_answers_the_handshake_is_a_timeout_not_a_hang() {
    let pki = Pki::new();
    let server = pki.server();
    // Stopped, the server's kernel still accepts connections, but nobody answers: the TLS
    // handshake waits for a reply that never comes.
    server.pause();
    let (err, took) = open_fails(
        "a server that accepts but never answers",
        pki.config(tls_url(&server, "", "localhost")),
        SHORT,
    );
    server.resume();
    assert!(err.is_transient(), "{err:?}");
    assert!(took < SHORT + SLACK, "took {took:?}");
}

#[test]
fn bad_tls_settings_are_refused_at_open_naming_the_field() {
    let pki = Pki::new();
    let url = "rediss://localhost:6380".to_string();
    let field_of = |c: Config| match RedisMempool::open(c) {
        Err(Error::InvalidConfig(m)) => {
            println!("refused: {m}");
            m.split(':').next().unwrap_or("").to_string()
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    assert_eq!(
        field_of(Config::new(url.clone()).tls_ca_file(pki.path("missing.crt"))),
        "tls_ca_file"
    );
    // A key is no certificate.
    assert_eq!(
        field_of(Config::new(url.clone()).tls_ca_file(pki.path("ca.key"))),
        "tls_ca_file"
    );
    assert_eq!(
        field_of(
            Config::new(url.clone()).tls_client_cert(pki.path("client.crt"), pki.path("ca.crt"))
        ),
        "tls_client_cert"
    );
    assert_eq!(
        field_of(
            Config::new(url.clone()).tls_client_cert(pki.path("missing.crt"), pki.path("c.key"))
        ),
        "tls_client_cert"
    );
    // TLS settings with a plain URL would be silently ignored.
    assert_eq!(
        field_of(Config::new("redis://localhost:6379").tls_ca_file(pki.path("ca.crt"))),
        "tls_ca_file"
    );
    assert_eq!(
        field_of(
            Config::new("redis://localhost:6379")
                .tls_client_cert(pki.path("client.crt"), pki.path("client.key"))
        ),
        "tls_client_cert"
    );
    // `#insecure` would turn certificate checks off.
    assert_eq!(field_of(Config::new(format!("{url}/#insecure"))), "url");
    // No error quotes the key file's contents.
    let key = std::fs::read_to_string(pki.path("client.key")).unwrap();
    let body = key.lines().nth(1).unwrap();
    let err = RedisMempool::open(
        Config::new(url.clone()).tls_client_cert(pki.path("client.key"), pki.path("client.key")),
    )
    .unwrap_err();
    assert!(!format!("{err} {err:?}").contains(body), "{err:?}");
}

#[test]
fn the_toml_table_takes_the_tls_settings() {
    let pki = Pki::new();
    let table = format!(
        r#"
        backend = "redis"
        url = "rediss://dolos:secret-tls-pass@localhost:6380"
        tls_ca_file = "{ca}"
        tls_client_cert_file = "{cert}"
        tls_client_key_file = "{key}"
        "#,
        ca = pki.path("ca.crt").display(),
        cert = pki.path("client.crt").display(),
        key = pki.path("client.key").display(),
    );
    let config: Config = toml::from_str(&table).expect("the table deserializes");
    assert_eq!(
        config,
        Config::new("rediss://dolos:secret-tls-pass@localhost:6380")
            .tls_ca_file(pki.path("ca.crt"))
            .tls_client_cert(pki.path("client.crt"), pki.path("client.key"))
    );
    config.validate().expect("valid");
    let shown = format!("{config:?}");
    assert!(!shown.contains("secret-tls-pass"), "{shown}");
    let half = toml::from_str::<Config>(&format!(
        "backend = \"redis\"\nurl = \"rediss://localhost\"\ntls_client_cert_file = \"{}\"\n",
        pki.path("client.crt").display()
    ));
    assert!(
        half.is_err(),
        "a client certificate without its key was accepted"
    );
}

/// `receive` works right after `open` over TLS, and a node's calls keep working after Redis
/// closed its pooled connections (each reconnect is a new handshake).
#[test]
fn pooled_tls_connections_reconnect_after_the_server_drops_them() {
    let pki = Pki::new();
    let server = pki.server();
    let m = RedisMempool::open(
        pki.config(tls_url(&server, "", "localhost"))
            .key_prefix("tls-reconnect"),
    )
    .expect("open over TLS");
    m.receive(tx(1)).expect("receive");
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query::<()>(&mut server.connection())
        .expect("CLIENT KILL");
    // The first call may meet a dead pooled connection; the next ones reconnect.
    let _ = m.has_pending();
    assert!(
        support::wait_until(SETTLE, || m.has_pending() == Ok(true)),
        "calls never recovered after the server closed the TLS connections"
    );
    assert!(support::wait_until(SETTLE, || m.is_watcher()));
}
