//! The webmail and the administrator's console against the real daemon:
//! headless Chromium driven by Selenium (tests/interop/webmail.py) logs
//! in, reads what SMTP delivered, sends, moves, deletes, and uses the
//! console; raw HTTP requests check the security rules a browser cannot
//! show (CSRF, cookies, headers, another user's message, uploads).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{Login, get, login, post, request};
use common::sink::{Sink, SinkOptions};
use common::{Smtp, TestServer, base_config, free_port, queued_id, run_cmd, standard_dns};

const PASSWORD: &str = "web secret";

fn config(dir: &Path, outbound_port: u16) -> String {
    let hash = petrel::auth::hash_password(PASSWORD).expect("hash");
    let base = base_config(
        &dir.join("spool"),
        standard_dns(),
        outbound_port,
        true,
        true,
    )
    .replace(
        "name = \"alice\"\naddresses",
        &format!("name = \"alice\"\nadmin = true\npassword = \"{hash}\"\naddresses"),
    )
    .replace(
        "name = \"bob\"\naddresses",
        &format!("name = \"bob\"\npassword = \"{hash}\"\naddresses"),
    );
    format!(
        "{base}\n[[listeners]]\nname = \"web\"\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\ntls = \"none\"\n\n\
         [[listeners]]\nname = \"imap\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:0\"\ntls = \"starttls\"\n\n\
         [smtp.inbound]\nrelay_from = [\"127.0.0.0/8\"]\nmax_message_size = \"2MiB\"\n"
    )
}

/// Octets of every value, twice, and some text: what the attachment holds.
fn attachment_bytes() -> Vec<u8> {
    let mut v: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    v.extend_from_slice(b"\r\n.\r\nend\n");
    v
}

fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for (i, c) in b.chunks(3).enumerate() {
        if i > 0 && i % 19 == 0 {
            out.push_str("\r\n");
        }
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn deliver(server: &TestServer, tracker: u16) -> String {
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(
        "someone@partner.test",
        &["alice@example.test"],
        "From: Someone <someone@partner.test>\r\nTo: alice@example.test\r\nSubject: Plain hello\r\n\
         Message-ID: <plain.1@partner.test>\r\n\
         Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\nfirst line of a plain message\r\nsecond line\r\n",
    ));
    let html = format!(
        "From: News <news@partner.test>\r\nTo: alice@example.test\r\nSubject: HTML with a script\r\n\
         Date: Thu, 03 Dec 2026 11:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=b1\r\n\r\n\
         --b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <html><body><p><b>Bold words</b></p><script>window.pwned = 1; document.title = 'pwned';</script>\r\n\
         <img src=\"http://127.0.0.1:{tracker}/pixel.gif\" alt=tracker>\r\n\
         <img src=x onerror=\"document.title='pwned2'\">\r\n\
         <form action=\"http://127.0.0.1:{tracker}/steal\"><input name=pw></form>\r\n\
         <a href=\"http://127.0.0.1:{tracker}/link\">a link</a></body></html>\r\n\
         --b1\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename*=UTF-8''R%C3%A9sum%C3%A9%20%E2%82%AC.bin\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        base64(&attachment_bytes())
    );
    queued_id(&s.send_mail("news@partner.test", &["alice@example.test"], &html));
    queued_id(&s.send_mail(
        "zoe@partner.test",
        &["alice@example.test"],
        "From: =?UTF-8?Q?Zo=C3=AB_M=C3=BCller?= <zoe@partner.test>\r\nTo: alice@example.test\r\n\
         Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\r\nDate: Thu, 03 Dec 2026 12:00:00 +0000\r\n\r\nHallo\r\n",
    ));
    queued_id(&s.send_mail(
        "x@partner.test",
        &["support@example.test"],
        "From: x@partner.test\r\nTo: support@example.test\r\nSubject: for support\r\n\r\nhelp\r\n",
    ));
    server.wait_mailbox("alice", 3, Duration::from_secs(15));
    server.wait_mailbox("support", 1, Duration::from_secs(15));
    // Stays queued: internet.test's MX (127.0.0.6) refuses connections.
    let id = queued_id(&s.send_mail(
        "spammer@bad.test",
        &["victim@internet.test"],
        "From: spammer@bad.test\r\nSubject: buy now\r\n\r\ncheap\r\n",
    ));
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        let q = server.mailq();
        if q.iter()
            .any(|e| e["queue_id"] == id.as_str() && e["queue_name"] == "deferred")
        {
            return id;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{id} did not reach the deferred queue: {:?}",
        server.mailq()
    );
}

