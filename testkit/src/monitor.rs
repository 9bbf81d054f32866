//! Following a server's `MONITOR` feed: which commands reached it, from which connection.
//!
//! A raw TCP connection sends `MONITOR`; a thread turns each line of the feed into a [`Seen`].
//! Two uses:
//!
//! * counting round trips: a measured call is fenced by two `ECHO` markers sent from the admin
//!   connection after the previous step returned ([`Monitor::window`]), and Redis executes
//!   commands one at a time, so everything the call sent shows up between the markers. Commands
//!   a script runs appear as `[0 lua]`: they are not round trips. The caller keeps only commands
//!   from the connections it cares about (by `CLIENT LIST` name, [`client_names`]), which leaves
//!   out the lease thread and the wake subscriber;
//! * proving that a request did reach the server and run ([`Monitor::wait_for`]), so that a test
//!   of a late request cannot pass because the request was lost on the way.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::IntoConnectionInfo;

use crate::RedisServer;

/// How long a marker may take to come back through the feed: milliseconds when idle, far more
/// on a loaded 2-core machine.
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);

/// One line of the monitor feed.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `ip:port` of the client, or `lua` for a command run inside a script.
    pub addr: String,
    /// Command name, upper-cased.
    pub cmd: String,
    /// First argument (the script SHA of an `EVALSHA`, the text of an `ECHO`), empty if none.
    pub arg: String,
    /// Every argument, `arg` first, as the feed shows them (escapes left in place).
    pub args: Vec<String>,
}

/// Round trips among `commands` (one client's top-level commands, in order): one each, but a
/// `MULTI` … `EXEC` block counts once, as it is sent at once.
pub fn round_trips<'a>(commands: impl IntoIterator<Item = &'a Seen>) -> usize {
    let mut n = 0;
    let mut queued = false;
    for s in commands {
        match s.cmd.as_str() {
            "MULTI" => {
                n += 1;
                queued = true
            }
            "EXEC" => queued = false,
            _ if queued => {}
            _ => n += 1,
        }
    }
    n
}

pub struct Monitor {
    stream: TcpStream,
    lines: Receiver<Seen>,
    reader: Option<JoinHandle<()>>,
    next_mark: u64,
    /// Everything taken from the feed since [`Monitor::keep_everything`], markers included.
    kept: Option<Vec<Seen>>,
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

fn expect_ok(reader: &mut impl BufRead, what: &str) -> io::Result<()> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.starts_with("+OK") {
        Ok(())
    } else {
        Err(io::Error::other(format!("{what}: {}", line.trim_end())))
    }
}

impl Monitor {
    pub fn start(info: &redis::ConnectionInfo) -> io::Result<Monitor> {
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            other => {
                return Err(io::Error::other(format!(
                    "MONITOR counting needs a TCP redis:// URL, not {other:?}"
                )))
            }
        };
        let mut stream = TcpStream::connect((host.as_str(), port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let auth = match settings.username() {
                Some(user) => resp(&["AUTH", user, password]),
                None => resp(&["AUTH", password]),
            };
            stream.write_all(&auth)?;
            expect_ok(&mut reader, "AUTH")?;
        }
        stream.write_all(&resp(&["MONITOR"]))?;
        expect_ok(&mut reader, "MONITOR")?;
        // From now on the feed can be quiet for as long as the caller likes.
        stream.set_read_timeout(None)?;

        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf);
                            if let Some(seen) = parse_line(&line) {
                                if tx.send(seen).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            })?;
        Ok(Monitor {
            stream,
            lines: rx,
            reader: Some(thread),
            next_mark: 0,
            kept: None,
        })
    }

    /// Follows `server` (a harness server: plain TCP, no password). The feed is live when this
    /// returns. Panics if the server refuses.
    pub fn on(server: &RedisServer) -> Monitor {
        let info = server
            .url()
            .into_connection_info()
            .expect("a harness server's URL");
        Monitor::start(&info).unwrap_or_else(|e| panic!("MONITOR on {}: {e}", server.url()))
    }

    /// From now on, keeps every command taken from the feed, inside windows or not, for
    /// [`Self::everything`].
    pub fn keep_everything(&mut self) {
        self.kept.get_or_insert_with(Vec::new);
    }

    /// Everything the feed showed since [`Self::keep_everything`], up to a marker sent now
    /// from `admin` (so up to everything the server ran before this call).
    pub fn everything(&mut self, admin: &mut redis::Connection) -> Vec<Seen> {
        assert!(
            self.kept.is_some(),
            "everything() without keep_everything()"
        );
        let mark = self.mark("everything");
        echo(admin, &mark);
        self.until_marker(&mark, |_| {});
        self.kept.clone().unwrap_or_default()
    }

    /// Runs `f` between two markers and returns the commands the server executed in between.
    pub fn window(&mut self, admin: &mut redis::Connection, f: &mut dyn FnMut()) -> Vec<Seen> {
        let start = self.mark("start");
        let end = self.mark("end");
        echo(admin, &start);
        f();
        echo(admin, &end);

        self.until_marker(&start, |_| {});
        let mut out = Vec::new();
        self.until_marker(&end, |seen| out.push(seen));
        out
    }

    /// Waits up to `within` for a command that `wanted` accepts, and returns it; `None` if none
    /// came. Commands before it are passed over.
    pub fn wait_for(
        &mut self,
        within: Duration,
        mut wanted: impl FnMut(&Seen) -> bool,
    ) -> Option<Seen> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.next(deadline).ok()?;
            if wanted(&seen) {
                return Some(seen);
            }
        }
    }

    fn mark(&mut self, what: &str) -> String {
        self.next_mark += 1;
        format!("monitor-mark-{}-{what}", self.next_mark)
    }

    /// Hands `f` every command up to the `ECHO` of `marker`, which it consumes.
    fn until_marker(&mut self, marker: &str, mut f: impl FnMut(Seen)) {
        let deadline = Instant::now() + MARKER_TIMEOUT;
        loop {
            let seen = self.next(deadline).unwrap_or_else(|e| {
                panic!("the marker {marker} never showed up in the MONITOR feed ({e:?})")
            });
            if seen.cmd == "ECHO" && seen.arg == marker {
                return;
            }
            f(seen);
        }
    }

    /// The next command of the feed, kept if asked to.
    fn next(&mut self, deadline: Instant) -> Result<Seen, RecvTimeoutError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let seen = self.lines.recv_timeout(left)?;
        if let Some(kept) = &mut self.kept {
            kept.push(seen.clone());
        }
        Ok(seen)
    }
}

