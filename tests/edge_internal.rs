//! The edge gateway + internal mail server deployment: two petrel daemons
//! and an Internet-side peer on loopback. Internet → edge → internal
//! mailbox; internal user → internal → edge → Internet; the edge relays for
//! no stranger; the internal server talks to nobody but the edge.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use common::sink::{Sink, SinkOptions};
use common::{Smtp, TestServer, free_port, queued_id, standard_dns};

const WAIT: Duration = Duration::from_secs(15);
const INTERNET_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));

fn edge_config(
    spool: &std::path::Path,
    port: u16,
    internal_port: u16,
    internet_port: u16,
) -> String {
    format!(
        r#"
[server]
hostname = "mx.example.test"
spool = "{spool}"
[domains]
primary = "mx.example.test"
relay_domains = ["example.test", "example.org"]
[[listeners]]
name = "mx"
protocol = "smtp"
bind = "127.0.0.1:{port}"
[smtp.inbound]
relay_from = ["127.0.0.1/32"]
verify_recipients = false
[smtp.outbound]
port = {internet_port}
[[smtp.outbound.routes]]
domain = "example.test"
host = "[127.0.0.1]:{internal_port}"
[[smtp.outbound.routes]]
domain = "example.org"
host = "[127.0.0.1]:{internal_port}"
[queue]
retry_initial = "1s"
retry_max = "2s"
[dns]
nameservers = ["{dns}"]
[[aliases]]
address = "postmaster@mx.example.test"
members = ["postmaster@example.test"]
"#,
        spool = spool.display(),
        dns = standard_dns()
    )
}

fn internal_config(spool: &std::path::Path, port: u16, edge_port: u16) -> String {
    format!(
        r#"
[server]
hostname = "mail.example.test"
spool = "{spool}"
[domains]
primary = "example.test"
aliases = ["example.org"]
[[listeners]]
name = "mx"
protocol = "smtp"
bind = "127.0.0.1:{port}"
[smtp.inbound]
relay_from = ["127.0.0.0/8"]
[smtp.outbound]
smarthost = "[127.0.0.1]:{edge_port}"
[queue]
retry_initial = "1s"
retry_max = "2s"
[dns]
nameservers = ["{dns}"]
[[users]]
name = "alice"
addresses = ["alice@example.test", "alice@example.org"]
[[users]]
name = "bob"
addresses = ["bob@example.test"]
[[aliases]]
address = "postmaster@example.test"
members = ["alice@example.test"]
"#,
        spool = spool.display(),
        dns = standard_dns()
    )
}

struct Deployment {
    edge: TestServer,
    internal: TestServer,
    internet: Sink,
}

fn deploy() -> Deployment {
    let internet = Sink::start("127.0.0.6:0", SinkOptions::default());
    let (edge_port, internal_port) = (free_port(), free_port());
    let edge_dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let internal_dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let internal = TestServer::start_in(
        internal_dir.clone(),
        &internal_config(&internal_dir.path().join("spool"), internal_port, edge_port),
    );
    let edge = TestServer::start_in(
        edge_dir.clone(),
        &edge_config(
            &edge_dir.path().join("spool"),
            edge_port,
            internal_port,
            internet.addr.port(),
        ),
    );
    Deployment {
        edge,
        internal,
        internet,
    }
}

#[test]
fn internet_mail_reaches_an_internal_mailbox_through_the_edge() {
    let d = deploy();
    let mut s = Smtp::ready_from(d.edge.mx(), INTERNET_CLIENT);
    let id = queued_id(&s.send_mail(
        "carol@internet.test",
        &["alice@example.org"],
        "Subject: inbound\r\nMessage-ID: <inbound@internet.test>\r\n\r\nhello alice\r\n",
    ));
    let m = d.internal.wait_mailbox("alice", 1, WAIT);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["message_id"], "<inbound@internet.test>");
    assert!(
        d.edge
            .wait_log(&["delivery", &id, "status=sent", "relay=127.0.0.1"], WAIT)
    );
    let raw = String::from_utf8(d.internal.mailbox_message("alice", 1)).expect("utf-8");
    assert_eq!(
        raw.matches("Received: ").count(),
        2,
        "edge and internal each add a trace header:\n{raw}"
    );
    assert!(d.internet.received().is_empty());
}

#[test]
fn internal_users_mail_leaves_through_the_edge() {
    let d = deploy();
    let mut s = Smtp::ready(d.internal.mx());
    let id = queued_id(&s.send_mail(
        "alice@example.test",
        &["bob@internet.test"],
        "Subject: outbound\r\nMessage-ID: <outbound@example.test>\r\n\r\nhello bob\r\n",
    ));
    let got = d.internet.wait(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, vec!["bob@internet.test"]);
    assert!(String::from_utf8_lossy(&got[0].data).contains("hello bob"));
    assert!(
        d.internal
            .wait_log(&["delivery", &id, "status=sent", "relay=127.0.0.1"], WAIT)
    );
    assert!(d.edge.wait_log(
        &[
            "delivery",
            "to=bob@internet.test",
            "status=sent",
            "relay=mx.internet.test"
        ],
        WAIT
    ));
}

#[test]
fn the_edge_relays_for_no_stranger_and_holds_no_mailboxes() {
    let d = deploy();
    let mut s = Smtp::ready_from(d.edge.mx(), INTERNET_CLIENT);
    assert_eq!(s.cmd("MAIL FROM:<spammer@internet.test>").0, 250);
    let r = s.cmd("RCPT TO:<victim@internet.test>");
    assert_eq!(r.0, 554, "{r:?}");
    assert!(r.1.contains("Relay access denied"));
    assert_eq!(s.cmd("RCPT TO:<victim%internet.test@example.test>").0, 554);
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
    let out = d.edge.cli(&["mailbox", "alice"]);
    assert_eq!(out.status.code(), Some(1), "the edge has no mailboxes");
}

#[test]
fn the_internal_server_talks_only_to_the_edge() {
    let d = deploy();
    let mut s = Smtp::ready(d.internal.mx());
    for (i, to) in ["bob@internet.test", "x@partner.test", "y@nomx.test"]
        .iter()
        .enumerate()
    {
        queued_id(&s.send_mail(
            "alice@example.test",
            &[to],
            &format!("Subject: out{i}\r\n\r\nx\r\n"),
        ));
    }
    assert!(
        d.internal
            .wait_log(&["delivery", "to=y@nomx.test", "relay=127.0.0.1"], WAIT),
        "{}",
        d.internal.log()
    );
    for line in d
        .internal
        .log()
        .lines()
        .filter(|l| l.contains(" delivery "))
    {
        assert!(
            line.contains("relay=127.0.0.1") || line.contains("relay=local"),
            "internal delivered elsewhere: {line}"
        );
    }
}
