//! The inbound DATA path against the real daemon: legal lines of 1,000
//! octets and longer are taken whole, an oversized body of legal lines gets
//! `552 5.3.4`, and DATA streams to the spool, so that 100 sessions sending
//! 10 MiB each at once keep the daemon's peak RSS under 1 GiB while every
//! acknowledged message arrives whole. A session that goes away mid-DATA
//! leaves nothing in the spool; content a crash left without its record is
//! swept at start.

mod common;

use std::hash::Hasher;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Smtp, TestServer, queued_id};

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The body of a stored mailbox message after the headers the daemon put
/// in front (`Return-Path:`, `Delivered-To:`, `Received:`): from the
/// client's first header on.
fn from_client_header<'a>(stored: &'a [u8], first_header: &[u8]) -> &'a [u8] {
    let at = stored
        .windows(first_header.len())
        .position(|w| w == first_header)
        .expect("the client's first header is stored");
    &stored[at..]
}

#[test]
fn a_line_of_exactly_1000_octets_is_accepted_whole() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    let line = "x".repeat(998);
    let body = format!("Subject: legal\r\n\r\n{line}\r\nend");
    let r = s.send_mail("carol@partner.test", &["alice@example.test"], &body);
    queued_id(&r);
    let m = server.wait_mailbox("alice", 1, Duration::from_secs(10));
    let stored = server.mailbox_message("alice", m[0]["uid"].as_u64().expect("uid"));
    assert!(
        from_client_header(&stored, b"Subject: legal")
            .starts_with(format!("Subject: legal\r\n\r\n{line}\r\nend\r\n").as_bytes()),
        "stored whole"
    );
}

#[test]
fn lines_longer_than_1000_octets_are_accepted_whole() {
    let server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    let long = "y".repeat(200_000);
    let body = format!("Subject: long\r\n\r\nshort\r\n{long}\r\n.{long}\r\nend");
    let r = s.send_mail("carol@partner.test", &["alice@example.test"], &body);
    queued_id(&r);
    let m = server.wait_mailbox("alice", 1, Duration::from_secs(10));
    let stored = server.mailbox_message("alice", m[0]["uid"].as_u64().expect("uid"));
    // The stuffed dot of the second long line is removed.
    let expect = format!("Subject: long\r\n\r\nshort\r\n{long}\r\n{long}\r\nend\r\n");
    let got = from_client_header(&stored, b"Subject: long");
    let differs = got.iter().zip(expect.as_bytes()).position(|(a, b)| a != b);
    assert!(
        got == expect.as_bytes(),
        "stored {} octets, expected {}; first difference at {differs:?}",
        got.len(),
        expect.len()
    );
}

#[test]
fn an_oversized_body_of_legal_lines_gets_552() {
    let server = TestServer::start("max_message_size = \"64KiB\"");
    let mut s = Smtp::ready(server.mx());
    let line = "z".repeat(998);
    let body = format!("Subject: big\r\n\r\n{}", format!("{line}\r\n").repeat(100));
    let r = s.send_mail("carol@partner.test", &["alice@example.test"], &body);
    assert_eq!(r.0, 552, "{r:?}");
    assert!(r.1.contains("5.3.4"), "{r:?}");
    // The session goes on: the next message is taken.
    let r = s.send_mail(
        "carol@partner.test",
        &["alice@example.test"],
        "Subject: small\r\n\r\nok",
    );
    queued_id(&r);
    assert_eq!(
        server
            .wait_mailbox("alice", 1, Duration::from_secs(10))
            .len(),
        1
    );
}

