//! Queue at scale (issue 6): builds a queue of deferred 2 KiB messages in
//! steps (default 10 k, 100 k, 1 M) on the real daemon, and at each step
//! measures what an administrator meets with a big queue:
//!
//! - the daemon's RSS with the queue at rest;
//! - end-to-end rate and end-of-DATA→`250` latency of fresh mail relayed
//!   to a sink *past* the queue (20 sessions, 10,000 messages);
//! - `petrel status --json` and `petrel mailq --json` (every entry
//!   streamed and counted) wall time;
//! - restart: SIGTERM, then spawn to the `ready` log line, and RSS after.
//!
//! At the last step, with the full queue:
//! - `petrel requeue --all` while 4 sessions send one message every 25 ms
//!   each: latency percentiles while the command runs, and while the
//!   retry storm it causes runs (every message is tried again);
//! - `petrel delete --all` (which compacts the spool before it returns)
//!   while the same 4 sessions send: time, intake latency, and spool disk
//!   use before, after, and after a restart.
//!
//! The queue is built by relaying to `dead.test`, routed to a loopback port
//! nothing listens on: each message is accepted, tried once, refused, and
//! deferred for two hours. Fresh mail goes to `live.test`, routed to a
//! counting sink.
//!
//! Run: `cargo bench --bench queue_scale` or, e.g.,
//! `cargo bench --bench queue_scale -- 10000 100000` for smaller steps.
//! The spool is a temporary directory under `$TMPDIR` (default /tmp), or
//! `$QUEUE_SCALE_DIR` to keep it: the 1 M step needs about 5 GB of disk.
//! Every wait is bounded. Each fresh-mail probe prints its start and end on
//! stderr in CLOCK_MONOTONIC seconds, so that `perf record -a -k mono` over
//! the whole run can be cut to it with `perf report --time A,B`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{CountingSink, Daemon, Pace, blast, body_of, percentile_ms, session, write_config};

const SIZE: usize = 2048;
const FILL_SESSIONS: usize = 20;
const PROBE_SESSIONS: usize = 20;
const PROBE_MESSAGES: usize = 10_000;
const PACERS: usize = 4;
const PACE: Duration = Duration::from_millis(25);
/// Bound on any one phase.
const LIMIT: Duration = Duration::from_secs(1800);

/// Disk blocks used under `dir`, MiB (like `du -sm`).
fn disk_mib(dir: &Path) -> f64 {
    petrel::spool::compact::disk_usage(dir) as f64 / (1024.0 * 1024.0)
}

fn state_count(status: &serde_json::Value, state: &str) -> u64 {
    status["by_state"][state].as_u64().unwrap_or(u64::MAX)
}

