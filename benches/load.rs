//! Load driver: starts the real daemon (release build) on loopback, drives
//! it with concurrent pipelined SMTP sessions, and measures messages per
//! second through the whole daemon, the time from end of DATA to `250`, CPU
//! per message and peak RSS.
//!
//! Two modes: `local` (SMTP in, local mailbox out) and `relay` (SMTP in,
//! SMTP out through a smarthost to a sink on loopback that counts what it
//! gets; end to end means until the sink has every message).
//!
//! Run: `cargo bench --bench load` (all scenarios, 3 runs each, medians), or
//! `cargo bench --bench load -- MODE SESSIONS SIZE MESSAGES RUNS` for one.
//! Every run is bounded: it sends a fixed count and gives up after 300 s.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(300);

struct Daemon {
    child: Child,
    addr: SocketAddr,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(smarthost: Option<SocketAddr>) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("petrel.toml");
        let outbound = smarthost
            .map(|a| {
                format!(
                    "[smtp.outbound]\nsmarthost = \"[{}]:{}\"\ntls = \"off\"\n",
                    a.ip(),
                    a.port()
                )
            })
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                r#"
[server]
hostname = "bench.example.test"
spool = "{spool}"
[domains]
primary = "example.test"
[[listeners]]
name = "mx"
protocol = "smtp"
bind = "127.0.0.1:0"
[smtp.inbound]
max_connections_per_client = 1000
{outbound}
[dns]
nameservers = ["127.0.0.1:9"]
[log]
level = "info"
[[users]]
name = "alice"
addresses = ["alice@example.test"]
"#,
                spool = dir.path().join("spool").display()
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
        Daemon {
            child,
            addr: addr.expect("listening line"),
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
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let ticks = field(11) + field(12);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // Linux reports CPU time in clock ticks of 1/100 s.
        (ticks * 10.0, hwm)
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

/// A minimal SMTP sink (like Postfix's smtp-sink): accepts everything,
/// offers PIPELINING, counts messages.
struct CountingSink {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl CountingSink {
    fn start() -> CountingSink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let c = c.clone();
                std::thread::spawn(move || sink_session(stream, c));
            }
        });
        CountingSink { addr, count }
    }
}

fn sink_session(stream: TcpStream, count: Arc<AtomicUsize>) {
    let _ = stream.set_nodelay(true);
    let Ok(out) = stream.try_clone() else { return };
    let mut w = std::io::BufWriter::new(out);
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let _ = w.write_all(b"220 sink ESMTP\r\n");
    let _ = w.flush();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
            return;
        }
        let up = line.to_ascii_uppercase();
        let reply: &[u8] = if up.starts_with(b"EHLO") {
            b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if up.starts_with(b"DATA") {
            let _ = w.write_all(b"354 go\r\n");
            let _ = w.flush();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == b".\r\n" {
                    break;
                }
            }
            count.fetch_add(1, Ordering::Relaxed);
            b"250 2.0.0 ok\r\n"
        } else if up.starts_with(b"QUIT") {
            let _ = w.write_all(b"221 bye\r\n");
            let _ = w.flush();
            return;
        } else {
            b"250 ok\r\n"
        };
        let _ = w.write_all(reply);
        if r.buffer().is_empty() {
            let _ = w.flush();
        }
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
fn session(addr: SocketAddr, count: usize, rcpt: &str, body: &[u8], deadline: Instant) -> Vec<u64> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::new(stream);
    assert_eq!(reply(&mut r), 220);
    w.write_all(b"EHLO load.test\r\n").expect("write");
    assert_eq!(reply(&mut r), 250);
    let envelope = format!("MAIL FROM:<load@example.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        if Instant::now() > deadline {
            break;
        }
        w.write_all(envelope.as_bytes()).expect("write");
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
        b"Subject: load\r\nFrom: load@example.test\r\nTo: someone@example.test\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    while b.len() + line.len() <= size {
        b.extend_from_slice(line);
    }
    b.extend_from_slice(b".\r\n");
    b
}

fn run(relay: bool, sessions: usize, size: usize, messages: usize) -> RunResult {
    let sink = relay.then(CountingSink::start);
    let daemon = Daemon::start(sink.as_ref().map(|s| s.addr));
    let rcpt = if relay {
        "someone@remote.test"
    } else {
        "alice@example.test"
    };
    let body = body_of(size);
    let deadline = Instant::now() + LIMIT;
    let per = messages.div_ceil(sessions);
    let start = Instant::now();
    let threads: Vec<_> = (0..sessions)
        .map(|_| {
            let body = body.clone();
            let addr = daemon.addr;
            std::thread::spawn(move || session(addr, per, rcpt, &body, deadline))
        })
        .collect();
    let mut lat: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("session"))
        .collect();
    let inject_time = start.elapsed();
    let sent = lat.len();
    match &sink {
        Some(s) => {
            while s.count.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        None => {
            while daemon.queue_len() != 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let e2e_time = start.elapsed();
    let (cpu_ms, rss_kib) = daemon.usage();
    lat.sort_unstable();
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
    let scenarios: Vec<(bool, usize, usize, usize, usize)> = if args.len() >= 4 {
        let n = |i: usize| args[i].parse::<usize>().expect("number");
        vec![(
            args[0] == "relay",
            n(1),
            n(2),
            n(3),
            args.get(4).map(|r| r.parse().expect("runs")).unwrap_or(3),
        )]
    } else {
        vec![
            (false, 1, 1024, 2000, 3),
            (false, 16, 1024, 10000, 3),
            (false, 64, 1024, 10000, 3),
            (false, 16, 4096, 10000, 3),
            (false, 16, 65536, 3000, 3),
            (true, 1, 1024, 2000, 3),
            (true, 20, 1024, 10000, 3),
            (true, 1, 65536, 1000, 3),
            (true, 20, 65536, 3000, 3),
        ]
    };
    println!(
        "| mode | sessions | size | messages | inject msg/s | end-to-end msg/s (min–max) | 250 latency p50 / p99 ms | CPU ms/msg | peak RSS MiB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (relay, sessions, size, messages, runs) in scenarios {
        let results: Vec<RunResult> = (0..runs)
            .map(|_| run(relay, sessions, size, messages))
            .collect();
        let (inject, _, _) = median(results.iter().map(|r| r.inject).collect());
        let (e2e, lo, hi) = median(results.iter().map(|r| r.e2e).collect());
        let (p50, _, _) = median(results.iter().map(|r| r.p50_ms).collect());
        let (p99, _, _) = median(results.iter().map(|r| r.p99_ms).collect());
        let (cpu, _, _) = median(results.iter().map(|r| r.cpu_ms_per_msg).collect());
        let (rss, _, _) = median(results.iter().map(|r| r.rss_mib).collect());
        println!(
            "| {} | {sessions} | {size} | {messages} | {inject:.0} | {e2e:.0} ({lo:.0}–{hi:.0}) | {p50:.2} / {p99:.2} | {cpu:.3} | {rss:.0} |",
            if relay { "relay" } else { "local" }
        );
    }
}
