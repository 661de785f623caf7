//! The message store: users' folders and messages, behind one trait that
//! the mailbox actor (local delivery), POP3, IMAP, the webmail and the
//! Maildir export/import use. Backends: `embedded` (the default; needs
//! nothing installed) and, for several nodes, PostgreSQL.
//!
//! Model (RFC 3501 / RFC 9051, RFC 7162, RFC 6154):
//! - An *account* is a mailbox owner: a user's name or a mail-in box's
//!   name. Each has INBOX and the special-use folders Sent, Drafts, Trash,
//!   Junk and Archive, made on first use (`ensure_account`), and any user
//!   folders; the hierarchy delimiter is `/`.
//! - A folder has a UIDVALIDITY, the next UID, and a HIGHESTMODSEQ; UIDs
//!   are never reused in a folder, MODSEQs only grow.
//! - A message copy has a UID, flags and keywords, a MODSEQ (its last
//!   change), an INTERNALDATE, a size, a small per-copy prefix
//!   (`Return-Path:`/`Delivered-To:` lines), and refers to a *blob*: the
//!   content stored once per delivery however many copies refer to it
//!   (reference-counted, freed with the last copy), with its cached MIME
//!   `Summary`.
//! - Expunged UIDs are remembered with the MODSEQ of their removal, for
//!   QRESYNC's VANISHED (RFC 7162 §3.2.10).
//!
//! Durability: every writing call returns only after the backend's commit
//! covering it is on stable storage (the embedded store's group commit).
//!
//! The store knows nothing of IMAP sessions: message sequence numbers,
//! `\Recent` bookkeeping and untagged responses belong to `imap`.

pub mod conformance;
pub mod embedded;
pub mod migrate;
pub mod postgres;
pub mod transfer;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::mime::Summary;

/// System flags of a message copy, as bits (`\Recent` is not stored).
pub mod flags {
    /// `\Seen`
    pub const SEEN: u16 = 1;
    /// `\Answered`
    pub const ANSWERED: u16 = 2;
    /// `\Flagged`
    pub const FLAGGED: u16 = 4;
    /// `\Deleted`
    pub const DELETED: u16 = 8;
    /// `\Draft`
    pub const DRAFT: u16 = 16;
    /// Every system flag.
    pub const ALL: u16 = 31;
}

/// The hierarchy delimiter of folder names.
pub const DELIMITER: char = '/';

/// A folder's identity in the store: never reused, so a folder deleted
/// and made again under the same name is a different folder (with a new
/// UIDVALIDITY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FolderId(pub u64);

/// RFC 6154 special uses of the folders made for every account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SpecialUse {
    /// `\Sent`
    Sent,
    /// `\Drafts`
    Drafts,
    /// `\Trash`
    Trash,
    /// `\Junk`
    Junk,
    /// `\Archive`
    Archive,
}

impl SpecialUse {
    /// Every special use, with the folder name made for it.
    pub const STANDARD: [(SpecialUse, &'static str); 5] = [
        (SpecialUse::Sent, "Sent"),
        (SpecialUse::Drafts, "Drafts"),
        (SpecialUse::Trash, "Trash"),
        (SpecialUse::Junk, "Junk"),
        (SpecialUse::Archive, "Archive"),
    ];

    /// The RFC 6154 attribute.
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Archive => "\\Archive",
        }
    }
}

/// What is known of a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderInfo {
    /// Identity.
    pub id: FolderId,
    /// Full name, `/`-separated (`INBOX`, `Projects/2026`).
    pub name: String,
    /// UIDVALIDITY.
    pub uid_validity: u32,
    /// The UID the next message will get.
    pub uid_next: u32,
    /// HIGHESTMODSEQ (RFC 7162): the MODSEQ of the folder's last change.
    pub highest_modseq: u64,
    /// Messages in the folder.
    pub exists: u32,
    /// Messages without `\Seen`.
    pub unseen: u32,
    /// Messages with `\Deleted`.
    pub deleted: u32,
    /// Sum of the messages' sizes (STATUS=SIZE, RFC 8438).
    pub size: u64,
    /// RFC 6154 attribute, for the standard folders.
    pub special_use: Option<SpecialUse>,
    /// Whether the account subscribed to it.
    pub subscribed: bool,
}

