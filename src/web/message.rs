//! A stored message as the webmail shows it: the header fields a reader
//! wants, the body (text as text; HTML sanitised by `ammonia`: no scripts,
//! no event handlers, no forms, no styles; remote images left out until
//! the reader asks; links without referrer), and the attachments with
//! their decoded names (RFC 2231 / RFC 2047, as mail-parser decodes them).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mail_parser::{Addr, Address, Message, MessageParser, MimeHeaders, PartType};

/// What the reading page shows.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// `Subject:`, decoded.
    pub subject: String,
    /// `From:`, as `Name <address>` lines.
    pub from: String,
    /// `To:`.
    pub to: String,
    /// `Cc:`.
    pub cc: String,
    /// `Date:` as written (RFC 5322 form).
    pub date: String,
    /// `Message-ID:` without brackets.
    pub message_id: Option<String>,
    /// `References:` and the message's own id: what a reply refers to.
    pub references: Vec<String>,
    /// The addresses of `Reply-To:` (else `From:`), for a reply.
    pub reply_to: Vec<String>,
    /// Every address of `To:` and `Cc:`, for reply-all.
    pub all_recipients: Vec<String>,
    /// The body.
    pub body: Body,
    /// Remote images (and other remote sources) left out of the HTML.
    pub blocked: usize,
    /// Attachments, in order.
    pub attachments: Vec<Attachment>,
}

/// A body as shown.
#[derive(Debug, Clone)]
pub enum Body {
    /// Plain text (escaped by the template).
    Text(String),
    /// HTML, already sanitised.
    Html(String),
}

impl Default for Body {
    fn default() -> Body {
        Body::Text(String::new())
    }
}

/// One attachment in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its number in the message's attachment list.
    pub index: usize,
    /// The decoded file name, or a made-up one.
    pub name: String,
    /// `type/subtype`.
    pub content_type: String,
    /// Decoded size in octets.
    pub size: usize,
}

/// How to turn `cid:` references into URLs of this server.
pub struct Links {
    /// The URL prefix to which the Content-ID is appended (percent-encoded).
    pub cid_prefix: String,
    /// Whether remote images may load.
    pub remote: bool,
}

/// Parses a stored message for reading.
pub fn view(raw: &[u8], links: &Links) -> View {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return View {
            body: Body::Text(String::from_utf8_lossy(raw).into_owned()),
            ..View::default()
        };
    };
    let blocked = Arc::new(AtomicUsize::new(0));
    let html_part = msg
        .html_bodies()
        .next()
        .filter(|p| matches!(p.body, PartType::Html(_)));
    let text_part = msg
        .text_bodies()
        .next()
        .filter(|p| matches!(p.body, PartType::Text(_)));
    let body = match (html_part, text_part) {
        (Some(h), _) => Body::Html(sanitize(
            h.text_contents().unwrap_or(""),
            links,
            blocked.clone(),
        )),
        (None, Some(t)) => Body::Text(t.text_contents().unwrap_or("").to_string()),
        (None, None) => Body::Text(msg.body_text(0).map(Cow::into_owned).unwrap_or_default()),
    };
    let message_id = msg.message_id().map(str::to_string);
    let refs = msg.references();
    let mut references: Vec<String> = match refs.as_text_list() {
        Some(l) => l.iter().map(|s| s.to_string()).collect(),
        None => refs
            .as_text()
            .map(|s| vec![s.to_string()])
            .unwrap_or_default(),
    };
    if let Some(id) = &message_id {
        references.push(id.clone());
    }
    let reply_to = addresses(msg.reply_to().or(msg.from()));
    let mut all_recipients = addresses(msg.to());
    all_recipients.extend(addresses(msg.cc()));
    let blocked_count = blocked.load(Ordering::Relaxed);
    View {
        subject: msg.subject().unwrap_or("").to_string(),
        from: shown(msg.from()),
        to: shown(msg.to()),
        cc: shown(msg.cc()),
        date: msg.date().map(|d| d.to_rfc822()).unwrap_or_default(),
        message_id,
        references,
        reply_to,
        all_recipients,
        body,
        blocked: blocked_count,
        attachments: attachments(&msg),
    }
}

