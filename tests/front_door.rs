//! The guarded front door: STARTTLS (with pipelined input discarded),
//! implicit TLS, the self-signed fallback, authenticated submission (PLAIN,
//! LOGIN, failures slowed then disconnected, sender ownership, added
//! headers), live reload, and the run-time protocol trace with AUTH masked.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Smtp, TestServer, base_config, free_port, queued_id, standard_dns};

const PASSWORD: &str = "correct horse battery";

fn hash() -> String {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| petrel::auth::hash_password(PASSWORD).expect("hash"))
        .clone()
}

/// A daemon with an `mx` listener and a `submission` listener (STARTTLS,
/// AUTH required), a password for alice, and `inbound` in `[smtp.inbound]`.
fn server_with(inbound: &str, submission_tls: &str) -> TestServer {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = config_text(dir.path(), inbound, submission_tls);
    TestServer::start_in(dir, &cfg)
}

fn config_text(dir: &std::path::Path, inbound: &str, submission_tls: &str) -> String {
    let base = base_config(&dir.join("spool"), standard_dns(), free_port(), true, true).replace(
        "addresses = [\"alice@example.test\", \"a.smith@example.org\"]",
        &format!(
            "password = \"{}\"\naddresses = [\"alice@example.test\", \"a.smith@example.org\"]",
            hash()
        ),
    );
    format!(
        "{base}\n[[listeners]]\nname = \"submission\"\nprotocol = \"submission\"\nbind = \"127.0.0.1:0\"\ntls = \"{submission_tls}\"\nauth = \"required\"\n\n[smtp.inbound]\nrelay_from = []\n{inbound}\n"
    )
}

/// A blocking TLS client over an SMTP connection.
struct TlsSmtp {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsSmtp {
    fn handshake(tcp: TcpStream) -> TlsSmtp {
        let cfg = petrel::tls::opportunistic_client();
        let conn = rustls::ClientConnection::new(cfg, "mx.example.test".try_into().expect("name"))
            .expect("client");
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).expect("TLS handshake");
        }
        TlsSmtp {
            stream: BufReader::new(s),
        }
    }

    fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).unwrap_or(0) == 0 {
                return (0, text);
            }
            text.push_str(line.get(4..).unwrap_or("").trim_end());
            text.push('\n');
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap_or(0), text);
            }
        }
    }

    fn cmd(&mut self, c: &str) -> (u16, String) {
        self.stream
            .get_mut()
            .write_all(format!("{c}\r\n").as_bytes())
            .expect("write");
        self.reply()
    }

    fn raw(&mut self, b: &[u8]) {
        self.stream.get_mut().write_all(b).expect("write");
    }
}

/// Connects, says EHLO, STARTTLS, and EHLO again inside TLS.
fn starttls(addr: SocketAddr) -> TlsSmtp {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut r = BufReader::new(tcp.try_clone().expect("clone"));
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    assert!(line.starts_with("220"), "{line}");
    let mut w = tcp.try_clone().expect("clone");
    w.write_all(b"EHLO client.test\r\n").expect("write");
    let mut ehlo = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("ehlo");
        ehlo.push_str(&line);
        if line.as_bytes()[3] == b' ' {
            break;
        }
    }
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    w.write_all(b"STARTTLS\r\n").expect("write");
    line.clear();
    r.read_line(&mut line).expect("220");
    assert!(line.starts_with("220 2.0.0"), "{line}");
    let mut t = TlsSmtp::handshake(tcp);
    let (code, text) = t.cmd("EHLO client.test");
    assert_eq!(code, 250);
    assert!(text.contains("AUTH PLAIN LOGIN"), "{text}");
    assert!(!text.contains("STARTTLS"), "{text}");
    t
}

fn plain(user: &str, pass: &str) -> String {
    B64.encode(format!("\0{user}\0{pass}"))
}