/// One message copy in a folder, without its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// UID in its folder.
    pub uid: u32,
    /// MODSEQ of its last change.
    pub modseq: u64,
    /// System flags (`flags::*`).
    pub flags: u16,
    /// Keywords (`$Forwarded`, `$Junk`, user words), as given.
    pub keywords: Vec<String>,
    /// INTERNALDATE, Unix seconds.
    pub internal_date: i64,
    /// RFC822.SIZE: the prefix and the blob.
    pub size: u64,
    /// The shared content it refers to.
    pub blob: BlobId,
    /// Length of the per-copy prefix in front of the blob.
    pub prefix_len: u32,
    /// The queue id of the local delivery that stored it (`None` for
    /// APPEND, COPY targets keep the source's).
    pub queue_id: Option<u64>,
}

/// A stored content's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobId(pub u64);

/// A message to add: the content (shared between targets of one
/// delivery) and its summary, computed by the caller with `mime`.
#[derive(Debug, Clone)]
pub struct NewContent {
    /// The octets, CRLF line ends.
    pub content: Arc<Vec<u8>>,
    /// Its cached structure.
    pub summary: Arc<Summary>,
}

impl NewContent {
    /// Content whose summary is computed here (`mime::Summary::parse`).
    pub fn parse(content: Vec<u8>) -> NewContent {
        let summary = Arc::new(Summary::parse(&content));
        NewContent {
            content: Arc::new(content),
            summary,
        }
    }

    /// `parse` for a session on the async runtime: a large message is
    /// parsed on the blocking pool, so one APPEND of many megabytes does
    /// not hold up the other sessions on that worker.
    pub async fn parse_off_thread(content: Vec<u8>) -> NewContent {
        if content.len() < PARSE_INLINE {
            return NewContent::parse(content);
        }
        let content = Arc::new(content);
        let c = content.clone();
        let summary = match tokio::task::spawn_blocking(move || Summary::parse(&c)).await {
            Ok(s) => Arc::new(s),
            // The pool is shutting down: parse here rather than fail.
            Err(_) => Arc::new(Summary::parse(&content)),
        };
        NewContent { content, summary }
    }
}

/// Messages under this size are parsed inline (a few microseconds).
const PARSE_INLINE: usize = 64 * 1024;

/// One target of a local delivery.
#[derive(Debug, Clone)]
pub struct DeliveryTarget {
    /// The account (user or mail-in name).
    pub account: String,
    /// The folder: `INBOX`, or `Junk` for quarantined mail.
    pub folder: String,
    /// The per-copy prefix (`Return-Path:` and `Delivered-To:` lines).
    pub prefix: Vec<u8>,
    /// The account's quota in octets, if any: a delivery that would pass
    /// it fails with `StoreError::OverQuota`.
    pub quota: Option<u64>,
}

/// A local delivery of one queued message to one or more accounts.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The spool it was queued in (`Spool::identity`): queue ids are
    /// unique only within one spool, and several nodes (or `petrel drain`
    /// of another node's spool) deliver into one shared store.
    pub origin: u64,
    /// The queue id it comes from: a delivery repeated after a crash (the
    /// same origin and queue id to the same account) is not stored twice.
    pub queue_id: u64,
    /// The content, stored once for all targets.
    pub content: NewContent,
    /// Where it goes.
    pub targets: Vec<DeliveryTarget>,
}

/// Where one delivered copy went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The folder.
    pub folder: FolderId,
    /// The folder's UIDVALIDITY.
    pub uid_validity: u32,
    /// The copy's UID.
    pub uid: u32,
}

