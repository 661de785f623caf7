//! MIME structure of a stored message, computed once when the message
//! enters the message store and cached there, so that IMAP's ENVELOPE,
//! BODYSTRUCTURE, `BODY[section]` and header SEARCH, and the webmail's
//! message list, never reparse or reread a body.
//!
//! Offsets are relative to the start of the stored blob (the octets the
//! store keeps once per delivery). A per-copy prefix (`Return-Path:`,
//! `Delivered-To:`) is added by the store's readers, which shift offsets
//! by its length; nothing here knows about it.
//!
//! Strings are kept as the raw octets of the header (RFC 2047 encoded
//! words left encoded), because IMAP returns them raw; `decode` helpers
//! turn them into text for people.

pub mod downgrade;

use mail_parser::MimeHeaders;
use serde::{Deserialize, Serialize};

/// What is cached about one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The RFC 3501 §7.4.2 ENVELOPE of the message.
    pub envelope: Envelope,
    /// The top-level body part (a tree for multipart messages).
    pub body: Part,
    /// `Date:` parsed, Unix seconds (for SORT, SENTBEFORE, the webmail).
    pub sent: Option<i64>,
    /// Whether any part is an attachment (for the webmail's list).
    pub has_attachments: bool,
    /// The start of the first text part, decoded, at most a few hundred
    /// characters (the webmail's preview line).
    pub preview: String,
}

/// RFC 3501 ENVELOPE fields, raw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `Date:`, raw.
    pub date: Option<Vec<u8>>,
    /// `Subject:`, raw (unfolded).
    pub subject: Option<Vec<u8>>,
    /// `From:`.
    pub from: Vec<Address>,
    /// `Sender:` (defaults to From, as RFC 3501 asks, when absent).
    pub sender: Vec<Address>,
    /// `Reply-To:` (defaults to From when absent).
    pub reply_to: Vec<Address>,
    /// `To:`.
    pub to: Vec<Address>,
    /// `Cc:`.
    pub cc: Vec<Address>,
    /// `Bcc:`.
    pub bcc: Vec<Address>,
    /// `In-Reply-To:`, raw.
    pub in_reply_to: Option<Vec<u8>>,
    /// `Message-ID:`, raw.
    pub message_id: Option<Vec<u8>>,
}

/// One address of an ENVELOPE list. A group is a start marker
/// (`mailbox = Some(group name)`, `host = None`) followed by its members
/// and an end marker (both `None`), as RFC 3501 §7.4.2 encodes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Display name, decoded to UTF-8 by mail-parser (RFC 2047 words and
    /// quoting undone; unlike the other fields it is not raw: IMAP encodes
    /// it again unless the client enabled UTF8=ACCEPT).
    pub name: Option<Vec<u8>>,
    /// Source route (obsolete), raw.
    pub adl: Option<Vec<u8>>,
    /// Local part (or group name).
    pub mailbox: Option<Vec<u8>>,
    /// Domain.
    pub host: Option<Vec<u8>>,
}

/// MIME parameters (`name`, raw value), in order.
pub type Params = Vec<(String, Vec<u8>)>;

/// One body part, with what BODYSTRUCTURE reports and where its octets are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Media type, lower case (`text`, `multipart`, `message`, …).
    pub media_type: String,
    /// Subtype, lower case.
    pub subtype: String,
    /// Content-Type parameters, in order (RFC 2231 continuations joined).
    pub params: Params,
    /// `Content-ID:`, raw.
    pub id: Option<Vec<u8>>,
    /// `Content-Description:`, raw.
    pub description: Option<Vec<u8>>,
    /// `Content-Transfer-Encoding:`, lower case; `7bit` when absent.
    pub encoding: String,
    /// `Content-MD5:`, raw.
    pub md5: Option<Vec<u8>>,
    /// `Content-Disposition:` type and parameters.
    pub disposition: Option<(String, Params)>,
    /// `Content-Language:` values.
    pub language: Vec<Vec<u8>>,
    /// `Content-Location:`, raw.
    pub location: Option<Vec<u8>>,
    /// Offset of the part's header section (its MIME header).
    pub header_start: u64,
    /// Offset of the part's body (after the empty line).
    pub body_start: u64,
    /// Offset just past the part's body.
    pub body_end: u64,
    /// Lines of the body (text and message/rfc822 parts).
    pub lines: u32,
    /// Sub-parts of a multipart, in order.
    pub parts: Vec<Part>,
    /// For `message/rfc822` (and `message/global`): the enclosed message.
    pub message: Option<Box<Summary>>,
}

impl Part {
    /// The body's size in octets, as BODYSTRUCTURE reports it.
    pub fn size(&self) -> u64 {
        self.body_end.saturating_sub(self.body_start)
    }
}

/// Longest preview kept, in characters.
const PREVIEW_CHARS: usize = 256;

/// Deepest nesting of parts and enclosed messages followed; deeper ones
/// are summarised as opaque parts (hostile input must not recurse far).
const MAX_DEPTH: usize = 32;

