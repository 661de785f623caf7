//! The webmail's cost (issue 13, item 5), on the real daemon (release):
//!
//! 1. a folder of N messages (default 10,000; delivered over SMTP), then
//!    the message-list page timed from request to last octet on loopback
//!    (an upper bound of the server's time): cold (a flag change before
//!    each request, so the folder's MODSEQ moves and the list is selected
//!    and sorted afresh) and warm (the selection cached), newest first, a
//!    deep page, sorted, and searched; p50 and p99 of `REQUESTS` each;
//! 2. SMTP intake (20 sessions × 4 KiB) alone and with 100 webmail users
//!    beside it — each loads a page every second (the list, then a
//!    message, in turn), far busier than a person reading mail —
//!    alternately, `RUNS` times; the medians and the ratio. Twice: mail
//!    relayed to a counting sink (the users' folder unchanged, their
//!    lists cached), and mail delivered into the folder the users read
//!    (it changes with every message: lists selected afresh);
//! 3. (`queue N`) the console's queue pages with N messages queued
//!    (deferred to a closed port): the first page, the next 20 (each a
//!    seek after the last id shown), a filter every message matches, and a
//!    filter none matches (the page looks at its bound of 50,000 records).
//!
//!   cargo bench --bench web                 # 10,000 messages
//!   cargo bench --bench web -- 100000       # a folder of 100,000
//!   cargo bench --bench web -- queue 1000000
//!
//! Every loop is bounded in count and time.

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{CountingSink, Daemon, blast, body_of, median, percentile_ms, write_config};

const PASSWORD: &str = "bench secret";

/// A kept-alive HTTP/1.1 connection with a session cookie.
struct Http {
    r: BufReader<TcpStream>,
    w: TcpStream,
    cookie: String,
}

impl Http {
    fn connect(addr: SocketAddr) -> Http {
        let s = TcpStream::connect(addr).expect("connect web");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        Http {
            w: s.try_clone().expect("clone"),
            r: BufReader::new(s),
            cookie: String::new(),
        }
    }

    /// One request; the status, the Set-Cookie value, the body.
    fn request(&mut self, method: &str, path: &str, body: &str) -> (u16, Option<String>, Vec<u8>) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nCookie: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            self.cookie,
            body.len()
        );
        self.w.write_all(req.as_bytes()).expect("write");
        let mut status = 0;
        let mut length = 0usize;
        let mut cookie = None;
        let mut line = String::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("read head");
            let l = line.trim_end();
            if l.is_empty() {
                if status != 0 {
                    break;
                }
                continue;
            }
            if status == 0 {
                status = l
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
            } else if let Some((k, v)) = l.split_once(':') {
                let k = k.to_ascii_lowercase();
                if k == "content-length" {
                    length = v.trim().parse().unwrap_or(0);
                } else if k == "set-cookie" {
                    cookie = v.trim().split(';').next().map(str::to_string);
                }
            }
        }
        let mut body = vec![0; length];
        self.r.read_exact(&mut body).expect("read body");
        (status, cookie, body)
    }

    fn login(addr: SocketAddr) -> Http {
        let mut h = Http::connect(addr);
        let (code, cookie, _) = h.request(
            "POST",
            "/login",
            &format!("username=alice&password={}", PASSWORD.replace(' ', "+")),
        );
        assert_eq!(code, 303, "login");
        h.cookie = cookie.expect("session cookie");
        h
    }

    fn get(&mut self, path: &str) -> Vec<u8> {
        let (code, _, body) = self.request("GET", path, "");
        assert_eq!(code, 200, "GET {path}");
        body
    }
}