/// A deterministic message of about `size` octets: its wire form (dot-
/// stuffed, ending with the end of data) is written to `out` in pieces;
/// returns the length and hash of the message as it must be stored
/// (unstuffed, from the first header on). Lines vary in length, and some
/// start with a dot.
fn stream_message(n: usize, size: usize, out: &mut impl Write) -> (usize, u64) {
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    let mut len = 0usize;
    let mut wire = Vec::with_capacity(80 * 1024);
    let mut add = |wire: &mut Vec<u8>, len: &mut usize, stored: &[u8], stuffed: bool| {
        if stuffed {
            wire.push(b'.');
        }
        wire.extend_from_slice(stored);
        hash.write(stored);
        *len += stored.len();
    };
    let head = format!("Subject: big {n}\r\nMessage-ID: <big{n}@client.test>\r\n\r\n");
    add(&mut wire, &mut len, head.as_bytes(), false);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1);
    let mut line = Vec::with_capacity(4096);
    while len < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Lines up to 900 octets (legal everywhere: this test measures
        // memory; longer lines are the tests above).
        let width = if x.is_multiple_of(97) {
            400 + (x % 500) as usize
        } else {
            (x % 120) as usize
        };
        line.clear();
        for i in 0..width {
            line.push(b'!' + ((x >> (i % 56)) as u8).wrapping_add(i as u8) % 94);
        }
        let dot = x.is_multiple_of(13);
        if dot {
            line.insert(0, b'.');
        }
        line.extend_from_slice(b"\r\n");
        // Dot-stuffing (RFC 5321 §4.5.2): every line that starts with one.
        let stuffed = line[0] == b'.';
        add(&mut wire, &mut len, &line, stuffed);
        if wire.len() >= 64 * 1024 {
            out.write_all(&wire).expect("write DATA");
            wire.clear();
        }
    }
    wire.extend_from_slice(b".\r\n");
    out.write_all(&wire).expect("write DATA");
    (len, hash.finish())
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// One SMTP reply line set read from a raw stream.
fn read_reply(r: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return (0, text);
        }
        text.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return (line[..3].parse().unwrap_or(0), text);
        }
    }
}

#[test]
fn hundred_sessions_of_10_mib_stay_under_1_gib_and_arrive_whole() {
    const SESSIONS: usize = 100;
    const SIZE: usize = 10 << 20;
    let server = TestServer::start_with(
        "max_connections_per_client = 200",
        // Local delivery reads each message whole (the scheduler's part,
        // bounded by its concurrency); what is measured here is intake.
        "[queue]\nretry_initial = \"1s\"\nretry_max = \"2s\"\ntotal_concurrency = 4\n",
        common::free_port(),
    );
    let pid = server.child_pid().expect("pid");
    let before = peak_rss_kib(pid);
    let addr = server.mx();
    let started = Instant::now();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(SESSIONS));
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|n| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let stream = TcpStream::connect(addr).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(300)))
                    .expect("timeout");
                let mut r = BufReader::new(stream.try_clone().expect("clone"));
                let mut w = std::io::BufWriter::with_capacity(64 * 1024, stream);
                assert_eq!(read_reply(&mut r).0, 220);
                for cmd in [
                    "EHLO client.test".to_string(),
                    format!("MAIL FROM:<sender{n}@partner.test> SIZE={}", SIZE + 8192),
                    "RCPT TO:<bob@example.test>".to_string(),
                    "DATA".to_string(),
                ] {
                    w.write_all(format!("{cmd}\r\n").as_bytes()).expect("write");
                    w.flush().expect("flush");
                    let reply = read_reply(&mut r);
                    assert!(
                        matches!(reply.0, 250 | 354),
                        "session {n}: {cmd}: {reply:?}"
                    );
                }
                // Every session is in DATA before any sends its message.
                barrier.wait();
                let (len, hash) = stream_message(n, SIZE, &mut w);
                w.flush().expect("flush");
                let reply = read_reply(&mut r);
                assert_eq!(reply.0, 250, "session {n}: end of DATA: {reply:?}");
                (n, len, hash)
            })
        })
        .collect();
    let mut expected = std::collections::HashMap::new();
    for s in sessions {
        let (n, len, hash) = s.join().expect("session");
        expected.insert(n, (len, hash));
    }
    let intake = started.elapsed();
    let after_intake = peak_rss_kib(pid);
    let m = server.wait_mailbox("bob", SESSIONS, Duration::from_secs(300));
    assert_eq!(m.len(), SESSIONS, "all delivered");
    let peak = peak_rss_kib(pid);
    println!(
        "intake of {SESSIONS} x {} MiB in {intake:?}; VmHWM {} MiB at start, {} MiB after intake, {} MiB after delivery",
        SIZE >> 20,
        before >> 10,
        after_intake >> 10,
        peak >> 10
    );
    assert!(
        peak < 1024 * 1024,
        "peak RSS {} MiB, over 1 GiB",
        peak >> 10
    );
    // Every message is whole: same length and hash as sent, unstuffed.
    let mut seen = std::collections::HashSet::new();
    for meta in &m {
        let stored = server.mailbox_message("bob", meta["uid"].as_u64().expect("uid"));
        let client = from_client_header(&stored, b"Subject: big ");
        let n: usize = std::str::from_utf8(&client[13..20])
            .expect("utf-8")
            .split("\r\n")
            .next()
            .and_then(|s| s.parse().ok())
            .expect("message number");
        let (len, hash) = expected[&n];
        assert_eq!(client.len(), len, "message {n}: length");
        assert_eq!(hash_of(client), hash, "message {n}: content");
        assert!(seen.insert(n), "message {n} twice");
    }
    assert_eq!(seen.len(), SESSIONS);
}