impl Summary {
    /// Parses a message (CRLF line ends) into its summary. Never fails: a
    /// message mail-parser cannot read becomes a `text/plain` body.
    pub fn parse(raw: &[u8]) -> Summary {
        match mail_parser::MessageParser::default().parse(raw) {
            Some(m) => summarize(&m, raw, 0, 0),
            None => Summary {
                body: plain_part(raw, 0, 0, raw.len() as u64),
                ..Summary::default()
            },
        }
    }
}

/// Header text for people: RFC 2047 encoded words decoded (charsets as
/// `mail-parser` knows them), anything else as UTF-8 (lossy).
pub fn decode_words(raw: &[u8]) -> String {
    if !raw.windows(2).any(|w| w == b"=?") {
        return String::from_utf8_lossy(raw).into_owned();
    }
    let mut m = b"Subject: ".to_vec();
    m.extend_from_slice(raw);
    m.extend_from_slice(b"\r\n\r\n");
    mail_parser::MessageParser::default()
        .parse(&m)
        .and_then(|p| p.subject().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned())
}

/// The words a full-text search looks in: every text part decoded (HTML
/// as text), and with `headers` the header fields too (IMAP SEARCH TEXT).
pub fn searchable_text(content: &[u8], headers: bool) -> String {
    let mut s = String::new();
    if headers {
        for (n, v) in crate::headers::fields(content) {
            s.push_str(&n);
            s.push_str(": ");
            s.push_str(&decode_words(v.as_bytes()));
            s.push('\n');
        }
    }
    if let Some(m) = mail_parser::MessageParser::default().parse(content) {
        let mut i = 0;
        while let Some(t) = m.body_text(i) {
            s.push_str(&t);
            s.push('\n');
            i += 1;
        }
    }
    s
}

fn plain_part(raw: &[u8], header_start: u64, body_start: u64, body_end: u64) -> Part {
    let body = raw
        .get(body_start as usize..body_end as usize)
        .unwrap_or_default();
    Part {
        media_type: "text".into(),
        subtype: "plain".into(),
        params: vec![("charset".into(), b"us-ascii".to_vec())],
        encoding: "7bit".into(),
        header_start,
        body_start,
        body_end,
        lines: memchr::memchr_iter(b'\n', body).count() as u32,
        ..Part::default()
    }
}

/// The raw value of the first header named `name` (unfolded, trimmed).
fn raw_header(part: &mail_parser::MessagePart<'_>, raw: &[u8], name: &str) -> Option<Vec<u8>> {
    let h = part
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))?;
    let v = raw.get(h.offset_start as usize..h.offset_end as usize)?;
    let mut out = Vec::with_capacity(v.len());
    for &b in v {
        if b != b'\r' && b != b'\n' {
            out.push(b);
        }
    }
    let start = out
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(out.len());
    let end = out
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    Some(out[start..end].to_vec())
}

fn addresses(a: Option<&mail_parser::Address<'_>>) -> Vec<Address> {
    let one = |x: &mail_parser::Addr<'_>| {
        let addr = x.address.as_deref().unwrap_or("");
        let (local, host) = match addr.rsplit_once('@') {
            Some((l, h)) => (l, Some(h.as_bytes().to_vec())),
            None => (addr, None),
        };
        Address {
            name: x.name.as_deref().map(|n| n.as_bytes().to_vec()),
            adl: None,
            mailbox: Some(local.as_bytes().to_vec()),
            host: host.or_else(|| Some(Vec::new())),
        }
    };
    match a {
        None => Vec::new(),
        Some(mail_parser::Address::List(l)) => l.iter().map(one).collect(),
        Some(mail_parser::Address::Group(groups)) => {
            let mut out = Vec::new();
            for g in groups {
                match &g.name {
                    Some(name) => {
                        out.push(Address {
                            mailbox: Some(name.as_bytes().to_vec()),
                            ..Address::default()
                        });
                        out.extend(g.addresses.iter().map(one));
                        out.push(Address::default());
                    }
                    None => out.extend(g.addresses.iter().map(one)),
                }
            }
            out
        }
    }
}

fn summarize(m: &mail_parser::Message<'_>, raw: &[u8], base: u64, depth: usize) -> Summary {
    let root = m.root_part();
    let env_raw = |name: &str| raw_header(root, raw, name);
    let from = addresses(m.from());
    let sender = match addresses(m.sender()) {
        s if s.is_empty() => from.clone(),
        s => s,
    };
    let reply_to = match addresses(m.reply_to()) {
        r if r.is_empty() => from.clone(),
        r => r,
    };
    let envelope = Envelope {
        date: env_raw("Date"),
        subject: env_raw("Subject"),
        from,
        sender,
        reply_to,
        to: addresses(m.to()),
        cc: addresses(m.cc()),
        bcc: addresses(m.bcc()),
        in_reply_to: env_raw("In-Reply-To"),
        message_id: env_raw("Message-ID"),
    };
    let body = part_of(m, raw, 0, base, depth);
    let has_attachments = !m.attachments.is_empty();
    let preview: String = m
        .body_text(0)
        .map(|t| {
            t.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(PREVIEW_CHARS)
                .collect()
        })
        .unwrap_or_default();
    Summary {
        envelope,
        body,
        sent: m.date().map(|d| d.to_timestamp()),
        has_attachments,
        preview,
    }
}

