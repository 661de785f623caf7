//! IMAP against the real daemon: Python's imaplib (tests/interop/
//! imap_interop.py) and curl read and change what SMTP delivered; scripted
//! Thunderbird and Outlook sessions (imap_clients.py) compress and idle;
//! mbsync and offlineimap3 (imap_sync.py) synchronise both ways; raw
//! sockets check the refusals a hostile or broken client meets.

mod common;

use std::io::Read;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::imap::Imap;
use common::{Smtp, TestServer, base_config, free_port, queued_id, standard_dns};

const PASSWORD: &str = "imap secret";

fn config(dir: &std::path::Path, plaintext: bool) -> String {
    let hash = petrel::auth::hash_password(PASSWORD).expect("hash");
    let base = base_config(&dir.join("spool"), standard_dns(), free_port(), true, true).replace(
        "addresses = [\"alice@example.test\", \"a.smith@example.org\"]",
        &format!(
            "password = \"{hash}\"\nquota = \"50MiB\"\naddresses = [\"alice@example.test\", \"a.smith@example.org\"]"
        ),
    );
    format!(
        "{base}\n[[listeners]]\nname = \"imap\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:0\"\ntls = \"starttls\"\n\n\
         [imap]\nallow_plaintext_auth = {plaintext}\nmax_connections_per_user = 4\n[smtp.inbound]\nmax_message_size = \"1MiB\"\n"
    )
}

fn deliver(server: &TestServer) {
    let mut s = Smtp::ready(server.mx());
    for (i, (subject, body)) in [
        ("one", "first body"),
        ("two", "second body"),
        ("three", "third body"),
    ]
    .iter()
    .enumerate()
    {
        let msg = format!(
            "Subject: {subject}\r\nFrom: Sender {i} <sender{i}@partner.test>\r\nTo: alice@example.test\r\n\r\n{body}\r\n"
        );
        queued_id(&s.send_mail(
            &format!("sender{i}@partner.test"),
            &["alice@example.test"],
            &msg,
        ));
    }
    queued_id(&s.send_mail(
        "x@partner.test",
        &["support@example.test"],
        "Subject: for support\r\n\r\nhelp\r\n",
    ));
    server.wait_mailbox("alice", 3, Duration::from_secs(10));
    server.wait_mailbox("support", 1, Duration::from_secs(10));
}

/// The arguments every interop script takes: the IMAP and SMTP ports and
/// alice's password.
fn interop_args(server: &TestServer) -> Vec<String> {
    vec![
        "--imap".to_string(),
        server.addr("imap").port().to_string(),
        "--smtp".to_string(),
        server.mx().port().to_string(),
        "--password".to_string(),
        PASSWORD.to_string(),
    ]
}

#[test]
fn python_imaplib_reads_and_changes_what_smtp_delivered() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), false));
    deliver(&server);
    let args = interop_args(&server);
    common::run_python_interop("imap_interop.py", &args, &server, "12 passed, 0 failed");
}

#[test]
fn thunderbird_and_outlook_sessions_compress_and_idle() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), false));
    deliver(&server);
    let args = interop_args(&server);
    common::run_python_interop("imap_clients.py", &args, &server, "4 passed, 0 failed");
}

#[test]
fn mbsync_and_offlineimap_synchronise_both_ways() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let imaps = "[[listeners]]\nname = \"imaps\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:0\"\ntls = \"implicit\"\n";
    let server = TestServer::start_in(
        dir.clone(),
        &format!("{imaps}{}", config(dir.path(), false)),
    );
    deliver(&server);
    let mut args = interop_args(&server);
    args.extend([
        "--imaps".to_string(),
        server.addr("imaps").port().to_string(),
        "--cert".to_string(),
        dir.path().join("spool/tls/cert.pem").display().to_string(),
    ]);
    common::run_python_interop("imap_sync.py", &args, &server, "5 passed, 0 failed");
}

#[test]
fn curl_lists_and_fetches_over_starttls() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not installed; skipped");
        return;
    }
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), false));
    deliver(&server);
    let port = server.addr("imap").port();
    let user = format!("alice:{PASSWORD}");
    let curl = |url: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "--ssl-reqd",
                "-k",
                "--max-time",
                "20",
                "-u",
                &user,
                url,
            ])
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = curl(&format!("imap://127.0.0.1:{port}/"));
    assert!(list.contains("INBOX") && list.contains("\\Sent"), "{list}");
    let msg = curl(&format!("imap://127.0.0.1:{port}/INBOX;UID=2"));
    assert!(
        msg.contains("Subject: two") && msg.contains("second body"),
        "{msg}"
    );
}

