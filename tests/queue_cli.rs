//! The queue and its CLI: mailq (text and JSON), show, status, requeue,
//! hold, release, delete — against the running daemon and on the spool
//! directly with no daemon — and the mailq/sendmail personalities.

mod common;

use std::time::Duration;

use common::{Smtp, TestServer, cli_with, petrel_bin, queued_id, run_cmd};

/// A daemon whose retries are far apart, so deferred mail stays deferred
/// while a test looks at it.
fn slow_retry_server() -> TestServer {
    TestServer::start_with(
        "",
        "[queue]\nretry_initial = \"1h\"\nretry_max = \"2h\"",
        common::free_port(),
    )
}

fn queue_remote(server: &TestServer, n: usize) -> Vec<String> {
    let mut s = Smtp::ready(server.mx());
    (0..n)
        .map(|i| {
            queued_id(&s.send_mail(
                "alice@example.test",
                &["dave@partner.test"],
                &format!("Subject: out {i}\r\nMessage-ID: <q{i}@test>\r\n\r\nhello\r\n"),
            ))
        })
        .collect()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn mailq_lists_deferred_mail_in_text_and_json() {
    let server = slow_retry_server();
    let out = server.cli(&["mailq"]);
    assert_eq!(stdout(&out), "Mail queue is empty\n");
    let ids = queue_remote(&server, 2);
    assert!(server.wait_log(
        &["delivery", &ids[1], "status=deferred"],
        Duration::from_secs(10)
    ));
    let text = stdout(&server.cli(&["mailq"]));
    assert!(
        text.starts_with(
            "-Queue ID-       --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
        ),
        "{text}"
    );
    assert!(text.contains(&ids[0]) && text.contains(&ids[1]), "{text}");
    assert!(
        text.contains("(connect to mx2.partner.test[127.0.0.3]:"),
        "{text}"
    );
    assert!(text.contains(": Connection refused)\n"), "{text}");
    assert!(text.trim_end().ends_with("in 2 Requests."), "{text}");
    let json = server.mailq();
    assert_eq!(json.len(), 2);
    for e in &json {
        assert_eq!(e["queue_name"], "deferred");
        assert!(e["arrival_time"].as_i64().expect("arrival") > 1_700_000_000);
        assert!(e["message_size"].as_u64().expect("size") > 0);
        assert!(e["recipients"][0]["next_attempt"].as_i64().is_some());
    }
    let filtered = stdout(&server.cli(&["mailq", "--json", "--domain", "nowhere.test"]));
    assert!(filtered.is_empty());
    let held = stdout(&server.cli(&["mailq", "--json", "--state", "hold"]));
    assert!(held.is_empty());
}

#[test]
fn hold_release_requeue_and_delete_through_the_daemon() {
    let server = slow_retry_server();
    let ids = queue_remote(&server, 3);
    assert!(server.wait_log(
        &["delivery", &ids[2], "status=deferred"],
        Duration::from_secs(10)
    ));

    let out = server.cli(&["hold", &ids[0]]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&server.cli(&["mailq"]));
    assert!(text.contains(&format!("{}!", ids[0])), "{text}");

    let out = server.cli(&["release", &ids[0]]);
    assert!(out.status.success());
    assert!(server.wait_log(
        &["delivery", &ids[0], "status=deferred"],
        Duration::from_secs(10)
    ));

    let out = server.cli(&["requeue", "--all"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("requeued 3 messages"),
        "{}",
        stdout(&out)
    );

    let out = server.cli(&["delete", &ids[1]]);
    assert!(out.status.success());
    assert!(server.wait_log(&["removed", &ids[1]], Duration::from_secs(5)));
    assert_eq!(server.mailq().len(), 2);

    let out = server.cli(&["delete", "--domain", "partner.test"]);
    assert!(
        stdout(&out).contains("deleted 2 messages"),
        "{}",
        stdout(&out)
    );
    assert!(server.mailq().is_empty());

    let out = server.cli(&["delete", &ids[1]]);
    assert_eq!(out.status.code(), Some(1), "a missing id is a failure");
    let out = server.cli(&["hold", "not-an-id"]);
    assert_eq!(out.status.code(), Some(1));
    let out = server.cli(&["delete"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
}

#[test]
fn show_and_status_describe_the_queue() {
    let server = slow_retry_server();
    let ids = queue_remote(&server, 1);
    assert!(server.wait_log(
        &["delivery", &ids[0], "status=deferred"],
        Duration::from_secs(10)
    ));
    let out = server.cli(&["show", &ids[0], "--body"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains(&format!("queue_id: {}", ids[0])), "{text}");
    assert!(
        text.contains("recipient: <dave@partner.test> state=deferred attempts=1"),
        "{text}"
    );
    assert!(
        text.contains("last_error: connect to mx2.partner.test[127.0.0.3]:"),
        "{text}"
    );
    assert!(text.contains("Message-ID: <q0@test>"), "{text}");

    let out = server.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["messages"], 1);
    assert_eq!(v["daemon"], true);
    assert_eq!(v["by_state"]["deferred"], 1);
    assert_eq!(v["by_destination"]["partner.test"], 1);
    assert!(v["commits"].as_u64().expect("commits") >= 1);
}

#[test]
fn queue_commands_work_on_the_spool_when_no_daemon_runs() {
    let mut server = TestServer::start("");
    let ids = queue_remote(&server, 2);
    assert!(server.wait_log(
        &["delivery", &ids[1], "status=deferred"],
        Duration::from_secs(10)
    ));
    assert_eq!(server.stop(), Some(0));

    let cfg = server.config_path.clone();
    let out = cli_with(&cfg, &["status", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["daemon"], false);
    assert_eq!(v["messages"], 2);
    let out = cli_with(&cfg, &["hold", &ids[0]], None);
    assert!(out.status.success(), "{out:?}");
    let out = cli_with(&cfg, &["delete", &ids[1]], None);
    assert!(out.status.success(), "{out:?}");
    let out = cli_with(&cfg, &["mailq", "--json"], None);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["queue_id"], ids[0].as_str());
    assert_eq!(lines[0]["queue_name"], "hold");
    let out = cli_with(&cfg, &["reload"], None);
    assert_eq!(out.status.code(), Some(1), "reload needs a daemon");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon"));

    // The queue survives the restart with its state.
    let restarted = TestServer::start_in(
        server.dir.clone(),
        &std::fs::read_to_string(&cfg).expect("cfg"),
    );
    let q = restarted.mailq();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["queue_name"], "hold");
}

#[test]
fn restart_keeps_the_retry_schedule() {
    let mut server = TestServer::start("");
    let ids = queue_remote(&server, 1);
    assert!(server.wait_log(
        &["delivery", &ids[0], "status=deferred"],
        Duration::from_secs(10)
    ));
    let before = server.mailq();
    assert_eq!(server.stop(), Some(0));
    let cfg = std::fs::read_to_string(&server.config_path).expect("cfg");
    let restarted = TestServer::start_in(server.dir.clone(), &cfg);
    let after = restarted.mailq();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["queue_id"], before[0]["queue_id"]);
    assert_eq!(
        after[0]["recipients"][0]["next_attempt"],
        before[0]["recipients"][0]["next_attempt"]
    );
    // And the schedule runs on: the next attempt happens after a restart.
    assert!(restarted.wait_log(
        &["delivery", &ids[0], "status=deferred"],
        Duration::from_secs(10)
    ));
}

#[test]
fn mailq_link_acts_as_petrel_mailq() {
    let server = TestServer::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("mailq");
    std::os::unix::fs::symlink(petrel_bin(), &link).expect("symlink");
    let mut cmd = std::process::Command::new(&link);
    cmd.arg("-c").arg(&server.config_path);
    let out = run_cmd(cmd, None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "Mail queue is empty\n");
}

#[test]
fn sendmail_submits_through_the_daemon() {
    let server = TestServer::start("");
    let msg = b"Subject: from cron\nTo: bob@example.test\n\nline one\n.\nnot read\n";
    let out = server.cli_stdin(&["sendmail", "-f", "root@example.test", "alice"], msg);
    assert!(out.status.success(), "{out:?}");
    server.wait_mailbox("alice", 1, Duration::from_secs(10));
    let content = String::from_utf8(server.mailbox_message("alice", 1)).expect("utf-8");
    assert!(content.contains("Subject: from cron\r\n"), "{content}");
    assert!(content.contains("\r\nline one\r\n"), "{content}");
    assert!(
        !content.contains("not read"),
        "a lone dot ends input without -i"
    );
    assert!(
        content.contains("Date: ")
            && content.contains("Message-ID: <")
            && content.contains("From: root@example.test"),
        "{content}"
    );
    assert!(server.wait_log(&["accepted", "listener=sendmail"], Duration::from_secs(5)));

    let out = server.cli_stdin(
        &["sendmail", "-t", "-i"],
        b"To: bob@example.test\nBcc: support@example.test\nSubject: t\n\nx\n.\ny\n",
    );
    assert!(out.status.success(), "{out:?}");
    server.wait_mailbox("bob", 1, Duration::from_secs(10));
    server.wait_mailbox("support", 1, Duration::from_secs(10));
    let content = String::from_utf8(server.mailbox_message("support", 1)).expect("utf-8");
    assert!(!content.contains("Bcc:"), "{content}");
    assert!(
        content.contains("\r\nx\r\n.\r\ny\r\n"),
        "-i keeps the dot line: {content}"
    );
}

#[test]
fn sendmail_exit_codes_follow_sysexits() {
    let server = TestServer::start("");
    let out = server.cli_stdin(&["sendmail"], b"Subject: x\n\nx\n");
    assert_eq!(out.status.code(), Some(64), "no recipients");
    let out = server.cli_stdin(&["sendmail", "nobody@example.test"], b"Subject: x\n\nx\n");
    assert_eq!(out.status.code(), Some(67), "unknown user");
    let out = server.cli_stdin(&["sendmail", "bad@@address"], b"Subject: x\n\nx\n");
    assert_eq!(out.status.code(), Some(65), "bad address");
    let out = server.cli_stdin(&["sendmail", "-bd"], b"");
    assert_eq!(out.status.code(), Some(64), "unsupported mode");
}

#[test]
fn sendmail_link_queues_on_the_spool_when_no_daemon_runs() {
    let mut server = TestServer::start("");
    assert_eq!(server.stop(), Some(0));
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(petrel_bin(), &link).expect("symlink");
    let mut cmd = std::process::Command::new(&link);
    cmd.arg("-c")
        .arg(&server.config_path)
        .args(["-oi", "bob@example.test"]);
    let out = run_cmd(cmd, Some(b"Subject: offline\n\nqueued while stopped\n"));
    assert!(out.status.success(), "{out:?}");
    let cfg = std::fs::read_to_string(&server.config_path).expect("cfg");
    let restarted = TestServer::start_in(server.dir.clone(), &cfg);
    assert_eq!(
        restarted
            .wait_mailbox("bob", 1, Duration::from_secs(10))
            .len(),
        1
    );
}

#[test]
fn hash_password_and_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("none.toml");
    let out = run_cmd(
        {
            let mut c = std::process::Command::new(petrel_bin());
            c.arg("hash-password");
            c
        },
        Some(b"s3cret\n"),
    );
    assert!(out.status.success());
    let hash = stdout(&out).trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(petrel::auth::verify_password("s3cret", &hash));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[domains]\nprimary = \"example.test\"\n[queue]\nretry_initial = \"soon\"\nlifetime = \"5 years\"\n[[listeners]]\nname = \"mx\"\nprotocol = \"smtp\"\nbind = \"localhost\"\n",
    )
    .expect("write");
    let out = cli_with(&bad, &["check-config"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["queue.retry_initial", "queue.lifetime", "listeners[0].bind"] {
        assert!(
            err.contains(&format!(": {key}: ")),
            "{key} not named in {err}"
        );
    }
    let out = cli_with(&bad, &["serve"], None);
    assert_eq!(out.status.code(), Some(1), "serve refuses an invalid file");
    let out = cli_with(&missing, &["check-config"], None);
    assert_eq!(out.status.code(), Some(1));
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/petrel.toml");
    let out = cli_with(&shipped, &["check-config"], None);
    assert!(out.status.success(), "{out:?}");
}

/// `delete --all` gives the disk back before it returns, while mail keeps
/// arriving; after a SIGKILL every message that got a 250 is still in a
/// mailbox, or was one of those deleted.
#[test]
fn delete_all_gives_the_disk_back_at_once_and_loses_no_acknowledged_mail() {
    let mut server = slow_retry_server();
    fill_worth_compacting(&server);
    let spool = server.dir.path().join("spool");
    let before = petrel::spool::compact::disk_usage(&spool);
    assert!(before > 64 << 20, "spool only {before} bytes");

    // Local mail arrives all through the delete and the compaction.
    let mx = server.mx();
    let sender = std::thread::spawn(move || {
        let mut s = Smtp::ready(mx);
        (0..60)
            .map(|i| {
                let r = s.send_mail(
                    "alice@example.test",
                    &["bob@example.test"],
                    &format!("Subject: during {i}\r\n\r\nduring {i}\r\n"),
                );
                assert_eq!(r.0, 250, "{r:?}");
                std::thread::sleep(Duration::from_millis(20));
                queued_id(&r)
            })
            .collect::<Vec<_>>()
    });
    let out = server.cli(&["delete", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon logs before it replies, but the test reads its stderr on
    // another thread: wait for the line rather than race that reader.
    assert!(
        server.wait_log(&["spool compacted"], Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let after = petrel::spool::compact::disk_usage(&spool);
    assert!(
        after * 4 < before,
        "spool {before} bytes before, {after} after"
    );
    let acked = sender.join().expect("sender");

    // Deliveries of the last ones may still be under way: the crash
    // leaves them queued, and the restart delivers them.
    let first_log = server.log();
    server.kill9();
    let cfg = std::fs::read_to_string(&server.config_path).expect("config");
    let server = TestServer::start_in(server.dir.clone(), &cfg);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !server.mailq().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let inbox = server.mailbox("bob");
    let delivered: std::collections::HashSet<String> = inbox
        .iter()
        .map(|m| m["queue_id"].as_str().expect("queue_id").to_string())
        .collect();
    for id in &acked {
        let deleted = first_log
            .lines()
            .any(|l| l.contains("removed") && l.contains(id.as_str()));
        assert!(
            delivered.contains(id) || deleted,
            "{id} was acknowledged but is neither in bob's mailbox nor deleted"
        );
    }
    assert!(
        delivered.len() > acked.len() / 2,
        "only {} of {} delivered",
        delivered.len(),
        acked.len()
    );
    let uid = inbox[0]["uid"].as_u64().expect("uid");
    assert!(String::from_utf8_lossy(&server.mailbox_message("bob", uid)).contains("keep me"));
}

/// Gives bob a message to keep and queues about 80 MB of deferred mail:
/// more than the 64 MiB below which a spool is never compacted.
fn fill_worth_compacting(server: &TestServer) {
    let mut s = Smtp::ready(server.mx());
    let kept = s.send_mail(
        "alice@example.test",
        &["bob@example.test"],
        "Subject: keep\r\n\r\nkeep me\r\n",
    );
    assert_eq!(kept.0, 250, "{kept:?}");
    server.wait_mailbox("bob", 1, Duration::from_secs(10));
    let body = format!(
        "Subject: big\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(900)).repeat(1000)
    );
    for _ in 0..90 {
        let r = s.send_mail("alice@example.test", &["dave@partner.test"], &body);
        assert_eq!(r.0, 250, "{r:?}");
    }
}

/// `fill_worth_compacting` on a slow-retry daemon, stopped; returns its
/// directory and configuration.
fn spool_worth_compacting() -> (std::sync::Arc<tempfile::TempDir>, String) {
    let mut server = slow_retry_server();
    fill_worth_compacting(&server);
    let cfg = std::fs::read_to_string(&server.config_path).expect("config");
    assert_eq!(server.stop(), Some(0));
    (server.dir.clone(), cfg)
}

/// A crash in the middle of the swap that `delete --all`'s compaction
/// makes. The daemon runs under strace, which holds every rename of the
/// spool path `held` for 20 s; once `reached` sees the state on disk, the
/// daemon gets SIGKILL. The next start must finish the swap: nothing
/// deleted comes back, bob's mailbox is whole, the spool is small, and
/// mail flows.
fn crash_during_swap(held: &str, reached: fn(&std::path::Path) -> bool) {
    if !common::strace_available() {
        return;
    }
    let (dir, cfg) = spool_worth_compacting();
    let spool = dir.path().join("spool");
    let before = petrel::spool::compact::disk_usage(&spool);
    let held = spool.join(held);
    let held = held.to_str().expect("utf-8 path");
    let mut server = TestServer::start_wrapped(
        dir.clone(),
        &cfg,
        &[
            "strace",
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-P",
            held,
            "-e",
            "trace=rename,renameat,renameat2",
            "-e",
            "inject=rename,renameat,renameat2:delay_enter=20000000",
        ],
    );
    let config = server.config_path.clone();
    let deleter = std::thread::spawn(move || cli_with(&config, &["delete", "--all"], None));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !reached(&spool) {
        assert!(
            std::time::Instant::now() < deadline,
            "the swap never reached the state to crash in; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL the daemon itself, not strace (which would detach it).
    server.signal_wrapped("-9");
    server.kill9();
    let _ = deleter.join();
    assert!(
        spool.join("queue.compact.done").exists(),
        "the crash came before the swap began"
    );

    let server = TestServer::start_in(dir.clone(), &cfg);
    assert!(
        server
            .log()
            .contains("finishing an interrupted spool compaction"),
        "{}",
        server.log()
    );
    for leftover in ["queue.compact", "queue.compact.done", "queue.old"] {
        assert!(!spool.join(leftover).exists(), "{leftover} is left");
    }
    let after = petrel::spool::compact::disk_usage(&spool);
    assert!(
        after * 4 < before,
        "spool {before} bytes before, {after} after"
    );
    assert!(server.mailq().is_empty(), "deleted mail came back");
    let inbox = server.mailbox("bob");
    assert_eq!(inbox.len(), 1);
    let uid = inbox[0]["uid"].as_u64().expect("uid");
    assert!(String::from_utf8_lossy(&server.mailbox_message("bob", uid)).contains("keep me"));
    let mut s = Smtp::ready(server.mx());
    let r = s.send_mail(
        "alice@example.test",
        &["bob@example.test"],
        "Subject: after\r\n\r\nnew\r\n",
    );
    assert_eq!(r.0, 250, "{r:?}");
    assert_eq!(
        server.wait_mailbox("bob", 2, Duration::from_secs(10)).len(),
        2
    );
}

#[test]
fn a_crash_after_the_copy_is_marked_finishes_the_swap_at_the_next_start() {
    // Held: the first rename, `queue` → `queue.old`.
    crash_during_swap("queue", |spool| spool.join("queue.compact.done").exists());
}

#[test]
fn a_crash_between_the_two_renames_finishes_the_swap_at_the_next_start() {
    // Held: the second rename, `queue.compact` → `queue`; the old database
    // is already `queue.old` and no `queue` exists.
    crash_during_swap("queue.compact", |spool| {
        spool.join("queue.old").exists() && !spool.join("queue").exists()
    });
}
