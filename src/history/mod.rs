//! Message history: what happened to each message, kept after it leaves the
//! queue, for `petrel track` and the console's recent rejections.
//!
//! Events (accepted, each delivery attempt, reports sent, removal, refusals
//! at the door, administrators' changes) are recorded by the parts where
//! they happen through `History::record`, which never blocks: a writer
//! thread takes them in batches and commits each batch in one redb
//! transaction (durable when it returns; a crash loses at most the last
//! batch, about `BATCH_WAIT` of history — never queued mail, which the spool
//! keeps). The history is bounded by age and by size (`[history]`): the
//! writer drops the oldest events past either bound.
//!
//! Keyspace (`<spool>/history.redb`):
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `events` | (time ms, seq) | versioned JSON `Event` |
//! | `by_queue` | (queue id, time ms, seq) | () |
//! | `by_term` | (term hash, time ms, seq) | () |
//! | `meta` | name | u64 (`bytes`: the events' stored size) |
//!
//! A term is a searchable value of an event: `m:` Message-ID, `f:` sender,
//! `t:` recipient, `c:` client address, all lower case, hashed to 64 bits;
//! a query reads the matching index range and checks each event it finds
//! against the real value, so a hash collision costs a read, never a wrong
//! answer. Every look-up is an index range scan: a week of 100,000
//! messages a day is searched in milliseconds.
//!
//! This module only stores and finds; it never touches the queue.

pub mod query;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

pub use query::{Selector, Trace};

