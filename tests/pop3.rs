//! POP3 against the real daemon: Python's poplib and fetchmail
//! (tests/interop/pop3_interop.py) read what SMTP delivered; UIDLs stay the
//! same across a restart; failed logins are slowed and then disconnected.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Smtp, TestServer, base_config, free_port, queued_id, standard_dns};

const PASSWORD: &str = "pop secret";

fn config(dir: &std::path::Path, plaintext: bool) -> String {
    let hash = petrel::auth::hash_password(PASSWORD).expect("hash");
    let base = base_config(&dir.join("spool"), standard_dns(), free_port(), true, true)
        .replace(
            "addresses = [\"alice@example.test\", \"a.smith@example.org\"]",
            &format!("password = \"{hash}\"\naddresses = [\"alice@example.test\", \"a.smith@example.org\"]"),
        )
        .replace("addresses = [\"bob@example.test\"]", &format!("password = \"{hash}\"\naddresses = [\"bob@example.test\"]"));
    format!(
        "{base}\n[[listeners]]\nname = \"pop3\"\nprotocol = \"pop3\"\nbind = \"127.0.0.1:0\"\ntls = \"starttls\"\n\n\
         [[listeners]]\nname = \"pop3s\"\nprotocol = \"pop3\"\nbind = \"127.0.0.1:0\"\ntls = \"implicit\"\n\n\
         [pop3]\nallow_plaintext_auth = {plaintext}\n"
    )
}

fn deliver(server: &TestServer) {
    let mut s = Smtp::ready(server.mx());
    for (i, body) in [
        "Subject: one\r\nMessage-ID: <p1@test>\r\n\r\nfirst message\r\n",
        "Subject: two\r\nMessage-ID: <p2@test>\r\n\r\n..a line starting with a dot\r\n..\r\nafter a lone dot\r\n",
        "Subject: three\r\nMessage-ID: <p3@test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGr\u{fc}\u{df}e\r\n",
    ]
    .iter()
    .enumerate()
    {
        let r = s.send_mail(&format!("sender{i}@partner.test"), &["alice@example.test"], body);
        queued_id(&r);
    }
    queued_id(&s.send_mail(
        "x@partner.test",
        &["support@example.test"],
        "Subject: for support\r\n\r\nhelp\r\n",
    ));
    assert_eq!(
        server
            .wait_mailbox("alice", 3, Duration::from_secs(10))
            .len(),
        3
    );
    assert_eq!(
        server
            .wait_mailbox("support", 1, Duration::from_secs(10))
            .len(),
        1
    );
}

#[test]
fn python_poplib_and_fetchmail_read_what_smtp_delivered() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), false));
    deliver(&server);
    let args = [
        "--pop3".to_string(),
        server.addr("pop3").port().to_string(),
        "--pop3s".to_string(),
        server.addr("pop3s").port().to_string(),
        "--password".to_string(),
        PASSWORD.to_string(),
    ];
    common::run_python_interop("pop3_interop.py", &args, &server, "10 passed, 0 failed");
}

struct Pop {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Pop {
    fn connect(addr: std::net::SocketAddr) -> Pop {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut p = Pop {
            r: BufReader::new(s.try_clone().expect("clone")),
            w: s,
        };
        assert!(p.line().starts_with("+OK"));
        p
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read");
        l
    }
    fn cmd(&mut self, c: &str) -> String {
        self.w
            .write_all(format!("{c}\r\n").as_bytes())
            .expect("write");
        self.line()
    }
    fn multi(&mut self, c: &str) -> Vec<String> {
        assert!(self.cmd(c).starts_with("+OK"));
        let mut out = Vec::new();
        loop {
            let l = self.line();
            if l == ".\r\n" {
                return out;
            }
            out.push(l.trim_end().to_string());
        }
    }
}

#[test]
fn uidls_survive_a_restart_and_are_never_reused() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = config(dir.path(), true);
    let mut server = TestServer::start_in(dir.clone(), &cfg);
    deliver(&server);
    let mut p = Pop::connect(server.addr("pop3"));
    assert!(p.cmd("USER alice").starts_with("+OK"));
    assert!(
        p.cmd(&format!("PASS {PASSWORD}"))
            .starts_with("+OK 3 messages")
    );
    let before = p.multi("UIDL");
    assert!(p.cmd("DELE 3").starts_with("+OK"));
    assert!(p.cmd("QUIT").starts_with("+OK"));
    assert_eq!(server.stop(), Some(0));

