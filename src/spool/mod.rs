//! The durable queue: message records, contents, the due index and the
//! in-flight set, all in one tree of the sled store, with group commit.
//!
//! Keyspace (tree `queue`; the first byte says what a key holds):
//! - `m` + queue id (8 bytes BE) → `QueuedMessage` record
//! - `b` + queue id + chunk number (4 bytes BE) → up to `CHUNK_SIZE` octets
//! - `d` + due time (Unix ms, 8 bytes BE) + queue id → empty
//! - `a` + queue id → empty; messages handed to delivery
//!
//! The record is the truth; index entries point to it. Every change is a
//! sequence of single writes (`store::Ops`) in an order that leaves a state
//! readers accept after any prefix (sled recovers a prefix of its log):
//! content before the record; a new due entry, then the record, then the
//! old due entry's removal; on removal, the record first. A reader meeting
//! a due entry whose record disagrees drops the entry; one whose record does
//! not exist yet skips it (the record follows), or drops it once it is old
//! (a removal or a refused message interrupted by a crash). The spool never
//! decides *when* or *where* a message goes; the scheduler and router do.

pub mod compact;
pub mod counts;
pub mod id;
pub mod record;
pub mod store;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use compact::Compacted;
pub use counts::Counts;
pub use id::{BadQueueId, QueueId};
pub use record::{QueuedMessage, RcptState, Recipient, Ret, notify};
pub use store::{CHUNK_SIZE, CommitStats, MIN_FREE, SEGMENT_SIZE, StoreError};
pub use writer::ContentWriter;

use id::IdGenerator;
use store::{Keyspace, Ops, Store, TreeHandle};

/// Queue names shown by `mailq` (as Postfix's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueName {
    /// Being delivered, or not tried yet.
    Active,
    /// Waiting for a retry.
    Deferred,
    /// Held by the administrator.
    Hold,
}

impl QueueName {
    /// The name used in output and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Active => "active",
            QueueName::Deferred => "deferred",
            QueueName::Hold => "hold",
        }
    }

    /// Which queue a message is in: held, in flight or not tried yet
    /// (`active`), or waiting for a retry. `active`: it is in the
    /// in-flight set.
    pub fn of(msg: &QueuedMessage, active: bool) -> QueueName {
        if msg.held {
            QueueName::Hold
        } else if active || msg.recipients.iter().any(|r| r.state == RcptState::Pending) {
            QueueName::Active
        } else {
            QueueName::Deferred
        }
    }

    /// Parses `active`, `deferred` or `hold`.
    pub fn parse(s: &str) -> Option<QueueName> {
        match s {
            "active" => Some(QueueName::Active),
            "deferred" => Some(QueueName::Deferred),
            "hold" => Some(QueueName::Hold),
            _ => None,
        }
    }
}

/// What a listener hands to the spool.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Id taken in advance with `Spool::new_id` (for a `Received:` header),
    /// or `None` to take one now.
    pub id: Option<QueueId>,
    /// Envelope sender; empty for `<>`.
    pub sender: String,
    /// Recipients after alias expansion.
    pub recipients: Vec<Recipient>,
    /// Client description for logs.
    pub client: String,
    /// Listener name.
    pub listener: String,
    /// Message-ID header, if any.
    pub message_id: Option<String>,
    /// RFC 3461 ENVID.
    pub envid: Option<String>,
    /// RFC 3461 RET.
    pub ret: Option<Ret>,
    /// BODY=8BITMIME was declared.
    pub body_8bit: bool,
    /// SMTPUTF8 was declared.
    pub smtputf8: bool,
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const MSG: u8 = b'm';
const BODY: u8 = b'b';
const DUE: u8 = b'd';
const ACTIVE: u8 = b'a';

fn msg_key(id: QueueId) -> [u8; 9] {
    let mut k = [MSG; 9];
    k[1..].copy_from_slice(&id.to_key());
    k
}

fn active_key(id: QueueId) -> [u8; 9] {
    let mut k = [ACTIVE; 9];
    k[1..].copy_from_slice(&id.to_key());
    k
}

