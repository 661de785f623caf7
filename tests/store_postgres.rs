//! The message store on PostgreSQL: the store test suite
//! (`petrel::store::conformance`) on a real server started here, and what
//! a shared store adds: several stores (as several nodes) writing one
//! database at once never give a UID twice nor lose an acknowledged
//! message; a change made through one is heard by the others' watchers;
//! POP3's lock holds across them.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::postgres::PgServer;
use petrel::store::conformance::{self, Backend};
use petrel::store::postgres::PostgresStore;
use petrel::store::*;

struct Pg {
    url: String,
}

#[async_trait::async_trait]
impl Backend for Pg {
    async fn open(&self) -> Arc<dyn MailStore> {
        Arc::new(
            PostgresStore::open(&self.url, 4)
                .await
                .expect("open the store"),
        )
    }
}

/// Every function of the suite, each on a database of its own, on one
/// server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_suite_passes_on_postgres() {
    let Some(server) = PgServer::start() else {
        return;
    };
    macro_rules! suite {
        ($($name:ident),* $(,)?) => {$(
            let b = Pg { url: server.database(stringify!($name)) };
            let started = Instant::now();
            conformance::$name(&b).await;
            eprintln!("{}: passed in {:?}", stringify!($name), started.elapsed());
        )*};
    }
    suite!(
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
}

fn content(tag: &str) -> NewContent {
    NewContent::parse(
        format!("From: a@example.test\r\nSubject: {tag}\r\n\r\nbody of {tag}\r\n").into_bytes(),
    )
}

/// Three stores on one database (three nodes), each with four writers
/// delivering, appending, flagging and expunging in one INBOX at once:
/// no UID is given twice, every acknowledged message that was not
/// expunged is there exactly once with its own content, MODSEQs only
/// grow, and the counters match the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_write_one_folder_at_once() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.database("shared");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Arc::new(PostgresStore::open(&url, 4).await.expect("open")));
    }
    let inbox = nodes[0]
        .folder("team", "INBOX")
        .await
        .expect("folder")
        .expect("INBOX");
    let mut tasks = Vec::new();
    for (n, store) in nodes.iter().enumerate() {
        for w in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                // (uid, tag) acknowledged, and UIDs this writer expunged.
                let mut placed = Vec::new();
                let mut expunged = Vec::new();
                let mut last_modseq = 0;
                for i in 0..40u64 {
                    let tag = format!("n{n}w{w}i{i}");
                    if i % 2 == 0 {
                        let r = store
                            .deliver(Delivery {
                                origin: n as u64 + 1,
                                queue_id: (w as u64) << 32 | i,
                                content: content(&tag),
                                targets: vec![DeliveryTarget {
                                    account: "team".into(),
                                    folder: "INBOX".into(),
                                    prefix: Vec::new(),
                                    quota: None,
                                }],
                            })
                            .await
                            .expect("deliver");
                        let p = r.into_iter().next().expect("one").expect("placed");
                        placed.push((p.uid, tag));
                    } else {
                        let p = store
                            .append(
                                "team",
                                "INBOX",
                                Append {
                                    content: content(&tag),
                                    flags: 0,
                                    keywords: vec![],
                                    internal_date: None,
                                    queue_id: None,
                                    quota: None,
                                },
                            )
                            .await
                            .expect("append");
                        placed.push((p.uid, tag));
                    }
                    if i % 5 == 4 {
                        let uid = placed[placed.len() / 2].0;
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
                            assert!(m.modseq >= last_modseq);
                            last_modseq = m.modseq;
                        }
                    }
                    if i % 7 == 6 {
                        let uid = placed[0].0;
                        let gone = store
                            .expunge(inbox.id, Some(&[uid]), false)
                            .await
                            .expect("expunge");
                        expunged.extend(gone);
                    }
                    let info = store.folder_info(inbox.id).await.expect("info");
                    assert!(info.highest_modseq >= last_modseq, "MODSEQ only grows");
                    last_modseq = info.highest_modseq;
                }
                (placed, expunged)
            }));
        }
    }
    let mut acked: BTreeMap<u32, String> = BTreeMap::new();
    let mut expunged: HashSet<u32> = HashSet::new();
    for t in tasks {
        let (placed, gone) = t.await.expect("writer");
        for (uid, tag) in placed {
            let prev = acked.insert(uid, tag.clone());
            assert!(prev.is_none(), "UID {uid} given twice: {prev:?} and {tag}");
        }
        expunged.extend(gone);
    }
    assert_eq!(acked.len(), 3 * 4 * 40);
    let store = &nodes[2];
    let listed = store.messages(inbox.id).await.expect("messages");
    let uids: Vec<u32> = listed.iter().map(|m| m.uid).collect();
    let mut want: Vec<u32> = acked
        .keys()
        .copied()
        .filter(|u| !expunged.contains(u))
        .collect();
    want.sort_unstable();
    assert_eq!(
        uids, want,
        "every acknowledged, unexpunged message, exactly once"
    );
    for m in &listed {
        let body = store.read(inbox.id, m.uid, None).await.expect("read");
        let tag = &acked[&m.uid];
        assert!(
            body.ends_with(format!("body of {tag}\r\n").as_bytes()),
            "UID {} holds {tag}",
            m.uid
        );
    }
    let info = store.folder_info(inbox.id).await.expect("info");
    assert_eq!(info.exists as usize, listed.len(), "EXISTS counts the rows");
    assert_eq!(
        info.unseen as usize,
        listed.iter().filter(|m| m.flags & flags::SEEN == 0).count(),
        "UNSEEN counts the rows"
    );
    let usage = store.usage("team").await.expect("usage");
    assert_eq!(usage.messages as usize, listed.len());
    assert_eq!(
        usage.bytes,
        listed.iter().map(|m| m.size).sum::<u64>(),
        "the account's octets"
    );
    let changes = store.changes_since(inbox.id, 0).await.expect("changes");
    let mut vanished = changes.vanished.clone();
    vanished.sort_unstable();
    let mut gone: Vec<u32> = expunged.into_iter().collect();
    gone.sort_unstable();
    assert_eq!(vanished, gone, "every expunge is remembered for QRESYNC");
    eprintln!(
        "three nodes: {} acknowledged, {} expunged, {} listed",
        acked.len(),
        gone.len(),
        listed.len()
    );
}