    let server = TestServer::start_in(dir.clone(), &cfg);
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(
        "x@partner.test",
        &["alice@example.test"],
        "Subject: four\r\n\r\nnew\r\n",
    ));
    server.wait_mailbox("alice", 3, Duration::from_secs(10));
    let mut p = Pop::connect(server.addr("pop3"));
    assert!(p.cmd("USER alice").starts_with("+OK"));
    assert!(
        p.cmd(&format!("PASS {PASSWORD}"))
            .starts_with("+OK 3 messages")
    );
    let after = p.multi("UIDL");
    assert_eq!(after[..2], before[..2], "UIDLs kept across the restart");
    let uid = |l: &str| l.split_whitespace().nth(1).expect("uid").to_string();
    assert_ne!(
        uid(&after[2]),
        uid(&before[2]),
        "the deleted message's UIDL is not reused"
    );
    assert!(p.cmd("QUIT").starts_with("+OK"));
}

#[test]
fn failed_logins_are_slowed_then_disconnected() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), true));
    let mut p = Pop::connect(server.addr("pop3"));
    let start = Instant::now();
    for _ in 0..3 {
        assert!(p.cmd("USER alice").starts_with("+OK"));
        assert!(p.cmd("PASS wrong").starts_with("-ERR [AUTH]"));
    }
    assert!(p.line().starts_with("-ERR [AUTH] too many"));
    assert_eq!(p.r.read_line(&mut String::new()).unwrap_or(0), 0, "closed");
    assert!(
        start.elapsed() >= Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    assert!(server.wait_log(&["rejected", "POP3 login"], Duration::from_secs(5)));
}

#[test]
fn idle_sessions_time_out() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = config(dir.path(), true).replace("[pop3]\n", "[pop3]\nidle_timeout = \"1s\"\n");
    let server = TestServer::start_in(dir, &cfg);
    let mut p = Pop::connect(server.addr("pop3"));
    let started = std::time::Instant::now();
    assert!(p.line().starts_with("-ERR"));
    common::assert_about(
        started.elapsed(),
        Duration::from_secs(1),
        "pop3.idle_timeout",
    );
}

/// Upgrade: mailboxes in the first keyspace (the spool's `mailbox` tree,
/// written here by that code) are carried into the message store at the
/// daemon's first start: POP3 serves them with the same UIDLs and
/// contents, a POP3 deletion is the store's, a restart carries nothing
/// over twice, and new mail continues the UIDs.
#[test]
fn old_mailboxes_are_served_from_the_store_after_an_upgrade() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let bodies = [
        "Return-Path: <a@partner.test>\r\nDelivered-To: alice@example.test\r\nSubject: old one\r\n\r\nfirst\r\n",
        "Return-Path: <b@partner.test>\r\nDelivered-To: alice@example.test\r\nSubject: old two\r\n\r\nsecond\r\n",
        "Return-Path: <c@partner.test>\r\nDelivered-To: alice@example.test\r\nSubject: old three\r\n\r\n.dot\r\nthird\r\n",
    ];
    let uid_validity = {
        let spool = petrel::spool::Spool::open(&dir.path().join("spool")).expect("spool");
        let old = petrel::mailbox::MailboxStore::open(&spool);
        let mut metas = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            metas.push(
                old.append(
                    "alice",
                    b.as_bytes(),
                    petrel::spool::QueueId(7000 + i as u64),
                    None,
                )
                .expect("append"),
            );
        }
        old.delete("alice", &metas[1]).expect("delete");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(spool.commit()).expect("commit");
        old.state("alice").expect("state").uid_validity
    };
    let cfg = config(dir.path(), true);
    let mut server = TestServer::start_in(dir.clone(), &cfg);
    assert!(server.wait_log(
        &["mailboxes carried over", "messages=2"],
        Duration::from_secs(5)
    ));
    let mut p = Pop::connect(server.addr("pop3"));
    assert!(p.cmd("USER alice").starts_with("+OK"));
    assert!(
        p.cmd(&format!("PASS {PASSWORD}"))
            .starts_with("+OK 2 messages")
    );
    assert_eq!(
        p.multi("UIDL"),
        vec![format!("1 {uid_validity}.1"), format!("2 {uid_validity}.3")],
        "the same UIDLs as before the upgrade"
    );
    let retr = p.multi("RETR 2").join("\r\n") + "\r\n";
    assert_eq!(
        retr,
        bodies[2].replace("\r\n.dot", "\r\n..dot"),
        "the same octets"
    );
    assert!(p.cmd("DELE 1").starts_with("+OK"));
    assert!(p.cmd("QUIT").starts_with("+OK"));
    let left = server.mailbox("alice");
    assert_eq!(left.len(), 1, "POP3's deletion is the store's: {left:?}");
    assert_eq!(server.stop(), Some(0));

    let server = TestServer::start_in(dir.clone(), &cfg);
    assert_eq!(
        server.mailbox("alice").len(),
        1,
        "nothing is carried over twice"
    );
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(
        "x@partner.test",
        &["alice@example.test"],
        "Subject: new\r\n\r\nnew\r\n",
    ));
    let now = server.wait_mailbox("alice", 2, Duration::from_secs(10));
    assert_eq!(
        now[1]["uid"], 4,
        "new mail continues after the old UIDs: {now:?}"
    );
}
