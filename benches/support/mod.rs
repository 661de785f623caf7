//! What the load benchmarks share: the real daemon started from a config
//! file, a counting SMTP sink, and SMTP client sessions that time each
//! message from end of DATA to `250`.

#![allow(dead_code)] // each bench binary uses its own part of this

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The daemon's configuration for a benchmark: one SMTP listener on an
/// ephemeral loopback port, DNS pointed at a closed port (look-ups fail
/// fast; benchmarks route by smarthost or routes), logging at `info`.
pub fn write_config(dir: &Path, spool: &Path, extra: &str) -> PathBuf {
    let config = dir.join("petrel.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
hostname = "bench.example.test"
spool = "{spool}"
postmaster = "alice@example.test"
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
{extra}
"#,
            spool = spool.display()
        ),
    )
    .expect("config");
    config
}

/// A running `petrel serve` (release build).
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    /// Every listener's address by name (`addr` is the last one logged).
    pub addrs: std::collections::HashMap<String, SocketAddr>,
    pub config: PathBuf,
    /// From spawn to the `ready` log line.
    pub startup: Duration,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        let spawned = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_petrel"))
            .arg("-c")
            .arg(config)
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
        let mut addrs = std::collections::HashMap::new();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("petrel did not become ready");
            if let Some(a) = line.split(" address=").nth(1) {
                addr = a.split_whitespace().next().and_then(|a| a.parse().ok());
                if let (Some(name), Some(a)) = (
                    line.split(" listener=")
                        .nth(1)
                        .and_then(|n| n.split_whitespace().next()),
                    addr,
                ) {
                    addrs.insert(name.to_string(), a);
                }
            }
            if line.contains(" ready") {
                break;
            }
        }
        let startup = spawned.elapsed();
        // Compactions are shown: how long writers waited is in the line.
        std::thread::spawn(move || {
            for line in rx {
                if line.contains("spool compacted") {
                    eprintln!("daemon: {line}");
                }
            }
        });
        Daemon {
            child,
            addr: addr.expect("listening line"),
            addrs,
            config: config.to_path_buf(),
            startup,
        }
    }

    /// Runs a `petrel` CLI command against this daemon's configuration.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_petrel"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("petrel CLI")
    }

    /// `petrel status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.cli(&["status", "--json"]).stdout).unwrap_or_default()
    }

    pub fn queue_len(&self) -> u64 {
        self.status()["messages"].as_u64().unwrap_or(u64::MAX)
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Resident set size now, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// (user+system CPU ms, peak RSS KiB) from /proc.
    pub fn usage(&self) -> (f64, u64) {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
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
        // Linux reports CPU time in clock ticks of 1/100 s.
        (
            (field(11) + field(12)) * 10.0,
            self.proc_status_kib("VmHWM:"),
        )
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A minimal SMTP sink (like Postfix's smtp-sink): accepts everything,
/// offers PIPELINING, counts messages.
pub struct CountingSink {
    pub addr: SocketAddr,
    pub count: Arc<AtomicUsize>,
}

impl CountingSink {
    pub fn start() -> CountingSink {
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

    /// Waits until the sink has `n` messages or the deadline passes.
    pub fn wait_for(&self, n: usize, deadline: Instant) -> bool {
        while self.count.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
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

/// How a session spaces its messages.
#[derive(Clone)]
pub enum Pace {
    /// Back to back, `count` messages.
    Count(usize),
    /// One message per interval until the flag is set.
    Every(Duration, Arc<AtomicBool>),
}

/// One SMTP session sending messages to `rcpt` (envelope commands
/// pipelined); returns per-message latencies from end of DATA to `250`, in
/// microseconds. Stops at the deadline whatever the pace.
pub fn session(
    addr: SocketAddr,
    pace: Pace,
    rcpt: &str,
    body: &[u8],
    deadline: Instant,
) -> Vec<u64> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::new(stream);
    assert_eq!(reply(&mut r), 220);
    w.write_all(b"EHLO load.test\r\n").expect("write");
    assert_eq!(reply(&mut r), 250);
    let envelope = format!("MAIL FROM:<load@example.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
    let mut lat = Vec::new();
    let mut next = Instant::now();
    for n in 0.. {
        let now = Instant::now();
        if now > deadline {
            break;
        }
        match &pace {
            Pace::Count(c) if n >= *c => break,
            Pace::Count(_) => {}
            Pace::Every(interval, stop) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if next > now {
                    std::thread::sleep(next - now);
                }
                next += *interval;
            }
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

/// Runs `sessions` sessions sharing `messages` back to back; returns the
/// latencies of all.
pub fn blast(
    addr: SocketAddr,
    sessions: usize,
    messages: usize,
    rcpt: &str,
    body: &[u8],
    deadline: Instant,
) -> Vec<u64> {
    let per = messages.div_ceil(sessions);
    let threads: Vec<_> = (0..sessions)
        .map(|i| {
            let body = body.to_vec();
            let rcpt = rcpt.to_string();
            let count = per.min(messages.saturating_sub(i * per));
            std::thread::spawn(move || session(addr, Pace::Count(count), &rcpt, &body, deadline))
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("session"))
        .collect()
}

/// A message of about `size` octets, dot-terminated for DATA.
pub fn body_of(size: usize) -> Vec<u8> {
    let mut b =
        b"Subject: load\r\nFrom: load@example.test\r\nTo: someone@example.test\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    while b.len() + line.len() <= size {
        b.extend_from_slice(line);
    }
    b.extend_from_slice(b".\r\n");
    b
}

/// The value at fraction `p` of sorted latencies (µs), in ms.
pub fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

/// Median, min and max.
pub fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}
