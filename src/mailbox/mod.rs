//! The mailbox actor: the one writer of local deliveries. It appends a
//! message to each target mailbox, waits for the group commit, and answers
//! with one outcome per recipient. It never touches the queue records; the
//! scheduler applies the outcomes.

pub mod store;

use std::sync::Arc;

use actix::prelude::*;

use crate::outcome::{Detail, Outcome};
use crate::spool::{QueueId, Spool};
pub use store::{MailMeta, MailboxStore};

/// Messages waiting for the mailbox actor before senders are pushed back.
const MAILBOX_CAPACITY: usize = 256;

/// One local target of a message.
#[derive(Debug, Clone)]
pub struct LocalTarget {
    /// Index of the recipient in the queue record.
    pub rcpt: usize,
    /// Mailbox name.
    pub mailbox: String,
    /// The recipient address, for `Delivered-To:`.
    pub address: String,
}

/// Deliver a queued message to local mailboxes.
#[derive(Message)]
#[rtype(result = "Vec<(usize, Outcome)>")]
pub struct Deliver {
    /// Queue id, for logs and the stored meta.
    pub queue_id: QueueId,
    /// Envelope sender, for `Return-Path:`.
    pub sender: String,
    /// Message-ID header, if any.
    pub message_id: Option<String>,
    /// The content as queued.
    pub content: Arc<Vec<u8>>,
    /// Where it goes.
    pub targets: Vec<LocalTarget>,
}

/// The actor owning local delivery.
pub struct MailboxActor {
    spool: Arc<Spool>,
    store: MailboxStore,
}

impl MailboxActor {
    /// A mailbox actor over the spool's mailbox keyspace.
    pub fn new(spool: Arc<Spool>, store: MailboxStore) -> MailboxActor {
        MailboxActor { spool, store }
    }
}

impl Actor for MailboxActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

/// The stored form: `Return-Path:` and `Delivered-To:` (RFC 5321 §4.4), then
/// the queued content.
fn stored_form(sender: &str, address: &str, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 128);
    out.extend_from_slice(
        format!("Return-Path: <{sender}>\r\nDelivered-To: {address}\r\n").as_bytes(),
    );
    out.extend_from_slice(content);
    out
}

impl Handler<Deliver> for MailboxActor {
    type Result = ResponseFuture<Vec<(usize, Outcome)>>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Self::Context) -> Self::Result {
        let mut outcomes = Vec::with_capacity(msg.targets.len());
        let mut written = Vec::new();
        // A commit covers these writes only if the store did not reopen its
        // database in between (after a write error, e.g. a full disk).
        let epoch = self.spool.store().epoch();
        for t in &msg.targets {
            let form = stored_form(&msg.sender, &t.address, &msg.content);
            match self
                .store
                .append(&t.mailbox, &form, msg.queue_id, msg.message_id.clone())
            {
                Ok(meta) => {
                    written.push((t.rcpt, format!("mailbox {} uid {}", t.mailbox, meta.uid)))
                }
                Err(e) => outcomes.push((
                    t.rcpt,
                    Outcome::temp("4.3.0", format!("mailbox {} cannot store: {e}", t.mailbox)),
                )),
            }
        }
        let spool = self.spool.clone();
        Box::pin(async move {
            let committed = spool.commit().await.and_then(|()| {
                if spool.store().epoch() == epoch {
                    Ok(())
                } else {
                    Err(crate::spool::StoreError::Io(
                        "the spool database was reopened before the commit".into(),
                    ))
                }
            });
            match committed {
                Ok(()) => outcomes.extend(written.into_iter().map(|(r, d)| {
                    (
                        r,
                        Outcome::Delivered(Detail::local("2.0.0", format!("delivered to {d}"))),
                    )
                })),
                Err(e) => outcomes.extend(written.into_iter().map(|(r, _)| {
                    (
                        r,
                        Outcome::temp("4.3.0", format!("mailbox commit failed: {e}")),
                    )
                })),
            }
            outcomes
        })
    }
}
