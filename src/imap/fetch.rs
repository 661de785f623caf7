//! What FETCH sends: strings in IMAP syntax, ENVELOPE and BODYSTRUCTURE
//! from the store's cached `mime::Summary`, and the octets of a
//! `BODY[section]` cut out of a stored copy (its per-copy prefix, then
//! the blob the summary's offsets count in).

use super::parser::{Section, SectionSpec};
use crate::mime::{Address, Envelope, Params, Part, Summary};

/// Appends `s` as an IMAP string: quoted when that is possible, a
/// literal otherwise.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() < 1024 && s.iter().all(|&b| (0x20..0x7f).contains(&b));
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// Appends `s` as a literal (`literal8` when it holds a NUL).
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    if memchr::memchr(0, s).is_some() {
        out.push(b'~');
    }
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// Appends `NIL` or the string.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

fn addresses(out: &mut Vec<u8>, a: &[Address]) {
    if a.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for x in a {
        out.push(b'(');
        nstring(out, x.name.as_deref());
        out.push(b' ');
        nstring(out, x.adl.as_deref());
        out.push(b' ');
        nstring(out, x.mailbox.as_deref());
        out.push(b' ');
        nstring(out, x.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

/// `ENVELOPE` (RFC 9051 §7.5.2).
pub fn envelope(out: &mut Vec<u8>, e: &Envelope) {
    out.push(b'(');
    nstring(out, e.date.as_deref());
    out.push(b' ');
    nstring(out, e.subject.as_deref());
    for list in [&e.from, &e.sender, &e.reply_to, &e.to, &e.cc, &e.bcc] {
        out.push(b' ');
        addresses(out, list);
    }
    out.push(b' ');
    nstring(out, e.in_reply_to.as_deref());
    out.push(b' ');
    nstring(out, e.message_id.as_deref());
    out.push(b')');
}

fn params(out: &mut Vec<u8>, p: &Params) {
    if p.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (k, v)) in p.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, k.to_ascii_uppercase().as_bytes());
        out.push(b' ');
        string(out, v);
    }
    out.push(b')');
}

fn extension(out: &mut Vec<u8>, part: &Part) {
    out.push(b' ');
    match &part.disposition {
        Some((kind, p)) => {
            out.push(b'(');
            string(out, kind.to_ascii_uppercase().as_bytes());
            out.push(b' ');
            params(out, p);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    match part.language.as_slice() {
        [] => out.extend_from_slice(b"NIL"),
        [one] => string(out, one),
        many => {
            out.push(b'(');
            for (i, l) in many.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, l);
            }
            out.push(b')');
        }
    }
    out.push(b' ');
    nstring(out, part.location.as_deref());
}

/// `BODYSTRUCTURE` (`extended`) or `BODY` (RFC 9051 §7.5.2).
pub fn structure(out: &mut Vec<u8>, part: &Part, extended: bool) {
    out.push(b'(');
    if part.media_type == "multipart" {
        if part.parts.is_empty() {
            // A multipart without parts: shown as an empty text part, as
            // the grammar needs at least one body.
            out.extend_from_slice(b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 0 0)");
        }
        for p in &part.parts {
            structure(out, p, extended);
        }
        out.push(b' ');
        string(out, part.subtype.to_ascii_uppercase().as_bytes());
        if extended {
            out.push(b' ');
            params(out, &part.params);
            extension(out, part);
        }
    } else {
        string(out, part.media_type.to_ascii_uppercase().as_bytes());
        out.push(b' ');
        string(out, part.subtype.to_ascii_uppercase().as_bytes());
        out.push(b' ');
        params(out, &part.params);
        out.push(b' ');
        nstring(out, part.id.as_deref());
        out.push(b' ');
        nstring(out, part.description.as_deref());
        out.push(b' ');
        string(out, part.encoding.to_ascii_uppercase().as_bytes());
        out.extend_from_slice(format!(" {}", part.size()).as_bytes());
        let is_message =
            part.media_type == "message" && (part.subtype == "rfc822" || part.subtype == "global");
        match (&part.message, is_message) {
            (Some(m), true) => {
                out.push(b' ');
                envelope(out, &m.envelope);
                out.push(b' ');
                structure(out, &m.body, extended);
                out.extend_from_slice(format!(" {}", part.lines).as_bytes());
            }
            _ if part.media_type == "text" => {
                out.extend_from_slice(format!(" {}", part.lines).as_bytes());
            }
            _ => {}
        }
        if extended {
            out.push(b' ');
            nstring(out, part.md5.as_deref());
            extension(out, part);
        }
    }
    out.push(b')');
}

/// The part a section path names (RFC 9051 §6.4.5): in a multipart, `n`
/// is its n-th child; in an enclosed message, the enclosed body's; `1`
/// of a single-part message is its body. `None`: no such part.
pub fn find_part<'a>(root: &'a Part, path: &[u32]) -> Option<&'a Part> {
    let mut cur = root;
    for (i, &n) in path.iter().enumerate() {
        let container = match &cur.message {
            Some(m) if i > 0 => &m.body,
            _ => cur,
        };
        cur = if container.media_type == "multipart" {
            container.parts.get(n as usize - 1)?
        } else if n == 1 && (i == 0 || cur.message.is_some()) {
            container
        } else {
            return None;
        };
    }
    Some(cur)
}

