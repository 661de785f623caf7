//! `petrel reload` against the real daemon: renewed TLS certificates are
//! picked up, listeners are added, moved and removed, name servers and the
//! total delivery concurrency change, and what cannot be applied is said by
//! the CLI (exit 1) and logged by the daemon, as is a refused reload.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sink::{Sink, SinkOptions};
use common::{Smtp, TestServer, base_config, free_port, queued_id, run_cmd, standard_dns};

const WAIT: Duration = Duration::from_secs(20);

/// The base test configuration with `extra` appended; `dns` as the name
/// server and remote peers on `outbound_port`.
fn config(dir: &std::path::Path, dns: SocketAddr, outbound_port: u16, extra: &str) -> String {
    format!(
        "{}\n{extra}\n",
        base_config(&dir.join("spool"), dns, outbound_port, true, true)
    )
}

fn start(extra: &str) -> (TestServer, Arc<tempfile::TempDir>) {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = config(dir.path(), standard_dns(), free_port(), extra);
    (TestServer::start_in(dir.clone(), &cfg), dir)
}

/// Rewrites the daemon's configuration file and runs `petrel reload`.
fn reload_with(server: &TestServer, cfg: &str) -> std::process::Output {
    std::fs::write(&server.config_path, cfg).expect("write config");
    server.cli(&["reload"])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn answers(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => {
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line);
            line.starts_with("220")
        }
        Err(_) => false,
    }
}

/// Waits until `addr` answers (or stops answering, with `want = false`).
fn wait_answers(addr: SocketAddr, want: bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if answers(addr) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A listener table on `port`.
fn listener(name: &str, port: u16, tls: &str) -> String {
    format!(
        "[[listeners]]\nname = \"{name}\"\nprotocol = \"smtp\"\nbind = \"127.0.0.1:{port}\"\ntls = \"{tls}\"\n"
    )
}

/// The certificate the server presents after STARTTLS, as PEM (Python's
/// smtplib and ssl: a real client).
fn presented_certificate(addr: SocketAddr) -> String {
    let script = r#"
import smtplib, ssl, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=20)
s.ehlo("client.test")
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
print(ssl.DER_cert_to_PEM_cert(s.sock.getpeercert(True)))
s.quit()
"#;
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        script,
        &addr.ip().to_string(),
        &addr.port().to_string(),
    ]);
    let out = run_cmd(cmd, None);
    assert!(out.status.success(), "python: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The base64 body of a PEM certificate, on one line.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .collect()
}

fn write_certificate(dir: &std::path::Path, name: &str) -> String {
    let pair = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
    std::fs::write(dir.join("cert.pem"), pair.cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), pair.signing_key.serialize_pem()).expect("key");
    pair.cert.pem()
}

#[test]
fn reload_picks_up_a_renewed_certificate() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let first = write_certificate(dir.path(), "one.test");
    let tls = format!(
        "[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n{1}",
        dir.path().display(),
        listener("secure", 0, "starttls")
    );
    let cfg = config(dir.path(), standard_dns(), free_port(), &tls);
    let server = TestServer::start_in(dir.clone(), &cfg);
    let addr = server.addr("secure");
    assert_eq!(pem_body(&presented_certificate(addr)), pem_body(&first));

    // The certificate is renewed in place (as certbot does), then reload.
    let renewed = write_certificate(dir.path(), "one.test");
    assert_ne!(pem_body(&first), pem_body(&renewed));
    let out = server.cli(&["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("tls: certificate and key read again"));
    assert_eq!(
        pem_body(&presented_certificate(addr)),
        pem_body(&renewed),
        "new sessions get the renewed certificate"
    );

    // A broken renewal is reported and the running certificate stays.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").expect("write");
    let out = server.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("not applied: tls:"),
        "{}",
        text(&out.stderr)
    );
    assert!(server.wait_log(&["reload could not apply", "tls"], WAIT));
    assert_eq!(pem_body(&presented_certificate(addr)), pem_body(&renewed));
}

