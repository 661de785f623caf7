//! Writing a new message's content while it arrives: the SMTP DATA reader
//! hands over octets as it reads them, and they go to the spool in
//! `CHUNK_SIZE` chunks, so a session holds one chunk, never the message.
//!
//! Order (see `store::Ops`): the body chunks (numbered from 1) as they
//! fill, then chunk 0 — the trace headers the session puts in front
//! (`Received:`), known only at the end; with the whole body when it fits
//! in one chunk — then the due entry and the record. Content before the record: a crash leaves chunks without a
//! record (swept at start, `Spool::sweep_orphans`), never a record without
//! its chunks. A writer dropped before `finish` (the client went away, the
//! message was refused) removes its chunks.

use std::sync::Arc;

use super::store::{CHUNK_SIZE, Ops, StoreError};
use super::{NewMessage, QueueId, QueuedMessage, Spool, chunk_key, now_ms, write_record};

/// A message's content being written; see the module comment.
pub struct ContentWriter {
    spool: Arc<Spool>,
    id: QueueId,
    /// Body chunks written so far (numbers 1..=written).
    written: u32,
    /// The chunk being filled, at most `CHUNK_SIZE`.
    buf: Vec<u8>,
    /// Body octets taken so far.
    size: u64,
    /// The store epoch of the first write: every write of the message must
    /// land in the same database (see `store::Generation::epoch`).
    epoch: Option<u64>,
    /// Something was written (or tried): the drop must clean up.
    touched: bool,
    /// The record is written (or removed with everything else): nothing
    /// is left for the drop to do.
    finished: bool,
}

impl ContentWriter {
    pub(super) fn new(spool: Arc<Spool>, id: QueueId) -> ContentWriter {
        spool.writing_insert(id);
        ContentWriter {
            spool,
            id,
            written: 0,
            buf: Vec::new(),
            size: 0,
            epoch: None,
            touched: false,
            finished: false,
        }
    }

    /// The queue id the message will have.
    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Body octets taken so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The start of the body: its first chunk (`CHUNK_SIZE` octets at
    /// most), where the header section is.
    pub fn head(&self) -> Result<Vec<u8>, StoreError> {
        if self.written == 0 {
            return Ok(self.buf.clone());
        }
        Ok(self
            .spool
            .tree
            .get(chunk_key(self.id, 1))?
            .map(|c| c.to_vec())
            .unwrap_or_default())
    }

    /// The body taken so far, read back (the chunks written, then the one
    /// being filled): for the DKIM signer and the authentication checks,
    /// which need the whole message. One copy in memory, at most the
    /// message size limit.
    pub fn body(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(self.size as usize);
        for n in 1..=self.written {
            match self.spool.tree.get(chunk_key(self.id, n))? {
                Some(c) => out.extend_from_slice(&c),
                None => {
                    return Err(StoreError::Io(format!(
                        "{}: content chunk {n} is missing",
                        self.id
                    )));
                }
            }
        }
        out.extend_from_slice(&self.buf);
        Ok(out)
    }

    /// Takes more of the body; writes every chunk that fills. Each chunk
    /// is refused (`Full`) when the spool's file system is below its
    /// reserve.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        self.size += data.len() as u64;
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(CHUNK_SIZE);
            }
            let room = CHUNK_SIZE - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK_SIZE {
                self.write_chunk()?;
            }
        }
        Ok(())
    }

    fn write_chunk(&mut self) -> Result<(), StoreError> {
        self.spool.store.check_space()?;
        let n = self.written + 1;
        let mut ops = Ops::default();
        ops.insert(&chunk_key(self.id, n), &self.buf[..]);
        // Counted before the write: a failed write may still have left the
        // key, and the drop removes it with the others.
        self.written = n;
        self.touched = true;
        self.epoch = Some(self.spool.tree.apply_in(ops, self.epoch)?);
        self.buf.clear();
        Ok(())
    }

    /// Writes the rest of the body, `prefix` as chunk 0 (the headers put
    /// in front of what the client sent), then the due entry and the record
    /// of a message due at once. Returns the record and the epoch of all
    /// the writes; not committed yet.
    pub(super) fn finish(
        mut self,
        new: NewMessage,
        prefix: &[u8],
    ) -> Result<(QueuedMessage, u64), StoreError> {
        let mut ops = Ops::default();
        if self.written == 0 {
            // A message of one chunk: the prefix and the body in one key.
            let mut whole = Vec::with_capacity(prefix.len() + self.buf.len());
            whole.extend_from_slice(prefix);
            whole.extend_from_slice(&self.buf);
            ops.insert(&chunk_key(self.id, 0), whole);
        } else {
            if !self.buf.is_empty() {
                self.write_chunk()?;
            }
            ops.insert(&chunk_key(self.id, 0), prefix);
        }
        let now = now_ms();
        let mut msg = QueuedMessage {
            id: self.id,
            arrival: now,
            sender: new.sender,
            size: prefix.len() as u64 + self.size,
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
            chunks: self.written + 1,
        };
        for r in &mut msg.recipients {
            r.next_attempt = now;
        }
        write_record(&mut ops, &mut msg, Some(now));
        self.touched = true;
        match self.spool.tree.apply_in(ops, self.epoch) {
            Ok(epoch) => {
                self.finished = true;
                self.spool.counted_new(&msg);
                Ok((msg, epoch))
            }
            Err(e) => {
                // Whatever part of the record's writes happened goes too.
                let _ = self.spool.remove(&msg);
                self.finished = true;
                Err(e)
            }
        }
    }
}

impl Drop for ContentWriter {
    fn drop(&mut self) {
        if !self.finished && self.touched {
            let mut ops = Ops::default();
            for n in 0..=self.written {
                ops.remove(&chunk_key(self.id, n));
            }
            if let Err(e) = self.spool.tree.apply(ops) {
                // Swept at the next start (or after the store reopens).
                tracing::warn!(queue_id = %self.id, error = %e, "cannot remove the content of a message not queued");
            }
        }
        self.spool.writing_remove(self.id);
    }
}