/// A change made through one node reaches another node's watcher within
/// a second (NOTIFY), and the POP3 lock is exclusive across nodes and
/// released when its holder drops it or its node goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_hear_each_other_and_share_the_pop3_lock() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.database("shared");
    let a = PostgresStore::open(&url, 2).await.expect("open a");
    let b = PostgresStore::open(&url, 2).await.expect("open b");
    let inbox = a
        .folder("carol", "INBOX")
        .await
        .expect("folder")
        .expect("INBOX");
    let mut rx = b.watch();
    // The listener connects in the background: wait until it hears.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut heard = None;
    let mut n = 0;
    while heard.is_none() && Instant::now() < deadline {
        n += 1;
        let sent = Instant::now();
        let p = a
            .append("carol", "INBOX", conformance::append_of(&format!("w{n}")))
            .await
            .expect("append");
        let modseq = a.folder_info(inbox.id).await.expect("info").highest_modseq;
        while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            if ev.folder == inbox.id && ev.modseq == modseq {
                heard = Some((sent.elapsed(), p.uid));
                break;
            }
        }
    }
    let (latency, _) = heard.expect("node b heard node a's APPEND");
    // After the listener is up, each change must arrive within a second.
    for i in 0..5 {
        let sent = Instant::now();
        let p = a
            .append("carol", "INBOX", conformance::append_of(&format!("x{i}")))
            .await
            .expect("append");
        a.store_flags(
            inbox.id,
            &[p.uid],
            FlagChange {
                op: FlagOp::Add,
                flags: flags::FLAGGED,
                keywords: vec![],
                unchanged_since: None,
            },
        )
        .await
        .expect("flag");
        let want = a.folder_info(inbox.id).await.expect("info").highest_modseq;
        let ev = loop {
            let ev = tokio::time::timeout(Duration::from_secs(1), rx.recv())
                .await
                .expect("an event within a second")
                .expect("event");
            if ev.modseq >= want {
                break ev;
            }
        };
        assert_eq!(ev.account_hash, account_hash("carol"));
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(1), "heard after {took:?}");
        let seen = b.metas(inbox.id, &[p.uid]).await.expect("metas");
        assert_eq!(
            seen[0].flags & flags::FLAGGED,
            flags::FLAGGED,
            "b reads a's flag"
        );
    }
    eprintln!("first event heard after {latency:?}");

    let held = a.lock_maildrop("carol").await.expect("lock").expect("free");
    assert!(
        b.lock_maildrop("Carol").await.expect("lock").is_none(),
        "held on node a"
    );
    assert!(
        a.lock_maildrop("carol").await.expect("lock").is_none(),
        "held on this node too"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    let on_b = loop {
        if let Some(g) = b.lock_maildrop("carol").await.expect("lock") {
            break g;
        }
        assert!(Instant::now() < deadline, "released when dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(a.lock_maildrop("carol").await.expect("lock").is_none());
    // Node b goes away with the lock: its connection closes and the
    // database releases it.
    drop(on_b);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if a.lock_maildrop("carol").await.expect("lock").is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "a gone node's lock is released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
