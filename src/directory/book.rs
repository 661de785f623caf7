//! The shared address book (`[directory] backend = "postgres"`): users,
//! mail-in boxes and alias groups in the store's PostgreSQL database,
//! changed with `petrel user …` and `petrel alias …`, read by every node.
//!
//! Tables: `directory_users` (name, password hash, addresses, admin,
//! quota), `directory_mailin` (name, addresses, readers),
//! `directory_aliases` (address, members); `petrel_meta.directory` is a
//! counter raised by every change, in the change's transaction. Each
//! node looks at the counter every second (`watch`) and, when it moved,
//! reads the book again and puts it into its configuration beside the
//! file's own entries (`Config::with_shared_directory`): a change is in
//! force on every node within about a second, without a reload.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_postgres::{Client, NoTls};

use crate::config::raw::{RawAlias, RawMailin, RawUser};
use crate::config::{Config, SharedEntries};

const SCHEMA: &str = r#"
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS petrel_meta (
    key text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO petrel_meta (key, value) VALUES ('directory', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS directory_users (
    name text PRIMARY KEY,
    password text NOT NULL DEFAULT '',
    addresses text[] NOT NULL,
    admin boolean NOT NULL DEFAULT false,
    quota text NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS directory_mailin (
    name text PRIMARY KEY,
    addresses text[] NOT NULL,
    readers text[] NOT NULL
);
CREATE TABLE IF NOT EXISTS directory_aliases (
    address text PRIMARY KEY,
    members text[] NOT NULL
);
"#;

/// How often a node looks for changes.
const POLL: Duration = Duration::from_secs(1);

/// A connection to the address book.
pub struct Book {
    client: Client,
}

fn pg(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {}", db.message()),
        None => format!("PostgreSQL: {e}"),
    }
}

/// A change to the address book.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new user.
    AddUser {
        /// Login and mailbox name.
        name: String,
        /// Addresses.
        addresses: Vec<String>,
        /// Password hash; empty: cannot log in yet.
        password: String,
        /// May use the console.
        admin: bool,
        /// Quota, as in `[[users]] quota` ("2GiB"); empty: none.
        quota: String,
    },
    /// A user's new password hash.
    Passwd {
        /// The user.
        name: String,
        /// The hash.
        password: String,
    },
    /// A user removed (their mail stays in the store).
    DelUser {
        /// The user.
        name: String,
    },
    /// A new mail-in (shared) box.
    AddMailin {
        /// Mailbox name.
        name: String,
        /// Addresses delivered to it.
        addresses: Vec<String>,
        /// Users who may read it.
        readers: Vec<String>,
    },
    /// A mail-in box removed (its mail stays in the store).
    DelMailin {
        /// Mailbox name.
        name: String,
    },
    /// Members added to an alias group (made if new).
    AliasAdd {
        /// The group's address.
        address: String,
        /// Members to add.
        members: Vec<String>,
    },
    /// Members taken from an alias group; none given: the group goes.
    AliasDel {
        /// The group's address.
        address: String,
        /// Members to take away.
        members: Vec<String>,
    },
}

impl Book {
    /// Connects to the database at `url` (the store's) and makes the
    /// tables if missing.
    pub async fn connect(url: &str) -> Result<Book, String> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| format!("store.url: {e}"))?;
        let (client, conn) = config.connect(NoTls).await.map_err(pg)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client.batch_execute(SCHEMA).await.map_err(pg)?;
        Ok(Book { client })
    }

    /// The change counter.
    pub async fn version(&self) -> Result<i64, String> {
        Ok(self
            .client
            .query_one("SELECT value FROM petrel_meta WHERE key = 'directory'", &[])
            .await
            .map_err(pg)?
            .get(0))
    }

    /// Every entry, with the counter they go with (one snapshot).
    pub(crate) async fn load(&mut self) -> Result<(i64, SharedEntries), String> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let version: i64 = tx
            .query_one("SELECT value FROM petrel_meta WHERE key = 'directory'", &[])
            .await
            .map_err(pg)?
            .get(0);
        let entries = entries(&tx).await?;
        tx.commit().await.map_err(pg)?;
        Ok((version, entries))
    }

    /// Makes a change after checking that the book with it, beside the
    /// file's entries of `config`, is a valid directory; the counter is
    /// raised in the same transaction.
    pub async fn apply(&mut self, config: &Config, change: &Change) -> Result<(), String> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::Serializable)
            .start()
            .await
            .map_err(pg)?;
        // The whole book, locked for this change: two administrators'
        // changes are checked one after the other.
        tx.execute(
            "SELECT value FROM petrel_meta WHERE key = 'directory' FOR UPDATE",
            &[],
        )
        .await
        .map_err(pg)?;
        let mut entries = entries(&tx).await?;
        match change {
            Change::AddUser {
                name,
                addresses,
                password,
                admin,
                quota,
            } => {
                if entries.users.iter().any(|u| u.name == *name)
                    || config.directory.user(name).is_some()
                {
                    return Err(format!("user {name:?} exists already"));
                }
                let addresses: Vec<String> = addresses
                    .iter()
                    .map(|a| a.trim().to_ascii_lowercase())
                    .collect();
                entries.users.push(RawUser {
                    name: name.clone(),
                    password: password.clone(),
                    addresses: addresses.clone(),
                    admin: *admin,
                    quota: quota.clone(),
                });
                check(config, &entries)?;
                tx.execute(
                    "INSERT INTO directory_users (name, password, addresses, admin, quota) VALUES ($1, $2, $3, $4, $5)",
                    &[name, password, &addresses, admin, quota],
                )
                .await
                .map_err(pg)?;
            }
            Change::Passwd { name, password } => {
                if let Err(e) = crate::auth::check_hash(password) {
                    return Err(e.to_string());
                }
                let n = tx
                    .execute(
                        "UPDATE directory_users SET password = $2 WHERE name = $1",
                        &[name, password],
                    )
                    .await
                    .map_err(pg)?;
                if n == 0 {
                    return Err(if config.directory.user(name).is_some() {
                        format!(
                            "user {name:?} is in the configuration file, not the database: change its password there"
                        )
                    } else {
                        format!("no user {name:?} in the database")
                    });
                }
            }
            Change::DelUser { name } => {
                entries.users.retain(|u| u.name != *name);
                check(config, &entries)?;
                let n = tx
                    .execute("DELETE FROM directory_users WHERE name = $1", &[name])
                    .await
                    .map_err(pg)?;
                if n == 0 {
                    return Err(format!("no user {name:?} in the database"));
                }
            }
            Change::AddMailin {
                name,
                addresses,
                readers,
            } => {
                if entries.mailin.iter().any(|m| m.name == *name)
                    || config.directory.has_mailbox(name)
                {
                    return Err(format!("mailbox {name:?} exists already"));
                }
                let addresses: Vec<String> = addresses
                    .iter()
                    .map(|a| a.trim().to_ascii_lowercase())
                    .collect();
                entries.mailin.push(RawMailin {
                    name: name.clone(),
                    addresses: addresses.clone(),
                    readers: readers.clone(),
                });
                check(config, &entries)?;
                tx.execute(
                    "INSERT INTO directory_mailin (name, addresses, readers) VALUES ($1, $2, $3)",
                    &[name, &addresses, readers],
                )
                .await
                .map_err(pg)?;
            }
            Change::DelMailin { name } => {
                entries.mailin.retain(|m| m.name != *name);
                check(config, &entries)?;
                let n = tx
                    .execute("DELETE FROM directory_mailin WHERE name = $1", &[name])
                    .await
                    .map_err(pg)?;
                if n == 0 {
                    return Err(format!("no mail-in box {name:?} in the database"));
                }
            }
            Change::AliasAdd { address, members } => {
                let address = address.trim().to_ascii_lowercase();
                let members: Vec<String> = members
                    .iter()
                    .map(|m| m.trim().to_ascii_lowercase())
                    .collect();
                let mut all = entries
                    .aliases
                    .iter()
                    .find(|a| a.address == address)
                    .map(|a| a.members.clone())
                    .unwrap_or_default();
                for m in &members {
                    if !all.contains(m) {
                        all.push(m.clone());
                    }
                }
                entries.aliases.retain(|a| a.address != address);
                entries.aliases.push(RawAlias {
                    address: address.clone(),
                    members: all.clone(),
                });
                check(config, &entries)?;
                tx.execute(
                    "INSERT INTO directory_aliases (address, members) VALUES ($1, $2) \
                     ON CONFLICT (address) DO UPDATE SET members = EXCLUDED.members",
                    &[&address, &all],
                )
                .await
                .map_err(pg)?;
            }
            Change::AliasDel { address, members } => {
                let address = address.trim().to_ascii_lowercase();
                let Some(current) = entries.aliases.iter().find(|a| a.address == address) else {
                    return Err(format!("no alias {address:?} in the database"));
                };
                let members: Vec<String> = members
                    .iter()
                    .map(|m| m.trim().to_ascii_lowercase())
                    .collect();
                let left: Vec<String> = if members.is_empty() {
                    Vec::new()
                } else {
                    current
                        .members
                        .iter()
                        .filter(|m| !members.contains(m))
                        .cloned()
                        .collect()
                };
                entries.aliases.retain(|a| a.address != address);
                if left.is_empty() {
                    check(config, &entries)?;
                    tx.execute(
                        "DELETE FROM directory_aliases WHERE address = $1",
                        &[&address],
                    )
                    .await
                    .map_err(pg)?;
                } else {
                    entries.aliases.push(RawAlias {
                        address: address.clone(),
                        members: left.clone(),
                    });
                    check(config, &entries)?;
                    tx.execute(
                        "UPDATE directory_aliases SET members = $2 WHERE address = $1",
                        &[&address, &left],
                    )
                    .await
                    .map_err(pg)?;
                }
            }
        }
        tx.execute(
            "UPDATE petrel_meta SET value = value + 1 WHERE key = 'directory'",
            &[],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)
    }
}

