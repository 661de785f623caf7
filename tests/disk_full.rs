//! A full disk under load, on a real small file system (a tmpfs the test
//! mounts): every session gets `452 4.3.1` (or `451 4.3.0`) at once,
//! nothing is half-stored, service resumes by itself when space returns,
//! and no acknowledged message is lost after a SIGKILL and a restart.

mod common;

use std::collections::HashMap;
use std::hash::Hasher;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestServer, base_config, standard_dns};

/// A tmpfs mounted for the test, unmounted on drop (after the daemon,
/// which is declared later and so dropped first).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`); `None` when this
    /// machine does not let the test mount one.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |args: &[&str]| {
            std::process::Command::new("umount")
                .args(args)
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(&[]) {
            umount(&["-l"]);
        }
    }
}

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

/// One SMTP connection of a load client.
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let w = TcpStream::connect(addr)?;
        w.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Conn {
            r: BufReader::new(w.try_clone()?),
            w,
        };
        if c.reply().0 != 220 || c.cmd("EHLO load.test").0 != 250 {
            return Err(std::io::Error::other("no greeting"));
        }
        Ok(c)
    }

    fn reply(&mut self) -> (u16, String) {
        read_reply(&mut self.r)
    }

    fn cmd(&mut self, line: &str) -> (u16, String) {
        if self.w.write_all(format!("{line}\r\n").as_bytes()).is_err() {
            return (0, String::new());
        }
        self.reply()
    }

    /// Sends one message; the reply to DATA when it was refused, else the
    /// reply to the end of data.
    fn send(&mut self, message: &[u8]) -> (u16, String) {
        for c in [
            "MAIL FROM:<load@partner.test>",
            "RCPT TO:<bob@example.test>",
        ] {
            let r = self.cmd(c);
            if r.0 != 250 {
                return r;
            }
        }
        let r = self.cmd("DATA");
        if r.0 != 354 {
            return r;
        }
        if self.w.write_all(message).is_err() || self.w.write_all(b".\r\n").is_err() {
            return (0, String::new());
        }
        self.reply()
    }
}

/// A message of about `size` octets with a unique Message-ID; no line
/// starts with a dot.
fn message(tag: &str, size: usize) -> Vec<u8> {
    let mut m = format!("Subject: {tag}\r\nMessage-ID: <{tag}@load.test>\r\n\r\n").into_bytes();
    let mut x = tag
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    while m.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for i in 0..76 {
            m.push(b'A' + ((x >> (i % 60)) as u8 % 26));
        }
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// What the load clients saw.
#[derive(Default)]
struct Seen {
    /// Message-ID → (length, hash) of every message acknowledged with 250.
    acked: HashMap<String, (usize, u64)>,
    /// Refusals: when and what code.
    refused: Vec<(Instant, u16)>,
    /// Replies that are neither 250 nor a storage refusal.
    other: Vec<String>,
}

fn load_client(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let mut conn = None;
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(addr) {
                Ok(c) => conn.insert(c),
                // The daemon is gone (killed): the test is ending.
                Err(_) => return,
            },
        };
        seq += 1;
        let tag = format!("load-{id}-{seq}");
        let m = message(&tag, 48 * 1024 + seq * 97 % 30_000);
        let r = c.send(&m);
        let mut s = seen.lock().expect("seen");
        match r.0 {
            250 => {
                s.acked
                    .insert(format!("<{tag}@load.test>"), (m.len(), hash_of(&m)));
            }
            452 | 451 => {
                s.refused.push((Instant::now(), r.0));
                assert!(r.1.contains("4.3.1") || r.1.contains("4.3.0"), "{r:?}");
                drop(s);
                let _ = c.cmd("RSET");
                // A refused client backs off a little, as real ones do.
                std::thread::sleep(Duration::from_millis(50));
            }
            0 => {
                // Connection lost (the kill): nothing acknowledged.
                conn = None;
            }
            _ => s.other.push(format!("{tag}: {r:?}")),
        }
    }
}

/// A new session's answer to a small message, and how long it took.
fn probe(addr: SocketAddr, n: usize) -> ((u16, String), Duration) {
    let t = Instant::now();
    let r = match Conn::open(addr) {
        Ok(mut c) => c.send(&message(&format!("probe-{n}"), 500)),
        Err(e) => (0, e.to_string()),
    };
    (r, t.elapsed())
}