#[test]
fn submission_with_auth_plain_over_starttls() {
    let server = server_with("", "starttls");
    let mut t = starttls(server.addr("submission"));
    assert_eq!(
        t.cmd("MAIL FROM:<alice@example.test>").0,
        530,
        "MAIL before AUTH"
    );
    assert_eq!(
        t.cmd(&format!("AUTH PLAIN {}", plain("alice", PASSWORD))).0,
        235
    );
    let r = t.cmd("MAIL FROM:<bob@example.test>");
    assert_eq!(r.0, 553, "{r:?}");
    assert!(r.1.starts_with("5.7.1"));
    assert_eq!(t.cmd("MAIL FROM:<a.smith@example.org>").0, 250);
    assert_eq!(t.cmd("RCPT TO:<bob@example.test>").0, 250);
    assert_eq!(
        t.cmd("RCPT TO:<carol@partner.test>").0,
        250,
        "authenticated users may relay"
    );
    assert_eq!(t.cmd("DATA").0, 354);
    t.raw(b"Subject: submitted\r\n\r\nno date, no message-id\r\n.\r\n");
    let r = t.reply();
    assert_eq!(r.0, 250, "{r:?}");
    let m = server.wait_mailbox("bob", 1, Duration::from_secs(10));
    assert_eq!(m.len(), 1);
    let raw = String::from_utf8(server.mailbox_message("bob", 1)).expect("utf-8");
    assert!(
        raw.contains("\r\nDate: ") && raw.contains("\r\nMessage-ID: <"),
        "{raw}"
    );
    assert!(raw.contains("with ESMTPSA id"), "{raw}");
}

#[test]
fn auth_login_and_malformed_auth() {
    let server = server_with("", "starttls");
    let mut t = starttls(server.addr("submission"));
    assert_eq!(t.cmd("AUTH CRAM-MD5").0, 504);
    assert_eq!(t.cmd("AUTH PLAIN !!notbase64!!").0, 501);
    assert_eq!(
        t.cmd(&format!("AUTH PLAIN {}", B64.encode("no-nuls-here")))
            .0,
        501
    );
    assert_eq!(t.cmd("AUTH LOGIN").0, 334);
    assert_eq!(t.cmd(&B64.encode("alice")).0, 334);
    assert_eq!(t.cmd(&B64.encode(PASSWORD)).0, 235);
    assert_eq!(t.cmd("AUTH LOGIN").0, 503, "already authenticated");
}

#[test]
fn failed_auth_is_slowed_then_disconnected() {
    let server = server_with("", "starttls");
    let mut t = starttls(server.addr("submission"));
    let start = Instant::now();
    for _ in 0..2 {
        let r = t.cmd(&format!("AUTH PLAIN {}", plain("alice", "wrong")));
        assert_eq!(r.0, 535);
        assert!(r.1.starts_with("5.7.8"));
    }
    let r = t.cmd(&format!("AUTH PLAIN {}", plain("alice", "wrong again")));
    assert_eq!(r.0, 535);
    assert_eq!(t.reply().0, 421);
    assert!(
        start.elapsed() >= Duration::from_secs(6),
        "failures were not slowed: {:?}",
        start.elapsed()
    );
    assert!(server.wait_log(
        &["rejected", "stage=AUTH", "code=535"],
        Duration::from_secs(5)
    ));
}

