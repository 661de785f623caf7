//! Compaction: gives disk space back after the queue has shrunk.
//!
//! sled 0.34 returns space only by truncating free segments at the end of
//! its log; space freed in the middle is reused, never given back, so after
//! `delete --all` the spool would keep its high-water size. A database
//! whose live data is at most a quarter of its file (and small enough to
//! copy in about a second) is copied key by key into a fresh one, which
//! then takes its place. The daemon checks at start, after every `delete`
//! and periodically; writers wait during the copy (the store's gate), so
//! nothing written after the copy began can be lost with the old database.
//!
//! The swap survives a crash at any point. The copy is made durable first
//! (`queue.compact`, every file and the directory fsynced); only then is
//! the marker `queue.compact.done` created and fsynced. With the marker,
//! the copy is the truth: the old database is renamed to `queue.old`, the
//! copy to `queue`, the marker removed, the old one deleted. When the
//! spool is opened, `finish_interrupted` completes a swap whose marker
//! exists and throws away a copy whose marker does not.

use std::fs::File;
use std::path::Path;
use std::sync::RwLock;

use super::store::{DB_DIR, Generation, StoreError, open_db, read, write};

/// Below this size on disk a spool is left alone.
const MIN_SIZE: u64 = 64 * 1024 * 1024;
/// More live data than this is not copied (writers would wait more than
/// about a second).
const MAX_LIVE: u64 = 128 * 1024 * 1024;
/// Compact when live data is at most 1/`SPARSE` of the file.
const SPARSE: u64 = 4;

const COPY_DIR: &str = "queue.compact";
const DONE_MARKER: &str = "queue.compact.done";
const OLD_DIR: &str = "queue.old";

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Bytes on disk before.
    pub before: u64,
    /// Bytes on disk after.
    pub after: u64,
    /// How long writers waited (the copy and the swap).
    pub paused: std::time::Duration,
}

/// What a look at the database found.
pub(super) struct Look {
    /// What a compaction did; `None`: not worth one.
    pub(super) compacted: Option<Compacted>,
    /// The live keys and values are at least this many bytes.
    pub(super) live_floor: u64,
}

/// Compacts the open database behind `gate` if it is mostly dead space.
/// `known`: a lower bound of its live bytes, if the caller has one; when
/// it already rules a copy out, nothing is read. An error before the
/// marker leaves the database as it was (the disk may be full); an error
/// after it leaves the generation `broken` (writes refused) and the next
/// start finishes the swap.
pub(super) fn compact(
    spool: &Path,
    gate: &RwLock<Generation>,
    known: Option<u64>,
) -> Result<Look, StoreError> {
    let path = spool.join(DB_DIR);
    let before = disk_usage(&path);
    let limit = MAX_LIVE.min(before / SPARSE);
    if before < MIN_SIZE || known.is_some_and(|k| k > limit) {
        return Ok(Look {
            compacted: None,
            live_floor: known.unwrap_or(0),
        });
    }
    // Decided without stopping writers; the copy below re-reads anyway.
    let db = read(gate).db()?.clone();
    let live = live_bytes(&db, limit)?;
    drop(db);
    if live > limit {
        return Ok(Look {
            compacted: None,
            live_floor: live,
        });
    }

    let mut g = write(gate);
    let paused = std::time::Instant::now();
    // A database that failed a write is reopened first (by the next write),
    // never copied: its memory may hold writes that never reached the disk.
    if g.broken || g.needs_reopen() {
        return Ok(Look {
            compacted: None,
            live_floor: live,
        });
    }
    let copy = spool.join(COPY_DIR);
    if let Err(e) = write_copy(g.db()?, &copy, spool) {
        let _ = std::fs::remove_dir_all(&copy);
        return Err(e);
    }
    let marker = spool.join(DONE_MARKER);
    if let Err(e) = mark(&marker, spool) {
        // Without a durable marker the copy is not the truth: take back
        // whatever part of the marker exists before writers go on. If that
        // fails too, a restart could swap in a copy that lacks later
        // writes, so refuse them.
        if unmark(&marker, spool).is_err() {
            g.broken = true;
        }
        let _ = std::fs::remove_dir_all(&copy);
        return Err(e);
    }
    // From here the copy is the truth; the old files go away.
    let new = swap(spool).and_then(|_| Generation::open(&path, spool));
    match new {
        Ok(mut new) => {
            // The copy holds every write of the old database: same epoch.
            new.epoch = g.epoch;
            let old = std::mem::replace(&mut *g, new);
            drop(g);
            let paused = paused.elapsed();
            drop(old);
            if let Err(e) = remove_old(spool) {
                // Only space: the next compaction or start removes it.
                tracing::warn!(error = %e, "cannot remove the replaced spool database");
            }
            Ok(Look {
                compacted: Some(Compacted {
                    before,
                    after: disk_usage(&path),
                    paused,
                }),
                live_floor: live,
            })
        }
        Err(e) => {
            g.broken = true;
            Err(e)
        }
    }
}

