//! Counting round trips with `MONITOR`.
//!
//! A raw TCP connection sends `MONITOR`; a thread turns each line of the feed into a [`Seen`].
//! A measured call is fenced by two `ECHO` markers sent from the admin connection after the
//! previous step returned, and Redis executes commands one at a time, so everything the call sent
//! shows up between the markers. Commands a script runs appear as `[0 lua]`: they are not round
//! trips. The caller keeps only commands from the connections it cares about (by `CLIENT LIST`
//! name), which leaves out the lease thread and the wake subscriber.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One line of the monitor feed.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `ip:port` of the client, or `lua` for a command run inside a script.
    pub addr: String,
    /// Command name, upper-cased.
    pub cmd: String,
    /// First argument (the script SHA of an `EVALSHA`, the text of an `ECHO`).
    pub arg: String,
}

pub struct Monitor {
    stream: TcpStream,
    lines: Receiver<Seen>,
    reader: Option<JoinHandle<()>>,
    next_mark: u64,
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
        // From now on the feed can be quiet for as long as the benchmark likes.
        stream.set_read_timeout(None)?;

        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-monitor".into())
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
        })
    }

    /// Runs `f` between two markers and returns the commands the server executed in between.
    pub fn window(&mut self, admin: &mut redis::Connection, f: &mut dyn FnMut()) -> Vec<Seen> {
        self.next_mark += 1;
        let start = format!("monitor-mark-{}-start", self.next_mark);
        let end = format!("monitor-mark-{}-end", self.next_mark);
        let echo = |admin: &mut redis::Connection, text: &str| {
            let _: String = redis::cmd("ECHO").arg(text).query(admin).expect("ECHO");
        };
        echo(admin, &start);
        f();
        echo(admin, &end);

        let deadline = Instant::now() + Duration::from_secs(10);
        let mut inside = false;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let seen = self
                .lines
                .recv_timeout(left)
                .expect("the end marker never showed up in the MONITOR feed");
            if seen.cmd == "ECHO" && seen.arg == start {
                inside = true;
            } else if seen.cmd == "ECHO" && seen.arg == end {
                return out;
            } else if inside {
                out.push(seen);
            }
        }
    }
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

/// Splits `+1700000000.123456 [0 127.0.0.1:54321] "EVALSHA" "ab.." ...`.
fn parse_line(line: &str) -> Option<Seen> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let (_db, addr) = line[open + 1..close].split_once(' ')?;
    let mut rest = &line[close + 1..];
    let mut token = || -> Option<String> {
        let start = rest.find('"')? + 1;
        let bytes = rest.as_bytes();
        let mut end = start;
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        let text = rest.get(start..end.min(rest.len()))?.to_string();
        rest = rest.get(end + 1..).unwrap_or("");
        Some(text)
    };
    let cmd = token()?.to_ascii_uppercase();
    let arg = token().unwrap_or_default();
    Some(Seen {
        addr: addr.to_string(),
        cmd,
        arg,
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
        let s = parse_line("+1.5 [0 lua] \"HSET\" \"k\\\"x\" \"v\"").unwrap();
        assert_eq!((s.addr.as_str(), s.cmd.as_str()), ("lua", "HSET"));
    }
}
