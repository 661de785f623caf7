//! Reading CRLF-terminated lines from a peer with hard limits. Reports how
//! each line ended, so that bare LF and bare CR are refused rather than
//! taken as line ends (RFC 5321 §2.3.8; the SMTP smuggling attacks of 2023
//! rely on receivers that accept them).

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// How a line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `\r\n`.
    Crlf,
    /// `\n` without `\r` before it.
    BareLf,
    /// The peer closed the connection before a line end.
    Eof,
}

/// One line as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The octets before the line end (at most the limit).
    pub bytes: Vec<u8>,
    /// How it ended.
    pub ending: Ending,
    /// The line was longer than the limit; `bytes` holds only its start.
    pub too_long: bool,
    /// A `\r` stood somewhere other than just before the `\n`.
    pub bare_cr: bool,
    /// Octets read for this line, with its ending.
    pub wire_len: usize,
}

/// Reads one line of at most `limit` octets including the CRLF. Octets past
/// the limit are read and dropped until the line ends, up to `discard_cap`
/// in total; past that the line is returned as it stands with `Eof`, and the
/// caller closes the connection.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
    discard_cap: usize,
) -> std::io::Result<Line> {
    let mut line = Line {
        bytes: Vec::new(),
        ending: Ending::Eof,
        too_long: false,
        bare_cr: false,
        wire_len: 0,
    };
    let keep = limit.saturating_sub(2);
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(line);
        }
        let (chunk, found) = match memchr_lf(buf) {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        line.wire_len += n;
        let content = if found { &chunk[..n - 1] } else { chunk };
        let room = keep.saturating_sub(line.bytes.len());
        if content.len() > room {
            line.too_long = true;
        }
        line.bytes
            .extend_from_slice(&content[..content.len().min(room)]);
        reader.consume(n);
        if found {
            if line.bytes.last() == Some(&b'\r') && !line.too_long {
                line.bytes.pop();
                line.ending = Ending::Crlf;
            } else if line.too_long {
                // The kept start of an over-long line says nothing of its end.
                line.ending = Ending::Crlf;
            } else {
                line.ending = Ending::BareLf;
            }
            line.bare_cr |= line.bytes.contains(&b'\r');
            return Ok(line);
        }
        if line.wire_len > limit + discard_cap {
            line.bare_cr |= line.bytes.contains(&b'\r');
            return Ok(line);
        }
    }
}

impl Line {
    /// Joins the next segment of a command line to this one, which ended
    /// in a bare LF: a command ends only at CRLF, so `NOOP<LF>NOOP<CRLF>` is
    /// one malformed line with one reply, never a second command (RFC 5321
    /// §2.3.8). Keeps `ending == BareLf` once the line is whole; `Eof` when
    /// the peer closed or the joined line passed `cap` octets. Returns
    /// whether more segments are needed.
    pub fn absorb(&mut self, next: Line, cap: usize) -> bool {
        self.wire_len += next.wire_len;
        self.too_long |= next.too_long;
        self.bare_cr |= next.bare_cr;
        match next.ending {
            Ending::Crlf => false,
            Ending::BareLf if self.wire_len <= cap => true,
            _ => {
                self.ending = Ending::Eof;
                false
            }
        }
    }
}

/// Where the first `\n` in `buf` is.
pub(crate) fn memchr_lf(buf: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], limit: usize) -> Vec<Line> {
        let mut r = tokio::io::BufReader::with_capacity(7, input);
        let mut out = Vec::new();
        loop {
            let l = read_line(&mut r, limit, 100).await.expect("read");
            let eof = l.ending == Ending::Eof;
            out.push(l);
            if eof {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn crlf_bare_lf_and_bare_cr_are_told_apart() {
        let ls = lines(b"HELO a\r\nNOOP\nRS\rET\r\n", 512).await;
        assert_eq!(
            (ls[0].bytes.as_slice(), ls[0].ending),
            (b"HELO a".as_slice(), Ending::Crlf)
        );
        assert_eq!(ls[1].ending, Ending::BareLf);
        assert!(ls[2].bare_cr);
        assert_eq!(ls[2].ending, Ending::Crlf);
        assert_eq!(ls[3].ending, Ending::Eof);
    }

    /// A command line as the SMTP session reads it: segments joined with
    /// `Line::absorb` while one ends in a bare LF.
    async fn command_line(r: &mut (impl AsyncBufRead + Unpin), limit: usize, cap: usize) -> Line {
        let mut line = read_line(r, limit, cap).await.expect("read");
        while line.ending == Ending::BareLf {
            let next = read_line(r, limit, cap).await.expect("read");
            if !line.absorb(next, limit + cap) {
                break;
            }
        }
        line
    }

    #[tokio::test]
    async fn a_bare_lf_does_not_end_a_command_line() {
        let mut r = tokio::io::BufReader::with_capacity(3, b"NOOP\nNOOP\r\nQUIT\r\n".as_slice());
        let l = command_line(&mut r, 512, 100).await;
        assert_eq!(l.ending, Ending::BareLf);
        assert_eq!(l.wire_len, 11);
        let l = command_line(&mut r, 512, 100).await;
        assert_eq!(
            (l.bytes.as_slice(), l.ending),
            (b"QUIT".as_slice(), Ending::Crlf)
        );
        let mut r = tokio::io::BufReader::new(b"A\nB\nC".as_slice());
        let l = command_line(&mut r, 512, 100).await;
        assert_eq!(l.ending, Ending::Eof);
    }

    #[tokio::test]
    async fn over_long_lines_are_flagged_not_split() {
        let mut input = vec![b'A'; 600];
        input.extend_from_slice(b"\r\nQUIT\r\n");
        let ls = lines(&input, 512).await;
        assert!(ls[0].too_long);
        assert_eq!(ls[0].bytes.len(), 510);
        assert_eq!(ls[1].bytes, b"QUIT");
        assert!(!ls[1].too_long);
    }

    #[tokio::test]
    async fn endless_line_stops_at_the_discard_cap() {
        let input = vec![b'A'; 5000];
        let mut r = tokio::io::BufReader::new(input.as_slice());
        let l = read_line(&mut r, 512, 1000).await.expect("read");
        assert_eq!(l.ending, Ending::Eof);
        assert!(l.too_long);
        assert!(l.wire_len <= 512 + 1000 + 8192);
    }
}
