//! IMAP load driver for `benches/imap_compare.py`, which starts petrel and
//! Dovecot and calls this against each in turn. It speaks plain IMAP on
//! loopback (LOGIN, LITERAL+, UIDPLUS, QRESYNC — all both servers offer)
//! with blocking sockets, one thread per client, and prints one JSON line.
//!
//! Modes (`cargo bench --bench imap_load -- MODE …`):
//!   fill  PORT PASSWORD USERS COUNT SIZE   COUNT messages into the INBOX of
//!                                          each of u0…u(USERS-1), pipelined
//!   mixed PORT PASSWORD CLIENTS SECONDS [FIRST_USER]
//!         client i works as user u(FIRST_USER + i) (FIRST_USER: 0 unless
//!         given; benches/scale_out.py gives each node's clients their own):
//!         SELECT, FETCH 1:* FLAGS, FETCH ENVELOPE, FETCH BODY.PEEK[], STORE,
//!         APPEND, UID STORE \Deleted + UID EXPUNGE of what it appended,
//!         IDLE + DONE, again and again until SECONDS have passed
//!   big   PORT PASSWORD USER COUNT         fills USER's INBOX to COUNT, then
//!         times SELECT, UID FETCH 1:* (FLAGS), header SEARCHes, and a
//!         QRESYNC SELECT after 100 flag changes made by another session
//! Every loop is bounded by its count or its time.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
    n: u64,
}

impl Imap {
    fn connect(port: u16) -> Imap {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        let mut i = Imap {
            r: BufReader::with_capacity(64 * 1024, s.try_clone().expect("clone")),
            w: s,
            n: 0,
        };
        let greeting = i.line();
        assert!(greeting.starts_with(b"* OK"), "greeting");
        i
    }

    fn login(port: u16, user: &str, password: &str) -> Imap {
        let mut i = Imap::connect(port);
        i.ok(&format!("LOGIN {user} \"{password}\""));
        i
    }

    /// One response line, literals inlined.
    fn line(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let n = self.r.read_until(b'\n', &mut out).expect("read");
            assert!(n > 0, "server closed the connection");
            let l = &out[start..];
            let l = l.strip_suffix(b"\r\n").unwrap_or(l);
            if let Some(size) = literal(l) {
                let at = out.len();
                out.resize(at + size, 0);
                std::io::Read::read_exact(&mut self.r, &mut out[at..]).expect("literal");
            } else {
                let keep = start + l.len();
                out.truncate(keep);
                return out;
            }
        }
    }

    fn tag(&mut self) -> String {
        self.n += 1;
        format!("t{}", self.n)
    }

    fn send(&mut self, b: &[u8]) {
        self.w.write_all(b).expect("write");
    }

    fn until(&mut self, tag: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            if l.starts_with(tag.as_bytes()) && l.get(tag.len()) == Some(&b' ') {
                return (lines, l);
            }
            lines.push(l);
        }
    }

    fn cmd(&mut self, text: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
        let t = self.tag();
        self.send(format!("{t} {text}\r\n").as_bytes());
        self.until(&t)
    }

    fn ok(&mut self, text: &str) -> Vec<Vec<u8>> {
        let (lines, done) = self.cmd(text);
        let status = done.split(|&b| b == b' ').nth(1).unwrap_or_default();
        assert_eq!(status, b"OK", "{text}: {}", String::from_utf8_lossy(&done));
        lines
    }

    /// Sends APPENDs with non-synchronising literals, `window` at a time.
    fn append_many(
        &mut self,
        folder: &str,
        messages: impl Iterator<Item = Vec<u8>>,
        window: usize,
    ) {
        let mut pending = Vec::new();
        let mut batch = Vec::new();
        let flush = |me: &mut Imap, batch: &mut Vec<u8>, pending: &mut Vec<String>| {
            me.send(batch);
            batch.clear();
            for t in pending.drain(..) {
                let (_, done) = me.until(&t);
                assert!(
                    done.windows(4).any(|w| w == b" OK "),
                    "APPEND: {}",
                    String::from_utf8_lossy(&done)
                );
            }
        };
        for m in messages {
            let t = self.tag();
            batch.extend_from_slice(format!("{t} APPEND {folder} {{{}+}}\r\n", m.len()).as_bytes());
            batch.extend_from_slice(&m);
            batch.extend_from_slice(b"\r\n");
            pending.push(t);
            if pending.len() >= window {
                flush(self, &mut batch, &mut pending);
            }
        }
        flush(self, &mut batch, &mut pending);
    }
}