/// The number in the list page's "N messages".
fn count_on_page(page: &[u8]) -> usize {
    let text = String::from_utf8_lossy(page);
    text.split("<small>")
        .nth(1)
        .and_then(|r| r.split(" messages").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn timed(h: &mut Http, path: &str, n: usize) -> (f64, f64) {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        h.get(path);
        lat.push(t.elapsed().as_micros() as u64);
    }
    lat.sort_unstable();
    (percentile_ms(&lat, 0.5), percentile_ms(&lat, 0.99))
}

/// 100 users, each loading a page a second until `stop`; returns the
/// pages loaded.
fn users(
    addr: SocketAddr,
    n: usize,
    folder: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<usize>> {
    // Messages the users open: the first 500 of the folder (UIDs from 1).
    let spread = folder.clamp(1, 500);
    (0..n)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut h = Http::login(addr);
                let mut pages = 0;
                let end = Instant::now() + Duration::from_secs(300);
                // Spread the users over the second.
                std::thread::sleep(Duration::from_millis((i as u64 * 10) % 1000));
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let t = Instant::now();
                    if pages % 2 == 0 {
                        h.get("/?f=INBOX");
                    } else {
                        h.get(&format!(
                            "/read?f=INBOX&uid={}",
                            1 + (i * 37 + pages) % spread
                        ));
                    }
                    pages += 1;
                    if let Some(rest) = Duration::from_secs(1).checked_sub(t.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
                pages
            })
        })
        .collect()
}

/// The bench daemon's configuration in `dir`: the SMTP listener of
/// `write_config`, an http listener, alice with a password (an
/// administrator when `admin`), the bench's own sessions trusted, and
/// `extra` (outbound, queue) and `inbound` (more `[smtp.inbound]` keys).
fn web_config(
    dir: &std::path::Path,
    admin: bool,
    extra: &str,
    inbound: &str,
) -> std::path::PathBuf {
    let hash = petrel::auth::hash_password(PASSWORD).expect("hash");
    let config = write_config(
        dir,
        &dir.join("spool"),
        &format!(
            "[[listeners]]\nname = \"web\"\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\ntls = \"none\"\n{extra}"
        ),
    );
    let admin = if admin { "admin = true\n" } else { "" };
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace(
            "name = \"alice\"\naddresses",
            &format!("name = \"alice\"\n{admin}password = \"{hash}\"\naddresses"),
        )
        .replace(
            "max_connections_per_client = 1000",
            &format!(
                "max_connections_per_client = 1000\nrelay_from = [\"127.0.0.0/8\"]\n{inbound}"
            ),
        );
    std::fs::write(&config, text).expect("config");
    config
}

