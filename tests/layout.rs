//! `open` reads the layout version of the keys under its prefix: a new prefix gets this
//! version's, a prefix written by the first layout (before versions) or by another version is
//! refused with an error that says what to do, and nothing is changed.

mod common;
use dolos_redis_testkit as support;

use common::{config, lone_watcher, tx};
use dolos_redis::{Error, RedisMempool};
use support::RedisServer;

fn meta_layout(server: &RedisServer, prefix: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(format!("{prefix}:meta"))
        .arg("layout")
        .query(&mut server.connection())
        .unwrap()
}

#[track_caller]
fn assert_refused(result: Result<RedisMempool, Error>, prefix: &str, found: &str) {
    match result {
        Err(e @ Error::IncompatibleLayout { .. }) => {
            let text = e.to_string();
            println!("{text}");
            for needle in [prefix, found, "delete its keys", "key_prefix"] {
                assert!(text.contains(needle), "{needle:?} not in {text:?}");
            }
            assert!(!e.is_transient());
        }
        other => panic!("expected IncompatibleLayout, got {other:?}"),
    }
}

#[test]
fn a_new_prefix_gets_the_layout_and_another_layout_is_refused() {
    support::init_logging();
    let server = RedisServer::start();

    let m = lone_watcher(config(&server, "fresh"));
    m.receive(tx(1)).unwrap();
    assert_eq!(meta_layout(&server, "fresh").as_deref(), Some("4"));
    // Opening again finds its own layout.
    let again = RedisMempool::open(config(&server, "fresh").watcher_candidate(false)).unwrap();
    assert_eq!(again.peek_pending(10).unwrap().len(), 1);

    // The first layout had no version but keys of its own, such as the event counter.
    let mut con = server.connection();
    redis::cmd("SET")
        .arg("old:events:seq")
        .arg("41")
        .query::<()>(&mut con)
        .unwrap();
    assert_refused(
        RedisMempool::open(config(&server, "old")),
        "old",
        "layout 1",
    );
    assert_eq!(meta_layout(&server, "old"), None, "nothing written");

    // Another version's number.
    redis::cmd("HSET")
        .arg("next:meta")
        .arg("layout")
        .arg("5")
        .query::<()>(&mut con)
        .unwrap();
    assert_refused(
        RedisMempool::open(config(&server, "next")),
        "next",
        "layout 5",
    );
    assert_eq!(meta_layout(&server, "next").as_deref(), Some("5"));
}
