//! The store test suite: behaviours every `MailStore` backend must show,
//! written once against the trait. `tests/store_conformance.rs` runs it
//! on the embedded store; a PostgreSQL backend runs the same functions
//! with its own `Backend`. Each function panics with a message naming
//! the broken promise.
//!
//! Not a unit test module: it is compiled into the library (hidden from
//! the docs) so integration tests of any backend can call it.

use std::sync::Arc;

use super::*;

/// How the suite gets a store: `open` gives the same store each time
/// (after the previous handle was dropped: a restart).
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Opens the store under test.
    async fn open(&self) -> Arc<dyn MailStore>;
}

/// A message with a subject and a body of `body_len` octets.
pub fn content(subject: &str, body_len: usize) -> NewContent {
    let mut raw = format!(
        "From: Sender <sender@example.test>\r\nTo: rcpt@example.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n\r\n"
    )
    .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstu\r\n";
    while raw.len() + line.len() <= body_len {
        raw.extend_from_slice(line);
    }
    if raw.len() < body_len {
        raw.extend(std::iter::repeat_n(b'x', body_len - raw.len()));
    }
    NewContent::parse(raw)
}

/// An APPEND of `content(subject, 200)`.
pub fn append_of(subject: &str) -> Append {
    Append {
        content: content(subject, 200),
        flags: 0,
        keywords: Vec::new(),
        internal_date: None,
        queue_id: None,
        quota: None,
    }
}

async fn inbox(s: &dyn MailStore, account: &str) -> FolderInfo {
    s.folder(account, "INBOX")
        .await
        .expect("folder")
        .expect("INBOX exists on first use")
}

async fn uids(s: &dyn MailStore, f: FolderId) -> Vec<u32> {
    s.messages(f)
        .await
        .expect("messages")
        .iter()
        .map(|m| m.uid)
        .collect()
}

/// INBOX and the RFC 6154 folders exist on first use, subscribed.
pub async fn standard_folders(b: &dyn Backend) {
    let s = b.open().await;
    let folders = s.folders("alice").await.expect("folders");
    let names: Vec<&str> = folders.iter().map(|f| f.name.as_str()).collect();
    for want in ["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"] {
        assert!(
            names.contains(&want),
            "{want} is made on first use: {names:?}"
        );
    }
    for (use_, name) in SpecialUse::STANDARD {
        let f = folders.iter().find(|f| f.name == name).expect("there");
        assert_eq!(
            f.special_use,
            Some(use_),
            "{name} has its RFC 6154 attribute"
        );
        assert!(f.subscribed, "{name} is subscribed");
    }
    let inbox = s.folder("alice", "inbox").await.expect("folder");
    assert_eq!(
        inbox.map(|f| f.name),
        Some("INBOX".into()),
        "INBOX in any case"
    );
    assert_eq!(DELIMITER, '/');
    s.ensure_account("alice").await.expect("again");
    assert_eq!(
        s.folders("alice").await.expect("folders").len(),
        folders.len(),
        "ensure_account twice makes nothing twice"
    );
}

/// UIDs grow, are never reused after an expunge of the highest UID, nor
/// across restarts; UIDVALIDITY stays.
pub async fn uids_never_reused(b: &dyn Backend) {
    let s = b.open().await;
    let f = inbox(&*s, "alice").await;
    let mut got = Vec::new();
    for n in 0..3 {
        got.push(
            s.append("alice", "INBOX", append_of(&format!("m{n}")))
                .await
                .expect("append")
                .uid,
        );
    }
    assert_eq!(got, vec![1, 2, 3]);
    assert_eq!(
        s.expunge(f.id, Some(&[3]), false).await.expect("expunge"),
        vec![3]
    );
    let p = s
        .append("alice", "INBOX", append_of("m3"))
        .await
        .expect("append");
    assert_eq!(p.uid, 4, "the expunged highest UID is not given again");
    assert_eq!(p.uid_validity, f.uid_validity);
    drop(s);
    let s = b.open().await;
    let p = s
        .append("alice", "INBOX", append_of("m4"))
        .await
        .expect("append");
    assert_eq!(p.uid, 5, "a restart does not reuse UIDs");
    s.expunge(f.id, None, false).await.expect("expunge all");
    drop(s);
    let s = b.open().await;
    let again = inbox(&*s, "alice").await;
    assert_eq!(
        again.uid_validity, f.uid_validity,
        "UIDVALIDITY survives restarts"
    );
    assert_eq!(again.uid_next, 6);
    assert_eq!(again.exists, 0);
    let p = s
        .append("alice", "INBOX", append_of("m5"))
        .await
        .expect("append");
    assert_eq!(p.uid, 6, "an emptied folder keeps counting");
}

