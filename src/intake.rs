//! Intake: turns an accepted envelope and content into a queued message.
//! Shared by the SMTP listeners and `petrel sendmail`. It expands aliases
//! (as Postfix's cleanup does), writes through the spool, waits for the
//! group commit, logs `accepted` and wakes the scheduler. It never routes.

use std::sync::Arc;

use crate::config::Config;
use crate::headers;
use crate::mime::downgrade;
use crate::policy::dkim_sign;
use crate::scheduler::Waker;
use crate::spool::{ContentWriter, NewMessage, QueuedMessage, Recipient, Ret, Spool, StoreError};

/// An envelope ready to be queued.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Queue id taken in advance (see `Spool::new_id`), if any.
    pub id: Option<crate::spool::QueueId>,
    /// Reverse path; empty for `<>`.
    pub sender: String,
    /// Accepted recipients, as the client gave them.
    pub recipients: Vec<EnvelopeRcpt>,
    /// Client description for logs (`[127.0.0.1]`, `sendmail`).
    pub client: String,
    /// Listener name (`sendmail` for local submission).
    pub listener: String,
    /// RFC 3461 ENVID.
    pub envid: Option<String>,
    /// RFC 3461 RET.
    pub ret: Option<Ret>,
    /// BODY=8BITMIME declared.
    pub body_8bit: bool,
    /// SMTPUTF8 declared.
    pub smtputf8: bool,
    /// From an authenticated user, `sendmail`, or a `relay_from` host:
    /// what it sends to remote domains is DKIM-signed.
    pub trusted: bool,
}

/// One recipient as given by the client, with its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeRcpt {
    /// The address.
    pub address: String,
    /// RFC 3461 NOTIFY bits; 0: default.
    pub notify: u8,
    /// RFC 3461 ORCPT, if the client gave one.
    pub orcpt: Option<String>,
}

impl EnvelopeRcpt {
    /// A recipient with default DSN parameters.
    pub fn plain(address: impl Into<String>) -> EnvelopeRcpt {
        EnvelopeRcpt {
            address: address.into(),
            notify: 0,
            orcpt: None,
        }
    }
}

/// The front of the queue.
#[derive(Clone)]
pub struct Intake {
    spool: Arc<Spool>,
    /// Absent when the CLI writes to the spool with no daemon running.
    waker: Option<Waker>,
}

impl Intake {
    /// An intake over an open spool; `waker` wakes the daemon's scheduler.
    pub fn new(spool: Arc<Spool>, waker: Option<Waker>) -> Intake {
        Intake { spool, waker }
    }

    /// Takes a queue id in advance, for a `Received:` header.
    pub fn new_id(&self) -> crate::spool::QueueId {
        self.spool.new_id()
    }

    /// Queues the message durably. When this returns `Ok`, the message
    /// survives a crash and the caller may acknowledge it.
    pub async fn accept(
        &self,
        config: &Config,
        env: Envelope,
        content: &[u8],
    ) -> Result<QueuedMessage, StoreError> {
        let trusted = env.trusted;
        let mut new = self.prepare(config, env, content);
        let may_sign = dkim_sign::may_sign(config, trusted, &new.recipients);
        let cleaned = may_sign
            .then(|| clean_for_signing(&mut new, content))
            .flatten();
        let content = cleaned.as_deref().unwrap_or(content);
        let signature = if may_sign {
            dkim_sign::sign_off_thread(
                config,
                trusted,
                &new.sender,
                &new.recipients,
                content.to_vec(),
            )
            .await
            .map_err(|e| StoreError::Unsigned(e.to_string()))?
        } else {
            None
        };
        let signed = signature.map(|h| [h.as_bytes(), content].concat());
        let content = signed.as_deref().unwrap_or(content);
        let msg = self.spool.enqueue(new, content).await?;
        self.accepted(&msg);
        Ok(msg)
    }

    /// `Full` when the spool has no room for new content (below its
    /// reserve, `spool::MIN_FREE`): the SMTP session refuses DATA at once.
    pub fn check_space(&self) -> Result<(), StoreError> {
        self.spool.store().check_space()
    }