fn mark(marker: &Path, spool: &Path) -> Result<(), StoreError> {
    File::create(marker)?.sync_all()?;
    sync_dir(spool)
}

fn unmark(marker: &Path, spool: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    sync_dir(spool)
}

/// Bytes of live keys and values, counted until they pass `limit`.
fn live_bytes(db: &sled::Db, limit: u64) -> Result<u64, StoreError> {
    let mut live = 0u64;
    for name in db.tree_names() {
        for item in db.open_tree(&name)?.iter() {
            let (k, v) = item?;
            live += (k.len() + v.len()) as u64;
            if live > limit {
                return Ok(live);
            }
        }
    }
    Ok(live)
}

/// Copies every tree into a fresh database at `copy` and makes it durable.
fn write_copy(db: &sled::Db, copy: &Path, spool: &Path) -> Result<(), StoreError> {
    remove_dir_if_any(copy)?;
    let new = open_db(copy, spool)?;
    for name in db.tree_names() {
        let from = db.open_tree(&name)?;
        let to = new.open_tree(&name)?;
        for item in from.iter() {
            let (k, v) = item?;
            to.insert(k, v)?;
        }
    }
    new.flush()?;
    drop(new);
    sync_tree(copy)?;
    sync_dir(spool)
}

/// With the marker in place: the copy becomes the database, the old one
/// `queue.old`.
fn swap(spool: &Path) -> Result<(), StoreError> {
    let (db, copy, old) = (
        spool.join(DB_DIR),
        spool.join(COPY_DIR),
        spool.join(OLD_DIR),
    );
    if copy.exists() {
        if db.exists() {
            remove_dir_if_any(&old)?;
            std::fs::rename(&db, &old)?;
        }
        std::fs::rename(&copy, &db)?;
        sync_dir(spool)?;
    }
    std::fs::remove_file(spool.join(DONE_MARKER))?;
    sync_dir(spool)
}

/// Deletes the database a swap replaced (gigabytes, after a large queue
/// was deleted: not done while writers wait).
fn remove_old(spool: &Path) -> Result<(), StoreError> {
    remove_dir_if_any(&spool.join(OLD_DIR))
}

fn remove_dir_if_any(dir: &Path) -> Result<(), StoreError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

/// Completes or undoes a compaction a crash interrupted. Called with the
/// spool lock held, before the database is opened.
pub(super) fn finish_interrupted(spool: &Path) -> Result<(), StoreError> {
    if spool.join(DONE_MARKER).exists() {
        tracing::info!(spool = %spool.display(), "finishing an interrupted spool compaction");
        swap(spool)?;
        return remove_old(spool);
    }
    remove_dir_if_any(&spool.join(COPY_DIR))?;
    remove_old(spool)
}

