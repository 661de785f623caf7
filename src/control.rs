//! The control protocol between the CLI and the daemon, over the Unix
//! socket `<spool>/control.sock` (mode 0600), and its one executor.
//!
//! A request is one JSON line, followed for `submit` by the message's raw
//! octets. The answer is a stream of JSON lines; a line `{"raw": N}` is
//! followed by N raw octets; the last line is `{"ok": true}` or
//! `{"error": "..."}`. The same `execute` runs in the daemon and, when no
//! daemon runs, in the CLI over the spool opened directly.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::intake::{Envelope, EnvelopeRcpt, Intake};
use crate::mailbox::MailboxStore;
use crate::queue_report;
use crate::scheduler::{Admin, AdminOp};
use crate::spool::{QueueId, QueueName, Spool};

/// File name of the control socket inside the spool directory.
pub const SOCKET_NAME: &str = "control.sock";
/// Largest request line accepted on the socket.
const REQUEST_LIMIT: u64 = 64 * 1024;
/// Ids per message to the scheduler, so large selections do not hold it up.
const ADMIN_BATCH: usize = 1000;
/// Largest message `import` takes (or the SMTP limit, if higher).
pub const IMPORT_LIMIT: u64 = 256 * 1024 * 1024;

/// Which messages a queue operation applies to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Every message.
    All,
    /// Messages with a recipient not yet final in this domain.
    Domain(String),
    /// These queue ids.
    Ids(Vec<String>),
}

/// A CLI request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// `mailq`: entries as JSON lines.
    Mailq {
        /// `--domain`
        domain: Option<String>,
        /// `--state`
        state: Option<String>,
    },
    /// `show`: one report, then the content as a raw block with `body`.
    Show {
        /// Queue id.
        id: String,
        /// Include the message.
        body: bool,
    },
    /// `status`.
    Status,
    /// `requeue`, `hold`, `release`, `delete`.
    Admin {
        /// Operation.
        op: AdminOp,
        /// Messages.
        select: Selection,
    },
    /// `reload` (daemon only).
    Reload,
    /// `debug smtp LEVEL` (daemon only).
    DebugSmtp {
        /// 0–3.
        level: u8,
    },
    /// `sendmail`: queue a message; its octets follow the request line.
    Submit {
        /// Envelope sender.
        sender: String,
        /// Recipients.
        recipients: Vec<String>,
        /// Octets that follow.
        content_length: u64,
    },
    /// `track`: message histories as JSON lines, one per message.
    Track {
        /// What to look for.
        selector: crate::history::Selector,
        /// Only events at or after this time (Unix ms).
        since: i64,
        /// At most this many messages.
        limit: usize,
    },
    /// `export`: the account's folders as JSON lines (`FolderRow`), then
    /// one line `{"orphan_subscriptions": [...]}`.
    StoreFolders {
        /// Account (user or mail-in name).
        account: String,
    },
    /// `export`: one folder's copies as JSON lines (`MessageRow`).
    StoreMessages {
        /// Account.
        account: String,
        /// Folder name.
        folder: String,
    },
    /// `export`: one copy's octets, as raw blocks of at most 1 MiB.
    StoreRead {
        /// Account.
        account: String,
        /// Folder name.
        folder: String,
        /// UID.
        uid: u32,
    },
    /// `import`: append one message (its octets follow the request line),
    /// making the folder if missing; answers `{"uid": N}`.
    StoreAppend {
        /// Account.
        account: String,
        /// Folder name.
        folder: String,
        /// Flags, keywords, INTERNALDATE (the UID is ignored).
        message: crate::store::transfer::MessageRow,
        /// Octets that follow.
        content_length: u64,
    },
    /// `import`: make a folder if missing.
    StoreCreate {
        /// Account.
        account: String,
        /// Folder name.
        folder: String,
    },
    /// `import`: subscribe the account to a name.
    StoreSubscribe {
        /// Account.
        account: String,
        /// Name.
        name: String,
    },
    /// `mailbox NAME [--uid N]`: list a mailbox, or print one message.
    Mailbox {
        /// Mailbox name.
        name: String,
        /// A message to print.
        uid: Option<u64>,
        /// The folder (INBOX when absent).
        #[serde(default)]
        folder: Option<String>,
    },
}

/// Where a request is carried out.
pub enum Backend {
    /// Inside the running daemon.
    Daemon(Arc<Daemon>),
    /// In the CLI, on the spool opened directly.
    Offline {
        /// The open spool.
        spool: Arc<Spool>,
        /// The CLI's configuration.
        config: Arc<Config>,
    },
}

