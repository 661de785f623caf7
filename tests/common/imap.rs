//! A raw IMAP client for tests: lines as the server sends them.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A connection; `cmd` sends a tagged command and returns every line up to
/// and with its tagged answer.
pub struct Imap {
    /// The reading half.
    pub r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Imap {
    pub fn connect(addr: std::net::SocketAddr) -> Imap {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut c = Imap {
            r: BufReader::new(s.try_clone().expect("clone")),
            w: s,
        };
        let greeting = c.line();
        assert!(
            greeting.starts_with("* OK [CAPABILITY IMAP4rev1 IMAP4rev2"),
            "{greeting}"
        );
        c
    }
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read");
        l
    }
    pub fn send(&mut self, data: &[u8]) {
        self.w.write_all(data).expect("write");
    }
    /// Sends a command; returns every line up to and with the tagged one.
    pub fn cmd(&mut self, tag: &str, c: &str) -> Vec<String> {
        self.send(format!("{tag} {c}\r\n").as_bytes());
        self.until(tag)
    }
    pub fn until(&mut self, tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "closed; got {out:?}");
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                return out;
            }
        }
    }
}

impl Imap {
    /// Connects and logs in (plain LOGIN: the listener must allow it).
    pub fn login(addr: std::net::SocketAddr, user: &str, password: &str) -> Imap {
        let mut c = Imap::connect(addr);
        let r = c.cmd("l", &format!("LOGIN {user} \"{password}\""));
        assert!(
            r.last().is_some_and(|l| l.starts_with("l OK")),
            "LOGIN {user}: {r:?}"
        );
        c
    }
}
