//! Every report arrives: a failure report to a sender that is an alias
//! group re-enters through intake and reaches the group's mailboxes and
//! remote members; a delivery job that panics is a temporary failure that
//! counts as an attempt (with its reason logged), not a recipient due again
//! at once forever.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sink::{Sink, SinkOptions};
use common::{Smtp, TestServer, base_config, queued_id, standard_dns};

const WAIT: Duration = Duration::from_secs(15);

fn send(server: &TestServer, from: &str, to: &[&str], subject: &str) -> String {
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(
        from,
        to,
        &format!("Subject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n\r\nbody of {subject}\r\n"),
    ))
}

/// Log lines for `id` that record a delivery attempt.
fn attempts_logged(server: &TestServer, id: &str) -> usize {
    server
        .log()
        .lines()
        .filter(|l| l.contains(" delivery") && l.contains(&format!("queue_id={id}")))
        .count()
}

#[test]
fn a_failure_report_to_an_alias_group_reaches_every_member() {
    // mx1.partner.test: refuses reject@, accepts the rest (dave@).
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let server = TestServer::start_with("", "", sink.addr.port());
    // team@example.test = alice, bob (local) and dave@partner.test.
    let id = send(
        &server,
        "team@example.test",
        &["reject@partner.test"],
        "to-the-group",
    );
    assert!(
        server.wait_log(&["delivery", &id, "status=bounced"], WAIT),
        "{}",
        server.log()
    );
    for user in ["alice", "bob"] {
        let list = server.wait_mailbox(user, 1, WAIT);
        assert_eq!(list.len(), 1, "no report for {user}: {}", server.log());
        let raw = String::from_utf8_lossy(&server.mailbox_message(user, 1)).into_owned();
        assert!(raw.starts_with("Return-Path: <>\r\n"), "{raw}");
        assert!(
            raw.contains("Subject: Undelivered Mail Returned to Sender"),
            "{raw}"
        );
        assert!(
            raw.contains("Final-Recipient: rfc822; reject@partner.test"),
            "{raw}"
        );
    }
    // The remote member gets it too, from <>, with the group as ORCPT.
    let got = sink.wait(1, WAIT);
    assert_eq!(got.len(), 1, "report not sent to dave: {}", server.log());
    assert!(got[0].mail.starts_with("MAIL FROM:<> "), "{}", got[0].mail);
    assert_eq!(got[0].rcpts, vec!["dave@partner.test"]);
    assert!(String::from_utf8_lossy(&got[0].data).contains("Action: failed"));
    assert!(
        !server.log().contains("unknown user in a local domain"),
        "{}",
        server.log()
    );
}

#[test]
fn a_failure_report_to_an_alternate_domain_address_reaches_the_mailbox() {
    // bob@example.org: bob@example.test's address in the alternate domain
    // example.org, not listed in his addresses.
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let server = TestServer::start_with("", "", sink.addr.port());
    let id = send(
        &server,
        "bob@example.org",
        &["reject@partner.test"],
        "from-the-alias-domain",
    );
    assert!(server.wait_log(&["delivery", &id, "status=bounced"], WAIT));
    let list = server.wait_mailbox("bob", 1, WAIT);
    assert_eq!(list.len(), 1, "no report for bob: {}", server.log());
    let raw = String::from_utf8_lossy(&server.mailbox_message("bob", 1)).into_owned();
    assert!(raw.contains("To: <bob@example.org>"), "{raw}");
    assert!(
        raw.contains("Final-Recipient: rfc822; reject@partner.test"),
        "{raw}"
    );
}

#[test]
fn an_undeliverable_report_is_logged_not_dropped_silently() {
    // A report to a local address nobody has (the sender was forged):
    // nothing to tell, but the administrator sees why in the log.
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let server = TestServer::start_with("", "", sink.addr.port());
    let mut s = Smtp::ready(server.mx());
    let id = queued_id(&s.send_mail(
        "nobody@example.test",
        &["reject@partner.test"],
        "Subject: forged\r\n\r\nx",
    ));
    assert!(server.wait_log(&["delivery", &id, "status=bounced"], WAIT));
    assert!(
        server.wait_log(
            &["undeliverable report discarded", "to=nobody@example.test"],
            WAIT
        ),
        "{}",
        server.log()
    );
}

/// Starts a daemon whose delivery panics for `doom@partner.test` (the
/// debug build's test-only fault injection), with partner.test on `port`.
fn start_with_fault(port: u16) -> TestServer {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = base_config(&dir.path().join("spool"), standard_dns(), port, true, true);
    TestServer::start_wrapped(
        dir,
        &cfg,
        &["env", "PETREL_TEST_PANIC_RCPT=doom@partner.test"],
    )
}

#[test]
fn a_panicking_delivery_job_is_a_counted_temporary_failure() {
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let server = start_with_fault(sink.addr.port());
    let id = send(
        &server,
        "alice@example.test",
        &["doom@partner.test"],
        "doom",
    );
    assert!(
        server.wait_log(
            &[
                "delivery",
                &id,
                "status=deferred",
                "dsn=4.3.0",
                "panicked: fault injected"
            ],
            WAIT
        ),
        "{}",
        server.log()
    );
    assert!(server.log().contains("delivery job failed"));
    // Retries follow the back-off (retry_initial 1 s, then 2 s): the third
    // attempt comes about 3 s after the first — not at once, as for a
    // recipient that stays due because no attempt was counted.
    let first = Instant::now();
    let deadline = first + WAIT;
    while attempts_logged(&server, &id) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = first.elapsed();
    let logged = attempts_logged(&server, &id);
    assert!(logged >= 3, "{logged} attempts: {}", server.log());
    assert!(
        took >= Duration::from_millis(2500) && took <= Duration::from_secs(6),
        "third attempt {took:?} after the first (expected about 3 s)"
    );
    let show = server.cli(&["show", &id]);
    let text = String::from_utf8_lossy(&show.stdout).into_owned();
    let counted: usize = text
        .split("attempts=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("attempts in show");
    // `show` ran after the count above; at most one more attempt between.
    assert!(
        counted >= logged && counted <= logged + 1,
        "show says {counted}, the log {logged}: {text}"
    );
    // The destination still works: the panic cost only its transaction.
    let ok = send(
        &server,
        "alice@example.test",
        &["dave@partner.test"],
        "after",
    );
    assert!(
        server.wait_log(&["delivery", &ok, "status=sent"], WAIT),
        "{}",
        server.log()
    );
    assert_eq!(sink.received().len(), 1);
}
