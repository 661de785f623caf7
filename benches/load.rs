//! Load driver: starts the real daemon (release build) on loopback, drives
//! it with concurrent pipelined SMTP sessions, and measures messages per
//! second through the whole daemon — SMTP in, local mailbox out — with the
//! time from end of DATA to `250`, CPU per message and peak RSS.
//!
//! Run: `cargo bench --bench load` (all scenarios, 3 runs each, medians), or
//! `cargo bench --bench load -- SESSIONS SIZE MESSAGES RUNS` for one.
//! Every run is bounded: it sends a fixed count and gives up after 300 s.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(300);

struct Daemon {
    child: Child,
    addr: SocketAddr,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("petrel.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
hostname = "bench.example.test"
spool = "{}"
[domains]
primary = "example.test"
[[listeners]]
name = "mx"
protocol = "smtp"
bind = "127.0.0.1:0"
[smtp.inbound]
max_connections_per_client = 1000
[dns]
nameservers = ["127.0.0.1:9"]
[log]
level = "info"
[[users]]
name = "alice"
addresses = ["alice@example.test"]
"#,
                dir.path().join("spool").display()
            ),
        )
        .expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_petrel"))
            .arg("-c")
            .arg(&config)
            .arg("serve")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn petrel");
        // Learn the port from the `listening` line, wait for `ready`, then
        // keep draining the log so the daemon never blocks on stderr.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("petrel did not become ready");
            if let Some(a) = line.split(" address=").nth(1) {
                addr = a.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if line.contains(" ready") {
                break;
            }
        }
        std::thread::spawn(move || for _ in rx {});
        let addr = addr.expect("listening line");
        Daemon {
            child,
            addr,
            config,
            _dir: dir,
        }
    }

    fn queue_len(&self) -> u64 {
        let out = Command::new(env!("CARGO_BIN_EXE_petrel"))
            .arg("-c")
            .arg(&self.config)
            .args(["status", "--json"])
            .output()
            .expect("status");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["messages"].as_u64().unwrap_or(u64::MAX)
    }

    /// (user+system CPU ms, peak RSS KiB) from /proc.
    fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: f64 = fields
            .get(11)
            .and_then(|u| u.parse::<f64>().ok())
            .unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
        let hz = 100.0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (ticks * 1000.0 / hz, hwm)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn reply(r: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return 0;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
    }
}

/// One session sending `count` messages; returns per-message latencies
/// from end of DATA to 250, in microseconds.
fn session(addr: SocketAddr, count: usize, body: &[u8], deadline: Instant) -> Vec<u64> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::new(stream);
    assert_eq!(reply(&mut r), 220);
    w.write_all(b"EHLO load.test\r\n").expect("write");
    assert_eq!(reply(&mut r), 250);
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        if Instant::now() > deadline {
            break;
        }
        w.write_all(b"MAIL FROM:<load@partner.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
            .expect("write");
        assert_eq!(reply(&mut r), 250);
        assert_eq!(reply(&mut r), 250);
        assert_eq!(reply(&mut r), 354);
        w.write_all(body).expect("write");
        let t = Instant::now();
        assert_eq!(reply(&mut r), 250);
        lat.push(t.elapsed().as_micros() as u64);
    }
    let _ = w.write_all(b"QUIT\r\n");
    lat
}

struct RunResult {
    inject: f64,
    e2e: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_ms_per_msg: f64,
    rss_mib: f64,
}

fn body_of(size: usize) -> Vec<u8> {
    let mut b =
        b"Subject: load\r\nFrom: load@partner.test\r\nTo: alice@example.test\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    while b.len() + line.len() <= size {
        b.extend_from_slice(line);
    }
    b.extend_from_slice(b".\r\n");
    b
}

fn run(sessions: usize, size: usize, messages: usize) -> RunResult {
    let daemon = Daemon::start();
    let body = body_of(size);
    let deadline = Instant::now() + LIMIT;
    let per = messages.div_ceil(sessions);
    let start = Instant::now();
    let threads: Vec<_> = (0..sessions)
        .map(|_| {
            let body = body.clone();
            let addr = daemon.addr;
            std::thread::spawn(move || session(addr, per, &body, deadline))
        })
        .collect();
    let mut lat: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("session"))
        .collect();
    let inject_time = start.elapsed();
    while daemon.queue_len() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let e2e_time = start.elapsed();
    let (cpu_ms, rss_kib) = daemon.usage();
    lat.sort_unstable();
    let sent = lat.len();
    let pct = |p: f64| {
        lat.get(((sent as f64 * p) as usize).min(sent.saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    RunResult {
        inject: sent as f64 / inject_time.as_secs_f64(),
        e2e: sent as f64 / e2e_time.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_ms_per_msg: cpu_ms / sent as f64,
        rss_mib: rss_kib as f64 / 1024.0,
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let scenarios: Vec<(usize, usize, usize, usize)> = if args.len() >= 3 {
        let n = |i: usize| args[i].parse::<usize>().expect("number");
        vec![(
            n(0),
            n(1),
            n(2),
            args.get(3).map(|r| r.parse().expect("runs")).unwrap_or(3),
        )]
    } else {
        vec![
            (1, 1024, 2000, 3),
            (16, 1024, 10000, 3),
            (64, 1024, 10000, 3),
            (16, 4096, 10000, 3),
            (16, 65536, 3000, 3),
        ]
    };
    println!(
        "| sessions | size | messages | inject msg/s | end-to-end msg/s (min–max) | 250 latency p50 / p99 ms | CPU ms/msg | peak RSS MiB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (sessions, size, messages, runs) in scenarios {
        let results: Vec<RunResult> = (0..runs).map(|_| run(sessions, size, messages)).collect();
        let (inject, _, _) = median(results.iter().map(|r| r.inject).collect());
        let (e2e, lo, hi) = median(results.iter().map(|r| r.e2e).collect());
        let (p50, _, _) = median(results.iter().map(|r| r.p50_ms).collect());
        let (p99, _, _) = median(results.iter().map(|r| r.p99_ms).collect());
        let (cpu, _, _) = median(results.iter().map(|r| r.cpu_ms_per_msg).collect());
        let (rss, _, _) = median(results.iter().map(|r| r.rss_mib).collect());
        println!(
            "| {sessions} | {size} | {messages} | {inject:.0} | {e2e:.0} ({lo:.0}–{hi:.0}) | {p50:.2} / {p99:.2} | {cpu:.3} | {rss:.0} |"
        );
    }
}
