//! The sled database and its group commit. This is the only place that
//! opens sled.
//!
//! sled's `flush()` ends in `sync_file_range` on Linux, which neither
//! flushes the device cache nor the file's metadata (sled issue 1452). So a
//! commit is: `flush()`, then `fdatasync` of sled's data file through a
//! handle of our own (the data, the device cache, and the metadata needed
//! to read the data back — the file's size when it grew). Values are kept below sled's blob threshold (bodies are chunked,
//! see `CHUNK_SIZE`), so the data file is the only file that holds them.
//!
//! Group commit: writers apply their sled writes, then call `commit()`. One
//! committer thread takes every waiter that arrived so far, flushes once and
//! answers them all. A waiter is only ever answered by a flush that began
//! after it registered, so after its own writes.
//!
//! Generations: the open database can be replaced while the daemon runs
//! (`compact`). Every write goes through a `TreeHandle`, which holds the
//! gate (a read lock on the current `Generation`) for the write; a
//! compaction holds it exclusively while it copies and swaps, so no write
//! lands in a database after its copy began. The committer flushes whatever
//! generation is current: a write made in an older one was in the copy,
//! which was made durable before the swap.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// Largest body chunk stored under one key. sled writes any value larger
/// than `SEGMENT_SIZE / 4` as a separate blob file that its flush never
/// fsyncs; a leaf node holds at most 17 values, so 17 chunks must also stay
/// under that threshold.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// sled log segment size; fixed when a spool is created.
const SEGMENT_SIZE: usize = 8 * 1024 * 1024;

/// sled page cache size.
const CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// The database's directory inside the spool.
pub const DB_DIR: &str = "queue";

/// The spool's lock file: held by the process that has the spool open,
/// taken before anything in the spool directory is touched.
const LOCK_FILE: &str = "lock";

/// Opens a sled database at `path` with the spool's settings.
///
/// sled locks its data file, and a dropped `sled::Db` lets go of it only
/// when sled's I/O threads are done with it, a moment later. Other
/// processes are kept out by the spool lock (`LOCK_FILE`), so a sled lock
/// conflict here is this process's own database closing (a compaction's
/// copy just written, a test's reopen): wait for it, up to `RELOCK_WAIT`.
pub(super) fn open_db(path: &Path, spool: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + RELOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(path)
            .segment_size(SEGMENT_SIZE)
            .cache_capacity(CACHE_CAPACITY)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(io))
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::Locked(spool.to_path_buf()));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(other) => return Err(StoreError::from(other)),
        }
    }
}

/// How long `open_db` waits for a closing database of this process.
const RELOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the store failed. Each variant says which reply it becomes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the spool (the daemon is running).
    /// CLI: "the daemon is running" message, exit 1.
    #[error("the spool {0} is in use by another process (is the daemon running?)")]
    Locked(PathBuf),
    /// The disk is full. SMTP: `452 4.3.1`.
    #[error("spool storage is full: {0}")]
    Full(String),
    /// Any other I/O or database failure. SMTP: `451 4.3.0`.
    #[error("spool I/O error: {0}")]
    Io(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StoreError::from(io),
            other => StoreError::Io(other.to_string()),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            StoreError::Full(e.to_string())
        } else {
            StoreError::Io(e.to_string())
        }
    }
}

/// Writes applied one at a time, in order.
///
/// Not a `sled::Batch`: sled 0.34 makes every batch roll its I/O buffer
/// before and after (`pin_log`), so each batch costs two buffer writes, each
/// followed by a synchronous `sync_file_range`. Single writes share the
/// buffer until the group commit flushes it. sled recovers a prefix of its
/// log, so after a crash some prefix of an `Ops` is there: callers order
/// their writes so that every prefix is a state their readers accept.
#[derive(Default)]
pub struct Ops(Vec<(Vec<u8>, Option<sled::IVec>)>);

