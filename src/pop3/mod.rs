//! POP3 access to the mailboxes (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH,
//! RFC 2595 STLS). `server` accepts connections; `session` is the state
//! machine. Sessions read and delete through the mailbox store; they never
//! touch the queue.
//!
//! Logins: a user's name (or one of its addresses) opens the user's
//! mailbox; `user+mailbox` opens a mail-in mailbox the user reads.

pub mod session;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::{Config, Listener, TlsMode};
use crate::conn::Conn;
use crate::mailbox::MailboxStore;
use crate::shutdown::Signal;
use crate::spool::Spool;

/// What every POP3 session shares.
pub struct Pop3Shared {
    /// The live configuration (snapshot per session).
    pub config: Arc<ArcSwap<Config>>,
    /// The mailboxes.
    pub mailboxes: MailboxStore,
    /// For the commit after deletions.
    pub spool: Arc<Spool>,
    /// Server TLS, for STLS and implicit TLS.
    pub tls: crate::tls::ServerTls,
    /// Mailboxes held by a session (RFC 1939 §8: exclusive access).
    locks: Mutex<HashSet<String>>,
}

/// A held mailbox lock; released on drop.
pub struct MailboxLock {
    shared: Arc<Pop3Shared>,
    mailbox: String,
}

impl Drop for MailboxLock {
    fn drop(&mut self) {
        self.shared
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.mailbox);
    }
}

impl Pop3Shared {
    /// Shared state for the daemon's POP3 listeners.
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        mailboxes: MailboxStore,
        spool: Arc<Spool>,
        tls: crate::tls::ServerTls,
    ) -> Pop3Shared {
        Pop3Shared {
            config,
            mailboxes,
            spool,
            tls,
            locks: Mutex::new(HashSet::new()),
        }
    }

    /// Takes the exclusive lock of a mailbox, unless another session has it.
    pub fn lock(self: &Arc<Self>, mailbox: &str) -> Option<MailboxLock> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if !locks.insert(mailbox.to_string()) {
            return None;
        }
        Some(MailboxLock {
            shared: self.clone(),
            mailbox: mailbox.to_string(),
        })
    }
}

/// Accepts POP3 connections until the stop begins.
pub async fn serve(listener: TcpListener, spec: Listener, shared: Arc<Pop3Shared>, signal: Signal) {
    let name = spec.name.clone();
    crate::conn::accept_until(listener, &name, signal, |stream, peer, task_signal| {
        let (shared, spec) = (shared.clone(), spec.clone());
        tokio::spawn(async move {
            let conn = match (spec.tls, shared.tls.get()) {
                (TlsMode::Implicit, Some(cfg)) => {
                    match crate::conn::implicit_tls(stream, cfg, peer).await {
                        Some(c) => c,
                        None => return,
                    }
                }
                (TlsMode::Implicit, None) => return,
                _ => Conn::Plain(stream),
            };
            session::Session::new(conn, shared, spec, peer, task_signal)
                .run()
                .await;
        });
    })
    .await
}
