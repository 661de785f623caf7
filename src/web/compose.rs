//! The messages the webmail writes: the compose form's fields made into
//! an RFC 5322 / MIME message (text in UTF-8, quoted-printable where it
//! needs it; attachments in base64 with RFC 2231 file names; non-ASCII
//! header text as RFC 2047 words), and the address lists users type.

use crate::mime::downgrade::{base64_encode, encoded_words, qp_encode};

/// An uploaded file.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The file name the browser gave (only ever put in a MIME parameter).
    pub name: String,
    /// Its type as the browser gave it (`application/octet-stream` if none).
    pub content_type: String,
    /// The octets.
    pub content: Vec<u8>,
}

/// What the compose form holds.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// The sender's address (one of the user's).
    pub from: String,
    /// Recipients, bare addresses.
    pub to: Vec<String>,
    /// Copies.
    pub cc: Vec<String>,
    /// Blind copies: envelope only, never in the header.
    pub bcc: Vec<String>,
    /// Subject, UTF-8.
    pub subject: String,
    /// The text, UTF-8.
    pub body: String,
    /// The message this replies to (`Message-ID` without brackets).
    pub in_reply_to: Option<String>,
    /// Its references and its own id.
    pub references: Vec<String>,
    /// Files attached.
    pub attachments: Vec<Upload>,
}

/// Splits an address field (`a@x, "B" <b@y>; c@z`) into bare addresses;
/// `Err` names the first entry that is not an address.
pub fn addresses(field: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for entry in split_entries(field) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let addr = match (entry.rfind('<'), entry.rfind('>')) {
            (Some(a), Some(b)) if a < b => entry[a + 1..b].trim(),
            _ => entry,
        };
        let valid = addr.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty()
                && !d.is_empty()
                && d.contains('.')
                && !addr.chars().any(|c| c.is_whitespace() || c.is_control())
                && !d.contains('@')
                && addr.len() <= 254
        });
        if !valid {
            return Err(entry.to_string());
        }
        out.push(addr.to_string());
    }
    Ok(out)
}

/// Entries separated by `,` or `;` outside quotes.
fn split_entries(field: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in field.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' | ';' if !quoted => {
                out.push(&field[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&field[start..]);
    out
}

/// Header text: as is when printable ASCII, else RFC 2047 words.
fn header_text(text: &str) -> String {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        text.to_string()
    } else {
        encoded_words(text.as_bytes()).join("\r\n ")
    }
}

/// A MIME parameter holding a file name. Plain ASCII goes as it is;
/// anything else as RFC 2231 `filename*=UTF-8''…` in Content-Disposition
/// and as an RFC 2047 word in Content-Type's `name` (what old readers
/// understand; both forms are what Thunderbird writes).
fn file_param(param: &str, name: &str) -> String {
    let name: String = name
        .chars()
        .filter(|c| !c.is_control() && *c != '/' && *c != '\\')
        .collect();
    if name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"') {
        return format!("{param}=\"{name}\"");
    }
    if param == "name" {
        return format!("name=\"{}\"", encoded_words(name.as_bytes()).join(" "));
    }
    let mut enc = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{param}*=UTF-8''{enc}")
}

/// Text with CRLF line ends, and how it is sent.
fn text_part(body: &str) -> (Vec<u8>, &'static str) {
    let mut text = body.replace("\r\n", "\n").replace('\r', "\n");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let crlf = text.replace('\n', "\r\n").into_bytes();
    let plain = crlf.iter().all(|&b| b < 0x80 && b != 0)
        && crlf.split(|&b| b == b'\n').all(|l| l.len() <= 78);
    if plain {
        (crlf, "7bit")
    } else {
        (qp_encode(&crlf), "quoted-printable")
    }
}