impl Ops {
    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: &[u8], value: impl Into<sled::IVec>) {
        self.0.push((key.to_vec(), Some(value.into())));
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &[u8]) {
        self.0.push((key.to_vec(), None));
    }

    /// Applies the writes in order; returns by how many bytes the live
    /// keys and values grew (negative: shrank), from the old values sled
    /// hands back.
    fn apply(self, tree: &sled::Tree) -> Result<i64, StoreError> {
        let mut grew = 0i64;
        for (k, v) in self.0 {
            let key = k.len() as i64;
            match v {
                Some(v) => {
                    let new = v.len() as i64;
                    grew += match tree.insert(k, v)? {
                        Some(old) => new - old.len() as i64,
                        None => key + new,
                    };
                }
                None => {
                    if let Some(old) = tree.remove(&k)? {
                        grew -= key + old.len() as i64;
                    }
                }
            }
        }
        Ok(grew)
    }
}

/// Counters of the group commit, for `petrel status` and the tests that
/// prove batching.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Flush+fdatasync rounds completed.
    pub commits: AtomicU64,
    /// Waiters answered by those rounds.
    pub waiters: AtomicU64,
}

struct Pending {
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
    stopping: bool,
    /// A flush was asked for without a waiter (`commit_soon`).
    soon: bool,
}

/// The longest a `commit_soon` request waits for a flush.
const SOON: std::time::Duration = std::time::Duration::from_millis(200);

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// The keyspaces (sled trees) of the spool's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyspace {
    /// Queued messages (`spool`).
    Queue,
    /// Delivered mail (`mailbox::store`).
    Mailbox,
}

impl Keyspace {
    fn name(self) -> &'static str {
        match self {
            Keyspace::Queue => "queue",
            Keyspace::Mailbox => "mailbox",
        }
    }
}

/// One open database: what a compaction replaces.
pub(super) struct Generation {
    pub(super) db: sled::Db,
    /// sled's data file, through a handle of our own, for `fdatasync`.
    data_file: File,
    queue: sled::Tree,
    mailbox: sled::Tree,
    /// A compaction swapped the files but could not open the new
    /// database: the files under this handle are gone, so writes are
    /// refused until a restart (which opens the swapped-in copy).
    pub(super) broken: bool,
}

impl Generation {
    /// Opens the database at `path` and makes its files' directory
    /// entries durable.
    pub(super) fn open(path: &Path, spool: &Path) -> Result<Generation, StoreError> {
        let db = open_db(path, spool)?;
        // The data file and its directory entry must be durable too.
        let data_file = File::open(path.join("db"))?;
        data_file.sync_all()?;
        File::open(path)?.sync_all()?;
        File::open(spool)?.sync_all()?;
        Ok(Generation {
            queue: db.open_tree(Keyspace::Queue.name())?,
            mailbox: db.open_tree(Keyspace::Mailbox.name())?,
            db,
            data_file,
            broken: false,
        })
    }

    fn tree(&self, ks: Keyspace) -> &sled::Tree {
        match ks {
            Keyspace::Queue => &self.queue,
            Keyspace::Mailbox => &self.mailbox,
        }
    }
}

type Gate = RwLock<Generation>;

pub(super) fn read(gate: &Gate) -> RwLockReadGuard<'_, Generation> {
    gate.read().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn write(gate: &Gate) -> RwLockWriteGuard<'_, Generation> {
    gate.write().unwrap_or_else(|e| e.into_inner())
}

fn refused() -> StoreError {
    StoreError::Io(
        "the spool database could not be reopened after compaction; restart the daemon".into(),
    )
}

/// Access to one keyspace of the current database generation.
#[derive(Clone)]
pub struct TreeHandle {
    gate: Arc<Gate>,
    grew: Arc<AtomicI64>,
    ks: Keyspace,
}