#[test]
fn auth_needs_tls_unless_plaintext_is_allowed() {
    let server = server_with("", "starttls");
    let (mut s, _) = Smtp::connect(server.addr("submission"));
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    let r = s.cmd(&format!("AUTH PLAIN {}", plain("alice", PASSWORD)));
    assert_eq!(r.0, 530, "{r:?}");
    assert!(r.1.starts_with("5.7.0"));
    drop(s);
    let open = server_with("allow_plaintext_auth = true", "none");
    let (mut s, _) = Smtp::connect(open.addr("submission"));
    let (code, text) = s.cmd("EHLO client.test");
    assert_eq!(code, 250);
    assert!(text.contains("AUTH PLAIN LOGIN"), "{text}");
    assert_eq!(
        s.cmd(&format!(
            "AUTH PLAIN {}",
            plain("alice@example.test", PASSWORD)
        ))
        .0,
        235
    );
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let server = server_with("", "starttls");
    let tcp = TcpStream::connect(server.addr("submission")).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut r = BufReader::new(tcp.try_clone().expect("clone"));
    let mut w = tcp.try_clone().expect("clone");
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    w.write_all(b"EHLO client.test\r\n").expect("write");
    loop {
        line.clear();
        r.read_line(&mut line).expect("ehlo");
        if line.as_bytes()[3] == b' ' {
            break;
        }
    }
    // CVE-2011-0411: commands sent with STARTTLS must not run inside TLS.
    w.write_all(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.test>\r\n")
        .expect("write");
    line.clear();
    r.read_line(&mut line).expect("220");
    assert!(line.starts_with("220"), "{line}");
    assert!(
        r.buffer().is_empty(),
        "the server answered pipelined commands in plain text"
    );
    let mut t = TlsSmtp::handshake(tcp);
    let (code, _) = t.cmd("RCPT TO:<bob@example.test>");
    assert_eq!(code, 503, "the session starts over after STARTTLS");
    assert!(server.wait_log(
        &["discarded input pipelined after STARTTLS"],
        Duration::from_secs(5)
    ));
}

#[test]
fn implicit_tls_listener_and_self_signed_certificate() {
    let server = server_with("", "implicit");
    let tcp = TcpStream::connect(server.addr("submission")).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut t = TlsSmtp::handshake(tcp);
    let (code, text) = t.reply();
    assert_eq!(code, 220, "{text}");
    let (code, text) = t.cmd("EHLO client.test");
    assert_eq!(code, 250);
    assert!(
        text.contains("AUTH PLAIN LOGIN") && !text.contains("STARTTLS"),
        "{text}"
    );
    assert!(server.dir.path().join("spool/tls/cert.pem").exists());
    assert!(
        server.log().contains("self-signed certificate"),
        "{}",
        server.log()
    );
}

#[test]
fn configured_certificate_is_served() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let pair =
        rcgen::generate_simple_self_signed(vec!["mx.example.test".to_string()]).expect("cert");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, pair.cert.pem()).expect("write");
    std::fs::write(&key, pair.signing_key.serialize_pem()).expect("write");
    let cfg = format!(
        "{}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        config_text(dir.path(), "", "implicit"),
        cert.display(),
        key.display()
    );
    let server = TestServer::start_in(dir, &cfg);
    let tcp = TcpStream::connect(server.addr("submission")).expect("connect");
    let t = TlsSmtp::handshake(tcp);
    let served = t
        .stream
        .get_ref()
        .conn
        .peer_certificates()
        .expect("certificates")[0]
        .clone();
    assert_eq!(served.as_ref(), pair.cert.der().as_ref());
    assert!(
        !server.dir.path().join("spool/tls").exists(),
        "no self-signed pair when one is configured"
    );
}

#[test]
fn reload_applies_to_new_sessions_and_refuses_a_bad_file() {
    let mut server = server_with("", "starttls");
    let mut old = Smtp::ready(server.mx());
    assert_eq!(old.cmd("MAIL FROM:<x@partner.test>").0, 250);
    assert_eq!(old.cmd("RCPT TO:<carol@elsewhere.test>").0, 554);
    let good = std::fs::read_to_string(&server.config_path)
        .expect("cfg")
        .replace("relay_from = []", "relay_from = [\"127.0.0.0/8\"]");
    std::fs::write(&server.config_path, &good).expect("write");
    let out = server.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let mut new = Smtp::ready(server.mx());
    assert_eq!(new.cmd("MAIL FROM:<x@partner.test>").0, 250);
    assert_eq!(
        new.cmd("RCPT TO:<carol@elsewhere.test>").0,
        250,
        "new sessions use the new configuration"
    );
    assert_eq!(old.cmd("NOOP").0, 250, "live sessions are not dropped");

    std::fs::write(
        &server.config_path,
        good.replace("retry_initial = \"1s\"", "retry_initial = \"soon\""),
    )
    .expect("write");
    let out = server.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("queue.retry_initial"),
        "{out:?}"
    );
    let mut after = Smtp::ready(server.mx());
    assert_eq!(after.cmd("MAIL FROM:<x@partner.test>").0, 250);
    assert_eq!(
        after.cmd("RCPT TO:<carol@elsewhere.test>").0,
        250,
        "the running configuration stays"
    );

    // SIGHUP reloads too.
    std::fs::write(
        &server.config_path,
        good.replace("relay_from = [\"127.0.0.0/8\"]", "relay_from = []"),
    )
    .expect("write");
    let reloads = server.log_count(&["configuration reloaded"]);
    server.signal(common::libc_sig::HUP);
    assert!(server.wait_log_count(
        &["configuration reloaded"],
        reloads + 1,
        Duration::from_secs(5)
    ));
    let mut hup = Smtp::ready(server.mx());
    assert_eq!(hup.cmd("MAIL FROM:<x@partner.test>").0, 250);
    assert_eq!(hup.cmd("RCPT TO:<carol@elsewhere.test>").0, 554);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn debug_smtp_traces_at_run_time_with_secrets_masked() {
    let server = server_with("allow_plaintext_auth = true", "none");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("NOOP quiet").0, 250);
    assert!(server.cli(&["debug", "smtp", "3"]).status.success());
    let mut s = Smtp::ready(server.addr("submission"));
    let secret = plain("alice", PASSWORD);
    assert_eq!(s.cmd(&format!("AUTH PLAIN {secret}")).0, 235);
    let id = queued_id(&s.send_mail(
        "alice@example.test",
        &["bob@example.test"],
        "Subject: traced\r\n\r\ntraced body line\r\n",
    ));
    assert!(server.wait_log(
        &["C: MAIL FROM:<alice@example.test>"],
        Duration::from_secs(5)
    ));
    assert!(server.wait_log(&["S: 250 2.0.0 Ok: queued as", &id], Duration::from_secs(5)));
    assert!(
        server.wait_log(&["C: traced body line"], Duration::from_secs(5)),
        "level 3 shows message lines"
    );
    assert!(server.wait_log(&["C: AUTH PLAIN ****"], Duration::from_secs(5)));
    let log = server.log();
    assert!(!log.contains(&secret), "the AUTH secret was logged");
    assert!(
        !log.contains("NOOP quiet"),
        "nothing was traced before debug was set"
    );
    assert!(server.cli(&["debug", "smtp", "0"]).status.success());
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("NOOP after").0, 250);
    // A barrier in the daemon's log: a trace of the NOOP would have been
    // written before its reply, so before this line.
    assert!(server.cli(&["debug", "smtp", "1"]).status.success());
    assert!(server.wait_log(&["smtp_debug set", "level=1"], Duration::from_secs(5)));
    assert!(!server.log().contains("NOOP after"));
    assert_eq!(
        server.cli(&["debug", "smtp", "7"]).status.code(),
        Some(2),
        "levels are 0 to 3"
    );
}