fn echo(admin: &mut redis::Connection, text: &str) {
    let _: String = redis::cmd("ECHO").arg(text).query(admin).expect("ECHO");
}

impl Drop for Monitor {
    /// Closing the socket ends the feed: the server stops paying for it, and the reader sees EOF.
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(thread) = self.reader.take() {
            let _ = thread.join();
        }
    }
}

/// `addr=` → `name=` of every connection in `CLIENT LIST` (an empty name for an unnamed one),
/// to tell whose commands a [`Seen`] is.
pub fn client_names(admin: &mut redis::Connection) -> HashMap<String, String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(admin)
        .expect("CLIENT LIST");
    list.lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            };
            Some((
                field("addr")?.to_string(),
                field("name").unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// Splits `+1700000000.123456 [0 127.0.0.1:54321] "EVALSHA" "ab.." ...`.
fn parse_line(line: &str) -> Option<Seen> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let (_db, addr) = line[open + 1..close].split_once(' ')?;
    let mut rest = &line[close + 1..];
    // The double-quoted tokens; MONITOR escapes binary arguments, so one command is one line.
    let mut tokens = std::iter::from_fn(|| {
        let start = rest.find('"')? + 1;
        let bytes = rest.as_bytes();
        let mut end = start;
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        let text = rest.get(start..end.min(rest.len()))?.to_string();
        rest = rest.get(end + 1..).unwrap_or("");
        Some(text)
    });
    let cmd = tokens.next()?.to_ascii_uppercase();
    let args: Vec<String> = tokens.collect();
    Some(Seen {
        addr: addr.to_string(),
        cmd,
        arg: args.first().cloned().unwrap_or_default(),
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_and_script_lines() {
        let s = parse_line("+1.5 [0 127.0.0.1:5] \"evalsha\" \"abc\" \"15\"\r\n").unwrap();
        assert_eq!(
            (s.addr.as_str(), s.cmd.as_str(), s.arg.as_str()),
            ("127.0.0.1:5", "EVALSHA", "abc")
        );
        assert_eq!(s.args, ["abc", "15"]);
        let s = parse_line("+1.5 [0 lua] \"HSET\" \"k\\\"x\" \"v\"").unwrap();
        assert_eq!((s.addr.as_str(), s.cmd.as_str()), ("lua", "HSET"));
        // An escaped quote stays escaped and does not end the token.
        assert_eq!(s.args, ["k\\\"x", "v"]);
        let s = parse_line("1.5 [0 127.0.0.1:5] \"PING\"").unwrap();
        assert_eq!((s.cmd.as_str(), s.arg.as_str()), ("PING", ""));
        assert!(s.args.is_empty());
        assert!(parse_line("+OK").is_none());
    }
}
