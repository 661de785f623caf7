//! Converting a message for a peer that cannot take it as it is: 8-bit
//! content for a peer without 8BITMIME (RFC 6152 §3, by the rules of
//! RFC 1652 §5), and lines over 998 characters for any peer (RFC 5321
//! §4.5.3.1.6; Postfix's `smtp_line_length_limit` does the same). It parses
//! the MIME structure only as far as needed: entity headers, multipart
//! boundaries (recursively), `message/rfc822` bodies; every part whose body
//! has 8-bit octets or an over-long line is re-encoded (quoted-printable
//! for text, base64 for anything else) and its `Content-Transfer-Encoding`
//! rewritten. Header fields with 8-bit octets are RFC 2047-encoded when 8
//! bits may not be sent. Everything else passes byte for byte, so what a
//! reader decodes is what was queued. Pure: no I/O; never panics on input.

use base64::Engine as _;

/// How deep multiparts and enclosed messages are followed; deeper ones are
/// re-encoded as a whole leaf.
const MAX_DEPTH: usize = 32;
/// Longest line sent, CRLF excluded (RFC 5321 §4.5.3.1.6).
pub const MAX_LINE: usize = 998;
/// Longest encoded line made here (RFC 2045 §6.7 rule 5, §6.8).
const ENCODED_LINE: usize = 76;

/// Why a message cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An address in a header field has 8-bit octets: only SMTPUTF8 can
    /// carry it (RFC 6532), encoded words may not stand for addresses
    /// (RFC 2047 §5).
    #[error("the {0} header field has a non-ASCII address")]
    EightBitAddress(String),
}

/// Whether any line of `content` is longer than 998 characters.
pub fn has_long_line(content: &[u8]) -> bool {
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', content) {
        if line_len(&content[start..lf]) > MAX_LINE {
            return true;
        }
        start = lf + 1;
    }
    line_len(&content[start..]) > MAX_LINE
}

/// A line's length without its CR.
fn line_len(line: &[u8]) -> usize {
    line.strip_suffix(b"\r").unwrap_or(line).len()
}

fn has_8bit(b: &[u8]) -> bool {
    !b.is_ascii()
}

/// Whether a body needs re-encoding for this peer.
fn body_needs(body: &[u8], keep_8bit: bool) -> bool {
    (!keep_8bit && has_8bit(body)) || has_long_line(body)
}

/// Converts `content` (CRLF lines) so that it has no line over 998
/// characters and, unless `keep_8bit` (the peer offered 8BITMIME), no
/// 8-bit octet.
pub fn downgrade(content: &[u8], keep_8bit: bool) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 8 + 256);
    entity(content, keep_8bit, true, 0, &mut out)?;
    Ok(out)
}

/// One header field: its name and all its raw lines (with CRLFs).
struct Field<'a> {
    name: String,
    raw: &'a [u8],
}

impl Field<'_> {
    /// The unfolded value after the colon, as bytes.
    fn value(&self) -> Vec<u8> {
        let colon = self.raw.iter().position(|&b| b == b':').unwrap_or(0);
        let v = &self.raw[(colon + 1).min(self.raw.len())..];
        let mut out = Vec::with_capacity(v.len());
        for &b in v {
            if b != b'\r' && b != b'\n' {
                out.push(b);
            }
        }
        out
    }
}

/// Splits an entity into its header fields and body. The body starts after
/// the empty line; with no empty line, lines that look like fields are the
/// header and the rest is body.
fn split_entity(e: &[u8]) -> (Vec<Field<'_>>, &[u8], &[u8]) {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < e.len() {
        let end = memchr::memchr(b'\n', &e[pos..]).map_or(e.len(), |i| pos + i + 1);
        let line = &e[pos..end];
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
        if bare.is_empty() {
            // The empty line ends the header.
            return (fields, &e[pos..end], &e[end..]);
        }
        if bare[0] == b' ' || bare[0] == b'\t' {
            match fields.last_mut() {
                Some(f) => {
                    let start = f.raw.as_ptr() as usize - e.as_ptr() as usize;
                    f.raw = &e[start..end];
                }
                None => return (fields, &[], &e[pos..]),
            }
        } else {
            match bare.iter().position(|&b| b == b':') {
                Some(c) if c > 0 && bare[..c].iter().all(|&b| (33..=126).contains(&b)) => fields
                    .push(Field {
                        name: String::from_utf8_lossy(&bare[..c]).to_ascii_lowercase(),
                        raw: line,
                    }),
                _ => return (fields, &[], &e[pos..]),
            }
        }
        pos = end;
    }
    (fields, &[], &e[e.len()..])
}

