//! Outbound delivery against real SMTP peers on loopback, found through a
//! real DNS server: MX order and fallback, per-recipient outcomes, retries,
//! expiry and the bounce that follows (parsed back field by field), delay
//! notices, null and missing MX, TLS, connection reuse and DSN passthrough.

mod common;

use std::time::Duration;

use common::sink::{Sink, SinkOptions};
use common::{Smtp, TestServer, queued_id};
use mail_parser::{MessageParser, MimeHeaders};

const WAIT: Duration = Duration::from_secs(15);

/// Sinks for mx1 (127.0.0.2) and optionally mx2 (127.0.0.3) of
/// partner.test, on one port; returns the port too.
fn partner_sinks(mx1: bool, mx2: bool, opts: SinkOptions) -> (Option<Sink>, Option<Sink>, u16) {
    if !mx1 {
        // Nothing listens on mx1's address at this port.
        let second = Sink::start("127.0.0.3:0", opts);
        let port = second.addr.port();
        return (None, mx2.then_some(second), port);
    }
    let first = Sink::start("127.0.0.2:0", opts.clone());
    let port = first.addr.port();
    let second = mx2.then(|| Sink::start(&format!("127.0.0.3:{port}"), opts));
    (Some(first), second, port)
}

fn send(server: &TestServer, from: &str, to: &[&str], subject: &str) -> String {
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(from, to, &format!("Subject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n\r\nbody of {subject}\r\n")))
}

/// The delivery-status part of the newest report in alice's mailbox.
fn alice_report(server: &TestServer, n: usize) -> (String, String) {
    let list = server.wait_mailbox("alice", n, WAIT);
    assert!(list.len() >= n, "no report in alice's mailbox: {list:?}");
    let raw = server.mailbox_message("alice", list[n - 1]["uid"].as_u64().expect("uid"));
    let msg = MessageParser::default().parse(&raw).expect("report parses");
    let ct = msg.content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let status = msg
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.subtype() == Some("delivery-status"))
        })
        .expect("delivery-status part");
    let from = msg
        .from()
        .and_then(|f| f.first())
        .and_then(|a| a.address())
        .unwrap_or("")
        .to_string();
    assert!(from.starts_with("MAILER-DAEMON@"), "{from}");
    assert!(String::from_utf8_lossy(&raw).starts_with("Return-Path: <>\r\n"));
    (
        msg.subject().unwrap_or("").to_string(),
        String::from_utf8_lossy(status.contents()).into_owned(),
    )
}

#[test]
fn delivers_to_the_preferred_mx() {
    let (mx1, mx2, port) = partner_sinks(true, true, SinkOptions::default());
    let server = TestServer::start_with("", "", port);
    let id = send(
        &server,
        "alice@example.test",
        &["dave@partner.test"],
        "mx-order",
    );
    let got = mx1.as_ref().expect("mx1").wait(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, vec!["dave@partner.test"]);
    assert!(String::from_utf8_lossy(&got[0].data).contains("body of mx-order"));
    assert!(
        mx2.expect("mx2").received().is_empty(),
        "mx2 must not be used while mx1 works"
    );
    assert!(server.wait_log(
        &["delivery", &id, "status=sent", "relay=mx1.partner.test"],
        WAIT
    ));
    assert!(server.wait_log(&["removed", &id], WAIT));
}

#[test]
fn falls_back_to_the_next_mx_when_the_first_refuses() {
    let (_, mx2, port) = partner_sinks(false, true, SinkOptions::default());
    let server = TestServer::start_with("", "", port);
    send(
        &server,
        "alice@example.test",
        &["dave@partner.test"],
        "fallback",
    );
    assert_eq!(mx2.expect("mx2").wait(1, WAIT).len(), 1);
}

#[test]
fn falls_back_when_the_first_mx_greets_with_421() {
    let busy = Sink::start(
        "127.0.0.2:0",
        SinkOptions {
            greeting: Some(421),
            ..Default::default()
        },
    );
    let port = busy.addr.port();
    let mx2 = Sink::start(&format!("127.0.0.3:{port}"), SinkOptions::default());
    let server = TestServer::start_with("", "", port);
    send(
        &server,
        "alice@example.test",
        &["dave@partner.test"],
        "busy-greeting",
    );
    assert_eq!(mx2.wait(1, WAIT).len(), 1);
}