/// Every change gives a higher MODSEQ; a copy's MODSEQ is that of its
/// last change; HIGHESTMODSEQ is the highest.
pub async fn modseq_grows_per_change(b: &dyn Backend) {
    let s = b.open().await;
    let f = inbox(&*s, "alice").await;
    let mut last = f.highest_modseq;
    let mut check = async |what: &str| {
        let now = s.folder_info(f.id).await.expect("info").highest_modseq;
        assert!(now > last, "{what} raises HIGHESTMODSEQ ({last} -> {now})");
        last = now;
        now
    };
    let a = s
        .append("alice", "INBOX", append_of("a"))
        .await
        .expect("append");
    let m1 = check("APPEND").await;
    let b2 = s
        .append("alice", "INBOX", append_of("b"))
        .await
        .expect("append");
    check("APPEND").await;
    let r = s
        .store_flags(
            f.id,
            &[a.uid],
            FlagChange {
                op: FlagOp::Add,
                flags: flags::SEEN,
                keywords: vec![],
                unchanged_since: None,
            },
        )
        .await
        .expect("store");
    let m3 = check("STORE").await;
    assert_eq!(
        r.updated[0].modseq, m3,
        "the copy carries the MODSEQ of its change"
    );
    assert!(r.updated[0].modseq > m1);
    s.expunge(f.id, Some(&[b2.uid]), false)
        .await
        .expect("expunge");
    check("EXPUNGE").await;
    let metas = s.messages(f.id).await.expect("messages");
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0].modseq, m3);
}

/// changes_since returns exactly what changed after a MODSEQ, and the
/// UIDs expunged after it (QRESYNC VANISHED).
pub async fn changes_since_is_exact(b: &dyn Backend) {
    let s = b.open().await;
    let f = inbox(&*s, "alice").await;
    for n in 0..5 {
        s.append("alice", "INBOX", append_of(&format!("c{n}")))
            .await
            .expect("append");
    }
    let mark = s.folder_info(f.id).await.expect("info").highest_modseq;
    let none = s.changes_since(f.id, mark).await.expect("changes");
    assert!(
        none.changed.is_empty() && none.vanished.is_empty(),
        "nothing after the mark: {none:?}"
    );
    s.store_flags(
        f.id,
        &[2],
        FlagChange {
            op: FlagOp::Add,
            flags: flags::FLAGGED,
            keywords: vec![],
            unchanged_since: None,
        },
    )
    .await
    .expect("store");
    s.expunge(f.id, Some(&[4]), false).await.expect("expunge");
    let new = s
        .append("alice", "INBOX", append_of("c5"))
        .await
        .expect("append")
        .uid;
    let c = s.changes_since(f.id, mark).await.expect("changes");
    let changed: Vec<u32> = c.changed.iter().map(|m| m.uid).collect();
    assert_eq!(changed, vec![2, new], "changed copies, in UID order");
    assert_eq!(c.vanished, vec![4], "expunged UIDs");
    assert_eq!(
        c.highest_modseq,
        s.folder_info(f.id).await.expect("info").highest_modseq
    );
    let c0 = s.changes_since(f.id, 0).await.expect("changes");
    assert_eq!(c0.changed.len(), 5, "from 0: every copy");
    assert_eq!(c0.vanished, vec![4]);
    // A flag set twice is one entry; the copy's older MODSEQ is gone.
    s.store_flags(
        f.id,
        &[2],
        FlagChange {
            op: FlagOp::Add,
            flags: flags::SEEN,
            keywords: vec![],
            unchanged_since: None,
        },
    )
    .await
    .expect("store");
    let c = s.changes_since(f.id, mark).await.expect("changes");
    assert_eq!(c.changed.iter().filter(|m| m.uid == 2).count(), 1);
}

