//! Test harness: starts the real `petrel` binary on loopback ports with a
//! temporary spool, learns its listener addresses from its log, and talks
//! to it with raw SMTP or its own CLI. `TestServer` stops the daemon on drop.
#![allow(dead_code)]

pub mod dns;
pub mod http;
pub mod imap;
pub mod postfix;
pub mod postgres;
pub mod sink;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn petrel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_petrel"))
}

/// A port that was free a moment ago (for peers bound later on other
/// loopback addresses, or for "connection refused").
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The base configuration of tests. Loopback only; `[dns]` points at the
/// test's own DNS server; remote hosts are reached on `outbound_port`.
pub fn base_config(
    spool: &Path,
    dns: SocketAddr,
    outbound_port: u16,
    with_queue: bool,
    with_outbound: bool,
) -> String {
    let queue = if with_queue {
        "[queue]\nretry_initial = \"1s\"\nretry_max = \"2s\"\n"
    } else {
        ""
    };
    let outbound = if with_outbound {
        format!("[smtp.outbound]\nport = {outbound_port}\n")
    } else {
        String::new()
    };
    format!(
        r#"
[server]
hostname = "mx.example.test"
spool = "{spool}"
postmaster = "alice@example.test"

[domains]
primary = "example.test"
aliases = ["example.org", "[192.0.2.10]"]

[[listeners]]
name = "mx"
protocol = "smtp"
bind = "127.0.0.1:0"

{queue}
{outbound}
[dns]
nameservers = ["{dns}"]

[[users]]
name = "alice"
addresses = ["alice@example.test", "a.smith@example.org"]

[[users]]
name = "bob"
addresses = ["bob@example.test"]

[[mailin]]
name = "support"
addresses = ["support@example.test"]
readers = ["alice"]

[[aliases]]
address = "team@example.test"
members = ["alice@example.test", "bob@example.test", "dave@partner.test"]
"#,
        spool = spool.display()
    )
}

/// The standard test DNS server, started once per test process.
pub fn standard_dns() -> SocketAddr {
    static DNS: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
    *DNS.get_or_init(|| dns::TestDns::standard().addr)
}

/// A running daemon.
pub struct TestServer {
    child: Option<Child>,
    /// Temporary directory holding the config and the spool.
    pub dir: Arc<tempfile::TempDir>,
    /// The config file.
    pub config_path: PathBuf,
    /// Listener name → bound address.
    pub addrs: HashMap<String, SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts a daemon with the base configuration; `smtp_inbound` is the
    /// body of an `[smtp.inbound]` table (may be empty).
    pub fn start(smtp_inbound: &str) -> TestServer {
        Self::start_with(smtp_inbound, "", free_port())
    }