fn due_key(time: i64, id: QueueId) -> [u8; 17] {
    let mut k = [DUE; 17];
    k[1..9].copy_from_slice(&(time.max(0) as u64).to_be_bytes());
    k[9..].copy_from_slice(&id.to_key());
    k
}

fn chunk_key(id: QueueId, n: u32) -> [u8; 13] {
    let mut k = [BODY; 13];
    k[1..9].copy_from_slice(&id.to_key());
    k[9..].copy_from_slice(&n.to_be_bytes());
    k
}

/// A due entry without a record older than this is a leftover of a crash
/// and is dropped; a younger one belongs to a record being written.
const ORPHAN_AGE_MS: i64 = 10 * 60 * 1000;

/// Writes the record with its due entry moved to `when`, in the safe
/// order: the new entry, the record, then the old entry's removal.
fn write_record(ops: &mut Ops, msg: &mut QueuedMessage, when: Option<i64>) {
    let old = msg.due;
    if old != when
        && let Some(t) = when
    {
        ops.insert(&due_key(t, msg.id), &[][..]);
    }
    msg.due = when;
    ops.insert(&msg_key(msg.id), record::encode(msg));
    if old != when
        && let Some(o) = old
    {
        ops.remove(&due_key(o, msg.id));
    }
}

/// The file holding a spool's identity (`Spool::identity`).
pub const IDENTITY_FILE: &str = "spool-id";

/// Reads the spool's identity, making it on first use (written to a
/// temporary file, synced, renamed, so a crash leaves none or one).
fn identity(dir: &Path) -> std::io::Result<u64> {
    let path = dir.join(IDENTITY_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(id) = u64::from_str_radix(text.trim(), 16) {
            return Ok(id);
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a spool identity (16 hex digits)",
        ));
    }
    let mut bytes = [0u8; 8];
    getrandom_fill(&mut bytes)?;
    let id = u64::from_be_bytes(bytes).max(1);
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{id:016x}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(id)
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| std::io::Error::other("no randomness"))
}

/// The open spool.
pub struct Spool {
    dir: PathBuf,
    store: Store,
    tree: TreeHandle,
    ids: IdGenerator,
    /// Ids whose content is being written (`ContentWriter`s alive): their
    /// chunks have no record yet and are not orphans.
    writing: std::sync::Mutex<std::collections::HashSet<QueueId>>,
    /// The store epoch after which `recover_reopened` last ran.
    recovered_epoch: std::sync::atomic::AtomicU64,
    /// Queue counts kept as records change (see `counts`); `None` until
    /// `init_counts` ran (commands that open the spool themselves scan).
    counts: std::sync::Mutex<Option<Counts>>,
}

impl Spool {
    /// Opens the spool directory, creating it if needed. Fails with
    /// `StoreError::Locked` if another process has it open.
    pub fn open(dir: &Path) -> Result<Spool, StoreError> {
        let store = Store::open(dir)?;
        let tree = store.handle(Keyspace::Queue);
        let newest = tree
            .snapshot()?
            .scan_prefix([MSG])
            .next_back()
            .transpose()?
            .and_then(|(k, _)| QueueId::from_key(&k[1..]))
            .map(|id| id.0)
            .unwrap_or(0);
        let epoch = tree.epoch();
        Ok(Spool {
            dir: dir.to_path_buf(),
            tree,
            store,
            ids: IdGenerator::new(newest),
            writing: std::sync::Mutex::new(std::collections::HashSet::new()),
            recovered_epoch: std::sync::atomic::AtomicU64::new(epoch),
            counts: std::sync::Mutex::new(None),
        })
    }

    /// This spool's identity: a random number made with the spool (the
    /// file `spool-id`), so deliveries from several spools into one shared
    /// message store are told apart though their queue ids may repeat.
    pub fn identity(&self) -> Result<u64, StoreError> {
        identity(&self.dir)
            .map_err(|e| StoreError::Io(format!("{}: {e}", self.dir.join(IDENTITY_FILE).display())))
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlying store, for other keyspaces (mailboxes) that share the
    /// group commit.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Group-commit counters.
    pub fn commit_stats(&self) -> &CommitStats {
        &self.store.stats
    }

    /// Gives disk space back if the database is mostly dead space (see
    /// `compact`); writers wait during the copy. Blocking; cheap when the
    /// store's counts already rule a copy out.
    pub fn compact(&self) -> Result<Option<Compacted>, StoreError> {
        self.store.compact()
    }

    /// Waits until all writes so far are on stable storage.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.store.commit().await
    }

