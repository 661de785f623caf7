//! Prometheus metrics on an http listener, scraped from the running daemon
//! over a raw socket after it accepted, refused, delivered and deferred
//! mail; and `petrel status` counts kept as the queue changes (intake,
//! delivery, hold, release, delete, restart).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Smtp, TestServer, base_config, free_port, queued_id, standard_dns};

const WEB: &str = "\n[[listeners]]\nname = \"web\"\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\ntls = \"none\"\n";

/// `GET path` over HTTP/1.0 from `source`: (status line, headers, body).
fn http_get_from(addr: SocketAddr, source: &str, path: &str) -> (String, String, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let source: std::net::IpAddr = source.parse().expect("source");
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(source, 0)).expect("bind source");
        sock.connect(addr).await.expect("connect")
    });
    let mut s: TcpStream = s.into_std().expect("std stream");
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_string(),
        headers.to_ascii_lowercase(),
        body.to_string(),
    )
}

fn scrape(server: &TestServer) -> String {
    let (status, headers, body) = http_get_from(server.addr("web"), "127.0.0.1", "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        headers
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{headers}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

/// The value of the sample `series` (name with labels as rendered), 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("number"))
        .unwrap_or(0.0)
}

/// Waits until `series` reaches `want`.
fn wait_value(server: &TestServer, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(server);
        if value(&text, series) == want || Instant::now() > deadline {
            assert_eq!(value(&text, series), want, "{series}\n{text}");
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn slow_retry_with_web(extra_web: &str) -> TestServer {
    TestServer::start_with(
        "",
        &format!("[queue]\nretry_initial = \"1h\"\nretry_max = \"2h\"\n{WEB}{extra_web}"),
        free_port(),
    )
}

#[test]
fn metrics_count_accepted_refused_delivered_and_deferred_mail() {
    let server = slow_retry_with_web("");
    let before = scrape(&server);
    assert_eq!(
        value(&before, "petrel_messages_accepted_total{listener=\"mx\"}"),
        0.0
    );
    assert!(
        before.contains("# TYPE petrel_commit_duration_seconds histogram"),
        "{before}"
    );

    let mut s = Smtp::ready(server.mx());
    // Delivered locally.
    let r = s.send_mail(
        "carol@partner.test",
        &["alice@example.test"],
        "Subject: a\r\n\r\nhi\r\n",
    );
    assert_eq!(r.0, 250, "{r:?}");
    // Refused at RCPT: no such user.
    s.cmd("MAIL FROM:<carol@partner.test>");
    let r = s.cmd("RCPT TO:<nobody@example.test>");
    assert_eq!(r.0, 550, "{r:?}");
    s.cmd("RSET");
    // Deferred: the partner's MX refuses connections.
    let id = queued_id(&s.send_mail(
        "alice@example.test",
        &["dave@partner.test"],
        "Subject: b\r\n\r\nout\r\n",
    ));
    server.wait_mailbox("alice", 1, Duration::from_secs(10));
    assert!(server.wait_log(
        &["delivery", &id, "status=deferred"],
        Duration::from_secs(10)
    ));

    let text = wait_value(
        &server,
        "petrel_deliveries_total{status=\"deferred\",via=\"smtp\"}",
        1.0,
    );
    assert_eq!(
        value(&text, "petrel_messages_accepted_total{listener=\"mx\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "petrel_messages_rejected_total{stage=\"RCPT\",code=\"550\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "petrel_deliveries_total{status=\"sent\",via=\"local\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "petrel_queue_messages{state=\"deferred\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "petrel_queue_messages{state=\"active\"}"),
        0.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "petrel_sessions_total{protocol=\"smtp\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "petrel_sessions_active{protocol=\"smtp\"}"),
        1.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "petrel_dns_lookup_duration_seconds_count{kind=\"mx\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, "petrel_commit_batch_size_count") >= 2.0,
        "{text}"
    );
    assert!(value(&text, "petrel_store_bytes") > 0.0, "{text}");
    assert!(
        value(&text, "petrel_queue_oldest_message_age_seconds") >= 0.0,
        "{text}"
    );

    // The session ends: no longer active.
    s.cmd("QUIT");
    wait_value(&server, "petrel_sessions_active{protocol=\"smtp\"}", 0.0);

    // Held, then deleted: the gauges follow.
    assert!(server.cli(&["hold", &id]).status.success());
    wait_value(&server, "petrel_queue_messages{state=\"hold\"}", 1.0);
    assert!(server.cli(&["delete", &id]).status.success());
    let text = wait_value(&server, "petrel_queue_messages{state=\"hold\"}", 0.0);
    assert_eq!(
        value(&text, "petrel_queue_messages{state=\"deferred\"}"),
        0.0,
        "{text}"
    );
}

#[test]
fn metrics_are_refused_to_clients_outside_metrics_from_and_other_paths_are_404() {
    let server = slow_retry_with_web("\n[web]\nmetrics_from = [\"127.0.0.1/32\"]\n");
    let (status, _, _) = http_get_from(server.addr("web"), "127.0.0.2", "/metrics");
    assert!(status.contains(" 403 "), "{status}");
    let (status, _, _) = http_get_from(server.addr("web"), "127.0.0.1", "/nothing-here");
    assert!(status.contains(" 404 "), "{status}");
    scrape(&server);
}

#[test]
fn metrics_over_https_with_the_tls_certificate() {
    let server = TestServer::start_with(
        "",
        "[[listeners]]\nname = \"web\"\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\ntls = \"implicit\"\n",
        free_port(),
    );
    let url = format!("https://{}/metrics", server.addr("web"));
    let out = std::process::Command::new("curl")
        .args(["-sk", "-D", "-", &url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text} {out:?}");
    assert!(
        text.contains("petrel_sessions_total") || text.contains("# EOF"),
        "{text}"
    );
}

#[test]
fn pop3_sessions_and_tls_share_are_counted() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = format!(
        "{}\n[[listeners]]\nname = \"pop3\"\nprotocol = \"pop3\"\nbind = \"127.0.0.1:0\"\ntls = \"implicit\"\n{WEB}",
        base_config(
            &dir.path().join("spool"),
            standard_dns(),
            free_port(),
            true,
            true
        )
    );
    let server = TestServer::start_in(dir, &cfg);
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            &format!("pop3s://{}/", server.addr("pop3")),
            "-u",
            "alice:wrong",
        ])
        .output()
        .expect("curl");
    let _ = out;
    let text = wait_value(&server, "petrel_sessions_total{protocol=\"pop3\"}", 1.0);
    assert_eq!(
        value(&text, "petrel_tls_sessions_total{protocol=\"pop3\"}"),
        1.0,
        "{text}"
    );
}

fn status(server: &TestServer) -> serde_json::Value {
    let out = server.cli(&["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status json")
}

fn by_state(v: &serde_json::Value) -> (u64, u64, u64, u64) {
    let s = &v["by_state"];
    (
        v["messages"].as_u64().unwrap(),
        s["active"].as_u64().unwrap(),
        s["deferred"].as_u64().unwrap(),
        s["hold"].as_u64().unwrap(),
    )
}

fn wait_status(server: &TestServer, want: (u64, u64, u64, u64)) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = status(server);
        if by_state(&v) == want || Instant::now() > deadline {
            assert_eq!(by_state(&v), want, "{v}");
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_counts_follow_intake_delivery_hold_release_delete_and_restart() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = format!(
        "{}\n[queue]\nretry_initial = \"1h\"\nretry_max = \"2h\"\n",
        base_config(
            &dir.path().join("spool"),
            standard_dns(),
            free_port(),
            false,
            true
        )
    );
    let mut server = TestServer::start_in(dir.clone(), &cfg);
    wait_status(&server, (0, 0, 0, 0));
    let mut s = Smtp::ready(server.mx());
    let ids: Vec<String> = (0..3)
        .map(|i| {
            queued_id(&s.send_mail(
                "alice@example.test",
                &["dave@partner.test", "erin@partner.test"],
                &format!("Subject: {i}\r\n\r\nout\r\n"),
            ))
        })
        .collect();
    // Local delivery leaves the queue at once.
    s.send_mail(
        "carol@partner.test",
        &["bob@example.test"],
        "Subject: l\r\n\r\nin\r\n",
    );
    server.wait_mailbox("bob", 1, Duration::from_secs(10));
    let v = wait_status(&server, (3, 0, 3, 0));
    assert_eq!(v["by_destination"]["partner.test"].as_u64(), Some(6), "{v}");
    assert!(v["oldest_age"].as_i64().is_some(), "{v}");

    assert!(server.cli(&["hold", &ids[0]]).status.success());
    wait_status(&server, (3, 0, 2, 1));
    assert!(server.cli(&["release", &ids[0]]).status.success());
    // Released: due now, tried again, deferred again.
    assert!(server.wait_log_count(
        &["delivery", &ids[0], "status=deferred"],
        4,
        Duration::from_secs(10)
    ));
    wait_status(&server, (3, 0, 3, 0));
    assert!(server.cli(&["hold", &ids[1]]).status.success());
    assert!(server.cli(&["delete", &ids[2]]).status.success());
    let v = wait_status(&server, (2, 0, 1, 1));
    assert_eq!(v["by_destination"]["partner.test"].as_u64(), Some(4), "{v}");

    // Across a restart: counted again from the spool.
    assert_eq!(server.stop(), Some(0));
    let server = TestServer::start_in(dir, &cfg);
    let v = wait_status(&server, (2, 0, 1, 1));
    assert_eq!(v["by_destination"]["partner.test"].as_u64(), Some(4), "{v}");
    assert!(server.cli(&["delete", "--all"]).status.success());
    let v = wait_status(&server, (0, 0, 0, 0));
    assert!(
        v["by_destination"].as_object().is_none_or(|m| m.is_empty()),
        "{v}"
    );
}
