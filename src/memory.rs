//! What the mempool needs to know about the Redis server, read from `INFO`: its version
//! (whether scripts may carry a `#!lua` header, see [`Header`](crate::scripts::Header)).

/// The figures `open` reads from one `INFO` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerFacts {
    /// `redis_version`, as (major, minor); `None` if absent or not a version.
    pub version: Option<(u32, u32)>,
}

/// The value of `name` in an `INFO` reply (`name:value` lines).
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

impl ServerFacts {
    /// Reads the figures from an `INFO` reply with the `server` section.
    pub fn parse(info: &str) -> ServerFacts {
        let version = field(info, "redis_version").and_then(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        });
        ServerFacts { version }
    }

    /// Whether the server reads `#!lua` header lines (Redis 7 and later). A version that cannot
    /// be read counts as older: scripts without the header run everywhere.
    pub fn script_headers(&self) -> bool {
        matches!(self.version, Some((major, _)) if major >= 7)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_says_whether_scripts_carry_headers() {
        let facts = ServerFacts::parse("# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:0\r\n");
        assert_eq!(facts.version, Some((7, 0)));
        assert!(facts.script_headers());
        let facts = ServerFacts::parse("redis_version:6.2.14\n");
        assert_eq!(facts.version, Some((6, 2)));
        assert!(!facts.script_headers());
        // An unreadable version: scripts without headers, which every version runs.
        assert!(!ServerFacts::parse("redis_version:unstable\n").script_headers());
        assert!(!ServerFacts::parse("").script_headers());
        assert!(ServerFacts::parse("redis_version:7.2.4\n").script_headers());
    }
}
