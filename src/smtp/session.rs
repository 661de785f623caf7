//! One SMTP session (RFC 5321): the state machine from greeting to QUIT,
//! the inbound policy at each stage, and the DATA reader.
//!
//! Replies are buffered and written when the client has nothing more
//! pipelined (RFC 2920), and always before the session waits for input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::SmtpShared;
use super::command::{self, Command, MailFrom};
use super::data::DataScanner;
use super::line::{Ending, Line, memchr_lf, read_line};
use super::reply::Reply;
use crate::config::{AuthMode, Config, Listener, Protocol, TlsMode};
use crate::conn::Conn;
use crate::intake::{Envelope, EnvelopeRcpt};
use crate::policy;
use crate::session::sasl;
use crate::shutdown::Signal;
use crate::spool::StoreError;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF.
const COMMAND_LIMIT: usize = 512;
/// Octets of an over-long command line read and dropped before closing.
const COMMAND_DISCARD: usize = 64 * 1024;
/// RFC 5321 §6.3: a message that has crossed this many hosts is looping.
const MAX_HOPS: usize = 50;

/// How a session ended.
enum Flow {
    Continue,
    Close,
}

/// The transaction between MAIL and the end of DATA.
struct Transaction {
    mail: MailFrom,
    rcpts: Vec<EnvelopeRcpt>,
    /// RCPT commands refused, to tell "no valid recipients" from "no RCPT".
    refused: usize,
    /// Every RCPT command of this transaction, for `max_recipients`.
    rcpt_commands: usize,
}

/// One client connection.
pub struct Session {
    stream: BufReader<Conn>,
    out: Vec<u8>,
    shared: Arc<SmtpShared>,
    config: Arc<Config>,
    listener: Listener,
    peer: SocketAddr,
    /// `[ip]`, used in logs and `Received:`.
    client: String,
    helo: Option<String>,
    esmtp: bool,
    tx: Option<Transaction>,
    errors: u32,
    signal: Signal,
    /// The login name after a successful AUTH.
    user: Option<String>,
    /// The client's forward-confirmed host name, looked up only when a
    /// host pattern needs it.
    client_name: Option<String>,
    auth_failures: crate::session::login::Backoff,
    /// SPF of the current transaction's MAIL FROM, for DMARC after DATA.
    spf: Option<mail_auth::SpfOutput>,
}

impl Session {
    /// A session over an accepted connection (already TLS for implicit-TLS
    /// listeners).
    pub fn new(
        stream: Conn,
        shared: Arc<SmtpShared>,
        listener: Listener,
        peer: SocketAddr,
        signal: Signal,
    ) -> Session {
        let config = shared.config.load_full();
        Session {
            stream: BufReader::with_capacity(16 * 1024, stream),
            out: Vec::with_capacity(1024),
            shared,
            config,
            listener,
            peer,
            client: format!("[{}]", crate::config::canonical_ip(peer.ip())),
            helo: None,
            esmtp: false,
            tx: None,
            errors: 0,
            signal,
            user: None,
            auth_failures: Default::default(),
            client_name: None,
            spf: None,
        }
    }

    /// RFC 5321 §4.5.3.2: a client that stays silent too long is told so
    /// and disconnected.
    fn timeout_reply(&self) -> Reply {
        Reply::new(
            421,
            "4.4.2",
            format!("{} Error: timeout exceeded", self.config.server.hostname),
        )
    }

    fn tls_active(&self) -> bool {
        self.stream.get_ref().is_tls()
    }

    /// Whether AUTH may be offered and used now (RFC 4954 §4: not before
    /// TLS unless plaintext authentication is allowed).
    fn auth_allowed(&self) -> bool {
        self.listener.auth != AuthMode::Off
            && (self.tls_active() || self.config.inbound.allow_plaintext_auth)
    }

