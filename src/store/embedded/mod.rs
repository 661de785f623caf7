//! The embedded message store: an index in redb (`<store>/index.redb`) and
//! message bodies in append-only segment files (`<store>/segments/`). It
//! needs nothing installed and is the default backend.
//!
//! Writes: every changing call becomes a job for one writer thread, which
//! takes all jobs waiting at that moment, runs them in one redb write
//! transaction (appending new bodies to the current segment), fdatasyncs
//! the segments written, commits the transaction (redb syncs its file),
//! and only then answers every caller: a group commit. A body is on disk
//! before any index row that refers to it, so no crash shows a message
//! without its content.
//!
//! Space: blobs are reference-counted; a segment's live octets are
//! counted in the index. Between batches the writer copies the live blobs
//! of segments that are mostly dead into the current segment and deletes
//! the old files, a bounded amount per batch, so space comes back while
//! the store serves.
//!
//! Must not: be opened twice (redb's file lock refuses a second open);
//! write anywhere but its directory.

mod index;
mod segment;
mod volatile;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable};

use tokio::sync::{broadcast, oneshot};

use self::index::{AccountRec, BlobRec, FolderRec, MsgRec, Snapshot, Tables, io};
use self::segment::{Appender, Readers, list_segments, segment_path};
use super::*;
use crate::mime::Summary;

/// Tuning of the embedded store.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A segment is sealed when the next body would take it past this.
    pub segment_size: u64,
    /// A sealed segment whose live octets are below this percentage of its
    /// written octets is compacted.
    pub compact_below_percent: u64,
    /// Octets of live blobs moved per batch by compaction.
    pub compact_budget: u64,
    /// Test mode: writes stay in this process's memory until synced, so
    /// a SIGKILL loses every unsynced write (`volatile`). Never in the
    /// daemon.
    #[doc(hidden)]
    pub volatile_unsynced: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_size: 64 << 20,
            compact_below_percent: 50,
            compact_budget: 16 << 20,
            volatile_unsynced: false,
        }
    }
}

/// What readers and the writer share.
struct Shared {
    db: Database,
    seg_dir: PathBuf,
    readers: Readers,
    events: broadcast::Sender<ChangeEvent>,
    /// Set when something was freed: the writer looks for a segment to
    /// compact. Cleared when it finds none.
    compact_hint: AtomicBool,
    /// POP3 maildrop locks (one process: a set suffices).
    locks: Arc<Mutex<HashSet<String>>>,
    options: Options,
}

type Done = Box<dyn FnOnce(Option<StoreError>) + Send>;
type Job = Box<dyn for<'a, 't> FnOnce(&'a mut Ctx<'t>) -> (Done, bool) + Send>;

/// The embedded store. Dropping it stops the writer (after the jobs it
/// has) and closes the files.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    /// The writer's queue; `None` once dropping.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmbeddedStore({})", self.shared.seg_dir.display())
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The writer's view during one batch.
pub struct Ctx<'t> {
    t: Tables<'t>,
    seg: &'t mut Appender,
    shared: &'t Shared,
    events: Vec<ChangeEvent>,
    unlink: Vec<u32>,
    now: i64,
}

impl<'t> Ctx<'t> {
    fn event(&mut self, f: &FolderRec, id: u64) {
        self.events.push(ChangeEvent {
            account_hash: account_hash(&f.account_name),
            folder: FolderId(id),
            modseq: f.highest_modseq,
        });
    }

    fn new_uid_validity(&mut self) -> Result<u32, StoreError> {
        let last = self
            .t
            .meta
            .get("uidvalidity")
            .map_err(io)?
            .map(|g| g.value())
            .unwrap_or(0);
        let now = u64::try_from(self.now)
            .unwrap_or(1)
            .min(u64::from(u32::MAX));
        let v = now.max(last + 1).min(u64::from(u32::MAX)).max(1);
        self.t.meta.insert("uidvalidity", v).map_err(io)?;
        Ok(v as u32)
    }

    /// The account, made with its standard folders if new.
    fn account(&mut self, name: &str) -> Result<AccountRec, StoreError> {
        let key = account_key(name);
        if key.is_empty() {
            return Err(StoreError::Refused("an account needs a name".into()));
        }
        if let Some(a) = self.t.account(&key)? {
            return Ok(a);
        }
        let a = AccountRec {
            id: self.t.next("account")?,
            bytes: 0,
            messages: 0,
        };
        self.t.put_account(&key, &a)?;
        self.make_folder(&a, &key, "INBOX", None)?;
        for (use_, name) in SpecialUse::STANDARD {
            self.make_folder(&a, &key, name, Some(use_))?;
        }
        for name in std::iter::once("INBOX").chain(SpecialUse::STANDARD.iter().map(|s| s.1)) {
            self.t.subscriptions.insert((a.id, name), ()).map_err(io)?;
        }
        Ok(a)
    }

