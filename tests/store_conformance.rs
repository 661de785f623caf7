//! The message store's test suite (`petrel::store::conformance`) on the
//! embedded backend, and the embedded store's own promises: crash safety
//! under SIGKILL, disk space given back by compaction while serving, one
//! body for an alias fan-out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use petrel::mime::Summary;
use petrel::store::conformance::{self, Backend};
use petrel::store::embedded::{EmbeddedStore, Options};
use petrel::store::*;

struct Embedded {
    dir: tempfile::TempDir,
}

fn fresh() -> Embedded {
    Embedded {
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

#[async_trait::async_trait]
impl Backend for Embedded {
    async fn open(&self) -> Arc<dyn MailStore> {
        Arc::new(EmbeddedStore::open(self.dir.path()).expect("open the store"))
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            conformance::$name(&fresh()).await;
        }
    )*};
}

conformance!(
    standard_folders,
    uids_never_reused,
    modseq_grows_per_change,
    changes_since_is_exact,
    flags_and_keywords,
    copy_and_move,
    rename_with_children,
    delete_folders,
    quotas,
    delivery_shares_one_body,
    subscriptions,
    watch_and_lock,
    restore_keeps_uids,
);

/// The content of the message tagged `tag`: its size and octets follow
/// from the tag, so a reader can check a stored copy is whole.
fn tagged(tag: &str) -> Vec<u8> {
    let n = tag
        .bytes()
        .fold(7usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % 3000
        + 10;
    let mut raw = format!("From: crash@example.test\r\nSubject: {tag}\r\n\r\n").into_bytes();
    for i in 0..n {
        raw.extend_from_slice(format!("{tag} line {i}\r\n").as_bytes());
    }
    raw
}

fn new_content(raw: Vec<u8>) -> NewContent {
    let summary = Arc::new(Summary::parse(&raw));
    NewContent {
        content: Arc::new(raw),
        summary,
    }
}

fn tag_of(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    let at = s.find("Subject: ")? + 9;
    let end = s[at..].find("\r\n")? + at;
    Some(s[at..end].to_string())
}

/// The child of `sigkill_loses_nothing_acknowledged`: runs mixed deliver,
/// append, store and expunge from 6 tasks, printing one `ACK` line after
/// each call returned, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by sigkill_loses_nothing_acknowledged"]
async fn crash_child() {
    let Ok(dir) = std::env::var("STORE_CRASH_DIR") else {
        return;
    };
    let round: u64 = std::env::var("STORE_CRASH_ROUND")
        .expect("round")
        .parse()
        .expect("number");
    let volatile = std::env::var("STORE_CRASH_VOLATILE").is_ok_and(|v| v == "1");
    let options = Options {
        volatile_unsynced: volatile,
        ..Options::default()
    };
    let store = Arc::new(EmbeddedStore::open_with(Path::new(&dir), options).expect("open"));
    let inbox = store
        .folder("app", "INBOX")
        .await
        .expect("folder")
        .expect("INBOX");
    let known: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(
        store
            .messages(inbox.id)
            .await
            .expect("messages")
            .iter()
            .map(|m| m.uid)
            .collect(),
    ));
    println!("ACK READY .");
    let mut tasks = Vec::new();
    for t in 0..6u64 {
        let store = store.clone();
        let known = known.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let tag = format!("r{round}t{t}i{i}");
                match (i + t) % 4 {
                    0 => {
                        let targets = (0..3)
                            .map(|a| DeliveryTarget {
                                account: format!("d{a}"),
                                folder: "INBOX".into(),
                                prefix: Vec::new(),
                                quota: None,
                            })
                            .collect();
                        let qid = round * 1_000_000_000 + t * 10_000_000 + i + 1;
                        let r = store
                            .deliver(Delivery {
                                origin: 1,
                                queue_id: qid,
                                content: new_content(tagged(&tag)),
                                targets,
                            })
                            .await
                            .expect("deliver");
                        for (a, p) in r.into_iter().enumerate() {
                            let p = p.expect("placed");
                            println!("ACK D d{a} {} {tag} .", p.uid);
                        }
                    }
                    1 | 3 => {
                        let p = store
                            .append(
                                "app",
                                "INBOX",
                                Append {
                                    content: new_content(tagged(&tag)),
                                    flags: 0,
                                    keywords: Vec::new(),
                                    internal_date: None,
                                    queue_id: None,
                                    quota: None,
                                },
                            )
                            .await
                            .expect("append");
                        known.lock().unwrap().push(p.uid);
                        println!("ACK A {} {tag} .", p.uid);
                    }
                    _ => {
                        let pick = {
                            let k = known.lock().unwrap();
                            if k.len() < 4 {
                                None
                            } else {
                                Some(k[(i as usize * 7 + t as usize) % k.len()])
                            }
                        };
                        let Some(uid) = pick else { continue };
                        if i % 3 == 0 {
                            let gone = store
                                .expunge(inbox.id, Some(&[uid]), false)
                                .await
                                .expect("expunge");
                            known.lock().unwrap().retain(|u| *u != uid);
                            for u in gone {
                                println!("ACK E {u} .");
                            }
                        } else {
                            let r = store
                                .store_flags(
                                    inbox.id,
                                    &[uid],
                                    FlagChange {
                                        op: FlagOp::Add,
                                        flags: flags::SEEN,
                                        keywords: vec![],
                                        unchanged_since: None,
                                    },
                                )
                                .await
                                .expect("store");
                            for m in r.updated {
                                println!("ACK S {} .", m.uid);
                            }
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// SIGKILL during mixed deliver/append/store/expunge, five times on the
/// same store: every acknowledged message is there with all its octets,
/// every acknowledged expunge stays done, every acknowledged flag is set,
/// no UID is given twice, and no listed message lacks its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged() {
    crash_rounds(false).await;
}

/// The same with every write that no sync covered thrown away at the
/// kill (`Options::volatile_unsynced`: the child keeps unsynced writes of
/// the index and of the segments in its own memory, so SIGKILL loses them
/// as a power loss would): proves the syncs, not only the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_unsynced_writes_lost_loses_nothing_acknowledged() {
    crash_rounds(true).await;
}

async fn crash_rounds(volatile: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("exe");
    // (folder key, uid) -> tag, from every round.
    let mut placed: BTreeMap<(String, u32), String> = BTreeMap::new();
    let mut expunged: BTreeSet<u32> = BTreeSet::new();
    let mut seen: BTreeSet<u32> = BTreeSet::new();
    let mut total_acks = 0;
    for round in 1..=5u64 {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STORE_CRASH_DIR", dir.path())
            .env("STORE_CRASH_ROUND", round.to_string())
            .env("STORE_CRASH_VOLATILE", if volatile { "1" } else { "0" })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let want = 150 + round as usize * 60;
        let mut acks = 0;
        let mut lines = out.lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Some(Ok(line)) = lines.next() {
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let Some(rest) = rest.strip_suffix(" .") else {
                continue;
            };
            let f: Vec<&str> = rest.split(' ').collect();
            match f.as_slice() {
                ["READY"] => {}
                ["D", acc, uid, tag] => {
                    let uid: u32 = uid.parse().expect("uid");
                    let prev = placed.insert((acc.to_string(), uid), tag.to_string());
                    assert!(
                        prev.is_none(),
                        "{acc} UID {uid} given twice ({prev:?}, {tag})"
                    );
                }
                ["A", uid, tag] => {
                    let uid: u32 = uid.parse().expect("uid");
                    let prev = placed.insert(("app".into(), uid), tag.to_string());
                    assert!(
                        prev.is_none(),
                        "app UID {uid} given twice ({prev:?}, {tag})"
                    );
                }
                ["E", uid] => {
                    expunged.insert(uid.parse().expect("uid"));
                }
                ["S", uid] => {
                    seen.insert(uid.parse().expect("uid"));
                }
                other => panic!("odd line {other:?}"),
            }
            acks += 1;
            if acks >= want || Instant::now() > deadline {
                break;
            }
        }
        // SIGKILL while the tasks are still writing.
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(
            acks >= want,
            "round {round}: the child acknowledged only {acks}"
        );
        total_acks += acks;
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let mut checked = 0;
    let mut listed: BTreeMap<(String, u32), MessageMeta> = BTreeMap::new();
    for acc in ["app", "d0", "d1", "d2"] {
        let f = store
            .folder(acc, "INBOX")
            .await
            .expect("folder")
            .expect("INBOX");
        for m in store.messages(f.id).await.expect("messages") {
            // Never a message without its content.
            let body = store
                .read(f.id, m.uid, None)
                .await
                .expect("every listed message reads");
            assert_eq!(body.len() as u64, m.size, "{acc} UID {} is whole", m.uid);
            let tag = tag_of(&body).expect("a tag");
            assert_eq!(
                body,
                tagged(&tag),
                "{acc} UID {} has its own content",
                m.uid
            );
            if let Some(t) = placed.get(&(acc.to_string(), m.uid)) {
                assert_eq!(
                    *t, tag,
                    "{acc} UID {} is the message acknowledged under it",
                    m.uid
                );
            }
            listed.insert((acc.to_string(), m.uid), m);
            checked += 1;
        }
        assert!(
            f.uid_next
                > listed
                    .keys()
                    .filter(|k| k.0 == acc)
                    .map(|k| k.1)
                    .max()
                    .unwrap_or(0)
        );
    }
    for ((acc, uid), tag) in &placed {
        if acc == "app" && expunged.contains(uid) {
            assert!(
                !listed.contains_key(&(acc.clone(), *uid)),
                "acknowledged expunge of UID {uid} undone"
            );
            continue;
        }
        let m = listed.get(&(acc.clone(), *uid));
        // An acknowledged message may be gone only through an expunge the
        // child sent and the kill cut before its acknowledgement.
        if m.is_none() {
            assert!(
                acc == "app",
                "acknowledged delivery {tag} to {acc} UID {uid} is lost"
            );
            continue;
        }
        if acc == "app" && seen.contains(uid) {
            assert_ne!(
                m.expect("there").flags & flags::SEEN,
                0,
                "acknowledged \\Seen on UID {uid} lost"
            );
        }
    }
    let lost_app = placed
        .keys()
        .filter(|(a, u)| {
            a == "app" && !expunged.contains(u) && !listed.contains_key(&(a.clone(), *u))
        })
        .count();
    // At most one unacknowledged expunge per task per kill (6 × 5).
    assert!(lost_app <= 30, "{lost_app} acknowledged appends missing");
    eprintln!(
        "crash test (volatile {volatile}): {total_acks} acknowledgements over 5 kills, {checked} messages checked, {lost_app} appends removed by unacknowledged expunges"
    );
}

fn segments_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

fn big(i: usize, size: usize) -> Vec<u8> {
    let mut raw = format!("Subject: big{i}\r\n\r\n").into_bytes();
    let fill = format!("{i:08}");
    while raw.len() < size {
        raw.extend_from_slice(fill.as_bytes());
    }
    raw
}

/// A store of 200 MiB (not 2 GiB: the test must run on a shared CI
/// machine; `benches/store.rs` measures 2 GiB) with 90 % of it expunged
/// gives space back while serving: under 30 % of its size within a
/// minute, and every remaining message intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expunged_space_returns_while_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        EmbeddedStore::open_with(
            dir.path(),
            Options {
                segment_size: 8 << 20,
                ..Options::default()
            },
        )
        .expect("open"),
    );
    const SIZE: usize = 256 << 10;
    const COUNT: usize = 800; // 200 MiB
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..COUNT).step_by(8) {
                let raw = big(i, SIZE);
                store
                    .append(
                        "big",
                        "INBOX",
                        Append {
                            content: new_content(raw),
                            flags: 0,
                            keywords: vec![],
                            internal_date: None,
                            queue_id: None,
                            quota: None,
                        },
                    )
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let (full, live) = store.disk_usage().expect("usage");
    assert!(full >= (COUNT * SIZE) as u64, "{full} on disk");
    let f = store
        .folder("big", "INBOX")
        .await
        .expect("folder")
        .expect("INBOX");
    let all: Vec<u32> = store
        .messages(f.id)
        .await
        .expect("messages")
        .iter()
        .map(|m| m.uid)
        .collect();
    let gone: Vec<u32> = all.iter().copied().filter(|u| u % 10 != 0).collect();
    store
        .expunge(f.id, Some(&gone), false)
        .await
        .expect("expunge");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut now = full;
    // Serving goes on meanwhile: reads of the remaining messages.
    while Instant::now() < deadline {
        now = store.disk_usage().expect("usage").0;
        if now * 100 < full * 30 {
            break;
        }
        let keep = store.messages(f.id).await.expect("messages");
        let _ = store.read(f.id, keep[0].uid, None).await.expect("read");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "compaction: {full} octets ({live} live) -> {now} after expunging 90 % ({:.1} %) in {:?}",
        now as f64 * 100.0 / full as f64,
        started.elapsed()
    );
    assert!(now * 100 < full * 30, "{now} of {full} octets remain");
    let keep = store.messages(f.id).await.expect("messages");
    assert_eq!(keep.len(), COUNT / 10);
    for m in keep {
        let body = store.read(f.id, m.uid, None).await.expect("read");
        let i: usize = tag_of(&body).expect("tag")[3..].parse().expect("n");
        assert!(body == big(i, SIZE), "UID {} intact", m.uid);
    }
    drop(store);
    let files = std::fs::read_dir(segments_dir(dir.path()))
        .expect("dir")
        .count();
    assert!(files < 10, "{files} segment files left");
}

/// An alias fan-out of a 1 MiB message to 200 users stores about 1 MiB.
#[tokio::test]
async fn fan_out_stores_one_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    for n in 0..200 {
        store
            .ensure_account(&format!("user{n}"))
            .await
            .expect("account");
    }
    let (before, _) = store.disk_usage().expect("usage");
    let mut raw = b"Subject: all hands\r\n\r\n".to_vec();
    raw.resize(1 << 20, b'a');
    let targets = (0..200)
        .map(|n| DeliveryTarget {
            account: format!("user{n}"),
            folder: "INBOX".into(),
            prefix: format!("Return-Path: <boss@x>\r\nDelivered-To: user{n}@x\r\n").into_bytes(),
            quota: None,
        })
        .collect();
    let r = store
        .deliver(Delivery {
            origin: 1,
            queue_id: 9,
            content: new_content(raw),
            targets,
        })
        .await
        .expect("deliver");
    assert!(r.iter().all(|p| p.is_ok()));
    let (after, live) = store.disk_usage().expect("usage");
    eprintln!(
        "fan-out of 1 MiB to 200: {} octets more on disk, {live} live in segments",
        after.saturating_sub(before)
    );
    assert_eq!(live, 1 << 20, "one body");
    assert!(
        after.saturating_sub(before) < 3 << 20,
        "{} more octets",
        after - before
    );
}
