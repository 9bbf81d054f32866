//! Least privilege: a node runs fully as a Redis ACL user restricted to the commands it sends
//! and to the keys and channels of its own prefix; that user can touch nothing else; a user
//! missing part of the rule gets a typed, permanent error (not a hang, not a panic); and the
//! user's password never shows in logs, `Debug` output or errors.
//!
//! The rule ([`node_rule`]) is the one the README documents. It is derived from what a node
//! sends: `INFO` (the server's version and memory settings: at open, in `stats` and now and then),
//! `SCRIPT LOAD` and `EVALSHA` for every call (one Lua script each), the commands those
//! scripts run (`src/scripts/*.lua`; Redis checks a script's commands and keys against the
//! caller's ACL too, `PUBSUB NUMSUB` among them for the liveness checks), `SUBSCRIBE`/`PING` on
//! the wake channel and the node's liveness channel (and the `UNSUBSCRIBE`/
//! `PUNSUBSCRIBE` redis-rs sends when it closes a subscription), `GET` and `XREAD` for the event
//! reader, `TYPE` to name a key of the wrong type, and `CLIENT SETNAME` (optional: a node
//! tolerates its refusal, but operators want named connections in `CLIENT LIST`).
//!
//! Run with `--nocapture` to see the measured figures.

mod common;
use dolos_redis_testkit as support;

use std::time::{Duration, Instant};

use common::full_run::{full_run, TTL};
use common::{cmd, hash, tx, SETTLE};
use dolos_redis::{Config, Error, RedisMempool};
use support::RedisServer;

/// Every command a node sends, as `ACL SETUSER` rules.
const NODE_COMMANDS: &[&str] = &[
    // Each mempool call and lease step is one script: loaded once, then run by its hash.
    "+evalsha",
    "+script|load",
    // The commands inside the scripts.
    "+get",
    "+set",
    "+del",
    "+incr",
    "+pexpire",
    "+pttl",
    "+hget",
    "+hmget",
    "+hset",
    "+hdel",
    "+hexists",
    "+hincrby",
    "+zadd",
    "+zrem",
    "+zcard",
    "+zscore",
    "+zmscore",
    "+zrange",
    "+zremrangebyscore",
    "+xadd",
    "+xrange",
    "+xlen",
    "+xtrim",
    "+publish",
    // Liveness: the count of a node's liveness subscribers (lease scripts).
    "+pubsub|numsub",
    // Outside scripts: the server's version and memory settings and the layout version (read
    // at open), the wake channel, the event reader, the reads that are one plain command,
    // naming the key of a wrong type, naming connections.
    "+info",
    "+exists",
    "+hsetnx",
    "+subscribe",
    "+unsubscribe",
    "+punsubscribe",
    "+ping",
    "+xread",
    // Large reads of the pending queue and the inflight set: plain commands, partly in a MULTI.
    "+multi",
    "+exec",
    "+type",
    "+client|setname",
];

/// The `ACL SETUSER` arguments that give `user` exactly what a node of mempool `prefix` needs:
/// the commands above, the keys `<prefix>:*` and the channels `<prefix>:watcher:wake` and
/// `<prefix>:watcher:live:<node id>` (written `<prefix>:*`, which covers both).
fn node_rule(user: &str, password: &str, prefix: &str) -> Vec<String> {
    let mut args: Vec<String> = vec![
        user.into(),
        "reset".into(),
        // Redis 6.2's `reset` grants every channel (its `acl-pubsub-default`), after which a
        // channel pattern is refused; 7 resets channels already.
        "resetchannels".into(),
        "on".into(),
        format!(">{password}"),
        format!("~{prefix}:*"),
        format!("&{prefix}:*"),
        "-@all".into(),
    ];
    args.extend(NODE_COMMANDS.iter().map(|c| c.to_string()));
    args
}

/// `ACL SETUSER` as the server's default (unrestricted) user.
fn set_user(server: &RedisServer, args: &[String]) {
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(args)
        .query::<()>(&mut server.connection())
        .unwrap_or_else(|e| panic!("ACL SETUSER {args:?}: {e}"));
}

/// The line an operator types, for the test output (and the README).
fn as_command_line(args: &[String]) -> String {
    format!("ACL SETUSER {}", args.join(" "))
}

fn url(server: &RedisServer, user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@127.0.0.1:{}", server.port())
}

fn node_config(url: &str, prefix: &str) -> Config {
    Config::new(url)
        .key_prefix(prefix)
        .watcher_lock_ttl(TTL)
        .connect_timeout(Duration::from_secs(2))
        .command_timeout(Duration::from_secs(2))
}