/// The console's queue pages with `n` messages queued.
fn queue_pages(n: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = web_config(
        tmp.path(),
        true,
        &format!(
            r#"[smtp.outbound]
tls = "off"
[[smtp.outbound.routes]]
domain = "dead.test"
host = "[127.0.0.1]:{dead}"
[queue]
retry_initial = "2h"
retry_max = "4h"
lifetime = "5d"
warn_after = "1d"
"#
        ),
        "",
    );
    let d = Daemon::start(&config);
    let t = Instant::now();
    let sent = blast(
        d.addrs["mx"],
        20,
        n,
        "x@dead.test",
        &body_of(1024),
        t + Duration::from_secs(1800),
    )
    .len();
    assert_eq!(sent, n, "the fill stopped at its time bound");
    let end = Instant::now() + Duration::from_secs(600);
    while d.queue_len() < n as u64 {
        assert!(Instant::now() < end, "the queue did not fill");
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "# console queue pages: {n} messages queued (filled in {:.0} s)",
        t.elapsed().as_secs_f64()
    );
    let mut h = Http::login(d.addrs["web"]);
    println!("| page | ms |");
    println!("| --- | --- |");
    let time = |h: &mut Http, path: &str| {
        let t = Instant::now();
        let body = h.get(path);
        (t.elapsed().as_secs_f64() * 1000.0, body)
    };
    let (ms, mut body) = time(&mut h, "/admin/queue");
    println!("| first page | {ms:.1} |");
    let mut seeks = Vec::new();
    for _ in 0..20 {
        let page = String::from_utf8_lossy(&body).into_owned();
        let Some(next) = page
            .split("rel=\"next\"")
            .next()
            .and_then(|p| p.rsplit("href=\"").next())
            .map(|p| {
                p.trim_end()
                    .trim_end_matches('"')
                    .replace("&#38;", "&")
                    .replace("&amp;", "&")
            })
        else {
            break;
        };
        let (ms, b) = time(&mut h, &next);
        seeks.push(ms);
        body = b;
    }
    let (med, lo, hi) = median(seeks);
    println!("| next page, 20 in turn: median (min-max) | {med:.1} ({lo:.1}-{hi:.1}) |");
    let (ms, _) = time(&mut h, "/admin/queue?state=deferred");
    println!("| state = deferred (every message) | {ms:.1} |");
    let (ms, _) = time(&mut h, "/admin/queue?domain=dead.test");
    println!("| destination dead.test (every message) | {ms:.1} |");
    let (ms, _) = time(&mut h, "/admin/queue?sender=nobody-sends-this");
    println!("| sender matching none (the page's bound of records looked at) | {ms:.1} |");
    let (ms, _) = time(&mut h, "/admin");
    println!("| overview (counts, rates) | {ms:.1} |");
    d.stop();
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("queue") {
        let n = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1_000_000);
        return queue_pages(n);
    }
    let messages: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(|a| a.parse().expect("a message count"))
        .unwrap_or(10_000);
    let requests: usize = std::env::var("REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let sink = CountingSink::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = web_config(
        tmp.path(),
        false,
        &format!(
            "[smtp.outbound]\nsmarthost = \"[127.0.0.1]:{}\"\ntls = \"off\"\n",
            sink.addr.port()
        ),
        "max_connections = 5000",
    );
    let d = Daemon::start(&config);
    let mx = d.addrs["mx"];
    let web = d.addrs["web"];

    println!(
        "# webmail cost: petrel release build, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let t = Instant::now();
    let body = body_of(4096);
    blast(
        mx,
        20,
        messages,
        "alice@example.test",
        &body,
        Instant::now() + Duration::from_secs(900),
    );
    let mut h = Http::login(web);
    let end = Instant::now() + Duration::from_secs(300);
    while count_on_page(&h.get("/?f=INBOX")) < messages {
        assert!(Instant::now() < end, "the folder did not fill");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "folder of {messages} messages filled over SMTP in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let skip_pages = std::env::var_os("SKIP_PAGES").is_some();
    if !skip_pages {
        pages(&mut h, messages, requests);
    }
    intake(&d, &sink, &body, runs, messages);
    d.stop();
}

/// Part 1: the pages' times.
fn pages(h: &mut Http, messages: usize, requests: usize) {
    println!();
    println!("| page ({messages} messages) | p50 ms | p99 ms |");
    println!("| --- | --- | --- |");
    let deep = messages.div_ceil(50) / 2;
    // Cold pages: a flag change before each request moves the folder's
    // MODSEQ, so no list is served from the cache of the last one.
    let page = String::from_utf8_lossy(&h.get("/?f=INBOX")).into_owned();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf")
        .to_string();
    for (label, path) in [
        ("list, newest first, cold", "/?f=INBOX".to_string()),
        (
            "list, sorted by subject, cold",
            "/?f=INBOX&sort=subject&order=asc".to_string(),
        ),
        (
            "search subject (none matches), cold",
            "/?f=INBOX&q=nothing-like-this&in=subject".to_string(),
        ),
    ] {
        let n = requests.min(100);
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let op = if i % 2 == 0 { "flag" } else { "unflag" };
            let (code, _, _) = h.request(
                "POST",
                "/act",
                &format!("csrf={csrf}&f=INBOX&uid=3&op={op}"),
            );
            assert_eq!(code, 303, "flag change");
            let t = Instant::now();
            h.get(&path);
            lat.push(t.elapsed().as_micros() as u64);
        }
        lat.sort_unstable();
        println!(
            "| {label} | {:.2} | {:.2} |",
            percentile_ms(&lat, 0.5),
            percentile_ms(&lat, 0.99)
        );
    }
    for (label, path) in [
        ("list, newest first (page 1), warm", "/?f=INBOX".to_string()),
        ("list, a deep page", format!("/?f=INBOX&page={deep}")),
        (
            "list, sorted by subject",
            "/?f=INBOX&sort=subject&order=asc".to_string(),
        ),
        ("list, sorted by size", "/?f=INBOX&sort=size".to_string()),
        (
            "search sender (every message matches)",
            "/?f=INBOX&q=load&in=from".to_string(),
        ),
        (
            "search subject (none matches)",
            "/?f=INBOX&q=nothing-like-this&in=subject".to_string(),
        ),
        ("read one message", "/read?f=INBOX&uid=7".to_string()),
    ] {
        let n = if label.starts_with("search") {
            requests.min(50)
        } else {
            requests
        };
        let (p50, p99) = timed(h, &path, n);
        println!("| {label} | {p50:.2} | {p99:.2} |");
    }
}

