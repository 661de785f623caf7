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

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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

/// Opens a sled database at `path` with the spool's settings; a lock held
/// by another process is `Locked(spool)`.
pub(super) fn open_db(path: &Path, spool: &Path) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(path)
        .segment_size(SEGMENT_SIZE)
        .cache_capacity(CACHE_CAPACITY)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                StoreError::Locked(spool.to_path_buf())
            }
            other => StoreError::from(other),
        })
}

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

    /// Applies the writes in order.
    pub fn apply(self, tree: &sled::Tree) -> Result<(), StoreError> {
        for (k, v) in self.0 {
            match v {
                Some(v) => tree.insert(k, v)?,
                None => tree.remove(k)?,
            };
        }
        Ok(())
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

/// The open sled database plus its committer thread.
pub struct Store {
    /// The database. Trees are opened through `tree()`.
    db: sled::Db,
    shared: Arc<Shared>,
    /// Commit counters.
    pub stats: Arc<CommitStats>,
    /// Committer thread; joined on drop after a last commit.
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Opens (or creates) the database under `<spool>/queue`.
    pub fn open(spool: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(spool)?;
        let db = open_db(&spool.join(DB_DIR), spool)?;
        Store::from_db(spool, db)
    }

    /// Takes over a database opened by `open_db` on `<spool>/queue`.
    pub(super) fn from_db(spool: &Path, db: sled::Db) -> Result<Store, StoreError> {
        let path = spool.join(DB_DIR);
        // The data file and its directory entry must be durable too.
        let data_file = File::open(path.join("db"))?;
        data_file.sync_all()?;
        File::open(&path)?.sync_all()?;
        File::open(spool)?.sync_all()?;

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
            let db = db.clone();
            let shared = shared.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("petrel-commit".into())
                .spawn(move || commit_loop(db, data_file, shared, stats))?
        };
        Ok(Store {
            db,
            shared,
            stats,
            committer: Mutex::new(Some(committer)),
        })
    }

    /// Opens a tree (keyspace) of the database.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
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

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
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

fn commit_loop(db: sled::Db, data_file: File, shared: Arc<Shared>, stats: Arc<CommitStats>) {
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
        // Every waiter in `batch` registered before this flush begins.
        let result = db
            .flush()
            .map_err(StoreError::from)
            .and_then(|_| data_file.sync_data().map_err(StoreError::from));
        if let Err(e) = &result {
            tracing::error!(error = %e, "spool commit failed");
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
        let t = store.tree("t").expect("tree");
        t.insert(b"k", b"v".as_slice()).expect("insert");
        store.commit_blocking().expect("commit");
        assert!(store.stats.commits.load(Ordering::Relaxed) >= 1);
        assert_eq!(store.stats.waiters.load(Ordering::Relaxed), 1);
    }
}