/// Debian's Python (with python3-selenium) when there is one.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[test]
fn a_browser_reads_sends_files_and_administers() {
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), sink.addr.port()));
    let tracker = free_port();
    let queued = deliver(&server, tracker);
    let att = dir.path().join("attachment.bin");
    std::fs::write(&att, attachment_bytes()).expect("write");
    let shots = std::env::var("PETREL_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("screenshots"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/webmail.py");
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args(["--web", &server.addr("web").port().to_string()])
        .args(["--smtp", &server.mx().port().to_string()])
        .args(["--imap", &server.addr("imap").port().to_string()])
        .args(["--password", PASSWORD])
        .args(["--tracker", &tracker.to_string()])
        .args(["--queued", &queued])
        .arg("--attachment")
        .arg(&att)
        .arg("--shots")
        .arg(&shots);
    let out = run_cmd(cmd, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "webmail.py failed:\n{stdout}");
    assert!(stdout.contains("20 passed, 0 failed"), "{stdout}");
    for name in ["message-list", "read-html", "compose", "console-queue"] {
        assert!(
            shots.join(format!("{name}.png")).exists(),
            "screenshot {name}"
        );
    }

    // The messages sent from the browser reached the remote peer: the
    // reply, the new message with its attachment (from alice's address,
    // without a Bcc header), the forward with the original attached.
    let got = sink.wait(3, Duration::from_secs(15));
    let parse = |r: &common::sink::Received| {
        mail_parser::MessageParser::default()
            .parse(&r.data)
            .expect("parse")
            .into_owned()
    };
    let reply = got
        .iter()
        .map(parse)
        .find(|m| m.subject() == Some("Re: Plain hello"))
        .expect("the reply");
    assert_eq!(reply.in_reply_to().as_text(), Some("plain.1@partner.test"));
    let text = reply.body_text(0).unwrap_or_default().into_owned();
    assert!(
        text.contains("> first line of a plain message") && text.contains("Thanks."),
        "{text}"
    );
    let fwd = got
        .iter()
        .map(parse)
        .find(|m| m.subject() == Some("Fwd: Grüße aus Köln"))
        .expect("the forward");
    let original = fwd
        .attachments()
        .find_map(|a| a.message())
        .expect("the original as message/rfc822");
    assert_eq!(original.subject(), Some("Grüße aus Köln"));
    let m = got
        .iter()
        .find(|r| parse(r).subject() == Some("Sent from the web — ünïcode"))
        .expect("the remote copy");
    assert!(m.mail.contains("<alice@example.test>"), "{}", m.mail);
    let parsed = mail_parser::MessageParser::default()
        .parse(&m.data)
        .expect("parse");
    assert_eq!(parsed.subject(), Some("Sent from the web — ünïcode"));
    let a = parsed.attachments().next().expect("attachment");
    assert_eq!(a.contents(), attachment_bytes().as_slice());
    assert!(
        !String::from_utf8_lossy(&m.data)
            .to_lowercase()
            .contains("\nbcc:")
    );
    // The denied sender is refused by a new session (and kept over a
    // restart: the list is the daemon's own file).
    assert!(dir.path().join("spool/deny-list.json").exists());
}

