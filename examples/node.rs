//! One Dolos-like node, configured by a TOML file that carries the reference `[storage.mempool]`
//! table (see `examples/config/dolos1.toml` and `dolos2.toml`).
//!
//! ```text
//! redis-server --port 6379 &                                     # or any Redis at that URL
//! cargo run --example node -- examples/config/dolos1.toml
//! cargo run --example node -- examples/config/dolos2.toml   # second terminal
//! ```
//!
//! The first node to start becomes the watcher (`INFO dolos_redis::mempool: acquired watcher
//! lock`). Stop it with Ctrl-C: the lock is not released, so the other node takes over once it
//! expires (`watcher_lock_ttl = 10`, as in the reference). Add `RUST_LOG=dolos_redis=debug` to see
//! renewals and `not watcher, skipping confirm`.
//!
//! Each node submits and propagates transactions on its own. Its chain comes from stdin, one
//! line each, when stdin is not a terminal; the watcher applies it, and a node that becomes the
//! watcher first reconciles what Redis applied with its own chain (see `node/node_loop.rs`):
//!
//! ```text
//! block <slot> <block hash, 64 hex> [<tx hash, 64 hex> ...]
//! rollback <slot> <block hash, 64 hex> | rollback origin
//! submit off | submit on
//! quit
//! ```
//!
//! For example `(sleep 1; echo "block 1 $(printf '01%.0s' {1..32})"; sleep 600) | cargo run
//! --features serde --example node -- examples/config/dolos1.toml` feeds one empty block. Without
//! blocks, propagated transactions simply stay inflight. `cargo run --example demo` drives two of
//! these nodes with a simulated chain.

#[path = "node/node_loop.rs"]
mod node_loop;

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path] = args.as_slice() else {
        eprintln!("usage: node <config.toml>   (e.g. examples/config/dolos1.toml)");
        return ExitCode::from(2);
    };
    node_loop::init_logging(false);
    match node_loop::run(Path::new(path), false) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node: {e}");
            ExitCode::FAILURE
        }
    }
}