impl Backend {
    fn spool(&self) -> &Arc<Spool> {
        match self {
            Backend::Daemon(d) => &d.spool,
            Backend::Offline { spool, .. } => spool,
        }
    }

    /// The message store: the daemon's, or (no daemon running) opened
    /// here, after carrying the spool's old mailboxes over if the daemon
    /// never did.
    async fn message_store(
        &self,
        spool: &Spool,
    ) -> Result<Arc<dyn crate::store::MailStore>, String> {
        match self {
            Backend::Daemon(d) => Ok(d.store.clone()),
            Backend::Offline { config, .. } => {
                let store = crate::store::open(&config.store)
                    .await
                    .map_err(|e| e.to_string())?;
                crate::store::migrate::from_spool(spool, &MailboxStore::open(spool), &*store)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(store)
            }
        }
    }

    fn config(&self) -> Arc<Config> {
        match self {
            Backend::Daemon(d) => d.config.load_full(),
            Backend::Offline { config, .. } => config.clone(),
        }
    }
}

/// The message store for a transfer request on `account`, which must be a
/// user or mail-in box of the configuration.
async fn transfer_store(
    backend: &Backend,
    spool: &Spool,
    account: &str,
) -> Result<Arc<dyn crate::store::MailStore>, String> {
    if !backend.config().directory.has_mailbox(account) {
        return Err(format!("{account:?} is not a user or mail-in mailbox"));
    }
    backend.message_store(spool).await
}

/// One item of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A JSON line.
    Json(serde_json::Value),
    /// A raw block.
    Raw(Vec<u8>),
    /// A JSON object already serialised on one line: long listings pass
    /// through the daemon's writer and the CLI without a parse.
    Line(String),
}

impl Item {
    /// The item as a JSON value (`None` for a raw block or a bad line).
    pub fn into_json(self) -> Option<serde_json::Value> {
        match self {
            Item::Json(v) => Some(v),
            Item::Line(l) => serde_json::from_str(&l).ok(),
            Item::Raw(_) => None,
        }
    }
}

/// Answer stream: JSON lines and raw blocks, with backpressure.
pub type Sink = mpsc::Sender<Item>;

async fn emit(sink: &Sink, item: Item) -> Result<(), String> {
    sink.send(item)
        .await
        .map_err(|_| "the client went away".to_string())
}

fn parse_ids(ids: &[String]) -> Result<Vec<QueueId>, String> {
    ids.iter()
        .map(|s| s.parse::<QueueId>().map_err(|e| e.to_string()))
        .collect()
}