/// The server's ACL log entries for `user`: one per refused command, key or channel.
fn refusals(server: &RedisServer, user: &str) -> Vec<String> {
    let entries: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .arg(1000)
        .query(&mut server.connection())
        .expect("ACL LOG");
    entries
        .into_iter()
        .map(|e| format!("{e:?}"))
        .filter(|e| e.contains(&format!("\"{user}\"")))
        .collect()
}

use support::logs::{assert_never_shown, capture_logs};

// ---- the tests ----

#[test]
fn the_readme_rule_grants_what_a_node_sends() {
    let readme = include_str!("../README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER dolos-node "))
        .expect("the README's ACL rule");
    let mut documented: Vec<&str> = line.split(' ').filter(|w| w.starts_with('+')).collect();
    let mut needed = NODE_COMMANDS.to_vec();
    documented.sort_unstable();
    needed.sort_unstable();
    assert_eq!(
        documented, needed,
        "the README's rule and this test's differ"
    );
    for pattern in ["~dolos:mempool:*", "&dolos:mempool:*", "-@all"] {
        assert!(line.split(' ').any(|w| w == pattern), "{pattern} missing");
    }
}

#[test]
fn a_node_runs_fully_as_a_user_restricted_to_its_prefix() {
    capture_logs();
    let server = RedisServer::start();
    let prefix = "acl-full";
    let rule = node_rule("dolos-node", "node-pass-3b9e", prefix);
    println!("rule: {}", as_command_line(&rule));
    set_user(&server, &rule);
    let url = url(&server, "dolos-node", "node-pass-3b9e");

    let report = full_run(&|| node_config(&url, prefix));
    println!(
        "as the restricted user: takeover {} ms after the operator's reset, graceful handover \
         {} ms (followers poll every {} ms), takeover {} ms after a crash (its lock had {} ms \
         left)",
        report.takeover_after_reset.as_millis(),
        report.handover.as_millis(),
        (TTL / 3).as_millis(),
        report.takeover_after_crash.as_millis(),
        report.crashed_lock_left.as_millis()
    );
    // Faster than a follower's poll: both came through the wake channel, which the user may
    // subscribe to and publish on.
    assert!(report.takeover_after_reset < TTL / 3, "{report:?}");
    assert!(report.handover < TTL / 3, "{report:?}");
    // Not one command, key or channel was refused along the way (a node tolerates some
    // refusals, e.g. of CLIENT SETNAME, so a passing run alone would not prove this).
    let refused = refusals(&server, "dolos-node");
    assert!(refused.is_empty(), "refused: {refused:#?}");
}