/// Opens the stopped daemon's spool and counts message records and
/// content chunks (`m` and `b` keys of the `queue` tree).
fn spool_keys(spool: &Path) -> (usize, usize) {
    let db = common::open_spool_queue(spool);
    let tree = db.open_tree("queue").expect("tree");
    (
        tree.scan_prefix(b"m").count(),
        tree.scan_prefix(b"b").count(),
    )
}

#[test]
fn a_session_that_goes_away_mid_data_leaves_nothing() {
    let mut server = TestServer::start("");
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<carol@partner.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    let part = "0123456789".repeat(100) + "\r\n";
    for _ in 0..3000 {
        s.send_raw(part.as_bytes());
    }
    drop(s);
    assert!(
        server.wait_log(&["lost connection during DATA"], Duration::from_secs(20)),
        "{}",
        server.log()
    );
    assert_eq!(server.stop(), Some(0));
    assert_eq!(spool_keys(&server.dir.path().join("spool")), (0, 0));
}

#[test]
fn content_left_without_a_record_is_swept_at_start() {
    let mut server = TestServer::start("");
    // A crash mid-DATA: 20 MiB sent (sled has written most of it to its
    // file), then SIGKILL.
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("MAIL FROM:<carol@partner.test>").0, 250);
    assert_eq!(s.cmd("RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(s.cmd("DATA").0, 354);
    let part = "abcdefghij".repeat(100) + "\r\n";
    for _ in 0..20_000 {
        s.send_raw(part.as_bytes());
    }
    // Wait until most of it is in sled's file (a petrel that holds DATA in
    // memory never gets there: then only the orphan below is tested).
    let queue = server.dir.path().join("spool/queue/db");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&queue).map(|m| m.len()).unwrap_or(0) < 16 << 20
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill9();
    drop(s);
    let spool = server.dir.path().join("spool");
    // And an orphan as an older petrel or a crash between the chunks and
    // the record leaves it: a chunk of id 1 with no record.
    {
        let db = common::open_spool_queue(&spool);
        let tree = db.open_tree("queue").expect("tree");
        let mut key = vec![b'b'];
        key.extend_from_slice(&1u64.to_be_bytes());
        key.extend_from_slice(&0u32.to_be_bytes());
        tree.insert(key, vec![b'x'; 1000]).expect("insert");
        db.flush().expect("flush");
    }
    let before = spool_keys(&spool);
    assert_eq!(before.0, 0);
    assert!(before.1 >= 1, "{before:?}");
    common::wait_spool_released(&spool);
    let mut again = TestServer::start_in(
        server.dir.clone(),
        &std::fs::read_to_string(&server.config_path).expect("config"),
    );
    assert!(
        again.log().contains("removed orphaned content"),
        "{}",
        again.log()
    );
    assert_eq!(again.stop(), Some(0));
    assert_eq!(spool_keys(&spool), (0, 0));
}
