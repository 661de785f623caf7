//! Delivery status notifications (RFC 3464): failure reports (bounces),
//! delay notices and success notices, as `multipart/report;
//! report-type=delivery-status` messages from `<>`. This module only
//! composes; the scheduler queues the result like any message.

use std::fmt::Write as _;

use crate::headers;
use crate::spool::{QueuedMessage, Recipient, Ret};

/// The RFC 3464 Action of a report entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Could not be delivered; will not be retried.
    Failed,
    /// Not delivered yet; still being retried.
    Delayed,
    /// Delivered to a mailbox here.
    Delivered,
    /// Handed to a host that sends no notices of its own.
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

fn address_type(addr: &str) -> &'static str {
    if addr.is_ascii() { "rfc822" } else { "utf-8" }
}

fn rfc2822(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.with_timezone(&chrono::Local).to_rfc2822())
        .unwrap_or_default()
}

/// Composes the report for `entries` (all of one action) about `msg`,
/// addressed to its sender. `content` is the original message.
pub fn compose(
    hostname: &str,
    msg: &QueuedMessage,
    entries: &[&Recipient],
    action: Action,
    content: &[u8],
    now_ms: i64,
    will_retry_until: Option<i64>,
) -> Vec<u8> {
    let boundary = format!("{}.{}/{hostname}", msg.id, now_ms);
    let (subject, intro) = match action {
        Action::Failed => (
            "Undelivered Mail Returned to Sender",
            "I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. It's attached below.",
        ),
        Action::Delayed => (
            "Delayed Mail (still being retried)",
            "Your message could not be delivered yet to one or more recipients.\r\nIt will be retried; you need not send it again.",
        ),
        Action::Delivered | Action::Relayed => (
            "Successful Mail Delivery Report",
            "Your message was successfully delivered to the destination(s)\r\nlisted below.",
        ),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "From: MAILER-DAEMON@{hostname} (Mail Delivery System)\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{now_ms}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at host {hostname}.\r\n\
         \r\n\
         {intro}\r\n\
         \r\n",
        sender = msg.sender,
        date = rfc2822(now_ms),
        id = msg.id,
    );
    for r in entries {
        let why = r.last_error.as_deref().unwrap_or(match action {
            Action::Delivered => "delivered to mailbox",
            Action::Relayed => "relayed to a host that does not send notices",
            _ => "",
        });
        let _ = write!(out, "<{}>: {}\r\n", r.address, why);
    }
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Petrel-Queue-ID: {id}\r\n",
        id = msg.id
    );
    if let Some(envid) = &msg.envid {
        let _ = write!(out, "Original-Envelope-Id: {envid}\r\n");
    }
    let _ = write!(out, "Arrival-Date: {}\r\n", rfc2822(msg.arrival));
    for r in entries {
        let status = r.status.clone().unwrap_or_else(|| match action {
            Action::Failed => "5.0.0".into(),
            Action::Delayed => "4.0.0".into(),
            _ => "2.0.0".into(),
        });
        let _ = write!(
            out,
            "\r\nFinal-Recipient: {}; {}\r\n",
            address_type(&r.address),
            r.address
        );
        if let Some(o) = &r.orcpt {
            let _ = write!(out, "Original-Recipient: {}; {}\r\n", address_type(o), o);
        }
        let _ = write!(out, "Action: {}\r\nStatus: {status}\r\n", action.as_str());
        if let Some(m) = &r.remote_mta {
            let _ = write!(out, "Remote-MTA: dns; {m}\r\n");
        }
        if let Some(d) = &r.diagnostic {
            let _ = write!(out, "Diagnostic-Code: smtp; {d}\r\n");
        }
        if r.attempts > 0 {
            let _ = write!(out, "Last-Attempt-Date: {}\r\n", rfc2822(now_ms));
        }
        if let Some(until) = will_retry_until {
            let _ = write!(out, "Will-Retry-Until: {}\r\n", rfc2822(until));
        }
    }
    let full = action == Action::Failed && msg.ret == Some(Ret::Full);
    let mut bytes = out.into_bytes();
    if full {
        let _ = write!(
            &mut StringSink(&mut bytes),
            "\r\n--{boundary}\r\nContent-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n\r\n"
        );
        bytes.extend_from_slice(content);
        if !content.ends_with(b"\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
    } else {
        let _ = write!(
            &mut StringSink(&mut bytes),
            "\r\n--{boundary}\r\nContent-Description: Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        );
        bytes.extend_from_slice(headers::section(content));
    }
    let _ = write!(&mut StringSink(&mut bytes), "\r\n--{boundary}--\r\n");
    bytes
}

/// Lets `write!` append to a byte vector.
struct StringSink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for StringSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{QueueId, RcptState};
    use mail_parser::{MessageParser, MimeHeaders};

    fn message(ret: Option<Ret>) -> QueuedMessage {
        let mut r = Recipient::new("dave@partner.test".into(), Some("team@example.test".into()));
        r.state = RcptState::Bounced;
        r.attempts = 1;
        r.status = Some("5.1.1".into());
        r.remote_mta = Some("mx.partner.test".into());
        r.diagnostic = Some("550 5.1.1 no such user".into());
        r.last_error = Some("5.1.1 host mx.partner.test said: 550 5.1.1 no such user".into());
        QueuedMessage {
            id: QueueId(77),
            arrival: 1_700_000_000_000,
            sender: "alice@example.test".into(),
            size: 10,
            client: "x".into(),
            listener: "mx".into(),
            message_id: None,
            recipients: vec![r],
            held: false,
            envid: Some("ENV-1".into()),
            ret,
            body_8bit: false,
            smtputf8: false,
            warned: false,
            due: None,
            chunks: 1,
        }
    }

    #[test]
    fn failure_report_parses_back_field_by_field() {
        let msg = message(Some(Ret::Full));
        let original = b"Subject: hello\r\nMessage-ID: <m@x>\r\n\r\nbody text\r\n";
        let dsn = compose(
            "mx.example.test",
            &msg,
            &[&msg.recipients[0]],
            Action::Failed,
            original,
            1_700_000_100_000,
            None,
        );
        let parsed = MessageParser::default().parse(&dsn).expect("parses");
        assert_eq!(
            parsed.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        let ct = parsed.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let parts = &parsed.parts;
        let status = parts
            .iter()
            .find(|p| {
                p.content_type()
                    .is_some_and(|c| c.subtype() == Some("delivery-status"))
            })
            .expect("delivery-status part");
        let text = String::from_utf8_lossy(status.contents());
        for line in [
            "Reporting-MTA: dns; mx.example.test",
            "Original-Envelope-Id: ENV-1",
            "Final-Recipient: rfc822; dave@partner.test",
            "Original-Recipient: rfc822; team@example.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.partner.test",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
        assert!(
            String::from_utf8_lossy(&dsn).contains("body text"),
            "RET=FULL returns the body"
        );
    }

    #[test]
    fn without_ret_full_only_headers_return() {
        let msg = message(None);
        let original = b"Subject: hello\r\n\r\nsecret body\r\n";
        let dsn = compose(
            "mx.example.test",
            &msg,
            &[&msg.recipients[0]],
            Action::Failed,
            original,
            1,
            None,
        );
        let text = String::from_utf8_lossy(&dsn);
        assert!(text.contains("text/rfc822-headers"));
        assert!(text.contains("Subject: hello"));
        assert!(!text.contains("secret body"));
    }
}
