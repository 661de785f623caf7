//! What an administrator relies on around delivery: `requeue` is not a
//! failed attempt and keeps the back-off; `sendmail` mail carries a
//! `Received:` trace; failed remote deliveries and failed logins say who
//! was involved; `debug smtp 3` traces the outbound client too; the
//! self-signed certificate is issued to `server.hostname`; outbound
//! connections leave from `smtp.outbound.source_address`; JSON logs are
//! one object per line; `config show` fills in defaults, `--changed` not.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::sink::{Sink, SinkOptions};
use common::{Smtp, TestServer, free_port, queued_id};

const WAIT: Duration = Duration::from_secs(15);

fn send(server: &TestServer, to: &str, subject: &str) -> String {
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(
        "alice@example.test",
        &[to],
        &format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n"),
    ))
}

fn attempts_logged(server: &TestServer, id: &str) -> usize {
    server
        .log()
        .lines()
        .filter(|l| l.contains(" delivery") && l.contains(&format!("queue_id={id}")))
        .count()
}

fn wait_attempts(server: &TestServer, id: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    while attempts_logged(server, id) < n {
        assert!(
            Instant::now() < deadline,
            "no attempt {n}: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (attempts, seconds until the next attempt) of the message's only
/// recipient, from `show` and `mailq --json`.
fn schedule(server: &TestServer, id: &str) -> (u32, i64) {
    let show = String::from_utf8_lossy(&server.cli(&["show", id]).stdout).into_owned();
    let attempts = show
        .split("attempts=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("attempts in {show}"));
    let entry = server
        .mailq()
        .into_iter()
        .find(|e| e["queue_id"] == id)
        .expect("in the queue");
    let next = entry["recipients"][0]["next_attempt"]
        .as_i64()
        .expect("next_attempt");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    (attempts, next - now)
}

#[test]
fn requeue_and_release_are_not_failed_attempts_and_keep_the_back_off() {
    // The sink defers defer@partner.test with 450.
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let server = TestServer::start_with(
        "",
        "[queue]\nretry_initial = \"20s\"\nretry_max = \"1h\"",
        sink.addr.port(),
    );
    let id = send(&server, "defer@partner.test", "requeued");
    wait_attempts(&server, &id, 1);
    let (attempts, wait) = schedule(&server, &id);
    assert_eq!(attempts, 1);
    assert!((17..=20).contains(&wait), "first retry in {wait} s");
    // Round 2 by `requeue`, round 3 by `hold` and `release`.
    for round in 2..=3 {
        let ops: &[&str] = if round == 2 {
            &["requeue"]
        } else {
            &["hold", "release"]
        };
        for op in ops {
            let out = server.cli(&[op, &id]);
            assert!(
                out.status.success(),
                "{op}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        wait_attempts(&server, &id, round);
        let (attempts, wait) = schedule(&server, &id);
        // The administrator's round is not one of the schedule: still one
        // counted attempt, and the next retry 20 s away (not 40 s, 80 s).
        assert_eq!(attempts, 1, "after {ops:?}");
        assert!(
            (17..=20).contains(&wait),
            "after {ops:?}: next retry in {wait} s"
        );
    }
}

#[test]
fn sendmail_submission_gets_a_received_header() {
    let server = TestServer::start("");
    let out = server.cli_stdin(
        &["sendmail", "-f", "bob@example.test", "alice@example.test"],
        b"Subject: from cron\n\nhello\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = server.wait_mailbox("alice", 1, WAIT);
    assert_eq!(list.len(), 1);
    let raw = String::from_utf8_lossy(&server.mailbox_message("alice", 1)).into_owned();
    let head = raw.split("\r\n\r\n").next().unwrap_or("");
    let received = head
        .split("\r\n")
        .position(|l| l.starts_with("Received: by mx.example.test (petrel, from userid "));
    let subject = head.split("\r\n").position(|l| l == "Subject: from cron");
    assert!(
        received.is_some() && received < subject,
        "no Received: above the message's own fields: {raw}"
    );
    assert!(raw.contains("for <alice@example.test>;"), "{raw}");
}

#[test]
fn a_failed_remote_delivery_is_logged_with_its_relay() {
    // Nothing listens for partner.test on this port.
    let server = TestServer::start_with("", "", free_port());
    let id = send(&server, "dave@partner.test", "unreachable");
    assert!(
        server.wait_log(&["delivery", &id, "status=deferred"], WAIT),
        "{}",
        server.log()
    );
    let line = server
        .log()
        .lines()
        .find(|l| l.contains(" delivery") && l.contains(&id))
        .expect("delivery line")
        .to_string();
    assert!(line.contains("relay=partner.test"), "{line}");
    assert!(!line.contains("relay=local"), "{line}");
}

#[test]
fn a_failed_login_is_logged_with_the_login_name() {
    let server = TestServer::start_with(
        "allow_plaintext_auth = true",
        "[[listeners]]\nname = \"sub\"\nprotocol = \"submission\"\nbind = \"127.0.0.1:0\"\nauth = \"optional\"\n\
         [[listeners]]\nname = \"pop\"\nprotocol = \"pop3\"\nbind = \"127.0.0.1:0\"\n\
         [pop3]\nallow_plaintext_auth = true",
        free_port(),
    );
    let (mut s, g) = Smtp::connect(server.addr("sub"));
    assert_eq!(g.0, 220);
    assert_eq!(s.cmd("EHLO client.test").0, 250);
    let creds = base64::engine::general_purpose::STANDARD.encode(b"\0mallory\0wrong-password");
    assert_eq!(s.cmd(&format!("AUTH PLAIN {creds}")).0, 535);
    assert!(
        server.wait_log(
            &["authentication failed", "login=mallory", "mechanism=PLAIN"],
            WAIT
        ),
        "{}",
        server.log()
    );
    assert!(!server.log().contains("wrong-password"));
    // POP3 logs the same way.
    let stream = std::net::TcpStream::connect(server.addr("pop")).expect("connect pop3");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut w = stream.try_clone().expect("clone");
    let mut r = std::io::BufReader::new(stream);
    let mut line = String::new();
    use std::io::{BufRead, Write};
    r.read_line(&mut line).expect("greeting");
    assert!(line.starts_with("+OK"), "{line}");
    for cmd in ["USER eve\r\n", "PASS guess\r\n"] {
        w.write_all(cmd.as_bytes()).expect("write");
        line.clear();
        r.read_line(&mut line).expect("reply");
    }
    assert!(line.starts_with("-ERR"), "{line}");
    assert!(
        server.wait_log(
            &["authentication failed", "protocol=POP3", "login=eve"],
            WAIT
        ),
        "{}",
        server.log()
    );
}

#[test]
fn smtp_debug_3_traces_the_outbound_conversation() {
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let server = TestServer::start_with("", "", sink.addr.port());
    assert!(server.cli(&["debug", "smtp", "3"]).status.success());
    let id = send(&server, "dave@partner.test", "traced");
    assert!(server.wait_log(&["delivery", &id, "status=sent"], WAIT));
    let peer = "peer=mx1.partner.test[127.0.0.2]";
    for needle in [
        "S: 220 sink.test ESMTP test sink",
        "C: EHLO mx.example.test",
        "C: MAIL FROM:<alice@example.test>",
        "C: RCPT TO:<dave@partner.test>",
        "S: 354 go on",
        "C: body of traced",
        "S: 250 2.0.0 queued at the sink",
    ] {
        assert!(
            server.wait_log(&[needle, peer], WAIT),
            "{needle} not traced: {}",
            server.log()
        );
    }
}

#[test]
fn the_self_signed_certificate_is_issued_to_the_hostname() {
    let server = TestServer::start_with(
        "",
        "[[listeners]]\nname = \"tls\"\nprotocol = \"smtp\"\nbind = \"127.0.0.1:0\"\ntls = \"starttls\"",
        free_port(),
    );
    let cert = server.dir.path().join("spool/tls/cert.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
            "-in",
        ])
        .arg(&cert)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("CN = mx.example.test") || text.contains("CN=mx.example.test"),
        "{text}"
    );
    assert!(text.contains("DNS:mx.example.test"), "{text}");
    // A client told to trust the certificate checks the name and succeeds.
    let addr = server.addr("tls");
    let script = format!(
        "import smtplib, ssl\n\
         ctx = ssl.create_default_context(cafile={cert:?})\n\
         s = smtplib.SMTP('{ip}', {port}, timeout=10)\n\
         s._host = 'mx.example.test'\n\
         s.ehlo('client.test')\n\
         s.starttls(context=ctx)\n\
         print('verified', s.sock.getpeercert()['subject'])\n\
         s.quit()\n",
        cert = cert.display().to_string(),
        ip = addr.ip(),
        port = addr.port()
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("mx.example.test"));
}

#[test]
fn outbound_connections_leave_from_the_source_address() {
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let server = TestServer::start_with(
        "",
        &format!(
            "[smtp.outbound]\nport = {}\nsource_address = \"127.0.0.9\"",
            sink.addr.port()
        ),
        0,
    );
    let id = send(&server, "dave@partner.test", "from-source");
    assert!(
        server.wait_log(&["delivery", &id, "status=sent"], WAIT),
        "{}",
        server.log()
    );
    let got = sink.wait(1, WAIT);
    let peer = got[0].peer.expect("peer address");
    assert_eq!(peer.ip().to_string(), "127.0.0.9");
}

/// The standard test configuration in `dir`, without outbound delivery.
fn local_config(dir: &std::path::Path) -> String {
    common::base_config(
        &dir.join("spool"),
        common::standard_dns(),
        free_port(),
        true,
        false,
    )
}

/// `log.format = "json"`: every line the daemon writes is one JSON object,
/// and a delivery line keeps Postfix's field names inside its message.
#[test]
fn json_logs_are_one_object_per_line_with_postfix_fields() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let base = local_config(dir.path()).replace(
        "bind = \"127.0.0.1:0\"",
        &format!("bind = \"127.0.0.1:{port}\""),
    );
    let cfg = dir.path().join("petrel.toml");
    std::fs::write(&cfg, format!("{base}\n[log]\nformat = \"json\"\n")).expect("write");
    let mut child = std::process::Command::new(common::petrel_bin())
        .args(["-c", cfg.to_str().expect("path"), "serve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn petrel");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let next = |what: &str| -> serde_json::Value {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} line"));
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
            let msg = v["message"].as_str().unwrap_or("").to_string();
            if msg.contains(what) {
                return v;
            }
        }
    };
    let listening = next("listening");
    assert!(
        listening["level"].is_string() && listening["timestamp"].is_string(),
        "{listening}"
    );
    assert_eq!(
        listening["address"].as_str(),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    let mut s = Smtp::ready(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    queued_id(&s.send_mail(
        "x@partner.test",
        &["bob@example.test"],
        "Subject: json\r\n\r\nhello\r\n",
    ));
    let delivery = next("status=sent");
    let msg = delivery["message"].as_str().expect("message");
    for field in [
        "to=<bob@example.test>",
        "relay=",
        "delay=",
        "delays=",
        "dsn=2.",
    ] {
        assert!(msg.contains(field), "{field} in {msg}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `petrel config show` prints the effective configuration with every
/// default filled in; `--changed` only what the file sets.
#[test]
fn config_show_prints_defaults_and_changed_only_what_is_set() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("petrel.toml");
    let base = local_config(dir.path());
    std::fs::write(&cfg, &base).expect("write");
    let show = |args: &[&str]| {
        let out = common::cli_with(&cfg, args, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let all = show(&["config", "show"]);
    let changed = show(&["config", "show", "--changed"]);
    // Both are TOML that petrel reads back.
    for text in [&all, &changed] {
        let t: toml::Value = toml::from_str(text).expect("valid TOML");
        assert_eq!(t["server"]["hostname"].as_str(), Some("mx.example.test"));
    }
    // A default the file does not set: shown in full, not in --changed.
    assert!(
        all.contains("[dkim]") && all.contains("allow_unsigned = false"),
        "{all}"
    );
    assert!(!changed.contains("allow_unsigned"), "{changed}");
    assert!(changed.contains("retry_initial = \"1s\""), "{changed}");
    assert!(changed.len() < all.len());
}