#[test]
fn per_recipient_outcomes_within_one_message() {
    let (mx1, _, port) = partner_sinks(true, false, SinkOptions::default());
    let server = TestServer::start_with(
        "",
        "[queue]\nretry_initial = \"1h\"\nretry_max = \"2h\"",
        port,
    );
    let id = send(
        &server,
        "alice@example.test",
        &[
            "ok@partner.test",
            "defer1@partner.test",
            "reject1@partner.test",
        ],
        "mixed",
    );
    let got = mx1.expect("mx1").wait(1, WAIT);
    assert_eq!(got[0].rcpts, vec!["ok@partner.test"]);
    assert!(server.wait_log(
        &[
            "delivery",
            &id,
            "to=<defer1@partner.test>",
            "status=deferred",
            "dsn=4.2.0"
        ],
        WAIT
    ));
    assert!(server.wait_log(
        &[
            "delivery",
            &id,
            "to=<reject1@partner.test>",
            "status=bounced",
            "dsn=5.1.1"
        ],
        WAIT
    ));
    // The bounce for reject1 is queued too until its local delivery to
    // alice is done: wait for the queue to hold only the deferred message.
    let deadline = std::time::Instant::now() + WAIT;
    let q = loop {
        let q = server.mailq();
        if q.len() == 1 || std::time::Instant::now() > deadline {
            break q;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(q.len(), 1, "{q:?}");
    let rcpts = q[0]["recipients"].as_array().expect("rcpts");
    assert_eq!(rcpts.len(), 1);
    assert_eq!(rcpts[0]["address"], "defer1@partner.test");
    assert!(
        rcpts[0]["delay_reason"]
            .as_str()
            .expect("reason")
            .contains("450 4.2.0 mailbox busy")
    );
    let (subject, status) = alice_report(&server, 1);
    assert_eq!(subject, "Undelivered Mail Returned to Sender");
    for line in [
        "Reporting-MTA: dns; mx.example.test",
        "Final-Recipient: rfc822; reject1@partner.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx1.partner.test",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user here",
    ] {
        assert!(status.contains(line), "{line} missing in:\n{status}");
    }
    assert!(
        !status.contains("ok@partner.test") && !status.contains("defer1@"),
        "{status}"
    );
}

#[test]
fn retries_on_schedule_then_expire_with_a_bounce() {
    let (_mx1, _, port) = partner_sinks(true, false, SinkOptions::default());
    let server = TestServer::start_with(
        "",
        "[queue]\nretry_initial = \"1s\"\nretry_max = \"1s\"\nlifetime = \"3s\"\nwarn_after = \"1h\"",
        port,
    );
    let id = send(
        &server,
        "alice@example.test",
        &["defer2@partner.test"],
        "expiry",
    );
    assert!(
        server.wait_log(&["delivery", &id, "status=expired"], WAIT),
        "{}",
        server.log()
    );
    let attempts = server
        .log()
        .lines()
        .filter(|l| l.contains(&id) && l.contains("status=deferred"))
        .count();
    assert!(
        attempts >= 2,
        "expected retries before expiry, saw {attempts}"
    );
    assert!(server.wait_log(&["removed", &id], WAIT));
    let (subject, status) = alice_report(&server, 1);
    assert_eq!(subject, "Undelivered Mail Returned to Sender");
    assert!(status.contains("Action: failed"), "{status}");
    assert!(status.contains("Status: 4.2.0"), "{status}");
    assert!(
        status.contains("Diagnostic-Code: smtp; 450 4.2.0 mailbox busy, try later"),
        "{status}"
    );
}

#[test]
fn delay_notice_is_sent_once() {
    let (_mx1, _, port) = partner_sinks(true, false, SinkOptions::default());
    let server = TestServer::start_with(
        "",
        "[queue]\nretry_initial = \"1s\"\nretry_max = \"1s\"\nlifetime = \"1h\"\nwarn_after = \"1s\"",
        port,
    );
    let id = send(
        &server,
        "alice@example.test",
        &["defer3@partner.test"],
        "delay",
    );
    let (subject, status) = alice_report(&server, 1);
    assert_eq!(subject, "Delayed Mail (still being retried)");
    assert!(status.contains("Action: delayed"), "{status}");
    assert!(status.contains("Will-Retry-Until: "), "{status}");
    // More attempts follow (wait for three more); no second notice.
    let deferred = || {
        server
            .log()
            .lines()
            .filter(|l| l.contains(&id) && l.contains("status=deferred"))
            .count()
    };
    let first = deferred();
    let deadline = std::time::Instant::now() + WAIT;
    while deferred() < first + 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(deferred() >= first + 3, "{}", deferred());
    // A notice is queued before the deferral it reports is applied: once
    // only the deferred message is queued, every notice has been delivered.
    let deadline = std::time::Instant::now() + WAIT;
    while server.mailq().len() > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.mailq().len(), 1, "{:?}", server.mailq());
    assert_eq!(server.mailbox("alice").len(), 1, "one delay notice only");
}

#[test]
fn dns_facts_decide_bounce_or_defer() {
    let nomx = Sink::start("127.0.0.4:0", SinkOptions::default());
    let server = TestServer::start_with(
        "",
        "[queue]\nretry_initial = \"1h\"\nretry_max = \"2h\"",
        nomx.addr.port(),
    );
    let null = send(&server, "alice@example.test", &["x@nullmx.test"], "nullmx");
    assert!(server.wait_log(&["delivery", &null, "status=bounced", "dsn=5.1.10"], WAIT));
    let nx = send(
        &server,
        "alice@example.test",
        &["x@nowhere.gone.test"],
        "nxdomain",
    );
    assert!(server.wait_log(&["delivery", &nx, "status=bounced", "dsn=5.1.2"], WAIT));
    let refused = send(
        &server,
        "alice@example.test",
        &["x@broken.test"],
        "servfail",
    );
    assert!(server.wait_log(
        &["delivery", &refused, "status=deferred", "dsn=4.4.3"],
        WAIT
    ));
    let implicit = send(
        &server,
        "alice@example.test",
        &["x@nomx.test"],
        "implicit-mx",
    );
    assert_eq!(
        nomx.wait(1, WAIT).len(),
        1,
        "A record used when there is no MX"
    );
    assert!(server.wait_log(&["delivery", &implicit, "status=sent"], WAIT));
}

#[test]
fn null_sender_never_causes_a_bounce() {
    let (_mx1, _, port) = partner_sinks(true, false, SinkOptions::default());
    let server = TestServer::start_with("", "", port);
    let id = send(&server, "", &["reject2@partner.test"], "nullsender");
    assert!(server.wait_log(&["delivery", &id, "status=bounced"], WAIT));
    assert!(server.wait_log(&["removed", &id], WAIT));
    // A report is queued (and logged) before its message is removed, so
    // one would already be in the log and the queue.
    assert!(server.mailq().is_empty(), "{:?}", server.mailq());
    assert!(
        !server.log().contains("sender notified"),
        "{}",
        server.log()
    );
    assert!(server.mailq().is_empty());
}

#[test]
fn opportunistic_tls_is_used_when_offered() {
    let tls = Sink::start(
        "127.0.0.5:0",
        SinkOptions {
            starttls: true,
            ..Default::default()
        },
    );
    let server = TestServer::start_with("", "", tls.addr.port());
    send(&server, "alice@example.test", &["x@tls.test"], "tls");
    let got = tls.wait(1, WAIT);
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "the message went in plain text");
}

