//! The move from the first mailbox keyspace (tree `mailbox` of the spool's
//! sled database, `mailbox::store`) into the message store: each mailbox
//! becomes its account's INBOX with the same UIDVALIDITY, UIDs, next UID,
//! flags and arrival times. Run at start-up before anything delivers.
//!
//! Crash-safe by being repeatable: `MailStore::restore` skips UIDs the
//! folder already has, and the old keyspace is marked migrated (and kept,
//! untouched) only after every mailbox was restored and committed.

use crate::mailbox::MailboxStore;
use crate::spool::Spool;

use super::{Append, MailStore, NewContent, StoreError, flags};

/// Messages per `restore` call: one group commit each.
const CHUNK: usize = 64;

/// What a migration carried over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Mailboxes.
    pub mailboxes: usize,
    /// Messages.
    pub messages: usize,
    /// Octets of content.
    pub bytes: u64,
}

/// Carries every mailbox of the old keyspace into `store`, unless done
/// already. `Ok(None)`: nothing to do.
pub async fn from_spool(
    spool: &Spool,
    old: &MailboxStore,
    store: &dyn MailStore,
) -> Result<Option<Migrated>, StoreError> {
    let old_err = |e: crate::spool::StoreError| StoreError::Unavailable(format!("spool: {e}"));
    if old.migrated().map_err(old_err)? {
        return Ok(None);
    }
    let mut done = Migrated::default();
    for (name, state) in old.mailboxes().map_err(old_err)? {
        let metas = old.list(&name).map_err(old_err)?;
        let uid_next = u32::try_from(state.uid_next).unwrap_or(u32::MAX);
        if metas.is_empty() {
            store
                .restore(&name, "INBOX", state.uid_validity, uid_next, Vec::new())
                .await?;
        }
        for chunk in metas.chunks(CHUNK) {
            let mut batch = Vec::with_capacity(chunk.len());
            for m in chunk {
                let content = old.read(&name, m).map_err(old_err)?;
                let Ok(uid) = u32::try_from(m.uid) else {
                    return Err(StoreError::Refused(format!(
                        "{name}: UID {} does not fit IMAP's 32 bits",
                        m.uid
                    )));
                };
                done.bytes += content.len() as u64;
                batch.push((
                    uid,
                    Append {
                        content: NewContent::parse(content),
                        flags: (m.flags as u16) & flags::ALL,
                        keywords: Vec::new(),
                        internal_date: Some(m.arrival.div_euclid(1000)),
                        queue_id: Some(m.queue_id.0),
                        quota: None,
                    },
                ));
            }
            done.messages += batch.len();
            store
                .restore(&name, "INBOX", state.uid_validity, uid_next, batch)
                .await?;
        }
        done.mailboxes += 1;
    }
    old.mark_migrated().map_err(old_err)?;
    spool.commit().await.map_err(old_err)?;
    Ok(Some(done))
}
