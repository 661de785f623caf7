//! `petrel explain` against the real daemon: a table of would-be sessions
//! is run through `explain --json` and through a real SMTP session from
//! the same loopback address; both must reach the same verdict with the
//! same reply code. And the explanation names the keys that decided.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::{Smtp, TestServer, base_config, free_port, standard_dns};
use serde_json::Value;

fn server() -> TestServer {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let base = base_config(
        &dir.path().join("spool"),
        standard_dns(),
        free_port(),
        true,
        true,
    )
    .replace(
        "aliases = [\"example.org\", \"[192.0.2.10]\"]",
        "aliases = [\"example.org\", \"[192.0.2.10]\"]\nrelay_domains = [\"relay.test\"]",
    );
    let cfg = format!(
        "{base}\n[smtp.inbound]\n\
         deny_connections_from = [\"127.0.0.66/32\"]\n\
         relay_from = [\"127.0.0.5/32\"]\n\
         deny_senders = [\"*@spam.test\"]\n\
         deny_recipients = [\"blocked@example.test\"]\n\
         verify_recipients = true\n\
         [smtp.inbound.checks]\ndnsbl = [\"bl.test\"]\n"
    );
    TestServer::start_in(dir, &cfg)
}

/// The code a real session ends on: the greeting's if it refuses, else
/// MAIL's if it refuses, else RCPT's.
fn session(server: &TestServer, client: &str, from: &str, to: &str) -> u16 {
    let ip: IpAddr = client.parse().unwrap();
    let (mut s, greeting) = Smtp::connect_from(server.mx(), ip);
    if greeting.0 != 220 {
        return greeting.0;
    }
    let r = s.cmd("EHLO client.test");
    assert_eq!(r.0, 250, "{r:?}");
    let r = s.cmd(&format!("MAIL FROM:<{from}>"));
    if r.0 != 250 {
        return r.0;
    }
    let r = s.cmd(&format!("RCPT TO:<{to}>"));
    let _ = s.cmd("QUIT");
    r.0
}

