//! The PostgreSQL backend of the message store (`[store] backend =
//! "postgres"`): the shared store of several petrel nodes.
//!
//! Tables (made by `open` if missing; `petrel_meta` holds the schema
//! version and the last UIDVALIDITY given):
//! - `accounts` (name in lower case, octets and copies in use),
//! - `folders` (per account and name: UIDVALIDITY, next UID,
//!   HIGHESTMODSEQ, the counters `exists_`, `unseen`, `deleted`, `size`,
//!   special use), `subscriptions` (names, which need not exist),
//! - `blobs` (the content once per delivery, its `mime::Summary` as a
//!   bincode record, a reference count), `messages` (one row per copy:
//!   UID, MODSEQ, flags, keywords, INTERNALDATE, blob, per-copy prefix),
//! - `vanished` (expunged UIDs with the MODSEQ of their removal, for
//!   QRESYNC), `delivered` (origin spool, queue id, folder → UID: a local
//!   delivery repeated after a crash is not stored twice).
//!
//! Concurrency: every change runs in one transaction that first locks the
//! folder rows it changes (`SELECT … FOR UPDATE`), so UIDs and MODSEQs are
//! allocated under the row lock and writers on several nodes never give a
//! UID twice; a deadlock, a serialization failure or a unique-key race
//! (two nodes making one account at once) rolls back and runs again.
//! Durability is PostgreSQL's: a call returns after its COMMIT, which
//! with the default `synchronous_commit = on` is on the server's disk.
//!
//! Change events go to this process's watchers at once after the commit,
//! and to the other nodes by `NOTIFY petrel_store` inside the same
//! transaction (delivered at its commit): one connection per node LISTENs
//! and passes other nodes' events on (`listen`).
//!
//! POP3's maildrop lock is a PostgreSQL advisory lock (key: the account's
//! hash) held on one connection per node (`locker`), with a set in memory
//! for the sessions of this node; a node that dies loses its connection,
//! and the server releases its locks.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};

use super::*;
use crate::spool::record::{decode, encode};

/// The schema this code writes (`petrel_meta.schema`).
const SCHEMA_VERSION: i64 = 1;

/// How many times a transaction that lost a race runs again.
const RETRIES: u32 = 10;

/// The NOTIFY channel of change events.
const CHANNEL: &str = "petrel_store";

/// A NOTIFY payload must stay under 8,000 octets.
const PAYLOAD_MAX: usize = 7_000;

const SCHEMA: &str = r#"
SET LOCAL client_min_messages = warning;
CREATE TABLE IF NOT EXISTS petrel_meta (
    key text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO petrel_meta (key, value) VALUES ('uidvalidity', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS accounts (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    bytes bigint NOT NULL DEFAULT 0,
    messages bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS folders (
    id bigserial PRIMARY KEY,
    account bigint NOT NULL REFERENCES accounts (id),
    name text NOT NULL,
    uid_validity bigint NOT NULL,
    uid_next bigint NOT NULL DEFAULT 1,
    highest_modseq bigint NOT NULL DEFAULT 1,
    exists_ integer NOT NULL DEFAULT 0,
    unseen integer NOT NULL DEFAULT 0,
    deleted integer NOT NULL DEFAULT 0,
    size bigint NOT NULL DEFAULT 0,
    special_use smallint,
    UNIQUE (account, name)
);
CREATE TABLE IF NOT EXISTS subscriptions (
    account bigint NOT NULL REFERENCES accounts (id),
    name text NOT NULL,
    PRIMARY KEY (account, name)
);
CREATE TABLE IF NOT EXISTS blobs (
    id bigserial PRIMARY KEY,
    refs integer NOT NULL,
    len bigint NOT NULL,
    summary bytea NOT NULL,
    content bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    folder bigint NOT NULL REFERENCES folders (id),
    uid bigint NOT NULL,
    modseq bigint NOT NULL,
    flags smallint NOT NULL,
    keywords text[] NOT NULL,
    internal_date bigint NOT NULL,
    blob bigint NOT NULL REFERENCES blobs (id),
    blob_len bigint NOT NULL,
    prefix bytea NOT NULL,
    queue_id bigint,
    PRIMARY KEY (folder, uid)
);
CREATE INDEX IF NOT EXISTS messages_by_modseq ON messages (folder, modseq);
CREATE INDEX IF NOT EXISTS messages_by_blob ON messages (blob);
CREATE TABLE IF NOT EXISTS vanished (
    folder bigint NOT NULL,
    modseq bigint NOT NULL,
    uid bigint NOT NULL,
    PRIMARY KEY (folder, modseq, uid)
);
CREATE TABLE IF NOT EXISTS delivered (
    origin bigint NOT NULL,
    queue_id bigint NOT NULL,
    folder bigint NOT NULL,
    uid bigint NOT NULL,
    PRIMARY KEY (origin, queue_id, folder)
);
INSERT INTO petrel_meta (key, value) VALUES ('schema', 1) ON CONFLICT DO NOTHING;
"#;

/// The store on a shared PostgreSQL database.
pub struct PostgresStore {
    pool: Pool,
    events: broadcast::Sender<ChangeEvent>,
    /// This process's mark on the events it NOTIFYs, so its listener
    /// skips them (they were sent to its watchers already).
    node: u64,
    locks: Arc<Mutex<HashSet<String>>>,
    locker: mpsc::UnboundedSender<LockRequest>,
    deliveries: mpsc::UnboundedSender<DeliveryJob>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("node", &self.node)
            .finish()
    }
}

/// Why a transaction stopped: a store answer, or the database's error
/// (which may mean "run it again").
enum Fail {
    Store(StoreError),
    Pg(tokio_postgres::Error),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

impl Fail {
    fn retryable(&self) -> bool {
        match self {
            Fail::Pg(e) => e.code().is_some_and(|c| {
                *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::UNIQUE_VIOLATION
            }),
            Fail::Store(_) => false,
        }
    }

    fn into_store(self) -> StoreError {
        match self {
            Fail::Store(e) => e,
            Fail::Pg(e) => pg(e),
        }
    }
}

/// A database error as the store reports it: the database cannot serve
/// now (down, restarting, out of connections) — try again later.
fn pg(e: tokio_postgres::Error) -> StoreError {
    let text = match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {} ({})", db.message(), db.code().code()),
        None => format!("PostgreSQL: {e}"),
    };
    StoreError::Unavailable(text)
}

type R<T> = Result<T, Fail>;

/// Runs `$body` in a transaction on a pooled connection, again after a
/// lost race, and commits; evaluates to `Result<_, StoreError>`.
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:block) => {{
        let mut tries = 0u32;
        loop {
            let mut client = $store.client().await?;
            let result: R<_> = async {
                let $tx = client.transaction().await?;
                let value = $body;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            match result {
                Ok(v) => break Ok::<_, StoreError>(v),
                Err(e) if e.retryable() && tries < RETRIES => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(2u64 << tries.min(7))).await;
                }
                Err(e) => break Err(e.into_store()),
            }
        }
    }};
}

async fn rows<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query(&st, params).await
}

async fn row<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query_opt(&st, params).await
}

async fn exec<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.execute(&st, params).await
}

fn special_code(u: Option<SpecialUse>) -> Option<i16> {
    u.map(|u| match u {
        SpecialUse::Sent => 1,
        SpecialUse::Drafts => 2,
        SpecialUse::Trash => 3,
        SpecialUse::Junk => 4,
        SpecialUse::Archive => 5,
    })
}

