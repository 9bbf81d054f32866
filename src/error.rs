//! The one error type of the crate, and the message type its variants carry.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// The message of an [`Error`] (by reference or mutable reference, as `$err` is), for the
/// variants that carry one: the one list of them.
macro_rules! message_of {
    ($err:expr) => {
        match $err {
            Error::InvalidConfig(m)
            | Error::InvalidInput(m)
            | Error::Unavailable(m)
            | Error::Timeout(m)
            | Error::Server(m)
            | Error::Auth(m)
            | Error::UnexpectedReply(m)
            | Error::OutOfMemory(m) => Some(m),
            _ => None,
        }
    };
}

/// Everything that can go wrong in a mempool call.
///
/// Every failure is reported: the crate never turns an error into `false`, an empty list or
/// `Unknown`. Messages are lowercase and never contain credentials.
///
/// Where the failure comes from a lower-level error (redis-rs's, an I/O error reading a TLS
/// file, the pool's), [`source()`](std::error::Error::source) returns it, for programs that
/// look into it (`downcast_ref::<redis::RedisError>()`, for instance). The message already
/// quotes it, so logging `{err}` alone loses nothing.
///
/// ```
/// use std::error::Error as _;
/// let err = dolos_redis::Config::new("http://nowhere").validate().unwrap_err();
/// assert!(matches!(&err, dolos_redis::Error::InvalidConfig(m) if m.starts_with("url:")));
/// assert!(err.source().is_none()); // a refused setting has no cause below it
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is not acceptable; the message names the field.
    InvalidConfig(ErrorMessage),
    /// An argument is not acceptable (for example a malformed hash string).
    InvalidInput(ErrorMessage),
    /// The transaction is already pending, inflight, or finalized in the retained log.
    DuplicateTx,
    /// The payload is larger than `max_tx_size`; nothing was stored.
    TxTooLarge {
        /// Size of the rejected payload, in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The pending queue holds `max_pending` transactions already; nothing was stored.
    MempoolFull {
        /// The configured limit.
        max: usize,
    },
    /// Redis could not be reached: connecting failed, the link broke, or no pooled connection
    /// became free within the connect timeout.
    Unavailable(ErrorMessage),
    /// Redis did not answer within the command timeout. The call may or may not have taken
    /// effect on the server (like any timed-out write); the connection is discarded.
    Timeout(ErrorMessage),
    /// Redis answered with an error this crate has no variant for.
    Server(ErrorMessage),
    /// Redis refused the credentials, wants some, or the user lacks a permission (ACL). Not
    /// transient: retrying will not help until the configuration changes.
    Auth(ErrorMessage),
    /// A key under the mempool's prefix holds a value of the wrong Redis type.
    WrongType {
        /// The full key name.
        key: String,
    },
    /// A stored record could not be decoded.
    Corrupt {
        /// The full key name (and, for hash fields, the field after a space).
        key: String,
        /// What was wrong with it.
        detail: String,
    },
    /// Redis sent a reply of a shape the crate does not expect (a different script version, or a
    /// bug).
    UnexpectedReply(ErrorMessage),
    /// The lease thread panicked; reported by `shutdown`.
    LeaseThreadPanicked,
    /// With [`Config::wait_replicas`](crate::Config::wait_replicas): the call's write **was
    /// made** on the primary, but fewer than `wanted` replicas confirmed it within the timeout,
    /// so a failover may still lose it. Not transient in the usual sense: retrying a `receive`
    /// then answers `DuplicateTx` (the tx is there, on the primary).
    NotReplicated {
        /// How many replicas confirmed the write.
        acked: usize,
        /// How many were asked for.
        wanted: usize,
    },
    /// Redis refused the call for memory: it holds `maxmemory` already (under the `noeviction`
    /// policy). **Nothing was stored**: Redis refuses a writing script before it runs, so the
    /// call changed nothing and can be made again once memory is free — a `confirm` must be (a
    /// block is never skipped; see the README, Deployments). The watcher keeps its lock
    /// meanwhile. Not [transient](Error::is_transient): it lasts until memory is freed or
    /// `maxmemory` raised, which takes an operator (lowering `max_pending`, `max_finalized` or
    /// `event_history` keeps it from coming back). Holds Redis's own message.
    OutOfMemory(ErrorMessage),
    /// `open` found keys under the prefix written in another layout than this version's (an
    /// earlier version of the crate, whose records and streams it would misread, or a later
    /// one). Nothing was changed. To go on, stop every node of that prefix and delete its keys
    /// (the pending txs are lost; Dolos resubmits what its clients send again), or open with
    /// another `key_prefix`.
    IncompatibleLayout {
        /// The key prefix.
        prefix: String,
        /// The layout found.
        found: String,
    },
    /// `open` found Redis configured to evict keys when it runs out of memory
    /// (`maxmemory-policy` other than `noeviction`): `allkeys-*` would delete accepted
    /// transactions, `volatile-*` the watcher lock. The message says what the policy would do
    /// and how to fix it: `noeviction` on the server, or
    /// [`Config::allow_eviction`](crate::Config::allow_eviction) to run anyway with a warning.
    EvictionPolicy {
        /// The server's `maxmemory-policy`.
        policy: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Error::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Error::DuplicateTx => write!(f, "transaction is already tracked"),
            Error::TxTooLarge { size, max } => {
                write!(f, "transaction of {size} bytes exceeds the limit of {max}")
            }
            Error::MempoolFull { max } => write!(f, "mempool is full ({max} pending)"),
            Error::Unavailable(m) => write!(f, "redis unavailable: {m}"),
            Error::Timeout(m) => write!(f, "redis timed out: {m}"),
            Error::Server(m) => write!(f, "redis error: {m}"),
            Error::Auth(m) => write!(f, "redis refused access: {m}"),
            Error::WrongType { key } => write!(f, "key {key} holds the wrong type of value"),
            Error::Corrupt { key, detail } => write!(f, "corrupt data at {key}: {detail}"),
            Error::UnexpectedReply(m) => write!(f, "unexpected reply from redis: {m}"),
            Error::LeaseThreadPanicked => write!(f, "the lease thread panicked"),
            Error::NotReplicated { acked, wanted } => write!(
                f,
                "write made on the primary but confirmed by {acked} of {wanted} replicas (a \
                 failover may lose it)"
            ),
            Error::OutOfMemory(m) => write!(
                f,
                "redis is out of memory and refused the call; nothing was stored. Raise redis's \
                 maxmemory, or lower max_pending, max_finalized or event_history (see the \
                 README, Deployments), then make the call again (redis said: {m})"
            ),
            Error::IncompatibleLayout { prefix, found } => write!(
                f,
                "the keys under {prefix} hold {found}, which this version of dolos-redis (layout \
                 {}) cannot read. To fix: stop every node of this prefix and delete its keys \
                 (redis-cli --scan --pattern '{prefix}:*' | xargs redis-cli del), or use another \
                 key_prefix",
                crate::keys::LAYOUT
            ),
            Error::EvictionPolicy { policy } => write!(
                f,
                "redis maxmemory-policy is {policy}, which does not suit the mempool: {}. To \
                 fix: {}",
                crate::memory::eviction_risk(policy).unwrap_or("it may delete keys"),
                crate::memory::FIX
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let source = self.message()?.source.as_deref()?;
        Some(source)
    }
}

/// The message of an [`Error`] variant, and the lower-level error it comes from, if any (what
/// [`Error`]'s `source()` returns).
///
/// It reads as a `&str` (it dereferences to one, and compares with strings); two messages are
/// equal when their texts are. Cloning it shares the source.
#[derive(Clone)]
pub struct ErrorMessage {
    text: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl ErrorMessage {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The same source, with `prefix: ` in front of the text.
    pub(crate) fn prefixed(self, prefix: impl fmt::Display) -> ErrorMessage {
        ErrorMessage {
            text: format!("{prefix}: {}", self.text),
            source: self.source,
        }
    }
}

impl Deref for ErrorMessage {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for ErrorMessage {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ErrorMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// As the text alone (quoted, like a `String`): the source is `source()`'s business, and its
/// `Debug` form might show what the text leaves out.
impl fmt::Debug for ErrorMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl PartialEq for ErrorMessage {
    fn eq(&self, other: &ErrorMessage) -> bool {
        self.text == other.text
    }
}

impl Eq for ErrorMessage {}

impl PartialEq<str> for ErrorMessage {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for ErrorMessage {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl From<String> for ErrorMessage {
    fn from(text: String) -> ErrorMessage {
        ErrorMessage { text, source: None }
    }
}

impl From<&str> for ErrorMessage {
    fn from(text: &str) -> ErrorMessage {
        ErrorMessage::from(text.to_string())
    }
}

impl Error {
    /// Whether the error comes from the link to Redis (unreachable, broken, timed out) rather
    /// than from the data or the call: such calls can be retried once Redis is back.
    /// [`Error::OutOfMemory`] is not transient: retrying soon will not help, though the call
    /// may be made again once memory is freed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout(_))
    }

    /// The message of the variants that carry one.
    fn message(&self) -> Option<&ErrorMessage> {
        message_of!(self)
    }

    /// Records `source` as what this error comes from (see `source()`); variants without a
    /// message keep none.
    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        if let Some(m) = message_of!(&mut self) {
            m.source = Some(Arc::new(source));
        }
        self
    }

    /// Sorts a redis-rs error into our variants, keeping it as the source. `Corrupt` comes from
    /// our own scripts, which raise `CORRUPT <key> <detail>`; `WrongType` is refined by the
    /// caller, which knows the keys.
    pub(crate) fn from_redis(err: redis::RedisError) -> Error {
        Error::sort_redis(&err).with_source(err)
    }

    fn sort_redis(err: &redis::RedisError) -> Error {
        if err.is_timeout() {
            return Error::Timeout(err.to_string().into());
        }
        if err.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(err.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
            // A command, key or channel of a script refused by the ACL: a plain ERR, worded
            // one way up to Redis 7.0 and another from 7.2 on.
            || err.to_string().contains("The user executing the script can't")
            || err.to_string().contains("ACL failure in script")
        {
            return Error::Auth(err.to_string().into());
        }
        if is_read_only(err) {
            return Error::Unavailable(
                format!(
                "READONLY: the server is a replica now (demoted by a failover?), reconnecting: \
                 {err}"
            )
                .into(),
            );
        }
        if is_cluster_redirect(err) {
            return Error::Unavailable(
                format!(
                    "{}: the mempool's hash slot is served by another node now, or the cluster is \
                 not ready; reconnecting: {err}",
                    err.code().unwrap_or("cluster")
                )
                .into(),
            );
        }
        if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
            return Error::Unavailable(err.to_string().into());
        }
        let (code, detail) = match script_error(err) {
            Some((code, detail)) => (Some(code), Some(detail)),
            None => (err.code(), err.detail()),
        };
        match code {
            Some("CORRUPT") => {
                let detail = detail.unwrap_or("");
                let (key, detail) = detail.split_once(" :: ").unwrap_or((detail, ""));
                Error::Corrupt {
                    key: key.to_string(),
                    detail: detail.to_string(),
                }
            }
            Some("BADTYPE") => Error::WrongType {
                key: detail
                    .and_then(|d| d.split(" :: ").next())
                    .unwrap_or("")
                    .to_string(),
            },
            // Refused for memory, as a command or from inside a script (Redis keeps the code of
            // an error raised by `redis.call`); either way before anything was written.
            Some("OOM") => Error::OutOfMemory(err.to_string().into()),
            Some(_) => Error::Server(err.to_string().into()),
            None => Error::UnexpectedReply(err.to_string().into()),
        }
    }

    /// Whether a connection that produced this error may be reused. After a timeout or an I/O
    /// error the protocol stream may hold a late reply meant for the failed command, so the
    /// connection must be thrown away.
    pub(crate) fn poisons_connection(err: &redis::RedisError) -> bool {
        err.is_timeout()
            || err.is_io_error()
            || err.is_connection_dropped()
            || err.is_unrecoverable_error()
            // The node was demoted to replica (a failover): its connections are useless for
            // writes, and a new connection finds the new primary.
            || is_read_only(err)
            // Cluster: the slot is served elsewhere now (or not at all yet); a new connection
            // asks the cluster again who owns it.
            || is_cluster_redirect(err)
    }
}

/// The code and detail of an error raised inside a script, as Redis 6.2 wraps it: `Error running
/// script (call to f_…): @user_script:7: WRONGTYPE Operation …`, `… @user_script: 14: -OOM …`,
/// or one of our own, `… @user_script:9: CORRUPT <key> :: <detail>`. (Redis 7 replies with the
/// inner code itself.) `None` for any other error.
pub(crate) fn script_error(err: &redis::RedisError) -> Option<(&str, &str)> {
    let text = err.detail()?;
    if !text.contains("Error running script") && err.code() != Some("Error") {
        return None;
    }
    let inner = text.rsplit("@user_script:").next()?;
    let inner = inner.split_once(": ")?.1.trim_start_matches('-');
    let (code, detail) = inner.split_once(' ').unwrap_or((inner, ""));
    (!code.is_empty() && code.chars().all(|c| c.is_ascii_uppercase())).then_some((code, detail))
}

/// `MOVED`, `ASK`, `TRYAGAIN` or `CLUSTERDOWN`: a Redis Cluster node that does not serve the
/// mempool's slot (any more, or yet). Redis checks the keys of a script before running it, so
/// none of these comes after a partial write.
fn is_cluster_redirect(err: &redis::RedisError) -> bool {
    err.is_cluster_error()
        || matches!(
            err.code(),
            Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN")
        )
}

/// `READONLY`, as a command or from inside a script (Redis keeps the code of an error raised by
/// `redis.call`).
fn is_read_only(err: &redis::RedisError) -> bool {
    err.code() == Some("READONLY")
        || err
            .to_string()
            .contains("You can't write against a read only replica")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_redis_error_stays_the_source() {
        let redis_err = redis::RedisError::from((redis::ErrorKind::Io, "connection reset"));
        let err = Error::from_redis(redis_err);
        assert!(err.is_transient(), "{err:?}");
        let source = err.source().expect("the redis error is the source");
        assert!(source.downcast_ref::<redis::RedisError>().is_some());
        // Clones share it; equality and Debug look at the text alone.
        let copy = err.clone();
        assert!(copy.source().is_some());
        assert_eq!(copy, err);
        let Error::Unavailable(m) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            *m,
            Error::Unavailable(m.as_str().into())
                .message()
                .unwrap()
                .clone()
        );
        assert_eq!(format!("{m:?}"), format!("{:?}", m.as_str()));
        assert!(m.contains("connection reset"));
    }

    #[test]
    fn an_error_raised_in_a_script_on_redis_6_2_is_sorted_by_its_inner_code() {
        let wrapped = |inner: &str| {
            Error::from_redis(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                "An error was signalled by the server",
                format!("Error running script (call to f_57e7): @user_script:7: {inner}"),
            )))
        };
        assert_eq!(
            wrapped("CORRUPT p:meta H :: not a number"),
            Error::Corrupt {
                key: "p:meta H".into(),
                detail: "not a number".into()
            }
        );
        assert_eq!(
            wrapped("BADTYPE p:log :: holds a string, expected a stream"),
            Error::WrongType {
                key: "p:log".into()
            }
        );
        let oom = Error::from_redis(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "An error was signalled by the server",
            "Error running script (call to f_a7a1): @user_script:14: @user_script: 14: -OOM \
             command not allowed when used memory > 'maxmemory'."
                .to_string(),
        )));
        assert!(matches!(oom, Error::OutOfMemory(_)), "{oom:?}");
        assert!(matches!(wrapped("lowercase words"), Error::Server(_)));
    }

    #[test]
    fn an_error_is_a_plain_value() {
        fn plain<T: Clone + Eq + Send + Sync + 'static>() {}
        plain::<Error>();
        let err = Error::Auth("refused".into());
        assert_eq!(err.source().map(|e| e.to_string()), None);
        assert_eq!(err, Error::Auth("refused".into()));
        let err = err.with_source(std::io::Error::other("below"));
        assert_eq!(
            err.source().map(|e| e.to_string()).as_deref(),
            Some("below")
        );
        let no_message = Error::DuplicateTx.with_source(std::io::Error::other("x"));
        assert!(no_message.source().is_none());
    }
}
