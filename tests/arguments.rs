//! What a caller can get wrong: an invalid configuration is refused at `open`, naming the field
//! and without connecting; odd arguments (oversized or empty payloads, full queues, duplicates
//! in a batch, empty batches, extreme limits, cursors, thresholds and slots, unknown hashes)
//! give a typed error or a harmless result; a string that is not a hash does not parse. Never a
//! panic, never a quiet `false`/empty/`Unknown` where an error is due.

mod common;
use dolos_redis_testkit as support;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{config, hash, lone_watcher, stage_of, tx, LONG_TTL};
use dolos_redis::{
    BlockHash, ChainPoint, Config, ConfirmOutcome, EraCbor, Error, MempoolTx, MempoolTxStage,
    RedisMempool, TxHash,
};
use support::RedisServer;

#[test]
fn invalid_config_is_rejected_at_open_naming_the_field_without_connecting() {
    support::init_logging();
    // A listener that never accepts: a connection attempt would sit in its backlog, where a
    // non-blocking accept finds it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let base = || Config::new(url.clone());

    let cases: Vec<(&str, Config, &str)> = vec![
        (
            "ttl 0",
            base().watcher_lock_ttl(Duration::ZERO),
            "watcher_lock_ttl",
        ),
        (
            "ttl 10 ms",
            base().watcher_lock_ttl(Duration::from_millis(10)),
            "watcher_lock_ttl",
        ),
        ("pool size 0", base().pool_size(0), "pool_size"),
        ("max_finalized 0", base().max_finalized(0), "max_finalized"),
        ("max_pending 0", base().max_pending(0), "max_pending"),
        ("max_tx_size 0", base().max_tx_size(0), "max_tx_size"),
        ("empty url", Config::new(""), "url"),
        ("blank url", Config::new("   "), "url"),
        ("not a url", Config::new("not a url"), "url"),
        ("colons only", Config::new("redis://:::"), "url"),
        ("bad port", Config::new("redis://127.0.0.1:notaport"), "url"),
        ("http scheme", Config::new("http://localhost"), "url"),
        ("empty prefix", base().key_prefix(""), "key_prefix"),
        (
            "prefix with a space",
            base().key_prefix("dolos mempool"),
            "key_prefix",
        ),
        (
            "prefix with a newline",
            base().key_prefix("dolos\nmempool"),
            "key_prefix",
        ),
        (
            "command_timeout 0",
            base().command_timeout(Duration::ZERO),
            "command_timeout",
        ),
        (
            "connect_timeout 0",
            base().connect_timeout(Duration::ZERO),
            "connect_timeout",
        ),
    ];

    let mut failures = Vec::new();
    for (what, config, field) in cases {
        let started = Instant::now();
        let result = RedisMempool::open(config);
        let took = started.elapsed();
        match result {
            Err(Error::InvalidConfig(msg)) => {
                if !msg.contains(field) {
                    failures.push(format!("{what}: message {msg:?} does not name {field}"));
                }
                // Validation is pure computation; anything slow went to the network.
                if took > Duration::from_millis(500) {
                    failures.push(format!("{what}: took {took:?}"));
                }
            }
            Err(other) => failures.push(format!("{what}: expected InvalidConfig, got {other:?}")),
            Ok(m) => failures.push(format!("{what}: opened {m:?}")),
        }
    }
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => failures.push(format!("an invalid config connected (from {peer})")),
        Err(e) => panic!("accept: {e}"),
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Control: the same base config is valid, so the failures above come from the one field.
    assert!(base().validate().is_ok());
}