/// The message, CRLF line ends. `message_id` is without brackets; the
/// header has no Bcc (blind copies are envelope recipients only).
pub fn build(d: &Draft, message_id: &str, date: &str) -> Vec<u8> {
    let mut h = String::new();
    h.push_str(&format!("From: {}\r\n", d.from));
    if !d.to.is_empty() {
        h.push_str(&format!("To: {}\r\n", d.to.join(",\r\n ")));
    }
    if !d.cc.is_empty() {
        h.push_str(&format!("Cc: {}\r\n", d.cc.join(",\r\n ")));
    }
    h.push_str(&format!("Subject: {}\r\n", header_text(&d.subject)));
    h.push_str(&format!("Date: {date}\r\n"));
    h.push_str(&format!("Message-ID: <{message_id}>\r\n"));
    if let Some(r) = &d.in_reply_to {
        h.push_str(&format!("In-Reply-To: <{r}>\r\n"));
    }
    if !d.references.is_empty() {
        let refs: Vec<String> = d.references.iter().map(|r| format!("<{r}>")).collect();
        h.push_str(&format!("References: {}\r\n", refs.join("\r\n ")));
    }
    h.push_str("MIME-Version: 1.0\r\nUser-Agent: petrel webmail\r\n");
    let (text, cte) = text_part(&d.body);
    let mut out = h.into_bytes();
    if d.attachments.is_empty() {
        out.extend_from_slice(
            format!(
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(&text);
        return out;
    }
    let boundary = format!("=_petrel_{}", &message_id.replace(['@', '.'], "_"));
    out.extend_from_slice(
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n").as_bytes(),
    );
    out.extend_from_slice(b"This is a multipart message in MIME format.\r\n");
    out.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(&text);
    for a in &d.attachments {
        let ct = if a.content_type.contains('/')
            && a.content_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/.+-_".contains(&b))
        {
            a.content_type.to_ascii_lowercase()
        } else {
            "application/octet-stream".into()
        };
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: {ct}; {}\r\nContent-Disposition: attachment; {}\r\nContent-Transfer-Encoding: base64\r\n\r\n",
                file_param("name", &a.name),
                file_param("filename", &a.name),
            )
            .as_bytes(),
        );
        out.extend_from_slice(&base64_encode(&a.content));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    #[test]
    fn address_fields_split_and_bad_entries_are_named() {
        assert_eq!(
            addresses(r#"a@x.test, "Doe, Jane" <jane@y.test>; c@z.test"#).unwrap(),
            vec!["a@x.test", "jane@y.test", "c@z.test"]
        );
        assert_eq!(addresses(" , ").unwrap(), Vec::<String>::new());
        assert_eq!(addresses("a@x.test, nobody").unwrap_err(), "nobody");
        assert_eq!(addresses("a b@x.test").unwrap_err(), "a b@x.test");
    }

    #[test]
    fn a_built_message_reads_back_with_its_parts_and_names() {
        let d = Draft {
            from: "alice@example.test".into(),
            to: vec!["bob@example.test".into()],
            cc: vec!["carol@remote.test".into()],
            bcc: vec!["dave@remote.test".into()],
            subject: "Grüße aus Köln".into(),
            body: "Hallo,\nein Gruß.\n".into(),
            in_reply_to: Some("x@y".into()),
            references: vec!["w@y".into(), "x@y".into()],
            attachments: vec![Upload {
                name: "Bericht €.bin".into(),
                content_type: "application/x-thing".into(),
                content: (0u8..=255).collect(),
            }],
        };
        let raw = build(&d, "id1@petrel.test", "Thu, 03 Dec 2026 12:00:00 +0000");
        assert!(!String::from_utf8_lossy(&raw).contains("dave@"));
        assert!(raw.iter().all(|&b| b < 0x80), "7-bit on the wire");
        let m = MessageParser::default().parse(&raw).unwrap();
        assert_eq!(m.subject(), Some("Grüße aus Köln"));
        assert_eq!(
            m.body_text(0).unwrap().replace("\r\n", "\n").trim_end(),
            "Hallo,\nein Gruß."
        );
        let a = m.attachments().next().unwrap();
        assert_eq!(a.attachment_name(), Some("Bericht €.bin"));
        assert_eq!(a.contents(), (0u8..=255).collect::<Vec<_>>().as_slice());
        assert_eq!(m.in_reply_to().as_text(), Some("x@y"));
    }
}
