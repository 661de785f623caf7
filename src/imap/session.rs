//! One IMAP session (RFC 9051 and RFC 3501; the extensions in
//! `CAPABILITIES`): not authenticated → authenticated → selected.
//!
//! The selected folder's view — message sequence numbers, the UIDs and
//! flags the client was told — lives here; the store knows nothing of it.
//! After each command the session asks the store what changed since the
//! MODSEQ it last saw and tells the client: EXPUNGE (or VANISHED under
//! QRESYNC), EXISTS, FETCH FLAGS. Expunges wait while a FETCH, STORE or
//! SEARCH runs (RFC 9051 §7.5.1), so numbers never shift under them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::broadcast;

use super::ImapShared;
use super::fetch;
use super::parser::{self, Command, FetchItem, ListReturn, SeqSet, StatusItem, StoreOp, Tagged};
use super::reader::{self, Input};
use super::search::{self, SearchKey};
use crate::config::{Config, Listener, TlsMode};
use crate::conn::Conn;
use crate::directory::User;
use crate::session::limits::Slot;
use crate::session::{login, sasl};
use crate::shutdown::Signal;
use crate::store::{
    Append, ChangeEvent, FlagChange, FlagOp, FolderId, FolderInfo, MessageMeta, NewContent,
    StoreError, flags,
};

/// BAD replies after which the session is closed.
const MAX_BAD: u32 = 20;
/// Output buffered before it is written out mid-command (large FETCHes).
const FLUSH_AT: usize = 256 * 1024;

/// The name of the namespace of mail-in boxes (SPEC: `Shared/<name>`).
const SHARED: &str = "Shared";

/// The selected folder as this session has shown it.
struct Selected {
    account: String,
    folder: FolderId,
    read_only: bool,
    /// Index = sequence number − 1.
    messages: Vec<MessageMeta>,
    /// The HIGHESTMODSEQ the view is up to date with.
    modseq: u64,
    /// Expunges seen while they could not be told.
    pending_vanished: Vec<u32>,
}

impl Selected {
    fn index_of(&self, uid: u32) -> Option<usize> {
        self.messages.binary_search_by_key(&uid, |m| m.uid).ok()
    }

    fn max_uid(&self) -> u32 {
        self.messages.last().map_or(0, |m| m.uid)
    }
}

/// One client connection.
pub struct Session {
    stream: BufReader<Conn>,
    out: Vec<u8>,
    shared: Arc<ImapShared>,
    config: Arc<Config>,
    listener: Listener,
    client: String,
    signal: Signal,
    user: Option<User>,
    _user_slot: Option<Slot<String>>,
    selected: Option<Selected>,
    watch: Option<broadcast::Receiver<ChangeEvent>>,
    /// RFC 6855 UTF8=ACCEPT enabled.
    utf8: bool,
    /// RFC 7162 CONDSTORE enabled (explicitly or by first use).
    condstore: bool,
    /// RFC 7162 QRESYNC enabled.
    qresync: bool,
    /// RFC 9051 enabled with `ENABLE IMAP4rev2`.
    rev2: bool,
    /// RFC 5182: the UIDs the last `SEARCH RETURN (SAVE)` kept.
    saved: Vec<u32>,
    bad: u32,
    auth_failures: login::Backoff,
}

enum Flow {
    Continue,
    Close,
}

type Io<T> = std::io::Result<T>;

/// A NO with its response code, from a store error.
fn store_no(e: &StoreError) -> String {
    match e {
        StoreError::NotFound(_) => format!("[NONEXISTENT] {e}"),
        StoreError::Exists(_) => format!("[ALREADYEXISTS] {e}"),
        StoreError::Refused(_) => format!("[CANNOT] {e}"),
        StoreError::OverQuota(_) => format!("[OVERQUOTA] {e}"),
        StoreError::Unavailable(_) => format!("[UNAVAILABLE] {e}"),
        StoreError::Corrupt(_) => format!("[SERVERBUG] {e}"),
    }
}

/// `FLAGS (…)` text of a message.
fn flag_list(m: &MessageMeta) -> String {
    let mut v: Vec<&str> = Vec::new();
    for (bit, name) in [
        (flags::SEEN, "\\Seen"),
        (flags::ANSWERED, "\\Answered"),
        (flags::FLAGGED, "\\Flagged"),
        (flags::DELETED, "\\Deleted"),
        (flags::DRAFT, "\\Draft"),
    ] {
        if m.flags & bit != 0 {
            v.push(name);
        }
    }
    v.extend(m.keywords.iter().map(String::as_str));
    format!("({})", v.join(" "))
}

/// Flags as the client wrote them → system bits and keywords.
fn parse_flags(list: &[String]) -> Result<(u16, Vec<String>), String> {
    let (mut bits, mut words) = (0u16, Vec::new());
    for f in list {
        match f.to_ascii_lowercase().as_str() {
            "\\seen" => bits |= flags::SEEN,
            "\\answered" => bits |= flags::ANSWERED,
            "\\flagged" => bits |= flags::FLAGGED,
            "\\deleted" => bits |= flags::DELETED,
            "\\draft" => bits |= flags::DRAFT,
            "\\recent" => {}
            other if other.starts_with('\\') => return Err(format!("unknown system flag {f}")),
            _ => {
                if !words.iter().any(|w: &String| w.eq_ignore_ascii_case(f)) {
                    words.push(f.clone());
                }
            }
        }
    }
    Ok((bits, words))
}