/// fsyncs every file under `dir`, then the directories.
fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            File::open(&p)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Bytes allocated on disk under `dir` (as `du`): what compaction decides
/// on, and what the benchmarks and tests report.
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(rd) = std::fs::read_dir(dir)
    {
        for e in rd.flatten() {
            total += disk_usage(&e.path());
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::store::{Keyspace, Ops, Store};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn fill(spool: &Path, n: u32, keep: u32) {
        let db = open_db(&spool.join(DB_DIR), spool).expect("open");
        let t = db.open_tree("queue").expect("tree");
        let value = vec![0x5a; 32 * 1024];
        for i in 0..n {
            t.insert(i.to_be_bytes(), value.clone()).expect("insert");
        }
        for i in keep..n {
            t.remove(i.to_be_bytes()).expect("remove");
        }
        db.open_tree("mailbox")
            .expect("tree")
            .insert(b"kept", &b"mail"[..])
            .expect("insert");
        db.flush().expect("flush");
    }

    fn keys(spool: &Path) -> (usize, Option<sled::IVec>) {
        let db = open_db(&spool.join(DB_DIR), spool).expect("open");
        let q = db.open_tree("queue").expect("tree").len();
        let m = db
            .open_tree("mailbox")
            .expect("tree")
            .get(b"kept")
            .expect("get");
        (q, m)
    }

    fn compact_once(spool: &Path) -> Option<Compacted> {
        Store::open(spool)
            .expect("open")
            .compact()
            .expect("compact")
    }

    #[test]
    fn a_sparse_spool_shrinks_and_keeps_its_live_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 4000, 10);
        let done = compact_once(dir.path()).expect("compacted");
        assert!(done.before >= MIN_SIZE, "{done:?}");
        assert!(done.after * 4 < done.before, "{done:?}");
        assert_eq!(keys(dir.path()), (10, Some(sled::IVec::from(&b"mail"[..]))));
        assert!(!dir.path().join(COPY_DIR).exists());
        assert!(!dir.path().join(OLD_DIR).exists());
        assert!(!dir.path().join(DONE_MARKER).exists());
    }

    #[test]
    fn a_live_spool_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 4000, 4000);
        assert_eq!(compact_once(dir.path()), None);
        assert_eq!(keys(dir.path()).0, 4000);
    }

    /// A look that found too much live data is remembered; removals made
    /// through the store afterwards are counted, so the next look copies.
    #[test]
    fn removals_after_a_look_that_found_too_much_lead_to_a_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 4000, 4000);
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(store.compact().expect("look"), None);
        assert_eq!(store.compact().expect("look again"), None);
        let queue = store.handle(Keyspace::Queue);
        for i in 10..4000u32 {
            let mut ops = Ops::default();
            ops.remove(&i.to_be_bytes());
            queue.apply(ops).expect("remove");
        }
        let done = store.compact().expect("compact").expect("compacted");
        assert!(done.after * 4 < done.before, "{done:?}");
        drop((queue, store));
        assert_eq!(keys(dir.path()).0, 10);
    }

    /// Writers run through the compaction; every write whose commit was
    /// answered is in the database afterwards, and new writes go on.
    #[test]
    fn committed_writes_survive_a_compaction_made_while_they_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 4000, 10);
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let queue = store.handle(Keyspace::Queue);
                let mut acked = Vec::new();
                let mut n = 0u64;
                // At least 200 writes, at most 20,000 (if the test fails).
                while (!stop.load(Ordering::Relaxed) || n < 200) && n < 20_000 {
                    let key = [b"w".as_slice(), &n.to_be_bytes()].concat();
                    let mut ops = Ops::default();
                    ops.insert(&key, vec![7u8; 1024]);
                    queue.apply(ops).expect("write");
                    store.commit_blocking().expect("commit");
                    acked.push(key);
                    n += 1;
                }
                acked
            })
        };
        let done = store.compact().expect("compact").expect("compacted");
        assert!(done.after * 4 < done.before, "{done:?}");
        stop.store(true, Ordering::Relaxed);
        let acked = writer.join().expect("writer");
        drop(store);
        let db = open_db(&dir.path().join(DB_DIR), dir.path()).expect("reopen");
        let t = db.open_tree("queue").expect("tree");
        for key in &acked {
            assert!(t.contains_key(key).expect("read"), "lost {key:?}");
        }
        assert_eq!(t.len(), 10 + acked.len());
    }

    #[test]
    fn an_interrupted_swap_is_finished_and_an_unmarked_copy_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 10, 10);
        // A crash after the marker and the first rename: only the copy and
        // the old database exist.
        std::fs::rename(dir.path().join(DB_DIR), dir.path().join(COPY_DIR)).expect("rename");
        File::create(dir.path().join(DONE_MARKER)).expect("marker");
        drop(Store::open(dir.path()).expect("finish"));
        assert_eq!(keys(dir.path()).0, 10);
        assert!(!dir.path().join(DONE_MARKER).exists());
        // A crash during the copy: no marker, so the copy goes.
        std::fs::create_dir(dir.path().join(COPY_DIR)).expect("copy dir");
        drop(Store::open(dir.path()).expect("clean"));
        assert!(!dir.path().join(COPY_DIR).exists());
        assert_eq!(keys(dir.path()).0, 10);
    }

    #[test]
    fn a_second_process_does_not_touch_a_running_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 10, 10);
        let _running = Store::open(dir.path()).expect("open");
        // What a compaction in progress leaves on disk.
        std::fs::create_dir(dir.path().join(COPY_DIR)).expect("copy dir");
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Locked(_))
        ));
        assert!(dir.path().join(COPY_DIR).exists());
    }
}
