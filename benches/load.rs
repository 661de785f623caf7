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

mod support;

use std::time::{Duration, Instant};

use support::{CountingSink, Daemon, blast, body_of, median, percentile_ms, write_config};

const LIMIT: Duration = Duration::from_secs(300);

struct RunResult {
    inject: f64,
    e2e: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_ms_per_msg: f64,
    rss_mib: f64,
}

fn run(relay: bool, sessions: usize, size: usize, messages: usize) -> RunResult {
    let sink = relay.then(CountingSink::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let outbound = sink
        .as_ref()
        .map(|s| {
            format!(
                "[smtp.outbound]\nsmarthost = \"[{}]:{}\"\ntls = \"off\"\n",
                s.addr.ip(),
                s.addr.port()
            )
        })
        .unwrap_or_default();
    let config = write_config(dir.path(), &dir.path().join("spool"), &outbound);
    let daemon = Daemon::start(&config);
    let rcpt = if relay {
        "someone@remote.test"
    } else {
        "alice@example.test"
    };
    let body = body_of(size);
    let deadline = Instant::now() + LIMIT;
    let start = Instant::now();
    let mut lat = blast(daemon.addr, sessions, messages, rcpt, &body, deadline);
    let inject_time = start.elapsed();
    let sent = lat.len();
    match &sink {
        Some(s) => {
            s.wait_for(sent, deadline);
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
    RunResult {
        inject: sent as f64 / inject_time.as_secs_f64(),
        e2e: sent as f64 / e2e_time.as_secs_f64(),
        p50_ms: percentile_ms(&lat, 0.50),
        p99_ms: percentile_ms(&lat, 0.99),
        cpu_ms_per_msg: cpu_ms / sent as f64,
        rss_mib: rss_kib as f64 / 1024.0,
    }
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