#[test]
fn the_restricted_user_cannot_touch_anything_outside_its_prefix() {
    let server = RedisServer::start();
    let prefix = "acl-fence";
    set_user(&server, &node_rule("fenced", "fenced-pass", prefix));
    // The mempool itself, and a neighbour's keys, written by the admin.
    let node = RedisMempool::open(node_config(&url(&server, "fenced", "fenced-pass"), prefix))
        .expect("open as the restricted user");
    node.receive(tx(1)).expect("receive");
    let mut admin = server.connection();
    redis::cmd("SET")
        .arg("other:key")
        .arg("theirs")
        .query::<()>(&mut admin)
        .unwrap();

    let mut user = redis::Client::open(url(&server, "fenced", "fenced-pass"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect as the restricted user");
    user.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Control: the user does reach its own keys, so the refusals below are about the keys.
    let own: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}:height"))
        .query(&mut user)
        .expect("GET of an own key");
    assert_eq!(own, None);
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return redis.call('GET', KEYS[1] or 'other:key')")
        .query(&mut user)
        .expect("the user may load scripts");

    let attempts: Vec<(&str, redis::Cmd)> = vec![
        ("read another key", cmd(&["GET", "other:key"])),
        ("overwrite another key", cmd(&["SET", "other:key", "mine"])),
        ("delete another key", cmd(&["DEL", "other:key"])),
        (
            "a key that only starts like the prefix",
            cmd(&["SET", &format!("{prefix}-evil"), "x"]),
        ),
        (
            "another mempool's keys",
            cmd(&["ZCARD", "dolos:mempool:pending"]),
        ),
        (
            "a script on another key",
            cmd(&["EVALSHA", &sha, "1", "other:key"]),
        ),
        (
            "a script that reaches an undeclared key",
            cmd(&["EVALSHA", &sha, "0"]),
        ),
        (
            "EVAL",
            cmd(&["EVAL", "return redis.call('GET', 'other:key')", "0"]),
        ),
        ("publish elsewhere", cmd(&["PUBLISH", "other:chan", "hi"])),
        ("list keys", cmd(&["KEYS", "*"])),
        ("scan keys", cmd(&["SCAN", "0"])),
        ("wipe the server", cmd(&["FLUSHALL"])),
        ("read the config", cmd(&["CONFIG", "GET", "requirepass"])),
        ("change ACLs", cmd(&["ACL", "SETUSER", "fenced", "+@all"])),
        (
            "rename a key out",
            cmd(&["RENAME", &format!("{prefix}:txs"), "x"]),
        ),
    ];
    let mut allowed = Vec::new();
    for (what, attempt) in attempts {
        match attempt.query::<redis::Value>(&mut user) {
            Err(e) if is_acl_refusal(&e) => println!("refused: {what}: {e}"),
            Err(e) => allowed.push(format!("{what}: failed but not by the ACL: {e}")),
            Ok(v) => allowed.push(format!("{what}: allowed, got {v:?}")),
        }
    }
    assert!(allowed.is_empty(), "{allowed:#?}");
    // Subscribing elsewhere: refused too. (Sent as a plain command: redis-rs's `PubSub`
    // returns `Ok` for a refused subscription.)
    let err = cmd(&["SUBSCRIBE", "other:chan"])
        .query::<redis::Value>(&mut user)
        .unwrap_err();
    assert!(is_acl_refusal(&err), "{err}");

    let theirs: String = redis::cmd("GET")
        .arg("other:key")
        .query(&mut admin)
        .unwrap();
    assert_eq!(theirs, "theirs");
    // A node of another mempool cannot run as this user: every call is refused, as a typed
    // permanent error.
    let stray = RedisMempool::open(node_config(&url(&server, "fenced", "fenced-pass"), "other"));
    match stray {
        Err(e) => assert!(matches!(e, Error::Auth(_)), "{e:?}"),
        Ok(stray) => {
            let err = stray.receive(tx(2)).unwrap_err();
            assert!(matches!(&err, Error::Auth(_)), "{err:?}");
            assert!(!err.is_transient());
        }
    }
    drop(node);
}

/// A user that lacks part of the rule: each call that needs the missing part fails with
/// `Error::Auth` within its timeouts, and never stores part of its change.
#[test]
fn a_missing_permission_is_a_fast_permanent_auth_error() {
    capture_logs();
    let server = RedisServer::start();
    let mut failures = Vec::new();
    let cases: &[(&str, &[&str])] = &[
        ("no INFO", &["-info"]),
        ("no SCRIPT LOAD", &["-script|load"]),
        ("no EVALSHA", &["-evalsha"]),
        // Used inside receive, after its first writes.
        ("no XADD (event stream)", &["-xadd"]),
        ("no HSET", &["-hset"]),
        ("no ZCARD", &["-zcard"]),
    ];
    for (i, (what, minus)) in cases.iter().enumerate() {
        let user = format!("lacking-{i}");
        let prefix = format!("acl-lacking-{i}");
        let mut rule = node_rule(&user, "p", &prefix);
        rule.extend(minus.iter().map(|m| m.to_string()));
        set_user(&server, &rule);
        let url = url(&server, &user, "p");
        let started = Instant::now();
        let result = RedisMempool::open(node_config(&url, &prefix))
            .and_then(|m| m.receive(tx(1)).map(|()| m));
        let took = started.elapsed();
        println!("{what}: {:?} after {took:?}", result.as_ref().err());
        match &result {
            // The error says what is missing.
            Err(Error::Auth(m)) if *what == "no INFO" && !m.contains("+info") => {
                failures.push(format!("{what}: the error does not name +info: {m}"))
            }
            Err(Error::Auth(_)) => {}
            other => failures.push(format!("{what}: expected Error::Auth, got {other:?}")),
        }
        if took > Duration::from_secs(2) + SETTLE / 5 {
            failures.push(format!("{what}: took {took:?}"));
        }
        // Nothing of the refused receive stayed behind: neither the tx nor its event.
        let mut admin = server.connection();
        let stored: bool = redis::cmd("HEXISTS")
            .arg(format!("{prefix}:txs"))
            .arg(hash(1).to_hex())
            .query(&mut admin)
            .unwrap();
        let events: redis::Value = redis::cmd("XRANGE")
            .arg(format!("{prefix}:events"))
            .arg("-")
            .arg("+")
            .query(&mut admin)
            .unwrap();
        let announced = format!("{events:?}").contains(&hash(1).to_hex());
        if stored || announced {
            failures.push(format!(
                "{what}: the refused receive left a partial write (tx stored: {stored}, \
                 its event in the stream: {announced})"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Without the channel permission a node cannot lead: the scripts that take the lock publish on
/// the wake channel after setting it. Redis keeps a script's writes made before the refused
/// command, so such a node would hold the lock (and its fence) without ever leading, and keep
/// every correctly configured node from leading too. It must be refused at `open`, before it
/// competes; no later call would tell (every mempool call works).
#[test]
fn a_user_without_the_wake_channel_is_refused_at_open_and_blocks_nobody() {
    capture_logs();
    let server = RedisServer::start();
    let prefix = "acl-nochannel";
    let ttl = Duration::from_secs(1);
    let mut rule = node_rule("deaf", "deaf-pass", prefix);
    rule.push("resetchannels".into());
    set_user(&server, &rule);
    set_user(&server, &node_rule("hearing", "hearing-pass", prefix));
    let deaf = RedisMempool::open(
        node_config(&url(&server, "deaf", "deaf-pass"), prefix).watcher_lock_ttl(ttl),
    );
    let good = RedisMempool::open(
        node_config(&url(&server, "hearing", "hearing-pass"), prefix).watcher_lock_ttl(ttl),
    )
    .expect("open with the full rule");
    let started = Instant::now();
    let led = support::wait_until(ttl + Duration::from_secs(1), || good.is_watcher());
    let epoch: Option<u64> = redis::cmd("GET")
        .arg(format!("{prefix}:watcher:epoch"))
        .query(&mut server.connection())
        .unwrap();
    println!(
        "the correctly configured node led: {led} (after {:?}); epoch {epoch:?}; open as the \
         user without the channel: {:?}",
        started.elapsed(),
        deaf.as_ref().err()
    );
    assert!(
        led,
        "a node whose user may not publish on {prefix}:watcher:wake kept the correctly \
         configured node from leading (epoch now {epoch:?}, one per failed acquisition)"
    );
    match deaf {
        Err(e) => assert!(matches!(e, Error::Auth(_)), "{e:?}"),
        Ok(_) => panic!("open succeeded as a user who may not publish on the wake channel"),
    }
}

#[test]
fn the_users_password_never_shows_in_debug_errors_or_logs() {
    capture_logs();
    const SECRET: &str = "acl-secret-9d41c7";
    const WRONG: &str = "acl-wrong-2f6b08";
    let server = RedisServer::start();
    let prefix = "acl-secret";
    set_user(&server, &node_rule("dolos-secret", SECRET, prefix));
    let mut shown: Vec<String> = Vec::new();

    let good = node_config(&url(&server, "dolos-secret", SECRET), prefix);
    shown.push(format!("{good:?}"));
    shown.push(good.redacted_url());
    let m = RedisMempool::open(good).expect("open");
    m.receive(tx(1)).expect("receive");
    shown.push(format!("{m:?}"));
    shown.push(format!("{:?}", m.stats().expect("stats")));

    // A wrong password, an unknown user, a disabled user, a refused key: all errors.
    set_user(
        &server,
        &["disabled".into(), "off".into(), format!(">{SECRET}")],
    );
    for url in [
        url(&server, "dolos-secret", WRONG),
        url(&server, "nobody", SECRET),
        url(&server, "disabled", SECRET),
    ] {
        let err = RedisMempool::open(node_config(&url, prefix)).unwrap_err();
        assert!(matches!(err, Error::Auth(_)), "{err:?}");
        shown.push(format!("{err} / {err:?}"));
    }
    let stray = RedisMempool::open(node_config(
        &url(&server, "dolos-secret", SECRET),
        "elsewhere",
    ));
    match stray {
        Err(e) => shown.push(format!("{e} / {e:?}")),
        Ok(stray) => {
            let e = stray.receive(tx(2)).unwrap_err();
            shown.push(format!("{e} / {e:?}"));
            shown.push(format!("{stray:?}"));
        }
    }
    drop(m);

    assert_never_shown(&shown, &[SECRET, WRONG]);
}

/// Whether Redis refused `e` for lack of permission: `NOPERM` for a command, key or channel
/// the user may not use, or the error a script gets when one of its commands is refused
/// (worded one way up to Redis 7.0, another from 7.2 on).
fn is_acl_refusal(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    e.code() == Some("NOPERM")
        || text.contains("The user executing the script can't")
        || text.contains("ACL failure in script")
}