impl TreeHandle {
    /// Applies writes, in order, to the current generation.
    pub fn apply(&self, ops: Ops) -> Result<(), StoreError> {
        let g = read(&self.gate);
        if g.broken {
            return Err(refused());
        }
        let grew = ops.apply(g.tree(self.ks))?;
        self.grew.fetch_add(grew, Ordering::Relaxed);
        Ok(())
    }

    /// Reads one key.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<sled::IVec>, StoreError> {
        Ok(read(&self.gate).tree(self.ks).get(key)?)
    }

    /// Whether a key exists.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        Ok(read(&self.gate).tree(self.ks).contains_key(key)?)
    }

    /// The tree of the current generation, for scans. Only for reading: a
    /// write through it could land in a database that a compaction has
    /// already copied.
    pub fn snapshot(&self) -> sled::Tree {
        read(&self.gate).tree(self.ks).clone()
    }
}

/// The open sled database plus its committer thread.
pub struct Store {
    spool: PathBuf,
    gate: Arc<Gate>,
    /// Growth of the live data since the last look at the database.
    grew: Arc<AtomicI64>,
    /// What the last look learned: the live data was at least this many
    /// bytes. With `grew`, a lower bound of the live data now, so most
    /// looks need no scan. `None`: never looked, or the look failed.
    /// Held for the whole of a look, so looks run one at a time.
    live_floor: Mutex<Option<u64>>,
    shared: Arc<Shared>,
    /// Commit counters.
    pub stats: Arc<CommitStats>,
    /// Committer thread; joined on drop after a last commit.
    committer: Mutex<Option<JoinHandle<()>>>,
    /// The spool lock (`LOCK_FILE`), released when the store closes.
    _lock: File,
}

/// Takes the spool's lock; another process holding it is `Locked`.
fn lock_spool(spool: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(spool.join(LOCK_FILE))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.kind() == std::io::ErrorKind::WouldBlock {
            StoreError::Locked(spool.to_path_buf())
        } else {
            StoreError::from(err)
        });
    }
    Ok(file)
}

impl Store {
    /// Opens (or creates) the database under `<spool>/queue`, first
    /// finishing a compaction that a crash interrupted.
    pub fn open(spool: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(spool)?;
        let lock = lock_spool(spool)?;
        super::compact::finish_interrupted(spool)?;
        let generation = Generation::open(&spool.join(DB_DIR), spool)?;
        let gate = Arc::new(RwLock::new(generation));
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                waiters: Vec::new(),
                stopping: false,
                soon: false,
            }),
            wake: Condvar::new(),
        });
        let stats = Arc::new(CommitStats::default());
        let committer = {
            let gate = gate.clone();
            let shared = shared.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("petrel-commit".into())
                .spawn(move || commit_loop(&gate, &shared, &stats))?
        };
        Ok(Store {
            spool: spool.to_path_buf(),
            gate,
            grew: Arc::new(AtomicI64::new(0)),
            live_floor: Mutex::new(None),
            shared,
            stats,
            committer: Mutex::new(Some(committer)),
            _lock: lock,
        })
    }

    /// A handle on one keyspace.
    pub fn handle(&self, ks: Keyspace) -> TreeHandle {
        TreeHandle {
            gate: self.gate.clone(),
            grew: self.grew.clone(),
            ks,
        }
    }

    /// Copies the database into a fresh one and swaps it in if it is
    /// mostly dead space (see `compact`), giving the disk back. Writers
    /// wait while the copy is made; readers go on. Blocking: call it off
    /// the async runtime. `Ok(None)`: nothing to do, or a compaction is
    /// already running.
    ///
    /// Cheap unless it may be worth it: the live data is read only when
    /// what is known of it (the last look's finding plus the growth since,
    /// both counted by the store) does not already rule a copy out. So the
    /// daemon can call it every minute and after every delete.
    pub fn compact(&self) -> Result<Option<super::Compacted>, StoreError> {
        let mut floor = match self.live_floor.try_lock() {
            Ok(f) => f,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(None),
        };
        let grew = self.grew.swap(0, Ordering::Relaxed);
        let known = floor.map(|f| (f as i64 + grew).max(0) as u64);
        *floor = None;
        let look = super::compact::compact(&self.spool, &self.gate, known)?;
        *floor = Some(look.live_floor);
        Ok(look.compacted)
    }

    /// Registers a waiter for the next flush (which begins after this
    /// call, so after the caller's writes) and wakes the committer.
    fn register(&self) -> Result<oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if p.stopping {
                return Err(StoreError::Io("the spool is shutting down".into()));
            }
            p.waiters.push(tx);
        }
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// Waits until every write made before this call is on stable storage.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.register()?
            .await
            .unwrap_or_else(|_| Err(StoreError::Io("the commit thread stopped".into())))
    }

    /// Asks for the writes so far to be flushed soon — with the next
    /// commit anyone waits for, or within `SOON` — without waiting. For
    /// state whose loss in a crash only repeats work (delivery results).
    pub fn commit_soon(&self) {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !p.soon {
            p.soon = true;
            drop(p);
            self.shared.wake.notify_one();
        }
    }

    /// Blocking commit for callers outside the async runtime (the CLI).
    pub fn commit_blocking(&self) -> Result<(), StoreError> {
        self.register()?
            .blocking_recv()
            .unwrap_or_else(|_| Err(StoreError::Io("the commit thread stopped".into())))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        {
            let mut p = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            p.stopping = true;
        }
        self.shared.wake.notify_one();
        if let Some(handle) = self
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = handle.join();
        }
    }
}

