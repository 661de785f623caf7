//! `petrel user add|passwd|del`, `petrel mailin add|del` and `petrel alias
//! add|del`: changes to the address book kept in the database
//! (`[directory] backend = "postgres"`).
//! Every node picks a change up within about a second.

use std::io::Read;

use crate::config::{Config, DirectoryBackend, MessageStore};
use crate::directory::book::{Book, Change};

/// `petrel user …`.
#[derive(clap::Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user; a password is read from stdin (none: cannot log in yet).
    Add {
        /// Login and mailbox name.
        name: String,
        /// Addresses delivered to the user.
        #[arg(long = "address", value_name = "ADDR", required = true)]
        addresses: Vec<String>,
        /// May use the console (/admin).
        #[arg(long)]
        admin: bool,
        /// Storage quota, e.g. 2GiB.
        #[arg(long, default_value = "")]
        quota: String,
    },
    /// Set a user's password, read from stdin.
    Passwd {
        /// The user.
        name: String,
    },
    /// Remove a user (the mail stays in the store).
    Del {
        /// The user.
        name: String,
    },
}

/// `petrel mailin …`.
#[derive(clap::Subcommand, Debug)]
pub enum MailinCmd {
    /// Add a mail-in (shared) box.
    Add {
        /// Mailbox name.
        name: String,
        /// Addresses delivered to it.
        #[arg(long = "address", value_name = "ADDR", required = true)]
        addresses: Vec<String>,
        /// Users who may read it.
        #[arg(long = "reader", value_name = "USER")]
        readers: Vec<String>,
    },
    /// Remove a mail-in box (the mail stays in the store).
    Del {
        /// Mailbox name.
        name: String,
    },
}

/// `petrel alias …`.
#[derive(clap::Subcommand, Debug)]
pub enum AliasCmd {
    /// Add members to an alias group (made if new).
    Add {
        /// The group's address.
        address: String,
        /// Members to add.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Take members from a group; with none, the group goes.
    Del {
        /// The group's address.
        address: String,
        /// Members to take away.
        members: Vec<String>,
    },
}

/// The password on stdin (one line), hashed; `None` for empty input.
fn password_from_stdin(required: bool) -> Result<Option<String>, String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let password = input.strip_suffix('\n').unwrap_or(&input);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return if required {
            Err("empty password".into())
        } else {
            Ok(None)
        };
    }
    crate::auth::hash_password(password).map(Some)
}

fn apply(config: &Config, change: Change, done: String) -> Result<(), String> {
    let url = match (&config.directory_backend, &config.store) {
        (DirectoryBackend::Postgres, MessageStore::Postgres { url, .. }) => url.clone(),
        _ => {
            return Err(
                "the address book is in the configuration file ([directory] backend = \"config\"): edit [[users]] and [[aliases]] there and run petrel reload"
                    .into(),
            );
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut book = Book::connect(&url).await?;
        book.apply(config, &change).await
    })?;
    println!("petrel: {done}");
    Ok(())
}

/// Runs `petrel user …`.
pub fn user(config: &Config, cmd: UserCmd) -> Result<(), String> {
    match cmd {
        UserCmd::Add {
            name,
            addresses,
            admin,
            quota,
        } => {
            let password = password_from_stdin(false)?.unwrap_or_default();
            let done = format!("user {name} added");
            apply(
                config,
                Change::AddUser {
                    name,
                    addresses,
                    password,
                    admin,
                    quota,
                },
                done,
            )
        }
        UserCmd::Passwd { name } => {
            let password = password_from_stdin(true)?.unwrap_or_default();
            let done = format!("password of {name} changed");
            apply(config, Change::Passwd { name, password }, done)
        }
        UserCmd::Del { name } => {
            let done = format!("user {name} removed; their mail stays in the store");
            apply(config, Change::DelUser { name }, done)
        }
    }
}

/// Runs `petrel mailin …`.
pub fn mailin(config: &Config, cmd: MailinCmd) -> Result<(), String> {
    match cmd {
        MailinCmd::Add {
            name,
            addresses,
            readers,
        } => {
            let done = format!("mail-in box {name} added");
            apply(
                config,
                Change::AddMailin {
                    name,
                    addresses,
                    readers,
                },
                done,
            )
        }
        MailinCmd::Del { name } => {
            let done = format!("mail-in box {name} removed; its mail stays in the store");
            apply(config, Change::DelMailin { name }, done)
        }
    }
}

/// Runs `petrel alias …`.
pub fn alias(config: &Config, cmd: AliasCmd) -> Result<(), String> {
    match cmd {
        AliasCmd::Add { address, members } => {
            let done = format!("{address}: {} added", members.join(", "));
            apply(config, Change::AliasAdd { address, members }, done)
        }
        AliasCmd::Del { address, members } => {
            let done = if members.is_empty() {
                format!("alias {address} removed")
            } else {
                format!("{address}: {} removed", members.join(", "))
            };
            apply(config, Change::AliasDel { address, members }, done)
        }
    }
}