fn explain(server: &TestServer, client: &str, from: &str, to: &str) -> Value {
    let out = server.cli(&[
        "explain",
        "--client",
        client,
        &format!("--from={from}"),
        "--to",
        to,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "explain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn explain_and_a_real_session_agree_on_every_case() {
    let server = server();
    // (client, sender, recipient, expected code, the key that decides)
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "127.0.0.77",
            "ok@other.test",
            "bob@example.test",
            554,
            "smtp.inbound.checks.dnsbl",
        ),
        (
            "127.0.0.1",
            "alice@example.test",
            "bob@example.test",
            250,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.1",
            "",
            "alice@example.test",
            250,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.1",
            "x@spam.test",
            "bob@example.test",
            550,
            "smtp.inbound.deny_senders[0]",
        ),
        (
            "127.0.0.1",
            "Someone@Spam.Test",
            "bob@example.test",
            550,
            "smtp.inbound.deny_senders[0]",
        ),
        (
            "127.0.0.1",
            "ok@other.test",
            "nobody@example.test",
            550,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.1",
            "ok@other.test",
            "blocked@example.test",
            550,
            "smtp.inbound.deny_recipients[0]",
        ),
        (
            "127.0.0.5",
            "ok@other.test",
            "blocked@example.test",
            550,
            "smtp.inbound.deny_recipients[0]",
        ),
        (
            "127.0.0.1",
            "ok@other.test",
            "team@example.test",
            250,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.1",
            "ok@other.test",
            "support@example.test",
            250,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.1",
            "ok@other.test",
            "a.smith@example.org",
            250,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.1",
            "ok@other.test",
            "nobody@example.org",
            550,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.1",
            "ok@other.test",
            "bob@[192.0.2.10]",
            250,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.1",
            "ok@other.test",
            "BOB@EXAMPLE.TEST",
            250,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.1",
            "ok@other.test",
            "postmaster@example.test",
            250,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.6",
            "ok@other.test",
            "dave@partner.test",
            554,
            "smtp.inbound.relay_from",
        ),
        (
            "127.0.0.5",
            "ok@other.test",
            "dave@partner.test",
            250,
            "smtp.inbound.relay_from[0]",
        ),
        (
            "127.0.0.5",
            "x@spam.test",
            "dave@partner.test",
            550,
            "smtp.inbound.deny_senders[0]",
        ),
        (
            "127.0.0.66",
            "ok@other.test",
            "bob@example.test",
            554,
            "smtp.inbound.deny_connections_from[0]",
        ),
        (
            "127.0.0.66",
            "",
            "dave@partner.test",
            554,
            "smtp.inbound.deny_connections_from[0]",
        ),
        (
            "127.0.0.67",
            "ok@other.test",
            "bob@example.test",
            250,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.5",
            "ok@other.test",
            "x%y@example.test",
            550,
            "RFC 5321 §3.6.1",
        ),
        (
            "127.0.0.6",
            "ok@other.test",
            "x%y@example.test",
            554,
            "smtp.inbound.relay_from",
        ),
        (
            "127.0.0.6",
            "ok@other.test",
            "x!y@example.test",
            554,
            "smtp.inbound.relay_from",
        ),
        (
            "127.0.0.6",
            "ok@other.test",
            "user@relay.test",
            250,
            "domains.relay_domains",
        ),
        (
            "127.0.0.6",
            "ok@other.test",
            "nobody@relay.test",
            250,
            "domains.relay_domains",
        ),
        (
            "127.0.0.6",
            "ok@other.test",
            "a%b@relay.test",
            554,
            "smtp.inbound.relay_from",
        ),
        (
            "127.0.0.5",
            "ok@other.test",
            "a%b@relay.test",
            250,
            "smtp.inbound.relay_from[0]",
        ),
        (
            "127.0.0.6",
            "ok@other.test",
            "user@sub.relay.test",
            554,
            "smtp.inbound.relay_from",
        ),
        (
            "127.0.0.6",
            "ok@other.test",
            "alice@example.test",
            250,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.9",
            "bob@example.test",
            "bob@example.test",
            250,
            "smtp.inbound.verify_recipients",
        ),
        (
            "127.0.0.6",
            "ok@other.test",
            "x!y@partner.test",
            554,
            "smtp.inbound.relay_from",
        ),
        (
            "127.0.0.5",
            "",
            "someone@partner.test",
            250,
            "smtp.inbound.relay_from[0]",
        ),
    ];
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for (client, from, to, want, key) in cases {
        let real = session(&server, client, from, to);
        let e = explain(&server, client, from, to);
        let code = e["code"].as_u64().unwrap_or(0) as u16;
        let verdict = e["verdict"].as_str().unwrap_or("");
        let real_verdict = if real < 400 { "accept" } else { "reject" };
        let steps = e["steps"].as_array().cloned().unwrap_or_default();
        let deciding = steps
            .iter()
            .rev()
            .find(|s| s["verdict"] == "reject" || s["stage"] == "rcpt")
            .map(|s| s["key"].as_str().unwrap_or("").to_string())
            .unwrap_or_default();
        if real != code || real != *want || verdict != real_verdict || deciding != *key {
            failures.push(format!(
                "{client} <{from}> -> <{to}>: session {real}, explain {code} {verdict} by {deciding:?}, expected {want} by {key:?}"
            ));
        }
        // The last line is the reply itself.
        assert!(
            e["reply"]
                .as_str()
                .unwrap_or("")
                .starts_with(&code.to_string()),
            "{e}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn explain_names_the_route_mx_answers_and_tls_policy() {
    let server = server();
    let e = explain(
        &server,
        "127.0.0.5",
        "alice@example.test",
        "dave@partner.test",
    );
    let steps = e["steps"].as_array().unwrap();
    let route = steps
        .iter()
        .find(|s| s["stage"] == "route")
        .expect("a route step");
    let detail = route["detail"].as_str().unwrap();
    // The test DNS: partner.test MX 10 mx1 (127.0.0.2), 20 mx2 (127.0.0.3).
    assert!(
        detail.contains("10 mx1.partner.test (127.0.0.2)"),
        "{detail}"
    );
    assert!(
        detail.contains("20 mx2.partner.test (127.0.0.3)"),
        "{detail}"
    );
    assert!(steps.iter().any(|s| s["key"] == "smtp.outbound.tls"), "{e}");
    // An alias expands to its members, local and remote.
    let e = explain(&server, "127.0.0.1", "x@other.test", "team@example.test");
    let text = e.to_string();
    assert!(text.contains("mailbox alice"), "{text}");
    assert!(text.contains("mailbox bob"), "{text}");
    assert!(text.contains("MX of partner.test"), "{text}");
    // The text form ends on the reply.
    let out = server.cli(&[
        "explain",
        "--client",
        "127.0.0.6",
        "--to",
        "dave@partner.test",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    assert!(last.starts_with("reply    554 5.7.1"), "{text}");
    assert!(text.contains("smtp.inbound.relay_from"), "{text}");
}