#[test]
fn the_web_refuses_what_it_must() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), free_port()));
    let port = server.addr("web").port();
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(
        "x@partner.test",
        &["alice@example.test"],
        "Subject: for alice\r\n\r\nprivate\r\n",
    ));
    server.wait_mailbox("alice", 1, Duration::from_secs(10));

    // Not logged in: pages go to the login form.
    let (code, head, _) = request(port, "GET", "/", "", "", "");
    assert_eq!(code, 303);
    assert!(head.to_lowercase().contains("location: /login"), "{head}");

    // Every answer carries the security headers.
    let (code, head, _) = request(port, "GET", "/login", "", "", "");
    assert_eq!(code, 200);
    let h = head.to_lowercase();
    for want in [
        "content-security-policy: default-src 'none'; script-src 'self'",
        "x-frame-options: deny",
        "referrer-policy: no-referrer",
        "x-content-type-options: nosniff",
    ] {
        assert!(h.contains(want), "missing {want}:\n{head}");
    }
    assert!(!h.contains("unsafe-inline"));

    let Login {
        cookie,
        set_cookie,
        csrf,
    } = login(port, "alice", PASSWORD);
    let sc = set_cookie.to_lowercase();
    assert!(
        sc.contains("httponly") && sc.contains("samesite=strict") && sc.contains("path=/"),
        "{set_cookie}"
    );
    assert!(
        !sc.contains("secure"),
        "no Secure on a plain listener: {set_cookie}"
    );

    // A state change without the token is refused and changes nothing.
    let (code, _) = post(port, &cookie, "/act", "f=INBOX&uid=1&op=delete");
    assert_eq!(code, 403);
    assert_eq!(server.mailbox("alice").len(), 1, "nothing deleted");
    let form = format!("csrf={}&f=INBOX&uid=1&op=flag", "0".repeat(64));
    let (code, _) = post(port, &cookie, "/act", &form);
    assert_eq!(code, 403, "a wrong token");
    let form = format!("csrf={csrf}&f=INBOX&uid=1&op=flag&back=//evil.test/");
    let (code, head) = post(port, &cookie, "/act", &form);
    assert_eq!(code, 303);
    assert!(
        head.contains("Location: /?f=INBOX") || head.contains("location: /?f=INBOX"),
        "stays on this site: {head}"
    );

    // bob cannot name alice's message, nor her folders, nor the console.
    let bob = login(port, "bob", PASSWORD).cookie;
    for path in [
        "/read?f=INBOX&uid=1",
        "/attachment?f=INBOX&uid=1&a=0",
        "/?f=Shared/support",
    ] {
        let (code, body) = get(port, &bob, path);
        assert_eq!(code, 404, "{path}");
        assert!(!body.contains("private"));
    }
    let (code, _) = get(port, &bob, "/admin/queue");
    assert_eq!(code, 403);

    // An upload past the message size limit (2 MiB) is refused whole.
    let big = "x".repeat(3 * 1024 * 1024);
    let body = format!(
        "--B\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--B\r\nContent-Disposition: form-data; name=\"files\"; filename=\"../../etc/big\"\r\nContent-Type: text/plain\r\n\r\n{big}\r\n--B--\r\n"
    );
    let (code, _, _) = request(
        port,
        "POST",
        "/send",
        &cookie,
        "multipart/form-data; boundary=B",
        &body,
    );
    assert!(code == 413 || code == 400, "{code}");
    assert!(server.mailq().is_empty(), "nothing queued");

    // Logout ends the session on the server: the old cookie is no key.
    let (code, _) = post(port, &cookie, "/logout", &format!("csrf={csrf}"));
    assert_eq!(code, 303);
    let (code, head, _) = request(port, "GET", "/", &cookie, "", "");
    assert_eq!(code, 303, "{head}");

    // Failed logins are slowed: the second waits about 2 s.
    let bad = "username=alice&password=nope";
    assert_eq!(post(port, "", "/login", bad).0, 401);
    let t = Instant::now();
    assert_eq!(post(port, "", "/login", bad).0, 401);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "second failure answered after {waited:?}"
    );
    assert!(server.wait_log(
        &["authentication failed", "protocol=http"],
        Duration::from_secs(5)
    ));
}

fn mail_from(server: &TestServer, sender: &str) -> (u16, String) {
    let mut s = Smtp::ready(server.mx());
    s.cmd(&format!("MAIL FROM:<{sender}>"))
}

