//! Recipients: local users, mail-in boxes, alias groups, unknown users,
//! relay control and the deny lists, each seen arriving where it should or
//! refused with the SPEC reply.

mod common;

use std::time::Duration;

use common::{Smtp, TestServer, queued_id};

const NO_RELAY: &str = "relay_from = []";

#[test]
fn relay_denied_for_foreign_domain() {
    let server = TestServer::start(NO_RELAY);
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<spammer@elsewhere.test>").0, 250);
    for rcpt in [
        "victim@other.test",
        "victim@OTHER.Test",
        "victim@other.test.",
        "user%other.test@example.test",
        "other.test!user@example.test",
        "@example.test:user@other.test",
        "\"user@other.test\"@example.test",
        "user@[192.0.2.1]",
    ] {
        let r = s.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(r.0, 554, "{rcpt}: {r:?}");
        assert!(
            r.1.contains("5.7.1") && r.1.contains("Relay access denied"),
            "{rcpt}: {r:?}"
        );
    }
    assert!(server.wait_log(
        &["rejected", "stage=RCPT", "code=554"],
        Duration::from_secs(5)
    ));
}

#[test]
fn local_domains_are_accepted_from_anyone() {
    let server = TestServer::start(NO_RELAY);
    let mut s = Smtp::ready(server.mx());
    let r = s.send_mail(
        "carol@partner.test",
        &[
            "ALICE@Example.Test",
            "a.smith@example.org",
            "bob@[192.0.2.10]",
        ],
        "Subject: local\r\n\r\nhi\r\n",
    );
    queued_id(&r);
    // alice@ and a.smith@ are the same mailbox: one copy.
    let a = server.wait_mailbox("alice", 1, Duration::from_secs(10));
    // Every copy is delivered before the message leaves the queue.
    server.wait_queue_empty(Duration::from_secs(10));
    assert_eq!(server.mailbox("alice").len(), 1, "{a:?}");
}

#[test]
fn unknown_local_recipient_gets_550_5_1_1() {
    let server = TestServer::start(NO_RELAY);
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<carol@partner.test>").0, 250);
    let r = s.cmd("RCPT TO:<nobody@example.test>");
    assert_eq!(r.0, 550);
    assert!(r.1.starts_with("5.1.1"), "{r:?}");
    assert_eq!(s.cmd("DATA").0, 554, "no valid recipients");
}

#[test]
fn unverified_unknown_recipient_is_accepted_then_bounced_by_delivery() {
    let server = TestServer::start("relay_from = []\nverify_recipients = false");
    let mut s = Smtp::ready(server.mx());
    let id = queued_id(&s.send_mail(
        "carol@partner.test",
        &["nobody@example.test"],
        "Subject: x\r\n\r\nx\r\n",
    ));
    assert!(server.wait_log(
        &["delivery", &id, "status=bounced", "dsn=5.1.1"],
        Duration::from_secs(10)
    ));
    assert!(server.wait_log(&["removed", &id], Duration::from_secs(10)));
}

#[test]
fn alias_group_reaches_every_member_and_keeps_remote_ones_queued() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    let id = queued_id(&s.send_mail(
        "carol@partner.test",
        &["team@example.test"],
        "Subject: team\r\n\r\nall\r\n",
    ));
    assert_eq!(
        server
            .wait_mailbox("alice", 1, Duration::from_secs(10))
            .len(),
        1
    );
    assert_eq!(
        server.wait_mailbox("bob", 1, Duration::from_secs(10)).len(),
        1
    );
    assert!(server.wait_log(
        &["delivery", &id, "to=<dave@partner.test>", "status=deferred"],
        Duration::from_secs(10)
    ));
    let q = server.mailq();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["queue_id"], id.as_str());
    let rcpts = q[0]["recipients"].as_array().expect("recipients");
    assert_eq!(rcpts.len(), 1, "only the remote member is pending: {q:?}");
    assert_eq!(rcpts[0]["address"], "dave@partner.test");
    assert!(
        rcpts[0]["delay_reason"]
            .as_str()
            .expect("reason")
            .contains("Connection refused")
    );
}

#[test]
fn mailin_box_receives_its_addresses() {
    let server = TestServer::start(NO_RELAY);
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(
        "carol@partner.test",
        &["support@example.test"],
        "Subject: help\r\n\r\nplease\r\n",
    ));
    let m = server.wait_mailbox("support", 1, Duration::from_secs(10));
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["uid"], 1);
}

#[test]
fn relay_client_may_send_to_remote_domains() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    let id = queued_id(&s.send_mail(
        "alice@example.test",
        &["dave@partner.test"],
        "Subject: out\r\n\r\nhello\r\n",
    ));
    assert!(server.wait_log(
        &["delivery", &id, "status=deferred"],
        Duration::from_secs(10)
    ));
    let q = server.mailq();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["queue_name"], "deferred");
    assert_eq!(q[0]["sender"], "alice@example.test");
}

