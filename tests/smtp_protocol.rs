//! ESMTP behaviour of the real daemon (RFC 5321): replies in every state,
//! extensions, limits, and the DATA framing rules.

mod common;

use std::time::Duration;

use common::{Smtp, TestServer, queued_id};

#[test]
fn greeting_and_ehlo_advertise_the_extensions() {
    let server = TestServer::start("");
    let (mut s, greeting) = Smtp::connect(server.mx());
    assert_eq!(greeting.0, 220);
    assert!(
        greeting.1.starts_with("mx.example.test ESMTP"),
        "{greeting:?}"
    );
    let (code, text) = s.cmd("EHLO client.test");
    assert_eq!(code, 250);
    for ext in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(text.lines().any(|l| l == ext), "{ext} missing in {text}");
    }
    assert_eq!(s.cmd("HELO client.test"), (250, "mx.example.test\n".into()));
    assert_eq!(s.cmd("QUIT").0, 221);
}

#[test]
fn commands_out_of_sequence_get_503() {
    let server = TestServer::start("");
    let (mut s, _) = Smtp::connect(server.mx());
    assert_eq!(
        s.cmd("MAIL FROM:<a@example.test>").0,
        503,
        "MAIL before EHLO"
    );
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    assert_eq!(
        s.cmd("RCPT TO:<alice@example.test>").0,
        503,
        "RCPT before MAIL"
    );
    assert_eq!(s.cmd("DATA").0, 503, "DATA before MAIL");
    assert_eq!(s.cmd("MAIL FROM:<a@example.test>").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<a@example.test>").0, 503, "nested MAIL");
    assert_eq!(s.cmd("DATA").0, 503, "DATA before RCPT");
    assert_eq!(s.cmd("RSET").0, 250);
    assert_eq!(
        s.cmd("RCPT TO:<alice@example.test>").0,
        503,
        "RSET ends the transaction"
    );
}

#[test]
fn helpers_answer_without_revealing_users() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("VRFY alice").0, 252);
    assert_eq!(s.cmd("VRFY nobody").0, 252);
    assert_eq!(s.cmd("EXPN team").0, 502);
    assert_eq!(s.cmd("HELP").0, 214);
    assert_eq!(s.cmd("NOOP").0, 250);
    assert_eq!(s.cmd("BDAT 10 LAST").0, 502);
    assert_eq!(s.cmd("FROB").0, 500);
    assert_eq!(s.cmd("MAIL TO:<x@y.test>").0, 501);
    assert_eq!(s.cmd("MAIL FROM:<a@example.test> FOO=BAR").0, 555);
}

#[test]
fn malformed_addresses_get_501_and_non_ascii_needs_smtputf8() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:a@example.test").0, 501, "missing brackets");
    assert_eq!(s.cmd("MAIL FROM:<a@@example.test>").0, 501);
    assert_eq!(s.cmd("MAIL FROM:<jörg@example.test>").0, 553);
    assert_eq!(s.cmd("MAIL FROM:<jörg@example.test> SMTPUTF8").0, 250);
    assert_eq!(
        s.cmd("RCPT TO:<\"alice@example.test>").0,
        501,
        "unbalanced quote"
    );
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>>").0, 501);
}

#[test]
fn null_sender_is_accepted_and_delivered() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    let r = s.send_mail(
        "",
        &["alice@example.test"],
        "Subject: bounce\r\n\r\nreport\r\n",
    );
    queued_id(&r);
    let m = server.wait_mailbox("alice", 1, Duration::from_secs(10));
    assert_eq!(m.len(), 1);
    let content = server.mailbox_message("alice", 1);
    assert!(
        content.starts_with(b"Return-Path: <>\r\n"),
        "{}",
        String::from_utf8_lossy(&content)
    );
}

#[test]
fn dot_stuffing_is_undone_and_received_is_prepended() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    let r = s.send_mail(
        "carol@partner.test",
        &["bob@example.test"],
        "Subject: dots\r\nMessage-ID: <dots@test>\r\n\r\n..leading dot\r\n..\r\nend",
    );
    let id = queued_id(&r);
    server.wait_mailbox("bob", 1, Duration::from_secs(10));
    let content = String::from_utf8(server.mailbox_message("bob", 1)).expect("utf-8");
    assert!(
        content.ends_with("\r\n\r\n.leading dot\r\n.\r\nend\r\n"),
        "{content:?}"
    );
    let received = content.lines().nth(2).expect("Received line");
    assert_eq!(received, "Received: from client.test (unknown [127.0.0.1])");
    assert!(
        content.contains(&format!("with ESMTP id {id}")),
        "{content}"
    );
    assert!(content.contains("Delivered-To: bob@example.test\r\n"));
}

