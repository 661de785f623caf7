//! Moving an account's messages in and out of the store, one call at a
//! time, for `petrel export` / `petrel import` (Maildir): the same
//! functions serve the control socket's requests in the daemon and the
//! CLI's direct use of the store when no daemon runs. Knows nothing of
//! Maildir itself (that is `cli::maildir`).

use serde::{Deserialize, Serialize};

use super::{Append, MailStore, NewContent, StoreError};

/// Largest piece of a message sent at once when reading it out: a big
/// message is streamed in pieces, never held whole.
pub const CHUNK: u64 = 1024 * 1024;

/// A folder as export sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderRow {
    /// Full name, `/`-separated.
    pub name: String,
    /// Whether the account subscribed to it.
    pub subscribed: bool,
    /// Its UIDVALIDITY.
    pub uid_validity: u32,
}

/// A message copy as export and import see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRow {
    /// UID in its folder (ignored on import).
    pub uid: u32,
    /// System flags (`store::flags`).
    pub flags: u16,
    /// Keywords.
    pub keywords: Vec<String>,
    /// INTERNALDATE, Unix seconds.
    pub internal_date: i64,
    /// Octets.
    pub size: u64,
}

fn err(e: StoreError) -> String {
    e.to_string()
}

/// The account's folders, and the subscribed names no folder has.
pub async fn folders(
    store: &dyn MailStore,
    account: &str,
) -> Result<(Vec<FolderRow>, Vec<String>), String> {
    store.ensure_account(account).await.map_err(err)?;
    let folders = store.folders(account).await.map_err(err)?;
    let subs = store.subscriptions(account).await.map_err(err)?;
    let orphans = subs
        .into_iter()
        .filter(|s| !folders.iter().any(|f| f.name == *s))
        .collect();
    let rows = folders
        .into_iter()
        .map(|f| FolderRow {
            name: f.name,
            subscribed: f.subscribed,
            uid_validity: f.uid_validity,
        })
        .collect();
    Ok((rows, orphans))
}

/// The copies of one folder, in UID order.
pub async fn messages(
    store: &dyn MailStore,
    account: &str,
    folder: &str,
) -> Result<Vec<MessageRow>, String> {
    let f = store
        .folder(account, folder)
        .await
        .map_err(err)?
        .ok_or_else(|| format!("{account}: no folder {folder:?}"))?;
    Ok(store
        .messages(f.id)
        .await
        .map_err(err)?
        .into_iter()
        .map(|m| MessageRow {
            uid: m.uid,
            flags: m.flags,
            keywords: m.keywords,
            internal_date: m.internal_date,
            size: m.size,
        })
        .collect())
}

/// Reads one copy in pieces of at most `CHUNK` octets, passing each to
/// `piece` (which may wait: the socket's backpressure).
pub async fn read<F, Fut>(
    store: &dyn MailStore,
    account: &str,
    folder: &str,
    uid: u32,
    mut piece: F,
) -> Result<(), String>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let f = store
        .folder(account, folder)
        .await
        .map_err(err)?
        .ok_or_else(|| format!("{account}: no folder {folder:?}"))?;
    let meta = store
        .metas(f.id, &[uid])
        .await
        .map_err(err)?
        .pop()
        .ok_or_else(|| format!("{account}/{folder}: no message with UID {uid}"))?;
    let mut at = 0u64;
    while at < meta.size {
        let end = (at + CHUNK).min(meta.size);
        let b = store.read(f.id, uid, Some(at..end)).await.map_err(err)?;
        if b.is_empty() {
            break;
        }
        at += b.len() as u64;
        piece(b).await?;
    }
    Ok(())
}

/// Appends one message, making the folder (and its parents) if missing;
/// returns the new UID.
pub async fn append(
    store: &dyn MailStore,
    account: &str,
    folder: &str,
    row: &MessageRow,
    content: Vec<u8>,
) -> Result<u32, String> {
    store.ensure_account(account).await.map_err(err)?;
    if store.folder(account, folder).await.map_err(err)?.is_none() {
        match store.create_folder(account, folder, None).await {
            Ok(_) | Err(StoreError::Exists(_)) => {}
            Err(e) => return Err(err(e)),
        }
    }
    let placed = store
        .append(
            account,
            folder,
            Append {
                content: NewContent::parse(content),
                flags: row.flags & super::flags::ALL,
                keywords: row.keywords.clone(),
                internal_date: Some(row.internal_date),
                quota: None,
                queue_id: None,
            },
        )
        .await
        .map_err(err)?;
    Ok(placed.uid)
}

/// Makes a folder if missing (an empty Maildir folder is still a folder).
pub async fn create(store: &dyn MailStore, account: &str, folder: &str) -> Result<(), String> {
    store.ensure_account(account).await.map_err(err)?;
    if store.folder(account, folder).await.map_err(err)?.is_some() {
        return Ok(());
    }
    match store.create_folder(account, folder, None).await {
        Ok(_) | Err(StoreError::Exists(_)) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Subscribes the account to a name.
pub async fn subscribe(store: &dyn MailStore, account: &str, name: &str) -> Result<(), String> {
    store.set_subscribed(account, name, true).await.map_err(err)
}