    /// Starts a daemon whose remote peers are reached on `outbound_port`,
    /// with `extra` TOML appended after the `[smtp.inbound]` table body
    /// `smtp_inbound` (so `extra` must start with a table header).
    pub fn start_with(smtp_inbound: &str, extra: &str, outbound_port: u16) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let cfg = format!(
            "{}\n[smtp.inbound]\n{}\n{}\n",
            base_config(
                &dir.path().join("spool"),
                standard_dns(),
                outbound_port,
                !extra.contains("[queue]"),
                !extra.contains("[smtp.outbound]")
            ),
            smtp_inbound,
            extra
        );
        Self::start_in(dir, &cfg)
    }

    /// Starts a daemon in `dir` with the full configuration text `cfg`.
    pub fn start_in(dir: Arc<tempfile::TempDir>, cfg: &str) -> TestServer {
        Self::start_wrapped(dir, cfg, &[])
    }

    /// Starts the daemon under `wrapper` (e.g. `strace -f -o FILE`).
    pub fn start_wrapped(dir: Arc<tempfile::TempDir>, cfg: &str, wrapper: &[&str]) -> TestServer {
        let config_path = dir.path().join("petrel.toml");
        std::fs::write(&config_path, cfg).expect("write config");
        let bin = petrel_bin();
        let mut argv: Vec<&std::ffi::OsStr> = wrapper.iter().map(std::ffi::OsStr::new).collect();
        argv.push(bin.as_os_str());
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .args(["-c", config_path.to_str().expect("utf-8 path"), "serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn petrel");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("PETREL_TEST_LOG").is_some() {
                        eprintln!("[petrel] {line}");
                    }
                    let _ = tx.send(line.clone());
                    log.lock().expect("log lock").push(line);
                }
            });
        }
        let mut addrs = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "petrel did not become ready; log:\n{}",
                        log.lock().expect("lock").join("\n")
                    );
                }
            };
            if line.contains(" listening ") {
                let name = field(&line, "listener").expect("listener field");
                let addr = field(&line, "address")
                    .expect("address field")
                    .parse()
                    .expect("address");
                addrs.insert(name, addr);
            }
            if line.contains(" ready") {
                break;
            }
        }
        TestServer {
            child: Some(child),
            dir,
            config_path,
            addrs,
            log,
        }
    }

    /// The address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    /// The SMTP listener `mx`.
    pub fn mx(&self) -> SocketAddr {
        self.addr("mx")
    }

    /// Runs the CLI against this daemon's configuration.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with(&self.config_path, args, None)
    }

    /// Runs the CLI with stdin.
    pub fn cli_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        cli_with(&self.config_path, args, Some(stdin))
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits until a log line contains every one of `needles`.
    pub fn wait_log(&self, needles: &[&str], limit: Duration) -> bool {
        self.wait_log_count(needles, 1, limit)
    }

    /// How many log lines contain every one of `needles`.
    pub fn log_count(&self, needles: &[&str]) -> usize {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until `n` log lines contain every one of `needles`.
    pub fn wait_log_count(&self, needles: &[&str], n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log_count(needles) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends `sig` to the daemon itself when it runs under a wrapper
    /// (`start_wrapped`, e.g. strace, whose own death would detach it).
    pub fn signal_wrapped(&self, sig: &str) {
        let wrapper = self.child_pid().expect("running");
        let children = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children"))
            .expect("the wrapper's children");
        let daemon = children
            .split_whitespace()
            .next()
            .expect("the daemon under the wrapper");
        let killed = Command::new("kill")
            .args([sig, daemon])
            .status()
            .expect("kill");
        assert!(killed.success());
    }

    /// Sends SIGKILL and waits for the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id of the started child (the wrapper, when wrapped).
    pub fn child_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits for the child to exit by itself; returns the exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        signal(self.child.as_ref()?, libc_sig::TERM);
        self.wait_exit(Duration::from_secs(60))
    }

    /// Sends a signal (e.g. SIGHUP) to the daemon.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            signal(c, sig);
        }
    }

    /// Runs a CLI command that prints JSON lines; asserts it succeeded.
    fn cli_json_lines(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    /// Messages in a mailbox, read with `petrel mailbox NAME --json`.
    pub fn mailbox(&self, name: &str) -> Vec<serde_json::Value> {
        self.cli_json_lines(&["mailbox", name, "--json"])
    }

    /// The content of one mailbox message.
    pub fn mailbox_message(&self, name: &str, uid: u64) -> Vec<u8> {
        let out = self.cli(&["mailbox", name, "--uid", &uid.to_string()]);
        assert!(
            out.status.success(),
            "mailbox --uid: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Waits until `name` holds `n` messages.
    pub fn wait_mailbox(&self, name: &str, n: usize, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.mailbox(name);
            if m.len() >= n || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the queue is empty; panics with the queue at the limit.
    pub fn wait_queue_empty(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let q = self.mailq();
            if q.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "queue not empty: {q:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `mailq --json` entries.
    pub fn mailq(&self) -> Vec<serde_json::Value> {
        self.cli_json_lines(&["mailq", "--json"])
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Signal numbers used by the tests.
pub mod libc_sig {
    /// SIGHUP
    pub const HUP: i32 = 1;
    /// SIGKILL
    pub const KILL: i32 = 9;
    /// SIGTERM
    pub const TERM: i32 = 15;
}

fn signal(c: &Child, sig: i32) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), c.id().to_string()])
        .status();
}

/// Runs the CLI with a given config.
pub fn cli_with(config: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(petrel_bin());
    cmd.arg("-c").arg(config).args(args);
    run_cmd(cmd, stdin)
}

/// Whether strace can be run. Without it a test skips (saying so), except
/// under CI, where `.ci/run` installs it and a missing one is a failure.
pub fn strace_available() -> bool {
    if Command::new("strace").arg("-V").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "strace is not installed, and CI is set"
    );
    eprintln!("SKIPPED: strace is not installed (apt-get install strace)");
    false
}

/// Runs a command with optional stdin and collects its output.
pub fn run_cmd(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

/// Runs an interop script of `tests/interop/` with `python3` and the
/// daemon's petrel binary and config appended to `args`; prints its output
/// and asserts that it succeeded with the closing line `expect`.
pub fn run_python_interop(script: &str, args: &[String], server: &TestServer, expect: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(script);
    let mut cmd = Command::new("python3");
    cmd.arg(path)
        .args(args)
        .arg("--petrel")
        .arg(petrel_bin())
        .arg("--config")
        .arg(&server.config_path);
    let out = run_cmd(cmd, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{stdout}");
    assert!(stdout.contains(expect), "{stdout}");
}

/// The value of `key=value` in a log line.
pub fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}

/// A raw SMTP client for protocol tests.
pub struct Smtp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Smtp {
    /// Connects and reads the greeting; returns the client and the greeting.
    pub fn connect(addr: SocketAddr) -> (Smtp, (u16, String)) {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut s = Smtp { stream, reader };
        let g = s.reply();
        (s, g)
    }

    /// Connects from the source address `source` and reads the greeting.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> (Smtp, (u16, String)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let stream = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind(SocketAddr::new(source, 0)).expect("bind source");
            sock.connect(addr).await.expect("connect")
        });
        let stream = stream.into_std().expect("std stream");
        stream.set_nonblocking(false).expect("blocking");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut s = Smtp { stream, reader };
        let g = s.reply();
        (s, g)
    }

    /// Connects from the source address `source` (another loopback
    /// address, to look like a different client), expects 220, says EHLO.
    pub fn ready_from(addr: SocketAddr, source: std::net::IpAddr) -> Smtp {
        let (mut s, g) = Smtp::connect_from(addr, source);
        assert_eq!(g.0, 220, "greeting {g:?}");
        assert_eq!(s.cmd("EHLO internet-client.test").0, 250);
        s
    }

    /// Connects, expects 220, says EHLO.
    pub fn ready(addr: SocketAddr) -> Smtp {
        let (mut s, g) = Smtp::connect(addr);
        assert_eq!(g.0, 220, "greeting {g:?}");
        assert_eq!(s.cmd("EHLO client.test").0, 250);
        s
    }

    /// Writes raw octets.
    pub fn send_raw(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("write");
    }

    /// Reads one (possibly multi-line) reply: code and all text lines.
    pub fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                return (0, text);
            }
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            text.push_str(line.get(4..).unwrap_or("").trim_end());
            text.push('\n');
            if line.as_bytes().get(3) != Some(&b'-') {
                return (code, text);
            }
        }
    }

    /// Sends a command line (CRLF added) and reads the reply.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// A whole transaction; returns the reply to the end of DATA.
    pub fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> (u16, String) {
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).0, 250);
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert_eq!(r.0, 250, "RCPT {t}: {r:?}");
        }
        assert_eq!(self.cmd("DATA").0, 354);
        self.send_raw(body.as_bytes());
        self.send_raw(b"\r\n.\r\n");
        self.reply()
    }

    /// Whether the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }
}