/// The octets of `section` in a stored copy (`content`: prefix, then the
/// blob; the summary's offsets count from the blob's start). `None`: the
/// section does not exist (RFC 9051 says to send an empty string then).
pub fn section_bytes(
    content: &[u8],
    prefix_len: usize,
    summary: &Summary,
    section: &Section,
) -> Option<Vec<u8>> {
    let blob = content.get(prefix_len..)?;
    let cut = |a: u64, b: u64| -> Option<Vec<u8>> {
        blob.get(a as usize..(b as usize).min(blob.len()))
            .map(<[u8]>::to_vec)
    };
    if section.path.is_empty() {
        let header_end = (summary.body.body_start as usize).min(blob.len());
        return match &section.spec {
            SectionSpec::Full => Some(content.to_vec()),
            SectionSpec::Header => Some(content[..prefix_len + header_end].to_vec()),
            SectionSpec::Text => Some(blob[header_end..].to_vec()),
            SectionSpec::Fields { names, not } => {
                Some(fields(&content[..prefix_len + header_end], names, *not))
            }
            SectionSpec::Mime => None,
        };
    }
    let part = find_part(&summary.body, &section.path)?;
    match &section.spec {
        SectionSpec::Full => cut(part.body_start, part.body_end),
        SectionSpec::Mime => cut(part.header_start, part.body_start),
        spec => {
            // HEADER, TEXT, HEADER.FIELDS of an enclosed message.
            let m = part.message.as_ref()?;
            let (hs, bs, be) = (m.body.header_start, m.body.body_start, part.body_end);
            match spec {
                SectionSpec::Header => cut(hs, bs),
                SectionSpec::Text => cut(bs, be),
                SectionSpec::Fields { names, not } => Some(fields(&cut(hs, bs)?, names, *not)),
                _ => None,
            }
        }
    }
}

/// The header fields named (or, with `not`, all the others), each with
/// its continuation lines, then the empty line.
pub fn fields(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line
                .iter()
                .position(|&b| b == b':')
                .map(|i| line[..i].trim_ascii());
            keep = match name {
                Some(n) => names.iter().any(|x| x.as_bytes().eq_ignore_ascii_case(n)) != not,
                None => false,
            };
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A content transfer encoding BINARY cannot undo (`NO [UNKNOWN-CTE]`).
#[derive(Debug)]
pub struct UnknownEncoding;

/// A leaf part's content with its transfer encoding undone (RFC 3516
/// BINARY).
pub fn decoded(content: &[u8], prefix_len: usize, part: &Part) -> Result<Vec<u8>, UnknownEncoding> {
    let blob = content.get(prefix_len..).unwrap_or_default();
    let raw = blob
        .get(part.body_start as usize..(part.body_end as usize).min(blob.len()))
        .unwrap_or_default();
    match part.encoding.as_str() {
        "7bit" | "8bit" | "binary" | "" => Ok(raw.to_vec()),
        "quoted-printable" => Ok(crate::mime::downgrade::qp_decode(raw)),
        "base64" => {
            use base64::Engine as _;
            let clean: Vec<u8> = raw
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(&clean)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&clean))
                .map_err(|_| UnknownEncoding)
        }
        _ => Err(UnknownEncoding),
    }
}

/// INTERNALDATE (`"02-Dec-2026 10:00:00 +0000"`).
pub fn internal_date(ts: i64) -> String {
    let t = chrono::DateTime::from_timestamp(ts, 0).unwrap_or_default();
    t.format("\"%d-%b-%Y %H:%M:%S +0000\"").to_string()
}

/// Cuts `<origin.count>` out of `data`.
pub fn partial(data: &[u8], p: Option<(u32, u32)>) -> &[u8] {
    match p {
        None => data,
        Some((origin, count)) => {
            let a = (origin as usize).min(data.len());
            let b = a.saturating_add(count as usize).min(data.len());
            &data[a..b]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: a@example.test\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: c@example.test\r\n\r\ninner body\r\n--b--\r\n";

    #[test]
    fn sections_of_a_nested_message() {
        let s = Summary::parse(MSG);
        let prefix = b"Return-Path: <x@y>\r\n";
        let mut content = prefix.to_vec();
        content.extend_from_slice(MSG);
        let get = |path: Vec<u32>, spec| {
            section_bytes(&content, prefix.len(), &s, &Section { path, spec })
                .map(|v| String::from_utf8(v).unwrap())
        };
        assert!(
            get(vec![], SectionSpec::Header)
                .unwrap()
                .starts_with("Return-Path")
        );
        assert!(
            get(vec![], SectionSpec::Header)
                .unwrap()
                .ends_with("boundary=b\r\n\r\n")
        );
        assert_eq!(get(vec![1], SectionSpec::Full).unwrap().trim_end(), "one");
        assert_eq!(
            get(vec![2], SectionSpec::Header).unwrap(),
            "Subject: inner\r\nFrom: c@example.test\r\n\r\n"
        );
        assert_eq!(
            get(vec![2, 1], SectionSpec::Full).unwrap().trim_end(),
            "inner body"
        );
        assert_eq!(
            get(
                vec![2],
                SectionSpec::Fields {
                    names: vec!["FROM".into()],
                    not: false
                }
            )
            .unwrap(),
            "From: c@example.test\r\n\r\n"
        );
        assert_eq!(get(vec![3], SectionSpec::Full), None);
        assert_eq!(get(vec![1, 1], SectionSpec::Full), None);
        let mut bs = Vec::new();
        structure(&mut bs, &s.body, true);
        let bs = String::from_utf8(bs).unwrap();
        assert!(bs.contains("\"MESSAGE\" \"RFC822\""), "{bs}");
        assert!(bs.contains("\"MIXED\""), "{bs}");
    }

    #[test]
    fn strings() {
        let mut o = Vec::new();
        string(&mut o, b"a\"b");
        assert_eq!(o, b"\"a\\\"b\"");
        o.clear();
        string(&mut o, "é".as_bytes());
        assert_eq!(o, b"{2}\r\n\xc3\xa9");
        assert_eq!(internal_date(0), "\"01-Jan-1970 00:00:00 +0000\"");
    }
}
