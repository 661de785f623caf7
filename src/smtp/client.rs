//! The outbound SMTP client (RFC 5321, 2920 pipelining, 3207 STARTTLS,
//! 3461 DSN, 6152 8BITMIME, 6531 SMTPUTF8). One `Client` is one connection;
//! it can carry several transactions (RSET between). Results are per
//! recipient; a broken connection is reported so the caller can retry the
//! transaction elsewhere.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use super::command::xtext_encode;
use crate::config::OutboundTls;
use crate::conn::Conn;
use crate::mime::downgrade;
use crate::outcome::{Detail, Outcome};
use crate::spool::{Ret, notify};

/// Time allowed to connect (RFC 5321 §4.5.3.2 leaves it to us).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Greeting and command replies (RFC 5321 §4.5.3.2.1–5: 5 minutes).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// Messages up to this size are converted for a 7-bit peer on the
/// delivery thread; larger ones on the blocking pool.
const DOWNGRADE_INLINE: usize = 256 * 1024;
/// After the final dot (RFC 5321 §4.5.3.2.6: 10 minutes).
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);

/// An I/O error as people read it: without Rust's "(os error N)".
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A reply from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Code.
    pub code: u16,
    /// Text lines joined by spaces (codes stripped).
    pub text: String,
}

impl Reply {
    /// `250 2.0.0 Ok`, as in a Diagnostic-Code.
    pub fn line(&self) -> String {
        format!("{} {}", self.code, self.text)
    }

    /// The enhanced status code in the text, or one from the code class.
    pub fn status(&self) -> String {
        let first = self.text.split_whitespace().next().unwrap_or("");
        let parts: Vec<&str> = first.split('.').collect();
        if parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            first.to_string()
        } else {
            format!("{}.0.0", self.code / 100)
        }
    }
}

/// What the peer offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870, with the limit if given.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eightbitmime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3461.
    pub dsn: bool,
    /// RFC 3207.
    pub starttls: bool,
}

impl Extensions {
    /// Reads the EHLO reply's lines (the first is the greeting name).
    fn parse(lines: &[String]) -> Extensions {
        let mut e = Extensions::default();
        for l in lines.iter().skip(1) {
            let mut words = l.split_whitespace();
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => e.pipelining = true,
                "SIZE" => e.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => e.eightbitmime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "DSN" => e.dsn = true,
                "STARTTLS" => e.starttls = true,
                _ => {}
            }
        }
        e
    }
}

/// Why a connection could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// Try the next host: connect failure, timeout, 4xx/5xx greeting.
    NextHost(String),
    /// Do not try other hosts of this destination now: required TLS is
    /// missing or failed (defer).
    Policy(String),
}

impl ConnectError {
    /// The reason text.
    pub fn reason(&self) -> &str {
        match self {
            ConnectError::NextHost(s) | ConnectError::Policy(s) => s,
        }
    }
}

/// One recipient of a transaction.
#[derive(Debug, Clone)]
pub struct RcptSpec {
    /// Index in the queue record.
    pub index: usize,
    /// Address.
    pub address: String,
    /// NOTIFY bits.
    pub notify: u8,
    /// ORCPT.
    pub orcpt: Option<String>,
}

/// One transaction to carry.
#[derive(Debug, Clone)]
pub struct Transaction<'a> {
    /// Envelope sender.
    pub sender: &'a str,
    /// ENVID.
    pub envid: Option<&'a str>,
    /// RET.
    pub ret: Option<Ret>,
    /// Needs 8BITMIME.
    pub body_8bit: bool,
    /// Needs SMTPUTF8.
    pub smtputf8: bool,
    /// Recipients.
    pub rcpts: &'a [RcptSpec],
    /// Content as queued (CRLF lines, not dot-stuffed).
    pub content: &'a [u8],
}

