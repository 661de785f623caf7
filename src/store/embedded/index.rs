//! The index of the embedded store: redb tables and the records in them.
//! Values are versioned bincode records (`spool::record::encode`); keys
//! are redb tuples, so ranges scan in (folder, uid) or (folder, modseq)
//! order.

use redb::{AccessGuard, ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::spool::record::{decode, encode};
use crate::store::{BlobId, MessageMeta, SpecialUse, StoreError};

/// Counters: `account`, `folder`, `blob` (the last id given), and
/// `uidvalidity` (the last UIDVALIDITY given).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Account name (lower case) → `AccountRec`.
pub const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// (account id, folder name) → folder id: names are only a mapping, so a
/// rename rewrites these rows and the folder records, never messages.
pub const FOLDER_NAMES: TableDefinition<(u64, &str), u64> = TableDefinition::new("folder_names");
/// Folder id → `FolderRec`.
pub const FOLDERS: TableDefinition<u64, &[u8]> = TableDefinition::new("folders");
/// (folder id, UID) → `MsgRec`.
pub const MESSAGES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("messages");
/// (folder id, MODSEQ) → UID of the copy whose last change it is.
pub const MODSEQS: TableDefinition<(u64, u64), u32> = TableDefinition::new("modseqs");
/// (folder id, MODSEQ of the expunge) → the UID expunged (QRESYNC).
pub const VANISHED: TableDefinition<(u64, u64), u32> = TableDefinition::new("vanished");
/// Blob id → `BlobRec` (where its octets are, how many copies refer).
pub const BLOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("blobs");
/// Blob id → cached `mime::Summary`.
pub const SUMMARIES: TableDefinition<u64, &[u8]> = TableDefinition::new("summaries");
/// Segment id → (octets written, octets still referred to).
pub const SEGMENTS: TableDefinition<u32, (u64, u64)> = TableDefinition::new("segments");
/// (segment id, blob id): the blobs each segment holds, for compaction.
pub const SEG_BLOBS: TableDefinition<(u32, u64), ()> = TableDefinition::new("seg_blobs");
/// (queue id, folder id) → UID: a local delivery already stored.
pub const DELIVERED: TableDefinition<(u64, u64), u32> = TableDefinition::new("delivered");
/// (account id, name) → (): subscriptions (names need not exist).
pub const SUBSCRIPTIONS: TableDefinition<(u64, &str), ()> = TableDefinition::new("subscriptions");

/// An account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountRec {
    /// Its id.
    pub id: u64,
    /// Octets of all its copies.
    pub bytes: u64,
    /// Its copies.
    pub messages: u64,
}

/// A folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FolderRec {
    /// Owner's id.
    pub account: u64,
    /// Owner's name (lower case), for change events.
    pub account_name: String,
    /// Full name.
    pub name: String,
    /// UIDVALIDITY.
    pub uid_validity: u32,
    /// Next UID.
    pub uid_next: u32,
    /// HIGHESTMODSEQ.
    pub highest_modseq: u64,
    /// Copies.
    pub exists: u32,
    /// Copies without `\Seen`.
    pub unseen: u32,
    /// Copies with `\Deleted`.
    pub deleted: u32,
    /// Octets of the copies.
    pub size: u64,
    /// RFC 6154 use.
    pub special_use: Option<SpecialUse>,
}

/// A message copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MsgRec {
    /// MODSEQ of its last change.
    pub modseq: u64,
    /// System flags.
    pub flags: u16,
    /// Keywords.
    pub keywords: Vec<String>,
    /// INTERNALDATE.
    pub internal_date: i64,
    /// Shared content.
    pub blob: u64,
    /// The blob's length.
    pub blob_len: u64,
    /// Per-copy prefix (`Return-Path:`, `Delivered-To:`).
    pub prefix: Vec<u8>,
    /// The queue id of the delivery that stored it.
    pub queue_id: Option<u64>,
}

impl MsgRec {
    /// RFC822.SIZE.
    pub fn size(&self) -> u64 {
        self.prefix.len() as u64 + self.blob_len
    }

