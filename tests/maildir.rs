//! `petrel export` / `petrel import` against the real daemon: a round trip
//! (mail delivered over SMTP, folders, flags and keywords from a hand-made
//! Maildir, export, import into another account, export again, compare
//! byte for byte), a repeated import that adds nothing, the offline path,
//! and Dovecot (a private instance on loopback) reading the export with
//! Python's imaplib.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use common::{Smtp, TestServer, free_port, run_cmd};

/// One message file of a Maildir folder, as compared: flags suffix, mtime,
/// content (the unique name differs between exports).
type Files = Vec<(String, u64, Vec<u8>)>;

fn files(dir: &Path) -> Files {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        let Ok(rd) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let info = name
                .rsplit_once(":2,")
                .map(|(_, i)| i.to_string())
                .unwrap_or_default();
            let mtime = e
                .metadata()
                .unwrap()
                .modified()
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            out.push((info, mtime, std::fs::read(e.path()).unwrap()));
        }
    }
    out.sort();
    out
}

/// Folder directory name → its files and `dovecot-keywords`.
fn tree(root: &Path) -> BTreeMap<String, (Files, String)> {
    let mut out = BTreeMap::new();
    let kw = |d: &Path| std::fs::read_to_string(d.join("dovecot-keywords")).unwrap_or_default();
    out.insert("INBOX".to_string(), (files(root), kw(root)));
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && e.path().join("cur").is_dir() {
            out.insert(name, (files(&e.path()), kw(&e.path())));
        }
    }
    out
}

fn put(dir: &Path, sub: &str, name: &str, content: &[u8], mtime: u64) {
    std::fs::create_dir_all(dir.join("cur")).unwrap();
    std::fs::create_dir_all(dir.join("new")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let p = dir.join(sub).join(name);
    std::fs::write(&p, content).unwrap();
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
}

/// A hand-made Maildir++ tree: INBOX with a flagged seen message (LF line
/// ends, as most Maildir writers store) and an unread one in new/;
/// `Projects/2026` with a keyword and `\Deleted`; `Archive` (a special-use
/// folder the account has already) with `$Forwarded`; an empty `Empty`.
fn hand_made(root: &Path) {
    put(
        root,
        "cur",
        "1700000000.M1P1.old:2,FS",
        b"From: carol@old.test\nSubject: flagged\n\nkept flagged\n",
        1_700_000_000,
    );
    put(
        root,
        "new",
        "1700000100.M2P1.old",
        b"From: carol@old.test\r\nSubject: unread\r\n\r\nnot yet read\r\n",
        1_700_000_100,
    );
    let p = root.join(".Projects.2026");
    put(
        &p,
        "cur",
        "1600000000.M3P1.old:2,RTa",
        b"Subject: plan\r\n\r\nthe plan\r\n",
        1_600_000_000,
    );
    std::fs::write(p.join("maildirfolder"), b"").unwrap();
    std::fs::write(p.join("dovecot-keywords"), "0 todo\n").unwrap();
    put(
        &root.join(".Archive"),
        "cur",
        "1500000000.M4P1.old:2,PS",
        b"Subject: old\r\n\r\npassed on\r\n",
        1_500_000_000,
    );
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(root.join(".Empty").join(sub)).unwrap();
    }
    std::fs::write(root.join("subscriptions"), "INBOX\nProjects.2026\n").unwrap();
}