/// System flags and keywords: add, remove, replace, case-insensitive
/// keywords, UNCHANGEDSINCE, and the unseen/deleted counters.
pub async fn flags_and_keywords(b: &dyn Backend) {
    let s = b.open().await;
    let f = inbox(&*s, "alice").await;
    let u = s
        .append("alice", "INBOX", append_of("f"))
        .await
        .expect("append")
        .uid;
    let v = s
        .append(
            "alice",
            "INBOX",
            Append {
                flags: flags::SEEN | flags::DRAFT,
                keywords: vec!["$Forwarded".into()],
                ..append_of("g")
            },
        )
        .await
        .expect("append")
        .uid;
    let info = s.folder_info(f.id).await.expect("info");
    assert_eq!((info.exists, info.unseen, info.deleted), (2, 1, 0));
    let ch = |op, flags, kw: &[&str]| FlagChange {
        op,
        flags,
        keywords: kw.iter().map(|k| k.to_string()).collect(),
        unchanged_since: None,
    };
    s.store_flags(
        f.id,
        &[u],
        ch(
            FlagOp::Add,
            flags::SEEN | flags::DELETED,
            &["$Junk", "work"],
        ),
    )
    .await
    .expect("store");
    s.store_flags(f.id, &[u], ch(FlagOp::Add, 0, &["WORK"]))
        .await
        .expect("store");
    let m = &s.metas(f.id, &[u]).await.expect("metas")[0];
    assert_eq!(m.flags, flags::SEEN | flags::DELETED);
    assert_eq!(
        m.keywords,
        vec!["$Junk".to_string(), "work".to_string()],
        "keywords compare without case"
    );
    let info = s.folder_info(f.id).await.expect("info");
    assert_eq!((info.unseen, info.deleted), (0, 1));
    s.store_flags(f.id, &[u], ch(FlagOp::Remove, flags::DELETED, &["$junk"]))
        .await
        .expect("store");
    let m = &s.metas(f.id, &[u]).await.expect("metas")[0];
    assert_eq!(
        (m.flags, m.keywords.clone()),
        (flags::SEEN, vec!["work".to_string()])
    );
    s.store_flags(f.id, &[u, v], ch(FlagOp::Replace, flags::FLAGGED, &[]))
        .await
        .expect("store");
    for m in s.metas(f.id, &[u, v]).await.expect("metas") {
        assert_eq!(
            (m.flags, m.keywords.len()),
            (flags::FLAGGED, 0),
            "replace sets exactly"
        );
    }
    let before = s.metas(f.id, &[u]).await.expect("metas")[0].modseq;
    let r = s
        .store_flags(
            f.id,
            &[u, v],
            FlagChange {
                unchanged_since: Some(before - 1),
                ..ch(FlagOp::Add, flags::ANSWERED, &[])
            },
        )
        .await
        .expect("store");
    assert!(
        r.failed.contains(&u),
        "UNCHANGEDSINCE below the copy's MODSEQ fails it: {r:?}"
    );
    let unchanged = s.folder_info(f.id).await.expect("info").highest_modseq;
    let r = s
        .store_flags(f.id, &[v], ch(FlagOp::Add, flags::FLAGGED, &[]))
        .await
        .expect("store");
    assert_eq!(r.updated.len(), 1);
    assert_eq!(
        s.folder_info(f.id).await.expect("info").highest_modseq,
        unchanged,
        "a STORE that changes nothing is no change"
    );
    let r = s
        .store_flags(f.id, &[999], ch(FlagOp::Add, flags::SEEN, &[]))
        .await
        .expect("store");
    assert!(
        r.updated.is_empty() && r.failed.is_empty(),
        "absent UIDs are skipped"
    );
    // Expunge of only \Deleted copies.
    s.store_flags(f.id, &[v], ch(FlagOp::Add, flags::DELETED, &[]))
        .await
        .expect("store");
    assert_eq!(s.expunge(f.id, None, true).await.expect("expunge"), vec![v]);
    assert_eq!(uids(&*s, f.id).await, vec![u]);
}