    /// The trait's view of it.
    pub fn meta(&self, uid: u32) -> MessageMeta {
        MessageMeta {
            uid,
            modseq: self.modseq,
            flags: self.flags,
            keywords: self.keywords.clone(),
            internal_date: self.internal_date,
            size: self.size(),
            blob: BlobId(self.blob),
            prefix_len: self.prefix.len() as u32,
            queue_id: self.queue_id,
        }
    }
}

/// Where a blob's octets are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobRec {
    /// Segment.
    pub segment: u32,
    /// Offset in it.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Copies referring to it; the blob is freed when this reaches 0.
    pub refs: u32,
}

/// Maps a redb or I/O error: the store cannot serve now.
pub fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Decodes a stored record.
pub fn load<R: DeserializeOwned>(
    g: Option<AccessGuard<'_, &'static [u8]>>,
) -> Result<Option<R>, StoreError> {
    match g {
        None => Ok(None),
        Some(g) => decode(g.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt(e.to_string())),
    }
}

/// Encodes a record.
pub fn save<R: Serialize>(r: &R) -> Vec<u8> {
    encode(r)
}

/// Every table, open in one write transaction for a whole group commit.
pub struct Tables<'t> {
    pub meta: Table<'t, &'static str, u64>,
    pub accounts: Table<'t, &'static str, &'static [u8]>,
    pub folder_names: Table<'t, (u64, &'static str), u64>,
    pub folders: Table<'t, u64, &'static [u8]>,
    pub messages: Table<'t, (u64, u32), &'static [u8]>,
    pub modseqs: Table<'t, (u64, u64), u32>,
    pub vanished: Table<'t, (u64, u64), u32>,
    pub blobs: Table<'t, u64, &'static [u8]>,
    pub summaries: Table<'t, u64, &'static [u8]>,
    pub segments: Table<'t, u32, (u64, u64)>,
    pub seg_blobs: Table<'t, (u32, u64), ()>,
    pub delivered: Table<'t, (u64, u64), u32>,
    pub subscriptions: Table<'t, (u64, &'static str), ()>,
}

impl<'t> Tables<'t> {
    /// Opens (making if missing) every table.
    pub fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, StoreError> {
        Ok(Tables {
            meta: txn.open_table(META).map_err(io)?,
            accounts: txn.open_table(ACCOUNTS).map_err(io)?,
            folder_names: txn.open_table(FOLDER_NAMES).map_err(io)?,
            folders: txn.open_table(FOLDERS).map_err(io)?,
            messages: txn.open_table(MESSAGES).map_err(io)?,
            modseqs: txn.open_table(MODSEQS).map_err(io)?,
            vanished: txn.open_table(VANISHED).map_err(io)?,
            blobs: txn.open_table(BLOBS).map_err(io)?,
            summaries: txn.open_table(SUMMARIES).map_err(io)?,
            segments: txn.open_table(SEGMENTS).map_err(io)?,
            seg_blobs: txn.open_table(SEG_BLOBS).map_err(io)?,
            delivered: txn.open_table(DELIVERED).map_err(io)?,
            subscriptions: txn.open_table(SUBSCRIPTIONS).map_err(io)?,
        })
    }

    /// Takes the next value of counter `name` (1 the first time).
    pub fn next(&mut self, name: &str) -> Result<u64, StoreError> {
        let n = self
            .meta
            .get(name)
            .map_err(io)?
            .map(|g| g.value())
            .unwrap_or(0)
            + 1;
        self.meta.insert(name, n).map_err(io)?;
        Ok(n)
    }

    /// A folder record.
    pub fn folder(&self, id: u64) -> Result<Option<FolderRec>, StoreError> {
        load(self.folders.get(id).map_err(io)?)
    }

    /// Writes a folder record.
    pub fn put_folder(&mut self, id: u64, f: &FolderRec) -> Result<(), StoreError> {
        self.folders.insert(id, save(f).as_slice()).map_err(io)?;
        Ok(())
    }

