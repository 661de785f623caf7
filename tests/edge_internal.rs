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
            "to=<bob@internet.test>",
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
            .wait_log(&["delivery", "to=<y@nomx.test>", "relay=127.0.0.1"], WAIT),
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

/// A shipped configuration file (`config/NAME`) as a TOML table.
fn shipped(name: &str) -> toml::Table {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name);
    toml::from_str(&std::fs::read_to_string(&path).expect("read shipped config")).expect("toml")
}

fn set(t: &mut toml::Table, path: &[&str], v: toml::Value) {
    let (last, parents) = path.split_last().expect("path");
    let mut at = t;
    for p in parents {
        at = at
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("table");
    }
    at.insert(last.to_string(), v);
}

/// Every listener of a shipped file on a loopback port; `first` for the
/// first listener (0: any free port).
fn loopback_listeners(t: &mut toml::Table, first: u16) {
    let list = t
        .get_mut("listeners")
        .and_then(|l| l.as_array_mut())
        .expect("listeners");
    for (i, l) in list.iter_mut().enumerate() {
        let port = if i == 0 { first } else { 0 };
        l.as_table_mut()
            .expect("listener")
            .insert("bind".into(), format!("127.0.0.1:{port}").into());
    }
}

/// The shipped `config/edge.toml` and `config/internal.toml`, changed only
/// where a test must: spools in temporary directories, loopback ports, the
/// test's DNS server, and the edge's routes pointing at the internal
/// server's port. Everything else — recipient verification, STARTTLS, the
/// outbound TLS policy — is as shipped.
fn shipped_pair() -> (TestServer, TestServer) {
    let edge_port = free_port();
    let internal_dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let mut internal = shipped("internal.toml");
    set(
        &mut internal,
        &["server", "spool"],
        internal_dir
            .path()
            .join("spool")
            .display()
            .to_string()
            .into(),
    );
    set(
        &mut internal,
        &["store", "path"],
        internal_dir
            .path()
            .join("store")
            .display()
            .to_string()
            .into(),
    );
    loopback_listeners(&mut internal, 0);
    set(
        &mut internal,
        &["smtp", "outbound", "smarthost"],
        format!("[127.0.0.1]:{edge_port}").into(),
    );
    set(
        &mut internal,
        &["dns", "nameservers"],
        vec![toml::Value::from(standard_dns().to_string())].into(),
    );
    // Sessions logged, so that the test sees the edge's TLS handshakes.
    set(&mut internal, &["log", "smtp_debug"], 1.into());
    let internal = TestServer::start_in(internal_dir, &internal.to_string());

    let edge_dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let mut edge = shipped("edge.toml");
    set(
        &mut edge,
        &["server", "spool"],
        edge_dir.path().join("spool").display().to_string().into(),
    );
    loopback_listeners(&mut edge, edge_port);
    let route = format!("[127.0.0.1]:{}", internal.mx().port());
    for r in edge["smtp"]["outbound"]["routes"]
        .clone()
        .as_array()
        .expect("routes")
        .iter()
        .enumerate()
    {
        let mut r = r.1.as_table().expect("route").clone();
        r.insert("host".into(), route.clone().into());
        let routes = edge
            .get_mut("smtp")
            .and_then(|s| s.get_mut("outbound"))
            .and_then(|o| o.get_mut("routes"))
            .and_then(|r| r.as_array_mut())
            .expect("routes");
        let i = routes
            .iter()
            .position(|x| x["domain"] == r["domain"])
            .expect("route");
        routes[i] = toml::Value::Table(r);
    }
    set(
        &mut edge,
        &["dns", "nameservers"],
        vec![toml::Value::from(standard_dns().to_string())].into(),
    );
    let edge = TestServer::start_in(edge_dir, &edge.to_string());
    (edge, internal)
}