    /// Takes a fresh queue id.
    pub fn new_id(&self) -> QueueId {
        self.ids.next()
    }

    /// Counts the queue once (a scan) and keeps the counts from then on.
    /// The daemon calls it at start, before anything writes.
    pub fn init_counts(&self) -> Result<(), StoreError> {
        let mut guard = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let active = self.active_set()?;
        let mut c = Counts::default();
        for msg in self.messages() {
            let msg = msg?;
            c.add(&counts::Summary::of(&msg, active.contains(&msg.id)));
        }
        c.publish();
        *guard = Some(c);
        Ok(())
    }

    /// The counts kept since `init_counts`, or `None` before.
    pub fn counts(&self) -> Option<Counts> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Arrival time (Unix ms) of the oldest queued message: the first
    /// record in id order (ids grow with arrival), one look-up.
    pub fn oldest_arrival(&self) -> Result<Option<i64>, StoreError> {
        let first = self
            .tree
            .snapshot()?
            .scan_prefix([MSG])
            .next()
            .transpose()?;
        match first {
            Some((_, v)) => Ok(Some(
                record::decode::<QueuedMessage>(&v)
                    .map_err(|e| StoreError::Io(e.to_string()))?
                    .arrival,
            )),
            None => Ok(None),
        }
    }

    fn summary(&self, id: QueueId) -> Result<Option<counts::Summary>, StoreError> {
        Ok(match self.get(id)? {
            Some(msg) => Some(counts::Summary::of(&msg, self.is_active(id)?)),
            None => None,
        })
    }

