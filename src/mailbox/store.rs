//! The mailbox store: per mailbox, messages with a stable unique id (UID),
//! size, arrival time and flags, kept in trees of the spool's sled database
//! and made durable by the spool's group commit. POP3, IMAP and the web read
//! mailboxes through this API.
//!
//! Keyspace (tree `mailbox`; the first byte says what a key holds; NAME is
//! the mailbox name followed by a 0x00 byte):
//! - `m` NAME UID (8 bytes BE) → `MailMeta`
//! - `b` NAME UID chunk (4 bytes BE) → octets
//! - `s` NAME → `MailboxState` (UIDVALIDITY, next UID)
//! - `q` NAME queue id (8 bytes BE) → UID: which queued message this
//!   mailbox already holds, so a delivery repeated after a crash is not
//!   stored twice
//! - `xmigrated` → present once `store::migrate` carried every mailbox
//!   over into the message store
//!
//! An append is ordered single writes (see `spool::store::Ops`): counters,
//! content, meta, then the queue-id mark; a crash part way can skip a UID
//! or (before the mark) let a repeated delivery store a second copy, never
//! reuse a UID or show a message without its content. Only the mailbox
//! actor appends, so reading the counters and writing them back cannot
//! race.

use serde::{Deserialize, Serialize};

use crate::spool::record::{decode, encode};
use crate::spool::store::{Keyspace, Ops, TreeHandle};
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

/// The key that says the keyspace moved to the message store (kind `x`
/// sorts after every other kind and is no mailbox's prefix).
const MIGRATED: &[u8] = b"xmigrated";

/// Access to all mailboxes.
#[derive(Clone)]
pub struct MailboxStore {
    tree: TreeHandle,
}

fn key(kind: u8, mailbox: &str, tail: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(mailbox.len() + 2 + tail.len());
    k.push(kind);
    k.extend_from_slice(mailbox.as_bytes());
    k.push(0);
    k.extend_from_slice(tail);
    k
}

fn meta_key(mailbox: &str, uid: u64) -> Vec<u8> {
    key(b'm', mailbox, &uid.to_be_bytes())
}

