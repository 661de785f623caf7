//! Several petrel nodes on one PostgreSQL (started here: initdb in a
//! temporary directory): any node serves any user — IMAP on one node sees
//! mail delivered on another, IDLE wakes across nodes, POP3's lock holds
//! across them; the address book lives in the database and every node
//! picks up `petrel user` / `petrel alias` changes without a reload;
//! concurrent deliveries and APPENDs on all nodes lose nothing; a node
//! SIGKILLed under load and the database restarted under load lose no
//! acknowledged mail; `petrel drain` delivers a dead node's spool.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{get, login};
use common::imap::Imap;
use common::postgres::PgServer;
use common::sink::{Sink, SinkOptions};
use common::{Smtp, TestServer, base_config, cli_with, free_port, standard_dns};

const PASSWORD: &str = "cluster secret";

/// A node's configuration: the shared store and address book, IMAP and
/// POP3 listeners (plain text allowed on loopback), remote mail to
/// `outbound_port`.
fn node_config(dir: &std::path::Path, url: &str, outbound_port: u16) -> String {
    let hash = petrel::auth::hash_password(PASSWORD).expect("hash");
    let base = base_config(
        &dir.join("spool"),
        standard_dns(),
        outbound_port,
        true,
        true,
    )
    .replace(
        "addresses = [\"alice@example.test\", \"a.smith@example.org\"]",
        &format!(
            "password = \"{hash}\"\naddresses = [\"alice@example.test\", \"a.smith@example.org\"]"
        ),
    );
    format!(
        "{base}\n[[listeners]]\nname = \"imap\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"pop3\"\nprotocol = \"pop3\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"web\"\nprotocol = \"http\"\nbind = \"127.0.0.1:0\"\n\n\
         [imap]\nallow_plaintext_auth = true\n[pop3]\nallow_plaintext_auth = true\n\
         [store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 6\n\
         [directory]\nbackend = \"postgres\"\n"
    )
}

struct Node {
    server: TestServer,
}

impl Node {
    fn start(url: &str, outbound_port: u16) -> Node {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let cfg = node_config(dir.path(), url, outbound_port);
        Node {
            server: TestServer::start_in(dir, &cfg),
        }
    }

    /// Starts again on the same spool (after a kill).
    fn restart(&mut self) {
        let dir = self.server.dir.clone();
        let cfg = std::fs::read_to_string(&self.server.config_path).expect("config");
        self.server = TestServer::start_in(dir, &cfg);
    }

    fn imap(&self, user: &str) -> Imap {
        Imap::login(self.server.addr("imap"), user, PASSWORD)
    }

    fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        cli_with(&self.server.config_path, args, stdin)
    }
}

fn ok(r: &[String]) -> bool {
    r.last().is_some_and(|l| l.split(' ').nth(1) == Some("OK"))
}

fn send(node: &Node, to: &str, subject: &str) -> (u16, String) {
    let mut s = Smtp::ready(node.server.mx());
    s.send_mail(
        "sender@partner.test",
        &[to],
        &format!("From: sender@partner.test\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@partner.test>\r\n\r\nbody {subject}\r\n"),
    )
}