    /// An account record.
    pub fn account(&self, name: &str) -> Result<Option<AccountRec>, StoreError> {
        load(self.accounts.get(name).map_err(io)?)
    }

    /// Writes an account record.
    pub fn put_account(&mut self, name: &str, a: &AccountRec) -> Result<(), StoreError> {
        self.accounts.insert(name, save(a).as_slice()).map_err(io)?;
        Ok(())
    }

    /// A message record.
    pub fn message(&self, folder: u64, uid: u32) -> Result<Option<MsgRec>, StoreError> {
        load(self.messages.get((folder, uid)).map_err(io)?)
    }

    /// Writes a message record.
    pub fn put_message(&mut self, folder: u64, uid: u32, m: &MsgRec) -> Result<(), StoreError> {
        self.messages
            .insert((folder, uid), save(m).as_slice())
            .map_err(io)?;
        Ok(())
    }

    /// A blob record.
    pub fn blob(&self, id: u64) -> Result<Option<BlobRec>, StoreError> {
        load(self.blobs.get(id).map_err(io)?)
    }

    /// Writes a blob record.
    pub fn put_blob(&mut self, id: u64, b: &BlobRec) -> Result<(), StoreError> {
        self.blobs.insert(id, save(b).as_slice()).map_err(io)?;
        Ok(())
    }

    /// Adds to a segment's written and live counts (negative: frees).
    pub fn segment_add(&mut self, seg: u32, total: i64, live: i64) -> Result<(), StoreError> {
        let (t, l) = self
            .segments
            .get(seg)
            .map_err(io)?
            .map(|g| g.value())
            .unwrap_or((0, 0));
        let t = t.saturating_add_signed(total);
        let l = l.saturating_add_signed(live);
        self.segments.insert(seg, (t, l)).map_err(io)?;
        Ok(())
    }

    /// The folder id of a name in an account.
    pub fn folder_id(&self, account: u64, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .folder_names
            .get((account, name))
            .map_err(io)?
            .map(|g| g.value()))
    }

    /// Every (name, id) of an account, by name.
    pub fn folder_list(&self, account: u64) -> Result<Vec<(String, u64)>, StoreError> {
        folder_list(&self.folder_names, account)
    }

    /// The UIDs of a folder, ascending.
    pub fn uids(&self, folder: u64) -> Result<Vec<u32>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .messages
            .range((folder, 0u32)..=(folder, u32::MAX))
            .map_err(io)?
        {
            out.push(r.map_err(io)?.0.value().1);
        }
        Ok(out)
    }
}

/// Every (name, id) of an account, by name.
pub fn folder_list<T: ReadableTable<(u64, &'static str), u64>>(
    t: &T,
    account: u64,
) -> Result<Vec<(String, u64)>, StoreError> {
    let mut out = Vec::new();
    for r in t.range((account, "")..(account + 1, "")).map_err(io)? {
        let (k, v) = r.map_err(io)?;
        out.push((k.value().1.to_string(), v.value()));
    }
    Ok(out)
}

/// Read access to the tables a reader needs, from one snapshot.
pub struct Snapshot {
    pub txn: ReadTransaction,
}

impl Snapshot {
    /// An account's record.
    pub fn account(&self, name: &str) -> Result<Option<AccountRec>, StoreError> {
        let t = self.txn.open_table(ACCOUNTS).map_err(io)?;
        load(t.get(name).map_err(io)?)
    }

    /// A folder record.
    pub fn folder(&self, id: u64) -> Result<Option<FolderRec>, StoreError> {
        let t = self.txn.open_table(FOLDERS).map_err(io)?;
        load(t.get(id).map_err(io)?)
    }

    /// A folder id by name.
    pub fn folder_id(&self, account: u64, name: &str) -> Result<Option<u64>, StoreError> {
        let t = self.txn.open_table(FOLDER_NAMES).map_err(io)?;
        Ok(t.get((account, name)).map_err(io)?.map(|g| g.value()))
    }