    fn make_folder(
        &mut self,
        a: &AccountRec,
        account_name: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<u64, StoreError> {
        let id = self.t.next("folder")?;
        let f = FolderRec {
            account: a.id,
            account_name: account_name.to_string(),
            name: name.to_string(),
            uid_validity: self.new_uid_validity()?,
            uid_next: 1,
            highest_modseq: 1,
            exists: 0,
            unseen: 0,
            deleted: 0,
            size: 0,
            special_use,
        };
        self.t.put_folder(id, &f)?;
        self.t.folder_names.insert((a.id, name), id).map_err(io)?;
        Ok(id)
    }

    /// Makes a folder's missing parents (`a` and `a/b` of `a/b/c`).
    fn make_parents(
        &mut self,
        a: &AccountRec,
        account_name: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        let mut at = 0;
        while let Some(p) = name[at..].find(DELIMITER) {
            let parent = &name[..at + p];
            if self.t.folder_id(a.id, parent)?.is_none() {
                self.make_folder(a, account_name, parent, None)?;
            }
            at += p + 1;
        }
        Ok(())
    }

    fn folder(&self, id: u64) -> Result<FolderRec, StoreError> {
        self.t
            .folder(id)?
            .ok_or_else(|| StoreError::NotFound(format!("folder {id}")))
    }

    fn account_of(&self, f: &FolderRec) -> Result<AccountRec, StoreError> {
        self.t
            .account(&f.account_name)?
            .ok_or_else(|| StoreError::Corrupt(format!("account {} is missing", f.account_name)))
    }

    fn folder_by_name(
        &mut self,
        account: &str,
        name: &str,
    ) -> Result<(AccountRec, u64), StoreError> {
        let a = self.account(account)?;
        let name = normalize(name)?;
        match self.t.folder_id(a.id, &name)? {
            Some(id) => Ok((a, id)),
            None => Err(StoreError::NotFound(name)),
        }
    }

    /// A standard folder (Junk, Sent, …) the user deleted is made again
    /// when mail is delivered to it (quarantined mail goes to Junk).
    fn standard_folder_again(
        &mut self,
        account: &str,
        name: &str,
    ) -> Result<(AccountRec, u64), StoreError> {
        let Some((use_, std_name)) = SpecialUse::STANDARD
            .iter()
            .copied()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
        else {
            return Err(StoreError::NotFound(name.to_string()));
        };
        let a = self.account(account)?;
        let key = account_key(account);
        let id = self.make_folder(&a, &key, std_name, Some(use_))?;
        Ok((a, id))
    }

    /// Writes a body once; the blob starts with no references.
    fn new_blob(&mut self, content: &[u8], summary: &Summary) -> Result<(u64, u64), StoreError> {
        let (seg, offset) = self.seg.append(content).map_err(io)?;
        let id = self.t.next("blob")?;
        let len = content.len() as u64;
        self.t.put_blob(
            id,
            &BlobRec {
                segment: seg,
                offset,
                len,
                refs: 0,
            },
        )?;
        self.t
            .summaries
            .insert(id, index::save(summary).as_slice())
            .map_err(io)?;
        self.t.seg_blobs.insert((seg, id), ()).map_err(io)?;
        self.t.segment_add(seg, len as i64, len as i64)?;
        Ok((id, len))
    }

    fn incref(&mut self, blob: u64) -> Result<(), StoreError> {
        let mut b = self
            .t
            .blob(blob)?
            .ok_or_else(|| StoreError::Corrupt(format!("blob {blob} is missing")))?;
        b.refs += 1;
        self.t.put_blob(blob, &b)
    }

    fn decref(&mut self, blob: u64) -> Result<(), StoreError> {
        let Some(mut b) = self.t.blob(blob)? else {
            return Err(StoreError::Corrupt(format!("blob {blob} is missing")));
        };
        b.refs = b.refs.saturating_sub(1);
        if b.refs > 0 {
            return self.t.put_blob(blob, &b);
        }
        self.t.blobs.remove(blob).map_err(io)?;
        self.t.summaries.remove(blob).map_err(io)?;
        self.t.seg_blobs.remove((b.segment, blob)).map_err(io)?;
        self.t.segment_add(b.segment, 0, -(b.len as i64))?;
        self.shared.compact_hint.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Adds a copy under `uid` (`None`: the folder's next UID).
    fn add_copy(
        &mut self,
        fid: u64,
        uid: Option<u32>,
        mut m: MsgRec,
    ) -> Result<(u32, u32), StoreError> {
        let mut f = self.folder(fid)?;
        let mut a = self.account_of(&f)?;
        let uid = uid.unwrap_or(f.uid_next);
        f.uid_next = f.uid_next.max(uid.saturating_add(1));
        f.highest_modseq += 1;
        m.modseq = f.highest_modseq;
        self.incref(m.blob)?;
        self.t.put_message(fid, uid, &m)?;
        self.t.modseqs.insert((fid, m.modseq), uid).map_err(io)?;
        f.exists += 1;
        if m.flags & flags::SEEN == 0 {
            f.unseen += 1;
        }
        if m.flags & flags::DELETED != 0 {
            f.deleted += 1;
        }
        f.size += m.size();
        a.bytes += m.size();
        a.messages += 1;
        self.t.put_folder(fid, &f)?;
        let key = f.account_name.clone();
        self.t.put_account(&key, &a)?;
        self.event(&f, fid);
        Ok((f.uid_validity, uid))
    }

    /// Removes a copy, remembering its UID as vanished.
    fn remove_copy(
        &mut self,
        fid: u64,
        f: &mut FolderRec,
        a: &mut AccountRec,
        uid: u32,
    ) -> Result<bool, StoreError> {
        let Some(m) = self.t.message(fid, uid)? else {
            return Ok(false);
        };
        self.t.messages.remove((fid, uid)).map_err(io)?;
        self.t.modseqs.remove((fid, m.modseq)).map_err(io)?;
        f.highest_modseq += 1;
        self.t
            .vanished
            .insert((fid, f.highest_modseq), uid)
            .map_err(io)?;
        f.exists = f.exists.saturating_sub(1);
        if m.flags & flags::SEEN == 0 {
            f.unseen = f.unseen.saturating_sub(1);
        }
        if m.flags & flags::DELETED != 0 {
            f.deleted = f.deleted.saturating_sub(1);
        }
        f.size = f.size.saturating_sub(m.size());
        a.bytes = a.bytes.saturating_sub(m.size());
        a.messages = a.messages.saturating_sub(1);
        self.decref(m.blob)?;
        Ok(true)
    }

    fn over_quota(a: &AccountRec, quota: Option<u64>, more: u64) -> Result<(), StoreError> {
        match quota {
            Some(q) if a.bytes.saturating_add(more) > q => Err(StoreError::OverQuota(format!(
                "{} of {q} octets used, {more} more asked",
                a.bytes
            ))),
            _ => Ok(()),
        }
    }

    fn deliver(&mut self, d: &Delivery) -> Result<Vec<Result<Placed, StoreError>>, StoreError> {
        let len = d.content.content.len() as u64;
        let mut results: Vec<Option<Result<Placed, StoreError>>> = Vec::new();
        let mut pending = Vec::new();
        let mut dups = Vec::new();
        for (i, t) in d.targets.iter().enumerate() {
            let found = match self.folder_by_name(&t.account, &t.folder) {
                Err(StoreError::NotFound(_)) => self.standard_folder_again(&t.account, &t.folder),
                r => r,
            };
            let (a, fid) = match found {
                Ok(x) => x,
                Err(e @ (StoreError::NotFound(_) | StoreError::Refused(_))) => {
                    results.push(Some(Err(e)));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if d.queue_id != 0
                && let Some(uid) = self.t.delivered.get((d.queue_id, fid)).map_err(io)?
            {
                let f = self.folder(fid)?;
                results.push(Some(Ok(Placed {
                    folder: FolderId(fid),
                    uid_validity: f.uid_validity,
                    uid: uid.value(),
                })));
                continue;
            }
            // Two targets in one folder (two addresses of one user that
            // intake did not fold): one copy, both told where it is.
            if let Some(&(j, _, _)) = pending.iter().find(|&&(_, f, _)| f == fid) {
                results.push(None);
                dups.push((i, j));
                continue;
            }
            let size = len + t.prefix.len() as u64;
            if let Err(e) = Self::over_quota(&a, t.quota, size) {
                results.push(Some(Err(e)));
                continue;
            }
            results.push(None);
            pending.push((i, fid, a));
        }
        if !pending.is_empty() {
            let (blob, blob_len) = self.new_blob(&d.content.content, &d.content.summary)?;
            for (i, fid, _) in pending {
                let m = MsgRec {
                    modseq: 0,
                    flags: 0,
                    keywords: Vec::new(),
                    internal_date: self.now,
                    blob,
                    blob_len,
                    prefix: d.targets[i].prefix.clone(),
                    queue_id: (d.queue_id != 0).then_some(d.queue_id),
                };
                // A quota is checked against the account as it was before
                // this delivery: two targets of one account (INBOX and a
                // folder) are rare and may pass it by one message.
                let (uid_validity, uid) = self.add_copy(fid, None, m)?;
                if d.queue_id != 0 {
                    self.t
                        .delivered
                        .insert((d.queue_id, fid), uid)
                        .map_err(io)?;
                }
                results[i] = Some(Ok(Placed {
                    folder: FolderId(fid),
                    uid_validity,
                    uid,
                }));
            }
        }
        for (i, j) in dups {
            results[i] = results[j].clone();
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Corrupt("no result".into()))))
            .collect())
    }

    fn append(
        &mut self,
        account: &str,
        folder: &str,
        m: &Append,
        uid: Option<u32>,
    ) -> Result<Placed, StoreError> {
        let (a, fid) = self.folder_by_name(account, folder)?;
        let len = m.content.content.len() as u64;
        Self::over_quota(&a, m.quota, len)?;
        let (blob, blob_len) = self.new_blob(&m.content.content, &m.content.summary)?;
        let keywords = dedup_keywords(&m.keywords);
        let rec = MsgRec {
            modseq: 0,
            flags: m.flags & flags::ALL,
            keywords,
            internal_date: m.internal_date.unwrap_or(self.now),
            blob,
            blob_len,
            prefix: Vec::new(),
            queue_id: m.queue_id,
        };
        let (uid_validity, uid) = self.add_copy(fid, uid, rec)?;
        if let Some(q) = m.queue_id {
            self.t.delivered.insert((q, fid), uid).map_err(io)?;
        }
        Ok(Placed {
            folder: FolderId(fid),
            uid_validity,
            uid,
        })
    }

    fn store_flags(
        &mut self,
        fid: u64,
        uids: &[u32],
        c: &FlagChange,
    ) -> Result<StoreResult, StoreError> {
        let mut f = self.folder(fid)?;
        let mut out = StoreResult::default();
        let mut uids = uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        let mut changed = false;
        for uid in uids {
            let Some(mut m) = self.t.message(fid, uid)? else {
                continue;
            };
            if let Some(since) = c.unchanged_since
                && m.modseq > since
            {
                out.failed.push(uid);
                continue;
            }
            let (new_flags, kw) = c.apply(m.flags, &m.keywords);
            if new_flags == m.flags && same_keyword_set(&kw, &m.keywords) {
                out.updated.push(m.meta(uid));
                continue;
            }
            if (m.flags ^ new_flags) & flags::SEEN != 0 {
                if new_flags & flags::SEEN != 0 {
                    f.unseen = f.unseen.saturating_sub(1);
                } else {
                    f.unseen += 1;
                }
            }
            if (m.flags ^ new_flags) & flags::DELETED != 0 {
                if new_flags & flags::DELETED != 0 {
                    f.deleted += 1;
                } else {
                    f.deleted = f.deleted.saturating_sub(1);
                }
            }
            self.t.modseqs.remove((fid, m.modseq)).map_err(io)?;
            f.highest_modseq += 1;
            m.modseq = f.highest_modseq;
            m.flags = new_flags;
            m.keywords = kw;
            self.t.modseqs.insert((fid, m.modseq), uid).map_err(io)?;
            self.t.put_message(fid, uid, &m)?;
            out.updated.push(m.meta(uid));
            changed = true;
        }
        if changed {
            self.t.put_folder(fid, &f)?;
            self.event(&f, fid);
        }
        Ok(out)
    }

    fn expunge(
        &mut self,
        fid: u64,
        uids: Option<&[u32]>,
        only_deleted: bool,
    ) -> Result<Vec<u32>, StoreError> {
        let mut f = self.folder(fid)?;
        let mut a = self.account_of(&f)?;
        let mut list = match uids {
            Some(u) => u.to_vec(),
            None => self.t.uids(fid)?,
        };
        list.sort_unstable();
        list.dedup();
        let mut removed = Vec::new();
        for uid in list {
            if only_deleted {
                match self.t.message(fid, uid)? {
                    Some(m) if m.flags & flags::DELETED != 0 => {}
                    _ => continue,
                }
            }
            if self.remove_copy(fid, &mut f, &mut a, uid)? {
                removed.push(uid);
            }
        }
        if !removed.is_empty() {
            self.t.put_folder(fid, &f)?;
            let key = f.account_name.clone();
            self.t.put_account(&key, &a)?;
            self.event(&f, fid);
        }
        Ok(removed)
    }

    fn copy(
        &mut self,
        from: u64,
        uids: &[u32],
        to: u64,
        move_: bool,
        quota: Option<u64>,
    ) -> Result<Copied, StoreError> {
        let src = self.folder(from)?;
        let dst = self.folder(to)?;
        if src.account != dst.account {
            return Err(StoreError::Refused("copies stay within one account".into()));
        }
        let mut list = uids.to_vec();
        list.sort_unstable();
        list.dedup();
        let mut msgs = Vec::new();
        let mut total = 0u64;
        for uid in list {
            if let Some(m) = self.t.message(from, uid)? {
                total += m.size();
                msgs.push((uid, m));
            }
        }
        if !move_ || from == to {
            Self::over_quota(&self.account_of(&src)?, quota, total)?;
        }
        let mut out = Copied {
            uid_validity: dst.uid_validity,
            ..Copied::default()
        };
        for (uid, m) in msgs {
            let copy = MsgRec { modseq: 0, ..m };
            let (_, new_uid) = self.add_copy(to, None, copy)?;
            out.from.push(uid);
            out.to.push(new_uid);
        }
        if move_ {
            let mut f = self.folder(from)?;
            let mut a = self.account_of(&f)?;
            for &uid in &out.from {
                self.remove_copy(from, &mut f, &mut a, uid)?;
            }
            self.t.put_folder(from, &f)?;
            let key = f.account_name.clone();
            self.t.put_account(&key, &a)?;
            self.event(&f, from);
        }
        Ok(out)
    }

    fn create_folder(
        &mut self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<u64, StoreError> {
        let a = self.account(account)?;
        let key = account_key(account);
        let name = normalize(name)?;
        if self.t.folder_id(a.id, &name)?.is_some() {
            return Err(StoreError::Exists(name));
        }
        self.make_parents(&a, &key, &name)?;
        self.make_folder(&a, &key, &name, special_use)
    }

    fn delete_folder_id(&mut self, fid: u64) -> Result<(), StoreError> {
        let mut f = self.folder(fid)?;
        let mut a = self.account_of(&f)?;
        for uid in self.t.uids(fid)? {
            self.remove_copy(fid, &mut f, &mut a, uid)?;
        }
        let key = f.account_name.clone();
        self.t.put_account(&key, &a)?;
        self.t.folders.remove(fid).map_err(io)?;
        self.t
            .folder_names
            .remove((f.account, f.name.as_str()))
            .map_err(io)?;
        self.t
            .vanished
            .retain_in((fid, 0u64)..=(fid, u64::MAX), |_, _| false)
            .map_err(io)?;
        self.t
            .modseqs
            .retain_in((fid, 0u64)..=(fid, u64::MAX), |_, _| false)
            .map_err(io)?;
        self.event(&f, fid);
        Ok(())
    }

    fn delete_folder(&mut self, account: &str, name: &str) -> Result<(), StoreError> {
        let (_, fid) = self.folder_by_name(account, name)?;
        if normalize(name)? == "INBOX" {
            return Err(StoreError::Refused("INBOX cannot be deleted".into()));
        }
        self.delete_folder_id(fid)
    }

    fn rename_folder(&mut self, account: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let a = self.account(account)?;
        let key = account_key(account);
        let from = normalize(from)?;
        let to = normalize(to)?;
        let Some(fid) = self.t.folder_id(a.id, &from)? else {
            return Err(StoreError::NotFound(from));
        };
        if to == "INBOX" {
            return Err(StoreError::Exists(to));
        }
        if to == from || to.starts_with(&format!("{from}{DELIMITER}")) {
            return Err(StoreError::Refused(format!(
                "{from} cannot move into itself"
            )));
        }
        // INBOX: its messages go to the new folder, INBOX stays, empty,
        // and its children stay where they are (RFC 9051 §6.3.6). Done
        // by giving the folder the new name and making a fresh INBOX.
        let moving: Vec<(String, u64)> = if from == "INBOX" {
            vec![(from.clone(), fid)]
        } else {
            let prefix = format!("{from}{DELIMITER}");
            self.t
                .folder_list(a.id)?
                .into_iter()
                .filter(|(n, _)| *n == from || n.starts_with(&prefix))
                .collect()
        };
        let renamed: Vec<(u64, String, String)> = moving
            .into_iter()
            .map(|(n, id)| {
                let new = format!("{to}{}", &n[from.len()..]);
                (id, n, new)
            })
            .collect();
        for (_, _, new) in &renamed {
            if self.t.folder_id(a.id, new)?.is_some() {
                return Err(StoreError::Exists(new.clone()));
            }
        }
        for (_, old, _) in &renamed {
            self.t
                .folder_names
                .remove((a.id, old.as_str()))
                .map_err(io)?;
        }
        for (id, _, new) in &renamed {
            let mut f = self.folder(*id)?;
            f.name = new.clone();
            self.t.put_folder(*id, &f)?;
            self.t
                .folder_names
                .insert((a.id, new.as_str()), *id)
                .map_err(io)?;
            self.event(&f, *id);
        }
        if from == "INBOX" {
            self.make_folder(&a, &key, "INBOX", None)?;
        }
        self.make_parents(&a, &key, &to)?;
        Ok(())
    }

    fn restore(
        &mut self,
        account: &str,
        folder: &str,
        uid_validity: u32,
        uid_next: u32,
        messages: &[(u32, Append)],
    ) -> Result<(), StoreError> {
        let a = self.account(account)?;
        let key = account_key(account);
        let name = normalize(folder)?;
        let fid = match self.t.folder_id(a.id, &name)? {
            Some(id) => id,
            None => {
                self.make_parents(&a, &key, &name)?;
                self.make_folder(&a, &key, &name, None)?
            }
        };
        let mut f = self.folder(fid)?;
        if f.exists == 0 && f.uid_next == 1 && uid_validity != 0 {
            f.uid_validity = uid_validity;
        }
        f.uid_next = f.uid_next.max(uid_next);
        self.t.put_folder(fid, &f)?;
        // A UID this folder had and expunged is never given again, not
        // even to a restored message.
        let mut vanished = HashSet::new();
        for r in self
            .t
            .vanished
            .range((fid, 0u64)..=(fid, u64::MAX))
            .map_err(io)?
        {
            vanished.insert(r.map_err(io)?.1.value());
        }
        for (uid, m) in messages {
            if *uid == 0 || vanished.contains(uid) || self.t.message(fid, *uid)?.is_some() {
                continue;
            }
            self.append(
                account,
                &name,
                &Append {
                    quota: None,
                    ..m.clone()
                },
                Some(*uid),
            )?;
        }
        Ok(())
    }

    /// Gives space back: deletes dead segments, and copies the live blobs
    /// of mostly dead ones forward, up to `budget` octets. Returns whether
    /// more is left to do.
    fn compact(&mut self, budget: u64) -> Result<bool, StoreError> {
        let opts = self.shared.options;
        let current = self.seg.current_id();
        let mut segs = Vec::new();
        for r in self.t.segments.iter().map_err(io)? {
            let (k, v) = r.map_err(io)?;
            let (w, l) = v.value();
            segs.push((k.value(), w, l));
        }
        let mut moved = 0u64;
        let mut more = false;
        for (id, written, live) in segs {
            if Some(id) == current {
                // The current segment is sealed once it is big and mostly
                // dead, so that it can be compacted like the others.
                if written >= opts.segment_size / 4
                    && live * 100 < written * opts.compact_below_percent
                {
                    self.seg.seal();
                    more = true;
                }
                continue;
            }
            if live == 0 {
                self.t.segments.remove(id).map_err(io)?;
                self.unlink.push(id);
                continue;
            }
            if live * 100 >= written * opts.compact_below_percent || self.seg.unsynced(id) {
                continue;
            }
            if moved >= budget {
                more = true;
                continue;
            }
            let mut blobs = Vec::new();
            for r in self
                .t
                .seg_blobs
                .range((id, 0u64)..=(id, u64::MAX))
                .map_err(io)?
            {
                blobs.push(r.map_err(io)?.0.value().1);
            }
            for blob in blobs {
                if moved >= budget {
                    break;
                }
                let Some(mut b) = self.t.blob(blob)? else {
                    continue;
                };
                let data = self
                    .shared
                    .readers
                    .read(&self.shared.seg_dir, b.segment, b.offset, b.len as usize)
                    .map_err(io)?;
                let (seg, offset) = self.seg.append(&data).map_err(io)?;
                self.t.seg_blobs.remove((b.segment, blob)).map_err(io)?;
                self.t.segment_add(b.segment, 0, -(b.len as i64))?;
                b.segment = seg;
                b.offset = offset;
                self.t.seg_blobs.insert((seg, blob), ()).map_err(io)?;
                self.t.segment_add(seg, b.len as i64, b.len as i64)?;
                self.t.put_blob(blob, &b)?;
                moved += b.len;
            }
            // Deleted by the next pass, once its live count reads 0.
            more = true;
        }
        Ok(more)
    }
}

/// Runs one batch: every job, a compaction step, sync, commit, answers.
fn run_batch(shared: &Shared, app: &mut Appender, jobs: Vec<Job>, compact_budget: u64) {
    let fail_all = |dones: Vec<Done>, e: StoreError| {
        for d in dones {
            d(Some(e.clone()));
        }
    };
    let now = chrono::Utc::now().timestamp();
    // On any failure before the commit the jobs are dropped unanswered
    // or answered with the error: their callers see `Unavailable`.
    let txn = match shared.db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "message store: cannot begin a write");
            return;
        }
    };
    let mut dones = Vec::with_capacity(jobs.len());
    let mut fatal: Option<StoreError> = None;
    let (events, unlink, more) = {
        let tables = match Tables::open(&txn) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "message store: cannot open tables");
                return;
            }
        };
        let mut ctx = Ctx {
            t: tables,
            seg: app,
            shared,
            events: Vec::new(),
            unlink: Vec::new(),
            now,
        };
        for j in jobs {
            let (done, bad) = j(&mut ctx);
            dones.push(done);
            if bad && fatal.is_none() {
                fatal = Some(StoreError::Unavailable(
                    "a write in this commit failed".into(),
                ));
            }
        }
        let mut more = false;
        if fatal.is_none() && shared.compact_hint.load(Ordering::Relaxed) {
            match ctx.compact(compact_budget) {
                Ok(m) => more = m,
                Err(e) => fatal = Some(e),
            }
        }
        (ctx.events, ctx.unlink, more)
    };
    if let Some(e) = fatal {
        let _ = txn.abort();
        fail_all(dones, e);
        return;
    }
    if let Err(e) = app.sync() {
        let _ = txn.abort();
        tracing::error!(error = %e, "message store: segment sync failed");
        // Never append after octets whose sync failed.
        app.seal();
        fail_all(dones, io(e));
        return;
    }
    if let Err(e) = txn.commit() {
        tracing::error!(error = %e, "message store: commit failed");
        fail_all(dones, io(e));
        return;
    }
    if !more {
        shared.compact_hint.store(false, Ordering::Relaxed);
    }
    for d in dones {
        d(None);
    }
    let mut last: Vec<ChangeEvent> = Vec::new();
    for ev in events.into_iter().rev() {
        if !last.iter().any(|e| e.folder == ev.folder) {
            last.push(ev);
        }
    }
    for ev in last.into_iter().rev() {
        let _ = shared.events.send(ev);
    }
    for id in unlink {
        shared.readers.forget(id);
        if let Err(e) = std::fs::remove_file(segment_path(&shared.seg_dir, id)) {
            tracing::warn!(segment = id, error = %e, "message store: cannot remove a compacted segment");
        }
    }
}