/// The subjects in a folder, by UID, read over IMAP.
fn subjects(imap: &mut Imap, folder: &str) -> BTreeMap<u32, String> {
    let r = imap.cmd("e", &format!("EXAMINE {folder}"));
    assert!(ok(&r), "EXAMINE: {r:?}");
    let r = imap.cmd("f", "UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
    assert!(ok(&r), "FETCH: {r:?}");
    let mut out = BTreeMap::new();
    let mut uid = None;
    for l in &r {
        if let Some(at) = l.find("UID ") {
            uid = l[at + 4..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok());
        }
        if let Some(s) = l.strip_prefix("Subject: ")
            && let Some(u) = uid.take()
        {
            let prev = out.insert(u, s.trim().to_string());
            assert!(prev.is_none(), "UID {u} twice");
        }
    }
    out
}

/// Waits until `f` holds, polling.
fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// IMAP on node B reads what SMTP delivered on node A; an IDLE on B
/// wakes within a second of a delivery and of a flag change on A; POP3's
/// lock taken on A keeps B's session out until A's session ends.
#[test]
fn any_node_serves_any_user() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.database("petrel");
    let a = Node::start(&url, free_port());
    let b = Node::start(&url, free_port());
    assert_eq!(send(&a, "alice@example.test", "first").0, 250);
    let mut on_b = b.imap("alice");
    eventually(Duration::from_secs(10), "B sees A's delivery", || {
        subjects(&mut on_b, "INBOX").values().any(|s| s == "first")
    });

    // The webmail on B lists it too.
    let web = b.server.addr("web").port();
    let browser = login(web, "alice", PASSWORD);
    let (code, page) = get(web, &browser.cookie, "/?f=INBOX");
    assert_eq!(code, 200);
    assert!(page.contains("first"), "B's webmail lists A's delivery");

    // IDLE on B; a delivery on A.
    let r = on_b.cmd("s", "SELECT INBOX");
    assert!(ok(&r), "{r:?}");
    on_b.send(b"i IDLE\r\n");
    assert!(on_b.line().starts_with("+ "), "IDLE continues");
    let sent = Instant::now();
    assert_eq!(send(&a, "alice@example.test", "second").0, 250);
    let acked = sent.elapsed();
    loop {
        let l = on_b.line();
        assert!(!l.is_empty(), "closed");
        if l.contains(" EXISTS") {
            break;
        }
    }
    let woke = sent.elapsed();
    eprintln!("IDLE on B woke {woke:?} after A's DATA (250 after {acked:?})");
    assert!(
        woke < acked + Duration::from_secs(1),
        "IDLE woke {woke:?} after the delivery began, 250 after {acked:?}"
    );

    // A flag change on A.
    let mut on_a = a.imap("alice");
    assert!(ok(&on_a.cmd("s", "SELECT INBOX")));
    let flagged = Instant::now();
    let r = on_a.cmd("t", "UID STORE 1 +FLAGS (\\Flagged)");
    assert!(ok(&r), "{r:?}");
    let stored = flagged.elapsed();
    loop {
        let l = on_b.line();
        assert!(!l.is_empty(), "closed");
        if l.contains("FETCH") && l.contains("\\Flagged") {
            break;
        }
    }
    let heard = flagged.elapsed();
    eprintln!("IDLE on B heard A's STORE after {heard:?} (STORE done in {stored:?})");
    assert!(
        heard < stored + Duration::from_secs(1),
        "flag heard after {heard:?}"
    );
    on_b.send(b"DONE\r\n");
    assert!(ok(&on_b.until("i")));

    // POP3's lock across nodes.
    let pop = |n: &Node| {
        let s = TcpStream::connect(n.server.addr("pop3")).expect("pop3");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        r.read_line(&mut line).expect("greeting");
        assert!(line.starts_with("+OK"), "{line}");
        (s, r)
    };
    let say = |c: &mut (TcpStream, BufReader<TcpStream>), l: &str| {
        c.0.write_all(format!("{l}\r\n").as_bytes()).expect("write");
        let mut line = String::new();
        c.1.read_line(&mut line).expect("read");
        line
    };
    let mut pa = pop(&a);
    assert!(say(&mut pa, "USER alice").starts_with("+OK"));
    let r = say(&mut pa, &format!("PASS {PASSWORD}"));
    assert!(r.starts_with("+OK"), "{r}");
    let mut pb = pop(&b);
    assert!(say(&mut pb, "USER alice").starts_with("+OK"));
    let r = say(&mut pb, &format!("PASS {PASSWORD}"));
    assert!(r.starts_with("-ERR [IN-USE]"), "B is kept out: {r}");
    assert!(say(&mut pa, "QUIT").starts_with("+OK"));
    eventually(
        Duration::from_secs(5),
        "B's POP3 gets in after A's QUIT",
        || {
            let mut pb = pop(&b);
            say(&mut pb, "USER alice");
            say(&mut pb, &format!("PASS {PASSWORD}")).starts_with("+OK")
        },
    );
}

