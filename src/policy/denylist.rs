//! The console's deny list: senders, sender domains and client addresses
//! that administrators refused from the browser ("deny this sender" on a
//! queued or refused message), with who added each and when.
//!
//! It is data the daemon owns, not configuration: the administrator's
//! TOML file is never rewritten. It lives in `<spool>/deny-list.json`,
//! written whole to a temporary file, synced and renamed over the old one
//! (a crash leaves the old list or the new one), and is held in memory
//! behind an `ArcSwap`, so a change counts for the next session at once
//! and a session in progress reads one consistent list. The SMTP policy
//! (`smtp::policy::connection`, `smtp::policy::mail`) and `petrel explain`
//! consult it beside `deny_connections_from` and `deny_senders`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// The file's name in the spool directory.
pub const FILE_NAME: &str = "deny-list.json";

/// What an entry refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One envelope sender address.
    Sender,
    /// Every sender at a domain (and its subdomains).
    Domain,
    /// A client address: refused at connect.
    Client,
}

impl Kind {
    /// Its name in forms and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sender => "sender",
            Kind::Domain => "domain",
            Kind::Client => "client",
        }
    }

    /// The kind a form names.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "sender" => Some(Kind::Sender),
            "domain" => Some(Kind::Domain),
            "client" => Some(Kind::Client),
            _ => None,
        }
    }
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What it refuses.
    pub kind: Kind,
    /// The address, domain (lower case) or IP address.
    pub value: String,
    /// The console user who added it.
    pub added_by: String,
    /// When, Unix seconds.
    pub added_at: i64,
}

/// The whole list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenyList {
    /// Entries, oldest first.
    pub entries: Vec<Entry>,
}

/// Why a value cannot be an entry.
pub fn normalise(kind: Kind, value: &str) -> Result<String, String> {
    let v = value
        .trim()
        .trim_matches(|c| c == '<' || c == '>')
        .to_lowercase();
    let ok = match kind {
        Kind::Sender => v
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@')),
        Kind::Domain => {
            let d = v.trim_start_matches('@');
            !d.is_empty()
                && d.contains('.')
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }
        Kind::Client => v
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok(),
    };
    if !ok {
        return Err(format!(
            "{value:?} is not a {}",
            match kind {
                Kind::Sender => "mail address",
                Kind::Domain => "domain",
                Kind::Client => "client IP address",
            }
        ));
    }
    Ok(match kind {
        Kind::Domain => v.trim_start_matches('@').to_string(),
        Kind::Client => v
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .map(|ip| ip.to_string())
            .unwrap_or(v),
        Kind::Sender => v,
    })
}