/// How long a delivery's queue id is remembered: a delivery is repeated
/// after a crash within minutes, not days.
const DELIVERED_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// How often the writer forgets old delivered marks.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// A job that forgets delivered marks of queue ids older than
/// `DELIVERED_KEPT_MS` (queue ids start with their time in milliseconds,
/// `spool::id`, so this is one range).
fn prune_job() -> Job {
    Box::new(|c| {
        let cutoff = chrono::Utc::now().timestamp_millis() - DELIVERED_KEPT_MS;
        let before = (
            u64::try_from(cutoff).unwrap_or(0) << crate::spool::id::SEQ_BITS,
            0u64,
        );
        let r =
            c.t.delivered
                .retain_in((0u64, 0u64)..before, |_, _| false)
                .map_err(io);
        if let Err(e) = &r {
            tracing::warn!(error = %e, "message store: cannot forget old delivered marks");
        }
        let done: Done = Box::new(|_| {});
        (done, r.is_err())
    })
}

fn writer(shared: Arc<Shared>, rx: mpsc::Receiver<Job>, mut app: Appender) {
    let mut last_prune = std::time::Instant::now();
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(j) => Some(j),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut jobs: Vec<Job> = first.into_iter().collect();
        while jobs.len() < 4096 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let idle = jobs.is_empty();
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = std::time::Instant::now();
            jobs.push(prune_job());
        }
        if jobs.is_empty() && !shared.compact_hint.load(Ordering::Relaxed) {
            continue;
        }
        // Idle: compaction may take more per batch, nobody waits for it.
        let budget = if idle {
            shared.options.compact_budget * 4
        } else {
            shared.options.compact_budget
        };
        run_batch(&shared, &mut app, jobs, budget);
    }
}