/// Part `id` of `m`. mail-parser gives the offsets of an enclosed message's
/// parts in the outermost message, so `raw` is always the whole blob.
fn part_of(m: &mail_parser::Message<'_>, raw: &[u8], id: usize, base: u64, depth: usize) -> Part {
    let Some(p) = m.parts.get(id) else {
        return Part::default();
    };
    let (hs, bs, be) = (
        u64::from(p.offset_header),
        u64::from(p.offset_body),
        u64::from(p.offset_end),
    );
    let ct = p.content_type();
    let (media_type, subtype) = match ct {
        Some(c) => (
            c.ctype().to_ascii_lowercase(),
            c.subtype().unwrap_or("plain").to_ascii_lowercase(),
        ),
        None => ("text".to_string(), "plain".to_string()),
    };
    let mut params: Params = ct
        .and_then(|c| c.attributes())
        .map(|a| {
            a.iter()
                .map(|x| (x.name.to_ascii_lowercase(), x.value.as_bytes().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    if ct.is_none() {
        params.push(("charset".into(), b"us-ascii".to_vec()));
    }
    let disposition = p.content_disposition().map(|d| {
        (
            d.ctype().to_ascii_lowercase(),
            d.attributes()
                .map(|a| {
                    a.iter()
                        .map(|x| (x.name.to_ascii_lowercase(), x.value.as_bytes().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        )
    });
    let body = raw.get(bs as usize..be as usize).unwrap_or_default();
    let mut part = Part {
        media_type,
        subtype,
        params,
        id: raw_header(p, raw, "Content-ID"),
        description: raw_header(p, raw, "Content-Description"),
        encoding: raw_header(p, raw, "Content-Transfer-Encoding")
            .map(|e| String::from_utf8_lossy(&e).to_ascii_lowercase())
            .unwrap_or_else(|| "7bit".into()),
        md5: raw_header(p, raw, "Content-MD5"),
        disposition,
        language: p
            .content_language()
            .as_text_list()
            .map(|l| l.iter().map(|s| s.as_bytes().to_vec()).collect())
            .unwrap_or_default(),
        location: raw_header(p, raw, "Content-Location"),
        header_start: base + hs,
        body_start: base + bs,
        body_end: base + be,
        lines: memchr::memchr_iter(b'\n', body).count() as u32,
        parts: Vec::new(),
        message: None,
    };
    if depth >= MAX_DEPTH {
        return part;
    }
    if let Some(subs) = p.sub_parts() {
        part.parts = subs
            .iter()
            .map(|&s| part_of(m, raw, s as usize, base, depth + 1))
            .collect();
    } else if let Some(inner) = p.message() {
        part.message = Some(Box::new(summarize(inner, raw, base, depth + 1)));
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_multipart_message() {
        let raw = b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: Hello\r\n =?utf-8?q?there?=\r\nMessage-ID: <1@x>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHi Bob\r\n--b\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n";
        let s = Summary::parse(raw);
        assert_eq!(
            s.envelope.subject.as_deref(),
            Some(&b"Hello =?utf-8?q?there?="[..])
        );
        assert_eq!(s.envelope.from[0].mailbox.as_deref(), Some(&b"alice"[..]));
        assert_eq!(
            s.envelope.from[0].host.as_deref(),
            Some(&b"example.test"[..])
        );
        assert_eq!(s.envelope.sender, s.envelope.from);
        assert_eq!(s.envelope.message_id.as_deref(), Some(&b"<1@x>"[..]));
        assert_eq!(
            (s.body.media_type.as_str(), s.body.subtype.as_str()),
            ("multipart", "mixed")
        );
        assert_eq!(s.body.parts.len(), 2);
        let text = &s.body.parts[0];
        assert_eq!(
            &raw[text.body_start as usize..text.body_end as usize],
            b"Hi Bob"
        );
        assert_eq!(s.body.parts[1].encoding, "base64");
        assert!(s.has_attachments);
        assert_eq!(s.preview, "Hi Bob");
    }

    #[test]
    fn an_enclosed_message_has_offsets_in_the_outer_blob() {
        let raw = b"Subject: outer\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nouter body\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: x@y.test\r\n\r\ninner body\r\n--b--\r\n";
        let s = Summary::parse(raw);
        let part = &s.body.parts[1];
        assert_eq!(
            (part.media_type.as_str(), part.subtype.as_str()),
            ("message", "rfc822")
        );
        let inner = part.message.as_ref().expect("enclosed message");
        assert_eq!(inner.envelope.subject.as_deref(), Some(&b"inner"[..]));
        let b = &inner.body;
        assert_eq!(
            &raw[b.body_start as usize..b.body_end as usize],
            b"inner body"
        );
        assert_eq!(
            &raw[b.header_start as usize..b.header_start as usize + 8],
            b"Subject:"
        );
    }

    #[test]
    fn garbage_is_a_plain_body() {
        let s = Summary::parse(b"\xff\xfe\x00not mail");
        assert!(!s.body.media_type.is_empty());
        let _ = Summary::parse(b"");
    }
}