/// Waits until nothing is active (every message has been tried and
/// deferred); returns how long that took.
fn settle(daemon: &Daemon, expected: u64) -> Duration {
    let start = Instant::now();
    loop {
        let s = daemon.status();
        if state_count(&s, "active") == 0 && s["messages"].as_u64() == Some(expected) {
            return start.elapsed();
        }
        assert!(start.elapsed() < LIMIT, "queue did not settle: {s}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `petrel mailq --json`: (entries, seconds).
fn mailq(daemon: &Daemon) -> (u64, f64) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_petrel"))
        .arg("-c")
        .arg(&daemon.config)
        .args(["mailq", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mailq");
    let out = child.stdout.take().expect("stdout");
    let mut n = 0;
    for line in BufReader::with_capacity(1 << 16, out).split(b'\n') {
        if line.map(|l| l.starts_with(b"{")).unwrap_or(false) {
            n += 1;
        }
    }
    assert!(child.wait().expect("mailq").success(), "mailq failed");
    (n, start.elapsed().as_secs_f64())
}

fn timed_cli(daemon: &Daemon, args: &[&str]) -> f64 {
    let start = Instant::now();
    let out = daemon.cli(args);
    assert!(
        out.status.success(),
        "petrel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed().as_secs_f64()
}

/// Paced sessions to `live.test` while `work` runs; returns the work's
/// result and the sorted latencies.
fn paced<T>(daemon: &Daemon, body: &[u8], work: impl FnOnce() -> T) -> (T, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + LIMIT;
    let threads: Vec<_> = (0..PACERS)
        .map(|_| {
            let (addr, body, stop) = (daemon.addr, body.to_vec(), stop.clone());
            std::thread::spawn(move || {
                session(
                    addr,
                    Pace::Every(PACE, stop),
                    "x@live.test",
                    &body,
                    deadline,
                )
            })
        })
        .collect();
    let result = work();
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("pacer"))
        .collect();
    lat.sort_unstable();
    (result, lat)
}

/// CLOCK_MONOTONIC in seconds: the clock of `perf record -k mono`, so a
/// profile of the whole run can be cut to one phase.
fn monotonic_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let mut levels: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.parse().expect("queue sizes are numbers"))
        .collect();
    if levels.is_empty() {
        levels = vec![10_000, 100_000, 1_000_000];
    }
    levels.sort_unstable();
    let sink = CountingSink::start();
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    // QUEUE_SCALE_DIR keeps the spool and config for a look afterwards.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::var_os("QUEUE_SCALE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("bench directory");
    let spool = dir.join("spool");
    let config = write_config(
        &dir,
        &spool,
        &format!(
            r#"
[smtp.outbound]
tls = "off"
[[smtp.outbound.routes]]
domain = "dead.test"
host = "[127.0.0.1]:{dead_port}"
[[smtp.outbound.routes]]
domain = "live.test"
host = "[127.0.0.1]:{}"
[queue]
retry_initial = "2h"
retry_max = "4h"
lifetime = "5d"
warn_after = "1d"
"#,
            sink.addr.port()
        ),
    );
    let body = body_of(SIZE);
    let mut daemon = Daemon::start(&config);
    let mut queued = 0u64;
    let mut sunk = 0usize;
    println!(
        "# petrel queue at scale: {SIZE}-octet messages deferred; fresh mail {PROBE_SESSIONS} sessions x {PROBE_MESSAGES} to a sink"
    );
    println!(
        "| queued | fill msg/s | RSS at rest MiB | fresh end-to-end msg/s | fresh 250 p50 / p99 ms | RSS after MiB | status s | mailq --json s (entries) | restart to ready s | RSS after restart MiB | spool disk MiB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &level in &levels {
        let need = (level - queued) as usize;
        let start = Instant::now();
        let sent = blast(
            daemon.addr,
            FILL_SESSIONS,
            need,
            "x@dead.test",
            &body,
            start + LIMIT,
        )
        .len();
        assert_eq!(sent, need, "fill stopped at its time bound");
        queued = level;
        settle(&daemon, queued);
        let fill_rate = need as f64 / start.elapsed().as_secs_f64();
        let rss_rest = daemon.rss_kib();

        let start = Instant::now();
        let probe_from = monotonic_s();
        let mut lat = blast(
            daemon.addr,
            PROBE_SESSIONS,
            PROBE_MESSAGES,
            "x@live.test",
            &body,
            start + LIMIT,
        );
        sunk += lat.len();
        assert!(
            sink.wait_for(sunk, start + LIMIT),
            "fresh mail did not reach the sink"
        );
        let e2e = lat.len() as f64 / start.elapsed().as_secs_f64();
        eprintln!(
            "phase fresh-{level} {probe_from:.6},{:.6} (CLOCK_MONOTONIC, for perf report --time)",
            monotonic_s()
        );
        lat.sort_unstable();
        let rss_after = daemon.rss_kib();

        let status_s = timed_cli(&daemon, &["status", "--json"]);
        let (entries, mailq_s) = mailq(&daemon);
        assert_eq!(entries, queued, "mailq --json listed every message");

        daemon.stop();
        daemon = Daemon::start(&config);
        let rss_restart = daemon.rss_kib();
        println!(
            "| {level} | {fill_rate:.0} | {:.0} | {e2e:.0} | {:.2} / {:.2} | {:.0} | {status_s:.2} | {mailq_s:.2} ({entries}) | {:.2} | {:.0} | {:.0} |",
            mib(rss_rest),
            percentile_ms(&lat, 0.5),
            percentile_ms(&lat, 0.99),
            mib(rss_after),
            daemon.startup.as_secs_f64(),
            mib(rss_restart),
            disk_mib(&spool),
        );
    }

    // Requeue everything while fresh mail keeps arriving.
    let (requeue_s, during) = paced(&daemon, &body, || timed_cli(&daemon, &["requeue", "--all"]));
    let (storm, after) = paced(&daemon, &body, || settle(&daemon, queued));
    let show = |lat: &[u64]| {
        format!(
            "{} messages, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            percentile_ms(lat, 0.5),
            percentile_ms(lat, 0.99),
            percentile_ms(lat, 1.0)
        )
    };
    println!();
    println!(
        "requeue --all of {queued}: {requeue_s:.2} s; intake meanwhile: {}",
        show(&during)
    );
    println!(
        "retry storm after it: {:.1} s until every message was tried again; intake meanwhile: {}",
        storm.as_secs_f64(),
        show(&after)
    );
    println!(
        "peak RSS since the last restart: {:.0} MiB",
        mib(daemon.usage().1)
    );

    let before = disk_mib(&spool);
    let (delete_s, during) = paced(&daemon, &body, || timed_cli(&daemon, &["delete", "--all"]));
    let after_delete = disk_mib(&spool);
    // Mail sent after the listing is relayed to the sink, not deleted.
    settle(&daemon, 0);
    daemon.stop();
    let daemon = Daemon::start(&config);
    let after_restart = disk_mib(&spool);
    println!(
        "delete --all: {delete_s:.2} s; intake meanwhile: {}",
        show(&during)
    );
    println!(
        "spool disk {before:.0} MiB before, {after_delete:.0} MiB when delete --all returned, {after_restart:.0} MiB after a restart ({:.2} s to ready)",
        daemon.startup.as_secs_f64()
    );
}