#[test]
fn required_tls_refuses_a_peer_without_starttls() {
    let (mx1, mx2, port) = partner_sinks(true, true, SinkOptions::default());
    let server = TestServer::start_with(
        "",
        &format!("[smtp.outbound]\nport = {port}\ntls = \"required\""),
        port,
    );
    let id = send(
        &server,
        "alice@example.test",
        &["dave@partner.test"],
        "needtls",
    );
    assert!(
        server.wait_log(
            &["delivery", &id, "status=deferred", "TLS is required"],
            WAIT
        ),
        "{}",
        server.log()
    );
    assert!(mx1.expect("mx1").received().is_empty());
    assert!(mx2.expect("mx2").received().is_empty());
}

#[test]
fn connections_are_reused_for_several_messages() {
    let (mx1, _, port) = partner_sinks(true, false, SinkOptions::default());
    let mx1 = mx1.expect("mx1");
    let server = TestServer::start_with("", "", port);
    for i in 0..3 {
        send(
            &server,
            "alice@example.test",
            &["dave@partner.test"],
            &format!("reuse{i}"),
        );
        assert_eq!(mx1.wait(i + 1, WAIT).len(), i + 1);
    }
    assert_eq!(mx1.connections(), 1, "one connection carried all three");
}

#[test]
fn dsn_parameters_are_passed_on_to_a_dsn_peer() {
    let (mx1, _, port) = partner_sinks(
        true,
        false,
        SinkOptions {
            dsn: true,
            ..Default::default()
        },
    );
    let server = TestServer::start_with("", "", port);
    let mut s = Smtp::ready(server.mx());
    assert_eq!(
        s.cmd("MAIL FROM:<alice@example.test> RET=HDRS ENVID=env+2B1")
            .0,
        250
    );
    assert_eq!(
        s.cmd("RCPT TO:<dave@partner.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;dave@partner.test")
            .0,
        250
    );
    assert_eq!(s.cmd("DATA").0, 354);
    s.send_raw(b"Subject: dsn\r\n\r\nx\r\n.\r\n");
    queued_id(&s.reply());
    let got = mx1.expect("mx1").wait(1, WAIT);
    assert!(
        got[0].mail.contains("RET=HDRS") && got[0].mail.contains("ENVID=env+2B1"),
        "{}",
        got[0].mail
    );
    assert!(
        got[0].rcpt_lines[0].contains("NOTIFY=SUCCESS,FAILURE"),
        "{:?}",
        got[0].rcpt_lines
    );
    assert!(
        got[0].rcpt_lines[0].contains("ORCPT=rfc822;dave@partner.test"),
        "{:?}",
        got[0].rcpt_lines
    );
}