/// `petrel user` and `petrel alias` change the book in the database; both
/// nodes follow within seconds, without a reload; a change that would
/// break the directory is refused and changes nothing.
#[test]
fn the_address_book_lives_in_the_database() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.database("petrel");
    let a = Node::start(&url, free_port());
    let b = Node::start(&url, free_port());
    let rcpt = |n: &Node, to: &str| {
        let mut s = Smtp::ready(n.server.mx());
        assert_eq!(s.cmd("MAIL FROM:<x@partner.test>").0, 250);
        s.cmd(&format!("RCPT TO:<{to}>")).0
    };
    assert_eq!(rcpt(&b, "erin@example.test"), 550, "no erin yet");

    let out = a.cli(
        &["user", "add", "erin", "--address", "erin@example.test"],
        Some(b"first password\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = Instant::now();
    eventually(Duration::from_secs(5), "B accepts erin", || {
        rcpt(&b, "erin@example.test") == 250
    });
    eprintln!(
        "node B knew erin {:?} after petrel user add",
        added.elapsed()
    );
    eventually(Duration::from_secs(5), "A accepts erin", || {
        rcpt(&a, "erin@example.test") == 250
    });
    let mut c = Imap::connect(b.server.addr("imap"));
    assert!(
        ok(&c.cmd("l", "LOGIN erin \"first password\"")),
        "erin logs in on B"
    );

    // An alias over both.
    let out = a.cli(
        &[
            "alias",
            "add",
            "staff@example.test",
            "alice@example.test",
            "erin@example.test",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(5), "B knows the alias", || {
        rcpt(&b, "staff@example.test") == 250
    });
    assert_eq!(send(&b, "staff@example.test", "to-staff").0, 250);
    let mut erin = Imap::login(a.server.addr("imap"), "erin", "first password");
    let mut alice = a.imap("alice");
    eventually(Duration::from_secs(10), "both members got it", || {
        subjects(&mut erin, "INBOX")
            .values()
            .any(|s| s == "to-staff")
            && subjects(&mut alice, "INBOX")
                .values()
                .any(|s| s == "to-staff")
    });

    // A mail-in box read by erin.
    let out = a.cli(
        &[
            "mailin",
            "add",
            "helpdesk",
            "--address",
            "help@example.test",
            "--reader",
            "erin",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(5), "B knows the mail-in box", || {
        rcpt(&b, "help@example.test") == 250
    });

    // A new password, in force on both.
    let out = b.cli(&["user", "passwd", "erin"], Some(b"second password\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        Duration::from_secs(5),
        "the new password works on A",
        || {
            let mut c = Imap::connect(a.server.addr("imap"));
            ok(&c.cmd("l", "LOGIN erin \"second password\""))
        },
    );

    // Refused: an address that is alice's already; a user of the file.
    let out = a.cli(
        &["user", "add", "frank", "--address", "alice@example.test"],
        Some(b""),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("database user \"frank\"") && err.contains("already given"),
        "names the entry and why: {err}"
    );
    let out = a.cli(&["user", "passwd", "alice"], Some(b"x\n"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("configuration file"),
        "alice is the file's"
    );

    // Removed: refused on both.
    let out = a.cli(&["alias", "del", "staff@example.test"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a.cli(&["mailin", "del", "helpdesk"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a.cli(&["user", "del", "erin"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(Duration::from_secs(5), "B refuses erin again", || {
        rcpt(&b, "erin@example.test") == 550
    });
    eventually(Duration::from_secs(5), "A refuses the alias", || {
        rcpt(&a, "staff@example.test") == 550
    });
    assert!(
        a.server
            .log()
            .contains("address book changed in the database")
    );
}

/// Three nodes: SMTP deliveries to alice on each, IMAP APPENDs on each,
/// and EXPUNGEs between; then every acknowledged message that was not
/// expunged is in INBOX exactly once, with unique UIDs, seen the same from
/// every node.
#[test]
fn concurrent_writes_on_three_nodes_lose_nothing() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.database("petrel");
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&url, free_port())).collect();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut expunged: BTreeSet<String> = BTreeSet::new();
    std::thread::scope(|scope| {
        let mut workers = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            // SMTP.
            workers.push(scope.spawn(move || {
                let mut done = Vec::new();
                let mut s = Smtp::ready(node.server.mx());
                for i in 0..30 {
                    let subject = format!("smtp-{n}-{i}");
                    let r = s.send_mail(
                        "sender@partner.test",
                        &["alice@example.test"],
                        &format!("Subject: {subject}\r\n\r\nbody\r\n"),
                    );
                    assert_eq!(r.0, 250, "{r:?}");
                    done.push(subject);
                }
                (done, Vec::new())
            }));
            // IMAP APPEND, and EXPUNGE of its own messages now and then.
            workers.push(scope.spawn(move || {
                let mut done = Vec::new();
                let mut gone = Vec::new();
                let mut c = node.imap("alice");
                assert!(ok(&c.cmd("s", "SELECT INBOX")));
                for i in 0..20 {
                    let subject = format!("append-{n}-{i}");
                    let msg = format!("Subject: {subject}\r\n\r\nappended\r\n");
                    c.send(format!("a APPEND INBOX {{{}}}\r\n", msg.len()).as_bytes());
                    assert!(c.line().starts_with('+'), "literal");
                    c.send(format!("{msg}\r\n").as_bytes());
                    let r = c.until("a");
                    assert!(ok(&r), "APPEND: {r:?}");
                    done.push(subject.clone());
                    if i % 5 == 4 {
                        let r = c.cmd("x", &format!("UID SEARCH SUBJECT {subject}"));
                        let uid: u32 = r
                            .iter()
                            .find_map(|l| l.strip_prefix("* SEARCH "))
                            .and_then(|u| u.trim().split(' ').next())
                            .and_then(|u| u.parse().ok())
                            .expect("found");
                        assert!(ok(&c.cmd(
                            "y",
                            &format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)")
                        )));
                        let r = c.cmd("z", &format!("UID EXPUNGE {uid}"));
                        assert!(ok(&r), "{r:?}");
                        gone.push(subject);
                    }
                }
                (done, gone)
            }));
        }
        for w in workers {
            let (done, gone) = w.join().expect("worker");
            acked.extend(done);
            expunged.extend(gone);
        }
    });
    let want: BTreeSet<String> = acked.difference(&expunged).cloned().collect();
    let mut views = Vec::new();
    for node in &nodes {
        let mut c = node.imap("alice");
        let mut last = BTreeMap::new();
        eventually(Duration::from_secs(30), "every message delivered", || {
            last = subjects(&mut c, "INBOX");
            last.len() >= want.len()
        });
        let got: Vec<&String> = last.values().collect();
        let unique: BTreeSet<String> = got.iter().map(|s| s.to_string()).collect();
        assert_eq!(got.len(), unique.len(), "each message once");
        assert_eq!(unique, want, "exactly the acknowledged, unexpunged ones");
        views.push(last);
    }
    assert!(
        views.windows(2).all(|w| w[0] == w[1]),
        "every node sees the same UIDs"
    );
    eprintln!(
        "three nodes: {} acknowledged, {} expunged, {} in INBOX",
        acked.len(),
        expunged.len(),
        want.len()
    );
}

/// A node SIGKILLed while clients send to it keeps its queue: after its
/// restart every message it acknowledged is delivered, once; the database
/// stopped under load makes deliveries wait (and IMAP answer `NO
/// [UNAVAILABLE]`), and service comes back by itself when it returns.
#[test]
fn a_killed_node_and_a_restarted_database_lose_nothing() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.database("petrel");
    let mut a = Node::start(&url, free_port());
    let b = Node::start(&url, free_port());
    let acked = std::sync::Mutex::new(Vec::new());
    let mx = a.server.mx();
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            for i in 0..400 {
                let subject = format!("load-{i}");
                let Ok(stream) = TcpStream::connect(mx) else {
                    return;
                };
                drop(stream);
                let (mut s, g) = Smtp::connect(mx);
                if g.0 != 220 || s.cmd("EHLO c.test").0 != 250 {
                    return;
                }
                let r = s.send_mail(
                    "sender@partner.test",
                    &["bob@example.test"],
                    &format!(
                        "Subject: {subject}\r\nMessage-ID: <{subject}@partner.test>\r\n\r\nbody\r\n"
                    ),
                );
                if r.0 == 250 {
                    acked.lock().unwrap().push(subject);
                } else {
                    return;
                }
            }
        });
        eventually(Duration::from_secs(30), "some mail acknowledged", || {
            acked.lock().unwrap().len() >= 40
        });
        a.server.kill9();
        sender.join().expect("sender");
    });
    let acked = acked.into_inner().unwrap();
    a.restart();
    // bob's INBOX through node B's control socket: the subjects, from
    // the Message-IDs `<subject@partner.test>`.
    let subjects_of_bob = |n: &Node| -> Vec<String> {
        let out = n.cli(&["mailbox", "bob", "--json"], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                v["message_id"].as_str().and_then(|m| {
                    m.trim_matches(['<', '>'])
                        .split('@')
                        .next()
                        .map(str::to_string)
                })
            })
            .collect()
    };
    let mut got = Vec::new();
    eventually(
        Duration::from_secs(30),
        "every acknowledged message delivered",
        || {
            got = subjects_of_bob(&b);
            acked.iter().all(|s| got.contains(s))
        },
    );
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "none twice");
    eprintln!(
        "killed under load: {} acknowledged, all delivered once ({} in the mailbox)",
        acked.len(),
        got.len()
    );

    // The database goes away under load.
    let before = got.len();
    pg.stop_server(true);
    let mut during = Vec::new();
    for i in 0..20 {
        let subject = format!("during-{i}");
        let r = send(&a, "bob@example.test", &subject);
        assert_eq!(
            r.0, 250,
            "the spool is local: mail is still taken in: {r:?}"
        );
        during.push(subject);
    }
    let mut c = Imap::connect(b.server.addr("imap"));
    let r = c.cmd("l", &format!("LOGIN alice \"{PASSWORD}\""));
    // LOGIN opens the account in the store: either it or SELECT says so.
    let r = if ok(&r) {
        c.cmd("s", "SELECT INBOX")
    } else {
        r
    };
    assert!(
        r.last().is_some_and(|l| l.contains("NO [UNAVAILABLE]")),
        "IMAP while the database is down: {r:?}"
    );
    assert!(
        a.server.wait_log(&["deferred"], Duration::from_secs(20)),
        "deliveries wait"
    );
    pg.start_server();
    eventually(
        Duration::from_secs(60),
        "service comes back by itself",
        || {
            let got = subjects_of_bob(&b);
            during.iter().all(|s| got.contains(s))
        },
    );
    let got = subjects_of_bob(&b);
    assert_eq!(got.len(), before + during.len(), "each once");
    let mut c = b.imap("alice");
    assert!(ok(&c.cmd("s", "SELECT INBOX")), "IMAP serves again");
}