fn special_of(code: Option<i16>) -> Option<SpecialUse> {
    match code? {
        1 => Some(SpecialUse::Sent),
        2 => Some(SpecialUse::Drafts),
        3 => Some(SpecialUse::Trash),
        4 => Some(SpecialUse::Junk),
        5 => Some(SpecialUse::Archive),
        _ => None,
    }
}

/// A folder's row, as read (and locked) inside a transaction.
#[derive(Debug, Clone)]
struct FolderRow {
    id: i64,
    account: i64,
    account_name: String,
    name: String,
    uid_validity: i64,
    uid_next: i64,
    highest_modseq: i64,
    exists: i32,
    unseen: i32,
    deleted: i32,
    size: i64,
    special_use: Option<i16>,
    subscribed: bool,
}

const FOLDER_COLS: &str = "f.id, f.account, a.name, f.name, f.uid_validity, f.uid_next, \
     f.highest_modseq, f.exists_, f.unseen, f.deleted, f.size, f.special_use, \
     EXISTS (SELECT 1 FROM subscriptions s WHERE s.account = f.account AND s.name = f.name) \
     FROM folders f JOIN accounts a ON a.id = f.account";

impl FolderRow {
    fn of(r: &Row) -> FolderRow {
        FolderRow {
            id: r.get(0),
            account: r.get(1),
            account_name: r.get(2),
            name: r.get(3),
            uid_validity: r.get(4),
            uid_next: r.get(5),
            highest_modseq: r.get(6),
            exists: r.get(7),
            unseen: r.get(8),
            deleted: r.get(9),
            size: r.get(10),
            special_use: r.get(11),
            subscribed: r.get(12),
        }
    }

    fn info(&self) -> FolderInfo {
        FolderInfo {
            id: FolderId(self.id as u64),
            name: self.name.clone(),
            uid_validity: self.uid_validity as u32,
            uid_next: self.uid_next as u32,
            highest_modseq: self.highest_modseq as u64,
            exists: self.exists.max(0) as u32,
            unseen: self.unseen.max(0) as u32,
            deleted: self.deleted.max(0) as u32,
            size: self.size.max(0) as u64,
            special_use: special_of(self.special_use),
            subscribed: self.subscribed,
        }
    }

    fn event(&self) -> ChangeEvent {
        ChangeEvent {
            account_hash: account_hash(&self.account_name),
            folder: FolderId(self.id as u64),
            modseq: self.highest_modseq as u64,
        }
    }

    /// Counts a copy in (`sign` 1) or out (`sign` -1).
    fn count(&mut self, flags: u16, size: i64, sign: i32) {
        self.exists += sign;
        if flags & flags::SEEN == 0 {
            self.unseen += sign;
        }
        if flags & flags::DELETED != 0 {
            self.deleted += sign;
        }
        self.size += size * i64::from(sign);
    }
}

/// A message copy's row.
struct MsgRow {
    uid: i64,
    modseq: i64,
    flags: i16,
    keywords: Vec<String>,
    internal_date: i64,
    blob: i64,
    blob_len: i64,
    prefix_len: i32,
    queue_id: Option<i64>,
}

const MSG_COLS: &str = "uid, modseq, flags, keywords, internal_date, blob, blob_len, \
     octet_length(prefix), queue_id";

impl MsgRow {
    fn of(r: &Row) -> MsgRow {
        MsgRow {
            uid: r.get(0),
            modseq: r.get(1),
            flags: r.get(2),
            keywords: r.get(3),
            internal_date: r.get(4),
            blob: r.get(5),
            blob_len: r.get(6),
            prefix_len: r.get(7),
            queue_id: r.get(8),
        }
    }

    fn size(&self) -> i64 {
        self.blob_len + i64::from(self.prefix_len)
    }