#[test]
fn connection_limits_and_a_flood_leave_room_for_others() {
    let server = server_with("max_connections_per_client = 20", "none");
    let mut flood = Vec::new();
    for _ in 0..500 {
        if let Ok(c) = TcpStream::connect(server.mx()) {
            flood.push(c);
        }
    }
    // A flooder beyond its share is turned away with 421.
    let mut last = flood.pop().expect("flood");
    last.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let n = last.read(&mut buf).unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("421 4.7.0"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // A well-behaved client from another address is still served.
    let mut good = Smtp::ready_from(server.mx(), "127.0.0.10".parse().expect("ip"));
    queued_id(&good.send_mail(
        "x@partner.test",
        &["alice@example.test"],
        "Subject: still served\r\n\r\nok\r\n",
    ));
    drop(flood);
}

#[test]
fn slow_data_is_timed_out() {
    let server = server_with("data_timeout = \"1s\"", "none");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<x@partner.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send_raw(b"Subject: slow\r\n");
    let started = std::time::Instant::now();
    assert_eq!(s.reply().0, 421);
    common::assert_about(started.elapsed(), Duration::from_secs(1), "data_timeout");
    assert!(server.mailbox("alice").is_empty());
}

#[test]
fn garbage_nul_bytes_and_thousands_of_rcpts_do_not_wedge_the_server() {
    let server = server_with("max_errors = 10000\nmax_recipients = 100", "none");
    let mut s = Smtp::ready(server.mx());
    s.send_raw(b"\x00\x01\x02\xff\xfe garbage\r\n");
    assert_eq!(s.reply().0, 500);
    assert_eq!(s.cmd("MAIL FROM:<\"unbalanced@partner.test>").0, 501);
    assert_eq!(s.cmd("MAIL FROM:<x@partner.test>").0, 250);
    let mut batch = String::new();
    for i in 0..3000 {
        batch.push_str(&format!("RCPT TO:<alice{i}@example.test>\r\n"));
    }
    s.send_raw(batch.as_bytes());
    for _ in 0..3000 {
        let code = s.reply().0;
        assert!(code == 550 || code == 452, "{code}");
    }
    assert_eq!(s.cmd("RSET").0, 250);
    let mut fresh = Smtp::ready(server.mx());
    queued_id(&fresh.send_mail(
        "x@partner.test",
        &["alice@example.test"],
        "Subject: after garbage\r\n\r\nok\r\n",
    ));
}
