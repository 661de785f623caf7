//! `petrel export NAME --maildir DIR` and `petrel import NAME --maildir DIR`:
//! an account's folders, messages, flags, keywords, INTERNALDATEs and
//! subscriptions to and from Maildir++ as Dovecot reads it by default.
//!
//! Layout: INBOX is DIR itself (`cur/`, `new/`, `tmp/`); folder `A/B` is
//! `DIR/.A.B/` (with an empty `maildirfolder` file); flags are the `:2,`
//! suffix (`D` draft, `F` flagged, `R` replied, `S` seen, `T` trashed, i.e.
//! `\Deleted`; `P` passed is read as `$Forwarded`, which is written as a
//! keyword since Dovecot ignores `P`); keywords are the letters `a`–`z` of
//! each folder's `dovecot-keywords` file; INTERNALDATE is the file's mtime;
//! `DIR/subscriptions` lists the subscribed names with `.` between levels.
//!
//! Through the daemon when one runs (control requests, a message read in
//! pieces of 1 MiB and written as they come), else on the store directly.
//!
//! Identity on import: a file is already there when the target folder
//! holds a copy with the same INTERNALDATE and the same octets (after
//! line ends are made CRLF); such files are skipped, so importing the same
//! Maildir twice adds nothing, and an interrupted import can be repeated.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::config::Config;
use crate::control::{self, CallError, Item, Request};
use crate::store::MailStore;
use crate::store::flags;
use crate::store::transfer::{self, FolderRow, MessageRow};

/// Keywords a Maildir folder can carry (`a`–`z`).
const MAX_KEYWORDS: usize = 26;

/// The store, through the daemon or opened here.
enum Access {
    Daemon(PathBuf),
    Direct {
        rt: tokio::runtime::Runtime,
        store: Arc<dyn MailStore>,
    },
}

