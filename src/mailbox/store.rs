//! The mailbox store: per mailbox, messages with a stable unique id (UID),
//! size, arrival time and flags, kept in trees of the spool's sled database
//! and made durable by the spool's group commit. POP3, IMAP and the web read
//! mailboxes through this API.
//!
//! Keyspace:
//! - `mbox`:       mailbox name, 0x00, UID (8 bytes BE) → `MailMeta`
//! - `mbox_body`:  mailbox name, 0x00, UID, chunk (4 bytes BE) → octets
//! - `mbox_state`: mailbox name → `MailboxState` (UIDVALIDITY, next UID)
//!
//! UIDs grow and are never reused: the next UID is advanced atomically
//! before a message is written.

use serde::{Deserialize, Serialize};

use crate::spool::record::{decode, encode};
use crate::spool::{CHUNK_SIZE, QueueId, Spool, StoreError};

/// Flags of a stored message (IMAP system flags as bits).
pub mod flags {
    /// `\Seen`
    pub const SEEN: u32 = 1;
    /// `\Answered`
    pub const ANSWERED: u32 = 2;
    /// `\Flagged`
    pub const FLAGGED: u32 = 4;
    /// `\Deleted`
    pub const DELETED: u32 = 8;
    /// `\Draft`
    pub const DRAFT: u32 = 16;
}

/// What is known about one stored message without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailMeta {
    /// Unique id within the mailbox; never reused.
    pub uid: u64,
    /// Size in octets (CRLF line ends, as served).
    pub size: u64,
    /// Arrival time, Unix ms.
    pub arrival: i64,
    /// Flag bits (`flags::*`).
    pub flags: u32,
    /// The queue id it was delivered from.
    pub queue_id: QueueId,
    /// Its Message-ID header, if any.
    pub message_id: Option<String>,
    /// Number of content chunks.
    pub chunks: u32,
}

/// Per-mailbox counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxState {
    /// IMAP UIDVALIDITY: fixed when the mailbox is first written.
    pub uid_validity: u32,
    /// The UID the next message gets.
    pub uid_next: u64,
}

/// Access to all mailboxes.
#[derive(Clone)]
pub struct MailboxStore {
    meta: sled::Tree,
    bodies: sled::Tree,
    state: sled::Tree,
}

fn prefix(mailbox: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(mailbox.len() + 13);
    k.extend_from_slice(mailbox.as_bytes());
    k.push(0);
    k
}

fn meta_key(mailbox: &str, uid: u64) -> Vec<u8> {
    let mut k = prefix(mailbox);
    k.extend_from_slice(&uid.to_be_bytes());
    k
}

fn body_key(mailbox: &str, uid: u64, chunk: u32) -> Vec<u8> {
    let mut k = meta_key(mailbox, uid);
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

impl MailboxStore {
    /// Opens the mailbox keyspace of the spool's database.
    pub fn open(spool: &Spool) -> Result<MailboxStore, StoreError> {
        Ok(MailboxStore {
            meta: spool.store().tree("mbox")?,
            bodies: spool.store().tree("mbox_body")?,
            state: spool.store().tree("mbox_state")?,
        })
    }

    /// The mailbox's counters (a mailbox never written has UID 1 next).
    pub fn state(&self, mailbox: &str) -> Result<MailboxState, StoreError> {
        Ok(match self.state.get(mailbox.as_bytes())? {
            Some(v) => decode(&v).map_err(|e| StoreError::Io(e.to_string()))?,
            None => MailboxState {
                uid_validity: 0,
                uid_next: 1,
            },
        })
    }

    /// Advances the next UID atomically and returns the one taken.
    fn take_uid(&self, mailbox: &str) -> Result<u64, StoreError> {
        let mut taken = 0;
        self.state.fetch_and_update(mailbox.as_bytes(), |old| {
            let mut st = old
                .and_then(|v| decode::<MailboxState>(v).ok())
                .unwrap_or(MailboxState {
                    uid_validity: (chrono::Utc::now().timestamp() as u32).max(1),
                    uid_next: 1,
                });
            taken = st.uid_next;
            st.uid_next += 1;
            Some(encode(&st))
        })?;
        Ok(taken)
    }

    /// Appends a message (content first, then its meta record). Durable
    /// after the spool's next commit.
    pub fn append(
        &self,
        mailbox: &str,
        content: &[u8],
        queue_id: QueueId,
        message_id: Option<String>,
    ) -> Result<MailMeta, StoreError> {
        let uid = self.take_uid(mailbox)?;
        let mut chunks = 0u32;
        for (n, c) in content.chunks(CHUNK_SIZE).enumerate() {
            self.bodies.insert(body_key(mailbox, uid, n as u32), c)?;
            chunks += 1;
        }
        let meta = MailMeta {
            uid,
            size: content.len() as u64,
            arrival: crate::spool::now_ms(),
            flags: 0,
            queue_id,
            message_id,
            chunks,
        };
        self.meta.insert(meta_key(mailbox, uid), encode(&meta))?;
        Ok(meta)
    }

    /// Every message in the mailbox, in UID order.
    pub fn list(&self, mailbox: &str) -> Result<Vec<MailMeta>, StoreError> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix(prefix(mailbox)) {
            let (_, v) = item?;
            out.push(decode(&v).map_err(|e| StoreError::Io(e.to_string()))?);
        }
        Ok(out)
    }

    /// A message's content.
    pub fn read(&self, mailbox: &str, meta: &MailMeta) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(meta.size as usize);
        for n in 0..meta.chunks {
            match self.bodies.get(body_key(mailbox, meta.uid, n))? {
                Some(c) => out.extend_from_slice(&c),
                None => return Err(StoreError::Io(format!("{mailbox}/{}: chunk {n} is missing", meta.uid))),
            }
        }
        Ok(out)
    }

    /// Removes a message: meta record first, then content.
    pub fn delete(&self, mailbox: &str, meta: &MailMeta) -> Result<(), StoreError> {
        self.meta.remove(meta_key(mailbox, meta.uid))?;
        for n in 0..meta.chunks {
            self.bodies.remove(body_key(mailbox, meta.uid, n))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_stable_and_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let store = MailboxStore::open(&spool).expect("mailboxes");
        let a = store.append("alice", b"one\r\n", QueueId(1), None).expect("append");
        let b = store.append("alice", b"two\r\n", QueueId(2), None).expect("append");
        let other = store.append("alicex", b"x\r\n", QueueId(3), None).expect("append");
        assert_eq!((a.uid, b.uid, other.uid), (1, 2, 1));
        assert_eq!(store.list("alice").expect("list").len(), 2, "prefix does not leak into alicex");
        store.delete("alice", &b).expect("delete");
        let c = store.append("alice", b"three\r\n", QueueId(4), None).expect("append");
        assert_eq!(c.uid, 3);
        assert_eq!(store.read("alice", &c).expect("read"), b"three\r\n");
        assert_eq!(store.state("alice").expect("state").uid_next, 4);
    }
}