/// How connections are opened.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Our name in EHLO/HELO (`server.hostname`).
    pub helo: String,
    /// STARTTLS policy (`smtp.outbound.tls`).
    pub policy: OutboundTls,
    /// Local address the socket is bound to (`smtp.outbound.source_address`),
    /// used for peers of the same address family; `None`: the system picks.
    pub source: Option<IpAddr>,
    /// The daemon's SMTP trace level (`log.smtp_debug`, `petrel debug
    /// smtp`), read at each line so a change applies to open connections:
    /// 1 connections, 2 commands and replies, 3 the message content too.
    pub trace: Arc<AtomicU8>,
}

impl ConnectOptions {
    /// The options `config` gives (`server.hostname`, `smtp.outbound.tls`,
    /// `smtp.outbound.source_address`), traced at the level `trace` holds.
    pub fn new(config: &crate::config::Config, trace: Arc<AtomicU8>) -> ConnectOptions {
        ConnectOptions {
            helo: config.server.hostname.clone(),
            policy: config.outbound.tls,
            source: config.outbound.source_address,
            trace,
        }
    }
}

/// Opens a TCP connection to `addr`, from `source` when it is of the same
/// family (RFC 5321 leaves the source to the host; Postfix's
/// `smtp_bind_address` does the same).
async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = source.filter(|s| s.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(src, 0)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot bind to source address {src}: {}", io_text(&e)),
            )
        })?;
    }
    socket.connect(addr).await
}

/// An open SMTP connection to a peer.
pub struct Client {
    io: BufReader<Conn>,
    /// `name[ip]:port`, for logs and Remote-MTA.
    pub peer: String,
    /// The peer's host name, for Remote-MTA.
    pub peer_name: String,
    /// What the peer offered.
    pub ext: Extensions,
    /// Whether the connection is encrypted.
    pub tls: bool,
    /// A transaction was carried: RSET before the next.
    used: bool,
    /// The trace level (see `ConnectOptions::trace`).
    trace: Arc<AtomicU8>,
}