impl Access {
    /// The daemon if it answers, else the store opened directly (its own
    /// lock keeps a daemon out while this runs).
    fn open(config: &Config, account: &str) -> Result<Access, String> {
        let spool = config.server.spool.clone();
        let probe = Request::StoreFolders {
            account: account.to_string(),
        };
        match control::call(&spool, &probe, &[], |_| {}) {
            Ok(()) => return Ok(Access::Daemon(spool)),
            Err(CallError::Failed(e)) => return Err(e),
            Err(CallError::Io(e)) => return Err(format!("control socket: {e}")),
            Err(CallError::NoDaemon) => {}
        }
        if !config.directory.has_mailbox(account) {
            return Err(format!("{account:?} is not a user or mail-in mailbox"));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let store = rt
            .block_on(crate::store::open(&config.store))
            .map_err(|e| format!("cannot open the message store: {e}"))?;
        // As the daemon does at its start: the old mailbox keyspace first.
        if spool.join(crate::spool::store::DB_DIR).is_dir() {
            let sp = crate::spool::Spool::open(&spool)
                .map_err(|e| format!("cannot open the spool: {e}"))?;
            let old = crate::mailbox::MailboxStore::open(&sp);
            rt.block_on(crate::store::migrate::from_spool(&sp, &old, &*store))
                .map_err(|e| e.to_string())?;
        }
        Ok(Access::Direct { rt, store })
    }

    fn call(&self, req: Request, content: &[u8], on_item: impl FnMut(Item)) -> Result<(), String> {
        let Access::Daemon(spool) = self else {
            unreachable!("only called on the daemon")
        };
        control::call(spool, &req, content, on_item).map_err(|e| match e {
            CallError::Failed(e) => e,
            CallError::Io(e) => format!("control socket: {e}"),
            CallError::NoDaemon => "the daemon stopped".into(),
        })
    }

    fn folders(&self, account: &str) -> Result<(Vec<FolderRow>, Vec<String>), String> {
        match self {
            Access::Direct { rt, store } => rt.block_on(transfer::folders(&**store, account)),
            Access::Daemon(_) => {
                let (mut rows, mut orphans) = (Vec::new(), Vec::new());
                let mut bad = None;
                self.call(
                    Request::StoreFolders {
                        account: account.into(),
                    },
                    &[],
                    |item| {
                        let Some(v) = item.into_json() else { return };
                        if let Some(o) = v.get("orphan_subscriptions") {
                            orphans = serde_json::from_value(o.clone()).unwrap_or_default();
                        } else {
                            match serde_json::from_value(v) {
                                Ok(r) => rows.push(r),
                                Err(e) => bad = Some(e.to_string()),
                            }
                        }
                    },
                )?;
                match bad {
                    Some(e) => Err(format!("bad answer: {e}")),
                    None => Ok((rows, orphans)),
                }
            }
        }
    }

    fn messages(&self, account: &str, folder: &str) -> Result<Vec<MessageRow>, String> {
        match self {
            Access::Direct { rt, store } => {
                rt.block_on(transfer::messages(&**store, account, folder))
            }
            Access::Daemon(_) => {
                let mut rows = Vec::new();
                let mut bad = None;
                self.call(
                    Request::StoreMessages {
                        account: account.into(),
                        folder: folder.into(),
                    },
                    &[],
                    |item| {
                        let Some(v) = item.into_json() else { return };
                        match serde_json::from_value(v) {
                            Ok(r) => rows.push(r),
                            Err(e) => bad = Some(e.to_string()),
                        }
                    },
                )?;
                match bad {
                    Some(e) => Err(format!("bad answer: {e}")),
                    None => Ok(rows),
                }
            }
        }
    }

    /// Passes the copy's octets to `out` piece by piece.
    fn read(
        &self,
        account: &str,
        folder: &str,
        uid: u32,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), String> {
        match self {
            Access::Direct { rt, store } => {
                rt.block_on(transfer::read(&**store, account, folder, uid, |b| {
                    let r = out(&b).map_err(|e| e.to_string());
                    async move { r }
                }))
            }
            Access::Daemon(_) => {
                let mut failed = None;
                self.call(
                    Request::StoreRead {
                        account: account.into(),
                        folder: folder.into(),
                        uid,
                    },
                    &[],
                    |item| {
                        if let Item::Raw(b) = item
                            && failed.is_none()
                            && let Err(e) = out(&b)
                        {
                            failed = Some(e.to_string());
                        }
                    },
                )?;
                failed.map_or(Ok(()), Err)
            }
        }
    }

    fn append(
        &self,
        account: &str,
        folder: &str,
        row: &MessageRow,
        content: Vec<u8>,
    ) -> Result<(), String> {
        match self {
            Access::Direct { rt, store } => rt
                .block_on(transfer::append(&**store, account, folder, row, content))
                .map(|_| ()),
            Access::Daemon(_) => self.call(
                Request::StoreAppend {
                    account: account.into(),
                    folder: folder.into(),
                    message: row.clone(),
                    content_length: content.len() as u64,
                },
                &content,
                |_| {},
            ),
        }
    }

    fn create(&self, account: &str, folder: &str) -> Result<(), String> {
        match self {
            Access::Direct { rt, store } => {
                rt.block_on(transfer::create(&**store, account, folder))
            }
            Access::Daemon(_) => self.call(
                Request::StoreCreate {
                    account: account.into(),
                    folder: folder.into(),
                },
                &[],
                |_| {},
            ),
        }
    }

    fn subscribe(&self, account: &str, name: &str) -> Result<(), String> {
        match self {
            Access::Direct { rt, store } => {
                rt.block_on(transfer::subscribe(&**store, account, name))
            }
            Access::Daemon(_) => self.call(
                Request::StoreSubscribe {
                    account: account.into(),
                    name: name.into(),
                },
                &[],
                |_| {},
            ),
        }
    }
}

/// The Maildir++ directory of a folder; `.` inside a level cannot be
/// written (it separates levels) and becomes `_`.
fn folder_dir(root: &Path, name: &str) -> (PathBuf, bool) {
    if name.eq_ignore_ascii_case("INBOX") {
        return (root.to_path_buf(), false);
    }
    let lossy = name.contains('.');
    let levels: Vec<String> = name
        .split(crate::store::DELIMITER)
        .map(|l| l.replace('.', "_"))
        .collect();
    (root.join(format!(".{}", levels.join("."))), lossy)
}

/// Flag letters of the `:2,` suffix, in ASCII order as Maildir wants.
fn flag_letters(f: u16, keywords: &[String], table: &[String]) -> String {
    let mut s = String::new();
    if f & flags::DRAFT != 0 {
        s.push('D');
    }
    if f & flags::FLAGGED != 0 {
        s.push('F');
    }
    if f & flags::ANSWERED != 0 {
        s.push('R');
    }
    if f & flags::SEEN != 0 {
        s.push('S');
    }
    if f & flags::DELETED != 0 {
        s.push('T');
    }
    for k in keywords {
        if let Some(i) = table.iter().position(|t| t == k) {
            s.push((b'a' + i as u8) as char);
        }
    }
    let (upper, mut lower): (Vec<char>, Vec<char>) =
        s.chars().partition(|c| c.is_ascii_uppercase());
    lower.sort_unstable();
    upper.into_iter().chain(lower).collect()
}

fn io(what: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", what.display())
}

fn make_maildir(dir: &Path, subfolder: bool) -> Result<(), String> {
    for sub in ["cur", "new", "tmp"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
    }
    if subfolder {
        let f = dir.join("maildirfolder");
        std::fs::write(&f, b"").map_err(|e| io(&f, e))?;
    }
    Ok(())
}

/// A name for file names: the host part of a Maildir unique name may not
/// hold `/` or `:`.
fn host_part(hostname: &str) -> String {
    hostname.replace('/', "\\057").replace(':', "\\072")
}

/// `petrel export NAME --maildir DIR`.
pub fn export(config: &Config, account: &str, root: &Path) -> Result<(), String> {
    if root.exists()
        && std::fs::read_dir(root)
            .map_err(|e| io(root, e))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{}: not empty; export into a new or empty directory",
            root.display()
        ));
    }
    let access = Access::open(config, account)?;
    let (folders, orphans) = access.folders(account)?;
    let host = host_part(&config.server.hostname);
    let (mut nmsg, mut nbytes) = (0u64, 0u64);
    let mut subscriptions = Vec::new();
    for folder in &folders {
        let (dir, lossy) = folder_dir(root, &folder.name);
        if lossy {
            eprintln!(
                "petrel: folder {:?}: '.' cannot be written in a Maildir++ name; exported as {}",
                folder.name,
                dir.display()
            );
        }
        make_maildir(&dir, dir != root)?;
        if folder.subscribed {
            subscriptions.push(folder.name.clone());
        }
        let rows = access.messages(account, &folder.name)?;
        let mut table: Vec<String> = Vec::new();
        for r in &rows {
            for k in &r.keywords {
                if table.contains(k) {
                    continue;
                }
                if table.len() == MAX_KEYWORDS {
                    eprintln!(
                        "petrel: folder {:?}: more than {MAX_KEYWORDS} keywords; {k:?} is not exported",
                        folder.name
                    );
                    continue;
                }
                table.push(k.clone());
            }
        }
        if !table.is_empty() {
            let mut text = String::new();
            for (i, k) in table.iter().enumerate() {
                text.push_str(&format!("{i} {k}\n"));
            }
            let f = dir.join("dovecot-keywords");
            std::fs::write(&f, text).map_err(|e| io(&f, e))?;
        }
        for r in &rows {
            let unique = format!(
                "{}.V{}U{}.{host},S={}",
                r.internal_date.max(0),
                folder.uid_validity,
                r.uid,
                r.size
            );
            let tmp = dir.join("tmp").join(&unique);
            let mut file = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
            let mut w = std::io::BufWriter::with_capacity(256 * 1024, &mut file);
            access.read(account, &folder.name, r.uid, &mut |b| w.write_all(b))?;
            w.flush().map_err(|e| io(&tmp, e))?;
            drop(w);
            file.sync_all().map_err(|e| io(&tmp, e))?;
            let mtime = UNIX_EPOCH + Duration::from_secs(r.internal_date.max(0) as u64);
            file.set_times(
                std::fs::FileTimes::new()
                    .set_modified(mtime)
                    .set_accessed(mtime),
            )
            .map_err(|e| io(&tmp, e))?;
            drop(file);
            let name = format!("{unique}:2,{}", flag_letters(r.flags, &r.keywords, &table));
            let to = dir.join("cur").join(name);
            std::fs::rename(&tmp, &to).map_err(|e| io(&to, e))?;
            nmsg += 1;
            nbytes += r.size;
        }
    }
    subscriptions.extend(orphans);
    if !subscriptions.is_empty() {
        let mut text = String::new();
        for s in &subscriptions {
            text.push_str(&s.replace(crate::store::DELIMITER, "."));
            text.push('\n');
        }
        let f = root.join("subscriptions");
        std::fs::write(&f, text).map_err(|e| io(&f, e))?;
    }
    println!(
        "exported {nmsg} messages ({nbytes} octets) in {} folders of {account} to {}",
        folders.len(),
        root.display()
    );
    Ok(())
}