/// A parsed `Content-Type`: type, subtype (lower case) and the boundary.
#[derive(Debug, Default)]
struct ContentType {
    media: String,
    sub: String,
    boundary: Option<Vec<u8>>,
}

fn content_type(value: &[u8]) -> Option<ContentType> {
    let mut parts = split_params(value).into_iter();
    let t = parts.next()?;
    let t = String::from_utf8_lossy(&t).trim().to_ascii_lowercase();
    let (media, sub) = t.split_once('/')?;
    let mut ct = ContentType {
        media: media.trim().to_string(),
        sub: sub.trim().to_string(),
        boundary: None,
    };
    for p in parts {
        let Some(eq) = p.iter().position(|&b| b == b'=') else {
            continue;
        };
        let name = String::from_utf8_lossy(&p[..eq])
            .trim()
            .to_ascii_lowercase();
        if name == "boundary" {
            let v = trim(&p[eq + 1..]);
            let v = match v.strip_prefix(b"\"").and_then(|x| x.strip_suffix(b"\"")) {
                Some(q) => unescape(q),
                None => v.to_vec(),
            };
            if !v.is_empty() {
                ct.boundary = Some(v);
            }
        }
    }
    Some(ct)
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &b[s..e.max(s)]
}

fn unescape(q: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.len());
    let mut esc = false;
    for &b in q {
        if esc || b != b'\\' {
            out.push(b);
            esc = false;
        } else {
            esc = true;
        }
    }
    out
}

/// Splits at `;` outside quoted strings and comments.
fn split_params(v: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    let (mut quoted, mut esc, mut comment) = (false, false, 0usize);
    for &b in v {
        if esc {
            esc = false;
        } else if b == b'\\' && (quoted || comment > 0) {
            esc = true;
        } else if b == b'"' && comment == 0 {
            quoted = !quoted;
        } else if !quoted && b == b'(' {
            comment += 1;
            continue;
        } else if !quoted && b == b')' && comment > 0 {
            comment -= 1;
            continue;
        } else if !quoted && comment == 0 && b == b';' {
            out.push(Vec::new());
            continue;
        }
        if comment == 0
            && let Some(last) = out.last_mut()
        {
            last.push(b);
        }
    }
    out
}

/// The transfer encodings a body can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cte {
    /// 7bit, 8bit, binary, or an unknown one: the octets are the content.
    Identity,
    QuotedPrintable,
    Base64,
}

fn cte(fields: &[Field]) -> Cte {
    match fields
        .iter()
        .rev()
        .find(|f| f.name == "content-transfer-encoding")
    {
        Some(f) => {
            let v = String::from_utf8_lossy(&f.value())
                .trim()
                .to_ascii_lowercase();
            match v.as_str() {
                "quoted-printable" => Cte::QuotedPrintable,
                "base64" => Cte::Base64,
                _ => Cte::Identity,
            }
        }
        None => Cte::Identity,
    }
}

