//! Data in Redis that no script wrote: a key of the wrong type, or a value that does not decode.
//! Every call that meets it fails with a typed error naming the key (`WrongType`, `Corrupt`),
//! never with a bare server error, a panic or a quiet `false`/empty/`Unknown`, and never acts on
//! it; calls that do not touch it keep working.

mod common;
use dolos_redis_testkit as support;

use common::{cmd, config, hash, lone_watcher, tx, LONG_TTL};
use dolos_redis::{ChainPoint, ConfirmOutcome, Error, MempoolTxStage, RedisMempool, TxHash};
use support::RedisServer;

/// A watcher node of `prefix`, which keeps its lock for the whole test.
fn open_watcher(server: &RedisServer, prefix: &str) -> RedisMempool {
    lone_watcher(config(server, prefix).watcher_lock_ttl(LONG_TTL))
}

fn raw_set(server: &RedisServer, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query::<()>(&mut server.connection())
        .unwrap();
}

/// A field of `<prefix>:meta` as stored.
fn meta_field(server: &RedisServer, prefix: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(format!("{prefix}:meta"))
        .arg(field)
        .query(&mut server.connection())
        .unwrap()
}

fn raw_del(server: &RedisServer, key: &str) {
    redis::cmd("DEL")
        .arg(key)
        .query::<()>(&mut server.connection())
        .unwrap();
}

#[track_caller]
fn assert_wrong_type<T: std::fmt::Debug>(result: Result<T, Error>, key: &str) {
    match result {
        Err(Error::WrongType { key: k }) => assert_eq!(k, key),
        other => panic!("expected WrongType {{ key: {key:?} }}, got {other:?}"),
    }
}

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(result: Result<T, Error>, key: &str) {
    match result {
        Err(Error::Corrupt { key: k, detail }) => {
            assert_eq!(k, key, "detail: {detail}");
        }
        other => panic!("expected Corrupt {{ key: {key:?}, .. }}, got {other:?}"),
    }
}

#[test]
fn a_key_of_the_wrong_type_is_named_and_other_calls_keep_working() {
    support::init_logging();
    let server = RedisServer::start();

    // `pending` as a string, while the queue is empty so nothing is lost.
    let prefix = "wrong-pending";
    let m = open_watcher(&server, prefix);
    let (b, c) = (hash(0), hash(1));
    m.receive(tx(0)).unwrap();
    m.mark_inflight(&[b]).unwrap();
    let key = format!("{prefix}:pending");
    raw_set(&server, &key, "x");
    let events = || meta_field(&server, prefix, "ev");
    let events_before = events();

    assert_wrong_type(m.has_pending(), &key);
    assert_wrong_type(m.peek_pending(10), &key);
    assert_wrong_type(m.receive(tx(1)), &key);
    assert_wrong_type(m.mark_inflight(&[b]), &key);
    assert_wrong_type(m.confirm(&ChainPoint::Slot(1), &[b], &[], 6, 2), &key);
    // Not even an event number was taken (a gap would read as lost events).
    assert_eq!(events(), events_before);
    // check_status looks in the queue first.
    assert_wrong_type(m.check_status(&c), &key);
    // Calls that do not use the queue are unaffected, and the failed ones wrote nothing.
    let found = m.find_inflight(&b).unwrap().unwrap();
    assert_eq!(found.hash, b);
    assert_eq!(found.stage, MempoolTxStage::Propagated);
    assert_eq!(found.non_confirmations, 0);
    assert_eq!(m.peek_inflight(10).unwrap().len(), 1);
    m.mark_acknowledged(&[b]).unwrap();
    assert!(m.dump_finalized(0, 10).unwrap().items.is_empty());
    assert_eq!(m.watcher_info().unwrap().applied_slot, None);

    raw_del(&server, &key);
    assert!(!m.has_pending().unwrap());
    assert_eq!(m.check_status(&c).unwrap().stage, MempoolTxStage::Unknown);
    m.receive(tx(1)).unwrap();
    assert_eq!(m.peek_pending(10).unwrap()[0].hash, c);
    assert_eq!(m.peek_pending(100).unwrap()[0].hash, c);
    assert_eq!(
        m.confirm(&ChainPoint::Slot(1), &[b], &[], 6, 2).unwrap(),
        ConfirmOutcome::Applied
    );
    assert_eq!(m.check_status(&b).unwrap().confirmations, 1);

    // `txs` as a string, before anything was stored under this prefix.
    let prefix = "wrong-txs";
    let key = format!("{prefix}:txs");
    raw_set(&server, &key, "x");
    let m = open_watcher(&server, prefix);
    let d = hash(2);
    assert_wrong_type(m.receive(tx(2)), &key);
    // Empty queues: these calls never reach `txs`, so they may answer truly (nothing there).
    assert!(matches!(m.peek_pending(10).as_deref(), Ok([])));
    assert!(matches!(m.peek_inflight(10).as_deref(), Ok([])));
    // `mark_inflight` types every key before its first write, the removal from the queue.
    assert_wrong_type(m.mark_inflight(&[d]), &key);
    // Calls that never reach `txs` with nothing to move or find answer truly; a block with
    // nothing to retire does not need it either.
    m.mark_acknowledged(&[d]).unwrap();
    assert_eq!(m.find_inflight(&d).unwrap(), None);
    assert_eq!(m.check_status(&d).unwrap().stage, MempoolTxStage::Unknown);
    assert_wrong_type(m.confirm(&ChainPoint::Slot(1), &[d], &[], 6, 2), &key);
    assert!(!m.has_pending().unwrap());
    assert!(m.dump_finalized(0, 10).unwrap().items.is_empty());
    assert_eq!(m.watcher_info().unwrap().applied_slot, None);
    raw_del(&server, &key);
    m.receive(tx(2)).unwrap();
    assert_eq!(m.check_status(&d).unwrap().stage, MempoolTxStage::Pending);

    // The finalized log as a string.
    let prefix = "wrong-log";
    let key = format!("{prefix}:log");
    let m = open_watcher(&server, prefix);
    raw_set(&server, &key, "x");
    assert_wrong_type(m.dump_finalized(0, 10), &key);
    m.receive(tx(2)).unwrap();
    assert!(m.has_pending().unwrap());
    raw_del(&server, &key);
    assert!(m.dump_finalized(0, 10).unwrap().items.is_empty());
}

