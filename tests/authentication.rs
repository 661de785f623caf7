//! Sender authentication against the real daemon, with the test's own DNS
//! server publishing the TXT records (SPF, DKIM keys, DMARC) and
//! independent implementations on the other side: dkimpy verifies what
//! petrel signs and seals, and signs what petrel verifies.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns::{Rec, TestDns};
use common::sink::{Sink, SinkOptions};
use common::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// `petrel dkim keygen` into `dir`; the key path and the TXT text.
fn keygen(dir: &Path, domain: &str, selector: &str, algorithm: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{domain}.{selector}.key"));
    let mut cmd = Command::new(petrel_bin());
    cmd.args(["dkim", "keygen", "--domain", domain, "--selector", selector])
        .args(["--algorithm", algorithm, "--out"])
        .arg(&path);
    let out = run_cmd(cmd, None);
    assert!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let prefix = format!("{selector}._domainkey.{domain}. IN TXT ( ");
    assert!(line.starts_with(&prefix), "{line}");
    // Join the quoted character-strings, as a resolver would.
    let txt: String = line
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    (path, txt)
}

/// Runs tests/interop/dkim_tool.py with /usr/bin/python3 (dkimpy).
fn dkimpy(args: &[&str]) -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/dkim_tool.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script).args(args);
    let out = run_cmd(cmd, None);
    assert!(
        out.status.success(),
        "dkim_tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A JSON file of DNS TXT records for dkimpy's dnsfunc.
fn records(dir: &Path, recs: &[(String, String)]) -> PathBuf {
    let path = dir.join("records.json");
    let map: serde_json::Map<String, serde_json::Value> = recs
        .iter()
        .map(|(n, t)| (n.to_lowercase(), serde_json::Value::String(t.clone())))
        .collect();
    std::fs::write(&path, serde_json::Value::Object(map).to_string()).expect("records");
    path
}

/// dkimpy's verdict on `message`: "dkim=pass N" or "dkim=fail N".
fn dkimpy_verify(dir: &Path, message: &[u8], recs: &Path) -> String {
    let m = dir.join("verify.eml");
    std::fs::write(&m, message).expect("write");
    let out = dkimpy(&[
        "verify",
        m.to_str().expect("path"),
        recs.to_str().expect("path"),
    ]);
    String::from_utf8_lossy(&out).trim().to_string()
}

/// Starts a daemon in `dir` over `dns`: the base configuration with
/// `[smtp.inbound]` body `inbound`, then `extra` TOML.
fn start(
    dir: Arc<tempfile::TempDir>,
    dns: SocketAddr,
    port: u16,
    inbound: &str,
    extra: &str,
) -> TestServer {
    let cfg = format!(
        "{}\n[smtp.inbound]\n{inbound}\n{extra}\n",
        base_config(&dir.path().join("spool"), dns, port, true, true)
    );
    TestServer::start_in(dir, &cfg)
}

fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\r\nHello, {subject}.\r\n"
    )
}

/// The header fields of `content` named `name` (unfolded).
fn header_values(content: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(content);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut out: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(c) = current.as_mut() {
                c.push(' ');
                c.push_str(line.trim());
            }
            continue;
        }
        if let Some(c) = current.take() {
            out.push(c);
        }
        if let Some((n, v)) = line.split_once(':')
            && n.eq_ignore_ascii_case(name)
        {
            current = Some(v.trim().to_string());
        }
    }
    out.extend(current);
    out
}

/// Messages in `mailbox` by Subject, waiting for `n` of them.
fn by_subject(server: &TestServer, mailbox: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let list = server.wait_mailbox(mailbox, n, Duration::from_secs(20));
    assert_eq!(list.len(), n, "{mailbox}: {list:?}");
    list.iter()
        .map(|m| {
            let uid = m["uid"].as_u64().expect("uid");
            let content = server.mailbox_message(mailbox, uid);
            let subject = header_values(&content, "Subject")
                .first()
                .cloned()
                .unwrap_or_default();
            (subject, content)
        })
        .collect()
}

fn find<'a>(msgs: &'a [(String, Vec<u8>)], subject: &str) -> &'a [u8] {
    &msgs
        .iter()
        .find(|(s, _)| s == subject)
        .unwrap_or_else(|| panic!("no message {subject}"))
        .1
}

/// Our `Authentication-Results:` values (authserv-id mx.example.test).
fn our_results(content: &[u8]) -> Vec<String> {
    header_values(content, "Authentication-Results")
        .into_iter()
        .filter(|v| v.to_lowercase().starts_with("mx.example.test"))
        .collect()
}

#[test]
fn dkim_keygen_writes_a_private_key_and_prints_the_record() {
    let dir = tempfile::tempdir().expect("dir");
    let (path, txt) = keygen(dir.path(), "example.test", "s2026", "ed25519");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode");
    assert!(txt.starts_with("v=DKIM1; k=ed25519; p="), "{txt}");
    let pem = std::fs::read_to_string(&path).expect("read");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    let (_, rsa) = keygen(dir.path(), "example.test", "r2026", "rsa2048");
    assert!(rsa.starts_with("v=DKIM1; k=rsa; p=MII"), "{rsa}");
    // An existing key is never overwritten.
    let mut cmd = Command::new(petrel_bin());
    cmd.args([
        "dkim",
        "keygen",
        "--domain",
        "example.test",
        "--selector",
        "s2026",
    ])
    .arg("--out")
    .arg(&path);
    let out = run_cmd(cmd, None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&path).expect("read"), pem);
}

