//! What the chaos run injects, in which order, and what it measured after each fault.
//!
//! Every random choice of the run — which fault, on which node, for how long, how long to wait
//! before the next — comes from one SplitMix64 stream seeded by `--seed`, in a fixed order, so
//! a seed replays the same schedule. (Process timing is not deterministic, so the same seed does
//! not promise the same interleaving, only the same faults.)

use std::time::Duration;

use dolos_redis_testkit::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL of a node (the watcher most often), then a restart.
    Kill,
    /// SIGSTOP of the watcher for longer than the TTL, then SIGCONT.
    Stop,
    /// A node's proxy swallows every byte for longer than the TTL, then heals.
    Partition,
    /// Redis killed and started again; the data comes back from the AOF.
    RedisRestart,
    /// `DEL <prefix>:watcher:lock` by hand.
    DelLock,
    /// Redis filled up to `maxmemory` with filler keys for a few seconds, then freed.
    RedisFull,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Kill,
        Kind::Stop,
        Kind::Partition,
        Kind::RedisRestart,
        Kind::DelLock,
        Kind::RedisFull,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Kill => "kill -9",
            Kind::Stop => "SIGSTOP watcher",
            Kind::Partition => "partition",
            Kind::RedisRestart => "redis restart",
            Kind::DelLock => "DEL lock",
            Kind::RedisFull => "redis full",
        }
    }

    /// Relative frequency once every kind has been injected once.
    fn weight(self) -> u64 {
        match self {
            Kind::Kill => 30,
            Kind::Stop => 20,
            Kind::Partition => 20,
            Kind::RedisRestart => 15,
            Kind::DelLock => 15,
            Kind::RedisFull => 15,
        }
    }
}

/// The seeded choices.
pub struct Schedule {
    rng: Rng,
    /// The first faults: every kind once, in a seeded order, so even a short run covers them all.
    first: Vec<Kind>,
}

impl Schedule {
    pub fn new(seed: u64) -> Schedule {
        let mut s = Schedule {
            rng: Rng::new(seed),
            first: Kind::ALL.to_vec(),
        };
        // Fisher-Yates; popped from the end.
        for i in (1..s.first.len()).rev() {
            let j = s.below(i + 1);
            s.first.swap(i, j);
        }
        s
    }

    pub fn next_kind(&mut self) -> Kind {
        if let Some(kind) = self.first.pop() {
            return kind;
        }
        let total: u64 = Kind::ALL.iter().map(|k| k.weight()).sum();
        let mut pick = self.rng.next_u64() % total;
        for kind in Kind::ALL {
            if pick < kind.weight() {
                return kind;
            }
            pick -= kind.weight();
        }
        Kind::Kill
    }

    /// Whether every kind has been handed out at least once.
    pub fn covered(&self) -> bool {
        self.first.is_empty()
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.rng.below(n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.rng.next_u64() % 100 < percent
    }

    /// Uniform in `lo..=hi`, to the millisecond.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let spread = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.rng.next_u64() % (spread + 1))
    }
}

/// A takeover (or a return of the watcher) measured after a fault.
#[derive(Clone, Debug)]
pub struct Takeover {
    /// From the fault to the new watcher's flag; `None`: none came before the deadline.
    pub ms: Option<f64>,
    /// From the moment the old lock could expire (its PTTL read right after the fault) to the
    /// new watcher's flag.
    pub after_expiry_ms: Option<f64>,
    /// The strict bound on `ms`.
    pub bound_ms: f64,
    /// Who became watcher.
    pub by: String,
}

impl Takeover {
    pub fn within(&self, slack_ms: f64) -> bool {
        self.ms.is_some_and(|ms| ms <= self.bound_ms + slack_ms)
    }
}

/// What a "redis full" fault saw.
#[derive(Clone, Debug)]
pub struct FullRedis {
    /// Calls refused with `OutOfMemory` while Redis was full, by call name.
    pub refused: Vec<String>,
    pub kept_lock: bool,
}

/// One injected fault and what followed it.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: Kind,
    /// Seconds since the run started.
    pub at: f64,
    /// Whether the target held the watcher lock (kill and partition pick either).
    pub on_watcher: bool,
    pub target: String,
    /// How long the fault lasted (stop, partition, restart), in ms.
    pub lasted_ms: Option<f64>,
    pub takeover: Option<Takeover>,
    /// Stop: how long the resumed node kept its stale flag; partition: when the cut-off
    /// watcher lowered its flag, after the cut (ms).
    pub flag_down_ms: Option<f64>,
    /// Redis full: the calls the nodes reported refused for memory meanwhile, and whether the
    /// watcher kept its lock (same holder, same epoch) throughout.
    pub full: Option<FullRedis>,
    /// How many blocks a fork made right after the fault rolled back (blocks the lost watcher
    /// had applied, which its successor must undo when it reconciles).
    pub fork: Option<usize>,
    pub note: String,
}

impl Fault {
    /// The table row this fault is counted under.
    pub fn row(&self) -> String {
        match self.kind {
            Kind::Kill | Kind::Partition => format!(
                "{} ({})",
                self.kind.label(),
                if self.on_watcher {
                    "watcher"
                } else {
                    "follower"
                }
            ),
            _ => self.kind.label().to_string(),
        }
    }
}

pub fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}