/// A POP3 maildrop lock of the embedded store.
struct MaildropLock {
    set: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

impl EmbeddedStore {
    /// Opens (making if missing) the store in `dir`.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(dir, Options::default())
    }

    /// Opens with explicit tuning (tests use small segments).
    pub fn open_with(dir: &Path, options: Options) -> Result<EmbeddedStore, StoreError> {
        let seg_dir = dir.join("segments");
        std::fs::create_dir_all(&seg_dir).map_err(io)?;
        // The directories' entries (made now or by an earlier start) are
        // durable before anything in them is acknowledged.
        for d in [dir, seg_dir.as_path()] {
            std::fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = std::fs::File::open(parent).and_then(|f| f.sync_all());
        }
        let index = dir.join("index.redb");
        let mut builder = Database::builder();
        builder.set_cache_size(64 << 20);
        let db = if options.volatile_unsynced {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&index)
                .map_err(io)?;
            builder.create_with_backend(volatile::VolatileBackend::new(file).map_err(io)?)
        } else {
            builder.create(&index)
        }
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        {
            let txn = db.begin_write().map_err(io)?;
            Tables::open(&txn)?;
            txn.commit().map_err(io)?;
        }
        // Files the index does not know are from a batch that never
        // committed, or compacted ones whose removal a crash cut: remove.
        let known: Vec<u32> = {
            let snap = Snapshot {
                txn: db.begin_read().map_err(io)?,
            };
            snap.segments()?.into_iter().map(|s| s.0).collect()
        };
        let present = list_segments(&seg_dir).map_err(io)?;
        for id in &present {
            if !known.contains(id) {
                let _ = std::fs::remove_file(segment_path(&seg_dir, *id));
            }
        }
        for id in &known {
            if !present.contains(id) {
                tracing::error!(segment = id, "message store: a segment file is missing");
            }
        }
        let next = known
            .iter()
            .chain(present.iter())
            .max()
            .map_or(1, |m| m + 1);
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            db,
            seg_dir: seg_dir.clone(),
            readers: Readers::default(),
            events,
            compact_hint: AtomicBool::new(true),
            locks: Arc::default(),
            options,
        });
        let (tx, rx) = mpsc::channel();
        let app = Appender::new(
            seg_dir,
            options.segment_size,
            next,
            options.volatile_unsynced,
        );
        let w = shared.clone();
        let writer = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || writer(w, rx, app))
            .map_err(io)?;
        Ok(EmbeddedStore {
            shared,
            jobs: Mutex::new(Some(tx)),
            writer: Some(writer),
        })
    }

    /// Runs `f` in the next group commit; answers after it is durable.
    async fn submit<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: for<'a, 't> FnOnce(&'a mut Ctx<'t>) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            let r = f(ctx);
            let bad = matches!(r, Err(StoreError::Unavailable(_) | StoreError::Corrupt(_)));
            let done: Done = Box::new(move |err| {
                let _ = tx.send(match err {
                    Some(e) => Err(e),
                    None => r,
                });
            });
            (done, bad)
        });
        {
            let q = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let Some(q) = q.as_ref() else {
                return Err(StoreError::Unavailable("the store is closing".into()));
            };
            q.send(job)
                .map_err(|_| StoreError::Unavailable("the store's writer stopped".into()))?;
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("the store's writer stopped".into()))?
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            txn: self.shared.db.begin_read().map_err(io)?,
        })
    }

    fn info(snap: &Snapshot, id: u64, f: FolderRec) -> Result<FolderInfo, StoreError> {
        let subscribed = snap.subscribed(f.account, &f.name)?;
        Ok(FolderInfo {
            id: FolderId(id),
            name: f.name,
            uid_validity: f.uid_validity,
            uid_next: f.uid_next,
            highest_modseq: f.highest_modseq,
            exists: f.exists,
            unseen: f.unseen,
            deleted: f.deleted,
            size: f.size,
            special_use: f.special_use,
            subscribed,
        })
    }

    /// The account's id, making the account on first use.
    async fn account_id(&self, account: &str) -> Result<u64, StoreError> {
        if let Some(a) = self.snapshot()?.account(&account_key(account))? {
            return Ok(a.id);
        }
        self.ensure_account(account).await?;
        self.snapshot()?
            .account(&account_key(account))?
            .map(|a| a.id)
            .ok_or_else(|| StoreError::Corrupt("account vanished".into()))
    }

    /// Octets in segment files and the index, and the live octets of blobs
    /// (for tests, benchmarks and the compaction's figures).
    pub fn disk_usage(&self) -> Result<(u64, u64), StoreError> {
        let snap = self.snapshot()?;
        let live: u64 = snap.segments()?.iter().map(|s| s.2).sum();
        let mut disk = 0;
        for id in list_segments(&self.shared.seg_dir).map_err(io)? {
            if let Ok(m) = std::fs::metadata(segment_path(&self.shared.seg_dir, id)) {
                disk += m.len();
            }
        }
        if let Some(parent) = self.shared.seg_dir.parent()
            && let Ok(m) = std::fs::metadata(parent.join("index.redb"))
        {
            disk += m.len();
        }
        Ok((disk, live))
    }

    fn read_blob(&self, blob: u64, from: u64, to: u64) -> Result<Vec<u8>, StoreError> {
        // A compaction may move the blob between the lookup and the read
        // and remove the old segment: look again.
        for _ in 0..4 {
            let snap = self.snapshot()?;
            let b = snap
                .blob(blob)?
                .ok_or_else(|| StoreError::Corrupt(format!("blob {blob} is missing")))?;
            let to = to.min(b.len);
            let from = from.min(to);
            match self.shared.readers.read(
                &self.shared.seg_dir,
                b.segment,
                b.offset + from,
                (to - from) as usize,
            ) {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            }
        }
        Err(StoreError::Corrupt(format!(
            "blob {blob}: its segment is gone"
        )))
    }
}

