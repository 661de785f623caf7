//! The mailbox actor: the one writer of local deliveries. It stores a
//! queued message in the message store (`store`) — one body for all its
//! local recipients, a copy with its own `Return-Path:`/`Delivered-To:`
//! prefix in each recipient's INBOX — and answers with one outcome per
//! recipient once the store's group commit covers it. It never touches
//! the queue records; the scheduler applies the outcomes.
//!
//! `store` here is the first mailbox keyspace (tree `mailbox` of the
//! spool), kept only to be carried over by `store::migrate`.

pub mod store;

use std::sync::Arc;

use actix::prelude::*;
use arc_swap::ArcSwap;

use crate::config::Config;
use crate::mime::Summary;
use crate::outcome::{Detail, Outcome};
use crate::spool::QueueId;
use crate::store::{Delivery, DeliveryTarget, MailStore, NewContent, StoreError};
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
    /// Queue id, for logs and the store's repeated-delivery check.
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
    store: Arc<dyn MailStore>,
    /// For the users' quotas.
    config: Arc<ArcSwap<Config>>,
    /// The spool's identity (`Spool::identity`), told to the store with
    /// every delivery.
    origin: u64,
}

impl MailboxActor {
    /// A mailbox actor over the message store.
    pub fn new(
        store: Arc<dyn MailStore>,
        config: Arc<ArcSwap<Config>>,
        origin: u64,
    ) -> MailboxActor {
        MailboxActor {
            store,
            config,
            origin,
        }
    }
}

impl Actor for MailboxActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

/// The per-copy prefix: `Return-Path:` and `Delivered-To:` (RFC 5321 §4.4).
fn prefix(sender: &str, address: &str) -> Vec<u8> {
    format!("Return-Path: <{sender}>\r\nDelivered-To: {address}\r\n").into_bytes()
}

/// The outcome of one stored (or refused) copy.
fn outcome(mailbox: &str, r: Result<crate::store::Placed, StoreError>) -> Outcome {
    match r {
        Ok(p) => Outcome::Delivered(Detail::local(
            "2.0.0",
            format!("delivered to mailbox {mailbox} uid {}", p.uid),
        )),
        // RFC 3463: 4.2.2 mailbox full; the scheduler bounces it (5.2.2)
        // when the message expires.
        Err(StoreError::OverQuota(e)) => {
            Outcome::temp("4.2.2", format!("mailbox {mailbox} is full: {e}"))
        }
        Err(e) => Outcome::temp("4.3.0", format!("mailbox {mailbox} cannot store: {e}")),
    }
}

impl Handler<Deliver> for MailboxActor {
    type Result = ResponseFuture<Vec<(usize, Outcome)>>;

    fn handle(&mut self, msg: Deliver, _ctx: &mut Self::Context) -> Self::Result {
        let config = self.config.load();
        let junk = crate::policy::is_junk(&msg.content);
        let targets: Vec<DeliveryTarget> = msg
            .targets
            .iter()
            .map(|t| DeliveryTarget {
                account: t.mailbox.clone(),
                // DMARC quarantine (`dmarc = "enforce"`, p=quarantine):
                // the recipient's Junk folder.
                folder: if junk { "Junk" } else { "INBOX" }.into(),
                prefix: prefix(&msg.sender, &t.address),
                quota: config.directory.user(&t.mailbox).and_then(|u| u.quota),
            })
            .collect();
        let store = self.store.clone();
        let origin = self.origin;
        Box::pin(async move {
            // Parsing a large message is CPU work: off the actor's thread.
            let c = msg.content.clone();
            let summary = match tokio::task::spawn_blocking(move || Summary::parse(&c)).await {
                Ok(s) => Arc::new(s),
                Err(_) => Arc::new(Summary::default()),
            };
            let delivery = Delivery {
                origin,
                queue_id: msg.queue_id.0,
                content: NewContent {
                    content: msg.content.clone(),
                    summary,
                },
                targets,
            };
            match store.deliver(delivery).await {
                Ok(results) => msg
                    .targets
                    .iter()
                    .zip(results)
                    .map(|(t, r)| (t.rcpt, outcome(&t.mailbox, r)))
                    .collect(),
                Err(e) => msg
                    .targets
                    .iter()
                    .map(|t| (t.rcpt, outcome(&t.mailbox, Err(e.clone()))))
                    .collect(),
            }
        })
    }
}
