//! The command line: `petrel SUBCOMMAND`, and the `mailq` / `sendmail`
//! personalities chosen by argv[0]. Queue commands go to the daemon over
//! the control socket, or to the spool directly when no daemon runs.
//!
//! Exit status: 0 success, 1 failure with a one-line message on stderr,
//! 2 usage error; `sendmail` uses sysexits codes instead.

mod admin;
mod book;
mod dkim;
mod explain;
mod maildir;
mod queue;
mod sendmail;
mod track;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::control::{self, CallError, Item, Request};
use crate::spool::{Spool, StoreError};

/// petrel: a queueing mail transfer agent with local mailboxes.
#[derive(Parser, Debug)]
#[command(name = "petrel", version, about)]
struct Cli {
    /// Configuration file (default: $PETREL_CONFIG, else config/petrel.toml
    /// if it exists, else the built-in defaults).
    #[arg(short, long, env = "PETREL_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon in the foreground.
    Serve,
    /// List the queue.
    Mailq {
        /// One JSON object per line (as `postqueue -j`).
        #[arg(long)]
        json: bool,
        /// Only messages with a pending recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages in this state.
        #[arg(long, value_parser = ["active", "deferred", "hold"])]
        state: Option<String>,
    },
    /// Make deferred messages due now.
    Requeue(Select),
    /// Keep messages from delivery until released.
    Hold {
        /// Queue IDs.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Release held messages.
    Release {
        /// Queue IDs.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove messages from the queue without a bounce.
    Delete(Select),
    /// Show a message's envelope and recipients.
    Show {
        /// Queue ID.
        id: String,
        /// Print the message too.
        #[arg(long)]
        body: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Counts by state and destination, oldest message age.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Reload the configuration in the running daemon.
    Reload,
    /// Run-time diagnostics.
    Debug {
        #[command(subcommand)]
        what: DebugCmd,
    },
    /// Submit a message on stdin (sendmail-compatible options).
    #[command(disable_help_flag = true)]
    Sendmail {
        /// sendmail options and recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Read a password on stdin and print its hash for the directory.
    HashPassword,
    /// Validate the configuration; print each error with its key.
    CheckConfig,
    /// The history of a message, also after it left the queue.
    Track(track::Args),
    /// Run a would-be session through every rule, sending nothing.
    Explain(explain::Args),
    /// The effective configuration.
    Config {
        #[command(subcommand)]
        what: ConfigCmd,
    },
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        what: DkimCmd,
    },
    /// Write an account's folders, messages and flags out as Maildir++.
    Export {
        /// Account (user or mail-in name).
        name: String,
        /// A new or empty directory to write.
        #[arg(long, value_name = "DIR")]
        maildir: PathBuf,
    },
    /// Add a Maildir++ tree's folders, messages and flags to an account;
    /// messages already there are skipped.
    Import {
        /// Account (user or mail-in name).
        name: String,
        /// The Maildir to read.
        #[arg(long, value_name = "DIR")]
        maildir: PathBuf,
    },
    /// Deliver another (dead) node's spool from this node, with this
    /// node's configuration; ends when nothing is left to try now.
    Drain {
        /// The other node's spool directory.
        #[arg(long, value_name = "PATH")]
        spool: PathBuf,
    },
    /// Users in the address book kept in the database.
    User {
        #[command(subcommand)]
        what: book::UserCmd,
    },
    /// Mail-in (shared) boxes in the address book kept in the database.
    Mailin {
        #[command(subcommand)]
        what: book::MailinCmd,
    },
    /// Alias groups in the address book kept in the database.
    Alias {
        #[command(subcommand)]
        what: book::AliasCmd,
    },
    /// List a local mailbox, or print one of its messages.
    Mailbox {
        /// Mailbox name (user or mail-in).
        name: String,
        /// Print the message with this UID.
        #[arg(long)]
        uid: Option<u64>,
        /// The folder (default INBOX), e.g. Junk or Sent.
        #[arg(long)]
        folder: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct Select {
    /// Every message.
    #[arg(long)]
    all: bool,
    /// Messages with a pending recipient in this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Queue IDs.
    ids: Vec<String>,
}

impl Select {
    fn selection(&self) -> control::Selection {
        if self.all {
            control::Selection::All
        } else if let Some(d) = &self.domain {
            control::Selection::Domain(d.clone())
        } else {
            control::Selection::Ids(self.ids.clone())
        }
    }
}

#[derive(Subcommand, Debug)]
enum DkimCmd {
    /// Write a signing key (mode 0600) and print the DNS TXT record.
    Keygen(dkim::KeygenArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Print the effective configuration, defaults filled in (as
    /// `postconf`); `--changed`: only what differs from the defaults (as
    /// `postconf -n`).
    Show {
        /// Only keys whose value is not the default.
        #[arg(long)]
        changed: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DebugCmd {
    /// Set the SMTP protocol trace level (0 off … 3 every line).
    Smtp {
        /// 0–3.
        #[arg(value_parser = clap::value_parser!(u8).range(0..=3))]
        level: u8,
    },
}

/// Entry point: dispatches on argv[0] (`mailq`, `sendmail`) and the
/// subcommand. Returns the process exit status.
pub fn main(args: Vec<String>) -> i32 {
    let prog = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    let args = match prog.as_str() {
        "sendmail" => {
            let mut v = vec!["petrel".to_string()];
            // Leading sendmail options belong to sendmail, but a -c/--config
            // given first is ours.
            let mut rest = args.into_iter().skip(1).peekable();
            if let Some(a) = rest.peek()
                && (a == "-c" || a == "--config")
            {
                v.push(rest.next().unwrap_or_default());
                v.push(rest.next().unwrap_or_default());
            }
            v.push("sendmail".into());
            v.extend(rest);
            v
        }
        "mailq" => {
            let mut v = vec!["petrel".to_string(), "mailq".to_string()];
            v.extend(args.into_iter().skip(1));
            v
        }
        _ => args,
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => 2,
            };
        }
    };
    match cli.command {
        Cmd::CheckConfig => return admin::check_config(cli.config.as_deref()),
        Cmd::HashPassword => return admin::hash_password(),
        Cmd::Dkim {
            what: DkimCmd::Keygen(args),
        } => return dkim::keygen(cli.config.as_deref(), &args),
        _ => {}
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("petrel: {e}");
            if matches!(cli.command, Cmd::Reload) {
                admin::reload_invalid(cli.config.as_deref());
            }
            return if matches!(cli.command, Cmd::Sendmail { .. }) {
                sendmail::EX_CONFIG
            } else {
                1
            };
        }
    };
    let result = match cli.command {
        Cmd::Serve => {
            let log = crate::logging::init(&config.log.level, config.log.format);
            return match crate::daemon::run(config, log) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("petrel: {e:#}");
                    1
                }
            };
        }
        Cmd::Sendmail { args } => return sendmail::run(&config, &args),
        Cmd::Drain { spool } => {
            let spool = std::fs::canonicalize(&spool).unwrap_or(spool);
            let own = std::fs::canonicalize(&config.server.spool)
                .unwrap_or_else(|_| config.server.spool.clone());
            if spool == own {
                eprintln!(
                    "petrel: {} is this node's own spool: run petrel serve",
                    spool.display()
                );
                return 1;
            }
            let log = crate::logging::init(&config.log.level, config.log.format);
            return match crate::daemon::drain(config, spool.clone(), log) {
                Ok(d) => {
                    println!(
                        "petrel: drained {}: {} messages at the start; {} deferred and {} held remain",
                        spool.display(),
                        d.at_start,
                        d.deferred,
                        d.hold
                    );
                    0
                }
                Err(e) => {
                    eprintln!("petrel: {e:#}");
                    1
                }
            };
        }
        Cmd::Mailq {
            json,
            domain,
            state,
        } => queue::mailq(&config, json, domain, state),
        Cmd::Requeue(sel) => {
            queue::admin(&config, crate::scheduler::AdminOp::Requeue, sel.selection())
        }
        Cmd::Delete(sel) => {
            queue::admin(&config, crate::scheduler::AdminOp::Delete, sel.selection())
        }
        Cmd::Hold { ids } => queue::admin(
            &config,
            crate::scheduler::AdminOp::Hold,
            control::Selection::Ids(ids),
        ),
        Cmd::Release { ids } => queue::admin(
            &config,
            crate::scheduler::AdminOp::Release,
            control::Selection::Ids(ids),
        ),
        Cmd::Show { id, body, json } => queue::show(&config, id, body, json),
        Cmd::Status { json } => queue::status(&config, json),
        Cmd::Reload => admin::reload(&config),
        Cmd::Debug {
            what: DebugCmd::Smtp { level },
        } => admin::simple(
            &config,
            Request::DebugSmtp { level },
            &format!("smtp_debug set to {level}"),
        ),
        Cmd::Mailbox {
            name,
            uid,
            folder,
            json,
        } => admin::mailbox(&config, name, uid, folder, json),
        Cmd::Config {
            what: ConfigCmd::Show { changed },
        } => admin::config_show(&config, changed),
        Cmd::Track(args) => track::run(&config, &args),
        Cmd::Export { name, maildir } => maildir::export(&config, &name, &maildir),
        Cmd::Import { name, maildir } => maildir::import(&config, &name, &maildir),
        Cmd::Explain(args) => explain::run(&config, &args),
        Cmd::User { what } => book::user(&config, what),
        Cmd::Alias { what } => book::alias(&config, what),
        Cmd::Mailin { what } => book::mailin(&config, what),
        Cmd::CheckConfig | Cmd::HashPassword | Cmd::Dkim { .. } => {
            unreachable!("handled before loading the configuration")
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("petrel: {e}");
            1
        }
    }
}

/// Why a request could not be carried out; the variant decides the exit
/// status (`sendmail`'s sysexits code in particular).
#[derive(Debug)]
pub(crate) enum RequestError {
    /// The configuration names a spool that no daemon has made: most likely
    /// the wrong configuration (run from another directory, a cron job).
    /// Nothing is created, so no mail is stranded where no daemon looks.
    NoSpool(String),
    /// The spool could not take or give the data now: try again later.
    Temporary(String),
    /// Anything else (the daemon refused, a bad id).
    Failed(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::NoSpool(s) | RequestError::Temporary(s) | RequestError::Failed(s) => {
                f.write_str(s)
            }
        }
    }
}

impl From<RequestError> for String {
    fn from(e: RequestError) -> String {
        e.to_string()
    }
}

/// Carries out a request through the daemon, or on the spool directly when
/// no daemon runs (never creating a spool: only `serve` does). Returns
/// whether a daemon answered.
fn request(
    config: &Config,
    req: Request,
    content: Vec<u8>,
    on_item: impl FnMut(Item),
) -> Result<bool, RequestError> {
    let dir = &config.server.spool;
    let mut on_item = on_item;
    match control::call(dir, &req, &content, &mut on_item) {
        Ok(()) => Ok(true),
        Err(CallError::Failed(e)) => Err(RequestError::Failed(e)),
        Err(CallError::Io(e)) => Err(RequestError::Temporary(format!(
            "control socket {}: {e}",
            dir.join(control::SOCKET_NAME).display()
        ))),
        Err(CallError::NoDaemon) => {
            if !dir.join(crate::spool::store::DB_DIR).is_dir() {
                let source = config
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the built-in defaults".into());
                return Err(RequestError::NoSpool(format!(
                    "no daemon runs and there is no spool at {} (configuration: {source}); give the daemon's configuration with -c or $PETREL_CONFIG",
                    dir.display()
                )));
            }
            let spool = match Spool::open(dir) {
                Ok(s) => Arc::new(s),
                Err(StoreError::Locked(_)) => {
                    return Err(RequestError::Temporary(format!(
                        "the spool {} is locked by a daemon whose control socket does not answer",
                        dir.display()
                    )));
                }
                Err(e) => {
                    return Err(RequestError::Temporary(format!(
                        "cannot open the spool {}: {e}",
                        dir.display()
                    )));
                }
            };
            control::run_offline(Arc::new(config.clone()), spool, req, content, on_item)
                .map_err(RequestError::Failed)?;
            Ok(false)
        }
    }
}
