//! SMTP replies: a code, an RFC 3463 enhanced status and text, written as
//! one or more lines.

use std::fmt;

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit code.
    pub code: u16,
    /// Enhanced status code (`2.0.0`), or empty where RFC 2034 does not
    /// use one (greeting, 354).
    pub status: &'static str,
    /// Text lines; several make a multi-line reply.
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply.
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    /// Whether this is a 4xx or 5xx reply.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// The reply as written on the wire.
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            if self.status.is_empty() {
                out.push_str(&format!("{}{}{}\r\n", self.code, sep, line));
            } else {
                out.push_str(&format!("{}{}{} {}\r\n", self.code, sep, self.status, line));
            }
        }
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_wire().trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_replies_use_dashes() {
        let r = Reply {
            code: 250,
            status: "",
            lines: vec!["mx.test".into(), "PIPELINING".into()],
        };
        assert_eq!(r.to_wire(), "250-mx.test\r\n250 PIPELINING\r\n");
        assert_eq!(Reply::new(550, "5.1.1", "no").to_wire(), "550 5.1.1 no\r\n");
    }
}
