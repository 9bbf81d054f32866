//! A mempool for [Dolos](https://github.com/txpipe/dolos) nodes, shared through Redis, with
//! **watcher election**: every node can receive and track transactions, and exactly one node at
//! a time — the *watcher* — applies chain confirmations. If the watcher dies or loses Redis,
//! another node takes over once its lock expires (at once after a graceful shutdown).
//!
//! The crate is synchronous and thread-based: a dedicated thread renews the watcher lease and
//! publishes leadership through an atomic flag, and pooled blocking connections serve the
//! mempool calls. Async hosts wrap calls in `spawn_blocking`.
//!
//! Every mutating call is one Lua script on the server — atomic, and one round trip. `confirm`
//! is fenced on the server (it checks the lock holder and epoch), applied at most once per block,
//! and costs time in proportion to the block's transactions, not the mempool's size.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use dolos_redis::{ChainPoint, Config, EraCbor, MempoolTx, RedisMempool, TxHash};
//!
//! # fn main() -> Result<(), dolos_redis::Error> {
//! let config = Config::new("redis://127.0.0.1:6379")
//!     .key_prefix("dolos:mempool")
//!     .watcher_lock_ttl(Duration::from_secs(10));
//! let mempool = RedisMempool::open(config)?;
//!
//! let hash = TxHash::from([1; 32]);
//! mempool.receive(MempoolTx::new(hash, EraCbor(6, vec![0x84, 0xa0])))?;
//! for tx in mempool.peek_pending(50)? {
//!     // ... send tx.payload to peers ...
//!     mempool.mark_inflight(&[tx.hash])?;
//! }
//!
//! // Per block; only the watcher's call changes anything.
//! let outcome = mempool.confirm(&ChainPoint::Slot(1_000), &[hash], &[], 6, 2)?;
//! println!("{outcome:?}, status {:?}", mempool.check_status(&hash)?);
//!
//! mempool.shutdown()?; // releases the lock so another node takes over at once
//! # Ok(())
//! # }
//! ```
//!
//! See the README for the key layout, the log lines and how to operate it.

#![deny(missing_docs)]

mod codec;
mod config;
mod connect;
mod error;
mod events;
mod keys;
mod lease;
mod memory;
mod mempool;
mod metrics;
mod scripts;
mod types;

pub use config::Config;
pub use error::{Error, ErrorMessage};
pub use events::MempoolEvent;
pub use mempool::RedisMempool;
pub use types::{
    BlockHash, ChainPoint, ConfirmOutcome, EraCbor, MempoolPage, MempoolStats, MempoolTx,
    MempoolTxStage, TxHash, TxStatus, WatcherInfo,
};

/// The README's Rust examples, compiled and run by the doc tests like the examples here (its
/// TOML tables are checked by a unit test in `config/toml.rs`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The `log` target of lease and confirm messages, as in the reference deployment.
pub const LOG_TARGET: &str = "dolos_redis::mempool";