/// Converts one entity (a message or a body part) into `out`.
fn entity(
    e: &[u8],
    keep_8bit: bool,
    top: bool,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let (fields, blank, body) = split_entity(e);
    let ct = fields
        .iter()
        .rev()
        .find(|f| f.name == "content-type")
        .and_then(|f| content_type(&f.value()));
    // A message without MIME-Version gets one if a part of it is encoded;
    // a Content-Type is honoured even without it, as readers do.
    let is_mime = !top || fields.iter().any(|f| f.name == "mime-version");
    let media = ct.as_ref().map_or("text", |c| c.media.as_str());
    let sub = ct.as_ref().map_or("plain", |c| c.sub.as_str());

    let boundary = ct.as_ref().and_then(|c| c.boundary.clone());
    if media == "multipart"
        && depth < MAX_DEPTH
        && let Some(b) = boundary
    {
        // The parts carry the encodings; a multipart itself is 7bit once
        // its parts are (RFC 2045 §6.4).
        let mut new_body = Vec::with_capacity(body.len() + body.len() / 8);
        multipart(body, &b, keep_8bit, depth, &mut new_body)?;
        let cte_7bit = !keep_8bit || !has_8bit(&new_body);
        write_fields(&fields, keep_8bit, cte_7bit.then_some("7bit"), false, out)?;
        out.extend_from_slice(blank);
        out.extend_from_slice(&new_body);
        return Ok(());
    }
    if media == "message"
        && (sub == "rfc822" || sub == "news")
        && depth < MAX_DEPTH
        && cte(&fields) == Cte::Identity
    {
        if !body_needs(body, keep_8bit) {
            write_fields(&fields, keep_8bit, None, false, out)?;
            out.extend_from_slice(blank);
            out.extend_from_slice(body);
            return Ok(());
        }
        // An enclosed message is converted in place (RFC 2046 §5.2.1: it
        // may not itself be encoded).
        let mut inner = Vec::with_capacity(body.len() + body.len() / 8);
        entity(body, keep_8bit, true, depth + 1, &mut inner)?;
        let cte_7bit = !keep_8bit || !has_8bit(&inner);
        write_fields(&fields, keep_8bit, cte_7bit.then_some("7bit"), false, out)?;
        out.extend_from_slice(blank);
        out.extend_from_slice(&inner);
        return Ok(());
    }
    leaf(&fields, blank, body, media, keep_8bit, top && !is_mime, out)
}

/// A part with content of its own.
fn leaf(
    fields: &[Field],
    blank: &[u8],
    body: &[u8],
    media: &str,
    keep_8bit: bool,
    add_mime: bool,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let encoding = cte(fields);
    let needs = body_needs(body, keep_8bit);
    if !needs {
        write_fields(fields, keep_8bit, None, false, out)?;
        out.extend_from_slice(blank);
        out.extend_from_slice(body);
        return Ok(());
    }
    // The body without the line break that ends the entity (in a multipart
    // it belongs to the next boundary line).
    let (content, tail): (&[u8], &[u8]) = if let Some(c) = body.strip_suffix(b"\r\n") {
        (c, b"\r\n")
    } else if let Some(c) = body.strip_suffix(b"\n") {
        (c, b"\n")
    } else {
        (body, b"")
    };
    let (encoded, name) = match encoding {
        Cte::Base64 => (rewrap_base64(content), "base64"),
        Cte::QuotedPrintable => (qp_encode(&qp_decode(content)), "quoted-printable"),
        // Text, and what should have been structure (a multipart without
        // a boundary), stay readable as quoted-printable.
        Cte::Identity if matches!(media, "text" | "message" | "multipart") => {
            (qp_encode(content), "quoted-printable")
        }
        Cte::Identity => (base64_encode(content), "base64"),
    };
    write_fields(fields, keep_8bit, Some(name), add_mime, out)?;
    if add_mime && !fields.iter().any(|f| f.name == "content-type") {
        let charset = if std::str::from_utf8(content).is_ok() {
            "utf-8"
        } else {
            "unknown-8bit"
        };
        out.extend_from_slice(
            format!("Content-Type: text/plain; charset={charset}\r\n").as_bytes(),
        );
    }
    if blank.is_empty() {
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(blank);
    }
    out.extend_from_slice(&encoded);
    out.extend_from_slice(tail);
    Ok(())
}

