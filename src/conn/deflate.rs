//! Raw deflate in both directions over a connection: IMAP's COMPRESS=DEFLATE
//! (RFC 4978). Input is inflated as it is read; output is deflated into a
//! buffer and written out at each flush, which ends with a sync flush so
//! the client can decode every reply the server has sent.
//!
//! Written on flate2's in-memory `Compress`/`Decompress` rather than an
//! async-compression adapter: those come as a reader and a writer over
//! separate halves, and the session needs one stream it can keep
//! reading commands from and writing replies to.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Conn;

/// Compressed input read ahead of inflation.
const INPUT_BUFFER: usize = 16 * 1024;
/// Output deflated but not yet written, above which a write waits.
const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// A connection whose traffic is raw deflate (no zlib header) both ways.
pub struct Deflate {
    inner: Conn,
    inflate: Decompress,
    deflate: Compress,
    /// Compressed input, `input[start..end]` not yet inflated.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// The client ended its deflate stream: nothing more can be read.
    input_ended: bool,
    /// Deflated output, `output[written..]` not yet written to `inner`.
    output: Vec<u8>,
    written: usize,
    /// Bytes were deflated since the last sync flush.
    unsynced: bool,
}

fn corrupt(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("deflate: {e}"))
}

impl Deflate {
    /// Wraps `inner`; nothing may have been read from it ahead.
    pub fn new(inner: Conn) -> Self {
        Deflate {
            inner,
            inflate: Decompress::new(false),
            // Level 6 (zlib's default) with a 32 KiB window, as Dovecot and
            // Thunderbird use: the bytes are mostly headers and text.
            deflate: Compress::new(Compression::default(), false),
            input: vec![0; INPUT_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            input_ended: false,
            output: Vec::new(),
            written: 0,
            unsynced: false,
        }
    }

    /// The connection underneath.
    pub fn inner(&self) -> &Conn {
        &self.inner
    }

    /// Deflates `data` (or, with `Sync`, flushes) onto `output`.
    fn compress(&mut self, mut data: &[u8], flush: FlushCompress) -> std::io::Result<()> {
        loop {
            if self.output.capacity() - self.output.len() < 1024 {
                self.output.reserve(data.len() / 2 + 4096);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(data, &mut self.output, flush)
                .map_err(corrupt)?;
            data = &data[(self.deflate.total_in() - before) as usize..];
            // Done when all input is taken and the output did not run out
            // of room (a full buffer may mean more is pending).
            if data.is_empty() && self.output.len() < self.output.capacity() {
                return Ok(());
            }
        }
    }

    /// Writes pending output to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.output.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.output[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.output.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Deflate {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.input_ended {
                return Poll::Ready(Ok(()));
            }
            if this.start < this.end {
                let (in_before, out_before) = (this.inflate.total_in(), this.inflate.total_out());
                let status = this
                    .inflate
                    .decompress(
                        &this.input[this.start..this.end],
                        buf.initialize_unfilled(),
                        FlushDecompress::None,
                    )
                    .map_err(corrupt)?;
                let taken = (this.inflate.total_in() - in_before) as usize;
                let made = (this.inflate.total_out() - out_before) as usize;
                this.start += taken;
                buf.advance(made);
                if status == Status::StreamEnd {
                    this.input_ended = true;
                }
                if made > 0 {
                    return Poll::Ready(Ok(()));
                }
                if taken == 0 && this.start < this.end && !this.input_ended {
                    return Poll::Ready(Err(corrupt("no progress")));
                }
                continue;
            }
            // All input inflated: read more.
            this.start = 0;
            this.end = 0;
            let mut raw = ReadBuf::new(&mut this.input);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            let n = raw.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(())); // end of the connection
            }
            this.end = n;
        }
    }
}

impl AsyncWrite for Deflate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.output.len() - this.written >= OUTPUT_HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        this.compress(data, FlushCompress::None)?;
        this.unsynced |= !data.is_empty();
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.unsynced {
            this.compress(&[], FlushCompress::Sync)?;
            this.unsynced = false;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn output_is_raw_deflate_readable_after_each_flush() {
        // The in-memory side only: compress, sync-flush, and a standard
        // raw-deflate reader decodes everything written so far.
        let mut d = Deflate::new(Conn::Closed);
        let text = b"* 1 FETCH (FLAGS (\\Seen))\r\n".repeat(500);
        d.compress(&text, FlushCompress::None).unwrap();
        d.compress(&[], FlushCompress::Sync).unwrap();
        assert!(d.output.len() < text.len() / 10);
        let mut reader = flate2::read::DeflateDecoder::new(&d.output[..]);
        let mut got = vec![0; text.len()];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(got, text);
    }

    #[test]
    fn inflates_what_a_standard_encoder_wrote() {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::fast());
        e.write_all(b"a1 NOOP\r\n").unwrap();
        e.flush().unwrap();
        let wire = e.get_ref().clone();
        let mut d = Deflate::new(Conn::Closed);
        d.input[..wire.len()].copy_from_slice(&wire);
        d.end = wire.len();
        let mut out = [0u8; 64];
        let mut rb = ReadBuf::new(&mut out);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let r = Pin::new(&mut d).poll_read(&mut cx, &mut rb);
        assert!(matches!(r, Poll::Ready(Ok(()))));
        assert_eq!(rb.filled(), b"a1 NOOP\r\n");
    }
}