/// COPY and MOVE: new UIDs in the target (COPYUID), flags kept, content
/// shared and identical; MOVE removes the sources.
pub async fn copy_and_move(b: &dyn Backend) {
    let s = b.open().await;
    let f = inbox(&*s, "alice").await;
    let arch = s
        .folder("alice", "Archive")
        .await
        .expect("folder")
        .expect("Archive");
    for n in 0..3 {
        s.append(
            "alice",
            "INBOX",
            Append {
                flags: flags::FLAGGED,
                keywords: vec!["k".into()],
                ..append_of(&format!("cp{n}"))
            },
        )
        .await
        .expect("append");
    }
    let body1 = s.read(f.id, 1, None).await.expect("read");
    let c = s
        .copy(f.id, &[1, 2, 77], arch.id, false, None)
        .await
        .expect("copy");
    assert_eq!(c.uid_validity, arch.uid_validity);
    assert_eq!((c.from.clone(), c.to.clone()), (vec![1, 2], vec![1, 2]));
    assert_eq!(
        uids(&*s, f.id).await,
        vec![1, 2, 3],
        "COPY leaves the sources"
    );
    let copied = s.metas(arch.id, &[1]).await.expect("metas");
    assert_eq!(copied[0].flags, flags::FLAGGED);
    assert_eq!(copied[0].keywords, vec!["k".to_string()]);
    assert_eq!(
        copied[0].blob,
        s.metas(f.id, &[1]).await.expect("metas")[0].blob,
        "one body for both copies"
    );
    assert_eq!(s.read(arch.id, 1, None).await.expect("read"), body1);
    let usage = s.usage("alice").await.expect("usage");
    assert_eq!(usage.messages, 5);
    let m = s.copy(f.id, &[3], arch.id, true, None).await.expect("move");
    assert_eq!(m.to, vec![3]);
    assert_eq!(uids(&*s, f.id).await, vec![1, 2], "MOVE removes the source");
    assert_eq!(uids(&*s, arch.id).await, vec![1, 2, 3]);
    let c = s.changes_since(f.id, 0).await.expect("changes");
    assert_eq!(c.vanished, vec![3], "a moved copy vanishes from its source");
    let other = s
        .folder("bob", "INBOX")
        .await
        .expect("folder")
        .expect("INBOX");
    assert!(
        s.copy(f.id, &[1], other.id, false, None).await.is_err(),
        "no copies across accounts"
    );
}

