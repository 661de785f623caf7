//! IMAP access to the message store (RFC 9051 IMAP4rev2 and RFC 3501
//! IMAP4rev1, with the extensions Thunderbird, Apple Mail, Outlook and
//! phone clients use: IDLE, CONDSTORE/QRESYNC, MOVE, UIDPLUS,
//! SPECIAL-USE, LIST-EXTENDED/LIST-STATUS, ESEARCH/SEARCHRES, BINARY,
//! QUOTA, UTF8=ACCEPT, SASL-IR, LITERAL+, NAMESPACE, ID).
//!
//! `serve` accepts; `reader` collects a command with its literals;
//! `parser` is the grammar; `session` the state machine and the selected
//! folder's view; `fetch` renders message data from the store's cached
//! MIME summary; `search` evaluates SEARCH keys; `mutf7` converts folder
//! names. Users' mail-in boxes appear as `Shared/<name>`.

pub mod fetch;
pub mod mutf7;
pub mod parser;
pub mod reader;
pub mod search;
pub mod session;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::{Config, Listener, TlsMode};
use crate::conn::Conn;
use crate::session::limits::{ConnectionCount, UserCount};
use crate::shutdown::Signal;
use crate::store::MailStore;

/// What every IMAP session shares.
pub struct ImapShared {
    /// The live configuration (snapshot per session).
    pub config: Arc<ArcSwap<Config>>,
    /// The message store.
    pub store: Arc<dyn MailStore>,
    /// Server TLS, for STARTTLS and implicit TLS.
    pub tls: crate::tls::ServerTls,
    /// Open sessions in total and per client address
    /// (`imap.max_connections`, `imap.max_connections_per_client`).
    pub connections: ConnectionCount,
    /// Logged-in sessions per user (`imap.max_connections_per_user`).
    pub users: UserCount,
}

impl ImapShared {
    /// Shared state for the daemon's IMAP listeners.
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        store: Arc<dyn MailStore>,
        tls: crate::tls::ServerTls,
    ) -> ImapShared {
        ImapShared {
            config,
            store,
            tls,
            connections: Default::default(),
            users: Default::default(),
        }
    }
}

/// Accepts IMAP connections until the stop begins.
pub async fn serve(listener: TcpListener, spec: Listener, shared: Arc<ImapShared>, signal: Signal) {
    let name = spec.name.clone();
    crate::conn::accept_until(listener, &name, signal, |stream, peer, task_signal| {
        let config = shared.config.load();
        let slot = shared.connections.try_take(
            crate::config::canonical_ip(peer.ip()),
            config.imap.max_connections,
            config.imap.max_connections_per_client,
        );
        let (shared, spec) = (shared.clone(), spec.clone());
        tokio::spawn(async move {
            let implicit = spec.tls == TlsMode::Implicit;
            let conn = match (implicit, shared.tls.get()) {
                (true, Some(cfg)) => match crate::conn::implicit_tls(stream, cfg, peer).await {
                    Some(c) => c,
                    None => return,
                },
                (true, None) => return,
                (false, _) => Conn::Plain(stream),
            };
            // Held for the whole session; its drop gives the place back.
            let Some(_slot) = slot else {
                return refuse_busy(conn, peer).await;
            };
            session::Session::new(conn, shared, spec, peer, task_signal)
                .run()
                .await;
        });
    })
    .await
}

/// Too many sessions: an untagged BYE (RFC 9051 §7.1.5) and close.
async fn refuse_busy(mut conn: Conn, peer: std::net::SocketAddr) {
    use tokio::io::AsyncWriteExt;
    tracing::info!(client = %format!("[{}]", peer.ip()), stage = %"connect", protocol = "imap", reason = "too many connections", "rejected");
    let _ = conn
        .write_all(b"* BYE [UNAVAILABLE] too many connections; try again later\r\n")
        .await;
    let _ = conn.shutdown().await;
}
