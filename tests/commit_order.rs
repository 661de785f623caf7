//! The durability promise, observed from outside with strace: every
//! `250 ... queued as` is written only after an fdatasync that began after
//! the message's final dot was read; and each group commit is exactly one
//! fdatasync (the count of fdatasync calls equals the daemon's commit
//! counter), serving several writers when sessions run concurrently.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Smtp, TestServer, base_config, free_port, queued_id, standard_dns};

const SESSIONS: usize = 8;
const PER_SESSION: usize = 25;

#[derive(Debug, Default)]
struct Trace {
    /// (start, end) of each completed fdatasync.
    syncs: Vec<(f64, f64)>,
    /// fd → times at which a read ending a message's data completed.
    data_ends: HashMap<i64, Vec<f64>>,
    /// (fd, time the write of a `250 ... queued as` reply began).
    replies: Vec<(i64, f64)>,
}

/// Parses `strace -f -ttt -T` output. Calls split by other threads appear
/// as `<unfinished ...>` and `<... NAME resumed>` lines.
fn parse(text: &str) -> Trace {
    let mut t = Trace::default();
    let mut pending_sync: HashMap<u32, f64> = HashMap::new();
    let mut pending_fd: HashMap<u32, (String, i64)> = HashMap::new();
    for line in text.lines() {
        // "PID TIME REST": strace pads the pid column, so split on runs of
        // spaces.
        let line = line.trim_start();
        let Some((pid, after)) = line.split_once(' ') else {
            continue;
        };
        let after = after.trim_start();
        let Some((ts, rest)) = after.split_once(' ') else {
            continue;
        };
        let (Ok(pid), Ok(ts)) = (pid.parse::<u32>(), ts.parse::<f64>()) else {
            continue;
        };
        let dur = rest
            .rsplit_once('<')
            .and_then(|(_, d)| d.trim_end_matches('>').parse::<f64>().ok());
        if rest.starts_with("fdatasync(") {
            // `-y` names the file: only the spool's syncs are group
            // commits (the message history syncs its own database, the
            // message store its index and body segments).
            if rest.contains("history.redb")
                || rest.contains("index.redb")
                || rest.contains(".seg>")
            {
                continue;
            }
            match dur {
                Some(d) if !rest.contains("unfinished") => t.syncs.push((ts, ts + d)),
                _ => {
                    pending_sync.insert(pid, ts);
                }
            }
        } else if rest.starts_with("<... fdatasync resumed>") {
            if let Some(start) = pending_sync.remove(&pid) {
                t.syncs.push((start, ts));
            }
        } else {
            // read/recvfrom/write/sendto/writev: name(fd, "data"...
            let (name, args, resumed) = if let Some(r) = rest.strip_prefix("<... ") {
                let Some((name, after)) = r.split_once(" resumed>") else {
                    continue;
                };
                let Some((n, fd)) = pending_fd.remove(&pid) else {
                    continue;
                };
                debug_assert_eq!(n, name);
                (name.to_string(), format!("{fd}, {after}"), true)
            } else {
                let Some((name, args)) = rest.split_once('(') else {
                    continue;
                };
                (name.to_string(), args.to_string(), false)
            };
            // With `-y` an fd reads `5<TCP:[...]>`: its number is the
            // leading digits.
            let fd: i64 = args
                .split(',')
                .next()
                .map(|f| f.trim().split('<').next().unwrap_or(""))
                .and_then(|f| f.parse().ok())
                .unwrap_or(-1);
            if rest.contains("unfinished") {
                pending_fd.insert(pid, (name.clone(), fd));
            }
            let is_read = matches!(name.as_str(), "read" | "recvfrom");
            let is_write = matches!(name.as_str(), "write" | "sendto" | "writev");
            if is_read && args.contains("\\r\\n.\\r\\n\"") && !rest.contains("unfinished") {
                let done = if resumed { ts } else { ts + dur.unwrap_or(0.0) };
                t.data_ends.entry(fd).or_default().push(done);
            }
            if is_write && !resumed && args.contains("250 2.0.0 Ok: queued as") {
                t.replies.push((fd, ts));
            }
        }
    }
    t
}

#[test]
fn every_250_follows_an_fdatasync_and_each_commit_is_one_fdatasync() {
    if !common::strace_available() {
        return;
    }
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let trace = dir.path().join("strace.txt");
    let cfg = base_config(
        &dir.path().join("spool"),
        standard_dns(),
        free_port(),
        true,
        true,
    );
    let trace_arg = trace.to_str().expect("utf-8").to_string();
    let mut server = TestServer::start_wrapped(
        dir.clone(),
        &cfg,
        &[
            "strace",
            "-f",
            "-ttt",
            "-T",
            "-y",
            "-s",
            "64",
            "-e",
            "trace=fdatasync,read,recvfrom,write,sendto,writev",
            "-o",
            &trace_arg,
        ],
    );
    let threads: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let addr = server.mx();
            std::thread::spawn(move || {
                let mut s = Smtp::ready(addr);
                for n in 0..PER_SESSION {
                    queued_id(&s.send_mail(
                        "x@partner.test",
                        &["alice@example.test"],
                        &format!("Subject: c{i}-{n}\r\n\r\nx"),
                    ));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("session");
    }
    let total = SESSIONS * PER_SESSION;
    server.wait_mailbox("alice", total, Duration::from_secs(30));
    let status: serde_json::Value =
        serde_json::from_slice(&server.cli(&["status", "--json"]).stdout).expect("status");
    // Stop petrel itself (strace's child); strace exits with it.
    server.signal_wrapped("-TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(60)), Some(0));
    let text = std::fs::read_to_string(&trace).expect("trace");
    let t = parse(&text);
    let sample: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("queued as") || l.contains("fdatasync"))
        .take(6)
        .collect();
    assert_eq!(
        t.replies.len(),
        total,
        "every 250 was seen in the trace; {} lines, e.g. {sample:#?}",
        text.lines().count()
    );

    // No 250 before a sync that began after the message's data was read.
    for (fd, sent) in &t.replies {
        let ends = t.data_ends.get(fd).expect("data read on this connection");
        let data_done = ends
            .iter()
            .copied()
            .filter(|e| e <= sent)
            .fold(f64::MIN, f64::max);
        assert!(
            data_done > f64::MIN,
            "a 250 on fd {fd} at {sent} with no data read before it"
        );
        let covered = t
            .syncs
            .iter()
            .any(|(start, end)| *start >= data_done && *end <= *sent);
        assert!(
            covered,
            "the 250 on fd {fd} at {sent} was sent without an fdatasync after its data ({data_done})"
        );
    }

    // One fdatasync per group commit, and commits shared among writers.
    // (The final commit at shutdown is counted in the trace only.)
    let commits = status["commits"].as_u64().expect("commits");
    let waiters = status["commit_waiters"].as_u64().expect("waiters");
    assert!(
        t.syncs.len() as u64 >= commits && t.syncs.len() as u64 <= commits + 2,
        "fdatasync {} vs commits {commits}",
        t.syncs.len()
    );
    assert!(
        waiters >= total as u64,
        "every accept waited for a commit: {waiters} < {total}"
    );
    println!(
        "commit order: {total} messages, {} fdatasync calls, {commits} commits for {waiters} waiters ({:.2} per commit)",
        t.syncs.len(),
        waiters as f64 / commits as f64
    );
    assert!(waiters > commits, "no commit was shared by two writers");
}