/// `petrel drain --spool PATH` on node B delivers what dead node A left
/// queued, with B's configuration, and leaves A's spool empty.
#[test]
fn drain_delivers_a_dead_nodes_spool() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let url = pg.database("petrel");
    let port = free_port();
    let mut a = Node::start(&url, port);
    let b = Node::start(&url, port);
    // The remote peer (nomx.test: 127.0.0.4) is down: A's mail waits.
    for i in 0..5 {
        assert_eq!(send(&a, "dave@nomx.test", &format!("remote-{i}")).0, 250);
    }
    assert!(
        a.server
            .wait_log_count(&["deferred"], 5, Duration::from_secs(20))
    );
    a.server.kill9();
    let sink = Sink::start(&format!("127.0.0.4:{port}"), SinkOptions::default());
    let spool = a.server.dir.path().join("spool");
    let started = Instant::now();
    let out = b.cli(&["drain", "--spool", spool.to_str().expect("path")], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("5 messages at the start; 0 deferred and 0 held remain"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sink.wait(5, Duration::from_secs(10));
    assert_eq!(got.len(), 5, "the peer got A's five messages");
    eprintln!("drained in {:?}: {stdout}", started.elapsed());
    // Drained: a node started on A's spool finds nothing to send.
    a.restart();
    assert!(a.server.mailq().is_empty(), "A's spool is empty");
    let _: SocketAddr = b.server.mx();
}
