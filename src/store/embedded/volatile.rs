//! Test mode: a storage model in which only synced writes survive a
//! crash. The redb file is served from memory and written to disk only by
//! `sync_data`; segment appends (see `segment::Appender`) stay in memory
//! until the appender's sync. A SIGKILL then throws away exactly the
//! writes no sync covered, as a power loss would, instead of leaving them
//! to the kernel's page cache as a plain SIGKILL does.
//!
//! Only `Options::volatile_unsynced` turns it on; the daemon never does.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// A redb storage backend that keeps unsynced writes in memory.
#[derive(Debug)]
pub struct VolatileBackend {
    file: File,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The file as the program sees it.
    data: Vec<u8>,
    /// The lowest offset changed since the last sync.
    dirty_from: Option<u64>,
}

impl VolatileBackend {
    /// Serves `file` (its durable contents read now) from memory.
    pub fn new(file: File) -> io::Result<VolatileBackend> {
        let len = file.metadata()?.len() as usize;
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, 0)?;
        Ok(VolatileBackend {
            file,
            state: Mutex::new(State {
                data,
                dirty_from: None,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end")
}

impl redb::StorageBackend for VolatileBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.state().data.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let s = self.state();
        let at = offset as usize;
        let src = s.data.get(at..at + out.len()).ok_or_else(out_of_range)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut s = self.state();
        let from = (s.data.len() as u64).min(len);
        s.data.resize(len as usize, 0);
        s.dirty_from = Some(s.dirty_from.map_or(from, |d| d.min(from)));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut s = self.state();
        if let Some(from) = s.dirty_from.take() {
            let from = from.min(s.data.len() as u64);
            self.file.write_all_at(&s.data[from as usize..], from)?;
            self.file.set_len(s.data.len() as u64)?;
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut s = self.state();
        let end = offset as usize + data.len();
        if end > s.data.len() {
            return Err(out_of_range());
        }
        s.data[offset as usize..end].copy_from_slice(data);
        s.dirty_from = Some(s.dirty_from.map_or(offset, |d| d.min(offset)));
        Ok(())
    }
}