/// Every key of the layout, with whether Redis stores it as a string.
const LAYOUT: &[(&str, bool)] = &[
    ("watcher:lock", true),
    ("watcher:epoch", true),
    ("watcher:fence", true),
    ("meta", false),
    ("chain", false),
    ("txs", false),
    ("pending", false),
    ("inflight", false),
    ("marks", false),
    ("confirmed", false),
    ("points", false),
    ("log", false),
    ("done", false),
    ("events", false),
];

/// Whichever key holds the wrong type, every call either works or names that key; none fails
/// with a bare server error (a script that touched the key without checking its type first).
#[test]
fn any_key_of_the_wrong_type_is_named_by_every_call_that_fails() {
    support::init_logging();
    let server = RedisServer::start();
    let mut failures = Vec::new();
    for (n, &(suffix, is_string)) in LAYOUT.iter().enumerate() {
        let prefix = format!("sweep{n}");
        let key = format!("{prefix}:{suffix}");
        let m = open_watcher(&server, &prefix);
        let (p, i1, i2, f) = (hash(0), hash(1), hash(2), hash(3));
        for i in 0..4 {
            m.receive(tx(i)).unwrap();
        }
        m.mark_inflight(&[i1, i2, f]).unwrap();
        m.mark_acknowledged(&[i2]).unwrap();
        assert!(m
            .confirm(&ChainPoint::Slot(1), &[f], &[], 1, 5)
            .unwrap()
            .is_applied());
        assert!(m
            .confirm(&ChainPoint::Slot(2), &[i1], &[], 6, 5)
            .unwrap()
            .is_applied());

        let mut con = server.connection();
        redis::cmd("DEL").arg(&key).query::<()>(&mut con).unwrap();
        if is_string {
            redis::cmd("HSET")
                .arg(&key)
                .arg("f")
                .arg("v")
                .query::<()>(&mut con)
                .unwrap();
        } else {
            redis::cmd("SET")
                .arg(&key)
                .arg("x")
                .query::<()>(&mut con)
                .unwrap();
        }

        let calls: Vec<(&str, Result<String, Error>)> = vec![
            ("receive", m.receive(tx(4)).map(|v| format!("{v:?}"))),
            ("has_pending", m.has_pending().map(|v| format!("{v:?}"))),
            ("peek_pending", m.peek_pending(10).map(|v| format!("{v:?}"))),
            // Past 32 txs a read is plain commands, not a script: the same rule holds.
            (
                "peek_pending (plain)",
                m.peek_pending(100).map(|v| format!("{v:?}")),
            ),
            (
                "find_inflight",
                m.find_inflight(&i1).map(|v| format!("{v:?}")),
            ),
            (
                "peek_inflight",
                m.peek_inflight(10).map(|v| format!("{v:?}")),
            ),
            (
                "peek_inflight (plain)",
                m.peek_inflight(100).map(|v| format!("{v:?}")),
            ),
            (
                "check_status p",
                m.check_status(&p).map(|v| format!("{v:?}")),
            ),
            (
                "check_status i1",
                m.check_status(&i1).map(|v| format!("{v:?}")),
            ),
            (
                "check_status f",
                m.check_status(&f).map(|v| format!("{v:?}")),
            ),
            (
                "check_status ?",
                m.check_status(&hash(9)).map(|v| format!("{v:?}")),
            ),
            (
                "dump_finalized",
                m.dump_finalized(0, 10).map(|v| format!("{v:?}")),
            ),
            ("watcher_info", m.watcher_info().map(|v| format!("{v:?}"))),
            (
                "mark_inflight",
                m.mark_inflight(&[p]).map(|v| format!("{v:?}")),
            ),
            (
                "mark_acknowledged",
                m.mark_acknowledged(&[i1, i2]).map(|v| format!("{v:?}")),
            ),
            (
                "confirm",
                m.confirm(&ChainPoint::Slot(3), &[i2], &[], 6, 5)
                    .map(|v| format!("{v:?}")),
            ),
            (
                "confirm (rollback)",
                m.confirm(&ChainPoint::Slot(3), &[], &[i1], 6, 5)
                    .map(|v| format!("{v:?}")),
            ),
            (
                "confirm (finalize)",
                m.confirm(&ChainPoint::Slot(4), &[i2], &[], 1, 1)
                    .map(|v| format!("{v:?}")),
            ),
            (
                "reset_watcher_lock",
                m.reset_watcher_lock(Some("nobody"))
                    .map(|v| format!("{v:?}")),
            ),
        ];
        let mut named = 0;
        for (call, result) in calls {
            match result {
                Ok(_) => {}
                Err(Error::WrongType { key: k }) if k == key => named += 1,
                Err(e) => failures.push(format!("{key} broken: {call} -> {e:?}")),
            }
        }
        println!("{key}: {named} calls named it");
        // Every key is used by some call; none naming it means the layout changed under us.
        if named == 0 {
            failures.push(format!("{key} broken: no call noticed"));
        }
        // The lease thread may be failing on a broken lock key; do not wait for its release.
        m.abandon();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_corrupt_record_is_named_and_isolated() {
    support::init_logging();
    let server = RedisServer::start();
    let prefix = "corrupt";
    let m = open_watcher(&server, prefix);
    let (a, b, c) = (hash(0), hash(1), hash(2));
    for i in 0..3 {
        m.receive(tx(i)).unwrap();
    }
    m.mark_inflight(&[a, b]).unwrap();
    // D = 5 keeps `a` from being picked for dropping in the blocks below.
    assert!(m
        .confirm(&ChainPoint::Slot(10), &[b], &[], 6, 5)
        .unwrap()
        .is_applied());

    let txs_key = format!("{prefix}:txs");
    redis::cmd("HSET")
        .arg(&txs_key)
        .arg(a.as_bytes())
        .arg("garbage")
        .query::<()>(&mut server.connection())
        .unwrap();
    let key = format!("{txs_key} {}", a.to_hex());
    let height = || meta_field(&server, prefix, "H");
    let h_before = height();
    let b_before = m.check_status(&b).unwrap();
    assert_eq!(b_before.stage, MempoolTxStage::Confirmed);
    assert_eq!(b_before.confirmations, 1);

    // The calls that read the record name it; the stage lives elsewhere, so check_status does
    // not need it.
    assert_corrupt(m.find_inflight(&a), &key);
    assert_corrupt(m.peek_inflight(10), &key);
    assert_corrupt(m.peek_inflight(100), &key);
    assert_eq!(
        m.check_status(&a).unwrap().stage,
        MempoolTxStage::Propagated
    );
    // Other txs keep working.
    assert_eq!(m.find_inflight(&b).unwrap().unwrap().confirmations, 1);
    assert_eq!(m.check_status(&c).unwrap().stage, MempoolTxStage::Pending);
    assert_eq!(m.peek_pending(10).unwrap()[0].hash, c);
    assert_eq!(m.peek_pending(100).unwrap()[0].hash, c);
    m.mark_inflight(&[c]).unwrap();
    m.mark_acknowledged(&[c]).unwrap();
    assert_eq!(
        m.check_status(&c).unwrap().stage,
        MempoolTxStage::Acknowledged
    );
    assert_eq!(height(), h_before);
    assert_eq!(m.check_status(&b).unwrap(), b_before);

    // A block that drops `a` (D = 1) does not read its record (the record stays where it is,
    // see src/keys.rs): `a` is Dropped, and the log's readers name the record.
    assert!(m
        .confirm(&ChainPoint::Slot(11), &[b, c], &[], 6, 1)
        .unwrap()
        .is_applied());
    assert_eq!(m.check_status(&b).unwrap().confirmations, 2);
    assert_eq!(m.check_status(&a).unwrap().stage, MempoolTxStage::Dropped);
    assert_corrupt(m.dump_finalized(0, 10), &key);
    assert_corrupt(m.dump_finalized(0, 100), &key);
}

/// Values that no script writes: each is reported as `Corrupt` naming where it sits, by the
/// calls that read it, and never taken for a valid state.
#[test]
fn corrupt_values_are_reported_not_acted_on() {
    support::init_logging();
    let server = RedisServer::start();
    let setup = |prefix: &str| {
        let m = open_watcher(&server, prefix);
        let (p, i1, f) = (hash(0), hash(1), hash(2));
        for i in 0..3 {
            m.receive(tx(i)).unwrap();
        }
        m.mark_inflight(&[i1, f]).unwrap();
        assert!(m
            .confirm(&ChainPoint::Slot(1), &[f], &[], 1, 5)
            .unwrap()
            .is_applied());
        (m, p, i1, f)
    };
    let run = |args: &[&str]| cmd(args).query::<()>(&mut server.connection()).unwrap();
    // `args`, then a hash (raw bytes), then `value` if not empty.
    let raw = |args: &[&str], hash: &[u8], value: &[u8]| {
        let mut c = cmd(args);
        c.arg(hash);
        if !value.is_empty() {
            c.arg(value);
        }
        c.query::<()>(&mut server.connection()).unwrap()
    };
    let mut failures = Vec::new();
    let mut expect_corrupt = |what: &str, result: Result<String, Error>, key: &str| match result {
        Err(Error::Corrupt { key: k, .. }) if k == key => {}
        other => failures.push(format!(
            "{what}: expected Corrupt at {key:?}, got {other:?}"
        )),
    };

    // The applied chain's height.
    let (m, _, i1, _) = setup("corrupt-height");
    let key = "corrupt-height:meta H";
    run(&["HSET", "corrupt-height:meta", "H", "many"]);
    expect_corrupt(
        "height: check_status",
        m.check_status(&i1).map(|v| format!("{v:?}")),
        key,
    );
    expect_corrupt(
        "height: find_inflight",
        m.find_inflight(&i1).map(|v| format!("{v:?}")),
        key,
    );
    expect_corrupt(
        "height: confirm",
        m.confirm(&ChainPoint::Slot(2), &[i1], &[], 6, 5)
            .map(|v| format!("{v:?}")),
        key,
    );

    // The event counter.
    let (m, ..) = setup("corrupt-ev");
    run(&["HSET", "corrupt-ev:meta", "ev", "x"]);
    expect_corrupt(
        "ev: receive",
        m.receive(tx(9)).map(|v| format!("{v:?}")),
        "corrupt-ev:meta",
    );

    // An entry of the applied chain that no script writes: read back as Corrupt, never as a
    // point.
    let (m, ..) = setup("corrupt-chain");
    let key = "corrupt-chain:chain";
    run(&["ZADD", key, "5", "garbage"]);
    expect_corrupt(
        "chain: watcher_info",
        m.watcher_info().map(|v| format!("{v:?}")),
        key,
    );
    expect_corrupt("chain: stats", m.stats().map(|v| format!("{v:?}")), key);
    expect_corrupt(
        "chain: applied_points",
        m.applied_points(10).map(|v| format!("{v:?}")),
        key,
    );

    // The epoch counter.
    let (m, ..) = setup("corrupt-epoch");
    let key = "corrupt-epoch:watcher:epoch";
    run(&["SET", key, "first"]);
    expect_corrupt(
        "epoch: watcher_info",
        m.watcher_info().map(|v| format!("{v:?}")),
        key,
    );

    // A pending tx whose record lost the separator before its body.
    let (m, p, ..) = setup("corrupt-payload");
    let key = format!("corrupt-payload:txs {}", p.to_hex());
    raw(&["HSET", "corrupt-payload:txs"], p.as_bytes(), b"6");
    expect_corrupt(
        "payload: peek_pending",
        m.peek_pending(10).map(|v| format!("{v:?}")),
        &key,
    );
    expect_corrupt(
        "payload: peek_pending (plain)",
        m.peek_pending(100).map(|v| format!("{v:?}")),
        &key,
    );

    // A pending tx and an inflight one whose records are gone: corrupt, not a departure (a
    // plain read asks again whether they are still there before it leaves a tx out).
    let (m, p, i1, _) = setup("no-record");
    raw(&["HDEL", "no-record:txs"], p.as_bytes(), b"");
    raw(&["HDEL", "no-record:txs"], i1.as_bytes(), b"");
    for (what, result, tx) in [
        ("no record: peek_pending", m.peek_pending(10), p),
        ("no record: peek_pending (plain)", m.peek_pending(100), p),
        ("no record: peek_inflight", m.peek_inflight(10), i1),
        ("no record: peek_inflight (plain)", m.peek_inflight(100), i1),
    ] {
        let key = format!("no-record:txs {}", tx.to_hex());
        expect_corrupt(what, result.map(|v| format!("{v:?}")), &key);
    }

    // An inflight tx also in the queue: `mark_inflight` takes the batch out of the queue
    // without reading scores first, and tells which txs were there from where the others are;
    // a tx in two places breaks that, and the call says so instead of moving the wrong ones.
    // The removal stands (the queue no longer holds `p` or `i1`), and nothing else is written.
    let (m, p, i1, _) = setup("pending-twice");
    raw(&["ZADD", "pending-twice:pending", "0"], i1.as_bytes(), b"");
    expect_corrupt(
        "pending and inflight: mark_inflight",
        m.mark_inflight(&[p, i1, hash(9)]).map(|v| format!("{v:?}")),
        "pending-twice:pending",
    );
    assert!(!m.has_pending().unwrap());
    assert_eq!(
        m.check_status(&i1).unwrap().stage,
        MempoolTxStage::Propagated
    );
    assert_eq!(m.find_inflight(&p).unwrap(), None);
    assert_eq!(m.find_inflight(&hash(9)).unwrap(), None);

    // The stage bits of an inflight tx that no script writes, and a tx whose marks are gone.
    let (m, _, i1, _) = setup("corrupt-score");
    raw(
        &["ZADD", "corrupt-score:inflight", "1.5"],
        i1.as_bytes(),
        b"",
    );
    expect_corrupt(
        "score: check_status",
        m.check_status(&i1).map(|v| format!("{v:?}")),
        "corrupt-score:inflight",
    );
    let (m, _, i1, _) = setup("corrupt-marks");
    run(&["DEL", "corrupt-marks:marks"]);
    expect_corrupt(
        "marks: check_status",
        m.check_status(&i1).map(|v| format!("{v:?}")),
        "corrupt-marks:marks",
    );
    expect_corrupt(
        "marks: peek_inflight",
        m.peek_inflight(10).map(|v| format!("{v:?}")),
        "corrupt-marks:marks",
    );
    expect_corrupt(
        "marks: peek_inflight (plain)",
        m.peek_inflight(100).map(|v| format!("{v:?}")),
        "corrupt-marks:marks",
    );

    // A mark that is not a height, the first at or below a tx's number: found, never skipped
    // for the next one.
    let (m, _, i1, _) = setup("bogus-mark");
    cmd(&[
        "EVAL",
        "local s = redis.call('ZSCORE', KEYS[2], ARGV[1]) \
         return redis.call('ZADD', KEYS[1], math.floor(s / 131072), 'garbage')",
        "2",
        "bogus-mark:marks",
        "bogus-mark:inflight",
    ])
    .arg(i1.as_bytes())
    .query::<()>(&mut server.connection())
    .unwrap();
    expect_corrupt(
        "marks: mark_acknowledged (not a height)",
        m.mark_acknowledged(&[i1]).map(|v| format!("{v:?}")),
        "bogus-mark:marks",
    );

    // The index of the finalized log pointing at another tx's line, at a line that is gone,
    // and at an entry that cannot be read (named by its id).
    let (m, _, _, f) = setup("corrupt-done");
    let key = format!("corrupt-done:done {}", f.to_hex());
    let line = |hash: TxHash, rest: &str| {
        let mut line = b"F".to_vec();
        line.extend_from_slice(hash.as_bytes());
        line.extend_from_slice(rest.as_bytes());
        line
    };
    raw(
        &["XADD", "corrupt-done:log", "500-500", "t"],
        &line(hash(9), "6|0|5"),
        b"",
    );
    raw(&["ZADD", "corrupt-done:done", "1001"], f.as_bytes(), b"");
    expect_corrupt(
        "done: check_status (another tx's line)",
        m.check_status(&f).map(|v| format!("{v:?}")),
        &key,
    );
    raw(&["ZADD", "corrupt-done:done", "1999"], f.as_bytes(), b"");
    expect_corrupt(
        "done: check_status (gone)",
        m.check_status(&f).map(|v| format!("{v:?}")),
        &key,
    );
    run(&["XADD", "corrupt-done:log", "600-600", "t", "garbage"]);
    raw(&["ZADD", "corrupt-done:done", "1201"], f.as_bytes(), b"");
    expect_corrupt(
        "done: check_status (unreadable entry)",
        m.check_status(&f).map(|v| format!("{v:?}")),
        "corrupt-done:log 600-600",
    );

    // Log entries that `dump_finalized` cannot read, each named by its id (the setup logged
    // line 1), and a line whose record is gone, named by the record's field.
    let good = String::from_utf8(line(TxHash::from([b'a'; 32]), "1|0|5")).unwrap();
    let two = format!("{good}\n{good}");
    for (i, (id, fields)) in [
        ("2-2", vec!["t", "garbage\n6|x"]),
        (
            "2-2",
            vec!["t", "Faaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1|0|5 and no point"],
        ),
        ("2-2", vec!["t", two.as_str()]),
        ("3-2", vec!["t", good.as_str()]),
        ("2-0", vec!["t", good.as_str()]),
        ("2-2", vec!["s", "an older layout's field"]),
    ]
    .into_iter()
    .enumerate()
    {
        let prefix = format!("corrupt-log-{i}");
        let (m, ..) = setup(&prefix);
        let log = format!("{prefix}:log");
        let mut args = vec!["XADD", log.as_str(), id];
        args.extend(fields.iter());
        run(&args);
        for limit in [10, 100] {
            expect_corrupt(
                &format!("log: dump_finalized({limit}) ({id} {fields:?})"),
                m.dump_finalized(0, limit).map(|v| format!("{v:?}")),
                &format!("{prefix}:log {id}"),
            );
        }
    }
    let (m, ..) = setup("no-log-record");
    run(&["XADD", "no-log-record:log", "2-2", "t", &good]);
    for limit in [10, 100] {
        expect_corrupt(
            &format!("log: dump_finalized({limit}) (no record)"),
            m.dump_finalized(0, limit).map(|v| format!("{v:?}")),
            &format!("no-log-record:txs {}", TxHash::from([b'a'; 32]).to_hex()),
        );
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
