//! Interop with a real Postfix (Debian's package) as the receiving peer:
//! petrel routes postfix.test to a private Postfix instance on loopback and
//! the message lands in its maildir byte for byte; a recipient Postfix
//! refuses comes back as a bounce. CI installs Postfix; elsewhere the test
//! says it was skipped unless CI is set, where a missing Postfix fails.

mod common;

use std::time::Duration;

use common::postfix::PostfixPeer;
use common::{Smtp, TestServer, queued_id};

#[test]
fn delivers_to_a_real_postfix_and_bounces_what_it_refuses() {
    let Some(peer) = PostfixPeer::start("") else {
        return;
    };
    let server = TestServer::start_with(
        "",
        &format!(
            "[smtp.outbound]\nport = {}\n[[smtp.outbound.routes]]\ndomain = \"postfix.test\"\nhost = \"[127.0.0.1]:{}\"",
            peer.port, peer.port
        ),
        peer.port,
    );
    // On the wire the leading dot is stuffed; in the mailbox it is single.
    let wire = "Subject: to postfix\r\nMessage-ID: <to-postfix@example.test>\r\n\r\n..dot line\r\nhello postfix\r\n";
    let mut s = Smtp::ready(server.mx());
    let id = queued_id(&s.send_mail(
        "alice@example.test",
        &["user@postfix.test", "reject@postfix.test"],
        wire,
    ));
    assert!(
        server.wait_log(
            &["delivery", &id, "to=<user@postfix.test>", "status=sent"],
            Duration::from_secs(20)
        ),
        "{}",
        server.log()
    );
    assert!(server.wait_log(
        &[
            "delivery",
            &id,
            "to=<reject@postfix.test>",
            "status=bounced",
            "dsn=5.1.1"
        ],
        Duration::from_secs(20)
    ));
    let files = peer.wait_maildir(1, Duration::from_secs(20));
    assert_eq!(files.len(), 1, "one message in Postfix's maildir");
    let got = String::from_utf8_lossy(&files[0]).replace("\r\n", "\n");
    // Postfix's cleanup adds the Date: and From: the message lacked.
    assert!(
        got.contains("\nSubject: to postfix\nMessage-ID: <to-postfix@example.test>\n"),
        "{got}"
    );
    // The test client ends DATA with CRLF . CRLF after a CRLF: one empty line.
    assert!(got.ends_with("\n\n.dot line\nhello postfix\n\n"), "{got}");
    assert!(got.contains("by mx.example.test (petrel)"), "{got}");
    let bounce = server.wait_mailbox("alice", 1, Duration::from_secs(10));
    assert_eq!(bounce.len(), 1);
    let raw = String::from_utf8_lossy(&server.mailbox_message("alice", 1)).into_owned();
    assert!(
        raw.contains("Final-Recipient: rfc822; reject@postfix.test"),
        "{raw}"
    );
    assert!(
        raw.contains("Diagnostic-Code: smtp; 550 5.1.1 <reject@postfix.test>: Recipient address rejected: no such user here"),
        "{raw}"
    );
}