#[test]
fn shipped_edge_refuses_unknown_recipients_at_rcpt_by_asking_the_internal_server() {
    let (edge, internal) = shipped_pair();
    let mut s = Smtp::ready_from(edge.mx(), INTERNET_CLIENT);
    let ehlo = s.cmd("EHLO internet-client.test");
    assert!(
        ehlo.1.contains("STARTTLS"),
        "the Internet-facing listener offers STARTTLS: {ehlo:?}"
    );
    assert_eq!(s.cmd("MAIL FROM:<carol@internet.test>").0, 250);
    let r = s.cmd("RCPT TO:<nobody@example.test>");
    assert_eq!(r.0, 550, "unknown user refused at RCPT: {r:?}");
    assert!(r.1.starts_with("5.1.1"), "{r:?}");
    let r = s.cmd("RCPT TO:<nobody@example.org>");
    assert_eq!(r.0, 550, "also in the alias domain: {r:?}");
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<alice@example.org>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<support@example.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    s.send_raw(b"Subject: verified\r\nMessage-ID: <verified@internet.test>\r\n\r\nhi\r\n.\r\n");
    let id = queued_id(&s.reply());
    let m = internal.wait_mailbox("alice", 1, WAIT);
    assert_eq!(m.len(), 1, "{}", edge.log());
    let raw = String::from_utf8(internal.mailbox_message("alice", 1)).expect("utf-8");
    assert!(
        raw.contains("by mail.example.test (petrel) with ESMTPS"),
        "the edge -> internal hop is encrypted:\n{raw}"
    );
    assert!(edge.wait_log(&["delivery", &id, "status=sent"], WAIT));
    // The probes went over TLS too, and none carried DATA: the internal
    // server logged one accepted message (the real one) only.
    let log = internal.log();
    assert!(
        log.lines()
            .filter(|l| l.contains("TLS established"))
            .count()
            >= 2,
        "{log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.contains(" accepted ")).count(),
        1,
        "{log}"
    );
    // Nothing was accepted for the unknown user, so nothing bounces.
    assert!(edge.mailq().is_empty(), "{:?}", edge.mailq());

    // A real client (Python's smtplib) over the edge's STARTTLS gets the
    // same answers inside TLS.
    let script = r#"
import smtplib, ssl, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)
s.ehlo("client.internet.test")
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
s.ehlo("client.internet.test")
s.mail("carol@internet.test")
print("nobody", *s.rcpt("nobody@example.test"))
print("bob", *s.rcpt("bob@example.test"))
s.quit()
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        script,
        &edge.mx().ip().to_string(),
        &edge.mx().port().to_string(),
    ]);
    let out = common::run_cmd(cmd, None);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("nobody 550 b'5.1.1"), "{said}");
    assert!(said.contains("bob 250"), "{said}");
}

#[test]
fn edge_answers_450_when_the_internal_server_cannot_be_asked_and_caches_answers() {
    let (edge, mut internal) = shipped_pair();
    let mut s = Smtp::ready_from(edge.mx(), INTERNET_CLIENT);
    assert_eq!(s.cmd("MAIL FROM:<carol@internet.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<nobody@example.test>").0, 550);
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(s.cmd("RSET").0, 250);
    assert_eq!(internal.stop(), Some(0));
    // Answers already known stand without the internal server...
    assert_eq!(s.cmd("MAIL FROM:<carol@internet.test>").0, 250);
    let r = s.cmd("RCPT TO:<nobody@example.test>");
    assert_eq!(r.0, 550, "negative answer cached: {r:?}");
    assert_eq!(
        s.cmd("RCPT TO:<alice@example.test>").0,
        250,
        "positive answer cached"
    );
    // ...and an address never asked about is deferred, not refused.
    let r = s.cmd("RCPT TO:<bob@example.test>");
    assert_eq!(r.0, 450, "internal server down: try again later: {r:?}");
    assert!(r.1.starts_with("4.1.1"), "{r:?}");
    assert!(edge.wait_log(
        &["recipient verification", "bob@example.test", "cached=false"],
        WAIT
    ));
}

