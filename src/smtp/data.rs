//! The DATA reader's framing (RFC 5321 §4.1.1.4, §4.5.2), over octets as
//! they arrive rather than over lines: it finds the end of the data, undoes
//! dot-stuffing, notes bare CR and bare LF, counts the message's size, and
//! watches the header section for what the session needs (`Received:`
//! count, `Date:`, `Message-ID:`). It holds no line and no message, so a
//! line may be as long as the message (RFC 5321 §4.5.3.1: no limit where
//! the server can avoid one) and memory does not grow with either.
//!
//! Only `<CRLF>.<CRLF>` ends the data, and only after a line that itself
//! ended in CRLF (the SMTP smuggling attacks rely on receivers that take
//! `<LF>.<LF>` or `<LF>.<CRLF>`). A bare CR or LF makes the message
//! refused (the session replies `550 5.6.0`), but it never ends the data.

/// Longest header line kept for the header watch; longer ones are judged
/// by their start (a field name is within it).
const HEADER_LINE_KEEP: usize = 998;

/// What the header section said, as far as the session needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderWatch {
    /// `Received:` fields (RFC 5321 §6.3: a loop shows as many).
    pub received: usize,
    /// A `Date:` field is there.
    pub date: bool,
    /// The first `Message-ID:` value, unfolded and trimmed.
    pub message_id: Option<String>,
    /// The header section is over (an empty line was seen).
    done: bool,
    /// The current header line, up to `HEADER_LINE_KEEP` octets.
    line: Vec<u8>,
    /// The last field was the first `Message-ID:`: its folded lines
    /// continue the value.
    in_message_id: bool,
}

impl HeaderWatch {
    fn take(&mut self, part: &[u8]) {
        if !self.done {
            let room = HEADER_LINE_KEEP.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
        }
    }

    /// A line ended (its octets were given to `take`, without the ending).
    fn end_line(&mut self) {
        if self.done {
            return;
        }
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.done = true;
            return;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if self.in_message_id
                && let Some(v) = &mut self.message_id
            {
                let more = String::from_utf8_lossy(&line);
                v.push(' ');
                v.push_str(more.trim());
                *v = v.trim().to_string();
            }
            return;
        }
        self.in_message_id = false;
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return;
        };
        let name = String::from_utf8_lossy(&line[..colon]);
        let name = name.trim();
        if name.eq_ignore_ascii_case("received") {
            self.received += 1;
        } else if name.eq_ignore_ascii_case("date") {
            self.date = true;
        } else if name.eq_ignore_ascii_case("message-id") && self.message_id.is_none() {
            self.message_id = Some(
                String::from_utf8_lossy(&line[colon + 1..])
                    .trim()
                    .to_string(),
            );
            self.in_message_id = true;
        }
    }
}

/// The DATA reader's state between reads; see the module comment.
#[derive(Debug)]
pub struct DataScanner {
    /// Wire octets of the current line so far (its leading dot included).
    line_len: u64,
    /// The current line began with a dot (removed: dot-stuffing).
    dot: bool,
    /// The last octet of the current line so far was a CR, held back
    /// until the next octet says whether it ends the line.
    cr: bool,
    /// The previous line ended in CRLF (the data starts as if it did).
    prev_crlf: bool,
    /// A bare CR or bare LF was seen.
    pub bad_ending: bool,
    /// Octets of the message after dot-unstuffing, line ends as CRLF.
    pub size: u64,
    /// What the header section said.
    pub headers: HeaderWatch,
}

impl Default for DataScanner {
    fn default() -> Self {
        DataScanner {
            line_len: 0,
            dot: false,
            cr: false,
            prev_crlf: true,
            bad_ending: false,
            size: 0,
            headers: HeaderWatch::default(),
        }
    }
}

impl DataScanner {
    /// A scanner at the start of the data.
    pub fn new() -> DataScanner {
        DataScanner::default()
    }

    fn emit(&mut self, out: &mut Vec<u8>, part: &[u8]) {
        self.size += part.len() as u64;
        self.headers.take(part);
        out.extend_from_slice(part);
    }

