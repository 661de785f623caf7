//! POP3 access to the mailboxes (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH,
//! RFC 2595 STLS). `server` accepts connections; `session` is the state
//! machine. Sessions serve the account's INBOX from the message store
//! (`store`), so POP3 DELE and IMAP EXPUNGE see each other; they never
//! touch the queue.
//!
//! Logins: a user's name (or one of its addresses) opens the user's
//! mailbox; `user+mailbox` opens a mail-in mailbox the user reads.

pub mod session;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::{Config, Listener, TlsMode};
use crate::conn::Conn;
use crate::shutdown::Signal;
use crate::store::MailStore;

/// What every POP3 session shares.
pub struct Pop3Shared {
    /// The live configuration (snapshot per session).
    pub config: Arc<ArcSwap<Config>>,
    /// The message store.
    pub store: Arc<dyn MailStore>,
    /// Server TLS, for STLS and implicit TLS.
    pub tls: crate::tls::ServerTls,
    /// Open POP3 sessions, in total and per client address
    /// (`pop3.max_connections`, `pop3.max_connections_per_client`).
    pub connections: crate::session::limits::ConnectionCount,
}

impl Pop3Shared {
    /// Shared state for the daemon's POP3 listeners.
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        store: Arc<dyn MailStore>,
        tls: crate::tls::ServerTls,
    ) -> Pop3Shared {
        Pop3Shared {
            config,
            store,
            tls,
            connections: Default::default(),
        }
    }
}

/// Accepts POP3 connections until the stop begins.
pub async fn serve(listener: TcpListener, spec: Listener, shared: Arc<Pop3Shared>, signal: Signal) {
    let name = spec.name.clone();
    crate::conn::accept_until(listener, &name, signal, |stream, peer, task_signal| {
        let config = shared.config.load();
        let slot = shared.connections.try_take(
            crate::config::canonical_ip(peer.ip()),
            config.pop3.max_connections,
            config.pop3.max_connections_per_client,
        );
        let (shared, spec) = (shared.clone(), spec.clone());
        tokio::spawn(async move {
            // Held for the whole session; its drop gives the place back.
            let Some(_slot) = slot else {
                return refuse_busy(stream, peer, spec.tls == TlsMode::Implicit, &shared).await;
            };
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

/// Too many sessions: `-ERR [SYS/TEMP]` (RFC 3206: try again later) and
/// close. On an implicit-TLS listener the refusal is sent inside TLS, so
/// the client can read it.
async fn refuse_busy(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    implicit: bool,
    shared: &Pop3Shared,
) {
    use tokio::io::AsyncWriteExt;
    tracing::info!(client = %format!("[{}]", peer.ip()), stage = %"connect", protocol = "pop3", reason = "too many connections", "rejected");
    let mut conn = if implicit {
        let Some(cfg) = shared.tls.get() else { return };
        match crate::conn::implicit_tls(stream, cfg, peer).await {
            Some(c) => c,
            None => return,
        }
    } else {
        Conn::Plain(stream)
    };
    let _ = conn
        .write_all(b"-ERR [SYS/TEMP] too many connections; try again later\r\n")
        .await;
    let _ = conn.shutdown().await;
}
