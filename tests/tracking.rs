//! The message history through the real daemon: `petrel track` finds a
//! message by queue id, Message-ID, sender and recipient after it was
//! delivered and left the queue; the track of a bounced message names the
//! bounce's queue id; refusals at the door and queue operations are
//! recorded. And the delivery lines carry Postfix's field names, parsed
//! here the way pflogsumm-style tools parse them.

mod common;

use std::time::{Duration, Instant};

use common::sink::{Sink, SinkOptions};
use common::{Smtp, TestServer, free_port, queued_id};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn send(server: &TestServer, to: &[&str], subject: &str) -> String {
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(
        "alice@example.test",
        to,
        &format!(
            "Subject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n\r\nbody of {subject}\r\n"
        ),
    ))
}

/// `petrel track ARGS --json`: one trace per line.
fn track(server: &TestServer, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["track"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = server.cli(&all);
    assert!(
        out.status.success(),
        "track {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON trace"))
        .collect()
}

/// The event names of a trace, in order.
fn kinds(trace: &Value) -> Vec<String> {
    trace["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Polls `track` until a trace for `id` has an event `kind` (the history
/// writer commits in batches).
fn wait_track(server: &TestServer, args: &[&str], kind: &str) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let traces = track(server, args);
        if traces.iter().any(|t| kinds(t).iter().any(|k| k == kind)) {
            return traces;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} in track {args:?}: {traces:?}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn queue_id_of(trace: &Value) -> u64 {
    trace["queue_id"].as_u64().expect("queue id")
}

#[test]
fn a_delivered_message_is_tracked_by_id_message_id_sender_and_recipient() {
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let server = TestServer::start_with("", "", sink.addr.port());
    let id = send(
        &server,
        &["dave@partner.test", "bob@example.test"],
        "tracked-1",
    );
    server.wait_queue_empty(WAIT);
    let traces = wait_track(&server, &[&id], "removed");
    assert_eq!(traces.len(), 1, "{traces:?}");
    let t = &traces[0];
    let k = kinds(t);
    assert_eq!(k.first().map(String::as_str), Some("accepted"), "{k:?}");
    assert_eq!(k.last().map(String::as_str), Some("removed"), "{k:?}");
    let events = t["events"].as_array().unwrap();
    let accepted = &events[0];
    assert_eq!(accepted["sender"], "alice@example.test");
    assert_eq!(accepted["listener"], "mx");
    assert_eq!(accepted["client"], "[127.0.0.1]");
    assert_eq!(accepted["message_id"], "<tracked-1@example.test>");
    assert!(accepted["size"].as_u64().unwrap() > 0);
    let rcpts: Vec<&str> = accepted["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(rcpts, ["dave@partner.test", "bob@example.test"]);
    let remote = events
        .iter()
        .find(|e| e["event"] == "attempt" && e["to"] == "dave@partner.test")
        .expect("the remote attempt");
    assert_eq!(remote["status"], "sent");
    assert_eq!(remote["dsn"], "2.0.0");
    assert!(
        remote["relay"].as_str().unwrap().contains("127.0.0.2"),
        "{remote}"
    );
    assert!(
        remote["reason"].as_str().unwrap().contains("said: 250"),
        "the peer's reply: {remote}"
    );
    let local = events
        .iter()
        .find(|e| e["event"] == "attempt" && e["to"] == "bob@example.test")
        .expect("the local attempt");
    assert_eq!(local["status"], "sent");
    let removed = events.last().unwrap();
    assert_eq!(removed["reason"], "done");
    let qid = queue_id_of(t);
    // The same message by each of the other selectors.
    for args in [
        vec!["--message-id", "tracked-1@example.test"],
        vec!["--message-id", "<TRACKED-1@example.test>"],
        vec!["--from", "alice@example.test"],
        vec!["--to", "dave@partner.test"],
        vec!["--to", "<bob@example.test>"],
    ] {
        let found = track(&server, &args);
        assert!(
            found.iter().any(|t| queue_id_of(t) == qid),
            "{args:?}: {found:?}"
        );
    }
    // Nothing for a stranger; the text form says so.
    assert!(track(&server, &["--to", "nobody@partner.test"]).is_empty());
    let out = server.cli(&["track", "--to", "nobody@partner.test"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("No history found"));
    // The text form names the events.
    let out = server.cli(&["track", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("accepted from=<alice@example.test>"),
        "{text}"
    );
    assert!(text.contains("sent     to=<dave@partner.test>"), "{text}");
    assert!(text.contains("removed (done)"), "{text}");
}

#[test]
fn the_track_of_a_bounced_message_names_its_bounce() {
    // The sink refuses reject@ permanently.
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let server = TestServer::start_with("", "", sink.addr.port());
    let id = send(&server, &["reject@partner.test"], "bounced-1");
    server.wait_queue_empty(WAIT);
    let traces = wait_track(&server, &[&id], "notified");
    // The original first, then the report's own history.
    assert!(traces.len() >= 2, "{traces:?}");
    let original = &traces[0];
    let events = original["events"].as_array().unwrap();
    let attempt = events
        .iter()
        .find(|e| e["event"] == "attempt")
        .expect("attempt");
    assert_eq!(attempt["status"], "bounced");
    assert_eq!(attempt["dsn"], "5.1.1");
    assert!(
        attempt["reason"].as_str().unwrap().contains("said: 550"),
        "{attempt}"
    );
    let notified = events
        .iter()
        .find(|e| e["event"] == "notified")
        .expect("notified");
    assert_eq!(notified["action"], "failed");
    assert_eq!(notified["to"], "alice@example.test");
    let report = notified["report"].as_u64().expect("the report's id");
    assert!(
        traces[1..].iter().any(|t| queue_id_of(t) == report),
        "the report's trace follows: {traces:?}"
    );
    // The report was delivered to alice and left the queue too.
    let report_id = printed(&traces, report);
    let report_traces = wait_track(&server, &[&report_id], "removed");
    let rk = kinds(&report_traces[0]);
    assert_eq!(rk.first().map(String::as_str), Some("accepted"), "{rk:?}");
    assert!(rk.iter().any(|k| k == "attempt"), "{rk:?}");
    // The text form shows the report's id.
    let out = server.cli(&["track", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("report={report_id}")), "{text}");
}

/// The printed form of a queue id, as `track --json` gives it beside the
/// number.
fn printed(traces: &[Value], q: u64) -> String {
    traces
        .iter()
        .find(|t| queue_id_of(t) == q)
        .and_then(|t| t["id"].as_str())
        .unwrap_or_else(|| panic!("no printed id for {q}: {traces:?}"))
        .to_string()
}

#[test]
fn refusals_and_queue_operations_are_recorded() {
    // Nothing listens for partner.test: the message stays queued.
    let server = TestServer::start_with("deny_senders = [\"spam@bad.test\"]\n", "", free_port());
    let mut s = Smtp::ready(server.mx());
    let r = s.cmd("MAIL FROM:<spam@bad.test>");
    assert_eq!(r.0, 550, "{r:?}");
    let traces = wait_track(&server, &["--from", "spam@bad.test"], "rejected");
    let e = &traces[0]["events"][0];
    assert_eq!(e["stage"], "MAIL");
    assert_eq!(e["code"], 550);
    assert_eq!(e["client"], "[127.0.0.1]");
    assert!(traces[0]["queue_id"].is_null());
    drop(s);

    let id = send(&server, &["dave@partner.test"], "held-1");
    let out = server.cli(&["hold", &id]);
    assert!(out.status.success(), "{out:?}");
    let out = server.cli(&["delete", &id]);
    assert!(out.status.success(), "{out:?}");
    let traces = wait_track(&server, &[&id], "removed");
    let events = traces[0]["events"].as_array().unwrap();
    let ops: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "admin")
        .filter_map(|e| e["op"].as_str())
        .collect();
    assert_eq!(ops, ["hold", "delete"], "{events:?}");
    assert_eq!(events.last().unwrap()["reason"], "deleted");
}

/// What a pflogsumm-style reader takes from a delivery line.
struct Parsed {
    to: String,
    relay: String,
    delay: f64,
    delays: Vec<f64>,
    dsn: String,
    status: String,
    reply: String,
}

/// Parses `to=<…>, relay=…, delay=…, delays=a/b/c/d, dsn=…, status=… (…)`
/// the way Postfix log tools do: fields separated by ", ", the status
/// followed by its text in parentheses.
fn parse(line: &str) -> Option<Parsed> {
    let start = line.find("to=<")?;
    let rest = &line[start..];
    let (fields, reply) = rest.split_once(" (")?;
    let reply = reply.rsplit_once(')')?.0.to_string();
    let mut get = std::collections::HashMap::new();
    for f in fields.split(", ") {
        let (k, v) = f.split_once('=')?;
        get.insert(k, v);
    }
    let to = get
        .get("to")?
        .strip_prefix('<')?
        .strip_suffix('>')?
        .to_string();
    Some(Parsed {
        to,
        relay: get.get("relay")?.to_string(),
        delay: get.get("delay")?.parse().ok()?,
        delays: get
            .get("delays")?
            .split('/')
            .map(|d| d.parse().ok())
            .collect::<Option<Vec<f64>>>()?,
        dsn: get.get("dsn")?.to_string(),
        status: get.get("status")?.to_string(),
        reply,
    })
}

#[test]
fn delivery_lines_carry_postfix_field_names() {
    let sink = Sink::start("127.0.0.2:0", SinkOptions::default());
    let server = TestServer::start_with("", "", sink.addr.port());
    let id = send(
        &server,
        &[
            "dave@partner.test",
            "reject@partner.test",
            "bob@example.test",
        ],
        "logged-1",
    );
    server.wait_queue_empty(WAIT);
    assert!(server.wait_log_count(&["delivery", &id, "status="], 3, WAIT));
    let lines: Vec<Parsed> = server
        .log()
        .lines()
        .filter(|l| l.contains(" delivery ") && l.contains(&format!("{id}:")))
        .map(|l| parse(l).unwrap_or_else(|| panic!("not in Postfix's form: {l}")))
        .collect();
    assert_eq!(lines.len(), 3);
    let by = |to: &str| lines.iter().find(|p| p.to == to).expect(to);
    let dave = by("dave@partner.test");
    assert_eq!(dave.status, "sent");
    assert_eq!(dave.dsn, "2.0.0");
    assert!(dave.relay.contains("127.0.0.2"), "{}", dave.relay);
    assert!(dave.reply.contains("said: 250"), "{}", dave.reply);
    let reject = by("reject@partner.test");
    assert_eq!(reject.status, "bounced");
    assert_eq!(reject.dsn, "5.1.1");
    assert!(reject.reply.contains("said: 550"), "{}", reject.reply);
    let bob = by("bob@example.test");
    assert_eq!(bob.status, "sent");
    for p in &lines {
        assert_eq!(p.delays.len(), 4);
        // The parts add up to the whole, within the rounding of each.
        let sum: f64 = p.delays.iter().sum();
        assert!((sum - p.delay).abs() < 0.05, "{sum} vs {}", p.delay);
    }
    // A deferral is `status=deferred`.
    let server = TestServer::start_with("", "", free_port());
    let id = send(&server, &["dave@partner.test"], "logged-2");
    assert!(server.wait_log(&["delivery", &id, "status=deferred"], WAIT));
    let line = server
        .log()
        .lines()
        .find(|l| l.contains(" delivery ") && l.contains(&format!("{id}:")))
        .map(str::to_string)
        .unwrap();
    let p = parse(&line).unwrap_or_else(|| panic!("{line}"));
    assert_eq!(p.status, "deferred");
    assert!(p.dsn.starts_with("4."), "{line}");
}