fn literal(line: &[u8]) -> Option<usize> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&body[open + 1..]).ok()?.parse().ok()
}

fn number_before(lines: &[Vec<u8>], word: &[u8]) -> Option<u64> {
    lines.iter().find_map(|l| {
        let parts: Vec<&[u8]> = l.split(|&b| b == b' ').collect();
        (parts.len() >= 3 && parts[2] == word)
            .then(|| std::str::from_utf8(parts[1]).ok()?.parse().ok())
            .flatten()
    })
}

fn number_after(line: &[u8], word: &str) -> Option<u64> {
    let s = String::from_utf8_lossy(line);
    let at = s.find(word)? + word.len();
    let digits: String = s[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The UID of `[APPENDUID validity uid]` (RFC 4315).
fn appended_uid(line: &[u8]) -> Option<u64> {
    let s = String::from_utf8_lossy(line);
    let rest = &s[s.find("APPENDUID")?..];
    rest.split([' ', ']']).nth(2)?.parse().ok()
}

/// A plain-text message of about `size` octets.
fn message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Sender {s} <sender{s}@partner.test>\r\nTo: user@example.test\r\n\
         Subject: message {i} about topic {t}\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\
         Message-ID: <{i}.bench@partner.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n",
        s = i % 50,
        t = i % 97
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog, and again, and again.\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn fill(port: u16, password: &str, users: usize, count: usize, size: usize) {
    let start = Instant::now();
    let threads: Vec<_> = (0..users)
        .map(|u| {
            let password = password.to_string();
            std::thread::spawn(move || {
                let mut c = Imap::login(port, &format!("u{u}"), &password);
                c.append_many("INBOX", (0..count).map(|i| message(i, size)), 50);
                c.ok("LOGOUT");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("fill thread");
    }
    println!(
        "{{\"mode\":\"fill\",\"messages\":{},\"seconds\":{:.3}}}",
        users * count,
        start.elapsed().as_secs_f64()
    );
}

fn mixed(port: u16, password: &str, clients: usize, seconds: u64, first_user: usize) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let threads: Vec<_> = (first_user..first_user + clients)
        .map(|u| {
            let password = password.to_string();
            std::thread::spawn(move || {
                let mut lat: Vec<u32> = Vec::with_capacity(100_000);
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((u as u64 + 1) * 0x2545_f491));
                let mut c = Imap::login(port, &format!("u{u}"), &password);
                let appended = message(1_000_000 + u, 4096);
                let timed = |c: &mut Imap, lat: &mut Vec<u32>, text: &str| {
                    let t0 = Instant::now();
                    let lines = c.ok(text);
                    lat.push(t0.elapsed().as_micros() as u32);
                    lines
                };
                while Instant::now() < deadline {
                    let sel = timed(&mut c, &mut lat, "SELECT INBOX");
                    let n = number_before(&sel, b"EXISTS").unwrap_or(1);
                    timed(&mut c, &mut lat, "FETCH 1:* (FLAGS)");
                    let k = 1 + rng.below(n);
                    timed(&mut c, &mut lat, &format!("FETCH {k} (ENVELOPE)"));
                    timed(&mut c, &mut lat, &format!("FETCH {k} (BODY.PEEK[])"));
                    timed(
                        &mut c,
                        &mut lat,
                        &format!("STORE {k} +FLAGS.SILENT (\\Seen)"),
                    );
                    // APPEND, then take it away again: the folder keeps its size.
                    let t0 = Instant::now();
                    let t = c.tag();
                    let mut a =
                        format!("{t} APPEND INBOX {{{}+}}\r\n", appended.len()).into_bytes();
                    a.extend_from_slice(&appended);
                    a.extend_from_slice(b"\r\n");
                    c.send(&a);
                    let (_, done) = c.until(&t);
                    lat.push(t0.elapsed().as_micros() as u32);
                    let uid = appended_uid(&done).expect("APPENDUID");
                    timed(
                        &mut c,
                        &mut lat,
                        &format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)"),
                    );
                    timed(&mut c, &mut lat, &format!("UID EXPUNGE {uid}"));
                    let t0 = Instant::now();
                    let t = c.tag();
                    c.send(format!("{t} IDLE\r\n").as_bytes());
                    while !c.line().starts_with(b"+") {}
                    c.send(b"DONE\r\n");
                    c.until(&t);
                    lat.push(t0.elapsed().as_micros() as u32);
                }
                c.ok("LOGOUT");
                lat
            })
        })
        .collect();
    let mut all: Vec<u32> = Vec::new();
    for t in threads {
        all.extend(t.join().expect("client thread"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    println!(
        "{{\"mode\":\"mixed\",\"clients\":{clients},\"ops\":{},\"seconds\":{elapsed:.3},\"ops_per_s\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
}

fn big(port: u16, password: &str, user: &str, count: usize) {
    let mut c = Imap::login(port, user, password);
    let have =
        number_after(&c.ok("STATUS INBOX (MESSAGES)").concat(), "MESSAGES").unwrap_or(0) as usize;
    let t0 = Instant::now();
    if have < count {
        c.append_many("INBOX", (have..count).map(|i| message(i, 1024)), 200);
    }
    let fill_s = t0.elapsed().as_secs_f64();
    let timed = |c: &mut Imap, text: &str| {
        let t0 = Instant::now();
        let lines = c.ok(text);
        (t0.elapsed().as_secs_f64() * 1000.0, lines)
    };
    // The first look after the fill (Dovecot builds its index here when
    // its Maildir was filled behind its back), then the timed ones.
    let (cold_ms, _) = timed(&mut c, "EXAMINE INBOX");
    c.ok("UNSELECT");
    c.ok("ENABLE QRESYNC");
    let (select_ms, sel) = timed(&mut c, "SELECT INBOX");
    let exists = number_before(&sel, b"EXISTS").unwrap_or(0);
    let uidvalidity = number_after(&sel.concat(), "UIDVALIDITY").expect("UIDVALIDITY");
    let modseq = number_after(&sel.concat(), "HIGHESTMODSEQ").expect("HIGHESTMODSEQ");
    let (flags_ms, flags) = timed(&mut c, "UID FETCH 1:* (FLAGS)");
    let (subject_ms, hits) = timed(
        &mut c,
        &format!("UID SEARCH SUBJECT \"message {} about\"", count / 2),
    );
    let (from_ms, from_hits) = timed(&mut c, "UID SEARCH FROM \"sender7@partner.test\"");
    let hit_count = |lines: &[Vec<u8>]| {
        lines
            .iter()
            .find(|l| l.starts_with(b"* SEARCH"))
            .map_or(0, |l| l.split(|&b| b == b' ').count() - 2)
    };
    c.ok("UNSELECT");
    // 100 changes from another session (a phone), then resynchronise.
    let mut other = Imap::login(port, user, password);
    other.ok("SELECT INBOX");
    let mut rng = Rng(42);
    let mut changed = std::collections::BTreeSet::new();
    while changed.len() < 100 {
        changed.insert(1 + rng.below(exists));
    }
    for k in &changed {
        other.ok(&format!("STORE {k} +FLAGS.SILENT (\\Flagged)"));
    }
    other.ok("LOGOUT");
    let (qresync_ms, resync) = timed(
        &mut c,
        &format!("SELECT INBOX (QRESYNC ({uidvalidity} {modseq}))"),
    );
    let fetched = resync
        .iter()
        .filter(|l| l.windows(7).any(|w| w == b" FETCH "))
        .count();
    // Leave the folder as it was for the next run.
    c.ok("STORE 1:* -FLAGS.SILENT (\\Flagged)");
    c.ok("LOGOUT");
    println!(
        "{{\"mode\":\"big\",\"messages\":{exists},\"fill_s\":{fill_s:.1},\"cold_select_ms\":{cold_ms:.1},\"select_ms\":{select_ms:.1},\
         \"fetch_flags_ms\":{flags_ms:.1},\"fetch_flags_lines\":{},\"search_subject_ms\":{subject_ms:.1},\
         \"search_subject_hits\":{},\"search_from_ms\":{from_ms:.1},\"search_from_hits\":{},\
         \"qresync_ms\":{qresync_ms:.1},\"qresync_fetches\":{fetched}}}",
        flags.len(),
        hit_count(&hits),
        hit_count(&from_hits)
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_default() };
    let num = |i: usize| -> usize {
        arg(i)
            .parse()
            .unwrap_or_else(|_| panic!("argument {i}: a number"))
    };
    match arg(0) {
        "fill" => fill(num(1) as u16, arg(2), num(3), num(4), num(5)),
        "mixed" => mixed(
            num(1) as u16,
            arg(2),
            num(3),
            num(4) as u64,
            if arg(5).is_empty() { 0 } else { num(5) },
        ),
        "big" => big(num(1) as u16, arg(2), arg(3), num(4)),
        _ => eprintln!("imap_load is driven by benches/imap_compare.py (see its header)"),
    }
}