/// Flushes the current generation and fdatasyncs its data file.
fn flush(gate: &Gate) -> Result<(), StoreError> {
    let g = read(gate);
    if g.broken {
        return Err(refused());
    }
    g.db.flush()?;
    g.data_file.sync_data()?;
    Ok(())
}

fn commit_loop(gate: &Gate, shared: &Shared, stats: &CommitStats) {
    loop {
        let (batch, stopping) = {
            let mut p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            while p.waiters.is_empty() && !p.stopping {
                if p.soon {
                    // Someone wants a flush soon, not now: wait for a
                    // waiter to share it with, at most `SOON`.
                    let (g, t) = shared
                        .wake
                        .wait_timeout(p, SOON)
                        .unwrap_or_else(|e| e.into_inner());
                    p = g;
                    if t.timed_out() {
                        break;
                    }
                } else {
                    p = shared.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
            }
            p.soon = false;
            (std::mem::take(&mut p.waiters), p.stopping)
        };
        // Every waiter in `batch` registered before this flush begins, and
        // its writes are in the generation flushed or were copied into it.
        let started = std::time::Instant::now();
        let result = flush(gate);
        if let Err(e) = &result {
            tracing::error!(error = %e, "spool commit failed");
        }
        let m = crate::metrics::get();
        m.commit_seconds.observe(started.elapsed().as_secs_f64());
        if !batch.is_empty() {
            m.commit_batch.observe(batch.len() as f64);
        }
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .waiters
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for w in batch {
            let _ = w.send(result.clone());
        }
        if stopping {
            // Answer anyone who slipped in, then stop.
            let late = std::mem::take(
                &mut shared
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .waiters,
            );
            for w in late {
                let _ = w.send(Err(StoreError::Io("the spool is shutting down".into())));
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_reports_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Store::open(dir.path()).expect("open");
        match Store::open(dir.path()) {
            Err(StoreError::Locked(_)) => {}
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("expected Locked, got a second store"),
        }
    }

    #[test]
    fn commits_are_counted_and_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut ops = Ops::default();
        ops.insert(b"k", b"v".as_slice());
        store.handle(Keyspace::Queue).apply(ops).expect("insert");
        store.commit_blocking().expect("commit");
        assert!(store.stats.commits.load(Ordering::Relaxed) >= 1);
        assert_eq!(store.stats.waiters.load(Ordering::Relaxed), 1);
    }
}