/// Carries out a request, sending its answer items to `sink`. The final
/// ok/error line is the caller's to write.
pub async fn execute(
    req: Request,
    backend: &Backend,
    content: Vec<u8>,
    sink: &Sink,
) -> Result<(), String> {
    let spool = backend.spool().clone();
    match req {
        Request::Mailq { domain, state } => {
            let state =
                match state.as_deref() {
                    None => None,
                    Some(s) => Some(QueueName::parse(s).ok_or_else(|| {
                        format!("unknown state {s:?}; use active, deferred or hold")
                    })?),
                };
            let active = spool.active_set().map_err(|e| e.to_string())?;
            for msg in spool.messages() {
                let msg = msg.map_err(|e| e.to_string())?;
                let is_active = active.contains(&msg.id);
                if let Some(entry) =
                    queue_report::mailq_entry(&msg, is_active, domain.as_deref(), state)
                {
                    let line = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
                    emit(sink, Item::Line(line)).await?;
                }
            }
            Ok(())
        }
        Request::Show { id, body } => {
            let id: QueueId = id
                .parse()
                .map_err(|e: crate::spool::BadQueueId| e.to_string())?;
            let msg = spool
                .get(id)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{id}: no such message in the queue"))?;
            let report = queue_report::show(&spool, &msg).map_err(|e| e.to_string())?;
            emit(sink, Item::Json(json!(report))).await?;
            if body {
                let c = spool.content(&msg).map_err(|e| e.to_string())?;
                emit(sink, Item::Raw(c)).await?;
            }
            Ok(())
        }
        Request::Status => {
            let mut report = queue_report::status(&spool).map_err(|e| e.to_string())?;
            if let Backend::Daemon(d) = backend {
                report.daemon = true;
                report.sessions = d.smtp.connections.total() as u64;
            }
            emit(sink, Item::Json(json!(report))).await
        }
        Request::Admin { op, select } => {
            let ids = match &select {
                Selection::Ids(ids) => parse_ids(ids)?,
                Selection::All | Selection::Domain(_) => {
                    let mut ids = Vec::new();
                    for msg in spool.messages() {
                        let msg = msg.map_err(|e| e.to_string())?;
                        let take = match &select {
                            Selection::Domain(d) => queue_report::has_domain(&msg, d),
                            _ => true,
                        };
                        if take {
                            ids.push(msg.id);
                        }
                    }
                    ids
                }
            };
            let mut done = 0usize;
            let mut missing = Vec::new();
            for chunk in ids.chunks(ADMIN_BATCH) {
                match backend {
                    Backend::Daemon(d) => {
                        let r = d
                            .waker
                            .addr()
                            .send(Admin {
                                op,
                                ids: chunk.to_vec(),
                            })
                            .await
                            .map_err(|_| "the scheduler is not running".to_string())??;
                        done += r.done;
                        missing.extend(r.missing);
                    }
                    Backend::Offline { .. } => {
                        for id in chunk {
                            match op.apply(&spool, *id) {
                                Ok(true) => done += 1,
                                Ok(false) => missing.push(*id),
                                Err(e) => return Err(e.to_string()),
                            }
                        }
                    }
                }
            }
            match backend {
                Backend::Offline { .. } => {
                    spool.store().commit().await.map_err(|e| e.to_string())?;
                }
                // Give the disk back before answering, so that `du` after
                // the command shows it.
                Backend::Daemon(_) if op == AdminOp::Delete => {
                    crate::daemon::compact(spool.clone(), "delete").await;
                }
                Backend::Daemon(_) => {}
            }
            if !matches!(select, Selection::Ids(_)) {
                // Listed, then delivered or expired before the operation
                // reached it: it left the queue, which is no error (as
                // Postfix's `postsuper -r ALL`). Only named ids are missing.
                missing.clear();
            }
            let missing: Vec<String> = missing.iter().map(|i| i.to_string()).collect();
            emit(sink, Item::Json(json!({"done": done, "missing": missing}))).await
        }
        Request::Reload => match backend {
            Backend::Daemon(d) => {
                let report = d.reload().await?;
                emit(sink, Item::Json(json!({ "reload": report }))).await
            }
            Backend::Offline { .. } => Err("no daemon is running; nothing to reload".into()),
        },
        Request::DebugSmtp { level } => match backend {
            Backend::Daemon(d) => {
                if level > 3 {
                    return Err(format!("level {level} is not from 0 to 3"));
                }
                d.smtp.debug.store(level, Ordering::Relaxed);
                tracing::info!(level, "smtp_debug set");
                Ok(())
            }
            Backend::Offline { .. } => {
                Err("no daemon is running; start it with [log] smtp_debug set".into())
            }
        },
        Request::Submit {
            sender, recipients, ..
        } => {
            let config = backend.config();
            let env = Envelope {
                id: None,
                smtputf8: !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()),
                sender,
                recipients: recipients.into_iter().map(EnvelopeRcpt::plain).collect(),
                client: "localhost".into(),
                listener: "sendmail".into(),
                envid: None,
                ret: None,
                body_8bit: !content.is_ascii(),
                trusted: true,
            };
            let intake = match backend {
                Backend::Daemon(d) => d.smtp.intake.clone(),
                Backend::Offline { spool, .. } => Intake::new(spool.clone(), None),
            };
            let msg = intake
                .accept(&config, env, &content)
                .await
                .map_err(|e| e.to_string())?;
            emit(sink, Item::Json(json!({"queue_id": msg.id.to_string()}))).await
        }
        Request::Track {
            selector,
            since,
            limit,
        } => {
            let history = match backend {
                Backend::Daemon(d) => d.history.clone(),
                Backend::Offline { spool, config } => crate::history::History::open(
                    &spool.dir().join(crate::history::FILE_NAME),
                    crate::history::Limits {
                        max_age: config.history.max_age,
                        max_size: config.history.max_size,
                    },
                )
                .map_err(|e| e.to_string())?,
            };
            let traces = tokio::task::spawn_blocking(move || {
                history.sync();
                history.query(&selector, since, limit)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            for t in traces {
                // The printed queue id beside the number, for scripts that
                // pass it on (`petrel track ID`, `postcat`-like tools).
                let mut v = json!(t);
                v["id"] = json!(t.queue_id.map(|q| QueueId(q).to_string()));
                emit(sink, Item::Json(v)).await?;
            }
            Ok(())
        }
        Request::StoreFolders { account } => {
            let store = transfer_store(backend, &spool, &account).await?;
            let (rows, orphans) = crate::store::transfer::folders(&*store, &account).await?;
            for r in rows {
                emit(sink, Item::Json(json!(r))).await?;
            }
            emit(sink, Item::Json(json!({ "orphan_subscriptions": orphans }))).await
        }
        Request::StoreMessages { account, folder } => {
            let store = transfer_store(backend, &spool, &account).await?;
            for r in crate::store::transfer::messages(&*store, &account, &folder).await? {
                emit(sink, Item::Json(json!(r))).await?;
            }
            Ok(())
        }
        Request::StoreRead {
            account,
            folder,
            uid,
        } => {
            let store = transfer_store(backend, &spool, &account).await?;
            crate::store::transfer::read(&*store, &account, &folder, uid, |b| {
                emit(sink, Item::Raw(b))
            })
            .await
        }
        Request::StoreAppend {
            account,
            folder,
            message,
            ..
        } => {
            let store = transfer_store(backend, &spool, &account).await?;
            let uid = crate::store::transfer::append(&*store, &account, &folder, &message, content)
                .await?;
            emit(sink, Item::Json(json!({ "uid": uid }))).await
        }
        Request::StoreCreate { account, folder } => {
            let store = transfer_store(backend, &spool, &account).await?;
            crate::store::transfer::create(&*store, &account, &folder).await
        }
        Request::StoreSubscribe { account, name } => {
            let store = transfer_store(backend, &spool, &account).await?;
            crate::store::transfer::subscribe(&*store, &account, &name).await
        }
        Request::Mailbox { name, uid, folder } => {
            let folder_name = folder.unwrap_or_else(|| "INBOX".into());
            let config = backend.config();
            if !config.directory.has_mailbox(&name) {
                return Err(format!("{name:?} is not a user or mail-in mailbox"));
            }
            let store = backend.message_store(&spool).await?;
            let folder = store
                .folder(&name, &folder_name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{name}: no folder {folder_name}"))?;
            match uid {
                None => {
                    for m in store.messages(folder.id).await.map_err(|e| e.to_string())? {
                        let message_id = store
                            .summary(m.blob)
                            .await
                            .ok()
                            .and_then(|s| s.envelope.message_id.clone())
                            .map(|v| String::from_utf8_lossy(&v).into_owned());
                        let line = json!({
                            "uid": m.uid, "size": m.size, "arrival_time": m.internal_date,
                            "flags": m.flags, "queue_id": m.queue_id.map(|q| QueueId(q).to_string()),
                            "message_id": message_id,
                        });
                        emit(sink, Item::Json(line)).await?;
                    }
                    Ok(())
                }
                Some(uid) => {
                    let uid = u32::try_from(uid)
                        .map_err(|_| format!("{name}: no message with UID {uid}"))?;
                    let c = store
                        .read(folder.id, uid, None)
                        .await
                        .map_err(|_| format!("{name}: no message with UID {uid}"))?;
                    emit(sink, Item::Raw(c)).await
                }
            }
        }
    }
}

/// Serves one control connection inside the daemon.
pub async fn serve_connection(stream: tokio::net::UnixStream, daemon: Arc<Daemon>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (r, mut w) = stream.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let mut line = String::new();
    if (&mut r)
        .take(REQUEST_LIMIT)
        .read_line(&mut line)
        .await
        .unwrap_or(0)
        == 0
    {
        return;
    }
    let req: Request = match serde_json::from_str(&line) {
        Ok(req) => req,
        Err(e) => {
            let _ = w
                .write_all(
                    format!("{}\n", json!({"error": format!("bad request: {e}")})).as_bytes(),
                )
                .await;
            return;
        }
    };
    let mut content = Vec::new();
    let length = match &req {
        Request::Submit { content_length, .. } => Some((
            *content_length,
            daemon.config.load().inbound.max_message_size,
        )),
        // An import holds a message whole (the store's append takes it
        // so); bound it, but above the SMTP limit: old mail may be larger.
        Request::StoreAppend { content_length, .. } => Some((
            *content_length,
            daemon
                .config
                .load()
                .inbound
                .max_message_size
                .max(IMPORT_LIMIT),
        )),
        _ => None,
    };
    if let Some((content_length, max)) = length {
        let content_length = &content_length;
        if *content_length > max {
            let _ = w
                .write_all(
                    format!(
                        "{}\n",
                        json!({"error": "message too large", "code": "size"})
                    )
                    .as_bytes(),
                )
                .await;
            return;
        }
        if (&mut r)
            .take(*content_length)
            .read_to_end(&mut content)
            .await
            .is_err()
            || content.len() as u64 != *content_length
        {
            return;
        }
    }
    let (tx, mut rx) = mpsc::channel::<Item>(256);
    let writer = tokio::spawn(async move {
        let mut w = tokio::io::BufWriter::with_capacity(64 * 1024, w);
        while let Some(item) = rx.recv().await {
            let ok = match item {
                Item::Json(v) => w.write_all(format!("{v}\n").as_bytes()).await,
                Item::Line(mut l) => {
                    l.push('\n');
                    w.write_all(l.as_bytes()).await
                }
                Item::Raw(b) => match w
                    .write_all(format!("{}\n", json!({"raw": b.len()})).as_bytes())
                    .await
                {
                    Ok(()) => w.write_all(&b).await,
                    Err(e) => Err(e),
                },
            };
            // Write out when the producer pauses, not once per item.
            let ok = match ok {
                Ok(()) if rx.is_empty() => w.flush().await,
                other => other,
            };
            if ok.is_err() {
                return None;
            }
        }
        Some(w)
    });
    let backend = Backend::Daemon(daemon);
    let result = execute(req, &backend, content, &tx).await;
    drop(tx);
    if let Ok(Some(mut w)) = writer.await {
        let last = match result {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"error": e}),
        };
        let _ = w.write_all(format!("{last}\n").as_bytes()).await;
        let _ = w.shutdown().await;
    }
}