    /// Reads `input`, appending the message's octets to `out`. Returns how
    /// many octets of `input` it used and whether the end of the data was
    /// reached (then the rest of `input` is the client's next command).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut p = 0;
        while p < input.len() {
            if self.line_len == 0 && input[p] == b'.' {
                self.dot = true;
                self.line_len = 1;
                p += 1;
                continue;
            }
            let rest = &input[p..];
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let seg = &rest[..i];
                    let crlf = match seg.last() {
                        Some(&b'\r') => true,
                        Some(_) => false,
                        None => self.cr,
                    };
                    if self.cr && !seg.is_empty() {
                        // The held-back CR was followed by something else.
                        self.bad_ending = true;
                        self.emit(out, b"\r");
                    }
                    let text = if crlf && !seg.is_empty() {
                        &seg[..seg.len() - 1]
                    } else {
                        seg
                    };
                    if memchr::memchr(b'\r', text).is_some() {
                        self.bad_ending = true;
                    }
                    let wire = self.line_len + seg.len() as u64;
                    p += i + 1;
                    // `.` CR LF after a line that ended in CRLF.
                    if crlf && self.dot && wire == 2 && self.prev_crlf {
                        return (p, true);
                    }
                    if !crlf {
                        self.bad_ending = true;
                    }
                    self.emit(out, text);
                    self.headers.end_line();
                    self.size += 2;
                    out.extend_from_slice(b"\r\n");
                    self.prev_crlf = crlf;
                    self.line_len = 0;
                    self.dot = false;
                    self.cr = false;
                }
                None => {
                    if self.cr {
                        self.bad_ending = true;
                        self.emit(out, b"\r");
                    }
                    let (text, cr) = match rest.split_last() {
                        Some((&b'\r', head)) => (head, true),
                        _ => (rest, false),
                    };
                    if memchr::memchr(b'\r', text).is_some() {
                        self.bad_ending = true;
                    }
                    self.emit(out, text);
                    self.cr = cr;
                    self.line_len += rest.len() as u64;
                    p = input.len();
                }
            }
        }
        (p, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` octets; returns the message, the
    /// octets used, whether it ended, and the scanner.
    fn scan(input: &[u8], step: usize) -> (Vec<u8>, usize, bool, DataScanner) {
        let mut s = DataScanner::new();
        let mut out = Vec::new();
        let mut used = 0;
        for piece in input.chunks(step.max(1)) {
            let (n, end) = s.feed(piece, &mut out);
            used += n;
            if end {
                return (out, used, true, s);
            }
        }
        (out, used, false, s)
    }

    #[test]
    fn ends_at_crlf_dot_crlf_and_unstuffs_at_every_split() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n";
        for step in 1..input.len() {
            let (out, used, end, s) = scan(input, step);
            assert!(end, "step {step}");
            assert_eq!(out, b"Subject: x\r\n\r\n.leading dot\r\n", "step {step}");
            assert_eq!(&input[used..], b"QUIT\r\n", "step {step}");
            assert!(!s.bad_ending);
            assert_eq!(s.size, out.len() as u64);
        }
    }

    #[test]
    fn an_empty_message_ends_at_once() {
        let (out, used, end, _) = scan(b".\r\n", 1);
        assert!(end);
        assert_eq!(used, 3);
        assert!(out.is_empty());
    }

    #[test]
    fn bare_lf_and_bare_cr_never_end_the_data_and_are_flagged() {
        for input in [
            &b"a\n.\nb\r\n"[..],
            b"a\n.\r\nb\r\n",
            b"a\r\n.\nb\r\n",
            b"a\r.\r\nb\r\n",
            b"a\r\n.\r.\r\nb\r\n",
        ] {
            for step in 1..=input.len() {
                let (_, _, end, s) = scan(input, step);
                assert!(!end, "{input:?} step {step}");
                assert!(s.bad_ending, "{input:?} step {step}");
            }
        }
        // After a bad line, a proper end still ends the data.
        let (_, _, end, s) = scan(b"a\nb\r\n.\r\n", 3);
        assert!(end && s.bad_ending);
    }

    #[test]
    fn a_line_longer_than_1000_octets_is_taken_whole() {
        let mut input = vec![b'x'; 100_000];
        input.extend_from_slice(b"\r\n.\r\n");
        let (out, _, end, s) = scan(&input, 4096);
        assert!(end && !s.bad_ending);
        assert_eq!(out.len(), 100_002);
        assert_eq!(s.size, 100_002);
    }

    #[test]
    fn the_header_watch_counts_received_and_finds_date_and_message_id() {
        let input = b"Received: a\r\n\tb\r\nreceived: c\r\nMessage-ID:\r\n <x@y>\r\n\r\nDate: body\r\nReceived: body\r\n.\r\n";
        for step in [1, 2, 5, 1000] {
            let (_, _, end, s) = scan(input, step);
            assert!(end);
            assert_eq!(s.headers.received, 2);
            assert!(!s.headers.date, "a Date in the body is not a header");
            assert_eq!(s.headers.message_id.as_deref(), Some("<x@y>"));
        }
    }

    proptest::proptest! {
        /// Any split of the same octets gives the same result.
        #[test]
        fn splits_do_not_change_the_result(
            body in proptest::collection::vec(proptest::sample::select(&b"ab.\r\n"[..]), 0..200),
            step in 1usize..17,
        ) {
            let mut input = body.clone();
            input.extend_from_slice(b"\r\n.\r\n");
            let whole = scan(&input, input.len());
            let split = scan(&input, step);
            proptest::prop_assert_eq!(&whole.0, &split.0);
            proptest::prop_assert_eq!(whole.1, split.1);
            proptest::prop_assert_eq!(whole.2, split.2);
            proptest::prop_assert_eq!(whole.3.bad_ending, split.3.bad_ending);
            proptest::prop_assert_eq!(whole.3.size, split.3.size);
        }
    }
}