/// Converts a multipart body: preamble, parts, epilogue.
fn multipart(
    body: &[u8],
    boundary: &[u8],
    keep_8bit: bool,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    // Boundary lines: (start, end including its line break, closing).
    let mut lines = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let end = memchr::memchr(b'\n', &body[pos..]).map_or(body.len(), |i| pos + i + 1);
        let line = &body[pos..end];
        if let Some(rest) = line
            .strip_prefix(b"--")
            .and_then(|l| l.strip_prefix(boundary))
        {
            let closing = rest.starts_with(b"--");
            let rest = if closing { &rest[2..] } else { rest };
            if rest.iter().all(|b| b.is_ascii_whitespace()) {
                lines.push((pos, end, closing));
                if closing {
                    break;
                }
            }
        }
        pos = end;
    }
    let Some(&(first, _, _)) = lines.first() else {
        // No boundary at all: a body of its own.
        return text_section(body, keep_8bit, out);
    };
    text_section(&body[..first], keep_8bit, out)?;
    for (k, &(start, end, closing)) in lines.iter().enumerate() {
        out.extend_from_slice(&body[start..end]);
        let next = lines.get(k + 1).map_or(body.len(), |l| l.0);
        if closing {
            text_section(&body[end..], keep_8bit, out)?;
            break;
        }
        let part = &body[end..next];
        if lines.get(k + 1).is_none() {
            // Unterminated: the rest is the last part.
            entity(part, keep_8bit, false, depth + 1, out)?;
            break;
        }
        entity(part, keep_8bit, false, depth + 1, out)?;
    }
    Ok(())
}

/// A preamble or epilogue: nobody reads it, but it must still be sendable.
/// 8-bit octets become `?` and long lines are broken, when needed.
fn text_section(b: &[u8], keep_8bit: bool, out: &mut Vec<u8>) -> Result<(), Error> {
    if !body_needs(b, keep_8bit) {
        out.extend_from_slice(b);
        return Ok(());
    }
    let mut col = 0;
    for &c in b {
        if c == b'\n' {
            col = 0;
        } else if col >= MAX_LINE - 1 && c != b'\r' {
            out.extend_from_slice(b"\r\n");
            col = 0;
        }
        out.push(if !keep_8bit && c >= 0x80 { b'?' } else { c });
        if c != b'\n' {
            col += 1;
        }
    }
    Ok(())
}

/// Fields whose values hold addresses (RFC 5322 §3.6.2, §3.6.3, §3.6.6).
const ADDRESS_FIELDS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "return-path",
    "disposition-notification-to",
];

