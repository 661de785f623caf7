//! Reading one IMAP command off the wire: the line, and for each literal
//! at a line's end (`{n}`, `{n+}`, `~{n}`) the continuation request (for
//! a synchronising literal) and the n octets, then the rest of the
//! command — until a line that does not end in a literal. The result is
//! the command exactly as sent, which `parser` reads without waiting.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::conn::Conn;
use crate::smtp::line::{Ending, read_line};

/// Longest line (without literals) of a command.
pub const LINE_LIMIT: usize = 64 * 1024;

/// What came in.
pub enum Input {
    /// A whole command.
    Command(Vec<u8>),
    /// A synchronising literal over the limit: refused before the client
    /// sent it (`NO [TOOBIG]`, no `+`); the rest of its line is dropped.
    TooBig(Vec<u8>),
    /// A non-synchronising literal over the limit: its octets are on the
    /// way already, so the session ends (RFC 7888 §4).
    TooBigClose,
    /// A line over `LINE_LIMIT`.
    LineTooLong(Vec<u8>),
    /// The client closed the connection.
    Eof,
}

/// The size of the literal a line ends with, and whether it is
/// non-synchronising.
fn literal_at_end(line: &[u8]) -> Option<(u64, bool)> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    let mut digits = &body[open + 1..];
    let plus = digits.last() == Some(&b'+');
    if plus {
        digits = &digits[..digits.len() - 1];
    }
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((std::str::from_utf8(digits).ok()?.parse().ok()?, plus))
}

/// Reads one command; `max_literal` bounds each literal, and the whole.
pub async fn read_command(
    stream: &mut BufReader<Conn>,
    max_literal: u64,
) -> std::io::Result<Input> {
    let mut command = Vec::new();
    loop {
        let line = read_line(stream, LINE_LIMIT, LINE_LIMIT).await?;
        if line.ending == Ending::Eof && line.bytes.is_empty() && command.is_empty() {
            return Ok(Input::Eof);
        }
        if line.too_long {
            return Ok(Input::LineTooLong(line.bytes));
        }
        command.extend_from_slice(&line.bytes);
        if line.ending == Ending::Eof {
            return Ok(Input::Eof);
        }
        let Some((n, plus)) = literal_at_end(&line.bytes) else {
            return Ok(Input::Command(command));
        };
        if n > max_literal || command.len() as u64 + n > max_literal + LINE_LIMIT as u64 {
            return Ok(if plus {
                Input::TooBigClose
            } else {
                Input::TooBig(command)
            });
        }
        if !plus {
            stream
                .get_mut()
                .write_all(b"+ Ready for literal data\r\n")
                .await?;
            stream.get_mut().flush().await?;
        }
        command.extend_from_slice(b"\r\n");
        let start = command.len();
        command.resize(start + n as usize, 0);
        stream.read_exact(&mut command[start..]).await?;
    }
}

/// Waits until input is buffered (cancel-safe: consumes nothing), for
/// IDLE, which also waits for store events.
pub async fn readable(stream: &mut BufReader<Conn>) -> std::io::Result<bool> {
    Ok(!stream.fill_buf().await?.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_sizes() {
        assert_eq!(literal_at_end(b"a LOGIN {5}"), Some((5, false)));
        assert_eq!(literal_at_end(b"a APPEND x ~{12+}"), Some((12, true)));
        assert_eq!(literal_at_end(b"a LOGIN {}"), None);
        assert_eq!(literal_at_end(b"a LOGIN {x}"), None);
        assert_eq!(literal_at_end(b"a NOOP"), None);
        assert_eq!(literal_at_end(b"a {99999999999999999999}"), None);
    }
}