/// RENAME moves a folder and its children without touching messages;
/// renaming INBOX moves its messages and leaves INBOX empty.
pub async fn rename_with_children(b: &dyn Backend) {
    let s = b.open().await;
    s.create_folder("alice", "Work/2026/Q1", None)
        .await
        .expect("create with parents");
    let names = |fs: Vec<FolderInfo>| fs.into_iter().map(|f| f.name).collect::<Vec<_>>();
    let all = names(s.folders("alice").await.expect("folders"));
    assert!(
        all.contains(&"Work".to_string()) && all.contains(&"Work/2026".to_string()),
        "parents made: {all:?}"
    );
    let q1 = s
        .folder("alice", "Work/2026/Q1")
        .await
        .expect("folder")
        .expect("there");
    s.append("alice", "Work/2026/Q1", append_of("q1"))
        .await
        .expect("append");
    assert!(matches!(
        s.create_folder("alice", "Work", None).await,
        Err(StoreError::Exists(_))
    ));
    s.create_folder("alice", "Play", None)
        .await
        .expect("create");
    assert!(
        matches!(
            s.rename_folder("alice", "Work", "Play").await,
            Err(StoreError::Exists(_))
        ),
        "target exists"
    );
    assert!(
        s.rename_folder("alice", "Work", "Work/Sub").await.is_err(),
        "not into itself"
    );
    assert!(matches!(
        s.rename_folder("alice", "Nope", "X").await,
        Err(StoreError::NotFound(_))
    ));
    s.rename_folder("alice", "Work", "Jobs/Old")
        .await
        .expect("rename");
    let all = names(s.folders("alice").await.expect("folders"));
    for want in ["Jobs", "Jobs/Old", "Jobs/Old/2026", "Jobs/Old/2026/Q1"] {
        assert!(
            all.contains(&want.to_string()),
            "{want} after rename: {all:?}"
        );
    }
    assert!(
        !all.iter().any(|n| n.starts_with("Work")),
        "old names gone: {all:?}"
    );
    let moved = s
        .folder("alice", "Jobs/Old/2026/Q1")
        .await
        .expect("folder")
        .expect("there");
    assert_eq!(
        (moved.id, moved.uid_validity, moved.exists),
        (q1.id, q1.uid_validity, 1),
        "same folder, same messages"
    );
    // INBOX.
    let inbox_before = inbox(&*s, "alice").await;
    s.append("alice", "INBOX", append_of("i1"))
        .await
        .expect("append");
    s.rename_folder("alice", "INBOX", "Old Inbox")
        .await
        .expect("rename INBOX");
    let old = s
        .folder("alice", "Old Inbox")
        .await
        .expect("folder")
        .expect("there");
    assert_eq!(old.exists, 1, "INBOX's messages moved");
    let fresh = inbox(&*s, "alice").await;
    assert_eq!(fresh.exists, 0, "INBOX stays, empty");
    assert_ne!(fresh.id, inbox_before.id);
    assert!(matches!(
        s.rename_folder("alice", "Play", "inbox").await,
        Err(StoreError::Exists(_))
    ));
}

/// DELETE removes a folder and its messages; INBOX cannot be deleted;
/// a folder made again under the same name is a new folder.
pub async fn delete_folders(b: &dyn Backend) {
    let s = b.open().await;
    s.create_folder("alice", "Tmp/Child", None)
        .await
        .expect("create");
    let tmp = s
        .folder("alice", "Tmp")
        .await
        .expect("folder")
        .expect("there");
    s.append("alice", "Tmp", append_of("t"))
        .await
        .expect("append");
    assert!(matches!(
        s.delete_folder("alice", "INBOX").await,
        Err(StoreError::Refused(_))
    ));
    assert!(matches!(
        s.delete_folder("alice", "Nope").await,
        Err(StoreError::NotFound(_))
    ));
    s.delete_folder("alice", "Tmp").await.expect("delete");
    assert!(s.folder("alice", "Tmp").await.expect("folder").is_none());
    assert!(
        s.folder("alice", "Tmp/Child")
            .await
            .expect("folder")
            .is_some(),
        "children stay"
    );
    assert_eq!(
        s.usage("alice").await.expect("usage").messages,
        0,
        "its messages are gone"
    );
    let again = s
        .create_folder("alice", "Tmp", None)
        .await
        .expect("create again");
    assert_ne!(again.id, tmp.id);
    assert_ne!(again.uid_validity, tmp.uid_validity, "a new UIDVALIDITY");
    assert_eq!(again.uid_next, 1);
}