/// One message file of a Maildir folder.
struct MailFile {
    path: PathBuf,
    mtime: i64,
    info: String,
}

/// Lines made CRLF (the store's form); CRLF already there is kept.
fn crlf(raw: Vec<u8>) -> Vec<u8> {
    if !raw
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || raw[i - 1] != b'\r'))
    {
        return raw;
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn list_files(dir: &Path) -> Result<Vec<MailFile>, String> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        let d = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.map_err(|e| io(&d, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let meta = e.metadata().map_err(|er| io(&e.path(), er))?;
            if !meta.is_file() {
                continue;
            }
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            // Messages in new/ have no info yet.
            let info = match (sub, name.rsplit_once(":2,")) {
                ("cur", Some((_, info))) => info.to_string(),
                _ => String::new(),
            };
            out.push(MailFile {
                path: e.path(),
                mtime,
                info,
            });
        }
    }
    out.sort_by(|a, b| (a.mtime, &a.path).cmp(&(b.mtime, &b.path)));
    Ok(out)
}

fn read_keywords(dir: &Path) -> Vec<Option<String>> {
    let mut table = vec![None; MAX_KEYWORDS];
    if let Ok(text) = std::fs::read_to_string(dir.join("dovecot-keywords")) {
        for line in text.lines() {
            if let Some((i, k)) = line.split_once(' ')
                && let Ok(i) = i.parse::<usize>()
                && i < MAX_KEYWORDS
                && !k.is_empty()
            {
                table[i] = Some(k.to_string());
            }
        }
    }
    table
}