    /// Starts a message whose content the caller streams into the spool as
    /// it arrives (SMTP DATA); its id is the writer's. Dropping the writer
    /// removes what it wrote.
    pub fn begin(&self) -> ContentWriter {
        self.spool.begin()
    }

    /// Queues a streamed message durably: `prefix` (trace headers) goes in
    /// front of the content written through `writer`; `message_id` is its
    /// `Message-ID:` as the reader found it. When this returns `Ok`, the
    /// message survives a crash and the caller may acknowledge it.
    pub async fn accept_stream(
        &self,
        config: &Config,
        env: Envelope,
        writer: ContentWriter,
        prefix: &[u8],
        message_id: Option<String>,
    ) -> Result<QueuedMessage, StoreError> {
        let trusted = env.trusted;
        let mut new = self.prepare_with(config, env, message_id);
        // DKIM: the body is read back from the spool only for a message
        // that may be signed; the signature joins the prefix.
        let mut signed = None;
        if dkim_sign::may_sign(config, trusted, &new.recipients) {
            let whole = [prefix, &writer.body()?].concat();
            if let Some(clean) = clean_for_signing(&mut new, &whole) {
                // The streamed content is replaced by the converted one,
                // under the same queue id: the writer's chunks go first.
                let signature = dkim_sign::sign_off_thread(
                    config,
                    trusted,
                    &new.sender,
                    &new.recipients,
                    clean.clone(),
                )
                .await
                .map_err(|e| StoreError::Unsigned(e.to_string()))?;
                let content = match signature {
                    Some(h) => [h.as_bytes(), &clean].concat(),
                    None => clean,
                };
                drop(writer);
                let msg = self.spool.enqueue(new, &content).await?;
                self.accepted(&msg);
                return Ok(msg);
            }
            signed =
                dkim_sign::sign_off_thread(config, trusted, &new.sender, &new.recipients, whole)
                    .await
                    .map_err(|e| StoreError::Unsigned(e.to_string()))?
                    .map(|h| [h.as_bytes(), prefix].concat());
        }
        let prefix = signed.as_deref().unwrap_or(prefix);
        let msg = self.spool.enqueue_stream(writer, new, prefix).await?;
        self.accepted(&msg);
        Ok(msg)
    }

    /// Blocking form for the CLI's direct spool access.
    pub fn accept_blocking(
        &self,
        config: &Config,
        env: Envelope,
        content: &[u8],
    ) -> Result<QueuedMessage, StoreError> {
        let trusted = env.trusted;
        let mut new = self.prepare(config, env, content);
        let cleaned = dkim_sign::may_sign(config, trusted, &new.recipients)
            .then(|| clean_for_signing(&mut new, content))
            .flatten();
        let content = cleaned.as_deref().unwrap_or(content);
        let signature =
            crate::policy::dkim_sign::sign(config, trusted, &new.sender, &new.recipients, content)
                .map_err(|e| StoreError::Unsigned(e.to_string()))?;
        let signed = signature.map(|h| [h.as_bytes(), content].concat());
        let content = signed.as_deref().unwrap_or(content);
        let msg = self.spool.write_message(new, content)?;
        if let Err(e) = self.spool.store().commit_blocking() {
            let _ = self.spool.remove(&msg);
            return Err(e);
        }
        self.accepted(&msg);
        Ok(msg)
    }

    fn prepare(&self, config: &Config, env: Envelope, content: &[u8]) -> NewMessage {
        self.prepare_with(config, env, headers::first(content, "Message-ID"))
    }

    fn prepare_with(
        &self,
        config: &Config,
        env: Envelope,
        message_id: Option<String>,
    ) -> NewMessage {
        NewMessage {
            id: env.id,
            sender: env.sender,
            recipients: expand_recipients(config, &env.recipients),
            client: env.client,
            listener: env.listener,
            message_id,
            envid: env.envid,
            ret: env.ret,
            body_8bit: env.body_8bit,
            smtputf8: env.smtputf8,
        }
    }