#[test]
fn notify_success_on_local_delivery_sends_a_delivered_report() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<bob@example.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<alice@example.test> NOTIFY=SUCCESS").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send_raw(b"Subject: success please\r\n\r\nx\r\n.\r\n");
    queued_id(&s.reply());
    let bob = server.wait_mailbox("bob", 1, WAIT);
    assert_eq!(bob.len(), 1);
    let raw = String::from_utf8(server.mailbox_message("bob", 1)).expect("utf-8");
    assert!(
        raw.contains("Subject: Successful Mail Delivery Report"),
        "{raw}"
    );
    assert!(raw.contains("Action: delivered"), "{raw}");
}

#[test]
fn utf8_mail_bounces_and_8bit_mail_is_converted_at_a_peer_without_the_extensions() {
    let (mx1, _, port) = partner_sinks(
        true,
        false,
        SinkOptions {
            seven_bit: true,
            ..Default::default()
        },
    );
    let server = TestServer::start_with("", "", port);
    let mut s = Smtp::ready(server.mx());
    // 8BITMIME content is converted (RFC 6152 §3; tests/downgrade.rs).
    assert_eq!(s.cmd("MAIL FROM:<alice@example.test> BODY=8BITMIME").0, 250);
    assert_eq!(s.cmd("RCPT TO:<dave@partner.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send_raw("Subject: 8bit\r\n\r\nGr\u{fc}\u{df}e\r\n.\r\n".as_bytes());
    let eight = queued_id(&s.reply());
    assert!(
        server.wait_log(&["delivery", &eight, "status=sent"], WAIT),
        "{}",
        server.log()
    );
    // An SMTPUTF8 address cannot be converted: it bounces.
    assert_eq!(s.cmd("MAIL FROM:<alice@example.test> SMTPUTF8").0, 250);
    assert_eq!(s.cmd("RCPT TO:<d\u{f6}rte@partner.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send_raw(b"Subject: utf8\r\n\r\nx\r\n.\r\n");
    let utf8 = queued_id(&s.reply());
    assert!(server.wait_log(&["delivery", &utf8, "status=bounced", "dsn=5.6.7"], WAIT));
    let ascii = send(
        &server,
        "alice@example.test",
        &["dave@partner.test"],
        "plain-ascii",
    );
    assert!(server.wait_log(&["delivery", &ascii, "status=sent"], WAIT));
    let got = mx1.expect("mx1").received();
    assert_eq!(
        got.len(),
        2,
        "the converted and the 7-bit message were sent"
    );
    assert!(got[0].data.is_ascii());
    assert!(
        String::from_utf8_lossy(&got[0].data).contains("Gr=C3=BC=C3=9Fe"),
        "{}",
        String::from_utf8_lossy(&got[0].data)
    );
}

#[test]
fn an_unreachable_destination_is_backed_off_as_a_whole() {
    // Nothing listens for partner.test at this port.
    let server = TestServer::start_with(
        "",
        "[queue]\nretry_initial = \"1h\"\nretry_max = \"2h\"",
        common::free_port(),
    );
    let ids: Vec<String> = (0..4)
        .map(|i| {
            send(
                &server,
                "alice@example.test",
                &["dave@partner.test"],
                &format!("down{i}"),
            )
        })
        .collect();
    assert!(
        server.wait_log(
            &[
                "destination unreachable; backing off",
                "destination=partner.test"
            ],
            WAIT
        ),
        "{}",
        server.log()
    );
    for id in &ids {
        assert!(server.wait_log(&["delivery", id, "status=deferred"], WAIT));
    }
}

#[test]
fn a_looping_message_from_sendmail_bounces() {
    let server = TestServer::start("");
    let mut msg = String::new();
    for i in 0..51 {
        msg.push_str(&format!(
            "Received: from hop{i}.test by hop{}.test; Mon, 23 Nov 2026 10:00:00 +0000\n",
            i + 1
        ));
    }
    msg.push_str("Subject: loop\n\nround and round\n");
    let out = server.cli_stdin(
        &["sendmail", "-f", "bob@example.test", "alice@example.test"],
        msg.as_bytes(),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        server.wait_log(
            &[
                "delivery",
                "to=<alice@example.test>",
                "status=bounced",
                "dsn=5.4.6"
            ],
            WAIT
        ),
        "{}",
        server.log()
    );
    let bob = server.wait_mailbox("bob", 1, WAIT);
    assert_eq!(bob.len(), 1, "the sender got the bounce");
    assert!(server.mailbox("alice").is_empty());
}

#[test]
fn destination_and_total_concurrency_are_capped() {
    let slow = SinkOptions {
        data_delay: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let (mx1, _, port) = partner_sinks(true, false, slow.clone());
    let mx1 = mx1.expect("mx1");
    let server = TestServer::start_with(
        "",
        &format!(
            "[queue]\nretry_initial = \"1h\"\nretry_max = \"2h\"\ndestination_concurrency = 2\n[smtp.outbound]\nport = {port}"
        ),
        port,
    );
    for i in 0..8 {
        send(
            &server,
            "alice@example.test",
            &["dave@partner.test"],
            &format!("dest{i}"),
        );
    }
    assert_eq!(mx1.wait(8, WAIT).len(), 8);
    assert_eq!(
        mx1.peak_open(),
        2,
        "destination_concurrency = 2 allows two connections, and they were used"
    );

    let nomx = Sink::start("127.0.0.4:0", slow);
    let server = TestServer::start_with(
        "",
        "[queue]\nretry_initial = \"1h\"\nretry_max = \"2h\"\ntotal_concurrency = 3",
        nomx.addr.port(),
    );
    for i in 0..8 {
        send(
            &server,
            "alice@example.test",
            &["x@nomx.test"],
            &format!("total{i}"),
        );
    }
    assert_eq!(nomx.wait(8, WAIT).len(), 8);
    assert!(
        nomx.peak_open() <= 3,
        "total_concurrency = 3, saw {}",
        nomx.peak_open()
    );
}