/// A message for `append` (IMAP APPEND, the webmail's Sent and Drafts,
/// Maildir import).
#[derive(Debug, Clone)]
pub struct Append {
    /// Content and summary.
    pub content: NewContent,
    /// Initial system flags.
    pub flags: u16,
    /// Initial keywords.
    pub keywords: Vec<String>,
    /// INTERNALDATE, Unix seconds; `None`: now.
    pub internal_date: Option<i64>,
    /// The account's quota, as for deliveries.
    pub quota: Option<u64>,
    /// The local delivery it came from: `None` for APPEND; `restore` (the
    /// move from the old mailbox keyspace) keeps it, also as the mark
    /// that stops a repeated delivery of that queue id.
    pub queue_id: Option<u64>,
}

/// How STORE changes flags (RFC 9051 §6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    /// `FLAGS`: replace.
    Replace,
    /// `+FLAGS`: add.
    Add,
    /// `-FLAGS`: remove.
    Remove,
}

/// A flag change.
#[derive(Debug, Clone)]
pub struct FlagChange {
    /// Replace, add or remove.
    pub op: FlagOp,
    /// System flags.
    pub flags: u16,
    /// Keywords.
    pub keywords: Vec<String>,
    /// RFC 7162 UNCHANGEDSINCE: copies whose MODSEQ is higher are left
    /// alone and reported in `StoreResult::failed`.
    pub unchanged_since: Option<u64>,
}

/// What a flag change did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreResult {
    /// Copies changed (or whose flags already were so), after the change.
    pub updated: Vec<MessageMeta>,
    /// UIDs not changed because of UNCHANGEDSINCE.
    pub failed: Vec<u32>,
}

/// Changes of a folder after some MODSEQ (CONDSTORE/QRESYNC, IDLE).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Copies added or changed after the MODSEQ, in UID order.
    pub changed: Vec<MessageMeta>,
    /// UIDs expunged after the MODSEQ, ascending.
    pub vanished: Vec<u32>,
    /// The folder's HIGHESTMODSEQ now.
    pub highest_modseq: u64,
}

/// What COPY or MOVE did (RFC 4315 COPYUID).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    /// The target's UIDVALIDITY.
    pub uid_validity: u32,
    /// Source UIDs, in the order copied.
    pub from: Vec<u32>,
    /// The new UIDs, in the same order.
    pub to: Vec<u32>,
}

/// An account's use of its quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Octets of all copies in all folders.
    pub bytes: u64,
    /// Copies in all folders.
    pub messages: u64,
}

/// A change that sessions watching the account may want to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Whose.
    pub account_hash: u64,
    /// Which folder.
    pub folder: FolderId,
    /// Its HIGHESTMODSEQ after the change.
    pub modseq: u64,
}

/// Why a store call failed. Protocols map these to their replies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No such folder or message. IMAP `NO [NONEXISTENT]`.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The folder exists already. IMAP `NO [ALREADYEXISTS]`.
    #[error("{0} exists already")]
    Exists(String),
    /// The operation is not allowed (INBOX cannot be deleted, …). IMAP
    /// `NO [CANNOT]`.
    #[error("{0}")]
    Refused(String),
    /// The quota would be passed. IMAP `NO [OVERQUOTA]`; delivery defers,
    /// then bounces (`4.2.2` / `5.2.2`).
    #[error("quota exceeded: {0}")]
    OverQuota(String),
    /// The backend cannot serve now (database down, disk full): try again.
    /// IMAP `NO [UNAVAILABLE]`, SMTP `451 4.3.0`.
    #[error("the message store is unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read; a defect or damage. IMAP
    /// `NO [SERVERBUG]`.
    #[error("message store error: {0}")]
    Corrupt(String),
}