#[test]
fn reload_adds_moves_and_removes_listeners() {
    let dns = standard_dns();
    let outbound = free_port();
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), dns, outbound, ""));
    let mx = server.mx();

    let (p1, p2) = (free_port(), free_port());
    let extra = SocketAddr::from(([127, 0, 0, 1], p1));
    let out = reload_with(
        &server,
        &config(dir.path(), dns, outbound, &listener("extra", p1, "none")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("listeners: extra added"),
        "{}",
        text(&out.stdout)
    );
    assert!(wait_answers(extra, true), "the added listener answers");
    assert!(server.wait_log(&["listening", "listener=extra"], WAIT));
    let mut s = Smtp::ready(extra);
    queued_id(&s.send_mail(
        "x@partner.test",
        &["alice@example.test"],
        "Subject: through the new listener\r\n\r\nhi\r\n",
    ));

    // Moved: the new address answers, the old one no longer.
    let moved = SocketAddr::from(([127, 0, 0, 1], p2));
    let out = reload_with(
        &server,
        &config(dir.path(), dns, outbound, &listener("extra", p2, "none")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("extra moved"),
        "{}",
        text(&out.stdout)
    );
    assert!(wait_answers(moved, true));
    assert!(wait_answers(extra, false));
    // The session opened before the move goes on.
    assert_eq!(s.cmd("NOOP").0, 250);

    // A move to an address in use cannot be applied: said, logged, and the
    // listener stays where it was.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let out = reload_with(
        &server,
        &config(
            dir.path(),
            dns,
            outbound,
            &listener("extra", taken_port, "none"),
        ),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("not applied: listeners[1] (extra)"), "{err}");
    assert!(
        err.contains(&format!("it stays on 127.0.0.1:{p2}")),
        "{err}"
    );
    assert!(server.wait_log(&["reload could not apply", "listeners[1]"], WAIT));
    assert!(answers(moved));
    drop(taken);

    // Removed: it stops answering; the others go on.
    let out = reload_with(&server, &config(dir.path(), dns, outbound, ""));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("listeners: extra removed"));
    assert!(wait_answers(moved, false));
    assert!(answers(mx));
}

#[test]
fn a_refused_reload_is_logged_and_keeps_the_running_configuration() {
    let (server, dir) = start("");
    let good = std::fs::read_to_string(&server.config_path).expect("read");
    let out = reload_with(
        &server,
        &format!("{good}\n[web]\nsesion_lifetime = \"1h\"\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("sesion_lifetime"),
        "{}",
        text(&out.stderr)
    );
    // The CLI read the file first and refused it; SIGHUP makes the daemon
    // read it, refuse it and log why.
    server.signal(common::libc_sig::HUP);
    assert!(
        server.wait_log(&["reload refused", "sesion_lifetime"], WAIT),
        "{}",
        server.log()
    );
    let other_spool = good.replace(
        &dir.path().join("spool").display().to_string(),
        &dir.path().join("elsewhere").display().to_string(),
    );
    // Valid, but not applicable while running (the CLI would look for
    // the daemon in the new spool): the daemon refuses it and logs why.
    std::fs::write(&server.config_path, other_spool).expect("write");
    server.signal(common::libc_sig::HUP);
    assert!(server.wait_log(&["reload refused", "server.spool"], WAIT));
    assert!(answers(server.mx()));
}

#[test]
fn reload_changes_the_name_servers() {
    // partner.test's MX hosts are 127.0.0.2 and 127.0.0.3 in the test DNS.
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let port = sink.addr.port();
    // A name server that does not answer: deliveries defer.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
    drop(dead);
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let server = TestServer::start_in(dir.clone(), &config(dir.path(), dead_dns, port, ""));
    let mut s = Smtp::ready(server.mx());
    let id = queued_id(&s.send_mail(
        "alice@example.test",
        &["x@partner.test"],
        "Subject: dns\r\n\r\nhi\r\n",
    ));
    assert!(
        server.wait_log(&["delivery", &id, "status=deferred"], WAIT),
        "{}",
        server.log()
    );
    let out = reload_with(&server, &config(dir.path(), standard_dns(), port, ""));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("dns.nameservers"),
        "{}",
        text(&out.stdout)
    );
    let out = server.cli(&["requeue", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sink.wait(1, WAIT).len(), 1, "{}", server.log());
    assert!(server.wait_log(&["delivery", &id, "status=sent"], WAIT));
}

#[test]
fn reload_changes_the_total_delivery_concurrency() {
    let sink = Sink::start(
        "127.0.0.2:0",
        SinkOptions {
            data_delay: Some(Duration::from_millis(700)),
            ..Default::default()
        },
    );
    let port = sink.addr.port();
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let limits = |n: usize| {
        config(dir.path(), standard_dns(), port, "").replace(
            "[queue]\n",
            &format!("[queue]\ntotal_concurrency = {n}\ndestination_concurrency = 10\n"),
        )
    };
    let server = TestServer::start_in(dir.clone(), &limits(1));
    let send = |n: usize, tag: &str| {
        let mut s = Smtp::ready(server.mx());
        for i in 0..n {
            queued_id(&s.send_mail(
                "alice@example.test",
                &[&format!("{tag}{i}@partner.test")],
                "Subject: c\r\n\r\nhi\r\n",
            ));
        }
    };
    send(4, "before");
    assert_eq!(sink.wait(4, WAIT).len(), 4);
    assert_eq!(sink.peak_open(), 1, "total_concurrency = 1");

    let out = reload_with(&server, &limits(4));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("queue.total_concurrency: 4"));
    send(8, "after");
    assert_eq!(sink.wait(12, WAIT).len(), 12);
    let peak = sink.peak_open();
    assert!(
        (3..=4).contains(&peak),
        "after reload to 4, deliveries ran in parallel (peak {peak})"
    );
}
