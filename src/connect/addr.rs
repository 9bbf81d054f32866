//! Addresses as a configuration gives them: sentinel addresses, `host:port` pairs, and URLs
//! shown with their password hidden.

/// A sentinel's address as a URL: `host:port` becomes `redis://host:port`.
pub(crate) fn sentinel_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("redis://{addr}")
    }
}

/// `host:port` split in two; `None` for anything else (a URL, no port, a bad port).
pub(crate) fn parse_host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let valid_host = !host.is_empty()
        && !host.contains("://")
        && !host.contains('@')
        && !host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/');
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    valid_host.then(|| (host.to_string(), port))
}

/// Replaces the password of a URL's user info (`scheme://user:password@host`) with `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = authority.split_at(at);
    let user = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // `redis://secret@host`: redis-rs reads a lone user-info part as a user name, but
        // operators sometimes put a password there; hide it as well.
        None => "***".to_string(),
    };
    format!("{scheme}://{user}{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:hunter2@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:hunter2@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("redis://hunter2@host"), "redis://***@host");
    }

    #[test]
    fn host_port_pairs_and_sentinel_addresses() {
        assert_eq!(parse_host_port("h:7000"), Some(("h".to_string(), 7000)));
        assert_eq!(
            parse_host_port("[::1]:7000"),
            Some(("::1".to_string(), 7000))
        );
        for bad in ["h", "h:0", "h:x", "redis://h:7000", "u:p@h:7000", ":7000"] {
            assert_eq!(parse_host_port(bad), None, "{bad}");
        }
        assert_eq!(sentinel_url("h:26379"), "redis://h:26379");
        assert_eq!(sentinel_url("redis://:pw@h:26379"), "redis://:pw@h:26379");
    }
}