#[test]
fn odd_arguments_give_typed_errors_or_harmless_results() {
    support::init_logging();
    let server = RedisServer::start();
    let m = lone_watcher(
        config(&server, "odd")
            .watcher_lock_ttl(LONG_TTL)
            .max_tx_size(100)
            .max_pending(3),
    );

    // Oversized payload: typed error, nothing stored.
    let big = MempoolTx::new(hash(0), EraCbor(6, vec![0; 101]));
    assert_eq!(
        m.receive(big),
        Err(Error::TxTooLarge {
            size: 101,
            max: 100
        })
    );
    assert_eq!(stage_of(&m, 0), MempoolTxStage::Unknown);
    assert!(!m.has_pending().unwrap());
    m.receive(MempoolTx::new(hash(0), EraCbor(6, vec![0xff; 100])))
        .unwrap();
    // An empty payload is a payload too.
    m.receive(MempoolTx::new(hash(1), EraCbor(0, Vec::new())))
        .unwrap();
    assert_eq!(m.find_inflight(&hash(1)).unwrap(), None);
    assert_eq!(m.receive(tx(0)), Err(Error::DuplicateTx));

    // Full queue.
    m.receive(tx(2)).unwrap();
    assert_eq!(m.receive(tx(3)), Err(Error::MempoolFull { max: 3 }));
    assert_eq!(stage_of(&m, 3), MempoolTxStage::Unknown);
    assert_eq!(m.peek_pending(usize::MAX).unwrap().len(), 3);

    // Duplicates inside one batch count once.
    m.mark_inflight(&[hash(0), hash(0), hash(1), hash(0)])
        .unwrap();
    let inflight: Vec<TxHash> = m
        .peek_inflight(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|t| t.hash)
        .collect();
    assert_eq!(inflight, vec![hash(0), hash(1)]);
    m.mark_acknowledged(&[hash(0), hash(0)]).unwrap();
    assert_eq!(stage_of(&m, 0), MempoolTxStage::Acknowledged);
    assert!(m
        .confirm(
            &ChainPoint::Slot(1),
            &[hash(0), hash(0), hash(0)],
            &[],
            6,
            5
        )
        .unwrap()
        .is_applied());
    assert_eq!(m.check_status(&hash(0)).unwrap().confirmations, 1);
    assert_eq!(m.check_status(&hash(1)).unwrap().non_confirmations, 1);

    // Empty batches.
    m.mark_inflight(&[]).unwrap();
    m.mark_acknowledged(&[]).unwrap();
    assert!(m
        .confirm(&ChainPoint::Slot(2), &[], &[], 6, 5)
        .unwrap()
        .is_applied());
    assert_eq!(m.check_status(&hash(0)).unwrap().confirmations, 2);
    assert_eq!(m.check_status(&hash(1)).unwrap().non_confirmations, 2);

    // Duplicates in `unseen` roll back once.
    assert!(m
        .confirm(&ChainPoint::Slot(2), &[], &[hash(1), hash(1)], 6, 5)
        .unwrap()
        .is_applied());
    let pending: Vec<TxHash> = m
        .peek_pending(usize::MAX)
        .unwrap()
        .into_iter()
        .map(|t| t.hash)
        .collect();
    assert_eq!(pending, vec![hash(2), hash(1)]);

    // Limits 0 and usize::MAX, cursors 0 and u64::MAX.
    assert!(m.peek_pending(0).unwrap().is_empty());
    assert!(m.peek_inflight(0).unwrap().is_empty());
    assert_eq!(m.peek_inflight(usize::MAX).unwrap().len(), 1);
    let page = m.dump_finalized(0, 0).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next_cursor, None);
    let page = m.dump_finalized(u64::MAX, usize::MAX).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next_cursor, None);

    // Extreme thresholds: nothing finalizes or drops, nothing overflows.
    assert!(m
        .confirm(&ChainPoint::Slot(4), &[hash(0)], &[], u32::MAX, u32::MAX)
        .unwrap()
        .is_applied());
    assert_eq!(stage_of(&m, 0), MempoolTxStage::Confirmed);
    // Finalize at F = 1 so the log has one entry; then page through it with odd limits.
    assert!(m
        .confirm(&ChainPoint::Slot(5), &[], &[], 1, u32::MAX)
        .unwrap()
        .is_applied());
    assert_eq!(stage_of(&m, 0), MempoolTxStage::Finalized);
    let page = m.dump_finalized(0, 0).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next_cursor, Some(1));
    let page = m.dump_finalized(0, usize::MAX).unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.next_cursor, None);
    // A slot at the top of the range.
    assert!(m
        .confirm(&ChainPoint::Slot(u64::MAX), &[], &[], 6, 5)
        .unwrap()
        .is_applied());
    assert_eq!(m.watcher_info().unwrap().applied_slot, Some(u64::MAX));
    assert_eq!(
        m.confirm(&ChainPoint::Slot(u64::MAX), &[], &[], 6, 5)
            .unwrap(),
        ConfirmOutcome::AlreadyApplied
    );

    // Unknown hashes: ignored, never invented.
    let unknown = hash(99);
    assert_eq!(
        m.check_status(&unknown).unwrap().stage,
        MempoolTxStage::Unknown
    );
    assert_eq!(m.find_inflight(&unknown).unwrap(), None);
    m.mark_inflight(&[unknown]).unwrap();
    m.mark_acknowledged(&[unknown]).unwrap();
    assert!(m
        .confirm(&ChainPoint::Slot(6), &[unknown], &[], 6, 5)
        .unwrap()
        .is_applied());
    assert!(m
        .confirm(&ChainPoint::Slot(6), &[], &[hash(98)], 6, 5)
        .unwrap()
        .is_applied());
    assert_eq!(
        m.check_status(&unknown).unwrap().stage,
        MempoolTxStage::Unknown
    );
    assert_eq!(stage_of(&m, 98), MempoolTxStage::Unknown);
    assert_eq!(m.find_inflight(&unknown).unwrap(), None);
}

#[test]
fn hash_parsing_rejects_bad_input_without_panicking() {
    let good = "ab".repeat(32);
    assert_eq!(good.parse::<TxHash>().unwrap(), TxHash::from([0xab; 32]));
    assert_eq!(
        good.to_uppercase().parse::<TxHash>().unwrap(),
        TxHash::from([0xab; 32])
    );
    let bad = [
        String::new(),
        "ab".into(),
        "a".repeat(63),
        "a".repeat(65),
        "a".repeat(128),
        "zz".repeat(32),
        format!("0x{}", "a".repeat(62)),
        format!(" {}", "a".repeat(63)),
        format!("{}\n", "a".repeat(63)),
        format!("+{}", "a".repeat(63)),
        format!("-{}", "a".repeat(63)),
        // Multi-byte characters: 64 bytes but fewer characters, or 64 characters but more bytes,
        // and a character straddling a byte pair.
        "é".repeat(32),
        format!("é{}", "a".repeat(62)),
        format!("a{}", "é".repeat(31)) + "a",
        "é".repeat(64),
        format!("{}€", "a".repeat(61)),
        "🦀".repeat(16),
        "\0".repeat(64),
    ];
    for s in &bad {
        match s.parse::<TxHash>() {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(h) => panic!("{s:?} parsed as {h}"),
        }
        assert!(
            s.parse::<BlockHash>().is_err(),
            "{s:?} parsed as a block hash"
        );
    }
}