/// Writes the header fields: the transfer encoding replaced (or added) when
/// `new_cte` is set, 8-bit fields encoded unless `keep_8bit`, over-long
/// lines folded; `add_mime` adds `MIME-Version:` to a message without it.
fn write_fields(
    fields: &[Field],
    keep_8bit: bool,
    new_cte: Option<&str>,
    add_mime: bool,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let mut cte_written = false;
    for f in fields {
        if f.name == "content-transfer-encoding"
            && let Some(c) = new_cte
        {
            if !cte_written {
                out.extend_from_slice(format!("Content-Transfer-Encoding: {c}\r\n").as_bytes());
                cte_written = true;
            }
            continue;
        }
        if !keep_8bit && has_8bit(f.raw) {
            encode_field(f, out)?;
        } else {
            fold_long(f.raw, out);
        }
    }
    if add_mime && !fields.iter().any(|f| f.name == "mime-version") {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    if let Some(c) = new_cte
        && !cte_written
        && (c != "7bit" || fields.iter().any(|f| f.name == "content-transfer-encoding"))
    {
        out.extend_from_slice(format!("Content-Transfer-Encoding: {c}\r\n").as_bytes());
    }
    Ok(())
}

/// Copies a field, breaking lines over 998 characters at a space or tab
/// (a fold, RFC 5322 §2.2.3). A line with no such place is left whole.
fn fold_long(raw: &[u8], out: &mut Vec<u8>) {
    if !has_long_line(raw) {
        out.extend_from_slice(raw);
        return;
    }
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let mut rest = line;
        while line_len(rest) > MAX_LINE {
            match rest[1..MAX_LINE]
                .iter()
                .rposition(|&b| b == b' ' || b == b'\t')
            {
                Some(i) => {
                    out.extend_from_slice(&rest[..i + 1]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[i + 1..];
                }
                None => break,
            }
        }
        out.extend_from_slice(rest);
    }
}

/// RFC 2047-encodes a field with 8-bit octets: the whole value of an
/// unstructured field; in a field with addresses or MIME parameters, each
/// run of words, quoted string or comment that holds 8-bit octets. The
/// result is folded at white space (which unfolding undoes exactly).
fn encode_field(f: &Field, out: &mut Vec<u8>) -> Result<(), Error> {
    let colon = f.raw.iter().position(|&b| b == b':').unwrap_or(0);
    let name = &f.raw[..colon];
    let value = f.value();
    let value = trim(&value);
    let address = ADDRESS_FIELDS.contains(&f.name.as_str());
    let structured = address || f.name.starts_with("content-");
    let mut line = name.to_vec();
    line.extend_from_slice(b": ");
    if !structured {
        line.extend_from_slice(encoded_words(value).join(" ").as_bytes());
    } else {
        let tokens = tokenize(value);
        let mut k = 0;
        while k < tokens.len() {
            let (tok, kind) = &tokens[k];
            if !has_8bit(tok) {
                line.extend_from_slice(tok);
                k += 1;
                continue;
            }
            if tok.contains(&b'@') || tok.contains(&b'<') {
                return Err(Error::EightBitAddress(
                    String::from_utf8_lossy(name).into_owned(),
                ));
            }
            match kind {
                Tok::Quoted => {
                    let inner = tok.strip_prefix(b"\"").unwrap_or(tok);
                    let inner = unescape(inner.strip_suffix(b"\"").unwrap_or(inner));
                    let words = encoded_words(&inner).join(" ");
                    if address {
                        line.extend_from_slice(words.as_bytes());
                    } else {
                        // A MIME parameter keeps its quotes (the common
                        // practice that readers decode).
                        line.push(b'"');
                        line.extend_from_slice(words.as_bytes());
                        line.push(b'"');
                    }
                }
                Tok::Comment => {
                    let inner = tok.strip_prefix(b"(").unwrap_or(tok);
                    let inner = inner.strip_suffix(b")").unwrap_or(inner);
                    line.push(b'(');
                    line.extend_from_slice(encoded_words(inner).join(" ").as_bytes());
                    line.push(b')');
                }
                Tok::Word | Tok::Space => {
                    // Following 8-bit words and the spaces between join
                    // one run, so the decoded text keeps its spaces.
                    let mut run = tok.clone();
                    while k + 2 < tokens.len()
                        && tokens[k + 1].1 == Tok::Space
                        && tokens[k + 2].1 == Tok::Word
                        && has_8bit(&tokens[k + 2].0)
                        && !tokens[k + 2].0.contains(&b'@')
                        && !tokens[k + 2].0.contains(&b'<')
                    {
                        run.extend_from_slice(&tokens[k + 1].0);
                        run.extend_from_slice(&tokens[k + 2].0);
                        k += 2;
                    }
                    // Punctuation that ends the run stays outside.
                    let cut = run
                        .iter()
                        .rposition(|&b| !b",;:".contains(&b))
                        .map_or(0, |i| i + 1);
                    line.extend_from_slice(encoded_words(&run[..cut]).join(" ").as_bytes());
                    line.extend_from_slice(&run[cut..]);
                }
            }
            k += 1;
        }
    }
    fold(&line, out);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Writes one unfolded field line, folded before white space so that lines
/// stay within 76 characters where the text allows.
fn fold(line: &[u8], out: &mut Vec<u8>) {
    let mut col = 0;
    let mut rest = line;
    while !rest.is_empty() {
        // The next piece: up to (not including) the white space after the
        // next word.
        let skip = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        let word = rest[skip..]
            .iter()
            .position(|b| *b == b' ' || *b == b'\t')
            .map_or(rest.len(), |i| skip + i);
        let piece = &rest[..word];
        if col > 0 && skip > 0 && col + piece.len() > ENCODED_LINE {
            out.extend_from_slice(b"\r\n");
            col = 0;
        }
        out.extend_from_slice(piece);
        col += piece.len();
        rest = &rest[word..];
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Word,
    Quoted,
    Comment,
    Space,
}

/// Splits a structured value into words, quoted strings, comments (nested
/// ones whole) and runs of white space.
fn tokenize(v: &[u8]) -> Vec<(Vec<u8>, Tok)> {
    let mut out: Vec<(Vec<u8>, Tok)> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        let start = i;
        i += 1;
        let kind = match c {
            b' ' | b'\t' => {
                while i < v.len() && (v[i] == b' ' || v[i] == b'\t') {
                    i += 1;
                }
                Tok::Space
            }
            b'"' => {
                let mut esc = false;
                while i < v.len() {
                    let b = v[i];
                    i += 1;
                    if esc {
                        esc = false;
                    } else if b == b'\\' {
                        esc = true;
                    } else if b == b'"' {
                        break;
                    }
                }
                Tok::Quoted
            }
            b'(' => {
                let (mut depth, mut esc) = (1usize, false);
                while i < v.len() && depth > 0 {
                    let b = v[i];
                    i += 1;
                    if esc {
                        esc = false;
                    } else if b == b'\\' {
                        esc = true;
                    } else if b == b'(' {
                        depth += 1;
                    } else if b == b')' {
                        depth -= 1;
                    }
                }
                Tok::Comment
            }
            _ => {
                while i < v.len() && !b" \t\"(".contains(&v[i]) {
                    i += 1;
                }
                Tok::Word
            }
        };
        out.push((v[start..i].to_vec(), kind));
    }
    out
}

/// RFC 2047 encoded words (base64) for `text`, each at most 75 characters,
/// split between whole UTF-8 characters; `unknown-8bit` (RFC 1428) when the
/// octets are not UTF-8.
pub fn encoded_words(text: &[u8]) -> Vec<String> {
    let (charset, utf8) = match std::str::from_utf8(text) {
        Ok(_) => ("utf-8", true),
        Err(_) => ("unknown-8bit", false),
    };
    // 45 octets make 60 base64 characters; with `=?utf-8?B?` and `?=` the
    // word stays within 75 (RFC 2047 §2).
    let max = if utf8 { 45 } else { 39 };
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + max).min(text.len());
        if utf8 {
            while end > start + 1 && end < text.len() && (text[end] & 0xC0) == 0x80 {
                end -= 1;
            }
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&text[start..end]);
        words.push(format!("=?{charset}?B?{b64}?="));
        start = end;
    }
    if words.is_empty() {
        words.push(format!("=?{charset}?B??="));
    }
    words
}