    fn debug(&self) -> u8 {
        self.shared.debug.load(Ordering::Relaxed)
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        let _session =
            crate::metrics::get().session(self.listener.protocol.as_str(), self.tls_active());
        if self.debug() >= 1 {
            tracing::info!(client = %self.client, listener = %self.listener.name, "connect");
        }
        let inbound = &self.config.inbound;
        let needs_name = inbound
            .allow_connections_from
            .iter()
            .chain(&inbound.deny_connections_from)
            .chain(&inbound.relay_from)
            .any(|p| p.needs_name());
        if needs_name {
            let lookup = self
                .shared
                .dns
                .verified_name(crate::config::canonical_ip(self.peer.ip()));
            self.client_name = tokio::time::timeout(std::time::Duration::from_secs(10), lookup)
                .await
                .ok()
                .flatten();
        }
        if let Some(refusal) = self.connection_refusal() {
            self.reject("connect", &refusal);
            self.send(refusal);
            let _ = self.flush().await;
            return;
        }
        if !self.relay_client()
            && let Some(refusal) = policy::dnsbl::at_connect(
                &self.shared.dns.resolver(),
                &self.shared.rates,
                &self.config,
                crate::config::canonical_ip(self.peer.ip()),
            )
            .await
        {
            self.reject("connect", &refusal);
            self.send(refusal);
            let _ = self.flush().await;
            return;
        }
        let greeting = Reply::new(
            220,
            "",
            format!("{} ESMTP petrel", self.config.server.hostname),
        );
        self.send(greeting);
        loop {
            match self.step().await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => break,
                Err(e) => {
                    tracing::debug!(client = %self.client, error = %e, "connection error");
                    break;
                }
            }
        }
        let _ = self.flush().await;
        let _ = self.stream.get_mut().shutdown().await;
        if self.debug() >= 1 {
            tracing::info!(client = %self.client, listener = %self.listener.name, "disconnect");
        }
    }

    /// `554 5.7.1` at greeting for clients the connection lists refuse.
    fn connection_refusal(&self) -> Option<Reply> {
        super::policy::connection(
            &self.config,
            &crate::policy::denylist::current(),
            self.peer.ip(),
            self.client_name.as_deref(),
        )
        .err()
        .map(|r| r.reply)
    }

    fn send(&mut self, reply: Reply) {
        if reply.is_error() {
            self.errors += 1;
        }
        let wire = reply.to_wire();
        if self.debug() >= 2 {
            for l in wire.lines() {
                tracing::info!(client = %self.client, "S: {l}");
            }
        }
        self.out.extend_from_slice(wire.as_bytes());
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.get_mut().write_all(&self.out).await?;
            self.stream.get_mut().flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    fn reject(&self, stage: &str, reply: &Reply) {
        let sender = self.tx.as_ref().map(|t| t.mail.address.clone());
        self.reject_with(stage, reply, sender, None);
    }

    /// Logs a refusal and records it in the message history.
    fn reject_with(
        &self,
        stage: &str,
        reply: &Reply,
        sender: Option<String>,
        recipient: Option<String>,
    ) {
        let reason = reply.lines.join(" ");
        tracing::info!(client = %self.client, stage = %stage, code = reply.code, reason = %reason, "rejected");
        crate::metrics::get().reject(stage, reply.code);
        crate::history::record(
            None,
            crate::history::EventKind::Rejected {
                client: self.client.clone(),
                listener: self.listener.name.clone(),
                stage: stage.to_string(),
                code: reply.code,
                reason,
                sender,
                recipient,
            },
        );
    }

    /// Reads a line, flushing replies first when nothing more is pipelined.
    /// `None`: the stop began while waiting.
    async fn next_line(
        &mut self,
        limit: usize,
        discard: usize,
        wait: std::time::Duration,
    ) -> std::io::Result<Option<Line>> {
        let buffered = self.stream.buffer();
        if buffered.is_empty() {
            self.flush().await?;
        } else if memchr_lf(buffered).is_some() {
            // A whole line is already read: take it without arming a timer
            // or watching the stop signal (this cannot wait). DATA of a
            // large message is mostly this.
            return read_line(&mut self.stream, limit, discard).await.map(Some);
        }
        let mut signal = self.signal.clone();
        tokio::select! {
            r = tokio::time::timeout(wait, read_line(&mut self.stream, limit, discard)) => match r {
                Ok(line) => line.map(Some),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout")),
            },
            _ = signal.triggered() => Ok(None),
        }
    }

    /// Reads a command line: a bare LF does not end it (`Line::absorb`).
    async fn next_command(&mut self, wait: std::time::Duration) -> std::io::Result<Option<Line>> {
        let Some(mut line) = self.next_line(COMMAND_LIMIT, COMMAND_DISCARD, wait).await? else {
            return Ok(None);
        };
        while line.ending == Ending::BareLf {
            let Some(next) = self.next_line(COMMAND_LIMIT, COMMAND_DISCARD, wait).await? else {
                return Ok(None);
            };
            if !line.absorb(next, COMMAND_LIMIT + COMMAND_DISCARD) {
                break;
            }
        }
        Ok(Some(line))
    }

    async fn step(&mut self) -> std::io::Result<Flow> {
        let wait = self.config.inbound.command_timeout;
        let line = match self.next_command(wait).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                self.send(Reply::new(
                    421,
                    "4.3.2",
                    format!(
                        "{} Service shutting down, closing connection",
                        self.config.server.hostname
                    ),
                ));
                return Ok(Flow::Close);
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.send(self.timeout_reply());
                return Ok(Flow::Close);
            }
            Err(e) => return Err(e),
        };
        if line.ending == Ending::Eof {
            if line.too_long {
                self.send(Reply::new(500, "5.5.2", "Error: line too long"));
            }
            return Ok(Flow::Close);
        }
        if self.debug() >= 2 {
            tracing::info!(client = %self.client, "C: {}", masked(&line.bytes));
        }
        let reply = if line.too_long {
            Some(Reply::new(500, "5.5.2", "Error: line too long"))
        } else if line.ending == Ending::BareLf {
            Some(Reply::new(
                500,
                "5.5.2",
                "Error: bare <LF> received; commands must end with <CR><LF>",
            ))
        } else if line.bare_cr {
            Some(Reply::new(500, "5.5.2", "Error: bare <CR> received"))
        } else {
            None
        };
        let flow = match reply {
            Some(r) => {
                self.send(r);
                Flow::Continue
            }
            None => match command::parse(&line.bytes) {
                Ok(cmd) => self.execute(cmd).await?,
                Err(r) => {
                    self.send(r);
                    Flow::Continue
                }
            },
        };
        if matches!(flow, Flow::Continue) && self.errors >= self.config.inbound.max_errors {
            self.send(Reply::new(
                421,
                "4.7.0",
                format!("{} Error: too many errors", self.config.server.hostname),
            ));
            return Ok(Flow::Close);
        }
        Ok(flow)
    }

    async fn execute(&mut self, cmd: Command) -> std::io::Result<Flow> {
        match cmd {
            Command::Ehlo(name) => {
                self.helo = Some(name);
                self.esmtp = true;
                self.tx = None;
                let mut lines = vec![
                    self.config.server.hostname.clone(),
                    "PIPELINING".into(),
                    format!("SIZE {}", self.config.inbound.max_message_size),
                    "8BITMIME".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "SMTPUTF8".into(),
                    "DSN".into(),
                ];
                if self.listener.tls == TlsMode::Starttls
                    && !self.tls_active()
                    && self.shared.tls.is_some()
                {
                    lines.push("STARTTLS".into());
                }
                if self.auth_allowed() && self.user.is_none() {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                self.send(Reply {
                    code: 250,
                    status: "",
                    lines,
                });
            }
            Command::Helo(name) => {
                self.helo = Some(name);
                self.esmtp = false;
                self.tx = None;
                self.send(Reply::new(250, "", self.config.server.hostname.clone()));
            }
            Command::Mail(mail) => match self.mail_checks(&mail).await {
                Some(r) => {
                    self.reject("MAIL", &r);
                    self.send(r)
                }
                None => self.mail(mail),
            },
            Command::Rcpt(rcpt) => match self.rate(policy::rate::Event::Recipient) {
                Some(r) => {
                    self.reject("RCPT", &r);
                    self.send(r)
                }
                None => {
                    self.rcpt(EnvelopeRcpt {
                        address: rcpt.address,
                        notify: rcpt.notify,
                        orcpt: rcpt.orcpt,
                    })
                    .await
                }
            },
            Command::Data => return self.data().await,
            Command::Rset => {
                self.tx = None;
                self.send(Reply::new(250, "2.0.0", "Ok"));
            }
            Command::Noop => self.send(Reply::new(250, "2.0.0", "Ok")),
            Command::Quit => {
                self.send(Reply::new(221, "2.0.0", "Bye"));
                return Ok(Flow::Close);
            }
            Command::Help => self.send(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY; see RFC 5321",
            )),
            Command::Vrfy => self.send(Reply::new(
                252,
                "2.0.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Starttls => return self.starttls().await,
            Command::Expn | Command::NotImplemented(_) => {
                self.send(Reply::new(502, "5.5.1", "Error: command not implemented"))
            }
            Command::Auth(arg) => return self.auth(&arg).await,
        }
        Ok(Flow::Continue)
    }

    /// The rate limit of an untrusted client for `event`.
    fn rate(&self, event: policy::rate::Event) -> Option<Reply> {
        if self.tx.is_none() && event == policy::rate::Event::Recipient || self.relay_client() {
            return None;
        }
        let ip = crate::config::canonical_ip(self.peer.ip());
        self.shared
            .rates
            .check(ip, event, &self.config.inbound.rate_limits)
    }

    /// The client as the authentication checks see it.
    fn auth_client(&self, sender: &str) -> policy::auth_results::Client {
        policy::auth_results::Client {
            ip: crate::config::canonical_ip(self.peer.ip()),
            helo: self.helo.clone().unwrap_or_default(),
            sender: sender.to_string(),
        }
    }

    /// The policy hooks of MAIL for an untrusted client: the message rate,
    /// then SPF (kept for DMARC; a refusal when enforced and failed).
    async fn mail_checks(&mut self, mail: &MailFrom) -> Option<Reply> {
        if self.helo.is_none() || self.tx.is_some() {
            return None;
        }
        self.spf = None;
        if let Some(r) = self.rate(policy::rate::Event::Message) {
            return Some(r);
        }
        if self.relay_client() {
            return None;
        }
        let client = self.auth_client(&mail.address);
        let spf =
            policy::auth_results::spf(&self.shared.dns.resolver(), &self.config, &client).await?;
        let refusal = policy::auth_results::spf_refusal(&self.config, &client, &spf);
        self.spf = Some(spf);
        refusal
    }

    fn mail(&mut self, mail: MailFrom) {
        if self.helo.is_none() {
            return self.send(Reply::new(503, "5.5.1", "Error: send HELO/EHLO first"));
        }
        if self.tx.is_some() {
            return self.send(Reply::new(503, "5.5.1", "Error: nested MAIL command"));
        }
        let params = super::policy::MailParams {
            esmtp: self.esmtp,
            size: mail.size,
            body_8bit: mail.body_8bit,
            smtputf8: mail.smtputf8,
        };
        if let Err(r) = super::policy::mail(
            &self.config,
            &crate::policy::denylist::current(),
            &self.listener,
            self.user.as_deref(),
            &mail.address,
            params,
        ) {
            // A protocol error (parameters after HELO) is no policy refusal.
            if r.reply.code != 555 {
                self.reject_with("MAIL", &r.reply, Some(mail.address.clone()), None);
            }
            return self.send(r.reply);
        }
        self.tx = Some(Transaction {
            mail,
            rcpts: Vec::new(),
            refused: 0,
            rcpt_commands: 0,
        });
        self.send(Reply::new(250, "2.1.0", "Ok"));
    }

    /// Whether the client may relay (authenticated, or a `relay_from`
    /// entry): `smtp::policy::relay_client`.
    fn relay_client(&self) -> bool {
        super::policy::relay_client(
            &self.config,
            self.peer.ip(),
            self.client_name.as_deref(),
            self.user.as_deref(),
        )
        .is_some()
    }

    /// The RCPT policy (`policy::rcpt`) for this session's client.
    fn rcpt_policy(&self, address: &str) -> Result<(), Reply> {
        let relay = super::policy::relay_client(
            &self.config,
            self.peer.ip(),
            self.client_name.as_deref(),
            self.user.as_deref(),
        );
        super::policy::rcpt(&self.config, address, relay.as_ref())
            .map(|_| ())
            .map_err(|r| r.reply)
    }

    async fn rcpt(&mut self, mut rcpt: EnvelopeRcpt) {
        if rcpt.address == command::BARE_POSTMASTER {
            rcpt.address = format!("postmaster@{}", self.config.domains.primary);
        }
        let address = rcpt.address.clone();
        let Some(tx) = &self.tx else {
            return self.send(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        };
        if !tx.mail.smtputf8 && !address.is_ascii() {
            return self.send(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII recipient address needs SMTPUTF8 in MAIL FROM",
            ));
        }
        // The limit counts every RCPT the client sends, duplicates and
        // refused ones too: it bounds the client's work, not the list.
        let count = tx.rcpt_commands;
        if let Some(tx) = &mut self.tx {
            tx.rcpt_commands += 1;
        }
        if count >= self.config.inbound.max_recipients {
            let r = Reply::new(452, "4.5.3", "Error: too many recipients");
            let sender = self.tx.as_ref().map(|t| t.mail.address.clone());
            self.reject_with("RCPT", &r, sender, Some(address.clone()));
            return self.send(r);
        }
        let Some(tx) = &self.tx else { return };
        if tx
            .rcpts
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(&address))
        {
            return self.send(Reply::new(250, "2.1.5", "Ok"));
        }
        let verdict = match self.rcpt_policy(&address) {
            Ok(()) => {
                let shared = &self.shared;
                shared
                    .verify
                    .rcpt(&self.config, &shared.dns, &address)
                    .await
            }
            refused => refused,
        };
        match verdict {
            Ok(()) => {
                if let Some(tx) = &mut self.tx {
                    tx.rcpts.push(rcpt);
                }
                self.send(Reply::new(250, "2.1.5", "Ok"));
            }
            Err(r) => {
                if let Some(tx) = &mut self.tx {
                    tx.refused += 1;
                }
                let sender = self.tx.as_ref().map(|t| t.mail.address.clone());
                self.reject_with("RCPT", &r, sender, Some(address.clone()));
                self.send(r);
            }
        }
    }

    async fn data(&mut self) -> std::io::Result<Flow> {
        let Some(tx) = self.tx.as_ref() else {
            self.send(Reply::new(503, "5.5.1", "Error: need MAIL command"));
            return Ok(Flow::Continue);
        };
        if tx.rcpts.is_empty() {
            let r = if tx.refused > 0 {
                Reply::new(554, "5.5.1", "Error: no valid recipients")
            } else {
                Reply::new(503, "5.5.1", "Error: need RCPT command")
            };
            self.send(r);
            return Ok(Flow::Continue);
        }
        // A spool without room refuses at once, before the client sends
        // the message (RFC 5321 §4.2.5 / RFC 3463 4.3.1).
        if let Err(e) = self.shared.intake.check_space() {
            let r = store_reply(&self.client, &e);
            self.reject("DATA", &r);
            self.send(r);
            self.tx = None;
            return Ok(Flow::Continue);
        }
        self.send(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        let max = self.config.inbound.max_message_size;
        let wait = self.config.inbound.data_timeout;
        // The content goes to the spool as it arrives, a chunk at a time;
        // `None` once the message is refused (too large, bare CR/LF, the
        // spool failed): its chunks are removed and the rest is read and
        // dropped.
        let mut writer = Some(self.shared.intake.begin());
        let mut store_error: Option<crate::spool::StoreError> = None;
        let mut scan = DataScanner::new();
        let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut stopping = false;
        loop {
            if self.stream.buffer().is_empty() {
                self.flush().await?;
                let mut signal = self.signal.clone();
                let read = if stopping {
                    // Stop during DATA: keep reading; the drain limit bounds it.
                    tokio::time::timeout(wait, self.stream.fill_buf())
                        .await
                        .map(|r| r.map(|b| b.len()))
                } else {
                    tokio::select! {
                        r = tokio::time::timeout(wait, self.stream.fill_buf()) => r.map(|r| r.map(|b| b.len())),
                        _ = signal.triggered() => {
                            stopping = true;
                            continue;
                        }
                    }
                };
                match read {
                    Ok(Ok(0)) => {
                        tracing::info!(client = %self.client, "lost connection during DATA; nothing stored");
                        return Ok(Flow::Close);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        self.send(self.timeout_reply());
                        return Ok(Flow::Close);
                    }
                }
            }
            let input = self.stream.buffer();
            let (used, end) = scan.feed(input, &mut out);
            if self.debug() >= 3 {
                for l in String::from_utf8_lossy(&input[..used]).lines() {
                    tracing::info!(client = %self.client, "C: {l}");
                }
            }
            self.stream.consume(used);
            if scan.bad_ending || scan.size > max {
                writer = None;
            }
            if let Some(w) = &mut writer
                && let Err(e) = w.write(&out)
            {
                store_error = Some(e);
                writer = None;
            }
            out.clear();
            if end {
                break;
            }
        }
        let tx = self.tx.take().expect("checked at the start of DATA");
        let refusal = if scan.bad_ending {
            Some(Reply::new(
                550,
                "5.6.0",
                "Message refused: bare <CR> or <LF> in message; lines must end with <CR><LF>",
            ))
        } else if scan.size > max {
            Some(Reply::new(552, "5.3.4", "Message size exceeds fixed limit"))
        } else if scan.headers.received > MAX_HOPS {
            Some(Reply::new(
                554,
                "5.4.6",
                "Too many hops: mail loop detected",
            ))
        } else {
            store_error.as_ref().map(|e| store_reply(&self.client, e))
        };
        let writer = match (refusal, writer) {
            (None, Some(w)) => w,
            (r, _) => {
                let r =
                    r.unwrap_or_else(|| Reply::new(451, "4.3.0", "Error: queue file write error"));
                self.reject("DATA", &r);
                self.send(r);
                return Ok(Flow::Continue);
            }
        };
        let id = writer.id();
        let mut prefix = self.received_header(&tx, id).into_bytes();
        let mut message_id = scan.headers.message_id.take();
        if self.listener.protocol == Protocol::Submission {
            // RFC 6409 §8.2, §8.3: a submission server may add these.
            if !scan.headers.date {
                prefix.extend_from_slice(
                    format!("Date: {}\r\n", chrono::Local::now().to_rfc2822()).as_bytes(),
                );
            }
            if message_id.is_none() {
                let value = format!("<{id}@{}>", self.config.server.hostname);
                prefix.extend_from_slice(format!("Message-ID: {value}\r\n").as_bytes());
                message_id = Some(value);
            }
        }
        let trusted = self.relay_client();
        let (writer, prefix) = match self.authenticate(&tx, trusted, writer, prefix).await {
            Ok(w) => w,
            Err(r) => {
                self.reject("DATA", &r);
                self.send(r);
                return Ok(Flow::Continue);
            }
        };
        let env = Envelope {
            id: Some(id),
            sender: tx.mail.address,
            recipients: tx.rcpts,
            client: self.client.clone(),
            listener: self.listener.name.clone(),
            envid: tx.mail.envid,
            ret: tx.mail.ret,
            body_8bit: tx.mail.body_8bit,
            smtputf8: tx.mail.smtputf8,
            trusted,
        };
        let reply = match self
            .shared
            .intake
            .accept_stream(&self.config, env, writer, &prefix, message_id)
            .await
        {
            Ok(msg) => Reply::new(250, "2.0.0", format!("Ok: queued as {}", msg.id)),
            Err(e) => store_reply(&self.client, &e),
        };
        self.send(reply);
        Ok(Flow::Continue)
    }

    /// The authentication hook after DATA (`policy::auth_results`): forged
    /// results removed, then for an untrusted client SPF/DKIM/DMARC/ARC,
    /// whose headers go in front of `prefix`. The body is read back from
    /// the spool for it (the verifier needs the whole message); one with
    /// forged results is written again without them, under a new queue
    /// id. `Err`: the reply refusing the message.
    async fn authenticate(
        &mut self,
        tx: &Transaction,
        trusted: bool,
        writer: crate::spool::ContentWriter,
        prefix: Vec<u8>,
    ) -> Result<(crate::spool::ContentWriter, Vec<u8>), Reply> {
        let checks = &self.config.inbound.checks;
        let checked = !trusted
            && [checks.spf, checks.dkim, checks.dmarc, checks.arc]
                .iter()
                .any(|m| *m != crate::config::CheckMode::Off);
        let host = &self.config.server.hostname;
        let strip = |c: &[u8]| {
            if trusted {
                policy::auth_results::strip_forged_results(c, host)
            } else {
                policy::auth_results::strip_own_results(c, host)
            }
        };
        // Forged results are looked for in the first chunk (the header
        // section, unless it is longer); only then, or for the checks, is
        // the whole body read back.
        let head = writer.head().map_err(|e| store_reply(&self.client, &e))?;
        let forged = strip(&head).is_some();
        drop(head);
        if !forged && !checked {
            return Ok((writer, prefix));
        }
        let body = writer.body().map_err(|e| store_reply(&self.client, &e))?;
        let (writer, mut prefix, body) = match strip(&body) {
            None => (writer, prefix, body),
            Some(clean) => {
                let old = writer.id().to_string();
                drop(writer);
                let mut w = self.shared.intake.begin();
                w.write(&clean).map_err(|e| store_reply(&self.client, &e))?;
                let prefix = String::from_utf8_lossy(&prefix)
                    .replace(&old, &w.id().to_string())
                    .into_bytes();
                (w, prefix, clean)
            }
        };
        if !checked {
            return Ok((writer, prefix));
        }
        let recipients = tx.rcpts.iter().map(|r| r.address.clone()).collect();
        let verdict = policy::auth_results::inbound(
            &self.shared.dns.resolver(),
            self.config.clone(),
            self.auth_client(&tx.mail.address),
            self.spf.take(),
            recipients,
            [prefix.as_slice(), &body].concat(),
        )
        .await;
        if let Some(r) = verdict.refusal {
            return Err(r);
        }
        if verdict.junk {
            tracing::info!(queue_id = %writer.id(), client = %self.client, "dmarc: quarantine (to Junk)");
        }
        prefix.splice(0..0, verdict.headers.into_bytes());
        Ok((writer, prefix))
    }

    /// The trace header (RFC 5321 §4.4).
    fn received_header(&self, tx: &Transaction, id: crate::spool::QueueId) -> String {
        let helo = self.helo.as_deref().unwrap_or("unknown");
        // RFC 3848 / RFC 6531 protocol names.
        let with = match (
            self.esmtp,
            tx.mail.smtputf8,
            self.tls_active(),
            self.user.is_some(),
        ) {
            (false, ..) => "SMTP".to_string(),
            (true, utf8, tls, auth) => format!(
                "{}ESMTP{}{}",
                if utf8 { "UTF8" } else { "" },
                if tls { "S" } else { "" },
                if auth { "A" } else { "" }
            ),
        };
        let for_clause = match tx.rcpts.as_slice() {
            [one] => format!("\r\n\tfor <{}>", one.address),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ({name} {client})\r\n\tby {host} (petrel) with {with} id {id}{for_clause};\r\n\t{date}\r\n",
            name = self.client_name.as_deref().unwrap_or("unknown"),
            client = self.client,
            host = self.config.server.hostname,
            date = chrono::Local::now().to_rfc2822(),
        )
    }
}

/// The reply to a message the spool could not take: `452 4.3.1` when it
/// is full (or below its reserve), `451 4.3.0` for any other failure
/// (SPEC: nothing half-stored either way).
fn store_reply(client: &str, e: &StoreError) -> Reply {
    match e {
        StoreError::Unsigned(_) => {
            tracing::error!(client = %client, error = %e, "not queued");
            Reply::new(
                451,
                "4.7.0",
                "Error: message could not be DKIM-signed; try again later",
            )
        }
        StoreError::Full(_) => {
            tracing::error!(client = %client, error = %e, "spool full");
            Reply::new(452, "4.3.1", "Insufficient system storage")
        }
        _ => {
            tracing::error!(client = %client, error = %e, "spool write failed");
            Reply::new(451, "4.3.0", "Error: queue file write error")
        }
    }
}

/// A command line for the trace, with AUTH secrets masked.
fn masked(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(verb), Some(mech)) if verb.eq_ignore_ascii_case("AUTH") => {
            format!("{verb} {mech} ****")
        }
        _ => text.into_owned(),
    }
}

