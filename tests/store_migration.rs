//! Mailboxes in today's keyspace (tree `mailbox` of the spool's sled
//! database) are carried over into the message store's INBOX on first
//! start, losing nothing: UIDVALIDITY, UIDs, the next UID, contents,
//! arrival times; once only.

use petrel::mailbox::MailboxStore;
use petrel::spool::{QueueId, Spool};
use petrel::store::embedded::EmbeddedStore;
use petrel::store::{MailStore, migrate};

#[tokio::test]
async fn old_mailboxes_move_into_inbox_losing_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_dir = dir.path().join("spool");
    let mut written = Vec::new();
    {
        // Today's format, written by today's code.
        let spool = Spool::open(&spool_dir).expect("spool");
        let old = MailboxStore::open(&spool);
        for (n, who) in ["alice", "alice", "alice", "bob", "alice"]
            .iter()
            .enumerate()
        {
            let body = format!(
                "Return-Path: <s@x>\r\nDelivered-To: {who}@x\r\nSubject: m{n}\r\n\r\nbody {n}\r\n"
            );
            let m = old
                .append(who, body.as_bytes(), QueueId(100 + n as u64), None)
                .expect("append");
            written.push((who.to_string(), m, body));
        }
        // A deleted message leaves a gap that must stay a gap.
        let (_, gone, _) = written.remove(1);
        old.delete("alice", &gone).expect("delete");
        // An empty mailbox keeps its counters.
        let e = old
            .append("empty", b"x\r\n", QueueId(200), None)
            .expect("append");
        old.delete("empty", &e).expect("delete");
        spool.commit().await.expect("commit");
    }
    let spool = Spool::open(&spool_dir).expect("spool again");
    let old = MailboxStore::open(&spool);
    let states: Vec<_> = old.mailboxes().expect("mailboxes");
    assert_eq!(states.len(), 3);
    let store = EmbeddedStore::open(&dir.path().join("store")).expect("store");
    let report = migrate::from_spool(&spool, &old, &store)
        .await
        .expect("migrate")
        .expect("something to move");
    assert_eq!((report.mailboxes, report.messages), (3, 4));
    for (name, state) in &states {
        let f = store
            .folder(name, "INBOX")
            .await
            .expect("folder")
            .expect("INBOX");
        assert_eq!(
            f.uid_validity, state.uid_validity,
            "{name}: UIDVALIDITY kept"
        );
        assert_eq!(
            u64::from(f.uid_next),
            state.uid_next,
            "{name}: next UID kept"
        );
    }
    for (who, meta, body) in &written {
        let f = store
            .folder(who, "INBOX")
            .await
            .expect("folder")
            .expect("INBOX");
        let uid = meta.uid as u32;
        let got = store.read(f.id, uid, None).await.expect("read");
        assert_eq!(got, body.as_bytes(), "{who} UID {uid}: same octets");
        let m = &store.metas(f.id, &[uid]).await.expect("metas")[0];
        assert_eq!(m.internal_date, meta.arrival / 1000);
        assert_eq!(m.size, meta.size);
        assert_eq!(
            m.queue_id,
            Some(meta.queue_id.0),
            "the queue id it came from"
        );
        // A delivery of that queued message repeated after the move (a
        // crash before the scheduler recorded it) is not stored twice.
        let again = store
            .deliver(petrel::store::Delivery {
                origin: 1,
                queue_id: meta.queue_id.0,
                content: petrel::store::conformance::content("again", 100),
                targets: vec![petrel::store::DeliveryTarget {
                    account: who.clone(),
                    folder: "INBOX".into(),
                    prefix: Vec::new(),
                    quota: None,
                }],
            })
            .await
            .expect("deliver");
        assert_eq!(again[0].as_ref().expect("placed").uid, uid);
    }
    let alice = store
        .folder("alice", "INBOX")
        .await
        .expect("folder")
        .expect("INBOX");
    let uids: Vec<u32> = store
        .messages(alice.id)
        .await
        .expect("messages")
        .iter()
        .map(|m| m.uid)
        .collect();
    assert_eq!(uids, vec![1, 3, 4], "the deleted UID stays a gap");
    assert_eq!(
        store
            .append(
                "alice",
                "INBOX",
                petrel::store::conformance::append_of("new")
            )
            .await
            .expect("append")
            .uid,
        5
    );
    assert!(old.migrated().expect("marker"));
    // Second start: nothing moves again, nothing doubles.
    assert_eq!(
        migrate::from_spool(&spool, &old, &store)
            .await
            .expect("migrate"),
        None
    );
    assert_eq!(store.messages(alice.id).await.expect("messages").len(), 4);
}
