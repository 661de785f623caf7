//! One POP3 session: AUTHORIZATION → TRANSACTION → UPDATE (RFC 1939 §3).
//! Deletions take effect only at QUIT in the TRANSACTION state; a dropped
//! connection deletes nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, BufReader};

use super::Pop3Shared;
use crate::config::{Config, Listener, TlsMode};
use crate::conn::Conn;
use crate::session::{login, sasl};
use crate::shutdown::Signal;
use crate::smtp::line::{Ending, read_line};
use crate::store::{FolderId, MessageMeta as MailMeta};

/// RFC 2449 §4: a command line is at most 255 octets (with CRLF).
const COMMAND_LIMIT: usize = 255;
/// Over-long input read and dropped before the session is closed.
const DISCARD: usize = 64 * 1024;
/// Errors after which the session is closed.
const MAX_ERRORS: u32 = 20;

/// The open maildrop of a session in the TRANSACTION state.
struct Maildrop {
    mailbox: String,
    /// The account's INBOX.
    folder: FolderId,
    messages: Vec<MailMeta>,
    deleted: Vec<bool>,
    uid_validity: u32,
    /// The store's exclusive maildrop lock (RFC 1939 §8), held until the
    /// session ends.
    _lock: Box<dyn std::any::Any + Send>,
}

/// One client connection.
pub struct Session {
    stream: BufReader<Conn>,
    out: Vec<u8>,
    shared: Arc<Pop3Shared>,
    config: Arc<Config>,
    listener: Listener,
    client: String,
    signal: Signal,
    user_arg: Option<String>,
    drop_: Option<Maildrop>,
    errors: u32,
    auth_failures: login::Backoff,
}

enum Flow {
    Continue,
    Close,
}

impl Session {
    /// A session over an accepted connection.
    pub fn new(
        conn: Conn,
        shared: Arc<Pop3Shared>,
        listener: Listener,
        peer: SocketAddr,
        signal: Signal,
    ) -> Session {
        let config = shared.config.load_full();
        Session {
            stream: BufReader::with_capacity(8 * 1024, conn),
            out: Vec::with_capacity(1024),
            shared,
            config,
            listener,
            client: format!("[{}]", crate::config::canonical_ip(peer.ip())),
            signal,
            user_arg: None,
            drop_: None,
            errors: 0,
            auth_failures: Default::default(),
        }
    }

    fn ok(&mut self, text: &str) {
        self.out
            .extend_from_slice(format!("+OK {text}\r\n").as_bytes());
    }

