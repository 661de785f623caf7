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
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// Largest body chunk stored under one key. sled writes any value larger
/// than `SEGMENT_SIZE / 4` as a separate blob file that its flush never
/// fsyncs; a leaf node holds at most 17 values, so 17 chunks must also stay
/// under that threshold. Small, because sled's page cache lets go of a
/// leaf only after many accesses to its shard, and a leaf holds 17 values:
/// with 64 KiB chunks, 100 sessions streaming 10 MiB each kept 1.4 GiB
/// resident, with 16 KiB about a third of that (sled alone: 593 → 185 MiB
/// peak). Readers do not depend on it: older spools' 64 KiB chunks read
/// the same.
pub const CHUNK_SIZE: usize = 16 * 1024;

/// sled log segment size; fixed when a spool is created (sled refuses to
/// open it with another).
pub const SEGMENT_SIZE: usize = 8 * 1024 * 1024;

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
    /// Intake could not DKIM-sign a message it must sign (and
    /// `dkim.allow_unsigned` is off); nothing was stored. SMTP: `451 4.7.0`.
    #[error("not queued: {0}")]
    Unsigned(String),
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
        // sled hands back its stored ("global") error as a copy that keeps
        // the kind but not the OS error number.
        use std::io::ErrorKind::{QuotaExceeded, StorageFull};
        if e.raw_os_error() == Some(libc::ENOSPC)
            || e.raw_os_error() == Some(libc::EDQUOT)
            || matches!(e.kind(), StorageFull | QuotaExceeded)
        {
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
    /// Each waiter with the epoch current when it registered: a flush of
    /// another epoch (the database was reopened since) does not cover it.
    waiters: Vec<(oneshot::Sender<Result<(), StoreError>>, u64)>,
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

/// sled's database, its trees and our handle of its data file.
pub(super) struct OpenDb {
    pub(super) db: sled::Db,
    /// sled's data file, through a handle of our own, for `fdatasync`.
    data_file: File,
    queue: sled::Tree,
    mailbox: sled::Tree,
}

impl OpenDb {
    /// Opens the database at `path` and makes its files and their
    /// directory entries durable: the data file, and sled's `conf`, which
    /// sled writes at creation without syncing it (after a power loss it
    /// would come back empty).
    fn open(path: &Path, spool: &Path) -> Result<OpenDb, StoreError> {
        let db = open_db(path, spool)?;
        let data_file = File::open(path.join("db"))?;
        data_file.sync_all()?;
        File::open(path.join("conf"))?.sync_all()?;
        File::open(path)?.sync_all()?;
        File::open(spool)?.sync_all()?;
        Ok(OpenDb {
            queue: db.open_tree(Keyspace::Queue.name())?,
            mailbox: db.open_tree(Keyspace::Mailbox.name())?,
            db,
            data_file,
        })
    }
}

/// One open database: what a compaction replaces, and what a write error
/// makes the store reopen.
pub(super) struct Generation {
    /// `None` while the database is closed after a write error (see
    /// `recover`).
    open: Option<OpenDb>,
    /// The spool directory (the database is `DB_DIR` inside it).
    spool: PathBuf,
    /// A compaction swapped the files but could not open the new
    /// database: the files under this handle are gone, so writes are
    /// refused until a restart (which opens the swapped-in copy).
    pub(super) broken: bool,
    /// How many times the database was closed after a write error. Writes
    /// made before such a reopen that were not flushed are lost, so a
    /// writer compares the epoch of its writes with the one its commit
    /// flushed (see `TreeHandle::epoch`).
    pub(super) epoch: u64,
    /// sled failed a write or a flush (a full disk, an I/O error). sled
    /// then refuses every later write (its "global error") until the
    /// database is opened again; the next write reopens it.
    poisoned: AtomicBool,
    /// When the last reopen was tried: at most one per `REOPEN_INTERVAL`.
    last_reopen: Option<std::time::Instant>,
}

/// The shortest time between two attempts to reopen a failed database.
const REOPEN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Free space kept on the spool's file system: new content is refused
/// (`452 4.3.1`) below it, so that sled, which cannot recover from a
/// failed write without a reopen, does not meet a full disk in normal
/// operation, and the records of messages already accepted (delivery
/// results, bounces) still have room. Four log segments.
pub const MIN_FREE: u64 = 4 * SEGMENT_SIZE as u64;

/// Octets free for unprivileged writers on the file system holding `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `statvfs` fills the zeroed struct we own from a valid,
    // NUL-terminated path; no other memory is involved.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// `Full` when the spool's file system has less than `MIN_FREE` left.
pub fn check_space(spool: &Path) -> Result<(), StoreError> {
    let free = free_space(spool)?;
    if free < MIN_FREE {
        return Err(StoreError::Full(format!(
            "{} KiB free on the spool's file system, below the reserve of {} MiB",
            free / 1024,
            MIN_FREE >> 20
        )));
    }
    Ok(())
}

impl Generation {
    /// Opens the database at `path` and makes its files' directory
    /// entries durable.
    pub(super) fn open(path: &Path, spool: &Path) -> Result<Generation, StoreError> {
        Ok(Generation {
            open: Some(OpenDb::open(path, spool)?),
            spool: spool.to_path_buf(),
            broken: false,
            epoch: 0,
            poisoned: AtomicBool::new(false),
            last_reopen: None,
        })
    }

    /// The open database, or why there is none.
    pub(super) fn db(&self) -> Result<&sled::Db, StoreError> {
        self.usable().map(|o| &o.db)
    }

    fn usable(&self) -> Result<&OpenDb, StoreError> {
        if self.broken {
            return Err(refused());
        }
        self.open.as_ref().ok_or_else(closed)
    }

    fn tree(&self, ks: Keyspace) -> Result<&sled::Tree, StoreError> {
        let o = self.usable()?;
        Ok(match ks {
            Keyspace::Queue => &o.queue,
            Keyspace::Mailbox => &o.mailbox,
        })
    }

    pub(super) fn needs_reopen(&self) -> bool {
        !self.broken && (self.open.is_none() || self.poisoned.load(Ordering::Acquire))
    }

    fn poison(&self, e: &StoreError) {
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "spool database write failed; it will be reopened when there is room");
        }
    }
}