    fn meta(&self) -> MessageMeta {
        MessageMeta {
            uid: self.uid as u32,
            modseq: self.modseq as u64,
            flags: self.flags as u16,
            keywords: self.keywords.clone(),
            internal_date: self.internal_date,
            size: self.size() as u64,
            blob: BlobId(self.blob as u64),
            prefix_len: self.prefix_len as u32,
            queue_id: self.queue_id.map(|q| q as u64),
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The changes one transaction makes, for watchers: the last MODSEQ of
/// each folder it touched.
#[derive(Default)]
struct Events(Vec<ChangeEvent>);

impl Events {
    fn push(&mut self, f: &FolderRow) {
        let ev = f.event();
        match self.0.iter_mut().find(|e| e.folder == ev.folder) {
            Some(e) => *e = ev,
            None => self.0.push(ev),
        }
    }
}

/// Tells the other nodes of these changes at the transaction's commit.
async fn notify<C: GenericClient + Sync>(c: &C, node: u64, events: &Events) -> R<()> {
    let mut payload = String::new();
    for e in &events.0 {
        if payload.len() > PAYLOAD_MAX {
            exec(c, "SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]).await?;
            payload.clear();
        }
        if payload.is_empty() {
            payload.push_str(&format!("{node:x}"));
        }
        payload.push_str(&format!(
            " {:x}:{}:{}",
            e.account_hash, e.folder.0, e.modseq
        ));
    }
    if !payload.is_empty() {
        exec(c, "SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]).await?;
    }
    Ok(())
}

/// Reads a NOTIFY payload: the sending node and its events.
fn parse_payload(text: &str) -> Option<(u64, Vec<ChangeEvent>)> {
    let mut parts = text.split(' ');
    let node = u64::from_str_radix(parts.next()?, 16).ok()?;
    let mut out = Vec::new();
    for p in parts {
        let mut f = p.split(':');
        let account_hash = u64::from_str_radix(f.next()?, 16).ok()?;
        let folder = FolderId(f.next()?.parse().ok()?);
        let modseq = f.next()?.parse().ok()?;
        out.push(ChangeEvent {
            account_hash,
            folder,
            modseq,
        });
    }
    Some((node, out))
}

// ---- the parts of transactions ----

async fn account_id<C: GenericClient + Sync>(c: &C, key: &str) -> R<Option<i64>> {
    Ok(row(c, "SELECT id FROM accounts WHERE name = $1", &[&key])
        .await?
        .map(|r| r.get(0)))
}

/// The account's id, made with its standard folders (subscribed) if new.
async fn open_account<C: GenericClient + Sync>(c: &C, name: &str) -> R<i64> {
    let key = account_key(name);
    if key.is_empty() {
        return Err(StoreError::Refused("an account needs a name".into()).into());
    }
    if let Some(id) = account_id(c, &key).await? {
        return Ok(id);
    }
    // Two nodes making it at once: the loser's INSERT fails on the unique
    // name and its transaction runs again, finding the account.
    let id: i64 = row(
        c,
        "INSERT INTO accounts (name) VALUES ($1) RETURNING id",
        &[&key],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or_else(|| StoreError::Corrupt("no account id".into()))?;
    make_folder(c, id, "INBOX", None).await?;
    for (use_, name) in SpecialUse::STANDARD {
        make_folder(c, id, name, Some(use_)).await?;
    }
    for name in std::iter::once("INBOX").chain(SpecialUse::STANDARD.iter().map(|s| s.1)) {
        exec(
            c,
            "INSERT INTO subscriptions (account, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&id, &name],
        )
        .await?;
    }
    Ok(id)
}

async fn make_folder<C: GenericClient + Sync>(
    c: &C,
    account: i64,
    name: &str,
    special_use: Option<SpecialUse>,
) -> R<i64> {
    // UIDVALIDITY: the time, or one more than the last given if that is
    // later (two folders made in one second differ).
    let v: i64 = row(
        c,
        "UPDATE petrel_meta SET value = LEAST(GREATEST(value + 1, $1), 4294967295) \
         WHERE key = 'uidvalidity' RETURNING value",
        &[&now()],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or_else(|| StoreError::Corrupt("petrel_meta has no uidvalidity".into()))?;
    let id: i64 = row(
        c,
        "INSERT INTO folders (account, name, uid_validity, special_use) \
         VALUES ($1, $2, $3, $4) RETURNING id",
        &[&account, &name, &v, &special_code(special_use)],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or_else(|| StoreError::Corrupt("no folder id".into()))?;
    Ok(id)
}

async fn folder_id<C: GenericClient + Sync>(c: &C, account: i64, name: &str) -> R<Option<i64>> {
    Ok(row(
        c,
        "SELECT id FROM folders WHERE account = $1 AND name = $2",
        &[&account, &name],
    )
    .await?
    .map(|r| r.get(0)))
}

async fn make_parents<C: GenericClient + Sync>(c: &C, account: i64, name: &str) -> R<()> {
    let mut at = 0;
    while let Some(p) = name[at..].find(DELIMITER) {
        let parent = &name[..at + p];
        if folder_id(c, account, parent).await?.is_none() {
            make_folder(c, account, parent, None).await?;
        }
        at += p + 1;
    }
    Ok(())
}

/// Reads a folder's row, locking it for this transaction.
async fn lock_folder<C: GenericClient + Sync>(c: &C, id: i64) -> R<FolderRow> {
    let sql = format!("SELECT {FOLDER_COLS} WHERE f.id = $1 FOR UPDATE OF f");
    row(c, &sql, &[&id])
        .await?
        .map(|r| FolderRow::of(&r))
        .ok_or_else(|| StoreError::NotFound(format!("folder {id}")).into())
}

async fn save_folder<C: GenericClient + Sync>(c: &C, f: &FolderRow) -> R<()> {
    exec(
        c,
        "UPDATE folders SET name = $2, uid_validity = $3, uid_next = $4, highest_modseq = $5, \
         exists_ = $6, unseen = $7, deleted = $8, size = $9 WHERE id = $1",
        &[
            &f.id,
            &f.name,
            &f.uid_validity,
            &f.uid_next,
            &f.highest_modseq,
            &f.exists,
            &f.unseen,
            &f.deleted,
            &f.size,
        ],
    )
    .await?;
    Ok(())
}

/// Adds octets and copies to an account's use (negative to take away).
async fn account_add<C: GenericClient + Sync>(c: &C, id: i64, bytes: i64, msgs: i64) -> R<()> {
    if bytes != 0 || msgs != 0 {
        exec(
            c,
            "UPDATE accounts SET bytes = GREATEST(bytes + $2, 0), \
             messages = GREATEST(messages + $3, 0) WHERE id = $1",
            &[&id, &bytes, &msgs],
        )
        .await?;
    }
    Ok(())
}

async fn account_bytes<C: GenericClient + Sync>(c: &C, id: i64) -> R<u64> {
    Ok(row(c, "SELECT bytes FROM accounts WHERE id = $1", &[&id])
        .await?
        .map(|r| r.get::<_, i64>(0).max(0) as u64)
        .unwrap_or(0))
}

fn over_quota(used: u64, quota: Option<u64>, more: u64) -> Result<(), StoreError> {
    match quota {
        Some(q) if used.saturating_add(more) > q => Err(StoreError::OverQuota(format!(
            "{used} of {q} octets used, {more} more asked"
        ))),
        _ => Ok(()),
    }
}

/// Stores a body once, with `refs` copies referring to it.
async fn new_blob<C: GenericClient + Sync>(
    c: &C,
    content: &NewContent,
    refs: i32,
) -> R<(i64, i64)> {
    let len = content.content.len() as i64;
    let summary = encode(&*content.summary);
    let body: &[u8] = &content.content;
    let id: i64 = row(
        c,
        "INSERT INTO blobs (refs, len, summary, content) VALUES ($4, $1, $2, $3) RETURNING id",
        &[&len, &summary, &body, &refs],
    )
    .await?
    .map(|r| r.get(0))
    .ok_or_else(|| StoreError::Corrupt("no blob id".into()))?;
    Ok((id, len))
}

/// Changes blobs' reference counts; frees those that reach zero.
async fn blob_refs<C: GenericClient + Sync>(c: &C, blobs: &[i64], delta: i32) -> R<()> {
    if blobs.is_empty() {
        return Ok(());
    }
    exec(
        c,
        "UPDATE blobs b SET refs = b.refs + $2 * n.count \
         FROM (SELECT id, count(*)::integer AS count FROM unnest($1::bigint[]) AS id GROUP BY id) n \
         WHERE b.id = n.id",
        &[&blobs, &delta],
    )
    .await?;
    if delta < 0 {
        exec(
            c,
            "DELETE FROM blobs WHERE id = ANY($1) AND refs <= 0",
            &[&blobs],
        )
        .await?;
    }
    Ok(())
}

/// A copy to add to a folder.
struct NewCopy<'a> {
    flags: u16,
    keywords: Vec<String>,
    internal_date: i64,
    blob: i64,
    blob_len: i64,
    prefix: &'a [u8],
    queue_id: Option<i64>,
}

/// Adds a copy under `uid` (`None`: the folder's next UID) to the locked
/// folder `f`; the caller saves `f` and counts the account.
async fn add_copy<C: GenericClient + Sync>(
    c: &C,
    f: &mut FolderRow,
    uid: Option<u32>,
    m: &NewCopy<'_>,
) -> R<u32> {
    let uid = uid.map(i64::from).unwrap_or(f.uid_next);
    f.uid_next = f.uid_next.max(uid + 1);
    f.highest_modseq += 1;
    let size = m.blob_len + m.prefix.len() as i64;
    exec(
        c,
        "INSERT INTO messages (folder, uid, modseq, flags, keywords, internal_date, blob, \
         blob_len, prefix, queue_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &f.id,
            &uid,
            &f.highest_modseq,
            &(m.flags as i16),
            &m.keywords,
            &m.internal_date,
            &m.blob,
            &m.blob_len,
            &m.prefix,
            &m.queue_id,
        ],
    )
    .await?;
    f.count(m.flags, size, 1);
    Ok(uid as u32)
}

/// Removes copies from the locked folder `f`, remembering their UIDs as
/// vanished; returns the UIDs removed, in order. The caller saves `f`.
async fn remove_copies<C: GenericClient + Sync>(
    c: &C,
    f: &mut FolderRow,
    uids: &[i64],
    only_deleted: bool,
) -> R<Vec<u32>> {
    let gone = rows(
        c,
        "DELETE FROM messages WHERE folder = $1 AND uid = ANY($2) \
         AND ($3 = false OR flags & 8 <> 0) RETURNING uid, flags, blob, blob_len + octet_length(prefix)",
        &[&f.id, &uids, &only_deleted],
    )
    .await?;
    let mut removed: Vec<(i64, i16, i64, i64)> = gone
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    removed.sort_unstable_by_key(|r| r.0);
    let mut vanished_uids = Vec::with_capacity(removed.len());
    let mut modseqs = Vec::with_capacity(removed.len());
    let mut blobs = Vec::with_capacity(removed.len());
    let mut bytes = 0;
    for (uid, flags, blob, size) in &removed {
        f.highest_modseq += 1;
        vanished_uids.push(*uid);
        modseqs.push(f.highest_modseq);
        blobs.push(*blob);
        f.count(*flags as u16, *size, -1);
        bytes += size;
    }
    if !removed.is_empty() {
        exec(
            c,
            "INSERT INTO vanished (folder, modseq, uid) SELECT $1, m, u FROM unnest($2::bigint[], $3::bigint[]) AS t(m, u)",
            &[&f.id, &modseqs, &vanished_uids],
        )
        .await?;
        blob_refs(c, &blobs, -1).await?;
        account_add(c, f.account, -bytes, -(removed.len() as i64)).await?;
    }
    Ok(removed.into_iter().map(|r| r.0 as u32).collect())
}

/// The folder of `account` by name, the account made on first use.
async fn folder_by_name<C: GenericClient + Sync>(
    c: &C,
    account_name: &str,
    name: &str,
) -> R<(i64, i64)> {
    let a = open_account(c, account_name).await?;
    let name = normalize(name)?;
    match folder_id(c, a, &name).await? {
        Some(id) => Ok((a, id)),
        None => Err(StoreError::NotFound(name).into()),
    }
}

/// A standard folder (Junk, Sent, …) the user deleted is made again when
/// mail is delivered to it.
async fn standard_folder_again<C: GenericClient + Sync>(
    c: &C,
    account_name: &str,
    name: &str,
) -> R<(i64, i64)> {
    let Some((use_, std_name)) = SpecialUse::STANDARD
        .iter()
        .copied()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
    else {
        return Err(StoreError::NotFound(name.to_string()).into());
    };
    let a = open_account(c, account_name).await?;
    let id = make_folder(c, a, std_name, Some(use_)).await?;
    Ok((a, id))
}

async fn append_in<C: GenericClient + Sync>(
    c: &C,
    ev: &mut Events,
    account_name: &str,
    folder: &str,
    m: &Append,
    uid: Option<u32>,
) -> R<Placed> {
    let (a, fid) = folder_by_name(c, account_name, folder).await?;
    let len = m.content.content.len() as u64;
    over_quota(account_bytes(c, a).await?, m.quota, len)?;
    let mut f = lock_folder(c, fid).await?;
    let (blob, blob_len) = new_blob(c, &m.content, 1).await?;
    let copy = NewCopy {
        flags: m.flags & flags::ALL,
        keywords: dedup_keywords(&m.keywords),
        internal_date: m.internal_date.unwrap_or_else(now),
        blob,
        blob_len,
        prefix: &[],
        queue_id: m.queue_id.map(|q| q as i64),
    };
    let uid = add_copy(c, &mut f, uid, &copy).await?;
    account_add(c, a, blob_len, 1).await?;
    if let Some(q) = m.queue_id {
        // An APPEND carrying a queue id is the move of a delivered
        // message (store::migrate): its mark, under origin 0.
        exec(
            c,
            "INSERT INTO delivered (origin, queue_id, folder, uid) VALUES (0, $1, $2, $3) \
             ON CONFLICT DO NOTHING",
            &[&(q as i64), &fid, &i64::from(uid)],
        )
        .await?;
    }
    save_folder(c, &f).await?;
    ev.push(&f);
    Ok(Placed {
        folder: FolderId(fid as u64),
        uid_validity: f.uid_validity as u32,
        uid,
    })
}

/// One local delivery inside a transaction that may hold others: the
/// body once, a copy per target folder (locked in id order), the
/// delivered marks. One result per target.
async fn deliver_in<C: GenericClient + Sync>(
    c: &C,
    ev: &mut Events,
    d: &Delivery,
) -> R<Vec<Result<Placed, StoreError>>> {
    let origin = d.origin as i64;
    let queue_id = d.queue_id as i64;
    let len = d.content.content.len() as u64;
    let mut results: Vec<Option<Result<Placed, StoreError>>> = Vec::new();
    let mut pending: Vec<(usize, i64, i64)> = Vec::new();
    let mut dups = Vec::new();
    for (i, t) in d.targets.iter().enumerate() {
        let found = match folder_by_name(c, &t.account, &t.folder).await {
            Err(Fail::Store(StoreError::NotFound(_))) => {
                standard_folder_again(c, &t.account, &t.folder).await
            }
            r => r,
        };
        let (a, fid) = match found {
            Ok(x) => x,
            Err(Fail::Store(e @ (StoreError::NotFound(_) | StoreError::Refused(_)))) => {
                results.push(Some(Err(e)));
                continue;
            }
            Err(e) => return Err(e),
        };
        if d.queue_id != 0
            && let Some(r) = row(
                c,
                "SELECT d.uid, f.uid_validity FROM delivered d JOIN folders f ON f.id = d.folder \
                 WHERE d.origin = $1 AND d.queue_id = $2 AND d.folder = $3",
                &[&origin, &queue_id, &fid],
            )
            .await?
        {
            results.push(Some(Ok(Placed {
                folder: FolderId(fid as u64),
                uid_validity: r.get::<_, i64>(1) as u32,
                uid: r.get::<_, i64>(0) as u32,
            })));
            continue;
        }
        // Two targets in one folder: one copy, both told where it is.
        if let Some(&(j, _, _)) = pending.iter().find(|&&(_, f, _)| f == fid) {
            results.push(None);
            dups.push((i, j));
            continue;
        }
        if t.quota.is_some() {
            let size = len + t.prefix.len() as u64;
            if let Err(e) = over_quota(account_bytes(c, a).await?, t.quota, size) {
                results.push(Some(Err(e)));
                continue;
            }
        }
        results.push(None);
        pending.push((i, fid, a));
    }
    if !pending.is_empty() {
        // Folders locked in id order: two transactions delivering to the
        // same users never wait on each other in a circle.
        pending.sort_by_key(|p| p.1);
        let (blob, blob_len) = new_blob(c, &d.content, pending.len() as i32).await?;
        let when = now();
        for &(i, fid, a) in &pending {
            let t = &d.targets[i];
            let mut f = lock_folder(c, fid).await?;
            let copy = NewCopy {
                flags: 0,
                keywords: Vec::new(),
                internal_date: when,
                blob,
                blob_len,
                prefix: &t.prefix,
                queue_id: (d.queue_id != 0).then_some(queue_id),
            };
            let uid = add_copy(c, &mut f, None, &copy).await?;
            save_folder(c, &f).await?;
            account_add(c, a, blob_len + t.prefix.len() as i64, 1).await?;
            if d.queue_id != 0 {
                exec(
                    c,
                    "INSERT INTO delivered (origin, queue_id, folder, uid) VALUES ($1, $2, $3, $4)",
                    &[&origin, &queue_id, &fid, &i64::from(uid)],
                )
                .await?;
            }
            results[i] = Some(Ok(Placed {
                folder: FolderId(fid as u64),
                uid_validity: f.uid_validity as u32,
                uid,
            }));
            ev.push(&f);
        }
    }
    for &(i, j) in &dups {
        results[i] = results[j].clone();
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StoreError::Corrupt("no result".into()))))
        .collect())
}

/// A delivery waiting for the writer, and who waits for its results.
struct DeliveryJob {
    delivery: Delivery,
    tx: oneshot::Sender<Result<Vec<Result<Placed, StoreError>>, StoreError>>,
}

/// Most deliveries in one transaction.
const BATCH_MAX: usize = 64;

/// The delivery writer: every delivery waiting when it is free goes into
/// one transaction, so a burst of mail shares one COMMIT (one WAL flush)
/// and one lock of a busy INBOX, as the embedded store's group commit
/// shares one sync. A batch that fails as a whole (the database gone) is
/// answered with that error for every delivery in it; the queue retries.
async fn delivery_writer(writer: Writer, mut rx: mpsc::UnboundedReceiver<DeliveryJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let node = writer.node;
        let result: Result<_, StoreError> = async {
            in_tx!(writer, |tx| {
                let mut ev = Events::default();
                let mut all = Vec::with_capacity(jobs.len());
                for j in &jobs {
                    all.push(deliver_in(&tx, &mut ev, &j.delivery).await?);
                }
                notify(&tx, node, &ev).await?;
                (all, ev)
            })
        }
        .await;
        match result {
            Ok((all, ev)) => {
                publish(&writer.events, ev);
                for (j, r) in jobs.into_iter().zip(all) {
                    let _ = j.tx.send(Ok(r));
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.tx.send(Err(e.clone()));
                }
            }
        }
    }
}

/// What the delivery writer needs of the store.
struct Writer {
    pool: Pool,
    events: broadcast::Sender<ChangeEvent>,
    node: u64,
}

impl Writer {
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        pooled(&self.pool).await
    }
}

async fn pooled(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StoreError::Unavailable(format!("PostgreSQL: {other}")),
    })
}