fn cli_ok(server: &TestServer, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(
        out.status.success(),
        "petrel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A message over 1 MiB (so the export streams it in several pieces).
fn big_body() -> String {
    let mut b = String::from("Subject: big\r\nFrom: dave@partner.test\r\n\r\n");
    for i in 0..40_000 {
        b.push_str(&format!(
            "line {i:06} of a message larger than one piece.....\r\n"
        ));
    }
    b
}

/// Delivers two messages to alice over SMTP and imports the hand-made
/// tree into her account; returns the server and the tree's path.
fn prepared() -> (TestServer, PathBuf) {
    let server = TestServer::start("");
    let mut smtp = Smtp::ready(server.mx());
    let r = smtp.send_mail(
        "dave@partner.test",
        &["alice@example.test"],
        "Subject: hello\r\nFrom: dave@partner.test\r\n\r\nsmall one\r\n",
    );
    assert_eq!(r.0, 250, "{r:?}");
    let r = smtp.send_mail("dave@partner.test", &["alice@example.test"], &big_body());
    assert_eq!(r.0, 250, "{r:?}");
    let got = server.wait_mailbox("alice", 2, Duration::from_secs(20));
    assert_eq!(got.len(), 2, "{got:?}");
    let hand = server.dir.path().join("hand");
    hand_made(&hand);
    (server, hand)
}

#[test]
fn maildir_round_trip_keeps_content_flags_folders_and_dates() {
    let (server, hand) = prepared();
    let out = cli_ok(
        &server,
        &["import", "alice", "--maildir", hand.to_str().unwrap()],
    );
    assert!(out.contains("imported 4 messages"), "{out}");
    // The same tree again adds nothing: identity is INTERNALDATE + octets.
    let out = cli_ok(
        &server,
        &["import", "alice", "--maildir", hand.to_str().unwrap()],
    );
    assert!(
        out.contains("imported 0 messages") && out.contains("4 already there"),
        "{out}"
    );

    let ex1 = server.dir.path().join("ex1");
    let out = cli_ok(
        &server,
        &["export", "alice", "--maildir", ex1.to_str().unwrap()],
    );
    assert!(out.contains("exported 6 messages"), "{out}");
    let t1 = tree(&ex1);

    // What the hand-made tree said, as exported: flags, dates, keywords,
    // content with CRLF line ends (the store's form).
    let inbox = &t1["INBOX"].0;
    assert_eq!(
        inbox.len(),
        4,
        "{:?}",
        inbox.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(inbox.contains(&(
        "FS".into(),
        1_700_000_000,
        b"From: carol@old.test\r\nSubject: flagged\r\n\r\nkept flagged\r\n".to_vec()
    )));
    assert!(inbox.contains(&(
        "".into(),
        1_700_000_100,
        b"From: carol@old.test\r\nSubject: unread\r\n\r\nnot yet read\r\n".to_vec()
    )));
    let (proj, kw) = &t1[".Projects.2026"];
    assert_eq!(
        proj,
        &vec![(
            "RTa".into(),
            1_600_000_000,
            b"Subject: plan\r\n\r\nthe plan\r\n".to_vec()
        )]
    );
    assert_eq!(kw, "0 todo\n");
    // `P` comes back as the `$Forwarded` keyword, which Dovecot shows.
    assert_eq!(t1[".Archive"].0[0].0, "Sa");
    assert_eq!(t1[".Archive"].1, "0 $Forwarded\n");
    assert_eq!(t1[".Archive"].0[0].1, 1_500_000_000);
    assert!(t1.contains_key(".Empty") && t1[".Empty"].0.is_empty());
    // Every standard folder is there, empty or not.
    for f in [".Sent", ".Drafts", ".Trash", ".Junk"] {
        assert!(t1.contains_key(f), "{f} missing: {:?}", t1.keys());
    }
    assert!(ex1.join(".Projects.2026/maildirfolder").is_file());
    let subs = std::fs::read_to_string(ex1.join("subscriptions")).unwrap();
    assert!(subs.lines().any(|l| l == "Projects.2026"), "{subs}");

    // The SMTP deliveries, byte for byte as the store serves them (the big
    // one came in several pieces), with their INTERNALDATEs as mtimes.
    for m in server.mailbox("alice") {
        let uid = m["uid"].as_u64().unwrap();
        let stored = server.mailbox_message("alice", uid);
        let date = m["arrival_time"].as_u64().unwrap();
        assert!(
            inbox.iter().any(|f| f.2 == stored && f.1 == date),
            "UID {uid} ({} octets) not exported as stored",
            stored.len()
        );
    }
    assert!(inbox.iter().any(|f| f.2.len() > 2 * 1024 * 1024));

    // Into another account and out again: the same tree.
    let out = cli_ok(
        &server,
        &["import", "bob", "--maildir", ex1.to_str().unwrap()],
    );
    assert!(out.contains("imported 6 messages"), "{out}");
    let ex2 = server.dir.path().join("ex2");
    cli_ok(
        &server,
        &["export", "bob", "--maildir", ex2.to_str().unwrap()],
    );
    let t2 = tree(&ex2);
    assert_eq!(t1.keys().collect::<Vec<_>>(), t2.keys().collect::<Vec<_>>());
    for (k, v) in &t1 {
        assert!(t2[k] == *v, "folder {k} differs after the round trip");
    }
    let subs2 = std::fs::read_to_string(ex2.join("subscriptions")).unwrap();
    assert!(subs2.lines().any(|l| l == "Projects.2026"), "{subs2}");
}

#[test]
fn export_refuses_a_non_empty_directory_and_unknown_accounts() {
    let server = TestServer::start("");
    let d = server.dir.path().join("full");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("x"), b"x").unwrap();
    let out = server.cli(&["export", "alice", "--maildir", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let e = server.dir.path().join("e");
    let out = server.cli(&["export", "nobody", "--maildir", e.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a user"));
    let out = server.cli(&["import", "alice", "--maildir", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Maildir"));
}

#[test]
fn export_and_import_work_on_the_store_when_no_daemon_runs() {
    let (mut server, hand) = prepared();
    assert_eq!(server.stop(), Some(0));
    let out = cli_ok(
        &server,
        &["import", "alice", "--maildir", hand.to_str().unwrap()],
    );
    assert!(out.contains("imported 4 messages"), "{out}");
    let ex = server.dir.path().join("ex");
    let out = cli_ok(
        &server,
        &["export", "alice", "--maildir", ex.to_str().unwrap()],
    );
    assert!(out.contains("exported 6 messages"), "{out}");
    let out = cli_ok(
        &server,
        &["import", "alice", "--maildir", ex.to_str().unwrap()],
    );
    assert!(out.contains("imported 0 messages"), "{out}");
}

const IMAP_SCRIPT: &str = r#"
import imaplib, json, sys, base64, re, calendar, time
port = int(sys.argv[1])
M = imaplib.IMAP4("127.0.0.1", port)
M.login("alice", "secret")
out = {"folders": {}, "subscribed": []}
typ, data = M.list()
names = []
for line in data:
    m = re.match(rb'\((.*?)\) "(.*?)" (.*)', line)
    name = m.group(3).decode().strip('"')
    names.append(name)
typ, data = M.lsub()
for line in data:
    if line:
        m = re.match(rb'\((.*?)\) "(.*?)" (.*)', line)
        out["subscribed"].append(m.group(3).decode().strip('"'))
for name in names:
    typ, data = M.select('"%s"' % name, readonly=True)
    n = int(data[0])
    msgs = []
    if n:
        typ, data = M.fetch("1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
        for item in data:
            if not isinstance(item, tuple):
                continue
            head, body = item
            flags = re.search(rb'FLAGS \((.*?)\)', head).group(1).decode().split()
            date = imaplib.Internaldate2tuple(head)
            msgs.append({"flags": sorted(flags), "date": int(calendar.timegm(time.gmtime(time.mktime(date)))),
                         "body": base64.b64encode(body).decode()})
    out["folders"][name] = msgs
M.logout()
print(json.dumps(out))
"#;

#[test]
fn dovecot_reads_the_export() {
    if !Path::new("/usr/sbin/dovecot").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "dovecot is not installed (apt-get install dovecot-imapd)"
        );
        eprintln!("SKIPPED: dovecot is not installed (apt-get install dovecot-imapd)");
        return;
    }
    let (server, hand) = prepared();
    cli_ok(
        &server,
        &["import", "alice", "--maildir", hand.to_str().unwrap()],
    );
    let root = server.dir.path().join("dovecot");
    let mail = root.join("mail/alice");
    std::fs::create_dir_all(mail.parent().unwrap()).unwrap();
    cli_ok(
        &server,
        &["export", "alice", "--maildir", mail.to_str().unwrap()],
    );
    let expected = tree(&mail);

    // A private Dovecot: its own directories, a passwd-file, loopback
    // only, the mail owned by whoever runs the test.
    for d in ["run", "state", "home/alice"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let (mut uid, mut gid) = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&mail).unwrap();
        (m.uid(), m.gid())
    };
    if uid == 0 {
        // Dovecot refuses to access mail as root: hand the tree to nobody.
        use std::os::unix::fs::PermissionsExt;
        (uid, gid) = (65534, 65534);
        std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        for d in [root.join("mail"), root.join("home")] {
            let st = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(&d)
                .status()
                .unwrap();
            assert!(st.success());
        }
    }
    std::fs::write(root.join("passwd"), "alice:{PLAIN}secret\n").unwrap();
    let port = free_port();
    let r = root.display();
    let conf = format!(
        r#"
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
protocols = imap
listen = 127.0.0.1
hostname = localhost
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 0
first_valid_gid = 0
mail_location = maildir:{r}/mail/%u
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = {r}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={r}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service imap {{
  process_limit = 4
}}
"#
    );
    let conf_path = root.join("dovecot.conf");
    std::fs::write(&conf_path, conf).unwrap();
    // It forks into the background: no pipes it could keep open.
    let status = Command::new("/usr/sbin/dovecot")
        .arg("-c")
        .arg(&conf_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "dovecot: {}",
        std::fs::read_to_string(root.join("dovecot.log")).unwrap_or_default()
    );
    struct Stop(PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("/usr/sbin/dovecot")
                .arg("-c")
                .arg(&self.0)
                .arg("stop")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    let _stop = Stop(conf_path.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "dovecot did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(IMAP_SCRIPT).arg(port.to_string());
    let out = run_cmd(cmd, None);
    assert!(
        out.status.success(),
        "imaplib: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(root.join("dovecot.log")).unwrap_or_default()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let folders = v["folders"].as_object().unwrap();
    for (dir, (files, keywords)) in &expected {
        let table: Vec<&str> = keywords
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(_, k)| k))
            .collect();
        let name = if dir == "INBOX" {
            "INBOX".to_string()
        } else {
            dir[1..].replace('.', "/")
        };
        let msgs = folders
            .get(&name)
            .unwrap_or_else(|| panic!("Dovecot does not list {name}: {:?}", folders.keys()));
        let mut got: Vec<(Vec<String>, u64, Vec<u8>)> = msgs
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                use base64::Engine;
                let flags: Vec<String> = m["flags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .filter(|f| f != "\\Recent")
                    .collect();
                let body = base64::engine::general_purpose::STANDARD
                    .decode(m["body"].as_str().unwrap())
                    .unwrap();
                (flags, m["date"].as_u64().unwrap(), body)
            })
            .collect();
        got.sort();
        let mut want: Vec<(Vec<String>, u64, Vec<u8>)> = files
            .iter()
            .map(|(info, mtime, body)| {
                let mut f = Vec::new();
                for c in info.chars() {
                    f.push(
                        match c {
                            'D' => "\\Draft",
                            'F' => "\\Flagged",
                            'P' => "$Forwarded",
                            'R' => "\\Answered",
                            'S' => "\\Seen",
                            'T' => "\\Deleted",
                            'a'..='z' => table[(c as u8 - b'a') as usize],
                            other => panic!("unexpected flag {other}"),
                        }
                        .to_string(),
                    );
                }
                f.sort();
                (f, *mtime, body.clone())
            })
            .collect();
        want.sort();
        assert_eq!(
            got.iter()
                .map(|g| (&g.0, g.1, g.2.len()))
                .collect::<Vec<_>>(),
            want.iter()
                .map(|g| (&g.0, g.1, g.2.len()))
                .collect::<Vec<_>>(),
            "folder {name}: flags, dates, sizes as Dovecot reads them"
        );
        assert!(
            got == want,
            "folder {name}: bodies differ as Dovecot reads them"
        );
    }
    let subs: Vec<&str> = v["subscribed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(subs.contains(&"Projects/2026"), "Dovecot's LSUB: {subs:?}");
}