impl Client {
    /// Connects, reads the greeting, says EHLO (HELO if refused), and
    /// upgrades with STARTTLS as the policy says.
    pub async fn connect(
        addr: SocketAddr,
        host: &str,
        opts: &ConnectOptions,
    ) -> Result<Client, ConnectError> {
        let (helo, policy) = (opts.helo.as_str(), opts.policy);
        let peer = format!("{host}[{}]:{}", addr.ip(), addr.port());
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, tcp_connect(addr, opts.source)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(ConnectError::NextHost(format!(
                    "connect to {peer}: {}",
                    io_text(&e)
                )));
            }
            Err(_) => {
                return Err(ConnectError::NextHost(format!(
                    "connect to {peer}: timed out"
                )));
            }
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut c = Client {
            io: BufReader::new(Conn::Plain(tcp)),
            peer: peer.clone(),
            peer_name: host.to_string(),
            ext: Extensions::default(),
            tls: false,
            used: false,
            trace: opts.trace.clone(),
        };
        if c.trace_level() >= 1 {
            tracing::info!(peer = %peer, local = %local, "outbound connection");
        }
        let greet = c
            .read_reply(REPLY_TIMEOUT)
            .await
            .map_err(|e| ConnectError::NextHost(format!("{peer}: {}", io_text(&e))))?;
        if greet.0.code != 220 {
            return Err(ConnectError::NextHost(format!(
                "host {peer} refused to talk to me: {}",
                greet.0.line()
            )));
        }
        c.hello(helo).await?;
        if c.ext.starttls && policy != OutboundTls::Off {
            match c.starttls(host, policy).await {
                Ok(()) => c.hello(helo).await?,
                Err(e) if policy == OutboundTls::Required => return Err(e),
                Err(e) => {
                    // Opportunistic: a failed handshake leaves the connection
                    // unusable; try again without TLS.
                    tracing::info!(peer = %peer, error = %e.reason(), "STARTTLS failed; retrying in plain text");
                    let plain_opts = ConnectOptions {
                        policy: OutboundTls::Off,
                        ..opts.clone()
                    };
                    let mut plain = Box::pin(Client::connect(addr, host, &plain_opts)).await?;
                    plain.tls = false;
                    return Ok(plain);
                }
            }
        } else if policy == OutboundTls::Required {
            let _ = c.quit().await;
            return Err(ConnectError::Policy(format!(
                "TLS is required, but host {peer} does not offer STARTTLS"
            )));
        }
        Ok(c)
    }

    async fn hello(&mut self, helo: &str) -> Result<(), ConnectError> {
        let peer = self.peer.clone();
        let fail = |e: std::io::Error| ConnectError::NextHost(format!("{peer}: {e}"));
        self.write(format!("EHLO {helo}\r\n").as_bytes())
            .await
            .map_err(&fail)?;
        let (reply, lines) = self.read_reply(REPLY_TIMEOUT).await.map_err(&fail)?;
        if reply.code == 250 {
            self.ext = Extensions::parse(&lines);
            return Ok(());
        }
        self.write(format!("HELO {helo}\r\n").as_bytes())
            .await
            .map_err(&fail)?;
        let (reply, _) = self.read_reply(REPLY_TIMEOUT).await.map_err(&fail)?;
        if reply.code != 250 {
            return Err(ConnectError::NextHost(format!(
                "host {peer} refused HELO: {}",
                reply.line()
            )));
        }
        self.ext = Extensions::default();
        Ok(())
    }

    async fn starttls(&mut self, host: &str, policy: OutboundTls) -> Result<(), ConnectError> {
        let peer = self.peer.clone();
        let fail = |e: String| ConnectError::Policy(format!("STARTTLS with {peer}: {e}"));
        self.write(b"STARTTLS\r\n")
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (reply, _) = self
            .read_reply(REPLY_TIMEOUT)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if reply.code != 220 {
            return Err(fail(reply.line()));
        }
        if !self.io.buffer().is_empty() {
            return Err(fail("the server sent data before the TLS handshake".into()));
        }
        let config = match policy {
            OutboundTls::Required => crate::tls::verifying_client(),
            _ => crate::tls::opportunistic_client(),
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| fail(format!("bad server name {host}: {e}")))?;
        let Some(tcp) = self.io.get_mut().take_plain() else {
            return Err(fail("already encrypted".into()));
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
        let tls = tokio::time::timeout(REPLY_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| fail("handshake timed out".into()))?
            .map_err(|e| fail(e.to_string()))?;
        self.io = BufReader::new(Conn::ClientTls(Box::new(tls)));
        self.tls = true;
        Ok(())
    }

    fn trace_level(&self) -> u8 {
        self.trace.load(Ordering::Relaxed)
    }

    /// Writes commands (traced at level 2 as `C:` lines).
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.trace_level() >= 2 {
            for l in String::from_utf8_lossy(data).lines() {
                tracing::info!(peer = %self.peer, "C: {l}");
            }
        }
        self.write_raw(data).await
    }

    /// Writes the dot-stuffed content (each line traced at level 3).
    async fn write_content(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.trace_level() >= 3 {
            for l in data.split(|&b| b == b'\n') {
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                tracing::info!(peer = %self.peer, "C: {}", String::from_utf8_lossy(l));
            }
        }
        self.write_raw(data).await
    }

    async fn write_raw(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.io.get_mut().write_all(data).await?;
        self.io.get_mut().flush().await
    }

    /// Reads one reply: the reply and its raw text lines.
    async fn read_reply(&mut self, wait: Duration) -> std::io::Result<(Reply, Vec<String>)> {
        let mut lines = Vec::new();
        let code;
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(
                wait,
                AsyncReadExt::take(&mut self.io, 4096).read_line(&mut line),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out waiting for a reply",
                )
            })??;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "lost connection",
                ));
            }
            let l = line.trim_end();
            if self.trace_level() >= 2 {
                tracing::info!(peer = %self.peer, "S: {l}");
            }
            let c: u16 = l.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            if !(200..=599).contains(&c) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad reply line {l:?}"),
                ));
            }
            lines.push(l.get(4..).unwrap_or("").to_string());
            if l.as_bytes().get(3) != Some(&b'-') {
                code = c;
                break;
            }
        }
        let text = lines.join(" ");
        Ok((Reply { code, text }, lines))
    }

    fn detail(&self, reply: &Reply, stage: &str) -> Detail {
        Detail {
            status: reply.status(),
            text: format!(
                "host {} said: {} (in reply to {stage})",
                self.peer,
                reply.line()
            ),
            remote_mta: Some(self.peer_name.clone()),
            smtp_reply: Some(reply.line()),
            peer: Some(self.peer.to_string()),
        }
    }

    fn result(&self, reply: &Reply, stage: &str) -> Outcome {
        let d = self.detail(reply, stage);
        match reply.code {
            200..=299 => Outcome::Delivered(d),
            400..=499 => Outcome::TempFail(d),
            _ => Outcome::PermFail(d),
        }
    }

    /// Carries one transaction. `Err` means the connection broke before any
    /// result was final; the caller may retry on another connection.
    pub async fn send(&mut self, t: &Transaction<'_>) -> Result<Vec<(usize, Outcome)>, String> {
        let all = |o: Outcome| {
            t.rcpts
                .iter()
                .map(|r| (r.index, o.clone()))
                .collect::<Vec<_>>()
        };
        if t.smtputf8 && !self.ext.smtputf8 {
            return Ok(all(Outcome::perm(
                "5.6.7",
                format!(
                    "host {} does not support SMTPUTF8, which the message needs",
                    self.peer
                ),
            )));
        }
        // RFC 6152 §3: 8-bit mail for a peer without 8BITMIME is converted
        // to 7 bits; and no line over 998 characters goes to any peer
        // (RFC 5321 §4.5.3.1.6, as Postfix's `smtp_line_length_limit`): the
        // parts concerned are re-encoded, nothing of the content is lost.
        let converted;
        let mut content: &[u8] = t.content;
        let eight = t.body_8bit || !content.is_ascii();
        if (eight && !self.ext.eightbitmime) || downgrade::has_long_line(content) {
            let keep_8bit = self.ext.eightbitmime;
            // CPU work in proportion to the size: a large message is
            // converted off the delivery arbiter's thread.
            let result = if content.len() > DOWNGRADE_INLINE {
                let owned = content.to_vec();
                tokio::task::spawn_blocking(move || downgrade::downgrade(&owned, keep_8bit))
                    .await
                    .map_err(|e| format!("the conversion failed: {e}"))?
            } else {
                downgrade::downgrade(content, keep_8bit)
            };
            match result {
                Ok(c) => {
                    converted = c;
                    content = &converted;
                }
                Err(e) => {
                    return Ok(all(Outcome::perm(
                        "5.6.3",
                        format!(
                            "host {} does not support 8BITMIME, and the message cannot be converted: {e}",
                            self.peer
                        ),
                    )));
                }
            }
        }
        let body_8bit = self.ext.eightbitmime && (t.body_8bit || !content.is_ascii());
        if let Some(limit) = self.ext.size
            && limit > 0
            && content.len() as u64 > limit
        {
            return Ok(all(Outcome::perm(
                "5.3.4",
                format!(
                    "message size {} exceeds the limit {limit} of host {}",
                    content.len(),
                    self.peer
                ),
            )));
        }
        let peer = self.peer.clone();
        let io_err = |e: std::io::Error| format!("lost connection with {peer}: {}", io_text(&e));
        let mut cmds: Vec<(String, &str)> = Vec::new();
        if self.used {
            cmds.push(("RSET\r\n".into(), "RSET"));
        }
        let mut mail = format!("MAIL FROM:<{}>", t.sender);
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={}", content.len()));
        }
        if body_8bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if t.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.ext.dsn {
            match t.ret {
                Some(Ret::Full) => mail.push_str(" RET=FULL"),
                Some(Ret::Hdrs) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(e) = t.envid {
                mail.push_str(&format!(" ENVID={}", xtext_encode(e)));
            }
        }
        cmds.push((format!("{mail}\r\n"), "MAIL FROM"));
        for r in t.rcpts {
            let mut rcpt = format!("RCPT TO:<{}>", r.address);
            if self.ext.dsn {
                if r.notify != 0 {
                    let mut words = Vec::new();
                    for (bit, w) in [
                        (notify::NEVER, "NEVER"),
                        (notify::SUCCESS, "SUCCESS"),
                        (notify::FAILURE, "FAILURE"),
                        (notify::DELAY, "DELAY"),
                    ] {
                        if r.notify & bit != 0 {
                            words.push(w);
                        }
                    }
                    rcpt.push_str(&format!(" NOTIFY={}", words.join(",")));
                }
                if let Some(o) = &r.orcpt {
                    rcpt.push_str(&format!(" ORCPT=rfc822;{}", xtext_encode(o)));
                }
            }
            cmds.push((format!("{rcpt}\r\n"), "RCPT TO"));
        }
        cmds.push(("DATA\r\n".into(), "DATA"));
        self.used = true;

        // With PIPELINING, everything up to DATA goes in one write
        // (RFC 2920 §3.1); otherwise one command at a time.
        let mut replies = Vec::with_capacity(cmds.len());
        if self.ext.pipelining {
            let batch: String = cmds.iter().map(|(c, _)| c.as_str()).collect();
            self.write(batch.as_bytes()).await.map_err(io_err)?;
            for _ in &cmds {
                replies.push(self.read_reply(REPLY_TIMEOUT).await.map_err(io_err)?.0);
            }
        } else {
            for (i, (c, _)) in cmds.iter().enumerate() {
                self.write(c.as_bytes()).await.map_err(io_err)?;
                let r = self.read_reply(REPLY_TIMEOUT).await.map_err(io_err)?.0;
                let stop = r.code >= 400 && (cmds[i].1 == "MAIL FROM" || cmds[i].1 == "RSET");
                replies.push(r);
                if stop {
                    break;
                }
            }
        }
        let mut idx = 0;
        if cmds[0].1 == "RSET" {
            let r = &replies[0];
            if r.code != 250 {
                return Err(format!("host {} refused RSET: {}", self.peer, r.line()));
            }
            idx = 1;
        }
        let mail_reply = replies[idx].clone();
        if mail_reply.code != 250 {
            // With pipelining the RCPT and DATA replies were read too; they
            // are errors that follow from this one.
            return Ok(all(self.result(&mail_reply, "MAIL FROM command")));
        }
        let mut out = Vec::with_capacity(t.rcpts.len());
        let mut accepted = Vec::new();
        for (k, r) in t.rcpts.iter().enumerate() {
            let reply = match replies.get(idx + 1 + k) {
                Some(x) => x.clone(),
                None => return Err("missing RCPT reply".into()),
            };
            if reply.code == 250 || reply.code == 251 {
                accepted.push(r.index);
            } else {
                out.push((r.index, self.result(&reply, "RCPT TO command")));
            }
        }
        let data_reply = match replies.get(idx + 1 + t.rcpts.len()) {
            Some(r) => r.clone(),
            None => return Ok(out),
        };
        if accepted.is_empty() {
            // DATA must have failed (no valid recipients); nothing to send.
            return Ok(out);
        }
        if data_reply.code != 354 {
            let o = self.result(&data_reply, "DATA command");
            out.extend(accepted.iter().map(|i| (*i, o.clone())));
            return Ok(out);
        }
        let mut body = Vec::with_capacity(content.len() + content.len() / 50 + 5);
        dot_stuff(content, &mut body);
        body.extend_from_slice(b".\r\n");
        self.write_content(&body).await.map_err(io_err)?;
        let end = self.read_reply(DATA_END_TIMEOUT).await.map_err(io_err)?.0;
        let o = self.result(&end, "end of DATA command");
        out.extend(accepted.iter().map(|i| (*i, o.clone())));
        Ok(out)
    }

    /// Address verification (as Postfix's `reject_unverified_recipient`):
    /// `MAIL FROM:<>` and `RCPT TO:<address>`, never DATA, then RSET so the
    /// connection could carry more. Returns the reply to RCPT; `Err` when
    /// the connection broke or the peer refused the null sender (then
    /// nothing is known about the address).
    pub async fn probe_rcpt(&mut self, address: &str) -> Result<Reply, String> {
        let peer = self.peer.clone();
        let io_err = |e: std::io::Error| format!("lost connection with {peer}: {}", io_text(&e));
        let utf8 = !address.is_ascii();
        if utf8 && !self.ext.smtputf8 {
            return Err(format!("host {} does not support SMTPUTF8", self.peer));
        }
        let mail = if utf8 {
            "MAIL FROM:<> SMTPUTF8\r\n"
        } else {
            "MAIL FROM:<>\r\n"
        };
        self.write(mail.as_bytes()).await.map_err(io_err)?;
        let m = self.read_reply(REPLY_TIMEOUT).await.map_err(io_err)?.0;
        if m.code != 250 {
            return Err(format!(
                "host {} refused MAIL FROM:<>: {}",
                self.peer,
                m.line()
            ));
        }
        self.write(format!("RCPT TO:<{address}>\r\n").as_bytes())
            .await
            .map_err(io_err)?;
        let r = self.read_reply(REPLY_TIMEOUT).await.map_err(io_err)?.0;
        self.write(b"RSET\r\n").await.map_err(io_err)?;
        self.read_reply(REPLY_TIMEOUT).await.map_err(io_err)?;
        Ok(r)
    }

    /// Says QUIT and closes.
    pub async fn quit(mut self) -> std::io::Result<()> {
        self.write(b"QUIT\r\n").await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.read_reply(REPLY_TIMEOUT)).await;
        self.io.get_mut().shutdown().await
    }
}