/// Part 2: SMTP intake with and without 100 webmail users.
fn intake(d: &Daemon, sink: &CountingSink, body: &[u8], runs: usize, folder: usize) {
    let (mx, web) = (d.addrs["mx"], d.addrs["web"]);
    let per_run: usize = std::env::var("INTAKE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let relayed = Arc::new(AtomicUsize::new(0));
    // Relayed mail leaves the users' folder alone (their lists stay
    // cached); local delivery into that very folder changes it with every
    // message, so nearly every list is selected afresh.
    for (what, rcpt) in [
        ("relayed to a sink", "someone@remote.test"),
        (
            "delivered into the folder the users read",
            "alice@example.test",
        ),
    ] {
        println!();
        println!(
            "SMTP intake, 20 sessions x 4 KiB {what}, {per_run} messages a run; {runs} runs each, alternating:"
        );
        let mut alone = Vec::new();
        let mut with = Vec::new();
        let mut pages_per_s = Vec::new();
        for _ in 0..runs {
            for with_users in [false, true] {
                let stop = Arc::new(AtomicBool::new(false));
                let handles = if with_users {
                    let hs = users(web, 100, folder, stop.clone());
                    std::thread::sleep(Duration::from_secs(2));
                    hs
                } else {
                    Vec::new()
                };
                let n = per_run;
                let t = Instant::now();
                blast(
                    mx,
                    20,
                    n,
                    rcpt,
                    body,
                    Instant::now() + Duration::from_secs(300),
                );
                let secs = t.elapsed().as_secs_f64();
                stop.store(true, Ordering::Relaxed);
                let pages: usize = handles.into_iter().map(|h| h.join().expect("user")).sum();
                if rcpt.ends_with("remote.test") {
                    relayed.fetch_add(n, Ordering::Relaxed);
                }
                if with_users {
                    with.push(n as f64 / secs);
                    pages_per_s.push(pages as f64 / (secs + 2.0));
                } else {
                    alone.push(n as f64 / secs);
                }
            }
        }
        let (a, alo, ahi) = median(alone);
        let (w, wlo, whi) = median(with);
        let (p, _, _) = median(pages_per_s);
        println!("| intake | msg/s median (min-max) |");
        println!("| --- | --- |");
        println!("| alone | {a:.0} ({alo:.0}-{ahi:.0}) |");
        println!("| with 100 webmail users ({p:.0} pages/s) | {w:.0} ({wlo:.0}-{whi:.0}) |");
        println!("with users / alone: {:.3}", w / a);
    }
    sink.wait_for(
        relayed.load(Ordering::Relaxed),
        Instant::now() + Duration::from_secs(300),
    );
}