/// Sends events to this node's watchers (after the commit).
fn publish(events: &broadcast::Sender<ChangeEvent>, ev: Events) {
    for e in ev.0 {
        let _ = events.send(e);
    }
}

/// Pass lock requests to the node's lock connection.
enum LockRequest {
    Take(i64, oneshot::Sender<Result<bool, StoreError>>),
    Give(i64),
}

struct MaildropLock {
    set: Arc<Mutex<HashSet<String>>>,
    name: String,
    key: i64,
    locker: mpsc::UnboundedSender<LockRequest>,
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        let _ = self.locker.send(LockRequest::Give(self.key));
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

/// The node's lock connection: takes and gives advisory locks in the
/// order asked; a lost connection (its locks released by the server) is
/// made again and the locks still held are taken again.
async fn locker(config: tokio_postgres::Config, mut rx: mpsc::UnboundedReceiver<LockRequest>) {
    let mut held: HashSet<i64> = HashSet::new();
    let mut client: Option<tokio_postgres::Client> = None;
    while let Some(req) = rx.recv().await {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match config.connect(NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    for k in &held {
                        let _ = c.execute("SELECT pg_try_advisory_lock($1)", &[k]).await;
                    }
                    Some(c)
                }
                Err(e) => {
                    if let LockRequest::Take(_, tx) = req {
                        let _ = tx.send(Err(pg(e)));
                    }
                    continue;
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        match req {
            LockRequest::Take(key, tx) => {
                let r = c
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .map_err(pg);
                if let Ok(true) = r {
                    held.insert(key);
                }
                let _ = tx.send(r);
            }
            LockRequest::Give(key) => {
                if held.remove(&key) {
                    let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&key]).await;
                }
            }
        }
    }
}