    fn accepted(&self, msg: &QueuedMessage) {
        tracing::info!(
            queue_id = %msg.id,
            from = %format!("<{}>", msg.sender),
            size = msg.size,
            nrcpt = msg.recipients.len(),
            client = %msg.client,
            listener = %msg.listener,
            message_id = %msg.message_id.as_deref().unwrap_or(""),
            "accepted"
        );
        crate::metrics::get()
            .accepted
            .get_or_create(&crate::metrics::ListenerLabel {
                listener: msg.listener.clone(),
            })
            .inc();
        crate::history::record(
            Some(msg.id.0),
            crate::history::EventKind::Accepted {
                client: msg.client.clone(),
                listener: msg.listener.clone(),
                size: msg.size,
                sender: msg.sender.clone(),
                recipients: msg.recipients.iter().map(|r| r.address.clone()).collect(),
                message_id: msg.message_id.clone(),
            },
        );
        if let Some(w) = &self.waker {
            w.wake();
        }
    }
}

/// A report the scheduler composed (a DSN from `<>` to `to`) as a new
/// message for the spool. It re-enters like any mail: its recipient is
/// expanded here, so a report to an alias group or an alternate address
/// reaches the mailboxes and members behind it. No report is ever made
/// about a report (NOTIFY=NEVER).
pub fn report(config: &Config, to: &str, content: &[u8]) -> NewMessage {
    let mut rcpt = EnvelopeRcpt::plain(to);
    rcpt.notify = crate::spool::notify::NEVER;
    NewMessage {
        id: None,
        sender: String::new(),
        recipients: expand_recipients(config, &[rcpt]),
        client: "petrel".into(),
        listener: "dsn".into(),
        message_id: headers::first(content, "Message-ID"),
        envid: None,
        ret: None,
        body_8bit: !content.is_ascii(),
        smtputf8: !to.is_ascii(),
    }
}

/// The content to sign and queue for a message petrel signs, made 7-bit
/// clean with no line over 998 octets before the signature (RFC 6376
/// §5.3: a signer converts to the encoding the transport needs first): a
/// peer without 8BITMIME would otherwise get it re-encoded after signing,
/// and the signature broken. `None`: it goes as it is — already clean, or
/// SMTPUTF8 (its header fields cannot be made 7-bit; such a peer must
/// take 8 bits anyway).
fn clean_for_signing(new: &mut NewMessage, content: &[u8]) -> Option<Vec<u8>> {
    if new.smtputf8 || (content.is_ascii() && !downgrade::has_long_line(content)) {
        return None;
    }
    match downgrade::downgrade(content, false) {
        Ok(clean) => {
            new.body_8bit = false;
            Some(clean)
        }
        Err(e) => {
            tracing::warn!(error = %e, "dkim: cannot convert to 7 bits before signing; signed as it is");
            None
        }
    }
}

/// Expands local aliases; keeps the original address as ORCPT where it
/// changed (unless the client gave one); drops duplicate addresses, and
/// second addresses of a mailbox already reached (one copy per mailbox, as
/// local(8) does). Unknown local addresses stay as they are (delivery
/// bounces them).
pub fn expand_recipients(config: &Config, given: &[EnvelopeRcpt]) -> Vec<Recipient> {
    let mut out: Vec<Recipient> = Vec::new();
    let mut mailboxes = std::collections::HashSet::new();
    let mut push =
        |out: &mut Vec<Recipient>, address: String, orcpt: Option<String>, notify: u8| {
            if out.iter().any(|r| r.address.eq_ignore_ascii_case(&address)) {
                return;
            }
            let canonical = config.domains.canonical(&address);
            if let Some(m) = config.directory.mailbox_for(&canonical, &config.domains)
                && !mailboxes.insert(m.to_string())
            {
                return;
            }
            let mut r = Recipient::new(address, orcpt);
            r.notify = notify;
            out.push(r);
        };
    for rcpt in given {
        let addr = &rcpt.address;
        let local = addr
            .rsplit_once('@')
            .is_some_and(|(_, d)| config.domains.is_local(d));
        let targets = if local {
            config.directory.expand(addr, &config.domains)
        } else {
            Vec::new()
        };
        if targets.is_empty() {
            push(&mut out, addr.clone(), rcpt.orcpt.clone(), rcpt.notify);
        }
        for t in targets {
            let orcpt = rcpt
                .orcpt
                .clone()
                .or_else(|| (!t.eq_ignore_ascii_case(addr)).then(|| addr.clone()));
            push(&mut out, t, orcpt, rcpt.notify);
        }
    }
    out
}