/// The attachment list of a parsed message.
fn attachments(msg: &Message<'_>) -> Vec<Attachment> {
    msg.attachments()
        .enumerate()
        .map(|(index, p)| {
            let content_type = p
                .content_type()
                .map(|c| match c.subtype() {
                    Some(s) => format!("{}/{}", c.ctype(), s),
                    None => c.ctype().to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".into())
                .to_ascii_lowercase();
            let name = p.attachment_name().map(str::to_string).unwrap_or_else(|| {
                if p.is_message() {
                    format!("message-{}.eml", index + 1)
                } else {
                    format!("attachment-{}", index + 1)
                }
            });
            Attachment {
                index,
                name,
                content_type,
                size: p.len(),
            }
        })
        .collect()
}

/// One attachment's decoded octets and its description.
pub fn attachment(raw: &[u8], index: usize) -> Option<(Attachment, Vec<u8>)> {
    let msg = MessageParser::default().parse(raw)?;
    let info = attachments(&msg).into_iter().nth(index)?;
    let part = msg.attachments().nth(index)?;
    Some((info, part.contents().to_vec()))
}

/// The decoded octets and type of the part whose Content-ID is `cid`
/// (an inline image of an HTML body).
pub fn by_content_id(raw: &[u8], cid: &str) -> Option<(String, Vec<u8>)> {
    let msg = MessageParser::default().parse(raw)?;
    let want = cid.trim_matches(|c| c == '<' || c == '>');
    let part = msg.parts.iter().find(|p| {
        p.content_id()
            .is_some_and(|id| id.trim_matches(|c| c == '<' || c == '>') == want)
    })?;
    let ct = part
        .content_type()
        .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
        .unwrap_or_default()
        .to_ascii_lowercase();
    Some((ct, part.contents().to_vec()))
}

/// `Name <address>, …` of an address header.
fn shown(a: Option<&Address<'_>>) -> String {
    let Some(a) = a else {
        return String::new();
    };
    a.iter().map(one).collect::<Vec<_>>().join(", ")
}

fn one(a: &Addr<'_>) -> String {
    match (a.name(), a.address()) {
        (Some(n), Some(addr)) => format!("{n} <{addr}>"),
        (None, Some(addr)) => addr.to_string(),
        (Some(n), None) => n.to_string(),
        (None, None) => String::new(),
    }
}

/// The bare addresses of an address header.
fn addresses(a: Option<&Address<'_>>) -> Vec<String> {
    a.map(|a| {
        a.iter()
            .filter_map(|x| x.address().map(str::to_string))
            .collect()
    })
    .unwrap_or_default()
}

/// HTML mail made safe to put in a page: ammonia's allow-list (no
/// `script`, `style`, `form`, `iframe`, no `on*` or `style` attributes, no
/// `javascript:` URLs), links opened in a new tab without referrer,
/// `cid:` images served from this server, remote images dropped unless
/// `links.remote` (each dropped one counted in `blocked`).
pub fn sanitize(html: &str, links: &Links, blocked: Arc<AtomicUsize>) -> String {
    let cid_prefix = links.cid_prefix.clone();
    let remote = links.remote;
    let mut b = ammonia::Builder::default();
    b.add_url_schemes(["cid"])
        .link_rel(Some("noopener noreferrer"))
        .set_tag_attribute_value("a", "target", "_blank")
        .attribute_filter(move |element, attribute, value| {
            let is_source = matches!(
                (element, attribute),
                ("img", "src") | ("img", "srcset") | (_, "background") | (_, "poster")
            );
            if !is_source {
                return Some(value.into());
            }
            let v = value.trim();
            if let Some(cid) = v.strip_prefix("cid:") {
                return Some(Cow::Owned(format!("{cid_prefix}{}", encode(cid))));
            }
            if remote && (v.starts_with("https://") || v.starts_with("http://")) {
                return Some(value.into());
            }
            blocked.fetch_add(1, Ordering::Relaxed);
            None
        });
    b.clean(html).to_string()
}

/// Percent-encoding for a URL query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(remote: bool) -> Links {
        Links {
            cid_prefix: "/inline?f=INBOX&uid=1&cid=".into(),
            remote,
        }
    }

    #[test]
    fn scripts_handlers_forms_and_remote_images_are_removed() {
        let n = Arc::new(AtomicUsize::new(0));
        let out = sanitize(
            r#"<p onclick="x()">Hi<script>alert(1)</script></p>
               <img src="https://tracker.example/p.gif"><img src="cid:logo@x">
               <form action="/steal"><input name=a></form>
               <a href="javascript:alert(1)">j</a><a href="https://ok.example/">ok</a>
               <style>body{}</style><iframe src="https://x"></iframe>"#,
            &links(false),
            n.clone(),
        );
        assert!(!out.contains("script"), "{out}");
        assert!(!out.contains("onclick"), "{out}");
        assert!(!out.contains("form") && !out.contains("input"), "{out}");
        assert!(!out.contains("tracker.example"), "{out}");
        assert!(!out.contains("javascript"), "{out}");
        assert!(!out.contains("iframe") && !out.contains("style"), "{out}");
        assert!(
            out.contains(r#"src="/inline?f=INBOX&amp;uid=1&amp;cid=logo%40x""#),
            "{out}"
        );
        assert!(out.contains("noreferrer"), "{out}");
        assert_eq!(n.load(Ordering::Relaxed), 1);
        let shown = sanitize(
            r#"<img src="https://tracker.example/p.gif">"#,
            &links(true),
            Arc::new(AtomicUsize::new(0)),
        );
        assert!(shown.contains("tracker.example"), "{shown}");
    }

    #[test]
    fn attachment_names_are_decoded() {
        let raw = b"From: a@example.test\r\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20rate.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n--b--\r\n";
        let v = view(raw, &links(false));
        assert_eq!(v.subject, "Grüße");
        assert!(matches!(&v.body, Body::Text(t) if t.trim() == "hello"));
        assert_eq!(v.attachments.len(), 1);
        assert_eq!(v.attachments[0].name, "€ rate.pdf");
        assert_eq!(v.attachments[0].content_type, "application/pdf");
        // RFC 2047 words in the name, as older mailers write it.
        let old_style = b"From: a@example.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream; name=\"=?UTF-8?B?w4RyZ2VyLnR4dA==?=\"\r\n\
Content-Disposition: attachment\r\n\r\nx\r\n--b--\r\n";
        assert_eq!(
            view(old_style, &links(false)).attachments[0].name,
            "Ärger.txt"
        );
        let (_, bytes) = attachment(raw, 0).unwrap();
        assert_eq!(bytes, vec![0, 1, 2, 255]);
        assert!(attachment(raw, 1).is_none());
    }
}
