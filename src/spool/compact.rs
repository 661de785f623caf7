//! Start-up compaction: gives disk space back after the queue has shrunk.
//!
//! sled 0.34 returns space only by truncating free segments at the end of
//! its log; space freed in the middle is reused, never given back, so after
//! `delete --all` the spool would keep its high-water size. At daemon start,
//! before anything else opens the spool, a database whose live data is at
//! most a quarter of its file (and small enough to copy quickly) is copied
//! key by key into a fresh one, which then takes its place.
//!
//! The swap survives a crash at any point. The copy is made durable first
//! (`queue.compact`, every file and the directory fsynced); only then is
//! the marker `queue.compact.done` created and fsynced. With the marker,
//! the copy is the truth: the old database is renamed to `queue.old`, the
//! copy to `queue`, the marker removed, the old one deleted. At start,
//! `finish_interrupted` completes a swap whose marker exists and throws
//! away a copy whose marker does not.

use std::fs::File;
use std::path::Path;

use super::store::{DB_DIR, StoreError, open_db};

/// Below this size on disk a spool is left alone.
const MIN_SIZE: u64 = 64 * 1024 * 1024;
/// More live data than this is not copied at start-up (it would delay the
/// start by more than about a second).
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
}

/// Opens the spool's database, first compacting it if it is mostly dead
/// space. Returns the open database and what a compaction did (`None`:
/// nothing; a failed copy is logged and leaves the database as it was).
/// An error after the copy means the swap could not complete; the next
/// start finishes it.
pub(super) fn compact_if_sparse(spool: &Path) -> Result<(sled::Db, Option<Compacted>), StoreError> {
    std::fs::create_dir_all(spool)?;
    finish_interrupted(spool)?;
    let path = spool.join(DB_DIR);
    let before = disk_usage(&path);
    let db = open_db(&path, spool)?;
    if before < MIN_SIZE {
        return Ok((db, None));
    }
    let copy = spool.join(COPY_DIR);
    match worth_copying(&db, before).and_then(|worth| {
        if worth {
            write_copy(&db, &copy, spool).map(|_| true)
        } else {
            Ok(false)
        }
    }) {
        Ok(true) => {}
        Ok(false) => return Ok((db, None)),
        Err(e) => {
            // Nothing has changed yet (the disk may be full): drop the
            // copy and run on the database as it is.
            let _ = std::fs::remove_dir_all(&copy);
            tracing::warn!(spool = %spool.display(), error = %e, "spool compaction skipped");
            return Ok((db, None));
        }
    }
    drop(db);
    let marker = spool.join(DONE_MARKER);
    File::create(&marker)?.sync_all()?;
    sync_dir(spool)?;
    swap(spool)?;
    let db = open_db(&path, spool)?;
    Ok((
        db,
        Some(Compacted {
            before,
            after: disk_usage(&path),
        }),
    ))
}

/// Whether the live data is small enough and sparse enough to copy.
fn worth_copying(db: &sled::Db, size: u64) -> Result<bool, StoreError> {
    let limit = MAX_LIVE.min(size / SPARSE);
    let mut live = 0u64;
    for name in db.tree_names() {
        for item in db.open_tree(&name)?.iter() {
            let (k, v) = item?;
            live += (k.len() + v.len()) as u64;
            if live > limit {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Copies every tree into a fresh database at `copy` and makes it durable.
fn write_copy(db: &sled::Db, copy: &Path, spool: &Path) -> Result<(), StoreError> {
    if copy.exists() {
        std::fs::remove_dir_all(copy)?;
    }
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

/// With the marker in place: the copy becomes the database.
fn swap(spool: &Path) -> Result<(), StoreError> {
    let (db, copy, old) = (
        spool.join(DB_DIR),
        spool.join(COPY_DIR),
        spool.join(OLD_DIR),
    );
    if copy.exists() {
        if db.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old)?;
            }
            std::fs::rename(&db, &old)?;
        }
        std::fs::rename(&copy, &db)?;
        sync_dir(spool)?;
    }
    std::fs::remove_file(spool.join(DONE_MARKER))?;
    sync_dir(spool)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Completes or undoes a compaction a crash interrupted.
fn finish_interrupted(spool: &Path) -> Result<(), StoreError> {
    if spool.join(DONE_MARKER).exists() {
        tracing::info!(spool = %spool.display(), "finishing an interrupted spool compaction");
        return swap(spool);
    }
    for leftover in [COPY_DIR, OLD_DIR] {
        let p = spool.join(leftover);
        if p.exists() {
            std::fs::remove_dir_all(&p)?;
        }
    }
    Ok(())
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

    #[test]
    fn a_sparse_spool_shrinks_and_keeps_its_live_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 4000, 10);
        let done = compact_if_sparse(dir.path())
            .expect("compact")
            .1
            .expect("compacted");
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
        assert_eq!(compact_if_sparse(dir.path()).expect("compact").1, None);
        assert_eq!(keys(dir.path()).0, 4000);
    }

    #[test]
    fn an_interrupted_swap_is_finished_and_an_unmarked_copy_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        fill(dir.path(), 10, 10);
        // A crash after the marker and the first rename: only the copy and
        // the old database exist.
        std::fs::rename(dir.path().join(DB_DIR), dir.path().join(COPY_DIR)).expect("rename");
        File::create(dir.path().join(DONE_MARKER)).expect("marker");
        compact_if_sparse(dir.path()).expect("finish");
        assert_eq!(keys(dir.path()).0, 10);
        assert!(!dir.path().join(DONE_MARKER).exists());
        // A crash during the copy: no marker, so the copy goes.
        std::fs::create_dir(dir.path().join(COPY_DIR)).expect("copy dir");
        compact_if_sparse(dir.path()).expect("clean");
        assert!(!dir.path().join(COPY_DIR).exists());
        assert_eq!(keys(dir.path()).0, 10);
    }
}