/// Quotas: a target over its quota fails alone with OverQuota; APPEND
/// and COPY check it too.
pub async fn quotas(b: &dyn Backend) {
    let s = b.open().await;
    let c = content("big", 10_000);
    let target = |a: &str, quota| DeliveryTarget {
        account: a.into(),
        folder: "INBOX".into(),
        prefix: b"Delivered-To: x\r\n".to_vec(),
        quota,
    };
    let r = s
        .deliver(Delivery {
            origin: 1,
            queue_id: 1,
            content: c.clone(),
            targets: vec![target("small", Some(5_000)), target("large", Some(1 << 20))],
        })
        .await
        .expect("deliver");
    assert!(matches!(r[0], Err(StoreError::OverQuota(_))), "{r:?}");
    assert!(r[1].is_ok());
    assert_eq!(s.usage("small").await.expect("usage").messages, 0);
    let used = s.usage("large").await.expect("usage");
    assert_eq!(used.bytes, 10_000 + 17);
    let q = Some(used.bytes + 100);
    assert!(matches!(
        s.append(
            "large",
            "INBOX",
            Append {
                quota: q,
                ..append_of("x")
            }
        )
        .await,
        Err(StoreError::OverQuota(_))
    ));
    let inbox = inbox(&*s, "large").await;
    let sent = s
        .folder("large", "Sent")
        .await
        .expect("folder")
        .expect("Sent");
    assert!(matches!(
        s.copy(inbox.id, &[1], sent.id, false, q).await,
        Err(StoreError::OverQuota(_))
    ));
    assert!(
        s.copy(inbox.id, &[1], sent.id, true, q).await.is_ok(),
        "a MOVE does not grow the account"
    );
}

/// One body per delivery for every target, each with its prefix; a
/// delivery repeated with the same queue id is not stored twice; the
/// body goes with its last copy.
pub async fn delivery_shares_one_body(b: &dyn Backend) {
    let s = b.open().await;
    let c = content("shared", 5_000);
    let targets: Vec<DeliveryTarget> = (0..5)
        .map(|n| DeliveryTarget {
            account: format!("u{n}"),
            folder: "INBOX".into(),
            prefix: format!("Delivered-To: u{n}@x\r\n").into_bytes(),
            quota: None,
        })
        .collect();
    let d = Delivery {
        origin: 1,
        queue_id: 42,
        content: c.clone(),
        targets,
    };
    let placed: Vec<Placed> = s
        .deliver(d.clone())
        .await
        .expect("deliver")
        .into_iter()
        .map(|r| r.expect("placed"))
        .collect();
    let again: Vec<Placed> = s
        .deliver(d)
        .await
        .expect("deliver")
        .into_iter()
        .map(|r| r.expect("placed"))
        .collect();
    assert_eq!(placed, again, "a repeated delivery is recognised");
    let mut blobs = Vec::new();
    for (n, p) in placed.iter().enumerate() {
        assert_eq!(uids(&*s, p.folder).await, vec![1], "one copy in u{n}");
        let body = s.read(p.folder, p.uid, None).await.expect("read");
        let prefix = format!("Delivered-To: u{n}@x\r\n");
        assert!(body.starts_with(prefix.as_bytes()));
        assert_eq!(&body[prefix.len()..], &c.content[..]);
        let part = s
            .read(
                p.folder,
                p.uid,
                Some(prefix.len() as u64 - 2..prefix.len() as u64 + 4),
            )
            .await
            .expect("read");
        assert_eq!(part, b"\r\nFrom");
        let m = &s.messages(p.folder).await.expect("messages")[0];
        assert_eq!(m.size, body.len() as u64);
        blobs.push(m.blob);
    }
    blobs.dedup();
    assert_eq!(blobs.len(), 1, "one blob for all targets");
    let summary = s.summary(blobs[0]).await.expect("summary");
    assert_eq!(
        summary.envelope.subject.as_deref(),
        Some(&b"shared"[..]),
        "the envelope is cached"
    );
    // Many at once, in order, a missing one as None.
    let many = s
        .summaries(&[blobs[0], BlobId(u64::MAX), blobs[0]])
        .await
        .expect("summaries");
    assert_eq!(many.len(), 3);
    assert!(many[1].is_none(), "no such blob");
    for got in [&many[0], &many[2]] {
        assert_eq!(
            got.as_ref().expect("found").envelope.subject.as_deref(),
            Some(&b"shared"[..])
        );
    }
    for p in &placed[..4] {
        s.expunge(p.folder, None, false).await.expect("expunge");
    }
    assert!(s.summary(blobs[0]).await.is_ok(), "alive while one copy is");
    s.expunge(placed[4].folder, None, false)
        .await
        .expect("expunge");
    assert!(
        s.summary(blobs[0]).await.is_err(),
        "freed with the last copy"
    );
}