#[test]
fn deny_lists_refuse_with_550_5_7_1() {
    let server = TestServer::start(
        "deny_senders = [\"*@spam.test\", \"*.bad.test\"]\ndeny_recipients = [\"bob@example.test\"]",
    );
    let mut s = Smtp::ready(server.mx());
    let r = s.cmd("MAIL FROM:<joe@spam.test>");
    assert_eq!(r.0, 550);
    assert!(r.1.starts_with("5.7.1"));
    let r = s.cmd("MAIL FROM:<joe@host.bad.test>");
    assert_eq!(r.0, 550);
    assert_eq!(s.cmd("MAIL FROM:<joe@good.test>").0, 250);
    let r = s.cmd("RCPT TO:<bob@example.test>");
    assert_eq!(r.0, 550);
    assert!(r.1.starts_with("5.7.1"));
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
}

#[test]
fn denied_client_gets_554_at_greeting() {
    let server = TestServer::start("deny_connections_from = [\"127.0.0.0/8\"]");
    let (mut s, g) = Smtp::connect(server.mx());
    assert_eq!(g.0, 554);
    assert!(g.1.starts_with("5.7.1"));
    assert!(s.is_closed());
}

#[test]
fn client_names_are_forward_confirmed() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dns = petrel::delivery::dns::Dns::new(&[common::standard_dns()]).expect("resolver");
    rt.block_on(async {
        assert_eq!(
            dns.verified_name("192.0.2.9".parse().expect("ip"))
                .await
                .as_deref(),
            Some("bad.client.test")
        );
        assert_eq!(
            dns.verified_name("192.0.2.11".parse().expect("ip")).await,
            None,
            "PTR without a matching A"
        );
        assert_eq!(
            dns.verified_name("192.0.2.99".parse().expect("ip")).await,
            None,
            "no PTR"
        );
    });
}

#[test]
fn hostname_patterns_use_the_verified_client_name() {
    // 127.0.0.1 is "localhost" both ways; 127.0.0.10's PTR says localhost
    // too, but localhost does not point back to it.
    let server = TestServer::start("deny_connections_from = [\"localhost\"]");
    let (mut s, g) = Smtp::connect(server.mx());
    assert_eq!(g.0, 554, "{g:?}");
    assert!(s.is_closed());
    let (_, g) = Smtp::connect_from(server.mx(), "127.0.0.10".parse().expect("ip"));
    assert_eq!(g.0, 220, "{g:?}");
    assert!(server.wait_log(
        &[
            "rejected",
            "client=[127.0.0.1]",
            "stage=connect",
            "code=554"
        ],
        Duration::from_secs(5)
    ));
}

#[test]
fn allow_list_admits_only_its_clients() {
    let server = TestServer::start("allow_connections_from = [\"127.0.0.10/32\", \"localhost\"]");
    let (_, g) = Smtp::connect_from(server.mx(), "127.0.0.10".parse().expect("ip"));
    assert_eq!(g.0, 220);
    let (_, g) = Smtp::connect(server.mx());
    assert_eq!(g.0, 220, "admitted by its verified name");
    let (_, g) = Smtp::connect_from(server.mx(), "127.0.0.13".parse().expect("ip"));
    assert_eq!(g.0, 554);
}

#[test]
fn total_connection_limit_turns_extra_clients_away() {
    let server = TestServer::start("max_connections = 2");
    let (_a, g1) = Smtp::connect(server.mx());
    let (_b, g2) = Smtp::connect_from(server.mx(), "127.0.0.10".parse().expect("ip"));
    let (mut c, g3) = Smtp::connect_from(server.mx(), "127.0.0.11".parse().expect("ip"));
    assert_eq!((g1.0, g2.0), (220, 220));
    assert_eq!(g3.0, 421, "{g3:?}");
    assert!(c.is_closed());
}

#[test]
fn verified_client_name_appears_in_received_and_may_relay() {
    let server = TestServer::start("relay_from = [\"localhost\"]");
    let mut s = Smtp::ready(server.mx());
    let id = queued_id(&s.send_mail(
        "x@partner.test",
        &["alice@example.test"],
        "Subject: named\r\n\r\nx\r\n",
    ));
    server.wait_mailbox("alice", 1, Duration::from_secs(10));
    let raw = String::from_utf8(server.mailbox_message("alice", 1)).expect("utf-8");
    assert!(
        raw.contains("Received: from client.test (localhost [127.0.0.1])"),
        "{raw}"
    );
    assert!(raw.contains(&id));
    assert_eq!(s.cmd("MAIL FROM:<x@partner.test>").0, 250);
    assert_eq!(
        s.cmd("RCPT TO:<y@elsewhere.test>").0,
        250,
        "named in relay_from"
    );
    let mut other = Smtp::ready_from(server.mx(), "127.0.0.10".parse().expect("ip"));
    assert_eq!(other.cmd("MAIL FROM:<x@partner.test>").0, 250);
    assert_eq!(other.cmd("RCPT TO:<y@elsewhere.test>").0, 554);
}