/// A `config/trial/` file with its fixed ports replaced by free ones and
/// the test's DNS server; spools stay relative (in the test's directory).
fn trial(name: &str, ports: &[(u16, u16)]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/trial")
        .join(name);
    let mut text = std::fs::read_to_string(path).expect("read trial config");
    for (from, to) in ports {
        text = text.replace(&format!(":{from}\""), &format!(":{to}\""));
    }
    text.replace(
        "nameservers = []",
        &format!("nameservers = [\"{}\"]", standard_dns()),
    )
    .replace("../../", "")
}

#[test]
fn trial_pair_runs_on_one_host_and_carries_mail_from_edge_to_mailbox() {
    let ports: Vec<(u16, u16)> = [2525, 2526, 5587, 1110]
        .iter()
        .map(|p| (*p, free_port()))
        .collect();
    let internal_dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let internal = TestServer::start_in(internal_dir, &trial("internal.toml", &ports));
    assert_eq!(internal.mx().ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let edge_dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let edge = TestServer::start_in(edge_dir, &trial("edge.toml", &ports));
    assert_eq!(edge.mx().ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));

    let mut s = Smtp::ready_from(edge.mx(), INTERNET_CLIENT);
    assert_eq!(s.cmd("MAIL FROM:<carol@internet.test>").0, 250);
    let r = s.cmd("RCPT TO:<nobody@example.test>");
    assert_eq!(r.0, 550, "{r:?}");
    assert!(r.1.starts_with("5.1.1"), "{r:?}");
    assert_eq!(s.cmd("RSET").0, 250);
    let id = queued_id(&s.send_mail(
        "carol@internet.test",
        &["alice@example.org"],
        "Subject: trial\r\nMessage-ID: <trial@internet.test>\r\n\r\nhello from the trial\r\n",
    ));
    let m = internal.wait_mailbox("alice", 1, WAIT);
    assert_eq!(m.len(), 1, "{}", edge.log());
    assert_eq!(m[0]["message_id"], "<trial@internet.test>");
    assert!(edge.wait_log(&["delivery", &id, "status=sent", "relay=127.0.0.2"], WAIT));
    let raw = String::from_utf8(internal.mailbox_message("alice", 1)).expect("utf-8");
    assert!(raw.contains("hello from the trial"), "{raw}");
    assert!(raw.contains("with ESMTPS"), "TLS between the two:\n{raw}");
}

#[test]
fn a_relay_domain_routed_back_to_the_edge_itself_is_deferred_at_once() {
    let port = free_port();
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = format!(
        r#"
[server]
hostname = "mx.example.test"
spool = "{spool}"
postmaster = "postmaster@example.test"
[domains]
primary = "mx.example.test"
relay_domains = ["example.test"]
[[listeners]]
name = "mx"
protocol = "smtp"
bind = "127.0.0.1:{port}"
[smtp.inbound]
verify_relay_recipients = true
verify_timeout = "15s"
[[smtp.outbound.routes]]
domain = "example.test"
host = "[127.0.0.1]:{port}"
[dns]
nameservers = ["{dns}"]
[[aliases]]
address = "postmaster@mx.example.test"
members = ["postmaster@example.test"]
"#,
        spool = dir.path().join("spool").display(),
        dns = standard_dns()
    );
    let edge = TestServer::start_in(dir, &cfg);
    let mut s = Smtp::ready_from(edge.mx(), INTERNET_CLIENT);
    assert_eq!(s.cmd("MAIL FROM:<carol@internet.test>").0, 250);
    let started = std::time::Instant::now();
    let r = s.cmd("RCPT TO:<someone@example.test>");
    let took = started.elapsed();
    assert_eq!(r.0, 450, "a loop is no answer: defer, never accept: {r:?}");
    assert!(
        took < Duration::from_secs(5),
        "the loop is seen at once, not after verify_timeout: {took:?}"
    );
    assert!(edge.wait_log(&["recipient verification", "loops back here"], WAIT));
    assert_eq!(s.cmd("QUIT").0, 221);
}