#[test]
fn outbound_mail_is_signed_with_the_sender_domains_key_and_dkimpy_verifies_it() {
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (rsa, rsa_txt) = keygen(dir.path(), "example.test", "s2026", "rsa2048");
    let (old, _) = keygen(dir.path(), "example.test", "s2025", "rsa2048");
    let (ed, ed_txt) = keygen(dir.path(), "example.org", "ed1", "ed25519");
    let extra = format!(
        "[[dkim.keys]]\ndomain = \"example.test\"\nselector = \"s2026\"\nkey = \"{}\"\n\
         [[dkim.keys]]\ndomain = \"example.test\"\nselector = \"s2025\"\nkey = \"{}\"\n\
         [[dkim.keys]]\ndomain = \"example.org\"\nselector = \"ed1\"\nkey = \"{}\"\n",
        rsa.display(),
        old.display(),
        ed.display()
    );
    let server = start(dir.clone(), standard_dns(), sink.addr.port(), "", &extra);
    // 127.0.0.1 is in relay_from: a trusted origin.
    let mut s = Smtp::ready(server.mx());
    let r = s.send_mail(
        "alice@example.test",
        &["dave@partner.test"],
        &message("Alice <alice@example.test>", "dave@partner.test", "rsa"),
    );
    assert_eq!(r.0, 250, "{r:?}");
    let r = s.send_mail(
        "a.smith@example.org",
        &["dave@partner.test"],
        &message("a.smith@example.org", "dave@partner.test", "ed25519"),
    );
    assert_eq!(r.0, 250, "{r:?}");
    // A body of several spool chunks, read back for the signature.
    let big = message("alice@example.test", "dave@partner.test", "big").replace(
        "Hello, big.\r\n",
        &"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwx\r\n".repeat(1500),
    );
    let r = s.send_mail("alice@example.test", &["dave@partner.test"], &big);
    assert_eq!(r.0, 250, "{r:?}");
    // sendmail is a trusted origin too.
    let out = server.cli_stdin(
        &["sendmail", "-f", "alice@example.test", "dave@partner.test"],
        message("alice@example.test", "dave@partner.test", "sendmail").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sink.wait(4, Duration::from_secs(30));
    assert_eq!(got.len(), 4);
    assert!(got.iter().any(|m| m.data.len() > 100_000));
    let recs = records(
        dir.path(),
        &[
            ("s2026._domainkey.example.test".into(), rsa_txt),
            ("ed1._domainkey.example.org".into(), ed_txt),
        ],
    );
    for m in &got {
        let sigs = header_values(&m.data, "DKIM-Signature");
        assert_eq!(sigs.len(), 1, "one signature: {sigs:?}");
        let sig = sigs[0].replace(' ', "").to_lowercase();
        let h = sig
            .split(";h=")
            .nth(1)
            .and_then(|l| l.split(';').next())
            .unwrap_or("");
        assert_eq!(
            h.split(':').filter(|x| *x == "from").count(),
            2,
            "From over-signed: {sig}"
        );
        for h in ["to", "subject", "date", "message-id", "cc", "mime-version"] {
            assert!(
                sig.split(";h=").nth(1).is_some_and(|l| l
                    .split(';')
                    .next()
                    .is_some_and(|l| l.split(':').any(|x| x == h))),
                "{h} signed: {sig}"
            );
        }
        let subject = header_values(&m.data, "Subject")[0].clone();
        let want_d = if subject == "ed25519" {
            "d=example.org"
        } else {
            "s=s2026;d=example.test"
        };
        assert!(sig.contains(want_d), "{subject}: {sig}");
        if subject == "ed25519" {
            assert!(sig.contains("a=ed25519-sha256"), "{sig}");
        }
        assert_eq!(
            dkimpy_verify(dir.path(), &m.data, &recs),
            "dkim=pass 1",
            "{subject}"
        );
        // Any change to the signed body breaks it.
        let mut tampered = m.data.clone();
        let n = tampered.len();
        tampered[n - 4] ^= 0x20;
        assert_eq!(dkimpy_verify(dir.path(), &tampered, &recs), "dkim=fail 1");
    }
    // Mail that stays local is not signed.
    let r = s.send_mail(
        "alice@example.test",
        &["bob@example.test"],
        &message("alice@example.test", "bob@example.test", "local"),
    );
    assert_eq!(r.0, 250, "{r:?}");
    let local = by_subject(&server, "bob", 1);
    assert!(header_values(&local[0].1, "DKIM-Signature").is_empty());
}

/// 8-bit text and an over-long line, signed, for a peer that offers no
/// 8BITMIME: petrel converts before it signs, so what arrives is 7-bit and
/// its signature verifies (converting after signing would break it).
#[test]
fn eight_bit_mail_for_a_seven_bit_peer_is_converted_before_signing() {
    let sink = Sink::start(
        "127.0.0.2:0",
        SinkOptions {
            seven_bit: true,
            ..SinkOptions::default()
        },
    );
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (key, txt) = keygen(dir.path(), "example.test", "s1", "ed25519");
    let extra = format!(
        "[[dkim.keys]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey = \"{}\"\n",
        key.display()
    );
    let server = start(dir.clone(), standard_dns(), sink.addr.port(), "", &extra);
    let long = "x".repeat(1200);
    let text = |subject: &str| {
        format!(
            "From: alice@example.test\r\nTo: dave@partner.test\r\nSubject: {subject}\r\n\
             Date: Wed, 02 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln.\r\n{long}\r\n"
        )
    };
    // Over SMTP (the streamed path) and through sendmail.
    let mut s = Smtp::ready(server.mx());
    let r = s.send_mail("alice@example.test", &["dave@partner.test"], &text("smtp"));
    assert_eq!(r.0, 250, "{r:?}");
    let out = server.cli_stdin(
        &["sendmail", "-f", "alice@example.test", "dave@partner.test"],
        text("sendmail").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sink.wait(2, Duration::from_secs(30));
    assert_eq!(got.len(), 2);
    let recs = records(dir.path(), &[("s1._domainkey.example.test".into(), txt)]);
    for m in &got {
        let subject = header_values(&m.data, "Subject")[0].clone();
        assert!(m.data.is_ascii(), "{subject}: 8 bits reached a 7-bit peer");
        assert!(
            m.data.split(|&b| b == b'\n').all(|l| l.len() <= 1000),
            "{subject}: a line over 998"
        );
        assert_eq!(
            header_values(&m.data, "Content-Transfer-Encoding"),
            ["quoted-printable"],
            "{subject}"
        );
        let body = String::from_utf8_lossy(&m.data).into_owned();
        let body = body.split("\r\n\r\n").nth(1).expect("a body");
        let decoded = petrel::mime::downgrade::qp_decode(body.as_bytes());
        // (The sink keeps the data without its last line end.)
        assert_eq!(
            String::from_utf8_lossy(&decoded).trim_end(),
            format!("Grüße aus Köln.\r\n{long}"),
            "{subject}: the text as sent"
        );
        assert_eq!(
            dkimpy_verify(dir.path(), &m.data, &recs),
            "dkim=pass 1",
            "{subject}"
        );
    }
}

/// A delivery status notification petrel writes for a remote sender is
/// signed with the key of its host name's parent domain, and verifies.
#[test]
fn reports_to_remote_senders_are_signed() {
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (key, txt) = keygen(dir.path(), "example.test", "s1", "rsa2048");
    let extra = format!(
        "[[dkim.keys]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey = \"{}\"\n",
        key.display()
    );
    let server = start(dir.clone(), standard_dns(), sink.addr.port(), "", &extra);
    // Relayed for a remote sender to a peer without DSN, NOTIFY=SUCCESS:
    // petrel reports "relayed" to the sender (RFC 3461 §5.2.3).
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<dave@partner.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<erin@partner.test> NOTIFY=SUCCESS").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send_raw(
        b"From: dave@partner.test\r\nTo: erin@partner.test\r\nSubject: relayed\r\n\r\nx\r\n.\r\n",
    );
    queued_id(&s.reply());
    let got = sink.wait(2, Duration::from_secs(30));
    let report = got
        .iter()
        .find(|m| m.mail.contains("<>"))
        .expect("the report reached the sender's MX");
    let sigs = header_values(&report.data, "DKIM-Signature");
    assert_eq!(sigs.len(), 1, "{sigs:?}");
    assert!(
        sigs[0].replace(' ', "").contains("d=example.test"),
        "{sigs:?}"
    );
    let recs = records(dir.path(), &[("s1._domainkey.example.test".into(), txt)]);
    assert_eq!(
        dkimpy_verify(dir.path(), &report.data, &recs),
        "dkim=pass 1"
    );
}

#[test]
fn a_signing_failure_defers_unless_allow_unsigned() {
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (key, _) = keygen(dir.path(), "example.test", "s1", "ed25519");
    let keys = format!(
        "[[dkim.keys]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey = \"{}\"\n",
        key.display()
    );
    let server = start(dir.clone(), standard_dns(), sink.addr.port(), "", &keys);
    let mut s = Smtp::ready(server.mx());
    let body = message("alice@example.test", "dave@partner.test", "broken");
    let r = s.send_mail("alice@example.test", &["dave@partner.test"], &body);
    assert_eq!(r.0, 250, "{r:?}");
    // The key file is replaced by something unusable while the daemon
    // runs (a botched rotation): it is read again, and fails.
    std::fs::remove_file(&key).expect("remove");
    std::fs::write(&key, "not a key\n").expect("write");
    let r = s.send_mail("alice@example.test", &["dave@partner.test"], &body);
    assert_eq!(r.0, 451, "{r:?}");
    assert!(r.1.starts_with("4.7.0"), "{r:?}");
    assert!(server.wait_log(&["dkim: signing failed", "s1.key"], Duration::from_secs(5)));
    assert_eq!(sink.wait(1, Duration::from_secs(20)).len(), 1);
    server.wait_queue_empty(Duration::from_secs(20));
    drop(server);

    // Such a key refuses the start, with its key name...
    let out = run_cmd(
        {
            let mut c = Command::new(petrel_bin());
            c.arg("-c").arg(dir.path().join("petrel.toml")).arg("serve");
            c
        },
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dkim.keys[0].key"), "{err}");

    // ...unless unsigned mail is allowed: then it goes unsigned, logged.
    let dir2 = Arc::new(tempfile::tempdir().expect("dir"));
    let extra = format!("[dkim]\nallow_unsigned = true\n{keys}");
    let server = start(dir2, standard_dns(), sink.addr.port(), "", &extra);
    let mut s = Smtp::ready(server.mx());
    let r = s.send_mail("alice@example.test", &["dave@partner.test"], &body);
    assert_eq!(r.0, 250, "{r:?}");
    assert!(server.wait_log(
        &["dkim: sending unsigned", "s1.key"],
        Duration::from_secs(5)
    ));
    let got = sink.wait(2, Duration::from_secs(20));
    assert!(header_values(&got[1].data, "DKIM-Signature").is_empty());
    assert_eq!(header_values(&got[0].data, "DKIM-Signature").len(), 1);
}

/// The zones of the inbound tests; the client is 127.0.0.2.
fn inbound_dns(dkim_txt: &str) -> TestDns {
    TestDns::start(inbound_zones(dkim_txt))
}

fn inbound_zones(dkim_txt: &str) -> Vec<(&'static str, Vec<Rec>)> {
    let txt = |n: &str, t: &str| Rec::Txt(n.to_string(), t.to_string());
    vec![
        // The TLD itself, so that DMARC's tree walk (RFC 9989 §4.10) gets
        // NXDOMAIN for _dmarc.test, as from a real registry.
        ("test", vec![]),
        (
            "sender.test",
            vec![
                txt("sender.test", "v=spf1 ip4:127.0.0.2 -all"),
                txt("s1._domainkey.sender.test", dkim_txt),
                txt("_dmarc.sender.test", "v=DMARC1; p=reject"),
            ],
        ),
        ("fail.test", vec![txt("fail.test", "v=spf1 -all")]),
        ("softfail.test", vec![txt("softfail.test", "v=spf1 ~all")]),
        ("neutral.test", vec![txt("neutral.test", "v=spf1 ?all")]),
        // RFC 7208 §5.2: an include of a domain without an SPF record is a
        // permerror.
        (
            "perm.test",
            vec![
                txt("perm.test", "v=spf1 include:none.perm.test -all"),
                Rec::A("none.perm.test", std::net::Ipv4Addr::new(192, 0, 2, 1)),
            ],
        ),
        (
            "nospf.test",
            vec![Rec::A("nospf.test", std::net::Ipv4Addr::new(192, 0, 2, 1))],
        ),
        (
            "reject.test",
            vec![
                txt("reject.test", "v=spf1 ?all"),
                txt("_dmarc.reject.test", "v=DMARC1; p=reject"),
            ],
        ),
        (
            "quar.test",
            vec![
                txt("quar.test", "v=spf1 ?all"),
                txt("_dmarc.quar.test", "v=DMARC1; p=quarantine"),
            ],
        ),
        (
            "aligned.test",
            vec![
                txt("mail.aligned.test", "v=spf1 ip4:127.0.0.2 -all"),
                txt("_dmarc.aligned.test", "v=DMARC1; p=reject"),
            ],
        ),
        (
            "strict.test",
            vec![
                txt("mail.strict.test", "v=spf1 ip4:127.0.0.2 -all"),
                txt("_dmarc.strict.test", "v=DMARC1; p=reject; aspf=s"),
            ],
        ),
    ]
}

/// A message signed by dkimpy with `key` as s1._domainkey.sender.test.
fn dkimpy_signed(dir: &Path, key: &Path, from: &str, subject: &str) -> String {
    let m = dir.join(format!("{subject}.eml"));
    std::fs::write(&m, message(from, "alice@example.test", subject)).expect("write");
    let out = dkimpy(&[
        "sign",
        m.to_str().expect("path"),
        key.to_str().expect("path"),
        "s1",
        "sender.test",
    ]);
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn inbound_results_for_spf_dkim_and_dmarc_are_tagged_in_one_header() {
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (key, txt) = keygen(dir.path(), "sender.test", "s1", "rsa2048");
    let dns = inbound_dns(&txt);
    let server = start(
        dir.clone(),
        dns.addr,
        free_port(),
        "relay_from = [\"127.0.0.1/32\"]",
        "",
    );
    let mut s = Smtp::ready_from(server.mx(), ip("127.0.0.2"));
    let mut send = |from: &str, body: &str| {
        let r = s.send_mail(from, &["alice@example.test"], body);
        assert_eq!(r.0, 250, "{from}: {r:?}");
    };
    for (sender, subject) in [
        ("x@sender.test", "spf-pass"),
        ("x@fail.test", "spf-fail"),
        ("x@softfail.test", "spf-softfail"),
        ("x@neutral.test", "spf-neutral"),
        ("x@perm.test", "spf-permerror"),
        // A TLD the test server does not serve: REFUSED, a temporary error.
        ("x@unserved.example", "spf-temperror"),
        ("x@nospf.test", "spf-none"),
    ] {
        send(sender, &message(sender, "alice@example.test", subject));
    }
    let signed = dkimpy_signed(dir.path(), &key, "x@sender.test", "dkim-pass");
    send("x@sender.test", &signed);
    let tampered = dkimpy_signed(dir.path(), &key, "x@sender.test", "dkim-fail")
        .replace("Hello, dkim-fail.", "Hello, changed.");
    send("x@sender.test", &tampered);
    // A forged result with our authserv-id and a forged verdict header.
    let forged = format!(
        "Authentication-Results: mx.example.test; dkim=pass header.d=sender.test\r\n\
         Authentication-Results: elsewhere.test; spf=pass\r\nX-Petrel-Junk: no\r\n{}",
        message("x@neutral.test", "alice@example.test", "forged")
    );
    send("x@neutral.test", &forged);
    let msgs = by_subject(&server, "alice", 10);

    for (subject, want) in [
        ("spf-pass", "spf=pass"),
        ("spf-fail", "spf=fail"),
        ("spf-softfail", "spf=softfail"),
        ("spf-neutral", "spf=neutral"),
        ("spf-permerror", "spf=permerror"),
        ("spf-temperror", "spf=temperror"),
        ("spf-none", "spf=none"),
    ] {
        let ar = our_results(find(&msgs, subject));
        assert_eq!(ar.len(), 1, "{subject}: {ar:?}");
        assert!(ar[0].contains(want), "{subject}: {}", ar[0]);
        assert!(ar[0].contains("dkim=none"), "{subject}: {}", ar[0]);
    }
    let pass = &our_results(find(&msgs, "dkim-pass"))[0];
    assert!(pass.contains("dkim=pass"), "{pass}");
    assert!(pass.contains("header.i=@sender.test"), "{pass}");
    assert!(pass.contains("dmarc=pass"), "{pass}");
    let fail = &our_results(find(&msgs, "dkim-fail"))[0];
    // mail-auth reports a body hash mismatch as "neutral (body hash did
    // not verify)"; either way it is not a pass.
    assert!(
        fail.contains("dkim=fail") || fail.contains("dkim=neutral (body hash did not verify)"),
        "{fail}"
    );
    // SPF still passes and is aligned: DMARC passes.
    assert!(fail.contains("dmarc=pass"), "{fail}");
    let spf_fail = &our_results(find(&msgs, "spf-fail"))[0];
    assert!(spf_fail.contains("dmarc=none"), "{spf_fail}");

    let forged = find(&msgs, "forged");
    let ar = our_results(forged);
    assert_eq!(ar.len(), 1, "{ar:?}");
    assert!(!ar[0].contains("dkim=pass"), "{}", ar[0]);
    assert_eq!(
        header_values(forged, "Authentication-Results").len(),
        2,
        "the other host's result is kept"
    );
    assert!(header_values(forged, "X-Petrel-Junk").is_empty());

    // Trusted clients skip the checks; a result claiming our authserv-id
    // is still removed, a verdict header (an edge's) is kept.
    let mut t = Smtp::ready(server.mx());
    let r = t.send_mail(
        "x@fail.test",
        &["alice@example.test"],
        &format!(
            "Authentication-Results: mx.example.test; dmarc=pass\r\nX-Petrel-Junk: dmarc=fail\r\n{}",
            message("x@fail.test", "alice@example.test", "trusted")
        ),
    );
    assert_eq!(r.0, 250);
    // The edge's verdict is honoured: the message is filed in Junk.
    let trusted = junk_message(&server, "alice");
    assert!(
        header_values(&trusted, "Subject")
            .first()
            .is_some_and(|s| s.contains("trusted")),
        "{}",
        String::from_utf8_lossy(&trusted)
    );
    assert!(our_results(&trusted).is_empty());
    assert_eq!(header_values(&trusted, "X-Petrel-Junk").len(), 1);
}

/// The first message filed in `mailbox`'s Junk folder, waiting for it.
fn junk_message(server: &TestServer, mailbox: &str) -> Vec<u8> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let uid = loop {
        let out = server.cli(&["mailbox", mailbox, "--folder", "Junk", "--json"]);
        let first = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_string);
        if let Some(line) = first {
            let v: serde_json::Value = serde_json::from_str(&line).expect("json");
            break v["uid"].as_u64().expect("uid");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing in {mailbox}'s Junk"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    server
        .cli(&[
            "mailbox",
            mailbox,
            "--folder",
            "Junk",
            "--uid",
            &uid.to_string(),
        ])
        .stdout
}

#[test]
fn enforced_policies_refuse_spf_fail_and_dmarc_reject_and_quarantine_to_junk() {
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (_, txt) = keygen(dir.path(), "sender.test", "s1", "ed25519");
    let (rsa_key, _) = keygen(dir.path(), "other.test", "s1", "rsa2048");
    let dns = inbound_dns(&txt);
    let server = start(
        dir.clone(),
        dns.addr,
        free_port(),
        "relay_from = [\"127.0.0.1/32\"]",
        "[smtp.inbound.checks]\nspf = \"enforce\"\ndkim = \"tag\"\ndmarc = \"enforce\"\n",
    );
    let mut s = Smtp::ready_from(server.mx(), ip("127.0.0.2"));
    // SPF -all fail: refused at MAIL.
    let r = s.cmd("MAIL FROM:<x@fail.test>");
    assert_eq!(r.0, 550, "{r:?}");
    assert!(r.1.starts_with("5.7.23"), "{r:?}");
    // softfail is not a fail.
    assert_eq!(s.cmd("MAIL FROM:<x@softfail.test>").0, 250);
    assert_eq!(s.cmd("RSET").0, 250);

    let mut data = |from: &str, body: &str| -> (u16, String) {
        assert_eq!(s.cmd(&format!("MAIL FROM:<{from}>")).0, 250);
        assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
        assert_eq!(s.cmd("DATA").0, 354);
        s.send_raw(body.as_bytes());
        s.send_raw(b"\r\n.\r\n");
        s.reply()
    };
    // p=reject, no aligned pass: refused after DATA.
    let r = data(
        "x@reject.test",
        &message("x@reject.test", "alice@example.test", "reject"),
    );
    assert_eq!(r.0, 550, "{r:?}");
    assert!(r.1.starts_with("5.7.1"), "{r:?}");
    assert!(r.1.contains("DMARC"), "{r:?}");
    // Relaxed alignment: SPF passes for mail.aligned.test, From is
    // aligned.test.
    let r = data(
        "bounce@mail.aligned.test",
        &message("x@aligned.test", "alice@example.test", "relaxed"),
    );
    assert_eq!(r.0, 250, "{r:?}");
    // Strict SPF alignment (aspf=s): the same shape fails.
    let r = data(
        "bounce@mail.strict.test",
        &message("x@strict.test", "alice@example.test", "strict"),
    );
    assert_eq!(r.0, 550, "{r:?}");
    // A signature for s1._domainkey.sender.test made with another key
    // (the record publishes an Ed25519 key): DKIM fails, SPF
    // (neutral.test) is not aligned: p=reject refuses.
    let other = dkimpy_signed(dir.path(), &rsa_key, "x@sender.test", "unaligned");
    let r = data("x@neutral.test", &other);
    assert_eq!(r.0, 550, "{r:?}");
    // p=quarantine: accepted, marked for Junk.
    let r = data(
        "x@quar.test",
        &message("x@quar.test", "alice@example.test", "quarantine"),
    );
    assert_eq!(r.0, 250, "{r:?}");
    // Filed in alice's Junk folder, not her INBOX.
    let q = &junk_message(&server, "alice")[..];
    assert!(
        header_values(q, "Subject")
            .first()
            .is_some_and(|s| s.contains("quarantine")),
        "{}",
        String::from_utf8_lossy(q)
    );
    let msgs = by_subject(&server, "alice", 1);
    assert!(
        msgs.iter().all(|(s, _)| !s.contains("quarantine")),
        "not in INBOX"
    );
    let junk = header_values(q, "X-Petrel-Junk");
    assert_eq!(junk.len(), 1, "{junk:?}");
    assert!(junk[0].contains("policy.dmarc=quarantine"), "{junk:?}");
    assert!(our_results(q)[0].contains("dmarc=fail"));
    assert!(header_values(find(&msgs, "relaxed"), "X-Petrel-Junk").is_empty());
    assert!(server.log().contains("dmarc: quarantine"));
}

#[test]
fn dmarc_passes_on_an_aligned_dkim_signature_made_by_dkimpy() {
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (key, txt) = keygen(dir.path(), "sender.test", "s1", "rsa2048");
    let dns = inbound_dns(&txt);
    let server = start(
        dir.clone(),
        dns.addr,
        free_port(),
        "relay_from = [\"127.0.0.1/32\"]",
        "[smtp.inbound.checks]\nspf = \"enforce\"\ndkim = \"enforce\"\ndmarc = \"enforce\"\n",
    );
    let mut s = Smtp::ready_from(server.mx(), ip("127.0.0.2"));
    // SPF for neutral.test is not aligned with From sender.test; the DKIM
    // signature (d=sender.test) is.
    let signed = dkimpy_signed(dir.path(), &key, "x@sender.test", "aligned-dkim");
    let r = s.send_mail("x@neutral.test", &["alice@example.test"], &signed);
    assert_eq!(r.0, 250, "{r:?}");
    // The same message changed in transit, from an SPF-aligned sender so
    // that DMARC passes: DKIM enforced refuses it.
    let tampered = dkimpy_signed(dir.path(), &key, "x@sender.test", "changed")
        .replace("Hello, changed.", "Hello, evil.");
    assert_eq!(s.cmd("MAIL FROM:<x@sender.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send_raw(tampered.as_bytes());
    s.send_raw(b"\r\n.\r\n");
    let r = s.reply();
    assert_eq!(r.0, 550, "{r:?}");
    assert!(r.1.starts_with("5.7.20"), "{r:?}");
    let msgs = by_subject(&server, "alice", 1);
    let ar = &our_results(find(&msgs, "aligned-dkim"))[0];
    assert!(
        ar.contains("dkim=pass") && ar.contains("dmarc=pass"),
        "{ar}"
    );
    assert!(ar.contains("spf=neutral"), "{ar}");
}

#[test]
fn the_edge_arc_seals_what_it_forwards_and_dkimpy_verifies_the_chain() {
    let internal = Sink::start("127.0.0.2:0", SinkOptions::default());
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (sender_key, sender_txt) = keygen(dir.path(), "sender.test", "s1", "rsa2048");
    let (edge_key, edge_txt) = keygen(dir.path(), "corp.test", "arc1", "rsa2048");
    let dns = inbound_dns(&sender_txt);
    let cfg = base_config(&dir.path().join("spool"), dns.addr, 25, true, false).replace(
        "aliases = [\"example.org\", \"[192.0.2.10]\"]",
        "aliases = [\"example.org\", \"[192.0.2.10]\"]\nrelay_domains = [\"corp.test\"]",
    );
    let cfg = format!(
        "{cfg}\n[smtp.inbound]\nrelay_from = [\"127.0.0.1/32\"]\n\
         [[smtp.outbound.routes]]\ndomain = \"corp.test\"\nhost = \"[127.0.0.2]:{}\"\n\
         [[dkim.keys]]\ndomain = \"corp.test\"\nselector = \"arc1\"\nkey = \"{}\"\n",
        internal.addr.port(),
        edge_key.display()
    );
    let edge = TestServer::start_in(dir.clone(), &cfg);
    let mut s = Smtp::ready_from(edge.mx(), ip("127.0.0.2"));
    let m = dir.path().join("arc.eml");
    std::fs::write(&m, message("x@sender.test", "carol@corp.test", "arc")).expect("write");
    let signed = dkimpy(&[
        "sign",
        m.to_str().expect("path"),
        sender_key.to_str().expect("path"),
        "s1",
        "sender.test",
    ]);
    let r = s.send_mail(
        "x@sender.test",
        &["carol@corp.test"],
        std::str::from_utf8(&signed).expect("utf-8"),
    );
    assert_eq!(r.0, 250, "{r:?}");
    let got = internal.wait(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1);
    let data = &got[0].data;
    for h in [
        "ARC-Seal",
        "ARC-Message-Signature",
        "ARC-Authentication-Results",
    ] {
        assert_eq!(header_values(data, h).len(), 1, "{h}");
    }
    assert!(header_values(data, "ARC-Seal")[0].contains("cv=none"));
    let recs = records(
        dir.path(),
        &[
            ("s1._domainkey.sender.test".into(), sender_txt),
            ("arc1._domainkey.corp.test".into(), edge_txt),
        ],
    );
    let v = dir.path().join("sealed.eml");
    std::fs::write(&v, data).expect("write");
    let out = dkimpy(&[
        "arc",
        v.to_str().expect("path"),
        recs.to_str().expect("path"),
    ]);
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("arc=pass"), "{out}");
    // The original signature still verifies after the edge.
    assert_eq!(dkimpy_verify(dir.path(), data, &recs), "dkim=pass 1");
}

#[test]
fn a_listed_client_is_refused_at_connect_naming_the_list() {
    let dns = TestDns::start(vec![
        (
            "zen.dnsbl.test",
            vec![
                Rec::A(
                    "2.0.0.127.zen.dnsbl.test",
                    std::net::Ipv4Addr::new(127, 0, 0, 2),
                ),
                Rec::A(
                    "4.0.0.127.zen.dnsbl.test",
                    std::net::Ipv4Addr::new(127, 0, 0, 2),
                ),
            ],
        ),
        (
            "wl.test",
            vec![Rec::A(
                "4.0.0.127.wl.test",
                std::net::Ipv4Addr::new(127, 0, 0, 2),
            )],
        ),
    ]);
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let server = start(
        dir,
        dns.addr,
        free_port(),
        "relay_from = [\"127.0.0.1/32\"]",
        "[smtp.inbound.checks]\ndnsbl = [\"zen.dnsbl.test\"]\ndnswl = [\"wl.test\"]\n",
    );
    let (mut s, g) = Smtp::connect_from(server.mx(), ip("127.0.0.2"));
    assert_eq!(g.0, 554, "{g:?}");
    assert!(g.1.starts_with("5.7.1"), "{g:?}");
    assert!(g.1.contains("zen.dnsbl.test"), "{g:?}");
    assert!(s.is_closed());
    assert!(server.wait_log(
        &["rejected", "stage=connect", "zen.dnsbl.test"],
        Duration::from_secs(5)
    ));
    // Not listed; allowlisted; trusted.
    for from in ["127.0.0.3", "127.0.0.4", "127.0.0.1"] {
        let (_, g) = Smtp::connect_from(server.mx(), ip(from));
        assert_eq!(g.0, 220, "{from}: {g:?}");
    }
}

#[test]
fn a_blocklist_that_times_out_or_fails_does_not_block() {
    for (dns, bound) in [
        (TestDns::silent(), Some(Duration::from_secs(5))),
        (TestDns::servfail(), None),
    ] {
        let dir = Arc::new(tempfile::tempdir().expect("dir"));
        let server = start(
            dir,
            dns.addr,
            free_port(),
            "relay_from = [\"127.0.0.1/32\"]",
            "[smtp.inbound.checks]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\narc = \"off\"\n\
             dnsbl = [\"slow.dnsbl.test\"]\n",
        );
        let t = Instant::now();
        let (mut s, g) = Smtp::connect_from(server.mx(), ip("127.0.0.2"));
        let took = t.elapsed();
        assert_eq!(g.0, 220, "{g:?}");
        match bound {
            // The greeting waits for the look-up's own time-out, no more.
            Some(limit) => assert_about(took, limit, "greeting after a DNSBL time-out"),
            None => assert!(took < Duration::from_secs(2), "SERVFAIL took {took:?}"),
        }
        assert_eq!(s.cmd("EHLO client.test").0, 250);
        let r = s.send_mail(
            "x@client.test",
            &["alice@example.test"],
            &message("x@client.test", "alice@example.test", "through"),
        );
        assert_eq!(r.0, 250, "{r:?}");
        assert!(server.wait_log(
            &["dnsbl: look-up failed", "slow.dnsbl.test"],
            Duration::from_secs(5)
        ));
    }
}

#[test]
fn rate_limits_are_reached_and_lifted() {
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let server = start(
        dir,
        standard_dns(),
        free_port(),
        "relay_from = [\"127.0.0.1/32\"]\n\
         [smtp.inbound.rate_limits]\nconnections_per_minute = 2\nmessages_per_minute = 2\n\
         recipients_per_minute = 3\ntime_unit = \"2s\"\n",
        "",
    );
    let unit = Duration::from_secs(2);
    // Connections: the third in the window gets 421, the limit lifts when
    // the first leaves the window.
    let t0 = Instant::now();
    let (_a, g1) = Smtp::connect_from(server.mx(), ip("127.0.0.2"));
    let (_b, g2) = Smtp::connect_from(server.mx(), ip("127.0.0.2"));
    assert_eq!((g1.0, g2.0), (220, 220));
    let (mut c, g3) = Smtp::connect_from(server.mx(), ip("127.0.0.2"));
    assert_eq!(g3.0, 421, "{g3:?}");
    assert!(g3.1.starts_with("4.7.0"), "{g3:?}");
    assert!(c.is_closed());
    // Trusted clients are not limited.
    for _ in 0..3 {
        assert_eq!(Smtp::connect(server.mx()).1.0, 220);
    }
    let lifted = loop {
        let (_, g) = Smtp::connect_from(server.mx(), ip("127.0.0.2"));
        if g.0 == 220 {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < unit * 4, "still refused: {g:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_about(lifted, unit, "connection limit lifted");

    // Messages and recipients, from other clients.
    let mut s = Smtp::ready_from(server.mx(), ip("127.0.0.3"));
    for _ in 0..2 {
        assert_eq!(s.cmd("MAIL FROM:<x@client.test>").0, 250);
        assert_eq!(s.cmd("RSET").0, 250);
    }
    let r = s.cmd("MAIL FROM:<x@client.test>");
    assert_eq!(r.0, 450, "{r:?}");
    assert!(r.1.starts_with("4.7.1"), "{r:?}");
    let mut s = Smtp::ready_from(server.mx(), ip("127.0.0.4"));
    assert_eq!(s.cmd("MAIL FROM:<x@client.test>").0, 250);
    for rcpt in ["alice", "bob", "support"] {
        assert_eq!(s.cmd(&format!("RCPT TO:<{rcpt}@example.test>")).0, 250);
    }
    let r = s.cmd("RCPT TO:<team@example.test>");
    assert_eq!(r.0, 450, "{r:?}");
    assert!(r.1.starts_with("4.7.1"), "{r:?}");
    assert_eq!(s.cmd("DATA").0, 354);
    s.send_raw(message("x@client.test", "alice@example.test", "limited").as_bytes());
    s.send_raw(b"\r\n.\r\n");
    assert_eq!(s.reply().0, 250);
}

#[test]
fn an_arc_chain_sealed_on_the_edge_is_verified_at_the_internal_server() {
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (sender_key, sender_txt) = keygen(dir.path(), "sender.test", "s1", "rsa2048");
    let (edge_key, edge_txt) = keygen(dir.path(), "corp.test", "arc1", "ed25519");
    let mut zones = inbound_zones(&sender_txt);
    zones.push((
        "corp.test",
        vec![Rec::Txt("arc1._domainkey.corp.test".into(), edge_txt)],
    ));
    let dns = TestDns::start(zones);
    // The internal server: corp.test is local; the edge (127.0.0.1) is not
    // in its relay_from, so it checks what the edge forwards, and its
    // authserv-id differs from the edge's.
    let idir = Arc::new(tempfile::tempdir().expect("dir"));
    let icfg = base_config(&idir.path().join("spool"), dns.addr, 25, true, false)
        .replace("mx.example.test", "internal.example.test")
        .replace(
            "aliases = [\"example.org\", \"[192.0.2.10]\"]",
            "aliases = [\"example.org\", \"corp.test\", \"[192.0.2.10]\"]",
        );
    let internal = TestServer::start_in(
        idir,
        &format!("{icfg}\n[smtp.inbound]\nrelay_from = [\"127.0.0.9/32\"]\n"),
    );
    let cfg = base_config(&dir.path().join("spool"), dns.addr, 25, true, false).replace(
        "aliases = [\"example.org\", \"[192.0.2.10]\"]",
        "aliases = [\"example.org\", \"[192.0.2.10]\"]\nrelay_domains = [\"corp.test\"]",
    );
    let cfg = format!(
        "{cfg}\n[smtp.inbound]\nrelay_from = [\"127.0.0.1/32\"]\n\
         [[smtp.outbound.routes]]\ndomain = \"corp.test\"\nhost = \"[127.0.0.1]:{}\"\n\
         [[dkim.keys]]\ndomain = \"corp.test\"\nselector = \"arc1\"\nkey = \"{}\"\n",
        internal.mx().port(),
        edge_key.display()
    );
    let edge = TestServer::start_in(dir.clone(), &cfg);
    let signed = dkimpy_signed(dir.path(), &sender_key, "x@sender.test", "via-edge");
    let mut s = Smtp::ready_from(edge.mx(), ip("127.0.0.2"));
    let r = s.send_mail("x@sender.test", &["alice@corp.test"], &signed);
    assert_eq!(r.0, 250, "{r:?}");
    let msgs = by_subject(&internal, "alice", 1);
    let content = &msgs[0].1;
    let results = header_values(content, "Authentication-Results");
    let at_internal: Vec<&String> = results
        .iter()
        .filter(|v| v.starts_with("internal.example.test"))
        .collect();
    assert_eq!(at_internal.len(), 1, "{results:?}");
    let ar = at_internal[0];
    assert!(ar.contains("arc=pass"), "{ar}");
    assert!(ar.contains("dkim=pass"), "{ar}");
    // SPF fails at the internal server (the edge is not sender.test's
    // host): the edge's sealed result is what says it passed there.
    assert!(ar.contains("spf=fail"), "{ar}");
    let edge_ar = header_values(content, "ARC-Authentication-Results");
    assert!(edge_ar[0].contains("spf=pass"), "{edge_ar:?}");
    assert!(
        results.iter().any(|v| v.starts_with("mx.example.test")),
        "the edge's own header travels too: {results:?}"
    );
}

/// Runs `opendkim-testmsg` (verify mode) on `message` in a private mount
/// namespace whose /etc/resolv.conf names only `dns` (the test's own
/// server, on port 53 as libresolv requires). `None` when that cannot be
/// set up here (not root, no opendkim-tools): the caller skips.
fn opendkim_verify(dir: &Path, dns: SocketAddr, message: &[u8]) -> Option<(bool, String)> {
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {}\noptions attempts:1 timeout:2\n", dns.ip()),
    )
    .expect("resolv.conf");
    let m = dir.join("opendkim.eml");
    std::fs::write(&m, message).expect("write");
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1\" /etc/resolv.conf || exit 99; exec opendkim-testmsg < \"$2\"")
        .arg("sh")
        .arg(&resolv)
        .arg(&m)
        .output()
        .ok()?;
    if out.status.code() == Some(99) || out.status.code() == Some(127) {
        return None;
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success() && text.trim().is_empty(), text))
}

#[test]
fn petrels_signatures_verify_with_opendkim() {
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (rsa, rsa_txt) = keygen(dir.path(), "example.test", "s2026", "rsa2048");
    let (ed, ed_txt) = keygen(dir.path(), "example.org", "ed1", "ed25519");
    let dns_addr: SocketAddr = "127.0.0.153:53".parse().expect("addr");
    let Some(_dns) = TestDns::start_at(
        dns_addr,
        vec![
            (
                "example.test",
                vec![Rec::Txt("s2026._domainkey.example.test".into(), rsa_txt)],
            ),
            (
                "example.org",
                vec![Rec::Txt("ed1._domainkey.example.org".into(), ed_txt)],
            ),
        ],
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot bind {dns_addr} under CI"
        );
        eprintln!("SKIPPED: cannot bind {dns_addr} (needs root) for opendkim-testmsg");
        return;
    };
    let extra = format!(
        "[[dkim.keys]]\ndomain = \"example.test\"\nselector = \"s2026\"\nkey = \"{}\"\n\
         [[dkim.keys]]\ndomain = \"example.org\"\nselector = \"ed1\"\nkey = \"{}\"\n",
        rsa.display(),
        ed.display()
    );
    let server = start(dir.clone(), standard_dns(), sink.addr.port(), "", &extra);
    let mut s = Smtp::ready(server.mx());
    for (from, subject) in [
        ("alice@example.test", "rsa"),
        ("a.smith@example.org", "ed25519"),
    ] {
        let r = s.send_mail(
            from,
            &["dave@partner.test"],
            &message(from, "dave@partner.test", subject),
        );
        assert_eq!(r.0, 250, "{r:?}");
    }
    let got = sink.wait(2, Duration::from_secs(30));
    assert_eq!(got.len(), 2);
    for m in &got {
        let subject = header_values(&m.data, "Subject")[0].clone();
        let Some((ok, text)) = opendkim_verify(dir.path(), dns_addr, &m.data) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "opendkim-testmsg unavailable under CI"
            );
            eprintln!("SKIPPED: unshare/mount or opendkim-testmsg unavailable");
            return;
        };
        assert!(ok, "{subject}: opendkim-testmsg: {text}");
        let mut tampered = m.data.clone();
        let n = tampered.len();
        tampered[n - 4] ^= 0x20;
        let (ok, _) = opendkim_verify(dir.path(), dns_addr, &tampered).expect("ran before");
        assert!(!ok, "{subject}: a changed body must not verify");
    }
}