    /// Every (name, id) of an account.
    pub fn folder_list(&self, account: u64) -> Result<Vec<(String, u64)>, StoreError> {
        let t = self.txn.open_table(FOLDER_NAMES).map_err(io)?;
        folder_list(&t, account)
    }

    /// Whether the account subscribed to a name.
    pub fn subscribed(&self, account: u64, name: &str) -> Result<bool, StoreError> {
        let t = self.txn.open_table(SUBSCRIPTIONS).map_err(io)?;
        Ok(t.get((account, name)).map_err(io)?.is_some())
    }

    /// The subscribed names.
    pub fn subscriptions(&self, account: u64) -> Result<Vec<String>, StoreError> {
        let t = self.txn.open_table(SUBSCRIPTIONS).map_err(io)?;
        let mut out = Vec::new();
        for r in t.range((account, "")..(account + 1, "")).map_err(io)? {
            out.push(r.map_err(io)?.0.value().1.to_string());
        }
        Ok(out)
    }

    /// Copies of a folder with UIDs in `range`, ascending.
    pub fn messages(
        &self,
        folder: u64,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<Vec<MessageMeta>, StoreError> {
        let t = self.txn.open_table(MESSAGES).map_err(io)?;
        let mut out = Vec::new();
        for r in t
            .range((folder, *range.start())..=(folder, *range.end()))
            .map_err(io)?
        {
            let (k, v) = r.map_err(io)?;
            let m: MsgRec = decode(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push(m.meta(k.value().1));
        }
        Ok(out)
    }

    /// One copy.
    pub fn message(&self, folder: u64, uid: u32) -> Result<Option<MsgRec>, StoreError> {
        let t = self.txn.open_table(MESSAGES).map_err(io)?;
        load(t.get((folder, uid)).map_err(io)?)
    }

    /// A blob's record.
    pub fn blob(&self, id: u64) -> Result<Option<BlobRec>, StoreError> {
        let t = self.txn.open_table(BLOBS).map_err(io)?;
        load(t.get(id).map_err(io)?)
    }

    /// A blob's summary, encoded.
    pub fn summary(&self, id: u64) -> Result<Option<crate::mime::Summary>, StoreError> {
        let t = self.txn.open_table(SUMMARIES).map_err(io)?;
        load(t.get(id).map_err(io)?)
    }

    /// The summaries of `ids`, in order, handed to `each` (`None`: none).
    pub fn summaries(
        &self,
        ids: impl Iterator<Item = u64>,
        mut each: impl FnMut(Option<crate::mime::Summary>),
    ) -> Result<(), StoreError> {
        let t = self.txn.open_table(SUMMARIES).map_err(io)?;
        for id in ids {
            each(load(t.get(id).map_err(io)?)?);
        }
        Ok(())
    }

    /// UIDs changed after `modseq`, and UIDs expunged after it.
    pub fn changes(&self, folder: u64, modseq: u64) -> Result<(Vec<u32>, Vec<u32>), StoreError> {
        let after = modseq.saturating_add(1);
        let t = self.txn.open_table(MODSEQS).map_err(io)?;
        let mut changed = Vec::new();
        for r in t.range((folder, after)..=(folder, u64::MAX)).map_err(io)? {
            changed.push(r.map_err(io)?.1.value());
        }
        let t = self.txn.open_table(VANISHED).map_err(io)?;
        let mut vanished = Vec::new();
        for r in t.range((folder, after)..=(folder, u64::MAX)).map_err(io)? {
            vanished.push(r.map_err(io)?.1.value());
        }
        changed.sort_unstable();
        vanished.sort_unstable();
        vanished.dedup();
        Ok((changed, vanished))
    }

    /// Every segment's (id, written, live).
    pub fn segments(&self) -> Result<Vec<(u32, u64, u64)>, StoreError> {
        let t = self.txn.open_table(SEGMENTS).map_err(io)?;
        let mut out = Vec::new();
        for r in t.iter().map_err(io)? {
            let (k, v) = r.map_err(io)?;
            let (w, l) = v.value();
            out.push((k.value(), w, l));
        }
        Ok(out)
    }
}