/// A sorted list of numbers as a sequence set (`1:3,7`).
fn compress(nums: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < nums.len() {
        let start = nums[i];
        let mut end = start;
        while i + 1 < nums.len() && nums[i + 1] == end + 1 {
            i += 1;
            end = nums[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// LIST pattern matching (RFC 9051 §6.3.9): `*` matches anything, `%`
/// anything but the delimiter.
fn wildcard(pattern: &[char], name: &[char]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => (0..=name.len()).any(|i| wildcard(rest, &name[i..])),
        Some(('%', rest)) => {
            let stop = name.iter().position(|&c| c == '/').unwrap_or(name.len());
            (0..=stop).any(|i| wildcard(rest, &name[i..]))
        }
        Some((c, rest)) => name.first() == Some(c) && wildcard(rest, &name[1..]),
    }
}

/// `INBOX` at the start of a name or pattern in its one spelling.
fn canonical_inbox(name: &str) -> String {
    if name.len() >= 5
        && name[..5].eq_ignore_ascii_case("INBOX")
        && (name.len() == 5 || name.as_bytes()[5] == b'/')
    {
        format!("INBOX{}", &name[5..])
    } else {
        name.to_string()
    }
}

impl Session {
    /// A session over an accepted connection.
    pub fn new(
        conn: Conn,
        shared: Arc<ImapShared>,
        listener: Listener,
        peer: SocketAddr,
        signal: Signal,
    ) -> Session {
        let config = shared.config.load_full();
        Session {
            stream: BufReader::with_capacity(16 * 1024, conn),
            out: Vec::with_capacity(4096),
            shared,
            config,
            listener,
            client: format!("[{}]", crate::config::canonical_ip(peer.ip())),
            signal,
            user: None,
            _user_slot: None,
            selected: None,
            watch: None,
            utf8: false,
            condstore: false,
            qresync: false,
            rev2: false,
            saved: Vec::new(),
            bad: 0,
            auth_failures: Default::default(),
        }
    }

    fn untagged(&mut self, text: &str) {
        self.out.extend_from_slice(b"* ");
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn tagged(&mut self, tag: &str, status: &str, text: &str) {
        if status == "BAD" {
            self.bad += 1;
        }
        self.out
            .extend_from_slice(format!("{tag} {status} {text}\r\n").as_bytes());
    }

    async fn flush(&mut self) -> Io<()> {
        if !self.out.is_empty() {
            self.stream.get_mut().write_all(&self.out).await?;
            self.stream.get_mut().flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn flush_if_full(&mut self) -> Io<()> {
        if self.out.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    fn is_tls(&self) -> bool {
        self.stream.get_ref().is_tls()
    }

    fn login_allowed(&self) -> bool {
        self.is_tls() || self.config.imap.allow_plaintext_auth
    }

    fn capabilities(&self) -> String {
        let mut c = vec!["IMAP4rev1", "IMAP4rev2"];
        if self.user.is_none() {
            if self.listener.tls == TlsMode::Starttls && !self.is_tls() && self.shared.tls.is_some()
            {
                c.push("STARTTLS");
            }
            if self.login_allowed() {
                c.push("AUTH=PLAIN");
            } else {
                c.push("LOGINDISABLED");
            }
        }
        c.extend([
            "SASL-IR",
            "LITERAL+",
            "ID",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "UNSELECT",
            "CHILDREN",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "SPECIAL-USE",
            "ESEARCH",
            "SEARCHRES",
            "MOVE",
            "UIDPLUS",
            "CONDSTORE",
            "QRESYNC",
            "BINARY",
            "STATUS=SIZE",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "UTF8=ACCEPT",
        ]);
        if self.user.is_some() && !self.stream.get_ref().is_compressed() {
            c.push("COMPRESS=DEFLATE");
        }
        c.join(" ")
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        let _session = crate::metrics::get().session("imap", self.is_tls());
        let greeting = format!(
            "OK [CAPABILITY {}] {} IMAP server ready",
            self.capabilities(),
            self.config.server.hostname
        );
        self.untagged(&greeting);
        loop {
            match self.step().await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) | Err(_) => break,
            }
            if self.bad >= MAX_BAD {
                self.untagged("BYE too many bad commands; closing");
                break;
            }
        }
        let _ = self.flush().await;
        let _ = self.stream.get_mut().shutdown().await;
        if let Some(u) = &self.user {
            tracing::info!(client = %self.client, user = %u.name, "IMAP logout");
        }
    }

    async fn step(&mut self) -> Io<Flow> {
        if self.stream.buffer().is_empty() {
            self.flush().await?;
        }
        let wait = if self.user.is_some() {
            self.config.imap.idle_timeout
        } else {
            self.config.imap.login_timeout
        };
        let max = self.config.inbound.max_message_size;
        let mut signal = self.signal.clone();
        let input = tokio::select! {
            r = tokio::time::timeout(wait, reader::read_command(&mut self.stream, max)) => match r {
                Ok(i) => i?,
                Err(_) => {
                    self.untagged("BYE idle for too long; closing");
                    return Ok(Flow::Close);
                }
            },
            _ = signal.triggered() => {
                self.untagged("BYE [UNAVAILABLE] server shutting down");
                return Ok(Flow::Close);
            }
        };
        let raw = match input {
            Input::Eof => return Ok(Flow::Close),
            Input::TooBigClose => {
                self.untagged("BYE [TOOBIG] literal too large; closing");
                return Ok(Flow::Close);
            }
            Input::TooBig(line) => {
                let tag = parser::tag_of(&line);
                self.tagged(&tag, "NO", "[TOOBIG] literal too large");
                return Ok(Flow::Continue);
            }
            Input::LineTooLong(line) => {
                let tag = parser::tag_of(&line);
                self.tagged(&tag, "BAD", "line too long");
                return Ok(Flow::Continue);
            }
            Input::Command(c) => c,
        };
        if raw.is_empty() {
            return Ok(Flow::Continue);
        }
        let cmd = match parser::parse(&raw) {
            Ok(c) => c,
            Err((tag, e)) => {
                if e.starts_with("[BADCHARSET") {
                    self.tagged(&tag, "NO", &e);
                } else {
                    self.tagged(&tag, "BAD", &e);
                }
                return Ok(Flow::Continue);
            }
        };
        let flow = self.dispatch(cmd).await?;
        Ok(flow)
    }

    async fn dispatch(&mut self, t: Tagged) -> Io<Flow> {
        let tag = t.tag.clone();
        // Commands any state accepts.
        match &t.command {
            Command::Capability => {
                let c = format!("CAPABILITY {}", self.capabilities());
                self.untagged(&c);
                self.sync(true).await;
                self.tagged(&tag, "OK", "CAPABILITY completed");
                return Ok(Flow::Continue);
            }
            Command::Noop | Command::Check => {
                self.sync(true).await;
                self.tagged(&tag, "OK", "NOOP completed");
                return Ok(Flow::Continue);
            }
            Command::Logout => {
                self.untagged("BYE logging out");
                self.tagged(&tag, "OK", "LOGOUT completed");
                return Ok(Flow::Close);
            }
            Command::Id => {
                self.untagged("ID (\"name\" \"petrel\")");
                self.tagged(&tag, "OK", "ID completed");
                return Ok(Flow::Continue);
            }
            _ => {}
        }
        if self.user.is_none() {
            return self.not_authenticated(t).await;
        }
        let needs_selected = matches!(
            t.command,
            Command::Close
                | Command::Unselect
                | Command::Expunge(_)
                | Command::Search { .. }
                | Command::Fetch { .. }
                | Command::Store { .. }
                | Command::Copy { .. }
        );
        if needs_selected && self.selected.is_none() {
            self.tagged(&tag, "BAD", "no mailbox selected");
            return Ok(Flow::Continue);
        }
        let uid = t.uid;
        let expunges_ok = !matches!(
            t.command,
            Command::Fetch { .. } | Command::Store { .. } | Command::Search { .. }
        ) || uid;
        let result = match t.command {
            Command::Compress(algorithm) => return self.compress(&tag, &algorithm).await,
            Command::StartTls | Command::Login { .. } | Command::Authenticate { .. } => {
                Err(("BAD", "already authenticated".to_string()))
            }
            Command::Enable(caps) => {
                self.enable(&caps);
                Ok("ENABLE completed".to_string())
            }
            Command::Select {
                mailbox,
                read_only,
                condstore,
                qresync,
            } => self.select(&mailbox, read_only, condstore, qresync).await,
            Command::Create(m) => self.create(&m).await,
            Command::Delete(m) => self.delete(&m).await,
            Command::Rename(a, b) => self.rename(&a, &b).await,
            Command::Subscribe(m, on) => self.subscribe(&m, on).await,
            Command::List {
                reference,
                patterns,
                subscribed_only,
                lsub,
                ret,
            } => {
                self.list(&reference, &patterns, subscribed_only, lsub, &ret)
                    .await
            }
            Command::Namespace => {
                let shared = if login::readable(&self.config, &self.user_name()).is_empty() {
                    "NIL".to_string()
                } else {
                    format!("((\"{SHARED}/\" \"/\"))")
                };
                self.untagged(&format!("NAMESPACE ((\"\" \"/\")) NIL {shared}"));
                Ok("NAMESPACE completed".into())
            }
            Command::Status(m, items) => self.status(&m, &items).await,
            Command::Append {
                mailbox,
                flags,
                date,
                message,
            } => self.append(&mailbox, &flags, date, message).await,
            Command::Idle => return self.idle(&tag).await,
            Command::Close => {
                if let Some(sel) = self.selected.take()
                    && !sel.read_only
                    && let Err(e) = self.shared.store.expunge(sel.folder, None, true).await
                {
                    self.selected = Some(sel);
                    Err(("NO", store_no(&e)))
                } else {
                    Ok("CLOSE completed".into())
                }
            }
            Command::Unselect => {
                self.selected = None;
                Ok("UNSELECT completed".into())
            }
            Command::Expunge(set) => self.expunge(set.as_ref(), uid).await,
            Command::Search { keys, ret } => self.search(&tag, &keys, ret, uid).await,
            Command::Fetch {
                set,
                items,
                changed_since,
                vanished,
            } => self.fetch(&set, &items, changed_since, vanished, uid).await,
            Command::Store {
                set,
                unchanged_since,
                op,
                silent,
                flags,
            } => {
                self.store(&set, unchanged_since, op, silent, &flags, uid)
                    .await
            }
            Command::Copy {
                set,
                mailbox,
                move_,
            } => self.copy(&set, &mailbox, move_, uid).await,
            Command::GetQuota(root) => self.get_quota(&root).await,
            Command::GetQuotaRoot(m) => self.get_quota_root(&m).await,
            Command::SetQuota => Err(("NO", "[NOPERM] quotas are set in the configuration".into())),
            Command::Capability
            | Command::Noop
            | Command::Check
            | Command::Logout
            | Command::Id => {
                unreachable!("handled above")
            }
        };
        self.sync(expunges_ok).await;
        match result {
            Ok(text) => self.tagged(&tag, "OK", &text),
            Err((status, text)) => self.tagged(&tag, status, &text),
        }
        Ok(Flow::Continue)
    }

    // ----- not authenticated -------------------------------------------

    async fn not_authenticated(&mut self, t: Tagged) -> Io<Flow> {
        let tag = t.tag;
        match t.command {
            Command::StartTls => return self.starttls(&tag).await,
            Command::Login { .. } | Command::Authenticate { .. } if !self.login_allowed() => {
                self.tagged(
                    &tag,
                    "NO",
                    "[PRIVACYREQUIRED] logging in needs TLS here: use STARTTLS first",
                );
            }
            Command::Login { user, password } => {
                let (u, p) = (
                    String::from_utf8_lossy(&user).into_owned(),
                    String::from_utf8_lossy(&password).into_owned(),
                );
                return self.login(&tag, &u, &p, "LOGIN").await;
            }
            Command::Authenticate { mechanism, initial } => {
                return self.authenticate(&tag, &mechanism, initial).await;
            }
            _ => self.tagged(&tag, "BAD", "log in first"),
        }
        Ok(Flow::Continue)
    }

    async fn starttls(&mut self, tag: &str) -> Io<Flow> {
        if self.listener.tls != TlsMode::Starttls || self.shared.tls.is_none() || self.is_tls() {
            self.tagged(tag, "BAD", "STARTTLS not available");
            return Ok(Flow::Continue);
        }
        if !self.stream.buffer().is_empty() {
            // RFC 9051 §6.2.1: nothing may follow STARTTLS before the
            // handshake; pipelined plaintext would be injected into TLS.
            self.tagged(tag, "BAD", "data after STARTTLS; closing");
            return Ok(Flow::Close);
        }
        self.tagged(tag, "OK", "begin TLS negotiation now");
        self.flush().await?;
        let Some(tcp) = self.stream.get_mut().take_plain() else {
            return Ok(Flow::Close);
        };
        let Some(cfg) = self.shared.tls.get() else {
            return Ok(Flow::Close);
        };
        match crate::conn::accept_tls(tcp, cfg, &self.client).await {
            Some(tls) => {
                self.stream = BufReader::with_capacity(16 * 1024, tls);
                crate::metrics::get().tls_session("imap");
                Ok(Flow::Continue)
            }
            None => {
                self.stream = BufReader::new(Conn::Closed);
                Ok(Flow::Close)
            }
        }
    }

    /// COMPRESS DEFLATE (RFC 4978): the tagged OK goes out as it is, and
    /// everything after it both ways is deflated.
    async fn compress(&mut self, tag: &str, algorithm: &str) -> Io<Flow> {
        if self.stream.get_ref().is_compressed() {
            self.tagged(tag, "NO", "[COMPRESSIONACTIVE] DEFLATE is on already");
            return Ok(Flow::Continue);
        }
        if algorithm != "DEFLATE" {
            self.tagged(tag, "BAD", "unknown algorithm; DEFLATE is offered");
            return Ok(Flow::Continue);
        }
        if !self.stream.buffer().is_empty() {
            // The client must wait for the OK (RFC 4978 §3); what it sent
            // after COMPRESS cannot be told apart from compressed data.
            self.tagged(tag, "BAD", "data after COMPRESS; closing");
            return Ok(Flow::Close);
        }
        self.tagged(tag, "OK", "DEFLATE active");
        self.flush().await?;
        self.stream.get_mut().start_deflate();
        Ok(Flow::Continue)
    }

    async fn authenticate(
        &mut self,
        tag: &str,
        mechanism: &str,
        initial: Option<Vec<u8>>,
    ) -> Io<Flow> {
        if !mechanism.eq_ignore_ascii_case("PLAIN") {
            self.tagged(tag, "NO", "unsupported mechanism; PLAIN is offered");
            return Ok(Flow::Continue);
        }
        let response = match initial {
            Some(r) => r,
            None => {
                self.out.extend_from_slice(b"+ \r\n");
                self.flush().await?;
                let wait = self.config.imap.login_timeout;
                let line = tokio::time::timeout(
                    wait,
                    crate::smtp::line::read_line(&mut self.stream, 8192, 8192),
                )
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout"))??;
                line.bytes
            }
        };
        match sasl::decode(&response).and_then(|raw| sasl::plain(&raw)) {
            Ok((u, p)) => self.login(tag, &u, &p, "PLAIN").await,
            Err(sasl::SaslError::Cancelled) => {
                self.tagged(tag, "BAD", "authentication cancelled");
                Ok(Flow::Continue)
            }
            Err(sasl::SaslError::Authz) => self.login_failed(tag, "PLAIN", "").await,
            Err(_) => {
                self.tagged(tag, "BAD", "malformed AUTHENTICATE response");
                Ok(Flow::Continue)
            }
        }
    }

    async fn login_failed(&mut self, tag: &str, mechanism: &str, login: &str) -> Io<Flow> {
        let close = self
            .auth_failures
            .failed(&self.client, "IMAP", mechanism, login)
            .await;
        self.tagged(
            tag,
            "NO",
            "[AUTHENTICATIONFAILED] invalid user name or password",
        );
        if close {
            self.untagged("BYE too many failed logins");
            return Ok(Flow::Close);
        }
        Ok(Flow::Continue)
    }

    async fn login(&mut self, tag: &str, name: &str, password: &str, mechanism: &str) -> Io<Flow> {
        let Some(user) = login::verify(&self.config, name, password).await else {
            return self.login_failed(tag, mechanism, name).await;
        };
        let Some(slot) = self.shared.users.try_take(
            user.name.clone(),
            usize::MAX,
            self.config.imap.max_connections_per_user,
        ) else {
            tracing::info!(client = %self.client, user = %user.name, stage = %"IMAP login", reason = "too many sessions for the user", "rejected");
            self.tagged(tag, "NO", "[LIMIT] too many sessions for this user");
            return Ok(Flow::Continue);
        };
        if let Err(e) = self.shared.store.ensure_account(&user.name).await {
            tracing::error!(user = %user.name, error = %e, "cannot open the account");
            self.tagged(tag, "NO", &store_no(&e));
            return Ok(Flow::Continue);
        }
        tracing::info!(client = %self.client, user = %user.name, mechanism, "IMAP login");
        self.user = Some(user);
        self._user_slot = Some(slot);
        self.watch = Some(self.shared.store.watch());
        let caps = format!("[CAPABILITY {}] logged in", self.capabilities());
        self.tagged(tag, "OK", &caps);
        Ok(Flow::Continue)
    }

    // ----- names ---------------------------------------------------------

    fn user_name(&self) -> String {
        self.user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_default()
    }

    /// A mailbox name from the wire → (account, folder in that account).
    fn resolve(&self, wire: &[u8]) -> Result<(String, String), (&'static str, String)> {
        let name = if self.utf8 {
            String::from_utf8(wire.to_vec()).ok()
        } else {
            super::mutf7::decode(wire)
        }
        .ok_or((
            "BAD",
            "mailbox name is not valid modified UTF-7".to_string(),
        ))?;
        let name = canonical_inbox(name.trim_end_matches('/'));
        if name.is_empty() {
            return Err(("NO", "[CANNOT] empty mailbox name".into()));
        }
        if name == SHARED {
            return Err((
                "NO",
                "[CANNOT] Shared holds the shared mailboxes only".into(),
            ));
        }
        if let Some(rest) = name.strip_prefix("Shared/") {
            let (box_, sub) = rest.split_once('/').unwrap_or((rest, "INBOX"));
            if !login::may_read(&self.config, &self.user_name(), box_) {
                return Err(("NO", format!("[NONEXISTENT] {name} does not exist")));
            }
            return Ok((box_.to_string(), canonical_inbox(sub)));
        }
        Ok((self.user_name(), name))
    }

    /// The name the client sees for a folder of an account, as an IMAP
    /// string.
    fn wire_name(&self, account: &str, folder: &str) -> Vec<u8> {
        self.wire(&self.display(account, folder))
    }

    /// A display name (UTF-8) as an IMAP string: modified UTF-7 unless
    /// the client enabled UTF8=ACCEPT.
    fn wire(&self, name: &str) -> Vec<u8> {
        let text = if self.utf8 {
            name.to_string()
        } else {
            super::mutf7::encode(name)
        };
        let mut out = Vec::new();
        fetch::string(&mut out, text.as_bytes());
        out
    }

    fn quota_of(&self, account: &str) -> Option<u64> {
        self.config
            .directory
            .users
            .iter()
            .find(|u| u.name == account)
            .and_then(|u| u.quota)
    }

    async fn folder_of(&self, wire: &[u8]) -> Result<(String, FolderInfo), (&'static str, String)> {
        let (account, name) = self.resolve(wire)?;
        match self.shared.store.folder(&account, &name).await {
            Ok(Some(f)) => Ok((account, f)),
            Ok(None) => Err(("NO", format!("[NONEXISTENT] {name} does not exist"))),
            Err(e) => Err(("NO", store_no(&e))),
        }
    }

    // ----- authenticated -----------------------------------------------

    fn enable(&mut self, caps: &[String]) {
        let mut on = Vec::new();
        for c in caps {
            match c.as_str() {
                "CONDSTORE" => {
                    self.condstore = true;
                    on.push("CONDSTORE");
                }
                "QRESYNC" => {
                    self.qresync = true;
                    self.condstore = true;
                    on.push("QRESYNC");
                }
                "UTF8=ACCEPT" => {
                    self.utf8 = true;
                    on.push("UTF8=ACCEPT");
                }
                "IMAP4REV2" => {
                    self.rev2 = true;
                    on.push("IMAP4rev2");
                }
                _ => {}
            }
        }
        self.untagged(format!("ENABLED {}", on.join(" ")).trim_end());
    }

    async fn select(
        &mut self,
        wire: &[u8],
        read_only: bool,
        condstore: bool,
        qresync: Option<parser::Qresync>,
    ) -> Result<String, (&'static str, String)> {
        if self.selected.take().is_some() {
            self.untagged("OK [CLOSED] previous mailbox closed");
        }
        if qresync.is_some() && !self.qresync {
            return Err(("BAD", "QRESYNC must be enabled first".into()));
        }
        let (account, info) = self.folder_of(wire).await?;
        let messages = self
            .shared
            .store
            .messages(info.id)
            .await
            .map_err(|e| ("NO", store_no(&e)))?;
        if condstore {
            self.condstore = true;
        }
        let highest = info.highest_modseq.max(1);
        self.untagged("FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)");
        if read_only {
            self.untagged("OK [PERMANENTFLAGS ()] read-only");
        } else {
            self.untagged(
                "OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] flags can change",
            );
        }
        self.untagged(&format!("{} EXISTS", messages.len()));
        if !self.rev2 {
            self.untagged("0 RECENT");
            if let Some(i) = messages.iter().position(|m| m.flags & flags::SEEN == 0) {
                self.untagged(&format!("OK [UNSEEN {}] first unseen", i + 1));
            }
        }
        self.untagged(&format!(
            "OK [UIDVALIDITY {}] UIDs valid",
            info.uid_validity
        ));
        self.untagged(&format!(
            "OK [UIDNEXT {}] predicted next UID",
            info.uid_next
        ));
        self.untagged(&format!("OK [HIGHESTMODSEQ {highest}] highest"));
        if let Some(q) = qresync
            && q.uid_validity == info.uid_validity
        {
            let changes = self
                .shared
                .store
                .changes_since(info.id, q.modseq)
                .await
                .map_err(|e| ("NO", store_no(&e)))?;
            let gone: Vec<u32> = changes
                .vanished
                .into_iter()
                .filter(|u| {
                    q.known
                        .as_ref()
                        .is_none_or(|k| k.contains(*u, u32::MAX - 1))
                })
                .collect();
            if !gone.is_empty() {
                self.untagged(&format!("VANISHED (EARLIER) {}", compress(&gone)));
            }
            for m in &changes.changed {
                if let Ok(i) = messages.binary_search_by_key(&m.uid, |x| x.uid) {
                    let line = format!(
                        "{} FETCH (UID {} FLAGS {} MODSEQ ({}))",
                        i + 1,
                        m.uid,
                        flag_list(m),
                        m.modseq
                    );
                    self.untagged(&line);
                }
            }
        }
        self.selected = Some(Selected {
            account,
            folder: info.id,
            read_only,
            messages,
            modseq: info.highest_modseq,
            pending_vanished: Vec::new(),
        });
        Ok(if read_only {
            "[READ-ONLY] EXAMINE completed".into()
        } else {
            "[READ-WRITE] SELECT completed".into()
        })
    }

    async fn create(&mut self, wire: &[u8]) -> Result<String, (&'static str, String)> {
        let (account, name) = self.resolve(wire)?;
        if name == "INBOX" {
            return Err(("NO", "[ALREADYEXISTS] INBOX exists".into()));
        }
        self.shared
            .store
            .create_folder(&account, &name, None)
            .await
            .map_err(|e| ("NO", store_no(&e)))?;
        Ok("CREATE completed".into())
    }

    async fn delete(&mut self, wire: &[u8]) -> Result<String, (&'static str, String)> {
        let (account, name) = self.resolve(wire)?;
        if name == "INBOX" {
            return Err(("NO", "[CANNOT] INBOX cannot be deleted".into()));
        }
        let info = self
            .shared
            .store
            .folder(&account, &name)
            .await
            .map_err(|e| ("NO", store_no(&e)))?;
        if let (Some(i), Some(s)) = (&info, &self.selected)
            && i.id == s.folder
        {
            self.selected = None;
            self.untagged("OK [CLOSED] the selected mailbox is deleted");
        }
        self.shared
            .store
            .delete_folder(&account, &name)
            .await
            .map_err(|e| ("NO", store_no(&e)))?;
        Ok("DELETE completed".into())
    }

    async fn rename(&mut self, from: &[u8], to: &[u8]) -> Result<String, (&'static str, String)> {
        let (a1, n1) = self.resolve(from)?;
        let (a2, n2) = self.resolve(to)?;
        if a1 != a2 {
            return Err((
                "NO",
                "[CANNOT] cannot rename between mailboxes of different owners".into(),
            ));
        }
        self.shared
            .store
            .rename_folder(&a1, &n1, &n2)
            .await
            .map_err(|e| ("NO", store_no(&e)))?;
        Ok("RENAME completed".into())
    }

    async fn subscribe(&mut self, wire: &[u8], on: bool) -> Result<String, (&'static str, String)> {
        let (account, name) = self.resolve(wire)?;
        let shown = self.display(&account, &name);
        self.shared
            .store
            .set_subscribed(&self.user_name(), &shown, on)
            .await
            .map_err(|e| ("NO", store_no(&e)))?;
        Ok(if on {
            "SUBSCRIBE completed"
        } else {
            "UNSUBSCRIBE completed"
        }
        .into())
    }

    /// The user's view of a folder name, UTF-8 (`Shared/sales/x`).
    fn display(&self, account: &str, folder: &str) -> String {
        if account == self.user_name() {
            folder.to_string()
        } else if folder == "INBOX" {
            format!("{SHARED}/{account}")
        } else {
            format!("{SHARED}/{account}/{folder}")
        }
    }

    /// Every folder the user sees: (display name, account, info).
    async fn visible(&self) -> Result<Vec<(String, String, FolderInfo)>, StoreError> {
        let me = self.user_name();
        let mut all = Vec::new();
        for f in self.shared.store.folders(&me).await? {
            all.push((f.name.clone(), me.clone(), f));
        }
        for m in login::readable(&self.config, &me) {
            for f in self.shared.store.folders(&m).await? {
                all.push((self.display(&m, &f.name), m.clone(), f));
            }
        }
        Ok(all)
    }

    async fn list(
        &mut self,
        reference: &[u8],
        patterns: &[Vec<u8>],
        subscribed_only: bool,
        lsub: bool,
        ret: &ListReturn,
    ) -> Result<String, (&'static str, String)> {
        let verb = if lsub { "LSUB" } else { "LIST" };
        let done = format!("{verb} completed");
        let decode = |b: &[u8]| {
            if self.utf8 {
                String::from_utf8(b.to_vec()).ok()
            } else {
                super::mutf7::decode(b)
            }
        };
        let reference = decode(reference).ok_or(("BAD", "bad reference name".to_string()))?;
        if patterns.len() == 1 && patterns[0].is_empty() {
            self.untagged(&format!("{verb} (\\Noselect) \"/\" \"\""));
            return Ok(done);
        }
        let all = self.visible().await.map_err(|e| ("NO", store_no(&e)))?;
        let subs = self
            .shared
            .store
            .subscriptions(&self.user_name())
            .await
            .map_err(|e| ("NO", store_no(&e)))?;
        // Entries: display name → (info if it exists).
        let mut names: Vec<(String, Option<&FolderInfo>)> =
            all.iter().map(|(n, _, f)| (n.clone(), Some(f))).collect();
        if !login::readable(&self.config, &self.user_name()).is_empty() {
            names.push((SHARED.to_string(), None));
        }
        if subscribed_only {
            names = subs
                .iter()
                .map(|s| (s.clone(), all.iter().find(|(n, _, _)| n == s).map(|x| &x.2)))
                .collect();
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names.dedup_by(|a, b| a.0 == b.0);
        let has_children = |n: &str| {
            let prefix = format!("{n}/");
            all.iter().any(|(x, _, _)| x.starts_with(&prefix))
        };
        let mut lines = Vec::new();
        for pat in patterns {
            let pat = decode(pat).ok_or(("BAD", "bad mailbox pattern".to_string()))?;
            let full = if pat.starts_with('/') || reference.is_empty() {
                pat.clone()
            } else if reference.ends_with('/') {
                format!("{reference}{pat}")
            } else {
                format!("{reference}/{pat}")
            };
            let full: Vec<char> = canonical_inbox(&full).chars().collect();
            for (name, info) in &names {
                let chars: Vec<char> = name.chars().collect();
                if !wildcard(&full, &chars) || lines.iter().any(|(n, _, _)| n == name) {
                    continue;
                }
                let mut attrs: Vec<&str> = Vec::new();
                match info {
                    None if name == SHARED => attrs.push("\\Noselect"),
                    None => attrs.push(if lsub { "\\Noselect" } else { "\\NonExistent" }),
                    Some(_) => {}
                }
                if !lsub {
                    attrs.push(if has_children(name) {
                        "\\HasChildren"
                    } else {
                        "\\HasNoChildren"
                    });
                    if let Some(su) = info.and_then(|i| i.special_use)
                        && !name.starts_with("Shared/")
                    {
                        attrs.push(su.attribute());
                    }
                    if (ret.subscribed || subscribed_only) && subs.iter().any(|s| s == name) {
                        attrs.push("\\Subscribed");
                    }
                }
                lines.push((name.clone(), attrs.join(" "), info.map(|i| i.id)));
            }
        }
        for (name, attrs, id) in lines {
            let wire = self.wire(&name);
            self.out
                .extend_from_slice(format!("* {verb} ({attrs}) \"/\" ").as_bytes());
            self.out.extend_from_slice(&wire);
            self.out.extend_from_slice(b"\r\n");
            if let (Some(items), Some(id)) = (&ret.status, id) {
                match self.shared.store.folder_info(id).await {
                    Ok(info) => self.status_line(&wire, &info, items),
                    Err(e) => tracing::warn!(error = %e, "LIST-STATUS: folder vanished"),
                }
            }
        }
        Ok(done)
    }

    fn status_line(&mut self, wire: &[u8], info: &FolderInfo, items: &[StatusItem]) {
        let v: Vec<String> = items
            .iter()
            .map(|i| match i {
                StatusItem::Messages => format!("MESSAGES {}", info.exists),
                StatusItem::UidNext => format!("UIDNEXT {}", info.uid_next),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", info.uid_validity),
                StatusItem::Unseen => format!("UNSEEN {}", info.unseen),
                StatusItem::Recent => "RECENT 0".to_string(),
                StatusItem::Deleted => format!("DELETED {}", info.deleted),
                StatusItem::Size => format!("SIZE {}", info.size),
                StatusItem::HighestModseq => {
                    format!("HIGHESTMODSEQ {}", info.highest_modseq.max(1))
                }
            })
            .collect();
        self.out.extend_from_slice(b"* STATUS ");
        self.out.extend_from_slice(wire);
        self.out
            .extend_from_slice(format!(" ({})\r\n", v.join(" ")).as_bytes());
    }

    async fn status(
        &mut self,
        wire: &[u8],
        items: &[StatusItem],
    ) -> Result<String, (&'static str, String)> {
        let (account, info) = self.folder_of(wire).await?;
        if items.contains(&StatusItem::HighestModseq) {
            self.condstore = true;
        }
        let name = self.wire_name(&account, &info.name);
        self.status_line(&name, &info, items);
        Ok("STATUS completed".into())
    }

    async fn append(
        &mut self,
        wire: &[u8],
        flag_names: &[String],
        date: Option<i64>,
        message: Vec<u8>,
    ) -> Result<String, (&'static str, String)> {
        let (account, name) = self.resolve(wire)?;
        let (bits, keywords) = parse_flags(flag_names).map_err(|e| ("BAD", e))?;
        match self.shared.store.folder(&account, &name).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(("NO", format!("[TRYCREATE] {name} does not exist"))),
            Err(e) => return Err(("NO", store_no(&e))),
        }
        let append = Append {
            content: NewContent::parse_off_thread(message).await,
            flags: bits,
            keywords,
            internal_date: date,
            quota: self.quota_of(&account),
            queue_id: None,
        };
        let placed = self
            .shared
            .store
            .append(&account, &name, append)
            .await
            .map_err(|e| ("NO", store_no(&e)))?;
        Ok(format!(
            "[APPENDUID {} {}] APPEND completed",
            placed.uid_validity, placed.uid
        ))
    }

    async fn idle(&mut self, tag: &str) -> Io<Flow> {
        self.sync(true).await;
        self.out.extend_from_slice(b"+ idling\r\n");
        self.flush().await?;
        let deadline = tokio::time::Instant::now() + self.config.imap.idle_timeout;
        loop {
            let mut signal = self.signal.clone();
            let folder = self.selected.as_ref().map(|s| s.folder);
            enum Wake {
                Input,
                Change,
                Timeout,
                Stop,
            }
            let wake = {
                let stream = &mut self.stream;
                let watch = &mut self.watch;
                tokio::select! {
                    r = reader::readable(stream) => match r {
                        Ok(true) => Wake::Input,
                        _ => return Ok(Flow::Close),
                    },
                    ev = async {
                        match watch {
                            Some(w) => w.recv().await,
                            None => std::future::pending().await,
                        }
                    } => match ev {
                        Ok(e) if Some(e.folder) == folder => Wake::Change,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => Wake::Change,
                        Err(broadcast::error::RecvError::Closed) => {
                            self.watch = None;
                            continue;
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => Wake::Timeout,
                    _ = signal.triggered() => Wake::Stop,
                }
            };
            match wake {
                Wake::Change => {
                    self.sync(true).await;
                    self.flush().await?;
                }
                Wake::Timeout => {
                    self.untagged("BYE idle for too long; closing");
                    return Ok(Flow::Close);
                }
                Wake::Stop => {
                    self.untagged("BYE [UNAVAILABLE] server shutting down");
                    return Ok(Flow::Close);
                }
                Wake::Input => {
                    let line = crate::smtp::line::read_line(&mut self.stream, 1024, 1024).await?;
                    if line.bytes.eq_ignore_ascii_case(b"DONE") {
                        self.sync(true).await;
                        self.tagged(tag, "OK", "IDLE terminated");
                    } else {
                        self.tagged(tag, "BAD", "expected DONE");
                    }
                    return Ok(Flow::Continue);
                }
            }
        }
    }

    // ----- selected ------------------------------------------------------

    /// Tells the client what changed in the selected folder since it was
    /// last told; expunges only when `expunges_ok`.
    async fn sync(&mut self, expunges_ok: bool) {
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        // Drop events queued while not idling: this sync covers them.
        if let Some(w) = self.watch.as_mut() {
            while w.try_recv().is_ok() {}
        }
        let changes = match self
            .shared
            .store
            .changes_since(sel.folder, sel.modseq)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read changes of the selected folder");
                return;
            }
        };
        sel.pending_vanished.extend(changes.vanished);
        let mut out = Vec::new();
        if expunges_ok && !sel.pending_vanished.is_empty() {
            let mut gone = std::mem::take(&mut sel.pending_vanished);
            gone.sort_unstable();
            gone.dedup();
            let mut told = Vec::new();
            for uid in gone {
                if let Some(i) = sel.index_of(uid) {
                    sel.messages.remove(i);
                    if self.qresync {
                        told.push(uid);
                    } else {
                        out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                    }
                }
            }
            if !told.is_empty() {
                out.extend_from_slice(format!("* VANISHED {}\r\n", compress(&told)).as_bytes());
            }
        }
        let before = sel.messages.len();
        let mut flag_lines = Vec::new();
        for m in changes.changed {
            if m.uid > sel.max_uid() {
                if !sel.pending_vanished.contains(&m.uid) {
                    sel.messages.push(m);
                }
            } else if let Some(i) = sel.index_of(m.uid)
                && m.modseq > sel.messages[i].modseq
            {
                let told_flags =
                    sel.messages[i].flags != m.flags || sel.messages[i].keywords != m.keywords;
                sel.messages[i] = m;
                if told_flags || self.condstore {
                    flag_lines.push(i);
                }
            }
        }
        if sel.messages.len() != before {
            out.extend_from_slice(format!("* {} EXISTS\r\n", sel.messages.len()).as_bytes());
        }
        for i in flag_lines {
            let m = &sel.messages[i];
            let modseq = if self.condstore {
                format!(" MODSEQ ({})", m.modseq)
            } else {
                String::new()
            };
            out.extend_from_slice(
                format!(
                    "* {} FETCH (UID {} FLAGS {}{modseq})\r\n",
                    i + 1,
                    m.uid,
                    flag_list(m)
                )
                .as_bytes(),
            );
        }
        // Expunges not yet told stay in `pending_vanished`.
        sel.modseq = sel.modseq.max(changes.highest_modseq);
        self.out.extend_from_slice(&out);
    }

    /// Indices (0-based) of the messages a set names.
    fn indices(&self, set: &SeqSet, uid: bool) -> Vec<usize> {
        let Some(sel) = &self.selected else {
            return Vec::new();
        };
        if set.is_saved() {
            return self.saved.iter().filter_map(|&u| sel.index_of(u)).collect();
        }
        if uid {
            let max = sel.max_uid();
            sel.messages
                .iter()
                .enumerate()
                .filter(|(_, m)| set.contains(m.uid, max))
                .map(|(i, _)| i)
                .collect()
        } else {
            let n = sel.messages.len() as u32;
            (1..=n)
                .filter(|&i| set.contains(i, n))
                .map(|i| i as usize - 1)
                .collect()
        }
    }

    /// A message-number set that names messages that do not exist is a
    /// BAD (RFC 9051 §6.4.8 leaves UIDs alone).
    fn check_msns(&self, set: &SeqSet, uid: bool) -> Result<(), (&'static str, String)> {
        if uid || set.is_saved() {
            return Ok(());
        }
        let n = self.selected.as_ref().map_or(0, |s| s.messages.len()) as u32;
        let bad = set.0.iter().any(|&(a, b)| {
            (a != parser::STAR && a > n) || (b != parser::STAR && b > n) || (n == 0)
        });
        if bad {
            Err(("BAD", "no such message".into()))
        } else {
            Ok(())
        }
    }

    async fn expunge(
        &mut self,
        set: Option<&SeqSet>,
        uid: bool,
    ) -> Result<String, (&'static str, String)> {
        let uids: Option<Vec<u32>> = set.map(|s| {
            let sel = self.selected.as_ref().expect("selected");
            self.indices(s, uid)
                .iter()
                .map(|&i| sel.messages[i].uid)
                .collect()
        });
        let sel = self.selected.as_ref().expect("selected");
        if sel.read_only {
            return Err(("NO", "[READ-ONLY] the mailbox is open read-only".into()));
        }
        let folder = sel.folder;
        let gone = self
            .shared
            .store
            .expunge(folder, uids.as_deref(), true)
            .await
            .map_err(|e| ("NO", store_no(&e)))?;
        self.tell_expunged(&gone);
        Ok("EXPUNGE completed".into())
    }

    fn tell_expunged(&mut self, gone: &[u32]) {
        let qresync = self.qresync;
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let mut sorted = gone.to_vec();
        sorted.sort_unstable();
        let mut told = Vec::new();
        for uid in sorted {
            if let Some(i) = sel.index_of(uid) {
                sel.messages.remove(i);
                if qresync {
                    told.push(uid);
                } else {
                    self.out
                        .extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                }
            }
        }
        if !told.is_empty() {
            self.out
                .extend_from_slice(format!("* VANISHED {}\r\n", compress(&told)).as_bytes());
        }
    }

    async fn search(
        &mut self,
        tag: &str,
        keys: &SearchKey,
        ret: Option<Vec<String>>,
        uid: bool,
    ) -> Result<String, (&'static str, String)> {
        let (need_summary, need_content) = search::needs(keys);
        let sel = self.selected.as_ref().expect("selected");
        let folder = sel.folder;
        let max_msn = sel.messages.len() as u32;
        let max_uid = sel.max_uid();
        let metas = sel.messages.clone();
        let saved = self.saved.clone();
        let keys = resolve_saved(keys, &saved);
        let mut hits: Vec<(u32, u32, u64)> = Vec::new();
        let summaries = if need_summary {
            let blobs: Vec<_> = metas.iter().map(|m| m.blob).collect();
            self.shared
                .store
                .summaries(&blobs)
                .await
                .map_err(|e| ("NO", store_no(&e)))?
        } else {
            Vec::new()
        };
        for (i, m) in metas.iter().enumerate() {
            let summary = summaries.get(i).cloned().flatten();
            let content = if need_content {
                self.shared.store.read(folder, m.uid, None).await.ok()
            } else {
                None
            };
            let c = search::Candidate {
                msn: i as u32 + 1,
                max_msn,
                max_uid,
                meta: m,
                summary: summary.as_deref(),
                content: content.as_deref(),
            };
            if search::matches(&keys, &c) {
                hits.push((i as u32 + 1, m.uid, m.modseq));
            }
        }
        let nums: Vec<u32> = hits.iter().map(|h| if uid { h.1 } else { h.0 }).collect();
        let uses_modseq = search::uses_modseq(&keys);
        if uses_modseq {
            self.condstore = true;
        }
        let top_modseq = hits.iter().map(|h| h.2).max();
        match ret {
            None => {
                let mut line = String::from("SEARCH");
                for n in &nums {
                    line.push_str(&format!(" {n}"));
                }
                if let (true, Some(m)) = (uses_modseq, top_modseq) {
                    line.push_str(&format!(" (MODSEQ {m})"));
                }
                self.untagged(&line);
            }
            Some(opts) => {
                let opts = if opts.is_empty() {
                    vec!["ALL".to_string()]
                } else {
                    opts
                };
                if opts.iter().any(|o| o == "SAVE") {
                    self.saved = hits.iter().map(|h| h.1).collect();
                }
                let mut line = format!("ESEARCH (TAG \"{tag}\")");
                if uid {
                    line.push_str(" UID");
                }
                for o in &opts {
                    match o.as_str() {
                        "MIN" if !nums.is_empty() => line.push_str(&format!(" MIN {}", nums[0])),
                        "MAX" if !nums.is_empty() => {
                            line.push_str(&format!(" MAX {}", nums[nums.len() - 1]))
                        }
                        "COUNT" => line.push_str(&format!(" COUNT {}", nums.len())),
                        "ALL" if !nums.is_empty() => {
                            line.push_str(&format!(" ALL {}", compress(&nums)))
                        }
                        _ => {}
                    }
                }
                if let (true, Some(m)) = (uses_modseq, top_modseq) {
                    line.push_str(&format!(" MODSEQ {m}"));
                }
                // SAVE alone sends no ESEARCH (RFC 5182 §2.1).
                if !(opts.len() == 1 && opts[0] == "SAVE") {
                    self.untagged(&line);
                }
            }
        }
        Ok("SEARCH completed".into())
    }

    async fn fetch(
        &mut self,
        set: &SeqSet,
        items: &[FetchItem],
        changed_since: Option<u64>,
        vanished: bool,
        uid: bool,
    ) -> Result<String, (&'static str, String)> {
        self.check_msns(set, uid)?;
        if vanished && !(uid && self.qresync && changed_since.is_some()) {
            return Err((
                "BAD",
                "VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE".into(),
            ));
        }
        if changed_since.is_some() || items.contains(&FetchItem::Modseq) {
            self.condstore = true;
        }
        let sel = self.selected.as_ref().expect("selected");
        let (folder, read_only) = (sel.folder, sel.read_only);
        if let (true, Some(since)) = (vanished, changed_since) {
            let max = sel.max_uid();
            let changes = self
                .shared
                .store
                .changes_since(folder, since)
                .await
                .map_err(|e| ("NO", store_no(&e)))?;
            let gone: Vec<u32> = changes
                .vanished
                .into_iter()
                .filter(|&u| set.contains(u, max.max(u)))
                .collect();
            if !gone.is_empty() {
                self.untagged(&format!("VANISHED (EARLIER) {}", compress(&gone)));
            }
        }
        let indices = self.indices(set, uid);
        let needs_summary = items.iter().any(|i| {
            matches!(
                i,
                FetchItem::Envelope
                    | FetchItem::BodyStructure
                    | FetchItem::Body
                    | FetchItem::Section { .. }
                    | FetchItem::Binary { .. }
                    | FetchItem::BinarySize(_)
            )
        });
        let needs_content = items.iter().any(|i| {
            matches!(
                i,
                FetchItem::Section { .. } | FetchItem::Binary { .. } | FetchItem::BinarySize(_)
            )
        });
        let sets_seen = !read_only
            && items.iter().any(|i| {
                matches!(
                    i,
                    FetchItem::Section { peek: false, .. } | FetchItem::Binary { peek: false, .. }
                )
            });
        for i in indices {
            let Some(mut meta) = self
                .selected
                .as_ref()
                .and_then(|s| s.messages.get(i))
                .cloned()
            else {
                continue;
            };
            if changed_since.is_some_and(|c| meta.modseq <= c) {
                continue;
            }
            let summary = if needs_summary {
                match self.shared.store.summary(meta.blob).await {
                    Ok(s) => Some(s),
                    Err(StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(("NO", store_no(&e))),
                }
            } else {
                None
            };
            let content = if needs_content {
                match self.shared.store.read(folder, meta.uid, None).await {
                    Ok(c) => Some(c),
                    // Expunged by another session meanwhile.
                    Err(StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(("NO", store_no(&e))),
                }
            } else {
                None
            };
            let mut flags_changed = false;
            if sets_seen && meta.flags & flags::SEEN == 0 {
                let change = FlagChange {
                    op: FlagOp::Add,
                    flags: flags::SEEN,
                    keywords: Vec::new(),
                    unchanged_since: None,
                };
                if let Ok(r) = self
                    .shared
                    .store
                    .store_flags(folder, &[meta.uid], change)
                    .await
                    && let Some(m) = r.updated.into_iter().next()
                {
                    meta = m;
                    flags_changed = true;
                    if let Some(s) = self.selected.as_mut()
                        && let Some(j) = s.index_of(meta.uid)
                    {
                        s.messages[j] = meta.clone();
                    }
                }
            }
            let mut out = Vec::with_capacity(256);
            out.extend_from_slice(format!("* {} FETCH (", i + 1).as_bytes());
            let mut parts: Vec<Vec<u8>> = Vec::new();
            let mut has_uid = false;
            let mut has_flags = false;
            for item in items {
                let mut o = Vec::new();
                match item {
                    FetchItem::Uid => {
                        has_uid = true;
                        o.extend_from_slice(format!("UID {}", meta.uid).as_bytes());
                    }
                    FetchItem::Flags => {
                        has_flags = true;
                        o.extend_from_slice(format!("FLAGS {}", flag_list(&meta)).as_bytes());
                    }
                    FetchItem::InternalDate => o.extend_from_slice(
                        format!("INTERNALDATE {}", fetch::internal_date(meta.internal_date))
                            .as_bytes(),
                    ),
                    FetchItem::Size => {
                        o.extend_from_slice(format!("RFC822.SIZE {}", meta.size).as_bytes())
                    }
                    FetchItem::Modseq => continue,
                    FetchItem::Envelope => {
                        o.extend_from_slice(b"ENVELOPE ");
                        fetch::envelope(&mut o, &summary.as_ref().expect("summary").envelope);
                    }
                    FetchItem::BodyStructure | FetchItem::Body => {
                        let ext = *item == FetchItem::BodyStructure;
                        o.extend_from_slice(if ext { b"BODYSTRUCTURE " } else { b"BODY " });
                        fetch::structure(&mut o, &summary.as_ref().expect("summary").body, ext);
                    }
                    FetchItem::Section {
                        name,
                        section,
                        partial,
                        ..
                    } => {
                        let s = summary.as_ref().expect("summary");
                        let c = content.as_ref().expect("content");
                        let data = fetch::section_bytes(c, meta.prefix_len as usize, s, section)
                            .unwrap_or_default();
                        if *name == "BODY" {
                            o.extend_from_slice(format!("BODY[{}]", section.render()).as_bytes());
                            if let Some((origin, _)) = partial {
                                o.extend_from_slice(format!("<{origin}>").as_bytes());
                            }
                        } else {
                            o.extend_from_slice(name.as_bytes());
                        }
                        o.push(b' ');
                        fetch::literal(&mut o, fetch::partial(&data, *partial));
                    }
                    FetchItem::Binary { path, .. } | FetchItem::BinarySize(path) => {
                        let s = summary.as_ref().expect("summary");
                        let c = content.as_ref().expect("content");
                        let part = if path.is_empty() {
                            Some(&s.body)
                        } else {
                            fetch::find_part(&s.body, path)
                        };
                        let data = match part {
                            Some(p) if p.media_type == "multipart" || p.message.is_some() => {
                                fetch::section_bytes(
                                    c,
                                    meta.prefix_len as usize,
                                    s,
                                    &parser::Section {
                                        path: path.clone(),
                                        spec: parser::SectionSpec::Full,
                                    },
                                )
                                .unwrap_or_default()
                            }
                            Some(p) => match fetch::decoded(c, meta.prefix_len as usize, p) {
                                Ok(d) => d,
                                Err(fetch::UnknownEncoding) => {
                                    return Err((
                                        "NO",
                                        "[UNKNOWN-CTE] unknown content transfer encoding".into(),
                                    ));
                                }
                            },
                            None => Vec::new(),
                        };
                        let path_s: Vec<String> = path.iter().map(u32::to_string).collect();
                        if let FetchItem::Binary { partial, .. } = item {
                            o.extend_from_slice(format!("BINARY[{}]", path_s.join(".")).as_bytes());
                            if let Some((origin, _)) = partial {
                                o.extend_from_slice(format!("<{origin}>").as_bytes());
                            }
                            o.push(b' ');
                            let cut = fetch::partial(&data, *partial);
                            o.extend_from_slice(format!("~{{{}}}\r\n", cut.len()).as_bytes());
                            o.extend_from_slice(cut);
                        } else {
                            o.extend_from_slice(
                                format!("BINARY.SIZE[{}] {}", path_s.join("."), data.len())
                                    .as_bytes(),
                            );
                        }
                    }
                }
                parts.push(o);
            }
            if uid && !has_uid {
                parts.insert(0, format!("UID {}", meta.uid).into_bytes());
            }
            if flags_changed && !has_flags {
                parts.push(format!("FLAGS {}", flag_list(&meta)).into_bytes());
            }
            if self.condstore {
                parts.push(format!("MODSEQ ({})", meta.modseq).into_bytes());
            }
            out.extend_from_slice(&parts.join(&b' '));
            out.extend_from_slice(b")\r\n");
            self.out.extend_from_slice(&out);
            self.flush_if_full()
                .await
                .map_err(|e| ("NO", e.to_string()))?;
        }
        Ok("FETCH completed".into())
    }

    async fn store(
        &mut self,
        set: &SeqSet,
        unchanged_since: Option<u64>,
        op: StoreOp,
        silent: bool,
        names: &[String],
        uid: bool,
    ) -> Result<String, (&'static str, String)> {
        self.check_msns(set, uid)?;
        if self.selected.as_ref().is_some_and(|s| s.read_only) {
            return Err(("NO", "[READ-ONLY] the mailbox is open read-only".into()));
        }
        if unchanged_since.is_some() {
            self.condstore = true;
        }
        let (bits, keywords) = parse_flags(names).map_err(|e| ("BAD", e))?;
        let sel = self.selected.as_ref().expect("selected");
        let folder = sel.folder;
        let uids: Vec<u32> = self
            .indices(set, uid)
            .iter()
            .map(|&i| sel.messages[i].uid)
            .collect();
        let change = FlagChange {
            op: match op {
                StoreOp::Replace => FlagOp::Replace,
                StoreOp::Add => FlagOp::Add,
                StoreOp::Remove => FlagOp::Remove,
            },
            flags: bits,
            keywords,
            unchanged_since,
        };
        let result = self
            .shared
            .store
            .store_flags(folder, &uids, change)
            .await
            .map_err(|e| ("NO", store_no(&e)))?;
        let condstore = self.condstore;
        let sel = self.selected.as_mut().expect("selected");
        let mut lines = Vec::new();
        for m in result.updated {
            if let Some(i) = sel.index_of(m.uid) {
                let changed = sel.messages[i].modseq != m.modseq;
                sel.messages[i] = m.clone();
                // `.SILENT` still reports a change under CONDSTORE's
                // UNCHANGEDSINCE (RFC 7162 §3.1.3) when the MODSEQ moved.
                if !silent || (unchanged_since.is_some() && changed) {
                    let mut l = format!("* {} FETCH (", i + 1);
                    if uid {
                        l.push_str(&format!("UID {} ", m.uid));
                    }
                    l.push_str(&format!("FLAGS {}", flag_list(&m)));
                    if condstore {
                        l.push_str(&format!(" MODSEQ ({})", m.modseq));
                    }
                    l.push_str(")\r\n");
                    lines.push(l);
                }
            }
        }
        for l in lines {
            self.out.extend_from_slice(l.as_bytes());
        }
        if result.failed.is_empty() {
            Ok("STORE completed".into())
        } else {
            let sel = self.selected.as_ref().expect("selected");
            let mut nums: Vec<u32> = result
                .failed
                .iter()
                .filter_map(|&u| {
                    if uid {
                        Some(u)
                    } else {
                        sel.index_of(u).map(|i| i as u32 + 1)
                    }
                })
                .collect();
            nums.sort_unstable();
            Ok(format!(
                "[MODIFIED {}] conditional STORE failed",
                compress(&nums)
            ))
        }
    }

    async fn copy(
        &mut self,
        set: &SeqSet,
        wire: &[u8],
        move_: bool,
        uid: bool,
    ) -> Result<String, (&'static str, String)> {
        self.check_msns(set, uid)?;
        let verb = if move_ { "MOVE" } else { "COPY" };
        let (account, name) = self.resolve(wire)?;
        let target = match self.shared.store.folder(&account, &name).await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(("NO", format!("[TRYCREATE] {name} does not exist"))),
            Err(e) => return Err(("NO", store_no(&e))),
        };
        let sel = self.selected.as_ref().expect("selected");
        if move_ && sel.read_only {
            return Err(("NO", "[READ-ONLY] the mailbox is open read-only".into()));
        }
        let (from, from_account) = (sel.folder, sel.account.clone());
        let uids: Vec<u32> = self
            .indices(set, uid)
            .iter()
            .map(|&i| sel.messages[i].uid)
            .collect();
        if uids.is_empty() {
            return Ok(format!("{verb} completed (nothing to {verb})"));
        }
        let quota = self.quota_of(&account);
        let copied = if from_account == account {
            self.shared
                .store
                .copy(from, &uids, target.id, move_, quota)
                .await
                .map_err(|e| ("NO", store_no(&e)))?
        } else {
            self.copy_across(from, &uids, &account, &name, quota, move_)
                .await
                .map_err(|e| ("NO", store_no(&e)))?
        };
        let code = format!(
            "[COPYUID {} {} {}]",
            copied.uid_validity,
            compress_unsorted(&copied.from),
            compress_unsorted(&copied.to)
        );
        if move_ {
            self.untagged(&format!("OK {code} moved"));
            self.tell_expunged(&copied.from);
            Ok(format!("{verb} completed"))
        } else {
            Ok(format!("{code} {verb} completed"))
        }
    }

    /// COPY/MOVE between two accounts' folders (a user's and a mail-in
    /// box's): each message read and appended, flags and date kept.
    async fn copy_across(
        &self,
        from: FolderId,
        uids: &[u32],
        account: &str,
        folder: &str,
        quota: Option<u64>,
        move_: bool,
    ) -> Result<crate::store::Copied, StoreError> {
        let store = &self.shared.store;
        let mut copied = crate::store::Copied::default();
        for m in store.metas(from, uids).await? {
            let content = store.read(from, m.uid, None).await?;
            let placed = store
                .append(
                    account,
                    folder,
                    Append {
                        content: NewContent::parse_off_thread(content).await,
                        flags: m.flags,
                        keywords: m.keywords.clone(),
                        internal_date: Some(m.internal_date),
                        quota,
                        queue_id: None,
                    },
                )
                .await?;
            copied.uid_validity = placed.uid_validity;
            copied.from.push(m.uid);
            copied.to.push(placed.uid);
        }
        if move_ && !copied.from.is_empty() {
            store.expunge(from, Some(&copied.from), false).await?;
        }
        Ok(copied)
    }

    async fn get_quota_root(&mut self, wire: &[u8]) -> Result<String, (&'static str, String)> {
        let (account, _info) = self.folder_of(wire).await?;
        let mut name = Vec::new();
        name.extend_from_slice(b"* QUOTAROOT ");
        name.extend_from_slice(wire_quoted(wire).as_slice());
        if account == self.user_name() && self.quota_of(&account).is_some() {
            name.extend_from_slice(b" \"\"\r\n");
            self.out.extend_from_slice(&name);
            self.quota_line().await?;
        } else {
            name.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(&name);
        }
        Ok("GETQUOTAROOT completed".into())
    }

    async fn quota_line(&mut self) -> Result<(), (&'static str, String)> {
        let me = self.user_name();
        let Some(limit) = self.quota_of(&me) else {
            return Err(("NO", "[NONEXISTENT] no such quota root".into()));
        };
        let usage = self
            .shared
            .store
            .usage(&me)
            .await
            .map_err(|e| ("NO", store_no(&e)))?;
        // RFC 9208: STORAGE counts in units of 1024 octets.
        self.untagged(&format!(
            "QUOTA \"\" (STORAGE {} {})",
            usage.bytes.div_ceil(1024),
            limit / 1024
        ));
        Ok(())
    }

    async fn get_quota(&mut self, root: &[u8]) -> Result<String, (&'static str, String)> {
        if !root.is_empty() {
            return Err(("NO", "[NONEXISTENT] no such quota root".into()));
        }
        self.quota_line().await?;
        Ok("GETQUOTA completed".into())
    }
}

/// A set of UIDs in the order given (COPYUID pairs them by position).
fn compress_unsorted(nums: &[u32]) -> String {
    if nums.windows(2).all(|w| w[0] < w[1]) {
        compress(nums)
    } else {
        nums.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn wire_quoted(wire: &[u8]) -> Vec<u8> {
    let mut o = Vec::new();
    fetch::string(&mut o, wire);
    o
}

/// `$` inside search keys → the saved UIDs.
fn resolve_saved(key: &SearchKey, saved: &[u32]) -> SearchKey {
    use SearchKey as K;
    let as_uids = || {
        if saved.is_empty() {
            K::Not(Box::new(K::All))
        } else {
            K::Uid(SeqSet(saved.iter().map(|&u| (u, u)).collect()))
        }
    };
    match key {
        K::Seq(s) | K::Uid(s) if s.is_saved() => as_uids(),
        K::Not(k) => K::Not(Box::new(resolve_saved(k, saved))),
        K::Or(a, b) => K::Or(
            Box::new(resolve_saved(a, saved)),
            Box::new(resolve_saved(b, saved)),
        ),
        K::And(ks) => K::And(ks.iter().map(|k| resolve_saved(k, saved)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let m = |p: &str, n: &str| {
            wildcard(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        };
        assert!(m("*", "a/b/c"));
        assert!(m("%", "Sent"));
        assert!(!m("%", "a/b"));
        assert!(m("a/%", "a/b"));
        assert!(m("INBOX", "INBOX"));
        assert!(!m("Sent", "Sentx"));
        assert_eq!(canonical_inbox("inbox/x"), "INBOX/x");
        assert_eq!(canonical_inbox("inboxes"), "inboxes");
    }

    #[test]
    fn sets() {
        assert_eq!(compress(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(compress(&[]), "");
        assert_eq!(compress_unsorted(&[3, 1]), "3,1");
    }

    #[test]
    fn flags_parse() {
        let (b, k) = parse_flags(&["\\Seen".into(), "$Junk".into(), "\\recent".into()]).unwrap();
        assert_eq!(b, flags::SEEN);
        assert_eq!(k, vec!["$Junk".to_string()]);
        assert!(parse_flags(&["\\Bogus".into()]).is_err());
    }
}
