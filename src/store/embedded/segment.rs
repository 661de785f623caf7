//! Body segments: append-only files `<store>/segments/NNNNNNNN.seg` that
//! hold blob octets back to back. Only the writer thread appends; any
//! thread reads with `pread` through a cache of open files.
//!
//! A segment is written by one process lifetime only: opening the store
//! always starts a new segment, so octets a crash left past the last
//! commit are never appended to (they are dead space, given back when the
//! segment is compacted). Nothing here knows which blobs are live: the
//! index (`segments` and `seg_blobs` tables) does.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The path of segment `id` in `dir`.
pub fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.seg"))
}

/// The segment ids present in `dir`.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".seg")
            && let Ok(id) = stem.parse::<u32>()
        {
            out.push(id);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Open segment files for reading, shared by every reader.
#[derive(Default)]
pub struct Readers {
    files: Mutex<HashMap<u32, Arc<File>>>,
}

impl Readers {
    /// Reads `len` octets at `offset` of segment `id`. `NotFound` when the
    /// segment is gone (compacted away since the caller's index lookup).
    pub fn read(&self, dir: &Path, id: u32, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = self.file(dir, id)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn file(&self, dir: &Path, id: u32) -> io::Result<Arc<File>> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = files.get(&id) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(segment_path(dir, id))?);
        files.insert(id, f.clone());
        Ok(f)
    }

    /// Forgets a segment about to be unlinked (readers that hold its file
    /// finish their reads; later ones see `NotFound` and look again).
    pub fn forget(&self, id: u32) {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// The writer's side: the current segment and what the next sync covers.
pub struct Appender {
    dir: PathBuf,
    max_size: u64,
    next_id: u32,
    current: Option<(u32, File, u64)>,
    /// Segments written since the last sync (sealed ones included).
    dirty: Vec<File>,
    /// The current segment was written since the last sync.
    current_dirty: bool,
    /// Test mode (`Options::volatile_unsynced`): appends wait here, in
    /// memory, and reach the file only in `sync`.
    volatile: bool,
    /// Octets of the current segment not yet written (volatile mode).
    held: Vec<u8>,
    /// Sealed segments with their held octets (volatile mode).
    held_sealed: Vec<(u32, File, u64, Vec<u8>)>,
    /// A segment file was created since the last sync: the directory
    /// must be synced too, so the file's name survives a power loss.
    created: bool,
}

impl Appender {
    /// An appender that starts segment `next_id` on its first write.
    pub fn new(dir: PathBuf, max_size: u64, next_id: u32, volatile: bool) -> Appender {
        Appender {
            volatile,
            held: Vec::new(),
            held_sealed: Vec::new(),
            dir,
            max_size,
            next_id,
            current: None,
            dirty: Vec::new(),
            current_dirty: false,
            created: false,
        }
    }

    /// The segment being appended to, if any.
    pub fn current_id(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.0)
    }

    /// Whether segment `id` has octets only in memory (volatile mode):
    /// not readable from its file before the next sync.
    pub fn unsynced(&self, id: u32) -> bool {
        self.held_sealed.iter().any(|h| h.0 == id)
    }

    /// Stops appending to the current segment (it may be compacted now).
    pub fn seal(&mut self) {
        if let Some((id, f, len)) = self.current.take()
            && self.current_dirty
        {
            if self.volatile {
                let held = std::mem::take(&mut self.held);
                let at = len - held.len() as u64;
                self.held_sealed.push((id, f, at, held));
            } else {
                self.dirty.push(f);
            }
        }
        self.current_dirty = false;
    }

    /// Appends `data`; returns (segment, offset).
    pub fn append(&mut self, data: &[u8]) -> io::Result<(u32, u64)> {
        if let Some((_, _, len)) = &self.current
            && *len > 0
            && *len + data.len() as u64 > self.max_size
        {
            self.seal();
        }
        if self.current.is_none() {
            let id = self.next_id;
            self.next_id += 1;
            let f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(segment_path(&self.dir, id))?;
            self.created = true;
            self.current = Some((id, f, 0));
        }
        let Some((id, f, len)) = self.current.as_mut() else {
            unreachable!("a current segment was just made");
        };
        let offset = *len;
        if self.volatile {
            self.held.extend_from_slice(data);
            *len += data.len() as u64;
            self.current_dirty = true;
            return Ok((*id, offset));
        }
        if let Err(e) = f.write_all(data) {
            // The file may hold part of `data`: never append after it.
            self.seal();
            return Err(e);
        }
        *len += data.len() as u64;
        self.current_dirty = true;
        Ok((*id, offset))
    }

    /// Makes every octet appended so far durable: fdatasync of each
    /// written segment, then of the directory if a file was created.
    pub fn sync(&mut self) -> io::Result<()> {
        for (_, f, at, held) in self.held_sealed.drain(..) {
            f.write_all_at(&held, at)?;
            f.sync_data()?;
        }
        if let Some((_, f, len)) = &self.current
            && !self.held.is_empty()
        {
            f.write_all_at(&self.held, len - self.held.len() as u64)?;
            self.held.clear();
        }
        for f in self.dirty.drain(..) {
            f.sync_data()?;
        }
        if let Some((_, f, _)) = &self.current
            && self.current_dirty
        {
            f.sync_data()?;
            self.current_dirty = false;
        }
        if self.created {
            File::open(&self.dir)?.sync_all()?;
            self.created = false;
        }
        Ok(())
    }
}