/// Reopens a database that failed a write, once there is room again: the
/// old one is dropped (a failed sled does no more I/O), and the files are
/// opened again, recovering what was flushed, as after a crash. Writes that
/// were not flushed are lost; the epoch tells their writers (none of them
/// was acknowledged: acknowledgements follow a flush). Readers of the old
/// database get errors meanwhile.
fn recover(gate: &Gate) -> Result<(), StoreError> {
    let spool = {
        let mut g = write(gate);
        if !g.needs_reopen() {
            return Ok(());
        }
        if g.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_INTERVAL) {
            return Err(closed());
        }
        g.last_reopen = Some(std::time::Instant::now());
        check_space(&g.spool)?;
        if g.open.take().is_some() {
            g.epoch += 1;
        }
        g.spool.clone()
    };
    // Opened without the gate: sled's lock on the files goes only when the
    // last handle of the old database (a scan in progress) is dropped, and
    // such a scan may be waiting for the gate.
    let opened = OpenDb::open(&spool.join(DB_DIR), &spool);
    let mut g = write(gate);
    match opened {
        Ok(o) => {
            g.open = Some(o);
            g.poisoned.store(false, Ordering::Release);
            tracing::warn!(spool = %spool.display(), epoch = g.epoch, "spool database reopened after a write error");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot reopen the spool database");
            Err(e)
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

fn closed() -> StoreError {
    StoreError::Io("the spool database is closed after a write error; reopening".into())
}

/// A write whose database was reopened before it was flushed: it is lost.
fn reopened() -> StoreError {
    StoreError::Io("the spool database was reopened after a write error; write lost".into())
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
        self.apply_in(ops, None).map(|_| ())
    }

    /// Applies writes, in order, to the current generation if its epoch is
    /// `epoch` (any, if `None`); returns the epoch written. A writer whose
    /// writes must all reach one database (a message's content and its
    /// record) passes the epoch of its first write to the others.
    pub fn apply_in(&self, ops: Ops, epoch: Option<u64>) -> Result<u64, StoreError> {
        let mut g = read(&self.gate);
        if g.needs_reopen() {
            drop(g);
            recover(&self.gate)?;
            g = read(&self.gate);
        }
        if epoch.is_some_and(|e| e != g.epoch) {
            return Err(reopened());
        }
        match ops.apply(g.tree(self.ks)?) {
            Ok(grew) => {
                self.grew.fetch_add(grew, Ordering::Relaxed);
                Ok(g.epoch)
            }
            Err(e) => {
                g.poison(&e);
                Err(e)
            }
        }
    }

    /// The epoch of the current database (see `Generation::epoch`). A
    /// writer that reads the same epoch before its writes and after their
    /// commit knows that the commit covered them.
    pub fn epoch(&self) -> u64 {
        read(&self.gate).epoch
    }

    /// Reads one key.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<sled::IVec>, StoreError> {
        Ok(read(&self.gate).tree(self.ks)?.get(key)?)
    }

    /// Whether a key exists.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        Ok(read(&self.gate).tree(self.ks)?.contains_key(key)?)
    }

    /// The tree of the current generation, for scans. Only for reading: a
    /// write through it could land in a database that a compaction has
    /// already copied.
    pub fn snapshot(&self) -> Result<sled::Tree, StoreError> {
        Ok(read(&self.gate).tree(self.ks)?.clone())
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
        let epoch = read(&self.gate).epoch;
        {
            let mut p = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if p.stopping {
                return Err(StoreError::Io("the spool is shutting down".into()));
            }
            p.waiters.push((tx, epoch));
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

    /// The epoch of the current database (see `TreeHandle::epoch`).
    pub fn epoch(&self) -> u64 {
        read(&self.gate).epoch
    }

    /// `Full` when the spool's file system is below its reserve
    /// (`MIN_FREE`): new content is refused before it is written.
    pub fn check_space(&self) -> Result<(), StoreError> {
        check_space(&self.spool)
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

/// Flushes the current generation and fdatasyncs its data file; returns
/// the epoch flushed. A failure poisons the generation: an `fdatasync`
/// that failed may have dropped the dirty pages it could not write, so
/// only a reopen (which reads back what is really there) is safe.
fn flush(gate: &Gate) -> Result<u64, StoreError> {
    let g = read(gate);
    let o = g.usable()?;
    let r =
        o.db.flush()
            .map_err(StoreError::from)
            .and_then(|_| o.data_file.sync_data().map_err(StoreError::from));
    match r {
        Ok(()) => Ok(g.epoch),
        Err(e) => {
            g.poison(&e);
            Err(e)
        }
    }
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
        for (w, epoch) in batch {
            let answer = match &result {
                Ok(flushed) if *flushed == epoch => Ok(()),
                Ok(_) => Err(reopened()),
                Err(e) => Err(e.clone()),
            };
            let _ = w.send(answer);
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
            for (w, _) in late {
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

#[cfg(test)]
mod full_disk_tests {
    use super::*;

    /// A tmpfs mounted for the test, unmounted on drop; `None` (the test
    /// is skipped, saying why) where mounting is not permitted.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Option<Tmpfs> {
            let dir = tempfile::tempdir().expect("tempdir");
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .output()
                .expect("run mount");
            if !out.status.success() {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            Some(Tmpfs(dir))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let ok = std::process::Command::new("umount")
                .arg(self.0.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(self.0.path())
                    .status();
            }
        }
    }

    fn put(tree: &TreeHandle, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut ops = Ops::default();
        ops.insert(key, value);
        tree.apply(ops)
    }

    #[test]
    fn a_database_that_met_a_full_disk_is_reopened_when_space_returns() {
        let Some(fs) = Tmpfs::mount("96m") else {
            return;
        };
        let spool = fs.0.path().join("spool");
        let store = Store::open(&spool).expect("open");
        let q = store.handle(Keyspace::Queue);
        put(&q, b"kept", b"committed before the disk filled").expect("put");
        store.commit_blocking().expect("commit");
        // Leave sled a little room, then write past it, bypassing the
        // reserve that intake keeps (as the scheduler's records do).
        let filler = fs.0.path().join("filler");
        {
            let mut f = File::create(&filler).expect("filler");
            let block = vec![0u8; 1 << 20];
            while free_space(fs.0.path()).expect("statvfs") > 4 << 20 {
                std::io::Write::write_all(&mut f, &block).expect("fill");
            }
        }
        let value = vec![7u8; CHUNK_SIZE];
        let mut failed = None;
        for i in 0u32..20_000 {
            let r = put(&q, &i.to_be_bytes(), &value).and_then(|()| {
                if i % 32 == 0 {
                    store.commit_blocking()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = r {
                failed = Some(e);
                break;
            }
        }
        assert!(
            matches!(failed, Some(StoreError::Full(_))),
            "sled never met the full disk: {failed:?}"
        );
        let epoch = store.epoch();
        // sled refuses everything now, and the store does not reopen it
        // while there is no room.
        assert!(put(&q, b"later", b"x").is_err());
        std::fs::remove_file(&filler).expect("free the space");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let reopened = loop {
            match put(&q, b"later", b"x") {
                Ok(()) => break true,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Err(_) => break false,
            }
        };
        assert!(reopened, "writes still refused after space returned");
        assert_eq!(store.epoch(), epoch + 1);
        store.commit_blocking().expect("commit after the reopen");
        assert_eq!(
            q.get(b"kept").expect("get").as_deref(),
            Some(&b"committed before the disk filled"[..])
        );
        // A waiter whose writes went to the failed database is never told
        // they are durable: its epoch is gone.
        assert!(q.apply_in(Ops::default(), Some(epoch)).is_err());
    }
}