/// Every entry of the book, as read in `tx`.
async fn entries(tx: &tokio_postgres::Transaction<'_>) -> Result<SharedEntries, String> {
    let users = tx
        .query(
            "SELECT name, password, addresses, admin, quota FROM directory_users ORDER BY name",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| RawUser {
            name: r.get(0),
            password: r.get(1),
            addresses: r.get(2),
            admin: r.get(3),
            quota: r.get(4),
        })
        .collect();
    let mailin = tx
        .query(
            "SELECT name, addresses, readers FROM directory_mailin ORDER BY name",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| RawMailin {
            name: r.get(0),
            addresses: r.get(1),
            readers: r.get(2),
        })
        .collect();
    let aliases = tx
        .query(
            "SELECT address, members FROM directory_aliases ORDER BY address",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| RawAlias {
            address: r.get(0),
            members: r.get(1),
        })
        .collect();
    Ok(SharedEntries {
        users,
        mailin,
        aliases,
    })
}

/// Whether the book `entries` beside the file's entries is a directory.
fn check(config: &Config, entries: &SharedEntries) -> Result<(), String> {
    config.with_shared_directory(entries).map(|_| ())
}

/// The node's part: reads the book at start (the daemon does not serve
/// without it), then every second looks at the counter and puts a changed
/// book into the running configuration. `shared` keeps the last book
/// read, so a reload of the file puts it back beside the file's entries.
pub(crate) async fn install(
    url: &str,
    config: Arc<ArcSwap<Config>>,
    shared: Arc<std::sync::Mutex<SharedEntries>>,
) -> Result<(), String> {
    let mut book = Book::connect(url).await?;
    let (mut seen, entries) = book.load().await?;
    let cfg = config.load().with_shared_directory(&entries)?;
    let users = entries.users.len();
    *shared.lock().unwrap_or_else(|p| p.into_inner()) = entries;
    config.store(Arc::new(cfg));
    tracing::info!(users, version = seen, "address book read from the database");
    let url = url.to_string();
    tokio::spawn(async move {
        let mut book = Some(book);
        loop {
            tokio::time::sleep(POLL).await;
            if book.is_none() {
                book = Book::connect(&url).await.ok();
            }
            let Some(b) = book.as_mut() else { continue };
            let version = match b.version().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "address book: cannot read the database; the last book read stays");
                    book = None;
                    continue;
                }
            };
            if version == seen {
                continue;
            }
            match b.load().await {
                Ok((v, entries)) => match config.load().with_shared_directory(&entries) {
                    Ok(cfg) => {
                        let users = entries.users.len();
                        *shared.lock().unwrap_or_else(|p| p.into_inner()) = entries;
                        config.store(Arc::new(cfg));
                        seen = v;
                        tracing::info!(users, version = v, "address book changed in the database");
                    }
                    Err(e) => {
                        seen = v;
                        tracing::error!(error = %e, version = v, "address book in the database is not valid; the last good one stays");
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "address book: cannot read the database");
                    book = None;
                }
            }
        }
    });
    Ok(())
}