#[test]
fn bare_lf_in_data_is_refused_and_never_ends_the_data() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<carol@partner.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    // A smuggling attempt: "\n.\n" and "\n.\r\n" followed by a second
    // transaction. Neither may end the data, and the smuggled commands must
    // not be executed.
    s.send_raw(b"Subject: smuggle\r\n\r\nhello\n.\nMAIL FROM:<evil@partner.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nsmuggled\n.\r\nstill data\r\n.\r\n");
    let r = s.reply();
    assert!((500..600).contains(&r.0), "bare LF must be refused: {r:?}");
    assert_eq!(s.cmd("NOOP").0, 250, "the session continues in step");
    // A barrier: a legitimate message after the attempt. Anything the
    // attempt had queued would be delivered before it is.
    queued_id(&s.send_mail(
        "carol@partner.test",
        &["alice@example.test"],
        "Subject: after\r\n\r\nlegit\r\n",
    ));
    server.wait_mailbox("alice", 1, Duration::from_secs(10));
    server.wait_queue_empty(Duration::from_secs(10));
    let alice = server.mailbox("alice");
    assert_eq!(alice.len(), 1, "only the legitimate message: {alice:?}");
    assert!(
        server.mailbox("bob").is_empty(),
        "smuggled message was delivered"
    );
}

#[test]
fn bare_cr_in_data_is_refused() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<carol@partner.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send_raw(b"Subject: cr\r\n\r\nhello\rworld\r\n.\r\n");
    let r = s.reply();
    assert!((500..600).contains(&r.0), "{r:?}");
    assert!(server.mailbox("alice").is_empty());
}

#[test]
fn bare_lf_command_is_refused_not_executed() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    // A bare LF does not end a command line: the line runs to the next
    // CRLF and is refused as a whole, with one reply.
    s.send_raw(b"MAIL FROM:<a@partner.test>\n");
    s.send_raw(b"RCPT TO:<alice@example.test>\r\n");
    assert_eq!(s.reply().0, 500);
    assert_eq!(
        s.cmd("RCPT TO:<alice@example.test>").0,
        503,
        "the bare-LF MAIL was not executed"
    );
}

#[test]
fn over_long_command_line_is_refused_whole() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    let long = format!("MAIL FROM:<{}@partner.test>", "a".repeat(600));
    assert_eq!(s.cmd(&long).0, 500);
    assert_eq!(
        s.cmd("RCPT TO:<alice@example.test>").0,
        503,
        "not truncated and executed"
    );
}

#[test]
fn size_limits_are_enforced_at_mail_and_after_data() {
    let server = TestServer::start("max_message_size = \"2KiB\"");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<a@partner.test> SIZE=999999").0, 552);
    let body = format!("Subject: big\r\n\r\n{}", "0123456789abcdef\r\n".repeat(200));
    let r = s.send_mail("a@partner.test", &["alice@example.test"], &body);
    assert_eq!(r.0, 552, "{r:?}");
    assert!(r.1.starts_with("5.3.4"));
    let r = s.send_mail(
        "a@partner.test",
        &["alice@example.test"],
        "Subject: small\r\n\r\nok\r\n",
    );
    queued_id(&r);
}

#[test]
fn too_many_recipients_get_452() {
    let server = TestServer::start("max_recipients = 2");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<a@partner.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<bob@example.test>").0, 250);
    let r = s.cmd("RCPT TO:<support@example.test>");
    assert_eq!(r.0, 452);
    assert!(r.1.starts_with("4.5.3"));
}

#[test]
fn repeated_errors_disconnect() {
    let server = TestServer::start("max_errors = 3");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("FOO").0, 500);
    assert_eq!(s.cmd("BAR").0, 500);
    let (code, _) = s.cmd("BAZ");
    assert_eq!(code, 500);
    assert_eq!(s.reply().0, 421);
    assert!(s.is_closed());
}

#[test]
fn pipelined_transactions_are_answered_in_order() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    let mut batch = String::new();
    for i in 0..5 {
        batch.push_str(&format!(
            "MAIL FROM:<p{i}@partner.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n"
        ));
        batch.push_str(&format!(
            "Subject: {i}\r\nMessage-ID: <pipe{i}@test>\r\n\r\nbody {i}\r\n.\r\n"
        ));
    }
    batch.push_str("QUIT\r\n");
    s.send_raw(batch.as_bytes());
    for _ in 0..5 {
        assert_eq!(s.reply().0, 250);
        assert_eq!(s.reply().0, 250);
        assert_eq!(s.reply().0, 550);
        assert_eq!(s.reply().0, 354);
        queued_id(&s.reply());
    }
    assert_eq!(s.reply().0, 221);
    assert_eq!(
        server
            .wait_mailbox("alice", 5, Duration::from_secs(10))
            .len(),
        5
    );
}

#[test]
fn idle_clients_are_timed_out() {
    let server = TestServer::start("command_timeout = \"1s\"");
    let mut s = Smtp::ready(server.mx());
    let started = std::time::Instant::now();
    let r = s.reply();
    assert_eq!(r.0, 421, "{r:?}");
    common::assert_about(started.elapsed(), Duration::from_secs(1), "command_timeout");
    assert!(s.is_closed());
}

#[test]
fn sigterm_closes_idle_sessions_and_exits_zero() {
    let mut server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(server.stop(), Some(0));
    assert_eq!(s.reply().0, 421);
}