impl DenyList {
    /// Reads the list in `spool`; none there is an empty list.
    pub fn load(spool: &Path) -> Result<DenyList, String> {
        let path = spool.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DenyList::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the list into `spool`, atomically and durably.
    fn save(&self, spool: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let path = spool.join(FILE_NAME);
        let tmp: PathBuf = spool.join(format!("{FILE_NAME}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(spool)?.sync_all()
    }

    /// The entry refusing this client, if any.
    pub fn client(&self, ip: IpAddr) -> Option<&Entry> {
        let ip = ip.to_string();
        self.entries
            .iter()
            .find(|e| e.kind == Kind::Client && e.value == ip)
    }

    /// The entry refusing this envelope sender (the address, or its domain
    /// or a parent of it), if any.
    pub fn sender(&self, sender: &str) -> Option<&Entry> {
        let s = sender.to_lowercase();
        let domain = s.rsplit_once('@').map(|(_, d)| d)?;
        self.entries.iter().find(|e| match e.kind {
            Kind::Sender => e.value == s,
            Kind::Domain => {
                domain == e.value
                    || domain
                        .strip_suffix(e.value.as_str())
                        .is_some_and(|p| p.ends_with('.'))
            }
            Kind::Client => false,
        })
    }
}

/// The daemon's list: where it is kept, and the current one.
pub struct Held {
    spool: PathBuf,
    current: ArcSwap<DenyList>,
    /// One change at a time (read, change, write, swap).
    writing: Mutex<()>,
}

static HELD: OnceLock<Held> = OnceLock::new();

/// Loads the list of `spool` for this process (the daemon at start).
pub fn install(spool: &Path) -> Result<(), String> {
    let list = DenyList::load(spool)?;
    let held = Held {
        spool: spool.to_path_buf(),
        current: ArcSwap::from_pointee(list.clone()),
        writing: Mutex::new(()),
    };
    if let Err(held) = HELD.set(held) {
        // Installed before (tests that start several daemons in one
        // process do not exist; a second call reloads).
        held.current.store(Arc::new(list));
    }
    Ok(())
}

/// The current list (empty when none was installed).
pub fn current() -> Arc<DenyList> {
    match HELD.get() {
        Some(h) => h.current.load_full(),
        None => Arc::new(DenyList::default()),
    }
}

fn change(f: impl FnOnce(&mut DenyList) -> Result<(), String>) -> Result<(), String> {
    let held = HELD.get().ok_or("the deny list is not loaded")?;
    let _w = held.writing.lock().unwrap_or_else(|e| e.into_inner());
    let mut list = (*held.current.load_full()).clone();
    f(&mut list)?;
    list.save(&held.spool)
        .map_err(|e| format!("cannot write {}: {e}", held.spool.join(FILE_NAME).display()))?;
    held.current.store(Arc::new(list));
    Ok(())
}

/// Adds an entry (a value already listed is left as it is).
pub fn add(kind: Kind, value: &str, by: &str) -> Result<String, String> {
    let value = normalise(kind, value)?;
    let v = value.clone();
    change(|l| {
        if !l.entries.iter().any(|e| e.kind == kind && e.value == v) {
            l.entries.push(Entry {
                kind,
                value: v,
                added_by: by.to_string(),
                added_at: chrono::Utc::now().timestamp(),
            });
        }
        Ok(())
    })?;
    tracing::info!(kind = kind.as_str(), value = %value, by = %by, "deny list: entry added");
    Ok(value)
}

/// Removes an entry.
pub fn remove(kind: Kind, value: &str, by: &str) -> Result<(), String> {
    let value = value.to_string();
    change(|l| {
        l.entries.retain(|e| !(e.kind == kind && e.value == value));
        Ok(())
    })?;
    tracing::info!(kind = kind.as_str(), value = %value, by = %by, "deny list: entry removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, value: &str) -> Entry {
        Entry {
            kind,
            value: value.into(),
            added_by: "alice".into(),
            added_at: 0,
        }
    }

    #[test]
    fn entries_match_senders_domains_and_clients() {
        let l = DenyList {
            entries: vec![
                entry(Kind::Sender, "spam@bad.test"),
                entry(Kind::Domain, "worse.test"),
                entry(Kind::Client, "192.0.2.7"),
            ],
        };
        assert!(l.sender("SPAM@bad.test").is_some());
        assert!(l.sender("ham@bad.test").is_none());
        assert!(l.sender("x@worse.test").is_some());
        assert!(l.sender("x@mx.worse.test").is_some());
        assert!(l.sender("x@notworse.test").is_none());
        assert!(l.sender("").is_none());
        assert!(l.client("192.0.2.7".parse().unwrap()).is_some());
        assert!(l.client("192.0.2.8".parse().unwrap()).is_none());
    }

    #[test]
    fn values_are_checked_and_normalised() {
        assert_eq!(
            normalise(Kind::Sender, " <Spam@Bad.Test> ").unwrap(),
            "spam@bad.test"
        );
        assert_eq!(normalise(Kind::Domain, "@Bad.Test").unwrap(), "bad.test");
        assert_eq!(
            normalise(Kind::Client, "[2001:DB8::1]").unwrap(),
            "2001:db8::1"
        );
        assert!(normalise(Kind::Sender, "nobody").is_err());
        assert!(normalise(Kind::Domain, "bad domain").is_err());
        assert!(normalise(Kind::Client, "300.1.1.1").is_err());
    }

    #[test]
    fn the_list_survives_a_reload_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let l = DenyList {
            entries: vec![entry(Kind::Domain, "bad.test")],
        };
        l.save(dir.path()).unwrap();
        assert_eq!(DenyList::load(dir.path()).unwrap(), l);
        assert_eq!(
            DenyList::load(&dir.path().join("none")).unwrap(),
            DenyList::default()
        );
    }
}