#[test]
fn console_entries_reach_new_sessions_and_outlive_a_restart() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = config(dir.path(), free_port());
    let mut server = TestServer::start_in(dir.clone(), &cfg);
    let port = server.addr("web").port();
    let Login { cookie, csrf, .. } = login(port, "alice", PASSWORD);
    let (_, overview) = get(port, &cookie, "/admin");
    assert!(
        overview.contains("Delivery rates") && overview.contains("delivered"),
        "{overview}"
    );

    assert_eq!(
        mail_from(&server, "spammer@bad.test").0,
        250,
        "not denied yet"
    );
    let (code, head) = post(
        port,
        &cookie,
        "/admin/deny/add",
        &format!("csrf={csrf}&kind=domain&value=Bad.Test"),
    );
    assert_eq!(code, 303, "{head}");
    for sender in ["spammer@bad.test", "x@mx.bad.test"] {
        let (code, text) = mail_from(&server, sender);
        assert_eq!(code, 550, "{sender}: {text}");
        assert!(text.contains("5.7.1"), "{text}");
    }
    assert_eq!(mail_from(&server, "friend@partner.test").0, 250);
    let (code, _) = post(
        port,
        &cookie,
        "/admin/trace",
        &format!("csrf={csrf}&level=2"),
    );
    assert_eq!(code, 303);
    assert!(server.wait_log(
        &["smtp_debug set from the console", "level=2"],
        Duration::from_secs(5)
    ));
    // The explain dry run reads the same list, and names it.
    let out = server.cli(&[
        "explain",
        "--client",
        "192.0.2.50",
        "--from",
        "spammer@bad.test",
        "--to",
        "alice@example.test",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("explain json");
    assert_eq!(v["code"], 550, "{v}");
    assert!(v.to_string().contains("deny list (console)"), "{v}");

    // A restart keeps the entry (and ends the browser sessions).
    server.stop();
    let server = TestServer::start_in(dir.clone(), &cfg);
    let port = server.addr("web").port();
    assert_eq!(
        mail_from(&server, "spammer@bad.test").0,
        550,
        "denied after a restart"
    );
    let (code, _) = get(port, &cookie, "/admin");
    assert_eq!(code, 303, "the old session is gone");
    let Login { cookie, csrf, .. } = login(port, "alice", PASSWORD);
    let (_, list) = get(port, &cookie, "/admin/deny");
    assert!(
        list.contains("bad.test") && list.contains("alice"),
        "{list}"
    );
    let (code, _) = post(
        port,
        &cookie,
        "/admin/deny/remove",
        &format!("csrf={csrf}&kind=domain&value=bad.test"),
    );
    assert_eq!(code, 303);
    assert_eq!(mail_from(&server, "spammer@bad.test").0, 250, "removed");
    // A value that is no address is refused with a reason, nothing added.
    let (code, _) = post(
        port,
        &cookie,
        "/admin/deny/add",
        &format!("csrf={csrf}&kind=client&value=not-an-ip"),
    );
    assert_eq!(code, 400);
}

#[test]
fn the_list_and_the_console_filter_what_they_are_asked() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), free_port()));
    let port = server.addr("web").port();
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(
        "x@partner.test",
        &["bob@example.test"],
        "From: x@partner.test\r\nSubject: quarterly figures\r\n\r\nthe private numbers\r\n",
    ));
    let a = queued_id(&s.send_mail(
        "a@bad.test",
        &["victim@internet.test"],
        "Subject: a\r\n\r\na\r\n",
    ));
    let b = queued_id(&s.send_mail(
        "b@bad.test",
        &["victim@internet.test"],
        "Subject: b\r\n\r\nb\r\n",
    ));
    // A refusal for the rejection list: no such local user.
    assert_eq!(s.cmd("MAIL FROM:<probe@spam.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<nobody-here@example.test>").0, 550);
    server.wait_mailbox("bob", 1, Duration::from_secs(10));

    // bob logs in with his address; the list's filters.
    let Login {
        cookie: bob,
        csrf: bob_csrf,
        ..
    } = login(port, "bob@example.test", PASSWORD);
    for (query, found) in [
        ("q=private&in=body", 1),
        ("q=private&in=subject", 0),
        ("q=quarterly&in=subject", 1),
        ("q=x%40partner&in=from", 1),
        ("since=2000-01-01&before=2099-12-31", 1),
        ("since=2099-01-01", 0),
    ] {
        let (code, page) = get(port, &bob, &format!("/?f=INBOX&{query}"));
        assert_eq!(code, 200);
        assert!(
            page.contains(&format!(", {found} found")),
            "{query}: {found} expected"
        );
    }
    // Sending from an address that is not bob's is refused; nothing queued.
    let queued_before = server.mailq().len();
    let body = format!(
        "--B\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{bob_csrf}\r\n\
         --B\r\nContent-Disposition: form-data; name=\"from\"\r\n\r\nalice@example.test\r\n\
         --B\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nsomeone@partner.test\r\n\
         --B\r\nContent-Disposition: form-data; name=\"action\"\r\n\r\nsend\r\n--B--\r\n"
    );
    let (code, _, page) = request(
        port,
        "POST",
        "/send",
        &bob,
        "multipart/form-data; boundary=B",
        &body,
    );
    assert_eq!(code, 400);
    assert!(page.contains("not one of your addresses"), "{page}");
    assert_eq!(server.mailq().len(), queued_before);

    // The console: both messages deferred, counted, filtered.
    let end = Instant::now() + Duration::from_secs(15);
    while server
        .mailq()
        .iter()
        .filter(|e| e["queue_name"] == "deferred")
        .count()
        < 2
    {
        assert!(Instant::now() < end, "not deferred: {:?}", server.mailq());
        std::thread::sleep(Duration::from_millis(100));
    }
    let Login {
        cookie: alice,
        csrf,
        ..
    } = login(port, "alice", PASSWORD);
    let (_, page) = get(port, &alice, "/admin");
    assert!(page.contains("id=\"count-deferred\">2<"), "{page}");
    assert!(page.contains("internet.test"), "by destination");
    let (_, page) = get(port, &alice, "/admin/queue?sender=b%40bad");
    assert!(page.contains(&b) && !page.contains(&a), "the sender filter");
    let (_, page) = get(
        port,
        &alice,
        "/admin/queue?domain=internet.test&state=deferred",
    );
    assert!(page.contains(&b) && page.contains(&a));
    // Hold everything the filter matches: only a's message.
    let (code, _) = post(
        port,
        &alice,
        "/admin/queue/act",
        &format!("csrf={csrf}&op=hold&all=1&sender=a%40bad.test&state=&domain=&rcpt="),
    );
    assert_eq!(code, 303);
    let q = server.mailq();
    let state = |id: &str| {
        q.iter()
            .find(|e| e["queue_id"] == id)
            .map(|e| e["queue_name"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(state(&a).as_deref(), Some("hold"));
    assert_eq!(state(&b).as_deref(), Some("deferred"));
    // The refusal is listed, searchable, with its deny buttons.
    let (_, page) = get(port, &alice, "/admin/rejections?q=nobody-here");
    assert!(
        page.contains("nobody-here@example.test") && page.contains("550"),
        "{page}"
    );
    assert!(
        page.contains("Deny the client 127.0.0.1") && page.contains("Deny the domain spam.test")
    );
    let (_, page) = get(port, &alice, "/admin/rejections?q=no-such-thing-at-all");
    assert!(page.contains("No rejections"), "the search narrows");
}

#[test]
fn on_a_tls_listener_the_cookie_is_secure() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = config(dir.path(), free_port()).replace(
        "protocol = \"http\"\nbind = \"127.0.0.1:0\"\ntls = \"none\"",
        "protocol = \"http\"\nbind = \"127.0.0.1:0\"\ntls = \"implicit\"",
    );
    let server = TestServer::start_in(dir.clone(), &cfg);
    let url = format!("https://127.0.0.1:{}/login", server.addr("web").port());
    let mut cmd = Command::new("curl");
    cmd.args(["-k", "-s", "-D", "-", "-o", "/dev/null", "--data"])
        .arg(format!(
            "username=alice&password={}",
            PASSWORD.replace(' ', "+")
        ))
        .arg(&url);
    let out = run_cmd(cmd, None);
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        head.starts_with("http/1.1 303") || head.starts_with("http/2 303"),
        "{head}"
    );
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_default();
    assert!(
        cookie.contains("; secure") && cookie.contains("httponly"),
        "{cookie}"
    );
}
