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
    pub tls: Option<Arc<rustls::ServerConfig>>,
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
        tls: Option<Arc<rustls::ServerConfig>>,
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
pub async fn serve(
    listener: TcpListener,
    spec: Listener,
    shared: Arc<Pop3Shared>,
    mut signal: Signal,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = signal.triggered() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(listener = %spec.name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (shared, spec, task_signal) = (shared.clone(), spec.clone(), signal.clone());
        tokio::spawn(async move {
            let conn = if spec.tls == TlsMode::Implicit {
                let Some(cfg) = shared.tls.clone() else {
                    return;
                };
                match tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    tokio_rustls::TlsAcceptor::from(cfg).accept(stream),
                )
                .await
                {
                    Ok(Ok(tls)) => Conn::ServerTls(Box::new(tls)),
                    _ => return,
                }
            } else {
                Conn::Plain(stream)
            };
            session::Session::new(conn, shared, spec, peer, task_signal)
                .run()
                .await;
        });
    }
}