    fn err(&mut self, text: &str) {
        self.errors += 1;
        self.out
            .extend_from_slice(format!("-ERR {text}\r\n").as_bytes());
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.get_mut().write_all(&self.out).await?;
            self.stream.get_mut().flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    fn plaintext_ok(&self) -> bool {
        self.stream.get_ref().is_tls() || self.config.pop3.allow_plaintext_auth
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        let _session = crate::metrics::get().session("pop3", self.stream.get_ref().is_tls());
        self.ok(&format!(
            "{} POP3 server ready",
            self.config.server.hostname
        ));
        loop {
            match self.step().await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) | Err(_) => break,
            }
            if self.errors >= MAX_ERRORS {
                self.err("too many errors; closing");
                break;
            }
        }
        let _ = self.flush().await;
        let _ = self.stream.get_mut().shutdown().await;
    }

    async fn step(&mut self) -> std::io::Result<Flow> {
        if self.stream.buffer().is_empty() {
            self.flush().await?;
        }
        let wait = self.config.pop3.idle_timeout;
        let mut signal = self.signal.clone();
        let line = tokio::select! {
            r = tokio::time::timeout(wait, read_line(&mut self.stream, COMMAND_LIMIT, DISCARD)) => match r {
                Ok(l) => l?,
                Err(_) => {
                    // RFC 1939 §3: an idle timeout closes without UPDATE.
                    self.err("idle for too long; closing");
                    return Ok(Flow::Close);
                }
            },
            _ = signal.triggered() => {
                self.err("server shutting down");
                return Ok(Flow::Close);
            }
        };
        if line.ending == Ending::Eof {
            return Ok(Flow::Close);
        }
        if line.too_long {
            self.err("line too long");
            return Ok(Flow::Continue);
        }
        let text = match std::str::from_utf8(&line.bytes) {
            Ok(t) if !t.contains('\0') && !line.bare_cr => t.to_string(),
            _ => {
                self.err("malformed command");
                return Ok(Flow::Continue);
            }
        };
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.to_string()),
            None => (text.to_ascii_uppercase(), String::new()),
        };
        if self.drop_.is_none() {
            self.authorization(&verb, &arg).await
        } else {
            self.transaction(&verb, &arg).await
        }
    }

    async fn authorization(&mut self, verb: &str, arg: &str) -> std::io::Result<Flow> {
        match verb {
            "CAPA" => self.capa(),
            "QUIT" => {
                self.ok("bye");
                return Ok(Flow::Close);
            }
            "STLS" => return self.stls().await,
            "USER" | "PASS" | "AUTH" if !self.plaintext_ok() => {
                self.err("[AUTH] authentication needs TLS here: use STLS first")
            }
            "USER" if !arg.is_empty() => {
                self.user_arg = Some(arg.to_string());
                self.ok("send PASS");
            }
            "PASS" => match self.user_arg.take() {
                Some(user) => return self.login(&user, arg).await,
                None => self.err("USER first"),
            },
            "AUTH" => return self.auth(arg).await,
            "USER" => self.err("USER needs a name"),
            "STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE" | "RSET" | "NOOP" => {
                self.err("not logged in")
            }
            _ => self.err("unknown command"),
        }
        Ok(Flow::Continue)
    }

    fn capa(&mut self) {
        let mut caps = vec![
            "TOP",
            "UIDL",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "EXPIRE NEVER",
            "IMPLEMENTATION petrel",
        ];
        if self.plaintext_ok() {
            caps.push("USER");
            caps.push("SASL PLAIN");
        }
        if self.listener.tls == TlsMode::Starttls
            && !self.stream.get_ref().is_tls()
            && self.shared.tls.is_some()
        {
            caps.push("STLS");
        }
        self.ok("capability list follows");
        for c in caps {
            self.out.extend_from_slice(format!("{c}\r\n").as_bytes());
        }
        self.out.extend_from_slice(b".\r\n");
    }

    /// RFC 2595 §4: STLS; anything pipelined after it is discarded.
    async fn stls(&mut self) -> std::io::Result<Flow> {
        if self.listener.tls != TlsMode::Starttls
            || self.shared.tls.is_none()
            || self.stream.get_ref().is_tls()
        {
            self.err("STLS not available");
            return Ok(Flow::Continue);
        }
        self.ok("begin TLS negotiation");
        self.flush().await?;
        let Some(tcp) = self.stream.get_mut().take_plain() else {
            return Ok(Flow::Close);
        };
        let Some(cfg) = self.shared.tls.get() else {
            return Ok(Flow::Close);
        };
        match crate::conn::accept_tls(tcp, cfg, &self.client).await {
            Some(tls) => {
                self.stream = BufReader::with_capacity(8 * 1024, tls);
                crate::metrics::get().tls_session("pop3");
                self.user_arg = None;
                Ok(Flow::Continue)
            }
            None => {
                self.stream = BufReader::new(Conn::Closed);
                Ok(Flow::Close)
            }
        }
    }

    /// RFC 5034: AUTH PLAIN, with an initial response or after `+ `.
    async fn auth(&mut self, arg: &str) -> std::io::Result<Flow> {
        let mut words = arg.split_whitespace();
        let mech = words.next().unwrap_or("").to_ascii_uppercase();
        if mech.is_empty() {
            // RFC 5034 §4: a bare AUTH lists the mechanisms.
            self.ok("mechanisms follow");
            self.out.extend_from_slice(b"PLAIN\r\n.\r\n");
            return Ok(Flow::Continue);
        }
        if mech != "PLAIN" {
            self.err("unsupported mechanism");
            return Ok(Flow::Continue);
        }
        let response = match words.next() {
            Some(r) => r.to_string(),
            None => {
                self.out.extend_from_slice(b"+ \r\n");
                self.flush().await?;
                let line = tokio::time::timeout(
                    self.config.pop3.idle_timeout,
                    read_line(&mut self.stream, 2048, DISCARD),
                )
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout"))??;
                String::from_utf8_lossy(&line.bytes).into_owned()
            }
        };
        match sasl::decode(response.as_bytes()).and_then(|raw| sasl::plain(&raw)) {
            Ok((u, p)) => self.login(&u, &p).await,
            Err(sasl::SaslError::Cancelled) => {
                self.err("authentication cancelled");
                Ok(Flow::Continue)
            }
            Err(sasl::SaslError::Authz) => self.login_failed("PLAIN", "").await,
            Err(_) => {
                self.err("malformed AUTH response");
                Ok(Flow::Continue)
            }
        }
    }

    /// A failed login: slowed, logged, and the session closed after the
    /// last one allowed.
    async fn login_failed(&mut self, mechanism: &str, login: &str) -> std::io::Result<Flow> {
        let close = self
            .auth_failures
            .failed(&self.client, "POP3", mechanism, login)
            .await;
        tracing::info!(client = %self.client, stage = %"POP3 login", code = %"-ERR", reason = "invalid credentials", "rejected");
        self.err("[AUTH] invalid user name or password");
        if close {
            self.err("[AUTH] too many failures; closing");
            return Ok(Flow::Close);
        }
        Ok(Flow::Continue)
    }

    /// Checks the credentials and opens the maildrop.
    async fn login(&mut self, login: &str, password: &str) -> std::io::Result<Flow> {
        let (who, mailbox) = match login.split_once('+') {
            Some((u, m)) if !m.is_empty() => (u.to_string(), Some(m.to_string())),
            _ => (login.to_string(), None),
        };
        let user = login::verify(&self.config, &who, password).await;
        let target = match (&user, &mailbox) {
            (Some(u), None) => Some(u.name.clone()),
            (Some(u), Some(m)) if login::may_read(&self.config, &u.name, m) => Some(m.clone()),
            _ => None,
        };
        let Some(target) = target else {
            return self.login_failed("password", login).await;
        };
        let lock = match self.shared.store.lock_maildrop(&target).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                self.err("[IN-USE] the mailbox is open in another session");
                return Ok(Flow::Continue);
            }
            Err(e) => {
                tracing::error!(mailbox = %target, error = %e, "cannot lock mailbox");
                self.err("[SYS/TEMP] cannot open the mailbox now");
                return Ok(Flow::Continue);
            }
        };
        let opened = match self.shared.store.folder(&target, "INBOX").await {
            Ok(Some(f)) => self
                .shared
                .store
                .messages(f.id)
                .await
                .map(|m| (f.id, f.uid_validity, m)),
            Ok(None) => Err(crate::store::StoreError::NotFound("INBOX".into())),
            Err(e) => Err(e),
        };
        let (folder, uid_validity, messages) = match opened {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(mailbox = %target, error = %e, "cannot read mailbox");
                self.err("[SYS/TEMP] cannot open the mailbox now");
                return Ok(Flow::Continue);
            }
        };
        let octets: u64 = messages.iter().map(|m| m.size).sum();
        tracing::info!(client = %self.client, user = %who, mailbox = %target, messages = messages.len(), "POP3 login");
        self.ok(&format!("{} messages ({octets} octets)", messages.len()));
        self.drop_ = Some(Maildrop {
            mailbox: target,
            folder,
            deleted: vec![false; messages.len()],
            messages,
            uid_validity,
            _lock: lock,
        });
        Ok(Flow::Continue)
    }

    /// The message for a 1-based number, unless deleted.
    fn message(&self, arg: &str) -> Result<(usize, MailMeta), &'static str> {
        let d = self.drop_.as_ref().ok_or("not logged in")?;
        let n: usize = arg.trim().parse().map_err(|_| "bad message number")?;
        if n == 0 || n > d.messages.len() {
            return Err("no such message");
        }
        if d.deleted[n - 1] {
            return Err("message is deleted");
        }
        Ok((n, d.messages[n - 1].clone()))
    }

    async fn transaction(&mut self, verb: &str, arg: &str) -> std::io::Result<Flow> {
        let uid_of = |d: &Maildrop, m: &MailMeta| format!("{}.{}", d.uid_validity, m.uid);
        match verb {
            "STAT" => {
                let d = self.drop_.as_ref().expect("transaction state");
                let live: Vec<&MailMeta> = d
                    .messages
                    .iter()
                    .zip(&d.deleted)
                    .filter(|(_, del)| !**del)
                    .map(|(m, _)| m)
                    .collect();
                let text = format!(
                    "{} {}",
                    live.len(),
                    live.iter().map(|m| m.size).sum::<u64>()
                );
                self.ok(&text);
            }
            "LIST" | "UIDL" => {
                if arg.trim().is_empty() {
                    let d = self.drop_.as_ref().expect("transaction state");
                    let mut body = String::new();
                    for (i, m) in d.messages.iter().enumerate() {
                        if !d.deleted[i] {
                            let v = if verb == "LIST" {
                                m.size.to_string()
                            } else {
                                uid_of(d, m)
                            };
                            body.push_str(&format!("{} {v}\r\n", i + 1));
                        }
                    }
                    self.ok("listing follows");
                    self.out.extend_from_slice(body.as_bytes());
                    self.out.extend_from_slice(b".\r\n");
                } else {
                    match self.message(arg) {
                        Ok((n, m)) => {
                            let d = self.drop_.as_ref().expect("transaction state");
                            let v = if verb == "LIST" {
                                m.size.to_string()
                            } else {
                                uid_of(d, &m)
                            };
                            self.ok(&format!("{n} {v}"));
                        }
                        Err(e) => self.err(e),
                    }
                }
            }
            "RETR" | "TOP" => {
                let (num, lines) = if verb == "TOP" {
                    let mut w = arg.split_whitespace();
                    match (
                        w.next(),
                        w.next().and_then(|k| k.parse::<usize>().ok()),
                        w.next(),
                    ) {
                        (Some(n), Some(k), None) => (n.to_string(), Some(k)),
                        _ => {
                            self.err("usage: TOP msg n");
                            return Ok(Flow::Continue);
                        }
                    }
                } else {
                    (arg.to_string(), None)
                };
                match self.message(&num) {
                    Ok((_, m)) => {
                        let d = self.drop_.as_ref().expect("transaction state");
                        let (mailbox, folder) = (d.mailbox.clone(), d.folder);
                        match self.shared.store.read(folder, m.uid, None).await {
                            Ok(content) => {
                                let shown = match lines {
                                    Some(k) => top(&content, k),
                                    None => content,
                                };
                                self.ok(&format!("{} octets", m.size));
                                crate::smtp::client::dot_stuff(&shown, &mut self.out);
                                self.out.extend_from_slice(b".\r\n");
                            }
                            // Expunged by another session (IMAP) since login.
                            Err(crate::store::StoreError::NotFound(_)) => {
                                self.err("no such message (it was deleted in another session)");
                            }
                            Err(e) => {
                                tracing::error!(mailbox = %mailbox, uid = m.uid, error = %e, "cannot read message");
                                self.err("[SYS/TEMP] cannot read the message now");
                            }
                        }
                    }
                    Err(e) => self.err(e),
                }
            }
            "DELE" => match self.message(arg) {
                Ok((n, _)) => {
                    if let Some(d) = self.drop_.as_mut() {
                        d.deleted[n - 1] = true;
                    }
                    self.ok(&format!("message {n} deleted"));
                }
                Err(e) => self.err(e),
            },
            "RSET" => {
                if let Some(d) = self.drop_.as_mut() {
                    d.deleted.iter_mut().for_each(|x| *x = false);
                }
                self.ok("deletions undone");
            }
            "NOOP" => self.ok(""),
            "CAPA" => self.capa(),
            "QUIT" => return self.update().await,
            "USER" | "PASS" | "AUTH" | "STLS" => self.err("already logged in"),
            _ => self.err("unknown command"),
        }
        Ok(Flow::Continue)
    }

    /// RFC 1939 §6: the UPDATE state — remove what was deleted, then commit.
    async fn update(&mut self) -> std::io::Result<Flow> {
        let Some(d) = self.drop_.take() else {
            return Ok(Flow::Close);
        };
        let uids: Vec<u32> = d
            .messages
            .iter()
            .zip(&d.deleted)
            .filter(|(_, del)| **del)
            .map(|(m, _)| m.uid)
            .collect();
        // One expunge, durable when it returns. A copy another session
        // (IMAP) expunged meanwhile is simply not there any more.
        let (removed, failed) = if uids.is_empty() {
            (0, false)
        } else {
            match self
                .shared
                .store
                .expunge(d.folder, Some(&uids), false)
                .await
            {
                Ok(gone) => (gone.len(), false),
                Err(e) => {
                    tracing::error!(mailbox = %d.mailbox, error = %e, "cannot delete messages");
                    (0, true)
                }
            }
        };
        let left = d.messages.len() - removed;
        if failed {
            self.err("[SYS/TEMP] some messages could not be deleted");
        } else {
            self.ok(&format!(
                "{} signing off ({left} messages left)",
                self.config.server.hostname
            ));
        }
        tracing::info!(client = %self.client, mailbox = %d.mailbox, deleted = removed, "POP3 logout");
        Ok(Flow::Close)
    }
}

/// The header section and the first `k` lines of the body (RFC 1939 TOP).
fn top(content: &[u8], k: usize) -> Vec<u8> {
    let head = crate::headers::section(content).len();
    let mut out = content[..head].to_vec();
    let rest = &content[head..];
    // The empty line that ends the headers.
    let body = if let Some(r) = rest.strip_prefix(b"\r\n") {
        out.extend_from_slice(b"\r\n");
        r
    } else {
        rest
    };
    for line in body.split_inclusive(|&b| b == b'\n').take(k) {
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_keeps_headers_and_k_body_lines() {
        let m = b"Subject: a\r\nFrom: b\r\n\r\none\r\ntwo\r\nthree\r\n";
        assert_eq!(top(m, 0), b"Subject: a\r\nFrom: b\r\n\r\n");
        assert_eq!(top(m, 2), b"Subject: a\r\nFrom: b\r\n\r\none\r\ntwo\r\n");
        assert_eq!(top(m, 9), m);
    }
}