    /// Runs a change to message `id`'s record and adjusts the counts by
    /// what it stored before and after.
    fn tracked<T>(
        &self,
        id: QueueId,
        change: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = guard.as_mut() else {
            drop(guard);
            return change();
        };
        let before = self.summary(id);
        let r = change();
        let after = self.summary(id);
        match (before, after) {
            (Ok(b), Ok(a)) => {
                if b != a {
                    if let Some(b) = &b {
                        c.sub(b);
                    }
                    if let Some(a) = &a {
                        c.add(a);
                    }
                    c.publish();
                }
            }
            // Unreadable: counted again at the next start.
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(queue_id = %id, error = %e, "queue counts may be off until restart")
            }
        }
        r
    }

    /// Counts a message just written (its id is not known to anyone else).
    pub(crate) fn counted_new(&self, msg: &QueuedMessage) {
        let mut guard = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = guard.as_mut() {
            c.add(&counts::Summary::of(msg, false));
            c.publish();
        }
    }

    /// Writes a new message (content, then record and due entry) without
    /// waiting for the commit. The message is due at once.
    pub fn write_message(
        &self,
        new: NewMessage,
        content: &[u8],
    ) -> Result<QueuedMessage, StoreError> {
        let id = new.id.unwrap_or_else(|| self.ids.next());
        let now = now_ms();
        let mut ops = Ops::default();
        let mut chunks = 0u32;
        for (n, chunk) in content.chunks(CHUNK_SIZE).enumerate() {
            ops.insert(&chunk_key(id, n as u32), chunk);
            chunks += 1;
        }
        let mut msg = QueuedMessage {
            id,
            arrival: now,
            sender: new.sender,
            size: content.len() as u64,
            client: new.client,
            listener: new.listener,
            message_id: new.message_id,
            recipients: new.recipients,
            held: false,
            envid: new.envid,
            ret: new.ret,
            body_8bit: new.body_8bit,
            smtputf8: new.smtputf8,
            warned: false,
            due: None,
            chunks,
        };
        for r in &mut msg.recipients {
            r.next_attempt = now;
        }
        write_record(&mut ops, &mut msg, Some(now));
        self.tree.apply(ops)?;
        self.counted_new(&msg);
        Ok(msg)
    }

    /// Writes a new message and waits for its commit: when this returns
    /// `Ok`, the message survives a crash.
    pub async fn enqueue(
        &self,
        new: NewMessage,
        content: &[u8],
    ) -> Result<QueuedMessage, StoreError> {
        let epoch = self.tree.epoch();
        let msg = self.write_message(new, content)?;
        self.commit_covering(msg, epoch).await
    }

    /// Starts a new message whose content arrives in pieces (SMTP DATA):
    /// see `writer`. Finish it with `enqueue_stream`; dropping the writer
    /// instead removes what it wrote.
    pub fn begin(self: &Arc<Self>) -> ContentWriter {
        self.recover_reopened();
        ContentWriter::new(self.clone(), self.ids.next())
    }

    /// Writes the rest of a streamed message (`prefix` goes in front of its
    /// content) and its record, and waits for the commit: when this
    /// returns `Ok`, the message survives a crash.
    pub async fn enqueue_stream(
        &self,
        writer: ContentWriter,
        new: NewMessage,
        prefix: &[u8],
    ) -> Result<QueuedMessage, StoreError> {
        let (msg, epoch) = writer.finish(new, prefix)?;
        self.commit_covering(msg, epoch).await
    }

    /// Waits for the commit of a new message written in store epoch
    /// `epoch`; a failed commit, or one of a database reopened since (the
    /// writes are lost), removes the message and refuses it.
    async fn commit_covering(
        &self,
        msg: QueuedMessage,
        epoch: u64,
    ) -> Result<QueuedMessage, StoreError> {
        let r = self.commit().await.and_then(|()| {
            if self.tree.epoch() == epoch {
                Ok(())
            } else {
                Err(StoreError::Io(
                    "the spool database was reopened after a write error before the commit".into(),
                ))
            }
        });
        if let Err(e) = r {
            // Nothing half-stored is left behind for a message we refuse.
            let _ = self.remove(&msg);
            return Err(e);
        }
        Ok(msg)
    }

    fn writing_insert(&self, id: QueueId) {
        self.writing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
    }

    fn writing_remove(&self, id: QueueId) {
        self.writing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Ids that have content chunks but neither a record nor a writer:
    /// left by a crash (or a removal that failed) between the chunks and
    /// the record. One look-up per message, not per chunk.
    pub fn orphaned_content(&self) -> Result<Vec<QueueId>, StoreError> {
        let tree = self.tree.snapshot()?;
        let mut out = Vec::new();
        let mut from = vec![BODY];
        while let Some(item) = tree.range(from.as_slice()..).next() {
            let (k, _) = item?;
            if k.first() != Some(&BODY) {
                break;
            }
            let Some(id) = k.get(1..9).and_then(QueueId::from_key) else {
                break;
            };
            // The writer set first, then the record: a writer leaves the
            // set only after its record is written (or its chunks removed).
            let writing = self
                .writing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id);
            if !writing && !self.tree.contains_key(msg_key(id))? {
                out.push(id);
            }
            match id.0.checked_add(1) {
                Some(next) => from = chunk_key(QueueId(next), 0).to_vec(),
                None => break,
            }
        }
        Ok(out)
    }

    /// Removes orphaned content chunks (see `orphaned_content`). Run at
    /// start and after the store reopened its database; safe while
    /// messages are being written.
    pub fn sweep_orphans(&self) -> Result<usize, StoreError> {
        let ids = self.orphaned_content()?;
        for id in &ids {
            let mut ops = Ops::default();
            let mut prefix = vec![BODY];
            prefix.extend_from_slice(&id.to_key());
            for item in self.tree.snapshot()?.scan_prefix(&prefix) {
                ops.remove(&item?.0);
            }
            self.tree.apply(ops)?;
        }
        if !ids.is_empty() {
            tracing::info!(
                messages = ids.len(),
                "removed orphaned content left by an interrupted write"
            );
        }
        Ok(ids.len())
    }

    /// After the store reopened its database (a write failed, e.g. the disk
    /// was full), writes that were not flushed are gone: the end of a
    /// delivery round may be among them, leaving a message in `active`,
    /// and an interrupted message may have left chunks. Puts the first back
    /// in the due index (the scheduler skips what it still has in flight)
    /// and sweeps the second. Runs once per reopen, from whichever of
    /// intake or the scheduler comes first.
    fn recover_reopened(&self) {
        let now = self.tree.epoch();
        let seen = self.recovered_epoch.load(Ordering::Acquire);
        if now == seen
            || self
                .recovered_epoch
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        if self.counts().is_some()
            && let Err(e) = self.init_counts()
        {
            tracing::error!(error = %e, "cannot count the queue after a reopen");
        }
        match self.recover_active() {
            Ok(n) => tracing::info!(
                recovered = n,
                "spool reopened: messages in flight are due again"
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot recover messages in flight after a reopen")
            }
        }
        if let Err(e) = self.sweep_orphans() {
            tracing::error!(error = %e, "cannot sweep orphaned content after a reopen");
        }
    }

    /// Reads a message record.
    pub fn get(&self, id: QueueId) -> Result<Option<QueuedMessage>, StoreError> {
        match self.tree.get(msg_key(id))? {
            Some(bytes) => record::decode(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Io(format!("{id}: {e}"))),
            None => Ok(None),
        }
    }

    /// Writes a changed record, moving its due-index entry to `when`.
    fn update(&self, msg: &mut QueuedMessage, when: Option<i64>) -> Result<(), StoreError> {
        let mut ops = Ops::default();
        write_record(&mut ops, msg, when);
        self.tracked(msg.id, || self.tree.apply(ops))
    }

    /// Reads a message's content.
    pub fn content(&self, msg: &QueuedMessage) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(msg.size as usize);
        for n in 0..msg.chunks {
            match self.tree.get(chunk_key(msg.id, n))? {
                Some(c) => out.extend_from_slice(&c),
                None => {
                    return Err(StoreError::Io(format!(
                        "{}: content chunk {n} is missing",
                        msg.id
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Removes a message entirely: the record first, so that a crash part
    /// way leaves only entries and chunks that nothing points to.
    pub fn remove(&self, msg: &QueuedMessage) -> Result<(), StoreError> {
        let mut ops = Ops::default();
        ops.remove(&msg_key(msg.id));
        if let Some(t) = msg.due {
            ops.remove(&due_key(t, msg.id));
        }
        ops.remove(&active_key(msg.id));
        for n in 0..msg.chunks {
            ops.remove(&chunk_key(msg.id, n));
        }
        self.tracked(msg.id, || self.tree.apply(ops))
    }

    /// Up to `limit` messages due at or before `now`, earliest first.
    pub fn take_due(&self, now: i64, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        self.recover_reopened();
        let mut out = Vec::new();
        let start = [DUE];
        let end = due_key(now, QueueId(u64::MAX));
        for item in self.tree.snapshot()?.range(&start[..]..=&end[..]) {
            let (key, _) = item?;
            let time = i64::from_be_bytes(key[1..9].try_into().unwrap_or([0; 8]));
            let Some(id) = QueueId::from_key(&key[9..]) else {
                continue;
            };
            match self.get(id)? {
                Some(msg) if msg.due == Some(time) => out.push(msg),
                // The record has moved on: the entry is stale.
                Some(_) => {
                    self.remove_key(&key)?;
                    continue;
                }
                // The record is being written right now (its entry comes
                // first): leave it. An old one is a crash's leftover.
                None if now - time < ORPHAN_AGE_MS => continue,
                None => {
                    tracing::info!(queue_id = %id, "dropping a due entry left by an interrupted write");
                    self.remove_key(&key)?;
                    continue;
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn remove_key(&self, key: &[u8]) -> Result<(), StoreError> {
        let mut ops = Ops::default();
        ops.remove(key);
        self.tree.apply(ops)
    }

    /// Time of the earliest due entry.
    pub fn next_due_time(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .tree
            .snapshot()?
            .scan_prefix([DUE])
            .next()
            .transpose()?
            .map(|(k, _)| i64::from_be_bytes(k[1..9].try_into().unwrap_or([0; 8]))))
    }

    /// Marks a message as handed to delivery: into `active`, out of `due`.
    pub fn mark_active(&self, msg: &mut QueuedMessage) -> Result<(), StoreError> {
        let mut ops = Ops::default();
        ops.insert(&active_key(msg.id), &[][..]);
        write_record(&mut ops, msg, None);
        self.tracked(msg.id, || self.tree.apply(ops))
    }

    /// Ends a message's delivery round: writes its record with its next due
    /// time (none when held) and takes it out of `active`.
    pub fn finish_active(&self, msg: &mut QueuedMessage) -> Result<(), StoreError> {
        let when = if msg.held { None } else { msg.next_due() };
        let mut ops = Ops::default();
        write_record(&mut ops, msg, when);
        ops.remove(&active_key(msg.id));
        self.tracked(msg.id, || self.tree.apply(ops))
    }

    /// Ids left in `active` by a previous run (a crash or a stop mid-delivery).
    pub fn active_ids(&self) -> Result<Vec<QueueId>, StoreError> {
        let mut ids = Vec::new();
        for item in self.tree.snapshot()?.scan_prefix([ACTIVE]) {
            let (k, _) = item?;
            if let Some(id) = QueueId::from_key(&k[1..]) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The in-flight set, for listings that classify every message: one
    /// read of it (it holds at most the delivery concurrency) instead of a
    /// look-up per message.
    pub fn active_set(&self) -> Result<std::collections::HashSet<QueueId>, StoreError> {
        Ok(self.active_ids()?.into_iter().collect())
    }

    /// Whether the message is in the in-flight set.
    pub fn is_active(&self, id: QueueId) -> Result<bool, StoreError> {
        self.tree.contains_key(active_key(id))
    }

    /// Puts messages left in `active` by a previous run back in the due
    /// index, due now. Called once at daemon start.
    pub fn recover_active(&self) -> Result<usize, StoreError> {
        let ids = self.active_ids()?;
        let now = now_ms();
        for id in &ids {
            let mut ops = Ops::default();
            if let Some(mut msg) = self.get(*id)? {
                let when = if msg.held { None } else { Some(now) };
                write_record(&mut ops, &mut msg, when);
            }
            ops.remove(&active_key(*id));
            self.tracked(*id, || self.tree.apply(ops))?;
        }
        Ok(ids.len())
    }

    /// Every message record in id (arrival) order. Unreadable records are
    /// reported as errors in the stream, not skipped silently.
    pub fn messages(&self) -> impl Iterator<Item = Result<QueuedMessage, StoreError>> + '_ {
        self.messages_after(None)
    }

    /// The messages after `after` in id order (all when `None`): the
    /// console's pages start where the previous one ended, one seek into
    /// the tree however long the queue.
    pub fn messages_after(
        &self,
        after: Option<QueueId>,
    ) -> impl Iterator<Item = Result<QueuedMessage, StoreError>> + '_ {
        let (tree, err) = match self.tree.snapshot() {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(Err(e))),
        };
        let start: Vec<u8> = match after {
            // The key after `after`'s: its own key with one more octet.
            Some(id) => [&msg_key(id)[..], &[0]].concat(),
            None => vec![MSG],
        };
        err.into_iter().chain(
            tree.into_iter()
                .flat_map(move |t| t.range(start.clone()..vec![MSG + 1]))
                .map(|item| {
                    let (_, v) = item?;
                    record::decode(&v).map_err(|e| StoreError::Io(e.to_string()))
                }),
        )
    }

    /// Whether the queue is empty (an unreadable queue is not).
    pub fn is_empty(&self) -> bool {
        self.tree
            .snapshot()
            .is_ok_and(|t| t.scan_prefix([MSG]).next().is_none())
    }

    /// Keeps a message from delivery. When it is in flight, only the flag
    /// is set; the end of the round leaves it out of the due index.
    pub fn hold(&self, id: QueueId) -> Result<bool, StoreError> {
        let Some(mut msg) = self.get(id)? else {
            return Ok(false);
        };
        msg.held = true;
        let when = if self.is_active(id)? { msg.due } else { None };
        self.update(&mut msg, when)?;
        Ok(true)
    }

    /// Releases a held message; it is due at once.
    pub fn release(&self, id: QueueId) -> Result<bool, StoreError> {
        let Some(mut msg) = self.get(id)? else {
            return Ok(false);
        };
        if !msg.held {
            return Ok(true);
        }
        msg.held = false;
        self.make_due_now(&mut msg)?;
        Ok(true)
    }

    /// Makes a deferred message due now. Held messages stay held.
    pub fn requeue(&self, id: QueueId) -> Result<bool, StoreError> {
        let Some(mut msg) = self.get(id)? else {
            return Ok(false);
        };
        self.make_due_now(&mut msg)?;
        Ok(true)
    }

    fn make_due_now(&self, msg: &mut QueuedMessage) -> Result<(), StoreError> {
        let now = now_ms();
        for r in msg.recipients.iter_mut().filter(|r| !r.state.is_final()) {
            r.next_attempt = now;
        }
        let when = if msg.held || self.is_active(msg.id)? {
            msg.due
        } else {
            Some(now)
        };
        self.update(msg, when)
    }

    /// Removes a message without a bounce.
    pub fn delete(&self, id: QueueId) -> Result<bool, StoreError> {
        let Some(msg) = self.get(id)? else {
            return Ok(false);
        };
        self.remove(&msg)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_message(rcpts: &[&str]) -> NewMessage {
        NewMessage {
            id: None,
            sender: "alice@example.test".into(),
            recipients: rcpts
                .iter()
                .map(|r| Recipient::new(r.to_string(), None))
                .collect(),
            client: "test".into(),
            listener: "test".into(),
            message_id: None,
            envid: None,
            ret: None,
            body_8bit: false,
            smtputf8: false,
        }
    }

    #[test]
    fn message_round_trips_with_large_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let content: Vec<u8> = (0..(3 * CHUNK_SIZE + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let msg = spool
            .write_message(new_message(&["bob@example.test"]), &content)
            .expect("write");
        spool.store().commit_blocking().expect("commit");
        assert_eq!(msg.chunks, 4);
        let back = spool.get(msg.id).expect("get").expect("present");
        assert_eq!(spool.content(&back).expect("content"), content);
        assert_eq!(spool.take_due(now_ms() + 1, 10).expect("due").len(), 1);
        spool.delete(msg.id).expect("delete");
        assert!(spool.get(msg.id).expect("get").is_none());
        assert!(spool.take_due(now_ms() + 1, 10).expect("due").is_empty());
    }

    #[test]
    fn hold_release_and_requeue_move_the_due_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let msg = spool
            .write_message(new_message(&["x@remote.test"]), b"x")
            .expect("write");
        assert!(spool.hold(msg.id).expect("hold"));
        assert!(spool.take_due(i64::MAX, 10).expect("due").is_empty());
        assert!(spool.requeue(msg.id).expect("requeue"));
        assert!(
            spool.take_due(i64::MAX, 10).expect("due").is_empty(),
            "held stays held"
        );
        assert!(spool.release(msg.id).expect("release"));
        assert_eq!(spool.take_due(i64::MAX, 10).expect("due").len(), 1);
    }

    #[test]
    fn active_messages_are_recovered_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = {
            let spool = Spool::open(dir.path()).expect("open");
            let mut msg = spool
                .write_message(new_message(&["x@remote.test"]), b"x")
                .expect("write");
            spool.mark_active(&mut msg).expect("active");
            spool.store().commit_blocking().expect("commit");
            assert!(spool.take_due(i64::MAX, 10).expect("due").is_empty());
            msg.id
        };
        let spool = Spool::open(dir.path()).expect("reopen");
        assert_eq!(spool.recover_active().expect("recover"), 1);
        let due = spool.take_due(i64::MAX, 10).expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id, id);
    }
}