/// The queue id in a `250 2.0.0 Ok: queued as ID` reply.
pub fn queued_id(reply: &(u16, String)) -> String {
    assert_eq!(reply.0, 250, "not accepted: {reply:?}");
    reply.1.trim().rsplit(' ').next().expect("id").to_string()
}

/// Asserts that a measured timeout fired near its configured value: not
/// early, and not later than the timer's granularity and a loaded test
/// machine explain (a timeout configured at 1 s that fires at 15 s fails).
pub fn assert_about(measured: Duration, configured: Duration, what: &str) {
    let low = configured.mul_f64(0.9);
    let high = configured.mul_f64(1.5) + Duration::from_millis(1000);
    assert!(
        measured >= low && measured <= high,
        "{what}: fired after {measured:?}, configured {configured:?} (allowed {low:?} to {high:?})"
    );
}

/// A stopped daemon's spool queue, opened as the test reads or plants
/// keys in it. sled lets go of its file lock a moment after its last
/// handle is dropped (its I/O threads finish first), so this waits for
/// the lock, as the next daemon's start must: see [`wait_spool_released`].
pub fn open_spool_queue(spool: &Path) -> sled::Db {
    wait_spool_released(spool);
    sled::Config::new()
        .path(spool.join("queue"))
        .segment_size(petrel::spool::SEGMENT_SIZE)
        .open()
        .expect("open the spool")
}

/// Waits (up to 30 s) until no process or handle holds the lock of the
/// spool's sled file; panics if it stays held.
pub fn wait_spool_released(spool: &Path) {
    let db = spool.join("queue").join("db");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let file = match std::fs::File::open(&db) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => panic!("open {}: {e}", db.display()),
        };
        match file.try_lock() {
            Ok(()) => return,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("the lock of {} stays held: {e}", db.display()),
        }
    }
}
