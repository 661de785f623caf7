//! Crash safety: many concurrent sessions send mail; the daemon is killed
//! with SIGKILL mid-load and restarted on the same spool, several times.
//! Every message that got `250` must be delivered or still queued.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestServer;

const SESSIONS: usize = 16;
const ROUNDS: usize = 5;
/// Per session and round; the kill normally comes first.
const MAX_PER_SESSION: usize = 3000;

fn reply(r: &mut BufReader<TcpStream>) -> Option<(u16, String)> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            let code = line.get(..3)?.parse().ok()?;
            return Some((code, line[3..].trim().to_string()));
        }
    }
}

/// One client: pipelines MAIL, RCPT and DATA, then the content; records
/// each Message-ID that was acknowledged with 250.
fn client(addr: SocketAddr, tag: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<String>>>) {
    let Ok(stream) = TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::new(stream);
    if reply(&mut r).map(|x| x.0) != Some(220) {
        return;
    }
    if w.write_all(b"EHLO crash.test\r\n").is_err() || reply(&mut r).map(|x| x.0) != Some(250) {
        return;
    }
    for n in 0..MAX_PER_SESSION {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let rcpt = if n % 2 == 0 {
            "alice@example.test"
        } else {
            "bob@example.test"
        };
        let head = format!("MAIL FROM:<load@partner.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        for expect in [250, 250, 354] {
            if reply(&mut r).map(|x| x.0) != Some(expect) {
                return;
            }
        }
        let id = format!("<{tag}-{n}@crash.test>");
        let body = format!(
            "Subject: crash {n}\r\nMessage-ID: {id}\r\n\r\n{}\r\n.\r\n",
            "x".repeat(512)
        );
        if w.write_all(body.as_bytes()).is_err() {
            return;
        }
        match reply(&mut r) {
            Some((250, _)) => acked.lock().expect("lock").push(id),
            _ => return,
        }
    }
}

fn delivered_ids(server: &TestServer) -> Vec<String> {
    let mut ids = Vec::new();
    for mailbox in ["alice", "bob"] {
        for m in server.mailbox(mailbox) {
            if let Some(id) = m["message_id"].as_str() {
                ids.push(id.to_string());
            }
        }
    }
    ids
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_message() {
    let mut server = TestServer::start("max_connections_per_client = 100");
    let cfg = std::fs::read_to_string(&server.config_path).expect("cfg");
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..SESSIONS)
            .map(|i| {
                let (addr, stop, acked) = (server.mx(), stop.clone(), acked.clone());
                std::thread::spawn(move || client(addr, format!("r{round}s{i}"), stop, acked))
            })
            .collect();
        // Let load build up, then kill in the middle of it.
        let before = acked.lock().expect("lock").len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.lock().expect("lock").len() < before + 500 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        server = TestServer::start_in(server.dir.clone(), &cfg);
    }
    let acked: Vec<String> = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= ROUNDS * 500,
        "too little load to prove anything: {}",
        acked.len()
    );

    // Everything acknowledged is local mail: wait for the queue to drain.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.mailq().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut queued: HashSet<String> = HashSet::new();
    for e in server.mailq() {
        let id = e["queue_id"].as_str().expect("id");
        let out = server.cli(&["show", "--json", id]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if queued.is_empty() {
            println!("still queued: {e} {v}");
        }
        if let Some(m) = v["message_id"].as_str() {
            queued.insert(m.to_string());
        }
    }
    let delivered = delivered_ids(&server);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &delivered {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()) && !queued.contains(*id))
        .collect();
    let duplicates: usize = counts.values().map(|&c| c.saturating_sub(1)).sum();
    let unacked_delivered = counts.len()
        - acked
            .iter()
            .filter(|id| counts.contains_key(id.as_str()))
            .count();
    println!(
        "durability: {} rounds, {} acknowledged, {} delivered, {} lost, {} duplicated, {} delivered without a 250 (in flight at the kill)",
        ROUNDS,
        acked.len(),
        delivered.len(),
        lost.len(),
        duplicates,
        unacked_delivered
    );
    assert!(lost.is_empty(), "lost acknowledged messages: {lost:?}");
    // A local delivery repeated after a crash is recognised by its queue
    // id: no message reaches a mailbox twice.
    assert_eq!(duplicates, 0, "messages delivered twice");
    assert!(server.mailq().is_empty(), "queue did not drain");
}