/// The node's listening connection: other nodes' change events, passed to
/// this node's watchers. Reconnects after a second when the connection
/// is lost (events of that second are missed: watchers see the changes at
/// their next event or poll).
async fn listen(
    config: tokio_postgres::Config,
    node: u64,
    events: broadcast::WeakSender<ChangeEvent>,
) {
    loop {
        if events.upgrade().is_none() {
            return;
        }
        match config.connect(NoTls).await {
            Ok((client, mut conn)) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    use futures_util::StreamExt;
                    while let Some(m) = stream.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().to_string()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    let mut alive = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        let payload = tokio::select! {
                            p = rx.recv() => match p {
                                Some(p) => p,
                                None => break,
                            },
                            // The store is gone: stop listening.
                            _ = alive.tick() => {
                                if events.upgrade().is_none() {
                                    driver.abort();
                                    return;
                                }
                                continue;
                            }
                        };
                        let Some(sender) = events.upgrade() else {
                            driver.abort();
                            return;
                        };
                        if let Some((from, evs)) = parse_payload(&payload)
                            && from != node
                        {
                            for e in evs {
                                let _ = sender.send(e);
                            }
                        }
                    }
                }
                driver.abort();
            }
            Err(e) => {
                tracing::warn!(error = %e, "message store: cannot listen for other nodes' changes")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl PostgresStore {
    /// Connects to the database at `url` with a pool of `pool_size`
    /// connections and makes the tables if missing.
    pub async fn open(url: &str, pool_size: usize) -> Result<PostgresStore, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Refused(format!("store.url: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("petrel");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Refused(format!("store.url: {e}")))?;
        let (events, _) = broadcast::channel(4096);
        let mut node_bytes = [0u8; 8];
        {
            use ring::rand::SecureRandom;
            ring::rand::SystemRandom::new()
                .fill(&mut node_bytes)
                .map_err(|_| StoreError::Unavailable("no randomness".into()))?;
        }
        let node = u64::from_be_bytes(node_bytes);
        let (locker_tx, locker_rx) = mpsc::unbounded_channel();
        let (deliveries, deliveries_rx) = mpsc::unbounded_channel();
        let store = PostgresStore {
            pool,
            events,
            node,
            locks: Arc::new(Mutex::new(HashSet::new())),
            locker: locker_tx,
            deliveries,
        };
        store.migrate().await?;
        tokio::spawn(delivery_writer(
            Writer {
                pool: store.pool.clone(),
                events: store.events.clone(),
                node,
            },
            deliveries_rx,
        ));
        tokio::spawn(locker(config.clone(), locker_rx));
        tokio::spawn(listen(config, node, store.events.downgrade()));
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        pooled(&self.pool).await
    }

    /// Makes the tables (one node at a time: an advisory lock).
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock(7346298551)", &[])
            .await
            .map_err(pg)?;
        tx.batch_execute(SCHEMA).await.map_err(pg)?;
        let version: i64 = tx
            .query_one("SELECT value FROM petrel_meta WHERE key = 'schema'", &[])
            .await
            .map_err(pg)?
            .get(0);
        if version > SCHEMA_VERSION {
            return Err(StoreError::Refused(format!(
                "the database has schema {version}, newer than this petrel's {SCHEMA_VERSION}"
            )));
        }
        tx.commit().await.map_err(pg)
    }

    fn publish(&self, events: Events) {
        publish(&self.events, events)
    }

    /// Reads an account's id, making the account on first use.
    async fn account_of(&self, account: &str) -> Result<i64, StoreError> {
        let key = account_key(account);
        {
            let c = self.client().await?;
            if let Some(id) = account_id(&c, &key).await.map_err(Fail::into_store)? {
                return Ok(id);
            }
        }
        in_tx!(self, |tx| { open_account(&tx, account).await? })
    }

    async fn folder_row(&self, id: i64) -> Result<Option<FolderRow>, StoreError> {
        let c = self.client().await?;
        let sql = format!("SELECT {FOLDER_COLS} WHERE f.id = $1");
        Ok(row(&c, &sql, &[&id])
            .await
            .map_err(pg)?
            .map(|r| FolderRow::of(&r)))
    }

    /// The messages of a folder matching a condition on `messages`.
    async fn message_rows(
        &self,
        folder: FolderId,
        condition: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<MessageMeta>, StoreError> {
        let c = self.client().await?;
        let sql =
            format!("SELECT {MSG_COLS} FROM messages WHERE folder = $1 {condition} ORDER BY uid");
        let fid = folder.0 as i64;
        let mut all: Vec<&(dyn ToSql + Sync)> = vec![&fid];
        all.extend_from_slice(params);
        Ok(rows(&c, &sql, &all)
            .await
            .map_err(pg)?
            .iter()
            .map(|r| MsgRow::of(r).meta())
            .collect())
    }
}

#[async_trait::async_trait]
impl MailStore for PostgresStore {
    async fn ensure_account(&self, account: &str) -> Result<(), StoreError> {
        self.account_of(account).await.map(|_| ())
    }

    async fn folders(&self, account: &str) -> Result<Vec<FolderInfo>, StoreError> {
        let a = self.account_of(account).await?;
        let c = self.client().await?;
        let sql = format!("SELECT {FOLDER_COLS} WHERE f.account = $1 ORDER BY f.name");
        Ok(rows(&c, &sql, &[&a])
            .await
            .map_err(pg)?
            .iter()
            .map(|r| FolderRow::of(r).info())
            .collect())
    }

    async fn folder(&self, account: &str, name: &str) -> Result<Option<FolderInfo>, StoreError> {
        let a = self.account_of(account).await?;
        let name = normalize(name)?;
        let c = self.client().await?;
        let sql = format!("SELECT {FOLDER_COLS} WHERE f.account = $1 AND f.name = $2");
        Ok(row(&c, &sql, &[&a, &name])
            .await
            .map_err(pg)?
            .map(|r| FolderRow::of(&r).info()))
    }

    async fn folder_info(&self, folder: FolderId) -> Result<FolderInfo, StoreError> {
        self.folder_row(folder.0 as i64)
            .await?
            .map(|f| f.info())
            .ok_or_else(|| StoreError::NotFound(format!("folder {}", folder.0)))
    }

    async fn create_folder(
        &self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<FolderInfo, StoreError> {
        let name = normalize(name)?;
        let node = self.node;
        let id = in_tx!(self, |tx| {
            let a = open_account(&tx, account).await?;
            if folder_id(&tx, a, &name).await?.is_some() {
                return Err(StoreError::Exists(name.clone()).into());
            }
            make_parents(&tx, a, &name).await?;
            let id = make_folder(&tx, a, &name, special_use).await?;
            let f = lock_folder(&tx, id).await?;
            let mut ev = Events::default();
            ev.push(&f);
            notify(&tx, node, &ev).await?;
            id
        })?;
        self.folder_info(FolderId(id as u64)).await
    }

    async fn delete_folder(&self, account: &str, name: &str) -> Result<(), StoreError> {
        let name = normalize(name)?;
        if name == "INBOX" {
            // As the embedded store: the account is made, then refused.
            self.account_of(account).await?;
            return Err(StoreError::Refused("INBOX cannot be deleted".into()));
        }
        let node = self.node;
        let ev = in_tx!(self, |tx| {
            let (_, fid) = folder_by_name(&tx, account, &name).await?;
            let mut f = lock_folder(&tx, fid).await?;
            let all: Vec<i64> = rows(&tx, "SELECT uid FROM messages WHERE folder = $1", &[&fid])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            remove_copies(&tx, &mut f, &all, false).await?;
            exec(&tx, "DELETE FROM vanished WHERE folder = $1", &[&fid]).await?;
            exec(&tx, "DELETE FROM delivered WHERE folder = $1", &[&fid]).await?;
            exec(&tx, "DELETE FROM folders WHERE id = $1", &[&fid]).await?;
            let mut ev = Events::default();
            f.highest_modseq += 1;
            ev.push(&f);
            notify(&tx, node, &ev).await?;
            ev
        })?;
        self.publish(ev);
        Ok(())
    }

    async fn rename_folder(&self, account: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let from = normalize(from)?;
        let to = normalize(to)?;
        let node = self.node;
        let ev = in_tx!(self, |tx| {
            let a = open_account(&tx, account).await?;
            let Some(fid) = folder_id(&tx, a, &from).await? else {
                return Err(StoreError::NotFound(from.clone()).into());
            };
            if to == "INBOX" {
                return Err(StoreError::Exists(to.clone()).into());
            }
            if to == from || to.starts_with(&format!("{from}{DELIMITER}")) {
                return Err(StoreError::Refused(format!("{from} cannot move into itself")).into());
            }
            let moving: Vec<(String, i64)> = if from == "INBOX" {
                vec![(from.clone(), fid)]
            } else {
                let prefix = format!("{from}{DELIMITER}");
                rows(
                    &tx,
                    "SELECT name, id FROM folders WHERE account = $1",
                    &[&a],
                )
                .await?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                .filter(|(n, _)| *n == from || n.starts_with(&prefix))
                .collect()
            };
            let mut ev = Events::default();
            for (old, id) in &moving {
                let new = format!("{to}{}", &old[from.len()..]);
                if folder_id(&tx, a, &new).await?.is_some() {
                    return Err(StoreError::Exists(new).into());
                }
                let _ = id;
            }
            // Two steps, so no name is held twice between the updates.
            for (_, id) in &moving {
                exec(
                    &tx,
                    "UPDATE folders SET name = '\u{1}' || id::text WHERE id = $1",
                    &[id],
                )
                .await?;
            }
            for (old, id) in &moving {
                let new = format!("{to}{}", &old[from.len()..]);
                let mut f = lock_folder(&tx, *id).await?;
                f.name = new;
                save_folder(&tx, &f).await?;
                ev.push(&f);
            }
            if from == "INBOX" {
                make_folder(&tx, a, "INBOX", None).await?;
            }
            make_parents(&tx, a, &to).await?;
            notify(&tx, node, &ev).await?;
            ev
        })?;
        self.publish(ev);
        Ok(())
    }

    async fn set_subscribed(&self, account: &str, name: &str, on: bool) -> Result<(), StoreError> {
        let name = normalize(name)?;
        in_tx!(self, |tx| {
            let a = open_account(&tx, account).await?;
            if on {
                exec(
                    &tx,
                    "INSERT INTO subscriptions (account, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&a, &name],
                )
                .await?;
            } else {
                exec(
                    &tx,
                    "DELETE FROM subscriptions WHERE account = $1 AND name = $2",
                    &[&a, &name],
                )
                .await?;
            }
        })
    }

    async fn subscriptions(&self, account: &str) -> Result<Vec<String>, StoreError> {
        let a = self.account_of(account).await?;
        let c = self.client().await?;
        Ok(rows(
            &c,
            "SELECT name FROM subscriptions WHERE account = $1 ORDER BY name",
            &[&a],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn deliver(&self, d: Delivery) -> Result<Vec<Result<Placed, StoreError>>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.deliveries
            .send(DeliveryJob { delivery: d, tx })
            .map_err(|_| StoreError::Unavailable("the delivery writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the delivery writer stopped".into()))?
    }

    async fn append(
        &self,
        account: &str,
        folder: &str,
        message: Append,
    ) -> Result<Placed, StoreError> {
        let node = self.node;
        let (placed, ev) = in_tx!(self, |tx| {
            let mut ev = Events::default();
            let p = append_in(&tx, &mut ev, account, folder, &message, None).await?;
            notify(&tx, node, &ev).await?;
            (p, ev)
        })?;
        self.publish(ev);
        Ok(placed)
    }

    async fn messages(&self, folder: FolderId) -> Result<Vec<MessageMeta>, StoreError> {
        self.message_rows(folder, "", &[]).await
    }

    async fn metas(&self, folder: FolderId, uids: &[u32]) -> Result<Vec<MessageMeta>, StoreError> {
        let uids: Vec<i64> = uids.iter().map(|&u| i64::from(u)).collect();
        self.message_rows(folder, "AND uid = ANY($2)", &[&uids])
            .await
    }

    async fn changes_since(&self, folder: FolderId, modseq: u64) -> Result<Changes, StoreError> {
        let fid = folder.0 as i64;
        let since = modseq.min(i64::MAX as u64) as i64;
        let mut client = self.client().await?;
        // Most asks (after every IMAP command) find nothing new: one read.
        let now: i64 = row(
            &client,
            "SELECT highest_modseq FROM folders WHERE id = $1",
            &[&fid],
        )
        .await
        .map_err(pg)?
        .ok_or_else(|| StoreError::NotFound(format!("folder {fid}")))?
        .get(0);
        if now <= since {
            return Ok(Changes {
                changed: Vec::new(),
                vanished: Vec::new(),
                highest_modseq: now as u64,
            });
        }
        // One snapshot for the copies, the UIDs and the HIGHESTMODSEQ.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let sql = format!(
            "SELECT {MSG_COLS} FROM messages WHERE folder = $1 AND modseq > $2 ORDER BY uid"
        );
        let changed = rows(&tx, &sql, &[&fid, &since])
            .await
            .map_err(pg)?
            .iter()
            .map(|r| MsgRow::of(r).meta())
            .collect();
        let vanished = rows(
            &tx,
            "SELECT uid FROM vanished WHERE folder = $1 AND modseq > $2 ORDER BY uid",
            &[&fid, &since],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get::<_, i64>(0) as u32)
        .collect();
        let highest: i64 = row(
            &tx,
            "SELECT highest_modseq FROM folders WHERE id = $1",
            &[&fid],
        )
        .await
        .map_err(pg)?
        .ok_or_else(|| StoreError::NotFound(format!("folder {fid}")))?
        .get(0);
        tx.commit().await.map_err(pg)?;
        Ok(Changes {
            changed,
            vanished,
            highest_modseq: highest as u64,
        })
    }

    async fn summary(&self, blob: BlobId) -> Result<Arc<Summary>, StoreError> {
        self.summaries(&[blob])
            .await?
            .pop()
            .flatten()
            .ok_or_else(|| StoreError::NotFound(format!("blob {}", blob.0)))
    }

    async fn summaries(&self, blobs: &[BlobId]) -> Result<Vec<Option<Arc<Summary>>>, StoreError> {
        let ids: Vec<i64> = blobs
            .iter()
            .map(|b| b.0.min(i64::MAX as u64) as i64)
            .collect();
        let c = self.client().await?;
        let found = rows(
            &c,
            "SELECT id, summary FROM blobs WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(pg)?;
        let mut by_id = std::collections::HashMap::new();
        for r in &found {
            let id: i64 = r.get(0);
            let bytes: &[u8] = r.get(1);
            let s: Summary = decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            by_id.insert(id, Arc::new(s));
        }
        Ok(ids.iter().map(|id| by_id.get(id).cloned()).collect())
    }

    async fn read(
        &self,
        folder: FolderId,
        uid: u32,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Vec<u8>, StoreError> {
        let c = self.client().await?;
        let fid = folder.0 as i64;
        let Some(r) = row(
            &c,
            "SELECT prefix, blob, blob_len FROM messages WHERE folder = $1 AND uid = $2",
            &[&fid, &i64::from(uid)],
        )
        .await
        .map_err(pg)?
        else {
            return Err(StoreError::NotFound(format!("UID {uid}")));
        };
        let prefix: Vec<u8> = r.get(0);
        let blob: i64 = r.get(1);
        let blob_len: i64 = r.get(2);
        let plen = prefix.len() as u64;
        let total = plen + blob_len as u64;
        let range = range.unwrap_or(0..total);
        let (start, end) = (range.start.min(total), range.end.min(total));
        if start >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        if start < plen {
            out.extend_from_slice(&prefix[start as usize..end.min(plen) as usize]);
        }
        if end > plen {
            let from = start.saturating_sub(plen) as i64;
            let to = (end - plen) as i64;
            let part = row(
                &c,
                "SELECT substring(content FROM $2::bigint::integer + 1 FOR $3::bigint::integer) FROM blobs WHERE id = $1",
                &[&blob, &from, &(to - from)],
            )
            .await
            .map_err(pg)?
            .ok_or_else(|| StoreError::Corrupt(format!("blob {blob} is missing")))?;
            out.extend_from_slice(part.get::<_, &[u8]>(0));
        }
        Ok(out)
    }

    async fn store_flags(
        &self,
        folder: FolderId,
        uids: &[u32],
        change: FlagChange,
    ) -> Result<StoreResult, StoreError> {
        let node = self.node;
        let fid = folder.0 as i64;
        let mut list: Vec<i64> = uids.iter().map(|&u| i64::from(u)).collect();
        list.sort_unstable();
        list.dedup();
        let (out, ev) = in_tx!(self, |tx| {
            let mut f = lock_folder(&tx, fid).await?;
            let sql = format!(
                "SELECT {MSG_COLS} FROM messages WHERE folder = $1 AND uid = ANY($2) ORDER BY uid"
            );
            let found: Vec<MsgRow> = rows(&tx, &sql, &[&fid, &list])
                .await?
                .iter()
                .map(MsgRow::of)
                .collect();
            let mut out = StoreResult::default();
            let mut ev = Events::default();
            let mut changed_uids = Vec::new();
            let mut changed_modseqs = Vec::new();
            let mut changed_flags = Vec::new();
            let mut changed_kw = Vec::new();
            for mut m in found {
                if let Some(since) = change.unchanged_since
                    && m.modseq as u64 > since
                {
                    out.failed.push(m.uid as u32);
                    continue;
                }
                let old = m.flags as u16;
                let (new_flags, kw) = change.apply(old, &m.keywords);
                if new_flags == old && same_keyword_set(&kw, &m.keywords) {
                    out.updated.push(m.meta());
                    continue;
                }
                let size = m.size();
                f.count(old, size, -1);
                f.count(new_flags, size, 1);
                f.highest_modseq += 1;
                m.modseq = f.highest_modseq;
                m.flags = new_flags as i16;
                m.keywords = kw;
                changed_uids.push(m.uid);
                changed_modseqs.push(m.modseq);
                changed_flags.push(m.flags);
                changed_kw.push(m.keywords.join(" "));
                out.updated.push(m.meta());
            }
            if !changed_uids.is_empty() {
                // Keywords travel as one space-separated text per copy
                // (keywords are atoms: no spaces).
                exec(
                    &tx,
                    "UPDATE messages m SET modseq = t.modseq, flags = t.flags, \
                     keywords = CASE WHEN t.kw = '' THEN '{}'::text[] ELSE string_to_array(t.kw, ' ') END \
                     FROM unnest($2::bigint[], $3::bigint[], $4::smallint[], $5::text[]) AS t(uid, modseq, flags, kw) \
                     WHERE m.folder = $1 AND m.uid = t.uid",
                    &[&fid, &changed_uids, &changed_modseqs, &changed_flags, &changed_kw],
                )
                .await?;
                save_folder(&tx, &f).await?;
                ev.push(&f);
                notify(&tx, node, &ev).await?;
            }
            (out, ev)
        })?;
        self.publish(ev);
        Ok(out)
    }

    async fn expunge(
        &self,
        folder: FolderId,
        uids: Option<&[u32]>,
        only_deleted: bool,
    ) -> Result<Vec<u32>, StoreError> {
        let node = self.node;
        let fid = folder.0 as i64;
        let given: Option<Vec<i64>> = uids.map(|u| u.iter().map(|&x| i64::from(x)).collect());
        let (removed, ev) = in_tx!(self, |tx| {
            let mut f = lock_folder(&tx, fid).await?;
            let list = match &given {
                Some(l) => l.clone(),
                None => rows(&tx, "SELECT uid FROM messages WHERE folder = $1", &[&fid])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect(),
            };
            let removed = remove_copies(&tx, &mut f, &list, only_deleted).await?;
            let mut ev = Events::default();
            if !removed.is_empty() {
                save_folder(&tx, &f).await?;
                ev.push(&f);
                notify(&tx, node, &ev).await?;
            }
            (removed, ev)
        })?;
        self.publish(ev);
        Ok(removed)
    }

    async fn copy(
        &self,
        from: FolderId,
        uids: &[u32],
        to: FolderId,
        move_: bool,
        quota: Option<u64>,
    ) -> Result<Copied, StoreError> {
        let node = self.node;
        let (src_id, dst_id) = (from.0 as i64, to.0 as i64);
        let mut list: Vec<i64> = uids.iter().map(|&u| i64::from(u)).collect();
        list.sort_unstable();
        list.dedup();
        let (out, ev) = in_tx!(self, |tx| {
            // Both folders locked, in id order.
            let (mut src, mut dst) = if src_id <= dst_id {
                let s = lock_folder(&tx, src_id).await?;
                let d = if dst_id == src_id {
                    s.clone()
                } else {
                    lock_folder(&tx, dst_id).await?
                };
                (s, d)
            } else {
                let d = lock_folder(&tx, dst_id).await?;
                (lock_folder(&tx, src_id).await?, d)
            };
            if src.account != dst.account {
                return Err(StoreError::Refused("copies stay within one account".into()).into());
            }
            let found = rows(
                &tx,
                "SELECT uid, flags, keywords, internal_date, blob, blob_len, prefix, queue_id \
                 FROM messages WHERE folder = $1 AND uid = ANY($2) ORDER BY uid",
                &[&src_id, &list],
            )
            .await?;
            let total: i64 = found
                .iter()
                .map(|r| r.get::<_, i64>(5) + r.get::<_, &[u8]>(6).len() as i64)
                .sum();
            if !move_ || src_id == dst_id {
                over_quota(account_bytes(&tx, src.account).await?, quota, total as u64)?;
            }
            let mut out = Copied {
                uid_validity: dst.uid_validity as u32,
                ..Copied::default()
            };
            let mut blobs = Vec::new();
            for r in &found {
                let prefix: &[u8] = r.get(6);
                let copy = NewCopy {
                    flags: r.get::<_, i16>(1) as u16,
                    keywords: r.get(2),
                    internal_date: r.get(3),
                    blob: r.get(4),
                    blob_len: r.get(5),
                    prefix,
                    queue_id: r.get(7),
                };
                let new_uid = add_copy(&tx, &mut dst, None, &copy).await?;
                blobs.push(copy.blob);
                out.from.push(r.get::<_, i64>(0) as u32);
                out.to.push(new_uid);
            }
            blob_refs(&tx, &blobs, 1).await?;
            account_add(&tx, dst.account, total, found.len() as i64).await?;
            let mut ev = Events::default();
            if src_id == dst_id {
                src = dst.clone();
            }
            if move_ {
                let moved: Vec<i64> = out.from.iter().map(|&u| i64::from(u)).collect();
                remove_copies(&tx, &mut src, &moved, false).await?;
                if src_id == dst_id {
                    dst = src.clone();
                }
            }
            save_folder(&tx, &dst).await?;
            ev.push(&dst);
            if src_id != dst_id && move_ {
                save_folder(&tx, &src).await?;
                ev.push(&src);
            }
            notify(&tx, node, &ev).await?;
            (out, ev)
        })?;
        self.publish(ev);
        Ok(out)
    }

    async fn restore(
        &self,
        account: &str,
        folder: &str,
        uid_validity: u32,
        uid_next: u32,
        messages: Vec<(u32, Append)>,
    ) -> Result<(), StoreError> {
        let name = normalize(folder)?;
        let node = self.node;
        let ev = in_tx!(self, |tx| {
            let a = open_account(&tx, account).await?;
            let fid = match folder_id(&tx, a, &name).await? {
                Some(id) => id,
                None => {
                    make_parents(&tx, a, &name).await?;
                    make_folder(&tx, a, &name, None).await?
                }
            };
            let mut f = lock_folder(&tx, fid).await?;
            if f.exists == 0 && f.uid_next == 1 && uid_validity != 0 {
                f.uid_validity = i64::from(uid_validity);
            }
            f.uid_next = f.uid_next.max(i64::from(uid_next));
            save_folder(&tx, &f).await?;
            let taken: HashSet<i64> = rows(
                &tx,
                "SELECT uid FROM vanished WHERE folder = $1 UNION SELECT uid FROM messages WHERE folder = $1",
                &[&fid],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
            let mut ev = Events::default();
            for (uid, m) in &messages {
                if *uid == 0 || taken.contains(&i64::from(*uid)) {
                    continue;
                }
                let m = Append {
                    quota: None,
                    ..m.clone()
                };
                append_in(&tx, &mut ev, account, &name, &m, Some(*uid)).await?;
            }
            notify(&tx, node, &ev).await?;
            ev
        })?;
        self.publish(ev);
        Ok(())
    }

    async fn usage(&self, account: &str) -> Result<Usage, StoreError> {
        let c = self.client().await?;
        let key = account_key(account);
        Ok(row(
            &c,
            "SELECT bytes, messages FROM accounts WHERE name = $1",
            &[&key],
        )
        .await
        .map_err(pg)?
        .map(|r| Usage {
            bytes: r.get::<_, i64>(0).max(0) as u64,
            messages: r.get::<_, i64>(1).max(0) as u64,
        })
        .unwrap_or_default())
    }

    fn watch(&self) -> broadcast::Receiver<ChangeEvent> {
        self.events.subscribe()
    }

    async fn lock_maildrop(
        &self,
        account: &str,
    ) -> Result<Option<Box<dyn std::any::Any + Send>>, StoreError> {
        let name = account_key(account);
        {
            let mut set = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            if !set.insert(name.clone()) {
                return Ok(None);
            }
        }
        let key = account_hash(&name) as i64;
        let guard = MaildropLock {
            set: self.locks.clone(),
            name,
            key,
            locker: self.locker.clone(),
        };
        let (tx, rx) = oneshot::channel();
        if self.locker.send(LockRequest::Take(key, tx)).is_err() {
            return Err(StoreError::Unavailable(
                "the lock connection stopped".into(),
            ));
        }
        match rx.await {
            Ok(Ok(true)) => Ok(Some(Box::new(guard))),
            // Held on another node: the guard's drop gives back only the
            // place in this node's set (the locker holds no such key).
            Ok(Ok(false)) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Unavailable(
                "the lock connection stopped".into(),
            )),
        }
    }
}