fn body_key(mailbox: &str, uid: u64, chunk: u32) -> Vec<u8> {
    let mut k = key(b'b', mailbox, &uid.to_be_bytes());
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

fn seen_key(mailbox: &str, queue_id: QueueId) -> Vec<u8> {
    key(b'q', mailbox, &queue_id.to_key())
}

fn decode_io<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Result<T, StoreError> {
    decode(v).map_err(|e| StoreError::Io(e.to_string()))
}

impl MailboxStore {
    /// Opens the mailbox keyspace of the spool's database.
    pub fn open(spool: &Spool) -> MailboxStore {
        MailboxStore {
            tree: spool.store().handle(Keyspace::Mailbox),
        }
    }

    /// The mailbox's counters (a mailbox never written has UID 1 next).
    pub fn state(&self, mailbox: &str) -> Result<MailboxState, StoreError> {
        Ok(match self.tree.get(key(b's', mailbox, &[]))? {
            Some(v) => decode_io(&v)?,
            None => MailboxState {
                uid_validity: 0,
                uid_next: 1,
            },
        })
    }

    /// Appends a message unless this mailbox already holds the copy of
    /// `queue_id` (then that copy's meta is returned). Durable after the
    /// spool's next commit.
    pub fn append(
        &self,
        mailbox: &str,
        content: &[u8],
        queue_id: QueueId,
        message_id: Option<String>,
    ) -> Result<MailMeta, StoreError> {
        if let Some(uid) = self.tree.get(seen_key(mailbox, queue_id))? {
            let uid = u64::from_be_bytes(uid.as_ref().try_into().unwrap_or([0; 8]));
            if let Some(m) = self.tree.get(meta_key(mailbox, uid))? {
                return decode_io(&m);
            }
        }
        let mut state = self.state(mailbox)?;
        if state.uid_validity == 0 {
            state.uid_validity = (chrono::Utc::now().timestamp() as u32).max(1);
        }
        let uid = state.uid_next;
        state.uid_next += 1;
        // Order (see `Ops`): the counters first, so a UID is never handed
        // out twice even if a crash cuts the rest; then content, meta (which
        // makes the message visible), and the delivered mark.
        let mut ops = Ops::default();
        ops.insert(&key(b's', mailbox, &[]), encode(&state));
        let mut chunks = 0u32;
        for (n, c) in content.chunks(CHUNK_SIZE).enumerate() {
            ops.insert(&body_key(mailbox, uid, n as u32), c);
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
        ops.insert(&meta_key(mailbox, uid), encode(&meta));
        ops.insert(&seen_key(mailbox, queue_id), &uid.to_be_bytes()[..]);
        self.tree.apply(ops)?;
        Ok(meta)
    }

    /// Every mailbox ever written, with its counters (for the move to the
    /// message store).
    pub fn mailboxes(&self) -> Result<Vec<(String, MailboxState)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.snapshot()?.scan_prefix([b's']) {
            let (k, v) = item?;
            let name = &k[1..k.len().saturating_sub(1)];
            out.push((String::from_utf8_lossy(name).into_owned(), decode_io(&v)?));
        }
        Ok(out)
    }

    /// Whether this keyspace was carried over into the message store.
    pub fn migrated(&self) -> Result<bool, StoreError> {
        Ok(self.tree.get(MIGRATED)?.is_some())
    }

    /// Marks the keyspace as carried over (durable after the spool's next
    /// commit). Its data stays, untouched, for a downgrade.
    pub fn mark_migrated(&self) -> Result<(), StoreError> {
        let mut ops = Ops::default();
        ops.insert(MIGRATED, &b"1"[..]);
        self.tree.apply(ops)
    }

    /// Every message in the mailbox, in UID order.
    pub fn list(&self, mailbox: &str) -> Result<Vec<MailMeta>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.snapshot()?.scan_prefix(key(b'm', mailbox, &[])) {
            let (_, v) = item?;
            out.push(decode_io(&v)?);
        }
        Ok(out)
    }

    /// A message's content.
    pub fn read(&self, mailbox: &str, meta: &MailMeta) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(meta.size as usize);
        for n in 0..meta.chunks {
            match self.tree.get(body_key(mailbox, meta.uid, n))? {
                Some(c) => out.extend_from_slice(&c),
                None => {
                    return Err(StoreError::Io(format!(
                        "{mailbox}/{}: chunk {n} is missing",
                        meta.uid
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Removes a message: meta first (it disappears from listings), then
    /// the delivered mark and the content.
    pub fn delete(&self, mailbox: &str, meta: &MailMeta) -> Result<(), StoreError> {
        let mut ops = Ops::default();
        ops.remove(&meta_key(mailbox, meta.uid));
        ops.remove(&seen_key(mailbox, meta.queue_id));
        for n in 0..meta.chunks {
            ops.remove(&body_key(mailbox, meta.uid, n));
        }
        self.tree.apply(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_stable_and_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let store = MailboxStore::open(&spool);
        let a = store
            .append("alice", b"one\r\n", QueueId(1), None)
            .expect("append");
        let b = store
            .append("alice", b"two\r\n", QueueId(2), None)
            .expect("append");
        let other = store
            .append("alicex", b"x\r\n", QueueId(3), None)
            .expect("append");
        let again = store
            .append("alice", b"one\r\n", QueueId(1), None)
            .expect("append");
        assert_eq!(
            again.uid, 1,
            "a repeated delivery of the same queued message is not stored twice"
        );
        assert_eq!((a.uid, b.uid, other.uid), (1, 2, 1));
        assert_eq!(
            store.list("alice").expect("list").len(),
            2,
            "prefix does not leak into alicex"
        );
        store.delete("alice", &b).expect("delete");
        let c = store
            .append("alice", b"three\r\n", QueueId(4), None)
            .expect("append");
        assert_eq!(c.uid, 3);
        assert_eq!(store.read("alice", &c).expect("read"), b"three\r\n");
        assert_eq!(store.state("alice").expect("state").uid_next, 4);
    }
}