/// Every content chunk of the stopped daemon's queue belongs to a record.
fn orphaned_chunks(spool: &Path) -> usize {
    let db = common::open_spool_queue(spool);
    let tree = db.open_tree("queue").expect("tree");
    tree.scan_prefix(b"b")
        .filter_map(|kv| kv.ok())
        .filter(|(k, _)| {
            let mut m = vec![b'm'];
            m.extend_from_slice(&k[1..9]);
            !tree.contains_key(m).expect("read")
        })
        .count()
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn a_full_disk_refuses_at_once_loses_nothing_and_recovers_by_itself() {
    let Some(fs) = Tmpfs::mount("192m") else {
        return;
    };
    let spool: PathBuf = fs.path().join("spool");
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = format!(
        "{}\n[smtp.inbound]\nmax_connections_per_client = 100\n",
        base_config(&spool, standard_dns(), common::free_port(), true, true)
    );
    let mut server = TestServer::start_in(dir.clone(), &cfg);
    let addr = server.mx();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || load_client(addr, i, stop, seen))
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || seen
            .lock()
            .expect("seen")
            .acked
            .len()
            >= 40),
        "no load went through"
    );

    // Messages to a peer that refuses connections: their retries (every
    // second or two) make the spool write while the disk is full.
    {
        let mut c = Conn::open(addr).expect("connect");
        for i in 0..3 {
            let m = message(&format!("deferred-{i}"), 2000);
            for line in [
                "MAIL FROM:<load@partner.test>",
                "RCPT TO:<team@example.test>",
                "DATA",
            ] {
                assert!(matches!(c.cmd(line).0, 250 | 354), "{line}");
            }
            c.w.write_all(&m).expect("write");
            c.w.write_all(b".\r\n").expect("write");
            assert_eq!(c.reply().0, 250);
        }
    }

    // Fill the file system to the last block while the load runs.
    let filler = fs.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let full_at = Instant::now();
    // A new session is refused at once, before it sends its message.
    let (r, took) = probe(addr, 0);
    assert!(matches!(r.0, 452 | 451), "a session on a full spool: {r:?}");
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
    // And so are the sessions under load.
    assert!(
        wait_until(Duration::from_secs(30), || {
            seen.lock()
                .expect("seen")
                .refused
                .iter()
                .filter(|(t, _)| *t > full_at)
                .count()
                >= 8
        }),
        "the load was not refused"
    );

    // The deferred messages' retries go on writing their records: sled
    // mostly reuses the space of delivered messages for them, so whether
    // it meets the full disk itself depends on its log (the store's unit
    // test `a_database_that_met_a_full_disk_is_reopened_when_space_returns`
    // forces that case).
    // Space comes back: service resumes without a restart.
    std::fs::remove_file(&filler).expect("remove filler");
    let mut n = 0;
    let resumed = wait_until(Duration::from_secs(30), || {
        n += 1;
        probe(addr, n).0.0 == 250
    });
    assert!(
        resumed,
        "still refused after space returned: {:?}\n{}",
        probe(addr, n + 1).0,
        server.log()
    );
    let acked_now = seen.lock().expect("seen").acked.len();
    assert!(
        wait_until(Duration::from_secs(60), || seen
            .lock()
            .expect("seen")
            .acked
            .len()
            >= acked_now + 40),
        "the load did not resume"
    );

    // Crash under load, restart: every acknowledged message arrives whole.
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("load client");
    }
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    assert!(
        seen.other.is_empty(),
        "unexpected replies: {:?}",
        seen.other
    );
    let server = TestServer::start_in(dir.clone(), &cfg);
    let mut by_id: HashMap<String, u64> = HashMap::new();
    let delivered_all = wait_until(Duration::from_secs(120), || {
        by_id = server
            .mailbox("bob")
            .iter()
            .filter_map(|m| Some((m["message_id"].as_str()?.to_string(), m["uid"].as_u64()?)))
            .collect();
        seen.acked.keys().all(|id| by_id.contains_key(id))
    });
    let missing: Vec<_> = seen
        .acked
        .keys()
        .filter(|id| !by_id.contains_key(*id))
        .collect();
    assert!(
        delivered_all,
        "{} of {} acknowledged messages lost: {missing:?}",
        missing.len(),
        seen.acked.len()
    );
    for (id, (len, hash)) in &seen.acked {
        let stored = server.mailbox_message("bob", by_id[id]);
        let at = stored
            .windows(9)
            .position(|w| w == b"Subject: ")
            .expect("client headers");
        let client = &stored[at..];
        assert_eq!(
            (client.len(), hash_of(client)),
            (*len, *hash),
            "{id} is not whole"
        );
    }
    println!(
        "{} acknowledged, {} refused (452/451), all delivered whole after the kill",
        seen.acked.len(),
        seen.refused.len()
    );
    drop(server);
    assert_eq!(orphaned_chunks(&spool), 0, "content without a record");
}