/// Subscriptions are names, independent of folders.
pub async fn subscriptions(b: &dyn Backend) {
    let s = b.open().await;
    s.set_subscribed("alice", "Lists/rust", true)
        .await
        .expect("subscribe");
    assert!(
        s.subscriptions("alice")
            .await
            .expect("subs")
            .contains(&"Lists/rust".to_string())
    );
    s.set_subscribed("alice", "Lists/rust", false)
        .await
        .expect("unsubscribe");
    s.set_subscribed("alice", "Junk", false)
        .await
        .expect("unsubscribe");
    let subs = s.subscriptions("alice").await.expect("subs");
    assert!(!subs.contains(&"Lists/rust".to_string()) && !subs.contains(&"Junk".to_string()));
    assert!(
        !s.folder("alice", "Junk")
            .await
            .expect("folder")
            .expect("Junk")
            .subscribed
    );
}

/// Watchers hear of changes after they are durable; the POP3 lock is
/// exclusive until dropped.
pub async fn watch_and_lock(b: &dyn Backend) {
    let s = b.open().await;
    let f = inbox(&*s, "alice").await;
    let mut rx = s.watch();
    s.append("alice", "INBOX", append_of("w"))
        .await
        .expect("append");
    let ev = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("an event")
        .expect("event");
    assert_eq!((ev.folder, ev.account_hash), (f.id, account_hash("alice")));
    assert_eq!(
        ev.modseq,
        s.folder_info(f.id).await.expect("info").highest_modseq
    );
    let g = s.lock_maildrop("alice").await.expect("lock").expect("free");
    assert!(
        s.lock_maildrop("ALICE").await.expect("lock").is_none(),
        "held"
    );
    drop(g);
    assert!(
        s.lock_maildrop("alice").await.expect("lock").is_some(),
        "released on drop"
    );
}

/// restore keeps UIDs, UIDVALIDITY and the next UID, and is idempotent.
pub async fn restore_keeps_uids(b: &dyn Backend) {
    let s = b.open().await;
    let msgs = vec![(3, append_of("r3")), (7, append_of("r7"))];
    s.restore("carol", "INBOX", 1234, 10, msgs.clone())
        .await
        .expect("restore");
    s.restore("carol", "INBOX", 1234, 10, msgs)
        .await
        .expect("restore again");
    let f = inbox(&*s, "carol").await;
    assert_eq!((f.uid_validity, f.uid_next, f.exists), (1234, 10, 2));
    assert_eq!(uids(&*s, f.id).await, vec![3, 7]);
    assert_eq!(
        s.append("carol", "INBOX", append_of("n"))
            .await
            .expect("append")
            .uid,
        10
    );
    // An expunged UID is not given again by a restore either.
    s.expunge(f.id, Some(&[7]), false).await.expect("expunge");
    s.restore("carol", "INBOX", 1234, 10, vec![(7, append_of("r7 again"))])
        .await
        .expect("restore");
    assert_eq!(uids(&*s, f.id).await, vec![3, 10], "UID 7 stays expunged");
    assert!(
        s.create_folder("carol", "a*b", None).await.is_err(),
        "LIST wildcards are no folder names"
    );
}

/// Runs every behaviour above, each on a fresh store from `fresh`.
pub async fn run_all<B: Backend>(fresh: impl Fn() -> B) {
    standard_folders(&fresh()).await;
    uids_never_reused(&fresh()).await;
    modseq_grows_per_change(&fresh()).await;
    changes_since_is_exact(&fresh()).await;
    flags_and_keywords(&fresh()).await;
    copy_and_move(&fresh()).await;
    rename_with_children(&fresh()).await;
    delete_folders(&fresh()).await;
    quotas(&fresh()).await;
    delivery_shares_one_body(&fresh()).await;
    subscriptions(&fresh()).await;
    watch_and_lock(&fresh()).await;
    restore_keeps_uids(&fresh()).await;
}