/// The message store. Every method that changes something returns after
/// the change is durable; reads see every change that has returned.
#[async_trait::async_trait]
pub trait MailStore: Send + Sync + 'static {
    /// Makes INBOX and the special-use folders of `account` if missing.
    async fn ensure_account(&self, account: &str) -> Result<(), StoreError>;

    /// The account's folders, by name.
    async fn folders(&self, account: &str) -> Result<Vec<FolderInfo>, StoreError>;

    /// One folder by name (`INBOX` in any case).
    async fn folder(&self, account: &str, name: &str) -> Result<Option<FolderInfo>, StoreError>;

    /// One folder by id (its counters now: after a `ChangeEvent`, for
    /// STATUS, for IDLE).
    async fn folder_info(&self, folder: FolderId) -> Result<FolderInfo, StoreError>;

    /// Makes a folder (and missing parents, RFC 9051 §6.3.4).
    async fn create_folder(
        &self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<FolderInfo, StoreError>;

    /// Deletes a folder and its messages. INBOX cannot be deleted; a
    /// folder with children keeps its name for them (RFC 9051 §6.3.5:
    /// here the children stay and the folder itself is removed).
    async fn delete_folder(&self, account: &str, name: &str) -> Result<(), StoreError>;

    /// Renames a folder and everything below it; costs the number of
    /// folders renamed, not their messages. Renaming INBOX moves its
    /// messages to the new folder and leaves INBOX empty (RFC 9051 §6.3.6).
    async fn rename_folder(&self, account: &str, from: &str, to: &str) -> Result<(), StoreError>;

    /// Subscribes to or unsubscribes from a name (which need not exist).
    async fn set_subscribed(&self, account: &str, name: &str, on: bool) -> Result<(), StoreError>;

    /// The subscribed names.
    async fn subscriptions(&self, account: &str) -> Result<Vec<String>, StoreError>;

    /// Stores one delivery: the content once, a copy per target. One
    /// result per target, in order; an over-quota target fails alone.
    async fn deliver(
        &self,
        delivery: Delivery,
    ) -> Result<Vec<Result<Placed, StoreError>>, StoreError>;

    /// Appends one message to a folder.
    async fn append(
        &self,
        account: &str,
        folder: &str,
        message: Append,
    ) -> Result<Placed, StoreError>;

    /// Every copy in the folder, in UID order (SELECT, POP3's maildrop).
    async fn messages(&self, folder: FolderId) -> Result<Vec<MessageMeta>, StoreError>;

    /// The copies with these UIDs that exist, in UID order.
    async fn metas(&self, folder: FolderId, uids: &[u32]) -> Result<Vec<MessageMeta>, StoreError>;

    /// Copies added or changed, and UIDs expunged, after `modseq`.
    async fn changes_since(&self, folder: FolderId, modseq: u64) -> Result<Changes, StoreError>;

    /// The cached summary of a blob.
    async fn summary(&self, blob: BlobId) -> Result<Arc<Summary>, StoreError>;

    /// The cached summaries of many blobs, in order (`None`: not found),
    /// for SEARCH over a folder: one read for all where the backend can.
    async fn summaries(&self, blobs: &[BlobId]) -> Result<Vec<Option<Arc<Summary>>>, StoreError> {
        let mut out = Vec::with_capacity(blobs.len());
        for &b in blobs {
            out.push(self.summary(b).await.ok());
        }
        Ok(out)
    }

    /// The stored octets of a copy: its prefix, then its blob. `range`
    /// limits the result to those octets of that whole.
    async fn read(
        &self,
        folder: FolderId,
        uid: u32,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Vec<u8>, StoreError>;

    /// Changes flags of the copies with these UIDs (those that exist).
    async fn store_flags(
        &self,
        folder: FolderId,
        uids: &[u32],
        change: FlagChange,
    ) -> Result<StoreResult, StoreError>;

    /// Removes copies: of `uids` (all in the folder when `None`), those
    /// with `\Deleted` when `only_deleted`. Returns the UIDs removed.
    async fn expunge(
        &self,
        folder: FolderId,
        uids: Option<&[u32]>,
        only_deleted: bool,
    ) -> Result<Vec<u32>, StoreError>;

    /// Copies (or moves, removing the sources) the copies with these UIDs
    /// into another folder of the same account; the blobs are shared.
    async fn copy(
        &self,
        from: FolderId,
        uids: &[u32],
        to: FolderId,
        move_: bool,
        quota: Option<u64>,
    ) -> Result<Copied, StoreError>;

    /// Puts messages back into a folder with the UIDs they had elsewhere
    /// (the move from the old mailbox keyspace, a Maildir import that
    /// keeps UIDs). The folder is made if missing; a folder that never
    /// held a message takes `uid_validity`; its next UID becomes at least
    /// `uid_next`. UIDs the folder holds are skipped (so a restore can be
    /// repeated after a crash), and so are UIDs it held and expunged:
    /// UIDs are never reused.
    async fn restore(
        &self,
        account: &str,
        folder: &str,
        uid_validity: u32,
        uid_next: u32,
        messages: Vec<(u32, Append)>,
    ) -> Result<(), StoreError>;

    /// The account's use of storage.
    async fn usage(&self, account: &str) -> Result<Usage, StoreError>;

    /// Change events of every account; receivers filter by folder.
    fn watch(&self) -> tokio::sync::broadcast::Receiver<ChangeEvent>;

    /// Takes the exclusive lock POP3 holds on a maildrop (RFC 1939 §8);
    /// `None` while another session, on any node, holds it. Dropping the
    /// guard releases it.
    async fn lock_maildrop(
        &self,
        account: &str,
    ) -> Result<Option<Box<dyn std::any::Any + Send>>, StoreError>;
}

/// Normalises a folder name: `INBOX` in any case (also as a parent) is
/// `INBOX`; empty names, empty levels, leading or trailing `/`, control
/// characters and LIST wildcards (`*`, `%`, RFC 9051 §6.3.9) are refused.
/// Every backend keys folders by the name this returns.
pub(crate) fn normalize(name: &str) -> Result<String, StoreError> {
    if name.is_empty()
        || name.starts_with(DELIMITER)
        || name.ends_with(DELIMITER)
        || name.contains("//")
        || name.chars().any(|c| c.is_control() || c == '*' || c == '%')
    {
        return Err(StoreError::Refused(format!(
            "{name:?} is not a folder name"
        )));
    }
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok("INBOX".into());
    }
    if name.len() > 6 && name[..6].eq_ignore_ascii_case("INBOX/") {
        return Ok(format!("INBOX/{}", &name[6..]));
    }
    Ok(name.to_string())
}