#[test]
fn broken_and_hostile_input_gets_bad_and_no_not_a_crash() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), true));
    deliver(&server);
    let mut c = Imap::connect(server.addr("imap"));
    for (bad, want) in [
        ("a1 FROB", "a1 BAD"),
        ("a2 LOGIN", "a2 BAD"),
        ("a3 SELECT INBOX", "a3 BAD"),
        ("a4 LOGIN alice \"unterminated", "a4 BAD"),
    ] {
        let r = c.cmd(
            bad.split(' ').next().unwrap(),
            &bad[bad.find(' ').unwrap() + 1..],
        );
        assert!(r.last().unwrap().starts_with(want), "{bad}: {r:?}");
    }
    assert!(
        c.cmd("l", &format!("LOGIN alice \"{PASSWORD}\""))
            .last()
            .unwrap()
            .starts_with("l OK")
    );
    assert!(
        c.cmd("s", "SELECT INBOX")
            .last()
            .unwrap()
            .starts_with("s OK [READ-WRITE]")
    );
    for (bad, want) in [
        ("f1 FETCH 9 FLAGS", "f1 BAD"),
        ("f2 FETCH 1 (BODY[99])", "f2 OK"),
        ("f3 FETCH 1 (BODY[HEADER.FIELDS ()])", "f3 BAD"),
        ("f4 SEARCH CHARSET KOI8-R ALL", "f4 NO [BADCHARSET"),
        ("f5 STORE 1 +FLAGS (\\Bogus)", "f5 BAD"),
        ("f6 COPY 1 Nowhere", "f6 NO [TRYCREATE]"),
        ("f7 SEARCH NOT NOT NOT", "f7 BAD"),
        ("f8 UID FETCH 4000000000:* FLAGS", "f8 OK"),
    ] {
        let r = c.cmd(
            bad.split(' ').next().unwrap(),
            &bad[bad.find(' ').unwrap() + 1..],
        );
        assert!(r.last().unwrap().starts_with(want), "{bad}: {r:?}");
    }
    // A synchronising literal over the size limit is refused before it
    // is sent: NO [TOOBIG], no continuation; the session goes on.
    c.send(b"t1 APPEND INBOX {5000000}\r\n");
    let l = c.line();
    assert!(l.starts_with("t1 NO [TOOBIG]"), "{l}");
    // A literal within the limit: continuation, then the octets.
    c.send(b"t2 APPEND INBOX {20}\r\n");
    assert!(c.line().starts_with("+ "));
    c.send(b"Subject: lit\r\n\r\nabcd\r\n");
    let r = c.until("t2");
    assert!(r.last().unwrap().starts_with("t2 OK [APPENDUID "), "{r:?}");
    // A non-synchronising literal over the limit ends the session.
    c.send(b"t3 APPEND INBOX {5000000+}\r\n");
    let l = c.line();
    assert!(l.starts_with("* BYE [TOOBIG]"), "{l}");
    let mut rest = String::new();
    let _ = c.r.read_to_string(&mut rest);
    // Still serving.
    let mut d = Imap::connect(server.addr("imap"));
    assert!(d.cmd("x", "LOGOUT").last().unwrap().starts_with("x OK"));
}

#[test]
fn sessions_per_user_are_limited_and_failed_logins_slowed() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), true));
    let mut open = Vec::new();
    for i in 0..4 {
        let mut c = Imap::connect(server.addr("imap"));
        let r = c.cmd(&format!("l{i}"), &format!("LOGIN alice \"{PASSWORD}\""));
        assert!(r.last().unwrap().contains("OK"), "{r:?}");
        open.push(c);
    }
    let mut c = Imap::connect(server.addr("imap"));
    let r = c.cmd("l5", &format!("LOGIN alice \"{PASSWORD}\""));
    assert!(r.last().unwrap().starts_with("l5 NO [LIMIT]"), "{r:?}");
    drop(open.pop());
    // The place comes back when a session ends.
    let mut ok = false;
    for _ in 0..50 {
        let r = c.cmd("l6", &format!("LOGIN alice \"{PASSWORD}\""));
        if r.last().unwrap().starts_with("l6 OK") {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "a session's end frees its place");

    let mut c = Imap::connect(server.addr("imap"));
    let start = std::time::Instant::now();
    for i in 0..3 {
        let r = c.cmd(&format!("b{i}"), "LOGIN alice wrong");
        assert!(
            r.last().unwrap().contains("NO [AUTHENTICATIONFAILED]"),
            "{r:?}"
        );
    }
    assert!(c.line().starts_with("* BYE"));
    assert!(
        start.elapsed() >= Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    assert!(
        server.wait_log(&["authentication failed"], Duration::from_secs(5))
            || server.log().contains("IMAP")
    );
}

/// Accepted logins are remembered for a while (session::login); a password
/// changed by a reload must still take effect at once: the old one is
/// refused on the next login, the new one accepted.
#[test]
fn a_password_changed_by_reload_takes_effect_at_once() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = config(dir.path(), true);
    let server = TestServer::start_in(dir.clone(), &cfg);
    let addr = server.addr("imap");
    let login = |password: &str| {
        let mut c = Imap::connect(addr);
        let reply = c.cmd("a", &format!("LOGIN alice \"{password}\""));
        reply.last().expect("tagged").starts_with("a OK")
    };
    assert!(login(PASSWORD), "first login");
    assert!(login(PASSWORD), "second login, remembered");
    let old_hash = cfg
        .lines()
        .find_map(|l| l.strip_prefix("password = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("alice's hash")
        .to_string();
    let new_hash = petrel::auth::hash_password("a new secret").expect("hash");
    std::fs::write(&server.config_path, cfg.replace(&old_hash, &new_hash)).expect("write");
    let out = server.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!login(PASSWORD), "the old password after the change");
    assert!(login("a new secret"), "the new password");
}