/// (time ms, seq) → event.
const EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("events");
/// (queue id, time ms, seq) → ().
const BY_QUEUE: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("by_queue");
/// (term hash, time ms, seq) → ().
const BY_TERM: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("by_term");
/// Counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file inside the spool directory.
pub const FILE_NAME: &str = "history.redb";
/// Format version in front of every stored event.
const EVENT_VERSION: u8 = 1;
/// Events waiting for the writer before `record` starts dropping them.
/// The channel grows as events wait (std's list channel), so the bound
/// costs no memory until it is used: a preallocated `sync_channel` of this
/// size was 10 MiB of an idle daemon's 12 MiB heap.
const CHANNEL: usize = 65_536;
/// The writer commits at least this often while events arrive.
const BATCH_WAIT: Duration = Duration::from_millis(200);
/// Most events per commit.
const BATCH_MAX: usize = 20_000;
/// Index entries cost about this much besides the event itself.
const INDEX_OVERHEAD: u64 = 64;
/// How often the writer looks for events older than `max_age`.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Why the history could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("message history: {0}")]
pub struct HistoryError(pub String);

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for HistoryError {
            fn from(e: $t) -> Self {
                HistoryError(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A message was queued.
    Accepted {
        /// `[ip]`, `sendmail`, `petrel` (reports), `webmail`.
        client: String,
        /// The listener it came in on.
        listener: String,
        /// Octets.
        size: u64,
        /// Envelope sender (empty for `<>`).
        sender: String,
        /// Recipients as queued (after alias expansion).
        recipients: Vec<String>,
        /// The Message-ID header.
        message_id: Option<String>,
    },
    /// One delivery attempt for one recipient.
    Attempt {
        /// The recipient.
        to: String,
        /// Where it went: `host[ip]:port`, `mailbox NAME`, `none`.
        relay: String,
        /// `sent`, `deferred`, `bounced`, `expired`.
        status: String,
        /// RFC 3463 status.
        dsn: String,
        /// The text: the peer's reply, or why.
        reason: String,
        /// Seconds since arrival.
        delay: f64,
    },
    /// A delivery status notification was queued to the sender.
    Notified {
        /// `failed`, `delayed`, `delivered`, `relayed`.
        action: String,
        /// The report's own queue id.
        report: u64,
        /// Its recipient (the original sender).
        to: String,
    },
    /// The message left the queue (every recipient final, or deleted).
    Removed {
        /// `done` or `deleted`.
        reason: String,
    },
    /// A session was refused something (no queue id).
    Rejected {
        /// `[ip]`.
        client: String,
        /// The listener.
        listener: String,
        /// `connect`, `HELO`, `MAIL`, `RCPT`, `DATA`, `AUTH`.
        stage: String,
        /// The reply code.
        code: u16,
        /// The reply text.
        reason: String,
        /// The envelope sender, when known.
        sender: Option<String>,
        /// The recipient, when the refusal was about one.
        recipient: Option<String>,
    },
    /// An administrator changed the message (hold, release, requeue, delete).
    Admin {
        /// The operation.
        op: String,
        /// Who (console user), if known.
        by: Option<String>,
    },
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix ms.
    pub time: i64,
    /// The message's queue id, when it has one.
    pub queue_id: Option<u64>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// An event now.
    pub fn now(queue_id: Option<u64>, kind: EventKind) -> Event {
        Event {
            time: chrono::Utc::now().timestamp_millis(),
            queue_id,
            kind,
        }
    }

    /// The searchable terms of the event (before hashing).
    pub fn terms(&self) -> Vec<String> {
        let mut t = Vec::new();
        let lower = |p: &str, s: &str| format!("{p}{}", s.trim().to_ascii_lowercase());
        match &self.kind {
            EventKind::Accepted {
                client,
                sender,
                recipients,
                message_id,
                ..
            } => {
                t.push(lower("f:", sender));
                t.extend(recipients.iter().map(|r| lower("t:", r)));
                t.push(lower("c:", client));
                if let Some(m) = message_id {
                    t.push(message_id_term(m));
                }
            }
            EventKind::Rejected {
                client,
                sender,
                recipient,
                ..
            } => {
                t.push(lower("c:", client));
                if let Some(s) = sender {
                    t.push(lower("f:", s));
                }
                if let Some(r) = recipient {
                    t.push(lower("t:", r));
                }
            }
            EventKind::Attempt { to, .. } => t.push(lower("t:", to)),
            _ => {}
        }
        t.sort();
        t.dedup();
        t
    }
}

/// The term of a Message-ID: without its angle brackets, lower case.
pub fn message_id_term(m: &str) -> String {
    let m = m.trim();
    let m = m.strip_prefix('<').unwrap_or(m);
    let m = m.strip_suffix('>').unwrap_or(m);
    format!("m:{}", m.to_ascii_lowercase())
}

/// FNV-1a, stable across versions and machines.
pub fn term_hash(term: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in term.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Events are stored as JSON behind a version byte: self-describing (the
/// event enum is tagged, which bincode cannot read back), and the form
/// `petrel track --json` prints anyway.
fn encode(e: &Event) -> Vec<u8> {
    let mut out = vec![EVENT_VERSION];
    // A struct of strings and numbers always serialises.
    out.extend(serde_json::to_vec(e).unwrap_or_default());
    out
}

fn decode(bytes: &[u8]) -> Option<Event> {
    match bytes.split_first() {
        Some((&EVENT_VERSION, rest)) => serde_json::from_slice(rest).ok(),
        _ => None,
    }
}

/// The daemon's history, once it is open (`install`).
static INSTALLED: std::sync::OnceLock<History> = std::sync::OnceLock::new();

/// Makes `history` the one `record` writes to: the daemon does this once at
/// start, so the parts where events happen (intake, the scheduler, the SMTP
/// session, queue operations) record without carrying a handle. Later calls
/// are ignored.
pub fn install(history: History) {
    let _ = INSTALLED.set(history);
}

/// Records an event in the installed history; nothing when none is (the
/// CLI working on the spool directly, unit tests). Never blocks.
pub fn record(queue_id: Option<u64>, kind: EventKind) {
    if let Some(h) = INSTALLED.get() {
        h.record(Event::now(queue_id, kind));
    }
}

/// The bounds the writer keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Events older than this are dropped.
    pub max_age: Duration,
    /// The stored events are kept under this many octets.
    pub max_size: u64,
}

/// The open history. Cheap to clone; `record` never blocks.
#[derive(Clone)]
pub struct History {
    db: Arc<Database>,
    tx: mpsc::Sender<Command>,
    /// Events sent and not yet taken by the writer (bounded by `CHANNEL`).
    pending: Arc<AtomicUsize>,
    /// Events dropped because the writer fell behind.
    pub dropped: Arc<AtomicU64>,
}

/// The history database's page cache.
const CACHE_SIZE: usize = 16 << 20;

enum Command {
    Record(Event),
    /// Answered once everything recorded before it is committed.
    Sync(mpsc::Sender<()>),
    SetLimits(Limits),
}

impl History {
    /// Opens (or creates) the history file and starts its writer.
    pub fn open(path: &Path, limits: Limits) -> Result<History, HistoryError> {
        // redb's default page cache is 1 GiB, and a busy day's history
        // fills it: a queue of 1 M messages held 1.4 GiB at rest. Searches
        // are index range scans and writes are batched, so a small cache
        // serves them.
        let db = Arc::new(
            Database::builder()
                .set_cache_size(CACHE_SIZE)
                .create(path)
                .map_err(|e| HistoryError(e.to_string()))?,
        );
        {
            let w = db.begin_write()?;
            w.open_table(EVENTS)?;
            w.open_table(BY_QUEUE)?;
            w.open_table(BY_TERM)?;
            w.open_table(META)?;
            w.commit()?;
        }
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let (writer_db, writer_pending) = (db.clone(), pending.clone());
        std::thread::Builder::new()
            .name("petrel-history".into())
            .spawn(move || writer(&writer_db, rx, &writer_pending, limits))
            .map_err(|e| HistoryError(e.to_string()))?;
        Ok(History {
            db,
            tx,
            pending,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Records an event; drops it (and counts the drop) if the writer is
    /// far behind, so that no session ever waits for the history.
    pub fn record(&self, event: Event) {
        if self.pending.fetch_add(1, Ordering::Relaxed) >= CHANNEL
            || self.tx.send(Command::Record(event)).is_err()
        {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until everything recorded so far is committed (tests, the CLI
    /// before it answers, shutdown).
    pub fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Command::Sync(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
    }

    /// Changes the bounds (reload).
    pub fn set_limits(&self, limits: Limits) {
        let _ = self.tx.send(Command::SetLimits(limits));
    }

    /// The database, for queries.
    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Octets of stored events and their index entries.
    pub fn stored_bytes(&self) -> Result<u64, HistoryError> {
        let r = self.db.begin_read()?;
        let meta = r.open_table(META)?;
        Ok(meta.get("bytes")?.map(|v| v.value()).unwrap_or(0))
    }
}

fn writer(db: &Database, rx: mpsc::Receiver<Command>, pending: &AtomicUsize, mut limits: Limits) {
    let mut seq: u64 = 0;
    let mut last_prune = Instant::now() - PRUNE_EVERY;
    loop {
        let first = match rx.recv_timeout(PRUNE_EVERY) {
            Ok(c) => Some(c),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = Vec::new();
        let mut syncs = Vec::new();
        let mut next = first;
        let mut slept = false;
        while let Some(c) = next.take() {
            match c {
                Command::Record(e) => {
                    pending.fetch_sub(1, Ordering::Relaxed);
                    batch.push(e)
                }
                Command::Sync(s) => {
                    syncs.push(s);
                    break;
                }
                Command::SetLimits(l) => limits = l,
            }
            if batch.len() >= BATCH_MAX {
                break;
            }
            next = rx.try_recv().ok();
            if next.is_none() && !slept && !batch.is_empty() {
                // Let the batch fill while asleep: one wake-up per
                // BATCH_WAIT, not one per event (a thread woken for every
                // event of every message cost more than writing them).
                std::thread::sleep(BATCH_WAIT);
                slept = true;
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty()
            && let Err(e) = write_batch(db, &batch, &mut seq)
        {
            tracing::error!(error = %e, events = batch.len(), "cannot write the message history");
        }
        let over_size = stored(db).is_ok_and(|b| b > limits.max_size);
        if over_size || last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            if let Err(e) = prune(db, limits) {
                tracing::error!(error = %e, "cannot prune the message history");
            }
        }
        for s in syncs {
            let _ = s.send(());
        }
    }
}

fn stored(db: &Database) -> Result<u64, HistoryError> {
    let r = db.begin_read()?;
    let meta = r.open_table(META)?;
    Ok(meta.get("bytes")?.map(|v| v.value()).unwrap_or(0))
}

fn write_batch(db: &Database, batch: &[Event], seq: &mut u64) -> Result<(), HistoryError> {
    let w = db.begin_write()?;
    {
        let mut events = w.open_table(EVENTS)?;
        let mut by_queue = w.open_table(BY_QUEUE)?;
        let mut by_term = w.open_table(BY_TERM)?;
        let mut meta = w.open_table(META)?;
        let mut bytes = meta.get("bytes")?.map(|v| v.value()).unwrap_or(0);
        for e in batch {
            *seq = seq.wrapping_add(1);
            let t = e.time.max(0) as u64;
            let value = encode(e);
            let terms = e.terms();
            bytes += value.len() as u64 + INDEX_OVERHEAD * (1 + terms.len() as u64);
            events.insert((t, *seq), value.as_slice())?;
            if let Some(q) = e.queue_id {
                by_queue.insert((q, t, *seq), ())?;
            }
            for term in &terms {
                by_term.insert((term_hash(term), t, *seq), ())?;
            }
        }
        meta.insert("bytes", bytes)?;
    }
    w.commit()?;
    Ok(())
}

/// Drops events older than `max_age`, then the oldest until the stored size
/// is under 90 % of `max_size`, in bounded transactions.
fn prune(db: &Database, limits: Limits) -> Result<(), HistoryError> {
    let cutoff =
        (chrono::Utc::now().timestamp_millis() - limits.max_age.as_millis() as i64).max(0) as u64;
    loop {
        let w = db.begin_write()?;
        let done;
        {
            let mut events = w.open_table(EVENTS)?;
            let mut by_queue = w.open_table(BY_QUEUE)?;
            let mut by_term = w.open_table(BY_TERM)?;
            let mut meta = w.open_table(META)?;
            let mut bytes = meta.get("bytes")?.map(|v| v.value()).unwrap_or(0);
            let target = limits.max_size / 10 * 9;
            let mut removed = 0usize;
            let mut doomed = Vec::new();
            for item in events.iter()? {
                let (k, v) = item?;
                let (t, seq) = k.value();
                if t >= cutoff && bytes <= target {
                    break;
                }
                let value = v.value().to_vec();
                let cost = value.len() as u64;
                let event = decode(&value);
                let terms = event.as_ref().map(Event::terms).unwrap_or_default();
                bytes = bytes.saturating_sub(cost + INDEX_OVERHEAD * (1 + terms.len() as u64));
                doomed.push((t, seq, event.and_then(|e| e.queue_id), terms));
                removed += 1;
                if removed >= 10_000 {
                    break;
                }
            }
            for (t, seq, queue_id, terms) in &doomed {
                events.remove((*t, *seq))?;
                if let Some(q) = queue_id {
                    by_queue.remove((*q, *t, *seq))?;
                }
                for term in terms {
                    by_term.remove((term_hash(term), *t, *seq))?;
                }
            }
            meta.insert("bytes", bytes)?;
            done = removed < 10_000;
        }
        w.commit()?;
        if done {
            return Ok(());
        }
    }
}