/// An account's key in every backend: its name in lower case.
pub(crate) fn account_key(account: &str) -> String {
    account.to_ascii_lowercase()
}

/// Whether two keyword lists hold the same words, without case.
pub(crate) fn same_keyword_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|x| b.iter().any(|y| y.eq_ignore_ascii_case(x)))
}

/// Keywords as given, each once (compared without case).
pub(crate) fn dedup_keywords(words: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in words {
        if !out.iter().any(|x| x.eq_ignore_ascii_case(k)) {
            out.push(k.clone());
        }
    }
    out
}

impl FlagChange {
    /// The flags and keywords of a copy after this change.
    pub(crate) fn apply(&self, flags: u16, keywords: &[String]) -> (u16, Vec<String>) {
        let sys = self.flags & flags::ALL;
        let new_flags = match self.op {
            FlagOp::Replace => sys,
            FlagOp::Add => flags | sys,
            FlagOp::Remove => flags & !sys,
        };
        let kw = match self.op {
            FlagOp::Replace => dedup_keywords(&self.keywords),
            FlagOp::Add => {
                let mut all = keywords.to_vec();
                all.extend(self.keywords.iter().cloned());
                dedup_keywords(&all)
            }
            FlagOp::Remove => keywords
                .iter()
                .filter(|x| !self.keywords.iter().any(|k| k.eq_ignore_ascii_case(x)))
                .cloned()
                .collect(),
        };
        (new_flags, kw)
    }
}

/// Opens the configured backend (on the calling runtime: the PostgreSQL
/// backend's connections are driven there).
pub async fn open(config: &crate::config::MessageStore) -> Result<Arc<dyn MailStore>, StoreError> {
    match config {
        crate::config::MessageStore::Embedded { path } => {
            Ok(Arc::new(embedded::EmbeddedStore::open(path)?))
        }
        crate::config::MessageStore::Postgres { url, pool_size } => Ok(Arc::new(
            postgres::PostgresStore::open(url, *pool_size).await?,
        )),
    }
}

/// A stable hash of an account name, for `ChangeEvent`s.
pub fn account_hash(account: &str) -> u64 {
    // FNV-1a: stable across processes and nodes, unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in account.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