#[async_trait::async_trait]
impl MailStore for EmbeddedStore {
    async fn ensure_account(&self, account: &str) -> Result<(), StoreError> {
        let account = account.to_string();
        self.submit(move |c| c.account(&account).map(|_| ())).await
    }

    async fn folders(&self, account: &str) -> Result<Vec<FolderInfo>, StoreError> {
        let acc = self.account_id(account).await?;
        let snap = self.snapshot()?;
        let mut out = Vec::new();
        for (_, id) in snap.folder_list(acc)? {
            if let Some(f) = snap.folder(id)? {
                out.push(Self::info(&snap, id, f)?);
            }
        }
        Ok(out)
    }

    async fn folder(&self, account: &str, name: &str) -> Result<Option<FolderInfo>, StoreError> {
        let acc = self.account_id(account).await?;
        let name = normalize(name)?;
        let snap = self.snapshot()?;
        let Some(id) = snap.folder_id(acc, &name)? else {
            return Ok(None);
        };
        match snap.folder(id)? {
            Some(f) => Ok(Some(Self::info(&snap, id, f)?)),
            None => Ok(None),
        }
    }

    async fn folder_info(&self, folder: FolderId) -> Result<FolderInfo, StoreError> {
        let snap = self.snapshot()?;
        match snap.folder(folder.0)? {
            Some(f) => Self::info(&snap, folder.0, f),
            None => Err(StoreError::NotFound(format!("folder {}", folder.0))),
        }
    }