/// Quoted-printable (RFC 2045 §6.7): CRLF line breaks stay hard breaks,
/// soft breaks keep each line within 76 characters.
pub fn qp_encode(content: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(content.len() + content.len() / 4 + 8);
    let mut lines = content.split(|&b| b == b'\n').peekable();
    while let Some(raw) = lines.next() {
        let last = lines.peek().is_none();
        // A CR that ends the line is the line break; any other is data.
        let (line, crlf) = match raw.strip_suffix(b"\r") {
            Some(l) if !last => (l, true),
            _ => (raw, false),
        };
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let at_end = i + 1 == line.len();
            let literal =
                (b == b' ' || b == b'\t') && !at_end || (33..=126).contains(&b) && b != b'=';
            let width = if literal { 1 } else { 3 };
            // Room for the soft break's `=` unless this is the line's end.
            let limit = if at_end {
                ENCODED_LINE
            } else {
                ENCODED_LINE - 1
            };
            if col + width > limit {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(&[b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
            }
            col += width;
        }
        if !last {
            if crlf {
                out.extend_from_slice(b"\r\n");
            } else {
                // A bare LF is data in the canonical form.
                out.extend_from_slice(b"=0A=\r\n");
            }
        }
    }
    out
}

/// Decodes quoted-printable leniently (RFC 2045 §6.7, note 1): a malformed
/// `=` is kept as it is.
pub fn qp_decode(content: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(content.len());
    let mut lines = content.split(|&b| b == b'\n').peekable();
    while let Some(raw) = lines.next() {
        let last = lines.peek().is_none();
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        // Trailing white space was added in transport (rule 3).
        let line = &line[..line
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |i| i + 1)];
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(l) => (l, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'='
                && let (Some(h), Some(l)) = (
                    line.get(i + 1).and_then(|&c| hex(c)),
                    line.get(i + 2).and_then(|&c| hex(c)),
                )
            {
                out.push(h << 4 | l);
                i += 3;
            } else {
                out.push(line[i]);
                i += 1;
            }
        }
        if !soft && !last {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Base64 in lines of 76 characters, CRLF between them (none after the last).
pub fn base64_encode(content: &[u8]) -> Vec<u8> {
    wrap(
        base64::engine::general_purpose::STANDARD
            .encode(content)
            .as_bytes(),
    )
}

/// Re-wraps base64 text at 76 characters; octets outside the alphabet
/// (which decoders ignore, RFC 2045 §6.8) are dropped.
fn rewrap_base64(content: &[u8]) -> Vec<u8> {
    let clean: Vec<u8> = content
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/' || *b == b'=')
        .collect();
    wrap(&clean)
}

fn wrap(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / ENCODED_LINE * 2 + 2);
    for (k, chunk) in text.chunks(ENCODED_LINE).enumerate() {
        if k > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    fn all_lines_short_and_7bit(m: &[u8]) {
        assert!(m.is_ascii(), "8-bit left in {}", String::from_utf8_lossy(m));
        assert!(!has_long_line(m));
    }

    #[test]
    fn plain_8bit_message_becomes_quoted_printable() {
        let m = "Subject: Gr\u{fc}\u{df}e aus K\u{f6}ln\r\nFrom: J\u{f6}rg M\u{fc}ller <j@x.test>\r\n\r\nGr\u{fc}\u{df}e = 100%\r\nline two \r\n".as_bytes();
        let d = downgrade(m, false).expect("converts");
        all_lines_short_and_7bit(&d);
        let p = MessageParser::default().parse(&d).expect("parses");
        assert_eq!(p.subject(), Some("Gr\u{fc}\u{df}e aus K\u{f6}ln"));
        let from = p.from().and_then(|f| f.first()).expect("from");
        assert_eq!(from.name(), Some("J\u{f6}rg M\u{fc}ller"));
        assert_eq!(from.address(), Some("j@x.test"));
        assert_eq!(
            p.body_text(0).as_deref(),
            Some("Gr\u{fc}\u{df}e = 100%\r\nline two \r\n")
        );
    }

    #[test]
    fn multipart_parts_are_converted_one_by_one() {
        let bin: Vec<u8> = (0u8..=255).collect();
        let mut m = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npre\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
        m.extend_from_slice("caf\u{e9}\r\n".as_bytes());
        m.extend_from_slice(b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n");
        m.extend_from_slice(&bin);
        m.extend_from_slice(b"\r\n--b1\r\nContent-Type: text/plain\r\n\r\n");
        let long = "x".repeat(3000);
        m.extend_from_slice(long.as_bytes());
        m.extend_from_slice(b"\r\n--b1--\r\nepilogue\r\n");
        let d = downgrade(&m, false).expect("converts");
        all_lines_short_and_7bit(&d);
        let p = MessageParser::default().parse(&d).expect("parses");
        let leaves: Vec<_> = p
            .parts
            .iter()
            .filter(|x| x.content_type().is_some_and(|c| c.ctype() != "multipart"))
            .collect();
        assert_eq!(leaves.len(), 3);
        assert_eq!(leaves[0].contents(), "caf\u{e9}".as_bytes());
        assert_eq!(leaves[1].contents(), &bin[..]);
        assert_eq!(leaves[2].contents(), long.as_bytes());
    }

    #[test]
    fn long_lines_only_are_reencoded_with_8bit_kept() {
        let mut m = "Subject: caf\u{e9}\r\n\r\n".as_bytes().to_vec();
        m.extend_from_slice("\u{e9}".repeat(600).as_bytes());
        m.extend_from_slice(b"\r\n");
        let d = downgrade(&m, true).expect("converts");
        assert!(!has_long_line(&d));
        assert!(String::from_utf8_lossy(&d).starts_with("Subject: caf\u{e9}\r\n"));
        let p = MessageParser::default().parse(&d).expect("parses");
        assert_eq!(p.body_text(0).as_deref().map(str::len), Some(1202));
    }

    #[test]
    fn an_8bit_address_cannot_be_encoded() {
        let m = "To: j\u{f6}rg@x.test\r\n\r\nhi\r\n".as_bytes();
        assert!(matches!(
            downgrade(m, false),
            Err(Error::EightBitAddress(_))
        ));
    }

    #[test]
    fn quoted_printable_round_trips() {
        for s in [
            &b"a = b\r\n \t \r\nend"[..],
            b"\xff\x00\r\r\n.\r\n",
            b"trailing space \r\n",
            &[b'y'; 500],
        ] {
            let e = qp_encode(s);
            assert!(e.is_ascii() && !e.split(|&b| b == b'\n').any(|l| l.len() > 77));
            assert_eq!(qp_decode(&e), s, "{}", String::from_utf8_lossy(&e));
        }
    }

    /// The decoded octets of every leaf part, as mail-parser reads them.
    fn leaves(m: &[u8]) -> Vec<Vec<u8>> {
        let p = MessageParser::default().parse(m).expect("parses");
        p.parts
            .iter()
            .filter(|x| {
                !matches!(
                    x.body,
                    mail_parser::PartType::Multipart(_) | mail_parser::PartType::Message(_)
                )
            })
            .map(|x| x.contents().to_vec())
            .collect()
    }

    /// A body line from pieces: 8-bit text, ASCII, `=`, spaces, long runs.
    fn body_strategy() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        proptest::collection::vec(
            prop_oneof![
                Just("caf\u{e9} ".as_bytes().to_vec()),
                Just(b"plain words ".to_vec()),
                Just(b"= 100% =3D ".to_vec()),
                Just(b"trailing \r\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b".dot\r\n".to_vec()),
                Just(vec![b'x'; 1200]),
                Just(vec![0xE9, 0xFF, 0x80]),
            ],
            1..8,
        )
        .prop_map(|v| v.concat())
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_round_trip_through_quoted_printable(
            s in proptest::collection::vec(proptest::sample::select(vec![b'a', b' ', b'\t', b'\r', b'\n', b'=', 0xC3, 0xA9, 0, b'.']), 0..300)
        ) {
            let e = qp_encode(&s);
            proptest::prop_assert!(e.is_ascii());
            proptest::prop_assert_eq!(qp_decode(&e), s);
        }

        #[test]
        fn converted_parts_decode_to_the_original_octets(
            bodies in proptest::collection::vec((body_strategy(), 0u8..3), 1..4),
            keep_8bit in proptest::bool::ANY,
        ) {
            let mut m = b"Subject: t\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"o\"\r\n\r\n".to_vec();
            for (body, kind) in &bodies {
                m.extend_from_slice(b"--o\r\n");
                match kind {
                    0 => m.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"),
                    1 => m.extend_from_slice(b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"),
                    _ => m.extend_from_slice(b"Content-Type: multipart/alternative; boundary=\"i\"\r\n\r\n--i\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"),
                }
                m.extend_from_slice(body);
                if *kind == 2 {
                    m.extend_from_slice(b"\r\n--i\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>");
                    m.extend_from_slice(body);
                    m.extend_from_slice(b"</p>\r\n--i--");
                }
                m.extend_from_slice(b"\r\n");
            }
            m.extend_from_slice(b"--o--\r\n");
            let d = downgrade(&m, keep_8bit).expect("converts");
            proptest::prop_assert!(!has_long_line(&d));
            if !keep_8bit {
                proptest::prop_assert!(d.is_ascii());
            }
            let expected = bodies.iter().map(|(_, k)| if *k == 2 { 2 } else { 1 }).sum::<usize>();
            proptest::prop_assert_eq!(leaves(&m).len(), expected);
            proptest::prop_assert_eq!(leaves(&d), leaves(&m));
        }

        #[test]
        fn downgrade_never_panics_and_leaves_no_long_line(
            s in proptest::collection::vec(proptest::sample::select(vec![b'a', b' ', b'\r', b'\n', b':', b'-', b'"', b'(', 0xE9, b'=']), 0..2500)
        ) {
            if let Ok(d) = downgrade(&s, false) {
                proptest::prop_assert!(d.is_ascii());
            }
        }
    }
}
