//! Legal mail is accepted and what a client sends is counted: postmaster
//! at every local domain and the bare `<Postmaster>` (RFC 5321 §4.5.1),
//! alternate domains reaching every user, strict command framing with one
//! reply per refused line, and limits that count every command.

mod common;

use std::time::{Duration, Instant};

use common::{Smtp, TestServer, queued_id};

#[test]
fn postmaster_at_every_local_domain_and_bare_postmaster_reach_server_postmaster() {
    // The base configuration has `server.postmaster = alice@example.test`
    // and no alias for any postmaster address.
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    for to in [
        "<postmaster@example.test>",
        "<PostMaster@example.org>",
        "<postmaster@[192.0.2.10]>",
        "<Postmaster>",
        "<POSTMASTER>",
    ] {
        assert_eq!(s.cmd("MAIL FROM:<x@partner.test>").0, 250);
        let r = s.cmd(&format!("RCPT TO:{to}"));
        assert_eq!(r.0, 250, "RCPT TO:{to}: {r:?}");
        assert_eq!(s.cmd("DATA").0, 354);
        s.send_raw(format!("Subject: to {to}\r\n\r\nhello\r\n.\r\n").as_bytes());
        queued_id(&s.reply());
    }
    let got = server.wait_mailbox("alice", 5, Duration::from_secs(20));
    assert_eq!(
        got.len(),
        5,
        "every postmaster message reached alice: {got:?}"
    );
}

#[test]
fn an_alternate_domain_reaches_every_user_without_listing_addresses() {
    // bob has only bob@example.test; example.org is in domains.aliases.
    let server = TestServer::start("verify_recipients = true");
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(
        "x@partner.test",
        &["Bob@Example.ORG", "support@example.org"],
        "Subject: via the alternate domain\r\n\r\nhi\r\n",
    ));
    assert_eq!(
        server.wait_mailbox("bob", 1, Duration::from_secs(20)).len(),
        1
    );
    assert_eq!(
        server
            .wait_mailbox("support", 1, Duration::from_secs(20))
            .len(),
        1
    );
    // An unknown local part is still unknown in every local domain.
    assert_eq!(s.cmd("MAIL FROM:<x@partner.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<nobody@example.org>").0, 550);
}

#[test]
fn a_command_line_with_a_bare_lf_is_one_refused_line() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    s.send_raw(b"NOOP\nNOOP\r\n");
    assert_eq!(s.reply().0, 500);
    // Had the bytes after the LF run as a command, its 250 would come
    // before this QUIT's 221.
    assert_eq!(s.cmd("QUIT").0, 221);
    let mut s = Smtp::ready(server.mx());
    s.send_raw(b"MAIL FROM:<x@partner.test>\nRCPT TO:<alice@example.test>\r\nRSET\r\n");
    assert_eq!(s.reply().0, 500);
    assert_eq!(s.reply().0, 250, "RSET");
    assert_eq!(s.cmd("QUIT").0, 221);
}

#[test]
fn the_recipient_limit_counts_every_rcpt_command() {
    let server = TestServer::start("max_recipients = 100\nmax_errors = 10000");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<x@partner.test>").0, 250);
    let batch = "RCPT TO:<alice@example.test>\r\n".repeat(1100);
    s.send_raw(batch.as_bytes());
    let codes: Vec<u16> = (0..1100).map(|_| s.reply().0).collect();
    assert!(
        codes[..100].iter().all(|&c| c == 250),
        "{:?}",
        &codes[..100]
    );
    assert!(
        codes[100..].iter().all(|&c| c == 452),
        "past the limit: {:?}",
        &codes[100..110]
    );
    // A new transaction starts a new count.
    assert_eq!(s.cmd("RSET").0, 250);
    assert_eq!(s.cmd("MAIL FROM:<x@partner.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
}

#[test]
fn the_reply_reaching_the_error_limit_is_followed_by_421_and_a_close() {
    let server = TestServer::start("max_errors = 3");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("BOGUS").0, 500);
    assert_eq!(s.cmd("BOGUS").0, 500);
    s.send_raw(b"BOGUS\r\n");
    let started = Instant::now();
    assert_eq!(s.reply().0, 500);
    let (code, text) = s.reply();
    assert_eq!(code, 421, "{text}");
    assert!(s.is_closed(), "closed after the 421");
    // At once: not at the client's next command, not at a timeout.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn check_config_refuses_a_route_or_smarthost_for_a_local_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    for (extra, key) in [
        (
            "[smtp.outbound]\n[[smtp.outbound.routes]]\ndomain = \"example.org\"\nhost = \"[127.0.0.1]:2600\"\n",
            "smtp.outbound.routes[0].domain",
        ),
        (
            "[smtp.outbound]\nsmarthost = \"example.test\"\n",
            "smtp.outbound.smarthost",
        ),
    ] {
        let cfg = format!(
            "{}\n{extra}",
            common::base_config(&spool, common::standard_dns(), 25, false, false)
        );
        let path = dir.path().join("petrel.toml");
        std::fs::write(&path, cfg).expect("write");
        let out = common::cli_with(&path, &["check-config"], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: accepted");
        assert!(err.contains(key), "{key} not named in: {err}");
    }
}