impl Session {
    /// RFC 3207: upgrade to TLS. Anything the client pipelined after
    /// STARTTLS is discarded, never executed inside TLS (CVE-2011-0411), and
    /// the session starts over (no HELO, no transaction).
    async fn starttls(&mut self) -> std::io::Result<Flow> {
        let offered = self.listener.tls == TlsMode::Starttls && self.shared.tls.is_some();
        if !offered {
            self.send(Reply::new(502, "5.5.1", "Error: command not implemented"));
            return Ok(Flow::Continue);
        }
        if self.tls_active() {
            self.send(Reply::new(554, "5.5.1", "Error: TLS already active"));
            return Ok(Flow::Continue);
        }
        let pipelined = self.stream.buffer().len();
        self.send(Reply::new(220, "2.0.0", "Ready to start TLS"));
        self.flush().await?;
        if pipelined > 0 {
            tracing::info!(client = %self.client, octets = pipelined, "discarded input pipelined after STARTTLS");
        }
        let Some(cfg) = self.shared.tls.get() else {
            return Ok(Flow::Close);
        };
        let Some(tcp) = self.stream.get_mut().take_plain() else {
            return Ok(Flow::Close);
        };
        // A new reader drops whatever was buffered.
        match crate::conn::accept_tls(tcp, cfg, &self.client).await {
            Some(tls) => {
                self.stream = BufReader::with_capacity(16 * 1024, tls);
                crate::metrics::get().tls_session(self.listener.protocol.as_str());
                self.helo = None;
                self.esmtp = false;
                self.tx = None;
                if self.debug() >= 1 {
                    tracing::info!(client = %self.client, tls = %self.stream.get_ref().tls_summary().unwrap_or_default(), "TLS established");
                }
                Ok(Flow::Continue)
            }
            None => {
                self.stream = BufReader::new(Conn::Closed);
                Ok(Flow::Close)
            }
        }
    }