/// Dot-stuffs CRLF content (RFC 5321 §4.5.2) and makes sure it ends in CRLF.
pub fn dot_stuff(content: &[u8], out: &mut Vec<u8>) {
    out.reserve(content.len() + 2);
    // Copies whole stretches between the dots that start a line: most
    // messages have none, and the copy is then one `extend`.
    let mut from = 0;
    if content.first() == Some(&b'.') {
        out.push(b'.');
    }
    for lf in memchr::memchr_iter(b'\n', content) {
        if content.get(lf + 1) == Some(&b'.') {
            out.extend_from_slice(&content[from..=lf]);
            out.push(b'.');
            from = lf + 1;
        }
    }
    out.extend_from_slice(&content[from..]);
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_doubles_leading_dots() {
        let mut out = Vec::new();
        dot_stuff(b".a\r\nb.\r\n.\r\n..c", &mut out);
        assert_eq!(out, b"..a\r\nb.\r\n..\r\n...c\r\n");
    }

    /// The byte-at-a-time definition, for comparison.
    fn dot_stuff_slowly(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at_line_start = true;
        for &b in content {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            at_line_start = b == b'\n';
        }
        if !content.is_empty() && !content.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn dot_stuffing_matches_its_definition(
            content in proptest::collection::vec(
                proptest::sample::select(vec![b'.', b'\r', b'\n', b'a']),
                0..64,
            )
        ) {
            let mut out = Vec::new();
            dot_stuff(&content, &mut out);
            proptest::prop_assert_eq!(out, dot_stuff_slowly(&content));
        }
    }

    #[test]
    fn status_comes_from_the_reply_or_its_class() {
        let r = Reply {
            code: 550,
            text: "5.1.1 no such user".into(),
        };
        assert_eq!(r.status(), "5.1.1");
        let r = Reply {
            code: 451,
            text: "try later".into(),
        };
        assert_eq!(r.status(), "4.0.0");
    }
}