    async fn create_folder(
        &self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<FolderInfo, StoreError> {
        let (account, name) = (account.to_string(), name.to_string());
        let id = self
            .submit(move |c| c.create_folder(&account, &name, special_use))
            .await?;
        self.folder_info(FolderId(id)).await
    }

    async fn delete_folder(&self, account: &str, name: &str) -> Result<(), StoreError> {
        let (account, name) = (account.to_string(), name.to_string());
        self.submit(move |c| c.delete_folder(&account, &name)).await
    }

    async fn rename_folder(&self, account: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let (account, from, to) = (account.to_string(), from.to_string(), to.to_string());
        self.submit(move |c| c.rename_folder(&account, &from, &to))
            .await
    }

    async fn set_subscribed(&self, account: &str, name: &str, on: bool) -> Result<(), StoreError> {
        let account = account.to_string();
        let name = normalize(name)?;
        self.submit(move |c| {
            let a = c.account(&account)?;
            if on {
                c.t.subscriptions
                    .insert((a.id, name.as_str()), ())
                    .map_err(io)?;
            } else {
                c.t.subscriptions
                    .remove((a.id, name.as_str()))
                    .map_err(io)?;
            }
            Ok(())
        })
        .await
    }

    async fn subscriptions(&self, account: &str) -> Result<Vec<String>, StoreError> {
        let acc = self.account_id(account).await?;
        self.snapshot()?.subscriptions(acc)
    }

    async fn deliver(
        &self,
        delivery: Delivery,
    ) -> Result<Vec<Result<Placed, StoreError>>, StoreError> {
        self.submit(move |c| c.deliver(&delivery)).await
    }

    async fn append(
        &self,
        account: &str,
        folder: &str,
        message: Append,
    ) -> Result<Placed, StoreError> {
        let (account, folder) = (account.to_string(), folder.to_string());
        self.submit(move |c| c.append(&account, &folder, &message, None))
            .await
    }

    async fn messages(&self, folder: FolderId) -> Result<Vec<MessageMeta>, StoreError> {
        let snap = self.snapshot()?;
        if snap.folder(folder.0)?.is_none() {
            return Err(StoreError::NotFound(format!("folder {}", folder.0)));
        }
        snap.messages(folder.0, 0..=u32::MAX)
    }

    async fn metas(&self, folder: FolderId, uids: &[u32]) -> Result<Vec<MessageMeta>, StoreError> {
        let snap = self.snapshot()?;
        let mut uids = uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        let mut out = Vec::with_capacity(uids.len());
        for uid in uids {
            if let Some(m) = snap.message(folder.0, uid)? {
                out.push(m.meta(uid));
            }
        }
        Ok(out)
    }

    async fn changes_since(&self, folder: FolderId, modseq: u64) -> Result<Changes, StoreError> {
        let snap = self.snapshot()?;
        let Some(f) = snap.folder(folder.0)? else {
            return Err(StoreError::NotFound(format!("folder {}", folder.0)));
        };
        let (changed, vanished) = snap.changes(folder.0, modseq)?;
        let mut out = Changes {
            changed: Vec::with_capacity(changed.len()),
            vanished,
            highest_modseq: f.highest_modseq,
        };
        for uid in changed {
            if let Some(m) = snap.message(folder.0, uid)? {
                out.changed.push(m.meta(uid));
            }
        }
        Ok(out)
    }

    async fn summary(&self, blob: BlobId) -> Result<Arc<Summary>, StoreError> {
        self.snapshot()?
            .summary(blob.0)?
            .map(Arc::new)
            .ok_or_else(|| StoreError::NotFound(format!("blob {}", blob.0)))
    }

    async fn summaries(&self, blobs: &[BlobId]) -> Result<Vec<Option<Arc<Summary>>>, StoreError> {
        // One read transaction and one table for the whole folder.
        let snap = self.snapshot()?;
        let mut out = Vec::with_capacity(blobs.len());
        snap.summaries(blobs.iter().map(|b| b.0), |s| out.push(s.map(Arc::new)))?;
        Ok(out)
    }

    async fn read(
        &self,
        folder: FolderId,
        uid: u32,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Vec<u8>, StoreError> {
        let m = self
            .snapshot()?
            .message(folder.0, uid)?
            .ok_or_else(|| StoreError::NotFound(format!("UID {uid}")))?;
        let total = m.size();
        let range = range.unwrap_or(0..total);
        let (start, end) = (range.start.min(total), range.end.min(total));
        if start >= end {
            return Ok(Vec::new());
        }
        let plen = m.prefix.len() as u64;
        let mut out = Vec::with_capacity((end - start) as usize);
        if start < plen {
            out.extend_from_slice(&m.prefix[start as usize..end.min(plen) as usize]);
        }
        if end > plen {
            let from = start.saturating_sub(plen);
            let to = end - plen;
            out.extend_from_slice(&self.read_blob(m.blob, from, to)?);
        }
        Ok(out)
    }

    async fn store_flags(
        &self,
        folder: FolderId,
        uids: &[u32],
        change: FlagChange,
    ) -> Result<StoreResult, StoreError> {
        let uids = uids.to_vec();
        self.submit(move |c| c.store_flags(folder.0, &uids, &change))
            .await
    }

    async fn expunge(
        &self,
        folder: FolderId,
        uids: Option<&[u32]>,
        only_deleted: bool,
    ) -> Result<Vec<u32>, StoreError> {
        let uids = uids.map(|u| u.to_vec());
        self.submit(move |c| c.expunge(folder.0, uids.as_deref(), only_deleted))
            .await
    }

    async fn copy(
        &self,
        from: FolderId,
        uids: &[u32],
        to: FolderId,
        move_: bool,
        quota: Option<u64>,
    ) -> Result<Copied, StoreError> {
        let uids = uids.to_vec();
        self.submit(move |c| c.copy(from.0, &uids, to.0, move_, quota))
            .await
    }

    async fn restore(
        &self,
        account: &str,
        folder: &str,
        uid_validity: u32,
        uid_next: u32,
        messages: Vec<(u32, Append)>,
    ) -> Result<(), StoreError> {
        let (account, folder) = (account.to_string(), folder.to_string());
        self.submit(move |c| c.restore(&account, &folder, uid_validity, uid_next, &messages))
            .await
    }

    async fn usage(&self, account: &str) -> Result<Usage, StoreError> {
        let a = self.snapshot()?.account(&account_key(account))?;
        Ok(a.map(|a| Usage {
            bytes: a.bytes,
            messages: a.messages,
        })
        .unwrap_or_default())
    }

    fn watch(&self) -> broadcast::Receiver<ChangeEvent> {
        self.shared.events.subscribe()
    }

    async fn lock_maildrop(
        &self,
        account: &str,
    ) -> Result<Option<Box<dyn std::any::Any + Send>>, StoreError> {
        let name = account_key(account);
        let mut set = self.shared.locks.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(name.clone()) {
            return Ok(None);
        }
        Ok(Some(Box::new(MaildropLock {
            set: self.shared.locks.clone(),
            name,
        })))
    }
}