/// Why a CLI call did not get an answer from a daemon.
#[derive(Debug)]
pub enum CallError {
    /// No daemon listens on the socket: use the spool directly.
    NoDaemon,
    /// The daemon answered with an error.
    Failed(String),
    /// The connection broke.
    Io(std::io::Error),
}

/// Sends a request to the daemon and passes each answer item to `on_item`.
pub fn call(
    spool_dir: &Path,
    req: &Request,
    content: &[u8],
    mut on_item: impl FnMut(Item),
) -> Result<(), CallError> {
    let path = spool_dir.join(SOCKET_NAME);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(CallError::NoDaemon);
        }
        Err(e) => return Err(CallError::Io(e)),
    };
    let line = serde_json::to_string(req).map_err(|e| CallError::Failed(e.to_string()))?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(CallError::Io)?;
    stream.write_all(content).map_err(CallError::Io)?;
    stream.flush().map_err(CallError::Io)?;
    let mut r = BufReader::new(stream);
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).map_err(CallError::Io)? == 0 {
            return Err(CallError::Failed(
                "the daemon closed the connection without an answer".into(),
            ));
        }
        // Control lines are the daemon's single-key objects; anything else
        // is an answer item, passed on unparsed.
        if !(l.starts_with("{\"ok\"") || l.starts_with("{\"error\"") || l.starts_with("{\"raw\"")) {
            if l.ends_with('\n') {
                l.pop();
            }
            on_item(Item::Line(l));
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&l).map_err(|e| CallError::Failed(format!("bad answer: {e}")))?;
        if v.get("ok").is_some() {
            return Ok(());
        }
        if let Some(e) = v.get("error") {
            return Err(CallError::Failed(e.as_str().unwrap_or("error").to_string()));
        }
        if let Some(n) = v.get("raw").and_then(|n| n.as_u64()) {
            let mut buf = vec![0u8; n as usize];
            r.read_exact(&mut buf).map_err(CallError::Io)?;
            on_item(Item::Raw(buf));
        } else {
            return Err(CallError::Failed(format!("bad answer: {}", l.trim_end())));
        }
    }
}

/// Runs a request on the spool directly (no daemon), passing each item to
/// `on_item`.
pub fn run_offline(
    config: Arc<Config>,
    spool: Arc<Spool>,
    req: Request,
    content: Vec<u8>,
    mut on_item: impl FnMut(Item),
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let (tx, mut rx) = mpsc::channel::<Item>(256);
        let backend = Backend::Offline { spool, config };
        let work = async {
            let r = execute(req, &backend, content, &tx).await;
            drop(tx);
            r
        };
        let drain = async {
            while let Some(item) = rx.recv().await {
                on_item(item);
            }
        };
        let (r, ()) = tokio::join!(work, drain);
        r
    })
}