#[test]
fn require_ptr_refuses_a_client_whose_name_does_not_point_back() {
    // hickory answers loopback reverse look-ups itself (RFC 6761:
    // "localhost", which is 127.0.0.1): 127.0.0.1 is forward-confirmed,
    // 127.0.0.2 is not.
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let server = start(
        dir,
        standard_dns(),
        free_port(),
        "relay_from = [\"127.0.0.9/32\"]",
        "[smtp.inbound.checks]\nrequire_ptr = true\n",
    );
    let (mut s, g) = Smtp::connect_from(server.mx(), ip("127.0.0.2"));
    assert_eq!(g.0, 550, "{g:?}");
    assert!(g.1.starts_with("5.7.25"), "{g:?}");
    assert!(s.is_closed());
    let (_, g) = Smtp::connect_from(server.mx(), ip("127.0.0.1"));
    assert_eq!(g.0, 220, "{g:?}");
}

#[test]
fn sendmail_without_a_daemon_queues_the_message_signed() {
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (key, txt) = keygen(dir.path(), "example.test", "s1", "ed25519");
    let extra = format!(
        "[[dkim.keys]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey = \"{}\"\n",
        key.display()
    );
    let server = start(dir.clone(), standard_dns(), free_port(), "", &extra);
    let config = server.config_path.clone();
    drop(server);
    let out = cli_with(
        &config,
        &["sendmail", "-f", "alice@example.test", "dave@partner.test"],
        Some(message("alice@example.test", "dave@partner.test", "offline").as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q = cli_with(&config, &["mailq", "--json"], None);
    let line = String::from_utf8_lossy(&q.stdout)
        .lines()
        .next()
        .expect("queued")
        .to_string();
    let id = serde_json::from_str::<serde_json::Value>(&line).expect("json")["queue_id"]
        .as_str()
        .expect("id")
        .to_string();
    let body = cli_with(&config, &["show", &id, "--body"], None).stdout;
    let start = body
        .windows(15)
        .position(|w| w == b"DKIM-Signature:")
        .expect("signed in the queue");
    let recs = records(dir.path(), &[("s1._domainkey.example.test".into(), txt)]);
    assert_eq!(
        dkimpy_verify(dir.path(), &body[start..], &recs),
        "dkim=pass 1"
    );
}

#[test]
fn an_ed25519_signature_made_by_dkimpy_is_verified_by_petrel() {
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let (_, rsa_txt) = keygen(dir.path(), "sender.test", "s1", "rsa2048");
    let (ed, ed_txt) = keygen(dir.path(), "sender.test", "e1", "ed25519");
    let mut zones = inbound_zones(&rsa_txt);
    zones
        .iter_mut()
        .find(|(z, _)| *z == "sender.test")
        .expect("zone")
        .1
        .push(Rec::Txt("e1._domainkey.sender.test".into(), ed_txt));
    let dns = TestDns::start(zones);
    let server = start(
        dir.clone(),
        dns.addr,
        free_port(),
        "relay_from = [\"127.0.0.1/32\"]",
        "",
    );
    let m = dir.path().join("ed.eml");
    std::fs::write(
        &m,
        message("x@sender.test", "alice@example.test", "ed25519-in"),
    )
    .expect("write");
    let signed = dkimpy(&[
        "sign-ed25519",
        m.to_str().expect("path"),
        ed.to_str().expect("path"),
        "e1",
        "sender.test",
    ]);
    let signed = String::from_utf8(signed).expect("utf-8");
    assert!(signed.contains("a=ed25519-sha256"), "{signed}");
    let mut s = Smtp::ready_from(server.mx(), ip("127.0.0.2"));
    // SPF is not aligned (neutral.test): DMARC passes on the signature.
    let r = s.send_mail("x@neutral.test", &["alice@example.test"], &signed);
    assert_eq!(r.0, 250, "{r:?}");
    let msgs = by_subject(&server, "alice", 1);
    let ar = &our_results(&msgs[0].1)[0];
    assert!(
        ar.contains("dkim=pass") && ar.contains("header.s=e1"),
        "{ar}"
    );
    assert!(ar.contains("dmarc=pass"), "{ar}");
}