fn parse_info(info: &str, table: &[Option<String>]) -> (u16, Vec<String>) {
    let mut f = 0u16;
    let mut kw = Vec::new();
    for c in info.chars() {
        match c {
            'D' => f |= flags::DRAFT,
            'F' => f |= flags::FLAGGED,
            'P' => kw.push("$Forwarded".to_string()),
            'R' => f |= flags::ANSWERED,
            'S' => f |= flags::SEEN,
            'T' => f |= flags::DELETED,
            'a'..='z' => {
                if let Some(Some(k)) = table.get((c as u8 - b'a') as usize) {
                    kw.push(k.clone());
                }
            }
            _ => {}
        }
    }
    kw.dedup();
    (f, kw)
}

/// The folders of a Maildir++ tree: INBOX, then `.A.B` directories.
fn list_folders(root: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = vec![("INBOX".to_string(), root.to_path_buf())];
    for e in std::fs::read_dir(root).map_err(|e| io(root, e))? {
        let e = e.map_err(|e| io(root, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix('.') else {
            continue;
        };
        if rest.is_empty() || rest == "." || !e.path().join("cur").is_dir() {
            continue;
        }
        let folder = rest.replace('.', "/");
        if folder.eq_ignore_ascii_case("INBOX") {
            continue;
        }
        out.push((folder, e.path()));
    }
    out[1..].sort();
    Ok(out)
}

/// `petrel import NAME --maildir DIR`.
pub fn import(config: &Config, account: &str, root: &Path) -> Result<(), String> {
    if !root.join("cur").is_dir() && !root.join("new").is_dir() {
        return Err(format!(
            "{}: not a Maildir (no cur/ or new/)",
            root.display()
        ));
    }
    let folders = list_folders(root)?;
    let access = Access::open(config, account)?;
    let (mut added, mut skipped) = (0u64, 0u64);
    for (folder, dir) in &folders {
        access.create(account, folder)?;
        let table = read_keywords(dir);
        let files = list_files(dir)?;
        // What the folder holds: (INTERNALDATE, size) → UIDs, to find a
        // file already imported without reading every copy.
        let mut have: HashMap<(i64, u64), Vec<u32>> = HashMap::new();
        for r in access.messages(account, folder)? {
            have.entry((r.internal_date, r.size))
                .or_default()
                .push(r.uid);
        }
        for f in files {
            let content = crlf(std::fs::read(&f.path).map_err(|e| io(&f.path, e))?);
            if content.len() as u64 > config.inbound.max_message_size.max(control::IMPORT_LIMIT) {
                eprintln!(
                    "petrel: {}: too large to import ({} octets); skipped",
                    f.path.display(),
                    content.len()
                );
                continue;
            }
            let key = (f.mtime, content.len() as u64);
            let mut present = false;
            for uid in have.get(&key).map(Vec::as_slice).unwrap_or(&[]) {
                let mut stored = Vec::with_capacity(content.len());
                access.read(account, folder, *uid, &mut |b| {
                    stored.extend_from_slice(b);
                    Ok(())
                })?;
                if stored == content {
                    present = true;
                    break;
                }
            }
            if present {
                skipped += 1;
                continue;
            }
            let (flags, keywords) = parse_info(&f.info, &table);
            let row = MessageRow {
                uid: 0,
                flags,
                keywords,
                internal_date: f.mtime,
                size: content.len() as u64,
            };
            access.append(account, folder, &row, content)?;
            added += 1;
        }
    }
    if let Ok(text) = std::fs::read_to_string(root.join("subscriptions")) {
        let mut lines = text.lines().peekable();
        // Dovecot's version 2 file: a `V\t2` line, a blank one, and names
        // with a tab between levels.
        let v2 = lines.peek().is_some_and(|l| l.starts_with("V\t"));
        for line in lines {
            if v2 && (line.starts_with("V\t") || line.is_empty()) || line.is_empty() {
                continue;
            }
            let name = if v2 {
                line.replace('\t', "/")
            } else {
                line.replace('.', "/")
            };
            access.subscribe(account, &name)?;
        }
    }
    println!(
        "imported {added} messages into {} folders of {account} from {}; {skipped} already there",
        folders.len(),
        root.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_through_the_info_suffix() {
        let table = vec!["$Label1".to_string(), "todo".to_string()];
        let kw = vec!["todo".into(), "$Forwarded".into()];
        let s = flag_letters(flags::SEEN | flags::ANSWERED | flags::DRAFT, &kw, &table);
        assert_eq!(s, "DRSb");
        let t: Vec<Option<String>> = table.iter().cloned().map(Some).collect();
        let (f, k) = parse_info(&s, &t);
        assert_eq!(f, flags::SEEN | flags::ANSWERED | flags::DRAFT);
        assert_eq!(k, vec!["todo".to_string()]);
        assert_eq!(parse_info("PS", &t).1, vec!["$Forwarded".to_string()]);
    }

    #[test]
    fn folder_names_map_to_dot_directories() {
        let r = Path::new("/m");
        assert_eq!(folder_dir(r, "INBOX").0, PathBuf::from("/m"));
        assert_eq!(folder_dir(r, "A/B").0, PathBuf::from("/m/.A.B"));
        assert_eq!(folder_dir(r, "v1.2").0, PathBuf::from("/m/.v1_2"));
    }

    #[test]
    fn bare_lf_becomes_crlf_and_crlf_stays() {
        assert_eq!(crlf(b"a\nb\r\n".to_vec()), b"a\r\nb\r\n".to_vec());
        assert_eq!(crlf(b"a\r\n".to_vec()), b"a\r\n".to_vec());
    }
}