    /// Reads one SASL response line; `None` when the client cancelled with
    /// `*` (RFC 4954 §4) or the line was unusable.
    async fn sasl_line(&mut self, challenge: &str) -> std::io::Result<Result<Vec<u8>, Reply>> {
        self.send(Reply {
            code: 334,
            status: "",
            lines: vec![challenge.to_string()],
        });
        let wait = self.config.inbound.command_timeout;
        let line = match self.next_command(wait).await? {
            Some(l) => l,
            None => return Ok(Err(Reply::new(421, "4.3.2", "Service shutting down"))),
        };
        if self.debug() >= 2 {
            tracing::info!(client = %self.client, "C: ****");
        }
        if line.ending != Ending::Crlf || line.too_long || line.bare_cr {
            return Ok(Err(Reply::new(
                501,
                "5.5.2",
                "Error: malformed authentication response",
            )));
        }
        Ok(sasl::decode(&line.bytes).map_err(sasl_reply))
    }

    /// RFC 4954 AUTH with PLAIN (RFC 4616) or LOGIN.
    async fn auth(&mut self, arg: &str) -> std::io::Result<Flow> {
        if self.listener.auth == AuthMode::Off {
            self.send(Reply::new(
                503,
                "5.5.1",
                "Error: authentication not enabled",
            ));
            return Ok(Flow::Continue);
        }
        if !self.auth_allowed() {
            self.send(Reply::new(
                530,
                "5.7.0",
                "Must issue a STARTTLS command first",
            ));
            return Ok(Flow::Continue);
        }
        if self.helo.is_none() || !self.esmtp {
            self.send(Reply::new(503, "5.5.1", "Error: send EHLO first"));
            return Ok(Flow::Continue);
        }
        if self.user.is_some() {
            self.send(Reply::new(503, "5.5.1", "Error: already authenticated"));
            return Ok(Flow::Continue);
        }
        if self.tx.is_some() {
            self.send(Reply::new(
                503,
                "5.5.1",
                "Error: AUTH not permitted during a mail transaction",
            ));
            return Ok(Flow::Continue);
        }
        let mut words = arg.split_whitespace();
        let mech = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next();
        if words.next().is_some() {
            self.send(Reply::new(
                501,
                "5.5.4",
                "Syntax: AUTH mechanism [initial-response]",
            ));
            return Ok(Flow::Continue);
        }
        let credentials: Result<(String, String), Reply> = match mech.as_str() {
            "PLAIN" => {
                let raw = match initial {
                    Some(i) => sasl::decode(i.as_bytes()).map_err(sasl_reply),
                    None => self.sasl_line("").await?,
                };
                raw.and_then(|raw| sasl::plain(&raw).map_err(sasl_reply))
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => sasl::decode(i.as_bytes()).map_err(sasl_reply),
                    None => self.sasl_line("VXNlcm5hbWU6").await?,
                };
                match user {
                    Ok(u) => match self.sasl_line("UGFzc3dvcmQ6").await? {
                        Ok(p) => Ok((
                            String::from_utf8_lossy(&u).into_owned(),
                            String::from_utf8_lossy(&p).into_owned(),
                        )),
                        Err(r) => Err(r),
                    },
                    Err(r) => Err(r),
                }
            }
            "" => Err(Reply::new(
                501,
                "5.5.4",
                "Syntax: AUTH mechanism [initial-response]",
            )),
            _ => Err(Reply::new(504, "5.5.4", "Unrecognized authentication type")),
        };
        let (login, password) = match credentials {
            Ok(c) => c,
            Err(r) => {
                let close = r.code == 421;
                self.send(r);
                return Ok(if close { Flow::Close } else { Flow::Continue });
            }
        };
        let ok = crate::session::login::verify(&self.config, &login, &password)
            .await
            .map(|u| u.name);
        match ok {
            Some(name) => {
                tracing::info!(client = %self.client, user = %name, mechanism = %mech, "authenticated");
                self.user = Some(name);
                self.send(Reply::new(235, "2.7.0", "Authentication successful"));
                Ok(Flow::Continue)
            }
            None => {
                // Slow down guessing: 1 s, 2 s, 3 s, then goodbye.
                let close = self
                    .auth_failures
                    .failed(&self.client, "SMTP", &mech, &login)
                    .await;
                let r = Reply::new(535, "5.7.8", "Authentication credentials invalid");
                self.reject("AUTH", &r);
                self.send(r);
                if close {
                    self.send(Reply::new(
                        421,
                        "4.7.0",
                        format!(
                            "{} Error: too many failed authentications",
                            self.config.server.hostname
                        ),
                    ));
                    return Ok(Flow::Close);
                }
                Ok(Flow::Continue)
            }
        }
    }
}

/// The SMTP reply to an unusable SASL response (RFC 4954 §4, §6).
fn sasl_reply(e: sasl::SaslError) -> Reply {
    match e {
        sasl::SaslError::Cancelled => Reply::new(501, "5.7.0", "Authentication aborted"),
        sasl::SaslError::Base64 => {
            Reply::new(501, "5.5.2", "Error: cannot decode the response (base64)")
        }
        sasl::SaslError::Authz => Reply::new(535, "5.7.8", "Authentication credentials invalid"),
        sasl::SaslError::Malformed => Reply::new(501, "5.5.2", "Error: malformed PLAIN response"),
    }
}
